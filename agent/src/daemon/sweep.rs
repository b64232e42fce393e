//! Keeping the node's per-pod state in sync with the pods that are really
//! there, after a CNI DEL that never came (runtime crash, plugin killed
//! mid-ADD, namespace deleted by hand) or an endpoint entry that went
//! missing (a recreated `ENDPOINTS` pin, an ADD that raced a map
//! migration). `plan` decides from facts (pure); `sweep` gathers the facts
//! through `SweepTarget` and applies what `plan` names.
//!
//! In sync first, then clean (Calico's order; Cilium restores endpoints the
//! same way): every lease whose pod is still there gets its endpoint entry
//! re-derived — the host veth's name follows from the lease (container id,
//! ifname), its index and MAC and the pod's MAC from netlink — and only what
//! is really gone is torn down. A missing entry alone is never a reason to
//! tear a pod down. Each lease, by `decide`:
//!
//! | host veth | temp peer on node | entry            | host side set up¹ | age    | verdict              |
//! |-----------|-------------------|------------------|-------------------|--------|----------------------|
//! | there     | –                 | points at it     | –                 | any    | in sync              |
//! | –         | –                 | missing or stale | –                 | young  | leave (ADD may run)  |
//! | gone      | –                 | –                | –                 | old    | tear down (pod gone) |
//! | there     | there             | –                | –                 | old    | tear down (ADD died before the move) |
//! | there     | gone              | missing or stale | yes               | old    | repair the entry     |
//! | there     | gone              | missing or stale | no                | old    | tear down (ADD died before the host side) |
//! | there     | gone              | missing or stale | unreadable        | old    | leave (ask again next tick) |
//!
//! ¹ ADD's `host-config` step: the `/32` route to the pod over its host
//! veth and, on a device that resolves neighbours (veth), the pod's MAC as
//! a permanent neighbour. It comes after the pod side is configured, so
//! "set up" means the pod is complete but for its entry. A host veth that
//! exists means the pod's namespace does (the pair dies with it).
//!
//! On a dual-stack node the IPv4 lease leads: tearing an attachment down
//! releases its IPv6 lease too, and an IPv6 lease left without an IPv4
//! twin (a release that failed half-way) is released once older than the
//! grace period (`orphans6`). `ENDPOINTS6` entries are re-derived from the
//! IPv4 ones (`repairs6`), and an entry no pod stands behind (its
//! interface gone, or its address unleased) is removed (`stale6`).
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::Path,
    time::Duration,
};

use anyhow::Result;
use ipnetwork::{Ipv4Network, Ipv6Network};
use sluice_common::EndpointInfo;
use tracing::{info, warn};

use sluice_node::{
    datapath::{
        pin_lock::PinLock,
        pinned_maps::{Endpoints, Endpoints6},
        pins::PinDir,
    },
    ipam::store::{Lease, LeaseStore, LeaseStore6, Leases},
    net::netlink::Netlink,
    pod::{device::PodDevice, names as pod_names, plumbing, teardown},
};

#[derive(Debug, Default, PartialEq, Eq)]
pub struct SweepPlan {
    /// Endpoint entries re-derived for pods that are still there (the entry
    /// was missing or pointed at another interface).
    pub repairs: Vec<(Ipv4Addr, EndpointInfo)>,
    /// (container id, ifname) attachments to tear down entirely.
    pub attachments: Vec<(String, String)>,
    /// Endpoint entries pointing at interfaces that no longer exist.
    pub endpoints: Vec<Ipv4Addr>,
    /// Pods' link pins (`from_pod`, `from_pod_netkit`) for interfaces that
    /// no longer exist.
    pub link_pins: Vec<String>,
}

impl SweepPlan {
    pub fn is_empty(&self) -> bool {
        self.repairs.is_empty() && self.attachments.is_empty() && self.endpoints.is_empty() && self.link_pins.is_empty()
    }
}

/// What netlink shows of a pod's host side: read for the leases whose
/// entry is missing or stale (`needs_host_side`), enough to re-derive it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostSide {
    pub ifindex: u32,
    pub host_mac: [u8; 6],
    /// The host veth resolves neighbours (veth); netkit's L3 mode does not.
    pub arp: bool,
    /// The `/32` route to the pod's address over this device.
    pub route_to_pod: bool,
    /// The pod's MAC, from the permanent neighbour entry of its address on
    /// this device (none on a device without ARP).
    pub pod_mac: Option<[u8; 6]>,
}

impl HostSide {
    /// The entry ADD would have written, if ADD got as far as the host side.
    fn endpoint(&self) -> Option<EndpointInfo> {
        if !self.route_to_pod {
            return None;
        }
        let pod_mac = match (self.arp, self.pod_mac) {
            (true, Some(mac)) => mac,
            (true, None) => return None,
            // netkit L3: no MACs; ADD wrote the pod side's, which is zero.
            (false, _) => [0; 6],
        };
        Some(EndpointInfo { host_ifindex: self.ifindex, pod_mac, host_mac: self.host_mac })
    }
}

/// Why an attachment is torn down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gone {
    /// The host veth is gone: so is the pod's namespace.
    Pod,
    /// The pod's end is still on the node under its temporary name.
    AddDiedBeforeMove,
    /// The devices are there but ADD never set up the host side.
    AddDiedBeforeHostSide,
}

/// What happens to one lease (the table in the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    InSync,
    /// Young: an ADD may still be running. Nothing is touched.
    AddInProgress,
    /// The host side could not be read: ask again at the next tick.
    Unknown,
    Repair(EndpointInfo),
    TearDown(Gone),
}

/// The facts about one lease (IPv4's, or on an IPv6-only node IPv6's).
pub struct LeaseFacts<'a, A = Ipv4Addr> {
    pub lease: &'a Lease<A>,
    pub entry: Option<&'a EndpointInfo>,
    /// The host veth's index, if it exists.
    pub host_ifindex: Option<u32>,
    pub temp_peer_on_node: bool,
    /// `None`: not read (or unreadable).
    pub host_side: Option<&'a HostSide>,
    pub grace: Duration,
}

