//! Pure packet decisions, shared by the eBPF programs and host unit tests.
//!
//! The programs gather facts from the packet and the maps, call these
//! functions, and carry out the answer. Nothing here touches a packet.

use crate::counters::DropReason;

/// What `from_pod` / `from_uplink` do with an IPv4 packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Into a local pod through `bpf_redirect_peer` on this host veth.
    ToLocalPod,
    /// Out of the uplink towards another node.
    ToRemoteNode,
    /// Encapsulated towards another node: tunnel key set, redirected to the
    /// VXLAN device.
    ToTunnel,
    /// Encapsulated towards another node by the program itself (outer
    /// IPv4 + UDP + VXLAN written with `bpf_skb_adjust_room`), out of the
    /// uplink: the same packet on the wire as `ToTunnel`, without the
    /// device's transmit path.
    EncapToNode,
    /// Hand to the node's network stack unchanged.
    ToStack,
    /// Hand to the node's stack: pod-bound, but the reply of a flow the
    /// stack forwarded, so conntrack must see it (reverse its NAT).
    StackFlowReply,
    /// Hand to the node's stack: for a tunneled peer, but too large for the
    /// VXLAN device (the stack fragments it or refuses it with ICMP).
    TunnelTooBig,
    /// IPv6 (`from_pod6`, `from_uplink6`): for a pod, but the node's stack
    /// must be the router for it: hop limit 1 (it answers time exceeded),
    /// larger than the egress MTU (it answers Packet Too Big: IPv6 routers
    /// never fragment, RFC 8200 5), extension headers or a fragment (the
    /// fast path reads no header chain).
    RouterToStack,
    Drop(DropReason),
}

/// Facts `from_pod` looked up for one IPv4 packet.
#[derive(Clone, Copy, Debug)]
pub struct FromPodFacts {
    /// The source address belongs to the endpoint behind this very interface.
    pub source_is_own: bool,
    pub dest_is_local_pod: bool,
    pub dest_is_remote_pod: bool,
    /// The remote pod's node is flagged `REMOTE_NODE_VXLAN`.
    pub dest_via_tunnel: bool,
    pub uplink_configured: bool,
    /// `TUNNEL_CONFIG` names a VXLAN device.
    pub tunnel_configured: bool,
    /// Longer than the VXLAN device's MTU, and not a GSO packet (those are
    /// cut to the pod's MSS later).
    pub too_big_for_tunnel: bool,
    /// The program can encapsulate this packet itself (`encap_fits`): the
    /// node's own address is known, and each segment fits the tunnel.
    /// Otherwise the VXLAN device does it (`ToTunnel`).
    pub can_encap: bool,
    pub ttl: u8,
    /// The packet's tuple is in `STACK_FLOWS`: it answers a flow the node's
    /// stack forwarded.
    pub replies_to_stack_flow: bool,
    /// A fragment (more fragments, or an offset): no ports to match a flow
    /// by, so the stack (which reassembles) takes it.
    pub is_fragment: bool,
    pub header_ok: bool,
}

/// Decide for a packet a pod sent. Anti-spoofing comes first: nothing a pod
/// sends with a foreign source address goes anywhere, not even to the stack.
pub fn from_pod(f: FromPodFacts) -> Verdict {
    if !f.source_is_own {
        return Verdict::Drop(DropReason::SourceSpoofed);
    }
    if !f.header_ok {
        return Verdict::Drop(DropReason::BadIpHeader);
    }
    if f.dest_is_local_pod || f.dest_is_remote_pod {
        if f.is_fragment {
            return Verdict::ToStack;
        }
        if f.replies_to_stack_flow {
            return Verdict::StackFlowReply;
        }
        if f.ttl <= 1 {
            return Verdict::Drop(DropReason::TtlExpired);
        }
        if f.dest_is_local_pod {
            return Verdict::ToLocalPod;
        }
        if f.dest_via_tunnel {
            if !f.tunnel_configured {
                return Verdict::Drop(DropReason::NoTunnel);
            }
            if f.too_big_for_tunnel {
                return Verdict::TunnelTooBig;
            }
            if f.can_encap {
                return Verdict::EncapToNode;
            }
            return Verdict::ToTunnel;
        }
        if !f.uplink_configured {
            return Verdict::Drop(DropReason::NoUplink);
        }
        return Verdict::ToRemoteNode;
    }
    Verdict::ToStack
}

/// Decide for a frame a pod sent that is not IPv4, by its EtherType (as in
/// the frame: network byte order). ARP goes to the node's stack (which
/// answers for the gateway if a pod ever asks). Anything else — IPv6 until
/// sluice supports it, VLAN tags, other protocols — would reach the stack
/// with no source check: dropped.
pub fn from_pod_not_ipv4(ether_type_be: u16) -> Verdict {
    const ETH_P_ARP: u16 = 0x0806;
    if u16::from_be(ether_type_be) == ETH_P_ARP {
        Verdict::ToStack
    } else {
        Verdict::Drop(DropReason::UnknownL3)
    }
}

/// Facts `from_pod` gathered for one IPv6 packet on a dual-stack node.
#[derive(Clone, Copy, Debug, Default)]
pub struct FromPod6Facts {
    /// The version nibble says 6.
    pub version_ok: bool,
    /// The source is the address `ENDPOINTS6` gives the endpoint behind
    /// this very interface.
    pub source_is_own: bool,
    /// The source is link-local (fe80::/10) or unspecified (`::`, duplicate
    /// address detection and MLD before an address exists).
    pub source_is_link_local_or_unspecified: bool,
    /// The destination is on the link only: link-local unicast or
    /// link-local-scope multicast (ff02::/16: neighbour and router
    /// solicitations, MLD reports).
    pub dest_is_link_scope: bool,
    /// The destination is a pod of this node (`ENDPOINTS6`).
    pub dest_is_local_pod: bool,
    /// The destination is in another node's IPv6 pod CIDR (`NODE_ROUTES6`).
    pub dest_is_remote_pod: bool,
    pub uplink_configured: bool,
    /// The fixed header is followed directly by TCP, UDP, ICMPv6 or SCTP:
    /// no extension header, no fragment header.
    pub plain_transport: bool,
    pub hop_limit: u8,
    /// Fits the MTU of the device it would leave by (each segment, for a
    /// GSO packet): the destination pod's host end, or the uplink.
    pub fits_mtu: bool,
    /// The packet's tuple is in `STACK_FLOWS6`: it answers a flow the
    /// node's stack forwarded (kube-proxy's DNAT of an IPv6 ClusterIP,
    /// portmap's hostPort), whose translation conntrack must undo.
    pub replies_to_stack_flow: bool,
}

