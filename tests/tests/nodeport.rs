//! Services from outside the cluster, translated per packet at the uplink
//! (issue 27, `from_uplink` / `NAT4`): a lab with
//! `--kube-proxy-replacement=true` and no kube-proxy rules at all, and a
//! world namespace on the node network that is not a node. A NodePort, an
//! external IP or a LoadBalancer IP works from the world only if the
//! datapath translates it, and the answer reaches the client only if it
//! comes back from the address the client used (the TCP handshake and a
//! connected UDP socket take nothing else).
use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use sluice_tests::{
    cluster,
    lab::{ns_cmd, Lab},
    require_root,
    services::{
        self, assert_no_kube_proxy_rules, oks, ready, service, slice, start_pod_ipv6_servers, tally, wait_backends,
        wait_world_answer, world_client, Outcome,
    },
};

fn node_ip(lab: &Lab, i: usize) -> String {
    lab.state.nodes[i].ip.split('/').next().unwrap().to_string()
}

/// The uplink's NAT4 counters of node `i` (`status --services`).
fn nat4(lab: &Lab, i: usize) -> BTreeMap<String, u64> {
    let v = services::service_status(lab, i).unwrap();
    v["services"]["uplink"]["nat4"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0))).collect())
        .unwrap_or_default()
}

/// A NodePort Service `np` (80/TCP → 7777, the pods' name; 53/UDP → the
/// pods' UDP server), backed by `backends` (node name, pod IP). Returns
/// (TCP node port, UDP node port).
fn publish_node_port(lab: &Lab, backends: &[(&str, &str)]) -> (u16, u16) {
    let api = lab.api.as_ref().expect("kubernetes lab");
    let svc = service("np", "10.96.0.80", &[("http", 80, 7777, "TCP"), ("dns", 53, services::UDP_PORT, "UDP")])
        .type_("NodePort");
    let ports = (svc.node_port(0), svc.node_port(1));
    api.upsert_service(svc.build());
    api.upsert_endpoint_slice(
        slice("np", &[("http", 7777, "TCP"), ("dns", services::UDP_PORT, "UDP")], &ready(backends)).build(),
    );
    let tcp: Vec<String> = backends.iter().map(|(_, ip)| format!("{ip}:7777")).collect();
    let udp: Vec<String> = backends.iter().map(|(_, ip)| format!("{ip}:{}", services::UDP_PORT)).collect();
    wait_backends(lab, "*", ports.0, "TCP", &tcp).unwrap();
    wait_backends(lab, "*", ports.1, "UDP", &udp).unwrap();
    ports
}

/// Slice 1: the world reaches a NodePort on the node that has its one
/// backend, over TCP and UDP; the backend sees the world's own address
/// (DNAT only), and every answer comes back from `nodeIP:nodePort`.
#[test]
fn world_to_a_node_port_reaches_the_local_backend_over_tcp_and_udp() {
    require_root();
    let mut lab = services::lab(2, 1).unwrap();
    let world = cluster::add_world(&mut lab).unwrap();
    assert_no_kube_proxy_rules(&lab);
    let (n1, pod) = (lab.state.nodes[0].clone(), lab.state.nodes[0].pods[0].clone());
    let (tcp_np, udp_np) = publish_node_port(&lab, &[(&n1.name, &pod.ip)]);
    let ip1 = node_ip(&lab, 0);

    let out = world_client(&world, &["tcp", &ip1, &tcp_np.to_string(), "20"]);
    assert_eq!(oks(&out), 20, "world → {ip1}:{tcp_np}: {:?}", tally(&out));
    assert!(
        out.iter().all(|o| matches!(o, Outcome::Ok { peer, answer, .. }
        if peer == &format!("{ip1}:{tcp_np}") && answer == &pod.name)),
        "{out:?}"
    );
    let out = world_client(&world, &["udp", &ip1, &udp_np.to_string(), "20"]);
    assert_eq!(oks(&out), 20, "world → {ip1}:{udp_np}/UDP: {:?}", tally(&out));
    assert!(out.iter().all(|o| o.answer() == Some(pod.name.as_str())), "{out:?}");

    // The backend saw the world's address: the whoami server on 7778.
    let api = lab.api.as_ref().unwrap();
    let who = service("who", "10.96.0.81", &[("http", 81, 7778, "TCP")]).type_("NodePort");
    let who_np = who.node_port(0);
    api.upsert_service(who.build());
    api.upsert_endpoint_slice(slice("who", &[("http", 7778, "TCP")], &ready(&[(&n1.name, &pod.ip)])).build());
    wait_backends(&lab, "*", who_np, "TCP", &[format!("{}:7778", pod.ip)]).unwrap();
    let text = cluster::tcp_text(&world, &ip1, who_np).expect("whoami through the NodePort");
    assert_eq!(
        cluster::parse_whoami(&text).map(|(_, ip)| ip.to_string()),
        Some(cluster::WORLD_IP.to_string()),
        "{text}"
    );

    let c = nat4(&lab, 0);
    assert!(c["new_local"] >= 41 && c["reversed"] >= 41, "{c:?}");
}

/// Slice 2: 200 connections from the world, 100 to each node's address,
/// spread over backends on both nodes: a node SNATs what it sends to the
/// other node's backend (its own address and a port of the SNAT range)
/// and sends the answer back from the address the client used. Node 3
/// has no backend at all: everything it takes in goes to the others.
#[test]
fn world_to_node_ports_spreads_200_connections_over_backends_on_two_nodes() {
    require_root();
    let mut lab = services::lab(3, 1).unwrap();
    let world = cluster::add_world(&mut lab).unwrap();
    assert_no_kube_proxy_rules(&lab);
    let backends: Vec<(String, String)> =
        lab.state.nodes.iter().take(2).map(|n| (n.name.clone(), n.pods[0].ip.clone())).collect();
    let refs: Vec<(&str, &str)> = backends.iter().map(|(n, ip)| (n.as_str(), ip.as_str())).collect();
    let (tcp_np, udp_np) = publish_node_port(&lab, &refs);
    let names: Vec<String> = lab.state.nodes.iter().take(2).map(|n| n.pods[0].name.clone()).collect();

    let mut total = 0;
    for i in [0, 2] {
        // Node 1 has a local backend, node 3 none.
        let ip = node_ip(&lab, i);
        let out = world_client(&world, &["tcp", &ip, &tcp_np.to_string(), "100"]);
        assert_eq!(oks(&out), 100, "world → {ip}:{tcp_np}: {:?}", tally(&out));
        assert!(out.iter().all(|o| matches!(o, Outcome::Ok { peer, .. } if peer == &format!("{ip}:{tcp_np}"))));
        let t = tally(&out);
        assert!(names.iter().all(|n| t.get(n).copied().unwrap_or(0) >= 15), "through {ip}: {t:?}");
        total += oks(&out);
        let out = world_client(&world, &["udp", &ip, &udp_np.to_string(), "20"]);
        assert_eq!(oks(&out), 20, "world → {ip}:{udp_np}/UDP: {:?}", tally(&out));
    }
    assert_eq!(total, 200);
    let (c1, c3) = (nat4(&lab, 0), nat4(&lab, 2));
    assert!(c1["new_remote"] >= 15 && c1["new_local"] >= 15, "node 1: {c1:?}");
    assert!(c3["new_remote"] >= 120 && c3["new_local"] == 0, "node 3: {c3:?}");
    assert_eq!(c3["port_exhausted"] + c3["insert_failed"], 0, "{c3:?}");
}

