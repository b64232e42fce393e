//! What `sluice-agent status` reports: read from the pinned maps only, so it
//! works while the agent is down too.
use anyhow::Result;
use serde_json::{json, Value};

use crate::{maps, pins::PinDir};

pub fn collect(pins: &PinDir) -> Result<Value> {
    let endpoints = maps::Endpoints::open(pins)?.all()?;
    let routes = maps::NodeRoutes::open(pins)?.all()?;
    let config = maps::read_node_config(pins)?;
    Ok(json!({
        "pinDir": pins.root(),
        "uplinkIfindex": config.uplink_ifindex,
        "nodeIP": maps::ip_from_be(config.node_ip_be).to_string(),
        "endpoints": endpoints.iter().map(|(ip, ep)| json!({
            "ip": ip.to_string(), "hostIfindex": ep.host_ifindex,
        })).collect::<Vec<_>>(),
        "routes": routes.iter().map(|(cidr, ip)| json!({"podCIDR": cidr.to_string(), "nodeIP": ip.to_string()})).collect::<Vec<_>>(),
        "drops": maps::drops(pins)?.iter().map(|(r, n)| (r.name().to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
        "forwards": maps::forwards(pins)?.iter().map(|(p, n)| (p.name().to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
    }))
}

pub fn render_text(status: &Value) -> String {
    let mut out = String::new();
    out.push_str(&format!("pin dir: {}\n", status["pinDir"].as_str().unwrap_or("?")));
    out.push_str(&format!(
        "uplink ifindex: {}  node IP: {}\n",
        status["uplinkIfindex"],
        status["nodeIP"].as_str().unwrap_or("?")
    ));
    let list = |v: &Value| v.as_array().cloned().unwrap_or_default();
    out.push_str(&format!("endpoints ({}):\n", list(&status["endpoints"]).len()));
    for e in list(&status["endpoints"]) {
        out.push_str(&format!("  {:<16} host ifindex {}\n", e["ip"].as_str().unwrap_or("?"), e["hostIfindex"]));
    }
    out.push_str(&format!("node routes ({}):\n", list(&status["routes"]).len()));
    for r in list(&status["routes"]) {
        out.push_str(&format!(
            "  {:<18} via {}\n",
            r["podCIDR"].as_str().unwrap_or("?"),
            r["nodeIP"].as_str().unwrap_or("?")
        ));
    }
    for (title, key) in [("drops", "drops"), ("forwarded", "forwards")] {
        out.push_str(&format!("{title}:\n"));
        if let Some(m) = status[key].as_object() {
            for (k, v) in m {
                out.push_str(&format!("  {k:<18} {v}\n"));
            }
        }
    }
    out
}
