//! Interface attachments: attach and pin, swap the program in place,
//! detach. Shared by the agent (uplink, restarts) and the CNI plugin (each
//! pod's programs on its host device). Where a program attaches follows
//! from its name: `from_pod_netkit` is a netkit peer program (the pod's
//! transmit path), other `from_*` programs ingress, `to_*` egress; how, from
//! the node's `AttachMode`: a pinned TCX link (swapped with
//! `BPF_LINK_UPDATE`), or a legacy tc filter (`tc_filter`, replaced at the
//! same priority and handle) whose program is pinned where the link would
//! be. Either way the pin at `PinDir::link` is the marker saying the device
//! carries the program; `pinned` tells which kind it is.
use std::{fs, io, os::fd::AsFd, os::fd::AsRawFd, path::Path};

use anyhow::{bail, Context, Result};
use aya::programs::{links::FdLink, tc::TcAttachOptions, LinkOrder, SchedClassifier, TcAttachType};
use sluice_common::maps::programs;

use super::{attach_mode::AttachMode, bpf_sys, tc_filter};

/// Every program a pod's host device may run, whatever its kind (for
/// teardown and sweeps: unpinning one that is not there is fine).
pub const ANY_POD_PROGRAMS: [&str; 3] = [programs::FROM_POD, programs::FROM_POD_NETKIT, programs::TO_POD];

/// The hook a program attaches to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Tcx(TcAttachType),
    /// `BPF_NETKIT_PEER` through the netkit primary.
    NetkitPeer,
}

pub fn hook(program: &str) -> Hook {
    if program == programs::FROM_POD_NETKIT {
        Hook::NetkitPeer
    } else if program.starts_with("to_") {
        Hook::Tcx(TcAttachType::Egress)
    } else {
        Hook::Tcx(TcAttachType::Ingress)
    }
}

/// What a pin at `PinDir::link` holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pinned {
    /// A TCX or netkit link: unpinning it detaches.
    Link,
    /// The program of a legacy tc filter (the filter stays attached
    /// without it; it marks which program the device carries).
    TcProgram,
}

/// What the pin at `pin` holds (`None`: no pin). The kind of a bpffs
/// object shows in its fd's anonymous inode name.
pub fn pinned(pin: &Path) -> Result<Option<Pinned>> {
    let fd = match bpf_sys::obj_get(pin) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("open pin {}", pin.display())),
    };
    let target = fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).context("read the pin's fd kind")?;
    match target.to_string_lossy().as_ref() {
        "anon_inode:bpf-link" => Ok(Some(Pinned::Link)),
        "anon_inode:bpf-prog" => Ok(Some(Pinned::TcProgram)),
        other => bail!("{} holds {other}, neither a link nor a program", pin.display()),
    }
}

/// A fresh attachment in `mode`, pinned so it outlives this process (a
/// netkit peer program is always a netkit link).
pub fn attach_and_pin(
    prog: &mut SchedClassifier,
    program: &str,
    ifname: &str,
    pin: &Path,
    mode: AttachMode,
) -> Result<()> {
    match (hook(program), mode) {
        (Hook::Tcx(dir), AttachMode::Tcx) => {
            let id = prog
                .attach_with_options(ifname, dir, TcAttachOptions::TcxOrder(LinkOrder::default()))
                .with_context(|| format!("attach {program} to {ifname} {dir:?} with TCX"))?;
            let link = prog.take_link(id)?;
            let fd_link: FdLink = link.try_into().context("TCX link as fd link")?;
            fd_link.pin(pin).with_context(|| format!("pin link at {}", pin.display()))?;
        }
        (Hook::Tcx(dir), AttachMode::Tc) => {
            tc_filter::attach(prog, program, ifname, dir)?;
            pin_program(prog, pin)?;
        }
        (Hook::NetkitPeer, _) => {
            let ifindex = nix::net::if_::if_nametoindex(ifname).with_context(|| format!("interface {ifname}"))?;
            let prog_fd = prog.fd().with_context(|| format!("{program} is not loaded"))?;
            let link = bpf_sys::netkit_link_create(prog_fd.as_fd(), ifindex, bpf_sys::BPF_NETKIT_PEER)
                .with_context(|| format!("attach {program} to netkit {ifname}'s peer"))?;
            bpf_sys::obj_pin(link.as_fd(), pin).with_context(|| format!("pin link at {}", pin.display()))?;
        }
    }
    Ok(())
}

/// Pin `prog` at `pin` as a tc filter's marker, replacing one there in
/// one step (pinned beside it, renamed over it).
fn pin_program(prog: &mut SchedClassifier, pin: &Path) -> Result<()> {
    let tmp = pin.with_file_name(format!(
        "{}_new",
        pin.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    ));
    fs::remove_file(&tmp).or_else(ignore_not_found)?;
    prog.pin(&tmp).with_context(|| format!("pin program at {}", tmp.display()))?;
    fs::rename(&tmp, pin).with_context(|| format!("move {} over {}", tmp.display(), pin.display()))
}

