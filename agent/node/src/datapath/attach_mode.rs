//! How a node attaches its TC programs (issue 26): TCX links where the
//! kernel has them (Linux 6.6+), legacy tc filters (`clsact` + `cls_bpf`
//! direct-action, `tc_filter`) where it does not. The agent decides once at
//! start (`--attach`) and records the mode in `NODE_CONFIG`, where the CNI
//! plugin reads it before attaching a new pod's programs. An attachment
//! already pinned keeps the kind it was made with (its pin says which,
//! `links::pinned`), so a restart updates it in place either way.
use std::fmt;

use anyhow::{anyhow, Result};
use aya::programs::{SchedClassifier, TcAttachType};
use sluice_common::maps::{ATTACH_TC, ATTACH_TCX};

use super::{pinned_maps, pins::PinDir};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// A pinned TCX link per program and device; updated in place with
    /// `BPF_LINK_UPDATE`.
    Tcx,
    /// A `cls_bpf` filter per program and device at sluice's priority and
    /// handle, its program pinned as the marker; updated in place by
    /// replacing the filter at that priority and handle.
    Tc,
}

impl AttachMode {
    pub fn name(self) -> &'static str {
        match self {
            AttachMode::Tcx => "tcx",
            AttachMode::Tc => "tc",
        }
    }

    /// The value `NODE_CONFIG.attach_mode` holds for it.
    pub fn recorded(self) -> u32 {
        match self {
            AttachMode::Tcx => ATTACH_TCX,
            AttachMode::Tc => ATTACH_TC,
        }
    }

    pub fn from_recorded(value: u32) -> Option<Self> {
        match value {
            ATTACH_TCX => Some(AttachMode::Tcx),
            ATTACH_TC => Some(AttachMode::Tc),
            _ => None,
        }
    }

    /// The node's mode, as its agent recorded it in `NODE_CONFIG`.
    pub fn of_node(pins: &PinDir) -> Result<Self> {
        let recorded = pinned_maps::read_node_config(pins)?.attach_mode;
        Self::from_recorded(recorded).ok_or_else(|| {
            anyhow!("NODE_CONFIG names attach mode {recorded}, which this version does not know (a newer agent's?)")
        })
    }
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Does this kernel have TCX? Asks which TCX programs `ifname`'s ingress
/// carries (`BPF_PROG_QUERY` with `BPF_TCX_INGRESS`): a kernel before 6.6
/// does not know the attach type and refuses. Attaches nothing.
pub fn probe_tcx(ifname: &str) -> Result<(), String> {
    SchedClassifier::query_tcx(ifname, TcAttachType::Ingress).map(|_| ()).map_err(|e| {
        let mut msg = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            msg = format!("{msg}: {s}");
            source = s.source();
        }
        msg
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_values_round_trip_and_zero_is_tcx() {
        for m in [AttachMode::Tcx, AttachMode::Tc] {
            assert_eq!(AttachMode::from_recorded(m.recorded()), Some(m));
        }
        // A NODE_CONFIG migrated from a version without the field reads 0:
        // those versions attached with TCX only.
        assert_eq!(AttachMode::from_recorded(0), Some(AttachMode::Tcx));
        assert_eq!(AttachMode::from_recorded(7), None);
        assert_eq!(serde_json::to_string(&AttachMode::Tc).unwrap(), "\"tc\"");
    }
}
