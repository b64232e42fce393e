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
    // And the MTU each peer's path carries: the uplink's natively, 50 less
    // through VXLAN (the pods' own, so pod traffic fits both).
    let mtu_of =
        |cidr: &str| routes.as_array().unwrap().iter().find(|r| r["podCIDR"] == cidr).map(|r| r["mtu"].clone());
    assert_eq!(mtu_of("10.244.2.0/24"), Some(serde_json::json!(1500)), "{routes}");
    assert_eq!(mtu_of("10.244.3.0/24"), Some(serde_json::json!(1450)), "{routes}");

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

/// The path `status` on node `i` gives the route to `cidr`: (path, why).
fn path_of(lab: &Lab, i: usize, cidr: &str) -> Option<(String, String)> {
    let routes = lab.status(i).unwrap()["routes"].clone();
    let r = routes.as_array()?.iter().find(|r| r["podCIDR"] == cidr)?.clone();
    Some((r["path"].as_str()?.to_string(), r["why"].as_str()?.to_string()))
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !f() {
        assert!(start.elapsed() < std::time::Duration::from_secs(10), "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// ICMP, TCP and UDP both ways between `a` and `b`, and each pod's node to
/// the other pod.
fn talk_both_ways(lab: &Lab, a: &Pod, b: &Pod, nodes: (usize, usize), udp_port: u16) {
    for (s, d) in [(a, b), (b, a)] {
        assert!(ping(&s.netns, &d.ip), "ping {} -> {}", s.name, d.name);
        assert!(tcp_probe(&s.netns, &d.ip, &d.name), "TCP {} -> {}", s.name, d.name);
    }
    assert!(udp_reaches(a, b, udp_port), "UDP {} -> {}", a.name, b.name);
    assert!(udp_reaches(b, a, udp_port + 1), "UDP {} -> {}", b.name, a.name);
    let (na, nb) = (&lab.state.nodes[nodes.0], &lab.state.nodes[nodes.1]);
    for (node, pod) in [(na, b), (nb, a)] {
        assert!(ping(&node.netns, &pod.ip), "ping node {} -> {}", node.name, pod.name);
        assert!(tcp_probe(&node.netns, &pod.ip, &pod.name), "TCP node {} -> {}", node.name, pod.name);
    }
}

#[test]
fn tunnel_always_on_one_lan_tunnels_every_peer_and_works_the_same() {
    require_root();
    let mut opts = LabOptions::new(2, 1, bin("sluice-agent").parent().unwrap().to_path_buf());
    opts.extra_agent_args = vec!["--tunnel=always".into()];
    let lab = Lab::up(&opts).expect("lab up");
    let (a, b) = (pod(&lab, 0), pod(&lab, 1));
    let (n1, n2) = (&lab.state.nodes[0], &lab.state.nodes[1]);
    assert_eq!(path_of(&lab, 0, &n2.pod_cidr), Some(("vxlan".into(), "--tunnel=always".into())));
    assert_eq!(path_of(&lab, 1, &n1.pod_cidr), Some(("vxlan".into(), "--tunnel=always".into())));
    let kernel = ns_exec(&n1.netns, &["ip", "route", "show", "proto", "83"]).unwrap();
    assert!(kernel.contains(&format!("{} dev {}", n2.pod_cidr, sluice_node::net::vxlan::DEVICE)), "{kernel}");

    // On n1's switch port: every packet of pod traffic (both ways, and
    // host <-> remote pod) is UDP 8472 between the node IPs (the kernel's
    // own IGMP reports, from 0.0.0.0, aside).
    let cap = Capture::start(&lab.state.lan_netns, "n1", &["ip", "and", "not", "igmp"]).unwrap();
    talk_both_ways(&lab, &a, &b, (0, 1), 9200);
    let text = cap.stop();
    let wire: Vec<&str> = text.lines().filter(|l| l.starts_with(|c: char| c.is_ascii_digit())).collect();
    assert!(wire.len() >= 20, "traffic seen on the LAN:\n{text}");
    for l in &wire {
        assert!(!l.contains("10.244."), "a pod address in the clear on the LAN: {l}\n{text}");
        let vxlan = [(&n1.ip, &n2.ip), (&n2.ip, &n1.ip)]
            .iter()
            .any(|(s, d)| l.contains(&format!(" {s}.")) && l.contains(&format!("> {d}.8472: OTV")));
        assert!(vxlan, "not VXLAN between the nodes: {l}\n{text}");
    }
    for node in [0, 1] {
        assert!(counter(&lab, node, "forwards", "pod_to_tunnel") > 0, "node {node} encapsulated");
        assert!(counter(&lab, node, "forwards", "pod_to_node") == 0, "node {node} sent nothing native");
    }
}

/// Move node `node` (its switch port and uplink address) onto node
/// network `subnet` as host `host`, as a node re-addressed into another rack would be,
/// and publish its new address (peers file or Node object). Its agent keeps
/// running.
fn move_node(lab: &mut Lab, node: usize, subnet: usize, host: u8) {
    let n = lab.state.nodes[node].clone();
    let ip = format!("{}.{host}", sluice_tests::lab::subnet_prefix(subnet));
    let router = format!("{}.{}", sluice_tests::lab::subnet_prefix(subnet), sluice_tests::lab::ROUTER_HOST);
    let other = format!("{}.0/24", sluice_tests::lab::subnet_prefix(1 - subnet));
    ns_exec(&lab.state.lan_netns, &["ip", "link", "set", &n.name, "master", &format!("br{subnet}")]).unwrap();
    ns_exec(&n.netns, &["ip", "addr", "flush", "dev", "eth0"]).unwrap();
    ns_exec(&n.netns, &["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"]).unwrap();
    ns_exec(&n.netns, &["ip", "route", "replace", &other, "via", &router, "dev", "eth0"]).unwrap();
    lab.state.nodes[node].ip = ip.clone();
    // Membership: the peers file, or the Node's InternalIP in the API server.
    match &lab.api {
        Some(api) => api.upsert_node(&n.name, &ip, Some(&n.pod_cidr)),
        None => lab.write_peers().unwrap(),
    }
}

#[test]
fn a_peer_moving_to_another_subnet_switches_its_path_without_a_restart() {
    peer_moves_subnet_and_switches_path(lab());
}

/// The same with membership from Kubernetes Node objects (their
/// InternalIPs and pod CIDRs, from the test API server): the path follows
/// the Node's MODIFIED event.
#[test]
fn a_kubernetes_node_moving_to_another_subnet_switches_its_path_without_a_restart() {
    require_root();
    let mut opts = LabOptions::new(3, 1, bin("sluice-agent").parent().unwrap().to_path_buf());
    opts.subnets = 2;
    opts.kubernetes = true;
    opts.pod_cidr_from_node = true;
    let lab = Lab::up(&opts).expect("lab up");
    let n3 = &lab.state.nodes[2];
    let c = pod(&lab, 2);
    assert!(c.ip.starts_with("10.244.3."), "the pod CIDR came from the Node: {}", c.ip);
    // Every peer's path, as the Nodes' addresses decide it.
    assert_eq!(path_of(&lab, 0, &lab.state.nodes[1].pod_cidr).unwrap().0, "native");
    assert_eq!(path_of(&lab, 0, &n3.pod_cidr).unwrap().0, "vxlan");
    assert_eq!(path_of(&lab, 2, &lab.state.nodes[0].pod_cidr).unwrap().0, "vxlan");
    peer_moves_subnet_and_switches_path(lab);
}

fn peer_moves_subnet_and_switches_path(mut lab: Lab) {
    let (a, c) = (pod(&lab, 0), pod(&lab, 2));
    let n3_cidr = lab.state.nodes[2].pod_cidr.clone();
    let pids: Vec<Option<u32>> = lab.state.nodes.iter().map(|n| n.agent_pid).collect();
    assert_eq!(path_of(&lab, 0, &n3_cidr).unwrap().0, "vxlan");

    // n3 onto n1's LAN: n1 (and n2) reach it natively from the next pass,
    // and n3 them (its own agent follows its new address).
    move_node(&mut lab, 2, 0, 3);
    let n3_ip = lab.state.nodes[2].ip.clone();
    let n1_cidr = lab.state.nodes[0].pod_cidr.clone();
    let native = Some(("native".to_string(), "on this node's subnet".to_string()));
    for i in [0, 1] {
        wait_for("n3 native", || path_of(&lab, i, &n3_cidr) == native);
    }
    wait_for("n3's own view: n1 native", || path_of(&lab, 2, &n1_cidr) == native);
    let kernel = ns_exec(&lab.state.nodes[0].netns, &["ip", "route", "show", "proto", "83"]).unwrap();
    assert!(kernel.contains(&format!("{n3_cidr} via {n3_ip} dev eth0")), "{kernel}");
    talk_both_ways(&lab, &a, &c, (0, 2), 9300);
    // Native on the wire both ways: the pods' addresses, no UDP 8472.
    let cap = Capture::start(&lab.state.lan_netns, "n1", &["icmp"]).unwrap();
    assert!(ns_exec(&a.netns, &["ping", "-c", "3", "-i", "0.2", &c.ip]).unwrap().contains("3 received"));
    let text = cap.stop();
    assert!(text.contains(&format!("{} > {}: ICMP echo request", a.ip, c.ip)), "n1 -> n3 not native:\n{text}");
    assert!(text.contains(&format!("{} > {}: ICMP echo reply", c.ip, a.ip)), "n3 -> n1 not native:\n{text}");

    // And back across the router under another address: VXLAN again, and
    // n3 decapsulates in eBPF what is sent to its new address.
    move_node(&mut lab, 2, 1, 13);
    for i in [0, 1] {
        wait_for("n3 vxlan", || path_of(&lab, i, &n3_cidr) == Some(("vxlan".into(), "off this node's subnet".into())));
    }
    let decap_before = counter(&lab, 2, "forwards", "tunnel_decap");
    talk_both_ways(&lab, &a, &c, (0, 2), 9310);
    assert!(counter(&lab, 2, "forwards", "tunnel_decap") > decap_before, "n3 decapsulated in eBPF at its new address");
    let now: Vec<Option<u32>> = lab.state.nodes.iter().map(|n| n.agent_pid).collect();
    assert_eq!(now, pids, "no agent restarted");
    for (i, pid) in pids.iter().enumerate() {
        assert!(std::path::Path::new(&format!("/proc/{}", pid.unwrap())).exists(), "agent {i} still running");
    }
}

#[test]
fn agents_killed_and_restarted_under_a_flow_across_the_router_lose_nothing() {
    const FLOW: u32 = 3000;
    let mut lab = lab_with(2, &[]);
    let (a, c) = (pod(&lab, 0), pod(&lab, 1));
    let device_index = |lab: &Lab, i: usize| {
        let out = ns_exec(&lab.state.nodes[i].netns, &["ip", "-j", "link", "show", sluice_node::net::vxlan::DEVICE]);
        let v: serde_json::Value = serde_json::from_str(&out.unwrap()).unwrap();
        v[0]["ifindex"].as_u64().unwrap()
    };
    let before: Vec<u64> = (0..2).map(|i| device_index(&lab, i)).collect();
    let routes_before = lab.status(0).unwrap()["routes"].clone();
    let tunneled_before = counter(&lab, 0, "forwards", "pod_to_tunnel");
    // A steady flow through the tunnel: 3000 pings at 500/s, both agents
    // SIGKILLed and restarted while it runs.
    let flow = ns_cmd(&a.netns, &["ping", "-q", "-c", &FLOW.to_string(), "-i", "0.002", "-W", "1", &c.ip])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1000));
    for i in 0..2 {
        lab.kill_agent(i).unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(1000));
    assert!(tcp_probe(&a.netns, &c.ip, &c.name), "through the tunnel with no agent running");
    for i in 0..2 {
        lab.start_agent(i).unwrap();
    }
    for i in 0..2 {
        lab.wait_agent_ready(i).unwrap();
    }
    let out = flow.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("{FLOW} packets transmitted, {FLOW} received")), "lost across kill/restart: {text}");
    let after: Vec<u64> = (0..2).map(|i| device_index(&lab, i)).collect();
    assert_eq!(after, before, "the VXLAN device was kept (same ifindex)");
    assert_eq!(lab.status(0).unwrap()["routes"], routes_before);
    assert!(
        counter(&lab, 0, "forwards", "pod_to_tunnel") >= tunneled_before + FLOW as u64,
        "it went through the tunnel"
    );
}

