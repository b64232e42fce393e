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
    /// IPv4 header shorter than 20 bytes, or a total length the packet
    /// does not have.
    BadIpHeader = 5,
    /// `bpf_redirect_neigh` or `bpf_redirect_peer` refused the packet (the
    /// interface went away, no route to the next hop).
    RedirectFailed = 6,
    /// A map entry changed between two lookups of one packet (an endpoint
    /// removed mid-flight): the decision it was made on no longer holds.
    LookupMismatch = 7,
    /// From the uplink, with the source address of one of this node's own
    /// pods: someone on the node network spoofing a local pod.
    UplinkSourceSpoofed = 8,
    /// For a peer reached through VXLAN, but this node has no VXLAN device
    /// configured (`TUNNEL_CONFIG` empty).
    NoTunnel = 9,
    /// `bpf_skb_set_tunnel_key` refused the packet's tunnel metadata.
    TunnelKey = 10,
    /// Decapsulated from the VXLAN device, with the source address of one
    /// of this node's own pods.
    TunnelSourceSpoofed = 11,
    /// The stack routed a packet into the VXLAN device for an address no
    /// `NODE_ROUTES` entry covers: no remote end to send it to.
    TunnelNoRoute = 12,
    /// Decapsulated from the VXLAN device with another node's pod address
    /// as source, but sent by a node other than the one that owns that pod
    /// CIDR (the outer source is not its node IP).
    TunnelWrongNode = 13,
    /// From a pod, a frame that is neither IPv4 nor ARP (IPv6, VLAN-tagged,
    /// anything else): nothing checks its source on the way to the node's
    /// stack, so it is dropped until sluice supports IPv6.
    UnknownL3 = 14,
    /// NetworkPolicy: the destination pod is isolated for ingress and no
    /// rule of its policies allows this new connection.
    PolicyDeniedIngress = 15,
    /// NetworkPolicy: the source pod is isolated for egress and no rule
    /// allows this new connection.
    PolicyDeniedEgress = 16,
    /// NetworkPolicy: the pod is isolated and the peer is an address in the
    /// cluster CIDR this node does not know (yet); only a rule allowing
    /// every peer lets it through.
    PolicyPeerUnknown = 17,
    /// NetworkPolicy: the pod's policy entry is the CNI plugin's fail-closed
    /// stand-in (the agent had not written the pod's policy at ADD):
    /// everything but its own node is dropped until it does.
    PolicyPending = 18,
    /// A new connection from outside to a Service (`from_uplink`): `NAT4`
    /// is full, so it is refused rather than evicting a live one.
    Nat4TableFull = 19,
    /// A new connection from outside to a backend on another node: every
    /// SNAT port tried is held by another connection to that backend.
    Nat4PortExhausted = 20,
    /// A new connection from outside to a Service without endpoints.
    ServiceNoEndpoints = 21,
    /// A new connection from outside to an `externalTrafficPolicy: Local`
    /// Service on a node without one of its backends.
    ServiceNoLocalEndpoints = 22,
    /// A new connection from outside to a LoadBalancer ingress IP from a
    /// client outside the Service's `loadBalancerSourceRanges`.
    LoadBalancerSourceRange = 23,
    /// A new connection from outside to a Service while the agent carries
    /// `NAT4` over to a new layout (`LB4_PAUSED`): dropped, so that no
    /// connection is written into a table about to be left behind; the
    /// client's retransmission (a second later) finds the new one.
    Nat4Migrating = 24,
    /// `--lb-mode=dsr`: a packet for a backend on another node that the
    /// DSR option would take past the egress MTU. Not silent: the client
    /// is answered with an ICMP fragmentation needed carrying the MTU
    /// less the option (`sluice_common::reject::icmp_frag_needed`).
    DsrFragNeeded = 25,
    /// A packet for a local pod carrying sluice's DSR IPv4 option whose
    /// frontend is no Service frontend of this cluster (or is malformed):
    /// never delivered, so no reply entry is written for it.
    DsrOptionRefused = 26,
    /// A new connection from outside to an IPv6 Service (`from_uplink`,
    /// `lb6`): `NAT6` is full, so it is refused rather than evicting a live
    /// one.
    Nat6TableFull = 27,
    /// A new connection from outside to an IPv6 Service's backend on
    /// another node: every SNAT port tried is held by another connection
    /// to that backend.
    Nat6PortExhausted = 28,
    /// NAT64 (`--nat64`): a packet the translator does not carry (an IPv6
    /// extension header or fragment, an IPv4 fragment or options, a
    /// protocol other than TCP, UDP and ICMP echo, an IPv4 UDP datagram
    /// without checksum): dropped, as RFC 7915 allows for what it cannot
    /// translate.
    Nat64Unsupported = 29,
    /// NAT64: a pod whose address is past the pool's size (its offset in
    /// the IPv6 pod CIDR has no pool address), or an answer to a pool
    /// address outside the pool.
    Nat64NoPoolAddress = 30,
    /// NAT64: an answer to a pool address whose pod is gone
    /// (`ENDPOINTS6` has no entry for it).
    Nat64NoEndpoint = 31,
}

