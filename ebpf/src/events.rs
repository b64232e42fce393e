//! Reporting to `sluice-agent monitor` (`sluice_common::events`): every
//! drop, and every forwarding decision while a monitor traces. Costs
//! nothing on the fast path but one array read: drops are rare, traces are
//! off unless asked for, and a full ring buffer just loses the event.
use aya_ebpf::{helpers::bpf_skb_load_bytes, programs::TcContext};
use sluice_common::events::{DatapathEvent, EVENT_DROP, EVENT_TRACE, HEADER_BYTES, MONITOR_TRACE};

use crate::{
    maps::{EVENTS, MONITOR},
    parse,
};

/// Is a monitor tracing forwarded packets right now?
#[inline(always)]
pub fn tracing() -> bool {
    MONITOR.get(0).is_some_and(|flags| flags & MONITOR_TRACE != 0)
}

#[inline(always)]
pub fn drop(ctx: &TcContext, reason: u32, direction: u8) {
    report(ctx, EVENT_DROP, reason, direction);
}

#[inline(always)]
pub fn trace(ctx: &TcContext, path: u32, direction: u8) {
    if tracing() {
        report(ctx, EVENT_TRACE, path, direction);
    }
}

#[inline(always)]
fn report(ctx: &TcContext, kind: u8, code: u32, direction: u8) {
    let mut ev = DatapathEvent {
        kind,
        direction,
        protocol: 0,
        _pad: 0,
        code,
        ifindex: parse::ifindex(ctx),
        len: ctx.len(),
        src_be: 0,
        dst_be: 0,
        src_port_be: 0,
        dst_port_be: 0,
        header_len: 0,
        header: [0; HEADER_BYTES],
    };
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
    let _ = EVENTS.output::<DatapathEvent>(&ev, 0);
}
