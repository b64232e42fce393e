//! What `from_pod6` and `from_uplink6` share: the verdict handed from
//! their deciding global functions to the program, and the per-CPU
//! scratch the decision leaves its lookups in.
//!
//! Why global functions: Linux 6.1 allows 512 bytes of stack for a whole
//! call chain, and `from_pod` already calls `sluice_policy_judge_packet`
//! (192), `from_uplink` (224) `sluice_lb4_from_uplink` (288). Inlined, the
//! IPv6 decisions (two addresses, an LPM key, the lookups) grew those
//! frames past it (`from_pod` 400 + the IPv6 judgement's 160 = 560). So
//! each decision is a global function of its own (`sluice_from_pod6_decide`,
//! `sluice_from_uplink6_decide`, verified once on its own), called first;
//! it returns a verdict code and leaves what carrying it out needs in
//! `FAST6_SCRATCH` (map memory, not stack). `from_pod` carries it out
//! itself; `from_uplink`, which has no room to spare, through one more
//! global function (`sluice_from_uplink6`). The addresses are read in place
//! in the packet: copied out, each byte spilled a register of its own.
//! See docs/ARCHITECTURE.md, "Dual-stack".
use aya_ebpf::{bindings::bpf_redir_neigh, maps::lpm_trie::Key};
use sluice_common::{verdict::Verdict, DropReason, EndpointInfo};

/// What carrying out an IPv6 verdict needs, left by the deciding function
/// in `maps::FAST6_SCRATCH` (per CPU, used by one program run at a time).
#[repr(C)]
pub struct Fast6Scratch {
    /// The `NODE_ROUTES6` key being looked up (an address copied from the
    /// packet: on the stack, its bytes spill one register each).
    pub key: Key<[u8; 16]>,
    /// The destination pod (`ToLocalPod`).
    pub ep: EndpointInfo,
    /// The next hop: the destination's node's IPv6 address (`ToRemoteNode`).
    pub nh: bpf_redir_neigh,
    pub uplink_ifindex: u32,
}

/// A verdict as a global function returns it (a scalar).
pub const V6_TO_STACK: u32 = 0;
pub const V6_ROUTER_TO_STACK: u32 = 1;
pub const V6_TO_LOCAL_POD: u32 = 2;
pub const V6_TO_REMOTE_NODE: u32 = 3;
/// The reply of a flow the stack forwarded (`STACK_FLOWS6`): to the stack.
pub const V6_STACK_FLOW_REPLY: u32 = 4;
/// `V6_DROP + reason`.
pub const V6_DROP: u32 = 0x100;

/// The code of a verdict (`Verdict`s IPv6 never gives are the stack's).
#[inline(always)]
pub fn encode(v: Verdict) -> u32 {
    match v {
        Verdict::ToLocalPod => V6_TO_LOCAL_POD,
        Verdict::ToRemoteNode => V6_TO_REMOTE_NODE,
        Verdict::RouterToStack => V6_ROUTER_TO_STACK,
        Verdict::StackFlowReply => V6_STACK_FLOW_REPLY,
        Verdict::Drop(reason) => V6_DROP + reason as u32,
        _ => V6_TO_STACK,
    }
}

/// The drop reason of a `V6_DROP` code (those the IPv6 paths give:
/// theirs, the door's, the policy judgement's). The verifier cannot know
/// the set a global function returns; a code naming no reason of it is
/// still a drop.
#[inline(always)]
pub fn drop_reason(code: u32) -> DropReason {
    const TRUNCATED: u32 = DropReason::Truncated as u32;
    const SPOOFED: u32 = DropReason::SourceSpoofed as u32;
    const BAD_HEADER: u32 = DropReason::BadIpHeader as u32;
    const REDIRECT_FAILED: u32 = DropReason::RedirectFailed as u32;
    const UPLINK_SPOOFED: u32 = DropReason::UplinkSourceSpoofed as u32;
    const DENIED_INGRESS: u32 = DropReason::PolicyDeniedIngress as u32;
    const DENIED_EGRESS: u32 = DropReason::PolicyDeniedEgress as u32;
    const PEER_UNKNOWN: u32 = DropReason::PolicyPeerUnknown as u32;
    const PENDING: u32 = DropReason::PolicyPending as u32;
    // `lb6`'s, through `from_uplink6`.
    const TTL: u32 = DropReason::TtlExpired as u32;
    const REWRITE: u32 = DropReason::HeaderRewrite as u32;
    const NO_UPLINK: u32 = DropReason::NoUplink as u32;
    const NO_TUNNEL: u32 = DropReason::NoTunnel as u32;
    const NO_ENDPOINTS: u32 = DropReason::ServiceNoEndpoints as u32;
    const NO_LOCAL: u32 = DropReason::ServiceNoLocalEndpoints as u32;
    const SOURCE_RANGE: u32 = DropReason::LoadBalancerSourceRange as u32;
    const FULL6: u32 = DropReason::Nat6TableFull as u32;
    const PORTS6: u32 = DropReason::Nat6PortExhausted as u32;
    const MIGRATING: u32 = DropReason::Nat4Migrating as u32;
    match code.wrapping_sub(V6_DROP) {
        TRUNCATED => DropReason::Truncated,
        SPOOFED => DropReason::SourceSpoofed,
        BAD_HEADER => DropReason::BadIpHeader,
        REDIRECT_FAILED => DropReason::RedirectFailed,
        UPLINK_SPOOFED => DropReason::UplinkSourceSpoofed,
        DENIED_INGRESS => DropReason::PolicyDeniedIngress,
        DENIED_EGRESS => DropReason::PolicyDeniedEgress,
        PEER_UNKNOWN => DropReason::PolicyPeerUnknown,
        PENDING => DropReason::PolicyPending,
        TTL => DropReason::TtlExpired,
        REWRITE => DropReason::HeaderRewrite,
        NO_UPLINK => DropReason::NoUplink,
        NO_TUNNEL => DropReason::NoTunnel,
        NO_ENDPOINTS => DropReason::ServiceNoEndpoints,
        NO_LOCAL => DropReason::ServiceNoLocalEndpoints,
        SOURCE_RANGE => DropReason::LoadBalancerSourceRange,
        FULL6 => DropReason::Nat6TableFull,
        PORTS6 => DropReason::Nat6PortExhausted,
        MIGRATING => DropReason::Nat4Migrating,
        _ => DropReason::LookupMismatch,
    }
}
