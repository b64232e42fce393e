//! The IPv6 twin of `kernel_routes`: on a dual-stack node, a kernel route
//! per peer's IPv6 pod CIDR via its IPv6 node address, out of the uplink
//! (`<pod CIDR6> via <node IP6> dev <uplink> proto 83`), or, for a peer
//! whose IPv4 is tunneled, into the VXLAN device with an IPv4 encap
//! (`<pod CIDR6> encap ip id 1 dst <node IP4> ttl 64 dev sluice_vxlan
//! proto 83 src <tunnel source>`: IPv6 inside the IPv4 underlay), or, on an
//! IPv6-only node, for a peer behind a router, into the device with an
//! IPv6 encap (`encap ip6 id 1 dst <node IP6> hoplimit 64 csum`: VXLAN
//! over the IPv6 underlay), kept equal to membership's
//! `routes6`. Like the IPv4 reconcile, only routes with sluice's protocol number
//! are read or removed, and a route the kernel refuses is reported while
//! every other one is applied.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv6Addr},
};

use anyhow::Result;
use ipnetwork::Ipv6Network;
use sluice_common::maps::TUNNEL_VNI;
use sluice_node::net::{
    netlink::Netlink,
    netlink6::{Encap, KernelRoute6},
};
use tracing::info;

use super::kernel_routes::ROUTE_PROTOCOL;

/// Every peer's IPv6 pod CIDR via its IPv6 node address, out of the
/// uplink; a tunneled peer (`vxlan6`: its IPv4 node address on a
/// dual-stack node, its IPv6 one on an IPv6-only node) into the VXLAN
/// device instead, with an IP encap naming that address (`encap ip id VNI
/// dst PEER4`, `encap ip6 id VNI dst PEER6`: the external device takes its
/// tunnel key from the route, as `to_tunnel` gives IPv4 packets theirs).
/// A tunneled peer while there is no device (`vxlan_ifindex` 0) gets no
/// route. Its route names `tunnel_src6` (`tunnel_source6`, held by the
/// VXLAN device) as the source of the node's own packets, when given.
/// Native routes carry `native_mtu` (`kernel_routes::native_route_mtu`):
/// no router fragments IPv6, so a packet the node sized for its uplink
/// would be lost at the pod's link.
pub fn desired6(
    routes6: &BTreeMap<Ipv6Network, Ipv6Addr>,
    vxlan6: &BTreeMap<Ipv6Network, IpAddr>,
    uplink_ifindex: u32,
    vxlan_ifindex: u32,
    tunnel_src6: Option<Ipv6Addr>,
    native_mtu: Option<u32>,
) -> BTreeMap<Ipv6Network, KernelRoute6> {
    routes6
        .iter()
        .filter_map(|(cidr, ip)| {
            let route = match vxlan6.get(cidr) {
                None => KernelRoute6 {
                    dst: *cidr,
                    gateway: Some(*ip),
                    oif: uplink_ifindex,
                    encap: None,
                    src: None,
                    mtu: native_mtu,
                },
                Some(_) if vxlan_ifindex == 0 => return None,
                Some(peer) => KernelRoute6 {
                    dst: *cidr,
                    gateway: None,
                    oif: vxlan_ifindex,
                    encap: Some(Encap { vni: TUNNEL_VNI, dst: *peer, ttl: OUTER_TTL }),
                    src: tunnel_src6,
                    mtu: None,
                },
            };
            Some((*cidr, route))
        })
        .collect()
}

/// The node's own IPv6 source toward peers behind a router: its IPv6 pod
/// CIDR's network address (`<CIDR6>::`, which IPAM never hands out: pods
/// start at `::2`, the health endpoint is `::1`), held by the VXLAN device
/// as a /128. The node's own packets through the tunnel leave from it (the
/// tunneled routes' `src`), so the receiving node's `from_tunnel6` takes
/// them as the sender's pod CIDR, and the answer comes back through the
/// tunnel by the peer's route for this node's pod CIDR. With the uplink's
/// address instead, the peer drops them (`tunnel_wrong_node`), and an
/// underlay that forwards no IPv6 between the node networks could not
/// carry the answer anyway. Cilium's `cilium_host` router IP does the same.
pub fn tunnel_source6(own_cidr6: Ipv6Network) -> Ipv6Addr {
    own_cidr6.network()
}

/// The outer header's TTL, as the eBPF encapsulation writes it (the
/// kernel's IPDEFTTL).
pub const OUTER_TTL: u8 = 64;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct KernelRouteDiff6 {
    /// Missing, or pointing elsewhere (a replace overwrites in place).
    pub replace: Vec<KernelRoute6>,
    /// Ours, but no longer wanted.
    pub delete: Vec<KernelRoute6>,
}