pub fn decide<A>(f: &LeaseFacts<A>) -> Verdict {
    let in_sync = matches!((f.entry, f.host_ifindex), (Some(ep), Some(i)) if ep.host_ifindex == i);
    if in_sync {
        return Verdict::InSync;
    }
    if f.lease.age < f.grace {
        return Verdict::AddInProgress;
    }
    if f.host_ifindex.is_none() {
        return Verdict::TearDown(Gone::Pod);
    }
    if f.temp_peer_on_node {
        return Verdict::TearDown(Gone::AddDiedBeforeMove);
    }
    match f.host_side {
        None => Verdict::Unknown,
        Some(side) => match side.endpoint() {
            Some(ep) => Verdict::Repair(ep),
            None => Verdict::TearDown(Gone::AddDiedBeforeHostSide),
        },
    }
}

/// Leases whose host side `decide` may need: the host veth is there and the
/// entry is missing or points elsewhere.
pub fn needs_host_side<A: Ord>(
    lease: &Lease<A>,
    endpoints: &BTreeMap<A, EndpointInfo>,
    links: &BTreeMap<String, u32>,
) -> bool {
    let host = pod_names::host_veth(&lease.container_id, &lease.ifname);
    match links.get(&host) {
        Some(i) => endpoints.get(&lease.ip).map(|ep| ep.host_ifindex) != Some(*i),
        None => false,
    }
}

pub struct Facts<'a> {
    pub leases: &'a [Lease],
    pub endpoints: &'a BTreeMap<Ipv4Addr, EndpointInfo>,
    /// Interfaces named in pods' `from_pod`/`from_pod_netkit` link pins.
    pub pinned_ifnames: &'a [String],
    /// Links in the node namespace: name → ifindex.
    pub links: &'a BTreeMap<String, u32>,
    /// The host side of the leases `needs_host_side` names, by address.
    pub host_sides: &'a BTreeMap<Ipv4Addr, HostSide>,
    pub grace: Duration,
}

pub fn plan(f: &Facts) -> SweepPlan {
    let live_ifindexes: BTreeSet<u32> = f.links.values().copied().collect();
    let mut out = SweepPlan::default();
    let mut covered: BTreeSet<Ipv4Addr> = BTreeSet::new();
    for lease in f.leases {
        let host = pod_names::host_veth(&lease.container_id, &lease.ifname);
        let peer = pod_names::temp_peer(&lease.container_id, &lease.ifname);
        let verdict = decide(&LeaseFacts {
            lease,
            entry: f.endpoints.get(&lease.ip),
            host_ifindex: f.links.get(&host).copied(),
            temp_peer_on_node: f.links.contains_key(&peer),
            host_side: f.host_sides.get(&lease.ip),
            grace: f.grace,
        });
        match verdict {
            Verdict::InSync | Verdict::AddInProgress | Verdict::Unknown => {}
            Verdict::Repair(ep) => {
                out.repairs.push((lease.ip, ep));
                covered.insert(lease.ip);
            }
            Verdict::TearDown(_) => {
                out.attachments.push((lease.container_id.clone(), lease.ifname.clone()));
                covered.insert(lease.ip);
            }
        }
    }
    for (ip, ep) in f.endpoints {
        if !live_ifindexes.contains(&ep.host_ifindex) && !covered.contains(ip) {
            out.endpoints.push(*ip);
        }
    }
    for ifname in f.pinned_ifnames {
        if !f.links.contains_key(ifname) {
            out.link_pins.push(ifname.clone());
        }
    }
    out
}

/// What the sweep reads from the node and does to it. `NodeSweep` is the
/// real node (leases on disk, pinned maps, netlink); the tests fake it.
#[allow(async_fn_in_trait)] // awaited in place on the agent's one thread, never spawned
pub trait SweepTarget {
    fn leases(&self) -> Result<Vec<Lease>>;
    fn endpoints(&self) -> Result<BTreeMap<Ipv4Addr, EndpointInfo>>;
    /// Interfaces named in pods' `from_pod`/`from_pod_netkit` link pins.
    fn pinned_pod_ifnames(&self) -> Result<Vec<String>>;
    /// Links in the node namespace: name → ifindex.
    async fn links(&self) -> Result<BTreeMap<String, u32>>;
    /// What netlink shows of `lease`'s host side (`None`: its host veth is
    /// gone by now).
    async fn host_side(&self, lease: &Lease) -> Result<Option<HostSide>>;
    fn insert_endpoint(&mut self, ip: Ipv4Addr, ep: EndpointInfo) -> Result<()>;
    /// Tear one attachment down; the problems met (empty: clean).
    async fn teardown(&mut self, container_id: &str, ifname: &str) -> Vec<String>;
    fn remove_endpoint(&mut self, ip: Ipv4Addr) -> Result<()>;
    fn unpin_pod_link(&mut self, ifname: &str) -> Result<()>;
}

/// Gather facts, plan, apply. Order matters: ADD creates the veth before
/// the endpoint entry and the link pin, so reading entries and pins
/// *before* the links means a missing link is really gone, never "not made
/// yet". Repairs come first; a teardown that meets problems is logged and
/// the rest goes on.
pub async fn sweep(target: &mut impl SweepTarget, grace: Duration) -> Result<SweepPlan> {
    let leases = target.leases()?;
    let endpoints = target.endpoints()?;
    let pinned_ifnames = target.pinned_pod_ifnames()?;
    let links = target.links().await?;
    let mut host_sides = BTreeMap::new();
    for lease in leases.iter().filter(|l| needs_host_side(l, &endpoints, &links)) {
        match target.host_side(lease).await {
            Ok(Some(side)) => {
                host_sides.insert(lease.ip, side);
            }
            Ok(None) => {}
            Err(e) => warn!(ip = %lease.ip, error = %format!("{e:#}"), "cannot read the pod's host side; next tick"),
        }
    }
    let plan = plan(&Facts {
        leases: &leases,
        endpoints: &endpoints,
        pinned_ifnames: &pinned_ifnames,
        links: &links,
        host_sides: &host_sides,
        grace,
    });
    for (ip, ep) in &plan.repairs {
        match target.insert_endpoint(*ip, *ep) {
            Ok(()) => {
                info!(%ip, host_ifindex = ep.host_ifindex, "endpoint entry re-derived for a pod that is still there")
            }
            Err(e) => warn!(%ip, error = %format!("{e:#}"), "endpoint repair failed; next tick"),
        }
    }
    for (cid, ifname) in &plan.attachments {
        let errors = target.teardown(cid, ifname).await;
        if errors.is_empty() {
            info!(container = %cid, ifname = %ifname, "released attachment of a pod that is gone");
        } else {
            warn!(container = %cid, ifname = %ifname, errors = %errors.join("; "), "sweep incomplete");
        }
    }
    for ip in &plan.endpoints {
        target.remove_endpoint(*ip)?;
        info!(%ip, "removed endpoint whose interface is gone");
    }
    for ifname in &plan.link_pins {
        target.unpin_pod_link(ifname)?;
    }
    Ok(plan)
}

