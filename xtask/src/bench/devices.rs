//! Two ways of running the agents side by side (issues 17 and 26):
//! `cargo xtask bench --devices`, veth against netkit pods, and `cargo
//! xtask bench --attach-modes`, TCX against legacy tc filters. One sluice
//! lab per variant (two nodes, native, two pods on the first node and one
//! on the second), both up at once, then rounds that measure the same four
//! rows on both labs, the order alternating (the first variant first in
//! even rounds, the second in odd ones), so drift in the machine falls on
//! both alike. Each row: TCP_RR, TCP_CRR and the sluice programs' cost per
//! transaction (BPF run-time stats, a pass of its own). Reported: the
//! per-round ratios second/first, their median and their spread
//! (min..max), never a target: the kernels that have netkit here run in a
//! TCG guest (`cargo xtask guest 6.12`), where the same path's ratio
//! scatters from 0.5 to 1.2 between rounds.
use std::{collections::BTreeMap, path::Path};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use sluice_tests::{
    bench,
    lab::{Lab, LabOptions},
};

use super::{
    args::Plan,
    labs::pod_ip,
    paths::{lab_pins, measure, path, PathFigures},
    report::{f, machine},
};

/// What is compared: the agent flag that picks it, its two values (in
/// the order of an even round; ratios are second/first), and how a lab
/// says which one its agents really took.
pub(super) struct Comparison {
    pub(super) what: &'static str,
    pub(super) flag: &'static str,
    pub(super) variants: [&'static str; 2],
    pub(super) chosen: fn(&Lab, usize) -> Result<String>,
}

/// veth against netkit pods.
pub(super) const DEVICES: Comparison =
    Comparison { what: "pod device", flag: "--device", variants: ["veth", "netkit"], chosen: pod_device };
/// TCX links against legacy tc filters.
pub(super) const ATTACH_MODES: Comparison =
    Comparison { what: "attach mode", flag: "--attach", variants: ["tcx", "tc"], chosen: attach_mode };

fn pod_device(lab: &Lab, node: usize) -> Result<String> {
    Ok(lab.pod_device(node)?.name().to_string())
}

fn attach_mode(lab: &Lab, node: usize) -> Result<String> {
    Ok(lab.status(node)?["agent"]["attachMode"].as_str().unwrap_or_default().to_string())
}
/// The rows measured on each device's lab.
pub(super) const ROWS: [&str; 2] = ["same-node", "cross-node"];

fn row_name(row: &str, device: &str) -> String {
    format!("S {row} {device}")
}

/// A two-node native lab whose agents run with `flag=value`, with three
/// pods; refused unless the agents really took it (a `netkit` the kernel
/// lacks stops them at start anyway).
fn variant_lab(bins: &Path, c: &Comparison, value: &str) -> Result<Lab> {
    let mut opts = LabOptions::new(2, 0, bins.to_path_buf());
    opts.extra_agent_args = vec!["--tunnel=never".into(), format!("{}={value}", c.flag)];
    let mut lab = Lab::up(&opts).with_context(|| format!("the {value} lab"))?;
    lab.add_pod(0, "n1p1")?;
    lab.add_pod(0, "n1p2")?;
    lab.add_pod(1, "n2p1")?;
    for i in 0..2 {
        let chosen = (c.chosen)(&lab, i)?;
        if chosen != value {
            bail!("node {i} of the {value} lab runs with {} {chosen}", c.what);
        }
    }
    Ok(lab)
}

/// Which variant goes first in round `round`.
pub(super) fn order(c: &Comparison, round: usize) -> [&'static str; 2] {
    let [a, b] = c.variants;
    if round.is_multiple_of(2) {
        [a, b]
    } else {
        [b, a]
    }
}

/// Both labs, then `plan.rounds` rounds over the four rows.
pub(super) fn run(bins: &Path, plan: &Plan, c: &Comparison) -> Result<Value> {
    let labs: BTreeMap<&str, Lab> =
        c.variants.iter().map(|v| variant_lab(bins, c, v).map(|l| (*v, l))).collect::<Result<_>>()?;
    let mut rounds: Vec<BTreeMap<String, PathFigures>> = Vec::new();
    for r in 0..plan.rounds {
        let mut figures = BTreeMap::new();
        for device in order(c, r) {
            let lab = &labs[device];
            let (n1, n2) = (&lab.state.nodes[0], &lab.state.nodes[1]);
            let (p1, p2, p3) = (&n1.pods[0], &n1.pods[1], &n2.pods[0]);
            for (row, server) in [(ROWS[0], p2), (ROWS[1], p3)] {
                let name = row_name(row, device);
                let mut p = path(&name, &p1.netns, &server.netns, bench::Target::direct(pod_ip(server)));
                p.throughput = false;
                p.programs = lab_pins(lab);
                eprintln!("bench: round {} {name}", r + 1);
                figures.insert(name.clone(), measure(&p, plan, bins).with_context(|| format!("measure {name}"))?);
            }
        }
        rounds.push(figures);
    }
    Ok(report(&rounds, plan, c))
}

/// The per-round ratio second/first variant of one metric of one row.
fn per_round_ratios(rounds: &[BTreeMap<String, PathFigures>], c: &Comparison, row: &str, metric: &str) -> Vec<f64> {
    let of = |r: &BTreeMap<String, PathFigures>, device: &str| -> f64 {
        let Some(p) = r.get(&row_name(row, device)) else { return f64::NAN };
        match metric {
            "rr" => p.rr.per_sec,
            "crr" => p.crr.per_sec,
            // eBPF nanoseconds per transaction (lower is better).
            "ebpf_ns_rr" => p.programs.as_ref().map_or(f64::NAN, |v| f(&v["rr"]["ns_per_txn_total"])),
            "ebpf_ns_crr" => p.programs.as_ref().map_or(f64::NAN, |v| f(&v["crr"]["ns_per_txn_total"])),
            _ => f64::NAN,
        }
    };
    rounds.iter().map(|r| of(r, c.variants[1]) / of(r, c.variants[0])).collect()
}

/// Median and spread of a list of ratios (non-finite ones left out).
pub(super) fn spread(values: &[f64]) -> Value {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return Value::Null;
    }
    v.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    let median = if v.len() % 2 == 1 { v[v.len() / 2] } else { (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0 };
    json!({"median": median, "min": v[0], "max": v[v.len() - 1], "rounds": values})
}

pub(super) const METRICS: [(&str, &str); 4] = [
    ("rr", "TCP_RR/s"),
    ("crr", "TCP_CRR/s"),
    ("ebpf_ns_rr", "eBPF ns per TCP_RR"),
    ("ebpf_ns_crr", "eBPF ns per TCP_CRR"),
];

fn report(rounds: &[BTreeMap<String, PathFigures>], plan: &Plan, c: &Comparison) -> Value {
    let mut ratios = serde_json::Map::new();
    for row in ROWS {
        let mut m = serde_json::Map::new();
        for (metric, _) in METRICS {
            m.insert(metric.into(), spread(&per_round_ratios(rounds, c, row, metric)));
        }
        ratios.insert(row.into(), Value::Object(m));
    }
    let per_round: Vec<Value> = rounds
        .iter()
        .map(|r| {
            r.iter()
                .map(|(n, p)| {
                    let ns = |mode: &str| p.programs.as_ref().map(|v| v[mode]["ns_per_txn_total"].clone());
                    (n.clone(), json!({"rr": p.rr.per_sec, "crr": p.crr.per_sec, "ebpf_ns_rr": ns("rr"), "ebpf_ns_crr": ns("crr")}))
                })
                .collect::<serde_json::Map<_, _>>()
                .into()
        })
        .collect();
    json!({
        "machine": machine(),
        "plan": {"rounds": plan.rounds, "rr_secs": plan.rr.as_secs_f64(), "release": plan.release},
        "compared": {"what": c.what, "first": c.variants[0], "second": c.variants[1]},
        "per_round": per_round,
        "ratios": ratios,
    })
}

pub(super) fn render(r: &Value) -> String {
    let (first, second) =
        (r["compared"]["first"].as_str().unwrap_or("?"), r["compared"]["second"].as_str().unwrap_or("?"));
    let mut o = format!(
        "{first} vs {second} ({}), kernel {}, {} rounds, order alternating (indicative: no targets)\n",
        r["compared"]["what"].as_str().unwrap_or("?"),
        r["machine"]["kernel"].as_str().unwrap_or("?"),
        r["plan"]["rounds"]
    );
    o += &format!(
        "  {:<11} {:<22} {:>7} {:>15}   per round\n",
        "row",
        format!("{second}/{first}"),
        "median",
        "min..max"
    );
    for row in ROWS {
        for (metric, title) in METRICS {
            let s = &r["ratios"][row][metric];
            if s.is_null() {
                continue;
            }
            let rounds: Vec<String> = s["rounds"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|v| v.as_f64().map_or("-".into(), |x| format!("{x:.2}")))
                .collect();
            o += &format!(
                "  {:<11} {:<22} {:>7.2} {:>7.2}..{:<7.2} {}\n",
                row,
                title,
                f(&s["median"]),
                f(&s["min"]),
                f(&s["max"]),
                rounds.join(" ")
            );
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_alternate_which_variant_goes_first() {
        assert_eq!(order(&DEVICES, 0), ["veth", "netkit"]);
        assert_eq!(order(&DEVICES, 1), ["netkit", "veth"]);
        assert_eq!(order(&DEVICES, 2), order(&DEVICES, 0));
        assert_eq!(order(&ATTACH_MODES, 0), ["tcx", "tc"]);
        assert_eq!(order(&ATTACH_MODES, 1), ["tc", "tcx"]);
    }

    #[test]
    fn spread_is_median_and_range_of_the_finite_ratios() {
        let s = spread(&[1.2, 0.8, f64::NAN, 1.0]);
        assert_eq!(s["median"], 1.0);
        assert_eq!(s["min"], 0.8);
        assert_eq!(s["max"], 1.2);
        assert_eq!(spread(&[0.9, 1.1])["median"], 1.0);
        assert!(spread(&[f64::NAN]).is_null());
    }
}
