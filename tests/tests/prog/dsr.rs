//! Direct server return (`--lb-mode=dsr`, issue 27) on crafted packets.
//!
//! The entry node (`from_uplink`): a world client's packet for a NodePort
//! whose backend is on another node is DNATed only (the client's address
//! and port kept); a TCP SYN and every UDP datagram carry the DSR IPv4
//! option (the frontend the client named) after the fixed header, later
//! TCP segments do not; a packet the option would take past the egress
//! MTU is answered with ICMP fragmentation needed (the MTU less the
//! option), counted, never sent on nor dropped silently.
//!
//! The backend's node (`from_uplink`, natively or through VXLAN): the
//! option checked, stripped, a reply entry written; the pod's answer
//! (`from_pod`) leaves as from the frontend, straight to the client.
use etherparse::{icmpv4::DestUnreachableHeader, Icmpv4Type, Ipv4Header};
use sluice_common::{
    maps::programs::{FROM_POD, FROM_UPLINK},
    nat::{
        dsr_option, Nat4Counter, Nat4Entry, Nat4Key, LB4_DSR, LB4_ENABLED, NAT4_DSR, NAT4_FORWARD, NAT4_REPLY,
        NAT4_REPLY_SEEN, NAT4_VIA_TUNNEL,
    },
    DropReason,
};
use sluice_node::datapath::nat4_maps::Nat4Table;
use sluice_tests::prog_test::{
    be, ip,
    lb4::{self, from_world, nat4_counter, WORLD},
    packet::{hex, vxlan},
    Ipv4, TestDatapath, L2, NATIVE_PEER_IP, NODE_IP, TC_ACT_REDIRECT, TC_ACT_SHOT, VXLAN_PEER_IP,
};

const NODE_PORT: u16 = 30080;
const TCP: u8 = 6;
const UDP: u8 = 17;

fn from_peer(dp: &TestDatapath) -> L2 {
    L2::new([0x02, 0, 0, 0, 0, 0x02], dp.uplink.mac)
}

/// A node in DSR mode with NodePort `NODE_PORT` (TCP and UDP) on its
/// address, backed by `backend:7777`.
fn dsr_node(backend: &str) -> TestDatapath {
    lb4::node_with_node_port(LB4_ENABLED | LB4_DSR, NODE_PORT, &[TCP, UDP], backend, 7777)
}

/// The option for `frontend:port`, as it is on the wire.
fn option(frontend: &str, port: u16) -> [u8; 8] {
    dsr_option(be(ip(frontend)), port.to_be())
}

fn l3(frame: &[u8]) -> String {
    hex(&frame[14..])
}

fn key(src: &str, dst: &str, src_port: u16, dst_port: u16, protocol: u8, direction: u8) -> Nat4Key {
    Nat4Key {
        src_be: be(ip(src)),
        dst_be: be(ip(dst)),
        src_port_be: src_port.to_be(),
        dst_port_be: dst_port.to_be(),
        protocol,
        direction,
        _pad: [0; 2],
    }
}

#[test]
fn the_entry_node_puts_the_option_on_the_syn_only_and_keeps_the_client_address() {
    // 10.244.2.0/24 is the native peer's (172.30.0.2).
    let dp = dsr_node("10.244.2.9");
    let syn = Ipv4::tcp_syn(WORLD, NODE_IP, 40000, NODE_PORT);
    let run = dp.run(FROM_UPLINK, dp.uplink.ifindex, &syn.frame(from_world(&dp))).unwrap();
    assert_eq!(run.action, TC_ACT_REDIRECT);
    let want = Ipv4::tcp_syn(WORLD, "10.244.2.9", 40000, 7777).ttl(63).options(&option(NODE_IP, NODE_PORT));
    assert_eq!(l3(&run.packet), l3(&want.frame(from_world(&dp))), "DNAT only, the frontend in the option");
    // The client's next segment: DNAT only, no option.
    let ack = Ipv4::tcp_ack(WORLD, NODE_IP, 40000, NODE_PORT);
    let run = dp.run(FROM_UPLINK, dp.uplink.ifindex, &ack.frame(from_world(&dp))).unwrap();
    assert_eq!(run.action, TC_ACT_REDIRECT);
    let want = Ipv4::tcp_ack(WORLD, "10.244.2.9", 40000, 7777).ttl(63);
    assert_eq!(l3(&run.packet), l3(&want.frame(from_world(&dp))), "no option after the SYN");
    // One half only here: the forward entry, DSR, no SNAT port reserved;
    // the client's ACK marked it answered (the GC's established timeout).
    let all = Nat4Table::open(dp.pins()).unwrap().all().unwrap();
    assert_eq!(all.len(), 1, "{all:?}");
    let (k, e) = all[0];
    assert_eq!(k, key(WORLD, NODE_IP, 40000, NODE_PORT, TCP, NAT4_FORWARD));
    assert_eq!((e.src_be, e.src_port_be), (be(ip(WORLD)), 40000u16.to_be()), "the client's own address and port");
    assert_eq!(e.next_hop_be, be(ip(NATIVE_PEER_IP)));
    assert_eq!(e.flags, NAT4_DSR | NAT4_REPLY_SEEN);
    assert_eq!(nat4_counter(&dp, Nat4Counter::NewRemote), 1);
    assert_eq!(nat4_counter(&dp, Nat4Counter::DsrOptionSent), 1);
    assert_eq!(nat4_counter(&dp, Nat4Counter::Forwarded), 1);
    assert_eq!(dp.drops().unwrap(), []);
}

