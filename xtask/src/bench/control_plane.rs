//! The control-plane section: reconciling N peers' routes, the agent's
//! memory with them, peers file to map, and a Node change to its map entry.
use std::{
    net::Ipv4Addr,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use sluice_agent::reconcile::map_routes;
use sluice_node::datapath::{pinned_maps::NodeRoutes, pins::PinDir, Datapath};
use sluice_tests::{
    bench::percentiles_ms,
    lab::{Lab, LabOptions},
    PinDirGuard,
};

use super::args::Plan;

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
/// own) and a node IP of its own each (the agent routes no node IP two
/// nodes claim), 172.30.1.1 onwards: off the lab node's /24, so reached
/// through VXLAN.
fn synthetic_routes(count: usize) -> map_routes::Routes {
    (0..count)
        .map(|i| {
            let cidr = format!("10.244.{}.{}/30", 128 + i / 64, (i % 64) * 4).parse().expect("valid");
            let ip = Ipv4Addr::new(172, 30, 1 + (i / 250) as u8, 1 + (i % 250) as u8);
            (cidr, ip)
        })
        .collect()
}

pub(super) fn control_plane(bins: &Path, plan: &Plan) -> Result<Value> {
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
