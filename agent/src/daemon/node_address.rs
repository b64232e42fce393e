//! The node's own address on its uplink, followed while the agent runs.
//!
//! Whether a peer is reached natively or through VXLAN depends on this
//! node's subnet as much as on the peer's, and the eBPF decapsulation
//! checks that a tunnel packet is addressed to this node. A node
//! re-addressed (moved into another rack's subnet) without restarting its
//! agent must judge its peers from where it is now.
use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use ipnetwork::Ipv4Network;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeAddress {
    pub ip: Ipv4Addr,
    /// The uplink's subnet (`ip` with its prefix, host bits cleared).
    pub network: Ipv4Network,
}

impl NodeAddress {
    pub fn new(ip: Ipv4Addr, prefix: u8) -> Result<Self> {
        let with_prefix = Ipv4Network::new(ip, prefix).context("uplink address")?;
        Ok(Self { ip, network: Ipv4Network::new(with_prefix.network(), prefix)? })
    }

    /// What a fresh reading of the uplink's first IPv4 address means: the
    /// new address when it moved. No address at all (between a flush and
    /// the new address, say) is no move: the last one is kept.
    pub fn moved(&self, now: Option<(Ipv4Addr, u8)>) -> Option<NodeAddress> {
        let (ip, prefix) = now?;
        let now = Self::new(ip, prefix).ok()?;
        (now != *self).then_some(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ip: &str, prefix: u8) -> NodeAddress {
        NodeAddress::new(ip.parse().unwrap(), prefix).unwrap()
    }

    #[test]
    fn the_network_has_its_host_bits_cleared() {
        assert_eq!(at("172.30.0.3", 24).network.to_string(), "172.30.0.0/24");
    }

    #[test]
    fn the_same_address_is_no_move_and_no_address_keeps_the_last() {
        let a = at("172.30.0.3", 24);
        assert_eq!(a.moved(Some(("172.30.0.3".parse().unwrap(), 24))), None);
        assert_eq!(a.moved(None), None);
    }

    #[test]
    fn a_new_address_or_prefix_is_a_move() {
        let a = at("172.30.0.3", 24);
        assert_eq!(a.moved(Some(("172.31.0.3".parse().unwrap(), 24))), Some(at("172.31.0.3", 24)));
        assert_eq!(a.moved(Some(("172.30.0.3".parse().unwrap(), 16))), Some(at("172.30.0.3", 16)));
    }
}
