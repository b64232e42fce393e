//! `sluice-agent connectivity-test`: from this node's health endpoint, probe
//! every node's health endpoint (and, with `--pods`, every local pod) with
//! ICMP and TCP through the real datapath, and name the likely reason for
//! each failure.
use std::{
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use ipnetwork::Ipv4Network;
use serde::Serialize;

pub mod icmp;

use sluice_node::{
    datapath::{
        pinned_maps::{self, Endpoints, NodeRoutes},
        pins::PinDir,
    },
    net::{netlink::Netlink, netns},
};

use super::health_endpoint as health;
use crate::state_file::{self, AgentState};

const TIMEOUT: Duration = Duration::from_millis(1000);

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    /// Node the target lives on.
    pub node: String,
    /// "health" (a node's health endpoint) or "pod".
    pub kind: String,
    pub ip: Ipv4Addr,
    /// The node's own address, for telling "peer down" from "endpoint down".
    pub node_ip: Option<Ipv4Addr>,
    pub local: bool,
    /// Set when the target cannot even be tried (e.g. no route).
    pub known_problem: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbeResult {
    pub target: Target,
    pub icmp_ms: Option<f64>,
    pub icmp_error: Option<String>,
    /// `None` when not probed (pods have no known port).
    pub tcp_ms: Option<f64>,
    pub tcp_error: Option<String>,
    pub ok: bool,
    pub reason: Option<String>,
}

/// The health endpoint's answer: one line naming its node.
fn tcp_probe(ip: Ipv4Addr) -> Result<Duration, String> {
    use std::io::Read;
    let start = Instant::now();
    let mut s =
        TcpStream::connect_timeout(&SocketAddr::from((ip, health::HEALTH_PORT)), TIMEOUT).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(TIMEOUT)).map_err(|e| e.to_string())?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).map_err(|e| e.to_string())?;
    if !buf.starts_with("sluice-health") {
        return Err(format!("unexpected answer {buf:?}"));
    }
    Ok(start.elapsed())
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 100.0).round() / 100.0
}

/// Who to probe: every node's health endpoint (from the routes map and the
/// agent's membership), nodes that cannot be routed to, and local pods.
pub fn targets(pins: &PinDir, state: &AgentState, include_pods: bool) -> Result<Vec<Target>> {
    let own_cidr: Ipv4Network = state.pod_cidr.parse().context("agent state pod CIDR")?;
    let own_health = health::health_ip(own_cidr);
    let node_ip = pinned_maps::read_node_config(pins).map(|c| pinned_maps::ip_from_be(c.node_ip_be)).ok();
    let mut out = vec![Target {
        node: state.node_name.clone(),
        kind: "health".into(),
        ip: own_health,
        node_ip,
        local: true,
        known_problem: None,
    }];
    for (cidr, ip) in NodeRoutes::open(pins)?.all()? {
        let node = state.route_nodes.get(&cidr.to_string()).cloned().unwrap_or_else(|| format!("node at {ip}"));
        out.push(Target {
            node,
            kind: "health".into(),
            ip: health::health_ip(cidr),
            node_ip: Some(ip),
            local: false,
            known_problem: None,
        });
    }
    for problem in &state.problems {
        out.push(Target {
            node: problem.node().to_string(),
            kind: "health".into(),
            ip: Ipv4Addr::UNSPECIFIED,
            node_ip: None,
            local: false,
            known_problem: Some(format!("no route: {problem}")),
        });
    }
    if include_pods {
        for (ip, _) in Endpoints::open(pins)?.all()? {
            if ip != own_health {
                out.push(Target {
                    node: state.node_name.clone(),
                    kind: "pod".into(),
                    ip,
                    node_ip,
                    local: true,
                    known_problem: None,
                });
            }
        }
    }
    Ok(out)
}

fn drops_total(pins: &PinDir) -> Vec<(String, u64)> {
    pinned_maps::drops(pins).map(|v| v.iter().map(|(r, n)| (r.name().to_string(), *n)).collect()).unwrap_or_default()
}

pub async fn run(pins: &PinDir, data_dir: &Path, include_pods: bool) -> Result<Vec<ProbeResult>> {
    let state = state_file::read(data_dir).context("agent state (has the agent run on this node?)")?;
    let targets = targets(pins, &state, include_pods)?;
    let netlink = Netlink::open()?;
    let uplink_up = netlink.link_by_name(&state.uplink).await?.map(|l| l.up).unwrap_or(false);
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
        let (ip, kind) = (t.ip, t.kind.clone());
        // Probe from inside the local health endpoint: through from_pod.
        let (icmp_r, tcp_r) = netns::run_in(&health_ns, move || {
            let icmp_r = icmp::ping(ip, TIMEOUT, seq as u16 + 1);
            let tcp_r = (kind == "health").then(|| tcp_probe(ip));
            Ok((icmp_r, tcp_r))
        })?;
        let after = drops_total(pins);
        let ok = icmp_r.is_ok() && tcp_r.as_ref().is_none_or(|r| r.is_ok());
        let reason = (!ok).then(|| {
            diagnose(&t, uplink_up, &state.uplink, &before, &after, |node_ip| {
                // Asked from the node's own namespace: is the node there?
                icmp::ping(node_ip, TIMEOUT, 60000).is_ok()
            })
        });
        results.push(ProbeResult {
            target: t,
            icmp_ms: icmp_r.as_ref().ok().map(|d| ms(*d)),
            icmp_error: icmp_r.err(),
            tcp_ms: tcp_r.as_ref().and_then(|r| r.as_ref().ok()).map(|d| ms(*d)),
            tcp_error: tcp_r.and_then(|r| r.err()),
            ok,
            reason,
        });
    }
    Ok(results)
}

