//! Services in eBPF on IPv6-only nodes (issues 27 × 28): agents with
//! `--ip-family ipv6 --kube-proxy-replacement=true` on nodes and pods with
//! no IPv4 address at all, membership and Services from an API server on
//! the LAN's IPv6, and no kube-proxy rules in either family's tables. A
//! ClusterIP or NodePort works only if sluice translates it: at the socket
//! (`sock_connect6`/`sock_sendmsg6`) for pods and the node, at the uplink
//! (`lb6`, `NAT6`) for the world.
use std::collections::BTreeSet;

use sluice_tests::{
    apiserver::EndpointObject,
    cluster,
    lab::{ns_exec, Lab, Pod},
    require_root,
    services::{
        self, assert_no_kube_proxy_rules, client, oks, service, slice, start_pod_ipv6_servers, tally, wait_backends,
        wait_node_addresses6, wait_world_answer, world_client, Outcome,
    },
};

/// The pods' servers (`start_pod_ipv6_servers`): 7777 answers the pod's
/// name, 7778 the address the pod saw.
const NAME_PORT: u16 = 7777;
const WHOAMI_PORT: u16 = 7778;

/// Every pod of the lab: (its node's name, the pod).
fn pods_of(lab: &Lab) -> Vec<(String, Pod)> {
    lab.pods().iter().map(|(n, p)| (n.name.clone(), (*p).clone())).collect()
}

/// An IPv6 Service `name` on `cluster_ip6` (`ports.0`/TCP → 7777 and
/// `ports.1`/UDP → the UDP server; `type_` ClusterIP, NodePort or
/// LoadBalancer) and its IPv6 EndpointSlice of `backends` (node name,
/// pod), every backend waited for in every node's maps. Returns the
/// Service as built (its node ports, which follow the Service ports: each
/// Service of a lab gets ports of its own).
fn publish6(
    lab: &Lab,
    name: &str,
    cluster_ip6: &str,
    ports: (u16, u16),
    type_: &str,
    local: bool,
    backends: &[(String, Pod)],
) -> sluice_tests::apiserver::ServiceObject {
    let api = lab.api.as_ref().expect("kubernetes lab");
    let service_ports = [("http", ports.0, NAME_PORT, "TCP"), ("dns", ports.1, services::UDP_PORT, "UDP")];
    let mut svc = service(name, cluster_ip6, &service_ports).type_(type_).cluster_ips(&[cluster_ip6]);
    if local {
        svc = svc.external_traffic_local();
    }
    api.upsert_service(svc.clone().build());
    let endpoints: Vec<EndpointObject> =
        backends.iter().map(|(node, p)| EndpointObject::ready(p.ip6.as_deref().unwrap(), node)).collect();
    let mut s = slice(name, &[("http", NAME_PORT, "TCP"), ("dns", services::UDP_PORT, "UDP")], &endpoints);
    s.name = format!("{name}-v6");
    s.address_type = "IPv6".into();
    api.upsert_endpoint_slice(s.build());
    let want = |port: u16| backends.iter().map(|(_, p)| format!("[{}]:{port}", p.ip6.as_deref().unwrap())).collect();
    let want_tcp: Vec<String> = want(NAME_PORT);
    let want_udp: Vec<String> = want(services::UDP_PORT);
    wait_backends(lab, cluster_ip6, ports.0, "TCP", &want_tcp).unwrap();
    wait_backends(lab, cluster_ip6, ports.1, "UDP", &want_udp).unwrap();
    svc
}

fn names(outcomes: &[Outcome]) -> BTreeSet<String> {
    tally(outcomes).into_keys().collect()
}

