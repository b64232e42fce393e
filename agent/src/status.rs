//! `sluice-agent status`: what a person on call needs at a glance. Read from
//! the pinned maps and the agent's state file only, so it works (and says
//! so) while the agent is down.
use std::{collections::BTreeMap, path::Path};

use serde_json::{json, Value};
use sluice_common::maps::{
    limits::{MAX_ENDPOINTS, MAX_NODE_ROUTES},
    programs,
};

use crate::{
    agent_state::{self, AgentState},
    maps,
    pins::{self, PinDir},
};

/// Everything `status` shows, plus the verdict.
#[derive(Debug, Default)]
pub struct StatusReport {
    /// Why the node is unhealthy, most important first; empty when healthy.
    pub unhealthy: Vec<String>,
    pub warnings: Vec<String>,
    pub pin_dir: String,
    pub agent: Option<AgentState>,
    pub agent_alive: bool,
    pub uplink_ifindex: u32,
    pub node_ip: String,
    /// Interface → programs attached to it (from the link pins).
    pub attached: BTreeMap<String, Vec<String>>,
    pub routes: Vec<(String, String, String)>,
    pub endpoints: Vec<(String, u32)>,
    pub drops: Vec<(String, u64)>,
    pub forwards: Vec<(String, u64)>,
}

fn pid_alive(pid: u32) -> bool {
    pid != 0 && Path::new(&format!("/proc/{pid}")).exists()
}

pub fn collect(pins: &PinDir, data_dir: &Path) -> StatusReport {
    let mut r = StatusReport { pin_dir: pins.root().display().to_string(), ..Default::default() };

    // The agent process.
    match agent_state::read(data_dir) {
        Ok(state) => {
            let age = agent_state::now_unix().saturating_sub(state.updated_unix);
            let max_age = (3 * state.resync_ms / 1000).max(10);
            r.agent_alive = pid_alive(state.pid) && age <= max_age;
            if !r.agent_alive {
                r.unhealthy.push(format!(
                    "agent not running (pid {} last reported {age}s ago); the datapath keeps forwarding with the last state",
                    state.pid
                ));
            }
            if let Some(k) = &state.kubernetes {
                if !k.connected {
                    r.unhealthy.push(format!(
                        "not connected to the Kubernetes API: {}",
                        k.last_error.clone().unwrap_or_else(|| "no events yet".into())
                    ));
                }
            }
            if let Some(e) = &state.last_error {
                r.unhealthy.push(format!("membership not applied: {e}"));
            }
            r.warnings.extend(state.problems.iter().cloned());
            r.agent = Some(state);
        }
        Err(e) => r.unhealthy.push(format!("agent has never run here: {e:#}")),
    }

    // The datapath.
    let endpoints = maps::Endpoints::open(pins).and_then(|m| m.all());
    let routes = maps::NodeRoutes::open(pins).and_then(|m| m.all());
    let (endpoints, routes) = match (endpoints, routes) {
        (Ok(e), Ok(r)) => (e, r),
        (Err(e), _) | (_, Err(e)) => {
            r.unhealthy.insert(0, format!("datapath not loaded: {e:#}"));
            return r;
        }
    };
    if let Ok(cfg) = maps::read_node_config(pins) {
        r.uplink_ifindex = cfg.uplink_ifindex;
        r.node_ip = maps::ip_from_be(cfg.node_ip_be).to_string();
    }
    if let Ok(dir) = std::fs::read_dir(pins.links_dir()) {
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            for prog in [programs::FROM_UPLINK, programs::FROM_POD, programs::COUNT_PACKETS] {
                if let Some(ifname) = pins::link_pin_ifname(prog, &name) {
                    r.attached.entry(ifname.to_string()).or_default().push(prog.to_string());
                }
            }
        }
    }
    if !r.attached.values().any(|progs| progs.iter().any(|p| p == programs::FROM_UPLINK)) {
        r.unhealthy.insert(0, "from_uplink is not attached to the uplink".into());
    }
    let route_nodes = r.agent.as_ref().map(|a| a.route_nodes.clone()).unwrap_or_default();
    r.routes = routes
        .iter()
        .map(|(cidr, ip)| {
            let node = route_nodes.get(&cidr.to_string()).cloned().unwrap_or_else(|| "?".into());
            (cidr.to_string(), ip.to_string(), node)
        })
        .collect();
    r.endpoints = endpoints.iter().map(|(ip, ep)| (ip.to_string(), ep.host_ifindex)).collect();
    for (what, n, max) in
        [("endpoints", r.endpoints.len(), MAX_ENDPOINTS), ("node routes", r.routes.len(), MAX_NODE_ROUTES)]
    {
        if n as u64 * 10 >= max as u64 * 9 {
            r.warnings.push(format!("{what} map is {n} of {max} full"));
        }
    }
    r.drops =
        maps::drops(pins).map(|v| v.iter().map(|(k, n)| (k.name().to_string(), *n)).collect()).unwrap_or_default();
    r.forwards =
        maps::forwards(pins).map(|v| v.iter().map(|(k, n)| (k.name().to_string(), *n)).collect()).unwrap_or_default();
    r
}

impl StatusReport {
    pub fn healthy(&self) -> bool {
        self.unhealthy.is_empty()
    }

    pub fn to_json(&self) -> Value {
        json!({
            "healthy": self.healthy(),
            "unhealthy": self.unhealthy,
            "warnings": self.warnings,
            "pinDir": self.pin_dir,
            "agent": self.agent,
            "agentAlive": self.agent_alive,
            "uplinkIfindex": self.uplink_ifindex,
            "nodeIP": self.node_ip,
            "attached": self.attached,
            "routes": self.routes.iter().map(|(c, ip, n)| json!({"podCIDR": c, "nodeIP": ip, "node": n})).collect::<Vec<_>>(),
            "endpoints": self.endpoints.iter().map(|(ip, i)| json!({"ip": ip, "hostIfindex": i})).collect::<Vec<_>>(),
            "maps": {
                "endpoints": {"used": self.endpoints.len(), "max": MAX_ENDPOINTS},
                "nodeRoutes": {"used": self.routes.len(), "max": MAX_NODE_ROUTES},
            },
            "drops": self.drops.iter().map(|(k, n)| (k.clone(), json!(n))).collect::<serde_json::Map<_, _>>(),
            "forwards": self.forwards.iter().map(|(k, n)| (k.clone(), json!(n))).collect::<serde_json::Map<_, _>>(),
        })
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
            if let Some(k) = &a.kubernetes {
                o.push_str(&format!(
                    "kubernetes: {} , synced {}, {} events, {} lists{}\n",
                    if k.connected { "connected" } else { "DISCONNECTED" },
                    k.synced,
                    k.events,
                    k.relists,
                    k.last_error.as_ref().map(|e| format!(", last error: {e}")).unwrap_or_default()
                ));
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
        for (cidr, ip, node) in &self.routes {
            o.push_str(&format!("  {cidr:<18} via {ip:<15} node {node}\n"));
        }
        o.push_str(&format!("local endpoints ({} of {}):\n", self.endpoints.len(), MAX_ENDPOINTS));
        for (ip, ifindex) in &self.endpoints {
            o.push_str(&format!("  {ip:<16} host ifindex {ifindex}\n"));
        }
        for (title, counters) in [("drops by reason", &self.drops), ("forwarded by path", &self.forwards)] {
            o.push_str(&format!("{title}:\n"));
            for (k, n) in counters {
                o.push_str(&format!("  {k:<18} {n}\n"));
            }
        }
        o
    }
}
