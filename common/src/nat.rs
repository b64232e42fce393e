//! The uplink's kube-proxy replacement (issue 27): Services reached from
//! outside the cluster, translated per packet by `from_uplink` and undone
//! on the way back (`ebpf/src/lb4`).
//!
//! A connection from the world to a frontend (`nodeIP:nodePort`, an
//! external IP, a LoadBalancer ingress IP) is written into `NAT4` as a
//! pair of entries, each keyed by a tuple as it arrives:
//! - the *forward* entry, under the client's tuple (client → frontend):
//!   the tuple the packet leaves with (client → backend, or, for a backend
//!   on another node, node address:SNAT port → backend) and the node to
//!   send it to;
//! - the *reply* entry, under the backend's answer as it arrives (backend
//!   → client from a local pod, backend → node address:SNAT port from
//!   another node): the tuple the answer leaves with (frontend → client).
//!
//! The reply key of a SNATed connection is what reserves its SNAT port: it
//! is inserted first, with `BPF_NOEXIST`, so two connections can never
//! share a port towards one backend; a taken port is retried, and after
//! `SNAT_PORT_TRIES` a new connection is dropped (`DropReason::
//! Nat4PortExhausted`), never given another connection's replies.
//!
//! `NAT4` is a plain hash, not an LRU: a full table refuses the insert, so
//! a new connection is dropped (counted, `DropReason::Nat4TableFull`) and
//! no live connection is ever evicted to make room. The agent's GC removes
//! idle pairs (`Nat4Key::twin` finds an entry's other half).

/// `Nat4Key::direction`: the client's packets (towards the frontend).
pub const NAT4_FORWARD: u8 = 0;
/// `Nat4Key::direction`: the backend's answers.
pub const NAT4_REPLY: u8 = 1;

/// Key of `NAT4`: a packet's tuple as it arrives, and which half of a
/// connection it is. Addresses and ports as in the packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Nat4Key {
    pub src_be: u32,
    pub dst_be: u32,
    pub src_port_be: u16,
    pub dst_port_be: u16,
    /// IANA number: 6 TCP, 17 UDP.
    pub protocol: u8,
    /// `NAT4_FORWARD` or `NAT4_REPLY`.
    pub direction: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<Nat4Key>() == 16);

/// `Nat4Entry::flags`: the source is rewritten too (a backend on another
/// node: the node's address and a SNAT port).
pub const NAT4_SNAT: u32 = 1;
/// `Nat4Entry::flags`: a packet of this half was seen after the first
/// (on a reply entry: the backend answered; for TCP, established).
pub const NAT4_REPLY_SEEN: u32 = 2;
/// `Nat4Entry::flags`: the backend's node is reached through the VXLAN
/// device (`next_hop_be` is its outer destination).
pub const NAT4_VIA_TUNNEL: u32 = 4;

/// Value of `NAT4`: the tuple the packet leaves with, where it goes, and
/// when the half was last used.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Nat4Entry {
    pub src_be: u32,
    pub dst_be: u32,
    pub src_port_be: u16,
    pub dst_port_be: u16,
    /// Forward entry of a backend on another node: that node's address
    /// (the next hop). 0: a local backend, or a reply (routed to the
    /// client by the node's FIB).
    pub next_hop_be: u32,
    /// `NAT4_*` bits.
    pub flags: u32,
    pub _pad: u32,
    /// CLOCK_MONOTONIC (`bpf_ktime_get_coarse_ns`) of its last packet,
    /// refreshed at most about once a second.
    pub last_seen_ns: u64,
}
const _: () = assert!(core::mem::size_of::<Nat4Entry>() == 32);

impl Nat4Key {
    /// The key of the other half of the connection this entry translates:
    /// what arrives in the other direction is `entry`'s tuple reversed.
    pub const fn twin(&self, entry: &Nat4Entry) -> Nat4Key {
        Nat4Key {
            src_be: entry.dst_be,
            dst_be: entry.src_be,
            src_port_be: entry.dst_port_be,
            dst_port_be: entry.src_port_be,
            protocol: self.protocol,
            direction: if self.direction == NAT4_FORWARD { NAT4_REPLY } else { NAT4_FORWARD },
            _pad: [0; 2],
        }
    }
}

