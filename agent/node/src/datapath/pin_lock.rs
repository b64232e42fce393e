//! One lock on a node's pin directory, between the agent replacing a pinned
//! map (a migration: the entries copied into a new map, then the new map
//! renamed over the pin) and every other process writing pinned maps (the
//! CNI plugin inserting and removing endpoint entries). Without it, an
//! entry written into the old map after its copy is lost with the old map:
//! an ADD racing an upgrade ends with a pod and no entry.
//!
//! `flock` on the pin root directory (bpffs holds no regular files; a
//! directory can be locked like any file): writers share it, a migration
//! takes it alone. Released when the guard drops (or the process dies).
use std::{fs::File, os::fd::AsRawFd};

use anyhow::{Context, Result};

use super::pins::PinDir;

#[must_use = "the lock is released when the guard drops"]
pub struct PinLock {
    _dir: File,
}

impl PinLock {
    /// For a process writing pinned maps: many at once, never during a migration.
    pub fn shared(pins: &PinDir) -> Result<Self> {
        Self::take(pins, libc::LOCK_SH)
    }

    /// For a migration: no writer meanwhile (waits for those running).
    pub fn exclusive(pins: &PinDir) -> Result<Self> {
        Self::take(pins, libc::LOCK_EX)
    }

    fn take(pins: &PinDir, how: libc::c_int) -> Result<Self> {
        let dir = File::open(pins.root()).with_context(|| format!("open pin directory {}", pins.root().display()))?;
        loop {
            // SAFETY: flock on an fd we own; released when the file closes.
            if unsafe { libc::flock(dir.as_raw_fd(), how) } == 0 {
                return Ok(Self { _dir: dir });
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e).with_context(|| format!("lock pin directory {}", pins.root().display()));
            }
        }
    }
}
