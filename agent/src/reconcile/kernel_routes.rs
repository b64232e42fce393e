//! Kernel routes to other nodes' pod CIDRs, so the node's own stack reaches
//! every pod: host-network processes, kube-proxy's DNAT to a remote
//! backend, replies to remote pods. One route per peer (`<pod CIDR> via
//! <node IP> dev <uplink> proto 83`, or `<pod CIDR> dev sluice_vxlan proto
//! 83` for a tunneled peer: `to_tunnel` on the device's egress names the
//! remote end), kept equal to the same membership as
//! the BPF routes map. Only routes carrying sluice's protocol number are
//! ever read or removed, so everyone else's stay untouched.
use std::{collections::BTreeMap, fmt};

use anyhow::Result;
use ipnetwork::Ipv4Network;
use sluice_node::net::netlink::{KernelRoute, Netlink};
use tracing::info;

use super::map_routes::{native, Hops, Routes};

/// The route protocol sluice marks its routes with (`ip route ... proto 83`;
/// unassigned in iproute2's rt_protos; Calico uses 80).
pub const ROUTE_PROTOCOL: u8 = 83;

/// Every peer's pod CIDR via its node IP, out of the uplink.
pub fn desired(routes: &Routes, uplink_ifindex: u32) -> BTreeMap<Ipv4Network, KernelRoute> {
    desired_hops(&native(routes), uplink_ifindex, 0, None)
}

/// The MTU metric a native route to a peer's pods carries: the pods' MTU,
/// when it is below the uplink's (VXLAN's 50 bytes kept free with
/// `--tunnel=auto|always`, or a smaller `--mtu`). The node's own packets
/// to a pod are then sized for the pod's link from the start: without it
/// a datagram sized for the uplink reaches the pod's node and cannot enter
/// the pod's link; IPv6 (and IPv4 with DF) gets Packet Too Big back and
/// the datagram is lost, a DNS answer from a hostNetwork server among them.
/// `None` when the pods' MTU is the uplink's.
pub fn native_route_mtu(pod_mtu: u32, uplink_mtu: u32) -> Option<u32> {
    (pod_mtu < uplink_mtu).then_some(pod_mtu)
}

/// Native peers via their node IP out of the uplink, with `native_mtu`
/// (`native_route_mtu`); tunneled ones into the VXLAN device (no gateway:
/// the device is NOARP; its own MTU already leaves room for VXLAN). A
/// tunneled peer while there is no device (`vxlan_ifindex` 0) gets no
/// route.
pub fn desired_hops(
    hops: &Hops,
    uplink_ifindex: u32,
    vxlan_ifindex: u32,
    native_mtu: Option<u32>,
) -> BTreeMap<Ipv4Network, KernelRoute> {
    hops.iter()
        .filter(|(_, hop)| !hop.vxlan || vxlan_ifindex != 0)
        .map(|(cidr, hop)| {
            let route = if hop.vxlan {
                KernelRoute { dst: *cidr, gateway: None, oif: vxlan_ifindex, mtu: None }
            } else {
                KernelRoute { dst: *cidr, gateway: Some(hop.node_ip), oif: uplink_ifindex, mtu: native_mtu }
            };
            (*cidr, route)
        })
        .collect()
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct KernelRouteDiff {
    /// Missing, or pointing elsewhere (a replace overwrites in place).
    pub replace: Vec<KernelRoute>,
    /// Ours, but no longer wanted (a peer left, or a duplicate).
    pub delete: Vec<KernelRoute>,
}

impl KernelRouteDiff {
    pub fn is_empty(&self) -> bool {
        self.replace.is_empty() && self.delete.is_empty()
    }
}

pub fn diff(desired: &BTreeMap<Ipv4Network, KernelRoute>, actual: &[KernelRoute]) -> KernelRouteDiff {
    let mut d = KernelRouteDiff::default();
    let mut seen: BTreeMap<Ipv4Network, KernelRoute> = BTreeMap::new();
    for route in actual {
        match desired.get(&route.dst) {
            Some(want) if want == route && !seen.contains_key(&route.dst) => {
                seen.insert(route.dst, *route);
            }
            // Same destination, other next hop: the replace below fixes it.
            Some(_) => {}
            None => d.delete.push(*route),
        }
    }
    d.replace = desired.values().filter(|r| !seen.contains_key(&r.dst)).copied().collect();
    d
}

/// The operations the reconcile needs; `Netlink` is the real one.
#[allow(async_fn_in_trait)] // awaited in place on the agent's one thread
pub trait KernelRouteTable {
    async fn list(&self) -> Result<Vec<KernelRoute>>;
    async fn replace(&self, route: &KernelRoute) -> Result<()>;
    async fn delete(&self, route: &KernelRoute) -> Result<()>;
}

impl KernelRouteTable for Netlink {
    async fn list(&self) -> Result<Vec<KernelRoute>> {
        self.routes_of_protocol(ROUTE_PROTOCOL).await
    }
    async fn replace(&self, route: &KernelRoute) -> Result<()> {
        self.replace_route(route, ROUTE_PROTOCOL).await
    }
    async fn delete(&self, route: &KernelRoute) -> Result<()> {
        self.delete_route(route, ROUTE_PROTOCOL).await
    }
}

/// A route the kernel refused to take or give up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteFailure {
    /// `replace` or `delete`.
    pub op: &'static str,
    pub route: KernelRoute,
    pub error: String,
}

