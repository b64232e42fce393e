//! The maps shared with user space. Names, layouts and who writes what are
//! documented on the types in `sluice_common::maps`.
use crate::{fast6::Fast6Scratch, lb6::Lb6Scratch, nat64::Nat64Scratch, stack_flows::Flow6Scratch};
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use sluice_common::{
    lb4_affinity::Lb4AffinityKey,
    lb4_frag::{Frag4Entry, Frag4Key},
    lb4_scratch::Lb4Scratch,
    maps::limits::{
        EVENTS_BYTES, MAX_AFFINITY, MAX_BACKENDS, MAX_ENDPOINTS, MAX_IFACES, MAX_LB4_AFFINITY, MAX_LB4_FRAGS,
        MAX_LB4_SOURCE_RANGES, MAX_NAT4, MAX_NAT6, MAX_NODE_ADDRESSES, MAX_NODE_FLOWS, MAX_NODE_ROUTES, MAX_POLICY_CT,
        MAX_POLICY_IDENTITIES, MAX_POLICY_RULES, MAX_SERVICES, MAX_SOCK_REVERSE, MAX_STACK_FLOWS,
    },
    nat::{Lb4Config, Nat4Counter, Nat4Entry, Nat4Key, SourceRangeKey},
    nat6::{Nat6Entry, Nat6Key, SourceRangeKey6},
    nat64::Nat64Config,
    policy::{
        CtEntry, CtKey, CtKey6, EndpointPolicy, PeerIdentity, PodNameKey, PodPolicy, PolicyKey, PolicyScratch6,
        PolicyState, PolicyValue, POLICY_STAT_SLOTS,
    },
    services::{
        AffinityKey, AffinityValue, Backend, BackendMember, BackendSlot, ReverseKey, ServiceKey, ServiceValue,
        SockLbConfig, SockLbCounter,
    },
    services6::{AffinityKey6, AffinityValue6, Backend6, BackendMember6, ReverseKey6, ServiceKey6},
    DropCount, EndpointInfo, FlowKey, FlowKey6, ForwardPath, NodeConfig, RemoteNode, RemoteNode6, StackFlowEvent,
    TunnelConfig, DROP_SLOTS,
};

/// Whether a lookup found its entry, as a plain scalar. Two presence
/// tests combined (`a.is_none() && b.is_none()`) otherwise compile to an
/// OR of the two map-value pointers, which the verifier refuses (`pointer
/// |= pointer prohibited`); the flag passes through the stack with a
/// volatile store, which the optimiser cannot see through.
#[inline(always)]
pub fn found<T>(entry: Option<&T>) -> bool {
    let mut flag: u8 = entry.is_some() as u8;
    // SAFETY: a local of this frame.
    unsafe {
        core::ptr::write_volatile(&mut flag, flag);
        core::ptr::read_volatile(&flag) != 0
    }
}

#[map]
pub static ENDPOINTS: HashMap<u32, EndpointInfo> = HashMap::with_max_entries(MAX_ENDPOINTS, 0);

/// The IPv6 twin of `ENDPOINTS` (dual-stack): key the address's 16 bytes.
#[map]
pub static ENDPOINTS6: HashMap<[u8; 16], EndpointInfo> = HashMap::with_max_entries(MAX_ENDPOINTS, 0);

#[map]
pub static NODE_ROUTES: LpmTrie<u32, RemoteNode> = LpmTrie::with_max_entries(MAX_NODE_ROUTES, 0);

/// The IPv6 twin of `NODE_ROUTES` (dual-stack, native peers only).
#[map]
pub static NODE_ROUTES6: LpmTrie<[u8; 16], RemoteNode6> = LpmTrie::with_max_entries(MAX_NODE_ROUTES, 0);

/// The IPv6 fast path's working memory (`fast6`), programs only.
#[map]
pub static FAST6_SCRATCH: PerCpuArray<Fast6Scratch> = PerCpuArray::with_max_entries(1, 0);

#[map]
pub static NODE_CONFIG: Array<NodeConfig> = Array::with_max_entries(1, 0);

#[map]
pub static TUNNEL_CONFIG: Array<TunnelConfig> = Array::with_max_entries(1, 0);

#[map]
pub static DROP_STATS: PerCpuArray<DropCount> = PerCpuArray::with_max_entries(DROP_SLOTS, 0);

#[map]
pub static FORWARDS: PerCpuArray<u64> = PerCpuArray::with_max_entries(ForwardPath::COUNT, 0);

