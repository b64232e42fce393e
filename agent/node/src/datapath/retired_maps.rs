//! Maps an earlier version had and this one replaced by a map of another
//! name and layout: what a pin of one found at start becomes.
//!
//! A map whose entries change meaning gets a new name rather than a new
//! shape under the old one: `map_compat` would refuse the old pin (and an
//! older agent, rolled back to, would refuse the new one), where a new name
//! lets either version start. The old pin's content is carried into the
//! new map once, then the pin goes.
//!
//! - `DROPS` (`PerCpuArray<u64>` by `DropReason`: packets, no direction)
//!   → `DROP_STATS` (`PerCpuArray<DropCount>` by `drop_slot(reason,
//!   direction)`: packets and bytes). Each reason's packets go to the one
//!   direction the programs of those versions dropped it in
//!   (`drops_v1_direction`); bytes start at zero, as nothing counted them.
//! - `EVENTS` (the one ring buffer every monitor shared) and `MONITOR` (its
//!   trace switch) → a ring buffer per monitor slot and `MONITORS`
//!   (`sluice_common::events`). Their content is transient: the pins are
//!   just removed (`unpin_transient`); a program of the earlier version
//!   still attached keeps its map until its link is updated a moment later.
use std::{fs, path::Path};

use anyhow::{bail, Context, Result};
use aya::{
    maps::{Map, MapData, PerCpuArray, PerCpuValues},
    Ebpf,
};
use sluice_common::{drop_slot, maps::names, DropCount, DropReason, HookDirection};
use tracing::{info, warn};

use super::{migrate::pinned_shape, pins::PinDir};

/// `BPF_MAP_TYPE_PERCPU_ARRAY`.
const PERCPU_ARRAY: u32 = 6;

/// The direction an old `DROPS` count is carried into. In the versions
/// that had `DROPS`, every program dropped on its device's ingress side but
/// `to_tunnel` (egress), whose own reason is `TunnelNoRoute`. It could also
/// drop `Truncated` (a frame shorter than Ethernet from the stack) and
/// `TunnelKey` (the key refused), which `from_pod` drops too and far more
/// often: those go to ingress, as those versions labelled every drop.
pub fn drops_v1_direction(reason: DropReason) -> HookDirection {
    match reason {
        DropReason::TunnelNoRoute => HookDirection::Egress,
        _ => HookDirection::Ingress,
    }
}

/// One CPU's old `DROPS` counts (index = `DropReason`) as additions to
/// `DROP_STATS` slots. Indexes past this version's reasons (none exist:
/// reasons are only appended, and `DROPS` was retired first) are left out.
pub fn drops_v1_into_stats(old: &[u64]) -> Vec<(u32, DropCount)> {
    DropReason::ALL
        .iter()
        .zip(old)
        .filter(|(_, &packets)| packets != 0)
        .map(|(&reason, &packets)| (drop_slot(reason, drops_v1_direction(reason)), DropCount { packets, bytes: 0 }))
        .collect()
}

/// Remove the pins of retired maps whose content is transient
/// (`names::RETIRED_TRANSIENT`), where still pinned.
pub fn unpin_transient(pins: &PinDir) -> Result<()> {
    for name in names::RETIRED_TRANSIENT {
        let path = pins.map(name);
        match fs::remove_file(&path) {
            Ok(()) => info!(map = name, "an earlier version's map unpinned: this version replaced it"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("unpin retired map {}", path.display())),
        }
    }
    Ok(())
}

/// Carry every retired map's pin found in `pins` into its successor in
/// `ebpf` (the loaded object, its maps already pinned). Never fails the
/// start: a pin it cannot read is left where it is, with a warning.
pub fn carry_over(pins: &PinDir, ebpf: &mut Ebpf) {
    let old = pins.map(names::DROPS);
    if !old.exists() {
        return;
    }
    let Some(new) = ebpf.map_mut(names::DROP_STATS) else {
        warn!(map = names::DROP_STATS, "map missing from the eBPF object; old drop counters left in place");
        return;
    };
    match carry_drops_v1(&old, new) {
        Ok(carried) => info!(from = names::DROPS, to = names::DROP_STATS, carried, "old drop counters carried over"),
        Err(e) => warn!(
            pin = %old.display(),
            error = %format!("{e:#}"),
            "old drop counters not carried over; drop counters start from zero"
        ),
    }
}

