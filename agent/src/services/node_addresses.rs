//! The addresses a NodePort answers on at the socket (`NODE_ADDRESSES`):
//! every address of this node's network namespace and every other node's
//! InternalIP, so a pod reaches `anyNodeIP:nodePort` as kube-proxy on
//! that node would answer it. Loopback is not listed: it is a node
//! address only from the node's own namespace, which the programs check
//! per socket (`SOCK_LB_CONFIG`). Pure: the loop reads the addresses and
//! applies the diff. `NODE_ADDRESSES6` (`desired6`), the IPv6 twin: this
//! node's own IPv6 addresses (local: the uplink answers an IPv6 NodePort
//! from outside on them, `lb6`) and every other node's IPv6 InternalIP
//! (remote: the socket programs only, as IPv4's).
use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
};

use sluice_common::services::{NODE_ADDRESS_LOCAL, NODE_ADDRESS_REMOTE};

/// Address → `NODE_ADDRESS_LOCAL` / `NODE_ADDRESS_REMOTE`. An address that
/// is both (this node's InternalIP) is local.
pub fn desired(local: &[Ipv4Addr], nodes: &[Ipv4Addr]) -> BTreeMap<Ipv4Addr, u32> {
    classify(local, nodes, |ip| !ip.is_loopback() && !ip.is_unspecified() && !ip.is_broadcast())
}

/// `NODE_ADDRESSES6`, the same for IPv6: this node's own addresses (local;
/// `from_uplink`'s `lb6` answers only on those) and the other nodes' IPv6
/// InternalIPs (remote). Not loopback, not link-local (scoped to one link:
/// never a Service's address), not multicast.
pub fn desired6(local: &[Ipv6Addr], nodes: &[Ipv6Addr]) -> BTreeMap<Ipv6Addr, u32> {
    classify(local, nodes, |ip| {
        !ip.is_loopback() && !ip.is_unspecified() && !ip.is_multicast() && (ip.segments()[0] & 0xffc0) != 0xfe80
    })
}

/// Either family: the `usable` nodes' addresses remote, then the `usable`
/// local ones local (a local address wins).
fn classify<A: Ord + Copy>(local: &[A], nodes: &[A], usable: impl Fn(&A) -> bool) -> BTreeMap<A, u32> {
    let mut out: BTreeMap<A, u32> = nodes.iter().filter(|ip| usable(ip)).map(|ip| (*ip, NODE_ADDRESS_REMOTE)).collect();
    out.extend(local.iter().filter(|ip| usable(ip)).map(|ip| (*ip, NODE_ADDRESS_LOCAL)));
    out
}

#[derive(Debug, PartialEq, Eq)]
pub struct Diff<A = Ipv4Addr> {
    /// New or changed entries.
    pub put: Vec<(A, u32)>,
    pub remove: Vec<A>,
}

impl<A> Default for Diff<A> {
    fn default() -> Self {
        Self { put: Vec::new(), remove: Vec::new() }
    }
}

impl<A> Diff<A> {
    pub fn is_empty(&self) -> bool {
        self.put.is_empty() && self.remove.is_empty()
    }
}

/// What turns `actual` into `desired`; either family.
pub fn diff<A: Ord + Copy>(desired: &BTreeMap<A, u32>, actual: &BTreeMap<A, u32>) -> Diff<A> {
    Diff {
        put: desired.iter().filter(|(ip, kind)| actual.get(ip) != Some(kind)).map(|(ip, k)| (*ip, *k)).collect(),
        remove: actual.keys().filter(|ip| !desired.contains_key(ip)).copied().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(list: &[&str]) -> Vec<Ipv4Addr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn local_addresses_win_and_loopback_is_left_to_the_programs() {
        let d = desired(&ips(&["172.30.0.1", "127.0.0.1", "10.244.1.1"]), &ips(&["172.30.0.1", "172.30.0.2"]));
        assert_eq!(
            d.into_iter().collect::<Vec<_>>(),
            vec![
                ("10.244.1.1".parse().unwrap(), NODE_ADDRESS_LOCAL),
                ("172.30.0.1".parse().unwrap(), NODE_ADDRESS_LOCAL),
                ("172.30.0.2".parse().unwrap(), NODE_ADDRESS_REMOTE),
            ]
        );
    }

    #[test]
    fn the_diff_puts_new_and_changed_entries_and_removes_gone_ones() {
        let actual = desired(&ips(&["172.30.0.1"]), &ips(&["172.30.0.2", "172.30.0.3"]));
        // .2 became local (an address moved here), .3 left, .4 joined.
        let want = desired(&ips(&["172.30.0.1", "172.30.0.2"]), &ips(&["172.30.0.4"]));
        let d = diff(&want, &actual);
        assert_eq!(
            d.put,
            vec![
                ("172.30.0.2".parse().unwrap(), NODE_ADDRESS_LOCAL),
                ("172.30.0.4".parse().unwrap(), NODE_ADDRESS_REMOTE)
            ]
        );
        assert_eq!(d.remove, ips(&["172.30.0.3"]));
        assert!(diff(&want, &want).is_empty());
    }

    #[test]
    fn ipv6_node_addresses_are_the_global_and_unique_local_ones() {
        let local: Vec<Ipv6Addr> = ["fd00:30::1", "::1", "fe80::1", "2001:db8::5", "ff02::1", "::"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let d = desired6(&local, &[]);
        assert_eq!(
            d.into_iter().collect::<Vec<_>>(),
            vec![
                ("2001:db8::5".parse().unwrap(), NODE_ADDRESS_LOCAL),
                ("fd00:30::1".parse().unwrap(), NODE_ADDRESS_LOCAL)
            ]
        );
        let gone = desired6(&["2001:db8::5".parse().unwrap()], &[]);
        assert_eq!(diff(&gone, &desired6(&local, &[])).remove, vec!["fd00:30::1".parse::<Ipv6Addr>().unwrap()]);
    }

    #[test]
    fn other_nodes_ipv6_internal_ips_are_remote_and_this_nodes_own_stays_local() {
        let v6 = |list: &[&str]| list.iter().map(|s| s.parse().unwrap()).collect::<Vec<Ipv6Addr>>();
        let d = desired6(&v6(&["fd00:30::1"]), &v6(&["fd00:30::1", "fd00:30::2", "fe80::2", "::1"]));
        assert_eq!(
            d.into_iter().collect::<Vec<_>>(),
            vec![
                ("fd00:30::1".parse().unwrap(), NODE_ADDRESS_LOCAL),
                ("fd00:30::2".parse().unwrap(), NODE_ADDRESS_REMOTE)
            ]
        );
    }
}
