//! NetworkPolicy: the maps the datapath will enforce it from, and the pure
//! verdict it computes from their lookups (issue 25).
//!
//! The programs enforce from these maps (`ebpf/src/policy/`); the agent's
//! pure compiler (`agent/src/policy/`) produces their entries and evaluates
//! them with [`policy_verdict`], the same function the datapath calls. See
//! docs/ARCHITECTURE.md, "NetworkPolicy".
//!
//! The design is Cilium's (identities), with ipBlock folded into them:
//!
//! - `POLICY_IDENTITIES` (LPM trie, key: IPv4 prefix, value [`PeerIdentity`]):
//!   what a peer address *is*. Every known pod IP (/32) has the numeric
//!   identity of its class (namespace, namespace labels, pod labels, named
//!   ports, and the policy ipBlocks its address falls in); node IPs are
//!   [`IDENTITY_HOST`] / [`IDENTITY_REMOTE_NODE`] (or a refined class when an
//!   ipBlock covers them); the cluster CIDR is [`IDENTITY_UNKNOWN_CLUSTER`];
//!   the prefixes that policies' ipBlocks name carry external classes; the
//!   rest of the world is [`IDENTITY_WORLD`]. Identities are node-local:
//!   every node resolves the peer's address itself, nothing carries them on
//!   the wire.
//! - `POLICY_ENDPOINTS` (hash, key: local pod IPv4 (be), value
//!   [`EndpointPolicy`]): is this local pod isolated per direction, and which
//!   rule set holds its allow entries.
//! - `POLICY_RULES` (LPM trie, key [`PolicyKey`], value [`PolicyValue`]): the
//!   allow entries of every local pod's rule set, keyed by (rule set, peer
//!   identity, direction, protocol, destination port); the trie's prefix
//!   length makes "any protocol", "any port" and port ranges single entries.
//!
//! Per new connection and direction: one `POLICY_ENDPOINTS` lookup; if the
//! pod is isolated, one `POLICY_IDENTITIES` lookup and two `POLICY_RULES`
//! lookups (the peer's identity, then [`IDENTITY_ANY`]); then
//! [`policy_verdict`]. The count is the same for 1 policy or 1,000.

use crate::DropReason;

/// Reserved identity in [`PolicyKey::identity_be`] only: the entry allows
/// every peer (a rule with no `from`/`to`). Never assigned to an address.
pub const IDENTITY_ANY: u32 = 0;
/// This node: its own addresses. Traffic between a pod and its own node
/// always passes (the API's rule, kubelet probes depend on it).
pub const IDENTITY_HOST: u32 = 1;
/// An address outside the cluster CIDR that no policy's ipBlock names.
pub const IDENTITY_WORLD: u32 = 2;
/// Another node's address (host network, host-network pods there) that no
/// policy's ipBlock names.
pub const IDENTITY_REMOTE_NODE: u32 = 3;
/// An address inside the cluster CIDR that is no pod this node knows (yet).
/// Never "world", never matched by an ipBlock: only a rule allowing every
/// peer lets it through, otherwise [`PolicyVerdict::PeerUnknown`].
pub const IDENTITY_UNKNOWN_CLUSTER: u32 = 4;
/// Identities the agent allocates start here.
pub const IDENTITY_FIRST_ALLOCATED: u32 = 256;

/// [`EndpointPolicy::flags`]: some policy selecting the pod has `Ingress`
/// in its (defaulted) `policyTypes`.
pub const ENDPOINT_INGRESS_ISOLATED: u32 = 1;
/// [`EndpointPolicy::flags`]: the same for `Egress`.
pub const ENDPOINT_EGRESS_ISOLATED: u32 = 2;
/// [`EndpointPolicy::flags`]: the CNI plugin found no `POLICY_PODS` entry for
/// the pod (agent down or behind) and wrote a fail-closed entry: everything
/// to and from the pod is dropped (`policy_pending`) except its own node,
/// until the agent writes the real one.
pub const ENDPOINT_POLICY_PENDING: u32 = 4;

/// [`PolicyKey::direction`]: the local pod receives (peer = source).
pub const DIRECTION_INGRESS: u8 = 0;
/// [`PolicyKey::direction`]: the local pod sends (peer = destination).
pub const DIRECTION_EGRESS: u8 = 1;

/// The direction a verdict is for, from the local pod's side.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    Ingress = DIRECTION_INGRESS,
    Egress = DIRECTION_EGRESS,
}

impl Direction {
    /// The [`EndpointPolicy::flags`] bit saying the pod is isolated this way.
    pub const fn isolation_flag(self) -> u32 {
        match self {
            Direction::Ingress => ENDPOINT_INGRESS_ISOLATED,
            Direction::Egress => ENDPOINT_EGRESS_ISOLATED,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

/// Value of `POLICY_IDENTITIES` (LPM trie over the IPv4 address, be, as
/// `NODE_ROUTES`): the identity of every address in the prefix.
///
/// Written by the agent (policy reconciler, not built yet); read by the
/// programs that judge a new connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PeerIdentity {
    pub identity: u32,
}
const _: () = assert!(core::mem::size_of::<PeerIdentity>() == 4);

/// Value of `POLICY_ENDPOINTS` (hash, key: a local pod's IPv4, be).
///
/// Written by the agent, and by CNI ADD before it returns (no gap for a new
/// pod; not built yet); read per new connection from or to a local pod.
/// A pod with no entry is not selected by any policy.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EndpointPolicy {
    /// The rule set in `POLICY_RULES` holding this pod's allow entries. A
    /// change writes a new set under a fresh id, switches this field with
    /// one update, then deletes the old set (as Services' backend sets), so
    /// a packet sees the old rules or the new ones, never a mix.
    pub rules_id: u32,
    /// `ENDPOINT_*_ISOLATED` bits.
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<EndpointPolicy>() == 8);

/// Key data of `POLICY_RULES` (an LPM trie: aya's `Key { prefix_len, data }`
/// with this as `data`). Every field is big-endian in memory so that the
/// trie's bit prefixes mean what they say: the first
/// [`POLICY_PREFIX_ANY_PROTOCOL`] bits (rule set, identity, direction) are
/// always matched exactly; then the protocol; then the destination port,
/// whose leading bits make a port range a few entries.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PolicyKey {
    pub rules_id_be: u32,
    /// The peer's identity, or [`IDENTITY_ANY`].
    pub identity_be: u32,
    /// `DIRECTION_*`.
    pub direction: u8,
    /// IANA number: 6 TCP, 17 UDP, 132 SCTP (0 in "any protocol" entries).
    pub protocol: u8,
    /// Destination port (the server's, in both directions).
    pub port_be: u16,
}
const _: () = assert!(core::mem::size_of::<PolicyKey>() == 12);

