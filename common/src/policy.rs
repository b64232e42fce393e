//! NetworkPolicy: the maps the datapath will enforce it from, and the pure
//! verdict it computes from their lookups (issue 25).
//!
//! **Status: contract only.** No eBPF program reads these maps yet and no
//! agent writes them; the agent's pure compiler (`agent/src/policy/`) already
//! produces their entries and evaluates them with [`policy_verdict`], which is
//! what the datapath will call. See docs/ARCHITECTURE.md, "NetworkPolicy".
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
}

impl PolicyVerdict {
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
        }
    }
}

/// The verdict for a new connection in one direction, from the lookups'
/// results. The same function runs in the programs and in the agent's
/// evaluator (`agent/src/policy/evaluate.rs`).
///
/// - `endpoint_flags`: the local pod's [`EndpointPolicy::flags`] (0 when it
///   has no entry). When the pod is not isolated in `direction`, the caller
///   may skip the other lookups and pass `None`.
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

#[cfg(feature = "user")]
mod pod_impls {
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
    fn denial_names_are_the_drop_reasons_to_be() {
        assert_eq!(PolicyVerdict::DeniedIngress.name(), "policy_denied_ingress");
        assert_eq!(PolicyVerdict::DeniedEgress.name(), "policy_denied_egress");
        assert_eq!(PolicyVerdict::PeerUnknown.name(), "policy_peer_unknown");
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
}
