//! The node's VXLAN device for peers on other networks (issue 15): one per
//! node, in external (collect_md) mode on UDP 8472, bound to the uplink,
//! as `ip link add sluice_vxlan type vxlan external dstport 8472 dev
//! <uplink>` makes it. The datapath names the remote end of each packet
//! (`bpf_skb_set_tunnel_key`); the device has no VNI and no remote of its
//! own.
//!
//! rtnetlink 0.14's vxlan builder always sends a VNI, which the kernel
//! takes as a fixed-VNI device (iproute2 refuses `external` with `id`), so
//! the request is built here from netlink-packet-route's attributes:
//! `request` (pure: what is sent) and `check` (pure: is an existing device
//! the one wanted) are unit-tested, `ensure` and `delete` do it.
use anyhow::{Context, Result};
use futures::TryStreamExt;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlag, LinkHeader, LinkInfo as Info, LinkMessage,
};
use sluice_common::maps::TUNNEL_PORT;
use tracing::{info, warn};

use super::netlink::{is_errno, link_info, LinkInfo, Netlink};

/// The device's name (no dot: it is part of link pin names).
pub const DEVICE: &str = "sluice_vxlan";

/// The attributes of the create request: name, kind vxlan, collect
/// metadata, destination port, lower device. No `IFLA_VXLAN_ID`.
pub fn request(name: &str, uplink_ifindex: u32) -> Vec<LinkAttribute> {
    vec![
        LinkAttribute::IfName(name.to_string()),
        LinkAttribute::LinkInfo(vec![
            Info::Kind(InfoKind::Vxlan),
            Info::Data(InfoData::Vxlan(vec![
                InfoVxlan::CollectMetadata(true),
                InfoVxlan::Port(TUNNEL_PORT),
                InfoVxlan::Link(uplink_ifindex),
            ])),
        ]),
    ]
}

/// The create request's header: `NOARP`. The kernel routes to tunneled
/// peers' pod CIDRs point at the device without a gateway; with ARP off
/// their neighbours need no resolution (the datapath names the remote end,
/// and the receiving node rewrites the inner MACs).
pub fn header() -> LinkHeader {
    LinkHeader { flags: vec![LinkFlag::Noarp], change_mask: vec![LinkFlag::Noarp], ..Default::default() }
}

/// How an existing link differs from the device wanted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mismatch {
    NotVxlan,
    NotExternal,
    Port(u16),
    Lower(u32),
    Arp,
}

/// Is `msg` the device `request` makes (vxlan, external, port 8472, on the
/// uplink)? An empty list means yes.
pub fn check(msg: &LinkMessage, uplink_ifindex: u32) -> Vec<Mismatch> {
    let infos = msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(i) => Some(i),
        _ => None,
    });
    let Some(infos) = infos else { return vec![Mismatch::NotVxlan] };
    if !infos.iter().any(|i| matches!(i, Info::Kind(InfoKind::Vxlan))) {
        return vec![Mismatch::NotVxlan];
    }
    let data: &[InfoVxlan] = infos
        .iter()
        .find_map(|i| match i {
            Info::Data(InfoData::Vxlan(d)) => Some(d.as_slice()),
            _ => None,
        })
        .unwrap_or(&[]);
    let mut out = Vec::new();
    if !msg.header.flags.contains(&LinkFlag::Noarp) {
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
    out
}

impl Netlink {
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
    pub async fn ensure_vxlan(&self, name: &str, uplink_ifindex: u32) -> Result<LinkInfo> {
        if let Some(msg) = self.link_message(name).await? {
            let wrong = check(&msg, uplink_ifindex);
            if wrong.is_empty() {
                let link = link_info(&msg);
                if !link.up {
                    self.set_up(link.index).await.with_context(|| format!("set {name} up"))?;
                }
                return self.require_link(name).await;
            }
            warn!(device = name, mismatch = ?wrong, "VXLAN device differs from what sluice makes; recreating it");
            self.delete_link(name).await?;
        }
        let mut req = self.handle.link().add();
        req.message_mut().header = header();
        req.message_mut().attributes.extend(request(name, uplink_ifindex));
        req.execute().await.with_context(|| {
            format!("create VXLAN device {name} (external, UDP {TUNNEL_PORT}, on uplink #{uplink_ifindex})")
        })?;
        let link = self.require_link(name).await?;
        self.set_up(link.index).await.with_context(|| format!("set {name} up"))?;
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
    use netlink_packet_route::link::LinkMessage;

    use super::*;

    fn message(attrs: Vec<LinkAttribute>) -> LinkMessage {
        let mut m = LinkMessage::default();
        m.header = header();
        m.attributes = attrs;
        m
    }

    #[test]
    fn the_request_is_external_without_a_vni() {
        let attrs = request(DEVICE, 7);
        let LinkAttribute::LinkInfo(infos) = &attrs[1] else { panic!("{attrs:?}") };
        let Info::Data(InfoData::Vxlan(data)) = &infos[1] else { panic!("{infos:?}") };
        assert!(!data.iter().any(|d| matches!(d, InfoVxlan::Id(_))), "external mode takes no VNI: {data:?}");
        assert!(data.contains(&InfoVxlan::CollectMetadata(true)));
        assert!(data.contains(&InfoVxlan::Port(8472)));
        assert!(data.contains(&InfoVxlan::Link(7)));
        assert!(DEVICE.len() <= 15 && !DEVICE.contains('.'));
    }

    #[test]
    fn check_table() {
        assert!(check(&message(request(DEVICE, 7)), 7).is_empty(), "what we make is what we want");
        assert_eq!(check(&message(request(DEVICE, 7)), 8), vec![Mismatch::Lower(7)]);
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
        assert_eq!(check(&fixed_vni, 7), vec![Mismatch::NotExternal, Mismatch::Port(4789)]);
        let mut arp = message(request(DEVICE, 7));
        arp.header.flags.clear();
        assert_eq!(check(&arp, 7), vec![Mismatch::Arp]);
    }
}
