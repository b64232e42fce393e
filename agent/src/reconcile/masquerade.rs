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
use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::{bail, Context, Result};
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use tracing::info;

pub const NFT_TABLE: &str = "sluice";
pub const FORWARD_CHAIN: &str = "SLUICE-FORWARD";
/// The jump into `FORWARD_CHAIN`, as `iptables -C/-I/-D FORWARD` take it.
pub const FORWARD_JUMP: [&str; 6] = ["-m", "comment", "--comment", "sluice-pod-traffic", "-j", FORWARD_CHAIN];

/// An address family's names in nftables and iptables: the twin tables
/// `ip sluice` and `ip6 sluice`, the twin chains in iptables and ip6tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub const BOTH: [Family; 2] = [Family::Ipv4, Family::Ipv6];

    /// nftables' table family: `ip` / `ip6`.
    pub fn nft(self) -> &'static str {
        match self {
            Family::Ipv4 => "ip",
            Family::Ipv6 => "ip6",
        }
    }

    fn set_type(self) -> &'static str {
        match self {
            Family::Ipv4 => "ipv4_addr",
            Family::Ipv6 => "ipv6_addr",
        }
    }

    /// `iptables` / `ip6tables`.
    pub fn iptables(self) -> &'static str {
        match self {
            Family::Ipv4 => "iptables",
            Family::Ipv6 => "ip6tables",
        }
    }

    fn iptables_restore(self) -> &'static str {
        match self {
            Family::Ipv4 => "iptables-restore",
            Family::Ipv6 => "ip6tables-restore",
        }
    }
}

/// One family's rules: the pods' range, and the destinations they reach
/// with their own address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rules {
    pub family: Family,
    pub cluster_cidr: IpNetwork,
    /// Destinations pods reach with their own address (minimal cover).
    pub no_masquerade: Vec<IpNetwork>,
    /// `--nat64` (IPv4 rules only): the pool NAT64 numbers pods from,
    /// masqueraded to wherever it goes and forwarded both ways.
    pub nat64_pool: Option<Ipv4Network>,
}

impl Rules {
    /// The cluster, every node address and the user's list, as far as
    /// they are of `family` (the others belong to the twin).
    fn new(family: Family, cluster_cidr: IpNetwork, node_ips: Vec<IpAddr>, extra: &[IpNetwork]) -> Self {
        let mine = |n: &IpNetwork| (family == Family::Ipv4) == n.is_ipv4();
        let mut all = vec![cluster_cidr];
        all.extend(node_ips.into_iter().map(IpNetwork::from));
        all.extend(extra.iter().map(|n| IpNetwork::new(n.network(), n.prefix()).expect("valid")));
        let no_masquerade = minimal_cover(all.into_iter().filter(mine).collect());
        Self { family, cluster_cidr, no_masquerade, nat64_pool: None }
    }
}

/// What the node's netfilter should hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    pub masquerade: bool,
    /// None on an IPv6-only node (no IPv4 cluster range): IPv4 netfilter
    /// is left alone.
    pub ipv4: Option<Rules>,
    /// Dual-stack: the IPv6 twin (`ip6 sluice`, ip6tables' chain). Without
    /// it IPv6 netfilter is left alone (`cleanup` removes a leftover).
    pub ipv6: Option<Rules>,
}

impl Desired {
    /// From the agent's settings and this pass's membership: the cluster,
    /// every node IP (this node's and its peers') and the user's list
    /// (its IPv6 entries wait for `with_ipv6`).
    pub fn new(
        masquerade: bool,
        cluster_cidr: Option<Ipv4Network>,
        node_ips: impl IntoIterator<Item = Ipv4Addr>,
        extra: &[IpNetwork],
    ) -> Self {
        let nodes: Vec<IpAddr> = node_ips.into_iter().map(IpAddr::V4).collect();
        let ipv4 = cluster_cidr.map(|c| Rules::new(Family::Ipv4, c.into(), nodes, extra));
        Self { masquerade, ipv4, ipv6: None }
    }

