//! Can a pinned map serve the object being loaded, and how are its entries
//! carried over when it cannot as is? (pure)
//!
//! aya 0.14 reuses a pinned map without looking at it, so a version whose
//! map grew (a new drop reason makes `DROPS` longer) would silently keep the
//! old, shorter map and never count the new reason. The loader asks
//! `decide` about every pinned map first; a migrated map's entries are
//! copied byte for byte by `migrate`, each value passed through `widen`.
//!
//! The rules are generic, by map type and shape, never by map name: every
//! map of a kind sluice uses is carried over, whatever it holds. A value may
//! only grow by fields appended at its end whose zero means "not set" (see
//! `sluice_common::maps`): the old bytes are kept, the new ones are zero.
use std::fmt;

/// What must match for a pinned map to be reused as is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapShape {
    /// `bpf_map_type`.
    pub map_type: u32,
    pub key_size: u32,
    /// Per CPU for per-CPU maps.
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

impl fmt::Display for MapShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "type {}, key {} B, value {} B, {} entries, flags {:#x}",
            self.map_type, self.key_size, self.value_size, self.max_entries, self.flags
        )
    }
}

/// `enum bpf_map_type` numbers of the kinds sluice pins.
pub mod map_type {
    pub const HASH: u32 = 1;
    pub const ARRAY: u32 = 2;
    pub const PERF_EVENT_ARRAY: u32 = 4;
    pub const PERCPU_HASH: u32 = 5;
    pub const PERCPU_ARRAY: u32 = 6;
    pub const LRU_HASH: u32 = 9;
    pub const LRU_PERCPU_HASH: u32 = 10;
    pub const LPM_TRIE: u32 = 11;
    pub const RINGBUF: u32 = 27;
}

/// How a map's entries are found, to copy them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entries {
    /// Every index below `max_entries` (arrays): as many as both sizes hold.
    Indexed,
    /// The keys present (hashes, LRU hashes, LPM tries).
    Keyed,
    /// Nothing to carry: events in flight (ring buffer, perf array), not state.
    Events,
}

/// How entries of `map_type` are copied; `None`: sluice has no rule for it.
pub fn entries_of(map_type: u32) -> Option<Entries> {
    use map_type::*;
    match map_type {
        ARRAY | PERCPU_ARRAY => Some(Entries::Indexed),
        HASH | PERCPU_HASH | LRU_HASH | LRU_PERCPU_HASH | LPM_TRIE => Some(Entries::Keyed),
        RINGBUF | PERF_EVENT_ARRAY => Some(Entries::Events),
        _ => None,
    }
}

/// A per-CPU map: one value slot per possible CPU, each 8-byte aligned.
pub fn is_per_cpu(map_type: u32) -> bool {
    use map_type::*;
    matches!(map_type, PERCPU_HASH | PERCPU_ARRAY | LRU_PERCPU_HASH)
}

/// Bytes of one lookup's value buffer (all CPUs' slots for a per-CPU map).
pub fn value_buffer_len(shape: MapShape, cpus: usize) -> usize {
    if is_per_cpu(shape.map_type) {
        slot(shape.value_size) * cpus
    } else {
        shape.value_size as usize
    }
}

fn slot(value_size: u32) -> usize {
    (value_size as usize).div_ceil(8) * 8
}

/// An old value (a `value_buffer_len(from)` buffer) in the new shape: each
/// (per-CPU) value's bytes kept, the fields appended since then zero.
pub fn widen(old: &[u8], from: MapShape, to: MapShape, cpus: usize) -> Vec<u8> {
    let mut out = vec![0u8; value_buffer_len(to, cpus)];
    let (n_old, n_new) = (from.value_size as usize, to.value_size as usize);
    let keep = n_old.min(n_new);
    if is_per_cpu(to.map_type) {
        let (s_old, s_new) = (slot(from.value_size), slot(to.value_size));
        for cpu in 0..cpus {
            out[cpu * s_new..cpu * s_new + keep].copy_from_slice(&old[cpu * s_old..cpu * s_old + keep]);
        }
    } else {
        out[..keep].copy_from_slice(&old[..keep]);
    }
    out
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Same shape: reuse the pin; the state carries on untouched.
    Reuse,
    /// Same type, key and flags, another size or a value with fields
    /// appended: a new map, every entry copied over (values widened; a
    /// shrunk map must still hold them all), then the pin replaced.
    Migrate,
    /// Anything else: the entries mean something else now. Refused with a
    /// message naming the map and both shapes; never reused silently.
    Refuse(String),
}

