//! Services in eBPF (`--kube-proxy-replacement=true`): real sockets, real
//! packets. The lab's API server holds the Services and EndpointSlices; no
//! kube-proxy rules are installed, so a ClusterIP works only if the socket
//! load balancer translates it.
use std::{
    collections::BTreeSet,
    thread::sleep,
    time::{Duration, Instant},
};

use sluice_tests::{
    apiserver::EndpointObject,
    capture::Capture,
    lab::{ns_cmd, ns_exec, Lab},
    require_root,
    services::{self, client, finish, ready, service, slice, spawn_client, tally, wait_backends, Outcome},
};

const WEB_IP: &str = "10.96.0.50";

/// Every pod of the lab as a backend (node name, pod IP).
fn all_pods(lab: &Lab) -> Vec<(String, String)> {
    lab.pods().iter().map(|(n, p)| (n.name.clone(), p.ip.clone())).collect()
}

fn endpoints(pods: &[(String, String)]) -> Vec<EndpointObject> {
    ready(&pods.iter().map(|(n, ip)| (n.as_str(), ip.as_str())).collect::<Vec<_>>())
}

/// `web`: 80/TCP → 7777 (answers the pod's name), 53/UDP → `UDP_PORT`,
/// 7779/TCP → 7779 (echo stream).
fn publish_web(lab: &Lab, backends: &[(String, String)]) {
    let api = lab.api.as_ref().expect("kubernetes lab");
    api.upsert_service(
        service(
            "web",
            WEB_IP,
            &[("http", 80, 7777, "TCP"), ("dns", 53, services::UDP_PORT, "UDP"), ("stream", 7779, 7779, "TCP")],
        )
        .build(),
    );
    publish_web_endpoints(lab, backends);
}

fn publish_web_endpoints(lab: &Lab, backends: &[(String, String)]) {
    let api = lab.api.as_ref().expect("kubernetes lab");
    api.upsert_endpoint_slice(
        slice(
            "web",
            &[("http", 7777, "TCP"), ("dns", services::UDP_PORT, "UDP"), ("stream", 7779, "TCP")],
            &endpoints(backends),
        )
        .build(),
    );
}

fn targets(backends: &[(String, String)], port: u16) -> Vec<String> {
    backends.iter().map(|(_, ip)| format!("{ip}:{port}")).collect()
}

fn oks(outcomes: &[Outcome]) -> usize {
    outcomes.iter().filter(|o| matches!(o, Outcome::Ok { .. })).count()
}

#[test]
fn cluster_ip_from_pods_and_nodes_reaches_every_backend_over_tcp_and_udp() {
    require_root();
    let lab = services::lab(2, 2).unwrap();
    let backends = all_pods(&lab);
    publish_web(&lab, &backends);
    wait_backends(&lab, WEB_IP, 80, "TCP", &targets(&backends, 7777)).unwrap();
    wait_backends(&lab, WEB_IP, 53, "UDP", &targets(&backends, services::UDP_PORT)).unwrap();
    let n1 = lab.state.nodes[0].clone();
    let pod = n1.pods[0].clone();
    let names: BTreeSet<String> = lab.pods().iter().map(|(_, p)| p.name.clone()).collect();

    // A capture on the LAN while pods talk to the Service: only pod
    // addresses may be on the wire.
    let capture = Capture::start(&lab.state.lan_netns, "br0", &["tcp or udp"]).unwrap();

    // 200 connections from a pod: every one answered, each shows the
    // ClusterIP as its peer, and the four backends share them.
    let tcp = client(&lab, &n1, &pod.netns, &["tcp", WEB_IP, "80", "200"]).unwrap();
    assert_eq!(oks(&tcp), 200, "{:?}", tally(&tcp));
    for o in &tcp {
        let Outcome::Ok { peer, .. } = o else { unreachable!() };
        assert_eq!(peer, &format!("{WEB_IP}:80"), "getpeername() must show the ClusterIP");
    }
    let t = tally(&tcp);
    assert_eq!(t.keys().cloned().collect::<BTreeSet<_>>(), names, "every backend answers: {t:?}");
    // Uniform over 4: 50 each, sd ≈ 6.1; 20..=80 is ±4.9 sd.
    for (who, n) in &t {
        assert!((20..=80).contains(n), "{who} got {n} of 200: not spread evenly ({t:?})");
    }

    // From the node itself (a host-network process of n1).
    let host = client(&lab, &n1, &n1.netns, &["tcp", WEB_IP, "80", "40"]).unwrap();
    assert_eq!(oks(&host), 40, "{:?}", tally(&host));
    assert!(tally(&host).len() >= 3, "host connections spread too: {:?}", tally(&host));

    // UDP, connected: the reply comes back from the ClusterIP.
    let udp = client(&lab, &n1, &pod.netns, &["udp", WEB_IP, "53", "40"]).unwrap();
    assert_eq!(oks(&udp), 40, "{:?}", tally(&udp));
    for o in &udp {
        let Outcome::Ok { peer, line, .. } = o else { unreachable!() };
        assert_eq!(peer, &format!("{WEB_IP}:53"), "reply source is the ClusterIP: {line}");
        assert!(line.contains(&format!("getpeername={WEB_IP}:53")), "{line}");
    }
    assert!(tally(&udp).len() >= 3, "{:?}", tally(&udp));
    // UDP, unconnected (sendto per datagram, recvfrom shows the source).
    let sendto = client(&lab, &n1, &pod.netns, &["sendto", WEB_IP, "53", "40"]).unwrap();
    assert_eq!(oks(&sendto), 40, "{:?}", tally(&sendto));
    assert!(sendto.iter().all(|o| matches!(o, Outcome::Ok { peer, .. } if peer == &format!("{WEB_IP}:53"))));
    assert!(tally(&sendto).len() >= 3, "per-datagram balancing: {:?}", tally(&sendto));

    let captured = capture.stop();
    let count = |needle: &str| captured.lines().filter(|l| l.contains(needle)).count();
    assert!(count(".7777:") + count(".7777 >") > 100, "cross-node backend traffic was captured");
    assert_eq!(count("10.96."), 0, "no Service address on the wire:\n{captured}");

    // The other node balances on its own maps too.
    let n2 = lab.state.nodes[1].clone();
    let from_n2 = client(&lab, &n2, &n2.pods[0].netns, &["tcp", WEB_IP, "80", "40"]).unwrap();
    assert_eq!(oks(&from_n2), 40);
    let v = services::service_status(&lab, 0).unwrap();
    assert!(v["services"]["counters"]["connected"].as_u64().unwrap() >= 240, "{}", v["services"]["counters"]);
    assert!(v["services"]["counters"]["sent"].as_u64().unwrap() >= 40, "{}", v["services"]["counters"]);
}

