//! `sluice-agent status`: what a person on call needs at a glance. Read from
//! the pinned maps and the agent's state file only, so it works (and says
//! so) while the agent is down.
pub mod service_table;

use std::{collections::BTreeMap, path::Path};

use serde_json::{json, Value};
use sluice_common::{
    maps::{
        limits::{MAX_ENDPOINTS, MAX_NODE_ROUTES},
        names, programs,
    },
    DropReason, ForwardPath,
};

use sluice_node::{
    clock::now_unix,
    datapath::{
        map_fill::{self, FillKind, MapFill, StackFlows},
        pinned_maps::{self, DropRow, Endpoints, NodeRoutes},
        pins::{self, PinDir},
    },
};

use crate::{
    daemon::service_lb::{ServiceLbState, WEDGED_AFTER_SECS},
    reconcile::map_routes::{is_node_entry, Hop},
    state_file::{self, AgentState},
};

/// Everything `status` shows, plus the verdict.
#[derive(Debug, Default)]
pub struct StatusReport {
    /// Why the node is unhealthy, most important first; empty when healthy.
    pub unhealthy: Vec<String>,
    /// Why the agent is not live (restarting it would help); empty when
    /// live. `status --liveness` exits on this alone.
    pub not_live: Vec<String>,
    pub warnings: Vec<String>,
    pub pin_dir: String,
    pub agent: Option<AgentState>,
    pub agent_alive: bool,
    pub uplink_ifindex: u32,
    pub node_ip: String,
    /// Interface → programs attached to it (from the link pins).
    pub attached: BTreeMap<String, Vec<String>>,
    /// (pod CIDR, node IP, node, path): the path as the datapath has it
    /// (`native` or `vxlan`), with the agent's reason.
    pub routes: Vec<(String, String, String, RoutePath)>,
    pub endpoints: Vec<(String, u32)>,
    /// Dual-stack: the pods' IPv6 addresses (`ENDPOINTS6`) → host ifindex.
    pub endpoints6: Vec<(String, u32)>,
    /// Packets dropped per reason, both directions together.
    pub drops: Vec<(String, u64)>,
    /// Every reason in every direction, packets and bytes.
    pub drop_stats: Vec<DropRow>,
    pub forwards: Vec<(String, u64)>,
    /// Every pinned map's fill.
    pub maps: Vec<MapFill>,
    /// `STACK_FLOWS` and, dual-stack, `STACK_FLOWS6`.
    pub stack_flows: Vec<StackFlows>,
    /// NAT64 (`--nat64`): `None` when off (or `NAT64_CONFIG` unreadable).
    pub nat64: Option<Nat64Status>,
}

/// NAT64's line in `status`: the device, the pool, what was translated
/// each way and what it dropped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Nat64Status {
    pub device_ifindex: u32,
    pub pool: String,
    /// `pod_to_nat64`, `nat64_to_pod`.
    pub out: u64,
    pub back: u64,
    /// The `nat64_*` drop reasons, by name.
    pub drops: Vec<(String, u64)>,
}

impl Nat64Status {
    /// From `NAT64_CONFIG` and the counters already read; `None` when off.
    pub fn new(
        config: &sluice_common::nat64::Nat64Config,
        forwards: &[(String, u64)],
        drops: &[(String, u64)],
    ) -> Option<Self> {
        if !config.enabled() {
            return None;
        }
        let forward = |name: &str| forwards.iter().find(|(k, _)| k == name).map_or(0, |(_, n)| *n);
        Some(Self {
            device_ifindex: config.device_ifindex,
            pool: format!("{}/{}", pinned_maps::ip_from_be(config.pool_be), config.pool_prefix_len),
            out: forward(ForwardPath::PodToNat64.name()),
            back: forward(ForwardPath::Nat64ToPod.name()),
            drops: drops.iter().filter(|(k, _)| k.starts_with("nat64_")).cloned().collect(),
        })
    }

    pub fn render(s: Option<&Self>) -> String {
        let Some(s) = s else { return "NAT64: off\n".into() };
        let drops: Vec<String> = s.drops.iter().map(|(k, n)| format!("{k} {n}")).collect();
        format!(
            "NAT64: on (64:ff9b::/96, pool {}, device ifindex {}): {} translated out, {} back; dropped: {}\n",
            s.pool,
            s.device_ifindex,
            s.out,
            s.back,
            drops.join(", ")
        )
    }

    pub fn to_json(s: Option<&Self>) -> Value {
        match s {
            None => json!({"on": false}),
            Some(s) => json!({
                "on": true,
                "pool": s.pool,
                "deviceIfindex": s.device_ifindex,
                "out": s.out,
                "back": s.back,
                "drops": s.drops.iter().map(|(k, n)| (k.clone(), json!(n))).collect::<serde_json::Map<_, _>>(),
            }),
        }
    }
}

/// The agent's process runs: it exists and is no zombie. A killed agent
/// whose parent died too is reparented to pid 1, which on some nodes never
/// reaps it: its `/proc/<pid>` stays, but it is not live.
fn pid_alive(pid: u32) -> bool {
    if pid == 0 {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat_says_exited(&stat),
        Err(_) => false,
    }
}

/// Whether a `/proc/<pid>/stat` line says the process has exited (zombie
/// `Z` or dead `X`). The state is the first field after the command name,
/// which is in parentheses and may itself hold spaces and parentheses: look
/// after the last `)`.
pub fn stat_says_exited(stat: &str) -> bool {
    let Some(after_comm) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return false;
    };
    matches!(after_comm.split_whitespace().next(), Some("Z" | "X" | "x"))
}

/// What the verdict is decided from: gathered by `collect`, built by hand
/// in tests.
pub struct HealthFacts<'a> {
    /// The agent's state file, or why it could not be read.
    pub agent: Result<&'a AgentState, String>,
    pub agent_pid_alive: bool,
    pub now_unix: u64,
    /// Why the pinned maps could not be read, if they could not.
    pub datapath_error: Option<String>,
    pub uplink_attached: bool,
    /// Every pinned map's fill.
    pub maps: &'a [MapFill],
    pub stack_flows: &'a [StackFlows],
}

