//! GC: release every attachment the runtime no longer lists in
//! `cni.dev/valid-attachments`: address, endpoint entry, link, veth. A GC
//! without that list is a configuration error (code 7), never a wipe: an
//! empty list would mean "no pod is valid".
use anyhow::anyhow;
use std::collections::BTreeSet;

use ipnetwork::Ipv6Network;
use sluice_node::{
    datapath::pins::PinDir,
    ipam::store::{LeaseStore, LeaseStore6, Leases},
    net::netlink::Netlink,
};

use crate::{config::NetConf, error::CniError};
use sluice_node::pod::teardown::teardown;

pub async fn gc(conf: &NetConf) -> Result<(), CniError> {
    let Some(valid) = conf.valid_attachments.clone() else {
        return Err(CniError::Config(crate::config::ConfigError::Field {
            field: "cni.dev/valid-attachments",
            problem: "GC needs the list of valid attachments; without it every pod would be torn down".into(),
        }));
    };
    let host = Netlink::open().map_err(CniError::Plugin)?;
    let pins = PinDir::new(&conf.pin_dir);
    let store = match conf.pod_cidr {
        Some(cidr) => Some(LeaseStore::lock(&conf.data_dir, cidr).map_err(CniError::Ipam)?),
        None => None,
    };
    let store6 = match conf.pod_cidr6 {
        Some(cidr) => Some(LeaseStore6::lock(&conf.data_dir, cidr).map_err(CniError::Ipam)?),
        None => None,
    };
    let mut errors = Vec::new();
    // Every attachment holding an address of either family (an IPv6 lease
    // whose IPv4 twin is gone still goes).
    let mut owners: BTreeSet<(String, String)> = BTreeSet::new();
    if let Some(s4) = &store {
        owners.extend(s4.leases().map_err(CniError::Ipam)?.into_iter().map(|l| (l.container_id, l.ifname)));
    }
    if let Some(s6) = &store6 {
        owners.extend(s6.leases().map_err(CniError::Ipam)?.into_iter().map(|l| (l.container_id, l.ifname)));
    }
    let leases6 = store6.as_ref().map(|s| s as &dyn Leases<Ipv6Network>);
    let leases4 = store.as_ref().map(|s| s as &dyn Leases);
    for (container_id, ifname) in owners {
        if valid.iter().any(|a| a.container_id == container_id && a.ifname == ifname) {
            continue;
        }
        errors.extend(teardown(&host, &pins, leases4, leases6, &container_id, &ifname).await);
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(CniError::Plugin(anyhow!("GC incomplete: {}", errors.join("; "))))
    }
}
