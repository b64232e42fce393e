//! CHECK: is the pod still as ADD left it?
use anyhow::anyhow;
use sluice_node::{
    datapath::{links, pinned_maps::Endpoints, pins::PinDir},
    net::netlink::Netlink,
    pod::names as pod_names,
};

use crate::{config::NetConf, env::CniEnv, error::CniError};
use sluice_node::ipam::store::LeaseStore;

pub async fn check(conf: &NetConf, env: &CniEnv) -> Result<(), CniError> {
    let fail = |m: String| Err(CniError::Plugin(anyhow!(m)));
    let pins = PinDir::new(&conf.pin_dir);
    let host_name = pod_names::host_veth(&env.container_id, &env.ifname);
    let host = Netlink::open().map_err(CniError::Plugin)?;
    let Some(link) = host.link_by_name(&host_name).await.map_err(CniError::Plugin)? else {
        return fail(format!("host veth {host_name} is missing"));
    };
    let store = LeaseStore::lock(&conf.data_dir, conf.pod_cidr).map_err(CniError::Ipam)?;
    let Some(ip) = store.find(&env.container_id, &env.ifname).map_err(CniError::Ipam)? else {
        return fail(format!("no address leased to {} {}", env.container_id, env.ifname));
    };
    let endpoints = Endpoints::open(&pins).map_err(CniError::DatapathNotReady)?;
    match endpoints.get(ip) {
        Some(ep) if ep.host_ifindex == link.index => {}
        Some(ep) => return fail(format!("endpoint {ip} points at ifindex {} not {}", ep.host_ifindex, link.index)),
        None => return fail(format!("endpoint {ip} missing from the ENDPOINTS map")),
    }
    if let Some(prev) = &conf.prev_result {
        let want = format!("{ip}/32");
        let listed = prev["ips"].as_array().is_some_and(|ips| ips.iter().any(|i| i["address"] == want.as_str()));
        if !listed {
            return fail(format!("prevResult does not list this pod's address {want}"));
        }
    }
    for program in links::POD_PROGRAMS {
        if !pins.link(program, &host_name).exists() {
            return fail(format!("{program} is not attached to {host_name}"));
        }
    }
    Ok(())
}
