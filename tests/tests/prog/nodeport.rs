//! Services from outside the cluster at the uplink (issue 27, `lb4`):
//! `from_uplink` DNATs a world client's packet for a NodePort or an
//! external IP into a local backend, or DNATs and SNATs it towards a
//! backend on another node; the answers are translated back (`from_pod`
//! for a local backend, `from_uplink` for a remote one). Checksums are
//! checked by comparing with packets built whole (etherparse).
use etherparse::{
    icmpv4::DestUnreachableHeader, Icmpv4Type, IpHeaders, IpNumber, Ipv4Header, PacketBuilder, PacketBuilderStep,
};
use sluice_common::{
    maps::programs::{FROM_POD, FROM_UPLINK},
    nat::{Lb4Config, Nat4Counter, Nat4Entry, Nat4Key, SourceRangeKey, LB4_ENABLED, NAT4_FORWARD, NAT4_REPLY},
    services::{
        Backend, BackendSlot, ServiceKey, ServiceValue, SCOPE_ADDRESS, SERVICE_EXTERNAL_IP, SERVICE_LOAD_BALANCER,
        SERVICE_SOURCE_RANGES,
    },
    DropReason, ForwardPath,
};
use sluice_node::datapath::{
    nat4_maps::{set_lb4_config, Nat4Table, SourceRanges},
    service_maps::ServiceMaps,
};
use sluice_tests::prog_test::{
    be, ip,
    lb4::{self, from_world, nat4_counter, WORLD},
    packet::{be16, hex},
    Ipv4, TestDatapath, L2, NODE_IP, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT,
};

const NODE_PORT: u16 = 30080;
const TCP: u8 = 6;
const UDP: u8 = 17;

/// A node translating Services at its uplink, with NodePort `NODE_PORT`
/// (TCP and UDP) on its address, backed by `backend:7777`.
fn node_with_node_port(backend: &str) -> TestDatapath {
    lb4::node_with_node_port(LB4_ENABLED, NODE_PORT, &[TCP, UDP], backend, 7777)
}

/// The IPv4 packet of a frame (its Ethernet header left out: a redirect
/// through the FIB writes the MACs after the program).
fn l3(frame: &[u8]) -> String {
    hex(&frame[14..])
}

#[test]
fn a_world_connection_to_a_node_port_reaches_the_local_backend_and_its_answer_comes_from_the_node_port() {
    let dp = node_with_node_port("10.244.1.3");
    let b = dp.add_pod("10.244.1.3").unwrap();
    for (syn, dnated, answer, reversed) in [
        (
            Ipv4::tcp_syn(WORLD, NODE_IP, 40000, NODE_PORT),
            Ipv4::tcp_syn(WORLD, "10.244.1.3", 40000, 7777),
            Ipv4::tcp_ack("10.244.1.3", WORLD, 7777, 40000),
            Ipv4::tcp_ack(NODE_IP, WORLD, NODE_PORT, 40000),
        ),
        (
            Ipv4::udp(WORLD, NODE_IP, 40001, NODE_PORT),
            Ipv4::udp(WORLD, "10.244.1.3", 40001, 7777),
            Ipv4::udp("10.244.1.3", WORLD, 7777, 40001),
            Ipv4::udp(NODE_IP, WORLD, NODE_PORT, 40001),
        ),
    ] {
        let run = dp.run(FROM_UPLINK, dp.uplink.ifindex, &syn.frame(from_world(&dp))).unwrap();
        assert_eq!(run.action, TC_ACT_REDIRECT);
        assert_eq!(hex(&run.packet), hex(&dnated.ttl(63).frame(b.receives())), "DNATed into the backend");
        let run = dp.run(FROM_POD, b.host.ifindex, &answer.frame(b.sends())).unwrap();
        assert_eq!(run.action, TC_ACT_REDIRECT, "the answer goes straight out of the uplink");
        assert_eq!(l3(&run.packet), l3(&reversed.ttl(63).frame(b.sends())), "as from the NodePort");
    }
    // Later packets of the connection use its entry.
    let run =
        dp.run(FROM_UPLINK, dp.uplink.ifindex, &Ipv4::tcp_ack(WORLD, NODE_IP, 40000, NODE_PORT).frame(from_world(&dp)));
    assert_eq!(run.unwrap().action, TC_ACT_REDIRECT);
    assert_eq!(nat4_counter(&dp, Nat4Counter::NewLocal), 2);
    assert_eq!(nat4_counter(&dp, Nat4Counter::Forwarded), 1);
    assert_eq!(nat4_counter(&dp, Nat4Counter::Reversed), 2);
    assert_eq!(dp.drops().unwrap(), []);
    let fwd = dp.forwards().unwrap();
    assert!(
        fwd.contains(&(ForwardPath::UplinkToService, 3)) && fwd.contains(&(ForwardPath::ServiceReply, 2)),
        "{fwd:?}"
    );
}