/// Closed connections give their SNAT ports back: 80 short connections
/// from the world (each closed by FINs, one every 150 ms) through node 1
/// to the one backend on node 2, with a SNAT range of 40 ports. Every one
/// succeeds: a closed connection's port goes to a new one
/// (`port_taken_over`), an open one's never. Before FIN/RST were
/// tracked, the 41st and every later connection was dropped
/// (`port_exhausted`) until the GC's hours-long timeout.
#[test]
fn many_short_connections_through_a_small_snat_range_are_none_refused() {
    require_root();
    let mut lab = services::lab_with_agent_args(2, 1, &["--snat-port-range=61000-61039"]).unwrap();
    let world = cluster::add_world(&mut lab).unwrap();
    let (n2, pod) = (lab.state.nodes[1].clone(), lab.state.nodes[1].pods[0].clone());
    let (tcp_np, _) = publish_node_port(&lab, &[(&n2.name, &pod.ip)]);
    let ip1 = node_ip(&lab, 0);
    let out = world_client(&world, &["tcp", &ip1, &tcp_np.to_string(), "80", "150"]);
    assert_eq!(oks(&out), 80, "world → {ip1}:{tcp_np} SNATed to node 2: {:?}", tally(&out));
    assert!(out.iter().all(|o| o.answer() == Some(pod.name.as_str())), "{out:?}");
    let c = nat4(&lab, 0);
    assert!(c["new_remote"] >= 80, "{c:?}");
    // 80 connections, 40 ports: at least 40 took a closed one's, less
    // what a GC pass (every 30 s, closed pairs idle 10 s) freed meanwhile.
    assert!(c["port_taken_over"] >= 20, "{c:?}");
    assert_eq!(c["port_exhausted"], 0, "{c:?}");
}

/// Slice 3, `externalTrafficPolicy: Local`: from the world, the node with
/// a backend sends the client to it with the client's own address kept;
/// the node without one drops the connection (counted), never sends it
/// to the other node. In-cluster clients of the same NodePort still get
/// every endpoint (the socket load balancer's, unchanged).
#[test]
fn external_traffic_policy_local_keeps_the_client_address_and_a_node_without_a_backend_drops() {
    require_root();
    let mut lab = services::lab(2, 1).unwrap();
    let world = cluster::add_world(&mut lab).unwrap();
    assert_no_kube_proxy_rules(&lab);
    let api = lab.api.as_ref().unwrap();
    let (n1, pod) = (lab.state.nodes[0].clone(), lab.state.nodes[0].pods[0].clone());
    let svc = service("local", "10.96.0.82", &[("http", 82, 7778, "TCP")]).type_("NodePort").external_traffic_local();
    let np = svc.node_port(0);
    api.upsert_service(svc.build());
    api.upsert_endpoint_slice(slice("local", &[("http", 7778, "TCP")], &ready(&[(&n1.name, &pod.ip)])).build());
    wait_backends(&lab, "*", np, "TCP", &[format!("{}:7778", pod.ip)]).unwrap();
    let (ip1, ip2) = (node_ip(&lab, 0), node_ip(&lab, 1));

    for _ in 0..5 {
        let text = cluster::tcp_text(&world, &ip1, np).expect("whoami through the ETP Local NodePort");
        let (who, saw) = cluster::parse_whoami(&text).unwrap();
        assert_eq!((who.as_str(), saw.to_string().as_str()), (pod.name.as_str(), cluster::WORLD_IP), "{text}");
    }
    let out = world_client(&world, &["tcp", &ip2, &np.to_string(), "3"]);
    assert_eq!(oks(&out), 0, "node 2 has no backend: {out:?}");
    // Each connection's SYN and its retransmissions, all dropped.
    let drops = sluice_tests::lab::counter(&lab, 1, "drops", "service_no_local_endpoints");
    assert!(drops >= 3, "{drops}");
    let c2 = nat4(&lab, 1);
    assert_eq!(c2["new_remote"] + c2["new_local"], 0, "{c2:?}");
}

/// `sessionAffinity: ClientIP` from outside (`LB4_SVC_AFFINITY`), per
/// Service port as kube-proxy keeps it: backends on two nodes; 40
/// connections of the world to node 1 (through the NodePort on its
/// address, the LoadBalancer IP and the external IP, both routed to that
/// node, and the NodePort again) all reach one backend (the server names
/// its pod), picked once; 30 through node 2's NodePort reach one backend
/// too, node 2's own choice. The same backends behind a Service without
/// affinity: both answer.
#[test]
fn client_ip_affinity_sends_every_world_connection_to_one_backend() {
    require_root();
    let mut lab = services::lab(2, 1).unwrap();
    let world = cluster::add_world(&mut lab).unwrap();
    assert_no_kube_proxy_rules(&lab);
    let api = lab.api.as_ref().unwrap();
    let pods: Vec<(String, String, String)> =
        lab.state.nodes.iter().map(|n| (n.name.clone(), n.pods[0].ip.clone(), n.pods[0].name.clone())).collect();
    let endpoints: Vec<(&str, &str)> = pods.iter().map(|(n, ip, _)| (n.as_str(), ip.as_str())).collect();
    let want: Vec<String> = pods.iter().map(|(_, ip, _)| format!("{ip}:7777")).collect();
    let mut node_ports = Vec::new();
    // The sticky Service's LoadBalancer ingress IP and external IP.
    let (lb_ip, external_ip) = ("198.51.100.88", "192.0.2.88");
    // Ports 88 and 89: the lab's API server derives the NodePort from it.
    for (name, cluster_ip, port, affinity) in [("sticky", "10.96.0.88", 88, true), ("spread", "10.96.0.89", 89, false)]
    {
        let mut svc = service(name, cluster_ip, &[("http", port, 7777, "TCP")]).type_("NodePort");
        if affinity {
            svc = svc
                .client_ip_affinity(Some(600))
                .type_("LoadBalancer")
                .load_balancer_ips(&[lb_ip])
                .external_ips(&[external_ip]);
        }
        let np = svc.node_port(0);
        node_ports.push(np);
        api.upsert_service(svc.build());
        api.upsert_endpoint_slice(slice(name, &[("http", 7777, "TCP")], &ready(&endpoints)).build());
        wait_backends(&lab, "*", np, "TCP", &want).unwrap();
    }
    let ip1 = node_ip(&lab, 0);
    for addr in [lb_ip, external_ip] {
        wait_backends(&lab, addr, 88, "TCP", &want).unwrap();
        // The world reaches them through node 1, as a load balancer (or
        // the network, for an external IP) would send them.
        sluice_tests::lab::ns_exec(&world, &["ip", "route", "replace", &format!("{addr}/32"), "via", &ip1]).unwrap();
    }
    let np = node_ports[0].to_string();
    let mut through_node1: BTreeMap<String, usize> = BTreeMap::new();
    for (what, dst, port) in [
        ("NodePort", ip1.as_str(), np.as_str()),
        ("LB IP", lb_ip, "88"),
        ("external IP", external_ip, "88"),
        ("NodePort", &ip1, &np),
    ] {
        let out = world_client(&world, &["tcp", dst, port, "10"]);
        assert_eq!(oks(&out), 10, "world → {what} {dst}:{port} (affinity): {:?}", tally(&out));
        for (pod, n) in tally(&out) {
            *through_node1.entry(pod).or_default() += n;
        }
    }
    let c = nat4(&lab, 0);
    assert_eq!(
        (through_node1.len(), c["affinity_picked"], c["affinity_reused"]),
        (1, 1, 39),
        "with ClientIP affinity, one backend for the Service port through the NodePort, the LB IP and the external IP, \
         picked once: {through_node1:?} (NAT4 counters of node 1 {c:?})"
    );
    let ip2 = node_ip(&lab, 1);
    let out = world_client(&world, &["tcp", &ip2, &np, "30"]);
    assert_eq!(oks(&out), 30, "world → {ip2}:{np} (affinity): {:?}", tally(&out));
    let (t, c) = (tally(&out), nat4(&lab, 1));
    assert_eq!(t.len(), 1, "with ClientIP affinity through {ip2}, one backend: {t:?} (NAT4 counters {c:?})");
    assert!(c["affinity_reused"] >= 29 && c["affinity_picked"] >= 1, "node 2: {c:?}");
    let out = world_client(&world, &["tcp", &ip1, &node_ports[1].to_string(), "30"]);
    assert_eq!(oks(&out), 30, "world → {ip1}:{} (no affinity): {:?}", node_ports[1], tally(&out));
    let t = tally(&out);
    assert!(pods.iter().all(|(_, _, pod)| t.get(pod).copied().unwrap_or(0) >= 3), "without affinity both: {t:?}");
}

