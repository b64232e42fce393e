//! The VXLAN device (external / collect_md mode: the program names the
//! remote end per packet, the device only encapsulates): handing a packet
//! to it with its tunnel key (`to_node`), and its two programs —
//! `from_tunnel` on its ingress (what it decapsulated) and `to_tunnel` on
//! its egress (what the node's stack routes into it).
use aya_ebpf::{
    bindings::{bpf_tunnel_key, BPF_F_TUNINFO_IPV6, BPF_F_ZERO_CSUM_TX, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_UNSPEC},
    helpers::{bpf_redirect, bpf_skb_change_type, bpf_skb_get_tunnel_key, bpf_skb_set_tunnel_key},
    macros::classifier,
    maps::lpm_trie::Key,
    programs::TcContext,
};
use sluice_common::{
    maps::{FAST_PATH_MARK, TUNNEL_VNI},
    verdict::{self, Verdict},
    DropReason, ForwardPath, HookDirection,
};

use super::wire::OUTER_TTL;
use crate::{
    counters::{count_forward, drop_packet},
    deliver::Origin,
    from_peer,
    maps::{found, ENDPOINTS6, FAST6_SCRATCH, NODE_ROUTES, NODE_ROUTES6},
    parse::{self, Ipv6Hdr, ETH_HLEN, ETH_P_IPV6, L4_OFF},
    stack_flows,
};

/// Name `node_ip_be` as the outer destination of this packet for the
/// VXLAN device.
#[inline(always)]
fn set_key(ctx: &TcContext, node_ip_be: u32) -> Result<(), DropReason> {
    let mut key = core::mem::MaybeUninit::<bpf_tunnel_key>::uninit();
    // SAFETY: an all-zero bpf_tunnel_key is valid (plain integers and
    // unions of integers); zeroing also initialises every stack byte the
    // helper reads, as the verifier wants. Word by word: no `memset` call
    // (see `stack`).
    // Written in place through the pointer, never moved (a move is a copy
    // LLVM may turn back into `memset`).
    let key = unsafe {
        crate::stack::zero_words(key.as_mut_ptr());
        &mut *key.as_mut_ptr()
    };
    key.tunnel_id = TUNNEL_VNI;
    // The helper takes the remote IPv4 address in host byte order (Cilium's
    // encap.h passes `bpf_ntohl(ip)`); local 0: the route decides.
    key.__bindgen_anon_1.remote_ipv4 = u32::from_be(node_ip_be);
    key.tunnel_ttl = OUTER_TTL;
    // SAFETY: helper call with a valid, fully sized key on our stack.
    let rc = unsafe {
        bpf_skb_set_tunnel_key(
            ctx.skb.skb,
            key as *mut bpf_tunnel_key,
            core::mem::size_of::<bpf_tunnel_key>() as u32,
            BPF_F_ZERO_CSUM_TX as u64,
        )
    };
    if rc < 0 {
        return Err(DropReason::TunnelKey);
    }
    Ok(())
}

/// Hand the packet to the VXLAN device with `node_ip_be` as the outer
/// destination: the device adds Ethernet (as the pod sent it), VXLAN, UDP
/// and the outer IPv4 header, and the node's routing table takes the
/// outer packet from there (so a router between the nodes is fine).
/// Marked, so `to_tunnel` and then `to_uplink` (which clears it) know the
/// fast path sent it.
#[inline(always)]
pub fn to_node(ctx: &TcContext, vxlan_ifindex: u32, node_ip_be: u32) -> Result<i32, DropReason> {
    set_key(ctx, node_ip_be)?;
    ctx.set_mark(parse::mark(ctx) | FAST_PATH_MARK);
    // SAFETY: helper call; returns TC_ACT_REDIRECT for valid flags.
    let rc = unsafe { bpf_redirect(vxlan_ifindex, 0) };
    if rc as i32 != TC_ACT_REDIRECT as i32 {
        return Err(DropReason::RedirectFailed);
    }
    Ok(rc as i32)
}

