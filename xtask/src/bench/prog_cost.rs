//! Where a sluice row's time goes in its eBPF programs: each program's
//! run time and run count, read before and after a separate TCP_RR and
//! TCP_CRR pass, give the nanoseconds per run (one run per packet for the
//! TC programs) and the runs per transaction (issue 24).
//!
//! The kernel counts run time only while BPF statistics are on. They are
//! turned on with `BPF_ENABLE_STATS` (`aya::sys::enable_stats`) rather than
//! by writing `kernel.bpf_stats_enabled`: the kernel keeps them on while the
//! returned descriptor is open and adds that to whatever the sysctl says,
//! so closing it (at the end of the pass, on an error, or when the process
//! dies) puts the machine back as it was without our restoring anything.
//! Stats cost two clock reads per run, so the pass is separate from the
//! row's own figures.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use aya::{
    programs::{links::FdLink, links::PinnedLink, loaded_programs, ProgramInfo},
    sys::{enable_stats, Stats},
};
use serde_json::{json, Value};
use sluice_node::datapath::pins::PinDir;

/// BPF run-time statistics, on while this lives.
pub(super) struct StatsOn(#[allow(dead_code)] OwnedFd);

impl StatsOn {
    pub(super) fn enable() -> Result<Self> {
        enable_stats(Stats::RunTime).map(Self).context("BPF_ENABLE_STATS (BPF run-time statistics)")
    }
}

/// One program's counters at one moment.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Sample {
    pub(super) id: u32,
    /// Node and program name: `n1 from_uplink`.
    pub(super) label: String,
    pub(super) run_ns: u64,
    pub(super) runs: u64,
}

/// One program's share of a measurement.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Cost {
    pub(super) label: String,
    pub(super) runs_per_txn: f64,
    pub(super) ns_per_run: f64,
    pub(super) ns_per_txn: f64,
}

/// Each program's cost between two samples over `transactions`, in the
/// order of `after`; programs that did not run in between are left out
/// (and so are those missing from `before`: loaded in between, their
/// counters are not comparable).
pub(super) fn costs(before: &[Sample], after: &[Sample], transactions: usize) -> Vec<Cost> {
    let before: BTreeMap<u32, &Sample> = before.iter().map(|s| (s.id, s)).collect();
    after
        .iter()
        .filter_map(|a| {
            let b = before.get(&a.id)?;
            let runs = a.runs.checked_sub(b.runs).filter(|&r| r > 0)?;
            let run_ns = a.run_ns.saturating_sub(b.run_ns) as f64;
            let txns = transactions.max(1) as f64;
            Some(Cost {
                label: a.label.clone(),
                runs_per_txn: runs as f64 / txns,
                ns_per_run: run_ns / runs as f64,
                ns_per_txn: run_ns / txns,
            })
        })
        .collect()
}

/// The programs behind a node's pinned programs and links, by id, each
/// labelled with the node's name.
pub(super) fn node_programs(nodes: &[(String, PathBuf)]) -> Result<BTreeMap<u32, String>> {
    let mut ids = BTreeMap::new();
    for (node, pins) in nodes {
        let pins = PinDir::new(pins);
        let mut node_ids = BTreeSet::new();
        for link in pins_in(&pins.links_dir())? {
            let info = FdLink::from(PinnedLink::from_pin(&link).with_context(|| format!("open {}", link.display()))?)
                .info()
                .with_context(|| format!("link info of {}", link.display()))?;
            node_ids.insert(info.program_id());
        }
        for prog in pins_in(&pins.progs_dir())? {
            let info = ProgramInfo::from_pin(&prog).with_context(|| format!("open {}", prog.display()))?;
            node_ids.insert(info.id());
        }
        ids.extend(node_ids.into_iter().map(|id| (id, node.clone())));
    }
    Ok(ids)
}

fn pins_in(dir: &Path) -> Result<Vec<PathBuf>> {
    match fs::read_dir(dir) {
        Ok(entries) => Ok(entries.flatten().map(|e| e.path()).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("list {}", dir.display())),
    }
}

