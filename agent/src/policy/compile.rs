//! The policy compiler: for each pod on a node, is it isolated per
//! direction (and by which policies), and what do the policies selecting it
//! allow, resolved to peer identities, protocols and port ranges. Policies
//! are additive: the rules of every selecting policy are kept side by side,
//! each naming the policy it came from (what `monitor` and `status` show).
//! `entries.rs` lowers the result into map entries.
use std::collections::{BTreeMap, BTreeSet};

use sluice_common::policy::Direction;

use super::{
    identity::{IdentityAllocator, IdentityClass, IdentityTable},
    model::{
        NamespaceScope, NetworkPolicy, Peer, Pod, PodKey, PolicyModel, PolicyName, PortRef, PortSpec, Protocol, Rule,
    },
};

/// The peers a rule allows.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Peers {
    /// No `from`/`to`: every peer, including ones with no identity of
    /// their own (`IDENTITY_ANY` in the map).
    Any,
    Identities(BTreeSet<u32>),
}

/// The traffic a rule allows to its peers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Ports {
    /// No `ports`: every protocol and port.
    All,
    /// Every port of one protocol.
    Protocol(Protocol),
    /// Destination ports `first..=last` of one protocol.
    Range { protocol: Protocol, first: u16, last: u16 },
}

impl Ports {
    pub fn allows(&self, protocol: Protocol, port: u16) -> bool {
        match *self {
            Ports::All => true,
            Ports::Protocol(p) => p == protocol,
            Ports::Range { protocol: p, first, last } => p == protocol && (first..=last).contains(&port),
        }
    }
}

/// One resolved allow rule.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct AllowRule {
    pub peers: Peers,
    pub ports: Ports,
    pub policy: PolicyName,
}

/// One direction of a pod's policy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DirectionPolicy {
    /// The policies that isolate the pod this way; empty: not isolated.
    pub isolated_by: BTreeSet<PolicyName>,
    /// What they allow (sorted, duplicates removed).
    pub rules: Vec<AllowRule>,
}

impl DirectionPolicy {
    pub fn isolated(&self) -> bool {
        !self.isolated_by.is_empty()
    }
}

/// A local pod's policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodPolicy {
    pub pod: PodKey,
    pub ingress: DirectionPolicy,
    pub egress: DirectionPolicy,
}