#[test]
fn a_remote_backend_gets_the_node_address_and_a_snat_port_and_its_answer_goes_back_to_the_client() {
    // 10.244.2.0/24 is the native peer's (172.30.0.2).
    let dp = node_with_node_port("10.244.2.9");
    let syn = Ipv4::tcp_syn(WORLD, NODE_IP, 40000, NODE_PORT);
    let run = dp.run(FROM_UPLINK, dp.uplink.ifindex, &syn.frame(from_world(&dp))).unwrap();
    assert_eq!(run.action, TC_ACT_REDIRECT);
    let snat_port = be16(&run.packet, 14 + 20);
    assert!((61000..=65535).contains(&snat_port), "SNAT port {snat_port}");
    let want = Ipv4::tcp_syn(NODE_IP, "10.244.2.9", snat_port, 7777).ttl(63).frame(from_world(&dp));
    assert_eq!(l3(&run.packet), l3(&want), "DNAT and SNAT to the node's address");
    // Both halves are in NAT4.
    let nat = Nat4Table::open(dp.pins()).unwrap();
    let reply_key = Nat4Key {
        src_be: be(ip("10.244.2.9")),
        dst_be: be(ip(NODE_IP)),
        src_port_be: 7777u16.to_be(),
        dst_port_be: snat_port.to_be(),
        protocol: TCP,
        direction: NAT4_REPLY,
        _pad: [0; 2],
    };
    let reply = nat.get(&reply_key).unwrap().expect("the reply half reserves the SNAT port");
    assert_eq!((reply.src_be, reply.dst_be), (be(ip(NODE_IP)), be(ip(WORLD))));

    // The backend's answer, from its node.
    let answer =
        Ipv4::tcp_ack("10.244.2.9", NODE_IP, 7777, snat_port).frame(L2::new([2, 0, 0, 0, 0, 2], dp.uplink.mac));
    let run = dp.run(FROM_UPLINK, dp.uplink.ifindex, &answer).unwrap();
    assert_eq!(run.action, TC_ACT_REDIRECT);
    let back = Ipv4::tcp_ack(NODE_IP, WORLD, NODE_PORT, 40000).ttl(63).frame(from_world(&dp));
    assert_eq!(l3(&run.packet), l3(&back), "back to the client as from the NodePort");
    assert_eq!(nat4_counter(&dp, Nat4Counter::NewRemote), 1);
    assert_eq!(nat4_counter(&dp, Nat4Counter::Reversed), 1);
    assert_eq!(dp.drops().unwrap(), []);
}

