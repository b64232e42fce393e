//! Whether a peer's node IP can be a next hop (pure). A Node object's
//! InternalIP is whatever its kubelet (or whoever wrote it) said; the
//! kernel refuses some addresses as a gateway ("Nexthop has invalid
//! gateway" for the subnet's broadcast address) and accepts others that
//! would misroute (this node's own address, loopback). Each is refused
//! here with its reason, so the node is reported and skipped instead of
//! routed.
use std::{fmt, net::Ipv4Addr};

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

/// Why a node IP cannot be a next hop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "camelCase")]
pub enum NodeIpFault {
    /// In 0.0.0.0/8 ("this network", RFC 1122): no host has it.
    Unspecified,
    /// In 127.0.0.0/8: this host itself.
    Loopback,
    /// In 224.0.0.0/4: a group, not a host.
    Multicast,
    /// 255.255.255.255.
    LimitedBroadcast,
    /// This node's own address: its pods' traffic would loop here.
    ThisNode,
    /// The network address of this node's subnet.
    SubnetNetwork { network: Ipv4Network },
    /// The broadcast address of this node's subnet.
    SubnetBroadcast { network: Ipv4Network },
}

impl fmt::Display for NodeIpFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeIpFault::Unspecified => f.write_str("is in 0.0.0.0/8 (no host)"),
            NodeIpFault::Loopback => f.write_str("is a loopback address"),
            NodeIpFault::Multicast => f.write_str("is a multicast address"),
            NodeIpFault::LimitedBroadcast => f.write_str("is the limited broadcast address"),
            NodeIpFault::ThisNode => f.write_str("is this node's own address"),
            NodeIpFault::SubnetNetwork { network } => {
                write!(f, "is the network address of this node's network {network}")
            }
            NodeIpFault::SubnetBroadcast { network } => {
                write!(f, "is the broadcast address of this node's network {network}")
            }
        }
    }
}

/// Check `ip` as another node's address, against this node's own
/// address and its uplink's subnet (either may be unknown).
pub fn check(ip: Ipv4Addr, own_ip: Option<Ipv4Addr>, node_network: Option<Ipv4Network>) -> Option<NodeIpFault> {
    if ip.octets()[0] == 0 {
        return Some(NodeIpFault::Unspecified);
    }
    if ip.is_loopback() {
        return Some(NodeIpFault::Loopback);
    }
    if ip.is_multicast() {
        return Some(NodeIpFault::Multicast);
    }
    if ip.is_broadcast() {
        return Some(NodeIpFault::LimitedBroadcast);
    }
    if own_ip == Some(ip) {
        return Some(NodeIpFault::ThisNode);
    }
    // A /31 or /32 has no network or broadcast address (RFC 3021): both
    // of a /31's addresses are hosts.
    let network = node_network.filter(|n| n.prefix() <= 30 && n.contains(ip))?;
    if ip == network.network() {
        return Some(NodeIpFault::SubnetNetwork { network });
    }
    if ip == network.broadcast() {
        return Some(NodeIpFault::SubnetBroadcast { network });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let net = |s: &str| s.parse::<Ipv4Network>().unwrap();
        let lan = Some(net("172.30.0.0/24"));
        let own = Some(Ipv4Addr::new(172, 30, 0, 1));
        use NodeIpFault::*;
        /// (node IP, this node's address, its subnet, the fault).
        type Case = (&'static str, Option<Ipv4Addr>, Option<Ipv4Network>, Option<NodeIpFault>);
        let cases: &[Case] = &[
            ("172.30.0.2", own, lan, None),
            ("10.9.0.2", own, lan, None), // off-subnet: a tunnel's business, not a fault
            ("0.0.0.0", own, lan, Some(Unspecified)),
            ("0.1.2.3", own, lan, Some(Unspecified)),
            ("127.0.0.1", own, lan, Some(Loopback)),
            ("127.9.9.9", None, None, Some(Loopback)),
            ("224.0.0.1", own, lan, Some(Multicast)),
            ("239.255.255.250", own, lan, Some(Multicast)),
            ("255.255.255.255", own, lan, Some(LimitedBroadcast)),
            ("172.30.0.1", own, lan, Some(ThisNode)),
            ("172.30.0.1", None, lan, None), // own address unknown
            ("172.30.0.0", own, lan, Some(SubnetNetwork { network: net("172.30.0.0/24") })),
            ("172.30.0.255", own, lan, Some(SubnetBroadcast { network: net("172.30.0.0/24") })),
            ("172.30.0.255", own, None, None), // subnet unknown
            ("172.30.1.255", own, lan, None),  // another subnet's: not knowable
            ("10.0.0.7", None, Some(net("10.0.0.6/31")), None),
            ("10.0.0.6", None, Some(net("10.0.0.6/31")), None),
            ("10.0.0.8", None, Some(net("10.0.0.8/30")), Some(SubnetNetwork { network: net("10.0.0.8/30") })),
            ("10.0.0.11", None, Some(net("10.0.0.8/30")), Some(SubnetBroadcast { network: net("10.0.0.8/30") })),
            ("10.0.0.10", None, Some(net("10.0.0.8/30")), None),
        ];
        for (ip, own, network, want) in cases {
            assert_eq!(check(ip.parse().unwrap(), *own, *network), *want, "{ip} own {own:?} network {network:?}");
        }
    }

    #[test]
    fn faults_say_what_is_wrong() {
        let network = "172.30.0.0/24".parse().unwrap();
        assert_eq!(
            NodeIpFault::SubnetBroadcast { network }.to_string(),
            "is the broadcast address of this node's network 172.30.0.0/24"
        );
        let json = serde_json::to_string(&NodeIpFault::SubnetNetwork { network }).unwrap();
        assert_eq!(json, r#"{"reason":"subnetNetwork","network":"172.30.0.0/24"}"#);
        assert_eq!(serde_json::from_str::<NodeIpFault>(&json).unwrap(), NodeIpFault::SubnetNetwork { network });
    }
}
