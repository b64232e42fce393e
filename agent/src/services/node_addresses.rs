//! The addresses a NodePort answers on at the socket (`NODE_ADDRESSES`):
//! every address of this node's network namespace and every other node's
//! InternalIP, so a pod reaches `anyNodeIP:nodePort` as kube-proxy on
//! that node would answer it. Loopback is not listed: it is a node
//! address only from the node's own namespace, which the programs check
//! per socket (`SOCK_LB_CONFIG`). Pure: the loop reads the addresses and
//! applies the diff.
use std::{collections::BTreeMap, net::Ipv4Addr};

use sluice_common::services::{NODE_ADDRESS_LOCAL, NODE_ADDRESS_REMOTE};

/// Address → `NODE_ADDRESS_LOCAL` / `NODE_ADDRESS_REMOTE`. An address that
/// is both (this node's InternalIP) is local.
pub fn desired(local: &[Ipv4Addr], nodes: &[Ipv4Addr]) -> BTreeMap<Ipv4Addr, u32> {
    let usable = |ip: &&Ipv4Addr| !ip.is_loopback() && !ip.is_unspecified() && !ip.is_broadcast();
    let mut out: BTreeMap<Ipv4Addr, u32> = nodes.iter().filter(usable).map(|ip| (*ip, NODE_ADDRESS_REMOTE)).collect();
    out.extend(local.iter().filter(usable).map(|ip| (*ip, NODE_ADDRESS_LOCAL)));
    out
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Diff {
    /// New or changed entries.
    pub put: Vec<(Ipv4Addr, u32)>,
    pub remove: Vec<Ipv4Addr>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.put.is_empty() && self.remove.is_empty()
    }
}

pub fn diff(desired: &BTreeMap<Ipv4Addr, u32>, actual: &BTreeMap<Ipv4Addr, u32>) -> Diff {
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
}
