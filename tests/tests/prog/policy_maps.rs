//! NetworkPolicy's maps as the agent's loader leaves them: every map of the
//! object pinned (`POLICY_PODS` too, which no program reads: a map the
//! linker dropped would be missing here), and the typed wrappers reading
//! back what they wrote, a full map named as such.
use std::net::{Ipv4Addr, Ipv6Addr};

use sluice_common::{
    maps::{
        limits::{MAX_ENDPOINTS, MAX_POLICY_IDENTITIES},
        names,
    },
    policy::{
        Direction, EndpointPolicy, PodPolicy, PolicyKey, PolicyValue, PolicyVerdict, ENDPOINT_INGRESS_ISOLATED,
        POLICY_PREFIX_ANY_PORT,
    },
};
use sluice_node::datapath::{
    loader::ALL_MAPS,
    map_fill,
    pinned_maps::MapFull,
    policy_maps::{
        PolicyEndpoints, PolicyEndpoints6, PolicyIdentities, PolicyIdentities6, PolicyPods, PolicyRules, PolicyState,
        PolicyStats,
    },
};
use sluice_tests::prog_test::TestDatapath;

#[test]
fn every_map_of_the_object_is_pinned_and_reports_its_fill() {
    let dp = TestDatapath::load().unwrap();
    for name in ALL_MAPS {
        assert!(dp.pins().map(name).exists(), "{name} is not pinned");
    }
    let fills = map_fill::read_all(dp.pins());
    for name in [
        names::POLICY_IDENTITIES,
        names::POLICY_ENDPOINTS,
        names::POLICY_RULES,
        names::POLICY_STATE,
        names::POLICY_CT,
        names::POLICY_PODS,
        names::POLICY_STATS,
        // The IPv6 twins' fill is exported as their IPv4 maps' is.
        names::POLICY_IDENTITIES6,
        names::POLICY_ENDPOINTS6,
        names::POLICY_CT6,
    ] {
        let fill = fills.iter().find(|f| f.name == name).unwrap_or_else(|| panic!("no fill for {name}: {fills:?}"));
        assert!(fill.max_entries > 0, "{fill:?}");
    }
    let ct = fills.iter().find(|f| f.name == names::POLICY_CT).unwrap();
    assert_eq!((ct.kind, ct.entries), (map_fill::FillKind::LruEntries, Some(0)));
}

#[test]
fn the_wrappers_read_back_what_they_wrote() {
    let dp = TestDatapath::load().unwrap();
    let pins = dp.pins();
    let mut ids = PolicyIdentities::open(pins).unwrap();
    ids.insert("10.244.0.0/16".parse().unwrap(), 4).unwrap();
    ids.insert("10.244.1.2/32".parse().unwrap(), 300).unwrap();
    assert_eq!(ids.all().unwrap().len(), 2);
    assert_eq!(ids.lookup(Ipv4Addr::new(10, 244, 1, 2)).unwrap(), Some(300));
    ids.remove("10.244.1.2/32".parse().unwrap()).unwrap();
    ids.remove("10.244.1.2/32".parse().unwrap()).unwrap();
    assert_eq!(ids.lookup(Ipv4Addr::new(10, 244, 1, 2)).unwrap(), Some(4), "the longest prefix left");
    assert_eq!(ids.lookup(Ipv4Addr::new(8, 8, 8, 8)).unwrap(), None);

    let mut rules = PolicyRules::open(pins).unwrap();
    let key = PolicyKey::probe(7, 300, Direction::Ingress, 6, 0);
    rules.insert(POLICY_PREFIX_ANY_PORT, key, PolicyValue { policy_ref: 9 }).unwrap();
    assert_eq!(rules.all().unwrap(), vec![((POLICY_PREFIX_ANY_PORT, key), PolicyValue { policy_ref: 9 })]);

    let mut state = PolicyState::open(pins).unwrap();
    assert_eq!(state.bump_epoch().unwrap(), 1);
    assert_eq!(state.bump_epoch().unwrap(), 2);
    state.set_service_cidr(Some("10.96.0.0/12".parse().unwrap())).unwrap();
    let s = state.get().unwrap();
    assert_eq!((s.epoch, s.service_prefix_len, s.service_cidr_be), (2, 12, u32::from_ne_bytes([10, 96, 0, 0])));

    let mut pods = PolicyPods::open(pins).unwrap();
    let policy = PodPolicy {
        endpoint: EndpointPolicy { rules_id: 7, flags: ENDPOINT_INGRESS_ISOLATED },
        identity: 300,
        identity6: 301,
    };
    pods.insert("x", "a", policy).unwrap();
    assert_eq!(pods.get("x", "a").unwrap(), Some(policy));
    assert_eq!(pods.get("x", "b").unwrap(), None);
    assert_eq!(pods.all().unwrap().keys().collect::<Vec<_>>(), ["x/a"]);
    assert!(pods.insert(&"n".repeat(100), &"p".repeat(253), policy).is_err(), "a name too long is refused");

    let stats = PolicyStats::open(pins).unwrap();
    assert_eq!(stats.get(Direction::Egress, PolicyVerdict::DeniedEgress).unwrap(), 0);
    assert_eq!(stats.all().unwrap().len(), 16);
}