/// Fragments of a UDP datagram through a NodePort (`LB4_FRAGS`): the world
/// sends 50 datagrams of 3,000 bytes (its kernel cuts each into three
/// fragments at MTU 1500) through node 1's address, to UDP echo servers in
/// pods on node 1 (DNAT) and node 2 (DNAT and SNAT); each backend's answer
/// (name and the datagram, fragmented by the pod's kernel) comes back
/// whole, and both backends answer. Without the fragment path only the
/// first fragment of each reaches a backend: every datagram times out.
#[test]
fn fragmented_udp_datagrams_through_a_node_port_reach_one_backend_and_come_back_whole() {
    require_root();
    let mut lab = services::lab(2, 1).unwrap();
    let world = cluster::add_world(&mut lab).unwrap();
    assert_no_kube_proxy_rules(&lab);
    let backends: Vec<(String, String)> =
        lab.state.nodes.iter().map(|n| (n.name.clone(), n.pods[0].ip.clone())).collect();
    let refs: Vec<(&str, &str)> = backends.iter().map(|(n, ip)| (n.as_str(), ip.as_str())).collect();
    let (_, udp_np) = publish_node_port(&lab, &refs);
    let ip1 = node_ip(&lab, 0);
    let out = world_client(&world, &["udp-big", &ip1, &udp_np.to_string(), "50", "3000"]);
    let t = tally(&out);
    assert_eq!(oks(&out), 50, "world → {ip1}:{udp_np}/UDP, 3,000-byte datagrams: {t:?} {:?}", nat4(&lab, 0));
    let names: Vec<&str> = lab.state.nodes.iter().map(|n| n.pods[0].name.as_str()).collect();
    assert!(names.iter().all(|n| t.get(*n).copied().unwrap_or(0) >= 5), "both backends: {t:?}");
    let c = nat4(&lab, 0);
    // Per datagram: the request's first fragment and the answer's, the
    // request's two later ones and the answer's (at least two: the pod's
    // MTU is below the uplink's).
    assert!(c["fragment_first"] >= 100 && c["fragment_forwarded"] >= 200, "{c:?}");
}

/// A Service without endpoints, from the world, is refused at once as by
/// kube-proxy's REJECT: `connect()` fails with `ECONNREFUSED` (the
/// uplink's TCP RST) and a connected UDP socket gets `ECONNREFUSED` (its
/// ICMP port unreachable), each well within one client timeout, and every
/// refusal is counted (`service_no_endpoints`). Dropped instead, each
/// attempt waits out the client's 2 s timeout.
#[test]
fn world_to_a_node_port_without_endpoints_is_refused_at_once_over_tcp_and_udp() {
    require_root();
    let mut lab = services::lab(1, 1).unwrap();
    let world = cluster::add_world(&mut lab).unwrap();
    assert_no_kube_proxy_rules(&lab);
    let api = lab.api.as_ref().unwrap();
    let svc = service("none", "10.96.0.84", &[("http", 84, 7777, "TCP"), ("dns", 53, services::UDP_PORT, "UDP")])
        .type_("NodePort");
    let (tcp_np, udp_np) = (svc.node_port(0), svc.node_port(1));
    api.upsert_service(svc.build());
    api.upsert_endpoint_slice(slice("none", &[("http", 7777, "TCP"), ("dns", services::UDP_PORT, "UDP")], &[]).build());
    wait_backends(&lab, "*", tcp_np, "TCP", &[]).unwrap();
    wait_backends(&lab, "*", udp_np, "UDP", &[]).unwrap();
    let ip1 = node_ip(&lab, 0);
    let before = sluice_tests::lab::counter(&lab, 0, "drops", "service_no_endpoints");

    for (mode, port) in [("tcp", tcp_np), ("udp", udp_np)] {
        let start = std::time::Instant::now();
        let out = world_client(&world, &[mode, &ip1, &port.to_string(), "5"]);
        let took = start.elapsed();
        assert_eq!(out.len(), 5, "{mode}: {out:?}");
        assert!(
            out.iter().all(|o| matches!(o, Outcome::Err(e) if e == "ECONNREFUSED")),
            "world → {ip1}:{port}/{mode} without endpoints: {out:?}"
        );
        // Five attempts, each with a 2 s timeout: refused, not timed out
        // (python's start is most of this).
        assert!(took < std::time::Duration::from_secs(2), "{mode}: 5 refusals took {took:?}");
    }
    let refused = sluice_tests::lab::counter(&lab, 0, "drops", "service_no_endpoints") - before;
    assert!(refused >= 10, "refusals counted: {refused}");
}

/// A backend leaving a UDP NodePort takes its `NAT4` connections with it
/// (kube-proxy's conntrack cleanup for UDP): a world client's connected
/// socket, sending every 50 ms, which would keep its pair alive forever
/// and so keep reaching the removed backend (still running, still
/// answering), gets the remaining backend's answers from its next
/// datagrams on.
#[test]
fn a_backend_removed_from_a_udp_node_port_takes_its_world_connections_with_it() {
    backend_removed_from_a_udp_node_port(false);
}

