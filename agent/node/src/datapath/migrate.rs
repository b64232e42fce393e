//! Upgrades without losing a packet: pinned state of an earlier version is
//! taken over, never shadowed.
//!
//! - **Layout versions** (`<pin root>/v<N>`): an agent of layout N+1 on a
//!   node still pinned at layout N moves every link pin and every map pin
//!   into its own tree before loading (a rename in bpffs: the same kernel
//!   objects, so traffic never notices), then the loader swaps its
//!   programs into those links in place (`BPF_LINK_UPDATE`) — no second,
//!   shadowed attachment — and the old tree goes.
//! - **Map shapes** (`map_compat`): a pinned map whose size changed is
//!   migrated: a new map, its entries copied, the pin replaced.
use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use aya::maps::{lpm_trie::LpmTrie, Array, HashMap, Map, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues};
use sluice_common::{maps::names, DropCount, EndpointInfo, FlowKey, NodeConfig, RemoteNode};
use tracing::{info, warn};

use super::{
    map_compat::{self, Decision, MapShape},
    pins::PinDir,
};

/// The shape of a pinned map, from the kernel.
pub fn pinned_shape(path: &Path) -> Result<MapShape> {
    let data = MapData::from_pin(path).with_context(|| format!("open pinned map {}", path.display()))?;
    let info = data.info().with_context(|| format!("info of {}", path.display()))?;
    let raw_type = {
        // `MapInfo::map_type` maps to aya's enum; compare the kernel's number.
        let t = info.map_type().with_context(|| format!("type of {}", path.display()))?;
        t as u32
    };
    Ok(MapShape {
        map_type: raw_type,
        key_size: info.key_size(),
        value_size: info.value_size(),
        max_entries: info.max_entries(),
        flags: info.map_flags(),
    })
}

/// The shapes the object wants, by map name.
pub fn wanted_shapes(object: &[u8]) -> Result<std::collections::HashMap<String, MapShape>> {
    let obj = aya_obj::Object::parse(object).context("parse the eBPF object")?;
    Ok(obj
        .maps
        .iter()
        .map(|(name, m)| {
            (
                name.clone(),
                MapShape {
                    map_type: m.map_type(),
                    key_size: m.key_size(),
                    value_size: m.value_size(),
                    max_entries: m.max_entries(),
                    flags: m.map_flags(),
                },
            )
        })
        .collect())
}

/// Layout trees other than ours under the pin root: `(version, path)`.
pub fn other_layouts(pins: &PinDir) -> Vec<(u32, PathBuf)> {
    let Ok(dir) = fs::read_dir(pins.root()) else {
        return Vec::new();
    };
    let ours = pins.versioned();
    let mut out: Vec<(u32, PathBuf)> = dir
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let v: u32 = name.strip_prefix('v')?.parse().ok()?;
            (e.path() != ours).then(|| (v, e.path()))
        })
        .collect();
    out.sort();
    out
}

/// Move the newest older layout's link and map pins into ours (where ours
/// has none of that name), then remove every other layout tree. Programs
/// stay attached throughout: a pin's rename is not a detach.
pub fn adopt_other_layouts(pins: &PinDir) -> Result<()> {
    let others = other_layouts(pins);
    if let Some((version, old)) = others.last() {
        info!(from = %old.display(), to = %pins.versioned().display(), version, "taking over an earlier layout's pins");
        for (sub, dest) in [("links", pins.links_dir()), ("maps", pins.maps_dir())] {
            let Ok(entries) = fs::read_dir(old.join(sub)) else { continue };
            for e in entries.flatten() {
                let target = dest.join(e.file_name());
                if target.exists() {
                    if sub == "links" {
                        // Ours is attached too: the old one would shadow it
                        // (TCX runs it first and its verdict is final).
                        warn!(link = %e.path().display(), "removing an earlier layout's duplicate link");
                        fs::remove_file(e.path())?;
                    }
                    continue;
                }
                fs::rename(e.path(), &target)
                    .with_context(|| format!("move {} to {}", e.path().display(), target.display()))?;
            }
        }
    }
    for (_, old) in &others {
        remove_tree(old)?;
    }
    Ok(())
}

/// Remove a pin tree. Removing a link pin would detach its program, so a
/// link pin still there is an error: it should have been adopted.
fn remove_tree(dir: &Path) -> Result<()> {
    if let Ok(links) = fs::read_dir(dir.join("links")) {
        if let Some(e) = links.flatten().next() {
            bail!("refusing to remove {}: it still holds link pin {:?}", dir.display(), e.file_name());
        }
    }
    fs::remove_dir_all(dir).with_context(|| format!("remove {}", dir.display()))?;
    info!(dir = %dir.display(), "earlier layout's pins removed");
    Ok(())
}

