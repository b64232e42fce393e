//! IPv6 beside IPv4 in `cargo xtask bench --ipv6` (issue 28).
//!
//! One dual-stack lab per round (two nodes, two pods each, agents with
//! `--ip-family dual`), and the same pairs of endpoints measured over both
//! families:
//! - "A node-node" / "A6 node-node": node n1 to node n2 on the LAN, no pod
//!   network on the path (the baseline of each family);
//! - "S cross-node" / "S6 cross-node": pod n1p1 to pod n2p1;
//! - "S same-node" / "S6 same-node": pod n1p1 to pod n1p2.
//!
//! The six paths take turns slice by slice (`paths::measure_interleaved`),
//! so the machine's drift falls on both families alike; the S rows also get
//! the sluice programs' cost per transaction. Both families' pod traffic
//! takes the eBPF fast path (`bpf_redirect_peer`/`bpf_redirect_neigh`;
//! IPv6 through `from_pod6`/`from_uplink6` since issue 28's fast path), so
//! the S6/S ratios measure what IPv6 costs beside IPv4 on it.
use std::{collections::BTreeMap, net::Ipv4Addr, path::Path};

use anyhow::{Context, Result};
use serde_json::Value;
use sluice_tests::{
    bench::Target,
    lab::{Lab, LabOptions},
};

use super::{
    args::Plan,
    paths::{self, PathFigures},
    report,
};

/// (label, numerator, denominator) of the IPv6 run.
pub(super) const IPV6_PAIRS: [(&str, &str, &str); 5] = [
    ("S6/S cross", "S6 cross-node", "S cross-node"),
    ("S6/S same", "S6 same-node", "S same-node"),
    ("A6/A node", "A6 node-node", "A node-node"),
    ("S6/A6 cross", "S6 cross-node", "A6 node-node"),
    ("S/A cross", "S cross-node", "A node-node"),
];

/// Slices per path and metric (each path in every position once a round).
const SLICES: usize = 6;

fn ip6(addr: &Option<String>, what: &str) -> Result<std::net::Ipv6Addr> {
    addr.as_deref().with_context(|| format!("{what} has no IPv6 address"))?.parse().context("IPv6 address")
}

/// One round: a fresh dual-stack lab, the six paths in turns.
pub(super) fn round(round: usize, bins: &Path, plan: &Plan) -> Result<BTreeMap<String, PathFigures>> {
    let mut opts = LabOptions::new(2, 2, bins.to_path_buf());
    opts.dual_stack = true;
    let lab = Lab::up(&opts).context("dual-stack lab")?;
    let (n1, n2) = (&lab.state.nodes[0], &lab.state.nodes[1]);
    let (a, b, c) = (&n1.pods[0], &n1.pods[1], &n2.pods[0]);
    let v4 = |s: &str| -> Result<Ipv4Addr> { s.parse().with_context(|| format!("IPv4 address {s}")) };
    let pins = paths::lab_pins(&lab);
    let mut rows = vec![
        paths::path("A node-node", &n1.netns, &n2.netns, Target::direct(v4(&n2.ip)?)),
        paths::path("A6 node-node", &n1.netns, &n2.netns, Target::direct(ip6(&n2.ip6, &n2.name)?)),
        paths::path("S cross-node", &a.netns, &c.netns, Target::direct(v4(&c.ip)?)),
        paths::path("S6 cross-node", &a.netns, &c.netns, Target::direct(ip6(&c.ip6, &c.name)?)),
        paths::path("S same-node", &a.netns, &b.netns, Target::direct(v4(&b.ip)?)),
        paths::path("S6 same-node", &a.netns, &b.netns, Target::direct(ip6(&b.ip6, &b.name)?)),
    ];
    for (i, p) in rows.iter_mut().enumerate() {
        p.throughput = false;
        if i >= 2 {
            p.programs = pins.clone();
        }
    }
    eprintln!("bench: round {} six paths in turns, {SLICES} slices each", round + 1);
    paths::measure_interleaved(&rows, plan, SLICES, round)
}

/// Issue 28's targets (IPv6 ≥ 0.95 × IPv4 on every pod path): printed,
/// never asserted.
pub(super) fn targets(r: &Value) -> Value {
    let ratios = &r["ratios"];
    let mut out = Vec::new();
    for (what, label) in [("cross-node", "S6/S cross"), ("same-node", "S6/S same")] {
        for (metric, name) in [("rr", "TCP_RR"), ("crr", "TCP_CRR")] {
            let note = format!("node-node A6/A {:.2}", report::f(&ratios["A6/A node"][metric]));
            out.push(report::target(format!("{what} {name} IPv6/IPv4"), &ratios[label][metric], true, 0.95, "", note));
        }
    }
    Value::Array(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_ratio_compares_paths_the_round_measures() {
        let measured = ["A node-node", "A6 node-node", "S cross-node", "S6 cross-node", "S same-node", "S6 same-node"];
        for (label, num, den) in IPV6_PAIRS {
            assert!(measured.contains(&num) && measured.contains(&den), "{label}");
        }
        let r = serde_json::json!({"ratios": {"S6/S cross": {"rr": 0.9, "crr": 1.0}, "S6/S same": {"rr": 0.96, "crr": 0.5}}});
        let met: Vec<Option<bool>> = targets(&r).as_array().unwrap().iter().map(|t| t["met"].as_bool()).collect();
        assert_eq!(met, [Some(false), Some(true), Some(true), Some(false)]);
    }
}
