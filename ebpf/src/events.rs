//! Reporting to `sluice-agent monitor` (`sluice_common::events`): drops,
//! forwarding decisions and NetworkPolicy verdicts, each written into the ring buffer of every monitor
//! slot that subscribed to its kind. With no monitor running the cost is
//! one array read; a full ring buffer just loses the event.
use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_skb_load_bytes},
    programs::TcContext,
};
use sluice_common::{
    events::{subscribers, DatapathEvent, EVENT_DROP, EVENT_POLICY, EVENT_POLICY6, EVENT_TRACE, HEADER_BYTES},
    policy::{CtKey, CtKey6, PolicyEvent, PolicyEvent6},
};

use crate::{
    maps::{EVENTS_0, EVENTS_1, EVENTS_2, EVENTS_3, MONITORS, POLICY_SCRATCH6},
    parse,
};

/// `MONITORS[0]`: who listens for what (0: nobody).
#[inline(always)]
fn monitors() -> u32 {
    MONITORS.get(0).copied().unwrap_or(0)
}

#[inline(always)]
pub fn drop(ctx: &TcContext, reason: u32, direction: u8) {
    let slots = subscribers(monitors(), EVENT_DROP);
    if slots != 0 {
        report(ctx, slots, EVENT_DROP, reason, direction);
    }
}

#[inline(always)]
pub fn trace(ctx: &TcContext, path: u32, direction: u8) {
    let slots = subscribers(monitors(), EVENT_TRACE);
    if slots != 0 {
        report(ctx, slots, EVENT_TRACE, path, direction);
    }
}

/// A NetworkPolicy verdict on a connection (`key`: client → server),
/// for the monitors subscribed to policy events.
#[inline(always)]
pub fn policy(ctx: &TcContext, key: &CtKey, direction: u8, verdict: u8, policy_ref: u32) {
    let slots = subscribers(monitors(), EVENT_POLICY);
    if slots == 0 {
        return;
    }
    let ev = PolicyEvent {
        // SAFETY: a plain helper, valid in every program type.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        kind: EVENT_POLICY,
        direction,
        protocol: key.protocol,
        verdict,
        policy_ref,
        saddr_be: key.src_be,
        daddr_be: key.dst_be,
        sport_be: key.src_port_be,
        dport_be: key.dst_port_be,
        ifindex: parse::ifindex(ctx),
    };
    if slots & 1 != 0 {
        let _ = EVENTS_0.output::<PolicyEvent>(&ev, 0);
    }
    if slots & 2 != 0 {
        let _ = EVENTS_1.output::<PolicyEvent>(&ev, 0);
    }
    if slots & 4 != 0 {
        let _ = EVENTS_2.output::<PolicyEvent>(&ev, 0);
    }
    if slots & 8 != 0 {
        let _ = EVENTS_3.output::<PolicyEvent>(&ev, 0);
    }
}

/// `policy`'s IPv6 twin: a `PolicyEvent6`, to the same subscribers, built
/// in `POLICY_SCRATCH6` (56 bytes more on the stack would not fit 6.1's
/// 512 beside the callers' frames).
#[inline(always)]
pub fn policy6(ctx: &TcContext, key: &CtKey6, direction: u8, verdict: u8, policy_ref: u32) {
    let slots = subscribers(monitors(), EVENT_POLICY6);
    if slots == 0 {
        return;
    }
    let Some(scratch) = POLICY_SCRATCH6.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot, used by this program run alone; `key` may
    // live in the same value (a field of its own).
    let ev = unsafe { &mut (*scratch).event };
    // SAFETY: a plain helper, valid in every program type.
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    ev.kind = EVENT_POLICY6;
    ev.direction = direction;
    ev.protocol = key.protocol;
    ev.verdict = verdict;
    ev.policy_ref = policy_ref;
    ev.saddr = key.src;
    ev.daddr = key.dst;
    ev.sport_be = key.src_port_be;
    ev.dport_be = key.dst_port_be;
    ev.ifindex = parse::ifindex(ctx);
    if slots & 1 != 0 {
        let _ = EVENTS_0.output::<PolicyEvent6>(&*ev, 0);
    }
    if slots & 2 != 0 {
        let _ = EVENTS_1.output::<PolicyEvent6>(&*ev, 0);
    }
    if slots & 4 != 0 {
        let _ = EVENTS_2.output::<PolicyEvent6>(&*ev, 0);
    }
    if slots & 8 != 0 {
        let _ = EVENTS_3.output::<PolicyEvent6>(&*ev, 0);
    }
}

#[inline(always)]
fn report(ctx: &TcContext, slots: u32, kind: u8, code: u32, direction: u8) {
    let mut ev = core::mem::MaybeUninit::<DatapathEvent>::uninit();
    // SAFETY: all zero is a valid event (plain integers); word by word,
    // so no `memset` call (see `stack`).
    // Written in place through the pointer, never moved: a move is a copy
    // LLVM may turn back into `memset`.
    let ev = unsafe {
        crate::stack::zero_words(ev.as_mut_ptr());
        &mut *ev.as_mut_ptr()
    };
    // SAFETY: a plain helper, valid in every program type.
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    ev.kind = kind;
    ev.direction = direction;
    ev.code = code;
    ev.ifindex = parse::ifindex(ctx);
    ev.len = ctx.len();
    if let Ok(Some((_, ip))) = parse::ipv4(ctx) {
        if let Ok((key, _)) = parse::flow(ctx, ip) {
            ev.src_be = key.src_be;
            ev.dst_be = key.dst_be;
            ev.src_port_be = key.src_port_be;
            ev.dst_port_be = key.dst_port_be;
            ev.protocol = key.protocol;
        }
    }
    if ctx.len() as usize >= HEADER_BYTES {
        // SAFETY: helper call with a constant length that fits the buffer
        // and, checked just above, the packet.
        let rc = unsafe {
            bpf_skb_load_bytes(ctx.skb.skb as *const _, 0, ev.header.as_mut_ptr() as *mut _, HEADER_BYTES as u32)
        };
        if rc == 0 {
            ev.header_len = HEADER_BYTES as u32;
        }
    }
    // One copy per subscribed slot: each monitor consumes its own buffer.
    if slots & 1 != 0 {
        let _ = EVENTS_0.output::<DatapathEvent>(&*ev, 0);
    }
    if slots & 2 != 0 {
        let _ = EVENTS_1.output::<DatapathEvent>(&*ev, 0);
    }
    if slots & 4 != 0 {
        let _ = EVENTS_2.output::<DatapathEvent>(&*ev, 0);
    }
    if slots & 8 != 0 {
        let _ = EVENTS_3.output::<DatapathEvent>(&*ev, 0);
    }
}
