//! The one drop path and the forward counters.
use aya_ebpf::{bindings::TC_ACT_SHOT, programs::TcContext};
use sluice_common::{events::DIR_INGRESS, DropReason, ForwardPath};

use crate::{
    events,
    maps::{DROPS, FORWARDS},
};

/// Count the drop under its reason, report it to the monitor, and tell TC
/// to drop.
#[inline(always)]
pub fn drop_packet(ctx: &TcContext, reason: DropReason) -> i32 {
    if let Some(n) = DROPS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe { *n += 1 }
    }
    events::drop(ctx, reason as u32, DIR_INGRESS);
    TC_ACT_SHOT as i32
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
