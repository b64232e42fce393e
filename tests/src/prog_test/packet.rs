//! Crafted packets for the program-level tests, built with `etherparse`
//! (lengths and every checksum computed by a library that is not sluice's,
//! so a test that compares against one of these checks sluice's own
//! arithmetic), and a few readers for what a program wrote.
use std::net::{Ipv4Addr, Ipv6Addr};

use etherparse::{
    ArpHardwareId, ArpOperation, ArpPacket, EtherType, IpFragOffset, IpHeaders, IpNumber, Ipv4Header, Ipv4Options,
    PacketBuilder,
};
use sluice_common::maps::{TUNNEL_PORT, TUNNEL_VNI};

pub type Mac = [u8; 6];

/// An IPv4 address from its text (tests spell addresses out).
pub fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap_or_else(|e| panic!("bad IPv4 address {s:?} in a test: {e}"))
}

/// The Ethernet addresses of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L2 {
    pub src: Mac,
    pub dst: Mac,
}

impl L2 {
    pub fn new(src: Mac, dst: Mac) -> Self {
        Self { src, dst }
    }
}

/// What an IPv4 packet carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    /// ICMP echo request, id 0x1234, sequence 1.
    IcmpEcho,
    Udp {
        src_port: u16,
        dst_port: u16,
    },
    /// TCP with SYN alone (a new connection).
    TcpSyn {
        src_port: u16,
        dst_port: u16,
    },
    /// TCP with ACK alone (a connection's later packet).
    TcpAck {
        src_port: u16,
        dst_port: u16,
    },
    /// ICMP echo reply, id 0x1234, sequence 1.
    IcmpEchoReply,
    /// SCTP: its 12-byte common header (ports at TCP's and UDP's offsets,
    /// verification tag, checksum 0: nothing here checks it) and the
    /// payload as its chunks. etherparse builds no SCTP, and this kernel
    /// has no SCTP sockets: crafted by hand.
    Sctp {
        src_port: u16,
        dst_port: u16,
    },
}

/// An IPv4 packet to build: TTL 64, DF set, no options, not a fragment,
/// unless changed.
#[derive(Clone, Debug)]
pub struct Ipv4 {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    pub l4: L4,
    /// Raw IPv4 options (a multiple of 4 bytes).
    pub options: Vec<u8>,
    pub more_fragments: bool,
    /// In units of 8 bytes.
    pub fragment_offset: u16,
    pub payload: Vec<u8>,
}

