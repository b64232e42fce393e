//! DEL: the mirror of ADD. DEL twice, DEL of a pod never added, and DEL after
//! the namespace is gone all succeed.
use anyhow::anyhow;
use sluice_node::{datapath::pins::PinDir, ipam::store::LockEach, net::netlink::Netlink};

use crate::{config::NetConf, env::CniEnv, error::CniError};
use sluice_node::pod::teardown::teardown;

pub async fn del(conf: &NetConf, env: &CniEnv) -> Result<(), CniError> {
    let host = Netlink::open().map_err(CniError::Plugin)?;
    // The IPAM lock only around finding and releasing the lease, not across
    // the device deletion (tens of ms of kernel waits): concurrent ADDs
    // allocate meanwhile.
    let store = LockEach { data_dir: &conf.data_dir, cidr: conf.pod_cidr };
    let errors = teardown(&host, &PinDir::new(&conf.pin_dir), &store, &env.container_id, &env.ifname).await;
    if errors.is_empty() {
        Ok(())
    } else {
        Err(CniError::Plugin(anyhow!("DEL incomplete: {}", errors.join("; "))))
    }
}
