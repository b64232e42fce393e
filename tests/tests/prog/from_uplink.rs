//! `from_uplink`: what arrives from the node network, natively routed.
use sluice_common::{maps::programs::FROM_UPLINK, DropReason, ForwardPath};
use sluice_tests::prog_test::{
    ip,
    packet::{arp_request, hex},
    Ipv4, TestDatapath, L2, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT,
};

/// Ethernet addresses of a frame from a peer node to this node's uplink.
fn from_peer(dp: &TestDatapath) -> L2 {
    L2::new([0x02, 0, 0, 0, 0, 0x02], dp.uplink.mac)
}

#[test]
fn a_remote_pods_packet_for_a_local_pod_is_redirected_into_it() {
    let dp = TestDatapath::node().unwrap();
    let b = dp.add_pod("10.244.1.3").unwrap();
    let sent = Ipv4::tcp_syn("10.244.2.7", "10.244.1.3", 40000, 80);
    let run = dp.run(FROM_UPLINK, dp.uplink.ifindex, &sent.frame(from_peer(&dp))).unwrap();
    assert_eq!(run.action, TC_ACT_REDIRECT);
    assert_eq!(hex(&run.packet), hex(&sent.clone().ttl(63).frame(b.receives())));
    assert_eq!(dp.forwards().unwrap(), [(ForwardPath::UplinkToPod, 1)]);
    assert_eq!(dp.drops().unwrap(), []);
}

#[test]
fn a_non_pod_source_goes_through_the_stack() {
    let dp = TestDatapath::node().unwrap();
    dp.add_pod("10.244.1.3").unwrap();
    // An address no `NODE_ADDRESSES` entry names another node's (as with a
    // peers file), and a client out in the world: the pod's reply to them
    // crosses the stack, so conntrack must see this too. (Known nodes'
    // addresses: `node_path.rs`.)
    for src in ["172.30.0.2", "192.0.2.1"] {
        let frame = Ipv4::icmp(src, "10.244.1.3").frame(from_peer(&dp));
        let run = dp.run(FROM_UPLINK, dp.uplink.ifindex, &frame).unwrap();
        assert_eq!(run.action, TC_ACT_OK, "from {src}");
        assert_eq!(hex(&run.packet), hex(&frame));
    }
    assert_eq!(dp.forwards().unwrap(), [(ForwardPath::ToStack, 2)]);
    assert_eq!(dp.drops().unwrap(), []);
}

#[test]
fn a_local_pods_address_from_the_node_network_is_dropped_as_spoofed() {
    let dp = TestDatapath::node().unwrap();
    dp.add_pod("10.244.1.2").unwrap();
    dp.add_pod("10.244.1.3").unwrap();
    // To a pod and to the node itself: a local pod's packets never come in
    // from the uplink.
    for dst in ["10.244.1.3", "172.30.0.1"] {
        let run = dp.run(FROM_UPLINK, dp.uplink.ifindex, &Ipv4::icmp("10.244.1.2", dst).frame(from_peer(&dp))).unwrap();
        assert_eq!(run.action, TC_ACT_SHOT, "to {dst}");
    }
    assert_eq!(dp.drops().unwrap(), [(DropReason::UplinkSourceSpoofed, 2)]);
}

#[test]
fn ttl_1_for_a_local_pod_is_dropped() {
    let dp = TestDatapath::node().unwrap();
    dp.add_pod("10.244.1.3").unwrap();
    let frame = Ipv4::icmp("10.244.2.7", "10.244.1.3").ttl(1).frame(from_peer(&dp));
    assert_eq!(dp.run(FROM_UPLINK, dp.uplink.ifindex, &frame).unwrap().action, TC_ACT_SHOT);
    assert_eq!(dp.drops().unwrap(), [(DropReason::TtlExpired, 1)]);
}

#[test]
fn arp_and_the_nodes_own_traffic_go_to_the_stack() {
    let dp = TestDatapath::node().unwrap();
    let frames = [
        arp_request(from_peer(&dp), ip("172.30.0.2"), ip("172.30.0.1")),
        Ipv4::udp("172.30.0.2", "172.30.0.1", 40000, 10250).frame(from_peer(&dp)),
    ];
    for frame in &frames {
        let run = dp.run(FROM_UPLINK, dp.uplink.ifindex, frame).unwrap();
        assert_eq!(run.action, TC_ACT_OK);
        assert_eq!(hex(&run.packet), hex(frame));
    }
    assert_eq!(dp.forwards().unwrap(), [(ForwardPath::ToStack, 2)]);
    assert_eq!(dp.drops().unwrap(), []);
}
