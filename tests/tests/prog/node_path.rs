//! `node_path` (issue 27): between another node's own address (a NodePort
//! that node SNATed, its host network) and a local pod, without this
//! node's stack: in through the door from `from_uplink`, the answer out of
//! the uplink from `from_pod` — only for connections that came in that way.
use etherparse::{icmpv4::DestUnreachableHeader, Icmpv4Type, IpHeaders, Ipv4Header, PacketBuilder};
use sluice_common::{
    maps::{
        programs::{FROM_POD, FROM_UPLINK},
        FAST_PATH_MARK,
    },
    policy::{Direction, ENDPOINT_INGRESS_ISOLATED, IDENTITY_REMOTE_NODE},
    services::{NODE_ADDRESS_LOCAL, NODE_ADDRESS_REMOTE},
    DropReason, FlowKey, ForwardPath, HookDirection,
};
use sluice_tests::prog_test::{
    be, ip,
    packet::hex,
    policy::{PolicyNode, Ports, B, B_RULES},
    Ipv4, TestDatapath, L2, NATIVE_PEER_IP, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT,
};

/// The peer node's own address, and the local backend pod.
const PEER: &str = NATIVE_PEER_IP;
const POD: &str = "10.244.1.3";
const TCP: u8 = 6;

fn from_peer(dp: &TestDatapath) -> L2 {
    L2::new([0x02, 0, 0, 0, 0, 0x02], dp.uplink.mac)
}

fn key(src: &str, dst: &str, src_port: u16, dst_port: u16, protocol: u8) -> FlowKey {
    FlowKey {
        src_be: be(ip(src)),
        dst_be: be(ip(dst)),
        src_port_be: src_port.to_be(),
        dst_port_be: dst_port.to_be(),
        protocol,
        _pad: [0; 3],
    }
}

#[test]
fn a_nodes_connection_goes_into_the_pod_and_its_answer_back_out_without_the_stack() {
    let dp = TestDatapath::node().unwrap();
    let b = dp.add_pod(POD).unwrap();
    dp.node_address(PEER, NODE_ADDRESS_REMOTE).unwrap();
    let sent = Ipv4::tcp_syn(PEER, POD, 40000, 8080);
    let run = dp.run(FROM_UPLINK, dp.uplink.ifindex, &sent.frame(from_peer(&dp))).unwrap();
    assert_eq!(run.action, TC_ACT_REDIRECT);
    assert_eq!(hex(&run.packet), hex(&sent.clone().ttl(63).frame(b.receives())), "TTL 63, MACs into the pod");
    assert_eq!(dp.forwards().unwrap(), [(ForwardPath::UplinkToPod, 1), (ForwardPath::NodeToPod, 1)]);
    assert_eq!(dp.node_flows().unwrap(), [key(POD, PEER, 8080, 40000, TCP)], "the answer's tuple");
    // The pod's answer: out of the uplink, as a pod's to another node's pod.
    let answer = Ipv4::tcp_ack(POD, PEER, 8080, 40000);
    let run = dp.run(FROM_POD, b.host.ifindex, &answer.frame(b.sends())).unwrap();
    assert_eq!(run.action, TC_ACT_REDIRECT);
    assert_eq!(hex(&run.packet), hex(&answer.clone().ttl(63).frame(b.sends())), "MACs are the kernel's to fill");
    assert_ne!(run.ctx.mark & FAST_PATH_MARK, 0, "to_uplink must know the fast path sent it");
    assert_eq!(
        dp.forwards().unwrap(),
        [(ForwardPath::UplinkToPod, 1), (ForwardPath::NodeToPod, 1), (ForwardPath::PodAnswerToNode, 1)]
    );
    assert_eq!(dp.drops().unwrap(), []);
}

