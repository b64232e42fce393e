//! NodePorts from outside the cluster (issue 27) in `cargo xtask bench
//! --nodeport`: the world → `node 1:nodePort` → the backend pod on node 2,
//! TCP_RR and TCP_CRR, on one Kubernetes lab per round
//! (`--kube-proxy-replacement=true`, native, no kube-proxy rules but
//! those the bench puts in), with N Services (N = `Plan::scales`), every
//! one of them a NodePort:
//! - "NP sluice SNAT N": sluice's translation at node 1's uplink
//!   (`from_uplink`, `NAT4`): DNAT to the backend, SNAT to node 1's
//!   address and a port of the SNAT range, the answer reversed back.
//!   The API server holds N NodePort Services, N − 1 with
//!   `services::PER_SERVICE` made-up endpoints and the measured one with
//!   the real pod (and the DSR row's, below: N + 1 in the maps). Checked: node 1 translated back (`reversed`) at
//!   least one answer per transaction.
//! - "NP kube-proxy N": kube-proxy's iptables rules for the same N
//!   Services (`kube_proxy::render`: `KUBE-SERVICES` then `KUBE-NODEPORTS`,
//!   the measured one in the middle), on a node port the API server does
//!   not hold, so sluice's uplink leaves it to the stack; on node 1 only
//!   (the one node whose netfilter hooks the packets cross), through
//!   iptables-legacy as in `services`, removed again after the row.
//!   Checked: node 1's `NAT4` counts no new connection meanwhile.
//! - "NP sluice DSR N": direct server return (`--lb-mode=dsr`), its own
//!   measured Service (`DSR_NODE_PORT`, backend port `DSR_SERVER_PORT`):
//!   node 1 DNATs only and carries the frontend to node 2 in the DSR
//!   option, node 2 answers the world itself. Both agents run with
//!   `--lb-mode=snat`; for this row only, both nodes' `LB4_CONFIG` is
//!   switched to DSR (what `--lb-mode=dsr` writes at start) and back
//!   after: one lab, both modes, the same round. Checked: node 1
//!   translated back no answer (`reversed`), node 2 at least one per
//!   transaction.
//! - "NP world-node N": the world → node 2's own address, nothing
//!   translated: the reference each row is divided by in the same round
//!   (the machine drifts between scales; the ratios of a row to the one
//!   measured beside it do not).
//!
//! The node ports: the agents run with `--node-port-range`
//! `NODE_PORT_RANGE` (10,000 NodePorts do not fit in the default 2,768);
//! filler `i` has `FILL_NODE_PORT + i`.
//!
//! The client runs in the world's namespace (a thread pinned to CPU 0
//! beside the server, as the other rows'): the world is no node, so no
//! socket load balancer sees it.
use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use sluice_common::{
    nat::{Lb4Config, Nat4Counter, LB4_DSR},
    services::SCOPE_NODE_PORT,
};
use sluice_node::datapath::{nat4_maps, pins::PinDir, service_maps::ServiceMaps};
use sluice_tests::{
    apiserver::{ApiServer, EndpointSliceObject, Kind, ServiceObject},
    bench::{self, median, Latency, Target},
    cluster, kube_proxy,
    lab::{Lab, LabOptions},
    process,
};

use super::{
    args::Plan,
    labs::BENCH_SERVER_PORT,
    paths::PathFigures,
    prog_cost,
    services::{self, fill_endpoints, fill_ip, fill_node, FILL_TARGET_PORT, VIP_PORT},
};

/// The agents' `--node-port-range`: room for 10,000 NodePorts.
pub(super) const NODE_PORT_RANGE: &str = "20000-32767";
/// Filler `i`'s node port is `FILL_NODE_PORT + i`.
const FILL_NODE_PORT: u16 = 20000;
/// The measured Service through sluice (in the API server).
const SNAT_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 210);
const SNAT_NODE_PORT: u16 = 31000;
/// The measured Service through kube-proxy's rules (not in the API
/// server: sluice's uplink passes it to the stack).
const IPTABLES_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 211);
const IPTABLES_NODE_PORT: u16 = 31001;
/// The kube-proxy row's backend port: not the sluice row's, so no tuple
/// one of them left in a node's tables can meet the other's.
const IPTABLES_SERVER_PORT: u16 = BENCH_SERVER_PORT + 1;
/// The measured Service through sluice in DSR mode (in the API server),
/// with a backend port of its own for the same reason.
const DSR_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 212);
const DSR_NODE_PORT: u16 = 31002;
const DSR_SERVER_PORT: u16 = BENCH_SERVER_PORT + 2;
const FILL_NS: &str = "bench-np";