/// Key data of `LB4_SOURCE_RANGES`, an LPM trie: a frontend (a
/// LoadBalancer ingress IP's `SERVICES` key fields) and a client address.
/// An entry's prefix length is `SOURCE_RANGE_FRONTEND_BITS` plus its
/// range's, so a lookup with the full length matches only that
/// frontend's ranges. Written by the agent (from
/// `spec.loadBalancerSourceRanges`), read by `from_uplink` for a frontend
/// with `SERVICE_SOURCE_RANGES`. Value: unused (1).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct SourceRangeKey {
    pub vip_be: u32,
    pub port_be: u16,
    pub protocol: u8,
    pub _pad: u8,
    /// The range's address (an entry) or the client's (a lookup).
    pub src_be: u32,
}
const _: () = assert!(core::mem::size_of::<SourceRangeKey>() == 12);
#[cfg(feature = "user")]
unsafe impl aya::Pod for SourceRangeKey {}

/// Bits of `SourceRangeKey` before the client address: always matched.
pub const SOURCE_RANGE_FRONTEND_BITS: u32 = 64;

/// `Lb4Config::flags`: translate Services at the uplink
/// (`--kube-proxy-replacement=true`). Without it `from_uplink` leaves
/// every packet to the stack (kube-proxy's rules), as before.
pub const LB4_ENABLED: u32 = 1;

/// Value of `LB4_CONFIG` (one entry): the uplink's Service settings,
/// written by the agent at start; read by `from_uplink` and `from_pod`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Lb4Config {
    /// `LB4_*` bits.
    pub flags: u32,
    /// The SNAT ports the datapath allocates (`--snat-port-range`), host
    /// order, inclusive.
    pub snat_port_min: u16,
    pub snat_port_max: u16,
}
const _: () = assert!(core::mem::size_of::<Lb4Config>() == 8);

/// Ports tried for a new SNATed connection before it is dropped.
pub const SNAT_PORT_TRIES: u32 = 8;

/// The default `--snat-port-range`: above the kernel's default ephemeral
/// range (`ip_local_port_range` 32768–60999) and the NodePort range
/// (30000–32767), so a reply to a SNAT port is never a local socket's.
pub const DEFAULT_SNAT_PORT_MIN: u16 = 61000;
pub const DEFAULT_SNAT_PORT_MAX: u16 = 65535;

impl Lb4Config {
    /// Is `port` (host order) one the datapath allocates?
    pub const fn in_snat_range(&self, port: u16) -> bool {
        self.snat_port_min != 0 && port >= self.snat_port_min && port <= self.snat_port_max
    }

    /// The SNAT port for try `attempt` from the random `seed`: spread over
    /// the range, a different port each try (host order).
    pub const fn snat_port(&self, seed: u32, attempt: u32) -> u16 {
        let span = (self.snat_port_max as u32).saturating_sub(self.snat_port_min as u32) + 1;
        let offset = seed.wrapping_add(attempt.wrapping_mul(7919)) % span;
        (self.snat_port_min as u32 + offset) as u16
    }
}

/// Does a packet from outside the cluster to this kind of frontend get
/// translated at the uplink? Not a ClusterIP: it is the cluster's own.
pub const fn reachable_from_outside(kind: crate::services::FrontendKind) -> bool {
    !matches!(kind, crate::services::FrontendKind::ClusterIp)
}

/// What the uplink's Service translation counts (`NAT4_STATS`, per CPU,
/// by this index). Numbered, never renumbered.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nat4Counter {
    /// A new connection from outside to a backend on this node (DNAT).
    NewLocal = 0,
    /// A new connection from outside to a backend on another node (DNAT
    /// and SNAT to the node's address).
    NewRemote = 1,
    /// A SNAT port already held by another connection: another was tried.
    PortCollision = 2,
    /// Every try collided: the new connection was dropped.
    PortExhausted = 3,
    /// `NAT4` refused an insert (full): the new connection was dropped.
    InsertFailed = 4,
    /// Another CPU created the same connection first; its entry is used.
    Raced = 5,
    /// A packet translated through an existing forward entry.
    Forwarded = 6,
    /// An answer translated back (frontend → client).
    Reversed = 7,
}