impl Ipv4 {
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr, l4: L4) -> Self {
        Self {
            src,
            dst,
            ttl: 64,
            l4,
            options: Vec::new(),
            more_fragments: false,
            fragment_offset: 0,
            payload: b"sluice prog test".to_vec(),
        }
    }

    pub fn icmp(src: &str, dst: &str) -> Self {
        Self::new(ip(src), ip(dst), L4::IcmpEcho)
    }

    pub fn udp(src: &str, dst: &str, src_port: u16, dst_port: u16) -> Self {
        Self::new(ip(src), ip(dst), L4::Udp { src_port, dst_port })
    }

    pub fn tcp_ack(src: &str, dst: &str, src_port: u16, dst_port: u16) -> Self {
        Self::new(ip(src), ip(dst), L4::TcpAck { src_port, dst_port })
    }

    pub fn icmp_reply(src: &str, dst: &str) -> Self {
        Self::new(ip(src), ip(dst), L4::IcmpEchoReply)
    }

    pub fn sctp(src: &str, dst: &str, src_port: u16, dst_port: u16) -> Self {
        Self::new(ip(src), ip(dst), L4::Sctp { src_port, dst_port })
    }

    pub fn tcp_syn(src: &str, dst: &str, src_port: u16, dst_port: u16) -> Self {
        Self::new(ip(src), ip(dst), L4::TcpSyn { src_port, dst_port })
    }

    pub fn ttl(mut self, ttl: u8) -> Self {
        self.ttl = ttl;
        self
    }

    pub fn options(mut self, options: &[u8]) -> Self {
        self.options = options.to_vec();
        self
    }

    pub fn fragment(mut self, more_fragments: bool, offset_8: u16) -> Self {
        self.more_fragments = more_fragments;
        self.fragment_offset = offset_8;
        self
    }

    pub fn payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }

    fn header(&self) -> Ipv4Header {
        let mut h = Ipv4Header::new(0, self.ttl, IpNumber::ICMP, self.src.octets(), self.dst.octets())
            .expect("an empty payload always fits");
        h.identification = 0x4242;
        h.more_fragments = self.more_fragments;
        h.dont_fragment = !self.more_fragments && self.fragment_offset == 0;
        h.fragment_offset = IpFragOffset::try_new(self.fragment_offset).expect("fragment offset below 8192");
        h.options = Ipv4Options::try_from(&self.options[..]).expect("IPv4 options: a multiple of 4 bytes, at most 40");
        h
    }

    /// The packet in an Ethernet frame, every length and checksum right.
    pub fn frame(&self, l2: L2) -> Vec<u8> {
        let ip = PacketBuilder::ethernet2(l2.src, l2.dst).ip(IpHeaders::Ipv4(self.header(), Default::default()));
        let mut out = Vec::new();
        let written = match self.l4 {
            L4::IcmpEcho => ip.icmpv4_echo_request(0x1234, 1).write(&mut out, &self.payload),
            L4::Udp { src_port, dst_port } => ip.udp(src_port, dst_port).write(&mut out, &self.payload),
            L4::TcpSyn { src_port, dst_port } => {
                ip.tcp(src_port, dst_port, 1000, 64240).syn().write(&mut out, &self.payload)
            }
            L4::TcpAck { src_port, dst_port } => {
                ip.tcp(src_port, dst_port, 1001, 64240).ack(2001).write(&mut out, &self.payload)
            }
            L4::IcmpEchoReply => ip.icmpv4_echo_reply(0x1234, 1).write(&mut out, &self.payload),
            L4::Sctp { src_port, dst_port } => {
                let mut sctp = Vec::with_capacity(12 + self.payload.len());
                sctp.extend_from_slice(&src_port.to_be_bytes());
                sctp.extend_from_slice(&dst_port.to_be_bytes());
                sctp.extend_from_slice(&0x5c7e_0001u32.to_be_bytes());
                sctp.extend_from_slice(&[0; 4]);
                sctp.extend_from_slice(&self.payload);
                ip.write(&mut out, IpNumber(132), &sctp)
            }
        };
        written.expect("write a crafted packet");
        out
    }
}

/// An ARP request: who has `target`? tell `sender`.
pub fn arp_request(l2: L2, sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let arp = ArpPacket::new(
        ArpHardwareId::ETHERNET,
        EtherType::IPV4,
        ArpOperation::REQUEST,
        &l2.src,
        &sender.octets(),
        &[0; 6],
        &target.octets(),
    )
    .expect("ARP for Ethernet and IPv4");
    let mut out = Vec::new();
    PacketBuilder::ethernet2(l2.src, l2.dst).arp(arp).write(&mut out).expect("write an ARP request");
    out
}

/// An ICMPv6 echo request in an Ethernet frame.
pub fn icmp6_echo(l2: L2, src: Ipv6Addr, dst: Ipv6Addr) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(l2.src, l2.dst)
        .ipv6(src.octets(), dst.octets(), 64)
        .icmpv6_echo_request(0x1234, 1)
        .write(&mut out, b"sluice prog test")
        .expect("write an ICMPv6 echo request");
    out
}

/// What an IPv6 packet carries (`Ipv6`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum L4v6 {
    /// Transport right after the fixed header, as `L4`.
    Plain(L4),
    /// A neighbour solicitation (ICMPv6 135) for `target`.
    NeighbourSolicitation { target: Ipv6Addr },
    /// Packet Too Big (ICMPv6 2) quoting `quoted` (an IPv6 packet, no
    /// Ethernet header).
    PacketTooBig { mtu: u32, quoted: Vec<u8> },
    /// A fragment header (next header 44) in front of a TCP header's
    /// first bytes: the transport is not where a program reads it.
    FragmentOfTcp { src_port: u16, dst_port: u16 },
}

/// An IPv6 packet to craft (hop limit 64, payload "sluice prog test").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ipv6 {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub l4: L4v6,
}

/// An IPv6 address from its text.
pub fn ip6(s: &str) -> Ipv6Addr {
    s.parse().unwrap_or_else(|e| panic!("bad IPv6 address {s:?} in a test: {e}"))
}