/// The most likely reason a probe failed, most local cause first (pure,
/// but for `node_answers`, which pings a peer node from this node).
pub fn diagnose(
    t: &Target,
    uplink_up: bool,
    uplink: &str,
    before: &[(String, u64)],
    after: &[(String, u64)],
    node_answers: impl FnOnce(Ipv4Addr) -> bool,
) -> String {
    let dropped: Vec<String> = after
        .iter()
        .zip(before)
        .filter(|((_, a), (_, b))| a > b)
        .map(|((name, a), (_, b))| format!("{name} x{}", a - b))
        .collect();
    if !dropped.is_empty() {
        return format!("dropped by the datapath: {}", dropped.join(", "));
    }
    if !t.local && !uplink_up {
        return format!("local uplink {uplink} is down");
    }
    if !t.local {
        if let Some(node_ip) = t.node_ip {
            if !node_answers(node_ip) {
                return format!("peer node {} ({node_ip}) unreachable on the node network", t.node);
            }
            return format!(
                "node {} answers but its health endpoint does not (agent or pod network down there)",
                t.node
            );
        }
    }
    if t.kind == "pod" {
        return "local pod does not answer (pod down, or it drops ICMP)".into();
    }
    "local health endpoint does not answer (agent restarting?)".into()
}

pub fn render(results: &[ProbeResult]) -> String {
    let mut o = format!("{:<12} {:<7} {:<16} {:>12} {:>12}  {}\n", "node", "kind", "address", "icmp", "tcp", "result");
    for r in results {
        let cell = |ms: Option<f64>, err: &Option<String>, tried: bool| match (ms, err) {
            (Some(m), _) => format!("{m:.2} ms"),
            (None, Some(_)) => "FAIL".to_string(),
            (None, None) if tried => "FAIL".into(),
            _ => "-".into(),
        };
        let addr = if r.target.ip.is_unspecified() { "-".to_string() } else { r.target.ip.to_string() };
        o.push_str(&format!(
            "{:<12} {:<7} {:<16} {:>12} {:>12}  {}\n",
            r.target.node,
            r.target.kind,
            addr,
            cell(r.icmp_ms, &r.icmp_error, true),
            cell(r.tcp_ms, &r.tcp_error, r.target.kind == "health"),
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

    fn target(kind: &str, local: bool) -> Target {
        Target {
            node: "n2".into(),
            kind: kind.into(),
            ip: "10.244.2.1".parse().unwrap(),
            node_ip: Some("172.30.0.2".parse().unwrap()),
            local,
            known_problem: None,
        }
    }

    fn counters(n: u64) -> Vec<(String, u64)> {
        vec![("truncated".into(), 0), ("source_spoofed".into(), n)]
    }

    fn never_asked(_: Ipv4Addr) -> bool {
        panic!("the peer node must not be probed when a closer cause is known")
    }

    #[test]
    fn drops_that_moved_come_first() {
        let r = diagnose(&target("health", false), false, "eth0", &counters(1), &counters(4), never_asked);
        assert_eq!(r, "dropped by the datapath: source_spoofed x3");
    }

    #[test]
    fn local_uplink_down() {
        let r = diagnose(&target("health", false), false, "eth0", &counters(1), &counters(1), never_asked);
        assert_eq!(r, "local uplink eth0 is down");
    }

    #[test]
    fn peer_node_down_or_only_its_endpoint() {
        let t = target("health", false);
        let down = diagnose(&t, true, "eth0", &counters(0), &counters(0), |ip| {
            assert_eq!(ip, "172.30.0.2".parse::<Ipv4Addr>().unwrap());
            false
        });
        assert_eq!(down, "peer node n2 (172.30.0.2) unreachable on the node network");
        let up = diagnose(&t, true, "eth0", &counters(0), &counters(0), |_| true);
        assert!(up.starts_with("node n2 answers but its health endpoint does not"), "{up}");
    }

    #[test]
    fn local_targets() {
        let pod = diagnose(&target("pod", true), true, "eth0", &counters(0), &counters(0), never_asked);
        assert!(pod.starts_with("local pod does not answer"), "{pod}");
        let health = diagnose(&target("health", true), false, "eth0", &counters(0), &counters(0), never_asked);
        assert!(health.starts_with("local health endpoint does not answer"), "{health}");
    }
}
