//! IPv6 Services from outside the cluster at the uplink (issues 27 × 28,
//! `lb6`): on a dual-stack node `from_uplink` DNATs a world client's
//! packet for `[nodeIPv6]:nodePort` into a local backend, or DNATs and
//! SNATs it (the node's IPv6, a port from the SNAT range) towards a
//! backend on another node; the answers are translated back (`from_pod`
//! for a local backend, `from_uplink` for a remote one); a Service
//! without endpoints is refused (TCP RST, ICMPv6 port unreachable);
//! `externalTrafficPolicy: Local` keeps the client's address and drops
//! where no backend is local; a full `NAT6` drops, counted. Checksums are
//! checked by comparing with packets built whole (etherparse).
use etherparse::{Icmpv6Type, PacketBuilder};
use sluice_common::{
    maps::programs::{FROM_POD, FROM_UPLINK},
    nat::{Lb4Config, Nat4Counter, LB4_ENABLED, NAT4_FORWARD, NAT4_REPLY},
    nat6::{Nat6Entry, Nat6Key, SourceRangeKey6},
    services::{
        external_local_flags, BackendSlot, ServiceValue, NODE_ADDRESS_LOCAL, SERVICE_EXTERNAL_IP,
        SERVICE_LOAD_BALANCER, SERVICE_SOURCE_RANGES,
    },
    services6::{ip6_words, Backend6, ServiceKey6},
    DropReason, ForwardPath,
};
use sluice_node::datapath::{
    nat4_gc,
    nat4_maps::{nat6_counters, set_lb4_config, Nat6Table, NodeAddressMap6, SourceRanges6},
    policy_ct_gc,
    service_maps::ServiceMaps6,
};
use sluice_tests::prog_test::{
    lb4::from_world,
    packet::{be16, hex, ip6, Ipv6},
    Pod, TestDatapath, L2, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT,
};

const NODE_PORT: u16 = 30080;
const TCP: u8 = 6;
const UDP: u8 = 17;
/// This node's IPv6 address on the uplink network, and a world client.
const NODE6: &str = "fd00:30::1";
const WORLD6: &str = "2001:db8::1";
/// A local backend's address (this node's IPv6 pod CIDR) and a remote
/// one's (the native peer's, `fd00:30::2`).
const LOCAL6: &str = "fd00:244:0:1::3";
const REMOTE6: &str = "fd00:244:0:2::9";

/// A dual-stack node translating at its uplink, `NODE6` its own, with
/// NodePort `NODE_PORT` (TCP and UDP) backed by `backend:7777` alone
/// (`flags`: the Service value's), and a native IPv6 peer.
fn node_with_node_port6(backend: &str, count: u32, flags: u32) -> TestDatapath {
    let dp = TestDatapath::node().unwrap();
    dp.dual_stack("fd00:244:0:1::/64").unwrap();
    dp.node_route6("fd00:244:0:2::/64", ip6("fd00:30::2")).unwrap();
    set_lb4_config(dp.pins(), Lb4Config { flags: LB4_ENABLED, snat_port_min: 61000, snat_port_max: 65535 }).unwrap();
    NodeAddressMap6::open(dp.pins()).unwrap().put(ip6(NODE6), NODE_ADDRESS_LOCAL).unwrap();
    let mut maps = ServiceMaps6::open(dp.pins()).unwrap();
    let b = Backend6 { ip: ip6_words(ip6(backend).octets()), port_be: 7777u16.to_be(), _pad: 0 };
    maps.put_backend(BackendSlot { set: 1, slot: 0 }, b).unwrap();
    for protocol in [TCP, UDP] {
        let value = ServiceValue { backend_set: 1, count, affinity_timeout_secs: 0, flags, service_port_id: 0 };
        maps.put_service(ServiceKey6::node_port(NODE_PORT.to_be(), protocol), value).unwrap();
    }
    dp
}

fn local_backend(dp: &TestDatapath) -> Pod {
    let b = dp.add_pod("10.244.1.3").unwrap();
    dp.endpoint6(&b, ip6(LOCAL6)).unwrap();
    b
}

