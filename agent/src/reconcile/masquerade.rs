//! What the node's netfilter needs for pods: egress masquerade, and
//! accepting the traffic the stack forwards for pods.
//!
//! - Masquerade (`--masquerade`, on by default): a pod's packet to an
//!   address outside the cluster leaves with the node's address, as
//!   ip-masq-agent does. Never masqueraded: the cluster CIDR (pod to pod),
//!   every node's IP (pod to node, both ways un-NATed), and the user's
//!   `--non-masquerade-cidr`s. It lives in an nftables table of its own,
//!   `ip sluice`, replaced whole and atomically (`nft -f`), so it coexists
//!   with kube-proxy's and Docker's rules and cleanup is one delete. The
//!   table's comment carries a revision (a hash of its content), so a pass
//!   with nothing to change only reads.
//! - Forward accept: a node whose iptables `FORWARD` policy is DROP (Docker
//!   sets that) would drop pods' stack-forwarded traffic (to the world, to
//!   other nodes, through kube-proxy's DNAT), and an accept in another
//!   nftables table cannot override a drop in iptables' filter table. So
//!   one jump at the top of `FORWARD` goes to sluice's chain
//!   `SLUICE-FORWARD`, which accepts packets from and to the cluster CIDR
//!   (as Flannel does). Managed with `iptables-restore --noflush`, so it
//!   works with either iptables backend.
//!
//! `render_*` decide (pure); `ensure` applies through `Firewall`, which runs
//! the `nft` and `iptables` binaries (the image carries both).
use std::{collections::BTreeSet, net::Ipv4Addr};

use anyhow::{bail, Context, Result};
use ipnetwork::Ipv4Network;
use tracing::info;

pub const NFT_TABLE: &str = "sluice";
pub const FORWARD_CHAIN: &str = "SLUICE-FORWARD";
/// The jump into `FORWARD_CHAIN`, as `iptables -C/-I/-D FORWARD` take it.
pub const FORWARD_JUMP: [&str; 6] = ["-m", "comment", "--comment", "sluice-pod-traffic", "-j", FORWARD_CHAIN];

/// What the node's netfilter should hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    pub masquerade: bool,
    pub cluster_cidr: Ipv4Network,
    /// Destinations pods reach with their own address.
    pub no_masquerade: Vec<Ipv4Network>,
}

impl Desired {
    /// From the agent's settings and this pass's membership: the cluster,
    /// every node IP (this node's and its peers') and the user's list.
    pub fn new(
        masquerade: bool,
        cluster_cidr: Ipv4Network,
        node_ips: impl IntoIterator<Item = Ipv4Addr>,
        extra: &[Ipv4Network],
    ) -> Self {
        let mut all: Vec<Ipv4Network> = vec![cluster_cidr];
        all.extend(node_ips.into_iter().map(|ip| Ipv4Network::new(ip, 32).expect("/32 is valid")));
        all.extend(extra.iter().map(|n| Ipv4Network::new(n.network(), n.prefix()).expect("valid prefix")));
        Self { masquerade, cluster_cidr, no_masquerade: minimal_cover(all) }
    }
}

/// Drop every prefix that another one contains (nftables interval sets
/// refuse overlapping elements); prefixes either nest or are disjoint.
pub fn minimal_cover(nets: Vec<Ipv4Network>) -> Vec<Ipv4Network> {
    let unique: BTreeSet<Ipv4Network> = nets.into_iter().collect();
    unique
        .iter()
        .filter(|n| !unique.iter().any(|m| m != *n && m.prefix() < n.prefix() && m.contains(n.network())))
        .copied()
        .collect()
}

/// FNV-1a over the table's body: its revision.
fn revision(body: &str) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in body.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

/// The revision marker as it appears in `nft list table` output.
pub fn revision_marker(d: &Desired) -> String {
    format!("sluice-agent revision {}", revision(&table_body(d)))
}

