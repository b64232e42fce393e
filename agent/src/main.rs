//! `sluice-agent`: the per-node daemon and its on-call commands.
use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use sluice_agent::{
    commands::{cleanup, connectivity, status},
    config::AgentConfig,
    daemon::{self, plugin_install, Source, Timing},
    membership::kubernetes::KubeNodes,
};
use sluice_node::{datapath::pins::PinDir, paths};

#[derive(Parser)]
#[command(name = "sluice-agent", version, about = "sluice per-node agent: eBPF pod networking")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start; boxing the big variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Load and attach the datapath, then keep node routes in step with
    /// cluster membership (Kubernetes Nodes, or a peers file).
    Run {
        #[command(flatten)]
        node: AgentConfig,
        /// Membership from a JSON peers file (clusters without Kubernetes); re-read on change.
        #[arg(long, env = "SLUICE_PEERS_FILE", conflicts_with = "kubernetes")]
        peers_file: Option<PathBuf>,
        /// Membership from Kubernetes Node objects (in-cluster config, or KUBECONFIG).
        #[arg(long, env = "SLUICE_KUBERNETES")]
        kubernetes: bool,
        /// Where bpffs is (or gets) mounted.
        #[arg(long, default_value = paths::DEFAULT_BPFFS)]
        bpffs: PathBuf,
        /// How often membership is re-read and the routes map reconciled.
        #[arg(long, default_value_t = 1000)]
        resync_ms: u64,
        /// How often to release addresses and entries of pods that are gone.
        #[arg(long, default_value_t = 30_000)]
        sweep_interval_ms: u64,
        /// A lease younger than this is never swept (its ADD may be running).
        #[arg(long, default_value_t = 60_000)]
        sweep_grace_ms: u64,
    },
    /// Health and state at a glance; exits non-zero when unhealthy.
    Status {
        #[arg(long, env = "SLUICE_PIN_DIR", default_value = paths::DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        #[arg(long, env = "SLUICE_DATA_DIR", default_value = paths::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Probe every node's health endpoint (and local pods with --pods) from
    /// this node's, through the datapath; exits non-zero on any failure.
    ConnectivityTest {
        #[arg(long, env = "SLUICE_PIN_DIR", default_value = paths::DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        #[arg(long, env = "SLUICE_DATA_DIR", default_value = paths::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// Also probe every pod on this node (ICMP).
        #[arg(long)]
        pods: bool,
        /// Also probe a Service from the health endpoint (TCP connect), e.g. 10.96.0.10:53.
        #[arg(long, value_parser = parse_service)]
        service: Option<std::net::SocketAddrV4>,
        /// Also probe an address outside the cluster from the health endpoint:
        /// ADDR (ICMP) or ADDR:PORT (TCP connect).
        #[arg(long, value_parser = connectivity::parse_addr)]
        world: Option<(std::net::Ipv4Addr, Option<u16>)>,
        #[arg(long)]
        json: bool,
    },
    /// Uninstall: detach every program, remove pins, the health endpoint,
    /// pod veths, the conflist, the plugin and IPAM state from this node.
    Cleanup {
        #[arg(long, env = "SLUICE_PIN_DIR", default_value = paths::DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        #[arg(long, env = "SLUICE_DATA_DIR", default_value = paths::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        #[arg(long, env = "SLUICE_CNI_CONF_DIR")]
        cni_conf_dir: Option<PathBuf>,
        #[arg(long, env = "SLUICE_CNI_BIN_DIR")]
        cni_bin_dir: Option<PathBuf>,
        #[arg(long, env = "SLUICE_HEALTH_NETNS", default_value = paths::DEFAULT_HEALTH_NETNS)]
        health_netns: String,
        /// After cleaning, stay running (for a cleanup DaemonSet).
        #[arg(long)]
        wait: bool,
    },
    /// Install the CNI plugin (shipped beside this binary) into a CNI bin directory.
    InstallCni {
        #[arg(long, env = "SLUICE_CNI_BIN_DIR", default_value = paths::DEFAULT_CNI_BIN_DIR)]
        bin_dir: PathBuf,
    },
}

fn parse_service(s: &str) -> Result<std::net::SocketAddrV4, String> {
    s.parse().map_err(|_| format!("{s:?} is not ADDR:PORT (IPv4)"))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            // netlink-packet-route warns about every attribute newer than
            // itself (e.g. IFLA_INET6_CONF on 6.x kernels): noise, not news.
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,netlink_packet_route=error".into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(command: Command) -> Result<ExitCode> {
    match command {
        Command::Run { node, peers_file, kubernetes, bpffs, resync_ms, sweep_interval_ms, sweep_grace_ms } => {
            let timing = Timing {
                resync: Duration::from_millis(resync_ms),
                sweep_interval: Duration::from_millis(sweep_interval_ms),
                sweep_grace: Duration::from_millis(sweep_grace_ms),
            };
            let source = match (peers_file, kubernetes) {
                (Some(path), false) => Source::PeersFile(path),
                (None, true) => {
                    // One TLS provider for the process (kube uses rustls).
                    let _ = rustls::crypto::ring::default_provider().install_default();
                    let client = kube::Client::try_default()
                        .await
                        .context("connect to Kubernetes (in-cluster config or KUBECONFIG)")?;
                    Source::Kubernetes(KubeNodes::start(client))
                }
                _ => bail!("choose where membership comes from: --kubernetes or --peers-file FILE"),
            };
            daemon::run(node, source, bpffs, timing).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { pin_dir, data_dir, json } => {
            let report = status::collect(&PinDir::new(pin_dir), &data_dir);
            if json {
                println!("{}", serde_json::to_string_pretty(&report.to_json())?);
            } else {
                print!("{}", report.render_text());
            }
            Ok(if report.healthy() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::ConnectivityTest { pin_dir, data_dir, pods, service, world, json } => {
            let extra = connectivity::Extra { pods, service, world };
            let results = connectivity::run(&PinDir::new(pin_dir), &data_dir, &extra).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&results)?);
            } else {
                print!("{}", connectivity::render(&results));
            }
            Ok(if results.iter().all(|r| r.ok) { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Cleanup { pin_dir, data_dir, cni_conf_dir, cni_bin_dir, health_netns, wait } => {
            let plan = cleanup::CleanupPlan { pin_dir, data_dir, cni_conf_dir, cni_bin_dir, health_netns };
            cleanup::run(&plan).await?;
            println!("sluice removed from this node");
            if wait {
                std::future::pending::<()>().await;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::InstallCni { bin_dir } => {
            let dest = plugin_install::install_plugin(&plugin_install::bundled_plugin()?, &bin_dir)?;
            println!("installed {}", dest.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}
