//! `sluice-agent`: the per-node daemon and its on-call commands.
use std::{path::PathBuf, time::Duration};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use sluice_agent::{
    bpffs, cni_conf, datapath::Datapath, maps, netlink::Netlink, node::NodeConfig, peers::PeersFile, pins::PinDir,
    routes, status,
};
use sluice_common::maps::programs;
use tracing::{error, info, warn};

#[derive(Parser)]
#[command(name = "sluice-agent", version, about = "sluice per-node agent: eBPF pod networking")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load and attach the datapath, then keep node routes in step with the peers file.
    Run {
        #[command(flatten)]
        node: NodeConfig,
        /// JSON peers file (clusters without Kubernetes); re-read on change.
        #[arg(long, env = "SLUICE_PEERS_FILE")]
        peers_file: PathBuf,
        /// Where bpffs is (or gets) mounted.
        #[arg(long, default_value = "/sys/fs/bpf")]
        bpffs: PathBuf,
        /// How often the peers file is checked and the routes map reconciled.
        #[arg(long, default_value_t = 1000)]
        resync_ms: u64,
        /// How often to release addresses and entries of pods that are gone.
        #[arg(long, default_value_t = 30_000)]
        sweep_interval_ms: u64,
        /// A lease younger than this is never swept (its ADD may be running).
        #[arg(long, default_value_t = 60_000)]
        sweep_grace_ms: u64,
    },
    /// Print the datapath's state: endpoints, node routes, drops, forwards.
    Status {
        #[arg(long, env = "SLUICE_PIN_DIR", default_value = sluice_agent::pins::DEFAULT_ROOT)]
        pin_dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Run { node, peers_file, bpffs, resync_ms, sweep_interval_ms, sweep_grace_ms } => {
            let timing = Timing {
                resync: Duration::from_millis(resync_ms),
                sweep_interval: Duration::from_millis(sweep_interval_ms),
                sweep_grace: Duration::from_millis(sweep_grace_ms),
            };
            run(node, peers_file, bpffs, timing).await
        }
        Command::Status { pin_dir, json } => {
            let s = status::collect(&PinDir::new(pin_dir)).context("read datapath state")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print!("{}", status::render_text(&s));
            }
            Ok(())
        }
    }
}

struct Timing {
    resync: Duration,
    sweep_interval: Duration,
    sweep_grace: Duration,
}

async fn sweep(netlink: &Netlink, node: &NodeConfig, pins: &PinDir, grace: Duration) {
    match sluice_agent::sweep::run(netlink, pins, &node.data_dir, node.pod_cidr, grace).await {
        Ok(plan) if !plan.is_empty() => info!(
            attachments = plan.attachments.len(),
            endpoints = plan.endpoints.len(),
            links = plan.link_pins.len(),
            "swept leftovers of pods that are gone"
        ),
        Ok(_) => {}
        Err(e) => warn!(error = %format!("{e:#}"), "sweep failed; will retry"),
    }
}

async fn run(node: NodeConfig, peers_file: PathBuf, bpffs_mount: PathBuf, timing: Timing) -> Result<()> {
    node.validate().context("invalid node configuration")?;
    bpffs::ensure_mounted(&bpffs_mount)?;
    let pins = PinDir::new(&node.pin_dir);
    let netlink = Netlink::open()?;
    let uplink = netlink.require_link(&node.uplink).await.context("uplink")?;
    let node_ip = netlink
        .first_ipv4(uplink.index)
        .await?
        .with_context(|| format!("uplink {} has no IPv4 address", node.uplink))?;

    let mut datapath = Datapath::load(&pins)?;
    maps::write_node_config(
        &pins,
        sluice_common::NodeConfig { uplink_ifindex: uplink.index, node_ip_be: maps::ip_be(node_ip) },
    )?;
    datapath.attach_ingress(programs::FROM_UPLINK, &node.uplink)?;
    let pods = datapath.update_pod_links()?;
    info!(node = %node.node_name, uplink = %node.uplink, %node_ip, mtu = uplink.mtu, pods, "datapath ready");

    if let Some(dir) = &node.cni_conf_dir {
        let conf = cni_conf::render(node.pod_cidr, uplink.mtu, &node.pin_dir, &node.data_dir);
        let path = cni_conf::write(dir, &conf)?;
        info!(path = %path.display(), "CNI config written");
    }

    let mut routes_map = maps::NodeRoutes::open(&pins)?;
    let mut last_error: Option<String> = None;
    sweep(&netlink, &node, &pins, timing.sweep_grace).await;
    let mut sweep_tick = tokio::time::interval(timing.sweep_interval);
    sweep_tick.tick().await; // the first tick is immediate; we just swept
    let mut tick = tokio::time::interval(timing.resync);
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = sweep_tick.tick() => {
                sweep(&netlink, &node, &pins, timing.sweep_grace).await;
                continue;
            }
            _ = sigterm.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
        // Desired state from the file every pass; the diff makes it cheap
        // and a missed change impossible.
        let outcome = std::fs::read(&peers_file)
            .with_context(|| format!("read peers file {}", peers_file.display()))
            .and_then(|bytes| Ok(PeersFile::parse(&bytes)?))
            .and_then(|f| Ok(f.desired_routes(&node.node_name, node.pod_cidr)?))
            .and_then(|desired| routes::apply::reconcile(&mut routes_map, &desired));
        match outcome {
            Ok(_) => last_error = None,
            Err(e) => {
                let msg = format!("{e:#}");
                // Keep the routes we have: a bad edit must not cut traffic.
                if last_error.as_deref() != Some(&msg) {
                    error!(error = %msg, "peers not applied; keeping current routes");
                }
                last_error = Some(msg);
            }
        }
    }
    warn!("stopping; the datapath stays attached and keeps forwarding");
    Ok(())
}
