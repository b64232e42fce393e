//! `sessionAffinity: ClientIP` for clients from outside, at the uplink
//! (`lb4_affinity`, `LB4_AFFINITY`): every new connection of one client
//! to a frontend goes to one backend while the choice is fresh and the
//! backend still the frontend's; without affinity they spread.
use std::collections::BTreeSet;

use sluice_common::{
    lb4_affinity::Lb4AffinityKey,
    maps::programs::FROM_UPLINK,
    nat::{Lb4Config, Nat4Counter, LB4_ENABLED},
    services::{AffinityValue, Backend, BackendSlot, ServiceKey, ServiceValue, NODE_ADDRESS_LOCAL},
};
use sluice_node::datapath::{
    nat4_maps::{nat4_counters, set_lb4_config, Lb4AffinityTable},
    service_maps::{NodeAddressMap, ServiceMaps},
};
use sluice_tests::prog_test::{be, ip, Ipv4, TestDatapath, L2, NODE_IP, TC_ACT_REDIRECT};

const WORLD: &str = "192.0.2.1";
const OTHER_CLIENT: &str = "192.0.2.2";
const NODE_PORT: u16 = 30080;
const TCP: u8 = 6;
/// Backends on the native peer (10.244.2.0/24 is its pod CIDR).
const BACKENDS: [&str; 4] = ["10.244.2.10", "10.244.2.11", "10.244.2.12", "10.244.2.13"];

fn backend(ip_s: &str) -> Backend {
    Backend { ip_be: be(ip(ip_s)), port_be: 7777u16.to_be(), _pad: 0 }
}

/// A node with TCP NodePort `NODE_PORT` backed by `BACKENDS` (set 1),
/// affinity `timeout_secs` (0: none).
fn node(timeout_secs: u32) -> TestDatapath {
    let dp = TestDatapath::node().unwrap();
    set_lb4_config(dp.pins(), Lb4Config { flags: LB4_ENABLED, snat_port_min: 61000, snat_port_max: 65535 }).unwrap();
    NodeAddressMap::open(dp.pins()).unwrap().put(be(ip(NODE_IP)), NODE_ADDRESS_LOCAL).unwrap();
    let mut maps = ServiceMaps::open(dp.pins()).unwrap();
    for (slot, b) in BACKENDS.iter().enumerate() {
        maps.put_backend(BackendSlot { set: 1, slot: slot as u32 }, backend(b)).unwrap();
    }
    let value =
        ServiceValue { backend_set: 1, count: BACKENDS.len() as u32, affinity_timeout_secs: timeout_secs, flags: 0 };
    maps.put_service(ServiceKey::node_port(NODE_PORT.to_be(), TCP), value).unwrap();
    dp
}

/// The backend a new connection (a SYN from `client:src_port`) was sent
/// to: the DNATed destination.
fn connect(dp: &TestDatapath, client: &str, src_port: u16) -> String {
    let l2 = L2::new([0x02, 0, 0, 0, 0, 0xfe], dp.uplink.mac);
    let run = dp.run(FROM_UPLINK, dp.uplink.ifindex, &Ipv4::tcp_syn(client, NODE_IP, src_port, NODE_PORT).frame(l2));
    let run = run.unwrap();
    assert_eq!(run.action, TC_ACT_REDIRECT, "{client}:{src_port}: drops {:?}", dp.drops().unwrap());
    let d = &run.packet[14 + 16..14 + 20];
    format!("{}.{}.{}.{}", d[0], d[1], d[2], d[3])
}

fn counter(dp: &TestDatapath, c: Nat4Counter) -> u64 {
    nat4_counters(dp.pins()).unwrap().into_iter().find(|(k, _)| *k == c).unwrap().1
}

/// `bpf_ktime_get_coarse_ns`'s clock, as the programs read it.
fn coarse_now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec to fill.
    assert_eq!(unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) }, 0);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn affinity_key(client: &str) -> Lb4AffinityKey {
    Lb4AffinityKey { client_be: be(ip(client)), frontend: ServiceKey::node_port(NODE_PORT.to_be(), TCP) }
}

