//! The BPF routes map `NODE_ROUTES` (other nodes' pod CIDRs → node IP and
//! whether to encapsulate), kept equal to membership: `diff` decides
//! (pure), `reconcile` reads the map, diffs and applies through
//! `RouteTable`, which the pinned map implements and the tests fake.
use std::{collections::BTreeMap, net::Ipv4Addr};

use anyhow::Result;
use ipnetwork::Ipv4Network;
use sluice_node::datapath::pinned_maps::NodeRoutes;
use tracing::info;

/// Pod CIDR → node IP.
pub type Routes = BTreeMap<Ipv4Network, Ipv4Addr>;

/// Where one pod CIDR's packets go: `NODE_ROUTES`' value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Hop {
    pub node_ip: Ipv4Addr,
    /// Encapsulated (VXLAN) rather than routed natively.
    pub vxlan: bool,
}

/// Pod CIDR → hop.
pub type Hops = BTreeMap<Ipv4Network, Hop>;

/// A tunneled peer's own node IP as a `/32` entry of `NODE_ROUTES`
/// (`Membership::map_hops`): not a pod CIDR, but what makes `from_pod`
/// send a pod's packets for that node (its host-network servers, replies
/// to it) through the tunnel too, so no pod address reaches the underlay
/// and both directions use the same device (strict `rp_filter`). Kernel
/// routes, `status` and `connectivity-test` leave these out.
pub fn is_node_entry(cidr: Ipv4Network, hop: &Hop) -> bool {
    cidr.prefix() == 32 && cidr.ip() == hop.node_ip
}

