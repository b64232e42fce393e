//! TCX links: attach and pin, swap the program inside a pinned link
//! (`BPF_LINK_UPDATE`, atomic), detach by unpinning. Shared by the agent
//! (uplink, restarts) and the CNI plugin (`POD_PROGRAMS` on each pod's
//! host veth). A program's direction follows from its name: `from_*` is
//! ingress, `to_*` egress.
use std::{fs, io, path::Path};

use anyhow::{Context, Result};
use aya::programs::{
    links::{FdLink, PinnedLink},
    tc::{SchedClassifierLink, TcAttachOptions},
    LinkOrder, SchedClassifier, TcAttachType,
};
use sluice_common::maps::programs;

/// What every pod's host veth runs: `from_pod` on ingress (what the pod
/// sends), `to_pod` on egress (what the node's stack sends the pod).
pub const POD_PROGRAMS: [&str; 2] = [programs::FROM_POD, programs::TO_POD];

/// Ingress for `from_*` programs, egress for `to_*`.
pub fn direction(program: &str) -> TcAttachType {
    if program.starts_with("to_") {
        TcAttachType::Egress
    } else {
        TcAttachType::Ingress
    }
}

/// A fresh TCX attachment, pinned so it outlives this process.
pub fn attach_and_pin(prog: &mut SchedClassifier, program: &str, ifname: &str, pin: &Path) -> Result<()> {
    let dir = direction(program);
    let id = prog
        .attach_with_options(ifname, dir, TcAttachOptions::TcxOrder(LinkOrder::default()))
        .with_context(|| format!("attach {program} to {ifname} {dir:?} with TCX"))?;
    let link = prog.take_link(id)?;
    let fd_link: FdLink = link.try_into().context("TCX link as fd link")?;
    fd_link.pin(pin).with_context(|| format!("pin link at {}", pin.display()))?;
    Ok(())
}

pub fn update_pinned_link(prog: &mut SchedClassifier, pin: &Path) -> Result<()> {
    let pinned = PinnedLink::from_pin(pin).with_context(|| format!("open link pin {}", pin.display()))?;
    let fd_link: FdLink = pinned.into();
    let link: SchedClassifierLink = fd_link.try_into().context("pinned link is not a TC link")?;
    // `attach_to_link` drops our handle to the link afterwards; the pin keeps it.
    prog.attach_to_link(link).context("BPF_LINK_UPDATE")?;
    Ok(())
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
    fn directions_follow_names() {
        assert!(matches!(direction(programs::FROM_POD), TcAttachType::Ingress));
        assert!(matches!(direction(programs::FROM_UPLINK), TcAttachType::Ingress));
        assert!(matches!(direction(programs::TO_POD), TcAttachType::Egress));
        assert!(matches!(direction(programs::TO_UPLINK), TcAttachType::Egress));
    }
}
