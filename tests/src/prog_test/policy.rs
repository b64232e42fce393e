//! NetworkPolicy set-up and read-back for the program-level tests: what the
//! agent's reconciler would write into the `POLICY_*` maps, written through
//! the agent's own typed wrappers (`sluice_node::datapath::policy_maps`).
use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::Result;
use sluice_common::policy::{
    CtEntry, CtKey, CtKey6, Direction, EndpointPolicy, PolicyKey, PolicyValue, PolicyVerdict, IDENTITY_HOST,
    IDENTITY_UNKNOWN_CLUSTER, POLICY_PREFIX_ANY_PORT, POLICY_PREFIX_ANY_PROTOCOL, POLICY_PREFIX_EXACT_PORT,
};
use sluice_node::datapath::policy_maps::{
    PolicyCt, PolicyCt6, PolicyEndpoints, PolicyEndpoints6, PolicyIdentities, PolicyIdentities6, PolicyRules,
    PolicyState, PolicyStats,
};

use super::{be, TestDatapath, NODE_IP};

/// IANA protocol numbers.
pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const SCTP: u8 = 132;

/// The cluster CIDR the policy tests' nodes use (unknown addresses in it
/// are `IDENTITY_UNKNOWN_CLUSTER`).
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// Their service CIDR.
pub const SERVICE_CIDR: &str = "10.96.0.0/12";

/// Which ports an allow entry covers.
#[derive(Clone, Copy, Debug)]
pub enum Ports {
    /// Every protocol, every port (a rule without `ports`).
    Any,
    /// Every port of one protocol.
    AllOf(u8),
    /// One port of one protocol.
    One(u8, u16),
    /// An aligned block of one protocol's ports: those sharing `first`'s
    /// top `bits` bits (`policy/entries.rs` tiles an `endPort` range into
    /// such blocks).
    Block { protocol: u8, first: u16, bits: u32 },
}

impl TestDatapath {
    /// The node's policy state as the agent leaves it at start: the node's
    /// own address is `IDENTITY_HOST`, the cluster CIDR
    /// `IDENTITY_UNKNOWN_CLUSTER`, the service CIDR recorded.
    pub fn policy_node(&self) -> Result<()> {
        let mut ids = PolicyIdentities::open(self.pins())?;
        ids.insert(format!("{NODE_IP}/32").parse()?, IDENTITY_HOST)?;
        ids.insert(CLUSTER_CIDR.parse()?, IDENTITY_UNKNOWN_CLUSTER)?;
        PolicyState::open(self.pins())?.set_service_cidr(Some(SERVICE_CIDR.parse()?))
    }

    /// `POLICY_IDENTITIES[addr/32]` = `identity`.
    pub fn identity(&self, addr: Ipv4Addr, identity: u32) -> Result<()> {
        PolicyIdentities::open(self.pins())?.insert(format!("{addr}/32").parse()?, identity)
    }

    /// `POLICY_ENDPOINTS[pod]` = rule set `rules_id`, `flags`.
    pub fn isolate(&self, pod: Ipv4Addr, rules_id: u32, flags: u32) -> Result<()> {
        PolicyEndpoints::open(self.pins())?.insert(pod, EndpointPolicy { rules_id, flags })
    }

    /// An allow entry in rule set `rules_id` for peer `identity` (or
    /// `IDENTITY_ANY`), naming policy `policy_ref`.
    pub fn allow(&self, rules_id: u32, identity: u32, dir: Direction, ports: Ports, policy_ref: u32) -> Result<()> {
        let (prefix, key) = match ports {
            Ports::Any => (POLICY_PREFIX_ANY_PROTOCOL, PolicyKey::probe(rules_id, identity, dir, 0, 0)),
            Ports::AllOf(p) => (POLICY_PREFIX_ANY_PORT, PolicyKey::probe(rules_id, identity, dir, p, 0)),
            Ports::One(p, port) => (POLICY_PREFIX_EXACT_PORT, PolicyKey::probe(rules_id, identity, dir, p, port)),
            Ports::Block { protocol, first, bits } => {
                (POLICY_PREFIX_ANY_PORT + bits, PolicyKey::probe(rules_id, identity, dir, protocol, first))
            }
        };
        PolicyRules::open(self.pins())?.insert(prefix, key, PolicyValue { policy_ref })
    }

