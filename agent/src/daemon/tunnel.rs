//! The VXLAN device at start (issue 15): made (or kept, across restarts)
//! unless `--tunnel=never`, `from_tunnel` on its ingress and `to_tunnel`
//! on its egress, its ifindex in
//! `TUNNEL_CONFIG` for `from_pod`. With `--tunnel=never` an earlier run's
//! device and link go, and `TUNNEL_CONFIG` is cleared.
use anyhow::Result;
use sluice_common::{maps::programs, TunnelConfig};
use sluice_node::{
    datapath::{links::unpin_link, pinned_maps, pins::PinDir, Datapath},
    net::{netlink::Netlink, vxlan},
};
use tracing::info;

use crate::membership::TunnelMode;

/// Returns the device's ifindex (0 with `--tunnel=never`).
pub async fn ensure(
    netlink: &Netlink,
    datapath: &mut Datapath,
    pins: &PinDir,
    mode: TunnelMode,
    uplink_ifindex: u32,
) -> Result<u32> {
    if mode == TunnelMode::Never {
        pinned_maps::write_tunnel_config(pins, TunnelConfig::default())?;
        for program in [programs::FROM_TUNNEL, programs::TO_TUNNEL] {
            let pin = pins.link(program, vxlan::DEVICE);
            if pin.exists() {
                unpin_link(&pin)?;
            }
        }
        if netlink.link_by_name(vxlan::DEVICE).await?.is_some() {
            netlink.delete_link(vxlan::DEVICE).await?;
            info!(device = vxlan::DEVICE, "VXLAN device removed (--tunnel=never)");
        }
        return Ok(0);
    }
    let link = netlink.ensure_vxlan(vxlan::DEVICE, uplink_ifindex).await?;
    datapath.attach(programs::FROM_TUNNEL, vxlan::DEVICE)?;
    datapath.attach(programs::TO_TUNNEL, vxlan::DEVICE)?;
    pinned_maps::write_tunnel_config(pins, TunnelConfig { vxlan_ifindex: link.index, _reserved: 0 })?;
    info!(device = vxlan::DEVICE, ifindex = link.index, mtu = link.mtu, mode = ?mode, "VXLAN device ready");
    Ok(link.index)
}
