//! NetworkPolicy, ports: an entry names a protocol and a port, a range of
//! ports (an `endPort` range is a few trie prefixes), a protocol's every
//! port, or every protocol; TCP, UDP and SCTP are told apart (SCTP's ports
//! sit where TCP's and UDP's do, so a policy allowing SCTP/80 must not open
//! TCP/80, nor the other way round).
use sluice_common::{
    maps::programs::FROM_POD,
    policy::{Direction, ENDPOINT_INGRESS_ISOLATED},
    DropReason,
};
use sluice_tests::prog_test::{
    ip,
    policy::{PolicyNode, Ports, A, A_ID, B, B_RULES, SCTP, TCP, UDP},
    Ipv4, TC_ACT_REDIRECT, TC_ACT_SHOT,
};

fn a_to_b(n: &PolicyNode, sent: Ipv4) -> i32 {
    n.dp.run(FROM_POD, n.a.host.ifindex, &sent.frame(n.a.sends())).unwrap().action
}

#[test]
fn a_port_range_allows_exactly_its_ports() {
    let n = PolicyNode::new().unwrap();
    n.dp.isolate(ip(B), B_RULES, ENDPOINT_INGRESS_ISOLATED).unwrap();
    // 8064..=8095: the ports sharing 8080's top 11 bits.
    n.dp.allow(B_RULES, A_ID, Direction::Ingress, Ports::Block { protocol: TCP, first: 8064, bits: 11 }, 3).unwrap();
    for (port, want) in [
        (8063, TC_ACT_SHOT),
        (8064, TC_ACT_REDIRECT),
        (8080, TC_ACT_REDIRECT),
        (8095, TC_ACT_REDIRECT),
        (8096, TC_ACT_SHOT),
    ] {
        assert_eq!(a_to_b(&n, Ipv4::tcp_syn(A, B, 40000, port)), want, "port {port}");
    }
    assert_eq!(n.dp.drops().unwrap(), [(DropReason::PolicyDeniedIngress, 2)]);
}

#[test]
fn sctp_80_and_tcp_80_are_different_ports() {
    let n = PolicyNode::new().unwrap();
    n.dp.isolate(ip(B), B_RULES, ENDPOINT_INGRESS_ISOLATED).unwrap();
    n.dp.allow(B_RULES, A_ID, Direction::Ingress, Ports::One(SCTP, 80), 1).unwrap();
    assert_eq!(a_to_b(&n, Ipv4::sctp(A, B, 5000, 80)), TC_ACT_REDIRECT, "SCTP/80 allowed");
    assert_eq!(a_to_b(&n, Ipv4::tcp_syn(A, B, 5001, 80)), TC_ACT_SHOT, "SCTP/80 must not open TCP/80");
    assert_eq!(a_to_b(&n, Ipv4::udp(A, B, 5002, 80)), TC_ACT_SHOT);
    assert_eq!(a_to_b(&n, Ipv4::sctp(A, B, 5003, 81)), TC_ACT_SHOT, "SCTP's port is read");
    n.dp.revoke(B_RULES, A_ID, Direction::Ingress, Ports::One(SCTP, 80)).unwrap();
    n.dp.allow(B_RULES, A_ID, Direction::Ingress, Ports::One(TCP, 80), 2).unwrap();
    assert_eq!(a_to_b(&n, Ipv4::tcp_syn(A, B, 5004, 80)), TC_ACT_REDIRECT, "TCP/80 allowed");
    assert_eq!(a_to_b(&n, Ipv4::sctp(A, B, 5005, 80)), TC_ACT_SHOT, "TCP/80 must not open SCTP/80");
}

#[test]
fn udp_is_judged_by_its_port_and_its_replies_pass() {
    let n = PolicyNode::new().unwrap();
    n.dp.isolate(ip(B), B_RULES, ENDPOINT_INGRESS_ISOLATED).unwrap();
    // a is isolated too: its ingress has no rule, so only its own
    // connections' replies reach it.
    n.dp.isolate(ip(A), 10, ENDPOINT_INGRESS_ISOLATED).unwrap();
    n.dp.allow(B_RULES, A_ID, Direction::Ingress, Ports::One(UDP, 53), 4).unwrap();
    assert_eq!(a_to_b(&n, Ipv4::udp(A, B, 40000, 53)), TC_ACT_REDIRECT);
    assert_eq!(a_to_b(&n, Ipv4::udp(A, B, 40000, 54)), TC_ACT_SHOT);
    assert_eq!(a_to_b(&n, Ipv4::tcp_syn(A, B, 40000, 53)), TC_ACT_SHOT, "UDP/53 is not TCP/53");
    let reply = Ipv4::udp(B, A, 53, 40000).frame(n.b.sends());
    assert_eq!(n.dp.run(FROM_POD, n.b.host.ifindex, &reply).unwrap().action, TC_ACT_REDIRECT, "the reply");
    let other = Ipv4::udp(B, A, 53, 40001).frame(n.b.sends());
    assert_eq!(n.dp.run(FROM_POD, n.b.host.ifindex, &other).unwrap().action, TC_ACT_SHOT, "not a reply");
}
