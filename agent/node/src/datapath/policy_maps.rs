//! Typed access to NetworkPolicy's pinned maps (issue 25): what the agent's
//! policy reconciler writes, what the CNI plugin reads and writes at ADD,
//! what `status`, metrics and the CT GC read. Layouts and who writes what
//! are on the types in `sluice_common::policy`.
//!
//! Every insert maps a full map (`E2BIG`) to [`MapFull`](super::pinned_maps::MapFull),
//! naming the map and its size, so a caller fails closed and loudly.
use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
};

use anyhow::{Context, Result};
use aya::maps::{
    lpm_trie::{Key, LpmTrie},
    Array, HashMap, MapData, PerCpuArray,
};
use ipnetwork::{Ipv4Network, Ipv6Network};
use sluice_common::{
    maps::{limits, names},
    policy::{
        policy_stat_slot, CtEntry, CtKey, CtKey6, Direction, EndpointPolicy, PeerIdentity, PodNameKey, PodPolicy,
        PolicyKey, PolicyState as PolicyStateValue, PolicyValue, PolicyVerdict,
    },
};

use super::{
    pinned_maps::{insert_error, ip_be, ip_from_be, open, removed_or_absent},
    pins::PinDir,
};

/// A lookup that found nothing is `None`; any other failure is an error.
fn found<V>(result: Result<V, aya::maps::MapError>, what: impl FnOnce() -> String) -> Result<Option<V>> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(aya::maps::MapError::KeyNotFound) => Ok(None),
        Err(aya::maps::MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(anyhow::Error::new(e).context(what())),
    }
}

/// `POLICY_IDENTITIES`: IPv4 prefix → the identity of its addresses.
pub struct PolicyIdentities(LpmTrie<MapData, u32, PeerIdentity>);

impl PolicyIdentities {
    pub fn open(pins: &PinDir) -> Result<Self> {
        Ok(Self(open(pins, names::POLICY_IDENTITIES)?.try_into()?))
    }

    fn key(prefix: Ipv4Network) -> Key<u32> {
        Key::new(u32::from(prefix.prefix()), ip_be(prefix.network()))
    }

    pub fn insert(&mut self, prefix: Ipv4Network, identity: u32) -> Result<()> {
        self.0.insert(&Self::key(prefix), PeerIdentity { identity }, 0).map_err(|e| {
            insert_error(
                e,
                names::POLICY_IDENTITIES,
                limits::MAX_POLICY_IDENTITIES,
                format!("insert identity {identity} for {prefix}"),
            )
        })
    }

    /// Remove; an absent entry counts as removed.
    pub fn remove(&mut self, prefix: Ipv4Network) -> Result<()> {
        removed_or_absent(self.0.remove(&Self::key(prefix))).with_context(|| format!("remove identity of {prefix}"))
    }

    /// The identity the datapath finds for `addr`: the longest prefix
    /// holding it (`None`: the programs take it as `IDENTITY_WORLD`).
    pub fn lookup(&self, addr: Ipv4Addr) -> Result<Option<u32>> {
        let key = Key::new(32, ip_be(addr));
        Ok(found(self.0.get(&key, 0), || format!("look up the identity of {addr}"))?.map(|v| v.identity))
    }

    pub fn all(&self) -> Result<BTreeMap<Ipv4Network, u32>> {
        let mut out = BTreeMap::new();
        for kv in self.0.iter() {
            let (k, v) = kv.context("read POLICY_IDENTITIES")?;
            let prefix = Ipv4Network::new(ip_from_be(k.data()), k.prefix_len() as u8)
                .context("POLICY_IDENTITIES holds an invalid prefix")?;
            out.insert(prefix, v.identity);
        }
        Ok(out)
    }
}

/// `POLICY_IDENTITIES6`: the IPv6 twin of [`PolicyIdentities`] (the same
/// identities: a pod's IPv6 carries its IPv4's).
pub struct PolicyIdentities6(LpmTrie<MapData, [u8; 16], PeerIdentity>);

impl PolicyIdentities6 {
    pub fn open(pins: &PinDir) -> Result<Self> {
        Ok(Self(open(pins, names::POLICY_IDENTITIES6)?.try_into()?))
    }

    fn key(prefix: Ipv6Network) -> Key<[u8; 16]> {
        Key::new(u32::from(prefix.prefix()), prefix.network().octets())
    }

    pub fn insert(&mut self, prefix: Ipv6Network, identity: u32) -> Result<()> {
        self.0.insert(&Self::key(prefix), PeerIdentity { identity }, 0).map_err(|e| {
            insert_error(
                e,
                names::POLICY_IDENTITIES6,
                limits::MAX_POLICY_IDENTITIES,
                format!("insert identity {identity} for {prefix}"),
            )
        })
    }

