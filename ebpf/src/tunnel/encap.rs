//! Encapsulation in the program (`from_pod`, for a peer `NODE_ROUTES`
//! flags `REMOTE_NODE_VXLAN`): the outer headers written here and the
//! packet sent out of the uplink, without the VXLAN device's transmit
//! path. The same bytes the device would send (`wire`).
use aya_ebpf::{
    bindings::{
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, bpf_fib_lookup, BPF_ADJ_ROOM_ENCAP_L2_SHIFT, BPF_FIB_LKUP_RET_SUCCESS,
        BPF_FIB_LOOKUP_OUTPUT, BPF_FIB_LOOKUP_SKIP_NEIGH, BPF_FIB_LOOKUP_SRC, BPF_F_ADJ_ROOM_ENCAP_L2_ETH,
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L4_UDP, BPF_F_ADJ_ROOM_FIXED_GSO,
    },
    helpers::{bpf_fib_lookup, bpf_get_hash_recalc, bpf_get_prandom_u32, bpf_skb_adjust_room},
    programs::TcContext,
};
use sluice_common::{
    maps::{TUNNEL_OVERHEAD, TUNNEL_PORT, TUNNEL_VNI},
    verdict, DropReason,
};

use super::wire::{
    UdpHdr, VxlanHdr, INNER_ETH_OFF, IPPROTO_UDP, OUTER_IP_OFF, OUTER_TTL, UDP_OFF, VXLAN_FLAG_I, VXLAN_OFF,
};
use crate::{
    forward,
    parse::{self, EthHdr, Ipv4Hdr, ETH_HLEN},
};

