//! `from_pod`'s IPv6 path on a dual-stack node (`from_pod6`) and
//! `from_uplink`'s (`from_uplink6`): a pod's own IPv6 address to a pod of
//! this node is redirected into it, to another node's pod (`NODE_ROUTES6`)
//! out of the uplink, hop limit decremented either way; a router's answer
//! (hop limit 1, too big for the egress MTU, extension headers, fragments)
//! and anything not for a pod go to the node's stack, counted; a forged
//! source is dropped and counted as `source_spoofed`; neighbour discovery
//! and MLD from link-local or unspecified sources reach the stack; an
//! IPv4-only node keeps dropping IPv6 as `unknown_l3` (`unknown_l3.rs`).
use std::net::Ipv6Addr;

use etherparse::PacketBuilder;
use sluice_common::{
    maps::{
        programs::{FROM_POD, FROM_POD_NETKIT, FROM_UPLINK},
        FAST_PATH_MARK,
    },
    DropReason, ForwardPath,
};
use sluice_tests::prog_test::{
    packet::{hex, icmp6_echo, Ipv6, L4v6, L2},
    Pod, TestDatapath, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT,
};

fn ip6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

#[test]
fn a_pods_own_ipv6_reaches_the_stack_and_is_counted() {
    let dp = TestDatapath::node().unwrap();
    dp.dual_stack("fd00:244:0:1::/64").unwrap();
    let a = dp.add_pod("10.244.1.2").unwrap();
    dp.endpoint6(&a, ip6("fd00:244:0:1::2")).unwrap();
    let frame = icmp6_echo(a.sends(), ip6("fd00:244:0:1::2"), ip6("fd00:244:0:2::5"));
    for program in [FROM_POD, FROM_POD_NETKIT] {
        let run = dp.run(program, a.host.ifindex, &frame).unwrap();
        assert_eq!(run.action, TC_ACT_OK, "{program}");
        assert_eq!(hex(&run.packet), hex(&frame), "{program}: handed to the stack untouched");
    }
    assert_eq!(dp.forwards().unwrap(), [(ForwardPath::PodIpv6ToStack, 2)]);
    assert_eq!(dp.drops().unwrap(), []);
}

#[test]
fn a_pod_forging_an_ipv6_source_is_dropped_and_counted() {
    let dp = TestDatapath::node().unwrap();
    dp.dual_stack("fd00:244:0:1::/64").unwrap();
    let a = dp.add_pod("10.244.1.2").unwrap();
    let b = dp.add_pod("10.244.1.3").unwrap();
    dp.endpoint6(&a, ip6("fd00:244:0:1::2")).unwrap();
    dp.endpoint6(&b, ip6("fd00:244:0:1::3")).unwrap();
    let forged = [
        // Another pod's address, from a's interface.
        icmp6_echo(a.sends(), ip6("fd00:244:0:1::3"), ip6("fd00:244:0:2::5")),
        // An address no pod has.
        icmp6_echo(a.sends(), ip6("fd00:244:0:1::99"), ip6("fd00:244:0:2::5")),
        // A link-local source beyond the link.
        icmp6_echo(a.sends(), ip6("fe80::1234"), ip6("fd00:244:0:2::5")),
    ];
    for frame in &forged {
        assert_eq!(dp.run(FROM_POD, a.host.ifindex, frame).unwrap().action, TC_ACT_SHOT, "{}", hex(frame));
    }
    assert_eq!(dp.drops().unwrap(), [(DropReason::SourceSpoofed, 3)]);
    assert_eq!(dp.forwards().unwrap(), []);
}