/// Issue #24: an `AF_INET6` socket (Java's default) names a ClusterIP
/// v4-mapped, `::ffff:10.96.0.50`; the kernel runs only the IPv6 hooks for
/// it, so without the `*6` programs it would connect to the bare ClusterIP
/// (nothing answers there: no kube-proxy in this lab).
#[test]
fn an_ipv6_socket_reaches_a_v4_mapped_cluster_ip_over_tcp_and_udp() {
    require_root();
    let lab = services::lab(2, 1).unwrap();
    let backends = all_pods(&lab);
    publish_web(&lab, &backends);
    wait_backends(&lab, WEB_IP, 80, "TCP", &targets(&backends, 7777)).unwrap();
    wait_backends(&lab, WEB_IP, 53, "UDP", &targets(&backends, services::UDP_PORT)).unwrap();
    let n1 = lab.state.nodes[0].clone();
    let names: BTreeSet<String> = lab.pods().iter().map(|(_, p)| p.name.clone()).collect();
    let mapped = format!("::ffff:{WEB_IP}");
    let before = services::service_status(&lab, 0).unwrap()["services"]["counters"]["v4_mapped"].as_u64();
    assert_eq!(before, Some(0), "status counts v4-mapped translations");

    // From a pod and from the node itself: TCP, connected UDP, sendto.
    for (who, netns) in [("pod", n1.pods[0].netns.as_str()), ("node", n1.netns.as_str())] {
        let tcp = client(&lab, &n1, netns, &["tcp", &mapped, "80", "20"]).unwrap();
        assert_eq!(oks(&tcp), 20, "{who}: {:?}", tally(&tcp));
        for o in &tcp {
            let Outcome::Ok { peer, .. } = o else { unreachable!() };
            assert_eq!(peer, &format!("[{mapped}]:80"), "{who}: getpeername() shows the v4-mapped ClusterIP");
        }
        let t = tally(&tcp);
        assert_eq!(t.keys().cloned().collect::<BTreeSet<_>>(), names, "{who}: both backends answer: {t:?}");

        let udp = client(&lab, &n1, netns, &["udp", &mapped, "53", "20"]).unwrap();
        assert_eq!(oks(&udp), 20, "{who}: {:?}", tally(&udp));
        for o in &udp {
            let Outcome::Ok { peer, line, .. } = o else { unreachable!() };
            assert_eq!(peer, &format!("[{mapped}]:53"), "{who}: the reply comes from the ClusterIP: {line}");
            assert!(line.contains(&format!("getpeername=[{mapped}]:53")), "{who}: {line}");
        }
        assert_eq!(tally(&udp).len(), 2, "{who}: {:?}", tally(&udp));

        let sendto = client(&lab, &n1, netns, &["sendto", &mapped, "53", "20"]).unwrap();
        assert_eq!(oks(&sendto), 20, "{who}: {:?}", tally(&sendto));
        for o in &sendto {
            let Outcome::Ok { peer, .. } = o else { unreachable!() };
            assert_eq!(peer, &format!("[{mapped}]:53"), "{who}: recvfrom() shows the ClusterIP");
        }
        assert_eq!(tally(&sendto).len(), 2, "{who}: per-datagram balancing: {:?}", tally(&sendto));
    }
    // Done by the IPv6 programs: every connect (20 TCP + 20 UDP, twice).
    let counters = services::service_status(&lab, 0).unwrap()["services"]["counters"].clone();
    assert!(counters["v4_mapped"].as_u64().unwrap() >= 80, "{counters}");
}

#[test]
fn no_endpoints_refuses_at_once_and_local_policy_without_local_endpoints_is_unreachable() {
    require_root();
    let lab = services::lab(2, 1).unwrap();
    let api = lab.api.as_ref().unwrap();
    let (n1, n2) = (lab.state.nodes[0].clone(), lab.state.nodes[1].clone());
    api.upsert_service(
        service("empty", "10.96.0.60", &[("http", 80, 7777, "TCP"), ("dns", 53, services::UDP_PORT, "UDP")]).build(),
    );
    wait_backends(&lab, "10.96.0.60", 80, "TCP", &[]).unwrap();
    let start = Instant::now();
    let out = client(&lab, &n1, &n1.pods[0].netns, &["tcp", "10.96.0.60", "80", "3"]).unwrap();
    assert_eq!(out, vec![Outcome::Err("ECONNREFUSED".into()); 3]);
    assert!(start.elapsed() < Duration::from_secs(2), "refused at once, not timed out: {:?}", start.elapsed());
    let udp = client(&lab, &n1, &n1.pods[0].netns, &["udp", "10.96.0.60", "53", "1"]).unwrap();
    assert_eq!(udp, vec![Outcome::Err("ECONNREFUSED".into())]);

    // Endpoints arrive: the same Service answers.
    let n2_pod = n2.pods[0].clone();
    api.upsert_endpoint_slice(
        slice("empty", &[("http", 7777, "TCP"), ("dns", services::UDP_PORT, "UDP")], &ready(&[(&n2.name, &n2_pod.ip)]))
            .build(),
    );
    wait_backends(&lab, "10.96.0.60", 80, "TCP", &[format!("{}:7777", n2_pod.ip)]).unwrap();
    let out = client(&lab, &n1, &n1.pods[0].netns, &["tcp", "10.96.0.60", "80", "3"]).unwrap();
    assert!(out.iter().all(|o| o.answer() == Some(&n2_pod.name)), "{out:?}");

    // internalTrafficPolicy: Local with the only endpoint on n2: n2's pods
    // reach it, n1's are told the host is unreachable.
    api.upsert_service(service("local", "10.96.0.61", &[("", 80, 7777, "TCP")]).internal_traffic_local().build());
    api.upsert_endpoint_slice(slice("local", &[("", 7777, "TCP")], &ready(&[(&n2.name, &n2_pod.ip)])).build());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let a = services::frontend_backends(&lab, 0, "10.96.0.61", 80, "TCP").unwrap();
        let b = services::frontend_backends(&lab, 1, "10.96.0.61", 80, "TCP").unwrap();
        if a == Some(vec![]) && b == Some(vec![format!("{}:7777", n2_pod.ip)]) {
            break;
        }
        assert!(Instant::now() < deadline, "n1 {a:?}, n2 {b:?}");
        sleep(Duration::from_millis(50));
    }
    let from_n1 = client(&lab, &n1, &n1.pods[0].netns, &["tcp", "10.96.0.61", "80", "2"]).unwrap();
    assert_eq!(from_n1, vec![Outcome::Err("EHOSTUNREACH".into()); 2]);
    let from_n2 = client(&lab, &n2, &n2_pod.netns, &["tcp", "10.96.0.61", "80", "2"]).unwrap();
    assert!(from_n2.iter().all(|o| o.answer() == Some(&n2_pod.name)), "{from_n2:?}");
}

#[test]
fn session_affinity_holds_for_its_timeout_then_chooses_again() {
    require_root();
    let lab = services::lab(2, 2).unwrap();
    let api = lab.api.as_ref().unwrap();
    let backends = all_pods(&lab);
    api.upsert_service(service("sticky", "10.96.0.70", &[("", 80, 7777, "TCP")]).client_ip_affinity(Some(1)).build());
    api.upsert_endpoint_slice(slice("sticky", &[("", 7777, "TCP")], &endpoints(&backends)).build());
    wait_backends(&lab, "10.96.0.70", 80, "TCP", &targets(&backends, 7777)).unwrap();
    let n1 = lab.state.nodes[0].clone();
    // Within the timeout (each use refreshes it): one backend for all.
    let burst = client(&lab, &n1, &n1.pods[0].netns, &["tcp", "10.96.0.70", "80", "30"]).unwrap();
    assert_eq!(oks(&burst), 30);
    assert_eq!(tally(&burst).len(), 1, "affinity keeps one backend: {:?}", tally(&burst));
    // Past the timeout each time: chosen again; 8 picks of 4 backends are
    // all the same with probability 4⁻⁷.
    let mut seen = BTreeSet::new();
    for _ in 0..8 {
        sleep(Duration::from_millis(1200));
        let one = client(&lab, &n1, &n1.pods[0].netns, &["tcp", "10.96.0.70", "80", "1"]).unwrap();
        seen.insert(one[0].answer().expect("answered").to_string());
    }
    assert!(seen.len() >= 2, "after the timeout the choice is made again: {seen:?}");
    // Without affinity the same burst spreads (the test above is not luck).
    api.upsert_service(service("sticky", "10.96.0.70", &[("", 80, 7777, "TCP")]).build());
    let deadline = Instant::now() + Duration::from_secs(10);
    while services::service_status(&lab, 0).unwrap()["services"]["frontends"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["ip"] == "10.96.0.70" && f["affinityTimeoutSeconds"] != 0)
    {
        assert!(Instant::now() < deadline);
        sleep(Duration::from_millis(50));
    }
    let burst = client(&lab, &n1, &n1.pods[0].netns, &["tcp", "10.96.0.70", "80", "30"]).unwrap();
    assert!(tally(&burst).len() >= 2, "{:?}", tally(&burst));
}