#[test]
fn every_udp_datagram_carries_the_option_natively_and_over_vxlan() {
    // 10.244.3.0/24 is the VXLAN peer's (172.31.0.3).
    for (backend, via_tunnel) in [("10.244.2.9", false), ("10.244.3.9", true)] {
        let dp = dsr_node(backend);
        for _ in 0..3 {
            let d = Ipv4::udp(WORLD, NODE_IP, 40001, NODE_PORT);
            let run = dp.run(FROM_UPLINK, dp.uplink.ifindex, &d.frame(from_world(&dp))).unwrap();
            assert_eq!(run.action, TC_ACT_REDIRECT);
            let want = Ipv4::udp(WORLD, backend, 40001, 7777).ttl(63).options(&option(NODE_IP, NODE_PORT));
            assert_eq!(l3(&run.packet), l3(&want.frame(from_world(&dp))), "{backend}");
        }
        assert_eq!(nat4_counter(&dp, Nat4Counter::DsrOptionSent), 3, "{backend}");
        assert_eq!(nat4_counter(&dp, Nat4Counter::NewRemote), 1, "{backend}");
        let all = Nat4Table::open(dp.pins()).unwrap().all().unwrap();
        assert_eq!(all.len(), 1, "{all:?}");
        assert_eq!(all[0].1.flags & NAT4_VIA_TUNNEL != 0, via_tunnel, "{backend}");
        assert_eq!(dp.drops().unwrap(), []);
    }
}

/// The biggest UDP datagram the option lets through, and one byte more:
/// answered with ICMP fragmentation needed carrying the MTU less the
/// option, from the address the client sent to, quoting its header.
#[test]
fn a_datagram_too_big_for_the_option_gets_frag_needed_with_the_mtu_less_the_option() {
    let dp = dsr_node("10.244.2.9");
    let mtu = dp.uplink.mtu as usize;
    let limit = mtu - 8;
    let fits = Ipv4::udp(WORLD, NODE_IP, 40002, NODE_PORT).payload(&vec![0x5a; limit - 28]);
    let run = dp.run(FROM_UPLINK, dp.uplink.ifindex, &fits.frame(from_world(&dp))).unwrap();
    assert_eq!(run.action, TC_ACT_REDIRECT);
    assert_eq!(run.packet.len(), 14 + mtu, "sent whole, at the MTU with the option");
    assert_eq!(dp.drops().unwrap(), []);

    let request =
        Ipv4::udp(WORLD, NODE_IP, 40002, NODE_PORT).payload(&vec![0x5a; limit + 1 - 28]).frame(from_world(&dp));
    let run = dp.run(FROM_UPLINK, dp.uplink.ifindex, &request).unwrap();
    assert_eq!(run.action, TC_ACT_REDIRECT, "answered back out of the uplink");
    let (ip_h, rest) = Ipv4Header::from_slice(&run.packet[14..]).unwrap();
    assert_eq!((ip_h.source, ip_h.destination), (ip(NODE_IP).octets(), ip(WORLD).octets()));
    let (icmp, quoted) = etherparse::Icmpv4Header::from_slice(rest).unwrap();
    assert_eq!(
        icmp.icmp_type,
        Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: limit as u16 })
    );
    assert_eq!(quoted, &request[14..14 + 28], "the datagram's IPv4 header and UDP header");
    assert_eq!(dp.drops().unwrap(), [(DropReason::DsrFragNeeded, 1)]);
    assert_eq!(nat4_counter(&dp, Nat4Counter::DsrFragNeeded), 1);
    assert_eq!(nat4_counter(&dp, Nat4Counter::DsrOptionSent), 1);
}

