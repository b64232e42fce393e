//! Nodes on different networks (issue 15): two LANs joined by a router
//! that knows nothing of pod CIDRs. Peers across it are reached through
//! VXLAN (the router sees UDP 8472 between node IPs), peers on the same LAN
//! natively (raw pod addresses on the wire).
use sluice_tests::{
    bin,
    capture::Capture,
    lab::{counter, ns_cmd, ns_exec, ping, tcp_probe, udp_reaches, Lab, LabOptions, Pod},
    require_root,
};

/// n1, n2 on 172.30.0.0/24; n3 on 172.31.0.0/24; one pod each.
fn lab() -> Lab {
    lab_with(3, &[])
}

fn lab_with(nodes: usize, agent_args: &[&str]) -> Lab {
    require_root();
    let mut opts = LabOptions::new(nodes, 1, bin("sluice-agent").parent().unwrap().to_path_buf());
    opts.subnets = 2;
    opts.extra_agent_args = agent_args.iter().map(|s| s.to_string()).collect();
    Lab::up(&opts).expect("lab up")
}

fn pod_mtu(pod: &Pod) -> u64 {
    let link = ns_exec(&pod.netns, &["ip", "-j", "link", "show", "dev", "eth0"]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&link).unwrap();
    v[0]["mtu"].as_u64().unwrap()
}

/// `ping -M do -s <payload>` from `src` to `dst`: (success, output).
fn df_ping(src: &Pod, dst: &Pod, payload: u64) -> (bool, String) {
    let size = payload.to_string();
    let out = sluice_tests::try_run(&mut ns_cmd(
        &src.netns,
        &["ping", "-c", "2", "-W", "1", "-M", "do", "-s", &size, &dst.ip],
    ))
    .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr))
}

#[test]
fn pods_get_the_tunnels_mtu_and_a_pinned_larger_one_is_refused_with_the_right_mtu() {
    // Default: 50 bytes less than the LAN, and full size crosses the router.
    let lab = lab_with(2, &[]);
    let (a, c) = (pod(&lab, 0), pod(&lab, 1));
    assert_eq!(pod_mtu(&a), 1450);
    let (ok, text) = df_ping(&a, &c, 1450 - 28);
    assert!(ok, "full-size DF packet through the tunnel: {text}");
    drop(lab);

    // --mtu 1500 pinned: a full-size DF packet cannot fit the tunnel; the
    // sending node's stack refuses it naming the device's MTU, and a
    // packet that fits still goes through.
    let lab = lab_with(2, &["--mtu", "1500"]);
    let (a, c) = (pod(&lab, 0), pod(&lab, 1));
    assert_eq!(pod_mtu(&a), 1500);
    let (ok, text) = df_ping(&a, &c, 1500 - 28);
    assert!(!ok, "too large for the tunnel: {text}");
    assert!(text.contains("mtu = 1450") || text.contains("mtu=1450"), "refused with the tunnel's MTU: {text}");
    assert!(counter(&lab, 0, "forwards", "tunnel_too_big") > 0);
    let (ok, text) = df_ping(&a, &c, 1450 - 28);
    assert!(ok, "a packet that fits: {text}");
}

fn pod(lab: &Lab, node: usize) -> Pod {
    lab.state.nodes[node].pods[0].clone()
}

