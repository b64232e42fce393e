//! Node-local NAT64 (issue 28, `--nat64`): an IPv6-only pod reaches IPv4
//! destinations through the well-known prefix `64:ff9b::/96` (RFC 6052;
//! DNS64 is the cluster DNS's job).
//!
//! The translation is stateless in eBPF (RFC 7915's header mapping) and the
//! state is the kernel's: `from_pod` turns a pod's IPv6 packet for
//! `64:ff9b::a.b.c.d` into an IPv4 one from the pod's *pool address* (a
//! node-local IPv4 address derived from the pod's IPv6, `pool_address_be`)
//! to `a.b.c.d`, and hands it to the stack on the node's NAT64 device;
//! the stack routes it and masquerades the pool to the node's IPv4
//! (conntrack owns the ports). The answer, de-NATed by conntrack to the
//! pool address, is routed into the NAT64 device, whose egress program
//! (`to_nat64`) turns it back into IPv6 from `64:ff9b::a.b.c.d` to the pod
//! (`pod_address`) and delivers it.
//!
//! The pool (`--nat64-pool`, by default `198.18.0.0/16`, RFC 2544's
//! benchmarking range: never routed on the Internet) maps pod CIDR offsets
//! one to one: the pod `cidr6 + n` is the pool's `pool + n`. A pod whose
//! offset is past the pool's size has no pool address: its packets are
//! dropped and counted (`nat64_no_pool_address`).
//!
//! Pure functions here, used by the programs and unit-tested on the host.

/// RFC 6052's well-known prefix, `64:ff9b::/96`: its first 12 bytes.
pub const WELL_KNOWN_PREFIX: [u8; 12] = [0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0];

/// The default pool (`--nat64-pool`): `198.18.0.0/16`.
pub const DEFAULT_POOL: ([u8; 4], u32) = ([198, 18, 0, 0], 16);

/// Bytes an IPv6 header has over an IPv4 one without options: an IPv6
/// packet translated to IPv4 is 20 bytes shorter, an answer 20 longer.
pub const HEADER_GROWTH: u32 = 20;

/// Is `dst` in `64:ff9b::/96`?
#[inline(always)]
pub fn is_nat64_address(dst: &[u8; 16]) -> bool {
    let mut i = 0;
    let mut same = true;
    while i < 12 {
        same &= dst[i] == WELL_KNOWN_PREFIX[i];
        i += 1;
    }
    same
}

/// The IPv4 address embedded in a `64:ff9b::/96` address, as in the
/// packet (network byte order in a `u32`'s bytes).
#[inline(always)]
pub fn embedded_ipv4_be(addr: &[u8; 16]) -> u32 {
    u32::from_ne_bytes([addr[12], addr[13], addr[14], addr[15]])
}

/// `64:ff9b::a.b.c.d` for `a.b.c.d` (network byte order in a `u32`'s bytes).
#[inline(always)]
pub fn nat64_address(ipv4_be: u32) -> [u8; 16] {
    let b = ipv4_be.to_ne_bytes();
    let p = WELL_KNOWN_PREFIX;
    [p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], p[9], p[10], p[11], b[0], b[1], b[2], b[3]]
}

