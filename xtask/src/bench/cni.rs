//! The CNI section: ADD+DEL cycles and a burst of concurrent ADDs for
//! sluice and for bridge + host-local, and sluice's own per-step profile
//! (`SLUICE_CNI_TIMINGS=1`).
use std::{
    collections::BTreeMap,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use serde_json::{json, Value};
use sluice_tests::{
    bench::percentiles_ms,
    lab::{CniCall, Lab, LabOptions},
    unique,
};

use super::{
    args::Plan,
    labs::{BridgeNet, Overlay},
    report::f,
};
use crate::shell;

/// What one plugin call reported of its own steps: (step, ms).
type Steps = Vec<(String, f64)>;

/// `step <name> <ms> ms` lines of `SLUICE_CNI_TIMINGS=1` (sluice_node::step_timer).
fn parse_steps(stderr: &str) -> Steps {
    stderr
        .lines()
        .filter_map(|l| {
            let mut w = l.strip_prefix("step ")?.split_whitespace();
            let (name, ms) = (w.next()?, w.next()?.parse().ok()?);
            Some((name.to_string(), ms))
        })
        .collect()
}

/// p50 and p99 of each step, in the order first seen.
fn step_percentiles(calls: &[Steps]) -> Value {
    let mut order: Vec<String> = Vec::new();
    let mut by_step: BTreeMap<String, Vec<Duration>> = BTreeMap::new();
    for call in calls {
        for (name, ms) in call {
            if !by_step.contains_key(name) {
                order.push(name.clone());
            }
            by_step.entry(name.clone()).or_default().push(Duration::from_secs_f64(ms / 1e3));
        }
    }
    Value::Array(
        order
            .iter()
            .map(|name| {
                let (p50, p99) = percentiles_ms(by_step[name].clone());
                json!({"step": name, "p50_ms": p50, "p99_ms": p99})
            })
            .collect(),
    )
}

/// ADD+DEL cycles of a plugin, and a burst of concurrent ADDs. Each call
/// returns the steps it reported (none for the reference plugins).
fn cni_latency(
    add: &(dyn Fn(&str) -> Result<Steps> + Sync),
    del: &dyn Fn(&str) -> Result<Steps>,
    cycles: usize,
    burst: usize,
) -> Result<Value> {
    let (mut times, mut add_times, mut del_times) = (Vec::new(), Vec::new(), Vec::new());
    let (mut add_steps, mut del_steps) = (Vec::new(), Vec::new());
    for _ in 0..cycles {
        let ns = unique("slbc");
        shell::output(Command::new("ip").args(["netns", "add", &ns]))?;
        let t = Instant::now();
        add_steps.push(add(&ns)?);
        let added = t.elapsed();
        del_steps.push(del(&ns)?);
        times.push(t.elapsed());
        add_times.push(added);
        del_times.push(t.elapsed() - added);
        shell::output(Command::new("ip").args(["netns", "del", &ns]))?;
    }
    let (p50, p99) = percentiles_ms(times);
    let (add_p50, add_p99) = percentiles_ms(add_times);
    let (del_p50, del_p99) = percentiles_ms(del_times);
    let names: Vec<String> = (0..burst).map(|_| unique("slbb")).collect();
    for n in &names {
        shell::output(Command::new("ip").args(["netns", "add", n]))?;
    }
    let t = Instant::now();
    let results: Vec<Result<(Duration, Steps)>> = std::thread::scope(|s| {
        let hs: Vec<_> = names
            .iter()
            .map(|n| {
                s.spawn(move || {
                    let t = Instant::now();
                    add(n).map(|steps| (t.elapsed(), steps))
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("burst thread")).collect()
    });
    let burst_total = t.elapsed();
    let (mut each, mut burst_steps) = (Vec::new(), Vec::new());
    for r in results {
        let (d, steps) = r?;
        each.push(d);
        burst_steps.push(steps);
    }
    for n in &names {
        del(n)?;
        let _ = Command::new("ip").args(["netns", "del", n]).output();
    }
    let (bp50, bp99) = percentiles_ms(each);
    Ok(json!({"cycles": cycles, "add_del_p50_ms": p50, "add_del_p99_ms": p99,
              "add_p50_ms": add_p50, "add_p99_ms": add_p99, "del_p50_ms": del_p50, "del_p99_ms": del_p99,
              "burst": burst, "burst_total_ms": burst_total.as_secs_f64() * 1e3, "burst_add_p50_ms": bp50, "burst_add_p99_ms": bp99,
              "steps": {"ADD": step_percentiles(&add_steps), "DEL": step_percentiles(&del_steps), "burst ADD": step_percentiles(&burst_steps)}}))
}

pub(super) fn cni_bench(bins: &Path, plan: &Plan) -> Result<Value> {
    let s = Lab::up(&LabOptions::new(1, 0, bins.to_path_buf()))?;
    let node = s.state.nodes[0].clone();
    let conf = Lab::plugin_config(&node)?;
    let call = |cmd: &str, ns: &str| -> Result<Steps> {
        let mut c = CniCall::new(cmd, ns, Some(ns), conf.clone());
        c.env.push(("SLUICE_CNI_TIMINGS".into(), "1".into()));
        let out = s.cni_call(&node, &c)?;
        if !out.success {
            bail!("sluice-cni {cmd}: {}{}", out.stdout, out.stderr);
        }
        Ok(parse_steps(&out.stderr))
    };
    let sluice = cni_latency(&|ns| call("ADD", ns), &|ns| call("DEL", ns), plan.cni_cycles, plan.burst)?;
    let b = BridgeNet::new(bins, &[], Overlay::HostRoutes)?;
    let rt = &b.rt[0];
    let att = |ns: &str| b.attachment(ns);
    let bridge = cni_latency(
        &|ns| rt.add(&att(ns)).map(|_| Steps::new()),
        &|ns| rt.del(&att(ns), None).map(|_| Steps::new()),
        plan.cni_cycles,
        plan.burst,
    )?;
    Ok(json!({"sluice": sluice, "bridge_host_local": bridge}))
}

/// The CNI lines of the report: both plugins' figures, their ratio, and
/// sluice's own per-step profile.
pub(super) fn render_cni(cni: &Value) -> String {
    let mut o = String::new();
    for (label, key) in [("sluice", "sluice"), ("bridge+host-local", "bridge_host_local")] {
        let c = &cni[key];
        o += &format!(
            "CNI {label}: ADD+DEL p50 {:.1} ms p99 {:.1} ms ({} cycles; ADD p50 {:.1} p99 {:.1}, DEL p50 {:.1} p99 {:.1}); burst of {} ADDs {:.0} ms (p99 {:.1} ms)\n",
            f(&c["add_del_p50_ms"]),
            f(&c["add_del_p99_ms"]),
            c["cycles"],
            f(&c["add_p50_ms"]),
            f(&c["add_p99_ms"]),
            f(&c["del_p50_ms"]),
            f(&c["del_p99_ms"]),
            c["burst"],
            f(&c["burst_total_ms"]),
            f(&c["burst_add_p99_ms"])
        );
    }
    let ratio = |k: &str| f(&cni["sluice"][k]) / f(&cni["bridge_host_local"][k]);
    o += &format!(
        "CNI sluice / bridge+host-local: ADD+DEL p99 {:.2}, burst of {} {:.2}\n",
        ratio("add_del_p99_ms"),
        cni["sluice"]["burst"],
        ratio("burst_total_ms")
    );
    for (verb, steps) in cni["sluice"]["steps"].as_object().into_iter().flatten() {
        let cells: Vec<String> = steps
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| format!("{} {:.2}/{:.2}", s["step"].as_str().unwrap_or(""), f(&s["p50_ms"]), f(&s["p99_ms"])))
            .collect();
        o += &format!("  sluice {verb} steps ms p50/p99: {}\n", cells.join(", "));
    }
    o
}
