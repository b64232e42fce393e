//! The lab as a model of a real cluster: what a kubeadm node has besides
//! the pod network, so the lab shows what a cluster would.
//!
//! ```text
//!   LAN ── world (172.30.0.250): not a node, no routes to pod CIDRs; the
//!          nodes' default gateway; a TCP server on :80 that answers
//!          "world saw <client address>"
//!   each node: a host-network server on <node IP>:8080 ("host nX saw ...")
//!              and kube-proxy's iptables rules for the demo Services
//!   each pod:  TCP :7777 (its name), TCP :7778 ("<pod> saw <client>"),
//!              TCP :7779 (echoes every line back, for long-lived
//!              connections), UDP :5353 (its name, a DNS-like responder)
//!   the world also echoes lines on :7779
//! ```
//! The demo Services, with backends on the first two nodes:
//! - `default/demo` 10.96.0.100: 80/TCP → 7777 (NodePort 30080,
//!   externalTrafficPolicy Cluster), 53/UDP → 5353 and 7779/TCP → 7779.
//! - `default/demo-local` 10.96.0.101: 80/TCP → 7778 (NodePort 30081,
//!   externalTrafficPolicy Local), backends the same pods.
//!
//! kube-proxy's rules are what `kube_proxy::render` writes, exactly as its
//! iptables proxier lays them out; no kube-proxy runs here.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv6Addr},
    str::FromStr,
};

use anyhow::{Context, Result};

use crate::{
    kube_proxy::{self, Endpoint, Protocol, Service, ServicePort},
    lab::{self, ns_cmd, ns_exec, Lab, CLUSTER_CIDR, ECHO_PORT},
    try_run,
};

pub const WORLD_IP: &str = "172.30.0.250";
/// The world's IPv6 address on a dual-stack lab's LAN (nodes are
/// `fd00:30::<i>`).
pub const WORLD_IP6: &str = "fd00:30::fe";
pub const WORLD_PORT: u16 = 80;
pub const HOST_PORT: u16 = 8080;
pub const WHOAMI_PORT: u16 = 7778;
pub const UDP_PORT: u16 = 5353;
pub const STREAM_PORT: u16 = 7779;
pub const SERVICE_CIDR: &str = "10.96.0.0/12";
pub const DEMO_IP: &str = "10.96.0.100";
pub const DEMO_NODE_PORT: u16 = 30080;
pub const DEMO_LOCAL_IP: &str = "10.96.0.101";
pub const DEMO_LOCAL_NODE_PORT: u16 = 30081;
/// Dual-stack labs: the demo Services are dual-stack too (as with
/// `ipFamilyPolicy: PreferDualStack`), each with an IPv6 ClusterIP from
/// `SERVICE_CIDR6` and the same pods' IPv6 addresses as endpoints,
/// through kube-proxy's ip6tables rules.
pub const SERVICE_CIDR6: &str = "fd00:96::/112";
pub const DEMO_IP6: &str = "fd00:96::64";
pub const DEMO_LOCAL_IP6: &str = "fd00:96::65";

/// An address family of the lab: which addresses of pods, nodes, the
/// demo Service and the world a probe uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpFamily {
    V4,
    V6,
}

impl IpFamily {
    pub fn name(self) -> &'static str {
        match self {
            IpFamily::V4 => "IPv4",
            IpFamily::V6 => "IPv6",
        }
    }

    /// A pod's address of this family (IPv6 only in a dual-stack lab).
    pub fn pod_ip(self, p: &lab::Pod) -> Option<&str> {
        match self {
            // An IPv6-only lab's pods have none.
            IpFamily::V4 => Some(p.ip.as_str()).filter(|ip| !ip.is_empty()),
            IpFamily::V6 => p.ip6.as_deref(),
        }
    }

    pub fn node_ip(self, n: &lab::Node) -> Option<&str> {
        match self {
            // An IPv6-only lab's nodes have none.
            IpFamily::V4 => Some(n.ip.as_str()).filter(|ip| !ip.is_empty()),
            IpFamily::V6 => n.ip6.as_deref(),
        }
    }

    pub fn demo_ip(self) -> &'static str {
        match self {
            IpFamily::V4 => DEMO_IP,
            IpFamily::V6 => DEMO_IP6,
        }
    }

    pub fn world_ip(self) -> &'static str {
        match self {
            IpFamily::V4 => WORLD_IP,
            IpFamily::V6 => WORLD_IP6,
        }
    }

    /// What a server binds to take every address of this family.
    fn any(self) -> &'static str {
        match self {
            IpFamily::V4 => "0.0.0.0",
            IpFamily::V6 => "::",
        }
    }
}

