//! NetworkPolicy, ingress: what enters a local pod is judged at the one
//! door (`deliver_to_local_pod`), whichever way it came — from a local pod
//! (`from_pod`), another node (`from_uplink`) or the node's stack
//! (`to_pod`) — and a denial is counted under its reason and the hook's
//! direction.
use sluice_common::{
    maps::programs::{FROM_POD, FROM_UPLINK, TO_POD},
    policy::{
        Direction, PolicyVerdict, CT_INGRESS_JUDGED, ENDPOINT_EGRESS_ISOLATED, ENDPOINT_INGRESS_ISOLATED, IDENTITY_ANY,
        POLICY_REF_NONE,
    },
    DropReason, HookDirection,
};
use sluice_tests::prog_test::{
    ip,
    policy::{ct_key, PolicyNode, Ports, A, A_ID, B, B_RULES, REMOTE, TCP},
    Ipv4, NODE_IP, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, TC_ACT_UNSPEC,
};

#[test]
fn an_isolated_pod_refuses_a_new_connection_from_every_origin() {
    let n = PolicyNode::new().unwrap();
    n.dp.isolate(ip(B), B_RULES, ENDPOINT_INGRESS_ISOLATED).unwrap();
    let b = &n.b;
    let sent = Ipv4::tcp_syn(A, B, 40000, 80).frame(n.a.sends());
    let run = n.dp.run(FROM_POD, n.a.host.ifindex, &sent).unwrap();
    assert_eq!(run.action, TC_ACT_SHOT);
    assert_eq!(run.packet, sent, "judged before a byte changed");
    let uplink = n.dp.uplink.ifindex;
    let run = n.dp.run(FROM_UPLINK, uplink, &Ipv4::tcp_syn(REMOTE, B, 1, 80).frame(n.from_peer())).unwrap();
    assert_eq!(run.action, TC_ACT_SHOT);
    let run = n.dp.run(TO_POD, b.host.ifindex, &Ipv4::tcp_syn("192.0.2.1", B, 1, 80).frame(n.from_stack(b))).unwrap();
    assert_eq!(run.action, TC_ACT_SHOT);
    // from_pod and from_uplink run on a receive hook, to_pod on a transmit one.
    assert_eq!(
        n.drops().unwrap(),
        [
            (DropReason::PolicyDeniedIngress, HookDirection::Ingress, 2),
            (DropReason::PolicyDeniedIngress, HookDirection::Egress, 1)
        ]
    );
    assert_eq!(n.dp.verdicts().unwrap(), [(Direction::Ingress, PolicyVerdict::DeniedIngress, 3)]);
    assert_eq!(n.dp.connections().unwrap(), [], "a denied connection is not remembered");
    // Isolated for egress only: ingress stays open.
    n.dp.isolate(ip(B), B_RULES, ENDPOINT_EGRESS_ISOLATED).unwrap();
    let run = n.dp.run(FROM_POD, n.a.host.ifindex, &sent).unwrap();
    assert_eq!(run.action, TC_ACT_REDIRECT);
}

#[test]
fn a_rule_for_the_peers_identity_allows_it_and_no_one_else() {
    let n = PolicyNode::new().unwrap();
    n.dp.isolate(ip(B), B_RULES, ENDPOINT_INGRESS_ISOLATED).unwrap();
    n.dp.allow(B_RULES, A_ID, Direction::Ingress, Ports::One(TCP, 80), 7).unwrap();
    let a = &n.a;
    let run = n.dp.run(FROM_POD, a.host.ifindex, &Ipv4::tcp_syn(A, B, 40000, 80).frame(a.sends())).unwrap();
    assert_eq!(run.action, TC_ACT_REDIRECT);
    let conns = n.dp.connections().unwrap();
    assert_eq!(conns.len(), 1, "{conns:?}");
    let (key, entry) = conns[0];
    assert_eq!(key, ct_key(A, B, 40000, 80, TCP));
    assert_eq!((entry.flags, entry.ingress_ref, entry.egress_ref), (CT_INGRESS_JUDGED, 7, POLICY_REF_NONE));
    // Another port of a, and the remote pod on the allowed port: denied.
    let run = n.dp.run(FROM_POD, a.host.ifindex, &Ipv4::tcp_syn(A, B, 40001, 81).frame(a.sends())).unwrap();
    assert_eq!(run.action, TC_ACT_SHOT);
    let frame = Ipv4::tcp_syn(REMOTE, B, 40000, 80).frame(n.from_peer());
    assert_eq!(n.dp.run(FROM_UPLINK, n.dp.uplink.ifindex, &frame).unwrap().action, TC_ACT_SHOT);
    assert_eq!(
        n.dp.verdicts().unwrap(),
        [
            (Direction::Ingress, PolicyVerdict::AllowedByPeerRule, 1),
            (Direction::Ingress, PolicyVerdict::DeniedIngress, 2)
        ]
    );
}