/// `POLICY_RULES` prefix length of an entry allowing every protocol and port
/// (a rule with no `ports`).
pub const POLICY_PREFIX_ANY_PROTOCOL: u32 = 72;
/// Prefix length of an entry allowing every port of one protocol.
pub const POLICY_PREFIX_ANY_PORT: u32 = 80;
/// Prefix length of an entry for exactly one port.
pub const POLICY_PREFIX_EXACT_PORT: u32 = 96;

impl PolicyKey {
    /// The key a packet is looked up with (prefix length
    /// [`POLICY_PREFIX_EXACT_PORT`]).
    pub const fn probe(rules_id: u32, identity: u32, direction: Direction, protocol: u8, port: u16) -> Self {
        PolicyKey {
            rules_id_be: rules_id.to_be(),
            identity_be: identity.to_be(),
            direction: direction as u8,
            protocol,
            port_be: port.to_be(),
        }
    }

    /// The key's bytes as the trie compares them (memory order).
    pub const fn bytes(&self) -> [u8; 12] {
        let r = u32::from_be(self.rules_id_be).to_be_bytes();
        let i = u32::from_be(self.identity_be).to_be_bytes();
        let p = u16::from_be(self.port_be).to_be_bytes();
        [r[0], r[1], r[2], r[3], i[0], i[1], i[2], i[3], self.direction, self.protocol, p[0], p[1]]
    }

    /// Whether an entry `self`/`prefix_len` covers `probe`, bit for bit as
    /// the kernel's LPM trie decides it (for host-side evaluation and
    /// tests; the datapath asks the trie).
    pub const fn covers(&self, prefix_len: u32, probe: &PolicyKey) -> bool {
        let a = self.bytes();
        let b = probe.bytes();
        let mut bit = 0;
        while bit < prefix_len && bit < 96 {
            let byte = (bit / 8) as usize;
            let mask = 0x80u8 >> (bit % 8);
            if a[byte] & mask != b[byte] & mask {
                return false;
            }
            bit += 1;
        }
        true
    }
}

/// Value of `POLICY_RULES`: an allow entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PolicyValue {
    /// Index of the (first) policy that allows this, in the agent's table of
    /// policy names: what `monitor` prints for an allow.
    pub policy_ref: u32,
}
const _: () = assert!(core::mem::size_of::<PolicyValue>() == 4);

/// What the policy says about a new connection, in one direction. The three
/// denials become the drop reasons `policy_denied_ingress`,
/// `policy_denied_egress` and `policy_peer_unknown` when the datapath lands
/// (they are appended to `DropReason` then, not before).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PolicyVerdict {
    /// No policy isolates the local pod in this direction.
    AllowedNotIsolated = 0,
    /// The peer is this node.
    AllowedHost = 1,
    /// An entry for the peer's identity allows it.
    AllowedByPeerRule = 2,
    /// An entry for every peer ([`IDENTITY_ANY`]) allows it.
    AllowedByAnyPeerRule = 3,
    /// Isolated for ingress, no entry allows it.
    DeniedIngress = 4,
    /// Isolated for egress, no entry allows it.
    DeniedEgress = 5,
    /// Isolated, the peer is an address in the cluster CIDR this node does
    /// not know, and no entry for every peer allows it.
    PeerUnknown = 6,
    /// The local pod's entry is the CNI plugin's fail-closed stand-in
    /// ([`ENDPOINT_POLICY_PENDING`]); the peer is not its node.
    Pending = 7,
}

impl PolicyVerdict {
    pub const COUNT: u32 = 8;
    pub const ALL: [PolicyVerdict; Self::COUNT as usize] = [
        PolicyVerdict::AllowedNotIsolated,
        PolicyVerdict::AllowedHost,
        PolicyVerdict::AllowedByPeerRule,
        PolicyVerdict::AllowedByAnyPeerRule,
        PolicyVerdict::DeniedIngress,
        PolicyVerdict::DeniedEgress,
        PolicyVerdict::PeerUnknown,
        PolicyVerdict::Pending,
    ];

    pub const fn allowed(self) -> bool {
        matches!(
            self,
            PolicyVerdict::AllowedNotIsolated
                | PolicyVerdict::AllowedHost
                | PolicyVerdict::AllowedByPeerRule
                | PolicyVerdict::AllowedByAnyPeerRule
        )
    }

