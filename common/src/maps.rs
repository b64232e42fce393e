//! Map value types and the names every map is pinned under.
//!
//! Byte order: every IPv4 address in a map key or value is stored in network
//! byte order (`_be` in the field name), exactly as it appears in the packet,
//! so the datapath compares without swapping.

/// Bumped whenever a map's type, key or value layout changes in a way a
/// migration cannot carry. It is part of the pin directory
/// (`<pin root>/v1/...`): aya reuses a pinned map without checking its
/// layout, so a new layout must never open an old pin.
///
/// What a migration carries without a bump (the agent checks every pinned
/// map's shape at start and copies the entries into a new map): another
/// `max_entries`, and a value grown by fields appended at its end whose zero
/// means "not set" (the old bytes are kept, the new ones zero). A key that
/// changes, a value that shrinks or whose fields move, or another map type
/// is refused instead.
pub const LAYOUT_VERSION: u32 = 1;

/// Map names, as in the eBPF object and as pin file names under the pin dir.
pub mod names {
    /// `HashMap<u32 pod IPv4 (be), EndpointInfo>`: the pods on this node.
    pub const ENDPOINTS: &str = "ENDPOINTS";
    /// `HashMap<[u8; 16] pod IPv6, EndpointInfo>`: the pods' IPv6
    /// addresses on a dual-stack node, the twin of `ENDPOINTS` (the same
    /// value as the pod's IPv4 entry). Written by the CNI plugin (ADD, DEL)
    /// and the agent's sweep; read by `from_pod`'s IPv6 path (source
    /// check, same-node fast path), `from_uplink`'s and `to_pod`.
    pub const ENDPOINTS6: &str = "ENDPOINTS6";
    /// `LpmTrie<u32 IPv4 (be), RemoteNode>`: other nodes' pod CIDRs.
    pub const NODE_ROUTES: &str = "NODE_ROUTES";
    /// `LpmTrie<[u8; 16] IPv6, RemoteNode6>`: other nodes' IPv6 pod CIDRs
    /// (dual-stack, native routing), the twin of `NODE_ROUTES`. Written by
    /// the agent's route reconciler from membership's `routes6` (the same
    /// set as its IPv6 kernel routes); read by `from_pod`'s IPv6 path
    /// (cross-node fast path) and `from_uplink`'s (is the source another
    /// node's pod).
    pub const NODE_ROUTES6: &str = "NODE_ROUTES6";
    /// `PerCpuArray` of one: the IPv6 fast path's working memory
    /// (programs only; its layout is the eBPF crate's `fast6::Fast6Scratch`).
    pub const FAST6_SCRATCH: &str = "FAST6_SCRATCH";
    /// `Array<NodeConfig>` with one entry: this node's uplink.
    pub const NODE_CONFIG: &str = "NODE_CONFIG";
    /// `Array<TunnelConfig>` with one entry: this node's VXLAN device.
    pub const TUNNEL_CONFIG: &str = "TUNNEL_CONFIG";
    /// `PerCpuArray<DropCount>` indexed by `drop_slot(reason, direction)`:
    /// packets and bytes dropped.
    pub const DROP_STATS: &str = "DROP_STATS";
    /// Retired: `PerCpuArray<u64>` indexed by `DropReason`, packets only,
    /// with no direction (versions before `DROP_STATS`). No program uses it;
    /// the agent carries a pin of it found at start into `DROP_STATS` and
    /// removes it (`datapath::retired_maps`).
    pub const DROPS: &str = "DROPS";
    /// `PerCpuArray<u64>` indexed by `ForwardPath`.
    pub const FORWARDS: &str = "FORWARDS";
    /// `PerCpuHashMap<u32 ifindex, u64>`: packets seen by `count_packets`.
    pub const IFACE_PACKETS: &str = "IFACE_PACKETS";
    /// `LruHashMap<FlowKey, u32>`: replies of flows the node's stack
    /// forwarded. Sized at load (`--stack-flows-max`, by default the node's
    /// `nf_conntrack_max`), not by the object.
    pub const STACK_FLOWS: &str = "STACK_FLOWS";
    /// `LruHashMap<FlowKey6, u32>`: the IPv6 twin of `STACK_FLOWS` (a
    /// dual-stack node): replies of IPv6 flows the node's stack forwarded
    /// from a pod, written by `to_pod` and `to_uplink`, read by the IPv6
    /// fast path (`from_pod6`, `from_uplink6`). Sized as `STACK_FLOWS`.
    pub const STACK_FLOWS6: &str = "STACK_FLOWS6";
    /// `PerCpuArray` of one: where the IPv6 programs build a `FlowKey6`
    /// (and the `NODE_ROUTES6` key beside it) out of the stack's 512 bytes
    /// (programs only; its layout is the eBPF crate's
    /// `stack_flows::Flow6Scratch`).
    pub const FLOW6_SCRATCH: &str = "FLOW6_SCRATCH";
    /// `LruHashMap<FlowKey, u32>`: the answer tuples (local pod → another
    /// node's address) of connections `from_uplink` carried from another
    /// node's own address into a local pod without the stack
    /// (`node_path`); `from_pod` sends only those answers back without the
    /// stack. Written and read by the programs alone.
    pub const NODE_FLOWS: &str = "NODE_FLOWS";
    /// `PerCpuArray<u64>` indexed by `StackFlowEvent`: inserts, failed
    /// inserts and removals of `STACK_FLOWS` entries, and their `*6` twins for `STACK_FLOWS6`.
    pub const STACK_FLOW_STATS: &str = "STACK_FLOW_STATS";
    /// `RingBuf` of `events::DatapathEvent` per monitor slot: the drops and
    /// traces that slot's monitor subscribed to.
    pub const EVENTS: [&str; crate::events::MONITOR_SLOTS as usize] = ["EVENTS_0", "EVENTS_1", "EVENTS_2", "EVENTS_3"];
    /// `Array<u32>` with one entry: which monitor slots want which events
    /// (`events::drop_bit`, `events::trace_bit`); 0 while none runs.
    pub const MONITORS: &str = "MONITORS";
    /// Retired, with transient content (nothing to carry over): `EVENTS`,
    /// the one ring buffer every monitor shared, and `MONITOR`, its trace
    /// switch (versions before the per-monitor ring buffers);
    /// `LB4_AFFINITY`, outside clients' backends per frontend (before
    /// `LB4_SVC_AFFINITY`: soft state, each client's next new connection
    /// picks afresh). The agent removes their pins at start
    /// (`datapath::retired_maps`).
    pub const RETIRED_TRANSIENT: [&str; 3] = ["EVENTS", "MONITOR", "LB4_AFFINITY"];
    /// `HashMap<ServiceKey, ServiceValue>`: Services' frontends (socket LB).
    pub const SERVICES: &str = "SERVICES";
    /// `HashMap<BackendSlot, Backend>`: each backend set's backends.
    pub const BACKENDS: &str = "BACKENDS";
    /// `HashMap<BackendMember, u32 slot>`: membership test for affinity.
    pub const BACKEND_MEMBERS: &str = "BACKEND_MEMBERS";
    /// `LruHashMap<ReverseKey, ServiceKey>`: what a translated socket asked
    /// for, reported back by `recvmsg()` and `getpeername()`.
    pub const SOCK_REVERSE: &str = "SOCK_REVERSE";
    /// `LruHashMap<AffinityKey, AffinityValue>`: `sessionAffinity: ClientIP`.
    pub const AFFINITY: &str = "AFFINITY";
    /// `PerCpuArray<u64>` indexed by `services::SockLbCounter`.
    pub const SOCK_LB_STATS: &str = "SOCK_LB_STATS";
    /// `HashMap<u32 IPv4 (be), u32>`: the node addresses a NodePort answers
    /// on, this node's (`services::NODE_ADDRESS_LOCAL`) and the other
    /// nodes' (`NODE_ADDRESS_REMOTE`). The Services loop writes it; the
    /// socket programs read it when an address missed in `SERVICES`.
    pub const NODE_ADDRESSES: &str = "NODE_ADDRESSES";
    /// `Array<services::SockLbConfig>` with one entry: the node's network
    /// namespace (loopback NodePorts). The Services loop writes it.
    pub const SOCK_LB_CONFIG: &str = "SOCK_LB_CONFIG";
    /// `HashMap<ServiceKey6, ServiceValue>`: IPv6 Services' frontends
    /// (the twin of `SERVICES`, `services6`).
    pub const SERVICES6: &str = "SERVICES6";
    /// `HashMap<BackendSlot, Backend6>`: each IPv6 backend set's backends.
    pub const BACKENDS6: &str = "BACKENDS6";
    /// `HashMap<BackendMember6, u32 slot>`: membership test for affinity.
    pub const BACKEND_MEMBERS6: &str = "BACKEND_MEMBERS6";
    /// `LruHashMap<ReverseKey6, ServiceKey6>`: what a translated IPv6
    /// socket asked for.
    pub const SOCK_REVERSE6: &str = "SOCK_REVERSE6";
    /// `LruHashMap<AffinityKey6, AffinityValue6>`: `sessionAffinity:
    /// ClientIP` on IPv6 frontends.
    pub const AFFINITY6: &str = "AFFINITY6";
    /// `LpmTrie<u32 IPv4 (be), policy::PeerIdentity>`: what a peer address
    /// is, for NetworkPolicy (agent writes; programs read per new
    /// connection).
    pub const POLICY_IDENTITIES: &str = "POLICY_IDENTITIES";
    /// `HashMap<u32 local pod IPv4 (be), policy::EndpointPolicy>`: a local
    /// pod's isolation and rule set (agent, CNI ADD write; programs read).
    pub const POLICY_ENDPOINTS: &str = "POLICY_ENDPOINTS";
    /// `LpmTrie<policy::PolicyKey, policy::PolicyValue>`: allow entries.
    pub const POLICY_RULES: &str = "POLICY_RULES";
    /// `Array<policy::PolicyState>` with one entry: epoch, service CIDR.
    pub const POLICY_STATE: &str = "POLICY_STATE";
    /// `LruHashMap<policy::CtKey, policy::CtEntry>`: allowed connections
    /// (programs write; agent GC removes idle ones).
    pub const POLICY_CT: &str = "POLICY_CT";
    /// The IPv6 twins (dual-stack, issue 28): `LpmTrie<[u8; 16] IPv6,
    /// policy::PeerIdentity>` (the same identities: a pod's IPv6 carries
    /// its IPv4's), `HashMap<[u8; 16] local pod IPv6, policy::EndpointPolicy>`
    /// (the same entry as its IPv4's), `LruHashMap<policy::CtKey6,
    /// policy::CtEntry>`. `POLICY_RULES`, `POLICY_STATE` and `POLICY_STATS`
    /// serve both families.
    pub const POLICY_IDENTITIES6: &str = "POLICY_IDENTITIES6";
    pub const POLICY_ENDPOINTS6: &str = "POLICY_ENDPOINTS6";
    pub const POLICY_CT6: &str = "POLICY_CT6";
    /// `PerCpuArray<policy::PolicyScratch6>` of one: the IPv6 judgement's
    /// working memory (programs only).
    pub const POLICY_SCRATCH6: &str = "POLICY_SCRATCH6";
    /// `HashMap<policy::PodNameKey, policy::PodPolicy>`: user space only
    /// (agent writes, the CNI plugin reads at ADD). In the object (and
    /// pinned, migrated) like every map: no program reads it, and
    /// tests/tests/prog/policy_maps.rs checks the linker kept it.
    pub const POLICY_PODS: &str = "POLICY_PODS";
    /// `PerCpuArray<u64>` indexed by `policy::policy_stat_slot`: verdicts
    /// by direction.
    pub const POLICY_STATS: &str = "POLICY_STATS";
    /// `HashMap<nat::Nat4Key, nat::Nat4Entry>`: connections from outside
    /// to Services, both halves (`from_uplink` writes; `from_pod` and
    /// `from_uplink` read; the agent's GC removes idle pairs).
    pub const NAT4: &str = "NAT4";
    /// `Array<nat::Lb4Config>` with one entry: on/off and the SNAT port
    /// range (agent writes at start).
    pub const LB4_CONFIG: &str = "LB4_CONFIG";
    /// `PerCpuArray<u64>` indexed by `nat::Nat4Counter`.
    pub const NAT4_STATS: &str = "NAT4_STATS";
    /// `HashMap<nat6::Nat6Key, nat6::Nat6Entry>`: `NAT4`'s twin for IPv6
    /// Services from outside on a dual-stack node (`from_uplink` writes;
    /// `from_pod` and `from_uplink` read; the agent's GC removes idle
    /// pairs). Sized as `NAT4`.
    pub const NAT6: &str = "NAT6";
    /// `PerCpuArray<u64>` indexed by `nat::Nat4Counter`: `NAT6`'s counts.
    pub const NAT6_STATS: &str = "NAT6_STATS";
    /// `HashMap<[u8; 16], u32>`: `NODE_ADDRESSES`' IPv6 twin, this node's
    /// own IPv6 addresses (`services::NODE_ADDRESS_LOCAL`), on which
    /// `from_uplink` answers an IPv6 NodePort (agent writes).
    pub const NODE_ADDRESSES6: &str = "NODE_ADDRESSES6";
    /// `PerCpuArray` of one: the IPv6 uplink translation's working memory
    /// (programs only; its layout is the eBPF crate's `lb6::Lb6Scratch`).
    pub const LB6_SCRATCH: &str = "LB6_SCRATCH";
    /// `LpmTrie<nat::SourceRangeKey, u32>`: LoadBalancer ingress IPs'
    /// `loadBalancerSourceRanges` (agent writes; `from_uplink` reads).
    pub const LB4_SOURCE_RANGES: &str = "LB4_SOURCE_RANGES";
    /// `LpmTrie<nat6::SourceRangeKey6, u32>`: its IPv6 twin, the IPv6
    /// ranges of IPv6 LoadBalancer ingress IPs (agent writes;
    /// `from_uplink`'s `lb6` reads).
    pub const LB6_SOURCE_RANGES: &str = "LB6_SOURCE_RANGES";
    /// `LruHashMap<lb4_affinity::Lb4AffinityKey, services::AffinityValue>`:
    /// `sessionAffinity: ClientIP` for clients from outside, the backend
    /// each (client address, Service port) last got (`from_uplink` writes
    /// and reads; least recently used entries make room). It replaced
    /// `LB4_AFFINITY`, keyed by (client address, frontend): another key,
    /// so another name (`RETIRED_TRANSIENT`).
    pub const LB4_SVC_AFFINITY: &str = "LB4_SVC_AFFINITY";
    /// `PerCpuArray<lb4_scratch::Lb4Scratch>` of one: the uplink
    /// translation's working memory (programs only).
    pub const LB4_SCRATCH: &str = "LB4_SCRATCH";
    /// `LruHashMap<lb4_frag::Frag4Key, lb4_frag::Frag4Entry>`: how the
    /// first fragment of a datagram was translated at the uplink, for its
    /// later fragments (`from_uplink` and `from_pod` write and read).
    pub const LB4_FRAGS: &str = "LB4_FRAGS";
    /// `Array<nat64::Nat64Config>` with one entry: the node's NAT64
    /// (`--nat64`; all zero when off). The agent writes it at start;
    /// `from_pod`'s IPv6 path and `to_nat64` read it.
    pub const NAT64_CONFIG: &str = "NAT64_CONFIG";
    /// `PerCpuArray` of one: the NAT64 translation's working memory
    /// (programs only; its layout is the eBPF crate's
    /// `nat64::Nat64Scratch`).
    pub const NAT64_SCRATCH: &str = "NAT64_SCRATCH";
}