    /// Remove; an absent entry counts as removed.
    pub fn remove(&mut self, prefix: Ipv6Network) -> Result<()> {
        removed_or_absent(self.0.remove(&Self::key(prefix))).with_context(|| format!("remove identity of {prefix}"))
    }

    /// As [`PolicyIdentities::lookup`].
    pub fn lookup(&self, addr: Ipv6Addr) -> Result<Option<u32>> {
        let key = Key::new(128, addr.octets());
        Ok(found(self.0.get(&key, 0), || format!("look up the identity of {addr}"))?.map(|v| v.identity))
    }

    pub fn all(&self) -> Result<BTreeMap<Ipv6Network, u32>> {
        let mut out = BTreeMap::new();
        for kv in self.0.iter() {
            let (k, v) = kv.context("read POLICY_IDENTITIES6")?;
            let prefix = Ipv6Network::new(Ipv6Addr::from(k.data()), k.prefix_len() as u8)
                .context("POLICY_IDENTITIES6 holds an invalid prefix")?;
            out.insert(prefix, v.identity);
        }
        Ok(out)
    }
}

/// `POLICY_ENDPOINTS`: local pod IPv4 → its isolation and rule set.
pub struct PolicyEndpoints(HashMap<MapData, u32, EndpointPolicy>);

impl PolicyEndpoints {
    pub fn open(pins: &PinDir) -> Result<Self> {
        Ok(Self(open(pins, names::POLICY_ENDPOINTS)?.try_into()?))
    }

    pub fn insert(&mut self, pod: Ipv4Addr, policy: EndpointPolicy) -> Result<()> {
        self.0.insert(ip_be(pod), policy, 0).map_err(|e| {
            insert_error(e, names::POLICY_ENDPOINTS, limits::MAX_ENDPOINTS, format!("insert policy endpoint {pod}"))
        })
    }

    pub fn remove(&mut self, pod: Ipv4Addr) -> Result<()> {
        removed_or_absent(self.0.remove(&ip_be(pod))).with_context(|| format!("remove policy endpoint {pod}"))
    }

    pub fn get(&self, pod: Ipv4Addr) -> Result<Option<EndpointPolicy>> {
        found(self.0.get(&ip_be(pod), 0), || format!("read policy endpoint {pod}"))
    }

    pub fn all(&self) -> Result<BTreeMap<Ipv4Addr, EndpointPolicy>> {
        let mut out = BTreeMap::new();
        for kv in self.0.iter() {
            let (k, v) = kv.context("read POLICY_ENDPOINTS")?;
            out.insert(ip_from_be(k), v);
        }
        Ok(out)
    }
}

/// `POLICY_ENDPOINTS6`: local pod IPv6 → the same entry as its IPv4's.
pub struct PolicyEndpoints6(HashMap<MapData, [u8; 16], EndpointPolicy>);

impl PolicyEndpoints6 {
    pub fn open(pins: &PinDir) -> Result<Self> {
        Ok(Self(open(pins, names::POLICY_ENDPOINTS6)?.try_into()?))
    }

    pub fn insert(&mut self, pod: Ipv6Addr, policy: EndpointPolicy) -> Result<()> {
        self.0.insert(pod.octets(), policy, 0).map_err(|e| {
            insert_error(e, names::POLICY_ENDPOINTS6, limits::MAX_ENDPOINTS, format!("insert policy endpoint {pod}"))
        })
    }

    pub fn remove(&mut self, pod: Ipv6Addr) -> Result<()> {
        removed_or_absent(self.0.remove(&pod.octets())).with_context(|| format!("remove policy endpoint {pod}"))
    }

    pub fn get(&self, pod: Ipv6Addr) -> Result<Option<EndpointPolicy>> {
        found(self.0.get(&pod.octets(), 0), || format!("read policy endpoint {pod}"))
    }

    pub fn all(&self) -> Result<BTreeMap<Ipv6Addr, EndpointPolicy>> {
        let mut out = BTreeMap::new();
        for kv in self.0.iter() {
            let (k, v) = kv.context("read POLICY_ENDPOINTS6")?;
            out.insert(Ipv6Addr::from(k), v);
        }
        Ok(out)
    }
}

/// `POLICY_RULES`: (rule set, identity, direction, protocol, port) prefix →
/// the allowing policy. Keys are `(prefix_len, PolicyKey)` as the agent's
/// `policy::entries` lowers them.
pub struct PolicyRules(LpmTrie<MapData, PolicyKey, PolicyValue>);

impl PolicyRules {
    pub fn open(pins: &PinDir) -> Result<Self> {
        Ok(Self(open(pins, names::POLICY_RULES)?.try_into()?))
    }