#[test]
fn pods_across_a_router_talk_through_vxlan_and_same_lan_pods_natively() {
    let lab = lab();
    let (a, b, c) = (pod(&lab, 0), pod(&lab, 1), pod(&lab, 2));
    let router = lab.state.router_netns.clone().expect("a router");
    let (n1, n3) = (&lab.state.nodes[0], &lab.state.nodes[2]);
    assert!(n3.ip.starts_with("172.31.0."), "n3 on the second network: {}", n3.ip);

    // `status` says per peer which way and why.
    let routes = lab.status(0).unwrap()["routes"].clone();
    let path_of = |cidr: &str| {
        let r = routes.as_array().unwrap().iter().find(|r| r["podCIDR"] == cidr).cloned();
        r.map(|r| (r["path"].as_str().unwrap().to_string(), r["why"].as_str().unwrap().to_string()))
    };
    assert_eq!(path_of("10.244.2.0/24"), Some(("native".into(), "on this node's subnet".into())), "{routes}");
    assert_eq!(path_of("10.244.3.0/24"), Some(("vxlan".into(), "off this node's subnet".into())), "{routes}");

    // ICMP and TCP both ways across the router, and on the same LAN.
    for (s, d) in [(&a, &c), (&c, &a), (&b, &c), (&a, &b)] {
        assert!(ping(&s.netns, &d.ip), "ping {} -> {}", s.name, d.name);
        assert!(tcp_probe(&s.netns, &d.ip, &d.name), "TCP {} -> {}", s.name, d.name);
    }
    for (i, (s, d)) in [(&a, &c), (&c, &a)].into_iter().enumerate() {
        assert!(udp_reaches(s, d, 9100 + i as u16), "UDP {} -> {}", s.name, d.name);
    }
    // Host traffic across the router: the kernel route into the VXLAN
    // device (to_tunnel sets the key), and pods back to the node natively.
    for (node, pod) in [(n1, &c), (n3, &a)] {
        assert!(ping(&node.netns, &pod.ip), "ping node {} -> {}", node.name, pod.name);
        assert!(tcp_probe(&node.netns, &pod.ip, &pod.name), "TCP node {} -> {}", node.name, pod.name);
        assert!(ping(&pod.netns, &node.ip), "ping {} -> node {}", pod.name, node.name);
    }
    // The tunnel paths carried it, on both ends.
    for node in [0, 2] {
        assert!(counter(&lab, node, "forwards", "pod_to_tunnel") > 0, "node {node} encapsulated");
        assert!(counter(&lab, node, "forwards", "tunnel_to_pod") > 0, "node {node} delivered decapsulated");
    }

    // On the router: only UDP 8472 between the node IPs, no pod address.
    let cap = Capture::start(&router, "r0", &["udp", "or", "icmp"]).unwrap();
    let out = ns_exec(&a.netns, &["ping", "-c", "3", "-i", "0.2", &c.ip]).unwrap();
    assert!(out.contains("3 received"), "{out}");
    let text = cap.stop();
    let there = format!("{}.", n1.ip);
    let back = format!("{}.", n3.ip);
    let tunneled = |from: &str, to: &str| {
        text.lines().filter(|l| l.contains(&format!(" {from}")) && l.contains(&format!("> {to}8472: OTV"))).count()
    };
    assert!(tunneled(&there, &back) >= 3, "no VXLAN n1 -> n3 on the router:\n{text}");
    assert!(tunneled(&back, &there) >= 3, "no VXLAN n3 -> n1 on the router:\n{text}");
    // tcpdump decodes UDP 8472 (as OTV) and prints the inner packet on a
    // line of its own; every packet on the wire (a line with a timestamp)
    // is between node addresses.
    for l in text.lines().filter(|l| l.starts_with(|c: char| c.is_ascii_digit())) {
        assert!(!l.contains("10.244."), "a pod address in the clear on the router: {l}\n{text}");
        assert!(l.contains(".8472: OTV"), "not VXLAN: {l}\n{text}");
    }

    // On the first LAN's switch port of n1: n1 -> n2 stays native.
    let cap = Capture::start(&lab.state.lan_netns, "n1", &["icmp"]).unwrap();
    let out = ns_exec(&a.netns, &["ping", "-c", "3", "-i", "0.2", &b.ip]).unwrap();
    assert!(out.contains("3 received"), "{out}");
    let text = cap.stop();
    let want = format!("{} > {}: ICMP echo request", a.ip, b.ip);
    assert!(text.lines().filter(|l| l.contains(&want)).count() >= 3, "n1 -> n2 not native:\n{text}");
}

#[test]
fn tunnel_never_reports_the_peer_across_the_router_and_makes_no_device() {
    let lab = lab_with(2, &["--tunnel=never"]);
    let status = lab.status(0).unwrap();
    assert_eq!(status["routes"].as_array().map(Vec::len), Some(0), "{status}");
    let problems = status["agent"]["problems"].to_string();
    assert!(problems.contains("offSubnet"), "{problems}");
    let links = ns_exec(&lab.state.nodes[0].netns, &["ip", "-o", "link"]).unwrap();
    assert!(!links.contains(sluice_node::net::vxlan::DEVICE), "{links}");
    assert!(!ping(&pod(&lab, 0).netns, &pod(&lab, 1).ip));
}

#[test]
fn a_node_sending_another_nodes_pod_address_through_the_tunnel_is_dropped() {
    // Every peer tunneled, so n2 reaches n1's pods through VXLAN too.
    let lab = lab_with(3, &["--tunnel=always"]);
    let (a, n2) = (pod(&lab, 0), &lab.state.nodes[1]);
    let c = pod(&lab, 2);
    assert!(ping(&c.netns, &a.ip), "the real owner gets through");
    let before = counter(&lab, 0, "drops", "tunnel_wrong_node");
    // n2 claims an address of n3's pod CIDR and pings n1's pod with it: the
    // kernel route sends it into n2's VXLAN device, the outer source is n2.
    let forged = "10.244.3.200";
    ns_exec(&n2.netns, &["ip", "addr", "add", &format!("{forged}/32"), "dev", "lo"]).unwrap();
    let out =
        sluice_tests::try_run(&mut ns_cmd(&n2.netns, &["ping", "-c", "2", "-W", "1", "-I", forged, &a.ip])).unwrap();
    assert!(!out.status.success(), "forged source must not get through");
    assert!(counter(&lab, 0, "drops", "tunnel_wrong_node") >= before + 2, "counted on n1");
}