/// The same over IPv6 (issue 28): the world's pair in `NAT6` goes with the
/// IPv6 backend its IPv6 NodePort lost.
#[test]
fn a_backend_removed_from_an_ipv6_udp_node_port_takes_its_world_connections_with_it() {
    backend_removed_from_a_udp_node_port(true);
}

fn backend_removed_from_a_udp_node_port(ipv6: bool) {
    require_root();
    let mut lab = if ipv6 { services::dual_stack_lab(2, 1) } else { services::lab(2, 1) }.unwrap();
    let world = cluster::add_world(&mut lab).unwrap();
    if ipv6 {
        start_pod_ipv6_servers(&mut lab);
    }
    let api = lab.api.as_ref().unwrap();
    let (n1, a) = (lab.state.nodes[0].clone(), lab.state.nodes[0].pods[0].clone());
    let (n2, b) = (lab.state.nodes[1].clone(), lab.state.nodes[1].pods[0].clone());
    let address = |p: &sluice_tests::lab::Pod| if ipv6 { p.ip6.clone().expect("dual-stack pod") } else { p.ip.clone() };
    let backend = |p: &sluice_tests::lab::Pod| {
        if ipv6 {
            format!("[{}]:{}", address(p), services::UDP_PORT)
        } else {
            format!("{}:{}", address(p), services::UDP_PORT)
        }
    };
    let mut svc = service("moving", "10.96.0.85", &[("dns", 53, services::UDP_PORT, "UDP")]).type_("NodePort");
    if ipv6 {
        svc = svc.cluster_ips(&["10.96.0.85", "fd00:96::85"]);
    }
    let np = svc.node_port(0);
    api.upsert_service(svc.build());
    let ports = [("dns", services::UDP_PORT, "UDP")];
    let publish = |node: &str, pod: &sluice_tests::lab::Pod| {
        let mut s = slice("moving", &ports, &ready(&[(node, &address(pod))]));
        if ipv6 {
            s.name = "moving-v6".into();
            s.address_type = "IPv6".into();
        }
        api.upsert_endpoint_slice(s.build());
    };
    publish(&n1.name, &a);
    wait_backends(&lab, "*", np, "UDP", &[backend(&a)]).unwrap();
    let ip1 = if ipv6 { n1.ip6.clone().expect("dual-stack node") } else { node_ip(&lab, 0) };
    let mut all = vec!["python3", "-c", services::CLIENT];
    let np_s = np.to_string();
    all.extend_from_slice(&["udp-stream", &ip1, &np_s, "6"]);
    let stream = ns_cmd(&world, &all).stdout(std::process::Stdio::piped()).spawn().unwrap();
    // The stream is through (its pair written) once a's answers come.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    publish(&n2.name, &b);
    wait_backends(&lab, "*", np, "UDP", &[backend(&b)]).unwrap();
    let (outcomes, text) = services::finish(stream).unwrap();
    let answers: Vec<&str> = outcomes.iter().filter_map(|o| o.answer()).collect();
    assert!(answers.first() == Some(&a.name.as_str()), "the stream began at a: {text}");
    // From the first answer of b on, b only; and most of the stream's
    // last 3 s (about 60 datagrams) came after the switch.
    let switched = answers.iter().position(|n| *n == b.name).unwrap_or_else(|| panic!("never reached b: {text}"));
    assert!(answers[switched..].iter().all(|n| *n == b.name), "{text}");
    assert!(
        answers.len() - switched >= 30,
        "b answered only {} of {}: {text}",
        answers.len() - switched,
        answers.len()
    );
}

/// `loadBalancerSourceRanges`: from the world (172.30.0.250), the
/// LoadBalancer IP of a Service whose ranges hold the world answers; that
/// of a Service whose ranges do not is dropped (counted
/// `load_balancer_source_range`), while its NodePort still answers the
/// world (kube-proxy's iptables mode checks the ingress IPs only).
#[test]
fn load_balancer_source_ranges_admit_the_world_only_where_they_hold_it() {
    require_root();
    let mut lab = services::lab(1, 1).unwrap();
    let world = cluster::add_world(&mut lab).unwrap();
    assert_no_kube_proxy_rules(&lab);
    let api = lab.api.as_ref().unwrap();
    let (n1, pod) = (lab.state.nodes[0].clone(), lab.state.nodes[0].pods[0].clone());
    let ip1 = node_ip(&lab, 0);
    let mut node_ports = Vec::new();
    for (name, cluster_ip, lb_ip, ranges) in [
        ("open", "10.96.0.86", "198.51.100.86", [format!("{}/32", cluster::WORLD_IP), "203.0.113.0/24".into()]),
        ("closed", "10.96.0.87", "198.51.100.87", ["203.0.113.0/24".into(), "10.0.0.0/8".into()]),
    ] {
        let ranges: Vec<&str> = ranges.iter().map(String::as_str).collect();
        let svc = service(name, cluster_ip, &[("http", 80, 7777, "TCP")])
            .type_("LoadBalancer")
            .load_balancer_ips(&[lb_ip])
            .source_ranges(&ranges);
        node_ports.push(svc.node_port(0));
        api.upsert_service(svc.build());
        api.upsert_endpoint_slice(slice(name, &[("http", 7777, "TCP")], &ready(&[(&n1.name, &pod.ip)])).build());
        wait_backends(&lab, lb_ip, 80, "TCP", &[format!("{}:7777", pod.ip)]).unwrap();
        // The world reaches the ingress IP through the node, as a load
        // balancer would send it.
        sluice_tests::lab::ns_exec(&world, &["ip", "route", "replace", &format!("{lb_ip}/32"), "via", &ip1]).unwrap();
    }
    let before = sluice_tests::lab::counter(&lab, 0, "drops", "load_balancer_source_range");
    let out = world_client(&world, &["tcp", "198.51.100.86", "80", "5"]);
    assert_eq!(oks(&out), 5, "inside the ranges: {out:?}");
    assert!(out.iter().all(|o| o.answer() == Some(pod.name.as_str())), "{out:?}");
    let out = world_client(&world, &["tcp", "198.51.100.87", "80", "2"]);
    assert_eq!(oks(&out), 0, "outside the ranges: {out:?}");
    let dropped = sluice_tests::lab::counter(&lab, 0, "drops", "load_balancer_source_range") - before;
    assert!(dropped >= 2, "refused SYNs counted: {dropped}");
    let out = world_client(&world, &["tcp", &ip1, &node_ports[1].to_string(), "3"]);
    assert_eq!(oks(&out), 3, "the closed Service's NodePort: {out:?}");
}

