//! CHECK: is the pod still as ADD left it? On the node: the host veth, the
//! lease, the endpoint entry, both programs attached (a legacy tc filter
//! as the kernel lists it), `prevResult`. Inside
//! the pod's namespace: the interface (up, with the configured MTU), its
//! `/32`, the route to the gateway and the default route via it, and (veth)
//! the gateway's permanent neighbour at the host veth's MAC. On a
//! dual-stack node (`podCIDR6`) the same for IPv6: the lease, the
//! `/128`, the default route via fe80::1 and its neighbour. On an
//! IPv6-only node (no `podCIDR`) only the IPv6 half, and no IPv4 address
//! may be in the pod.
use anyhow::anyhow;
use sluice_node::{
    datapath::{
        links,
        pinned_maps::{Endpoints, Endpoints6},
        pins::PinDir,
    },
    net::netlink::Netlink,
    pod::{device::PodDevice, names as pod_names},
};

use crate::{config::NetConf, env::CniEnv, error::CniError};
use sluice_node::{
    ipam::store::{LeaseStore, LeaseStore6},
    pod::plumbing::{POD_GATEWAY, POD_GATEWAY6},
};

pub async fn check(conf: &NetConf, env: &CniEnv) -> Result<(), CniError> {
    let fail = |m: String| Err(CniError::Plugin(anyhow!(m)));
    let pins = PinDir::new(&conf.pin_dir);
    let host_name = pod_names::host_veth(&env.container_id, &env.ifname);
    let host = Netlink::open().map_err(CniError::Plugin)?;
    let Some(link) = host.link_by_name(&host_name).await.map_err(CniError::Plugin)? else {
        return fail(format!("host veth {host_name} is missing"));
    };
    let ip = match conf.pod_cidr {
        Some(cidr) => {
            let store = LeaseStore::lock(&conf.data_dir, cidr).map_err(CniError::Ipam)?;
            let Some(ip) = store.find(&env.container_id, &env.ifname).map_err(CniError::Ipam)? else {
                return fail(format!("no address leased to {} {}", env.container_id, env.ifname));
            };
            Some(ip)
        }
        None => None,
    };
    let ip6 = match conf.pod_cidr6 {
        Some(cidr6) => {
            let store6 = LeaseStore6::lock(&conf.data_dir, cidr6).map_err(CniError::Ipam)?;
            match store6.find(&env.container_id, &env.ifname).map_err(CniError::Ipam)? {
                Some(ip6) => Some(ip6),
                None => return fail(format!("no IPv6 address leased to {} {}", env.container_id, env.ifname)),
            }
        }
        None => None,
    };
    if let Some(ip) = ip {
        let endpoints = Endpoints::open(&pins).map_err(CniError::DatapathNotReady)?;
        match endpoints.get(ip) {
            Some(ep) if ep.host_ifindex == link.index => {}
            Some(ep) => return fail(format!("endpoint {ip} points at ifindex {} not {}", ep.host_ifindex, link.index)),
            None => return fail(format!("endpoint {ip} missing from the ENDPOINTS map")),
        }
    }
    if let Some(ip6) = ip6 {
        let endpoints6 = Endpoints6::open(&pins).map_err(CniError::DatapathNotReady)?;
        match endpoints6.get(ip6) {
            Some(ep) if ep.host_ifindex == link.index => {}
            Some(ep) => {
                return fail(format!("endpoint {ip6} points at ifindex {} not {}", ep.host_ifindex, link.index))
            }
            None => return fail(format!("endpoint {ip6} missing from the ENDPOINTS6 map")),
        }
    }
    if let Some(prev) = &conf.prev_result {
        if let Some(ip) = ip {
            let want = format!("{ip}/32");
            let listed = prev["ips"].as_array().is_some_and(|ips| ips.iter().any(|i| i["address"] == want.as_str()));
            if !listed {
                return fail(format!("prevResult does not list this pod's address {want}"));
            }
        }
        if let Some(ip6) = ip6 {
            let want = format!("{ip6}/128");
            let listed = prev["ips"].as_array().is_some_and(|ips| ips.iter().any(|i| i["address"] == want.as_str()));
            if !listed {
                return fail(format!("prevResult does not list this pod's IPv6 address {want}"));
            }
        }
    }
    // The pod's kind is the one whose marker program is pinned.
    let Some(device) = PodDevice::of_pod(&pins, &host_name) else {
        return fail(format!("{} is not attached to {host_name}", conf.device.marker()));
    };
    for program in device.programs() {
        // TCX: the link pin; tc: the filter the kernel lists (`check_attached`).
        if let Err(why) = links::check_attached(&host, &pins.link(program, &host_name), program, link.index).await {
            return fail(format!("{program} is not attached to {host_name}: {why}"));
        }
    }
    let Some(netns) = &env.netns else {
        return fail("CNI_NETNS is needed for CHECK: the pod's side is checked too".into());
    };
    let gateway_mac = (device == PodDevice::Veth).then_some(link.mac);
    let mut problems = check_pod_side(netns, &env.ifname, conf.mtu, ip, gateway_mac).await.map_err(CniError::Plugin)?;
    if let Some(ip6) = ip6 {
        problems.extend(check_pod_side6(netns, &env.ifname, ip6, gateway_mac).await.map_err(CniError::Plugin)?);
    }
    if !problems.is_empty() {
        return fail(format!("in the pod: {}", problems.join("; ")));
    }
    Ok(())
}

