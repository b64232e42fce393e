//! `from_pod`: what a pod sends, on the ingress of its host-side veth.
use sluice_common::{
    maps::{programs::FROM_POD, programs::FROM_POD_NETKIT, FAST_PATH_MARK},
    DropReason, FlowKey, ForwardPath,
};
use sluice_tests::prog_test::{
    be, ip,
    packet::{arp_request, hex},
    Ipv4, TestDatapath, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT,
};

#[test]
fn to_a_local_pod_rewrites_macs_decrements_ttl_and_redirects_into_it() {
    let dp = TestDatapath::node().unwrap();
    let a = dp.add_pod("10.244.1.2").unwrap();
    let b = dp.add_pod("10.244.1.3").unwrap();
    let sent = Ipv4::icmp("10.244.1.2", "10.244.1.3");
    let run = dp.run(FROM_POD, a.host.ifindex, &sent.frame(a.sends())).unwrap();
    assert_eq!(run.action, TC_ACT_REDIRECT);
    // The same packet with TTL 63 and its checksum (etherparse's), from
    // the destination's host end to its pod: nothing else changed.
    let want = sent.clone().ttl(63).frame(b.receives());
    assert_eq!(hex(&run.packet), hex(&want));
    assert_eq!(dp.forwards().unwrap(), [(ForwardPath::PodToLocalPod, 1)]);
    assert_eq!(dp.drops().unwrap(), []);
}

#[test]
fn to_a_remote_pod_natively_decrements_ttl_marks_and_redirects_out_of_the_uplink() {
    let dp = TestDatapath::node().unwrap();
    let a = dp.add_pod("10.244.1.2").unwrap();
    let sent = Ipv4::udp("10.244.1.2", "10.244.2.7", 40000, 53);
    let run = dp.run(FROM_POD, a.host.ifindex, &sent.frame(a.sends())).unwrap();
    assert_eq!(run.action, TC_ACT_REDIRECT);
    // MACs as the pod sent them: bpf_redirect_neigh fills both in later.
    assert_eq!(hex(&run.packet), hex(&sent.clone().ttl(63).frame(a.sends())));
    assert_ne!(run.ctx.mark & FAST_PATH_MARK, 0, "to_uplink must know the fast path sent it");
    assert_eq!(dp.forwards().unwrap(), [(ForwardPath::PodToNode, 1)]);
    assert_eq!(dp.drops().unwrap(), []);
}

#[test]
fn a_foreign_source_address_is_dropped_as_spoofed() {
    let dp = TestDatapath::node().unwrap();
    let a = dp.add_pod("10.244.1.2").unwrap();
    let b = dp.add_pod("10.244.1.3").unwrap();
    // An address no pod has, and the address of another pod on this node
    // sent from a's interface: neither goes anywhere, not even the stack.
    for src in ["10.244.1.99", "10.244.1.3"] {
        let frame = Ipv4::icmp(src, "10.244.1.3").frame(a.sends());
        let run = dp.run(FROM_POD, a.host.ifindex, &frame).unwrap();
        assert_eq!(run.action, TC_ACT_SHOT, "source {src}");
        assert_eq!(hex(&run.packet), hex(&frame), "a dropped packet is left as it was");
    }
    // b's own address from b's interface passes.
    let run = dp.run(FROM_POD, b.host.ifindex, &Ipv4::icmp("10.244.1.3", "8.8.8.8").frame(b.sends())).unwrap();
    assert_eq!(run.action, TC_ACT_OK);
    assert_eq!(dp.drops().unwrap(), [(DropReason::SourceSpoofed, 2)]);
    assert_eq!(dp.forwards().unwrap(), [(ForwardPath::ToStack, 1)]);
}

#[test]
fn ttl_1_to_a_pod_is_dropped_and_to_anything_else_left_to_the_stack() {
    let dp = TestDatapath::node().unwrap();
    let a = dp.add_pod("10.244.1.2").unwrap();
    dp.add_pod("10.244.1.3").unwrap();
    for dst in ["10.244.1.3", "10.244.2.7"] {
        let run = dp.run(FROM_POD, a.host.ifindex, &Ipv4::icmp("10.244.1.2", dst).ttl(1).frame(a.sends())).unwrap();
        assert_eq!(run.action, TC_ACT_SHOT, "to {dst}");
    }
    assert_eq!(dp.drops().unwrap(), [(DropReason::TtlExpired, 2)]);
    // Not pod-bound: the stack answers with ICMP time exceeded.
    let frame = Ipv4::icmp("10.244.1.2", "172.30.0.1").ttl(1).frame(a.sends());
    let run = dp.run(FROM_POD, a.host.ifindex, &frame).unwrap();
    assert_eq!(run.action, TC_ACT_OK);
    assert_eq!(hex(&run.packet), hex(&frame), "the stack gets it untouched");
    assert_eq!(dp.forwards().unwrap(), [(ForwardPath::ToStack, 1)]);
}

