//! `sluice-agent connectivity-test`: probe every class of traffic a cluster
//! sends, through the real datapath, and name the hop and the likely reason
//! for each failure. The classes (Cilium's connectivity test has the same):
//!
//! - `pod-to-pod`: from this node's health endpoint (a pod) to every node's
//!   health endpoint (ICMP and TCP), and with `--pods` to every local pod.
//! - `pod-to-host`: from the health endpoint to every node's own address.
//! - `host-to-pod`: from this node's stack to every node's health endpoint.
//! - `pod-to-service`: with `--service ADDR:PORT`, a TCP connect from the
//!   health endpoint (kube-proxy's DNAT, replies back through the stack).
//! - `pod-to-world`: with `--world ADDR[:PORT]`, ICMP (or a TCP connect)
//!   from the health endpoint (masquerade).
//!
//! On a dual-stack node every class is probed over IPv6 too, as rows of
//! their own: the health endpoints' and nodes' IPv6 addresses, the
//! NodePort on every node's IPv6 address, and `--service`/`--world` given
//! once more with an IPv6 address (`[fd00:96::a]:80`).
//! - `pod-to-nodeport`: a TCP connect from the health endpoint to every
//!   other node's address on a NodePort: `--node-port PORT`, or, when the
//!   socket load balancer holds one, its lowest TCP NodePort with
//!   backends (translated at the socket with
//!   `--kube-proxy-replacement=true`, else kube-proxy's DNAT on the other
//!   node).
//! - `world-to-nodeport`: with `--world-netns PATH` (a network namespace
//!   outside the cluster whose traffic reaches the nodes as the world's
//!   does, not through any node's stack or socket load balancer), a TCP
//!   connect from there to every node's address, this one's too, on the
//!   same NodePort: the uplink's translation (`from_uplink`) with
//!   `--kube-proxy-replacement=true`, else kube-proxy's DNAT. The probing
//!   process sits in a cgroup the socket load balancer covers, so its
//!   socket carries `SOCK_LB_BYPASS_MARK`: left untranslated, the
//!   connection goes out on the wire as an outside client's would.
//!
//! `targets` decides who to probe (pure), `run` probes, `diagnose` decides
//! why a probe failed from the evidence gathered.
pub mod diagnose;
pub mod icmp;
pub mod peer_drops;

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use serde::Serialize;
use sluice_node::{
    datapath::{
        pinned_maps::{self, Endpoints, NodeRoutes},
        pins::PinDir,
    },
    net::{netlink::Netlink, netns, vxlan},
};

use crate::health_endpoint as health;
use crate::{
    membership::PeerPath,
    reconcile::{
        kernel_routes,
        map_routes::{is_node_entry, Hop},
    },
    state_file::{self, AgentState},
};

const TIMEOUT: Duration = Duration::from_millis(1000);

/// Which kind of traffic a probe stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Class {
    PodToPod,
    PodToHost,
    HostToPod,
    PodToService,
    PodToWorld,
    #[serde(rename = "pod-to-nodeport")]
    PodToNodePort,
    #[serde(rename = "world-to-nodeport")]
    WorldToNodePort,
}

impl Class {
    pub fn name(self) -> &'static str {
        match self {
            Class::PodToPod => "pod-to-pod",
            Class::PodToHost => "pod-to-host",
            Class::HostToPod => "host-to-pod",
            Class::PodToService => "pod-to-service",
            Class::PodToWorld => "pod-to-world",
            Class::PodToNodePort => "pod-to-nodeport",
            Class::WorldToNodePort => "world-to-nodeport",
        }
    }

    /// Probed from the health endpoint (a pod), or from the node's stack
    /// (or, `world-to-nodeport`, the world's namespace).
    pub fn from_pod(self) -> bool {
        !matches!(self, Class::HostToPod | Class::WorldToNodePort)
    }
}

/// What is probed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// A node's health endpoint (answers TCP on `HEALTH_PORT`).
    Health,
    /// A pod on this node (ICMP only).
    Pod,
    /// A node's own address (ICMP).
    Host,
    Service,
    World,
    /// Another node's address on a NodePort.
    NodePort,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    pub class: Class,
    pub kind: Kind,
    /// Node the target lives on ("-" for services and the world).
    pub node: String,
    pub ip: IpAddr,
    /// TCP port probed: `HEALTH_PORT` for health endpoints, the given one
    /// for services and the world; `None`: ICMP only.
    pub port: Option<u16>,
    /// Probe ICMP (services do not answer it under kube-proxy).
    pub icmp: bool,
    /// The node's own address, for telling "peer down" from "endpoint down".
    pub node_ip: Option<IpAddr>,
    /// The pod CIDR the target's node owns (health endpoints of peers).
    pub pod_cidr: Option<IpNetwork>,
    pub local: bool,
    /// How this node's packets reach the target's pod CIDR (peers' health
    /// endpoints, from a pod and from the node): native or VXLAN.
    pub path: Option<PeerPath>,
    /// Set when the target cannot even be tried (e.g. no route).
    pub known_problem: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbeResult {
    pub target: Target,
    pub icmp_ms: Option<f64>,
    pub icmp_error: Option<String>,
    /// `None` when not probed.
    pub tcp_ms: Option<f64>,
    pub tcp_error: Option<String>,
    pub ok: bool,
    pub reason: Option<String>,
}

/// What to probe besides the nodes (from the command line).
#[derive(Clone, Debug, Default)]
pub struct Extra {
    /// Where peers' agents serve metrics (their drop counters name the hop).
    pub peer_metrics_port: u16,
    pub pods: bool,
    /// Services to probe, one per family on a dual-stack node.
    pub service: Vec<SocketAddr>,
    /// Addresses outside the cluster, one per family on a dual-stack node.
    pub world: Vec<(IpAddr, Option<u16>)>,
    /// The NodePort `pod-to-nodeport` probes (see `pick_node_port`).
    pub node_port: Option<u16>,
    /// A network namespace outside the cluster: `world-to-nodeport` probes
    /// the NodePort on every node from there.
    pub world_netns: Option<PathBuf>,
}