#[test]
fn a_snat_port_held_by_another_connection_is_never_reused() {
    let dp = node_with_node_port("10.244.2.9");
    // One SNAT port only, and it is taken (by a connection to the same
    // backend from another client).
    set_lb4_config(dp.pins(), Lb4Config { flags: LB4_ENABLED, snat_port_min: 61000, snat_port_max: 61000 }).unwrap();
    let held_key = Nat4Key {
        src_be: be(ip("10.244.2.9")),
        dst_be: be(ip(NODE_IP)),
        src_port_be: 7777u16.to_be(),
        dst_port_be: 61000u16.to_be(),
        protocol: TCP,
        direction: NAT4_REPLY,
        _pad: [0; 2],
    };
    let held = Nat4Entry {
        src_be: be(ip(NODE_IP)),
        dst_be: be(ip("198.51.100.1")),
        src_port_be: NODE_PORT.to_be(),
        dst_port_be: 50000u16.to_be(),
        ..Default::default()
    };
    Nat4Table::open(dp.pins()).unwrap().insert(held_key, held).unwrap();
    let run =
        dp.run(FROM_UPLINK, dp.uplink.ifindex, &Ipv4::tcp_syn(WORLD, NODE_IP, 40000, NODE_PORT).frame(from_world(&dp)));
    assert_eq!(run.unwrap().action, TC_ACT_SHOT);
    assert_eq!(dp.drops().unwrap(), [(DropReason::Nat4PortExhausted, 1)]);
    assert!(nat4_counter(&dp, Nat4Counter::PortCollision) >= 1);
    assert_eq!(nat4_counter(&dp, Nat4Counter::PortExhausted), 1);
    let nat = Nat4Table::open(dp.pins()).unwrap();
    assert_eq!(nat.get(&held_key).unwrap(), Some(held), "the other connection's entry is untouched");
    assert_eq!(nat.all().unwrap().len(), 1, "nothing half-written");
    // Its answers still go to its own client.
    let answer = Ipv4::tcp_ack("10.244.2.9", NODE_IP, 7777, 61000).frame(L2::new([2, 0, 0, 0, 0, 2], dp.uplink.mac));
    let run = dp.run(FROM_UPLINK, dp.uplink.ifindex, &answer).unwrap();
    assert_eq!(
        l3(&run.packet),
        l3(&Ipv4::tcp_ack(NODE_IP, "198.51.100.1", NODE_PORT, 50000).ttl(63).frame(from_world(&dp)))
    );
}

#[test]
fn external_ips_are_translated_and_cluster_ips_and_a_switched_off_node_are_left_to_the_stack() {
    let dp = node_with_node_port("10.244.1.3");
    let b = dp.add_pod("10.244.1.3").unwrap();
    let mut maps = ServiceMaps::open(dp.pins()).unwrap();
    let addr = |ip_s: &str, flags| {
        (ServiceKey { vip_be: be(ip(ip_s)), port_be: 80u16.to_be(), protocol: TCP, scope: SCOPE_ADDRESS }, flags)
    };
    for (key, flags) in [addr("192.0.2.10", SERVICE_EXTERNAL_IP), addr("10.96.0.10", 0)] {
        maps.put_service(
            key,
            ServiceValue { backend_set: 1, count: 1, affinity_timeout_secs: 0, flags, service_port_id: 0 },
        )
        .unwrap();
    }
    let run =
        dp.run(FROM_UPLINK, dp.uplink.ifindex, &Ipv4::tcp_syn(WORLD, "192.0.2.10", 40000, 80).frame(from_world(&dp)));
    let run = run.unwrap();
    assert_eq!(run.action, TC_ACT_REDIRECT);
    assert_eq!(hex(&run.packet), hex(&Ipv4::tcp_syn(WORLD, "10.244.1.3", 40000, 7777).ttl(63).frame(b.receives())));
    // A ClusterIP is the cluster's: not from outside.
    let cluster_ip = Ipv4::tcp_syn(WORLD, "10.96.0.10", 40000, 80).frame(from_world(&dp));
    let run = dp.run(FROM_UPLINK, dp.uplink.ifindex, &cluster_ip).unwrap();
    assert_eq!((run.action, hex(&run.packet)), (TC_ACT_OK, hex(&cluster_ip)));
    // Switched off (--kube-proxy-replacement=false): kube-proxy's rules.
    set_lb4_config(dp.pins(), Lb4Config { flags: 0, snat_port_min: 61000, snat_port_max: 65535 }).unwrap();
    let np = Ipv4::tcp_syn(WORLD, NODE_IP, 40002, NODE_PORT).frame(from_world(&dp));
    let run = dp.run(FROM_UPLINK, dp.uplink.ifindex, &np).unwrap();
    assert_eq!((run.action, hex(&run.packet)), (TC_ACT_OK, hex(&np)));
    assert_eq!(nat4_counter(&dp, Nat4Counter::NewLocal), 1);
    let _ = NAT4_FORWARD;
}

