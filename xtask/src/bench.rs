//! `cargo xtask bench`: sluice against the kernel's own paths, measured side
//! by side in one run on the same kind of lab (see sluice_tests::bench for
//! how each figure is taken, and docs/BENCHMARKS.md for a reference run).
//!
//! Paths: A node↔node (no pods), L two namespaces on one veth, B the bridge +
//! host-routes pod network (reference `bridge` + `host-local`, `ip route ...
//! via <other node>`), S sluice (native: `--tunnel=never`, pods at the
//! uplink's MTU); same node and cross-node; S-vxlan sluice with every peer
//! tunneled (`--tunnel=always`) against K, the kernel's VXLAN overlay as
//! Flannel lays it out (`vxlan`), both cross-node; and the Service
//! paths of `services` (socket load balancer vs kube-proxy's iptables rules
//! with 10, 1,000 and 10,000 Services). Every round rebuilds the labs and
//! rotates the order; figures are medians over rounds and ratios are
//! medians of per-round ratios.
use std::{collections::BTreeMap, path::PathBuf, process::Command, time::Instant};

use anyhow::{Context, Result};
use serde_json::json;
use sluice_tests::bench;

use crate::{build_ebpf, repo_root, setup, shell};

mod args;
mod cni;
mod conntrack_table;
mod control_plane;
mod devices;
mod ipv6;
mod labs;
mod nodeport;
mod paths;
mod policy;
mod prog_cost;
mod report;
mod services;
mod vxlan;

pub use args::BenchArgs;
use args::Plan;
use report::{machine, render, render_vxlan, svc_targets, vxlan_targets};

