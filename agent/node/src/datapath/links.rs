//! Interface links: attach and pin, swap the program inside a pinned link
//! (`BPF_LINK_UPDATE`, atomic), detach by unpinning. Shared by the agent
//! (uplink, restarts) and the CNI plugin (each pod's programs on its host
//! device). Where a program attaches follows from its name: `from_pod_netkit`
//! is a netkit peer program (the pod's transmit path), other `from_*`
//! programs TCX ingress, `to_*` TCX egress.
use std::{fs, io, os::fd::AsFd, path::Path};

use anyhow::{Context, Result};
use aya::programs::{links::FdLink, tc::TcAttachOptions, LinkOrder, SchedClassifier, TcAttachType};
use sluice_common::maps::programs;

use super::bpf_sys;

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

/// A fresh attachment, pinned so it outlives this process.
pub fn attach_and_pin(prog: &mut SchedClassifier, program: &str, ifname: &str, pin: &Path) -> Result<()> {
    match hook(program) {
        Hook::Tcx(dir) => {
            let id = prog
                .attach_with_options(ifname, dir, TcAttachOptions::TcxOrder(LinkOrder::default()))
                .with_context(|| format!("attach {program} to {ifname} {dir:?} with TCX"))?;
            let link = prog.take_link(id)?;
            let fd_link: FdLink = link.try_into().context("TCX link as fd link")?;
            fd_link.pin(pin).with_context(|| format!("pin link at {}", pin.display()))?;
        }
        Hook::NetkitPeer => {
            let ifindex = nix::net::if_::if_nametoindex(ifname).with_context(|| format!("interface {ifname}"))?;
            let prog_fd = prog.fd().with_context(|| format!("{program} is not loaded"))?;
            let link = bpf_sys::netkit_link_create(prog_fd.as_fd(), ifindex, bpf_sys::BPF_NETKIT_PEER)
                .with_context(|| format!("attach {program} to netkit {ifname}'s peer"))?;
            bpf_sys::obj_pin(link.as_fd(), pin).with_context(|| format!("pin link at {}", pin.display()))?;
        }
    }
    Ok(())
}

/// Swap the program inside the pinned link `pin` (TCX or netkit alike:
/// one `BPF_LINK_UPDATE`, so no packet sees no program).
pub fn update_pinned_link(prog: &mut SchedClassifier, pin: &Path) -> Result<()> {
    let link = bpf_sys::obj_get(pin).with_context(|| format!("open link pin {}", pin.display()))?;
    let prog_fd = prog.fd().context("program is not loaded")?;
    bpf_sys::link_update(link.as_fd(), prog_fd.as_fd()).context("BPF_LINK_UPDATE")
}

/// Detach a pinned link by removing its pin (the pin holds the last ref).
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
