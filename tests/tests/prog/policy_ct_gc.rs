//! The agent's collection of idle `POLICY_CT` entries: what the programs
//! stamp (`bpf_ktime_get_coarse_ns`) and what the agent reads (its
//! CLOCK_MONOTONIC) are one clock; an idle entry goes after its protocol's
//! timeout, an established TCP one lasts hours, a live one stays.
use std::time::Duration;

use sluice_common::{
    maps::programs::FROM_POD,
    policy::{CtEntry, Direction, CT_REPLY_SEEN, ENDPOINT_INGRESS_ISOLATED},
};
use sluice_node::datapath::{
    policy_ct_gc::{collect, monotonic_now_ns, CtTimeouts, GcPass},
    policy_maps::PolicyCt,
};
use sluice_tests::prog_test::{
    ip,
    policy::{ct_key, PolicyNode, Ports, A, A_ID, B, B_RULES, TCP, UDP},
    Ipv4, TC_ACT_REDIRECT,
};

#[test]
fn idle_entries_go_after_their_timeout_and_live_ones_stay() {
    let n = PolicyNode::new().unwrap();
    n.dp.isolate(ip(B), B_RULES, ENDPOINT_INGRESS_ISOLATED).unwrap();
    n.dp.allow(B_RULES, A_ID, Direction::Ingress, Ports::Any, 1).unwrap();
    let syn = Ipv4::tcp_syn(A, B, 40000, 80).frame(n.a.sends());
    assert_eq!(n.dp.run(FROM_POD, n.a.host.ifindex, &syn).unwrap().action, TC_ACT_REDIRECT);
    let now = monotonic_now_ns().unwrap();
    let mut ct = PolicyCt::open(n.dp.pins()).unwrap();
    let live = ct.get(&ct_key(A, B, 40000, 80, TCP)).unwrap().expect("the program's entry");
    assert!(now.abs_diff(live.last_seen_ns) < 5_000_000_000, "one clock: {now} vs {}", live.last_seen_ns);
    // A pass now leaves the live connection.
    assert_eq!(collect(&mut ct, now, &CtTimeouts::default()).unwrap(), GcPass { scanned: 1, removed: 0 });
    ct.remove(&ct_key(A, B, 40000, 80, TCP)).unwrap();
    // Crafted stamps on a clock of their own (a guest booted seconds ago
    // has no "two hours ago" on CLOCK_MONOTONIC): a UDP flow idle 2
    // minutes, a TCP attempt never answered idle 2 minutes, an established
    // TCP connection idle 2 hours, one just used.
    let at = 10 * 3600 * 1_000_000_000u64;
    let minutes = |m: u64| at - m * 60_000_000_000;
    let stale = |last_seen_ns, flags| CtEntry { epoch: 0, flags, last_seen_ns, egress_ref: 1, ingress_ref: 1 };
    ct.insert(ct_key(A, B, 40001, 53, UDP), stale(minutes(2), CT_REPLY_SEEN)).unwrap();
    ct.insert(ct_key(A, B, 40002, 80, TCP), stale(minutes(2), 0)).unwrap();
    ct.insert(ct_key(A, B, 40003, 80, TCP), stale(minutes(120), CT_REPLY_SEEN)).unwrap();
    ct.insert(ct_key(A, B, 40004, 80, TCP), stale(at, 0)).unwrap();
    let pass = collect(&mut ct, at, &CtTimeouts::default()).unwrap();
    assert_eq!(pass, GcPass { scanned: 4, removed: 2 });
    let mut left: Vec<_> = ct.all().unwrap().into_iter().map(|(k, _)| u16::from_be(k.src_port_be)).collect();
    left.sort();
    assert_eq!(left, [40003, 40004]);
    // Past the established timeout too.
    let short = CtTimeouts { tcp_established: Duration::from_secs(3600), other: Duration::from_secs(60) };
    assert_eq!(collect(&mut ct, at, &short).unwrap().removed, 1);
    assert_eq!(ct.all().unwrap().len(), 1, "the one just used stays");
}