pub fn diff6(desired: &BTreeMap<Ipv6Network, KernelRoute6>, actual: &[KernelRoute6]) -> KernelRouteDiff6 {
    let mut d = KernelRouteDiff6::default();
    let mut seen: BTreeSet<Ipv6Network> = BTreeSet::new();
    for route in actual {
        match desired.get(&route.dst) {
            Some(want) if want == route && !seen.contains(&route.dst) => {
                seen.insert(route.dst);
            }
            Some(_) => {}
            None => d.delete.push(*route),
        }
    }
    d.replace = desired.values().filter(|r| !seen.contains(&r.dst)).copied().collect();
    d
}

/// The operations the reconcile needs; `Netlink` is the real one.
#[allow(async_fn_in_trait)] // awaited in place on the agent's one thread
pub trait KernelRouteTable6 {
    async fn list6(&self) -> Result<Vec<KernelRoute6>>;
    async fn replace6(&self, route: &KernelRoute6) -> Result<()>;
    async fn delete6(&self, route: &KernelRoute6) -> Result<()>;
}

impl KernelRouteTable6 for Netlink {
    async fn list6(&self) -> Result<Vec<KernelRoute6>> {
        self.main_routes6(Some(ROUTE_PROTOCOL)).await
    }
    async fn replace6(&self, route: &KernelRoute6) -> Result<()> {
        self.replace_route6(route, ROUTE_PROTOCOL).await
    }
    async fn delete6(&self, route: &KernelRoute6) -> Result<()> {
        self.delete_route6(route, ROUTE_PROTOCOL).await
    }
}

/// sluice's IPv6 kernel routes as the kernel holds them now.
pub async fn installed6(table: &impl KernelRouteTable6) -> Result<Vec<KernelRoute6>> {
    table.list6().await
}

