//! Garbage collection of `NAT4` (and of its IPv6 twin `NAT6`, the same
//! pass over the same rules: `NatKey`): a connection from outside whose two
//! halves have both been idle past its protocol's timeout is removed,
//! both entries together (`Nat4Key::twin`), so the table's fill counts
//! live connections and a SNAT port is free again. `NAT4` is a plain hash
//! (a full one refuses new connections): without this pass it would fill.
//!
//! The timeouts are `POLICY_CT`'s (`policy_ct_gc::CtTimeouts`): TCP once
//! the backend answered, hours; everything else a minute. A TCP
//! connection the datapath saw closing lives shorter, as in conntrack:
//! 120 s once idle after one FIN, 10 s after an RST or a FIN each way
//! (`sluice_common::nat::Nat4Closing`). An entry whose twin is gone (a
//! pass interrupted between the two removals, a program's insert that
//! lost a race, a closed connection whose SNAT port a new one took over)
//! is removed once idle on its own; a twin key holding another
//! connection's half (`Nat4Key::pairs_with`) is not its twin.
//!
//! A direct server return connection (`--lb-mode=dsr`, `NAT4_DSR`) has
//! one half on each node it touches, never a twin: the entry node's
//! forward half, the backend's node's reply half. Each lives on its own
//! as any half whose twin is gone, by its own flags and last use: the
//! forward half is marked answered by the client's first segment after
//! its SYN (the handshake went through), the reply half by the backend's
//! answers, so an established TCP connection keeps TCP's established
//! timeout on both nodes, not the minute of an unanswered one.
//!
//! Besides the timeouts, `purge_removed_backends`: when a UDP frontend
//! loses a backend, the connections it translated to that backend are
//! removed at once (kube-proxy's conntrack cleanup for UDP), so a
//! client's next datagram picks a live backend instead of going to the
//! gone one until the pair idles out. TCP is left alone, as kube-proxy
//! does: an established connection ends with its pod, and a terminating
//! pod may still be finishing it.
use anyhow::Result;
use sluice_common::{
    nat::{closing, closing_lifetime_secs, Nat4Entry, Nat4Key, NAT4_FORWARD, NAT4_REPLY_SEEN},
    nat6::{Nat6Entry, Nat6Key},
    services::{Backend, ServiceKey, SCOPE_HOST_PORT, SCOPE_NODE_PORT},
    services6::{Backend6, ServiceKey6},
};

use super::{
    nat4_maps::{NatKey, NatTable},
    policy_ct_gc::CtTimeouts,
    policy_ct_gc::GcPass,
};

const IPPROTO_TCP: u8 = 6;

/// The timeout of a connection whose halves are `a` and `b` (if found):
/// its protocol's, shortened once a TCP connection is closing (a FIN, an
/// RST: `sluice_common::nat::closing_lifetime_secs`).
fn timeout_of<K: NatKey>(key: &K, a: &K::Entry, b: Option<&K::Entry>, timeouts: &CtTimeouts) -> std::time::Duration {
    let flags = K::flags(a) | b.map_or(0, K::flags);
    let answered = flags & NAT4_REPLY_SEEN != 0;
    let timeout = if key.protocol() == IPPROTO_TCP && answered { timeouts.tcp_established } else { timeouts.other };
    match closing_lifetime_secs(closing(flags)) {
        Some(secs) if key.protocol() == IPPROTO_TCP => timeout.min(std::time::Duration::from_secs(secs)),
        _ => timeout,
    }
}

fn idle<K: NatKey>(entry: &K::Entry, now_ns: u64, timeout: std::time::Duration) -> bool {
    u128::from(now_ns.saturating_sub(K::last_seen_ns(entry))) > timeout.as_nanos()
}

