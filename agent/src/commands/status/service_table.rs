//! `sluice-agent status --services`: the socket load balancer's frontends
//! (cluster IPs, NodePorts, external IPs, LoadBalancer ingress IPs,
//! hostPorts of this node's pods) of both families (`SERVICES` and
//! `SERVICES6`) and their backends, and the node addresses NodePorts answer on, read from
//! the pinned maps (so it shows what the datapath does, whether or not an
//! agent runs).
use std::net::{IpAddr, Ipv6Addr};

use anyhow::Result;
use serde_json::{json, Value};
use sluice_common::services::{
    admission, frontend_kind, Admission, BackendSlot, FrontendKind, ServiceKey, ServiceValue, NODE_ADDRESS_LOCAL,
    SCOPE_HOST_PORT, SCOPE_NODE_PORT,
};
use sluice_common::{nat::Nat4Counter, services6::ip6_octets};
use sluice_node::datapath::{
    nat4_maps::{nat4_counters, nat6_counters, NodeAddressMap6},
    pinned_maps::ip_from_be,
    pins::PinDir,
    service_maps::{sock_lb_counters, NodeAddressMap, ServiceMaps, ServiceMaps6},
};

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServiceRow {
    pub kind: FrontendKind,
    /// `None`: a NodePort, on every node address, or a hostPort on every
    /// address of this node.
    pub ip: Option<IpAddr>,
    pub port: u16,
    pub protocol: &'static str,
    /// "balanced", "refused" (no endpoints), "unreachable" (none local).
    pub state: &'static str,
    pub affinity_timeout_secs: u32,
    pub backends: Vec<(IpAddr, u16)>,
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
            kind: frontend_kind(&k, &v),
            ip: (k.scope != SCOPE_NODE_PORT && k.scope != SCOPE_HOST_PORT).then(|| ip_from_be(k.vip_be).into()),
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
                .map(|b| (ip_from_be(b.ip_be).into(), u16::from_be(b.port_be)))
                .collect(),
        })
        .collect();
    // IPv6 frontends; none when the maps are absent (an agent older than
    // IPv6 Services).
    if let Ok(maps6) = ServiceMaps6::open(pins) {
        let by_slot6: std::collections::BTreeMap<_, _> = maps6.backends()?.into_iter().collect();
        rows.extend(maps6.services()?.into_iter().map(|(k, v)| {
            let ip6 = |w| IpAddr::V6(Ipv6Addr::from(ip6_octets(w)));
            ServiceRow {
                kind: frontend_kind(
                    &ServiceKey { vip_be: 0, port_be: k.port_be, protocol: k.protocol, scope: k.scope },
                    &v,
                ),
                ip: (k.scope != SCOPE_NODE_PORT).then(|| ip6(k.vip)),
                port: u16::from_be(k.port_be),
                protocol: protocol_name(k.protocol),
                state: state(&v),
                affinity_timeout_secs: v.affinity_timeout_secs,
                backends: (0..v.count)
                    .filter_map(|slot| by_slot6.get(&BackendSlot { set: v.backend_set, slot }))
                    .map(|b| (ip6(b.ip), u16::from_be(b.port_be)))
                    .collect(),
            }
        }));
    }
    rows.sort();
    Ok(rows)
}

/// "balanced", "refused" (no endpoints) or "unreachable" (none local).
fn state(v: &ServiceValue) -> &'static str {
    match admission(v) {
        Admission::Balance => "balanced",
        Admission::Refuse => "refused",
        Admission::Unreachable => "unreachable",
    }
}

/// `ip:port` with an IPv6 address in brackets.
fn host_port(ip: &IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(*ip, port).to_string()
}