/// The real node. Holds the IPAM lock for its whole life, so no ADD
/// allocates while addresses are being released.
pub struct NodeSweep<'a> {
    netlink: &'a Netlink,
    pins: &'a PinDir,
    store: LeaseStore,
    /// The IPv6 leases, on a dual-stack node (locked too).
    store6: Option<LeaseStore6>,
    /// The health endpoint's IPv6 address: the agent's own, no lease.
    health6: Option<std::net::Ipv6Addr>,
    endpoints: Endpoints,
}

impl<'a> NodeSweep<'a> {
    /// `None` when a CNI call holds the IPAM lock: the agent never waits for
    /// it (its one runtime thread serves the health endpoint and the
    /// reconcile loop); the sweep simply runs at its next tick.
    pub fn open(
        netlink: &'a Netlink,
        pins: &'a PinDir,
        data_dir: &Path,
        pod_cidr: Ipv4Network,
        pod_cidr6: Option<Ipv6Network>,
    ) -> Result<Option<Self>> {
        let Some(store) = LeaseStore::try_lock(data_dir, pod_cidr)? else {
            return Ok(None);
        };
        let store6 = match pod_cidr6 {
            Some(cidr) => match LeaseStore6::try_lock(data_dir, cidr)? {
                Some(s) => Some(s),
                None => return Ok(None),
            },
            None => None,
        };
        let endpoints = Endpoints::open(pins)?;
        let health6 = pod_cidr6.map(crate::health_endpoint::health_ip6);
        Ok(Some(Self { netlink, pins, store, store6, health6, endpoints }))
    }

    /// Re-derive `ENDPOINTS6` entries from the IPv4 ones (`repairs6`); the
    /// addresses written.
    pub fn repair_endpoints6(&self, grace: Duration) -> Result<Vec<std::net::Ipv6Addr>> {
        let Some(store6) = &self.store6 else { return Ok(Vec::new()) };
        let _lock = PinLock::shared(self.pins)?;
        let mut endpoints6 = Endpoints6::open(self.pins)?;
        let repairs =
            repairs6(&self.store.leases()?, &store6.leases()?, &self.endpoints.all()?, &endpoints6.all()?, grace);
        for (ip6, ep) in &repairs {
            endpoints6.insert(*ip6, *ep)?;
        }
        Ok(repairs.into_iter().map(|(ip6, _)| ip6).collect())
    }

    /// Remove the `ENDPOINTS6` entries `stale6` names; the addresses
    /// removed. Run after the repairs (which only write entries of leased
    /// addresses on live links).
    pub async fn remove_stale_endpoints6(&self) -> Result<Vec<std::net::Ipv6Addr>> {
        let Some(store6) = &self.store6 else { return Ok(Vec::new()) };
        let mut endpoints6 = Endpoints6::open(self.pins)?;
        let live: BTreeSet<u32> = self.links().await?.into_values().collect();
        let stale = stale6(&store6.leases()?, &endpoints6.all()?, &live, self.health6);
        for ip in &stale {
            endpoints6.remove(*ip)?;
        }
        Ok(stale)
    }

    /// Release the IPv6 leases older than `grace` whose attachment holds
    /// no IPv4 lease (`orphans6`); the addresses released.
    pub fn release_orphans6(&self, grace: Duration) -> Result<Vec<std::net::Ipv6Addr>> {
        let Some(store6) = &self.store6 else { return Ok(Vec::new()) };
        let orphans = orphans6(&self.store.leases()?, &store6.leases()?, grace);
        for ip in &orphans {
            store6.release_ip(*ip)?;
        }
        Ok(orphans)
    }
}

/// `ENDPOINTS6` entries to (re)write: a pod's IPv6 entry is its IPv4
/// entry's value (the same interface), so for every IPv6 lease whose
/// attachment's IPv4 address has an entry, the IPv6 entry must equal it
/// (pure). Run after the IPv4 repairs; a pod whose IPv4 entry is missing
/// is the IPv4 sweep's to decide. Leases younger than `grace` are left
/// alone, as in `decide`: their ADD may still be writing (or rolling back)
/// its entries.
pub fn repairs6(
    leases4: &[Lease],
    leases6: &[Lease<std::net::Ipv6Addr>],
    endpoints4: &BTreeMap<Ipv4Addr, EndpointInfo>,
    endpoints6: &BTreeMap<std::net::Ipv6Addr, EndpointInfo>,
    grace: Duration,
) -> Vec<(std::net::Ipv6Addr, EndpointInfo)> {
    let ip4_of: BTreeMap<(&str, &str), Ipv4Addr> =
        leases4.iter().map(|l| ((l.container_id.as_str(), l.ifname.as_str()), l.ip)).collect();
    leases6
        .iter()
        .filter(|l6| l6.age >= grace)
        .filter_map(|l6| {
            let ip4 = ip4_of.get(&(l6.container_id.as_str(), l6.ifname.as_str()))?;
            let want = endpoints4.get(ip4)?;
            (endpoints6.get(&l6.ip) != Some(want)).then_some((l6.ip, *want))
        })
        .collect()
}

