//! Cleaning up after pods whose CNI DEL never came (runtime crash, plugin
//! killed mid-ADD, namespace deleted by hand). `plan` decides from facts
//! (pure); `sweep` gathers the facts through `SweepTarget` and tears down
//! what `plan` names.
//!
//! A lease is stale when its host veth is gone (the pod namespace went, and
//! the veth pair with it), its pod end never left the node (an ADD of an
//! older version died before moving it), or it has no endpoint entry (the
//! ADD died before finishing: every finished ADD has one) — and it is older
//! than a grace period, so an ADD still in progress is never swept.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::Path,
    time::Duration,
};

use anyhow::Result;
use ipnetwork::Ipv4Network;
use sluice_common::EndpointInfo;
use tracing::{info, warn};

use sluice_node::{
    datapath::{pinned_maps::Endpoints, pins::PinDir},
    ipam::store::{Lease, LeaseStore},
    net::netlink::Netlink,
    pod::{device::PodDevice, names as pod_names, plumbing, teardown},
};

#[derive(Debug, Default, PartialEq, Eq)]
pub struct SweepPlan {
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
        self.attachments.is_empty() && self.endpoints.is_empty() && self.link_pins.is_empty()
    }
}

pub struct Facts<'a> {
    pub leases: &'a [Lease],
    pub endpoints: &'a BTreeMap<Ipv4Addr, EndpointInfo>,
    /// Interfaces named in pods' `from_pod`/`from_pod_netkit` link pins.
    pub pinned_ifnames: &'a [String],
    /// Links in the node namespace: name → ifindex.
    pub links: &'a BTreeMap<String, u32>,
    pub grace: Duration,
}

pub fn plan(f: &Facts) -> SweepPlan {
    let live_ifindexes: BTreeSet<u32> = f.links.values().copied().collect();
    let mut out = SweepPlan::default();
    let mut covered: BTreeSet<Ipv4Addr> = BTreeSet::new();
    for lease in f.leases {
        let host = pod_names::host_veth(&lease.container_id, &lease.ifname);
        let peer = pod_names::temp_peer(&lease.container_id, &lease.ifname);
        let pod_gone = !f.links.contains_key(&host);
        let add_died_before_move = f.links.contains_key(&peer);
        // Every finished ADD has its endpoint entry: a lease without one
        // (past the grace period) is an ADD that died on the way.
        let add_never_finished = !f.endpoints.contains_key(&lease.ip);
        if (pod_gone || add_died_before_move || add_never_finished) && lease.age >= f.grace {
            out.attachments.push((lease.container_id.clone(), lease.ifname.clone()));
            covered.insert(lease.ip);
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
    /// Tear one attachment down; the problems met (empty: clean).
    async fn teardown(&mut self, container_id: &str, ifname: &str) -> Vec<String>;
    fn remove_endpoint(&mut self, ip: Ipv4Addr) -> Result<()>;
    fn unpin_pod_link(&mut self, ifname: &str) -> Result<()>;
}

/// Gather facts, plan, apply. Order matters: ADD creates the veth before
/// the endpoint entry and the link pin, so reading entries and pins
/// *before* the links means a missing link is really gone, never "not made
/// yet". A teardown that meets problems is logged and the rest goes on.
pub async fn sweep(target: &mut impl SweepTarget, grace: Duration) -> Result<SweepPlan> {
    let leases = target.leases()?;
    let endpoints = target.endpoints()?;
    let pinned_ifnames = target.pinned_pod_ifnames()?;
    let links = target.links().await?;
    let plan =
        plan(&Facts { leases: &leases, endpoints: &endpoints, pinned_ifnames: &pinned_ifnames, links: &links, grace });
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
    ) -> Result<Option<Self>> {
        let Some(store) = LeaseStore::try_lock(data_dir, pod_cidr)? else {
            return Ok(None);
        };
        let endpoints = Endpoints::open(pins)?;
        Ok(Some(Self { netlink, pins, store, endpoints }))
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
    async fn teardown(&mut self, container_id: &str, ifname: &str) -> Vec<String> {
        teardown::teardown(self.netlink, self.pins, &self.store, container_id, ifname).await
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

    #[test]
    fn table() {
        let live = pod_names::host_veth("live", "eth0");
        let crashed = pod_names::temp_peer("crashed", "eth0");
        let unfinished = pod_names::host_veth("unfinished", "eth0");
        let links: BTreeMap<String, u32> =
            [(live.clone(), 10), (crashed.clone(), 11), (unfinished.clone(), 12), ("eth0".to_string(), 2)].into();
        let leases = vec![
            lease("10.0.0.2", "live", 100),       // pod alive: keep
            lease("10.0.0.3", "gone", 100),       // veth gone: sweep
            lease("10.0.0.4", "young", 0),        // veth gone but ADD may be running: keep
            lease("10.0.0.5", "crashed", 100),    // ADD died before moving the peer: sweep
            lease("10.0.0.6", "unfinished", 100), // veth there, no endpoint entry: sweep
        ];
        let endpoints: BTreeMap<Ipv4Addr, EndpointInfo> = [
            ("10.0.0.2".parse().unwrap(), ep(10)),
            ("10.0.0.3".parse().unwrap(), ep(99)), // covered by the lease teardown
            ("10.0.0.9".parse().unwrap(), ep(98)), // orphan entry
        ]
        .into();
        let pinned = vec![live.clone(), "slcdeadbeef000".to_string()];
        let p = plan(&Facts {
            leases: &leases,
            endpoints: &endpoints,
            pinned_ifnames: &pinned,
            links: &links,
            grace: Duration::from_secs(30),
        });
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
    fn reads_state_before_links_then_applies_the_plan_past_a_failure() {
        let mut node = FakeNode {
            leases: vec![lease("10.0.0.3", "gone", 100), lease("10.0.0.4", "gone-too", 100)],
            endpoints: [("10.0.0.9".parse().unwrap(), ep(98))].into(),
            pinned: vec!["slcdeadbeef000".into()],
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
