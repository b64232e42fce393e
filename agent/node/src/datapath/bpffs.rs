//! Making sure a BPF filesystem is mounted where pins go.
use std::path::Path;

use anyhow::{bail, Context, Result};
use nix::{
    mount::{mount, MsFlags},
    sys::statfs::statfs,
};

/// `BPF_FS_MAGIC` from linux/magic.h.
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// Mount bpffs at `mount_point` unless one is already there.
pub fn ensure_mounted(mount_point: &Path) -> Result<()> {
    std::fs::create_dir_all(mount_point)
        .with_context(|| format!("create bpffs mount point {}", mount_point.display()))?;
    if is_bpffs(mount_point)? {
        return Ok(());
    }
    mount(Some("bpf"), mount_point, Some("bpf"), MsFlags::empty(), None::<&str>)
        .with_context(|| format!("mount bpffs at {} (needs root / CAP_SYS_ADMIN)", mount_point.display()))?;
    if !is_bpffs(mount_point)? {
        bail!("mounted bpffs at {} but it does not show as bpffs", mount_point.display());
    }
    Ok(())
}

pub fn is_bpffs(path: &Path) -> Result<bool> {
    let st = statfs(path).with_context(|| format!("statfs {}", path.display()))?;
    Ok(st.filesystem_type().0 as i64 == BPF_FS_MAGIC)
}