#[test]
fn what_the_stack_must_answer_or_see_from_a_node_goes_to_the_stack() {
    let dp = TestDatapath::node().unwrap();
    let b = dp.add_pod(POD).unwrap();
    dp.node_address(PEER, NODE_ADDRESS_REMOTE).unwrap();
    dp.node_address("172.30.0.9", NODE_ADDRESS_LOCAL).unwrap();
    // The reply of a connection the pod opened to the node through the
    // stack (kube-proxy's NodePort DNAT from a pod, masquerade).
    dp.stack_flow(key(PEER, POD, 30080, 41000, TCP)).unwrap();
    dp.set_mtu(&b.host, 1000).unwrap();
    let cases = [
        ("the world", Ipv4::tcp_syn("192.0.2.1", POD, 40000, 8080)),
        ("this node's own address", Ipv4::tcp_syn("172.30.0.9", POD, 40000, 8080)),
        ("TTL 1: time exceeded is the stack's", Ipv4::tcp_syn(PEER, POD, 40000, 8080).ttl(1)),
        ("a fragment", Ipv4::udp(PEER, POD, 40000, 53).fragment(true, 0)),
        ("IP options", Ipv4::tcp_syn(PEER, POD, 40000, 8080).options(&[1, 1, 1, 0])),
        ("a stack flow's reply", Ipv4::tcp_ack(PEER, POD, 30080, 41000)),
        ("larger than the pod's MTU", Ipv4::udp(PEER, POD, 40000, 53).payload(&[0; 1200])),
    ];
    for (what, sent) in &cases {
        let frame = sent.frame(from_peer(&dp));
        let run = dp.run(FROM_UPLINK, dp.uplink.ifindex, &frame).unwrap();
        assert_eq!(run.action, TC_ACT_OK, "{what}");
        assert_eq!(hex(&run.packet), hex(&frame), "{what}: untouched");
    }
    assert_eq!(dp.forwards().unwrap(), [(ForwardPath::ToStack, cases.len() as u64)]);
    assert_eq!(dp.drops().unwrap(), []);
    assert_eq!(dp.node_flows().unwrap(), [], "nothing remembered");
}

#[test]
fn a_pods_packet_to_a_node_leaves_without_the_stack_only_as_an_answer() {
    let dp = TestDatapath::node().unwrap();
    let b = dp.add_pod(POD).unwrap();
    dp.node_address(PEER, NODE_ADDRESS_REMOTE).unwrap();
    let answer = Ipv4::tcp_ack(POD, PEER, 8080, 40000);
    // No connection came in: the pod's own connection, through the stack.
    let run = dp.run(FROM_POD, b.host.ifindex, &answer.frame(b.sends())).unwrap();
    assert_eq!((run.action, run.ctx.mark & FAST_PATH_MARK), (TC_ACT_OK, 0));
    dp.node_flow(key(POD, PEER, 8080, 40000, TCP)).unwrap();
    dp.set_mtu(&dp.uplink, 1000).unwrap();
    for (what, sent) in
        [("TTL 1", answer.clone().ttl(1)), ("larger than the uplink's MTU", answer.clone().payload(&[0; 1200]))]
    {
        let frame = sent.frame(b.sends());
        let run = dp.run(FROM_POD, b.host.ifindex, &frame).unwrap();
        assert_eq!(run.action, TC_ACT_OK, "{what}");
        assert_eq!(hex(&run.packet), hex(&frame), "{what}: untouched");
    }
    assert_eq!(dp.node_flows().unwrap().len(), 1);
    // A SYN on that tuple: the pod opens a connection (the stack's), and
    // the old entry is forgotten.
    let syn = Ipv4::tcp_syn(POD, PEER, 8080, 40000).frame(b.sends());
    assert_eq!(dp.run(FROM_POD, b.host.ifindex, &syn).unwrap().action, TC_ACT_OK);
    assert_eq!(dp.node_flows().unwrap(), []);
    assert_eq!(dp.forwards().unwrap(), [(ForwardPath::ToStack, 4)]);
    assert_eq!(dp.drops().unwrap(), []);
}