/// The NodePort to probe when none is given: the lowest TCP NodePort the
/// socket load balancer holds with backends (`None`: no such entry, or
/// Services are kube-proxy's: then only `--node-port` names one).
pub fn pick_node_port(
    entries: &[(sluice_common::services::ServiceKey, sluice_common::services::ServiceValue)],
) -> Option<u16> {
    use sluice_common::services::{admission, Admission, SCOPE_NODE_PORT};
    entries
        .iter()
        .filter(|(k, v)| k.scope == SCOPE_NODE_PORT && k.protocol == 6 && admission(v) == Admission::Balance)
        .map(|(k, _)| u16::from_be(k.port_be))
        .min()
}

/// Parse `ADDR` or `ADDR:PORT` (an IPv6 address with a port in brackets:
/// `[fd00::1]:80`).
pub fn parse_addr(s: &str) -> Result<(IpAddr, Option<u16>), String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok((a.ip(), Some(a.port())));
    }
    s.parse::<IpAddr>()
        .map(|ip| (ip, None))
        .map_err(|_| format!("{s:?} is not ADDR or ADDR:PORT (IPv4), ADDR or [ADDR]:PORT (IPv6)"))
}

/// A health endpoint's answer must name its node; a service or the world
/// only has to accept the connection.
/// `mark`: the socket's `SO_MARK` (the world probe's
/// `SOCK_LB_BYPASS_MARK`, so the socket load balancer leaves it alone).
fn tcp_probe(ip: IpAddr, port: u16, expect_health: bool, mark: Option<u32>) -> Result<Duration, String> {
    use std::io::Read;
    let start = Instant::now();
    let mut s = connect_marked(SocketAddr::from((ip, port)), mark).map_err(|e| e.to_string())?;
    if !expect_health {
        return Ok(start.elapsed());
    }
    s.set_read_timeout(Some(TIMEOUT)).map_err(|e| e.to_string())?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).map_err(|e| e.to_string())?;
    if !buf.starts_with("sluice-health") {
        return Err(format!("unexpected answer {buf:?}"));
    }
    Ok(start.elapsed())
}

fn connect_marked(to: SocketAddr, mark: Option<u32>) -> std::io::Result<TcpStream> {
    let Some(mark) = mark else { return TcpStream::connect_timeout(&to, TIMEOUT) };
    let socket =
        socket2::Socket::new(socket2::Domain::for_address(to), socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    socket.set_mark(mark)?;
    socket.connect_timeout(&to.into(), TIMEOUT)?;
    Ok(socket.into())
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 100.0).round() / 100.0
}

/// A route of the routes map: a peer's pod CIDR, its node IP, and whether
/// it is tunneled.
pub type RouteHop = (Ipv4Network, Ipv4Addr, bool);

/// A dual-stack node's IPv6 facts: its own IPv6 address, and the kernel's
/// IPv6 routes to other nodes' IPv6 pod CIDRs: via their IPv6 addresses
/// (`routes6`), or into the VXLAN device with an encap naming their IPv4
/// node address, or, on an IPv6-only node, their IPv6 one (`tunneled6`:
/// peers behind a router).
#[derive(Clone, Debug, Default)]
pub struct Ipv6Facts {
    pub own_node_ip6: Option<Ipv6Addr>,
    pub routes6: Vec<(Ipv6Network, Ipv6Addr)>,
    pub tunneled6: Vec<(Ipv6Network, IpAddr)>,
}

