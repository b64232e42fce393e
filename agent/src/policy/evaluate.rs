//! Judging a connection from the lowered maps, with exactly the datapath's
//! lookups (`common::policy::policy_verdict` over `POLICY_ENDPOINTS`,
//! `POLICY_IDENTITIES` and two `POLICY_RULES` probes), plus the policies
//! behind the verdict for `monitor` and `status`. The reference the eBPF
//! programs will be tested against, and the re-judgement of established
//! connections on a policy change.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::IpAddr,
};

use sluice_common::policy::{
    policy_verdict, Direction, PolicyKey, PolicyValue, PolicyVerdict, IDENTITY_ANY, IDENTITY_WORLD,
};

use super::{
    compile::compile_node,
    entries::{lower, lpm, NodeMaps},
    identity::IdentityAllocator,
    model::{PodKey, PolicyModel, PolicyName, Protocol},
};

impl NodeMaps {
    /// `POLICY_RULES` as the kernel's LPM trie answers a probe: the value of
    /// the longest covering entry.
    pub fn rule_lookup(&self, probe: &PolicyKey) -> Option<PolicyValue> {
        self.rules
            .iter()
            .filter(|((key, prefix_len), _)| key.covers(*prefix_len, probe))
            .max_by_key(|((_, prefix_len), _)| *prefix_len)
            .map(|(_, &v)| v)
    }

    /// The verdict for a new connection of local pod `local_ip` with
    /// `peer_ip`, in `direction`, to destination port `port`.
    pub fn judge(
        &self,
        direction: Direction,
        local_ip: impl Into<IpAddr>,
        peer_ip: impl Into<IpAddr>,
        protocol: Protocol,
        port: u16,
    ) -> Judgement {
        let (local_ip, peer_ip) = (local_ip.into(), peer_ip.into());
        let endpoint = self.endpoints.get(&local_ip).copied().unwrap_or_default();
        let peer_identity = lpm(&self.identities, peer_ip).unwrap_or(IDENTITY_WORLD);
        let probe = |identity| PolicyKey::probe(endpoint.rules_id, identity, direction, protocol.number(), port);
        let isolated = endpoint.flags & direction.isolation_flag() != 0;
        let (peer_entry, any_entry) = if isolated {
            (self.rule_lookup(&probe(peer_identity)), self.rule_lookup(&probe(IDENTITY_ANY)))
        } else {
            (None, None)
        };
        let verdict = policy_verdict(direction, endpoint.flags, peer_identity, peer_entry, any_entry);
        let allowed_by = match verdict {
            PolicyVerdict::AllowedByPeerRule => peer_entry,
            PolicyVerdict::AllowedByAnyPeerRule => any_entry,
            _ => None,
        }
        .and_then(|v| self.policy_names.get(v.policy_ref as usize).cloned());
        let isolated_by =
            self.pods_by_ip.get(&local_ip).map(|p| p.direction(direction).isolated_by.clone()).unwrap_or_default();
        Judgement { direction, verdict, allowed_by, isolated_by }
    }
}

/// A verdict and the policies behind it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Judgement {
    pub direction: Direction,
    pub verdict: PolicyVerdict,
    /// For an allow by a rule: the policy whose entry matched.
    pub allowed_by: Option<PolicyName>,
    /// The policies isolating the local pod in this direction.
    pub isolated_by: BTreeSet<PolicyName>,
}

impl fmt::Display for Judgement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let isolated_by = || self.isolated_by.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ");
        match (self.verdict, &self.allowed_by) {
            (PolicyVerdict::AllowedNotIsolated, _) => write!(f, "allowed: not isolated for {}", self.direction.name()),
            (PolicyVerdict::AllowedHost, _) => write!(f, "allowed: the node itself"),
            (_, Some(p)) => write!(f, "allowed by {p}"),
            (PolicyVerdict::PeerUnknown, _) => write!(
                f,
                "{}: isolated for {} by {}; the peer is a cluster address not known here",
                self.verdict.name(),
                self.direction.name(),
                isolated_by()
            ),
            _ => write!(
                f,
                "{}: isolated for {} by {}, no rule allows",
                self.verdict.name(),
                self.direction.name(),
                isolated_by()
            ),
        }
    }
}