#[map]
pub static IFACE_PACKETS: PerCpuHashMap<u32, u64> = PerCpuHashMap::with_max_entries(MAX_IFACES, 0);

#[map]
pub static STACK_FLOWS: LruHashMap<FlowKey, u32> = LruHashMap::with_max_entries(MAX_STACK_FLOWS, 0);

/// Answers of connections from other nodes' addresses that skipped the
/// stack (`node_path`).
#[map]
pub static NODE_FLOWS: LruHashMap<FlowKey, u32> = LruHashMap::with_max_entries(MAX_NODE_FLOWS, 0);

/// The IPv6 twin of `STACK_FLOWS` (`stack_flows`), sized with it.
#[map]
pub static STACK_FLOWS6: LruHashMap<FlowKey6, u32> = LruHashMap::with_max_entries(MAX_STACK_FLOWS, 0);

/// Where the IPv6 programs build a `STACK_FLOWS6` key (`stack_flows`),
/// programs only.
#[map]
pub static FLOW6_SCRATCH: PerCpuArray<Flow6Scratch> = PerCpuArray::with_max_entries(1, 0);

#[map]
pub static STACK_FLOW_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(StackFlowEvent::COUNT, 0);

// One ring buffer per monitor slot (`sluice_common::events`); the names
// are `names::EVENTS`.
#[map]
pub static EVENTS_0: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

#[map]
pub static EVENTS_1: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

#[map]
pub static EVENTS_2: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

#[map]
pub static EVENTS_3: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

#[map]
pub static MONITORS: Array<u32> = Array::with_max_entries(1, 0);

#[map]
pub static SERVICES: HashMap<ServiceKey, ServiceValue> = HashMap::with_max_entries(MAX_SERVICES, 0);

#[map]
pub static BACKENDS: HashMap<BackendSlot, Backend> = HashMap::with_max_entries(MAX_BACKENDS, 0);

#[map]
pub static BACKEND_MEMBERS: HashMap<BackendMember, u32> = HashMap::with_max_entries(MAX_BACKENDS, 0);

#[map]
pub static SOCK_REVERSE: LruHashMap<ReverseKey, ServiceKey> = LruHashMap::with_max_entries(MAX_SOCK_REVERSE, 0);

#[map]
pub static AFFINITY: LruHashMap<AffinityKey, AffinityValue> = LruHashMap::with_max_entries(MAX_AFFINITY, 0);

#[map]
pub static SOCK_LB_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(SockLbCounter::COUNT, 0);

#[map]
pub static NODE_ADDRESSES: HashMap<u32, u32> = HashMap::with_max_entries(MAX_NODE_ADDRESSES, 0);

#[map]
pub static SOCK_LB_CONFIG: Array<SockLbConfig> = Array::with_max_entries(1, 0);

// The IPv6 twins of the socket LB's maps (`sluice_common::services6`).
#[map]
pub static SERVICES6: HashMap<ServiceKey6, ServiceValue> = HashMap::with_max_entries(MAX_SERVICES, 0);

#[map]
pub static BACKENDS6: HashMap<BackendSlot, Backend6> = HashMap::with_max_entries(MAX_BACKENDS, 0);

#[map]
pub static BACKEND_MEMBERS6: HashMap<BackendMember6, u32> = HashMap::with_max_entries(MAX_BACKENDS, 0);

#[map]
pub static SOCK_REVERSE6: LruHashMap<ReverseKey6, ServiceKey6> = LruHashMap::with_max_entries(MAX_SOCK_REVERSE, 0);

#[map]
pub static AFFINITY6: LruHashMap<AffinityKey6, AffinityValue6> = LruHashMap::with_max_entries(MAX_AFFINITY, 0);

// NetworkPolicy (`sluice_common::policy`; who writes and reads each is on
// its name in `sluice_common::maps::names`).
#[map]
pub static POLICY_IDENTITIES: LpmTrie<u32, PeerIdentity> = LpmTrie::with_max_entries(MAX_POLICY_IDENTITIES, 0);

#[map]
pub static POLICY_ENDPOINTS: HashMap<u32, EndpointPolicy> = HashMap::with_max_entries(MAX_ENDPOINTS, 0);

#[map]
pub static POLICY_RULES: LpmTrie<PolicyKey, PolicyValue> = LpmTrie::with_max_entries(MAX_POLICY_RULES, 0);

