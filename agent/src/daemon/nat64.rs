//! The NAT64 device at start (`--nat64`, issue 28; the datapath's side is
//! `ebpf/src/nat64.rs`, the model `sluice_common::nat64`): made (or kept,
//! across restarts), `to_nat64` on its egress, the pool routed into it,
//! `NAT64_CONFIG` written. The pool's masquerade and forward accepts are
//! the netfilter reconciler's (`masquerade::Desired::with_nat64`).
//! Without `--nat64` an earlier run's device (its route goes with it) and
//! link go, and `NAT64_CONFIG` is cleared: 64:ff9b::/96 is the stack's.
use anyhow::{bail, Context, Result};
use ipnetwork::{Ipv4Network, Ipv6Network};
use sluice_common::{maps::programs, nat64::Nat64Config};
use sluice_node::{
    datapath::{links, pinned_maps, pins::PinDir, Datapath},
    net::netlink::Netlink,
};
use tracing::info;

/// The NAT64 device: one end of a veth pair without ARP.
pub const DEVICE: &str = "sluice_nat64";
/// Its other end, up, unused: a veth needs one.
pub const PEER: &str = "sluice_nat64p";

/// What start-up needs to know for NAT64.
pub struct Nat64Setup<'a> {
    pub on: bool,
    pub pool: Ipv4Network,
    pub pod_cidr6: Option<Ipv6Network>,
    /// The uplink's IPv4 address, which the pool is masqueraded to.
    pub node_ip: Option<std::net::Ipv4Addr>,
    pub uplink: &'a str,
}

/// Returns the pool when NAT64 is on (for the netfilter reconciler).
pub async fn ensure(
    netlink: &Netlink,
    datapath: &mut Datapath,
    pins: &PinDir,
    setup: &Nat64Setup<'_>,
) -> Result<Option<Ipv4Network>> {
    if !setup.on {
        pinned_maps::write_nat64_config(pins, Nat64Config::default())?;
        let pin = pins.link(programs::TO_NAT64, DEVICE);
        if pin.exists() {
            links::detach(&pin, programs::TO_NAT64, DEVICE)?;
        }
        if netlink.link_by_name(DEVICE).await?.is_some() {
            netlink.delete_link(DEVICE).await?;
            info!(device = DEVICE, "NAT64 device removed (no --nat64)");
        }
        return Ok(None);
    }
    let Some(node_ip) = setup.node_ip else {
        bail!(
            "--nat64: uplink {} has no IPv4 address to masquerade NAT64's pool {} to (give the node one, or leave --nat64 off)",
            setup.uplink,
            setup.pool
        );
    };
    let Some(pod_cidr6) = setup.pod_cidr6 else {
        bail!("--nat64: this node has no IPv6 pod CIDR");
    };
    let covered = sluice_common::nat64::pool_covers(setup.pool.prefix() as u32);
    let link = netlink.ensure_noarp_veth(DEVICE, PEER).await.context("NAT64 device")?;
    datapath.attach(programs::TO_NAT64, DEVICE)?;
    // The answers conntrack de-NATs to a pool address go into the device.
    netlink
        .add_link_route(link.index, setup.pool.network(), setup.pool.prefix())
        .await
        .with_context(|| format!("route NAT64's pool {} into {DEVICE}", setup.pool))?;
    let config = pinned_maps::nat64_config(link.index, link.mac, setup.pool, pod_cidr6);
    pinned_maps::write_nat64_config(pins, config)?;
    info!(
        device = DEVICE,
        ifindex = link.index,
        pool = %setup.pool,
        masquerade_to = %node_ip,
        pods_covered = covered,
        "NAT64 on: 64:ff9b::/96 translated to IPv4"
    );
    Ok(Some(setup.pool))
}
