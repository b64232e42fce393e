//! The node's VXLAN device for peers on other networks (issue 15): one per
//! node, in external (collect_md) mode on UDP 8472, bound to the uplink,
//! as `ip link add sluice_vxlan type vxlan external dstport 8472 dev
//! <uplink>` makes it. The datapath names the remote end of each packet
//! (`bpf_skb_set_tunnel_key`); the device has no VNI and no remote of its
//! own.
//!
//! `request` (pure: what is sent, through rtnetlink's vxlan builder, with
//! no VNI) and `check` (pure: is an existing device the one wanted) are
//! unit-tested, `ensure` and `delete` do it.
use anyhow::{Context, Result};
use futures::TryStreamExt;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo as Info, LinkMessage,
};
use rtnetlink::{LinkMessageBuilder, LinkVxlan};
use sluice_common::maps::TUNNEL_PORT;
use tracing::{info, warn};

use super::netlink::{is_errno, link_info, LinkInfo, Netlink};

/// The device's name (no dot: it is part of link pin names).
pub const DEVICE: &str = "sluice_vxlan";

/// The create request: name, kind vxlan, collect metadata, destination
/// port, lower device, no `IFLA_VXLAN_ID` (iproute2 refuses `external`
/// with `id`, and the kernel would take it as a fixed-VNI device),
/// `NOARP`: the kernel routes to tunneled peers' pod CIDRs point at the
/// device without a gateway; with ARP off their neighbours need no
/// resolution (the datapath names the remote end, and the receiving node
/// rewrites the inner MACs), and **no learning**, as iproute2's `external`
/// sets it (the kernel's default is on): a learning device snoops each
/// decapsulated frame's inner source MAC and drops the frame when that is
/// not a valid unicast address (`vxlan_snoop`: `MAC_INVALID_SOURCE`), and a
/// netkit L3 pod's frames carry all-zero MACs, so every packet such a pod
/// sent through the tunnel to a node's stack (a reply to the remote node)
/// was dropped there, uncounted by sluice (issue 26). The datapath names
/// the remote end of each packet: there is nothing to learn.
pub fn request(name: &str, uplink_ifindex: u32) -> LinkMessage {
    LinkMessageBuilder::<LinkVxlan>::new(name)
        .collect_metadata(true)
        .port(TUNNEL_PORT)
        .dev(uplink_ifindex)
        .learning(false)
        .arp(false)
        .build()
}

/// The change that turns learning off on an existing device (`ip link set
/// <name> type vxlan nolearning`): the one difference `ensure` repairs in
/// place, so an upgraded node keeps its device (and the links on it).
pub fn no_learning_change(index: u32) -> LinkMessage {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg.attributes.push(LinkAttribute::LinkInfo(vec![
        Info::Kind(InfoKind::Vxlan),
        Info::Data(InfoData::Vxlan(vec![InfoVxlan::Learning(false)])),
    ]));
    msg
}

/// How an existing link differs from the device wanted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mismatch {
    NotVxlan,
    NotExternal,
    Port(u16),
    Lower(u32),
    Arp,
    /// Learning on (devices made before issue 26's fix): repaired in place.
    Learning,
}

/// A VXLAN link's own attributes (`None`: not a VXLAN link; empty when
/// the kernel sent none).
fn vxlan_data(msg: &LinkMessage) -> Option<&[InfoVxlan]> {
    let infos = msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(i) => Some(i),
        _ => None,
    })?;
    if !infos.iter().any(|i| matches!(i, Info::Kind(InfoKind::Vxlan))) {
        return None;
    }
    Some(
        infos
            .iter()
            .find_map(|i| match i {
                Info::Data(InfoData::Vxlan(d)) => Some(d.as_slice()),
                _ => None,
            })
            .unwrap_or(&[]),
    )
}

