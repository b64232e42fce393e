//! Cluster membership as the reconcilers need it, whatever its source
//! (`peers_file`, or Kubernetes Node objects in `kubernetes`): which pod
//! CIDR lives behind which node IP, this node's own pod CIDR, and which
//! nodes could not be used and why (`Problem`, typed, so the daemon,
//! `status` and `connectivity-test` match on it rather than on text).
pub mod family6;
pub mod kubernetes;
pub mod node_ip;
pub mod peers_file;

use std::{
    collections::BTreeMap,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnetwork::{Ipv4Network, Ipv6Network};
use serde::{Deserialize, Serialize};

pub use self::node_ip::NodeIpFault;
use crate::reconcile::map_routes::{Hop, Hops, Routes};

/// `--tunnel`: how the agent reaches other nodes' pods.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum TunnelMode {
    /// Native routing to peers on the uplink's subnet, VXLAN to the rest.
    #[default]
    Auto,
    /// VXLAN to every peer.
    Always,
    /// Native routing only: peers off the uplink's subnet are reported
    /// (`Problem::OffSubnet`) and not routed.
    Never,
}

/// How packets for one peer's pods leave this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PeerPath {
    /// Out of the uplink with pod addresses untouched, the peer's node IP
    /// as next hop.
    Native,
    /// Encapsulated in VXLAN to the peer's node IP.
    Vxlan,
}

impl PeerPath {
    /// The largest IP packet that crosses to a peer on this path without
    /// fragmenting, over an uplink of `uplink_mtu`: VXLAN's outer headers
    /// take their 50 bytes from it.
    pub fn mtu(self, uplink_mtu: u32) -> u32 {
        self.mtu_over(uplink_mtu, tunnel_overhead(false))
    }

    /// `mtu` with VXLAN taking `overhead` bytes (`tunnel_overhead`).
    pub fn mtu_over(self, uplink_mtu: u32, overhead: u32) -> u32 {
        match self {
            PeerPath::Native => uplink_mtu,
            PeerPath::Vxlan => uplink_mtu.saturating_sub(overhead),
        }
    }
}

/// The bytes VXLAN's outer headers take: 50 over an IPv4 underlay (IPv4
/// and dual-stack nodes: their tunnel runs between the nodes' IPv4
/// addresses), 70 over an IPv6 one (IPv6-only nodes: the outer header is
/// IPv6's 40 bytes, not IPv4's 20).
pub fn tunnel_overhead(ipv6_underlay: bool) -> u32 {
    if ipv6_underlay {
        sluice_common::maps::TUNNEL_OVERHEAD6
    } else {
        sluice_common::maps::TUNNEL_OVERHEAD
    }
}

/// Why a peer got its path (`status` prints it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PathReason {
    /// The peer's node IP is on the uplink's subnet.
    SameSubnet,
    /// The peer's node IP is off the uplink's subnet (`--tunnel=auto`).
    OffSubnet,
    /// `--tunnel=always`.
    TunnelAlways,
    /// The uplink's subnet is not known; native, as before tunnels.
    NetworkUnknown,
}

impl PeerPath {
    pub fn name(self) -> &'static str {
        match self {
            PeerPath::Native => "native",
            PeerPath::Vxlan => "vxlan",
        }
    }
}

impl PathReason {
    pub fn describe(self) -> &'static str {
        match self {
            PathReason::SameSubnet => "on this node's subnet",
            PathReason::OffSubnet => "off this node's subnet",
            PathReason::TunnelAlways => "--tunnel=always",
            PathReason::NetworkUnknown => "this node's subnet is unknown",
        }
    }
}

/// A peer's path and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PathChoice {
    pub path: PeerPath,
    pub reason: PathReason,
}