/// Program names in the eBPF object (also their pin names under `progs/`).
pub mod programs {
    /// Ingress of each pod's host-side veth.
    pub const FROM_POD: &str = "from_pod";
    /// The same for a netkit pod: its peer program, in the pod's transmit
    /// path (local delivery by `bpf_redirect`, as `bpf_redirect_peer`
    /// works only at TC ingress).
    pub const FROM_POD_NETKIT: &str = "from_pod_netkit";
    /// Ingress of the node's uplink.
    pub const FROM_UPLINK: &str = "from_uplink";
    /// Ingress of the node's VXLAN device: decapsulated packets.
    pub const FROM_TUNNEL: &str = "from_tunnel";
    /// Egress of the node's VXLAN device: what the stack routes to a
    /// tunneled peer gets its tunnel key.
    pub const TO_TUNNEL: &str = "to_tunnel";
    /// Diagnostic: counts packets per interface into `IFACE_PACKETS`.
    pub const COUNT_PACKETS: &str = "count_packets";
    /// Egress of each pod's host-side device: what the stack sends a pod.
    pub const TO_POD: &str = "to_pod";
    /// Egress of the node's uplink: what the stack sends out.
    pub const TO_UPLINK: &str = "to_uplink";
    /// Egress of the node's NAT64 device (`--nat64`): IPv4 answers routed
    /// to a pool address, translated to IPv6 and delivered into the pod.
    pub const TO_NAT64: &str = "to_nat64";
    /// cgroup `connect4`: a socket connecting to a Service's cluster IP.
    /// (The IPv4 programs have no `4` in their names: their links were
    /// pinned under these names before the IPv6 twins existed.)
    pub const SOCK_CONNECT: &str = "sock_connect";
    /// cgroup `connect6`: the same for an IPv6 socket and a v4-mapped
    /// cluster IP (`::ffff:10.96.0.10`).
    pub const SOCK_CONNECT6: &str = "sock_connect6";
    /// cgroup `sendmsg4`: an unconnected UDP datagram to a cluster IP.
    pub const SOCK_SENDMSG: &str = "sock_sendmsg";
    /// cgroup `sendmsg6`: the same to a native IPv6 Service address (the
    /// kernel hands an IPv6 socket's datagram to a v4-mapped address to
    /// the IPv4 path, where `sock_sendmsg` runs).
    pub const SOCK_SENDMSG6: &str = "sock_sendmsg6";
    /// cgroup `recvmsg4`: a reply's source shown as the cluster IP.
    pub const SOCK_RECVMSG: &str = "sock_recvmsg";
    /// cgroup `recvmsg6`: the same, v4-mapped.
    pub const SOCK_RECVMSG6: &str = "sock_recvmsg6";
    /// cgroup `getpeername4`: a translated socket's peer shown as the cluster IP.
    pub const SOCK_GETPEERNAME: &str = "sock_getpeername";
    /// cgroup `getpeername6`: the same, v4-mapped.
    pub const SOCK_GETPEERNAME6: &str = "sock_getpeername6";
}

