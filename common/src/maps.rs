//! Map value types and the names every map is pinned under.
//!
//! Byte order: every IPv4 address in a map key or value is stored in network
//! byte order (`_be` in the field name), exactly as it appears in the packet,
//! so the datapath compares without swapping.

/// Bumped whenever a map's type, key or value layout changes. It is part of
/// the pin directory (`<pin root>/v1/...`): aya reuses a pinned map without
/// checking its layout, so a new layout must never open an old pin.
pub const LAYOUT_VERSION: u32 = 1;

/// Map names, as in the eBPF object and as pin file names under the pin dir.
pub mod names {
    /// `HashMap<u32 pod IPv4 (be), EndpointInfo>`: the pods on this node.
    pub const ENDPOINTS: &str = "ENDPOINTS";
    /// `LpmTrie<u32 IPv4 (be), RemoteNode>`: other nodes' pod CIDRs.
    pub const NODE_ROUTES: &str = "NODE_ROUTES";
    /// `Array<NodeConfig>` with one entry: this node's uplink.
    pub const NODE_CONFIG: &str = "NODE_CONFIG";
    /// `PerCpuArray<u64>` indexed by `DropReason`.
    pub const DROPS: &str = "DROPS";
    /// `PerCpuArray<u64>` indexed by `ForwardPath`.
    pub const FORWARDS: &str = "FORWARDS";
    /// `PerCpuHashMap<u32 ifindex, u64>`: packets seen by `count_packets`.
    pub const IFACE_PACKETS: &str = "IFACE_PACKETS";
}

/// Program names in the eBPF object (also their pin names under `progs/`).
pub mod programs {
    /// Ingress of each pod's host-side veth.
    pub const FROM_POD: &str = "from_pod";
    /// Ingress of the node's uplink.
    pub const FROM_UPLINK: &str = "from_uplink";
    /// Diagnostic: counts packets per interface into `IFACE_PACKETS`.
    pub const COUNT_PACKETS: &str = "count_packets";
}

/// Capacity of each map; `status` reports fill levels against these.
pub mod limits {
    pub const MAX_ENDPOINTS: u32 = 4096;
    pub const MAX_NODE_ROUTES: u32 = 16384;
    pub const MAX_IFACES: u32 = 1024;
}

/// A pod on this node. Key: the pod's IPv4 address (be).
///
/// Written by the CNI plugin on ADD (removed on DEL, and by the agent when it
/// finds the pod gone); read by `from_pod` (anti-spoofing, local delivery) and
/// `from_uplink` (delivery from other nodes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointInfo {
    /// Index of the host-side veth; `bpf_redirect_peer` targets its peer.
    pub host_ifindex: u32,
    /// MAC of the pod's `eth0`: destination MAC written on delivery.
    pub pod_mac: [u8; 6],
    /// MAC of the host-side veth: source MAC written on delivery.
    pub host_mac: [u8; 6],
}
const _: () = assert!(core::mem::size_of::<EndpointInfo>() == 16);

/// Another node's pod CIDR leads here. Key: LPM key over the pod CIDR.
///
/// Written by the agent's route reconciler (peers file or Kubernetes Nodes);
/// read by `from_pod` for cross-node traffic.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RemoteNode {
    /// The node's IPv4 address on the uplink network (be): the next hop.
    pub node_ip_be: u32,
    /// Reserved, zero.
    pub _reserved: u32,
}
const _: () = assert!(core::mem::size_of::<RemoteNode>() == 8);

/// This node's datapath settings, index 0 of `NODE_CONFIG`.
///
/// Written by the agent at start; read by `from_pod`. An `uplink_ifindex` of 0
/// means "not configured yet": cross-node packets are then dropped with
/// `DropReason::NoUplink`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NodeConfig {
    pub uplink_ifindex: u32,
    /// This node's own IPv4 address on the uplink (be).
    pub node_ip_be: u32,
}
const _: () = assert!(core::mem::size_of::<NodeConfig>() == 8);

#[cfg(feature = "user")]
mod pod_impls {
    // SAFETY: plain `repr(C)` data with no padding and no invalid bit patterns.
    unsafe impl aya::Pod for super::EndpointInfo {}
    unsafe impl aya::Pod for super::RemoteNode {}
    unsafe impl aya::Pod for super::NodeConfig {}
}
