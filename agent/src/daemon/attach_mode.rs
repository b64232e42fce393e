//! How this node attaches its TC programs (issue 26): `--attach=auto` (the
//! default) takes TCX where the kernel has it (Linux 6.6+) and legacy tc
//! (`clsact` + `cls_bpf`) where it does not; `tcx` and `tc` force it, and a
//! forced TCX the kernel lacks is an error at start. Decided once; recorded
//! in `NODE_CONFIG` for the CNI plugin (`sluice_node::datapath::attach_mode`).
use anyhow::{bail, Context, Result};
use sluice_node::datapath::attach_mode::{probe_tcx, AttachMode};
use tracing::info;

/// `--attach`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachChoice {
    Auto,
    Tcx,
    Tc,
}

/// The mode and why (for `status`), from the flag and the probe. Pure.
pub fn choose(choice: AttachChoice, tcx: Result<(), String>) -> Result<(AttachMode, String)> {
    Ok(match (choice, tcx) {
        (AttachChoice::Tc, _) => (AttachMode::Tc, "--attach=tc".into()),
        (AttachChoice::Tcx, Ok(())) => (AttachMode::Tcx, "--attach=tcx".into()),
        (AttachChoice::Tcx, Err(e)) => bail!("--attach=tcx, but this kernel has no TCX (Linux 6.6+): {e}"),
        (AttachChoice::Auto, Ok(())) => (AttachMode::Tcx, "auto: the kernel has TCX".into()),
        (AttachChoice::Auto, Err(e)) => (AttachMode::Tc, format!("auto: no TCX ({e}); legacy tc")),
    })
}

/// Decide, probing TCX on `uplink` unless `--attach=tc`.
pub fn decide(choice: AttachChoice, uplink: &str) -> Result<(AttachMode, String)> {
    let probe = if choice == AttachChoice::Tc { Err("not probed".into()) } else { probe_tcx(uplink) };
    let (mode, why) = choose(choice, probe).context("attach mode")?;
    info!(%mode, why = %why, "attach mode chosen");
    Ok((mode, why))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choice_table() {
        let no = || Err("Invalid argument (os error 22)".to_string());
        assert_eq!(choose(AttachChoice::Auto, Ok(())).unwrap().0, AttachMode::Tcx);
        let (m, why) = choose(AttachChoice::Auto, no()).unwrap();
        assert_eq!(m, AttachMode::Tc);
        assert!(why.contains("Invalid argument"), "{why}");
        assert_eq!(choose(AttachChoice::Tc, Ok(())).unwrap().0, AttachMode::Tc);
        assert_eq!(choose(AttachChoice::Tcx, Ok(())).unwrap().0, AttachMode::Tcx);
        let e = choose(AttachChoice::Tcx, no()).unwrap_err().to_string();
        assert!(e.contains("has no TCX"), "{e}");
    }
}