#[test]
fn to_a_remote_pod_without_an_uplink_configured_is_dropped() {
    let dp = TestDatapath::load().unwrap();
    let a = dp.add_pod("10.244.1.2").unwrap();
    dp.node_route("10.244.2.0/24", ip("172.30.0.2"), false).unwrap();
    let run = dp.run(FROM_POD, a.host.ifindex, &Ipv4::icmp("10.244.1.2", "10.244.2.7").frame(a.sends())).unwrap();
    assert_eq!(run.action, TC_ACT_SHOT);
    assert_eq!(dp.drops().unwrap(), [(DropReason::NoUplink, 1)]);
}

#[test]
fn to_a_non_pod_address_goes_to_the_stack_untouched() {
    let dp = TestDatapath::node().unwrap();
    let a = dp.add_pod("10.244.1.2").unwrap();
    let frame = Ipv4::tcp_syn("10.244.1.2", "10.96.0.10", 40000, 443).frame(a.sends());
    let run = dp.run(FROM_POD, a.host.ifindex, &frame).unwrap();
    assert_eq!(run.action, TC_ACT_OK);
    assert_eq!(hex(&run.packet), hex(&frame));
    assert_eq!(run.ctx.mark & FAST_PATH_MARK, 0);
    assert_eq!(dp.forwards().unwrap(), [(ForwardPath::ToStack, 1)]);
    assert_eq!(dp.drops().unwrap(), []);
}

#[test]
fn the_reply_of_a_flow_the_stack_forwarded_goes_back_through_the_stack() {
    let dp = TestDatapath::node().unwrap();
    let a = dp.add_pod("10.244.1.2").unwrap();
    dp.add_pod("10.244.1.3").unwrap();
    // A backend's reply to a client kube-proxy DNATed to it.
    let (backend, client) = (ip("10.244.1.2"), ip("10.244.1.3"));
    dp.stack_flow(FlowKey {
        src_be: be(backend),
        dst_be: be(client),
        src_port_be: 8080u16.to_be(),
        dst_port_be: 40000u16.to_be(),
        protocol: 17,
        _pad: [0; 3],
    })
    .unwrap();
    let frame = Ipv4::udp("10.244.1.2", "10.244.1.3", 8080, 40000).frame(a.sends());
    let run = dp.run(FROM_POD, a.host.ifindex, &frame).unwrap();
    assert_eq!(run.action, TC_ACT_OK);
    assert_eq!(hex(&run.packet), hex(&frame), "conntrack must see it as sent");
    // Another port of the same pair is not that flow: fast path.
    let other = Ipv4::udp("10.244.1.2", "10.244.1.3", 8081, 40000).frame(a.sends());
    assert_eq!(dp.run(FROM_POD, a.host.ifindex, &other).unwrap().action, TC_ACT_REDIRECT);
    assert_eq!(dp.forwards().unwrap(), [(ForwardPath::PodToLocalPod, 1), (ForwardPath::StackFlowReply, 1)]);
}

#[test]
fn arp_goes_to_the_stack() {
    let dp = TestDatapath::node().unwrap();
    let a = dp.add_pod("10.244.1.2").unwrap();
    let frame = arp_request(a.sends(), a.ip, ip("169.254.1.1"));
    let run = dp.run(FROM_POD, a.host.ifindex, &frame).unwrap();
    assert_eq!(run.action, TC_ACT_OK);
    assert_eq!(hex(&run.packet), hex(&frame));
    assert_eq!(dp.forwards().unwrap(), [(ForwardPath::ToStack, 1)]);
    assert_eq!(dp.drops().unwrap(), []);
}

#[test]
fn netkit_delivers_to_a_local_pod_through_its_host_end_marked() {
    let dp = TestDatapath::node().unwrap();
    let a = dp.add_pod("10.244.1.2").unwrap();
    let b = dp.add_pod("10.244.1.3").unwrap();
    let sent = Ipv4::icmp("10.244.1.2", "10.244.1.3");
    let run = dp.run(FROM_POD_NETKIT, a.host.ifindex, &sent.frame(a.sends())).unwrap();
    assert_eq!(run.action, TC_ACT_REDIRECT);
    assert_eq!(hex(&run.packet), hex(&sent.clone().ttl(63).frame(b.receives())));
    assert_ne!(run.ctx.mark & FAST_PATH_MARK, 0, "b's to_pod must know the fast path sent it");
    assert_eq!(dp.forwards().unwrap(), [(ForwardPath::PodToLocalPod, 1)]);
}
