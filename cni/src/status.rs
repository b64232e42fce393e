//! STATUS: can this node take pods now? Ready when the agent's pins are in
//! place and the pod CIDR has a free address; otherwise error 50 with why.
use sluice_common::maps::programs;
use sluice_node::{
    datapath::{pinned_maps::Endpoints, pins::PinDir},
    ipam::{allocator, store::LeaseStore},
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
    let store = LeaseStore::lock(&conf.data_dir, conf.pod_cidr).map_err(CniError::Ipam)?;
    let in_use = store.leases().map_err(CniError::Ipam)?.len();
    let capacity = allocator::capacity(conf.pod_cidr);
    if in_use as u64 >= capacity as u64 {
        return Err(CniError::NotAvailable(format!(
            "pod CIDR {} is exhausted: {in_use} of {capacity} addresses in use",
            conf.pod_cidr
        )));
    }
    Ok(())
}
