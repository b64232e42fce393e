//! NetworkPolicy, a pod whose entry is the CNI plugin's fail-closed stand-in
//! (`ENDPOINT_POLICY_PENDING`: the agent had not written its policy when
//! the runtime asked for its network): nothing reaches it and it reaches
//! nothing but its own node, each drop counted as `policy_pending`.
use sluice_common::{
    maps::programs::{FROM_POD, FROM_UPLINK, TO_POD},
    policy::{Direction, PolicyVerdict, ENDPOINT_POLICY_PENDING},
    DropReason, HookDirection,
};
use sluice_tests::prog_test::{
    ip,
    policy::{PolicyNode, A, B, REMOTE},
    Ipv4, NODE_IP, TC_ACT_OK, TC_ACT_SHOT, TC_ACT_UNSPEC,
};

#[test]
fn a_pending_pod_reaches_and_is_reached_by_its_node_only() {
    let n = PolicyNode::new().unwrap();
    let (a, b) = (&n.a, &n.b);
    n.dp.isolate(ip(B), 0, ENDPOINT_POLICY_PENDING).unwrap();
    let run = |prog, ifindex, frame: Vec<u8>| n.dp.run(prog, ifindex, &frame).unwrap().action;
    assert_eq!(run(FROM_POD, a.host.ifindex, Ipv4::tcp_syn(A, B, 1, 80).frame(a.sends())), TC_ACT_SHOT);
    assert_eq!(run(FROM_POD, b.host.ifindex, Ipv4::tcp_syn(B, A, 1, 80).frame(b.sends())), TC_ACT_SHOT);
    assert_eq!(run(FROM_POD, b.host.ifindex, Ipv4::udp(B, "8.8.8.8", 1, 53).frame(b.sends())), TC_ACT_SHOT);
    let uplink = n.dp.uplink.ifindex;
    assert_eq!(run(FROM_UPLINK, uplink, Ipv4::tcp_syn(REMOTE, B, 1, 80).frame(n.from_peer())), TC_ACT_SHOT);
    // Its own node, both ways.
    assert_eq!(run(TO_POD, b.host.ifindex, Ipv4::tcp_syn(NODE_IP, B, 2, 8080).frame(n.from_stack(b))), TC_ACT_UNSPEC);
    assert_eq!(run(FROM_POD, b.host.ifindex, Ipv4::udp(B, NODE_IP, 2, 53).frame(b.sends())), TC_ACT_OK);
    assert_eq!(n.drops().unwrap(), [(DropReason::PolicyPending, HookDirection::Ingress, 4)]);
    assert_eq!(
        n.dp.verdicts().unwrap(),
        [
            (Direction::Ingress, PolicyVerdict::AllowedHost, 1),
            (Direction::Egress, PolicyVerdict::AllowedHost, 1),
            (Direction::Ingress, PolicyVerdict::Pending, 2),
            (Direction::Egress, PolicyVerdict::Pending, 2)
        ]
    );
}
