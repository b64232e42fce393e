//! The one drop path and the forward counters.
use aya_ebpf::bindings::TC_ACT_SHOT;
use sluice_common::{DropReason, ForwardPath};

use crate::maps::{DROPS, FORWARDS};

/// Count the drop under its reason and tell TC to drop.
#[inline(always)]
pub fn drop_packet(reason: DropReason) -> i32 {
    if let Some(n) = DROPS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe { *n += 1 }
    }
    TC_ACT_SHOT as i32
}

#[inline(always)]
pub fn count_forward(path: ForwardPath) {
    if let Some(n) = FORWARDS.get_ptr_mut(path as u32) {
        // SAFETY: as above.
        unsafe { *n += 1 }
    }
}