fn counter(dp: &TestDatapath, c: Nat4Counter) -> u64 {
    nat6_counters(dp.pins()).unwrap().into_iter().find(|(k, _)| *k == c).unwrap().1
}

/// The IPv6 packet of a frame, its hop limit set to `hop_limit` (a redirect
/// through the FIB writes the MACs after the program).
fn l3(frame: &[u8]) -> String {
    hex(&frame[14..])
}

fn hop(packet: &Ipv6, hop_limit: u8, l2: L2) -> Vec<u8> {
    let mut f = packet.frame(l2);
    f[14 + 7] = hop_limit;
    f
}

fn peer() -> L2 {
    L2::new([2, 0, 0, 0, 0, 2], [0; 6])
}

#[test]
fn a_world_connection_to_an_ipv6_node_port_reaches_the_local_backend_and_its_answer_comes_from_the_node_port() {
    let dp = node_with_node_port6(LOCAL6, 1, 0);
    let b = local_backend(&dp);
    for (syn, dnated, answer, reversed) in [
        (
            Ipv6::tcp_syn(WORLD6, NODE6, 40000, NODE_PORT),
            Ipv6::tcp_syn(WORLD6, LOCAL6, 40000, 7777),
            Ipv6::tcp_ack(LOCAL6, WORLD6, 7777, 40000),
            Ipv6::tcp_ack(NODE6, WORLD6, NODE_PORT, 40000),
        ),
        (
            Ipv6::udp(WORLD6, NODE6, 40001, NODE_PORT),
            Ipv6::udp(WORLD6, LOCAL6, 40001, 7777),
            Ipv6::udp(LOCAL6, WORLD6, 7777, 40001),
            Ipv6::udp(NODE6, WORLD6, NODE_PORT, 40001),
        ),
    ] {
        let run = dp.run(FROM_UPLINK, dp.uplink.ifindex, &syn.frame(from_world(&dp))).unwrap();
        assert_eq!(run.action, TC_ACT_REDIRECT, "{:?}", dp.drops().unwrap());
        assert_eq!(hex(&run.packet), hex(&hop(&dnated, 63, b.receives())), "DNATed into the backend");
        let run = dp.run(FROM_POD, b.host.ifindex, &answer.frame(b.sends())).unwrap();
        assert_eq!(run.action, TC_ACT_REDIRECT, "the answer goes straight out of the uplink");
        assert_eq!(l3(&run.packet), l3(&hop(&reversed, 63, b.sends())), "as from the NodePort");
    }
    // Later packets of the connection use its entry.
    let ack = Ipv6::tcp_ack(WORLD6, NODE6, 40000, NODE_PORT).frame(from_world(&dp));
    assert_eq!(dp.run(FROM_UPLINK, dp.uplink.ifindex, &ack).unwrap().action, TC_ACT_REDIRECT);
    assert_eq!(counter(&dp, Nat4Counter::NewLocal), 2);
    assert_eq!(counter(&dp, Nat4Counter::Forwarded), 1);
    assert_eq!(counter(&dp, Nat4Counter::Reversed), 2);
    assert_eq!(dp.drops().unwrap(), []);
    let fwd = dp.forwards().unwrap();
    assert!(
        fwd.contains(&(ForwardPath::UplinkToService, 3)) && fwd.contains(&(ForwardPath::ServiceReply, 2)),
        "{fwd:?}"
    );
}

