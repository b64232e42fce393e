//! Refusals built in the datapath (issue 27): what kube-proxy's `REJECT`
//! answers a client from outside that reaches a Service without endpoints,
//! so that the client fails at once instead of waiting for a timeout.
//!
//! - A TCP SYN gets a TCP RST (RFC 9293 3.10.7.1, a segment for a closed
//!   port: `<SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>`), the same answer
//!   the node's own stack gives to a closed port. kube-proxy's rule says
//!   `--reject-with icmp-port-unreachable` for TCP too, which Linux's
//!   `connect()` also turns into `ECONNREFUSED`, but some stacks (Windows)
//!   ignore ICMP errors during a handshake and retry until they time out;
//!   a RST is refused everywhere.
//! - A UDP datagram gets an ICMP destination unreachable, port unreachable
//!   (RFC 792, RFC 1122 3.2.2.1), quoting the datagram's IP header and
//!   first 8 bytes (its UDP header), from which the client's stack finds
//!   the socket (`ECONNREFUSED` on a connected socket).
//!
//! Pure functions over the request's first bytes (Ethernet + IPv4 without
//! options + the transport header's start) that return the whole answer
//! frame, checksums included: unit-tested here, built on the stack by
//! `ebpf/src/lb4.rs`, which writes them over the request and sends it back
//! out of the interface it came in on.

/// Bytes of the RST frame: Ethernet, IPv4, TCP without options.
pub const TCP_RESET_LEN: usize = 14 + 20 + 20;
/// Bytes of a UDP request's headers: Ethernet, IPv4 (no options), UDP.
pub const UDP_REQUEST_LEN: usize = 14 + 20 + 8;
/// Bytes of the ICMP error frame: Ethernet, IPv4, ICMP header, the quoted
/// IPv4 header and 8 bytes.
pub const ICMP_UNREACHABLE_LEN: usize = 14 + 20 + 8 + 20 + 8;

const ETH: usize = 14;
const IP: usize = ETH;
const L4: usize = ETH + 20;
const TTL: u8 = 64;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const TCP_RST: u8 = 0x04;
const TCP_SYN: u8 = 0x02;
const TCP_FIN: u8 = 0x01;
const TCP_ACK: u8 = 0x10;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_PORT_UNREACH: u8 = 3;
const ICMP_FRAG_NEEDED: u8 = 4;

/// The one's complement sum (RFC 1071) of `bytes` as big-endian 16-bit
/// words, added to `sum`, not folded. `bytes` has an even length.
#[inline(always)]
fn sum16(bytes: &[u8], mut sum: u32) -> u32 {
    let mut i = 0;
    while i + 1 < bytes.len() {
        sum += u16::from_be_bytes([bytes[i], bytes[i + 1]]) as u32;
        i += 2;
    }
    sum
}

/// The checksum field's value for a running `sum`: folded, complemented.
#[inline(always)]
fn finish(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// Turn the request's Ethernet and IPv4 headers (no options) at the start
/// of `frame` into the answer's: Ethernet back to the sender (its MACs
/// swapped: the next hop the request came from is where the answer goes)
/// and IPv4 from the request's destination to its source, for
/// `payload_len` bytes of `protocol`, its checksum filled in.
#[inline(always)]
fn answer_headers(frame: &mut [u8], protocol: u8, payload_len: u16) {
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&frame[0..6]);
    frame.copy_within(6..12, 0);
    frame[6..12].copy_from_slice(&mac);
    frame[12] = 0x08;
    frame[13] = 0x00;
    let ip = &mut frame[IP..IP + 20];
    let (client, frontend) = ([ip[12], ip[13], ip[14], ip[15]], [ip[16], ip[17], ip[18], ip[19]]);
    ip[0] = 0x45;
    ip[1] = 0;
    ip[2..4].copy_from_slice(&(20 + payload_len).to_be_bytes());
    // Identification 0, don't fragment.
    ip[4..8].copy_from_slice(&[0, 0, 0x40, 0]);
    ip[8] = TTL;
    ip[9] = protocol;
    ip[10..12].copy_from_slice(&[0, 0]);
    // From the address the client asked, to the client.
    ip[12..16].copy_from_slice(&frontend);
    ip[16..20].copy_from_slice(&client);
    let check = finish(sum16(ip, 0));
    ip[10..12].copy_from_slice(&check.to_be_bytes());
}