impl DropReason {
    pub const COUNT: u32 = 32;
    pub const ALL: [DropReason; Self::COUNT as usize] = [
        DropReason::Truncated,
        DropReason::SourceSpoofed,
        DropReason::TtlExpired,
        DropReason::NoUplink,
        DropReason::HeaderRewrite,
        DropReason::BadIpHeader,
        DropReason::RedirectFailed,
        DropReason::LookupMismatch,
        DropReason::UplinkSourceSpoofed,
        DropReason::NoTunnel,
        DropReason::TunnelKey,
        DropReason::TunnelSourceSpoofed,
        DropReason::TunnelNoRoute,
        DropReason::TunnelWrongNode,
        DropReason::UnknownL3,
        DropReason::PolicyDeniedIngress,
        DropReason::PolicyDeniedEgress,
        DropReason::PolicyPeerUnknown,
        DropReason::PolicyPending,
        DropReason::Nat4TableFull,
        DropReason::Nat4PortExhausted,
        DropReason::ServiceNoEndpoints,
        DropReason::ServiceNoLocalEndpoints,
        DropReason::LoadBalancerSourceRange,
        DropReason::Nat4Migrating,
        DropReason::DsrFragNeeded,
        DropReason::DsrOptionRefused,
        DropReason::Nat6TableFull,
        DropReason::Nat6PortExhausted,
        DropReason::Nat64Unsupported,
        DropReason::Nat64NoPoolAddress,
        DropReason::Nat64NoEndpoint,
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
            DropReason::RedirectFailed => "redirect_failed",
            DropReason::LookupMismatch => "lookup_mismatch",
            DropReason::UplinkSourceSpoofed => "uplink_source_spoofed",
            DropReason::NoTunnel => "no_tunnel",
            DropReason::TunnelKey => "tunnel_key",
            DropReason::TunnelSourceSpoofed => "tunnel_source_spoofed",
            DropReason::TunnelNoRoute => "tunnel_no_route",
            DropReason::TunnelWrongNode => "tunnel_wrong_node",
            DropReason::UnknownL3 => "unknown_l3",
            DropReason::PolicyDeniedIngress => "policy_denied_ingress",
            DropReason::PolicyDeniedEgress => "policy_denied_egress",
            DropReason::PolicyPeerUnknown => "policy_peer_unknown",
            DropReason::PolicyPending => "policy_pending",
            DropReason::Nat4TableFull => "nat4_table_full",
            DropReason::Nat4PortExhausted => "nat4_port_exhausted",
            DropReason::ServiceNoEndpoints => "service_no_endpoints",
            DropReason::ServiceNoLocalEndpoints => "service_no_local_endpoints",
            DropReason::LoadBalancerSourceRange => "load_balancer_source_range",
            DropReason::Nat4Migrating => "nat4_migrating",
            DropReason::DsrFragNeeded => "dsr_frag_needed",
            DropReason::DsrOptionRefused => "dsr_option_refused",
            DropReason::Nat6TableFull => "nat6_table_full",
            DropReason::Nat6PortExhausted => "nat6_port_exhausted",
            DropReason::Nat64Unsupported => "nat64_unsupported",
            DropReason::Nat64NoPoolAddress => "nat64_no_pool_address",
            DropReason::Nat64NoEndpoint => "nat64_no_endpoint",
        }
    }
}

