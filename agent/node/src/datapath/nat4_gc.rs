//! Garbage collection of `NAT4`: a connection from outside whose two
//! halves have both been idle past its protocol's timeout is removed,
//! both entries together (`Nat4Key::twin`), so the table's fill counts
//! live connections and a SNAT port is free again. `NAT4` is a plain hash
//! (a full one refuses new connections): without this pass it would fill.
//!
//! The timeouts are `POLICY_CT`'s (`policy_ct_gc::CtTimeouts`): TCP once
//! the backend answered, hours; everything else a minute. An entry whose
//! twin is gone (a pass interrupted between the two removals, or a
//! program's insert that lost a race) is removed once idle on its own.
use anyhow::Result;
use sluice_common::nat::{Nat4Entry, Nat4Key, NAT4_REPLY_SEEN};

use super::{nat4_maps::Nat4Table, policy_ct_gc::CtTimeouts, policy_ct_gc::GcPass};

const IPPROTO_TCP: u8 = 6;

/// The timeout of a connection whose halves are `a` and `b` (if found).
fn timeout_of(key: &Nat4Key, a: &Nat4Entry, b: Option<&Nat4Entry>, timeouts: &CtTimeouts) -> std::time::Duration {
    let answered = (a.flags | b.map_or(0, |b| b.flags)) & NAT4_REPLY_SEEN != 0;
    if key.protocol == IPPROTO_TCP && answered {
        timeouts.tcp_established
    } else {
        timeouts.other
    }
}

fn idle(entry: &Nat4Entry, now_ns: u64, timeout: std::time::Duration) -> bool {
    u128::from(now_ns.saturating_sub(entry.last_seen_ns)) > timeout.as_nanos()
}

/// Is the connection of `key` → `entry`, whose other half is `twin` (if
/// any), idle past its timeout at `now_ns` (CLOCK_MONOTONIC)?
pub fn expired(key: &Nat4Key, entry: &Nat4Entry, twin: Option<&Nat4Entry>, now_ns: u64, timeouts: &CtTimeouts) -> bool {
    let timeout = timeout_of(key, entry, twin, timeouts);
    idle(entry, now_ns, timeout) && twin.is_none_or(|t| idle(t, now_ns, timeout))
}

/// One pass over `NAT4`: every expired connection's entries removed. Both
/// halves are read again just before their removal, so a connection used
/// since the walk listed it stays.
pub fn collect(nat: &mut Nat4Table, now_ns: u64, timeouts: &CtTimeouts) -> Result<GcPass> {
    let mut pass = GcPass::default();
    for (key, entry) in nat.all()? {
        pass.scanned += 1;
        let twin_key = key.twin(&entry);
        let Some(fresh) = nat.get(&key)? else { continue };
        let twin = nat.get(&twin_key)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_common::nat::{NAT4_FORWARD, NAT4_REPLY};

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
}
