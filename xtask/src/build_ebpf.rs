//! `cargo xtask build-ebpf`: the eBPF crate, built for `bpfel-unknown-none`
//! with Debian's rustc (core rebuilt from `rust-web-src`) and linked by
//! bpf-linker. The object lands in `target/ebpf/sluice.bpf.o`, where the
//! agent's build script embeds it.
use std::{path::PathBuf, process::Command};

use anyhow::{bail, Context, Result};

use crate::{repo_root, setup, shell};

const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_CARGO: &str = "/usr/bin/cargo";
const RUST_SRC: &str = "/usr/lib/rustlib/src/rust/library/core";

/// Every piece of the toolchain, with what installs it.
fn check_toolchain() -> Result<PathBuf> {
    let mut missing = Vec::new();
    for (path, pkg) in [
        (DEBIAN_RUSTC, "rustc-web"),
        (DEBIAN_CARGO, "cargo-web"),
        (RUST_SRC, "rust-web-src"),
        (setup::LLVM_BIN, "llvm-22-dev"),
    ] {
        if !std::path::Path::new(path).exists() {
            missing.push(format!("{path} (Debian package {pkg})"));
        }
    }
    let linker = setup::bpf_linker_path();
    if linker.is_none() {
        missing.push(format!("bpf-linker {} in ~/.cargo/bin", setup::BPF_LINKER_VERSION));
    }
    if !missing.is_empty() {
        bail!(
            "the eBPF toolchain is incomplete; missing:\n  {}\nrun `cargo xtask setup` (as root) to install it",
            missing.join("\n  ")
        );
    }
    Ok(linker.expect("checked above"))
}

pub fn run() -> Result<PathBuf> {
    let linker = check_toolchain()?;
    let root = repo_root();
    let target_dir = root.join("target/ebpf-build");
    let linker_dir = linker.parent().expect("bpf-linker has a directory");
    let path = format!("{}:{}:{}", setup::LLVM_BIN, linker_dir.display(), std::env::var("PATH").unwrap_or_default());
    let mut cmd = Command::new(DEBIAN_CARGO);
    // Nothing of the outer (rustup, host) cargo may leak into this build.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("CARGO") || k.starts_with("RUSTUP") || k == "RUSTC" || k == "RUSTC_WRAPPER" {
            cmd.env_remove(&k);
        }
    }
    cmd.current_dir(root.join("ebpf"))
        .env("PATH", path)
        .env("RUSTC", DEBIAN_RUSTC)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("RUSTFLAGS", "-C debuginfo=2 -C link-arg=--btf")
        .args(["build", "--release", "--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&target_dir);
    shell::run(&mut cmd).context("build the eBPF crate")?;
    let built = target_dir.join("bpfel-unknown-none/release/sluice");
    let dest_dir = root.join("target/ebpf");
    std::fs::create_dir_all(&dest_dir)?;
    let dest = dest_dir.join("sluice.bpf.o");
    // Copy only when changed, so the agent is not rebuilt for nothing.
    let new = std::fs::read(&built).with_context(|| format!("read {}", built.display()))?;
    if std::fs::read(&dest).ok().as_deref() != Some(&new[..]) {
        std::fs::write(&dest, &new)?;
    }
    eprintln!("build-ebpf: {} ({} bytes)", dest.display(), new.len());
    Ok(dest)
}
