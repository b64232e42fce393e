//! Everything a cluster sends arrives (on the lab's cluster model: a world
//! on the LAN, host-network servers, kube-proxy's iptables rules for the
//! demo Services; see `sluice_tests::cluster`).
//!
//! Services through kube-proxy (ClusterIP over TCP and UDP, local and
//! remote backends, from pods and nodes), NodePorts from the world (both
//! traffic policies), the node's stack to and from pods on other nodes,
//! pods to the world (masqueraded) while pod-to-pod stays un-NATed,
//! long-lived flows across agent restarts, peers leaving and coming back,
//! and cleanup.
use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    time::{Duration, Instant},
};

use sluice_tests::{
    bin,
    capture::Capture,
    cluster::{
        self, parse_whoami, tcp_text, udp_text, DEMO_IP, DEMO_LOCAL_NODE_PORT, DEMO_NODE_PORT, HOST_PORT, STREAM_PORT,
        WORLD_IP, WORLD_PORT,
    },
    lab::{ns_exec, Lab, LabOptions},
    require_root,
};

fn cluster_lab(nodes: usize, pods: usize) -> Lab {
    require_root();
    let mut opts = LabOptions::new(nodes, pods, bin("sluice-agent").parent().unwrap().to_path_buf());
    opts.cluster_model = true;
    Lab::up(&opts).unwrap()
}

/// Backend names answering `count` TCP connections to the demo ClusterIP.
fn backends_seen(netns: &str, count: usize) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..count {
        let who = tcp_text(netns, DEMO_IP, 80).unwrap_or_else(|| "FAILED".into());
        *seen.entry(who).or_insert(0) += 1;
    }
    seen
}

#[test]
fn services_through_kube_proxy_from_pods_and_nodes() {
    let lab = cluster_lab(3, 2);
    let (n1, n2, n3) = (&lab.state.nodes[0], &lab.state.nodes[1], &lab.state.nodes[2]);
    // Backends: n1p1 (on n1) and n2p1 (on n2). A client on n1 has one local
    // and one remote backend; a client on n3 has two remote ones.
    let want: Vec<String> = vec!["n1p1".into(), "n2p1".into()];
    for client in [&n1.pods[1], &n3.pods[0]] {
        let seen = backends_seen(&client.netns, 100);
        assert_eq!(seen.keys().cloned().collect::<Vec<_>>(), want, "{} → {DEMO_IP}:80: {seen:?}", client.name);
        assert!(seen.values().all(|n| *n >= 10), "100 connections spread over both backends: {seen:?}");
        // UDP, DNS-like: socat's connected socket only takes replies from
        // the ClusterIP:port it asked, so an answer proves the reply was
        // translated back.
        let mut udp = BTreeMap::new();
        for _ in 0..30 {
            let who = udp_text(&client.netns, DEMO_IP, 53).unwrap_or_else(|| "FAILED".into());
            *udp.entry(who).or_insert(0) += 1;
        }
        assert_eq!(udp.keys().cloned().collect::<Vec<_>>(), want, "{} → {DEMO_IP}:53/udp: {udp:?}", client.name);
    }
    // The replies took the stack on the backends' side (the fast path would
    // have skipped conntrack): the counter moved.
    let s = lab.status(0).unwrap();
    assert!(s["forwards"]["stack_flow_reply"].as_u64().unwrap() > 0, "{s:#}");

    // Nodes to the ClusterIP (kube-proxy's OUTPUT rules), local and remote backends.
    for node in [n1, n3] {
        let seen = backends_seen(&node.netns, 30);
        assert_eq!(seen.keys().cloned().collect::<Vec<_>>(), want, "node {} → {DEMO_IP}:80: {seen:?}", node.name);
    }
    // The node's stack to a pod on another node, and a pod to a host-network
    // server on another node (how pods reach the API server): both un-NATed.
    assert!(sluice_tests::lab::tcp_probe(&n1.netns, &n2.pods[1].ip, "n2p2"), "node n1 → pod on n2");
    let answer = tcp_text(&n2.pods[1].netns, &n1.ip, HOST_PORT).expect("pod on n2 → host server on n1");
    let (who, saw) = parse_whoami(&answer).unwrap();
    assert_eq!((who.as_str(), saw.to_string()), ("host-n1", n2.pods[1].ip.clone()), "{answer}");
    // The whole matrix, as `cargo xtask lab up` prints it.
    let m = cluster::ClusterMatrix::probe(&lab);
    assert!(m.all_ok(), "{}", m.render());
}

