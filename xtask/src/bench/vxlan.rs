//! The kernel's own VXLAN overlay, laid out as Flannel's vxlan backend
//! does it (flannel-io/flannel `pkg/backend/vxlan`): the `K vxlan
//! cross-node` row of `cargo xtask bench`, the reference that sluice's
//! tunnel (`S-vxlan cross-node`, `--tunnel=always`) is measured against.
//!
//! Per node, what flanneld makes (`newVXLANDevice`, `Configure`):
//! - `flannel.1`: a kernel vxlan device, VNI 1, `local <node IP>`, lower
//!   device the uplink, UDP 8472 (Linux's default port, which flannel
//!   leaves the kernel to pick), no learning, MTU uplink − 50; the
//!   outer UDP checksum as the kernel defaults it (on: flannel's netlink
//!   library sends the attribute only to turn it on, `ip` only when told);
//! - the node's pod subnet's network address (`.0`) on it as a /32 (the
//!   VTEP address: no broadcast route, a source for host → pod traffic).
//!
//! Per remote node, what flanneld writes when it sees the node's lease
//! (`handleSubnetEvents`), in its order:
//! - a permanent neighbour: remote VTEP address → remote VTEP MAC
//!   (`AddARP`), so the kernel never ARPs across the tunnel;
//! - a permanent fdb entry: remote VTEP MAC → remote node IP (`AddFDB`),
//!   where the device sends the encapsulated frame;
//! - the route `<remote pod CIDR> via <remote VTEP address> dev flannel.1
//!   onlink` (`RouteReplace`).
//!
//! The pods are the same bridge + host-local pods as the B rows, with
//! the device's MTU (flannel's CNI plugin hands its MTU to `bridge`).
//! Everything lives in the lab's node namespaces, so it goes with them.
use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use ipnetwork::Ipv4Network;
use serde_json::Value;
use sluice_tests::lab::{ns_exec, Node};

/// flannel's device name for VNI 1 (`flannel.<VNI>`).
pub const DEVICE: &str = "flannel.1";
const VNI: u32 = 1;
const PORT: u16 = 8472;
/// Outer Ethernet, IPv4, UDP and VXLAN headers: what flannel takes off
/// the uplink's MTU for the device (and so for the pods).
pub const OVERHEAD: u32 = 50;
const UPLINK: &str = "eth0";

/// One node's end of the overlay, as flannel publishes it in the node's
/// lease (`VtepMAC`, `PublicIP`) with the lease's subnet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vtep {
    pub node_ip: Ipv4Addr,
    pub pod_cidr: Ipv4Network,
    pub mac: String,
}

impl Vtep {
    /// flannel's VTEP address: the subnet's own network address.
    pub fn addr(&self) -> Ipv4Addr {
        self.pod_cidr.network()
    }
}

/// `ip` commands that make a node's device (pure).
pub fn device_commands(node_ip: Ipv4Addr, pod_cidr: Ipv4Network, uplink_mtu: u32) -> Vec<Vec<String>> {
    let (vni, port, mtu) = (VNI.to_string(), PORT.to_string(), (uplink_mtu - OVERHEAD).to_string());
    let addr = format!("{}/32", pod_cidr.network());
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    vec![
        args(&[
            "ip",
            "link",
            "add",
            DEVICE,
            "mtu",
            &mtu,
            "type",
            "vxlan",
            "id",
            &vni,
            "local",
            &node_ip.to_string(),
            "dev",
            UPLINK,
            "dstport",
            &port,
            "nolearning",
        ]),
        args(&["ip", "addr", "add", &addr, "dev", DEVICE]),
        args(&["ip", "link", "set", DEVICE, "up"]),
    ]
}

