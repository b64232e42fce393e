//! Carrying out a forwarding verdict: the routed hop's TTL (hop limit),
//! the egress MTU (IPv6), and sending towards another node. Into a local
//! pod is `deliver`'s alone.
use aya_ebpf::programs::TcContext;
use aya_ebpf::{
    bindings::{
        bpf_check_mtu_flags::BPF_MTU_CHK_SEGS, bpf_check_mtu_ret::BPF_MTU_CHK_RET_SUCCESS, bpf_redir_neigh,
        TC_ACT_REDIRECT,
    },
    helpers::{bpf_check_mtu, bpf_redirect_neigh},
};
use sluice_common::{maps::FAST_PATH_MARK, verdict::checksum_after_ttl_decrement, DropReason};

use crate::parse::{Ipv4Hdr, Ipv6Hdr};

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

/// The IPv6 twin of `decrement_ttl`: hop limit minus one (no header
/// checksum in IPv6). The caller has checked hop limit > 1.
#[inline(always)]
pub fn decrement_hop_limit(ip6: *mut Ipv6Hdr) {
    // SAFETY: as in `decrement_ttl`.
    unsafe { (*ip6).hop_limit -= 1 }
}

/// Does this packet fit the MTU of `ifindex`, the device it is about to
/// leave by (`bpf_check_mtu`: the skb's length against the device's MTU
/// and link header; a GSO packet's every segment)? `bpf_redirect_neigh`
/// and `bpf_redirect_peer` skip the stack's MTU checks, and an IPv6 router
/// never fragments: what does not fit goes to the stack, which sends the
/// sender Packet Too Big. A device that is gone (an error) fits nothing.
#[inline(always)]
pub fn fits_mtu(ctx: &TcContext, ifindex: u32) -> bool {
    let mut mtu_len: u32 = 0;
    // SAFETY: helper call; `mtu_len` is a valid u32 (0: use the skb's
    // length, as `BPF_MTU_CHK_SEGS` requires).
    let rc =
        unsafe { bpf_check_mtu(ctx.skb.skb as *mut _, ifindex, &mut mtu_len as *mut u32, 0, BPF_MTU_CHK_SEGS as u64) };
    rc == BPF_MTU_CHK_RET_SUCCESS as i64
}

/// The IPv6 twin of `to_node`: out of `uplink_ifindex` towards the next
/// hop `nh` (the destination's node's IPv6 address, in map memory: no
/// stack for it; the kernel resolves its MAC by neighbour discovery).
/// Marked, as `to_node`'s.
#[inline(always)]
pub fn to_node6(ctx: &TcContext, uplink_ifindex: u32, nh: *mut bpf_redir_neigh) -> Result<i32, DropReason> {
    ctx.set_mark(crate::parse::mark(ctx) | FAST_PATH_MARK);
    // SAFETY: helper call with a valid, correctly sized next-hop struct.
    let rc = unsafe { bpf_redirect_neigh(uplink_ifindex, nh, core::mem::size_of::<bpf_redir_neigh>() as i32, 0) };
    if rc < 0 || rc as i32 != TC_ACT_REDIRECT as i32 {
        return Err(DropReason::RedirectFailed);
    }
    Ok(rc as i32)
}

/// An IPv6 address as the four 32-bit words `bpf_redir_neigh` holds, in
/// memory order (network byte order, as in the packet).
#[inline(always)]
pub fn words(a: &[u8; 16]) -> [u32; 4] {
    let w = |i: usize| u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
    [w(0), w(4), w(8), w(12)]
}
