//! IPv6-only nodes (issue 28, `--ip-family ipv6`): what `cargo xtask lab up
//! --ip-family ipv6` prints and must see all reached. Agents run without
//! an IPv4 pod CIDR; every pod gets one IPv6 address and nothing IPv4; the
//! cluster matrix over IPv6 (pod ↔ pod on the same node and across nodes,
//! node ↔ pod, pod → another node's host server seeing the pod's own
//! address, the demo Service's IPv6 ClusterIP through kube-proxy's
//! ip6tables rules, the world masqueraded to the node's IPv6) is all
//! reached. The nodes have no IPv4 address either: the agents run on an
//! uplink with IPv6 alone, without --cluster-cidr.
use sluice_tests::{
    bin,
    cluster::{ClusterMatrix, IpFamily},
    lab::{ns_exec, Lab, LabOptions},
    require_root,
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

    let m = ClusterMatrix::probe_family(&lab, IpFamily::V6);
    eprint!("{}", m.render());
    let sources = lab.state.nodes.len() * (1 + 2);
    assert_eq!(m.rows.len(), sources, "every pod and node is a source");
    // Every source to every other pod and node, the Service and the world.
    assert_eq!(m.cells.len(), sources * (sources - 1 + 2), "every path probed");
    assert!(m.all_ok(), "IPv6-only matrix: failed {:?}\n{}", m.failures, m.render());
}