/// What `from_pod` does with a pod's IPv6 packet (dual-stack). First the
/// source: its own address may go anywhere; link-local or unspecified
/// sources only to link-scope destinations (neighbour discovery for the
/// gateway, MLD, DAD: the kernel never forwards those off the link); any
/// other source is forged. Then, for its own address, the fast path as
/// IPv4's: a pod of this node (`ToLocalPod`), another node's pod routed
/// natively (`ToRemoteNode`), unless a router's answer is due
/// (`RouterToStack`); everything else to the node's stack, which routes
/// (and masquerades) it.
pub fn from_pod6(f: FromPod6Facts) -> Verdict {
    if !f.version_ok {
        return Verdict::Drop(DropReason::BadIpHeader);
    }
    if !f.source_is_own {
        if f.source_is_link_local_or_unspecified && f.dest_is_link_scope {
            return Verdict::ToStack;
        }
        return Verdict::Drop(DropReason::SourceSpoofed);
    }
    let remote = f.dest_is_remote_pod && f.uplink_configured;
    if !f.dest_is_local_pod && !remote {
        return Verdict::ToStack;
    }
    if f.replies_to_stack_flow {
        return Verdict::StackFlowReply;
    }
    if !f.plain_transport || f.hop_limit <= 1 || !f.fits_mtu {
        return Verdict::RouterToStack;
    }
    if f.dest_is_local_pod {
        Verdict::ToLocalPod
    } else {
        Verdict::ToRemoteNode
    }
}

/// Facts `from_uplink` gathered for one IPv6 packet.
#[derive(Clone, Copy, Debug, Default)]
pub struct FromUplink6Facts {
    pub version_ok: bool,
    /// The destination is a pod of this node (`ENDPOINTS6`).
    pub dest_is_local_pod: bool,
    /// The source is in another node's IPv6 pod CIDR (`NODE_ROUTES6`).
    pub source_is_remote_pod: bool,
    /// The source is one of this node's own pods: it cannot come from the
    /// node network.
    pub source_is_local_pod: bool,
    /// As `FromPod6Facts`.
    pub plain_transport: bool,
    pub hop_limit: u8,
    /// Fits the destination pod's host end's MTU.
    pub fits_mtu: bool,
    /// As `FromPod6Facts`.
    pub replies_to_stack_flow: bool,
}

/// The IPv6 twin of `from_uplink`: only pod-to-pod traffic takes the fast
/// path (a packet from anything else goes through the stack, as the pod's
/// reply to it does: conntrack sees both directions, masquerade is
/// undone); a packet claiming one of this node's pods as source is
/// dropped; a router's answer is the stack's to give.
pub fn from_uplink6(f: FromUplink6Facts) -> Verdict {
    if f.source_is_local_pod {
        return Verdict::Drop(DropReason::UplinkSourceSpoofed);
    }
    if !f.dest_is_local_pod || !f.source_is_remote_pod {
        return Verdict::ToStack;
    }
    if !f.version_ok {
        return Verdict::Drop(DropReason::BadIpHeader);
    }
    if f.replies_to_stack_flow {
        return Verdict::StackFlowReply;
    }
    if !f.plain_transport || f.hop_limit <= 1 || !f.fits_mtu {
        return Verdict::RouterToStack;
    }
    Verdict::ToLocalPod
}

/// Next headers the IPv6 fast path carries: a transport right after the
/// fixed header (TCP, UDP, ICMPv6, SCTP). Anything else (hop-by-hop,
/// routing, fragment, destination options, AH, ESP, ...) goes to the stack.
pub fn ipv6_plain_transport(next_header: u8) -> bool {
    matches!(next_header, 6 | 17 | 58 | 132)
}

/// fe80::/10 or `::`.
pub fn ipv6_link_local_or_unspecified(addr: &[u8; 16]) -> bool {
    let link_local = addr[0] == 0xfe && addr[1] & 0xc0 == 0x80;
    let mut unspecified = true;
    let mut i = 0;
    while i < 16 {
        unspecified &= addr[i] == 0;
        i += 1;
    }
    link_local || unspecified
}

/// fe80::/10 unicast or link-local-scope multicast (ff02::/16, any flags:
/// ff02, ff12, ...).
pub fn ipv6_link_scope(addr: &[u8; 16]) -> bool {
    let link_local = addr[0] == 0xfe && addr[1] & 0xc0 == 0x80;
    let link_multicast = addr[0] == 0xff && addr[1] & 0x0f == 0x02;
    link_local || link_multicast
}

/// Is this a well-formed IPv4 header for a packet of `l3_len` bytes (from
/// the IP header on)? Version 4, header length (IHL) at least 5 words and
/// within the total length, total length within the packet. A total
/// length of 0 is allowed only for packets over 64 KiB (BIG TCP GSO
/// packets carry 0 there).
pub fn ipv4_header_ok(version_ihl: u8, tot_len_be: u16, l3_len: u32) -> bool {
    let ihl_bytes = (version_ihl & 0x0f) as u32 * 4;
    let tot_len = u16::from_be(tot_len_be) as u32;
    if version_ihl >> 4 != 4 || ihl_bytes < 20 {
        return false;
    }
    if tot_len == 0 {
        return l3_len > 65535;
    }
    tot_len >= ihl_bytes && tot_len <= l3_len
}

/// Facts `from_uplink` looked up for one IPv4 packet.
#[derive(Clone, Copy, Debug)]
pub struct FromUplinkFacts {
    pub dest_is_local_pod: bool,
    /// The source is a pod on another node (its CIDR is in `NODE_ROUTES`).
    pub source_is_remote_pod: bool,
    /// The source is one of this node's own pods (`ENDPOINTS`): it cannot
    /// come from the node network.
    pub source_is_local_pod: bool,
    pub header_ok: bool,
    pub ttl: u8,
    pub replies_to_stack_flow: bool,
    pub is_fragment: bool,
}

/// Decide for a packet arriving on the uplink. Only pod-to-pod traffic
/// takes the fast path here: a packet from anything else goes to this
/// node's stack, because the pod's reply to a non-pod address does too,
/// and conntrack must see both directions of a flow (it drops a reply to a
/// connection it never saw as invalid). One exception is decided after
/// this verdict: another node's own address (a NodePort it SNATed), whose
/// answers skip the stack as well (`from_node_fast`, `node_path`).
pub fn from_uplink(f: FromUplinkFacts) -> Verdict {
    if f.source_is_local_pod {
        return Verdict::Drop(DropReason::UplinkSourceSpoofed);
    }
    if f.dest_is_local_pod && !f.header_ok {
        return Verdict::Drop(DropReason::BadIpHeader);
    }
    if !f.dest_is_local_pod || !f.source_is_remote_pod || f.is_fragment {
        return Verdict::ToStack;
    }
    if f.replies_to_stack_flow {
        return Verdict::StackFlowReply;
    }
    if f.ttl <= 1 {
        return Verdict::Drop(DropReason::TtlExpired);
    }
    Verdict::ToLocalPod
}

/// Decide for a packet the VXLAN device decapsulated (its ingress). The
/// same rules as the uplink's: only pod-to-pod traffic is fast-pathed, and
/// a packet claiming one of this node's pods as source is dropped, under a
/// reason of its own. Unlike the uplink, the tunnel says which node sent
/// the packet: `sent_by_owner` is false when the outer source is not the
/// node IP `NODE_ROUTES` has for the inner source's pod CIDR, and such a
/// packet for a local pod is dropped.
pub fn from_tunnel(f: FromUplinkFacts, sent_by_owner: bool) -> Verdict {
    if f.dest_is_local_pod && f.source_is_remote_pod && !sent_by_owner && !f.source_is_local_pod {
        return Verdict::Drop(DropReason::TunnelWrongNode);
    }
    match from_uplink(f) {
        Verdict::Drop(DropReason::UplinkSourceSpoofed) => Verdict::Drop(DropReason::TunnelSourceSpoofed),
        v => v,
    }
}