/// Is the connection of `key` → `entry`, whose other half is `twin` (if
/// any), idle past its timeout at `now_ns` (CLOCK_MONOTONIC)?
pub fn expired<K: NatKey>(
    key: &K,
    entry: &K::Entry,
    twin: Option<&K::Entry>,
    now_ns: u64,
    timeouts: &CtTimeouts,
) -> bool {
    let timeout = timeout_of(key, entry, twin, timeouts);
    idle::<K>(entry, now_ns, timeout) && twin.is_none_or(|t| idle::<K>(t, now_ns, timeout))
}

/// One pass over `NAT4` or `NAT6`: every expired connection's entries
/// removed. Both halves are read again just before their removal, so a
/// connection used since the walk listed it stays.
pub fn collect<K: NatKey>(nat: &mut NatTable<K>, now_ns: u64, timeouts: &CtTimeouts) -> Result<GcPass> {
    let mut pass = GcPass::default();
    for (key, entry) in nat.all()? {
        pass.scanned += 1;
        let twin_key = key.twin(&entry);
        let Some(fresh) = nat.get(&key)? else { continue };
        // The twin key may hold another connection's half by now (a
        // closed connection's SNAT port taken over): not this one's.
        let twin = nat.get(&twin_key)?.filter(|t| key.pairs_with(t));
        if !expired(&key, &fresh, twin.as_ref(), now_ns, timeouts) {
            continue;
        }
        // The reply half first: it holds the SNAT port, and a forward
        // half alone sends nothing anyone answers.
        if twin.is_some() {
            nat.remove(&twin_key)?;
            pass.removed += 1;
        }
        nat.remove(&key)?;
        pass.removed += 1;
    }
    Ok(pass)
}

const IPPROTO_UDP: u8 = 17;

/// Did `frontend` translate the connection whose forward half is `key`?
/// A NodePort or an every-address hostPort answers on each of this node's
/// addresses: its port and protocol say; any other frontend is one
/// address.
pub fn translated_by(frontend: &ServiceKey, key: &Nat4Key) -> bool {
    let any_address = frontend.scope == SCOPE_NODE_PORT || frontend.scope == SCOPE_HOST_PORT;
    key.direction == NAT4_FORWARD
        && key.protocol == frontend.protocol
        && key.dst_port_be == frontend.port_be
        && (any_address || key.dst_be == frontend.vip_be)
}

/// `translated_by`'s IPv6 twin.
pub fn translated_by6(frontend: &ServiceKey6, key: &Nat6Key) -> bool {
    let any_address = frontend.scope == SCOPE_NODE_PORT || frontend.scope == SCOPE_HOST_PORT;
    key.direction == NAT4_FORWARD
        && key.protocol == frontend.protocol
        && key.dst_port_be == frontend.port_be
        && (any_address || key.dst == frontend.vip)
}

/// A NAT table's connections as translated by a family's frontends to its
/// backends: what purging a removed backend's connections needs.
pub trait Translated: NatKey {
    type Frontend;
    type Backend;
    /// Did `frontend` translate the connection whose forward half is this?
    fn translated_by(&self, frontend: &Self::Frontend) -> bool;
    /// Does the forward half `entry` send to `backend`?
    fn sends_to(entry: &Self::Entry, backend: &Self::Backend) -> bool;
}

impl Translated for Nat4Key {
    type Frontend = ServiceKey;
    type Backend = Backend;
    fn translated_by(&self, frontend: &ServiceKey) -> bool {
        translated_by(frontend, self)
    }
    fn sends_to(entry: &Nat4Entry, backend: &Backend) -> bool {
        entry.dst_be == backend.ip_be && entry.dst_port_be == backend.port_be
    }
}

impl Translated for Nat6Key {
    type Frontend = ServiceKey6;
    type Backend = Backend6;
    fn translated_by(&self, frontend: &ServiceKey6) -> bool {
        translated_by6(frontend, self)
    }
    fn sends_to(entry: &Nat6Entry, backend: &Backend6) -> bool {
        entry.dst == backend.ip && entry.dst_port_be == backend.port_be
    }
}

