//! `sluice-agent status --services`: the socket load balancer's frontends
//! and their backends, read from the pinned maps (so it shows what the
//! datapath does, whether or not an agent runs).
use std::net::Ipv4Addr;

use anyhow::Result;
use serde_json::{json, Value};
use sluice_common::services::{admission, Admission, BackendSlot};
use sluice_node::datapath::{
    pinned_maps::ip_from_be,
    pins::PinDir,
    service_maps::{sock_lb_counters, ServiceMaps},
};

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServiceRow {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub protocol: &'static str,
    /// "balanced", "refused" (no endpoints), "unreachable" (none local).
    pub state: &'static str,
    pub affinity_timeout_secs: u32,
    pub backends: Vec<(Ipv4Addr, u16)>,
}

fn protocol_name(n: u8) -> &'static str {
    match n {
        6 => "TCP",
        17 => "UDP",
        _ => "?",
    }
}

pub fn rows(pins: &PinDir) -> Result<Vec<ServiceRow>> {
    let maps = ServiceMaps::open(pins)?;
    let mut by_slot = std::collections::BTreeMap::new();
    for (slot, b) in maps.backends()? {
        by_slot.insert(slot, b);
    }
    let mut rows: Vec<ServiceRow> = maps
        .services()?
        .into_iter()
        .map(|(k, v)| ServiceRow {
            ip: ip_from_be(k.vip_be),
            port: u16::from_be(k.port_be),
            protocol: protocol_name(k.protocol),
            state: match admission(&v) {
                Admission::Balance => "balanced",
                Admission::Refuse => "refused",
                Admission::Unreachable => "unreachable",
            },
            affinity_timeout_secs: v.affinity_timeout_secs,
            backends: (0..v.count)
                .filter_map(|slot| by_slot.get(&BackendSlot { set: v.backend_set, slot }))
                .map(|b| (ip_from_be(b.ip_be), u16::from_be(b.port_be)))
                .collect(),
        })
        .collect();
    rows.sort();
    Ok(rows)
}

pub fn to_json(rows: &[ServiceRow], pins: &PinDir) -> Value {
    let counters: serde_json::Map<String, Value> =
        sock_lb_counters(pins).unwrap_or_default().into_iter().map(|(c, n)| (c.name().to_string(), json!(n))).collect();
    json!({
        "frontends": rows.iter().map(|r| json!({
            "ip": r.ip.to_string(), "port": r.port, "protocol": r.protocol, "state": r.state,
            "affinityTimeoutSeconds": r.affinity_timeout_secs,
            "backends": r.backends.iter().map(|(ip, p)| format!("{ip}:{p}")).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "counters": counters,
    })
}

pub fn render(rows: &[ServiceRow], pins: &PinDir) -> String {
    let mut o = format!("service frontends ({}):\n", rows.len());
    for r in rows {
        let backends: Vec<String> = r.backends.iter().map(|(ip, p)| format!("{ip}:{p}")).collect();
        let affinity =
            if r.affinity_timeout_secs > 0 { format!(" affinity {}s", r.affinity_timeout_secs) } else { String::new() };
        o.push_str(&format!(
            "  {:<22} {:<11} {} backends{affinity}: {}\n",
            format!("{}:{}/{}", r.ip, r.port, r.protocol),
            r.state,
            r.backends.len(),
            backends.join(" ")
        ));
    }
    if let Ok(counters) = sock_lb_counters(pins) {
        o.push_str("socket load balancer:\n");
        for (c, n) in counters {
            o.push_str(&format!("  {:<28} {n}\n", c.name()));
        }
    }
    o
}
