//! netkit pod devices (Linux 6.7+): a pair like veth, but the program runs
//! in the pod's transmit path instead of after a backlog queue, and the
//! kernel skips the per-packet `netif_rx` hop when it redirects.
//!
//! The host end is netkit's *primary* device (in the node's namespace; only
//! a primary accepts programs, for itself or its peer); the pod end is the
//! *peer*, created directly in the pod's namespace. L3 mode: no MAC
//! addresses, no ARP. The peer's default policy is drop, so a pod sends
//! nothing that `from_pod_netkit` has not seen (fail closed, as when the
//! program is detached by `cleanup`); the primary's is pass.
//!
//! `request` (pure, unit-tested) is the create message, made with
//! rtnetlink's netkit builder; `Netlink::add_netkit_into` sends it.
use std::os::fd::RawFd;

use anyhow::{Context, Result};
use netlink_packet_route::link::{InfoData, InfoKind, InfoNetkit, LinkMessage, NetkitMode, NetkitPolicy};
use rtnetlink::{LinkMessageBuilder, LinkNetkit, LinkUnspec};

use super::netlink::Netlink;

/// The create message: the primary `host` here with `mtu`, kind netkit,
/// L3 mode, policies (primary pass, peer drop), and the peer `peer` with
/// `mtu` made in the namespace open as `ns_fd`.
pub fn request(host: &str, peer: &str, ns_fd: RawFd, mtu: u32) -> LinkMessage {
    let peer_msg = LinkUnspec::new_with_name(peer).mtu(mtu).setns_by_fd(ns_fd).build();
    LinkMessageBuilder::<LinkNetkit>::new_with_info_kind(InfoKind::Netkit)
        .name(host.to_string())
        .mtu(mtu)
        .set_info_data(InfoData::Netkit(vec![
            InfoNetkit::Mode(NetkitMode::L3),
            InfoNetkit::Policy(NetkitPolicy::Pass),
            InfoNetkit::PeerPolicy(NetkitPolicy::Drop),
            InfoNetkit::Peer(peer_msg),
        ]))
        .build()
}

impl Netlink {
    /// A netkit pair: primary `host` here, peer `peer` created in the
    /// namespace open as `ns_fd` (no later move), both with `mtu`.
    pub async fn add_netkit_into(&self, host: &str, peer: &str, ns_fd: RawFd, mtu: u32) -> Result<()> {
        self.handle
            .link()
            .add(request(host, peer, ns_fd, mtu))
            .execute()
            .await
            .with_context(|| format!("create netkit {host} <-> {peer} (peer in the pod's namespace)"))
    }
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::{Emitable, Parseable};
    use netlink_packet_route::link::{LinkAttribute, LinkInfo as Info};

    use super::*;

    #[test]
    fn the_request_is_an_l3_pair_whose_peer_is_made_in_the_pod_and_fails_closed() {
        // What goes on the wire, parsed back as the kernel would.
        let msg = request("slc0", "tmp0", 9, 1450);
        let mut bytes = vec![0u8; msg.buffer_len()];
        msg.emit(&mut bytes);
        let msg = LinkMessage::parse(bytes.as_slice()).unwrap();
        assert!(msg.attributes.contains(&LinkAttribute::IfName("slc0".into())));
        assert!(msg.attributes.contains(&LinkAttribute::Mtu(1450)));
        let infos = msg
            .attributes
            .iter()
            .find_map(|a| if let LinkAttribute::LinkInfo(i) = a { Some(i) } else { None })
            .expect("link info");
        assert_eq!(infos[0], Info::Kind(InfoKind::Netkit));
        let Info::Data(InfoData::Netkit(data)) = &infos[1] else { panic!("{infos:?}") };
        assert!(data.contains(&InfoNetkit::Mode(NetkitMode::L3)));
        assert!(data.contains(&InfoNetkit::Policy(NetkitPolicy::Pass)));
        assert!(data.contains(&InfoNetkit::PeerPolicy(NetkitPolicy::Drop)));
        // The peer: name, MTU, made in the pod's namespace.
        let peer = data.iter().find_map(|d| if let InfoNetkit::Peer(p) = d { Some(p) } else { None }).expect("peer");
        assert!(peer.attributes.contains(&LinkAttribute::IfName("tmp0".into())));
        assert!(peer.attributes.contains(&LinkAttribute::Mtu(1450)));
        assert!(peer.attributes.contains(&LinkAttribute::NetNsFd(9)));
    }
}