/// Every node's maps, compiled from one model.
#[derive(Debug)]
pub struct ClusterMaps {
    pub nodes: BTreeMap<String, NodeMaps>,
}

impl ClusterMaps {
    /// Compiles and lowers the model for every node that has a pod or an
    /// address (each with its own identity allocator, as real nodes).
    pub fn compile(model: &PolicyModel) -> Self {
        let names: BTreeSet<&String> = model.nodes.keys().chain(model.pods.values().map(|p| &p.node)).collect();
        let nodes = names
            .into_iter()
            .map(|node| {
                let compiled = compile_node(model, node, &mut IdentityAllocator::default());
                (node.clone(), lower(model, &compiled))
            })
            .collect();
        ClusterMaps { nodes }
    }
}

/// Why a connection is or is not possible.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reach {
    /// A pod reaching itself never leaves its namespace.
    Loopback,
    /// Source's egress, then destination's ingress.
    Judged { egress: Judgement, ingress: Judgement },
}

impl Reach {
    pub fn allowed(&self) -> bool {
        match self {
            Reach::Loopback => true,
            Reach::Judged { egress, ingress } => egress.verdict.allowed() && ingress.verdict.allowed(),
        }
    }
}

/// Whether pod `from` can open a connection to pod `to` on `port`: the
/// source node's egress lookups, then the destination node's ingress ones.
/// `None` when a pod, its first address or its node's maps are missing.
pub fn reach(
    maps: &ClusterMaps,
    model: &PolicyModel,
    from: &PodKey,
    to: &PodKey,
    protocol: Protocol,
    port: u16,
) -> Option<Reach> {
    if from == to {
        return Some(Reach::Loopback);
    }
    let (src, dst) = (model.pods.get(from)?, model.pods.get(to)?);
    let (&src_ip, &dst_ip) = (src.ips.first()?, dst.ips.first()?);
    let egress = maps.nodes.get(&src.node)?.judge(Direction::Egress, src_ip, dst_ip, protocol, port);
    let ingress = maps.nodes.get(&dst.node)?.judge(Direction::Ingress, dst_ip, src_ip, protocol, port);
    Some(Reach::Judged { egress, ingress })
}

