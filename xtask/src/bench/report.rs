//! The report: medians over rounds and of per-round ratios, the targets'
//! verdicts (printed, never asserted), the machine, and the text table.
use std::{
    collections::{BTreeMap, BTreeSet},
    process::Command,
};

use serde_json::{json, Value};
use sluice_tests::bench::median;

use super::{args::Plan, cni::render_cni, paths::PathFigures, services};
use crate::shell;

pub(super) fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

/// A figure for the table; "-" where it was not measured (null).
fn cell(v: &Value, width: usize, decimals: usize) -> String {
    match v.as_f64() {
        Some(x) => format!("{x:>width$.decimals$}"),
        None => format!("{:>width$}", "-"),
    }
}

/// The median over rounds, or null when no round measured it.
fn median_or_null(values: Vec<f64>) -> Value {
    if values.iter().all(|v| !v.is_finite()) {
        Value::Null
    } else {
        json!(median(values))
    }
}

/// The ratios of a full run: (label, numerator, denominator); the Service
/// rows' come from `svc_ratio_pairs`.
pub(super) const PAIRS: [(&str, &str, &str); 15] = [
    ("S/A-bare cross", "S cross-node", "A-bare node-node"),
    ("A/A-bare", "A node-node", "A-bare node-node"),
    ("B/A-bare cross", "B cross-node", "A-bare node-node"),
    ("S/A cross", "S cross-node", "A node-node"),
    ("B/A cross", "B cross-node", "A node-node"),
    ("S/B cross", "S cross-node", "B cross-node"),
    ("S/L same", "S same-node", "L veth pair"),
    ("S/B same", "S same-node", "B same-node"),
    ("S svc/S cross", "S cross-node svc", "S cross-node"),
    ("S traced/S cross", "S cross traced", "S cross-node"),
    ("S svc/A cross", "S cross-node svc", "A node-node"),
    ("S-vxlan/K vxlan", "S-vxlan cross-node", "K vxlan cross-node"),
    ("S-vxlan/A cross", "S-vxlan cross-node", "A node-node"),
    ("K vxlan/A cross", "K vxlan cross-node", "A node-node"),
    ("S-vxlan/S cross", "S-vxlan cross-node", "S cross-node"),
];

pub(super) fn pairs(pairs: &[(&str, &str, &str)]) -> Vec<(String, String, String)> {
    pairs.iter().map(|(l, n, d)| (l.to_string(), n.to_string(), d.to_string())).collect()
}

/// The paths and ratios of the VXLAN comparison (`--vxlan`).
pub(super) const VXLAN_PATHS: [&str; 4] = ["A node-node", "S cross-node", "S-vxlan cross-node", "K vxlan cross-node"];
pub(super) const VXLAN_PAIRS: [(&str, &str, &str); 5] = [
    ("S/A cross", "S cross-node", "A node-node"),
    ("S-vxlan/K vxlan", "S-vxlan cross-node", "K vxlan cross-node"),
    ("S-vxlan/A cross", "S-vxlan cross-node", "A node-node"),
    ("K vxlan/A cross", "K vxlan cross-node", "A node-node"),
    ("S-vxlan/S cross", "S-vxlan cross-node", "S cross-node"),
];

/// The paths and ratios of the native cross-node comparison (`--cross`):
/// S against the lab's own nodes (A, which carry kube-proxy's rules and
/// sluice's nft table) and against bare nodes (A-bare, no netfilter: the
/// limit the targets mean).
pub(super) const CROSS_PATHS: [&str; 4] = ["A node-node", "A-bare node-node", "S cross-node", "B cross-node"];
pub(super) const CROSS_PAIRS: [(&str, &str, &str); 5] = [
    ("S/A-bare cross", "S cross-node", "A-bare node-node"),
    ("S/A cross", "S cross-node", "A node-node"),
    ("A/A-bare", "A node-node", "A-bare node-node"),
    ("B/A-bare cross", "B cross-node", "A-bare node-node"),
    ("S/B cross", "S cross-node", "B cross-node"),
];

