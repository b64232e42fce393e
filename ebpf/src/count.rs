//! `count_packets`: a diagnostic classifier that counts packets per
//! interface and lets every packet continue. It is how the loader is checked
//! end to end: attach it, send N packets, read N back.
use aya_ebpf::{bindings::TC_ACT_UNSPEC, macros::classifier, programs::TcContext};

use crate::{maps::IFACE_PACKETS, parse};

#[classifier]
pub fn count_packets(ctx: TcContext) -> i32 {
    let ifindex = parse::ifindex(&ctx);
    match IFACE_PACKETS.get_ptr_mut(&ifindex) {
        // SAFETY: per-CPU value, only this CPU writes it while we run.
        Some(n) => unsafe { *n += 1 },
        None => {
            let _ = IFACE_PACKETS.insert(&ifindex, &1, 0);
        }
    }
    // "Next": let any program after this one, or the stack, decide.
    TC_ACT_UNSPEC
}
