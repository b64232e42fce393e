//! The socket load balancer's maps: Services translated at `connect()` and
//! `sendmsg()` by the cgroup programs (`ebpf/src/sock_lb.rs`).
//!
//! A frontend (cluster IP, port, protocol) in `SERVICES` names a *backend
//! set*: `count` backends at `BACKENDS[(set, 0..count)]`. A change never
//! edits a live set: the agent writes the new backends under a fresh set
//! id, then points the frontend at it with one map update, then deletes
//! the old set. A `connect()` therefore sees the old set or the new one,
//! never a mix, and established connections (already translated) are
//! never touched.

/// Key of `SERVICES`: a frontend's address, port and protocol.
///
/// Two scopes share the map (`scope`, the byte that was padding before
/// NodePorts: every older entry is `SCOPE_ADDRESS`):
/// - `SCOPE_ADDRESS`: one address (`vip_be`): a cluster IP, an external IP
///   or a LoadBalancer ingress IP (which one: `ServiceValue::flags`);
/// - `SCOPE_NODE_PORT`: a NodePort, on every node address at once
///   (`vip_be` is 0): one entry per port, not per node address. A caller
///   looks it up only after the exact address missed and the address is
///   one of the node addresses (`NODE_ADDRESSES`, or loopback from the
///   node's own network namespace): `nodeport_lookup`;
/// - `SCOPE_HOST_PORT`: a hostPort of a pod on this node, on every address
///   of this node (`vip_be` 0), and `SCOPE_HOST_PORT_ADDRESS`: one with a
///   `hostIP` (`vip_be`). Looked up only for this node's own addresses
///   (`NODE_ADDRESS_LOCAL`, or loopback from the node), never a remote
///   node's: the pod is here (`host_port_candidate`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ServiceKey {
    pub vip_be: u32,
    pub port_be: u16,
    /// IANA number: 6 TCP, 17 UDP.
    pub protocol: u8,
    /// `SCOPE_ADDRESS`, `SCOPE_NODE_PORT`, `SCOPE_HOST_PORT` or
    /// `SCOPE_HOST_PORT_ADDRESS`.
    pub scope: u8,
}
const _: () = assert!(core::mem::size_of::<ServiceKey>() == 8);

/// `ServiceKey::scope`: the frontend is the address in `vip_be`.
pub const SCOPE_ADDRESS: u8 = 0;
/// `ServiceKey::scope`: the frontend is a NodePort on every node address
/// (`vip_be` 0).
pub const SCOPE_NODE_PORT: u8 = 1;
/// `ServiceKey::scope`: a hostPort of a pod on this node, on every address
/// of this node (`vip_be` 0).
pub const SCOPE_HOST_PORT: u8 = 2;
/// `ServiceKey::scope`: a hostPort with a `hostIP`, on that address only
/// (`vip_be`).
pub const SCOPE_HOST_PORT_ADDRESS: u8 = 3;

/// Is `scope` one of the hostPort scopes?
pub const fn is_host_port_scope(scope: u8) -> bool {
    scope == SCOPE_HOST_PORT || scope == SCOPE_HOST_PORT_ADDRESS
}

impl ServiceKey {
    /// The NodePort entry that serves `port_be`/`protocol` on any node
    /// address.
    pub const fn node_port(port_be: u16, protocol: u8) -> Self {
        ServiceKey { vip_be: 0, port_be, protocol, scope: SCOPE_NODE_PORT }
    }

    /// The hostPort entry that serves `port_be`/`protocol` on every
    /// address of this node.
    pub const fn host_port(port_be: u16, protocol: u8) -> Self {
        ServiceKey { vip_be: 0, port_be, protocol, scope: SCOPE_HOST_PORT }
    }

    /// The hostPort entry of a pod whose `hostIP` is `ip_be`.
    pub const fn host_port_on(ip_be: u32, port_be: u16, protocol: u8) -> Self {
        ServiceKey { vip_be: ip_be, port_be, protocol, scope: SCOPE_HOST_PORT_ADDRESS }
    }

    /// The `SERVICES` key of a frontend as `SOCK_REVERSE` remembers it: a
    /// NodePort or hostPort translation remembers the node address the
    /// socket named (`recvmsg()` must show it), its map entry has none (a
    /// `hostIP` entry's address is the one named).
    pub const fn entry_key(self) -> Self {
        if self.scope == SCOPE_NODE_PORT || self.scope == SCOPE_HOST_PORT {
            ServiceKey { vip_be: 0, ..self }
        } else {
            self
        }
    }
}

