//! Malformed and unusual IPv4: short frames, broken headers, options and
//! fragments, from a pod and from the uplink.
use sluice_common::{
    maps::programs::{FROM_POD, FROM_UPLINK},
    DropReason, ForwardPath,
};
use sluice_tests::prog_test::{
    packet::{edit_ipv4, hex},
    Ipv4, Pod, TestDatapath, L2, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT,
};

/// A change to an IPv4 header's bytes.
type HeaderEdit = Box<dyn Fn(&mut [u8])>;

/// A node with pods a (10.244.1.2) and b (10.244.1.3).
fn node() -> (TestDatapath, Pod, Pod) {
    let dp = TestDatapath::node().unwrap();
    let a = dp.add_pod("10.244.1.2").unwrap();
    let b = dp.add_pod("10.244.1.3").unwrap();
    (dp, a, b)
}

/// a's ICMP echo to b, as a frame.
fn a_to_b(a: &Pod) -> Vec<u8> {
    Ipv4::icmp("10.244.1.2", "10.244.1.3").frame(a.sends())
}

#[test]
fn a_packet_that_ends_before_its_ports_is_dropped_as_truncated() {
    let (dp, a, _) = node();
    // A whole IPv4 header for UDP or TCP, its total length saying there is
    // nothing after it (so the IPv4 header itself is fine), and no ports.
    // (A frame shorter than its IPv4 header cannot be run: the kernel
    // refuses to make a test skb of it, EINVAL.)
    let frames = [
        Ipv4::udp("10.244.1.2", "10.244.1.3", 1, 2).frame(a.sends()),
        Ipv4::tcp_syn("10.244.1.2", "10.244.2.7", 1, 2).frame(a.sends()),
    ];
    for mut frame in frames {
        frame.truncate(14 + 20);
        edit_ipv4(&mut frame, 14, 20, |h| h[2..4].copy_from_slice(&20u16.to_be_bytes()));
        assert_eq!(dp.run(FROM_POD, a.host.ifindex, &frame).unwrap().action, TC_ACT_SHOT, "{}", hex(&frame));
    }
    assert_eq!(dp.drops().unwrap(), [(DropReason::Truncated, 2)]);
    assert_eq!(dp.forwards().unwrap(), []);
}

#[test]
fn broken_ipv4_headers_are_dropped() {
    let (dp, a, _) = node();
    let len = a_to_b(&a).len() - 14;
    let cases: [(&str, HeaderEdit); 5] = [
        ("IHL 4 (16-byte header)", Box::new(|h| h[0] = 0x44)),
        ("IHL 0", Box::new(|h| h[0] = 0x40)),
        ("version 6 in an IPv4 frame", Box::new(|h| h[0] = 0x65)),
        ("total length past the packet", Box::new(move |h| h[2..4].copy_from_slice(&(len as u16 + 1).to_be_bytes()))),
        ("total length shorter than the header", Box::new(|h| h[2..4].copy_from_slice(&19u16.to_be_bytes()))),
    ];
    for (what, edit) in &cases {
        let mut frame = a_to_b(&a);
        edit_ipv4(&mut frame, 14, 20, edit);
        let run = dp.run(FROM_POD, a.host.ifindex, &frame).unwrap();
        assert_eq!(run.action, TC_ACT_SHOT, "{what}");
    }
    assert_eq!(dp.drops().unwrap(), [(DropReason::BadIpHeader, cases.len() as u64)]);
    assert_eq!(dp.forwards().unwrap(), []);
}

#[test]
fn ethernet_padding_after_a_short_packet_is_carried_along() {
    let (dp, a, b) = node();
    // A 42-byte packet padded to Ethernet's 60-byte minimum: the total
    // length, not the frame, ends the IPv4 packet.
    let sent = Ipv4::icmp("10.244.1.2", "10.244.1.3").payload(&[]);
    let mut frame = sent.frame(a.sends());
    frame.resize(60, 0);
    let run = dp.run(FROM_POD, a.host.ifindex, &frame).unwrap();
    assert_eq!(run.action, TC_ACT_REDIRECT);
    let mut want = sent.clone().ttl(63).frame(b.receives());
    want.resize(60, 0);
    assert_eq!(hex(&run.packet), hex(&want));
}

#[test]
fn options_and_fragments_for_a_pod_go_to_the_stack_untouched() {
    let (dp, a, _) = node();
    let frames = [
        // IHL 6: NOP, NOP, NOP, end of options. Ports are not at a fixed
        // offset; the stack routes it.
        ("options", Ipv4::udp("10.244.1.2", "10.244.1.3", 1000, 2000).options(&[1, 1, 1, 0]).frame(a.sends())),
        ("first fragment", Ipv4::udp("10.244.1.2", "10.244.1.3", 1000, 2000).fragment(true, 0).frame(a.sends())),
        ("later fragment", Ipv4::udp("10.244.1.2", "10.244.1.3", 1000, 2000).fragment(false, 185).frame(a.sends())),
        ("fragment to a remote pod", Ipv4::icmp("10.244.1.2", "10.244.2.7").fragment(true, 0).frame(a.sends())),
    ];
    for (what, frame) in &frames {
        let run = dp.run(FROM_POD, a.host.ifindex, frame).unwrap();
        assert_eq!(run.action, TC_ACT_OK, "{what}");
        assert_eq!(hex(&run.packet), hex(frame), "{what}: TTL and all left to the stack");
    }
    assert_eq!(dp.forwards().unwrap(), [(ForwardPath::ToStack, frames.len() as u64)]);
    assert_eq!(dp.drops().unwrap(), []);
}

#[test]
fn from_the_uplink_broken_headers_for_a_pod_are_dropped_and_others_left_to_the_stack() {
    let (dp, _, _) = node();
    let l2 = L2::new([0x02, 0, 0, 0, 0, 0x02], dp.uplink.mac);
    let mut to_pod = Ipv4::icmp("10.244.2.7", "10.244.1.3").frame(l2);
    edit_ipv4(&mut to_pod, 14, 20, |h| h[0] = 0x44);
    assert_eq!(dp.run(FROM_UPLINK, dp.uplink.ifindex, &to_pod).unwrap().action, TC_ACT_SHOT);
    assert_eq!(dp.drops().unwrap(), [(DropReason::BadIpHeader, 1)]);
    // The node's own traffic is the stack's to judge.
    let mut to_node = Ipv4::icmp("172.30.0.2", "172.30.0.1").frame(l2);
    edit_ipv4(&mut to_node, 14, 20, |h| h[0] = 0x44);
    assert_eq!(dp.run(FROM_UPLINK, dp.uplink.ifindex, &to_node).unwrap().action, TC_ACT_OK);
    // A fragment between pods: the stack reassembles it.
    let fragment = Ipv4::icmp("10.244.2.7", "10.244.1.3").fragment(true, 0).frame(l2);
    let run = dp.run(FROM_UPLINK, dp.uplink.ifindex, &fragment).unwrap();
    assert_eq!(run.action, TC_ACT_OK);
    assert_eq!(hex(&run.packet), hex(&fragment));
    assert_eq!(dp.forwards().unwrap(), [(ForwardPath::ToStack, 2)]);
}