impl fmt::Display for RouteFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.op, self.route.describe(), self.error)
    }
}

/// What one reconcile did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct KernelRouteOutcome {
    pub diff: KernelRouteDiff,
    /// The steps that failed; every other step was applied.
    pub failed: Vec<RouteFailure>,
}

/// Read sluice's routes, diff, apply: replaces first (a CIDR that moves
/// between nodes is never unrouted), then deletions. A step the kernel
/// refuses is recorded and the rest still run (one bad route must not
/// hold back every other peer's, pass after pass); only a failed read
/// stops it.
pub async fn reconcile(
    table: &impl KernelRouteTable,
    desired: &BTreeMap<Ipv4Network, KernelRoute>,
) -> Result<KernelRouteOutcome> {
    let actual = table.list().await?;
    let d = diff(desired, &actual);
    let mut failed = Vec::new();
    for (op, routes) in [("replace", &d.replace), ("delete", &d.delete)] {
        for route in routes {
            let done = if op == "replace" { table.replace(route).await } else { table.delete(route).await };
            if let Err(e) = done {
                failed.push(RouteFailure { op, route: *route, error: format!("{e:#}") });
            }
        }
    }
    if !d.is_empty() {
        info!(
            replaced = d.replace.len(),
            deleted = d.delete.len(),
            failed = failed.len(),
            total = desired.len(),
            "kernel routes reconciled"
        );
    }
    Ok(KernelRouteOutcome { diff: d, failed })
}

#[cfg(test)]
mod tests {
    use std::{cell::RefCell, net::Ipv4Addr};

    use super::*;

    fn route(dst: &str, gw: &str, oif: u32) -> KernelRoute {
        KernelRoute { dst: dst.parse().unwrap(), gateway: Some(gw.parse().unwrap()), oif, mtu: None }
    }

    fn routes(entries: &[(&str, &str)]) -> Routes {
        entries.iter().map(|(c, ip)| (c.parse().unwrap(), ip.parse::<Ipv4Addr>().unwrap())).collect()
    }

    #[test]
    fn desired_routes_go_out_of_the_uplink() {
        let d = desired(&routes(&[("10.244.2.0/24", "172.30.0.2")]), 2);
        assert_eq!(d.values().copied().collect::<Vec<_>>(), vec![route("10.244.2.0/24", "172.30.0.2", 2)]);
    }

    #[test]
    fn tunneled_peers_route_into_the_vxlan_device() {
        use crate::reconcile::map_routes::Hop;
        let hops: Hops = [
            ("10.244.2.0/24".parse().unwrap(), Hop { node_ip: "172.30.0.2".parse().unwrap(), vxlan: false }),
            ("10.244.3.0/24".parse().unwrap(), Hop { node_ip: "172.31.0.3".parse().unwrap(), vxlan: true }),
        ]
        .into_iter()
        .collect();
        let d = desired_hops(&hops, 2, 9, None);
        assert_eq!(
            d.values().copied().collect::<Vec<_>>(),
            vec![
                route("10.244.2.0/24", "172.30.0.2", 2),
                KernelRoute { dst: "10.244.3.0/24".parse().unwrap(), gateway: None, oif: 9, mtu: None }
            ]
        );
        // No device: the tunneled peer gets no route rather than a wrong one.
        assert_eq!(desired_hops(&hops, 2, 0, None).len(), 1);
        // With pods smaller than the uplink: native routes carry the pods'
        // MTU, the tunnel's route none (its device's MTU is already less).
        let d: Vec<String> = desired_hops(&hops, 2, 9, Some(1450)).values().map(KernelRoute::describe).collect();
        assert_eq!(d, ["10.244.2.0/24 via 172.30.0.2 dev #2 mtu 1450", "10.244.3.0/24 dev #9"]);
    }

    #[test]
    fn native_routes_carry_the_pods_mtu_only_when_it_is_below_the_uplinks() {
        assert_eq!(native_route_mtu(1450, 1500), Some(1450), "VXLAN's room kept (--tunnel=auto)");
        assert_eq!(native_route_mtu(1500, 1500), None, "--tunnel=never: pods as large as the uplink");
        assert_eq!(native_route_mtu(8950, 9000), Some(8950));
        // A route whose metric differs is replaced (an agent upgraded over
        // routes without one).
        let want =
            desired_hops(&native(&routes(&[("10.244.2.0/24", "172.30.0.2")])), 2, 0, native_route_mtu(1450, 1500));
        let old = [route("10.244.2.0/24", "172.30.0.2", 2)];
        assert_eq!(diff(&want, &old).replace.len(), 1);
        let current: Vec<KernelRoute> = want.values().copied().collect();
        assert!(diff(&want, &current).is_empty());
    }

