//! Services in eBPF (issue 14) in `cargo xtask bench`.
//!
//! Data path, one Kubernetes lab per round (`--kube-proxy-replacement`,
//! a pod on each of two nodes): pod on n1 → ClusterIP → the pod on n2,
//! TCP_RR and TCP_CRR, with N Services installed (N = `Plan::scales`):
//! - "S cross-node sockLB N": the socket load balancer; the API server
//!   holds N Services, N − 1 of them with `PER_SERVICE` made-up endpoints
//!   and the measured one with the real pod; no kube-proxy rules.
//! - "S cross-node svc N": kube-proxy's iptables rules for the same N
//!   Services (`kube_proxy::render`, the measured one in the middle of
//!   `KUBE-SERVICES`: kube-proxy writes Services in random order), to a
//!   cluster IP the socket load balancer does not know, on node 1 (the
//!   only node the path's packets cross the netfilter hooks of); removed
//!   again before anything else is measured. They go in through
//!   iptables-legacy: Debian 12's iptables-nft 1.8.9 restores them in
//!   superlinear time (1,000 Services 1.1 s, 4,000 29 s, 10,000 more than
//!   8 minutes), legacy restores 10,000 in under 2 s. The iptables-nft
//!   sync (`kube_proxy::apply`, as the other benchmarks and tests use it)
//!   is timed too, up to `NFT_SYNC_MAX` Services.
//! - "S cross-node direct N": pod → pod, the baseline of both.
//!
//! The socket programs see only processes in node n1's cgroup, so these
//! clients are processes of their own: this binary again (`bench --client
//! MODE ADDR MILLIS`, `client_main`), placed in the cgroup and the pod's
//! namespace, pinned to CPU 0 beside the server thread as elsewhere. The
//! direct path is measured by the same client so the ratios compare like
//! with like (a client process pays an address-space switch per wake-up
//! that the in-process client threads of the other paths do not).
//!
//! Control plane (`control_plane`, spinners off, one node): agent RSS
//! with `Plan::svc_control` Services and 5 × as many endpoints, and
//! Service change → map latency: single EndpointSlice updates (one
//! backend replaced), from the moment the test API server hands the event
//! to the agent's watch until the pinned `SERVICES` entry points at a new
//! backend set (`ServiceProbe`, one map lookup per poll), spread over more
//! than one of the agent's 10 s full resyncs.
use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    path::Path,
    process::Stdio,
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use sluice_node::datapath::{pins::PinDir, service_maps::ServiceMaps};
use sluice_tests::{
    apiserver::{ApiServer, EndpointSliceObject, Kind, ServiceObject},
    bench::{self, median, percentiles_ms, Latency, ServiceProbe, Target},
    kube_proxy,
    lab::{ns_cmd, ns_exec, Lab, LabOptions, Node, CLUSTER_CIDR},
    unique,
};

use super::{args::Plan, labs::BENCH_SERVER_PORT, paths::PathFigures};

/// Made-up endpoints of every Service but the measured one.
pub const PER_SERVICE: usize = 5;
/// The measured Service through the socket load balancer.
const LB_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 200);
/// The measured Service through kube-proxy's rules (not in the API server).
const IPTABLES_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 201);
pub(super) const VIP_PORT: u16 = 80;
/// The backend port of the kube-proxy path: not the socket load
/// balancer's (`BENCH_SERVER_PORT`). Its DNATed flows leave their reply
/// tuples in node 1's `STACK_FLOWS` (LRU, no expiry); a later fast-path
/// connection from a reused source port to the same backend port would
/// have its SYN-ACK sent to the stack, where conntrack drops it
/// (docs/BENCHMARKS.md, Services in eBPF).
const IPTABLES_SERVER_PORT: u16 = BENCH_SERVER_PORT + 1;
const FILL_NS: &str = "bench-fill";
pub(super) const FILL_TARGET_PORT: u16 = 8080;

pub fn direct_name(scale: usize) -> String {
    format!("S cross-node direct {scale}")
}

