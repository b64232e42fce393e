//! The IPv6 twins of the socket load balancer's maps (`services.rs`):
//! `SERVICES6`, `BACKENDS6`, `BACKEND_MEMBERS6`, `SOCK_REVERSE6` and
//! `AFFINITY6`, read by the IPv6 hooks (`sock_connect6`, `sock_sendmsg6`,
//! `sock_recvmsg6`, `sock_getpeername6`) for native IPv6 addresses. A
//! v4-mapped address (`::ffff:10.96.0.10`) is the IPv4 frontend it maps
//! and stays in the IPv4 maps.
//!
//! The same backend-set scheme and the same values (`ServiceValue`,
//! `BackendSlot`) as IPv4; only keys and backends are wider. An address is
//! kept as the four words of `bpf_sock_addr::user_ip6`, each in network
//! order (`ip6_words`), so a program compares and copies it without
//! swapping bytes.
use crate::services::{ServiceValue, SCOPE_ADDRESS, SCOPE_HOST_PORT, SCOPE_NODE_PORT};

/// An IPv6 address as the four words of `user_ip6` (network order each).
pub type Ip6Words = [u32; 4];

/// `ip`'s 16 bytes (`Ipv6Addr::octets`) as `user_ip6` holds them.
pub const fn ip6_words(octets: [u8; 16]) -> Ip6Words {
    let o = octets;
    [
        u32::from_ne_bytes([o[0], o[1], o[2], o[3]]),
        u32::from_ne_bytes([o[4], o[5], o[6], o[7]]),
        u32::from_ne_bytes([o[8], o[9], o[10], o[11]]),
        u32::from_ne_bytes([o[12], o[13], o[14], o[15]]),
    ]
}

/// The bytes of `ip6_words` back (`Ipv6Addr::from`).
pub const fn ip6_octets(w: Ip6Words) -> [u8; 16] {
    let (a, b, c, d) = (w[0].to_ne_bytes(), w[1].to_ne_bytes(), w[2].to_ne_bytes(), w[3].to_ne_bytes());
    [a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1], d[2], d[3]]
}

/// Key of `SERVICES6`: `ServiceKey` with an IPv6 address. Scopes as in
/// IPv4 (`SCOPE_ADDRESS`; `SCOPE_NODE_PORT` with `vip` `::`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ServiceKey6 {
    pub vip: Ip6Words,
    pub port_be: u16,
    /// IANA number: 6 TCP, 17 UDP.
    pub protocol: u8,
    pub scope: u8,
}
const _: () = assert!(core::mem::size_of::<ServiceKey6>() == 20);

impl ServiceKey6 {
    /// A cluster IP, external IP or LoadBalancer ingress IP.
    pub const fn address(vip: Ip6Words, port_be: u16, protocol: u8) -> Self {
        ServiceKey6 { vip, port_be, protocol, scope: SCOPE_ADDRESS }
    }

    /// The NodePort entry of `port_be`/`protocol` on every node address.
    pub const fn node_port(port_be: u16, protocol: u8) -> Self {
        ServiceKey6 { vip: [0; 4], port_be, protocol, scope: SCOPE_NODE_PORT }
    }

    /// The `SERVICES6` key of a frontend as `SOCK_REVERSE6` remembers it
    /// (`ServiceKey::entry_key`): a NodePort's entry has no address.
    pub const fn entry_key(self) -> Self {
        if self.scope == SCOPE_NODE_PORT || self.scope == SCOPE_HOST_PORT {
            ServiceKey6 { vip: [0; 4], ..self }
        } else {
            self
        }
    }
}

/// A backend of an IPv6 frontend: value of `BACKENDS6` (key
/// `services::BackendSlot`), value of `AFFINITY6`, part of the key of
/// `BACKEND_MEMBERS6`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Backend6 {
    pub ip: Ip6Words,
    pub port_be: u16,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<Backend6>() == 20);

/// Key of `BACKEND_MEMBERS6` (value: slot).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct BackendMember6 {
    pub set: u32,
    pub backend: Backend6,
}
const _: () = assert!(core::mem::size_of::<BackendMember6>() == 24);

/// Key of `SOCK_REVERSE6`: a socket (its cookie) and the backend it was
/// sent to; the value is the `ServiceKey6` it named.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ReverseKey6 {
    pub cookie: u64,
    pub backend: Backend6,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<ReverseKey6>() == 32);

/// Key of `AFFINITY6`: a client's network namespace and an IPv6 frontend.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AffinityKey6 {
    pub netns_cookie: u64,
    pub service: ServiceKey6,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<AffinityKey6>() == 32);

/// Value of `AFFINITY6`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AffinityValue6 {
    pub backend: Backend6,
    pub _pad: u32,
    pub last_used_ns: u64,
}
const _: () = assert!(core::mem::size_of::<AffinityValue6>() == 32);

/// A native IPv6 address a Service may have: not v4-mapped (that is the
/// IPv4 frontend), not `::`.
pub const fn native_ipv6(ip: Ip6Words) -> bool {
    crate::services::v4_mapped_be(ip).is_none() && !(ip[0] == 0 && ip[1] == 0 && ip[2] == 0 && ip[3] == 0)
}

/// Is `ip` the IPv6 loopback `::1`? From the node's own network namespace
/// it names the node, as `127.0.0.1` does (`services::is_loopback_be`):
/// a NodePort answers there (`services::nodeport_candidate`).
pub const fn is_loopback6(ip: Ip6Words) -> bool {
    ip[0] == 0 && ip[1] == 0 && ip[2] == 0 && ip[3] == u32::from_ne_bytes([0, 0, 0, 1])
}

/// `SERVICES6`'s value is IPv4's: the same backend sets, counts and flags.
pub type ServiceValue6 = ServiceValue;

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: `#[repr(C)]`, fixed size, explicit padding, no pointers.
    unsafe impl aya::Pod for ServiceKey6 {}
    unsafe impl aya::Pod for Backend6 {}
    unsafe impl aya::Pod for BackendMember6 {}
    unsafe impl aya::Pod for ReverseKey6 {}
    unsafe impl aya::Pod for AffinityKey6 {}
    unsafe impl aya::Pod for AffinityValue6 {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_hold_the_bytes_in_network_order_and_come_back() {
        let octets = [0xfd, 0, 0, 0x10, 0, 0x96, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0a];
        let w = ip6_words(octets);
        assert_eq!(w[0].to_ne_bytes(), [0xfd, 0, 0, 0x10]);
        assert_eq!(w[3].to_ne_bytes(), [0, 0, 0, 0x0a]);
        assert_eq!(ip6_octets(w), octets);
    }

    #[test]
    fn v4_mapped_and_unspecified_are_not_native_ipv6() {
        let mapped = ip6_words([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 96, 0, 10]);
        assert!(!native_ipv6(mapped), "::ffff:10.96.0.10 is the IPv4 frontend");
        assert!(!native_ipv6([0; 4]));
        assert!(native_ipv6(ip6_words([0xfd, 0, 0, 0x10, 0, 0x96, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0a])));
        // v4-compatible (deprecated) ::10.96.0.10 is an IPv6 address.
        assert!(native_ipv6(ip6_words([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10, 96, 0, 10])));
    }

    #[test]
    fn only_colon_colon_one_is_ipv6_loopback() {
        let w = |s: &str| ip6_words(s.parse::<core::net::Ipv6Addr>().unwrap().octets());
        assert!(is_loopback6(w("::1")));
        for other in ["::", "::2", "1::1", "::ffff:127.0.0.1", "fd00:30::1"] {
            assert!(!is_loopback6(w(other)), "{other}");
        }
    }
}