/// The old `DROPS` into `DROP_STATS`, added per CPU to what is there (a
/// node rolled back and forward again counted in both). The old pin is
/// removed before anything is added, with the map still open: a crash
/// in between loses the old counts, never counts them twice.
fn carry_drops_v1(old_pin: &Path, new: &mut Map) -> Result<usize> {
    let shape = pinned_shape(old_pin)?;
    if shape.map_type != PERCPU_ARRAY || shape.key_size != 4 || shape.value_size != 8 {
        bail!("{} is not the per-CPU array of u64 this version knows ({shape}); left in place", names::DROPS);
    }
    let data = MapData::from_pin(old_pin).with_context(|| format!("open {}", old_pin.display()))?;
    let from: PerCpuArray<MapData, u64> = Map::from_map_data(data)?.try_into()?;
    fs::remove_file(old_pin).with_context(|| format!("remove {}", old_pin.display()))?;
    let mut to: PerCpuArray<&mut MapData, DropCount> = new.try_into()?;
    let mut per_cpu_old: Vec<Vec<u64>> = Vec::new();
    for i in 0..from.len() {
        let values = from.get(&i, 0).with_context(|| format!("read {}[{i}]", names::DROPS))?;
        per_cpu_old.push(values.iter().copied().collect());
    }
    let cpus = per_cpu_old.first().map_or(0, |v| v.len());
    let mut carried = 0;
    for cpu in 0..cpus {
        let counts: Vec<u64> = per_cpu_old.iter().map(|v| v[cpu]).collect();
        for (slot, add) in drops_v1_into_stats(&counts) {
            let mut now: Vec<DropCount> = to.get(&slot, 0)?.iter().copied().collect();
            now[cpu].packets += add.packets;
            now[cpu].bytes += add.bytes;
            to.set(slot, PerCpuValues::try_from(now)?, 0)?;
            carried += 1;
        }
    }
    Ok(carried)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_counts_keep_their_reason_and_take_the_direction_it_was_dropped_in() {
        // A version with 6 reasons, and one with every reason up to
        // tunnel_no_route, the egress one.
        let mut old = vec![0u64; 13];
        old[DropReason::SourceSpoofed as usize] = 4;
        old[DropReason::Truncated as usize] = 1;
        old[DropReason::TunnelNoRoute as usize] = 7;
        let got = drops_v1_into_stats(&old);
        assert_eq!(
            got,
            vec![
                (drop_slot(DropReason::Truncated, HookDirection::Ingress), DropCount { packets: 1, bytes: 0 }),
                (drop_slot(DropReason::SourceSpoofed, HookDirection::Ingress), DropCount { packets: 4, bytes: 0 }),
                (drop_slot(DropReason::TunnelNoRoute, HookDirection::Egress), DropCount { packets: 7, bytes: 0 }),
            ]
        );
        assert_eq!(drops_v1_into_stats(&old[..6]).len(), 2, "a shorter old map: only its reasons");
        assert!(drops_v1_into_stats(&[0; 6]).is_empty(), "nothing to add");
        // More slots than reasons (cannot happen): the extra ones are left out.
        assert_eq!(drops_v1_into_stats(&[1; 64]).len(), DropReason::COUNT as usize);
    }

    #[test]
    fn only_to_tunnels_own_reason_is_carried_as_egress() {
        for r in DropReason::ALL {
            let want = if r == DropReason::TunnelNoRoute { HookDirection::Egress } else { HookDirection::Ingress };
            assert_eq!(drops_v1_direction(r), want, "{r:?}");
        }
    }
}