impl Ipv6 {
    pub fn new(src: &str, dst: &str, l4: L4v6) -> Self {
        Self { src: ip6(src), dst: ip6(dst), l4 }
    }

    pub fn tcp_syn(src: &str, dst: &str, src_port: u16, dst_port: u16) -> Self {
        Self::new(src, dst, L4v6::Plain(L4::TcpSyn { src_port, dst_port }))
    }

    pub fn tcp_ack(src: &str, dst: &str, src_port: u16, dst_port: u16) -> Self {
        Self::new(src, dst, L4v6::Plain(L4::TcpAck { src_port, dst_port }))
    }

    pub fn udp(src: &str, dst: &str, src_port: u16, dst_port: u16) -> Self {
        Self::new(src, dst, L4v6::Plain(L4::Udp { src_port, dst_port }))
    }

    pub fn sctp(src: &str, dst: &str, src_port: u16, dst_port: u16) -> Self {
        Self::new(src, dst, L4v6::Plain(L4::Sctp { src_port, dst_port }))
    }

    pub fn icmp(src: &str, dst: &str) -> Self {
        Self::new(src, dst, L4v6::Plain(L4::IcmpEcho))
    }

    pub fn icmp_reply(src: &str, dst: &str) -> Self {
        Self::new(src, dst, L4v6::Plain(L4::IcmpEchoReply))
    }

    /// The packet without its Ethernet header (what an ICMPv6 error quotes).
    pub fn bytes(&self) -> Vec<u8> {
        self.frame(L2::new([0; 6], [0; 6]))[14..].to_vec()
    }

    /// The packet in an Ethernet frame, every length and checksum right.
    pub fn frame(&self, l2: L2) -> Vec<u8> {
        use etherparse::{IcmpEchoHeader, Icmpv6Type};
        const PAYLOAD: &[u8] = b"sluice prog test";
        let ip = PacketBuilder::ethernet2(l2.src, l2.dst).ipv6(self.src.octets(), self.dst.octets(), 64);
        let mut out = Vec::new();
        let echo = IcmpEchoHeader { id: 0x1234, seq: 1 };
        let written = match &self.l4 {
            L4v6::Plain(L4::IcmpEcho) => ip.icmpv6(Icmpv6Type::EchoRequest(echo)).write(&mut out, PAYLOAD),
            L4v6::Plain(L4::IcmpEchoReply) => ip.icmpv6(Icmpv6Type::EchoReply(echo)).write(&mut out, PAYLOAD),
            L4v6::Plain(L4::Udp { src_port, dst_port }) => ip.udp(*src_port, *dst_port).write(&mut out, PAYLOAD),
            L4v6::Plain(L4::TcpSyn { src_port, dst_port }) => {
                ip.tcp(*src_port, *dst_port, 1000, 64240).syn().write(&mut out, PAYLOAD)
            }
            L4v6::Plain(L4::TcpAck { src_port, dst_port }) => {
                ip.tcp(*src_port, *dst_port, 1001, 64240).ack(2001).write(&mut out, PAYLOAD)
            }
            L4v6::Plain(L4::Sctp { src_port, dst_port }) => {
                let mut sctp = Vec::new();
                sctp.extend_from_slice(&src_port.to_be_bytes());
                sctp.extend_from_slice(&dst_port.to_be_bytes());
                sctp.extend_from_slice(&0x5c7e_0001u32.to_be_bytes());
                sctp.extend_from_slice(&[0; 4]);
                sctp.extend_from_slice(PAYLOAD);
                ip.write(&mut out, IpNumber(132), &sctp)
            }
            L4v6::NeighbourSolicitation { target } => {
                let mut body = vec![0; 4];
                body.extend_from_slice(&target.octets());
                ip.icmpv6(Icmpv6Type::NeighborSolicitation).write(&mut out, &body)
            }
            L4v6::PacketTooBig { mtu, quoted } => {
                ip.icmpv6(Icmpv6Type::PacketTooBig { mtu: *mtu }).write(&mut out, quoted)
            }
            L4v6::FragmentOfTcp { src_port, dst_port } => {
                // Next header TCP, offset 0, more fragments, id 0x4242;
                // then the TCP ports as a first fragment carries them.
                let mut body = vec![6, 0, 0, 1, 0, 0, 0x42, 0x42];
                body.extend_from_slice(&src_port.to_be_bytes());
                body.extend_from_slice(&dst_port.to_be_bytes());
                body.extend_from_slice(&[0; 16]);
                ip.write(&mut out, IpNumber(44), &body)
            }
        };
        written.expect("write a crafted IPv6 packet");
        out
    }
}

