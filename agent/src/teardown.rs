//! Removing one attachment (container ID + ifname) from the node: shared by
//! the CNI plugin's DEL and GC and the agent's sweep of dead pods. Every step runs even if an earlier one failed; anything already
//! gone counts as removed.
use crate::{datapath, ipam::store::LeaseStore, maps::Endpoints, netlink::Netlink, pins::PinDir, pod_names};
use sluice_common::maps::programs;

/// Tear down and return the problems met (empty: all clean).
pub async fn teardown(
    host: &Netlink,
    pins: &PinDir,
    store: &LeaseStore,
    container_id: &str,
    ifname: &str,
) -> Vec<String> {
    let mut errors = Vec::new();
    let host_name = pod_names::host_veth(container_id, ifname);
    let host_ifindex = host.link_by_name(&host_name).await.ok().flatten().map(|l| l.index);
    let ip = match store.find(container_id, ifname) {
        Ok(ip) => ip,
        Err(e) => {
            errors.push(format!("{e:#}"));
            None
        }
    };
    // The endpoint entry, only if it is still this pod's (an address may
    // have moved on to another pod after a lost DEL).
    if let (Some(ip), Ok(mut endpoints)) = (ip, Endpoints::open(pins)) {
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
    // Deleting the host side deletes the pod side too; the temporary peer
    // name exists only if ADD died before moving it into the pod.
    for name in [host_name.clone(), pod_names::temp_peer(container_id, ifname)] {
        if let Err(e) = host.delete_link(&name).await {
            errors.push(format!("{e:#}"));
        }
    }
    if let Err(e) = store.release(container_id, ifname) {
        errors.push(format!("{e:#}"));
    }
    errors
}
