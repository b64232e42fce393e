//! Map sizes chosen at start, from the node or the flags.
//!
//! `STACK_FLOWS` remembers every flow the node's stack forwarded from a pod
//! (kube-proxy's DNAT, hostPorts), least recently used making room. Its
//! natural size is conntrack's own: `nf_conntrack_max` is how many flows
//! the kernel tracks at once, so a table that large holds one entry per
//! tracked flow. `--stack-flows-max` overrides it.
use sluice_common::maps::limits::{MAX_STACK_FLOWS, MAX_STACK_FLOWS_CAP, MIN_STACK_FLOWS};

/// Where conntrack's limit is read (read-only in a container, still readable).
pub const NF_CONNTRACK_MAX: &str = "/proc/sys/net/netfilter/nf_conntrack_max";

/// The size of `STACK_FLOWS` and why (pure): the flag, else the node's
/// `nf_conntrack_max` kept within `MIN_STACK_FLOWS..=MAX_STACK_FLOWS_CAP`,
/// else (no conntrack loaded yet) the object's size.
pub fn stack_flows(flag: Option<u32>, conntrack_max: Option<u64>) -> (u32, String) {
    if let Some(n) = flag {
        return (n, "--stack-flows-max".into());
    }
    match conntrack_max {
        Some(ct) => {
            let n = ct.clamp(u64::from(MIN_STACK_FLOWS), u64::from(MAX_STACK_FLOWS_CAP)) as u32;
            (n, format!("nf_conntrack_max {ct}"))
        }
        None => (MAX_STACK_FLOWS, format!("no {NF_CONNTRACK_MAX}")),
    }
}

/// The node's `nf_conntrack_max`, if conntrack is loaded.
pub fn read_conntrack_max() -> Option<u64> {
    std::fs::read_to_string(NF_CONNTRACK_MAX).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sized_from_the_flag_else_conntrack_within_bounds() {
        assert_eq!(stack_flows(Some(1024), Some(262_144)).0, 1024);
        assert_eq!(stack_flows(None, Some(262_144)), (262_144, "nf_conntrack_max 262144".into()));
        assert_eq!(stack_flows(None, Some(8192)).0, MIN_STACK_FLOWS, "never below the old fixed size");
        assert_eq!(stack_flows(None, Some(u64::from(u32::MAX) + 7)).0, MAX_STACK_FLOWS_CAP);
        let (n, why) = stack_flows(None, None);
        assert_eq!(n, MAX_STACK_FLOWS);
        assert!(why.contains("nf_conntrack_max"), "{why}");
    }
}
