//! IPv6 NodePorts from outside (issues 27 × 28): the twin of `nat`'s
//! `NAT4` for a dual-stack node's IPv6 frontends (`[nodeIPv6]:nodePort`,
//! IPv6 external and LoadBalancer ingress IPs), translated per packet by
//! `from_uplink` (`ebpf/src/lb6.rs`) and undone on the way back.
//!
//! The scheme is `NAT4`'s, word for word (see `nat`): a pair of entries per
//! connection, each keyed by a tuple as it arrives; the reply key reserves
//! the SNAT port (`BPF_NOEXIST`, `SNAT_PORT_TRIES` tries); a plain hash that
//! refuses a new connection when full (`DropReason::Nat6TableFull`) and is
//! collected by the agent. The flags (`NAT4_*`), closing rules
//! (`nat::closing`, `may_take_over`, `syn_reopens`), the SNAT port range
//! and its allocator (`nat::Lb4Config`, one owner of ports for both
//! families: the kernel's `ip_local_port_range` is one for IPv4 and IPv6)
//! and the counters' numbering (`nat::Nat4Counter`, counted in
//! `NAT6_STATS`) are IPv4's. Only the addresses are wider.
use crate::{
    nat::{NAT4_FORWARD, NAT4_REPLY},
    services6::Ip6Words,
};

/// Key of `NAT6`: a packet's tuple as it arrives, and which half of a
/// connection it is (`nat::NAT4_FORWARD` / `NAT4_REPLY`). Addresses as
/// `services6::ip6_words`, ports as in the packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Nat6Key {
    pub src: Ip6Words,
    pub dst: Ip6Words,
    pub src_port_be: u16,
    pub dst_port_be: u16,
    /// IANA number: 6 TCP, 17 UDP.
    pub protocol: u8,
    pub direction: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<Nat6Key>() == 40);

/// Value of `NAT6`: the tuple the packet leaves with, where it goes, and
/// when the half was last used.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Nat6Entry {
    pub src: Ip6Words,
    pub dst: Ip6Words,
    /// Forward entry of a backend on another node: that node's IPv6
    /// address (the next hop). `::`: a local backend, or a reply (routed
    /// to the client by the node's FIB).
    pub next_hop: Ip6Words,
    pub src_port_be: u16,
    pub dst_port_be: u16,
    /// `nat::NAT4_*` bits.
    pub flags: u32,
    /// CLOCK_MONOTONIC (`bpf_ktime_get_coarse_ns`) of its last packet,
    /// refreshed at most about once a second.
    pub last_seen_ns: u64,
}
const _: () = assert!(core::mem::size_of::<Nat6Entry>() == 64);

impl Nat6Key {
    /// The key of the other half of the connection `entry` translates
    /// (`Nat4Key::twin`).
    pub const fn twin(&self, entry: &Nat6Entry) -> Nat6Key {
        Nat6Key {
            src: entry.dst,
            dst: entry.src,
            src_port_be: entry.dst_port_be,
            dst_port_be: entry.src_port_be,
            protocol: self.protocol,
            direction: if self.direction == NAT4_FORWARD { NAT4_REPLY } else { NAT4_FORWARD },
            _pad: [0; 2],
        }
    }

    /// Is `twin` (found under `self.twin(..)`) this connection's other
    /// half (`Nat4Key::pairs_with`)?
    pub fn pairs_with(&self, twin: &Nat6Entry) -> bool {
        twin.src == self.dst
            && twin.dst == self.src
            && twin.src_port_be == self.dst_port_be
            && twin.dst_port_be == self.src_port_be
    }
}

/// Key data of `LB6_SOURCE_RANGES`, an LPM trie (`nat::SourceRangeKey`'s
/// IPv6 twin): an IPv6 frontend (a LoadBalancer ingress IP, port and
/// protocol), always matched whole (`SOURCE_RANGE6_FRONTEND_BITS`), then
/// a client address matched on the range's prefix. Written by the agent
/// for each IPv6 range of each ingress IP frontend with
/// `SERVICE_SOURCE_RANGES`. Value: unused (1).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct SourceRangeKey6 {
    pub vip: Ip6Words,
    pub port_be: u16,
    pub protocol: u8,
    pub _pad: u8,
    /// The range's address (an entry) or the client's (a lookup).
    pub src: Ip6Words,
}
const _: () = assert!(core::mem::size_of::<SourceRangeKey6>() == 36);

/// Bits of `SourceRangeKey6` before the client address: always matched.
pub const SOURCE_RANGE6_FRONTEND_BITS: u32 = 160;
const _: () = assert!(SOURCE_RANGE6_FRONTEND_BITS as usize == core::mem::offset_of!(SourceRangeKey6, src) * 8);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: `#[repr(C)]`, fixed size, explicit padding, no pointers.
    unsafe impl aya::Pod for Nat6Key {}
    unsafe impl aya::Pod for Nat6Entry {}
    unsafe impl aya::Pod for SourceRangeKey6 {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_halfs_twin_is_its_tuple_reversed_and_pairs_back() {
        let client = [1, 2, 3, 4];
        let node = [5, 6, 7, 8];
        let backend = [9, 10, 11, 12];
        let fwd_key = Nat6Key {
            src: client,
            dst: node,
            src_port_be: 40000u16.to_be(),
            dst_port_be: 30080u16.to_be(),
            protocol: 6,
            direction: NAT4_FORWARD,
            _pad: [0; 2],
        };
        let fwd = Nat6Entry {
            src: node,
            dst: backend,
            src_port_be: 61000u16.to_be(),
            dst_port_be: 7777u16.to_be(),
            ..Default::default()
        };
        let reply_key = fwd_key.twin(&fwd);
        assert_eq!((reply_key.src, reply_key.dst, reply_key.direction), (backend, node, NAT4_REPLY));
        assert_eq!((u16::from_be(reply_key.src_port_be), u16::from_be(reply_key.dst_port_be)), (7777, 61000));
        let reply = Nat6Entry {
            src: node,
            dst: client,
            src_port_be: 30080u16.to_be(),
            dst_port_be: 40000u16.to_be(),
            ..Default::default()
        };
        assert_eq!(reply_key.twin(&reply), fwd_key, "and back");
        assert!(fwd_key.pairs_with(&reply));
        // Another client's reply half under the same key is not its twin.
        let other = Nat6Entry { dst: [7, 7, 7, 7], ..reply };
        assert!(!fwd_key.pairs_with(&other));
    }
}
