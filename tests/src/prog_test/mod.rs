//! Program-level tests of the eBPF datapath: the real compiled object,
//! each program run once on a crafted packet with `BPF_PROG_TEST_RUN`
//! (aya 0.14's `TestRun` for `SchedClassifier`), and what it returned,
//! wrote and counted read back. Between the pure verdict tests and the
//! multi-minute labs.
//!
//! A `TestDatapath` is one throwaway node: its own network namespace with an
//! uplink (`172.30.0.1/24`, a route to `172.31.0.0/24` through a router at
//! `.253`), a VXLAN device and one veth pair per pod, and the object loaded
//! by the agent's own loader (`sluice_node::datapath::Datapath::load`) with
//! its maps and programs pinned in a bpffs directory of its own. Dropping it
//! removes the pins and the namespace.
//!
//! What `BPF_PROG_TEST_RUN` does and does not do for a TC program
//! (`bpf_prog_test_run_skb` in `net/bpf/test_run.c`): the packet is copied
//! into a real skb on the device named by the context's `ifindex` (so
//! `skb->ifindex`, FIB lookups and device checks behave as on that device,
//! in the namespace of the calling thread: each run enters the node's
//! namespace on a thread of its own); the program runs once; its return code
//! and the bytes it left come back. Redirects are not carried out: a
//! redirect returns `TC_ACT_REDIRECT` and the packet as the program wrote
//! it. There is no tunnel metadata on the skb, as on a packet that did not
//! come through a VXLAN device.
pub mod lb4;
pub mod packet;
pub mod policy;
pub mod skb;

use std::{fs::File, net::Ipv4Addr, os::fd::AsFd};

use anyhow::{bail, Context, Result};
use aya::{
    maps::{HashMap, Map, MapData},
    programs::{SchedClassifier, TestRun, TestRunOptions},
};
use ipnetwork::Ipv4Network;
use nix::sched::{setns, CloneFlags};
use sluice_common::{maps::names, DropReason, EndpointInfo, FlowKey, ForwardPath, NodeConfig, TunnelConfig};
use sluice_node::datapath::{
    pinned_maps::{self, Endpoints, NodeRoutes},
    pins::PinDir,
    Datapath,
};

pub use packet::{ip, Ipv4, Mac, L2, L4};
pub use skb::SkBuff;

use crate::{link_json, require_root, Netns, PinDirGuard};

/// TC actions (`include/uapi/linux/pkt_cls.h`), as the programs return them.
pub const TC_ACT_UNSPEC: i32 = -1;
pub const TC_ACT_OK: i32 = 0;
pub const TC_ACT_SHOT: i32 = 2;
pub const TC_ACT_REDIRECT: i32 = 7;

/// This node's address on its uplink, and its pod CIDR.
pub const NODE_IP: &str = "172.30.0.1";
pub const POD_CIDR: &str = "10.244.1.0/24";
/// A peer on the uplink's subnet: routed natively.
pub const NATIVE_PEER_IP: &str = "172.30.0.2";
pub const NATIVE_PEER_CIDR: &str = "10.244.2.0/24";
/// A peer behind the router: reached through VXLAN.
pub const VXLAN_PEER_IP: &str = "172.31.0.3";
pub const VXLAN_PEER_CIDR: &str = "10.244.3.0/24";
/// The router between the two subnets (the next hop towards the VXLAN peer).
pub const ROUTER_IP: &str = "172.30.0.253";
/// The VXLAN device's MTU the node is configured with.
pub const VXLAN_MTU: u32 = 1450;

/// An interface of the test node.
#[derive(Clone, Debug)]
pub struct Iface {
    pub name: String,
    pub ifindex: u32,
    pub mac: Mac,
    pub mtu: u32,
}

/// A pod of the test node: its address, the host end of its veth pair (the
/// device `from_pod` runs on) and the MAC of its own end.
#[derive(Clone, Debug)]
pub struct Pod {
    pub ip: Ipv4Addr,
    pub host: Iface,
    pub mac: Mac,
}

impl Pod {
    /// Ethernet addresses of a frame the pod sends to its gateway.
    pub fn sends(&self) -> L2 {
        L2::new(self.mac, self.host.mac)
    }

    /// Ethernet addresses a delivery into this pod writes: from the host
    /// end's MAC to the pod's.
    pub fn receives(&self) -> L2 {
        L2::new(self.host.mac, self.mac)
    }
}

/// What one run of a program gave back.
#[derive(Clone, Debug)]
pub struct Run {
    /// The TC action it returned.
    pub action: i32,
    /// The packet as the program left it.
    pub packet: Vec<u8>,
    /// The skb context after the run (`mark` and the like).
    pub ctx: SkBuff,
}

