//! Garbage collection of `POLICY_CT` and its IPv6 twin `POLICY_CT6` (one
//! code for both, over [`CtTable`]): entries idle longer than their
//! protocol's timeout are removed, so the table's fill (in `status` and
//! metrics) counts live connections and the LRU rarely has to evict one.
//!
//! What an early removal costs: the connection's next packet is judged as
//! new. In the original direction that is the same judgement again; in the
//! reply direction it is a new connection the other way, which an
//! ingress-isolated client refuses. So the timeouts are long for TCP once
//! both directions were seen (`CT_REPLY_SEEN`: established, kept like
//! conntrack's `nf_conntrack_tcp_timeout_established`'s order of magnitude,
//! Cilium's 6 h), short for the rest (a connection attempt that got no
//! answer, UDP, ICMP: conntrack's and Cilium's minute).
//!
//! `last_seen_ns` is the programs' `bpf_ktime_get_coarse_ns`
//! (CLOCK_MONOTONIC at the last tick; older entries `bpf_ktime_get_ns`),
//! refreshed at most once a second; the agent compares it with its own
//! CLOCK_MONOTONIC (a tick ahead at most: nothing against its timeouts). `decide` is pure; `collect` walks the pinned map.
use std::time::Duration;

use anyhow::{Context, Result};
use sluice_common::policy::{CtEntry, CtKey, CtKey6, CT_REPLY_SEEN};

use super::policy_maps::{PolicyCt, PolicyCt6};

const IPPROTO_TCP: u8 = 6;

/// How long an entry may stay idle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtTimeouts {
    /// TCP with a reply seen.
    pub tcp_established: Duration,
    /// Everything else: TCP without a reply, UDP, SCTP, ICMP.
    pub other: Duration,
}

impl Default for CtTimeouts {
    fn default() -> Self {
        Self { tcp_established: Duration::from_secs(6 * 3600), other: Duration::from_secs(60) }
    }
}

/// Is the entry idle past its timeout at `now_ns` (CLOCK_MONOTONIC)? An
/// entry stamped after `now_ns` (refreshed while the walk ran) is not.
/// `protocol`: the connection's (its key's) IANA number.
pub fn expired(protocol: u8, entry: &CtEntry, now_ns: u64, timeouts: &CtTimeouts) -> bool {
    let timeout = if protocol == IPPROTO_TCP && entry.flags & CT_REPLY_SEEN != 0 {
        timeouts.tcp_established
    } else {
        timeouts.other
    };
    let idle = now_ns.saturating_sub(entry.last_seen_ns);
    u128::from(idle) > timeout.as_nanos()
}

/// What one pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcPass {
    /// Entries walked.
    pub scanned: u64,
    /// Entries removed as expired.
    pub removed: u64,
}

/// The node's CLOCK_MONOTONIC in nanoseconds: the programs' clock.
pub fn monotonic_now_ns() -> Result<u64> {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid clock id and a timespec to write into.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
        return Err(std::io::Error::last_os_error()).context("read CLOCK_MONOTONIC");
    }
    Ok(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// A connection table the GC walks: `POLICY_CT` or `POLICY_CT6`.
pub trait CtTable {
    type Key: Copy;
    fn protocol(key: &Self::Key) -> u8;
    fn entries(&self) -> Result<Vec<(Self::Key, CtEntry)>>;
    fn entry(&self, key: &Self::Key) -> Result<Option<CtEntry>>;
    fn delete(&mut self, key: &Self::Key) -> Result<()>;
}

impl CtTable for PolicyCt {
    type Key = CtKey;
    fn protocol(key: &CtKey) -> u8 {
        key.protocol
    }
    fn entries(&self) -> Result<Vec<(CtKey, CtEntry)>> {
        self.all()
    }
    fn entry(&self, key: &CtKey) -> Result<Option<CtEntry>> {
        self.get(key)
    }
    fn delete(&mut self, key: &CtKey) -> Result<()> {
        self.remove(key)
    }
}

impl CtTable for PolicyCt6 {
    type Key = CtKey6;
    fn protocol(key: &CtKey6) -> u8 {
        key.protocol
    }
    fn entries(&self) -> Result<Vec<(CtKey6, CtEntry)>> {
        self.all()
    }
    fn entry(&self, key: &CtKey6) -> Result<Option<CtEntry>> {
        self.get(key)
    }
    fn delete(&mut self, key: &CtKey6) -> Result<()> {
        self.remove(key)
    }
}

/// One pass over a connection table: every expired entry removed. Each is
/// read again just before its removal, so one its connection used since
/// the walk listed it stays.
pub fn collect<T: CtTable>(ct: &mut T, now_ns: u64, timeouts: &CtTimeouts) -> Result<GcPass> {
    let mut pass = GcPass::default();
    for (key, entry) in ct.entries()? {
        pass.scanned += 1;
        let protocol = T::protocol(&key);
        if !expired(protocol, &entry, now_ns, timeouts) {
            continue;
        }
        match ct.entry(&key)? {
            Some(fresh) if expired(protocol, &fresh, now_ns, timeouts) => {
                ct.delete(&key)?;
                pass.removed += 1;
            }
            _ => {}
        }
    }
    Ok(pass)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn entry(last_seen_ns: u64, flags: u32) -> CtEntry {
        CtEntry { epoch: 0, flags, last_seen_ns, egress_ref: 0, ingress_ref: 0 }
    }

    #[test]
    fn each_protocol_has_its_timeout() {
        let t = CtTimeouts::default();
        let now = 100_000 * S;
        // TCP established: hours.
        assert!(!expired(6, &entry(now - 3600 * S, CT_REPLY_SEEN), now, &t));
        assert!(expired(6, &entry(now - 6 * 3600 * S - 1, CT_REPLY_SEEN), now, &t));
        // TCP never answered, UDP, ICMP: a minute.
        assert!(!expired(6, &entry(now - 60 * S, 0), now, &t));
        assert!(expired(6, &entry(now - 61 * S, 0), now, &t));
        assert!(expired(17, &entry(now - 61 * S, CT_REPLY_SEEN), now, &t), "UDP replies do not extend it");
        assert!(!expired(1, &entry(now - 30 * S, 0), now, &t));
        // Refreshed after `now` was read: not idle.
        assert!(!expired(17, &entry(now + S, 0), now, &t));
    }
}
