//! Events the datapath reports to `sluice-agent monitor` through the
//! `EVENTS` ring buffer: every drop, and, while a monitor asks for them
//! (`MONITOR[0]` = `MONITOR_TRACE`), every forwarding decision.
//!
//! Written by the eBPF programs (`ebpf/src/events.rs`); read by the monitor,
//! from the pinned ring buffer, so it works while the agent is down. A full
//! ring buffer loses events, never packets.

/// `DatapathEvent::kind`.
pub const EVENT_DROP: u8 = 1;
pub const EVENT_TRACE: u8 = 2;

/// `MONITOR[0]`: 0 = drops only (always on: drops are rare), this bit set =
/// trace forwarded packets too (set by a monitor with `--type trace|all`).
pub const MONITOR_TRACE: u32 = 1;

/// `DatapathEvent::direction`: the `counters::HookDirection` of the program
/// that reported it.
pub const DIR_INGRESS: u8 = crate::counters::HookDirection::Ingress as u8;
pub const DIR_EGRESS: u8 = crate::counters::HookDirection::Egress as u8;

/// Bytes of the packet's start copied into an event.
pub const HEADER_BYTES: usize = 48;

/// One event. `code` is a `DropReason` for drops, a `ForwardPath` for
/// traces. Addresses and ports as in the packet (network order).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DatapathEvent {
    pub kind: u8,
    pub direction: u8,
    pub protocol: u8,
    pub _pad: u8,
    pub code: u32,
    /// The interface the program runs on.
    pub ifindex: u32,
    /// The packet's length (`skb->len`).
    pub len: u32,
    pub src_be: u32,
    pub dst_be: u32,
    pub src_port_be: u16,
    pub dst_port_be: u16,
    /// How many of `header` are the packet's (shorter packets).
    pub header_len: u32,
    pub header: [u8; HEADER_BYTES],
}
const _: () = assert!(core::mem::size_of::<DatapathEvent>() == 80);

#[cfg(feature = "user")]
// SAFETY: plain `repr(C)` data with no padding and no invalid bit patterns.
unsafe impl aya::Pod for DatapathEvent {}
