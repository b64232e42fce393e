//! Decapsulation in the program (first thing in `from_uplink`): sluice's
//! VXLAN for this node whose inner packet goes to a local pod is stripped
//! and delivered here, never seen by the VXLAN device.
use aya_ebpf::{
    bindings::{bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_DECAP_L3_IPV4, BPF_F_ADJ_ROOM_FIXED_GSO},
    helpers::bpf_skb_adjust_room,
    programs::TcContext,
};
use sluice_common::{
    maps::TUNNEL_OVERHEAD,
    verdict::{self, Verdict, VxlanOuter},
    DropReason, ForwardPath,
};

use super::wire::{UdpHdr, VxlanHdr, INNER_ETH_OFF, INNER_L4_OFF, IPPROTO_UDP, UDP_OFF, VXLAN_OFF};
use crate::{
    counters::count_detail,
    deliver::{deliver_to_local_pod, Origin},
    from_peer,
    maps::NODE_CONFIG,
    parse::{self, EthHdr, Ipv4Hdr},
};

/// A packet on the uplink: if it is VXLAN, is sluice's, for this node,
/// and its inner packet is one `from_tunnel` would deliver into a local
/// pod (judged the same way, by `from_peer::judge` with the outer source
/// as the sending node), strip the outer headers here and deliver it; a
/// packet `from_tunnel` would drop is dropped here, under the same reason.
/// `Ok(None)` for everything else: the caller goes on as for any packet
/// to this node, and the VXLAN device decapsulates it (host traffic,
/// replies of flows the stack forwarded, fragments).
#[inline(always)]
pub fn decap_to_pod(ctx: &TcContext) -> Result<Option<i32>, DropReason> {
    let Some(outer_src_be) = outer_source_if_ours(ctx)? else {
        return Ok(None);
    };
    let inner_ip: *const Ipv4Hdr = parse::header_mut(ctx, INNER_IP_OFF)?;
    // The inner packet, judged as `from_tunnel` judges it.
    let judged = from_peer::judge::<INNER_IP_OFF, INNER_L4_OFF>(ctx, inner_ip, Some(|| outer_src_be))?;
    match judged.verdict {
        Verdict::Drop(reason) => Err(reason),
        Verdict::ToLocalPod => {
            let Some(ep) = judged.dest else {
                return Err(DropReason::LookupMismatch);
            };
            if !strip_outer(ctx) {
                // Unchanged: the device decapsulates it instead.
                return Ok(None);
            }
            let action = deliver_to_local_pod(ctx, &ep, Origin::Tunnel)?;
            count_detail(ForwardPath::TunnelDecap);
            Ok(Some(action))
        }
        // Stack flow replies, non-pod sources, fragments, other
        // destinations: the device and `from_tunnel`, which decide the
        // same again.
        _ => Ok(None),
    }
}

/// Where the inner IPv4 header of a VXLAN packet starts (`--lb-mode=dsr`
/// reads it there before deciding to decapsulate).
pub const INNER_IP_OFF: usize = super::wire::INNER_IP_OFF;

/// Is the packet sluice's VXLAN for this node, with an IPv4 inner packet
/// (`verdict::vxlan_for_this_node`)? Its outer source (the sending node)
/// if so.
#[inline(always)]
fn outer_source_if_ours(ctx: &TcContext) -> Result<Option<u32>, DropReason> {
    let Some((_, ip)) = parse::ipv4(ctx)? else {
        return Ok(None);
    };
    // SAFETY: bounds checked by parse::ipv4.
    if unsafe { (*ip).protocol } != IPPROTO_UDP {
        return Ok(None);
    }
    // Not VXLAN-sized, or not linear that far: not for the fast path.
    if ctx.data() + INNER_IP_OFF + core::mem::size_of::<Ipv4Hdr>() > ctx.data_end() {
        return Ok(None);
    }
    let node_ip_be = match NODE_CONFIG.get(0) {
        Some(c) => c.node_ip_be,
        None => 0,
    };
    let udp: *const UdpHdr = parse::header_mut(ctx, UDP_OFF)?;
    let vxlan: *const VxlanHdr = parse::header_mut(ctx, VXLAN_OFF)?;
    let inner_eth: *const EthHdr = parse::header_mut(ctx, INNER_ETH_OFF)?;
    // SAFETY: all bounds checked by header_mut.
    let (outer, outer_src_be) = unsafe {
        let vni_host = u32::from_be((*vxlan).vni_be) >> 8;
        (
            VxlanOuter {
                dst_be: (*ip).dst_be,
                node_ip_be,
                version_ihl: (*ip).version_ihl,
                frag_off_be: (*ip).frag_off_be,
                protocol: (*ip).protocol,
                dst_port_be: (*udp).dst_port_be,
                vxlan_flags: (u32::from_be((*vxlan).flags_be) >> 24) as u8,
                vni: vni_host,
                inner_ether_type_be: (*inner_eth).ether_type_be,
            },
            (*ip).src_be,
        )
    };
    Ok(verdict::vxlan_for_this_node(outer).then_some(outer_src_be))
}

/// `outer_source_if_ours`, as a yes or no.
#[inline(always)]
pub fn for_this_node(ctx: &TcContext) -> Result<bool, DropReason> {
    Ok(outer_source_if_ours(ctx)?.is_some())
}

/// Strip the outer headers (IPv4, UDP, VXLAN, inner Ethernet) of a packet
/// `for_this_node` accepted: what is left is the inner IPv4 packet behind
/// the outer Ethernet header. `false`: the helper refused, the packet is
/// unchanged.
#[inline(always)]
pub fn strip_outer(ctx: &TcContext) -> bool {
    // FIXED_GSO: a GRO'd packet keeps the sender's MSS.
    let flags = BPF_F_ADJ_ROOM_FIXED_GSO as u64 | BPF_F_ADJ_ROOM_DECAP_L3_IPV4 as u64;
    // SAFETY: helper call on our skb.
    let rc = unsafe { bpf_skb_adjust_room(ctx.skb.skb, -(TUNNEL_OVERHEAD as i32), BPF_ADJ_ROOM_MAC, flags) };
    rc >= 0
}
