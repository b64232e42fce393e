//! Host sockets on ports sluice owns (pure): what `/proc/net/{tcp,udp}`
//! (and their `6` twins) of the node's network namespace list, parsed,
//! and judged against the NodePort range and this node's hostPorts.
//!
//! A host process listening on a NodePort, or on a hostPort of a pod here,
//! is shadowed: the socket load balancer sends pods' and host processes'
//! connections to the Service or the pod, and the uplink path sends the
//! world's there too, so the process never sees them (and must never
//! answer for them). kube-proxy holds such ports open to keep them from
//! others; sluice reports them instead: a warning naming the socket, a
//! metric and a line in `status`.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use serde::{Deserialize, Serialize};

use super::ranges::PortSet;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SocketProtocol {
    Tcp,
    Udp,
}

impl SocketProtocol {
    pub const fn name(self) -> &'static str {
        match self {
            SocketProtocol::Tcp => "tcp",
            SocketProtocol::Udp => "udp",
        }
    }
}

/// A socket a host process holds open for others to reach: a listening
/// TCP socket, or a bound unconnected UDP one.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct HostSocket {
    pub protocol: SocketProtocol,
    pub address: IpAddr,
    pub port: u16,
    pub uid: u32,
    /// The socket's inode: `/proc/<pid>/fd/*` links to `socket:[inode]`.
    pub inode: u64,
}

/// `st` in `/proc/net/tcp`: `TCP_LISTEN`.
const TCP_LISTEN: u8 = 0x0A;
/// `st` in `/proc/net/udp`: `TCP_CLOSE`, an unconnected socket (a server).
const UDP_UNCONNECTED: u8 = 0x07;

/// One `/proc/net/{tcp,tcp6,udp,udp6}` file: the sockets held open for
/// others (see `HostSocket`). Lines that do not parse are skipped (the
/// header; a kernel that adds columns keeps the ones read here).
pub fn parse_proc_net(text: &str, protocol: SocketProtocol) -> Vec<HostSocket> {
    let wanted_state = match protocol {
        SocketProtocol::Tcp => TCP_LISTEN,
        SocketProtocol::Udp => UDP_UNCONNECTED,
    };
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            if f.len() < 10 || u8::from_str_radix(f[3], 16).ok()? != wanted_state {
                return None;
            }
            let (address, port) = parse_endpoint(f[1])?;
            Some(HostSocket { protocol, address, port, uid: f[7].parse().ok()?, inode: f[9].parse().ok()? })
        })
        .collect()
}

/// `0100007F:1F90` (IPv4) or 32 hex digits `:PORT` (IPv6): the kernel
/// prints each 32-bit word of the address as it lies in memory, in
/// host order (`%08X`), and the port in host order.
fn parse_endpoint(s: &str) -> Option<(IpAddr, u16)> {
    let (addr, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        Some(u32::from_str_radix(addr.get(8 * i..8 * i + 8)?, 16).ok()?.to_ne_bytes())
    };
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut o = [0u8; 16];
            for i in 0..4 {
                o[4 * i..4 * i + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(o))
        }
        _ => return None,
    };
    Some((ip, port))
}

/// A hostPort of a pod on this node, as the port owner knows it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct HostPortClaim {
    pub protocol: SocketProtocol,
    pub port: u16,
    /// `namespace/name` of the pod.
    pub pod: String,
}

/// Whose port a host socket sits on.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "owner")]
pub enum Owner {
    /// In the NodePort range (`--node-port-range`), whether or not a
    /// Service has the port now: one may get it at any time.
    NodePortRange,
    /// A hostPort of this pod.
    HostPort { pod: String },
}

impl Owner {
    /// The metric label.
    pub const fn label(&self) -> &'static str {
        match self {
            Owner::NodePortRange => "node_port_range",
            Owner::HostPort { .. } => "host_port",
        }
    }
}

/// A host socket on a port sluice owns.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Collision {
    pub socket: HostSocket,
    #[serde(flatten)]
    pub owner: Owner,
}

impl fmt::Display for Collision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.socket;
        let addr = match s.address {
            IpAddr::V6(a) => format!("[{a}]"),
            IpAddr::V4(a) => a.to_string(),
        };
        let whose = match &self.owner {
            Owner::NodePortRange => "in the NodePort range".to_string(),
            Owner::HostPort { pod } => format!("on a hostPort of {pod}"),
        };
        write!(f, "{} {addr}:{} (uid {}, inode {}) {whose}", s.protocol.name(), s.port, s.uid, s.inode)
    }
}