fn table_body(d: &Desired) -> String {
    let elements: Vec<String> = d.no_masquerade.iter().map(|n| n.to_string()).collect();
    format!(
        "\tset no_masquerade {{\n\t\ttype ipv4_addr\n\t\tflags interval\n\t\telements = {{ {} }}\n\t}}\n\
         \tchain postrouting {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tip saddr {} ip daddr != @no_masquerade counter masquerade\n\t}}\n",
        elements.join(", "),
        d.cluster_cidr
    )
}

/// The `nft -f` script that replaces the table in one transaction (the
/// first line makes sure there is a table to delete).
pub fn render_nft(d: &Desired) -> String {
    format!(
        "table ip {NFT_TABLE}\ndelete table ip {NFT_TABLE}\ntable ip {NFT_TABLE} {{\n\tcomment \"{}\"\n{}}}\n",
        revision_marker(d),
        table_body(d)
    )
}

/// `SLUICE-FORWARD`'s rules exactly as `iptables -S` prints them.
pub fn forward_rules(cluster_cidr: Ipv4Network) -> Vec<String> {
    vec![
        format!("-A {FORWARD_CHAIN} -s {cluster_cidr} -m comment --comment sluice-from-pods -j ACCEPT"),
        format!("-A {FORWARD_CHAIN} -d {cluster_cidr} -m comment --comment sluice-to-pods -j ACCEPT"),
    ]
}

/// `iptables-restore --noflush` input: declaring the chain flushes it, then
/// its rules; nothing else in the filter table is touched.
pub fn render_iptables(cluster_cidr: Ipv4Network) -> String {
    let mut s = format!("*filter\n:{FORWARD_CHAIN} - [0:0]\n");
    for r in forward_rules(cluster_cidr) {
        s.push_str(&r);
        s.push('\n');
    }
    s.push_str("COMMIT\n");
    s
}

/// What `ensure` needs from the node.
#[allow(async_fn_in_trait)] // awaited in place on the agent's one thread
pub trait Firewall {
    /// `nft list table ip sluice`, or `None` if there is no such table.
    async fn nft_table(&self) -> Result<Option<String>>;
    /// `nft -f -` with `script` on stdin.
    async fn nft_apply(&self, script: &str) -> Result<()>;
    /// `iptables -w -S SLUICE-FORWARD` lines, or `None` if no such chain.
    async fn forward_chain(&self) -> Result<Option<Vec<String>>>;
    /// `iptables-restore -w --noflush` with `input` on stdin.
    async fn iptables_restore(&self, input: &str) -> Result<()>;
    /// Is the jump into `SLUICE-FORWARD` in `FORWARD`? (`iptables -C`)
    async fn forward_jump_present(&self) -> Result<bool>;
    /// Insert the jump first in `FORWARD` (`iptables -I FORWARD 1`).
    async fn insert_forward_jump(&self) -> Result<()>;
}

/// What `ensure` changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub nft_table: bool,
    pub forward_chain: bool,
    pub forward_jump: bool,
}

/// The masquerade rule's counter: connections' first packets and their
/// bytes since the table was (re)written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MasqueradeCounter {
    pub packets: u64,
    pub bytes: u64,
}

/// `... counter packets 12 bytes 840 masquerade` in `nft list table`
/// output → 12 packets, 840 bytes (pure).
pub fn parse_masquerade_counter(table: &str) -> Option<MasqueradeCounter> {
    let line = table.lines().find(|l| l.contains("masquerade") && l.contains("counter packets"))?;
    let mut words = line.split_whitespace();
    words.find(|w| *w == "packets")?;
    let packets = words.next()?.parse().ok()?;
    words.find(|w| *w == "bytes")?;
    let bytes = words.next()?.parse().ok()?;
    Some(MasqueradeCounter { packets, bytes })
}

/// Bring the node's netfilter to `d`, touching only what differs.
pub async fn ensure(fw: &impl Firewall, d: &Desired) -> Result<Changes> {
    ensure_counted(fw, d).await.map(|(c, _)| c)
}