    /// The IPv6 twin: the IPv6 cluster range, the nodes' IPv6 addresses,
    /// the user's IPv6 entries.
    pub fn with_ipv6(
        self,
        cluster_cidr6: Ipv6Network,
        node_ips6: impl IntoIterator<Item = Ipv6Addr>,
        extra: &[IpNetwork],
    ) -> Self {
        let nodes = node_ips6.into_iter().map(IpAddr::V6).collect();
        Self { ipv6: Some(Rules::new(Family::Ipv6, cluster_cidr6.into(), nodes, extra)), ..self }
    }

    /// `--nat64`: the pool's packets (pods' IPv6 translated to IPv4)
    /// masqueraded and forwarded. On an IPv6-only node, which has no IPv4
    /// rules otherwise, the pool stands in for the IPv4 pod range: IPv4
    /// rules whose pods are the pool.
    pub fn with_nat64(self, pool: Option<Ipv4Network>, node_ips: impl IntoIterator<Item = Ipv4Addr>) -> Self {
        let Some(pool) = pool else { return self };
        let ipv4 = match self.ipv4 {
            Some(rules) => Rules { nat64_pool: Some(pool), ..rules },
            None => {
                let nodes = node_ips.into_iter().map(IpAddr::V4).collect();
                Rules::new(Family::Ipv4, pool.into(), nodes, &[])
            }
        };
        Self { ipv4: Some(ipv4), ..self }
    }

    /// The families this node keeps, IPv4 first.
    pub fn rules(&self) -> impl Iterator<Item = &Rules> {
        self.ipv4.iter().chain(self.ipv6.as_ref())
    }
}

/// Drop every prefix that another one contains (nftables interval sets
/// refuse overlapping elements); prefixes either nest or are disjoint.
pub fn minimal_cover(nets: Vec<IpNetwork>) -> Vec<IpNetwork> {
    let unique: BTreeSet<IpNetwork> = nets.into_iter().collect();
    unique
        .iter()
        .filter(|n| {
            !unique
                .iter()
                .any(|m| m != *n && m.is_ipv4() == n.is_ipv4() && m.prefix() < n.prefix() && m.contains(n.network()))
        })
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
pub fn revision_marker(r: &Rules) -> String {
    format!("sluice-agent revision {}", revision(&table_body(r)))
}

fn table_body(r: &Rules) -> String {
    let elements: Vec<String> = r.no_masquerade.iter().map(|n| n.to_string()).collect();
    // NAT64's pool leaves masqueraded wherever it goes (its addresses
    // mean nothing off the node).
    let nat64 = match r.nat64_pool {
        Some(pool) => format!("\t\tip saddr {pool} counter masquerade\n"),
        None => String::new(),
    };
    format!(
        "\tset no_masquerade {{\n\t\ttype {}\n\t\tflags interval\n\t\telements = {{ {} }}\n\t}}\n\
         \tchain postrouting {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\t{} saddr {} {} daddr != @no_masquerade counter masquerade\n{nat64}\t}}\n",
        r.family.set_type(),
        elements.join(", "),
        r.family.nft(),
        r.cluster_cidr,
        r.family.nft(),
    )
}

/// The `nft -f` script that replaces the family's table in one
/// transaction (the first line makes sure there is a table to delete).
pub fn render_nft(r: &Rules) -> String {
    let f = r.family.nft();
    format!(
        "table {f} {NFT_TABLE}\ndelete table {f} {NFT_TABLE}\ntable {f} {NFT_TABLE} {{\n\tcomment \"{}\"\n{}}}\n",
        revision_marker(r),
        table_body(r)
    )
}

/// `SLUICE-FORWARD`'s rules exactly as `iptables -S` (or `ip6tables -S`)
/// prints them.
pub fn forward_rules(cluster_cidr: IpNetwork) -> Vec<String> {
    vec![
        format!("-A {FORWARD_CHAIN} -s {cluster_cidr} -m comment --comment sluice-from-pods -j ACCEPT"),
        format!("-A {FORWARD_CHAIN} -d {cluster_cidr} -m comment --comment sluice-to-pods -j ACCEPT"),
    ]
}

/// `forward_rules` of a family's rules: NAT64's pool accepted too.
pub fn forward_rules_of(r: &Rules) -> Vec<String> {
    let mut rules = forward_rules(r.cluster_cidr);
    if let Some(pool) = r.nat64_pool {
        rules.push(format!("-A {FORWARD_CHAIN} -s {pool} -m comment --comment sluice-from-nat64 -j ACCEPT"));
        rules.push(format!("-A {FORWARD_CHAIN} -d {pool} -m comment --comment sluice-to-nat64 -j ACCEPT"));
    }
    rules
}

/// `iptables-restore --noflush` input: declaring the chain flushes it, then
/// its rules; nothing else in the filter table is touched.
pub fn render_iptables(cluster_cidr: IpNetwork) -> String {
    render_iptables_rules(forward_rules(cluster_cidr))
}

/// `render_iptables` for these rules.
pub fn render_iptables_rules(rules: Vec<String>) -> String {
    let mut s = format!("*filter\n:{FORWARD_CHAIN} - [0:0]\n");
    for r in rules {
        s.push_str(&r);
        s.push('\n');
    }
    s.push_str("COMMIT\n");
    s
}

/// What `ensure` needs from the node, per family.
#[allow(async_fn_in_trait)] // awaited in place on the agent's one thread
pub trait Firewall {
    /// `nft list table <ip|ip6> sluice`, or `None` if there is no such table.
    async fn nft_table(&self, f: Family) -> Result<Option<String>>;
    /// `nft -f -` with `script` on stdin.
    async fn nft_apply(&self, script: &str) -> Result<()>;
    /// `iptables -w -S SLUICE-FORWARD` lines (ip6tables for IPv6), or
    /// `None` if no such chain.
    async fn forward_chain(&self, f: Family) -> Result<Option<Vec<String>>>;
    /// `iptables-restore -w --noflush` with `input` on stdin.
    async fn iptables_restore(&self, f: Family, input: &str) -> Result<()>;
    /// Is the jump into `SLUICE-FORWARD` in `FORWARD`? (`iptables -C`)
    async fn forward_jump_present(&self, f: Family) -> Result<bool>;
    /// Insert the jump first in `FORWARD` (`iptables -I FORWARD 1`).
    async fn insert_forward_jump(&self, f: Family) -> Result<()>;
}

/// What `ensure` changed (in either family).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub nft_table: bool,
    pub forward_chain: bool,
    pub forward_jump: bool,
}