/// Over VXLAN the VXLAN device's MTU is the egress: its overhead counted.
#[test]
fn over_vxlan_the_tunnel_mtu_is_the_limit() {
    let dp = dsr_node("10.244.3.9");
    let mtu = dp.vxlan.mtu as usize;
    let fits = Ipv4::udp(WORLD, NODE_IP, 40003, NODE_PORT).payload(&vec![0x5a; mtu - 8 - 28]);
    let run = dp.run(FROM_UPLINK, dp.uplink.ifindex, &fits.frame(from_world(&dp))).unwrap();
    assert_eq!(run.action, TC_ACT_REDIRECT);
    assert_eq!(run.packet.len(), 14 + mtu);
    let big = Ipv4::udp(WORLD, NODE_IP, 40003, NODE_PORT).payload(&vec![0x5a; mtu - 8 - 28 + 1]);
    let run = dp.run(FROM_UPLINK, dp.uplink.ifindex, &big.frame(from_world(&dp))).unwrap();
    assert_eq!(run.action, TC_ACT_REDIRECT);
    let (_, rest) = Ipv4Header::from_slice(&run.packet[14..]).unwrap();
    let (icmp, _) = etherparse::Icmpv4Header::from_slice(rest).unwrap();
    assert_eq!(
        icmp.icmp_type,
        Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
            next_hop_mtu: (mtu - 8) as u16
        })
    );
    assert_eq!(dp.drops().unwrap(), [(DropReason::DsrFragNeeded, 1)]);
}

/// The backend's node: the option names node 2's NodePort (172.30.0.2,
/// the entry node); the SYN enters the pod without it, the reply entry is
/// written, and the pod's answer leaves as from the frontend, to the
/// client. The client's next segment (no option) enters the pod too.
#[test]
fn the_backends_node_strips_the_option_records_the_reply_and_answers_from_the_frontend() {
    let dp = dsr_node("10.244.1.3");
    let b = dp.add_pod("10.244.1.3").unwrap();
    for (proto, with, without, answer, reversed) in [
        (
            TCP,
            Ipv4::tcp_syn(WORLD, "10.244.1.3", 40000, 7777).options(&option(NATIVE_PEER_IP, NODE_PORT)),
            Ipv4::tcp_syn(WORLD, "10.244.1.3", 40000, 7777),
            Ipv4::tcp_ack("10.244.1.3", WORLD, 7777, 40000),
            Ipv4::tcp_ack(NATIVE_PEER_IP, WORLD, NODE_PORT, 40000),
        ),
        (
            UDP,
            Ipv4::udp(WORLD, "10.244.1.3", 40001, 7777).options(&option(NATIVE_PEER_IP, NODE_PORT)),
            Ipv4::udp(WORLD, "10.244.1.3", 40001, 7777),
            Ipv4::udp("10.244.1.3", WORLD, 7777, 40001),
            Ipv4::udp(NATIVE_PEER_IP, WORLD, NODE_PORT, 40001),
        ),
    ] {
        let run = dp.run(FROM_UPLINK, dp.uplink.ifindex, &with.clone().ttl(63).frame(from_peer(&dp))).unwrap();
        assert_eq!(run.action, TC_ACT_REDIRECT, "{proto}");
        assert_eq!(hex(&run.packet), hex(&without.clone().ttl(62).frame(b.receives())), "stripped, into the pod");
        let client_port = if proto == TCP { 40000 } else { 40001 };
        let reply = Nat4Table::open(dp.pins())
            .unwrap()
            .get(&key("10.244.1.3", WORLD, 7777, client_port, proto, NAT4_REPLY))
            .unwrap()
            .expect("the reply entry");
        assert_eq!(
            reply,
            Nat4Entry {
                src_be: be(ip(NATIVE_PEER_IP)),
                dst_be: be(ip(WORLD)),
                src_port_be: NODE_PORT.to_be(),
                dst_port_be: client_port.to_be(),
                flags: NAT4_DSR,
                last_seen_ns: reply.last_seen_ns,
                ..Default::default()
            }
        );
        let run = dp.run(FROM_POD, b.host.ifindex, &answer.frame(b.sends())).unwrap();
        assert_eq!(run.action, TC_ACT_REDIRECT, "straight out of the uplink");
        assert_eq!(l3(&run.packet), l3(&reversed.ttl(63).frame(b.sends())), "as from the frontend");
    }
    // A later TCP segment, without the option: into the pod as well.
    let ack = Ipv4::tcp_ack(WORLD, "10.244.1.3", 40000, 7777).ttl(63);
    let run = dp.run(FROM_UPLINK, dp.uplink.ifindex, &ack.frame(from_peer(&dp))).unwrap();
    assert_eq!(run.action, TC_ACT_REDIRECT);
    assert_eq!(hex(&run.packet), hex(&ack.clone().ttl(62).frame(b.receives())));
    assert_eq!(nat4_counter(&dp, Nat4Counter::DsrReplyRecorded), 2);
    assert_eq!(nat4_counter(&dp, Nat4Counter::Reversed), 2);
    assert_eq!(dp.drops().unwrap(), []);
}

