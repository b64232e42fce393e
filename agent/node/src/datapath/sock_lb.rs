//! Attaching the socket load balancer (cgroup sock_addr programs) to the
//! node's cgroup v2 root, and finding that root.
//!
//! The links are pinned (`links/<program>__cgroup`), so Services keep
//! working while no agent runs; a restarted agent swaps each pinned link's
//! program in place (`BPF_LINK_UPDATE`), never detaching first.
use std::{fs, os::fd::AsFd, path::Path};

use anyhow::{Context, Result};
use aya::programs::{links::FdLink, CgroupAttachMode, CgroupSockAddr};
use sluice_common::maps::programs;

use super::{bpf_sys, links::ignore_not_found, pins::PinDir};

/// The cgroup programs, in attach order: each IPv4 program beside its IPv6
/// twin (v4-mapped cluster IPs and IPv6 Services; `sendmsg6` only for the
/// latter: see `ebpf/src/sock_lb.rs`). An agent upgraded from a version
/// without a twin finds only the others' links pinned: those are swapped in
/// place, the twin attached anew.
pub const SOCK_PROGRAMS: [&str; 8] = [
    programs::SOCK_CONNECT,
    programs::SOCK_CONNECT6,
    programs::SOCK_SENDMSG,
    programs::SOCK_SENDMSG6,
    programs::SOCK_RECVMSG,
    programs::SOCK_RECVMSG6,
    programs::SOCK_GETPEERNAME,
    programs::SOCK_GETPEERNAME6,
];

/// The "interface" part of the cgroup links' pin names.
pub const CGROUP_LINK: &str = "cgroup";

/// Attach `prog` to the cgroup at `cgroup` and pin the link at `pin`, or
/// swap the program of an already pinned link.
pub fn attach_or_update(prog: &mut CgroupSockAddr, name: &str, cgroup: &Path, pin: &Path) -> Result<()> {
    let prog_fd = prog.fd().with_context(|| format!("program {name} not loaded"))?;
    if pin.exists() {
        let updated = bpf_sys::obj_get(pin).and_then(|link| bpf_sys::link_update(link.as_fd(), prog_fd.as_fd()));
        match updated {
            Ok(()) => return Ok(()),
            // The cgroup was removed (the link is defunct): attaching anew
            // loses nothing.
            Err(e) => {
                tracing::warn!(pin = %pin.display(), error = %e, "pinned cgroup link unusable; attaching anew");
                fs::remove_file(pin).or_else(ignore_not_found)?;
            }
        }
    }
    let dir = fs::File::open(cgroup).with_context(|| format!("open cgroup {}", cgroup.display()))?;
    // A bpf_link: several programs may sit on one cgroup; ours neither
    // replaces nor blocks anyone else's.
    let id = prog
        .attach(&dir, CgroupAttachMode::Single)
        .with_context(|| format!("attach {name} to cgroup {}", cgroup.display()))?;
    let link = prog.take_link(id)?;
    let fd_link: FdLink = link.try_into().context("cgroup link as fd link")?;
    fd_link.pin(pin).with_context(|| format!("pin link at {}", pin.display()))?;
    Ok(())
}

/// Detach the socket load balancer: unpin its links (the pin holds the
/// last reference).
pub fn detach(pins: &PinDir) -> Result<usize> {
    let mut n = 0;
    for name in SOCK_PROGRAMS {
        let pin = pins.link(name, CGROUP_LINK);
        if pin.exists() {
            n += 1;
        }
        fs::remove_file(&pin).or_else(ignore_not_found).with_context(|| format!("unpin {}", pin.display()))?;
    }
    Ok(n)
}

/// Are the socket programs attached (their links pinned)?
pub fn attached(pins: &PinDir) -> bool {
    SOCK_PROGRAMS.iter().all(|p| pins.link(p, CGROUP_LINK).exists())
}

/// Is `dir` in a cgroup v2 hierarchy (statfs magic `CGROUP2_SUPER_MAGIC`)?
pub fn is_cgroup2(dir: &Path) -> bool {
    nix::sys::statfs::statfs(dir).is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
}

/// Is `dir` the root of its hierarchy? Only non-root cgroups have a
/// `cgroup.type` file. Attached below the root, the programs miss every
/// process outside that subtree, host-network ones included.
pub fn is_root_cgroup(dir: &Path) -> bool {
    !dir.join("cgroup.type").exists()
}

/// The first cgroup2 mount in `/proc/self/mountinfo` text: the host's
/// unified hierarchy (`/sys/fs/cgroup` on systemd hosts,
/// `/sys/fs/cgroup/unified` on hybrid ones).
pub fn cgroup2_mount(mountinfo: &str) -> Option<&str> {
    mountinfo.lines().find_map(|line| {
        // `... mount-point options [optional fields] - fstype source opts`
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        (fstype == "cgroup2").then(|| left.split_whitespace().nth(4)).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_unified_hierarchy_on_hybrid_and_pure_hosts() {
        let hybrid = "24 31 0:22 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755\n\
                      25 24 0:23 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw,nsdelegate\n\
                      26 24 0:24 / /sys/fs/cgroup/systemd rw shared:11 - cgroup cgroup rw,name=systemd\n";
        assert_eq!(cgroup2_mount(hybrid), Some("/sys/fs/cgroup/unified"));
        let pure = "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount(pure), Some("/sys/fs/cgroup"));
        assert_eq!(cgroup2_mount("26 24 0:24 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"), None);
    }
}