#[test]
fn neighbour_discovery_from_a_pod_reaches_the_stack() {
    let dp = TestDatapath::node().unwrap();
    dp.dual_stack("fd00:244:0:1::/64").unwrap();
    let a = dp.add_pod("10.244.1.2").unwrap();
    // (An echo stands in for the ICMPv6 type: the program judges addresses.)
    let link_scope = [
        // A solicitation for the gateway fe80::1, from the pod's link-local.
        icmp6_echo(a.sends(), ip6("fe80::aa:bbff:fecc:dd01"), ip6("ff02::1:ff00:1")),
        // Duplicate address detection: from the unspecified address.
        icmp6_echo(a.sends(), ip6("::"), ip6("ff02::1:ffcc:dd01")),
        // Unicast to the gateway itself.
        icmp6_echo(a.sends(), ip6("fe80::aa:bbff:fecc:dd01"), ip6("fe80::1")),
    ];
    for frame in &link_scope {
        assert_eq!(dp.run(FROM_POD, a.host.ifindex, frame).unwrap().action, TC_ACT_OK, "{}", hex(frame));
    }
    assert_eq!(dp.forwards().unwrap(), [(ForwardPath::PodIpv6ToStack, 3)]);
    assert_eq!(dp.drops().unwrap(), []);
}

#[test]
fn a_bad_ipv6_version_is_dropped() {
    let dp = TestDatapath::node().unwrap();
    dp.dual_stack("fd00:244:0:1::/64").unwrap();
    let a = dp.add_pod("10.244.1.2").unwrap();
    dp.endpoint6(&a, ip6("fd00:244:0:1::2")).unwrap();
    let mut frame = icmp6_echo(a.sends(), ip6("fd00:244:0:1::2"), ip6("fd00:244:0:2::5"));
    frame[14] = 0x40 | (frame[14] & 0x0f);
    assert_eq!(dp.run(FROM_POD, a.host.ifindex, &frame).unwrap().action, TC_ACT_SHOT);
    assert_eq!(dp.drops().unwrap(), [(DropReason::BadIpHeader, 1)]);
    // (A frame cut inside the fixed header cannot be run: BPF_PROG_TEST_RUN
    // refuses an IPv6 skb shorter than the header.)
}

const A6: &str = "fd00:244:0:1::2";
const B6: &str = "fd00:244:0:1::3";
/// A pod of the native IPv6 peer, and that peer's address on the uplink.
const PEER_POD6: &str = "fd00:244:0:2::5";
const PEER_CIDR6: &str = "fd00:244:0:2::/64";
const PEER_NODE6: &str = "fd00:30::2";
/// Byte 7 of the IPv6 header: the hop limit.
const HOP_LIMIT: usize = 14 + 7;

/// A dual-stack node with pods a and b (each with its IPv6) and a native
/// IPv6 peer in `NODE_ROUTES6`.
fn dual_node() -> (TestDatapath, Pod, Pod) {
    let dp = TestDatapath::node().unwrap();
    dp.dual_stack("fd00:244:0:1::/64").unwrap();
    let a = dp.add_pod("10.244.1.2").unwrap();
    let b = dp.add_pod("10.244.1.3").unwrap();
    dp.endpoint6(&a, ip6(A6)).unwrap();
    dp.endpoint6(&b, ip6(B6)).unwrap();
    dp.node_route6(PEER_CIDR6, ip6(PEER_NODE6)).unwrap();
    (dp, a, b)
}

/// A UDP packet over IPv6 whose IP packet is `l3_len` bytes long.
fn udp6_of_len(l2: L2, src: &str, dst: &str, l3_len: usize) -> Vec<u8> {
    let payload = vec![0x5a; l3_len - 40 - 8];
    let mut out = Vec::new();
    PacketBuilder::ethernet2(l2.src, l2.dst)
        .ipv6(ip6(src).octets(), ip6(dst).octets(), 64)
        .udp(40000, 9000)
        .write(&mut out, &payload)
        .unwrap();
    out
}

#[test]
fn ipv6_to_a_pod_on_this_node_goes_into_it_with_the_hop_limit_decremented() {
    let (dp, a, b) = dual_node();
    for p in [Ipv6::tcp_syn(A6, B6, 40000, 80), Ipv6::udp(A6, B6, 40000, 53), Ipv6::icmp(A6, B6)] {
        let frame = p.frame(a.sends());
        let run = dp.run(FROM_POD, a.host.ifindex, &frame).unwrap();
        assert_eq!(run.action, TC_ACT_REDIRECT, "{p:?}");
        assert_eq!(run.packet[HOP_LIMIT], 63, "{p:?}: a router's hop");
        assert_eq!(&run.packet[..12], &p.frame(b.receives())[..12], "MACs as from b's gateway");
        // Only the hop limit changed past Ethernet.
        let mut want = frame.clone();
        want[HOP_LIMIT] = 63;
        assert_eq!(hex(&run.packet[12..]), hex(&want[12..]));
    }
    assert_eq!(dp.forwards().unwrap(), [(ForwardPath::PodToLocalPod6, 3)]);
    assert_eq!(dp.drops().unwrap(), []);
}

