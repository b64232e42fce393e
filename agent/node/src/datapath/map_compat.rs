//! Can a pinned map serve the object being loaded? (pure)
//!
//! aya 0.14 reuses a pinned map without looking at it, so a version whose
//! map grew (a new drop reason makes `DROPS` longer) would silently keep the
//! old, shorter map and never count the new reason. The loader asks
//! `decide` about every pinned map first.
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

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Same shape: reuse the pin; the state carries on untouched.
    Reuse,
    /// Same type, key and value, another size: a new map, every entry
    /// copied over (as many as fit: a shrunk map must still hold them all),
    /// then the pin replaced.
    Migrate,
    /// Anything else: the entries mean something else now. Refused with a
    /// message naming the map and both shapes; never reused silently.
    Refuse(String),
}

pub fn decide(name: &str, pinned: MapShape, wanted: MapShape) -> Decision {
    if pinned == wanted {
        return Decision::Reuse;
    }
    let same_entries = pinned.map_type == wanted.map_type
        && pinned.key_size == wanted.key_size
        && pinned.value_size == wanted.value_size
        && pinned.flags == wanted.flags;
    if same_entries {
        return Decision::Migrate;
    }
    Decision::Refuse(format!(
        "pinned map {name} ({pinned}) does not fit this version ({wanted}); its entries cannot be carried over: \
         remove the pin directory's maps (traffic stops until pods are re-added) or run the matching version"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(max_entries: u32) -> MapShape {
        MapShape { map_type: 6, key_size: 4, value_size: 8, max_entries, flags: 0 }
    }

    #[test]
    fn table() {
        assert_eq!(decide("DROPS", shape(6), shape(6)), Decision::Reuse);
        // A new drop reason: the array grew.
        assert_eq!(decide("DROPS", shape(6), shape(9)), Decision::Migrate);
        assert_eq!(decide("ENDPOINTS", shape(4096), shape(2048)), Decision::Migrate);
        for other in [
            MapShape { value_size: 16, ..shape(6) },
            MapShape { key_size: 8, ..shape(6) },
            MapShape { map_type: 2, ..shape(6) },
            MapShape { flags: 1, ..shape(6) },
        ] {
            match decide("NODE_CONFIG", other, shape(6)) {
                Decision::Refuse(why) => {
                    assert!(why.contains("NODE_CONFIG") && why.contains(&other.to_string()), "{why}");
                    assert!(why.contains(&shape(6).to_string()), "{why}");
                }
                d => panic!("{other}: {d:?}"),
            }
        }
    }
}