/// Every route native: what `Routes` meant before tunnels.
pub fn native(routes: &Routes) -> Hops {
    routes.iter().map(|(c, ip)| (*c, Hop { node_ip: *ip, vxlan: false })).collect()
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct RouteDiff {
    /// New CIDRs, and CIDRs whose hop changed (an upsert replaces).
    pub upsert: Vec<(Ipv4Network, Hop)>,
    pub remove: Vec<Ipv4Network>,
}

impl RouteDiff {
    pub fn is_empty(&self) -> bool {
        self.upsert.is_empty() && self.remove.is_empty()
    }
}

pub fn diff(desired: &Hops, actual: &Hops) -> RouteDiff {
    RouteDiff {
        upsert: desired.iter().filter(|(cidr, hop)| actual.get(cidr) != Some(hop)).map(|(c, h)| (*c, *h)).collect(),
        remove: actual.keys().filter(|c| !desired.contains_key(c)).copied().collect(),
    }
}

/// The few operations the reconcile needs from the routes map.
pub trait RouteTable {
    fn all(&self) -> Result<Hops>;
    fn upsert(&mut self, cidr: Ipv4Network, hop: Hop) -> Result<()>;
    fn remove(&mut self, cidr: Ipv4Network) -> Result<()>;
}

impl RouteTable for NodeRoutes {
    fn all(&self) -> Result<Hops> {
        Ok(NodeRoutes::all_hops(self)?
            .into_iter()
            .map(|(cidr, (node_ip, vxlan))| (cidr, Hop { node_ip, vxlan }))
            .collect())
    }
    fn upsert(&mut self, cidr: Ipv4Network, hop: Hop) -> Result<()> {
        NodeRoutes::upsert_hop(self, cidr, hop.node_ip, hop.vxlan)
    }
    fn remove(&mut self, cidr: Ipv4Network) -> Result<()> {
        NodeRoutes::remove(self, cidr)
    }
}

/// `reconcile_hops` with every route native (the benchmark's synthetic
/// peers).
pub fn reconcile(table: &mut impl RouteTable, desired: &Routes) -> Result<RouteDiff> {
    reconcile_hops(table, &native(desired))
}

/// Read the table, diff against `desired`, apply. Removals go first, so a
/// full map makes room before new routes arrive (a node replaced in a full
/// map); a CIDR that moves between nodes (or between native and VXLAN) is
/// an upsert of its key in place, never absent. The first failure stops
/// the pass (the next pass starts again from what the table then holds).
pub fn reconcile_hops(table: &mut impl RouteTable, desired: &Hops) -> Result<RouteDiff> {
    let actual = table.all()?;
    let diff = diff(desired, &actual);
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
            tunneled = desired.values().filter(|h| h.vxlan).count(),
            "map routes reconciled"
        );
    }
    Ok(diff)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(entries: &[(&str, &str)]) -> Hops {
        entries.iter().map(|(c, ip)| (c.parse().unwrap(), Hop { node_ip: ip.parse().unwrap(), vxlan: false })).collect()
    }

    fn hop(ip: &str) -> Hop {
        Hop { node_ip: ip.parse().unwrap(), vxlan: false }
    }

    #[test]
    fn diff_table() {
        let a = routes(&[("10.244.2.0/24", "192.168.0.2"), ("10.244.3.0/24", "192.168.0.3")]);
        // Equal: nothing to do (idempotent).
        assert!(diff(&a, &a).is_empty());
        // From scratch: everything added.
        assert_eq!(diff(&a, &Hops::new()).upsert.len(), 2);
        // Everything gone.
        assert_eq!(diff(&Hops::new(), &a).remove.len(), 2);
        // One moved to another node IP, one removed, one added.
        let b = routes(&[("10.244.2.0/24", "192.168.0.9"), ("10.244.4.0/24", "192.168.0.4")]);
        let d = diff(&b, &a);
        assert_eq!(
            d.upsert,
            vec![
                ("10.244.2.0/24".parse().unwrap(), hop("192.168.0.9")),
                ("10.244.4.0/24".parse().unwrap(), hop("192.168.0.4"))
            ]
        );
        assert_eq!(d.remove, vec!["10.244.3.0/24".parse().unwrap()]);
        // Same node IP, now tunneled: an upsert in place.
        let mut c = a.clone();
        c.get_mut(&"10.244.2.0/24".parse().unwrap()).unwrap().vxlan = true;
        let d = diff(&c, &a);
        assert_eq!(d.upsert.len(), 1);
        assert!(d.upsert[0].1.vxlan);
        assert!(d.remove.is_empty());
    }

    /// A routes map in memory: records every call, can be full, can fail.
    #[derive(Default)]
    struct FakeTable {
        routes: Hops,
        capacity: Option<usize>,
        fail_upsert_of: Option<Ipv4Network>,
        calls: Vec<String>,
    }

    impl RouteTable for FakeTable {
        fn all(&self) -> Result<Hops> {
            Ok(self.routes.clone())
        }
        fn upsert(&mut self, cidr: Ipv4Network, node_ip: Hop) -> Result<()> {
            self.calls.push(format!("upsert {cidr}"));
            if self.fail_upsert_of == Some(cidr) {
                anyhow::bail!("injected failure for {cidr}");
            }
            let is_new = !self.routes.contains_key(&cidr);
            if is_new && self.capacity.is_some_and(|c| self.routes.len() >= c) {
                anyhow::bail!("map full");
            }
            self.routes.insert(cidr, node_ip);
            Ok(())
        }
        fn remove(&mut self, cidr: Ipv4Network) -> Result<()> {
            self.calls.push(format!("remove {cidr}"));
            self.routes.remove(&cidr);
            Ok(())
        }
    }

    #[test]
    fn removals_before_upserts_and_only_the_difference() {
        let mut t = FakeTable {
            routes: routes(&[("10.1.0.0/24", "1.1.1.1"), ("10.2.0.0/24", "1.1.1.2")]),
            ..Default::default()
        };
        let desired = routes(&[("10.2.0.0/24", "1.1.1.2"), ("10.3.0.0/24", "1.1.1.3")]);
        let d = reconcile_hops(&mut t, &desired).unwrap();
        assert_eq!(t.calls, vec!["remove 10.1.0.0/24", "upsert 10.3.0.0/24"]);
        assert_eq!(t.routes, desired);
        assert_eq!(d.upsert.len() + d.remove.len(), 2);
        // A second pass is a no-op.
        t.calls.clear();
        assert!(reconcile_hops(&mut t, &desired).unwrap().is_empty());
        assert!(t.calls.is_empty());
    }

    #[test]
    fn a_failing_upsert_stops_the_pass_and_keeps_what_is_there() {
        let old = routes(&[("10.1.0.0/24", "1.1.1.1"), ("10.2.0.0/24", "1.1.1.2")]);
        let bad: Ipv4Network = "10.3.0.0/24".parse().unwrap();
        let mut t = FakeTable { routes: old.clone(), fail_upsert_of: Some(bad), ..Default::default() };
        let desired = routes(&[("10.2.0.0/24", "1.1.1.9"), ("10.3.0.0/24", "1.1.1.3")]);
        assert!(reconcile_hops(&mut t, &desired).is_err());
        // 10.1 (gone from membership) went, 10.2 moved, 10.3 failed: the
        // routes still wanted keep flowing until a pass succeeds.
        assert_eq!(t.calls, vec!["remove 10.1.0.0/24", "upsert 10.2.0.0/24", "upsert 10.3.0.0/24"]);
        assert_eq!(t.routes[&"10.2.0.0/24".parse().unwrap()], hop("1.1.1.9"));
        // Once the failure clears, the next pass finishes the job.
        t.fail_upsert_of = None;
        reconcile_hops(&mut t, &desired).unwrap();
        assert_eq!(t.routes, desired);
    }

    #[test]
    fn a_full_map_still_takes_a_replaced_node_and_moves_existing_ones() {
        let mut t =
            FakeTable { routes: routes(&[("10.1.0.0/24", "1.1.1.1")]), capacity: Some(1), ..Default::default() };
        // Same CIDR, new node IP: an in-place update fits.
        reconcile_hops(&mut t, &routes(&[("10.1.0.0/24", "1.1.1.9")])).unwrap();
        assert_eq!(t.routes, routes(&[("10.1.0.0/24", "1.1.1.9")]));
        // A node replaced by another: its route leaves first, so the new one fits.
        reconcile_hops(&mut t, &routes(&[("10.2.0.0/24", "1.1.1.2")])).unwrap();
        assert_eq!(t.routes, routes(&[("10.2.0.0/24", "1.1.1.2")]));
        // More routes than fit: a named error, the rest kept.
        let err =
            reconcile_hops(&mut t, &routes(&[("10.2.0.0/24", "1.1.1.2"), ("10.3.0.0/24", "1.1.1.3")])).unwrap_err();
        assert!(format!("{err:#}").contains("full"), "{err:#}");
        assert_eq!(t.routes, routes(&[("10.2.0.0/24", "1.1.1.2")]), "nothing lost");
    }
}
