//! STATUS: can this node take pods now? Ready when the agent's pins are in
//! place and the pod CIDR has a free address; otherwise error 50 with why.
use sluice_common::maps::programs;
use sluice_node::{
    datapath::{pinned_maps::Endpoints, pins::PinDir},
    ipam::{
        allocator::{self, PodCidr},
        store::LeaseStore,
    },
};

use crate::{config::NetConf, error::CniError};

pub fn status(conf: &NetConf) -> Result<(), CniError> {
    let pins = PinDir::new(&conf.pin_dir);
    let prog = pins.prog(programs::FROM_POD);
    if !prog.exists() {
        return Err(CniError::NotAvailable(format!(
            "sluice-agent has not loaded the datapath: {} is missing",
            prog.display()
        )));
    }
    if let Err(e) = Endpoints::open(&pins) {
        return Err(CniError::NotAvailable(format!("datapath maps unusable: {e:#}")));
    }
    if let Some(cidr) = conf.pod_cidr {
        exhausted(&conf.data_dir, cidr)?;
    }
    // An IPv6-only node's pool is its IPv6 pod CIDR (a dual-stack node's
    // IPv6 pool, a /64, does not run out before the IPv4 one).
    if let (None, Some(cidr6)) = (conf.pod_cidr, conf.pod_cidr6) {
        exhausted(&conf.data_dir, cidr6)?;
    }
    Ok(())
}

/// Error 50 when every address of `cidr` is leased.
fn exhausted<C: PodCidr + std::fmt::Display>(data_dir: &std::path::Path, cidr: C) -> Result<(), CniError> {
    let store = LeaseStore::lock(data_dir, cidr).map_err(CniError::Ipam)?;
    let in_use = store.leases().map_err(CniError::Ipam)?.len();
    let capacity = allocator::capacity(cidr);
    if in_use as u128 >= capacity {
        return Err(CniError::NotAvailable(format!(
            "pod CIDR {cidr} is exhausted: {in_use} of {capacity} addresses in use"
        )));
    }
    Ok(())
}