/// What `cargo xtask lab up` proves, on its own and smaller (the guest
/// kernels run it, issue 26, where each probe takes seconds): two nodes, a
/// pod each, the cluster model; every pod and node reaches every pod,
/// every node's host server, the demo Service over TCP and UDP, and the
/// world.
#[test]
fn lab_up_reaches_every_path_of_the_matrix() {
    let lab = cluster_lab(2, 1);
    let m = cluster::ClusterMatrix::probe(&lab);
    eprint!("{}", m.render());
    assert_eq!(m.rows.len(), 4, "two pods and two nodes");
    assert_eq!(m.cells.len(), 4 * (4 - 1 + 2), "every source to every other pod and node, the Service and the world");
    assert!(m.all_ok(), "{}", m.render());
}

/// The first line a TCP server at `ip:port` sends, asked from `netns` out
/// of source port `from`.
fn tcp_text_from_port(netns: &str, ip: &str, port: u16, from: u16) -> Option<String> {
    let target = format!("TCP:{ip}:{port},connect-timeout=2,sourceport={from},reuseaddr");
    let out =
        sluice_tests::try_run(&mut sluice_tests::lab::ns_cmd(netns, &["timeout", "4", "socat", "-T1", "-", &target]))
            .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}

#[test]
fn a_direct_connection_reusing_an_ended_service_flows_tuple_takes_the_fast_path() {
    // A pod reaches a backend through kube-proxy's DNAT, the connection
    // ends, then the same pod connects to that backend directly from the
    // same source port: the stack's record of the old flow must not send
    // the new connection's replies to conntrack (which would drop them).
    let lab = cluster_lab(3, 1);
    let client = lab.state.nodes[2].pods[0].clone();
    let from = 45123;
    let mut tried = 0;
    let backend = loop {
        tried += 1;
        let who = tcp_text_from_port(&client.netns, DEMO_IP, 80, from).expect("through the Service");
        // A backend on another node than the client's.
        if let Some((_, pod)) = lab.pods().into_iter().find(|(n, p)| p.name == who && n.name != "n3") {
            break pod.clone();
        }
        assert!(tried < 10, "no backend answered");
        std::thread::sleep(Duration::from_millis(100));
    };
    std::thread::sleep(Duration::from_millis(300));
    let direct = tcp_text_from_port(&client.netns, &backend.ip, sluice_tests::lab::ECHO_PORT, from);
    assert_eq!(direct.as_deref(), Some(backend.name.as_str()), "the direct connection from port {from} was answered");
}

#[test]
fn nodeports_from_the_world_with_both_traffic_policies() {
    let lab = cluster_lab(3, 1);
    let world = cluster::world_netns(&lab.state.id);
    let (n1, n3) = (&lab.state.nodes[0], &lab.state.nodes[2]);
    // Cluster policy: on a node with a local backend and on one without.
    for node in [n1, n3] {
        let mut seen = BTreeMap::new();
        for _ in 0..20 {
            let who = tcp_text(&world, &node.ip, DEMO_NODE_PORT).unwrap_or_else(|| "FAILED".into());
            *seen.entry(who).or_insert(0) += 1;
        }
        assert_eq!(
            seen.keys().cloned().collect::<Vec<_>>(),
            vec!["n1p1".to_string(), "n2p1".to_string()],
            "world → {}:{DEMO_NODE_PORT}: {seen:?}",
            node.name
        );
    }
    // Local policy: the backend sees the world's own address (no SNAT)...
    let answer = tcp_text(&world, &n1.ip, DEMO_LOCAL_NODE_PORT).expect("world → n1 local NodePort");
    let (who, saw) = parse_whoami(&answer).unwrap();
    assert_eq!((who.as_str(), saw.to_string().as_str()), ("n1p1", WORLD_IP), "{answer}");
    // ...and a node without a local backend drops it, as kube-proxy does.
    assert_eq!(tcp_text(&world, &n3.ip, DEMO_LOCAL_NODE_PORT), None, "n3 has no local endpoint");
}