pub fn decide(name: &str, pinned: MapShape, wanted: MapShape) -> Decision {
    if pinned == wanted {
        return Decision::Reuse;
    }
    let refuse = |why: &str| {
        Decision::Refuse(format!(
            "pinned map {name} ({pinned}) does not fit this version ({wanted}): {why}; its entries cannot be \
             carried over: remove the pin directory's maps (traffic stops until pods are re-added) or run the \
             matching version"
        ))
    };
    if pinned.map_type != wanted.map_type || pinned.key_size != wanted.key_size || pinned.flags != wanted.flags {
        return refuse("another type, key or flags");
    }
    if entries_of(wanted.map_type).is_none() {
        return refuse("no copy rule for this map type");
    }
    if pinned.value_size > wanted.value_size {
        return refuse("its value shrank (fields would be lost)");
    }
    Decision::Migrate
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(max_entries: u32) -> MapShape {
        MapShape { map_type: map_type::PERCPU_ARRAY, key_size: 4, value_size: 8, max_entries, flags: 0 }
    }

    #[test]
    fn table() {
        assert_eq!(decide("DROPS", shape(6), shape(6)), Decision::Reuse);
        // A new drop reason: the array grew.
        assert_eq!(decide("DROPS", shape(6), shape(9)), Decision::Migrate);
        let hash = |max_entries, value_size| MapShape {
            map_type: map_type::HASH,
            key_size: 4,
            value_size,
            max_entries,
            flags: 0,
        };
        assert_eq!(decide("ENDPOINTS", hash(4096, 16), hash(2048, 16)), Decision::Migrate);
        // A field appended to the value (NODE_CONFIG gained the pod CIDR).
        assert_eq!(decide("NODE_CONFIG", hash(1, 8), hash(1, 16)), Decision::Migrate);
        let ringbuf =
            MapShape { map_type: map_type::RINGBUF, key_size: 0, value_size: 0, max_entries: 1 << 16, flags: 0 };
        assert_eq!(decide("EVENTS", ringbuf, MapShape { max_entries: 1 << 17, ..ringbuf }), Decision::Migrate);
        for (other, why) in [
            (MapShape { value_size: 16, ..shape(6) }, "value shrank"),
            (MapShape { key_size: 8, ..shape(6) }, "another type, key or flags"),
            (MapShape { map_type: 2, ..shape(6) }, "another type, key or flags"),
            (MapShape { flags: 1, ..shape(6) }, "another type, key or flags"),
        ] {
            match decide("NODE_CONFIG", other, shape(6)) {
                Decision::Refuse(msg) => {
                    assert!(msg.contains("NODE_CONFIG") && msg.contains(&other.to_string()), "{msg}");
                    assert!(msg.contains(&shape(6).to_string()) && msg.contains(why), "{msg}");
                }
                d => panic!("{other}: {d:?}"),
            }
        }
        // A kind of map sluice has no copy rule for (a program array).
        let progs = MapShape { map_type: 3, key_size: 4, value_size: 4, max_entries: 4, flags: 0 };
        assert!(
            matches!(decide("X", progs, MapShape { max_entries: 8, ..progs }), Decision::Refuse(m) if m.contains("no copy rule"))
        );
    }

    #[test]
    fn widening_keeps_old_bytes_and_zeroes_new_fields() {
        let from = MapShape { map_type: map_type::ARRAY, key_size: 4, value_size: 8, max_entries: 1, flags: 0 };
        let to = MapShape { value_size: 16, ..from };
        assert_eq!(widen(&[1, 2, 3, 4, 5, 6, 7, 8], from, to, 4), vec![1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(widen(&[9; 8], from, from, 4), vec![9; 8], "same size: as is");
    }

    #[test]
    fn per_cpu_values_are_widened_slot_by_slot() {
        // A u32 per CPU (slots of 8 bytes) growing to 12 bytes (slots of 16).
        let from = MapShape { map_type: map_type::PERCPU_HASH, key_size: 4, value_size: 4, max_entries: 8, flags: 0 };
        let to = MapShape { value_size: 12, ..from };
        assert_eq!(value_buffer_len(from, 2), 16);
        assert_eq!(value_buffer_len(to, 2), 32);
        let old = [1, 1, 1, 1, 0xee, 0xee, 0xee, 0xee, 2, 2, 2, 2, 0xee, 0xee, 0xee, 0xee];
        let mut want = vec![0u8; 32];
        want[..4].copy_from_slice(&[1; 4]);
        want[16..20].copy_from_slice(&[2; 4]);
        assert_eq!(widen(&old, from, to, 2), want, "padding is not carried, each CPU's value is");
    }

    #[test]
    fn every_kind_sluice_pins_has_a_copy_rule() {
        use map_type::*;
        for t in
            [HASH, ARRAY, PERF_EVENT_ARRAY, PERCPU_HASH, PERCPU_ARRAY, LRU_HASH, LRU_PERCPU_HASH, LPM_TRIE, RINGBUF]
        {
            assert!(entries_of(t).is_some(), "type {t}");
        }
    }
}
