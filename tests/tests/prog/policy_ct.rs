//! NetworkPolicy's connection table: a connection is judged once, on a
//! packet with no `POLICY_CT` entry; it is stored under its canonical tuple
//! (lower address first, the client's end in its flags), so its replies
//! find it with one lookup (an isolated pod gets the answers to what it
//! opened, and still refuses the same peer opening a connection towards
//! it); an entry from before the canonical layout still serves its
//! connection; a policy change (the agent's epoch bump) reaches an open
//! connection on its next packet.
use sluice_common::{
    maps::programs::{FROM_POD, FROM_UPLINK},
    policy::{
        CtEntry, Direction, PolicyVerdict, CT_CLIENT_IS_DST, CT_EGRESS_JUDGED, CT_INGRESS_JUDGED, CT_REPLY_SEEN,
        ENDPOINT_INGRESS_ISOLATED,
    },
    DropReason, HookDirection,
};
use sluice_node::datapath::policy_maps::PolicyCt;
use sluice_tests::prog_test::{
    ip,
    policy::{ct_key, PolicyNode, Ports, A, A_ID, A_RULES, B, B_ID, B_RULES, REMOTE, TCP},
    Ipv4, TC_ACT_REDIRECT, TC_ACT_SHOT,
};

#[test]
fn the_reply_of_an_allowed_connection_passes_and_the_reverse_new_connection_is_denied() {
    let n = PolicyNode::new().unwrap();
    let (a, b) = (&n.a, &n.b);
    // Both isolated for ingress; b lets a in on 80, a lets no one in.
    n.dp.isolate(ip(A), A_RULES, ENDPOINT_INGRESS_ISOLATED).unwrap();
    n.dp.isolate(ip(B), B_RULES, ENDPOINT_INGRESS_ISOLATED).unwrap();
    n.dp.allow(B_RULES, A_ID, Direction::Ingress, Ports::One(TCP, 80), 7).unwrap();
    let run = |p: &sluice_tests::prog_test::Pod, sent: Ipv4| {
        n.dp.run(FROM_POD, p.host.ifindex, &sent.frame(p.sends())).unwrap().action
    };
    assert_eq!(run(a, Ipv4::tcp_syn(A, B, 40000, 80)), TC_ACT_REDIRECT);
    assert_eq!(run(b, Ipv4::tcp_ack(B, A, 80, 40000)), TC_ACT_REDIRECT, "b's SYN-ACK: a reply");
    assert_eq!(run(a, Ipv4::tcp_ack(A, B, 40000, 80)), TC_ACT_REDIRECT, "a's ACK: known");
    assert_eq!(run(b, Ipv4::tcp_syn(B, A, 50000, 80)), TC_ACT_SHOT, "b opening towards a: new, denied");
    let conns = n.dp.connections().unwrap();
    assert_eq!(conns.len(), 1, "{conns:?}");
    assert_eq!(conns[0].0, ct_key(A, B, 40000, 80, TCP), "one entry, for the original direction");
    assert_ne!(conns[0].1.flags & CT_REPLY_SEEN, 0);
    // Judged twice: the SYN (b's ingress; a is not egress-isolated, but
    // its entry is looked at) and b's SYN towards a.
    assert_eq!(
        n.dp.verdicts().unwrap(),
        [
            (Direction::Egress, PolicyVerdict::AllowedNotIsolated, 2),
            (Direction::Ingress, PolicyVerdict::AllowedByPeerRule, 1),
            (Direction::Ingress, PolicyVerdict::DeniedIngress, 1)
        ]
    );
    assert_eq!(n.drops().unwrap(), [(DropReason::PolicyDeniedIngress, HookDirection::Ingress, 1)]);
}

