//! Pods' IPv6 across a router (issue 28): on dual-stack nodes of two LANs
//! joined by a router that forwards IPv4 only (the underlay between the
//! node networks has no IPv6), a pod's IPv6 reaches a pod on the other
//! network inside VXLAN over IPv4, as its IPv4 does: the kernel route for
//! the peer's IPv6 pod CIDR goes into the VXLAN device with a lightweight
//! tunnel encap naming the peer's IPv4 node address, and the receiving
//! node's `from_tunnel` lets only the sending node's own IPv6 pod CIDR in.
use sluice_tests::{
    bin,
    capture::Capture,
    lab::{counter, ns_cmd, ns_exec, ping, tcp_probe, Lab, LabOptions, Pod},
    require_root, try_run,
};

/// n1, n2 on 172.30.0.0/24 (fd00:30::/64); n3 on 172.31.0.0/24
/// (fd00:31::/64); one pod each; dual-stack; the router IPv4 only.
fn lab_with(nodes: usize, agent_args: &[&str]) -> Lab {
    require_root();
    let mut opts = LabOptions::new(nodes, 1, bin("sluice-agent").parent().unwrap().to_path_buf());
    opts.subnets = 2;
    opts.dual_stack = true;
    // An underlay with no IPv6 between the node networks: only VXLAN over
    // IPv4 can carry the pods' IPv6 across.
    opts.router_ipv4_only = true;
    opts.extra_agent_args = agent_args.iter().map(|s| s.to_string()).collect();
    Lab::up(&opts).expect("dual-stack router lab up")
}

fn pod(lab: &Lab, node: usize) -> Pod {
    lab.state.nodes[node].pods[0].clone()
}

fn ip6(p: &Pod) -> &str {
    p.ip6.as_deref().expect("a dual-stack lab's pod has an IPv6 address")
}

