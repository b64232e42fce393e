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
/// `overhead` (`membership::tunnel_overhead`: 50 bytes over IPv4, 70 over
/// an IPv6-only node's IPv6) unless `--tunnel=never` (with `auto` any peer
/// may turn out to be on another network, and a pod's MTU is fixed when
/// it is made).
pub fn pod_mtu(pinned: Option<u32>, uplink_mtu: u32, mode: TunnelMode, overhead: u32) -> u32 {
    match (pinned, mode) {
        (Some(mtu), _) => mtu,
        (None, TunnelMode::Never) => uplink_mtu,
        (None, TunnelMode::Auto | TunnelMode::Always) => {
            crate::membership::PeerPath::Vxlan.mtu_over(uplink_mtu, overhead)
        }
    }
}

/// Returns the device's ifindex (0 with `--tunnel=never`). `mtu`: the
/// device's MTU when it is not the kernel's default (the uplink's less 50,
/// room for an IPv4 outer header): an IPv6-only node's device sends over
/// IPv6 and takes the uplink's less 70 (`device_mtu`).
pub async fn ensure(
    netlink: &Netlink,
    datapath: &mut Datapath,
    pins: &PinDir,
    mode: TunnelMode,
    uplink_ifindex: u32,
    mtu: Option<u32>,
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
    let link = netlink.ensure_vxlan(vxlan::DEVICE, uplink_ifindex, mtu).await?;
    datapath.attach(programs::FROM_TUNNEL, vxlan::DEVICE)?;
    datapath.attach(programs::TO_TUNNEL, vxlan::DEVICE)?;
    pinned_maps::write_tunnel_config(pins, TunnelConfig { vxlan_ifindex: link.index, mtu: link.mtu })?;
    info!(device = vxlan::DEVICE, ifindex = link.index, mtu = link.mtu, mode = ?mode, "VXLAN device ready");
    Ok(link.index)
}

/// The VXLAN device's MTU to ask for: the uplink's less VXLAN's 70 bytes
/// over an IPv6 underlay (an IPv6-only node); `None` over IPv4, where the
/// kernel's default (the uplink's less 50) is already right. A larger
/// device MTU would take inner packets whose outer packet no longer fits
/// the uplink.
pub fn device_mtu(uplink_mtu: u32, ipv6_underlay: bool) -> Option<u32> {
    ipv6_underlay
        .then(|| crate::membership::PeerPath::Vxlan.mtu_over(uplink_mtu, sluice_common::maps::TUNNEL_OVERHEAD6))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_mtu_table() {
        use TunnelMode::*;
        for (pinned, mode, overhead, want) in [
            (None, Auto, 50, 1450),
            (None, Always, 50, 1450),
            (None, Never, 50, 1500),
            (Some(1400), Auto, 50, 1400),
            (Some(1500), Always, 50, 1500),
            (Some(1300), Never, 50, 1300),
            // An IPv6-only node: VXLAN over IPv6.
            (None, Auto, 70, 1430),
            (None, Always, 70, 1430),
            (None, Never, 70, 1500),
            (Some(1500), Auto, 70, 1500),
        ] {
            assert_eq!(pod_mtu(pinned, 1500, mode, overhead), want, "{pinned:?} {mode:?} {overhead}");
        }
        assert_eq!(device_mtu(1500, true), Some(1430));
        assert_eq!(device_mtu(9000, true), Some(8930));
        assert_eq!(device_mtu(1500, false), None, "IPv4 underlay: the kernel's own 1450");
    }
}
