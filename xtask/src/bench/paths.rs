//! The datapath rows: each path's client and server, one round over every
//! path on fresh labs in a rotated order, and one path's measurement
//! (TCP_RR, TCP_CRR in-process; throughput and CPU from iperf3; see
//! sluice_tests::bench).
use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use sluice_node::datapath::pins::PinDir;
use sluice_tests::{
    bench::{self, Latency, Throughput},
    lab::{ns_cmd, ns_exec, Lab, LabOptions},
};

use super::{
    args::Plan,
    labs::{install_bench_service, pod_ip, sluice_lab, BridgeNet, Overlay, VethPair, BENCH_SERVER_PORT, BENCH_SERVICE},
    prog_cost, vxlan,
};

#[derive(Clone, Debug, Default)]
pub(super) struct PathFigures {
    pub(super) rr: Latency,
    pub(super) crr: Latency,
    /// Not measured for Service paths (the same packets as pod to pod once
    /// connected; RR and CRR show what the Service costs).
    pub(super) tput: Option<Throughput>,
    /// The sluice programs' cost per packet and per transaction in a TCP_RR
    /// and a TCP_CRR pass with BPF statistics on (`{"rr": .., "crr": ..}`,
    /// see `prog_cost::to_json`); rows with `programs` only.
    pub(super) programs: Option<Value>,
}

/// One side of a measured path: namespace and address of the server.
pub(super) struct Path2 {
    name: String,
    client_ns: String,
    server_ns: String,
    target: bench::Target,
    /// `sluice-agent monitor --type trace` runs on these nodes (netns, pin
    /// dir) while the path is measured: the cost of a listener.
    traced: Vec<(String, PathBuf)>,
    /// How the client's packets must be seen to cross the tunnel, so a
    /// tunnel row that went native fails instead of being reported.
    tunnel: Option<TunnelCheck>,
    /// Nodes (name, pin dir) whose programs' cost per packet is measured
    /// in a pass of its own after the row's figures (`prog_cost`).
    pub(super) programs: Vec<(String, PathBuf)>,
    /// Measure single-stream throughput too (rows whose targets are
    /// TCP_RR and TCP_CRR only leave it out).
    pub(super) throughput: bool,
}

/// Evidence that a path was tunneled.
enum TunnelCheck {
    /// A kernel tunnel device (netns, name) the packets leave through:
    /// its tx counter.
    Device(String, &'static str),
    /// sluice's own encapsulation (its programs write the VXLAN headers and
    /// bypass the device): the client node's `pod_to_tunnel` counter.
    Sluice(PathBuf),
}

impl TunnelCheck {
    fn sent(&self) -> Result<u64> {
        match self {
            TunnelCheck::Device(netns, device) => vxlan::tx_packets(netns, device),
            TunnelCheck::Sluice(pins) => bench::tunneled(&PinDir::new(pins)),
        }
    }

    fn describe(&self) -> String {
        match self {
            TunnelCheck::Device(netns, device) => format!("{netns}: {device}"),
            TunnelCheck::Sluice(pins) => format!("{}: pod_to_tunnel", pins.display()),
        }
    }
}

/// Monitors tracing every forwarded packet while alive.
struct Tracers(Vec<std::process::Child>);

impl Tracers {
    fn start(bins: &Path, nodes: &[(String, PathBuf)]) -> Result<Self> {
        let agent = bins.join("sluice-agent").display().to_string();
        let mut children = Vec::new();
        for (netns, pins) in nodes {
            let pins = pins.display().to_string();
            let child = ns_cmd(netns, &[&agent, "monitor", "--type", "trace", "--pin-dir", &pins])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .context("start sluice-agent monitor")?;
            children.push(child);
        }
        std::thread::sleep(Duration::from_millis(300));
        Ok(Self(children))
    }
}

impl Drop for Tracers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            // SIGTERM: the monitor switches tracing off as it leaves.
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            let _ = c.wait();
        }
    }
}