/// `ServiceValue::flags`: the Service has endpoints, none on this node, and
/// `internalTrafficPolicy: Local`: a connect fails with `EHOSTUNREACH`.
pub const SERVICE_NO_LOCAL_ENDPOINTS: u32 = 1;
/// `ServiceValue::flags`: the address is one of `spec.externalIPs`.
pub const SERVICE_EXTERNAL_IP: u32 = 1 << 1;
/// `ServiceValue::flags`: the address is a `status.loadBalancer.ingress`
/// IP.
pub const SERVICE_LOAD_BALANCER: u32 = 1 << 2;
/// `ServiceValue::flags`: an external frontend (NodePort, external IP,
/// LoadBalancer IP) of a Service with `externalTrafficPolicy: Local`. The
/// socket programs ignore it (in-cluster clients get every endpoint); the
/// uplink sends a client from outside only to a backend on this node,
/// with its address kept, and drops it where there is none.
pub const SERVICE_EXTERNAL_LOCAL: u32 = 1 << 3;
/// `ServiceValue::flags`: a LoadBalancer ingress IP with
/// `loadBalancerSourceRanges`: the uplink admits only clients in one of
/// its ranges (`LB4_SOURCE_RANGES`, `nat::SourceRangeKey`).
pub const SERVICE_SOURCE_RANGES: u32 = 1 << 4;
/// With `SERVICE_EXTERNAL_LOCAL`: the top 16 bits of `ServiceValue::flags`
/// count this node's backends, which the agent puts first in the set
/// (slots `0..n`): the uplink picks among those alone, in O(1).
pub const SERVICE_LOCAL_COUNT_SHIFT: u32 = 16;

/// The flags of an `externalTrafficPolicy: Local` external frontend whose
/// set begins with `local` backends of this node (at most 65,535 counted).
pub const fn external_local_flags(local: usize) -> u32 {
    let n = if local > 0xffff { 0xffff } else { local as u32 };
    SERVICE_EXTERNAL_LOCAL | n << SERVICE_LOCAL_COUNT_SHIFT
}

/// How many of the set's first slots are this node's backends (see
/// `external_local_flags`).
pub const fn local_backend_count(flags: u32) -> u32 {
    flags >> SERVICE_LOCAL_COUNT_SHIFT
}

/// What kind of frontend an entry of `SERVICES` is: its scope and flags
/// say. The uplink (world → Service) path will accept every kind but
/// `ClusterIp` from outside.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FrontendKind {
    ClusterIp,
    NodePort,
    ExternalIp,
    LoadBalancer,
    /// A container port's `hostPort`, of a pod on this node.
    HostPort,
}

impl FrontendKind {
    /// As Kubernetes spells the Service type (and `status` shows it).
    pub const fn name(self) -> &'static str {
        match self {
            FrontendKind::ClusterIp => "ClusterIP",
            FrontendKind::NodePort => "NodePort",
            FrontendKind::ExternalIp => "ExternalIP",
            FrontendKind::LoadBalancer => "LoadBalancer",
            FrontendKind::HostPort => "HostPort",
        }
    }

    /// The `ServiceValue::flags` bits that name this kind (the NodePort
    /// and hostPort kinds are in the key's scope).
    pub const fn flags(self) -> u32 {
        match self {
            FrontendKind::ClusterIp | FrontendKind::NodePort | FrontendKind::HostPort => 0,
            FrontendKind::ExternalIp => SERVICE_EXTERNAL_IP,
            FrontendKind::LoadBalancer => SERVICE_LOAD_BALANCER,
        }
    }
}

pub const fn frontend_kind(key: &ServiceKey, value: &ServiceValue) -> FrontendKind {
    frontend_kind_of(key.scope, value)
}

/// `frontend_kind` from a key's scope alone: for either family's key
/// (`ServiceKey`, `services6::ServiceKey6`).
pub const fn frontend_kind_of(scope: u8, value: &ServiceValue) -> FrontendKind {
    if scope == SCOPE_NODE_PORT {
        FrontendKind::NodePort
    } else if is_host_port_scope(scope) {
        FrontendKind::HostPort
    } else if value.flags & SERVICE_LOAD_BALANCER != 0 {
        FrontendKind::LoadBalancer
    } else if value.flags & SERVICE_EXTERNAL_IP != 0 {
        FrontendKind::ExternalIp
    } else {
        FrontendKind::ClusterIp
    }
}

