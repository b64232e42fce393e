//! Which device pair new pods get (issue 17): `--device=auto` takes netkit
//! when this kernel can make one (Linux 6.7+ with netkit built in or
//! loadable), veth otherwise; `veth` and `netkit` force it, and a forced
//! netkit the kernel lacks is an error at start rather than failing every
//! pod's ADD. The choice goes into the CNI config; pods already running
//! keep theirs.
use std::fs::File;
use std::os::fd::AsRawFd;

use anyhow::{bail, Context, Result};
use sluice_node::{net::netlink::Netlink, pod::device::PodDevice};
use tracing::info;

/// `--device`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceChoice {
    Auto,
    Veth,
    Netkit,
}

/// The device and why (for `status`), from the flag and the probe. Pure.
pub fn choose(choice: DeviceChoice, netkit: Result<(), String>) -> Result<(PodDevice, String)> {
    Ok(match (choice, netkit) {
        (DeviceChoice::Veth, _) => (PodDevice::Veth, "--device=veth".into()),
        (DeviceChoice::Netkit, Ok(())) => (PodDevice::Netkit, "--device=netkit".into()),
        (DeviceChoice::Netkit, Err(e)) => bail!("--device=netkit, but this kernel cannot make a netkit pair: {e}"),
        (DeviceChoice::Auto, Ok(())) => (PodDevice::Netkit, "auto: the kernel has netkit".into()),
        (DeviceChoice::Auto, Err(e)) => (PodDevice::Veth, format!("auto: no netkit ({e})")),
    })
}

const PROBE: &str = "sluice_nkprobe";
const PROBE_PEER: &str = "sluice_nkprobe1";

/// Can this kernel make a netkit pair? Makes one here and deletes it.
pub async fn probe_netkit(netlink: &Netlink) -> Result<(), String> {
    let here = File::open("/proc/thread-self/ns/net").map_err(|e| format!("open own netns: {e}"))?;
    for name in [PROBE, PROBE_PEER] {
        netlink.delete_link(name).await.map_err(|e| format!("{e:#}"))?;
    }
    let made = netlink.add_netkit_into(PROBE, PROBE_PEER, here.as_raw_fd(), 1500).await.map_err(|e| format!("{e:#}"));
    netlink.delete_link(PROBE).await.map_err(|e| format!("{e:#}"))?;
    made
}

pub async fn decide(netlink: &Netlink, choice: DeviceChoice) -> Result<(PodDevice, String)> {
    let probe = if choice == DeviceChoice::Veth { Err("not probed".into()) } else { probe_netkit(netlink).await };
    let (device, why) = choose(choice, probe).context("pod device")?;
    info!(%device, why = %why, "pod device chosen");
    Ok((device, why))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choice_table() {
        let no = || Err("Operation not supported".to_string());
        assert_eq!(choose(DeviceChoice::Auto, Ok(())).unwrap().0, PodDevice::Netkit);
        let (d, why) = choose(DeviceChoice::Auto, no()).unwrap();
        assert_eq!(d, PodDevice::Veth);
        assert!(why.contains("Operation not supported"), "{why}");
        assert_eq!(choose(DeviceChoice::Veth, Ok(())).unwrap().0, PodDevice::Veth);
        assert_eq!(choose(DeviceChoice::Netkit, Ok(())).unwrap().0, PodDevice::Netkit);
        let e = choose(DeviceChoice::Netkit, no()).unwrap_err().to_string();
        assert!(e.contains("cannot make a netkit pair"), "{e}");
    }
}
