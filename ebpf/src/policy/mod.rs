//! NetworkPolicy enforcement (issue 25; design in docs/ARCHITECTURE.md,
//! "NetworkPolicy"): fixed code, policy as data in the `POLICY_*` maps.
//!
//! One entry point, [`enforce`], called by every hook that judges:
//! - `from_pod` / `from_pod_netkit`: what a local pod sends anywhere but
//!   into a local pod (that goes through the door below) — its egress.
//! - `deliver::deliver_to_local_pod`, for every origin: what enters a local
//!   pod — its ingress, and the sender's egress when the sender is a pod of
//!   this node (fast path, or handed back by the stack after kube-proxy's
//!   DNAT).
//! - `to_uplink`, `to_tunnel`: what the stack sends out for a local pod
//!   (kube-proxy's DNAT to a remote backend) — its egress.
//!
//! A connection is judged once, on a packet that finds no `POLICY_CT`
//! entry, by the judgements this node makes for it (the client's egress if
//! the client is a pod here, the server's ingress if the server is); an
//! allowed one is remembered under its canonical tuple (lower address
//! first, the client's end in its flags), so every packet of it, either
//! way, finds it with one lookup. An
//! entry judged at an older `POLICY_STATE.epoch` is judged again on its
//! next packet: allowed, it takes the new epoch; denied, it is deleted and
//! the packet dropped.
//!
//! The fast path for pods no policy selects: one `POLICY_ENDPOINTS` lookup
//! per local end, nothing else, no `POLICY_CT` entry. A connection needs
//! one only when an end is isolated (either way) or pending: an end
//! isolated for ingress only must still know its own connections' replies
//! from new connections towards it.
mod family;
mod judge;
mod tuple;

use aya_ebpf::{bindings::__sk_buff, helpers::bpf_ktime_get_coarse_ns, programs::TcContext};
use sluice_common::{
    policy::{policy_exempt6, CtKey, EndpointPolicy, CT_CLIENT_IS_DST, CT_REPLY_SEEN, IPPROTO_ICMPV6},
    DropReason,
};

use crate::{
    maps::{POLICY_ENDPOINTS, POLICY_ENDPOINTS6, POLICY_SCRATCH6, POLICY_STATE},
    parse::{self, Ipv4Hdr, Ipv6Hdr, ETH_HLEN},
};
use family::{Family, V4, V6};
use tuple::Tracking;

/// `last_seen_ns` is refreshed at most this often (a write per packet to a
/// value every CPU shares costs more than the GC's precision is worth).
const LAST_SEEN_REFRESH_NS: u64 = 1_000_000_000;

/// Judge the IPv4 packet whose header is `ip` (at `ETH_HLEN`, transport
/// header at `L4_OFF`). `src_may_be_local` / `dst_may_be_local`: whether
/// its source / destination can be a pod of this node; `false` only where
/// the caller knows it is not (from another node; not an `ENDPOINTS`
/// address), which saves the lookup. Every hook a connection passes on
/// this node must look up every end that is local, so that each judges
/// the same ends. `Err`: drop, with its reason.
#[inline(always)]
pub fn enforce(
    ctx: &TcContext,
    ip: *const Ipv4Hdr,
    src_may_be_local: bool,
    dst_may_be_local: bool,
) -> Result<(), DropReason> {
    // SAFETY: `ip` was bounds checked by the caller.
    let (src_be, dst_be) = unsafe { ((*ip).src_be, (*ip).dst_be) };
    // A pod can always reach itself (hairpin through a Service).
    if src_be == dst_be {
        return Ok(());
    }
    let src = if src_may_be_local { endpoint(src_be) } else { None };
    let dst = if dst_may_be_local { endpoint(dst_be) } else { None };
    if src.is_none() && dst.is_none() {
        return Ok(());
    }
    let (src_rules, src_flags) = match src {
        Some(ep) => (ep.rules_id, ep.flags),
        None => (0, 0),
    };
    let (dst_rules, dst_flags) = match dst {
        Some(ep) => (ep.rules_id, ep.flags),
        None => (0, 0),
    };
    match sluice_policy_judge_packet(ctx.skb.skb, src_rules, src_flags, dst_rules, dst_flags) {
        0 => Ok(()),
        code => Err(reason_from(code)),
    }
}

