//! Carrying out a forwarding verdict: the routed hop's TTL, and sending
//! towards another node. Into a local pod is `deliver`'s alone.
use aya_ebpf::programs::TcContext;
use aya_ebpf::{
    bindings::{bpf_redir_neigh, TC_ACT_REDIRECT},
    helpers::bpf_redirect_neigh,
};
use sluice_common::{maps::FAST_PATH_MARK, verdict::checksum_after_ttl_decrement, DropReason};

use crate::parse::Ipv4Hdr;

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