/// Who to probe (pure): from the routes map's CIDRs, node IPs and paths,
/// this node's own facts, the agent's membership problems and local pods;
/// on a dual-stack node (the state names an IPv6 pod CIDR) the same
/// node-level classes over IPv6 too, from `six`.
pub fn targets(
    state: &AgentState,
    own_node_ip: Option<Ipv4Addr>,
    routes: &[RouteHop],
    local_pods: &[Ipv4Addr],
    extra: &Extra,
    six: &Ipv6Facts,
) -> Result<Vec<Target>> {
    if state.pod_cidr.is_empty() {
        // An IPv6-only node (no IPv4 pod CIDR): the IPv6 node classes alone;
        // the extra classes are built with the IPv4 rows (not yet here).
        if extra.pods || !extra.service.is_empty() || !extra.world.is_empty() || extra.node_port.is_some() {
            anyhow::bail!(
                "on an IPv6-only node connectivity-test probes pod-to-pod, pod-to-host and host-to-pod over IPv6; \
                 --pods, --service, --world and --node-port are not supported there yet"
            );
        }
        return Ok(targets6(state, &nodes6(state, six)?));
    }
    let own_cidr: Ipv4Network = state.pod_cidr.parse().context("agent state pod CIDR")?;
    let own_health = health::health_ip(own_cidr);
    let base = |class, kind, node: String, ip: IpAddr, local| Target {
        class,
        kind,
        node,
        ip,
        port: None,
        icmp: true,
        node_ip: None,
        pod_cidr: None,
        local,
        path: None,
        known_problem: None,
    };
    let health_port = Some(health::HEALTH_PORT);
    // (name, pod CIDR, node IP, local, path)
    type NodeRow = (String, Ipv4Network, Option<Ipv4Addr>, bool, Option<PeerPath>);
    let mut nodes: Vec<NodeRow> = vec![(state.node_name.clone(), own_cidr, own_node_ip, true, None)];
    for (cidr, ip, vxlan) in routes {
        let name = state.route_nodes.get(&cidr.to_string()).cloned().unwrap_or_else(|| format!("node at {ip}"));
        let path = if *vxlan { PeerPath::Vxlan } else { PeerPath::Native };
        nodes.push((name, *cidr, Some(*ip), false, Some(path)));
    }
    // Every node's health endpoint, as one class sees it.
    let health_endpoints = |class| {
        nodes.iter().map(move |(node, cidr, node_ip, local, path)| Target {
            port: health_port,
            node_ip: node_ip.map(IpAddr::V4),
            pod_cidr: Some(IpNetwork::V4(*cidr)),
            path: *path,
            ..base(class, Kind::Health, node.clone(), health::health_ip(*cidr).into(), *local)
        })
    };
    let mut out: Vec<Target> = health_endpoints(Class::PodToPod).collect();
    for problem in &state.problems {
        out.push(Target {
            known_problem: Some(format!("no route: {problem}")),
            ..base(Class::PodToPod, Kind::Health, problem.node().to_string(), Ipv4Addr::UNSPECIFIED.into(), false)
        });
    }
    if extra.pods {
        for ip in local_pods.iter().filter(|ip| **ip != own_health) {
            out.push(Target {
                node_ip: own_node_ip.map(IpAddr::V4),
                ..base(Class::PodToPod, Kind::Pod, state.node_name.clone(), (*ip).into(), true)
            });
        }
    }
    // A tunneled peer's own address is reached through the tunnel too
    // (its node IP's entry in NODE_ROUTES).
    for (node, _, node_ip, local, path) in &nodes {
        if let Some(ip) = node_ip {
            out.push(Target {
                node_ip: Some((*ip).into()),
                path: *path,
                ..base(Class::PodToHost, Kind::Host, node.clone(), (*ip).into(), *local)
            });
        }
    }
    out.extend(health_endpoints(Class::HostToPod));
    let nodes6 = nodes6(state, six)?;
    out.extend(targets6(state, &nodes6));
    // IPv4 first, then IPv6, for the classes given by address.
    let mut services = extra.service.clone();
    services.sort_by_key(|a| a.is_ipv6());
    for svc in services {
        out.push(Target {
            port: Some(svc.port()),
            icmp: false,
            ..base(Class::PodToService, Kind::Service, "-".into(), svc.ip(), false)
        });
    }
    // A NodePort on every node's address that has one, as `class` sees it.
    let node_ports = |class, port, with_this_node: bool| {
        nodes.iter().filter(move |n| with_this_node || !n.3).filter_map(move |(node, _, node_ip, local, path)| {
            node_ip.map(|ip| Target {
                port: Some(port),
                icmp: false,
                node_ip: Some(ip.into()),
                path: *path,
                ..base(class, Kind::NodePort, node.clone(), ip.into(), *local)
            })
        })
    };
    // The same over IPv6: every node whose IPv6 address is known.
    let node_ports6 = |class, port, with_this_node: bool| {
        nodes6.iter().filter(move |n| with_this_node || !n.local).filter_map(move |n| {
            n.host6.map(|ip| Target {
                port: Some(port),
                icmp: false,
                node_ip: Some(ip.into()),
                path: n.path,
                ..base(class, Kind::NodePort, n.name.clone(), ip.into(), n.local)
            })
        })
    };
    if let Some(port) = extra.node_port {
        // From this node's pods: the other nodes'.
        out.extend(node_ports(Class::PodToNodePort, port, false));
        out.extend(node_ports6(Class::PodToNodePort, port, false));
        // From outside: every node's, this one's included.
        if extra.world_netns.is_some() {
            out.extend(node_ports(Class::WorldToNodePort, port, true));
            out.extend(node_ports6(Class::WorldToNodePort, port, true));
        }
    }
    let mut world = extra.world.clone();
    world.sort_by_key(|(ip, _)| ip.is_ipv6());
    for (ip, port) in world {
        out.push(Target { port, icmp: port.is_none(), ..base(Class::PodToWorld, Kind::World, "-".into(), ip, false) });
    }
    Ok(out)
}

/// One node as the IPv6 rows see it.
struct Node6 {
    name: String,
    cidr6: Ipv6Network,
    /// The address a failure names (its IPv6; a tunneled peer's IPv4, the
    /// tunnel's far end).
    node_ip: Option<IpAddr>,
    /// Its IPv6 address, probed as `pod-to-host` and on the NodePort (a
    /// tunneled peer's from the state file: its route names only the
    /// IPv4 end).
    host6: Option<Ipv6Addr>,
    local: bool,
    path: Option<PeerPath>,
}

/// The nodes of the IPv6 rows (dual-stack): this one, peers natively
/// routed, then peers whose IPv6 pod CIDR goes into the VXLAN device
/// (path `vxlan`, named by their IPv4 node address; their IPv6 address,
/// which the underlay routes, not sluice, from the agent's state:
/// `routeNodeIps6`, absent from an older agent's). None on an IPv4-only
/// node.
fn nodes6(state: &AgentState, six: &Ipv6Facts) -> Result<Vec<Node6>> {
    let Some(own_cidr6) = &state.pod_cidr6 else { return Ok(Vec::new()) };
    let own_cidr6: Ipv6Network = own_cidr6.parse().context("agent state IPv6 pod CIDR")?;
    let name_of = |cidr: &Ipv6Network, ip: IpAddr| {
        state.route_nodes6.get(&cidr.to_string()).cloned().unwrap_or_else(|| format!("node at {ip}"))
    };
    let mut nodes = vec![Node6 {
        name: state.node_name.clone(),
        cidr6: own_cidr6,
        node_ip: six.own_node_ip6.map(IpAddr::V6),
        host6: six.own_node_ip6,
        local: true,
        path: None,
    }];
    for (cidr, ip) in &six.routes6 {
        let node_ip = IpAddr::V6(*ip);
        let (host6, path) = (Some(*ip), Some(PeerPath::Native));
        nodes.push(Node6 {
            name: name_of(cidr, node_ip),
            cidr6: *cidr,
            node_ip: Some(node_ip),
            host6,
            local: false,
            path,
        });
    }
    for (cidr, outer) in &six.tunneled6 {
        let node_ip = *outer;
        let path = Some(PeerPath::Vxlan);
        let host6 = state.route_node_ips6.get(&cidr.to_string()).and_then(|ip| ip.parse().ok());
        nodes.push(Node6 {
            name: name_of(cidr, node_ip),
            cidr6: *cidr,
            node_ip: Some(node_ip),
            host6,
            local: false,
            path,
        });
    }
    Ok(nodes)
}