#[test]
fn an_isolated_pods_ping_gets_its_echo_reply_from_another_node_and_nothing_else() {
    let n = PolicyNode::new().unwrap();
    let a = &n.a;
    n.dp.isolate(ip(A), A_RULES, ENDPOINT_INGRESS_ISOLATED).unwrap();
    let ping = Ipv4::icmp(A, REMOTE).frame(a.sends());
    assert_eq!(n.dp.run(FROM_POD, a.host.ifindex, &ping).unwrap().action, TC_ACT_REDIRECT);
    let uplink = n.dp.uplink.ifindex;
    let reply = Ipv4::icmp_reply(REMOTE, A).frame(n.from_peer());
    assert_eq!(n.dp.run(FROM_UPLINK, uplink, &reply).unwrap().action, TC_ACT_REDIRECT, "the echo reply (same id)");
    let request = Ipv4::icmp(REMOTE, A).frame(n.from_peer());
    assert_eq!(n.dp.run(FROM_UPLINK, uplink, &request).unwrap().action, TC_ACT_SHOT, "an echo request towards a");
}

#[test]
fn an_epoch_bump_cuts_an_open_connection_and_lets_a_newly_allowed_syn_through() {
    let n = PolicyNode::new().unwrap();
    let a = &n.a;
    n.dp.isolate(ip(B), B_RULES, ENDPOINT_INGRESS_ISOLATED).unwrap();
    n.dp.allow(B_RULES, A_ID, Direction::Ingress, Ports::One(TCP, 80), 7).unwrap();
    let a_to_b = |sent: Ipv4| n.dp.run(FROM_POD, a.host.ifindex, &sent.frame(a.sends())).unwrap().action;
    assert_eq!(a_to_b(Ipv4::tcp_syn(A, B, 40000, 80)), TC_ACT_REDIRECT);
    assert_eq!(a_to_b(Ipv4::tcp_ack(A, B, 40000, 80)), TC_ACT_REDIRECT);
    // allow -> deny: the rule goes; until the agent says the change is
    // complete (the epoch), the open connection carries on.
    n.dp.revoke(B_RULES, A_ID, Direction::Ingress, Ports::One(TCP, 80)).unwrap();
    assert_eq!(a_to_b(Ipv4::tcp_ack(A, B, 40000, 80)), TC_ACT_REDIRECT, "no epoch bump yet");
    n.dp.bump_epoch().unwrap();
    assert_eq!(a_to_b(Ipv4::tcp_ack(A, B, 40000, 80)), TC_ACT_SHOT, "cut on its next packet");
    assert_eq!(n.dp.connections().unwrap(), [], "and forgotten");
    // deny -> allow: nothing was remembered of the denial, so the next SYN
    // is judged afresh.
    assert_eq!(a_to_b(Ipv4::tcp_syn(A, B, 40001, 80)), TC_ACT_SHOT);
    n.dp.allow(B_RULES, A_ID, Direction::Ingress, Ports::One(TCP, 80), 8).unwrap();
    n.dp.bump_epoch().unwrap();
    assert_eq!(a_to_b(Ipv4::tcp_syn(A, B, 40001, 80)), TC_ACT_REDIRECT);
    // An entry still allowed at a new epoch takes it and carries on.
    n.dp.bump_epoch().unwrap();
    assert_eq!(a_to_b(Ipv4::tcp_ack(A, B, 40001, 80)), TC_ACT_REDIRECT);
    let conns = n.dp.connections().unwrap();
    assert_eq!(conns.len(), 1);
    assert_eq!((conns[0].1.epoch, conns[0].1.ingress_ref), (3, 8));
    assert_eq!(n.drops().unwrap(), [(DropReason::PolicyDeniedIngress, HookDirection::Ingress, 2)]);
}

