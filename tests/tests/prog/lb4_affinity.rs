//! `sessionAffinity: ClientIP` for clients from outside, at the uplink
//! (`lb4_affinity`, `LB4_SVC_AFFINITY`): every new connection of one
//! client to a Service port, through any of its frontends, goes to one
//! backend while the choice is fresh and the backend still the frontend's;
//! without affinity they spread.
use std::collections::BTreeSet;

use sluice_common::{
    lb4_affinity::{affinity_scope, Lb4AffinityKey},
    maps::programs::FROM_UPLINK,
    nat::{Lb4Config, Nat4Counter, LB4_ENABLED},
    services::{
        service_port_id, AffinityValue, Backend, BackendSlot, ServiceKey, ServiceValue, NODE_ADDRESS_LOCAL,
        SCOPE_ADDRESS, SERVICE_LOAD_BALANCER,
    },
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

/// The Service port behind `NODE_PORT` (and `LB_IP`), as the agent names
/// it: default/web, port "http", TCP.
fn web_http() -> u64 {
    service_port_id(b"default", b"web", b"http", TCP)
}

/// Its LoadBalancer ingress IP (port 80).
const LB_IP: &str = "198.51.100.10";

/// `BACKENDS` written as backend set `set`, as the agent writes one for
/// each frontend.
fn put_set(maps: &mut ServiceMaps, set: u32) {
    for (slot, b) in BACKENDS.iter().enumerate() {
        maps.put_backend(BackendSlot { set, slot: slot as u32 }, backend(b)).unwrap();
    }
}

/// A frontend's value: all of `set`, affinity `timeout_secs`, Service
/// port `id`.
fn service(set: u32, timeout_secs: u32, flags: u32, id: u64) -> ServiceValue {
    ServiceValue {
        backend_set: set,
        count: BACKENDS.len() as u32,
        affinity_timeout_secs: timeout_secs,
        flags,
        service_port_id: id,
    }
}

/// A node with TCP NodePort `NODE_PORT` of default/web:http backed by
/// `BACKENDS` (set 1), affinity `timeout_secs` (0: none).
fn node(timeout_secs: u32) -> TestDatapath {
    let dp = TestDatapath::node().unwrap();
    set_lb4_config(dp.pins(), Lb4Config { flags: LB4_ENABLED, snat_port_min: 61000, snat_port_max: 65535 }).unwrap();
    NodeAddressMap::open(dp.pins()).unwrap().put(be(ip(NODE_IP)), NODE_ADDRESS_LOCAL).unwrap();
    let mut maps = ServiceMaps::open(dp.pins()).unwrap();
    put_set(&mut maps, 1);
    maps.put_service(ServiceKey::node_port(NODE_PORT.to_be(), TCP), service(1, timeout_secs, 0, web_http())).unwrap();
    dp
}

/// The backend a new connection (a SYN from `client:src_port`) to the
/// NodePort on the node's address was sent to: the DNATed destination.
fn connect(dp: &TestDatapath, client: &str, src_port: u16) -> String {
    connect_to(dp, client, src_port, NODE_IP, NODE_PORT)
}

/// The same to `dst:dst_port`.
fn connect_to(dp: &TestDatapath, client: &str, src_port: u16, dst: &str, dst_port: u16) -> String {
    let l2 = L2::new([0x02, 0, 0, 0, 0, 0xfe], dp.uplink.mac);
    let run = dp.run(FROM_UPLINK, dp.uplink.ifindex, &Ipv4::tcp_syn(client, dst, src_port, dst_port).frame(l2));
    let run = run.unwrap();
    assert_eq!(run.action, TC_ACT_REDIRECT, "{client}:{src_port} → {dst}:{dst_port}: drops {:?}", dp.drops().unwrap());
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
    Lb4AffinityKey { client_be: be(ip(client)), _pad: 0, service_port: web_http() }
}

#[test]
fn one_client_gets_one_backend_for_every_new_connection_and_without_affinity_they_spread() {
    let dp = node(10800);
    let seen: BTreeSet<String> = (0..24).map(|i| connect(&dp, WORLD, 40000 + i)).collect();
    assert_eq!(seen.len(), 1, "24 connections of one client with ClientIP affinity: {seen:?}");
    assert_eq!((counter(&dp, Nat4Counter::AffinityPicked), counter(&dp, Nat4Counter::AffinityReused)), (1, 23));
    let remembered = Lb4AffinityTable::open(dp.pins()).unwrap().all().unwrap();
    assert_eq!(remembered.len(), 1, "{remembered:?}");
    assert_eq!(remembered[0].0, affinity_key(WORLD), "keyed by the client and the Service port");
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

/// kube-proxy keeps a client's backend per Service port: the NodePort on
/// the node's address and the LoadBalancer IP of one Service port (each
/// frontend with a backend set of its own, as the agent writes them) give
/// one client one backend, remembered once; an endpoint change (the
/// NodePort moved to a new set holding the backend) keeps it; another
/// Service with the very same backends keeps a choice of its own.
#[test]
fn every_frontend_of_a_service_port_gives_a_client_one_backend_and_another_service_its_own() {
    let dp = node(10800);
    let mut maps = ServiceMaps::open(dp.pins()).unwrap();
    put_set(&mut maps, 2);
    let lb = ServiceKey { vip_be: be(ip(LB_IP)), port_be: 80u16.to_be(), protocol: TCP, scope: SCOPE_ADDRESS };
    maps.put_service(lb, service(2, 10800, SERVICE_LOAD_BALANCER, web_http())).unwrap();
    let seen: Vec<String> = (0..24)
        .map(|i| if i % 2 == 0 { connect(&dp, WORLD, 40000 + i) } else { connect_to(&dp, WORLD, 40000 + i, LB_IP, 80) })
        .collect();
    let backends: BTreeSet<&String> = seen.iter().collect();
    let counts = (counter(&dp, Nat4Counter::AffinityPicked), counter(&dp, Nat4Counter::AffinityReused));
    let table = Lb4AffinityTable::open(dp.pins()).unwrap();
    assert_eq!(
        (backends.len(), counts),
        (1, (1, 23)),
        "NodePort and LoadBalancer IP of one Service port, alternately: backends {seen:?}, (picked, reused) {counts:?}, \
         remembered {:?}",
        table.all().unwrap()
    );
    assert_eq!(table.all().unwrap().len(), 1);
    let chosen = seen[0].clone();

    // The endpoints change: the NodePort moves to a new set (one backend
    // more); the client keeps its backend, still a member.
    put_set(&mut maps, 3);
    maps.put_backend(BackendSlot { set: 3, slot: BACKENDS.len() as u32 }, backend("10.244.2.14")).unwrap();
    let moved = ServiceValue { count: BACKENDS.len() as u32 + 1, ..service(3, 10800, 0, web_http()) };
    maps.put_service(ServiceKey::node_port(NODE_PORT.to_be(), TCP), moved).unwrap();
    for i in 0..4 {
        assert_eq!(connect(&dp, WORLD, 41000 + i), chosen, "across an endpoint change");
    }

    // Another Service (another id), the same four backends: its own choice,
    // picked, not the web Service's reused.
    let other = service_port_id(b"default", b"api", b"http", TCP);
    put_set(&mut maps, 4);
    maps.put_service(ServiceKey::node_port(30081u16.to_be(), TCP), service(4, 10800, 0, other)).unwrap();
    let picked = counter(&dp, Nat4Counter::AffinityPicked);
    connect_to(&dp, WORLD, 42000, NODE_IP, 30081);
    assert_eq!(counter(&dp, Nat4Counter::AffinityPicked), picked + 1, "another Service: picked afresh");
    let mut keys: Vec<u64> = table.all().unwrap().iter().map(|(k, _)| k.service_port).collect();
    keys.sort();
    let mut want = vec![web_http(), other];
    want.sort();
    assert_eq!(keys, want, "one choice per Service port");
    assert_eq!(dp.drops().unwrap(), []);
}

/// A frontend an earlier version wrote (no Service port id, 0, until the
/// agent rewrites it) keeps affinity per frontend, as that version did:
/// under its frontend key, never under another Service port's id.
#[test]
fn a_frontend_without_a_service_port_id_keeps_affinity_per_frontend() {
    let dp = node(10800);
    let mut maps = ServiceMaps::open(dp.pins()).unwrap();
    let np = ServiceKey::node_port(NODE_PORT.to_be(), TCP);
    let old = service(1, 10800, 0, 0);
    maps.put_service(np, old).unwrap();
    let seen: BTreeSet<String> = (0..8).map(|i| connect(&dp, WORLD, 40000 + i)).collect();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let remembered = Lb4AffinityTable::open(dp.pins()).unwrap().all().unwrap();
    let keys: Vec<Lb4AffinityKey> = remembered.iter().map(|(k, _)| *k).collect();
    let want = Lb4AffinityKey { client_be: be(ip(WORLD)), _pad: 0, service_port: affinity_scope(&np, &old) };
    assert_eq!(keys, vec![want]);
}
