//! Legacy tc attachment, for kernels without TCX (before 6.6): a `clsact`
//! qdisc on the device and one `cls_bpf` filter per hook in direct-action
//! mode, at sluice's own priority and handle (aya 0.14's netlink attach).
//!
//! What TCX gave, kept:
//! - Zero-loss restarts: a filter replaced at the same priority and handle
//!   is swapped in one step (`cls_bpf_change` replaces it in the RCU list),
//!   so no packet sees no program; removing and adding it again would leave
//!   a gap (`tests/tests/attach_tc.rs` shows both).
//! - Outliving the agent: a filter stays attached until its device or
//!   qdisc goes; nothing needs pinning to keep it.
//! - Knowing what a device carries: the filter's program is pinned where
//!   a TCX link would be (`links::pinned` tells the two apart), and
//!   `bpf_filters` reads back what the kernel really runs.
use std::io;

use anyhow::{Context, Result};
use aya::programs::{
    links::Link,
    tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
    SchedClassifier, TcAttachType,
};

/// sluice's filters: first on the hook (lowest number runs first).
pub const PRIORITY: u16 = 1;
/// A handle of its own at that priority, so a filter another tool put at
/// priority 1 (often handle 1) is never replaced.
pub const HANDLE: u32 = 0x51ce;

fn handle() -> TcHandle {
    TcHandle::from(HANDLE)
}

/// The OS error somewhere in `e`'s chain, if any.
pub fn errno(e: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<io::Error>() {
            if let Some(n) = io.raw_os_error() {
                return Some(n);
            }
        }
        if let Some(nl) = c.downcast_ref::<aya::sys::NetlinkError>() {
            if let Some(n) = nl.raw_os_error() {
                return Some(n);
            }
        }
        cause = c.source();
    }
    None
}

/// The `clsact` qdisc on `ifname` (one already there is fine).
pub fn ensure_clsact(ifname: &str) -> Result<()> {
    match tc::qdisc_add_clsact(ifname) {
        Ok(()) => Ok(()),
        Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("add clsact qdisc to {ifname}")),
    }
}

/// Attach `prog` on `ifname`'s `dir` hook at sluice's priority and handle;
/// a filter already there is replaced in place.
pub fn attach(prog: &mut SchedClassifier, program: &str, ifname: &str, dir: TcAttachType) -> Result<()> {
    ensure_clsact(ifname)?;
    let options = TcAttachOptions::Netlink(NlOptions { priority: PRIORITY, handle: handle(), classid: None });
    match prog.attach_with_options(ifname, dir, options) {
        Ok(id) => keep_attached(prog, id),
        Err(e) if errno(&e) == Some(libc::EEXIST) => replace(prog, program, ifname, dir),
        Err(e) => Err(e).with_context(|| format!("attach {program} to {ifname} {dir:?} with tc")),
    }
}

/// Replace the program of sluice's filter on `ifname`'s `dir` hook (it
/// must exist): one `RTM_NEWTFILTER` on the same priority and handle.
pub fn replace(prog: &mut SchedClassifier, program: &str, ifname: &str, dir: TcAttachType) -> Result<()> {
    let link = SchedClassifierLink::attached(ifname, dir, PRIORITY, handle(), None)
        .with_context(|| format!("interface {ifname}"))?;
    let id = prog
        .attach_to_link(link)
        .with_context(|| format!("replace the tc filter of {ifname} {dir:?} with {program}"))?;
    keep_attached(prog, id)
}

/// aya detaches a program's links when it drops them; a filter must stay
/// after this process. The link is plain data (ifindex, priority,
/// handle), so forgetting it leaks nothing.
fn keep_attached(prog: &mut SchedClassifier, id: aya::programs::tc::SchedClassifierLinkId) -> Result<()> {
    let link = prog.take_link(id).context("take the tc filter's link")?;
    std::mem::forget(link);
    Ok(())
}

/// Remove sluice's filter from `ifname`'s `dir` hook (one already gone, or
/// a device without the qdisc, counts as removed).
pub fn detach(ifname: &str, dir: TcAttachType) -> Result<()> {
    let link = match SchedClassifierLink::attached(ifname, dir, PRIORITY, handle(), None) {
        Ok(link) => link,
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) || e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("interface {ifname}")),
    };
    match link.detach() {
        Ok(()) => Ok(()),
        Err(e) if matches!(errno(&e), Some(libc::ENOENT) | Some(libc::EINVAL) | Some(libc::ENODEV)) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("remove the tc filter of {ifname} {dir:?}")),
    }
}