/// `judge_packet` as a BPF *global* function: the verifier checks it once,
/// on its own, instead of once for every path of every program that
/// reaches it (see `judge::sluice_policy_direction`). Its arguments are
/// the context and scalars: the ends' `EndpointPolicy` as rules id and
/// flags (flags 0: not a local pod that any policy selects). Returns 0 to
/// let the packet go, else its drop reason + 1.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn sluice_policy_judge_packet(
    skb: *mut __sk_buff,
    src_rules: u32,
    src_flags: u32,
    dst_rules: u32,
    dst_flags: u32,
) -> u32 {
    let ctx = TcContext::new(skb);
    let src = (src_flags != 0).then_some(EndpointPolicy { rules_id: src_rules, flags: src_flags });
    let dst = (dst_flags != 0).then_some(EndpointPolicy { rules_id: dst_rules, flags: dst_flags });
    let (mut key, mut stored) = (CtKey::default(), CtKey::default());
    match judge_packet::<V4>(&ctx, &mut key, &mut stored, src, dst) {
        Ok(()) => 0,
        Err(reason) => reason as u32 + 1,
    }
}

/// The IPv6 twin of `sluice_policy_judge_packet` (the packet's IPv6
/// header at `ETH_HLEN`), a global function of its own for the same
/// reason. It also makes `enforce6`'s exemptions (a pod to itself,
/// link-scope traffic and neighbour discovery: `policy_exempt6`): they
/// read both addresses byte by byte, whose registers spill into the frame
/// of whatever inlines them; here they are paid only when an end is
/// isolated, and in this function's frame, which no caller's holds (the
/// IPv6 fast path's callers have no room for them: `fast6`).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn sluice_policy_judge_packet6(
    skb: *mut __sk_buff,
    src_rules: u32,
    src_flags: u32,
    dst_rules: u32,
    dst_flags: u32,
) -> u32 {
    let ctx = TcContext::new(skb);
    match exempt6(&ctx) {
        Ok(true) => return 0,
        Ok(false) => {}
        Err(reason) => return reason as u32 + 1,
    }
    let src = (src_flags != 0).then_some(EndpointPolicy { rules_id: src_rules, flags: src_flags });
    let dst = (dst_flags != 0).then_some(EndpointPolicy { rules_id: dst_rules, flags: dst_flags });
    // The tuples live in `POLICY_SCRATCH6` (see `PolicyScratch6`); without
    // it, fail closed.
    let Some(scratch) = POLICY_SCRATCH6.get_ptr_mut(0) else {
        return DropReason::PolicyDeniedIngress as u32 + 1;
    };
    // SAFETY: this CPU's slot, used by this program run alone.
    let (key, stored) = unsafe { (&mut (*scratch).key, &mut (*scratch).stored) };
    match judge_packet::<V6>(&ctx, key, stored, src, dst) {
        Ok(()) => 0,
        Err(reason) => reason as u32 + 1,
    }
}

/// Is the IPv6 packet at `ETH_HLEN` never judged: a pod to itself,
/// link-scope traffic, neighbour discovery (`policy_exempt6`)? Without
/// them the pod has no IPv6 at all.
#[inline(always)]
fn exempt6(ctx: &TcContext) -> Result<bool, DropReason> {
    let ip6: *const Ipv6Hdr = parse::header_mut(ctx, ETH_HLEN)?;
    // SAFETY: bounds checked by header_mut; read in place.
    let (src, dst, next_header) = unsafe { (&(*ip6).src, &(*ip6).dst, (*ip6).next_header) };
    if src == dst {
        return Ok(true);
    }
    let icmp6_type = if next_header == IPPROTO_ICMPV6 {
        match parse::header_mut::<u8>(ctx, ETH_HLEN + core::mem::size_of::<Ipv6Hdr>()) {
            // SAFETY: bounds checked by header_mut.
            Ok(t) => unsafe { *t },
            Err(_) => 0,
        }
    } else {
        0
    };
    Ok(policy_exempt6(src, dst, next_header, icmp6_type))
}