#[test]
fn a_remote_ipv6_backend_gets_the_node_address_and_a_snat_port_and_its_answer_goes_back_to_the_client() {
    let dp = node_with_node_port6(REMOTE6, 1, 0);
    for (protocol, syn) in
        [(TCP, Ipv6::tcp_syn(WORLD6, NODE6, 40000, NODE_PORT)), (UDP, Ipv6::udp(WORLD6, NODE6, 40000, NODE_PORT))]
    {
        let run = dp.run(FROM_UPLINK, dp.uplink.ifindex, &syn.frame(from_world(&dp))).unwrap();
        assert_eq!(run.action, TC_ACT_REDIRECT, "{:?}", dp.drops().unwrap());
        let snat_port = be16(&run.packet, 14 + 40);
        assert!((61000..=65535).contains(&snat_port), "SNAT port {snat_port}");
        let (want, answer, back) = if protocol == TCP {
            (
                Ipv6::tcp_syn(NODE6, REMOTE6, snat_port, 7777),
                Ipv6::tcp_ack(REMOTE6, NODE6, 7777, snat_port),
                Ipv6::tcp_ack(NODE6, WORLD6, NODE_PORT, 40000),
            )
        } else {
            (
                Ipv6::udp(NODE6, REMOTE6, snat_port, 7777),
                Ipv6::udp(REMOTE6, NODE6, 7777, snat_port),
                Ipv6::udp(NODE6, WORLD6, NODE_PORT, 40000),
            )
        };
        assert_eq!(l3(&run.packet), l3(&hop(&want, 63, peer())), "DNAT and SNAT to the node's IPv6");
        // Both halves are in NAT6.
        let nat = Nat6Table::open(dp.pins()).unwrap();
        let reply_key = Nat6Key {
            src: ip6_words(ip6(REMOTE6).octets()),
            dst: ip6_words(ip6(NODE6).octets()),
            src_port_be: 7777u16.to_be(),
            dst_port_be: snat_port.to_be(),
            protocol,
            direction: NAT4_REPLY,
            _pad: [0; 2],
        };
        let reply = nat.get(&reply_key).unwrap().expect("the reply half reserves the SNAT port");
        assert_eq!((reply.src, reply.dst), (ip6_words(ip6(NODE6).octets()), ip6_words(ip6(WORLD6).octets())));
        // The backend's answer, from its node.
        let run = dp.run(FROM_UPLINK, dp.uplink.ifindex, &answer.frame(peer())).unwrap();
        assert_eq!(run.action, TC_ACT_REDIRECT);
        assert_eq!(l3(&run.packet), l3(&hop(&back, 63, peer())), "back to the client as from the NodePort");
    }
    assert_eq!(counter(&dp, Nat4Counter::NewRemote), 2);
    assert_eq!(counter(&dp, Nat4Counter::Reversed), 2);
    assert_eq!(dp.drops().unwrap(), []);
}

/// While the agent carries `NAT4` or `NAT6` over to a new layout
/// (`LB4_PAUSED`), a new IPv6 connection from outside is dropped
/// (`nat4_migrating`, as IPv4's), nothing written for it; one already in
/// `NAT6` carries on; lifted, the client's retransmission is translated.
#[test]
fn while_the_tables_migrate_new_ipv6_connections_from_outside_are_held_back_and_open_ones_carry_on() {
    use sluice_common::nat::LB4_PAUSED;
    let dp = node_with_node_port6(REMOTE6, 1, 0);
    let open = Ipv6::tcp_syn(WORLD6, NODE6, 40000, NODE_PORT).frame(from_world(&dp));
    assert_eq!(dp.run(FROM_UPLINK, dp.uplink.ifindex, &open).unwrap().action, TC_ACT_REDIRECT);
    let config = |flags| Lb4Config { flags, snat_port_min: 61000, snat_port_max: 65535 };
    set_lb4_config(dp.pins(), config(LB4_ENABLED | LB4_PAUSED)).unwrap();

    let new = Ipv6::tcp_syn(WORLD6, NODE6, 40001, NODE_PORT).frame(from_world(&dp));
    assert_eq!(dp.run(FROM_UPLINK, dp.uplink.ifindex, &new).unwrap().action, TC_ACT_SHOT);
    let udp = Ipv6::udp(WORLD6, NODE6, 40002, NODE_PORT).frame(from_world(&dp));
    assert_eq!(dp.run(FROM_UPLINK, dp.uplink.ifindex, &udp).unwrap().action, TC_ACT_SHOT);
    assert_eq!(dp.drops().unwrap(), [(DropReason::Nat4Migrating, 2)]);
    assert_eq!(counter(&dp, Nat4Counter::NewRemote), 1, "nothing written for a held-back connection");
    assert_eq!(Nat6Table::open(dp.pins()).unwrap().all().unwrap().len(), 2, "the open connection's pair alone");
    let ack = Ipv6::tcp_ack(WORLD6, NODE6, 40000, NODE_PORT).frame(from_world(&dp));
    assert_eq!(dp.run(FROM_UPLINK, dp.uplink.ifindex, &ack).unwrap().action, TC_ACT_REDIRECT, "the open one");

    set_lb4_config(dp.pins(), config(LB4_ENABLED)).unwrap();
    assert_eq!(dp.run(FROM_UPLINK, dp.uplink.ifindex, &new).unwrap().action, TC_ACT_REDIRECT, "retransmitted");
    assert_eq!(counter(&dp, Nat4Counter::NewRemote), 2);
}

