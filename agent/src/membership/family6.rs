//! IPv6 membership on a dual-stack node (pure): every other node's IPv6
//! pod CIDR via its IPv6 InternalIP, routed natively by the kernel
//! (`reconcile::kernel_routes::desired6`). The IPv4 routes are decided
//! apart (`from_entries`); a node may be routed for one family and left
//! out of the other, each with its reason. A peer whose IPv4 is tunneled
//! has its pods' IPv6 tunneled too (`Membership::vxlan6`). On an IPv6-only
//! node (`Underlay6`) a peer off the uplink's IPv6 prefix is tunneled over
//! IPv6 (`choose_path6`); a native peer whose IPv6 address is not on the
//! uplink's link gets a route the kernel refuses, which the reconcile
//! reports.
use std::{collections::BTreeMap, fmt, net::Ipv6Addr};

use ipnetwork::Ipv6Network;
use serde::{Deserialize, Serialize};

use super::{choose_path6, Membership, NodeEntry, TunnelMode};

/// An IPv6-only node's underlay, for the IPv6 routes' paths
/// (`choose_path6`): `--tunnel` and the uplink's IPv6 network. None on a
/// dual-stack node (its pods' IPv6 follows the IPv4 path, `vxlan6`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Underlay6 {
    pub tunnel: TunnelMode,
    pub network6: Option<Ipv6Network>,
}

/// A node left out of the IPv6 routes, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Problem6 {
    /// The node has no IPv6 pod CIDR (`spec.podCIDRs` has none).
    NoPodCidr6 { node: String },
    /// The node has no IPv6 InternalIP.
    NoNodeIp6 { node: String },
    /// Its IPv6 pod CIDR is not inside the IPv6 cluster CIDR.
    OutsideCluster6 { node: String, cidr: Ipv6Network, cluster: Ipv6Network },
    /// Its IPv6 pod CIDR overlaps this node's own.
    OverlapsOwn6 { node: String, cidr: Ipv6Network, own: Ipv6Network },
    /// Its IPv6 pod CIDR overlaps one already routed to another node.
    OverlapsOther6 { node: String, cidr: Ipv6Network, other: Ipv6Network, owner: String },
    /// Its IPv6 node address cannot be a next hop.
    UnusableNodeIp6 { node: String, node_ip: Ipv6Addr, why: String },
    /// Other nodes claim the same IPv6 node address.
    SharedNodeIp6 { node: String, node_ip: Ipv6Addr, others: Vec<String> },
}

impl Problem6 {
    pub fn node(&self) -> &str {
        match self {
            Problem6::NoPodCidr6 { node }
            | Problem6::NoNodeIp6 { node }
            | Problem6::OutsideCluster6 { node, .. }
            | Problem6::OverlapsOwn6 { node, .. }
            | Problem6::OverlapsOther6 { node, .. }
            | Problem6::UnusableNodeIp6 { node, .. }
            | Problem6::SharedNodeIp6 { node, .. } => node,
        }
    }
}

impl fmt::Display for Problem6 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem6::NoPodCidr6 { node } => write!(f, "node {node} has no IPv6 pod CIDR; not routed over IPv6"),
            Problem6::NoNodeIp6 { node } => write!(f, "node {node} has no IPv6 InternalIP; not routed over IPv6"),
            Problem6::OutsideCluster6 { node, cidr, cluster } => {
                write!(f, "node {node}: IPv6 pod CIDR {cidr} is outside the IPv6 cluster CIDR {cluster}; not routed")
            }
            Problem6::OverlapsOwn6 { node, cidr, own } => {
                write!(f, "node {node}: IPv6 pod CIDR {cidr} overlaps this node's {own}; not routed")
            }
            Problem6::OverlapsOther6 { node, cidr, other, owner } => {
                write!(f, "node {node}: IPv6 pod CIDR {cidr} overlaps {other} of node {owner}; not routed")
            }
            Problem6::UnusableNodeIp6 { node, node_ip, why } => {
                write!(f, "node {node}: IPv6 node address {node_ip} {why}; not routed over IPv6")
            }
            Problem6::SharedNodeIp6 { node, node_ip, others } => write!(
                f,
                "node {node}: IPv6 node address {node_ip} is also claimed by node {}; not routed over IPv6",
                others.join(", ")
            ),
        }
    }
}

