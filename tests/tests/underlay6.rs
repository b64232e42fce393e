//! VXLAN over an IPv6 underlay (issue 28): IPv6-only nodes on two LANs
//! joined by a router that forwards IPv6 alone and knows no pod CIDR. A
//! peer off the uplink's IPv6 network is reached through VXLAN to its IPv6
//! node address (kernel routes `encap ip6 id 1 dst <peer IPv6> hoplimit 64
//! csum dev sluice_vxlan`), 70 bytes of overhead: the pods' MTU and the
//! device's are the uplink's less 70. The receiving node's `from_tunnel6`
//! names the sender by the tunnel key's IPv6 remote end and lets in only
//! that node's own IPv6 pod CIDR.
use sluice_tests::{
    bin,
    capture::Capture,
    cluster::{ClusterMatrix, IpFamily},
    lab::{counter, ns_cmd, ns_exec, ping, tcp_probe, Lab, LabOptions, Pod},
    require_root, try_run,
};

/// n1 (and n2) on fd00:30::/64, the last node on fd00:31::/64; IPv6 only,
/// the router too.
fn lab_with(nodes: usize, pods_per_node: usize, cluster_model: bool, agent_args: &[&str]) -> Lab {
    require_root();
    let mut opts = LabOptions::new(nodes, pods_per_node, bin("sluice-agent").parent().unwrap().to_path_buf());
    opts.subnets = 2;
    opts.ipv6_only = true;
    opts.cluster_model = cluster_model;
    opts.extra_agent_args = agent_args.iter().map(|s| s.to_string()).collect();
    Lab::up(&opts).expect("IPv6-only router lab up")
}

fn pod(lab: &Lab, node: usize) -> Pod {
    lab.state.nodes[node].pods[0].clone()
}

fn ip6(p: &Pod) -> &str {
    p.ip6.as_deref().expect("an IPv6-only lab's pod has an IPv6 address")
}

/// The `mtu N` of `dev` in `netns`.
fn link_mtu(netns: &str, dev: &str) -> u32 {
    let out = ns_exec(netns, &["ip", "-o", "link", "show", "dev", dev]).unwrap();
    let at = out.find(" mtu ").unwrap_or_else(|| panic!("no mtu in {out}")) + 5;
    out[at..].split_whitespace().next().unwrap().parse().unwrap()
}

/// `ping -M do -s size` from `from` to `to`: (succeeded, what it printed).
fn ping_df(from: &Pod, to: &str, size: u32) -> (bool, String) {
    let size = size.to_string();
    let out = try_run(&mut ns_cmd(&from.netns, &["ping", "-c", "2", "-W", "2", "-M", "do", "-s", &size, to])).unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr))
}

/// What `cargo xtask lab up --ip-family ipv6 --subnets 2` builds: every
/// row of the IPv6 matrix reached (90 paths), pods across the router over
/// ICMPv6 and TCP, only VXLAN over IPv6 between the node addresses on the
/// router, pods' and device's MTU the uplink's less 70.
#[test]
fn ipv6_only_nodes_behind_a_router_reach_every_path_through_vxlan_over_ipv6() {
    let lab = lab_with(3, 2, true, &[]);
    let router = lab.state.router_netns.clone().expect("a router");
    let (n1, n3) = (&lab.state.nodes[0], &lab.state.nodes[2]);
    let (n1_ip6, n3_ip6) = (n1.ip6.clone().unwrap(), n3.ip6.clone().unwrap());
    assert!(n3_ip6.starts_with("fd00:31::"), "n3 on the second network: {n3_ip6}");
    // The router has no IPv4: nothing crosses it but IPv6.
    let r4 = ns_exec(&router, &["ip", "-4", "-o", "addr"]).unwrap();
    assert!(r4.lines().all(|l| l.contains(" lo ")), "the router must have no IPv4: {r4}");

    // Each agent's choice: n1 -> n2 native (same link), n1 -> n3 VXLAN.
    let s = lab.status(0).unwrap();
    let paths6 = &s["agent"]["routePaths6"];
    assert_eq!(paths6[lab.state.nodes[1].pod_cidr6.as_deref().unwrap()]["path"], "native", "{s:#}");
    assert_eq!(paths6[n3.pod_cidr6.as_deref().unwrap()]["path"], "vxlan", "{s:#}");
    let routes = ns_exec(&n1.netns, &["ip", "-6", "route", "show", "proto", "83"]).unwrap();
    let to_n3 = routes.lines().find(|l| l.starts_with(n3.pod_cidr6.as_deref().unwrap())).unwrap_or("");
    assert!(
        to_n3.contains("encap ip6") && to_n3.contains(&format!("dst {n3_ip6}")) && to_n3.contains("dev sluice_vxlan"),
        "n1's route to n3's pods: {routes}"
    );
    // 70 bytes of VXLAN over IPv6: pods and device at 1430 on a 1500 LAN.
    assert_eq!(link_mtu(&n1.netns, "sluice_vxlan"), 1430);
    assert_eq!(link_mtu(&pod(&lab, 0).netns, "eth0"), 1430);
    // The native peer's route carries the pods' MTU (1430, not the uplink's).
    let to_n2 = routes.lines().find(|l| l.starts_with(lab.state.nodes[1].pod_cidr6.as_deref().unwrap())).unwrap_or("");
    assert!(to_n2.contains("mtu 1430"), "n1's route to n2's pods: {routes}");

    // ICMPv6 and TCP both ways across the router, and on the same LAN.
    let (a, b, c) = (pod(&lab, 0), pod(&lab, 1), pod(&lab, 2));
    for (s, d) in [(&a, &c), (&c, &a), (&b, &c), (&a, &b)] {
        assert!(ping(&s.netns, ip6(d)), "ping {} -> {} ({})", s.name, d.name, ip6(d));
        assert!(tcp_probe(&s.netns, ip6(d), &d.name), "TCP {} -> {} ({})", s.name, d.name, ip6(d));
    }
    // A full-size packet (the pods' MTU) crosses through the tunnel.
    let (ok, text) = ping_df(&a, ip6(&c), 1430 - 48);
    assert!(ok && text.contains("2 received"), "a 1430-byte IPv6 packet n1p1 -> n3p1: {text}");

    // On the router: pods' IPv6 only inside UDP 8472 between the nodes'
    // IPv6 addresses, never in the clear.
    let cap = Capture::start(&router, "r0", &["ip6"]).unwrap();
    let out = ns_exec(&a.netns, &["ping", "-c", "3", "-i", "0.2", ip6(&c)]).unwrap();
    assert!(out.contains("3 received"), "{out}");
    let text = cap.stop();
    let tunneled = |from: &str, to: &str| {
        text.lines().filter(|l| l.contains(&format!(" {from}.")) && l.contains(&format!("> {to}.8472: "))).count()
    };
    assert!(tunneled(&n1_ip6, &n3_ip6) >= 3, "no VXLAN n1 -> n3 on the router:\n{text}");
    assert!(tunneled(&n3_ip6, &n1_ip6) >= 3, "no VXLAN n3 -> n1 on the router:\n{text}");
    for l in text.lines().filter(|l| l.starts_with(|c: char| c.is_ascii_digit())) {
        assert!(!l.contains("fd00:244:"), "a pod's IPv6 in the clear on the router: {l}\n{text}");
    }

    // The whole IPv6 matrix, as `lab up` prints it: 9 sources, 90 paths.
    let m = ClusterMatrix::probe_family(&lab, IpFamily::V6);
    eprint!("{}", m.render());
    let sources = lab.state.nodes.len() * (1 + 2);
    assert_eq!(m.rows.len(), sources, "every pod and node is a source");
    assert_eq!(m.cells.len(), 90, "every path probed");
    assert!(m.all_ok(), "IPv6-only router lab: failed {:?}\n{}", m.failures, m.render());
}