/// The masquerade rules' counters: connections' first packets and their
/// bytes since the tables were (re)written, both families together.
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

/// `ensure`, also returning the masquerade rules' counter as the tables
/// read for the check had it (zero for a table just rewritten; `None`
/// with masquerading off). Metrics show this figure, so a scrape never
/// runs `nft` itself.
pub async fn ensure_counted(fw: &impl Firewall, d: &Desired) -> Result<(Changes, Option<MasqueradeCounter>)> {
    let mut c = Changes::default();
    let mut counter = d.masquerade.then(MasqueradeCounter::default);
    for rules in d.rules() {
        let f = rules.family;
        let table = fw.nft_table(f).await?;
        if d.masquerade {
            if table.as_deref().is_some_and(|t| t.contains(&revision_marker(rules))) {
                if let (Some(sum), Some(read)) = (counter.as_mut(), table.as_deref().and_then(parse_masquerade_counter))
                {
                    sum.packets += read.packets;
                    sum.bytes += read.bytes;
                }
            } else {
                fw.nft_apply(&render_nft(rules)).await?;
                c.nft_table = true;
            }
        } else if table.is_some() {
            fw.nft_apply(&format!("delete table {} {NFT_TABLE}\n", f.nft())).await?;
            c.nft_table = true;
        }
        let want = forward_rules_of(rules);
        let have = fw.forward_chain(f).await?;
        let lines: Vec<String> = have.unwrap_or_default().into_iter().filter(|l| l.starts_with("-A ")).collect();
        if lines != want {
            fw.iptables_restore(f, &render_iptables_rules(want)).await?;
            c.forward_chain = true;
        }
        if !fw.forward_jump_present(f).await? {
            fw.insert_forward_jump(f).await?;
            c.forward_jump = true;
        }
    }
    if c != Changes::default() {
        info!(masquerade = d.masquerade, ipv6 = d.ipv6.is_some(), changes = ?c, "netfilter reconciled");
    }
    Ok((c, counter))
}