pub fn snat_name(scale: usize) -> String {
    format!("NP sluice SNAT {scale}")
}

pub fn dsr_name(scale: usize) -> String {
    format!("NP sluice DSR {scale}")
}

pub fn iptables_name(scale: usize) -> String {
    format!("NP kube-proxy {scale}")
}

pub fn world_node_name(scale: usize) -> String {
    format!("NP world-node {scale}")
}

/// Filler `i`'s node port.
fn fill_node_port(i: usize) -> u16 {
    FILL_NODE_PORT + i as u16
}

/// What is measured at each scale.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Way {
    SluiceSnat,
    SluiceDsr,
    KubeProxy,
    WorldNode,
}

/// The ways in the order round `round` measures them: rotated each
/// round, so none is always first or last.
pub(super) fn ways_in_round(round: usize) -> [Way; 4] {
    let mut ways = [Way::SluiceSnat, Way::SluiceDsr, Way::KubeProxy, Way::WorldNode];
    ways.rotate_left(round % 4);
    ways
}

/// The scales a run measures, each at most the room `NODE_PORT_RANGE`
/// leaves below the measured node ports.
pub(super) fn check_scales(scales: &[usize]) -> Result<()> {
    let room = usize::from(SNAT_NODE_PORT.min(IPTABLES_NODE_PORT) - FILL_NODE_PORT) + 1;
    match scales.iter().find(|&&n| n == 0 || n > room) {
        Some(n) => bail!("{n} NodePort Services: between 1 and {room} fit below the measured node ports"),
        None if scales.is_empty() => bail!("no scale to measure"),
        None => Ok(()),
    }
}

/// The ratios of the rows: (label, numerator, denominator). sluice over
/// kube-proxy at each scale; each way's largest (and every) scale over
/// its smallest, raw and each first divided by the world → node row of
/// its own scale (drift-free).
pub(super) fn ratio_pairs(scales: &[usize]) -> Vec<(String, String, String)> {
    let mut v = Vec::new();
    for &n in scales {
        v.push((format!("NP SNAT/kube-proxy {n}"), snat_name(n), iptables_name(n)));
        v.push((format!("NP SNAT/world-node {n}"), snat_name(n), world_node_name(n)));
        v.push((format!("NP kube-proxy/world-node {n}"), iptables_name(n), world_node_name(n)));
        v.push((format!("NP DSR/SNAT {n}"), dsr_name(n), snat_name(n)));
        v.push((format!("NP DSR/world-node {n}"), dsr_name(n), world_node_name(n)));
    }
    let lo = scales[0];
    for &n in &scales[1..] {
        v.push((format!("NP SNAT {n}/{lo}"), snat_name(n), snat_name(lo)));
        v.push((format!("NP kube-proxy {n}/{lo}"), iptables_name(n), iptables_name(lo)));
        v.push((format!("NP world-node {n}/{lo}"), world_node_name(n), world_node_name(lo)));
        v.push((format!("NP DSR {n}/{lo}"), dsr_name(n), dsr_name(lo)));
    }
    v
}

/// Per round, `way` at `hi` Services over `lo`, each divided by the world
/// → node row of its scale; median over rounds (`metric`: rr or crr).
pub(super) fn drift_free(
    rounds: &[BTreeMap<String, PathFigures>],
    way: fn(usize) -> String,
    hi: usize,
    lo: usize,
    metric: &str,
) -> Value {
    let get = |r: &BTreeMap<String, PathFigures>, name: String| {
        r.get(&name).map_or(f64::NAN, |p| if metric == "rr" { p.rr.per_sec } else { p.crr.per_sec })
    };
    let per_round: Vec<f64> = rounds
        .iter()
        .map(|r| {
            let at = |n: usize| get(r, way(n)) / get(r, world_node_name(n));
            at(hi) / at(lo)
        })
        .filter(|x| x.is_finite())
        .collect();
    if per_round.is_empty() {
        Value::Null
    } else {
        json!(median(per_round))
    }
}