/// Read, diff, apply (replaces first, then deletions); the steps the
/// kernel refused, described. Only a failed read stops it.
pub async fn reconcile6(
    table: &impl KernelRouteTable6,
    desired: &BTreeMap<Ipv6Network, KernelRoute6>,
) -> Result<Vec<String>> {
    let actual = table.list6().await?;
    let d = diff6(desired, &actual);
    let mut failed = Vec::new();
    for route in &d.replace {
        if let Err(e) = table.replace6(route).await {
            failed.push(format!("replace {}: {e:#}", route.describe()));
        }
    }
    for route in &d.delete {
        if let Err(e) = table.delete6(route).await {
            failed.push(format!("delete {}: {e:#}", route.describe()));
        }
    }
    if !(d.replace.is_empty() && d.delete.is_empty()) {
        info!(
            replaced = d.replace.len(),
            deleted = d.delete.len(),
            failed = failed.len(),
            total = desired.len(),
            "IPv6 kernel routes reconciled"
        );
    }
    Ok(failed)
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    fn route6(dst: &str, gw: &str, oif: u32) -> KernelRoute6 {
        KernelRoute6 {
            dst: dst.parse().unwrap(),
            gateway: Some(gw.parse().unwrap()),
            oif,
            encap: None,
            src: None,
            mtu: None,
        }
    }

    fn want(entries: &[(&str, &str)]) -> BTreeMap<Ipv6Network, KernelRoute6> {
        let routes6 = entries.iter().map(|(c, ip)| (c.parse().unwrap(), ip.parse().unwrap())).collect();
        desired6(&routes6, &BTreeMap::new(), 2, 7, None, None)
    }

    #[test]
    fn diff6_table() {
        let w = want(&[("fd00:244:2::/64", "fd00:30::2"), ("fd00:244:3::/64", "fd00:30::3")]);
        let same: Vec<_> = w.values().copied().collect();
        assert_eq!(diff6(&w, &same), KernelRouteDiff6::default());
        assert_eq!(diff6(&w, &[]).replace.len(), 2);
        let actual = vec![route6("fd00:244:2::/64", "fd00:30::9", 2), route6("fd00:244:4::/64", "fd00:30::4", 2)];
        let d = diff6(&w, &actual);
        assert_eq!(
            d.replace,
            vec![route6("fd00:244:2::/64", "fd00:30::2", 2), route6("fd00:244:3::/64", "fd00:30::3", 2)]
        );
        assert_eq!(d.delete, vec![route6("fd00:244:4::/64", "fd00:30::4", 2)]);
    }

    #[test]
    fn a_tunneled_peer_goes_into_the_vxlan_device_with_an_ipv4_encap() {
        let routes6 = [("fd00:244:0:2::/64", "fd00:30::2"), ("fd00:244:0:3::/64", "fd00:31::3")]
            .iter()
            .map(|(c, ip)| (c.parse().unwrap(), ip.parse().unwrap()))
            .collect();
        let vxlan6: BTreeMap<Ipv6Network, IpAddr> =
            [("fd00:244:0:3::/64".parse().unwrap(), "172.31.0.3".parse().unwrap())].into();
        let src = tunnel_source6("fd00:244:0:1::/64".parse().unwrap());
        assert_eq!(src.to_string(), "fd00:244:0:1::", "the node's pod CIDR's network address");
        let d: Vec<String> =
            desired6(&routes6, &vxlan6, 2, 7, Some(src), Some(1450)).values().map(|r| r.describe()).collect();
        // Only the tunneled route names the node's tunnel source; only the
        // native one carries the pods' MTU (the device's own MTU already
        // leaves VXLAN's room).
        assert_eq!(
            d,
            [
                "fd00:244:0:2::/64 via fd00:30::2 dev #2 mtu 1450",
                "fd00:244:0:3::/64 encap ip id 1 dst 172.31.0.3 ttl 64 dev #7 src fd00:244:0:1::"
            ]
        );
        // No device yet: no route for the tunneled peer.
        let d: Vec<String> =
            desired6(&routes6, &vxlan6, 2, 0, Some(src), None).values().map(|r| r.describe()).collect();
        assert_eq!(d, ["fd00:244:0:2::/64 via fd00:30::2 dev #2"]);
    }

    #[test]
    fn an_ipv6_only_nodes_peer_behind_a_router_goes_into_the_device_with_an_ipv6_encap() {
        let routes6 = [("fd00:244:0:2::/64", "fd00:30::2"), ("fd00:244:0:3::/64", "fd00:31::3")]
            .iter()
            .map(|(c, ip)| (c.parse().unwrap(), ip.parse().unwrap()))
            .collect();
        let vxlan6: BTreeMap<Ipv6Network, IpAddr> =
            [("fd00:244:0:3::/64".parse().unwrap(), "fd00:31::3".parse().unwrap())].into();
        let src = tunnel_source6("fd00:244:0:1::/64".parse().unwrap());
        let d: Vec<String> =
            desired6(&routes6, &vxlan6, 2, 7, Some(src), Some(1430)).values().map(|r| r.describe()).collect();
        // The native peer's route carries the pods' MTU (the uplink's less
        // 70); the tunneled one names the peer's IPv6 address and asks for
        // the outer UDP checksum.
        assert_eq!(
            d,
            [
                "fd00:244:0:2::/64 via fd00:30::2 dev #2 mtu 1430",
                "fd00:244:0:3::/64 encap ip6 id 1 dst fd00:31::3 hoplimit 64 csum dev #7 src fd00:244:0:1::"
            ]
        );
    }

    #[derive(Default)]
    struct FakeTable6 {
        routes: RefCell<Vec<KernelRoute6>>,
        refuse: Option<Ipv6Network>,
    }

    impl KernelRouteTable6 for FakeTable6 {
        async fn list6(&self) -> Result<Vec<KernelRoute6>> {
            Ok(self.routes.borrow().clone())
        }
        async fn replace6(&self, r: &KernelRoute6) -> Result<()> {
            if self.refuse == Some(r.dst) {
                anyhow::bail!("Nexthop has invalid gateway");
            }
            let mut routes = self.routes.borrow_mut();
            routes.retain(|x| x.dst != r.dst);
            routes.push(*r);
            Ok(())
        }
        async fn delete6(&self, r: &KernelRoute6) -> Result<()> {
            self.routes.borrow_mut().retain(|x| x != r);
            Ok(())
        }
    }

    #[test]
    fn reconcile6_converges_and_reports_a_refused_route() {
        let refused: Ipv6Network = "fd00:244:3::/64".parse().unwrap();
        let t = FakeTable6 {
            routes: RefCell::new(vec![route6("fd00:244:8::/64", "fd00:30::8", 2)]),
            refuse: Some(refused),
        };
        let w = want(&[("fd00:244:2::/64", "fd00:30::2"), ("fd00:244:3::/64", "fd00:30::3")]);
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let failed = rt.block_on(reconcile6(&t, &w)).unwrap();
        assert_eq!(failed, ["replace fd00:244:3::/64 via fd00:30::3 dev #2: Nexthop has invalid gateway"]);
        let now: Vec<String> = t.routes.borrow().iter().map(|r| r.describe()).collect();
        assert_eq!(now, ["fd00:244:2::/64 via fd00:30::2 dev #2"]);
    }
}
