//! TCX links: attach and pin, swap the program inside a pinned link
//! (`BPF_LINK_UPDATE`, atomic), detach by unpinning. Shared by the agent
//! (uplink, restarts) and the CNI plugin (one `from_pod` link per pod).
use std::{fs, io, path::Path};

use anyhow::{Context, Result};
use aya::programs::{
    links::{FdLink, PinnedLink},
    tc::{SchedClassifierLink, TcAttachOptions},
    LinkOrder, SchedClassifier, TcAttachType,
};

/// A fresh TCX ingress attachment, pinned so it outlives this process.
pub fn attach_and_pin(prog: &mut SchedClassifier, ifname: &str, pin: &Path) -> Result<()> {
    let id = prog
        .attach_with_options(ifname, TcAttachType::Ingress, TcAttachOptions::TcxOrder(LinkOrder::default()))
        .with_context(|| format!("attach to {ifname} ingress with TCX"))?;
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
