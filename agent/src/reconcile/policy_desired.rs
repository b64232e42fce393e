//! What the policy maps must hold, kept up to date change by change
//! (issue 25): a pod's labels, a namespace's labels or a policy change
//! recomputes only what it touches, not the whole cluster.
//!
//! `policy_maps::desired` is the reference: from the whole model, the
//! identity table of every pod of the cluster and the policy of every
//! local pod. [`IncrementalDesired`] keeps the same result (tested equal
//! after every step of random change sequences) and, given the objects
//! that changed ([`Touched`]), redoes only:
//!
//! - the identity classes and `/32` entries of the touched pods (a
//!   namespace's pods when its labels change), and the `/32` entries of
//!   the addresses they held or hold;
//! - the policy of the local pods that were touched, that live in the
//!   namespace of a touched policy (only a policy of its own namespace can
//!   select a pod), or whose selecting policies have a rule that matches an
//!   identity class that appeared or went.
//!
//! A change to the set of ipBlocks (each pod's class holds the blocks its
//! address is in), to the nodes or to the cluster CIDRs rebuilds
//! everything; so does the first look. Identity numbers and policy refs
//! are kept as `desired` keeps them: a class keeps its number while it
//! lives.
//!
//! Pure: it reads the watchers' model in place (no copy of 10,000 pods per
//! pass) and holds per pod only its addresses and their identities.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
};

use ipnetwork::IpNetwork;
use sluice_common::policy::{IDENTITY_FIRST_ALLOCATED, IDENTITY_HOST, IDENTITY_UNKNOWN_CLUSTER};

use super::policy_maps::{pod_identities, pod_rules, Desired, DesiredPod, DesiredView, PolicyRefs};
use crate::policy::{
    compile::{compile_pod_indexed, policies_in, rules_may_match, selects, ClassIndex, PodPolicy},
    identity::{IdentityAllocator, IdentityClass, IdentityTable},
    model::{
        host_prefix, is_host_prefix, is_subnet, IpBlock, Namespace, NodeAddresses, Pod, PodKey, PolicyModel,
        PolicyName, Touched,
    },
};

/// The inputs besides the watchers' model.
#[derive(Clone, Copy, Debug)]
pub struct NodeInputs<'a> {
    pub node: &'a str,
    /// Node name → IPv4 address, every node (this one included).
    pub nodes: &'a NodeAddresses,
    pub cluster_cidrs: &'a [IpNetwork],
    /// This node's IPAM leases: address → `namespace/name` when the
    /// runtime named the pod.
    pub leases: &'a [(IpAddr, Option<String>)],
}

/// A prefix some ipBlock names (its cidr or an except).
#[derive(Clone, Debug)]
struct NamedPrefix {
    /// Inside a cluster CIDR: unknown-cluster, never a class.
    in_cluster: bool,
    /// Its external class (the blocks covering it).
    class: IdentityClass,
    /// The class's identity while the prefix is its own (no pod, node or
    /// cluster CIDR holds it).
    held: Option<u32>,
}

/// What one update did (for logs and for what the loop rewrites).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpdateSummary {
    /// Everything was computed again.
    pub rebuilt: bool,
    /// Pods whose identities were computed again.
    pub pods_reclassified: usize,
    /// Local pods whose policy was compiled again.
    pub pods_recompiled: usize,
    /// Identity classes that appeared or went.
    pub classes_changed: usize,
    /// `POLICY_IDENTITIES` entries that changed.
    pub prefixes_changed: usize,
    /// Some pod's addresses changed (the names table follows them).
    pub addresses_changed: bool,
}

impl UpdateSummary {
    pub fn changed(&self) -> bool {
        self.rebuilt || self.pods_recompiled > 0 || self.prefixes_changed > 0 || self.classes_changed > 0
    }
}

/// The desired policy maps of one node, kept incrementally (see the
/// module comment).
#[derive(Debug)]
pub struct IncrementalDesired {
    node: String,
    built: bool,
    nodes: NodeAddresses,
    cluster_cidrs: Vec<IpNetwork>,
    /// Every ipBlock the policies name (`PolicyModel::ip_blocks`).
    blocks: Vec<IpBlock>,
    /// The leases naming a pod, by pod, in lease order.
    leased: BTreeMap<PodKey, Vec<IpAddr>>,
    allocator: IdentityAllocator,
    refs: PolicyRefs,
    /// How many holders (pod addresses, nodes, named prefixes) each
    /// allocated identity has; one at 0 is forgotten at the end of an update.
    holders: HashMap<u32, usize>,
    /// Each pod's addresses (status and leases) and their identity (`None`:
    /// its namespace is not known).
    held: BTreeMap<PodKey, Vec<(IpAddr, Option<u32>)>>,
    /// The same by address, for who holds a `/32`.
    by_address: BTreeMap<(IpAddr, PodKey), Option<u32>>,
    /// This node's addresses (both families).
    host: BTreeSet<IpAddr>,
    /// Other nodes' addresses → their identity (the first node by name).
    remote_nodes: BTreeMap<IpAddr, u32>,
    named: BTreeMap<IpNetwork, NamedPrefix>,
    table: IdentityTable,
    /// Local pods' compiled policy.
    compiled: BTreeMap<PodKey, PodPolicy>,
    pods: BTreeMap<PodKey, DesiredPod>,
    unknown_leased: BTreeSet<IpAddr>,
    /// Classes that appeared in the update under way.
    appeared: BTreeSet<u32>,
}