    /// The name it is reported under (the drop reason's, for a denial).
    pub const fn name(self) -> &'static str {
        match self {
            PolicyVerdict::AllowedNotIsolated => "allowed_not_isolated",
            PolicyVerdict::AllowedHost => "allowed_host",
            PolicyVerdict::AllowedByPeerRule => "allowed_by_peer_rule",
            PolicyVerdict::AllowedByAnyPeerRule => "allowed_by_any_peer_rule",
            PolicyVerdict::DeniedIngress => "policy_denied_ingress",
            PolicyVerdict::DeniedEgress => "policy_denied_egress",
            PolicyVerdict::PeerUnknown => "policy_peer_unknown",
            PolicyVerdict::Pending => "policy_pending",
        }
    }

    /// The drop reason of a denial; `None` for an allow.
    pub const fn drop_reason(self) -> Option<DropReason> {
        match self {
            PolicyVerdict::DeniedIngress => Some(DropReason::PolicyDeniedIngress),
            PolicyVerdict::DeniedEgress => Some(DropReason::PolicyDeniedEgress),
            PolicyVerdict::PeerUnknown => Some(DropReason::PolicyPeerUnknown),
            PolicyVerdict::Pending => Some(DropReason::PolicyPending),
            _ => None,
        }
    }
}

/// The verdict for a new connection in one direction, from the lookups'
/// results. The same function runs in the programs and in the agent's
/// evaluator (`agent/src/policy/evaluate.rs`).
///
/// - `endpoint_flags`: the local pod's [`EndpointPolicy::flags`] (0 when it
///   has no entry). When the pod is not isolated in `direction` (nor
///   pending), the caller may skip the other lookups and pass `None`.
/// - `peer_identity`: `POLICY_IDENTITIES` for the peer's address
///   ([`IDENTITY_WORLD`] when no prefix matches).
/// - `peer_entry`: `POLICY_RULES` probed with `peer_identity`.
/// - `any_peer_entry`: `POLICY_RULES` probed with [`IDENTITY_ANY`].
pub fn policy_verdict(
    direction: Direction,
    endpoint_flags: u32,
    peer_identity: u32,
    peer_entry: Option<PolicyValue>,
    any_peer_entry: Option<PolicyValue>,
) -> PolicyVerdict {
    if peer_identity == IDENTITY_HOST {
        return PolicyVerdict::AllowedHost;
    }
    if endpoint_flags & ENDPOINT_POLICY_PENDING != 0 {
        return PolicyVerdict::Pending;
    }
    if endpoint_flags & direction.isolation_flag() == 0 {
        return PolicyVerdict::AllowedNotIsolated;
    }
    // An unknown cluster address has no identity of its own: an entry that
    // seems to name it (ANY is never an address's identity either) must not
    // count; only a rule allowing every peer does.
    let peer_has_identity = peer_identity != IDENTITY_UNKNOWN_CLUSTER && peer_identity != IDENTITY_ANY;
    if peer_has_identity && peer_entry.is_some() {
        return PolicyVerdict::AllowedByPeerRule;
    }
    if any_peer_entry.is_some() {
        return PolicyVerdict::AllowedByAnyPeerRule;
    }
    if !peer_has_identity {
        return PolicyVerdict::PeerUnknown;
    }
    match direction {
        Direction::Ingress => PolicyVerdict::DeniedIngress,
        Direction::Egress => PolicyVerdict::DeniedEgress,
    }
}

/// Does the local pod's entry make a judgement in `direction` depend on the
/// peer (isolated that way, or pending)? When not, the verdict is
/// [`PolicyVerdict::AllowedNotIsolated`] without a lookup.
pub const fn needs_judgement(endpoint_flags: u32, direction: Direction) -> bool {
    endpoint_flags & (direction.isolation_flag() | ENDPOINT_POLICY_PENDING) != 0
}

/// `POLICY_STATS`' slot for `verdict` in `direction`: the directions of one
/// verdict side by side (as `counters::drop_slot`), so a verdict appended
/// later adds slots at the end and a migration copying by index keeps every
/// count in place.
pub const fn policy_stat_slot(direction: Direction, verdict: PolicyVerdict) -> u32 {
    verdict as u32 * 2 + direction as u32
}

/// Slots in `POLICY_STATS`: every verdict in both directions.
pub const POLICY_STAT_SLOTS: u32 = PolicyVerdict::COUNT * 2;

/// `PolicyEvent::policy_ref` / `CtEntry::*_ref` when no rule decided
/// (not isolated, the node, a denial, not judged here).
pub const POLICY_REF_NONE: u32 = u32::MAX;

/// Value of `POLICY_STATE` (array of one): what every judgement shares.
///
/// Written by the agent: `service_cidr_*` once at start (where it writes
/// `NODE_CONFIG`), `epoch` bumped (wrapping) after each policy change it
/// applied completely. Read by the programs: the epoch on every
/// `POLICY_CT` hit, the service CIDR when judging a new connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PolicyState {
    /// A `POLICY_CT` entry judged at another epoch is judged again on its
    /// next packet.
    pub epoch: u32,
    /// The Service CIDR (network, be) and its prefix length; 0/0: none
    /// configured. A connection from a local pod to an address in it is
    /// addressed to a ClusterIP that kube-proxy translates later, in the
    /// stack: its egress is judged where the stack hands it back, after
    /// DNAT (see docs/ARCHITECTURE.md).
    pub service_cidr_be: u32,
    pub service_prefix_len: u32,
    /// `POLICY_STATE_*` bits.
    pub flags: u32,
}

/// [`PolicyState::flags`]: an agent enforces NetworkPolicy on this node
/// (`run --kubernetes`; cleared without it). The CNI plugin's ADD then gives
/// every Kubernetes pod its policy entries from `POLICY_PODS`, or a
/// fail-closed [`ENDPOINT_POLICY_PENDING`] entry when it has none. Without
/// it (a peers-file node) ADD writes no policy entry: nothing enforces.
pub const POLICY_STATE_ENFORCING: u32 = 1;
const _: () = assert!(core::mem::size_of::<PolicyState>() == 16);

impl PolicyState {
    /// Is `addr_be` inside the service CIDR? Never with none configured.
    pub const fn in_service_cidr(&self, addr_be: u32) -> bool {
        let len = self.service_prefix_len;
        if len == 0 || len > 32 {
            return false;
        }
        let mask_be = (u32::MAX << (32 - len)).to_be();
        addr_be & mask_be == self.service_cidr_be & mask_be
    }
}

