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
    /// Hand to the node's network stack unchanged.
    ToStack,
    /// Hand to the node's stack: pod-bound, but the reply of a flow the
    /// stack forwarded, so conntrack must see it (reverse its NAT).
    StackFlowReply,
    /// Hand to the node's stack: for a tunneled peer, but too large for the
    /// VXLAN device (the stack fragments it or refuses it with ICMP).
    TunnelTooBig,
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
            return Verdict::ToTunnel;
        }
        if !f.uplink_configured {
            return Verdict::Drop(DropReason::NoUplink);
        }
        return Verdict::ToRemoteNode;
    }
    Verdict::ToStack
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
/// takes the fast path: a packet from anything else (another node's stack,
/// a NodePort forwarded and SNATed by another node) goes through this
/// node's stack, because the pod's reply to a non-pod address does too,
/// and conntrack must see both directions of a flow (it drops a reply to a
/// connection it never saw as invalid).
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

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> FromPodFacts {
        FromPodFacts {
            source_is_own: true,
            dest_is_local_pod: false,
            dest_is_remote_pod: false,
            dest_via_tunnel: false,
            uplink_configured: true,
            tunnel_configured: true,
            too_big_for_tunnel: false,
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
}
