//! cgroup v2 directories for lab nodes: the socket load balancer attaches
//! to a node's cgroup, and every process started "on" that node (its pods'
//! processes, its host clients) is placed in it, so one node's programs
//! never see another node's sockets, nor the machine's own.
use std::{
    fs,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

/// The machine's cgroup2 mount (`/sys/fs/cgroup/unified` on hybrid hosts).
pub fn cgroup2_mount() -> Result<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    mountinfo
        .lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            (right.split_whitespace().next()? == "cgroup2").then(|| left.split_whitespace().nth(4)).flatten()
        })
        .map(PathBuf::from)
        .context("no cgroup2 mount on this machine")
}

/// `cmd` starts inside cgroup `dir` (it moves itself there before exec,
/// so nothing it does runs outside).
pub fn place(cmd: &mut Command, dir: &Path) {
    let procs = dir.join("cgroup.procs");
    // SAFETY: only async-signal-safe work between fork and exec: an open,
    // a write and a close through std's thin wrappers.
    unsafe {
        cmd.pre_exec(move || fs::write(&procs, b"0"));
    }
}

/// Kill every process in `dir` (and below) and remove the directories.
pub fn remove(dir: &Path) {
    if !dir.exists() {
        return;
    }
    let mut dirs = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < dirs.len() {
        for e in fs::read_dir(&dirs[i]).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(e.path());
            }
        }
        i += 1;
    }
    for d in dirs.iter().rev() {
        let start = Instant::now();
        loop {
            let procs = fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
            if procs.trim().is_empty() {
                break;
            }
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
            if start.elapsed() > Duration::from_secs(5) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = fs::remove_dir(d);
    }
}