#[test]
fn external_traffic_policy_local_keeps_the_client_address_and_drops_where_no_backend_is_local() {
    // One backend, this node's: the client's address kept (DNAT only).
    let dp = node_with_node_port6(LOCAL6, 1, external_local_flags(1));
    let b = local_backend(&dp);
    let syn = Ipv6::tcp_syn(WORLD6, NODE6, 40000, NODE_PORT);
    let run = dp.run(FROM_UPLINK, dp.uplink.ifindex, &syn.frame(from_world(&dp))).unwrap();
    assert_eq!(run.action, TC_ACT_REDIRECT);
    assert_eq!(hex(&run.packet), hex(&hop(&Ipv6::tcp_syn(WORLD6, LOCAL6, 40000, 7777), 63, b.receives())));
    // Its one backend elsewhere: none here, dropped and counted.
    let dp = node_with_node_port6(REMOTE6, 1, external_local_flags(0));
    let run = dp.run(FROM_UPLINK, dp.uplink.ifindex, &syn.frame(from_world(&dp))).unwrap();
    assert_eq!(run.action, TC_ACT_SHOT);
    assert_eq!(dp.drops().unwrap(), [(DropReason::ServiceNoLocalEndpoints, 1)]);
    assert!(Nat6Table::open(dp.pins()).unwrap().all().unwrap().is_empty(), "nothing written");
}

#[test]
fn an_ipv6_node_port_without_endpoints_is_refused_with_a_reset_or_a_port_unreachable() {
    let dp = node_with_node_port6(REMOTE6, 0, 0);
    // TCP: a RST from the NodePort, back to the MAC it came from.
    let syn = Ipv6::tcp_syn(WORLD6, NODE6, 40000, NODE_PORT);
    let run = dp.run(FROM_UPLINK, dp.uplink.ifindex, &syn.frame(from_world(&dp))).unwrap();
    assert_eq!(run.action, TC_ACT_REDIRECT);
    let w = from_world(&dp);
    let mut want = Vec::new();
    PacketBuilder::ethernet2(w.dst, w.src)
        .ipv6(ip6(NODE6).octets(), ip6(WORLD6).octets(), 64)
        .tcp(NODE_PORT, 40000, 0, 0)
        .rst()
        .ack(1000 + 1 + b"sluice prog test".len() as u32)
        .write(&mut want, &[])
        .unwrap();
    assert_eq!(hex(&run.packet), hex(&want), "RST, ACK of the SYN and its data");
    // UDP: an ICMPv6 port unreachable quoting the datagram's first bytes.
    let dgram = Ipv6::udp(WORLD6, NODE6, 40001, NODE_PORT);
    let run = dp.run(FROM_UPLINK, dp.uplink.ifindex, &dgram.frame(from_world(&dp))).unwrap();
    assert_eq!(run.action, TC_ACT_REDIRECT);
    let mut want = Vec::new();
    PacketBuilder::ethernet2(w.dst, w.src)
        .ipv6(ip6(NODE6).octets(), ip6(WORLD6).octets(), 64)
        .icmpv6(Icmpv6Type::DestinationUnreachable(etherparse::icmpv6::DestUnreachableCode::Port))
        .write(&mut want, &dgram.bytes()[..48])
        .unwrap();
    assert_eq!(hex(&run.packet), hex(&want), "port unreachable, the datagram's IPv6 and UDP headers quoted");
    assert_eq!(dp.drops().unwrap(), [(DropReason::ServiceNoEndpoints, 2)]);
}