/// `ttl=` of the first reply `ping` prints.
fn reply_ttl(netns: &str, ip: &str) -> u32 {
    let out = ns_exec(netns, &["ping", "-c", "1", "-W", "2", ip]).unwrap();
    let ttl = out.split("ttl=").nth(1).and_then(|t| t.split_whitespace().next()).map(str::to_string);
    ttl.and_then(|t| t.parse().ok()).unwrap_or_else(|| panic!("no reply ttl: {out}"))
}

/// The TTL of echo requests from `src` as they arrive inside pod `dst`.
fn arriving_ttl(src: &Pod, dst: &Pod) -> String {
    let cap = Capture::start(&dst.netns, "eth0", &["-v", "icmp[icmptype] == icmp-echo"]).unwrap();
    ns_exec(&src.netns, &["ping", "-c", "2", "-i", "0.2", &dst.ip]).unwrap();
    let text = cap.stop();
    let ttl = text.split(" ttl ").nth(1).and_then(|t| t.split(',').next()).map(str::to_string);
    ttl.unwrap_or_else(|| panic!("no request seen in {}:\n{text}", dst.name))
}

#[test]
fn services_masquerade_host_traffic_and_ttl_across_the_router_with_strict_rp_filter() {
    use sluice_tests::{
        cluster::{self, parse_whoami, tcp_text, udp_text, DEMO_IP, HOST_PORT, WORLD_IP, WORLD_PORT},
        kube_proxy::{self, Endpoint, Protocol, Service, ServicePort},
    };
    require_root();
    let mut opts = LabOptions::new(3, 1, bin("sluice-agent").parent().unwrap().to_path_buf());
    opts.subnets = 2;
    opts.cluster_model = true;
    let lab = Lab::up(&opts).expect("lab up");
    let (a, b, c) = (pod(&lab, 0), pod(&lab, 1), pod(&lab, 2));
    let (n1, n3) = (lab.state.nodes[0].clone(), lab.state.nodes[2].clone());
    // Strict reverse-path filtering on every node (RHEL's default): the
    // host <-> remote pod traffic below must come back the way it left.
    for n in &lab.state.nodes {
        for dev in ["all", "default", "eth0", sluice_node::net::vxlan::DEVICE] {
            ns_exec(&n.netns, &["sysctl", "-qw", &format!("net.ipv4.conf.{dev}.rp_filter=1")]).unwrap();
        }
    }

    // A Service whose only backend is n3's pod, beside the demo ones
    // (backends on n1 and n2), as kube-proxy writes them on every node.
    let mut services = cluster::services(&lab);
    let far_ip = "10.96.0.110";
    services.push(Service {
        namespace: "default".into(),
        name: "far".into(),
        cluster_ip: far_ip.parse().unwrap(),
        ports: vec![ServicePort {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: 80,
            target_port: sluice_tests::lab::ECHO_PORT,
            node_port: None,
        }],
        external_traffic_policy_local: false,
        endpoints: vec![Endpoint { ip: c.ip.parse().unwrap(), node: n3.name.clone() }],
    });
    let cidr = sluice_tests::lab::CLUSTER_CIDR.parse().unwrap();
    for n in &lab.state.nodes {
        kube_proxy::apply(&n.netns, &services, &n.name, cidr).unwrap();
    }
    for _ in 0..5 {
        assert_eq!(tcp_text(&a.netns, far_ip, 80).as_deref(), Some("n3p1"), "n1's pod -> ClusterIP -> n3's pod");
    }
    assert_eq!(tcp_text(&n1.netns, far_ip, 80).as_deref(), Some("n3p1"), "node n1 -> ClusterIP -> n3's pod");
    // n3's pod to the demo Service: both backends are across the router.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..20 {
        seen.insert(tcp_text(&c.netns, DEMO_IP, 80).unwrap_or_else(|| "FAILED".into()));
        seen.insert(udp_text(&c.netns, DEMO_IP, 53).unwrap_or_else(|| "FAILED".into()));
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["n1p1", "n2p1"], "n3's pod -> {DEMO_IP} (TCP and UDP)");

    // n3's pod to the world (on n1's LAN, behind the router): masqueraded
    // to n3's address.
    let answer = tcp_text(&c.netns, WORLD_IP, WORLD_PORT).expect("n3's pod -> world");
    assert_eq!(parse_whoami(&answer).unwrap().1.to_string(), n3.ip, "{answer}");

    // Host <-> remote pod both ways, un-NATed, and nothing on the router
    // but VXLAN between node IPs: a pod's packets for another node's own
    // address are tunneled too.
    let router = lab.state.router_netns.clone().unwrap();
    let cap = Capture::start(&router, "r0", &["ip", "and", "not", "igmp"]).unwrap();
    assert!(tcp_probe(&n1.netns, &c.ip, &c.name), "node n1 -> n3's pod");
    let answer = tcp_text(&c.netns, &n1.ip, HOST_PORT).expect("n3's pod -> host server on n1");
    assert_eq!(parse_whoami(&answer).unwrap(), ("host-n1".to_string(), c.ip.parse().unwrap()), "{answer}");
    let answer = tcp_text(&a.netns, &n3.ip, HOST_PORT).expect("n1's pod -> host server on n3");
    assert_eq!(parse_whoami(&answer).unwrap(), ("host-n3".to_string(), a.ip.parse().unwrap()), "{answer}");
    assert!(ping(&n3.netns, &a.ip) && ping(&a.netns, &n3.ip), "ICMP node n3 <-> n1's pod");
    let text = cap.stop();
    for l in text.lines().filter(|l| l.starts_with(|c: char| c.is_ascii_digit())) {
        assert!(l.contains(".8472: OTV"), "not VXLAN on the router: {l}\n{text}");
    }

    // TTL as routed: two hops (this node, the peer node) on the native
    // path and through the tunnel alike, in both directions.
    assert_eq!(reply_ttl(&a.netns, &b.ip), 62, "native reply");
    assert_eq!(reply_ttl(&a.netns, &c.ip), 62, "tunneled reply");
    assert_eq!(arriving_ttl(&a, &b), "62", "native request");
    assert_eq!(arriving_ttl(&a, &c), "62", "tunneled request");
    assert_eq!(arriving_ttl(&c, &a), "62", "tunneled request, the other way");
}