pub fn sock_lb_name(scale: usize) -> String {
    format!("S cross-node sockLB {scale}")
}

pub fn iptables_name(scale: usize) -> String {
    format!("S cross-node svc {scale}")
}

/// Cluster IP of filler Service `i` (10.100.0.0/14 is inside the lab's
/// 10.96.0.0/12 Service CIDR and clear of the measured ones).
pub(super) fn fill_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 100 + (i / 65_536) as u8, (i / 256 % 256) as u8, (i % 256) as u8)
}

/// Endpoint `n` of the filler Services: addresses nothing answers on.
fn fill_endpoint(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 128 + (n / 65_536) as u8, (n / 256 % 256) as u8, (n % 256) as u8)
}

pub(super) fn fill_endpoints(i: usize) -> Vec<Ipv4Addr> {
    (0..PER_SERVICE).map(|j| fill_endpoint(i * PER_SERVICE + j)).collect()
}

pub(super) fn fill_node(ip: Ipv4Addr) -> String {
    format!("node-{}", ip.octets()[3] % 100)
}

fn fill_service(i: usize) -> Value {
    ServiceObject::new(FILL_NS, &format!("svc-{i}"), &fill_ip(i).to_string())
        .port("http", VIP_PORT, FILL_TARGET_PORT, "TCP")
        .build()
}

fn fill_slice(i: usize, endpoints: &[Ipv4Addr]) -> Value {
    let s = EndpointSliceObject::new(FILL_NS, &format!("svc-{i}-bench"), &format!("svc-{i}")).port(
        "http",
        FILL_TARGET_PORT,
        "TCP",
    );
    endpoints.iter().fold(s, |s, ip| s.endpoint(&ip.to_string(), &fill_node(*ip))).build()
}

/// Filler Services `from..to` and their slices into the API server.
fn publish(api: &ApiServer, from: usize, to: usize) {
    api.upsert_many(Kind::Service, (from..to).map(fill_service));
    api.upsert_many(Kind::EndpointSlice, (from..to).map(|i| fill_slice(i, &fill_endpoints(i))));
}

/// Wait until every node's maps hold `frontends` frontends and `backends`
/// backends; how long that took.
fn wait_maps(lab: &Lab, frontends: usize, backends: usize, limit: Duration) -> Result<Duration> {
    let start = Instant::now();
    for node in &lab.state.nodes {
        let maps = ServiceMaps::open(&PinDir::new(&node.pin_dir))?;
        loop {
            // Counting reads every key (two bpf() calls each): not too often.
            let f = maps.services()?.len();
            if f == frontends && maps.backends()?.len() == backends {
                break;
            }
            if start.elapsed() > limit {
                bail!(
                    "{}: maps hold {f} frontends and {} backends, want {frontends} and {backends} within {limit:?}",
                    node.name,
                    maps.backends()?.len()
                );
            }
            sleep(Duration::from_millis(100));
        }
    }
    Ok(start.elapsed())
}

/// `xtask bench --client MODE ADDR MILLIS`: one measurement's client, in
/// this process (started in a node's cgroup and a pod's namespace); prints
/// its `Latency` as JSON.
pub fn client_main(spec: &[String]) -> Result<()> {
    let [mode, addr, ms] = spec else { bail!("--client MODE ADDR MILLIS") };
    let addr: SocketAddr = addr.parse().context("--client ADDR")?;
    let duration = Duration::from_millis(ms.parse().context("--client MILLIS")?);
    bench::pin_to_cpu(0);
    let figures = match mode.as_str() {
        "rr" => bench::rr_client(addr, duration)?,
        "crr" => bench::crr_client(addr, duration)?,
        other => bail!("--client mode {other:?}: rr or crr"),
    };
    println!("{}", serde_json::to_string(&figures)?);
    Ok(())
}