/// Ingress of the VXLAN device: what it decapsulated. Pod-to-pod packets
/// for a local pod go straight into it, as `from_uplink` does; anything
/// else goes to the node's stack.
#[classifier]
pub fn from_tunnel(ctx: TcContext) -> i32 {
    match try_from_tunnel(&ctx) {
        Ok(action) => action,
        Err(reason) => drop_packet(&ctx, reason, HookDirection::Ingress),
    }
}

#[inline(always)]
fn try_from_tunnel(ctx: &TcContext) -> Result<i32, DropReason> {
    let Some((_, ip)) = parse::ipv4(ctx)? else {
        if parse::ether_type_be(ctx)? == ETH_P_IPV6.to_be() {
            return from_tunnel6(ctx);
        }
        count_forward(ctx, ForwardPath::ToStack);
        return Ok(TC_ACT_OK as i32);
    };
    // The device set the packet type from the inner destination MAC, the
    // sending node's (`eth_type_trans` on decap): it is for this host (the
    // stack, or a pod behind it), or `ip_rcv` drops it as PACKET_OTHERHOST.
    // SAFETY: helper call on our skb; PACKET_HOST is always allowed.
    unsafe { bpf_skb_change_type(ctx.skb.skb, PACKET_HOST) };
    // The sending node is the tunnel key's remote end.
    let judged = from_peer::judge::<ETH_HLEN, L4_OFF>(ctx, ip, Some(|| outer_source_be(ctx)))?;
    from_peer::carry_out(ctx, judged, Origin::Tunnel)
}

/// An IPv6 packet that came through the tunnel (issue 28: IPv6 inside the
/// IPv4 underlay, or VXLAN over IPv6 between IPv6-only nodes; the sending
/// node's kernel route for this node's IPv6 pod CIDR encapsulates it,
/// `kernel_routes6`). An inner source in a peer's IPv6 pod CIDR must be in
/// the CIDR of the node that sent it (the outer source, `outer_source6`); a source
/// in no pod CIDR (a peer node's own address) passes, as IPv4's does
/// (`verdict::from_tunnel6`); then it goes to the node's stack, which
/// routes it into the pod (hop limit decremented, `to_pod` judging its
/// NetworkPolicy), marked for this host as for IPv4.
#[inline(always)]
fn from_tunnel6(ctx: &TcContext) -> Result<i32, DropReason> {
    let ip6: *const Ipv6Hdr = parse::header_mut(ctx, ETH_HLEN)?;
    let Some(scratch) = FAST6_SCRATCH.get_ptr_mut(0) else {
        return Err(DropReason::LookupMismatch);
    };
    // SAFETY: bounds checked by header_mut; only presence is read.
    let source_is_local_pod = found(unsafe { ENDPOINTS6.get(&(*ip6).src) });
    // SAFETY: this CPU's slot, used by this program run alone; the map
    // value is read at once.
    let (source_is_remote_pod, sent_by_owner) = unsafe {
        (*scratch).key.prefix_len = 128;
        (*scratch).key.data = (*ip6).src;
        match NODE_ROUTES6.get(&(*scratch).key) {
            Some(node) => (true, verdict::tunnel6_sent_by_owner(node.flags, &node.node_ip6, &outer_source6(ctx))),
            None => (false, false),
        }
    };
    match verdict::from_tunnel6(source_is_local_pod, source_is_remote_pod, sent_by_owner) {
        Verdict::Drop(reason) => Err(reason),
        _ => {
            // SAFETY: helper call on our skb; PACKET_HOST is always allowed.
            unsafe { bpf_skb_change_type(ctx.skb.skb, PACKET_HOST) };
            count_forward(ctx, ForwardPath::ToStack);
            Ok(TC_ACT_OK as i32)
        }
    }
}