#[test]
fn connectivity_test_shows_each_path_and_names_the_vxlan_hop_when_it_fails() {
    let lab = lab();
    let n3 = lab.state.nodes[2].clone();
    let row = |v: &serde_json::Value, class: &str, node: &str| {
        v.as_array().unwrap().iter().find(|x| x["target"]["class"] == class && x["target"]["node"] == node).cloned()
    };
    let (ok, v) = lab.connectivity_test(0, &[]).unwrap();
    assert!(ok, "{v:#}");
    for (class, node, path) in
        [("pod-to-pod", "n2", "native"), ("pod-to-pod", "n3", "vxlan"), ("host-to-pod", "n3", "vxlan")]
    {
        assert_eq!(row(&v, class, node).unwrap()["target"]["path"], path, "{class} {node}: {v:#}");
    }
    // The router drops VXLAN: n3 still answers on the node network (ICMP),
    // but nothing crosses the tunnel; the failure names the hop.
    let router = lab.state.router_netns.clone().unwrap();
    ns_exec(&router, &["iptables", "-I", "FORWARD", "-p", "udp", "--dport", "8472", "-j", "DROP"]).unwrap();
    let result = lab.connectivity_test(0, &[]);
    ns_exec(&router, &["iptables", "-D", "FORWARD", "-p", "udp", "--dport", "8472", "-j", "DROP"]).unwrap();
    let (ok, v) = result.unwrap();
    assert!(!ok, "{v:#}");
    let hop = format!("lost in the tunnel: VXLAN device sluice_vxlan -> {} UDP 8472: node n3 answers", n3.ip);
    for class in ["pod-to-pod", "host-to-pod", "pod-to-host"] {
        let r = row(&v, class, "n3").unwrap();
        assert_eq!(r["ok"], false, "{r}");
        let reason = r["reason"].as_str().unwrap();
        assert!(reason.starts_with(&hop), "{class}: {reason}");
    }
    let pod_to_pod = row(&v, "pod-to-pod", "n3").unwrap();
    assert!(pod_to_pod["reason"].as_str().unwrap().contains("counted nothing decapsulated"), "{pod_to_pod}");
    assert_eq!(row(&v, "pod-to-pod", "n2").unwrap()["ok"], true, "the native peer is unaffected: {v:#}");
    // The text output shows the path column.
    let node = &lab.state.nodes[0];
    let text = ns_exec(
        &node.netns,
        &[
            &bin("sluice-agent").display().to_string(),
            "connectivity-test",
            "--pin-dir",
            &node.pin_dir.display().to_string(),
            "--data-dir",
            &Lab::data_dir(node).display().to_string(),
        ],
    )
    .unwrap();
    let line = text.lines().find(|l| l.starts_with("pod-to-pod") && l.contains(" n3 ")).unwrap_or_default();
    assert!(line.contains(" vxlan ") && line.ends_with("ok"), "{text}");
}

