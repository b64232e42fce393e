//! `STACK_FLOWS6`, the IPv6 twin of `STACK_FLOWS` (`stack_flows.rs`): what
//! the node's stack sends from a pod out of the uplink (`to_uplink`) or
//! into a pod (`to_pod`) is remembered by its reply tuple; that reply, which
//! the IPv6 fast path would carry pod to pod (`from_uplink6`, `from_pod6`),
//! goes to the stack instead, counted `stack_flow_reply`, so conntrack can
//! undo kube-proxy's DNAT of an IPv6 ClusterIP. A TCP SYN the fast path
//! carries forgets the entry its tuple reverses.
use aya::maps::{HashMap, Map, MapData};
use sluice_common::{
    maps::{
        names,
        programs::{FROM_POD, FROM_UPLINK, TO_POD, TO_UPLINK},
    },
    FlowKey6, ForwardPath, StackFlowEvent,
};
use sluice_tests::prog_test::{
    packet::{ip6, Ipv6, L2},
    Pod, TestDatapath, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_UNSPEC,
};

const A6: &str = "fd00:244:0:1::2";
const B6: &str = "fd00:244:0:1::3";
const PEER_POD6: &str = "fd00:244:0:2::5";

fn dual_node() -> (TestDatapath, Pod, Pod) {
    let dp = TestDatapath::node().unwrap();
    dp.dual_stack("fd00:244:0:1::/64").unwrap();
    let a = dp.add_pod("10.244.1.2").unwrap();
    let b = dp.add_pod("10.244.1.3").unwrap();
    dp.endpoint6(&a, ip6(A6)).unwrap();
    dp.endpoint6(&b, ip6(B6)).unwrap();
    dp.node_route6("fd00:244:0:2::/64", ip6("fd00:30::2")).unwrap();
    (dp, a, b)
}

/// The TCP tuple `src:src_port → dst:dst_port`.
fn tcp(src: &str, src_port: u16, dst: &str, dst_port: u16) -> FlowKey6 {
    FlowKey6 {
        src: ip6(src).octets(),
        dst: ip6(dst).octets(),
        src_port_be: src_port.to_be(),
        dst_port_be: dst_port.to_be(),
        protocol: 6,
        _pad: [0; 3],
    }
}

fn stack_flows6(dp: &TestDatapath) -> HashMap<MapData, FlowKey6, u32> {
    let data = MapData::from_pin(dp.pins().map(names::STACK_FLOWS6)).unwrap();
    Map::from_map_data(data).unwrap().try_into().unwrap()
}

fn remembered(dp: &TestDatapath, key: FlowKey6) -> bool {
    stack_flows6(dp).get(&key, 0).is_ok()
}

/// From the uplink's side: the frame a peer node sends us.
fn from_peer(dp: &TestDatapath) -> L2 {
    L2::new([2, 0, 0, 0, 0, 2], dp.uplink.mac)
}

#[test]
fn a_local_pods_ipv6_the_stack_sent_out_is_remembered_and_its_reply_goes_to_the_stack() {
    let (dp, a, _b) = dual_node();
    // a -> a ClusterIP, DNATed by the stack to the peer's pod, leaving by
    // the uplink unmarked.
    let out = Ipv6::tcp_syn(A6, PEER_POD6, 40000, 8080);
    let run = dp.run(TO_UPLINK, dp.uplink.ifindex, &out.frame(L2::new(dp.uplink.mac, [2, 0, 0, 0, 0, 2]))).unwrap();
    assert_eq!(run.action, TC_ACT_UNSPEC);
    let reply = tcp(PEER_POD6, 8080, A6, 40000);
    assert!(remembered(&dp, reply), "to_uplink remembers the reply tuple");
    // The backend's answer: pod to pod, but the stack's (conntrack's).
    let answer = Ipv6::tcp_ack(PEER_POD6, A6, 8080, 40000).frame(from_peer(&dp));
    let run = dp.run(FROM_UPLINK, dp.uplink.ifindex, &answer).unwrap();
    assert_eq!(run.action, TC_ACT_OK, "to the stack");
    assert_eq!(run.packet, answer, "untouched");
    // Another connection between the same pods is the fast path's.
    let other = Ipv6::tcp_ack(PEER_POD6, A6, 8080, 40001).frame(from_peer(&dp));
    assert_eq!(dp.run(FROM_UPLINK, dp.uplink.ifindex, &other).unwrap().action, TC_ACT_REDIRECT, "into {}", a.ip);
    assert_eq!(dp.forwards().unwrap(), [(ForwardPath::StackFlowReply, 1), (ForwardPath::UplinkToPod6, 1)]);
    // Counted as STACK_FLOWS6's own event, never as STACK_FLOWS' (status
    // derives each table's evictions from its own counts).
    assert_eq!(dp.stack_flow_events().unwrap(), [(StackFlowEvent::Remembered6, 1)]);
}

