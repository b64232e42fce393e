//! Is the conflist's `podCIDR` this node's? (pure)
//!
//! The agent writes the conflist, but a stale one (an earlier node
//! configuration: the node rejoined with another pod CIDR, a conflist left
//! from another install) would hand out addresses no node routes here: pods
//! that start, get an address and never receive a packet. The agent records
//! its pod CIDR in the pinned `NODE_CONFIG` each time it starts; ADD checks
//! the conflist against it before allocating anything.
use ipnetwork::{Ipv4Network, Ipv6Network};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CidrMismatch {
    #[error(
        "the network config's podCIDR {conflist} is not within this node's pod CIDR {node} (the agent's, \
         pinned in NODE_CONFIG): a stale conflist from an earlier node configuration? Addresses from it are \
         routed to no pod here; restart the agent to rewrite the conflist"
    )]
    Outside { conflist: Ipv4Network, node: Ipv4Network },
    #[error("the agent has not recorded this node's pod CIDR in NODE_CONFIG yet")]
    NotRecorded,
    #[error(
        "the network config's podCIDR6 {conflist} is not within this node's IPv6 pod CIDR {node} (the agent's, \
         pinned in NODE_CONFIG): a stale conflist? restart the agent to rewrite the conflist"
    )]
    Outside6 { conflist: Ipv6Network, node: Ipv6Network },
    #[error(
        "the network config has podCIDR6 {0} but the agent runs this node IPv4-only (no IPv6 pod CIDR in \
         NODE_CONFIG): a stale conflist, or an agent without --ip-family dual or ipv6"
    )]
    NotDualStack(Ipv6Network),
    #[error(
        "the network config has no podCIDR (an IPv6-only node's) but the agent runs this node with the IPv4 pod \
         CIDR {node} (pinned in NODE_CONFIG): a stale conflist? restart the agent to rewrite the conflist"
    )]
    NotIpv6Only { node: Ipv4Network },
}

/// The conflist's IPv4 side against the node's: with a `podCIDR`, `check`;
/// without one (an IPv6-only node's conflist) the node must have no IPv4
/// pod CIDR either (pure). The IPv6 side is `check6`'s.
pub fn check4(conflist: Option<Ipv4Network>, node: Option<Ipv4Network>) -> Result<(), CidrMismatch> {
    match (conflist, node) {
        (Some(conflist), node) => check(conflist, node),
        (None, Some(node)) => Err(CidrMismatch::NotIpv6Only { node }),
        (None, None) => Ok(()),
    }
}

/// The IPv6 twin of `check`: the conflist's `podCIDR6` must lie within the
/// node's, and the node must be dual-stack.
pub fn check6(conflist: Ipv6Network, node: Option<Ipv6Network>) -> Result<(), CidrMismatch> {
    let node = node.ok_or(CidrMismatch::NotDualStack(conflist))?;
    if node.prefix() <= conflist.prefix() && node.contains(conflist.network()) {
        Ok(())
    } else {
        Err(CidrMismatch::Outside6 { conflist, node })
    }
}

/// The conflist's pod CIDR must lie within the node's (equal, or a part of
/// it: every address is still routed here).
pub fn check(conflist: Ipv4Network, node: Option<Ipv4Network>) -> Result<(), CidrMismatch> {
    let node = node.ok_or(CidrMismatch::NotRecorded)?;
    let within = node.prefix() <= conflist.prefix() && node.contains(conflist.network());
    if within {
        Ok(())
    } else {
        Err(CidrMismatch::Outside { conflist, node })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    #[test]
    fn table() {
        let node = Some(net("10.244.1.0/24"));
        assert_eq!(check(net("10.244.1.0/24"), node), Ok(()));
        assert_eq!(check(net("10.244.1.0/30"), node), Ok(()), "a part of the node's CIDR is routed here");
        for stale in ["10.244.2.0/24", "10.244.0.0/16", "10.245.1.0/24", "10.244.0.0/23"] {
            assert_eq!(
                check(net(stale), node),
                Err(CidrMismatch::Outside { conflist: net(stale), node: net("10.244.1.0/24") }),
                "{stale}"
            );
        }
        assert_eq!(check(net("10.244.1.0/24"), None), Err(CidrMismatch::NotRecorded));
        let net6 = |s: &str| s.parse::<Ipv6Network>().unwrap();
        let node6 = Some(net6("fd00:244:0:1::/64"));
        assert_eq!(check6(net6("fd00:244:0:1::/64"), node6), Ok(()));
        assert_eq!(check6(net6("fd00:244:0:1::/126"), node6), Ok(()));
        assert!(matches!(check6(net6("fd00:244:0:2::/64"), node6), Err(CidrMismatch::Outside6 { .. })));
        assert_eq!(check6(net6("fd00:244:0:1::/64"), None), Err(CidrMismatch::NotDualStack(net6("fd00:244:0:1::/64"))));
        // IPv6-only: no podCIDR in the conflist, none in NODE_CONFIG.
        assert_eq!(check4(None, None), Ok(()));
        assert_eq!(check4(None, node), Err(CidrMismatch::NotIpv6Only { node: net("10.244.1.0/24") }));
        assert_eq!(check4(Some(net("10.244.1.0/24")), node), Ok(()));
        assert_eq!(check4(Some(net("10.244.1.0/24")), None), Err(CidrMismatch::NotRecorded));
        let msg = check(net("10.244.2.0/24"), node).unwrap_err().to_string();
        assert!(msg.contains("10.244.2.0/24") && msg.contains("10.244.1.0/24") && msg.contains("stale"), "{msg}");
    }
}