/// Value of `NODE_ADDRESSES` (key: an IPv4 address, network order): an
/// address of this node (any interface of its network namespace).
pub const NODE_ADDRESS_LOCAL: u32 = 1;
/// Value of `NODE_ADDRESSES`: another node's InternalIP.
pub const NODE_ADDRESS_REMOTE: u32 = 2;

/// Is `ip_be` (network order, as `user_ip4`) in 127.0.0.0/8?
pub const fn is_loopback_be(ip_be: u32) -> bool {
    ip_be.to_ne_bytes()[0] == 127
}

/// Does a socket call to `ip_be` get the NodePort entry once the exact
/// address missed: the address is a node's (this one's or another's:
/// `node_address`, the `NODE_ADDRESSES` lookup), or loopback named from
/// the node's own network namespace (a pod's 127.0.0.1 is the pod's).
pub const fn nodeport_candidate(ip_be: u32, node_address: bool, in_host_netns: bool) -> bool {
    node_address || (in_host_netns && is_loopback_be(ip_be))
}

/// Does a socket call to a destination that is not itself a frontend get
/// the hostPort entries: the address is one of this node's own
/// (`local_address`: `NODE_ADDRESSES` says `NODE_ADDRESS_LOCAL`), or
/// loopback named from the node's own network namespace. Another node's
/// address never: its pods' hostPorts are its own, reached over the wire.
pub const fn host_port_candidate(ip_be: u32, local_address: bool, in_host_netns: bool) -> bool {
    local_address || (in_host_netns && is_loopback_be(ip_be))
}

/// Value of `SOCK_LB_CONFIG` (one entry), written by the agent when the
/// Services loop starts; read by the socket programs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SockLbConfig {
    /// `SO_NETNS_COOKIE` of the node's own network namespace (where the
    /// agent runs); 0 until written: then loopback NodePorts are off.
    pub host_netns_cookie: u64,
}
const _: () = assert!(core::mem::size_of::<SockLbConfig>() == 8);

/// Value of `SERVICES` (and `SERVICES6`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServiceValue {
    /// The backend set this frontend uses now. Not an identity: every
    /// change of the endpoints moves the frontend to a fresh set.
    pub backend_set: u32,
    /// Backends in the set; 0: the Service has no endpoints and a connect
    /// is refused (`ECONNREFUSED`, as kube-proxy's REJECT).
    pub count: u32,
    /// `sessionAffinity: ClientIP` timeout; 0: no affinity.
    pub affinity_timeout_secs: u32,
    pub flags: u32,
    /// The Service port this frontend belongs to (`service_port_id`): the
    /// same on every frontend of one Service port (its NodePort, external
    /// IPs, LoadBalancer IPs, cluster IPs), stable across endpoint changes
    /// and agent restarts. The uplink's session affinity is keyed by it
    /// (`lb4_affinity`). Appended (the value was 16 bytes): 0 is "not set",
    /// an entry an earlier version wrote, until the agent rewrites it.
    pub service_port_id: u64,
}
const _: () = assert!(core::mem::size_of::<ServiceValue>() == 24);

/// Set in every `service_port_id`: the ids the agent derives never collide
/// with the stand-in the uplink uses for an entry without one (its
/// frontend key, whose top byte is the scope, 0..=3: `lb4_affinity`).
pub const SERVICE_PORT_ID_TAG: u64 = 1 << 63;