/// Where a program that dropped a packet runs: the TC hook's side of its
/// device. `Ingress`: on a device's receive side (`from_pod` on a host
/// veth, i.e. from the pod; `from_pod_netkit`, in a netkit pod's transmit
/// path, i.e. also from the pod; `from_uplink`; `from_tunnel`). `Egress`:
/// on its transmit side (`to_tunnel`, `to_pod`, `to_uplink`). Each entry
/// point passes its own, as Cilium's `send_drop_notify(.., direction)`.
/// Not `policy::Direction`, which is the pod's side (its ingress policy is
/// checked on a hook of either kind).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookDirection {
    Ingress = 0,
    Egress = 1,
}

impl HookDirection {
    pub const COUNT: u32 = 2;
    pub const ALL: [HookDirection; Self::COUNT as usize] = [HookDirection::Ingress, HookDirection::Egress];

    /// Stable name: the `direction` label in `status` and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            HookDirection::Ingress => "ingress",
            HookDirection::Egress => "egress",
        }
    }
}

/// Packets and bytes dropped, one slot of `DROP_STATS` (per CPU). Bytes
/// are `skb->len` where the program ran: the Ethernet header included, a
/// GSO packet's whole length.
///
/// Written by the programs' one drop path (`ebpf/src/counters.rs`); read
/// (summed over CPUs) by `status`, metrics and `connectivity-test`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropCount {
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(core::mem::size_of::<DropCount>() == 16);

#[cfg(feature = "user")]
// SAFETY: plain `repr(C)` data with no padding and no invalid bit patterns.
unsafe impl aya::Pod for DropCount {}

/// `DROP_STATS`' slot for `reason` seen in `direction`: the directions of
/// one reason side by side, so a new reason (appended) adds slots at the
/// end and a migration that copies by index keeps every count in place.
pub const fn drop_slot(reason: DropReason, direction: HookDirection) -> u32 {
    reason as u32 * HookDirection::COUNT + direction as u32
}

/// Slots in `DROP_STATS`: every reason in every direction.
pub const DROP_SLOTS: u32 = DropReason::COUNT * HookDirection::COUNT;

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
    /// Pod-bound, but the reply of a flow the node's stack forwarded (and
    /// maybe NATed: a Service, a NodePort, a hostPort), so it goes back
    /// through the stack for conntrack to reverse (see `STACK_FLOWS`).
    StackFlowReply = 4,
    /// Pod to another node's pod, encapsulated: tunnel key set, redirected
    /// to the VXLAN device.
    PodToTunnel = 5,
    /// Decapsulated by the VXLAN device, into a local pod
    /// (`bpf_redirect_peer`).
    TunnelToPod = 6,
    /// For a tunneled peer, but larger than the VXLAN device's MTU (and not
    /// GSO): handed to the stack, which fragments it or, with DF, refuses
    /// it with ICMP "fragmentation needed" naming the device's MTU.
    TunnelTooBig = 7,
    /// Of `PodToTunnel`: encapsulated by `from_pod` itself (outer IPv4,
    /// UDP, VXLAN written in eBPF, out of the uplink with
    /// `bpf_redirect_neigh`), not by the VXLAN device.
    TunnelEncap = 8,
    /// Of `TunnelToPod`: decapsulated by `from_uplink` itself, never seen by
    /// the VXLAN device.
    TunnelDecap = 9,
    /// A pod's IPv6 packet, its source checked (`ENDPOINTS6`, or link-local
    /// / unspecified to a link-scope destination: neighbour discovery,
    /// MLD), handed to the node's stack, which routes it (dual-stack).
    PodIpv6ToStack = 10,
    /// From outside to a Service (`from_uplink`), translated by `NAT4`:
    /// into a local backend, or on to the backend's node.
    UplinkToService = 11,
    /// A Service backend's answer to an outside client, translated back by
    /// `NAT4` and sent out of the uplink.
    ServiceReply = 12,
    /// A pod's IPv6 packet to a pod on the same node (`bpf_redirect_peer`,
    /// hop limit decremented): the twin of `PodToLocalPod`.
    PodToLocalPod6 = 13,
    /// A pod's IPv6 packet to another node's pod, out of the uplink with
    /// `bpf_redirect_neigh` to that node's IPv6 address (`NODE_ROUTES6`):
    /// the twin of `PodToNode`.
    PodToNode6 = 14,
    /// An IPv6 packet from another node's pod, arrived on the uplink, into
    /// a local pod (`bpf_redirect_peer`): the twin of `UplinkToPod`.
    UplinkToPod6 = 15,
    /// Of `PodIpv6ToStack`: for a pod (this node's or another's) but left
    /// to the stack, which answers what a router must: hop limit 1 (time
    /// exceeded), larger than the egress MTU (Packet Too Big), extension
    /// headers or fragments.
    Ipv6RouterToStack = 16,
    /// Of `UplinkToPod`: from another node's own address (not one of its
    /// pods: a NodePort that node translated and SNATed to its address, or
    /// its host network), into a local pod without this node's stack; its
    /// answers remembered in `NODE_FLOWS`.
    NodeToPod = 17,
    /// A local pod's answer to a connection `NodeToPod` carried in
    /// (`NODE_FLOWS`), sent out of the uplink (`bpf_redirect_neigh`, next
    /// hop from the FIB) without this node's stack.
    PodAnswerToNode = 18,
    /// NAT64: a pod's IPv6 packet for `64:ff9b::/96` translated to IPv4
    /// (from its pool address) and handed to the stack on the NAT64
    /// device, which routes and masquerades it.
    PodToNat64 = 19,
    /// NAT64: an IPv4 answer the stack routed into the NAT64 device,
    /// translated to IPv6 and delivered into its pod.
    Nat64ToPod = 20,
}