/// The 8 bytes of a VXLAN header: the I flag and `vni`.
pub fn vxlan_header(vni: u32) -> [u8; 8] {
    let v = vni.to_be_bytes();
    [0x08, 0, 0, 0, v[1], v[2], v[3], 0]
}

/// `inner` (an Ethernet frame) in VXLAN with sluice's VNI, in UDP to
/// `TUNNEL_PORT`, in IPv4 from `outer_src` to `outer_dst` (DF clear, as the
/// kernel's VXLAN device sends it), in Ethernet.
pub fn vxlan(l2: L2, outer_src: Ipv4Addr, outer_dst: Ipv4Addr, inner: &[u8]) -> Vec<u8> {
    vxlan_with(l2, outer_src, outer_dst, TUNNEL_VNI, inner)
}

pub fn vxlan_with(l2: L2, outer_src: Ipv4Addr, outer_dst: Ipv4Addr, vni: u32, inner: &[u8]) -> Vec<u8> {
    let mut payload = vxlan_header(vni).to_vec();
    payload.extend_from_slice(inner);
    let mut outer = Ipv4::new(outer_src, outer_dst, L4::Udp { src_port: 40000, dst_port: TUNNEL_PORT });
    outer.payload = payload;
    let mut h = outer.header();
    h.dont_fragment = false;
    let mut out = Vec::new();
    PacketBuilder::ethernet2(l2.src, l2.dst)
        .ip(IpHeaders::Ipv4(h, Default::default()))
        .udp(40000, TUNNEL_PORT)
        .write(&mut out, &outer.payload)
        .expect("write a VXLAN packet");
    out
}

/// VXLAN over IPv6 (an IPv6-only node's underlay): `inner` (an Ethernet
/// frame) in VXLAN `TUNNEL_VNI` in UDP 40000 → `TUNNEL_PORT` in IPv6 from
/// `outer_src` to `outer_dst`, hop limit 64, its UDP checksum computed.
pub fn vxlan6(l2: L2, outer_src: Ipv6Addr, outer_dst: Ipv6Addr, inner: &[u8]) -> Vec<u8> {
    let mut payload = vxlan_header(TUNNEL_VNI).to_vec();
    payload.extend_from_slice(inner);
    let mut out = Vec::new();
    PacketBuilder::ethernet2(l2.src, l2.dst)
        .ipv6(outer_src.octets(), outer_dst.octets(), 64)
        .udp(40000, TUNNEL_PORT)
        .write(&mut out, &payload)
        .expect("write a VXLAN-over-IPv6 packet");
    out
}

/// The IPv4 header at `offset` of `frame`, parsed, with whether its
/// checksum is right (recomputed by etherparse).
pub fn ipv4_at(frame: &[u8], offset: usize) -> (Ipv4Header, bool) {
    let (h, _) = Ipv4Header::from_slice(&frame[offset..])
        .unwrap_or_else(|e| panic!("no IPv4 header at byte {offset} of {}: {e}", hex(frame)));
    let ok = h.calc_header_checksum() == h.header_checksum;
    (h, ok)
}

/// Bytes as hex, for assertion messages.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Big-endian u16 at `offset`.
pub fn be16(bytes: &[u8], offset: usize) -> u16 {
    u16::from_be_bytes([bytes[offset], bytes[offset + 1]])
}

/// Change bytes of the IPv4 header at `offset` of `frame` (`edit` gets the
/// header, `ihl_bytes` long) and write its checksum anew, so that a test
/// of one malformation carries no second one.
pub fn edit_ipv4(frame: &mut [u8], offset: usize, ihl_bytes: usize, edit: impl FnOnce(&mut [u8])) {
    let hdr = &mut frame[offset..offset + ihl_bytes];
    edit(hdr);
    hdr[10] = 0;
    hdr[11] = 0;
    let sum = internet_checksum(hdr);
    hdr[10..12].copy_from_slice(&sum.to_be_bytes());
}

/// RFC 1071: the one's complement of the one's complement sum of 16-bit
/// words (only for building malformed headers etherparse refuses to).
fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
