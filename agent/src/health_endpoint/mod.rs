//! The node's health endpoint: a small namespace wired like a pod, holding
//! the pod CIDR's first host address (which IPAM never hands out; on a
//! dual-stack node the IPv6 pod CIDR's `::1` too), with a TCP responder on
//! `HEALTH_PORT` for each family. Every agent keeps one, so
//! `connectivity-test` can probe any node through the real pod datapath.
//!
//! The agent wires it at start (`ensure`) and serves it (`responder`);
//! `cleanup` removes it; `connectivity-test` probes every node's.
use std::{
    fs::File,
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use ipnetwork::{Ipv4Network, Ipv6Network};
use tracing::info;

use sluice_node::{
    datapath::{
        pinned_maps::{Endpoints, Endpoints6},
        pins::PinDir,
    },
    net::{netlink::Netlink, netns},
    pod::{device::PodDevice, plumbing},
};

pub mod named_netns;
pub mod responder;

use named_netns::{ensure_named_netns, is_netns_file};

pub const HEALTH_PORT: u16 = 4240;
/// Host-side veth of the health endpoint (no container ID to derive from).
pub const HOST_VETH: &str = "slhealth";
const PEER_TMP: &str = "slhealthp";

/// The health endpoint's address: the pod CIDR's first host address.
pub fn health_ip(pod_cidr: Ipv4Network) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(pod_cidr.network()) + 1)
}

/// The health endpoint's IPv6 address (dual-stack): the IPv6 pod CIDR's
/// `::1`, which IPAM never hands out either.
pub fn health_ip6(pod_cidr6: Ipv6Network) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(pod_cidr6.network()) + 1)
}

/// Make sure the endpoint is wired (idempotent: a restart reuses it), with
/// an IPv6 address too when the node has an IPv6 pod CIDR (and only that
/// one on an IPv6-only node, `pod_cidr` None).
pub async fn ensure(
    host: &Netlink,
    pins: &PinDir,
    netns_name: &str,
    pod_cidr: Option<Ipv4Network>,
    pod_cidr6: Option<Ipv6Network>,
    mtu: u32,
) -> Result<PathBuf> {
    let path = ensure_named_netns(netns_name)?;
    let ip = pod_cidr.map(health_ip);
    let ip6 = pod_cidr6.map(health_ip6);
    let pod = netns::netlink_in(&path)?;
    if let (Some(host_link), Some(_)) = (host.link_by_name(HOST_VETH).await?, pod.link_by_name("eth0").await?) {
        let ours = match ip {
            Some(ip) => Endpoints::open(pins)?.get(ip).map(|e| e.host_ifindex) == Some(host_link.index),
            None => true,
        };
        let ours6 = match ip6 {
            Some(ip6) => Endpoints6::open(pins)?.get(ip6).map(|e| e.host_ifindex) == Some(host_link.index),
            None => true,
        };
        if ours && ours6 && PodDevice::Veth.programs().iter().all(|p| pins.link(p, HOST_VETH).exists()) {
            return Ok(path);
        }
    }
    let ns = File::open(&path)?;
    let host_link = plumbing::create_pair_into(host, PodDevice::Veth, HOST_VETH, PEER_TMP, ns.as_raw_fd(), mtu).await?;
    let pod_link = plumbing::configure_pod_side(&pod, PEER_TMP, "eth0", mtu, ip, Some(host_link.mac)).await?;
    plumbing::configure_host_side(host, &host_link, ip, Some(pod_link.mac)).await?;
    if let Some(ip) = ip {
        plumbing::insert_endpoint(pins, ip, &host_link, pod_link.mac)?;
    }
    if let Some(ip6) = ip6 {
        plumbing::configure_pod_side6(&pod, &path, &pod_link, ip6, Some(host_link.mac)).await?;
        plumbing::configure_host_side6(host, &host_link, ip6, Some(pod_link.mac)).await?;
        plumbing::insert_endpoint6(pins, ip6, &host_link, pod_link.mac)?;
    }
    plumbing::attach_pod_programs(pins, PodDevice::Veth, HOST_VETH)?;
    info!(ip = ?ip, ip6 = ?ip6, netns = %path.display(), "health endpoint ready");
    Ok(path)
}

/// Remove the endpoint (agent cleanup).
pub async fn remove(
    host: &Netlink,
    pins: &PinDir,
    netns_name: &str,
    pod_cidr: Option<Ipv4Network>,
    pod_cidr6: Option<Ipv6Network>,
) -> Result<()> {
    if let Some(cidr) = pod_cidr {
        if let Ok(mut eps) = Endpoints::open(pins) {
            eps.remove(health_ip(cidr))?;
        }
    }
    if let Some(cidr6) = pod_cidr6 {
        plumbing::remove_endpoint6(pins, health_ip6(cidr6))?;
    }
    plumbing::detach_pod_programs(pins, HOST_VETH)?;
    host.delete_link(HOST_VETH).await?;
    let path = Path::new("/run/netns").join(netns_name);
    if is_netns_file(&path) {
        nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH).context("unmount health namespace")?;
    }
    let _ = std::fs::remove_file(&path);
    Ok(())
}