#[test]
fn endpoint_churn_sends_no_new_connection_to_a_removed_backend_and_breaks_no_established_one() {
    require_root();
    let lab = services::lab(2, 2).unwrap();
    let backends = all_pods(&lab);
    publish_web(&lab, &backends);
    wait_backends(&lab, WEB_IP, 7779, "TCP", &targets(&backends, 7779)).unwrap();
    let n1 = lab.state.nodes[0].clone();
    // Established connections, through the Service, spread over backends.
    let streams: Vec<_> =
        (0..6).map(|_| spawn_client(&lab, &n1, &n1.pods[0].netns, &["stream", WEB_IP, "7779", "8"]).unwrap()).collect();
    // And a stream of new connections, one every 20 ms, all through the
    // churn: none may fail.
    let fresh = spawn_client(&lab, &n1, &n1.pods[1].netns, &["tcp", WEB_IP, "80", "250", "20"]).unwrap();
    sleep(Duration::from_millis(500));
    for round in 0..2 {
        // 4 → 1.
        let keep = vec![backends[3].clone()];
        publish_web_endpoints(&lab, &keep);
        wait_backends(&lab, WEB_IP, 80, "TCP", &targets(&keep, 7777)).unwrap();
        let after = client(&lab, &n1, &n1.pods[0].netns, &["tcp", WEB_IP, "80", "40"]).unwrap();
        let only = lab.pods()[3].1.name.clone();
        assert_eq!(tally(&after).into_iter().collect::<Vec<_>>(), vec![(only, 40)], "round {round}");
        // 1 → 4: new connections spread again.
        publish_web_endpoints(&lab, &backends);
        wait_backends(&lab, WEB_IP, 80, "TCP", &targets(&backends, 7777)).unwrap();
        let after = client(&lab, &n1, &n1.pods[0].netns, &["tcp", WEB_IP, "80", "40"]).unwrap();
        assert_eq!(oks(&after), 40);
        assert!(tally(&after).len() >= 3, "round {round}: {:?}", tally(&after));
    }
    let (outcomes, _) = finish(fresh).unwrap();
    assert_eq!((outcomes.len(), oks(&outcomes)), (250, 250), "new connections during churn: {:?}", tally(&outcomes));
    for s in streams {
        let (_, text) = finish(s).unwrap();
        assert!(text.trim_end().ends_with("done"), "an established connection broke:\n{text}");
        assert!(!text.contains("err"), "{text}");
    }
}

#[test]
fn agent_sigkill_and_restart_under_a_stream_of_new_connections_refuses_none() {
    require_root();
    let mut lab = services::lab(2, 2).unwrap();
    let backends = all_pods(&lab);
    publish_web(&lab, &backends);
    wait_backends(&lab, WEB_IP, 80, "TCP", &targets(&backends, 7777)).unwrap();
    let n1 = lab.state.nodes[0].clone();
    // About 4 s of fresh connections, one every 10 ms, over the restart,
    // and a connection kept open through it.
    let stream = spawn_client(&lab, &n1, &n1.pods[0].netns, &["tcp", WEB_IP, "80", "300", "10"]).unwrap();
    let open = spawn_client(&lab, &n1, &n1.pods[1].netns, &["stream", WEB_IP, "7779", "5"]).unwrap();
    sleep(Duration::from_millis(500));
    lab.kill_agent(0).unwrap();
    sleep(Duration::from_millis(500));
    lab.start_agent(0).unwrap();
    lab.wait_agent_ready(0).unwrap();
    let (outcomes, _) = finish(stream).unwrap();
    assert_eq!(outcomes.len(), 300);
    assert_eq!(oks(&outcomes), 300, "{:?}", tally(&outcomes));
    let (_, text) = finish(open).unwrap();
    assert!(text.trim_end().ends_with("done") && !text.contains("err"), "the open connection broke:\n{text}");
    // The restarted agent took the maps over and still follows changes.
    publish_web_endpoints(&lab, &backends[..1]);
    wait_backends(&lab, WEB_IP, 80, "TCP", &targets(&backends[..1], 7777)).unwrap();
}

/// Issue #14: a connected UDP socket is translated once, at `connect()`, so
/// it stays on its backend for life. When that backend leaves the Service
/// the agent destroys the socket (SOCK_DESTROY): the client sees
/// ECONNABORTED, and the socket it connects next reaches a live backend.
#[test]
fn a_connected_udp_socket_to_a_removed_backend_is_aborted_and_a_new_socket_reaches_a_live_one() {
    connected_udp_socket_to_a_removed_backend(UdpClient::Ipv4);
}

/// The same for an IPv6 socket connected to the v4-mapped ClusterIP (issue
/// #24): only an `AF_INET6` sock_diag dump lists it.
#[test]
fn an_ipv6_udp_socket_connected_v4_mapped_to_a_removed_backend_is_aborted_too() {
    connected_udp_socket_to_a_removed_backend(UdpClient::Ipv4Mapped);
}

/// And for an IPv6 ClusterIP whose IPv6 backend leaves (issue 28): the
/// IPv6 reconciler reports what its UDP frontends lost, the sweep finds the
/// native `AF_INET6` socket and `SOCK_REVERSE6` names its frontend.
#[test]
fn an_ipv6_udp_socket_to_a_removed_ipv6_backend_is_aborted_and_a_new_socket_reaches_a_live_one() {
    connected_udp_socket_to_a_removed_backend(UdpClient::Ipv6);
}

/// The client's socket and the Service it connects to.
#[derive(Clone, Copy, PartialEq)]
enum UdpClient {
    /// `AF_INET`, an IPv4 ClusterIP.
    Ipv4,
    /// `AF_INET6`, the IPv4 ClusterIP v4-mapped.
    Ipv4Mapped,
    /// `AF_INET6`, an IPv6 ClusterIP with the pods' IPv6 addresses as
    /// endpoints (a dual-stack lab).
    Ipv6,
}