/// The checksum of an IPv4 header (20 bytes, no options) whose checksum
/// field is zero: the value to write there (RFC 1071).
#[inline(always)]
pub fn ipv4_header_checksum(h: &[u8; 20]) -> u16 {
    let mut sum: u32 = 0;
    let mut i = 0;
    while i < 20 {
        sum += u16::from_be_bytes([h[i], h[i + 1]]) as u32;
        i += 2;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// This node's NAT64, index 0 of `NAT64_CONFIG`. Written by the agent at
/// start (`--nat64`; all zero, "off", otherwise); read by `from_pod`'s IPv6
/// path and `to_nat64`. Off, a pod's packet for `64:ff9b::/96` goes to the
/// node's stack as any other destination.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Nat64Config {
    /// The NAT64 device (`sluice_nat64`): the forward path enters the
    /// stack on it; 0: NAT64 off.
    pub device_ifindex: u32,
    /// Its MAC: a frame entering the stack on it must be addressed to it
    /// (else the stack takes it for another host's and drops it).
    pub device_mac: [u8; 6],
    pub _pad: [u8; 2],
    /// The pool's network (network byte order in a `u32`'s bytes) and
    /// prefix length (1..=32).
    pub pool_be: u32,
    pub pool_prefix_len: u32,
    /// This node's IPv6 pod CIDR (network) and prefix length: pool offsets
    /// are counted from it.
    pub pod_cidr6: [u8; 16],
    pub pod_cidr6_prefix_len: u32,
}
const _: () = assert!(core::mem::size_of::<Nat64Config>() == 40);

#[cfg(feature = "user")]
// SAFETY: plain `repr(C)` data with the padding spelled out.
unsafe impl aya::Pod for Nat64Config {}

impl Nat64Config {
    /// Is NAT64 on?
    #[inline(always)]
    pub const fn enabled(&self) -> bool {
        self.device_ifindex != 0
    }

    /// Addresses in the pool (0 for a prefix length outside 1..=32).
    #[inline(always)]
    pub const fn pool_size(&self) -> u32 {
        if self.pool_prefix_len == 0 || self.pool_prefix_len > 32 {
            return 0;
        }
        // 1..=32 bits: a /1 is 2^31 addresses.
        1u32 << (32 - self.pool_prefix_len)
    }

    /// The pool address of the pod at `pod` (network byte order in a
    /// `u32`'s bytes): the pool's network plus the pod's offset in the pod
    /// CIDR. `None`: not in the pod CIDR's first 2^32 addresses, or past
    /// the pool's size.
    #[inline(always)]
    pub fn pool_address_be(&self, pod: &[u8; 16]) -> Option<u32> {
        let mut i = 0;
        let mut same = true;
        while i < 12 {
            same &= pod[i] == self.pod_cidr6[i];
            i += 1;
        }
        if !same {
            return None;
        }
        let low = u32::from_be_bytes([pod[12], pod[13], pod[14], pod[15]]);
        let c = &self.pod_cidr6;
        let net_low = u32::from_be_bytes([c[12], c[13], c[14], c[15]]);
        let offset = low.wrapping_sub(net_low);
        if offset >= self.pool_size() {
            return None;
        }
        Some(u32::from_be(self.pool_be).wrapping_add(offset).to_be())
    }

    /// The pod whose pool address `pool_ip_be` is (`pool_address_be`
    /// reversed). `None`: not in the pool.
    #[inline(always)]
    pub fn pod_address(&self, pool_ip_be: u32) -> Option<[u8; 16]> {
        let offset = u32::from_be(pool_ip_be).wrapping_sub(u32::from_be(self.pool_be));
        if offset >= self.pool_size() {
            return None;
        }
        let c = &self.pod_cidr6;
        let low = u32::from_be_bytes([c[12], c[13], c[14], c[15]]).wrapping_add(offset).to_be_bytes();
        Some([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8], c[9], c[10], c[11], low[0], low[1], low[2], low[3]])
    }
}

