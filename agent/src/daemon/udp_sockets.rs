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
    net::{IpAddr, Ipv6Addr, SocketAddr},
    path::Path,
    sync::Arc,
};

use anyhow::Result;
use sluice_common::{
    services::{Backend, ServiceKey},
    services6::{ip6_octets, ip6_words, Backend6, ServiceKey6},
};
use sluice_node::{
    datapath::{
        pinned_maps::{ip_be, ip_from_be},
        pins::PinDir,
        service_maps::{SockReverse, SockReverse6},
    },
    net::sockets::{self, CgroupSweep, UdpSocket},
};
use tracing::warn;

use crate::reconcile::service_maps::RemovedBackend;

/// The backends IPv6 UDP frontends lost (`ServiceReconciler<V6>`'s).
pub type RemovedBackend6 = RemovedBackend<ServiceKey6, Backend6>;

fn peer_of(b: &Backend) -> SocketAddr {
    SocketAddr::new(ip_from_be(b.ip_be).into(), u16::from_be(b.port_be))
}

fn peer6_of(b: &Backend6) -> SocketAddr {
    SocketAddr::new(Ipv6Addr::from(ip6_octets(b.ip)).into(), u16::from_be(b.port_be))
}

/// The backend a socket is connected to, in its family's map form.
fn backend_of(peer: &SocketAddr) -> Lost<Backend, Backend6> {
    match peer.ip() {
        IpAddr::V4(ip) => Lost::V4(Backend { ip_be: ip_be(ip), port_be: peer.port().to_be(), _pad: 0 }),
        IpAddr::V6(ip) => Lost::V6(Backend6 { ip: ip6_words(ip.octets()), port_be: peer.port().to_be(), _pad: 0 }),
    }
}

/// One of each family: a frontend or a backend of IPv4's or of IPv6's maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Lost<A, B> {
    V4(A),
    V6(B),
}

/// A frontend of either family.
pub type AnyFrontend = Lost<ServiceKey, ServiceKey6>;

/// The backends lost in a pass, by peer address: which frontends lost each.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stale {
    by_peer: BTreeMap<SocketAddr, BTreeSet<AnyFrontend>>,
}

impl Stale {
    pub fn new(removed: &[RemovedBackend], removed6: &[RemovedBackend6]) -> Self {
        let mut by_peer: BTreeMap<SocketAddr, BTreeSet<AnyFrontend>> = BTreeMap::new();
        for r in removed {
            by_peer.entry(peer_of(&r.backend)).or_default().insert(Lost::V4(r.frontend));
        }
        for r in removed6 {
            by_peer.entry(peer6_of(&r.backend)).or_default().insert(Lost::V6(r.frontend));
        }
        Self { by_peer }
    }

    pub fn peers(&self) -> BTreeSet<SocketAddr> {
        self.by_peer.keys().copied().collect()
    }

    /// Spare a socket to `peer` that was translated from `via`, a frontend
    /// that did not lose `peer`.
    pub fn keep(&self, peer: &SocketAddr, via: Option<AnyFrontend>) -> bool {
        // A NodePort translation remembers the node address it was named
        // by; the frontend that lost the backend is its entry.
        let entry = match via {
            Some(Lost::V4(f)) => Lost::V4(f.entry_key()),
            Some(Lost::V6(f)) => Lost::V6(f.entry_key()),
            None => return false,
        };
        !self.by_peer.get(peer).is_some_and(|lost| lost.contains(&entry))
    }
}