/// Key of `POLICY_CT`: a connection, stored under its **canonical** tuple
/// ([`CtKey::canonical`]: the lower address first), so a packet finds its
/// connection with one lookup whichever way it travels. The entry's
/// [`CT_CLIENT_IS_DST`] says which end opened it
/// ([`CtKey::original_direction`]). Entries written before the canonical
/// layout (up to 2026-12-06) are stored in the original direction (client
/// → server) without that flag, which reads the same: the programs look
/// the other orientation up on a miss, so such connections survive an
/// upgrade. Addresses and ports as in the packet.
///
/// Ports: TCP, UDP and SCTP their ports; ICMP echo request `src_port_be` =
/// identifier, `dst_port_be` = 0 (a reply has them the other way round, so
/// its reversed tuple is the request's); an ICMP error carries the tuple of
/// the packet it quotes, reversed (it travels against that packet); 0 for
/// anything else.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub struct CtKey {
    pub src_be: u32,
    pub dst_be: u32,
    pub src_port_be: u16,
    pub dst_port_be: u16,
    pub protocol: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<CtKey>() == 16);

impl CtKey {
    /// The tuple a reply to this packet carries.
    pub const fn reversed(self) -> CtKey {
        CtKey {
            src_be: self.dst_be,
            dst_be: self.src_be,
            src_port_be: self.dst_port_be,
            dst_port_be: self.src_port_be,
            protocol: self.protocol,
            _pad: [0; 3],
        }
    }

    /// The key a connection carrying this packet is stored under: its
    /// tuple with the lower endpoint (address, then port, as numbers)
    /// first, and whether that is this tuple reversed (the packet travels
    /// from the key's `dst` to its `src`).
    pub const fn canonical(self) -> (CtKey, bool) {
        let (src, dst) = (u32::from_be(self.src_be), u32::from_be(self.dst_be));
        let swap = src > dst || (src == dst && u16::from_be(self.src_port_be) > u16::from_be(self.dst_port_be));
        if swap {
            (self.reversed(), true)
        } else {
            (self, false)
        }
    }

    /// The connection's original direction (client → server) of an entry
    /// stored under this key with `flags`.
    pub const fn original_direction(self, flags: u32) -> CtKey {
        if flags & CT_CLIENT_IS_DST != 0 {
            self.reversed()
        } else {
            self
        }
    }
}

/// The IPv6 twin of [`CtKey`], key of `POLICY_CT6`: the same canonical
/// layout (lower address first, as 128-bit numbers: the bytes compared in
/// order, since they are big-endian), the same ports. ICMPv6: an echo
/// request (128) keyed by its identifier as `src_port_be`, a reply (129)
/// as `dst_port_be`; an error (1 to 4) carries the quoted packet's tuple,
/// reversed.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub struct CtKey6 {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub src_port_be: u16,
    pub dst_port_be: u16,
    pub protocol: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<CtKey6>() == 40);

impl CtKey6 {
    /// The tuple a reply to this packet carries.
    pub const fn reversed(self) -> CtKey6 {
        CtKey6 {
            src: self.dst,
            dst: self.src,
            src_port_be: self.dst_port_be,
            dst_port_be: self.src_port_be,
            protocol: self.protocol,
            _pad: [0; 3],
        }
    }

    /// As [`CtKey::canonical`].
    pub const fn canonical(self) -> (CtKey6, bool) {
        let order = compare6(&self.src, &self.dst);
        let swap = order > 0 || (order == 0 && u16::from_be(self.src_port_be) > u16::from_be(self.dst_port_be));
        if swap {
            (self.reversed(), true)
        } else {
            (self, false)
        }
    }

    /// As [`CtKey::original_direction`].
    pub const fn original_direction(self, flags: u32) -> CtKey6 {
        if flags & CT_CLIENT_IS_DST != 0 {
            self.reversed()
        } else {
            self
        }
    }
}

/// -1, 0, 1: `a` below, equal to, above `b` as 128-bit big-endian numbers.
/// A bounded loop the verifier accepts (16 steps, unrolled).
#[inline(always)]
pub const fn compare6(a: &[u8; 16], b: &[u8; 16]) -> i32 {
    let mut i = 0;
    while i < 16 {
        if a[i] != b[i] {
            return if a[i] < b[i] { -1 } else { 1 };
        }
        i += 1;
    }
    0
}

/// ICMPv6 types (RFC 4443, RFC 4861).
pub const ICMP6_DEST_UNREACH: u8 = 1;
pub const ICMP6_PACKET_TOO_BIG: u8 = 2;
pub const ICMP6_TIME_EXCEEDED: u8 = 3;
pub const ICMP6_PARAMETER_PROBLEM: u8 = 4;
pub const ICMP6_ECHO_REQUEST: u8 = 128;
pub const ICMP6_ECHO_REPLY: u8 = 129;
/// Router solicitation; router advert, neighbour solicitation and advert,
/// redirect follow (134..=137).
pub const ICMP6_ROUTER_SOLICIT: u8 = 133;
pub const ICMP6_REDIRECT: u8 = 137;
/// IANA protocol number of ICMPv6.
pub const IPPROTO_ICMPV6: u8 = 58;

/// Is this IPv6 packet outside NetworkPolicy altogether? Link-scope
/// traffic (either address link-local `fe80::/10`, link-local-scope
/// multicast `ff02::/16`, or the unspecified source of duplicate address
/// detection) never leaves the link and is how a pod keeps its IPv6 at all:
/// neighbour discovery for its gateway, MLD. Neighbour discovery between
/// global addresses (a unicast neighbour solicitation confirming
/// reachability) is exempt too (`icmp6_type` 133..=137, only read when
/// `next_header` is ICMPv6). The Kubernetes API has no way to name any of
/// it: blocking it would cut the pod off, not apply a policy.
pub fn policy_exempt6(src: &[u8; 16], dst: &[u8; 16], next_header: u8, icmp6_type: u8) -> bool {
    if crate::verdict::ipv6_link_local_or_unspecified(src)
        || crate::verdict::ipv6_link_scope(src)
        || crate::verdict::ipv6_link_scope(dst)
    {
        return true;
    }
    next_header == IPPROTO_ICMPV6 && (ICMP6_ROUTER_SOLICIT..=ICMP6_REDIRECT).contains(&icmp6_type)
}