#[test]
fn one_client_gets_one_backend_for_every_new_connection_and_without_affinity_they_spread() {
    let dp = node(10800);
    let seen: BTreeSet<String> = (0..24).map(|i| connect(&dp, WORLD, 40000 + i)).collect();
    assert_eq!(seen.len(), 1, "24 connections of one client with ClientIP affinity: {seen:?}");
    assert_eq!((counter(&dp, Nat4Counter::AffinityPicked), counter(&dp, Nat4Counter::AffinityReused)), (1, 23));
    let remembered = Lb4AffinityTable::open(dp.pins()).unwrap().all().unwrap();
    assert_eq!(remembered.len(), 1, "{remembered:?}");
    assert_eq!(remembered[0].0, affinity_key(WORLD), "keyed by the client and the NodePort entry");
    assert_eq!(remembered[0].1.backend, backend(seen.first().unwrap()));
    // Another client has a choice of its own.
    connect(&dp, OTHER_CLIENT, 40000);
    assert_eq!(Lb4AffinityTable::open(dp.pins()).unwrap().all().unwrap().len(), 2);

    // Without affinity: 24 connections over 4 backends spread (all on one
    // by chance: 4 × (1/4)^24).
    let dp = node(0);
    let seen: BTreeSet<String> = (0..24).map(|i| connect(&dp, WORLD, 40000 + i)).collect();
    assert!(seen.len() >= 2, "without affinity: {seen:?}");
    assert_eq!(counter(&dp, Nat4Counter::AffinityPicked) + counter(&dp, Nat4Counter::AffinityReused), 0);
    assert!(Lb4AffinityTable::open(dp.pins()).unwrap().all().unwrap().is_empty());
}

#[test]
fn a_fresh_choice_is_kept_an_expired_one_or_a_backend_that_left_is_picked_again() {
    let dp = node(60);
    let mut table = Lb4AffinityTable::open(dp.pins()).unwrap();
    // Fresh, a member: kept, and restamped.
    let planted = coarse_now_ns().saturating_sub(30_000_000_000);
    table.insert(affinity_key(WORLD), AffinityValue { backend: backend(BACKENDS[2]), last_used_ns: planted }).unwrap();
    for i in 0..8 {
        assert_eq!(connect(&dp, WORLD, 40000 + i), BACKENDS[2]);
    }
    assert_eq!(counter(&dp, Nat4Counter::AffinityReused), 8);
    let now = table.all().unwrap()[0].1;
    assert!(now.last_used_ns > planted, "restamped by each new connection: {now:?}");

    // Expired (used 61 s ago with a 60 s timeout): picked afresh and the
    // new choice remembered with the time of this connection.
    for (i, b) in BACKENDS.iter().enumerate() {
        let old = coarse_now_ns().saturating_sub(61_000_000_000);
        table.insert(affinity_key(WORLD), AffinityValue { backend: backend(b), last_used_ns: old }).unwrap();
        let got = connect(&dp, WORLD, 41000 + i as u16);
        assert_eq!(counter(&dp, Nat4Counter::AffinityPicked), 1 + i as u64, "expired: picked again");
        let entry = table.all().unwrap()[0].1;
        assert_eq!(entry.backend, backend(&got), "the new choice remembered");
        assert!(entry.last_used_ns > old + 60_000_000_000, "{entry:?}");
    }

    // A backend that left the Service (not in the frontend's set any
    // more), though fresh: never used again.
    for i in 0..8 {
        let gone = AffinityValue { backend: backend("10.244.2.99"), last_used_ns: coarse_now_ns() };
        table.insert(affinity_key(WORLD), gone).unwrap();
        let got = connect(&dp, WORLD, 42000 + i);
        assert!(BACKENDS.contains(&got.as_str()), "a member of the set, not the departed backend: {got}");
        assert_eq!(table.all().unwrap()[0].1.backend, backend(&got));
    }
    assert_eq!(counter(&dp, Nat4Counter::AffinityPicked), 4 + 8);
    assert_eq!(dp.drops().unwrap(), []);
}
