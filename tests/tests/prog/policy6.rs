//! NetworkPolicy over IPv6 (dual-stack, issue 28): the same judgement as
//! IPv4, from the IPv6 twins of the address maps (`POLICY_IDENTITIES6`,
//! `POLICY_ENDPOINTS6`, `POLICY_CT6`) and the shared rules. A pod's IPv6
//! leaves through `from_pod6` (its egress, and a local destination's
//! ingress) and enters through the stack's door, `to_pod` (its ingress):
//! IPv6 has no fast path, so every way into a pod passes there.
use sluice_common::{
    events::{policy_bit, EVENT_POLICY6},
    maps::{
        names,
        programs::{FROM_POD, FROM_POD_NETKIT, TO_POD},
    },
    policy::{
        Direction, PolicyEvent6, PolicyVerdict, CT_EGRESS_JUDGED, CT_INGRESS_JUDGED, ENDPOINT_EGRESS_ISOLATED,
        ENDPOINT_INGRESS_ISOLATED, ENDPOINT_POLICY_PENDING, POLICY_REF_NONE,
    },
    DropReason, HookDirection,
};
use sluice_tests::prog_test::{
    ip,
    packet::{ip6, Ipv6, L4v6},
    policy::{
        ct_key6, PolicyNode, Ports, A6, A_ID, A_RULES, B6, B_ID, B_RULES, NODE_IP6, REMOTE6, REMOTE_ID, SCTP, TCP,
    },
    TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, TC_ACT_UNSPEC,
};

const BOTH: u32 = ENDPOINT_INGRESS_ISOLATED | ENDPOINT_EGRESS_ISOLATED;

/// `to_pod` on b's host end: the stack delivering `p` into b.
fn into_b(n: &PolicyNode, p: &Ipv6) -> i32 {
    n.dp.run(TO_POD, n.b.host.ifindex, &p.frame(n.from_stack(&n.b))).unwrap().action
}

/// `to_pod` on a's host end.
fn into_a(n: &PolicyNode, p: &Ipv6) -> i32 {
    n.dp.run(TO_POD, n.a.host.ifindex, &p.frame(n.from_stack(&n.a))).unwrap().action
}

/// `from_pod` on a's host veth: a sending `p`.
fn from_a(n: &PolicyNode, p: &Ipv6) -> i32 {
    n.dp.run(FROM_POD, n.a.host.ifindex, &p.frame(n.a.sends())).unwrap().action
}

/// `from_pod` on b's host veth.
fn from_b(n: &PolicyNode, p: &Ipv6) -> i32 {
    n.dp.run(FROM_POD, n.b.host.ifindex, &p.frame(n.b.sends())).unwrap().action
}

#[test]
fn an_isolated_pods_ipv6_ingress_is_judged_by_its_ipv4_identity_rules() {
    let n = PolicyNode::dual().unwrap();
    n.dp.isolate6(ip6(B6), B_RULES, ENDPOINT_INGRESS_ISOLATED).unwrap();
    assert_eq!(into_b(&n, &Ipv6::tcp_syn(REMOTE6, B6, 40000, 80)), TC_ACT_SHOT, "isolated, no rule");
    // One rule for the remote pod's identity: the same entry serves its
    // IPv4 and its IPv6.
    n.dp.allow(B_RULES, REMOTE_ID, Direction::Ingress, Ports::One(TCP, 80), 7).unwrap();
    assert_eq!(into_b(&n, &Ipv6::tcp_syn(REMOTE6, B6, 40000, 80)), TC_ACT_UNSPEC);
    assert_eq!(into_b(&n, &Ipv6::tcp_syn(REMOTE6, B6, 40001, 81)), TC_ACT_SHOT, "another port");
    assert_eq!(into_b(&n, &Ipv6::udp(REMOTE6, B6, 40001, 80)), TC_ACT_SHOT, "another protocol");
    assert_eq!(into_b(&n, &Ipv6::sctp(REMOTE6, B6, 40001, 80)), TC_ACT_SHOT, "another protocol");
    // A pod of this node, through the stack, has its own identity: no rule.
    assert_eq!(from_a(&n, &Ipv6::tcp_syn(A6, B6, 40002, 80)), TC_ACT_SHOT, "judged where a's packet leaves it");
    let conns = n.dp.connections6().unwrap();
    assert_eq!(conns.len(), 1, "{conns:?}");
    assert_eq!(conns[0].0, ct_key6(REMOTE6, B6, 40000, 80, TCP));
    assert_eq!((conns[0].1.flags & CT_INGRESS_JUDGED, conns[0].1.ingress_ref), (CT_INGRESS_JUDGED, 7));
    assert_eq!(
        n.drops().unwrap(),
        [
            (DropReason::PolicyDeniedIngress, HookDirection::Ingress, 1),
            (DropReason::PolicyDeniedIngress, HookDirection::Egress, 4)
        ]
    );
    assert_eq!(
        n.dp.verdicts().unwrap(),
        [
            (Direction::Ingress, PolicyVerdict::AllowedByPeerRule, 1),
            (Direction::Ingress, PolicyVerdict::DeniedIngress, 5)
        ]
    );
    // The IPv4 entry of the same pod is untouched: its IPv4 stays open.
    assert!(n.dp.connections().unwrap().is_empty());
}