#[test]
fn pods_reach_the_world_masqueraded_and_pod_to_pod_stays_unnated() {
    let mut lab = cluster_lab(2, 1);
    let (n1, n2) = (lab.state.nodes[0].clone(), lab.state.nodes[1].clone());
    // As Docker leaves a node: FORWARD's policy is DROP. An accept in
    // another nftables table would not override it; sluice's chain does.
    for n in [&n1, &n2] {
        ns_exec(&n.netns, &["iptables", "-P", "FORWARD", "DROP"]).unwrap();
    }
    let pod = &n1.pods[0];
    assert!(sluice_tests::lab::ping(&pod.netns, WORLD_IP), "pod → world ICMP");
    let answer = tcp_text(&pod.netns, WORLD_IP, WORLD_PORT).expect("pod → world TCP");
    let (_, saw) = parse_whoami(&answer).unwrap();
    assert_eq!(saw.to_string(), n1.ip, "the world sees the node's address: {answer}");
    // Through a ClusterIP too, with the policy still DROP.
    assert!(tcp_text(&pod.netns, DEMO_IP, 80).is_some(), "pod → ClusterIP with FORWARD policy DROP");
    // Pod to pod across nodes on the LAN: the pods' own addresses.
    let cap = Capture::start(&lab.state.lan_netns, "br0", &["icmp"]).unwrap();
    assert!(sluice_tests::lab::ping(&pod.netns, &n2.pods[0].ip));
    let seen = cap.stop();
    assert!(
        seen.contains(&format!("{} > {}", pod.ip, n2.pods[0].ip)),
        "capture on the LAN shows pod addresses:\n{seen}"
    );
    // --masquerade=false: the table goes, and the world (which routes nothing
    // to pod CIDRs) can no longer answer.
    lab.state.extra_agent_args = vec!["--masquerade=false".into()];
    lab.kill_agent(0).unwrap();
    lab.start_agent(0).unwrap();
    lab.wait_agent_ready(0).unwrap();
    let tables = ns_exec(&n1.netns, &["nft", "list", "tables"]).unwrap();
    assert!(!tables.contains("ip sluice"), "{tables}");
    assert_eq!(tcp_text(&pod.netns, WORLD_IP, WORLD_PORT), None, "unmasqueraded, the world cannot answer");
    // And back on.
    lab.state.extra_agent_args.clear();
    lab.kill_agent(0).unwrap();
    lab.start_agent(0).unwrap();
    lab.wait_agent_ready(0).unwrap();
    assert!(tcp_text(&pod.netns, WORLD_IP, WORLD_PORT).is_some());
}

/// A TCP connection opened from inside `netns` (the socket stays there).
fn connect_in(netns: &str, addr: SocketAddr) -> TcpStream {
    let path = Path::new("/run/netns").join(netns);
    let s =
        sluice_node::net::netns::run_in(&path, move || Ok(TcpStream::connect_timeout(&addr, Duration::from_secs(2))?))
            .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s
}

/// Send a numbered line and read it back; false on any error.
fn round_trip(s: &mut TcpStream, r: &mut BufReader<TcpStream>, n: usize) -> bool {
    let line = format!("line {n}\n");
    if s.write_all(line.as_bytes()).is_err() {
        return false;
    }
    let mut back = String::new();
    r.read_line(&mut back).is_ok() && back == line
}