/// One throwaway node with the real datapath loaded. Fields drop in order:
/// the loaded object, then the namespace, then the pins.
pub struct TestDatapath {
    _datapath: Datapath,
    netns: Netns,
    pins: PinDir,
    _pin_dir: PinDirGuard,
    pub uplink: Iface,
    pub vxlan: Iface,
    next_pod: std::cell::Cell<u32>,
}

impl TestDatapath {
    /// A node with nothing configured: empty maps, no `NODE_CONFIG`.
    pub fn load() -> Result<Self> {
        require_root();
        let netns = Netns::new("slp")?;
        netns
            .exec(&[
                "sh",
                "-ec",
                &format!(
                    "ip link add uplink type veth peer name uplinkp
                     ip link set uplinkp up
                     ip link set uplink up
                     ip addr add {NODE_IP}/24 dev uplink
                     ip route add 172.31.0.0/24 via {ROUTER_IP} dev uplink
                     ip link add sluice_vxlan type vxlan external dstport 8472
                     ip link set sluice_vxlan up
                     sysctl -qw net.ipv4.conf.all.forwarding=1"
                ),
            ])
            .context("set up the test node's interfaces")?;
        let uplink = iface(&netns, "uplink")?;
        let vxlan = iface(&netns, "sluice_vxlan")?;
        let pin_dir = PinDirGuard::new()?;
        let pins = PinDir::new(&pin_dir.path);
        // The loader loads a program again when its verifier was interrupted.
        let datapath = Datapath::load(&pins).context("load the eBPF object with the agent's loader")?;
        Ok(Self { _datapath: datapath, netns, pins, _pin_dir: pin_dir, uplink, vxlan, next_pod: 0.into() })
    }

    /// A configured node: `NODE_CONFIG` (uplink, `NODE_IP`), `TUNNEL_CONFIG`
    /// (the VXLAN device, `VXLAN_MTU`), and routes to a native peer and to
    /// a peer through VXLAN.
    pub fn node() -> Result<Self> {
        let dp = Self::load()?;
        dp.node_config(NodeConfig {
            uplink_ifindex: dp.uplink.ifindex,
            node_ip_be: be(ip(NODE_IP)),
            ..Default::default()
        })?;
        dp.tunnel_config(TunnelConfig { vxlan_ifindex: dp.vxlan.ifindex, mtu: VXLAN_MTU })?;
        dp.node_route(NATIVE_PEER_CIDR, ip(NATIVE_PEER_IP), false)?;
        dp.node_route(VXLAN_PEER_CIDR, ip(VXLAN_PEER_IP), true)?;
        Ok(dp)
    }

    pub fn pins(&self) -> &PinDir {
        &self.pins
    }

    pub fn node_config(&self, config: NodeConfig) -> Result<()> {
        pinned_maps::write_node_config(&self.pins, config)
    }

    pub fn tunnel_config(&self, config: TunnelConfig) -> Result<()> {
        pinned_maps::write_tunnel_config(&self.pins, config)
    }

    /// `NODE_ROUTES[cidr]` = `node_ip`, tunneled or native.
    pub fn node_route(&self, cidr: &str, node_ip: Ipv4Addr, vxlan: bool) -> Result<()> {
        let cidr: Ipv4Network = cidr.parse().with_context(|| format!("CIDR {cidr}"))?;
        NodeRoutes::open(&self.pins)?.upsert_hop(cidr, node_ip, vxlan)
    }

    /// `NODE_ROUTES6[cidr]` = `node_ip6` (a native IPv6 peer).
    pub fn node_route6(&self, cidr: &str, node_ip6: std::net::Ipv6Addr) -> Result<()> {
        let cidr: ipnetwork::Ipv6Network = cidr.parse().with_context(|| format!("CIDR {cidr}"))?;
        pinned_maps::NodeRoutes6::open(&self.pins)?.upsert(cidr, node_ip6)
    }

    /// `NODE_ROUTES6[cidr]` = `node_ip6` flagged `REMOTE_NODE_VXLAN`: an
    /// IPv6-only node's peer behind a router, through VXLAN over IPv6.
    pub fn node_route6_vxlan(&self, cidr: &str, node_ip6: std::net::Ipv6Addr) -> Result<()> {
        let cidr: ipnetwork::Ipv6Network = cidr.parse().with_context(|| format!("CIDR {cidr}"))?;
        pinned_maps::NodeRoutes6::open(&self.pins)?.upsert_hop(cidr, node_ip6, true)
    }

    /// Set `dev`'s MTU in the node's namespace (the device a packet would
    /// leave by: a pod's host end, the uplink).
    pub fn set_mtu(&self, dev: &Iface, mtu: u32) -> Result<()> {
        self.netns.exec(&["ip", "link", "set", &dev.name, "mtu", &mtu.to_string()])?;
        Ok(())
    }

