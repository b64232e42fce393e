//! Where sluice pins things in bpffs. One directory per node:
//!
//! ```text
//! <root>/v<LAYOUT_VERSION>/maps/<MAP NAME>      maps (reused across restarts)
//! <root>/v<LAYOUT_VERSION>/progs/<program>      programs the CNI plugin attaches
//! <root>/v<LAYOUT_VERSION>/links/<program>__<if> TCX links (keep programs attached
//!                                                while no agent runs)
//! <root>/v<LAYOUT_VERSION>/monitors/<slot>      directories `monitor` locks
//!                                                (flock) to hold a slot
//! ```
//! The layout version is in the path because aya reuses a pinned map without
//! checking its layout (see `sluice_common::maps::LAYOUT_VERSION`).
use std::path::{Path, PathBuf};

use sluice_common::maps::LAYOUT_VERSION;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinDir {
    root: PathBuf,
}

impl PinDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The directory given by the user (holds the versioned tree).
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn versioned(&self) -> PathBuf {
        self.root.join(format!("v{LAYOUT_VERSION}"))
    }

    pub fn maps_dir(&self) -> PathBuf {
        self.versioned().join("maps")
    }

    pub fn progs_dir(&self) -> PathBuf {
        self.versioned().join("progs")
    }

    pub fn links_dir(&self) -> PathBuf {
        self.versioned().join("links")
    }

    /// Where running monitors hold their slots (`monitor`): the directory
    /// itself is locked while one changes `MONITORS`.
    pub fn monitors_dir(&self) -> PathBuf {
        self.versioned().join("monitors")
    }

    /// The directory a monitor holding `slot` keeps locked.
    pub fn monitor_slot(&self, slot: u32) -> PathBuf {
        self.monitors_dir().join(slot.to_string())
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }

    pub fn prog(&self, name: &str) -> PathBuf {
        self.progs_dir().join(name)
    }

    /// The pin of `program`'s link on interface `ifname`.
    pub fn link(&self, program: &str, ifname: &str) -> PathBuf {
        self.links_dir().join(link_pin_name(program, ifname))
    }
}

/// bpffs refuses names with a dot (`BPF_OBJ_PIN` fails with EPERM), and
/// interface names may have one (VLANs: `eth0.100`).
pub fn link_pin_name(program: &str, ifname: &str) -> String {
    let ifname: String = ifname.chars().map(|c| if c == '.' { '_' } else { c }).collect();
    format!("{program}__{ifname}")
}

/// The interface part of a link pin name, if it belongs to `program`.
pub fn link_pin_ifname<'a>(program: &str, pin_name: &'a str) -> Option<&'a str> {
    pin_name.strip_prefix(program)?.strip_prefix("__")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let p = PinDir::new("/sys/fs/bpf/sluice/node1");
        assert_eq!(p.map("ENDPOINTS"), Path::new("/sys/fs/bpf/sluice/node1/v1/maps/ENDPOINTS"));
        assert_eq!(p.prog("from_pod"), Path::new("/sys/fs/bpf/sluice/node1/v1/progs/from_pod"));
        assert_eq!(
            p.link("from_uplink", "eth0.100"),
            Path::new("/sys/fs/bpf/sluice/node1/v1/links/from_uplink__eth0_100")
        );
    }

    #[test]
    fn link_names_round_trip() {
        let name = link_pin_name("from_pod", "slc1234abcd");
        assert_eq!(link_pin_ifname("from_pod", &name), Some("slc1234abcd"));
        assert_eq!(link_pin_ifname("from_uplink", &name), None);
        assert_eq!(link_pin_ifname("from_po", &name), None);
    }
}