pub(super) fn measure(p: &Path2, plan: &Plan, bins: &Path) -> Result<PathFigures> {
    let _tracers = Tracers::start(bins, &p.traced)?;
    let tx_before = p.tunnel.as_ref().map(TunnelCheck::sent).transpose()?;
    let figures = PathFigures {
        rr: bench::tcp_rr_to(&p.server_ns, &p.client_ns, p.target, plan.rr)?,
        crr: bench::tcp_crr_to(&p.server_ns, &p.client_ns, p.target, plan.rr)?,
        tput: match p.target.via {
            Some(_) => None,
            None if !p.throughput => None,
            None => Some(bench::throughput(&p.server_ns, &p.client_ns, p.target.server_ip, plan.tput_secs)?),
        },
        programs: None,
    };
    if let (Some(tunnel), Some(before)) = (&p.tunnel, tx_before) {
        // Every TCP_RR request alone is one packet out of the client's node.
        let sent = tunnel.sent()? - before;
        if sent < figures.rr.samples as u64 {
            bail!(
                "{} counted {sent} packets during {} TCP_RR transactions: the path did not use the tunnel",
                tunnel.describe(),
                figures.rr.samples
            );
        }
    }
    let programs = if p.programs.is_empty() { None } else { Some(program_costs(p, plan)?) };
    Ok(PathFigures { programs, ..figures })
}

/// The order of the paths in slice `slice` of round `round`: rotated by
/// one each slice (and each round), so over `n` consecutive slices every
/// path is measured once in every position.
pub(super) fn slice_order(n: usize, slice: usize, round: usize) -> Vec<usize> {
    (0..n).map(|k| (k + slice + round) % n).collect()
}

/// Paths compared with each other, measured in turns: each path's TCP_RR
/// time (then its TCP_CRR time) is cut into `slices` slices, and each
/// slice measures every path once, in the order `slice_order` gives. A
/// drift of the machine within the round (this VM's RR rate moves by
/// ±10 % from one minute to the next) then falls on every path alike,
/// where measuring one path after the other put it between them. Each
/// path's figures are its slices merged (`Latency::merge`); then its
/// programs' cost in a pass of its own, as `measure`. Only for paths
/// without tracers, tunnel check or throughput.
pub(super) fn measure_interleaved(
    ps: &[Path2],
    plan: &Plan,
    slices: usize,
    round: usize,
) -> Result<BTreeMap<String, PathFigures>> {
    if let Some(p) = ps.iter().find(|p| !p.traced.is_empty() || p.tunnel.is_some() || p.throughput) {
        bail!("{}: interleaved measurement has no tracers, tunnel check or throughput", p.name);
    }
    let slice = plan.rr / slices as u32;
    let turns = |run: RrFn| -> Result<Vec<Latency>> {
        let mut parts: Vec<Vec<Latency>> = vec![Vec::new(); ps.len()];
        for s in 0..slices {
            for i in slice_order(ps.len(), s, round) {
                let p = &ps[i];
                parts[i].push(run(&p.server_ns, &p.client_ns, p.target, slice).with_context(|| p.name.clone())?);
            }
        }
        Ok(parts.iter().map(|v| Latency::merge(v)).collect())
    };
    let rr = turns(bench::tcp_rr_to)?;
    let crr = turns(bench::tcp_crr_to)?;
    let mut out = BTreeMap::new();
    for ((p, rr), crr) in ps.iter().zip(rr).zip(crr) {
        let programs = if p.programs.is_empty() { None } else { Some(program_costs(p, plan)?) };
        out.insert(p.name.clone(), PathFigures { rr, crr, tput: None, programs });
    }
    Ok(out)
}

/// `prog_cost::pass` over `p`'s nodes.
fn program_costs(p: &Path2, plan: &Plan) -> Result<Value> {
    prog_cost::pass(&p.programs, &p.server_ns, &p.client_ns, p.target, plan.rr)
}

type RrFn = fn(&str, &str, bench::Target, Duration) -> Result<Latency>;

