//! `from_pod`'s IPv6 path on a dual-stack node (`from_pod6`): a pod's own
//! IPv6 address goes to the node's stack, counted; a forged one is dropped
//! and counted as `source_spoofed`; neighbour discovery and MLD from
//! link-local or unspecified sources reach the stack; an IPv4-only node
//! keeps dropping IPv6 as `unknown_l3` (`unknown_l3.rs`).
use std::net::Ipv6Addr;

use sluice_common::{
    maps::programs::{FROM_POD, FROM_POD_NETKIT},
    DropReason, ForwardPath,
};
use sluice_tests::prog_test::{
    packet::{hex, icmp6_echo},
    TestDatapath, TC_ACT_OK, TC_ACT_SHOT,
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