fn connected_udp_socket_to_a_removed_backend(client: UdpClient) {
    use std::{
        io::{BufRead, BufReader},
        sync::mpsc,
    };
    require_root();
    let ipv6 = client == UdpClient::Ipv6;
    let mut lab = if ipv6 { services::dual_stack_lab(1, 3) } else { services::lab(1, 3) }.unwrap();
    let port = services::UDP_PORT;
    // pods[0] is the client; pods[1] and [2] (by name, IP of the Service's
    // family) the backends.
    let pods: Vec<(String, String)> = lab
        .pods()
        .iter()
        .map(|(_, p)| (p.name.clone(), if ipv6 { p.ip6.clone().expect("dual-stack pod") } else { p.ip.clone() }))
        .collect();
    if ipv6 {
        let servers: Vec<(String, String, String)> =
            lab.pods().iter().map(|(_, p)| (p.netns.clone(), p.name.clone(), p.ip6.clone().unwrap())).collect();
        for (netns, name, ip6) in servers {
            let serve = ["python3", "-c", services::CLIENT, "udp-serve", &ip6, &port.to_string(), &name];
            lab.spawn_helper(ns_cmd(&netns, &serve), &format!("{name}-udp6")).unwrap();
            // Bound before any datagram is sent (a readiness wait).
            let deadline = Instant::now() + Duration::from_secs(10);
            while ns_exec(&netns, &["ss", "-H", "-6uln", &format!("sport = :{port}")]).unwrap().trim().is_empty() {
                assert!(Instant::now() < deadline, "the IPv6 UDP server of {name} did not bind");
                sleep(Duration::from_millis(20));
            }
        }
    }
    let api = lab.api.as_ref().unwrap();
    let n1 = lab.state.nodes[0].clone();
    let backends: Vec<(String, String)> = pods[1..].iter().map(|(_, ip)| (n1.name.clone(), ip.clone())).collect();
    let dns_ip = if ipv6 { "fd00:96::53" } else { "10.96.0.53" };
    let publish = |backends: &[(String, String)]| {
        let mut s = slice("dns", &[("dns", port, "UDP")], &endpoints(backends));
        if ipv6 {
            s.address_type = "IPv6".into();
        }
        api.upsert_endpoint_slice(s.build())
    };
    let targets = |backends: &[(String, String)]| -> Vec<String> {
        if ipv6 {
            backends.iter().map(|(_, ip)| format!("[{ip}]:{port}")).collect()
        } else {
            targets(backends, port)
        }
    };
    let mut dns = service("dns", dns_ip, &[("dns", 53, port, "UDP")]);
    dns.cluster_ips = vec![dns_ip.into()];
    api.upsert_service(dns.build());
    publish(&backends);
    wait_backends(&lab, dns_ip, 53, "UDP", &targets(&backends)).unwrap();

    let target = if client == UdpClient::Ipv4Mapped { format!("::ffff:{dns_ip}") } else { dns_ip.to_string() };
    let mut child = spawn_client(&lab, &n1, &n1.pods[0].netns, &["udp-stream", &target, "53", "20"]).unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send((Instant::now(), line));
        }
    });
    // Each line of the client's output, as it arrived.
    type Line = (Instant, String);
    let mut lines: Vec<Line> = Vec::new();
    let read_until = |lines: &mut Vec<Line>, until: Instant, stop: &dyn Fn(&[Line]) -> bool| {
        while !stop(lines) {
            match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
                Ok(l) => lines.push(l),
                Err(_) => break,
            }
        }
    };
    let answers = |lines: &[Line]| -> Vec<String> {
        lines.iter().filter_map(|(_, l)| Outcome::parse(l)?.answer().map(String::from)).collect()
    };
    // Ten answers on the one socket: all from one backend.
    read_until(&mut lines, Instant::now() + Duration::from_secs(5), &|l| answers(l).len() >= 10);
    let before = answers(&lines);
    assert!(before.len() >= 10, "the stream started: {lines:?}");
    assert!(lines.iter().all(|(_, l)| !l.starts_with("err")), "no error before the change: {lines:?}");
    let stuck = before[0].clone();
    assert!(before.iter().all(|a| *a == stuck), "one connected socket, one backend: {before:?}");
    let (stuck_ip, other) = {
        let ip = |name: &str| pods.iter().find(|(n, _)| n == name).map(|(_, ip)| ip.clone()).unwrap();
        let other = pods[1..].iter().find(|(n, _)| *n != stuck).unwrap().clone();
        (ip(&stuck), other)
    };

    // That backend leaves the Service (its pod still answers: only the
    // endpoint is gone, as while a pod terminates).
    let seen = lines.len();
    let keep = vec![(n1.name.clone(), other.1.clone())];
    let published = Instant::now();
    publish(&keep);
    wait_backends(&lab, dns_ip, 53, "UDP", &targets(&keep)).unwrap();
    let switched = Instant::now();
    read_until(&mut lines, switched + Duration::from_secs(3), &|l| {
        l[seen..].iter().position(|(_, x)| x.starts_with("err")).is_some_and(|i| answers(&l[seen + i..]).len() >= 10)
    });
    child.kill().ok();
    child.wait().ok();
    let after = &lines[seen..];
    let text: Vec<&str> = after.iter().map(|(_, l)| l.as_str()).collect();
    // The agent's word on the sweep (namespaces, sockets, time).
    let sweeps: Vec<String> = std::fs::read_to_string(n1.dir.join("agent.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("UDP socket"))
        .map(String::from)
        .collect();
    eprintln!("{sweeps:#?}");
    let (err_at, err) = after
        .iter()
        .find(|(_, l)| l.starts_with("err"))
        .unwrap_or_else(|| panic!("the socket to {stuck_ip} was never aborted: {text:?}\nagent: {sweeps:?}"));
    assert_eq!(Outcome::parse(err), Some(Outcome::Err("ECONNABORTED".into())), "{text:?}");
    eprintln!(
        "aborted {:?} after the EndpointSlice update, {:?} after status showed the maps changed",
        err_at.saturating_duration_since(published),
        err_at.saturating_duration_since(switched)
    );
    assert!(
        err_at.saturating_duration_since(switched) < Duration::from_secs(1),
        "aborted {:?} after the maps changed",
        err_at.saturating_duration_since(switched)
    );
    // Only one error, then the new socket's answers all come from the
    // backend that is left.
    let i = after.iter().position(|(_, l)| l.starts_with("err")).unwrap();
    let rest = &after[i + 1..];
    assert!(rest.iter().all(|(_, l)| !l.starts_with("err")), "{text:?}");
    let reconnected = answers(rest);
    assert!(reconnected.len() >= 10 && reconnected.iter().all(|a| *a == other.0), "{text:?}");

    // Counted in `status` (the state file is written on the agent's loop).
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let v = services::service_status(&lab, 0).unwrap();
        let destroyed = v["agent"]["serviceLb"]["udpSocketsDestroyed"].as_u64().unwrap_or(0);
        if destroyed >= 1 {
            break;
        }
        assert!(Instant::now() < deadline, "status does not count the destroyed socket: {}", v["agent"]["serviceLb"]);
        sleep(Duration::from_millis(100));
    }
}

/// `status` (the readiness probe) counts the Services loop: an agent whose
/// Services never listed (here the API server forbids them) is unhealthy
/// and says why, though its datapath and Nodes are fine; once they list it
/// is healthy again. Before, it was "healthy" with frozen Service maps.
#[test]
fn an_agent_whose_services_never_synced_is_unhealthy_until_they_do() {
    require_root();
    let mut lab = services::lab(1, 0).unwrap();
    lab.api.as_ref().unwrap().forbid(sluice_tests::apiserver::Kind::Service, true);
    lab.kill_agent(0).unwrap();
    lab.start_agent(0).unwrap();
    lab.wait_agent_ready(0).unwrap();
    let wait_status = |what: &str, pred: &dyn Fn(&serde_json::Value) -> bool| {
        let start = Instant::now();
        loop {
            let s = lab.status(0).unwrap();
            if pred(&s) {
                return s;
            }
            assert!(start.elapsed() < Duration::from_secs(15), "{what}: {s:#}");
            sleep(Duration::from_millis(100));
        }
    };
    let s = wait_status("unhealthy, naming the Services", &|s| {
        s["unhealthy"][0]
            .as_str()
            .is_some_and(|u| u.starts_with("Services not synced: services: ") && u.contains("403"))
    });
    assert_eq!(s["healthy"], false);
    assert_eq!(s["unhealthy"].as_array().unwrap().len(), 1, "the rest of the node is fine: {s:#}");
    assert_eq!(s["live"], true, "restarting the agent would not cure this: {s:#}");
    assert_eq!(s["agent"]["serviceLb"]["synced"], false);
    lab.api.as_ref().unwrap().forbid(sluice_tests::apiserver::Kind::Service, false);
    wait_status("healthy once the Services list", &|s| s["healthy"] == true);
}

/// `node` is one of the lab's nodes: its LAN address.
fn node_ip(lab: &Lab, i: usize) -> String {
    lab.state.nodes[i].ip.split('/').next().unwrap().to_string()
}

/// Wait until every node's `status --services` lists `want` among the
/// addresses NodePorts answer on.
fn wait_node_addresses(lab: &Lab, want: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    for i in 0..lab.state.nodes.len() {
        loop {
            let v = services::service_status(lab, i).unwrap();
            let got: BTreeSet<String> = v["services"]["nodeAddresses"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a["ip"].as_str().map(String::from))
                .collect();
            if want.iter().all(|w| got.contains(w)) {
                break;
            }
            assert!(Instant::now() < deadline, "node {i}: NodePort addresses {got:?}, want {want:?}");
            sleep(Duration::from_millis(100));
        }
    }
}