/// The neighbour, fdb entry and route through which a node reaches
/// `remote`'s pods, in flannel's order (pure).
pub fn peer_commands(remote: &Vtep) -> Vec<Vec<String>> {
    let (vtep, node) = (remote.addr().to_string(), remote.node_ip.to_string());
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    vec![
        args(&["ip", "neigh", "replace", &vtep, "lladdr", &remote.mac, "dev", DEVICE, "nud", "permanent"]),
        args(&["bridge", "fdb", "replace", &remote.mac, "dev", DEVICE, "dst", &node, "self", "permanent"]),
        args(&["ip", "route", "replace", &remote.pod_cidr.to_string(), "via", &vtep, "dev", DEVICE, "onlink"]),
    ]
}

fn run_all(netns: &str, commands: &[Vec<String>]) -> Result<()> {
    for c in commands {
        let argv: Vec<&str> = c.iter().map(String::as_str).collect();
        ns_exec(netns, &argv).with_context(|| format!("{netns}: {}", c.join(" ")))?;
    }
    Ok(())
}

/// Lay the overlay out over `nodes` (uplinks of MTU `uplink_mtu`): every
/// node's device, then every node's entries for every other.
pub fn lay_out(nodes: &[Node], uplink_mtu: u32) -> Result<Vec<Vtep>> {
    let mut vteps = Vec::new();
    for n in nodes {
        let (node_ip, pod_cidr) = (n.ip.parse()?, n.pod_cidr.parse()?);
        run_all(&n.netns, &device_commands(node_ip, pod_cidr, uplink_mtu))?;
        // flannel makes up a random MAC and publishes it; the kernel's
        // random one is as good, read back as the lease would carry it.
        let mac = link_field(&n.netns, DEVICE, "address")?.as_str().context("flannel.1 address")?.to_string();
        vteps.push(Vtep { node_ip, pod_cidr, mac });
    }
    for (n, local) in nodes.iter().zip(&vteps) {
        for remote in vteps.iter().filter(|v| *v != local) {
            run_all(&n.netns, &peer_commands(remote))?;
        }
    }
    Ok(vteps)
}

/// One field of `ip -s -j link show dev <device>` in `netns`.
fn link_field(netns: &str, device: &str, field: &str) -> Result<Value> {
    let out = ns_exec(netns, &["ip", "-s", "-j", "link", "show", "dev", device])?;
    let links: Value = serde_json::from_str(&out).with_context(|| format!("ip -j link show {device}: {out}"))?;
    Ok(links[0][field].clone())
}

/// Packets `device` in `netns` has sent: a path that should cross a
/// tunnel device is checked to have crossed it.
pub fn tx_packets(netns: &str, device: &str) -> Result<u64> {
    link_field(netns, device, "stats64")?["tx"]["packets"]
        .as_u64()
        .with_context(|| format!("{netns}: tx packets of {device}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joined(cmds: Vec<Vec<String>>) -> Vec<String> {
        cmds.into_iter().map(|c| c.join(" ")).collect()
    }

    #[test]
    fn a_node_gets_flannels_device() {
        assert_eq!(
            joined(device_commands("172.30.0.1".parse().unwrap(), "10.244.1.0/24".parse().unwrap(), 1500)),
            [
                "ip link add flannel.1 mtu 1450 type vxlan id 1 local 172.30.0.1 dev eth0 dstport 8472 nolearning",
                "ip addr add 10.244.1.0/32 dev flannel.1",
                "ip link set flannel.1 up",
            ]
        );
    }

    #[test]
    fn a_remote_node_gets_neighbour_fdb_and_onlink_route() {
        let remote = Vtep {
            node_ip: "172.30.0.2".parse().unwrap(),
            pod_cidr: "10.244.2.0/24".parse().unwrap(),
            mac: "0a:58:0a:f4:02:00".into(),
        };
        assert_eq!(
            joined(peer_commands(&remote)),
            [
                "ip neigh replace 10.244.2.0 lladdr 0a:58:0a:f4:02:00 dev flannel.1 nud permanent",
                "bridge fdb replace 0a:58:0a:f4:02:00 dev flannel.1 dst 172.30.0.2 self permanent",
                "ip route replace 10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink",
            ]
        );
    }
}
