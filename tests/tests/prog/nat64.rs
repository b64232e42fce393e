//! NAT64 (`--nat64`, `sluice_common::nat64`): a pod's IPv6 packet for
//! `64:ff9b::/96` leaves `from_pod` as IPv4 from the pod's pool address to
//! the embedded address, addressed to the NAT64 device and redirected into
//! it (to enter the stack there); an IPv4 answer to a pool address leaves
//! `to_nat64` (the device's egress) as IPv6 from `64:ff9b::<source>` to the
//! pod, into the pod's host end. Checksums are checked here independently
//! of the program (RFC 1071 sums over the pseudo header and the message).
//! What the translator does not carry is dropped and counted; with NAT64
//! off, `64:ff9b::/96` is the stack's as before.
use std::net::{Ipv4Addr, Ipv6Addr};

use sluice_common::{
    maps::{
        programs::{FROM_POD, TO_NAT64},
        FAST_PATH_MARK,
    },
    DropReason, ForwardPath,
};
use sluice_tests::prog_test::{
    packet::{hex, Ipv6, L4v6, L2},
    Iface, Ipv4, Pod, TestDatapath, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, TC_ACT_UNSPEC,
};

const POD_CIDR6: &str = "fd00:244:0:1::/64";
const A6: &str = "fd00:244:0:1::2";
/// a's pool address: its offset (2) in the pool.
const A_POOL: &str = "198.18.0.2";
const WORLD: &str = "198.51.100.7";
const WORLD6: &str = "64:ff9b::198.51.100.7";

/// A dual-stack node with pod a (and its IPv6) and NAT64 on.
fn nat64_node() -> (TestDatapath, Pod, Iface) {
    let dp = TestDatapath::node().unwrap();
    dp.dual_stack(POD_CIDR6).unwrap();
    let a = dp.add_pod("10.244.1.2").unwrap();
    dp.endpoint6(&a, A6.parse().unwrap()).unwrap();
    let dev = dp.nat64("198.18.0.0/16", POD_CIDR6).unwrap();
    (dp, a, dev)
}

