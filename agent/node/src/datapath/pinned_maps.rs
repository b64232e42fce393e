//! Typed access to the pinned maps, for the agent, the CNI plugin and tests.
//! Opening by pin means any process (a CNI call, `status`) sees the live maps.
use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
};

use anyhow::{Context, Result};
use aya::maps::{
    lpm_trie::{Key, LpmTrie},
    Array, HashMap, Map, MapData, PerCpuArray, PerCpuHashMap,
};
use ipnetwork::{Ipv4Network, Ipv6Network};
use sluice_common::{
    drop_slot,
    maps::{limits, names, REMOTE_NODE_VXLAN},
    nat64::Nat64Config,
    DropCount, DropReason, EndpointInfo, ForwardPath, HookDirection, NodeConfig, RemoteNode, RemoteNode6,
    StackFlowEvent, TunnelConfig, DROP_SLOTS,
};

use super::pins::PinDir;

pub(crate) fn open(pins: &PinDir, name: &str) -> Result<Map> {
    let path = pins.map(name);
    let data = MapData::from_pin(&path)
        .with_context(|| format!("open pinned map {} (is the agent running on this node?)", path.display()))?;
    Map::from_map_data(data).with_context(|| format!("map {name}"))
}

/// A delete whose key was already gone counts as done.
pub(crate) fn removed_or_absent(result: Result<(), aya::maps::MapError>) -> Result<(), aya::maps::MapError> {
    match result {
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

/// True when an insert failed because the map has no room: hash and LRU
/// maps say `E2BIG`, an LPM trie says `ENOSPC` (`trie_update_elem`).
fn is_full(e: &aya::maps::MapError) -> bool {
    matches!(e, aya::maps::MapError::SyscallError(s)
        if matches!(s.io_error.raw_os_error(), Some(libc::E2BIG) | Some(libc::ENOSPC)))
}

/// The error of a failed insert: a full map is named, with its size.
pub(crate) fn insert_error(e: aya::maps::MapError, map: &str, max: u32, what: String) -> anyhow::Error {
    if is_full(&e) {
        anyhow::Error::new(MapFull { map: map.to_string(), max }).context(what)
    } else {
        anyhow::Error::new(e).context(what)
    }
}

/// A map with no room for one more entry.
#[derive(Debug, thiserror::Error)]
#[error("map {map} is full ({max} entries)")]
pub struct MapFull {
    pub map: String,
    pub max: u32,
}

pub fn ip_be(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

pub fn ip_from_be(v: u32) -> Ipv4Addr {
    Ipv4Addr::from(v.to_ne_bytes())
}

/// `ENDPOINTS`: pod IP → where the pod is.
pub struct Endpoints(HashMap<MapData, u32, EndpointInfo>);

impl Endpoints {
    pub fn open(pins: &PinDir) -> Result<Self> {
        Ok(Self(open(pins, names::ENDPOINTS)?.try_into()?))
    }

    pub fn insert(&mut self, ip: Ipv4Addr, ep: EndpointInfo) -> Result<()> {
        self.0
            .insert(ip_be(ip), ep, 0)
            .map_err(|e| insert_error(e, names::ENDPOINTS, limits::MAX_ENDPOINTS, format!("insert endpoint {ip}")))
    }

    /// Remove; an absent entry counts as removed.
    pub fn remove(&mut self, ip: Ipv4Addr) -> Result<()> {
        removed_or_absent(self.0.remove(&ip_be(ip))).with_context(|| format!("remove endpoint {ip}"))
    }

    pub fn get(&self, ip: Ipv4Addr) -> Option<EndpointInfo> {
        self.0.get(&ip_be(ip), 0).ok()
    }

    pub fn all(&self) -> Result<BTreeMap<Ipv4Addr, EndpointInfo>> {
        let mut out = BTreeMap::new();
        for kv in self.0.iter() {
            let (k, v) = kv.context("read ENDPOINTS")?;
            out.insert(ip_from_be(k), v);
        }
        Ok(out)
    }
}

/// `ENDPOINTS6`: pod IPv6 → where the pod is (dual-stack; the twin of
/// `Endpoints`, the same value as the pod's IPv4 entry).
pub struct Endpoints6(HashMap<MapData, [u8; 16], EndpointInfo>);

impl Endpoints6 {
    pub fn open(pins: &PinDir) -> Result<Self> {
        Ok(Self(open(pins, names::ENDPOINTS6)?.try_into()?))
    }

    pub fn insert(&mut self, ip: std::net::Ipv6Addr, ep: EndpointInfo) -> Result<()> {
        self.0
            .insert(ip.octets(), ep, 0)
            .map_err(|e| insert_error(e, names::ENDPOINTS6, limits::MAX_ENDPOINTS, format!("insert endpoint {ip}")))
    }

    /// Remove; an absent entry counts as removed.
    pub fn remove(&mut self, ip: std::net::Ipv6Addr) -> Result<()> {
        removed_or_absent(self.0.remove(&ip.octets())).with_context(|| format!("remove endpoint {ip}"))
    }

    pub fn get(&self, ip: std::net::Ipv6Addr) -> Option<EndpointInfo> {
        self.0.get(&ip.octets(), 0).ok()
    }

    pub fn all(&self) -> Result<BTreeMap<std::net::Ipv6Addr, EndpointInfo>> {
        let mut out = BTreeMap::new();
        for kv in self.0.iter() {
            let (k, v) = kv.context("read ENDPOINTS6")?;
            out.insert(std::net::Ipv6Addr::from(k), v);
        }
        Ok(out)
    }
}

/// `NODE_ROUTES`: other nodes' pod CIDRs → node IP.
pub struct NodeRoutes(LpmTrie<MapData, u32, RemoteNode>);

impl NodeRoutes {
    pub fn open(pins: &PinDir) -> Result<Self> {
        Ok(Self(open(pins, names::NODE_ROUTES)?.try_into()?))
    }

    fn key(cidr: Ipv4Network) -> Key<u32> {
        Key::new(cidr.prefix() as u32, ip_be(cidr.network()))
    }

    pub fn all(&self) -> Result<BTreeMap<Ipv4Network, Ipv4Addr>> {
        let mut out = BTreeMap::new();
        for kv in self.0.iter() {
            let (k, v) = kv.context("read NODE_ROUTES")?;
            let cidr = Ipv4Network::new(ip_from_be(k.data()), k.prefix_len() as u8)
                .context("NODE_ROUTES holds an invalid prefix")?;
            out.insert(cidr, ip_from_be(v.node_ip_be));
        }
        Ok(out)
    }

    /// Every route with its node IP and whether it is tunneled
    /// (`REMOTE_NODE_VXLAN`).
    pub fn all_hops(&self) -> Result<BTreeMap<Ipv4Network, (Ipv4Addr, bool)>> {
        let mut out = BTreeMap::new();
        for kv in self.0.iter() {
            let (k, v) = kv.context("read NODE_ROUTES")?;
            let cidr = Ipv4Network::new(ip_from_be(k.data()), k.prefix_len() as u8)
                .context("NODE_ROUTES holds an invalid prefix")?;
            out.insert(cidr, (ip_from_be(v.node_ip_be), v.flags & REMOTE_NODE_VXLAN != 0));
        }
        Ok(out)
    }

    /// A native route (not tunneled).
    pub fn upsert(&mut self, cidr: Ipv4Network, node_ip: Ipv4Addr) -> Result<()> {
        self.upsert_hop(cidr, node_ip, false)
    }

    pub fn upsert_hop(&mut self, cidr: Ipv4Network, node_ip: Ipv4Addr, vxlan: bool) -> Result<()> {
        let flags = if vxlan { REMOTE_NODE_VXLAN } else { 0 };
        let value = RemoteNode { node_ip_be: ip_be(node_ip), flags };
        self.0.insert(&Self::key(cidr), value, 0).map_err(|e| {
            insert_error(e, names::NODE_ROUTES, limits::MAX_NODE_ROUTES, format!("insert route {cidr} via {node_ip}"))
        })
    }

    pub fn remove(&mut self, cidr: Ipv4Network) -> Result<()> {
        removed_or_absent(self.0.remove(&Self::key(cidr))).with_context(|| format!("remove route {cidr}"))
    }
}

/// `NODE_ROUTES6`: other nodes' IPv6 pod CIDRs → their IPv6 node address
/// (dual-stack, native peers), the twin of `NodeRoutes`.
pub struct NodeRoutes6(LpmTrie<MapData, [u8; 16], RemoteNode6>);

impl NodeRoutes6 {
    pub fn open(pins: &PinDir) -> Result<Self> {
        Ok(Self(open(pins, names::NODE_ROUTES6)?.try_into()?))
    }

    fn key(cidr: Ipv6Network) -> Key<[u8; 16]> {
        Key::new(u32::from(cidr.prefix()), cidr.network().octets())
    }

    pub fn all(&self) -> Result<BTreeMap<Ipv6Network, Ipv6Addr>> {
        let mut out = BTreeMap::new();
        for kv in self.0.iter() {
            let (k, v) = kv.context("read NODE_ROUTES6")?;
            let cidr = Ipv6Network::new(Ipv6Addr::from(k.data()), k.prefix_len() as u8)
                .context("NODE_ROUTES6 holds an invalid prefix")?;
            out.insert(cidr, Ipv6Addr::from(v.node_ip6));
        }
        Ok(out)
    }

    /// Every entry: its node address and whether it is flagged
    /// `REMOTE_NODE_VXLAN`.
    pub fn all_hops(&self) -> Result<BTreeMap<Ipv6Network, (Ipv6Addr, bool)>> {
        let mut out = BTreeMap::new();
        for kv in self.0.iter() {
            let (k, v) = kv.context("read NODE_ROUTES6")?;
            let cidr = Ipv6Network::new(Ipv6Addr::from(k.data()), k.prefix_len() as u8)
                .context("NODE_ROUTES6 holds an invalid prefix")?;
            out.insert(cidr, (Ipv6Addr::from(v.node_ip6), v.flags & REMOTE_NODE_VXLAN != 0));
        }
        Ok(out)
    }

    /// An IPv4-mapped `node_ip6` (`::ffff:a.b.c.d`) is a peer reached
    /// through VXLAN at that IPv4 address: flagged `REMOTE_NODE_VXLAN`.
    pub fn upsert(&mut self, cidr: Ipv6Network, node_ip6: Ipv6Addr) -> Result<()> {
        self.upsert_hop(cidr, node_ip6, node_ip6.to_ipv4_mapped().is_some())
    }

    /// `vxlan`: flagged `REMOTE_NODE_VXLAN` (through the tunnel to
    /// `node_ip6`: its IPv4 address IPv4-mapped, or, over an IPv6
    /// underlay, its IPv6 address).
    pub fn upsert_hop(&mut self, cidr: Ipv6Network, node_ip6: Ipv6Addr, vxlan: bool) -> Result<()> {
        let flags = if vxlan { REMOTE_NODE_VXLAN } else { 0 };
        let value = RemoteNode6 { node_ip6: node_ip6.octets(), flags };
        self.0.insert(&Self::key(cidr), value, 0).map_err(|e| {
            insert_error(e, names::NODE_ROUTES6, limits::MAX_NODE_ROUTES, format!("insert route {cidr} via {node_ip6}"))
        })
    }

    pub fn remove(&mut self, cidr: Ipv6Network) -> Result<()> {
        removed_or_absent(self.0.remove(&Self::key(cidr))).with_context(|| format!("remove route {cidr}"))
    }
}

pub fn write_node_config(pins: &PinDir, config: NodeConfig) -> Result<()> {
    let mut arr: Array<MapData, NodeConfig> = open(pins, names::NODE_CONFIG)?.try_into()?;
    arr.set(0, config, 0).context("write NODE_CONFIG")
}

pub fn read_node_config(pins: &PinDir) -> Result<NodeConfig> {
    let arr: Array<MapData, NodeConfig> = open(pins, names::NODE_CONFIG)?.try_into()?;
    arr.get(&0, 0).context("read NODE_CONFIG")
}

/// The pod CIDR the agent recorded in `NODE_CONFIG`; `None`: not yet.
pub fn node_pod_cidr(config: &NodeConfig) -> Option<Ipv4Network> {
    if config.pod_cidr_be == 0 && config.pod_cidr_prefix_len == 0 {
        return None;
    }
    Ipv4Network::new(ip_from_be(config.pod_cidr_be), config.pod_cidr_prefix_len as u8).ok()
}

/// `NODE_CONFIG`'s pod CIDR fields for `cidr`.
pub fn with_pod_cidr(config: NodeConfig, cidr: Ipv4Network) -> NodeConfig {
    NodeConfig { pod_cidr_be: ip_be(cidr.network()), pod_cidr_prefix_len: cidr.prefix() as u32, ..config }
}

/// The IPv6 pod CIDR recorded in `NODE_CONFIG` (dual-stack), if any.
pub fn node_pod_cidr6(config: &NodeConfig) -> Option<ipnetwork::Ipv6Network> {
    if !config.dual_stack() {
        return None;
    }
    ipnetwork::Ipv6Network::new(config.pod_cidr6.into(), config.pod_cidr6_prefix_len as u8).ok()
}

/// `NODE_CONFIG`'s IPv6 pod CIDR fields for `cidr` (marks the node
/// dual-stack for the programs).
pub fn with_pod_cidr6(config: NodeConfig, cidr: ipnetwork::Ipv6Network) -> NodeConfig {
    NodeConfig { pod_cidr6: cidr.network().octets(), pod_cidr6_prefix_len: cidr.prefix() as u32, ..config }
}

pub fn write_tunnel_config(pins: &PinDir, config: TunnelConfig) -> Result<()> {
    let mut arr: Array<MapData, TunnelConfig> = open(pins, names::TUNNEL_CONFIG)?.try_into()?;
    arr.set(0, config, 0).context("write TUNNEL_CONFIG")
}

/// `NAT64_CONFIG[0]` (`--nat64`; all zero: off).
pub fn write_nat64_config(pins: &PinDir, config: Nat64Config) -> Result<()> {
    let mut arr: Array<MapData, Nat64Config> = open(pins, names::NAT64_CONFIG)?.try_into()?;
    arr.set(0, config, 0).context("write NAT64_CONFIG")
}

pub fn read_nat64_config(pins: &PinDir) -> Result<Nat64Config> {
    let arr: Array<MapData, Nat64Config> = open(pins, names::NAT64_CONFIG)?.try_into()?;
    arr.get(&0, 0).context("read NAT64_CONFIG")
}

/// The `NAT64_CONFIG` value for the NAT64 device (`ifindex`, `mac`), the
/// pool and the node's IPv6 pod CIDR.
pub fn nat64_config(ifindex: u32, mac: [u8; 6], pool: Ipv4Network, pod_cidr6: Ipv6Network) -> Nat64Config {
    Nat64Config {
        device_ifindex: ifindex,
        device_mac: mac,
        _pad: [0; 2],
        pool_be: ip_be(pool.network()),
        pool_prefix_len: pool.prefix() as u32,
        pod_cidr6: pod_cidr6.network().octets(),
        pod_cidr6_prefix_len: pod_cidr6.prefix() as u32,
    }
}

pub fn read_tunnel_config(pins: &PinDir) -> Result<TunnelConfig> {
    let arr: Array<MapData, TunnelConfig> = open(pins, names::TUNNEL_CONFIG)?.try_into()?;
    arr.get(&0, 0).context("read TUNNEL_CONFIG")
}

fn sum_per_cpu_array(pins: &PinDir, name: &str, len: u32) -> Result<Vec<u64>> {
    let arr: PerCpuArray<MapData, u64> = open(pins, name)?.try_into()?;
    (0..len).map(|i| Ok(arr.get(&i, 0).with_context(|| format!("read {name}[{i}]"))?.iter().sum())).collect()
}

/// Drops so far in one direction for one reason, summed over CPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DropRow {
    pub reason: DropReason,
    pub direction: HookDirection,
    pub packets: u64,
    pub bytes: u64,
}

/// Drops so far, summed over CPUs: every reason in every direction, in
/// `DropReason` order, ingress before egress.
pub fn drop_stats(pins: &PinDir) -> Result<Vec<DropRow>> {
    let arr: PerCpuArray<MapData, DropCount> = open(pins, names::DROP_STATS)?.try_into()?;
    let mut rows = Vec::with_capacity(DROP_SLOTS as usize);
    for reason in DropReason::ALL {
        for direction in HookDirection::ALL {
            let slot = drop_slot(reason, direction);
            let per_cpu = arr.get(&slot, 0).with_context(|| format!("read {}[{slot}]", names::DROP_STATS))?;
            let (packets, bytes) = per_cpu.iter().fold((0, 0), |(p, b), c| (p + c.packets, b + c.bytes));
            rows.push(DropRow { reason, direction, packets, bytes });
        }
    }
    Ok(rows)
}

/// Packets dropped so far per reason, both directions together.
pub fn drops(pins: &PinDir) -> Result<Vec<(DropReason, u64)>> {
    let rows = drop_stats(pins)?;
    Ok(DropReason::ALL
        .iter()
        .map(|&r| (r, rows.iter().filter(|row| row.reason == r).map(|row| row.packets).sum()))
        .collect())
}

/// Forwarded packets so far, summed over CPUs, per path.
pub fn forwards(pins: &PinDir) -> Result<Vec<(ForwardPath, u64)>> {
    let sums = sum_per_cpu_array(pins, names::FORWARDS, ForwardPath::COUNT)?;
    Ok(ForwardPath::ALL.iter().copied().zip(sums).collect())
}

/// `STACK_FLOWS` events so far, summed over CPUs.
pub fn stack_flow_stats(pins: &PinDir) -> Result<Vec<(StackFlowEvent, u64)>> {
    let sums = sum_per_cpu_array(pins, names::STACK_FLOW_STATS, StackFlowEvent::COUNT)?;
    Ok(StackFlowEvent::ALL.iter().copied().zip(sums).collect())
}

/// Packets `count_packets` saw on `ifindex`, summed over CPUs.
pub fn iface_packets(pins: &PinDir, ifindex: u32) -> Result<u64> {
    let map: PerCpuHashMap<MapData, u32, u64> = open(pins, names::IFACE_PACKETS)?.try_into()?;
    match map.get(&ifindex, 0) {
        Ok(values) => Ok(values.iter().sum()),
        Err(aya::maps::MapError::KeyNotFound) => Ok(0),
        Err(e) => Err(e).context("read IFACE_PACKETS"),
    }
}

#[cfg(test)]
mod full_map_tests {
    use aya::{maps::MapError, sys::SyscallError};

    use super::*;

    fn update_failed(errno: i32) -> MapError {
        MapError::SyscallError(SyscallError {
            call: "bpf_map_update_elem",
            io_error: std::io::Error::from_raw_os_error(errno),
        })
    }

    #[test]
    fn a_full_hash_map_and_a_full_lpm_trie_are_both_named_full() {
        // Seen in the netpol lab: a full POLICY_IDENTITIES (LPM trie)
        // answered ENOSPC, which was taken for an ordinary error, so the
        // reconciler did not fail closed.
        for errno in [libc::E2BIG, libc::ENOSPC] {
            let e = insert_error(update_failed(errno), "POLICY_IDENTITIES", 65536, "insert".into());
            assert!(e.chain().any(|c| c.is::<MapFull>()), "errno {errno}: {e:#}");
        }
        let e = insert_error(update_failed(libc::EINVAL), "POLICY_IDENTITIES", 65536, "insert".into());
        assert!(!e.chain().any(|c| c.is::<MapFull>()), "EINVAL is no full map: {e:#}");
    }
}