/// Issue 27's targets against this run's ratios: printed, never asserted.
pub(super) fn targets(r: &Value, scales: &[usize]) -> Value {
    let (lo, hi) = (scales[0], scales[scales.len() - 1]);
    let ratios = &r["ratios"];
    let flat = &ratios[format!("NP SNAT {hi}/{lo}")];
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    vec![
        super::report::target(
            format!("NodePort TCP_RR sluice SNAT/kube-proxy, {lo} Services"),
            &ratios[format!("NP SNAT/kube-proxy {lo}")]["rr"],
            true,
            1.2,
            "",
            format!(
                "TCP_CRR {:.2}; with {hi}: TCP_RR {:.2}, TCP_CRR {:.2}",
                f(&ratios[format!("NP SNAT/kube-proxy {lo}")]["crr"]),
                f(&ratios[format!("NP SNAT/kube-proxy {hi}")]["rr"]),
                f(&ratios[format!("NP SNAT/kube-proxy {hi}")]["crr"]),
            ),
        ),
        super::report::target(
            format!("NodePort TCP_CRR sluice SNAT/kube-proxy, {lo} Services"),
            &ratios[format!("NP SNAT/kube-proxy {lo}")]["crr"],
            true,
            1.2,
            "",
            String::new(),
        ),
        super::report::target(
            format!("NodePort TCP_RR sluice DSR/SNAT, {lo} Services"),
            &ratios[format!("NP DSR/SNAT {lo}")]["rr"],
            true,
            1.1,
            "",
            format!(
                "TCP_CRR {:.2}; with {hi}: TCP_RR {:.2}",
                f(&ratios[format!("NP DSR/SNAT {lo}")]["crr"]),
                f(&ratios[format!("NP DSR/SNAT {hi}")]["rr"]),
            ),
        ),
        super::report::target(
            format!("NodePort TCP_RR sluice SNAT {hi}/{lo} Services"),
            &flat["rr"],
            true,
            0.95,
            "",
            format!(
                "each over world-node beside it: {:.2}; kube-proxy {hi}/{lo}: {:.2}",
                f(&r["drift_free"]["snat_rr"]),
                f(&ratios[format!("NP kube-proxy {hi}/{lo}")]["rr"]),
            ),
        ),
        super::report::target(
            format!("NodePort TCP_CRR sluice SNAT {hi}/{lo} Services"),
            &flat["crr"],
            true,
            0.95,
            "",
            format!(
                "each over world-node beside it: {:.2}; kube-proxy {hi}/{lo}: {:.2}",
                f(&r["drift_free"]["snat_crr"]),
                f(&ratios[format!("NP kube-proxy {hi}/{lo}")]["crr"]),
            ),
        ),
    ]
    .into()
}

fn fill_service(i: usize) -> Value {
    ServiceObject::new(FILL_NS, &format!("np-{i}"), &fill_ip(i).to_string())
        .type_("NodePort")
        .port("http", VIP_PORT, FILL_TARGET_PORT, "TCP")
        .node_ports(&[fill_node_port(i)])
        .build()
}

fn fill_slice(i: usize) -> Value {
    let s = EndpointSliceObject::new(FILL_NS, &format!("np-{i}-bench"), &format!("np-{i}")).port(
        "http",
        FILL_TARGET_PORT,
        "TCP",
    );
    fill_endpoints(i).iter().fold(s, |s, ip| s.endpoint(&ip.to_string(), &fill_node(*ip))).build()
}

/// Filler NodePort Services `from..to` and their slices.
fn publish(api: &ApiServer, from: usize, to: usize) {
    api.upsert_many(Kind::Service, (from..to).map(fill_service));
    api.upsert_many(Kind::EndpointSlice, (from..to).map(fill_slice));
}

