//! `sluice-agent`: the per-node daemon and its on-call commands.
use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use sluice_agent::{
    commands::{
        cleanup, connectivity, monitor, node_init,
        status::{self, service_table},
    },
    config::AgentConfig,
    daemon::{self, plugin_install, Source, Timing},
    membership::kubernetes::KubeNodes,
    policy::{kubernetes::KubePolicy, report::PolicyReport},
    privileges,
    services::kubernetes::KubeServices,
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
        /// Also list this node's pods: address, pod name (as the runtime
        /// passed it), container and whether the datapath has its endpoint.
        #[arg(long)]
        pods: bool,
        /// Also list the socket load balancer's frontends and backends
        /// (`--kube-proxy-replacement=true`), read from the maps.
        #[arg(long)]
        services: bool,
        /// The livenessProbe's question: exit non-zero only when restarting
        /// the agent would help (it is not running, or its loop or its
        /// Services loop stopped passing), not for a lost API server or
        /// an unhealthy datapath. Prints that verdict alone.
        #[arg(long)]
        liveness: bool,
        /// Also show one local pod's NetworkPolicy: its isolation per
        /// direction, the policies that isolate it and its effective allow
        /// rules (as the agent last compiled them).
        #[arg(long, value_name = "NAMESPACE/POD")]
        policy: Option<String>,
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
        /// The port other nodes' agents serve metrics on: their drop
        /// counters say where a failed probe died.
        #[arg(long, default_value_t = 9962)]
        peer_metrics_port: u16,
        /// Also probe a Service from the health endpoint (TCP connect), e.g.
        /// 10.96.0.10:53 or [fd00:96::a]:53; once per family on a
        /// dual-stack node (the flag may be given again).
        #[arg(long, value_parser = parse_service)]
        service: Vec<std::net::SocketAddr>,
        /// Also probe an address outside the cluster from the health endpoint:
        /// ADDR (ICMP) or ADDR:PORT (TCP connect), IPv4 or IPv6 ([ADDR]:PORT);
        /// the flag may be given again (one per family).
        #[arg(long, value_parser = connectivity::parse_addr)]
        world: Vec<(std::net::IpAddr, Option<u16>)>,
        /// Also probe this NodePort on every other node's address from the
        /// health endpoint (TCP connect), on a dual-stack node on their IPv6
        /// addresses too. Default: the lowest TCP NodePort with backends in
        /// the socket load balancer's maps, if any.
        #[arg(long)]
        node_port: Option<u16>,
        /// Also probe that NodePort on every node's address from this
        /// network namespace (a path such as /run/netns/NAME): one outside
        /// the cluster, so its connections arrive as the world's do.
        #[arg(long)]
        world_netns: Option<std::path::PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Every datapath drop (and with --type trace|all every forwarding
    /// decision), one line each; works while the agent is down.
    Monitor {
        #[arg(long, env = "SLUICE_PIN_DIR", default_value = paths::DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        #[arg(long = "type", value_enum, default_value = "drop")]
        types: monitor::EventType,
        /// Where the agent writes pod and policy names (`--type policy`).
        #[arg(long, env = "SLUICE_DATA_DIR", default_value = paths::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// Only packets from or to this address (a pod's IP).
        #[arg(long)]
        ip: Option<std::net::Ipv4Addr>,
        /// JSON lines instead of text.
        #[arg(long)]
        json: bool,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<usize>,
        /// Stop after this many milliseconds.
        #[arg(long)]
        duration_ms: Option<u64>,
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
    /// One node preparation step that needs privilege (a privileged init
    /// container each), so that `run` needs only its capabilities.
    NodeInit {
        #[command(subcommand)]
        step: NodeInitStep,
    },
}

#[derive(Subcommand)]
enum NodeInitStep {
    /// Mount bpffs (shared) unless one is already there.
    MountBpffs {
        #[arg(long, default_value = paths::DEFAULT_BPFFS)]
        path: PathBuf,
    },
    /// Make the network namespace directory a shared mount point of its own.
    ShareNetnsDir {
        #[arg(long, default_value = "/run/netns")]
        path: PathBuf,
    },
    /// Set net.ipv4.ip_forward=1 (the agent's /proc/sys is read-only).
    IpForward,
    /// With --kube-proxy-replacement=true, add the NodePort range to
    /// net.ipv4.ip_local_reserved_ports (what sluice adds is recorded in the
    /// data directory); otherwise give back what an earlier run added.
    ReservePorts {
        #[arg(long, env = "SLUICE_DATA_DIR", default_value = paths::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        #[arg(long, env = "SLUICE_KUBE_PROXY_REPLACEMENT", default_value_t = false, action = clap::ArgAction::Set)]
        kube_proxy_replacement: bool,
        #[arg(long, env = "SLUICE_NODE_PORT_RANGE", default_value = "30000-32767")]
        node_port_range: sluice_agent::port_ownership::ranges::PortRange,
    },
}

impl Command {
    /// The subcommand's name, as `privileges::NEEDED` lists it.
    fn name(&self) -> &'static str {
        match self {
            Command::Run { .. } => "run",
            Command::Status { .. } => "status",
            Command::ConnectivityTest { .. } => "connectivity-test",
            Command::Monitor { .. } => "monitor",
            Command::Cleanup { .. } => "cleanup",
            Command::InstallCni { .. } => "install-cni",
            Command::NodeInit { .. } => "node-init",
        }
    }
}

/// After a refused call: name the capabilities `command` needs and this
/// process lacks (on stderr, after the error).
fn print_privilege_hint(command: &str) {
    if let Some(h) = privileges::effective().and_then(|eff| privileges::hint(command, eff)) {
        eprintln!("{h}");
    }
}

fn parse_service(s: &str) -> Result<std::net::SocketAddr, String> {
    s.parse().map_err(|_| format!("{s:?} is not ADDR:PORT (IPv4) or [ADDR]:PORT (IPv6)"))
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
    let name = cli.command.name();
    match rt.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            if privileges::is_permission_error(&e) {
                print_privilege_hint(name);
            }
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
            if let Some(eff) = privileges::effective() {
                tracing::info!(capabilities = %privileges::names_of(eff), "starting");
            }
            if node.kube_proxy_replacement && !kubernetes {
                bail!(
                    "--kube-proxy-replacement=true needs --kubernetes: Services and EndpointSlices come from the API"
                );
            }
            let (source, services, policy) = match (peers_file, kubernetes) {
                (Some(path), false) => (Source::PeersFile(path), None, None),
                (None, true) => {
                    // One TLS provider for the process (kube uses rustls).
                    let _ = rustls::crypto::ring::default_provider().install_default();
                    let client = kube::Client::try_default()
                        .await
                        .context("connect to Kubernetes (in-cluster config or KUBECONFIG)")?;
                    let services = node.kube_proxy_replacement.then(|| KubeServices::start(client.clone()));
                    // NetworkPolicy: Pods, Namespaces and NetworkPolicies.
                    let policy = Some(KubePolicy::start(client.clone()));
                    (Source::Kubernetes(KubeNodes::start(client)), services, policy)
                }
                _ => bail!("choose where membership comes from: --kubernetes or --peers-file FILE"),
            };
            daemon::run(node, source, services, policy, bpffs, timing).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { pin_dir, data_dir, json, pods, services, liveness, policy } => {
            let pins = PinDir::new(pin_dir);
            let report = status::collect(&pins, &data_dir);
            if liveness && !json {
                print!("{}", report.render_liveness());
                return Ok(if report.live() { ExitCode::SUCCESS } else { ExitCode::FAILURE });
            }
            let services = if services { Some(service_table::rows(&pins)?) } else { None };
            let pods = if pods { Some(status::pods(&data_dir, &report).map_err(anyhow::Error::msg)?) } else { None };
            let policy = match &policy {
                Some(pod) => {
                    let path = PolicyReport::path(&data_dir);
                    let all = PolicyReport::read(&path)
                        .context("no NetworkPolicy report: is the agent running with --kubernetes here?")?;
                    let view = all.pods.get(pod).cloned().with_context(|| {
                        format!("pod {pod} is not on this node, host-network, or not known to the agent yet")
                    })?;
                    Some((pod.clone(), view))
                }
                None => None,
            };
            if json {
                let mut v = report.to_json();
                if let Some(rows) = &pods {
                    v["pods"] = status::pods_json(rows);
                }
                if let Some(rows) = &services {
                    v["services"] = service_table::to_json(rows, &pins);
                }
                if let Some((pod, view)) = &policy {
                    v["policy"] = serde_json::json!({"pod": pod, "view": view});
                }
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", report.render_text());
                if let Some(rows) = &pods {
                    print!("{}", status::render_pods(rows));
                }
                if let Some(rows) = &services {
                    print!("{}", service_table::render(rows, &pins));
                }
                if let Some((pod, view)) = &policy {
                    print!("{}", sluice_agent::policy::report::render(pod, view));
                }
            }
            let ok = if liveness { report.live() } else { report.healthy() };
            Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Monitor { pin_dir, types, ip, json, count, duration_ms, data_dir } => {
            let opts = monitor::Options {
                filter: monitor::Filter { types, ip, ifindex: None },
                json,
                count,
                duration: duration_ms.map(Duration::from_millis),
                data_dir,
            };
            monitor::run(&PinDir::new(pin_dir), &opts).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::ConnectivityTest {
            pin_dir,
            data_dir,
            pods,
            peer_metrics_port,
            service,
            world,
            node_port,
            world_netns,
            json,
        } => {
            let extra = connectivity::Extra { peer_metrics_port, pods, service, world, node_port, world_netns };
            let results = connectivity::run(&PinDir::new(pin_dir), &data_dir, &extra).await?;
            let refused = results.iter().flat_map(|r| [&r.icmp_error, &r.tcp_error]).flatten();
            if refused.into_iter().any(|e| privileges::mentions_permission(e)) {
                print_privilege_hint("connectivity-test");
            }
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
        Command::NodeInit { step } => {
            let done = match step {
                NodeInitStep::MountBpffs { path } => node_init::mount_bpffs(&path)?,
                NodeInitStep::ShareNetnsDir { path } => node_init::share_netns_dir(&path)?,
                NodeInitStep::IpForward => node_init::ip_forward()?,
                NodeInitStep::ReservePorts { data_dir, kube_proxy_replacement, node_port_range } => {
                    node_init::reserve_ports(&data_dir, kube_proxy_replacement, node_port_range)?
                }
            };
            println!("{done}");
            Ok(ExitCode::SUCCESS)
        }
    }
}
