//! Typed access to the uplink's Service maps (issue 27; layouts on the
//! types in `sluice_common::nat`): `NAT4`, read and collected by the
//! agent, `LB4_CONFIG`, written at start, `NAT4_STATS`, and
//! `LB4_SVC_AFFINITY` (the programs' alone; read by tests and tools);
//! their IPv6 twins `NAT6`, `NAT6_STATS` and `NODE_ADDRESSES6`; the
//! `loadBalancerSourceRanges` tries of both families.
use anyhow::{Context, Result};
use aya::maps::{lpm_trie::Key, Array, HashMap, LpmTrie, MapData, PerCpuArray};
use sluice_common::{
    lb4_affinity::Lb4AffinityKey,
    maps::{limits, names},
    nat::{Lb4Config, Nat4Counter, Nat4Entry, Nat4Key, SourceRangeKey, SOURCE_RANGE_FRONTEND_BITS},
    nat6::{Nat6Entry, Nat6Key, SourceRangeKey6, SOURCE_RANGE6_FRONTEND_BITS},
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

/// What the agent needs of a NAT table's key (`Nat4Key`, `Nat6Key`): the
/// families share the table's access and its garbage collection
/// (`nat4_gc`).
pub trait NatKey: aya::Pod + std::fmt::Debug {
    type Entry: aya::Pod + std::fmt::Debug;
    /// The pinned map's name and size.
    const MAP: &'static str;
    const MAX: u32;
    fn twin(&self, entry: &Self::Entry) -> Self;
    fn pairs_with(&self, twin: &Self::Entry) -> bool;
    fn protocol(&self) -> u8;
    fn flags(entry: &Self::Entry) -> u32;
    fn last_seen_ns(entry: &Self::Entry) -> u64;
}

impl NatKey for Nat4Key {
    type Entry = Nat4Entry;
    const MAP: &'static str = names::NAT4;
    const MAX: u32 = limits::MAX_NAT4;
    fn twin(&self, entry: &Nat4Entry) -> Self {
        Nat4Key::twin(self, entry)
    }
    fn pairs_with(&self, twin: &Nat4Entry) -> bool {
        Nat4Key::pairs_with(self, twin)
    }
    fn protocol(&self) -> u8 {
        self.protocol
    }
    fn flags(entry: &Nat4Entry) -> u32 {
        entry.flags
    }
    fn last_seen_ns(entry: &Nat4Entry) -> u64 {
        entry.last_seen_ns
    }
}

impl NatKey for Nat6Key {
    type Entry = Nat6Entry;
    const MAP: &'static str = names::NAT6;
    const MAX: u32 = limits::MAX_NAT6;
    fn twin(&self, entry: &Nat6Entry) -> Self {
        Nat6Key::twin(self, entry)
    }
    fn pairs_with(&self, twin: &Nat6Entry) -> bool {
        Nat6Key::pairs_with(self, twin)
    }
    fn protocol(&self) -> u8 {
        self.protocol
    }
    fn flags(entry: &Nat6Entry) -> u32 {
        entry.flags
    }
    fn last_seen_ns(entry: &Nat6Entry) -> u64 {
        entry.last_seen_ns
    }
}

/// A NAT table: both halves of every connection from outside to a
/// Service, `NAT4` (`Nat4Table`) or `NAT6` (`Nat6Table`).
pub struct NatTable<K: NatKey>(HashMap<MapData, K, K::Entry>);

/// `NAT4`.
pub type Nat4Table = NatTable<Nat4Key>;
/// `NAT6`: `NAT4`'s IPv6 twin.
pub type Nat6Table = NatTable<Nat6Key>;

impl<K: NatKey> NatTable<K> {
    pub fn open(pins: &PinDir) -> Result<Self> {
        Ok(Self(open(pins, K::MAP)?.try_into()?))
    }

    pub fn get(&self, key: &K) -> Result<Option<K::Entry>> {
        match self.0.get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(aya::maps::MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(anyhow::Error::new(e).context(format!("read {} {key:?}", K::MAP))),
        }
    }

    /// For tests and tools; the programs make entries.
    pub fn insert(&mut self, key: K, entry: K::Entry) -> Result<()> {
        self.0.insert(key, entry, 0).map_err(|e| insert_error(e, K::MAP, K::MAX, format!("insert {} {key:?}", K::MAP)))
    }

    pub fn remove(&mut self, key: &K) -> Result<()> {
        removed_or_absent(self.0.remove(key)).with_context(|| format!("remove {} {key:?}", K::MAP))
    }

    /// Every entry; one that vanishes during the walk is skipped.
    pub fn all(&self) -> Result<Vec<(K, K::Entry)>> {
        let mut out = Vec::new();
        for k in self.0.keys() {
            let k = k.with_context(|| format!("walk {}", K::MAP))?;
            if let Some(v) = self.get(&k)? {
                out.push((k, v));
            }
        }
        Ok(out)
    }
}

/// The key of a `loadBalancerSourceRanges` trie, either family: its map
/// and how many of its bits name the frontend (always matched whole).
pub trait SourceRangeKind: aya::Pod + std::fmt::Debug {
    const MAP: &'static str;
    const FRONTEND_BITS: u32;
}

impl SourceRangeKind for SourceRangeKey {
    const MAP: &'static str = names::LB4_SOURCE_RANGES;
    const FRONTEND_BITS: u32 = SOURCE_RANGE_FRONTEND_BITS;
}

impl SourceRangeKind for SourceRangeKey6 {
    const MAP: &'static str = names::LB6_SOURCE_RANGES;
    const FRONTEND_BITS: u32 = SOURCE_RANGE6_FRONTEND_BITS;
}

/// `LB4_SOURCE_RANGES` (`SourceRanges`) or `LB6_SOURCE_RANGES`
/// (`SourceRanges6`): the `loadBalancerSourceRanges` of LoadBalancer
/// ingress IPs, each entry a frontend and a range (the key with the
/// range's address, and its prefix length without the frontend's bits).
pub struct SourceRangeTable<K: SourceRangeKind>(LpmTrie<MapData, K, u32>);
pub type SourceRanges = SourceRangeTable<SourceRangeKey>;
pub type SourceRanges6 = SourceRangeTable<SourceRangeKey6>;

impl<K: SourceRangeKind> SourceRangeTable<K> {
    pub fn open(pins: &PinDir) -> Result<Self> {
        Ok(Self(open(pins, K::MAP)?.try_into()?))
    }

    /// Every entry: (key, range prefix length).
    pub fn all(&self) -> Result<Vec<(K, u8)>> {
        let mut out = Vec::new();
        for k in self.0.keys() {
            let k = k.with_context(|| format!("walk {}", K::MAP))?;
            let bits = k.prefix_len().saturating_sub(K::FRONTEND_BITS);
            out.push((k.data(), bits as u8));
        }
        Ok(out)
    }

    pub fn insert(&mut self, key: K, range_len: u8) -> Result<()> {
        let k = Key::new(K::FRONTEND_BITS + u32::from(range_len), key);
        self.0.insert(&k, 1, 0).map_err(|e| {
            insert_error(e, K::MAP, limits::MAX_LB4_SOURCE_RANGES, format!("insert {} {key:?}/{range_len}", K::MAP))
        })
    }

    pub fn remove(&mut self, key: K, range_len: u8) -> Result<()> {
        let k = Key::new(K::FRONTEND_BITS + u32::from(range_len), key);
        removed_or_absent(self.0.remove(&k)).with_context(|| format!("remove {} {key:?}/{range_len}", K::MAP))
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
    counters(pins, names::NAT4_STATS)
}

/// `NAT6_STATS` (`NAT6`'s counts, numbered as `NAT4_STATS`) summed over
/// CPUs, in `Nat4Counter` order.
pub fn nat6_counters(pins: &PinDir) -> Result<Vec<(Nat4Counter, u64)>> {
    counters(pins, names::NAT6_STATS)
}

fn counters(pins: &PinDir, name: &str) -> Result<Vec<(Nat4Counter, u64)>> {
    let map: PerCpuArray<MapData, u64> = open(pins, name)?.try_into()?;
    Nat4Counter::ALL
        .iter()
        .map(|c| Ok((*c, map.get(&(*c as u32), 0).with_context(|| format!("read {name}"))?.iter().sum())))
        .collect()
}

/// `NODE_ADDRESSES6`: this node's own IPv6 addresses
/// (`NODE_ADDRESS_LOCAL`), on which `from_uplink` answers an IPv6
/// NodePort.
pub struct NodeAddressMap6(HashMap<MapData, [u8; 16], u32>);

impl NodeAddressMap6 {
    pub fn open(pins: &PinDir) -> Result<Self> {
        Ok(Self(open(pins, names::NODE_ADDRESSES6)?.try_into()?))
    }

    pub fn entries(&self) -> Result<Vec<([u8; 16], u32)>> {
        self.0.iter().collect::<Result<_, _>>().context("read NODE_ADDRESSES6")
    }

    pub fn put(&mut self, ip: std::net::Ipv6Addr, kind: u32) -> Result<()> {
        self.0.insert(ip.octets(), kind, 0).map_err(|e| {
            insert_error(e, names::NODE_ADDRESSES6, limits::MAX_NODE_ADDRESSES, format!("insert node address {ip}"))
        })
    }

    pub fn remove(&mut self, ip: std::net::Ipv6Addr) -> Result<()> {
        removed_or_absent(self.0.remove(&ip.octets())).with_context(|| format!("remove node address {ip}"))
    }
}
