//! Which address to hand out next (pure).
//!
//! Reserved: the network address, the first host address (kept for the
//! node's own use, e.g. a health endpoint) and the broadcast address. Pods
//! route through the link-local gateway 169.254.1.1, so no pod-CIDR address
//! is spent on a gateway. Allocation is round-robin from the last address
//! handed out, so a just-released address is not reused at once (a
//! crash-looping pod never races its own ghost).
use std::{collections::BTreeSet, net::Ipv4Addr};

use ipnetwork::Ipv4Network;

/// The addresses pods may get, in order.
pub fn usable_range(cidr: Ipv4Network) -> (u32, u32) {
    let net = u32::from(cidr.network());
    let bcast = u32::from(cidr.broadcast());
    (net + 2, bcast - 1)
}

pub fn capacity(cidr: Ipv4Network) -> u32 {
    let (first, last) = usable_range(cidr);
    if last >= first {
        last - first + 1
    } else {
        0
    }
}

/// The next free address after `last` (wrapping), or `None` if all are taken.
pub fn next_free(cidr: Ipv4Network, in_use: &BTreeSet<Ipv4Addr>, last: Option<Ipv4Addr>) -> Option<Ipv4Addr> {
    let (first, end) = usable_range(cidr);
    if end < first {
        return None;
    }
    let size = end - first + 1;
    let start = match last.map(u32::from) {
        Some(l) if (first..=end).contains(&l) => l - first + 1,
        _ => 0,
    };
    (0..size).map(|i| Ipv4Addr::from(first + (start + i) % size)).find(|ip| !in_use.contains(ip))
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

    #[test]
    fn reserved_addresses_never_handed_out() {
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
    fn round_robin_after_release() {
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
    fn tiny_cidr() {
        assert_eq!(capacity(cidr("10.0.0.0/30")), 1);
        assert_eq!(next_free(cidr("10.0.0.0/30"), &BTreeSet::new(), None), Some(ip("10.0.0.2")));
    }
}
