//! NetworkPolicy, egress: what a local pod sends is judged where it enters
//! the datapath (`from_pod`) — towards another node's pod, another node,
//! the world (which the stack masquerades next, so here or never) — except
//! towards a ClusterIP: kube-proxy translates that later, in the stack, so
//! it is judged where the stack hands the packet back, to the backend it
//! chose (`to_pod` for a local backend, `to_uplink` / `to_tunnel` for a
//! remote one), with the pod's address still the source.
use sluice_common::{
    maps::programs::{FROM_POD, TO_POD, TO_TUNNEL, TO_UPLINK},
    policy::{
        Direction, PolicyVerdict, CT_CLIENT_IS_DST, CT_EGRESS_DEFERRED, ENDPOINT_EGRESS_ISOLATED,
        ENDPOINT_INGRESS_ISOLATED, IDENTITY_WORLD,
    },
    DropReason, HookDirection,
};
use sluice_tests::prog_test::{
    ip,
    policy::{ct_key, PolicyNode, Ports, A, A_RULES, B, B_ID, CLUSTER_IP, REMOTE, REMOTE_ID, TCP, UDP},
    Ipv4, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, TC_ACT_UNSPEC, VXLAN_PEER_CIDR,
};

#[test]
fn an_egress_isolated_pod_is_stopped_in_from_pod() {
    let n = PolicyNode::new().unwrap();
    let a = &n.a;
    n.dp.isolate(ip(A), A_RULES, ENDPOINT_EGRESS_ISOLATED).unwrap();
    n.dp.allow(A_RULES, REMOTE_ID, Direction::Egress, Ports::One(TCP, 443), 5).unwrap();
    let run = |sent: Ipv4| n.dp.run(FROM_POD, a.host.ifindex, &sent.frame(a.sends())).unwrap().action;
    assert_eq!(run(Ipv4::tcp_syn(A, REMOTE, 40000, 443)), TC_ACT_REDIRECT);
    assert_eq!(run(Ipv4::tcp_syn(A, REMOTE, 40001, 80)), TC_ACT_SHOT);
    assert_eq!(run(Ipv4::tcp_syn(A, B, 40002, 80)), TC_ACT_SHOT, "a local pod, judged at the door");
    assert_eq!(run(Ipv4::udp(A, "8.8.8.8", 40003, 53)), TC_ACT_SHOT, "the world, before the stack masquerades it");
    n.dp.allow(A_RULES, IDENTITY_WORLD, Direction::Egress, Ports::AllOf(UDP), 6).unwrap();
    assert_eq!(run(Ipv4::udp(A, "8.8.8.8", 40003, 53)), TC_ACT_OK);
    assert_eq!(n.drops().unwrap(), [(DropReason::PolicyDeniedEgress, HookDirection::Ingress, 3)]);
    assert_eq!(
        n.dp.verdicts().unwrap(),
        [(Direction::Egress, PolicyVerdict::AllowedByPeerRule, 2), (Direction::Egress, PolicyVerdict::DeniedEgress, 3)]
    );
}

#[test]
fn egress_to_a_cluster_ip_is_judged_after_kube_proxys_dnat() {
    let n = PolicyNode::new().unwrap();
    let (a, b) = (&n.a, &n.b);
    // a may reach b on 8080 and nothing else; it is ingress-isolated too,
    // so the un-DNATed reply must be known.
    n.dp.isolate(ip(A), A_RULES, ENDPOINT_EGRESS_ISOLATED | ENDPOINT_INGRESS_ISOLATED).unwrap();
    n.dp.allow(A_RULES, B_ID, Direction::Egress, Ports::One(TCP, 8080), 5).unwrap();
    // from_pod: to the ClusterIP, deferred, to the stack.
    let syn = Ipv4::tcp_syn(A, CLUSTER_IP, 40000, 80).frame(a.sends());
    assert_eq!(n.dp.run(FROM_POD, a.host.ifindex, &syn).unwrap().action, TC_ACT_OK);
    let conns = n.dp.connections().unwrap();
    assert_eq!(conns.len(), 1);
    // Stored under the ClusterIP's end first (the lower address), the
    // client's end in the flags.
    let flags = conns[0].1.flags;
    assert_eq!((conns[0].0, flags), (ct_key(A, CLUSTER_IP, 40000, 80, TCP), CT_EGRESS_DEFERRED | CT_CLIENT_IS_DST));
    assert_eq!(n.dp.verdicts().unwrap(), [], "nothing judged yet: the backend is not chosen");
    // kube-proxy chose local b:8080: the stack hands it to b's host end.
    let dnat = Ipv4::tcp_syn(A, B, 40000, 8080).frame(n.from_stack(b));
    assert_eq!(n.dp.run(TO_POD, b.host.ifindex, &dnat).unwrap().action, TC_ACT_UNSPEC);
    // Another Service's backend b:9090: denied there, on a transmit hook.
    let other = Ipv4::tcp_syn(A, B, 40001, 9090).frame(n.from_stack(b));
    assert_eq!(n.dp.run(TO_POD, b.host.ifindex, &other).unwrap().action, TC_ACT_SHOT);
    // A remote backend, routed natively or through the VXLAN device.
    let remote = Ipv4::tcp_syn(A, REMOTE, 40002, 8080).frame(n.from_stack(b));
    assert_eq!(n.dp.run(TO_UPLINK, n.dp.uplink.ifindex, &remote).unwrap().action, TC_ACT_SHOT);
    let tunneled_pod = VXLAN_PEER_CIDR.replace(".0/24", ".9");
    n.dp.identity(ip(&tunneled_pod), REMOTE_ID + 1).unwrap();
    let tunneled = Ipv4::tcp_syn(A, &tunneled_pod, 40003, 8080).frame(n.from_stack(b));
    assert_eq!(n.dp.run(TO_TUNNEL, n.dp.vxlan.ifindex, &tunneled).unwrap().action, TC_ACT_SHOT);
    assert_eq!(n.drops().unwrap(), [(DropReason::PolicyDeniedEgress, HookDirection::Egress, 3)]);
    // The reply, un-DNATed by conntrack: from the ClusterIP to a, which
    // is isolated for ingress: the deferred entry makes it a reply.
    let reply = Ipv4::tcp_ack(CLUSTER_IP, A, 80, 40000).frame(n.from_stack(a));
    assert_eq!(n.dp.run(TO_POD, a.host.ifindex, &reply).unwrap().action, TC_ACT_UNSPEC);
    // Unsolicited, from the ClusterIP: a's ingress says no.
    let unsolicited = Ipv4::tcp_syn(CLUSTER_IP, A, 81, 40009).frame(n.from_stack(a));
    assert_eq!(n.dp.run(TO_POD, a.host.ifindex, &unsolicited).unwrap().action, TC_ACT_SHOT);
}