#[test]
fn a_full_nat6_drops_a_new_connection_and_counts_it() {
    let dp = node_with_node_port6(LOCAL6, 1, 0);
    let _b = local_backend(&dp);
    // Fill NAT6 to its last entry with connections of other clients.
    let mut nat = Nat6Table::open(dp.pins()).unwrap();
    let max = sluice_common::maps::limits::MAX_NAT6;
    for i in 0..max {
        let key = Nat6Key {
            src: [0x20010db8u32.to_be(), 0, 1, i.to_be()],
            dst: ip6_words(ip6(NODE6).octets()),
            src_port_be: 1u16.to_be(),
            dst_port_be: NODE_PORT.to_be(),
            protocol: UDP,
            direction: NAT4_FORWARD,
            _pad: [0; 2],
        };
        nat.insert(key, Nat6Entry::default()).unwrap();
    }
    let syn = Ipv6::tcp_syn(WORLD6, NODE6, 40000, NODE_PORT);
    let run = dp.run(FROM_UPLINK, dp.uplink.ifindex, &syn.frame(from_world(&dp))).unwrap();
    assert_eq!(run.action, TC_ACT_SHOT);
    assert_eq!(dp.drops().unwrap(), [(DropReason::Nat6TableFull, 1)]);
    assert_eq!(counter(&dp, Nat4Counter::InsertFailed), 1);
    assert_eq!(nat.all().unwrap().len(), max as usize, "no live connection evicted");
}

#[test]
fn ipv6_external_ips_are_translated_and_pod_traffic_fragments_and_a_switched_off_node_are_left_alone() {
    let dp = node_with_node_port6(LOCAL6, 1, 0);
    let b = local_backend(&dp);
    let external = ServiceKey6::address(ip6_words(ip6("2001:db8:e::10").octets()), 80u16.to_be(), TCP);
    ServiceMaps6::open(dp.pins())
        .unwrap()
        .put_service(
            external,
            ServiceValue {
                backend_set: 1,
                count: 1,
                affinity_timeout_secs: 0,
                flags: SERVICE_EXTERNAL_IP,
                service_port_id: 0,
            },
        )
        .unwrap();
    let run = dp
        .run(FROM_UPLINK, dp.uplink.ifindex, &Ipv6::tcp_syn(WORLD6, "2001:db8:e::10", 40000, 80).frame(from_world(&dp)))
        .unwrap();
    assert_eq!(run.action, TC_ACT_REDIRECT);
    assert_eq!(hex(&run.packet), hex(&hop(&Ipv6::tcp_syn(WORLD6, LOCAL6, 40000, 7777), 63, b.receives())));
    // A fragment to the NodePort: the stack's, counted.
    let frag = Ipv6::new(
        WORLD6,
        NODE6,
        sluice_tests::prog_test::packet::L4v6::FragmentOfTcp { src_port: 40002, dst_port: NODE_PORT },
    )
    .frame(from_world(&dp));
    let run = dp.run(FROM_UPLINK, dp.uplink.ifindex, &frag).unwrap();
    assert_eq!((run.action, hex(&run.packet)), (TC_ACT_OK, hex(&frag)));
    assert_eq!(counter(&dp, Nat4Counter::FragmentPassed), 1);
    // Switched off (--kube-proxy-replacement=false): left to the stack.
    set_lb4_config(dp.pins(), Lb4Config { flags: 0, snat_port_min: 61000, snat_port_max: 65535 }).unwrap();
    let np = Ipv6::tcp_syn(WORLD6, NODE6, 40003, NODE_PORT).frame(from_world(&dp));
    let run = dp.run(FROM_UPLINK, dp.uplink.ifindex, &np).unwrap();
    assert_eq!((run.action, hex(&run.packet)), (TC_ACT_OK, hex(&np)));
    assert_eq!(counter(&dp, Nat4Counter::NewLocal), 1);
    assert_eq!(dp.drops().unwrap(), []);
}