/// From pods on both nodes and from a node itself: an IPv6 ClusterIP over
/// TCP and UDP (every backend, on both nodes, answers; the socket shows
/// the ClusterIP as its peer), and an IPv6 NodePort on the other node's
/// IPv6 and on the node's own; a Service without endpoints refused at
/// `connect()`. Nothing on these nodes has an IPv4 address to fall back on.
#[test]
fn ipv6_only_cluster_ips_and_node_ports_from_pods_and_the_node() {
    require_root();
    let mut lab = services::ipv6_only_lab(2, 1).expect("IPv6-only Kubernetes lab with Services in eBPF");
    assert_no_kube_proxy_rules(&lab);
    for node in &lab.state.nodes {
        let v4 = ns_exec(&node.netns, &["ip", "-4", "-o", "addr", "show", "dev", "eth0"]).unwrap();
        assert!(v4.trim().is_empty(), "{} has IPv4 on its uplink: {v4}", node.name);
    }
    start_pod_ipv6_servers(&mut lab);
    let pods = pods_of(&lab);
    let all: BTreeSet<String> = pods.iter().map(|(_, p)| p.name.clone()).collect();
    const WEB6: &str = "fd00:96::50";
    let web6 = publish6(&lab, "web6", WEB6, (80, 53), "NodePort", false, &pods);
    let (tcp_np, udp_np) = (web6.node_port(0).to_string(), web6.node_port(1).to_string());
    const NONE6: &str = "fd00:96::51";
    publish6(&lab, "none6", NONE6, (84, 55), "ClusterIP", false, &[]);
    let node_ips6: Vec<String> = lab.state.nodes.iter().map(|n| n.ip6.clone().expect("IPv6 node")).collect();
    wait_node_addresses6(&lab, &node_ips6);

    let nodes = lab.state.nodes.clone();
    for (i, node) in nodes.iter().enumerate() {
        let other = &node_ips6[1 - i];
        for (who, netns) in [("pod", node.pods[0].netns.as_str()), ("node", node.netns.as_str())] {
            // The ClusterIP: TCP and connected UDP.
            let out = client(&lab, node, netns, &["tcp", WEB6, "80", "20"]).unwrap();
            assert_eq!(oks(&out), 20, "{who} on {} → [{WEB6}]:80: {:?}", node.name, tally(&out));
            assert!(out.iter().all(|o| matches!(o, Outcome::Ok { peer, .. } if peer == &format!("[{WEB6}]:80"))));
            assert_eq!(names(&out), all, "{who} on {}: {:?}", node.name, tally(&out));
            let out = client(&lab, node, netns, &["udp", WEB6, "53", "20"]).unwrap();
            assert_eq!(oks(&out), 20, "{who} on {} → [{WEB6}]:53/UDP: {:?}", node.name, tally(&out));
            assert_eq!(names(&out), all, "{who} on {}: {:?}", node.name, tally(&out));
            // The NodePort on the other node's IPv6, then on this node's.
            for ip in [other.as_str(), node_ips6[i].as_str()] {
                let out = client(&lab, node, netns, &["tcp", ip, &tcp_np, "20"]).unwrap();
                assert_eq!(oks(&out), 20, "{who} on {} → [{ip}]:{tcp_np}: {:?}", node.name, tally(&out));
                assert!(out
                    .iter()
                    .all(|o| matches!(o, Outcome::Ok { peer, .. } if peer == &format!("[{ip}]:{tcp_np}"))));
                assert_eq!(names(&out), all, "{who} on {} → [{ip}]:{tcp_np}: {:?}", node.name, tally(&out));
                let out = client(&lab, node, netns, &["udp", ip, &udp_np, "10"]).unwrap();
                assert_eq!(oks(&out), 10, "{who} on {} → [{ip}]:{udp_np}/UDP: {:?}", node.name, tally(&out));
            }
            // No endpoints: refused at once, as kube-proxy's REJECT.
            for (mode, port) in [("tcp", "84"), ("udp", "55")] {
                let out = client(&lab, node, netns, &[mode, NONE6, port, "3"]).unwrap();
                assert_eq!(out, vec![Outcome::Err("ECONNREFUSED".into()); 3], "{who} on {}: {mode}", node.name);
            }
        }
    }
}

/// GET `http://[ip]:port/healthz` from the world: (status, body).
fn world_health_check(world: &str, ip: &str, port: u16) -> Option<(u16, String)> {
    const GET: &str = "import sys, urllib.request, urllib.error\n\
        try:\n    r = urllib.request.urlopen(sys.argv[1], timeout=3)\n\
        except urllib.error.HTTPError as e:\n    r = e\n\
        print(r.status)\nprint(r.read().decode())";
    let url = format!("http://[{ip}]:{port}/healthz");
    let text = ns_exec(world, &["python3", "-c", GET, &url]).ok()?;
    let (status, body) = text.split_once('\n')?;
    Some((status.trim().parse().ok()?, body.to_string()))
}