/// The node's own `nft` and `iptables`/`ip6tables`, run in the agent's
/// network namespace.
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
    async fn nft_table(&self, f: Family) -> Result<Option<String>> {
        let args = ["list", "table", f.nft(), NFT_TABLE];
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
    async fn forward_chain(&self, f: Family) -> Result<Option<Vec<String>>> {
        let out = run(f.iptables(), &["-w", "-S", FORWARD_CHAIN], None).await?;
        if !out.status.success() {
            return Ok(None);
        }
        Ok(Some(String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()))
    }
    async fn iptables_restore(&self, f: Family, input: &str) -> Result<()> {
        let args = ["-w", "--noflush"];
        let program = f.iptables_restore();
        check(program, &args, run(program, &args, Some(input)).await?).map(|_| ())
    }
    async fn forward_jump_present(&self, f: Family) -> Result<bool> {
        let mut args = vec!["-w", "-C", "FORWARD"];
        args.extend(FORWARD_JUMP);
        Ok(run(f.iptables(), &args, None).await?.status.success())
    }
    async fn insert_forward_jump(&self, f: Family) -> Result<()> {
        let mut args = vec!["-w", "-I", "FORWARD", "1"];
        args.extend(FORWARD_JUMP);
        check(f.iptables(), &args, run(f.iptables(), &args, None).await?).map(|_| ())
    }
}