#[test]
fn the_agents_gc_removes_an_idle_ipv6_connection_both_halves_and_keeps_a_live_one() {
    let dp = node_with_node_port6(REMOTE6, 1, 0);
    // Two UDP connections through the datapath, each a pair in NAT6.
    for port in [40000, 40001] {
        let run =
            dp.run(FROM_UPLINK, dp.uplink.ifindex, &Ipv6::udp(WORLD6, NODE6, port, NODE_PORT).frame(from_world(&dp)));
        assert_eq!(run.unwrap().action, TC_ACT_REDIRECT);
    }
    let mut nat = Nat6Table::open(dp.pins()).unwrap();
    assert_eq!(nat.all().unwrap().len(), 4);
    // A minute and more later (UDP's timeout), one of them was used again.
    let now = policy_ct_gc::monotonic_now_ns().unwrap();
    let later = now + 61_000_000_000;
    for (key, mut entry) in nat.all().unwrap() {
        let client_port = if key.direction == NAT4_FORWARD { key.src_port_be } else { entry.dst_port_be };
        if u16::from_be(client_port) == 40001 {
            entry.last_seen_ns = later;
            nat.insert(key, entry).unwrap();
        }
    }
    let pass = nat4_gc::collect(&mut nat, later, &Default::default()).unwrap();
    assert_eq!((pass.scanned, pass.removed), (4, 2), "{pass:?}");
    let left = nat.all().unwrap();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left.iter().all(|(k, e)| {
        let client_port = if k.direction == NAT4_FORWARD { k.src_port_be } else { e.dst_port_be };
        u16::from_be(client_port) == 40001
    }));
}

/// `loadBalancerSourceRanges` over IPv6 (`LB6_SOURCE_RANGES`): a world
/// client inside one of an IPv6 LoadBalancer ingress IP's ranges is
/// translated; one outside is dropped (`load_balancer_source_range`),
/// nothing written for it; the range gone (the flag still set), every
/// client is refused: fail closed.
#[test]
fn ipv6_load_balancer_source_ranges_admit_only_the_clients_inside_them() {
    const LB6: &str = "2001:db8:5::7";
    const OUTSIDE6: &str = "2001:db9::1";
    let dp = node_with_node_port6(LOCAL6, 1, 0);
    let b = local_backend(&dp);
    let vip = ip6_words(ip6(LB6).octets());
    let flags = SERVICE_LOAD_BALANCER | SERVICE_SOURCE_RANGES;
    let value = ServiceValue { backend_set: 1, count: 1, affinity_timeout_secs: 0, flags, service_port_id: 0 };
    ServiceMaps6::open(dp.pins()).unwrap().put_service(ServiceKey6::address(vip, 80u16.to_be(), TCP), value).unwrap();
    let mut ranges = SourceRanges6::open(dp.pins()).unwrap();
    // WORLD6 (2001:db8::1) is inside 2001:db8::/64.
    let range = SourceRangeKey6 {
        vip,
        port_be: 80u16.to_be(),
        protocol: TCP,
        _pad: 0,
        src: ip6_words(ip6("2001:db8::").octets()),
    };
    ranges.insert(range, 64).unwrap();

    let inside = Ipv6::tcp_syn(WORLD6, LB6, 40000, 80).frame(from_world(&dp));
    let run = dp.run(FROM_UPLINK, dp.uplink.ifindex, &inside).unwrap();
    assert_eq!(run.action, TC_ACT_REDIRECT, "inside the range: {:?}", dp.drops().unwrap());
    let dnated = Ipv6::tcp_syn(WORLD6, LOCAL6, 40000, 7777);
    assert_eq!(hex(&run.packet), hex(&hop(&dnated, 63, b.receives())), "DNATed into the backend");
    let outside = Ipv6::tcp_syn(OUTSIDE6, LB6, 40001, 80).frame(from_world(&dp));
    assert_eq!(dp.run(FROM_UPLINK, dp.uplink.ifindex, &outside).unwrap().action, TC_ACT_SHOT);
    assert_eq!(dp.drops().unwrap(), [(DropReason::LoadBalancerSourceRange, 1)]);
    assert_eq!(Nat6Table::open(dp.pins()).unwrap().all().unwrap().len(), 2, "the admitted connection's pair alone");

    ranges.remove(range, 64).unwrap();
    let again = Ipv6::tcp_syn(WORLD6, LB6, 40002, 80).frame(from_world(&dp));
    assert_eq!(dp.run(FROM_UPLINK, dp.uplink.ifindex, &again).unwrap().action, TC_ACT_SHOT, "no range: refused");
    assert_eq!(dp.drops().unwrap(), [(DropReason::LoadBalancerSourceRange, 2)]);
}