#[test]
fn udp_8472_held_by_another_pod_networks_vxlan_device_is_named() {
    require_root();
    let mut lab = Lab::up(&LabOptions::new(1, 0, bin("sluice-agent").parent().unwrap().to_path_buf())).unwrap();
    let n1 = lab.state.nodes[0].clone();
    lab.kill_agent(0).unwrap();
    ns_exec(&n1.netns, &["ip", "link", "del", sluice_node::net::vxlan::DEVICE]).unwrap();
    // What Flannel's VXLAN backend makes.
    let flannel = ["link", "add", "flannel.1", "type", "vxlan", "id", "1", "local", &n1.ip, "dev", "eth0"];
    ns_exec(&n1.netns, &[&["ip"][..], &flannel, &["dstport", "8472", "nolearning"]].concat()).unwrap();
    ns_exec(&n1.netns, &["ip", "link", "set", "flannel.1", "up"]).unwrap();
    lab.start_agent(0).unwrap();
    let err = format!("{:#}", lab.wait_agent_ready(0).expect_err("the agent must refuse to start"));
    assert!(
        err.contains("cannot bring up VXLAN device sluice_vxlan: UDP 8472 is taken by VXLAN device flannel.1 (VNI 1)"),
        "{err}"
    );
    assert!(!err.contains("Address already in use"), "no raw netlink error: {err}");
    let links = ns_exec(&n1.netns, &["ip", "-o", "link"]).unwrap();
    assert!(!links.contains(sluice_node::net::vxlan::DEVICE), "the half-made device is removed: {links}");
    // Flannel gone: the agent starts.
    ns_exec(&n1.netns, &["ip", "link", "del", "flannel.1"]).unwrap();
    lab.start_agent(0).unwrap();
    lab.wait_agent_ready(0).unwrap();
}