/// The path to a peer whose node IP is `node_ip`, or `None` when
/// `--tunnel=never` leaves an off-subnet peer unreachable.
pub fn choose_path(mode: TunnelMode, node_ip: Ipv4Addr, node_network: Option<Ipv4Network>) -> Option<PathChoice> {
    let on_subnet = node_network.map(|n| n.contains(node_ip));
    let (path, reason) = match (mode, on_subnet) {
        (TunnelMode::Always, _) => (PeerPath::Vxlan, PathReason::TunnelAlways),
        (_, None) => (PeerPath::Native, PathReason::NetworkUnknown),
        (_, Some(true)) => (PeerPath::Native, PathReason::SameSubnet),
        (TunnelMode::Auto, Some(false)) => (PeerPath::Vxlan, PathReason::OffSubnet),
        (TunnelMode::Never, Some(false)) => return None,
    };
    Some(PathChoice { path, reason })
}

/// The IPv6 twin of `choose_path`, for an IPv6-only node (its underlay
/// is IPv6): a peer whose IPv6 address is on the uplink's IPv6 network
/// (`network6`) is routed natively, one behind a router through VXLAN to
/// that address (`auto`), every peer with `always`. With `never`, or the
/// network unknown, native: a peer off the link then gets a route the
/// kernel refuses, which the reconcile reports (as before VXLAN over IPv6).
pub fn choose_path6(mode: TunnelMode, node_ip6: Ipv6Addr, network6: Option<Ipv6Network>) -> PathChoice {
    let on_link = network6.map(|n| n.contains(node_ip6));
    let (path, reason) = match (mode, on_link) {
        (TunnelMode::Always, _) => (PeerPath::Vxlan, PathReason::TunnelAlways),
        (_, None) => (PeerPath::Native, PathReason::NetworkUnknown),
        (_, Some(true)) => (PeerPath::Native, PathReason::SameSubnet),
        (TunnelMode::Auto, Some(false)) => (PeerPath::Vxlan, PathReason::OffSubnet),
        (TunnelMode::Never, Some(false)) => (PeerPath::Native, PathReason::OffSubnet),
    };
    PathChoice { path, reason }
}

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
    /// Its pod CIDR is not inside the cluster CIDR.
    OutsideCluster { node: String, cidr: Ipv4Network, cluster: Ipv4Network },
    /// Its pod CIDR overlaps the service range.
    OverlapsServices { node: String, cidr: Ipv4Network, service: Ipv4Network },
    /// Its pod CIDR overlaps the node network (the uplink's subnet).
    OverlapsNodeNetwork { node: String, cidr: Ipv4Network, network: Ipv4Network },
    /// Its node IP is not on this node's uplink subnet, and `--tunnel=never`
    /// forbids the overlay: the next hop cannot be reached.
    OffSubnet { node: String, node_ip: Ipv4Addr, network: Ipv4Network },
    /// Its node IP cannot be a next hop (`node_ip::check`): this node's
    /// own, the subnet's network or broadcast address, loopback, ...
    UnusableNodeIp { node: String, node_ip: Ipv4Addr, fault: NodeIpFault },
    /// Other nodes claim the same node IP: which one is really there
    /// cannot be told, so none of them is routed.
    SharedNodeIp { node: String, node_ip: Ipv4Addr, others: Vec<String> },
}

impl Problem {
    /// The node this problem is about.
    pub fn node(&self) -> &str {
        match self {
            Problem::NoPodCidr { node }
            | Problem::NoNodeIp { node }
            | Problem::OverlapsOwn { node, .. }
            | Problem::OverlapsOther { node, .. }
            | Problem::OutsideCluster { node, .. }
            | Problem::OverlapsServices { node, .. }
            | Problem::OverlapsNodeNetwork { node, .. }
            | Problem::OffSubnet { node, .. }
            | Problem::UnusableNodeIp { node, .. }
            | Problem::SharedNodeIp { node, .. } => node,
        }
    }