impl Nat4Counter {
    pub const COUNT: u32 = 8;
    pub const ALL: [Nat4Counter; Self::COUNT as usize] = [
        Nat4Counter::NewLocal,
        Nat4Counter::NewRemote,
        Nat4Counter::PortCollision,
        Nat4Counter::PortExhausted,
        Nat4Counter::InsertFailed,
        Nat4Counter::Raced,
        Nat4Counter::Forwarded,
        Nat4Counter::Reversed,
    ];

    /// Name in `status` and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Nat4Counter::NewLocal => "new_local",
            Nat4Counter::NewRemote => "new_remote",
            Nat4Counter::PortCollision => "port_collision",
            Nat4Counter::PortExhausted => "port_exhausted",
            Nat4Counter::InsertFailed => "insert_failed",
            Nat4Counter::Raced => "raced",
            Nat4Counter::Forwarded => "forwarded",
            Nat4Counter::Reversed => "reversed",
        }
    }
}

#[cfg(feature = "user")]
mod pod_impls {
    // SAFETY: plain `repr(C)` data, explicit padding, no invalid bit
    // patterns.
    unsafe impl aya::Pod for super::Nat4Key {}
    unsafe impl aya::Pod for super::Nat4Entry {}
    unsafe impl aya::Pod for super::Lb4Config {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::golden::{check, golden};
    use crate::services::FrontendKind;

    const NAT4_COUNTERS: &[(Nat4Counter, u32, &str)] = &golden!(Nat4Counter {
        NewLocal = 0, "new_local";
        NewRemote = 1, "new_remote";
        PortCollision = 2, "port_collision";
        PortExhausted = 3, "port_exhausted";
        InsertFailed = 4, "insert_failed";
        Raced = 5, "raced";
        Forwarded = 6, "forwarded";
        Reversed = 7, "reversed";
    });

    #[test]
    fn nat4_counters_match_the_golden_table() {
        check(NAT4_COUNTERS, &Nat4Counter::ALL, Nat4Counter::COUNT, |c| c as u32, Nat4Counter::name);
    }

    #[test]
    fn twins_find_each_other() {
        // World 203.0.113.5:40000 → node 172.30.0.1:30080, SNAT to
        // 172.30.0.1:61005 → backend 10.244.2.2:7777.
        let fwd = Nat4Key {
            src_be: 5,
            dst_be: 1,
            src_port_be: 40000,
            dst_port_be: 30080,
            protocol: 6,
            direction: NAT4_FORWARD,
            _pad: [0; 2],
        };
        let fwd_entry =
            Nat4Entry { src_be: 1, dst_be: 22, src_port_be: 61005, dst_port_be: 7777, ..Default::default() };
        let rev = fwd.twin(&fwd_entry);
        assert_eq!(
            rev,
            Nat4Key {
                src_be: 22,
                dst_be: 1,
                src_port_be: 7777,
                dst_port_be: 61005,
                protocol: 6,
                direction: NAT4_REPLY,
                _pad: [0; 2]
            }
        );
        let rev_entry =
            Nat4Entry { src_be: 1, dst_be: 5, src_port_be: 30080, dst_port_be: 40000, ..Default::default() };
        assert_eq!(rev.twin(&rev_entry), fwd);
    }

    #[test]
    fn snat_ports_stay_in_range_and_differ_per_try() {
        let c = Lb4Config { flags: LB4_ENABLED, snat_port_min: 61000, snat_port_max: 61003 };
        let mut seen = [false; 4];
        for attempt in 0..4 {
            let p = c.snat_port(12345, attempt);
            assert!(c.in_snat_range(p), "{p}");
            seen[(p - 61000) as usize] = true;
        }
        assert!(seen.iter().all(|s| *s), "four tries cover a range of four: {seen:?}");
        let full = Lb4Config { flags: 0, snat_port_min: 61000, snat_port_max: 65535 };
        for seed in [0, 1, u32::MAX, 4535, 4536] {
            assert!(full.in_snat_range(full.snat_port(seed, 7)));
        }
        assert!(!full.in_snat_range(60999));
        assert!(!Lb4Config::default().in_snat_range(0), "no range configured: no SNAT port");
    }

    #[test]
    fn only_cluster_ips_are_closed_to_the_outside() {
        assert!(!reachable_from_outside(FrontendKind::ClusterIp));
        for k in [FrontendKind::NodePort, FrontendKind::ExternalIp, FrontendKind::LoadBalancer, FrontendKind::HostPort]
        {
            assert!(reachable_from_outside(k), "{k:?}");
        }
    }
}