/// The id of a Service port, as kube-proxy names one (`ServicePortName`:
/// namespace, name, the port's name, protocol): FNV-1a (64 bits) of the
/// four, each string followed by a 0 byte (no name holds one), with
/// `SERVICE_PORT_ID_TAG` set. Derived, never stored: an agent after a
/// restart or an upgrade computes the same ids, so the pinned
/// `LB4_SVC_AFFINITY` keeps its meaning. The port's number is left out,
/// as kube-proxy leaves it out: a port renumbered keeps its clients'
/// backends. Two Service ports share an id only by a 64-bit hash
/// collision (about 3 in 10^12 for 10,000 ports in a cluster), which
/// would only let one client's choice for one be tried for the other,
/// and the uplink still takes a remembered backend only from the current
/// set of the frontend reached.
pub const fn service_port_id(namespace: &[u8], name: &[u8], port_name: &[u8], protocol: u8) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    const fn mix(mut h: u64, bytes: &[u8]) -> u64 {
        let mut i = 0;
        while i < bytes.len() {
            h = (h ^ bytes[i] as u64).wrapping_mul(PRIME);
            i += 1;
        }
        // The 0 byte after it (`h ^ 0` is `h`).
        h.wrapping_mul(PRIME)
    }
    let h = mix(mix(mix(OFFSET, namespace), name), port_name);
    (h ^ protocol as u64).wrapping_mul(PRIME) | SERVICE_PORT_ID_TAG
}

/// Key of `BACKENDS`: slot `slot` of backend set `set`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct BackendSlot {
    pub set: u32,
    pub slot: u32,
}
const _: () = assert!(core::mem::size_of::<BackendSlot>() == 8);

/// A backend: pod IP and target port. Value of `BACKENDS`, value of
/// `AFFINITY`, part of the key of `BACKEND_MEMBERS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Backend {
    pub ip_be: u32,
    pub port_be: u16,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<Backend>() == 8);

/// Key of `BACKEND_MEMBERS`: "is this backend in this set?" (value: slot).
/// Session affinity checks that its remembered backend is still there.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct BackendMember {
    pub set: u32,
    pub backend: Backend,
}
const _: () = assert!(core::mem::size_of::<BackendMember>() == 12);

/// Key of `SOCK_REVERSE`: a socket (its cookie) and the backend it was sent
/// to. The value is the frontend (`ServiceKey`), which `recvmsg()` and
/// `getpeername()` report instead of the backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ReverseKey {
    pub cookie: u64,
    pub backend: Backend,
}
const _: () = assert!(core::mem::size_of::<ReverseKey>() == 16);

/// Key of `AFFINITY`: a client (its network namespace's cookie: there is
/// no source address at connect time; a pod is a namespace) and a frontend.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AffinityKey {
    pub netns_cookie: u64,
    pub service: ServiceKey,
}
const _: () = assert!(core::mem::size_of::<AffinityKey>() == 16);

/// Value of `AFFINITY`: the backend chosen, and when it was last used
/// (`bpf_ktime_get_ns`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AffinityValue {
    pub backend: Backend,
    pub last_used_ns: u64,
}
const _: () = assert!(core::mem::size_of::<AffinityValue>() == 16);

/// Is the remembered choice still good: used within the timeout?
pub const fn affinity_fresh(last_used_ns: u64, now_ns: u64, timeout_secs: u32) -> bool {
    now_ns.saturating_sub(last_used_ns) < timeout_secs as u64 * 1_000_000_000
}

/// What a `connect()` / `sendmsg()` to a frontend gets, before a backend
/// is picked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Pick one of `count` backends.
    Balance,
    /// No endpoints at all: `ECONNREFUSED`.
    Refuse,
    /// Endpoints, but none this node may use: `EHOSTUNREACH`.
    Unreachable,
}

pub const fn admission(service: &ServiceValue) -> Admission {
    if service.flags & SERVICE_NO_LOCAL_ENDPOINTS != 0 {
        Admission::Unreachable
    } else if service.count == 0 {
        Admission::Refuse
    } else {
        Admission::Balance
    }
}

/// `0000:0000:0000:0000:0000:ffff` in the third word of an IPv6 address
/// as the sock_addr programs read it (`user_ip6[2]`, network order).
const V4_MAPPED_PREFIX_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// The IPv4 address (network order, as `user_ip4`) inside a v4-mapped IPv6
/// address (`::ffff:a.b.c.d`, RFC 4291 2.5.5.2), given as the four words of
/// `bpf_sock_addr::user_ip6` (each in network order). `None` for every
/// other IPv6 address: native IPv6 is not a Service address (yet), and the
/// deprecated v4-compatible `::a.b.c.d` is not mapped.
pub const fn v4_mapped_be(ip6: [u32; 4]) -> Option<u32> {
    if ip6[0] == 0 && ip6[1] == 0 && ip6[2] == V4_MAPPED_PREFIX_WORD {
        Some(ip6[3])
    } else {
        None
    }
}