/// `ensure`, also returning the masquerade rule's counter as the table
/// read for the check had it (zero when the table was just rewritten;
/// `None` with masquerading off). Metrics show this figure, so a scrape
/// never runs `nft` itself.
pub async fn ensure_counted(fw: &impl Firewall, d: &Desired) -> Result<(Changes, Option<MasqueradeCounter>)> {
    let mut c = Changes::default();
    let table = fw.nft_table().await?;
    let mut counter = None;
    if d.masquerade {
        let marker = revision_marker(d);
        if table.as_deref().is_some_and(|t| t.contains(&marker)) {
            counter = table.as_deref().and_then(parse_masquerade_counter);
        } else {
            fw.nft_apply(&render_nft(d)).await?;
            c.nft_table = true;
            counter = Some(MasqueradeCounter::default());
        }
    } else if table.is_some() {
        fw.nft_apply(&format!("delete table ip {NFT_TABLE}\n")).await?;
        c.nft_table = true;
    }
    let want = forward_rules(d.cluster_cidr);
    let have = fw.forward_chain().await?;
    let rules: Vec<String> = have.unwrap_or_default().into_iter().filter(|l| l.starts_with("-A ")).collect();
    if rules != want {
        fw.iptables_restore(&render_iptables(d.cluster_cidr)).await?;
        c.forward_chain = true;
    }
    if !fw.forward_jump_present().await? {
        fw.insert_forward_jump().await?;
        c.forward_jump = true;
    }
    if c != Changes::default() {
        info!(masquerade = d.masquerade, changes = ?c, "netfilter reconciled");
    }
    Ok((c, counter))
}

/// The node's own `nft` and `iptables`, run in the agent's network namespace.
pub struct HostFirewall;

async fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<std::process::Output> {
    use tokio::io::AsyncWriteExt;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    cmd.stdin(if stdin.is_some() { std::process::Stdio::piped() } else { std::process::Stdio::null() });
    let mut child = cmd.spawn().with_context(|| format!("run {program} (is it installed?)"))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes()).await?;
    }
    Ok(child.wait_with_output().await?)
}

fn check(program: &str, args: &[&str], out: std::process::Output) -> Result<std::process::Output> {
    if !out.status.success() {
        bail!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(out)
}

impl Firewall for HostFirewall {
    async fn nft_table(&self) -> Result<Option<String>> {
        let args = ["list", "table", "ip", NFT_TABLE];
        let out = run("nft", &args, None).await?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            if err.contains("No such file") {
                return Ok(None);
            }
            bail!("nft {}: {}", args.join(" "), err.trim());
        }
        Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()))
    }
    async fn nft_apply(&self, script: &str) -> Result<()> {
        check("nft", &["-f", "-"], run("nft", &["-f", "-"], Some(script)).await?).map(|_| ())
    }
    async fn forward_chain(&self) -> Result<Option<Vec<String>>> {
        let out = run("iptables", &["-w", "-S", FORWARD_CHAIN], None).await?;
        if !out.status.success() {
            return Ok(None);
        }
        Ok(Some(String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()))
    }
    async fn iptables_restore(&self, input: &str) -> Result<()> {
        let args = ["-w", "--noflush"];
        check("iptables-restore", &args, run("iptables-restore", &args, Some(input)).await?).map(|_| ())
    }
    async fn forward_jump_present(&self) -> Result<bool> {
        let mut args = vec!["-w", "-C", "FORWARD"];
        args.extend(FORWARD_JUMP);
        Ok(run("iptables", &args, None).await?.status.success())
    }
    async fn insert_forward_jump(&self) -> Result<()> {
        let mut args = vec!["-w", "-I", "FORWARD", "1"];
        args.extend(FORWARD_JUMP);
        check("iptables", &args, run("iptables", &args, None).await?).map(|_| ())
    }
}