/// The health policy (pure): what makes a node unhealthy, most important
/// first, and what only deserves a warning.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    pub unhealthy: Vec<String>,
    pub warnings: Vec<String>,
    pub agent_alive: bool,
    /// The part of `unhealthy` a restart of the agent could cure (the
    /// livenessProbe's): it is not running, its loop or its Services loop
    /// stopped passing. A lost API server or datapath is not among them.
    pub not_live: Vec<String>,
}

pub fn verdict(f: &HealthFacts) -> Verdict {
    let mut v = Verdict::default();
    // The datapath first: without it nothing forwards.
    if let Some(e) = &f.datapath_error {
        v.unhealthy.push(format!("datapath not loaded: {e}"));
    } else if !f.uplink_attached {
        v.unhealthy.push("from_uplink is not attached to the uplink".into());
    }
    match &f.agent {
        Ok(state) => {
            let age = f.now_unix.saturating_sub(state.updated_unix);
            // Three missed passes, and never less than 10 s.
            let max_age = (3 * state.resync_ms / 1000).max(10);
            v.agent_alive = f.agent_pid_alive && age <= max_age;
            if !v.agent_alive {
                let why = format!(
                    "agent not running (pid {} last reported {age}s ago); the datapath keeps forwarding with the last state",
                    state.pid
                );
                v.unhealthy.push(why.clone());
                v.not_live.push(why);
            }
            if let Some(k) = &state.kubernetes {
                if !k.connected {
                    v.unhealthy.push(format!(
                        "not connected to the Kubernetes API: {}",
                        k.last_error.clone().unwrap_or_else(|| "no events yet".into())
                    ));
                }
            }
            if let Some(e) = &state.last_error {
                v.unhealthy.push(format!("membership not applied: {e}"));
            }
            v.unhealthy.extend(state.kernel_route_failures.iter().map(|f| format!("kernel route not applied: {f}")));
            if let Some(lb) = &state.service_lb {
                services_verdict(lb, f.now_unix, &mut v);
            }
            v.unhealthy.extend(state.policy.as_ref().and_then(|p| p.unhealthy()));
            if let Some(lb) = &state.service_lb {
                v.warnings.extend(lb.host_port_conflicts.iter().map(|c| format!("hostPort claimed twice: {c}")));
            }
            if let Some(ports) = &state.port_ownership {
                v.warnings.extend(ports.collisions.iter().map(|c| format!("port collision: {c}")));
                v.warnings.extend(ports.reserve_error.iter().map(|e| format!("owned ports not reserved: {e}")));
            }
            v.warnings.extend(state.problems.iter().map(|p| p.to_string()));
            v.warnings.extend(state.problems6.iter().map(|p| p.to_string()));
        }
        Err(e) => {
            v.unhealthy.push(format!("agent has never run here: {e}"));
            v.not_live.push(format!("agent has not started here: {e}"));
        }
    }
    if f.datapath_error.is_none() {
        for m in f.maps.iter().filter(|m| m.nearly_full()) {
            v.warnings.push(format!("{} map is {} of {} full", m.name, m.entries.unwrap_or(0), m.max_entries));
        }
        v.warnings.extend(f.stack_flows.iter().flat_map(StackFlows::warnings));
    }
    v
}

/// The socket load balancer's part (`--kube-proxy-replacement=true`): its
/// maps follow the cluster only while its loop runs and its watches are
/// listed and connected.
fn services_verdict(lb: &ServiceLbState, now_unix: u64, v: &mut Verdict) {
    if let Some(why) = &lb.stopped {
        v.unhealthy.push(format!(
            "socket load balancer stopped: {why}; restarting (restarted {} times); the service maps keep their last state",
            lb.restarts
        ));
    } else if !lb.synced {
        v.unhealthy.push(format!(
            "Services not synced: {}; the service maps do not follow the cluster",
            lb.watch_error.as_deref().unwrap_or("not listed yet")
        ));
    } else if let Some(e) = &lb.watch_error {
        v.unhealthy.push(format!("not connected to the Kubernetes API for Services: {e}"));
    }
    let age = now_unix.saturating_sub(lb.heartbeat_unix);
    if lb.heartbeat_unix != 0 && age > WEDGED_AFTER_SECS {
        let why = format!("socket load balancer loop wedged: its last pass was {age}s ago");
        v.unhealthy.push(why.clone());
        v.not_live.push(why);
    }
}