fn parse_owner(owner: Option<&str>) -> Option<PodKey> {
    owner.and_then(|o| o.split_once('/')).map(|(ns, name)| PodKey::new(ns, name))
}

impl IncrementalDesired {
    /// Policy refs taken over from an earlier run (the names table), so a
    /// restart renumbers nothing.
    pub fn new(node: &str, refs: PolicyRefs) -> Self {
        IncrementalDesired {
            node: node.to_string(),
            built: false,
            nodes: BTreeMap::new(),
            cluster_cidrs: Vec::new(),
            blocks: Vec::new(),
            leased: BTreeMap::new(),
            allocator: IdentityAllocator::default(),
            refs,
            holders: HashMap::new(),
            held: BTreeMap::new(),
            by_address: BTreeMap::new(),
            host: BTreeSet::new(),
            remote_nodes: BTreeMap::new(),
            named: BTreeMap::new(),
            table: IdentityTable::default(),
            compiled: BTreeMap::new(),
            pods: BTreeMap::new(),
            unknown_leased: BTreeSet::new(),
            appeared: BTreeSet::new(),
        }
    }

    /// What the maps must hold, borrowed (for `PolicyReconciler::apply`).
    pub fn view(&self) -> DesiredView<'_> {
        DesiredView { identities: &self.table.prefixes, pods: &self.pods, unknown_leased: &self.unknown_leased }
    }

    /// The same, as an owned `Desired` (tests).
    pub fn to_desired(&self) -> Desired {
        Desired {
            identities: self.table.prefixes.clone(),
            pods: self.pods.clone(),
            unknown_leased: self.unknown_leased.clone(),
        }
    }

    pub fn identities(&self) -> &IdentityTable {
        &self.table
    }

    /// The local pods' compiled policy (for `status --policy`).
    pub fn compiled(&self) -> &BTreeMap<PodKey, PodPolicy> {
        &self.compiled
    }

    pub fn pods(&self) -> &BTreeMap<PodKey, DesiredPod> {
        &self.pods
    }

    pub fn refs(&self) -> &PolicyRefs {
        &self.refs
    }

    pub fn allocator(&self) -> &IdentityAllocator {
        &self.allocator
    }

    /// Bring the desired maps up to date with `model`, of which `touched`
    /// changed since the last update.
    pub fn update(&mut self, model: &PolicyModel, touched: &Touched, inputs: &NodeInputs) -> UpdateSummary {
        let blocks_changed = !touched.policies.is_empty() && {
            let now: Vec<IpBlock> = model.ip_blocks().into_iter().collect();
            now != self.blocks
        };
        if !self.built
            || touched.all
            || blocks_changed
            || inputs.node != self.node
            || *inputs.nodes != self.nodes
            || inputs.cluster_cidrs != self.cluster_cidrs.as_slice()
        {
            return self.rebuild(model, inputs);
        }
        let mut summary = UpdateSummary::default();
        self.appeared.clear();

        // The pods whose addresses or classes may have changed.
        let mut dirty: BTreeSet<PodKey> = touched.pods.clone();
        let leased = self.leases(model, inputs.leases);
        if leased != self.leased {
            let keys: BTreeSet<&PodKey> = leased.keys().chain(self.leased.keys()).collect();
            dirty.extend(keys.into_iter().filter(|k| leased.get(*k) != self.leased.get(*k)).cloned());
            self.leased = leased;
        }
        for ns in &touched.namespaces {
            let first = PodKey { namespace: ns.clone(), name: String::new() };
            dirty.extend(
                model.pods.range(first.clone()..).take_while(|(k, _)| k.namespace == *ns).map(|(k, _)| k.clone()),
            );
            dirty.extend(self.held.range(first..).take_while(|(k, _)| k.namespace == *ns).map(|(k, _)| k.clone()));
        }
        self.unknown_leased = self.unknown_leased(model, inputs.leases);

        // Their classes and `/32`s again.
        let mut addresses: BTreeSet<IpAddr> = BTreeSet::new();
        let mut released = Vec::new();
        for key in &dirty {
            let old = self.held.remove(key).unwrap_or_default();
            for &(ip, id) in &old {
                self.by_address.remove(&(ip, key.clone()));
                addresses.insert(ip);
                released.extend(id);
            }
            self.hold_pod(model, key);
            let new = self.held.get(key).map(Vec::as_slice).unwrap_or_default();
            if old.iter().map(|(ip, _)| ip).ne(new.iter().map(|(ip, _)| ip)) {
                summary.addresses_changed = true;
            }
            addresses.extend(new.iter().map(|&(ip, _)| ip));
        }
        // Released after the new holds, so a class that stays keeps its number.
        for id in released {
            self.release(id);
        }
        summary.pods_reclassified = dirty.len();
        for ip in addresses {
            if self.resolve_prefix(host_prefix(ip)) {
                summary.prefixes_changed += 1;
            }
        }
        let gone = self.forget_unheld();
        let appeared: Vec<&IdentityClass> = self.appeared.iter().filter_map(|id| self.table.classes.get(id)).collect();
        summary.classes_changed = appeared.len() + gone.len();

        // Local pods gone (deleted, moved, now host network).
        let stale: Vec<PodKey> = self.compiled.keys().filter(|k| !self.is_local(model, k)).cloned().collect();
        for key in &stale {
            self.compiled.remove(key);
            self.pods.remove(key);
        }
        // The local pods whose policy may have changed.
        let mut recompile: BTreeSet<PodKey> = dirty.into_iter().filter(|k| self.is_local(model, k)).collect();
        for name in &touched.policies {
            let first = PodKey { namespace: name.namespace.clone(), name: String::new() };
            recompile.extend(
                model
                    .pods
                    .range(first..)
                    .take_while(|(k, _)| k.namespace == name.namespace)
                    .filter(|(k, _)| self.is_local(model, k))
                    .map(|(k, _)| k.clone()),
            );
        }
        if summary.classes_changed > 0 {
            let changed: Vec<&IdentityClass> = appeared.into_iter().chain(&gone).collect();
            for key in self.compiled.keys() {
                if recompile.contains(key) {
                    continue;
                }
                let Some(pod) = model.pods.get(key) else { continue };
                let affected = policies_in(model, &key.namespace)
                    .filter(|p| selects(p, pod))
                    .any(|p| changed.iter().any(|class| rules_may_match(p, class)));
                if affected {
                    recompile.insert(key.clone());
                }
            }
        }
        summary.pods_recompiled = recompile.len() + stale.len();
        self.compile(model, recompile, !stale.is_empty());
        summary
    }

    /// Everything from scratch (identity numbers and policy refs kept for
    /// the classes and policies that stay).
    fn rebuild(&mut self, model: &PolicyModel, inputs: &NodeInputs) -> UpdateSummary {
        self.node = inputs.node.to_string();
        self.nodes = inputs.nodes.clone();
        self.cluster_cidrs = inputs.cluster_cidrs.to_vec();
        self.blocks = model.ip_blocks().into_iter().collect();
        self.leased = self.leases(model, inputs.leases);
        self.unknown_leased = self.unknown_leased(model, inputs.leases);
        self.holders.clear();
        self.held.clear();
        self.by_address.clear();
        self.remote_nodes.clear();
        self.named.clear();
        self.table = IdentityTable::default();
        self.compiled.clear();
        self.pods.clear();
        self.appeared.clear();

        let keys: Vec<PodKey> = model.pods.keys().cloned().collect();
        for key in &keys {
            self.hold_pod(model, key);
        }
        self.host = self.nodes.get(&self.node).into_iter().flatten().copied().collect();
        let nodes = self.nodes.clone();
        for (name, ips) in &nodes {
            if *name == self.node {
                continue;
            }
            for &ip in ips {
                let class = IdentityClass::RemoteNode { blocks: self.blocks_holding(ip) };
                let id = self.hold(&class);
                self.remote_nodes.entry(ip).or_insert(id);
            }
        }
        let named: BTreeSet<IpNetwork> =
            self.blocks.iter().flat_map(|b| std::iter::once(b.cidr).chain(b.except().iter().copied())).collect();
        for prefix in named {
            let in_cluster = self.cluster_cidrs.iter().any(|&c| is_subnet(prefix, c));
            let blocks = if in_cluster {
                BTreeSet::new()
            } else {
                self.blocks.iter().filter(|b| b.covers_prefix(prefix)).cloned().collect()
            };
            self.named
                .insert(prefix, NamedPrefix { in_cluster, class: IdentityClass::External { blocks }, held: None });
        }
        let mut prefixes: BTreeSet<IpNetwork> = self.by_address.keys().map(|(ip, _)| host_prefix(*ip)).collect();
        prefixes.extend(self.nodes.values().flatten().map(|&ip| host_prefix(ip)));
        prefixes.extend(self.cluster_cidrs.iter().copied());
        prefixes.extend(self.named.keys().copied());
        for prefix in prefixes {
            self.resolve_prefix(prefix);
        }
        self.forget_unheld();
        let holders = &self.holders;
        self.allocator.retain_ids(|id| holders.contains_key(&id));
        let local: BTreeSet<PodKey> = keys.into_iter().filter(|k| self.is_local(model, k)).collect();
        let summary = UpdateSummary {
            rebuilt: true,
            pods_reclassified: model.pods.len(),
            pods_recompiled: local.len(),
            classes_changed: self.table.classes.len(),
            prefixes_changed: self.table.prefixes.len(),
            addresses_changed: true,
        };
        self.compile(model, local, true);
        self.appeared.clear();
        self.built = true;
        summary
    }

    /// Compile `keys` (local pods) again, then their map entries;
    /// `removed`: local pods went (their policies' refs may go too).
    fn compile(&mut self, model: &PolicyModel, keys: BTreeSet<PodKey>, removed: bool) {
        if !keys.is_empty() {
            let index = ClassIndex::new(&self.table);
            for key in &keys {
                let pod = &model.pods[key];
                self.compiled.insert(key.clone(), compile_pod_indexed(model, pod, &self.table, &index));
            }
        }
        if !keys.is_empty() || removed {
            let live: BTreeSet<PolicyName> = self
                .compiled
                .values()
                .flat_map(|p| p.ingress.rules.iter().chain(&p.egress.rules))
                .map(|r| r.policy.clone())
                .collect();
            self.refs.retain(&live);
            for key in &keys {
                let (flags, rules) = pod_rules(&self.compiled[key], &mut self.refs);
                let ips = self.held.get(key).into_iter().flatten().map(|&(ip, _)| ip).collect();
                let unknown = IDENTITY_UNKNOWN_CLUSTER;
                let pod = DesiredPod { ips, flags, rules, identity: unknown, identity6: unknown };
                self.pods.insert(key.clone(), pod);
            }
        }
        // A pod's identities are its first address's entry of each family,
        // which other pods and nodes holding the address decide too: every
        // local pod's.
        for (key, pod) in self.pods.iter_mut() {
            let ips = self.held.get(key).into_iter().flatten().map(|&(ip, _)| ip);
            (pod.identity, pod.identity6) = pod_identities(ips, &self.table);
        }
    }

    fn is_local(&self, model: &PolicyModel, key: &PodKey) -> bool {
        model.pods.get(key).is_some_and(|p| p.node == self.node && !p.host_network)
    }

    /// The leases naming a local pod the model has, by pod.
    fn leases(&self, model: &PolicyModel, leases: &[(IpAddr, Option<String>)]) -> BTreeMap<PodKey, Vec<IpAddr>> {
        let mut out: BTreeMap<PodKey, Vec<IpAddr>> = BTreeMap::new();
        for (ip, owner) in leases {
            if let Some(key) = parse_owner(owner.as_deref()).filter(|k| self.is_local(model, k)) {
                out.entry(key).or_default().push(*ip);
            }
        }
        out
    }

    /// Leased addresses of pods the model does not show here: left alone.
    fn unknown_leased(&self, model: &PolicyModel, leases: &[(IpAddr, Option<String>)]) -> BTreeSet<IpAddr> {
        leases
            .iter()
            .filter(|(_, owner)| !parse_owner(owner.as_deref()).is_some_and(|k| self.is_local(model, &k)))
            .map(|(ip, _)| *ip)
            .collect()
    }

    /// The ipBlocks holding `ip`.
    fn blocks_holding(&self, ip: IpAddr) -> BTreeSet<IpBlock> {
        self.blocks.iter().filter(|b| b.contains(ip)).cloned().collect()
    }

    fn pod_class(&self, ns: &Namespace, pod: &Pod, ip: IpAddr) -> IdentityClass {
        IdentityClass::Pod {
            namespace: ns.name.clone(),
            namespace_labels: ns.labels.clone(),
            labels: pod.labels.clone(),
            named_ports: pod
                .ports
                .iter()
                .filter_map(|p| p.name.as_ref().map(|n| (n.clone(), p.protocol, p.port)))
                .collect(),
            blocks: self.blocks_holding(ip),
        }
    }

    /// Record `key`'s addresses (its status' and its leases') and their
    /// classes, as `IdentityTable::build` classifies them.
    fn hold_pod(&mut self, model: &PolicyModel, key: &PodKey) {
        let Some(pod) = model.pods.get(key).filter(|p| !p.host_network) else { return };
        let mut ips = pod.ips.clone();
        for &ip in self.leased.get(key).into_iter().flatten() {
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
        if ips.is_empty() {
            return;
        }
        let ns = model.namespaces.get(&key.namespace);
        let mut held = Vec::with_capacity(ips.len());
        for ip in ips {
            let id = ns.map(|ns| {
                let class = self.pod_class(ns, pod, ip);
                self.hold(&class)
            });
            self.by_address.insert((ip, key.clone()), id);
            held.push((ip, id));
        }
        self.held.insert(key.clone(), held);
    }

    /// One more holder of `class`; its identity.
    fn hold(&mut self, class: &IdentityClass) -> u32 {
        let id = self.allocator.identity(class);
        if id >= IDENTITY_FIRST_ALLOCATED {
            *self.holders.entry(id).or_default() += 1;
            if let std::collections::btree_map::Entry::Vacant(e) = self.table.classes.entry(id) {
                e.insert(class.clone());
                self.appeared.insert(id);
            }
        }
        id
    }

    fn release(&mut self, id: u32) {
        if let Some(n) = self.holders.get_mut(&id) {
            *n = n.saturating_sub(1);
        }
    }

    /// Forget the classes nobody holds any more; they are returned.
    fn forget_unheld(&mut self) -> Vec<IdentityClass> {
        let unheld: Vec<u32> = self.holders.iter().filter(|(_, &n)| n == 0).map(|(&id, _)| id).collect();
        let mut gone = Vec::new();
        for id in unheld {
            self.holders.remove(&id);
            self.appeared.remove(&id);
            if let Some(class) = self.table.classes.remove(&id) {
                self.allocator.forget(&class);
                gone.push(class);
            }
        }
        gone
    }

    /// What `prefix` resolves to before the named prefixes (in
    /// `IdentityTable::build`'s order: this node, pods — any of them with
    /// an unknown namespace makes the address unknown, else the first —,
    /// other nodes, cluster CIDRs).
    fn occupant(&self, prefix: IpNetwork) -> Option<u32> {
        if is_host_prefix(prefix) {
            let ip = prefix.ip();
            if self.host.contains(&ip) {
                return Some(IDENTITY_HOST);
            }
            let mut holders = self
                .by_address
                .range((ip, PodKey::new("", ""))..)
                .take_while(|((a, _), _)| *a == ip)
                .map(|(_, id)| *id);
            if let Some(first) = holders.next() {
                let unknown = first.is_none() || holders.any(|id| id.is_none());
                return Some(if unknown { IDENTITY_UNKNOWN_CLUSTER } else { first.expect("checked") });
            }
            if let Some(&id) = self.remote_nodes.get(&ip) {
                return Some(id);
            }
        }
        self.cluster_cidrs.contains(&prefix).then_some(IDENTITY_UNKNOWN_CLUSTER)
    }

    /// Set `prefix`'s entry as the table must hold it; whether it changed.
    fn resolve_prefix(&mut self, prefix: IpNetwork) -> bool {
        let occupant = self.occupant(prefix);
        let value = match self.named.get(&prefix).cloned() {
            None => occupant,
            Some(named) => {
                // A named prefix has a class of its own only while nothing
                // else holds it.
                let own = occupant.is_none() && !named.in_cluster;
                let held = match (own, named.held) {
                    (true, None) => Some(self.hold(&named.class)),
                    (false, Some(id)) => {
                        self.release(id);
                        None
                    }
                    (_, held) => held,
                };
                self.named.get_mut(&prefix).expect("present").held = held;
                if named.in_cluster {
                    occupant.or(Some(IDENTITY_UNKNOWN_CLUSTER))
                } else {
                    occupant.or(held)
                }
            }
        };
        let old = match value {
            Some(v) => self.table.prefixes.insert(prefix, v),
            None => self.table.prefixes.remove(&prefix),
        };
        old != value
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::{
        policy::{
            model::{
                ContainerPort, Labels, NamespaceScope, NetworkPolicy, Peer, PolicyTypes, PortRef, PortSpec, Protocol,
                Rule,
            },
            selector::{LabelSelector, Operator, Requirement},
        },
        reconcile::policy_maps::{desired, IdentityCache, NodeFacts},
    };

    /// A small deterministic generator (xorshift64*): the same seed, the
    /// same sequence, so a failure names its seed and step.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
            &v[self.below(v.len())]
        }
        fn chance(&mut self, percent: usize) -> bool {
            self.below(100) < percent
        }
    }

    const NODE: &str = "n1";
    const NAMESPACES: [&str; 4] = ["ns0", "ns1", "ns2", "ns3"];
    const APPS: [&str; 3] = ["web", "db", "api"];

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    fn random_ip4(rng: &mut Rng) -> IpAddr {
        match rng.below(20) {
            // Addresses repeat: two pods may hold one for a while.
            0..=15 => Ipv4Addr::new(10, 244, 1 + rng.below(2) as u8, 1 + rng.below(8) as u8),
            16 | 17 => Ipv4Addr::new(192, 0, 2, 1 + rng.below(3) as u8),
            18 => Ipv4Addr::new(172, 30, 0, 1 + rng.below(3) as u8),
            _ => Ipv4Addr::new(10, 99, 0, 1),
        }
        .into()
    }

    /// The IPv6 twin of `random_ip4` (dual-stack pods and nodes).
    fn random_ip6(rng: &mut Rng) -> IpAddr {
        let seg = |n: usize| n as u16;
        match rng.below(20) {
            0..=15 => Ipv6Addr::new(0xfd00, 0x244, seg(1 + rng.below(2)), 0, 0, 0, 0, seg(1 + rng.below(8))),
            16 | 17 => Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, seg(1 + rng.below(3))),
            18 => Ipv6Addr::new(0xfd00, 0x30, 0, 0, 0, 0, 0, seg(1 + rng.below(3))),
            _ => Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 1),
        }
        .into()
    }

    fn random_pod(rng: &mut Rng, namespace: &str, name: &str) -> Pod {
        let mut l = labels(&[("app", *rng.pick(&APPS))]);
        if rng.chance(30) {
            l.insert("tier".into(), "frontend".into());
        }
        let ips = match rng.below(12) {
            0 => vec![],
            1 => vec![random_ip4(rng), random_ip4(rng)],
            // Dual-stack, either order; IPv6 only.
            2..=4 => vec![random_ip4(rng), random_ip6(rng)],
            5 => vec![random_ip6(rng), random_ip4(rng)],
            6 => vec![random_ip6(rng)],
            _ => vec![random_ip4(rng)],
        };
        let ports = if rng.chance(60) {
            vec![ContainerPort {
                name: Some("http".into()),
                port: *rng.pick(&[80, 8080]),
                protocol: Protocol::Tcp,
                host_port: None,
                host_ip: None,
            }]
        } else {
            vec![]
        };
        Pod {
            key: PodKey::new(namespace, name),
            labels: l,
            ips,
            node: rng.pick(&["n1", "n1", "n2"]).to_string(),
            host_network: rng.chance(5),
            ports,
        }
    }

    fn random_peer(rng: &mut Rng) -> Peer {
        let app = LabelSelector::labels([("app", *rng.pick(&APPS))]);
        let team = LabelSelector::labels([("team", *rng.pick(&["a", "b"]))]);
        match rng.below(10) {
            0 => Peer::Pods { namespaces: NamespaceScope::PolicyNamespace, pods: app },
            1 => Peer::Pods { namespaces: NamespaceScope::Selected(team), pods: LabelSelector::everything() },
            2 => Peer::Pods { namespaces: NamespaceScope::Selected(team), pods: app },
            3 => Peer::Pods {
                namespaces: NamespaceScope::Selected(LabelSelector::everything()),
                pods: LabelSelector {
                    match_labels: Default::default(),
                    match_expressions: vec![Requirement {
                        key: "tier".into(),
                        operator: Operator::Exists,
                        values: Default::default(),
                    }],
                },
            },
            4 => Peer::IpBlock(IpBlock::new(net("10.244.1.0/24"), [net("10.244.1.4/32")])),
            5 => Peer::IpBlock(IpBlock::new(net("192.0.2.0/24"), [net("192.0.2.2/32")])),
            // IPv6 blocks: inside the IPv6 cluster CIDR, outside, everything.
            6 => Peer::IpBlock(IpBlock::new(net("fd00:244:1::/64"), [net("fd00:244:1::4/128")])),
            7 => Peer::IpBlock(IpBlock::new(net("2001:db8::/32"), [net("2001:db8::2/128")])),
            8 => Peer::IpBlock(IpBlock::new(net("::/0"), [net("fd00::/8")])),
            _ => Peer::IpBlock(IpBlock::new(net("0.0.0.0/0"), [net("10.0.0.0/8")])),
        }
    }

    fn random_rule(rng: &mut Rng) -> Rule {
        let peers = (0..rng.below(3)).map(|_| random_peer(rng)).collect();
        let ports = match rng.below(4) {
            0 => vec![],
            1 => vec![PortSpec { protocol: Protocol::Tcp, port: Some(PortRef::Number(80)), end_port: None }],
            2 => vec![PortSpec { protocol: Protocol::Tcp, port: Some(PortRef::Name("http".into())), end_port: None }],
            _ => vec![PortSpec { protocol: Protocol::Udp, port: Some(PortRef::Number(53)), end_port: Some(60) }],
        };
        Rule { peers, ports }
    }

    fn random_policy(rng: &mut Rng, namespace: &str, name: &str) -> NetworkPolicy {
        let pod_selector = if rng.chance(40) {
            LabelSelector::everything()
        } else {
            LabelSelector::labels([("app", *rng.pick(&APPS))])
        };
        let types = PolicyTypes { ingress: rng.chance(80), egress: rng.chance(50) };
        NetworkPolicy {
            name: PolicyName::new(namespace, name),
            pod_selector,
            types,
            ingress: (0..rng.below(3)).map(|_| random_rule(rng)).collect(),
            egress: (0..rng.below(3)).map(|_| random_rule(rng)).collect(),
        }
    }

    /// The cluster a sequence starts from, and the node's other inputs.
    struct World {
        model: PolicyModel,
        nodes: NodeAddresses,
        cidrs: Vec<IpNetwork>,
        leases: Vec<(IpAddr, Option<String>)>,
    }

    impl World {
        fn new(rng: &mut Rng) -> Self {
            let mut model = PolicyModel::default();
            for ns in NAMESPACES.iter().take(3) {
                model.add_namespace(Namespace::new(ns, labels(&[("team", *rng.pick(&["a", "b"]))])));
            }
            for i in 0..12 {
                let ns = *rng.pick(&NAMESPACES);
                model.add_pod(random_pod(rng, ns, &format!("p{i}")));
            }
            for i in 0..4 {
                let ns = *rng.pick(&NAMESPACES);
                model.add_policy(random_policy(rng, ns, &format!("pol{i}")));
            }
            // Dual-stack nodes, one IPv4 only.
            let nodes = [("n1", "172.30.0.1", Some("fd00:30::1")), ("n2", "172.30.0.2", Some("fd00:30::2"))]
                .into_iter()
                .chain([("n3", "172.30.0.3", None)])
                .map(|(n, ip, ip6)| {
                    let ips = std::iter::once(ip).chain(ip6).map(|a| a.parse().unwrap()).collect();
                    (n.to_string(), ips)
                })
                .collect();
            World { model, nodes, cidrs: vec![net("10.244.0.0/16"), net("fd00:244::/32")], leases: vec![] }
        }

        fn inputs(&self) -> NodeInputs<'_> {
            NodeInputs { node: NODE, nodes: &self.nodes, cluster_cidrs: &self.cidrs, leases: &self.leases }
        }

        /// One random change; what it touched and what it was.
        fn change(&mut self, rng: &mut Rng) -> (Touched, String) {
            let mut t = Touched::default();
            let what = match rng.below(100) {
                0..=39 => {
                    // A pod added, relabelled, moved, readdressed.
                    let ns = *rng.pick(&NAMESPACES);
                    let name = format!("p{}", rng.below(16));
                    let mut pod = random_pod(rng, ns, &name);
                    if let (true, Some(old)) = (rng.chance(50), self.model.pods.get(&pod.key)) {
                        // Only its labels change (the common case).
                        pod = Pod { labels: pod.labels, ..old.clone() };
                    }
                    t.pods.insert(pod.key.clone());
                    let what = format!("pod {} {:?} {:?} on {}", pod.key, pod.labels, pod.ips, pod.node);
                    self.model.add_pod(pod);
                    what
                }
                40..=49 => {
                    let Some(key) = self.model.pods.keys().nth(rng.below(self.model.pods.len().max(1))).cloned() else {
                        return (t, "nothing".into());
                    };
                    self.model.pods.remove(&key);
                    t.pods.insert(key.clone());
                    format!("pod {key} deleted")
                }
                50..=59 => {
                    let ns = *rng.pick(&NAMESPACES);
                    t.namespaces.insert(ns.to_string());
                    if rng.chance(20) {
                        self.model.namespaces.remove(ns);
                        format!("namespace {ns} deleted")
                    } else {
                        let team = *rng.pick(&["a", "b", "c"]);
                        self.model.add_namespace(Namespace::new(ns, labels(&[("team", team)])));
                        format!("namespace {ns} team={team}")
                    }
                }
                60..=79 => {
                    let ns = *rng.pick(&NAMESPACES);
                    let name = format!("pol{}", rng.below(6));
                    let p = random_policy(rng, ns, &name);
                    t.policies.insert(p.name.clone());
                    let what = format!("policy {:?}", p);
                    self.model.add_policy(p);
                    what
                }
                80..=87 => {
                    let Some(name) =
                        self.model.policies.keys().nth(rng.below(self.model.policies.len().max(1))).cloned()
                    else {
                        return (t, "nothing".into());
                    };
                    self.model.remove_policy(&name);
                    t.policies.insert(name.clone());
                    format!("policy {name} deleted")
                }
                88..=96 => {
                    // The IPAM leases change (an ADD or a DEL on this node).
                    let ip: IpAddr = if rng.chance(30) {
                        Ipv6Addr::new(0xfd00, 0x244, 1, 0, 0, 0, 0, 1 + rng.below(8) as u16).into()
                    } else {
                        Ipv4Addr::new(10, 244, 1, 1 + rng.below(8) as u8).into()
                    };
                    if rng.chance(40) && !self.leases.is_empty() {
                        let i = rng.below(self.leases.len());
                        self.leases.remove(i);
                    } else {
                        let owner = match rng.below(3) {
                            0 => None,
                            _ => Some(format!("{}/p{}", rng.pick(&NAMESPACES), rng.below(16))),
                        };
                        self.leases.retain(|(a, _)| *a != ip);
                        self.leases.push((ip, owner));
                    }
                    format!("leases {:?}", self.leases)
                }
                _ => {
                    // A node's addresses change (it gains or loses IPv6).
                    let mut ips = vec![IpAddr::from(Ipv4Addr::new(172, 30, 0, 1 + rng.below(4) as u8))];
                    if rng.chance(50) {
                        ips.push(Ipv6Addr::new(0xfd00, 0x30, 0, 0, 0, 0, 0, 1 + rng.below(4) as u16).into());
                    }
                    let what = format!("n3 at {ips:?}");
                    self.nodes.insert("n3".into(), ips);
                    what
                }
            };
            (t, what)
        }
    }

    /// Two maps equal, or a panic naming only the entries that differ.
    fn assert_same<K: Ord + std::fmt::Debug, V: PartialEq + std::fmt::Debug>(
        got: &BTreeMap<K, V>,
        want: &BTreeMap<K, V>,
        context: &str,
        what: &str,
    ) {
        let keys: BTreeSet<&K> = got.keys().chain(want.keys()).collect();
        let differ: Vec<String> = keys
            .into_iter()
            .filter(|k| got.get(*k) != want.get(*k))
            .map(|k| format!("{k:?}: incremental {:?}, full {:?}", got.get(k), want.get(k)))
            .collect();
        assert!(differ.is_empty(), "{context}: {what} differ:\n{}", differ.join("\n"));
    }

    /// What `desired` computes from scratch, with the incremental side's
    /// identity numbers and policy refs (those are kept, not recomputed).
    fn check_equal(engine: &IncrementalDesired, w: &World, context: &str) {
        let facts =
            NodeFacts { node: NODE, nodes: &w.nodes, cluster_cidrs: &w.cidrs, leases: &w.leases, generations: None };
        let mut allocator = engine.allocator().clone();
        let mut refs = engine.refs().clone();
        let (want, compiled) =
            desired(w.model.clone(), &facts, &mut allocator, &mut IdentityCache::default(), &mut refs);
        assert_same(&engine.identities().prefixes, &compiled.identities.prefixes, context, "identity prefixes");
        assert_same(&engine.identities().classes, &compiled.identities.classes, context, "identity classes");
        assert_same(engine.compiled(), &compiled.pods, context, "compiled pods");
        assert_same(engine.pods(), &want.pods, context, "desired pods");
        assert_eq!(engine.to_desired(), want, "{context}: desired maps");
        assert_eq!(allocator.len(), engine.allocator().len(), "{context}: classes the allocator keeps");
        assert_eq!(&refs, engine.refs(), "{context}: policy refs");
    }

    #[test]
    fn random_changes_give_what_a_full_compile_gives_after_every_step() {
        let mut incremental_steps = 0;
        for seed in 1..=60u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            let mut w = World::new(&mut rng);
            let mut engine = IncrementalDesired::new(NODE, PolicyRefs::default());
            assert!(engine.update(&w.model, &Touched::everything(), &w.inputs()).rebuilt);
            check_equal(&engine, &w, &format!("seed {seed}, start"));
            for step in 0..80 {
                let (touched, what) = w.change(&mut rng);
                let summary = engine.update(&w.model, &touched, &w.inputs());
                if !summary.rebuilt {
                    incremental_steps += 1;
                }
                check_equal(&engine, &w, &format!("seed {seed}, step {step} ({what})"));
            }
        }
        assert!(incremental_steps > 2_000, "most steps must take the incremental path: {incremental_steps}");
    }

    /// A cluster of `pods` pods over `namespaces` namespaces, 10 on this
    /// node, and a policy per namespace admitting one app from a team.
    fn scale_world(pods: usize, namespaces: usize) -> World {
        let mut model = PolicyModel::default();
        for n in 0..namespaces {
            model.add_namespace(Namespace::new(&format!("ns{n}"), labels(&[("team", &format!("t{}", n % 5))])));
            model.add_policy(NetworkPolicy {
                name: PolicyName::new(&format!("ns{n}"), "allow"),
                pod_selector: LabelSelector::everything(),
                types: PolicyTypes { ingress: true, egress: false },
                ingress: vec![Rule {
                    peers: vec![Peer::Pods {
                        namespaces: NamespaceScope::Selected(LabelSelector::labels([("team", "t1")])),
                        pods: LabelSelector::labels([("app", "a1")]),
                    }],
                    ports: vec![],
                }],
                egress: vec![],
            });
        }
        for i in 0..pods {
            model.add_pod(Pod {
                key: PodKey::new(&format!("ns{}", i % namespaces), &format!("p{i}")),
                labels: labels(&[("app", &format!("a{}", i % 4))]),
                ips: vec![Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 0, 0)) + 1 + i as u32).into()],
                node: if i % (pods / 10) == 0 { NODE.into() } else { "n2".into() },
                host_network: false,
                ports: vec![],
            });
        }
        let nodes = [("n1", Ipv4Addr::new(172, 30, 0, 1)), ("n2", Ipv4Addr::new(172, 30, 0, 2))]
            .map(|(n, ip)| (n.into(), vec![ip.into()]))
            .into();
        World { model, nodes, cidrs: vec![net("10.244.0.0/16")], leases: vec![] }
    }

    #[test]
    fn a_label_change_reclassifies_one_pod_and_recompiles_only_the_pods_whose_rules_it_reaches() {
        let mut w = scale_world(2_000, 50);
        let mut engine = IncrementalDesired::new(NODE, PolicyRefs::default());
        engine.update(&w.model, &Touched::everything(), &w.inputs());
        // A remote pod in a team-t1 namespace becomes app=a1: a new class
        // (no other a1 pod in its namespace had app... it had a3), which
        // every local pod's policy admits.
        let key = PodKey::new("ns1", "p51");
        w.model.pods.get_mut(&key).unwrap().labels.insert("app".into(), "a1".into());
        let touched = Touched { pods: [key.clone()].into(), ..Touched::default() };
        let s = engine.update(&w.model, &touched, &w.inputs());
        assert!(!s.rebuilt);
        assert_eq!((s.pods_reclassified, s.prefixes_changed), (1, 1), "{s:?}");
        assert_eq!(s.pods_recompiled, 0, "ns1's a1 class existed already: no rule resolves differently: {s:?}");
        check_equal(&engine, &w, "a pod joins an existing class");
        // A pod in a team-t2 namespace: its new class matches no rule.
        let key = PodKey::new("ns2", "p52");
        w.model.pods.get_mut(&key).unwrap().labels.insert("app".into(), "other".into());
        let s = engine.update(&w.model, &Touched { pods: [key].into(), ..Touched::default() }, &w.inputs());
        assert_eq!((s.pods_reclassified, s.pods_recompiled, s.classes_changed), (1, 0, 1), "{s:?}");
        check_equal(&engine, &w, "a new class no rule matches");
        // A new class in a t1 namespace with app=a1: every local pod's
        // rule admits it.
        let key = PodKey::new("ns6", "p6");
        w.model.pods.get_mut(&key).unwrap().labels.insert("extra".into(), "yes".into());
        w.model.pods.get_mut(&key).unwrap().labels.insert("app".into(), "a1".into());
        let s = engine.update(&w.model, &Touched { pods: [key].into(), ..Touched::default() }, &w.inputs());
        assert_eq!(s.pods_recompiled, 10, "{s:?}");
        check_equal(&engine, &w, "a new class every rule matches");
        // A policy change recompiles its namespace's local pods only.
        let name = PolicyName::new("ns0", "allow");
        w.model.policies.get_mut(&name).unwrap().ingress[0].ports =
            vec![PortSpec { protocol: Protocol::Tcp, port: Some(PortRef::Number(80)), end_port: None }];
        let s = engine.update(&w.model, &Touched { policies: [name].into(), ..Touched::default() }, &w.inputs());
        let local_in_ns0 = w.model.pods.values().filter(|p| p.node == NODE && p.key.namespace == "ns0").count();
        assert_eq!((s.pods_reclassified, s.pods_recompiled), (0, local_in_ns0), "{s:?}");
        check_equal(&engine, &w, "a policy change");
    }
}