impl PodPolicy {
    pub fn direction(&self, direction: Direction) -> &DirectionPolicy {
        match direction {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

/// Whether `policy` selects `pod`: same namespace, pod selector matches,
/// not host-network (the API: host-network pods are not selected).
pub fn selects(policy: &NetworkPolicy, pod: &Pod) -> bool {
    !pod.host_network && policy.name.namespace == pod.key.namespace && policy.pod_selector.matches(&pod.labels)
}

/// Whether a `from`/`to` entry of a policy in `policy_namespace` matches
/// addresses of `class`.
pub fn peer_matches(peer: &Peer, policy_namespace: &str, class: &IdentityClass) -> bool {
    match peer {
        Peer::Pods { namespaces, pods } => match class {
            IdentityClass::Pod { namespace, namespace_labels, labels, .. } => {
                let in_namespace = match namespaces {
                    NamespaceScope::PolicyNamespace => namespace == policy_namespace,
                    NamespaceScope::Selected(s) => s.matches(namespace_labels),
                };
                in_namespace && pods.matches(labels)
            }
            _ => false,
        },
        Peer::IpBlock(block) => class.blocks().contains(block),
    }
}

/// Compiles the policy of every pod of `model` on `node`.
pub fn compile_pods(model: &PolicyModel, node: &str, identities: &IdentityTable) -> BTreeMap<PodKey, PodPolicy> {
    let index = ClassIndex::new(identities);
    model
        .pods
        .values()
        .filter(|p| p.node == node && !p.host_network)
        .map(|pod| (pod.key.clone(), compile_pod_indexed(model, pod, identities, &index)))
        .collect()
}

/// The identity classes grouped by namespace, so a pod peer looks only at
/// the namespaces it can match (its own, or those its namespaceSelector
/// selects) instead of every class of the cluster: at 10,000 pods and
/// 1,000 policies that is most of a compile's time.
pub struct ClassIndex<'a> {
    /// Namespace → its labels and its pods' classes.
    by_namespace: BTreeMap<&'a str, NamespaceClasses<'a>>,
}

/// A namespace's labels and its pods' identities.
type NamespaceClasses<'a> = (&'a super::model::Labels, Vec<(u32, &'a IdentityClass)>);

impl<'a> ClassIndex<'a> {
    pub fn new(identities: &'a IdentityTable) -> Self {
        let mut by_namespace: BTreeMap<&str, NamespaceClasses> = BTreeMap::new();
        for (&id, class) in &identities.classes {
            if let IdentityClass::Pod { namespace, namespace_labels, .. } = class {
                by_namespace.entry(namespace.as_str()).or_insert((namespace_labels, Vec::new())).1.push((id, class));
            }
        }
        ClassIndex { by_namespace }
    }

    /// The identities `peer` (of a policy in `policy_namespace`) matches.
    fn matching(&self, peer: &Peer, policy_namespace: &str, identities: &IdentityTable, out: &mut BTreeSet<u32>) {
        match peer {
            Peer::Pods { namespaces, pods } => {
                let in_namespace = |classes: &[(u32, &IdentityClass)], out: &mut BTreeSet<u32>| {
                    for &(id, class) in classes {
                        if let IdentityClass::Pod { labels, .. } = class {
                            if pods.matches(labels) {
                                out.insert(id);
                            }
                        }
                    }
                };
                match namespaces {
                    NamespaceScope::PolicyNamespace => {
                        if let Some((_, classes)) = self.by_namespace.get(policy_namespace) {
                            in_namespace(classes, out);
                        }
                    }
                    NamespaceScope::Selected(s) => {
                        for (labels, classes) in self.by_namespace.values() {
                            if s.matches(labels) {
                                in_namespace(classes, out);
                            }
                        }
                    }
                }
            }
            Peer::IpBlock(_) => out.extend(
                identities
                    .classes
                    .iter()
                    .filter(|(_, class)| peer_matches(peer, policy_namespace, class))
                    .map(|(&id, _)| id),
            ),
        }
    }
}

pub fn compile_pod(model: &PolicyModel, pod: &Pod, identities: &IdentityTable) -> PodPolicy {
    compile_pod_indexed(model, pod, identities, &ClassIndex::new(identities))
}

/// The policies of `namespace` (the only ones that can select its pods):
/// a range of the name-ordered map, not a scan of every policy.
pub fn policies_in<'m>(model: &'m PolicyModel, namespace: &str) -> impl Iterator<Item = &'m NetworkPolicy> + 'm {
    let namespace = namespace.to_string();
    model
        .policies
        .range(PolicyName { namespace: namespace.clone(), name: String::new() }..)
        .take_while(move |(name, _)| name.namespace == namespace)
        .map(|(_, p)| p)
}

/// [`compile_pod`] with the class index built once for many pods.
pub fn compile_pod_indexed(
    model: &PolicyModel,
    pod: &Pod,
    identities: &IdentityTable,
    index: &ClassIndex,
) -> PodPolicy {
    let mut ingress = DirectionPolicy::default();
    let mut egress = DirectionPolicy::default();
    for policy in policies_in(model, &pod.key.namespace).filter(|p| selects(p, pod)) {
        if policy.types.ingress {
            ingress.isolated_by.insert(policy.name.clone());
            for rule in &policy.ingress {
                resolve_rule(policy, rule, Direction::Ingress, pod, identities, index, &mut ingress.rules);
            }
        }
        if policy.types.egress {
            egress.isolated_by.insert(policy.name.clone());
            for rule in &policy.egress {
                resolve_rule(policy, rule, Direction::Egress, pod, identities, index, &mut egress.rules);
            }
        }
    }
    for d in [&mut ingress, &mut egress] {
        d.rules.sort();
        d.rules.dedup();
    }
    PodPolicy { pod: pod.key.clone(), ingress, egress }
}

fn resolve_rule(
    policy: &NetworkPolicy,
    rule: &Rule,
    direction: Direction,
    local: &Pod,
    identities: &IdentityTable,
    index: &ClassIndex,
    out: &mut Vec<AllowRule>,
) {
    let peers = if rule.peers.is_empty() {
        Peers::Any
    } else {
        let mut ids = BTreeSet::new();
        for peer in &rule.peers {
            index.matching(peer, &policy.name.namespace, identities, &mut ids);
        }
        Peers::Identities(ids)
    };
    let mut push = |peers: Peers, ports: Ports| {
        if peers != Peers::Identities(BTreeSet::new()) {
            out.push(AllowRule { peers, ports, policy: policy.name.clone() });
        }
    };
    if rule.ports.is_empty() {
        push(peers, Ports::All);
        return;
    }
    for spec in &rule.ports {
        match numeric_ports(spec) {
            Some(ports) => push(peers.clone(), ports),
            None => {
                let Some(PortRef::Name(name)) = &spec.port else { continue };
                // A named port is the *destination* pod's: for ingress the
                // local pod; for egress each peer identity's own number
                // (identities carry their named ports).
                match direction {
                    Direction::Ingress => {
                        if let Some(port) = local.named_port(name, spec.protocol) {
                            push(peers.clone(), single(spec.protocol, port));
                        }
                    }
                    Direction::Egress => {
                        let mut by_port: BTreeMap<u16, BTreeSet<u32>> = BTreeMap::new();
                        for (&id, class) in &identities.classes {
                            let wanted = match &peers {
                                Peers::Any => true,
                                Peers::Identities(ids) => ids.contains(&id),
                            };
                            if let (true, Some(port)) = (wanted, class.named_port(name, spec.protocol)) {
                                by_port.entry(port).or_default().insert(id);
                            }
                        }
                        for (port, ids) in by_port {
                            push(Peers::Identities(ids), single(spec.protocol, port));
                        }
                    }
                }
            }
        }
    }
}

/// The ports of a spec that needs no resolution; `None` for a named port.
fn numeric_ports(spec: &PortSpec) -> Option<Ports> {
    match &spec.port {
        None => Some(Ports::Protocol(spec.protocol)),
        Some(PortRef::Number(first)) => {
            Some(Ports::Range { protocol: spec.protocol, first: *first, last: spec.end_port.unwrap_or(*first) })
        }
        Some(PortRef::Name(_)) => None,
    }
}

fn single(protocol: Protocol, port: u16) -> Ports {
    Ports::Range { protocol, first: port, last: port }
}

/// Whether `policy`'s rules for `pod` (which it selects) could resolve
/// differently when identity `class` comes or goes: one of its peers
/// matches the class, or an egress rule to every peer names a port the
/// class has. What decides which local pods an identity change recompiles.
pub fn rules_may_match(policy: &NetworkPolicy, class: &IdentityClass) -> bool {
    let directions = [(policy.types.ingress, &policy.ingress, false), (policy.types.egress, &policy.egress, true)];
    directions
        .into_iter()
        .filter(|(isolates, _, _)| *isolates)
        .flat_map(|(_, rules, egress)| rules.iter().map(move |r| (r, egress)))
        .any(|(rule, egress)| {
            rule.peers.iter().any(|peer| peer_matches(peer, &policy.name.namespace, class))
                || (egress
                    && rule.peers.is_empty()
                    && rule.ports.iter().any(|spec| match &spec.port {
                        Some(PortRef::Name(name)) => class.named_port(name, spec.protocol).is_some(),
                        _ => false,
                    }))
        })
}

/// Everything a node's maps will hold, plus the explanation behind it.
#[derive(Clone, Debug)]
pub struct CompiledNode {
    pub node: String,
    pub identities: IdentityTable,
    pub pods: BTreeMap<PodKey, PodPolicy>,
}

/// Compiles `node`'s view: the identity table and its pods' policies.
pub fn compile_node(model: &PolicyModel, node: &str, allocator: &mut IdentityAllocator) -> CompiledNode {
    let identities = IdentityTable::build(model, node, allocator);
    let pods = compile_pods(model, node, &identities);
    CompiledNode { node: node.to_string(), identities, pods }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::policy::{
        model::{ContainerPort, IpBlock, Labels, Namespace, PolicyTypes},
        selector::LabelSelector,
    };

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn pod(ns: &str, name: &str, ip: [u8; 4], ports: &[(&str, u16)]) -> Pod {
        Pod {
            key: PodKey::new(ns, name),
            labels: labels(&[("pod", name)]),
            ips: vec![Ipv4Addr::from(ip).into()],
            node: "n1".into(),
            host_network: false,
            ports: ports
                .iter()
                .map(|&(n, port)| ContainerPort {
                    name: Some(n.into()),
                    port,
                    protocol: Protocol::Tcp,
                    host_port: None,
                    host_ip: None,
                })
                .collect(),
        }
    }

    fn policy(
        name: &str,
        selector: LabelSelector,
        ingress: Option<Vec<Rule>>,
        egress: Option<Vec<Rule>>,
    ) -> NetworkPolicy {
        NetworkPolicy {
            name: PolicyName::new("x", name),
            pod_selector: selector,
            types: PolicyTypes { ingress: ingress.is_some(), egress: egress.is_some() },
            ingress: ingress.unwrap_or_default(),
            egress: egress.unwrap_or_default(),
        }
    }

    fn model() -> PolicyModel {
        let mut m = PolicyModel::default();
        m.add_namespace(Namespace::new("x", Labels::new()));
        // a and b both name "http", on different numbers
        m.add_pod(pod("x", "a", [10, 0, 0, 1], &[("http", 8080)]));
        m.add_pod(pod("x", "b", [10, 0, 0, 2], &[("http", 9090)]));
        m.add_pod(pod("x", "c", [10, 0, 0, 3], &[]));
        m.cluster_cidrs.push("10.0.0.0/16".parse().unwrap());
        m
    }

    fn compiled(m: &PolicyModel) -> CompiledNode {
        compile_node(m, "n1", &mut IdentityAllocator::default())
    }

    fn named(name: &str) -> PortSpec {
        PortSpec { protocol: Protocol::Tcp, port: Some(PortRef::Name(name.into())), end_port: None }
    }

    #[test]
    fn isolation_per_direction_and_who_caused_it() {
        let mut m = model();
        m.add_policy(policy("deny-in", LabelSelector::everything(), Some(vec![]), None));
        m.add_policy(policy("deny-out-a", LabelSelector::labels([("pod", "a")]), None, Some(vec![])));
        let c = compiled(&m);
        let a = &c.pods[&PodKey::new("x", "a")];
        let b = &c.pods[&PodKey::new("x", "b")];
        assert_eq!(a.ingress.isolated_by, BTreeSet::from([PolicyName::new("x", "deny-in")]));
        assert_eq!(a.egress.isolated_by, BTreeSet::from([PolicyName::new("x", "deny-out-a")]));
        assert!(a.ingress.rules.is_empty() && a.egress.rules.is_empty());
        assert!(b.ingress.isolated() && !b.egress.isolated());
    }

    #[test]
    fn named_ports_resolve_on_the_destination() {
        let mut m = model();
        // ingress: each selected pod resolves "http" to its own number
        m.add_policy(policy(
            "in-http",
            LabelSelector::everything(),
            Some(vec![Rule { peers: vec![], ports: vec![named("http")] }]),
            None,
        ));
        // egress from c to any peer on "http": per destination identity
        m.add_policy(policy(
            "out-http",
            LabelSelector::labels([("pod", "c")]),
            None,
            Some(vec![Rule { peers: vec![], ports: vec![named("http")] }]),
        ));
        let c = compiled(&m);
        let range = |port| Ports::Range { protocol: Protocol::Tcp, first: port, last: port };
        assert_eq!(c.pods[&PodKey::new("x", "a")].ingress.rules[0].ports, range(8080));
        assert_eq!(c.pods[&PodKey::new("x", "b")].ingress.rules[0].ports, range(9090));
        assert!(c.pods[&PodKey::new("x", "c")].ingress.rules.is_empty(), "c has no port named http");
        let id = |last: u8| c.identities.lookup(Ipv4Addr::new(10, 0, 0, last));
        let egress = &c.pods[&PodKey::new("x", "c")].egress.rules;
        assert_eq!(egress.len(), 2, "{egress:?}");
        let to = |port| egress.iter().find(|r| r.ports == range(port)).map(|r| r.peers.clone());
        assert_eq!(to(8080), Some(Peers::Identities(BTreeSet::from([id(1)]))));
        assert_eq!(to(9090), Some(Peers::Identities(BTreeSet::from([id(2)]))));
    }

    #[test]
    fn policies_are_additive_and_keep_their_names() {
        let mut m = model();
        let from_b = Rule {
            peers: vec![Peer::Pods {
                namespaces: NamespaceScope::PolicyNamespace,
                pods: LabelSelector::labels([("pod", "b")]),
            }],
            ports: vec![],
        };
        let block = Rule {
            peers: vec![Peer::IpBlock(IpBlock::new("192.0.2.0/24".parse().unwrap(), []))],
            ports: vec![PortSpec { protocol: Protocol::Udp, port: Some(PortRef::Number(53)), end_port: Some(60) }],
        };
        m.add_policy(policy("p1", LabelSelector::labels([("pod", "a")]), Some(vec![from_b]), None));
        m.add_policy(policy("p2", LabelSelector::everything(), Some(vec![block]), None));
        let c = compiled(&m);
        let rules = &c.pods[&PodKey::new("x", "a")].ingress.rules;
        assert_eq!(rules.len(), 2);
        let b = c.identities.lookup(Ipv4Addr::new(10, 0, 0, 2));
        let outside = c.identities.lookup(Ipv4Addr::new(192, 0, 2, 7));
        assert!(rules.contains(&AllowRule {
            peers: Peers::Identities(BTreeSet::from([b])),
            ports: Ports::All,
            policy: PolicyName::new("x", "p1")
        }));
        assert!(rules.contains(&AllowRule {
            peers: Peers::Identities(BTreeSet::from([outside])),
            ports: Ports::Range { protocol: Protocol::Udp, first: 53, last: 60 },
            policy: PolicyName::new("x", "p2")
        }));
    }

    #[test]
    fn a_rule_whose_peers_match_nothing_allows_nothing() {
        let mut m = model();
        let nobody = Rule {
            peers: vec![Peer::Pods {
                namespaces: NamespaceScope::PolicyNamespace,
                pods: LabelSelector::labels([("pod", "zz")]),
            }],
            ports: vec![],
        };
        m.add_policy(policy("p", LabelSelector::everything(), Some(vec![nobody]), None));
        let c = compiled(&m);
        let a = &c.pods[&PodKey::new("x", "a")];
        assert!(a.ingress.isolated() && a.ingress.rules.is_empty());
    }

    #[test]
    fn host_network_pods_are_never_selected() {
        let mut m = model();
        let mut h = pod("x", "h", [192, 168, 1, 1], &[]);
        h.host_network = true;
        m.add_pod(h);
        m.add_policy(policy("deny", LabelSelector::everything(), Some(vec![]), Some(vec![])));
        assert!(!compiled(&m).pods.contains_key(&PodKey::new("x", "h")));
    }
}