/// What the socket load balancer counts (`SOCK_LB_STATS`, per CPU, by
/// this index). Numbered, never renumbered.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SockLbCounter {
    /// A `connect()` to a cluster IP sent to a backend.
    Connected = 0,
    /// An unconnected UDP datagram to a cluster IP sent to a backend.
    Sent = 1,
    /// Refused: the Service has no endpoints.
    RefusedNoEndpoints = 2,
    /// Refused: `internalTrafficPolicy: Local` and none on this node.
    RefusedNoLocalEndpoints = 3,
    /// A reply or peer name shown as the cluster IP.
    Reversed = 4,
    /// A backend slot was missing (a set replaced mid-lookup): left
    /// untranslated.
    SlotMissing = 5,
    /// Of `Connected`: an IPv6 socket's `connect()` to a v4-mapped cluster
    /// IP (`::ffff:10.96.0.10`), translated by `sock_connect6`.
    V4Mapped = 6,
    /// Of `Connected` and `Sent`: through a NodePort entry (a node
    /// address, or loopback from the node, and a NodePort).
    NodePort = 7,
    /// Of `Connected` and `Sent`: through a hostPort entry (this node's
    /// address, or loopback from the node, and a local pod's hostPort).
    HostPort = 8,
    /// A `connect()` or datagram from a socket marked
    /// `SOCK_LB_BYPASS_MARK`: left untranslated, as an outside client's.
    Bypassed = 9,
}

impl SockLbCounter {
    pub const COUNT: u32 = 10;
    pub const ALL: [SockLbCounter; Self::COUNT as usize] = [
        SockLbCounter::Connected,
        SockLbCounter::Sent,
        SockLbCounter::RefusedNoEndpoints,
        SockLbCounter::RefusedNoLocalEndpoints,
        SockLbCounter::Reversed,
        SockLbCounter::SlotMissing,
        SockLbCounter::V4Mapped,
        SockLbCounter::NodePort,
        SockLbCounter::HostPort,
        SockLbCounter::Bypassed,
    ];

    /// Name in `status` and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            SockLbCounter::Connected => "connected",
            SockLbCounter::Sent => "sent",
            SockLbCounter::RefusedNoEndpoints => "refused_no_endpoints",
            SockLbCounter::RefusedNoLocalEndpoints => "refused_no_local_endpoints",
            SockLbCounter::Reversed => "reversed",
            SockLbCounter::SlotMissing => "slot_missing",
            SockLbCounter::V4Mapped => "v4_mapped",
            SockLbCounter::NodePort => "node_port",
            SockLbCounter::HostPort => "host_port",
            SockLbCounter::Bypassed => "bypassed",
        }
    }
}

#[cfg(feature = "user")]
mod pod_impls {
    // SAFETY: plain `repr(C)` data, explicit padding fields, no invalid bit
    // patterns.
    unsafe impl aya::Pod for super::ServiceKey {}
    unsafe impl aya::Pod for super::ServiceValue {}
    unsafe impl aya::Pod for super::BackendSlot {}
    unsafe impl aya::Pod for super::Backend {}
    unsafe impl aya::Pod for super::BackendMember {}
    unsafe impl aya::Pod for super::ReverseKey {}
    unsafe impl aya::Pod for super::AffinityKey {}
    unsafe impl aya::Pod for super::AffinityValue {}
    unsafe impl aya::Pod for super::SockLbConfig {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::golden::{check, golden};

    #[test]
    fn the_local_backend_count_rides_in_the_flags_top_bits() {
        let f = external_local_flags(3) | SERVICE_LOAD_BALANCER;
        assert_eq!(local_backend_count(f), 3);
        assert!(f & SERVICE_EXTERNAL_LOCAL != 0 && f & SERVICE_LOAD_BALANCER != 0);
        assert_eq!(local_backend_count(external_local_flags(70_000)), 0xffff);
        assert_eq!(local_backend_count(SERVICE_EXTERNAL_IP | SERVICE_NO_LOCAL_ENDPOINTS), 0);
    }