/// What kube-proxy's REJECT would answer, built whole by etherparse: from
/// `frontend` to the world client, Ethernet back to the MAC it came from,
/// TTL 64, DF, identification 0.
fn refusal(dp: &TestDatapath, frontend: &str, l4: impl FnOnce(PacketBuilderStep<IpHeaders>, &mut Vec<u8>)) -> Vec<u8> {
    let world = from_world(dp);
    let mut h = Ipv4Header::new(0, 64, IpNumber::TCP, ip(frontend).octets(), ip(WORLD).octets()).unwrap();
    h.identification = 0;
    h.dont_fragment = true;
    let mut out = Vec::new();
    l4(PacketBuilder::ethernet2(world.dst, world.src).ip(IpHeaders::Ipv4(h, Default::default())), &mut out);
    out
}

#[test]
fn a_service_without_endpoints_is_refused_with_a_reset_or_port_unreachable_counted_and_a_stray_segment_is_left_to_the_stack(
) {
    let dp = node_with_node_port("10.244.1.3");
    let mut maps = ServiceMaps::open(dp.pins()).unwrap();
    for protocol in [TCP, UDP] {
        maps.put_service(
            ServiceKey::node_port(30090u16.to_be(), protocol),
            ServiceValue { backend_set: 2, count: 0, affinity_timeout_secs: 0, flags: 0, service_port_id: 0 },
        )
        .unwrap();
    }
    // A SYN (16 bytes of data, seq 1000): RST, ACK 1017, from the NodePort.
    let syn = Ipv4::tcp_syn(WORLD, NODE_IP, 40000, 30090).frame(from_world(&dp));
    let run = dp.run(FROM_UPLINK, dp.uplink.ifindex, &syn).unwrap();
    assert_eq!(run.action, TC_ACT_REDIRECT, "sent back, not dropped");
    let rst = refusal(&dp, NODE_IP, |b, out| b.tcp(30090, 40000, 0, 0).rst().ack(1017).write(out, &[]).unwrap());
    assert_eq!(hex(&run.packet), hex(&rst), "TCP RST, every checksum etherparse's");
    // A datagram: ICMP port unreachable quoting its IPv4 and UDP headers.
    let datagram = Ipv4::udp(WORLD, NODE_IP, 40001, 30090).frame(from_world(&dp));
    let run = dp.run(FROM_UPLINK, dp.uplink.ifindex, &datagram).unwrap();
    assert_eq!(run.action, TC_ACT_REDIRECT);
    let unreachable = refusal(&dp, NODE_IP, |b, out| {
        b.icmpv4(Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Port)).write(out, &datagram[14..42]).unwrap()
    });
    assert_eq!(hex(&run.packet), hex(&unreachable), "ICMP port unreachable");
    assert_eq!(dp.drops().unwrap(), [(DropReason::ServiceNoEndpoints, 2)], "still counted");
    // An external IP of such a Service: from that address.
    maps.put_service(
        ServiceKey { vip_be: be(ip("192.0.2.10")), port_be: 80u16.to_be(), protocol: TCP, scope: SCOPE_ADDRESS },
        ServiceValue {
            backend_set: 2,
            count: 0,
            affinity_timeout_secs: 0,
            flags: SERVICE_EXTERNAL_IP,
            service_port_id: 0,
        },
    )
    .unwrap();
    let syn = Ipv4::tcp_syn(WORLD, "192.0.2.10", 40002, 80).frame(from_world(&dp));
    let run = dp.run(FROM_UPLINK, dp.uplink.ifindex, &syn).unwrap();
    let rst = refusal(&dp, "192.0.2.10", |b, out| b.tcp(80, 40002, 0, 0).rst().ack(1017).write(out, &[]).unwrap());
    assert_eq!((run.action, hex(&run.packet)), (TC_ACT_REDIRECT, hex(&rst)));
    // An ACK of no connection this node knows: the stack answers (RST).
    let stray = Ipv4::tcp_ack(WORLD, NODE_IP, 40003, NODE_PORT).frame(from_world(&dp));
    let run = dp.run(FROM_UPLINK, dp.uplink.ifindex, &stray).unwrap();
    assert_eq!((run.action, hex(&run.packet)), (TC_ACT_OK, hex(&stray)));
    assert_eq!(Nat4Table::open(dp.pins()).unwrap().all().unwrap().len(), 0);
}