/// `skb->mark` bit the fast path sets on packets it redirects out of the
/// uplink, so `to_uplink` tells them from packets the stack sends (and
/// clears it). Clear of kube-proxy's 0x4000/0x8000 and Docker's marks.
pub const FAST_PATH_MARK: u32 = 0x0020_0000;

/// Socket mark (`SO_MARK`, which takes `CAP_NET_ADMIN`) of a socket the
/// socket load balancer leaves alone: `connect()`/`sendmsg()` go where
/// they name, as from a client outside the cluster. `connectivity-test`'s
/// `world-to-nodeport` probe sets it, so its connection reaches the node
/// on the wire and the uplink's NodePort path answers, though the probing
/// process sits in a cgroup the socket programs cover. Clear of
/// `FAST_PATH_MARK`, kube-proxy's 0x4000/0x8000 and Docker's marks.
pub const SOCK_LB_BYPASS_MARK: u32 = 0x0040_0000;

/// Capacity of each map; `status` reports fill levels against these.
pub mod limits {
    pub const MAX_ENDPOINTS: u32 = 4096;
    pub const MAX_NODE_ROUTES: u32 = 16384;
    pub const MAX_IFACES: u32 = 1024;
    /// Flows the stack forwarded whose replies must return through it;
    /// least recently used entries make room. The object's size; the agent
    /// sizes the map at load (`--stack-flows-max`, or the node's
    /// `nf_conntrack_max` clamped to `MIN_STACK_FLOWS..=MAX_STACK_FLOWS_CAP`).
    pub const MAX_STACK_FLOWS: u32 = 65536;
    /// The least the agent sizes `STACK_FLOWS` from `nf_conntrack_max`.
    pub const MIN_STACK_FLOWS: u32 = 65536;
    /// The most: 2^20 entries, about 80 MB of kernel memory (an LRU hash
    /// is preallocated whole).
    pub const MAX_STACK_FLOWS_CAP: u32 = 1 << 20;
    /// Connections from other nodes' addresses into local pods whose
    /// answers skip the stack (`NODE_FLOWS`); least recently used entries
    /// make room (an evicted connection's answers go through the stack,
    /// which picks the TCP connection up mid-stream).
    pub const MAX_NODE_FLOWS: u32 = 65536;
    /// Bytes of each monitor slot's events ring buffer (a power of two,
    /// pages): about 2,700 events of 96 bytes with its header.
    pub const EVENTS_BYTES: u32 = 256 * 1024;
    /// `loadBalancerSourceRanges` entries (frontend × range).
    pub const MAX_LB4_SOURCE_RANGES: u32 = 16384;
    /// Service frontends (cluster IP × port × protocol).
    pub const MAX_SERVICES: u32 = 65536;
    /// Backends over all sets; a change holds old and new set for a moment.
    pub const MAX_BACKENDS: u32 = 262144;
    /// Translated sockets remembered for `recvmsg()` / `getpeername()`.
    pub const MAX_SOCK_REVERSE: u32 = 262144;
    /// (client namespace, Service) pairs with session affinity.
    pub const MAX_AFFINITY: u32 = 65536;
    /// (outside client address, Service port) pairs with session affinity
    /// at the uplink; least recently used make room.
    pub const MAX_LB4_AFFINITY: u32 = 65536;
    /// Fragmented datagrams in flight through the uplink's translation;
    /// least recently used make room.
    pub const MAX_LB4_FRAGS: u32 = 16384;
    /// Node addresses NodePorts answer on (every node's InternalIP and
    /// this node's own addresses).
    pub const MAX_NODE_ADDRESSES: u32 = 16384;
    /// Prefixes in `POLICY_IDENTITIES`: pods, nodes, the cluster CIDR,
    /// ipBlocks' CIDRs and excepts.
    pub const MAX_POLICY_IDENTITIES: u32 = 65536;
    /// Allow entries in `POLICY_RULES` over every local pod's rule set (a
    /// change holds old and new set for a moment).
    pub const MAX_POLICY_RULES: u32 = 262144;
    /// Connections `POLICY_CT` remembers; least recently used make room.
    pub const MAX_POLICY_CT: u32 = 262144;
    /// `NAT4` entries: two per connection from outside to a Service. A
    /// plain hash: full, it refuses new connections (never evicts).
    pub const MAX_NAT4: u32 = 262144;
    /// `NAT6` entries: as `NAT4` (and sized with it by `--nat4-entries`).
    pub const MAX_NAT6: u32 = MAX_NAT4;
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
    /// The node's IPv4 address on the uplink network (be): the next hop,
    /// or the outer destination when tunneled.
    pub node_ip_be: u32,
    /// `REMOTE_NODE_*` bits. Was a reserved zero before VXLAN (issue 15):
    /// programs of that version ignore it, so giving it a meaning needed no
    /// `LAYOUT_VERSION` bump (same size; 0 keeps meaning native routing).
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<RemoteNode>() == 8);

