//! Why packets were dropped and where forwarded packets went.
//!
//! Both enums index per-CPU arrays (`DROPS`, `FORWARDS`) that the programs
//! increment and the agent sums for `status`. The numbers are part of the
//! contract and of the metrics: add new variants at the end, never renumber.

/// Why the datapath dropped a packet. Written (counted) by the eBPF
/// programs, read by `sluice-agent status` and the lab.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Shorter than the headers it claims to have.
    Truncated = 0,
    /// A pod sent with a source IPv4 address that is not its own.
    SourceSpoofed = 1,
    /// TTL would reach zero on this hop.
    TtlExpired = 2,
    /// A cross-node packet, but the agent has not configured the uplink.
    NoUplink = 3,
    /// Rewriting a header (TTL, MAC) failed.
    HeaderRewrite = 4,
    /// IPv4 header with options or a bad length: not forwarded by the fast path.
    BadIpHeader = 5,
}

impl DropReason {
    pub const COUNT: u32 = 6;
    pub const ALL: [DropReason; Self::COUNT as usize] = [
        DropReason::Truncated,
        DropReason::SourceSpoofed,
        DropReason::TtlExpired,
        DropReason::NoUplink,
        DropReason::HeaderRewrite,
        DropReason::BadIpHeader,
    ];

    /// Stable name: the label in `status` and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            DropReason::Truncated => "truncated",
            DropReason::SourceSpoofed => "source_spoofed",
            DropReason::TtlExpired => "ttl_expired",
            DropReason::NoUplink => "no_uplink",
            DropReason::HeaderRewrite => "header_rewrite",
            DropReason::BadIpHeader => "bad_ip_header",
        }
    }
}

/// Which way the datapath sent a packet it did not drop.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForwardPath {
    /// Pod to a pod on the same node (`bpf_redirect_peer`).
    PodToLocalPod = 0,
    /// Pod to another node's pod, out of the uplink (`bpf_redirect_neigh`).
    PodToNode = 1,
    /// Uplink to a local pod (`bpf_redirect_peer`).
    UplinkToPod = 2,
    /// Handed to the node's own stack (node addresses, ARP, IPv6, unknown).
    ToStack = 3,
}

impl ForwardPath {
    pub const COUNT: u32 = 4;
    pub const ALL: [ForwardPath; Self::COUNT as usize] =
        [ForwardPath::PodToLocalPod, ForwardPath::PodToNode, ForwardPath::UplinkToPod, ForwardPath::ToStack];

    pub const fn name(self) -> &'static str {
        match self {
            ForwardPath::PodToLocalPod => "pod_to_local_pod",
            ForwardPath::PodToNode => "pod_to_node",
            ForwardPath::UplinkToPod => "uplink_to_pod",
            ForwardPath::ToStack => "to_stack",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_reasons_are_dense_and_in_order() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as u32, i as u32, "{:?} out of place", r);
        }
    }

    #[test]
    fn forward_paths_are_dense_and_in_order() {
        for (i, p) in ForwardPath::ALL.iter().enumerate() {
            assert_eq!(*p as u32, i as u32, "{:?} out of place", p);
        }
    }

    #[test]
    fn names_are_unique() {
        for (i, a) in DropReason::ALL.iter().enumerate() {
            for b in &DropReason::ALL[i + 1..] {
                assert_ne!(a.name(), b.name());
            }
        }
    }
}