#[test]
fn long_lived_flows_through_a_clusterip_and_to_the_world_survive_agent_restarts() {
    let mut lab = cluster_lab(2, 2);
    let client = lab.state.nodes[0].pods[1].clone();
    let mut flows: Vec<(&str, TcpStream, BufReader<TcpStream>)> = Vec::new();
    for (name, addr) in [
        ("clusterip", SocketAddr::from((DEMO_IP.parse::<std::net::Ipv4Addr>().unwrap(), STREAM_PORT))),
        ("world", SocketAddr::from((WORLD_IP.parse::<std::net::Ipv4Addr>().unwrap(), STREAM_PORT))),
    ] {
        let s = connect_in(&client.netns, addr);
        let r = BufReader::new(s.try_clone().unwrap());
        flows.push((name, s, r));
    }
    let mut n = 0;
    let mut check = |flows: &mut Vec<(&str, TcpStream, BufReader<TcpStream>)>, when: &str| {
        for (name, s, r) in flows.iter_mut() {
            n += 1;
            assert!(round_trip(s, r, n), "{name} flow broke {when}");
        }
    };
    check(&mut flows, "before the restart");
    for i in 0..2 {
        lab.kill_agent(i).unwrap();
    }
    // Agents down: the datapath and the netfilter state carry on.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        check(&mut flows, "with the agents down");
        std::thread::sleep(Duration::from_millis(100));
    }
    for i in 0..2 {
        lab.start_agent(i).unwrap();
    }
    for i in 0..2 {
        lab.wait_agent_ready(i).unwrap();
    }
    for _ in 0..10 {
        check(&mut flows, "after the restart");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn kernel_routes(netns: &str) -> String {
    ns_exec(netns, &["ip", "route", "show", "proto", "83"]).unwrap()
}

fn map_routes(lab: &Lab, i: usize) -> Vec<String> {
    lab.status(i).unwrap()["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["podCIDR"].as_str().unwrap().to_string())
        .collect()
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(10), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_peer_leaving_takes_its_kernel_route_and_map_entry_and_both_come_back() {
    let lab = cluster_lab(3, 0);
    let n1 = lab.state.nodes[0].clone();
    let n2_cidr = lab.state.nodes[1].pod_cidr.clone();
    let want = format!("{n2_cidr} via {} dev eth0", lab.state.nodes[1].ip);
    assert!(kernel_routes(&n1.netns).contains(&want), "{}", kernel_routes(&n1.netns));
    let without: Vec<_> = lab.state.nodes.iter().filter(|n| n.name != "n2").collect();
    lab.write_peers_of(&without).unwrap();
    wait_for("n2's routes to go", || {
        !kernel_routes(&n1.netns).contains(&n2_cidr) && !map_routes(&lab, 0).contains(&n2_cidr)
    });
    assert!(kernel_routes(&n1.netns).contains(&lab.state.nodes[2].pod_cidr), "n3's route stays");
    lab.write_peers().unwrap();
    wait_for("n2's routes to return", || {
        kernel_routes(&n1.netns).contains(&want) && map_routes(&lab, 0).contains(&n2_cidr)
    });
    // Only sluice's routes were touched: the LAN's own route is intact.
    let all = ns_exec(&n1.netns, &["ip", "route"]).unwrap();
    assert!(all.contains("172.30.0.0/24 dev eth0 proto kernel"), "{all}");
}

#[test]
fn cleanup_leaves_no_route_rule_or_table() {
    let mut lab = cluster_lab(2, 1);
    let n1 = lab.state.nodes[0].clone();
    // Before: sluice's route, table and chain are there.
    assert!(!kernel_routes(&n1.netns).is_empty());
    assert!(ns_exec(&n1.netns, &["nft", "list", "tables"]).unwrap().contains("ip sluice"));
    assert!(ns_exec(&n1.netns, &["iptables", "-S", "FORWARD"]).unwrap().contains("SLUICE-FORWARD"));
    lab.kill_agent(0).unwrap();
    lab.cleanup(0).unwrap();
    assert_eq!(kernel_routes(&n1.netns).trim(), "", "no proto 83 route left");
    assert!(!ns_exec(&n1.netns, &["nft", "list", "tables"]).unwrap().contains("ip sluice"));
    let forward = ns_exec(&n1.netns, &["iptables", "-S"]).unwrap();
    assert!(!forward.contains("SLUICE"), "{forward}");
    // kube-proxy's own rules are not ours to remove.
    let nat = ns_exec(&n1.netns, &["iptables-save", "-t", "nat"]).unwrap();
    assert!(nat.contains("KUBE-SERVICES"), "{nat}");
}
