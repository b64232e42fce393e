//! The socket load balancer's maps kept equal to the Service plan.
//!
//! A frontend's backends are never edited in place: a change writes the
//! new backends under a fresh backend set, points the frontend at it (one
//! map update), then deletes the old set, so a `connect()` sees the old
//! set or the new one, never a half-written one, and a frontend that did
//! not change is not touched at all. What was applied is kept in memory
//! (read back from the maps at start), so a pass costs only its changes.
//!
//! One reconciler per address family (`MapFamily`): `ServiceReconciler`
//! (= `<V4>`) keeps `SERVICES`/`BACKENDS` equal to the IPv4 plan (and the
//! hostPorts), `ServiceReconciler<V6>` keeps `SERVICES6`/`BACKENDS6` equal
//! to the IPv6 plan, by the same steps.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Debug,
    net::{Ipv4Addr, Ipv6Addr},
};

use anyhow::{Context, Result};
use sluice_common::{
    services::{
        external_local_flags, is_host_port_scope, Backend, BackendSlot, ServiceKey, ServiceValue, SCOPE_ADDRESS,
        SERVICE_NO_LOCAL_ENDPOINTS, SERVICE_SOURCE_RANGES,
    },
    services6::{ip6_words, Backend6, ServiceKey6},
};
use sluice_node::datapath::{
    pinned_maps::ip_be,
    service_maps::{ServiceMaps, ServiceMaps6},
};
use tracing::warn;

use crate::services::{
    host_ports::{HostPortFrontend, HostPortPlan, HostPortTarget},
    model::{Family, Protocol},
    plan::{BackendAddr, Frontend, FrontendPlan, Plan},
};

/// An address family's maps: their key and backend types, and how a plan's
/// frontends and backends become them.
pub trait MapFamily {
    type Addr: Family;
    type Key: Copy + Ord + Debug;
    type Backend: Copy + Eq + Debug;
    fn service_key(f: &Frontend<Self::Addr>) -> Self::Key;
    fn backend(b: &BackendAddr<Self::Addr>) -> Self::Backend;
    fn protocol(key: &Self::Key) -> u8;
    /// A hostPort entry (IPv4 only), kept by `apply_host_ports`.
    fn is_host_port(key: &Self::Key) -> bool;
}

/// `SERVICES`, `BACKENDS`, `BACKEND_MEMBERS`.
#[derive(Debug)]
pub struct V4;
/// `SERVICES6`, `BACKENDS6`, `BACKEND_MEMBERS6`.
#[derive(Debug)]
pub struct V6;

impl MapFamily for V4 {
    type Addr = Ipv4Addr;
    type Key = ServiceKey;
    type Backend = Backend;
    fn service_key(f: &Frontend) -> ServiceKey {
        service_key(f)
    }
    fn backend(b: &BackendAddr) -> Backend {
        Backend { ip_be: ip_be(b.ip), port_be: b.port.to_be(), _pad: 0 }
    }
    fn protocol(key: &ServiceKey) -> u8 {
        key.protocol
    }
    fn is_host_port(key: &ServiceKey) -> bool {
        is_host_port_scope(key.scope)
    }
}

impl MapFamily for V6 {
    type Addr = Ipv6Addr;
    type Key = ServiceKey6;
    type Backend = Backend6;
    fn service_key(f: &Frontend<Ipv6Addr>) -> ServiceKey6 {
        service_key6(f)
    }
    fn backend(b: &BackendAddr<Ipv6Addr>) -> Backend6 {
        Backend6 { ip: ip6_words(b.ip.octets()), port_be: b.port.to_be(), _pad: 0 }
    }
    fn protocol(key: &ServiceKey6) -> u8 {
        key.protocol
    }
    fn is_host_port(_: &ServiceKey6) -> bool {
        false
    }
}

/// What the reconcile needs from the maps; the pinned maps implement it,
/// the tests fake it.
pub trait ServiceTable<F: MapFamily = V4> {
    fn services(&self) -> Result<Vec<(F::Key, ServiceValue)>>;
    fn backends(&self) -> Result<Vec<(BackendSlot, F::Backend)>>;
    fn put_service(&mut self, key: F::Key, value: ServiceValue) -> Result<()>;
    fn remove_service(&mut self, key: F::Key) -> Result<()>;
    fn put_backend(&mut self, slot: BackendSlot, backend: F::Backend) -> Result<()>;
    fn remove_backend(&mut self, slot: BackendSlot, backend: F::Backend) -> Result<()>;
}

impl ServiceTable<V6> for ServiceMaps6 {
    fn services(&self) -> Result<Vec<(ServiceKey6, ServiceValue)>> {
        ServiceMaps6::services(self)
    }
    fn backends(&self) -> Result<Vec<(BackendSlot, Backend6)>> {
        ServiceMaps6::backends(self)
    }
    fn put_service(&mut self, key: ServiceKey6, value: ServiceValue) -> Result<()> {
        ServiceMaps6::put_service(self, key, value)
    }
    fn remove_service(&mut self, key: ServiceKey6) -> Result<()> {
        ServiceMaps6::remove_service(self, key)
    }
    fn put_backend(&mut self, slot: BackendSlot, backend: Backend6) -> Result<()> {
        ServiceMaps6::put_backend(self, slot, backend)
    }
    fn remove_backend(&mut self, slot: BackendSlot, backend: Backend6) -> Result<()> {
        ServiceMaps6::remove_backend(self, slot, backend)
    }
}