/// The IPv6 rows of `nodes6` (dual-stack): every node's health endpoint
/// from the local one (`pod-to-pod`) and from the node (`host-to-pod`),
/// and every node's IPv6 address from the health endpoint (`pod-to-host`).
/// Nodes left out of the IPv6 routes are rows with their reason, not
/// tried. None on an IPv4-only node.
fn targets6(state: &AgentState, nodes: &[Node6]) -> Vec<Target> {
    let Some(own_cidr6) = nodes.first().filter(|n| n.local).map(|n| n.cidr6) else { return Vec::new() };
    let target = |class, kind, n: &Node6, ip: Ipv6Addr, cidr: Option<Ipv6Network>| Target {
        class,
        kind,
        node: n.name.clone(),
        ip: ip.into(),
        port: (kind == Kind::Health).then_some(health::HEALTH_PORT),
        icmp: true,
        node_ip: n.node_ip,
        pod_cidr: cidr.map(IpNetwork::V6),
        local: n.local,
        path: n.path,
        known_problem: None,
    };
    let health =
        |class| nodes.iter().map(move |n| target(class, Kind::Health, n, health::health_ip6(n.cidr6), Some(n.cidr6)));
    let mut out: Vec<Target> = health(Class::PodToPod).collect();
    for problem in &state.problems6 {
        let unknown = Node6 {
            name: problem.node().to_string(),
            cidr6: own_cidr6,
            node_ip: None,
            host6: None,
            local: false,
            path: Some(PeerPath::Native),
        };
        out.push(Target {
            known_problem: Some(format!("no IPv6 route: {problem}")),
            ..target(Class::PodToPod, Kind::Health, &unknown, Ipv6Addr::UNSPECIFIED, None)
        });
    }
    for n in nodes {
        if let Some(ip) = n.host6 {
            out.push(target(Class::PodToHost, Kind::Host, n, ip, None));
        }
    }
    out.extend(health(Class::HostToPod));
    out
}

fn drops_total(pins: &PinDir) -> Vec<(String, u64)> {
    pinned_maps::drops(pins).map(|v| v.iter().map(|(r, n)| (r.name().to_string(), *n)).collect()).unwrap_or_default()
}

type Probe = (Option<Result<Duration, String>>, Option<Result<Duration, String>>);

/// ICMP is best effort (a lost echo is no broken path): a second echo,
/// its own sequence number, when the first gets no reply within `TIMEOUT`.
fn echo(ip: IpAddr, seq: u16) -> Result<Duration, String> {
    icmp::ping_any(ip, TIMEOUT, seq).or_else(|_| icmp::ping_any(ip, TIMEOUT, seq | 0x8000))
}

/// ICMP and/or TCP to `t`, from the calling thread's namespace.
fn probe(t: &Target, seq: u16) -> Probe {
    let icmp_r = t.icmp.then(|| echo(t.ip, seq));
    // From the world: past the socket load balancer, onto the wire.
    let mark = (t.class == Class::WorldToNodePort).then_some(sluice_common::maps::SOCK_LB_BYPASS_MARK);
    let tcp_r = t.port.map(|port| tcp_probe(t.ip, port, t.kind == Kind::Health, mark));
    (icmp_r, tcp_r)
}

