//! IPv4 fragments of datagrams the uplink translates
//! (`sluice_common::lb4_frag`): a first fragment's translation remembered
//! in `LB4_FRAGS`, the later fragments rewritten and sent the same way.
use aya_ebpf::{
    bindings::{__sk_buff, bpf_redir_neigh, TC_ACT_REDIRECT},
    helpers::bpf_redirect_neigh,
    programs::TcContext,
};
use sluice_common::{
    lb4_frag::{fragment, Fragment, FRAG4_LOCAL, FRAG4_REMOTE, FRAG4_REPLY, FRAG4_VIA_TUNNEL},
    maps::FAST_PATH_MARK,
    nat::{Nat4Counter, Nat4Key},
    DropReason, ForwardPath,
};

use crate::{
    counters::count_forward,
    forward,
    lb4::{code, count, LB4_PASS, LB4_SENT, LB4_TO_LOCAL_POD},
    maps::{ENDPOINTS, LB4_FRAGS, LB4_SCRATCH, NODE_CONFIG},
    parse::{self, Ipv4Hdr, ETH_HLEN},
};

const IP_CSUM_OFF: usize = ETH_HLEN + 10;
const IP_SRC_OFF: usize = ETH_HLEN + 12;
const IP_DST_OFF: usize = ETH_HLEN + 16;

/// Is the packet a later fragment (offset != 0) of an IPv4 datagram not
/// addressed to a pod of this node (pod traffic is never translated)?
#[inline(always)]
pub fn later_fragment(ctx: &TcContext) -> bool {
    let Ok(Some((_, ip))) = parse::ipv4(ctx) else { return false };
    // SAFETY: bounds checked by parse::ipv4.
    let (frag_off_be, dst_be) = unsafe { ((*ip).frag_off_be, (*ip).dst_be) };
    // SAFETY: only presence is read.
    fragment(u16::from_be(frag_off_be)) == Fragment::Later && unsafe { ENDPOINTS.get(&dst_be) }.is_none()
}

/// Remember how the packet `key` names is being translated (to `src_be`
/// → `dst_be`, sent as `flags` say, to `next_hop_be`), if it is a first
/// fragment. Called before the rewrite: the key is the datagram as its
/// later fragments arrive. A failed insert leaves those to the stack.
#[inline(always)]
pub fn remember(ctx: &TcContext, key: &Nat4Key, src_be: u32, dst_be: u32, next_hop_be: u32, flags: u32) {
    let Ok(ip) = parse::header_mut::<Ipv4Hdr>(ctx, ETH_HLEN) else { return };
    // SAFETY: bounds checked by header_mut.
    let (frag_off_be, id_be) = unsafe { ((*ip).frag_off_be, (*ip).id_be) };
    if fragment(u16::from_be(frag_off_be)) != Fragment::First {
        return;
    }
    // Key and value in `LB4_SCRATCH`, not on the stack (`Lb4Scratch`).
    let Some(scratch) = LB4_SCRATCH.get_ptr_mut(0) else { return };
    // SAFETY: this CPU's slot, used by this program run alone; fields no
    // caller holds a reference to.
    let (k, v) = unsafe { (&mut (*scratch).frag_key, &mut (*scratch).frag) };
    k.src_be = key.src_be;
    k.dst_be = key.dst_be;
    k.id_be = id_be;
    k.protocol = key.protocol;
    k._pad = 0;
    v.src_be = src_be;
    v.dst_be = dst_be;
    v.next_hop_be = next_hop_be;
    v.flags = flags;
    if LB4_FRAGS.insert(&*k, &*v, 0).is_ok() {
        count(Nat4Counter::FragmentFirst);
    }
}

/// A later fragment (`later_fragment`): rewritten and sent as its first
/// fragment was (`LB4_TO_LOCAL_POD`: the caller delivers it), or
/// `LB4_PASS` without an entry. A global function of its own, called by
/// the programs (`lb4::from_uplink`, `lb4::reply_from_pod`) after the
/// translation said `LB4_FRAGMENT`: its frame never stacks on the
/// translation's.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn sluice_lb4_fragment(skb: *mut __sk_buff) -> u32 {
    let ctx = TcContext::new(skb);
    code(try_fragment(&ctx))
}

#[inline(always)]
fn try_fragment(ctx: &TcContext) -> Result<u32, DropReason> {
    let ip: *mut Ipv4Hdr = parse::header_mut(ctx, ETH_HLEN)?;
    let Some(scratch) = LB4_SCRATCH.get_ptr_mut(0) else { return Err(DropReason::LookupMismatch) };
    // SAFETY: this CPU's slot, used by this program run alone.
    let k = unsafe { &mut (*scratch).frag_key };
    // SAFETY: bounds checked by header_mut.
    let ttl = unsafe {
        k.src_be = (*ip).src_be;
        k.dst_be = (*ip).dst_be;
        k.id_be = (*ip).id_be;
        k.protocol = (*ip).protocol;
        k._pad = 0;
        (*ip).ttl
    };
    // SAFETY: copied out at once.
    let Some(e) = (unsafe { LB4_FRAGS.get(&*k) }).copied() else {
        count(Nat4Counter::FragmentPassed);
        return Ok(LB4_PASS);
    };
    if ttl <= 1 {
        return Err(DropReason::TtlExpired);
    }
    let (from_src, from_dst) = (k.src_be, k.dst_be);
    if from_src != e.src_be {
        ctx.l3_csum_replace(IP_CSUM_OFF, from_src as u64, e.src_be as u64, 4)
            .and_then(|_| ctx.store(IP_SRC_OFF, &e.src_be, 0))
            .map_err(|_| DropReason::HeaderRewrite)?;
    }
    if from_dst != e.dst_be {
        ctx.l3_csum_replace(IP_CSUM_OFF, from_dst as u64, e.dst_be as u64, 4)
            .and_then(|_| ctx.store(IP_DST_OFF, &e.dst_be, 0))
            .map_err(|_| DropReason::HeaderRewrite)?;
    }
    count(Nat4Counter::FragmentForwarded);
    if e.flags & FRAG4_LOCAL != 0 {
        // Into the backend through the caller's door (TTL there).
        return Ok(LB4_TO_LOCAL_POD);
    }
    if e.flags & FRAG4_REMOTE != 0 {
        return crate::lb4::to_backend_node(ctx, e.next_hop_be, e.flags & FRAG4_VIA_TUNNEL != 0);
    }
    // The helpers above invalidated packet pointers: parse again.
    let ip: *mut Ipv4Hdr = parse::header_mut(ctx, ETH_HLEN)?;
    forward::decrement_ttl(ip);
    let uplink_ifindex = NODE_CONFIG.get(0).map(|c| c.uplink_ifindex).unwrap_or(0);
    if e.flags & FRAG4_REPLY == 0 || uplink_ifindex == 0 {
        return Err(DropReason::NoUplink);
    }
    ctx.set_mark(parse::mark(ctx) | FAST_PATH_MARK);
    // SAFETY: helper call; the FIB picks the next hop, as for the first.
    let rc = unsafe { bpf_redirect_neigh(uplink_ifindex, core::ptr::null_mut::<bpf_redir_neigh>(), 0, 0) };
    if rc as i32 != TC_ACT_REDIRECT as i32 {
        return Err(DropReason::RedirectFailed);
    }
    count_forward(ctx, ForwardPath::ServiceReply);
    Ok(LB4_SENT)
}
