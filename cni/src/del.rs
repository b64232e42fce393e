//! DEL: the mirror of ADD. DEL twice, DEL of a pod never added, and DEL after
//! the namespace is gone all succeed. Both families' addresses are released.
use anyhow::anyhow;
use ipnetwork::Ipv6Network;
use sluice_node::{
    datapath::pins::PinDir,
    ipam::store::{Leases, LockEach},
    net::netlink::Netlink,
};

use crate::{config::NetConf, env::CniEnv, error::CniError};
use sluice_node::pod::teardown::teardown;

pub async fn del(conf: &NetConf, env: &CniEnv) -> Result<(), CniError> {
    let host = Netlink::open().map_err(CniError::Plugin)?;
    // The IPAM lock only around finding and releasing the lease, not across
    // the device deletion (tens of ms of kernel waits): concurrent ADDs
    // allocate meanwhile.
    let store = conf.pod_cidr.map(|cidr| LockEach { data_dir: &conf.data_dir, cidr });
    let store = store.as_ref().map(|s| s as &dyn Leases);
    let store6 = conf.pod_cidr6.map(|cidr| LockEach { data_dir: &conf.data_dir, cidr });
    let store6 = store6.as_ref().map(|s| s as &dyn Leases<Ipv6Network>);
    let pins = PinDir::new(&conf.pin_dir);
    let errors = teardown(&host, &pins, store, store6, &env.container_id, &env.ifname).await;
    if errors.is_empty() {
        Ok(())
    } else {
        Err(CniError::Plugin(anyhow!("DEL incomplete: {}", errors.join("; "))))
    }
}