#[test]
fn a_connection_from_the_higher_address_is_stored_canonically_and_its_replies_find_it() {
    let n = PolicyNode::new().unwrap();
    let (a, b) = (&n.a, &n.b);
    // b (the higher address) opens towards a; a is isolated for ingress
    // and lets b in on 80; b is isolated for ingress and lets no one in,
    // so a's replies pass only as replies.
    n.dp.isolate(ip(A), A_RULES, ENDPOINT_INGRESS_ISOLATED).unwrap();
    n.dp.isolate(ip(B), B_RULES, ENDPOINT_INGRESS_ISOLATED).unwrap();
    n.dp.allow(A_RULES, B_ID, Direction::Ingress, Ports::One(TCP, 80), 7).unwrap();
    let run = |p: &sluice_tests::prog_test::Pod, sent: Ipv4| {
        n.dp.run(FROM_POD, p.host.ifindex, &sent.frame(p.sends())).unwrap().action
    };
    assert_eq!(run(b, Ipv4::tcp_syn(B, A, 40000, 80)), TC_ACT_REDIRECT);
    let stored = n.dp.stored_connections().unwrap();
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0].0, ct_key(A, B, 80, 40000, TCP), "stored lower address first");
    assert_eq!(
        stored[0].1.flags,
        CT_EGRESS_JUDGED | CT_INGRESS_JUDGED | CT_CLIENT_IS_DST,
        "the client is the key's dst end"
    );
    assert_eq!(run(a, Ipv4::tcp_ack(A, B, 80, 40000)), TC_ACT_REDIRECT, "a's SYN-ACK: a reply");
    assert_eq!(run(b, Ipv4::tcp_ack(B, A, 40000, 80)), TC_ACT_REDIRECT, "b's ACK");
    assert_ne!(n.dp.stored_connections().unwrap()[0].1.flags & CT_REPLY_SEEN, 0, "the reply was seen as one");
    // Judged again at a new epoch from either direction's packet, with the
    // ends in their roles: a's reply re-judges a's ingress from b.
    n.dp.bump_epoch().unwrap();
    assert_eq!(run(a, Ipv4::tcp_ack(A, B, 80, 40000)), TC_ACT_REDIRECT, "re-judged: b → a:80 still allowed");
    let conns = n.dp.connections().unwrap();
    assert_eq!(conns.len(), 1);
    assert_eq!(conns[0].0, ct_key(B, A, 40000, 80, TCP), "the client kept through the re-judgement");
    assert_eq!((conns[0].1.epoch, conns[0].1.ingress_ref), (1, 7));
    n.dp.revoke(A_RULES, B_ID, Direction::Ingress, Ports::One(TCP, 80)).unwrap();
    n.dp.bump_epoch().unwrap();
    assert_eq!(run(a, Ipv4::tcp_ack(A, B, 80, 40000)), TC_ACT_SHOT, "cut on its next packet, a reply too");
    assert_eq!(n.dp.connections().unwrap(), [], "and forgotten");
    assert_eq!(n.drops().unwrap(), [(DropReason::PolicyDeniedIngress, HookDirection::Ingress, 1)]);
}

#[test]
fn a_connection_stored_before_the_canonical_layout_keeps_passing_both_ways() {
    let n = PolicyNode::new().unwrap();
    let (a, b) = (&n.a, &n.b);
    // Both isolated for ingress, no rule: every new connection between
    // them is denied, so only the table lets these packets through.
    n.dp.isolate(ip(A), A_RULES, ENDPOINT_INGRESS_ISOLATED).unwrap();
    n.dp.isolate(ip(B), B_RULES, ENDPOINT_INGRESS_ISOLATED).unwrap();
    // What the previous layout wrote for b → a:80 (original direction, the
    // higher address first, no CT_CLIENT_IS_DST), at the current epoch.
    let old = CtEntry { epoch: 0, flags: CT_INGRESS_JUDGED, last_seen_ns: 1, egress_ref: u32::MAX, ingress_ref: 7 };
    PolicyCt::open(n.dp.pins()).unwrap().insert(ct_key(B, A, 40000, 80, TCP), old).unwrap();
    let run = |p: &sluice_tests::prog_test::Pod, sent: Ipv4| {
        n.dp.run(FROM_POD, p.host.ifindex, &sent.frame(p.sends())).unwrap().action
    };
    assert_eq!(run(b, Ipv4::tcp_ack(B, A, 40000, 80)), TC_ACT_REDIRECT, "b's packets: the original direction");
    assert_eq!(run(a, Ipv4::tcp_ack(A, B, 80, 40000)), TC_ACT_REDIRECT, "a's replies");
    let stored = n.dp.stored_connections().unwrap();
    assert_eq!(stored.len(), 1, "served as it is, no second entry: {stored:?}");
    assert_eq!(stored[0].0, ct_key(B, A, 40000, 80, TCP));
    assert_eq!(stored[0].1.flags, CT_INGRESS_JUDGED | CT_REPLY_SEEN, "a's packet counted as the reply");
    assert_eq!(n.drops().unwrap(), [], "nothing judged, nothing dropped");
    assert_eq!(n.dp.verdicts().unwrap(), []);
}
