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

/// Per network namespace, like `IP_FORWARD`.
const IPV6_FORWARDING: &str = "/proc/sys/net/ipv6/conf/all/forwarding";

/// `net.ipv6.conf.all.forwarding=1` (dual-stack): the stack forwards pods'
/// IPv6 (pod to pod, to other nodes). A node with it on accepts router
/// advertisements only where `accept_ra=2`: a node that configures its own
/// IPv6 from them must set that on its uplink (kubeadm's dual-stack
/// preflight asks for forwarding as well).
pub fn ensure_ipv6_forwarding() -> Result<()> {
    let now = std::fs::read_to_string(IPV6_FORWARDING)
        .with_context(|| format!("read {IPV6_FORWARDING} (is IPv6 built into this kernel?)"))?;
    if now.trim() != "1" {
        std::fs::write(IPV6_FORWARDING, "1").with_context(|| format!("write {IPV6_FORWARDING}"))?;
        info!("net.ipv6.conf.all.forwarding set to 1");
    }
    Ok(())
}