fn path_metric(r: &BTreeMap<String, PathFigures>, n: &str, m: &str) -> f64 {
    let Some(p) = r.get(n) else { return f64::NAN };
    match m {
        "rr" => p.rr.per_sec,
        "rr_p50" => p.rr.p50_us,
        "rr_p99" => p.rr.p99_us,
        "crr" => p.crr.per_sec,
        "gbit" => p.tput.as_ref().map_or(f64::NAN, |t| t.gbit_per_s),
        "cpu" => p.tput.as_ref().map_or(f64::NAN, |t| t.cpu_pct_per_gbit),
        _ => f64::NAN,
    }
}

/// Each path's medians over rounds.
pub(super) fn path_medians(rounds: &[BTreeMap<String, PathFigures>]) -> Value {
    let mut paths = serde_json::Map::new();
    for n in rounds[0].keys() {
        let mut m = serde_json::Map::new();
        for k in ["rr", "rr_p50", "rr_p99", "crr", "gbit", "cpu"] {
            m.insert(k.into(), median_or_null(rounds.iter().map(|r| path_metric(r, n, k)).collect()));
        }
        paths.insert(n.to_string(), Value::Object(m));
    }
    Value::Object(paths)
}

/// Every round's RR and CRR per path, in the order measured: the spread
/// behind the medians (a median of 4 rounds hides whether one round or
/// all of them read low).
pub(super) fn per_round(rounds: &[BTreeMap<String, PathFigures>]) -> Value {
    let rows = rounds.iter().map(|r| {
        let paths =
            r.keys().map(|n| (n.clone(), json!({"rr": path_metric(r, n, "rr"), "crr": path_metric(r, n, "crr")})));
        Value::Object(paths.collect())
    });
    Value::Array(rows.collect())
}

/// Medians of per-round ratios, per (label, numerator, denominator).
pub(super) fn ratios_of(rounds: &[BTreeMap<String, PathFigures>], pairs: &[(String, String, String)]) -> Value {
    let mut ratios = serde_json::Map::new();
    for (label, num, den) in pairs {
        let mut m = serde_json::Map::new();
        for k in ["rr", "crr", "gbit", "cpu"] {
            let per_round = rounds.iter().map(|r| path_metric(r, num, k) / path_metric(r, den, k)).collect();
            m.insert(k.into(), median_or_null(per_round));
        }
        ratios.insert(label.clone(), Value::Object(m));
    }
    Value::Object(ratios)
}

pub(super) fn render_vxlan(r: &Value) -> String {
    let mut o = render_table(r);
    o += "\ntargets (issue 15):\n";
    o += &render_targets(&r["vxlan_targets"]);
    o
}