/// Another node's IPv6 pod CIDR leads here: the value of `NODE_ROUTES6`
/// (key: LPM key over the CIDR's 16 bytes), the twin of `RemoteNode`.
///
/// Written by the agent's route reconciler (membership's `routes6`); read
/// by `from_pod`'s IPv6 path and `from_uplink`'s. A peer reached through
/// VXLAN (issue 28: IPv6 inside the IPv4 underlay) has its entry flagged
/// `REMOTE_NODE_VXLAN`, with its IPv4 node address IPv4-mapped
/// (`::ffff:a.b.c.d`) in `node_ip6`: `from_pod6` leaves its pods' IPv6 to
/// the stack (the kernel route encapsulates it), and `from_tunnel` checks
/// that IPv6 coming out of the tunnel was sent by that address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RemoteNode6 {
    /// The node's IPv6 address on the uplink network: the next hop
    /// `bpf_redirect_neigh` resolves (neighbour discovery); with
    /// `REMOTE_NODE_VXLAN`, its IPv4 address, IPv4-mapped.
    pub node_ip6: [u8; 16],
    /// `REMOTE_NODE_*` bits (0 before issue 28's IPv6 over VXLAN: same
    /// size, 0 keeps meaning native, so no `LAYOUT_VERSION` bump).
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<RemoteNode6>() == 20);

