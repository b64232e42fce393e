//! The agent's own view, written to `<data dir>/agent-state.json` on every
//! reconcile pass so `sluice-agent status` (another process) can show it:
//! liveness, membership source and its problems, the Kubernetes connection.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::membership::{kubernetes::KubeState, Problem};

pub const FILE_NAME: &str = "agent-state.json";

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AgentState {
    pub pid: u32,
    pub version: String,
    pub node_name: String,
    pub uplink: String,
    pub pod_cidr: String,
    /// The IPv6 pod CIDR, on a dual-stack node (`--ip-family dual`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr6: Option<String>,
    /// IPv6 route CIDR → the node it leads to (dual-stack).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub route_nodes6: BTreeMap<String, String>,
    /// IPv6 route CIDR → the IPv6 address of the node it leads to
    /// (dual-stack), peers behind a router too, whose kernel route names
    /// only their IPv4 address (`connectivity-test` probes it).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub route_node_ips6: BTreeMap<String, String>,
    /// IPv6 route CIDR → native or VXLAN over IPv6, and why (IPv6-only
    /// nodes, `Membership::paths6`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub route_paths6: BTreeMap<String, crate::membership::PathChoice>,
    /// Nodes left out of the IPv6 routes, and why (dual-stack).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems6: Vec<crate::membership::family6::Problem6>,
    /// "peers-file" or "kubernetes".
    pub membership: String,
    pub started_unix: u64,
    pub updated_unix: u64,
    /// Route CIDR → the node it leads to.
    pub route_nodes: BTreeMap<String, String>,
    /// Route CIDR → native or VXLAN, and why (issue 15).
    #[serde(default)]
    pub route_paths: BTreeMap<String, crate::membership::PathChoice>,
    pub problems: Vec<Problem>,
    /// The last error applying membership, if the last pass failed.
    pub last_error: Option<String>,
    /// Kernel routes the last pass could not apply (every other one was).
    #[serde(default)]
    pub kernel_route_failures: Vec<String>,
    pub kubernetes: Option<KubeState>,
    /// The health endpoint's namespace (path) and address.
    pub health_netns: String,
    pub health_ip: String,
    /// Its IPv6 address (dual-stack).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_ip6: Option<String>,
    pub resync_ms: u64,
    /// The device pair new pods get (`veth`, `netkit`) and why (`--device`).
    #[serde(default)]
    pub pod_device: String,
    #[serde(default)]
    pub pod_device_why: String,
    /// How the TC programs attach (`tcx`, `tc`) and why (`--attach`); empty:
    /// an agent that predates the choice (TCX).
    #[serde(default)]
    pub attach_mode: String,
    #[serde(default)]
    pub attach_mode_why: String,
    /// What this kernel's missing features degrade (empty: nothing).
    #[serde(default)]
    pub kernel_degraded: Vec<String>,
    /// The uplink's MTU and the pods' (0: an agent that predates them).
    #[serde(default)]
    pub uplink_mtu: u32,
    #[serde(default)]
    pub pod_mtu: u32,
    /// The socket load balancer, when `--kube-proxy-replacement=true`.
    #[serde(default)]
    pub service_lb: Option<crate::daemon::service_lb::ServiceLbState>,
    /// NetworkPolicy enforcement, with `--kubernetes`.
    #[serde(default)]
    pub policy: Option<crate::daemon::policy_loop::PolicyLoopState>,
    /// Port ownership (reserved ports, host sockets on them), when
    /// `--kube-proxy-replacement=true`.
    #[serde(default)]
    pub port_ownership: Option<crate::daemon::port_ownership::PortOwnershipState>,
}

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

/// Write atomically (temp, rename).
pub fn write(data_dir: &Path, state: &AgentState) -> Result<()> {
    std::fs::create_dir_all(data_dir)?;
    let tmp = data_dir.join(format!(".{FILE_NAME}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec_pretty(state)?).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path(data_dir))?;
    Ok(())
}

/// Remove the state file (an absent one counts as removed).
pub fn remove(data_dir: &Path) -> Result<()> {
    match std::fs::remove_file(path(data_dir)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("remove {}", path(data_dir).display()))
        }
        _ => Ok(()),
    }
}

pub fn read(data_dir: &Path) -> Result<AgentState> {
    let p = path(data_dir);
    let bytes = std::fs::read(&p).with_context(|| format!("read {}", p.display()))?;
    Ok(serde_json::from_slice(&bytes)?)
}
