//! Wiring a pod-like namespace to the node: the steps CNI ADD takes (with a
//! rollback entry and a fault point between each) and the agent's health
//! endpoint reuses. Each step is idempotent where it can be.
//!
//! Pod side: `/32` address, a scope-link route to `POD_GATEWAY` and a default
//! route via it, and `POD_GATEWAY` as a permanent neighbour at the host veth's
//! MAC (so the pod never ARPs). Node side: a `/32` route to the pod and a
//! permanent neighbour for it (node → pod traffic, kubelet probes).
//!
//! IPv6 (a dual-stack node), the twins with a `6`: the pod's `/128`
//! without DAD, a default route via `POD_GATEWAY6` (fe80::1) and a
//! permanent neighbour for it; on the node, IPv6 on for the host end,
//! fe80::1 as its address (so the node answers neighbour solicitations
//! for the gateway on this link, and only on pods' links), a `/128` route
//! and a permanent neighbour for the pod.
use std::{
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::RawFd,
    path::Path,
};

use anyhow::{anyhow, Context, Result};
use aya::programs::SchedClassifier;
use sluice_common::{maps::programs, EndpointInfo};

use super::device::PodDevice;
use crate::{
    datapath::{
        attach_mode::AttachMode,
        links,
        pin_lock::PinLock,
        pinned_maps::{Endpoints, Endpoints6},
        pins::PinDir,
    },
    net::{
        netlink::{LinkInfo, Netlink},
        netlink6,
    },
    step_timer,
};

/// Pods route everything via this link-local address: no pod-CIDR address
/// is spent on a gateway.
pub const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// The IPv6 twin of `POD_GATEWAY`: link-local, so it is the same on every
/// pod's link and never routed; the host end of each pod's pair holds it.
pub const POD_GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// The pod's device pair (`device`) with its pod end created directly in
/// the namespace open as `ns_fd`, both ends with `mtu` (removing leftovers
/// of an earlier attempt on the node first). Returns the host side: the
/// veth's host end, or netkit's primary.
pub async fn create_pair_into(
    host: &Netlink,
    device: PodDevice,
    host_name: &str,
    peer_tmp: &str,
    ns_fd: RawFd,
    mtu: u32,
) -> Result<LinkInfo> {
    host.delete_link(host_name).await?;
    host.delete_link(peer_tmp).await?;
    match device {
        PodDevice::Veth => host.add_veth_into(host_name, peer_tmp, ns_fd, mtu).await?,
        PodDevice::Netkit => host.add_netkit_into(host_name, peer_tmp, ns_fd, mtu).await?,
    }
    host.require_link(host_name).await
}

/// Inside the pod: name, MTU, address, routes, gateway neighbour (at
/// `host_mac`; `None` on a NOARP device, netkit's L3 mode, which needs none).
/// `ip` is `None` on an IPv6-only node: the interface is named, sized and
/// up, with no IPv4 at all (`configure_pod_side6` gives it its address).
pub async fn configure_pod_side(
    pod: &Netlink,
    peer_tmp: &str,
    ifname: &str,
    mtu: u32,
    ip: Option<Ipv4Addr>,
    host_mac: Option<[u8; 6]>,
) -> Result<LinkInfo> {
    let link = pod.require_link(peer_tmp).await?;
    pod.set_name(link.index, ifname).await?;
    // Each request skipped is a round trip under rtnl saved: the device
    // may have been made with its MTU and up (`Netlink::add_veth_into`).
    if link.mtu != mtu {
        pod.set_mtu(link.index, mtu).await?;
    }
    if !link.admin_up {
        pod.set_up(link.index).await?;
    }
    if let Some(lo) = pod.link_by_name("lo").await? {
        if !lo.admin_up {
            pod.set_up(lo.index).await?;
        }
    }
    if let Some(ip) = ip {
        pod.add_address(link.index, ip.into(), 32).await?;
        pod.add_link_route(link.index, POD_GATEWAY, 32).await?;
        pod.add_default_route(link.index, POD_GATEWAY).await?;
        if let Some(mac) = host_mac {
            pod.add_permanent_neighbour(link.index, POD_GATEWAY, mac).await?;
        }
    }
    pod.require_link(ifname).await
}

/// On the node: host side up, route and neighbour to the pod (none on a
/// NOARP device).
pub async fn configure_host_side(
    host: &Netlink,
    host_link: &LinkInfo,
    ip: Option<Ipv4Addr>,
    pod_mac: Option<[u8; 6]>,
) -> Result<()> {
    if !host_link.admin_up {
        host.set_up(host_link.index).await?;
    }
    // IPv6-only (`ip` None): the host end is only set up here.
    let Some(ip) = ip else { return Ok(()) };
    host.add_link_route(host_link.index, ip, 32).await?;
    match pod_mac {
        Some(mac) => host.add_permanent_neighbour(host_link.index, ip, mac).await,
        None => Ok(()),
    }
}