#[test]
fn an_isolated_pods_ipv6_egress_is_judged_where_it_leaves_and_replies_pass() {
    let n = PolicyNode::dual().unwrap();
    n.dp.isolate6(ip6(A6), A_RULES, ENDPOINT_EGRESS_ISOLATED).unwrap();
    for program in [FROM_POD, FROM_POD_NETKIT] {
        let frame = Ipv6::tcp_syn(A6, REMOTE6, 40000, 443).frame(n.a.sends());
        assert_eq!(n.dp.run(program, n.a.host.ifindex, &frame).unwrap().action, TC_ACT_SHOT, "{program}");
    }
    assert_eq!(n.drops().unwrap(), [(DropReason::PolicyDeniedEgress, HookDirection::Ingress, 2)]);
    n.dp.allow(A_RULES, REMOTE_ID, Direction::Egress, Ports::One(TCP, 443), 9).unwrap();
    assert_eq!(from_a(&n, &Ipv6::tcp_syn(A6, REMOTE6, 40000, 443)), TC_ACT_OK);
    let conns = n.dp.connections6().unwrap();
    assert_eq!(conns.len(), 1, "{conns:?}");
    assert_eq!(conns[0].0, ct_key6(A6, REMOTE6, 40000, 443, TCP));
    assert_eq!((conns[0].1.flags & CT_EGRESS_JUDGED, conns[0].1.egress_ref), (CT_EGRESS_JUDGED, 9));
    // The answer comes back through the stack into a: a reply.
    assert_eq!(into_a(&n, &Ipv6::tcp_ack(REMOTE6, A6, 443, 40000)), TC_ACT_UNSPEC);
    // UDP to the world: denied.
    assert_eq!(from_a(&n, &Ipv6::udp(A6, "2001:db8::53", 40000, 53)), TC_ACT_SHOT);
    assert_eq!(n.dp.verdicts().unwrap()[0], (Direction::Egress, PolicyVerdict::AllowedByPeerRule, 1));
}

#[test]
fn replies_of_an_allowed_ipv6_connection_pass_both_ways() {
    let n = PolicyNode::dual().unwrap();
    n.dp.isolate6(ip6(B6), B_RULES, BOTH).unwrap();
    n.dp.allow(B_RULES, REMOTE_ID, Direction::Ingress, Ports::One(TCP, 80), 7).unwrap();
    assert_eq!(into_b(&n, &Ipv6::tcp_syn(REMOTE6, B6, 40000, 80)), TC_ACT_UNSPEC);
    // b's answer: egress isolated with no egress rule, yet a reply.
    assert_eq!(from_b(&n, &Ipv6::tcp_ack(B6, REMOTE6, 80, 40000)), TC_ACT_OK);
    // b opening a connection of its own to the same peer: denied.
    assert_eq!(from_b(&n, &Ipv6::tcp_syn(B6, REMOTE6, 40000, 80)), TC_ACT_SHOT);
    // Ping: the echo reply matches its request by identifier.
    n.dp.allow(B_RULES, REMOTE_ID, Direction::Ingress, Ports::Any, 8).unwrap();
    assert_eq!(into_b(&n, &Ipv6::icmp(REMOTE6, B6)), TC_ACT_UNSPEC);
    assert_eq!(from_b(&n, &Ipv6::icmp_reply(B6, REMOTE6)), TC_ACT_OK);
    assert_eq!(n.drops().unwrap(), [(DropReason::PolicyDeniedEgress, HookDirection::Ingress, 1)]);
}