    /// The problem's kind, as its JSON names it (the metrics' label).
    pub fn kind(&self) -> &'static str {
        match self {
            Problem::NoPodCidr { .. } => "noPodCidr",
            Problem::NoNodeIp { .. } => "noNodeIp",
            Problem::OverlapsOwn { .. } => "overlapsOwn",
            Problem::OverlapsOther { .. } => "overlapsOther",
            Problem::OutsideCluster { .. } => "outsideCluster",
            Problem::OverlapsServices { .. } => "overlapsServices",
            Problem::OverlapsNodeNetwork { .. } => "overlapsNodeNetwork",
            Problem::OffSubnet { .. } => "offSubnet",
            Problem::UnusableNodeIp { .. } => "unusableNodeIp",
            Problem::SharedNodeIp { .. } => "sharedNodeIp",
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
            Problem::OutsideCluster { node, cidr, cluster } => {
                write!(f, "node {node}: pod CIDR {cidr} is outside the cluster CIDR {cluster}; not routed")
            }
            Problem::OverlapsServices { node, cidr, service } => {
                write!(f, "node {node}: pod CIDR {cidr} overlaps the service CIDR {service}; not routed")
            }
            Problem::OverlapsNodeNetwork { node, cidr, network } => {
                write!(f, "node {node}: pod CIDR {cidr} overlaps the node network {network}; not routed")
            }
            Problem::OffSubnet { node, node_ip, network } => write!(
                f,
                "node {node}: node IP {node_ip} is not on this node's network {network}; not routed (--tunnel=never)"
            ),
            Problem::UnusableNodeIp { node, node_ip, fault } => {
                write!(f, "node {node}: node IP {node_ip} {fault}; not routed")
            }
            Problem::SharedNodeIp { node, node_ip, others } => {
                write!(f, "node {node}: node IP {node_ip} is also claimed by node {}; not routed", others.join(", "))
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
    /// How each route's packets leave: native or VXLAN, and why. Same keys
    /// as `routes`.
    pub paths: BTreeMap<Ipv4Network, PathChoice>,
    /// This node's pod CIDR, if the source knows it.
    pub own_pod_cidr: Option<Ipv4Network>,
    /// Nodes left out, and why.
    pub problems: Vec<Problem>,
    /// This node's IPv6 pod CIDR, if the source knows it (dual-stack).
    pub own_pod_cidr6: Option<Ipv6Network>,
    /// Other nodes' IPv6 pod CIDRs → their IPv6 node addresses (the
    /// kernel's IPv6 routes; `family6`). Empty unless dual-stack.
    pub routes6: BTreeMap<Ipv6Network, Ipv6Addr>,
    /// Which node each IPv6 route came from (for `status`).
    pub route_nodes6: BTreeMap<Ipv6Network, String>,
    /// Nodes left out of the IPv6 routes, and why (the IPv4 ones may
    /// still be routed).
    pub problems6: Vec<family6::Problem6>,
    /// On an IPv6-only node (IPv6 underlay): how each IPv6 route's packets
    /// leave (`choose_path6`); same keys as `routes6`. Empty on a
    /// dual-stack node, whose IPv6 follows its IPv4 path (`vxlan6`).
    pub paths6: BTreeMap<Ipv6Network, PathChoice>,
}

/// One node as the sources describe it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeEntry {
    pub name: String,
    pub node_ip: Option<Ipv4Addr>,
    pub pod_cidr: Option<Ipv4Network>,
    /// The node's IPv6 InternalIP (dual-stack).
    pub node_ip6: Option<Ipv6Addr>,
    /// The IPv6 entry of the node's pod CIDRs (dual-stack).
    pub pod_cidr6: Option<Ipv6Network>,
}

/// The address ranges other nodes' pod CIDRs are checked against, as this
/// node's own is (`config::validate_pod_cidr`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ranges {
    pub cluster: Ipv4Network,
    pub service: Option<Ipv4Network>,
    /// This node's uplink subnet; `None` skips the node-network checks.
    pub node_network: Option<Ipv4Network>,
    /// `--tunnel`: decides each peer's path against `node_network`.
    pub tunnel: TunnelMode,
    /// This node's own address (the uplink's); `None` skips that check.
    pub own_ip: Option<Ipv4Addr>,
}

/// The network a CIDR names: `10.244.1.5/24` is `10.244.1.0/24` (the API
/// does not promise network addresses; the routes must not flap between
/// two spellings of one key).
pub fn normalise(cidr: Ipv4Network) -> Ipv4Network {
    Ipv4Network::new(cidr.network(), cidr.prefix()).expect("a valid prefix stays valid")
}