#[test]
fn a_pods_ipv6_the_stack_delivered_is_remembered_and_the_local_reply_goes_to_the_stack() {
    let (dp, a, b) = dual_node();
    // a -> a ClusterIP, DNATed by the stack to b on this node.
    let into_b = Ipv6::tcp_syn(A6, B6, 40000, 8080).frame(b.receives());
    assert_eq!(dp.run(TO_POD, b.host.ifindex, &into_b).unwrap().action, TC_ACT_UNSPEC);
    assert!(remembered(&dp, tcp(B6, 8080, A6, 40000)), "to_pod remembers the reply tuple");
    // From another node's pod too (the stack forwarded it here).
    let from_peer_pod = Ipv6::tcp_syn(PEER_POD6, B6, 40000, 8080).frame(b.receives());
    dp.run(TO_POD, b.host.ifindex, &from_peer_pod).unwrap();
    assert!(remembered(&dp, tcp(B6, 8080, PEER_POD6, 40000)));
    // b's answers: to a on this node and to the peer's pod, both the stack's.
    for dst in [A6, PEER_POD6] {
        let answer = Ipv6::tcp_ack(B6, dst, 8080, 40000).frame(b.sends());
        assert_eq!(dp.run(FROM_POD, b.host.ifindex, &answer).unwrap().action, TC_ACT_OK, "{dst}");
    }
    // a's next packet of the same connection goes on by the fast path
    // (it is not a reply); only b's answers were the stack's.
    let more = Ipv6::tcp_ack(A6, B6, 40000, 8080).frame(a.sends());
    assert_eq!(dp.run(FROM_POD, a.host.ifindex, &more).unwrap().action, TC_ACT_REDIRECT);
    assert_eq!(dp.forwards().unwrap(), [(ForwardPath::StackFlowReply, 2), (ForwardPath::PodToLocalPod6, 1)]);
}

#[test]
fn a_syn_on_the_ipv6_fast_path_forgets_the_stale_stack_flow() {
    let (dp, a, _b) = dual_node();
    // b's replies of an earlier connection the stack forwarded, same ports.
    let stale = tcp(B6, 8080, A6, 40000);
    stack_flows6(&dp).insert(stale, 0, 0).unwrap();
    let syn = Ipv6::tcp_syn(A6, B6, 40000, 8080).frame(a.sends());
    assert_eq!(dp.run(FROM_POD, a.host.ifindex, &syn).unwrap().action, TC_ACT_REDIRECT);
    assert!(!remembered(&dp, stale), "forgotten by the SYN from_pod6 carried");
    // And from the uplink: a peer's pod opening a connection to a.
    let stale = tcp(A6, 8080, PEER_POD6, 40000);
    stack_flows6(&dp).insert(stale, 0, 0).unwrap();
    let syn = Ipv6::tcp_syn(PEER_POD6, A6, 40000, 8080).frame(from_peer(&dp));
    assert_eq!(dp.run(FROM_UPLINK, dp.uplink.ifindex, &syn).unwrap().action, TC_ACT_REDIRECT);
    assert!(!remembered(&dp, stale), "forgotten by the SYN from_uplink6 carried");
    assert_eq!(dp.stack_flow_events().unwrap(), [(StackFlowEvent::Forgotten6, 2)]);
}
