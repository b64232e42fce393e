//! Events the datapath reports to `sluice-agent monitor`: every drop, and
//! every forwarding decision, each only while a monitor subscribes to it.
//!
//! Several monitors at once: a BPF ring buffer has one consumer position,
//! so two readers of one buffer would split its events between them. Each
//! running monitor therefore holds a *slot* (`MONITOR_SLOTS` of them), with
//! a ring buffer of its own (`EVENTS_<slot>`), and says in `MONITORS[0]`
//! which kinds it wants (`drop_bit`, `trace_bit`); a program writes each
//! event into the ring buffer of every slot that wants it. With no monitor
//! running that word is 0: the whole cost is the one array read, and no
//! backlog piles up for the next monitor to print.
//!
//! Written by the eBPF programs (`ebpf/src/events.rs`); read by the
//! monitor, from the pinned maps, so it works while the agent is down. A
//! full ring buffer loses events, never packets.

/// `DatapathEvent::kind`.
pub const EVENT_DROP: u8 = 1;
pub const EVENT_TRACE: u8 = 2;
/// A NetworkPolicy verdict on a new connection: the record is a
/// `policy::PolicyEvent` (32 bytes), not a `DatapathEvent`.
pub const EVENT_POLICY: u8 = 3;
/// The IPv6 twin of `EVENT_POLICY`: the record is a
/// `policy::PolicyEvent6` (56 bytes). Same subscription (`policy_bit`).
pub const EVENT_POLICY6: u8 = 4;

/// How many monitors can run at once (ring buffers `EVENTS_0..3`).
pub const MONITOR_SLOTS: u32 = 4;

/// `MONITORS[0]`: slot `slot` wants drops.
pub const fn drop_bit(slot: u32) -> u32 {
    1 << slot
}

/// `MONITORS[0]`: slot `slot` wants forwarding traces.
pub const fn trace_bit(slot: u32) -> u32 {
    1 << (8 + slot)
}

/// `MONITORS[0]`: slot `slot` wants NetworkPolicy verdicts
/// (`policy::PolicyEvent` records).
pub const fn policy_bit(slot: u32) -> u32 {
    1 << (16 + slot)
}

/// Every bit a slot may set in `MONITORS[0]`.
pub const fn slot_bits(slot: u32) -> u32 {
    drop_bit(slot) | trace_bit(slot) | policy_bit(slot)
}

/// The slots (bit `i` = slot `i`) an event of `kind` goes to, given
/// `MONITORS[0]`.
pub const fn subscribers(monitors: u32, kind: u8) -> u32 {
    let mask = (1 << MONITOR_SLOTS) - 1;
    match kind {
        EVENT_DROP => monitors & mask,
        EVENT_TRACE => (monitors >> 8) & mask,
        EVENT_POLICY | EVENT_POLICY6 => (monitors >> 16) & mask,
        _ => 0,
    }
}

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
    /// When (`bpf_ktime_get_ns`: `CLOCK_MONOTONIC`, nanoseconds).
    pub ts_ns: u64,
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
const _: () = assert!(core::mem::size_of::<DatapathEvent>() == 88);

#[cfg(feature = "user")]
// SAFETY: plain `repr(C)` data with no padding and no invalid bit patterns.
unsafe impl aya::Pod for DatapathEvent {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_goes_to_the_slots_that_want_it() {
        assert_eq!(subscribers(0, EVENT_DROP), 0, "nobody listening");
        assert_eq!(subscribers(0, EVENT_TRACE), 0);
        let m = drop_bit(0) | slot_bits(2) | trace_bit(3);
        assert_eq!(subscribers(m, EVENT_DROP), 0b0101);
        assert_eq!(subscribers(m, EVENT_TRACE), 0b1100);
        assert_eq!(subscribers(m, EVENT_POLICY), 0b0100);
        assert_eq!(subscribers(policy_bit(1), EVENT_POLICY), 0b0010);
        assert_eq!(subscribers(policy_bit(1), EVENT_DROP), 0, "a policy monitor gets no drops");
        assert_eq!(subscribers(m, 0), 0, "an unknown kind goes nowhere");
        for slot in 0..MONITOR_SLOTS {
            assert_eq!(subscribers(slot_bits(slot), EVENT_DROP), 1 << slot);
            assert_eq!(subscribers(slot_bits(slot), EVENT_TRACE), 1 << slot);
            assert_eq!(subscribers(slot_bits(slot), EVENT_POLICY), 1 << slot);
        }
        // The slots' bits never overlap.
        let all = (0..MONITOR_SLOTS).fold(0, |acc, s| {
            assert_eq!(acc & slot_bits(s), 0);
            acc | slot_bits(s)
        });
        assert_eq!(all.count_ones(), 3 * MONITOR_SLOTS);
    }
}