/// Rewrite `frame`, a TCP segment without ACK (a SYN) whose first
/// `TCP_RESET_LEN` bytes are Ethernet, IPv4 without options and the fixed
/// TCP header, into the RST that refuses it: ports swapped, `SEQ=0`,
/// `ACK=SEG.SEQ+SEG.LEN` (SYN and FIN count one each), no window, no
/// options. The caller trims the packet to `TCP_RESET_LEN`.
#[inline(always)]
pub fn tcp_reset(frame: &mut [u8; TCP_RESET_LEN]) {
    let total_len = u16::from_be_bytes([frame[IP + 2], frame[IP + 3]]) as u32;
    let tcp = &frame[L4..L4 + 20];
    let (src_port, dst_port) = ([tcp[0], tcp[1]], [tcp[2], tcp[3]]);
    let header_len = ((tcp[12] >> 4) as u32) * 4;
    let data_len = total_len.saturating_sub(20 + header_len);
    let flags_in = tcp[13];
    let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
    let ack = seq
        .wrapping_add(data_len)
        .wrapping_add((flags_in & TCP_SYN != 0) as u32)
        .wrapping_add((flags_in & TCP_FIN != 0) as u32);
    answer_headers(frame, IPPROTO_TCP, 20);
    let tcp = &mut frame[L4..L4 + 20];
    tcp[0..2].copy_from_slice(&dst_port);
    tcp[2..4].copy_from_slice(&src_port);
    tcp[4..8].copy_from_slice(&[0; 4]);
    tcp[8..12].copy_from_slice(&ack.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = TCP_RST | TCP_ACK;
    // Window, checksum, urgent pointer.
    tcp[14..20].copy_from_slice(&[0; 6]);
    // Pseudo header: addresses, protocol, TCP length.
    let mut sum = sum16(&frame[IP + 12..IP + 20], IPPROTO_TCP as u32 + 20);
    sum = sum16(&frame[L4..L4 + 20], sum);
    frame[L4 + 16..L4 + 18].copy_from_slice(&finish(sum).to_be_bytes());
}

/// Rewrite `frame`, whose first `UDP_REQUEST_LEN` bytes are a UDP
/// datagram's Ethernet, IPv4 (no options) and UDP headers (the rest
/// anything), into the ICMP port unreachable that refuses it, quoting its
/// IPv4 and UDP headers. The caller sizes the packet to
/// `ICMP_UNREACHABLE_LEN` first.
#[inline(always)]
pub fn icmp_port_unreachable(frame: &mut [u8; ICMP_UNREACHABLE_LEN]) {
    icmp_unreachable(frame, ICMP_PORT_UNREACH, 0);
}

/// Rewrite `frame`, whose first `UDP_REQUEST_LEN` bytes are a packet's
/// Ethernet, IPv4 (no options) and first 8 transport bytes, into the ICMP
/// destination unreachable, fragmentation needed (RFC 792, RFC 1191: the
/// next-hop MTU in the second half of the ICMP header) that tells the
/// client `mtu`, quoting its IPv4 header and 8 bytes: the client's stack
/// lowers its path MTU to the address it sent to (`--lb-mode=dsr`: a
/// packet the DSR option would take past the egress MTU). The caller
/// sizes the packet to `ICMP_UNREACHABLE_LEN` first.
#[inline(always)]
pub fn icmp_frag_needed(frame: &mut [u8; ICMP_UNREACHABLE_LEN], mtu: u16) {
    icmp_unreachable(frame, ICMP_FRAG_NEEDED, mtu);
}

#[inline(always)]
fn icmp_unreachable(frame: &mut [u8; ICMP_UNREACHABLE_LEN], code: u8, mtu: u16) {
    frame.copy_within(IP..IP + 28, L4 + 8);
    answer_headers(frame, IPPROTO_ICMP, 8 + 28);
    let icmp = &mut frame[L4..L4 + 8];
    icmp[0] = ICMP_DEST_UNREACH;
    icmp[1] = code;
    // Checksum, 2 unused bytes, then the next-hop MTU (RFC 1191; unused,
    // 0, for every other code).
    icmp[2..6].copy_from_slice(&[0; 4]);
    icmp[6..8].copy_from_slice(&mtu.to_be_bytes());
    let check = finish(sum16(&frame[L4..], 0));
    frame[L4 + 2..L4 + 4].copy_from_slice(&check.to_be_bytes());
}

/// Bytes of the IPv6 RST frame: Ethernet, IPv6, TCP without options.
pub const TCP_RESET6_LEN: usize = 14 + 40 + 20;
/// Bytes of a UDP request's headers over IPv6: Ethernet, IPv6 (no
/// extension header), UDP.
pub const UDP6_REQUEST_LEN: usize = 14 + 40 + 8;
/// Bytes of the ICMPv6 error frame: Ethernet, IPv6, ICMPv6 header, the
/// quoted IPv6 header and 8 bytes.
pub const ICMP6_UNREACHABLE_LEN: usize = 14 + 40 + 8 + 40 + 8;

const L4_6: usize = ETH + 40;
/// Where an ICMPv6 error's quote of the request starts.
pub const ICMP6_QUOTE_OFF: usize = L4_6 + 8;
const IPPROTO_ICMPV6: u8 = 58;
const ICMPV6_DEST_UNREACH: u8 = 1;
const ICMPV6_PORT_UNREACH: u8 = 4;

/// The IPv6 twin of `answer_headers`: Ethernet back to the sender, IPv6
/// from the request's destination to its source, `payload_len` bytes of
/// `next_header`, hop limit 64, no traffic class or flow label. Returns
/// the pseudo header's sum (addresses, length, next header: RFC 8200 8.1)
/// for the transport checksum.
#[inline(always)]
fn answer_headers6(frame: &mut [u8], next_header: u8, payload_len: u16) -> u32 {
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&frame[0..6]);
    frame.copy_within(6..12, 0);
    frame[6..12].copy_from_slice(&mac);
    frame[12] = 0x86;
    frame[13] = 0xdd;
    let ip = &mut frame[IP..IP + 40];
    // Source and destination swapped in place, a byte at a time: no
    // temporary (the datapath builds this with little stack to spare).
    let mut i = 8;
    while i < 24 {
        ip.swap(i, i + 16);
        i += 1;
    }
    ip[0..4].copy_from_slice(&[0x60, 0, 0, 0]);
    ip[4..6].copy_from_slice(&payload_len.to_be_bytes());
    ip[6] = next_header;
    ip[7] = TTL;
    sum16(&ip[8..40], payload_len as u32 + next_header as u32)
}