/// Issue 27, NodePorts at the socket, no kube-proxy rules in the lab: a
/// pod reaches the NodePort on another node's address, a node its own on
/// 127.0.0.1 and on its address, over TCP and UDP; each answer comes from
/// a backend and the socket still shows the address it named. A pod's
/// 127.0.0.1 is its own: never translated.
#[test]
fn node_ports_from_pods_and_nodes_on_every_node_address_and_loopback() {
    require_root();
    let lab = services::lab(2, 2).unwrap();
    let api = lab.api.as_ref().unwrap();
    let backends = all_pods(&lab);
    let svc = service("np", "10.96.0.70", &[("http", 80, 7777, "TCP"), ("dns", 53, services::UDP_PORT, "UDP")])
        .type_("NodePort");
    let (tcp_np, udp_np) = (svc.node_port(0), svc.node_port(1));
    api.upsert_service(svc.build());
    api.upsert_endpoint_slice(
        slice("np", &[("http", 7777, "TCP"), ("dns", services::UDP_PORT, "UDP")], &endpoints(&backends)).build(),
    );
    wait_backends(&lab, "*", tcp_np, "TCP", &targets(&backends, 7777)).unwrap();
    wait_backends(&lab, "*", udp_np, "UDP", &targets(&backends, services::UDP_PORT)).unwrap();
    let (ip1, ip2) = (node_ip(&lab, 0), node_ip(&lab, 1));
    wait_node_addresses(&lab, &[ip1.clone(), ip2.clone()]);
    let v = services::service_status(&lab, 0).unwrap();
    let np = v["services"]["frontends"].as_array().unwrap().iter().find(|f| f["port"] == tcp_np).cloned().unwrap();
    assert_eq!(np["kind"], "NodePort", "{np}");
    let names: BTreeSet<String> = lab.pods().iter().map(|(_, p)| p.name.clone()).collect();
    let (n1, pod) = (lab.state.nodes[0].clone(), lab.state.nodes[0].pods[0].clone());
    let (tcp_s, udp_s) = (tcp_np.to_string(), udp_np.to_string());

    // A pod on n1 → n2's address: every backend, the peer is n2:nodePort.
    let out = client(&lab, &n1, &pod.netns, &["tcp", &ip2, &tcp_s, "80"]).unwrap();
    assert_eq!(oks(&out), 80, "{:?}", tally(&out));
    assert!(out.iter().all(|o| matches!(o, Outcome::Ok { peer, .. } if peer == &format!("{ip2}:{tcp_np}"))));
    assert_eq!(tally(&out).keys().cloned().collect::<BTreeSet<_>>(), names, "{:?}", tally(&out));
    let out = client(&lab, &n1, &pod.netns, &["udp", &ip2, &udp_s, "20"]).unwrap();
    assert_eq!(oks(&out), 20, "{:?}", tally(&out));
    assert!(out.iter().all(|o| matches!(o, Outcome::Ok { peer, .. } if peer == &format!("{ip2}:{udp_np}"))));
    // ... and its own node's address.
    let out = client(&lab, &n1, &pod.netns, &["tcp", &ip1, &tcp_s, "20"]).unwrap();
    assert_eq!(oks(&out), 20, "{:?}", tally(&out));

    // n1 itself: on 127.0.0.1 and on its address, TCP and UDP (sendto too).
    for ip in ["127.0.0.1", ip1.as_str()] {
        let out = client(&lab, &n1, &n1.netns, &["tcp", ip, &tcp_s, "20"]).unwrap();
        assert_eq!(oks(&out), 20, "n1 → {ip}: {:?}", tally(&out));
        assert!(tally(&out).len() >= 3, "spread: {:?}", tally(&out));
        let out = client(&lab, &n1, &n1.netns, &["udp", ip, &udp_s, "10"]).unwrap();
        assert_eq!(oks(&out), 10, "n1 → {ip} UDP: {:?}", tally(&out));
        let out = client(&lab, &n1, &n1.netns, &["sendto", ip, &udp_s, "10"]).unwrap();
        assert_eq!(oks(&out), 10, "n1 → {ip} sendto: {:?}", tally(&out));
        assert!(out.iter().all(|o| matches!(o, Outcome::Ok { peer, .. } if peer == &format!("{ip}:{udp_np}"))));
    }

    // A pod's loopback is the pod's: nothing listens there.
    let out = client(&lab, &n1, &pod.netns, &["tcp", "127.0.0.1", &tcp_s, "2"]).unwrap();
    assert_eq!(out, vec![Outcome::Err("ECONNREFUSED".into()); 2]);

    let v = services::service_status(&lab, 0).unwrap();
    assert!(v["services"]["counters"]["node_port"].as_u64().unwrap() >= 190, "{}", v["services"]["counters"]);
}

/// Issue 27: `externalIPs` and LoadBalancer ingress IPs from pods and the
/// node, and a NodePort without endpoints refused at once (as kube-proxy's
/// REJECT), with no kube-proxy rules in the lab.
#[test]
fn external_ips_and_load_balancer_ingress_ips_reach_backends_and_empty_node_ports_are_refused() {
    require_root();
    let lab = services::lab(2, 1).unwrap();
    let api = lab.api.as_ref().unwrap();
    let backends = all_pods(&lab);
    const EXTERNAL: &str = "192.0.2.10";
    const INGRESS: &str = "198.51.100.7";
    api.upsert_service(
        service("lb", "10.96.0.71", &[("http", 80, 7777, "TCP"), ("dns", 53, services::UDP_PORT, "UDP")])
            .type_("LoadBalancer")
            .external_ips(&[EXTERNAL])
            .load_balancer_ips(&[INGRESS])
            .build(),
    );
    api.upsert_endpoint_slice(
        slice("lb", &[("http", 7777, "TCP"), ("dns", services::UDP_PORT, "UDP")], &endpoints(&backends)).build(),
    );
    let empty = service("empty-np", "10.96.0.72", &[("http", 81, 7777, "TCP")]).type_("NodePort");
    let empty_np = empty.node_port(0);
    api.upsert_service(empty.build());
    for ip in [EXTERNAL, INGRESS] {
        wait_backends(&lab, ip, 80, "TCP", &targets(&backends, 7777)).unwrap();
        wait_backends(&lab, ip, 53, "UDP", &targets(&backends, services::UDP_PORT)).unwrap();
    }
    wait_backends(&lab, "*", empty_np, "TCP", &[]).unwrap();
    let v = services::service_status(&lab, 0).unwrap();
    let kind_of = |ip: &str| {
        v["services"]["frontends"].as_array().unwrap().iter().find(|f| f["ip"] == ip && f["port"] == 80).unwrap()
            ["kind"]
            .clone()
    };
    assert_eq!(kind_of(EXTERNAL), "ExternalIP");
    assert_eq!(kind_of(INGRESS), "LoadBalancer");
    assert_eq!(kind_of("10.96.0.71"), "ClusterIP");

    let names: BTreeSet<String> = lab.pods().iter().map(|(_, p)| p.name.clone()).collect();
    let n1 = lab.state.nodes[0].clone();
    let pod = n1.pods[0].clone();
    for ip in [EXTERNAL, INGRESS] {
        let out = client(&lab, &n1, &pod.netns, &["tcp", ip, "80", "40"]).unwrap();
        assert_eq!(oks(&out), 40, "pod → {ip}: {:?}", tally(&out));
        assert_eq!(tally(&out).keys().cloned().collect::<BTreeSet<_>>(), names, "{:?}", tally(&out));
        assert!(out.iter().all(|o| matches!(o, Outcome::Ok { peer, .. } if peer == &format!("{ip}:80"))));
        let out = client(&lab, &n1, &pod.netns, &["udp", ip, "53", "10"]).unwrap();
        assert_eq!(oks(&out), 10, "pod → {ip} UDP: {:?}", tally(&out));
        let out = client(&lab, &n1, &n1.netns, &["tcp", ip, "80", "10"]).unwrap();
        assert_eq!(oks(&out), 10, "node → {ip}: {:?}", tally(&out));
    }

    // No endpoints: refused at once, from a pod and from the node.
    wait_node_addresses(&lab, &[node_ip(&lab, 1)]);
    let start = Instant::now();
    let out = client(&lab, &n1, &pod.netns, &["tcp", &node_ip(&lab, 1), &empty_np.to_string(), "2"]).unwrap();
    assert_eq!(out, vec![Outcome::Err("ECONNREFUSED".into()); 2]);
    let out = client(&lab, &n1, &n1.netns, &["tcp", "127.0.0.1", &empty_np.to_string(), "2"]).unwrap();
    assert_eq!(out, vec![Outcome::Err("ECONNREFUSED".into()); 2]);
    assert!(start.elapsed() < Duration::from_secs(3), "refused at once: {:?}", start.elapsed());
    let v = services::service_status(&lab, 0).unwrap();
    assert!(v["services"]["counters"]["refused_no_endpoints"].as_u64().unwrap() >= 4, "{}", v["services"]["counters"]);
}

