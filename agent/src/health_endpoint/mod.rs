//! The node's health endpoint: a small namespace wired like a pod, holding
//! the pod CIDR's first host address (which IPAM never hands out), with a
//! TCP responder on `HEALTH_PORT`. Every agent keeps one, so
//! `connectivity-test` can probe any node through the real pod datapath.
//!
//! The agent wires it at start (`ensure`) and serves it (`responder`);
//! `cleanup` removes it; `connectivity-test` probes every node's.
use std::{
    fs::File,
    net::Ipv4Addr,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use ipnetwork::Ipv4Network;
use tracing::info;

use sluice_node::{
    datapath::{pinned_maps::Endpoints, pins::PinDir},
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

/// Make sure the endpoint is wired (idempotent: a restart reuses it).
pub async fn ensure(
    host: &Netlink,
    pins: &PinDir,
    netns_name: &str,
    pod_cidr: Ipv4Network,
    mtu: u32,
) -> Result<PathBuf> {
    let path = ensure_named_netns(netns_name)?;
    let ip = health_ip(pod_cidr);
    let pod = netns::netlink_in(&path)?;
    if let (Some(host_link), Some(_)) = (host.link_by_name(HOST_VETH).await?, pod.link_by_name("eth0").await?) {
        let ours = Endpoints::open(pins)?.get(ip).map(|e| e.host_ifindex) == Some(host_link.index);
        if ours && PodDevice::Veth.programs().iter().all(|p| pins.link(p, HOST_VETH).exists()) {
            return Ok(path);
        }
    }
    let ns = File::open(&path)?;
    let host_link = plumbing::create_pair_into(host, PodDevice::Veth, HOST_VETH, PEER_TMP, ns.as_raw_fd(), mtu).await?;
    let pod_link = plumbing::configure_pod_side(&pod, PEER_TMP, "eth0", mtu, ip, Some(host_link.mac)).await?;
    plumbing::configure_host_side(host, &host_link, ip, Some(pod_link.mac)).await?;
    plumbing::insert_endpoint(pins, ip, &host_link, pod_link.mac)?;
    plumbing::attach_pod_programs(pins, PodDevice::Veth, HOST_VETH)?;
    info!(%ip, netns = %path.display(), "health endpoint ready");
    Ok(path)
}

/// Remove the endpoint (agent cleanup).
pub async fn remove(host: &Netlink, pins: &PinDir, netns_name: &str, pod_cidr: Option<Ipv4Network>) -> Result<()> {
    if let Some(cidr) = pod_cidr {
        if let Ok(mut eps) = Endpoints::open(pins) {
            eps.remove(health_ip(cidr))?;
        }
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