/// Destroy the stale sockets in every namespace of `cgroup`. Blocking
/// (threads, netlink): call it off the async runtime.
pub fn destroy(
    cgroup: &Path,
    netns_dir: Option<&Path>,
    pins: &PinDir,
    removed: &[RemovedBackend],
    removed6: &[RemovedBackend6],
) -> Result<CgroupSweep> {
    let stale = Arc::new(Stale::new(removed, removed6));
    let reverse = SockReverse::open(pins)?;
    let reverse6 = SockReverse6::open(pins)?;
    let peers = stale.peers();
    let keep = move |s: &UdpSocket| {
        let via = match backend_of(&s.peer) {
            Lost::V4(b) => reverse.frontend_of(s.cookie, b).map(|f| f.map(Lost::V4)),
            Lost::V6(b) => reverse6.frontend_of(s.cookie, b).map(|f| f.map(Lost::V6)),
        };
        let via = via.unwrap_or_else(|e| {
            warn!(error = %format!("{e:#}"), "SOCK_REVERSE unreadable; destroying the socket");
            None
        });
        stale.keep(&s.peer, via)
    };
    sockets::destroy_udp_in_cgroup(cgroup, netns_dir, &peers, Arc::new(keep))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frontend(port: u16) -> ServiceKey {
        ServiceKey { vip_be: ip_be("10.96.0.10".parse().unwrap()), port_be: port.to_be(), protocol: 17, scope: 0 }
    }

    fn frontend6(port: u16) -> ServiceKey6 {
        ServiceKey6::address(ip6_words("fd00:96::10".parse::<Ipv6Addr>().unwrap().octets()), port.to_be(), 17)
    }

    fn lost(port: u16, peer: &str) -> RemovedBackend {
        let Lost::V4(backend) = backend_of(&peer.parse().unwrap()) else { panic!("{peer} is IPv4") };
        RemovedBackend { frontend: frontend(port), backend }
    }

    fn lost6(frontend: ServiceKey6, peer: &str) -> RemovedBackend6 {
        let Lost::V6(backend) = backend_of(&peer.parse().unwrap()) else { panic!("{peer} is IPv6") };
        RemovedBackend { frontend, backend }
    }

    #[test]
    fn backends_and_peers_convert_both_ways() {
        let peer: SocketAddr = "10.244.1.7:5300".parse().unwrap();
        let Lost::V4(b) = backend_of(&peer) else { panic!("IPv4") };
        assert_eq!(b.ip_be, ip_be("10.244.1.7".parse().unwrap()));
        assert_eq!(b.port_be, 5300u16.to_be());
        assert_eq!(peer_of(&b), peer);
        let peer6: SocketAddr = "[fd00:244::7]:5300".parse().unwrap();
        let Lost::V6(b6) = backend_of(&peer6) else { panic!("IPv6") };
        assert_eq!(b6.ip, ip6_words("fd00:244::7".parse::<Ipv6Addr>().unwrap().octets()));
        assert_eq!(b6.port_be, 5300u16.to_be());
        assert_eq!(peer6_of(&b6), peer6);
    }

    #[test]
    fn a_socket_is_spared_only_when_it_came_through_a_frontend_that_kept_the_backend() {
        let stale =
            Stale::new(&[lost(53, "10.244.1.7:5300"), lost(54, "10.244.1.7:5300"), lost(53, "10.244.1.8:5300")], &[]);
        let p7: SocketAddr = "10.244.1.7:5300".parse().unwrap();
        let p8: SocketAddr = "10.244.1.8:5300".parse().unwrap();
        assert_eq!(stale.peers(), BTreeSet::from([p7, p8]));
        assert!(!stale.keep(&p7, Some(Lost::V4(frontend(53)))), "through a frontend that lost it");
        assert!(!stale.keep(&p7, Some(Lost::V4(frontend(54)))));
        assert!(stale.keep(&p8, Some(Lost::V4(frontend(54)))), "54 still has .8");
        assert!(stale.keep(&p7, Some(Lost::V4(frontend(55)))), "another Service still has .7");
        assert!(!stale.keep(&p8, None), "no entry (direct, or evicted): destroyed");
    }

    #[test]
    fn an_ipv6_backend_is_stale_for_the_ipv6_frontends_that_lost_it() {
        let node_port = ServiceKey6::node_port(30053u16.to_be(), 17);
        let stale = Stale::new(
            &[lost(53, "10.244.1.7:5300")],
            &[lost6(frontend6(53), "[fd00:244::7]:5300"), lost6(node_port, "[fd00:244::8]:5300")],
        );
        let p7: SocketAddr = "[fd00:244::7]:5300".parse().unwrap();
        let p8: SocketAddr = "[fd00:244::8]:5300".parse().unwrap();
        assert_eq!(stale.peers().len(), 3, "both families' peers");
        assert!(!stale.keep(&p7, Some(Lost::V6(frontend6(53)))), "through the frontend that lost it");
        assert!(!stale.keep(&p7, None), "no entry: destroyed");
        assert!(stale.keep(&p7, Some(Lost::V6(frontend6(54)))), "another Service still has it");
        assert!(stale.keep(&p7, Some(Lost::V4(frontend(53)))), "an IPv4 frontend did not lose an IPv6 peer");
        // A NodePort socket remembers the node address it named.
        let named = ServiceKey6 { vip: ip6_words("fd00:30::1".parse::<Ipv6Addr>().unwrap().octets()), ..node_port };
        assert!(!stale.keep(&p8, Some(Lost::V6(named))), "the NodePort's entry lost it");
    }
}