/// GET http://ip:port/healthz from `netns` of `node`: (status, Content-Type, body).
fn http_get(lab: &Lab, i: usize, ip: &str, port: u16) -> Option<(u16, String, String)> {
    const GET: &str = "import sys, urllib.request, urllib.error\n\
        try:\n    r = urllib.request.urlopen(sys.argv[1], timeout=3)\n\
        except urllib.error.HTTPError as e:\n    r = e\n\
        except OSError as e:\n    print('unreachable', e); sys.exit(0)\n\
        print(r.status); print(r.headers['Content-Type'], r.headers['X-Content-Type-Options']); print(r.read().decode())\n";
    let node = &lab.state.nodes[i];
    let url = format!("http://{ip}:{port}/healthz");
    let out = lab.node_cmd(node, &node.netns, &["python3", "-c", GET, &url]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut lines = text.splitn(3, '\n');
    let status = lines.next()?.trim().parse().ok()?;
    Some((status, lines.next()?.to_string(), lines.next()?.trim_end().to_string()))
}

/// Issue 27: a LoadBalancer Service with `externalTrafficPolicy: Local`
/// and its one endpoint on n2: the agents answer its healthCheckNodePort
/// as kube-proxy does, 200 with the local count on n2, 503 on n1 (asked
/// from n1, over the LAN for n2, as a load balancer would).
#[test]
fn health_check_node_port_answers_200_with_local_endpoints_and_503_without() {
    require_root();
    let lab = services::lab(2, 1).unwrap();
    let api = lab.api.as_ref().unwrap();
    let n2_pod = lab.state.nodes[1].pods[0].clone();
    let svc = service("etp", "10.96.0.73", &[("http", 80, 7777, "TCP")]).type_("LoadBalancer").external_traffic_local();
    let port = svc.health_check_node_port().unwrap();
    api.upsert_service(svc.build());
    api.upsert_endpoint_slice(
        slice("etp", &[("http", 7777, "TCP")], &ready(&[(&lab.state.nodes[1].name, &n2_pod.ip)])).build(),
    );
    wait_backends(&lab, "10.96.0.73", 80, "TCP", &[format!("{}:7777", n2_pod.ip)]).unwrap();
    let body = |n: usize| {
        format!(
            "{{\n\t\"service\": {{\n\t\t\"namespace\": \"default\",\n\t\t\"name\": \"etp\"\n\t}},\n\t\"localEndpoints\": {n},\n\t\"serviceProxyHealthy\": true\n}}"
        )
    };
    let headers = "application/json nosniff".to_string();
    for (i, want) in [(0, (503, headers.clone(), body(0))), (1, (200, headers.clone(), body(1)))] {
        let ip = node_ip(&lab, i);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let got = http_get(&lab, 0, &ip, port);
            if got.as_ref() == Some(&want) {
                break;
            }
            assert!(Instant::now() < deadline, "node {i} {ip}:{port}: {got:?}, want {want:?}");
            sleep(Duration::from_millis(200));
        }
    }
    // The endpoint leaves n2: its check turns 503 too.
    api.upsert_endpoint_slice(slice("etp", &[("http", 7777, "TCP")], &[]).build());
    let deadline = Instant::now() + Duration::from_secs(15);
    while http_get(&lab, 0, &node_ip(&lab, 1), port) != Some((503, headers.clone(), body(0))) {
        assert!(Instant::now() < deadline, "{:?}", http_get(&lab, 0, &node_ip(&lab, 1), port));
        sleep(Duration::from_millis(200));
    }
}

/// Issue 27, hairpin as kube-proxy's: a pod that is its Service's only
/// backend reaches itself through the Service's ClusterIP and through the
/// NodePort on its own node's address and on another node's, TCP and UDP,
/// with no kube-proxy rules in the lab. The answer is the pod's own (its
/// servers answer with its name), and the socket still shows the
/// frontend it named.
#[test]
fn hairpin_a_pod_reaches_itself_through_its_own_cluster_ip_and_node_port() {
    require_root();
    let lab = services::lab(2, 1).unwrap();
    let api = lab.api.as_ref().unwrap();
    let (n1, pod) = (lab.state.nodes[0].clone(), lab.state.nodes[0].pods[0].clone());
    let me = vec![(n1.name.clone(), pod.ip.clone())];
    const HAIRPIN_IP: &str = "10.96.0.72";
    let svc = service("self", HAIRPIN_IP, &[("http", 80, 7777, "TCP"), ("dns", 53, services::UDP_PORT, "UDP")])
        .type_("NodePort");
    let (tcp_np, udp_np) = (svc.node_port(0), svc.node_port(1));
    api.upsert_service(svc.build());
    api.upsert_endpoint_slice(
        slice("self", &[("http", 7777, "TCP"), ("dns", services::UDP_PORT, "UDP")], &endpoints(&me)).build(),
    );
    wait_backends(&lab, HAIRPIN_IP, 80, "TCP", &targets(&me, 7777)).unwrap();
    wait_backends(&lab, "*", udp_np, "UDP", &targets(&me, services::UDP_PORT)).unwrap();
    let (ip1, ip2) = (node_ip(&lab, 0), node_ip(&lab, 1));
    wait_node_addresses(&lab, &[ip1.clone(), ip2.clone()]);
    let only_me = BTreeSet::from([pod.name.clone()]);
    for (ip, tcp, udp) in [(HAIRPIN_IP, 80u16, 53u16), (ip1.as_str(), tcp_np, udp_np), (ip2.as_str(), tcp_np, udp_np)] {
        let (tcp_s, udp_s) = (tcp.to_string(), udp.to_string());
        let out = client(&lab, &n1, &pod.netns, &["tcp", ip, &tcp_s, "10"]).unwrap();
        assert_eq!(oks(&out), 10, "{} → {ip}:{tcp}: {:?}", pod.name, tally(&out));
        assert_eq!(tally(&out).keys().cloned().collect::<BTreeSet<_>>(), only_me, "{:?}", tally(&out));
        assert!(out.iter().all(|o| matches!(o, Outcome::Ok { peer, .. } if peer == &format!("{ip}:{tcp}"))));
        let out = client(&lab, &n1, &pod.netns, &["udp", ip, &udp_s, "10"]).unwrap();
        assert_eq!(oks(&out), 10, "{} → {ip}:{udp} UDP: {:?}", pod.name, tally(&out));
        assert_eq!(tally(&out).keys().cloned().collect::<BTreeSet<_>>(), only_me, "{:?}", tally(&out));
        assert!(out.iter().all(|o| matches!(o, Outcome::Ok { peer, .. } if peer == &format!("{ip}:{udp}"))));
    }
}

/// A process this test started, killed when the test ends (pass or panic).
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Node `i`'s `net.ipv4.ip_local_reserved_ports` (its network namespace's).
fn reserved_ports(lab: &Lab, i: usize) -> String {
    let netns = &lab.state.nodes[i].netns;
    sluice_tests::lab::ns_exec(netns, &["cat", "/proc/sys/net/ipv4/ip_local_reserved_ports"])
        .unwrap()
        .trim()
        .to_string()
}

