//! NetworkPolicy's maps kept equal to the compiled policy of this node's
//! pods (issue 25): `POLICY_IDENTITIES`, `POLICY_RULES`,
//! `POLICY_ENDPOINTS` and `POLICY_PODS` (the CNI plugin's copy, by pod
//! name), then `POLICY_STATE.epoch`. Both families (issue 28): identities
//! and endpoints are keyed by `IpNetwork` / `IpAddr` here, and the tables
//! write an IPv6 key into the IPv6 twin (`POLICY_IDENTITIES6`,
//! `POLICY_ENDPOINTS6`); a pod's IPv6 endpoint entry is its IPv4 one.
//!
//! - `desired` (pure): from the watchers' model, the node's IPAM leases and
//!   the node list, what the four maps must hold.
//! - `PolicyReconciler::apply` (pure decisions over `PolicyTables`, a small
//!   trait the real maps and the tests' fake tables implement).
//!
//! **Rule sets are content-addressed.** A pod's allow entries form a set;
//! pods with the same set share one `rules_id` (a Deployment's replicas
//! do). A pod whose rules change moves to the `rules_id` of its new set,
//! written completely first (a fresh id when the set is new), with one
//! `POLICY_ENDPOINTS` update per address; a set nobody uses any more is
//! deleted after that. A packet sees the old rules or the new ones, never a
//! mix. On restart the sets are read back from `POLICY_RULES`, so an
//! unchanged policy rewrites nothing.
//!
//! **Order** of one pass: new and changed identities; new rule sets;
//! endpoints; `POLICY_PODS`; then what is gone: rule sets, endpoints,
//! identities, `POLICY_PODS` entries; then the epoch, when anything
//! changed (the datapath re-judges open connections on their next packet).
//!
//! **Repair, never destroy on an inference.** An address the IPAM leases
//! give to a pod the agent does not know yet (the CNI plugin wrote its
//! entries, the watch has not shown the pod) keeps its `POLICY_ENDPOINTS`
//! and `/32` identity entries.
//!
//! **A full map fails closed**: a rule set that does not fit is removed
//! again, and the pods that needed it are isolated in their directions with
//! no allow entry (`rules_id` 0); a `POLICY_IDENTITIES` that is full does
//! that to every isolated pod (a missing except-prefix could open what a
//! policy closes). Each is a named `PolicyMapFull` in the pass's report.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt,
    net::IpAddr,
};

use ipnetwork::IpNetwork;
use sluice_common::policy::{
    Direction, EndpointPolicy, PolicyKey, PolicyValue, IDENTITY_ANY, IDENTITY_UNKNOWN_CLUSTER,
};

use crate::policy::{
    compile::{compile_pods, CompiledNode, Peers, PodPolicy},
    entries::{rule_keys, RuleKey},
    identity::{IdentityAllocator, IdentityTable},
    model::{host_prefix, is_host_prefix, IpBlock, NodeAddresses, PodKey, PolicyModel, PolicyName},
};

/// A pod's allow entries, with `rules_id` 0 in every key (the set's id is
/// put in when it is written).
pub type RuleSet = BTreeMap<RuleKey, PolicyValue>;

/// What `POLICY_PODS` holds for a pod (`PodPolicy` in the contract): its
/// endpoint entry and identities, for the CNI plugin to copy at ADD.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodEntry {
    pub endpoint: EndpointPolicy,
    /// For its IPv4 address.
    pub identity: u32,
    /// For its IPv6 address.
    pub identity6: u32,
}

/// One local pod as the maps must show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredPod {
    /// Its addresses: `status.podIPs` and the IPAM leases naming it.
    pub ips: BTreeSet<IpAddr>,
    /// `ENDPOINT_*_ISOLATED`.
    pub flags: u32,
    pub rules: RuleSet,
    /// Its identity (of its first IPv4 address; `IDENTITY_UNKNOWN_CLUSTER`
    /// before it has one).
    pub identity: u32,
    /// The same of its first IPv6 address.
    pub identity6: u32,
}

/// A pod's identities (IPv4, IPv6): each its first address of that
/// family's entry (its own host prefix: an exact lookup, not a scan);
/// `IDENTITY_UNKNOWN_CLUSTER` without one.
pub fn pod_identities(ips: impl IntoIterator<Item = IpAddr>, table: &IdentityTable) -> (u32, u32) {
    let (mut v4, mut v6) = (None, None);
    for ip in ips {
        let slot = if ip.is_ipv4() { &mut v4 } else { &mut v6 };
        if slot.is_none() {
            *slot = Some(table.prefixes.get(&host_prefix(ip)).copied().unwrap_or_else(|| table.lookup(ip)));
        }
    }
    (v4.unwrap_or(IDENTITY_UNKNOWN_CLUSTER), v6.unwrap_or(IDENTITY_UNKNOWN_CLUSTER))
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub identities: BTreeMap<IpNetwork, u32>,
    pub pods: BTreeMap<PodKey, DesiredPod>,
    /// Leased addresses of pods the agent does not know: their entries are
    /// left alone.
    pub unknown_leased: BTreeSet<IpAddr>,
}

/// [`Desired`], borrowed: what [`PolicyReconciler::apply`] reads (the
/// incremental compiler keeps its parts in place).
#[derive(Clone, Copy, Debug)]
pub struct DesiredView<'a> {
    pub identities: &'a BTreeMap<IpNetwork, u32>,
    pub pods: &'a BTreeMap<PodKey, DesiredPod>,
    pub unknown_leased: &'a BTreeSet<IpAddr>,
}

impl<'a> From<&'a Desired> for DesiredView<'a> {
    fn from(d: &'a Desired) -> Self {
        DesiredView { identities: &d.identities, pods: &d.pods, unknown_leased: &d.unknown_leased }
    }
}

/// Policy names ↔ the `policy_ref` numbers in `POLICY_RULES` values. A
/// name keeps its number while any rule names it, so adding a policy does
/// not renumber (and rewrite) every other's entries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyRefs {
    by_name: BTreeMap<PolicyName, u32>,
}

impl PolicyRefs {
    pub fn from_table(table: &BTreeMap<u32, PolicyName>) -> Self {
        Self { by_name: table.iter().map(|(&r, n)| (n.clone(), r)).collect() }
    }

    /// `ref → name`, as the agent writes it for `monitor`.
    pub fn table(&self) -> BTreeMap<u32, PolicyName> {
        self.by_name.iter().map(|(n, &r)| (r, n.clone())).collect()
    }

    pub(crate) fn get_or_add(&mut self, name: &PolicyName) -> u32 {
        if let Some(&r) = self.by_name.get(name) {
            return r;
        }
        let used: BTreeSet<u32> = self.by_name.values().copied().collect();
        let r = (0..).find(|r| !used.contains(r)).expect("fewer than 2^32 policies");
        self.by_name.insert(name.clone(), r);
        r
    }

    pub(crate) fn retain(&mut self, live: &BTreeSet<PolicyName>) {
        self.by_name.retain(|n, _| live.contains(n));
    }
}

/// What the identity table was built from, besides the pods and
/// namespaces (named by their watch generations).
#[derive(Clone, Debug, PartialEq, Eq)]
struct IdentityInputs {
    generations: (u64, u64),
    ip_blocks: BTreeSet<IpBlock>,
    nodes: NodeAddresses,
    cluster_cidrs: Vec<IpNetwork>,
    leases: Vec<(IpAddr, Option<String>)>,
}

/// The last identity table, kept while its inputs stay the same: a change
/// to policies alone (not to their ipBlocks) compiles the local pods
/// against it instead of classifying every pod of the cluster again.
#[derive(Debug, Default)]
pub struct IdentityCache {
    inputs: Option<IdentityInputs>,
    table: IdentityTable,
    /// Passes that reused the table (for tests and logs).
    pub reused: u64,
}

