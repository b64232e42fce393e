//! Removing one attachment (container ID + ifname) from the node: shared by
//! the CNI plugin's DEL and GC and the agent's sweep of dead pods. Every
//! step runs even if an earlier one failed; anything already gone counts as
//! removed. `entry_is_ours` decides (pure) whether the endpoint entry for
//! the pod's address still belongs to this attachment.
use super::names;
use crate::{
    datapath::{
        links,
        pin_lock::PinLock,
        pinned_maps::{Endpoints, Endpoints6},
        pins::PinDir,
    },
    ipam::store::Leases,
    net::netlink::Netlink,
    step_timer,
};
use ipnetwork::Ipv6Network;
use sluice_common::EndpointInfo;

/// Tear down and return the problems met (empty: all clean). `store`:
/// the IPv4 leases (`None` on an IPv6-only node); `store6`: the IPv6
/// leases, on a dual-stack or IPv6-only node (the pod's IPv6 address is
/// released too).
pub async fn teardown(
    host: &Netlink,
    pins: &PinDir,
    store: Option<&dyn Leases>,
    store6: Option<&dyn Leases<Ipv6Network>>,
    container_id: &str,
    ifname: &str,
) -> Vec<String> {
    let mut errors = Vec::new();
    let host_name = names::host_veth(container_id, ifname);
    let host_ifindex = host.link_by_name(&host_name).await.ok().flatten().map(|l| l.index);
    let ip = match store.map(|s| s.find(container_id, ifname)) {
        Some(Ok(ip)) => ip,
        Some(Err(e)) => {
            errors.push(format!("{e:#}"));
            None
        }
        None => None,
    };
    let ip6 = match store6.map(|s| s.find(container_id, ifname)) {
        Some(Ok(ip6)) => ip6,
        Some(Err(e)) => {
            errors.push(format!("{e:#}"));
            None
        }
        None => None,
    };
    step_timer::mark("lookup");
    // The endpoint entry, only if it is still this pod's (an address may
    // have moved on to another pod after a lost DEL).
    // Under the pin directory's shared lock (no migration replaces the map
    // between the read and the remove). No pin directory: no map either.
    let lock = PinLock::shared(pins).ok();
    if let (Some(ip), Ok(mut endpoints)) = (ip, Endpoints::open(pins)) {
        if entry_is_ours(endpoints.get(ip).as_ref(), host_ifindex) {
            if let Err(e) = endpoints.remove(ip) {
                errors.push(format!("{e:#}"));
            }
            // The NetworkPolicy entries ADD wrote for the address (a
            // datapath without the policy maps has none).
            errors.extend(remove_policy_entries(pins, ip).err().map(|e| format!("{e:#}")));
        }
    }
    // The IPv6 twin, by the same rule.
    if let (Some(ip6), Ok(mut endpoints6)) = (ip6, Endpoints6::open(pins)) {
        if entry_is_ours(endpoints6.get(ip6).as_ref(), host_ifindex) {
            if let Err(e) = endpoints6.remove(ip6) {
                errors.push(format!("{e:#}"));
            }
            // The NetworkPolicy entries ADD wrote for the IPv6 address.
            errors.extend(remove_policy_entries6(pins, ip6).err().map(|e| format!("{e:#}")));
        }
    }
    drop(lock);
    step_timer::mark("endpoint");
    for program in links::ANY_POD_PROGRAMS {
        if let Err(e) = links::unpin_link(&pins.link(program, &host_name)) {
            errors.push(format!("{e:#}"));
        }
    }
    step_timer::mark("unpin-links");
    // Deleting the host side deletes the pod side too; the temporary peer
    // name exists only if ADD died before moving it into the pod. (Deleting
    // the device before unpinning its links was measured too: no faster;
    // docs/BENCHMARKS.md, "Every step".)
    for name in [host_name.clone(), names::temp_peer(container_id, ifname)] {
        if let Err(e) = host.delete_link(&name).await {
            errors.push(format!("{e:#}"));
        }
    }
    step_timer::mark("delete-veth");
    if let Some(Err(e)) = store.map(|s| s.release(container_id, ifname)) {
        errors.push(format!("{e:#}"));
    }
    if let Some(store6) = store6 {
        if let Err(e) = store6.release(container_id, ifname) {
            errors.push(format!("{e:#}"));
        }
    }
    step_timer::mark("release");
    errors
}

/// Remove `POLICY_ENDPOINTS[ip]` and `POLICY_IDENTITIES[ip/32]`; absent
/// entries (or maps) are removed already.
fn remove_policy_entries(pins: &PinDir, ip: std::net::Ipv4Addr) -> anyhow::Result<()> {
    use crate::datapath::policy_maps::{PolicyEndpoints, PolicyIdentities};
    if let Ok(mut endpoints) = PolicyEndpoints::open(pins) {
        endpoints.remove(ip)?;
    }
    if let Ok(mut identities) = PolicyIdentities::open(pins) {
        identities.remove(ipnetwork::Ipv4Network::new(ip, 32)?)?;
    }
    Ok(())
}

/// The IPv6 twin of [`remove_policy_entries`]: `POLICY_ENDPOINTS6[ip]` and
/// `POLICY_IDENTITIES6[ip/128]`.
fn remove_policy_entries6(pins: &PinDir, ip: std::net::Ipv6Addr) -> anyhow::Result<()> {
    use crate::datapath::policy_maps::{PolicyEndpoints6, PolicyIdentities6};
    if let Ok(mut endpoints) = PolicyEndpoints6::open(pins) {
        endpoints.remove(ip)?;
    }
    if let Ok(mut identities) = PolicyIdentities6::open(pins) {
        identities.remove(Ipv6Network::new(ip, 128)?)?;
    }
    Ok(())
}

/// Is the endpoint entry for the pod's address still this attachment's?
/// An address can move on to another pod after a lost DEL; that pod's
/// entry points at its own host veth and must stay. With our host veth
/// already gone (`None`) no other pod can be using our interface, so an
/// entry for our address is ours.
pub fn entry_is_ours(entry: Option<&EndpointInfo>, our_host_ifindex: Option<u32>) -> bool {
    match entry {
        Some(ep) => our_host_ifindex.is_none_or(|i| i == ep.host_ifindex),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(host_ifindex: u32) -> EndpointInfo {
        EndpointInfo { host_ifindex, pod_mac: [0; 6], host_mac: [0; 6] }
    }

    #[test]
    fn ownership() {
        // Entry points at our veth: ours.
        assert!(entry_is_ours(Some(&ep(7)), Some(7)));
        // Entry points at another pod's veth (address reused): not ours.
        assert!(!entry_is_ours(Some(&ep(9)), Some(7)));
        // Our veth is gone: the entry for our address is ours.
        assert!(entry_is_ours(Some(&ep(9)), None));
        // No entry: nothing to remove.
        assert!(!entry_is_ours(None, Some(7)));
        assert!(!entry_is_ours(None, None));
    }
}