#[test]
fn a_nodes_connection_is_judged_by_the_pods_ingress_policy_as_the_remote_node() {
    let n = PolicyNode::new().unwrap();
    n.dp.identity(ip(PEER), IDENTITY_REMOTE_NODE).unwrap();
    n.dp.node_address(PEER, NODE_ADDRESS_REMOTE).unwrap();
    n.dp.isolate(ip(B), B_RULES, ENDPOINT_INGRESS_ISOLATED).unwrap();
    let syn = Ipv4::tcp_syn(PEER, B, 40000, 8080).frame(n.from_peer());
    let run = n.dp.run(FROM_UPLINK, n.dp.uplink.ifindex, &syn).unwrap();
    assert_eq!(run.action, TC_ACT_SHOT);
    assert_eq!(n.drops().unwrap(), [(DropReason::PolicyDeniedIngress, HookDirection::Ingress, 1)]);
    assert_eq!(n.dp.node_flows().unwrap(), [], "a denied connection is not remembered");
    n.dp.allow(B_RULES, IDENTITY_REMOTE_NODE, Direction::Ingress, Ports::One(TCP, 8080), 7).unwrap();
    let run = n.dp.run(FROM_UPLINK, n.dp.uplink.ifindex, &syn).unwrap();
    assert_eq!(run.action, TC_ACT_REDIRECT);
    assert_eq!(n.dp.node_flows().unwrap(), [key(B, PEER, 8080, 40000, TCP)]);
}

/// A pod's ICMP port unreachable quoting `quoted` (a frame: its IPv4 and
/// UDP headers), from the pod to `dst`, in a frame from the pod.
fn port_unreachable(pod: &sluice_tests::prog_test::Pod, dst: &str, quoted: &[u8]) -> Vec<u8> {
    let l2 = pod.sends();
    let ip_header = Ipv4Header::new(0, 64, etherparse::IpNumber::ICMP, pod.ip.octets(), ip(dst).octets()).unwrap();
    let b = PacketBuilder::ethernet2(l2.src, l2.dst).ip(IpHeaders::Ipv4(ip_header, Default::default()));
    let mut out = Vec::new();
    b.icmpv4(Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Port)).write(&mut out, &quoted[14..42]).unwrap();
    out
}

#[test]
fn a_pods_icmp_error_about_such_a_connection_leaves_as_its_answers_do() {
    let dp = TestDatapath::node().unwrap();
    let b = dp.add_pod(POD).unwrap();
    dp.node_address(PEER, NODE_ADDRESS_REMOTE).unwrap();
    // The node's datagram in (remembered), and one of a connection the
    // stack carried (never remembered).
    let datagram = Ipv4::udp(PEER, POD, 40000, 53).frame(from_peer(&dp));
    assert_eq!(dp.run(FROM_UPLINK, dp.uplink.ifindex, &datagram).unwrap().action, TC_ACT_REDIRECT);
    let error = port_unreachable(&b, PEER, &datagram);
    let run = dp.run(FROM_POD, b.host.ifindex, &error).unwrap();
    assert_eq!(run.action, TC_ACT_REDIRECT, "about a connection that came in without the stack");
    assert_ne!(run.ctx.mark & FAST_PATH_MARK, 0);
    let other = Ipv4::udp(PEER, POD, 40001, 53).frame(from_peer(&dp));
    let run = dp.run(FROM_POD, b.host.ifindex, &port_unreachable(&b, PEER, &other)).unwrap();
    assert_eq!(run.action, TC_ACT_OK, "about anything else: the stack's");
    assert_eq!(
        dp.forwards().unwrap(),
        [
            (ForwardPath::UplinkToPod, 1),
            (ForwardPath::ToStack, 1),
            (ForwardPath::NodeToPod, 1),
            (ForwardPath::PodAnswerToNode, 1)
        ]
    );
}