pub fn collect(pins: &PinDir, data_dir: &Path) -> StatusReport {
    let mut r = StatusReport { pin_dir: pins.root().display().to_string(), ..Default::default() };
    let state = state_file::read(data_dir).map_err(|e| format!("{e:#}"));
    let endpoints = Endpoints::open(pins).and_then(|m| m.all());
    let routes = NodeRoutes::open(pins).and_then(|m| m.all_hops());
    let datapath_error = match (&endpoints, &routes) {
        (Ok(_), Ok(_)) => None,
        (Err(e), _) | (_, Err(e)) => Some(format!("{e:#}")),
    };
    if let Ok(cfg) = pinned_maps::read_node_config(pins) {
        r.uplink_ifindex = cfg.uplink_ifindex;
        r.node_ip = pinned_maps::ip_from_be(cfg.node_ip_be).to_string();
    }
    if let Ok(dir) = std::fs::read_dir(pins.links_dir()) {
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            for prog in [
                programs::FROM_UPLINK,
                programs::TO_UPLINK,
                programs::FROM_POD,
                programs::FROM_POD_NETKIT,
                programs::TO_POD,
                programs::FROM_TUNNEL,
                programs::TO_TUNNEL,
                programs::TO_NAT64,
                programs::COUNT_PACKETS,
            ] {
                if let Some(ifname) = pins::link_pin_ifname(prog, &name) {
                    r.attached.entry(ifname.to_string()).or_default().push(prog.to_string());
                }
            }
        }
    }
    let uplink_attached = r.attached.values().any(|progs| progs.iter().any(|p| p == programs::FROM_UPLINK));
    let (endpoints, routes) = (endpoints.unwrap_or_default(), routes.unwrap_or_default());
    if datapath_error.is_none() {
        r.maps = map_fill::read_all(pins);
        r.stack_flows = map_fill::stack_flows(pins, &r.maps).unwrap_or_default();
    }
    let v = verdict(&HealthFacts {
        agent: state.as_ref().map_err(Clone::clone),
        agent_pid_alive: state.as_ref().is_ok_and(|s| pid_alive(s.pid)),
        now_unix: now_unix(),
        datapath_error: datapath_error.clone(),
        uplink_attached,
        maps: &r.maps,
        stack_flows: &r.stack_flows,
    });
    (r.unhealthy, r.warnings, r.agent_alive, r.not_live) = (v.unhealthy, v.warnings, v.agent_alive, v.not_live);
    r.agent = state.ok();
    if datapath_error.is_some() {
        return r;
    }
    let route_nodes = r.agent.as_ref().map(|a| a.route_nodes.clone()).unwrap_or_default();
    let route_paths = r.agent.as_ref().map(|a| a.route_paths.clone()).unwrap_or_default();
    let uplink_mtu = r.agent.as_ref().map(|a| a.uplink_mtu).unwrap_or_default();
    r.routes = routes
        .iter()
        .filter(|(cidr, (ip, vxlan))| !is_node_entry(**cidr, &Hop { node_ip: *ip, vxlan: *vxlan }))
        .map(|(cidr, (ip, vxlan))| {
            let node = route_nodes.get(&cidr.to_string()).cloned().unwrap_or_else(|| "?".into());
            let path = RoutePath::new(*vxlan, route_paths.get(&cidr.to_string()).copied(), uplink_mtu);
            (cidr.to_string(), ip.to_string(), node, path)
        })
        .collect();
    r.endpoints = endpoints.iter().map(|(ip, ep)| (ip.to_string(), ep.host_ifindex)).collect();
    // An older datapath, or an IPv4-only one never given IPv6 entries: none.
    r.endpoints6 = pinned_maps::Endpoints6::open(pins)
        .and_then(|m| m.all())
        .map(|all| all.iter().map(|(ip, ep)| (ip.to_string(), ep.host_ifindex)).collect())
        .unwrap_or_default();
    r.drop_stats = pinned_maps::drop_stats(pins).unwrap_or_default();
    r.drops = drops_by_reason(&r.drop_stats);
    r.forwards = pinned_maps::forwards(pins)
        .map(|v| v.iter().map(|(k, n)| (k.name().to_string(), *n)).collect())
        .unwrap_or_default();
    r.nat64 = pinned_maps::read_nat64_config(pins).ok().and_then(|c| Nat64Status::new(&c, &r.forwards, &r.drops));
    r
}

/// Packets per reason, both directions together; nothing when the
/// counters could not be read.
fn drops_by_reason(stats: &[DropRow]) -> Vec<(String, u64)> {
    if stats.is_empty() {
        return Vec::new();
    }
    DropReason::ALL
        .iter()
        .map(|&reason| {
            let packets = stats.iter().filter(|d| d.reason == reason).map(|d| d.packets).sum();
            (reason.name().to_string(), packets)
        })
        .collect()
}

impl StatusReport {
    /// One `STACK_FLOWS` table's figures for `to_json`; null where the
    /// node has no such table (`STACK_FLOWS6` on an IPv4-only node).
    fn stack_flows_json(&self, table: &str) -> Value {
        self.stack_flows.iter().find(|f| f.table == table).map_or(Value::Null, |f| {
            json!({
                "entries": f.entries,
                "max": f.max_entries,
                "remembered": f.remembered,
                "forgotten": f.forgotten,
                "insertFailed": f.insert_failed,
                "evicted": f.evicted,
            })
        })
    }

    pub fn healthy(&self) -> bool {
        self.unhealthy.is_empty()
    }

    pub fn live(&self) -> bool {
        self.not_live.is_empty()
    }

