//! DEL: the mirror of ADD. Every step runs even if an earlier one failed;
//! anything already gone counts as removed, so DEL twice, DEL of a pod never
//! added, and DEL after the namespace is gone all succeed.
use anyhow::anyhow;
use sluice_agent::{datapath, maps::Endpoints, netlink::Netlink, pins::PinDir};
use sluice_common::maps::programs;

use crate::{config::NetConf, env::CniEnv, error::CniError, ipam::store::LeaseStore, names};

pub async fn del(conf: &NetConf, env: &CniEnv) -> Result<(), CniError> {
    let mut errors: Vec<String> = Vec::new();
    let pins = PinDir::new(&conf.pin_dir);
    let host_name = names::host_veth(&env.container_id, &env.ifname);
    let host = Netlink::open().map_err(CniError::Plugin)?;
    let host_ifindex = host.link_by_name(&host_name).await.ok().flatten().map(|l| l.index);

    let store = LeaseStore::lock(&conf.data_dir, conf.pod_cidr).map_err(CniError::Ipam)?;
    let ip = store.find(&env.container_id, &env.ifname).map_err(CniError::Ipam)?;

    // The endpoint entry, only if it is still this pod's (an address may
    // have moved on to another pod after a lost DEL).
    if let (Some(ip), Ok(mut endpoints)) = (ip, Endpoints::open(&pins)) {
        let ours = match endpoints.get(ip) {
            Some(ep) => host_ifindex.is_none_or(|i| i == ep.host_ifindex),
            None => false,
        };
        if ours {
            if let Err(e) = endpoints.remove(ip) {
                errors.push(format!("{e:#}"));
            }
        }
    }
    if let Err(e) = datapath::unpin_link(&pins.link(programs::FROM_POD, &host_name)) {
        errors.push(format!("{e:#}"));
    }
    if let Err(e) = host.delete_link(&host_name).await {
        errors.push(format!("{e:#}"));
    }
    if let Err(e) = store.release(&env.container_id, &env.ifname) {
        errors.push(format!("{e:#}"));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(CniError::Plugin(anyhow!("DEL incomplete: {}", errors.join("; "))))
    }
}