impl ServiceTable for ServiceMaps {
    fn services(&self) -> Result<Vec<(ServiceKey, ServiceValue)>> {
        ServiceMaps::services(self)
    }
    fn backends(&self) -> Result<Vec<(BackendSlot, Backend)>> {
        ServiceMaps::backends(self)
    }
    fn put_service(&mut self, key: ServiceKey, value: ServiceValue) -> Result<()> {
        ServiceMaps::put_service(self, key, value)
    }
    fn remove_service(&mut self, key: ServiceKey) -> Result<()> {
        ServiceMaps::remove_service(self, key)
    }
    fn put_backend(&mut self, slot: BackendSlot, backend: Backend) -> Result<()> {
        ServiceMaps::put_backend(self, slot, backend)
    }
    fn remove_backend(&mut self, slot: BackendSlot, backend: Backend) -> Result<()> {
        ServiceMaps::remove_backend(self, slot, backend)
    }
}

/// A frontend's `SERVICES` key: a NodePort is the wildcard entry of its
/// port, every other frontend its address.
pub fn service_key(f: &Frontend) -> ServiceKey {
    if f.is_node_port() {
        return ServiceKey::node_port(f.port.to_be(), f.protocol.number());
    }
    ServiceKey { vip_be: ip_be(f.ip), port_be: f.port.to_be(), protocol: f.protocol.number(), scope: SCOPE_ADDRESS }
}

/// An IPv6 frontend's `SERVICES6` key (a NodePort: the wildcard entry).
pub fn service_key6(f: &Frontend<Ipv6Addr>) -> ServiceKey6 {
    if f.is_node_port() {
        return ServiceKey6::node_port(f.port.to_be(), f.protocol.number());
    }
    ServiceKey6::address(ip6_words(f.ip.octets()), f.port.to_be(), f.protocol.number())
}

/// A hostPort's `SERVICES` key: on its `hostIP`, or on every address of
/// this node.
pub fn host_port_key(f: &HostPortFrontend) -> ServiceKey {
    match f.host_ip {
        Some(ip) => ServiceKey::host_port_on(ip_be(ip), f.port.to_be(), f.protocol.number()),
        None => ServiceKey::host_port(f.port.to_be(), f.protocol.number()),
    }
}

fn host_port_entry(target: &HostPortTarget) -> Entry<Backend> {
    let b = &target.backend;
    Entry {
        // No affinity, no Service port.
        value: ServiceValue { backend_set: 0, count: 1, affinity_timeout_secs: 0, flags: 0, service_port_id: 0 },
        backends: vec![Backend { ip_be: ip_be(b.ip), port_be: b.port.to_be(), _pad: 0 }],
    }
}

/// One frontend as the maps hold it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry<B> {
    value: ServiceValue,
    backends: Vec<B>,
}

impl<B: PartialEq> Entry<B> {
    /// Same backends and settings (the set id aside).
    fn same_as(&self, other: &Entry<B>) -> bool {
        let strip = |v: &ServiceValue| ServiceValue { backend_set: 0, ..*v };
        self.backends == other.backends && strip(&self.value) == strip(&other.value)
    }
}

