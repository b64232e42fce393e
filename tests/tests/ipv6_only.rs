//! IPv6-only nodes (issue 28, `--ip-family ipv6`): what `cargo xtask lab up
//! --ip-family ipv6` prints and must see all reached. Agents run without
//! an IPv4 pod CIDR; every pod gets one IPv6 address and nothing IPv4; the
//! cluster matrix over IPv6 (pod ↔ pod on the same node and across nodes,
//! node ↔ pod, pod → another node's host server seeing the pod's own
//! address, the demo Service's IPv6 ClusterIP through kube-proxy's
//! ip6tables rules, the world masqueraded to the node's IPv6) is all
//! reached. The nodes have no IPv4 address either: the agents run on an
//! uplink with IPv6 alone, without --cluster-cidr.
use std::{thread::sleep, time::Duration};

use sluice_cni::fault::ADD_STEPS;
use sluice_node::datapath::pins::PinDir;
use sluice_tests::{
    bin,
    cluster::{ClusterMatrix, IpFamily},
    faulty_cni_bin,
    lab::{ns_exec, CniCall, Lab, LabOptions},
    node_state::snapshot,
    require_root, Netns,
};

#[test]
fn ipv6_only_pods_have_no_ipv4_and_reach_every_path_over_ipv6() {
    require_root();
    let mut opts = LabOptions::new(2, 2, bin("sluice-agent").parent().unwrap().to_path_buf());
    opts.ipv6_only = true;
    opts.cluster_model = true;
    let lab = Lab::up(&opts).expect("IPv6-only lab with the cluster model");

    // Every pod: its one address is IPv6 from its node's IPv6 pod CIDR,
    // and its namespace holds no IPv4 address but loopback's and no IPv4
    // route at all.
    for (node, pod) in lab.pods() {
        assert!(pod.ip.is_empty(), "{} has an IPv4 address in the lab state: {}", pod.name, pod.ip);
        let ip6 = pod.ip6.as_deref().unwrap_or_else(|| panic!("{} has no IPv6 address", pod.name));
        let cidr6: ipnetwork::Ipv6Network = node.pod_cidr6.as_deref().unwrap().parse().unwrap();
        assert!(cidr6.contains(ip6.parse().unwrap()), "{} {ip6} outside {cidr6}", pod.name);
        let v4 = ns_exec(&pod.netns, &["ip", "-4", "-o", "addr", "show"]).unwrap();
        let not_loopback: Vec<&str> = v4.lines().filter(|l| !l.contains(" lo ")).collect();
        assert!(not_loopback.is_empty(), "{} has IPv4 addresses: {not_loopback:?}", pod.name);
        let routes4 = ns_exec(&pod.netns, &["ip", "-4", "route", "show"]).unwrap();
        assert!(routes4.trim().is_empty(), "{} has IPv4 routes: {routes4}", pod.name);
    }
    // The conflist is an IPv6-only one: podCIDR6, no podCIDR; the node
    // has no IPv4 address on its uplink.
    for node in &lab.state.nodes {
        let v4 = ns_exec(&node.netns, &["ip", "-4", "-o", "addr", "show", "dev", "eth0"]).unwrap();
        assert!(v4.trim().is_empty(), "{} has IPv4 on its uplink: {v4}", node.name);
        let conf = Lab::plugin_config(node).unwrap();
        assert!(conf.get("podCIDR").is_none(), "{}'s conflist has a podCIDR: {conf}", node.name);
        assert_eq!(conf["podCIDR6"].as_str(), node.pod_cidr6.as_deref(), "{}'s conflist", node.name);
    }

    // `status` calls the node healthy and names its IPv6 pod CIDR and
    // health endpoint; no IPv4 one.
    for (i, node) in lab.state.nodes.iter().enumerate() {
        let s = lab.status(i).unwrap();
        assert_eq!(s["healthy"], true, "{}'s status: {s:#}", node.name);
        assert_eq!(s["agent"]["podCidr6"].as_str(), node.pod_cidr6.as_deref(), "{}'s status", node.name);
        assert_eq!(s["agent"]["podCidr"], "", "{}'s status", node.name);
        assert!(s["agent"]["healthIp6"].as_str().is_some_and(|h| h.ends_with("::1")), "{}'s status", node.name);
    }

    // connectivity-test from n1: every node's IPv6 health endpoint (from
    // the local one and from the node) and every node's IPv6, nothing IPv4.
    let (ok, v) = lab.connectivity_test(0, &[]).unwrap();
    let rows: Vec<(String, String, bool)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (r["target"]["class"].as_str().unwrap().into(), r["target"]["ip"].as_str().unwrap().into(), r["ok"] == true)
        })
        .collect();
    let health6 = |n: &sluice_tests::lab::Node| n.pod_cidr6.as_deref().unwrap().replace("::/64", "::1");
    let (n1, n2) = (&lab.state.nodes[0], &lab.state.nodes[1]);
    let row = |c: &str, ip: String| (c.to_string(), ip, true);
    let want = vec![
        row("pod-to-pod", health6(n1)),
        row("pod-to-pod", health6(n2)),
        row("pod-to-host", n1.ip6.clone().unwrap()),
        row("pod-to-host", n2.ip6.clone().unwrap()),
        row("host-to-pod", health6(n1)),
        row("host-to-pod", health6(n2)),
    ];
    assert_eq!(rows, want, "{v:#}");
    assert!(ok, "{v:#}");

    let m = ClusterMatrix::probe_family(&lab, IpFamily::V6);
    eprint!("{}", m.render());
    let sources = lab.state.nodes.len() * (1 + 2);
    assert_eq!(m.rows.len(), sources, "every pod and node is a source");
    // Every source to every other pod and node, the Service and the world.
    assert_eq!(m.cells.len(), sources * (sources - 1 + 2), "every path probed");
    assert!(m.all_ok(), "IPv6-only matrix: failed {:?}\n{}", m.failures, m.render());
}