/// `RemoteNode::flags`: reach this node through the VXLAN device
/// (`NODE_CONFIG` says which), encapsulated to `node_ip_be`, instead of
/// routing natively out of the uplink.
pub const REMOTE_NODE_VXLAN: u32 = 1;

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
    /// This node's pod CIDR (network, be) and prefix length: what the CNI
    /// plugin checks its conflist's `podCIDR` against (a stale conflist
    /// would hand out addresses no node routes here). Appended to the
    /// 8-byte value of earlier versions (a migration carries their entry
    /// over with these zero, "not recorded", until the agent writes them);
    /// the programs do not read them.
    pub pod_cidr_be: u32,
    pub pod_cidr_prefix_len: u32,
    /// How this node attaches its TC programs, decided once at start
    /// (`--attach`): `ATTACH_TCX` (0, also what a migrated entry of an
    /// earlier version reads: those attached with TCX only) or `ATTACH_TC`
    /// (legacy tc, `clsact` + `cls_bpf`, for kernels before 6.6). The CNI
    /// plugin attaches each new pod's programs the same way; the programs
    /// do not read it. Appended like the pod CIDR.
    pub attach_mode: u32,
    /// This node's IPv6 pod CIDR (network, network byte order) and prefix
    /// length, on a dual-stack node (`--ip-family dual`); prefix 0 (also
    /// what a migrated entry of an earlier version reads) means IPv4-only.
    /// The CNI plugin checks its conflist's `podCIDR6` against it; the
    /// programs read only whether it is set (`dual_stack`): then a pod's
    /// IPv6 is source-checked against `ENDPOINTS6` and handed to the
    /// stack, otherwise it is dropped as `unknown_l3` as before. Appended.
    pub pod_cidr6: [u8; 16],
    pub pod_cidr6_prefix_len: u32,
}
const _: () = assert!(core::mem::size_of::<NodeConfig>() == 40);

