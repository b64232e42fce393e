//! Dual-stack (issue 28): every pod gets an address of each family.
//! Cases are named after the upstream suite's (Kubernetes
//! `test/e2e/network/dual_stack.go`) where they check the same thing.
use std::path::PathBuf;

use serde_json::Value;
use sluice_tests::{
    bin,
    capture::Capture,
    cluster::{add_world, tcp_text, WORLD_IP6},
    lab::{counter, ns_cmd, ns_exec, ping, tcp_probe, CniCall, Lab, LabOptions, Node, Pod, CLUSTER_CIDR6, ECHO_PORT},
    patience, require_root, try_run, Netns,
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

fn pod(lab: &Lab, node: usize, i: usize) -> Pod {
    lab.state.nodes[node].pods[i].clone()
}

fn ip6(p: &Pod) -> &str {
    p.ip6.as_deref().expect("a dual-stack lab's pod has an IPv6 address")
}

/// Every pod reaches every other on both families, ICMP and TCP, on its
/// node and across nodes (native routing: the kernel's IPv6 route to the
/// other node's pod CIDR via its IPv6 address).
#[test]
fn should_be_able_to_reach_pod_on_ipv4_and_ipv6_ip() {
    let lab = dual_lab(2, 2);
    let matrix4 = lab.matrix();
    assert!(matrix4.all_ok(), "IPv4:\n{}", matrix4.render());
    let matrix6 = lab.matrix6();
    assert_eq!(matrix6.cells.len(), 12, "{}", matrix6.render());
    assert!(matrix6.all_ok(), "IPv6:\n{}", matrix6.render());
    // Each node routes the other's IPv6 pod CIDR, marked as sluice's.
    let n1 = &lab.state.nodes[0];
    let routes = ns_exec(&n1.netns, &["ip", "-6", "route", "show", "proto", "83"]).unwrap();
    let want = format!("{} via fd00:30::2 dev eth0", lab.state.nodes[1].pod_cidr6.as_deref().unwrap());
    assert!(routes.contains(&want), "{routes}");
    // Taken by the IPv6 fast path, on the node and across (from node 1's
    // pods into node 0's as well).
    for (node, path) in [(0, "pod_to_local_pod6"), (0, "pod_to_node6"), (0, "uplink_to_pod6")] {
        assert!(counter(&lab, node, "forwards", path) > 0, "node {node}: {path}");
    }
}

/// A pod reaches its node and the other node on their IPv6 addresses, and
/// the nodes reach the pods; the node's own IPv6 keeps working.
#[test]
fn pods_and_nodes_reach_each_other_over_ipv6() {
    let lab = dual_lab(2, 1);
    let (a, b) = (pod(&lab, 0, 0), pod(&lab, 1, 0));
    let (n1, n2) = (&lab.state.nodes[0], &lab.state.nodes[1]);
    let (n1_ip6, n2_ip6) = (n1.ip6.as_deref().unwrap(), n2.ip6.as_deref().unwrap());
    for (from, to) in [(&a.netns, n1_ip6), (&a.netns, n2_ip6), (&n1.netns, ip6(&a)), (&n1.netns, ip6(&b))] {
        assert!(ping(from, to), "{from} -> {to}");
    }
    assert!(tcp_probe(&n2.netns, ip6(&a), &a.name), "node n2 -> pod a over TCP");
    // Node to node, as before sluice.
    assert!(ping(&n1.netns, n2_ip6));
}

/// The pod's gateway fe80::1 answers neighbour solicitations on the pod's
/// link (a pod whose permanent entry is gone still reaches it), and the
/// node answers for it only on pods' links: its uplink does not claim it.
#[test]
fn neighbour_discovery_for_the_ipv6_gateway_is_answered_on_the_pods_link() {
    let lab = dual_lab(1, 1);
    let a = pod(&lab, 0, 0);
    let n1 = &lab.state.nodes[0];
    ns_exec(&a.netns, &["ip", "-6", "neigh", "del", "fe80::1", "dev", "eth0"]).unwrap();
    assert!(ping(&a.netns, n1.ip6.as_deref().unwrap()), "pod -> node after its neighbour entry went");
    let neigh = ns_exec(&a.netns, &["ip", "-6", "neigh", "show", "fe80::1", "dev", "eth0"]).unwrap();
    assert!(
        neigh.contains("lladdr") && !neigh.contains("FAILED") && !neigh.contains("INCOMPLETE"),
        "resolved by neighbour discovery: {neigh}"
    );
    let uplink = ns_exec(&n1.netns, &["ip", "-6", "addr", "show", "dev", "eth0"]).unwrap();
    assert!(!uplink.contains("fe80::1/"), "the uplink claims the pods' gateway: {uplink}");
}

/// A pod sending from an IPv6 address that is not its own: nothing
/// arrives, every packet is counted as `source_spoofed`, and its own
/// address still works.
#[test]
fn a_pod_forging_an_ipv6_source_is_dropped_and_counted() {
    let lab = dual_lab(2, 2);
    let (a1, a2, b1) = (pod(&lab, 0, 0), pod(&lab, 0, 1), pod(&lab, 1, 0));
    let forged = "fd00:244:0:1::c8";
    ns_exec(&a1.netns, &["ip", "-6", "addr", "add", &format!("{forged}/128"), "dev", "eth0", "nodad"]).unwrap();
    let before = counter(&lab, 0, "drops", "source_spoofed");
    let caps = [
        Capture::start(&a2.netns, "eth0", &["src", "host", forged]).unwrap(),
        Capture::start(&b1.netns, "eth0", &["src", "host", forged]).unwrap(),
    ];
    for dst in [ip6(&a2), ip6(&b1)] {
        let out = try_run(&mut sluice_tests::lab::ns_cmd(
            &a1.netns,
            &["ping", "-c", "3", "-i", "0.2", "-W", "1", "-I", forged, dst],
        ))
        .unwrap();
        assert!(!out.status.success(), "forged ping to {dst} got through");
    }
    for cap in caps {
        let text = cap.stop();
        let seen: Vec<&str> = text.lines().filter(|l| l.contains(&format!("{forged} >"))).collect();
        assert!(seen.is_empty(), "a forged packet reached its destination: {seen:?}");
    }
    let dropped = counter(&lab, 0, "drops", "source_spoofed") - before;
    assert!(dropped >= 6, "every forged packet counted under source_spoofed: {dropped}");
    // Its own address still works (named: with two global addresses the
    // kernel may pick either as the source).
    let own =
        try_run(&mut sluice_tests::lab::ns_cmd(&a1.netns, &["ping", "-c", "1", "-W", "2", "-I", ip6(&a1), ip6(&b1)]))
            .unwrap();
    assert!(own.status.success(), "its own address still works");
}

fn endpoints6(node: &Node) -> sluice_node::datapath::pinned_maps::Endpoints6 {
    let pins = sluice_node::datapath::pins::PinDir::new(&node.pin_dir);
    sluice_node::datapath::pinned_maps::Endpoints6::open(&pins).unwrap()
}

/// A pod's `ENDPOINTS6` entry is what lets its IPv6 out: written by ADD
/// (CHECK misses it when gone), removed by DEL, and re-derived by the
/// agent's sweep from the pod's IPv4 entry when lost behind its back;
/// entries no pod stands behind are swept away.
#[test]
fn the_ipv6_endpoint_entry_is_written_checked_repaired_and_removed() {
    let mut lab = dual_lab(2, 1);
    let (n1, b) = (lab.state.nodes[0].clone(), pod(&lab, 1, 0));
    let a = pod(&lab, 0, 0);
    let a_ip6: std::net::Ipv6Addr = ip6(&a).parse().unwrap();
    let entry = endpoints6(&n1).get(a_ip6).expect("ADD wrote the pod's ENDPOINTS6 entry");
    // `status` lists it beside the IPv4 ones.
    let status = lab.status(0).unwrap();
    let listed6: Vec<&str> = status["endpoints6"].as_array().unwrap().iter().filter_map(|e| e["ip"].as_str()).collect();
    // The health endpoint's IPv6 (the pod CIDR's ::1) and the pod's.
    let health6 = status["agent"]["healthIp6"].as_str().expect("the health endpoint's IPv6");
    assert_eq!(listed6, [health6, ip6(&a)], "{status}");
    let a_ip4: std::net::Ipv4Addr = a.ip.parse().unwrap();
    let pins = sluice_node::datapath::pins::PinDir::new(&n1.pin_dir);
    let entry4 = sluice_node::datapath::pinned_maps::Endpoints::open(&pins).unwrap().get(a_ip4).unwrap();
    assert_eq!(entry, entry4, "the same interface as the IPv4 entry");

    // Lost behind the agent's back: CHECK names it, the sweep puts it back.
    endpoints6(&n1).remove(a_ip6).unwrap();
    let mut check_conf = conf(&n1);
    check_conf["prevResult"] = serde_json::json!({"ips": [
        {"address": format!("{}/32", a.ip)}, {"address": format!("{a_ip6}/128")}
    ]});
    // The lab's pods are added with their namespace's name as container id.
    let check = lab.cni_call(&n1, &CniCall::new("CHECK", &a.netns, Some(&a.netns), check_conf)).unwrap();
    assert!(!check.success && check.stdout.contains("ENDPOINTS6"), "{}", check.stdout);
    let start = std::time::Instant::now();
    while endpoints6(&n1).get(a_ip6) != Some(entry) {
        assert!(start.elapsed() < std::time::Duration::from_secs(20), "the sweep did not re-derive the entry");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(ping(&a.netns, ip6(&b)), "the pod's IPv6 works again");

    // Entries no pod stands behind, as a DEL that died half-way leaves
    // them: an unleased address on a live pod's interface (which would let
    // that pod send from it) and one on an interface that is gone. The
    // sweep removes both and leaves the pod's own.
    let cidr6: ipnetwork::Ipv6Network = n1.pod_cidr6.as_deref().unwrap().parse().unwrap();
    let ghost = |k: u128| std::net::Ipv6Addr::from(u128::from(cidr6.network()) + k);
    endpoints6(&n1).insert(ghost(0x99), entry).unwrap();
    let gone = sluice_common::EndpointInfo { host_ifindex: 0x7fff_fff0, ..entry };
    endpoints6(&n1).insert(ghost(0x9a), gone).unwrap();
    let start = std::time::Instant::now();
    while endpoints6(&n1).get(ghost(0x99)).is_some() || endpoints6(&n1).get(ghost(0x9a)).is_some() {
        assert!(start.elapsed() < std::time::Duration::from_secs(20), "the sweep left the stale entries");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(endpoints6(&n1).get(a_ip6), Some(entry), "the pod's own entry stays");
    let health_ip6: std::net::Ipv6Addr = health6.parse().unwrap();
    assert!(endpoints6(&n1).get(health_ip6).is_some(), "the health endpoint's entry (it has no lease) stays");

    // DEL takes it away with the rest.
    lab.remove_pod(0, &a.name).unwrap();
    assert_eq!(endpoints6(&n1).get(a_ip6), None);
}

const WHOAMI6_PORT: u16 = 8086;

/// A server in `netns` answering each IPv6 connection with the client's
/// address as it arrived.
fn whoami6(lab: &mut Lab, netns: &str, who: &str) {
    let listen = format!("TCP6-LISTEN:{WHOAMI6_PORT},reuseaddr,fork");
    lab.spawn_helper(ns_cmd(netns, &["socat", &listen, "SYSTEM:echo $SOCAT_PEERADDR"]), &format!("{who}-whoami6"))
        .unwrap();
    let start = std::time::Instant::now();
    while tcp_text(netns, "[::1]", WHOAMI6_PORT).is_none() {
        assert!(start.elapsed() < patience(std::time::Duration::from_secs(5)), "whoami6 in {netns} did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The client address `netns`'s connection to `[ip]` arrived from. Up to
/// three connections: on a loaded machine (CI) the server's fork and shell
/// can outlast the client's 1 s inactivity timeout once; a path that is
/// really closed fails all three.
fn seen_from(netns: &str, ip: &str) -> Option<std::net::Ipv6Addr> {
    let text = (0..3).find_map(|_| tcp_text(netns, &format!("[{ip}]"), WHOAMI6_PORT))?;
    Some(text.trim_matches(['[', ']']).parse().unwrap_or_else(|e| panic!("{text:?}: {e}")))
}

fn addr6(s: &str) -> Option<std::net::Ipv6Addr> {
    Some(s.parse().unwrap())
}

/// A pod reaches the world over IPv6 with its node's IPv6 address (the
/// `ip6 sluice` table, the twin of the IPv4 masquerade), also with
/// ip6tables' FORWARD policy DROP (sluice's ip6tables chain accepts pods'
/// traffic); pod to pod over IPv6 keeps the pods' own addresses; with
/// `--masquerade=false` the world, which routes nothing to pod CIDRs,
/// cannot answer.
#[test]
fn pods_reach_the_world_over_ipv6_masqueraded_and_pod_to_pod_stays_unnated() {
    let mut lab = dual_lab(2, 1);
    let world = add_world(&mut lab).unwrap();
    for n in &lab.state.nodes {
        ns_exec(&n.netns, &["ip", "-6", "route", "replace", "default", "via", WORLD_IP6, "dev", "eth0"]).unwrap();
        ns_exec(&n.netns, &["ip6tables", "-P", "FORWARD", "DROP"]).unwrap();
    }
    whoami6(&mut lab, &world, "world");
    let (a, b) = (pod(&lab, 0, 0), pod(&lab, 1, 0));
    whoami6(&mut lab, &b.netns, "b");
    let n1 = lab.state.nodes[0].clone();
    let n1_ip6 = n1.ip6.clone().unwrap();

    assert_eq!(seen_from(&a.netns, WORLD_IP6), addr6(&n1_ip6), "the world sees the node's IPv6");
    assert_eq!(seen_from(&a.netns, ip6(&b)), addr6(ip6(&a)), "pod to pod keeps the pod's IPv6");
    let tables = ns_exec(&n1.netns, &["nft", "list", "tables"]).unwrap();
    assert!(tables.contains("table ip6 sluice") && tables.contains("table ip sluice"), "{tables}");

    lab.state.extra_agent_args = vec!["--masquerade=false".into()];
    lab.kill_agent(0).unwrap();
    lab.start_agent(0).unwrap();
    lab.wait_agent_ready(0).unwrap();
    let tables = ns_exec(&n1.netns, &["nft", "list", "tables"]).unwrap();
    assert!(!tables.contains("ip6 sluice"), "{tables}");
    assert_eq!(seen_from(&a.netns, WORLD_IP6), None, "unmasqueraded, the world cannot answer");
    assert_eq!(seen_from(&a.netns, ip6(&b)), addr6(ip6(&a)), "pods still reach pods");
}

/// The sum of node `node`'s forward counters `names`.
fn forwards(lab: &Lab, node: usize, names: &[&str]) -> u64 {
    let status = lab.status(node).unwrap();
    names.iter().map(|n| status["forwards"][*n].as_u64().unwrap_or_else(|| panic!("no counter {n}"))).sum()
}

/// The sum of node `node`'s NetworkPolicy drop counters.
fn policy_drops(lab: &Lab, node: usize) -> u64 {
    let status = lab.status(node).unwrap();
    ["policy_denied_ingress", "policy_denied_egress", "policy_peer_unknown", "policy_pending"]
        .iter()
        .map(|n| status["drops"][*n].as_u64().unwrap_or(0))
        .sum()
}

/// Pods' IPv6 takes the eBPF fast path like their IPv4 (issue 28): into a
/// pod of the same node by `bpf_redirect_peer`, to another node's pod by
/// `bpf_redirect_neigh` to that node's IPv6 address (`NODE_ROUTES6`, which
/// the agent fills from membership), and from the uplink into the pod;
/// the counters say which path each took, and NetworkPolicy still holds
/// on it.
#[test]
fn ipv6_between_pods_takes_the_fast_path_on_the_node_and_across_nodes_and_policy_holds() {
    let lab = dual_lab(2, 2);
    let (a1, a2, b1) = (pod(&lab, 0, 0), pod(&lab, 0, 1), pod(&lab, 1, 0));
    let (n1, n2) = (&lab.state.nodes[0], &lab.state.nodes[1]);
    // The agent routes the other node's IPv6 pod CIDR in the map, as in
    // the kernel.
    let pins = sluice_node::datapath::pins::PinDir::new(&n1.pin_dir);
    let routes6 = sluice_node::datapath::pinned_maps::NodeRoutes6::open(&pins).unwrap().all().unwrap();
    let cidr6: ipnetwork::Ipv6Network = n2.pod_cidr6.as_deref().unwrap().parse().unwrap();
    let n2_ip6: std::net::Ipv6Addr = n2.ip6.as_deref().unwrap().parse().unwrap();
    assert_eq!(routes6.get(&cidr6), Some(&n2_ip6), "NODE_ROUTES6 on {}: {routes6:?}", n1.name);

    let local = forwards(&lab, 0, &["pod_to_local_pod6"]);
    let out = forwards(&lab, 0, &["pod_to_node6"]);
    let into = forwards(&lab, 1, &["uplink_to_pod6"]);
    assert!(tcp_probe(&a1.netns, ip6(&a2), &a2.name), "a1 -> a2 over IPv6 on the node");
    assert!(tcp_probe(&a1.netns, ip6(&b1), &b1.name), "a1 -> b1 over IPv6 across nodes");
    // A TCP exchange is several packets each way: each counted on its path.
    let grew = |now: u64, before: u64, what: &str| assert!(now >= before + 3, "{what}: {before} -> {now}");
    grew(forwards(&lab, 0, &["pod_to_local_pod6"]), local, "node 0 pod_to_local_pod6");
    grew(forwards(&lab, 0, &["pod_to_node6"]), out, "node 0 pod_to_node6");
    grew(forwards(&lab, 1, &["uplink_to_pod6"]), into, "node 1 uplink_to_pod6");

    // NetworkPolicy on the fast path: a2 isolated for ingress with no rule
    // allowing anything (what the agent writes for a pod a policy selects).
    let a2_ip6: std::net::Ipv6Addr = ip6(&a2).parse().unwrap();
    let mut endpoints = sluice_node::datapath::policy_maps::PolicyEndpoints6::open(&pins).unwrap();
    let isolated = sluice_common::policy::EndpointPolicy {
        rules_id: 0x5eed,
        flags: sluice_common::policy::ENDPOINT_INGRESS_ISOLATED,
    };
    endpoints.insert(a2_ip6, isolated).unwrap();
    let denied = policy_drops(&lab, 0);
    let reached = tcp_probe(&a1.netns, ip6(&a2), &a2.name);
    endpoints.remove(a2_ip6).unwrap();
    assert!(!reached, "a1 reached a2 over IPv6 although a2 is isolated with no rule");
    assert!(policy_drops(&lab, 0) > denied, "the refusal counted under a policy drop reason");
    assert!(tcp_probe(&a1.netns, ip6(&a2), &a2.name), "a1 -> a2 again once a2 is no longer isolated");
}

/// A fresh lab's first cross-node IPv6 exchanges are answered at once, one
/// try each, in both directions. Linux sends no neighbour solicitation for
/// a forwarded packet (the stack's or `bpf_redirect_neigh`'s) while the
/// uplink's link-local address is still tentative, so a first packet sent
/// within a second or two of the node's link coming up waited in the
/// neighbour's queue past the probe's timeout (seen in 8 of 40 fresh labs
/// on the fast path, 10 of 40 on the stack path). The lab now returns
/// once duplicate address detection is over on every node's uplink, as a
/// real node's uplink is long up before its first pod.
#[test]
fn a_fresh_labs_first_cross_node_ipv6_exchanges_are_answered_at_once() {
    let lab = dual_lab(2, 1);
    for node in &lab.state.nodes {
        let addrs = ns_exec(&node.netns, &["ip", "-6", "-o", "addr", "show", "dev", "eth0"]).unwrap();
        assert!(!addrs.contains("tentative"), "{}'s uplink: {addrs}", node.name);
    }
    let (a, b) = (pod(&lab, 0, 0), pod(&lab, 1, 0));
    assert!(tcp_probe(&a.netns, ip6(&b), &b.name), "the first TCP connection {} -> {}", a.name, b.name);
    let echo = try_run(&mut ns_cmd(&b.netns, &["ping", "-c", "1", "-W", "1", ip6(&a)])).unwrap();
    let text = String::from_utf8_lossy(&echo.stdout).to_string();
    assert!(text.contains("1 received"), "the first echo {} -> {}: {text}", b.name, a.name);
}

/// `STACK_FLOWS6`, the IPv6 twin of `STACK_FLOWS`: with Services left to
/// kube-proxy (no `--kube-proxy-replacement`), a pod reaching an IPv6
/// ClusterIP whose one backend is a pod on the other node gets its answers
/// from the ClusterIP. kube-proxy's ip6tables DNAT the connection on the
/// client's node, which remembers the flow at `to_uplink`; the backend's
/// replies arrive pod-to-pod by the fast path and must go to the stack
/// there (`stack_flow_reply`), where conntrack puts the ClusterIP back as
/// their source. Taken on the fast path, they reach the client from the
/// backend's own address and its kernel resets the connection.
#[test]
fn ipv6_cluster_ip_through_kube_proxy_answers_from_the_cluster_ip_with_the_backend_on_another_node() {
    use sluice_tests::kube_proxy::{self, Endpoint, Protocol, Service, ServicePort};
    use std::net::Ipv6Addr;
    const VIP6: &str = "fd00:96::28";
    let lab = dual_lab(2, 1);
    let (a, b) = (pod(&lab, 0, 0), pod(&lab, 1, 0));
    let service = Service::<Ipv6Addr> {
        namespace: "default".into(),
        name: "echo6".into(),
        cluster_ip: VIP6.parse().unwrap(),
        ports: vec![ServicePort {
            name: String::new(),
            protocol: Protocol::Tcp,
            port: ECHO_PORT,
            target_port: ECHO_PORT,
            node_port: None,
        }],
        external_traffic_policy_local: false,
        endpoints: vec![Endpoint { ip: ip6(&b).parse().unwrap(), node: lab.state.nodes[1].name.clone() }],
    };
    let cidr6: ipnetwork::Ipv6Network = CLUSTER_CIDR6.parse().unwrap();
    for node in &lab.state.nodes {
        kube_proxy::apply(&node.netns, std::slice::from_ref(&service), &node.name, cidr6).unwrap();
    }
    let replies = forwards(&lab, 0, &["stack_flow_reply"]);
    let into_b = forwards(&lab, 1, &["uplink_to_pod6"]);
    assert!(
        tcp_probe(&a.netns, VIP6, &b.name),
        "{} -> [{VIP6}]:{ECHO_PORT} (backend {} on the other node) through kube-proxy's DNAT: no answer from the ClusterIP",
        a.name,
        b.name
    );
    let (replies_now, into_b_now) = (forwards(&lab, 0, &["stack_flow_reply"]), forwards(&lab, 1, &["uplink_to_pod6"]));
    assert!(replies_now >= replies + 2, "the backend's replies went to node 0's stack: {replies} -> {replies_now}");
    assert!(
        into_b_now >= into_b + 2,
        "the DNATed packets entered the backend by the fast path: {into_b} -> {into_b_now}"
    );
    // Pod to pod, untranslated, still takes the fast path both ways.
    let (fast_out, fast_in) = (forwards(&lab, 0, &["pod_to_node6"]), forwards(&lab, 0, &["uplink_to_pod6"]));
    assert!(tcp_probe(&a.netns, ip6(&b), &b.name), "a -> b directly");
    assert!(
        forwards(&lab, 0, &["pod_to_node6"]) >= fast_out + 2 && forwards(&lab, 0, &["uplink_to_pod6"]) >= fast_in + 2
    );
}

/// A full-size IPv6 packet crosses nodes on the fast path; one byte more
/// than the egress MTU gets Packet Too Big at the sender (IPv6 routers
/// never fragment): the fast path leaves it to the node's stack, which
/// answers. The uplink's MTU is lowered below the pods' so the node, not
/// the pod's own link, is where the packet does not fit.
#[test]
fn a_full_size_ipv6_packet_crosses_nodes_and_one_byte_more_gets_packet_too_big() {
    const UPLINK_MTU: u32 = 1400;
    let lab = dual_lab(2, 1);
    let (a, b) = (pod(&lab, 0, 0), pod(&lab, 1, 0));
    let n1 = &lab.state.nodes[0];
    ns_exec(&n1.netns, &["ip", "link", "set", "dev", "eth0", "mtu", &UPLINK_MTU.to_string()]).unwrap();
    let link = ns_exec(&a.netns, &["ip", "-j", "link", "show", "dev", "eth0"]).unwrap();
    let pod_mtu = serde_json::from_str::<Value>(&link).unwrap()[0]["mtu"].as_u64().unwrap();
    assert!(pod_mtu > u64::from(UPLINK_MTU), "the pod's MTU ({pod_mtu}) must exceed the uplink's for this test");
    // IPv6 (40) + ICMPv6 echo (8) around the payload.
    let payload = UPLINK_MTU - 48;
    let fast = forwards(&lab, 0, &["pod_to_node6"]);
    let full = try_run(&mut ns_cmd(
        &a.netns,
        &["ping", "-c", "2", "-W", "2", "-M", "do", "-s", &payload.to_string(), ip6(&b)],
    ))
    .unwrap();
    let text = String::from_utf8_lossy(&full.stdout).to_string();
    assert!(text.contains("2 received"), "a full-size IPv6 packet across nodes: {text}");
    assert!(forwards(&lab, 0, &["pod_to_node6"]) >= fast + 2, "the full-size packets took the fast path");
    let router = forwards(&lab, 0, &["ipv6_router_to_stack"]);
    let over = try_run(&mut ns_cmd(
        &a.netns,
        &["ping", "-c", "1", "-W", "2", "-M", "do", "-s", &(payload + 1).to_string(), ip6(&b)],
    ))
    .unwrap();
    let text = String::from_utf8_lossy(&over.stdout).to_string() + &String::from_utf8_lossy(&over.stderr);
    assert!(!over.status.success(), "one byte more must not cross: {text}");
    assert!(
        text.contains("Packet too big") && text.contains(&format!("mtu={UPLINK_MTU}")),
        "Packet Too Big from the node, naming its MTU, at the sender: {text}"
    );
    assert!(forwards(&lab, 0, &["ipv6_router_to_stack"]) > router, "left to the stack as the router");
}

/// `connectivity-test` on a dual-stack node probes the node-level classes
/// over IPv6 beside IPv4 (issue 28: every class per family): every node's
/// health endpoint at its IPv6 pod CIDR's `::1` from the local one
/// (`pod-to-pod`) and from the node (`host-to-pod`), every node's IPv6
/// address from the health endpoint (`pod-to-host`), all reached. Then
/// the other node's health endpoint loses its IPv6 address: its IPv6 rows
/// fail, the IPv4 ones still pass, and the command exits non-zero.
#[test]
fn connectivity_test_probes_every_node_over_ipv4_and_ipv6() {
    let lab = dual_lab(2, 1);
    let (n1, n2) = (&lab.state.nodes[0], &lab.state.nodes[1]);
    let health6 = |n: &Node| {
        let cidr: ipnetwork::Ipv6Network = n.pod_cidr6.as_deref().unwrap().parse().unwrap();
        std::net::Ipv6Addr::from(u128::from(cidr.network()) + 1).to_string()
    };
    let rows6 = |v: &Value| -> Vec<(String, String, String, bool)> {
        v.as_array()
            .unwrap()
            .iter()
            .filter(|r| r["target"]["ip"].as_str().unwrap().contains(':'))
            .map(|r| {
                let t = &r["target"];
                let s = |k: &str| t[k].as_str().unwrap().to_string();
                (s("class"), s("node"), s("ip"), r["ok"] == true)
            })
            .collect()
    };
    let (ok, v) = lab.connectivity_test(0, &[]).unwrap();
    let (h1, h2) = (health6(n1), health6(n2));
    let (ip1, ip2) = (n1.ip6.clone().unwrap(), n2.ip6.clone().unwrap());
    let row = |c: &str, n: &Node, ip: &str, ok: bool| (c.to_string(), n.name.clone(), ip.to_string(), ok);
    assert_eq!(
        rows6(&v),
        vec![
            row("pod-to-pod", n1, &h1, true),
            row("pod-to-pod", n2, &h2, true),
            row("pod-to-host", n1, &ip1, true),
            row("pod-to-host", n2, &ip2, true),
            row("host-to-pod", n1, &h1, true),
            row("host-to-pod", n2, &h2, true),
        ],
        "{v:#}"
    );
    assert!(ok, "{v:#}");
    assert!(v.as_array().unwrap().iter().all(|r| r["ok"] == true), "{v:#}");

    let n2_health = Lab::health_netns(n2);
    ns_exec(&n2_health, &["ip", "-6", "addr", "del", &format!("{h2}/128"), "dev", "eth0"]).unwrap();
    let (ok, v) = lab.connectivity_test(0, &[]).unwrap();
    assert!(!ok, "{v:#}");
    let failed: Vec<(String, String, String, bool)> = rows6(&v).into_iter().filter(|r| !r.3).collect();
    assert_eq!(failed, vec![row("pod-to-pod", n2, &h2, false), row("host-to-pod", n2, &h2, false)], "{v:#}");
    let v4_failed = v
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| !r["target"]["ip"].as_str().unwrap().contains(':') && r["ok"] != true)
        .count();
    assert_eq!(v4_failed, 0, "IPv4 still reached: {v:#}");
}
