//! Carrying out a forwarding verdict: routed-hop header rewrites and the
//! redirect helpers.
use aya_ebpf::programs::TcContext;
use aya_ebpf::{
    bindings::{bpf_redir_neigh, TC_ACT_REDIRECT},
    helpers::{bpf_redirect, bpf_redirect_neigh, bpf_redirect_peer},
};
use sluice_common::{maps::FAST_PATH_MARK, verdict::checksum_after_ttl_decrement, DropReason, EndpointInfo};

use crate::parse::{EthHdr, Ipv4Hdr};

const AF_INET: u32 = 2;

/// What a router does to the IPv4 header on each hop: TTL minus one, checksum
/// updated incrementally. The caller has checked TTL > 1.
#[inline(always)]
pub fn decrement_ttl(ip: *mut Ipv4Hdr) {
    // SAFETY: `ip` was bounds checked by parse::header_mut; TC programs may
    // write packet data directly (the verifier unclones the skb first).
    unsafe {
        (*ip).check_be = checksum_after_ttl_decrement((*ip).check_be);
        (*ip).ttl -= 1;
    }
}

/// Rewrite MACs as if the packet came from the pod's gateway, and deliver it
/// into the pod's namespace without passing the node's stack or a bridge.
/// A refused redirect (the pod's veth went away) is a drop with its reason.
#[inline(always)]
pub fn into_pod(eth: *mut EthHdr, ep: &EndpointInfo) -> Result<i32, DropReason> {
    // SAFETY: `eth` was bounds checked by parse::header_mut.
    unsafe {
        (*eth).dst = ep.pod_mac;
        (*eth).src = ep.host_mac;
    }
    // SAFETY: helper call; returns TC_ACT_REDIRECT or TC_ACT_SHOT.
    let rc = unsafe { bpf_redirect_peer(ep.host_ifindex, 0) } as i32;
    if rc != TC_ACT_REDIRECT as i32 {
        return Err(DropReason::RedirectFailed);
    }
    Ok(rc)
}

/// From a netkit pod's transmit path (no `bpf_redirect_peer` there): MACs
/// as `into_pod` writes them, then out of the destination pod's host end,
/// whose transmit hands the packet to the pod. Marked, so that host end's
/// `to_pod` knows the fast path sent it (see `stack_flows`).
#[inline(always)]
pub fn to_pods_host_end(ctx: &TcContext, eth: *mut EthHdr, ep: &EndpointInfo) -> Result<i32, DropReason> {
    // SAFETY: `eth` was bounds checked by parse::header_mut.
    unsafe {
        (*eth).dst = ep.pod_mac;
        (*eth).src = ep.host_mac;
    }
    ctx.set_mark(crate::parse::mark(ctx) | FAST_PATH_MARK);
    // SAFETY: helper call; returns TC_ACT_REDIRECT or TC_ACT_SHOT.
    let rc = unsafe { bpf_redirect(ep.host_ifindex, 0) } as i32;
    if rc != TC_ACT_REDIRECT as i32 {
        return Err(DropReason::RedirectFailed);
    }
    Ok(rc)
}

/// Send out of `uplink_ifindex` towards `node_ip_be`; the kernel resolves the
/// next hop's MAC (ARP) and fills in both MACs. Marked, so `to_uplink` knows
/// the fast path sent it (see `stack_flows`).
#[inline(always)]
pub fn to_node(ctx: &TcContext, uplink_ifindex: u32, node_ip_be: u32) -> Result<i32, DropReason> {
    ctx.set_mark(crate::parse::mark(ctx) | FAST_PATH_MARK);
    let mut nh = bpf_redir_neigh {
        nh_family: AF_INET,
        __bindgen_anon_1: aya_ebpf::bindings::bpf_redir_neigh__bindgen_ty_1 { ipv4_nh: node_ip_be },
    };
    // SAFETY: helper call with a valid, correctly sized next-hop struct.
    let rc = unsafe {
        bpf_redirect_neigh(
            uplink_ifindex,
            &mut nh as *mut bpf_redir_neigh,
            core::mem::size_of::<bpf_redir_neigh>() as i32,
            0,
        )
    };
    if rc < 0 || rc as i32 != TC_ACT_REDIRECT as i32 {
        return Err(DropReason::RedirectFailed);
    }
    Ok(rc as i32)
}