/// From the world (a namespace on the LAN with an IPv6 address, not a
/// node): an IPv6 NodePort whose one backend is on node 2 reached on
/// node 2's IPv6 (DNAT only: the backend sees the world's address) and on
/// node 1's (SNAT6: the backend sees node 1's IPv6), TCP and UDP, every
/// answer from the address the world used; an `externalTrafficPolicy:
/// Local` LoadBalancer's healthCheckNodePort answers over IPv6 (200 on
/// node 2, 503 on node 1) and its NodePort reaches node 2's backend while
/// node 1 drops; a NodePort without endpoints is refused at once
/// (a TCP RST, an ICMPv6 port unreachable), counted.
#[test]
fn ipv6_only_world_reaches_node_ports_on_both_nodes_and_the_health_check_and_no_endpoints_is_refused() {
    require_root();
    let mut lab = services::ipv6_only_lab(2, 1).expect("IPv6-only Kubernetes lab with Services in eBPF");
    let world = cluster::add_world(&mut lab).unwrap();
    assert_no_kube_proxy_rules(&lab);
    start_pod_ipv6_servers(&mut lab);
    let pods = pods_of(&lab);
    let on_n2: Vec<(String, Pod)> = pods.iter().filter(|(n, _)| n == &lab.state.nodes[1].name).cloned().collect();
    let backend = on_n2[0].1.clone();
    let (ip1, ip2) = (lab.state.nodes[0].ip6.clone().unwrap(), lab.state.nodes[1].ip6.clone().unwrap());

    let np = publish6(&lab, "np6", "fd00:96::60", (80, 53), "NodePort", false, &on_n2);
    let (tcp_np, udp_np) = (np.node_port(0), np.node_port(1));
    // Who the backend saw, on 7778, through the same two nodes.
    let api = lab.api.as_ref().unwrap();
    let who = service("who6", "fd00:96::61", &[("http", 81, WHOAMI_PORT, "TCP")])
        .type_("NodePort")
        .cluster_ips(&["fd00:96::61"]);
    let who_np = who.node_port(0);
    api.upsert_service(who.build());
    let mut s = slice(
        "who6",
        &[("http", WHOAMI_PORT, "TCP")],
        &[EndpointObject::ready(backend.ip6.as_deref().unwrap(), &on_n2[0].0)],
    );
    s.name = "who6-v6".into();
    s.address_type = "IPv6".into();
    api.upsert_endpoint_slice(s.build());
    wait_backends(&lab, "fd00:96::61", 81, "TCP", &[format!("[{}]:{WHOAMI_PORT}", backend.ip6.as_deref().unwrap())])
        .unwrap();
    wait_world_answer(&world, &ip1, tcp_np);
    wait_world_answer(&world, &ip2, tcp_np);

    for (ip, saw) in [(&ip2, cluster::WORLD_IP6), (&ip1, ip1.as_str())] {
        let out = world_client(&world, &["tcp", ip, &tcp_np.to_string(), "20"]);
        assert_eq!(oks(&out), 20, "world → [{ip}]:{tcp_np}: {:?}", tally(&out));
        assert!(
            out.iter().all(|o| matches!(o, Outcome::Ok { peer, answer, .. }
                if peer == &format!("[{ip}]:{tcp_np}") && answer == &backend.name)),
            "every answer from the address the world used, by the backend: {out:?}"
        );
        let out = world_client(&world, &["udp", ip, &udp_np.to_string(), "20"]);
        assert_eq!(oks(&out), 20, "world → [{ip}]:{udp_np}/UDP: {:?}", tally(&out));
        assert!(out.iter().all(|o| o.answer() == Some(backend.name.as_str())), "{out:?}");
        let out = world_client(&world, &["tcp", ip, &who_np.to_string(), "3"]);
        assert_eq!(oks(&out), 3, "world → [{ip}]:{who_np}: {:?}", tally(&out));
        let seen: Vec<Option<std::net::Ipv6Addr>> =
            out.iter().map(|o| o.answer().and_then(|a| a.trim_matches(['[', ']']).parse().ok())).collect();
        assert_eq!(seen, vec![saw.parse().ok(); 3], "through [{ip}] the backend saw {saw}: {out:?}");
    }
    let nat6 = |i: usize| services::service_status(&lab, i).unwrap()["services"]["uplink"]["nat6"].clone();
    assert!(nat6(0)["new_remote"].as_u64().unwrap_or(0) >= 40, "node 1 SNATs to node 2: {}", nat6(0));
    assert!(nat6(1)["new_local"].as_u64().unwrap_or(0) >= 40, "node 2 DNATs to its own: {}", nat6(1));

    // externalTrafficPolicy: Local: its healthCheckNodePort, over IPv6.
    let etp = publish6(&lab, "etp6", "fd00:96::62", (82, 54), "LoadBalancer", true, &on_n2);
    let hc = etp.health_check_node_port().expect("a LoadBalancer with Local policy has one");
    for (ip, want_status, want_local) in [(&ip2, 200, 1), (&ip1, 503, 0)] {
        let want = format!("\"localEndpoints\": {want_local},");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        loop {
            let got = world_health_check(&world, ip, hc);
            if got.as_ref().is_some_and(|(status, body)| *status == want_status && body.contains(&want)) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "[{ip}]:{hc}/healthz: {got:?}, want {want_status} {want}");
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    // Its NodePort from the world: node 2's backend, with the world's own
    // address kept; node 1, without one, drops (counted), never SNATs to
    // node 2.
    let etp_np = etp.node_port(0);
    let out = world_client(&world, &["tcp", &ip2, &etp_np.to_string(), "5"]);
    assert_eq!(oks(&out), 5, "world → [{ip2}]:{etp_np} (Local): {:?}", tally(&out));
    assert!(out.iter().all(|o| o.answer() == Some(backend.name.as_str())), "{out:?}");
    let dropped_before = sluice_tests::lab::counter(&lab, 0, "drops", "service_no_local_endpoints");
    let remote_before = nat6(0)["new_remote"].as_u64().unwrap_or(0);
    let out = world_client(&world, &["tcp", &ip1, &etp_np.to_string(), "2"]);
    assert_eq!(oks(&out), 0, "node 1 has no local backend: {out:?}");
    let dropped = sluice_tests::lab::counter(&lab, 0, "drops", "service_no_local_endpoints") - dropped_before;
    assert!(dropped >= 2, "SYNs dropped for want of a local endpoint: {dropped}");
    assert_eq!(nat6(0)["new_remote"].as_u64().unwrap_or(0), remote_before, "node 1 sent a Local client to node 2");

    // A NodePort without endpoints: refused at once from the world.
    let none = publish6(&lab, "none6", "fd00:96::63", (84, 55), "NodePort", false, &[]);
    wait_backends(&lab, "*", none.node_port(0), "TCP", &[]).unwrap();
    wait_backends(&lab, "*", none.node_port(1), "UDP", &[]).unwrap();
    let before = sluice_tests::lab::counter(&lab, 0, "drops", "service_no_endpoints");
    for (mode, port) in [("tcp", none.node_port(0)), ("udp", none.node_port(1))] {
        let start = std::time::Instant::now();
        let out = world_client(&world, &[mode, &ip1, &port.to_string(), "5"]);
        let took = start.elapsed();
        assert_eq!(
            out,
            vec![Outcome::Err("ECONNREFUSED".into()); 5],
            "world → [{ip1}]:{port}/{mode}: {out:?}\n{:#}",
            services::service_status(&lab, 0).unwrap()["services"]
        );
        // Five attempts with a 2 s timeout each: refused, not timed out.
        assert!(took < std::time::Duration::from_secs(2), "{mode}: 5 refusals took {took:?}");
    }
    let refused = sluice_tests::lab::counter(&lab, 0, "drops", "service_no_endpoints") - before;
    assert!(refused >= 10, "refusals counted: {refused}");
}