/// hostPort from the world (issue 27, with portmap not chained and no
/// kube-proxy rules): a pod's hostPort on its node's address reaches the
/// pod over TCP and UDP, the pod sees the world's address; the same port
/// on the other node's address is no hostPort of this pod.
#[test]
fn world_to_a_host_port_reaches_the_pod_on_its_own_node_only() {
    require_root();
    let mut lab = services::lab(2, 1).unwrap();
    let world = cluster::add_world(&mut lab).unwrap();
    let api = lab.api.as_ref().unwrap();
    let (n1, pod) = (lab.state.nodes[0].clone(), lab.state.nodes[0].pods[0].clone());
    api.upsert_pod(
        sluice_tests::apiserver::PodObject::new("default", &pod.name, &n1.name, &pod.ip)
            .host_port(7778, 8080, "TCP", None)
            .host_port(services::UDP_PORT, 8053, "UDP", None)
            .build(),
    );
    let (ip1, ip2) = (node_ip(&lab, 0), node_ip(&lab, 1));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let text = loop {
        if let Some(t) = cluster::tcp_text(&world, &ip1, 8080) {
            break t;
        }
        assert!(std::time::Instant::now() < deadline, "world → {ip1}:8080 (hostPort) never answered");
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let (who, saw) = cluster::parse_whoami(&text).unwrap();
    assert_eq!((who.as_str(), saw.to_string().as_str()), (pod.name.as_str(), cluster::WORLD_IP), "{text}");
    let out = world_client(&world, &["udp", &ip1, "8053", "10"]);
    assert_eq!(oks(&out), 10, "world → {ip1}:8053/UDP: {:?}", tally(&out));
    assert!(cluster::tcp_text(&world, &ip2, 8080).is_none(), "{ip2}:8080 is not the hostPort of n1's pod");
}

/// Slice 4: the agent of the node that SNATs (no local backend) is
/// SIGKILLed and restarted under 20 open NodePort connections from the
/// world and a stream of new ones: `NAT4` and the programs are pinned, so
/// none breaks and none is refused.
#[test]
fn agent_sigkill_and_restart_breaks_no_node_port_connection_and_refuses_none() {
    require_root();
    let mut lab = services::lab(2, 1).unwrap();
    restart_under_node_port_traffic(&mut lab, 150, 30, |_| {});
}

/// A layout migration of `NAT4` (its size changed: a new table, every
/// entry copied, the programs swapped) under 20 open streams and a run of
/// new connections through the SNAT node: none broken, none refused. The
/// old programs keep writing into the old table until their links are
/// swapped, so the agent holds new connections back meanwhile and copies
/// what was written since (`migrate::Pause`, `Carried::catch_up`).
#[test]
fn nat4_layout_migration_under_node_port_traffic_breaks_none_and_refuses_none() {
    use sluice_common::maps::names;
    require_root();
    let mut lab = services::lab(2, 1).unwrap();
    let pin = sluice_node::datapath::pins::PinDir::new(&lab.state.nodes[1].pin_dir).map(names::NAT4);
    let max_entries = || {
        let info = sluice_tests::bpftool_json(&["map", "show", "pinned", &pin.display().to_string()]).unwrap();
        info["max_entries"].as_u64().unwrap()
    };
    assert_eq!(max_entries(), u64::from(sluice_common::maps::limits::MAX_NAT4));
    // As fast as the client goes: connections opened while the tables
    // swap are what a lossy migration breaks.
    restart_under_node_port_traffic(&mut lab, 400, 0, |lab| {
        lab.state.extra_agent_args.extend(["--nat4-max".to_string(), "131072".to_string()]);
    });
    assert_eq!(max_entries(), 131072, "NAT4 was not migrated to its new size");
    let drops = services::service_status(&lab, 1).unwrap();
    println!("held back while migrating: {}", drops["drops"]["nat4_migrating"]);
}

/// 20 open streams from the world and `fresh` new connections (`gap_ms`
/// apart) through node 2, SNATed to a pod on node 1; node 2's agent
/// SIGKILLed and started again (after `before_start`) meanwhile. Every
/// stream carries on and every new connection is answered.
fn restart_under_node_port_traffic(lab: &mut Lab, fresh: u32, gap_ms: u32, before_start: impl FnOnce(&mut Lab)) {
    let world = cluster::add_world(lab).unwrap();
    let api = lab.api.as_ref().unwrap();
    let (n1, pod) = (lab.state.nodes[0].clone(), lab.state.nodes[0].pods[0].clone());
    let svc =
        service("st", "10.96.0.83", &[("stream", 7779, 7779, "TCP"), ("http", 80, 7777, "TCP")]).type_("NodePort");
    let (stream_np, http_np) = (svc.node_port(0), svc.node_port(1));
    api.upsert_service(svc.build());
    api.upsert_endpoint_slice(
        slice("st", &[("stream", 7779, "TCP"), ("http", 7777, "TCP")], &ready(&[(&n1.name, &pod.ip)])).build(),
    );
    wait_backends(lab, "*", stream_np, "TCP", &[format!("{}:7779", pod.ip)]).unwrap();
    wait_backends(lab, "*", http_np, "TCP", &[format!("{}:7777", pod.ip)]).unwrap();
    // Through node 2: SNATed to node 1's pod.
    let ip2 = node_ip(lab, 1);
    let spawn = |args: &[&str]| {
        let mut all = vec!["python3", "-c", services::CLIENT];
        all.extend_from_slice(args);
        ns_cmd(&world, &all).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::null()).spawn().unwrap()
    };
    let streams: Vec<_> = (0..20).map(|_| spawn(&["stream", &ip2, &stream_np.to_string(), "8"])).collect();
    let fresh_client = spawn(&["tcp", &ip2, &http_np.to_string(), &fresh.to_string(), &gap_ms.to_string()]);
    // Every stream and the first new connections through node 2's table.
    sluice_tests::wait_until(std::time::Duration::from_secs(10), "20 streams and new connections translated", || {
        nat4(lab, 1).get("new_remote").copied().unwrap_or(0) >= 25
    })
    .unwrap();
    // Connections opened every 10 ms while the agent is down and starting,
    // each kept open until it is up: any connection written into a table
    // the new programs do not read breaks once they run. (Threads of this
    // process, not clients: hundreds of processes would slow the start.)
    let stop = Arc::new(AtomicBool::new(false));
    let opener = {
        let (stop, world, ip2) = (stop.clone(), world.clone(), ip2.clone());
        std::thread::spawn(move || {
            let addr = SocketAddr::new(ip2.parse().unwrap(), stream_np);
            let mut opening = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let netns = std::path::Path::new("/run/netns").join(&world);
                opening.push(std::thread::spawn(move || {
                    sluice_node::net::netns::run_in(&netns, move || {
                        // A SYN held back during the migration is sent
                        // again after a second.
                        Ok(TcpStream::connect_timeout(&addr, Duration::from_secs(4))?)
                    })
                }));
                std::thread::sleep(Duration::from_millis(10));
            }
            opening.into_iter().map(|t| t.join().unwrap()).collect::<Vec<_>>()
        })
    };
    let restart = std::time::Instant::now();
    lab.kill_agent(1).unwrap();
    before_start(lab);
    lab.start_agent(1).unwrap();
    lab.wait_agent_ready(1).unwrap();
    println!("agent restarted in {:?}", restart.elapsed());
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let opened = opener.join().unwrap();
    let during = opened.len();
    for (i, stream) in opened.into_iter().enumerate() {
        let answered = stream.and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            s.write_all(format!("during {i}\n").as_bytes())?;
            let mut back = String::new();
            BufReader::new(s).read_line(&mut back)?;
            Ok(back)
        });
        match answered {
            Ok(back) if back.trim() == format!("during {i}") => {}
            other => panic!("connection {i} of {during} opened during the restart: {other:?}"),
        }
    }
    let (outcomes, _) = services::finish(fresh_client).unwrap();
    assert_eq!((outcomes.len(), oks(&outcomes)), (fresh as usize, fresh as usize), "{:?}", tally(&outcomes));
    for s in streams {
        let (_, text) = services::finish(s).unwrap();
        assert!(text.trim_end().ends_with("done") && !text.contains("err"), "an open connection broke:\n{text}");
    }
    assert!(nat4(lab, 1)["new_remote"] >= u64::from(fresh) + 20, "{:?}", nat4(lab, 1));
}

