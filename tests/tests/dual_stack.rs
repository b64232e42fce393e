//! Dual-stack (issue 28): every pod gets an address of each family.
//! Cases are named after the upstream suite's (Kubernetes
//! `test/e2e/network/dual_stack.go`) where they check the same thing.
use std::path::PathBuf;

use serde_json::Value;
use sluice_tests::{
    bin,
    lab::{ns_exec, CniCall, Lab, LabOptions, Node},
    require_root, Netns,
};

fn dual_lab(nodes: usize, pods_per_node: usize) -> Lab {
    require_root();
    let mut opts = LabOptions::new(nodes, pods_per_node, bin("sluice-agent").parent().unwrap().to_path_buf());
    opts.dual_stack = true;
    Lab::up(&opts).expect("dual-stack lab up")
}

/// The node's plugin configuration, spoken as CNI 1.1.
fn conf(node: &Node) -> Value {
    let mut c = Lab::plugin_config(node).unwrap();
    c["cniVersion"] = "1.1.0".into();
    c
}

fn ipam_dir(node: &Node, cidr: &str) -> PathBuf {
    Lab::data_dir(node).join("ipam").join(cidr.replace('/', "_"))
}

/// Lease files (named by address) in one family's store.
fn leases(node: &Node, cidr: &str) -> usize {
    match std::fs::read_dir(ipam_dir(node, cidr)) {
        Ok(d) => d.flatten().filter(|e| e.file_name().to_string_lossy().parse::<std::net::IpAddr>().is_ok()).count(),
        Err(_) => 0,
    }
}

fn cni(lab: &Lab, node: &Node, verb: &str, pod: &Netns, conf: &Value) -> sluice_tests::lab::CniOutcome {
    lab.cni_call(node, &CniCall::new(verb, &pod.name, Some(&pod.name), conf.clone())).unwrap()
}

/// The agent takes `--ip-family dual` and writes the node's IPv6 pod CIDR
/// into the conflist; `status` shows it.
#[test]
fn should_have_ipv4_and_ipv6_pod_cidrs_on_a_dual_stack_node() {
    let lab = dual_lab(1, 0);
    let node = lab.state.nodes[0].clone();
    let c = conf(&node);
    assert_eq!(c["podCIDR"], node.pod_cidr.as_str());
    assert_eq!(c["podCIDR6"], node.pod_cidr6.as_deref().unwrap());
    let status = lab.status(0).unwrap();
    let shown = status.to_string();
    assert!(shown.contains(node.pod_cidr6.as_deref().unwrap()), "status lacks the IPv6 pod CIDR: {shown}");
    // Forwarding for IPv6 is on in the node's namespace.
    let fwd = ns_exec(&node.netns, &["sysctl", "-n", "net.ipv6.conf.all.forwarding"]).unwrap();
    assert_eq!(fwd.trim(), "1");
}

/// ADD returns an IPv4 and an IPv6 address (CNI 1.1 result), the pod has
/// both with a default route per family via the link-local gateways, CHECK
/// checks both, DEL releases both. The pod's namespace starts with IPv6
/// turned off, as some runtimes leave it: the plugin turns it on for the
/// pod's interface.
#[test]
fn should_create_pod_add_ipv6_and_ipv4_ip_to_pod_ips() {
    let lab = dual_lab(1, 0);
    let node = lab.state.nodes[0].clone();
    let cidr6 = node.pod_cidr6.clone().unwrap();
    let c = conf(&node);
    let pod = Netns::new("slpod").unwrap();
    let add = cni(&lab, &node, "ADD", &pod, &c);
    assert!(add.success, "ADD: {} {}", add.stdout, add.stderr);
    let result = add.json();
    assert_eq!(result["cniVersion"], "1.1.0");
    let ips = result["ips"].as_array().unwrap();
    assert_eq!(ips.len(), 2, "{result}");
    let ip4 = ips[0]["address"].as_str().unwrap();
    let ip6 = ips[1]["address"].as_str().unwrap();
    assert!(ip4.ends_with("/32") && ip4.starts_with("10.244.1."), "{ip4}");
    assert!(ip6.ends_with("/128"), "{ip6}");
    let ip6_addr: std::net::Ipv6Addr = ip6.trim_end_matches("/128").parse().unwrap();
    assert!(cidr6.parse::<ipnetwork::Ipv6Network>().unwrap().contains(ip6_addr), "{ip6} in {cidr6}");
    assert_eq!(ips[1]["gateway"], "fe80::1");
    assert_eq!(ips[0]["interface"], ips[1]["interface"]);
    let routes: Vec<String> =
        result["routes"].as_array().unwrap().iter().map(|r| format!("{} {}", r["dst"], r["gw"])).collect();
    assert_eq!(routes, ["\"0.0.0.0/0\" \"169.254.1.1\"", "\"::/0\" \"fe80::1\""]);
    // Inside the pod: the /128 usable at once (no DAD: not tentative), the
    // default route via fe80::1, the gateway's permanent neighbour.
    let addrs = ns_exec(&pod.name, &["ip", "-6", "-o", "addr", "show", "dev", "eth0"]).unwrap();
    let line = addrs.lines().find(|l| l.contains(ip6)).unwrap_or_else(|| panic!("{ip6} missing: {addrs}"));
    assert!(!line.contains("tentative"), "{line}");
    let default6 = ns_exec(&pod.name, &["ip", "-6", "route", "show", "default"]).unwrap();
    assert!(default6.contains("via fe80::1 dev eth0"), "{default6}");
    let neigh = ns_exec(&pod.name, &["ip", "-6", "neigh", "show", "fe80::1", "dev", "eth0"]).unwrap();
    assert!(neigh.contains("PERMANENT"), "{neigh}");
    assert_eq!((leases(&node, &node.pod_cidr), leases(&node, &cidr6)), (1, 1));

    // CHECK: both families as ADD left them; each broken is named.
    let mut check_conf = c.clone();
    check_conf["prevResult"] = result.clone();
    let check = cni(&lab, &node, "CHECK", &pod, &check_conf);
    assert!(check.success, "{}", check.stdout);
    ns_exec(&pod.name, &["ip", "-6", "route", "del", "default"]).unwrap();
    let broken = cni(&lab, &node, "CHECK", &pod, &check_conf);
    assert!(!broken.success && broken.stdout.contains("IPv6 default route"), "{}", broken.stdout);
    ns_exec(&pod.name, &["ip", "-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0"]).unwrap();
    assert!(cni(&lab, &node, "CHECK", &pod, &check_conf).success);
    ns_exec(&pod.name, &["ip", "-6", "addr", "del", ip6, "dev", "eth0"]).unwrap();
    let broken = cni(&lab, &node, "CHECK", &pod, &check_conf);
    assert!(!broken.success && broken.stdout.contains("IPv6 address"), "{}", broken.stdout);

    // DEL releases both.
    let del = cni(&lab, &node, "DEL", &pod, &c);
    assert!(del.success, "{}", del.stdout);
    assert_eq!((leases(&node, &node.pod_cidr), leases(&node, &cidr6)), (0, 0));
}

