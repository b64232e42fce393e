//! Connected UDP sockets to backends a Service no longer has, destroyed
//! once the maps have switched (why and how: `sluice_node::net::sockets`).
//!
//! Which sockets: connected UDP sockets, in the namespaces of the processes
//! the socket load balancer covers (its cgroup), whose peer is a backend a
//! UDP frontend lost. `SOCK_REVERSE` spares one that was connected through
//! another frontend which still has that backend (two Services selecting
//! the same pods). A socket it has no entry for (never translated, or the
//! LRU evicted it: a client that only `send()`s never refreshes it) is
//! destroyed, as Cilium's socket termination does: a stale socket stuck on
//! a gone pod is the failure this exists for; a direct pod-to-pod UDP
//! socket to a pod leaving its Service is the rarer case. TCP is left
//! alone: an established connection to a removed endpoint ends the way it
//! would with kube-proxy (the pod closes it or it times out).
use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddrV4,
    path::Path,
    sync::Arc,
};

use anyhow::Result;
use sluice_common::services::{Backend, ServiceKey};
use sluice_node::{
    datapath::{
        pinned_maps::{ip_be, ip_from_be},
        pins::PinDir,
        service_maps::SockReverse,
    },
    net::sockets::{self, CgroupSweep, UdpSocket},
};
use tracing::warn;

use crate::reconcile::service_maps::RemovedBackend;

fn peer_of(b: &Backend) -> SocketAddrV4 {
    SocketAddrV4::new(ip_from_be(b.ip_be), u16::from_be(b.port_be))
}

fn backend_of(peer: &SocketAddrV4) -> Backend {
    Backend { ip_be: ip_be(*peer.ip()), port_be: peer.port().to_be(), _pad: 0 }
}

/// The backends lost in a pass, by peer address: which frontends lost each.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stale {
    by_peer: BTreeMap<SocketAddrV4, BTreeSet<ServiceKey>>,
}

impl Stale {
    pub fn new(removed: &[RemovedBackend]) -> Self {
        let mut by_peer: BTreeMap<SocketAddrV4, BTreeSet<ServiceKey>> = BTreeMap::new();
        for r in removed {
            by_peer.entry(peer_of(&r.backend)).or_default().insert(r.frontend);
        }
        Self { by_peer }
    }

    pub fn peers(&self) -> BTreeSet<SocketAddrV4> {
        self.by_peer.keys().copied().collect()
    }

    /// Spare a socket to `peer` that was translated from `via`, a frontend
    /// that did not lose `peer`.
    pub fn keep(&self, peer: &SocketAddrV4, via: Option<ServiceKey>) -> bool {
        match via {
            // A NodePort translation remembers the node address it was
            // named by; the frontend that lost the backend is its entry.
            Some(f) => !self.by_peer.get(peer).is_some_and(|lost| lost.contains(&f.entry_key())),
            None => false,
        }
    }
}

/// Destroy the stale sockets in every namespace of `cgroup`. Blocking
/// (threads, netlink): call it off the async runtime.
pub fn destroy(
    cgroup: &Path,
    netns_dir: Option<&Path>,
    pins: &PinDir,
    removed: &[RemovedBackend],
) -> Result<CgroupSweep> {
    let stale = Arc::new(Stale::new(removed));
    let reverse = SockReverse::open(pins)?;
    let peers = stale.peers();
    let keep = move |s: &UdpSocket| {
        let via = reverse.frontend_of(s.cookie, backend_of(&s.peer)).unwrap_or_else(|e| {
            warn!(error = %format!("{e:#}"), "SOCK_REVERSE unreadable; destroying the socket");
            None
        });
        stale.keep(&s.peer, via)
    };
    sockets::destroy_udp4_in_cgroup(cgroup, netns_dir, &peers, Arc::new(keep))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frontend(port: u16) -> ServiceKey {
        ServiceKey { vip_be: ip_be("10.96.0.10".parse().unwrap()), port_be: port.to_be(), protocol: 17, scope: 0 }
    }

    fn lost(port: u16, peer: &str) -> RemovedBackend {
        RemovedBackend { frontend: frontend(port), backend: backend_of(&peer.parse().unwrap()) }
    }

    #[test]
    fn backends_and_peers_convert_both_ways() {
        let peer: SocketAddrV4 = "10.244.1.7:5300".parse().unwrap();
        let b = backend_of(&peer);
        assert_eq!(b.ip_be, ip_be("10.244.1.7".parse().unwrap()));
        assert_eq!(b.port_be, 5300u16.to_be());
        assert_eq!(peer_of(&b), peer);
    }

    #[test]
    fn a_socket_is_spared_only_when_it_came_through_a_frontend_that_kept_the_backend() {
        let stale =
            Stale::new(&[lost(53, "10.244.1.7:5300"), lost(54, "10.244.1.7:5300"), lost(53, "10.244.1.8:5300")]);
        let p7: SocketAddrV4 = "10.244.1.7:5300".parse().unwrap();
        let p8: SocketAddrV4 = "10.244.1.8:5300".parse().unwrap();
        assert_eq!(stale.peers(), BTreeSet::from([p7, p8]));
        assert!(!stale.keep(&p7, Some(frontend(53))), "through a frontend that lost it");
        assert!(!stale.keep(&p7, Some(frontend(54))));
        assert!(stale.keep(&p8, Some(frontend(54))), "54 still has .8");
        assert!(stale.keep(&p7, Some(frontend(55))), "another Service still has .7");
        assert!(!stale.keep(&p8, None), "no entry (direct, or evicted): destroyed");
    }
}
