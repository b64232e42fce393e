//! Shared pieces of sluice's end-to-end tests: namespace and pin-directory
//! guards that clean up on drop (also when a test panics), names unique per
//! process and counter, and helpers to run commands inside a namespace.
//!
//! Namespaces are entered with `nsenter --net` (never `ip netns exec`, which
//! remounts /sys and hides the root bpffs).
use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{bail, Context, Result};

pub mod apiserver;
pub mod bench;
pub mod capture;
pub mod cgroups;
pub mod cluster;
pub mod containerd;
pub mod cri;
pub mod kube_proxy;
pub mod kubelet;
pub mod lab;
pub mod netpol;
pub mod node_state;
pub mod oci;
pub mod process;
pub mod prog_test;
pub mod runtime;
pub mod services;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A readiness wait's limit, stretched by `SLUICE_TEST_PATIENCE` (a whole
/// factor; `cargo xtask test` sets it in the guest kernels, where TCG makes
/// an agent's start take 20-30 s). Only limits stretch: a wait still ends
/// as soon as its condition holds.
pub fn patience(limit: std::time::Duration) -> std::time::Duration {
    limit * patience_factor(std::env::var("SLUICE_TEST_PATIENCE").ok().as_deref())
}

/// Poll `ready` every 50 ms until it holds; an error naming `what` when it
/// still does not after `limit` (stretched by `SLUICE_TEST_PATIENCE`).
pub fn wait_until(limit: std::time::Duration, what: &str, mut ready: impl FnMut() -> bool) -> anyhow::Result<()> {
    let limit = patience(limit);
    let start = std::time::Instant::now();
    while !ready() {
        if start.elapsed() > limit {
            anyhow::bail!("waited {limit:?} for: {what}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Ok(())
}

/// A count that must outlast readiness waits (a flow spanning agent
/// restarts), stretched by `SLUICE_TEST_PATIENCE` as [`patience`] stretches
/// limits.
pub fn patience_count(count: u32) -> u32 {
    count * patience_factor(std::env::var("SLUICE_TEST_PATIENCE").ok().as_deref())
}

/// The factor from `SLUICE_TEST_PATIENCE`'s value (unset: 1). Anything but
/// a positive whole number is a mistake to stop at, not to guess around.
pub fn patience_factor(value: Option<&str>) -> u32 {
    match value {
        None => 1,
        Some(v) => match v.trim().parse::<u32>() {
            Ok(n) if n >= 1 => n,
            _ => panic!("SLUICE_TEST_PATIENCE={v:?}: expected a whole factor of at least 1"),
        },
    }
}

/// A short name unique to this process and call: `<prefix><pid>x<n>`.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}x{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// Fail loudly, naming what is missing, when not root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!("this end-to-end test needs root (network namespaces, eBPF): run `cargo xtask test` as root");
    }
}

fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Run, fail with stderr on a non-zero exit, return stdout.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("start {}", describe(cmd)))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}{}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Run and return the raw output, whatever the exit status.
pub fn try_run(cmd: &mut Command) -> Result<Output> {
    cmd.stdin(Stdio::null()).output().with_context(|| format!("start {}", describe(cmd)))
}

pub fn sh(program: &str, args: &[&str]) -> Result<String> {
    run(Command::new(program).args(args))
}

/// A network namespace under /run/netns, deleted on drop. Created by
/// `lab::add_netns`, the same as every namespace of the lab.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// A new namespace named `<prefix><unique>`.
    pub fn new(prefix: &str) -> Result<Self> {
        let name = unique(prefix);
        lab::add_netns(&name)?;
        Ok(Self { name })
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// A command that runs inside this namespace (network only).
    pub fn cmd(&self, args: &[&str]) -> Command {
        lab::ns_cmd(&self.name, args)
    }

    pub fn exec(&self, args: &[&str]) -> Result<String> {
        run(&mut self.cmd(args))
    }

    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec(&["sysctl", "-qw", &format!("{key}={value}")]).map(|_| ())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        lab::del_netns(&self.name);
    }
}

/// A bpffs pin directory of this test's own, removed (with everything
/// pinned in it, which detaches pinned links) on drop.
pub struct PinDirGuard {
    pub path: PathBuf,
}

impl PinDirGuard {
    pub fn new() -> Result<Self> {
        sluice_node::datapath::bpffs::ensure_mounted(Path::new("/sys/fs/bpf"))?;
        Ok(Self { path: PathBuf::from("/sys/fs/bpf").join(unique("sluice-test-")) })
    }
}

impl Drop for PinDirGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A workspace binary built by `cargo build --workspace --bins`.
pub fn bin(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug").join(name);
    assert!(p.exists(), "{} not built: run `cargo xtask test` (it builds the binaries first)", p.display());
    p
}

/// The CNI plugin built with the `fault-injection` feature.
pub fn faulty_cni_bin() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/fault/debug/sluice-cni");
    assert!(p.exists(), "{} not built: run `cargo xtask test` (it builds the fault-injection plugin)", p.display());
    p
}

/// `ip -j link show dev <ifname>` inside `ns` (sysfs would show the root
/// namespace's interfaces: nsenter --net does not remount /sys).
pub fn link_json(ns: &Netns, ifname: &str) -> Result<serde_json::Value> {
    let out = ns.exec(&["ip", "-j", "link", "show", "dev", ifname])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    v.get(0).cloned().with_context(|| format!("no link {ifname} in {}", ns.name))
}

/// The ifindex of `ifname` inside `ns`.
pub fn ifindex(ns: &Netns, ifname: &str) -> Result<u32> {
    let v = link_json(ns, ifname)?;
    Ok(v["ifindex"].as_u64().context("ifindex")? as u32)
}

/// The MAC address of `ifname` inside `ns`.
pub fn mac(ns: &Netns, ifname: &str) -> Result<String> {
    let v = link_json(ns, ifname)?;
    Ok(v["address"].as_str().context("address")?.to_string())
}

/// Count of packets `ping` saw answered, from its summary line.
pub fn ping_received(out: &str) -> Option<u32> {
    let line = out.lines().find(|l| l.contains("packets transmitted"))?;
    let part = line.split(',').nth(1)?;
    part.split_whitespace().next()?.parse().ok()
}

/// `bpftool -j <args>`, parsed.
pub fn bpftool_json(args: &[&str]) -> Result<serde_json::Value> {
    let mut all = vec!["-j"];
    all.extend(args);
    Ok(serde_json::from_str(&sh("bpftool", &all)?)?)
}

/// (link id, program id) of a pinned link: an in-place update keeps the
/// first and changes the second.
pub fn link_ids(pin: &Path) -> Result<(u64, u64)> {
    let v = bpftool_json(&["link", "show", "pinned", &pin.display().to_string()])?;
    Ok((v["id"].as_u64().context("link id")?, v["prog_id"].as_u64().context("prog id")?))
}

#[cfg(test)]
mod patience_tests {
    use super::patience_factor;

    #[test]
    fn patience_is_a_whole_factor_and_nonsense_stops_the_run() {
        assert_eq!(patience_factor(None), 1);
        assert_eq!(patience_factor(Some("6")), 6);
        for bad in ["0", "1.5", "slow", ""] {
            assert!(std::panic::catch_unwind(|| patience_factor(Some(bad))).is_err(), "{bad:?}");
        }
    }
}