/// World-side probes for direct server return: a large TCP echo through
/// the stream server, and one UDP datagram of a given size with DF set
/// (`IP_PMTUDISC_DO`) on a connected socket, then the socket's path MTU.
const DSR_PROBE: &str = r#"
import errno, os, socket, sys, threading
mode, ip, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
if mode == "bulk":
    s = socket.create_connection((ip, port), timeout=10)
    data = os.urandom(n)
    got = bytearray()
    def read():
        while len(got) < n:
            b = s.recv(65536)
            if not b:
                break
            got.extend(b)
    t = threading.Thread(target=read)
    t.start()
    s.sendall(data)
    t.join(30)
    print("bulk", "same" if bytes(got) == data else "differs after %d" % len(got), "%s:%d" % s.getpeername())
elif mode == "udp-size":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IP, 10, 2)  # IP_MTU_DISCOVER = IP_PMTUDISC_DO
    s.settimeout(2)
    s.connect((ip, port))
    try:
        s.send(b"x" * n)
        print("answer", s.recv(200).decode().strip())
    except socket.timeout:
        print("timeout")
    except OSError as e:
        print("error", errno.errorcode.get(e.errno, e.errno))
    print("mtu", s.getsockopt(socket.IPPROTO_IP, 14))  # IP_MTU
"#;