/// The outer IPv4 source of a decapsulated packet (be); 0 if the device
/// gave no tunnel metadata.
#[inline(always)]
fn outer_source_be(ctx: &TcContext) -> u32 {
    // SAFETY: all-zero is a valid key, and initialises what the helper reads.
    let mut key: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    // SAFETY: helper call with a valid, fully sized key on our stack.
    let rc = unsafe {
        bpf_skb_get_tunnel_key(
            ctx.skb.skb,
            &mut key as *mut bpf_tunnel_key,
            core::mem::size_of::<bpf_tunnel_key>() as u32,
            0,
        )
    };
    if rc < 0 {
        return 0;
    }
    // SAFETY: reading an integer out of a union of integers. The helper
    // gives the address in host byte order.
    u32::to_be(unsafe { key.__bindgen_anon_1.remote_ipv4 })
}

/// The sending node of a decapsulated packet as `NODE_ROUTES6` names a
/// tunneled peer: the tunnel key's IPv6 remote end when the outer header
/// was IPv6 (an IPv6-only node's underlay), else its IPv4 remote end
/// IPv4-mapped; all zero without tunnel metadata. The helper refuses
/// (`-EPROTO`) a key asked for in the other family, so asking for IPv6
/// first tells the two apart.
#[inline(always)]
fn outer_source6(ctx: &TcContext) -> [u8; 16] {
    // SAFETY: all-zero is a valid key, and initialises what the helper reads.
    let mut key: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    // SAFETY: helper call with a valid, fully sized key on our stack.
    let rc = unsafe {
        bpf_skb_get_tunnel_key(
            ctx.skb.skb,
            &mut key as *mut bpf_tunnel_key,
            core::mem::size_of::<bpf_tunnel_key>() as u32,
            BPF_F_TUNINFO_IPV6 as u64,
        )
    };
    if rc < 0 {
        return verdict::ipv4_mapped(outer_source_be(ctx));
    }
    // SAFETY: reading integers out of a union of integers. The helper
    // copies the address as it is on the wire (network byte order).
    let w = unsafe { key.__bindgen_anon_1.remote_ipv6 };
    let (a, b, c, d) = (w[0].to_ne_bytes(), w[1].to_ne_bytes(), w[2].to_ne_bytes(), w[3].to_ne_bytes());
    [a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1], d[2], d[3]]
}

/// `skb->pkt_type` for a packet addressed to this host.
const PACKET_HOST: u32 = 0;

/// Egress of the VXLAN device. The fast path's packets (marked) already
/// carry their tunnel key; what the node's stack routes here (host
/// traffic, kube-proxy's DNAT to a remote backend) gets one from
/// `NODE_ROUTES`, and a pod's packet is judged (NetworkPolicy egress) and
/// remembered as a stack flow, as `to_uplink` does, so its reply returns
/// through the stack.
#[classifier]
pub fn to_tunnel(ctx: TcContext) -> i32 {
    match try_to_tunnel(&ctx) {
        Ok(action) => action,
        Err(reason) => drop_packet(&ctx, reason, HookDirection::Egress),
    }
}

#[inline(always)]
fn try_to_tunnel(ctx: &TcContext) -> Result<i32, DropReason> {
    if parse::mark(ctx) & FAST_PATH_MARK != 0 {
        return Ok(TC_ACT_UNSPEC);
    }
    let Some((_, ip)) = parse::ipv4(ctx)? else {
        // The device is NOARP; anything else has no remote end either way.
        return Ok(TC_ACT_UNSPEC);
    };
    // SAFETY: bounds checked by parse::ipv4.
    let dst_be = unsafe { (*ip).dst_be };
    let node_ip_be = match NODE_ROUTES.get(Key::new(32, dst_be)) {
        Some(node) => node.node_ip_be,
        None => return Err(DropReason::TunnelNoRoute),
    };
    set_key(ctx, node_ip_be)?;
    stack_flows::local_pod_via_stack(ctx)?;
    Ok(TC_ACT_UNSPEC)
}