#[test]
fn external_traffic_policy_local_sends_outside_clients_to_local_backends_only_and_keeps_their_address() {
    use sluice_common::services::external_local_flags;
    let dp = node_with_node_port("10.244.1.3");
    let b = dp.add_pod("10.244.1.3").unwrap();
    let mut maps = ServiceMaps::open(dp.pins()).unwrap();
    // The agent puts this node's backends first: one here, then one on
    // the native peer and one on the tunneled peer.
    for (slot, ip_s) in ["10.244.1.3", "10.244.2.9", "10.244.3.4"].iter().enumerate() {
        let backend = Backend { ip_be: be(ip(ip_s)), port_be: 7778u16.to_be(), _pad: 0 };
        maps.put_backend(BackendSlot { set: 5, slot: slot as u32 }, backend).unwrap();
    }
    let local = ServiceValue {
        backend_set: 5,
        count: 3,
        affinity_timeout_secs: 0,
        flags: external_local_flags(1),
        service_port_id: 0,
    };
    maps.put_service(ServiceKey::node_port(30081u16.to_be(), TCP), local).unwrap();
    for client_port in 41000..41020 {
        let syn = Ipv4::tcp_syn(WORLD, NODE_IP, client_port, 30081).frame(from_world(&dp));
        let run = dp.run(FROM_UPLINK, dp.uplink.ifindex, &syn).unwrap();
        assert_eq!(run.action, TC_ACT_REDIRECT);
        let want = Ipv4::tcp_syn(WORLD, "10.244.1.3", client_port, 7778).ttl(63).frame(b.receives());
        assert_eq!(hex(&run.packet), hex(&want), "the local backend, the world's own address");
    }
    assert_eq!(nat4_counter(&dp, Nat4Counter::NewLocal), 20);
    assert_eq!(nat4_counter(&dp, Nat4Counter::NewRemote), 0);
    // No local backend (endpoints elsewhere only): dropped, counted.
    let none_here = ServiceValue { flags: external_local_flags(0), ..local };
    maps.put_service(ServiceKey::node_port(30081u16.to_be(), TCP), none_here).unwrap();
    let syn = Ipv4::tcp_syn(WORLD, NODE_IP, 42000, 30081).frame(from_world(&dp));
    assert_eq!(dp.run(FROM_UPLINK, dp.uplink.ifindex, &syn).unwrap().action, TC_ACT_SHOT);
    assert_eq!(dp.drops().unwrap(), [(DropReason::ServiceNoLocalEndpoints, 1)]);
}

#[test]
fn a_load_balancer_ip_with_source_ranges_admits_clients_in_them_only_and_its_node_port_everyone() {
    let dp = node_with_node_port("10.244.1.3");
    let b = dp.add_pod("10.244.1.3").unwrap();
    let lb = ServiceKey { vip_be: be(ip("198.51.100.7")), port_be: 80u16.to_be(), protocol: TCP, scope: SCOPE_ADDRESS };
    let flags = SERVICE_LOAD_BALANCER | SERVICE_SOURCE_RANGES;
    ServiceMaps::open(dp.pins())
        .unwrap()
        .put_service(lb, ServiceValue { backend_set: 1, count: 1, affinity_timeout_secs: 0, flags, service_port_id: 0 })
        .unwrap();
    let range = SourceRangeKey {
        vip_be: lb.vip_be,
        port_be: lb.port_be,
        protocol: TCP,
        _pad: 0,
        src_be: be(ip("203.0.113.0")),
    };
    SourceRanges::open(dp.pins()).unwrap().insert(range, 24).unwrap();
    // Inside 203.0.113.0/24: translated into the backend.
    let syn = Ipv4::tcp_syn("203.0.113.9", "198.51.100.7", 40000, 80).frame(from_world(&dp));
    let run = dp.run(FROM_UPLINK, dp.uplink.ifindex, &syn).unwrap();
    assert_eq!(run.action, TC_ACT_REDIRECT);
    let want = Ipv4::tcp_syn("203.0.113.9", "10.244.1.3", 40000, 7777).ttl(63).frame(b.receives());
    assert_eq!(hex(&run.packet), hex(&want));
    // Outside it (the world, and the range's neighbour): dropped, counted.
    for client in [WORLD, "203.0.114.1"] {
        let syn = Ipv4::tcp_syn(client, "198.51.100.7", 40001, 80).frame(from_world(&dp));
        assert_eq!(dp.run(FROM_UPLINK, dp.uplink.ifindex, &syn).unwrap().action, TC_ACT_SHOT, "{client}");
    }
    assert_eq!(dp.drops().unwrap(), [(DropReason::LoadBalancerSourceRange, 2)]);
    // Another frontend's ranges are not this one's: a range on port 81
    // admits nobody on 80.
    let mut other = range;
    other.port_be = 81u16.to_be();
    other.src_be = be(ip("192.0.2.0"));
    SourceRanges::open(dp.pins()).unwrap().insert(other, 24).unwrap();
    let syn = Ipv4::tcp_syn(WORLD, "198.51.100.7", 40002, 80).frame(from_world(&dp));
    assert_eq!(dp.run(FROM_UPLINK, dp.uplink.ifindex, &syn).unwrap().action, TC_ACT_SHOT);
    // The NodePort (no ranges: kube-proxy's iptables mode checks the
    // ingress IPs only) admits the world.
    let syn = Ipv4::tcp_syn(WORLD, NODE_IP, 40003, NODE_PORT).frame(from_world(&dp));
    assert_eq!(dp.run(FROM_UPLINK, dp.uplink.ifindex, &syn).unwrap().action, TC_ACT_REDIRECT);
    assert_eq!(dp.drops().unwrap(), [(DropReason::LoadBalancerSourceRange, 3)]);
}