/// Wait until every node's maps hold `want` NodePort frontends.
fn wait_node_ports(lab: &Lab, want: usize, limit: Duration) -> Result<Duration> {
    let start = Instant::now();
    for node in &lab.state.nodes {
        let maps = ServiceMaps::open(&PinDir::new(&node.pin_dir))?;
        loop {
            let got = maps.services()?.iter().filter(|(k, _)| k.scope == SCOPE_NODE_PORT).count();
            if got == want {
                break;
            }
            if start.elapsed() > limit {
                bail!("{}: {got} NodePort frontends in the maps, want {want} within {limit:?}", node.name);
            }
            sleep(Duration::from_millis(100));
        }
    }
    Ok(start.elapsed())
}

/// kube-proxy's view of the filler Services `0..scale - 1` plus the
/// measured one (node port `IPTABLES_NODE_PORT` to `backend`), in the
/// middle of the list.
fn iptables_services(scale: usize, backend: Ipv4Addr, backend_node: &str) -> Vec<kube_proxy::Service> {
    let port = |target_port, node_port| kube_proxy::ServicePort {
        name: "http".into(),
        protocol: kube_proxy::Protocol::Tcp,
        port: VIP_PORT,
        target_port,
        node_port: Some(node_port),
    };
    let mut list: Vec<kube_proxy::Service> = (0..scale - 1)
        .map(|i| kube_proxy::Service {
            namespace: FILL_NS.into(),
            name: format!("np-{i}"),
            cluster_ip: fill_ip(i),
            ports: vec![port(FILL_TARGET_PORT, fill_node_port(i))],
            external_traffic_policy_local: false,
            endpoints: fill_endpoints(i)
                .into_iter()
                .map(|ip| kube_proxy::Endpoint { ip, node: fill_node(ip) })
                .collect(),
        })
        .collect();
    let measured = kube_proxy::Service {
        namespace: "bench".into(),
        name: "np-iptables".into(),
        cluster_ip: IPTABLES_VIP,
        ports: vec![port(IPTABLES_SERVER_PORT, IPTABLES_NODE_PORT)],
        external_traffic_policy_local: false,
        endpoints: vec![kube_proxy::Endpoint { ip: backend, node: backend_node.into() }],
    };
    list.insert(list.len() / 2, measured);
    list
}

/// Node 1's `NAT4_STATS` by name.
fn nat4_stats(pins: &PinDir) -> Result<BTreeMap<&'static str, u64>> {
    Ok(nat4_maps::nat4_counters(pins)?.into_iter().map(|(c, n)| (c.name(), n)).collect())
}

/// What changed between two `nat4_stats`.
fn stats_delta(before: &BTreeMap<&'static str, u64>, after: &BTreeMap<&'static str, u64>) -> Value {
    after.iter().map(|(k, n)| (k.to_string(), json!(n - before.get(k).copied().unwrap_or(0)))).collect()
}

fn nat4_new(pins: &PinDir) -> Result<u64> {
    Ok(nat4_maps::nat4_counters(pins)?
        .into_iter()
        .filter(|(c, _)| matches!(c, Nat4Counter::NewRemote | Nat4Counter::NewLocal))
        .map(|(_, n)| n)
        .sum())
}

/// A row that could not be measured: no figure (null in the report).
fn failed_latency() -> Latency {
    Latency { per_sec: f64::NAN, p50_us: f64::NAN, p99_us: f64::NAN, samples: 0 }
}

fn measure(server_ns: &str, world: &str, target: Target, d: Duration) -> Result<PathFigures> {
    Ok(PathFigures {
        rr: bench::tcp_rr_to(server_ns, world, target, d)?,
        crr: bench::tcp_crr_to(server_ns, world, target, d)?,
        tput: None,
        programs: None,
    })
}

