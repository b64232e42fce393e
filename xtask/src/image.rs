//! `cargo xtask image`: sluice's container image as an OCI archive, built
//! without a daemon or registry: release binaries plus exactly the shared
//! libraries they load, copied from this Debian 12 host
//! (`sluice_tests::oci`). Load it with `ctr images import` or `podman load`.
use std::process::Command;

use anyhow::Result;
use sluice_tests::oci;

use crate::{build_ebpf, repo_root, shell};

pub fn run() -> Result<()> {
    build_ebpf::run()?;
    let root = repo_root();
    shell::run(Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())).current_dir(&root).args([
        "build",
        "--release",
        "-p",
        "sluice-agent",
        "-p",
        "sluice-cni",
        "--bins",
    ]))?;
    let work = root.join("target/image");
    let archive = oci::build_sluice_image(&root.join("target/release"), &work)?;
    println!("{} ({})", archive.display(), oci::SLUICE_IMAGE);
    println!("load it with: ctr -n k8s.io images import {}   (or: podman load -i ...)", archive.display());
    Ok(())
}