/// The inputs of `desired` besides the watchers' model.
pub struct NodeFacts<'a> {
    pub node: &'a str,
    /// Node name → its addresses, every node (this one included).
    pub nodes: &'a NodeAddresses,
    pub cluster_cidrs: &'a [IpNetwork],
    /// This node's IPAM leases: address → `namespace/name` when the
    /// runtime named the pod.
    pub leases: &'a [(IpAddr, Option<String>)],
    /// The watch generations of pods and namespaces the model is at
    /// (`None`: unknown, never reuse an identity table).
    pub generations: Option<(u64, u64)>,
}

/// What the maps must hold. `model` is the watchers' view (a copy: this
/// node's leased addresses are added to its pods).
pub fn desired(
    mut model: PolicyModel,
    facts: &NodeFacts,
    allocator: &mut IdentityAllocator,
    cache: &mut IdentityCache,
    refs: &mut PolicyRefs,
) -> (Desired, CompiledNode) {
    model.nodes = facts.nodes.clone();
    model.cluster_cidrs = facts.cluster_cidrs.to_vec();
    let mut unknown_leased = BTreeSet::new();
    for (ip, owner) in facts.leases {
        let pod = owner.as_deref().and_then(|o| o.split_once('/')).map(|(ns, name)| PodKey::new(ns, name));
        match pod.and_then(|k| model.pods.get_mut(&k)) {
            Some(p) if p.node == facts.node && !p.host_network => {
                if !p.ips.contains(ip) {
                    p.ips.push(*ip);
                }
            }
            // A lease of a pod the watch has not shown (or shows on
            // another node: the lease is then stale, but not ours to judge).
            _ => {
                unknown_leased.insert(*ip);
            }
        }
    }
    let inputs = facts.generations.map(|generations| IdentityInputs {
        generations,
        ip_blocks: model.ip_blocks(),
        nodes: facts.nodes.clone(),
        cluster_cidrs: facts.cluster_cidrs.to_vec(),
        leases: facts.leases.to_vec(),
    });
    let identities = match (&inputs, &cache.inputs) {
        (Some(now), Some(then)) if now == then => {
            cache.reused += 1;
            cache.table.clone()
        }
        _ => {
            let table = IdentityTable::build(&model, facts.node, allocator);
            cache.inputs = inputs;
            cache.table = table.clone();
            table
        }
    };
    let pods = compile_pods(&model, facts.node, &identities);
    let compiled = CompiledNode { node: facts.node.to_string(), identities, pods };
    let live: BTreeSet<PolicyName> = compiled
        .pods
        .values()
        .flat_map(|p| p.ingress.rules.iter().chain(&p.egress.rules))
        .map(|r| r.policy.clone())
        .collect();
    refs.retain(&live);
    let mut pods = BTreeMap::new();
    for (key, policy) in &compiled.pods {
        let Some(pod) = model.pods.get(key) else { continue };
        let ips: BTreeSet<IpAddr> = pod.ips.iter().copied().collect();
        let (identity, identity6) = pod_identities(pod.ips.iter().copied(), &compiled.identities);
        let (flags, rules) = pod_rules(policy, refs);
        pods.insert(key.clone(), DesiredPod { ips, flags, rules, identity, identity6 });
    }
    let desired = Desired { identities: compiled.identities.prefixes.clone(), pods, unknown_leased };
    (desired, compiled)
}

/// A pod's isolation flags and allow entries (as `entries::lower` makes
/// them, with `rules_id` 0 and stable policy refs).
pub fn pod_rules(policy: &PodPolicy, refs: &mut PolicyRefs) -> (u32, RuleSet) {
    let mut flags = 0;
    let mut rules = RuleSet::new();
    for direction in [Direction::Ingress, Direction::Egress] {
        let d = policy.direction(direction);
        if !d.isolated() {
            continue;
        }
        flags |= direction.isolation_flag();
        for rule in &d.rules {
            let value = PolicyValue { policy_ref: refs.get_or_add(&rule.policy) };
            let ids: Vec<u32> = match &rule.peers {
                Peers::Any => vec![IDENTITY_ANY],
                Peers::Identities(ids) => ids.iter().copied().collect(),
            };
            for id in ids {
                for key in rule_keys(0, id, direction, rule.ports) {
                    rules.entry(key).and_modify(|v| v.policy_ref = v.policy_ref.min(value.policy_ref)).or_insert(value);
                }
            }
        }
    }
    (flags, rules)
}

/// The four maps' contents as read back (or as last written).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Actual {
    pub identities: BTreeMap<IpNetwork, u32>,
    pub endpoints: BTreeMap<IpAddr, EndpointPolicy>,
    /// Keys carry their `rules_id`.
    pub rules: BTreeMap<RuleKey, PolicyValue>,
    pub pods: BTreeMap<String, PodEntry>,
}

/// Why a table refused a write.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// No room for one more entry (E2BIG).
    #[error("map {0} is full")]
    Full(&'static str),
    #[error("{0:#}")]
    Other(anyhow::Error),
}

/// The maps, as the reconciler writes them. Deleting what is not there is
/// success.
pub trait PolicyTables {
    fn read(&mut self) -> anyhow::Result<Actual>;
    fn put_identity(&mut self, prefix: IpNetwork, identity: u32) -> Result<(), TableError>;
    fn del_identity(&mut self, prefix: IpNetwork) -> Result<(), TableError>;
    fn put_rule(&mut self, key: RuleKey, value: PolicyValue) -> Result<(), TableError>;
    fn del_rule(&mut self, key: RuleKey) -> Result<(), TableError>;
    fn put_endpoint(&mut self, ip: IpAddr, entry: EndpointPolicy) -> Result<(), TableError>;
    fn del_endpoint(&mut self, ip: IpAddr) -> Result<(), TableError>;
    fn put_pod(&mut self, name: &str, entry: PodEntry) -> Result<(), TableError>;
    fn del_pod(&mut self, name: &str) -> Result<(), TableError>;
    fn bump_epoch(&mut self) -> Result<(), TableError>;
}

/// A full map, and whom it left isolated with no allow entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyMapFull {
    pub map: &'static str,
    pub pods: Vec<PodKey>,
}

impl fmt::Display for PolicyMapFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "policy map {} is full: ", self.map)?;
        if self.pods.is_empty() {
            return write!(f, "no pod affected");
        }
        let names: Vec<String> = self.pods.iter().take(5).map(ToString::to_string).collect();
        write!(f, "{} isolated with no allow rule (failed closed)", names.join(", "))?;
        if self.pods.len() > 5 {
            write!(f, " and {} more", self.pods.len() - 5)?;
        }
        Ok(())
    }
}

/// What one pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub written: usize,
    pub deleted: usize,
    /// Rule sets written / deleted.
    pub sets_added: usize,
    pub sets_removed: usize,
    pub epoch_bumped: bool,
    pub full: Vec<PolicyMapFull>,
}

impl ApplyReport {
    pub fn changed(&self) -> bool {
        self.written + self.deleted > 0
    }
}

/// Keeps the maps equal to `Desired` (see the module comment).
#[derive(Debug, Default)]
pub struct PolicyReconciler {
    /// What the maps hold, as far as this agent knows (read at `resume`
    /// and `refresh`, then kept by every write).
    actual: Actual,
    /// Rule sets in `POLICY_RULES`: id → content, and back.
    sets: BTreeMap<u32, RuleSet>,
    by_content: HashMap<RuleSet, u32>,
    next_id: u32,
}