/// Run one client as a process of `node` in `netns`.
fn client_process(lab: &Lab, node: &Node, netns: &str, mode: &str, addr: SocketAddr, d: Duration) -> Result<Latency> {
    // The running binary itself, even if cargo replaces the file meanwhile.
    let exe = format!("/proc/{}/exe", std::process::id());
    let (addr_arg, ms) = (addr.to_string(), d.as_millis().to_string());
    let out = lab
        .node_cmd(node, netns, &[&exe, "bench", "--client", mode, &addr_arg, &ms])
        .stdin(Stdio::null())
        .output()
        .context("start the bench client")?;
    if !out.status.success() {
        bail!("bench client {mode} to {addr} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("bench client output {:?}", String::from_utf8_lossy(&out.stdout)))
}

/// TCP_RR and TCP_CRR with the client a process of `node`.
fn measure(
    lab: &Lab,
    node: &Node,
    client_ns: &str,
    server_ns: &str,
    target: Target,
    d: Duration,
) -> Result<PathFigures> {
    let rr = {
        let server = bench::rr_server(server_ns, target)?;
        client_process(lab, node, client_ns, "rr", server.connect_to, d)?
    };
    let crr = {
        let server = bench::crr_server(server_ns, target)?;
        client_process(lab, node, client_ns, "crr", server.connect_to, d)?
    };
    Ok(PathFigures { rr, crr, tput: None, programs: None })
}

/// kube-proxy's view of the filler Services `0..scale - 1` plus the
/// measured one (to `backend`), in the middle of the list.
fn iptables_services(scale: usize, backend: Ipv4Addr, backend_node: &str) -> Vec<kube_proxy::Service> {
    let port = |target_port| kube_proxy::ServicePort {
        name: "http".into(),
        protocol: kube_proxy::Protocol::Tcp,
        port: VIP_PORT,
        target_port,
        node_port: None,
    };
    let mut services: Vec<kube_proxy::Service> = (0..scale - 1)
        .map(|i| kube_proxy::Service {
            namespace: FILL_NS.into(),
            name: format!("svc-{i}"),
            cluster_ip: fill_ip(i),
            ports: vec![port(FILL_TARGET_PORT)],
            external_traffic_policy_local: false,
            endpoints: fill_endpoints(i)
                .into_iter()
                .map(|ip| kube_proxy::Endpoint { ip, node: fill_node(ip) })
                .collect(),
        })
        .collect();
    let measured = kube_proxy::Service {
        namespace: "bench".into(),
        name: "rr-iptables".into(),
        cluster_ip: IPTABLES_VIP,
        ports: vec![port(IPTABLES_SERVER_PORT)],
        external_traffic_policy_local: false,
        endpoints: vec![kube_proxy::Endpoint { ip: backend, node: backend_node.into() }],
    };
    services.insert(services.len() / 2, measured);
    services
}

/// kube-proxy's rules for `services` on `node` (empty tables: see
/// `remove_iptables`), through iptables-legacy: how long the restore took.
/// Only node 1's rules are on the measured path (node 2's `from_uplink`
/// takes the packets from the uplink straight into the pod), so only node
/// 1 gets them.
pub(super) fn apply_iptables(node: &Node, services: &[kube_proxy::Service]) -> Result<Duration> {
    let input = kube_proxy::render(services, &node.name, CLUSTER_CIDR.parse()?);
    let start = Instant::now();
    let mut child = ns_cmd(&node.netns, &["iptables-legacy-restore", "--noflush"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("start iptables-legacy-restore")?;
    child.stdin.take().context("stdin")?.write_all(input.as_bytes()).context("write the rules")?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("iptables-legacy-restore in {}: {}", node.netns, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(start.elapsed())
}

/// Every legacy iptables rule and chain of `node` gone (only kube-proxy's
/// are there: the agent's own are in nftables and iptables-nft).
pub(super) fn remove_iptables(node: &Node) -> Result<Duration> {
    let start = Instant::now();
    for table in ["nat", "filter"] {
        for verb in ["-F", "-X"] {
            ns_exec(&node.netns, &["iptables-legacy", "-t", table, verb])?;
        }
    }
    Ok(start.elapsed())
}

/// The same rules the way `kube_proxy::apply` gives them (the default
/// iptables, nf_tables here), into a namespace of their own: how long
/// kube-proxy's sync would take with it. Superlinear in iptables 1.8.9
/// (docs/BENCHMARKS.md), so only up to `NFT_SYNC_MAX` Services.
fn nft_sync_time(services: &[kube_proxy::Service]) -> Result<Duration> {
    let netns = unique("slbi");
    sluice_tests::lab::add_netns(&netns)?;
    let start = Instant::now();
    let result = kube_proxy::apply(&netns, services, "n1", CLUSTER_CIDR.parse()?);
    let took = start.elapsed();
    sluice_tests::lab::del_netns(&netns);
    result.map(|_| took)
}

/// Above this many Services the iptables-nft sync is not timed.
const NFT_SYNC_MAX: usize = 1_000;

#[derive(Clone, Copy, Debug)]
enum Way {
    Direct,
    SockLb,
    Iptables,
}

/// One round of the Service paths: a fresh lab, every scale in turn (the
/// Services only grow), the three ways in an order rotated by `round`.
/// Fills `out` with figures; returns per-scale times (maps synced,
/// kube-proxy sync and cleanup).
pub fn round(round: usize, bins: &Path, plan: &Plan, out: &mut BTreeMap<String, PathFigures>) -> Result<Value> {
    let mut opts = LabOptions::new(2, 0, bins.to_path_buf());
    opts.kubernetes = true;
    opts.kube_proxy_replacement = true;
    // Native at the uplink's MTU, like the other S rows (`auto` would give
    // the pods MTU − 50 with every peer native).
    opts.extra_agent_args = vec!["--tunnel=never".into()];
    let mut lab = Lab::up(&opts)?;
    lab.add_pod(0, "n1p1")?;
    lab.add_pod(1, "n2p1")?;
    let (n1, n2) = (lab.state.nodes[0].clone(), lab.state.nodes[1].clone());
    let (client_ns, server) = (n1.pods[0].netns.clone(), n2.pods[0].clone());
    let server_ip: Ipv4Addr = server.ip.parse()?;
    let api = lab.api.as_ref().context("a Kubernetes lab has an API server")?;
    api.upsert_service(
        ServiceObject::new("bench", "rr", &LB_VIP.to_string()).port("tcp", VIP_PORT, BENCH_SERVER_PORT, "TCP").build(),
    );
    api.upsert_endpoint_slice(
        EndpointSliceObject::new("bench", "rr-bench", "rr")
            .port("tcp", BENCH_SERVER_PORT, "TCP")
            .endpoint(&server.ip, &n2.name)
            .build(),
    );
    let pins1 = PinDir::new(&n1.pin_dir);
    let mut fill = 0;
    let mut times = serde_json::Map::new();
    for &scale in &plan.scales {
        let t = Instant::now();
        publish(api, fill, scale - 1);
        fill = scale - 1;
        wait_maps(&lab, scale, fill * PER_SERVICE + 1, Duration::from_secs(300))?;
        let synced = t.elapsed();
        let mut ways = [Way::Direct, Way::SockLb, Way::Iptables];
        ways.rotate_left(round % 3);
        let (mut sync, mut cleanup, mut nft_sync) = (Duration::ZERO, Duration::ZERO, None);
        let mut misrouted = 0;
        for way in ways {
            eprintln!("bench: round {} {way:?} with {scale} Services", round + 1);
            let replies = bench::stack_flow_replies(&pins1)?;
            let measured = match way {
                Way::Direct => {
                    let f = measure(&lab, &n1, &client_ns, &server.netns, Target::direct(server_ip), plan.rr);
                    f.map(|f| out.insert(direct_name(scale), f))
                }
                Way::SockLb => {
                    let target = Target {
                        server_ip: server_ip.into(),
                        server_port: BENCH_SERVER_PORT,
                        via: Some(SocketAddr::from((LB_VIP, VIP_PORT))),
                    };
                    let before = bench::sock_lb_connected(&pins1)?;
                    let f = measure(&lab, &n1, &client_ns, &server.netns, target, plan.rr)?;
                    let translated = bench::sock_lb_connected(&pins1)? - before;
                    if translated < f.crr.samples as u64 {
                        bail!("{scale} Services: only {translated} connects translated by the socket LB");
                    }
                    Ok(out.insert(sock_lb_name(scale), f))
                }
                Way::Iptables => {
                    let services = iptables_services(scale, server_ip, &n2.name);
                    if scale <= NFT_SYNC_MAX {
                        nft_sync = Some(nft_sync_time(&services)?);
                    }
                    sync = apply_iptables(&n1, &services)?;
                    let target = Target {
                        server_ip: server_ip.into(),
                        server_port: IPTABLES_SERVER_PORT,
                        via: Some(SocketAddr::from((IPTABLES_VIP, VIP_PORT))),
                    };
                    let f = measure(&lab, &n1, &client_ns, &server.netns, target, plan.rr);
                    cleanup = remove_iptables(&n1)?;
                    f.map(|f| out.insert(iptables_name(scale), f))
                }
            };
            // Pod-to-pod packets (direct, and what the socket LB connects)
            // must never be handed to the stack as a stack flow's reply.
            let replies = bench::stack_flow_replies(&pins1)? - replies;
            if !matches!(way, Way::Iptables) && replies > 0 {
                eprintln!("bench: {way:?} with {scale} Services: {replies} packets sent to node 1's stack as stack-flow replies");
                misrouted += replies;
            }
            measured.with_context(|| format!("{way:?} with {scale} Services (stack-flow replies: {replies})"))?;
        }
        times.insert(
            scale.to_string(),
            json!({
                "maps_synced_ms": synced.as_secs_f64() * 1e3,
                "iptables_sync_ms": sync.as_secs_f64() * 1e3,
                "iptables_cleanup_ms": cleanup.as_secs_f64() * 1e3,
                "iptables_nft_sync_ms": nft_sync.map(|d| d.as_secs_f64() * 1e3),
                "fast_path_packets_to_stack": misrouted,
            }),
        );
    }
    Ok(Value::Object(times))
}

/// Per-scale times of every round, as medians.
pub fn median_times(rounds: &[Value], plan: &Plan) -> Value {
    let mut out = serde_json::Map::new();
    for scale in &plan.scales {
        let key = scale.to_string();
        let m = |field: &str| json!(median(rounds.iter().filter_map(|r| r[&key][field].as_f64()).collect()));
        out.insert(
            key.clone(),
            json!({
                "maps_synced_ms": m("maps_synced_ms"),
                "iptables_sync_ms": m("iptables_sync_ms"),
                "iptables_cleanup_ms": m("iptables_cleanup_ms"),
                "iptables_nft_sync_ms": if *scale <= NFT_SYNC_MAX { m("iptables_nft_sync_ms") } else { Value::Null },
                "fast_path_packets_to_stack": rounds.iter().filter_map(|r| r[&key]["fast_path_packets_to_stack"].as_u64()).sum::<u64>(),
            }),
        );
    }
    Value::Object(out)
}

/// VmRSS and VmHWM of a process, in KiB.
pub(super) fn rss_hwm_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// `GET /metrics` of a node's agent (inside the node's namespace).
pub(super) fn scrape(node: &Node) -> Result<String> {
    let addr = format!("{}:9962", node.ip);
    sluice_node::net::netns::run_in(&Path::new("/run/netns").join(&node.netns), move || {
        let mut s = TcpStream::connect(&addr)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        Ok(text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
    })
}

/// The cumulative buckets (upper bound in seconds, count) of a histogram
/// in Prometheus text.
fn buckets(text: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{");
    text.lines()
        .filter_map(|l| {
            let (labels, value) = l.strip_prefix(&prefix)?.split_once("} ")?;
            let le = labels.split(',').find_map(|kv| kv.strip_prefix("le=\""))?.trim_end_matches('"');
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((le, value.trim().parse().ok()?))
        })
        .collect()
}

/// The histogram's observations between two scrapes: count and the bucket
/// bounds p50 and p99 fall under (ms).
pub(super) fn histogram_between(before: &str, after: &str, name: &str) -> Value {
    let (b, a) = (buckets(before, name), buckets(after, name));
    let delta: Vec<(f64, f64)> =
        a.iter().map(|(le, n)| (*le, n - b.iter().find(|(l, _)| l == le).map_or(0.0, |(_, m)| *m))).collect();
    let total = delta.last().map_or(0.0, |(_, n)| *n);
    let under = |q: f64| {
        delta
            .iter()
            .find(|(_, n)| *n >= q * total)
            .map(|(le, _)| if le.is_finite() { json!(le * 1e3) } else { json!(null) })
    };
    json!({"count": total, "p50_le_ms": under(0.5), "p99_le_ms": under(0.99)})
}

/// The Services control plane on a one-node lab (see the module doc).
pub fn control_plane(bins: &Path, plan: &Plan) -> Result<Value> {
    let n = plan.svc_control;
    let mut opts = LabOptions::new(1, 0, bins.to_path_buf());
    opts.kubernetes = true;
    opts.kube_proxy_replacement = true;
    let lab = Lab::up(&opts)?;
    let node = lab.state.nodes[0].clone();
    let pid = node.agent_pid.context("agent pid")?;
    let api = lab.api.as_ref().context("a Kubernetes lab has an API server")?;
    sleep(Duration::from_millis(500));
    let (idle, _) = rss_hwm_kib(pid);
    eprintln!("bench: {n} Services with {} endpoints to one agent", n * PER_SERVICE);
    let t = Instant::now();
    publish(api, 0, n);
    wait_maps(&lab, n, n * PER_SERVICE, Duration::from_secs(300))?;
    let to_maps = t.elapsed();
    sleep(Duration::from_millis(1500));
    let (rss, hwm) = rss_hwm_kib(pid);

    eprintln!("bench: {} single EndpointSlice changes with {n} Services", plan.changes);
    let metrics_before = scrape(&node).unwrap_or_default();
    let probe = ServiceProbe::open(&PinDir::new(&node.pin_dir))?;
    let (mut from_write, mut from_upsert) = (Vec::new(), Vec::new());
    let mut unwritten = 0;
    // Spread over more than the agent's 10 s full resync, so one change
    // in each run lands on it (its max shows what such a pass costs).
    let gap = if plan.changes >= 100 { Duration::from_millis(55) } else { Duration::from_millis(5) };
    for k in 0..plan.changes {
        // Spread over the Services; each change replaces one backend.
        let i = (k * 7919 + 17) % n;
        let vip = fill_ip(i);
        let old = probe.frontend(vip, VIP_PORT)?.with_context(|| format!("no frontend for {vip}"))?;
        let mut endpoints = fill_endpoints(i);
        endpoints[0] = Ipv4Addr::new(10, 200, (k / 256 % 256) as u8, (k % 256) as u8);
        let start = Instant::now();
        let rv = api.upsert_endpoint_slice(fill_slice(i, &endpoints));
        let now = loop {
            if let Some(v) = probe.frontend(vip, VIP_PORT)? {
                if v.backend_set != old.backend_set {
                    break (Instant::now(), v);
                }
            }
            if start.elapsed() > Duration::from_secs(10) {
                bail!("change {k} ({vip}) not in the map after 10 s");
            }
            sleep(Duration::from_micros(50));
        };
        let (done, value) = now;
        from_upsert.push(done - start);
        match api.written_at(rv) {
            Some(w) => from_write.push(done.saturating_duration_since(w)),
            None => unwritten += 1,
        }
        let want = SocketAddrV4::new(endpoints[0], FILL_TARGET_PORT);
        let got = probe.backends(&value)?;
        if !got.contains(&want) {
            bail!("change {k}: {vip} has backends {got:?}, not {want}");
        }
        sleep(gap);
    }
    let metrics_after = scrape(&node).unwrap_or_default();
    let max_ms = from_write.iter().max().map_or(0.0, |d| d.as_secs_f64() * 1e3);
    let (p50, p99) = percentiles_ms(from_write);
    let (u50, u99) = percentiles_ms(from_upsert);
    Ok(json!({
        "services": n,
        "endpoints": n * PER_SERVICE,
        "agent_rss_idle_mib": idle as f64 / 1024.0,
        "agent_rss_mib": rss as f64 / 1024.0,
        "agent_rss_peak_mib": hwm as f64 / 1024.0,
        "publish_to_maps_ms": to_maps.as_secs_f64() * 1e3,
        "changes": plan.changes,
        "change_to_map_p50_ms": p50,
        "change_to_map_p99_ms": p99,
        "change_to_map_max_ms": max_ms,
        "changes_not_seen_written": unwritten,
        "upsert_to_map_p50_ms": u50,
        "upsert_to_map_p99_ms": u99,
        "agent_histogram": histogram_between(&metrics_before, &metrics_after, "sluice_service_update_seconds"),
        "change_gap_ms": gap.as_secs_f64() * 1e3,
    }))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn histogram_between_two_scrapes_counts_only_what_came_between() {
        let scrape = |counts: [u64; 4]| {
            format!(
                "# TYPE sluice_service_update_seconds histogram\n\
                 sluice_service_update_seconds_sum 0.5\n\
                 sluice_service_update_seconds_count {}\n\
                 sluice_service_update_seconds_bucket{{le=\"0.0008\"}} {}\n\
                 sluice_service_update_seconds_bucket{{le=\"0.0016\"}} {}\n\
                 sluice_service_update_seconds_bucket{{le=\"0.0032\"}} {}\n\
                 sluice_service_update_seconds_bucket{{le=\"+Inf\"}} {}\n\
                 sluice_reconcile_duration_seconds_bucket{{le=\"0.0008\"}} 99\n",
                counts[3], counts[0], counts[1], counts[2], counts[3]
            )
        };
        // Before: one big initial pass (over 3.2 ms). Between: 100 changes,
        // 60 under 0.8 ms, 39 more under 1.6 ms, one more under 3.2 ms.
        let h = histogram_between(&scrape([0, 0, 0, 1]), &scrape([60, 99, 100, 101]), "sluice_service_update_seconds");
        assert_eq!(h["count"], 100.0);
        assert_eq!(h["p50_le_ms"], 0.8);
        assert_eq!(h["p99_le_ms"], 1.6);
        assert_eq!(histogram_between("", "", "sluice_service_update_seconds")["count"], 0.0);
    }

    #[test]
    fn filler_addresses_are_distinct_and_clear_of_the_measured_services() {
        let ips: BTreeSet<Ipv4Addr> = (0..10_000).map(fill_ip).collect();
        assert_eq!(ips.len(), 10_000);
        assert!(!ips.contains(&LB_VIP) && !ips.contains(&IPTABLES_VIP));
        let service_cidr: ipnetwork::Ipv4Network = sluice_tests::cluster::SERVICE_CIDR.parse().unwrap();
        assert!(ips.iter().all(|ip| service_cidr.contains(*ip)), "cluster IPs inside the lab's Service CIDR");
        let endpoints: BTreeSet<Ipv4Addr> = (0..10_000).flat_map(fill_endpoints).collect();
        assert_eq!(endpoints.len(), 10_000 * PER_SERVICE);
        let cluster: ipnetwork::Ipv4Network = CLUSTER_CIDR.parse().unwrap();
        assert!(endpoints.iter().all(|ip| !cluster.contains(*ip)), "no made-up endpoint is a lab pod's address");
    }
}