/// `frame` (a TCP segment) with its flags byte set to `flags` (the
/// checksum is not fixed: nothing here compares it).
fn with_tcp_flags(mut frame: Vec<u8>, flags: u8) -> Vec<u8> {
    frame[14 + 20 + 13] = flags;
    frame
}

const FIN_ACK: u8 = 0x11;
const RST_ACK: u8 = 0x14;

/// The reply key of a connection SNATed to `NODE_IP:snat_port` towards
/// the backend 10.244.2.9:7777.
fn snat_reply_key(snat_port: u16) -> Nat4Key {
    Nat4Key {
        src_be: be(ip("10.244.2.9")),
        dst_be: be(ip(NODE_IP)),
        src_port_be: 7777u16.to_be(),
        dst_port_be: snat_port.to_be(),
        protocol: TCP,
        direction: NAT4_REPLY,
        _pad: [0; 2],
    }
}

fn from_backend_node(dp: &TestDatapath) -> L2 {
    L2::new([2, 0, 0, 0, 0, 2], dp.uplink.mac)
}

#[test]
fn a_closed_connections_snat_port_goes_to_a_new_connection_and_an_open_or_half_closed_ones_never() {
    use sluice_common::nat::{NAT4_FIN_BACKEND, NAT4_FIN_CLIENT, NAT4_RST};
    use sluice_node::datapath::{nat4_gc, policy_ct_gc};
    let dp = node_with_node_port("10.244.2.9");
    // One SNAT port: every connection to the backend wants 61000.
    set_lb4_config(dp.pins(), Lb4Config { flags: LB4_ENABLED, snat_port_min: 61000, snat_port_max: 61000 }).unwrap();
    let syn = |client_port: u16| {
        let frame = Ipv4::tcp_syn(WORLD, NODE_IP, client_port, NODE_PORT).frame(from_world(&dp));
        dp.run(FROM_UPLINK, dp.uplink.ifindex, &frame).unwrap()
    };
    let client = |client_port: u16, flags: u8| {
        let frame = with_tcp_flags(Ipv4::tcp_ack(WORLD, NODE_IP, client_port, NODE_PORT).frame(from_world(&dp)), flags);
        dp.run(FROM_UPLINK, dp.uplink.ifindex, &frame).unwrap()
    };
    let backend = |flags: u8| {
        let frame =
            with_tcp_flags(Ipv4::tcp_ack("10.244.2.9", NODE_IP, 7777, 61000).frame(from_backend_node(&dp)), flags);
        dp.run(FROM_UPLINK, dp.uplink.ifindex, &frame).unwrap()
    };
    let holder = || Nat4Table::open(dp.pins()).unwrap().get(&snat_reply_key(61000)).unwrap().unwrap();
    // A (client port 40000) holds the port; B (40001) is refused while A
    // is open, after A's FIN (half-closed: the backend may still send),
    // and just after the backend's FIN too (the last ACK's time).
    assert_eq!(syn(40000).action, TC_ACT_REDIRECT);
    assert_eq!(backend(0x10).action, TC_ACT_REDIRECT, "A answered");
    assert_eq!(syn(40001).action, TC_ACT_SHOT, "an open connection's port is never taken");
    assert_eq!(client(40000, FIN_ACK).action, TC_ACT_REDIRECT, "A's FIN is translated as any segment");
    assert_eq!(holder().flags & (NAT4_FIN_CLIENT | NAT4_FIN_BACKEND), NAT4_FIN_CLIENT);
    assert_eq!(syn(40001).action, TC_ACT_SHOT, "half-closed: never taken");
    let run = backend(FIN_ACK);
    assert_eq!(run.action, TC_ACT_REDIRECT);
    assert_eq!(be16(&run.packet, 14 + 22), 40000, "the backend's FIN reaches A");
    assert_eq!(holder().flags & (NAT4_FIN_CLIENT | NAT4_FIN_BACKEND), NAT4_FIN_CLIENT | NAT4_FIN_BACKEND);
    assert_eq!(syn(40001).action, TC_ACT_SHOT, "closed by FINs a moment ago: not yet");
    assert_eq!(nat4_counter(&dp, Nat4Counter::PortTakenOver), 0);
    // Three seconds later (A's entries aged through the pin): B takes it.
    let mut nat = Nat4Table::open(dp.pins()).unwrap();
    for (k, mut e) in nat.all().unwrap() {
        e.last_seen_ns -= 3_000_000_000;
        nat.insert(k, e).unwrap();
    }
    let run = syn(40001);
    assert_eq!(run.action, TC_ACT_REDIRECT, "{:?}", dp.drops().unwrap());
    assert_eq!(be16(&run.packet, 14 + 20), 61000, "B got A's port");
    assert_eq!(nat4_counter(&dp, Nat4Counter::PortTakenOver), 1);
    let run = backend(0x10);
    assert_eq!(be16(&run.packet, 14 + 22), 40001, "the port's answers are B's now, never A's");
    assert_eq!(holder().flags & (NAT4_FIN_CLIENT | NAT4_FIN_BACKEND | NAT4_RST), 0, "B's pair is open");
    // A's late segment (its forward half, left for the GC) marks nothing
    // of B's.
    client(40000, FIN_ACK);
    client(40000, RST_ACK);
    assert_eq!(holder().flags & (NAT4_FIN_CLIENT | NAT4_FIN_BACKEND | NAT4_RST), 0, "A's segments close nothing of B");
    assert_eq!(syn(40002).action, TC_ACT_SHOT, "B's port stays B's");
    // An RST frees the port at once: C (40002) takes it from B.
    assert_eq!(client(40001, RST_ACK).action, TC_ACT_REDIRECT);
    let run = syn(40002);
    assert_eq!(run.action, TC_ACT_REDIRECT, "{:?}", dp.drops().unwrap());
    assert_eq!(nat4_counter(&dp, Nat4Counter::PortTakenOver), 2);
    assert_eq!(dp.drops().unwrap(), [(DropReason::Nat4PortExhausted, 4)]);
    // The GC, 11 s on: A's and B's left-over forward halves (closed) go;
    // C's pair (open) stays, though the twin key of each left-over half
    // is C's reply half.
    let later = policy_ct_gc::monotonic_now_ns().unwrap() + 11_000_000_000;
    nat4_gc::collect(&mut nat, later, &Default::default()).unwrap();
    let mut left: Vec<(u16, u8)> =
        nat.all().unwrap().into_iter().map(|(k, _)| (u16::from_be(k.src_port_be), k.direction)).collect();
    left.sort();
    assert_eq!(left, [(7777, NAT4_REPLY), (40002, NAT4_FORWARD)], "C's pair, and only it");
}