    pub fn insert(&mut self, prefix_len: u32, key: PolicyKey, value: PolicyValue) -> Result<()> {
        self.0.insert(&Key::new(prefix_len, key), value, 0).map_err(|e| {
            insert_error(e, names::POLICY_RULES, limits::MAX_POLICY_RULES, format!("insert rule {key:?}/{prefix_len}"))
        })
    }

    pub fn remove(&mut self, prefix_len: u32, key: PolicyKey) -> Result<()> {
        removed_or_absent(self.0.remove(&Key::new(prefix_len, key)))
            .with_context(|| format!("remove rule {key:?}/{prefix_len}"))
    }

    /// Every entry: `((prefix_len, key), value)`.
    pub fn all(&self) -> Result<Vec<((u32, PolicyKey), PolicyValue)>> {
        let mut out = Vec::new();
        for kv in self.0.iter() {
            let (k, v) = kv.context("read POLICY_RULES")?;
            out.push(((k.prefix_len(), k.data()), v));
        }
        Ok(out)
    }
}

/// `POLICY_STATE[0]`: the epoch and the service CIDR.
pub struct PolicyState(Array<MapData, PolicyStateValue>);

impl PolicyState {
    pub fn open(pins: &PinDir) -> Result<Self> {
        Ok(Self(open(pins, names::POLICY_STATE)?.try_into()?))
    }

    pub fn get(&self) -> Result<PolicyStateValue> {
        self.0.get(&0, 0).context("read POLICY_STATE")
    }

    fn set(&mut self, state: PolicyStateValue) -> Result<()> {
        self.0.set(0, state, 0).context("write POLICY_STATE")
    }

    /// The next epoch (wrapping): every `POLICY_CT` entry is judged again on
    /// its next packet. Call after a change was applied completely. Only the
    /// agent writes this map, one task at a time, so read-modify-write is
    /// safe. Returns the new epoch.
    pub fn bump_epoch(&mut self) -> Result<u32> {
        let mut state = self.get()?;
        state.epoch = state.epoch.wrapping_add(1);
        self.set(state)?;
        Ok(state.epoch)
    }

    /// Say whether an agent enforces NetworkPolicy here
    /// (`POLICY_STATE_ENFORCING`): the CNI plugin writes a new pod's policy
    /// entries only then.
    pub fn set_enforcing(&mut self, enforcing: bool) -> Result<()> {
        let mut state = self.get()?;
        state.flags = if enforcing {
            state.flags | sluice_common::policy::POLICY_STATE_ENFORCING
        } else {
            state.flags & !sluice_common::policy::POLICY_STATE_ENFORCING
        };
        self.set(state)
    }

    pub fn enforcing(&self) -> Result<bool> {
        Ok(self.get()?.flags & sluice_common::policy::POLICY_STATE_ENFORCING != 0)
    }

    /// Record the Service CIDR (`None`: none configured, nothing deferred).
    pub fn set_service_cidr(&mut self, cidr: Option<Ipv4Network>) -> Result<()> {
        let mut state = self.get()?;
        (state.service_cidr_be, state.service_prefix_len) = match cidr {
            Some(c) => (ip_be(c.network()), u32::from(c.prefix())),
            None => (0, 0),
        };
        self.set(state)
    }
}

/// `POLICY_CT`: allowed connections, each under the key the programs
/// stored it (canonical, or an older layout's original direction:
/// `CtKey::original_direction` gives the client → server tuple).
pub struct PolicyCt(HashMap<MapData, CtKey, CtEntry>);

impl PolicyCt {
    pub fn open(pins: &PinDir) -> Result<Self> {
        Ok(Self(open(pins, names::POLICY_CT)?.try_into()?))
    }

    pub fn get(&self, key: &CtKey) -> Result<Option<CtEntry>> {
        found(self.0.get(key, 0), || format!("read POLICY_CT {key:?}"))
    }

    /// For tests and tools; the programs make entries.
    pub fn insert(&mut self, key: CtKey, entry: CtEntry) -> Result<()> {
        self.0
            .insert(key, entry, 0)
            .map_err(|e| insert_error(e, names::POLICY_CT, limits::MAX_POLICY_CT, format!("insert connection {key:?}")))
    }

    pub fn remove(&mut self, key: &CtKey) -> Result<()> {
        removed_or_absent(self.0.remove(key)).with_context(|| format!("remove connection {key:?}"))
    }

    /// Every entry; one that vanishes during the walk (evicted, deleted by a
    /// program) is skipped.
    pub fn all(&self) -> Result<Vec<(CtKey, CtEntry)>> {
        let mut out = Vec::new();
        for k in self.0.keys() {
            let k = k.context("walk POLICY_CT")?;
            if let Some(v) = self.get(&k)? {
                out.push((k, v));
            }
        }
        Ok(out)
    }
}

