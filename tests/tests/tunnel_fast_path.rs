//! VXLAN in the programs (issue 15): pod-to-pod packets to a tunneled peer
//! are encapsulated by `from_pod` and decapsulated by `from_uplink`, so the
//! kernel's VXLAN device carries none of them, GSO (a TCP bulk transfer)
//! included; host traffic still goes through the device.
use sluice_tests::{
    bench,
    capture::Capture,
    lab::{counter, ns_exec, ping, tcp_probe, Lab, LabOptions, Pod},
    require_root,
};

/// (rx, tx) packets of the node's VXLAN device.
fn device_packets(lab: &Lab, node: usize) -> (u64, u64) {
    let out = ns_exec(
        &lab.state.nodes[node].netns,
        &["ip", "-s", "-j", "link", "show", "dev", sluice_node::net::vxlan::DEVICE],
    )
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let stats = &v[0]["stats64"];
    (stats["rx"]["packets"].as_u64().unwrap(), stats["tx"]["packets"].as_u64().unwrap())
}

fn pod(lab: &Lab, node: usize) -> Pod {
    lab.state.nodes[node].pods[0].clone()
}

#[test]
fn pod_to_pod_across_a_router_is_encapsulated_by_the_programs_and_bypasses_the_device() {
    require_root();
    let mut opts = LabOptions::new(2, 1, sluice_tests::bin("sluice-agent").parent().unwrap().to_path_buf());
    opts.subnets = 2;
    let lab = Lab::up(&opts).expect("lab up");
    let (a, c) = (pod(&lab, 0), pod(&lab, 1));
    let (n1, n3) = (lab.state.nodes[0].clone(), lab.state.nodes[1].clone());
    assert!(ping(&a.netns, &c.ip), "warm up (ARP for the router)");

    let devices_before = [device_packets(&lab, 0), device_packets(&lab, 1)];
    let fast = |node: usize| {
        (counter(&lab, node, "forwards", "tunnel_encap"), counter(&lab, node, "forwards", "tunnel_decap"))
    };
    let fast_before = [fast(0), fast(1)];

    // ICMP both ways, TCP both ways, then a TCP bulk transfer (GSO
    // packets of many segments each) from n1's pod to n3's, and the
    // router in between sees VXLAN between the node IPs only.
    let router = lab.state.router_netns.clone().expect("a router");
    let cap = Capture::start(&router, "r0", &["udp", "port", "8472"]).unwrap();
    for (s, d) in [(&a, &c), (&c, &a)] {
        let out = ns_exec(&s.netns, &["ping", "-c", "20", "-i", "0.01", &d.ip]).unwrap();
        assert!(out.contains("20 received"), "ping {} -> {}: {out}", s.name, d.name);
        assert!(tcp_probe(&s.netns, &d.ip, &d.name), "TCP {} -> {}", s.name, d.name);
    }
    let text = cap.stop();
    for (from, to) in [(&n1.ip, &n3.ip), (&n3.ip, &n1.ip)] {
        let seen =
            text.lines().filter(|l| l.contains(&format!(" {from}.")) && l.contains(&format!("> {to}.8472: OTV")));
        assert!(seen.count() >= 20, "VXLAN {from} -> {to} on the router:\n{text}");
    }
    let tput = bench::throughput(&c.netns, &a.netns, c.ip.parse().unwrap(), 2).expect("TCP bulk transfer");
    assert!(tput.gbit_per_s > 0.05, "bulk transfer through the tunnel: {tput:?}");

    let fast_after = [fast(0), fast(1)];
    let devices_after = [device_packets(&lab, 0), device_packets(&lab, 1)];
    // Both directions, both nodes: encapsulated and decapsulated in eBPF.
    for node in 0..2 {
        let (enc, dec) = (fast_after[node].0 - fast_before[node].0, fast_after[node].1 - fast_before[node].1);
        assert!(enc >= 20, "node {node} encapsulated {enc} packets itself");
        assert!(dec >= 20, "node {node} decapsulated {dec} packets itself");
    }
    // The bulk transfer's GSO packets took the same path: n1 encapsulated
    // far more than the pings and probes.
    assert!(fast_after[0].0 - fast_before[0].0 >= 200, "the bulk transfer was encapsulated in eBPF");
    // The device saw (almost) nothing of it: thousands of packets crossed.
    for node in 0..2 {
        let (rx, tx) = (devices_after[node].0 - devices_before[node].0, devices_after[node].1 - devices_before[node].1);
        assert!(rx <= 5 && tx <= 5, "node {node}'s VXLAN device carried pod traffic: rx {rx}, tx {tx}");
    }

    // Host traffic to the remote pod still goes through the device, and
    // works.
    let (_, tx_before) = device_packets(&lab, 0);
    assert!(ping(&n1.netns, &c.ip), "node n1 -> n3's pod");
    assert!(tcp_probe(&n1.netns, &c.ip, &c.name), "TCP node n1 -> n3's pod");
    let (_, tx_after) = device_packets(&lab, 0);
    assert!(tx_after > tx_before, "host traffic through n1's VXLAN device");
    assert_eq!(counter(&lab, 0, "drops", "redirect_failed"), 0);
    assert_eq!(counter(&lab, 1, "drops", "redirect_failed"), 0);
}