/// [`reach`], allowed or not (a missing pod cannot be reached).
pub fn reachable(
    maps: &ClusterMaps,
    model: &PolicyModel,
    from: &PodKey,
    to: &PodKey,
    protocol: Protocol,
    port: u16,
) -> bool {
    reach(maps, model, from, to, protocol, port).is_some_and(|r| r.allowed())
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::policy::{
        model::{IpBlock, Labels, Namespace, NetworkPolicy, Peer, Pod, PolicyTypes, PortRef, PortSpec, Rule},
        selector::LabelSelector,
    };

    fn pod(name: &str, last: u8, node: &str) -> Pod {
        Pod {
            key: PodKey::new("x", name),
            labels: [("pod".to_string(), name.to_string())].into(),
            ips: vec![Ipv4Addr::new(10, 244, 0, last).into()],
            node: node.into(),
            host_network: false,
            ports: vec![],
        }
    }

    fn model() -> PolicyModel {
        let mut m = PolicyModel::default();
        m.add_namespace(Namespace::new("x", Labels::new()));
        m.add_pod(pod("a", 1, "n1"));
        m.add_pod(pod("b", 2, "n2"));
        m.nodes.insert("n1".into(), vec![Ipv4Addr::new(192, 168, 0, 1).into()]);
        m.nodes.insert("n2".into(), vec![Ipv4Addr::new(192, 168, 0, 2).into()]);
        m.cluster_cidrs.push("10.244.0.0/16".parse().unwrap());
        m
    }

    fn ingress_policy(name: &str, rules: Vec<Rule>) -> NetworkPolicy {
        NetworkPolicy {
            name: PolicyName::new("x", name),
            pod_selector: LabelSelector::labels([("pod", "a")]),
            types: PolicyTypes { ingress: true, egress: false },
            ingress: rules,
            egress: vec![],
        }
    }

    const A: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);

    #[test]
    fn verdicts_name_their_policies() {
        let mut m = model();
        m.add_policy(ingress_policy("deny", vec![]));
        m.add_policy(ingress_policy(
            "tcp-range",
            vec![Rule {
                peers: vec![],
                ports: vec![PortSpec {
                    protocol: Protocol::Tcp,
                    port: Some(PortRef::Number(8000)),
                    end_port: Some(8100),
                }],
            }],
        ));
        let maps = ClusterMaps::compile(&m);
        let n1 = &maps.nodes["n1"];
        let b = Ipv4Addr::new(10, 244, 0, 2);
        let ok = n1.judge(Direction::Ingress, A, b, Protocol::Tcp, 8050);
        assert_eq!(ok.verdict, PolicyVerdict::AllowedByAnyPeerRule);
        assert_eq!(ok.to_string(), "allowed by x/tcp-range");
        let no = n1.judge(Direction::Ingress, A, b, Protocol::Tcp, 8101);
        assert_eq!(no.verdict, PolicyVerdict::DeniedIngress);
        assert_eq!(
            no.to_string(),
            "policy_denied_ingress: isolated for ingress by x/deny, x/tcp-range, no rule allows"
        );
        assert_eq!(n1.judge(Direction::Ingress, A, b, Protocol::Udp, 8050).verdict, PolicyVerdict::DeniedIngress);
        let host = n1.judge(Direction::Ingress, A, Ipv4Addr::new(192, 168, 0, 1), Protocol::Tcp, 1);
        assert_eq!(host.verdict, PolicyVerdict::AllowedHost, "the pod's own node always reaches it");
    }

    #[test]
    fn unknown_cluster_addresses_are_their_own_denial_and_ip_blocks_never_match_them() {
        let mut m = model();
        let outside_and_cluster =
            Rule { peers: vec![Peer::IpBlock(IpBlock::new("0.0.0.0/0".parse().unwrap(), []))], ports: vec![] };
        m.add_policy(ingress_policy("from-anywhere-by-cidr", vec![outside_and_cluster]));
        let maps = ClusterMaps::compile(&m);
        let n1 = &maps.nodes["n1"];
        let j = |peer: [u8; 4]| n1.judge(Direction::Ingress, A, Ipv4Addr::from(peer), Protocol::Tcp, 80).verdict;
        assert_eq!(j([10, 244, 0, 2]), PolicyVerdict::AllowedByPeerRule, "a known pod: ipBlock matches pod IPs");
        assert_eq!(j([8, 8, 8, 8]), PolicyVerdict::AllowedByPeerRule);
        assert_eq!(j([192, 168, 0, 2]), PolicyVerdict::AllowedByPeerRule, "another node, by ipBlock");
        assert_eq!(j([10, 244, 9, 9]), PolicyVerdict::PeerUnknown);
    }

    #[test]
    fn both_ends_are_judged_on_their_own_nodes() {
        let mut m = model();
        m.add_policy(NetworkPolicy {
            name: PolicyName::new("x", "b-no-egress"),
            pod_selector: LabelSelector::labels([("pod", "b")]),
            types: PolicyTypes { ingress: false, egress: true },
            ingress: vec![],
            egress: vec![],
        });
        let maps = ClusterMaps::compile(&m);
        let (a, b) = (PodKey::new("x", "a"), PodKey::new("x", "b"));
        assert!(reachable(&maps, &m, &a, &b, Protocol::Tcp, 80));
        let r = reach(&maps, &m, &b, &a, Protocol::Tcp, 80).unwrap();
        let Reach::Judged { egress, ingress } = &r else { panic!("{r:?}") };
        assert_eq!(egress.verdict, PolicyVerdict::DeniedEgress);
        assert_eq!(ingress.verdict, PolicyVerdict::AllowedNotIsolated);
        assert!(!r.allowed());
        assert!(reachable(&maps, &m, &b, &b, Protocol::Tcp, 80), "loopback");
    }
}