impl NodeConfig {
    /// Is this a dual-stack node (an IPv6 pod CIDR recorded)?
    pub const fn dual_stack(&self) -> bool {
        self.pod_cidr6_prefix_len != 0
    }
}

/// `NodeConfig::attach_mode`: TCX links (Linux 6.6+).
pub const ATTACH_TCX: u32 = 0;
/// `NodeConfig::attach_mode`: legacy tc filters (`clsact` + `cls_bpf`
/// direct-action), where TCX is missing.
pub const ATTACH_TC: u32 = 1;

/// This node's VXLAN device, index 0 of `TUNNEL_CONFIG` (a map of its own
/// rather than a field of `NodeConfig`, whose size a pinned map fixes).
///
/// Written by the agent at start, once the device exists; read by
/// `from_pod` for peers flagged `REMOTE_NODE_VXLAN`. A `vxlan_ifindex` of 0
/// means no device: such packets are dropped with `DropReason::NoTunnel`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TunnelConfig {
    pub vxlan_ifindex: u32,
    /// The device's MTU: the largest inner IPv4 packet it carries without
    /// fragmenting the outer one. Larger ones go to the stack (it sends
    /// the pod ICMP "fragmentation needed" for DF packets).
    pub mtu: u32,
}
const _: () = assert!(core::mem::size_of::<TunnelConfig>() == 8);