pub async fn run(pins: &PinDir, data_dir: &Path, extra: &Extra) -> Result<Vec<ProbeResult>> {
    let state = state_file::read(data_dir).context("agent state (has the agent run on this node?)")?;
    let own_node_ip = pinned_maps::read_node_config(pins).map(|c| pinned_maps::ip_from_be(c.node_ip_be)).ok();
    let routes: Vec<RouteHop> = NodeRoutes::open(pins)?
        .all_hops()?
        .into_iter()
        .filter(|(cidr, (ip, vxlan))| !is_node_entry(*cidr, &Hop { node_ip: *ip, vxlan: *vxlan }))
        .map(|(cidr, (ip, vxlan))| (cidr, ip, vxlan))
        .collect();
    let local_pods: Vec<Ipv4Addr> = Endpoints::open(pins)?.all()?.into_keys().collect();
    let mut extra = extra.clone();
    if extra.node_port.is_none() {
        // Absent maps (Services left to kube-proxy): nothing to pick.
        extra.node_port = sluice_node::datapath::service_maps::ServiceMaps::open(pins)
            .and_then(|m| m.services())
            .ok()
            .and_then(|entries| pick_node_port(&entries));
    }
    let netlink = Netlink::open()?;
    let uplink = netlink.link_by_name(&state.uplink).await?;
    let uplink_up = uplink.as_ref().map(|l| l.up).unwrap_or(false);
    let tunnel_up = netlink.link_by_name(vxlan::DEVICE).await?.map(|l| l.up).unwrap_or(false);
    let mut kernel_routes: BTreeSet<IpNetwork> = netlink
        .routes_of_protocol(kernel_routes::ROUTE_PROTOCOL)
        .await?
        .into_iter()
        .map(|r| IpNetwork::V4(r.dst))
        .collect();
    let mut six = Ipv6Facts::default();
    if state.pod_cidr6.is_some() {
        let routes6 = netlink.main_routes6(Some(kernel_routes::ROUTE_PROTOCOL)).await?;
        kernel_routes.extend(routes6.iter().map(|r| IpNetwork::V6(r.dst)));
        six.routes6 = routes6.iter().filter_map(|r| Some((r.dst, r.gateway?))).collect();
        // Peers behind a router: their IPv6 pod CIDR goes into the VXLAN
        // device, the encap naming their IPv4 node address (their IPv6 one
        // on an IPv6-only node).
        six.tunneled6 = routes6.iter().filter_map(|r| Some((r.dst, r.encap?.dst))).collect();
        if let Some(l) = &uplink {
            six.own_node_ip6 = netlink.first_global_ipv6(l.index).await?.map(|(ip, _)| ip);
        }
    }
    let targets = targets(&state, own_node_ip, &routes, &local_pods, &extra, &six)?;
    let health_ns = PathBuf::from(&state.health_netns);

    let mut results = Vec::new();
    for (seq, t) in targets.into_iter().enumerate() {
        if let Some(p) = &t.known_problem {
            results.push(ProbeResult {
                target: t.clone(),
                icmp_ms: None,
                icmp_error: Some("not tried".into()),
                tcp_ms: None,
                tcp_error: None,
                ok: false,
                reason: Some(p.clone()),
            });
            continue;
        }
        let before = drops_total(pins);
        // The peer's metrics answer on its IPv4 address.
        let peer = match t.node_ip {
            Some(IpAddr::V4(ip)) if !t.local => Some(ip),
            _ => None,
        };
        let peer_before = peer.and_then(|ip| peer_drops::fetch(ip, extra.peer_metrics_port));
        let seq = seq as u16 + 1;
        let (icmp_r, tcp_r) = if let (Class::WorldToNodePort, Some(world)) = (t.class, &extra.world_netns) {
            let target = t.clone();
            netns::run_in(world, move || Ok(probe(&target, seq)))
                .with_context(|| format!("enter the world's namespace {}", world.display()))?
        } else if t.class.from_pod() {
            // From inside the local health endpoint: through from_pod.
            let target = t.clone();
            netns::run_in(&health_ns, move || Ok(probe(&target, seq)))?
        } else {
            probe(&t, seq)
        };
        let after = drops_total(pins);
        let ok = icmp_r.as_ref().is_none_or(|r| r.is_ok()) && tcp_r.as_ref().is_none_or(|r| r.is_ok());
        let peer_after = match (peer, &peer_before) {
            (Some(ip), Some(_)) if !ok => peer_drops::fetch(ip, extra.peer_metrics_port),
            _ => None,
        };
        // What the peer's datapath counts for a delivery from this node.
        let delivered = if t.path == Some(PeerPath::Vxlan) { "tunnel_to_pod" } else { "uplink_to_pod" };
        let (peer_dropped, peer_delivered) = match (&peer_before, &peer_after) {
            (Some(b), Some(a)) => (
                peer_drops::delta(&b.drops, &a.drops),
                Some(peer_drops::delta(&b.forwards, &a.forwards).iter().any(|(p, _)| p == delivered)),
            ),
            _ => (Vec::new(), None),
        };
        let reason = (!ok).then(|| {
            let facts = diagnose::Facts {
                peer_dropped: &peer_dropped,
                peer_delivered,
                uplink_up,
                uplink: &state.uplink,
                tunnel_up,
                drops_before: &before,
                drops_after: &after,
                kernel_route_present: t.pod_cidr.is_none_or(|c| t.local || kernel_routes.contains(&c)),
            };
            diagnose::diagnose(&t, &facts, |ip, port| {
                // Asked from the node's own namespace, the same way.
                match port {
                    Some(p) => tcp_probe(ip, p, false, None).is_ok(),
                    None => icmp::ping_any(ip, TIMEOUT, 60000).is_ok(),
                }
            })
        });
        results.push(ProbeResult {
            target: t,
            icmp_ms: icmp_r.as_ref().and_then(|r| r.as_ref().ok()).map(|d| ms(*d)),
            icmp_error: icmp_r.and_then(|r| r.err()),
            tcp_ms: tcp_r.as_ref().and_then(|r| r.as_ref().ok()).map(|d| ms(*d)),
            tcp_error: tcp_r.and_then(|r| r.err()),
            ok,
            reason,
        });
    }
    Ok(results)
}

