//! Which address to hand out next (pure), for either family.
//!
//! Reserved in an IPv4 pod CIDR: the network address, the first host
//! address (kept for the node's own use, e.g. a health endpoint) and the
//! broadcast address. In an IPv6 one: the subnet-router anycast address
//! (all host bits zero, RFC 4291 2.6.1) and `::1`, the node's as in IPv4;
//! IPv6 has no broadcast, and pods get only the first `IPV6_HOST_NUMBERS`
//! host numbers (up to `::ffff`): more than a node ever runs, round-robin
//! still spaces reuse 65,534 allocations apart, and every such address has
//! a place in a NAT64 pool of a /16 (`sluice_common::nat64`). Pods route
//! through a link-local gateway (169.254.1.1, fe80::1), so no pod-CIDR
//! address is spent on one. Allocation is round-robin from the last address
//! handed out, so a just-released address is not reused at once (a
//! crash-looping pod never races its own ghost).
use std::{
    collections::BTreeSet,
    fmt::{Debug, Display},
    hash::Hash,
    net::{Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use ipnetwork::{Ipv4Network, Ipv6Network};

/// A pod CIDR of one family: `Ipv4Network` or `Ipv6Network`. Addresses are
/// numbered as `u128` so the allocator is written once.
pub trait PodCidr: Copy + Eq + Debug + Display + Send + Sync + 'static {
    type Addr: Copy + Ord + Hash + Debug + Display + FromStr + Send + Sync + 'static;
    /// `4` or `6`, for messages and directory names.
    const FAMILY: u8;
    /// The first and last address pods may get, as numbers.
    fn usable_range(self) -> (u128, u128);
    fn number(addr: Self::Addr) -> u128;
    fn addr(number: u128) -> Self::Addr;
}

impl PodCidr for Ipv4Network {
    type Addr = Ipv4Addr;
    const FAMILY: u8 = 4;
    fn usable_range(self) -> (u128, u128) {
        let net = u32::from(self.network()) as u128;
        let bcast = u32::from(self.broadcast()) as u128;
        (net + 2, bcast.saturating_sub(1))
    }
    fn number(addr: Ipv4Addr) -> u128 {
        u32::from(addr) as u128
    }
    fn addr(number: u128) -> Ipv4Addr {
        Ipv4Addr::from(number as u32)
    }
}

/// How many host numbers of an IPv6 pod CIDR (from its network address)
/// pods may be given: offsets 2 to `0xffff`.
pub const IPV6_HOST_NUMBERS: u128 = 1 << 16;

impl PodCidr for Ipv6Network {
    type Addr = Ipv6Addr;
    const FAMILY: u8 = 6;
    fn usable_range(self) -> (u128, u128) {
        let net = u128::from(self.network());
        let host_bits = 128 - self.prefix() as u32;
        let last = if host_bits == 128 { u128::MAX } else { net | ((1u128 << host_bits) - 1) };
        match net.checked_add(2) {
            Some(first) => (first, last.min(net.saturating_add(IPV6_HOST_NUMBERS - 1))),
            // The last /127 or /128 of the space: no address for a pod.
            None => (1, 0),
        }
    }
    fn number(addr: Ipv6Addr) -> u128 {
        u128::from(addr)
    }
    fn addr(number: u128) -> Ipv6Addr {
        Ipv6Addr::from(number)
    }
}

/// The addresses pods may get, in order (IPv4; see `PodCidr::usable_range`).
pub fn usable_range(cidr: Ipv4Network) -> (u32, u32) {
    let (first, last) = cidr.usable_range();
    (first as u32, last as u32)
}

/// How many addresses pods may get (saturating: an IPv6 /64 holds more
/// than any count needs).
pub fn capacity<C: PodCidr>(cidr: C) -> u128 {
    let (first, last) = cidr.usable_range();
    if last >= first {
        (last - first).saturating_add(1)
    } else {
        0
    }
}

/// The next free address after `last` (wrapping), or `None` if all are
/// taken. Walks at most one candidate more than the range has addresses
/// in use: a free one is among them, or the range is full.
pub fn next_free<C: PodCidr>(cidr: C, in_use: &BTreeSet<C::Addr>, last: Option<C::Addr>) -> Option<C::Addr> {
    let (first, end) = cidr.usable_range();
    if end < first {
        return None;
    }
    let size = (end - first).saturating_add(1);
    let start = match last.map(C::number) {
        Some(l) if (first..=end).contains(&l) => (l - first).wrapping_add(1) % size.max(1),
        _ => 0,
    };
    let taken = in_use.range(C::addr(first)..=C::addr(end)).count() as u128;
    let tries = taken.saturating_add(1).min(size);
    (0..tries).map(|i| C::addr(first + (start.wrapping_add(i)) % size)).find(|ip| !in_use.contains(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }
    fn cidr6(s: &str) -> Ipv6Network {
        s.parse().unwrap()
    }
    fn ip6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    #[test]
    fn reserved_addresses_never_handed_out4() {
        let c = cidr("10.0.0.0/29"); // .0 network, .1 node, .7 broadcast
        assert_eq!(capacity(c), 5);
        let mut used = BTreeSet::new();
        let mut last = None;
        while let Some(a) = next_free(c, &used, last) {
            assert!(a != ip("10.0.0.0") && a != ip("10.0.0.1") && a != ip("10.0.0.7"), "{a}");
            used.insert(a);
            last = Some(a);
        }
        assert_eq!(used.len(), 5);
        assert_eq!(next_free(c, &used, last), None, "exhausted");
    }

    #[test]
    fn reserved_addresses_never_handed_out6() {
        // ::0 subnet-router anycast, ::1 the node's; no broadcast in IPv6.
        let c = cidr6("fd00:10::/125");
        assert_eq!(capacity(c), 6);
        let mut used = BTreeSet::new();
        let mut last = None;
        while let Some(a) = next_free(c, &used, last) {
            assert!(a != ip6("fd00:10::") && a != ip6("fd00:10::1"), "{a}");
            used.insert(a);
            last = Some(a);
        }
        assert_eq!(used.len(), 6);
        assert!(used.contains(&ip6("fd00:10::7")), "the last address is a pod's: {used:?}");
        assert_eq!(next_free(c, &used, last), None, "exhausted");
    }

    #[test]
    fn round_robin_after_release4() {
        let c = cidr("10.0.0.0/29");
        let mut used: BTreeSet<_> = [ip("10.0.0.2"), ip("10.0.0.3")].into();
        // .3 was last; .2 released: next is .4, not the just-released .2.
        used.remove(&ip("10.0.0.2"));
        assert_eq!(next_free(c, &used, Some(ip("10.0.0.3"))), Some(ip("10.0.0.4")));
        // Wraps at the end of the range.
        assert_eq!(next_free(c, &BTreeSet::new(), Some(ip("10.0.0.6"))), Some(ip("10.0.0.2")));
        // A `last` outside the range starts from the beginning.
        assert_eq!(next_free(c, &BTreeSet::new(), Some(ip("192.168.0.1"))), Some(ip("10.0.0.2")));
    }

    #[test]
    fn ipv6_pods_get_the_first_65536_host_numbers_only() {
        let c = cidr6("fd00:10::/64");
        assert_eq!(c.usable_range(), (u128::from(ip6("fd00:10::2")), u128::from(ip6("fd00:10::ffff"))));
        assert_eq!(capacity(c), 65_534);
        // After the last one, round-robin starts over at ::2.
        assert_eq!(next_free(c, &BTreeSet::new(), Some(ip6("fd00:10::ffff"))), Some(ip6("fd00:10::2")));
        // A smaller CIDR keeps its own end.
        assert_eq!(cidr6("fd00:10::/120").usable_range().1, u128::from(ip6("fd00:10::ff")));
    }

    #[test]
    fn round_robin_after_release6() {
        let c = cidr6("fd00:10::/64");
        let used: BTreeSet<_> = [ip6("fd00:10::3")].into();
        assert_eq!(next_free(c, &used, Some(ip6("fd00:10::3"))), Some(ip6("fd00:10::4")));
        // A last address past the range (an older agent's) starts over.
        assert_eq!(next_free(c, &BTreeSet::new(), Some(ip6("fd00:10::ffff:ffff:ffff:ffff"))), Some(ip6("fd00:10::2")));
        // Neither a /0 nor the last /128 overflows.
        assert_eq!(capacity(cidr6("::/0")), 65_534);
        assert_eq!(capacity(cidr6("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128")), 0);
    }

    #[test]
    fn next_free_walks_only_past_the_used_ones() {
        // A /64 with three taken from the start: found at the fourth try.
        let c = cidr6("fd00:10::/64");
        let used: BTreeSet<_> = [ip6("fd00:10::2"), ip6("fd00:10::3"), ip6("fd00:10::4")].into();
        assert_eq!(next_free(c, &used, None), Some(ip6("fd00:10::5")));
    }

    #[test]
    fn tiny_cidr() {
        assert_eq!(capacity(cidr("10.0.0.0/30")), 1);
        assert_eq!(next_free(cidr("10.0.0.0/30"), &BTreeSet::new(), None), Some(ip("10.0.0.2")));
        assert_eq!(capacity(cidr6("fd00::/127")), 0);
        assert_eq!(next_free(cidr6("fd00::/127"), &BTreeSet::new(), None), None);
        assert_eq!(capacity(cidr6("fd00::/126")), 2);
    }
}