#[test]
fn a_pod_and_its_node_always_reach_each_other_and_a_pod_itself() {
    let n = PolicyNode::dual().unwrap();
    n.dp.isolate6(ip6(B6), B_RULES, BOTH).unwrap();
    // kubelet's probe over IPv6, and the pod's own connection to its node.
    assert_eq!(into_b(&n, &Ipv6::tcp_syn(NODE_IP6, B6, 40000, 8080)), TC_ACT_UNSPEC);
    assert_eq!(from_b(&n, &Ipv6::tcp_syn(B6, NODE_IP6, 40001, 10250)), TC_ACT_OK);
    // Hairpin.
    assert_eq!(into_b(&n, &Ipv6::tcp_syn(B6, B6, 40002, 8080)), TC_ACT_UNSPEC);
    assert_eq!(
        n.dp.verdicts().unwrap(),
        [(Direction::Ingress, PolicyVerdict::AllowedHost, 1), (Direction::Egress, PolicyVerdict::AllowedHost, 1)]
    );
    assert_eq!(n.drops().unwrap(), []);
}

#[test]
fn neighbour_discovery_and_link_local_traffic_are_never_judged() {
    let n = PolicyNode::dual().unwrap();
    n.dp.isolate6(ip6(B6), B_RULES, BOTH).unwrap();
    let b_link_local = "fe80::aa:bbff:fecc:dd03";
    let ns =
        |src: &str, dst: &str, target: &str| Ipv6::new(src, dst, L4v6::NeighbourSolicitation { target: ip6(target) });
    // The pod resolving its gateway (multicast solicitation, then the
    // gateway's unicast checks), and the node resolving the pod.
    assert_eq!(from_b(&n, &ns(b_link_local, "ff02::1:ff00:1", "fe80::1")), TC_ACT_OK);
    assert_eq!(from_b(&n, &ns(b_link_local, "fe80::1", "fe80::1")), TC_ACT_OK);
    assert_eq!(into_b(&n, &ns("fe80::1", "ff02::1:ff00:3", B6)), TC_ACT_UNSPEC);
    // Reachability confirmation between global addresses, both ways.
    assert_eq!(into_b(&n, &ns(REMOTE6, B6, B6)), TC_ACT_UNSPEC);
    assert_eq!(from_b(&n, &ns(B6, NODE_IP6, NODE_IP6)), TC_ACT_OK);
    // Anything from or to the gateway's link-local address: the link.
    assert_eq!(into_b(&n, &Ipv6::icmp("fe80::1", B6)), TC_ACT_UNSPEC);
    assert_eq!(from_b(&n, &Ipv6::tcp_syn(B6, "fe80::1", 40000, 53)), TC_ACT_OK);
    assert_eq!(n.drops().unwrap(), []);
    assert_eq!(n.dp.verdicts().unwrap(), [], "not judged at all");
    // While a global echo from a peer is judged (and denied).
    assert_eq!(into_b(&n, &Ipv6::icmp(REMOTE6, B6)), TC_ACT_SHOT);
}

#[test]
fn an_unknown_cluster_ipv6_source_is_dropped_as_unknown() {
    let n = PolicyNode::dual().unwrap();
    n.dp.isolate6(ip6(B6), B_RULES, ENDPOINT_INGRESS_ISOLATED).unwrap();
    n.dp.allow(B_RULES, A_ID, Direction::Ingress, Ports::Any, 7).unwrap();
    // Inside fd00:244::/48, no pod the node knows.
    assert_eq!(into_b(&n, &Ipv6::tcp_syn("fd00:244:0:3::9", B6, 40000, 80)), TC_ACT_SHOT);
    assert_eq!(n.drops().unwrap(), [(DropReason::PolicyPeerUnknown, HookDirection::Egress, 1)]);
    assert_eq!(n.dp.verdicts().unwrap(), [(Direction::Ingress, PolicyVerdict::PeerUnknown, 1)]);
    // Outside the cluster CIDR it is the world, denied as such.
    assert_eq!(into_b(&n, &Ipv6::tcp_syn("2001:db8::9", B6, 40000, 80)), TC_ACT_SHOT);
    assert_eq!(n.drops().unwrap()[0], (DropReason::PolicyDeniedIngress, HookDirection::Egress, 1));
}