/// `ENDPOINTS6` entries no pod stands behind (pure): their host
/// interface is gone, or no IPv6 lease holds their address — what a DEL
/// that died between its steps, or a lost release, leaves. Such an entry
/// would let whichever pod's interface later gets that index send from the
/// address. ADD leases the address before it writes the entry on the new
/// interface, so an ADD in progress never matches.
/// `health6`, the health endpoint's address, is held by the agent, not a
/// lease: it goes only with its interface.
pub fn stale6(
    leases6: &[Lease<std::net::Ipv6Addr>],
    endpoints6: &BTreeMap<std::net::Ipv6Addr, EndpointInfo>,
    live_ifindexes: &BTreeSet<u32>,
    health6: Option<std::net::Ipv6Addr>,
) -> Vec<std::net::Ipv6Addr> {
    let leased: BTreeSet<std::net::Ipv6Addr> = leases6.iter().map(|l| l.ip).chain(health6).collect();
    endpoints6
        .iter()
        .filter(|(ip, ep)| !live_ifindexes.contains(&ep.host_ifindex) || !leased.contains(ip))
        .map(|(ip, _)| *ip)
        .collect()
}

/// The IPv6 leases older than `grace` whose attachment (container id,
/// ifname) holds no IPv4 lease: ADD allocates IPv4 first and DEL releases
/// both, so such a lease is what a failed release left (pure).
pub fn orphans6(leases4: &[Lease], leases6: &[Lease<std::net::Ipv6Addr>], grace: Duration) -> Vec<std::net::Ipv6Addr> {
    let owners: BTreeSet<(&str, &str)> = leases4.iter().map(|l| (l.container_id.as_str(), l.ifname.as_str())).collect();
    leases6
        .iter()
        .filter(|l| l.age >= grace && !owners.contains(&(l.container_id.as_str(), l.ifname.as_str())))
        .map(|l| l.ip)
        .collect()
}

/// What an IPv6-only node's sweep does to its attachments (pure): the
/// IPv6 leases lead there, as the IPv4 ones do elsewhere, each decided by
/// the same table (`decide`, the module docs): an entry missing or stale
/// on a complete pod is re-derived from its host side (the `/128` route and
/// the pod's permanent neighbour on its host veth); a pod that is gone, or
/// whose ADD died before the move or before its host side, is torn down.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan6 {
    pub repairs: Vec<(std::net::Ipv6Addr, EndpointInfo)>,
    /// (container id, ifname) to tear down.
    pub attachments: Vec<(String, String)>,
}

pub fn plan_ipv6_only(
    leases6: &[Lease<std::net::Ipv6Addr>],
    endpoints6: &BTreeMap<std::net::Ipv6Addr, EndpointInfo>,
    links: &BTreeMap<String, u32>,
    host_sides6: &BTreeMap<std::net::Ipv6Addr, HostSide>,
    grace: Duration,
) -> Plan6 {
    let mut out = Plan6::default();
    for lease in leases6 {
        let verdict = decide(&LeaseFacts {
            lease,
            entry: endpoints6.get(&lease.ip),
            host_ifindex: links.get(&pod_names::host_veth(&lease.container_id, &lease.ifname)).copied(),
            temp_peer_on_node: links.contains_key(&pod_names::temp_peer(&lease.container_id, &lease.ifname)),
            host_side: host_sides6.get(&lease.ip),
            grace,
        });
        match verdict {
            Verdict::InSync | Verdict::AddInProgress | Verdict::Unknown => {}
            Verdict::Repair(ep) => out.repairs.push((lease.ip, ep)),
            Verdict::TearDown(_) => out.attachments.push((lease.container_id.clone(), lease.ifname.clone())),
        }
    }
    out
}

/// The host side of an IPv6 lease's pod (`NodeSweep::host_side`'s twin).
async fn host_side6(netlink: &Netlink, lease: &Lease<std::net::Ipv6Addr>) -> Result<Option<HostSide>> {
    let name = pod_names::host_veth(&lease.container_id, &lease.ifname);
    let Some(link) = netlink.link_by_name(&name).await? else {
        return Ok(None);
    };
    let pod_route = Ipv6Network::new(lease.ip, 128)?;
    let route_to_pod = netlink.main_routes6(None).await?.iter().any(|r| r.dst == pod_route && r.oif == link.index);
    let pod_mac = if link.arp { netlink.permanent_neighbour6(link.index, lease.ip).await? } else { None };
    Ok(Some(HostSide { ifindex: link.index, host_mac: link.mac, arp: link.arp, route_to_pod, pod_mac }))
}

/// An IPv6-only node's sweep (`plan_ipv6_only`): lost `ENDPOINTS6`
/// entries of complete pods re-derived, attachments whose pod is gone torn
/// down, entries no pod stands behind removed (`stale6`), and link pins of
/// interfaces that are gone unpinned. Pins and entries are
/// read before the links (ADD makes the device first). Skipped for this
/// tick when a CNI call holds the IPAM lock.
pub async fn sweep_ipv6_only(
    netlink: &Netlink,
    pins: &PinDir,
    data_dir: &Path,
    pod_cidr6: Ipv6Network,
    grace: Duration,
) {
    let store6 = match LeaseStore6::try_lock(data_dir, pod_cidr6) {
        Ok(Some(s)) => s,
        Ok(None) => return info!("a CNI call holds the IPAM lock; sweeping at the next tick"),
        Err(e) => return warn!(error = %format!("{e:#}"), "sweep failed; will retry"),
    };
    let done: Result<()> = async {
        let leases6 = store6.leases()?;
        let pinned: Vec<String> = std::fs::read_dir(pins.links_dir())?
            .filter_map(|e| e.ok())
            .filter_map(|e| PodDevice::of_link_pin(&e.file_name().to_string_lossy()).map(|(i, _)| i.to_string()))
            .collect();
        let mut endpoints6 = Endpoints6::open(pins)?;
        let entries6 = endpoints6.all()?;
        let links: BTreeMap<String, u32> = netlink.links().await?.into_iter().map(|l| (l.name, l.index)).collect();
        let mut host_sides6 = BTreeMap::new();
        for lease in leases6.iter().filter(|l| needs_host_side(l, &entries6, &links)) {
            match host_side6(netlink, lease).await {
                Ok(Some(side)) => {
                    host_sides6.insert(lease.ip, side);
                }
                Ok(None) => {}
                Err(e) => warn!(ip = %lease.ip, error = %format!("{e:#}"), "host side unreadable; next tick"),
            }
        }
        let plan = plan_ipv6_only(&leases6, &entries6, &links, &host_sides6, grace);
        for (ip, ep) in &plan.repairs {
            match endpoints6.insert(*ip, *ep) {
                Ok(()) => info!(%ip, ifindex = ep.host_ifindex, "IPv6 endpoint entry re-derived for a live pod"),
                Err(e) => warn!(%ip, error = %format!("{e:#}"), "IPv6 endpoint repair failed; next tick"),
            }
        }
        for (cid, ifname) in plan.attachments {
            let errors = teardown::teardown(netlink, pins, None, Some(&store6), &cid, &ifname).await;
            if errors.is_empty() {
                info!(container = %cid, ifname = %ifname, "released attachment of a pod that is gone");
            } else {
                warn!(container = %cid, ifname = %ifname, errors = %errors.join("; "), "sweep incomplete");
            }
        }
        let live: BTreeSet<u32> = links.values().copied().collect();
        let health6 = Some(crate::health_endpoint::health_ip6(pod_cidr6));
        for ip in stale6(&store6.leases()?, &entries6, &live, health6) {
            endpoints6.remove(ip)?;
            info!(%ip, "IPv6 endpoint entry removed: no pod behind it");
        }
        for ifname in pinned.iter().filter(|i| !links.contains_key(*i)) {
            plumbing::detach_pod_programs(pins, ifname)?;
        }
        Ok(())
    }
    .await;
    if let Err(e) = done {
        warn!(error = %format!("{e:#}"), "sweep failed; will retry");
    }
}