/// Swap the program of the attachment pinned at `pin` (`program` on
/// `ifname`), in place, as it was made: a link with one `BPF_LINK_UPDATE`
/// (TCX or netkit alike), a tc filter replaced at its priority and handle
/// (then its marker re-pinned). Either way no packet sees no program.
pub fn update_pinned(prog: &mut SchedClassifier, program: &str, ifname: &str, pin: &Path) -> Result<()> {
    match pinned(pin)? {
        Some(Pinned::Link) => update_pinned_link(prog, pin),
        Some(Pinned::TcProgram) => {
            let Hook::Tcx(dir) = hook(program) else {
                bail!("{} holds a tc filter's program, but {program} is a netkit program", pin.display())
            };
            tc_filter::replace(prog, program, ifname, dir)?;
            pin_program(prog, pin)
        }
        None => bail!("no attachment pinned at {}", pin.display()),
    }
}

/// Swap the program inside the pinned link `pin` (TCX or netkit alike:
/// one `BPF_LINK_UPDATE`, so no packet sees no program).
pub fn update_pinned_link(prog: &mut SchedClassifier, pin: &Path) -> Result<()> {
    let link = bpf_sys::obj_get(pin).with_context(|| format!("open link pin {}", pin.display()))?;
    let prog_fd = prog.fd().context("program is not loaded")?;
    bpf_sys::link_update(link.as_fd(), prog_fd.as_fd()).context("BPF_LINK_UPDATE")
}

/// Detach `program` from `ifname` and remove its pin: a link goes with its
/// pin; a tc filter is removed from the device (if the device is still
/// there) before its marker. Anything already gone counts as done.
pub fn detach(pin: &Path, program: &str, ifname: &str) -> Result<()> {
    if let (Some(Pinned::TcProgram), Hook::Tcx(dir)) = (pinned(pin)?, hook(program)) {
        if interface_exists(ifname) {
            tc_filter::detach(ifname, dir)?;
        }
    }
    unpin_link(pin)
}

/// Does the device `ifindex` really run `program` as pinned at `pin`? A
/// link: yes while pinned (the kernel keeps it attached until its device
/// goes). A tc filter: only if the kernel lists sluice's filter on the
/// hook with the pinned program (a flushed qdisc or a deleted filter leaves
/// the marker behind). `Err` names what is missing.
pub async fn check_attached(
    netlink: &crate::net::netlink::Netlink,
    pin: &Path,
    program: &str,
    ifindex: u32,
) -> Result<(), String> {
    let kind = pinned(pin).map_err(|e| format!("{e:#}"))?;
    let (Some(Pinned::TcProgram), Hook::Tcx(dir)) = (kind, hook(program)) else {
        return match kind {
            Some(_) => Ok(()),
            None => Err(format!("{program} is not attached (no pin at {})", pin.display())),
        };
    };
    let want = aya::programs::ProgramInfo::from_pin(pin).map_err(|e| format!("read {}: {e}", pin.display()))?.id();
    let filters = netlink.bpf_filters(ifindex, dir == TcAttachType::Ingress).await.map_err(|e| format!("{e:#}"))?;
    match filters.iter().find(|f| f.priority == tc_filter::PRIORITY && f.handle == tc_filter::HANDLE) {
        Some(f) if f.prog_id == Some(want) => Ok(()),
        Some(f) => Err(format!(
            "the tc filter on {dir:?} runs program {:?}, not {program} (id {want})",
            f.prog_id.map_or("?".to_string(), |i| i.to_string())
        )),
        None => Err(format!(
            "{program} has no tc filter on {dir:?} (priority {}, handle {:#x})",
            tc_filter::PRIORITY,
            tc_filter::HANDLE
        )),
    }
}

/// Is there an interface of this name in the calling thread's namespace?
pub fn interface_exists(ifname: &str) -> bool {
    nix::net::if_::if_nametoindex(ifname).is_ok()
}

/// Remove a pin. For a link this detaches (the pin holds the last ref); a
/// tc filter stays until its device goes (see `detach`).
pub fn unpin_link(pin: &Path) -> Result<()> {
    fs::remove_file(pin).or_else(ignore_not_found).with_context(|| format!("unpin {}", pin.display()))
}

pub fn ignore_not_found(e: io::Error) -> io::Result<()> {
    if e.kind() == io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hooks_follow_names() {
        assert!(matches!(hook(programs::FROM_POD), Hook::Tcx(TcAttachType::Ingress)));
        assert!(matches!(hook(programs::FROM_UPLINK), Hook::Tcx(TcAttachType::Ingress)));
        assert!(matches!(hook(programs::TO_POD), Hook::Tcx(TcAttachType::Egress)));
        assert!(matches!(hook(programs::TO_UPLINK), Hook::Tcx(TcAttachType::Egress)));
        assert_eq!(hook(programs::FROM_POD_NETKIT), Hook::NetkitPeer);
    }
}