/// Remove everything `ensure` made (uninstall), in both families. Absent
/// counts as removed.
pub async fn remove() -> Vec<String> {
    let mut errors = Vec::new();
    for f in Family::BOTH {
        match HostFirewall.nft_table(f).await {
            Ok(Some(_)) => {
                if let Err(e) = HostFirewall.nft_apply(&format!("delete table {} {NFT_TABLE}\n", f.nft())).await {
                    errors.push(format!("{e:#}"));
                }
            }
            Ok(None) => {}
            Err(e) => errors.push(format!("{e:#}")),
        }
        let mut del = vec!["-w", "-D", "FORWARD"];
        del.extend(FORWARD_JUMP);
        // A jump may have been inserted more than once by hand: remove all.
        while let Ok(out) = run(f.iptables(), &del, None).await {
            if !out.status.success() {
                break;
            }
        }
        for args in [["-w", "-F", FORWARD_CHAIN], ["-w", "-X", FORWARD_CHAIN]] {
            if let Ok(out) = run(f.iptables(), &args, None).await {
                let err = String::from_utf8_lossy(&out.stderr);
                if !out.status.success() && !err.contains("No chain") && !err.contains("does not exist") {
                    errors.push(format!("{} {}: {}", f.iptables(), args.join(" "), err.trim()));
                }
            }
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use std::{cell::RefCell, collections::BTreeMap};

    use super::*;

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    fn desired() -> Desired {
        Desired::new(
            true,
            "10.244.0.0/16".parse().ok(),
            ["172.30.0.1".parse().unwrap(), "172.30.0.2".parse().unwrap()],
            &[net("192.168.0.0/16"), net("192.168.7.0/24"), net("10.244.3.0/24"), net("fd00:99::/64")],
        )
    }

    fn dual() -> Desired {
        let extra = [net("192.168.0.0/16"), net("fd00:99::/64"), net("fd00:99::/80")];
        desired().with_ipv6(
            "fd00:244::/56".parse().unwrap(),
            ["fd00:30::1".parse().unwrap(), "fd00:30::2".parse().unwrap()],
            &extra,
        )
    }

    #[test]
    fn no_masquerade_set_is_minimal_and_complete() {
        let d = desired();
        assert_eq!(
            d.ipv4.as_ref().unwrap().no_masquerade,
            vec![net("10.244.0.0/16"), net("172.30.0.1/32"), net("172.30.0.2/32"), net("192.168.0.0/16")],
            "the IPv6 entry is not the IPv4 table's"
        );
        assert_eq!(d.ipv6, None);
    }

    #[test]
    fn the_ipv6_twin_has_its_own_range_nodes_and_entries() {
        let d = dual();
        let v6 = d.ipv6.as_ref().unwrap();
        assert_eq!(v6.family, Family::Ipv6);
        assert_eq!(
            v6.no_masquerade,
            vec![net("fd00:30::1/128"), net("fd00:30::2/128"), net("fd00:99::/64"), net("fd00:244::/56")]
        );
        assert_eq!(d.ipv4.as_ref().unwrap().no_masquerade.len(), 4, "IPv4 unchanged by the twin");
        assert_eq!(d.rules().map(|r| r.family).collect::<Vec<_>>(), [Family::Ipv4, Family::Ipv6]);
        // IPv6-only (no IPv4 cluster range): the IPv6 table alone; IPv4
        // netfilter left alone.
        let v6only = Desired::new(true, None, [], &[]).with_ipv6(
            "fd00:244::/56".parse().unwrap(),
            ["fd00:30::1".parse().unwrap()],
            &[],
        );
        assert_eq!(v6only.rules().map(|r| r.family).collect::<Vec<_>>(), [Family::Ipv6]);
    }

    #[test]
    fn nft_script_replaces_the_table_atomically() {
        let s = render_nft(desired().ipv4.as_ref().unwrap());
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(&lines[..3], &["table ip sluice", "delete table ip sluice", "table ip sluice {"]);
        assert!(s.contains("type ipv4_addr"), "{s}");
        assert!(s.contains("elements = { 10.244.0.0/16, 172.30.0.1/32, 172.30.0.2/32, 192.168.0.0/16 }"), "{s}");
        assert!(s.contains("ip saddr 10.244.0.0/16 ip daddr != @no_masquerade counter masquerade"), "{s}");
        assert!(s.contains(&revision_marker(desired().ipv4.as_ref().unwrap())));
        // Another node set: another revision.
        let other = Desired::new(true, "10.244.0.0/16".parse().ok(), ["172.30.0.9".parse().unwrap()], &[]);
        assert_ne!(revision_marker(other.ipv4.as_ref().unwrap()), revision_marker(desired().ipv4.as_ref().unwrap()));
    }

    #[test]
    fn the_ipv6_script_is_the_ip6_table() {
        let s = render_nft(dual().ipv6.as_ref().unwrap());
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(&lines[..3], &["table ip6 sluice", "delete table ip6 sluice", "table ip6 sluice {"]);
        assert!(s.contains("type ipv6_addr"), "{s}");
        assert!(s.contains("ip6 saddr fd00:244::/56 ip6 daddr != @no_masquerade counter masquerade"), "{s}");
        assert_eq!(
            render_iptables(net("fd00:244::/56")).lines().nth(2),
            Some("-A SLUICE-FORWARD -s fd00:244::/56 -m comment --comment sluice-from-pods -j ACCEPT")
        );
    }

    #[test]
    fn nat64s_pool_is_masqueraded_and_forwarded_beside_the_pods_or_alone() {
        let pool: Ipv4Network = "198.18.0.0/16".parse().unwrap();
        // Dual-stack: one more masquerade rule and two forward accepts in
        // the IPv4 rules; nothing else moves.
        let d = dual().with_nat64(Some(pool), ["172.30.0.1".parse().unwrap()]);
        let v4 = d.ipv4.as_ref().unwrap();
        assert_eq!(v4.no_masquerade, dual().ipv4.unwrap().no_masquerade);
        let s = render_nft(v4);
        assert!(s.contains("ip saddr 10.244.0.0/16 ip daddr != @no_masquerade counter masquerade"), "{s}");
        assert!(s.contains("\t\tip saddr 198.18.0.0/16 counter masquerade\n"), "{s}");
        assert_ne!(revision_marker(v4), revision_marker(dual().ipv4.as_ref().unwrap()), "a new revision");
        assert_eq!(
            forward_rules_of(v4)[2..],
            [
                "-A SLUICE-FORWARD -s 198.18.0.0/16 -m comment --comment sluice-from-nat64 -j ACCEPT",
                "-A SLUICE-FORWARD -d 198.18.0.0/16 -m comment --comment sluice-to-nat64 -j ACCEPT",
            ]
        );
        assert_eq!(d.ipv6, dual().ipv6, "the IPv6 table is not NAT64's");
        // IPv6-only: the pool stands in for the IPv4 pods, the node's
        // IPv4 stays un-NATed.
        let v6only = Desired::new(true, None, [], &[])
            .with_ipv6("fd00:244::/56".parse().unwrap(), [], &[])
            .with_nat64(Some(pool), ["172.30.0.1".parse().unwrap()]);
        assert_eq!(v6only.rules().map(|r| r.family).collect::<Vec<_>>(), [Family::Ipv4, Family::Ipv6]);
        let v4 = v6only.ipv4.as_ref().unwrap();
        assert_eq!(v4.no_masquerade, vec![net("172.30.0.1/32"), net("198.18.0.0/16")]);
        assert!(render_nft(v4).contains("ip saddr 198.18.0.0/16 ip daddr != @no_masquerade counter masquerade"));
        assert_eq!(forward_rules_of(v4), forward_rules(net("198.18.0.0/16")));
        // Off: nothing.
        assert_eq!(dual().with_nat64(None, []), dual());
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

    /// One family's netfilter in memory.
    #[derive(Default, Clone)]
    struct FakeFamily {
        table: Option<String>,
        chain: Option<Vec<String>>,
        jump: bool,
    }

    /// A node's netfilter in memory, both families.
    #[derive(Default)]
    struct FakeFirewall {
        families: RefCell<BTreeMap<&'static str, FakeFamily>>,
        calls: RefCell<Vec<String>>,
    }

    impl FakeFirewall {
        fn family(&self, f: Family) -> FakeFamily {
            self.families.borrow().get(f.nft()).cloned().unwrap_or_default()
        }
        fn edit(&self, f: Family, change: impl FnOnce(&mut FakeFamily)) {
            change(self.families.borrow_mut().entry(f.nft()).or_default());
        }
    }

    impl Firewall for FakeFirewall {
        async fn nft_table(&self, f: Family) -> Result<Option<String>> {
            Ok(self.family(f).table)
        }
        async fn nft_apply(&self, script: &str) -> Result<()> {
            let f = if script.contains("table ip6 ") { Family::Ipv6 } else { Family::Ipv4 };
            self.calls.borrow_mut().push(format!("nft {}", f.nft()));
            self.edit(f, |x| x.table = (!script.starts_with("delete")).then(|| script.to_string()));
            Ok(())
        }
        async fn forward_chain(&self, f: Family) -> Result<Option<Vec<String>>> {
            Ok(self.family(f).chain)
        }
        async fn iptables_restore(&self, f: Family, input: &str) -> Result<()> {
            self.calls.borrow_mut().push(f.iptables_restore().into());
            let rules = input.lines().filter(|l| l.starts_with("-A ")).map(str::to_string);
            let chain = std::iter::once(format!("-N {FORWARD_CHAIN}")).chain(rules).collect();
            self.edit(f, |x| x.chain = Some(chain));
            Ok(())
        }
        async fn forward_jump_present(&self, f: Family) -> Result<bool> {
            Ok(self.family(f).jump)
        }
        async fn insert_forward_jump(&self, f: Family) -> Result<()> {
            self.calls.borrow_mut().push(format!("{} insert jump", f.iptables()));
            self.edit(f, |x| x.jump = true);
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
        assert_eq!(fw.calls.take(), vec!["nft ip", "iptables-restore", "iptables insert jump"]);
        assert_eq!(block_on(ensure(&fw, &d)).unwrap(), Changes::default());
        assert!(fw.calls.borrow().is_empty());
        assert_eq!(fw.family(Family::Ipv6).table, None, "IPv4 only: no ip6 table");
        // Someone flushed the chain: only the chain is restored.
        fw.edit(Family::Ipv4, |x| x.chain = Some(vec![format!("-N {FORWARD_CHAIN}")]));
        assert_eq!(block_on(ensure(&fw, &d)).unwrap(), Changes { forward_chain: true, ..Default::default() });
        // Membership changed: a new table revision.
        let d2 = Desired::new(true, "10.244.0.0/16".parse().ok(), ["172.30.0.9".parse().unwrap()], &[]);
        assert_eq!(block_on(ensure(&fw, &d2)).unwrap(), Changes { nft_table: true, ..Default::default() });
    }

    #[test]
    fn a_dual_stack_node_keeps_both_families_and_repairs_each_alone() {
        let fw = FakeFirewall::default();
        let d = dual();
        block_on(ensure(&fw, &d)).unwrap();
        assert_eq!(
            fw.calls.take(),
            vec![
                "nft ip",
                "iptables-restore",
                "iptables insert jump",
                "nft ip6",
                "ip6tables-restore",
                "ip6tables insert jump"
            ]
        );
        assert!(fw.family(Family::Ipv6).table.unwrap().contains("ip6 saddr fd00:244::/56"));
        assert_eq!(block_on(ensure(&fw, &d)).unwrap(), Changes::default());
        // The IPv6 table deleted by hand: only it comes back.
        fw.edit(Family::Ipv6, |x| x.table = None);
        assert_eq!(block_on(ensure(&fw, &d)).unwrap(), Changes { nft_table: true, ..Default::default() });
        assert_eq!(fw.calls.take(), vec!["nft ip6"]);
        // Masquerade off: both tables go, forwarding stays accepted in both.
        let off = Desired { masquerade: false, ..d };
        block_on(ensure(&fw, &off)).unwrap();
        for f in Family::BOTH {
            assert!(fw.family(f).table.is_none() && fw.family(f).jump, "{f:?}");
        }
    }

    #[test]
    fn masquerade_counter_parses() {
        let t = "table ip sluice {\n\tchain postrouting {\n\t\tip saddr 10.244.0.0/16 ip daddr != @no_masquerade counter packets 12 bytes 840 masquerade\n\t}\n}";
        assert_eq!(parse_masquerade_counter(t), Some(MasqueradeCounter { packets: 12, bytes: 840 }));
        assert_eq!(parse_masquerade_counter("table ip sluice {}"), None);
    }

    #[test]
    fn ensure_reports_the_counter_of_the_tables_it_read() {
        let fw = FakeFirewall::default();
        let d = dual();
        let (_, first) = block_on(ensure_counted(&fw, &d)).unwrap();
        assert_eq!(first, Some(MasqueradeCounter::default()), "tables just written count from zero");
        // The kernel counted since: the next check reads both listings.
        for (f, n) in [(Family::Ipv4, 7), (Family::Ipv6, 3)] {
            let counted =
                fw.family(f).table.unwrap().replace("counter", &format!("counter packets {n} bytes {}", n * 60));
            fw.edit(f, |x| x.table = Some(counted));
        }
        let (changes, now) = block_on(ensure_counted(&fw, &d)).unwrap();
        assert_eq!((changes, now), (Changes::default(), Some(MasqueradeCounter { packets: 10, bytes: 600 })));
        let off = Desired { masquerade: false, ..d };
        assert_eq!(block_on(ensure_counted(&fw, &off)).unwrap().1, None);
    }

    #[test]
    fn masquerade_off_removes_the_table_but_keeps_forwarding_accepted() {
        let fw = FakeFirewall::default();
        block_on(ensure(&fw, &desired())).unwrap();
        let off = Desired { masquerade: false, ..desired() };
        assert_eq!(block_on(ensure(&fw, &off)).unwrap(), Changes { nft_table: true, ..Default::default() });
        assert!(fw.family(Family::Ipv4).table.is_none());
        assert!(fw.family(Family::Ipv4).jump);
        assert_eq!(block_on(ensure(&fw, &off)).unwrap(), Changes::default());
    }
}