pub fn render(results: &[ProbeResult]) -> String {
    let mut o = format!(
        "{:<15} {:<12} {:<8} {:<21} {:<6} {:>10} {:>10}  {}\n",
        "class", "node", "target", "address", "path", "icmp", "tcp", "result"
    );
    for r in results {
        let cell = |ms: Option<f64>, err: &Option<String>, tried: bool| match (ms, err) {
            (Some(m), _) => format!("{m:.2} ms"),
            (None, Some(_)) => "FAIL".to_string(),
            (None, None) if tried => "FAIL".into(),
            _ => "-".into(),
        };
        let t = &r.target;
        let addr = match (t.ip.is_unspecified(), t.port) {
            (true, _) => "-".to_string(),
            (false, Some(p)) if t.kind != Kind::Health => SocketAddr::from((t.ip, p)).to_string(),
            _ => t.ip.to_string(),
        };
        let kind = serde_json::to_value(t.kind).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
        let path = match t.path {
            Some(PeerPath::Native) => "native",
            Some(PeerPath::Vxlan) => "vxlan",
            None => "-",
        };
        o.push_str(&format!(
            "{:<15} {:<12} {:<8} {:<21} {:<6} {:>10} {:>10}  {}\n",
            t.class.name(),
            t.node,
            kind,
            addr,
            path,
            cell(r.icmp_ms, &r.icmp_error, t.icmp),
            cell(r.tcp_ms, &r.tcp_error, t.port.is_some()),
            if r.ok { "ok".to_string() } else { format!("FAILED: {}", r.reason.clone().unwrap_or_default()) }
        ));
    }
    let failed = results.iter().filter(|r| !r.ok).count();
    o.push_str(&format!("{} of {} targets reached\n", results.len() - failed, results.len()));
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::Problem;

    fn state() -> AgentState {
        AgentState {
            node_name: "n1".into(),
            pod_cidr: "10.244.1.0/24".into(),
            route_nodes: [("10.244.2.0/24".to_string(), "n2".to_string())].into(),
            problems: vec![Problem::NoPodCidr { node: "n4".into() }],
            ..Default::default()
        }
    }

    #[test]
    fn every_class_is_probed() {
        let routes = vec![("10.244.2.0/24".parse().unwrap(), "172.30.0.2".parse().unwrap(), false)];
        let pods = vec!["10.244.1.1".parse().unwrap(), "10.244.1.5".parse().unwrap()];
        let extra = Extra {
            peer_metrics_port: 9962,
            pods: true,
            service: vec!["10.96.0.10:53".parse().unwrap()],
            world: vec![("198.51.100.1".parse().unwrap(), None)],
            node_port: Some(30080),
            world_netns: Some("/run/netns/world".into()),
        };
        let t = targets(&state(), Some("172.30.0.1".parse().unwrap()), &routes, &pods, &extra, &Ipv6Facts::default())
            .unwrap();
        let summary: Vec<(String, &str, String)> =
            t.iter().map(|t| (t.class.name().to_string(), t.node.as_str(), t.ip.to_string())).collect();
        let want: Vec<(String, &str, String)> = [
            ("pod-to-pod", "n1", "10.244.1.1"),
            ("pod-to-pod", "n2", "10.244.2.1"),
            ("pod-to-pod", "n4", "0.0.0.0"),
            ("pod-to-pod", "n1", "10.244.1.5"),
            ("pod-to-host", "n1", "172.30.0.1"),
            ("pod-to-host", "n2", "172.30.0.2"),
            ("host-to-pod", "n1", "10.244.1.1"),
            ("host-to-pod", "n2", "10.244.2.1"),
            ("pod-to-service", "-", "10.96.0.10"),
            ("pod-to-nodeport", "n2", "172.30.0.2"),
            ("world-to-nodeport", "n1", "172.30.0.1"),
            ("world-to-nodeport", "n2", "172.30.0.2"),
            ("pod-to-world", "-", "198.51.100.1"),
        ]
        .iter()
        .map(|(c, n, ip)| (c.to_string(), *n, ip.to_string()))
        .collect();
        assert_eq!(summary, want);
        assert!(t[2].known_problem.as_deref().unwrap().contains("n4 has no pod CIDR"));
        let svc = &t[8];
        assert_eq!((svc.port, svc.icmp), (Some(53), false), "services answer TCP, not ping");
        let np = &t[9];
        assert_eq!(
            (np.port, np.icmp, np.local, np.kind),
            (Some(30080), false, false, Kind::NodePort),
            "another node's"
        );
        assert_eq!(serde_json::to_value(np.class).unwrap(), "pod-to-nodeport");
        let world = &t[10];
        assert_eq!((world.port, world.icmp, world.local, world.kind), (Some(30080), false, true, Kind::NodePort));
        assert_eq!(serde_json::to_value(world.class).unwrap(), "world-to-nodeport");
        assert_eq!((t[12].port, t[12].icmp), (None, true));
        assert!(!Class::HostToPod.from_pod() && Class::PodToWorld.from_pod() && !Class::WorldToNodePort.from_pod());
    }

    #[test]
    fn a_dual_stack_node_probes_the_node_classes_over_ipv6_too() {
        use crate::membership::family6::Problem6;
        let dual = AgentState {
            pod_cidr6: Some("fd00:244:0:1::/64".into()),
            route_nodes6: [("fd00:244:0:2::/64".to_string(), "n2".to_string())].into(),
            problems6: vec![Problem6::NoNodeIp6 { node: "n3".into() }],
            ..state()
        };
        let routes = vec![("10.244.2.0/24".parse().unwrap(), "172.30.0.2".parse().unwrap(), false)];
        let six = Ipv6Facts {
            own_node_ip6: Some("fd00:30::1".parse().unwrap()),
            routes6: vec![("fd00:244:0:2::/64".parse().unwrap(), "fd00:30::2".parse().unwrap())],
            tunneled6: Vec::new(),
        };
        let t = targets(&dual, Some("172.30.0.1".parse().unwrap()), &routes, &[], &Extra::default(), &six).unwrap();
        let v6: Vec<(&str, &str, String, Option<u16>)> = t
            .iter()
            .filter(|t| t.ip.is_ipv6())
            .map(|t| (t.class.name(), t.node.as_str(), t.ip.to_string(), t.port))
            .collect();
        assert_eq!(
            v6,
            vec![
                ("pod-to-pod", "n1", "fd00:244:0:1::1".to_string(), Some(health::HEALTH_PORT)),
                ("pod-to-pod", "n2", "fd00:244:0:2::1".into(), Some(health::HEALTH_PORT)),
                ("pod-to-pod", "n3", "::".into(), Some(health::HEALTH_PORT)),
                ("pod-to-host", "n1", "fd00:30::1".into(), None),
                ("pod-to-host", "n2", "fd00:30::2".into(), None),
                ("host-to-pod", "n1", "fd00:244:0:1::1".into(), Some(health::HEALTH_PORT)),
                ("host-to-pod", "n2", "fd00:244:0:2::1".into(), Some(health::HEALTH_PORT)),
            ]
        );
        let n3 = t.iter().find(|t| t.node == "n3" && t.ip.is_ipv6()).unwrap();
        assert!(n3.known_problem.as_deref().unwrap().starts_with("no IPv6 route: "), "{n3:?}");
        let n2 = t.iter().find(|t| t.node == "n2" && t.ip.is_ipv6() && t.class == Class::PodToPod).unwrap();
        assert_eq!(
            (n2.node_ip, n2.pod_cidr, n2.path, n2.local),
            (
                Some("fd00:30::2".parse().unwrap()),
                Some("fd00:244:0:2::/64".parse().unwrap()),
                Some(PeerPath::Native),
                false
            )
        );
        // The IPv4 rows are all still there, first.
        assert_eq!(t.iter().filter(|t| t.ip.is_ipv4()).count(), 7, "{t:#?}");
        // An IPv4-only node has no IPv6 rows, whatever the kernel holds.
        let t4 = targets(&state(), None, &routes, &[], &Extra::default(), &six).unwrap();
        assert!(t4.iter().all(|t| t.ip.is_ipv4()), "{t4:#?}");
        // An IPv6-only node (no IPv4 pod CIDR): the same IPv6 rows alone,
        // and the IPv4 extras refused by name.
        let v6only = AgentState { pod_cidr: String::new(), health_ip: String::new(), ..dual.clone() };
        let t6 = targets(&v6only, None, &[], &[], &Extra::default(), &six).unwrap();
        assert!(t6.iter().all(|t| t.ip.is_ipv6()), "{t6:#?}");
        assert_eq!(t6.len(), v6.len(), "{t6:#?}");
        let err = targets(&v6only, None, &[], &[], &Extra { pods: true, ..Extra::default() }, &six).unwrap_err();
        assert!(err.to_string().contains("IPv6-only"), "{err}");
    }

    /// A peer behind a router: its IPv6 pod CIDR's kernel route goes into
    /// the VXLAN device (an encap, no gateway); its health endpoint is
    /// probed over IPv6 too, on the `vxlan` path named by its IPv4 node
    /// address, and its IPv6 node address (from the state file: the route
    /// names only the IPv4 end) as `pod-to-host` and on the NodePort;
    /// without it in the state (an older agent's), no such rows.
    #[test]
    fn a_dual_stack_node_probes_peers_behind_a_router_over_ipv6_through_the_tunnel() {
        let dual = AgentState {
            pod_cidr6: Some("fd00:244:0:1::/64".into()),
            route_nodes6: [
                ("fd00:244:0:2::/64".to_string(), "n2".to_string()),
                ("fd00:244:0:3::/64".to_string(), "n3".to_string()),
            ]
            .into(),
            route_node_ips6: [
                ("fd00:244:0:2::/64".to_string(), "fd00:30::2".to_string()),
                ("fd00:244:0:3::/64".to_string(), "fd00:31::3".to_string()),
            ]
            .into(),
            ..state()
        };
        let routes = vec![
            ("10.244.2.0/24".parse().unwrap(), "172.30.0.2".parse().unwrap(), false),
            ("10.244.3.0/24".parse().unwrap(), "172.31.0.3".parse().unwrap(), true),
        ];
        let six = Ipv6Facts {
            own_node_ip6: Some("fd00:30::1".parse().unwrap()),
            routes6: vec![("fd00:244:0:2::/64".parse().unwrap(), "fd00:30::2".parse().unwrap())],
            tunneled6: vec![("fd00:244:0:3::/64".parse().unwrap(), "172.31.0.3".parse().unwrap())],
        };
        let t = targets(&dual, Some("172.30.0.1".parse().unwrap()), &routes, &[], &Extra::default(), &six).unwrap();
        let v6: Vec<(&str, &str, String, Option<PeerPath>)> = t
            .iter()
            .filter(|t| t.ip.is_ipv6())
            .map(|t| (t.class.name(), t.node.as_str(), t.ip.to_string(), t.path))
            .collect();
        let (native, vxlan) = (Some(PeerPath::Native), Some(PeerPath::Vxlan));
        assert_eq!(
            v6,
            vec![
                ("pod-to-pod", "n1", "fd00:244:0:1::1".to_string(), None),
                ("pod-to-pod", "n2", "fd00:244:0:2::1".into(), native),
                ("pod-to-pod", "n3", "fd00:244:0:3::1".into(), vxlan),
                ("pod-to-host", "n1", "fd00:30::1".into(), None),
                ("pod-to-host", "n2", "fd00:30::2".into(), native),
                ("pod-to-host", "n3", "fd00:31::3".into(), vxlan),
                ("host-to-pod", "n1", "fd00:244:0:1::1".into(), None),
                ("host-to-pod", "n2", "fd00:244:0:2::1".into(), native),
                ("host-to-pod", "n3", "fd00:244:0:3::1".into(), vxlan),
            ]
        );
        let with_node_port = Extra { node_port: Some(30080), ..Extra::default() };
        let t_np = targets(&dual, Some("172.30.0.1".parse().unwrap()), &routes, &[], &with_node_port, &six).unwrap();
        let np6: Vec<(&str, String, Option<PeerPath>)> = t_np
            .iter()
            .filter(|t| t.class == Class::PodToNodePort && t.ip.is_ipv6())
            .map(|t| (t.node.as_str(), t.ip.to_string(), t.path))
            .collect();
        assert_eq!(np6, [("n2", "fd00:30::2".to_string(), native), ("n3", "fd00:31::3".into(), vxlan)]);
        // An older agent's state without the peer's IPv6 address: no
        // pod-to-host row for it, the rest as before.
        let older = AgentState { route_node_ips6: Default::default(), ..dual.clone() };
        let t_old =
            targets(&older, Some("172.30.0.1".parse().unwrap()), &routes, &[], &Extra::default(), &six).unwrap();
        assert!(!t_old.iter().any(|t| t.class == Class::PodToHost && t.node == "n3" && t.ip.is_ipv6()), "{t_old:#?}");
        assert_eq!(t_old.iter().filter(|t| t.ip.is_ipv6()).count(), v6.len() - 1);
        let n3 = t.iter().find(|t| t.node == "n3" && t.ip.is_ipv6()).unwrap();
        assert_eq!(
            (n3.node_ip, n3.pod_cidr, n3.local, n3.port),
            (
                Some("172.31.0.3".parse().unwrap()),
                Some("fd00:244:0:3::/64".parse().unwrap()),
                false,
                Some(health::HEALTH_PORT)
            )
        );
    }

    /// The classes given by address and the NodePort, over IPv6 on a
    /// dual-stack node: a row per family, IPv4 first whatever the order of
    /// the flags; the NodePort on every node's IPv6 address that is known
    /// (this node's, natively routed peers'), from the pods the others',
    /// from the world every one.
    #[test]
    fn a_dual_stack_node_probes_service_nodeport_and_world_per_family() {
        let dual = AgentState {
            pod_cidr6: Some("fd00:244:0:1::/64".into()),
            route_nodes6: [("fd00:244:0:2::/64".to_string(), "n2".to_string())].into(),
            ..state()
        };
        let routes = vec![("10.244.2.0/24".parse().unwrap(), "172.30.0.2".parse().unwrap(), false)];
        let six = Ipv6Facts {
            own_node_ip6: Some("fd00:30::1".parse().unwrap()),
            routes6: vec![("fd00:244:0:2::/64".parse().unwrap(), "fd00:30::2".parse().unwrap())],
            tunneled6: Vec::new(),
        };
        let extra = Extra {
            service: vec!["[fd00:96::64]:80".parse().unwrap(), "10.96.0.100:80".parse().unwrap()],
            world: vec![parse_addr("[fd00:30::fe]:80").unwrap(), parse_addr("172.30.0.250:80").unwrap()],
            node_port: Some(30080),
            world_netns: Some("/run/netns/world".into()),
            ..Extra::default()
        };
        let t = targets(&dual, Some("172.30.0.1".parse().unwrap()), &routes, &[], &extra, &six).unwrap();
        let rows: Vec<(&str, &str, String, Option<u16>, bool)> = t
            .iter()
            .filter(|t| !matches!(t.class, Class::PodToPod | Class::PodToHost | Class::HostToPod))
            .map(|t| (t.class.name(), t.node.as_str(), t.ip.to_string(), t.port, t.icmp))
            .collect();
        let row = |c, n, ip: &str, port| (c, n, ip.to_string(), Some(port), false);
        assert_eq!(
            rows,
            [
                row("pod-to-service", "-", "10.96.0.100", 80),
                row("pod-to-service", "-", "fd00:96::64", 80),
                row("pod-to-nodeport", "n2", "172.30.0.2", 30080),
                row("pod-to-nodeport", "n2", "fd00:30::2", 30080),
                row("world-to-nodeport", "n1", "172.30.0.1", 30080),
                row("world-to-nodeport", "n2", "172.30.0.2", 30080),
                row("world-to-nodeport", "n1", "fd00:30::1", 30080),
                row("world-to-nodeport", "n2", "fd00:30::2", 30080),
                row("pod-to-world", "-", "172.30.0.250", 80),
                row("pod-to-world", "-", "fd00:30::fe", 80),
            ]
        );
        let np6 = t.iter().find(|t| t.class == Class::PodToNodePort && t.ip.is_ipv6()).unwrap();
        assert_eq!(
            (np6.node_ip, np6.path, np6.local),
            (Some("fd00:30::2".parse().unwrap()), Some(PeerPath::Native), false)
        );
        // An IPv4-only node: no IPv6 NodePort rows, whatever the kernel holds.
        let t4 =
            targets(&state(), None, &routes, &[], &Extra { world: Vec::new(), service: Vec::new(), ..extra }, &six)
                .unwrap();
        assert!(t4.iter().all(|t| t.ip.is_ipv4()), "{t4:#?}");
    }

    #[test]
    fn peers_health_endpoints_carry_their_path() {
        let routes = vec![
            ("10.244.2.0/24".parse().unwrap(), "172.30.0.2".parse().unwrap(), false),
            ("10.244.3.0/24".parse().unwrap(), "172.31.0.3".parse().unwrap(), true),
        ];
        let t = targets(
            &state(),
            Some("172.30.0.1".parse().unwrap()),
            &routes,
            &[],
            &Extra::default(),
            &Ipv6Facts::default(),
        )
        .unwrap();
        let paths: Vec<(&str, String, Option<PeerPath>)> = t
            .iter()
            .filter(|t| t.kind == Kind::Health && !t.ip.is_unspecified())
            .map(|t| (t.class.name(), t.ip.to_string(), t.path))
            .collect();
        let want = |class| {
            [(class, "10.244.1.1".to_string(), None), (class, "10.244.2.1".into(), Some(PeerPath::Native))]
                .into_iter()
                .chain([(class, "10.244.3.1".to_string(), Some(PeerPath::Vxlan))])
        };
        assert_eq!(paths, want("pod-to-pod").chain(want("host-to-pod")).collect::<Vec<_>>());
        let text = render(&[ProbeResult {
            target: t[2].clone(),
            icmp_ms: Some(0.1),
            icmp_error: None,
            tcp_ms: Some(0.2),
            tcp_error: None,
            ok: true,
            reason: None,
        }]);
        assert!(text.lines().nth(1).unwrap().contains("10.244.3.1            vxlan"), "{text}");
    }

    #[test]
    fn the_node_port_probed_is_the_lowest_balanced_tcp_one() {
        use sluice_common::services::{ServiceKey, ServiceValue, SCOPE_ADDRESS};
        let v = |count| ServiceValue { backend_set: 1, count, ..Default::default() };
        let np = |port: u16, protocol| ServiceKey::node_port(port.to_be(), protocol);
        let entries = [
            (np(30001, 6), v(0)),
            (np(30002, 17), v(1)),
            (ServiceKey { vip_be: 1, port_be: 80u16.to_be(), protocol: 6, scope: SCOPE_ADDRESS }, v(1)),
            (np(30400, 6), v(2)),
            (np(30300, 6), v(1)),
        ];
        assert_eq!(pick_node_port(&entries), Some(30300), "no endpoints, UDP and cluster IPs are not probed");
        assert_eq!(pick_node_port(&entries[..3]), None);
    }

    #[test]
    fn addresses_parse_with_and_without_port() {
        assert_eq!(parse_addr("10.0.0.1:80"), Ok(("10.0.0.1".parse().unwrap(), Some(80))));
        assert_eq!(parse_addr("10.0.0.1"), Ok(("10.0.0.1".parse().unwrap(), None)));
        assert_eq!(parse_addr("[fd00::1]:80"), Ok(("fd00::1".parse().unwrap(), Some(80))));
        assert_eq!(parse_addr("fd00::1"), Ok(("fd00::1".parse().unwrap(), None)));
        assert!(parse_addr("example.com").is_err());
        assert!(parse_addr("fd00::1:80:").is_err());
    }
}