    /// The ids are a contract with the pinned `LB4_SVC_AFFINITY`: an
    /// agent of another version (or after a restart) must derive the same
    /// id for the same Service port. Golden values; never change them.
    #[test]
    fn service_port_ids_are_fixed_and_tell_service_ports_apart() {
        let web = service_port_id(b"default", b"web", b"http", 6);
        assert_eq!(web, 0xa2fb_8112_bddd_70be);
        assert_eq!(service_port_id(b"default", b"web", b"", 17), 0xcb0a_eec3_186e_1477);
        assert!(web & SERVICE_PORT_ID_TAG != 0);
        let others = [
            service_port_id(b"default", b"web", b"http", 17),
            service_port_id(b"default", b"web", b"https", 6),
            service_port_id(b"default", b"web2", b"http", 6),
            service_port_id(b"prod", b"web", b"http", 6),
            // The separators: the same bytes cut elsewhere.
            service_port_id(b"default", b"we", b"bhttp", 6),
            service_port_id(b"defaultweb", b"", b"http", 6),
        ];
        for (i, o) in others.iter().enumerate() {
            assert_ne!(*o, web, "case {i}");
        }
    }

    #[test]
    fn admission_refuses_empty_and_unreachable_local_only() {
        let mut v = ServiceValue { backend_set: 1, count: 2, affinity_timeout_secs: 0, flags: 0, service_port_id: 0 };
        assert_eq!(admission(&v), Admission::Balance);
        v.count = 0;
        assert_eq!(admission(&v), Admission::Refuse);
        v.flags = SERVICE_NO_LOCAL_ENDPOINTS;
        assert_eq!(admission(&v), Admission::Unreachable);
    }

    // The contract with the pinned `SOCK_LB_STATS` map, `status` and
    // metrics (`crate::golden`).
    const SOCK_LB_COUNTERS: &[(SockLbCounter, u32, &str)] = &golden!(SockLbCounter {
        Connected = 0, "connected";
        Sent = 1, "sent";
        RefusedNoEndpoints = 2, "refused_no_endpoints";
        RefusedNoLocalEndpoints = 3, "refused_no_local_endpoints";
        Reversed = 4, "reversed";
        SlotMissing = 5, "slot_missing";
        V4Mapped = 6, "v4_mapped";
        NodePort = 7, "node_port";
        HostPort = 8, "host_port";
        Bypassed = 9, "bypassed";
    });

    #[test]
    fn sock_lb_counters_match_the_golden_table() {
        check(SOCK_LB_COUNTERS, &SockLbCounter::ALL, SockLbCounter::COUNT, |c| c as u32, SockLbCounter::name);
    }