#[test]
fn an_ipv6_ip_block_with_except_matches_only_ipv6_and_an_ipv4_block_never_does() {
    let n = PolicyNode::dual().unwrap();
    const BLOCK: u32 = 400;
    const BLOCK_EXCEPT: u32 = 401;
    const BLOCK4: u32 = 402;
    // ipBlock 2001:db8::/32 except 2001:db8:1::/48 (the agent gives the
    // excepted prefix a class of its own), and an IPv4 ipBlock 0.0.0.0/0.
    n.dp.identity6("2001:db8::/32", BLOCK).unwrap();
    n.dp.identity6("2001:db8:1::/48", BLOCK_EXCEPT).unwrap();
    sluice_node::datapath::policy_maps::PolicyIdentities::open(n.dp.pins())
        .unwrap()
        .insert("0.0.0.0/0".parse().unwrap(), BLOCK4)
        .unwrap();
    n.dp.isolate6(ip6(B6), B_RULES, ENDPOINT_INGRESS_ISOLATED).unwrap();
    n.dp.allow(B_RULES, BLOCK, Direction::Ingress, Ports::One(TCP, 80), 11).unwrap();
    n.dp.allow(B_RULES, BLOCK4, Direction::Ingress, Ports::One(TCP, 81), 12).unwrap();
    assert_eq!(into_b(&n, &Ipv6::tcp_syn("2001:db8:2::5", B6, 40000, 80)), TC_ACT_UNSPEC, "inside the block");
    assert_eq!(into_b(&n, &Ipv6::tcp_syn("2001:db8:1::5", B6, 40000, 80)), TC_ACT_SHOT, "in its except");
    assert_eq!(into_b(&n, &Ipv6::tcp_syn("2001:db9::5", B6, 40000, 80)), TC_ACT_SHOT, "outside");
    // The IPv4 block covers every IPv4 address and no IPv6 one.
    assert_eq!(into_b(&n, &Ipv6::tcp_syn("2001:db9::5", B6, 40000, 81)), TC_ACT_SHOT, "IPv4 block, IPv6 peer");
    let v4 = sluice_tests::prog_test::Ipv4::tcp_syn("192.0.2.1", "10.244.1.3", 40000, 81);
    n.dp.isolate(ip("10.244.1.3"), B_RULES, ENDPOINT_INGRESS_ISOLATED).unwrap();
    let run = n.dp.run(TO_POD, n.b.host.ifindex, &v4.frame(n.from_stack(&n.b))).unwrap();
    assert_eq!(run.action, TC_ACT_UNSPEC, "the IPv4 block still matches IPv4");
    assert_eq!(
        n.dp.verdicts().unwrap(),
        [
            (Direction::Ingress, PolicyVerdict::AllowedByPeerRule, 2),
            (Direction::Ingress, PolicyVerdict::DeniedIngress, 3)
        ]
    );
}

#[test]
fn between_two_local_pods_both_ends_are_judged_where_the_packet_leaves() {
    let n = PolicyNode::dual().unwrap();
    n.dp.isolate6(ip6(A6), A_RULES, ENDPOINT_EGRESS_ISOLATED).unwrap();
    n.dp.isolate6(ip6(B6), B_RULES, ENDPOINT_INGRESS_ISOLATED).unwrap();
    n.dp.allow(A_RULES, B_ID, Direction::Egress, Ports::One(TCP, 80), 5).unwrap();
    // a's egress allows it, b's ingress does not.
    assert_eq!(from_a(&n, &Ipv6::tcp_syn(A6, B6, 40000, 80)), TC_ACT_SHOT);
    assert_eq!(n.drops().unwrap(), [(DropReason::PolicyDeniedIngress, HookDirection::Ingress, 1)]);
    n.dp.allow(B_RULES, A_ID, Direction::Ingress, Ports::One(TCP, 80), 6).unwrap();
    // Allowed: straight into b by the fast path, through the door that
    // judged both ends, once.
    assert_eq!(from_a(&n, &Ipv6::tcp_syn(A6, B6, 40000, 80)), TC_ACT_REDIRECT);
    let conns = n.dp.connections6().unwrap();
    assert_eq!(conns.len(), 1);
    let e = conns[0].1;
    assert_eq!((e.flags & (CT_EGRESS_JUDGED | CT_INGRESS_JUDGED), e.egress_ref, e.ingress_ref), (3, 5, 6));
    // Should the stack hand it to b instead (a router's answer was due),
    // the connection is known there too; b's reply is allowed, and goes
    // back through the stack that delivered the SYN (`STACK_FLOWS6`).
    assert_eq!(into_b(&n, &Ipv6::tcp_syn(A6, B6, 40000, 80)), TC_ACT_UNSPEC);
    assert_eq!(from_b(&n, &Ipv6::tcp_ack(B6, A6, 80, 40000)), TC_ACT_OK);
    assert_eq!(into_a(&n, &Ipv6::tcp_ack(B6, A6, 80, 40000)), TC_ACT_UNSPEC);
}

