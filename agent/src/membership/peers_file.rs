//! The peers file: cluster membership for clusters without Kubernetes.
//!
//! ```json
//! {"peers": [{"name": "node2", "nodeIP": "192.168.50.2", "podCIDR": "10.244.2.0/24",
//!             "nodeIP6": "fd00:50::2", "podCIDR6": "fd00:244:2::/64"}]}
//! ```
//! `nodeIP6` and `podCIDR6` (dual-stack) are optional; an IPv6-only
//! cluster's entries (`--ip-family ipv6`) may leave `podCIDR` and
//! `nodeIP` out (such a peer has no IPv4 route).
//! The same file may go to every node: a node skips its own entry by name.
use std::{collections::BTreeMap, net::Ipv4Addr};

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub name: String,
    #[serde(rename = "nodeIP", default, skip_serializing_if = "Option::is_none")]
    pub node_ip: Option<Ipv4Addr>,
    #[serde(rename = "podCIDR", default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr: Option<Ipv4Network>,
    #[serde(rename = "nodeIP6", default, skip_serializing_if = "Option::is_none")]
    pub node_ip6: Option<std::net::Ipv6Addr>,
    #[serde(rename = "podCIDR6", default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr6: Option<ipnetwork::Ipv6Network>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeersFile {
    pub peers: Vec<Peer>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PeersError {
    #[error("peers file is not valid JSON of the expected shape: {0}")]
    Parse(String),
    #[error("peer {name}: pod CIDR {cidr} is not a network address (did you mean {network}/{prefix}?)")]
    NotNetwork { name: String, cidr: Ipv4Network, network: Ipv4Addr, prefix: u8 },
    #[error("peers {a} and {b} have overlapping pod CIDRs {a_cidr} and {b_cidr}")]
    Overlap { a: String, a_cidr: Ipv4Network, b: String, b_cidr: Ipv4Network },
    #[error("peer {name}: pod CIDR {cidr} overlaps this node's pod CIDR {own}")]
    OverlapsOwn { name: String, cidr: Ipv4Network, own: Ipv4Network },
    #[error("peer {name} is listed twice")]
    Duplicate { name: String },
}

impl PeersFile {
    pub fn parse(bytes: &[u8]) -> Result<Self, PeersError> {
        let file: Self = serde_json::from_slice(bytes).map_err(|e| PeersError::Parse(e.to_string()))?;
        // A peer of either family names its node address of that family.
        if let Some(p) = file.peers.iter().find(|p| p.node_ip.is_none() && p.node_ip6.is_none()) {
            return Err(PeersError::Parse(format!("peer {} has neither nodeIP nor nodeIP6", p.name)));
        }
        Ok(file)
    }

    /// The routes this node wants: pod CIDR → node IP for every other node.
    /// The whole file is rejected on any inconsistency, so a bad edit never
    /// half-applies.
    pub fn desired_routes(
        &self,
        own_name: &str,
        own_cidr: Ipv4Network,
    ) -> Result<BTreeMap<Ipv4Network, Ipv4Addr>, PeersError> {
        let mut seen: Vec<(&str, Ipv4Network)> = Vec::new();
        let mut names: Vec<&str> = Vec::new();
        for p in &self.peers {
            if names.contains(&p.name.as_str()) {
                return Err(PeersError::Duplicate { name: p.name.clone() });
            }
            names.push(&p.name);
            // A peer without an IPv4 pod CIDR (IPv6-only) has no IPv4 route.
            let Some(cidr) = p.pod_cidr else { continue };
            if cidr.network() != cidr.ip() {
                return Err(PeersError::NotNetwork {
                    name: p.name.clone(),
                    cidr,
                    network: cidr.network(),
                    prefix: cidr.prefix(),
                });
            }
            if let Some((q, q_cidr)) = seen.iter().find(|(_, c)| c.overlaps(cidr)) {
                return Err(PeersError::Overlap { a: q.to_string(), a_cidr: *q_cidr, b: p.name.clone(), b_cidr: cidr });
            }
            if p.name != own_name && cidr.overlaps(own_cidr) {
                return Err(PeersError::OverlapsOwn { name: p.name.clone(), cidr, own: own_cidr });
            }
            seen.push((&p.name, cidr));
        }
        Ok(self.peers.iter().filter(|p| p.name != own_name).filter_map(|p| Some((p.pod_cidr?, p.node_ip?))).collect())
    }
}