/// Issue 27, port ownership: with `--kube-proxy-replacement=true` the
/// NodePort range is reserved from ephemeral use in the node's namespace
/// (merged with what others reserved), a host process listening (TCP) or
/// bound (UDP) in it is reported (`status` warning and its ports line,
/// metrics), and `cleanup` gives back only what sluice added.
#[test]
fn a_host_socket_in_the_node_port_range_is_reported_and_the_range_is_reserved_until_cleanup() {
    require_root();
    let mut lab = services::lab(1, 1).unwrap();
    let n1 = lab.state.nodes[0].clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    while reserved_ports(&lab, 0) != "30000-32767" {
        assert!(Instant::now() < deadline, "the NodePort range is not reserved: {:?}", reserved_ports(&lab, 0));
        sleep(Duration::from_millis(100));
    }
    // Someone else reserves 8080 beside sluice's range.
    sluice_tests::lab::ns_exec(
        &n1.netns,
        &["sh", "-c", "echo 8080,30000-32767 > /proc/sys/net/ipv4/ip_local_reserved_ports"],
    )
    .unwrap();

    const LISTEN: &str = "import socket, sys, time\n\
        t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
        t.bind(('0.0.0.0', 30555)); t.listen()\n\
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(('127.0.0.1', 30556))\n\
        print('up', flush=True); time.sleep(300)\n";
    let mut child =
        lab.node_cmd(&n1, &n1.netns, &["python3", "-c", LISTEN]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let mut up = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut up).unwrap();
    assert_eq!(up.trim(), "up");
    let listener = Killed(child);

    let want = ["port collision: tcp 0.0.0.0:30555 (uid 0, inode", "port collision: udp 127.0.0.1:30556 (uid 0, inode"];
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let s = lab.status(0).unwrap();
        let warnings: Vec<String> =
            s["warnings"].as_array().unwrap().iter().map(|w| w.as_str().unwrap().to_string()).collect();
        if want.iter().all(|w| warnings.iter().any(|got| got.starts_with(w))) {
            break s;
        }
        assert!(Instant::now() < deadline, "collisions not reported: {warnings:?}");
        sleep(Duration::from_millis(200));
    };
    let ports = &status["agent"]["portOwnership"];
    assert_eq!(ports["nodePortRange"], "30000-32767", "{ports}");
    assert_eq!(ports["added"], "30000-32767", "{ports}");
    let collisions = ports["collisions"].as_array().unwrap();
    assert_eq!(collisions.len(), 2, "the agent's own sockets are not collisions: {ports}");
    assert!(collisions.iter().all(|c| c["owner"] == "nodePortRange"), "{ports}");
    // The text form has the line, the metrics the gauge and the counter.
    let text = std::process::Command::new(lab.state.bin_dir.join("sluice-agent"))
        .arg("status")
        .arg("--pin-dir")
        .arg(&n1.pin_dir)
        .arg("--data-dir")
        .arg(Lab::data_dir(&n1))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("ports: NodePort range 30000-32767, reserved 30000-32767 (sluice added 30000-32767), 2 host sockets on them"), "{text}");
    assert!(text.contains("  collision: tcp 0.0.0.0:30555 (uid 0, inode "), "{text}");
    let metrics = lab
        .node_cmd(
            &n1,
            &n1.netns,
            &[
                "python3",
                "-c",
                "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())",
                &format!("http://{}:9962/metrics", node_ip(&lab, 0)),
            ],
        )
        .output()
        .unwrap();
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    for line in [
        "sluice_port_collisions{protocol=\"tcp\",owner=\"node_port_range\"} 1",
        "sluice_port_collisions{protocol=\"udp\",owner=\"node_port_range\"} 1",
        "sluice_port_collisions_detected_total 2",
    ] {
        assert!(metrics.lines().any(|l| l == line), "no {line:?} in:\n{metrics}");
    }
    drop(listener);

    // Cleanup gives back sluice's ports, and only those.
    lab.kill_agent(0).unwrap();
    lab.cleanup(0).unwrap();
    assert_eq!(reserved_ports(&lab, 0), "8080", "others' reservations stay");
}

/// The backends node `i`'s maps give the hostPort `ip:port/protocol`
/// (`*`: on every local address), once they are `want`.
fn wait_host_port(lab: &Lab, i: usize, ip: &str, port: u16, protocol: &str, want: Option<Vec<String>>) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = services::service_status(lab, i).unwrap();
        let got: Option<Vec<String>> = v["services"]["frontends"].as_array().unwrap().iter().find_map(|f| {
            (f["kind"] == "HostPort" && f["ip"] == ip && f["port"] == port && f["protocol"] == protocol)
                .then(|| f["backends"].as_array().unwrap().iter().map(|b| b.as_str().unwrap().to_string()).collect())
        });
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "node {i}: hostPort {ip}:{port}/{protocol} has {got:?}, want {want:?}");
        sleep(Duration::from_millis(100));
    }
}

/// Issue 27, hostPort without portmap (no portmap, no kube-proxy rules in
/// the lab): a container port's hostPort, read from the pod's Pod object,
/// is a frontend of its own node's socket LB. A pod of that node and the
/// node itself reach it on the node's address (and the node on
/// 127.0.0.1), TCP and UDP, and get the pod's containerPort; one with a
/// `hostIP` answers on that address only. Another node's address on the
/// same port is never taken for it, and the other node has no such
/// frontend. The Pod gone, its hostPort goes.
#[test]
fn host_ports_from_a_pod_and_from_the_node_reach_the_pod_without_portmap() {
    require_root();
    let lab = services::lab(2, 2).unwrap();
    let api = lab.api.as_ref().unwrap();
    let n1 = lab.state.nodes[0].clone();
    let (target, client_pod) = (n1.pods[0].clone(), n1.pods[1].clone());
    let (ip1, ip2) = (node_ip(&lab, 0), node_ip(&lab, 1));
    let udp = services::UDP_PORT;
    api.upsert_pod(
        sluice_tests::apiserver::PodObject::new("default", &target.name, &n1.name, &target.ip)
            .host_port(7777, 8080, "TCP", None)
            .host_port(udp, 8053, "UDP", None)
            .build(),
    );
    api.upsert_pod(
        sluice_tests::apiserver::PodObject::new("default", &client_pod.name, &n1.name, &client_pod.ip)
            .host_port(7777, 8081, "TCP", Some(&ip1))
            .build(),
    );
    wait_host_port(&lab, 0, "*", 8080, "TCP", Some(vec![format!("{}:7777", target.ip)]));
    wait_host_port(&lab, 0, "*", 8053, "UDP", Some(vec![format!("{}:{udp}", target.ip)]));
    wait_host_port(&lab, 0, &ip1, 8081, "TCP", Some(vec![format!("{}:7777", client_pod.ip)]));
    wait_node_addresses(&lab, &[ip1.clone(), ip2.clone()]);
    // n2 serves no pod of n1's.
    wait_host_port(&lab, 1, "*", 8080, "TCP", None);
    let only = |name: &str| BTreeSet::from([name.to_string()]);

    // A host process holds 8080 on every address of n1 (the port is the
    // pod's): reported as a collision, and never answers for the hostPort.
    const SQUATTER: &str = "import socket, time\n\
        t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
        t.bind(('0.0.0.0', 8080)); t.listen()\n\
        print('up', flush=True)\n\
        while True:\n    c, _ = t.accept(); c.sendall(b'squatter\\n'); c.close()\n";
    let mut child = lab
        .node_cmd(&n1, &n1.netns, &["python3", "-c", SQUATTER])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut up = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut up).unwrap();
    assert_eq!(up.trim(), "up");
    let squatter = Killed(child);
    let want = "port collision: tcp 0.0.0.0:8080 (uid 0, inode";
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = lab.status(0).unwrap();
        let warnings: Vec<String> =
            s["warnings"].as_array().unwrap().iter().map(|w| w.as_str().unwrap().to_string()).collect();
        if let Some(w) = warnings.iter().find(|w| w.starts_with(want)) {
            assert!(w.ends_with(&format!("on a hostPort of default/{}", target.name)), "{w}");
            break;
        }
        assert!(Instant::now() < deadline, "hostPort collision not reported: {warnings:?}");
        sleep(Duration::from_millis(200));
    }

    // From a pod of n1 to n1's address.
    let out = client(&lab, &n1, &client_pod.netns, &["tcp", &ip1, "8080", "10"]).unwrap();
    assert_eq!(tally(&out).keys().cloned().collect::<BTreeSet<_>>(), only(&target.name), "{:?}", tally(&out));
    assert!(out.iter().all(|o| matches!(o, Outcome::Ok { peer, .. } if peer == &format!("{ip1}:8080"))));
    let out = client(&lab, &n1, &client_pod.netns, &["udp", &ip1, "8053", "5"]).unwrap();
    assert_eq!(tally(&out).keys().cloned().collect::<BTreeSet<_>>(), only(&target.name), "{:?}", tally(&out));
    // From the node: its address and 127.0.0.1, TCP, UDP and sendto.
    for ip in [ip1.as_str(), "127.0.0.1"] {
        for (mode, port) in [("tcp", "8080"), ("udp", "8053"), ("sendto", "8053")] {
            let out = client(&lab, &n1, &n1.netns, &[mode, ip, port, "5"]).unwrap();
            assert_eq!(oks(&out), 5, "n1 → {ip}:{port} {mode}: {:?}", tally(&out));
            assert_eq!(tally(&out).keys().cloned().collect::<BTreeSet<_>>(), only(&target.name));
        }
    }
    // A hostIP: that address only.
    let out = client(&lab, &n1, &n1.netns, &["tcp", &ip1, "8081", "5"]).unwrap();
    assert_eq!(tally(&out).keys().cloned().collect::<BTreeSet<_>>(), only(&client_pod.name), "{:?}", tally(&out));
    let out = client(&lab, &n1, &n1.netns, &["tcp", "127.0.0.1", "8081", "2"]).unwrap();
    assert_eq!(out, vec![Outcome::Err("ECONNREFUSED".into()); 2], "hostIP {ip1} only");
    // Another node's address is that node's: not n1's pod (nothing
    // listens on n2:8080 and no portmap is there).
    let out = client(&lab, &n1, &client_pod.netns, &["tcp", &ip2, "8080", "2"]).unwrap();
    assert_eq!(out, vec![Outcome::Err("ECONNREFUSED".into()); 2], "n2's address is not a hostPort of n1");

    let v = services::service_status(&lab, 0).unwrap();
    assert!(v["services"]["counters"]["host_port"].as_u64().unwrap() >= 45, "{}", v["services"]["counters"]);
    let st = lab.status(0).unwrap();
    assert_eq!(st["agent"]["serviceLb"]["hostPorts"], 3, "{}", st["agent"]["serviceLb"]);

    drop(squatter);
    // The pod goes: so does its hostPort.
    api.delete_pod("default", &target.name);
    wait_host_port(&lab, 0, "*", 8080, "TCP", None);
    let out = client(&lab, &n1, &n1.netns, &["tcp", "127.0.0.1", "8080", "2"]).unwrap();
    assert_eq!(out, vec![Outcome::Err("ECONNREFUSED".into()); 2]);
}