/// `POLICY_CT6`: the IPv6 twin of [`PolicyCt`].
pub struct PolicyCt6(HashMap<MapData, CtKey6, CtEntry>);

impl PolicyCt6 {
    pub fn open(pins: &PinDir) -> Result<Self> {
        Ok(Self(open(pins, names::POLICY_CT6)?.try_into()?))
    }

    pub fn get(&self, key: &CtKey6) -> Result<Option<CtEntry>> {
        found(self.0.get(key, 0), || format!("read POLICY_CT6 {key:?}"))
    }

    /// For tests and tools; the programs make entries.
    pub fn insert(&mut self, key: CtKey6, entry: CtEntry) -> Result<()> {
        self.0.insert(key, entry, 0).map_err(|e| {
            insert_error(e, names::POLICY_CT6, limits::MAX_POLICY_CT, format!("insert connection {key:?}"))
        })
    }

    pub fn remove(&mut self, key: &CtKey6) -> Result<()> {
        removed_or_absent(self.0.remove(key)).with_context(|| format!("remove connection {key:?}"))
    }

    /// Every entry; one that vanishes during the walk is skipped.
    pub fn all(&self) -> Result<Vec<(CtKey6, CtEntry)>> {
        let mut out = Vec::new();
        for k in self.0.keys() {
            let k = k.context("walk POLICY_CT6")?;
            if let Some(v) = self.get(&k)? {
                out.push((k, v));
            }
        }
        Ok(out)
    }
}

/// `POLICY_PODS`: "namespace/name" → the policy entry a new pod gets.
pub struct PolicyPods(HashMap<MapData, PodNameKey, PodPolicy>);

impl PolicyPods {
    pub fn open(pins: &PinDir) -> Result<Self> {
        Ok(Self(open(pins, names::POLICY_PODS)?.try_into()?))
    }

    fn key(namespace: &str, name: &str) -> Result<PodNameKey> {
        PodNameKey::new(namespace, name)
            .with_context(|| format!("pod name {namespace}/{name} is longer than a POLICY_PODS key"))
    }

    pub fn insert(&mut self, namespace: &str, name: &str, policy: PodPolicy) -> Result<()> {
        let key = Self::key(namespace, name)?;
        self.0.insert(key, policy, 0).map_err(|e| {
            insert_error(e, names::POLICY_PODS, limits::MAX_ENDPOINTS, format!("insert pod policy {namespace}/{name}"))
        })
    }

    pub fn remove(&mut self, namespace: &str, name: &str) -> Result<()> {
        let key = Self::key(namespace, name)?;
        removed_or_absent(self.0.remove(&key)).with_context(|| format!("remove pod policy {namespace}/{name}"))
    }

    pub fn get(&self, namespace: &str, name: &str) -> Result<Option<PodPolicy>> {
        let key = Self::key(namespace, name)?;
        found(self.0.get(&key, 0), || format!("read pod policy {namespace}/{name}"))
    }

    /// Every entry, by "namespace/name"; a key that is not UTF-8 is an error.
    pub fn all(&self) -> Result<BTreeMap<String, PodPolicy>> {
        let mut out = BTreeMap::new();
        for kv in self.0.iter() {
            let (k, v) = kv.context("read POLICY_PODS")?;
            let name = k.as_str().context("POLICY_PODS holds a key that is not UTF-8")?;
            out.insert(name.to_string(), v);
        }
        Ok(out)
    }
}

/// `POLICY_STATS` summed over CPUs.
pub struct PolicyStats(PerCpuArray<MapData, u64>);

/// Judgements so far of one verdict in one direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerdictCount {
    pub direction: Direction,
    pub verdict: PolicyVerdict,
    pub count: u64,
}

impl PolicyStats {
    pub fn open(pins: &PinDir) -> Result<Self> {
        Ok(Self(open(pins, names::POLICY_STATS)?.try_into()?))
    }

    pub fn get(&self, direction: Direction, verdict: PolicyVerdict) -> Result<u64> {
        let slot = policy_stat_slot(direction, verdict);
        Ok(self.0.get(&slot, 0).with_context(|| format!("read {}[{slot}]", names::POLICY_STATS))?.iter().sum())
    }

    /// Every verdict in both directions, in `PolicyVerdict` order, ingress
    /// before egress.
    pub fn all(&self) -> Result<Vec<VerdictCount>> {
        let mut out = Vec::new();
        for verdict in PolicyVerdict::ALL {
            for direction in [Direction::Ingress, Direction::Egress] {
                out.push(VerdictCount { direction, verdict, count: self.get(direction, verdict)? });
            }
        }
        Ok(out)
    }
}