/// The counters of the programs in `programs` (id → node).
pub(super) fn sample(programs: &BTreeMap<u32, String>) -> Result<Vec<Sample>> {
    let mut out = Vec::new();
    for info in loaded_programs() {
        let info = info.context("list loaded BPF programs")?;
        if let Some(node) = programs.get(&info.id()) {
            out.push(Sample {
                id: info.id(),
                label: format!("{node} {}", info.name_as_str().unwrap_or("?")),
                run_ns: info.run_time().as_nanos() as u64,
                runs: info.run_count(),
            });
        }
    }
    Ok(out)
}

/// A TCP_RR and a TCP_CRR pass from `client_ns` to `target` (served in
/// `server_ns`) with BPF statistics on: the programs of `nodes`, each
/// one's runs and run time per transaction.
pub(super) fn pass(
    nodes: &[(String, PathBuf)],
    server_ns: &str,
    client_ns: &str,
    target: sluice_tests::bench::Target,
    d: std::time::Duration,
) -> Result<Value> {
    type RrFn =
        fn(&str, &str, sluice_tests::bench::Target, std::time::Duration) -> Result<sluice_tests::bench::Latency>;
    let programs = node_programs(nodes)?;
    let _stats = StatsOn::enable()?;
    let mut out = serde_json::Map::new();
    for (mode, run) in
        [("rr", sluice_tests::bench::tcp_rr_to as RrFn), ("crr", sluice_tests::bench::tcp_crr_to as RrFn)]
    {
        let before = sample(&programs)?;
        let figures = run(server_ns, client_ns, target, d)?;
        let after = sample(&programs)?;
        let costs = costs(&before, &after, figures.samples);
        out.insert(mode.into(), to_json(&costs, figures.samples, figures.per_sec));
    }
    Ok(Value::Object(out))
}

/// A pass's costs as JSON: per program, and the sum per transaction.
pub(super) fn to_json(costs: &[Cost], transactions: usize, per_sec: f64) -> Value {
    json!({
        "transactions": transactions,
        "per_sec_with_stats": per_sec,
        "ns_per_txn_total": costs.iter().map(|c| c.ns_per_txn).sum::<f64>(),
        "programs": costs.iter().map(|c| (c.label.clone(), json!({
            "runs_per_txn": c.runs_per_txn, "ns_per_run": c.ns_per_run, "ns_per_txn": c.ns_per_txn,
        }))).collect::<serde_json::Map<_, _>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(id: u32, label: &str, run_ns: u64, runs: u64) -> Sample {
        Sample { id, label: label.into(), run_ns, runs }
    }

    #[test]
    fn cost_per_run_and_per_transaction_from_two_samples() {
        let before = [s(1, "n1 from_pod", 1_000, 10), s(2, "n2 from_uplink", 500, 5), s(3, "n1 to_pod", 0, 0)];
        let after = [s(1, "n1 from_pod", 21_000, 210), s(2, "n2 from_uplink", 40_500, 405), s(3, "n1 to_pod", 0, 0)];
        // 200 transactions: from_pod ran once each (100 ns), from_uplink
        // twice each (100 ns a run); to_pod never ran and is left out.
        let c = costs(&before, &after, 200);
        assert_eq!(
            c,
            [
                Cost { label: "n1 from_pod".into(), runs_per_txn: 1.0, ns_per_run: 100.0, ns_per_txn: 100.0 },
                Cost { label: "n2 from_uplink".into(), runs_per_txn: 2.0, ns_per_run: 100.0, ns_per_txn: 200.0 },
            ]
        );
        let j = to_json(&c, 200, 5000.0);
        assert_eq!(j["ns_per_txn_total"], 300.0);
        assert_eq!(j["programs"]["n2 from_uplink"]["runs_per_txn"], 2.0);
    }

    #[test]
    fn programs_loaded_in_between_or_counters_going_back_are_not_costs() {
        // id 4 appeared after the first sample (a program swapped in), id 5
        // is a reused id whose counter went back: neither is comparable.
        let before = [s(5, "n1 to_uplink", 9_000, 90)];
        let after = [s(4, "n1 from_pod", 5_000, 50), s(5, "n1 to_uplink", 100, 1)];
        assert!(costs(&before, &after, 10).is_empty());
        // No transactions (a failed pass): costs per run still, no division by zero.
        let c = costs(&[s(1, "a", 0, 0)], &[s(1, "a", 300, 3)], 0);
        assert_eq!(c[0].ns_per_run, 100.0);
        assert!(c[0].ns_per_txn.is_finite());
    }
}