    /// Remove an allow entry `allow` wrote.
    pub fn revoke(&self, rules_id: u32, identity: u32, dir: Direction, ports: Ports) -> Result<()> {
        let (prefix, key) = match ports {
            Ports::Any => (POLICY_PREFIX_ANY_PROTOCOL, PolicyKey::probe(rules_id, identity, dir, 0, 0)),
            Ports::AllOf(p) => (POLICY_PREFIX_ANY_PORT, PolicyKey::probe(rules_id, identity, dir, p, 0)),
            Ports::One(p, port) => (POLICY_PREFIX_EXACT_PORT, PolicyKey::probe(rules_id, identity, dir, p, port)),
            Ports::Block { protocol, first, bits } => {
                (POLICY_PREFIX_ANY_PORT + bits, PolicyKey::probe(rules_id, identity, dir, protocol, first))
            }
        };
        PolicyRules::open(self.pins())?.remove(prefix, key)
    }

    /// What the agent does after applying a change: the next epoch.
    pub fn bump_epoch(&self) -> Result<u32> {
        PolicyState::open(self.pins())?.bump_epoch()
    }

    /// Every nonzero verdict count, as `(direction, verdict, count)`.
    pub fn verdicts(&self) -> Result<Vec<(Direction, PolicyVerdict, u64)>> {
        Ok(PolicyStats::open(self.pins())?
            .all()?
            .into_iter()
            .filter(|c| c.count != 0)
            .map(|c| (c.direction, c.verdict, c.count))
            .collect())
    }

    /// Every `POLICY_CT` entry, keyed by its connection's original
    /// direction (client → server), whatever key it is stored under.
    pub fn connections(&self) -> Result<Vec<(CtKey, CtEntry)>> {
        Ok(self.stored_connections()?.into_iter().map(|(k, e)| (k.original_direction(e.flags), e)).collect())
    }

    /// `POLICY_IDENTITIES6[prefix]` = `identity` (an address: `/128`).
    pub fn identity6(&self, prefix: &str, identity: u32) -> Result<()> {
        let prefix = if prefix.contains('/') { prefix.to_string() } else { format!("{prefix}/128") };
        PolicyIdentities6::open(self.pins())?.insert(prefix.parse()?, identity)
    }

    /// `POLICY_ENDPOINTS6[pod]` = rule set `rules_id`, `flags`.
    pub fn isolate6(&self, pod: Ipv6Addr, rules_id: u32, flags: u32) -> Result<()> {
        PolicyEndpoints6::open(self.pins())?.insert(pod, EndpointPolicy { rules_id, flags })
    }

    /// Every `POLICY_CT6` entry in its original direction.
    pub fn connections6(&self) -> Result<Vec<(CtKey6, CtEntry)>> {
        Ok(PolicyCt6::open(self.pins())?.all()?.into_iter().map(|(k, e)| (k.original_direction(e.flags), e)).collect())
    }

    /// Every `POLICY_CT` entry under the key it is stored under.
    pub fn stored_connections(&self) -> Result<Vec<(CtKey, CtEntry)>> {
        PolicyCt::open(self.pins())?.all()
    }
}

/// A `CtKey` in a packet's direction (the programs store a connection
/// under `CtKey::canonical` of its first packet's).
pub fn ct_key(src: &str, dst: &str, src_port: u16, dst_port: u16, protocol: u8) -> CtKey {
    CtKey {
        src_be: be(super::ip(src)),
        dst_be: be(super::ip(dst)),
        src_port_be: src_port.to_be(),
        dst_port_be: dst_port.to_be(),
        protocol,
        _pad: [0; 3],
    }
}

/// A `CtKey6` in a packet's direction.
pub fn ct_key6(src: &str, dst: &str, src_port: u16, dst_port: u16, protocol: u8) -> CtKey6 {
    CtKey6 {
        src: super::packet::ip6(src).octets(),
        dst: super::packet::ip6(dst).octets(),
        src_port_be: src_port.to_be(),
        dst_port_be: dst_port.to_be(),
        protocol,
        _pad: [0; 3],
    }
}