/// Remove everything `ensure` made (uninstall). Absent counts as removed.
pub async fn remove() -> Vec<String> {
    let mut errors = Vec::new();
    match HostFirewall.nft_table().await {
        Ok(Some(_)) => {
            if let Err(e) = HostFirewall.nft_apply(&format!("delete table ip {NFT_TABLE}\n")).await {
                errors.push(format!("{e:#}"));
            }
        }
        Ok(None) => {}
        Err(e) => errors.push(format!("{e:#}")),
    }
    let mut del = vec!["-w", "-D", "FORWARD"];
    del.extend(FORWARD_JUMP);
    // A jump may have been inserted more than once by hand: remove all.
    while let Ok(out) = run("iptables", &del, None).await {
        if !out.status.success() {
            break;
        }
    }
    for args in [["-w", "-F", FORWARD_CHAIN], ["-w", "-X", FORWARD_CHAIN]] {
        if let Ok(out) = run("iptables", &args, None).await {
            let err = String::from_utf8_lossy(&out.stderr);
            if !out.status.success() && !err.contains("No chain") && !err.contains("does not exist") {
                errors.push(format!("iptables {}: {}", args.join(" "), err.trim()));
            }
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    fn net(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    fn desired() -> Desired {
        Desired::new(
            true,
            net("10.244.0.0/16"),
            ["172.30.0.1".parse().unwrap(), "172.30.0.2".parse().unwrap()],
            &[net("192.168.0.0/16"), net("192.168.7.0/24"), net("10.244.3.0/24")],
        )
    }

    #[test]
    fn no_masquerade_set_is_minimal_and_complete() {
        let d = desired();
        assert_eq!(
            d.no_masquerade,
            vec![net("10.244.0.0/16"), net("172.30.0.1/32"), net("172.30.0.2/32"), net("192.168.0.0/16")]
        );
    }

    #[test]
    fn nft_script_replaces_the_table_atomically() {
        let s = render_nft(&desired());
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(&lines[..3], &["table ip sluice", "delete table ip sluice", "table ip sluice {"]);
        assert!(s.contains("elements = { 10.244.0.0/16, 172.30.0.1/32, 172.30.0.2/32, 192.168.0.0/16 }"), "{s}");
        assert!(s.contains("ip saddr 10.244.0.0/16 ip daddr != @no_masquerade counter masquerade"), "{s}");
        assert!(s.contains(&revision_marker(&desired())));
        // Another node set: another revision.
        let other = Desired::new(true, net("10.244.0.0/16"), ["172.30.0.9".parse().unwrap()], &[]);
        assert_ne!(revision_marker(&other), revision_marker(&desired()));
    }

    #[test]
    fn iptables_input_declares_and_fills_the_chain() {
        assert_eq!(
            render_iptables(net("10.244.0.0/16")),
            "*filter\n:SLUICE-FORWARD - [0:0]\n\
             -A SLUICE-FORWARD -s 10.244.0.0/16 -m comment --comment sluice-from-pods -j ACCEPT\n\
             -A SLUICE-FORWARD -d 10.244.0.0/16 -m comment --comment sluice-to-pods -j ACCEPT\nCOMMIT\n"
        );
    }

    /// A node's netfilter in memory.
    #[derive(Default)]
    struct FakeFirewall {
        table: RefCell<Option<String>>,
        chain: RefCell<Option<Vec<String>>>,
        jump: RefCell<bool>,
        calls: RefCell<Vec<String>>,
    }

    impl Firewall for FakeFirewall {
        async fn nft_table(&self) -> Result<Option<String>> {
            Ok(self.table.borrow().clone())
        }
        async fn nft_apply(&self, script: &str) -> Result<()> {
            self.calls.borrow_mut().push("nft".into());
            *self.table.borrow_mut() = (!script.starts_with("delete")).then(|| script.to_string());
            Ok(())
        }
        async fn forward_chain(&self) -> Result<Option<Vec<String>>> {
            Ok(self.chain.borrow().clone())
        }
        async fn iptables_restore(&self, input: &str) -> Result<()> {
            self.calls.borrow_mut().push("iptables-restore".into());
            let rules = input.lines().filter(|l| l.starts_with("-A ")).map(str::to_string);
            *self.chain.borrow_mut() = Some(std::iter::once(format!("-N {FORWARD_CHAIN}")).chain(rules).collect());
            Ok(())
        }
        async fn forward_jump_present(&self) -> Result<bool> {
            Ok(*self.jump.borrow())
        }
        async fn insert_forward_jump(&self) -> Result<()> {
            self.calls.borrow_mut().push("insert jump".into());
            *self.jump.borrow_mut() = true;
            Ok(())
        }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
    }

    #[test]
    fn ensure_applies_once_then_only_reads() {
        let fw = FakeFirewall::default();
        let d = desired();
        let c = block_on(ensure(&fw, &d)).unwrap();
        assert_eq!(c, Changes { nft_table: true, forward_chain: true, forward_jump: true });
        assert_eq!(fw.calls.take(), vec!["nft", "iptables-restore", "insert jump"]);
        assert_eq!(block_on(ensure(&fw, &d)).unwrap(), Changes::default());
        assert!(fw.calls.borrow().is_empty());
        // Someone flushed the chain: only the chain is restored.
        *fw.chain.borrow_mut() = Some(vec![format!("-N {FORWARD_CHAIN}")]);
        assert_eq!(block_on(ensure(&fw, &d)).unwrap(), Changes { forward_chain: true, ..Default::default() });
        // Membership changed: a new table revision.
        let d2 = Desired::new(true, net("10.244.0.0/16"), ["172.30.0.9".parse().unwrap()], &[]);
        assert_eq!(block_on(ensure(&fw, &d2)).unwrap(), Changes { nft_table: true, ..Default::default() });
    }

    #[test]
    fn masquerade_counter_parses() {
        let t = "table ip sluice {\n\tchain postrouting {\n\t\tip saddr 10.244.0.0/16 ip daddr != @no_masquerade counter packets 12 bytes 840 masquerade\n\t}\n}";
        assert_eq!(parse_masquerade_counter(t), Some(MasqueradeCounter { packets: 12, bytes: 840 }));
        assert_eq!(parse_masquerade_counter("table ip sluice {}"), None);
    }

    #[test]
    fn ensure_reports_the_counter_of_the_table_it_read() {
        let fw = FakeFirewall::default();
        let d = desired();
        let (_, first) = block_on(ensure_counted(&fw, &d)).unwrap();
        assert_eq!(first, Some(MasqueradeCounter::default()), "a table just written counts from zero");
        // The kernel counted since: the next check reads it from the listing.
        let counted = fw.table.borrow().clone().unwrap().replace("counter", "counter packets 7 bytes 420");
        *fw.table.borrow_mut() = Some(counted);
        let (changes, now) = block_on(ensure_counted(&fw, &d)).unwrap();
        assert_eq!((changes, now), (Changes::default(), Some(MasqueradeCounter { packets: 7, bytes: 420 })));
        let off = Desired { masquerade: false, ..d };
        assert_eq!(block_on(ensure_counted(&fw, &off)).unwrap().1, None);
    }

    #[test]
    fn masquerade_off_removes_the_table_but_keeps_forwarding_accepted() {
        let fw = FakeFirewall::default();
        block_on(ensure(&fw, &desired())).unwrap();
        let off = Desired { masquerade: false, ..desired() };
        assert_eq!(block_on(ensure(&fw, &off)).unwrap(), Changes { nft_table: true, ..Default::default() });
        assert!(fw.table.borrow().is_none());
        assert!(*fw.jump.borrow());
        assert_eq!(block_on(ensure(&fw, &off)).unwrap(), Changes::default());
    }
}