fn dsr_probe(world: &str, args: &[&str]) -> String {
    let mut all = vec!["python3", "-c", DSR_PROBE];
    all.extend_from_slice(args);
    let out = ns_cmd(world, &all).output().expect("run the DSR probe in the world");
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

/// What every DSR lab checks, the world → `entry`'s NodePort → the one
/// backend `pod` on node `backend`: TCP and UDP answered from the
/// address and port the world used; the backend saw the world's address;
/// the answers came straight from the backend's node (its NAT4 reversed
/// them, the entry node's reversed none); a 4 MB TCP echo comes back
/// whole; a UDP datagram exactly at the limit (`egress_mtu` less the
/// option) is answered, one byte more gets ICMP fragmentation needed at
/// the client: its socket fails with EMSGSIZE and its path MTU to the
/// NodePort's address drops to the limit.
fn dsr_world_to_node_port(lab: &Lab, world: &str, entry: usize, backend: usize, egress_mtu: usize) {
    let (nb, pod) = (lab.state.nodes[backend].clone(), lab.state.nodes[backend].pods[0].clone());
    let (tcp_np, udp_np) = publish_node_port(lab, &[(&nb.name, &pod.ip)]);
    let api = lab.api.as_ref().unwrap();
    let who =
        service("who", "10.96.0.81", &[("http", 81, 7778, "TCP"), ("stream", 7779, 7779, "TCP")]).type_("NodePort");
    let (who_np, stream_np) = (who.node_port(0), who.node_port(1));
    api.upsert_service(who.build());
    api.upsert_endpoint_slice(
        slice("who", &[("http", 7778, "TCP"), ("stream", 7779, "TCP")], &ready(&[(&nb.name, &pod.ip)])).build(),
    );
    wait_backends(lab, "*", who_np, "TCP", &[format!("{}:7778", pod.ip)]).unwrap();
    wait_backends(lab, "*", stream_np, "TCP", &[format!("{}:7779", pod.ip)]).unwrap();
    let ip = node_ip(lab, entry);

    let out = world_client(world, &["tcp", &ip, &tcp_np.to_string(), "20"]);
    assert_eq!(oks(&out), 20, "world → {ip}:{tcp_np}: {:?}", tally(&out));
    assert!(
        out.iter().all(|o| matches!(o, Outcome::Ok { peer, answer, .. }
        if peer == &format!("{ip}:{tcp_np}") && answer == &pod.name)),
        "{out:?}"
    );
    let out = world_client(world, &["udp", &ip, &udp_np.to_string(), "20"]);
    assert_eq!(oks(&out), 20, "world → {ip}:{udp_np}/UDP: {:?}", tally(&out));
    let text = cluster::tcp_text(world, &ip, who_np).expect("whoami through the NodePort");
    assert_eq!(
        cluster::parse_whoami(&text).map(|(_, ip)| ip.to_string()),
        Some(cluster::WORLD_IP.to_string()),
        "the backend sees the world's address: {text}"
    );
    let (ce, cb) = (nat4(lab, entry), nat4(lab, backend));
    assert_eq!(ce["reversed"], 0, "no answer passed the entry node: {ce:?}");
    assert!(ce["dsr_option_sent"] >= 41 && ce["new_remote"] >= 41, "entry: {ce:?}");
    assert!(cb["reversed"] >= 41 && cb["dsr_reply_recorded"] >= 41, "backend's node: {cb:?}");

    // Full size both ways.
    let bulk = dsr_probe(world, &["bulk", &ip, &stream_np.to_string(), "4000000"]);
    assert!(bulk.starts_with(&format!("bulk same {ip}:{stream_np}")), "{bulk}");
    let limit = egress_mtu - 8;
    let at = dsr_probe(world, &["udp-size", &ip, &udp_np.to_string(), &(limit - 28).to_string()]);
    assert!(at.contains(&format!("answer {}", pod.name)), "a datagram of {limit} bytes: {at}");
    let before = sluice_tests::lab::counter(lab, entry, "drops", "dsr_frag_needed");
    let over = dsr_probe(world, &["udp-size", &ip, &udp_np.to_string(), &(limit + 1 - 28).to_string()]);
    assert!(over.contains("error EMSGSIZE") && over.contains(&format!("mtu {limit}")), "one byte more: {over}");
    assert_eq!(sluice_tests::lab::counter(lab, entry, "drops", "dsr_frag_needed") - before, 1);
    assert_eq!(nat4(lab, entry)["reversed"], 0, "{:?}", nat4(lab, entry));
}

/// `--lb-mode=dsr`, natively (issue 27): the world → node 1's NodePort →
/// the backend on node 2, answered by node 2 directly (see
/// `dsr_world_to_node_port`). The egress is node 1's uplink (the lab's
/// MTU, 1500).
#[test]
fn dsr_world_to_a_node_port_is_answered_by_the_backends_node_directly() {
    require_root();
    let mut lab = services::lab_with_agent_args(2, 1, &["--lb-mode=dsr"]).unwrap();
    let world = cluster::add_world(&mut lab).unwrap();
    assert_no_kube_proxy_rules(&lab);
    let mtu = lab.state.mtu as usize;
    dsr_world_to_node_port(&lab, &world, 0, 1, mtu);
}

/// `--lb-mode=dsr` across the VXLAN router lab: node 1 (on the world's
/// network) sends to the backend on node 3 (behind the router) through
/// VXLAN, the option in the inner packet; node 3 answers the world
/// straight out of its uplink, through the router, as from node 1's
/// NodePort. The egress is node 1's VXLAN device (its MTU: the lab's
/// less 50).
#[test]
fn dsr_across_the_vxlan_router_lab_is_answered_by_the_backends_node_directly() {
    require_root();
    let mut opts =
        sluice_tests::lab::LabOptions::new(3, 1, sluice_tests::bin("sluice-agent").parent().unwrap().to_path_buf());
    opts.kubernetes = true;
    opts.kube_proxy_replacement = true;
    opts.subnets = 2;
    opts.extra_agent_args = vec!["--lb-mode=dsr".into()];
    let mut lab = Lab::up(&opts).unwrap();
    let pods: Vec<(String, String)> = lab.pods().iter().map(|(_, p)| (p.netns.clone(), p.name.clone())).collect();
    for (netns, name) in pods {
        cluster::start_pod_servers(&mut lab, &netns, &name).unwrap();
    }
    let world = cluster::add_world(&mut lab).unwrap();
    assert!(lab.state.nodes[2].ip.starts_with(sluice_tests::lab::LAN2_PREFIX), "node 3 behind the router");
    let mtu = lab.state.mtu as usize - 50;
    dsr_world_to_node_port(&lab, &world, 0, 2, mtu);
}

/// Node `i`'s forward counters named `names`, summed (`status --json`).
fn forwards(lab: &Lab, i: usize, names: &[&str]) -> u64 {
    let status = lab.status(i).unwrap();
    names.iter().map(|n| status["forwards"][*n].as_u64().unwrap_or_else(|| panic!("no counter {n}"))).sum()
}

/// Wait until node `i`'s `NODE_ADDRESSES` names `ip` another node's (the
/// Services loop writes it from the Node watch, on its next full pass).
fn wait_remote_node_address(lab: &Lab, i: usize, ip: &str) {
    let start = std::time::Instant::now();
    loop {
        let v = services::service_status(lab, i).unwrap();
        let known = v["services"]["nodeAddresses"]
            .as_array()
            .is_some_and(|a| a.iter().any(|e| e["ip"] == ip && e["kind"] == "remote"));
        if known {
            return;
        }
        assert!(
            start.elapsed() < sluice_tests::patience(Duration::from_secs(30)),
            "node {i} never listed {ip} as a remote node address: {}",
            v["services"]["nodeAddresses"]
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Issue 27's fast path on the backend's node (`node_path`): the world →
/// node 1's NodePort → the backend on node 2, SNATed to node 1's address.
/// Node 2 carries each packet into the pod and the pod's answers back out
/// without its stack (`node_to_pod`, `pod_answer_to_node`), and the world
/// gets every answer. A connection node 2's pod opens itself to node 1's
/// address (its host server) still goes through node 2's stack both ways:
/// not a packet of it counted on the fast path.
#[test]
fn a_snated_node_port_connection_skips_the_backends_node_stack_but_a_pods_own_connection_to_a_node_does_not() {
    require_root();
    let mut lab = services::lab(2, 1).unwrap();
    let world = cluster::add_world(&mut lab).unwrap();
    let (n1, n2, pod2) = (lab.state.nodes[0].clone(), lab.state.nodes[1].clone(), lab.state.nodes[1].pods[0].clone());
    let (tcp_np, udp_np) = publish_node_port(&lab, &[(&n2.name, &pod2.ip)]);
    let ip1 = node_ip(&lab, 0);
    wait_remote_node_address(&lab, 1, &ip1);
    let fast = ["node_to_pod", "pod_answer_to_node"];
    let before = (forwards(&lab, 1, &fast[..1]), forwards(&lab, 1, &fast[1..]));

    let out = world_client(&world, &["tcp", &ip1, &tcp_np.to_string(), "20"]);
    assert_eq!(oks(&out), 20, "world → {ip1}:{tcp_np}: {:?}", tally(&out));
    assert!(out.iter().all(|o| o.answer() == Some(pod2.name.as_str())), "{out:?}");
    let out = world_client(&world, &["udp", &ip1, &udp_np.to_string(), "20"]);
    assert_eq!(oks(&out), 20, "world → {ip1}:{udp_np}/UDP: {:?}", tally(&out));
    assert!(nat4(&lab, 0)["new_remote"] >= 40, "{:?}", nat4(&lab, 0));
    // Per TCP connection at least SYN, ACK and the request in, SYN-ACK and
    // the answer out; per UDP exchange one each way.
    let (into_pod, answers) = (forwards(&lab, 1, &fast[..1]) - before.0, forwards(&lab, 1, &fast[1..]) - before.1);
    assert!(into_pod >= 20 * 3 + 20 && answers >= 20 * 2 + 20, "node 2: node_to_pod {into_pod}, answers {answers}");

    // The pod's own connection to node 1's address: node 1's host server.
    cluster::whoami_server(&mut lab, &n1.netns, &ip1, cluster::HOST_PORT, "host-1").unwrap();
    let before = forwards(&lab, 1, &fast);
    for _ in 0..5 {
        let text = cluster::tcp_text(&pod2.netns, &ip1, cluster::HOST_PORT).expect("pod → node 1's host server");
        assert_eq!(
            cluster::parse_whoami(&text).map(|(_, ip)| ip.to_string()),
            Some(pod2.ip.clone()),
            "node 1 saw the pod's own address: {text}"
        );
    }
    assert_eq!(forwards(&lab, 1, &fast), before, "a pod's own connection to a node took the fast path");
}

/// IPv6 NodePorts from outside (issues 27 × 28, `lb6`): on a dual-stack
/// lab without kube-proxy, the world reaches node 1's IPv6 NodePort over
/// TCP and UDP; backends on both nodes answer (node 2's SNATed to node
/// 1's IPv6 and a SNAT port), and every answer comes from the address the
/// client used. With `externalTrafficPolicy: Local` the backend sees the
/// world's own IPv6 address.
#[test]
fn world_to_an_ipv6_node_port_reaches_backends_on_both_nodes_and_local_policy_keeps_its_address() {
    require_root();
    let mut lab = services::dual_stack_lab(2, 1).expect("dual-stack Kubernetes lab");
    let world = cluster::add_world(&mut lab).unwrap();
    assert_no_kube_proxy_rules(&lab);
    start_pod_ipv6_servers(&mut lab);
    let api = lab.api.as_ref().expect("kubernetes lab");
    let pods: Vec<(String, sluice_tests::lab::Pod)> =
        lab.pods().iter().map(|(n, p)| (n.name.clone(), (*p).clone())).collect();
    let endpoints: Vec<sluice_tests::apiserver::EndpointObject> = pods
        .iter()
        .map(|(node, p)| sluice_tests::apiserver::EndpointObject::ready(p.ip6.as_deref().unwrap(), node))
        .collect();
    let ipv6_slice = |name: &str, ports: &[(&str, u16, &str)]| {
        let mut s = slice(name, ports, &endpoints);
        s.name = format!("{name}-v6");
        s.address_type = "IPv6".into();
        s.build()
    };
    let np6 = service("np6", "10.96.0.90", &[("http", 80, 7777, "TCP"), ("dns", 53, services::UDP_PORT, "UDP")])
        .type_("NodePort")
        .cluster_ips(&["10.96.0.90", "fd00:96::90"]);
    let (tcp_np, udp_np) = (np6.node_port(0), np6.node_port(1));
    api.upsert_service(np6.build());
    api.upsert_endpoint_slice(ipv6_slice("np6", &[("http", 7777, "TCP"), ("dns", services::UDP_PORT, "UDP")]));
    let who6 = service("who6", "10.96.0.91", &[("http", 81, 7778, "TCP")])
        .type_("NodePort")
        .cluster_ips(&["10.96.0.91", "fd00:96::91"])
        .external_traffic_local();
    let who_np = who6.node_port(0);
    api.upsert_service(who6.build());
    api.upsert_endpoint_slice(ipv6_slice("who6", &[("http", 7778, "TCP")]));
    let ip6 = lab.state.nodes[0].ip6.clone().expect("dual-stack node");
    wait_world_answer(&world, &ip6, tcp_np);

    let names: std::collections::BTreeSet<String> = pods.iter().map(|(_, p)| p.name.clone()).collect();
    let out = world_client(&world, &["tcp", &ip6, &tcp_np.to_string(), "40"]);
    assert_eq!(oks(&out), 40, "world → [{ip6}]:{tcp_np}: {:?}", tally(&out));
    assert!(
        out.iter().all(|o| matches!(o, Outcome::Ok { peer, .. } if peer == &format!("[{ip6}]:{tcp_np}"))),
        "every answer from the address the client used: {out:?}"
    );
    assert_eq!(tally(&out).keys().cloned().collect::<std::collections::BTreeSet<_>>(), names, "{:?}", tally(&out));
    let out = world_client(&world, &["udp", &ip6, &udp_np.to_string(), "40"]);
    assert_eq!(oks(&out), 40, "world → [{ip6}]:{udp_np}/UDP: {:?}", tally(&out));
    assert_eq!(tally(&out).keys().cloned().collect::<std::collections::BTreeSet<_>>(), names, "{:?}", tally(&out));

    // externalTrafficPolicy: Local: node 1's own backend, which sees the
    // world's IPv6 address.
    let out = world_client(&world, &["tcp", &ip6, &who_np.to_string(), "10"]);
    assert_eq!(oks(&out), 10, "world → [{ip6}]:{who_np} (Local): {:?}", tally(&out));
    assert!(
        out.iter().all(|o| o.answer().and_then(|a| a.trim_matches(['[', ']']).parse::<std::net::Ipv6Addr>().ok())
            == cluster::WORLD_IP6.parse().ok()),
        "the backend saw the world's address: {out:?}"
    );
}

/// `loadBalancerSourceRanges` over IPv6 (issues 27 × 28, `lb6` and
/// `LB6_SOURCE_RANGES`): on a dual-stack node without kube-proxy, the
/// world (fd00:30::fe) reaches the IPv6 LoadBalancer IP of a Service whose
/// IPv6 ranges hold it; that of a Service whose ranges do not is dropped,
/// counted `load_balancer_source_range`. Each Service's IPv4 range is
/// IPv4's and plays no part.
#[test]
fn ipv6_load_balancer_source_ranges_admit_the_world_only_where_they_hold_it() {
    require_root();
    let mut lab = services::dual_stack_lab(1, 1).expect("dual-stack Kubernetes lab");
    let world = cluster::add_world(&mut lab).unwrap();
    assert_no_kube_proxy_rules(&lab);
    start_pod_ipv6_servers(&mut lab);
    let api = lab.api.as_ref().expect("kubernetes lab");
    let (n1, pod) = (lab.state.nodes[0].clone(), lab.state.nodes[0].pods[0].clone());
    let (pod6, node6) = (pod.ip6.clone().expect("dual-stack pod"), n1.ip6.clone().expect("dual-stack node"));
    let world_range = format!("{}/128", cluster::WORLD_IP6);
    for (name, cluster_ip, lb_ip, ranges) in [
        ("open6", "fd00:96::86", "2001:db8:5::86", [world_range.as_str(), "2001:db8:ff::/48", "203.0.113.0/24"]),
        ("closed6", "fd00:96::87", "2001:db8:5::87", ["2001:db8:ff::/48", "fd00:99::/64", "0.0.0.0/0"]),
    ] {
        let mut svc = service(name, cluster_ip, &[("http", 80, 7777, "TCP")])
            .type_("LoadBalancer")
            .load_balancer_ips(&[lb_ip])
            .source_ranges(&ranges);
        svc.cluster_ips = vec![cluster_ip.into()];
        api.upsert_service(svc.build());
        let mut s = slice(name, &[("http", 7777, "TCP")], &ready(&[(&n1.name, &pod6)]));
        s.name = format!("{name}-v6");
        s.address_type = "IPv6".into();
        api.upsert_endpoint_slice(s.build());
        wait_backends(&lab, lb_ip, 80, "TCP", &[format!("[{pod6}]:7777")]).unwrap();
        // The world reaches the ingress IP through the node, as a load
        // balancer would send it.
        let route = ["ip", "-6", "route", "replace", &format!("{lb_ip}/128"), "via", &node6];
        sluice_tests::lab::ns_exec(&world, &route).unwrap();
    }
    let before = sluice_tests::lab::counter(&lab, 0, "drops", "load_balancer_source_range");
    let out = world_client(&world, &["tcp", "2001:db8:5::86", "80", "5"]);
    assert_eq!(oks(&out), 5, "inside the ranges: {out:?}");
    assert!(out.iter().all(|o| o.answer() == Some(pod.name.as_str())), "{out:?}");
    let out = world_client(&world, &["tcp", "2001:db8:5::87", "80", "2"]);
    assert_eq!(oks(&out), 0, "outside the ranges: {out:?}");
    let dropped = sluice_tests::lab::counter(&lab, 0, "drops", "load_balancer_source_range") - before;
    assert!(dropped >= 2, "refused SYNs counted: {dropped}");

    // NAT6's counters, in `status --services` and the metrics beside NAT4's.
    let v = services::service_status(&lab, 0).unwrap();
    let new_local = v["services"]["uplink"]["nat6"]["new_local"].as_u64().unwrap_or(0);
    assert!(new_local >= 5, "status uplink.nat6: {}", v["services"]["uplink"]);
    let url = format!("http://{}:9962/metrics", node_ip(&lab, 0));
    let get = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())";
    let text = sluice_tests::lab::ns_exec(&n1.netns, &["python3", "-c", get, &url]).unwrap();
    let line = format!("sluice_nat4_events_total{{event=\"new_local\",family=\"ipv6\"}} {new_local}");
    assert!(text.contains(&line), "{line} missing from the metrics:\n{text}");
    assert!(text.contains("sluice_nat4_events_total{event=\"new_local\",family=\"ipv4\"} 0"), "{text}");
}