#[test]
fn a_full_policy_endpoints_map_is_named() {
    let dp = TestDatapath::load().unwrap();
    let mut eps = PolicyEndpoints::open(dp.pins()).unwrap();
    for i in 0..MAX_ENDPOINTS {
        eps.insert(Ipv4Addr::from(0x0a00_0000 + i), EndpointPolicy::default()).unwrap();
    }
    let err = eps.insert(Ipv4Addr::new(11, 0, 0, 1), EndpointPolicy::default()).unwrap_err();
    let full = err.downcast_ref::<MapFull>().unwrap_or_else(|| panic!("not MapFull: {err:#}"));
    assert_eq!((full.map.as_str(), full.max), (names::POLICY_ENDPOINTS, MAX_ENDPOINTS));
}

#[test]
fn a_full_policy_endpoints6_map_is_named() {
    let dp = TestDatapath::load().unwrap();
    let mut eps = PolicyEndpoints6::open(dp.pins()).unwrap();
    let first = u128::from("fd00:244::".parse::<Ipv6Addr>().unwrap());
    for i in 0..MAX_ENDPOINTS {
        eps.insert(Ipv6Addr::from(first + u128::from(i)), EndpointPolicy::default()).unwrap();
    }
    let err = eps.insert("fd00:245::1".parse().unwrap(), EndpointPolicy::default()).unwrap_err();
    let full = err.downcast_ref::<MapFull>().unwrap_or_else(|| panic!("not MapFull: {err:#}"));
    assert_eq!((full.map.as_str(), full.max), (names::POLICY_ENDPOINTS6, MAX_ENDPOINTS));
}

#[test]
fn a_full_policy_identities6_map_is_named() {
    let dp = TestDatapath::load().unwrap();
    let mut ids = PolicyIdentities6::open(dp.pins()).unwrap();
    let first = u128::from("fd00:244::".parse::<Ipv6Addr>().unwrap());
    for i in 0..MAX_POLICY_IDENTITIES {
        let prefix = ipnetwork::Ipv6Network::new(Ipv6Addr::from(first + u128::from(i)), 128).unwrap();
        ids.insert(prefix, 300).unwrap();
    }
    let err = ids.insert("fd00:245::1/128".parse().unwrap(), 300).unwrap_err();
    let full = err.downcast_ref::<MapFull>().unwrap_or_else(|| panic!("not MapFull: {err:#}"));
    assert_eq!((full.map.as_str(), full.max), (names::POLICY_IDENTITIES6, MAX_POLICY_IDENTITIES));
}
