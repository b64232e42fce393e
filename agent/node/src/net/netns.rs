//! Network namespaces, entered one thread at a time.
//!
//! `setns(CLONE_NEWNET)` changes only the calling thread, and a netlink
//! socket stays in the namespace it was created in. So work in another
//! namespace either opens its socket there and switches straight back
//! (`netlink_in`), or runs on a thread of its own (`run_in`). We never enter
//! the mount namespace: pins stay on the root bpffs (`ip netns exec` would
//! remount /sys and hide it).
use std::{fs::File, os::fd::AsFd, path::Path};

use anyhow::{Context, Result};
use nix::sched::{setns, CloneFlags};

use crate::net::netlink::Netlink;

/// A netns entered by this thread, left again on drop.
struct Entered {
    original: File,
}

impl Entered {
    fn enter(target: &Path) -> Result<Self> {
        let original = File::open("/proc/thread-self/ns/net").context("open own network namespace")?;
        let ns = File::open(target).with_context(|| format!("open network namespace {}", target.display()))?;
        setns(ns.as_fd(), CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("enter network namespace {}", target.display()))?;
        Ok(Self { original })
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        // Failing to go back would leave this thread in the wrong namespace;
        // nothing sensible can continue.
        if let Err(e) = setns(self.original.as_fd(), CloneFlags::CLONE_NEWNET) {
            panic!("cannot return to the original network namespace: {e}");
        }
    }
}

/// A netlink connection inside the namespace at `path` (e.g. a pod's
/// `/proc/<pid>/ns/net` or `/run/netns/<name>`).
pub fn netlink_in(path: &Path) -> Result<Netlink> {
    let _entered = Entered::enter(path)?;
    Netlink::open()
}

/// Run `f` on a fresh thread inside the namespace at `path`.
pub fn run_in<T: Send + 'static>(path: &Path, f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        let _entered = Entered::enter(&path)?;
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread in network namespace panicked"))?
}