fn entry_of<F: MapFamily>(plan: &FrontendPlan<F::Addr>) -> Entry<F::Backend> {
    let backends: Vec<F::Backend> = plan.backends.iter().map(F::backend).collect();
    Entry {
        value: ServiceValue {
            backend_set: 0,
            count: backends.len() as u32,
            affinity_timeout_secs: plan.affinity_timeout_secs,
            flags: plan.kind.flags()
                | if plan.no_local_endpoints { SERVICE_NO_LOCAL_ENDPOINTS } else { 0 }
                | if plan.external_local { external_local_flags(plan.local_backends) } else { 0 }
                | if plan.source_ranges.is_empty() { 0 } else { SERVICE_SOURCE_RANGES },
            service_port_id: plan.service_port_id,
        },
        backends,
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct PassStats {
    pub added: usize,
    pub changed: usize,
    pub removed: usize,
    pub failed: usize,
}

/// A backend a UDP frontend no longer has (removed from its set, or the
/// frontend itself removed). Sockets connected through that frontend to
/// that backend are stale: nothing else moves them (see
/// `daemon::udp_sockets`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RemovedBackend<K = ServiceKey, B = Backend> {
    pub frontend: K,
    pub backend: B,
}

pub struct ServiceReconciler<F: MapFamily = V4> {
    applied: BTreeMap<F::Key, Entry<F::Backend>>,
    next_set: u32,
    /// Since the last `take_removed_udp_backends`, in the order the maps
    /// switched.
    removed_udp: Vec<RemovedBackend<F::Key, F::Backend>>,
    /// Old backend sets whose delete failed: retried at every pass.
    orphans: Vec<Entry<F::Backend>>,
}

impl<F: MapFamily> ServiceReconciler<F> {
    /// Take over what the maps hold (an earlier agent's work: it keeps
    /// serving while we start), and delete backend sets no frontend names
    /// (a pass that died between writing a set and switching to it).
    pub fn resume(table: &mut impl ServiceTable<F>) -> Result<Self> {
        let services = table.services()?;
        let mut sets: BTreeMap<u32, Vec<(u32, F::Backend)>> = BTreeMap::new();
        for (slot, backend) in table.backends()? {
            sets.entry(slot.set).or_default().push((slot.slot, backend));
        }
        let mut applied = BTreeMap::new();
        let mut next_set = 1;
        for (key, value) in services {
            let mut slots = sets.remove(&value.backend_set).unwrap_or_default();
            slots.sort_by_key(|(slot, _)| *slot);
            next_set = next_set.max(value.backend_set.wrapping_add(1));
            applied.insert(key, Entry { value, backends: slots.into_iter().map(|(_, b)| b).collect() });
        }
        for (set, slots) in sets {
            next_set = next_set.max(set.wrapping_add(1));
            for (slot, backend) in slots {
                table.remove_backend(BackendSlot { set, slot }, backend)?;
            }
        }
        Ok(Self { applied, next_set, removed_udp: Vec::new(), orphans: Vec::new() })
    }

    fn note_removed(&mut self, frontend: F::Key, old: &Entry<F::Backend>, kept: &[F::Backend]) {
        if F::protocol(&frontend) != Protocol::Udp.number() {
            return;
        }
        self.removed_udp.extend(
            old.backends.iter().filter(|b| !kept.contains(b)).map(|b| RemovedBackend { frontend, backend: *b }),
        );
    }

    /// The backends UDP frontends lost since the last call: only once the
    /// maps no longer offer them (a failed frontend keeps its old set and
    /// loses nothing), whether or not the rest of its pass succeeded. For
    /// the sweep of stale sockets and NAT entries (`daemon::udp_sockets`);
    /// both families.
    pub fn take_removed_udp_backends(&mut self) -> Vec<RemovedBackend<F::Key, F::Backend>> {
        std::mem::take(&mut self.removed_udp)
    }

    /// Frontends in the maps now.
    pub fn len(&self) -> usize {
        self.applied.len()
    }

    pub fn is_empty(&self) -> bool {
        self.applied.is_empty()
    }

    /// Backends over all frontends in the maps now.
    pub fn backend_count(&self) -> usize {
        self.applied.values().map(|e| e.backends.len()).sum()
    }

    /// Make the maps hold `plan`. Removals first (they free room); a
    /// frontend that fails (a full map) keeps what it had and is retried
    /// on the next pass; the others go on.
    /// hostPort entries are not the Service plan's: `apply_host_ports`
    /// keeps them.
    pub fn apply(&mut self, table: &mut impl ServiceTable<F>, plan: &Plan<F::Addr>) -> Result<PassStats> {
        let mut keys: BTreeSet<F::Key> = self.applied.keys().filter(|k| !F::is_host_port(k)).copied().collect();
        let desired: BTreeMap<F::Key, Entry<F::Backend>> =
            plan.iter().map(|(f, p)| (F::service_key(f), entry_of::<F>(p))).collect();
        keys.extend(desired.keys().copied());
        self.apply_changes(table, keys.into_iter().map(|k| (k, desired.get(&k).cloned())))
    }

    /// Make the maps hold `plan` for `frontends` only (the planner named
    /// them as possibly changed); the rest is left as it is.
    pub fn apply_some(
        &mut self,
        table: &mut impl ServiceTable<F>,
        plan: &Plan<F::Addr>,
        frontends: &BTreeSet<Frontend<F::Addr>>,
    ) -> Result<PassStats> {
        self.apply_changes(table, frontends.iter().map(|f| (F::service_key(f), plan.get(f).map(entry_of::<F>))))
    }

    fn apply_changes(
        &mut self,
        table: &mut impl ServiceTable<F>,
        changes: impl Iterator<Item = (F::Key, Option<Entry<F::Backend>>)>,
    ) -> Result<PassStats> {
        let mut stats = PassStats::default();
        let mut first_error = None;
        // Sets whose frontend moved on but whose delete failed last time.
        for orphan in std::mem::take(&mut self.orphans) {
            self.delete_or_keep(table, orphan);
        }
        let (gone, wanted): (Vec<_>, Vec<_>) = changes.partition(|(_, want)| want.is_none());
        for (key, _) in gone {
            let Some(old) = self.applied.get(&key).cloned() else { continue };
            // The frontend first: until it is gone from the map, it stays
            // ours to remove on a later pass.
            if let Err(e) = table.remove_service(key) {
                stats.failed += 1;
                warn!(error = %format!("{e:#}"), ?key, "service not removed; retrying");
                first_error.get_or_insert(e);
                continue;
            }
            self.applied.remove(&key);
            self.note_removed(key, &old, &[]);
            self.delete_or_keep(table, old);
            stats.removed += 1;
        }
        for (key, want) in wanted {
            let want = want.expect("partitioned");
            let old = self.applied.get(&key).cloned();
            if old.as_ref().is_some_and(|o| o.same_as(&want)) {
                continue;
            }
            let existed = old.is_some();
            match self.replace(table, key, want, old) {
                Ok(()) if existed => stats.changed += 1,
                Ok(()) => stats.added += 1,
                Err(e) => {
                    stats.failed += 1;
                    warn!(error = %format!("{e:#}"), ?key, "service not updated; keeping what it had");
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e.context(format!("{} service frontends not updated", stats.failed))),
            None => Ok(stats),
        }
    }

    /// New set, switch, delete the old set. On failure the new set is
    /// removed again and the frontend keeps its old one.
    fn replace(
        &mut self,
        table: &mut impl ServiceTable<F>,
        key: F::Key,
        mut want: Entry<F::Backend>,
        old: Option<Entry<F::Backend>>,
    ) -> Result<()> {
        let set = self.next_set;
        self.next_set = self.next_set.wrapping_add(1).max(1);
        want.value.backend_set = set;
        let written = want
            .backends
            .iter()
            .enumerate()
            .try_for_each(|(i, b)| table.put_backend(BackendSlot { set, slot: i as u32 }, *b))
            .and_then(|_| table.put_service(key, want.value));
        if let Err(e) = written {
            delete_set(table, &want).context("undo a half-written backend set")?;
            return Err(e);
        }
        // Switched: the frontend is on the new set whatever happens next.
        let new_backends = want.backends.clone();
        self.applied.insert(key, want);
        if let Some(old) = old {
            self.note_removed(key, &old, &new_backends);
            self.delete_or_keep(table, old);
        }
        Ok(())
    }

    /// Delete a set no frontend uses any more; if that fails, keep it to
    /// retry on the next pass rather than leak it.
    fn delete_or_keep(&mut self, table: &mut impl ServiceTable<F>, set: Entry<F::Backend>) {
        if let Err(e) = delete_set(table, &set) {
            warn!(error = %format!("{e:#}"), set = set.value.backend_set, "old backend set not deleted; retrying");
            self.orphans.push(set);
        }
    }
}

impl ServiceReconciler<V4> {
    /// Make the maps' hostPort entries those of `plan` (and leave every
    /// Service frontend alone): each a one-backend set, switched as any
    /// other frontend.
    pub fn apply_host_ports(&mut self, table: &mut impl ServiceTable, plan: &HostPortPlan) -> Result<PassStats> {
        let desired: BTreeMap<ServiceKey, Entry<Backend>> =
            plan.iter().map(|(f, t)| (host_port_key(f), host_port_entry(t))).collect();
        let mut keys: BTreeSet<ServiceKey> =
            self.applied.keys().filter(|k| is_host_port_scope(k.scope)).copied().collect();
        keys.extend(desired.keys().copied());
        self.apply_changes(table, keys.into_iter().map(|k| (k, desired.get(&k).cloned())))
    }

    /// hostPort frontends in the maps now.
    pub fn host_port_count(&self) -> usize {
        self.applied.keys().filter(|k| is_host_port_scope(k.scope)).count()
    }
}

fn delete_set<F: MapFamily>(table: &mut impl ServiceTable<F>, entry: &Entry<F::Backend>) -> Result<()> {
    for (i, b) in entry.backends.iter().enumerate() {
        table.remove_backend(BackendSlot { set: entry.value.backend_set, slot: i as u32 }, *b)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use sluice_node::datapath::pinned_maps::ip_from_be;

    use super::*;
    use crate::services::{
        model::{Protocol, ServiceName},
        plan::BackendAddr,
    };

    /// The maps as a test sees them, with a log of every write and an
    /// optional capacity for backends.
    #[derive(Default)]
    struct Fake {
        services: BTreeMap<ServiceKey, ServiceValue>,
        backends: BTreeMap<BackendSlot, Backend>,
        log: Vec<String>,
        max_backends: Option<usize>,
        fail_removals: bool,
    }

    impl ServiceTable for Fake {
        fn services(&self) -> Result<Vec<(ServiceKey, ServiceValue)>> {
            Ok(self.services.iter().map(|(k, v)| (*k, *v)).collect())
        }
        fn backends(&self) -> Result<Vec<(BackendSlot, Backend)>> {
            Ok(self.backends.iter().map(|(k, v)| (*k, *v)).collect())
        }
        fn put_service(&mut self, key: ServiceKey, value: ServiceValue) -> Result<()> {
            self.log.push(format!("put service set {}", value.backend_set));
            self.services.insert(key, value);
            Ok(())
        }
        fn remove_service(&mut self, key: ServiceKey) -> Result<()> {
            if self.fail_removals {
                anyhow::bail!("remove failed");
            }
            self.log.push("remove service".into());
            self.services.remove(&key);
            Ok(())
        }
        fn put_backend(&mut self, slot: BackendSlot, backend: Backend) -> Result<()> {
            if self.max_backends.is_some_and(|m| self.backends.len() >= m) {
                anyhow::bail!("map BACKENDS is full");
            }
            self.log.push(format!("put backend {}/{}", slot.set, slot.slot));
            self.backends.insert(slot, backend);
            Ok(())
        }
        fn remove_backend(&mut self, slot: BackendSlot, _backend: Backend) -> Result<()> {
            if self.fail_removals {
                anyhow::bail!("remove failed");
            }
            self.log.push(format!("remove backend {}/{}", slot.set, slot.slot));
            self.backends.remove(&slot);
            Ok(())
        }
    }

    fn frontend(port: u16) -> Frontend {
        Frontend { ip: "10.96.0.10".parse().unwrap(), port, protocol: Protocol::Tcp }
    }

    /// The id the planner gives port `port` of default/web.
    fn port_id(port: u16) -> u64 {
        sluice_common::services::service_port_id(b"default", b"web", port.to_string().as_bytes(), 6)
    }

    fn plan(entries: &[(u16, &[&str])]) -> Plan {
        entries
            .iter()
            .map(|(port, ips)| {
                (
                    frontend(*port),
                    FrontendPlan {
                        service: ServiceName::new("default", "web"),
                        backends: ips.iter().map(|ip| BackendAddr { ip: ip.parse().unwrap(), port: 8080 }).collect(),
                        affinity_timeout_secs: 0,
                        no_local_endpoints: false,
                        external_local: false,
                        local_backends: 0,
                        source_ranges: Vec::new(),
                        kind: sluice_common::services::FrontendKind::ClusterIp,
                        service_port_id: port_id(*port),
                    },
                )
            })
            .collect()
    }

    /// The backends the maps give a frontend, read the way the program does.
    fn lookup(t: &Fake, port: u16) -> Option<Vec<Backend>> {
        let v = t.services.get(&service_key(&frontend(port)))?;
        Some((0..v.count).map(|i| t.backends[&BackendSlot { set: v.backend_set, slot: i }]).collect())
    }

    #[test]
    fn a_change_writes_a_new_set_switches_then_deletes_the_old() {
        let mut t = Fake::default();
        let mut r = ServiceReconciler::resume(&mut t).unwrap();
        r.apply(&mut t, &plan(&[(80, &["10.244.1.1", "10.244.1.2"])])).unwrap();
        t.log.clear();
        let stats = r.apply(&mut t, &plan(&[(80, &["10.244.1.1", "10.244.2.2", "10.244.2.3"])])).unwrap();
        assert_eq!(stats, PassStats { changed: 1, ..Default::default() });
        assert_eq!(
            t.log,
            [
                "put backend 2/0",
                "put backend 2/1",
                "put backend 2/2",
                "put service set 2",
                "remove backend 1/0",
                "remove backend 1/1"
            ]
        );
        assert_eq!(lookup(&t, 80).unwrap().len(), 3);
        assert_eq!(t.backends.len(), 3, "the old set is gone");
    }

    /// The Service port's id rides in every value written for its
    /// frontend and stays when the endpoints move it to a new set; an entry
    /// an earlier version wrote (no id: 0) is rewritten with it.
    #[test]
    fn the_service_port_id_is_written_kept_across_sets_and_filled_in_after_an_upgrade() {
        let mut t = Fake::default();
        let mut r = ServiceReconciler::resume(&mut t).unwrap();
        r.apply(&mut t, &plan(&[(80, &["10.244.1.1"]), (81, &["10.244.1.1"])])).unwrap();
        let value = |t: &Fake, port| t.services[&service_key(&frontend(port))];
        assert_eq!(value(&t, 80).service_port_id, port_id(80));
        assert_ne!(port_id(80), port_id(81));
        let first_set = value(&t, 80).backend_set;
        r.apply(&mut t, &plan(&[(80, &["10.244.1.2"]), (81, &["10.244.1.1"])])).unwrap();
        assert_ne!(value(&t, 80).backend_set, first_set, "a new set");
        assert_eq!(value(&t, 80).service_port_id, port_id(80), "the same Service port");
        // An earlier version's entries (the value migrated: the id zero).
        for v in t.services.values_mut() {
            v.service_port_id = 0;
        }
        let mut r = ServiceReconciler::resume(&mut t).unwrap();
        let p = plan(&[(80, &["10.244.1.2"]), (81, &["10.244.1.1"])]);
        assert_eq!(r.apply(&mut t, &p).unwrap(), PassStats { changed: 2, ..Default::default() });
        assert_eq!((value(&t, 80).service_port_id, value(&t, 81).service_port_id), (port_id(80), port_id(81)));
        assert_eq!(r.apply(&mut t, &p).unwrap(), PassStats::default());
    }

    #[test]
    fn an_unchanged_plan_touches_nothing() {
        let mut t = Fake::default();
        let mut r = ServiceReconciler::resume(&mut t).unwrap();
        let p = plan(&[(80, &["10.244.1.1"]), (443, &[])]);
        r.apply(&mut t, &p).unwrap();
        t.log.clear();
        assert_eq!(r.apply(&mut t, &p).unwrap(), PassStats::default());
        assert!(t.log.is_empty(), "{:?}", t.log);
    }

    #[test]
    fn removed_frontends_go_first_and_take_their_backends() {
        let mut t = Fake::default();
        let mut r = ServiceReconciler::resume(&mut t).unwrap();
        r.apply(&mut t, &plan(&[(80, &["10.244.1.1"])])).unwrap();
        t.log.clear();
        r.apply(&mut t, &plan(&[(81, &["10.244.1.1"])])).unwrap();
        assert_eq!(t.log[..2], ["remove service", "remove backend 1/0"]);
        assert!(lookup(&t, 80).is_none());
        assert_eq!(lookup(&t, 81).unwrap().len(), 1);
    }

    #[test]
    fn a_full_map_keeps_the_old_set_and_leaves_no_half_written_one() {
        let mut t = Fake::default();
        let mut r = ServiceReconciler::resume(&mut t).unwrap();
        r.apply(&mut t, &plan(&[(80, &["10.244.1.1"])])).unwrap();
        t.max_backends = Some(2);
        let err = r.apply(&mut t, &plan(&[(80, &["10.244.1.1", "10.244.1.2", "10.244.1.3"])])).unwrap_err();
        assert!(format!("{err:#}").contains("full"), "{err:#}");
        assert_eq!(
            lookup(&t, 80).unwrap(),
            vec![Backend { ip_be: ip_be("10.244.1.1".parse().unwrap()), port_be: 8080u16.to_be(), _pad: 0 }]
        );
        assert_eq!(t.backends.len(), 1, "the half-written set was removed");
        // Room again: the next pass completes the change.
        t.max_backends = None;
        r.apply(&mut t, &plan(&[(80, &["10.244.1.1", "10.244.1.2", "10.244.1.3"])])).unwrap();
        assert_eq!(lookup(&t, 80).unwrap().len(), 3);
    }

    #[test]
    fn resume_takes_over_the_maps_and_removes_orphan_sets() {
        let mut t = Fake::default();
        let mut r = ServiceReconciler::resume(&mut t).unwrap();
        let p = plan(&[(80, &["10.244.1.1", "10.244.1.2"])]);
        r.apply(&mut t, &p).unwrap();
        // A pass that died after writing set 7 but before switching to it.
        t.backends.insert(BackendSlot { set: 7, slot: 0 }, Backend::default());
        t.log.clear();
        let mut r = ServiceReconciler::resume(&mut t).unwrap();
        assert_eq!(t.log, ["remove backend 7/0"]);
        assert_eq!(r.len(), 1);
        t.log.clear();
        assert_eq!(r.apply(&mut t, &p).unwrap(), PassStats::default(), "what the maps hold is what was planned");
        assert!(t.log.is_empty());
        // New sets never reuse an id still or recently in use.
        r.apply(&mut t, &plan(&[(80, &["10.244.1.3"])])).unwrap();
        assert_eq!(t.services.values().next().unwrap().backend_set, 8);
    }

    #[test]
    fn applying_some_frontends_leaves_the_others_alone() {
        let mut t = Fake::default();
        let mut r = ServiceReconciler::resume(&mut t).unwrap();
        r.apply(&mut t, &plan(&[(80, &["10.244.1.1"]), (81, &["10.244.1.1"])])).unwrap();
        t.log.clear();
        // 81 changed in the plan, 80 vanished from it, but only 81 is named.
        let next = plan(&[(81, &["10.244.1.2"])]);
        let stats = r.apply_some(&mut t, &next, &BTreeSet::from([frontend(81)])).unwrap();
        assert_eq!(stats, PassStats { changed: 1, ..Default::default() });
        assert!(lookup(&t, 80).is_some(), "not named: untouched");
        // Named and gone from the plan: removed.
        r.apply_some(&mut t, &next, &BTreeSet::from([frontend(80)])).unwrap();
        assert!(lookup(&t, 80).is_none());
        assert_eq!(lookup(&t, 81).unwrap()[0].ip_be, ip_be("10.244.1.2".parse().unwrap()));
    }

    /// `p` with the frontends on `ports` made UDP.
    fn udp(p: Plan, ports: &[u16]) -> Plan {
        p.into_iter()
            .map(|(mut f, v)| {
                if ports.contains(&f.port) {
                    f.protocol = Protocol::Udp;
                }
                (f, v)
            })
            .collect()
    }

    fn removed(r: &mut ServiceReconciler) -> Vec<(u16, String)> {
        r.take_removed_udp_backends()
            .into_iter()
            .map(|b| {
                assert_eq!(b.frontend.protocol, 17);
                (u16::from_be(b.frontend.port_be), ip_from_be(b.backend.ip_be).to_string())
            })
            .collect()
    }

    #[test]
    fn udp_frontends_report_the_backends_they_lost_once_switched() {
        let mut t = Fake::default();
        let mut r = ServiceReconciler::resume(&mut t).unwrap();
        let first = udp(
            plan(&[(53, &["10.244.1.1", "10.244.1.2", "10.244.1.3"]), (54, &["10.244.1.1"]), (80, &["10.244.1.1"])]),
            &[53, 54],
        );
        r.apply(&mut t, &first).unwrap();
        assert_eq!(removed(&mut r), [], "new frontends lose nothing");
        // 53 loses .1 and .3 (gains .4), 54 goes away, TCP 80 loses .1.
        let next = udp(plan(&[(53, &["10.244.1.2", "10.244.1.4"]), (80, &["10.244.1.2"])]), &[53]);
        let stats = r.apply(&mut t, &next).unwrap();
        assert_eq!((stats.changed, stats.removed), (2, 1));
        assert_eq!(
            removed(&mut r),
            [(54, "10.244.1.1".into()), (53, "10.244.1.1".into()), (53, "10.244.1.3".into())],
            "removals first, then changes; TCP is not reported"
        );
        assert_eq!(removed(&mut r), [], "taken once");
        // Settings only, or the same backends: nothing lost.
        let mut same = next.clone();
        same.values_mut().for_each(|p| p.affinity_timeout_secs = 10);
        r.apply(&mut t, &same).unwrap();
        assert_eq!(removed(&mut r), []);
    }

    #[test]
    fn a_udp_frontend_that_fails_to_switch_loses_nothing_but_the_others_still_report() {
        let mut t = Fake::default();
        let mut r = ServiceReconciler::resume(&mut t).unwrap();
        r.apply(&mut t, &udp(plan(&[(53, &["10.244.1.1"]), (54, &["10.244.1.1", "10.244.1.2"])]), &[53, 54])).unwrap();
        // Room for 54's new set (1) but not then 53's (3): 54 switches, 53 fails.
        t.max_backends = Some(4);
        let next = udp(plan(&[(53, &["10.244.2.1", "10.244.2.2", "10.244.2.3"]), (54, &["10.244.1.2"])]), &[53, 54]);
        assert!(r.apply(&mut t, &next).is_err());
        assert_eq!(removed(&mut r), [(54, "10.244.1.1".into())], "53 keeps its old backend; 54's loss counts");
        t.max_backends = None;
        r.apply(&mut t, &next).unwrap();
        assert_eq!(removed(&mut r), [(53, "10.244.1.1".into())], "reported when it does switch");
    }

    #[test]
    fn failed_deletes_are_retried_not_forgotten() {
        let mut t = Fake::default();
        let mut r = ServiceReconciler::resume(&mut t).unwrap();
        r.apply(&mut t, &plan(&[(80, &["10.244.1.1"]), (81, &["10.244.1.1"])])).unwrap();
        // Removing the frontend fails: it stays in the map and stays ours.
        t.fail_removals = true;
        assert!(r.apply(&mut t, &plan(&[(81, &["10.244.1.2"])])).is_err());
        assert!(lookup(&t, 80).is_some());
        assert_eq!(lookup(&t, 81).unwrap()[0].ip_be, ip_be("10.244.1.2".parse().unwrap()), "the switch happened");
        assert_eq!(t.backends.len(), 3, "old set of 81 not deleted yet, 80's still live");
        t.fail_removals = false;
        r.apply(&mut t, &plan(&[(81, &["10.244.1.2"])])).unwrap();
        assert!(lookup(&t, 80).is_none(), "the removal is retried");
        assert_eq!(t.backends.len(), 1, "and the leftover sets are deleted: nothing leaks");
    }

    fn host_plan(entries: &[(Option<&str>, u16, &str)]) -> HostPortPlan {
        entries
            .iter()
            .map(|(ip, port, backend)| {
                (
                    HostPortFrontend { host_ip: ip.map(|i| i.parse().unwrap()), port: *port, protocol: Protocol::Tcp },
                    HostPortTarget {
                        pod: "default/a".into(),
                        backend: BackendAddr { ip: backend.parse().unwrap(), port: 7777 },
                    },
                )
            })
            .collect()
    }

    #[test]
    fn host_ports_and_services_are_kept_apart_and_neither_removes_the_others() {
        let mut t = Fake::default();
        let mut r = ServiceReconciler::resume(&mut t).unwrap();
        r.apply(&mut t, &plan(&[(80, &["10.244.1.1"])])).unwrap();
        let hp = host_plan(&[(None, 8080, "10.244.1.5"), (Some("172.30.0.1"), 8081, "10.244.1.6")]);
        assert_eq!(r.apply_host_ports(&mut t, &hp).unwrap().added, 2);
        let any = ServiceKey::host_port(8080u16.to_be(), 6);
        let on = ServiceKey::host_port_on(ip_be("172.30.0.1".parse().unwrap()), 8081u16.to_be(), 6);
        let backend_of = |t: &Fake, k: &ServiceKey| {
            let v = t.services[k];
            assert_eq!(v.count, 1);
            let b = t.backends[&BackendSlot { set: v.backend_set, slot: 0 }];
            (ip_from_be(b.ip_be).to_string(), u16::from_be(b.port_be))
        };
        assert_eq!(backend_of(&t, &any), ("10.244.1.5".into(), 7777));
        assert_eq!(backend_of(&t, &on), ("10.244.1.6".into(), 7777));
        assert_eq!(r.host_port_count(), 2);
        // A full Service pass does not touch hostPorts...
        t.log.clear();
        assert_eq!(r.apply(&mut t, &plan(&[(81, &["10.244.1.1"])])).unwrap().removed, 1);
        assert!(t.services.contains_key(&any) && t.services.contains_key(&on), "{:?}", t.log);
        // ... nor a hostPort pass Services; a pod gone takes its hostPort.
        let stats = r.apply_host_ports(&mut t, &host_plan(&[(None, 8080, "10.244.1.9")])).unwrap();
        assert_eq!((stats.changed, stats.removed), (1, 1));
        assert!(!t.services.contains_key(&on));
        assert_eq!(backend_of(&t, &any), ("10.244.1.9".into(), 7777));
        assert_eq!(lookup(&t, 81).unwrap().len(), 1);
        // Taken over at a restart as any other entry.
        let mut again = ServiceReconciler::resume(&mut t).unwrap();
        t.log.clear();
        assert_eq!(
            again.apply_host_ports(&mut t, &host_plan(&[(None, 8080, "10.244.1.9")])).unwrap(),
            PassStats::default()
        );
        assert!(t.log.is_empty());
    }

    #[test]
    fn settings_only_changes_still_switch_atomically() {
        let mut t = Fake::default();
        let mut r = ServiceReconciler::resume(&mut t).unwrap();
        let mut p = plan(&[(80, &["10.244.1.1"])]);
        r.apply(&mut t, &p).unwrap();
        p.values_mut().next().unwrap().affinity_timeout_secs = 30;
        assert_eq!(r.apply(&mut t, &p).unwrap().changed, 1);
        assert_eq!(t.services.values().next().unwrap().affinity_timeout_secs, 30);
        assert_eq!(lookup(&t, 80).unwrap().len(), 1);
    }
}

#[cfg(test)]
mod ipv6_tests {
    //! The IPv6 reconciler: the same steps over `SERVICES6`/`BACKENDS6`.
    use std::collections::BTreeMap;

    use sluice_common::services::FrontendKind;

    use super::*;
    use crate::services::model::ServiceName;

    #[derive(Default)]
    struct Fake6 {
        services: BTreeMap<ServiceKey6, ServiceValue>,
        backends: BTreeMap<BackendSlot, Backend6>,
    }

    impl ServiceTable<V6> for Fake6 {
        fn services(&self) -> Result<Vec<(ServiceKey6, ServiceValue)>> {
            Ok(self.services.iter().map(|(k, v)| (*k, *v)).collect())
        }
        fn backends(&self) -> Result<Vec<(BackendSlot, Backend6)>> {
            Ok(self.backends.iter().map(|(k, v)| (*k, *v)).collect())
        }
        fn put_service(&mut self, key: ServiceKey6, value: ServiceValue) -> Result<()> {
            self.services.insert(key, value);
            Ok(())
        }
        fn remove_service(&mut self, key: ServiceKey6) -> Result<()> {
            self.services.remove(&key);
            Ok(())
        }
        fn put_backend(&mut self, slot: BackendSlot, backend: Backend6) -> Result<()> {
            self.backends.insert(slot, backend);
            Ok(())
        }
        fn remove_backend(&mut self, slot: BackendSlot, _: Backend6) -> Result<()> {
            self.backends.remove(&slot);
            Ok(())
        }
    }

    fn plan6(backends: &[&str]) -> Plan<Ipv6Addr> {
        let f = Frontend { ip: "fd00:96::50".parse().unwrap(), port: 80, protocol: Protocol::Tcp };
        let p = FrontendPlan {
            service: ServiceName::new("default", "web6"),
            backends: backends.iter().map(|ip| BackendAddr { ip: ip.parse().unwrap(), port: 8080 }).collect(),
            affinity_timeout_secs: 0,
            no_local_endpoints: false,
            kind: FrontendKind::ClusterIp,
            external_local: false,
            local_backends: 0,
            source_ranges: Vec::new(),
            service_port_id: 0,
        };
        [(f, p)].into()
    }

    /// What a program finds for the frontend: its backends' addresses.
    fn lookup(t: &Fake6) -> Option<Vec<Ipv6Addr>> {
        let words = ip6_words("fd00:96::50".parse::<Ipv6Addr>().unwrap().octets());
        let v = t.services.get(&ServiceKey6::address(words, 80u16.to_be(), 6))?;
        Some(
            (0..v.count)
                .map(|slot| {
                    let b = t.backends[&BackendSlot { set: v.backend_set, slot }];
                    assert_eq!(u16::from_be(b.port_be), 8080);
                    Ipv6Addr::from(sluice_common::services6::ip6_octets(b.ip))
                })
                .collect(),
        )
    }

    #[test]
    fn the_ipv6_plan_is_written_switched_and_removed_in_the_ipv6_maps() {
        let mut t = Fake6::default();
        let mut r = ServiceReconciler::<V6>::resume(&mut t).unwrap();
        r.apply(&mut t, &plan6(&["fd00:244::5", "fd00:244::6"])).unwrap();
        let ips = |s: &[&str]| s.iter().map(|ip| ip.parse::<Ipv6Addr>().unwrap()).collect::<Vec<_>>();
        assert_eq!(lookup(&t), Some(ips(&["fd00:244::5", "fd00:244::6"])));
        let stats = r.apply(&mut t, &plan6(&["fd00:244::7"])).unwrap();
        assert_eq!(stats, PassStats { changed: 1, ..Default::default() });
        assert_eq!(lookup(&t), Some(ips(&["fd00:244::7"])));
        assert_eq!(t.backends.len(), 1, "the old set is gone");
        // A restarted agent takes the IPv6 maps over as they are.
        let mut again = ServiceReconciler::<V6>::resume(&mut t).unwrap();
        assert_eq!(again.apply(&mut t, &plan6(&["fd00:244::7"])).unwrap(), PassStats::default());
        again.apply(&mut t, &Plan::new()).unwrap();
        assert!(t.services.is_empty() && t.backends.is_empty());
    }

    #[test]
    fn an_ipv6_udp_frontend_reports_the_backends_it_lost_for_the_sweep() {
        let mut t = Fake6::default();
        let mut r = ServiceReconciler::<V6>::resume(&mut t).unwrap();
        let udp6 = |backends: &[&str]| -> Plan<Ipv6Addr> {
            plan6(backends).into_iter().map(|(f, p)| (Frontend { protocol: Protocol::Udp, ..f }, p)).collect()
        };
        r.apply(&mut t, &udp6(&["fd00:244::5", "fd00:244::6"])).unwrap();
        assert!(r.take_removed_udp_backends().is_empty(), "a new frontend loses nothing");
        r.apply(&mut t, &udp6(&["fd00:244::6"])).unwrap();
        let lost = r.take_removed_udp_backends();
        let words = |ip: &str| ip6_words(ip.parse::<Ipv6Addr>().unwrap().octets());
        assert_eq!(lost.len(), 1, "{lost:?}");
        assert_eq!(lost[0].frontend, ServiceKey6::address(words("fd00:96::50"), 80u16.to_be(), 17));
        assert_eq!((lost[0].backend.ip, u16::from_be(lost[0].backend.port_be)), (words("fd00:244::5"), 8080));
        assert!(r.take_removed_udp_backends().is_empty(), "taken once");
        // The UDP frontend goes: its last backend is lost too. TCP
        // frontends report nothing.
        r.apply(&mut t, &plan6(&["fd00:244::7"])).unwrap();
        assert_eq!(r.take_removed_udp_backends().len(), 1, "the UDP frontend's removal");
        r.apply(&mut t, &plan6(&["fd00:244::8"])).unwrap();
        assert!(r.take_removed_udp_backends().is_empty());
    }
}