/// The hop limit of the echo reply `src` gets from `dst`'s IPv6 address.
fn reply_hop_limit(src: &Pod, dst: &Pod) -> u32 {
    let out = ns_exec(&src.netns, &["ping", "-c", "1", "-W", "2", ip6(dst)]).unwrap();
    let at = out.find("ttl=").unwrap_or_else(|| panic!("no ttl= in {out}")) + 4;
    out[at..].split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn ipv6_pods_across_a_router_talk_through_vxlan_over_ipv4() {
    let lab = lab_with(3, &[]);
    let (a, b, c) = (pod(&lab, 0), pod(&lab, 1), pod(&lab, 2));
    let router = lab.state.router_netns.clone().expect("a router");
    let (n1, n3) = (&lab.state.nodes[0], &lab.state.nodes[2]);
    assert!(n3.ip.starts_with("172.31.0."), "n3 on the second network: {}", n3.ip);
    // The router has no IPv6: nothing crosses it natively.
    let r6 = ns_exec(&router, &["ip", "-6", "addr"]).unwrap();
    assert!(!r6.contains("inet6"), "the router must have no IPv6: {r6}");

    // ICMPv6 and TCP both ways across the router, and on the same LAN.
    for (s, d) in [(&a, &c), (&c, &a), (&b, &c), (&a, &b)] {
        assert!(ping(&s.netns, ip6(d)), "ping {} -> {} ({})", s.name, d.name, ip6(d));
        assert!(tcp_probe(&s.netns, ip6(d), &d.name), "TCP {} -> {} ({})", s.name, d.name, ip6(d));
    }
    // Each node forwards it once, as a router: 64 - 2 on arrival.
    assert_eq!(reply_hop_limit(&a, &c), 62, "hop limit decremented once per node");

    // On the router: the pods' IPv6 only inside UDP 8472 between the node
    // IPv4 addresses, never in the clear (the LAN's own link-local IPv6,
    // MLD and neighbour discovery, reaches its port too).
    let cap = Capture::start(&router, "r0", &["udp", "or", "ip6"]).unwrap();
    let out = ns_exec(&a.netns, &["ping", "-c", "3", "-i", "0.2", ip6(&c)]).unwrap();
    assert!(out.contains("3 received"), "{out}");
    let text = cap.stop();
    let (there, back) = (format!("{}.", n1.ip), format!("{}.", n3.ip));
    let tunneled = |from: &str, to: &str| {
        text.lines().filter(|l| l.contains(&format!(" {from}")) && l.contains(&format!("> {to}8472: OTV"))).count()
    };
    assert!(tunneled(&there, &back) >= 3, "no VXLAN n1 -> n3 on the router:\n{text}");
    assert!(tunneled(&back, &there) >= 3, "no VXLAN n3 -> n1 on the router:\n{text}");
    // tcpdump prints the inner packet on a line of its own; every packet
    // on the wire (a line with a timestamp) carries no pod address.
    for l in text.lines().filter(|l| l.starts_with(|c: char| c.is_ascii_digit())) {
        assert!(!l.contains("fd00:244:"), "a pod's IPv6 in the clear on the router: {l}\n{text}");
    }
}

/// A full-size IPv6 packet crosses the router inside VXLAN; one byte more
/// gets Packet Too Big at the sender naming the VXLAN device's MTU (the
/// uplink's less 50). The pods' MTU is pinned to the uplink's (`--mtu
/// 1500`) so the node, not the pod's own link, is where it does not fit.
#[test]
fn a_full_size_ipv6_packet_crosses_the_tunnel_and_one_byte_more_gets_packet_too_big() {
    let lab = lab_with(2, &["--mtu", "1500"]);
    let (a, c) = (pod(&lab, 0), pod(&lab, 1));
    const TUNNEL_MTU: u32 = 1500 - 50;
    // IPv6 (40) + ICMPv6 echo (8) around the payload.
    let payload = TUNNEL_MTU - 48;
    let ping_df = |size: u32| {
        let out = try_run(&mut ns_cmd(
            &a.netns,
            &["ping", "-c", "2", "-W", "2", "-M", "do", "-s", &size.to_string(), ip6(&c)],
        ))
        .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr))
    };
    let (ok, text) = ping_df(payload);
    assert!(ok && text.contains("2 received"), "a full-size IPv6 packet through the tunnel: {text}");
    let (ok, text) = ping_df(payload + 1);
    assert!(!ok, "one byte more must not cross: {text}");
    assert!(
        text.contains("Packet too big") && text.contains(&format!("mtu={TUNNEL_MTU}")),
        "Packet Too Big from the node, naming the tunnel's MTU, at the sender: {text}"
    );
}

/// Through the tunnel, a node may only send IPv6 from its own IPv6 pod
/// CIDR: n2 (every peer tunneled) forging an address of n3's pod CIDR
/// toward n1's pod is dropped on n1 and counted as `tunnel_wrong_node`.
#[test]
fn a_node_sending_another_nodes_ipv6_pod_address_through_the_tunnel_is_dropped() {
    let lab = lab_with(3, &["--tunnel=always"]);
    let (a, n2) = (pod(&lab, 0), &lab.state.nodes[1]);
    let c = pod(&lab, 2);
    assert!(ping(&c.netns, ip6(&a)), "the real owner gets through");
    let before = counter(&lab, 0, "drops", "tunnel_wrong_node");
    let forged = "fd00:244:0:3::c8";
    ns_exec(&n2.netns, &["ip", "-6", "addr", "add", &format!("{forged}/128"), "dev", "lo", "nodad"]).unwrap();
    // (The pod's answer would go to n3, the owner: only a capture in the
    // pod shows whether the forged packets got in.)
    let cap = Capture::start(&a.netns, "eth0", &["icmp6"]).unwrap();
    let out = try_run(&mut ns_cmd(&n2.netns, &["ping", "-c", "2", "-W", "1", "-I", forged, ip6(&a)])).unwrap();
    let text = cap.stop();
    assert!(!out.status.success(), "forged source must not get through: {}", String::from_utf8_lossy(&out.stdout));
    assert!(!text.contains(&format!("{forged} >")), "the forged packets reached the pod:\n{text}");
    assert!(counter(&lab, 0, "drops", "tunnel_wrong_node") >= before + 2, "counted on n1");
}
