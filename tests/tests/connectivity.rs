//! `sluice-agent connectivity-test` in the lab: every node's health endpoint
//! answers ICMP and TCP through the datapath; with a node's uplink down, the
//! output names the failure and its likely reason.
use serde_json::Value;
use sluice_tests::{
    bin,
    lab::{ns_exec, Lab, LabOptions},
    require_root,
};

fn rows(v: &Value) -> Vec<Value> {
    v.as_array().unwrap().clone()
}

#[test]
fn every_node_reaches_every_health_endpoint_and_failures_are_named() {
    require_root();
    let lab = Lab::up(&LabOptions::new(3, 1, bin("sluice-agent").parent().unwrap().to_path_buf())).unwrap();
    // Healthy: from every node to every node (a full matrix), ICMP and TCP.
    for i in 0..3 {
        let (ok, v) = lab.connectivity_test(i, true).unwrap();
        assert!(ok, "node {i}: {v:#}");
        let r = rows(&v);
        let health: Vec<&Value> = r.iter().filter(|x| x["target"]["kind"] == "health").collect();
        assert_eq!(health.len(), 3, "{v:#}");
        for x in &health {
            assert!(x["icmpMs"].is_number() && x["tcpMs"].is_number(), "{x}");
        }
        assert!(r.iter().any(|x| x["target"]["kind"] == "pod"), "--pods lists the local pod: {v:#}");
    }
    // The text output: a table and a summary.
    let node = &lab.state.nodes[0];
    let text = ns_exec(
        &node.netns,
        &[
            &bin("sluice-agent").display().to_string(),
            "connectivity-test",
            "--pin-dir",
            &node.pin_dir.display().to_string(),
            "--data-dir",
            &node.dir.join("data").display().to_string(),
        ],
    )
    .unwrap();
    assert!(text.contains("3 of 3 targets reached"), "{text}");

    // Node n2's uplink goes down.
    ns_exec(&lab.state.nodes[1].netns, &["ip", "link", "set", "eth0", "down"]).unwrap();
    let (ok, v) = lab.connectivity_test(0, false).unwrap();
    assert!(!ok, "a failure must make the exit code non-zero");
    let r = rows(&v);
    let n2 = r.iter().find(|x| x["target"]["node"] == "n2").unwrap();
    assert_eq!(n2["ok"], false);
    let reason = n2["reason"].as_str().unwrap();
    assert!(reason.contains("peer node n2 (172.30.0.2) unreachable"), "{reason}");
    let n3 = r.iter().find(|x| x["target"]["node"] == "n3").unwrap();
    assert_eq!(n3["ok"], true, "other nodes unaffected: {n3}");
    // Seen from n2 itself: its own uplink is the problem.
    let (ok, v) = lab.connectivity_test(1, false).unwrap();
    assert!(!ok);
    let remote: Vec<Value> = rows(&v).into_iter().filter(|x| x["target"]["local"] == false).collect();
    assert!(!remote.is_empty());
    for x in remote {
        assert!(x["reason"].as_str().unwrap().contains("local uplink eth0 is down"), "{x}");
    }
}