/// Two nodes on a bridge as the sluice labs' are, nothing else: no
/// agent, no netfilter table or rule in either namespace (checked, so the
/// row cannot silently measure something else).
fn bare_nodes(bins: &Path) -> Result<Lab> {
    let mut opts = LabOptions::new(2, 0, bins.to_path_buf());
    opts.sluice = false;
    let lab = Lab::up(&opts)?;
    for n in &lab.state.nodes {
        let rules = netfilter_rules(&n.netns)?;
        if !rules.is_empty() {
            bail!("bare node {} has netfilter rules, the A-bare row would not be bare:\n{}", n.name, rules.join("\n"));
        }
    }
    Ok(lab)
}

/// Every netfilter table in `netns` (nftables, which iptables-nft also
/// writes through), one line each.
fn netfilter_rules(netns: &str) -> Result<Vec<String>> {
    let out = ns_exec(netns, &["nft", "list", "tables"])?;
    Ok(out.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect())
}

/// A path with nothing traced, no tunnel to check and no program costs.
pub(super) fn path(name: &str, client_ns: &str, server_ns: &str, target: bench::Target) -> Path2 {
    Path2 {
        name: name.to_string(),
        client_ns: client_ns.to_string(),
        server_ns: server_ns.to_string(),
        target,
        traced: vec![],
        tunnel: None,
        programs: vec![],
        throughput: true,
    }
}

/// Node name and pin dir of every node of a sluice lab.
pub(super) fn lab_pins(lab: &Lab) -> Vec<(String, PathBuf)> {
    lab.state.nodes.iter().map(|n| (n.name.clone(), n.pin_dir.clone())).collect()
}

/// The rows measured on the native sluice lab (`S` and the lab's own
/// nodes, `A`), on the tunneled one, on the bridge labs and on bare nodes.
const NATIVE_ROWS: [&str; 5] = ["A node-node", "S same-node", "S cross-node", "S cross traced", "S cross-node svc"];
const BARE_ROW: &str = "A-bare node-node";