/// One round of the NodePort rows: a fresh lab, every scale in turn (the
/// Services only grow), the ways in the order `ways_in_round` gives.
/// Fills `out`; returns per-scale times (maps synced, iptables restore).
pub fn round(round: usize, bins: &Path, plan: &Plan, out: &mut BTreeMap<String, PathFigures>) -> Result<Value> {
    check_scales(&plan.scales)?;
    let mut opts = LabOptions::new(2, 0, bins.to_path_buf());
    opts.kubernetes = true;
    opts.kube_proxy_replacement = true;
    opts.extra_agent_args = vec!["--tunnel=never".into(), format!("--node-port-range={NODE_PORT_RANGE}")];
    let mut lab = Lab::up(&opts)?;
    lab.add_pod(1, "n2p1")?;
    // The rows run on CPU 0 (client and server threads, and so the
    // packets' softirq work); the agents are kept on the other CPUs, so
    // their periodic passes (every Service replanned every 10 s) fall on
    // no row's CPU, the kube-proxy row's as little as sluice's. What they
    // cost is reported per row instead (`agent_cpu_ms`).
    for node in &lab.state.nodes {
        let pid = node.agent_pid.with_context(|| format!("no agent on {}", node.name))?;
        process::keep_off_cpu(pid, 0).with_context(|| format!("{}'s agent", node.name))?;
    }
    let world = cluster::add_world(&mut lab)?;
    let (n1, n2) = (lab.state.nodes[0].clone(), lab.state.nodes[1].clone());
    let server = n2.pods[0].clone();
    let server_ip: Ipv4Addr = server.ip.parse()?;
    let (n1_ip, n2_ip): (Ipv4Addr, Ipv4Addr) = (n1.ip.parse()?, n2.ip.parse()?);
    let api = lab.api.as_ref().context("a Kubernetes lab has an API server")?;
    api.upsert_service(
        ServiceObject::new("bench", "np", &SNAT_VIP.to_string())
            .type_("NodePort")
            .port("tcp", VIP_PORT, BENCH_SERVER_PORT, "TCP")
            .node_ports(&[SNAT_NODE_PORT])
            .build(),
    );
    api.upsert_endpoint_slice(
        EndpointSliceObject::new("bench", "np-bench", "np")
            .port("tcp", BENCH_SERVER_PORT, "TCP")
            .endpoint(&server.ip, &n2.name)
            .build(),
    );
    api.upsert_service(
        ServiceObject::new("bench", "np-dsr", &DSR_VIP.to_string())
            .type_("NodePort")
            .port("tcp", VIP_PORT, DSR_SERVER_PORT, "TCP")
            .node_ports(&[DSR_NODE_PORT])
            .build(),
    );
    api.upsert_endpoint_slice(
        EndpointSliceObject::new("bench", "np-dsr-bench", "np-dsr")
            .port("tcp", DSR_SERVER_PORT, "TCP")
            .endpoint(&server.ip, &n2.name)
            .build(),
    );
    // The two nodes' programs, whose cost per transaction the SNAT and DSR
    // rows report (a pass of their own with BPF statistics on).
    let nodes = [(n1.name.clone(), n1.pin_dir.clone()), (n2.name.clone(), n2.pin_dir.clone())];
    let pins1 = PinDir::new(&n1.pin_dir);
    let pins2 = PinDir::new(&n2.pin_dir);
    let mut fill = 0;
    let mut times = serde_json::Map::new();
    for &scale in &plan.scales {
        let t = Instant::now();
        publish(api, fill, scale - 1);
        fill = scale - 1;
        wait_node_ports(&lab, scale + 1, Duration::from_secs(300))?;
        let synced = t.elapsed();
        let mut restore = Duration::ZERO;
        let mut snat_stats = Value::Null;
        let mut snat_errors: Vec<String> = Vec::new();
        let mut agent_cpu = serde_json::Map::new();
        for way in ways_in_round(round) {
            eprintln!("bench: round {} NodePort {way:?} with {scale} Services", round + 1);
            let cpu_before = agents_cpu(&lab);
            let new_before = nat4_new(&pins1)?;
            match way {
                Way::SluiceSnat => {
                    // No emptying of NAT4 before the row: the closed
                    // connections of the rows before give their SNAT
                    // ports up (`port_taken_over` in the row's counters).
                    let target = Target {
                        server_ip: server_ip.into(),
                        server_port: BENCH_SERVER_PORT,
                        via: Some(SocketAddr::from((n1_ip, SNAT_NODE_PORT))),
                    };
                    let stats = nat4_stats(&pins1)?;
                    let rr = bench::tcp_rr_to(&server.netns, &world, target, plan.rr);
                    let crr = bench::tcp_crr_to(&server.netns, &world, target, plan.rr);
                    snat_stats = stats_delta(&stats, &nat4_stats(&pins1)?);
                    let reversed = nat4_stats(&pins1)?["reversed"] - stats["reversed"];
                    let mut kept = |what: &str, r: Result<Latency>| match r {
                        Ok(l) => l,
                        Err(e) => {
                            eprintln!("bench: NodePort SNAT {what} with {scale} Services FAILED: {e:#}");
                            snat_errors.push(format!("{what}: {e:#}"));
                            failed_latency()
                        }
                    };
                    let programs = prog_cost::pass(&nodes, &server.netns, &world, target, plan.rr).ok();
                    let f = PathFigures { rr: kept("TCP_RR", rr), crr: kept("TCP_CRR", crr), tput: None, programs };
                    // Every transaction's answer came back through node 1's
                    // NAT4 (a new connection's may reuse a closed one's
                    // entries: the client's ports come round again).
                    let transactions = (f.rr.samples + f.crr.samples) as u64;
                    if reversed < transactions {
                        bail!("{scale} Services: node 1 translated {reversed} answers back, fewer than {transactions} transactions");
                    }
                    out.insert(snat_name(scale), f);
                }
                Way::SluiceDsr => {
                    let target = Target {
                        server_ip: server_ip.into(),
                        server_port: DSR_SERVER_PORT,
                        via: Some(SocketAddr::from((n1_ip, DSR_NODE_PORT))),
                    };
                    let (before1, before2) = (nat4_stats(&pins1)?, nat4_stats(&pins2)?);
                    let snat_config = nat4_maps::lb4_config(&pins1)?;
                    let dsr_config = Lb4Config { flags: snat_config.flags | LB4_DSR, ..snat_config };
                    for pins in [&pins1, &pins2] {
                        nat4_maps::set_lb4_config(pins, dsr_config)?;
                    }
                    let f = measure(&server.netns, &world, target, plan.rr);
                    let programs = prog_cost::pass(&nodes, &server.netns, &world, target, plan.rr).ok();
                    for pins in [&pins1, &pins2] {
                        nat4_maps::set_lb4_config(pins, snat_config)?;
                    }
                    let f = PathFigures { programs, ..f.with_context(|| format!("sluice DSR with {scale} Services"))? };
                    let reversed1 = nat4_stats(&pins1)?["reversed"] - before1["reversed"];
                    let reversed2 = nat4_stats(&pins2)?["reversed"] - before2["reversed"];
                    let transactions = (f.rr.samples + f.crr.samples) as u64;
                    if reversed1 > 0 || reversed2 < transactions {
                        bail!(
                            "{scale} Services, DSR: node 1 translated {reversed1} answers back (want 0), node 2 \
                             {reversed2} (want at least {transactions} transactions)"
                        );
                    }
                    out.insert(dsr_name(scale), f);
                }
                Way::KubeProxy => {
                    let rules = iptables_services(scale, server_ip, &n2.name);
                    restore = services::apply_iptables(&n1, &rules)?;
                    let target = Target {
                        server_ip: server_ip.into(),
                        server_port: IPTABLES_SERVER_PORT,
                        via: Some(SocketAddr::from((n1_ip, IPTABLES_NODE_PORT))),
                    };
                    let f = measure(&server.netns, &world, target, plan.rr);
                    services::remove_iptables(&n1)?;
                    let f = f.with_context(|| format!("kube-proxy's rules with {scale} Services"))?;
                    let translated = nat4_new(&pins1)? - new_before;
                    if translated > 0 {
                        bail!("{scale} Services: sluice translated {translated} connections of the kube-proxy row");
                    }
                    out.insert(iptables_name(scale), f);
                }
                Way::WorldNode => {
                    let f = measure(&n2.netns, &world, Target::direct(n2_ip), plan.rr)?;
                    out.insert(world_node_name(scale), f);
                }
            }
            if let (Some(before), Some(after)) = (cpu_before, agents_cpu(&lab)) {
                let ms = after.saturating_sub(before).as_secs_f64() * 1e3;
                eprintln!("bench: the agents used {ms:.0} ms of CPU during the {way:?} row");
                agent_cpu.insert(format!("{way:?}"), json!(ms));
            }
        }
        times.insert(
            scale.to_string(),
            json!({
                "maps_synced_ms": synced.as_secs_f64() * 1e3,
                "iptables_restore_ms": restore.as_secs_f64() * 1e3,
                "snat_row_nat4_stats": snat_stats,
                "snat_row_errors": snat_errors,
                "agent_cpu_ms": agent_cpu,
            }),
        );
    }
    Ok(Value::Object(times))
}

