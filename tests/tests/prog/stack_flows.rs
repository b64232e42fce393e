//! A TCP SYN for a local pod opens a new connection on the fast path: the
//! stack flow its tuple reverses (the pod's replies of an earlier flow the
//! node's stack forwarded, with the same ports) is forgotten, or the new
//! connection's replies would go to conntrack, which knows no such flow and
//! drops them. Natively and for a VXLAN packet `from_uplink` decapsulates,
//! whose TCP header sits 50 bytes further in.
use sluice_common::{maps::names, maps::programs::FROM_UPLINK, FlowKey};
use sluice_tests::prog_test::{be, ip, packet::vxlan, Ipv4, TestDatapath, L2, NODE_IP, TC_ACT_REDIRECT, VXLAN_PEER_IP};

/// The reply tuple `to_pod` remembers for `src:src_port → dst:dst_port`.
fn reply_of(src: &str, src_port: u16, dst: &str, dst_port: u16) -> FlowKey {
    FlowKey {
        src_be: be(ip(dst)),
        dst_be: be(ip(src)),
        src_port_be: dst_port.to_be(),
        dst_port_be: src_port.to_be(),
        protocol: 6,
        _pad: [0; 3],
    }
}

fn remembered(dp: &TestDatapath, key: FlowKey) -> bool {
    use aya::maps::{HashMap, Map, MapData};
    let data = MapData::from_pin(dp.pins().map(names::STACK_FLOWS)).unwrap();
    let map: HashMap<MapData, FlowKey, u32> = Map::from_map_data(data).unwrap().try_into().unwrap();
    map.get(&key, 0).is_ok()
}

#[test]
fn a_syn_from_a_native_peer_forgets_the_stale_stack_flow() {
    let dp = TestDatapath::node().unwrap();
    let pod = dp.add_pod("10.244.1.3").unwrap();
    let stale = reply_of("10.244.2.7", 40000, "10.244.1.3", 80);
    dp.stack_flow(stale).unwrap();
    let frame = Ipv4::tcp_syn("10.244.2.7", "10.244.1.3", 40000, 80).frame(L2::new([2, 0, 0, 0, 0, 2], dp.uplink.mac));
    let run = dp.run(FROM_UPLINK, dp.uplink.ifindex, &frame).unwrap();
    assert_eq!(run.action, TC_ACT_REDIRECT, "into {}", pod.ip);
    assert!(!remembered(&dp, stale), "the stale stack flow is forgotten");
}

#[test]
fn a_syn_decapsulated_by_from_uplink_forgets_the_stale_stack_flow() {
    let dp = TestDatapath::node().unwrap();
    let pod = dp.add_pod("10.244.1.3").unwrap();
    let stale = reply_of("10.244.3.7", 40000, "10.244.1.3", 80);
    dp.stack_flow(stale).unwrap();
    let inner = Ipv4::tcp_syn("10.244.3.7", "10.244.1.3", 40000, 80)
        .frame(L2::new([0x02, 0, 0, 0, 0x03, 0x01], [0x02, 0, 0, 0, 0x03, 0x02]));
    let frame = vxlan(L2::new([0x02, 0, 0, 0, 0, 0xfd], dp.uplink.mac), ip(VXLAN_PEER_IP), ip(NODE_IP), &inner);
    let run = dp.run(FROM_UPLINK, dp.uplink.ifindex, &frame).unwrap();
    assert_eq!(run.action, TC_ACT_REDIRECT, "decapsulated into {}", pod.ip);
    assert!(!remembered(&dp, stale), "the stale stack flow is forgotten");
}