    pub fn endpoint(&self, pod_ip: Ipv4Addr, ep: EndpointInfo) -> Result<()> {
        Endpoints::open(&self.pins)?.insert(pod_ip, ep)
    }

    /// Mark `key` as the reply tuple of a flow the node's stack forwarded
    /// (what `to_pod` / `to_uplink` write into `STACK_FLOWS`).
    pub fn stack_flow(&self, key: FlowKey) -> Result<()> {
        let path = self.pins.map(names::STACK_FLOWS);
        let data = MapData::from_pin(&path).with_context(|| format!("open {}", path.display()))?;
        let mut map: HashMap<MapData, FlowKey, u32> = Map::from_map_data(data)?.try_into()?;
        map.insert(key, 0, 0).context("insert into STACK_FLOWS")
    }

    /// `NODE_ADDRESSES[addr]` = `kind` (`services::NODE_ADDRESS_LOCAL` /
    /// `NODE_ADDRESS_REMOTE`), as the Services loop writes it.
    pub fn node_address(&self, addr: &str, kind: u32) -> Result<()> {
        let path = self.pins.map(names::NODE_ADDRESSES);
        let data = MapData::from_pin(&path).with_context(|| format!("open {}", path.display()))?;
        let mut map: HashMap<MapData, u32, u32> = Map::from_map_data(data)?.try_into()?;
        map.insert(be(ip(addr)), kind, 0).context("insert into NODE_ADDRESSES")
    }

    /// The keys of `NODE_FLOWS` (answers of connections from other nodes'
    /// addresses that skipped the stack), sorted.
    pub fn node_flows(&self) -> Result<Vec<FlowKey>> {
        let path = self.pins.map(names::NODE_FLOWS);
        let data = MapData::from_pin(&path).with_context(|| format!("open {}", path.display()))?;
        let map: HashMap<MapData, FlowKey, u32> = Map::from_map_data(data)?.try_into()?;
        let mut keys: Vec<FlowKey> = map.keys().collect::<Result<_, _>>().context("read NODE_FLOWS")?;
        keys.sort_by_key(|k| (k.src_be, k.dst_be, k.src_port_be, k.dst_port_be, k.protocol));
        Ok(keys)
    }

    /// Put `key` into `NODE_FLOWS`, as `from_uplink` does for a connection
    /// it carried in from another node's address.
    pub fn node_flow(&self, key: FlowKey) -> Result<()> {
        let path = self.pins.map(names::NODE_FLOWS);
        let data = MapData::from_pin(&path).with_context(|| format!("open {}", path.display()))?;
        let mut map: HashMap<MapData, FlowKey, u32> = Map::from_map_data(data)?.try_into()?;
        map.insert(key, 0, 0).context("insert into NODE_FLOWS")
    }

    /// A pod at `pod_ip`: a veth pair in the node's namespace (the host end
    /// is what `from_pod` runs on) and its `ENDPOINTS` entry.
    pub fn add_pod(&self, pod_ip: &str) -> Result<Pod> {
        let n = self.next_pod.get();
        self.next_pod.set(n + 1);
        let (host, peer) = (format!("pod{n}h"), format!("pod{n}p"));
        self.netns.exec(&[
            "sh",
            "-ec",
            &format!("ip link add {host} type veth peer name {peer}; ip link set {peer} up; ip link set {host} up"),
        ])?;
        let host = iface(&self.netns, &host)?;
        let mac = iface(&self.netns, &peer)?.mac;
        let pod = Pod { ip: ip(pod_ip), host, mac };
        self.endpoint(
            pod.ip,
            EndpointInfo { host_ifindex: pod.host.ifindex, pod_mac: pod.mac, host_mac: pod.host.mac },
        )?;
        Ok(pod)
    }

    /// Make the node dual-stack (`NODE_CONFIG`'s IPv6 pod CIDR, as the
    /// agent records it with `--ip-family dual`).
    pub fn dual_stack(&self, pod_cidr6: &str) -> Result<()> {
        let cidr6: ipnetwork::Ipv6Network = pod_cidr6.parse().with_context(|| format!("CIDR {pod_cidr6}"))?;
        let config = pinned_maps::read_node_config(&self.pins)?;
        pinned_maps::write_node_config(&self.pins, pinned_maps::with_pod_cidr6(config, cidr6))
    }

    /// `ENDPOINTS6[ip6]` = `pod`'s endpoint (as CNI ADD writes on a
    /// dual-stack node: the same value as its IPv4 entry).
    pub fn endpoint6(&self, pod: &Pod, ip6: std::net::Ipv6Addr) -> Result<()> {
        let ep = EndpointInfo { host_ifindex: pod.host.ifindex, pod_mac: pod.mac, host_mac: pod.host.mac };
        pinned_maps::Endpoints6::open(&self.pins)?.insert(ip6, ep)
    }

