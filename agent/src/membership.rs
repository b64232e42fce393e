//! Cluster membership as the route reconciler needs it, whatever its source
//! (the peers file or Kubernetes Node objects): which pod CIDR lives behind
//! which node IP, this node's own pod CIDR, and what could not be used.
use std::{collections::BTreeMap, net::Ipv4Addr};

use ipnetwork::Ipv4Network;

use crate::routes::diff::Routes;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    /// Other nodes' pod CIDRs → their node IPs: the desired `NODE_ROUTES`.
    pub routes: Routes,
    /// Which node each route came from (for `status`).
    pub route_nodes: BTreeMap<Ipv4Network, String>,
    /// This node's pod CIDR, if the source knows it.
    pub own_pod_cidr: Option<Ipv4Network>,
    /// Nodes left out, and why (e.g. "node n4 has no pod CIDR yet").
    pub problems: Vec<String>,
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
            m.problems.push(format!("node {} has no pod CIDR yet; not routed", e.name));
            continue;
        };
        let Some(ip) = e.node_ip else {
            m.problems.push(format!("node {} has no IPv4 InternalIP; not routed", e.name));
            continue;
        };
        if let Some(own) = m.own_pod_cidr.filter(|own| own.overlaps(cidr)) {
            m.problems.push(format!("node {}: pod CIDR {cidr} overlaps this node's {own}; not routed", e.name));
            continue;
        }
        if let Some((other, owner)) = m.route_nodes.iter().find(|(c, _)| c.overlaps(cidr)) {
            m.problems.push(format!("node {}: pod CIDR {cidr} overlaps {other} of node {owner}; not routed", e.name));
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
        assert_eq!(m.problems.len(), 4, "{:?}", m.problems);
        assert!(m.problems[0].contains("n3") && m.problems[0].contains("no pod CIDR"));
        assert!(m.problems[1].contains("n4"));
        assert!(m.problems[2].contains("n5") && m.problems[2].contains("n2"));
        assert!(m.problems[3].contains("n6") && m.problems[3].contains("this node"));
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
