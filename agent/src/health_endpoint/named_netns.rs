//! A named network namespace under /run/netns, as `ip netns add` makes
//! one: a namespace file bind-mounted there, so it outlives the thread
//! that made it and any process in it.
use std::{
    fs::File,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use nix::{
    mount::{mount, MsFlags},
    sched::{unshare, CloneFlags},
};

/// NSFS_MAGIC: a bind-mounted namespace file.
pub fn is_netns_file(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).map(|s| s.filesystem_type().0 == 0x6e736673).unwrap_or(false)
}

/// A named network namespace under /run/netns (as `ip netns add` makes).
pub fn ensure_named_netns(name: &str) -> Result<PathBuf> {
    let dir = Path::new("/run/netns");
    std::fs::create_dir_all(dir)?;
    let path = dir.join(name);
    if is_netns_file(&path) {
        return Ok(path);
    }
    File::create(&path).with_context(|| format!("create {}", path.display()))?;
    let target = path.clone();
    std::thread::spawn(move || -> Result<()> {
        // This thread gets a new network namespace, pinned by a bind mount;
        // the thread then ends and the namespace stays.
        unshare(CloneFlags::CLONE_NEWNET).context("unshare network namespace")?;
        mount(Some("/proc/thread-self/ns/net"), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .with_context(|| format!("bind-mount namespace at {}", target.display()))?;
        Ok(())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("netns thread panicked"))??;
    Ok(path)
}
