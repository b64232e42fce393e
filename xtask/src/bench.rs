//! `cargo xtask bench`: sluice against the kernel's own paths, measured side
//! by side in one run on the same kind of lab (see sluice_tests::bench for
//! how each figure is taken, and docs/BENCHMARKS.md for a reference run).
//!
//! Paths: A node↔node (no pods), L two namespaces on one veth, B the bridge +
//! host-routes pod network (reference `bridge` + `host-local`, `ip route ...
//! via <other node>`), S sluice (native: `--tunnel=never`, pods at the
//! uplink's MTU); same node and cross-node; S-vxlan sluice with every peer
//! tunneled (`--tunnel=always`) against K, the kernel's VXLAN overlay as
//! Flannel lays it out (`vxlan`), both cross-node; and the Service
//! paths of `services` (socket load balancer vs kube-proxy's iptables rules
//! with 10, 1,000 and 10,000 Services). Every round rebuilds the labs and
//! rotates the order; figures are medians over rounds and ratios are
//! medians of per-round ratios.
use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use sluice_agent::reconcile::map_routes;
use sluice_node::datapath::{pinned_maps::NodeRoutes, pins::PinDir, Datapath};
use sluice_tests::{
    bench::{self, median, percentiles_ms, Latency, Throughput},
    kube_proxy,
    lab::CniCall,
    lab::{ns_cmd, ns_exec, Lab, LabOptions, Pod},
    runtime::{cni_bin_dir, Attachment, ChainRuntime},
    unique, PinDirGuard,
};

use crate::{build_ebpf, repo_root, setup, shell};

mod services;
mod vxlan;

#[derive(clap::Args, Clone, Debug)]
pub struct BenchArgs {
    /// A few seconds per metric, one round: for CI, so the bench can't rot.
    #[arg(long)]
    pub smoke: bool,
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Only the CNI section: ADD+DEL cycles and the burst for sluice and
    /// bridge + host-local, and sluice's per-step profile (release build;
    /// 50 cycles unless --cni-cycles). Writes target/bench/cni.json.
    #[arg(long)]
    pub cni: bool,
    /// ADD+DEL cycles per plugin (default 200, --smoke 10, --cni 50).
    #[arg(long)]
    pub cni_cycles: Option<usize>,
    /// Only the VXLAN comparison (issue 15): A, S cross-node, S-vxlan and
    /// K vxlan, their ratios and targets (release build; --rounds, default
    /// 3). Writes target/bench/vxlan.json.
    #[arg(long)]
    pub vxlan: bool,
    /// Internal: be one measurement's client (MODE rr|crr, ADDR, MILLIS)
    /// and print its figures as JSON; the bench starts it inside a node's
    /// cgroup, where the socket load balancer sees it.
    #[arg(long, hide = true, num_args = 3, value_names = ["MODE", "ADDR", "MILLIS"])]
    pub client: Option<Vec<String>>,
}

struct Plan {
    rounds: usize,
    /// Measure only these paths (all when empty).
    only: Vec<&'static str>,
    rr: Duration,
    tput_secs: u32,
    cni_cycles: usize,
    burst: usize,
    peers: usize,
    release: bool,
    /// Services installed for each measurement of the Service paths, and
    /// rounds of those paths (cheaper than the others; TCP_CRR ratios
    /// near a target need more than three).
    scales: Vec<usize>,
    svc_rounds: usize,
    /// Services (with `services::PER_SERVICE` endpoints each) for the
    /// Services control plane, and single changes timed there.
    svc_control: usize,
    changes: usize,
}

impl Plan {
    fn from(args: &BenchArgs) -> Self {
        let mut plan = Self::defaults(args);
        plan.cni_cycles = args.cni_cycles.unwrap_or(if args.cni && !args.smoke { 50 } else { plan.cni_cycles });
        if args.vxlan {
            plan.only = VXLAN_PATHS.to_vec();
        }
        plan
    }

    fn defaults(args: &BenchArgs) -> Self {
        if args.smoke {
            Plan {
                rounds: args.rounds.unwrap_or(1),
                only: Vec::new(),
                rr: Duration::from_millis(300),
                tput_secs: 1,
                cni_cycles: 10,
                burst: 10,
                peers: 500,
                release: false,
                scales: vec![10, 100],
                svc_rounds: args.rounds.unwrap_or(1),
                svc_control: 100,
                changes: 20,
            }
        } else {
            Plan {
                rounds: args.rounds.unwrap_or(3),
                only: Vec::new(),
                rr: Duration::from_secs(2),
                tput_secs: 4,
                cni_cycles: 200,
                burst: 50,
                peers: 5000,
                release: true,
                scales: vec![10, 1_000, 10_000],
                svc_rounds: args.rounds.unwrap_or(5),
                svc_control: 10_000,
                changes: 200,
            }
        }
    }
}