    /// Turn NAT64 on (`--nat64`): the NAT64 device `sluice_nat64` in the
    /// node's namespace (a veth end without ARP, as the agent makes it)
    /// and `NAT64_CONFIG` for it, the pool and the node's IPv6 pod CIDR,
    /// as the agent writes them. Returns the device.
    pub fn nat64(&self, pool: &str, pod_cidr6: &str) -> Result<Iface> {
        self.netns.exec(&[
            "sh",
            "-ec",
            "ip link add sluice_nat64 type veth peer name sluice_nat64p
             ip link set sluice_nat64p up
             ip link set sluice_nat64 arp off up",
        ])?;
        let dev = iface(&self.netns, "sluice_nat64")?;
        let pool: Ipv4Network = pool.parse().with_context(|| format!("pool {pool}"))?;
        let cidr6: ipnetwork::Ipv6Network = pod_cidr6.parse().with_context(|| format!("CIDR {pod_cidr6}"))?;
        pinned_maps::write_nat64_config(&self.pins, pinned_maps::nat64_config(dev.ifindex, dev.mac, pool, cidr6))?;
        Ok(dev)
    }

    /// Run `program` once on `packet` as if it arrived on `ifindex`.
    pub fn run(&self, program: &str, ifindex: u32, packet: &[u8]) -> Result<Run> {
        self.run_with(program, SkBuff::on(ifindex), packet)
    }

    /// Run `program` once on `packet` with the skb context `ctx`.
    pub fn run_with(&self, program: &str, ctx: SkBuff, packet: &[u8]) -> Result<Run> {
        let pin = self.pins.prog(program);
        let netns = self.netns.path();
        // Room for what a program adds (VXLAN: 50 bytes); a packet longer
        // than the buffer fails the run with ENOSPC.
        let mut out = vec![0u8; packet.len() + 256];
        let mut ctx_out = [0u8; std::mem::size_of::<SkBuff>()];
        let result = std::thread::scope(|s| {
            s.spawn(|| -> Result<_> {
                // This thread only: the device and routes the run sees are
                // the test node's.
                let ns = File::open(&netns).with_context(|| format!("open {}", netns.display()))?;
                setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).context("enter the test node's namespace")?;
                let prog = SchedClassifier::from_pin(&pin)
                    .with_context(|| format!("open pinned program {}", pin.display()))?;
                let opts = TestRunOptions {
                    data_in: Some(packet),
                    data_out: Some(&mut out),
                    ctx_in: Some(ctx.as_bytes()),
                    ctx_out: Some(&mut ctx_out),
                    ..Default::default()
                };
                prog.test_run(opts).with_context(|| format!("BPF_PROG_TEST_RUN of {program}"))
            })
            .join()
        });
        let result = match result {
            Ok(r) => r?,
            Err(_) => bail!("the thread running {program} panicked"),
        };
        out.truncate(result.data_size_out as usize);
        Ok(Run { action: result.return_value as i32, packet: out, ctx: SkBuff::from_bytes(&ctx_out) })
    }

    /// Every drop reason counted so far, with its count; reasons never
    /// counted are left out.
    pub fn drops(&self) -> Result<Vec<(DropReason, u64)>> {
        Ok(pinned_maps::drops(&self.pins)?.into_iter().filter(|(_, n)| *n != 0).collect())
    }

    /// Every forwarding path counted so far, with its count.
    pub fn forwards(&self) -> Result<Vec<(ForwardPath, u64)>> {
        Ok(pinned_maps::forwards(&self.pins)?.into_iter().filter(|(_, n)| *n != 0).collect())
    }

    /// Every `STACK_FLOWS` / `STACK_FLOWS6` event counted so far, with its count.
    pub fn stack_flow_events(&self) -> Result<Vec<(sluice_common::StackFlowEvent, u64)>> {
        Ok(pinned_maps::stack_flow_stats(&self.pins)?.into_iter().filter(|(_, n)| *n != 0).collect())
    }
}

/// An address as the maps store it (network byte order in a `u32`).
pub fn be(addr: Ipv4Addr) -> u32 {
    pinned_maps::ip_be(addr)
}

fn iface(ns: &Netns, name: &str) -> Result<Iface> {
    let v = link_json(ns, name)?;
    let ifindex = v["ifindex"].as_u64().with_context(|| format!("ifindex of {name}"))? as u32;
    let text = v["address"].as_str().with_context(|| format!("MAC of {name}"))?;
    let mtu = v["mtu"].as_u64().with_context(|| format!("MTU of {name}"))? as u32;
    Ok(Iface { name: name.to_string(), ifindex, mac: parse_mac(text)?, mtu })
}

fn parse_mac(text: &str) -> Result<Mac> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .with_context(|| text.to_string())?;
    bytes.try_into().map_err(|_| anyhow::anyhow!("MAC {text} is not 6 bytes"))
}
