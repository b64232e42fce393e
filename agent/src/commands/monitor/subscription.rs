//! A monitor's slot: a ring buffer of its own and its bits in `MONITORS`
//! (why slots: `sluice_common::events`).
//!
//! A slot is held by locking (`flock`) the directory `monitors/<slot>` in
//! the pin tree for the monitor's whole life: the kernel releases the lock
//! when the process ends, even by SIGKILL, so a slot is never lost to a
//! dead monitor. Claiming, under a lock on `monitors/` itself (two monitors
//! never rewrite `MONITORS[0]` at once):
//! 1. take the first slot nobody holds;
//! 2. clear the bits of our slot and of every slot nobody holds (a monitor
//!    killed before it could clear its own: programs still write for it);
//! 3. drain our ring buffer: what is there was written for a monitor that
//!    is gone;
//! 4. note the time (`CLOCK_MONOTONIC`), then set our bits. An event
//!    stamped earlier (a program on another CPU that read the old bits
//!    while we drained) is stale: `is_stale`.
//!
//! Leaving clears our bits under the same lock. `merged` is pure.
use std::{fs, fs::File, io, path::Path};

use anyhow::{anyhow, Context, Result};
use aya::maps::{Array, Map, MapData, RingBuf};
use nix::{
    errno::Errno,
    fcntl::{Flock, FlockArg},
};
use sluice_common::{
    events::{slot_bits, MONITOR_SLOTS},
    maps::names,
};
use sluice_node::datapath::pins::PinDir;

/// `MONITORS[0]` with `slot`'s bits set to `bits`, and the bits of every
/// other slot not in `held` (bit `i`: a live monitor holds slot `i`)
/// cleared.
pub fn merged(current: u32, held: u32, slot: u32, bits: u32) -> u32 {
    let mut out = current;
    for s in 0..MONITOR_SLOTS {
        if s == slot || held & (1 << s) == 0 {
            out &= !slot_bits(s);
        }
    }
    out | (bits & slot_bits(slot))
}

/// An event stamped before the slot went live was written for someone else.
pub fn is_stale(ts_ns: u64, since_ns: u64) -> bool {
    ts_ns < since_ns
}

/// Lock `dir` (a directory); `None` if someone else holds it.
fn try_lock(dir: &Path) -> Result<Option<Flock<File>>> {
    let file = File::open(dir).with_context(|| format!("open {}", dir.display()))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(lock)),
        Err((_, Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(e).with_context(|| format!("lock {}", dir.display())),
    }
}

/// Lock `dir`, waiting for its holder (who holds it only while changing
/// `MONITORS`).
fn lock(dir: &Path) -> Result<Flock<File>> {
    let file = File::open(dir).with_context(|| format!("open {}", dir.display()))?;
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| e).with_context(|| format!("lock {}", dir.display()))
}

fn create_dir(dir: &Path) -> Result<()> {
    match fs::create_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
            Err(e).with_context(|| format!("create {}", dir.display()))
        }
        _ => Ok(()),
    }
}

fn open_map(pins: &PinDir, name: &str) -> Result<Map> {
    let path = pins.map(name);
    let data = MapData::from_pin(&path).with_context(|| {
        format!(
            "open {} (is the datapath loaded? A datapath loaded by an agent older than this monitor has no \
             per-monitor ring buffers: restart the agent)",
            path.display()
        )
    })?;
    Ok(Map::from_map_data(data)?)
}

/// A held slot. Dropping it clears its bits, then the lock goes.
pub struct Subscription {
    pub slot: u32,
    /// This slot's ring buffer, drained of anything older than `since_ns`.
    pub ring: RingBuf<MapData>,
    /// `CLOCK_MONOTONIC` when the slot went live.
    pub since_ns: u64,
    pins: PinDir,
    monitors: Array<MapData, u32>,
    _held: Flock<File>,
}

impl Subscription {
    /// Claim a free slot and subscribe it: `bits(slot)` says to what
    /// (`drop_bit`, `trace_bit`).
    pub fn claim(pins: &PinDir, bits: impl Fn(u32) -> u32) -> Result<Self> {
        let dir = pins.monitors_dir();
        create_dir(&dir)?;
        let _registry = lock(&dir)?;
        let mut monitors: Array<MapData, u32> = open_map(pins, names::MONITORS)?.try_into()?;
        let (mut held, mut mine) = (0u32, None);
        for slot in 0..MONITOR_SLOTS {
            let path = pins.monitor_slot(slot);
            create_dir(&path)?;
            match try_lock(&path)? {
                None => held |= 1 << slot,
                Some(lock) if mine.is_none() => mine = Some((slot, lock)),
                Some(_free) => {}
            }
        }
        let (slot, lock) = mine.ok_or_else(|| {
            anyhow!("{MONITOR_SLOTS} monitors run on this node already (each holds a directory of {})", dir.display())
        })?;
        let mut ring: RingBuf<MapData> = open_map(pins, names::EVENTS[slot as usize])?.try_into()?;
        let current = monitors.get(&0, 0)?;
        monitors.set(0, merged(current, held, slot, 0), 0)?;
        while ring.next().is_some() {}
        let since_ns = super::clock::Clocks::now().monotonic_ns;
        let current = monitors.get(&0, 0)?;
        monitors.set(0, merged(current, held, slot, bits(slot)), 0)?;
        Ok(Self { slot, ring, since_ns, pins: pins.clone(), monitors, _held: lock })
    }

    fn unsubscribe(&mut self) -> Result<()> {
        let _registry = lock(&self.pins.monitors_dir())?;
        let current = self.monitors.get(&0, 0)?;
        // Every other slot counts as held: only ours changes.
        self.monitors.set(0, merged(current, u32::MAX, self.slot, 0), 0)?;
        Ok(())
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Err(e) = self.unsubscribe() {
            tracing::warn!(slot = self.slot, error = %format!("{e:#}"), "monitor slot not cleared");
        }
    }
}

#[cfg(test)]
mod tests {
    use sluice_common::events::{drop_bit, trace_bit};

    use super::*;

    #[test]
    fn only_our_slot_and_the_abandoned_ones_change() {
        let others = drop_bit(1) | slot_bits(2) | trace_bit(3);
        // Slots 1 and 2 held, 3 abandoned (its monitor was killed).
        let held = 0b0110;
        assert_eq!(merged(others, held, 0, slot_bits(0)), slot_bits(0) | drop_bit(1) | slot_bits(2));
        assert_eq!(merged(others, held, 0, drop_bit(0)), drop_bit(0) | drop_bit(1) | slot_bits(2));
        // Cleared first (before the drain), then set.
        assert_eq!(merged(slot_bits(0) | others, held, 0, 0), drop_bit(1) | slot_bits(2));
        // Leaving touches no one else.
        assert_eq!(merged(others | trace_bit(0), u32::MAX, 0, 0), others);
        // Bits of another slot are never set through ours.
        assert_eq!(merged(0, 0, 1, slot_bits(0) | drop_bit(1)), drop_bit(1));
    }

    #[test]
    fn events_from_before_the_slot_went_live_are_stale() {
        assert!(is_stale(99, 100));
        assert!(!is_stale(100, 100));
        assert!(!is_stale(101, 100));
    }
}