    /// `status --liveness`: one line, the verdict on liveness alone.
    pub fn render_liveness(&self) -> String {
        match self.not_live.first() {
            None => "sluice agent: live\n".to_string(),
            Some(first) => format!("sluice agent: NOT LIVE: {first}\n"),
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "healthy": self.healthy(),
            "unhealthy": self.unhealthy,
            "live": self.live(),
            "notLive": self.not_live,
            "warnings": self.warnings,
            "pinDir": self.pin_dir,
            "agent": self.agent,
            "agentAlive": self.agent_alive,
            "uplinkIfindex": self.uplink_ifindex,
            "nodeIP": self.node_ip,
            "attached": self.attached,
            "routes": self
                .routes
                .iter()
                .map(|(c, ip, n, p)| json!({"podCIDR": c, "nodeIP": ip, "node": n, "path": p.path, "why": p.why, "mtu": p.mtu}))
                .collect::<Vec<_>>(),
            "endpoints": self.endpoints.iter().map(|(ip, i)| json!({"ip": ip, "hostIfindex": i})).collect::<Vec<_>>(),
            "endpoints6": self.endpoints6.iter().map(|(ip, i)| json!({"ip": ip, "hostIfindex": i})).collect::<Vec<_>>(),
            "maps": self
                .maps
                .iter()
                .map(|m| (m.name.clone(), json!({"kind": m.kind.name(), "entries": m.entries, "max": m.max_entries})))
                .collect::<serde_json::Map<_, _>>(),
            "stackFlows": self.stack_flows_json(names::STACK_FLOWS),
            "stackFlows6": self.stack_flows_json(names::STACK_FLOWS6),
            "drops": self.drops.iter().map(|(k, n)| (k.clone(), json!(n))).collect::<serde_json::Map<_, _>>(),
            "dropsByDirection": self
                .drop_stats
                .iter()
                .filter(|d| d.packets != 0)
                .map(|d| json!({
                    "reason": d.reason.name(),
                    "direction": d.direction.name(),
                    "packets": d.packets,
                    "bytes": d.bytes,
                }))
                .collect::<Vec<_>>(),
            "forwards": self.forwards.iter().map(|(k, n)| (k.clone(), json!(n))).collect::<serde_json::Map<_, _>>(),
            "nat64": Nat64Status::to_json(self.nat64.as_ref()),
        })
    }

    /// The IPv6 half of a dual-stack or IPv6-only node (nothing on an
    /// IPv4-only one): its pod CIDR, the IPv6 routes to other nodes, the
    /// pods' IPv6 endpoints.
    fn render_ipv6(&self) -> String {
        let Some(a) = self.agent.as_ref().filter(|a| a.pod_cidr6.is_some()) else {
            return String::new();
        };
        let mut o = format!(
            "IPv6: pod CIDR {}, pods forwarded by the eBPF fast path as IPv4's\n",
            a.pod_cidr6.as_deref().unwrap_or_default()
        );
        o.push_str(&format!("IPv6 node routes ({}):\n", a.route_nodes6.len()));
        for (cidr, node) in &a.route_nodes6 {
            o.push_str(&format!("  {cidr:<24} node {node}\n"));
        }
        o.push_str(&format!("local IPv6 endpoints ({} of {}):\n", self.endpoints6.len(), MAX_ENDPOINTS));
        for (ip, ifindex) in &self.endpoints6 {
            o.push_str(&format!("  {ip:<24} host ifindex {ifindex}\n"));
        }
        o
    }

    pub fn render_text(&self) -> String {
        let mut o = String::new();
        match self.unhealthy.first() {
            None => o.push_str("sluice: healthy\n"),
            Some(first) => o.push_str(&format!("sluice: UNHEALTHY: {first}\n")),
        }
        for more in self.unhealthy.iter().skip(1) {
            o.push_str(&format!("  also: {more}\n"));
        }
        for w in &self.warnings {
            o.push_str(&format!("  warning: {w}\n"));
        }
        if let Some(a) = &self.agent {
            o.push_str(&format!(
                "agent: {} (pid {}, v{}), node {}, pod CIDR {}, membership from {}\n",
                if self.agent_alive { "running" } else { "NOT RUNNING" },
                a.pid,
                a.version,
                a.node_name,
                a.pod_cidr,
                a.membership
            ));
            if a.pod_mtu != 0 {
                o.push_str(&format!("MTU: pods {}, uplink {}\n", a.pod_mtu, a.uplink_mtu));
            }
            if !a.pod_device.is_empty() {
                o.push_str(&format!("pod device: {} ({})\n", a.pod_device, a.pod_device_why));
            }
            if !a.attach_mode.is_empty() {
                o.push_str(&format!("attach: {} ({})\n", a.attach_mode, a.attach_mode_why));
            }
            for degraded in &a.kernel_degraded {
                o.push_str(&format!("kernel: {degraded}\n"));
            }
            if let Some(k) = &a.kubernetes {
                o.push_str(&format!(
                    "kubernetes: {}, {}, {} events, {} lists{}\n",
                    if k.connected { "connected" } else { "DISCONNECTED" },
                    if k.synced { "synced" } else { "NOT SYNCED" },
                    k.events,
                    k.relists,
                    k.last_error.as_ref().map(|e| format!(", last error: {e}")).unwrap_or_default()
                ));
                if let Some(r) = &k.last_recovery {
                    o.push_str(&format!("  {}\n", describe_recovery("Nodes", r)));
                }
            }
        }
        if let Some(lb) = self.agent.as_ref().and_then(|a| a.service_lb.as_ref()) {
            o.push_str(&format!(
                "services (socket LB on cgroup {}): {}, {} services, {} frontends ({} hostPorts), {} backends, \
                 {} stale UDP sockets destroyed{}\n",
                lb.cgroup,
                match (&lb.stopped, lb.synced) {
                    (Some(_), _) => "STOPPED (restarting)",
                    (None, true) => "synced",
                    (None, false) => "NOT SYNCED",
                },
                lb.services,
                lb.frontends,
                lb.host_ports,
                lb.backends,
                lb.udp_sockets_destroyed,
                lb.last_error.as_ref().map(|e| format!(", last error: {e}")).unwrap_or_default()
            ));
            if let Some(r) = &lb.watch_recovery {
                o.push_str(&format!("  {}\n", describe_recovery("Services", r)));
            }
        }
        if let Some(p) = self.agent.as_ref().and_then(|a| a.port_ownership.as_ref()) {
            o.push_str(&format!(
                "ports: NodePort range {}, reserved {} (sluice added {}), {} host sockets on them{}\n",
                p.node_port_range,
                p.owned,
                if p.added.is_empty() { "none" } else { &p.added },
                p.collisions.len(),
                p.reserve_error.as_ref().map(|e| format!(", NOT RESERVED: {e}")).unwrap_or_default()
            ));
            for c in &p.collisions {
                o.push_str(&format!("  collision: {c}\n"));
            }
        }
        o.push_str(&format!(
            "datapath: pins {}, uplink ifindex {}, node IP {}\n",
            self.pin_dir, self.uplink_ifindex, self.node_ip
        ));
        o.push_str("programs attached:\n");
        for (ifname, progs) in &self.attached {
            o.push_str(&format!("  {ifname:<16} {}\n", progs.join(", ")));
        }
        o.push_str(&format!("node routes ({} of {}):\n", self.routes.len(), MAX_NODE_ROUTES));
        for (cidr, ip, node, path) in &self.routes {
            let mtu = path.mtu.map(|m| format!(", MTU {m}")).unwrap_or_default();
            o.push_str(&format!("  {cidr:<18} via {ip:<15} node {node:<12} {:<6} ({}{mtu})\n", path.path, path.why));
        }
        o.push_str(&format!("local endpoints ({} of {}):\n", self.endpoints.len(), MAX_ENDPOINTS));
        for (ip, ifindex) in &self.endpoints {
            o.push_str(&format!("  {ip:<16} host ifindex {ifindex}\n"));
        }
        o.push_str(&self.render_ipv6());
        if self.agent.as_ref().is_some_and(|a| a.pod_cidr6.is_some()) {
            o.push_str(&Nat64Status::render(self.nat64.as_ref()));
        }
        o.push_str(&render_maps(&self.maps, &self.stack_flows));
        o.push_str("drops by reason:\n");
        for (k, n) in &self.drops {
            // Where they were dropped: each direction's packets and bytes.
            let sides: Vec<String> = self
                .drop_stats
                .iter()
                .filter(|d| d.reason.name() == k && d.packets != 0)
                .map(|d| format!("{} {} packets {} bytes", d.direction.name(), d.packets, d.bytes))
                .collect();
            let sides = if sides.is_empty() { String::new() } else { format!("  ({})", sides.join(", ")) };
            o.push_str(&format!("  {k:<18} {n}{sides}\n"));
        }
        o.push_str("forwarded by path:\n");
        for (k, n) in &self.forwards {
            o.push_str(&format!("  {k:<18} {n}\n"));
        }
        o
    }
}

