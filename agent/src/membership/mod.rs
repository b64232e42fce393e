//! Cluster membership as the reconcilers need it, whatever its source
//! (`peers_file`, or Kubernetes Node objects in `kubernetes`): which pod
//! CIDR lives behind which node IP, this node's own pod CIDR, and which
//! nodes could not be used and why (`Problem`, typed, so the daemon,
//! `status` and `connectivity-test` match on it rather than on text).
pub mod kubernetes;
pub mod peers_file;

use std::{collections::BTreeMap, fmt, net::Ipv4Addr};

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

use crate::reconcile::map_routes::Routes;

/// A node left out of the routes, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Problem {
    /// The node has no pod CIDR yet (`spec.podCIDR` not assigned).
    NoPodCidr { node: String },
    /// The node has no IPv4 InternalIP to route to.
    NoNodeIp { node: String },
    /// Its pod CIDR overlaps this node's own.
    OverlapsOwn { node: String, cidr: Ipv4Network, own: Ipv4Network },
    /// Its pod CIDR overlaps one already routed to another node.
    OverlapsOther { node: String, cidr: Ipv4Network, other: Ipv4Network, owner: String },
}

impl Problem {
    /// The node this problem is about.
    pub fn node(&self) -> &str {
        match self {
            Problem::NoPodCidr { node }
            | Problem::NoNodeIp { node }
            | Problem::OverlapsOwn { node, .. }
            | Problem::OverlapsOther { node, .. } => node,
        }
    }

    /// True when the problem is with this node's own pod CIDR, which the
    /// agent cannot work around (it refuses to start).
    pub fn involves_own_cidr(&self) -> bool {
        matches!(self, Problem::OverlapsOwn { .. })
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::NoPodCidr { node } => write!(f, "node {node} has no pod CIDR yet; not routed"),
            Problem::NoNodeIp { node } => write!(f, "node {node} has no IPv4 InternalIP; not routed"),
            Problem::OverlapsOwn { node, cidr, own } => {
                write!(f, "node {node}: pod CIDR {cidr} overlaps this node's {own}; not routed")
            }
            Problem::OverlapsOther { node, cidr, other, owner } => {
                write!(f, "node {node}: pod CIDR {cidr} overlaps {other} of node {owner}; not routed")
            }
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    /// Other nodes' pod CIDRs → their node IPs: the desired `NODE_ROUTES`.
    pub routes: Routes,
    /// Which node each route came from (for `status`).
    pub route_nodes: BTreeMap<Ipv4Network, String>,
    /// This node's pod CIDR, if the source knows it.
    pub own_pod_cidr: Option<Ipv4Network>,
    /// Nodes left out, and why.
    pub problems: Vec<Problem>,
}

/// One node as the sources describe it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeEntry {
    pub name: String,
    pub node_ip: Option<Ipv4Addr>,
    pub pod_cidr: Option<Ipv4Network>,
}

/// Build membership from node entries, in name order. A node that cannot be
/// routed to (no pod CIDR yet, no address, overlapping another's CIDR) is
/// reported and left out; the rest still apply.
pub fn from_entries(entries: &[NodeEntry], own_name: &str, own_pod_cidr: Option<Ipv4Network>) -> Membership {
    let mut sorted: Vec<&NodeEntry> = entries.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut m = Membership {
        own_pod_cidr: own_pod_cidr.or_else(|| sorted.iter().find(|e| e.name == own_name).and_then(|e| e.pod_cidr)),
        ..Default::default()
    };
    for e in sorted {
        if e.name == own_name {
            continue;
        }
        let Some(cidr) = e.pod_cidr else {
            m.problems.push(Problem::NoPodCidr { node: e.name.clone() });
            continue;
        };
        let Some(ip) = e.node_ip else {
            m.problems.push(Problem::NoNodeIp { node: e.name.clone() });
            continue;
        };
        if let Some(own) = m.own_pod_cidr.filter(|own| own.overlaps(cidr)) {
            m.problems.push(Problem::OverlapsOwn { node: e.name.clone(), cidr, own });
            continue;
        }
        if let Some((other, owner)) = m.route_nodes.iter().find(|(c, _)| c.overlaps(cidr)) {
            m.problems.push(Problem::OverlapsOther { node: e.name.clone(), cidr, other: *other, owner: owner.clone() });
            continue;
        }
        m.routes.insert(cidr, ip);
        m.route_nodes.insert(cidr, e.name.clone());
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(name: &str, ip: Option<&str>, cidr: Option<&str>) -> NodeEntry {
        NodeEntry {
            name: name.into(),
            node_ip: ip.map(|s| s.parse().unwrap()),
            pod_cidr: cidr.map(|s| s.parse().unwrap()),
        }
    }

    #[test]
    fn table() {
        let entries = vec![
            e("n1", Some("10.0.0.1"), Some("10.244.1.0/24")),
            e("n2", Some("10.0.0.2"), Some("10.244.2.0/24")),
            e("n3", Some("10.0.0.3"), None),
            e("n4", None, Some("10.244.4.0/24")),
            e("n5", Some("10.0.0.5"), Some("10.244.2.128/25")),
            e("n6", Some("10.0.0.6"), Some("10.244.1.0/25")),
        ];
        let m = from_entries(&entries, "n1", None);
        assert_eq!(m.own_pod_cidr, Some("10.244.1.0/24".parse().unwrap()));
        assert_eq!(m.routes.len(), 1);
        assert_eq!(m.route_nodes[&"10.244.2.0/24".parse().unwrap()], "n2");
        let net = |s: &str| s.parse::<Ipv4Network>().unwrap();
        assert_eq!(
            m.problems,
            vec![
                Problem::NoPodCidr { node: "n3".into() },
                Problem::NoNodeIp { node: "n4".into() },
                Problem::OverlapsOther {
                    node: "n5".into(),
                    cidr: net("10.244.2.128/25"),
                    other: net("10.244.2.0/24"),
                    owner: "n2".into()
                },
                Problem::OverlapsOwn { node: "n6".into(), cidr: net("10.244.1.0/25"), own: net("10.244.1.0/24") },
            ]
        );
        assert_eq!(m.problems.iter().map(Problem::node).collect::<Vec<_>>(), ["n3", "n4", "n5", "n6"]);
        assert_eq!(m.problems.iter().filter(|p| p.involves_own_cidr()).count(), 1);
        assert_eq!(m.problems[0].to_string(), "node n3 has no pod CIDR yet; not routed");
        // The state file carries them typed.
        let json = serde_json::to_string(&m.problems[3]).unwrap();
        assert_eq!(serde_json::from_str::<Problem>(&json).unwrap(), m.problems[3]);
    }

    #[test]
    fn configured_own_cidr_wins() {
        let m = from_entries(
            &[e("n1", Some("10.0.0.1"), Some("10.244.9.0/24"))],
            "n1",
            Some("10.244.1.0/24".parse().unwrap()),
        );
        assert_eq!(m.own_pod_cidr, Some("10.244.1.0/24".parse().unwrap()));
    }
}