/// Inside the pod, IPv6 (after `configure_pod_side`, which named the
/// interface `ifname`): IPv6 on for it, the `/128` without DAD, the default
/// route via `POD_GATEWAY6` and (veth) the gateway's permanent neighbour at
/// `host_mac`. `pod_ns` is the pod's namespace, for the sysctl.
pub async fn configure_pod_side6(
    pod: &Netlink,
    pod_ns: &Path,
    link: &LinkInfo,
    ip6: Ipv6Addr,
    host_mac: Option<[u8; 6]>,
) -> Result<()> {
    let ifname = link.name.clone();
    crate::net::netns::run_in(pod_ns, move || netlink6::enable_ipv6_on(&ifname))?;
    pod.add_address6_nodad(link.index, ip6, 128).await?;
    pod.add_default_route6(link.index, POD_GATEWAY6).await?;
    if let Some(mac) = host_mac {
        pod.add_permanent_neighbour6(link.index, POD_GATEWAY6, mac).await?;
    }
    Ok(())
}

/// On the node, IPv6 (after `configure_host_side`, which set the host end
/// up): IPv6 on for the host end, `POD_GATEWAY6` on it, the route and (veth)
/// the neighbour to the pod.
pub async fn configure_host_side6(
    host: &Netlink,
    host_link: &LinkInfo,
    ip6: Ipv6Addr,
    pod_mac: Option<[u8; 6]>,
) -> Result<()> {
    netlink6::enable_ipv6_on(&host_link.name)?;
    host.add_address6_nodad(host_link.index, POD_GATEWAY6, 64).await?;
    host.add_link_route6(host_link.index, ip6, 128).await?;
    match pod_mac {
        Some(mac) => host.add_permanent_neighbour6(host_link.index, ip6, mac).await,
        None => Ok(()),
    }
}

/// The endpoint entry: this address lives behind this host veth. Under the
/// pin directory's shared lock, taken before the map is opened: an agent
/// migrating `ENDPOINTS` meanwhile would lose an entry written into the map
/// it is replacing.
pub fn insert_endpoint(pins: &PinDir, ip: Ipv4Addr, host_link: &LinkInfo, pod_mac: [u8; 6]) -> Result<()> {
    let ep = EndpointInfo { host_ifindex: host_link.index, pod_mac, host_mac: host_link.mac };
    let _lock = PinLock::shared(pins)?;
    Endpoints::open(pins)?.insert(ip, ep)
}

/// The IPv6 twin of `insert_endpoint` (`ENDPOINTS6`, the same value).
pub fn insert_endpoint6(pins: &PinDir, ip6: Ipv6Addr, host_link: &LinkInfo, pod_mac: [u8; 6]) -> Result<()> {
    let ep = EndpointInfo { host_ifindex: host_link.index, pod_mac, host_mac: host_link.mac };
    let _lock = PinLock::shared(pins)?;
    Endpoints6::open(pins)?.insert(ip6, ep)
}

/// The IPv6 twin of `remove_endpoint`.
pub fn remove_endpoint6(pins: &PinDir, ip6: Ipv6Addr) -> Result<()> {
    let _lock = PinLock::shared(pins)?;
    Endpoints6::open(pins)?.remove(ip6)
}

/// Remove `ip`'s endpoint entry (an absent one counts as removed), under
/// the pin directory's shared lock like `insert_endpoint`.
pub fn remove_endpoint(pins: &PinDir, ip: Ipv4Addr) -> Result<()> {
    let _lock = PinLock::shared(pins)?;
    Endpoints::open(pins)?.remove(ip)
}

/// The device kind's programs (the pinned ones) on the host side, made
/// the node's way (`AttachMode`, from `NODE_CONFIG`) and pinned: `from_pod`
/// on ingress (veth) or `from_pod_netkit` as the netkit peer program,
/// `to_pod` on egress. Charges `step_timer` steps `attach-open` (the mode
/// and the programs from their pins) and one per attachment.
pub fn attach_pod_programs(pins: &PinDir, device: PodDevice, host_name: &str) -> Result<()> {
    let mode = AttachMode::of_node(pins)?;
    let mut progs = Vec::new();
    for program in device.programs() {
        let prog_pin = pins.prog(program);
        progs.push(SchedClassifier::from_pin(&prog_pin).with_context(|| format!("open {}", prog_pin.display()))?);
    }
    step_timer::mark("attach-open");
    for (program, mut prog) in device.programs().into_iter().zip(progs) {
        let link_pin = pins.link(program, host_name);
        links::unpin_link(&link_pin)?;
        links::attach_and_pin(&mut prog, program, host_name, &link_pin, mode)?;
        step_timer::mark(attach_step(program));
    }
    Ok(())
}

/// The `step_timer` step of a pod program's attachment.
fn attach_step(program: &str) -> &'static str {
    match program {
        programs::FROM_POD => "attach-from_pod",
        programs::FROM_POD_NETKIT => "attach-from_pod_netkit",
        programs::TO_POD => "attach-to_pod",
        _ => "attach-other",
    }
}

/// Detach every pod program from the host side (their filters, if tc, and
/// their pins).
pub fn detach_pod_programs(pins: &PinDir, host_name: &str) -> Result<()> {
    for program in links::ANY_POD_PROGRAMS {
        links::detach(&pins.link(program, host_name), program, host_name)?;
    }
    Ok(())
}

/// Fail early, naming the agent, when the datapath is not loaded.
pub fn require_datapath(pins: &PinDir) -> Result<()> {
    let prog_pin = pins.prog(programs::FROM_POD);
    if !Path::new(&prog_pin).exists() {
        return Err(anyhow!(
            "{} is missing: is sluice-agent running with pin dir {}?",
            prog_pin.display(),
            pins.root().display()
        ));
    }
    Endpoints::open(pins).map(|_| ())
}
