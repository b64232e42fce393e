//! `cargo xtask lab up|status|down`: the local multi-node lab (see
//! `sluice_tests::lab` for how it is built).
use std::{path::PathBuf, process::Command};

use anyhow::{bail, Result};
use sluice_tests::{
    cluster::{
        families, node_paths, tcp_text, whoami_server, world_netns, ClusterMatrix, DEMO_IP, DEMO_IP6, WORLD_IP,
        WORLD_IP6, WORLD_PORT,
    },
    lab::{Lab, LabOptions, LAN_PREFIX},
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
        /// that knows nothing of pod CIDRs (peers across it use VXLAN);
        /// with `--ip-family dual` it forwards the nodes' IPv6 too, with
        /// `--ip-family ipv6` IPv6 alone (VXLAN over IPv6).
        #[arg(long, default_value_t = 1)]
        subnets: usize,
        /// `ipv4` (the default), `dual` (pods, nodes, the demo Service and
        /// the world get IPv6 addresses too, and the matrix is printed for
        /// both families) or `ipv6` (IPv6-only: pods, nodes and the demo
        /// Service have IPv6 addresses alone; the IPv6 matrix).
        #[arg(long, default_value = "ipv4", value_parser = ["ipv4", "dual", "ipv6"])]
        ip_family: String,
        /// NAT64 (`--ip-family ipv6` or `dual`): agents run with `--nat64`,
        /// an IPv6-only lab's nodes get an IPv4 address on the uplink too,
        /// and a row shows every pod reaching the world's IPv4 through
        /// `64:ff9b::/96`, seen as its node's IPv4.
        #[arg(long)]
        nat64: bool,
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
        LabCommand::Up { nodes, pods_per_node, mtu, subnets, ip_family, nat64 } => {
            if nat64 && ip_family == "ipv4" {
                bail!("--nat64 needs --ip-family ipv6 or dual (IPv6 pods)");
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
            opts.ipv6_only = ip_family == "ipv6";
            // The cluster model (world, host servers, kube-proxy's
            // Services), in both families of a dual-stack lab.
            opts.cluster_model = true;
            if nat64 {
                opts.ipv4_uplink = true;
                opts.extra_agent_args = vec!["--nat64".into()];
            }
            eprintln!("lab: bringing up {nodes} nodes with {pods_per_node} pods each (LAN MTU {mtu})");
            let mut lab = Lab::up(&opts)?;
            print_nodes(&lab);
            let mut failures = print_matrices(&lab);
            if nat64 {
                failures.extend(print_nat64_row(&mut lab)?);
            }
            print_node_paths(&lab);
            lab.persist()?;
            eprintln!("lab is up: `cargo xtask lab status` to look again, `cargo xtask lab down` to remove it");
            if !failures.is_empty() {
                bail!("some paths failed: {}", failures.join(", "));
            }
            Ok(())
        }
        LabCommand::Status => {
            let lab = Lab::load(&dir)?;
            print_nodes(&lab);
            let failures = print_matrices(&lab);
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
            if !failures.is_empty() {
                bail!("some paths failed: {}", failures.join(", "));
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

/// The cluster matrix of each of the lab's families (IPv4, then IPv6 in
/// a dual-stack lab); the failed paths, each named with its family.
fn print_matrices(lab: &Lab) -> Vec<String> {
    let mut failures = Vec::new();
    for family in families(lab) {
        let matrix = ClusterMatrix::probe_family(lab, family);
        print!("{}", matrix.render());
        failures.extend(matrix.failures.iter().map(|f| format!("{} {f}", family.name())));
    }
    failures
}

/// `lab up --nat64`: every pod to the world's IPv4 whoami through
/// `64:ff9b::/96`; the world must see the pod's node's IPv4. The failed
/// pods.
fn print_nat64_row(lab: &mut Lab) -> Result<Vec<String>> {
    let world = world_netns(&lab.state.id);
    if lab.state.ipv6_only {
        // The cluster model's world answers IPv6 only in an IPv6-only lab.
        whoami_server(lab, &world, "0.0.0.0", WORLD_PORT, "world")?;
    }
    let target = format!("64:ff9b::{WORLD_IP}");
    let (mut cells, mut failures) = (Vec::new(), Vec::new());
    for (i, node) in lab.state.nodes.iter().enumerate() {
        let node_ip4 = if node.ip.is_empty() { format!("{LAN_PREFIX}.{}", i + 1) } else { node.ip.clone() };
        for pod in &node.pods {
            let answer = tcp_text(&pod.netns, &target, WORLD_PORT);
            let ok = answer.as_deref() == Some(format!("world saw {node_ip4}").as_str());
            cells.push(format!("{} {}", pod.name, if ok { "T" } else { "-" }));
            if !ok {
                failures.push(format!("{} -> world over NAT64 (answer {answer:?})", pod.name));
            }
        }
    }
    println!("pod -> world over NAT64 ([{target}]:{WORLD_PORT}, seen as the node's IPv4): {}", cells.join("  "));
    Ok(failures)
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
        // Each family's value that is there (an IPv6-only node's IPv4 ones
        // are empty, and its pods get no IPv4 pod CIDR).
        let with6 = |v4: &str, v6: &Option<String>| {
            let v4 = if lab.state.ipv6_only { "" } else { v4 };
            [Some(v4), v6.as_deref()].into_iter().flatten().filter(|v| !v.is_empty()).collect::<Vec<_>>().join(" ")
        };
        let pods: Vec<String> = n.pods.iter().map(|p| format!("{} {}", p.name, with6(&p.ip, &p.ip6))).collect();
        let (ip, cidr) = (with6(&n.ip, &n.ip6), with6(&n.pod_cidr, &n.pod_cidr6));
        println!("{} {ip} pod CIDR {cidr} (netns {}): {}", n.name, n.netns, pods.join(", "));
    }
    let world = sluice_tests::cluster::world_netns(&lab.state.id);
    if lab.state.ipv6_only {
        println!(
            "world {WORLD_IP6} (netns {world}), demo Service {DEMO_IP6} (kube-proxy's ip6tables rules on every node); \
             pods and nodes are IPv6-only"
        );
    } else if lab.state.dual_stack {
        println!(
            "world {WORLD_IP} {WORLD_IP6} (netns {world}), demo Service {DEMO_IP} {DEMO_IP6} (kube-proxy's iptables \
             and ip6tables rules on every node)"
        );
    } else {
        println!(
            "world {WORLD_IP} (netns {world}), demo Service {DEMO_IP} (kube-proxy's iptables rules on every node)"
        );
    }
}