/// `CtEntry::flags`: the client's egress was judged (the client is a pod
/// of this node).
pub const CT_EGRESS_JUDGED: u32 = 1;
/// `CtEntry::flags`: the server's ingress was judged (a pod of this node).
pub const CT_INGRESS_JUDGED: u32 = 2;
/// `CtEntry::flags`: the client's egress is judged elsewhere: the server
/// address is in the service CIDR (judged after kube-proxy's DNAT).
pub const CT_EGRESS_DEFERRED: u32 = 4;
/// `CtEntry::flags`: a packet in the reply direction was seen (for TCP:
/// established; the GC gives such entries the longer timeout).
pub const CT_REPLY_SEEN: u32 = 8;
/// `CtEntry::flags`: the connection's client is its key's `dst` end (the
/// client had the higher address: see [`CtKey::canonical`]). Without it the
/// client is the key's `src`, which is also what an entry written before
/// the canonical layout means.
pub const CT_CLIENT_IS_DST: u32 = 16;

/// Value of `POLICY_CT` (LRU hash, key [`CtKey`]): an allowed connection.
///
/// Written by the programs when they allow a new connection (or re-judge
/// one at a new epoch); `last_seen_ns` refreshed by its packets (at most
/// about once a second). Deleted by the programs when a re-judgement
/// denies it, and by the agent's GC when idle past its protocol's timeout.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CtEntry {
    /// `PolicyState::epoch` when it was judged.
    pub epoch: u32,
    /// `CT_*` bits.
    pub flags: u32,
    /// CLOCK_MONOTONIC of its last packet, as `bpf_ktime_get_coarse_ns`
    /// reads it (the clock's value at the last tick: at most a tick behind
    /// `bpf_ktime_get_ns`, for a fraction of its cost).
    pub last_seen_ns: u64,
    /// The policy whose rule allowed the client's egress, or
    /// [`POLICY_REF_NONE`].
    pub egress_ref: u32,
    /// The same for the server's ingress.
    pub ingress_ref: u32,
}
const _: () = assert!(core::mem::size_of::<CtEntry>() == 24);

/// Key of `POLICY_PODS`: "namespace/name" in UTF-8, zero padded (a
/// namespace is at most 63 bytes, a pod name 253).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodNameKey {
    pub bytes: [u8; POD_NAME_KEY_BYTES],
}
const _: () = assert!(core::mem::size_of::<PodNameKey>() == 320);

/// Bytes of a [`PodNameKey`].
pub const POD_NAME_KEY_BYTES: usize = 320;

impl PodNameKey {
    /// The key of `namespace/name`; `None` when it does not fit.
    pub fn new(namespace: &str, name: &str) -> Option<Self> {
        let (ns, n) = (namespace.as_bytes(), name.as_bytes());
        if ns.len() + 1 + n.len() > POD_NAME_KEY_BYTES {
            return None;
        }
        let mut bytes = [0u8; POD_NAME_KEY_BYTES];
        bytes[..ns.len()].copy_from_slice(ns);
        bytes[ns.len()] = b'/';
        bytes[ns.len() + 1..ns.len() + 1 + n.len()].copy_from_slice(n);
        Some(Self { bytes })
    }

    /// The "namespace/name" it holds (up to the first zero byte).
    pub fn as_str(&self) -> Option<&str> {
        let end = self.bytes.iter().position(|&b| b == 0).unwrap_or(POD_NAME_KEY_BYTES);
        core::str::from_utf8(&self.bytes[..end]).ok()
    }
}

/// Value of `POLICY_PODS` (hash, user space only): the policy entry a pod
/// gets when it starts. Written by the agent for every pod of this node it
/// knows (before the runtime asks for the pod's network); read by the CNI
/// plugin at ADD, which copies `endpoint` into `POLICY_ENDPOINTS` under the
/// pod's new address before it returns (no gap for a new pod).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PodPolicy {
    pub endpoint: EndpointPolicy,
    /// The pod's identity (what `POLICY_IDENTITIES` gets for its IPv4
    /// address).
    pub identity: u32,
    /// What `POLICY_IDENTITIES6` gets for its IPv6 address: the same as
    /// `identity` unless an ipBlock holds one of its addresses and not the
    /// other. `IDENTITY_ANY` (0, what an agent before IPv6 policy left in
    /// this word): take `identity`.
    pub identity6: u32,
}
const _: () = assert!(core::mem::size_of::<PodPolicy>() == 16);

impl PodPolicy {
    /// The identity for the pod's IPv6 address (see `identity6`).
    pub const fn identity_for_ipv6(&self) -> u32 {
        if self.identity6 == IDENTITY_ANY {
            self.identity
        } else {
            self.identity6
        }
    }
}

/// One verdict for `sluice-agent monitor --type policy`: written into
/// the ring buffers of the monitor slots subscribed to policy events
/// (`events::policy_bit`), once per judged direction of a new connection
/// (and of a re-judged one). Its first 9 bytes are laid out as
/// `events::DatapathEvent`'s (`ts_ns`, then `kind` = `events::EVENT_POLICY`),
/// so a reader tells the records apart by `kind`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PolicyEvent {
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC).
    pub ts_ns: u64,
    /// `events::EVENT_POLICY`.
    pub kind: u8,
    /// `Direction`: the local pod's side the verdict is for.
    pub direction: u8,
    /// IANA protocol number.
    pub protocol: u8,
    /// `PolicyVerdict`.
    pub verdict: u8,
    /// The allowing entry's `PolicyValue::policy_ref`, or
    /// [`POLICY_REF_NONE`].
    pub policy_ref: u32,
    /// The connection's client and server (original direction), as in the
    /// packet (network order); ports as in [`CtKey`].
    pub saddr_be: u32,
    pub daddr_be: u32,
    pub sport_be: u16,
    pub dport_be: u16,
    /// The interface the judging program runs on.
    pub ifindex: u32,
}
const _: () = assert!(core::mem::size_of::<PolicyEvent>() == 32);