/// Build membership from node entries, in name order. A node that cannot be
/// routed to (no pod CIDR yet, no address, a CIDR outside the cluster or
/// overlapping the services, the node network, this node's or another's,
/// a node IP off this node's subnet, or one that cannot be a next hop or
/// that several nodes claim) is reported and left out; the rest still
/// apply.
pub fn from_entries(
    entries: &[NodeEntry],
    own_name: &str,
    own_pod_cidr: Option<Ipv4Network>,
    ranges: &Ranges,
) -> Membership {
    let mut sorted: Vec<&NodeEntry> = entries.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut m = Membership {
        own_pod_cidr: own_pod_cidr.or_else(|| sorted.iter().find(|e| e.name == own_name).and_then(|e| e.pod_cidr)),
        ..Default::default()
    };
    // Node IP → the other nodes claiming it.
    let mut claims: BTreeMap<Ipv4Addr, Vec<&str>> = BTreeMap::new();
    for e in sorted.iter().filter(|e| e.name != own_name) {
        if let Some(ip) = e.node_ip {
            claims.entry(ip).or_default().push(&e.name);
        }
    }
    for e in sorted {
        if e.name == own_name {
            continue;
        }
        let Some(cidr) = e.pod_cidr.map(normalise) else {
            m.problems.push(Problem::NoPodCidr { node: e.name.clone() });
            continue;
        };
        let Some(ip) = e.node_ip else {
            m.problems.push(Problem::NoNodeIp { node: e.name.clone() });
            continue;
        };
        let node = e.name.clone();
        if let Some(fault) = node_ip::check(ip, ranges.own_ip, ranges.node_network) {
            m.problems.push(Problem::UnusableNodeIp { node, node_ip: ip, fault });
            continue;
        }
        let others: Vec<String> =
            claims[&ip].iter().filter(|n| **n != e.name.as_str()).map(|n| n.to_string()).collect();
        if !others.is_empty() {
            m.problems.push(Problem::SharedNodeIp { node, node_ip: ip, others });
            continue;
        }
        let cluster = ranges.cluster;
        if !(cluster.contains(cidr.network()) && cluster.prefix() <= cidr.prefix()) {
            m.problems.push(Problem::OutsideCluster { node, cidr, cluster });
            continue;
        }
        if let Some(service) = ranges.service.filter(|s| s.overlaps(cidr)) {
            m.problems.push(Problem::OverlapsServices { node, cidr, service });
            continue;
        }
        if let Some(network) = ranges.node_network.filter(|n| n.overlaps(cidr)) {
            m.problems.push(Problem::OverlapsNodeNetwork { node, cidr, network });
            continue;
        }
        let Some(path) = choose_path(ranges.tunnel, ip, ranges.node_network) else {
            let network = ranges.node_network.expect("only a known network makes a peer unreachable");
            m.problems.push(Problem::OffSubnet { node, node_ip: ip, network });
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
        m.paths.insert(cidr, path);
    }
    m
}

impl Membership {
    /// The routes with their paths: what `NODE_ROUTES` holds.
    pub fn hops(&self) -> Hops {
        self.routes
            .iter()
            .map(|(cidr, ip)| {
                let vxlan = self.paths.get(cidr).is_some_and(|p| p.path == PeerPath::Vxlan);
                (*cidr, Hop { node_ip: *ip, vxlan })
            })
            .collect()
    }

    /// What `NODE_ROUTES` holds: `hops`, and each tunneled peer's node IP
    /// as a `/32` through the tunnel (`map_routes::is_node_entry`).
    pub fn map_hops(&self) -> Hops {
        let mut hops = self.hops();
        let nodes: Vec<Hop> = hops.values().filter(|h| h.vxlan).copied().collect();
        for hop in nodes {
            let Ok(cidr) = Ipv4Network::new(hop.node_ip, 32) else { continue };
            // A node IP inside some pod CIDR keeps that CIDR's route.
            if !hops.keys().any(|c| c.contains(hop.node_ip)) {
                hops.insert(cidr, hop);
            }
        }
        hops
    }

    /// The IPv6 routes (`routes6`) that go through VXLAN, each with the
    /// outer destination: on a dual-stack node, those of nodes whose IPv4
    /// is reached through VXLAN, to that node's IPv4 address (their pods'
    /// IPv6 goes inside the same tunnel: IPv6 inside the IPv4 underlay; a
    /// router between the node networks may forward no IPv6 at all); on an
    /// IPv6-only node, those `paths6` tunnels, to the node's IPv6 address
    /// (VXLAN over the IPv6 underlay).
    pub fn vxlan6(&self) -> BTreeMap<Ipv6Network, IpAddr> {
        let tunneled: BTreeMap<&str, Ipv4Addr> = self
            .route_nodes
            .iter()
            .filter(|(cidr, _)| self.paths.get(*cidr).is_some_and(|p| p.path == PeerPath::Vxlan))
            .filter_map(|(cidr, node)| Some((node.as_str(), *self.routes.get(cidr)?)))
            .collect();
        let over4 = self
            .route_nodes6
            .iter()
            .filter_map(|(cidr6, node)| Some((*cidr6, IpAddr::V4(*tunneled.get(node.as_str())?))));
        let over6 = self
            .paths6
            .iter()
            .filter(|(_, p)| p.path == PeerPath::Vxlan)
            .filter_map(|(cidr6, _)| Some((*cidr6, IpAddr::V6(*self.routes6.get(cidr6)?))));
        over4.chain(over6).collect()
    }

    /// True when some peer is reached through VXLAN.
    pub fn any_tunneled(&self) -> bool {
        self.paths.values().chain(self.paths6.values()).any(|p| p.path == PeerPath::Vxlan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RANGES: Ranges = Ranges {
        cluster: Ipv4Network::new_checked(Ipv4Addr::new(10, 244, 0, 0), 16).unwrap(),
        service: None,
        node_network: None,
        tunnel: TunnelMode::Auto,
        own_ip: None,
    };

    fn e(name: &str, ip: Option<&str>, cidr: Option<&str>) -> NodeEntry {
        NodeEntry {
            name: name.into(),
            node_ip: ip.map(|s| s.parse().unwrap()),
            pod_cidr: cidr.map(|s| s.parse().unwrap()),
            node_ip6: None,
            pod_cidr6: None,
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
        let m = from_entries(&entries, "n1", None, &RANGES);
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
            &RANGES,
        );
        assert_eq!(m.own_pod_cidr, Some("10.244.1.0/24".parse().unwrap()));
    }

    #[test]
    fn other_nodes_cidrs_are_checked_like_our_own() {
        let net = |s: &str| s.parse::<Ipv4Network>().unwrap();
        let ranges = Ranges {
            cluster: net("10.244.0.0/16"),
            service: Some(net("10.244.200.0/24")),
            node_network: Some(net("10.0.0.0/24")),
            tunnel: TunnelMode::Never,
            own_ip: None,
        };
        let entries = vec![
            e("n2", Some("10.0.0.2"), Some("10.244.2.7/24")), // host bits: normalised, routed
            e("n3", Some("10.0.0.3"), Some("10.245.3.0/24")), // outside the cluster
            e("n4", Some("10.0.0.4"), Some("10.244.200.0/25")), // in the service range
            e("n5", Some("192.168.9.5"), Some("10.244.5.0/24")), // off this node's subnet
        ];
        let m = from_entries(&entries, "n1", Some(net("10.244.1.0/24")), &ranges);
        assert_eq!(m.routes.keys().copied().collect::<Vec<_>>(), vec![net("10.244.2.0/24")]);
        let kinds: Vec<&str> = m
            .problems
            .iter()
            .map(|p| match p {
                Problem::OutsideCluster { .. } => "outside",
                Problem::OverlapsServices { .. } => "services",
                Problem::OffSubnet { .. } => "off-subnet",
                _ => "other",
            })
            .collect();
        assert_eq!(kinds, ["outside", "services", "off-subnet"], "{:?}", m.problems);
        assert!(m.problems[2].to_string().contains("192.168.9.5 is not on this node's network 10.0.0.0/24"));
        // Overlapping the node network.
        let wide = Ranges { node_network: Some(net("10.244.8.0/22")), ..ranges };
        let m = from_entries(&[e("n9", Some("10.244.8.9"), Some("10.244.9.0/24"))], "n1", None, &wide);
        assert!(matches!(m.problems[0], Problem::OverlapsNodeNetwork { .. }), "{:?}", m.problems);
        // The same Node read twice gives the same key: no flapping.
        let once = from_entries(&entries[..1], "n1", None, &ranges);
        assert_eq!(once.routes, from_entries(&entries[..1], "n1", None, &ranges).routes);
    }

    #[test]
    fn node_ips_that_cannot_be_a_next_hop_are_problems_and_the_rest_still_route() {
        let net = |s: &str| s.parse::<Ipv4Network>().unwrap();
        let ranges = Ranges {
            cluster: net("10.244.0.0/16"),
            service: None,
            node_network: Some(net("172.30.0.0/24")),
            tunnel: TunnelMode::Auto,
            own_ip: Some("172.30.0.1".parse().unwrap()),
        };
        let cases = [
            ("0.0.0.0", NodeIpFault::Unspecified),
            ("127.0.0.1", NodeIpFault::Loopback),
            ("224.0.0.5", NodeIpFault::Multicast),
            ("255.255.255.255", NodeIpFault::LimitedBroadcast),
            ("172.30.0.1", NodeIpFault::ThisNode),
            ("172.30.0.0", NodeIpFault::SubnetNetwork { network: net("172.30.0.0/24") }),
            ("172.30.0.255", NodeIpFault::SubnetBroadcast { network: net("172.30.0.0/24") }),
        ];
        for (bad, fault) in cases {
            // The bad node sorts (and its CIDR) before the good one.
            let entries = vec![
                e("a-bad", Some(bad), Some("10.244.3.0/24")),
                e("b-good", Some("172.30.0.9"), Some("10.244.9.0/24")),
            ];
            let m = from_entries(&entries, "n1", Some(net("10.244.1.0/24")), &ranges);
            let node_ip = bad.parse().unwrap();
            assert_eq!(m.problems, vec![Problem::UnusableNodeIp { node: "a-bad".into(), node_ip, fault }], "{bad}");
            assert_eq!(m.routes.keys().copied().collect::<Vec<_>>(), vec![net("10.244.9.0/24")], "{bad}");
            assert_eq!(m.problems[0].kind(), "unusableNodeIp");
            assert!(
                m.problems[0].to_string().starts_with(&format!("node a-bad: node IP {bad} is ")),
                "{}",
                m.problems[0]
            );
        }
        // Two nodes claiming one address: neither is routed; a third is.
        let entries = vec![
            e("n2", Some("172.30.0.2"), Some("10.244.2.0/24")),
            e("n3", Some("172.30.0.2"), Some("10.244.3.0/24")),
            e("n4", Some("172.30.0.4"), Some("10.244.4.0/24")),
            e("n1", Some("172.30.0.2"), Some("10.244.1.0/24")), // this node's own entry is not a claim
        ];
        let m = from_entries(&entries, "n1", None, &ranges);
        assert_eq!(m.routes.keys().copied().collect::<Vec<_>>(), vec![net("10.244.4.0/24")]);
        let ip = "172.30.0.2".parse().unwrap();
        assert_eq!(
            m.problems,
            vec![
                Problem::SharedNodeIp { node: "n2".into(), node_ip: ip, others: vec!["n3".into()] },
                Problem::SharedNodeIp { node: "n3".into(), node_ip: ip, others: vec!["n2".into()] },
            ]
        );
        assert_eq!(m.problems[0].to_string(), "node n2: node IP 172.30.0.2 is also claimed by node n3; not routed");
        let json = serde_json::to_string(&m.problems[0]).unwrap();
        assert_eq!(serde_json::from_str::<Problem>(&json).unwrap(), m.problems[0]);
        let broadcast = Problem::UnusableNodeIp {
            node: "x".into(),
            node_ip: "172.30.0.255".parse().unwrap(),
            fault: NodeIpFault::SubnetBroadcast { network: net("172.30.0.0/24") },
        };
        let json = serde_json::to_value(&broadcast).unwrap();
        assert_eq!(json["kind"], broadcast.kind());
        assert_eq!(serde_json::from_value::<Problem>(json).unwrap(), broadcast);
    }

    #[test]
    fn path_table() {
        let net: Ipv4Network = "10.0.0.0/24".parse().unwrap();
        let (near, far): (Ipv4Addr, Ipv4Addr) = ("10.0.0.7".parse().unwrap(), "10.1.0.7".parse().unwrap());
        let c = |path, reason| Some(PathChoice { path, reason });
        use {PathReason::*, PeerPath::*, TunnelMode::*};
        let cases = [
            (Auto, near, Some(net), c(Native, SameSubnet)),
            (Auto, far, Some(net), c(Vxlan, OffSubnet)),
            (Always, near, Some(net), c(Vxlan, TunnelAlways)),
            (Always, far, Some(net), c(Vxlan, TunnelAlways)),
            (Always, far, None, c(Vxlan, TunnelAlways)),
            (Never, near, Some(net), c(Native, SameSubnet)),
            (Never, far, Some(net), None),
            (Auto, far, None, c(Native, NetworkUnknown)),
            (Never, far, None, c(Native, NetworkUnknown)),
        ];
        for (mode, ip, network, want) in cases {
            assert_eq!(choose_path(mode, ip, network), want, "{mode:?} {ip} {network:?}");
        }
        assert_eq!(TunnelMode::default(), Auto);
    }

    #[test]
    fn membership_carries_each_peers_path() {
        let net = |s: &str| s.parse::<Ipv4Network>().unwrap();
        let entries =
            vec![e("n2", Some("10.0.0.2"), Some("10.244.2.0/24")), e("n3", Some("192.168.9.3"), Some("10.244.3.0/24"))];
        let ranges = |tunnel| Ranges {
            cluster: net("10.244.0.0/16"),
            service: None,
            node_network: Some(net("10.0.0.0/24")),
            tunnel,
            own_ip: None,
        };
        let auto = from_entries(&entries, "n1", Some(net("10.244.1.0/24")), &ranges(TunnelMode::Auto));
        assert!(auto.problems.is_empty(), "{:?}", auto.problems);
        let hops = auto.hops();
        assert_eq!(hops[&net("10.244.2.0/24")], Hop { node_ip: "10.0.0.2".parse().unwrap(), vxlan: false });
        assert_eq!(hops[&net("10.244.3.0/24")], Hop { node_ip: "192.168.9.3".parse().unwrap(), vxlan: true });
        assert_eq!(auto.paths[&net("10.244.3.0/24")].reason, PathReason::OffSubnet);
        assert!(auto.any_tunneled());
        let always = from_entries(&entries, "n1", Some(net("10.244.1.0/24")), &ranges(TunnelMode::Always));
        assert!(always.hops().values().all(|h| h.vxlan));
        let never = from_entries(&entries, "n1", Some(net("10.244.1.0/24")), &ranges(TunnelMode::Never));
        assert_eq!(never.routes.len(), 1);
        assert!(!never.any_tunneled());
        assert!(matches!(never.problems[..], [Problem::OffSubnet { .. }]), "{:?}", never.problems);
        assert!(never.problems[0].to_string().contains("--tunnel=never"));
    }

    #[test]
    fn a_tunneled_peers_ipv6_pod_cidr_goes_through_the_tunnel_to_its_ipv4_address() {
        let mut m = Membership::default();
        let (near, far): (Ipv4Network, Ipv4Network) =
            ("10.244.2.0/24".parse().unwrap(), "10.244.3.0/24".parse().unwrap());
        m.routes.insert(near, "172.30.0.2".parse().unwrap());
        m.routes.insert(far, "172.31.0.3".parse().unwrap());
        m.route_nodes.insert(near, "n2".into());
        m.route_nodes.insert(far, "n3".into());
        m.paths.insert(near, PathChoice { path: PeerPath::Native, reason: PathReason::SameSubnet });
        m.paths.insert(far, PathChoice { path: PeerPath::Vxlan, reason: PathReason::OffSubnet });
        for (cidr6, ip6, node) in [
            ("fd00:244:0:2::/64", "fd00:30::2", "n2"),
            ("fd00:244:0:3::/64", "fd00:31::3", "n3"),
            // Routed over IPv6 only (its IPv4 was left out): native.
            ("fd00:244:0:4::/64", "fd00:30::4", "n4"),
        ] {
            m.routes6.insert(cidr6.parse().unwrap(), ip6.parse().unwrap());
            m.route_nodes6.insert(cidr6.parse().unwrap(), node.into());
        }
        let v: Vec<String> = m.vxlan6().iter().map(|(c, ip)| format!("{c} -> {ip}")).collect();
        assert_eq!(v, ["fd00:244:0:3::/64 -> 172.31.0.3"]);
    }

    #[test]
    fn an_ipv6_only_node_tunnels_to_peers_behind_a_router_over_ipv6() {
        let net6: Ipv6Network = "fd00:30::/64".parse().unwrap();
        let (near, far): (Ipv6Addr, Ipv6Addr) = ("fd00:30::2".parse().unwrap(), "fd00:31::3".parse().unwrap());
        let c = |path, reason| PathChoice { path, reason };
        use {PathReason::*, PeerPath::*, TunnelMode::*};
        for (mode, ip, network, want) in [
            (Auto, near, Some(net6), c(Native, SameSubnet)),
            (Auto, far, Some(net6), c(Vxlan, OffSubnet)),
            (Always, near, Some(net6), c(Vxlan, TunnelAlways)),
            (Always, far, None, c(Vxlan, TunnelAlways)),
            // Never: native, and the kernel refuses the route (reported).
            (Never, far, Some(net6), c(Native, OffSubnet)),
            (Auto, far, None, c(Native, NetworkUnknown)),
        ] {
            assert_eq!(choose_path6(mode, ip, network), want, "{mode:?} {ip} {network:?}");
        }
        // The tunneled route's outer destination is the peer's IPv6
        // address; the native one is not tunneled.
        let mut m = Membership::default();
        for (cidr6, ip6) in [("fd00:244:0:2::/64", near), ("fd00:244:0:3::/64", far)] {
            let cidr6: Ipv6Network = cidr6.parse().unwrap();
            m.routes6.insert(cidr6, ip6);
            m.paths6.insert(cidr6, choose_path6(Auto, ip6, Some(net6)));
        }
        let v: Vec<String> = m.vxlan6().iter().map(|(c, ip)| format!("{c} -> {ip}")).collect();
        assert_eq!(v, ["fd00:244:0:3::/64 -> fd00:31::3"]);
        assert!(m.any_tunneled());
        // VXLAN over IPv6 takes 70 bytes, over IPv4 50.
        assert_eq!(PeerPath::Vxlan.mtu_over(1500, tunnel_overhead(true)), 1430);
        assert_eq!(PeerPath::Vxlan.mtu_over(1500, tunnel_overhead(false)), 1450);
        assert_eq!(PeerPath::Vxlan.mtu(1500), 1450);
        assert_eq!(PeerPath::Native.mtu_over(1500, tunnel_overhead(true)), 1500);
    }

    #[test]
    fn tunneled_peers_node_ips_go_through_the_tunnel_in_the_map_only() {
        let mut m = Membership::default();
        let (near, far): (Ipv4Network, Ipv4Network) =
            ("10.244.2.0/24".parse().unwrap(), "10.244.3.0/24".parse().unwrap());
        m.routes.insert(near, "172.30.0.2".parse().unwrap());
        m.routes.insert(far, "172.31.0.3".parse().unwrap());
        m.paths.insert(near, PathChoice { path: PeerPath::Native, reason: PathReason::SameSubnet });
        m.paths.insert(far, PathChoice { path: PeerPath::Vxlan, reason: PathReason::OffSubnet });
        let map = m.map_hops();
        let node: Ipv4Network = "172.31.0.3/32".parse().unwrap();
        assert_eq!(map.len(), 3, "{map:?}");
        assert_eq!(map[&node], Hop { node_ip: "172.31.0.3".parse().unwrap(), vxlan: true });
        assert!(crate::reconcile::map_routes::is_node_entry(node, &map[&node]));
        assert!(!crate::reconcile::map_routes::is_node_entry(far, &map[&far]));
        assert_eq!(m.hops().len(), 2, "kernel routes never get the node's /32 (it would loop the tunnel)");
    }
}