fn split_sets(rules: &BTreeMap<RuleKey, PolicyValue>) -> BTreeMap<u32, RuleSet> {
    let mut sets: BTreeMap<u32, RuleSet> = BTreeMap::new();
    for (&(key, prefix), &value) in rules {
        let id = u32::from_be(key.rules_id_be);
        sets.entry(id).or_default().insert((PolicyKey { rules_id_be: 0, ..key }, prefix), value);
    }
    sets
}

fn with_id((key, prefix): RuleKey, id: u32) -> RuleKey {
    (PolicyKey { rules_id_be: id.to_be(), ..key }, prefix)
}

fn ignore_missing(r: Result<(), TableError>) -> anyhow::Result<()> {
    r.map_err(|e| anyhow::anyhow!("{e}"))
}

impl PolicyReconciler {
    /// Take over what the maps hold (an earlier agent's writes).
    pub fn resume(tables: &mut impl PolicyTables) -> anyhow::Result<Self> {
        let mut me = Self::default();
        me.refresh(tables)?;
        Ok(me)
    }

    /// Read the maps again (the CNI plugin writes them too).
    pub fn refresh(&mut self, tables: &mut impl PolicyTables) -> anyhow::Result<()> {
        self.actual = tables.read()?;
        self.sets = split_sets(&self.actual.rules);
        // A set the maps hold twice under two ids (an older agent's
        // leftovers) is addressed by its lowest id; the other goes when
        // nothing uses it.
        self.by_content.clear();
        for (&id, set) in self.sets.iter().rev() {
            self.by_content.insert(set.clone(), id);
        }
        self.next_id = self.sets.keys().next_back().map_or(1, |&id| id.wrapping_add(1).max(1));
        Ok(())
    }

    pub fn actual(&self) -> &Actual {
        &self.actual
    }

    pub fn rule_sets(&self) -> usize {
        self.sets.len()
    }

    fn fresh_id(&mut self) -> u32 {
        loop {
            let id = self.next_id.max(1);
            self.next_id = id.wrapping_add(1);
            if !self.sets.contains_key(&id) {
                return id;
            }
        }
    }

    /// Write the set `rules` under a fresh id; on a full map take back
    /// what was written and return `None`.
    fn write_set(
        &mut self,
        tables: &mut impl PolicyTables,
        rules: &RuleSet,
        report: &mut ApplyReport,
    ) -> anyhow::Result<Option<u32>> {
        let id = self.fresh_id();
        let mut written = Vec::new();
        for (&key, &value) in rules {
            match tables.put_rule(with_id(key, id), value) {
                Ok(()) => written.push(with_id(key, id)),
                // Never half a set: what was written goes again.
                Err(TableError::Full(_)) => {
                    for k in written {
                        ignore_missing(tables.del_rule(k))?;
                    }
                    return Ok(None);
                }
                Err(TableError::Other(e)) => {
                    for k in written {
                        let _ = tables.del_rule(k);
                    }
                    return Err(e.context("write a rule set to POLICY_RULES"));
                }
            }
        }
        for (&key, &value) in rules {
            self.actual.rules.insert(with_id(key, id), value);
        }
        report.written += rules.len();
        report.sets_added += 1;
        self.sets.insert(id, rules.clone());
        self.by_content.insert(rules.clone(), id);
        Ok(Some(id))
    }

    /// One pass: make the maps hold `desired`.
    pub fn apply<'d>(
        &mut self,
        tables: &mut impl PolicyTables,
        desired: impl Into<DesiredView<'d>>,
    ) -> anyhow::Result<ApplyReport> {
        let desired: DesiredView<'d> = desired.into();
        let mut report = ApplyReport::default();

        // 1. New and changed identities, wide prefixes first (the cluster
        // CIDR before the pods in it).
        // The map (IPv4's or IPv6's) that had no room.
        let mut identities_full: Option<&'static str> = None;
        let mut new_identities: Vec<(&IpNetwork, &u32)> =
            desired.identities.iter().filter(|(p, id)| self.actual.identities.get(p) != Some(id)).collect();
        new_identities.sort_by_key(|(p, _)| (p.prefix(), **p));
        for (&prefix, &id) in new_identities {
            match tables.put_identity(prefix, id) {
                Ok(()) => {
                    self.actual.identities.insert(prefix, id);
                    report.written += 1;
                }
                Err(TableError::Full(map)) => {
                    identities_full = Some(map);
                    break;
                }
                Err(TableError::Other(e)) => return Err(e.context(format!("policy identity {prefix} → {id}"))),
            }
        }

        // 2. Each pod's rule set: an existing one, or written now.
        let mut rules_full = Vec::new();
        let mut chosen: BTreeMap<&PodKey, EndpointPolicy> = BTreeMap::new();
        for (key, pod) in desired.pods {
            let rules_id = if pod.rules.is_empty() || identities_full.is_some() {
                0
            } else if let Some(&id) = self.by_content.get(&pod.rules) {
                id
            } else {
                match self.write_set(tables, &pod.rules, &mut report)? {
                    Some(id) => id,
                    None => {
                        rules_full.push(key.clone());
                        0
                    }
                }
            };
            chosen.insert(key, EndpointPolicy { rules_id, flags: pod.flags });
        }
        if let Some(map) = identities_full {
            let isolated = desired.pods.iter().filter(|(_, p)| p.flags != 0).map(|(k, _)| k.clone()).collect();
            report.full.push(PolicyMapFull { map, pods: isolated });
        }
        if !rules_full.is_empty() {
            report.full.push(PolicyMapFull { map: "POLICY_RULES", pods: rules_full });
        }

        // 3. Endpoints: one update per address switches its pod's rules.
        let mut desired_endpoints: BTreeMap<IpAddr, EndpointPolicy> = BTreeMap::new();
        for (key, pod) in desired.pods {
            for &ip in &pod.ips {
                desired_endpoints.insert(ip, chosen[key]);
            }
        }
        // By map: POLICY_ENDPOINTS or POLICY_ENDPOINTS6.
        let mut endpoints_full: BTreeMap<&'static str, Vec<PodKey>> = BTreeMap::new();
        for (key, pod) in desired.pods {
            for &ip in &pod.ips {
                let entry = chosen[key];
                if self.actual.endpoints.get(&ip) == Some(&entry) {
                    continue;
                }
                match tables.put_endpoint(ip, entry) {
                    Ok(()) => {
                        self.actual.endpoints.insert(ip, entry);
                        report.written += 1;
                    }
                    Err(TableError::Full(map)) => endpoints_full.entry(map).or_default().push(key.clone()),
                    Err(TableError::Other(e)) => return Err(e.context(format!("policy endpoint {ip}"))),
                }
            }
        }
        for (map, mut pods) in endpoints_full {
            pods.dedup();
            report.full.push(PolicyMapFull { map, pods });
        }

        // 4. POLICY_PODS, for the CNI plugin.
        let mut pods_full = Vec::new();
        for (key, pod) in desired.pods {
            let name = key.to_string();
            let entry = PodEntry { endpoint: chosen[key], identity: pod.identity, identity6: pod.identity6 };
            if self.actual.pods.get(&name) == Some(&entry) {
                continue;
            }
            match tables.put_pod(&name, entry) {
                Ok(()) => {
                    self.actual.pods.insert(name, entry);
                    report.written += 1;
                }
                Err(TableError::Full(_)) => pods_full.push(key.clone()),
                Err(TableError::Other(e)) => return Err(e.context(format!("POLICY_PODS {name}"))),
            }
        }
        if !pods_full.is_empty() {
            report.full.push(PolicyMapFull { map: "POLICY_PODS", pods: pods_full });
        }

        // 5. What is gone. Endpoints first decide which sets are still used:
        // the desired ones and those of entries left alone.
        let keep_endpoint = |ip: &IpAddr| desired_endpoints.contains_key(ip) || desired.unknown_leased.contains(ip);
        let stale_endpoints: Vec<IpAddr> =
            self.actual.endpoints.keys().filter(|ip| !keep_endpoint(ip)).copied().collect();
        let used: BTreeSet<u32> = self
            .actual
            .endpoints
            .iter()
            .filter(|(ip, _)| keep_endpoint(ip))
            .map(|(_, e)| e.rules_id)
            .chain(chosen.values().map(|e| e.rules_id))
            .collect();
        let unused: Vec<u32> = self.sets.keys().filter(|id| !used.contains(id)).copied().collect();
        // The endpoints leaving still point at their sets: delete them
        // before their sets.
        for ip in stale_endpoints {
            ignore_missing(tables.del_endpoint(ip))?;
            self.actual.endpoints.remove(&ip);
            report.deleted += 1;
        }
        for id in unused {
            let set = self.sets.remove(&id).expect("listed above");
            for &key in set.keys() {
                ignore_missing(tables.del_rule(with_id(key, id)))?;
                self.actual.rules.remove(&with_id(key, id));
            }
            if self.by_content.get(&set) == Some(&id) {
                self.by_content.remove(&set);
            }
            report.deleted += set.len();
            report.sets_removed += 1;
        }
        let keep_identity = |p: &IpNetwork| {
            desired.identities.contains_key(p) || (is_host_prefix(*p) && desired.unknown_leased.contains(&p.ip()))
        };
        let stale_identities: Vec<IpNetwork> =
            self.actual.identities.keys().filter(|p| !keep_identity(p)).copied().collect();
        for p in stale_identities {
            ignore_missing(tables.del_identity(p))?;
            self.actual.identities.remove(&p);
            report.deleted += 1;
        }
        let stale_pods: Vec<String> = self
            .actual
            .pods
            .keys()
            .filter(|name| name.split_once('/').is_none_or(|(ns, n)| !desired.pods.contains_key(&PodKey::new(ns, n))))
            .cloned()
            .collect();
        for name in stale_pods {
            ignore_missing(tables.del_pod(&name))?;
            self.actual.pods.remove(&name);
            report.deleted += 1;
        }

        // 6. Open connections are judged again on their next packet.
        if report.changed() {
            ignore_missing(tables.bump_epoch())?;
            report.epoch_bumped = true;
        }
        Ok(report)
    }
}