/// The IPv6 twin of [`PolicyEvent`] (`kind` = `events::EVENT_POLICY6`),
/// written to the same subscribers; first 9 bytes laid out alike.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PolicyEvent6 {
    pub ts_ns: u64,
    /// `events::EVENT_POLICY6`.
    pub kind: u8,
    pub direction: u8,
    pub protocol: u8,
    pub verdict: u8,
    pub policy_ref: u32,
    /// Client and server (original direction); ports as in [`CtKey6`].
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport_be: u16,
    pub dport_be: u16,
    pub ifindex: u32,
}
const _: () = assert!(core::mem::size_of::<PolicyEvent6>() == 56);

/// Value of `POLICY_SCRATCH6` (per-CPU array of one): the IPv6 judgement's
/// working memory. An IPv6 tuple is 40 bytes and the judgement needs two
/// of them, a 56-byte monitor record and a new entry; on the stack they would not fit
/// Linux's 512 bytes beside the calling program's frame. Only the program
/// running on this CPU uses it, for the duration of one run. User space
/// never reads it (pinned like every map).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PolicyScratch6 {
    /// The packet's tuple (then the connection's original direction).
    pub key: CtKey6,
    /// The key the connection is (to be) stored under.
    pub stored: CtKey6,
    pub event: PolicyEvent6,
    /// A new connection's entry, before it is inserted.
    pub entry: CtEntry,
}
const _: () = assert!(core::mem::size_of::<PolicyScratch6>() == 160);

#[cfg(feature = "user")]
mod pod_impls {
    unsafe impl aya::Pod for super::PolicyState {}
    unsafe impl aya::Pod for super::CtKey {}
    unsafe impl aya::Pod for super::CtKey6 {}
    unsafe impl aya::Pod for super::PolicyEvent6 {}
    unsafe impl aya::Pod for super::PolicyScratch6 {}
    unsafe impl aya::Pod for super::CtEntry {}
    unsafe impl aya::Pod for super::PodNameKey {}
    unsafe impl aya::Pod for super::PodPolicy {}
    unsafe impl aya::Pod for super::PolicyEvent {}
    unsafe impl aya::Pod for super::PeerIdentity {}
    unsafe impl aya::Pod for super::EndpointPolicy {}
    unsafe impl aya::Pod for super::PolicyKey {}
    unsafe impl aya::Pod for super::PolicyValue {}
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD: u32 = IDENTITY_FIRST_ALLOCATED + 7;
    const V: Option<PolicyValue> = Some(PolicyValue { policy_ref: 3 });
    const BOTH: u32 = ENDPOINT_INGRESS_ISOLATED | ENDPOINT_EGRESS_ISOLATED;

    type Row = (Direction, u32, u32, Option<PolicyValue>, Option<PolicyValue>, PolicyVerdict);

    #[test]
    fn verdict_table() {
        use Direction::*;
        use PolicyVerdict::*;
        #[rustfmt::skip]
        let rows: &[Row] = &[
            // not isolated this way: allowed whatever the entries say
            (Ingress, 0, POD, None, None, AllowedNotIsolated),
            (Ingress, ENDPOINT_EGRESS_ISOLATED, POD, None, None, AllowedNotIsolated),
            (Egress, ENDPOINT_INGRESS_ISOLATED, IDENTITY_WORLD, None, None, AllowedNotIsolated),
            (Egress, 0, IDENTITY_UNKNOWN_CLUSTER, None, None, AllowedNotIsolated),
            // own node: always
            (Ingress, BOTH, IDENTITY_HOST, None, None, AllowedHost),
            (Egress, BOTH, IDENTITY_HOST, None, None, AllowedHost),
            // isolated: an entry for the peer, or for every peer
            (Ingress, BOTH, POD, V, None, AllowedByPeerRule),
            (Ingress, BOTH, POD, V, V, AllowedByPeerRule),
            (Ingress, BOTH, POD, None, V, AllowedByAnyPeerRule),
            (Egress, BOTH, IDENTITY_WORLD, None, V, AllowedByAnyPeerRule),
            (Egress, ENDPOINT_EGRESS_ISOLATED, IDENTITY_WORLD, V, None, AllowedByPeerRule),
            (Ingress, BOTH, IDENTITY_REMOTE_NODE, V, None, AllowedByPeerRule),
            // isolated, nothing allows: the direction's own denial
            (Ingress, BOTH, POD, None, None, DeniedIngress),
            (Egress, BOTH, POD, None, None, DeniedEgress),
            (Ingress, ENDPOINT_INGRESS_ISOLATED, IDENTITY_WORLD, None, None, DeniedIngress),
            (Egress, ENDPOINT_EGRESS_ISOLATED, IDENTITY_REMOTE_NODE, None, None, DeniedEgress),
            // unknown cluster address: only an every-peer entry helps
            (Ingress, BOTH, IDENTITY_UNKNOWN_CLUSTER, None, None, PeerUnknown),
            (Egress, BOTH, IDENTITY_UNKNOWN_CLUSTER, V, None, PeerUnknown),
            (Ingress, BOTH, IDENTITY_UNKNOWN_CLUSTER, V, V, AllowedByAnyPeerRule),
            (Ingress, BOTH, IDENTITY_ANY, V, None, PeerUnknown),
            // pending (the CNI plugin's fail-closed entry): only the node
            (Ingress, ENDPOINT_POLICY_PENDING, POD, V, V, Pending),
            (Egress, ENDPOINT_POLICY_PENDING, IDENTITY_WORLD, None, V, Pending),
            (Egress, ENDPOINT_POLICY_PENDING | BOTH, IDENTITY_UNKNOWN_CLUSTER, None, None, Pending),
            (Ingress, ENDPOINT_POLICY_PENDING, IDENTITY_HOST, None, None, AllowedHost),
        ];
        for (i, &(dir, flags, id, peer, any, want)) in rows.iter().enumerate() {
            let got = policy_verdict(dir, flags, id, peer, any);
            assert_eq!(got, want, "row {i}: {dir:?} flags {flags} identity {id} peer {peer:?} any {any:?}");
            assert_eq!(
                got.allowed(),
                matches!(want, AllowedNotIsolated | AllowedHost | AllowedByPeerRule | AllowedByAnyPeerRule)
            );
        }
    }