/// The IPv6 twin of `tcp_reset`: `frame`'s first `TCP_RESET6_LEN` bytes
/// are Ethernet, IPv6 without extension headers and the fixed TCP header
/// of a segment without ACK; they become the RST that refuses it. The
/// caller trims the packet to `TCP_RESET6_LEN`.
#[inline(always)]
pub fn tcp_reset6(frame: &mut [u8; TCP_RESET6_LEN]) {
    let payload_len = u16::from_be_bytes([frame[IP + 4], frame[IP + 5]]) as u32;
    // The TCP header first, in place (ports swapped), then the IPv6 one:
    // few values live at once (the datapath builds this with little stack
    // to spare).
    let tcp = &mut frame[L4_6..L4_6 + 20];
    let header_len = ((tcp[12] >> 4) as u32) * 4;
    let flags_in = tcp[13];
    let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
    let ack = seq
        .wrapping_add(payload_len.saturating_sub(header_len))
        .wrapping_add((flags_in & TCP_SYN != 0) as u32)
        .wrapping_add((flags_in & TCP_FIN != 0) as u32);
    tcp.swap(0, 2);
    tcp.swap(1, 3);
    tcp[4..8].copy_from_slice(&[0; 4]);
    tcp[8..12].copy_from_slice(&ack.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = TCP_RST | TCP_ACK;
    tcp[14..20].copy_from_slice(&[0; 6]);
    let pseudo = answer_headers6(frame, IPPROTO_TCP, 20);
    let sum = sum16(&frame[L4_6..L4_6 + 20], pseudo);
    frame[L4_6 + 16..L4_6 + 18].copy_from_slice(&finish(sum).to_be_bytes());
}

/// The IPv6 twin of `icmp_port_unreachable`: `frame`'s first
/// `UDP6_REQUEST_LEN` bytes are a UDP datagram's Ethernet, IPv6 (no
/// extension header) and UDP headers; it becomes the ICMPv6 destination
/// unreachable, port unreachable (RFC 4443 3.1: type 1, code 4) quoting
/// them. The caller sizes the packet to `ICMP6_UNREACHABLE_LEN` first.
#[inline(always)]
pub fn icmp6_port_unreachable(frame: &mut [u8; ICMP6_UNREACHABLE_LEN]) {
    frame.copy_within(IP..IP + 48, L4_6 + 8);
    icmp6_port_unreachable_quoted(frame);
}

/// `icmp6_port_unreachable` for a `frame` whose quote (the request's IPv6
/// header and 8 bytes, `ICMP6_QUOTE_OFF`) is already in place: the
/// datapath loads it there from the packet, sparing an overlapping copy's
/// stack.
#[inline(always)]
pub fn icmp6_port_unreachable_quoted(frame: &mut [u8; ICMP6_UNREACHABLE_LEN]) {
    let pseudo = answer_headers6(frame, IPPROTO_ICMPV6, 8 + 48);
    let icmp = &mut frame[L4_6..L4_6 + 8];
    icmp[0] = ICMPV6_DEST_UNREACH;
    icmp[1] = ICMPV6_PORT_UNREACH;
    icmp[2..8].copy_from_slice(&[0; 6]);
    let check = finish(sum16(&frame[L4_6..], pseudo));
    frame[L4_6 + 2..L4_6 + 4].copy_from_slice(&check.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xfe];
    const NODE_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const CLIENT: [u8; 4] = [192, 0, 2, 1];
    const NODE: [u8; 4] = [172, 30, 0, 1];

    fn ipv4(total_len: u16, protocol: u8) -> [u8; 20] {
        let mut h = [0u8; 20];
        h[0] = 0x45;
        h[2..4].copy_from_slice(&total_len.to_be_bytes());
        h[4..6].copy_from_slice(&0x4242u16.to_be_bytes());
        h[8] = 61;
        h[9] = protocol;
        h[12..16].copy_from_slice(&CLIENT);
        h[16..20].copy_from_slice(&NODE);
        let c = finish(sum16(&h, 0));
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h
    }

    fn eth(out: &mut [u8]) {
        out[0..6].copy_from_slice(&NODE_MAC);
        out[6..12].copy_from_slice(&CLIENT_MAC);
        out[12..14].copy_from_slice(&[8, 0]);
    }

    /// A SYN with `options` bytes of TCP options and `data` bytes after.
    fn syn(seq: u32, options: u8, data: u16, flags: u8) -> [u8; TCP_RESET_LEN] {
        let mut r = [0u8; TCP_RESET_LEN];
        eth(&mut r);
        r[IP..IP + 20].copy_from_slice(&ipv4(20 + 20 + options as u16 + data, IPPROTO_TCP));
        r[L4..L4 + 2].copy_from_slice(&40000u16.to_be_bytes());
        r[L4 + 2..L4 + 4].copy_from_slice(&30080u16.to_be_bytes());
        r[L4 + 4..L4 + 8].copy_from_slice(&seq.to_be_bytes());
        r[L4 + 12] = ((20 + options) / 4) << 4;
        r[L4 + 13] = flags;
        r
    }

    /// Does the one's complement sum over `bytes` (with `seed`) check out?
    fn verifies(bytes: &[u8], seed: u32) -> bool {
        finish(sum16(bytes, seed)) == 0
    }

    #[test]
    fn a_reset_answers_the_syn_from_the_address_it_was_sent_to_and_acknowledges_it() {
        for (seq, options, data, flags, ack) in [
            (1000u32, 0u8, 0u16, TCP_SYN, 1001u32),
            // Options are not sequence space; data and FIN are.
            (1000, 20, 16, TCP_SYN, 1017),
            (u32::MAX, 0, 0, TCP_SYN, 0),
            (7, 0, 3, TCP_SYN | TCP_FIN, 12),
        ] {
            let mut out = syn(seq, options, data, flags);
            tcp_reset(&mut out);
            assert_eq!(&out[0..6], &CLIENT_MAC, "back to the MAC it came from");
            assert_eq!(&out[6..12], &NODE_MAC);
            let ip = &out[IP..IP + 20];
            assert_eq!((ip[0], u16::from_be_bytes([ip[2], ip[3]]), ip[8], ip[9]), (0x45, 40, 64, 6));
            assert_eq!((&ip[12..16], &ip[16..20]), (&NODE[..], &CLIENT[..]));
            assert!(verifies(ip, 0), "IPv4 checksum");
            let tcp = &out[L4..];
            assert_eq!(u16::from_be_bytes([tcp[0], tcp[1]]), 30080);
            assert_eq!(u16::from_be_bytes([tcp[2], tcp[3]]), 40000);
            assert_eq!(u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]), 0);
            assert_eq!(u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]), ack, "seq {seq} data {data}");
            assert_eq!((tcp[12], tcp[13]), (0x50, TCP_RST | TCP_ACK));
            let pseudo = sum16(&ip[12..20], 6 + 20);
            assert!(verifies(tcp, pseudo), "TCP checksum over the pseudo header");
        }
    }

    #[test]
    fn a_port_unreachable_quotes_the_datagram_header_and_checks_out() {
        // The datagram, its payload ("hello") and what else follows.
        let mut r = [0x55u8; ICMP_UNREACHABLE_LEN];
        eth(&mut r);
        r[IP..IP + 20].copy_from_slice(&ipv4(20 + 8 + 5, 17));
        r[L4..L4 + 8].copy_from_slice(&[0x9c, 0x40, 0x75, 0x80, 0, 13, 0xab, 0xcd]);
        let mut out = r;
        icmp_port_unreachable(&mut out);
        assert_eq!((&out[0..6], &out[6..12]), (&CLIENT_MAC[..], &NODE_MAC[..]));
        let ip = &out[IP..IP + 20];
        assert_eq!((u16::from_be_bytes([ip[2], ip[3]]), ip[9]), (56, 1));
        assert_eq!((&ip[12..16], &ip[16..20]), (&NODE[..], &CLIENT[..]));
        assert!(verifies(ip, 0), "IPv4 checksum");
        let icmp = &out[L4..];
        assert_eq!((icmp[0], icmp[1]), (3, 3), "destination unreachable, port");
        assert_eq!(&icmp[4..8], &[0; 4]);
        assert_eq!(&icmp[8..], &r[IP..IP + 28], "the request's IPv4 header and first 8 bytes");
        assert!(verifies(icmp, 0), "ICMP checksum");
    }

    #[test]
    fn a_frag_needed_carries_the_mtu_and_quotes_the_packet() {
        let mut r = [0x55u8; ICMP_UNREACHABLE_LEN];
        eth(&mut r);
        r[IP..IP + 20].copy_from_slice(&ipv4(1500, 17));
        r[L4..L4 + 8].copy_from_slice(&[0x9c, 0x40, 0x75, 0x80, 0x05, 0xc8, 0xab, 0xcd]);
        let mut out = r;
        icmp_frag_needed(&mut out, 1492);
        let ip = &out[IP..IP + 20];
        assert_eq!((&ip[12..16], &ip[16..20]), (&NODE[..], &CLIENT[..]));
        assert!(verifies(ip, 0), "IPv4 checksum");
        let icmp = &out[L4..];
        assert_eq!((icmp[0], icmp[1]), (3, 4), "destination unreachable, fragmentation needed");
        assert_eq!(&icmp[4..6], &[0, 0], "unused");
        assert_eq!(u16::from_be_bytes([icmp[6], icmp[7]]), 1492, "the next-hop MTU (RFC 1191)");
        assert_eq!(&icmp[8..], &r[IP..IP + 28]);
        assert!(verifies(icmp, 0), "ICMP checksum");
    }

    const CLIENT6: [u8; 16] = [0x20, 0x01, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    const NODE6: [u8; 16] = [0xfd, 0, 0, 0x30, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

    fn ipv6(payload_len: u16, next_header: u8) -> [u8; 40] {
        let mut h = [0u8; 40];
        h[0..4].copy_from_slice(&[0x60, 0x0a, 0xbc, 0xde]);
        h[4..6].copy_from_slice(&payload_len.to_be_bytes());
        h[6] = next_header;
        h[7] = 61;
        h[8..24].copy_from_slice(&CLIENT6);
        h[24..40].copy_from_slice(&NODE6);
        h
    }

    fn eth6(out: &mut [u8]) {
        out[0..6].copy_from_slice(&NODE_MAC);
        out[6..12].copy_from_slice(&CLIENT_MAC);
        out[12..14].copy_from_slice(&[0x86, 0xdd]);
    }

    fn pseudo6(ip: &[u8], len: u32, next_header: u8) -> u32 {
        sum16(&ip[8..40], len + next_header as u32)
    }

    #[test]
    fn an_ipv6_reset_answers_the_syn_from_the_address_it_was_sent_to() {
        for (seq, data, flags, ack) in [(1000u32, 0u16, TCP_SYN, 1001u32), (7, 3, TCP_SYN | TCP_FIN, 12)] {
            let mut r = [0u8; TCP_RESET6_LEN];
            eth6(&mut r);
            r[IP..IP + 40].copy_from_slice(&ipv6(20 + data, IPPROTO_TCP));
            let t = L4_6;
            r[t..t + 2].copy_from_slice(&40000u16.to_be_bytes());
            r[t + 2..t + 4].copy_from_slice(&30080u16.to_be_bytes());
            r[t + 4..t + 8].copy_from_slice(&seq.to_be_bytes());
            r[t + 12] = 5 << 4;
            r[t + 13] = flags;
            let mut out = r;
            tcp_reset6(&mut out);
            assert_eq!((&out[0..6], &out[6..12], &out[12..14]), (&CLIENT_MAC[..], &NODE_MAC[..], &[0x86, 0xdd][..]));
            let ip = &out[IP..IP + 40];
            assert_eq!(&ip[0..4], &[0x60, 0, 0, 0], "no traffic class, no flow label");
            assert_eq!((u16::from_be_bytes([ip[4], ip[5]]), ip[6], ip[7]), (20, 6, 64));
            assert_eq!((&ip[8..24], &ip[24..40]), (&NODE6[..], &CLIENT6[..]));
            let tcp = &out[L4_6..];
            assert_eq!((u16::from_be_bytes([tcp[0], tcp[1]]), u16::from_be_bytes([tcp[2], tcp[3]])), (30080, 40000));
            assert_eq!(u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]), ack, "seq {seq} data {data}");
            assert_eq!((tcp[12], tcp[13]), (0x50, TCP_RST | TCP_ACK));
            assert!(verifies(tcp, pseudo6(ip, 20, 6)), "TCP checksum over the IPv6 pseudo header");
        }
    }

    #[test]
    fn an_icmpv6_port_unreachable_quotes_the_datagram_and_checks_out() {
        let mut r = [0x55u8; ICMP6_UNREACHABLE_LEN];
        eth6(&mut r);
        r[IP..IP + 40].copy_from_slice(&ipv6(8 + 5, 17));
        r[L4_6..L4_6 + 8].copy_from_slice(&[0x9c, 0x40, 0x75, 0x80, 0, 13, 0xab, 0xcd]);
        let mut out = r;
        icmp6_port_unreachable(&mut out);
        assert_eq!((&out[0..6], &out[6..12]), (&CLIENT_MAC[..], &NODE_MAC[..]));
        let ip = &out[IP..IP + 40];
        assert_eq!((u16::from_be_bytes([ip[4], ip[5]]), ip[6], ip[7]), (56, 58, 64));
        assert_eq!((&ip[8..24], &ip[24..40]), (&NODE6[..], &CLIENT6[..]));
        let icmp = &out[L4_6..];
        assert_eq!((icmp[0], icmp[1]), (1, 4), "destination unreachable, port unreachable");
        assert_eq!(&icmp[4..8], &[0; 4]);
        assert_eq!(&icmp[8..], &r[IP..IP + 48], "the request's IPv6 header and first 8 bytes");
        assert!(verifies(icmp, pseudo6(ip, 56, 58)), "ICMPv6 checksum over the pseudo header");
        // The datapath's way (the quote loaded in place first) builds the
        // same answer.
        let mut quoted = r;
        quoted[ICMP6_QUOTE_OFF..].copy_from_slice(&r[IP..IP + 48]);
        icmp6_port_unreachable_quoted(&mut quoted);
        assert_eq!(quoted, out);
    }
}