/// The IPv6 twin of `enforce`, for the IPv6 packet at `ETH_HLEN` (a pod's,
/// on a dual-stack node). The same judgement, maps keyed by the IPv6
/// address (`POLICY_ENDPOINTS6`, `POLICY_IDENTITIES6`, `POLICY_CT6`), the
/// same rules. Link-scope traffic and neighbour discovery are never judged
/// (`policy_exempt6`, checked in `sluice_policy_judge_packet6` once an end
/// is found isolated): without them the pod has no IPv6 at all.
#[inline(always)]
pub fn enforce6(ctx: &TcContext, src_may_be_local: bool, dst_may_be_local: bool) -> Result<(), DropReason> {
    let ip6: *const Ipv6Hdr = parse::header_mut(ctx, ETH_HLEN)?;
    // SAFETY: bounds checked by header_mut; the addresses are looked up
    // in place (a map key may live in the packet), never copied here.
    let (src, dst) = unsafe { (&(*ip6).src, &(*ip6).dst) };
    let src = if src_may_be_local { endpoint6(src) } else { None };
    let dst = if dst_may_be_local { endpoint6(dst) } else { None };
    if src.is_none() && dst.is_none() {
        return Ok(());
    }
    let (src_rules, src_flags) = match src {
        Some(ep) => (ep.rules_id, ep.flags),
        None => (0, 0),
    };
    let (dst_rules, dst_flags) = match dst {
        Some(ep) => (ep.rules_id, ep.flags),
        None => (0, 0),
    };
    match sluice_policy_judge_packet6(ctx.skb.skb, src_rules, src_flags, dst_rules, dst_flags) {
        0 => Ok(()),
        code => Err(reason_from(code)),
    }
}

/// `endpoint`'s IPv6 twin.
#[inline(always)]
fn endpoint6(addr: &[u8; 16]) -> Option<EndpointPolicy> {
    // SAFETY: copied out at once.
    match unsafe { POLICY_ENDPOINTS6.get(addr) } {
        Some(ep) if ep.flags != 0 => Some(*ep),
        _ => None,
    }
}

/// The drop reason `sluice_policy_judge_packet` returned (+ 1). The
/// verifier cannot know the set it returns; a code that names no reason
/// of it (none is returned) is still a drop: fail closed.
#[inline(always)]
fn reason_from(code: u32) -> DropReason {
    const TRUNCATED: u32 = DropReason::Truncated as u32;
    const DENIED_EGRESS: u32 = DropReason::PolicyDeniedEgress as u32;
    const PEER_UNKNOWN: u32 = DropReason::PolicyPeerUnknown as u32;
    const PENDING: u32 = DropReason::PolicyPending as u32;
    match code.wrapping_sub(1) {
        TRUNCATED => DropReason::Truncated,
        DENIED_EGRESS => DropReason::PolicyDeniedEgress,
        PEER_UNKNOWN => DropReason::PolicyPeerUnknown,
        PENDING => DropReason::PolicyPending,
        _ => DropReason::PolicyDeniedIngress,
    }
}

/// `enforce` for a packet about to enter a local pod: parsed afresh (a
/// caller may have decapsulated it).
#[inline(always)]
pub fn enforce_delivery(ctx: &TcContext, src_may_be_local: bool) -> Result<(), DropReason> {
    let ip: *const Ipv4Hdr = parse::header_mut(ctx, ETH_HLEN)?;
    enforce(ctx, ip, src_may_be_local, true)
}

/// A local pod's policy entry, if it has one that can make a difference
/// (isolated either way, or pending).
#[inline(always)]
fn endpoint(addr_be: u32) -> Option<EndpointPolicy> {
    // SAFETY: copied out at once.
    match unsafe { POLICY_ENDPOINTS.get(&addr_be) } {
        Some(ep) if ep.flags != 0 => Some(*ep),
        _ => None,
    }
}