/// Why `ip` cannot be a next hop (`None`: it can).
pub fn node_ip6_fault(ip: Ipv6Addr, own: Option<Ipv6Addr>) -> Option<&'static str> {
    if Some(ip) == own {
        Some("is this node's own")
    } else if ip.is_unspecified() {
        Some("is unspecified")
    } else if ip.is_loopback() {
        Some("is loopback")
    } else if ip.is_multicast() {
        Some("is multicast")
    } else if ip.to_ipv4_mapped().is_some() {
        Some("is IPv4-mapped (NODE_ROUTES6 marks a peer through VXLAN so)")
    } else if sluice_node::net::netlink6::is_link_local6(ip) {
        Some("is link-local (a next hop on another node's link cannot be named by it)")
    } else {
        None
    }
}

/// The network a CIDR names (`fd00::5/64` is `fd00::/64`).
fn normalise6(cidr: Ipv6Network) -> Ipv6Network {
    Ipv6Network::new(cidr.network(), cidr.prefix()).expect("a valid prefix stays valid")
}

/// Fill `m`'s IPv6 half from `entries`, in name order: this node's IPv6 pod
/// CIDR (`own_cidr6`, the flag, or its own entry's) and a route for every
/// other node with an IPv6 pod CIDR and a usable IPv6 address. `cluster6`
/// (`--cluster-cidr6`), when given, bounds the pod CIDRs. On an IPv6-only
/// node (`underlay6`) each route gets its path (`paths6`).
pub fn fill(
    m: &mut Membership,
    entries: &[NodeEntry],
    own_name: &str,
    own_cidr6: Option<Ipv6Network>,
    cluster6: Option<Ipv6Network>,
    own_ip6: Option<Ipv6Addr>,
    underlay6: Option<Underlay6>,
) {
    let mut sorted: Vec<&NodeEntry> = entries.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    m.own_pod_cidr6 = own_cidr6.or_else(|| sorted.iter().find(|e| e.name == own_name).and_then(|e| e.pod_cidr6));
    let mut claims: BTreeMap<Ipv6Addr, Vec<&str>> = BTreeMap::new();
    for e in sorted.iter().filter(|e| e.name != own_name) {
        if let Some(ip) = e.node_ip6 {
            claims.entry(ip).or_default().push(&e.name);
        }
    }
    for e in sorted.into_iter().filter(|e| e.name != own_name) {
        let node = e.name.clone();
        let Some(cidr) = e.pod_cidr6.map(normalise6) else {
            m.problems6.push(Problem6::NoPodCidr6 { node });
            continue;
        };
        let Some(ip) = e.node_ip6 else {
            m.problems6.push(Problem6::NoNodeIp6 { node });
            continue;
        };
        if let Some(why) = node_ip6_fault(ip, own_ip6) {
            m.problems6.push(Problem6::UnusableNodeIp6 { node, node_ip: ip, why: why.into() });
            continue;
        }
        let others: Vec<String> = claims[&ip].iter().filter(|n| **n != e.name).map(|n| n.to_string()).collect();
        if !others.is_empty() {
            m.problems6.push(Problem6::SharedNodeIp6 { node, node_ip: ip, others });
            continue;
        }
        if let Some(cluster) = cluster6.filter(|c| !(c.contains(cidr.network()) && c.prefix() <= cidr.prefix())) {
            m.problems6.push(Problem6::OutsideCluster6 { node, cidr, cluster });
            continue;
        }
        if let Some(own) = m.own_pod_cidr6.filter(|own| own.overlaps(cidr)) {
            m.problems6.push(Problem6::OverlapsOwn6 { node, cidr, own });
            continue;
        }
        if let Some((other, owner)) = m.route_nodes6.iter().find(|(c, _)| c.overlaps(cidr)) {
            m.problems6.push(Problem6::OverlapsOther6 { node, cidr, other: *other, owner: owner.clone() });
            continue;
        }
        m.routes6.insert(cidr, ip);
        m.route_nodes6.insert(cidr, node);
        if let Some(u) = underlay6 {
            m.paths6.insert(cidr, choose_path6(u.tunnel, ip, u.network6));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(name: &str, ip6: Option<&str>, cidr6: Option<&str>) -> NodeEntry {
        NodeEntry {
            name: name.into(),
            node_ip: None,
            pod_cidr: None,
            node_ip6: ip6.map(|s| s.parse().unwrap()),
            pod_cidr6: cidr6.map(|s| s.parse().unwrap()),
        }
    }

    #[test]
    fn routes6_table() {
        let entries = vec![
            e("n1", Some("fd00:30::1"), Some("fd00:244:1::/64")),
            e("n2", Some("fd00:30::2"), Some("fd00:244:2::/64")),
            e("n3", Some("fd00:30::3"), None),
            e("n4", None, Some("fd00:244:4::/64")),
            e("n5", Some("fd00:30::5"), Some("fd00:244:2::/80")),
            e("n6", Some("fd00:30::6"), Some("fd00:244:1::/80")),
            e("n7", Some("fe80::7"), Some("fd00:244:7::/64")),
            e("n8", Some("fd00:30::8"), Some("fd00:999::/64")),
            e("n9", Some("fd00:30::9"), Some("fd00:244:9::5/64")),
        ];
        let mut m = Membership::default();
        fill(
            &mut m,
            &entries,
            "n1",
            None,
            Some("fd00:244::/32".parse().unwrap()),
            Some("fd00:30::1".parse().unwrap()),
            None,
        );
        assert_eq!(m.own_pod_cidr6, Some("fd00:244:1::/64".parse().unwrap()), "from its own entry");
        let routes: Vec<String> = m.routes6.iter().map(|(c, ip)| format!("{c} via {ip}")).collect();
        // n9's CIDR is spelled with host bits: routed by its network.
        assert_eq!(routes, ["fd00:244:2::/64 via fd00:30::2", "fd00:244:9::/64 via fd00:30::9"]);
        let kinds: Vec<String> = m
            .problems6
            .iter()
            .map(|p| format!("{}:{}", p.node(), serde_json::to_value(p).unwrap()["kind"].as_str().unwrap()))
            .collect();
        assert_eq!(
            kinds,
            [
                "n3:noPodCidr6",
                "n4:noNodeIp6",
                "n5:overlapsOther6",
                "n6:overlapsOwn6",
                "n7:unusableNodeIp6",
                "n8:outsideCluster6"
            ]
        );
        assert!(m.problems6[4].to_string().contains("link-local"), "{}", m.problems6[4]);
    }

    #[test]
    fn the_flag_wins_and_shared_addresses_route_nobody() {
        let entries = vec![
            e("a", Some("fd00:30::9"), Some("fd00:244:a::/64")),
            e("b", Some("fd00:30::9"), Some("fd00:244:b::/64")),
            e("me", Some("fd00:30::1"), Some("fd00:244:1::/64")),
        ];
        let mut m = Membership::default();
        let flag: Ipv6Network = "fd00:244:f::/64".parse().unwrap();
        fill(&mut m, &entries, "me", Some(flag), None, None, None);
        assert_eq!(m.own_pod_cidr6, Some(flag));
        assert!(m.routes6.is_empty());
        assert!(m.problems6.iter().all(|p| matches!(p, Problem6::SharedNodeIp6 { .. })), "{:?}", m.problems6);
    }
}
