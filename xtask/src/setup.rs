//! `cargo xtask setup`: everything sluice needs on a fresh Debian 12
//! machine, installed only from Debian's packages and crates.io.
//! Idempotent: each step checks first and says what it skips.
use std::process::Command;

use anyhow::{Context, Result};

use crate::shell::{self, output, require_root};

/// Debian packages: the eBPF toolchain (rustc 1.96 with std sources and
/// LLVM 22 for bpf-linker), and the tools the tests and lab use.
pub const DEBIAN_PACKAGES: &[&str] = &[
    // eBPF toolchain
    "rustc-web",
    "cargo-web",
    "rust-web-src",
    "llvm-22-dev",
    // networking and test tools
    "iproute2",
    "iputils-ping",
    "tcpdump",
    "bpftool",
    "socat",
    "iptables",
    "nftables",
    "conntrack",
    "procps",
    // CNI chaining and real-runtime tests
    "containernetworking-plugins",
    "containerd",
    "runc",
    "busybox-static",
    // benchmarks
    "iperf3",
    // metrics: a real Prometheus scrapes the lab agents
    "prometheus",
];

pub const BPF_LINKER_VERSION: &str = "0.13.0";
pub const LLVM_BIN: &str = "/usr/lib/llvm-22/bin";

pub fn run() -> Result<()> {
    require_root("cargo xtask setup")?;
    install_debian_packages()?;
    install_bpf_linker()?;
    install_python_tools()?;
    mount_bpffs()?;
    eprintln!("setup: done");
    Ok(())
}

/// Where the agent pins (its default `--bpffs`).
pub const BPFFS: &str = "/sys/fs/bpf";

/// The host's bpffs at /sys/fs/bpf, as systemd mounts it at boot on every
/// Kubernetes node; a machine booted without it (some VMs, minimal init)
/// gets it here. The agent itself refuses to start without it.
fn mount_bpffs() -> Result<()> {
    let fs_type = output(Command::new("stat").args(["-f", "-c", "%T", BPFFS])).unwrap_or_default();
    if fs_type.trim() == "bpf_fs" {
        eprintln!("setup: {BPFFS} is a bpffs, skipping");
        return Ok(());
    }
    eprintln!("setup: mounting the host's bpffs at {BPFFS}");
    std::fs::create_dir_all(BPFFS).with_context(|| format!("create {BPFFS}"))?;
    shell::run(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]))
}

fn is_installed(pkg: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
        .map(|s| s.contains("install ok installed"))
        .unwrap_or(false)
}

fn install_debian_packages() -> Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES.iter().copied().filter(|p| !is_installed(p)).collect();
    if missing.is_empty() {
        eprintln!("setup: Debian packages present ({} checked), skipping", DEBIAN_PACKAGES.len());
        return Ok(());
    }
    eprintln!("setup: installing Debian packages: {}", missing.join(" "));
    shell::run(Command::new("apt-get").arg("update"))?;
    shell::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["-o", "DPkg::Lock::Timeout=600", "install", "-y", "--no-install-recommends"])
            .args(&missing),
    )
}

pub fn bpf_linker_path() -> Option<std::path::PathBuf> {
    let home = std::env::var_os("HOME").map(std::path::PathBuf::from)?;
    let p = home.join(".cargo/bin/bpf-linker");
    p.exists().then_some(p)
}

fn install_bpf_linker() -> Result<()> {
    if let Some(p) = bpf_linker_path() {
        let v = output(Command::new(&p).arg("--version")).unwrap_or_default();
        if v.contains(BPF_LINKER_VERSION) {
            eprintln!("setup: bpf-linker {BPF_LINKER_VERSION} present, skipping");
            return Ok(());
        }
    }
    eprintln!("setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about a minute)");
    let path = format!("{LLVM_BIN}:{}", std::env::var("PATH").unwrap_or_default());
    shell::run(
        Command::new("cargo")
            .env("PATH", path)
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
            .args(["--no-default-features", "--features", "llvm-22"]),
    )
    .context("install bpf-linker")
}

/// PyPI tools the tests use, in a virtualenv under target/ (pinned).
pub const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.33.0";
/// Draws the benchmark chart.
pub const MATPLOTLIB: &str = "matplotlib==3.9.2";

pub fn venv_dir() -> std::path::PathBuf {
    crate::repo_root().join("target/tools/venv")
}

fn install_python_tools() -> Result<()> {
    let venv = venv_dir();
    let marker = venv.join(format!(".installed-{KUBERNETES_VALIDATE}-{MATPLOTLIB}"));
    if marker.exists() {
        eprintln!("setup: {KUBERNETES_VALIDATE} and {MATPLOTLIB} present, skipping");
        return Ok(());
    }
    eprintln!("setup: installing {KUBERNETES_VALIDATE} and {MATPLOTLIB} into {}", venv.display());
    shell::run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    shell::run(Command::new(venv.join("bin/pip")).args(["install", "--quiet", KUBERNETES_VALIDATE, MATPLOTLIB]))?;
    std::fs::write(&marker, b"")?;
    Ok(())
}
