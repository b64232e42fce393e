//! `cargo xtask lab up|status|down`: the local multi-node lab (see
//! `sluice_tests::lab` for how it is built).
use std::{path::PathBuf, process::Command};

use anyhow::{bail, Result};
use sluice_tests::{
    cluster::{node_paths, ClusterMatrix, DEMO_IP, WORLD_IP},
    lab::{Lab, LabOptions},
};

use crate::{build_ebpf, repo_root, setup, shell};

/// Where `lab up` keeps its state, so `status` and `down` find it.
const LAB_DIR: &str = "/tmp/sluice-lab";

#[derive(clap::Subcommand)]
pub enum LabCommand {
    /// Set up and build if needed, then bring up nodes and pods and print
    /// the pod-to-pod reachability matrix.
    Up {
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        #[arg(long, default_value_t = 2)]
        pods_per_node: usize,
        /// MTU of the lab LAN; pods follow it.
        #[arg(long, default_value_t = 1500)]
        mtu: u32,
        /// Node networks: 2 puts the nodes on two LANs joined by a router
        /// that knows nothing of pod CIDRs (peers across it use VXLAN).
        #[arg(long, default_value_t = 1)]
        subnets: usize,
        /// `ipv4` (the default) or `dual`: every pod also gets an IPv6
        /// address, and the IPv6 pod matrix is printed too. (`ipv6`,
        /// IPv6-only, is not supported yet.)
        #[arg(long, default_value = "ipv4", value_parser = ["ipv4", "dual", "ipv6"])]
        ip_family: String,
    },
    /// Reprint the matrix and each node's datapath counters.
    Status,
    /// Remove every namespace, process, pin and file of the lab.
    Down,
}

pub fn run(command: LabCommand) -> Result<()> {
    shell::require_root("cargo xtask lab")?;
    let dir = PathBuf::from(LAB_DIR);
    match command {
        LabCommand::Up { nodes, pods_per_node, mtu, subnets, ip_family } => {
            if ip_family == "ipv6" {
                bail!("--ip-family ipv6 (IPv6-only) is not supported yet: the agent refuses it; use dual");
            }
            if Lab::state_file(&dir).exists() {
                bail!("a lab is already up (state in {LAB_DIR}); run `cargo xtask lab down` first");
            }
            setup::run()?;
            build_ebpf::run()?;
            let root = repo_root();
            shell::run(
                Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())).current_dir(&root).args([
                    "build",
                    "--workspace",
                    "--bins",
                ]),
            )?;
            let mut opts = LabOptions::new(nodes, pods_per_node, root.join("target/debug"));
            opts.dir = dir;
            opts.mtu = mtu;
            opts.subnets = subnets;
            opts.dual_stack = ip_family == "dual";
            // The cluster model (world, kube-proxy's Services) stays IPv4.
            opts.cluster_model = true;
            eprintln!("lab: bringing up {nodes} nodes with {pods_per_node} pods each (LAN MTU {mtu})");
            let lab = Lab::up(&opts)?;
            print_nodes(&lab);
            let matrix = ClusterMatrix::probe(&lab);
            print!("{}", matrix.render());
            print_node_paths(&lab);
            let mut all_ok = matrix.all_ok();
            let mut failures = matrix.failures.clone();
            if lab.state.dual_stack {
                let matrix6 = lab.matrix6();
                println!("IPv6:");
                print!("{}", matrix6.render());
                all_ok &= matrix6.all_ok();
                failures.extend(matrix6.failures().into_iter().map(|f| format!("IPv6 {f}")));
            }
            lab.persist()?;
            eprintln!("lab is up: `cargo xtask lab status` to look again, `cargo xtask lab down` to remove it");
            if !all_ok {
                bail!("some paths failed: {}", failures.join(", "));
            }
            Ok(())
        }
        LabCommand::Status => {
            let lab = Lab::load(&dir)?;
            print_nodes(&lab);
            print!("{}", ClusterMatrix::probe(&lab).render());
            if lab.state.dual_stack {
                println!("IPv6:");
                print!("{}", lab.matrix6().render());
            }
            print_node_paths(&lab);
            for (i, node) in lab.state.nodes.iter().enumerate() {
                match lab.status(i) {
                    Ok(s) => {
                        let fmt = |key: &str| {
                            s[key]
                                .as_object()
                                .map(|m| m.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" "))
                                .unwrap_or_default()
                        };
                        println!("{}: drops: {}", node.name, fmt("drops"));
                        println!("{}: forwarded: {}", node.name, fmt("forwards"));
                    }
                    Err(e) => println!("{}: status failed: {e:#}", node.name),
                }
            }
            Ok(())
        }
        LabCommand::Down => {
            let mut lab = Lab::load(&dir)?;
            let start = std::time::Instant::now();
            let mut progress = |what: &str| eprintln!("lab down [{:5.1} s] {what}", start.elapsed().as_secs_f64());
            lab.down_reporting(&mut progress)?;
            eprintln!("lab removed in {:.1} s", start.elapsed().as_secs_f64());
            Ok(())
        }
    }
}

/// Per node pair: native or VXLAN, and why.
fn print_node_paths(lab: &Lab) {
    println!("paths between nodes (each agent's choice):");
    for line in node_paths(lab) {
        println!("  {line}");
    }
}

fn print_nodes(lab: &Lab) {
    for n in &lab.state.nodes {
        let pods: Vec<String> = n.pods.iter().map(|p| format!("{} {}", p.name, p.ip)).collect();
        println!("{} {} pod CIDR {} (netns {}): {}", n.name, n.ip, n.pod_cidr, n.netns, pods.join(", "));
    }
    println!(
        "world {WORLD_IP} (netns {}), demo Service {DEMO_IP} (kube-proxy's iptables rules on every node)",
        sluice_tests::cluster::world_netns(&lab.state.id)
    );
}