impl ForwardPath {
    pub const COUNT: u32 = 21;
    pub const ALL: [ForwardPath; Self::COUNT as usize] = [
        ForwardPath::PodToLocalPod,
        ForwardPath::PodToNode,
        ForwardPath::UplinkToPod,
        ForwardPath::ToStack,
        ForwardPath::StackFlowReply,
        ForwardPath::PodToTunnel,
        ForwardPath::TunnelToPod,
        ForwardPath::TunnelTooBig,
        ForwardPath::TunnelEncap,
        ForwardPath::TunnelDecap,
        ForwardPath::PodIpv6ToStack,
        ForwardPath::UplinkToService,
        ForwardPath::ServiceReply,
        ForwardPath::PodToLocalPod6,
        ForwardPath::PodToNode6,
        ForwardPath::UplinkToPod6,
        ForwardPath::Ipv6RouterToStack,
        ForwardPath::NodeToPod,
        ForwardPath::PodAnswerToNode,
        ForwardPath::PodToNat64,
        ForwardPath::Nat64ToPod,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            ForwardPath::PodToLocalPod => "pod_to_local_pod",
            ForwardPath::PodToNode => "pod_to_node",
            ForwardPath::UplinkToPod => "uplink_to_pod",
            ForwardPath::ToStack => "to_stack",
            ForwardPath::StackFlowReply => "stack_flow_reply",
            ForwardPath::PodToTunnel => "pod_to_tunnel",
            ForwardPath::TunnelToPod => "tunnel_to_pod",
            ForwardPath::TunnelTooBig => "tunnel_too_big",
            ForwardPath::TunnelEncap => "tunnel_encap",
            ForwardPath::TunnelDecap => "tunnel_decap",
            ForwardPath::PodIpv6ToStack => "pod_ipv6_to_stack",
            ForwardPath::UplinkToService => "uplink_to_service",
            ForwardPath::ServiceReply => "service_reply",
            ForwardPath::PodToLocalPod6 => "pod_to_local_pod6",
            ForwardPath::PodToNode6 => "pod_to_node6",
            ForwardPath::UplinkToPod6 => "uplink_to_pod6",
            ForwardPath::Ipv6RouterToStack => "ipv6_router_to_stack",
            ForwardPath::NodeToPod => "node_to_pod",
            ForwardPath::PodAnswerToNode => "pod_answer_to_node",
            ForwardPath::PodToNat64 => "pod_to_nat64",
            ForwardPath::Nat64ToPod => "nat64_to_pod",
        }
    }
}