impl SweepTarget for NodeSweep<'_> {
    fn leases(&self) -> Result<Vec<Lease>> {
        self.store.leases()
    }
    fn endpoints(&self) -> Result<BTreeMap<Ipv4Addr, EndpointInfo>> {
        self.endpoints.all()
    }
    fn pinned_pod_ifnames(&self) -> Result<Vec<String>> {
        Ok(std::fs::read_dir(self.pins.links_dir())?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                PodDevice::of_link_pin(&e.file_name().to_string_lossy()).map(|(ifname, _)| ifname.to_string())
            })
            .collect())
    }
    async fn links(&self) -> Result<BTreeMap<String, u32>> {
        Ok(self.netlink.links().await?.into_iter().map(|l| (l.name, l.index)).collect())
    }
    async fn host_side(&self, lease: &Lease) -> Result<Option<HostSide>> {
        let name = pod_names::host_veth(&lease.container_id, &lease.ifname);
        let Some(link) = self.netlink.link_by_name(&name).await? else {
            return Ok(None);
        };
        let pod_route = Ipv4Network::new(lease.ip, 32)?;
        let route_to_pod =
            self.netlink.main_routes(None).await?.iter().any(|r| r.dst == pod_route && r.oif == link.index);
        let pod_mac = if link.arp { self.netlink.permanent_neighbour(link.index, lease.ip).await? } else { None };
        Ok(Some(HostSide { ifindex: link.index, host_mac: link.mac, arp: link.arp, route_to_pod, pod_mac }))
    }
    fn insert_endpoint(&mut self, ip: Ipv4Addr, ep: EndpointInfo) -> Result<()> {
        self.endpoints.insert(ip, ep)
    }
    async fn teardown(&mut self, container_id: &str, ifname: &str) -> Vec<String> {
        let store6 = self.store6.as_ref().map(|s| s as &dyn Leases<Ipv6Network>);
        teardown::teardown(self.netlink, self.pins, Some(&self.store), store6, container_id, ifname).await
    }
    fn remove_endpoint(&mut self, ip: Ipv4Addr) -> Result<()> {
        self.endpoints.remove(ip)
    }
    fn unpin_pod_link(&mut self, ifname: &str) -> Result<()> {
        plumbing::detach_pod_programs(self.pins, ifname)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(ip: &str, cid: &str, age_s: u64) -> Lease {
        Lease {
            ip: ip.parse().unwrap(),
            container_id: cid.into(),
            ifname: "eth0".into(),
            age: Duration::from_secs(age_s),
        }
    }

    fn ep(ifindex: u32) -> EndpointInfo {
        EndpointInfo { host_ifindex: ifindex, pod_mac: [0; 6], host_mac: [0; 6] }
    }

    const POD_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const HOST_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];

    fn veth_side(ifindex: u32) -> HostSide {
        HostSide { ifindex, host_mac: HOST_MAC, arp: true, route_to_pod: true, pod_mac: Some(POD_MAC) }
    }

    #[test]
    fn orphans6_are_ipv6_leases_without_an_ipv4_twin_past_the_grace() {
        let grace = Duration::from_secs(30);
        let l6 = |ip: &str, cid: &str, age_s: u64| Lease::<std::net::Ipv6Addr> {
            ip: ip.parse().unwrap(),
            container_id: cid.into(),
            ifname: "eth0".into(),
            age: Duration::from_secs(age_s),
        };
        let leases4 = [lease("10.0.0.2", "both", 100)];
        let leases6 = [l6("fd00::2", "both", 100), l6("fd00::3", "alone", 100), l6("fd00::4", "adding", 1)];
        assert_eq!(orphans6(&leases4, &leases6, grace), ["fd00::3".parse::<std::net::Ipv6Addr>().unwrap()]);
        // Another ifname of the same container is another attachment.
        let other_if = [Lease { ifname: "net1".into(), ..lease("10.0.0.2", "alone", 100) }];
        assert_eq!(orphans6(&other_if, &leases6[1..2], grace).len(), 1);
    }

    #[test]
    fn an_ipv6_only_sweep_repairs_lost_entries_of_complete_pods_and_tears_down_what_is_gone() {
        let grace = Duration::from_secs(5);
        let ip = |k: u16| std::net::Ipv6Addr::new(0xfd00, 0x244, 0, 1, 0, 0, 0, k);
        let l6 = |k: u16, cid: &str, age_s: u64| Lease {
            ip: ip(k),
            container_id: cid.into(),
            ifname: "eth0".into(),
            age: Duration::from_secs(age_s),
        };
        let leases = [
            l6(2, "alive", 60),  // entry in sync: nothing
            l6(3, "gone", 60),   // host end gone: tear down
            l6(4, "stuck", 60),  // temporary peer never moved: tear down
            l6(5, "young", 1),   // entry missing, ADD may run: nothing
            l6(6, "lost", 60),   // complete, entry lost: repair
            l6(7, "stale", 60),  // complete, entry on another interface: repair
            l6(8, "unread", 60), // entry lost, host side unreadable: nothing yet
            l6(9, "half", 60),   // entry lost, no host side set up: tear down
        ];
        let mut links = BTreeMap::new();
        for (cid, index) in
            [("alive", 7), ("stuck", 8), ("young", 9), ("lost", 10), ("stale", 11), ("unread", 12), ("half", 13)]
        {
            links.insert(pod_names::host_veth(cid, "eth0"), index);
        }
        links.insert(pod_names::temp_peer("stuck", "eth0"), 20);
        let endpoints6 = BTreeMap::from([(ip(2), ep(7)), (ip(7), ep(99))]);
        let wanted: Vec<std::net::Ipv6Addr> =
            leases.iter().filter(|l| needs_host_side(l, &endpoints6, &links)).map(|l| l.ip).collect();
        assert_eq!(wanted, [ip(4), ip(5), ip(6), ip(7), ip(8), ip(9)], "read only where the entry is not in sync");
        let no_route = HostSide { route_to_pod: false, ..veth_side(13) };
        let host_sides6 = BTreeMap::from([(ip(6), veth_side(10)), (ip(7), veth_side(11)), (ip(9), no_route)]);
        let plan = plan_ipv6_only(&leases, &endpoints6, &links, &host_sides6, grace);
        let repaired = |i: u32| EndpointInfo { host_ifindex: i, pod_mac: POD_MAC, host_mac: HOST_MAC };
        assert_eq!(plan.repairs, [(ip(6), repaired(10)), (ip(7), repaired(11))]);
        let torn: Vec<&str> = plan.attachments.iter().map(|(c, _)| c.as_str()).collect();
        assert_eq!(torn, ["gone", "stuck", "half"]);
    }

    #[test]
    fn stale6_entries_have_no_live_interface_or_no_lease() {
        let l6 = |ip: &str| Lease::<std::net::Ipv6Addr> {
            ip: ip.parse().unwrap(),
            container_id: "c".into(),
            ifname: "eth0".into(),
            age: Duration::from_secs(1),
        };
        let a = |s: &str| s.parse::<std::net::Ipv6Addr>().unwrap();
        let leases6 = [l6("fd00::2"), l6("fd00::3")];
        let endpoints6: BTreeMap<std::net::Ipv6Addr, EndpointInfo> = [
            (a("fd00::2"), ep(10)), // leased, its link up: a pod (even one just added)
            (a("fd00::3"), ep(11)), // leased, its link gone
            (a("fd00::4"), ep(10)), // no lease, on a live link (another pod's)
        ]
        .into();
        let live: BTreeSet<u32> = [10].into();
        assert_eq!(stale6(&leases6, &endpoints6, &live, None), [a("fd00::3"), a("fd00::4")]);
        assert!(stale6(&leases6, &endpoints6, &[10, 11].into(), None).len() == 1, "only the unleased one");
        // The health endpoint's address has no lease: kept while its link is.
        assert_eq!(stale6(&leases6, &endpoints6, &live, Some(a("fd00::4"))), [a("fd00::3")]);
        let gone = stale6(&leases6, &endpoints6, &[10].into(), Some(a("fd00::3")));
        assert_eq!(gone, [a("fd00::3"), a("fd00::4")], "its link gone, it goes");
    }

    #[test]
    fn repairs6_copy_the_ipv4_entry_of_the_same_attachment() {
        let l6 = |ip: &str, cid: &str| Lease::<std::net::Ipv6Addr> {
            ip: ip.parse().unwrap(),
            container_id: cid.into(),
            ifname: "eth0".into(),
            age: Duration::from_secs(100),
        };
        let leases4 = [lease("10.0.0.2", "a", 100), lease("10.0.0.3", "b", 100), lease("10.0.0.4", "c", 100)];
        let leases6 = [l6("fd00::2", "a"), l6("fd00::3", "b"), l6("fd00::4", "c"), l6("fd00::5", "d")];
        let endpoints4: BTreeMap<Ipv4Addr, EndpointInfo> =
            [("10.0.0.2".parse().unwrap(), ep(10)), ("10.0.0.3".parse().unwrap(), ep(11))].into();
        // a: in sync; b: missing; c: no IPv4 entry (the IPv4 sweep's call);
        // d: no IPv4 lease.
        let endpoints6: BTreeMap<std::net::Ipv6Addr, EndpointInfo> =
            [("fd00::2".parse().unwrap(), ep(10)), ("fd00::4".parse().unwrap(), ep(99))].into();
        let grace = Duration::from_secs(30);
        assert_eq!(
            repairs6(&leases4, &leases6, &endpoints4, &endpoints6, grace),
            [("fd00::3".parse().unwrap(), ep(11))]
        );
        // A young lease: its ADD may be running.
        let young = [Lease { age: Duration::from_secs(1), ..leases6[1].clone() }];
        assert!(repairs6(&leases4, &young, &endpoints4, &endpoints6, grace).is_empty());
        // A stale entry (another interface) is rewritten.
        let stale: BTreeMap<std::net::Ipv6Addr, EndpointInfo> =
            [("fd00::2".parse().unwrap(), ep(77)), ("fd00::3".parse().unwrap(), ep(11))].into();
        assert_eq!(repairs6(&leases4, &leases6, &endpoints4, &stale, grace), [("fd00::2".parse().unwrap(), ep(10))]);
    }

    /// why, lease, entry, host veth index, temp peer on the node, host side, verdict.
    type Row<'a> = (&'a str, &'a Lease, Option<EndpointInfo>, Option<u32>, bool, Option<&'a HostSide>, Verdict);

    /// The table of the module docs, row by row.
    #[test]
    fn decide_table() {
        let grace = Duration::from_secs(30);
        let (old, young) = (lease("10.0.0.2", "p", 100), lease("10.0.0.2", "p", 1));
        let repaired = EndpointInfo { host_ifindex: 10, pod_mac: POD_MAC, host_mac: HOST_MAC };
        let netkit = HostSide { ifindex: 10, host_mac: [0; 6], arp: false, route_to_pod: true, pod_mac: None };
        let no_route = HostSide { route_to_pod: false, ..veth_side(10) };
        let no_neighbour = HostSide { pod_mac: None, ..veth_side(10) };
        let side = veth_side(10);
        #[rustfmt::skip]
        let rows: Vec<Row> = vec![
            ("entry points at the host veth",      &old,   Some(ep(10)), Some(10), false, None,          Verdict::InSync),
            ("young and in sync",                  &young, Some(ep(10)), Some(10), false, None,          Verdict::InSync),
            ("young, entry missing: ADD running",  &young, None,         Some(10), false, Some(&side),   Verdict::AddInProgress),
            ("young, veth gone: ADD running",      &young, None,         None,     false, None,          Verdict::AddInProgress),
            ("veth gone: the pod is gone",         &old,   Some(ep(10)), None,     false, None,          Verdict::TearDown(Gone::Pod)),
            ("veth gone, no entry",                &old,   None,         None,     false, None,          Verdict::TearDown(Gone::Pod)),
            ("peer never left the node",           &old,   None,         Some(10), true,  Some(&side),   Verdict::TearDown(Gone::AddDiedBeforeMove)),
            ("entry missing, pod complete: repair", &old,  None,         Some(10), false, Some(&side),   Verdict::Repair(repaired)),
            ("entry stale, pod complete: repair",  &old,   Some(ep(99)), Some(10), false, Some(&side),   Verdict::Repair(repaired)),
            ("netkit: no MACs needed",             &old,   None,         Some(10), false, Some(&netkit), Verdict::Repair(EndpointInfo { host_ifindex: 10, pod_mac: [0; 6], host_mac: [0; 6] })),
            ("no route to the pod: ADD died",      &old,   None,         Some(10), false, Some(&no_route), Verdict::TearDown(Gone::AddDiedBeforeHostSide)),
            ("veth without the pod's MAC: died",   &old,   None,         Some(10), false, Some(&no_neighbour), Verdict::TearDown(Gone::AddDiedBeforeHostSide)),
            ("host side unreadable: ask again",    &old,   None,         Some(10), false, None,          Verdict::Unknown),
        ];
        for (why, lease, entry, host_ifindex, temp_peer_on_node, host_side, want) in rows {
            let got =
                decide(&LeaseFacts { lease, entry: entry.as_ref(), host_ifindex, temp_peer_on_node, host_side, grace });
            assert_eq!(got, want, "{why}");
        }
    }

    #[test]
    fn host_side_is_read_only_where_the_entry_is_missing_or_stale() {
        let links: BTreeMap<String, u32> =
            [(pod_names::host_veth("a", "eth0"), 10), (pod_names::host_veth("b", "eth0"), 11)].into();
        let endpoints: BTreeMap<Ipv4Addr, EndpointInfo> =
            [("10.0.0.1".parse().unwrap(), ep(10)), ("10.0.0.2".parse().unwrap(), ep(99))].into();
        assert!(!needs_host_side(&lease("10.0.0.1", "a", 100), &endpoints, &links), "in sync");
        assert!(needs_host_side(&lease("10.0.0.2", "b", 100), &endpoints, &links), "stale entry");
        assert!(needs_host_side(&lease("10.0.0.3", "a", 100), &endpoints, &links), "no entry");
        assert!(!needs_host_side(&lease("10.0.0.4", "gone", 100), &endpoints, &links), "no veth: nothing to read");
    }

    #[test]
    fn plan_repairs_tears_down_and_cleans() {
        let live = pod_names::host_veth("live", "eth0");
        let crashed = pod_names::temp_peer("crashed", "eth0");
        let unfinished = pod_names::host_veth("unfinished", "eth0");
        let lost = pod_names::host_veth("lost", "eth0");
        let links: BTreeMap<String, u32> = [
            (live.clone(), 10),
            (crashed.clone(), 11),
            (unfinished.clone(), 12),
            (lost.clone(), 13),
            ("eth0".to_string(), 2),
        ]
        .into();
        let leases = vec![
            lease("10.0.0.2", "live", 100),       // pod alive: keep
            lease("10.0.0.3", "gone", 100),       // veth gone: sweep
            lease("10.0.0.4", "young", 0),        // veth gone but ADD may be running: keep
            lease("10.0.0.5", "crashed", 100),    // ADD died before moving the peer: sweep
            lease("10.0.0.6", "unfinished", 100), // veth there, host side never set up: sweep
            lease("10.0.0.7", "lost", 100),       // pod complete, entry lost: repair
        ];
        let endpoints: BTreeMap<Ipv4Addr, EndpointInfo> = [
            ("10.0.0.2".parse().unwrap(), ep(10)),
            ("10.0.0.3".parse().unwrap(), ep(99)), // covered by the lease teardown
            ("10.0.0.9".parse().unwrap(), ep(98)), // orphan entry
        ]
        .into();
        let host_sides: BTreeMap<Ipv4Addr, HostSide> = [
            ("10.0.0.6".parse().unwrap(), HostSide { route_to_pod: false, ..veth_side(12) }),
            ("10.0.0.7".parse().unwrap(), veth_side(13)),
        ]
        .into();
        let pinned = vec![live.clone(), "slcdeadbeef000".to_string()];
        let p = plan(&Facts {
            leases: &leases,
            endpoints: &endpoints,
            pinned_ifnames: &pinned,
            links: &links,
            host_sides: &host_sides,
            grace: Duration::from_secs(30),
        });
        assert_eq!(
            p.repairs,
            vec![(
                "10.0.0.7".parse().unwrap(),
                EndpointInfo { host_ifindex: 13, pod_mac: POD_MAC, host_mac: HOST_MAC }
            )]
        );
        assert_eq!(
            p.attachments,
            vec![
                ("gone".into(), "eth0".into()),
                ("crashed".into(), "eth0".into()),
                ("unfinished".into(), "eth0".into())
            ]
        );
        assert_eq!(p.endpoints, vec!["10.0.0.9".parse::<Ipv4Addr>().unwrap()]);
        assert_eq!(p.link_pins, vec!["slcdeadbeef000".to_string()]);
    }

    /// A recreated `ENDPOINTS` pin: every entry gone, every pod still there.
    /// The old rule ("no entry: the ADD never finished") tore down every
    /// pod on the node; now each entry is re-derived and nothing is torn down.
    #[test]
    fn an_emptied_endpoint_map_is_repaired_not_a_node_wide_teardown() {
        let leases: Vec<Lease> =
            (0..20).map(|i| lease(&format!("10.0.0.{}", i + 2), &format!("pod{i}"), 600)).collect();
        let links: BTreeMap<String, u32> = leases
            .iter()
            .enumerate()
            .map(|(i, l)| (pod_names::host_veth(&l.container_id, "eth0"), 10 + i as u32))
            .collect();
        let host_sides: BTreeMap<Ipv4Addr, HostSide> =
            leases.iter().enumerate().map(|(i, l)| (l.ip, veth_side(10 + i as u32))).collect();
        let p = plan(&Facts {
            leases: &leases,
            endpoints: &BTreeMap::new(),
            pinned_ifnames: &[],
            links: &links,
            host_sides: &host_sides,
            grace: Duration::from_secs(30),
        });
        assert!(p.attachments.is_empty(), "{:?}", p.attachments);
        assert_eq!(p.repairs.len(), 20);
        for (i, (ip, entry)) in p.repairs.iter().enumerate() {
            assert_eq!(*ip, leases[i].ip);
            assert_eq!(entry.host_ifindex, 10 + i as u32);
        }
    }

    #[test]
    fn nothing_to_do_when_all_alive() {
        let live = pod_names::host_veth("live", "eth0");
        let links: BTreeMap<String, u32> = [(live.clone(), 10)].into();
        let leases = vec![lease("10.0.0.2", "live", 100)];
        let endpoints: BTreeMap<Ipv4Addr, EndpointInfo> = [("10.0.0.2".parse().unwrap(), ep(10))].into();
        let p = plan(&Facts {
            leases: &leases,
            endpoints: &endpoints,
            pinned_ifnames: &[live],
            links: &links,
            host_sides: &BTreeMap::new(),
            grace: Duration::ZERO,
        });
        assert!(p.is_empty());
    }

    /// A node in memory that records what the sweep did, in order.
    #[derive(Default)]
    struct FakeNode {
        leases: Vec<Lease>,
        endpoints: BTreeMap<Ipv4Addr, EndpointInfo>,
        pinned: Vec<String>,
        links: BTreeMap<String, u32>,
        host_sides: BTreeMap<Ipv4Addr, HostSide>,
        failing_teardown: Option<String>,
        log: std::cell::RefCell<Vec<String>>,
    }

    impl SweepTarget for FakeNode {
        fn leases(&self) -> Result<Vec<Lease>> {
            self.log.borrow_mut().push("read leases".into());
            Ok(self.leases.clone())
        }
        fn endpoints(&self) -> Result<BTreeMap<Ipv4Addr, EndpointInfo>> {
            self.log.borrow_mut().push("read endpoints".into());
            Ok(self.endpoints.clone())
        }
        fn pinned_pod_ifnames(&self) -> Result<Vec<String>> {
            self.log.borrow_mut().push("read pins".into());
            Ok(self.pinned.clone())
        }
        async fn links(&self) -> Result<BTreeMap<String, u32>> {
            self.log.borrow_mut().push("read links".into());
            Ok(self.links.clone())
        }
        async fn host_side(&self, lease: &Lease) -> Result<Option<HostSide>> {
            self.log.borrow_mut().push(format!("read host side {}", lease.ip));
            Ok(self.host_sides.get(&lease.ip).copied())
        }
        fn insert_endpoint(&mut self, ip: Ipv4Addr, ep: EndpointInfo) -> Result<()> {
            self.log.borrow_mut().push(format!("insert endpoint {ip} #{}", ep.host_ifindex));
            Ok(())
        }
        async fn teardown(&mut self, container_id: &str, _ifname: &str) -> Vec<String> {
            self.log.borrow_mut().push(format!("teardown {container_id}"));
            if self.failing_teardown.as_deref() == Some(container_id) {
                return vec!["injected".into()];
            }
            vec![]
        }
        fn remove_endpoint(&mut self, ip: Ipv4Addr) -> Result<()> {
            self.log.borrow_mut().push(format!("remove endpoint {ip}"));
            Ok(())
        }
        fn unpin_pod_link(&mut self, ifname: &str) -> Result<()> {
            self.log.borrow_mut().push(format!("unpin {ifname}"));
            Ok(())
        }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
    }

    #[test]
    fn reads_state_before_links_then_repairs_then_applies_the_rest_past_a_failure() {
        let lost = pod_names::host_veth("lost", "eth0");
        let mut node = FakeNode {
            leases: vec![
                lease("10.0.0.3", "gone", 100),
                lease("10.0.0.4", "gone-too", 100),
                lease("10.0.0.5", "lost", 100),
            ],
            endpoints: [("10.0.0.9".parse().unwrap(), ep(98))].into(),
            pinned: vec!["slcdeadbeef000".into(), lost.clone()],
            links: [(lost, 12)].into(),
            host_sides: [("10.0.0.5".parse().unwrap(), veth_side(12))].into(),
            failing_teardown: Some("gone".into()),
            ..Default::default()
        };
        let plan = block_on(sweep(&mut node, Duration::from_secs(30))).unwrap();
        assert_eq!(plan.attachments.len(), 2);
        assert_eq!(
            node.log.into_inner(),
            vec![
                "read leases",
                "read endpoints",
                "read pins",
                "read links",
                "read host side 10.0.0.5",
                "insert endpoint 10.0.0.5 #12",
                "teardown gone",
                "teardown gone-too",
                "remove endpoint 10.0.0.9",
                "unpin slcdeadbeef000"
            ]
        );
    }

    #[test]
    fn a_live_pod_is_left_alone() {
        let live = pod_names::host_veth("live", "eth0");
        let mut node = FakeNode {
            leases: vec![lease("10.0.0.2", "live", 100)],
            endpoints: [("10.0.0.2".parse().unwrap(), ep(10))].into(),
            pinned: vec![live.clone()],
            links: [(live, 10)].into(),
            ..Default::default()
        };
        assert!(block_on(sweep(&mut node, Duration::ZERO)).unwrap().is_empty());
        assert_eq!(node.log.into_inner().len(), 4, "only the four reads");
    }
}
