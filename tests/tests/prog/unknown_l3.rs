//! Frames from a pod that are neither IPv4 nor ARP: until sluice supports
//! IPv6 nothing checks their source, so they are dropped and counted
//! (`unknown_l3`) instead of reaching the node's stack.
use sluice_common::{
    maps::programs::{FROM_POD, FROM_POD_NETKIT},
    DropReason, ForwardPath,
};
use sluice_tests::prog_test::{
    ip,
    packet::{arp_request, hex, icmp6_echo},
    TestDatapath, TC_ACT_OK, TC_ACT_SHOT,
};

#[test]
fn ipv6_from_a_pod_is_dropped_and_counted() {
    let dp = TestDatapath::node().unwrap();
    let a = dp.add_pod("10.244.1.2").unwrap();
    let frame = icmp6_echo(a.sends(), "fe80::1".parse().unwrap(), "fd00::1".parse().unwrap());
    for program in [FROM_POD, FROM_POD_NETKIT] {
        let run = dp.run(program, a.host.ifindex, &frame).unwrap();
        assert_eq!(run.action, TC_ACT_SHOT, "{program}");
    }
    assert_eq!(dp.drops().unwrap(), [(DropReason::UnknownL3, 2)]);
    assert_eq!(dp.forwards().unwrap(), []);
}

#[test]
fn other_ethertypes_from_a_pod_are_dropped_and_counted() {
    let dp = TestDatapath::node().unwrap();
    let a = dp.add_pod("10.244.1.2").unwrap();
    // A VLAN tag around ARP, and an EtherType nobody uses.
    let mut tagged = arp_request(a.sends(), a.ip, ip("169.254.1.1"));
    tagged.splice(12..12, [0x81, 0x00, 0x00, 0x64]);
    let mut unknown = arp_request(a.sends(), a.ip, ip("169.254.1.1"));
    unknown[12..14].copy_from_slice(&[0x88, 0xb5]);
    for frame in [&tagged, &unknown] {
        assert_eq!(dp.run(FROM_POD, a.host.ifindex, frame).unwrap().action, TC_ACT_SHOT, "{}", hex(frame));
    }
    assert_eq!(dp.drops().unwrap(), [(DropReason::UnknownL3, 2)]);
}

#[test]
fn arp_from_a_pod_still_reaches_the_stack() {
    let dp = TestDatapath::node().unwrap();
    let a = dp.add_pod("10.244.1.2").unwrap();
    let frame = arp_request(a.sends(), a.ip, ip("169.254.1.1"));
    for program in [FROM_POD, FROM_POD_NETKIT] {
        let run = dp.run(program, a.host.ifindex, &frame).unwrap();
        assert_eq!(run.action, TC_ACT_OK, "{program}");
        assert_eq!(hex(&run.packet), hex(&frame));
    }
    assert_eq!(dp.forwards().unwrap(), [(ForwardPath::ToStack, 2)]);
    assert_eq!(dp.drops().unwrap(), []);
}
