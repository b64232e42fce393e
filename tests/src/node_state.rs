//! A node's per-pod state as comparable text, for the crash-safety tests
//! (tests/tests/cni.rs, ipv6_only.rs): a failed or killed ADD, and the DEL
//! or sweep after it, must leave the node exactly as before.
use std::path::Path;

use sluice_node::datapath::pins::PinDir;

use crate::{
    lab::{ns_exec, Lab, Node},
    Netns,
};

/// Everything on `node` that ADD could touch, both families: links,
/// routes, permanent neighbours, the endpoint maps as `status` lists them,
/// IPAM's leases, the link pins; and with `pod`, its links and addresses.
pub fn snapshot(lab: &Lab, node: &Node, pod: Option<&Netns>) -> String {
    let mut s = String::new();
    let links = ns_exec(&node.netns, &["ip", "-o", "link", "show"]).unwrap();
    let mut names: Vec<&str> = links.lines().filter_map(|l| l.split(": ").nth(1)).collect();
    names.sort();
    s += &format!("links: {names:?}\n");
    for family in ["-4", "-6"] {
        s += &format!("routes {family}:\n{}", ns_exec(&node.netns, &["ip", family, "route", "show"]).unwrap());
        let neigh = ns_exec(&node.netns, &["ip", family, "neigh", "show", "nud", "permanent"]).unwrap();
        s += &format!("neigh {family}:\n{neigh}");
    }
    let i = lab.state.nodes.iter().position(|n| n.name == node.name).unwrap();
    let status = lab.status(i).unwrap();
    s += &format!("endpoints: {} endpoints6: {}\n", status["endpoints"], status["endpoints6"]);
    let mut leases = files_under(&Lab::data_dir(node).join("ipam"));
    leases.retain(|p| !p.ends_with("/lock") && !p.ends_with("last_reserved_ip"));
    s += &format!("leases: {leases:?}\n");
    // Where the agent and plugin pin links (`<pin dir>/v<LAYOUT_VERSION>/links`).
    s += &format!("link pins: {:?}\n", files_under(&PinDir::new(&node.pin_dir).links_dir()));
    if let Some(pod) = pod {
        s += &format!("pod links:\n{}", ns_exec(&pod.name, &["ip", "-o", "link", "show"]).unwrap());
        s += &format!("pod addrs:\n{}", ns_exec(&pod.name, &["ip", "-o", "addr", "show"]).unwrap());
    }
    s
}

/// Every file under `dir`, sorted. `dir` must exist: a snapshot of a
/// directory that is not there (moved, renamed) would compare equal forever.
pub fn files_under(dir: &Path) -> Vec<String> {
    let rd = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("expected directory {}: {e}", dir.display()));
    let mut out = Vec::new();
    for e in rd {
        let path = e.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path.display().to_string());
        }
    }
    out.sort();
    out
}
