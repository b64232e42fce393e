//! The node's health endpoint: a small namespace wired like a pod, holding
//! the pod CIDR's first host address (which IPAM never hands out), with a
//! TCP responder on `HEALTH_PORT`. Every agent keeps one, so
//! `connectivity-test` can probe any node through the real pod datapath.
use std::{
    fs::File,
    net::{Ipv4Addr, TcpListener},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use ipnetwork::Ipv4Network;
use nix::{
    mount::{mount, MsFlags},
    sched::{unshare, CloneFlags},
};
use tokio::io::AsyncWriteExt;
use tracing::{info, warn};

use sluice_node::{
    datapath::{pinned_maps::Endpoints, pins::PinDir},
    net::{netlink::Netlink, netns},
    pod::{device::PodDevice, plumbing},
};

pub const HEALTH_PORT: u16 = 4240;
/// Host-side veth of the health endpoint (no container ID to derive from).
pub const HOST_VETH: &str = "slhealth";
const PEER_TMP: &str = "slhealthp";

/// The health endpoint's address: the pod CIDR's first host address.
pub fn health_ip(pod_cidr: Ipv4Network) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(pod_cidr.network()) + 1)
}

/// NSFS_MAGIC: a bind-mounted namespace file.
fn is_netns_file(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).map(|s| s.filesystem_type().0 == 0x6e736673).unwrap_or(false)
}

/// A named network namespace under /run/netns (as `ip netns add` makes).
pub fn ensure_named_netns(name: &str) -> Result<PathBuf> {
    let dir = Path::new("/run/netns");
    std::fs::create_dir_all(dir)?;
    let path = dir.join(name);
    if is_netns_file(&path) {
        return Ok(path);
    }
    File::create(&path).with_context(|| format!("create {}", path.display()))?;
    let target = path.clone();
    std::thread::spawn(move || -> Result<()> {
        // This thread gets a new network namespace, pinned by a bind mount;
        // the thread then ends and the namespace stays.
        unshare(CloneFlags::CLONE_NEWNET).context("unshare network namespace")?;
        mount(Some("/proc/thread-self/ns/net"), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .with_context(|| format!("bind-mount namespace at {}", target.display()))?;
        Ok(())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("netns thread panicked"))??;
    Ok(path)
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

/// Answer TCP on `HEALTH_PORT` inside the endpoint with "sluice-health <node>".
pub fn serve(netns_path: &Path, node_name: &str) -> Result<()> {
    let listener = netns::run_in(netns_path, || {
        let l = TcpListener::bind(("0.0.0.0", HEALTH_PORT)).context("bind health port")?;
        l.set_nonblocking(true)?;
        Ok(l)
    })?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let banner = format!("sluice-health {node_name}\n");
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((mut conn, _)) => {
                    let b = banner.clone();
                    tokio::spawn(async move {
                        let _ = conn.write_all(b.as_bytes()).await;
                    });
                }
                Err(e) => {
                    warn!(error = %e, "health accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok(())
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
