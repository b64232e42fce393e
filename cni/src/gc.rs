//! GC: release every attachment the runtime no longer lists in
//! `cni.dev/valid-attachments`: address, endpoint entry, link, veth. A GC
//! without that list is a configuration error (code 7), never a wipe: an
//! empty list would mean "no pod is valid".
use anyhow::anyhow;
use sluice_node::{datapath::pins::PinDir, ipam::store::LeaseStore, net::netlink::Netlink};

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
    let store = LeaseStore::lock(&conf.data_dir, conf.pod_cidr).map_err(CniError::Ipam)?;
    let mut errors = Vec::new();
    for lease in store.leases().map_err(CniError::Ipam)? {
        if valid.iter().any(|a| a.container_id == lease.container_id && a.ifname == lease.ifname) {
            continue;
        }
        errors.extend(teardown(&host, &pins, &store, &lease.container_id, &lease.ifname).await);
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(CniError::Plugin(anyhow!("GC incomplete: {}", errors.join("; "))))
    }
}