/// The one's complement sum (RFC 1071) of `chunks`, folded.
fn sum16(chunks: &[&[u8]]) -> u16 {
    let bytes: Vec<u8> = chunks.concat();
    let mut sum: u32 = bytes.chunks(2).map(|w| u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]) as u32).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Checks an IPv4 frame's header checksum and its transport's (TCP, UDP
/// over the pseudo header; ICMP over the message alone).
fn assert_ipv4_checksums(frame: &[u8]) {
    let ip = &frame[14..34];
    assert_eq!(sum16(&[ip]), 0xffff, "IPv4 header checksum: {}", hex(frame));
    let l4 = &frame[34..];
    let proto = ip[9];
    let sum = if proto == 1 {
        sum16(&[l4])
    } else {
        let len = (l4.len() as u16).to_be_bytes();
        sum16(&[&ip[12..20], &[0, proto], &len, l4])
    };
    assert_eq!(sum, 0xffff, "protocol {proto}'s checksum: {}", hex(frame));
}

/// Checks an IPv6 frame's transport checksum (TCP, UDP, ICMPv6: all over
/// the pseudo header).
fn assert_ipv6_checksum(frame: &[u8]) {
    let ip = &frame[14..54];
    let l4 = &frame[54..];
    let len = (l4.len() as u32).to_be_bytes();
    let sum = sum16(&[&ip[8..40], &len, &[0, 0, 0, ip[6]], l4]);
    assert_eq!(sum, 0xffff, "next header {}'s checksum: {}", ip[6], hex(frame));
}

fn v4(b: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

fn v6(b: &[u8]) -> Ipv6Addr {
    Ipv6Addr::from(<[u8; 16]>::try_from(b).unwrap())
}

#[test]
fn a_pods_tcp_udp_and_echo_to_64_ff9b_leave_as_ipv4_from_its_pool_address() {
    let (dp, a, dev) = nat64_node();
    for (p, proto, l4_len) in [
        (Ipv6::tcp_syn(A6, WORLD6, 40000, 80), 6, 20),
        (Ipv6::udp(A6, WORLD6, 40001, 53), 17, 8),
        (Ipv6::icmp(A6, WORLD6), 1, 8),
    ] {
        let frame = p.frame(a.sends());
        let run = dp.run(FROM_POD, a.host.ifindex, &frame).unwrap();
        assert_eq!(run.action, TC_ACT_REDIRECT, "{p:?}");
        let out = &run.packet;
        assert_eq!(out.len(), frame.len() - 20, "{p:?}: 20 bytes of header fewer");
        assert_eq!(&out[..6], &dev.mac, "{p:?}: addressed to the NAT64 device");
        assert_eq!(&out[12..14], &[0x08, 0x00], "{p:?}: IPv4");
        let ip = &out[14..34];
        assert_eq!(ip[0], 0x45);
        assert_eq!(u16::from_be_bytes([ip[2], ip[3]]) as usize, out.len() - 14, "{p:?}: total length");
        assert_eq!(ip[6] & 0x40, 0x40, "{p:?}: DF");
        assert_eq!(ip[8], 63, "{p:?}: TTL is the hop limit less this hop");
        assert_eq!(ip[9], proto, "{p:?}");
        assert_eq!(v4(&ip[12..16]), A_POOL.parse::<Ipv4Addr>().unwrap(), "{p:?}: from a's pool address");
        assert_eq!(v4(&ip[16..20]), WORLD.parse::<Ipv4Addr>().unwrap(), "{p:?}: to the embedded address");
        assert_ipv4_checksums(out);
        // The transport header past its checksum and the payload as sent
        // (ICMP: the type changed, echo request 128 → 8).
        let (sent, got) = (&frame[54..], &out[34..]);
        if proto == 1 {
            assert_eq!((got[0], sent[0]), (8, 128), "echo request");
            assert_eq!(&got[4..], &sent[4..], "identifier, sequence, payload");
        } else {
            let csum = if proto == 6 { 16 } else { 6 };
            assert_eq!(&got[..csum], &sent[..csum], "{p:?}: ports and what follows up to the checksum");
            assert_eq!(&got[csum + 2..], &sent[csum + 2..], "{p:?}: the rest");
        }
        assert_eq!(got.len(), l4_len + b"sluice prog test".len());
    }
    assert_eq!(dp.forwards().unwrap(), [(ForwardPath::PodToNat64, 3)]);
    assert_eq!(dp.drops().unwrap(), []);
}

#[test]
fn an_ipv4_answer_to_a_pool_address_enters_its_pod_as_ipv6_from_64_ff9b() {
    let (dp, a, dev) = nat64_node();
    for (p, next_header) in [
        (Ipv4::tcp_ack(WORLD, A_POOL, 80, 40000), 6),
        (Ipv4::udp(WORLD, A_POOL, 53, 40001), 17),
        (Ipv4::icmp_reply(WORLD, A_POOL), 58),
    ] {
        // As the stack sends it out of the device (its own MAC, a MAC the
        // neighbour entry of a NOARP device gives).
        let frame = p.frame(L2::new(dev.mac, dev.mac));
        let run = dp.run(TO_NAT64, dev.ifindex, &frame).unwrap();
        assert_eq!(run.action, TC_ACT_REDIRECT, "{p:?}");
        let out = &run.packet;
        assert_eq!(out.len(), frame.len() + 20, "{p:?}");
        assert_eq!((&out[..6], &out[6..12]), (&a.mac[..], &a.host.mac[..]), "{p:?}: MACs as from a's gateway");
        assert_eq!(&out[12..14], &[0x86, 0xdd], "{p:?}: IPv6");
        let ip = &out[14..54];
        assert_eq!(ip[0] >> 4, 6);
        assert_eq!(u16::from_be_bytes([ip[4], ip[5]]) as usize, out.len() - 54, "{p:?}: payload length");
        assert_eq!(ip[6], next_header, "{p:?}");
        assert_eq!(ip[7], 63, "{p:?}: the hop into the pod");
        assert_eq!(v6(&ip[8..24]), WORLD6.parse::<Ipv6Addr>().unwrap(), "{p:?}: from 64:ff9b::<source>");
        assert_eq!(v6(&ip[24..40]), A6.parse::<Ipv6Addr>().unwrap(), "{p:?}: to the pool address's pod");
        assert_ipv6_checksum(out);
        if next_header == 58 {
            assert_eq!(out[54], 129, "echo reply 0 → 129");
        }
        assert_ne!(run.ctx.mark & FAST_PATH_MARK, 0, "{p:?}: marked for to_pod, the door passed");
    }
    assert_eq!(dp.forwards().unwrap(), [(ForwardPath::Nat64ToPod, 3)]);
    assert_eq!(dp.drops().unwrap(), []);
}

#[test]
fn what_the_translator_does_not_carry_is_dropped_and_counted() {
    let (dp, a, dev) = nat64_node();
    let forward = [
        // A fragment header, SCTP, an ICMPv6 error.
        Ipv6::new(A6, WORLD6, L4v6::FragmentOfTcp { src_port: 40000, dst_port: 80 }),
        Ipv6::sctp(A6, WORLD6, 40000, 80),
        Ipv6::new(A6, WORLD6, L4v6::PacketTooBig { mtu: 1280, quoted: Ipv6::udp(WORLD6, A6, 53, 1).bytes() }),
    ];
    for p in &forward {
        assert_eq!(dp.run(FROM_POD, a.host.ifindex, &p.frame(a.sends())).unwrap().action, TC_ACT_SHOT, "{p:?}");
    }
    let mut udp_without_checksum = Ipv4::udp(WORLD, A_POOL, 53, 40001).frame(L2::new(dev.mac, dev.mac));
    udp_without_checksum[34 + 6..34 + 8].copy_from_slice(&[0, 0]);
    // An ICMP error (destination unreachable: ICMP errors are not
    // translated yet; the type is all the program reads before dropping).
    let mut icmp_error = Ipv4::icmp_reply(WORLD, A_POOL).frame(L2::new(dev.mac, dev.mac));
    icmp_error[34] = 3;
    let reverse = [
        Ipv4::udp(WORLD, A_POOL, 53, 40001).fragment(true, 0).frame(L2::new(dev.mac, dev.mac)),
        Ipv4::udp(WORLD, A_POOL, 53, 40001).options(&[1, 1, 1, 0]).frame(L2::new(dev.mac, dev.mac)),
        Ipv4::sctp(WORLD, A_POOL, 53, 40001).frame(L2::new(dev.mac, dev.mac)),
        icmp_error,
        udp_without_checksum,
    ];
    for frame in &reverse {
        assert_eq!(dp.run(TO_NAT64, dev.ifindex, frame).unwrap().action, TC_ACT_SHOT, "{}", hex(frame));
    }
    assert_eq!(dp.drops().unwrap(), [(DropReason::Nat64Unsupported, 8)]);
    assert_eq!(dp.forwards().unwrap(), []);
}

#[test]
fn a_pod_past_the_pool_and_an_answer_for_no_pod_fail_closed_and_counted() {
    let (dp, a, dev) = nat64_node();
    // b's offset (0x10002) is past a /16 pool.
    let b = dp.add_pod("10.244.1.3").unwrap();
    let b6 = "fd00:244:0:1::1:2";
    dp.endpoint6(&b, b6.parse().unwrap()).unwrap();
    let run = dp.run(FROM_POD, b.host.ifindex, &Ipv6::udp(b6, WORLD6, 40000, 53).frame(b.sends())).unwrap();
    assert_eq!(run.action, TC_ACT_SHOT);
    // A pool address no pod has, and an address outside the pool.
    let to_nobody = Ipv4::udp(WORLD, "198.18.0.9", 53, 40000).frame(L2::new(dev.mac, dev.mac));
    assert_eq!(dp.run(TO_NAT64, dev.ifindex, &to_nobody).unwrap().action, TC_ACT_SHOT);
    let outside = Ipv4::udp(WORLD, "10.0.0.1", 53, 40000).frame(L2::new(dev.mac, dev.mac));
    assert_eq!(dp.run(TO_NAT64, dev.ifindex, &outside).unwrap().action, TC_ACT_SHOT);
    assert_eq!(
        dp.drops().unwrap(),
        [(DropReason::Nat64NoPoolAddress, 2), (DropReason::Nat64NoEndpoint, 1)],
        "a ({}) is untouched",
        a.host.name
    );
}

#[test]
fn with_nat64_off_64_ff9b_is_the_stacks_and_hop_limit_1_the_stacks_too() {
    let dp = TestDatapath::node().unwrap();
    dp.dual_stack(POD_CIDR6).unwrap();
    let a = dp.add_pod("10.244.1.2").unwrap();
    dp.endpoint6(&a, A6.parse().unwrap()).unwrap();
    let frame = Ipv6::udp(A6, WORLD6, 40000, 53).frame(a.sends());
    let run = dp.run(FROM_POD, a.host.ifindex, &frame).unwrap();
    assert_eq!((run.action, hex(&run.packet)), (TC_ACT_OK, hex(&frame)), "off: untouched, to the stack");
    // On, a hop limit of 1: the stack answers time exceeded.
    dp.nat64("198.18.0.0/16", POD_CIDR6).unwrap();
    let mut last_hop = frame.clone();
    last_hop[14 + 7] = 1;
    let run = dp.run(FROM_POD, a.host.ifindex, &last_hop).unwrap();
    assert_eq!((run.action, hex(&run.packet)), (TC_ACT_OK, hex(&last_hop)));
    // The device's own IPv6 (neighbour discovery) goes on to it.
    let target = sluice_tests::prog_test::packet::ip6("fe80::1");
    let nd = Ipv6::new("fe80::2", "ff02::2", L4v6::NeighbourSolicitation { target }).frame(a.sends());
    let dev_ifindex = nat64_device(&dp);
    assert_eq!(dp.run(TO_NAT64, dev_ifindex, &nd).unwrap().action, TC_ACT_UNSPEC);
    assert_eq!(dp.forwards().unwrap(), [(ForwardPath::PodIpv6ToStack, 2)]);
    assert_eq!(dp.drops().unwrap(), []);
}

fn nat64_device(dp: &TestDatapath) -> u32 {
    sluice_node::datapath::pinned_maps::read_nat64_config(dp.pins()).unwrap().device_ifindex
}