impl PeersFile {
    /// Membership from this file, after `desired_routes`'s whole-file checks.
    pub fn membership(
        &self,
        own_name: &str,
        own_cidr: Ipv4Network,
        ranges: &super::Ranges,
    ) -> Result<super::Membership, PeersError> {
        self.desired_routes(own_name, own_cidr)?;
        Ok(super::from_entries(&self.entries(), own_name, Some(own_cidr), ranges))
    }

    /// Every peer as a node entry (both families).
    pub fn entries(&self) -> Vec<super::NodeEntry> {
        self.peers
            .iter()
            .map(|p| super::NodeEntry {
                name: p.name.clone(),
                node_ip: p.node_ip,
                pod_cidr: p.pod_cidr,
                node_ip6: p.node_ip6,
                pod_cidr6: p.pod_cidr6,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    const FILE: &str = r#"{"peers":[
        {"name":"n1","nodeIP":"192.168.50.1","podCIDR":"10.244.1.0/24"},
        {"name":"n2","nodeIP":"192.168.50.2","podCIDR":"10.244.2.0/24"},
        {"name":"n3","nodeIP":"192.168.50.3","podCIDR":"10.244.3.0/24"}]}"#;

    #[test]
    fn ipv6_only_entries_have_no_ipv4() {
        let f = PeersFile::parse(
            br#"{"peers":[{"name":"n1","nodeIP6":"fd00:30::1","podCIDR6":"fd00:244:0:1::/64"},
                         {"name":"n2","nodeIP6":"fd00:30::2","podCIDR6":"fd00:244:0:2::/64"}]}"#,
        )
        .unwrap();
        assert_eq!(f.desired_routes("n1", cidr("10.244.1.0/24")).unwrap().len(), 0, "no IPv4 route");
        let e = f.entries();
        assert_eq!((e[1].node_ip, e[1].pod_cidr), (None, None));
        assert_eq!(e[1].pod_cidr6, Some("fd00:244:0:2::/64".parse().unwrap()));
    }

    #[test]
    fn own_entry_skipped() {
        let f = PeersFile::parse(FILE.as_bytes()).unwrap();
        let routes = f.desired_routes("n1", cidr("10.244.1.0/24")).unwrap();
        assert_eq!(routes.len(), 2);
        assert_eq!(routes[&cidr("10.244.2.0/24")], "192.168.50.2".parse::<Ipv4Addr>().unwrap());
        assert!(!routes.contains_key(&cidr("10.244.1.0/24")));
    }

    #[test]
    fn bad_files_rejected_whole() {
        let own = cidr("10.244.1.0/24");
        assert!(matches!(PeersFile::parse(b"{"), Err(PeersError::Parse(_))));
        assert!(matches!(PeersFile::parse(br#"{"peers":[{"name":"x"}]}"#), Err(PeersError::Parse(_))));
        let overlap = PeersFile::parse(
            br#"{"peers":[{"name":"a","nodeIP":"1.1.1.1","podCIDR":"10.0.0.0/16"},
                         {"name":"b","nodeIP":"1.1.1.2","podCIDR":"10.0.1.0/24"}]}"#,
        )
        .unwrap();
        assert!(matches!(overlap.desired_routes("n1", own), Err(PeersError::Overlap { .. })));
        let own_overlap =
            PeersFile::parse(br#"{"peers":[{"name":"a","nodeIP":"1.1.1.1","podCIDR":"10.244.0.0/16"}]}"#).unwrap();
        assert!(matches!(own_overlap.desired_routes("n1", own), Err(PeersError::OverlapsOwn { .. })));
        let host_bits =
            PeersFile::parse(br#"{"peers":[{"name":"a","nodeIP":"1.1.1.1","podCIDR":"10.9.0.5/24"}]}"#).unwrap();
        assert!(matches!(host_bits.desired_routes("n1", own), Err(PeersError::NotNetwork { .. })));
        let dup = PeersFile::parse(
            br#"{"peers":[{"name":"a","nodeIP":"1.1.1.1","podCIDR":"10.9.0.0/24"},
                         {"name":"a","nodeIP":"1.1.1.1","podCIDR":"10.8.0.0/24"}]}"#,
        )
        .unwrap();
        assert!(matches!(dup.desired_routes("n1", own), Err(PeersError::Duplicate { .. })));
    }
}