#[test]
fn the_backends_node_takes_the_option_out_of_vxlan_too() {
    let dp = dsr_node("10.244.1.3");
    let b = dp.add_pod("10.244.1.3").unwrap();
    let inner = Ipv4::udp(WORLD, "10.244.1.3", 40005, 7777).ttl(63).options(&option(NODE_IP, NODE_PORT));
    let inner_l2 = L2::new([0x02, 0, 0, 0, 0x03, 0x01], [0x02, 0, 0, 0, 0x03, 0x02]);
    let frame =
        vxlan(L2::new([0x02, 0, 0, 0, 0, 0xfd], dp.uplink.mac), ip(VXLAN_PEER_IP), ip(NODE_IP), &inner.frame(inner_l2));
    let run = dp.run(FROM_UPLINK, dp.uplink.ifindex, &frame).unwrap();
    assert_eq!(run.action, TC_ACT_REDIRECT);
    assert_eq!(hex(&run.packet), hex(&Ipv4::udp(WORLD, "10.244.1.3", 40005, 7777).ttl(62).frame(b.receives())));
    assert!(Nat4Table::open(dp.pins())
        .unwrap()
        .get(&key("10.244.1.3", WORLD, 7777, 40005, UDP, NAT4_REPLY))
        .unwrap()
        .is_some());
    assert_eq!(nat4_counter(&dp, Nat4Counter::DsrReplyRecorded), 1);
    assert_eq!(dp.drops().unwrap(), []);
}

/// An option naming no frontend of the cluster (a port that is no
/// NodePort): no reply entry that would make the pod answer from an
/// address of the sender's choosing; dropped, counted.
#[test]
fn an_option_naming_no_frontend_is_refused() {
    let dp = dsr_node("10.244.1.3");
    let _b = dp.add_pod("10.244.1.3").unwrap();
    let p = Ipv4::tcp_syn(WORLD, "10.244.1.3", 40000, 7777).options(&option("198.51.100.7", 30999));
    let run = dp.run(FROM_UPLINK, dp.uplink.ifindex, &p.frame(from_peer(&dp))).unwrap();
    assert_eq!(run.action, TC_ACT_SHOT);
    assert_eq!(dp.drops().unwrap(), [(DropReason::DsrOptionRefused, 1)]);
    assert_eq!(Nat4Table::open(dp.pins()).unwrap().all().unwrap(), []);
}

/// The GC on both nodes' single halves: each lives by its own flags. The
/// entry node's forward half (answered: the client's ACK after its SYN)
/// and the backend's node's reply half (the pod answered) outlive the
/// minute an unanswered connection gets; neither is taken for an orphan
/// of a pair; both go once idle past TCP's established timeout.
#[test]
fn the_gc_keeps_each_nodes_dsr_half_as_long_as_an_answered_connection() {
    use sluice_node::datapath::{nat4_gc, policy_ct_gc};
    // The entry node.
    let entry_node = dsr_node("10.244.2.9");
    for p in [Ipv4::tcp_syn(WORLD, NODE_IP, 40000, NODE_PORT), Ipv4::tcp_ack(WORLD, NODE_IP, 40000, NODE_PORT)] {
        let run = entry_node.run(FROM_UPLINK, entry_node.uplink.ifindex, &p.frame(from_world(&entry_node))).unwrap();
        assert_eq!(run.action, TC_ACT_REDIRECT);
    }
    // The backend's node.
    let backend_node = dsr_node("10.244.1.3");
    let b = backend_node.add_pod("10.244.1.3").unwrap();
    let syn = Ipv4::tcp_syn(WORLD, "10.244.1.3", 40000, 7777).ttl(63).options(&option(NODE_IP, NODE_PORT));
    let run = backend_node.run(FROM_UPLINK, backend_node.uplink.ifindex, &syn.frame(from_peer(&backend_node))).unwrap();
    assert_eq!(run.action, TC_ACT_REDIRECT);
    let answer = Ipv4::tcp_ack("10.244.1.3", WORLD, 7777, 40000).frame(b.sends());
    assert_eq!(backend_node.run(FROM_POD, b.host.ifindex, &answer).unwrap().action, TC_ACT_REDIRECT);

    let now = policy_ct_gc::monotonic_now_ns().unwrap();
    for dp in [&entry_node, &backend_node] {
        let mut nat = Nat4Table::open(dp.pins()).unwrap();
        assert_eq!(nat.all().unwrap().len(), 1);
        nat4_gc::collect(&mut nat, now + 120 * 1_000_000_000, &Default::default()).unwrap();
        assert_eq!(nat.all().unwrap().len(), 1, "two minutes idle: kept");
        nat4_gc::collect(&mut nat, now + 7 * 3600 * 1_000_000_000, &Default::default()).unwrap();
        assert_eq!(nat.all().unwrap(), [], "seven hours idle: gone");
    }
}