/// The host sockets that sit on a port sluice owns: a hostPort of a pod
/// here (named first: it is the more specific claim), else the NodePort
/// range. Sockets in `own_inodes` (the agent's: its healthCheckNodePort
/// listeners live in the NodePort range by design) are not collisions.
/// Sorted; a socket listed twice (a dual-stack listener shows in `tcp6`
/// only, but be safe) counts once.
pub fn collisions(
    sockets: &[HostSocket],
    node_ports: &PortSet,
    host_ports: &[HostPortClaim],
    own_inodes: &BTreeSet<u64>,
) -> Vec<Collision> {
    let by_port: BTreeMap<(SocketProtocol, u16), &HostPortClaim> =
        host_ports.iter().map(|c| ((c.protocol, c.port), c)).collect();
    let mut out: BTreeSet<Collision> = BTreeSet::new();
    for s in sockets.iter().filter(|s| !own_inodes.contains(&s.inode)) {
        let owner = if let Some(claim) = by_port.get(&(s.protocol, s.port)) {
            Owner::HostPort { pod: claim.pod.clone() }
        } else if node_ports.contains(s.port) {
            Owner::NodePortRange
        } else {
            continue;
        };
        out.insert(Collision { socket: s.clone(), owner });
    }
    out.into_iter().collect()
}

/// The inodes in a list of `/proc/<pid>/fd` link targets (`socket:[N]`).
pub fn socket_inodes<'a>(links: impl IntoIterator<Item = &'a str>) -> BTreeSet<u64> {
    links.into_iter().filter_map(|l| l.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::port_ownership::ranges::{owned, DEFAULT_NODE_PORT_RANGE};

    // Captured from a 6.18 node: sshd on 22, a listener on
    // 127.0.0.1:30080, an established connection from port 30081, and
    // a dual-stack listener on [::]:31000.
    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 17001 1 0000000000000000 100 0 0 10 0
   1: 0100007F:7580 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 17002 1 0000000000000000 100 0 0 10 0
   2: 0200A8C0:7581 0100A8C0:01BB 01 00000000:00000000 00:00000000 00000000  1000        0 17003 1 0000000000000000 20 4 30 10 -1
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:7918 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 17004 1 0000000000000000 100 0 0 10 0
   1: 0000000000000000FFFF00000100007F:7919 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 17005 1 0000000000000000 100 0 0 10 0
";
    const UDP: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  100: 00000000:7530 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 17006 2 0000000000000000 0
  101: 0200A8C0:7531 0100A8C0:0035 01 00000000:00000000 00:00000000 00000000     0        0 17007 2 0000000000000000 0
";

    #[test]
    fn listening_tcp_and_unconnected_udp_sockets_are_read_with_their_addresses() {
        let tcp = parse_proc_net(TCP, SocketProtocol::Tcp);
        assert_eq!(
            tcp.iter().map(|s| (s.address.to_string(), s.port, s.uid, s.inode)).collect::<Vec<_>>(),
            [("0.0.0.0".into(), 22, 0, 17001), ("127.0.0.1".into(), 30080, 1000, 17002)],
            "the established connection is no listener"
        );
        let tcp6 = parse_proc_net(TCP6, SocketProtocol::Tcp);
        assert_eq!(tcp6[0].address.to_string(), "::");
        assert_eq!(tcp6[0].port, 31000);
        assert_eq!(tcp6[1].address.to_string(), "::ffff:127.0.0.1");
        let udp = parse_proc_net(UDP, SocketProtocol::Udp);
        assert_eq!(udp.len(), 1, "a connected UDP socket is a client: {udp:?}");
        assert_eq!((udp[0].port, udp[0].protocol), (30000, SocketProtocol::Udp));
        assert!(parse_proc_net("garbage\n1: zz:zz\n", SocketProtocol::Tcp).is_empty());
    }

    #[test]
    fn sockets_in_the_node_port_range_or_on_a_host_port_collide_and_the_agents_own_do_not() {
        let mut sockets = parse_proc_net(TCP, SocketProtocol::Tcp);
        sockets.extend(parse_proc_net(TCP6, SocketProtocol::Tcp));
        sockets.extend(parse_proc_net(UDP, SocketProtocol::Udp));
        let host_ports = [
            HostPortClaim { protocol: SocketProtocol::Tcp, port: 22, pod: "default/sshd-in-a-pod".into() },
            HostPortClaim { protocol: SocketProtocol::Udp, port: 31000, pod: "default/dns".into() },
        ];
        let node_ports = owned(DEFAULT_NODE_PORT_RANGE, &[]);
        let own = socket_inodes(["socket:[17005]", "pipe:[9]", "/dev/null", "socket:[x]"]);
        assert_eq!(own, BTreeSet::from([17005]));
        let c = collisions(&sockets, &node_ports, &host_ports, &own);
        let shown: Vec<String> = c.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "tcp 0.0.0.0:22 (uid 0, inode 17001) on a hostPort of default/sshd-in-a-pod",
                "tcp 127.0.0.1:30080 (uid 1000, inode 17002) in the NodePort range",
                "tcp [::]:31000 (uid 0, inode 17004) in the NodePort range",
                "udp 0.0.0.0:30000 (uid 0, inode 17006) in the NodePort range",
            ],
            "the UDP hostPort 31000 does not claim the TCP socket on 31000; the agent's own 31001 is left out"
        );
        assert_eq!(c[0].owner.label(), "host_port");
        let json = serde_json::to_value(&c[1]).unwrap();
        assert_eq!(json["owner"], "nodePortRange");
        assert_eq!(json["socket"]["port"], 30080);
    }
}
