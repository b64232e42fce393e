//! Cleaning up after pods whose CNI DEL never came (runtime crash, plugin
//! killed mid-ADD, namespace deleted by hand). `plan` decides from facts
//! (pure); `run` gathers the facts and tears down what `plan` names.
//!
//! A lease is stale when its host veth is gone (the pod namespace went, and
//! the veth pair with it) or its pod end never left the node (ADD died
//! before moving it) — and it is older than a grace period, so an ADD still
//! in progress is never swept.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::Path,
    time::Duration,
};

use anyhow::Result;
use ipnetwork::Ipv4Network;
use sluice_common::{maps::programs, EndpointInfo};
use tracing::{info, warn};

use crate::{
    datapath,
    ipam::store::{Lease, LeaseStore},
    maps::Endpoints,
    netlink::Netlink,
    pins::{self, PinDir},
    pod_names, teardown,
};

#[derive(Debug, Default, PartialEq, Eq)]
pub struct SweepPlan {
    /// (container id, ifname) attachments to tear down entirely.
    pub attachments: Vec<(String, String)>,
    /// Endpoint entries pointing at interfaces that no longer exist.
    pub endpoints: Vec<Ipv4Addr>,
    /// `from_pod` link pins for interfaces that no longer exist.
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
    /// Interfaces named in `from_pod` link pins.
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
        if (pod_gone || add_died_before_move) && lease.age >= f.grace {
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

/// Gather facts, plan, apply. Holds the IPAM lock throughout, so no ADD
/// allocates while addresses are being released.
pub async fn run(
    netlink: &Netlink,
    pins: &PinDir,
    data_dir: &Path,
    pod_cidr: Ipv4Network,
    grace: Duration,
) -> Result<SweepPlan> {
    let store = LeaseStore::lock(data_dir, pod_cidr)?;
    // Order matters: ADD creates the veth before the endpoint entry and the
    // link pin, so reading entries and pins *before* the links means a
    // missing link is really gone, never "not made yet".
    let leases = store.leases()?;
    let mut endpoints_map = Endpoints::open(pins)?;
    let endpoints = endpoints_map.all()?;
    let pinned_ifnames: Vec<String> = std::fs::read_dir(pins.links_dir())?
        .filter_map(|e| e.ok())
        .filter_map(|e| pins::link_pin_ifname(programs::FROM_POD, &e.file_name().to_string_lossy()).map(str::to_string))
        .collect();
    let links: BTreeMap<String, u32> = netlink.links().await?.into_iter().map(|l| (l.name, l.index)).collect();
    let plan =
        plan(&Facts { leases: &leases, endpoints: &endpoints, pinned_ifnames: &pinned_ifnames, links: &links, grace });
    for (cid, ifname) in &plan.attachments {
        let errors = teardown::teardown(netlink, pins, &store, cid, ifname).await;
        if errors.is_empty() {
            info!(container = %cid, ifname = %ifname, "released attachment of a pod that is gone");
        } else {
            warn!(container = %cid, ifname = %ifname, errors = %errors.join("; "), "sweep incomplete");
        }
    }
    for ip in &plan.endpoints {
        endpoints_map.remove(*ip)?;
        info!(%ip, "removed endpoint whose interface is gone");
    }
    for ifname in &plan.link_pins {
        datapath::unpin_link(&pins.link(programs::FROM_POD, ifname))?;
    }
    Ok(plan)
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
        let links: BTreeMap<String, u32> = [(live.clone(), 10), (crashed.clone(), 11), ("eth0".to_string(), 2)].into();
        let leases = vec![
            lease("10.0.0.2", "live", 100),    // pod alive: keep
            lease("10.0.0.3", "gone", 100),    // veth gone: sweep
            lease("10.0.0.4", "young", 0),     // veth gone but ADD may be running: keep
            lease("10.0.0.5", "crashed", 100), // ADD died before moving the peer: sweep
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
        assert_eq!(p.attachments, vec![("gone".into(), "eth0".into()), ("crashed".into(), "eth0".into())]);
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
}
