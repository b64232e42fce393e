//! NetworkPolicy verdicts for `monitor --type policy`: a monitor slot that
//! set its policy bit gets a `PolicyEvent` per judged direction of a new
//! connection, in its own ring buffer; a slot that did not gets none.
use aya::maps::{Array, Map, MapData, RingBuf};
use sluice_common::{
    events::{drop_bit, policy_bit, EVENT_POLICY},
    maps::{names, programs::FROM_POD},
    policy::{Direction, PolicyEvent, PolicyVerdict, ENDPOINT_INGRESS_ISOLATED, POLICY_REF_NONE},
};
use sluice_tests::prog_test::{
    be, ip,
    policy::{PolicyNode, Ports, A, A_ID, B, B_RULES, TCP},
    Ipv4, TC_ACT_REDIRECT, TC_ACT_SHOT,
};

fn ring(n: &PolicyNode, slot: usize) -> RingBuf<MapData> {
    let data = MapData::from_pin(n.dp.pins().map(names::EVENTS[slot])).unwrap();
    RingBuf::try_from(Map::from_map_data(data).unwrap()).unwrap()
}

fn policy_events(ring: &mut RingBuf<MapData>) -> Vec<PolicyEvent> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        assert_eq!(item.len(), std::mem::size_of::<PolicyEvent>(), "a policy record");
        assert_eq!(item[8], EVENT_POLICY, "kind at DatapathEvent's offset");
        // SAFETY: the length was checked; PolicyEvent is plain data.
        out.push(unsafe { std::ptr::read_unaligned(item.as_ptr() as *const PolicyEvent) });
    }
    out
}

#[test]
fn each_judged_connection_is_reported_to_the_slots_that_asked() {
    let n = PolicyNode::new().unwrap();
    n.dp.isolate(ip(B), B_RULES, ENDPOINT_INGRESS_ISOLATED).unwrap();
    n.dp.allow(B_RULES, A_ID, Direction::Ingress, Ports::One(TCP, 80), 7).unwrap();
    // Slot 1 wants policy verdicts, slot 2 only drops.
    let mut monitors: Array<MapData, u32> =
        Map::from_map_data(MapData::from_pin(n.dp.pins().map(names::MONITORS)).unwrap()).unwrap().try_into().unwrap();
    monitors.set(0, policy_bit(1) | drop_bit(2), 0).unwrap();
    let a = &n.a;
    let run = |sent: Ipv4| n.dp.run(FROM_POD, a.host.ifindex, &sent.frame(a.sends())).unwrap().action;
    assert_eq!(run(Ipv4::tcp_syn(A, B, 40000, 80)), TC_ACT_REDIRECT);
    assert_eq!(run(Ipv4::tcp_ack(A, B, 40000, 80)), TC_ACT_REDIRECT, "known: no new verdict");
    assert_eq!(run(Ipv4::tcp_syn(A, B, 40001, 81)), TC_ACT_SHOT);
    let events = policy_events(&mut ring(&n, 1));
    let seen: Vec<_> = events
        .iter()
        .map(|e| (e.direction, e.verdict, e.policy_ref, u16::from_be(e.sport_be), u16::from_be(e.dport_be)))
        .collect();
    assert_eq!(
        seen,
        [
            (Direction::Ingress as u8, PolicyVerdict::AllowedByPeerRule as u8, 7, 40000, 80),
            (Direction::Ingress as u8, PolicyVerdict::DeniedIngress as u8, POLICY_REF_NONE, 40001, 81)
        ]
    );
    for e in &events {
        assert_eq!((e.saddr_be, e.daddr_be, e.protocol, e.ifindex), (be(ip(A)), be(ip(B)), TCP, a.host.ifindex));
        assert!(e.ts_ns > 0);
    }
    // Slot 2 asked for drops: one drop event (a DatapathEvent), no verdict.
    let mut drops = ring(&n, 2);
    let mut kinds = Vec::new();
    while let Some(item) = drops.next() {
        kinds.push(item[8]);
    }
    assert_eq!(kinds, [sluice_common::events::EVENT_DROP]);
    assert!(ring(&n, 0).next().is_none(), "slot 0 asked for nothing");
}