/// The families a lab has: IPv4, and IPv6 in a dual-stack lab; IPv6 alone
/// in an IPv6-only one (its nodes' IPv4 is the lab's plumbing, not probed).
pub fn families(lab: &Lab) -> Vec<IpFamily> {
    if lab.state.ipv6_only {
        vec![IpFamily::V6]
    } else if lab.state.dual_stack {
        vec![IpFamily::V4, IpFamily::V6]
    } else {
        vec![IpFamily::V4]
    }
}

/// `ip` as a socat address takes it: an IPv6 address in brackets.
fn socat_host(ip: &str) -> String {
    if ip.contains(':') && !ip.starts_with('[') {
        format!("[{ip}]")
    } else {
        ip.to_string()
    }
}

/// The namespace of the world, by lab id.
pub fn world_netns(lab_id: &str) -> String {
    format!("sl{lab_id}world")
}

/// A TCP server in `netns` answering "<who> saw <client address>". An
/// IPv6 `bind` takes IPv6 only, beside the IPv4 server on the same port.
pub fn whoami_server(lab: &mut Lab, netns: &str, bind: &str, port: u16, who: &str) -> Result<()> {
    let (listen, log) = if bind.contains(':') {
        (format!("TCP6-LISTEN:{port},bind=[{bind}],ipv6only=1,reuseaddr,fork"), format!("{who}-{port}-6"))
    } else {
        (format!("TCP-LISTEN:{port},bind={bind},reuseaddr,fork"), format!("{who}-{port}"))
    };
    let answer = format!("SYSTEM:echo {who} saw $SOCAT_PEERADDR");
    lab.spawn_helper(ns_cmd(netns, &["socat", &listen, &answer]), &log)?;
    // A server on "any" is asked on loopback.
    let ask = match bind {
        "0.0.0.0" => "127.0.0.1",
        "::" => "::1",
        ip => ip,
    };
    wait_tcp(netns, ask, port)
}