/// A watch's last outage, for `status`.
fn describe_recovery(what: &str, r: &crate::kube_watch::Recovery) -> String {
    format!(
        "last outage: {what} synced again {:.1} s after the API server returned ({:.1} s after the first error)",
        r.synced_after_return_ms as f64 / 1000.0,
        r.outage_ms as f64 / 1000.0
    )
}

/// The maps' fill, one line each (pure).
pub fn render_maps(maps: &[MapFill], stack_flows: &[StackFlows]) -> String {
    let mut o = String::from("maps:\n");
    for m in maps {
        let fill = match (m.kind, m.entries) {
            (FillKind::Entries | FillKind::LruEntries, Some(n)) => format!("{n} of {}", m.max_entries),
            (FillKind::Bytes, _) => format!("{} bytes", m.max_entries),
            _ => format!("{} slots", m.max_entries),
        };
        let mut line = format!("  {:<16} {:<7} {fill}", m.name, m.kind.name());
        if let Some(f) = stack_flows.iter().find(|f| f.table == m.name) {
            line.push_str(&format!(
                " (remembered {}, forgotten {}, evicted {}, insert failures {})",
                f.remembered, f.forgotten, f.evicted, f.insert_failed
            ));
        }
        o.push_str(line.trim_end());
        o.push('\n');
    }
    o
}

/// One row of `status --pods`: a lease on this node, the pod the runtime
/// named for it (`CNI_ARGS`), and whether the datapath has its endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRow {
    pub ip: String,
    pub container_id: String,
    pub ifname: String,
    /// `<namespace>/<name>`; `None` when the runtime passed no pod (`ctr`, by hand).
    pub pod: Option<String>,
    pub endpoint: bool,
}

/// `status --pods`: leases from the data directory (read without the IPAM
/// lock) joined with the endpoint map `report` read.
pub fn pods(data_dir: &Path, report: &StatusReport) -> Result<Vec<PodRow>, String> {
    let leases = sluice_node::ipam::store::read_pod_leases(data_dir).map_err(|e| format!("{e:#}"))?;
    Ok(leases
        .into_iter()
        .map(|l| PodRow {
            endpoint: report.endpoints.iter().any(|(ip, _)| *ip == l.ip.to_string()),
            ip: l.ip.to_string(),
            container_id: l.container_id,
            ifname: l.ifname,
            pod: l.pod,
        })
        .collect())
}

pub fn pods_json(rows: &[PodRow]) -> Value {
    rows.iter()
        .map(|r| {
            json!({"ip": r.ip, "pod": r.pod, "containerID": r.container_id, "ifname": r.ifname, "endpoint": r.endpoint})
        })
        .collect()
}

pub fn render_pods(rows: &[PodRow]) -> String {
    let mut o = format!("pods ({}):\n", rows.len());
    for r in rows {
        let id: String = r.container_id.chars().take(12).collect();
        o.push_str(&format!(
            "  {:<16} {:<40} {id:<12} {}{}\n",
            r.ip,
            r.pod.as_deref().unwrap_or("-"),
            r.ifname,
            if r.endpoint { "" } else { "  (no endpoint entry)" }
        ));
    }
    o
}

/// How one route's packets leave, for `status`: what the datapath does
/// (the map's flag) and why the agent chose it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutePath {
    /// `native` or `vxlan`.
    pub path: &'static str,
    pub why: String,
    /// The largest packet that crosses to the peer unfragmented (`None`
    /// when the agent did not record its uplink's MTU).
    pub mtu: Option<u32>,
}

impl RoutePath {
    /// `vxlan`: the `NODE_ROUTES` flag; `choice`: the agent's decision from
    /// its state file (absent with an agent that predates tunnels, or down
    /// before its first pass); `uplink_mtu` from there too (0: unknown).
    pub fn new(vxlan: bool, choice: Option<crate::membership::PathChoice>, uplink_mtu: u32) -> Self {
        use crate::membership::PeerPath;
        let path = if vxlan { PeerPath::Vxlan } else { PeerPath::Native };
        let why = match choice {
            Some(c) if c.path == path => c.reason.describe().to_string(),
            Some(c) => format!("the agent wants {} ({}); the datapath not yet", c.path.name(), c.reason.describe()),
            None => "no reason recorded".to_string(),
        };
        RoutePath { path: path.name(), why, mtu: (uplink_mtu != 0).then(|| path.mtu(uplink_mtu)) }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_killed_agent_nobody_reaped_is_not_alive() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().expect("spawn sleep");
        let pid = child.id();
        assert!(super::pid_alive(pid), "a running process is alive");
        child.kill().expect("kill");
        let start = std::time::Instant::now();
        while !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z") {
            assert!(start.elapsed() < std::time::Duration::from_secs(5), "pid {pid} not a zombie after 5 s");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(!super::pid_alive(pid), "a zombie is not a live agent");
        child.wait().expect("reap");
        assert!(!super::pid_alive(pid));
        assert!(!super::pid_alive(0));
    }