/// The VNI sluice's packets carry. The device is in external (collect_md)
/// mode, which takes any VNI on receive; one fixed value keeps captures
/// readable.
pub const TUNNEL_VNI: u32 = 1;

/// The UDP port of the VXLAN device (Linux's and Flannel's default, not
/// IANA's 4789).
pub const TUNNEL_PORT: u16 = 8472;

/// Bytes VXLAN adds to a packet over IPv4: outer IPv4 (20), UDP (8),
/// VXLAN (8), inner Ethernet (14).
pub const TUNNEL_OVERHEAD: u32 = 50;

/// Bytes VXLAN adds to a packet over IPv6 (an IPv6-only node's underlay):
/// outer IPv6 (40), UDP (8), VXLAN (8), inner Ethernet (14).
pub const TUNNEL_OVERHEAD6: u32 = 70;

/// One direction of a flow: the key of `STACK_FLOWS`.
///
/// Written by `to_pod` and `to_uplink` when the node's stack sends a packet
/// from a pod (it went through the stack: forwarded, perhaps DNATed by
/// kube-proxy or portmap): the key is that packet's *reply* tuple. Read by
/// `from_pod` and `from_uplink`, which hand a packet whose tuple is there to
/// the stack instead of the fast path, so conntrack reverses the NAT.
/// Ports are 0 for protocols without them.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowKey {
    pub src_be: u32,
    pub dst_be: u32,
    pub src_port_be: u16,
    pub dst_port_be: u16,
    pub protocol: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 16);