/// `connectivity-test --json` on node `i`, run as a process of the node
/// (its cgroup: the socket LB covers it, as the cgroup root does on a
/// real node).
fn connectivity_as_node(lab: &Lab, i: usize, extra: &[&str]) -> serde_json::Value {
    let node = &lab.state.nodes[i];
    let bin = lab.state.bin_dir.join("sluice-agent").display().to_string();
    let (pins, data) = (node.pin_dir.display().to_string(), Lab::data_dir(node).display().to_string());
    let mut args = vec![bin.as_str(), "connectivity-test", "--json", "--pin-dir", &pins, "--data-dir", &data];
    args.extend(extra);
    let out = lab.node_cmd(node, &node.netns, &args).output().unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    })
}

/// Issue 27, `connectivity-test`'s `pod-to-nodeport` class: from the
/// health endpoint (a pod) to another node's address on a NodePort, the
/// lowest TCP NodePort with backends picked from the maps when none is
/// named; a NodePort without endpoints fails and says where to look.
#[test]
fn connectivity_test_probes_pod_to_nodeport_on_every_other_node() {
    require_root();
    let lab = services::lab(2, 1).unwrap();
    let api = lab.api.as_ref().unwrap();
    let backends = all_pods(&lab);
    let svc = service("np", "10.96.0.74", &[("http", 80, 7777, "TCP")]).type_("NodePort");
    let np = svc.node_port(0);
    api.upsert_service(svc.build());
    api.upsert_endpoint_slice(slice("np", &[("http", 7777, "TCP")], &endpoints(&backends)).build());
    let empty = service("empty", "10.96.0.75", &[("http", 81, 7777, "TCP")]).type_("NodePort");
    let empty_np = empty.node_port(0);
    api.upsert_service(empty.build());
    wait_backends(&lab, "*", np, "TCP", &targets(&backends, 7777)).unwrap();
    wait_backends(&lab, "*", empty_np, "TCP", &[]).unwrap();
    let ip2 = node_ip(&lab, 1);

    let v = connectivity_as_node(&lab, 0, &[]);
    let rows: Vec<&serde_json::Value> =
        v.as_array().unwrap().iter().filter(|r| r["target"]["class"] == "pod-to-nodeport").collect();
    assert_eq!(rows.len(), 1, "one other node: {v:#}");
    let r = rows[0];
    assert_eq!((r["target"]["ip"].as_str().unwrap(), r["target"]["port"].as_u64()), (ip2.as_str(), Some(np as u64)));
    assert_eq!(r["target"]["node"], lab.state.nodes[1].name.as_str());
    assert_eq!(r["ok"], true, "{r}");
    assert!(r["tcpMs"].is_number(), "{r}");

    let port = empty_np.to_string();
    let v = connectivity_as_node(&lab, 0, &["--node-port", &port]);
    let r = v.as_array().unwrap().iter().find(|r| r["target"]["class"] == "pod-to-nodeport").unwrap();
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["tcpError"].as_str().unwrap(), "Connection refused (os error 111)", "{r}");
    assert!(r["reason"].as_str().unwrap().contains(&format!("NodePort {empty_np} on node")), "{r}");
}

/// Issue 27, `connectivity-test`'s `world-to-nodeport` class: with
/// `--world-netns`, from a namespace outside the cluster (the lab's
/// world) to every node's address, this node's included, on the NodePort:
/// the uplinks' translation. A NodePort without endpoints fails, refused
/// at once (the uplink's RST), and says where to look.
#[test]
fn connectivity_test_probes_world_to_nodeport_on_every_node() {
    require_root();
    let mut lab = services::lab(2, 1).unwrap();
    let world = sluice_tests::cluster::add_world(&mut lab).unwrap();
    let world_netns = format!("/run/netns/{world}");
    let api = lab.api.as_ref().unwrap();
    let backends = all_pods(&lab);
    let svc = service("wnp", "10.96.0.76", &[("http", 80, 7777, "TCP")]).type_("NodePort");
    let np = svc.node_port(0);
    api.upsert_service(svc.build());
    api.upsert_endpoint_slice(slice("wnp", &[("http", 7777, "TCP")], &endpoints(&backends)).build());
    let empty = service("wempty", "10.96.0.77", &[("http", 82, 7777, "TCP")]).type_("NodePort");
    let empty_np = empty.node_port(0);
    api.upsert_service(empty.build());
    wait_backends(&lab, "*", np, "TCP", &targets(&backends, 7777)).unwrap();
    wait_backends(&lab, "*", empty_np, "TCP", &[]).unwrap();

    let port = np.to_string();
    let v = connectivity_as_node(&lab, 0, &["--node-port", &port, "--world-netns", &world_netns]);
    let rows: Vec<&serde_json::Value> =
        v.as_array().unwrap().iter().filter(|r| r["target"]["class"] == "world-to-nodeport").collect();
    let probed: Vec<(&str, Option<u64>)> =
        rows.iter().map(|r| (r["target"]["ip"].as_str().unwrap(), r["target"]["port"].as_u64())).collect();
    let (ip1, ip2) = (node_ip(&lab, 0), node_ip(&lab, 1));
    assert_eq!(probed, vec![(ip1.as_str(), Some(np as u64)), (ip2.as_str(), Some(np as u64))], "{v:#}");
    assert!(rows.iter().all(|r| r["ok"] == true && r["tcpMs"].is_number()), "{rows:#?}");
    // Past the socket load balancer (its mark), not translated by it.
    let v = services::service_status(&lab, 0).unwrap();
    assert!(v["services"]["counters"]["bypassed"].as_u64().unwrap() >= 2, "{}", v["services"]["counters"]);

    let port = empty_np.to_string();
    let v = connectivity_as_node(&lab, 0, &["--node-port", &port, "--world-netns", &world_netns]);
    let r = v.as_array().unwrap().iter().find(|r| r["target"]["class"] == "world-to-nodeport").unwrap();
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["tcpError"].as_str().unwrap(), "Connection refused (os error 111)", "{r}");
    assert!(r["reason"].as_str().unwrap().contains(&format!("NodePort {empty_np} on node")), "{r}");
}
