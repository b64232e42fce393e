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
//! Neither rtnetlink 0.14 nor netlink-packet-route 0.19 knows the kind, so
//! `request` builds the `IFLA_INFO_DATA` attributes from
//! `include/uapi/linux/if_link.h` (pure, unit-tested); `Netlink::add_netkit_into`
//! sends it.
use std::os::fd::RawFd;

use anyhow::{Context, Result};
use netlink_packet_route::link::{InfoData, InfoKind, LinkAttribute, LinkInfo as Info, LinkMessage};
use netlink_packet_utils::{nla::DefaultNla, Emitable};

use super::netlink::Netlink;

/// The kind name the kernel registers (`rtnl_link_ops.kind`).
pub const KIND: &str = "netkit";

// IFLA_NETKIT_* (if_link.h).
const IFLA_NETKIT_PEER_INFO: u16 = 1;
const IFLA_NETKIT_POLICY: u16 = 3;
const IFLA_NETKIT_PEER_POLICY: u16 = 4;
const IFLA_NETKIT_MODE: u16 = 5;

// enum netkit_action, enum netkit_mode.
const NETKIT_PASS: u32 = 0;
const NETKIT_DROP: u32 = 2;
const NETKIT_L3: u32 = 1;

/// The attributes of the create request: the primary `host` here with
/// `mtu`, kind netkit, L3 mode, policies (primary pass, peer drop), and the
/// peer `peer` with `mtu` made in the namespace open as `ns_fd`.
pub fn request(host: &str, peer: &str, ns_fd: RawFd, mtu: u32) -> Vec<LinkAttribute> {
    let mut peer_msg = LinkMessage::default();
    peer_msg.attributes =
        vec![LinkAttribute::IfName(peer.to_string()), LinkAttribute::Mtu(mtu), LinkAttribute::NetNsFd(ns_fd)];
    // IFLA_NETKIT_PEER_INFO carries an ifinfomsg followed by attributes,
    // exactly what a link message emits.
    let mut peer_info = vec![0u8; peer_msg.buffer_len()];
    peer_msg.emit(&mut peer_info);
    let data = [
        DefaultNla::new(IFLA_NETKIT_MODE, NETKIT_L3.to_ne_bytes().to_vec()),
        DefaultNla::new(IFLA_NETKIT_POLICY, NETKIT_PASS.to_ne_bytes().to_vec()),
        DefaultNla::new(IFLA_NETKIT_PEER_POLICY, NETKIT_DROP.to_ne_bytes().to_vec()),
        DefaultNla::new(IFLA_NETKIT_PEER_INFO, peer_info),
    ];
    let mut info_data = vec![0u8; data.as_slice().buffer_len()];
    data.as_slice().emit(&mut info_data);
    vec![
        LinkAttribute::IfName(host.to_string()),
        LinkAttribute::Mtu(mtu),
        LinkAttribute::LinkInfo(vec![Info::Kind(InfoKind::Other(KIND.into())), Info::Data(InfoData::Other(info_data))]),
    ]
}

impl Netlink {
    /// A netkit pair: primary `host` here, peer `peer` created in the
    /// namespace open as `ns_fd` (no later move), both with `mtu`.
    pub async fn add_netkit_into(&self, host: &str, peer: &str, ns_fd: RawFd, mtu: u32) -> Result<()> {
        let mut req = self.handle.link().add();
        req.message_mut().attributes.extend(request(host, peer, ns_fd, mtu));
        req.execute().await.with_context(|| format!("create netkit {host} <-> {peer} (peer in the pod's namespace)"))
    }
}

#[cfg(test)]
mod tests {
    use netlink_packet_route::link::LinkMessageBuffer;
    use netlink_packet_utils::{
        nla::{NlaBuffer, NlasIterator},
        Parseable,
    };

    use super::*;

    fn u32_at(v: &[u8]) -> u32 {
        u32::from_ne_bytes(v[..4].try_into().unwrap())
    }

    #[test]
    fn the_request_is_an_l3_pair_whose_peer_is_made_in_the_pod_and_fails_closed() {
        let attrs = request("slc0", "tmp0", 9, 1450);
        assert_eq!(attrs[0], LinkAttribute::IfName("slc0".into()));
        assert_eq!(attrs[1], LinkAttribute::Mtu(1450));
        let LinkAttribute::LinkInfo(infos) = &attrs[2] else { panic!("{attrs:?}") };
        assert_eq!(infos[0], Info::Kind(InfoKind::Other("netkit".into())));
        let Info::Data(InfoData::Other(data)) = &infos[1] else { panic!("{infos:?}") };
        let mut seen = std::collections::BTreeMap::new();
        for nla in NlasIterator::new(data.as_slice()) {
            let nla: NlaBuffer<&[u8]> = nla.unwrap();
            seen.insert(nla.kind(), nla.value().to_vec());
        }
        assert_eq!(u32_at(&seen[&IFLA_NETKIT_MODE]), NETKIT_L3);
        assert_eq!(u32_at(&seen[&IFLA_NETKIT_POLICY]), NETKIT_PASS);
        assert_eq!(u32_at(&seen[&IFLA_NETKIT_PEER_POLICY]), NETKIT_DROP);
        // The peer info parses back as a link message: name, MTU, netns.
        let peer_info = seen[&IFLA_NETKIT_PEER_INFO].clone();
        let peer = LinkMessage::parse(&LinkMessageBuffer::new(&peer_info)).unwrap();
        assert!(peer.attributes.contains(&LinkAttribute::IfName("tmp0".into())));
        assert!(peer.attributes.contains(&LinkAttribute::Mtu(1450)));
        assert!(peer.attributes.contains(&LinkAttribute::NetNsFd(9)));
    }
}
