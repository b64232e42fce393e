//! Node preparation that needs more than the agent's capabilities: each
//! step is one privileged init container of `deploy/sluice.yaml`, which does
//! it and exits, so the agent itself runs unprivileged. Every step is
//! idempotent (a pod restart runs them again) and says what it did.
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nix::mount::{mount, MsFlags};
use sluice_node::datapath::bpffs;

use crate::{
    daemon::{port_ownership, sysctl},
    port_ownership::ranges::{self, PortRange},
};

/// Mount bpffs at `path` unless one is already there; a new mount is made
/// shared, so (through the init container's Bidirectional volume) it is the
/// host's and every later HostToContainer view sees it. An existing bpffs
/// is left as it is.
pub fn mount_bpffs(path: &Path) -> Result<String> {
    std::fs::create_dir_all(path).with_context(|| format!("create {}", path.display()))?;
    if bpffs::is_bpffs(path)? {
        return Ok(format!("bpffs already mounted at {}", path.display()));
    }
    mount(Some("bpffs"), path, Some("bpf"), MsFlags::empty(), None::<&str>)
        .with_context(|| format!("mount bpffs at {} (needs CAP_SYS_ADMIN)", path.display()))?;
    mount(None::<&str>, path, None::<&str>, MsFlags::MS_SHARED, None::<&str>)
        .with_context(|| format!("make {} shared", path.display()))?;
    if !bpffs::is_bpffs(path)? {
        anyhow::bail!("mounted bpffs at {} but it does not show as bpffs", path.display());
    }
    Ok(format!("mounted bpffs at {} (shared)", path.display()))
}

/// Make `path` (the host's /run/netns, seen through a Bidirectional volume
/// of its parent) a mount point of its own with shared propagation, as
/// `ip netns add` does: bound onto itself, recursively so namespaces already
/// mounted in it stay visible, then shared. Already a mount point: only
/// made shared (again).
pub fn share_netns_dir(path: &Path) -> Result<String> {
    std::fs::create_dir_all(path).with_context(|| format!("create {}", path.display()))?;
    let path = std::fs::canonicalize(path)?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").context("read /proc/self/mountinfo")?;
    let bound = if is_mount_point(&mountinfo, &path) {
        false
    } else {
        mount(Some(&path), &path, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
            .with_context(|| format!("bind {} onto itself (needs CAP_SYS_ADMIN)", path.display()))?;
        true
    };
    mount(None::<&str>, &path, None::<&str>, MsFlags::MS_SHARED | MsFlags::MS_REC, None::<&str>)
        .with_context(|| format!("make {} shared", path.display()))?;
    Ok(if bound {
        format!("{} is now a shared mount point", path.display())
    } else {
        format!("{} was a mount point already; made shared", path.display())
    })
}

/// `net.ipv4.ip_forward=1` in this network namespace (the node's: host
/// network). Inside an unprivileged container /proc/sys is read-only, so
/// the agent only checks it.
pub fn ip_forward() -> Result<String> {
    sysctl::ensure_ip_forward()?;
    Ok("net.ipv4.ip_forward=1".to_string())
}

/// With Services in eBPF, reserve the NodePort range in
/// `net.ipv4.ip_local_reserved_ports` of this network namespace (the
/// node's), recording what sluice added under `data_dir`; without, give
/// back what an earlier run added. The agent does the same at start, but
/// in an unprivileged container its /proc/sys is read-only.
pub fn reserve_ports(data_dir: &Path, kube_proxy_replacement: bool, node_port_range: PortRange) -> Result<String> {
    if !kube_proxy_replacement {
        let released = port_ownership::release(data_dir)?;
        return Ok(if released.is_empty() {
            "no reserved ports to give back (kube-proxy-replacement is off)".to_string()
        } else {
            format!("reserved ports given back: {released}")
        });
    }
    let added = port_ownership::reserve(data_dir, &ranges::owned(node_port_range, &[]))?;
    Ok(format!("NodePort range {node_port_range} reserved (sluice added: {added})"))
}

/// Is `path` the mount point of some mount in `mountinfo` (the format of
/// /proc/self/mountinfo: the fifth field, octal escapes for spaces)?
fn is_mount_point(mountinfo: &str, path: &Path) -> bool {
    mountinfo.lines().filter_map(|l| l.split(' ').nth(4)).any(|p| PathBuf::from(unescape(p)) == path)
}

fn unescape(field: &str) -> String {
    let mut out = String::new();
    let mut chars = field.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let code: String = chars.by_ref().take(3).collect();
            match u8::from_str_radix(&code, 8) {
                Ok(b) => out.push(b as char),
                Err(_) => {
                    out.push('\\');
                    out.push_str(&code);
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_mount_points() {
        let info = "22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
                    30 22 254:0 /run/netns /run/netns rw,relatime shared:5 - ext4 /dev/vda rw\n\
                    31 22 0:40 / /mnt/a\\040b rw - tmpfs t rw\n";
        assert!(is_mount_point(info, Path::new("/run/netns")));
        assert!(is_mount_point(info, Path::new("/mnt/a b")));
        assert!(!is_mount_point(info, Path::new("/run")));
    }
}
