//! Why a probe failed, most local cause first: the hop and its likely
//! reason. Pure, but for `node_reaches`, which repeats the probe (or pings
//! a node) from the node's own namespace, so "the node can, its pods
//! cannot" and "nobody can" are told apart.
use std::net::IpAddr;

use sluice_common::maps::TUNNEL_PORT;
use sluice_node::net::vxlan::DEVICE;

use super::{Class, Kind, Target};
use crate::membership::PeerPath;

/// Evidence gathered around one probe.
pub struct Facts<'a> {
    pub uplink_up: bool,
    pub uplink: &'a str,
    /// This node's VXLAN device exists and is up.
    pub tunnel_up: bool,
    pub drops_before: &'a [(String, u64)],
    pub drops_after: &'a [(String, u64)],
    /// This node holds a kernel route to the target's pod CIDR.
    pub kernel_route_present: bool,
    /// Drop counters that moved on the target's node during the probe (read
    /// from its agent's metrics).
    pub peer_dropped: &'a [(String, u64)],
    /// Whether the target node's datapath delivered anything from its
    /// uplink into a pod during the probe (`None`: its metrics unknown).
    pub peer_delivered: Option<bool>,
}

/// The tunnel hop to a tunneled target's node, as a failure names it.
fn vxlan_hop(t: &Target) -> Option<String> {
    let remote = t.node_ip.filter(|_| t.path == Some(PeerPath::Vxlan) && !t.local)?;
    Some(format!("VXLAN device {DEVICE} -> {remote} UDP {TUNNEL_PORT}"))
}

/// Drop reasons no IPv4 probe can meet: counts that move beside a probe
/// (a pod's IPv6 router solicitations, `unknown_l3`) and explain nothing.
const NOT_AN_IPV4_PROBES_FATE: &[&str] = &["unknown_l3"];

fn could_drop_the_probe(reason: &str) -> bool {
    !NOT_AN_IPV4_PROBES_FATE.contains(&reason)
}

/// The uplink's refusal of a Service without endpoints (an RST, counted
/// under this reason), on this node or the target's, during the probe.
const REFUSED_NO_ENDPOINTS: &str = "service_no_endpoints";