/// Tables in memory, shared (clones see the same maps): for tests and
/// measurements of the loop without root.
#[derive(Clone, Debug, Default)]
pub struct MemoryTables {
    pub maps: std::sync::Arc<std::sync::Mutex<Actual>>,
    pub epoch: std::sync::Arc<std::sync::atomic::AtomicU32>,
}

impl MemoryTables {
    fn with<R>(&self, f: impl FnOnce(&mut Actual) -> R) -> Result<R, TableError> {
        Ok(f(&mut self.maps.lock().expect("memory tables lock")))
    }
}

impl PolicyTables for MemoryTables {
    fn read(&mut self) -> anyhow::Result<Actual> {
        Ok(self.maps.lock().expect("memory tables lock").clone())
    }
    fn put_identity(&mut self, prefix: IpNetwork, identity: u32) -> Result<(), TableError> {
        self.with(|m| m.identities.insert(prefix, identity)).map(drop)
    }
    fn del_identity(&mut self, prefix: IpNetwork) -> Result<(), TableError> {
        self.with(|m| m.identities.remove(&prefix)).map(drop)
    }
    fn put_rule(&mut self, key: RuleKey, value: PolicyValue) -> Result<(), TableError> {
        self.with(|m| m.rules.insert(key, value)).map(drop)
    }
    fn del_rule(&mut self, key: RuleKey) -> Result<(), TableError> {
        self.with(|m| m.rules.remove(&key)).map(drop)
    }
    fn put_endpoint(&mut self, ip: IpAddr, entry: EndpointPolicy) -> Result<(), TableError> {
        self.with(|m| m.endpoints.insert(ip, entry)).map(drop)
    }
    fn del_endpoint(&mut self, ip: IpAddr) -> Result<(), TableError> {
        self.with(|m| m.endpoints.remove(&ip)).map(drop)
    }
    fn put_pod(&mut self, name: &str, entry: PodEntry) -> Result<(), TableError> {
        self.with(|m| m.pods.insert(name.to_string(), entry)).map(drop)
    }
    fn del_pod(&mut self, name: &str) -> Result<(), TableError> {
        self.with(|m| m.pods.remove(name)).map(drop)
    }
    fn bump_epoch(&mut self) -> Result<(), TableError> {
        self.epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use sluice_common::policy::{ENDPOINT_EGRESS_ISOLATED, ENDPOINT_INGRESS_ISOLATED, IDENTITY_HOST};

    use super::*;
    use crate::policy::{
        model::{Labels, Namespace, NamespaceScope, NetworkPolicy, Peer, Pod, PolicyTypes, Rule},
        selector::LabelSelector,
    };

    /// Tables in memory that check, write by write, what a packet could
    /// see: an endpoint only ever points at a complete rule set, and a set
    /// is never deleted while an endpoint points at it.
    #[derive(Default)]
    struct FakeTables {
        t: Actual,
        /// Capacity per map (`None`: unbounded).
        max_rules: Option<usize>,
        max_identities: Option<usize>,
        /// Capacity of the IPv6 twins (their entries only), as the real
        /// maps are separate: `POLICY_IDENTITIES6`, `POLICY_ENDPOINTS6`.
        max_identities6: Option<usize>,
        max_endpoints6: Option<usize>,
        epoch: u32,
        /// Every write, in order: ("put_rule", ..) etc.
        log: Vec<String>,
        /// (rules_id, the set as it was when an endpoint switched to it).
        switched_to: Vec<(u32, Vec<RuleKey>)>,
    }

    impl FakeTables {
        fn set(&self, id: u32) -> Vec<RuleKey> {
            self.t.rules.keys().filter(|(k, _)| u32::from_be(k.rules_id_be) == id).copied().collect()
        }

        /// Every switch saw its set as it is now (complete when switched).
        fn check_switches(&self) {
            for (id, seen) in &self.switched_to {
                if self.t.endpoints.values().any(|e| e.rules_id == *id) {
                    assert_eq!(&self.set(*id), seen, "an endpoint switched to rule set {id} before it was complete");
                }
            }
        }
    }

    impl PolicyTables for FakeTables {
        fn read(&mut self) -> anyhow::Result<Actual> {
            Ok(self.t.clone())
        }
        fn put_identity(&mut self, prefix: IpNetwork, identity: u32) -> Result<(), TableError> {
            // IPv6 keys sort after every IPv4 one: count only them.
            let first6: IpNetwork = "::/0".parse().expect("a valid prefix");
            let v6 = self.t.identities.range(first6..).count();
            if !self.t.identities.contains_key(&prefix) {
                if prefix.is_ipv4() && self.max_identities.is_some_and(|m| self.t.identities.len() - v6 >= m) {
                    return Err(TableError::Full("POLICY_IDENTITIES"));
                }
                if prefix.is_ipv6() && self.max_identities6.is_some_and(|m| v6 >= m) {
                    return Err(TableError::Full("POLICY_IDENTITIES6"));
                }
            }
            self.log.push(format!("put_identity {prefix}"));
            self.t.identities.insert(prefix, identity);
            Ok(())
        }
        fn del_identity(&mut self, prefix: IpNetwork) -> Result<(), TableError> {
            self.log.push(format!("del_identity {prefix}"));
            self.t.identities.remove(&prefix);
            Ok(())
        }
        fn put_rule(&mut self, key: RuleKey, value: PolicyValue) -> Result<(), TableError> {
            if !self.t.rules.contains_key(&key) && self.max_rules.is_some_and(|m| self.t.rules.len() >= m) {
                return Err(TableError::Full("POLICY_RULES"));
            }
            let id = u32::from_be(key.0.rules_id_be);
            assert!(
                !self.t.endpoints.values().any(|e| e.rules_id == id),
                "rule set {id} changed while an endpoint uses it"
            );
            self.log.push(format!("put_rule {id}"));
            self.t.rules.insert(key, value);
            Ok(())
        }
        fn del_rule(&mut self, key: RuleKey) -> Result<(), TableError> {
            let id = u32::from_be(key.0.rules_id_be);
            assert!(
                !self.t.endpoints.values().any(|e| e.rules_id == id),
                "rule set {id} deleted while an endpoint uses it"
            );
            self.log.push(format!("del_rule {id}"));
            self.t.rules.remove(&key);
            Ok(())
        }
        fn put_endpoint(&mut self, ip: IpAddr, entry: EndpointPolicy) -> Result<(), TableError> {
            let first6 = IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED);
            let v6 = self.t.endpoints.range(first6..).count();
            if ip.is_ipv6() && !self.t.endpoints.contains_key(&ip) && self.max_endpoints6.is_some_and(|m| v6 >= m) {
                return Err(TableError::Full("POLICY_ENDPOINTS6"));
            }
            self.log.push(format!("put_endpoint {ip} {}", entry.rules_id));
            self.switched_to.push((entry.rules_id, self.set(entry.rules_id)));
            self.t.endpoints.insert(ip, entry);
            Ok(())
        }
        fn del_endpoint(&mut self, ip: IpAddr) -> Result<(), TableError> {
            self.log.push(format!("del_endpoint {ip}"));
            self.t.endpoints.remove(&ip);
            Ok(())
        }
        fn put_pod(&mut self, name: &str, entry: PodEntry) -> Result<(), TableError> {
            self.log.push(format!("put_pod {name}"));
            self.t.pods.insert(name.to_string(), entry);
            Ok(())
        }
        fn del_pod(&mut self, name: &str) -> Result<(), TableError> {
            self.log.push(format!("del_pod {name}"));
            self.t.pods.remove(name);
            Ok(())
        }
        fn bump_epoch(&mut self) -> Result<(), TableError> {
            self.log.push("bump_epoch".into());
            self.epoch = self.epoch.wrapping_add(1);
            Ok(())
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn pod(ns: &str, name: &str, node: &str, ips: &[&str], labels: &[(&str, &str)]) -> Pod {
        Pod {
            key: PodKey::new(ns, name),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ips: ips.iter().map(|s| ip(s)).collect(),
            node: node.into(),
            host_network: false,
            ports: vec![],
        }
    }

    /// x: a, b (app=web) on n1, c on n2; d on n1 without an address yet.
    fn model() -> PolicyModel {
        let mut m = PolicyModel::default();
        m.add_namespace(Namespace::new("x", Labels::new()));
        m.add_pod(pod("x", "a", "n1", &["10.244.1.2"], &[("app", "web")]));
        m.add_pod(pod("x", "b", "n1", &["10.244.1.3"], &[("app", "web")]));
        m.add_pod(pod("x", "c", "n2", &["10.244.2.2"], &[("app", "db")]));
        m.add_pod(pod("x", "d", "n1", &[], &[("app", "web")]));
        m
    }

    /// Ingress to app=web from pods with `from`'s labels.
    fn allow_from(name: &str, from: &[(&str, &str)]) -> NetworkPolicy {
        NetworkPolicy {
            name: PolicyName::new("x", name),
            pod_selector: LabelSelector::labels([("app", "web")]),
            types: PolicyTypes { ingress: true, egress: false },
            ingress: vec![Rule {
                peers: vec![Peer::Pods {
                    namespaces: NamespaceScope::PolicyNamespace,
                    pods: LabelSelector {
                        match_labels: from.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                        ..LabelSelector::everything()
                    },
                }],
                ports: vec![],
            }],
            egress: vec![],
        }
    }

    struct Node {
        allocator: IdentityAllocator,
        refs: PolicyRefs,
        nodes: NodeAddresses,
        cidrs: Vec<IpNetwork>,
        leases: Vec<(IpAddr, Option<String>)>,
    }

    impl Node {
        fn new() -> Self {
            Node {
                allocator: IdentityAllocator::default(),
                refs: PolicyRefs::default(),
                nodes: [("n1".to_string(), vec![ip("172.30.0.1")]), ("n2".to_string(), vec![ip("172.30.0.2")])].into(),
                cidrs: vec!["10.244.0.0/16".parse().unwrap()],
                leases: vec![],
            }
        }

        fn desired(&mut self, m: &PolicyModel) -> Desired {
            let facts = NodeFacts {
                node: "n1",
                nodes: &self.nodes,
                cluster_cidrs: &self.cidrs,
                leases: &self.leases,
                generations: None,
            };
            desired(m.clone(), &facts, &mut self.allocator, &mut IdentityCache::default(), &mut self.refs).0
        }
    }

    fn ep(t: &FakeTables, s: &str) -> EndpointPolicy {
        t.t.endpoints[&ip(s)]
    }

    #[test]
    fn a_policy_change_writes_a_complete_new_set_switches_each_endpoint_once_then_deletes_the_old() {
        let mut node = Node::new();
        let mut m = model();
        m.add_policy(allow_from("p", &[("app", "db")]));
        let mut t = FakeTables::default();
        let mut r = PolicyReconciler::resume(&mut t).unwrap();
        let report = r.apply(&mut t, &node.desired(&m)).unwrap();
        assert!(report.epoch_bumped && report.full.is_empty(), "{report:?}");
        t.check_switches();
        let (a, b) = (ep(&t, "10.244.1.2"), ep(&t, "10.244.1.3"));
        assert_eq!(a, b, "a and b have the same rules: one set");
        assert_eq!(a.flags, ENDPOINT_INGRESS_ISOLATED);
        assert_eq!(r.rule_sets(), 1);
        assert_eq!(t.t.identities[&"172.30.0.1/32".parse().unwrap()], IDENTITY_HOST);
        let old = a.rules_id;
        assert_eq!(t.epoch, 1);

        // Nothing changed: nothing written, no epoch.
        t.log.clear();
        let report = r.apply(&mut t, &node.desired(&m)).unwrap();
        assert!(!report.changed() && !report.epoch_bumped, "{report:?} {:?}", t.log);
        assert_eq!(t.epoch, 1);

        // The policy now allows app=web too: a new set, then one update
        // per endpoint, then the old set goes; identities last.
        m.add_policy(allow_from("p", &[("app", "web")]));
        t.log.clear();
        let report = r.apply(&mut t, &node.desired(&m)).unwrap();
        t.check_switches();
        let new = ep(&t, "10.244.1.2").rules_id;
        assert_ne!(new, old);
        assert_eq!((report.sets_added, report.sets_removed), (1, 1), "{report:?}");
        let pos = |what: &str| {
            t.log.iter().position(|l| l.starts_with(what)).unwrap_or_else(|| panic!("no {what}: {:?}", t.log))
        };
        let last = |what: &str| t.log.iter().rposition(|l| l.starts_with(what)).unwrap();
        assert!(last(&format!("put_rule {new}")) < pos("put_endpoint"), "{:?}", t.log);
        assert!(last("put_endpoint") < pos(&format!("del_rule {old}")), "{:?}", t.log);
        assert_eq!(t.log.iter().filter(|l| l.starts_with("put_endpoint")).count(), 2, "{:?}", t.log);
        assert_eq!(t.log.last().unwrap(), "bump_epoch");
        assert_eq!(t.epoch, 2);
        assert!(t.set(old).is_empty());
    }

    #[test]
    fn a_restarted_agent_takes_the_sets_back_and_rewrites_nothing() {
        let mut node = Node::new();
        let mut m = model();
        m.add_policy(allow_from("p", &[("app", "db")]));
        m.add_policy(allow_from("q", &[("app", "web")]));
        let mut t = FakeTables::default();
        let mut r = PolicyReconciler::resume(&mut t).unwrap();
        r.apply(&mut t, &node.desired(&m)).unwrap();
        // Same allocator and refs (as the agent restores them), a new
        // reconciler reading the maps back.
        let refs = node.refs.table();
        node.refs = PolicyRefs::from_table(&refs);
        let mut r = PolicyReconciler::resume(&mut t).unwrap();
        t.log.clear();
        let report = r.apply(&mut t, &node.desired(&m)).unwrap();
        assert!(!report.changed(), "{report:?}: {:?}", t.log);
    }

    #[test]
    fn policy_pods_holds_every_local_pod_with_or_without_an_address() {
        let mut node = Node::new();
        let mut m = model();
        let mut h = pod("x", "h", "n1", &["172.30.0.1"], &[]);
        h.host_network = true;
        m.add_pod(h);
        m.add_policy(allow_from("p", &[("app", "db")]));
        let mut t = FakeTables::default();
        let mut r = PolicyReconciler::resume(&mut t).unwrap();
        r.apply(&mut t, &node.desired(&m)).unwrap();
        let names: Vec<&str> = t.t.pods.keys().map(String::as_str).collect();
        assert_eq!(names, ["x/a", "x/b", "x/d"], "local, not host-network");
        let d = t.t.pods["x/d"];
        assert_eq!(d.endpoint, ep(&t, "10.244.1.2"), "d is selected like a and b");
        assert_eq!(d.identity, IDENTITY_UNKNOWN_CLUSTER, "no address, no class yet");
        assert_eq!(t.t.pods["x/a"].identity, t.t.identities[&"10.244.1.2/32".parse().unwrap()]);
        // d's address arrives through its IPAM lease before its status.
        node.leases.push((ip("10.244.1.9"), Some("x/d".into())));
        r.apply(&mut t, &node.desired(&m)).unwrap();
        assert_eq!(ep(&t, "10.244.1.9"), ep(&t, "10.244.1.2"));
        assert!(t.t.identities.contains_key(&"10.244.1.9/32".parse().unwrap()));
        assert_ne!(t.t.pods["x/d"].identity, IDENTITY_UNKNOWN_CLUSTER);
        // The pod leaves: its entries go, its POLICY_PODS entry too.
        node.leases.clear();
        m.pods.remove(&PodKey::new("x", "d"));
        r.apply(&mut t, &node.desired(&m)).unwrap();
        assert!(!t.t.endpoints.contains_key(&ip("10.244.1.9")));
        assert!(!t.t.pods.contains_key("x/d"));
    }

    #[test]
    fn entries_the_plugin_wrote_for_a_pod_not_seen_yet_are_kept_until_its_lease_goes() {
        let mut node = Node::new();
        let m = model();
        let mut t = FakeTables::default();
        let pending = EndpointPolicy { rules_id: 0, flags: ENDPOINT_INGRESS_ISOLATED | ENDPOINT_EGRESS_ISOLATED | 4 };
        t.t.endpoints.insert(ip("10.244.1.50"), pending);
        t.t.identities.insert("10.244.1.50/32".parse().unwrap(), IDENTITY_UNKNOWN_CLUSTER);
        node.leases.push((ip("10.244.1.50"), Some("x/new".into())));
        let mut r = PolicyReconciler::resume(&mut t).unwrap();
        r.apply(&mut t, &node.desired(&m)).unwrap();
        assert_eq!(ep(&t, "10.244.1.50"), pending, "the plugin's fail-closed entry stays");
        assert!(t.t.identities.contains_key(&"10.244.1.50/32".parse().unwrap()));
        // The lease is released (DEL): the leftovers go.
        node.leases.clear();
        r.refresh(&mut t).unwrap();
        r.apply(&mut t, &node.desired(&m)).unwrap();
        assert!(!t.t.endpoints.contains_key(&ip("10.244.1.50")));
        assert!(!t.t.identities.contains_key(&"10.244.1.50/32".parse().unwrap()));
    }

    #[test]
    fn a_full_rules_map_isolates_the_pods_that_needed_the_set_with_no_rule_and_leaves_no_half_set() {
        let mut node = Node::new();
        let mut m = model();
        m.add_policy(allow_from("p", &[("app", "db")]));
        let mut t = FakeTables { max_rules: Some(0), ..Default::default() };
        let mut r = PolicyReconciler::resume(&mut t).unwrap();
        let report = r.apply(&mut t, &node.desired(&m)).unwrap();
        assert_eq!(report.full.len(), 1, "{report:?}");
        assert_eq!(report.full[0].map, "POLICY_RULES");
        assert_eq!(report.full[0].pods, [PodKey::new("x", "a"), PodKey::new("x", "b"), PodKey::new("x", "d")]);
        assert!(report.full[0].to_string().contains("x/a, x/b, x/d isolated with no allow rule"), "{}", report.full[0]);
        assert_eq!(ep(&t, "10.244.1.2"), EndpointPolicy { rules_id: 0, flags: ENDPOINT_INGRESS_ISOLATED });
        assert!(t.t.rules.is_empty());
        // Room for one entry of a two-entry set: still no half set.
        let mut m2 = model();
        m2.add_policy(allow_from("p", &[]));
        m2.policies.get_mut(&PolicyName::new("x", "p")).unwrap().ingress[0].peers.clear();
        m2.policies.get_mut(&PolicyName::new("x", "p")).unwrap().ingress[0].ports = vec![
            crate::policy::model::PortSpec {
                protocol: crate::policy::model::Protocol::Tcp,
                port: Some(crate::policy::model::PortRef::Number(80)),
                end_port: None,
            },
            crate::policy::model::PortSpec {
                protocol: crate::policy::model::Protocol::Udp,
                port: Some(crate::policy::model::PortRef::Number(53)),
                end_port: None,
            },
        ];
        t.max_rules = Some(1);
        let report = r.apply(&mut t, &node.desired(&m2)).unwrap();
        assert_eq!(report.full[0].map, "POLICY_RULES", "{report:?}");
        assert!(t.t.rules.is_empty(), "half a set left: {:?}", t.t.rules);
        assert_eq!(ep(&t, "10.244.1.3").rules_id, 0);
        // Room again: the next pass writes it.
        t.max_rules = None;
        let report = r.apply(&mut t, &node.desired(&m2)).unwrap();
        assert!(report.full.is_empty());
        assert_ne!(ep(&t, "10.244.1.3").rules_id, 0);
        t.check_switches();
    }

    #[test]
    fn the_identity_table_is_reused_only_while_pods_namespaces_and_ip_blocks_stay() {
        let node = Node::new();
        let mut cache = IdentityCache::default();
        let (mut allocator, mut refs) = (IdentityAllocator::default(), PolicyRefs::default());
        let mut run = |m: &PolicyModel, generations, cache: &mut IdentityCache| {
            let facts = NodeFacts {
                node: "n1",
                nodes: &node.nodes,
                cluster_cidrs: &node.cidrs,
                leases: &node.leases,
                generations,
            };
            desired(m.clone(), &facts, &mut allocator, cache, &mut refs).0
        };
        let uncached = |m: &PolicyModel| {
            let facts = NodeFacts {
                node: "n1",
                nodes: &node.nodes,
                cluster_cidrs: &node.cidrs,
                leases: &node.leases,
                generations: None,
            };
            let (mut a, mut r) = (IdentityAllocator::default(), PolicyRefs::default());
            desired(m.clone(), &facts, &mut a, &mut IdentityCache::default(), &mut r).0
        };
        let mut m = model();
        m.add_policy(allow_from("p", &[("app", "db")]));
        run(&m, Some((1, 1)), &mut cache);
        // A policy change alone: the table is reused, the result is the same
        // as compiling from scratch.
        m.add_policy(allow_from("p", &[("app", "web")]));
        let reused = run(&m, Some((1, 1)), &mut cache);
        assert_eq!(cache.reused, 1);
        assert_eq!(reused, uncached(&m));
        // A relabelled pod (the pods' generation moved): built again.
        m.pods.get_mut(&PodKey::new("x", "b")).unwrap().labels.insert("app".into(), "db".into());
        let rebuilt = run(&m, Some((2, 1)), &mut cache);
        assert_eq!(cache.reused, 1, "a pod change must not reuse the table");
        assert_eq!(rebuilt, uncached(&m));
        // An ipBlock appears (policies only, but the table depends on it).
        let mut p = allow_from("cidr", &[]);
        p.ingress[0].peers =
            vec![Peer::IpBlock(crate::policy::model::IpBlock::new("192.0.2.0/24".parse().unwrap(), []))];
        m.add_policy(p);
        let with_block = run(&m, Some((2, 1)), &mut cache);
        assert_eq!(cache.reused, 1, "a new ipBlock must not reuse the table");
        assert!(with_block.identities.contains_key(&"192.0.2.0/24".parse().unwrap()));
    }

    /// Issue 25: one ipBlock with 66,000 excepts (more prefixes than
    /// `POLICY_IDENTITIES` holds) must not stall the pass: it completes and
    /// reports the full map, every isolated pod failed closed. Classifying
    /// each except scanned every except (quadratic): this pass took minutes
    /// in a debug build, so the guard below fails it instead of hanging.
    #[test]
    fn an_ip_block_with_more_excepts_than_the_identities_map_holds_fails_closed_quickly() {
        use std::sync::mpsc;
        use std::time::{Duration, Instant};

        use sluice_common::maps::limits::MAX_POLICY_IDENTITIES;

        const EXCEPTS: u32 = 66_000;
        let (done, finished) = mpsc::channel();
        std::thread::spawn(move || {
            let mut node = Node::new();
            let mut m = model();
            m.add_policy(allow_from("p", &[("app", "db")]));
            let first = u32::from(std::net::Ipv4Addr::new(200, 0, 0, 0));
            let except = (0..EXCEPTS).map(|i| host_prefix(std::net::Ipv4Addr::from(first + i).into()));
            let mut big = allow_from("too-many-prefixes", &[]);
            big.types = PolicyTypes { ingress: false, egress: true };
            big.egress = std::mem::take(&mut big.ingress);
            big.egress[0].peers = vec![Peer::IpBlock(IpBlock::new("192.0.0.0/2".parse().unwrap(), except))];
            m.add_policy(big);
            let started = Instant::now();
            let desired = node.desired(&m);
            let compiled = started.elapsed();
            let mut t = FakeTables { max_identities: Some(MAX_POLICY_IDENTITIES as usize), ..Default::default() };
            let mut r = PolicyReconciler::resume(&mut t).unwrap();
            let report = r.apply(&mut t, &desired).unwrap();
            let _ = done.send((desired, report, t, compiled, started.elapsed()));
        });
        let (desired, report, t, compiled, pass) = finished
            .recv_timeout(Duration::from_secs(60))
            .expect("the pass did not finish within 60 s (debug build; it takes about a second)");
        eprintln!("compile {compiled:?}, compile and apply {pass:?}");
        assert!(desired.identities.len() > EXCEPTS as usize, "every except is a prefix of its own");
        assert_eq!(report.full.len(), 1, "{report:?}");
        assert_eq!(report.full[0].map, "POLICY_IDENTITIES");
        assert_eq!(report.full[0].pods, [PodKey::new("x", "a"), PodKey::new("x", "b"), PodKey::new("x", "d")]);
        assert_eq!(t.t.identities.len(), MAX_POLICY_IDENTITIES as usize);
        let closed = EndpointPolicy { rules_id: 0, flags: ENDPOINT_INGRESS_ISOLATED | ENDPOINT_EGRESS_ISOLATED };
        assert_eq!(ep(&t, "10.244.1.2"), closed, "isolated both ways with no allow rule");
        assert!(t.t.rules.is_empty());
    }

    #[test]
    fn a_full_identities_map_isolates_every_isolated_pod_with_no_rule() {
        let mut node = Node::new();
        let mut m = model();
        m.add_policy(allow_from("p", &[("app", "db")]));
        let mut t = FakeTables { max_identities: Some(2), ..Default::default() };
        let mut r = PolicyReconciler::resume(&mut t).unwrap();
        let report = r.apply(&mut t, &node.desired(&m)).unwrap();
        assert_eq!(report.full.len(), 1, "{report:?}");
        assert_eq!(report.full[0].map, "POLICY_IDENTITIES");
        assert!(t.t.identities.contains_key(&"10.244.0.0/16".parse().unwrap()), "the cluster CIDR went first");
        assert_eq!(ep(&t, "10.244.1.2"), EndpointPolicy { rules_id: 0, flags: ENDPOINT_INGRESS_ISOLATED });
        assert!(t.t.rules.is_empty());
    }

    /// `model()` on a dual-stack node: x/a, x/b (n1) and x/c (n2) have an
    /// IPv6 address too, the nodes theirs, and the IPv6 cluster CIDR.
    fn dual_stack() -> (Node, PolicyModel) {
        let mut node = Node::new();
        node.nodes.get_mut("n1").unwrap().push(ip("fd00:30::1"));
        node.nodes.get_mut("n2").unwrap().push(ip("fd00:30::2"));
        node.cidrs.push("fd00:244::/32".parse().unwrap());
        let mut m = model();
        for (name, v6) in [("a", "fd00:244:1::2"), ("b", "fd00:244:1::3"), ("c", "fd00:244:2::2")] {
            m.pods.get_mut(&PodKey::new("x", name)).unwrap().ips.push(ip(v6));
        }
        (node, m)
    }

    #[test]
    fn every_local_pods_ipv6_address_gets_its_ipv4_entry_and_identity_and_a_resync_repairs_them() {
        let (mut node, mut m) = dual_stack();
        m.add_policy(allow_from("p", &[("app", "db")]));
        let mut t = FakeTables::default();
        let mut r = PolicyReconciler::resume(&mut t).unwrap();
        let report = r.apply(&mut t, &node.desired(&m)).unwrap();
        assert!(report.full.is_empty(), "{report:?}");
        t.check_switches();
        for (v4, v6) in [("10.244.1.2", "fd00:244:1::2"), ("10.244.1.3", "fd00:244:1::3")] {
            assert_eq!(ep(&t, v6), ep(&t, v4), "{v6}: the same isolation and rule set as {v4}");
            assert_eq!(ep(&t, v6).flags, ENDPOINT_INGRESS_ISOLATED);
            let id4 = t.t.identities[&format!("{v4}/32").parse().unwrap()];
            assert_eq!(t.t.identities[&format!("{v6}/128").parse().unwrap()], id4, "{v6}: its IPv4's identity");
        }
        assert!(!t.t.endpoints.contains_key(&ip("fd00:244:2::2")), "x/c is on n2");
        let c = t.t.identities[&"fd00:244:2::2/128".parse().unwrap()];
        assert_eq!(c, t.t.identities[&"10.244.2.2/32".parse().unwrap()], "a remote pod's IPv6 too");
        assert_eq!(t.t.identities[&"fd00:30::1/128".parse().unwrap()], IDENTITY_HOST, "this node's IPv6");
        assert_eq!(t.t.identities[&"fd00:244::/32".parse().unwrap()], IDENTITY_UNKNOWN_CLUSTER);
        let a = t.t.pods["x/a"];
        assert_eq!((a.identity6, a.endpoint), (a.identity, ep(&t, "10.244.1.2")), "POLICY_PODS for the plugin");

        // Damage: a's IPv6 entry lost, b's wrong, a stale one for an
        // address nobody holds, an IPv6 identity gone. A resync repairs.
        t.t.endpoints.remove(&ip("fd00:244:1::2"));
        t.t.endpoints.insert(ip("fd00:244:1::3"), EndpointPolicy::default());
        t.t.endpoints.insert(ip("fd00:244:1::99"), EndpointPolicy { rules_id: 0, flags: ENDPOINT_INGRESS_ISOLATED });
        t.t.identities.remove(&"fd00:244:1::2/128".parse().unwrap());
        r.refresh(&mut t).unwrap();
        let report = r.apply(&mut t, &node.desired(&m)).unwrap();
        assert!(report.epoch_bumped, "{report:?}");
        assert_eq!(ep(&t, "fd00:244:1::2"), ep(&t, "10.244.1.2"), "restored");
        assert_eq!(ep(&t, "fd00:244:1::3"), ep(&t, "10.244.1.3"), "corrected");
        assert!(!t.t.endpoints.contains_key(&ip("fd00:244:1::99")), "stale: removed");
        assert!(t.t.identities.contains_key(&"fd00:244:1::2/128".parse().unwrap()));

        // What the plugin wrote for a pod the watch has not shown stays
        // while its IPv6 lease does (never destroyed on an inference).
        let pending = EndpointPolicy { rules_id: 0, flags: ENDPOINT_INGRESS_ISOLATED | ENDPOINT_EGRESS_ISOLATED | 4 };
        t.t.endpoints.insert(ip("fd00:244:1::50"), pending);
        t.t.identities.insert("fd00:244:1::50/128".parse().unwrap(), IDENTITY_UNKNOWN_CLUSTER);
        node.leases.push((ip("fd00:244:1::50"), Some("x/new".into())));
        r.refresh(&mut t).unwrap();
        r.apply(&mut t, &node.desired(&m)).unwrap();
        assert_eq!(ep(&t, "fd00:244:1::50"), pending);
        node.leases.clear();
        r.refresh(&mut t).unwrap();
        r.apply(&mut t, &node.desired(&m)).unwrap();
        assert!(!t.t.endpoints.contains_key(&ip("fd00:244:1::50")), "its lease went: so do its entries");
        assert!(!t.t.identities.contains_key(&"fd00:244:1::50/128".parse().unwrap()));

        // A pod whose IPv6 comes by its lease (before its status shows it).
        m.pods.get_mut(&PodKey::new("x", "d")).unwrap().ips.clear();
        node.leases.push((ip("10.244.1.9"), Some("x/d".into())));
        node.leases.push((ip("fd00:244:1::9"), Some("x/d".into())));
        r.apply(&mut t, &node.desired(&m)).unwrap();
        assert_eq!(ep(&t, "fd00:244:1::9"), ep(&t, "10.244.1.2"), "x/d is selected like x/a, over IPv6 too");
        // It leaves: both families' entries go.
        node.leases.clear();
        m.pods.remove(&PodKey::new("x", "d"));
        r.apply(&mut t, &node.desired(&m)).unwrap();
        assert!(!t.t.endpoints.contains_key(&ip("fd00:244:1::9")));
        assert!(!t.t.identities.contains_key(&"fd00:244:1::9/128".parse().unwrap()));
    }

    #[test]
    fn an_ipv6_ip_block_gives_a_pods_ipv6_its_own_identity_for_the_plugin() {
        let (mut node, mut m) = dual_stack();
        // Egress from x/c's app=db to every IPv6 address but x/b's.
        let mut p = allow_from("to-v6", &[]);
        p.pod_selector = LabelSelector::labels([("app", "db")]);
        p.types = PolicyTypes { ingress: false, egress: true };
        p.egress = vec![Rule {
            peers: vec![Peer::IpBlock(IpBlock::new("::/0".parse().unwrap(), ["fd00:244:1::3/128".parse().unwrap()]))],
            ports: vec![],
        }];
        p.ingress.clear();
        m.add_policy(p);
        let mut t = FakeTables::default();
        let mut r = PolicyReconciler::resume(&mut t).unwrap();
        r.apply(&mut t, &node.desired(&m)).unwrap();
        let (a, b) = (t.t.pods["x/a"], t.t.pods["x/b"]);
        assert_ne!(a.identity6, a.identity, "x/a's IPv6 is in ::/0, its IPv4 in no block");
        assert_eq!(b.identity6, b.identity, "x/b's IPv6 is excepted: no block on either");
        assert_eq!(t.t.identities[&"fd00:244:1::2/128".parse().unwrap()], a.identity6);
        // On n2, x/c (the isolated one) gets its entries for both families.
        node.nodes.clear();
        let (n2, _) = dual_stack();
        node.nodes = n2.nodes;
        let facts =
            NodeFacts { node: "n2", nodes: &node.nodes, cluster_cidrs: &node.cidrs, leases: &[], generations: None };
        let (d, _) = desired(m.clone(), &facts, &mut node.allocator, &mut IdentityCache::default(), &mut node.refs);
        let c = &d.pods[&PodKey::new("x", "c")];
        assert_eq!(c.ips, [ip("10.244.2.2"), ip("fd00:244:2::2")].into());
        assert_eq!(c.flags, ENDPOINT_EGRESS_ISOLATED);
    }

    #[test]
    fn full_ipv6_maps_fail_closed_and_are_named() {
        let (mut node, mut m) = dual_stack();
        m.add_policy(allow_from("p", &[("app", "db")]));
        // POLICY_IDENTITIES6 has room for 2: every isolated pod is left
        // with no allow rule, in both families, and the map is named.
        let mut t = FakeTables { max_identities6: Some(2), ..Default::default() };
        let mut r = PolicyReconciler::resume(&mut t).unwrap();
        let report = r.apply(&mut t, &node.desired(&m)).unwrap();
        assert_eq!(report.full.len(), 1, "{report:?}");
        assert_eq!(report.full[0].map, "POLICY_IDENTITIES6");
        assert_eq!(report.full[0].pods, [PodKey::new("x", "a"), PodKey::new("x", "b"), PodKey::new("x", "d")]);
        let closed = EndpointPolicy { rules_id: 0, flags: ENDPOINT_INGRESS_ISOLATED };
        for a in ["10.244.1.2", "fd00:244:1::2", "10.244.1.3", "fd00:244:1::3"] {
            assert_eq!(ep(&t, a), closed, "{a}: isolated, nothing allowed");
        }
        assert!(t.t.rules.is_empty());
        assert!(report.full[0].to_string().contains("POLICY_IDENTITIES6 is full"), "{}", report.full[0]);

        // POLICY_ENDPOINTS6 has room for 1: named with the pod it failed.
        let mut t = FakeTables { max_endpoints6: Some(1), ..Default::default() };
        let mut r = PolicyReconciler::resume(&mut t).unwrap();
        let report = r.apply(&mut t, &node.desired(&m)).unwrap();
        assert_eq!(report.full.len(), 1, "{report:?}");
        assert_eq!(
            (report.full[0].map, report.full[0].pods.as_slice()),
            ("POLICY_ENDPOINTS6", &[PodKey::new("x", "b")][..])
        );
        assert!(t.t.endpoints.contains_key(&ip("10.244.1.3")), "its IPv4 entry is written");
        // Room again: the next pass writes it.
        t.max_endpoints6 = None;
        node.leases.clear();
        let report = r.apply(&mut t, &node.desired(&m)).unwrap();
        assert!(report.full.is_empty(), "{report:?}");
        assert_eq!(ep(&t, "fd00:244:1::3"), ep(&t, "10.244.1.3"));
    }
}