/// A packet as large as the tunnel takes (the uplink's less 70) crosses
/// the router; one byte more gets Packet Too Big at the sender naming that
/// MTU. The pods' MTU is pinned to the uplink's (`--mtu 1500`) so the
/// node, not the pod's own link, is where it does not fit.
#[test]
fn a_full_size_packet_crosses_vxlan_over_ipv6_and_one_byte_more_gets_packet_too_big() {
    let lab = lab_with(2, 1, false, &["--mtu", "1500"]);
    let (a, c) = (pod(&lab, 0), pod(&lab, 1));
    const TUNNEL_MTU: u32 = 1500 - 70;
    // IPv6 (40) + ICMPv6 echo (8) around the payload.
    let payload = TUNNEL_MTU - 48;
    let (ok, text) = ping_df(&a, ip6(&c), payload);
    assert!(ok && text.contains("2 received"), "a full-size IPv6 packet through the tunnel: {text}");
    let (ok, text) = ping_df(&a, ip6(&c), payload + 1);
    assert!(!ok, "one byte more must not cross: {text}");
    assert!(
        text.contains("Packet too big") && text.contains(&format!("mtu={TUNNEL_MTU}")),
        "Packet Too Big from the node, naming the tunnel's MTU, at the sender: {text}"
    );
}

/// Through the tunnel, a node may only send IPv6 from its own IPv6 pod
/// CIDR: n2 (every peer tunneled over IPv6) forging an address of n3's pod
/// CIDR toward n1's pod is dropped on n1 as `tunnel_wrong_node`; n1's
/// other pod's address as `tunnel_source_spoofed`.
#[test]
fn a_node_forging_another_nodes_pod_address_through_the_ipv6_tunnel_is_dropped() {
    let lab = lab_with(3, 2, false, &["--tunnel=always"]);
    let (a, n2) = (pod(&lab, 0), &lab.state.nodes[1]);
    let c = pod(&lab, 2);
    let n1p2 = lab.state.nodes[0].pods[1].ip6.clone().unwrap();
    assert!(ping(&c.netns, ip6(&a)), "the real owner gets through");
    let s = lab.status(1).unwrap();
    assert_eq!(s["agent"]["routePaths6"][lab.state.nodes[0].pod_cidr6.as_deref().unwrap()]["path"], "vxlan", "{s:#}");
    for (forged, reason) in [("fd00:244:0:3::c8", "tunnel_wrong_node"), (n1p2.as_str(), "tunnel_source_spoofed")] {
        let before = counter(&lab, 0, "drops", reason);
        ns_exec(&n2.netns, &["ip", "-6", "addr", "add", &format!("{forged}/128"), "dev", "lo", "nodad"]).unwrap();
        let cap = Capture::start(&a.netns, "eth0", &["icmp6"]).unwrap();
        let out = try_run(&mut ns_cmd(&n2.netns, &["ping", "-c", "2", "-W", "1", "-I", forged, ip6(&a)])).unwrap();
        let text = cap.stop();
        assert!(!out.status.success(), "{forged}: must not get through: {}", String::from_utf8_lossy(&out.stdout));
        assert!(!text.contains(&format!("{forged} >")), "the forged packets reached the pod:\n{text}");
        assert!(counter(&lab, 0, "drops", reason) >= before + 2, "{forged}: counted on n1 as {reason}");
    }
}