/// Both agents' CPU time so far (`None` if one is gone).
fn agents_cpu(lab: &Lab) -> Option<Duration> {
    lab.state.nodes.iter().map(|n| n.agent_pid.and_then(process::cpu_time)).sum()
}

/// Per-scale times of every round, as medians.
pub fn median_times(rounds: &[Value], scales: &[usize]) -> Value {
    let mut out = serde_json::Map::new();
    for scale in scales {
        let key = scale.to_string();
        let m = |field: &str| json!(median(rounds.iter().filter_map(|r| r[&key][field].as_f64()).collect()));
        // The SNAT row's NAT4 counters, summed over rounds.
        let mut stats: BTreeMap<String, u64> = BTreeMap::new();
        for r in rounds {
            for (name, n) in r[&key]["snat_row_nat4_stats"].as_object().into_iter().flatten() {
                *stats.entry(name.clone()).or_default() += n.as_u64().unwrap_or(0);
            }
        }
        let errors: Vec<Value> =
            rounds.iter().flat_map(|r| r[&key]["snat_row_errors"].as_array().cloned().unwrap_or_default()).collect();
        out.insert(
            key.clone(),
            json!({
                "snat_row_errors": errors,
                "maps_synced_ms": m("maps_synced_ms"),
                "iptables_restore_ms": m("iptables_restore_ms"),
                "snat_row_nat4_stats": stats,
                // Each round's, per row: the agents' CPU while it ran.
                "agent_cpu_ms": rounds.iter().map(|r| r[&key]["agent_cpu_ms"].clone()).collect::<Vec<_>>(),
            }),
        );
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use sluice_tests::bench::Latency;

    #[test]
    fn every_way_leads_one_round_in_four() {
        let firsts: BTreeSet<String> = (0..4).map(|r| format!("{:?}", ways_in_round(r)[0])).collect();
        assert_eq!(firsts.len(), 4);
        for r in 0..8 {
            let ways: BTreeSet<String> = ways_in_round(r).iter().map(|w| format!("{w:?}")).collect();
            assert_eq!(ways.len(), 4, "round {r} measures every way once");
        }
        assert_eq!(ways_in_round(0), ways_in_round(4));
    }

    #[test]
    fn filler_node_ports_fit_the_range_and_miss_the_measured_ones() {
        check_scales(&[10, 1_000, 10_000]).unwrap();
        assert!(check_scales(&[10, 20_000]).is_err());
        assert!(check_scales(&[0]).is_err());
        assert!(check_scales(&[]).is_err());
        let (lo, hi) = NODE_PORT_RANGE.split_once('-').unwrap();
        let range = lo.parse::<u16>().unwrap()..=hi.parse::<u16>().unwrap();
        let ports: BTreeSet<u16> = (0..9_999).map(fill_node_port).collect();
        assert_eq!(ports.len(), 9_999);
        assert!(ports.iter().all(|p| range.contains(p)));
        for measured in [SNAT_NODE_PORT, IPTABLES_NODE_PORT, DSR_NODE_PORT] {
            assert!(range.contains(&measured) && !ports.contains(&measured), "{measured}");
        }
        // The built objects carry them.
        assert_eq!(fill_service(7)["spec"]["ports"][0]["nodePort"], 20_007);
    }

    #[test]
    fn kube_proxy_gets_every_service_with_its_node_port_and_the_measured_one_in_the_middle() {
        let list = iptables_services(1_000, Ipv4Addr::new(10, 244, 1, 2), "n2");
        assert_eq!(list.len(), 1_000);
        assert_eq!(list[499].name, "np-iptables");
        assert_eq!(list[499].ports[0].node_port, Some(IPTABLES_NODE_PORT));
        assert!(list.iter().all(|s| s.ports[0].node_port.is_some()));
        let text = kube_proxy::render(&list, "n1", "10.244.0.0/16".parse().unwrap());
        assert!(text.contains(&format!("--dport {IPTABLES_NODE_PORT}")), "the measured node port is in KUBE-NODEPORTS");
    }

    #[test]
    fn ratios_pair_the_ways_at_each_scale_and_each_scale_with_the_first() {
        let pairs = ratio_pairs(&[10, 1_000, 10_000]);
        let find = |l: &str| pairs.iter().find(|(label, _, _)| label == l).cloned().unwrap();
        assert_eq!(find("NP SNAT/kube-proxy 10"), ("NP SNAT/kube-proxy 10".into(), snat_name(10), iptables_name(10)));
        assert_eq!(find("NP SNAT 10000/10").1, snat_name(10_000));
        assert_eq!(find("NP SNAT 10000/10").2, snat_name(10));
        assert_eq!(find("NP kube-proxy 1000/10").1, iptables_name(1_000));
        assert_eq!(find("NP DSR/SNAT 10"), ("NP DSR/SNAT 10".into(), dsr_name(10), snat_name(10)));
        assert_eq!(find("NP DSR 10000/10").1, dsr_name(10_000));
        assert_eq!(pairs.len(), 3 * 5 + 2 * 4);
    }

    fn figures(rr: f64, crr: f64) -> PathFigures {
        PathFigures {
            rr: Latency { per_sec: rr, ..Default::default() },
            crr: Latency { per_sec: crr, ..Default::default() },
            ..Default::default()
        }
    }

    #[test]
    fn drift_free_divides_each_scale_by_the_reference_beside_it() {
        // The machine slowed by half between the scales; sluice did not.
        let round: BTreeMap<String, PathFigures> = [
            (snat_name(10), figures(100.0, 50.0)),
            (world_node_name(10), figures(200.0, 100.0)),
            (snat_name(10_000), figures(50.0, 24.0)),
            (world_node_name(10_000), figures(100.0, 50.0)),
        ]
        .into_iter()
        .collect();
        assert_eq!(drift_free(std::slice::from_ref(&round), snat_name, 10_000, 10, "rr"), json!(1.0));
        assert_eq!(drift_free(&[round], snat_name, 10_000, 10, "crr"), json!(0.96));
        assert_eq!(drift_free(&[], snat_name, 10_000, 10, "rr"), Value::Null);
    }

    #[test]
    fn targets_read_the_ratios_the_issue_names() {
        let r = json!({
            "ratios": {
                "NP SNAT/kube-proxy 10": {"rr": 1.3, "crr": 1.1},
                "NP DSR/SNAT 10": {"rr": 1.05, "crr": 1.2},
                "NP SNAT/kube-proxy 10000": {"rr": 2.0, "crr": 1.9},
                "NP SNAT 10000/10": {"rr": 0.97, "crr": 0.9},
                "NP kube-proxy 10000/10": {"rr": 0.5, "crr": 0.5},
            },
            "drift_free": {"snat_rr": 0.99, "snat_crr": 0.93},
        });
        let t = targets(&r, &[10, 1_000, 10_000]);
        let met: Vec<Value> = t.as_array().unwrap().iter().map(|t| t["met"].clone()).collect();
        assert_eq!(met, vec![json!(true), json!(false), json!(false), json!(true), json!(false)]);
        assert_eq!(t[0]["limit"], 1.2);
        assert_eq!(t[2]["limit"], 1.1, "DSR RR over SNAT");
        assert_eq!(t[3]["limit"], 0.95);
        // Not measured: no verdict rather than a failed one.
        let none = targets(&json!({}), &[10, 100]);
        assert!(none.as_array().unwrap().iter().all(|t| t["met"].is_null()));
    }
}