/// Does the node that sent an IPv6 packet through the tunnel (`sender`:
/// the outer IPv6 source over an IPv6 underlay, the outer IPv4 source
/// IPv4-mapped over an IPv4 one, `ipv4_mapped`; all zero when the device
/// gave no tunnel metadata) own the inner source's IPv6 pod CIDR? `flags`
/// and `node_ip6` are the `NODE_ROUTES6` entry covering the inner source:
/// a peer reached through VXLAN (`REMOTE_NODE_VXLAN`) holds the address
/// its tunnel runs to there, its IPv4 node address IPv4-mapped
/// (`::ffff:a.b.c.d`) or, on an IPv6-only node, its IPv6 node address. A
/// natively routed peer's pods never come through the tunnel.
pub fn tunnel6_sent_by_owner(flags: u32, node_ip6: &[u8; 16], sender: &[u8; 16]) -> bool {
    *sender != [0u8; 16] && flags & crate::maps::REMOTE_NODE_VXLAN != 0 && *node_ip6 == *sender
}

/// `ip_be` IPv4-mapped (`::ffff:a.b.c.d`), as `NODE_ROUTES6` holds a peer
/// tunneled over IPv4; all zero for 0 (no address).
pub fn ipv4_mapped(ip_be: u32) -> [u8; 16] {
    if ip_be == 0 {
        return [0u8; 16];
    }
    let b = ip_be.to_ne_bytes();
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, b[0], b[1], b[2], b[3]]
}

/// Decide for an IPv6 packet the VXLAN device decapsulated (issue 28: IPv6
/// inside the IPv4 underlay), by `from_tunnel`'s rules: a packet claiming
/// one of this node's pods as source is spoofed; one from a remote pod
/// (its source in a peer's IPv6 pod CIDR, `source_is_remote_pod`) must
/// come from the node that owns that CIDR (`tunnel6_sent_by_owner`); any
/// other source (a peer node's own address answering a pod of this node
/// that reached it natively, the peer's kube-proxy DNATing its own packet
/// to a pod here) is no pod's and goes to the stack, as the same packet
/// arriving on the uplink would. What passes goes to the node's stack,
/// which routes it into the pod (hop limit, Packet Too Big: the stack's).
pub fn from_tunnel6(source_is_local_pod: bool, source_is_remote_pod: bool, sent_by_owner: bool) -> Verdict {
    if source_is_local_pod {
        return Verdict::Drop(DropReason::TunnelSourceSpoofed);
    }
    if source_is_remote_pod && !sent_by_owner {
        return Verdict::Drop(DropReason::TunnelWrongNode);
    }
    Verdict::ToStack
}

/// Can `from_pod` encapsulate a packet itself? It needs this node's own
/// address (the outer source), must not be running as a netkit peer
/// program (`bpf_skb_adjust_room` is only used from veth ingress), and
/// every segment must fit the tunnel: a GSO packet is cut into segments of
/// `inner_headers + gso_size` bytes after encapsulation, and the uplink's
/// `bpf_redirect_neigh` skips the stack's MTU checks, so a segment larger
/// than `tunnel_mtu` (pods given a larger MTU than the tunnel's) goes
/// through the VXLAN device as before, where the stack fragments the
/// outer packet. `inner_headers` is 0 when unknown (not TCP or UDP): then
/// only single packets (already checked against the MTU) qualify.
pub fn encap_fits(node_ip_known: bool, netkit: bool, gso_size: u32, inner_headers: u32, tunnel_mtu: u32) -> bool {
    if !node_ip_known || netkit {
        return false;
    }
    if gso_size == 0 {
        return true;
    }
    inner_headers != 0 && inner_headers + gso_size <= tunnel_mtu
}

/// The UDP source port of an encapsulated packet: the flow's hash spread
/// over 32768..=60999 (Linux's default ephemeral range, as the kernel's
/// `udp_flow_src_port`), so the underlay's ECMP and the receiver's RSS
/// tell flows apart. Host byte order.
pub fn vxlan_source_port(flow_hash: u32) -> u16 {
    const MIN: u32 = 32768;
    const MAX: u32 = 61000;
    // Multiplied by the golden ratio (Fibonacci hashing): a hash whose
    // entropy sits in its low bits still spreads over the range, which
    // takes the high bits.
    let hash = flow_hash.wrapping_mul(0x9e37_79b1);
    (((hash as u64 * (MAX - MIN) as u64) >> 32) as u32 + MIN) as u16
}

