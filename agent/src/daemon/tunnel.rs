//! The VXLAN device at start (issue 15): made (or kept, across restarts)
//! unless `--tunnel=never`, `from_tunnel` on its ingress and `to_tunnel`
//! on its egress, its ifindex in
//! `TUNNEL_CONFIG` for `from_pod`. With `--tunnel=never` an earlier run's
//! device and link go, and `TUNNEL_CONFIG` is cleared.
use anyhow::Result;
use sluice_common::{maps::programs, TunnelConfig};
use sluice_node::{
    datapath::{links, pinned_maps, pins::PinDir, Datapath},
    net::{netlink::Netlink, vxlan},
};
use tracing::info;

use crate::membership::TunnelMode;

/// The pods' MTU: `--mtu` when pinned; else the uplink's, less VXLAN's
/// 50 bytes unless `--tunnel=never` (with `auto` any peer may turn out to
/// be on another network, and a pod's MTU is fixed when it is made).
pub fn pod_mtu(pinned: Option<u32>, uplink_mtu: u32, mode: TunnelMode) -> u32 {
    match (pinned, mode) {
        (Some(mtu), _) => mtu,
        (None, TunnelMode::Never) => uplink_mtu,
        (None, TunnelMode::Auto | TunnelMode::Always) => crate::membership::PeerPath::Vxlan.mtu(uplink_mtu),
    }
}

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
                links::detach(&pin, program, vxlan::DEVICE)?;
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
    pinned_maps::write_tunnel_config(pins, TunnelConfig { vxlan_ifindex: link.index, mtu: link.mtu })?;
    info!(device = vxlan::DEVICE, ifindex = link.index, mtu = link.mtu, mode = ?mode, "VXLAN device ready");
    Ok(link.index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_mtu_table() {
        use TunnelMode::*;
        for (pinned, mode, want) in [
            (None, Auto, 1450),
            (None, Always, 1450),
            (None, Never, 1500),
            (Some(1400), Auto, 1400),
            (Some(1500), Always, 1500),
            (Some(1300), Never, 1300),
        ] {
            assert_eq!(pod_mtu(pinned, 1500, mode), want, "{pinned:?} {mode:?}");
        }
    }
}