/// Is `msg` the device `request` makes (vxlan, external, port 8472, on the
/// uplink)? An empty list means yes.
pub fn check(msg: &LinkMessage, uplink_ifindex: u32) -> Vec<Mismatch> {
    let Some(data) = vxlan_data(msg) else { return vec![Mismatch::NotVxlan] };
    let mut out = Vec::new();
    if !msg.header.flags.contains(LinkFlags::Noarp) {
        out.push(Mismatch::Arp);
    }
    if !data.iter().any(|d| matches!(d, InfoVxlan::CollectMetadata(true))) {
        out.push(Mismatch::NotExternal);
    }
    let port = data.iter().find_map(|d| if let InfoVxlan::Port(p) = d { Some(*p) } else { None }).unwrap_or(0);
    if port != TUNNEL_PORT {
        out.push(Mismatch::Port(port));
    }
    let lower = data.iter().find_map(|d| if let InfoVxlan::Link(l) = d { Some(*l) } else { None }).unwrap_or(0);
    if lower != uplink_ifindex {
        out.push(Mismatch::Lower(lower));
    }
    // The kernel always reports it; a message without it is taken as on
    // (the kernel's default).
    if !data.iter().any(|d| matches!(d, InfoVxlan::Learning(false))) {
        out.push(Mismatch::Learning);
    }
    out
}

/// A VXLAN device other than sluice's that listens on UDP 8472.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortHolder {
    pub name: String,
    /// Its fixed VNI (`None` for an external device).
    pub vni: Option<u32>,
}

/// Every VXLAN device in `links` but `own` whose destination port is
/// `TUNNEL_PORT` (flannel.1 is one: Flannel's VXLAN backend uses 8472).
pub fn port_holders(links: &[LinkMessage], own: &str) -> Vec<PortHolder> {
    let mut out = Vec::new();
    for msg in links {
        let name = msg.attributes.iter().find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        });
        let Some(name) = name.filter(|n| n != own) else { continue };
        let Some(data) = vxlan_data(msg) else { continue };
        let port = data.iter().find_map(|d| if let InfoVxlan::Port(p) = d { Some(*p) } else { None });
        if port != Some(TUNNEL_PORT) {
            continue;
        }
        let external = data.iter().any(|d| matches!(d, InfoVxlan::CollectMetadata(true)));
        let vni = data.iter().find_map(|d| if let InfoVxlan::Id(v) = d { Some(*v) } else { None });
        out.push(PortHolder { name, vni: vni.filter(|_| !external) });
    }
    out
}

/// What the agent says when its device cannot open UDP 8472: who holds
/// it, by name, and what to do.
pub fn port_taken_message(device: &str, holders: &[PortHolder]) -> String {
    let what = match holders {
        [] => format!(
            "a socket that is not a VXLAN device (see `ss -ulpn sport = :{TUNNEL_PORT}`) holds UDP {TUNNEL_PORT}"
        ),
        _ => {
            let names: Vec<String> = holders
                .iter()
                .map(|h| match h.vni {
                    Some(vni) => format!("{} (VNI {vni})", h.name),
                    None => format!("{} (external)", h.name),
                })
                .collect();
            let one = holders.len() == 1;
            format!(
                "UDP {TUNNEL_PORT} is taken by VXLAN device{} {} (another pod network's overlay? flannel.1 is \
                 Flannel's)",
                if one { "" } else { "s" },
                names.join(", ")
            )
        }
    };
    format!(
        "cannot bring up VXLAN device {device}: {what}; remove it (`ip link del <device>`), or run with \
         --tunnel=never if every node shares one subnet"
    )
}

impl Netlink {
    /// Every VXLAN device but `own` on UDP 8472.
    pub async fn vxlan_port_holders(&self, own: &str) -> Result<Vec<PortHolder>> {
        let mut msgs = Vec::new();
        let mut links = self.handle.link().get().execute();
        while let Some(msg) = links.try_next().await.context("list links")? {
            msgs.push(msg);
        }
        Ok(port_holders(&msgs, own))
    }

    /// Set the device up; when UDP 8472 is already bound (`EADDRINUSE`),
    /// say who holds it and remove the device just made.
    async fn vxlan_up(&self, name: &str, index: u32, made_now: bool) -> Result<()> {
        let Err(e) = self.set_up(index).await else { return Ok(()) };
        let in_use = e.downcast_ref::<rtnetlink::Error>().is_some_and(|e| is_errno(e, libc::EADDRINUSE));
        if !in_use {
            return Err(e).with_context(|| format!("set {name} up"));
        }
        let holders = self.vxlan_port_holders(name).await.unwrap_or_default();
        if made_now {
            if let Err(e) = self.delete_link(name).await {
                warn!(device = name, error = %e, "could not remove the VXLAN device that failed to come up");
            }
        }
        anyhow::bail!(port_taken_message(name, &holders))
    }