/// What is wrong inside the pod's namespace (empty: as ADD left it).
async fn check_pod_side(
    netns: &std::path::Path,
    ifname: &str,
    mtu: u32,
    ip: Option<std::net::Ipv4Addr>,
    host_mac: Option<[u8; 6]>,
) -> anyhow::Result<Vec<String>> {
    let pod = sluice_node::net::netns::netlink_in(netns)?;
    let Some(link) = pod.link_by_name(ifname).await? else {
        return Ok(vec![format!("interface {ifname} is missing")]);
    };
    let mut problems = Vec::new();
    if link.mtu != mtu {
        problems.push(format!("{ifname} has MTU {} (configured {mtu})", link.mtu));
    }
    let addresses = pod.ipv4_addresses(link.index).await?;
    let Some(ip) = ip else {
        // IPv6-only: the pod must have no IPv4 at all.
        problems.extend(
            addresses.iter().map(|(a, p)| format!("{ifname} has an IPv4 address {a}/{p} on an IPv6-only node")),
        );
        return Ok(problems);
    };
    if !addresses.contains(&(ip, 32)) {
        problems.push(format!("{ifname} lacks its address {ip}/32"));
    }
    let routes = pod.main_routes(None).await?;
    let gw = POD_GATEWAY;
    if !routes.iter().any(|r| r.dst.ip() == gw && r.dst.prefix() == 32 && r.gateway.is_none() && r.oif == link.index) {
        problems.push(format!("the route to the gateway {gw} on {ifname} is missing"));
    }
    if !routes.iter().any(|r| r.dst.prefix() == 0 && r.gateway == Some(gw) && r.oif == link.index) {
        problems.push(format!("the default route via {gw} is missing"));
    }
    // A NOARP device (netkit) needs no neighbour entry.
    if let Some(host_mac) = host_mac {
        problems.extend(gateway_neighbour_problem(gw, pod.permanent_neighbour(link.index, gw).await?, host_mac));
    }
    Ok(problems)
}

/// What is wrong with the pod's permanent neighbour entry for its gateway
/// `gw` (either family), found pointing at `found`, when it must point at
/// the host end's `host_mac`.
fn gateway_neighbour_problem(gw: impl std::fmt::Display, found: Option<[u8; 6]>, host_mac: [u8; 6]) -> Option<String> {
    match found {
        Some(mac) if mac == host_mac => None,
        Some(_) => Some(format!("the gateway {gw}'s neighbour entry points at another MAC")),
        None => Some(format!("the gateway {gw} has no permanent neighbour entry")),
    }
}

/// What is wrong with the pod's IPv6 (empty: as ADD left it).
async fn check_pod_side6(
    netns: &std::path::Path,
    ifname: &str,
    ip6: std::net::Ipv6Addr,
    host_mac: Option<[u8; 6]>,
) -> anyhow::Result<Vec<String>> {
    let pod = sluice_node::net::netns::netlink_in(netns)?;
    let Some(link) = pod.link_by_name(ifname).await? else {
        return Ok(vec![format!("interface {ifname} is missing")]);
    };
    let mut problems = Vec::new();
    if !pod.ipv6_addresses(link.index).await?.contains(&(ip6, 128)) {
        problems.push(format!("{ifname} lacks its IPv6 address {ip6}/128"));
    }
    let gw = POD_GATEWAY6;
    let routes = pod.main_routes6(None).await?;
    if !routes.iter().any(|r| r.dst.prefix() == 0 && r.gateway == Some(gw) && r.oif == link.index) {
        problems.push(format!("the IPv6 default route via {gw} is missing"));
    }
    if let Some(host_mac) = host_mac {
        problems.extend(gateway_neighbour_problem(gw, pod.permanent_neighbour6(link.index, gw).await?, host_mac));
    }
    Ok(problems)
}
