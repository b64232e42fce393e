//! A test node translating a NodePort at its uplink (issue 27's `lb4`
//! programs), shared by the NodePort, DSR and fragment tests.
use sluice_common::{
    nat::{Lb4Config, Nat4Counter},
    services::{Backend, BackendSlot, ServiceKey, ServiceValue, NODE_ADDRESS_LOCAL},
};
use sluice_node::datapath::{
    nat4_maps::{nat4_counters, set_lb4_config},
    service_maps::{NodeAddressMap, ServiceMaps},
};

use super::{be, ip, TestDatapath, L2, NODE_IP};

/// A client out in the world.
pub const WORLD: &str = "192.0.2.1";

/// Ethernet addresses of a frame from the world's router to the uplink.
pub fn from_world(dp: &TestDatapath) -> L2 {
    L2::new([0x02, 0, 0, 0, 0, 0xfe], dp.uplink.mac)
}

/// A configured node (`TestDatapath::node`) whose uplink translates with
/// `LB4_CONFIG.flags` = `flags` (SNAT range 61000–65535), `NODE_IP` its
/// own address, and NodePort `node_port` for each of `protocols` backed
/// by `backend:backend_port` alone.
pub fn node_with_node_port(
    flags: u32,
    node_port: u16,
    protocols: &[u8],
    backend: &str,
    backend_port: u16,
) -> TestDatapath {
    let dp = TestDatapath::node().unwrap();
    set_lb4_config(dp.pins(), Lb4Config { flags, snat_port_min: 61000, snat_port_max: 65535 }).unwrap();
    NodeAddressMap::open(dp.pins()).unwrap().put(be(ip(NODE_IP)), NODE_ADDRESS_LOCAL).unwrap();
    let mut maps = ServiceMaps::open(dp.pins()).unwrap();
    let b = Backend { ip_be: be(ip(backend)), port_be: backend_port.to_be(), _pad: 0 };
    maps.put_backend(BackendSlot { set: 1, slot: 0 }, b).unwrap();
    for protocol in protocols {
        let value = ServiceValue { backend_set: 1, count: 1, affinity_timeout_secs: 0, flags: 0, service_port_id: 0 };
        maps.put_service(ServiceKey::node_port(node_port.to_be(), *protocol), value).unwrap();
    }
    dp
}

/// The node's `NAT4_STATS` count `c`.
pub fn nat4_counter(dp: &TestDatapath, c: Nat4Counter) -> u64 {
    nat4_counters(dp.pins()).unwrap().into_iter().find(|(k, _)| *k == c).unwrap().1
}