#[test]
fn a_syn_on_a_closed_connections_tuple_is_balanced_afresh_and_on_an_open_one_is_a_retransmission() {
    let dp = node_with_node_port("10.244.1.3");
    let b = dp.add_pod("10.244.1.3").unwrap();
    let syn = Ipv4::tcp_syn(WORLD, NODE_IP, 40000, NODE_PORT).frame(from_world(&dp));
    let dnated = hex(&Ipv4::tcp_syn(WORLD, "10.244.1.3", 40000, 7777).ttl(63).frame(b.receives()));
    let run = dp.run(FROM_UPLINK, dp.uplink.ifindex, &syn).unwrap();
    assert_eq!((run.action, hex(&run.packet)), (TC_ACT_REDIRECT, dnated.clone()));
    // Retransmitted while open: the same connection.
    let run = dp.run(FROM_UPLINK, dp.uplink.ifindex, &syn).unwrap();
    assert_eq!((run.action, hex(&run.packet)), (TC_ACT_REDIRECT, dnated.clone()));
    assert_eq!((nat4_counter(&dp, Nat4Counter::NewLocal), nat4_counter(&dp, Nat4Counter::Reopened)), (1, 0));
    // The backend resets it (its answer through from_pod), then the client
    // reuses its port: a new connection, with an open pair.
    let rst = with_tcp_flags(Ipv4::tcp_ack("10.244.1.3", WORLD, 7777, 40000).frame(b.sends()), RST_ACK);
    assert_eq!(dp.run(FROM_POD, b.host.ifindex, &rst).unwrap().action, TC_ACT_REDIRECT);
    let nat = Nat4Table::open(dp.pins()).unwrap();
    assert!(nat.all().unwrap().iter().all(|(_, e)| e.flags & sluice_common::nat::NAT4_RST != 0), "both halves marked");
    let run = dp.run(FROM_UPLINK, dp.uplink.ifindex, &syn).unwrap();
    assert_eq!((run.action, hex(&run.packet)), (TC_ACT_REDIRECT, dnated));
    assert_eq!((nat4_counter(&dp, Nat4Counter::NewLocal), nat4_counter(&dp, Nat4Counter::Reopened)), (2, 1));
    let all = nat.all().unwrap();
    assert_eq!(all.len(), 2);
    assert!(all.iter().all(|(_, e)| e.flags == 0), "a fresh pair: {all:?}");
    assert_eq!(dp.drops().unwrap(), []);
}

