//! The IPv6 twin of `map_routes`: the BPF routes map `NODE_ROUTES6`
//! (other nodes' IPv6 pod CIDRs → their IPv6 node address), kept equal to
//! membership's `routes6` — the same set the IPv6 kernel routes are made
//! from (`kernel_routes6`), so the fast path and the stack agree on where
//! a pod CIDR is. A peer reached through VXLAN has an entry flagged
//! `REMOTE_NODE_VXLAN` holding its IPv4 node address (`desired6`); a peer
//! `routes6` leaves out has none (its pods' IPv6 stays on the stack's
//! path). `diff6` decides (pure); `reconcile6` reads the map,
//! diffs and applies through `RouteTable6`, which the pinned map
//! implements and the tests fake.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv6Addr},
};

use anyhow::Result;
use ipnetwork::Ipv6Network;
use sluice_node::{datapath::pinned_maps::NodeRoutes6, net::netlink6::KernelRoute6};
use tracing::info;

/// IPv6 pod CIDR → node IPv6 address (membership's `routes6`).
pub type Routes6 = BTreeMap<Ipv6Network, Ipv6Addr>;

/// One `NODE_ROUTES6` entry: the node's address, and whether it is
/// reached through VXLAN (`REMOTE_NODE_VXLAN`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Hop6 {
    pub node_ip6: Ipv6Addr,
    pub vxlan: bool,
}

/// IPv6 pod CIDR → its `NODE_ROUTES6` entry.
pub type MapRoutes6 = BTreeMap<Ipv6Network, Hop6>;