/// The slow path: some end is isolated or pending. One code for both
/// families (`F`: `V4` over `POLICY_CT`, `V6` over `POLICY_CT6`). `key`
/// and `stored`: the caller's memory for the packet's tuple and the key
/// its connection is stored under (worked on in place: see `Family`).
#[inline(always)]
fn judge_packet<F: Family>(
    ctx: &TcContext,
    key: &mut F::Key,
    stored: &mut F::Key,
    src: Option<EndpointPolicy>,
    dst: Option<EndpointPolicy>,
) -> Result<(), DropReason> {
    // Only the epoch is copied (the stack is short: see `PolicyScratch6`).
    let epoch = match POLICY_STATE.get(0) {
        Some(s) => s.epoch,
        None => 0,
    };
    match F::tuple(ctx, key)? {
        Tracking::Tracked => {}
        Tracking::Untracked => return untracked::<F>(ctx, key, src, dst),
        Tracking::Related => {
            // Both orientations: the quoted packet may have gone either
            // way, and the entry may predate the canonical layout.
            if F::ct_contains(key) {
                return Ok(());
            }
            F::reverse(key);
            if F::ct_contains(key) {
                return Ok(());
            }
            F::outer(ctx, key)?;
            return untracked::<F>(ctx, key, src, dst);
        }
    }
    // One lookup finds the connection whichever way this packet travels:
    // it is stored under its canonical tuple (see `CtKey`). `stored` ends
    // as the key of the entry found, if any. (Keys are reused in place:
    // the judge's frame shares Linux 6.1's 512 bytes with its caller's.)
    let swapped = F::canonical_into(key, stored);
    // Whether `stored` is this packet's own tuple (else its reverse).
    let mut stored_is_key = !swapped;
    let mut found = F::ct_get_ptr_mut(stored);
    if found.is_none() {
        // An entry written before the canonical layout sits under the
        // original direction, which may be the other orientation. Only a
        // packet without a canonical entry pays this lookup: a new
        // connection (which pays the judgement anyway) or one opened before
        // an upgrade.
        F::reverse(stored);
        stored_is_key = swapped;
        found = F::ct_get_ptr_mut(stored);
    }
    let mut is_reply = false;
    if let Some(entry) = found {
        // SAFETY: a pointer into the map's value, valid during this program
        // run (an LRU entry evicted meanwhile is not freed under us: RCU).
        let (entry_epoch, flags, last_seen_ns) = unsafe { ((*entry).epoch, (*entry).flags, (*entry).last_seen_ns) };
        // The client is the stored key's source unless the flags say its
        // destination; this packet comes from the stored key's source when
        // it is stored under its own tuple.
        is_reply = stored_is_key == (flags & CT_CLIENT_IS_DST != 0);
        if is_reply && flags & CT_REPLY_SEEN == 0 {
            // SAFETY: as above.
            unsafe { (*entry).flags = flags | CT_REPLY_SEEN };
        }
        // SAFETY: a plain helper (the clock at the last tick: no clock
        // source read per packet).
        let now = unsafe { bpf_ktime_get_coarse_ns() };
        if now.wrapping_sub(last_seen_ns) > LAST_SEEN_REFRESH_NS {
            // SAFETY: as above.
            unsafe { (*entry).last_seen_ns = now };
        }
        if entry_epoch == epoch {
            return Ok(());
        }
    }
    // A new connection, or a known one judged at another epoch: judged
    // now, in its original direction (a reply's client is its destination).
    let (client, server) = if is_reply {
        F::reverse(key);
        (dst, src)
    } else {
        (src, dst)
    };
    let judged = judge::connection::<F>(ctx, key, client, server, true);
    match found {
        Some(entry) => {
            if let Some(reason) = judged.denied {
                F::ct_remove(stored);
                return Err(reason);
            }
            // SAFETY: as above; the entry takes the new epoch, keeping what
            // it knows of its packets.
            unsafe {
                (*entry).epoch = epoch;
                (*entry).flags = judged.flags | ((*entry).flags & (CT_REPLY_SEEN | CT_CLIENT_IS_DST));
                (*entry).egress_ref = judged.egress_ref;
                (*entry).ingress_ref = judged.ingress_ref;
            }
        }
        None => {
            if let Some(reason) = judged.denied {
                return Err(reason);
            }
            let flags = judged.flags | if swapped { CT_CLIENT_IS_DST } else { 0 };
            // Neither lookup found it: `stored` is the canonical tuple
            // reversed; the entry goes under the canonical one. An LRU map
            // makes room by evicting; should even that fail, this packet
            // still goes (it was allowed) and the next one is judged again.
            F::reverse(stored);
            // SAFETY: a plain helper.
            let now = unsafe { bpf_ktime_get_coarse_ns() };
            F::ct_insert(stored, epoch, flags, now, judged.egress_ref, judged.ingress_ref);
        }
    }
    Ok(())
}

/// A packet judged on its own, every time, never remembered.
#[inline(always)]
fn untracked<F: Family>(
    ctx: &TcContext,
    key: &F::Key,
    src: Option<EndpointPolicy>,
    dst: Option<EndpointPolicy>,
) -> Result<(), DropReason> {
    match judge::connection::<F>(ctx, key, src, dst, false).denied {
        Some(reason) => Err(reason),
        None => Ok(()),
    }
}
