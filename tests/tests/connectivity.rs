//! `sluice-agent connectivity-test` in the lab (with the cluster model: a
//! world, kube-proxy's rules for the demo Service): every class of traffic
//! is probed through the datapath; failures name the hop and the likely
//! reason (a node's uplink down, masquerade off).
use serde_json::Value;
use sluice_tests::{
    bin,
    cluster::{world_netns, DEMO_IP, DEMO_IP6, DEMO_NODE_PORT, WORLD_IP, WORLD_IP6, WORLD_PORT},
    lab::{ns_exec, Lab, LabOptions},
    require_root,
};

fn rows(v: &Value) -> Vec<Value> {
    v.as_array().unwrap().clone()
}

fn of_class<'a>(r: &'a [Value], class: &str) -> Vec<&'a Value> {
    r.iter().filter(|x| x["target"]["class"] == class).collect()
}

#[test]
fn every_class_is_reached_and_failures_name_the_hop() {
    require_root();
    let mut opts = LabOptions::new(3, 1, bin("sluice-agent").parent().unwrap().to_path_buf());
    opts.cluster_model = true;
    let mut lab = Lab::up(&opts).unwrap();
    let service = format!("{DEMO_IP}:80");
    let world = format!("{WORLD_IP}:{WORLD_PORT}");
    let all = ["--pods", "--service", &service, "--world", &world];
    // Healthy: from every node to every node, every class.
    for i in 0..3 {
        let (ok, v) = lab.connectivity_test(i, &all).unwrap();
        assert!(ok, "node {i}: {v:#}");
        let r = rows(&v);
        let health: Vec<&Value> =
            of_class(&r, "pod-to-pod").into_iter().filter(|x| x["target"]["kind"] == "health").collect();
        assert_eq!(health.len(), 3, "{v:#}");
        for x in &health {
            assert!(x["icmpMs"].is_number() && x["tcpMs"].is_number(), "{x}");
        }
        assert!(of_class(&r, "pod-to-pod").iter().any(|x| x["target"]["kind"] == "pod"), "--pods: {v:#}");
        assert_eq!(of_class(&r, "pod-to-host").len(), 3, "{v:#}");
        assert_eq!(of_class(&r, "host-to-pod").len(), 3, "{v:#}");
        assert!(of_class(&r, "pod-to-service")[0]["tcpMs"].is_number(), "{v:#}");
        assert!(of_class(&r, "pod-to-world")[0]["tcpMs"].is_number(), "{v:#}");
    }
    // The text output: a table and a summary.
    let node = &lab.state.nodes[0];
    let mut args = vec![
        bin("sluice-agent").display().to_string(),
        "connectivity-test".into(),
        "--pin-dir".into(),
        node.pin_dir.display().to_string(),
        "--data-dir".into(),
        Lab::data_dir(node).display().to_string(),
    ];
    args.extend(["--service".into(), service.clone(), "--world".into(), world.clone()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let text = ns_exec(&node.netns, &args).unwrap();
    assert!(text.contains("11 of 11 targets reached"), "{text}");
    assert!(text.contains("pod-to-world"), "{text}");

    // Masquerade off on n1: pods there lose the world, and the probe says why.
    lab.state.extra_agent_args = vec!["--masquerade=false".into()];
    lab.kill_agent(0).unwrap();
    lab.start_agent(0).unwrap();
    lab.wait_agent_ready(0).unwrap();
    lab.state.extra_agent_args.clear();
    let (ok, v) = lab.connectivity_test(0, &all).unwrap();
    assert!(!ok, "{v:#}");
    let r = rows(&v);
    let w = of_class(&r, "pod-to-world")[0];
    assert_eq!(w["ok"], false, "{w}");
    assert!(w["reason"].as_str().unwrap().contains("masquerade is off or not applied"), "{w}");
    assert!(r.iter().filter(|x| x["target"]["class"] != "pod-to-world").all(|x| x["ok"] == true), "{v:#}");
    lab.kill_agent(0).unwrap();
    lab.start_agent(0).unwrap();
    lab.wait_agent_ready(0).unwrap();

    // n2 drops what n1's health endpoint sends: an entry on n2 claims n1's
    // health address as one of n2's own pods, so n2's from_uplink takes
    // n1's probes for spoofing. n1 names the hop from n2's counters.
    let n1_health: std::net::Ipv4Addr = lab.status(0).unwrap()["agent"]["healthIp"].as_str().unwrap().parse().unwrap();
    let n2_pins = sluice_node::datapath::pins::PinDir::new(&lab.state.nodes[1].pin_dir);
    let mut n2_endpoints = sluice_node::datapath::pinned_maps::Endpoints::open(&n2_pins).unwrap();
    let lo = sluice_common::EndpointInfo { host_ifindex: 1, pod_mac: [0; 6], host_mac: [0; 6] };
    n2_endpoints.insert(n1_health, lo).unwrap();
    let (ok, v) = lab.connectivity_test(0, &[]).unwrap();
    n2_endpoints.remove(n1_health).unwrap();
    assert!(!ok, "{v:#}");
    let r = rows(&v);
    let n2 = of_class(&r, "pod-to-pod").into_iter().find(|x| x["target"]["node"] == "n2").unwrap();
    let reason = n2["reason"].as_str().unwrap();
    assert!(reason.starts_with("dropped at node n2 (172.30.0.2) by its datapath: uplink_source_spoofed x"), "{reason}");

    // The node network loses what n1 sends n2's health endpoint (a filter in
    // the switch), while n2 itself answers: n2's counters show
    // its datapath never saw the probes.
    let lan = lab.state.lan_netns.clone();
    for cmd in [
        &["add", "table", "bridge", "lossy"][..],
        &[
            "add", "chain", "bridge", "lossy", "forward", "{", "type", "filter", "hook", "forward", "priority", "0",
            ";", "}",
        ],
        &["add", "rule", "bridge", "lossy", "forward", "ip", "daddr", "10.244.2.1", "drop"],
    ] {
        let mut args = vec!["nft"];
        args.extend(cmd);
        ns_exec(&lan, &args).unwrap();
    }
    let (ok, v) = lab.connectivity_test(0, &[]).unwrap();
    ns_exec(&lan, &["nft", "delete", "table", "bridge", "lossy"]).unwrap();
    assert!(!ok, "{v:#}");
    let r = rows(&v);
    let n2 = of_class(&r, "pod-to-pod").into_iter().find(|x| x["target"]["node"] == "n2").unwrap();
    let reason = n2["reason"].as_str().unwrap();
    assert!(reason.starts_with("left this node's eth0, never seen by node n2's datapath"), "{reason}");

    // n1's kernel route to n2's pods removed (its agent, which would put it
    // back, down): host-to-pod names the missing route.
    lab.kill_agent(0).unwrap();
    let n2_cidr = lab.state.nodes[1].pod_cidr.clone();
    ns_exec(&lab.state.nodes[0].netns, &["ip", "route", "del", &n2_cidr, "proto", "83"]).unwrap();
    let (ok, v) = lab.connectivity_test(0, &[]).unwrap();
    assert!(!ok, "{v:#}");
    let r = rows(&v);
    let n2 = of_class(&r, "host-to-pod").into_iter().find(|x| x["target"]["node"] == "n2").unwrap();
    assert!(n2["reason"].as_str().unwrap().starts_with(&format!("no kernel route to {n2_cidr}")), "{n2}");
    lab.start_agent(0).unwrap();
    lab.wait_agent_ready(0).unwrap();

    // Node n2's uplink goes down.
    ns_exec(&lab.state.nodes[1].netns, &["ip", "link", "set", "eth0", "down"]).unwrap();
    let (ok, v) = lab.connectivity_test(0, &[]).unwrap();
    assert!(!ok, "a failure must make the exit code non-zero");
    let r = rows(&v);
    for class in ["pod-to-pod", "pod-to-host", "host-to-pod"] {
        let n2 = of_class(&r, class).into_iter().find(|x| x["target"]["node"] == "n2").unwrap();
        assert_eq!(n2["ok"], false, "{n2}");
        let reason = n2["reason"].as_str().unwrap();
        assert!(reason.contains("peer node n2 (172.30.0.2) unreachable"), "{class}: {reason}");
        let n3 = of_class(&r, class).into_iter().find(|x| x["target"]["node"] == "n3").unwrap();
        assert_eq!(n3["ok"], true, "other nodes unaffected: {n3}");
    }
    // Seen from n2 itself: its own uplink is the problem.
    let (ok, v) = lab.connectivity_test(1, &[]).unwrap();
    assert!(!ok);
    let remote: Vec<Value> = rows(&v).into_iter().filter(|x| x["target"]["local"] == false).collect();
    assert!(!remote.is_empty());
    for x in remote {
        assert!(x["reason"].as_str().unwrap().contains("local uplink eth0 is down"), "{x}");
    }
}

/// On a dual-stack node (issue 28) the Service, NodePort and world classes
/// are probed per family, as rows of their own: the demo Service's IPv4
/// and IPv6 ClusterIPs (kube-proxy's iptables and ip6tables DNAT), the
/// world's IPv4 and IPv6 addresses (masquerade, nft tables `ip sluice` and
/// `ip6 sluice`), the NodePort on the other node's IPv4 and IPv6 address
/// from the health endpoint and on every node's from the world. Every row
/// reached, with a TCP time.
#[test]
fn service_nodeport_and_world_are_reached_over_both_families_on_a_dual_stack_node() {
    require_root();
    let mut opts = LabOptions::new(2, 1, bin("sluice-agent").parent().unwrap().to_path_buf());
    opts.cluster_model = true;
    opts.dual_stack = true;
    let lab = Lab::up(&opts).unwrap();
    let (service, service6) = (format!("{DEMO_IP}:80"), format!("[{DEMO_IP6}]:80"));
    let (world, world6) = (format!("{WORLD_IP}:{WORLD_PORT}"), format!("[{WORLD_IP6}]:{WORLD_PORT}"));
    let outside = format!("/run/netns/{}", world_netns(&lab.state.id));
    let node_port = DEMO_NODE_PORT.to_string();
    #[rustfmt::skip]
    let args = [
        "--service", &service6, "--service", &service, "--world", &world, "--world", &world6,
        "--node-port", &node_port, "--world-netns", &outside,
    ];
    for i in 0..2 {
        let (ok, v) = lab.connectivity_test(i, &args).unwrap();
        let r = rows(&v);
        let failed: Vec<&Value> = r.iter().filter(|x| x["ok"] != true).collect();
        assert!(ok && failed.is_empty(), "node {i}: failed rows {failed:#?}");
        // Per class: (IPv4 rows, IPv6 rows), each with a TCP time.
        for (class, per_family) in
            [("pod-to-service", 1), ("pod-to-world", 1), ("pod-to-nodeport", 1), ("world-to-nodeport", 2)]
        {
            let of = of_class(&r, class);
            let v6 = of.iter().filter(|x| x["target"]["ip"].as_str().unwrap().contains(':')).count();
            assert_eq!((of.len() - v6, v6), (per_family, per_family), "node {i}, {class}: {of:#?}");
            assert!(of.iter().all(|x| x["tcpMs"].is_number()), "node {i}, {class}: {of:#?}");
        }
        let svc6 = of_class(&r, "pod-to-service")[1];
        assert_eq!(svc6["target"]["ip"], DEMO_IP6, "IPv4 first, then IPv6: {svc6}");
    }
}