/// The checksum of a 20-byte IPv4 header given as its ten 16-bit words
/// (as loaded from memory, so in network byte order), with the checksum
/// word itself 0. The result is stored as is.
pub fn ipv4_header_checksum(words_be: [u16; 10]) -> u16 {
    let mut sum: u32 = 0;
    let mut i = 0;
    while i < 10 {
        sum += words_be[i] as u32;
        i += 1;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// The outer headers of a packet on the uplink that might be VXLAN.
#[derive(Clone, Copy, Debug)]
pub struct VxlanOuter {
    /// Outer IPv4 destination (be), and this node's own address (be).
    pub dst_be: u32,
    pub node_ip_be: u32,
    /// Outer IPv4 version/IHL byte and fragment field (be).
    pub version_ihl: u8,
    pub frag_off_be: u16,
    pub protocol: u8,
    /// UDP destination port (be).
    pub dst_port_be: u16,
    /// The VXLAN header's first byte (flags) and its VNI (host order).
    pub vxlan_flags: u8,
    pub vni: u32,
    /// The inner Ethernet header's EtherType (be).
    pub inner_ether_type_be: u16,
}

/// Is this a VXLAN packet `from_uplink` may decapsulate itself: for this
/// node, not fragmented, no IP options (the inner packet at a fixed
/// offset), UDP to `TUNNEL_PORT`, the I flag set, sluice's VNI, and IPv4
/// inside? Anything else is left to the stack (and the VXLAN device's
/// socket, if it is VXLAN at all).
pub fn vxlan_for_this_node(o: VxlanOuter) -> bool {
    const IPPROTO_UDP: u8 = 17;
    const VXLAN_FLAG_I: u8 = 0x08;
    o.node_ip_be != 0
        && o.dst_be == o.node_ip_be
        && o.version_ihl == 0x45
        && u16::from_be(o.frag_off_be) & 0x3fff == 0
        && o.protocol == IPPROTO_UDP
        && u16::from_be(o.dst_port_be) == crate::maps::TUNNEL_PORT
        && o.vxlan_flags & VXLAN_FLAG_I != 0
        && o.vni == crate::maps::TUNNEL_VNI
        && u16::from_be(o.inner_ether_type_be) == 0x0800
}

/// The IPv4 header checksum after decrementing TTL by one (RFC 1624
/// incremental update, as the kernel's `ip_decrease_ttl`). `check_be` and the
/// result are the header field as stored: network byte order.
pub fn checksum_after_ttl_decrement(check_be: u16) -> u16 {
    // TTL is the high byte of its 16-bit word; lowering it by one raises the
    // one's-complement sum's complement by 0x0100 (network order).
    let check = u16::from_be(check_be) as u32 + 0x0100;
    let folded = (check & 0xffff) + (check >> 16);
    (folded as u16).to_be()
}

/// What `from_uplink` knows of an IPv4 packet for a local pod whose source
/// is no pod at all (`from_uplink` gave `ToStack`), to decide whether it
/// skips this node's stack (`node_path`, issue 27): a NodePort another node
/// translated and SNATed to its own address, or that node's host network.
#[derive(Clone, Copy, Debug, Default)]
pub struct FromNodeFacts {
    /// The source is another node's address (`NODE_ADDRESSES` says
    /// `NODE_ADDRESS_REMOTE`): not the world, not this node.
    pub source_is_remote_node: bool,
    /// IP options or a fragment (`parse::flow`'s `stack_only`).
    pub stack_only: bool,
    /// The reply of a flow the stack forwarded (`STACK_FLOWS`): a
    /// connection the pod opened towards that node through the stack.
    pub replies_to_stack_flow: bool,
    pub ttl: u8,
    /// Fits the pod's device (`bpf_check_mtu`, GSO segments included).
    pub fits_mtu: bool,
}

/// Does a packet from another node's address go into the local pod without
/// this node's stack? Only a plain one (no options, not a fragment), not
/// the reply of a connection the stack carries (its answers went through
/// the stack: conntrack must see both halves), with a TTL the hop leaves
/// above 0 and a size the pod's device takes. Everything else goes to the
/// stack as before, which answers what a router must (time exceeded,
/// fragmentation needed) and reassembles.
pub fn from_node_fast(f: FromNodeFacts) -> bool {
    f.source_is_remote_node && !f.stack_only && !f.replies_to_stack_flow && f.ttl > 1 && f.fits_mtu
}

/// What `from_pod` knows of a local pod's IPv4 packet its verdict sends to
/// the stack, to decide whether it is an answer `node_path` sends back
/// without it.
#[derive(Clone, Copy, Debug, Default)]
pub struct AnswerToNodeFacts {
    /// The destination is another node's address (`NODE_ADDRESSES`).
    pub dest_is_remote_node: bool,
    /// Its tuple is in `NODE_FLOWS`: the answer of a connection
    /// `from_uplink` carried in without the stack.
    pub answers_node_flow: bool,
    /// A TCP SYN without ACK: the pod opens a connection (kube-proxy's
    /// NodePort DNAT, masquerade: the stack's), whatever the tuple once was.
    pub opens_connection: bool,
    pub stack_only: bool,
    pub ttl: u8,
    /// Fits the uplink (`bpf_check_mtu`, GSO segments included).
    pub fits_mtu: bool,
    pub uplink_configured: bool,
}

/// Does a local pod's packet to another node's address leave without this
/// node's stack? Only the answer of a connection that came in that way
/// (`NODE_FLOWS`), never a connection the pod opens, and only a packet the
/// stack would forward unchanged: plain, TTL above 1, fitting the uplink.
pub fn answer_to_node_fast(f: AnswerToNodeFacts) -> bool {
    f.dest_is_remote_node
        && f.answers_node_flow
        && !f.opens_connection
        && !f.stack_only
        && f.ttl > 1
        && f.fits_mtu
        && f.uplink_configured
}

/// ICMP (IPv4) types that report an error about a packet they quote
/// (destination unreachable, time exceeded, parameter problem): a pod's
/// such message about a connection belongs to that connection, and leaves
/// the way its answers do (`node_path`).
pub fn icmp4_error(icmp_type: u8) -> bool {
    matches!(icmp_type, 3 | 11 | 12)
}

/// The tuple of the answer an ICMP error stands for: the error quotes the
/// packet it is about (`quoted`, as that packet was sent: from the peer to
/// the error's sender), and answers go the other way.
pub fn icmp4_error_answer(quoted: crate::FlowKey) -> crate::FlowKey {
    quoted.reversed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_through_the_tunnel_only_from_the_owner_of_its_pod_cidr() {
        let sender = ipv4_mapped(u32::from_ne_bytes([172, 31, 0, 3]));
        let mapped = core::net::Ipv4Addr::new(172, 31, 0, 3).to_ipv6_mapped().octets();
        assert_eq!(sender, mapped);
        let vxlan = crate::maps::REMOTE_NODE_VXLAN;
        assert!(tunnel6_sent_by_owner(vxlan, &mapped, &sender));
        // Another node sent it, no metadata, a native peer's CIDR, a
        // native next hop that happens to hold the same bytes unflagged.
        assert!(!tunnel6_sent_by_owner(vxlan, &mapped, &ipv4_mapped(u32::from_ne_bytes([172, 30, 0, 2]))));
        assert!(!tunnel6_sent_by_owner(vxlan, &mapped, &ipv4_mapped(0)));
        assert_eq!(ipv4_mapped(0), [0u8; 16]);
        assert!(!tunnel6_sent_by_owner(0, &mapped, &sender));
        let native: [u8; 16] = "fd00:30::3".parse::<core::net::Ipv6Addr>().unwrap().octets();
        assert!(!tunnel6_sent_by_owner(vxlan, &native, &sender));
        // VXLAN over an IPv6 underlay (IPv6-only nodes): the entry holds
        // the peer's IPv6 address, the sender is the outer IPv6 source.
        let peer6: [u8; 16] = "fd00:31::3".parse::<core::net::Ipv6Addr>().unwrap().octets();
        let other6: [u8; 16] = "fd00:30::2".parse::<core::net::Ipv6Addr>().unwrap().octets();
        assert!(tunnel6_sent_by_owner(vxlan, &peer6, &peer6));
        assert!(!tunnel6_sent_by_owner(vxlan, &peer6, &other6));
        assert!(!tunnel6_sent_by_owner(0, &peer6, &peer6), "a native peer's pods never come through the tunnel");
        assert!(!tunnel6_sent_by_owner(vxlan, &peer6, &[0u8; 16]));
        // An IPv4 sender never matches an IPv6 entry, nor the reverse.
        assert!(!tunnel6_sent_by_owner(vxlan, &peer6, &sender));
        assert_eq!(from_tunnel6(false, true, true), Verdict::ToStack);
        assert_eq!(from_tunnel6(false, true, false), Verdict::Drop(DropReason::TunnelWrongNode));
        assert_eq!(from_tunnel6(true, false, false), Verdict::Drop(DropReason::TunnelSourceSpoofed));
        // No pod's source (a peer node's own address): the stack's, as on
        // the uplink, whoever sent it.
        assert_eq!(from_tunnel6(false, false, false), Verdict::ToStack);
    }

    fn facts() -> FromPodFacts {
        FromPodFacts {
            source_is_own: true,
            dest_is_local_pod: false,
            dest_is_remote_pod: false,
            dest_via_tunnel: false,
            uplink_configured: true,
            tunnel_configured: true,
            too_big_for_tunnel: false,
            can_encap: false,
            ttl: 64,
            replies_to_stack_flow: false,
            is_fragment: false,
            header_ok: true,
        }
    }

    #[test]
    fn from_pod_table() {
        let cases = [
            (facts(), Verdict::ToStack),
            (FromPodFacts { source_is_own: false, ..facts() }, Verdict::Drop(DropReason::SourceSpoofed)),
            (
                FromPodFacts { source_is_own: false, dest_is_local_pod: true, ..facts() },
                Verdict::Drop(DropReason::SourceSpoofed),
            ),
            (FromPodFacts { dest_is_local_pod: true, ..facts() }, Verdict::ToLocalPod),
            (FromPodFacts { dest_is_local_pod: true, dest_is_remote_pod: true, ..facts() }, Verdict::ToLocalPod),
            (FromPodFacts { dest_is_remote_pod: true, ..facts() }, Verdict::ToRemoteNode),
            (
                FromPodFacts { dest_is_remote_pod: true, uplink_configured: false, ..facts() },
                Verdict::Drop(DropReason::NoUplink),
            ),
            (FromPodFacts { dest_is_remote_pod: true, ttl: 1, ..facts() }, Verdict::Drop(DropReason::TtlExpired)),
            // Tunneled peers: the VXLAN device, whatever the uplink says;
            // without a device, a drop of its own.
            (FromPodFacts { dest_is_remote_pod: true, dest_via_tunnel: true, ..facts() }, Verdict::ToTunnel),
            (
                FromPodFacts { dest_is_remote_pod: true, dest_via_tunnel: true, uplink_configured: false, ..facts() },
                Verdict::ToTunnel,
            ),
            (
                FromPodFacts { dest_is_remote_pod: true, dest_via_tunnel: true, tunnel_configured: false, ..facts() },
                Verdict::Drop(DropReason::NoTunnel),
            ),
            (
                FromPodFacts { dest_is_remote_pod: true, dest_via_tunnel: true, too_big_for_tunnel: true, ..facts() },
                Verdict::TunnelTooBig,
            ),
            // Too big matters only on the tunnel.
            (FromPodFacts { dest_is_remote_pod: true, too_big_for_tunnel: true, ..facts() }, Verdict::ToRemoteNode),
            (
                FromPodFacts { dest_is_remote_pod: true, dest_via_tunnel: true, ttl: 1, ..facts() },
                Verdict::Drop(DropReason::TtlExpired),
            ),
            (
                FromPodFacts { dest_is_remote_pod: true, dest_via_tunnel: true, is_fragment: true, ..facts() },
                Verdict::ToStack,
            ),
            (
                FromPodFacts { dest_is_local_pod: true, dest_is_remote_pod: true, dest_via_tunnel: true, ..facts() },
                Verdict::ToLocalPod,
            ),
            (FromPodFacts { ttl: 1, ..facts() }, Verdict::ToStack),
            // Replies of flows the stack forwarded go back through it, to a
            // local pod or a remote one; anti-spoofing still comes first.
            (FromPodFacts { dest_is_local_pod: true, replies_to_stack_flow: true, ..facts() }, Verdict::StackFlowReply),
            (
                FromPodFacts { dest_is_remote_pod: true, replies_to_stack_flow: true, ..facts() },
                Verdict::StackFlowReply,
            ),
            (
                FromPodFacts { source_is_own: false, dest_is_local_pod: true, replies_to_stack_flow: true, ..facts() },
                Verdict::Drop(DropReason::SourceSpoofed),
            ),
            // Not for a pod: the stack anyway, whatever the flow table says.
            (FromPodFacts { replies_to_stack_flow: true, ..facts() }, Verdict::ToStack),
            // Fragments to pods: the stack reassembles and routes them.
            (FromPodFacts { dest_is_local_pod: true, is_fragment: true, ..facts() }, Verdict::ToStack),
            (FromPodFacts { dest_is_remote_pod: true, is_fragment: true, ..facts() }, Verdict::ToStack),
            (FromPodFacts { header_ok: false, ..facts() }, Verdict::Drop(DropReason::BadIpHeader)),
            (
                FromPodFacts { header_ok: false, source_is_own: false, ..facts() },
                Verdict::Drop(DropReason::SourceSpoofed),
            ),
        ];
        for (i, (f, want)) in cases.iter().enumerate() {
            assert_eq!(from_pod(*f), *want, "case {i}: {f:?}");
        }
    }

    #[test]
    fn from_pod6_table() {
        let f = |version_ok, own, ll, link_dst| {
            from_pod6(FromPod6Facts {
                version_ok,
                source_is_own: own,
                source_is_link_local_or_unspecified: ll,
                dest_is_link_scope: link_dst,
                ..FromPod6Facts::default()
            })
        };
        assert_eq!(f(true, true, false, false), Verdict::ToStack, "its own address, anywhere");
        assert_eq!(f(true, true, false, true), Verdict::ToStack);
        assert_eq!(f(true, false, true, true), Verdict::ToStack, "neighbour discovery, MLD, DAD");
        assert_eq!(f(true, false, true, false), Verdict::Drop(DropReason::SourceSpoofed), "link-local off the link");
        assert_eq!(f(true, false, false, true), Verdict::Drop(DropReason::SourceSpoofed), "forged, even on the link");
        assert_eq!(f(true, false, false, false), Verdict::Drop(DropReason::SourceSpoofed));
        assert_eq!(f(false, true, false, false), Verdict::Drop(DropReason::BadIpHeader));
    }

    #[test]
    fn from_pod6_fast_path_table() {
        let fast = FromPod6Facts {
            version_ok: true,
            source_is_own: true,
            dest_is_local_pod: true,
            uplink_configured: true,
            plain_transport: true,
            hop_limit: 64,
            fits_mtu: true,
            ..FromPod6Facts::default()
        };
        let remote = FromPod6Facts { dest_is_local_pod: false, dest_is_remote_pod: true, ..fast };
        assert_eq!(from_pod6(fast), Verdict::ToLocalPod);
        assert_eq!(from_pod6(remote), Verdict::ToRemoteNode);
        for base in [fast, remote] {
            assert_eq!(from_pod6(FromPod6Facts { hop_limit: 1, ..base }), Verdict::RouterToStack, "time exceeded");
            assert_eq!(from_pod6(FromPod6Facts { hop_limit: 0, ..base }), Verdict::RouterToStack);
            assert_eq!(from_pod6(FromPod6Facts { hop_limit: 2, ..base }), from_pod6(base));
            assert_eq!(from_pod6(FromPod6Facts { fits_mtu: false, ..base }), Verdict::RouterToStack, "too big");
            assert_eq!(from_pod6(FromPod6Facts { plain_transport: false, ..base }), Verdict::RouterToStack);
            // The source check comes first, whatever the destination.
            assert_eq!(
                from_pod6(FromPod6Facts { source_is_own: false, ..base }),
                Verdict::Drop(DropReason::SourceSpoofed)
            );
            assert_eq!(from_pod6(FromPod6Facts { version_ok: false, ..base }), Verdict::Drop(DropReason::BadIpHeader));
        }
        // The reply of a flow the stack translated (STACK_FLOWS6): the stack
        // takes it, so conntrack undoes the translation.
        for base in [fast, remote] {
            let reply = FromPod6Facts { replies_to_stack_flow: true, ..base };
            assert_eq!(from_pod6(reply), Verdict::StackFlowReply);
            assert_eq!(
                from_pod6(FromPod6Facts { source_is_own: false, ..reply }),
                Verdict::Drop(DropReason::SourceSpoofed),
                "the source check still first"
            );
        }
        // No uplink yet: another node's pod is the stack's to route.
        assert_eq!(from_pod6(FromPod6Facts { uplink_configured: false, ..remote }), Verdict::ToStack);
        // Not a pod: the stack routes (and masquerades) it, even at hop limit 1.
        let world = FromPod6Facts { dest_is_local_pod: false, ..fast };
        assert_eq!(from_pod6(world), Verdict::ToStack);
        assert_eq!(from_pod6(FromPod6Facts { hop_limit: 1, ..world }), Verdict::ToStack);
    }

    #[test]
    fn from_uplink6_table() {
        let fast = FromUplink6Facts {
            version_ok: true,
            dest_is_local_pod: true,
            source_is_remote_pod: true,
            source_is_local_pod: false,
            plain_transport: true,
            hop_limit: 64,
            fits_mtu: true,
            replies_to_stack_flow: false,
        };
        assert_eq!(from_uplink6(fast), Verdict::ToLocalPod);
        let reply = FromUplink6Facts { replies_to_stack_flow: true, ..fast };
        assert_eq!(from_uplink6(reply), Verdict::StackFlowReply, "conntrack undoes the stack's translation");
        assert_eq!(
            from_uplink6(FromUplink6Facts { source_is_local_pod: true, ..reply }),
            Verdict::Drop(DropReason::UplinkSourceSpoofed)
        );
        assert_eq!(
            from_uplink6(FromUplink6Facts { source_is_local_pod: true, ..fast }),
            Verdict::Drop(DropReason::UplinkSourceSpoofed)
        );
        assert_eq!(from_uplink6(FromUplink6Facts { source_is_remote_pod: false, ..fast }), Verdict::ToStack);
        assert_eq!(from_uplink6(FromUplink6Facts { dest_is_local_pod: false, ..fast }), Verdict::ToStack);
        assert_eq!(from_uplink6(FromUplink6Facts { hop_limit: 1, ..fast }), Verdict::RouterToStack);
        assert_eq!(from_uplink6(FromUplink6Facts { fits_mtu: false, ..fast }), Verdict::RouterToStack);
        assert_eq!(from_uplink6(FromUplink6Facts { plain_transport: false, ..fast }), Verdict::RouterToStack);
        assert_eq!(
            from_uplink6(FromUplink6Facts { version_ok: false, ..fast }),
            Verdict::Drop(DropReason::BadIpHeader)
        );
    }

    #[test]
    fn ipv6_plain_transports() {
        for (nh, plain) in [(6, true), (17, true), (58, true), (132, true), (0, false), (43, false), (44, false)] {
            assert_eq!(ipv6_plain_transport(nh), plain, "next header {nh}");
        }
        assert!(!ipv6_plain_transport(60) && !ipv6_plain_transport(51) && !ipv6_plain_transport(50));
    }

    #[test]
    fn ipv6_scopes() {
        let a = |s: &str| s.parse::<core::net::Ipv6Addr>().unwrap().octets();
        for (addr, ll_or_unspec, link_scope) in [
            ("fe80::1", true, true),
            ("febf::1", true, true),
            ("fec0::1", false, false),
            ("::", true, false),
            ("::1", false, false),
            ("fd00::1", false, false),
            ("ff02::1:ff00:1", false, true),
            ("ff12::16", false, true),
            ("ff05::2", false, false),
            ("ff0e::1", false, false),
        ] {
            assert_eq!(ipv6_link_local_or_unspecified(&a(addr)), ll_or_unspec, "{addr}");
            assert_eq!(ipv6_link_scope(&a(addr)), link_scope, "{addr}");
        }
    }

    #[test]
    fn from_pod_not_ipv4_table() {
        for (ether_type, want) in [
            (0x0806u16, Verdict::ToStack),
            (0x86dd, Verdict::Drop(DropReason::UnknownL3)),
            (0x8100, Verdict::Drop(DropReason::UnknownL3)),
            (0x88a8, Verdict::Drop(DropReason::UnknownL3)),
            (0x88b5, Verdict::Drop(DropReason::UnknownL3)),
            // ARP's number in the wrong byte order is not ARP.
            (0x0608, Verdict::Drop(DropReason::UnknownL3)),
        ] {
            assert_eq!(from_pod_not_ipv4(ether_type.to_be()), want, "EtherType {ether_type:#06x}");
        }
    }

    #[test]
    fn from_uplink_table() {
        let f = |local, ttl, reply, frag| {
            from_uplink(FromUplinkFacts {
                dest_is_local_pod: local,
                source_is_remote_pod: true,
                source_is_local_pod: false,
                header_ok: true,
                ttl,
                replies_to_stack_flow: reply,
                is_fragment: frag,
            })
        };
        assert_eq!(f(false, 64, false, false), Verdict::ToStack);
        assert_eq!(f(true, 64, false, false), Verdict::ToLocalPod);
        assert_eq!(f(true, 1, false, false), Verdict::Drop(DropReason::TtlExpired));
        assert_eq!(f(false, 0, false, false), Verdict::ToStack);
        assert_eq!(f(true, 64, true, false), Verdict::StackFlowReply);
        assert_eq!(f(false, 64, true, false), Verdict::ToStack);
        assert_eq!(f(true, 64, false, true), Verdict::ToStack);
        // From a node's stack (not a pod): through ours, so conntrack sees
        // both directions.
        let from_node = FromUplinkFacts {
            dest_is_local_pod: true,
            source_is_remote_pod: false,
            source_is_local_pod: false,
            header_ok: true,
            ttl: 64,
            replies_to_stack_flow: false,
            is_fragment: false,
        };
        assert_eq!(from_uplink(from_node), Verdict::ToStack);
        // A LAN host claiming to be one of our pods, to any destination.
        let spoofed = FromUplinkFacts { source_is_local_pod: true, ..from_node };
        assert_eq!(from_uplink(spoofed), Verdict::Drop(DropReason::UplinkSourceSpoofed));
        let spoofed_to_node = FromUplinkFacts { dest_is_local_pod: false, ..spoofed };
        assert_eq!(from_uplink(spoofed_to_node), Verdict::Drop(DropReason::UplinkSourceSpoofed));
        // A broken header for a pod is dropped; for the node, the stack judges.
        let broken = FromUplinkFacts { header_ok: false, source_is_remote_pod: true, ..from_node };
        assert_eq!(from_uplink(broken), Verdict::Drop(DropReason::BadIpHeader));
        assert_eq!(from_uplink(FromUplinkFacts { dest_is_local_pod: false, ..broken }), Verdict::ToStack);
    }

    #[test]
    fn from_tunnel_is_from_uplink_with_its_own_spoofing_reason() {
        let pod_to_pod = FromUplinkFacts {
            dest_is_local_pod: true,
            source_is_remote_pod: true,
            source_is_local_pod: false,
            header_ok: true,
            ttl: 64,
            replies_to_stack_flow: false,
            is_fragment: false,
        };
        assert_eq!(from_tunnel(pod_to_pod, true), Verdict::ToLocalPod);
        assert_eq!(
            from_tunnel(FromUplinkFacts { source_is_local_pod: true, ..pod_to_pod }, true),
            Verdict::Drop(DropReason::TunnelSourceSpoofed)
        );
        assert_eq!(from_tunnel(FromUplinkFacts { source_is_remote_pod: false, ..pod_to_pod }, true), Verdict::ToStack);
        assert_eq!(
            from_tunnel(FromUplinkFacts { replies_to_stack_flow: true, ..pod_to_pod }, true),
            Verdict::StackFlowReply
        );
        assert_eq!(from_tunnel(FromUplinkFacts { ttl: 1, ..pod_to_pod }, true), Verdict::Drop(DropReason::TtlExpired));
        // Another node's pod address, sent by a node that does not own it.
        assert_eq!(from_tunnel(pod_to_pod, false), Verdict::Drop(DropReason::TunnelWrongNode));
        // Not for a pod, or not claiming a pod: the stack judges, as from the uplink.
        assert_eq!(from_tunnel(FromUplinkFacts { dest_is_local_pod: false, ..pod_to_pod }, false), Verdict::ToStack);
        assert_eq!(from_tunnel(FromUplinkFacts { source_is_remote_pod: false, ..pod_to_pod }, false), Verdict::ToStack);
    }

    #[test]
    fn ipv4_header_table() {
        let be = |n: u16| n.to_be();
        assert!(ipv4_header_ok(0x45, be(84), 84));
        assert!(ipv4_header_ok(0x45, be(84), 100), "trailing padding is fine");
        assert!(ipv4_header_ok(0x46, be(84), 84), "options: IHL 6");
        assert!(!ipv4_header_ok(0x44, be(84), 84), "IHL below 5");
        assert!(!ipv4_header_ok(0x65, be(84), 84), "version 6");
        assert!(!ipv4_header_ok(0x45, be(85), 84), "total length beyond the packet");
        assert!(!ipv4_header_ok(0x4f, be(40), 84), "header longer than the total length");
        assert!(!ipv4_header_ok(0x45, be(0), 84), "zero length on a small packet");
        assert!(ipv4_header_ok(0x45, be(0), 70_000), "BIG TCP");
    }

    #[test]
    fn flow_key_reverses() {
        let k = crate::FlowKey { src_be: 1, dst_be: 2, src_port_be: 3, dst_port_be: 4, protocol: 6, _pad: [0; 3] };
        let r = k.reversed();
        assert_eq!((r.src_be, r.dst_be, r.src_port_be, r.dst_port_be, r.protocol), (2, 1, 4, 3, 6));
        assert_eq!(r.reversed(), k);
    }

    /// Full recomputation of an IPv4 header checksum, for comparison.
    fn full_checksum(hdr: &[u8; 20]) -> u16 {
        let mut sum = 0u32;
        for i in (0..20).step_by(2) {
            if i == 10 {
                continue;
            }
            sum += u16::from_be_bytes([hdr[i], hdr[i + 1]]) as u32;
        }
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    #[test]
    fn ttl_decrement_checksum_matches_full_recompute() {
        let mut hdr: [u8; 20] = [0x45, 0, 0, 84, 0x12, 0x34, 0x40, 0, 64, 1, 0, 0, 10, 244, 1, 2, 10, 244, 2, 3];
        // Walk TTL down through many values, including ones that carry.
        for _ in 0..63 {
            let c = full_checksum(&hdr);
            hdr[10..12].copy_from_slice(&c.to_be_bytes());
            let check_be = u16::from_ne_bytes([hdr[10], hdr[11]]);
            hdr[8] -= 1;
            let want = full_checksum(&hdr);
            let got = u16::from_be(checksum_after_ttl_decrement(check_be));
            assert_eq!(got, want, "ttl now {}", hdr[8]);
        }
        // A header whose checksum field is near the wrap point.
        let mut odd: [u8; 20] = [0x45, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 2, 0xfe, 0, 0, 255, 255, 255, 255, 0, 0, 0, 1];
        let c = full_checksum(&odd);
        odd[10..12].copy_from_slice(&c.to_be_bytes());
        let check_be = u16::from_ne_bytes([odd[10], odd[11]]);
        odd[8] -= 1;
        assert_eq!(u16::from_be(checksum_after_ttl_decrement(check_be)), full_checksum(&odd));
    }

    #[test]
    fn tunneled_peers_are_encapsulated_in_ebpf_when_it_can() {
        let tunneled = FromPodFacts { dest_is_remote_pod: true, dest_via_tunnel: true, can_encap: true, ..facts() };
        assert_eq!(from_pod(tunneled), Verdict::EncapToNode);
        assert_eq!(from_pod(FromPodFacts { can_encap: false, ..tunneled }), Verdict::ToTunnel);
        // Too big for the tunnel, a fragment, a stack flow's reply, TTL:
        // all decided before, as for the device.
        assert_eq!(from_pod(FromPodFacts { too_big_for_tunnel: true, ..tunneled }), Verdict::TunnelTooBig);
        assert_eq!(from_pod(FromPodFacts { is_fragment: true, ..tunneled }), Verdict::ToStack);
        assert_eq!(from_pod(FromPodFacts { replies_to_stack_flow: true, ..tunneled }), Verdict::StackFlowReply);
        assert_eq!(from_pod(FromPodFacts { ttl: 1, ..tunneled }), Verdict::Drop(DropReason::TtlExpired));
        assert_eq!(
            from_pod(FromPodFacts { tunnel_configured: false, ..tunneled }),
            Verdict::Drop(DropReason::NoTunnel)
        );
        // Only tunneled peers.
        assert_eq!(
            from_pod(FromPodFacts { dest_is_remote_pod: true, can_encap: true, ..facts() }),
            Verdict::ToRemoteNode
        );
    }

    #[test]
    fn encap_fits_table() {
        // (node ip known, netkit, gso_size, inner headers, mtu) -> fits
        let cases = [
            ((true, false, 0, 0, 1450), true),
            ((false, false, 0, 0, 1450), false),
            ((true, true, 0, 0, 1450), false),
            // TCP with timestamps in a 1450-byte pod: 20 + 32 + 1398.
            ((true, false, 1398, 52, 1450), true),
            ((true, false, 1399, 52, 1450), false),
            // Pods pinned at 1500 behind a 1450 tunnel: the device's path.
            ((true, false, 1448, 52, 1450), false),
            // Unknown inner headers: GSO goes to the device.
            ((true, false, 1000, 0, 1450), false),
        ];
        for ((known, netkit, gso, hdrs, mtu), want) in cases {
            assert_eq!(encap_fits(known, netkit, gso, hdrs, mtu), want, "{known} {netkit} {gso} {hdrs} {mtu}");
        }
    }

    #[test]
    fn vxlan_source_ports_stay_in_range_and_spread() {
        let hashes = [0u32, 1, 2, 0xffff, 0x1_0000, 0xdead_beef, u32::MAX, 0x8000_0000, 12345];
        let ports = hashes.map(vxlan_source_port);
        for (h, p) in hashes.iter().zip(ports) {
            assert!((32768..61000).contains(&p), "{h:#x} -> {p}");
        }
        let distinct = (0..ports.len()).filter(|&i| !ports[..i].contains(&ports[i])).count();
        assert!(distinct >= 7, "ports spread: {ports:?}");
        // Hashes differing only in low bits still differ.
        assert_ne!(vxlan_source_port(1), vxlan_source_port(2));
    }

    #[test]
    fn ipv4_header_checksum_matches_the_reference() {
        // 172.30.0.1 -> 172.31.0.3, UDP, TTL 64, tot_len 134, id 0x1c46.
        let mut hdr: [u8; 20] = [0x45, 0, 0, 134, 0x1c, 0x46, 0, 0, 64, 17, 0, 0, 172, 30, 0, 1, 172, 31, 0, 3];
        let words: [u16; 10] = core::array::from_fn(|i| u16::from_ne_bytes([hdr[2 * i], hdr[2 * i + 1]]));
        let check = ipv4_header_checksum(words);
        hdr[10..12].copy_from_slice(&check.to_ne_bytes());
        assert_eq!(check.to_ne_bytes(), full_checksum_bytes(&hdr_with_zero_check(hdr)));
        // A header with its checksum in sums to 0xffff.
        let words: [u16; 10] = core::array::from_fn(|i| u16::from_ne_bytes([hdr[2 * i], hdr[2 * i + 1]]));
        assert_eq!(ipv4_header_checksum(words), 0);
    }

    fn hdr_with_zero_check(mut hdr: [u8; 20]) -> [u8; 20] {
        hdr[10] = 0;
        hdr[11] = 0;
        hdr
    }

    fn full_checksum_bytes(hdr: &[u8; 20]) -> [u8; 2] {
        full_checksum(hdr).to_be_bytes()
    }

    #[test]
    fn vxlan_for_this_node_table() {
        let ok = VxlanOuter {
            dst_be: u32::from_be_bytes([172, 31, 0, 3]).to_be(),
            node_ip_be: u32::from_be_bytes([172, 31, 0, 3]).to_be(),
            version_ihl: 0x45,
            frag_off_be: 0x4000u16.to_be(),
            protocol: 17,
            dst_port_be: 8472u16.to_be(),
            vxlan_flags: 0x08,
            vni: crate::maps::TUNNEL_VNI,
            inner_ether_type_be: 0x0800u16.to_be(),
        };
        assert!(vxlan_for_this_node(ok));
        assert!(vxlan_for_this_node(VxlanOuter { frag_off_be: 0, ..ok }), "DF clear");
        for bad in [
            VxlanOuter { dst_be: 1, ..ok },
            VxlanOuter { node_ip_be: 0, dst_be: 0, ..ok },
            VxlanOuter { version_ihl: 0x46, ..ok },
            VxlanOuter { frag_off_be: 0x2000u16.to_be(), ..ok },
            VxlanOuter { frag_off_be: 0x0001u16.to_be(), ..ok },
            VxlanOuter { protocol: 6, ..ok },
            VxlanOuter { dst_port_be: 4789u16.to_be(), ..ok },
            VxlanOuter { vxlan_flags: 0, ..ok },
            VxlanOuter { vni: 2, ..ok },
            VxlanOuter { inner_ether_type_be: 0x86ddu16.to_be(), ..ok },
        ] {
            assert!(!vxlan_for_this_node(bad), "{bad:?}");
        }
    }

    fn node_in() -> FromNodeFacts {
        FromNodeFacts { source_is_remote_node: true, ttl: 64, fits_mtu: true, ..Default::default() }
    }

    #[test]
    fn another_nodes_address_into_a_local_pod_skips_the_stack_only_when_plain() {
        assert!(from_node_fast(node_in()));
        assert!(from_node_fast(FromNodeFacts { ttl: 2, ..node_in() }), "TTL 2 leaves 1 in the pod");
        let stack = [
            ("the world", FromNodeFacts { source_is_remote_node: false, ..node_in() }),
            ("options or a fragment", FromNodeFacts { stack_only: true, ..node_in() }),
            ("a stack flow's reply", FromNodeFacts { replies_to_stack_flow: true, ..node_in() }),
            ("TTL 1: time exceeded is the stack's", FromNodeFacts { ttl: 1, ..node_in() }),
            ("TTL 0", FromNodeFacts { ttl: 0, ..node_in() }),
            ("too big: fragmentation needed is the stack's", FromNodeFacts { fits_mtu: false, ..node_in() }),
        ];
        for (what, f) in stack {
            assert!(!from_node_fast(f), "{what}");
        }
    }

    fn answer() -> AnswerToNodeFacts {
        AnswerToNodeFacts {
            dest_is_remote_node: true,
            answers_node_flow: true,
            ttl: 64,
            fits_mtu: true,
            uplink_configured: true,
            ..Default::default()
        }
    }

    #[test]
    fn only_answers_of_connections_that_came_in_without_the_stack_leave_without_it() {
        assert!(answer_to_node_fast(answer()));
        let stack = [
            ("not another node", AnswerToNodeFacts { dest_is_remote_node: false, ..answer() }),
            ("a connection the pod opened", AnswerToNodeFacts { answers_node_flow: false, ..answer() }),
            ("a SYN on an old tuple", AnswerToNodeFacts { opens_connection: true, ..answer() }),
            ("options or a fragment", AnswerToNodeFacts { stack_only: true, ..answer() }),
            ("TTL 1", AnswerToNodeFacts { ttl: 1, ..answer() }),
            ("too big for the uplink", AnswerToNodeFacts { fits_mtu: false, ..answer() }),
            ("no uplink", AnswerToNodeFacts { uplink_configured: false, ..answer() }),
        ];
        for (what, f) in stack {
            assert!(!answer_to_node_fast(f), "{what}");
        }
    }

    #[test]
    fn an_icmp_error_stands_for_an_answer_of_the_connection_it_quotes() {
        let mut errors = [0u8; 3];
        let mut n = 0;
        for t in 0..=255u8 {
            if icmp4_error(t) {
                assert!(n < 3, "type {t} is no error");
                errors[n] = t;
                n += 1;
            }
        }
        assert_eq!(errors[..n], [3, 11, 12], "echo (0, 8) and the rest are no errors");
        let quoted = crate::FlowKey {
            src_be: u32::from_be_bytes([172, 30, 0, 2]).to_be(),
            dst_be: u32::from_be_bytes([10, 244, 1, 3]).to_be(),
            src_port_be: 40000u16.to_be(),
            dst_port_be: 53u16.to_be(),
            protocol: 17,
            _pad: [0; 3],
        };
        let answer = icmp4_error_answer(quoted);
        assert_eq!((answer.src_be, answer.dst_be), (quoted.dst_be, quoted.src_be));
        assert_eq!(
            (answer.src_port_be, answer.dst_port_be, answer.protocol),
            (quoted.dst_port_be, quoted.src_port_be, 17)
        );
    }
}
