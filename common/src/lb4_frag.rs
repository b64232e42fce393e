//! IPv4 fragments of a datagram translated at the uplink (issue 27;
//! `ebpf/src/lb4_frag.rs`): every fragment goes where its first went,
//! translated as it was.
//!
//! Only the first fragment (offset 0, more-fragments set) carries the
//! TCP/UDP ports, so only it can be looked up in `NAT4` (or balanced as a
//! new connection). When it is translated, what was done to it is
//! remembered in `LB4_FRAGS`, keyed by what identifies its datagram as it
//! arrived (source, destination, IP id, protocol: RFC 791's reassembly
//! key): the addresses it left with and where it went (a local backend,
//! another node natively or through VXLAN, or, an answer, back out of the
//! uplink). A later fragment (offset != 0) found there gets the same
//! addresses (the IPv4 header and its checksum only: the L4 header and
//! checksum are in the first fragment, whose incremental update covers
//! the whole datagram) and goes the same way; the receiver reassembles.
//!
//! A later fragment with no entry — arrived before its first, or of a
//! datagram that is not a Service's (a host process's, a pod's to the
//! world) — goes on to the stack, counted (`Nat4Counter::FragmentPassed`):
//! dropping it would break fragmented traffic of the node itself, and a
//! Service's fragment that outran its first is lost either way (the
//! stack's reassembly waits for a first fragment that went elsewhere).
//! Cilium (`bpf/lib/ipv4.h`) drops it instead; it has no other traffic
//! to spare on that path. Entries are not removed after the last
//! fragment (fragments may be duplicated or reordered): an LRU map, whose
//! oldest entries make room; an IP id is reused by a sender only after
//! 65,536 datagrams to the same destination.

/// Key of `LB4_FRAGS`: a datagram's identity as its fragments arrive.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Frag4Key {
    pub src_be: u32,
    pub dst_be: u32,
    /// The IPv4 header's identification field.
    pub id_be: u16,
    /// IANA number: 6 TCP, 17 UDP.
    pub protocol: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<Frag4Key>() == 12);

/// `Frag4Entry::flags`: the first fragment went into a backend on this
/// node.
pub const FRAG4_LOCAL: u32 = 1;
/// `Frag4Entry::flags`: the first fragment went to another node
/// (`next_hop_be`), natively.
pub const FRAG4_REMOTE: u32 = 2;
/// `Frag4Entry::flags`: with `FRAG4_REMOTE`, through the VXLAN device.
pub const FRAG4_VIA_TUNNEL: u32 = 4;
/// `Frag4Entry::flags`: an answer, sent back out of the uplink (the FIB
/// picks the next hop).
pub const FRAG4_REPLY: u32 = 8;

/// Value of `LB4_FRAGS`: the addresses the first fragment left with and
/// where it went.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Frag4Entry {
    pub src_be: u32,
    pub dst_be: u32,
    /// `FRAG4_REMOTE`: the backend's node.
    pub next_hop_be: u32,
    /// `FRAG4_*`.
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<Frag4Entry>() == 16);

/// The IPv4 header's more-fragments flag and offset, host order.
const IP_MF: u16 = 0x2000;
const IP_OFFSET: u16 = 0x1fff;

/// What a packet is, by its IPv4 `frag_off` field (host order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fragment {
    /// A whole datagram.
    Whole,
    /// Offset 0, more to come: the fragment with the L4 header.
    First,
    /// Offset != 0: no L4 header.
    Later,
}

pub const fn fragment(frag_off: u16) -> Fragment {
    if frag_off & IP_OFFSET != 0 {
        Fragment::Later
    } else if frag_off & IP_MF != 0 {
        Fragment::First
    } else {
        Fragment::Whole
    }
}

#[cfg(feature = "user")]
mod pod_impls {
    // SAFETY: plain `repr(C)` data, explicit padding, no invalid bit
    // patterns.
    unsafe impl aya::Pod for super::Frag4Key {}
    unsafe impl aya::Pod for super::Frag4Entry {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_fragment_has_offset_zero_and_more_to_come() {
        const DF: u16 = 0x4000;
        assert_eq!(fragment(0), Fragment::Whole);
        assert_eq!(fragment(DF), Fragment::Whole, "don't fragment: whole");
        assert_eq!(fragment(IP_MF), Fragment::First);
        assert_eq!(fragment(IP_MF | 185), Fragment::Later, "a middle fragment");
        assert_eq!(fragment(370), Fragment::Later, "the last fragment: no MF");
        assert_eq!(fragment(DF | 1), Fragment::Later);
    }
}
