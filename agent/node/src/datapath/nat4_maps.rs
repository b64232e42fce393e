//! Typed access to the uplink's Service maps (issue 27; layouts on the
//! types in `sluice_common::nat`): `NAT4`, read and collected by the
//! agent, `LB4_CONFIG`, written at start, `NAT4_STATS`, and
//! `LB4_SVC_AFFINITY` (the programs' alone; read by tests and tools).
use anyhow::{Context, Result};
use aya::maps::{lpm_trie::Key, Array, HashMap, LpmTrie, MapData, PerCpuArray};
use sluice_common::{
    lb4_affinity::Lb4AffinityKey,
    maps::{limits, names},
    nat::{Lb4Config, Nat4Counter, Nat4Entry, Nat4Key, SourceRangeKey, SOURCE_RANGE_FRONTEND_BITS},
    services::AffinityValue,
};

use super::{
    pinned_maps::{insert_error, open, removed_or_absent},
    pins::PinDir,
};

/// `LB4_SVC_AFFINITY`: the backend each outside client last got from a
/// Service port with `sessionAffinity: ClientIP`
/// (`sluice_common::lb4_affinity`).
pub struct Lb4AffinityTable(HashMap<MapData, Lb4AffinityKey, AffinityValue>);

impl Lb4AffinityTable {
    pub fn open(pins: &PinDir) -> Result<Self> {
        Ok(Self(open(pins, names::LB4_SVC_AFFINITY)?.try_into()?))
    }

    /// Every entry; one that vanishes during the walk is skipped.
    pub fn all(&self) -> Result<Vec<(Lb4AffinityKey, AffinityValue)>> {
        let mut out = Vec::new();
        for k in self.0.keys() {
            let k = k.context("walk LB4_SVC_AFFINITY")?;
            match self.0.get(&k, 0) {
                Ok(v) => out.push((k, v)),
                Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(anyhow::Error::new(e).context(format!("read LB4_SVC_AFFINITY {k:?}"))),
            }
        }
        Ok(out)
    }

    /// For tests and tools (an entry aged by hand); the programs make them.
    pub fn insert(&mut self, key: Lb4AffinityKey, value: AffinityValue) -> Result<()> {
        self.0
            .insert(key, value, 0)
            .map_err(|e| insert_error(e, names::LB4_SVC_AFFINITY, limits::MAX_LB4_AFFINITY, format!("{key:?}")))
    }
}

/// `NAT4`: both halves of every connection from outside to a Service.
pub struct Nat4Table(HashMap<MapData, Nat4Key, Nat4Entry>);

impl Nat4Table {
    pub fn open(pins: &PinDir) -> Result<Self> {
        Ok(Self(open(pins, names::NAT4)?.try_into()?))
    }

    pub fn get(&self, key: &Nat4Key) -> Result<Option<Nat4Entry>> {
        match self.0.get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(aya::maps::MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(anyhow::Error::new(e).context(format!("read NAT4 {key:?}"))),
        }
    }

    /// For tests and tools; the programs make entries.
    pub fn insert(&mut self, key: Nat4Key, entry: Nat4Entry) -> Result<()> {
        self.0
            .insert(key, entry, 0)
            .map_err(|e| insert_error(e, names::NAT4, limits::MAX_NAT4, format!("insert NAT4 {key:?}")))
    }

    pub fn remove(&mut self, key: &Nat4Key) -> Result<()> {
        removed_or_absent(self.0.remove(key)).with_context(|| format!("remove NAT4 {key:?}"))
    }

    /// Every entry; one that vanishes during the walk is skipped.
    pub fn all(&self) -> Result<Vec<(Nat4Key, Nat4Entry)>> {
        let mut out = Vec::new();
        for k in self.0.keys() {
            let k = k.context("walk NAT4")?;
            if let Some(v) = self.get(&k)? {
                out.push((k, v));
            }
        }
        Ok(out)
    }
}

/// `LB4_SOURCE_RANGES`: the `loadBalancerSourceRanges` of LoadBalancer
/// ingress IPs, each entry a frontend and a range (`SourceRangeKey` with
/// the range's address and its prefix length, without the frontend's
/// `SOURCE_RANGE_FRONTEND_BITS`).
pub struct SourceRanges(LpmTrie<MapData, SourceRangeKey, u32>);

impl SourceRanges {
    pub fn open(pins: &PinDir) -> Result<Self> {
        Ok(Self(open(pins, names::LB4_SOURCE_RANGES)?.try_into()?))
    }

    /// Every entry: (key, range prefix length).
    pub fn all(&self) -> Result<Vec<(SourceRangeKey, u8)>> {
        let mut out = Vec::new();
        for k in self.0.keys() {
            let k = k.context("walk LB4_SOURCE_RANGES")?;
            let bits = k.prefix_len().saturating_sub(SOURCE_RANGE_FRONTEND_BITS);
            out.push((k.data(), bits as u8));
        }
        Ok(out)
    }

    pub fn insert(&mut self, key: SourceRangeKey, range_len: u8) -> Result<()> {
        let k = Key::new(SOURCE_RANGE_FRONTEND_BITS + u32::from(range_len), key);
        self.0.insert(&k, 1, 0).map_err(|e| {
            insert_error(
                e,
                names::LB4_SOURCE_RANGES,
                limits::MAX_LB4_SOURCE_RANGES,
                format!("insert LB4_SOURCE_RANGES {key:?}/{range_len}"),
            )
        })
    }

    pub fn remove(&mut self, key: SourceRangeKey, range_len: u8) -> Result<()> {
        let k = Key::new(SOURCE_RANGE_FRONTEND_BITS + u32::from(range_len), key);
        removed_or_absent(self.0.remove(&k)).with_context(|| format!("remove LB4_SOURCE_RANGES {key:?}/{range_len}"))
    }
}

/// Write `LB4_CONFIG`'s one entry.
pub fn set_lb4_config(pins: &PinDir, config: Lb4Config) -> Result<()> {
    let mut map: Array<MapData, Lb4Config> = open(pins, names::LB4_CONFIG)?.try_into()?;
    map.set(0, config, 0).context("write LB4_CONFIG")
}

/// `LB4_CONFIG`'s one entry.
pub fn lb4_config(pins: &PinDir) -> Result<Lb4Config> {
    let map: Array<MapData, Lb4Config> = open(pins, names::LB4_CONFIG)?.try_into()?;
    map.get(&0, 0).context("read LB4_CONFIG")
}

/// `NAT4_STATS` summed over CPUs, in `Nat4Counter` order.
pub fn nat4_counters(pins: &PinDir) -> Result<Vec<(Nat4Counter, u64)>> {
    let map: PerCpuArray<MapData, u64> = open(pins, names::NAT4_STATS)?.try_into()?;
    Nat4Counter::ALL
        .iter()
        .map(|c| Ok((*c, map.get(&(*c as u32), 0).context("read NAT4_STATS")?.iter().sum())))
        .collect()
}