    #[test]
    fn diff_table() {
        let want = desired(&routes(&[("10.244.2.0/24", "172.30.0.2"), ("10.244.3.0/24", "172.30.0.3")]), 2);
        // In step: nothing.
        let same: Vec<_> = want.values().copied().collect();
        assert!(diff(&want, &same).is_empty());
        // From scratch: both.
        assert_eq!(diff(&want, &[]).replace.len(), 2);
        // A moved next hop is replaced; a departed peer's route deleted.
        let actual = vec![route("10.244.2.0/24", "172.30.0.9", 2), route("10.244.4.0/24", "172.30.0.4", 2)];
        let d = diff(&want, &actual);
        assert_eq!(d.replace, vec![route("10.244.2.0/24", "172.30.0.2", 2), route("10.244.3.0/24", "172.30.0.3", 2)]);
        assert_eq!(d.delete, vec![route("10.244.4.0/24", "172.30.0.4", 2)]);
        // The uplink changed (ifindex): replaced.
        let d = diff(&want, &[route("10.244.2.0/24", "172.30.0.2", 7), route("10.244.3.0/24", "172.30.0.3", 2)]);
        assert_eq!(d.replace, vec![route("10.244.2.0/24", "172.30.0.2", 2)]);
        assert!(d.delete.is_empty());
    }

    #[derive(Default)]
    struct FakeTable {
        routes: RefCell<Vec<KernelRoute>>,
        calls: RefCell<Vec<String>>,
        /// Replacing or deleting a route to this destination fails.
        refuse: Option<Ipv4Network>,
    }

    impl FakeTable {
        fn refuses(&self, r: &KernelRoute) -> Result<()> {
            match self.refuse {
                Some(dst) if dst == r.dst => anyhow::bail!("Nexthop has invalid gateway"),
                _ => Ok(()),
            }
        }
    }

    impl KernelRouteTable for FakeTable {
        async fn list(&self) -> Result<Vec<KernelRoute>> {
            Ok(self.routes.borrow().clone())
        }
        async fn replace(&self, r: &KernelRoute) -> Result<()> {
            self.calls.borrow_mut().push(format!("replace {}", r.describe()));
            self.refuses(r)?;
            let mut routes = self.routes.borrow_mut();
            routes.retain(|x| x.dst != r.dst);
            routes.push(*r);
            Ok(())
        }
        async fn delete(&self, r: &KernelRoute) -> Result<()> {
            self.calls.borrow_mut().push(format!("delete {}", r.describe()));
            self.refuses(r)?;
            self.routes.borrow_mut().retain(|x| x != r);
            Ok(())
        }
    }

    #[test]
    fn reconcile_replaces_before_deleting_and_converges() {
        let t = FakeTable { routes: RefCell::new(vec![route("10.244.4.0/24", "172.30.0.4", 2)]), ..Default::default() };
        let want = desired(&routes(&[("10.244.2.0/24", "172.30.0.2")]), 2);
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        assert!(rt.block_on(reconcile(&t, &want)).unwrap().failed.is_empty());
        assert_eq!(
            t.calls.borrow().clone(),
            vec!["replace 10.244.2.0/24 via 172.30.0.2 dev #2", "delete 10.244.4.0/24 via 172.30.0.4 dev #2"]
        );
        t.calls.borrow_mut().clear();
        assert!(rt.block_on(reconcile(&t, &want)).unwrap().diff.is_empty());
        assert!(t.calls.borrow().is_empty());
    }

    #[test]
    fn a_refused_route_is_reported_and_every_other_one_applied() {
        let refused: Ipv4Network = "10.244.3.0/24".parse().unwrap();
        let stale = route("10.244.8.0/24", "172.30.0.8", 2);
        let t = FakeTable { routes: RefCell::new(vec![stale]), refuse: Some(refused), ..Default::default() };
        let want = desired(
            &routes(&[
                ("10.244.2.0/24", "172.30.0.2"),
                ("10.244.3.0/24", "172.30.0.255"),
                ("10.244.9.0/24", "172.30.0.9"),
            ]),
            2,
        );
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let outcome = rt.block_on(reconcile(&t, &want)).unwrap();
        assert_eq!(
            outcome.failed,
            vec![RouteFailure {
                op: "replace",
                route: route("10.244.3.0/24", "172.30.0.255", 2),
                error: "Nexthop has invalid gateway".into()
            }]
        );
        assert_eq!(
            outcome.failed[0].to_string(),
            "replace 10.244.3.0/24 via 172.30.0.255 dev #2: Nexthop has invalid gateway"
        );
        // The routes after the refused one were replaced, the stale one deleted.
        let mut now: Vec<String> = t.routes.borrow().iter().map(|r| r.describe()).collect();
        now.sort();
        assert_eq!(now, ["10.244.2.0/24 via 172.30.0.2 dev #2", "10.244.9.0/24 via 172.30.0.9 dev #2"]);
        // And on the next pass only the refused one is tried again.
        t.calls.borrow_mut().clear();
        let again = rt.block_on(reconcile(&t, &want)).unwrap();
        assert_eq!(again.failed.len(), 1);
        assert_eq!(t.calls.borrow().clone(), vec!["replace 10.244.3.0/24 via 172.30.0.255 dev #2"]);
    }
}