#[test]
fn a_rule_for_every_peer_allows_pods_and_the_world() {
    let n = PolicyNode::new().unwrap();
    n.dp.isolate(ip(B), B_RULES, ENDPOINT_INGRESS_ISOLATED).unwrap();
    n.dp.allow(B_RULES, IDENTITY_ANY, Direction::Ingress, Ports::One(TCP, 80), 8).unwrap();
    let (a, b) = (&n.a, &n.b);
    let run = n.dp.run(FROM_POD, a.host.ifindex, &Ipv4::tcp_syn(A, B, 40000, 80).frame(a.sends())).unwrap();
    assert_eq!(run.action, TC_ACT_REDIRECT);
    let frame = Ipv4::tcp_syn(REMOTE, B, 40000, 80).frame(n.from_peer());
    assert_eq!(n.dp.run(FROM_UPLINK, n.dp.uplink.ifindex, &frame).unwrap().action, TC_ACT_REDIRECT);
    let frame = Ipv4::tcp_syn("192.0.2.1", B, 40000, 80).frame(n.from_stack(b));
    assert_eq!(n.dp.run(TO_POD, b.host.ifindex, &frame).unwrap().action, TC_ACT_UNSPEC);
    // The rule names port 80 only.
    let frame = Ipv4::tcp_syn("192.0.2.1", B, 40000, 443).frame(n.from_stack(b));
    assert_eq!(n.dp.run(TO_POD, b.host.ifindex, &frame).unwrap().action, TC_ACT_SHOT);
    assert_eq!(
        n.dp.verdicts().unwrap(),
        [
            (Direction::Ingress, PolicyVerdict::AllowedByAnyPeerRule, 3),
            (Direction::Ingress, PolicyVerdict::DeniedIngress, 1)
        ]
    );
}

#[test]
fn the_own_node_and_the_pod_itself_are_always_allowed() {
    let n = PolicyNode::new().unwrap();
    n.dp.isolate(ip(B), B_RULES, ENDPOINT_INGRESS_ISOLATED | ENDPOINT_EGRESS_ISOLATED).unwrap();
    let b = &n.b;
    // kubelet's probe, and the pod's answer to the node.
    let frame = Ipv4::tcp_syn(NODE_IP, B, 40000, 8080).frame(n.from_stack(b));
    assert_eq!(n.dp.run(TO_POD, b.host.ifindex, &frame).unwrap().action, TC_ACT_UNSPEC);
    let frame = Ipv4::tcp_syn(B, NODE_IP, 40001, 10250).frame(b.sends());
    assert_eq!(n.dp.run(FROM_POD, b.host.ifindex, &frame).unwrap().action, TC_ACT_OK);
    // Hairpin: the pod reaching itself through a Service, handed back by
    // the stack.
    let frame = Ipv4::tcp_syn(B, B, 40002, 8080).frame(n.from_stack(b));
    assert_eq!(n.dp.run(TO_POD, b.host.ifindex, &frame).unwrap().action, TC_ACT_UNSPEC);
    assert_eq!(
        n.dp.verdicts().unwrap(),
        [(Direction::Ingress, PolicyVerdict::AllowedHost, 1), (Direction::Egress, PolicyVerdict::AllowedHost, 1)]
    );
    assert_eq!(n.drops().unwrap(), []);
}

#[test]
fn a_cluster_address_the_node_does_not_know_is_dropped_as_unknown() {
    let n = PolicyNode::new().unwrap();
    n.dp.isolate(ip(B), B_RULES, ENDPOINT_INGRESS_ISOLATED).unwrap();
    // Even a rule that names identities cannot name it; a rule for every
    // peer can (below).
    n.dp.allow(B_RULES, A_ID, Direction::Ingress, Ports::Any, 7).unwrap();
    let frame = Ipv4::tcp_syn("10.244.2.99", B, 40000, 80).frame(n.from_peer());
    assert_eq!(n.dp.run(FROM_UPLINK, n.dp.uplink.ifindex, &frame).unwrap().action, TC_ACT_SHOT);
    assert_eq!(n.drops().unwrap(), [(DropReason::PolicyPeerUnknown, HookDirection::Ingress, 1)]);
    assert_eq!(n.dp.verdicts().unwrap(), [(Direction::Ingress, PolicyVerdict::PeerUnknown, 1)]);
    n.dp.allow(B_RULES, IDENTITY_ANY, Direction::Ingress, Ports::Any, 9).unwrap();
    assert_eq!(n.dp.run(FROM_UPLINK, n.dp.uplink.ifindex, &frame).unwrap().action, TC_ACT_REDIRECT);
}