/// What happened to `STACK_FLOWS` and `STACK_FLOWS6` entries; indexes the
/// per-CPU array `STACK_FLOW_STATS`. Written by `to_pod`, `to_uplink`
/// (remember) and `from_pod`, `from_uplink` (forget), and their IPv6 twins;
/// read by `status` and metrics, which derive each table's evictions:
/// remembered − forgotten − entries now. Each table has its own three
/// events (the `*6` ones are `STACK_FLOWS6`'s): evictions derived from one
/// table's entries against both tables' counts would be wrong.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StackFlowEvent {
    /// A reply tuple not yet in the table was inserted.
    Remembered = 0,
    /// An insert failed (the kernel found no room even by evicting): that
    /// flow's replies take the fast path and skip conntrack's reverse NAT.
    InsertFailed = 1,
    /// An entry removed because a pod opened a new connection on its tuple.
    Forgotten = 2,
    /// `Remembered` in `STACK_FLOWS6`.
    Remembered6 = 3,
    /// `InsertFailed` in `STACK_FLOWS6`.
    InsertFailed6 = 4,
    /// `Forgotten` in `STACK_FLOWS6`.
    Forgotten6 = 5,
}

impl StackFlowEvent {
    pub const COUNT: u32 = 6;
    pub const ALL: [StackFlowEvent; Self::COUNT as usize] = [
        StackFlowEvent::Remembered,
        StackFlowEvent::InsertFailed,
        StackFlowEvent::Forgotten,
        StackFlowEvent::Remembered6,
        StackFlowEvent::InsertFailed6,
        StackFlowEvent::Forgotten6,
    ];
    /// One table's events, in the order remembered, insert failed, forgotten.
    pub const IPV4: [StackFlowEvent; 3] =
        [StackFlowEvent::Remembered, StackFlowEvent::InsertFailed, StackFlowEvent::Forgotten];
    pub const IPV6: [StackFlowEvent; 3] =
        [StackFlowEvent::Remembered6, StackFlowEvent::InsertFailed6, StackFlowEvent::Forgotten6];

    pub const fn name(self) -> &'static str {
        match self {
            StackFlowEvent::Remembered => "remembered",
            StackFlowEvent::InsertFailed => "insert_failed",
            StackFlowEvent::Forgotten => "forgotten",
            StackFlowEvent::Remembered6 => "remembered6",
            StackFlowEvent::InsertFailed6 => "insert_failed6",
            StackFlowEvent::Forgotten6 => "forgotten6",
        }
    }
}