/// One round: fresh labs, every path (or those `plan.only` names), in an
/// order rotated by `round`. Only the labs those paths need are built.
pub(super) fn round(round: usize, bins: &Path, plan: &Plan) -> Result<BTreeMap<String, PathFigures>> {
    let wants = |names: &[&str]| names.iter().any(|n| plan.wants(n));
    // Native, at the uplink's MTU, as before `--tunnel` existed: `auto`
    // gives pods MTU − 50 even when every peer is native.
    let s = if wants(&NATIVE_ROWS) {
        let mut s = sluice_lab(bins, "never")?;
        s.add_pod(0, "n1p1")?;
        s.add_pod(0, "n1p2")?;
        s.add_pod(1, "n2p1")?;
        install_bench_service(&s, &s.state.nodes[1].pods[0], &s.state.nodes[1].name)?;
        Some(s)
    } else {
        None
    };
    // Issue 15: every peer tunneled, nodes on one LAN.
    let sv = if wants(&["S-vxlan cross-node"]) {
        let mut sv = sluice_lab(bins, "always")?;
        sv.add_pod(0, "n1p1")?;
        sv.add_pod(1, "n2p1")?;
        Some(sv)
    } else {
        None
    };
    let b = wants(&["B same-node", "B cross-node"])
        .then(|| BridgeNet::new(bins, &[0, 0, 1], Overlay::HostRoutes))
        .transpose()?;
    let k = wants(&["K vxlan cross-node"]).then(|| BridgeNet::new(bins, &[0, 1], Overlay::KernelVxlan)).transpose()?;
    let l = wants(&["L veth pair"]).then(VethPair::new).transpose()?;
    // Issue 24: the limit for cross-node traffic, nodes with no netfilter.
    let bare = wants(&[BARE_ROW]).then(|| bare_nodes(bins)).transpose()?;
    let mut paths = Vec::new();
    if let Some(s) = &s {
        let (n1, n2) = (&s.state.nodes[0], &s.state.nodes[1]);
        paths.push(path("A node-node", &n1.netns, &n2.netns, bench::Target::direct(n2.ip.parse::<Ipv4Addr>()?)));
    }
    if let Some(bare) = &bare {
        let (n1, n2) = (&bare.state.nodes[0], &bare.state.nodes[1]);
        paths.push(path(BARE_ROW, &n1.netns, &n2.netns, bench::Target::direct(n2.ip.parse::<Ipv4Addr>()?)));
    }
    if let Some(l) = &l {
        paths.push(path("L veth pair", &l.a, &l.b, bench::Target::direct("10.99.0.2".parse::<Ipv4Addr>()?)));
    }
    if let Some(b) = &b {
        paths.push(path("B same-node", &b.pods[0].1, &b.pods[1].1, bench::Target::direct(b.pods[1].2)));
        paths.push(path("B cross-node", &b.pods[0].1, &b.pods[2].1, bench::Target::direct(b.pods[2].2)));
    }
    if let Some(s) = &s {
        let (n1, n2) = (&s.state.nodes[0], &s.state.nodes[1]);
        let (sp1, sp2, sp3) = (&n1.pods[0], &n1.pods[1], &n2.pods[0]);
        let mut same = path("S same-node", &sp1.netns, &sp2.netns, bench::Target::direct(pod_ip(sp2)));
        same.programs = lab_pins(s);
        paths.push(same);
        let mut cross = path("S cross-node", &sp1.netns, &sp3.netns, bench::Target::direct(pod_ip(sp3)));
        cross.programs = lab_pins(s);
        paths.push(cross);
    }
    if let Some(sv) = &sv {
        let (svn1, svn2) = (&sv.state.nodes[0], &sv.state.nodes[1]);
        let mut p = path(
            "S-vxlan cross-node",
            &svn1.pods[0].netns,
            &svn2.pods[0].netns,
            bench::Target::direct(pod_ip(&svn2.pods[0])),
        );
        p.tunnel = Some(TunnelCheck::Sluice(svn1.pin_dir.clone()));
        p.programs = lab_pins(sv);
        paths.push(p);
    }
    if let Some(k) = &k {
        let mut p = path("K vxlan cross-node", &k.pods[0].1, &k.pods[1].1, bench::Target::direct(k.pods[1].2));
        p.tunnel = Some(TunnelCheck::Device(k.node_netns(0), vxlan::DEVICE));
        paths.push(p);
    }
    if let Some(s) = &s {
        let (n1, n2) = (&s.state.nodes[0], &s.state.nodes[1]);
        let (sp1, sp3) = (&n1.pods[0], &n2.pods[0]);
        let mut traced = path("S cross traced", &sp1.netns, &sp3.netns, bench::Target::direct(pod_ip(sp3)));
        traced.traced = vec![(n1.netns.clone(), n1.pin_dir.clone()), (n2.netns.clone(), n2.pin_dir.clone())];
        paths.push(traced);
        let via = std::net::SocketAddr::from((BENCH_SERVICE.0.parse::<Ipv4Addr>()?, BENCH_SERVICE.1));
        let target = bench::Target { server_ip: pod_ip(sp3).into(), server_port: BENCH_SERVER_PORT, via: Some(via) };
        paths.push(path("S cross-node svc", &sp1.netns, &sp3.netns, target));
    }
    paths.retain(|p| plan.wants(&p.name));
    let n = paths.len();
    paths.rotate_left(round % n.max(1));
    let mut out = BTreeMap::new();
    for p in &paths {
        eprintln!("bench: round {} {}", round + 1, p.name);
        out.insert(p.name.to_string(), measure(p, plan, bins).with_context(|| format!("measure {}", p.name))?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_as_many_slices_as_paths_each_path_takes_every_position_once() {
        for round in 0..4 {
            for n in 1..5 {
                let orders: Vec<Vec<usize>> = (0..n).map(|s| slice_order(n, s, round)).collect();
                for o in &orders {
                    let mut sorted = o.clone();
                    sorted.sort();
                    assert_eq!(sorted, (0..n).collect::<Vec<_>>(), "every path once per slice");
                }
                for pos in 0..n {
                    let mut at: Vec<usize> = orders.iter().map(|o| o[pos]).collect();
                    at.sort();
                    assert_eq!(at, (0..n).collect::<Vec<_>>(), "position {pos} over {n} slices");
                }
            }
        }
    }
}