pub fn diagnose(t: &Target, f: &Facts, node_reaches: impl FnOnce(IpAddr, Option<u16>) -> bool) -> String {
    let local: Vec<(&str, u64)> = f
        .drops_after
        .iter()
        .zip(f.drops_before)
        .filter(|((name, a), (_, b))| a > b && could_drop_the_probe(name))
        .map(|((name, a), (_, b))| (name.as_str(), a - b))
        .collect();
    if t.class == Class::WorldToNodePort {
        let refused: u64 = local
            .iter()
            .copied()
            .chain(f.peer_dropped.iter().map(|(name, n)| (name.as_str(), *n)))
            .filter(|(name, _)| *name == REFUSED_NO_ENDPOINTS)
            .map(|(_, n)| n)
            .sum();
        if refused > 0 {
            return format!(
                "NodePort {} on node {} has no ready endpoints: refused at the node's uplink \
                 ({REFUSED_NO_ENDPOINTS} x{refused})",
                t.port.unwrap_or_default(),
                t.node
            );
        }
    }
    let dropped: Vec<String> = local.iter().map(|(name, n)| format!("{name} x{n}")).collect();
    if !dropped.is_empty() {
        return format!("dropped by the datapath: {}", dropped.join(", "));
    }
    let peer_dropped: Vec<&(String, u64)> = f.peer_dropped.iter().filter(|(r, _)| could_drop_the_probe(r)).collect();
    if !peer_dropped.is_empty() {
        let what: Vec<String> = peer_dropped.iter().map(|(r, n)| format!("{r} x{n}")).collect();
        let at = t.node_ip.map(|ip| format!(" ({ip})")).unwrap_or_default();
        return format!("dropped at node {}{at} by its datapath: {}", t.node, what.join(", "));
    }
    let leaves_node = !t.local;
    if leaves_node && !f.uplink_up {
        return format!("local uplink {} is down", f.uplink);
    }
    let tunnel = vxlan_hop(t);
    if tunnel.is_some() && !f.tunnel_up && matches!(t.class, Class::PodToPod | Class::HostToPod) {
        return format!("this node's VXLAN device {DEVICE} is missing or down (the agent makes it: is it running?)");
    }
    match (t.class, t.kind) {
        (Class::PodToPod | Class::HostToPod, _) if t.local => match (t.class, t.kind) {
            (_, Kind::Pod) => "local pod does not answer (pod down, or it drops ICMP)".into(),
            (Class::HostToPod, _) => {
                "this node cannot reach its own health endpoint: its /32 route or veth is gone (agent restarting?)"
                    .into()
            }
            _ => "local health endpoint does not answer (agent restarting?)".into(),
        },
        (Class::PodToPod | Class::HostToPod, _) => {
            if t.class == Class::HostToPod && !f.kernel_route_present {
                let cidr = t.pod_cidr.map(|c| c.to_string()).unwrap_or_else(|| "?".into());
                return format!("no kernel route to {cidr} on this node (the agent adds one per peer: is it running?)");
            }
            if let Some(node_ip) = t.node_ip {
                if !node_reaches(node_ip, None) {
                    let via = tunnel.as_ref().map(|h| format!(" (the tunnel's remote end: {h})")).unwrap_or_default();
                    return format!("peer node {} ({node_ip}) unreachable on the node network{via}", t.node);
                }
            }
            if let Some(hop) = &tunnel {
                let seen = match f.peer_delivered {
                    Some(false) => format!(", and node {}'s datapath counted nothing decapsulated", t.node),
                    _ => String::new(),
                };
                return format!(
                    "lost in the tunnel: {hop}: node {} answers on the node network but not through VXLAN{seen} \
                     (UDP {TUNNEL_PORT} blocked between the nodes: a firewall, a security group?)",
                    t.node
                );
            }
            if t.class == Class::PodToPod && f.peer_delivered == Some(false) {
                return format!(
                    "left this node's {}, never seen by node {}'s datapath (it counted no delivery from its uplink): \
                     lost on the node network, or a firewall before {}'s uplink",
                    f.uplink, t.node, t.node
                );
            }
            format!("node {} answers but its health endpoint does not (agent or pod network down there)", t.node)
        }
        (Class::PodToHost, _) if t.local => {
            "this node does not answer its own pods (an INPUT firewall rule, or the node address moved)".into()
        }
        (Class::PodToHost, _) => {
            if !node_reaches(t.ip, None) {
                return format!("peer node {} ({}) unreachable on the node network", t.node, t.ip);
            }
            if let Some(hop) = &tunnel {
                return format!(
                    "lost in the tunnel: {hop}: node {} answers this node but not its pods, whose packets for it \
                     go through VXLAN (UDP {TUNNEL_PORT} blocked between the nodes?)",
                    t.node
                );
            }
            format!(
                "node {} answers this node but not its pods: it has no route back to this node's pod CIDR \
                 (kernel routes on {}), or a firewall there drops pod sources",
                t.node, t.node
            )
        }
        (Class::PodToService, _) => {
            if node_reaches(t.ip, t.port) {
                return "the service answers this node but not its pods: replies are not returning through \
                        the stack (stack_flow_reply), or the FORWARD chain drops pod traffic"
                    .into();
            }
            "the service does not answer from this node either: no kube-proxy rules for it here, or no ready backend"
                .into()
        }
        (Class::PodToNodePort, _) => {
            let port = t.port.unwrap_or_default();
            if node_reaches(t.ip, t.port) {
                return format!(
                    "node {}'s NodePort {port} answers this node but not its pods: the pods' connection is \
                     not translated (socket load balancer not attached to their cgroup?) or its replies do \
                     not come back (FORWARD chain, stack_flow_reply)",
                    t.node
                );
            }
            format!(
                "NodePort {port} on node {} does not answer this node either: the node is unreachable, no \
                 Service has the port, its backends are not ready, or (Services left to kube-proxy) no \
                 kube-proxy rule for it there",
                t.node
            )
        }
        (Class::WorldToNodePort, _) => {
            let port = t.port.unwrap_or_default();
            format!(
                "NodePort {port} on node {} does not answer from outside: the world has no route to the node, \
                 the node does not translate it at its uplink (--kube-proxy-replacement off and no kube-proxy \
                 rule), its backends are not ready (a refusal: no endpoints), or the answers leave from \
                 another address than the one asked (see that node's drop counters)",
                t.node
            )
        }
        (Class::PodToWorld, _) => {
            if node_reaches(t.ip, t.port) {
                return format!(
                    "this node reaches {} but its pods do not: masquerade is off or not applied \
                     (nft table {} sluice), or the FORWARD chain drops pod traffic",
                    t.ip,
                    if t.ip.is_ipv6() { "ip6" } else { "ip" }
                );
            }
            format!("{} is unreachable from this node itself (no route, or the destination is down)", t.ip)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(class: Class, kind: Kind, local: bool) -> Target {
        Target {
            class,
            kind,
            node: "n2".into(),
            ip: "10.244.2.1".parse().unwrap(),
            port: Some(4240),
            icmp: true,
            node_ip: Some("172.30.0.2".parse().unwrap()),
            pod_cidr: Some("10.244.2.0/24".parse().unwrap()),
            local,
            path: Some(PeerPath::Native),
            known_problem: None,
        }
    }

    fn counters(n: u64) -> Vec<(String, u64)> {
        vec![("truncated".into(), 0), ("source_spoofed".into(), n)]
    }

    fn facts<'a>(before: &'a [(String, u64)], after: &'a [(String, u64)]) -> Facts<'a> {
        Facts {
            uplink_up: true,
            uplink: "eth0",
            tunnel_up: true,
            drops_before: before,
            drops_after: after,
            kernel_route_present: true,
            peer_dropped: &[],
            peer_delivered: None,
        }
    }

    fn never_asked(_: IpAddr, _: Option<u16>) -> bool {
        panic!("nothing should be asked of the node when a closer cause is known")
    }

    #[test]
    fn drops_that_moved_come_first() {
        let (b, a) = (counters(1), counters(4));
        let f = Facts { uplink_up: false, ..facts(&b, &a) };
        let r = diagnose(&target(Class::PodToPod, Kind::Health, false), &f, never_asked);
        assert_eq!(r, "dropped by the datapath: source_spoofed x3");
    }

    #[test]
    fn drops_on_the_peer_name_the_hop() {
        let c = counters(0);
        let peer = vec![("uplink_source_spoofed".to_string(), 2)];
        let f = Facts { peer_dropped: &peer, ..facts(&c, &c) };
        let r = diagnose(&target(Class::PodToPod, Kind::Health, false), &f, never_asked);
        assert_eq!(r, "dropped at node n2 (172.30.0.2) by its datapath: uplink_source_spoofed x2");
    }

    #[test]
    fn ipv6_frames_dropped_beside_a_probe_are_not_its_fate() {
        // A pod's IPv6 router solicitations are dropped (unknown_l3) while
        // an IPv4 probe is lost elsewhere: the uplink, here, is the cause.
        let b = vec![("source_spoofed".to_string(), 0), ("unknown_l3".to_string(), 1)];
        let a = vec![("source_spoofed".to_string(), 0), ("unknown_l3".to_string(), 4)];
        let peer = vec![("unknown_l3".to_string(), 2)];
        let f = Facts { uplink_up: false, peer_dropped: &peer, ..facts(&b, &a) };
        let r = diagnose(&target(Class::PodToPod, Kind::Health, false), &f, never_asked);
        assert_eq!(r, "local uplink eth0 is down");
        // Next to a drop that can be the probe's, only that one is named.
        let a = vec![("source_spoofed".to_string(), 2), ("unknown_l3".to_string(), 4)];
        let r = diagnose(&target(Class::PodToPod, Kind::Health, false), &facts(&b, &a), never_asked);
        assert_eq!(r, "dropped by the datapath: source_spoofed x2");
    }

    #[test]
    fn local_uplink_down() {
        let c = counters(0);
        let f = Facts { uplink_up: false, ..facts(&c, &c) };
        for class in [Class::PodToPod, Class::HostToPod, Class::PodToHost, Class::PodToWorld] {
            assert_eq!(diagnose(&target(class, Kind::Health, false), &f, never_asked), "local uplink eth0 is down");
        }
    }

    #[test]
    fn peer_node_down_or_only_its_endpoint() {
        let c = counters(0);
        let t = target(Class::PodToPod, Kind::Health, false);
        let down = diagnose(&t, &facts(&c, &c), |ip, port| {
            assert_eq!((ip, port), ("172.30.0.2".parse().unwrap(), None));
            false
        });
        assert_eq!(down, "peer node n2 (172.30.0.2) unreachable on the node network");
        let up = diagnose(&t, &facts(&c, &c), |_, _| true);
        assert!(up.starts_with("node n2 answers but its health endpoint does not"), "{up}");
        // The peer's counters say nothing reached its datapath.
        let unseen = diagnose(&t, &Facts { peer_delivered: Some(false), ..facts(&c, &c) }, |_, _| true);
        assert!(unseen.starts_with("left this node's eth0, never seen by node n2's datapath"), "{unseen}");
        let seen = diagnose(&t, &Facts { peer_delivered: Some(true), ..facts(&c, &c) }, |_, _| true);
        assert!(seen.starts_with("node n2 answers but its health endpoint does not"), "{seen}");
    }

    #[test]
    fn a_tunneled_peer_names_the_vxlan_hop() {
        let c = counters(0);
        let t = Target { path: Some(PeerPath::Vxlan), ..target(Class::PodToPod, Kind::Health, false) };
        let lost = diagnose(&t, &Facts { peer_delivered: Some(false), ..facts(&c, &c) }, |_, _| true);
        assert_eq!(
            lost,
            "lost in the tunnel: VXLAN device sluice_vxlan -> 172.30.0.2 UDP 8472: node n2 answers on the node \
             network but not through VXLAN, and node n2's datapath counted nothing decapsulated (UDP 8472 blocked \
             between the nodes: a firewall, a security group?)"
        );
        let unknown = diagnose(&t, &facts(&c, &c), |_, _| true);
        assert!(
            unknown.starts_with("lost in the tunnel: VXLAN device sluice_vxlan -> 172.30.0.2 UDP 8472"),
            "{unknown}"
        );
        let host = Target { class: Class::HostToPod, ..t.clone() };
        assert!(diagnose(&host, &facts(&c, &c), |_, _| true).starts_with("lost in the tunnel"));
        let to_host =
            Target { class: Class::PodToHost, kind: Kind::Host, ip: "172.30.0.2".parse().unwrap(), ..t.clone() };
        let r = diagnose(&to_host, &facts(&c, &c), |_, _| true);
        assert!(r.starts_with("lost in the tunnel: VXLAN device sluice_vxlan -> 172.30.0.2 UDP 8472: node n2 answers this node but not its pods"), "{r}");
        let down = diagnose(&t, &facts(&c, &c), |_, _| false);
        assert_eq!(
            down,
            "peer node n2 (172.30.0.2) unreachable on the node network (the tunnel's remote end: VXLAN device \
             sluice_vxlan -> 172.30.0.2 UDP 8472)"
        );
        let no_device = diagnose(&t, &Facts { tunnel_up: false, ..facts(&c, &c) }, never_asked);
        assert!(no_device.starts_with("this node's VXLAN device sluice_vxlan is missing or down"), "{no_device}");
        // A native peer says nothing of a tunnel.
        let native = diagnose(&target(Class::PodToPod, Kind::Health, false), &facts(&c, &c), |_, _| true);
        assert!(!native.contains("VXLAN"), "{native}");
    }

    #[test]
    fn host_to_pod_without_a_kernel_route() {
        let c = counters(0);
        let f = Facts { kernel_route_present: false, ..facts(&c, &c) };
        let r = diagnose(&target(Class::HostToPod, Kind::Health, false), &f, never_asked);
        assert!(r.starts_with("no kernel route to 10.244.2.0/24 on this node"), "{r}");
    }

    #[test]
    fn pod_to_host_names_the_missing_route_back() {
        let c = counters(0);
        let t = Target { ip: "172.30.0.2".parse().unwrap(), ..target(Class::PodToHost, Kind::Host, false) };
        let r = diagnose(&t, &facts(&c, &c), |_, _| true);
        assert!(r.contains("no route back to this node's pod CIDR"), "{r}");
        let r = diagnose(&t, &facts(&c, &c), |_, _| false);
        assert_eq!(r, "peer node n2 (172.30.0.2) unreachable on the node network");
    }

    #[test]
    fn service_and_world_tell_node_from_pods() {
        let c = counters(0);
        let svc = Target { port: Some(80), ..target(Class::PodToService, Kind::Service, false) };
        assert!(diagnose(&svc, &facts(&c, &c), |_, p| p == Some(80)).contains("answers this node but not its pods"));
        assert!(diagnose(&svc, &facts(&c, &c), |_, _| false).contains("no kube-proxy rules"));
        let world = Target { port: None, ..target(Class::PodToWorld, Kind::World, false) };
        assert!(diagnose(&world, &facts(&c, &c), |_, _| true).contains("masquerade is off or not applied"));
        assert!(diagnose(&world, &facts(&c, &c), |_, _| false).contains("unreachable from this node itself"));
    }

    #[test]
    fn local_targets() {
        let c = counters(0);
        let pod = diagnose(&target(Class::PodToPod, Kind::Pod, true), &facts(&c, &c), never_asked);
        assert!(pod.starts_with("local pod does not answer"), "{pod}");
        let health = diagnose(&target(Class::PodToPod, Kind::Health, true), &facts(&c, &c), never_asked);
        assert!(health.starts_with("local health endpoint does not answer"), "{health}");
        let host = diagnose(&target(Class::HostToPod, Kind::Health, true), &facts(&c, &c), never_asked);
        assert!(host.starts_with("this node cannot reach its own health endpoint"), "{host}");
    }

    #[test]
    fn a_world_probe_refused_for_no_endpoints_names_the_nodeport() {
        let before = vec![("service_no_endpoints".to_string(), 4)];
        let after = vec![("service_no_endpoints".to_string(), 5)];
        let t = Target { port: Some(30080), ..target(Class::WorldToNodePort, Kind::NodePort, true) };
        let r = diagnose(&t, &facts(&before, &after), never_asked);
        assert_eq!(
            r,
            "NodePort 30080 on node n2 has no ready endpoints: refused at the node's uplink (service_no_endpoints x1)"
        );
        // On another node: its counters say so.
        let peer = vec![("service_no_endpoints".to_string(), 2)];
        let f = Facts { peer_dropped: &peer, ..facts(&before, &before) };
        let r = diagnose(&Target { local: false, ..t.clone() }, &f, never_asked);
        assert!(r.ends_with("(service_no_endpoints x2)"), "{r}");
        // Any other probe's drops stay drops.
        let pod = diagnose(&target(Class::PodToPod, Kind::Pod, true), &facts(&before, &after), never_asked);
        assert_eq!(pod, "dropped by the datapath: service_no_endpoints x1");
    }
}