pub(super) fn machine() -> Value {
    let kernel = shell::output(Command::new("uname").arg("-r")).unwrap_or_default().trim().to_string();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    json!({"kernel": kernel, "cpu": cpu, "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)})
}

/// The paths' figures and the ratios between them.
fn render_table(r: &Value) -> String {
    let mut o = String::new();
    o += &format!(
        "{:<NAME$} {:>10} {:>9} {:>9} {:>10} {:>8} {:>12}\n",
        "path", "TCP_RR/s", "p50 us", "p99 us", "TCP_CRR/s", "Gbit/s", "CPU%/Gbit"
    );
    if let Some(paths) = r["paths"].as_object() {
        for (name, m) in paths {
            o += &format!(
                "{:<NAME$} {} {} {} {} {} {}\n",
                name,
                cell(&m["rr"], 10, 0),
                cell(&m["rr_p50"], 9, 1),
                cell(&m["rr_p99"], 9, 1),
                cell(&m["crr"], 10, 0),
                cell(&m["gbit"], 8, 2),
                cell(&m["cpu"], 12, 1)
            );
        }
    }
    o += &format!("{:<NAME$} {:>10} {:>10} {:>8} {:>12}\n", "ratio", "TCP_RR", "TCP_CRR", "Gbit/s", "CPU/Gbit");
    if let Some(ratios) = r["ratios"].as_object() {
        for (name, m) in ratios {
            o += &format!(
                "{:<NAME$} {} {} {} {}\n",
                name,
                cell(&m["rr"], 10, 2),
                cell(&m["crr"], 10, 2),
                cell(&m["gbit"], 8, 2),
                cell(&m["cpu"], 12, 2)
            );
        }
    }
    o
}

pub(super) fn render(r: &Value) -> String {
    let mut o = String::new();
    o += &format!(
        "machine: {} CPUs, {}, kernel {}\n",
        r["machine"]["cpus"],
        r["machine"]["cpu"].as_str().unwrap_or(""),
        r["machine"]["kernel"].as_str().unwrap_or("")
    );
    o += &render_table(r);
    o += "targets (node to node; reported, not asserted):\n";
    o += &render_targets(&r["node_targets"]);
    o += &render_program_costs(r);
    o += "targets (issue 15, the tunnel; reported, not asserted):\n";
    o += &render_targets(&r["vxlan_targets"]);
    o += &render_cni(&r["cni"]);
    let c = &r["control_plane"];
    o += &format!(
        "control plane ({} peers): reconcile from scratch {:.1} ms (no-op {:.1} ms); agent RSS idle {:.1} MiB, with peers {:.1} MiB; peers file to map {:.0} ms; Node change to map p50 {:.2} ms p99 {:.2} ms\n",
        c["peers"], f(&c["reconcile_from_scratch_ms"]), f(&c["reconcile_noop_ms"]), f(&c["agent_rss_idle_mib"]), f(&c["agent_rss_with_peers_mib"]),
        f(&c["peers_file_to_map_ms"]), f(&c["node_change_to_map_p50_ms"]), f(&c["node_change_to_map_p99_ms"])
    );
    o += &render_services(&r["services"]);
    o += &render_policy(r);
    if let Some(secs) = r["wall_clock_secs"].as_f64() {
        o += &format!("bench took {:.0} s\n", secs);
    }
    o
}

/// Width of the path and ratio names in the table.
const NAME: usize = 25;

/// The ratios of the Service paths: each way against pod → pod at the
/// same scale, each way's largest scale against its smallest (and every
/// scale between), and the cgroup client's pod → pod against the thread
/// client's (`S cross-node`: another lab, another client).
pub(super) fn svc_ratio_pairs(scales: &[usize]) -> Vec<(String, String, String)> {
    use services::{direct_name, iptables_name, sock_lb_name};
    let mut v = Vec::new();
    for &n in scales {
        v.push((format!("S sockLB/direct {n}"), sock_lb_name(n), direct_name(n)));
        v.push((format!("S svc/direct {n}"), iptables_name(n), direct_name(n)));
    }
    let lo = scales[0];
    for &n in &scales[1..] {
        v.push((format!("S sockLB {n}/{lo}"), sock_lb_name(n), sock_lb_name(lo)));
        v.push((format!("S svc {n}/{lo}"), iptables_name(n), iptables_name(lo)));
        v.push((format!("S direct {n}/{lo}"), direct_name(n), direct_name(lo)));
    }
    v.push((format!("S direct {lo}/S cross"), direct_name(lo), "S cross-node".into()));
    v
}

/// One target's verdict for the report: `value` against `limit` (at
/// least, or at most); `met` is null when the value was not measured.
pub(super) fn target(what: String, value: &Value, at_least: bool, limit: f64, unit: &str, note: String) -> Value {
    let met = value.as_f64().map(|v| if at_least { v >= limit } else { v <= limit });
    json!({"target": what, "value": value, "at_least": at_least, "limit": limit, "unit": unit, "met": met, "note": note})
}

/// Issue 15's targets for the tunnel against this run's figures: printed,
/// never asserted.
pub(super) fn vxlan_targets(r: &Value) -> Value {
    let ratios = &r["ratios"];
    let (vs_kernel, vs_a) = (&ratios["S-vxlan/K vxlan"], &ratios["S-vxlan/A cross"]);
    vec![
        target(
            "cross-node TCP_RR S-vxlan/K vxlan".into(),
            &vs_kernel["rr"],
            true,
            1.2,
            "",
            format!(
                "TCP_CRR {:.2}; K vxlan/A: TCP_RR {:.2}",
                f(&vs_kernel["crr"]),
                f(&ratios["K vxlan/A cross"]["rr"])
            ),
        ),
        target(
            "cross-node TCP_RR S-vxlan/A".into(),
            &vs_a["rr"],
            true,
            0.75,
            "",
            format!("TCP_CRR {:.2}; native S/A: TCP_RR {:.2}", f(&vs_a["crr"]), f(&ratios["S/A cross"]["rr"])),
        ),
        target(
            "CPU per Gbit/s S-vxlan/K vxlan".into(),
            &vs_kernel["cpu"],
            false,
            1.0,
            "",
            format!("throughput S-vxlan/K vxlan {:.2}, S-vxlan/A {:.2}", f(&vs_kernel["gbit"]), f(&vs_a["gbit"])),
        ),
    ]
    .into()
}

/// Issue 14's targets against this run's figures: printed, never asserted.
pub(super) fn svc_targets(r: &Value, plan: &Plan) -> Value {
    let (lo, hi) = (plan.scales[0], plan.scales[plan.scales.len() - 1]);
    let ratios = &r["ratios"];
    let cp = &r["services"]["control_plane"];
    vec![
        target(
            format!("ClusterIP TCP_RR sockLB/pod-pod, {lo} Services"),
            &ratios[format!("S sockLB/direct {lo}")]["rr"],
            true,
            0.98,
            "",
            format!(
                "with {hi}: {:.2}; TCP_CRR {:.2} (kube-proxy iptables: TCP_RR {:.2}, TCP_CRR {:.2})",
                f(&ratios[format!("S sockLB/direct {hi}")]["rr"]),
                f(&ratios[format!("S sockLB/direct {lo}")]["crr"]),
                f(&ratios[format!("S svc/direct {lo}")]["rr"]),
                f(&ratios[format!("S svc/direct {lo}")]["crr"]),
            ),
        ),
        target(
            format!("TCP_CRR sockLB {hi}/{lo} Services"),
            &ratios[format!("S sockLB {hi}/{lo}")]["crr"],
            true,
            0.95,
            "",
            format!(
                "kube-proxy iptables {hi}/{lo}: {:.2}; each against pod-pod measured beside it: sockLB {:.2}, iptables {:.2}",
                f(&ratios[format!("S svc {hi}/{lo}")]["crr"]),
                f(&drift_free(r, services::sock_lb_name, hi, lo)),
                f(&drift_free(r, services::iptables_name, hi, lo)),
            ),
        ),
        target(
            format!("agent RSS, {} Services + {} endpoints", cp["services"], cp["endpoints"]),
            &cp["agent_rss_mib"],
            false,
            60.0,
            " MiB",
            format!("peak {:.1} MiB, idle {:.1} MiB", f(&cp["agent_rss_peak_mib"]), f(&cp["agent_rss_idle_mib"])),
        ),
        target(
            format!("Service change to map p99, {} Services", cp["services"]),
            &cp["change_to_map_p99_ms"],
            false,
            10.0,
            " ms",
            format!("p50 {:.2} ms, max {:.2} ms", f(&cp["change_to_map_p50_ms"]), f(&cp["change_to_map_max_ms"])),
        ),
    ]
    .into()
}

/// TCP_CRR of `way` at `hi` Services over `lo`, each first divided by pod
/// → pod measured beside it in the same round (which cancels the
/// machine's drift between the two scales); median over rounds.
fn drift_free(r: &Value, way: fn(usize) -> String, hi: usize, lo: usize) -> Value {
    let crr = |round: &Value, name: String| round[name]["crr"].as_f64().unwrap_or(f64::NAN);
    let per_round: Vec<f64> = r["per_round"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|round| {
            let at = |n: usize| crr(round, way(n)) / crr(round, services::direct_name(n));
            at(hi) / at(lo)
        })
        .collect();
    median_or_null(per_round)
}

fn render_services(s: &Value) -> String {
    let mut o = format!(
        "Services ({} endpoints each; clients are processes in node 1's cgroup):\n{:>10} {:>15} {:>26} {:>21} {:>18} {:>22}\n",
        s["endpoints_per_service"],
        "Services",
        "maps synced ms",
        "kube-proxy sync ms legacy",
        "iptables-nft sync ms",
        "legacy cleanup ms",
        "pod-pod pkts to stack"
    );
    if let Some(times) = s["times"].as_object() {
        let mut scales: Vec<(&String, &Value)> = times.iter().collect();
        scales.sort_by_key(|(k, _)| k.parse::<usize>().unwrap_or(0));
        for (scale, t) in scales {
            o += &format!(
                "{:>10} {:>15.0} {:>26.0} {} {:>18.0} {:>22}\n",
                scale,
                f(&t["maps_synced_ms"]),
                f(&t["iptables_sync_ms"]),
                cell(&t["iptables_nft_sync_ms"], 21, 0),
                f(&t["iptables_cleanup_ms"]),
                t["fast_path_packets_to_stack"]
            );
        }
    }
    let c = &s["control_plane"];
    let h = &c["agent_histogram"];
    o += &format!(
        "Services control plane ({} Services, {} endpoints): agent RSS idle {:.1} MiB, with them {:.1} MiB (peak {:.1}); \
         published to maps in {:.0} ms; change to map ({} changes) p50 {:.2} ms p99 {:.2} ms max {:.2} ms \
         (from the upsert call: p50 {:.2} p99 {:.2}); agent's sluice_service_update_seconds over them: {} observations, \
         p50 <= {} ms, p99 <= {} ms\n",
        c["services"], c["endpoints"], f(&c["agent_rss_idle_mib"]), f(&c["agent_rss_mib"]), f(&c["agent_rss_peak_mib"]),
        f(&c["publish_to_maps_ms"]), c["changes"], f(&c["change_to_map_p50_ms"]), f(&c["change_to_map_p99_ms"]),
        f(&c["change_to_map_max_ms"]), f(&c["upsert_to_map_p50_ms"]), f(&c["upsert_to_map_p99_ms"]), h["count"],
        h["p50_le_ms"], h["p99_le_ms"]
    );
    o += "targets (issue 14; reported, not asserted):\n";
    o += &render_targets(&s["targets"]);
    o
}

/// Medians over rounds of each row's program costs (`PathFigures::programs`):
/// per row, per pass (rr, crr), the total per transaction, the rate with
/// stats on, and per program its runs, ns per run and ns per transaction.
pub(super) fn program_costs(rounds: &[BTreeMap<String, PathFigures>]) -> Value {
    let finite_median = |v: Vec<f64>| median_or_null(v.into_iter().filter(|x| x.is_finite()).collect());
    let mut rows = serde_json::Map::new();
    for name in rounds.iter().flat_map(|r| r.keys()).collect::<BTreeSet<_>>() {
        let passes: Vec<&Value> = rounds.iter().filter_map(|r| r.get(name)?.programs.as_ref()).collect();
        if passes.is_empty() {
            continue;
        }
        let mut row = serde_json::Map::new();
        for mode in ["rr", "crr"] {
            let of = |k: &str| finite_median(passes.iter().map(|p| f(&p[mode][k])).collect());
            let labels: BTreeSet<&String> = passes
                .iter()
                .flat_map(|p| p[mode]["programs"].as_object().into_iter().flat_map(|m| m.keys()))
                .collect();
            let mut programs = serde_json::Map::new();
            for label in labels {
                let mut m = serde_json::Map::new();
                for k in ["runs_per_txn", "ns_per_run", "ns_per_txn"] {
                    m.insert(
                        k.into(),
                        finite_median(passes.iter().map(|p| f(&p[mode]["programs"][label][k])).collect()),
                    );
                }
                programs.insert(label.clone(), Value::Object(m));
            }
            row.insert(
                mode.into(),
                json!({"ns_per_txn_total": of("ns_per_txn_total"), "per_sec_with_stats": of("per_sec_with_stats"), "programs": programs}),
            );
        }
        rows.insert(name.clone(), Value::Object(row));
    }
    Value::Object(rows)
}

/// The program costs as text, with each row's TCP_RR p50 beside bare
/// node-to-node's when both were measured (the gap the programs are
/// part of).
fn render_program_costs(r: &Value) -> String {
    let Some(rows) = r["programs"].as_object().filter(|m| !m.is_empty()) else {
        return String::new();
    };
    let mut o = String::from(
        "sluice programs per transaction (a separate pass with BPF run-time stats on; medians over rounds):\n",
    );
    let bare_p50 = r["paths"]["A-bare node-node"]["rr_p50"].as_f64();
    for (row, passes) in rows {
        for (mode, title) in [("rr", "TCP_RR"), ("crr", "TCP_CRR")] {
            let p = &passes[mode];
            o += &format!(
                "  {row} {title} ({:.0}/s with stats on): {:.0} ns of eBPF per transaction",
                f(&p["per_sec_with_stats"]),
                f(&p["ns_per_txn_total"])
            );
            if let (Some(bare), Some(own), "rr") = (bare_p50, r["paths"][row]["rr_p50"].as_f64(), mode) {
                o += &format!("; TCP_RR p50 {own:.1} us vs A-bare {bare:.1} us ({:+.1} us)", own - bare);
            }
            o += &format!("\n    {:<28} {:>9} {:>8} {:>8}\n", "program", "runs/txn", "ns/run", "ns/txn");
            for (label, m) in p["programs"].as_object().into_iter().flatten() {
                o += &format!(
                    "    {:<28} {} {} {}\n",
                    label,
                    cell(&m["runs_per_txn"], 9, 2),
                    cell(&m["ns_per_run"], 8, 0),
                    cell(&m["ns_per_txn"], 8, 0)
                );
            }
        }
    }
    o
}

/// The node-to-node targets against this run's figures, against bare
/// nodes (the limit) with the lab's own nodes in the note: printed, never
/// asserted.
pub(super) fn node_targets(r: &Value) -> Value {
    let ratios = &r["ratios"];
    let (bare, lab) = (&ratios["S/A-bare cross"], &ratios["S/A cross"]);
    let mut v = Vec::new();
    for (k, what) in [("rr", "TCP_RR"), ("crr", "TCP_CRR"), ("gbit", "throughput")] {
        v.push(target(
            format!("cross-node {what} S/A-bare"),
            &bare[k],
            true,
            0.95,
            "",
            format!("S/A (lab nodes, with netfilter) {:.2}", f(&lab[k])),
        ));
    }
    v.into()
}

/// The `--cross` report: the rows, the ratios, the node targets and the
/// program costs.
pub(super) fn render_cross(r: &Value) -> String {
    let mut o = render_table(r);
    o += "\ntargets (node to node; reported, not asserted):\n";
    o += &render_targets(&r["node_targets"]);
    o += &render_program_costs(r);
    o
}

/// Issue 25's targets against this run's figures: printed, never asserted.
pub(super) fn policy_targets(r: &Value, plan: &Plan) -> Value {
    let n = plan.policies;
    let ratios = &r["ratios"];
    let (allow, scale) = (&ratios["P allow/none"], &ratios[format!("P {n}/1 policies")]);
    let cp = &r["policy"]["control_plane"];
    let scale_note = format!("{} pods, {} namespaces", cp["pods"], cp["namespaces"]);
    vec![
        target("cross-node TCP_RR allow policy/none".into(), &allow["rr"], true, 0.97, "", String::new()),
        target("cross-node TCP_CRR allow policy/none".into(), &allow["crr"], true, 0.95, "", String::new()),
        target(format!("cross-node TCP_RR {n}/1 policies"), &scale["rr"], true, 0.95, "", scale_note.clone()),
        target(format!("cross-node TCP_CRR {n}/1 policies"), &scale["crr"], true, 0.95, "", scale_note.clone()),
        target(
            format!("agent RSS, {n} policies"),
            &cp["agent_rss_mib"],
            false,
            128.0,
            " MiB",
            format!("peak {:.1} MiB; {scale_note}", f(&cp["agent_rss_peak_mib"])),
        ),
        target(
            "policy or label change to maps p99".into(),
            &cp["change_p99_ms"],
            false,
            100.0,
            " ms",
            format!(
                "policy p99 {:.1} ms, label p99 {:.1} ms, max {:.1} ms",
                f(&cp["policy_change_p99_ms"]),
                f(&cp["label_change_p99_ms"]),
                f(&cp["change_max_ms"])
            ),
        ),
    ]
    .into()
}

fn render_policy(r: &Value) -> String {
    let c = &r["policy"]["control_plane"];
    let h = &c["agent_histogram"];
    let mut o = format!(
        "NetworkPolicy control plane ({} policies, {} pods, {} namespaces; the server's node): published to maps \
         in {:.0} ms; agent RSS {:.1} MiB (peak {:.1}); {} policy changes to map p50 {:.2} ms p99 {:.2} ms; \
         {} label changes p50 {:.2} ms p99 {:.2} ms; agent's sluice_policy_update_seconds over them: {} \
         observations, p50 <= {} ms, p99 <= {} ms\n",
        c["policies"],
        c["pods"],
        c["namespaces"],
        f(&c["publish_to_maps_ms"]),
        f(&c["agent_rss_mib"]),
        f(&c["agent_rss_peak_mib"]),
        c["changes_each"],
        f(&c["policy_change_p50_ms"]),
        f(&c["policy_change_p99_ms"]),
        c["changes_each"],
        f(&c["label_change_p50_ms"]),
        f(&c["label_change_p99_ms"]),
        h["count"],
        h["p50_le_ms"],
        h["p99_le_ms"]
    );
    o += "targets (issue 25, NetworkPolicy; reported, not asserted):\n";
    o += &render_targets(&r["policy"]["targets"]);
    o
}

/// The `--ipv6` report: the table, the programs, issue 28's targets.
pub(super) fn render_ipv6_run(r: &Value) -> String {
    let mut o = render_table(r);
    o += &render_program_costs(r);
    o += "\ntargets (issue 28, IPv6 beside IPv4; reported, not asserted):\n";
    o += &render_targets(&r["ipv6_targets"]);
    o
}

/// The `--policy` report: the rows, their ratios, program costs, targets.
/// The `--nodeport` run: the rows and ratios, the per-scale times, the
/// targets, and the connection tables.
pub(super) fn render_nodeport(r: &Value) -> String {
    let mut o = format!(
        "machine: {} CPUs, {}, kernel {}\n",
        r["machine"]["cpus"],
        r["machine"]["cpu"].as_str().unwrap_or(""),
        r["machine"]["kernel"].as_str().unwrap_or("")
    );
    o += "NodePort rows: the world -> node 1:nodePort -> the pod on node 2 (NP world-node: the world -> node 2, untranslated; NP sluice DSR: answered by node 2 directly)\n";
    o += &render_table(r);
    o += &format!(
        "drift-free (each over world-node beside it) {}: SNAT TCP_RR {:.2} TCP_CRR {:.2}; kube-proxy TCP_RR {:.2} TCP_CRR {:.2}\n",
        "largest/smallest scale",
        f(&r["drift_free"]["snat_rr"]),
        f(&r["drift_free"]["snat_crr"]),
        f(&r["drift_free"]["kube_proxy_rr"]),
        f(&r["drift_free"]["kube_proxy_crr"]),
    );
    if let Some(times) = r["times"].as_object() {
        let mut scales: Vec<(&String, &Value)> = times.iter().collect();
        scales.sort_by_key(|(k, _)| k.parse::<usize>().unwrap_or(0));
        for (scale, t) in scales {
            o += &format!(
                "{scale:>6} Services: maps synced {:.0} ms, kube-proxy rules restored (legacy) {:.0} ms; SNAT rows' NAT4 counters {}\n",
                f(&t["maps_synced_ms"]),
                f(&t["iptables_restore_ms"]),
                t["snat_row_nat4_stats"]
            );
            for e in t["snat_row_errors"].as_array().into_iter().flatten() {
                o += &format!("{scale:>6} Services: sluice SNAT row FAILED: {}\n", e.as_str().unwrap_or_default());
            }
        }
    }
    o += &render_program_costs(r);
    o += "targets (issue 27; reported, not asserted):\n";
    o += &render_targets(&r["targets"]);
    o += &super::conntrack_table::render(&r["connection_tables"]);
    if let Some(secs) = r["wall_clock_secs"].as_f64() {
        o += &format!("bench took {:.0} s\n", secs);
    }
    o
}

pub(super) fn render_policy_run(r: &Value) -> String {
    let mut o = render_table(r);
    o += &render_program_costs(r);
    o += &render_policy(r);
    o
}

fn render_targets(targets: &Value) -> String {
    let mut o = String::new();
    for t in targets.as_array().into_iter().flatten() {
        let verdict = match t["met"].as_bool() {
            Some(true) => "met",
            Some(false) => "NOT MET",
            None => "not measured",
        };
        o += &format!(
            "  {:<48} {:>8.2}{} {} {}{}  {:<12} {}\n",
            t["target"].as_str().unwrap_or(""),
            f(&t["value"]),
            t["unit"].as_str().unwrap_or(""),
            if t["at_least"].as_bool() == Some(true) { ">=" } else { "<=" },
            t["limit"],
            t["unit"].as_str().unwrap_or(""),
            verdict,
            t["note"].as_str().unwrap_or("")
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_targets_are_judged_against_bare_nodes_with_the_lab_nodes_in_the_note() {
        // This run's smoke figures: against the lab's own nodes (netfilter
        // on both) S looks past the target; against bare nodes it is not.
        let r = json!({"ratios": {
            "S/A-bare cross": {"rr": 0.94, "crr": 0.94, "gbit": 1.09},
            "S/A cross": {"rr": 1.12, "crr": 1.21, "gbit": 1.07},
        }});
        let t = node_targets(&r);
        let rr = &t[0];
        assert_eq!(rr["target"], "cross-node TCP_RR S/A-bare");
        assert_eq!(rr["value"], 0.94);
        assert_eq!(rr["met"], false);
        assert_eq!(rr["note"], "S/A (lab nodes, with netfilter) 1.12");
        assert_eq!(t[1]["met"], false);
        assert_eq!(t[2]["met"], true);
        // Not measured (a run without the bare row): no verdict.
        assert_eq!(node_targets(&json!({"ratios": {}}))[0]["met"], Value::Null);
    }

    #[test]
    fn policy_targets_judge_the_ratios_rss_and_change_latency() {
        let plan = Plan::from(&args_smoke());
        let n = plan.policies;
        let r = json!({
            "ratios": {"P allow/none": {"rr": 0.98, "crr": 0.93}, format!("P {n}/1 policies"): {"rr": 0.99, "crr": 0.96}},
            "policy": {"control_plane": {"agent_rss_mib": 140.0, "change_p99_ms": 40.0, "pods": 200, "namespaces": 10}},
        });
        let t = policy_targets(&r, &plan);
        let met: Vec<Value> = t.as_array().unwrap().iter().map(|t| t["met"].clone()).collect();
        assert_eq!(met, [json!(true), json!(false), json!(true), json!(true), json!(false), json!(true)]);
        assert_eq!(t[4]["limit"], 128.0);
        // A run that measured no policy rows: no verdicts.
        let empty = policy_targets(&json!({}), &plan);
        assert!(empty.as_array().unwrap().iter().all(|t| t["met"].is_null()));
    }

    fn args_smoke() -> super::super::BenchArgs {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: super::super::BenchArgs,
        }
        Cli::parse_from(["bench", "--smoke"]).args
    }

    #[test]
    fn every_ratio_names_rows_the_cross_run_measures() {
        for (label, num, den) in CROSS_PAIRS {
            assert!(CROSS_PATHS.contains(&num) && CROSS_PATHS.contains(&den), "{label}");
            assert!(PAIRS.contains(&(label, num, den)), "{label} also in the full run");
        }
    }
}