/// For every pinned map of ours: reuse, migrate (returned: load those
/// unpinned, then `copy_into`), or refuse.
pub fn plan(pins: &PinDir, object: &[u8], maps: &[&str]) -> Result<Vec<String>> {
    let wanted = wanted_shapes(object)?;
    let mut migrate = Vec::new();
    for name in maps {
        let path = pins.map(name);
        if !path.exists() {
            continue;
        }
        let want = *wanted.get(*name).with_context(|| format!("map {name} missing from the eBPF object"))?;
        match map_compat::decide(name, pinned_shape(&path)?, want) {
            Decision::Reuse => {}
            Decision::Migrate => migrate.push(name.to_string()),
            Decision::Refuse(why) => bail!(why),
        }
    }
    Ok(migrate)
}

fn open_pinned(path: &Path) -> Result<Map> {
    let data = MapData::from_pin(path).with_context(|| format!("open {}", path.display()))?;
    Ok(Map::from_map_data(data)?)
}

/// Copy every entry of the pinned map `name` into `new` (freshly loaded,
/// unpinned), then pin `new` over the old pin (temp name, rename).
pub fn copy_into(pins: &PinDir, name: &str, new: &mut Map) -> Result<usize> {
    let path = pins.map(name);
    let old = open_pinned(&path)?;
    let copied = copy_entries(name, old, new).with_context(|| format!("copy the entries of map {name}"))?;
    let tmp = pins.map(&format!("{name}_new"));
    let _ = fs::remove_file(&tmp);
    new.pin(&tmp).with_context(|| format!("pin new {name}"))?;
    fs::rename(&tmp, &path).with_context(|| format!("move new {name} into place"))?;
    info!(map = name, copied, "map migrated to its new shape");
    Ok(copied)
}

/// Every key of a hash map (plain or LRU) into its new map.
fn copy_hash<K: aya::Pod, V: aya::Pod>(old: Map, new: &mut Map) -> Result<usize> {
    let from: HashMap<MapData, K, V> = old.try_into()?;
    let mut to: HashMap<&mut MapData, K, V> = new.try_into()?;
    let mut n = 0;
    for kv in from.iter() {
        let (k, v) = kv?;
        to.insert(k, v, 0)?;
        n += 1;
    }
    Ok(n)
}

/// Every index of a per-CPU array (counters) into its new map, as far as
/// both reach.
fn copy_per_cpu_array<V: aya::Pod>(old: Map, new: &mut Map) -> Result<usize> {
    let from: PerCpuArray<MapData, V> = old.try_into()?;
    let mut to: PerCpuArray<&mut MapData, V> = new.try_into()?;
    let n = from.len().min(to.len());
    for i in 0..n {
        let values: PerCpuValues<V> = from.get(&i, 0)?;
        to.set(i, values, 0)?;
    }
    Ok(n as usize)
}

fn copy_entries(name: &str, old: Map, new: &mut Map) -> Result<usize> {
    let mut n = 0;
    match name {
        names::ENDPOINTS => n = copy_hash::<u32, EndpointInfo>(old, new)?,
        names::NODE_ROUTES => {
            let from: LpmTrie<MapData, u32, RemoteNode> = old.try_into()?;
            let mut to: LpmTrie<&mut MapData, u32, RemoteNode> = new.try_into()?;
            for kv in from.iter() {
                let (k, v) = kv?;
                to.insert(&k, v, 0)?;
                n += 1;
            }
        }
        names::NODE_CONFIG => {
            let from: Array<MapData, NodeConfig> = old.try_into()?;
            let mut to: Array<&mut MapData, NodeConfig> = new.try_into()?;
            for i in 0..from.len().min(to.len()) {
                to.set(i, from.get(&i, 0)?, 0)?;
                n += 1;
            }
        }
        // Counters indexed by an enum that grew at its end (a new socket-LB
        // counter, a new forwarding path): every old index keeps its count.
        names::FORWARDS | names::SOCK_LB_STATS => n = copy_per_cpu_array::<u64>(old, new)?,
        // Slots by `drop_slot`: a new reason's are appended, so copying by
        // index keeps every count where it was.
        names::DROP_STATS => n = copy_per_cpu_array::<DropCount>(old, new)?,
        names::IFACE_PACKETS => {
            let from: PerCpuHashMap<MapData, u32, u64> = old.try_into()?;
            let mut to: PerCpuHashMap<&mut MapData, u32, u64> = new.try_into()?;
            for kv in from.iter() {
                let (k, v) = kv?;
                to.insert(k, v, 0)?;
                n += 1;
            }
        }
        names::STACK_FLOWS => n = copy_hash::<FlowKey, u32>(old, new)?,
        other => {
            warn!(map = other, "no migration known for this map; starting it empty");
        }
    }
    Ok(n)
}
