//! Upgrades without losing a packet: pinned state of an earlier version is
//! taken over, never shadowed.
//!
//! - **Layout versions** (`<pin root>/v<N>`): an agent of layout N+1 on a
//!   node still pinned at layout N moves every link pin and every map pin
//!   into its own tree before loading (a rename in bpffs: the same kernel
//!   objects, so traffic never notices), then the loader swaps its
//!   programs into those links in place (`BPF_LINK_UPDATE`) — no second,
//!   shadowed attachment — and the old tree goes.
//! - **Map shapes** (`map_compat`): a pinned map whose size changed, or
//!   whose value gained fields, is migrated: a new map, every entry copied
//!   byte for byte (any map, whatever it holds), the pin replaced — under
//!   the pin directory's lock (`pin_lock`), which the CNI plugin takes to
//!   write endpoint entries, so none is written into a map being replaced.
use std::{
    fs,
    path::{Path, PathBuf},
};

use std::os::fd::{AsFd, BorrowedFd};

use anyhow::{bail, Context, Result};
use aya::maps::{Map, MapData};
use tracing::{info, warn};

use super::{
    bpf_sys,
    map_compat::{self, Decision, Entries, MapShape},
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
/// unpinned, then `copy_into`), or refuse. `sizes`: maps sized at load
/// (`max_entries` other than the object's).
pub fn plan(pins: &PinDir, object: &[u8], maps: &[&str], sizes: &[(&str, u32)]) -> Result<Vec<String>> {
    let mut wanted = wanted_shapes(object)?;
    for (name, max_entries) in sizes {
        if let Some(shape) = wanted.get_mut(*name) {
            shape.max_entries = *max_entries;
        }
    }
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

/// A map migrated by `copy_into`: the old kernel map, kept open so that
/// what the old programs write into it until every link runs the new ones
/// can be copied too (`Carried::catch_up`).
pub struct Carried {
    pub name: String,
    old: MapData,
    from: MapShape,
}

/// Copy every entry of the pinned map `name` into `new` (freshly loaded,
/// unpinned, of the object's shape), then pin `new` over the old pin (temp
/// name, rename). The caller holds the `PinLock` exclusively across every
/// map it migrates, so no plugin writes into an old map after its copy.
/// The old map is returned, still open: programs attached before the swap
/// keep writing into it (`Carried::catch_up`).
pub fn copy_into(pins: &PinDir, name: &str, new: &mut Map) -> Result<Carried> {
    let path = pins.map(name);
    let old = MapData::from_pin(&path).with_context(|| format!("open {}", path.display()))?;
    let from = pinned_shape(&path)?;
    let tmp = pins.map(&format!("{name}_new"));
    let _ = fs::remove_file(&tmp);
    new.pin(&tmp).with_context(|| format!("pin new {name}"))?;
    let copied = (|| -> Result<usize> {
        let to_path = MapData::from_pin(&tmp).with_context(|| format!("open new {name}"))?;
        let to = pinned_shape(&tmp)?;
        copy_entries(old.fd().as_fd(), from, to_path.fd().as_fd(), to, CopyScope::Every)
    })()
    .with_context(|| format!("copy the entries of map {name}"));
    let copied = match copied {
        Ok(n) => n,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
    };
    fs::rename(&tmp, &path).with_context(|| format!("move new {name} into place"))?;
    info!(map = name, copied, from = %from, "map migrated to its new shape");
    Ok(Carried { name: name.to_string(), old, from })
}

impl Carried {
    /// Copy the keys the old map holds and the new one (pinned at the
    /// map's pin) lacks: what the old programs wrote between `copy_into`
    /// and the last link's swap. Keys already in the new map are the new
    /// programs' and stay. Arrays (counters, settings) are not copied
    /// again. Returns the number copied.
    pub fn catch_up(&self, pins: &PinDir) -> Result<usize> {
        let path = pins.map(&self.name);
        let new = MapData::from_pin(&path).with_context(|| format!("open {}", path.display()))?;
        let to = pinned_shape(&path)?;
        let n = copy_entries(self.old.fd().as_fd(), self.from, new.fd().as_fd(), to, CopyScope::Missing)
            .with_context(|| format!("copy what map {}'s old programs wrote since", self.name))?;
        if n > 0 {
            info!(map = %self.name, copied = n, "entries written during the migration carried over");
        }
        Ok(n)
    }
}

/// Which entries `copy_entries` copies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyScope {
    /// Every one, replacing what the new map holds.
    Every,
    /// Keyed maps' keys the new map lacks; arrays not at all.
    Missing,
}

/// Does moving map `name` to a new layout hold new connections from
/// outside back (`Pause`)? The uplink's connection tables, `NAT4` and its
/// IPv6 twin `NAT6`: an entry written into the old one is lost with it.
pub fn pauses_new_connections(name: &str) -> bool {
    name == sluice_common::maps::names::NAT4 || name == sluice_common::maps::names::NAT6
}

/// New connections from outside held back (`LB4_PAUSED`, both families)
/// while `NAT4` or `NAT6` moves to a new map: from before its entries are
/// copied until every
/// link runs the new programs and the stragglers are copied
/// (`Migration::finish`). Dropped unfinished (an error on the way), it
/// lifts the pause all the same: connections from outside must not stay
/// refused because an upgrade failed.
pub struct Pause {
    pins: PinDir,
    lifted: bool,
}

impl Pause {
    /// Pause when `LB4_CONFIG` is pinned and translation is on; `None`
    /// otherwise (nothing from outside is translated: nothing to hold).
    pub fn start(pins: &PinDir) -> Result<Option<Self>> {
        use sluice_common::nat::{LB4_ENABLED, LB4_PAUSED};
        if !pins.map(sluice_common::maps::names::LB4_CONFIG).exists() {
            return Ok(None);
        }
        let mut config = super::nat4_maps::lb4_config(pins)?;
        if config.flags & LB4_ENABLED == 0 {
            return Ok(None);
        }
        config.flags |= LB4_PAUSED;
        super::nat4_maps::set_lb4_config(pins, config).context("pause new connections from outside")?;
        info!("new connections from outside held back while NAT4/NAT6 move to their new layout");
        Ok(Some(Self { pins: pins.clone(), lifted: false }))
    }

    fn lift(&mut self) -> Result<()> {
        if self.lifted {
            return Ok(());
        }
        self.lifted = true;
        let mut config = super::nat4_maps::lb4_config(&self.pins)?;
        config.flags &= !sluice_common::nat::LB4_PAUSED;
        super::nat4_maps::set_lb4_config(&self.pins, config).context("let new connections from outside in again")?;
        info!("new connections from outside let in again");
        Ok(())
    }
}

impl Drop for Pause {
    fn drop(&mut self) {
        if let Err(e) = self.lift() {
            warn!(error = %format!("{e:#}"), "cannot lift the pause on new connections from outside");
        }
    }
}

/// The maps a load migrated, until every link runs the new programs.
pub struct Migration {
    pub carried: Vec<Carried>,
    pub pause: Option<Pause>,
}

impl Migration {
    /// Every link runs the new programs: copy what the old ones wrote
    /// since the copy, then lift the pause.
    pub fn finish(mut self, pins: &PinDir) -> Result<()> {
        let mut result = Ok(());
        for carried in &self.carried {
            if let Err(e) = carried.catch_up(pins) {
                result = Err(e);
            }
        }
        if let Some(mut pause) = self.pause.take() {
            pause.lift()?;
        }
        result
    }
}

/// Every entry of `from` into `to`, byte for byte, each value widened to
/// the new shape (`map_compat::widen`). Generic over what the map holds:
/// only its type and shape matter. Returns the number of entries copied.
pub fn copy_entries(
    from: BorrowedFd<'_>,
    from_shape: MapShape,
    to: BorrowedFd<'_>,
    to_shape: MapShape,
    which: CopyScope,
) -> Result<usize> {
    let cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))?;
    let entries = map_compat::entries_of(from_shape.map_type)
        .with_context(|| format!("no copy rule for map type {}", from_shape.map_type))?;
    let mut value = vec![0u8; map_compat::value_buffer_len(from_shape, cpus)];
    let put = |key: &[u8], value: &[u8]| -> Result<()> {
        let widened = map_compat::widen(value, from_shape, to_shape, cpus);
        bpf_sys::map_update(to, key, &widened).map_err(|e| {
            if e.raw_os_error() == Some(libc::E2BIG) {
                anyhow::anyhow!("the new map is full ({} entries): the old one holds more", to_shape.max_entries)
            } else {
                anyhow::Error::new(e).context("insert into the new map")
            }
        })
    };
    let mut n = 0;
    match entries {
        Entries::Events => {}
        Entries::Indexed if which == CopyScope::Missing => {}
        Entries::Indexed => {
            for i in 0..from_shape.max_entries.min(to_shape.max_entries) {
                let key = i.to_ne_bytes();
                if bpf_sys::map_lookup(from, &key, &mut value).context("read the old map")? {
                    put(&key, &value)?;
                    n += 1;
                }
            }
        }
        Entries::Keyed => {
            let mut key = vec![0u8; from_shape.key_size as usize];
            let mut next = key.clone();
            let mut first = true;
            while bpf_sys::map_next_key(from, (!first).then_some(&key[..]), &mut next)
                .context("walk the old map's keys")?
            {
                first = false;
                std::mem::swap(&mut key, &mut next);
                // Gone since it was listed (an LRU eviction, a delete): skip.
                if !bpf_sys::map_lookup(from, &key, &mut value).context("read the old map")? {
                    continue;
                }
                if which == CopyScope::Missing {
                    let widened = map_compat::widen(&value, from_shape, to_shape, cpus);
                    if bpf_sys::map_insert_new(to, &key, &widened).context("insert into the new map")? {
                        n += 1;
                    }
                } else {
                    put(&key, &value)?;
                    n += 1;
                }
            }
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn either_uplink_connection_table_moving_holds_new_connections_back() {
        use sluice_common::maps::names;
        assert!(pauses_new_connections(names::NAT4));
        assert!(pauses_new_connections(names::NAT6), "an IPv6 connection written into the old NAT6 is lost");
        assert!(!pauses_new_connections(names::SERVICES6));
    }
}
