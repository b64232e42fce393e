//! Installing the CNI plugin binary for the runtime (the DaemonSet's init
//! container, or `run --cni-bin-dir`): copied next to the runtime's other
//! plugins under its type name, atomically (temp file, then rename), so a
//! runtime never executes a half-written binary.
use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use sluice_node::paths::PLUGIN_TYPE;

/// The `sluice-cni` binary shipped beside this agent binary.
pub fn bundled_plugin() -> Result<PathBuf> {
    let me = std::env::current_exe().context("find own executable")?;
    let p = me.with_file_name("sluice-cni");
    if !p.exists() {
        bail!("{} not found beside the agent", p.display());
    }
    Ok(p)
}

pub fn install_plugin(src: &Path, bin_dir: &Path) -> Result<PathBuf> {
    fs::create_dir_all(bin_dir).with_context(|| format!("create {}", bin_dir.display()))?;
    let dest = bin_dir.join(PLUGIN_TYPE);
    let tmp = bin_dir.join(format!(".{PLUGIN_TYPE}.tmp"));
    fs::copy(src, &tmp).with_context(|| format!("copy {} to {}", src.display(), tmp.display()))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))?;
    fs::rename(&tmp, &dest).with_context(|| format!("rename into {}", dest.display()))?;
    Ok(dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installs_executable_atomically() {
        let dir = std::env::temp_dir().join(format!("sluice-install-test-{}", std::process::id()));
        let src = dir.join("src-bin");
        fs::create_dir_all(&dir).unwrap();
        fs::write(&src, b"#!/bin/sh\n").unwrap();
        let dest = install_plugin(&src, &dir.join("bin")).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"#!/bin/sh\n");
        assert_eq!(fs::metadata(&dest).unwrap().permissions().mode() & 0o777, 0o755);
        assert!(!dir.join("bin/.sluice.tmp").exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
