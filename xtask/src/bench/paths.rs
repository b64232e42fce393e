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
use sluice_node::datapath::pins::PinDir;
use sluice_tests::{
    bench::{self, Latency, Throughput},
    lab::ns_cmd,
};

use super::{
    args::Plan,
    labs::{install_bench_service, pod_ip, sluice_lab, BridgeNet, Overlay, VethPair, BENCH_SERVER_PORT, BENCH_SERVICE},
    vxlan,
};

#[derive(Clone, Debug, Default)]
pub(super) struct PathFigures {
    pub(super) rr: Latency,
    pub(super) crr: Latency,
    /// Not measured for Service paths (the same packets as pod to pod once
    /// connected; RR and CRR show what the Service costs).
    pub(super) tput: Option<Throughput>,
}

/// One side of a measured path: namespace and address of the server.
struct Path2 {
    name: &'static str,
    client_ns: String,
    server_ns: String,
    target: bench::Target,
    /// `sluice-agent monitor --type trace` runs on these nodes (netns, pin
    /// dir) while the path is measured: the cost of a listener.
    traced: Vec<(String, PathBuf)>,
    /// How the client's packets must be seen to cross the tunnel, so a
    /// tunnel row that went native fails instead of being reported.
    tunnel: Option<TunnelCheck>,
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

fn measure(p: &Path2, plan: &Plan, bins: &Path) -> Result<PathFigures> {
    let _tracers = Tracers::start(bins, &p.traced)?;
    let tx_before = p.tunnel.as_ref().map(TunnelCheck::sent).transpose()?;
    let figures = PathFigures {
        rr: bench::tcp_rr_to(&p.server_ns, &p.client_ns, p.target, plan.rr)?,
        crr: bench::tcp_crr_to(&p.server_ns, &p.client_ns, p.target, plan.rr)?,
        tput: match p.target.via {
            Some(_) => None,
            None => Some(bench::throughput(&p.server_ns, &p.client_ns, p.target.server_ip, plan.tput_secs)?),
        },
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
    Ok(figures)
}

/// One round: fresh labs, every path, in an order rotated by `round`.
pub(super) fn round(round: usize, bins: &Path, plan: &Plan) -> Result<BTreeMap<String, PathFigures>> {
    // Native, at the uplink's MTU, as before `--tunnel` existed: `auto`
    // gives pods MTU − 50 even when every peer is native.
    let mut s = sluice_lab(bins, "never")?;
    s.add_pod(0, "n1p1")?;
    s.add_pod(0, "n1p2")?;
    s.add_pod(1, "n2p1")?;
    // Issue 15: every peer tunneled, nodes on one LAN.
    let mut sv = sluice_lab(bins, "always")?;
    sv.add_pod(0, "n1p1")?;
    sv.add_pod(1, "n2p1")?;
    let b = BridgeNet::new(bins, &[0, 0, 1], Overlay::HostRoutes)?;
    let k = BridgeNet::new(bins, &[0, 1], Overlay::KernelVxlan)?;
    let l = VethPair::new()?;
    let (n1, n2) = (&s.state.nodes[0], &s.state.nodes[1]);
    let (sp1, sp2, sp3) = (&n1.pods[0], &n1.pods[1], &n2.pods[0]);
    let (svn1, svn2) = (&sv.state.nodes[0], &sv.state.nodes[1]);
    install_bench_service(&s, sp3, &n2.name)?;
    let mut paths = vec![
        Path2 {
            name: "A node-node",
            client_ns: n1.netns.clone(),
            server_ns: n2.netns.clone(),
            target: bench::Target::direct(n2.ip.parse()?),
            traced: vec![],
            tunnel: None,
        },
        Path2 {
            name: "L veth pair",
            client_ns: l.a.clone(),
            server_ns: l.b.clone(),
            target: bench::Target::direct("10.99.0.2".parse()?),
            traced: vec![],
            tunnel: None,
        },
        Path2 {
            name: "B same-node",
            client_ns: b.pods[0].1.clone(),
            server_ns: b.pods[1].1.clone(),
            target: bench::Target::direct(b.pods[1].2),
            traced: vec![],
            tunnel: None,
        },
        Path2 {
            name: "B cross-node",
            client_ns: b.pods[0].1.clone(),
            server_ns: b.pods[2].1.clone(),
            target: bench::Target::direct(b.pods[2].2),
            traced: vec![],
            tunnel: None,
        },
        Path2 {
            name: "S same-node",
            client_ns: sp1.netns.clone(),
            server_ns: sp2.netns.clone(),
            target: bench::Target::direct(pod_ip(sp2)),
            traced: vec![],
            tunnel: None,
        },
        Path2 {
            name: "S cross-node",
            client_ns: sp1.netns.clone(),
            server_ns: sp3.netns.clone(),
            target: bench::Target::direct(pod_ip(sp3)),
            traced: vec![],
            tunnel: None,
        },
        Path2 {
            name: "S-vxlan cross-node",
            client_ns: svn1.pods[0].netns.clone(),
            server_ns: svn2.pods[0].netns.clone(),
            target: bench::Target::direct(pod_ip(&svn2.pods[0])),
            traced: vec![],
            tunnel: Some(TunnelCheck::Sluice(svn1.pin_dir.clone())),
        },
        Path2 {
            name: "K vxlan cross-node",
            client_ns: k.pods[0].1.clone(),
            server_ns: k.pods[1].1.clone(),
            target: bench::Target::direct(k.pods[1].2),
            traced: vec![],
            tunnel: Some(TunnelCheck::Device(k.node_netns(0), vxlan::DEVICE)),
        },
        Path2 {
            name: "S cross traced",
            client_ns: sp1.netns.clone(),
            server_ns: sp3.netns.clone(),
            target: bench::Target::direct(pod_ip(sp3)),
            traced: vec![(n1.netns.clone(), n1.pin_dir.clone()), (n2.netns.clone(), n2.pin_dir.clone())],
            tunnel: None,
        },
        Path2 {
            name: "S cross-node svc",
            client_ns: sp1.netns.clone(),
            server_ns: sp3.netns.clone(),
            target: bench::Target {
                server_ip: pod_ip(sp3),
                server_port: BENCH_SERVER_PORT,
                via: Some(std::net::SocketAddr::from((BENCH_SERVICE.0.parse::<Ipv4Addr>()?, BENCH_SERVICE.1))),
            },
            traced: vec![],
            tunnel: None,
        },
    ];
    if !plan.only.is_empty() {
        paths.retain(|p| plan.only.contains(&p.name));
    }
    let n = paths.len();
    paths.rotate_left(round % n);
    let mut out = BTreeMap::new();
    for p in &paths {
        eprintln!("bench: round {} {}", round + 1, p.name);
        out.insert(p.name.to_string(), measure(p, plan, bins).with_context(|| format!("measure {}", p.name))?);
    }
    Ok(out)
}