/// An IPv6 pool with no free address fails ADD with the spec's code for
/// it, and the IPv4 address allocated first is given back: nothing is left
/// of the failed pod.
#[test]
fn an_exhausted_ipv6_pool_gives_the_ipv4_address_back() {
    let lab = dual_lab(1, 0);
    let node = lab.state.nodes[0].clone();
    let mut c = conf(&node);
    // A /126 inside the node's /64: two addresses for pods (::2, ::3).
    let small = node.pod_cidr6.clone().unwrap().replace("::/64", "::/126");
    c["podCIDR6"] = small.clone().into();
    let pods: Vec<Netns> = (0..3).map(|_| Netns::new("slpod").unwrap()).collect();
    for p in &pods[..2] {
        let out = cni(&lab, &node, "ADD", p, &c);
        assert!(out.success, "{}", out.stdout);
    }
    let third = cni(&lab, &node, "ADD", &pods[2], &c);
    assert!(!third.success, "ADD from a full IPv6 pool succeeded: {}", third.stdout);
    assert_eq!(third.json()["code"], 100, "{}", third.stdout);
    assert!(third.stdout.contains(&small), "{}", third.stdout);
    assert_eq!(leases(&node, &node.pod_cidr), 2, "the failed pod's IPv4 address was given back");
    assert_eq!(leases(&node, &small), 2);
    let links = ns_exec(&pods[2].name, &["ip", "-o", "link", "show"]).unwrap();
    assert!(!links.contains("eth0"), "nothing plumbed into the failed pod: {links}");
}

/// Everything on a dual-stack node that ADD could touch, as text: links,
/// routes and permanent neighbours of both families, leases of both stores.
fn snapshot(node: &Node, pod: &Netns) -> String {
    let mut s = String::new();
    let links = ns_exec(&node.netns, &["ip", "-o", "link", "show"]).unwrap();
    let mut names: Vec<&str> = links.lines().filter_map(|l| l.split(": ").nth(1)).collect();
    names.sort();
    s += &format!("links: {names:?}\n");
    for family in ["-4", "-6"] {
        s += &ns_exec(&node.netns, &["ip", family, "route", "show"]).unwrap();
        s += &ns_exec(&node.netns, &["ip", family, "neigh", "show", "nud", "permanent"]).unwrap();
    }
    for cidr in [node.pod_cidr.as_str(), node.pod_cidr6.as_deref().unwrap()] {
        s += &format!("leases {cidr}: {}\n", leases(node, cidr));
    }
    s += &ns_exec(&pod.name, &["ip", "-o", "link", "show"]).unwrap();
    s
}

/// The same crash safety as IPv4: ADD failing after any step leaves the
/// node and the pod as they were, both families' leases included.
#[test]
fn a_failed_dual_stack_add_after_each_step_leaves_the_node_as_before() {
    let lab = dual_lab(1, 0);
    let node = lab.state.nodes[0].clone();
    for step in sluice_cni::fault::ADD_STEPS {
        let pod = Netns::new("slpod").unwrap();
        let before = snapshot(&node, &pod);
        let mut call = CniCall::new("ADD", &pod.name, Some(&pod.name), conf(&node));
        call.bin = Some(sluice_tests::faulty_cni_bin());
        call.env.push(("SLUICE_CNI_FAIL_AFTER".into(), step.into()));
        let out = lab.cni_call(&node, &call).unwrap();
        assert!(!out.success, "ADD with a failure after {step} succeeded");
        assert_eq!(before, snapshot(&node, &pod), "node changed by a failed ADD (failure after {step})");
    }
}