/// How many of a pod CIDR's offsets (from its network address) a pool of
/// `pool_prefix_len` covers: the pods IPAM may number past it get no pool
/// address. For the agent's start-up message and `status`.
pub const fn pool_covers(pool_prefix_len: u32) -> u64 {
    if pool_prefix_len == 0 || pool_prefix_len > 32 {
        0
    } else {
        1u64 << (32 - pool_prefix_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::{Ipv4Addr, Ipv6Addr};

    fn v6(s: &str) -> [u8; 16] {
        s.parse::<Ipv6Addr>().unwrap().octets()
    }
    fn be(s: &str) -> u32 {
        u32::from_ne_bytes(s.parse::<Ipv4Addr>().unwrap().octets())
    }
    fn config(pool: &str, pool_len: u32, cidr6: &str, cidr6_len: u32) -> Nat64Config {
        Nat64Config {
            device_ifindex: 7,
            device_mac: [2, 0, 0, 0, 0, 1],
            _pad: [0; 2],
            pool_be: be(pool),
            pool_prefix_len: pool_len,
            pod_cidr6: v6(cidr6),
            pod_cidr6_prefix_len: cidr6_len,
        }
    }

    #[test]
    fn the_well_known_prefix_and_its_embedded_address() {
        assert!(is_nat64_address(&v6("64:ff9b::198.51.100.7")));
        assert!(is_nat64_address(&v6("64:ff9b::")));
        for not in ["64:ff9b:1::198.51.100.7", "64:ff9a::1", "::ffff:198.51.100.7", "fd00::c633:6407"] {
            assert!(!is_nat64_address(&v6(not)), "{not}");
        }
        assert_eq!(embedded_ipv4_be(&v6("64:ff9b::198.51.100.7")), be("198.51.100.7"));
        assert_eq!(nat64_address(be("198.51.100.7")), v6("64:ff9b::c633:6407"));
        assert_eq!(nat64_address(embedded_ipv4_be(&v6("64:ff9b::1.2.3.4"))), v6("64:ff9b::1.2.3.4"));
    }

    #[test]
    fn pods_map_to_pool_addresses_by_their_offset_and_back() {
        let c = config("198.18.0.0", 16, "fd00:244:0:1::", 64);
        for (pod, pool) in [
            ("fd00:244:0:1::2", "198.18.0.2"),
            ("fd00:244:0:1::3", "198.18.0.3"),
            ("fd00:244:0:1::105", "198.18.1.5"),
            ("fd00:244:0:1::ffff", "198.18.255.255"),
        ] {
            assert_eq!(c.pool_address_be(&v6(pod)), Some(be(pool)), "{pod}");
            assert_eq!(c.pod_address(be(pool)), Some(v6(pod)), "{pool}");
        }
    }

    #[test]
    fn a_pod_past_the_pool_or_outside_the_cidr_has_no_pool_address() {
        let c = config("198.18.0.0", 16, "fd00:244:0:1::", 64);
        for pod in ["fd00:244:0:1::1:0:0", "fd00:244:0:1::1:0000:0002", "fd00:244:0:1:1::2", "fd00:244:0:2::2"] {
            assert_eq!(c.pool_address_be(&v6(pod)), None, "{pod}");
        }
        for pool in ["198.19.0.0", "198.17.255.255", "10.0.0.1"] {
            assert_eq!(c.pod_address(be(pool)), None, "{pool}");
        }
    }

    #[test]
    fn a_pod_cidr_longer_than_96_bits_counts_from_its_network() {
        // fd00::1:0/112: its network's last word is not zero.
        let c = config("198.18.4.0", 24, "fd00::1:0", 112);
        assert_eq!(c.pool_address_be(&v6("fd00::1:7")), Some(be("198.18.4.7")));
        assert_eq!(c.pod_address(be("198.18.4.7")), Some(v6("fd00::1:7")));
        assert_eq!(c.pool_address_be(&v6("fd00::1:100")), None, "past a /24 pool");
        assert_eq!(c.pool_address_be(&v6("fd00::0:7")), None, "before the network");
    }

    #[test]
    fn an_ipv4_header_checksum_is_rfc_1071s() {
        // RFC 1071's worked header (Wikipedia's example): 0xb861.
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0, 0, 0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8, 0x00,
            0xc7,
        ];
        assert_eq!(ipv4_header_checksum(&h), 0xb861);
        [h[10], h[11]] = 0xb861u16.to_be_bytes();
        // A header with its checksum sums to all ones.
        let mut sum: u32 = h.chunks(2).map(|w| u16::from_be_bytes([w[0], w[1]]) as u32).sum();
        sum = (sum & 0xffff) + (sum >> 16);
        assert_eq!(sum, 0xffff);
    }

    #[test]
    fn every_pool_address_round_trips() {
        let c = config("198.18.0.0", 20, "fd00:244:0:9::", 64);
        assert_eq!(c.pool_size(), 4096);
        for offset in 0..c.pool_size() {
            let pool = (u32::from_be(be("198.18.0.0")) + offset).to_be();
            let pod = c.pod_address(pool).unwrap();
            assert_eq!(c.pool_address_be(&pod), Some(pool), "offset {offset}");
        }
        assert_eq!(pool_covers(16), 65536);
        assert_eq!(pool_covers(32), 1);
        assert_eq!(pool_covers(0), 0);
        assert_eq!(config("0.0.0.0", 0, "::", 64).pool_size(), 0, "no pool: nothing maps");
    }
}