    use super::*;
    use crate::membership::{kubernetes::KubeState, Problem};

    fn state(updated_unix: u64) -> AgentState {
        AgentState { pid: 42, updated_unix, resync_ms: 1000, ..Default::default() }
    }

    fn facts(agent: Result<&AgentState, String>) -> HealthFacts<'_> {
        HealthFacts {
            agent,
            agent_pid_alive: true,
            now_unix: 1000,
            datapath_error: None,
            uplink_attached: true,
            maps: &[],
            stack_flows: &[],
        }
    }

    #[test]
    fn healthy_when_everything_is_in_place() {
        let s = state(999);
        let v = verdict(&facts(Ok(&s)));
        assert_eq!(v, Verdict { unhealthy: vec![], warnings: vec![], agent_alive: true, not_live: vec![] });
    }

    #[test]
    fn a_dead_or_silent_agent_is_unhealthy() {
        let s = state(999);
        let dead = verdict(&HealthFacts { agent_pid_alive: false, ..facts(Ok(&s)) });
        assert!(!dead.agent_alive);
        assert!(dead.unhealthy[0].starts_with("agent not running (pid 42"), "{:?}", dead.unhealthy);
        // Alive pid, but no pass for longer than 10 s (3 × 1 s resync, floor 10 s).
        let stale = state(989);
        assert!(verdict(&facts(Ok(&stale))).unhealthy[0].contains("last reported 11s ago"));
        let recent = state(990);
        assert!(verdict(&facts(Ok(&recent))).unhealthy.is_empty());
        let never = verdict(&facts(Err("no state file".into())));
        assert_eq!(never.unhealthy, vec!["agent has never run here: no state file"]);
        // Each of these is one a restart could cure: the livenessProbe's.
        assert_eq!(dead.not_live, dead.unhealthy);
        assert_eq!(verdict(&facts(Ok(&stale))).not_live.len(), 1);
        assert_eq!(never.not_live, vec!["agent has not started here: no state file"]);
    }

    #[test]
    fn datapath_problems_come_first() {
        let s = AgentState { last_error: Some("bad peers file".into()), ..state(999) };
        let v = verdict(&HealthFacts { datapath_error: Some("no pins".into()), ..facts(Ok(&s)) });
        assert_eq!(v.unhealthy, vec!["datapath not loaded: no pins", "membership not applied: bad peers file"]);
        let v = verdict(&HealthFacts { uplink_attached: false, ..facts(Ok(&s)) });
        assert_eq!(v.unhealthy[0], "from_uplink is not attached to the uplink");
    }

    #[test]
    fn kubernetes_disconnected_is_unhealthy_problems_only_warn() {
        let s = AgentState {
            kubernetes: Some(KubeState { connected: false, last_error: Some("refused".into()), ..Default::default() }),
            problems: vec![Problem::NoPodCidr { node: "n4".into() }],
            ..state(999)
        };
        let v = verdict(&facts(Ok(&s)));
        assert_eq!(v.unhealthy, vec!["not connected to the Kubernetes API: refused"]);
        assert!(v.not_live.is_empty(), "restarting the agent does not bring the API server back");
        let refused = AgentState {
            kernel_route_failures: vec!["replace 10.244.3.0/24 via 172.30.0.255 dev #2: invalid gateway".into()],
            ..state(999)
        };
        assert_eq!(
            verdict(&facts(Ok(&refused))).unhealthy,
            vec!["kernel route not applied: replace 10.244.3.0/24 via 172.30.0.255 dev #2: invalid gateway"]
        );
        assert_eq!(v.warnings, vec!["node n4 has no pod CIDR yet; not routed"]);
    }

    #[test]
    fn nat64_shows_on_with_its_pool_and_counters_or_off() {
        let config = sluice_common::nat64::Nat64Config {
            device_ifindex: 9,
            pool_be: pinned_maps::ip_be("198.18.0.0".parse().unwrap()),
            pool_prefix_len: 16,
            ..Default::default()
        };
        let forwards = vec![("pod_to_nat64".to_string(), 5), ("nat64_to_pod".to_string(), 4), ("to_stack".into(), 1)];
        let drops =
            vec![("nat64_unsupported".to_string(), 2), ("truncated".into(), 7), ("nat64_no_endpoint".into(), 0)];
        let s = Nat64Status::new(&config, &forwards, &drops).unwrap();
        assert_eq!(
            Nat64Status::render(Some(&s)),
            "NAT64: on (64:ff9b::/96, pool 198.18.0.0/16, device ifindex 9): 5 translated out, 4 back; \
             dropped: nat64_unsupported 2, nat64_no_endpoint 0\n"
        );
        let j = Nat64Status::to_json(Some(&s));
        assert_eq!(
            (j["on"].clone(), j["out"].clone(), j["drops"]["nat64_unsupported"].clone()),
            (json!(true), json!(5), json!(2))
        );
        let off = sluice_common::nat64::Nat64Config::default();
        assert_eq!(Nat64Status::new(&off, &forwards, &drops), None);
        assert_eq!(Nat64Status::render(None), "NAT64: off\n");
        assert_eq!(Nat64Status::to_json(None), json!({"on": false}));
    }

    #[test]
    fn pods_rows_render() {
        let rows = vec![
            PodRow {
                ip: "10.244.1.2".into(),
                container_id: "0123456789abcdef".into(),
                ifname: "eth0".into(),
                pod: Some("default/web-0".into()),
                endpoint: true,
            },
            PodRow {
                ip: "10.244.1.3".into(),
                container_id: "c2".into(),
                ifname: "eth0".into(),
                pod: None,
                endpoint: false,
            },
        ];
        let text = render_pods(&rows);
        assert!(text.starts_with("pods (2):\n"), "{text}");
        assert!(text.contains("default/web-0") && text.contains("0123456789ab ") && !text.contains("0123456789abc"));
        assert!(text.lines().nth(2).unwrap().contains("-") && text.contains("(no endpoint entry)"));
        let j = pods_json(&rows);
        assert_eq!(j[0]["pod"], "default/web-0");
        assert!(j[1]["pod"].is_null());
    }

    fn endpoints_fill(entries: u64) -> MapFill {
        MapFill {
            name: "ENDPOINTS".into(),
            kind: FillKind::Entries,
            entries: Some(entries),
            max_entries: MAX_ENDPOINTS,
        }
    }

    #[test]
    fn nearly_full_maps_warn() {
        let s = state(999);
        let max = MAX_ENDPOINTS as u64;
        let ninety_percent = (max * 9).div_ceil(10);
        let maps = [endpoints_fill(ninety_percent)];
        let v = verdict(&HealthFacts { maps: &maps, ..facts(Ok(&s)) });
        assert_eq!(v.warnings, vec![format!("ENDPOINTS map is {ninety_percent} of {max} full")]);
        let maps = [endpoints_fill(ninety_percent - 1)];
        assert!(verdict(&HealthFacts { maps: &maps, ..facts(Ok(&s)) }).warnings.is_empty());
    }

    #[test]
    fn a_full_evicting_stack_flows_table_warns() {
        let s = state(999);
        let full = StackFlows {
            table: names::STACK_FLOWS6,
            entries: 1024,
            max_entries: 1024,
            remembered: 5000,
            evicted: 3976,
            ..Default::default()
        };
        let roomy = StackFlows { table: names::STACK_FLOWS, entries: 10, max_entries: 1024, ..Default::default() };
        let v = verdict(&HealthFacts { stack_flows: &[roomy, full], ..facts(Ok(&s)) });
        assert_eq!(v.warnings.len(), 1, "{v:?}");
        assert!(v.warnings[0].starts_with("STACK_FLOWS6 is at capacity (1024 of 1024) and has evicted 3976"), "{v:?}");
        assert!(v.unhealthy.is_empty(), "a warning, not a failed readiness probe");
    }

    #[test]
    fn maps_render_one_line_each() {
        let maps = vec![
            endpoints_fill(3),
            MapFill { name: "DROPS".into(), kind: FillKind::Slots, entries: None, max_entries: 14 },
            MapFill { name: "EVENTS".into(), kind: FillKind::Bytes, entries: None, max_entries: 262144 },
            MapFill { name: "STACK_FLOWS".into(), kind: FillKind::LruEntries, entries: Some(12), max_entries: 262144 },
        ];
        let sf = StackFlows {
            table: names::STACK_FLOWS,
            entries: 12,
            max_entries: 262144,
            remembered: 40,
            forgotten: 3,
            evicted: 25,
            insert_failed: 0,
        };
        let text = render_maps(&maps, &[sf]);
        assert_eq!(
            text,
            "maps:\n  ENDPOINTS        hash    3 of 4096\n  DROPS            array   14 slots\n  \
             EVENTS           ringbuf 262144 bytes\n  STACK_FLOWS      lru     12 of 262144 (remembered 40, forgotten 3, \
             evicted 25, insert failures 0)\n"
        );
    }

    #[test]
    fn drops_show_each_direction_with_packets_and_bytes() {
        use sluice_common::HookDirection;
        let row = |reason, direction, packets, bytes| DropRow { reason, direction, packets, bytes };
        let drop_stats = vec![
            row(DropReason::TunnelNoRoute, HookDirection::Ingress, 0, 0),
            row(DropReason::TunnelNoRoute, HookDirection::Egress, 2, 196),
            row(DropReason::TunnelKey, HookDirection::Ingress, 1, 98),
            row(DropReason::TunnelKey, HookDirection::Egress, 3, 300),
        ];
        let report = StatusReport { drops: drops_by_reason(&drop_stats), drop_stats, ..Default::default() };
        let text = report.render_text();
        assert!(text.contains("tunnel_no_route    2  (egress 2 packets 196 bytes)\n"), "{text}");
        assert!(
            text.contains("tunnel_key         4  (ingress 1 packets 98 bytes, egress 3 packets 300 bytes)\n"),
            "{text}"
        );
        assert!(text.contains("source_spoofed     0\n"), "{text}");
        let j = report.to_json();
        assert_eq!(j["drops"]["tunnel_key"], 4);
        assert_eq!(
            j["dropsByDirection"][0],
            serde_json::json!({"reason": "tunnel_no_route", "direction": "egress", "packets": 2, "bytes": 196})
        );
        assert_eq!(j["dropsByDirection"].as_array().unwrap().len(), 3, "{j}");
        assert!(drops_by_reason(&[]).is_empty(), "unreadable counters: no rows, not zeros");
    }

    #[test]
    fn route_path_names_the_datapath_and_the_reason() {
        use crate::membership::{PathChoice, PathReason, PeerPath};
        let off = PathChoice { path: PeerPath::Vxlan, reason: PathReason::OffSubnet };
        assert_eq!(
            RoutePath::new(true, Some(off), 1500),
            RoutePath { path: "vxlan", why: "off this node's subnet".into(), mtu: Some(1450) }
        );
        let same = PathChoice { path: PeerPath::Native, reason: PathReason::SameSubnet };
        assert_eq!(RoutePath::new(false, Some(same), 9000).why, "on this node's subnet");
        assert_eq!(RoutePath::new(false, Some(same), 9000).mtu, Some(9000));
        assert!(RoutePath::new(false, Some(off), 1500).why.contains("wants vxlan"));
        assert_eq!(RoutePath::new(false, None, 0).path, "native");
        assert_eq!(RoutePath::new(true, None, 0).mtu, None, "an agent that did not say its uplink's MTU");
    }

    fn with_services(lb: ServiceLbState) -> AgentState {
        AgentState { service_lb: Some(lb), ..state(999) }
    }

    #[test]
    fn the_services_loop_is_part_of_the_verdict() {
        let running = ServiceLbState { synced: true, heartbeat_unix: 995, ..Default::default() };
        let s = with_services(running.clone());
        assert_eq!(verdict(&facts(Ok(&s))).unhealthy, Vec::<String>::new());
        let cases = [
            (
                ServiceLbState { synced: false, ..running.clone() },
                "Services not synced: not listed yet; the service maps do not follow the cluster",
            ),
            (
                ServiceLbState { synced: false, watch_error: Some("services: 403 Forbidden".into()), ..running.clone() },
                "Services not synced: services: 403 Forbidden; the service maps do not follow the cluster",
            ),
            (
                ServiceLbState { watch_error: Some("endpointslices: refused".into()), ..running.clone() },
                "not connected to the Kubernetes API for Services: endpointslices: refused",
            ),
            (
                ServiceLbState { stopped: Some("open maps: ENOENT".into()), restarts: 3, ..running.clone() },
                "socket load balancer stopped: open maps: ENOENT; restarting (restarted 3 times); the service maps keep \
                 their last state",
            ),
        ];
        for (lb, want) in cases {
            let s = with_services(lb);
            let v = verdict(&facts(Ok(&s)));
            assert_eq!(v.unhealthy, vec![want.to_string()]);
            assert!(v.not_live.is_empty(), "{want}: a restart of the agent would not cure it");
        }
        // A loop that stopped passing is wedged: only a restart cures it.
        let s = with_services(ServiceLbState { heartbeat_unix: 1000 - WEDGED_AFTER_SECS - 1, ..running.clone() });
        let v = verdict(&facts(Ok(&s)));
        let wedged = format!("socket load balancer loop wedged: its last pass was {}s ago", WEDGED_AFTER_SECS + 1);
        assert_eq!((v.unhealthy.clone(), v.not_live), (vec![wedged.clone()], vec![wedged]));
        let s = with_services(ServiceLbState { heartbeat_unix: 1000 - WEDGED_AFTER_SECS, ..running });
        assert!(verdict(&facts(Ok(&s))).unhealthy.is_empty());
    }

    #[test]
    fn a_full_policy_map_makes_the_node_unhealthy() {
        use crate::daemon::policy_loop::PolicyLoopState;
        let fine = PolicyLoopState { synced: true, ..Default::default() };
        let s = AgentState { policy: Some(fine.clone()), ..state(999) };
        assert!(verdict(&facts(Ok(&s))).unhealthy.is_empty());
        let full = PolicyLoopState { full: vec!["policy map POLICY_RULES is full: x/a isolated".into()], ..fine };
        let s = AgentState { policy: Some(full), ..state(999) };
        assert_eq!(
            verdict(&facts(Ok(&s))).unhealthy,
            ["NetworkPolicy: policy map POLICY_RULES is full: x/a isolated".to_string()]
        );
    }

    #[test]
    fn kubernetes_line_reads_as_words() {
        let agent = AgentState {
            kubernetes: Some(KubeState { connected: true, synced: true, events: 5, relists: 1, ..Default::default() }),
            ..state(999)
        };
        let r = StatusReport { agent: Some(agent), agent_alive: true, ..Default::default() };
        let text = r.render_text();
        assert!(text.contains("\nkubernetes: connected, synced, 5 events, 1 lists\n"), "{text}");
        let recovery = crate::kube_watch::Recovery { outage_ms: 21_300, synced_after_return_ms: 640, synced_unix: 1 };
        let agent = AgentState {
            kubernetes: Some(KubeState {
                connected: true,
                synced: true,
                last_recovery: Some(recovery),
                ..Default::default()
            }),
            ..state(999)
        };
        let text = StatusReport { agent: Some(agent), ..Default::default() }.render_text();
        assert!(
            text.contains("\n  last outage: Nodes synced again 0.6 s after the API server returned (21.3 s after the first error)\n"),
            "{text}"
        );
        let agent = AgentState {
            kubernetes: Some(KubeState { last_error: Some("refused".into()), ..Default::default() }),
            ..state(999)
        };
        let text = StatusReport { agent: Some(agent), ..Default::default() }.render_text();
        assert!(
            text.contains("\nkubernetes: DISCONNECTED, NOT SYNCED, 0 events, 0 lists, last error: refused\n"),
            "{text}"
        );
        assert_eq!(StatusReport::default().render_liveness(), "sluice agent: live\n");
        let dead = StatusReport { not_live: vec!["agent not running".into()], ..Default::default() };
        assert_eq!(dead.render_liveness(), "sluice agent: NOT LIVE: agent not running\n");
    }

    #[test]
    fn a_dual_stack_node_shows_both_families() {
        let agent = AgentState {
            pod_cidr: "10.244.1.0/24".into(),
            pod_cidr6: Some("fd00:244:0:1::/64".into()),
            route_nodes6: [("fd00:244:0:2::/64".to_string(), "n2".to_string())].into(),
            ..Default::default()
        };
        let r = StatusReport {
            agent: Some(agent),
            endpoints: vec![("10.244.1.2".into(), 7)],
            endpoints6: vec![("fd00:244:0:1::2".into(), 7)],
            ..Default::default()
        };
        let text = r.render_text();
        for want in
            ["pod CIDR 10.244.1.0/24", "pod CIDR fd00:244:0:1::/64", "fd00:244:0:2::/64", "node n2", "fd00:244:0:1::2"]
        {
            assert!(text.contains(want), "{want} missing:\n{text}");
        }
        assert_eq!(r.to_json()["endpoints6"][0]["ip"], "fd00:244:0:1::2");
        // An IPv4-only node prints no IPv6 section.
        let v4 = StatusReport { agent: Some(AgentState::default()), ..Default::default() };
        assert!(!v4.render_text().contains("IPv6"), "{}", v4.render_text());
    }
}