    #[test]
    fn denial_names_are_their_drop_reasons() {
        for v in PolicyVerdict::ALL {
            match v.drop_reason() {
                Some(reason) => {
                    assert!(!v.allowed(), "{v:?}");
                    assert_eq!(v.name(), reason.name(), "{v:?}");
                }
                None => assert!(v.allowed(), "{v:?} denies without a reason"),
            }
        }
        assert_eq!(PolicyVerdict::Pending.drop_reason(), Some(DropReason::PolicyPending));
    }

    // `POLICY_STATS` is indexed by these numbers and the metrics carry
    // the names: a row never changes, new verdicts go at the end.
    const VERDICTS: &[(PolicyVerdict, u32, &str)] = &crate::golden::golden!(PolicyVerdict {
        AllowedNotIsolated = 0, "allowed_not_isolated";
        AllowedHost = 1, "allowed_host";
        AllowedByPeerRule = 2, "allowed_by_peer_rule";
        AllowedByAnyPeerRule = 3, "allowed_by_any_peer_rule";
        DeniedIngress = 4, "policy_denied_ingress";
        DeniedEgress = 5, "policy_denied_egress";
        PeerUnknown = 6, "policy_peer_unknown";
        Pending = 7, "policy_pending";
    });

    #[test]
    fn verdicts_match_the_golden_table() {
        crate::golden::check(VERDICTS, &PolicyVerdict::ALL, PolicyVerdict::COUNT, |v| v as u32, PolicyVerdict::name);
    }

    #[test]
    fn stat_slots_cover_every_verdict_and_direction_once() {
        let mut seen = [false; POLICY_STAT_SLOTS as usize];
        for v in PolicyVerdict::ALL {
            for d in [Direction::Ingress, Direction::Egress] {
                let slot = policy_stat_slot(d, v) as usize;
                assert!(!seen[slot], "{v:?} {d:?}");
                seen[slot] = true;
            }
        }
        assert!(seen.iter().all(|s| *s));
        assert_eq!(policy_stat_slot(Direction::Egress, PolicyVerdict::AllowedNotIsolated), 1);
    }

    #[test]
    fn service_cidr_membership() {
        let be = |a: [u8; 4]| u32::from_ne_bytes(a);
        let state = PolicyState { service_cidr_be: be([10, 96, 0, 0]), service_prefix_len: 12, ..Default::default() };
        assert!(state.in_service_cidr(be([10, 96, 0, 10])));
        assert!(state.in_service_cidr(be([10, 111, 255, 255])));
        assert!(!state.in_service_cidr(be([10, 112, 0, 1])));
        assert!(!state.in_service_cidr(be([10, 244, 1, 2])));
        assert!(!PolicyState::default().in_service_cidr(be([10, 96, 0, 10])), "none configured");
        let host = PolicyState { service_cidr_be: be([10, 96, 0, 10]), service_prefix_len: 32, ..Default::default() };
        assert!(host.in_service_cidr(be([10, 96, 0, 10])) && !host.in_service_cidr(be([10, 96, 0, 11])));
    }

    #[test]
    fn pending_needs_a_judgement_both_ways() {
        assert!(!needs_judgement(0, Direction::Ingress));
        assert!(!needs_judgement(ENDPOINT_EGRESS_ISOLATED, Direction::Ingress));
        assert!(needs_judgement(ENDPOINT_EGRESS_ISOLATED, Direction::Egress));
        assert!(needs_judgement(ENDPOINT_POLICY_PENDING, Direction::Ingress));
        assert!(needs_judgement(ENDPOINT_POLICY_PENDING, Direction::Egress));
    }

    #[test]
    fn ct_key_reversed_twice_is_itself() {
        let k = CtKey { src_be: 1, dst_be: 2, src_port_be: 3, dst_port_be: 4, protocol: 6, _pad: [0; 3] };
        assert_eq!(k.reversed(), CtKey { src_be: 2, dst_be: 1, src_port_be: 4, dst_port_be: 3, ..k });
        assert_eq!(k.reversed().reversed(), k);
    }

    #[test]
    fn a_connection_has_one_canonical_key_whichever_way_its_packets_go() {
        let be = |a: [u8; 4]| u32::from_ne_bytes(a);
        let low = be([10, 244, 1, 200]);
        let high = be([10, 244, 2, 3]); // higher as a number, not as the be u32 bytes read natively
        let up = CtKey {
            src_be: low,
            dst_be: high,
            src_port_be: 40000u16.to_be(),
            dst_port_be: 80u16.to_be(),
            protocol: 6,
            _pad: [0; 3],
        };
        assert_eq!(up.canonical(), (up, false));
        assert_eq!(up.reversed().canonical(), (up, true));
        // Same address: the lower port first.
        let hairpin = CtKey { dst_be: low, ..up };
        assert_eq!(hairpin.canonical(), (hairpin.reversed(), true));
        assert_eq!(hairpin.reversed().canonical(), (hairpin.reversed(), false));
        // The client recorded in the flags gives the original direction back.
        let (stored, client_is_dst) = up.reversed().canonical();
        assert!(client_is_dst);
        assert_eq!(stored.original_direction(CT_CLIENT_IS_DST | CT_REPLY_SEEN), up.reversed());
        assert_eq!(stored.original_direction(CT_REPLY_SEEN), up);
    }