/// `NODE_ADDRESSES` and `NODE_ADDRESSES6`: (address, "local" or
/// "remote"), IPv4 first, sorted. A family is left out when its map is
/// absent (an agent older than NodePorts at the socket, or than IPv6
/// NodePorts).
pub fn node_addresses(pins: &PinDir) -> Vec<(IpAddr, &'static str)> {
    let kind = |k: u32| if k == NODE_ADDRESS_LOCAL { "local" } else { "remote" };
    let v4 = NodeAddressMap::open(pins).and_then(|m| m.entries()).unwrap_or_default();
    let v6 = NodeAddressMap6::open(pins).and_then(|m| m.entries()).unwrap_or_default();
    let mut out: Vec<(IpAddr, &'static str)> = v4
        .into_iter()
        .map(|(ip, k)| (IpAddr::V4(ip_from_be(ip)), kind(k)))
        .chain(v6.into_iter().map(|(ip, k)| (IpAddr::V6(Ipv6Addr::from(ip)), kind(k))))
        .collect();
    out.sort();
    out
}

/// A row's address as shown: a NodePort's is every node address, `*`, a
/// hostPort's without `hostIP` every local one, `*` too.
fn address(r: &ServiceRow) -> String {
    r.ip.map_or_else(|| "*".to_string(), |ip| ip.to_string())
}

/// A row's `address:port` as shown (`[fd00::a]:80` for IPv6).
fn frontend(r: &ServiceRow) -> String {
    match r.ip {
        Some(ip) => host_port(&ip, r.port),
        None => format!("*:{}", r.port),
    }
}

pub fn to_json(rows: &[ServiceRow], pins: &PinDir) -> Value {
    let counters: serde_json::Map<String, Value> =
        sock_lb_counters(pins).unwrap_or_default().into_iter().map(|(c, n)| (c.name().to_string(), json!(n))).collect();
    let named = |counters: Result<Vec<(Nat4Counter, u64)>>| -> serde_json::Map<String, Value> {
        counters.unwrap_or_default().into_iter().map(|(c, n)| (c.name().to_string(), json!(n))).collect()
    };
    json!({
        "uplink": {"nat4": named(nat4_counters(pins)), "nat6": named(nat6_counters(pins))},
        "nodeAddresses": node_addresses(pins).iter().map(|(ip, kind)| json!({"ip": ip.to_string(), "kind": kind})).collect::<Vec<_>>(),
        "frontends": rows.iter().map(|r| json!({
            "kind": r.kind.name(),
            "ip": address(r), "port": r.port, "protocol": r.protocol, "state": r.state,
            "affinityTimeoutSeconds": r.affinity_timeout_secs,
            "backends": r.backends.iter().map(|(ip, p)| host_port(ip, *p)).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "counters": counters,
    })
}

pub fn render(rows: &[ServiceRow], pins: &PinDir) -> String {
    let mut o = format!("service frontends ({}):\n", rows.len());
    for r in rows {
        let backends: Vec<String> = r.backends.iter().map(|(ip, p)| host_port(ip, *p)).collect();
        let affinity =
            if r.affinity_timeout_secs > 0 { format!(" affinity {}s", r.affinity_timeout_secs) } else { String::new() };
        o.push_str(&format!(
            "  {:<12} {:<22} {:<11} {} backends{affinity}: {}\n",
            r.kind.name(),
            format!("{}/{}", frontend(r), r.protocol),
            r.state,
            r.backends.len(),
            backends.join(" ")
        ));
    }
    let addresses: Vec<String> = node_addresses(pins).iter().map(|(ip, kind)| format!("{ip} ({kind})")).collect();
    o.push_str(&format!("NodePorts answer on: loopback from the node, {}\n", addresses.join(", ")));
    o.push_str("hostPorts answer on: loopback from the node and this node's (local) addresses\n");
    if let Ok(counters) = sock_lb_counters(pins) {
        o.push_str("socket load balancer:\n");
        for (c, n) in counters {
            o.push_str(&format!("  {:<28} {n}\n", c.name()));
        }
    }
    for (table, counters) in [("NAT4", nat4_counters(pins)), ("NAT6", nat6_counters(pins))] {
        let Ok(counters) = counters else { continue };
        o.push_str(&format!("from outside, at the uplink ({table}):\n"));
        for (c, n) in counters {
            o.push_str(&format!("  {:<28} {n}\n", c.name()));
        }
    }
    o
}