/// Crash safety on an IPv6-only node, as on the others: an ADD failing
/// after each step leaves the node exactly as before (rollback of the IPv6
/// lease, `ENDPOINTS6`, routes, link pins); an ADD killed after each step
/// is cleaned up by DEL; the agent's sweep releases a pod whose namespace
/// went without a DEL (`sweep::sweep_ipv6_only`).
#[test]
fn ipv6_only_add_rolls_back_del_cleans_up_and_the_sweep_releases_dead_pods() {
    require_root();
    let mut opts = LabOptions::new(1, 0, bin("sluice-agent").parent().unwrap().to_path_buf());
    opts.ipv6_only = true;
    let lab = Lab::up(&opts).expect("IPv6-only lab");
    let node = lab.state.nodes[0].clone();
    let conf = Lab::plugin_config(&node).unwrap();
    for step in ADD_STEPS {
        let pod = Netns::new("slpod").unwrap();
        let before = snapshot(&lab, &node, Some(&pod));
        let mut call = CniCall::new("ADD", &pod.name, Some(&pod.name), conf.clone());
        call.bin = Some(faulty_cni_bin());
        call.env.push(("SLUICE_CNI_FAIL_AFTER".into(), step.into()));
        let out = lab.cni_call(&node, &call).unwrap();
        assert!(!out.success, "ADD with a failure after {step} succeeded");
        assert_eq!(before, snapshot(&lab, &node, Some(&pod)), "node changed by a failed ADD (failure after {step})");

        let before = snapshot(&lab, &node, None);
        let mut call = CniCall::new("ADD", &pod.name, Some(&pod.name), conf.clone());
        call.bin = Some(faulty_cni_bin());
        call.env.push(("SLUICE_CNI_CRASH_AFTER".into(), step.into()));
        assert_eq!(lab.cni_call(&node, &call).unwrap().exit_code, None, "plugin should have died after {step}");
        let del = lab.cni_call(&node, &CniCall::new("DEL", &pod.name, Some(&pod.name), conf.clone())).unwrap();
        assert!(del.success, "DEL after a crash at {step}: {}", del.stdout);
        assert_eq!(before, snapshot(&lab, &node, None), "DEL left something after a crash at {step}");
    }
    // A whole ADD, then the namespace deleted without DEL: the sweep
    // (every 0.5 s, grace 4 s in the lab) releases it all.
    let before = snapshot(&lab, &node, None);
    let gone = Netns::new("slpod").unwrap();
    let out = lab.cni_call(&node, &CniCall::new("ADD", &gone.name, Some(&gone.name), conf.clone())).unwrap();
    assert!(out.success, "ADD: {} {}", out.stdout, out.stderr);
    assert_ne!(before, snapshot(&lab, &node, None), "ADD changed nothing?");
    drop(gone);
    let mut after = String::new();
    for _ in 0..60 {
        sleep(Duration::from_millis(250));
        after = snapshot(&lab, &node, None);
        if after == before {
            break;
        }
    }
    assert_eq!(before, after, "the sweep did not release a pod whose namespace is gone");
}

/// A live pod's `ENDPOINTS6` entry lost behind the agent's back (a
/// recreated pin, an ADD that raced a migration) on an IPv6-only node: the
/// sweep re-derives it from the pod's host side (the `/128` route and the
/// pod's permanent neighbour on its host veth) and the pod keeps its
/// address and its traffic; nothing is torn down for it.
#[test]
fn a_lost_ipv6_endpoint_entry_of_a_live_pod_is_re_derived_and_the_pod_kept() {
    require_root();
    let mut opts = LabOptions::new(1, 2, bin("sluice-agent").parent().unwrap().to_path_buf());
    opts.ipv6_only = true;
    let lab = Lab::up(&opts).expect("IPv6-only lab");
    let node = lab.state.nodes[0].clone();
    let (a, b) = (node.pods[0].clone(), node.pods[1].clone());
    let (a6, b6) = (a.ip6.clone().unwrap(), b.ip6.clone().unwrap());
    let a_ip6: std::net::Ipv6Addr = a6.parse().unwrap();
    let endpoints6 = || sluice_node::datapath::pinned_maps::Endpoints6::open(&PinDir::new(&node.pin_dir)).unwrap();
    let ping = |from: &str, to: &str| ns_exec(from, &["ping", "-6", "-c", "1", "-W", "2", to]).is_ok();
    let entry = endpoints6().get(a_ip6).expect("ADD wrote the pod's entry");
    assert!(ping(&a.netns, &b6), "a reaches b before");
    endpoints6().remove(a_ip6).unwrap();
    let start = std::time::Instant::now();
    while endpoints6().get(a_ip6) != Some(entry) {
        assert!(start.elapsed() < Duration::from_secs(20), "the sweep did not re-derive a's entry");
        sleep(Duration::from_millis(100));
    }
    assert!(ping(&a.netns, &b6) && ping(&b.netns, &a6), "a's IPv6 works again, both ways");
    let addrs = ns_exec(&a.netns, &["ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "global"]).unwrap();
    assert!(addrs.contains(&a6), "a kept its address (not torn down): {addrs}");
    assert_eq!(endpoints6().get(a_ip6), Some(entry), "and its entry");
}