    /// `user_ip6` as the kernel fills it: four words, each the address's
    /// bytes in network order.
    fn words(ip: &str) -> [u32; 4] {
        let o = ip.parse::<core::net::Ipv6Addr>().unwrap().octets();
        core::array::from_fn(|i| u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]]))
    }

    #[test]
    fn only_v4_mapped_addresses_yield_their_ipv4_address() {
        let cluster_ip = u32::from_ne_bytes([10, 96, 0, 10]);
        assert_eq!(v4_mapped_be(words("::ffff:10.96.0.10")), Some(cluster_ip));
        assert_eq!(v4_mapped_be(words("::ffff:0a60:000a")), Some(cluster_ip));
        for other in ["fd00::a60:a", "::10.96.0.10", "::ffff:0:10.96.0.10", "64:ff9b::10.96.0.10", "::1", "::"] {
            assert_eq!(v4_mapped_be(words(other)), None, "{other}");
        }
    }

    fn be(ip: &str) -> u32 {
        u32::from_ne_bytes(ip.parse::<core::net::Ipv4Addr>().unwrap().octets())
    }

    #[test]
    fn loopback_is_a_node_address_only_from_the_node_itself() {
        assert!(is_loopback_be(be("127.0.0.1")));
        assert!(is_loopback_be(be("127.3.2.1")));
        assert!(!is_loopback_be(be("128.0.0.1")));
        assert!(!is_loopback_be(be("10.0.0.127")));
        assert!(nodeport_candidate(be("127.0.0.1"), false, true));
        assert!(!nodeport_candidate(be("127.0.0.1"), false, false), "a pod's loopback is the pod's");
        assert!(nodeport_candidate(be("172.30.0.2"), true, false), "a node address from a pod");
        assert!(!nodeport_candidate(be("172.30.0.99"), false, true), "not a node address");
    }

    #[test]
    fn the_kind_comes_from_the_scope_and_the_flags_and_reverse_keys_find_their_entry() {
        let v = |flags| ServiceValue { flags, ..Default::default() };
        let addr = ServiceKey { vip_be: be("10.96.0.1"), port_be: 80u16.to_be(), protocol: 6, scope: SCOPE_ADDRESS };
        assert_eq!(frontend_kind(&addr, &v(0)), FrontendKind::ClusterIp);
        assert_eq!(frontend_kind(&addr, &v(SERVICE_NO_LOCAL_ENDPOINTS)), FrontendKind::ClusterIp);
        assert_eq!(frontend_kind(&addr, &v(FrontendKind::ExternalIp.flags())), FrontendKind::ExternalIp);
        assert_eq!(frontend_kind(&addr, &v(FrontendKind::LoadBalancer.flags())), FrontendKind::LoadBalancer);
        let np = ServiceKey::node_port(30080u16.to_be(), 17);
        assert_eq!(frontend_kind(&np, &v(0)), FrontendKind::NodePort);
        // A NodePort translation remembers the address the socket named.
        let remembered = ServiceKey { vip_be: be("172.30.0.2"), ..np };
        assert_eq!(remembered.entry_key(), np);
        assert_eq!(addr.entry_key(), addr);
    }

    /// The scopes are the key's last byte in pinned maps an upgraded
    /// agent takes over: numbers never change, new ones are appended.
    #[test]
    fn scopes_and_frontend_kinds_keep_their_numbers_and_names() {
        assert_eq!([SCOPE_ADDRESS, SCOPE_NODE_PORT, SCOPE_HOST_PORT, SCOPE_HOST_PORT_ADDRESS], [0, 1, 2, 3]);
        assert_eq!(core::mem::size_of::<ServiceKey>(), 8);
        let kinds = [
            (FrontendKind::ClusterIp, "ClusterIP", 0),
            (FrontendKind::NodePort, "NodePort", 0),
            (FrontendKind::ExternalIp, "ExternalIP", SERVICE_EXTERNAL_IP),
            (FrontendKind::LoadBalancer, "LoadBalancer", SERVICE_LOAD_BALANCER),
            (FrontendKind::HostPort, "HostPort", 0),
        ];
        for (kind, name, flags) in kinds {
            assert_eq!((kind.name(), kind.flags()), (name, flags), "{kind:?}");
        }
        assert_eq!([SERVICE_NO_LOCAL_ENDPOINTS, SERVICE_EXTERNAL_IP, SERVICE_LOAD_BALANCER], [1, 2, 4]);
    }

    #[test]
    fn host_ports_answer_only_on_this_nodes_addresses_and_remember_the_address_named() {
        let v = ServiceValue::default();
        let any = ServiceKey::host_port(8080u16.to_be(), 6);
        let on = ServiceKey::host_port_on(be("172.30.0.1"), 8080u16.to_be(), 6);
        assert_eq!(frontend_kind(&any, &v), FrontendKind::HostPort);
        assert_eq!(frontend_kind(&on, &v), FrontendKind::HostPort);
        assert_eq!(ServiceKey { vip_be: be("172.30.0.1"), ..any }.entry_key(), any);
        assert_eq!(on.entry_key(), on, "a hostIP entry is the address named");
        assert!(host_port_candidate(be("172.30.0.1"), true, false), "this node's address, from a pod");
        assert!(!host_port_candidate(be("172.30.0.2"), false, false), "another node's address: never");
        assert!(host_port_candidate(be("127.0.0.1"), false, true), "loopback from the node");
        assert!(!host_port_candidate(be("127.0.0.1"), false, false), "a pod's loopback is the pod's");
        assert!(!is_host_port_scope(SCOPE_NODE_PORT) && is_host_port_scope(SCOPE_HOST_PORT_ADDRESS));
    }

    #[test]
    fn affinity_expires_after_its_timeout() {
        let s = 1_000_000_000u64;
        assert!(affinity_fresh(10 * s, 12 * s, 3));
        assert!(!affinity_fresh(10 * s, 13 * s, 3));
        assert!(!affinity_fresh(10 * s, 20 * s, 3));
        // A clock read before the entry was written (another CPU) is fresh.
        assert!(affinity_fresh(10 * s, 9 * s, 3));
    }
}