    #[test]
    fn pod_name_keys() {
        let k = PodNameKey::new("x", "a").unwrap();
        assert_eq!(&k.bytes[..4], b"x/a\0");
        assert_eq!(k.as_str(), Some("x/a"));
        let long = "n".repeat(253);
        assert_eq!(PodNameKey::new(&"s".repeat(63), &long).unwrap().as_str().unwrap().len(), 317);
        assert!(PodNameKey::new(&"s".repeat(67), &long).is_none(), "too long is refused, never cut");
    }

    #[test]
    fn key_bytes_are_big_endian_in_field_order() {
        let k = PolicyKey::probe(0x0102_0304, 0x0506_0708, Direction::Egress, 6, 0x0950);
        assert_eq!(k.bytes(), [1, 2, 3, 4, 5, 6, 7, 8, DIRECTION_EGRESS, 6, 0x09, 0x50]);
    }

    #[test]
    fn prefixes_cover_what_their_length_says() {
        let probe = PolicyKey::probe(9, POD, Direction::Ingress, 6, 8080);
        let exact = PolicyKey::probe(9, POD, Direction::Ingress, 6, 8080);
        let other_port = PolicyKey::probe(9, POD, Direction::Ingress, 6, 8081);
        let any_port = PolicyKey::probe(9, POD, Direction::Ingress, 6, 0);
        let udp = PolicyKey::probe(9, POD, Direction::Ingress, 17, 0);
        let any_proto = PolicyKey::probe(9, POD, Direction::Ingress, 0, 0);
        let egress = PolicyKey::probe(9, POD, Direction::Egress, 0, 0);
        let other_set = PolicyKey::probe(10, POD, Direction::Ingress, 0, 0);
        // 8080 = 0x1F90: 8064..=8095 is the /11 of the port (prefix 80 + 11)
        let range = PolicyKey::probe(9, POD, Direction::Ingress, 6, 8064);
        assert!(exact.covers(POLICY_PREFIX_EXACT_PORT, &probe));
        assert!(!other_port.covers(POLICY_PREFIX_EXACT_PORT, &probe));
        assert!(any_port.covers(POLICY_PREFIX_ANY_PORT, &probe));
        assert!(!udp.covers(POLICY_PREFIX_ANY_PORT, &probe));
        assert!(any_proto.covers(POLICY_PREFIX_ANY_PROTOCOL, &probe));
        assert!(!egress.covers(POLICY_PREFIX_ANY_PROTOCOL, &probe));
        assert!(!other_set.covers(POLICY_PREFIX_ANY_PROTOCOL, &probe));
        assert!(range.covers(POLICY_PREFIX_ANY_PORT + 11, &probe));
        assert!(!range.covers(POLICY_PREFIX_ANY_PORT + 12, &PolicyKey::probe(9, POD, Direction::Ingress, 6, 8080)));
    }

    fn a6(s: &str) -> [u8; 16] {
        s.parse::<core::net::Ipv6Addr>().unwrap().octets()
    }

    #[test]
    fn an_ipv6_connection_is_stored_under_one_key_whichever_way_a_packet_goes() {
        let key = CtKey6 {
            src: a6("fd00::9"),
            dst: a6("fd00::1:2"),
            src_port_be: 40000u16.to_be(),
            dst_port_be: 80u16.to_be(),
            protocol: 6,
            _pad: [0; 3],
        };
        let (stored, swapped) = key.canonical();
        assert!(!swapped, "fd00::9 is below fd00::1:2 as a number");
        assert_eq!(key.reversed().canonical(), (stored, true));
        assert_eq!(stored.original_direction(CT_CLIENT_IS_DST), key.reversed());
        // Same address: the lower port first.
        let hairpin = CtKey6 { dst: key.src, ..key };
        assert!(hairpin.canonical().1, "40000 > 80");
        assert_eq!(compare6(&a6("fd00::1"), &a6("fd00::2")), -1);
        assert_eq!(compare6(&a6("fe00::"), &a6("fd00::ffff")), 1);
    }

    #[test]
    fn link_scope_and_neighbour_discovery_are_outside_policy() {
        let (pod, peer) = (a6("fd00:244:0:1::3"), a6("fd00:244:0:2::7"));
        assert!(policy_exempt6(&a6("fe80::1"), &pod, 6, 0), "from the gateway's link-local");
        assert!(policy_exempt6(&pod, &a6("fe80::1"), 17, 0), "to it");
        assert!(policy_exempt6(&pod, &a6("ff02::1:ff00:1"), IPPROTO_ICMPV6, 135), "multicast solicitation");
        assert!(policy_exempt6(&a6("::"), &a6("ff02::1:ff00:3"), IPPROTO_ICMPV6, 135), "DAD");
        for nd in 133..=137 {
            assert!(policy_exempt6(&peer, &pod, IPPROTO_ICMPV6, nd), "ND type {nd} between global addresses");
        }
        assert!(!policy_exempt6(&peer, &pod, IPPROTO_ICMPV6, ICMP6_ECHO_REQUEST));
        assert!(!policy_exempt6(&peer, &pod, IPPROTO_ICMPV6, ICMP6_PACKET_TOO_BIG));
        assert!(!policy_exempt6(&peer, &pod, 6, 135), "135 means ND only in ICMPv6");
        assert!(!policy_exempt6(&peer, &a6("ff05::2"), 17, 0), "site-scope multicast is judged");
    }
}
