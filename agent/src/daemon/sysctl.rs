//! Kernel settings the node needs. A kubeadm node already has them; the
//! agent makes sure, rather than leaving a node that forwards nothing.
use anyhow::{Context, Result};
use tracing::info;

/// Per network namespace: the agent's, which is the node's.
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// `net.ipv4.ip_forward=1`: the stack forwards what pods send beyond the
/// fast path (the world, other nodes' host processes, kube-proxy's DNAT).
pub fn ensure_ip_forward() -> Result<()> {
    let now = std::fs::read_to_string(IP_FORWARD).with_context(|| format!("read {IP_FORWARD}"))?;
    if now.trim() != "1" {
        std::fs::write(IP_FORWARD, "1").with_context(|| format!("write {IP_FORWARD}"))?;
        info!("net.ipv4.ip_forward set to 1");
    }
    Ok(())
}