/// The dual-stack twins: pods a and b's IPv6 addresses (same identities
/// and rule sets as their IPv4), the remote pod's, the node's, the
/// cluster's and this node's IPv6 pod CIDRs.
pub const A6: &str = "fd00:244:0:1::2";
pub const B6: &str = "fd00:244:0:1::3";
pub const REMOTE6: &str = "fd00:244:0:2::7";
pub const NODE_IP6: &str = "fd00:30::1";
pub const CLUSTER_CIDR6: &str = "fd00:244::/48";
pub const POD_CIDR6: &str = "fd00:244:0:1::/64";

/// Local pod a, its identity and rule set.
pub const A: &str = "10.244.1.2";
pub const A_ID: u32 = 300;
pub const A_RULES: u32 = 10;
/// Local pod b.
pub const B: &str = "10.244.1.3";
pub const B_ID: u32 = 301;
pub const B_RULES: u32 = 20;
/// A pod on the native peer node (`NATIVE_PEER_CIDR`).
pub const REMOTE: &str = "10.244.2.7";
pub const REMOTE_ID: u32 = 302;
/// A ClusterIP (inside `SERVICE_CIDR`).
pub const CLUSTER_IP: &str = "10.96.0.10";

/// A configured node (`TestDatapath::node`) with the agent's start-up
/// policy state (`policy_node`), pods a and b, and identities for a, b
/// and the remote pod. No pod is isolated yet.
pub struct PolicyNode {
    pub dp: TestDatapath,
    pub a: super::Pod,
    pub b: super::Pod,
}

impl PolicyNode {
    pub fn new() -> Result<Self> {
        let dp = TestDatapath::node()?;
        dp.policy_node()?;
        let a = dp.add_pod(A)?;
        let b = dp.add_pod(B)?;
        dp.identity(super::ip(A), A_ID)?;
        dp.identity(super::ip(B), B_ID)?;
        dp.identity(super::ip(REMOTE), REMOTE_ID)?;
        Ok(Self { dp, a, b })
    }

    /// `new`, dual-stack: the node's IPv6 pod CIDR, a and b's IPv6
    /// endpoints, and the agent's IPv6 policy state: the node's IPv6 is
    /// `IDENTITY_HOST`, the cluster's IPv6 CIDR `IDENTITY_UNKNOWN_CLUSTER`,
    /// each pod's IPv6 its IPv4's identity.
    pub fn dual() -> Result<Self> {
        let n = Self::new()?;
        n.dp.dual_stack(POD_CIDR6)?;
        n.dp.endpoint6(&n.a, super::packet::ip6(A6))?;
        n.dp.endpoint6(&n.b, super::packet::ip6(B6))?;
        n.dp.identity6(NODE_IP6, IDENTITY_HOST)?;
        n.dp.identity6(CLUSTER_CIDR6, IDENTITY_UNKNOWN_CLUSTER)?;
        n.dp.identity6(A6, A_ID)?;
        n.dp.identity6(B6, B_ID)?;
        n.dp.identity6(REMOTE6, REMOTE_ID)?;
        Ok(n)
    }

    /// Ethernet addresses of a frame from the native peer to the uplink.
    pub fn from_peer(&self) -> super::L2 {
        super::L2::new([0x02, 0, 0, 0, 0, 0x02], self.dp.uplink.mac)
    }

    /// Ethernet addresses of a frame the stack sends out of pod `p`'s host
    /// end (what `to_pod` sees).
    pub fn from_stack(&self, p: &super::Pod) -> super::L2 {
        p.receives()
    }

    /// Every nonzero drop, per reason and the hook direction it was
    /// counted in.
    pub fn drops(&self) -> Result<Vec<(sluice_common::DropReason, sluice_common::HookDirection, u64)>> {
        Ok(sluice_node::datapath::pinned_maps::drop_stats(self.dp.pins())?
            .into_iter()
            .filter(|r| r.packets != 0)
            .map(|r| (r.reason, r.direction, r.packets))
            .collect())
    }
}