fn wait_tcp(netns: &str, ip: &str, port: u16) -> Result<()> {
    let start = std::time::Instant::now();
    while tcp_text(netns, ip, port).is_none() {
        if start.elapsed() > crate::patience(std::time::Duration::from_secs(5)) {
            anyhow::bail!("server {ip}:{port} in {netns} did not start");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Ok(())
}

/// Add the world, the nodes' default route through it, host servers, the
/// pods' extra servers and kube-proxy's rules.
pub fn install(lab: &mut Lab) -> Result<()> {
    let world = add_world(lab)?;
    for family in families(lab) {
        whoami_server(lab, &world, family.any(), WORLD_PORT, "world")?;
    }
    stream_server(lab, &world, "world")?;
    if let Some(router) = lab.state.router_netns.clone() {
        // Two node networks: the second reaches the world through the router.
        // (An IPv6-only lab's router has no IPv4.)
        if !lab.state.ipv6_only {
            let via = format!("{}.{}", crate::lab::LAN_PREFIX, crate::lab::ROUTER_HOST);
            ns_exec(&router, &["ip", "route", "add", "default", "via", WORLD_IP])?;
            ns_exec(&world, &["ip", "route", "add", &format!("{}.0/24", crate::lab::LAN2_PREFIX), "via", &via])?;
        }
        if lab.state.router6 {
            // IPv6 too, when the router forwards it.
            ns_exec(&router, &["ip", "-6", "route", "add", "default", "via", WORLD_IP6])?;
            let lan2 = format!("{}/64", crate::lab::LAN2_6_PREFIX);
            ns_exec(&world, &["ip", "-6", "route", "add", &lan2, "via", &crate::lab::router_ip6(0)])?;
        }
    }
    for node in lab.state.nodes.clone() {
        let gateway = if node.ip.starts_with(&format!("{}.", crate::lab::LAN_PREFIX)) {
            WORLD_IP.to_string()
        } else {
            format!("{}.{}", crate::lab::LAN2_PREFIX, crate::lab::ROUTER_HOST)
        };
        if !node.ip.is_empty() {
            ns_exec(&node.netns, &["ip", "route", "replace", "default", "via", &gateway, "dev", "eth0"])?;
        }
        // IPv6 to the world: from the second network through the router,
        // when it forwards IPv6 (`LabOptions::router_ipv4_only`: it does not).
        if let Some(ip6) = &node.ip6 {
            let gateway6 = if ip6.starts_with(crate::lab::LAN6_PREFIX) {
                Some(WORLD_IP6.to_string())
            } else {
                lab.state.router6.then(|| crate::lab::router_ip6(1))
            };
            if let Some(gateway6) = gateway6 {
                ns_exec(&node.netns, &["ip", "-6", "route", "replace", "default", "via", &gateway6, "dev", "eth0"])?;
            }
        }
        for family in families(lab) {
            let ip = family.node_ip(&node).context("a dual-stack node has an IPv6 address")?;
            whoami_server(lab, &node.netns, ip, HOST_PORT, &format!("host-{}", node.name))?;
        }
        for pod in &node.pods {
            start_pod_servers(lab, &pod.netns, &pod.name)?;
            if lab.state.has_ipv6() {
                udp_server(lab, &pod.netns, &pod.name, IpFamily::V6)?;
            }
        }
    }
    apply_services(lab)
}

/// The world: a namespace on the LAN at `WORLD_IP` (and `WORLD_IP6` in a
/// dual-stack lab), not a node (no
/// routes to pod CIDRs, no agent). Returns its name. The lab removes it
/// with the rest.
pub fn add_world(lab: &mut Lab) -> Result<String> {
    let world = world_netns(&lab.state.id);
    lab.add_helper_netns(&world)?;
    let lan = lab.state.lan_netns.clone();
    crate::run(
        std::process::Command::new("ip")
            .args(["link", "add", "eth0", "netns", &world, "type", "veth", "peer", "name", "world", "netns", &lan]),
    )?;
    let mtu = lab.state.mtu.to_string();
    ns_exec(&lan, &["ip", "link", "set", "world", "master", "br0", "mtu", &mtu, "up"])?;
    ns_exec(&world, &["ip", "link", "set", "eth0", "mtu", &mtu, "up"])?;
    ns_exec(&world, &["ip", "link", "set", "lo", "up"])?;
    ns_exec(&world, &["ip", "addr", "add", &format!("{WORLD_IP}/24"), "dev", "eth0"])?;
    if lab.state.has_ipv6() {
        crate::lab::enable_ipv6_in(&world)?;
        ns_exec(&world, &["ip", "-6", "addr", "add", &format!("{WORLD_IP6}/64"), "dev", "eth0", "nodad"])?;
    }
    Ok(world)
}

/// A TCP server echoing every line back, connection after connection.
fn stream_server(lab: &mut Lab, netns: &str, who: &str) -> Result<()> {
    let listen = format!("TCP-LISTEN:{STREAM_PORT},reuseaddr,fork");
    lab.spawn_helper(ns_cmd(netns, &["socat", &listen, "EXEC:cat"]), &format!("{who}-stream"))?;
    let start = std::time::Instant::now();
    while !try_run(&mut ns_cmd(
        netns,
        &["sh", "-c", &format!("echo | timeout 2 socat -T1 - TCP:127.0.0.1:{STREAM_PORT}")],
    ))
    .is_ok_and(|o| o.status.success())
    {
        if start.elapsed() > crate::patience(std::time::Duration::from_secs(5)) {
            anyhow::bail!("stream server in {netns} did not start");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Ok(())
}

/// The whoami, stream and UDP servers of one pod (the echo server is the lab's).
pub fn start_pod_servers(lab: &mut Lab, netns: &str, name: &str) -> Result<()> {
    whoami_server(lab, netns, "0.0.0.0", WHOAMI_PORT, name)?;
    stream_server(lab, netns, name)?;
    udp_server(lab, netns, name, IpFamily::V4)
}

/// A UDP server answering every datagram with the pod's name, one process
/// (`svc_client.py udp-serve`): socat's forking UDP server drops datagrams
/// when the machine is busy (the request reaches the pod, no answer leaves).
/// One per family: the IPv6 one takes IPv6 only.
fn udp_server(lab: &mut Lab, netns: &str, name: &str, family: IpFamily) -> Result<()> {
    let port = UDP_PORT.to_string();
    let serve = ["python3", "-c", crate::services::CLIENT, "udp-serve", family.any(), &port, name];
    let (log, ss_family) = match family {
        IpFamily::V4 => (format!("{name}-udp"), "-4"),
        IpFamily::V6 => (format!("{name}-udp6"), "-6"),
    };
    lab.spawn_helper(ns_cmd(netns, &serve), &log)?;
    // Bound before anyone sends (a datagram to an unbound port is answered
    // with port-unreachable: ECONNREFUSED on a connected socket).
    let start = std::time::Instant::now();
    while ns_exec(netns, &["ss", "-H", ss_family, "-uln", &format!("sport = :{port}")])?.trim().is_empty() {
        if start.elapsed() > crate::patience(std::time::Duration::from_secs(5)) {
            anyhow::bail!("UDP server in {netns} did not bind :{port}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Ok(())
}

/// The demo Services as the API server would hold them: backends are the
/// first pod of each of the first two nodes.
pub fn services(lab: &Lab) -> Vec<Service> {
    demo_services(lab, IpFamily::V4)
}

/// The IPv6 side of the dual-stack demo Services (kube-proxy's IPv6
/// proxier sees only it): IPv6 ClusterIPs, the same pods' IPv6 addresses.
pub fn services6(lab: &Lab) -> Vec<Service<Ipv6Addr>> {
    demo_services(lab, IpFamily::V6)
}

fn demo_services<A>(lab: &Lab, family: IpFamily) -> Vec<Service<A>>
where
    A: kube_proxy::Family + FromStr,
    A::Err: std::fmt::Debug,
{
    let endpoints: Vec<Endpoint<A>> = lab
        .state
        .nodes
        .iter()
        .take(2)
        .filter_map(|n| n.pods.first().map(|p| (n, p)))
        .filter_map(|(n, p)| {
            family.pod_ip(p).map(|ip| Endpoint { ip: ip.parse().expect("pod IP"), node: n.name.clone() })
        })
        .collect();
    let (demo_ip, local_ip) = match family {
        IpFamily::V4 => (DEMO_IP, DEMO_LOCAL_IP),
        IpFamily::V6 => (DEMO_IP6, DEMO_LOCAL_IP6),
    };
    let port = |name: &str, protocol, port, target_port, node_port| ServicePort {
        name: name.into(),
        protocol,
        port,
        target_port,
        node_port,
    };
    vec![
        Service {
            namespace: "default".into(),
            name: "demo".into(),
            cluster_ip: demo_ip.parse().expect("constant"),
            ports: vec![
                port("http", Protocol::Tcp, 80, ECHO_PORT, Some(DEMO_NODE_PORT)),
                port("dns", Protocol::Udp, 53, UDP_PORT, None),
                port("stream", Protocol::Tcp, STREAM_PORT, STREAM_PORT, None),
            ],
            external_traffic_policy_local: false,
            endpoints: endpoints.clone(),
        },
        Service {
            namespace: "default".into(),
            name: "demo-local".into(),
            cluster_ip: local_ip.parse().expect("constant"),
            ports: vec![port("http", Protocol::Tcp, 80, WHOAMI_PORT, Some(DEMO_LOCAL_NODE_PORT))],
            external_traffic_policy_local: true,
            endpoints,
        },
    ]
}

/// kube-proxy's sync on every node (again after pods change); in a
/// dual-stack lab its IPv6 proxier's too (ip6tables).
pub fn apply_services(lab: &Lab) -> Result<()> {
    let services = services(lab);
    let cidr = ipnetwork::Ipv4Network::from_str(CLUSTER_CIDR).expect("constant");
    let services6 = services6(lab);
    let cidr6 = ipnetwork::Ipv6Network::from_str(lab::CLUSTER_CIDR6).expect("constant");
    for node in &lab.state.nodes {
        // An IPv6-only lab's Services are IPv6 alone.
        if !lab.state.ipv6_only {
            kube_proxy::apply(&node.netns, &services, &node.name, cidr)
                .with_context(|| format!("kube-proxy rules on {}", node.name))?;
        }
        if lab.state.has_ipv6() {
            kube_proxy::apply(&node.netns, &services6, &node.name, cidr6)
                .with_context(|| format!("kube-proxy's IPv6 rules on {}", node.name))?;
        }
    }
    Ok(())
}

/// The first line a TCP server at `ip:port` sends, asked from `netns`.
pub fn tcp_text(netns: &str, ip: &str, port: u16) -> Option<String> {
    // In a TCG guest a socat can take more than a second to connect: the
    // limits stretch with the tests' patience (1 s and 3 s natively).
    let one = crate::patience(std::time::Duration::from_secs(1)).as_secs().to_string();
    let all = crate::patience(std::time::Duration::from_secs(3)).as_secs().to_string();
    let target = format!("TCP:{}:{port},connect-timeout={one}", socat_host(ip));
    let out = try_run(&mut ns_cmd(netns, &["timeout", &all, "socat", &format!("-T{one}"), "-", &target])).ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}

/// The answer to one UDP datagram sent to `ip:port` from `netns`. socat's
/// connected UDP socket takes only replies from `ip:port` itself, so an
/// answer proves the reply came back from the address asked.
/// UDP may lose a datagram (socat's forking UDP server drops one now and
/// then on a busy machine): up to three tries, each a fresh socket.
pub fn udp_text(netns: &str, ip: &str, port: u16) -> Option<String> {
    let script = format!("echo q | timeout 3 socat -T1 - UDP:{}:{port}", socat_host(ip));
    (0..3).find_map(|_| {
        let out = try_run(&mut ns_cmd(netns, &["sh", "-c", &script])).ok()?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (out.status.success() && !text.is_empty()).then_some(text)
    })
}

/// Who answered and whom they saw: "x saw 1.2.3.4:5678" → ("x", "1.2.3.4");
/// an IPv6 client comes in brackets ("x saw [fd00::2]:5678").
pub fn parse_whoami(text: &str) -> Option<(String, IpAddr)> {
    let (who, rest) = text.split_once(" saw ")?;
    let rest = rest.trim();
    let ip = match rest.strip_prefix('[') {
        Some(v6) => v6.split_once(']').map(|(ip, _)| ip)?,
        None => rest.rsplit_once(':').map(|(ip, _)| ip).unwrap_or(rest),
    };
    Some((who.to_string(), ip.parse().ok()?))
}

/// One source of traffic in the cluster matrix.
#[derive(Clone, Debug)]
pub struct Source {
    pub label: String,
    pub netns: String,
    /// The address the source's packets carry before any NAT.
    pub ip: String,
    pub node: String,
}

/// Rows: every pod and every node; columns: every pod, every node's host
/// server, the demo Service (TCP and UDP) and the world; all over one
/// address family (`probe` IPv4, `probe6` the IPv6 twin of a dual-stack
/// lab).
#[derive(Debug)]
pub struct ClusterMatrix {
    pub family: IpFamily,
    pub rows: Vec<Source>,
    pub columns: Vec<String>,
    /// (row label, column label) → cell text ("I/T", "T/U", "i!/T", ...).
    pub cells: BTreeMap<(String, String), String>,
    pub failures: Vec<String>,
}

fn mark(ok: bool, good: &'static str, bad: &'static str) -> &'static str {
    if ok {
        good
    } else {
        bad
    }
}

impl ClusterMatrix {
    /// Every path over IPv4.
    pub fn probe(lab: &Lab) -> Self {
        Self::probe_family(lab, IpFamily::V4)
    }

    /// Every path over IPv6 (a dual-stack lab): pods' and nodes' IPv6
    /// addresses, the demo Service's IPv6 ClusterIP, the world's IPv6.
    pub fn probe6(lab: &Lab) -> Self {
        Self::probe_family(lab, IpFamily::V6)
    }

    pub fn probe_family(lab: &Lab, family: IpFamily) -> Self {
        let mut m = ClusterMatrix {
            family,
            rows: Vec::new(),
            columns: Vec::new(),
            cells: BTreeMap::new(),
            failures: Vec::new(),
        };
        // (pod, its address of the family); pods without one are left out.
        let pods: Vec<(&lab::Node, &lab::Pod, String)> =
            lab.pods().into_iter().filter_map(|(n, p)| family.pod_ip(p).map(|ip| (n, p, ip.to_string()))).collect();
        let nodes: Vec<(&lab::Node, String)> =
            lab.state.nodes.iter().filter_map(|n| family.node_ip(n).map(|ip| (n, ip.to_string()))).collect();
        for (n, p, ip) in &pods {
            m.rows.push(Source { label: p.name.clone(), netns: p.netns.clone(), ip: ip.clone(), node: n.name.clone() });
        }
        for (n, ip) in &nodes {
            m.rows.push(Source { label: n.name.clone(), netns: n.netns.clone(), ip: ip.clone(), node: n.name.clone() });
        }
        m.columns = pods.iter().map(|(_, p, _)| p.name.clone()).collect();
        m.columns.extend(nodes.iter().map(|(n, _)| n.name.clone()));
        m.columns.extend(["svc".to_string(), "world".to_string()]);
        // The demo Service's backends (`demo_services`), by name.
        let backends: Vec<String> =
            lab.state.nodes.iter().take(2).filter_map(|n| n.pods.first()).map(|p| p.name.clone()).collect();
        let (demo, world) = (family.demo_ip(), family.world_ip());
        for src in m.rows.clone() {
            for (_, dst, dst_ip) in &pods {
                if dst.name == src.label {
                    continue;
                }
                let icmp = lab::ping(&src.netns, dst_ip);
                let tcp = lab::tcp_probe(&src.netns, dst_ip, &dst.name);
                m.record(&src, &dst.name, icmp, tcp, "I", "T");
            }
            for (n, node_ip) in &nodes {
                if n.name == src.label {
                    continue;
                }
                let icmp = lab::ping(&src.netns, node_ip);
                // The host server sees the source's own address: no NAT
                // between pods and nodes.
                let tcp = saw(&src.netns, node_ip, HOST_PORT)
                    .is_some_and(|(who, saw)| who == format!("host-{}", n.name) && saw == src.ip);
                m.record(&src, &n.name, icmp, tcp, "I", "T");
            }
            let tcp = tcp_text(&src.netns, demo, 80).is_some_and(|t| backends.contains(&t));
            let udp = udp_text(&src.netns, demo, 53).is_some_and(|t| backends.contains(&t));
            m.record(&src, "svc", tcp, udp, "T", "U");
            let icmp = lab::ping(&src.netns, world);
            // The world sees the node's address for pods (masquerade) and
            // for nodes alike.
            let node_ip = nodes.iter().find(|(n, _)| n.name == src.node).map(|(_, ip)| ip.clone()).unwrap_or_default();
            let tcp = saw(&src.netns, world, WORLD_PORT).is_some_and(|(_, saw)| saw == node_ip);
            m.record(&src, "world", icmp, tcp, "I", "T");
        }
        m
    }

    fn record(&mut self, src: &Source, col: &str, a: bool, b: bool, a_name: &'static str, b_name: &'static str) {
        let lower = |s: &'static str| {
            if s == "I" {
                "i!"
            } else if s == "T" {
                "t!"
            } else {
                "u!"
            }
        };
        let cell = format!("{}/{}", mark(a, a_name, lower(a_name)), mark(b, b_name, lower(b_name)));
        if !(a && b) {
            self.failures.push(format!("{} → {col}: {cell}", src.label));
        }
        self.cells.insert((src.label.clone(), col.to_string()), cell);
    }

    pub fn all_ok(&self) -> bool {
        self.failures.is_empty()
    }

    pub fn render(&self) -> String {
        let width = self.columns.iter().map(|c| c.len()).max().unwrap_or(4).max(5) + 2;
        let label = self.rows.iter().map(|r| r.label.len() + r.ip.len() + 2).max().unwrap_or(0).max(22);
        let mut o = format!("{:<label$}", "from \\ to");
        for c in &self.columns {
            o.push_str(&format!("{c:>width$}"));
        }
        o.push('\n');
        for r in &self.rows {
            o.push_str(&format!("{:<label$}", format!("{} {}", r.label, r.ip)));
            for c in &self.columns {
                let cell = self.cells.get(&(r.label.clone(), c.clone())).map(String::as_str).unwrap_or("-");
                o.push_str(&format!("{cell:>width$}"));
            }
            o.push('\n');
        }
        o.push_str(&format!(
            "{}: I/T = ICMP/TCP reached (TCP to a node: its host-network server, which must see the source's own \
             address; to the world: it must see the node's address), svc = the demo Service {} over T(CP :80) and \
             U(DP :53); lower case with ! = failed.\n{}\n",
            self.family.name(),
            self.family.demo_ip(),
            if self.all_ok() {
                format!("all {} paths reached", self.cells.len())
            } else {
                format!("{} of {} paths FAILED: {}", self.failures.len(), self.cells.len(), self.failures.join(", "))
            }
        ));
        o
    }
}

/// Who a whoami server at `ip:port` says answered, and the client address
/// it saw (as text, IPv6 without brackets), asked from `netns`.
fn saw(netns: &str, ip: &str, port: u16) -> Option<(String, String)> {
    tcp_text(netns, ip, port).and_then(|t| parse_whoami(&t)).map(|(who, ip)| (who, ip.to_string()))
}

/// How each node reaches each other node's pods, from its agent's `status`
/// (issue 15's mixed-path matrix): one line per ordered node pair.
pub fn node_paths(lab: &Lab) -> Vec<String> {
    let mut lines = Vec::new();
    for (i, n) in lab.state.nodes.iter().enumerate() {
        let status = match lab.status(i) {
            Ok(s) => s,
            Err(e) => {
                lines.push(format!("{}: status failed: {e:#}", n.name));
                continue;
            }
        };
        let routes = status["routes"].as_array().cloned().unwrap_or_default();
        for peer in lab.state.nodes.iter().filter(|p| p.name != n.name) {
            if lab.state.ipv6_only {
                // IPv6-only nodes have IPv6 routes alone: native, or VXLAN
                // over IPv6 to a peer behind the router.
                let cidr6 = peer.pod_cidr6.as_deref().unwrap_or_default();
                let routed = status["agent"]["routeNodes6"][cidr6] == peer.name.as_str();
                let choice = &status["agent"]["routePaths6"][cidr6];
                let line = match (routed, choice["path"].as_str()) {
                    (false, _) => "no IPv6 route".to_string(),
                    (true, Some(path)) => format!("{path} over IPv6 ({})", choice["reason"].as_str().unwrap_or("?")),
                    (true, None) => "native (IPv6)".to_string(),
                };
                lines.push(format!("{} -> {}: {line}", n.name, peer.name));
                continue;
            }
            let line = match routes.iter().find(|r| r["podCIDR"] == peer.pod_cidr.as_str()) {
                Some(r) => format!(
                    "{} -> {}: {} ({}), MTU {}",
                    n.name,
                    peer.name,
                    r["path"].as_str().unwrap_or("?"),
                    r["why"].as_str().unwrap_or("?"),
                    r["mtu"]
                ),
                None => format!("{} -> {}: no route", n.name, peer.name),
            };
            lines.push(line);
        }
    }
    lines
}