#[test]
fn a_policy_change_cuts_an_open_ipv6_connection_on_its_next_packet() {
    let n = PolicyNode::dual().unwrap();
    n.dp.isolate6(ip6(B6), B_RULES, ENDPOINT_INGRESS_ISOLATED).unwrap();
    n.dp.allow(B_RULES, REMOTE_ID, Direction::Ingress, Ports::One(TCP, 80), 7).unwrap();
    assert_eq!(into_b(&n, &Ipv6::tcp_syn(REMOTE6, B6, 40000, 80)), TC_ACT_UNSPEC);
    assert_eq!(into_b(&n, &Ipv6::tcp_ack(REMOTE6, B6, 40000, 80)), TC_ACT_UNSPEC);
    n.dp.revoke(B_RULES, REMOTE_ID, Direction::Ingress, Ports::One(TCP, 80)).unwrap();
    n.dp.bump_epoch().unwrap();
    // Either way: the next packet is judged again, denied, forgotten.
    assert_eq!(from_b(&n, &Ipv6::tcp_ack(B6, REMOTE6, 80, 40000)), TC_ACT_SHOT);
    assert_eq!(n.dp.connections6().unwrap(), []);
    assert_eq!(into_b(&n, &Ipv6::tcp_ack(REMOTE6, B6, 40000, 80)), TC_ACT_SHOT);
    // deny → allow: the next SYN goes through.
    n.dp.allow(B_RULES, REMOTE_ID, Direction::Ingress, Ports::One(TCP, 80), 7).unwrap();
    n.dp.bump_epoch().unwrap();
    assert_eq!(into_b(&n, &Ipv6::tcp_syn(REMOTE6, B6, 40001, 80)), TC_ACT_UNSPEC);
}

#[test]
fn packet_too_big_for_an_allowed_connection_reaches_the_sender() {
    let n = PolicyNode::dual().unwrap();
    n.dp.isolate6(ip6(B6), B_RULES, BOTH).unwrap();
    n.dp.allow(B_RULES, REMOTE_ID, Direction::Ingress, Ports::One(TCP, 80), 7).unwrap();
    assert_eq!(into_b(&n, &Ipv6::tcp_syn(REMOTE6, B6, 40000, 80)), TC_ACT_UNSPEC);
    // A router on the way back cannot carry b's full-size answer.
    let quoted = Ipv6::tcp_ack(B6, REMOTE6, 80, 40000).bytes();
    let ptb = Ipv6::new("fd00:30::fe", B6, L4v6::PacketTooBig { mtu: 1280, quoted });
    assert_eq!(into_b(&n, &ptb), TC_ACT_UNSPEC, "about an allowed connection");
    // About a connection that was never allowed: judged as plain ICMPv6
    // from the router (the world), denied.
    let quoted = Ipv6::tcp_ack(B6, REMOTE6, 81, 40000).bytes();
    let ptb = Ipv6::new("fd00:30::fe", B6, L4v6::PacketTooBig { mtu: 1280, quoted });
    assert_eq!(into_b(&n, &ptb), TC_ACT_SHOT);
}

#[test]
fn behind_an_extension_header_only_a_rule_for_every_protocol_allows() {
    let n = PolicyNode::dual().unwrap();
    n.dp.isolate6(ip6(B6), B_RULES, ENDPOINT_INGRESS_ISOLATED).unwrap();
    n.dp.allow(B_RULES, REMOTE_ID, Direction::Ingress, Ports::One(TCP, 80), 7).unwrap();
    let fragment = Ipv6::new(REMOTE6, B6, L4v6::FragmentOfTcp { src_port: 40000, dst_port: 80 });
    assert_eq!(into_b(&n, &fragment), TC_ACT_SHOT, "ports unread: a port rule cannot allow it");
    n.dp.allow(B_RULES, REMOTE_ID, Direction::Ingress, Ports::Any, 8).unwrap();
    assert_eq!(into_b(&n, &fragment), TC_ACT_UNSPEC);
    assert_eq!(n.dp.connections6().unwrap(), [], "never remembered");
}