impl FlowKey {
    /// The tuple a reply to this packet carries.
    pub const fn reversed(self) -> FlowKey {
        FlowKey {
            src_be: self.dst_be,
            dst_be: self.src_be,
            src_port_be: self.dst_port_be,
            dst_port_be: self.src_port_be,
            protocol: self.protocol,
            _pad: [0; 3],
        }
    }
}

/// The IPv6 twin of `FlowKey`: one direction of an IPv6 flow, the key of
/// `STACK_FLOWS6`, written and read as `FlowKey` is (addresses as in the
/// packet; ports 0 for protocols without them).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowKey6 {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub src_port_be: u16,
    pub dst_port_be: u16,
    pub protocol: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<FlowKey6>() == 40);

impl FlowKey6 {
    /// The tuple a reply to this packet carries.
    pub const fn reversed(self) -> FlowKey6 {
        FlowKey6 {
            src: self.dst,
            dst: self.src,
            src_port_be: self.dst_port_be,
            dst_port_be: self.src_port_be,
            protocol: self.protocol,
            _pad: [0; 3],
        }
    }
}

#[cfg(feature = "user")]
mod pod_impls {
    // SAFETY: plain `repr(C)` data with no padding and no invalid bit patterns.
    unsafe impl aya::Pod for super::EndpointInfo {}
    unsafe impl aya::Pod for super::RemoteNode {}
    unsafe impl aya::Pod for super::RemoteNode6 {}
    unsafe impl aya::Pod for super::NodeConfig {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowKey6 {}
    unsafe impl aya::Pod for super::TunnelConfig {}
}
