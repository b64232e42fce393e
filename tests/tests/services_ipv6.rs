//! IPv6 Services in the socket load balancer (issue 28): native IPv6
//! cluster IPs translated at `connect()` (`sock_connect6`), per datagram
//! (`sock_sendmsg6`), and shown back by `getpeername()`/`recvfrom()`
//! (`sock_getpeername6`/`sock_recvmsg6`), from the `SERVICES6`/`BACKENDS6`
//! maps the agent fills from IPv6 ClusterIPs and `addressType: IPv6`
//! EndpointSlices. No kube-proxy rules: an IPv6 ClusterIP works only if
//! the socket LB translates it.
//!
//! Cases named after upstream's test/e2e/network/dual_stack.go where they
//! correspond. In the first case the clients are host processes of the
//! node ("node-Service") and the backends host-network endpoints, two IPv6
//! addresses of the node itself, as a hostNetwork pod's endpoint is its
//! node's address; in the second, on a dual-stack Kubernetes lab (Node
//! objects with both pod CIDRs and both InternalIPs), pods on two nodes are
//! the clients and the IPv6 endpoints ("pod-Service", and a pod reaching
//! its own Service).
use std::collections::BTreeSet;

use sluice_tests::{
    apiserver::{EndpointObject, ServiceObject},
    lab::{enable_ipv6_in, ns_cmd, ns_exec, Lab},
    require_root,
    services::{self, client, service, slice, tally, wait_backends, wait_node_addresses6, Outcome},
};

const BACKENDS6: [(&str, &str); 2] = [("fd00:99::1", "backend-1"), ("fd00:99::2", "backend-2")];
const WEB6: &str = "fd00:96::50";
const DUAL4: &str = "10.96.0.60";
const DUAL6: &str = "fd00:96::60";
const EMPTY6: &str = "fd00:96::70";
const STICKY6: &str = "fd00:96::80";
const TCP_PORT: u16 = 7777;

fn oks(outcomes: &[Outcome]) -> usize {
    outcomes.iter().filter(|o| matches!(o, Outcome::Ok { .. })).count()
}

/// The node's two IPv6 backend addresses, each with a TCP server answering
/// its name and a UDP server answering its name.
fn start_ipv6_backends(lab: &mut Lab, netns: &str) {
    enable_ipv6_in(netns).unwrap();
    for (ip, name) in BACKENDS6 {
        ns_exec(netns, &["ip", "-6", "addr", "add", &format!("{ip}/128"), "dev", "lo", "nodad"]).unwrap();
        let listen = format!("TCP6-LISTEN:{TCP_PORT},bind=[{ip}],reuseaddr,fork");
        lab.spawn_helper(ns_cmd(netns, &["socat", &listen, &format!("SYSTEM:echo {name}")]), &format!("{name}-tcp"))
            .unwrap();
        let port = services::UDP_PORT.to_string();
        let serve = ["python3", "-c", services::CLIENT, "udp-serve", ip, &port, name];
        lab.spawn_helper(ns_cmd(netns, &serve), &format!("{name}-udp")).unwrap();
    }
    wait_bound6(netns, BACKENDS6.len());
}