/// What `NODE_ROUTES6` must hold: the routes of `routes6` the kernel has
/// too, as wanted (`installed`: sluice's IPv6 kernel routes after their
/// reconcile; the uplink's `uplink_ifindex`). The fast path sends a pod's
/// packet to the peer's IPv6 address with `bpf_redirect_neigh` out of the
/// uplink; a route the kernel refused (the peer's address is not on the
/// uplink's link) would have it resolve a neighbour that never answers,
/// so such a peer stays on the stack's path, where the refusal is
/// reported.
///
/// A peer reached through VXLAN (its kernel route into the VXLAN device
/// with an IP encap, `kernel_routes6`) gets an entry too, flagged
/// `REMOTE_NODE_VXLAN` and holding the encap's destination: over an IPv4
/// underlay its IPv4 node address IPv4-mapped (`::ffff:a.b.c.d`), over an
/// IPv6 one (an IPv6-only node) its IPv6 node address. `from_pod6` leaves
/// its pods to the stack and the kernel route, and `from_tunnel` lets
/// through the tunnel only IPv6 whose source is in the pod CIDR of the
/// node that sent it (the outer source, as the same bytes).
pub fn desired6(routes6: &Routes6, installed: &[KernelRoute6], uplink_ifindex: u32) -> MapRoutes6 {
    routes6
        .iter()
        .filter_map(|(cidr, ip)| {
            installed.iter().filter(|r| r.dst == *cidr).find_map(|r| match r.encap {
                None if r.gateway == Some(*ip) && r.oif == uplink_ifindex => {
                    Some((*cidr, Hop6 { node_ip6: *ip, vxlan: false }))
                }
                Some(e) if r.gateway.is_none() && r.oif != uplink_ifindex => {
                    let node_ip6 = match e.dst {
                        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                        IpAddr::V6(v6) => v6,
                    };
                    Some((*cidr, Hop6 { node_ip6, vxlan: true }))
                }
                _ => None,
            })
        })
        .collect()
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct RouteDiff6 {
    /// New CIDRs, and CIDRs whose node changed (an upsert replaces).
    pub upsert: Vec<(Ipv6Network, Hop6)>,
    pub remove: Vec<Ipv6Network>,
}

impl RouteDiff6 {
    pub fn is_empty(&self) -> bool {
        self.upsert.is_empty() && self.remove.is_empty()
    }
}

pub fn diff6(desired: &MapRoutes6, actual: &MapRoutes6) -> RouteDiff6 {
    RouteDiff6 {
        upsert: desired.iter().filter(|(cidr, ip)| actual.get(cidr) != Some(ip)).map(|(c, ip)| (*c, *ip)).collect(),
        remove: actual.keys().filter(|c| !desired.contains_key(c)).copied().collect(),
    }
}

/// The few operations the reconcile needs from the routes map.
pub trait RouteTable6 {
    fn all(&self) -> Result<MapRoutes6>;
    fn upsert(&mut self, cidr: Ipv6Network, hop: Hop6) -> Result<()>;
    fn remove(&mut self, cidr: Ipv6Network) -> Result<()>;
}

impl RouteTable6 for NodeRoutes6 {
    fn all(&self) -> Result<MapRoutes6> {
        Ok(NodeRoutes6::all_hops(self)?
            .into_iter()
            .map(|(cidr, (node_ip6, vxlan))| (cidr, Hop6 { node_ip6, vxlan }))
            .collect())
    }
    fn upsert(&mut self, cidr: Ipv6Network, hop: Hop6) -> Result<()> {
        NodeRoutes6::upsert_hop(self, cidr, hop.node_ip6, hop.vxlan)
    }
    fn remove(&mut self, cidr: Ipv6Network) -> Result<()> {
        NodeRoutes6::remove(self, cidr)
    }
}

/// Read the table, diff against `desired`, apply: removals first (a full
/// map makes room), a CIDR that moves to another node upserted in place.
/// The first failure stops the pass; the next starts from what the table
/// then holds.
pub fn reconcile6(table: &mut impl RouteTable6, desired: &MapRoutes6) -> Result<RouteDiff6> {
    let actual = table.all()?;
    let diff = diff6(desired, &actual);
    for cidr in &diff.remove {
        table.remove(*cidr)?;
    }
    for (cidr, hop) in &diff.upsert {
        table.upsert(*cidr, *hop)?;
    }
    if !diff.is_empty() {
        info!(
            upserted = diff.upsert.len(),
            removed = diff.remove.len(),
            total = desired.len(),
            "IPv6 map routes reconciled"
        );
    }
    Ok(diff)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(entries: &[(&str, &str)]) -> Routes6 {
        entries.iter().map(|(c, ip)| (c.parse().unwrap(), ip.parse().unwrap())).collect()
    }

    /// Map entries: native, but an IPv4-mapped address is tunneled (as
    /// over an IPv4 underlay); `tunneled` entries are tunneled whatever
    /// their address.
    fn hops(entries: &[(&str, &str)], tunneled: &[&str]) -> MapRoutes6 {
        entries
            .iter()
            .map(|(c, ip)| {
                let node_ip6: Ipv6Addr = ip.parse().unwrap();
                let vxlan = node_ip6.to_ipv4_mapped().is_some() || tunneled.contains(c);
                (c.parse().unwrap(), Hop6 { node_ip6, vxlan })
            })
            .collect()
    }

    #[test]
    fn diff6_table() {
        let a = hops(&[("fd00:244:0:2::/64", "fd00:30::2"), ("fd00:244:0:3::/64", "fd00:30::3")], &[]);
        assert!(diff6(&a, &a).is_empty(), "equal: nothing to do");
        assert_eq!(diff6(&a, &MapRoutes6::new()).upsert.len(), 2);
        assert_eq!(diff6(&MapRoutes6::new(), &a).remove.len(), 2);
        let b = hops(&[("fd00:244:0:2::/64", "fd00:30::9"), ("fd00:244:0:4::/64", "fd00:30::4")], &[]);
        let d = diff6(&b, &a);
        let hop = |ip: &str| Hop6 { node_ip6: ip.parse().unwrap(), vxlan: false };
        assert_eq!(
            d.upsert,
            vec![
                ("fd00:244:0:2::/64".parse().unwrap(), hop("fd00:30::9")),
                ("fd00:244:0:4::/64".parse().unwrap(), hop("fd00:30::4"))
            ]
        );
        assert_eq!(d.remove, vec!["fd00:244:0:3::/64".parse().unwrap()]);
        // The same address, now through the tunnel (an IPv6-only node's
        // peer moved behind a router): upserted with the flag.
        let c =
            hops(&[("fd00:244:0:2::/64", "fd00:30::2"), ("fd00:244:0:3::/64", "fd00:30::3")], &["fd00:244:0:3::/64"]);
        assert_eq!(
            diff6(&c, &a).upsert,
            vec![("fd00:244:0:3::/64".parse().unwrap(), Hop6 { node_ip6: "fd00:30::3".parse().unwrap(), vxlan: true })]
        );
    }

    #[test]
    fn only_routes_the_kernel_holds_as_wanted_take_the_fast_path() {
        let want = routes(&[
            ("fd00:244:0:2::/64", "fd00:30::2"),
            ("fd00:244:0:3::/64", "fd00:31::3"),
            ("fd00:244:0:4::/64", "fd00:30::4"),
        ]);
        let k = |dst: &str, gw: &str, oif| KernelRoute6 {
            dst: dst.parse().unwrap(),
            gateway: Some(gw.parse().unwrap()),
            oif,
            encap: None,
            src: None,
            mtu: None,
        };
        let installed = [
            k("fd00:244:0:2::/64", "fd00:30::2", 2),
            // Refused (not on the link): absent. Another gateway, another device: stale.
            k("fd00:244:0:4::/64", "fd00:30::9", 2),
            k("fd00:244:0:9::/64", "fd00:30::9", 2),
        ];
        assert_eq!(desired6(&want, &installed, 2), hops(&[("fd00:244:0:2::/64", "fd00:30::2")], &[]));
        assert!(desired6(&want, &installed, 3).is_empty(), "not out of the uplink");
        // Through the VXLAN device (#7) with an encap: its IPv4 node
        // address, IPv4-mapped.
        let encap = sluice_node::net::netlink6::Encap { vni: 1, dst: "172.31.0.3".parse().unwrap(), ttl: 64 };
        let tunneled = KernelRoute6 {
            dst: "fd00:244:0:3::/64".parse().unwrap(),
            gateway: None,
            oif: 7,
            encap: Some(encap),
            src: None,
            mtu: None,
        };
        let installed = [installed[0], tunneled];
        assert_eq!(
            desired6(&want, &installed, 2),
            hops(&[("fd00:244:0:2::/64", "fd00:30::2"), ("fd00:244:0:3::/64", "::ffff:172.31.0.3")], &[])
        );
        // An IPv6-only node's peer behind a router: its IPv6 address,
        // flagged (the encap over the IPv6 underlay).
        let encap6 = sluice_node::net::netlink6::Encap { dst: "fd00:31::3".parse().unwrap(), ..encap };
        let tunneled6 = KernelRoute6 { encap: Some(encap6), ..tunneled };
        let installed = [installed[0], tunneled6];
        assert_eq!(
            desired6(&want, &installed, 2),
            hops(&[("fd00:244:0:2::/64", "fd00:30::2"), ("fd00:244:0:3::/64", "fd00:31::3")], &["fd00:244:0:3::/64"])
        );
    }

    /// A table that refuses inserts once it holds `cap` entries.
    struct Fake {
        rows: MapRoutes6,
        cap: usize,
        ops: Vec<String>,
    }

    impl RouteTable6 for Fake {
        fn all(&self) -> Result<MapRoutes6> {
            Ok(self.rows.clone())
        }
        fn upsert(&mut self, cidr: Ipv6Network, ip: Hop6) -> Result<()> {
            if !self.rows.contains_key(&cidr) && self.rows.len() >= self.cap {
                anyhow::bail!("NODE_ROUTES6 is full");
            }
            self.ops.push(format!("upsert {cidr}"));
            self.rows.insert(cidr, ip);
            Ok(())
        }
        fn remove(&mut self, cidr: Ipv6Network) -> Result<()> {
            self.ops.push(format!("remove {cidr}"));
            self.rows.remove(&cidr);
            Ok(())
        }
    }

    #[test]
    fn reconcile6_removes_first_so_a_full_map_takes_a_replacement() {
        let mut t = Fake { rows: hops(&[("fd00:244:0:2::/64", "fd00:30::2")], &[]), cap: 1, ops: vec![] };
        let want = hops(&[("fd00:244:0:3::/64", "fd00:30::3")], &[]);
        reconcile6(&mut t, &want).unwrap();
        assert_eq!(t.rows, want);
        assert_eq!(t.ops, ["remove fd00:244:0:2::/64", "upsert fd00:244:0:3::/64"]);
        // Idempotent: a second pass does nothing.
        t.ops.clear();
        assert!(reconcile6(&mut t, &want).unwrap().is_empty());
        assert!(t.ops.is_empty());
    }

    #[test]
    fn reconcile6_reports_a_full_map() {
        let mut t = Fake { rows: MapRoutes6::new(), cap: 0, ops: vec![] };
        let err = reconcile6(&mut t, &hops(&[("fd00:244:0:3::/64", "fd00:30::3")], &[])).unwrap_err();
        assert!(format!("{err:#}").contains("full"), "{err:#}");
    }
}