#[map]
pub static POLICY_STATE: Array<PolicyState> = Array::with_max_entries(1, 0);

#[map]
pub static POLICY_CT: LruHashMap<CtKey, CtEntry> = LruHashMap::with_max_entries(MAX_POLICY_CT, 0);

// Their IPv6 twins (dual-stack): what differs between the families is
// only the address; identities, rules, epoch and counters are shared.
#[map]
pub static POLICY_IDENTITIES6: LpmTrie<[u8; 16], PeerIdentity> = LpmTrie::with_max_entries(MAX_POLICY_IDENTITIES, 0);

#[map]
pub static POLICY_ENDPOINTS6: HashMap<[u8; 16], EndpointPolicy> = HashMap::with_max_entries(MAX_ENDPOINTS, 0);

#[map]
pub static POLICY_CT6: LruHashMap<CtKey6, CtEntry> = LruHashMap::with_max_entries(MAX_POLICY_CT, 0);

#[map]
pub static POLICY_SCRATCH6: PerCpuArray<PolicyScratch6> = PerCpuArray::with_max_entries(1, 0);

/// User space only: no program reads it. An exported `#[map]` static stays
/// in the object all the same (tests/tests/prog/policy_maps.rs checks).
#[map]
pub static POLICY_PODS: HashMap<PodNameKey, PodPolicy> = HashMap::with_max_entries(MAX_ENDPOINTS, 0);

#[map]
pub static POLICY_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(POLICY_STAT_SLOTS, 0);

// Services from outside the cluster (`sluice_common::nat`, `lb4`).
#[map]
pub static NAT4: HashMap<Nat4Key, Nat4Entry> = HashMap::with_max_entries(MAX_NAT4, 0);

#[map]
pub static LB4_CONFIG: Array<Lb4Config> = Array::with_max_entries(1, 0);

#[map]
pub static NAT4_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Nat4Counter::COUNT, 0);

#[map]
pub static LB4_SOURCE_RANGES: LpmTrie<SourceRangeKey, u32> = LpmTrie::with_max_entries(MAX_LB4_SOURCE_RANGES, 0);

/// `sessionAffinity: ClientIP` for clients from outside, per Service port
/// (`lb4_affinity`).
#[map]
pub static LB4_SVC_AFFINITY: LruHashMap<Lb4AffinityKey, AffinityValue> =
    LruHashMap::with_max_entries(MAX_LB4_AFFINITY, 0);

/// The uplink translation's working memory (`Lb4Scratch`).
#[map]
pub static LB4_SCRATCH: PerCpuArray<Lb4Scratch> = PerCpuArray::with_max_entries(1, 0);

/// How each fragmented datagram's first fragment was translated
/// (`lb4_frag`).
#[map]
pub static LB4_FRAGS: LruHashMap<Frag4Key, Frag4Entry> = LruHashMap::with_max_entries(MAX_LB4_FRAGS, 0);

// IPv6 Services from outside the cluster (`sluice_common::nat6`, `lb6`).
#[map]
pub static NAT6: HashMap<Nat6Key, Nat6Entry> = HashMap::with_max_entries(MAX_NAT6, 0);

#[map]
pub static NAT6_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Nat4Counter::COUNT, 0);

/// `LB4_SOURCE_RANGES`' IPv6 twin (`lb6`).
#[map]
pub static LB6_SOURCE_RANGES: LpmTrie<SourceRangeKey6, u32> = LpmTrie::with_max_entries(MAX_LB4_SOURCE_RANGES, 0);

/// This node's own IPv6 addresses (`NODE_ADDRESSES`' twin).
#[map]
pub static NODE_ADDRESSES6: HashMap<[u8; 16], u32> = HashMap::with_max_entries(MAX_NODE_ADDRESSES, 0);

/// The IPv6 uplink translation's working memory (`Lb6Scratch`).
#[map]
pub static LB6_SCRATCH: PerCpuArray<Lb6Scratch> = PerCpuArray::with_max_entries(1, 0);

/// The node's NAT64 (`--nat64`; `sluice_common::nat64`).
#[map]
pub static NAT64_CONFIG: Array<Nat64Config> = Array::with_max_entries(1, 0);

/// The NAT64 translation's working memory (`nat64::Nat64Scratch`),
/// programs only.
#[map]
pub static NAT64_SCRATCH: PerCpuArray<Nat64Scratch> = PerCpuArray::with_max_entries(1, 0);