#[test]
fn ipv6_between_netkit_pods_goes_out_of_the_destinations_host_end_marked() {
    let (dp, a, _b) = dual_node();
    let run = dp.run(FROM_POD_NETKIT, a.host.ifindex, &Ipv6::tcp_syn(A6, B6, 40000, 80).frame(a.sends())).unwrap();
    assert_eq!(run.action, TC_ACT_REDIRECT);
    assert_eq!(run.packet[HOP_LIMIT], 63);
    assert_ne!(run.ctx.mark & FAST_PATH_MARK, 0, "b's to_pod must know the door was passed");
    assert_eq!(dp.forwards().unwrap(), [(ForwardPath::PodToLocalPod6, 1)]);
}

#[test]
fn ipv6_to_another_nodes_pod_leaves_by_the_uplink_marked_hop_limit_decremented() {
    let (dp, a, _b) = dual_node();
    let frame = Ipv6::tcp_syn(A6, PEER_POD6, 40000, 80).frame(a.sends());
    let run = dp.run(FROM_POD, a.host.ifindex, &frame).unwrap();
    assert_eq!(run.action, TC_ACT_REDIRECT);
    assert_eq!(run.packet[HOP_LIMIT], 63);
    assert_ne!(run.ctx.mark & FAST_PATH_MARK, 0, "to_uplink must know the fast path sent it");
    let mut want = frame.clone();
    want[HOP_LIMIT] = 63;
    // MACs are the neighbour subsystem's to write, after the redirect.
    assert_eq!(hex(&run.packet), hex(&want));
    assert_eq!(dp.forwards().unwrap(), [(ForwardPath::PodToNode6, 1)]);
    // Not in any pod CIDR: the stack routes (and masquerades) it.
    let world = Ipv6::tcp_syn(A6, "2001:db8::1", 40000, 80).frame(a.sends());
    let run = dp.run(FROM_POD, a.host.ifindex, &world).unwrap();
    assert_eq!((run.action, hex(&run.packet)), (TC_ACT_OK, hex(&world)));
    assert_eq!(dp.forwards().unwrap(), [(ForwardPath::PodIpv6ToStack, 1), (ForwardPath::PodToNode6, 1)]);
}

#[test]
fn hop_limit_1_goes_to_the_stack_for_its_time_exceeded() {
    let (dp, a, _b) = dual_node();
    for dst in [B6, PEER_POD6] {
        let mut frame = Ipv6::udp(A6, dst, 40000, 53).frame(a.sends());
        frame[HOP_LIMIT] = 1;
        let run = dp.run(FROM_POD, a.host.ifindex, &frame).unwrap();
        assert_eq!(run.action, TC_ACT_OK, "{dst}");
        assert_eq!(hex(&run.packet), hex(&frame), "{dst}: untouched, the stack answers");
    }
    assert_eq!(dp.forwards().unwrap(), [(ForwardPath::PodIpv6ToStack, 2), (ForwardPath::Ipv6RouterToStack, 2)]);
    assert_eq!(dp.drops().unwrap(), []);
}