#[test]
fn sctp_over_ipv6_is_its_own_protocol() {
    let n = PolicyNode::dual().unwrap();
    n.dp.isolate6(ip6(B6), B_RULES, ENDPOINT_INGRESS_ISOLATED).unwrap();
    n.dp.allow(B_RULES, REMOTE_ID, Direction::Ingress, Ports::One(SCTP, 80), 7).unwrap();
    assert_eq!(into_b(&n, &Ipv6::sctp(REMOTE6, B6, 40000, 80)), TC_ACT_UNSPEC);
    assert_eq!(into_b(&n, &Ipv6::tcp_syn(REMOTE6, B6, 40000, 80)), TC_ACT_SHOT);
    assert_eq!(into_b(&n, &Ipv6::udp(REMOTE6, B6, 40000, 80)), TC_ACT_SHOT);
}

#[test]
fn a_pending_pod_refuses_ipv6_until_its_policy_is_known() {
    let n = PolicyNode::dual().unwrap();
    n.dp.isolate6(ip6(B6), 0, ENDPOINT_POLICY_PENDING).unwrap();
    assert_eq!(into_b(&n, &Ipv6::tcp_syn(REMOTE6, B6, 40000, 80)), TC_ACT_SHOT);
    assert_eq!(from_b(&n, &Ipv6::tcp_syn(B6, REMOTE6, 40000, 80)), TC_ACT_SHOT);
    assert_eq!(
        n.drops().unwrap(),
        [(DropReason::PolicyPending, HookDirection::Ingress, 1), (DropReason::PolicyPending, HookDirection::Egress, 1)]
    );
    // Its node still reaches it (kubelet's probes).
    assert_eq!(into_b(&n, &Ipv6::tcp_syn(NODE_IP6, B6, 40001, 8080)), TC_ACT_UNSPEC);
}

#[test]
fn each_judged_ipv6_connection_is_reported_to_the_monitors() {
    use aya::maps::{Array, Map, MapData, RingBuf};
    let n = PolicyNode::dual().unwrap();
    n.dp.isolate6(ip6(B6), B_RULES, ENDPOINT_INGRESS_ISOLATED).unwrap();
    n.dp.allow(B_RULES, REMOTE_ID, Direction::Ingress, Ports::One(TCP, 80), 7).unwrap();
    let mut monitors: Array<MapData, u32> =
        Map::from_map_data(MapData::from_pin(n.dp.pins().map(names::MONITORS)).unwrap()).unwrap().try_into().unwrap();
    monitors.set(0, policy_bit(0), 0).unwrap();
    assert_eq!(into_b(&n, &Ipv6::tcp_syn(REMOTE6, B6, 40000, 80)), TC_ACT_UNSPEC);
    assert_eq!(into_b(&n, &Ipv6::tcp_syn(REMOTE6, B6, 40001, 81)), TC_ACT_SHOT);
    let data = MapData::from_pin(n.dp.pins().map(names::EVENTS[0])).unwrap();
    let mut ring = RingBuf::try_from(Map::from_map_data(data).unwrap()).unwrap();
    let mut seen = Vec::new();
    while let Some(item) = ring.next() {
        assert_eq!(item.len(), std::mem::size_of::<PolicyEvent6>());
        assert_eq!(item[8], EVENT_POLICY6);
        // SAFETY: the length was checked; plain data.
        let e = unsafe { std::ptr::read_unaligned(item.as_ptr() as *const PolicyEvent6) };
        assert_eq!((e.saddr, e.daddr, e.protocol), (ip6(REMOTE6).octets(), ip6(B6).octets(), TCP));
        seen.push((e.verdict, e.policy_ref, u16::from_be(e.dport_be)));
    }
    assert_eq!(
        seen,
        [(PolicyVerdict::AllowedByPeerRule as u8, 7, 80), (PolicyVerdict::DeniedIngress as u8, POLICY_REF_NONE, 81)]
    );
}