/// Encapsulate a pod's packet for `remote_ip_be` in the program: room for
/// outer IPv4 + UDP + VXLAN + inner Ethernet after the Ethernet header
/// (`bpf_skb_adjust_room` marks a GSO packet UDP-tunnel GSO, so it is cut
/// into VXLAN segments later, and sets the inner header offsets for
/// checksum offload), the headers written, then out of the uplink with
/// `bpf_redirect_neigh` to the route's next hop (the peer, or the router
/// before it); the kernel resolves its MAC and fills in both MACs.
///
/// `Ok(None)`: no route out of the uplink, or the helper refused (e.g. a
/// packet that is already encapsulated); nothing changed, the caller
/// sends it through the device.
#[inline(always)]
pub fn encap_to_node(ctx: &TcContext, uplink_ifindex: u32, remote_ip_be: u32) -> Result<Option<i32>, DropReason> {
    // The route to the peer, before anything changes: the source address
    // the kernel would give the outer packet (the device gets it from the
    // same lookup, so a node re-addressed without an agent restart still
    // sends from its current address, which the peer checks), the
    // interface and the next hop (the router, for a peer behind one).
    let Some((src_be, out_ifindex, next_hop_be)) = route_to(uplink_ifindex, remote_ip_be, ctx) else {
        return Ok(None);
    };
    let eth: *mut EthHdr = parse::header_mut(ctx, 0)?;
    // SAFETY: bounds checked by header_mut; copied before the helper moves it.
    let (inner_dst, inner_src, inner_type_be) = unsafe { ((*eth).dst, (*eth).src, (*eth).ether_type_be) };
    // Before the headers change: the hash of the pod's own flow.
    // SAFETY: helper call on our skb.
    let hash = unsafe { bpf_get_hash_recalc(ctx.skb.skb) };
    // FIXED_GSO: the pod's MSS stays; the tunnel's MTU was taken off it
    // already (pods get the tunnel's MTU, `encap_fits` checked the rest).
    let flags = BPF_F_ADJ_ROOM_FIXED_GSO as u64
        | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 as u64
        | BPF_F_ADJ_ROOM_ENCAP_L4_UDP as u64
        | BPF_F_ADJ_ROOM_ENCAP_L2_ETH as u64
        | (ETH_HLEN as u64) << BPF_ADJ_ROOM_ENCAP_L2_SHIFT;
    // SAFETY: helper call on our skb.
    let rc = unsafe { bpf_skb_adjust_room(ctx.skb.skb, TUNNEL_OVERHEAD as i32, BPF_ADJ_ROOM_MAC, flags) };
    if rc < 0 {
        return Ok(None);
    }
    // The helper invalidated every packet pointer: fetch them anew.
    // For a GSO packet these lengths are the whole skb's; segmentation
    // writes each segment's own (and the outer checksum).
    let outer_len = ctx.len().saturating_sub(ETH_HLEN as u32);
    let ip: *mut Ipv4Hdr = parse::header_mut(ctx, OUTER_IP_OFF)?;
    let udp: *mut UdpHdr = parse::header_mut(ctx, UDP_OFF)?;
    let vxlan: *mut VxlanHdr = parse::header_mut(ctx, VXLAN_OFF)?;
    let inner: *mut EthHdr = parse::header_mut(ctx, INNER_ETH_OFF)?;
    // SAFETY: helper call, no arguments.
    let id = unsafe { bpf_get_prandom_u32() } as u16;
    // SAFETY: all bounds checked by header_mut just above.
    unsafe {
        (*ip).version_ihl = 0x45;
        // No ECN on the outer header: the decapsulating end would have
        // to carry a CE mark inward, and a not-ECT packet is never marked.
        (*ip).tos = 0;
        (*ip).tot_len_be = (outer_len as u16).to_be();
        (*ip).id_be = id;
        // DF clear, as the device sends it (no DONT_FRAGMENT in the key):
        // an underlay with a smaller MTU fragments the outer packet, and
        // the receiver reassembles it before the device decapsulates.
        (*ip).frag_off_be = 0;
        (*ip).ttl = OUTER_TTL;
        (*ip).protocol = IPPROTO_UDP;
        (*ip).check_be = 0;
        (*ip).src_be = src_be;
        (*ip).dst_be = remote_ip_be;
        (*udp).src_port_be = verdict::vxlan_source_port(hash).to_be();
        (*udp).dst_port_be = TUNNEL_PORT.to_be();
        (*udp).len_be = (outer_len.saturating_sub(20) as u16).to_be();
        // A zero UDP checksum is allowed over IPv4 (RFC 7348 §5), and is
        // what the device sends (BPF_F_ZERO_CSUM_TX); the inner packet
        // keeps its own checksums.
        (*udp).check_be = 0;
        (*vxlan).flags_be = VXLAN_FLAG_I.to_be();
        (*vxlan).vni_be = (TUNNEL_VNI << 8).to_be();
        (*inner).dst = inner_dst;
        (*inner).src = inner_src;
        (*inner).ether_type_be = inner_type_be;
    }
    // SAFETY: bounds checked above; ten 16-bit words of the outer header.
    let words: [u16; 10] = unsafe { core::ptr::read_unaligned(ip as *const [u16; 10]) };
    // SAFETY: as above.
    unsafe { (*ip).check_be = verdict::ipv4_header_checksum(words) };
    forward::to_node(ctx, out_ifindex, next_hop_be).map(Some)
}

const AF_INET: u8 = 2;

/// `bpf_fib_lookup` from the uplink's egress side for `dst_be`: (source
/// address, interface, next hop), all be but the ifindex; `None` if the
/// kernel has no unicast route out of the uplink.
#[inline(always)]
fn route_to(uplink_ifindex: u32, dst_be: u32, ctx: &TcContext) -> Option<(u32, u32, u32)> {
    // SAFETY: all-zero is a valid lookup request (plain integers).
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.l4_protocol = IPPROTO_UDP;
    params.ifindex = uplink_ifindex;
    params.__bindgen_anon_4.ipv4_dst = dst_be;
    let flags = BPF_FIB_LOOKUP_OUTPUT | BPF_FIB_LOOKUP_SRC | BPF_FIB_LOOKUP_SKIP_NEIGH;
    // SAFETY: helper call with a valid, fully sized request on our stack.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.skb.skb as *mut _,
            &mut params as *mut bpf_fib_lookup,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            flags,
        )
    };
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 || params.ifindex != uplink_ifindex {
        return None;
    }
    // SAFETY: integers out of unions of integers the helper filled.
    let (src_be, next_hop_be) = unsafe { (params.__bindgen_anon_3.ipv4_src, params.__bindgen_anon_4.ipv4_dst) };
    if src_be == 0 {
        return None;
    }
    Some((src_be, params.ifindex, next_hop_be))
}