#[derive(Clone, Debug, Default)]
struct PathFigures {
    rr: Latency,
    crr: Latency,
    /// Not measured for Service paths (the same packets as pod to pod once
    /// connected; RR and CRR show what the Service costs).
    tput: Option<Throughput>,
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

/// The benchmark's Service: one ClusterIP port whose only backend is the
/// cross-node server pod, with kube-proxy's rules on both nodes.
const BENCH_SERVICE: (&str, u16) = ("10.96.0.200", 80);
const BENCH_SERVER_PORT: u16 = 9100;

fn install_bench_service(lab: &Lab, backend: &Pod, backend_node: &str) -> Result<()> {
    let service = kube_proxy::Service {
        namespace: "bench".into(),
        name: "rr".into(),
        cluster_ip: BENCH_SERVICE.0.parse()?,
        ports: vec![kube_proxy::ServicePort {
            name: "tcp".into(),
            protocol: kube_proxy::Protocol::Tcp,
            port: BENCH_SERVICE.1,
            target_port: BENCH_SERVER_PORT,
            node_port: None,
        }],
        external_traffic_policy_local: false,
        endpoints: vec![kube_proxy::Endpoint { ip: pod_ip(backend), node: backend_node.into() }],
    };
    let cidr = sluice_tests::lab::CLUSTER_CIDR.parse()?;
    for n in &lab.state.nodes {
        kube_proxy::apply(&n.netns, std::slice::from_ref(&service), &n.name, cidr)?;
    }
    Ok(())
}

/// Two namespaces joined by one veth: the floor for same-node traffic.
struct VethPair {
    a: String,
    b: String,
}

impl VethPair {
    fn new() -> Result<Self> {
        let (a, b) = (unique("slbl"), unique("slbl"));
        for n in [&a, &b] {
            shell::output(Command::new("ip").args(["netns", "add", n]))?;
            ns_exec(n, &["ip", "link", "set", "lo", "up"])?;
        }
        shell::output(
            Command::new("ip")
                .args(["link", "add", "eth0", "netns", &a, "type", "veth", "peer", "name", "eth0", "netns", &b]),
        )?;
        for (n, ip) in [(&a, "10.99.0.1/24"), (&b, "10.99.0.2/24")] {
            ns_exec(n, &["ip", "addr", "add", ip, "dev", "eth0"])?;
            ns_exec(n, &["ip", "link", "set", "eth0", "up"])?;
        }
        Ok(Self { a, b })
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        for n in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

/// The bridge pod network (Debian's `bridge` + `host-local`) on a lab
/// without sluice, its nodes joined by host routes (the B rows) or by the
/// kernel's VXLAN overlay (the K row).
struct BridgeNet {
    /// Its namespaces (and the overlay's devices in them); torn down after
    /// our Drop has DELeted the pods.
    lab: Lab,
    rt: Vec<ChainRuntime>,
    pods: Vec<(usize, String, Ipv4Addr)>,
}

/// `mtu`: the pods' (and the bridge's); the plugin's default (the
/// bridge's, 1500 here) when None.
fn bridge_conflist(subnet: &str, data: &Path, mtu: Option<u32>) -> Value {
    let mut bridge = json!({
        "type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]], "routes": [{"dst": "0.0.0.0/0"}],
                 "dataDir": data.display().to_string()}});
    if let Some(mtu) = mtu {
        bridge["mtu"] = json!(mtu);
    }
    json!({"cniVersion": "1.0.0", "name": "bench-bridge", "plugins": [bridge]})
}

/// How the bridge network's nodes reach each other's pod CIDRs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Overlay {
    /// `ip route add <other pod CIDR> via <other node>` (Flannel host-gw).
    HostRoutes,
    /// The kernel's VXLAN device with static entries (Flannel vxlan).
    KernelVxlan,
}

impl BridgeNet {
    fn new(bins: &Path, pods_on: &[usize], overlay: Overlay) -> Result<Self> {
        let mut opts = LabOptions::new(2, 0, bins.to_path_buf());
        opts.sluice = false;
        let lab = Lab::up(&opts)?;
        let cni_path = cni_bin_dir(
            &lab.state.dir.join("cni-bin"),
            &bins.join("sluice-cni"),
            &["bridge", "host-local", "loopback"],
        )?;
        let pod_mtu = match overlay {
            Overlay::HostRoutes => None,
            Overlay::KernelVxlan => {
                vxlan::lay_out(&lab.state.nodes, lab.state.mtu)?;
                Some(lab.state.mtu - vxlan::OVERHEAD)
            }
        };
        let mut rt = Vec::new();
        for (i, n) in lab.state.nodes.iter().enumerate() {
            ns_exec(&n.netns, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
            if overlay == Overlay::HostRoutes {
                let other = &lab.state.nodes[1 - i];
                ns_exec(&n.netns, &["ip", "route", "add", &other.pod_cidr, "via", &other.ip])?;
            }
            rt.push(ChainRuntime {
                cni_path: cni_path.clone(),
                conflist: bridge_conflist(&n.pod_cidr, &n.dir.join("host-local"), pod_mtu),
                node_netns: n.netns.clone(),
                path: "/usr/sbin:/usr/bin:/sbin:/bin".into(),
            });
        }
        let mut net = Self { lab, rt, pods: Vec::new() };
        for &i in pods_on {
            let ns = unique("slbp");
            shell::output(Command::new("ip").args(["netns", "add", &ns]))?;
            net.pods.push((i, ns.clone(), Ipv4Addr::UNSPECIFIED));
            let result = net.rt[i].add(&net.attachment(&ns))?;
            let ip = result["ips"][0]["address"]
                .as_str()
                .context("bridge ADD result")?
                .split('/')
                .next()
                .unwrap_or_default()
                .parse()?;
            net.pods.last_mut().expect("pushed").2 = ip;
        }
        Ok(net)
    }

    fn node_netns(&self, i: usize) -> String {
        self.lab.state.nodes[i].netns.clone()
    }

    fn attachment(&self, ns: &str) -> Attachment {
        Attachment {
            container_id: ns.to_string(),
            netns: format!("/run/netns/{ns}"),
            ifname: "eth0".into(),
            capabilities: json!({}),
        }
    }
}

impl Drop for BridgeNet {
    fn drop(&mut self) {
        for (i, ns, _) in &self.pods {
            let _ = self.rt[*i].del(&self.attachment(ns), None);
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

fn pod_ip(p: &Pod) -> Ipv4Addr {
    p.ip.parse().expect("lab pod address")
}

/// One round: fresh labs, every path, in an order rotated by `round`.
fn round(round: usize, bins: &Path, plan: &Plan) -> Result<BTreeMap<String, PathFigures>> {
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

/// A two-node sluice lab without pods, agents run with `--tunnel=<mode>`.
fn sluice_lab(bins: &Path, tunnel: &str) -> Result<Lab> {
    let mut opts = LabOptions::new(2, 0, bins.to_path_buf());
    opts.extra_agent_args = vec![format!("--tunnel={tunnel}")];
    Lab::up(&opts)
}

/// What one plugin call reported of its own steps: (step, ms).
type Steps = Vec<(String, f64)>;

/// `step <name> <ms> ms` lines of `SLUICE_CNI_TIMINGS=1` (sluice_node::step_timer).
fn parse_steps(stderr: &str) -> Steps {
    stderr
        .lines()
        .filter_map(|l| {
            let mut w = l.strip_prefix("step ")?.split_whitespace();
            let (name, ms) = (w.next()?, w.next()?.parse().ok()?);
            Some((name.to_string(), ms))
        })
        .collect()
}

/// p50 and p99 of each step, in the order first seen.
fn step_percentiles(calls: &[Steps]) -> Value {
    let mut order: Vec<String> = Vec::new();
    let mut by_step: BTreeMap<String, Vec<Duration>> = BTreeMap::new();
    for call in calls {
        for (name, ms) in call {
            if !by_step.contains_key(name) {
                order.push(name.clone());
            }
            by_step.entry(name.clone()).or_default().push(Duration::from_secs_f64(ms / 1e3));
        }
    }
    Value::Array(
        order
            .iter()
            .map(|name| {
                let (p50, p99) = percentiles_ms(by_step[name].clone());
                json!({"step": name, "p50_ms": p50, "p99_ms": p99})
            })
            .collect(),
    )
}

/// ADD+DEL cycles of a plugin, and a burst of concurrent ADDs. Each call
/// returns the steps it reported (none for the reference plugins).
fn cni_latency(
    add: &(dyn Fn(&str) -> Result<Steps> + Sync),
    del: &dyn Fn(&str) -> Result<Steps>,
    cycles: usize,
    burst: usize,
) -> Result<Value> {
    let (mut times, mut add_times, mut del_times) = (Vec::new(), Vec::new(), Vec::new());
    let (mut add_steps, mut del_steps) = (Vec::new(), Vec::new());
    for _ in 0..cycles {
        let ns = unique("slbc");
        shell::output(Command::new("ip").args(["netns", "add", &ns]))?;
        let t = Instant::now();
        add_steps.push(add(&ns)?);
        let added = t.elapsed();
        del_steps.push(del(&ns)?);
        times.push(t.elapsed());
        add_times.push(added);
        del_times.push(t.elapsed() - added);
        shell::output(Command::new("ip").args(["netns", "del", &ns]))?;
    }
    let (p50, p99) = percentiles_ms(times);
    let (add_p50, add_p99) = percentiles_ms(add_times);
    let (del_p50, del_p99) = percentiles_ms(del_times);
    let names: Vec<String> = (0..burst).map(|_| unique("slbb")).collect();
    for n in &names {
        shell::output(Command::new("ip").args(["netns", "add", n]))?;
    }
    let t = Instant::now();
    let results: Vec<Result<(Duration, Steps)>> = std::thread::scope(|s| {
        let hs: Vec<_> = names
            .iter()
            .map(|n| {
                s.spawn(move || {
                    let t = Instant::now();
                    add(n).map(|steps| (t.elapsed(), steps))
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("burst thread")).collect()
    });
    let burst_total = t.elapsed();
    let (mut each, mut burst_steps) = (Vec::new(), Vec::new());
    for r in results {
        let (d, steps) = r?;
        each.push(d);
        burst_steps.push(steps);
    }
    for n in &names {
        del(n)?;
        let _ = Command::new("ip").args(["netns", "del", n]).output();
    }
    let (bp50, bp99) = percentiles_ms(each);
    Ok(json!({"cycles": cycles, "add_del_p50_ms": p50, "add_del_p99_ms": p99,
              "add_p50_ms": add_p50, "add_p99_ms": add_p99, "del_p50_ms": del_p50, "del_p99_ms": del_p99,
              "burst": burst, "burst_total_ms": burst_total.as_secs_f64() * 1e3, "burst_add_p50_ms": bp50, "burst_add_p99_ms": bp99,
              "steps": {"ADD": step_percentiles(&add_steps), "DEL": step_percentiles(&del_steps), "burst ADD": step_percentiles(&burst_steps)}}))
}

fn cni_bench(bins: &Path, plan: &Plan) -> Result<Value> {
    let s = Lab::up(&LabOptions::new(1, 0, bins.to_path_buf()))?;
    let node = s.state.nodes[0].clone();
    let conf = Lab::plugin_config(&node)?;
    let call = |cmd: &str, ns: &str| -> Result<Steps> {
        let mut c = CniCall::new(cmd, ns, Some(ns), conf.clone());
        c.env.push(("SLUICE_CNI_TIMINGS".into(), "1".into()));
        let out = s.cni_call(&node, &c)?;
        if !out.success {
            bail!("sluice-cni {cmd}: {}{}", out.stdout, out.stderr);
        }
        Ok(parse_steps(&out.stderr))
    };
    let sluice = cni_latency(&|ns| call("ADD", ns), &|ns| call("DEL", ns), plan.cni_cycles, plan.burst)?;
    let b = BridgeNet::new(bins, &[], Overlay::HostRoutes)?;
    let rt = &b.rt[0];
    let att = |ns: &str| b.attachment(ns);
    let bridge = cni_latency(
        &|ns| rt.add(&att(ns)).map(|_| Steps::new()),
        &|ns| rt.del(&att(ns), None).map(|_| Steps::new()),
        plan.cni_cycles,
        plan.burst,
    )?;
    Ok(json!({"sluice": sluice, "bridge_host_local": bridge}))
}

/// The CNI lines of the report: both plugins' figures, their ratio, and
/// sluice's own per-step profile.
fn render_cni(cni: &Value) -> String {
    let mut o = String::new();
    for (label, key) in [("sluice", "sluice"), ("bridge+host-local", "bridge_host_local")] {
        let c = &cni[key];
        o += &format!(
            "CNI {label}: ADD+DEL p50 {:.1} ms p99 {:.1} ms ({} cycles; ADD p50 {:.1} p99 {:.1}, DEL p50 {:.1} p99 {:.1}); burst of {} ADDs {:.0} ms (p99 {:.1} ms)\n",
            f(&c["add_del_p50_ms"]),
            f(&c["add_del_p99_ms"]),
            c["cycles"],
            f(&c["add_p50_ms"]),
            f(&c["add_p99_ms"]),
            f(&c["del_p50_ms"]),
            f(&c["del_p99_ms"]),
            c["burst"],
            f(&c["burst_total_ms"]),
            f(&c["burst_add_p99_ms"])
        );
    }
    let ratio = |k: &str| f(&cni["sluice"][k]) / f(&cni["bridge_host_local"][k]);
    o += &format!(
        "CNI sluice / bridge+host-local: ADD+DEL p99 {:.2}, burst of {} {:.2}\n",
        ratio("add_del_p99_ms"),
        cni["sluice"]["burst"],
        ratio("burst_total_ms")
    );
    for (verb, steps) in cni["sluice"]["steps"].as_object().into_iter().flatten() {
        let cells: Vec<String> = steps
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| format!("{} {:.2}/{:.2}", s["step"].as_str().unwrap_or(""), f(&s["p50_ms"]), f(&s["p99_ms"])))
            .collect();
        o += &format!("  sluice {verb} steps ms p50/p99: {}\n", cells.join(", "));
    }
    o
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// `count` peers (at most 8192) as the agent accepts them: /30 pod CIDRs
/// inside the lab's cluster CIDR (10.244.128.0/17, clear of the lab nodes'
/// own) and node IPs on the lab's node network (172.30.0.10-249, shared:
/// the agent routes each CIDR on its own).
fn synthetic_routes(count: usize) -> map_routes::Routes {
    (0..count)
        .map(|i| {
            let cidr = format!("10.244.{}.{}/30", 128 + i / 64, (i % 64) * 4).parse().expect("valid");
            let ip = Ipv4Addr::new(172, 30, 0, 10 + (i % 240) as u8);
            (cidr, ip)
        })
        .collect()
}

fn control_plane(bins: &Path, plan: &Plan) -> Result<Value> {
    // Reconcile N routes from scratch, in-process, with the agent's own code.
    let guard = PinDirGuard::new()?;
    let pins = PinDir::new(&guard.path);
    let _dp = Datapath::load(&pins)?;
    let mut map = NodeRoutes::open(&pins)?;
    let desired = synthetic_routes(plan.peers);
    let t = Instant::now();
    map_routes::reconcile(&mut map, &desired)?;
    let from_scratch = t.elapsed();
    let t = Instant::now();
    map_routes::reconcile(&mut map, &desired)?;
    let noop = t.elapsed();

    // The agent's memory, idle and with N peers in its peers file.
    let lab = Lab::up(&LabOptions::new(1, 0, bins.to_path_buf()))?;
    let pid = lab.state.nodes[0].agent_pid.context("agent pid")?;
    std::thread::sleep(Duration::from_millis(500));
    let idle = rss_kib(pid);
    let mut peers: Vec<Value> =
        vec![json!({"name": "n1", "nodeIP": lab.state.nodes[0].ip, "podCIDR": lab.state.nodes[0].pod_cidr})];
    for (i, (cidr, ip)) in desired.iter().enumerate() {
        peers.push(json!({"name": format!("peer{i}"), "nodeIP": ip.to_string(), "podCIDR": cidr.to_string()}));
    }
    let tmp = lab.state.dir.join("peers.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(&json!({ "peers": peers }))?)?;
    let t = Instant::now();
    std::fs::rename(&tmp, lab.peers_file())?;
    let lab_pins = PinDir::new(&lab.state.nodes[0].pin_dir);
    let lab_map = NodeRoutes::open(&lab_pins)?;
    while lab_map.all()?.len() < plan.peers {
        if t.elapsed() > Duration::from_secs(60) {
            bail!("agent did not apply {} peers within 60 s", plan.peers);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let file_to_map = t.elapsed();
    std::thread::sleep(Duration::from_millis(1500));
    let with_peers = rss_kib(pid);
    drop(lab);

    // Kubernetes: one Node change to its map entry.
    let mut kopts = LabOptions::new(1, 0, bins.to_path_buf());
    kopts.kubernetes = true;
    let klab = Lab::up(&kopts)?;
    let kpins = PinDir::new(&klab.state.nodes[0].pin_dir);
    let kmap = NodeRoutes::open(&kpins)?;
    let api = klab.api.as_ref().context("api server")?;
    let mut lat = Vec::new();
    for i in 0..20u8 {
        let cidr = format!("10.244.{}.0/24", 100 + i);
        let t = Instant::now();
        api.upsert_node(&format!("k{i}"), &format!("172.30.0.{}", 100 + i), Some(&cidr));
        let want: ipnetwork::Ipv4Network = cidr.parse()?;
        while !kmap.all()?.contains_key(&want) {
            if t.elapsed() > Duration::from_secs(10) {
                bail!("node change not applied in 10 s");
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        lat.push(t.elapsed());
    }
    let (np50, np99) = percentiles_ms(lat);
    Ok(json!({
        "peers": plan.peers,
        "reconcile_from_scratch_ms": from_scratch.as_secs_f64() * 1e3,
        "reconcile_noop_ms": noop.as_secs_f64() * 1e3,
        "agent_rss_idle_mib": idle as f64 / 1024.0,
        "agent_rss_with_peers_mib": with_peers as f64 / 1024.0,
        "peers_file_to_map_ms": file_to_map.as_secs_f64() * 1e3,
        "node_change_to_map_p50_ms": np50,
        "node_change_to_map_p99_ms": np99,
    }))
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

/// A figure for the table; "-" where it was not measured (null).
fn cell(v: &Value, width: usize, decimals: usize) -> String {
    match v.as_f64() {
        Some(x) => format!("{x:>width$.decimals$}"),
        None => format!("{:>width$}", "-"),
    }
}

/// The median over rounds, or null when no round measured it.
fn median_or_null(values: Vec<f64>) -> Value {
    if values.iter().all(|v| !v.is_finite()) {
        Value::Null
    } else {
        json!(median(values))
    }
}

pub fn run(args: &BenchArgs) -> Result<()> {
    if let Some(spec) = &args.client {
        return services::client_main(spec);
    }
    let started = Instant::now();
    shell::require_root("cargo xtask bench")?;
    let plan = Plan::from(args);
    setup::run()?;
    build_ebpf::run()?;
    let root = repo_root();
    let mut build = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    build.current_dir(&root).args(["build", "-p", "sluice-agent", "-p", "sluice-cni", "--bins"]);
    if plan.release {
        build.arg("--release");
    }
    shell::run(&mut build)?;
    let bins: PathBuf = root.join(if plan.release { "target/release" } else { "target/debug" });
    let out_dir = root.join("target/bench");
    std::fs::create_dir_all(&out_dir)?;

    if args.cni {
        let spinners = bench::Spinners::start();
        let cni = cni_bench(&bins, &plan)?;
        drop(spinners);
        let json_path = out_dir.join("cni.json");
        std::fs::write(&json_path, serde_json::to_vec_pretty(&json!({"machine": machine(), "cni": cni}))?)?;
        print!("{}", render_cni(&cni));
        println!("wrote {}", json_path.display());
        return Ok(());
    }
    if args.vxlan {
        let spinners = bench::Spinners::start();
        let rounds = (0..plan.rounds).map(|r| round(r, &bins, &plan)).collect::<Result<Vec<_>>>()?;
        drop(spinners);
        let mut report = json!({
            "machine": machine(),
            "plan": {"rounds": plan.rounds, "rr_secs": plan.rr.as_secs_f64(), "throughput_secs": plan.tput_secs, "release": plan.release, "only": plan.only},
            "paths": path_medians(&rounds),
            "ratios": ratios_of(&rounds, &VXLAN_PAIRS.map(|(l, n, d)| (l.to_string(), n.to_string(), d.to_string()))),
        });
        report["vxlan_targets"] = vxlan_targets(&report);
        report["wall_clock_secs"] = json!(started.elapsed().as_secs_f64());
        let json_path = out_dir.join("vxlan.json");
        std::fs::write(&json_path, serde_json::to_vec_pretty(&report)?)?;
        print!("{}", render_vxlan(&report));
        println!("wrote {}", json_path.display());
        return Ok(());
    }
    let spinners = bench::Spinners::start();
    let mut rounds = Vec::new();
    let mut svc_times = Vec::new();
    for r in 0..plan.rounds.max(plan.svc_rounds) {
        let mut figures = if r < plan.rounds { round(r, &bins, &plan)? } else { BTreeMap::new() };
        if r < plan.svc_rounds {
            svc_times.push(services::round(r, &bins, &plan, &mut figures).context("Service paths")?);
        }
        rounds.push(figures);
    }
    let cni = cni_bench(&bins, &plan)?;
    drop(spinners);
    let control = control_plane(&bins, &plan)?;
    let svc_control = services::control_plane(&bins, &plan).context("Services control plane")?;

    // Medians over rounds, and medians of per-round ratios.
    let names: Vec<String> = rounds[0].keys().cloned().collect();
    let metric = |r: &BTreeMap<String, PathFigures>, n: &str, m: &str| -> f64 {
        let Some(p) = r.get(n) else { return f64::NAN };
        match m {
            "rr" => p.rr.per_sec,
            "rr_p50" => p.rr.p50_us,
            "rr_p99" => p.rr.p99_us,
            "crr" => p.crr.per_sec,
            "gbit" => p.tput.as_ref().map_or(f64::NAN, |t| t.gbit_per_s),
            "cpu" => p.tput.as_ref().map_or(f64::NAN, |t| t.cpu_pct_per_gbit),
            _ => f64::NAN,
        }
    };
    let metrics = ["rr", "rr_p50", "rr_p99", "crr", "gbit", "cpu"];
    let mut paths_json = serde_json::Map::new();
    for n in &names {
        let mut m = serde_json::Map::new();
        for k in metrics {
            m.insert(k.into(), median_or_null(rounds.iter().map(|r| metric(r, n, k)).collect()));
        }
        paths_json.insert(n.to_string(), Value::Object(m));
    }
    let ratio = |num: &str, den: &str, k: &str| {
        median_or_null(rounds.iter().map(|r| metric(r, num, k) / metric(r, den, k)).collect())
    };
    let mut ratios = serde_json::Map::new();
    let mut pairs: Vec<(String, String, String)> = [
        ("S/A cross", "S cross-node", "A node-node"),
        ("B/A cross", "B cross-node", "A node-node"),
        ("S/B cross", "S cross-node", "B cross-node"),
        ("S/L same", "S same-node", "L veth pair"),
        ("S/B same", "S same-node", "B same-node"),
        ("S svc/S cross", "S cross-node svc", "S cross-node"),
        ("S traced/S cross", "S cross traced", "S cross-node"),
        ("S svc/A cross", "S cross-node svc", "A node-node"),
        ("S-vxlan/K vxlan", "S-vxlan cross-node", "K vxlan cross-node"),
        ("S-vxlan/A cross", "S-vxlan cross-node", "A node-node"),
        ("K vxlan/A cross", "K vxlan cross-node", "A node-node"),
        ("S-vxlan/S cross", "S-vxlan cross-node", "S cross-node"),
    ]
    .iter()
    .map(|(l, n, d)| (l.to_string(), n.to_string(), d.to_string()))
    .collect();
    pairs.extend(svc_ratio_pairs(&plan.scales));
    for (label, num, den) in &pairs {
        let mut m = serde_json::Map::new();
        for k in ["rr", "crr", "gbit", "cpu"] {
            m.insert(k.into(), ratio(num, den, k));
        }
        ratios.insert(label.clone(), Value::Object(m));
    }
    let cni_ratio = f(&cni["sluice"]["add_del_p99_ms"]) / f(&cni["bridge_host_local"]["add_del_p99_ms"]);
    let mut report = json!({
        "machine": machine(),
        "plan": {"rounds": plan.rounds, "service_rounds": plan.svc_rounds, "rr_secs": plan.rr.as_secs_f64(), "throughput_secs": plan.tput_secs, "smoke": args.smoke, "release": plan.release},
        "paths": paths_json,
        "per_round": rounds.iter().map(|r| r.iter().map(|(n, p)| (n.clone(), json!({"rr": p.rr.per_sec, "crr": p.crr.per_sec}))).collect::<serde_json::Map<_, _>>()).collect::<Vec<_>>(),
        "ratios": ratios,
        "cni": cni,
        "cni_p99_ratio_sluice_over_bridge": cni_ratio,
        "control_plane": control,
        "services": {
            "scales": plan.scales,
            "endpoints_per_service": services::PER_SERVICE,
            "times": services::median_times(&svc_times, &plan),
            "control_plane": svc_control,
        },
    });
    report["services"]["targets"] = svc_targets(&report, &plan);
    report["vxlan_targets"] = vxlan_targets(&report);
    report["wall_clock_secs"] = json!(started.elapsed().as_secs_f64());
    let json_path = out_dir.join("bench.json");
    std::fs::write(&json_path, serde_json::to_vec_pretty(&report)?)?;
    print!("{}", render(&report));
    let png = out_dir.join("bench.png");
    shell::run(
        Command::new(setup::venv_dir().join("bin/python"))
            .arg(root.join("xtask/bench_chart.py"))
            .arg(&json_path)
            .arg(&png),
    )?;
    println!("wrote {} and {}", json_path.display(), png.display());
    Ok(())
}

/// The paths and ratios of the VXLAN comparison (`--vxlan`).
const VXLAN_PATHS: [&str; 4] = ["A node-node", "S cross-node", "S-vxlan cross-node", "K vxlan cross-node"];
const VXLAN_PAIRS: [(&str, &str, &str); 5] = [
    ("S/A cross", "S cross-node", "A node-node"),
    ("S-vxlan/K vxlan", "S-vxlan cross-node", "K vxlan cross-node"),
    ("S-vxlan/A cross", "S-vxlan cross-node", "A node-node"),
    ("K vxlan/A cross", "K vxlan cross-node", "A node-node"),
    ("S-vxlan/S cross", "S-vxlan cross-node", "S cross-node"),
];

fn path_metric(r: &BTreeMap<String, PathFigures>, n: &str, m: &str) -> f64 {
    let Some(p) = r.get(n) else { return f64::NAN };
    match m {
        "rr" => p.rr.per_sec,
        "rr_p50" => p.rr.p50_us,
        "rr_p99" => p.rr.p99_us,
        "crr" => p.crr.per_sec,
        "gbit" => p.tput.as_ref().map_or(f64::NAN, |t| t.gbit_per_s),
        "cpu" => p.tput.as_ref().map_or(f64::NAN, |t| t.cpu_pct_per_gbit),
        _ => f64::NAN,
    }
}

/// Each path's medians over rounds.
fn path_medians(rounds: &[BTreeMap<String, PathFigures>]) -> Value {
    let mut paths = serde_json::Map::new();
    for n in rounds[0].keys() {
        let mut m = serde_json::Map::new();
        for k in ["rr", "rr_p50", "rr_p99", "crr", "gbit", "cpu"] {
            m.insert(k.into(), median_or_null(rounds.iter().map(|r| path_metric(r, n, k)).collect()));
        }
        paths.insert(n.to_string(), Value::Object(m));
    }
    Value::Object(paths)
}

/// Medians of per-round ratios, per (label, numerator, denominator).
fn ratios_of(rounds: &[BTreeMap<String, PathFigures>], pairs: &[(String, String, String)]) -> Value {
    let mut ratios = serde_json::Map::new();
    for (label, num, den) in pairs {
        let mut m = serde_json::Map::new();
        for k in ["rr", "crr", "gbit", "cpu"] {
            let per_round = rounds.iter().map(|r| path_metric(r, num, k) / path_metric(r, den, k)).collect();
            m.insert(k.into(), median_or_null(per_round));
        }
        ratios.insert(label.clone(), Value::Object(m));
    }
    Value::Object(ratios)
}

fn render_vxlan(r: &Value) -> String {
    let mut o = render_table(r);
    o += "\ntargets (issue 15):\n";
    o += &render_targets(&r["vxlan_targets"]);
    o
}

fn machine() -> Value {
    let kernel = shell::output(Command::new("uname").arg("-r")).unwrap_or_default().trim().to_string();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    json!({"kernel": kernel, "cpu": cpu, "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)})
}

/// The paths' figures and the ratios between them.
fn render_table(r: &Value) -> String {
    let mut o = String::new();
    o += &format!(
        "{:<NAME$} {:>10} {:>9} {:>9} {:>10} {:>8} {:>12}\n",
        "path", "TCP_RR/s", "p50 us", "p99 us", "TCP_CRR/s", "Gbit/s", "CPU%/Gbit"
    );
    if let Some(paths) = r["paths"].as_object() {
        for (name, m) in paths {
            o += &format!(
                "{:<NAME$} {} {} {} {} {} {}\n",
                name,
                cell(&m["rr"], 10, 0),
                cell(&m["rr_p50"], 9, 1),
                cell(&m["rr_p99"], 9, 1),
                cell(&m["crr"], 10, 0),
                cell(&m["gbit"], 8, 2),
                cell(&m["cpu"], 12, 1)
            );
        }
    }
    o += &format!("{:<NAME$} {:>10} {:>10} {:>8} {:>12}\n", "ratio", "TCP_RR", "TCP_CRR", "Gbit/s", "CPU/Gbit");
    if let Some(ratios) = r["ratios"].as_object() {
        for (name, m) in ratios {
            o += &format!(
                "{:<NAME$} {} {} {} {}\n",
                name,
                cell(&m["rr"], 10, 2),
                cell(&m["crr"], 10, 2),
                cell(&m["gbit"], 8, 2),
                cell(&m["cpu"], 12, 2)
            );
        }
    }
    o
}

fn render(r: &Value) -> String {
    let mut o = String::new();
    o += &format!(
        "machine: {} CPUs, {}, kernel {}\n",
        r["machine"]["cpus"],
        r["machine"]["cpu"].as_str().unwrap_or(""),
        r["machine"]["kernel"].as_str().unwrap_or("")
    );
    o += &render_table(r);
    o += "targets (issue 15, the tunnel; reported, not asserted):\n";
    o += &render_targets(&r["vxlan_targets"]);
    o += &render_cni(&r["cni"]);
    let c = &r["control_plane"];
    o += &format!(
        "control plane ({} peers): reconcile from scratch {:.1} ms (no-op {:.1} ms); agent RSS idle {:.1} MiB, with peers {:.1} MiB; peers file to map {:.0} ms; Node change to map p50 {:.2} ms p99 {:.2} ms\n",
        c["peers"], f(&c["reconcile_from_scratch_ms"]), f(&c["reconcile_noop_ms"]), f(&c["agent_rss_idle_mib"]), f(&c["agent_rss_with_peers_mib"]),
        f(&c["peers_file_to_map_ms"]), f(&c["node_change_to_map_p50_ms"]), f(&c["node_change_to_map_p99_ms"])
    );
    o += &render_services(&r["services"]);
    if let Some(secs) = r["wall_clock_secs"].as_f64() {
        o += &format!("bench took {:.0} s\n", secs);
    }
    o
}

/// Width of the path and ratio names in the table.
const NAME: usize = 25;

/// The ratios of the Service paths: each way against pod → pod at the
/// same scale, each way's largest scale against its smallest (and every
/// scale between), and the cgroup client's pod → pod against the thread
/// client's (`S cross-node`: another lab, another client).
fn svc_ratio_pairs(scales: &[usize]) -> Vec<(String, String, String)> {
    use services::{direct_name, iptables_name, sock_lb_name};
    let mut v = Vec::new();
    for &n in scales {
        v.push((format!("S sockLB/direct {n}"), sock_lb_name(n), direct_name(n)));
        v.push((format!("S svc/direct {n}"), iptables_name(n), direct_name(n)));
    }
    let lo = scales[0];
    for &n in &scales[1..] {
        v.push((format!("S sockLB {n}/{lo}"), sock_lb_name(n), sock_lb_name(lo)));
        v.push((format!("S svc {n}/{lo}"), iptables_name(n), iptables_name(lo)));
        v.push((format!("S direct {n}/{lo}"), direct_name(n), direct_name(lo)));
    }
    v.push((format!("S direct {lo}/S cross"), direct_name(lo), "S cross-node".into()));
    v
}

/// One target's verdict for the report: `value` against `limit` (at
/// least, or at most); `met` is null when the value was not measured.
fn target(what: String, value: &Value, at_least: bool, limit: f64, unit: &str, note: String) -> Value {
    let met = value.as_f64().map(|v| if at_least { v >= limit } else { v <= limit });
    json!({"target": what, "value": value, "at_least": at_least, "limit": limit, "unit": unit, "met": met, "note": note})
}

/// Issue 15's targets for the tunnel against this run's figures: printed,
/// never asserted.
fn vxlan_targets(r: &Value) -> Value {
    let ratios = &r["ratios"];
    let (vs_kernel, vs_a) = (&ratios["S-vxlan/K vxlan"], &ratios["S-vxlan/A cross"]);
    vec![
        target(
            "cross-node TCP_RR S-vxlan/K vxlan".into(),
            &vs_kernel["rr"],
            true,
            1.2,
            "",
            format!(
                "TCP_CRR {:.2}; K vxlan/A: TCP_RR {:.2}",
                f(&vs_kernel["crr"]),
                f(&ratios["K vxlan/A cross"]["rr"])
            ),
        ),
        target(
            "cross-node TCP_RR S-vxlan/A".into(),
            &vs_a["rr"],
            true,
            0.75,
            "",
            format!("TCP_CRR {:.2}; native S/A: TCP_RR {:.2}", f(&vs_a["crr"]), f(&ratios["S/A cross"]["rr"])),
        ),
        target(
            "CPU per Gbit/s S-vxlan/K vxlan".into(),
            &vs_kernel["cpu"],
            false,
            1.0,
            "",
            format!("throughput S-vxlan/K vxlan {:.2}, S-vxlan/A {:.2}", f(&vs_kernel["gbit"]), f(&vs_a["gbit"])),
        ),
    ]
    .into()
}

/// Issue 14's targets against this run's figures: printed, never asserted.
fn svc_targets(r: &Value, plan: &Plan) -> Value {
    let (lo, hi) = (plan.scales[0], plan.scales[plan.scales.len() - 1]);
    let ratios = &r["ratios"];
    let cp = &r["services"]["control_plane"];
    vec![
        target(
            format!("ClusterIP TCP_RR sockLB/pod-pod, {lo} Services"),
            &ratios[format!("S sockLB/direct {lo}")]["rr"],
            true,
            0.98,
            "",
            format!(
                "with {hi}: {:.2}; TCP_CRR {:.2} (kube-proxy iptables: TCP_RR {:.2}, TCP_CRR {:.2})",
                f(&ratios[format!("S sockLB/direct {hi}")]["rr"]),
                f(&ratios[format!("S sockLB/direct {lo}")]["crr"]),
                f(&ratios[format!("S svc/direct {lo}")]["rr"]),
                f(&ratios[format!("S svc/direct {lo}")]["crr"]),
            ),
        ),
        target(
            format!("TCP_CRR sockLB {hi}/{lo} Services"),
            &ratios[format!("S sockLB {hi}/{lo}")]["crr"],
            true,
            0.95,
            "",
            format!(
                "kube-proxy iptables {hi}/{lo}: {:.2}; each against pod-pod measured beside it: sockLB {:.2}, iptables {:.2}",
                f(&ratios[format!("S svc {hi}/{lo}")]["crr"]),
                f(&drift_free(r, services::sock_lb_name, hi, lo)),
                f(&drift_free(r, services::iptables_name, hi, lo)),
            ),
        ),
        target(
            format!("agent RSS, {} Services + {} endpoints", cp["services"], cp["endpoints"]),
            &cp["agent_rss_mib"],
            false,
            60.0,
            " MiB",
            format!("peak {:.1} MiB, idle {:.1} MiB", f(&cp["agent_rss_peak_mib"]), f(&cp["agent_rss_idle_mib"])),
        ),
        target(
            format!("Service change to map p99, {} Services", cp["services"]),
            &cp["change_to_map_p99_ms"],
            false,
            10.0,
            " ms",
            format!("p50 {:.2} ms, max {:.2} ms", f(&cp["change_to_map_p50_ms"]), f(&cp["change_to_map_max_ms"])),
        ),
    ]
    .into()
}

/// TCP_CRR of `way` at `hi` Services over `lo`, each first divided by pod
/// → pod measured beside it in the same round (which cancels the
/// machine's drift between the two scales); median over rounds.
fn drift_free(r: &Value, way: fn(usize) -> String, hi: usize, lo: usize) -> Value {
    let crr = |round: &Value, name: String| round[name]["crr"].as_f64().unwrap_or(f64::NAN);
    let per_round: Vec<f64> = r["per_round"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|round| {
            let at = |n: usize| crr(round, way(n)) / crr(round, services::direct_name(n));
            at(hi) / at(lo)
        })
        .collect();
    median_or_null(per_round)
}

fn render_services(s: &Value) -> String {
    let mut o = format!(
        "Services ({} endpoints each; clients are processes in node 1's cgroup):\n{:>10} {:>15} {:>26} {:>21} {:>18} {:>22}\n",
        s["endpoints_per_service"],
        "Services",
        "maps synced ms",
        "kube-proxy sync ms legacy",
        "iptables-nft sync ms",
        "legacy cleanup ms",
        "pod-pod pkts to stack"
    );
    if let Some(times) = s["times"].as_object() {
        let mut scales: Vec<(&String, &Value)> = times.iter().collect();
        scales.sort_by_key(|(k, _)| k.parse::<usize>().unwrap_or(0));
        for (scale, t) in scales {
            o += &format!(
                "{:>10} {:>15.0} {:>26.0} {} {:>18.0} {:>22}\n",
                scale,
                f(&t["maps_synced_ms"]),
                f(&t["iptables_sync_ms"]),
                cell(&t["iptables_nft_sync_ms"], 21, 0),
                f(&t["iptables_cleanup_ms"]),
                t["fast_path_packets_to_stack"]
            );
        }
    }
    let c = &s["control_plane"];
    let h = &c["agent_histogram"];
    o += &format!(
        "Services control plane ({} Services, {} endpoints): agent RSS idle {:.1} MiB, with them {:.1} MiB (peak {:.1}); \
         published to maps in {:.0} ms; change to map ({} changes) p50 {:.2} ms p99 {:.2} ms max {:.2} ms \
         (from the upsert call: p50 {:.2} p99 {:.2}); agent's sluice_service_update_seconds over them: {} observations, \
         p50 <= {} ms, p99 <= {} ms\n",
        c["services"], c["endpoints"], f(&c["agent_rss_idle_mib"]), f(&c["agent_rss_mib"]), f(&c["agent_rss_peak_mib"]),
        f(&c["publish_to_maps_ms"]), c["changes"], f(&c["change_to_map_p50_ms"]), f(&c["change_to_map_p99_ms"]),
        f(&c["change_to_map_max_ms"]), f(&c["upsert_to_map_p50_ms"]), f(&c["upsert_to_map_p99_ms"]), h["count"],
        h["p50_le_ms"], h["p99_le_ms"]
    );
    o += "targets (issue 14; reported, not asserted):\n";
    o += &render_targets(&s["targets"]);
    o
}

fn render_targets(targets: &Value) -> String {
    let mut o = String::new();
    for t in targets.as_array().into_iter().flatten() {
        let verdict = match t["met"].as_bool() {
            Some(true) => "met",
            Some(false) => "NOT MET",
            None => "not measured",
        };
        o += &format!(
            "  {:<48} {:>8.2}{} {} {}{}  {:<12} {}\n",
            t["target"].as_str().unwrap_or(""),
            f(&t["value"]),
            t["unit"].as_str().unwrap_or(""),
            if t["at_least"].as_bool() == Some(true) { ">=" } else { "<=" },
            t["limit"],
            t["unit"].as_str().unwrap_or(""),
            verdict,
            t["note"].as_str().unwrap_or("")
        );
    }
    o
}