#[test]
fn larger_than_the_egress_mtu_goes_to_the_stack_for_its_packet_too_big() {
    let (dp, a, b) = dual_node();
    dp.set_mtu(&b.host, 1400).unwrap();
    dp.set_mtu(&dp.uplink, 1300).unwrap();
    // Exactly the MTU: the fast path; one byte more: the stack.
    for (dst, mtu) in [(B6, 1400), (PEER_POD6, 1300)] {
        let fits = udp6_of_len(a.sends(), A6, dst, mtu);
        assert_eq!(dp.run(FROM_POD, a.host.ifindex, &fits).unwrap().action, TC_ACT_REDIRECT, "{dst} at {mtu}");
        let over = udp6_of_len(a.sends(), A6, dst, mtu + 1);
        let run = dp.run(FROM_POD, a.host.ifindex, &over).unwrap();
        assert_eq!(run.action, TC_ACT_OK, "{dst} at {mtu} + 1");
        assert_eq!(hex(&run.packet), hex(&over), "{dst}: untouched, the stack answers");
    }
    assert_eq!(
        dp.forwards().unwrap(),
        [
            (ForwardPath::PodIpv6ToStack, 2),
            (ForwardPath::PodToLocalPod6, 1),
            (ForwardPath::PodToNode6, 1),
            (ForwardPath::Ipv6RouterToStack, 2)
        ]
    );
}

#[test]
fn extension_headers_and_fragments_go_to_the_stack() {
    let (dp, a, _b) = dual_node();
    for dst in [B6, PEER_POD6] {
        let fragment = Ipv6::new(A6, dst, L4v6::FragmentOfTcp { src_port: 40000, dst_port: 80 }).frame(a.sends());
        // The same bytes behind a hop-by-hop header's number (0): the
        // program must not read a transport there either.
        let mut hop_by_hop = fragment.clone();
        hop_by_hop[14 + 6] = 0;
        for frame in [fragment, hop_by_hop] {
            let run = dp.run(FROM_POD, a.host.ifindex, &frame).unwrap();
            assert_eq!((run.action, hex(&run.packet)), (TC_ACT_OK, hex(&frame)), "{dst}");
        }
    }
    assert_eq!(dp.forwards().unwrap(), [(ForwardPath::PodIpv6ToStack, 4), (ForwardPath::Ipv6RouterToStack, 4)]);
}

#[test]
fn ipv6_from_another_nodes_pod_on_the_uplink_goes_into_the_pod() {
    let (dp, _a, b) = dual_node();
    let l2 = L2::new([2, 0, 0, 0, 0, 2], dp.uplink.mac);
    let frame = Ipv6::tcp_syn(PEER_POD6, B6, 40000, 80).frame(l2);
    let run = dp.run(FROM_UPLINK, dp.uplink.ifindex, &frame).unwrap();
    assert_eq!(run.action, TC_ACT_REDIRECT);
    assert_eq!(run.packet[HOP_LIMIT], 63);
    assert_eq!(&run.packet[..12], &Ipv6::tcp_syn(PEER_POD6, B6, 40000, 80).frame(b.receives())[..12]);
    assert_eq!(dp.forwards().unwrap(), [(ForwardPath::UplinkToPod6, 1)]);
    // From outside the pod CIDRs (the world's reply to a masqueraded
    // connection, a node): the stack, where conntrack sees it.
    let world = Ipv6::tcp_ack("2001:db8::1", B6, 443, 40000).frame(l2);
    let run = dp.run(FROM_UPLINK, dp.uplink.ifindex, &world).unwrap();
    assert_eq!((run.action, hex(&run.packet)), (TC_ACT_OK, hex(&world)));
    // Hop limit 1: the stack.
    let mut last_hop = frame.clone();
    last_hop[HOP_LIMIT] = 1;
    assert_eq!(dp.run(FROM_UPLINK, dp.uplink.ifindex, &last_hop).unwrap().action, TC_ACT_OK);
    assert_eq!(
        dp.forwards().unwrap(),
        [(ForwardPath::ToStack, 2), (ForwardPath::UplinkToPod6, 1), (ForwardPath::Ipv6RouterToStack, 1)]
    );
    // One of this node's own pods as the source: forged.
    let forged = Ipv6::tcp_syn(A6, B6, 40000, 80).frame(l2);
    assert_eq!(dp.run(FROM_UPLINK, dp.uplink.ifindex, &forged).unwrap().action, TC_ACT_SHOT);
    assert_eq!(dp.drops().unwrap(), [(DropReason::UplinkSourceSpoofed, 1)]);
}