/// While the agent carries `NAT4` over to a new layout (`LB4_PAUSED`), a
/// new connection from outside is dropped (`nat4_migrating`), nothing
/// written for it; a connection already in the table carries on; lifted,
/// the client's retransmission is translated.
#[test]
fn while_nat4_migrates_new_connections_from_outside_are_held_back_and_open_ones_carry_on() {
    use sluice_common::nat::LB4_PAUSED;
    let dp = node_with_node_port("10.244.2.9");
    let open = Ipv4::tcp_syn(WORLD, NODE_IP, 40000, NODE_PORT);
    assert_eq!(dp.run(FROM_UPLINK, dp.uplink.ifindex, &open.frame(from_world(&dp))).unwrap().action, TC_ACT_REDIRECT);
    let config = |flags| Lb4Config { flags, snat_port_min: 61000, snat_port_max: 65535 };
    set_lb4_config(dp.pins(), config(LB4_ENABLED | LB4_PAUSED)).unwrap();

    let new = Ipv4::tcp_syn(WORLD, NODE_IP, 40001, NODE_PORT).frame(from_world(&dp));
    assert_eq!(dp.run(FROM_UPLINK, dp.uplink.ifindex, &new).unwrap().action, TC_ACT_SHOT);
    let udp = Ipv4::udp(WORLD, NODE_IP, 40002, NODE_PORT).frame(from_world(&dp));
    assert_eq!(dp.run(FROM_UPLINK, dp.uplink.ifindex, &udp).unwrap().action, TC_ACT_SHOT);
    assert_eq!(dp.drops().unwrap(), [(DropReason::Nat4Migrating, 2)]);
    assert_eq!(nat4_counter(&dp, Nat4Counter::NewRemote), 1, "nothing written for a held-back connection");
    let ack = Ipv4::tcp_ack(WORLD, NODE_IP, 40000, NODE_PORT).frame(from_world(&dp));
    assert_eq!(dp.run(FROM_UPLINK, dp.uplink.ifindex, &ack).unwrap().action, TC_ACT_REDIRECT, "the open one");

    set_lb4_config(dp.pins(), config(LB4_ENABLED)).unwrap();
    assert_eq!(dp.run(FROM_UPLINK, dp.uplink.ifindex, &new).unwrap().action, TC_ACT_REDIRECT, "retransmitted");
    assert_eq!(nat4_counter(&dp, Nat4Counter::NewRemote), 2);
}
