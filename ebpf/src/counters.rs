//! The one drop path and the forward counters.
use aya_ebpf::{bindings::TC_ACT_SHOT, programs::TcContext};
use sluice_common::{drop_slot, events::DIR_INGRESS, DropReason, ForwardPath, HookDirection};

use crate::{
    events,
    maps::{DROP_STATS, FORWARDS},
};

/// Count the drop (a packet and its bytes) under its reason and the
/// direction of the program that drops it, which each entry point passes
/// (`HookDirection`: the side of its device its TC hook is on), report it to
/// the monitor, and tell TC to drop.
#[inline(always)]
pub fn drop_packet(ctx: &TcContext, reason: DropReason, direction: HookDirection) -> i32 {
    count_drop(ctx, reason, direction);
    TC_ACT_SHOT as i32
}

/// `drop_packet`'s counting and report alone: for a packet the program
/// consumes by turning it into an answer (a refusal, `lb4::refuse`), which
/// the request's sender sees as refused and the counters as dropped.
#[inline(always)]
pub fn count_drop(ctx: &TcContext, reason: DropReason, direction: HookDirection) {
    if let Some(count) = DROP_STATS.get_ptr_mut(drop_slot(reason, direction)) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe {
            (*count).packets += 1;
            (*count).bytes += ctx.len() as u64;
        }
    }
    events::drop(ctx, reason as u32, direction as u8);
}

/// Count a forwarding decision (and trace it while a monitor asks).
#[inline(always)]
pub fn count_forward(ctx: &TcContext, path: ForwardPath) {
    if let Some(n) = FORWARDS.get_ptr_mut(path as u32) {
        // SAFETY: as above.
        unsafe { *n += 1 }
    }
    events::trace(ctx, path as u32, DIR_INGRESS);
}

/// Count `path` without a trace event: a detail of a path already counted
/// (and traced) with `count_forward`.
#[inline(always)]
pub fn count_detail(path: ForwardPath) {
    if let Some(n) = FORWARDS.get_ptr_mut(path as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it.
        unsafe { *n += 1 }
    }
}