/// Wait until `n` IPv6 TCP listeners on `TCP_PORT` and `n` IPv6 UDP
/// sockets on `services::UDP_PORT` are bound in `netns`: bound before
/// anyone connects (a readiness wait, not a sleep).
fn wait_bound6(netns: &str, n: usize) {
    let start = std::time::Instant::now();
    loop {
        let tcp = ns_exec(netns, &["ss", "-H", "-6tln", &format!("sport = :{TCP_PORT}")]).unwrap();
        let udp = ns_exec(netns, &["ss", "-H", "-6uln", &format!("sport = :{}", services::UDP_PORT)]).unwrap();
        if tcp.lines().count() == n && udp.lines().count() == n {
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "IPv6 servers in {netns} did not bind: {tcp} {udp}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The node's two IPv6 backend addresses as `service_name`'s IPv6 slice.
fn ipv6_slice(service_name: &str, node: &str) -> serde_json::Value {
    let endpoints: Vec<EndpointObject> = BACKENDS6.iter().map(|(ip, _)| EndpointObject::ready(ip, node)).collect();
    ipv6_slice_of(service_name, &endpoints)
}

/// `service_name`'s IPv6 EndpointSlice (`<name>-v6`, both ports) holding `endpoints`.
fn ipv6_slice_of(service_name: &str, endpoints: &[EndpointObject]) -> serde_json::Value {
    let mut s = slice(service_name, &[("http", TCP_PORT, "TCP"), ("dns", services::UDP_PORT, "UDP")], endpoints);
    s.name = format!("{service_name}-v6");
    s.address_type = "IPv6".into();
    s.build()
}

fn ports() -> [(&'static str, u16, u16, &'static str); 2] {
    [("http", 80, TCP_PORT, "TCP"), ("dns", 53, services::UDP_PORT, "UDP")]
}

#[test]
fn ipv6_cluster_ips_from_the_node_over_tcp_and_udp() {
    require_root();
    let mut lab = services::lab(1, 1).unwrap();
    let n1 = lab.state.nodes[0].clone();
    let pod = n1.pods[0].clone();
    start_ipv6_backends(&mut lab, &n1.netns);
    let api = lab.api.as_ref().expect("kubernetes lab");

    // "should create service with ipv6 cluster ip": SingleStack IPv6.
    let mut web6 = service("web6", WEB6, &ports());
    web6.cluster_ips = vec![WEB6.into()];
    api.upsert_service(web6.build());
    api.upsert_endpoint_slice(ipv6_slice("web6", &n1.name));
    // "should create service with ipv4,v6 cluster ip": both families, the
    // IPv4 one backed by the pod, the IPv6 one by the node's addresses.
    let mut dual: ServiceObject = service("dual", DUAL4, &ports());
    dual.cluster_ips = vec![DUAL4.into(), DUAL6.into()];
    api.upsert_service(dual.build());
    api.upsert_endpoint_slice(
        slice(
            "dual",
            &[("http", TCP_PORT, "TCP"), ("dns", services::UDP_PORT, "UDP")],
            &services::ready(&[(&n1.name, &pod.ip)]),
        )
        .build(),
    );
    api.upsert_endpoint_slice(ipv6_slice("dual", &n1.name));
    // No endpoints at all: refused, as in IPv4.
    api.upsert_service(service("empty6", EMPTY6, &ports()).build());

    let want6: Vec<String> = BACKENDS6.iter().map(|(ip, _)| format!("[{ip}]:{TCP_PORT}")).collect();
    let want6_udp: Vec<String> = BACKENDS6.iter().map(|(ip, _)| format!("[{ip}]:{}", services::UDP_PORT)).collect();
    wait_backends(&lab, WEB6, 80, "TCP", &want6).unwrap();
    wait_backends(&lab, WEB6, 53, "UDP", &want6_udp).unwrap();
    wait_backends(&lab, DUAL6, 80, "TCP", &want6).unwrap();
    wait_backends(&lab, DUAL4, 80, "TCP", &[format!("{}:{TCP_PORT}", pod.ip)]).unwrap();
    wait_backends(&lab, EMPTY6, 80, "TCP", &[]).unwrap();
    let names: BTreeSet<String> = BACKENDS6.iter().map(|(_, n)| n.to_string()).collect();

    // "should function for node-Service: http" (IPv6): every connection
    // answered, by every backend, with the ClusterIP as the peer.
    let tcp = client(&lab, &n1, &n1.netns, &["tcp", WEB6, "80", "40"]).unwrap();
    assert_eq!(oks(&tcp), 40, "{:?}", tally(&tcp));
    for o in &tcp {
        let Outcome::Ok { peer, .. } = o else { unreachable!() };
        assert_eq!(peer, &format!("[{WEB6}]:80"), "getpeername() must show the IPv6 ClusterIP");
    }
    assert_eq!(tally(&tcp).keys().cloned().collect::<BTreeSet<_>>(), names, "{:?}", tally(&tcp));

    // "should function for node-Service: udp" (IPv6): connected sockets,
    // the reply's source and the peer are the ClusterIP.
    let udp = client(&lab, &n1, &n1.netns, &["udp", WEB6, "53", "40"]).unwrap();
    assert_eq!(oks(&udp), 40, "{:?}", tally(&udp));
    for o in &udp {
        let Outcome::Ok { peer, line, .. } = o else { unreachable!() };
        assert_eq!(peer, &format!("[{WEB6}]:53"), "recvfrom() shows the ClusterIP: {line}");
        assert!(line.contains(&format!("getpeername=[{WEB6}]:53")), "{line}");
    }
    assert_eq!(tally(&udp).keys().cloned().collect::<BTreeSet<_>>(), names, "{:?}", tally(&udp));
    // Unconnected: each datagram balanced by sock_sendmsg6.
    let sendto = client(&lab, &n1, &n1.netns, &["sendto", WEB6, "53", "40"]).unwrap();
    assert_eq!(oks(&sendto), 40, "{:?}", tally(&sendto));
    assert!(sendto.iter().all(|o| matches!(o, Outcome::Ok { peer, .. } if peer == &format!("[{WEB6}]:53"))));
    assert_eq!(tally(&sendto).keys().cloned().collect::<BTreeSet<_>>(), names, "{:?}", tally(&sendto));

    // The dual-stack Service on both families.
    let dual6 = client(&lab, &n1, &n1.netns, &["tcp", DUAL6, "80", "20"]).unwrap();
    assert_eq!(oks(&dual6), 20, "{:?}", tally(&dual6));
    assert!(tally(&dual6).keys().all(|n| names.contains(n)), "IPv6 ClusterIP → IPv6 endpoints: {:?}", tally(&dual6));
    let dual4 = client(&lab, &n1, &n1.netns, &["tcp", DUAL4, "80", "20"]).unwrap();
    assert_eq!(oks(&dual4), 20, "{:?}", tally(&dual4));
    for o in &dual4 {
        let Outcome::Ok { peer, .. } = o else { unreachable!() };
        assert_eq!(peer, &format!("{DUAL4}:80"), "the IPv4 side is unchanged");
    }

    // No endpoints: ECONNREFUSED at once, TCP and connected UDP.
    for mode in ["tcp", "udp"] {
        let port = if mode == "tcp" { "80" } else { "53" };
        let refused = client(&lab, &n1, &n1.netns, &[mode, EMPTY6, port, "3"]).unwrap();
        assert_eq!(refused, vec![Outcome::Err("ECONNREFUSED".into()); 3], "{mode}");
    }

    // `status --services` shows the IPv6 frontends as written.
    let status = services::service_status(&lab, 0).unwrap();
    let text = status["services"]["frontends"].to_string();
    assert!(text.contains(&format!("\"ip\":\"{WEB6}\"")), "{text}");
}

/// Each pod's IPv6 serves TCP (`TCP_PORT`) and UDP (`services::UDP_PORT`)
/// answering its name.
fn start_pod_ipv6_backends(lab: &mut Lab) {
    let pods: Vec<_> = lab.pods().iter().map(|(_, p)| (*p).clone()).collect();
    for pod in pods {
        let (netns, name, ip6) = (pod.netns, pod.name, pod.ip6.expect("dual-stack pod"));
        let listen = format!("TCP6-LISTEN:{TCP_PORT},bind=[{ip6}],reuseaddr,fork");
        lab.spawn_helper(ns_cmd(&netns, &["socat", &listen, &format!("SYSTEM:echo {name}")]), &format!("{name}-tcp6"))
            .unwrap();
        let port = services::UDP_PORT.to_string();
        let serve = ["python3", "-c", services::CLIENT, "udp-serve", &ip6, &port, &name];
        lab.spawn_helper(ns_cmd(&netns, &serve), &format!("{name}-udp6")).unwrap();
        wait_bound6(&netns, 1);
    }
}

/// "should function for pod-Service: http" and "...: udp" over IPv6, and
/// "should function for endpoint-Service" (a backend pod reaching its own
/// Service, hairpin): pods on a dual-stack node are the clients, pods on
/// both nodes the IPv6 endpoints; every connection and datagram answered,
/// every backend used, and the socket shows the IPv6 ClusterIP as its peer.
/// With ClientIP affinity ("should function for client IP based session
/// affinity: http/udp") on a Service whose clusterIPs list IPv6 first
/// ("should create service with ipv6,v4 cluster ip"), one backend each.
/// Then "should update endpoints": an endpoint leaves, and only the other
/// answers.
#[test]
fn should_function_for_pod_service_http_and_udp_over_ipv6() {
    require_root();
    let mut lab = services::dual_stack_lab(2, 1).expect("dual-stack Kubernetes lab");
    start_pod_ipv6_backends(&mut lab);
    let pods: Vec<(String, sluice_tests::lab::Pod)> =
        lab.pods().iter().map(|(n, p)| (n.name.clone(), (*p).clone())).collect();
    let api = lab.api.as_ref().expect("kubernetes lab");
    let mut web6 = service("web6", WEB6, &ports());
    web6.cluster_ips = vec![WEB6.into()];
    api.upsert_service(web6.build());
    let endpoints: Vec<EndpointObject> =
        pods.iter().map(|(node, p)| EndpointObject::ready(p.ip6.as_deref().unwrap(), node)).collect();
    api.upsert_endpoint_slice(ipv6_slice_of("web6", &endpoints));
    // "should function for client IP based session affinity: http/udp":
    // the same endpoints behind a ClientIP-affinity Service; and "should
    // create service with ipv6,v4 cluster ip": IPv6 first in clusterIPs.
    let mut sticky = service("sticky6", STICKY6, &ports()).client_ip_affinity(Some(60));
    sticky.cluster_ips = vec![STICKY6.into(), DUAL4.into()];
    api.upsert_service(sticky.build());
    api.upsert_endpoint_slice(ipv6_slice_of("sticky6", &endpoints));
    let want: Vec<String> = pods.iter().map(|(_, p)| format!("[{}]:{TCP_PORT}", p.ip6.as_deref().unwrap())).collect();
    wait_backends(&lab, WEB6, 80, "TCP", &want).unwrap();
    wait_backends(&lab, STICKY6, 80, "TCP", &want).unwrap();
    let names: BTreeSet<String> = pods.iter().map(|(_, p)| p.name.clone()).collect();

    for node in lab.state.nodes.clone() {
        // Node n1's pod is also a backend: its own Service (hairpin).
        let client_pod = &node.pods[0];
        let tcp = client(&lab, &node, &client_pod.netns, &["tcp", WEB6, "80", "30"]).unwrap();
        assert_eq!(oks(&tcp), 30, "{}: {:?}", client_pod.name, tally(&tcp));
        assert!(tcp.iter().all(|o| matches!(o, Outcome::Ok { peer, .. } if peer == &format!("[{WEB6}]:80"))));
        assert_eq!(tally(&tcp).keys().cloned().collect::<BTreeSet<_>>(), names, "{:?}", tally(&tcp));
        let udp = client(&lab, &node, &client_pod.netns, &["udp", WEB6, "53", "30"]).unwrap();
        assert_eq!(oks(&udp), 30, "{}: {:?}", client_pod.name, tally(&udp));
        assert!(udp.iter().all(|o| matches!(o, Outcome::Ok { peer, .. } if peer == &format!("[{WEB6}]:53"))));
        assert_eq!(tally(&udp).keys().cloned().collect::<BTreeSet<_>>(), names, "{:?}", tally(&udp));
        // Affinity: every connection and datagram of this client to one backend.
        for (mode, port) in [("tcp", "80"), ("udp", "53")] {
            let stuck = client(&lab, &node, &client_pod.netns, &[mode, STICKY6, port, "20"]).unwrap();
            assert_eq!(oks(&stuck), 20, "{mode}: {:?}", tally(&stuck));
            assert_eq!(tally(&stuck).len(), 1, "{mode}: affinity keeps one backend: {:?}", tally(&stuck));
        }
    }

    // "should update endpoints: http/udp": one endpoint leaves the IPv6
    // slice; from then on only the other answers.
    let (kept_node, kept) = &pods[0];
    let kept_endpoint = [EndpointObject::ready(kept.ip6.as_deref().unwrap(), kept_node)];
    lab.api.as_ref().unwrap().upsert_endpoint_slice(ipv6_slice_of("web6", &kept_endpoint));
    wait_backends(&lab, WEB6, 80, "TCP", &[format!("[{}]:{TCP_PORT}", kept.ip6.as_deref().unwrap())]).unwrap();
    let n2 = lab.state.nodes[1].clone();
    for (mode, port) in [("tcp", "80"), ("udp", "53")] {
        let after = client(&lab, &n2, &n2.pods[0].netns, &[mode, WEB6, port, "20"]).unwrap();
        assert_eq!(oks(&after), 20, "{mode}: {:?}", tally(&after));
        assert_eq!(tally(&after).keys().collect::<Vec<_>>(), [&kept.name], "{mode}: {:?}", tally(&after));
    }
}

/// `tcp-echo-serve`'s port: it answers only once the client has shut its
/// side, so it cannot share a port with a server that speaks first.
const ECHO_PORT: u16 = 7778;
/// `start_servers6`' TCP server answering its name: not `TCP_PORT`, which
/// the lab's own pod listener holds on every address.
const NAME_PORT: u16 = 7779;
/// Upstream's sizes: "42" a thousand times over HTTP, and a 2,000-byte
/// datagram, more than the lab's 1,500-byte MTU (fragmented by the
/// sending pod: IPv6 routers never fragment).
const LARGE_REQUEST: &str = "2000";
const LARGE_SERVICE6: &str = "fd00:96::90";
const HOST_SERVICE6: &str = "fd00:96::91";

/// On `ip` in `netns`: `NAME_PORT` answering `name`, `services::UDP_PORT`
/// answering `name` (and echoing datagrams over 200 bytes), `ECHO_PORT`
/// echoing whatever a connection sends; bound before this returns.
fn start_servers6(lab: &mut Lab, netns: &str, ip: &str, name: &str) {
    let listen = format!("TCP6-LISTEN:{NAME_PORT},bind=[{ip}],reuseaddr,fork");
    lab.spawn_helper(ns_cmd(netns, &["socat", &listen, &format!("SYSTEM:echo {name}")]), &format!("{name}-tcp6"))
        .unwrap();
    let udp = services::UDP_PORT.to_string();
    let serve = ["python3", "-c", services::CLIENT, "udp-serve", ip, &udp, name];
    lab.spawn_helper(ns_cmd(netns, &serve), &format!("{name}-udp6")).unwrap();
    let echo = ECHO_PORT.to_string();
    let serve = ["python3", "-c", services::CLIENT, "tcp-echo-serve", ip, &echo, name];
    lab.spawn_helper(ns_cmd(netns, &serve), &format!("{name}-echo6")).unwrap();
    let start = std::time::Instant::now();
    loop {
        let listening = |port: u16, what: &str| {
            ns_exec(netns, &["ss", "-H", what, &format!("src [{ip}]:{port}")]).unwrap().lines().count() == 1
        };
        if listening(NAME_PORT, "-6tln") && listening(ECHO_PORT, "-6tln") && listening(services::UDP_PORT, "-6uln") {
            return;
        }
        if start.elapsed() > std::time::Duration::from_secs(10) {
            let sockets = ns_exec(netns, &["ss", "-H", "-6tuln"]).unwrap_or_default();
            let addrs = ns_exec(netns, &["ip", "-6", "addr"]).unwrap_or_default();
            panic!("servers on [{ip}] in {netns} did not bind; bound: {sockets}; addresses: {addrs}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The three ports `start_servers6` serves, as a Service's and as its
/// EndpointSlice's.
fn echo_ports() -> [(&'static str, u16, u16, &'static str); 3] {
    [("http", 80, NAME_PORT, "TCP"), ("dns", 53, services::UDP_PORT, "UDP"), ("echo", 81, ECHO_PORT, "TCP")]
}

/// `name`'s IPv6-only Service on `cluster_ip6` over `addresses`
/// (node name, IPv6 address), every backend waited for in the maps.
fn echo_service6(lab: &Lab, name: &str, cluster_ip6: &str, addresses: &[(String, String)]) {
    let api = lab.api.as_ref().expect("kubernetes lab");
    let mut svc = service(name, cluster_ip6, &echo_ports());
    svc.cluster_ips = vec![cluster_ip6.into()];
    api.upsert_service(svc.build());
    let endpoints: Vec<EndpointObject> = addresses.iter().map(|(node, ip)| EndpointObject::ready(ip, node)).collect();
    let ports: Vec<(&str, u16, &str)> = echo_ports().iter().map(|&(n, _, target, proto)| (n, target, proto)).collect();
    let mut s = slice(name, &ports, &endpoints);
    s.name = format!("{name}-v6");
    s.address_type = "IPv6".into();
    api.upsert_endpoint_slice(s.build());
    let want = |port: u16| addresses.iter().map(|(_, ip)| format!("[{ip}]:{port}")).collect::<Vec<_>>();
    wait_backends(lab, cluster_ip6, 80, "TCP", &want(NAME_PORT)).unwrap();
    wait_backends(lab, cluster_ip6, 53, "UDP", &want(services::UDP_PORT)).unwrap();
    wait_backends(lab, cluster_ip6, 81, "TCP", &want(ECHO_PORT)).unwrap();
}

/// From `netns` on `node`: 20 large requests to `cluster_ip6` over TCP
/// (port 81, echoed) and 20 over UDP (port 53, one 2,000-byte datagram
/// each), every one echoed whole, and every backend in `names` among the
/// answerers.
fn large_requests_answered(
    lab: &Lab,
    node: &sluice_tests::lab::Node,
    netns: &str,
    cluster_ip6: &str,
    names: &BTreeSet<String>,
) {
    for (mode, port) in [("tcp-big", "81"), ("udp-big", "53")] {
        let got = client(lab, node, netns, &[mode, cluster_ip6, port, "20", LARGE_REQUEST]).unwrap();
        assert_eq!(oks(&got), 20, "{mode} from {netns} to [{cluster_ip6}]:{port}, in order: {got:?}");
        assert_eq!(
            tally(&got).keys().cloned().collect::<BTreeSet<_>>(),
            *names,
            "{mode} from {netns}: {:?}",
            tally(&got)
        );
    }
}

fn dual_stack_kubernetes_lab(pods_per_node: usize) -> Lab {
    services::dual_stack_lab(2, pods_per_node).expect("dual-stack Kubernetes lab")
}

/// "should be able to handle large requests: http" and "...: udp" on the
/// secondary family (IPv6): a pod on each node sends 2,000 bytes to an
/// IPv6 ClusterIP whose endpoints are pods on both nodes, over a TCP
/// connection and as one UDP datagram, and gets them back whole. The
/// datagram exceeds the 1,500-byte link MTU, so its fragments cross the
/// datapath (to the node's stack, `from_pod6`/`from_uplink6`) both ways.
#[test]
fn should_be_able_to_handle_large_requests_http_and_udp_over_ipv6() {
    require_root();
    let mut lab = dual_stack_kubernetes_lab(1);
    let pods: Vec<(String, sluice_tests::lab::Pod)> =
        lab.pods().iter().map(|(n, p)| (n.name.clone(), (*p).clone())).collect();
    for (_, p) in &pods {
        start_servers6(&mut lab, &p.netns, p.ip6.as_deref().expect("dual-stack pod"), &p.name);
    }
    let addresses: Vec<(String, String)> = pods.iter().map(|(n, p)| (n.clone(), p.ip6.clone().unwrap())).collect();
    echo_service6(&lab, "large6", LARGE_SERVICE6, &addresses);
    let names: BTreeSet<String> = pods.iter().map(|(_, p)| p.name.clone()).collect();
    for node in lab.state.nodes.clone() {
        large_requests_answered(&lab, &node, &node.pods[0].netns, LARGE_SERVICE6, &names);
    }
}

/// "should function for service endpoints using hostNetwork" on the
/// secondary family (IPv6): the endpoints are the two nodes' own IPv6
/// addresses (a hostNetwork pod's endpoint is its node's address).
/// Upstream's ClusterIP steps: pod-Service(hostNetwork) http and udp from
/// a pod on each node, node-Service(hostNetwork) http and udp from each
/// node, and large requests http and udp. (Its dials of the node's IPv6
/// NodePort are not modelled here.)
#[test]
fn should_function_for_service_endpoints_using_host_network_over_ipv6() {
    require_root();
    let mut lab = dual_stack_kubernetes_lab(1);
    let nodes = lab.state.nodes.clone();
    for n in &nodes {
        start_servers6(&mut lab, &n.netns, n.ip6.as_deref().expect("dual-stack node"), &n.name);
    }
    let addresses: Vec<(String, String)> = nodes.iter().map(|n| (n.name.clone(), n.ip6.clone().unwrap())).collect();
    echo_service6(&lab, "hostnet6", HOST_SERVICE6, &addresses);
    let names: BTreeSet<String> = nodes.iter().map(|n| n.name.clone()).collect();
    for node in &nodes {
        for (who, netns) in [("pod", node.pods[0].netns.as_str()), ("node", node.netns.as_str())] {
            let tcp = client(&lab, node, netns, &["tcp", HOST_SERVICE6, "80", "30"]).unwrap();
            assert_eq!(oks(&tcp), 30, "{who} {netns}: {:?}", tally(&tcp));
            assert!(tcp
                .iter()
                .all(|o| matches!(o, Outcome::Ok { peer, .. } if peer == &format!("[{HOST_SERVICE6}]:80"))));
            assert_eq!(tally(&tcp).keys().cloned().collect::<BTreeSet<_>>(), names, "{who}: {:?}", tally(&tcp));
            let udp = client(&lab, node, netns, &["udp", HOST_SERVICE6, "53", "30"]).unwrap();
            assert_eq!(oks(&udp), 30, "{who} {netns}: {:?}", tally(&udp));
            assert_eq!(tally(&udp).keys().cloned().collect::<BTreeSet<_>>(), names, "{who}: {:?}", tally(&udp));
        }
        large_requests_answered(&lab, node, &node.pods[0].netns, HOST_SERVICE6, &names);
    }
}

/// IPv6 NodePorts at the socket (issues 27 × 28): on a dual-stack lab
/// without kube-proxy, a pod reaches an IPv6 NodePort on another node's
/// IPv6 InternalIP and on its own node's; the node itself reaches it on
/// `[::1]` and on its own IPv6, over TCP, connected UDP and unconnected
/// UDP (`sock_sendmsg6`). Every backend answers and the socket still
/// shows the address it named. A pod's `[::1]` is the pod's own.
#[test]
fn ipv6_node_ports_from_pods_and_nodes_on_every_node_ipv6_and_loopback() {
    require_root();
    let mut lab = services::dual_stack_lab(2, 1).expect("dual-stack Kubernetes lab");
    start_pod_ipv6_backends(&mut lab);
    let pods: Vec<(String, sluice_tests::lab::Pod)> =
        lab.pods().iter().map(|(n, p)| (n.name.clone(), (*p).clone())).collect();
    let api = lab.api.as_ref().expect("kubernetes lab");
    // SingleStack IPv6: its NodePort entries are IPv6's alone.
    let mut np6 = service("np6", WEB6, &ports()).type_("NodePort");
    np6.cluster_ips = vec![WEB6.into()];
    let (tcp_np, udp_np) = (np6.node_port(0), np6.node_port(1));
    api.upsert_service(np6.build());
    let endpoints: Vec<EndpointObject> =
        pods.iter().map(|(node, p)| EndpointObject::ready(p.ip6.as_deref().unwrap(), node)).collect();
    api.upsert_endpoint_slice(ipv6_slice_of("np6", &endpoints));
    let want: Vec<String> = pods.iter().map(|(_, p)| format!("[{}]:{TCP_PORT}", p.ip6.as_deref().unwrap())).collect();
    wait_backends(&lab, "*", tcp_np, "TCP", &want).unwrap();
    let node_ips6: Vec<String> = lab.state.nodes.iter().map(|n| n.ip6.clone().expect("dual-stack node")).collect();
    wait_node_addresses6(&lab, &node_ips6);
    let names: BTreeSet<String> = pods.iter().map(|(_, p)| p.name.clone()).collect();
    let (n1, pod) = (lab.state.nodes[0].clone(), lab.state.nodes[0].pods[0].clone());
    let (ip1, ip2) = (node_ips6[0].as_str(), node_ips6[1].as_str());
    let (tcp_s, udp_s) = (tcp_np.to_string(), udp_np.to_string());

    // A pod on n1 → n2's IPv6, then its own node's: every backend, the
    // peer the address it named.
    for ip in [ip2, ip1] {
        let out = client(&lab, &n1, &pod.netns, &["tcp", ip, &tcp_s, "30"]).unwrap();
        assert_eq!(oks(&out), 30, "pod → [{ip}]:{tcp_np}: {:?}", tally(&out));
        assert!(out.iter().all(|o| matches!(o, Outcome::Ok { peer, .. } if peer == &format!("[{ip}]:{tcp_np}"))));
        assert_eq!(tally(&out).keys().cloned().collect::<BTreeSet<_>>(), names, "{:?}", tally(&out));
        let out = client(&lab, &n1, &pod.netns, &["udp", ip, &udp_s, "20"]).unwrap();
        assert_eq!(oks(&out), 20, "pod → [{ip}]:{udp_np}/UDP: {:?}", tally(&out));
        assert!(out.iter().all(|o| matches!(o, Outcome::Ok { peer, .. } if peer == &format!("[{ip}]:{udp_np}"))));
    }

    // n1 itself: on [::1] and on its own IPv6, TCP, UDP and sendto.
    for ip in ["::1", ip1] {
        let out = client(&lab, &n1, &n1.netns, &["tcp", ip, &tcp_s, "20"]).unwrap();
        assert_eq!(oks(&out), 20, "n1 → [{ip}]:{tcp_np}: {:?}", tally(&out));
        assert!(out.iter().all(|o| matches!(o, Outcome::Ok { peer, .. } if peer == &format!("[{ip}]:{tcp_np}"))));
        assert_eq!(tally(&out).keys().cloned().collect::<BTreeSet<_>>(), names, "{:?}", tally(&out));
        for mode in ["udp", "sendto"] {
            let out = client(&lab, &n1, &n1.netns, &[mode, ip, &udp_s, "10"]).unwrap();
            assert_eq!(oks(&out), 10, "n1 → [{ip}]:{udp_np} {mode}: {:?}", tally(&out));
            assert!(out.iter().all(|o| matches!(o, Outcome::Ok { peer, .. } if peer == &format!("[{ip}]:{udp_np}"))));
        }
    }

    // A pod's [::1] is the pod's: never translated, nothing listens there.
    let out = client(&lab, &n1, &pod.netns, &["tcp", "::1", &tcp_s, "2"]).unwrap();
    assert_eq!(oks(&out), 0, "a pod's loopback was translated: {out:?}");

    let v = services::service_status(&lab, 0).unwrap();
    assert!(v["services"]["counters"]["node_port"].as_u64().unwrap() >= 180, "{}", v["services"]["counters"]);
}