    async fn link_message(&self, name: &str) -> Result<Option<LinkMessage>> {
        let mut links = self.handle.link().get().match_name(name.to_string()).execute();
        match links.try_next().await {
            Ok(m) => Ok(m),
            Err(e) if is_errno(&e, libc::ENODEV) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("get link {name}")),
        }
    }

    /// Make sure the VXLAN device `name` exists as `request` describes and
    /// is up: kept when it already is (restarts leave it in place), made
    /// again when it differs (an older or foreign device of that name).
    /// `mtu`, when given, is set on it (made or kept): the kernel's
    /// default leaves room for an IPv4 outer header only, and an IPv6-only
    /// node's device sends over IPv6 (20 bytes more).
    pub async fn ensure_vxlan(&self, name: &str, uplink_ifindex: u32, mtu: Option<u32>) -> Result<LinkInfo> {
        let link = self.ensure_vxlan_device(name, uplink_ifindex).await?;
        match mtu.filter(|m| *m != link.mtu) {
            None => Ok(link),
            Some(mtu) => {
                self.set_mtu(link.index, mtu).await.with_context(|| format!("set {name}'s MTU to {mtu}"))?;
                info!(device = name, from = link.mtu, to = mtu, "VXLAN device MTU set");
                self.require_link(name).await
            }
        }
    }

    async fn ensure_vxlan_device(&self, name: &str, uplink_ifindex: u32) -> Result<LinkInfo> {
        if let Some(msg) = self.link_message(name).await? {
            let mut wrong = check(&msg, uplink_ifindex);
            if wrong.contains(&Mismatch::Learning) {
                let index = link_info(&msg).index;
                self.handle.link().change(no_learning_change(index)).execute().await.with_context(|| {
                    format!("turn learning off on VXLAN device {name} (inner frames with no valid source MAC)")
                })?;
                info!(device = name, "VXLAN device: learning turned off");
                wrong.retain(|m| *m != Mismatch::Learning);
            }
            if wrong.is_empty() {
                let link = link_info(&msg);
                if !link.up {
                    self.vxlan_up(name, link.index, false).await?;
                }
                return self.require_link(name).await;
            }
            warn!(device = name, mismatch = ?wrong, "VXLAN device differs from what sluice makes; recreating it");
            self.delete_link(name).await?;
        }
        self.handle.link().add(request(name, uplink_ifindex)).execute().await.with_context(|| {
            format!("create VXLAN device {name} (external, UDP {TUNNEL_PORT}, on uplink #{uplink_ifindex})")
        })?;
        let link = self.require_link(name).await?;
        self.vxlan_up(name, link.index, true).await?;
        info!(device = name, ifindex = link.index, mtu = link.mtu, "VXLAN device created");
        self.require_link(name).await
    }

    /// Whether `name` is a VXLAN device as sluice makes them (for `status`
    /// and tests): `None` when there is no such link.
    pub async fn vxlan_mismatches(&self, name: &str, uplink_ifindex: u32) -> Result<Option<Vec<Mismatch>>> {
        Ok(self.link_message(name).await?.map(|m| check(&m, uplink_ifindex)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(attrs: Vec<LinkAttribute>) -> LinkMessage {
        let mut m = request(DEVICE, 7);
        m.attributes = attrs;
        m
    }

    #[test]
    fn the_request_is_external_without_a_vni() {
        let msg = request(DEVICE, 7);
        assert!(msg.attributes.contains(&LinkAttribute::IfName(DEVICE.into())));
        assert!(msg.header.flags.contains(LinkFlags::Noarp) && msg.header.change_mask.contains(LinkFlags::Noarp));
        let data = vxlan_data(&msg).expect("a vxlan link");
        assert!(!data.iter().any(|d| matches!(d, InfoVxlan::Id(_))), "external mode takes no VNI: {data:?}");
        assert!(data.contains(&InfoVxlan::CollectMetadata(true)));
        assert!(data.contains(&InfoVxlan::Port(8472)));
        assert!(data.contains(&InfoVxlan::Link(7)));
        assert!(data.contains(&InfoVxlan::Learning(false)), "no learning, as iproute2's external: {data:?}");
        assert!(DEVICE.len() <= 15 && !DEVICE.contains('.'));
    }

    #[test]
    fn the_holder_of_8472_is_named() {
        let vxlan = |name: &str, data: Vec<InfoVxlan>| {
            message(vec![
                LinkAttribute::IfName(name.into()),
                LinkAttribute::LinkInfo(vec![Info::Kind(InfoKind::Vxlan), Info::Data(InfoData::Vxlan(data))]),
            ])
        };
        let links = vec![
            request(DEVICE, 7),
            vxlan("flannel.1", vec![InfoVxlan::Id(1), InfoVxlan::Port(8472), InfoVxlan::Link(7)]),
            vxlan("vx4789", vec![InfoVxlan::Id(5), InfoVxlan::Port(4789)]),
            vxlan("cilium_vxlan", vec![InfoVxlan::CollectMetadata(true), InfoVxlan::Id(0), InfoVxlan::Port(8472)]),
            message(vec![LinkAttribute::IfName("eth0".into())]),
        ];
        let holders = port_holders(&links, DEVICE);
        assert_eq!(
            holders,
            vec![
                PortHolder { name: "flannel.1".into(), vni: Some(1) },
                PortHolder { name: "cilium_vxlan".into(), vni: None }
            ]
        );
        let m = port_taken_message(DEVICE, &holders[..1]);
        assert_eq!(
            m,
            "cannot bring up VXLAN device sluice_vxlan: UDP 8472 is taken by VXLAN device flannel.1 (VNI 1) \
             (another pod network's overlay? flannel.1 is Flannel's); remove it (`ip link del <device>`), or run \
             with --tunnel=never if every node shares one subnet"
        );
        assert!(port_taken_message(DEVICE, &holders).contains("devices flannel.1 (VNI 1), cilium_vxlan (external)"));
        assert!(port_taken_message(DEVICE, &[]).contains("a socket that is not a VXLAN device"));
    }

    #[test]
    fn check_table() {
        assert!(check(&request(DEVICE, 7), 7).is_empty(), "what we make is what we want");
        assert_eq!(check(&request(DEVICE, 7), 8), vec![Mismatch::Lower(7)]);
        let veth = message(vec![
            LinkAttribute::IfName(DEVICE.into()),
            LinkAttribute::LinkInfo(vec![Info::Kind(InfoKind::Veth)]),
        ]);
        assert_eq!(check(&veth, 7), vec![Mismatch::NotVxlan]);
        assert_eq!(check(&message(vec![]), 7), vec![Mismatch::NotVxlan]);
        let fixed_vni = message(vec![LinkAttribute::LinkInfo(vec![
            Info::Kind(InfoKind::Vxlan),
            Info::Data(InfoData::Vxlan(vec![InfoVxlan::Id(42), InfoVxlan::Port(4789), InfoVxlan::Link(7)])),
        ])]);
        // No IFLA_VXLAN_LEARNING: the kernel's default, learning on.
        assert_eq!(check(&fixed_vni, 7), vec![Mismatch::NotExternal, Mismatch::Port(4789), Mismatch::Learning]);
        let mut arp = request(DEVICE, 7);
        arp.header.flags = LinkFlags::empty();
        assert_eq!(check(&arp, 7), vec![Mismatch::Arp]);
        let mut learning = request(DEVICE, 7);
        learning.attributes = vec![LinkAttribute::LinkInfo(vec![
            Info::Kind(InfoKind::Vxlan),
            Info::Data(InfoData::Vxlan(vec![
                InfoVxlan::CollectMetadata(true),
                InfoVxlan::Port(8472),
                InfoVxlan::Link(7),
                InfoVxlan::Learning(true),
            ])),
        ])];
        assert_eq!(check(&learning, 7), vec![Mismatch::Learning]);
        // The repair names only learning (the kernel refuses to change
        // collect_metadata on an existing device).
        let change = no_learning_change(9);
        assert_eq!(change.header.index, 9);
        assert_eq!(vxlan_data(&change), Some(&[InfoVxlan::Learning(false)][..]));
    }
}