pub fn run(args: &BenchArgs) -> Result<()> {
    if let Some(spec) = &args.client {
        return services::client_main(spec);
    }
    let started = Instant::now();
    shell::require_root("cargo xtask bench")?;
    let plan = Plan::from(args);
    let root = repo_root();
    if !args.prebuilt {
        setup::run()?;
        build_ebpf::run()?;
        let mut build = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        build.current_dir(&root).args(["build", "-p", "sluice-agent", "-p", "sluice-cni", "--bins"]);
        if plan.release {
            build.arg("--release");
        }
        shell::run(&mut build)?;
    }
    let bins: PathBuf = root.join(if plan.release { "target/release" } else { "target/debug" });
    let out_dir = root.join("target/bench");
    std::fs::create_dir_all(&out_dir)?;

    if args.devices || args.attach_modes {
        // No spinners: in a TCG guest an idle vCPU costs nothing, a
        // spinning one a host core.
        let (compared, file) = if args.devices {
            (&devices::DEVICES, "devices.json")
        } else {
            (&devices::ATTACH_MODES, "attach_modes.json")
        };
        let mut report = devices::run(&bins, &plan, compared)?;
        report["wall_clock_secs"] = json!(started.elapsed().as_secs_f64());
        let json_path = out_dir.join(file);
        std::fs::write(&json_path, serde_json::to_vec_pretty(&report)?)?;
        print!("{}", devices::render(&report));
        println!("wrote {}", json_path.display());
        return Ok(());
    }

    if args.cni {
        let spinners = bench::Spinners::start();
        let cni = cni::cni_bench(&bins, &plan)?;
        drop(spinners);
        let json_path = out_dir.join("cni.json");
        std::fs::write(&json_path, serde_json::to_vec_pretty(&json!({"machine": machine(), "cni": cni}))?)?;
        print!("{}", cni::render_cni(&cni));
        println!("wrote {}", json_path.display());
        return Ok(());
    }
    if args.ipv6 {
        // A reduced run: IPv6 beside IPv4 on a dual-stack lab.
        let spinners = bench::Spinners::start();
        let rounds = (0..plan.rounds).map(|r| ipv6::round(r, &bins, &plan)).collect::<Result<Vec<_>>>()?;
        drop(spinners);
        let mut report = json!({
            "machine": machine(),
            "plan": {"rounds": plan.rounds, "rr_secs": plan.rr.as_secs_f64(), "release": plan.release, "smoke": args.smoke},
            "paths": report::path_medians(&rounds),
            "ratios": report::ratios_of(&rounds, &report::pairs(&ipv6::IPV6_PAIRS)),
            "rounds": report::per_round(&rounds),
            "programs": report::program_costs(&rounds),
        });
        report["ipv6_targets"] = ipv6::targets(&report);
        report["wall_clock_secs"] = json!(started.elapsed().as_secs_f64());
        let json_path = out_dir.join("ipv6.json");
        std::fs::write(&json_path, serde_json::to_vec_pretty(&report)?)?;
        print!("{}", report::render_ipv6_run(&report));
        println!("wrote {}", json_path.display());
        return Ok(());
    }
    if args.policy {
        // A reduced run: only the NetworkPolicy rows and control plane.
        let spinners = bench::Spinners::start();
        let mut rounds = Vec::new();
        let mut control = serde_json::Value::Null;
        for r in 0..plan.rounds {
            let mut figures = BTreeMap::new();
            if let Some(c) = policy::round(r, &bins, &plan, r == 0, &mut figures).context("NetworkPolicy rows")? {
                control = c;
            }
            rounds.push(figures);
        }
        drop(spinners);
        let mut report = json!({
            "machine": machine(),
            "plan": {"rounds": plan.rounds, "rr_secs": plan.rr.as_secs_f64(), "release": plan.release, "smoke": args.smoke},
            "paths": report::path_medians(&rounds),
            "ratios": report::ratios_of(&rounds, &policy::ratio_pairs(plan.policies)),
            "rounds": report::per_round(&rounds),
            "programs": report::program_costs(&rounds),
            "policy": {"control_plane": control},
        });
        report["policy"]["targets"] = report::policy_targets(&report, &plan);
        report["wall_clock_secs"] = json!(started.elapsed().as_secs_f64());
        let json_path = out_dir.join("policy.json");
        std::fs::write(&json_path, serde_json::to_vec_pretty(&report)?)?;
        print!("{}", report::render_policy_run(&report));
        println!("wrote {}", json_path.display());
        return Ok(());
    }
    if args.nodeport {
        // A reduced run: the NodePort rows, then the connection tables.
        let spinners = bench::Spinners::start();
        let mut rounds = Vec::new();
        let mut times = Vec::new();
        for r in 0..plan.rounds {
            let mut figures = BTreeMap::new();
            times.push(nodeport::round(r, &bins, &plan, &mut figures).context("NodePort rows")?);
            rounds.push(figures);
        }
        drop(spinners);
        // No spinners: the agent's GC pass is timed, not a transaction.
        let tables = conntrack_table::run(&bins, &plan).context("connection tables")?;
        let (lo, hi) = (plan.scales[0], plan.scales[plan.scales.len() - 1]);
        let mut report = json!({
            "machine": machine(),
            "plan": {"rounds": plan.rounds, "rr_secs": plan.rr.as_secs_f64(), "release": plan.release, "smoke": args.smoke,
                     "scales": plan.scales, "endpoints_per_service": services::PER_SERVICE,
                     "node_port_range": nodeport::NODE_PORT_RANGE, "dsr": "LB4_CONFIG switched to DSR on both nodes for the DSR row"},
            "paths": report::path_medians(&rounds),
            "per_round": rounds.iter().map(|r| r.iter().map(|(n, p)| (n.clone(), json!({"rr": p.rr.per_sec, "crr": p.crr.per_sec}))).collect::<serde_json::Map<_, _>>()).collect::<Vec<_>>(),
            "ratios": report::ratios_of(&rounds, &nodeport::ratio_pairs(&plan.scales)),
            "drift_free": {
                "snat_rr": nodeport::drift_free(&rounds, nodeport::snat_name, hi, lo, "rr"),
                "snat_crr": nodeport::drift_free(&rounds, nodeport::snat_name, hi, lo, "crr"),
                "kube_proxy_rr": nodeport::drift_free(&rounds, nodeport::iptables_name, hi, lo, "rr"),
                "kube_proxy_crr": nodeport::drift_free(&rounds, nodeport::iptables_name, hi, lo, "crr"),
                "dsr_rr": nodeport::drift_free(&rounds, nodeport::dsr_name, hi, lo, "rr"),
            },
            "times": nodeport::median_times(&times, &plan.scales),
            "programs": report::program_costs(&rounds),
            "connection_tables": tables,
        });
        report["targets"] = nodeport::targets(&report, &plan.scales);
        report["wall_clock_secs"] = json!(started.elapsed().as_secs_f64());
        let json_path = out_dir.join("nodeport.json");
        std::fs::write(&json_path, serde_json::to_vec_pretty(&report)?)?;
        print!("{}", report::render_nodeport(&report));
        println!("wrote {}", json_path.display());
        return Ok(());
    }
    if args.vxlan || args.cross {
        // A reduced run: only `plan.only`'s rows, their ratios and targets.
        let (file, pairs) = if args.vxlan {
            ("vxlan.json", &report::VXLAN_PAIRS[..])
        } else {
            ("cross.json", &report::CROSS_PAIRS[..])
        };
        let spinners = bench::Spinners::start();
        let rounds = (0..plan.rounds).map(|r| paths::round(r, &bins, &plan)).collect::<Result<Vec<_>>>()?;
        drop(spinners);
        let mut report = json!({
            "machine": machine(),
            "plan": {"rounds": plan.rounds, "rr_secs": plan.rr.as_secs_f64(), "throughput_secs": plan.tput_secs, "release": plan.release, "only": plan.only},
            "paths": report::path_medians(&rounds),
            "ratios": report::ratios_of(&rounds, &report::pairs(pairs)),
            "programs": report::program_costs(&rounds),
        });
        report["vxlan_targets"] = vxlan_targets(&report);
        report["node_targets"] = report::node_targets(&report);
        report["wall_clock_secs"] = json!(started.elapsed().as_secs_f64());
        let json_path = out_dir.join(file);
        std::fs::write(&json_path, serde_json::to_vec_pretty(&report)?)?;
        print!("{}", if args.vxlan { render_vxlan(&report) } else { report::render_cross(&report) });
        println!("wrote {}", json_path.display());
        return Ok(());
    }
    let spinners = bench::Spinners::start();
    let mut rounds = Vec::new();
    let mut svc_times = Vec::new();
    let mut policy_control = serde_json::Value::Null;
    for r in 0..plan.rounds.max(plan.svc_rounds) {
        let mut figures = if r < plan.rounds { paths::round(r, &bins, &plan)? } else { BTreeMap::new() };
        if r < plan.svc_rounds {
            svc_times.push(services::round(r, &bins, &plan, &mut figures).context("Service paths")?);
        }
        if r < plan.rounds {
            if let Some(c) = policy::round(r, &bins, &plan, r == 0, &mut figures).context("NetworkPolicy rows")? {
                policy_control = c;
            }
        }
        rounds.push(figures);
    }
    let cni = cni::cni_bench(&bins, &plan)?;
    drop(spinners);
    let control = control_plane::control_plane(&bins, &plan)?;
    let svc_control = services::control_plane(&bins, &plan).context("Services control plane")?;

    // Medians over rounds, and medians of per-round ratios.
    let mut pairs = report::pairs(&report::PAIRS);
    pairs.extend(report::svc_ratio_pairs(&plan.scales));
    pairs.extend(policy::ratio_pairs(plan.policies));
    let cni_ratio =
        report::f(&cni["sluice"]["add_del_p99_ms"]) / report::f(&cni["bridge_host_local"]["add_del_p99_ms"]);
    let mut report = json!({
        "machine": machine(),
        "plan": {"rounds": plan.rounds, "service_rounds": plan.svc_rounds, "rr_secs": plan.rr.as_secs_f64(), "throughput_secs": plan.tput_secs, "smoke": args.smoke, "release": plan.release},
        "paths": report::path_medians(&rounds),
        "per_round": rounds.iter().map(|r| r.iter().map(|(n, p)| (n.clone(), json!({"rr": p.rr.per_sec, "crr": p.crr.per_sec}))).collect::<serde_json::Map<_, _>>()).collect::<Vec<_>>(),
        "ratios": report::ratios_of(&rounds, &pairs),
        "programs": report::program_costs(&rounds),
        "cni": cni,
        "cni_p99_ratio_sluice_over_bridge": cni_ratio,
        "control_plane": control,
        "services": {
            "scales": plan.scales,
            "endpoints_per_service": services::PER_SERVICE,
            "times": services::median_times(&svc_times, &plan),
            "control_plane": svc_control,
        },
    });
    report["services"]["targets"] = svc_targets(&report, &plan);
    report["policy"] = json!({"control_plane": policy_control});
    report["policy"]["targets"] = report::policy_targets(&report, &plan);
    report["vxlan_targets"] = vxlan_targets(&report);
    report["node_targets"] = report::node_targets(&report);
    report["wall_clock_secs"] = json!(started.elapsed().as_secs_f64());
    let json_path = out_dir.join("bench.json");
    std::fs::write(&json_path, serde_json::to_vec_pretty(&report)?)?;
    print!("{}", render(&report));
    let png = out_dir.join("bench.png");
    shell::run(
        Command::new(setup::venv_dir().join("bin/python"))
            .arg(root.join("xtask/bench_chart.py"))
            .arg(&json_path)
            .arg(&png),
    )?;
    println!("wrote {} and {}", json_path.display(), png.display());
    Ok(())
}