/// Is `key` → `entry` the forward half of a UDP connection one of
/// `removed` (a frontend and the backend it lost) translated to that
/// backend?
pub fn to_removed_backend<K: Translated>(key: &K, entry: &K::Entry, removed: &[(K::Frontend, K::Backend)]) -> bool {
    key.protocol() == IPPROTO_UDP
        && removed.iter().any(|(frontend, backend)| key.translated_by(frontend) && K::sends_to(entry, backend))
}

/// Remove both halves of every UDP connection translated to a backend its
/// frontend lost (`removed`), the reply half first (it holds the SNAT
/// port). Returns the entries removed. `NAT4` or `NAT6`.
pub fn purge_removed_backends<K: Translated>(
    nat: &mut NatTable<K>,
    removed: &[(K::Frontend, K::Backend)],
) -> Result<usize> {
    let mut gone = 0;
    for (key, entry) in nat.all()? {
        if !to_removed_backend(&key, &entry, removed) {
            continue;
        }
        let twin_key = key.twin(&entry);
        if nat.get(&twin_key)?.is_some() {
            nat.remove(&twin_key)?;
            gone += 1;
        }
        nat.remove(&key)?;
        gone += 1;
    }
    Ok(gone)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_common::{
        nat::{NAT4_FIN_BACKEND, NAT4_FIN_CLIENT, NAT4_REPLY, NAT4_RST},
        services::{SCOPE_ADDRESS, SCOPE_HOST_PORT_ADDRESS},
    };

    #[test]
    fn a_removed_ipv6_backend_takes_the_udp_connections_its_ipv6_frontend_sent_there() {
        let w = |last: u32| [0xfd00_u32.to_be(), 0, 0, last.to_be()];
        let fwd = |dst: [u32; 4], dst_port: u16, protocol: u8| Nat6Key {
            src: w(9),
            dst,
            src_port_be: 40000u16.to_be(),
            dst_port_be: dst_port.to_be(),
            protocol,
            direction: NAT4_FORWARD,
            _pad: [0; 2],
        };
        let to = |ip: [u32; 4], port: u16| Nat6Entry { dst: ip, dst_port_be: port.to_be(), ..Default::default() };
        let backend = Backend6 { ip: w(77), port_be: 53u16.to_be(), _pad: 0 };
        let node_port = ServiceKey6::node_port(30053u16.to_be(), IPPROTO_UDP);
        let lb_ip = ServiceKey6::address(w(5), 53u16.to_be(), IPPROTO_UDP);
        let removed = [(node_port, backend), (lb_ip, backend)];
        // Through the NodePort on any node address, or the LB IP: gone.
        assert!(to_removed_backend(&fwd(w(1), 30053, 17), &to(w(77), 53), &removed));
        assert!(to_removed_backend(&fwd(w(2), 30053, 17), &to(w(77), 53), &removed));
        assert!(to_removed_backend(&fwd(w(5), 53, 17), &to(w(77), 53), &removed));
        // Another backend, port, address, protocol or half: kept.
        assert!(!to_removed_backend(&fwd(w(1), 30053, 17), &to(w(78), 53), &removed));
        assert!(!to_removed_backend(&fwd(w(1), 30053, 17), &to(w(77), 54), &removed));
        assert!(!to_removed_backend(&fwd(w(6), 53, 17), &to(w(77), 53), &removed), "another address's port 53");
        let tcp = [(ServiceKey6::node_port(30053u16.to_be(), 6), backend)];
        assert!(!to_removed_backend(&fwd(w(1), 30053, 6), &to(w(77), 53), &tcp), "TCP is left alone");
        let mut reply = fwd(w(1), 30053, 17);
        reply.direction = NAT4_REPLY;
        assert!(!to_removed_backend(&reply, &to(w(77), 53), &removed));
    }

    #[test]
    fn a_removed_backend_takes_the_udp_connections_its_frontend_sent_there_and_nothing_else() {
        let fwd = |dst_be: u32, dst_port: u16, protocol: u8| Nat4Key {
            src_be: 9,
            dst_be,
            src_port_be: 40000u16.to_be(),
            dst_port_be: dst_port.to_be(),
            protocol,
            direction: NAT4_FORWARD,
            _pad: [0; 2],
        };
        let to = |ip_be: u32, port: u16| Nat4Entry { dst_be: ip_be, dst_port_be: port.to_be(), ..Default::default() };
        let backend = Backend { ip_be: 77, port_be: 53u16.to_be(), _pad: 0 };
        let node_port = ServiceKey::node_port(30053u16.to_be(), IPPROTO_UDP);
        let lb_ip = ServiceKey { vip_be: 5, port_be: 53u16.to_be(), protocol: IPPROTO_UDP, scope: SCOPE_ADDRESS };
        let removed = [(node_port, backend), (lb_ip, backend)];
        // Through the NodePort on any node address, or the LB IP: gone.
        assert!(to_removed_backend(&fwd(1, 30053, 17), &to(77, 53), &removed));
        assert!(to_removed_backend(&fwd(2, 30053, 17), &to(77, 53), &removed));
        assert!(to_removed_backend(&fwd(5, 53, 17), &to(77, 53), &removed));
        // Another backend, port, frontend, protocol or half: kept.
        assert!(!to_removed_backend(&fwd(1, 30053, 17), &to(78, 53), &removed));
        assert!(!to_removed_backend(&fwd(1, 30053, 17), &to(77, 54), &removed));
        assert!(!to_removed_backend(&fwd(6, 53, 17), &to(77, 53), &removed), "another address's port 53");
        assert!(!to_removed_backend(&fwd(1, 30054, 17), &to(77, 53), &removed));
        assert!(
            !to_removed_backend(
                &fwd(1, 30053, 6),
                &to(77, 53),
                &[(ServiceKey::node_port(30053u16.to_be(), 6), backend)]
            ),
            "TCP is left alone"
        );
        let mut reply = fwd(1, 30053, 17);
        reply.direction = NAT4_REPLY;
        assert!(!to_removed_backend(&reply, &to(77, 53), &removed));
        // hostPorts: on every address, or on their hostIP only.
        let hp = ServiceKey::host_port(8053u16.to_be(), IPPROTO_UDP);
        assert_eq!(hp.scope, SCOPE_HOST_PORT);
        assert!(to_removed_backend(&fwd(3, 8053, 17), &to(77, 53), &[(hp, backend)]));
        let hp_on = ServiceKey::host_port_on(4, 8053u16.to_be(), IPPROTO_UDP);
        assert_eq!(hp_on.scope, SCOPE_HOST_PORT_ADDRESS);
        assert!(to_removed_backend(&fwd(4, 8053, 17), &to(77, 53), &[(hp_on, backend)]));
        assert!(!to_removed_backend(&fwd(3, 8053, 17), &to(77, 53), &[(hp_on, backend)]));
    }

    const S: u64 = 1_000_000_000;

    fn key(protocol: u8, direction: u8) -> Nat4Key {
        Nat4Key { src_be: 1, dst_be: 2, src_port_be: 3, dst_port_be: 4, protocol, direction, _pad: [0; 2] }
    }

    fn entry(last_seen_ns: u64, flags: u32) -> Nat4Entry {
        Nat4Entry { last_seen_ns, flags, ..Default::default() }
    }

    #[test]
    fn a_connection_expires_only_when_both_halves_are_idle() {
        let t = CtTimeouts::default();
        let now = 100_000 * S;
        let tcp = key(6, NAT4_FORWARD);
        // Answered TCP: hours, whichever half carries the flag.
        assert!(!expired(&tcp, &entry(now - 3600 * S, 0), Some(&entry(now - 3600 * S, NAT4_REPLY_SEEN)), now, &t));
        assert!(expired(
            &tcp,
            &entry(now - 7 * 3600 * S, 0),
            Some(&entry(now - 7 * 3600 * S, NAT4_REPLY_SEEN)),
            now,
            &t
        ));
        // Never answered: a minute.
        assert!(expired(&tcp, &entry(now - 61 * S, 0), Some(&entry(now - 61 * S, 0)), now, &t));
        // One half busy keeps the pair: the client still sends.
        assert!(!expired(&tcp, &entry(now - 61 * S, 0), Some(&entry(now - S, 0)), now, &t));
        assert!(!expired(&key(17, NAT4_REPLY), &entry(now - S, 0), Some(&entry(now - 61 * S, 0)), now, &t));
        // UDP answered: still a minute.
        assert!(expired(&key(17, NAT4_FORWARD), &entry(now - 61 * S, NAT4_REPLY_SEEN), None, now, &t));
        // An orphan half goes once idle; refreshed after `now`, it stays.
        assert!(expired(&tcp, &entry(now - 61 * S, 0), None, now, &t));
        assert!(!expired(&tcp, &entry(now + S, 0), None, now, &t));
    }

    #[test]
    fn a_dsr_half_without_a_twin_lives_by_its_own_flags() {
        use sluice_common::nat::NAT4_DSR;
        let t = CtTimeouts::default();
        let now = 100_000 * S;
        // The entry node's forward half, answered (the client's ACK), and
        // the backend's node's reply half, answered (the pod's answers):
        // an hour idle is no reason to go.
        for direction in [NAT4_FORWARD, NAT4_REPLY] {
            let half = entry(now - 3600 * S, NAT4_DSR | NAT4_REPLY_SEEN);
            assert!(!expired(&key(6, direction), &half, None, now, &t), "{direction}");
            assert!(expired(&key(6, direction), &entry(now - 7 * 3600 * S, half.flags), None, now, &t));
        }
        // A SYN the backend never answered: a minute, as any.
        assert!(expired(&key(6, NAT4_FORWARD), &entry(now - 61 * S, NAT4_DSR), None, now, &t));
        assert!(!expired(&key(6, NAT4_FORWARD), &entry(now - 59 * S, NAT4_DSR), None, now, &t));
        // Closed by the backend's RST: 10 s, on its own too.
        assert!(expired(
            &key(6, NAT4_REPLY),
            &entry(now - 11 * S, NAT4_DSR | NAT4_REPLY_SEEN | NAT4_RST),
            None,
            now,
            &t
        ));
    }

    #[test]
    fn a_closing_tcp_connection_goes_early() {
        let t = CtTimeouts::default();
        let now = 100_000 * S;
        let tcp = key(6, NAT4_FORWARD);
        let answered = NAT4_REPLY_SEEN;
        let pair =
            |idle: u64, flags: u32| (entry(now - idle * S, answered | flags), entry(now - idle * S, answered | flags));
        // Closed (an RST, or a FIN each way): 10 s.
        for closed in [NAT4_RST, NAT4_FIN_CLIENT | NAT4_FIN_BACKEND] {
            let (a, b) = pair(11, closed);
            assert!(expired(&tcp, &a, Some(&b), now, &t), "{closed:#x}");
            let (a, b) = pair(9, closed);
            assert!(!expired(&tcp, &a, Some(&b), now, &t), "{closed:#x}");
        }
        // Half-closed: 120 s, not hours.
        let (a, b) = pair(121, NAT4_FIN_CLIENT);
        assert!(expired(&tcp, &a, Some(&b), now, &t));
        let (a, b) = pair(119, NAT4_FIN_BACKEND);
        assert!(!expired(&tcp, &a, Some(&b), now, &t));
        // The mark on one half is enough (the GC ORs both).
        assert!(expired(&tcp, &entry(now - 11 * S, NAT4_RST), Some(&entry(now - 11 * S, answered)), now, &t));
        // Never longer than the protocol's own: unanswered stays a minute.
        assert!(expired(&tcp, &entry(now - 61 * S, NAT4_FIN_CLIENT), None, now, &t));
        // UDP has no FIN: bits there (never set by the datapath) change nothing.
        assert!(!expired(&key(17, NAT4_FORWARD), &entry(now - 11 * S, NAT4_RST), None, now, &t));
    }
}
