//! Membership from Kubernetes Node objects, against the test API server in
//! `sluice_tests::apiserver` (no real API server runs here): routes follow
//! ADDED / MODIFIED / DELETED events, survive 410 Gone (relist) and dropped
//! connections, and pods talk across nodes with CIDRs taken from the Nodes.
use std::{
    thread::sleep,
    time::{Duration, Instant},
};

use serde_json::Value;
use sluice_tests::{
    bin,
    lab::{Lab, LabOptions},
    require_root,
};

fn kube_lab(nodes: usize, pods: usize) -> Lab {
    require_root();
    let mut opts = LabOptions::new(nodes, pods, bin("sluice-agent").parent().unwrap().to_path_buf());
    opts.kubernetes = true;
    opts.pod_cidr_from_node = true;
    Lab::up(&opts).expect("lab up")
}

fn routes(lab: &Lab, node: usize) -> Vec<(String, String)> {
    let s = lab.status(node).unwrap();
    s["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["podCIDR"].as_str().unwrap().to_string(), r["nodeIP"].as_str().unwrap().to_string()))
        .collect()
}

/// Poll until `pred` holds on node 0's routes; return how long it took.
fn wait_routes(lab: &Lab, what: &str, limit: Duration, pred: impl Fn(&[(String, String)]) -> bool) -> Duration {
    let start = Instant::now();
    loop {
        let r = routes(lab, 0);
        if pred(&r) {
            return start.elapsed();
        }
        if start.elapsed() > limit {
            panic!("{what}: routes did not follow within {limit:?}: {r:?}\n{}", lab.status(0).unwrap());
        }
        sleep(Duration::from_millis(20));
    }
}

fn has(r: &[(String, String)], cidr: &str, ip: &str) -> bool {
    r.iter().any(|(c, i)| c == cidr && i == ip)
}

#[test]
fn routes_follow_node_events_and_pods_talk_with_cidrs_from_nodes() {
    let lab = kube_lab(2, 1);
    let api = lab.api.as_ref().unwrap();
    // Pod CIDRs came from the Nodes (no --pod-cidr given), and pods talk.
    let matrix = lab.matrix();
    assert!(matrix.all_ok(), "{}", matrix.render());
    assert!(lab.state.nodes[1].pods[0].ip.starts_with("10.244.2."));
    assert_eq!(routes(&lab, 0), vec![("10.244.2.0/24".to_string(), "172.30.0.2".to_string())]);

    let second = Duration::from_secs(1);
    api.upsert_node("n9", "172.30.0.9", Some("10.244.9.0/24"));
    let t = wait_routes(&lab, "ADDED", second, |r| has(r, "10.244.9.0/24", "172.30.0.9"));
    eprintln!("ADDED → route in {t:?}");
    api.upsert_node("n9", "172.30.0.19", Some("10.244.19.0/24"));
    wait_routes(&lab, "MODIFIED", second, |r| has(r, "10.244.19.0/24", "172.30.0.19") && r.len() == 2);
    api.delete_node("n9");
    wait_routes(&lab, "DELETED", second, |r| r.len() == 1);
    // A node with no pod CIDR yet is reported, not guessed.
    api.upsert_node("n8", "172.30.0.8", None);
    let start = Instant::now();
    loop {
        let s = lab.status(0).unwrap();
        let warnings: Vec<&str> = s["warnings"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
        if warnings.iter().any(|w| w.contains("n8") && w.contains("no pod CIDR")) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(3), "n8 not reported: {s}");
        sleep(Duration::from_millis(50));
    }
    assert_eq!(routes(&lab, 0).len(), 1);
    // The connection stayed healthy and bookmarks flowed.
    let s = lab.status(0).unwrap();
    assert_eq!(s["healthy"], true, "{s}");
    assert_eq!(s["agent"]["kubernetes"]["connected"], true);
    // NetworkPolicy's loop runs beside membership, on the pinned maps.
    assert_eq!(s["agent"]["policy"]["synced"], true, "{s}");
    assert!(s["agent"]["policy"]["identities"].as_u64().unwrap() >= 3, "nodes and the cluster CIDR: {s}");
    sleep(Duration::from_millis(1500));
    let (_, _, _, bookmarks) = api.counters();
    assert!(bookmarks > 0, "no bookmarks sent");
    assert!(lab.matrix().all_ok());
}

#[test]
fn relist_after_410_gone_and_reconnect_after_dropped_connections() {
    let lab = kube_lab(2, 0);
    let api = lab.api.as_ref().unwrap();
    let (lists_before, _, _, _) = api.counters();
    // History expires and watches are cut; changes made meanwhile must arrive
    // through the relist the 410 forces.
    api.expire_history();
    api.upsert_node("n7", "172.30.0.7", Some("10.244.7.0/24"));
    wait_routes(&lab, "after 410", Duration::from_secs(10), |r| has(r, "10.244.7.0/24", "172.30.0.7"));
    let (lists_after, _, gone, _) = api.counters();
    assert!(gone >= 1, "no 410 was sent");
    assert!(lists_after > lists_before, "410 did not force a relist");
    // Connections dropped: the watcher reconnects and catches up.
    api.drop_connections();
    api.upsert_node("n6", "172.30.0.6", Some("10.244.6.0/24"));
    api.delete_node("n7");
    wait_routes(&lab, "after drop", Duration::from_secs(10), |r| {
        has(r, "10.244.6.0/24", "172.30.0.6") && !r.iter().any(|(c, _)| c == "10.244.7.0/24")
    });
    let s = lab.status(0).unwrap();
    assert_eq!(s["agent"]["kubernetes"]["synced"], true);
    assert_eq!(s["healthy"], true, "{s}");
}

/// `GET /metrics` from node `i`'s agent (its default address).
fn metrics_text(lab: &Lab, i: usize) -> String {
    use std::io::{Read, Write};
    let node = &lab.state.nodes[i];
    let addr = format!("{}:9962", node.ip);
    let ns = std::path::Path::new("/run/netns").join(&node.netns);
    sluice_node::net::netns::run_in(&ns, move || {
        let mut s = std::net::TcpStream::connect(&addr)?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })
    .expect("metrics endpoint")
}

/// The API server stopped for 20 s — long enough that kube-rs' default
/// backoff (0.8 s doubling to 30 s, jittered up to twice that) would have
/// grown to 13–26 s, and backed off the 410 Expired after the return once
/// more — and restarted with a Node added meanwhile: the route reaches the
/// map within 5 s of the return, and `status` and the metrics say how long
/// the watch took.
#[test]
fn back_in_step_within_seconds_of_the_api_servers_return() {
    let lab = kube_lab(2, 0);
    let api = lab.api.as_ref().unwrap();
    api.stop_serving();
    let start = Instant::now();
    while lab.status(0).unwrap()["agent"]["kubernetes"]["connected"] != false {
        assert!(start.elapsed() < Duration::from_secs(10), "the agent did not notice the API server stop");
        sleep(Duration::from_millis(100));
    }
    // The outage itself (not a wait for anything): the backoff grows.
    sleep(Duration::from_secs(20));
    api.upsert_node("n5", "172.30.0.5", Some("10.244.5.0/24"));
    api.start_serving().unwrap();
    let took = wait_routes(&lab, "after the API server's return", Duration::from_secs(5), |r| {
        has(r, "10.244.5.0/24", "172.30.0.5")
    });
    eprintln!("the Node made during the outage was routed {took:?} after the API server's return");
    let s = lab.status(0).unwrap();
    assert_eq!(s["healthy"], true, "{s:#}");
    let recovery = &s["agent"]["kubernetes"]["lastRecovery"];
    let (outage_ms, after_ms) =
        (recovery["outageMs"].as_u64().unwrap(), recovery["syncedAfterReturnMs"].as_u64().unwrap());
    eprintln!("status: outage {outage_ms} ms, synced {after_ms} ms after the API server's return");
    assert!(outage_ms >= 20_000, "{recovery}");
    assert!(after_ms <= took.as_millis() as u64 + 1500, "at most the retry interval before the return: {recovery}");
    let metrics = metrics_text(&lab, 0);
    let line = metrics
        .lines()
        .find(|l| l.starts_with("sluice_kubernetes_synced_after_return_seconds{watch=\"nodes\"}"))
        .unwrap_or_else(|| panic!("no recovery metric:\n{metrics}"));
    let secs: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!((secs * 1000.0 - after_ms as f64).abs() < 1.0, "{line} vs status {after_ms} ms");
}