/// Entries an LRU table lost to eviction since its counters began:
/// inserted − removed − present, never below zero (the figures are read
/// one after another while the datapath runs).
pub const fn evicted(remembered: u64, forgotten: u64, entries: u64) -> u64 {
    remembered.saturating_sub(forgotten).saturating_sub(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::golden::{check, golden};

    // The contract with pinned `DROPS` / `FORWARDS` maps, `status` and
    // metrics: every variant's number and name. A row never changes. A new
    // variant goes at the end of its enum (and of `ALL`) and gets a row at
    // the end here, with the next number.
    const DROP_REASONS: &[(DropReason, u32, &str)] = &golden!(DropReason {
        Truncated = 0, "truncated";
        SourceSpoofed = 1, "source_spoofed";
        TtlExpired = 2, "ttl_expired";
        NoUplink = 3, "no_uplink";
        HeaderRewrite = 4, "header_rewrite";
        BadIpHeader = 5, "bad_ip_header";
        RedirectFailed = 6, "redirect_failed";
        LookupMismatch = 7, "lookup_mismatch";
        UplinkSourceSpoofed = 8, "uplink_source_spoofed";
        NoTunnel = 9, "no_tunnel";
        TunnelKey = 10, "tunnel_key";
        TunnelSourceSpoofed = 11, "tunnel_source_spoofed";
        TunnelNoRoute = 12, "tunnel_no_route";
        TunnelWrongNode = 13, "tunnel_wrong_node";
        UnknownL3 = 14, "unknown_l3";
        PolicyDeniedIngress = 15, "policy_denied_ingress";
        PolicyDeniedEgress = 16, "policy_denied_egress";
        PolicyPeerUnknown = 17, "policy_peer_unknown";
        PolicyPending = 18, "policy_pending";
        Nat4TableFull = 19, "nat4_table_full";
        Nat4PortExhausted = 20, "nat4_port_exhausted";
        ServiceNoEndpoints = 21, "service_no_endpoints";
        ServiceNoLocalEndpoints = 22, "service_no_local_endpoints";
        LoadBalancerSourceRange = 23, "load_balancer_source_range";
        Nat4Migrating = 24, "nat4_migrating";
        DsrFragNeeded = 25, "dsr_frag_needed";
        DsrOptionRefused = 26, "dsr_option_refused";
        Nat6TableFull = 27, "nat6_table_full";
        Nat6PortExhausted = 28, "nat6_port_exhausted";
        Nat64Unsupported = 29, "nat64_unsupported";
        Nat64NoPoolAddress = 30, "nat64_no_pool_address";
        Nat64NoEndpoint = 31, "nat64_no_endpoint";
    });

    const FORWARD_PATHS: &[(ForwardPath, u32, &str)] = &golden!(ForwardPath {
        PodToLocalPod = 0, "pod_to_local_pod";
        PodToNode = 1, "pod_to_node";
        UplinkToPod = 2, "uplink_to_pod";
        ToStack = 3, "to_stack";
        StackFlowReply = 4, "stack_flow_reply";
        PodToTunnel = 5, "pod_to_tunnel";
        TunnelToPod = 6, "tunnel_to_pod";
        TunnelTooBig = 7, "tunnel_too_big";
        TunnelEncap = 8, "tunnel_encap";
        TunnelDecap = 9, "tunnel_decap";
        PodIpv6ToStack = 10, "pod_ipv6_to_stack";
        UplinkToService = 11, "uplink_to_service";
        ServiceReply = 12, "service_reply";
        PodToLocalPod6 = 13, "pod_to_local_pod6";
        PodToNode6 = 14, "pod_to_node6";
        UplinkToPod6 = 15, "uplink_to_pod6";
        Ipv6RouterToStack = 16, "ipv6_router_to_stack";
        NodeToPod = 17, "node_to_pod";
        PodAnswerToNode = 18, "pod_answer_to_node";
        PodToNat64 = 19, "pod_to_nat64";
        Nat64ToPod = 20, "nat64_to_pod";
    });

    const STACK_FLOW_EVENTS: &[(StackFlowEvent, u32, &str)] = &golden!(StackFlowEvent {
        Remembered = 0, "remembered";
        InsertFailed = 1, "insert_failed";
        Forgotten = 2, "forgotten";
        Remembered6 = 3, "remembered6";
        InsertFailed6 = 4, "insert_failed6";
        Forgotten6 = 5, "forgotten6";
    });

    #[test]
    fn drop_reasons_match_the_golden_table() {
        check(DROP_REASONS, &DropReason::ALL, DropReason::COUNT, |r| r as u32, DropReason::name);
    }

    const DIRECTIONS: &[(HookDirection, u32, &str)] = &golden!(HookDirection {
        Ingress = 0, "ingress";
        Egress = 1, "egress";
    });

    #[test]
    fn directions_match_the_golden_table() {
        check(DIRECTIONS, &HookDirection::ALL, HookDirection::COUNT, |d| d as u32, HookDirection::name);
    }

    /// Slots are dense, unique, and a reason's slots do not move when
    /// reasons are appended (a slot depends only on its own reason).
    #[test]
    fn drop_slots_cover_every_reason_and_direction_once() {
        let mut seen = [false; DROP_SLOTS as usize];
        for r in DropReason::ALL {
            for d in HookDirection::ALL {
                let slot = drop_slot(r, d);
                assert!(slot < DROP_SLOTS, "{r:?} {d:?}: slot {slot}");
                assert!(!seen[slot as usize], "{r:?} {d:?}: slot {slot} twice");
                seen[slot as usize] = true;
            }
        }
        assert!(seen.iter().all(|s| *s));
        assert_eq!(drop_slot(DropReason::Truncated, HookDirection::Egress), 1);
        assert_eq!(drop_slot(DropReason::SourceSpoofed, HookDirection::Ingress), 2);
    }

    #[test]
    fn forward_paths_match_the_golden_table() {
        check(FORWARD_PATHS, &ForwardPath::ALL, ForwardPath::COUNT, |p| p as u32, ForwardPath::name);
    }

    #[test]
    fn stack_flow_events_match_the_golden_table() {
        check(STACK_FLOW_EVENTS, &StackFlowEvent::ALL, StackFlowEvent::COUNT, |e| e as u32, StackFlowEvent::name);
    }

    #[test]
    fn evictions_are_what_went_in_and_neither_left_nor_stayed() {
        assert_eq!(evicted(100, 10, 90), 0);
        assert_eq!(evicted(5000, 10, 1024), 3966);
        // Read while the datapath ran: never negative.
        assert_eq!(evicted(100, 10, 95), 0);
        assert_eq!(evicted(3, 5, 0), 0);
    }
}
