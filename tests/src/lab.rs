//! A multi-node lab in network namespaces: the README's main job and the
//! stage of the end-to-end tests.
//!
//! ```text
//!                 LAN namespace: bridge br0 (the "switch")
//!        ┌──────────────┬──────────────┬──────────────┐
//!   node n1 (eth0)  node n2 (eth0)  node n3 (eth0)      172.30.0.<i>/24
//!    │ sluice-agent    │               │               pod CIDR 10.244.<i>.0/24
//!    ├─ pod n1p1 (eth0, via sluice-cni ADD)
//!    └─ pod n1p2
//! ```
//! With `LabOptions::subnets = 2` the nodes sit on two LANs, joined by a
//! router namespace that routes between the node networks and knows
//! nothing of pod CIDRs (so peers across it need VXLAN):
//!
//! ```text
//!   br0 172.30.0.0/24: n1, n2, ...  ── router (r0 .253 | r1 .253) ──  br1 172.31.0.0/24: ..., nN
//!       fd00:30::/64                          (::fd  |  ::fd)                fd00:31::/64
//! ```
//! In a dual-stack lab the router forwards IPv6 too (a dual-stack
//! underlay: every node reaches every other node's IPv6 address), unless
//! `LabOptions::router_ipv4_only` leaves the underlay between the node
//! networks IPv4 only; either way pods' IPv6 crosses inside VXLAN over
//! IPv4. In an IPv6-only lab the router has IPv6 alone, and pods' IPv6
//! crosses inside VXLAN over IPv6.
//! Every namespace name carries the lab id (pid + counter), so labs run side
//! by side. Each node's agent pins under its own directory of the root bpffs.
//! `Lab` tears everything down on drop unless `persist()`ed (xtask's
//! `lab up` persists; `lab down` loads the state file and tears down).
use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::{run, try_run, unique};

pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// Dual-stack labs (`LabOptions::dual_stack`): the IPv6 cluster range (node
/// `i`'s pod CIDR is `fd00:244:0:<i>::/64`) and the LAN's IPv6 prefix (node
/// `i` is `fd00:30::<i>`; on the second node network, `fd00:31::<i>`).
pub const CLUSTER_CIDR6: &str = "fd00:244::/56";
pub const LAN6_PREFIX: &str = "fd00:30::";
/// The second node network's IPv6 prefix (`subnets = 2` and dual-stack).
/// The router between the node networks forwards IPv6 between the two
/// prefixes (node addresses), not pods' IPv6, which crosses it inside
/// VXLAN over IPv4; with `LabOptions::router_ipv4_only` it has no IPv6.
pub const LAN2_6_PREFIX: &str = "fd00:31::";
pub const LAN_PREFIX: &str = "172.30.0";
/// The second node network, with `LabOptions::subnets = 2`.
pub const LAN2_PREFIX: &str = "172.31.0";
/// The router's host number on each node network.
pub const ROUTER_HOST: u8 = 253;
pub const ECHO_PORT: u16 = 7777;

#[derive(Clone)]
pub struct LabOptions {
    pub nodes: usize,
    pub pods_per_node: usize,
    /// MTU of the LAN (node uplinks); pods follow it.
    pub mtu: u32,
    /// Where state, peers file, agent logs and IPAM state live.
    pub dir: PathBuf,
    /// Where `sluice-agent` and `sluice-cni` are.
    pub bin_dir: PathBuf,
    /// Lab id used in every name; unique per process and call by default.
    pub id: String,
    /// Membership from Kubernetes: a test API server on the LAN
    /// (`LAN_API_ADDR`) holds a Node per lab node, and agents run with
    /// `--kubernetes` instead of a peers file.
    pub kubernetes: bool,
    /// With `kubernetes`: leave `--pod-cidr` out, so agents take it from
    /// their Node (as the DaemonSet does).
    pub pod_cidr_from_node: bool,
    /// Give every node an IPv4 default route out of its uplink (as real
    /// nodes have), so agents can pick the uplink themselves.
    pub default_route: bool,
    /// Run agents with this command line and environment instead of the
    /// lab's own (e.g. exactly what the DaemonSet gives them).
    pub agent_command: Option<AgentCommandFn>,
    /// false: LAN and nodes only, no agents and no pods (a baseline for
    /// another pod network to be built on, as the benchmarks do).
    pub sluice: bool,
    /// Model a real cluster around the pod network (`crate::cluster`): a
    /// world on the LAN, host-network servers, kube-proxy's rules for the
    /// demo Services. `cargo xtask lab up` turns it on.
    pub cluster_model: bool,
    /// Extra `sluice-agent run` arguments for every agent (the state's
    /// `extra_agent_args` from the start).
    pub extra_agent_args: Vec<String>,
    /// Services in eBPF: agents run with `--kube-proxy-replacement=true`
    /// (so with `kubernetes`), each attached to its node's own cgroup
    /// (`Lab::node_cgroup`), where the node's pods' processes run.
    pub kube_proxy_replacement: bool,
    /// Node networks: 1 (one LAN, the default) or 2 (two LANs and a
    /// router between them; the first half of the nodes on `LAN_PREFIX`,
    /// the rest on `LAN2_PREFIX`).
    pub subnets: usize,
    /// Dual-stack (`cargo xtask lab up --ip-family dual`): IPv6 on the LAN,
    /// the nodes and the pods, agents with `--ip-family dual`, every pod
    /// with an IPv6 address too. With `subnets = 2`, each node network has
    /// its own IPv6 prefix and the router forwards both families (`::fd`
    /// on each; every node has an IPv6 route to the other network
    /// through it).
    pub dual_stack: bool,
    /// With `subnets = 2` and `dual_stack`: the router forwards IPv4 only
    /// (no IPv6 between the node networks at all: an IPv4-only underlay,
    /// which pods' IPv6 still crosses inside VXLAN).
    pub router_ipv4_only: bool,
    /// IPv6-only pods (`cargo xtask lab up --ip-family ipv6`): as
    /// `dual_stack`, but agents with `--ip-family ipv6` and no `--pod-cidr`,
    /// no `podCIDR` nor `nodeIP` in the peers file, pods with an IPv6
    /// address only, and nodes with no IPv4 address either (`Node::ip`
    /// empty). With `kubernetes`, the API server on the LAN's IPv6
    /// (`LAN_API_ADDR6`) and IPv6-only Node objects (one subnet). With
    /// `subnets = 2` (a peers file) the router forwards IPv6 alone (an
    /// IPv6-only underlay: peers across it are reached through VXLAN over
    /// IPv6).
    pub ipv6_only: bool,
    /// With `ipv6_only`: the nodes' uplinks have an IPv4 address all the
    /// same (`<LAN_PREFIX>.<i>/24`, not in `Node::ip`: pods and peers stay
    /// IPv6-only), as a node whose pods are IPv6-only but which reaches
    /// IPv4 destinations itself: what `--nat64` masquerades to.
    pub ipv4_uplink: bool,
}

/// A lab node's Node object as the API server holds it: its pod CIDR(s)
/// in `spec.podCIDRs` and its InternalIP(s), IPv4 first, as a dual-stack
/// kubelet and the node IPAM controller leave them. An IPv6-only node's
/// are IPv6's alone.
pub fn node_object_of(n: &Node) -> serde_json::Value {
    if let (true, Some(ip6), Some(cidr6)) = (n.ip.is_empty(), &n.ip6, &n.pod_cidr6) {
        return crate::apiserver::node_object(&n.name, ip6, Some(cidr6), 0);
    }
    let mut obj = crate::apiserver::node_object(&n.name, &n.ip, Some(&n.pod_cidr), 0);
    if let (Some(ip6), Some(cidr6)) = (&n.ip6, &n.pod_cidr6) {
        obj["spec"]["podCIDRs"] = serde_json::json!([n.pod_cidr, cidr6]);
        let addresses = obj["status"]["addresses"].as_array_mut().expect("node_object has addresses");
        addresses.insert(1, serde_json::json!({"type": "InternalIP", "address": ip6}));
    }
    obj
}

/// Builds a node's agent command: (argv, extra environment).
pub type AgentCommandFn =
    std::sync::Arc<dyn Fn(&LabState, &Node) -> (Vec<String>, Vec<(String, String)>) + Send + Sync>;

impl LabOptions {
    pub fn new(nodes: usize, pods_per_node: usize, bin_dir: PathBuf) -> Self {
        let id = unique("");
        Self {
            nodes,
            pods_per_node,
            mtu: 1500,
            dir: std::env::temp_dir().join(format!("sluice-lab-{id}")),
            bin_dir,
            id,
            kubernetes: false,
            pod_cidr_from_node: false,
            default_route: false,
            agent_command: None,
            sluice: true,
            cluster_model: false,
            extra_agent_args: Vec::new(),
            kube_proxy_replacement: false,
            subnets: 1,
            dual_stack: false,
            router_ipv4_only: false,
            ipv6_only: false,
            ipv4_uplink: false,
        }
    }
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Pod {
    pub name: String,
    pub netns: String,
    pub ip: String,
    pub listener_pid: Option<u32>,
    /// Its IPv6 address, in a dual-stack lab.
    #[serde(default)]
    pub ip6: Option<String>,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Node {
    pub name: String,
    pub netns: String,
    pub ip: String,
    pub pod_cidr: String,
    /// Its IPv6 address and pod CIDR, in a dual-stack lab.
    #[serde(default)]
    pub ip6: Option<String>,
    #[serde(default)]
    pub pod_cidr6: Option<String>,
    pub pin_dir: PathBuf,
    pub dir: PathBuf,
    pub agent_pid: Option<u32>,
    pub pods: Vec<Pod>,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct LabState {
    pub id: String,
    pub dir: PathBuf,
    pub bin_dir: PathBuf,
    pub mtu: u32,
    pub lan_netns: String,
    pub pin_root: PathBuf,
    pub nodes: Vec<Node>,
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    #[serde(default)]
    pub pod_cidr_from_node: bool,
    /// Extra `sluice-agent run` arguments for every agent started from now on.
    #[serde(default)]
    pub extra_agent_args: Vec<String>,
    /// Background processes beside pods and agents (the cluster model's
    /// servers): each leads its own process group, killed whole on `down`.
    #[serde(default)]
    pub helper_pids: Vec<u32>,
    /// Namespaces beside nodes and pods (the world), deleted on `down`.
    #[serde(default)]
    pub helper_netns: Vec<String>,
    /// With `LabOptions::kube_proxy_replacement`: the lab's cgroup; each
    /// node has a directory below it.
    #[serde(default)]
    pub cgroup_root: Option<PathBuf>,
    /// With `LabOptions::subnets = 2`: the router between the node
    /// networks (also in `helper_netns`, so `down` deletes it).
    #[serde(default)]
    pub router_netns: Option<String>,
    /// Node networks (1 or 2).
    #[serde(default = "one")]
    pub subnets: usize,
    /// `LabOptions::dual_stack`.
    #[serde(default)]
    pub dual_stack: bool,
    /// The router forwards IPv6 (dual-stack labs with two node networks,
    /// unless `LabOptions::router_ipv4_only`).
    #[serde(default)]
    pub router6: bool,
    /// `LabOptions::ipv6_only`.
    #[serde(default)]
    pub ipv6_only: bool,
    /// `LabOptions::ipv4_uplink`.
    #[serde(default)]
    pub ipv4_uplink: bool,
}

impl LabState {
    /// Do the lab's pods and nodes have IPv6 (dual-stack or IPv6-only)?
    pub fn has_ipv6(&self) -> bool {
        self.dual_stack || self.ipv6_only
    }
}

fn one() -> usize {
    1
}

/// The prefix (first three octets) of node network `subnet`.
pub fn subnet_prefix(subnet: usize) -> &'static str {
    if subnet == 0 {
        LAN_PREFIX
    } else {
        LAN2_PREFIX
    }
}

/// The IPv6 prefix of node network `subnet` (dual-stack labs).
pub fn subnet_prefix6(subnet: usize) -> &'static str {
    if subnet == 0 {
        LAN6_PREFIX
    } else {
        LAN2_6_PREFIX
    }
}

/// The router's IPv6 address on node network `subnet` (`<prefix>fd`, its
/// IPv4 host number), when it forwards IPv6.
pub fn router_ip6(subnet: usize) -> String {
    format!("{}{ROUTER_HOST:x}", subnet_prefix6(subnet))
}

/// Where the test API server listens: the LAN bridge's own address.
pub const LAN_API_ADDR: &str = "172.30.0.254:6443";
/// Where it listens in an IPv6-only lab (whose nodes have no IPv4 to
/// reach `LAN_API_ADDR` from): the LAN bridge's IPv6 address.
pub const LAN_API_ADDR6: &str = "[fd00:30::fc]:6443";

pub struct Lab {
    pub state: LabState,
    /// The test API server, with `LabOptions::kubernetes`.
    pub api: Option<crate::apiserver::ApiServer>,
    agent_command: Option<AgentCommandFn>,
    persist: bool,
}

/// A command run inside network namespace `netns` (only the network: the
/// root bpffs stays visible, unlike with `ip netns exec`).
pub fn ns_cmd(netns: &str, args: &[&str]) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{netns}")).arg("--").args(args);
    c
}

pub fn ns_exec(netns: &str, args: &[&str]) -> Result<String> {
    run(&mut ns_cmd(netns, args))
}

/// Create network namespace `name` under /run/netns, the one way the tests
/// and the lab make a namespace: IPv6 off (no router solicitations or MLD to
/// disturb counts), loopback up. If a step after `ip netns add` fails, the
/// namespace is deleted again. Whoever calls this owns the namespace: the lab
/// records it in its state and deletes it in `down`; `crate::Netns` deletes
/// it on drop.
pub fn add_netns(name: &str) -> Result<()> {
    run(Command::new("ip").args(["netns", "add", name]))?;
    let configure = || -> Result<()> {
        ns_exec(name, &["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])?;
        ns_exec(name, &["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"])?;
        ns_exec(name, &["ip", "link", "set", "lo", "up"])?;
        Ok(())
    };
    configure().inspect_err(|_| del_netns(name))
}

/// Turn IPv6 on in namespace `name` (made by `add_netns` with it off):
/// for every interface there and every one made later.
pub fn enable_ipv6_in(name: &str) -> Result<()> {
    ns_exec(name, &["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=0"])?;
    ns_exec(name, &["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=0"])?;
    Ok(())
}

/// Wait until no IPv6 address on `dev` in `netns` is tentative: duplicate
/// address detection is over for its link-local address too (the node's
/// global one is added `nodad`). Until then Linux sends no neighbour
/// solicitation for a packet whose source is not one of the device's own
/// addresses (`ndisc_send_ns` takes a non-tentative link-local as the
/// source or sends nothing): every pod packet the node forwards to a
/// neighbour not yet resolved, by the stack or by `bpf_redirect_neigh`,
/// waits in the neighbour's queue, and is dropped with it if the three
/// solicitations (1 s apart) all fall inside DAD. A real node's uplink came
/// up at boot; a lab's came up a second before its first pod's traffic.
/// An address that failed DAD is an error.
pub fn wait_dad_done(netns: &str, dev: &str, limit: Duration) -> Result<()> {
    let start = Instant::now();
    loop {
        let addrs = ns_exec(netns, &["ip", "-6", "-o", "addr", "show", "dev", dev])?;
        if let Some(failed) = addrs.lines().find(|l| l.contains("dadfailed")) {
            bail!("{netns}: duplicate address detection failed on {dev}: {failed}");
        }
        if !addrs.lines().any(|l| l.contains("tentative")) {
            return Ok(());
        }
        if start.elapsed() > limit {
            bail!("{netns}: {dev} still has a tentative address after {limit:?}: {addrs}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGKILL every process whose network namespace is `name` (an agent
/// someone restarted by hand, a server a test forgot), and wait for them.
pub fn kill_processes_in(name: &str) {
    use std::os::unix::fs::MetadataExt;
    let Ok(ns) = fs::metadata(Path::new("/run/netns").join(name)) else {
        return;
    };
    let Ok(procs) = fs::read_dir("/proc") else {
        return;
    };
    for entry in procs.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let same = fs::metadata(entry.path().join("ns/net")).is_ok_and(|m| m.ino() == ns.ino() && m.dev() == ns.dev());
        if same && pid != std::process::id() {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).output();
            wait_gone(pid, Duration::from_secs(2));
        }
    }
}

/// Delete network namespace `name`, if it exists.
pub fn del_netns(name: &str) {
    let _ = Command::new("ip").args(["netns", "del", name]).output();
}

/// Start a process in the background, detached, output to `log`.
fn spawn_logged(mut cmd: Command, log: &Path) -> Result<u32> {
    let out = fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
    let err = out.try_clone()?;
    use std::os::unix::process::CommandExt;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err).process_group(0);
    let child = cmd.spawn().context("spawn")?;
    Ok(child.id())
}

fn kill(pid: u32) {
    let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).output();
}

fn wait_gone(pid: u32, timeout: Duration) {
    crate::process::wait_gone(pid, timeout)
}

impl Lab {
    /// Build the whole lab. On any failure, everything made so far is removed.
    pub fn up(opts: &LabOptions) -> Result<Self> {
        if opts.nodes == 0 || opts.nodes > 200 {
            bail!("--nodes must be between 1 and 200");
        }
        if opts.pods_per_node > 200 {
            bail!("--pods-per-node must be at most 200");
        }
        fs::create_dir_all(&opts.dir).with_context(|| format!("create {}", opts.dir.display()))?;
        let bin_dir = fs::canonicalize(&opts.bin_dir).context("binary directory")?;
        let mut lab = Lab {
            state: LabState {
                id: opts.id.clone(),
                dir: opts.dir.clone(),
                bin_dir,
                mtu: opts.mtu,
                lan_netns: format!("sl{}lan", opts.id),
                pin_root: PathBuf::from(format!("/sys/fs/bpf/sluice-lab-{}", opts.id)),
                nodes: Vec::new(),
                kubeconfig: None,
                pod_cidr_from_node: opts.pod_cidr_from_node,
                extra_agent_args: opts.extra_agent_args.clone(),
                helper_pids: Vec::new(),
                helper_netns: Vec::new(),
                cgroup_root: None,
                router_netns: None,
                subnets: opts.subnets,
                dual_stack: opts.dual_stack,
                router6: opts.subnets > 1 && (opts.ipv6_only || (opts.dual_stack && !opts.router_ipv4_only)),
                ipv6_only: opts.ipv6_only,
                ipv4_uplink: opts.ipv4_uplink,
            },
            api: None,
            agent_command: opts.agent_command.clone(),
            persist: false,
        };
        if opts.kube_proxy_replacement {
            if !opts.kubernetes {
                bail!("kube_proxy_replacement needs kubernetes (Services come from the API server)");
            }
            lab.state.cgroup_root = Some(crate::cgroups::cgroup2_mount()?.join(format!("sluice-lab-{}", opts.id)));
        }
        if opts.ipv6_only && opts.subnets > 1 && opts.kubernetes {
            bail!(
                "an IPv6-only lab with two subnets has a peers file (the API server is not routed across the router)"
            );
        }
        if !(1..=2).contains(&opts.subnets) || opts.nodes < opts.subnets {
            bail!("--subnets must be 1 or 2, and no more than the nodes");
        }
        lab.save()?;
        lab.build_lan()?;
        if opts.subnets > 1 {
            lab.build_router()?;
        }
        for i in 1..=opts.nodes {
            let subnet = (i - 1) * opts.subnets / opts.nodes;
            lab.add_node(i, subnet)?;
            let netns = lab.state.nodes[i - 1].netns.clone();
            if opts.subnets > 1 {
                // The other node network through the router; the default
                // route too when asked for (real nodes across a router).
                // (An IPv6-only lab's nodes and router have no IPv4.)
                let router = format!("{}.{ROUTER_HOST}", subnet_prefix(subnet));
                let other = format!("{}.0/24", subnet_prefix(1 - subnet));
                if !opts.ipv6_only {
                    ns_exec(&netns, &["ip", "route", "add", &other, "via", &router, "dev", "eth0"])?;
                    if opts.default_route {
                        ns_exec(&netns, &["ip", "route", "add", "default", "via", &router, "dev", "eth0"])?;
                    }
                }
                if lab.state.router6 {
                    // The other network's IPv6 through the router too.
                    let other6 = format!("{}/64", subnet_prefix6(1 - subnet));
                    ns_exec(&netns, &["ip", "-6", "route", "add", &other6, "via", &router_ip6(subnet), "dev", "eth0"])?;
                }
            } else if opts.default_route {
                ns_exec(&netns, &["ip", "route", "add", "default", "dev", "eth0"])?;
            }
        }
        lab.write_peers()?;
        if !opts.sluice {
            return Ok(lab);
        }
        if opts.kubernetes {
            let api_addr = if opts.ipv6_only {
                // The nodes have only IPv6: so has the API server.
                let ip6 = LAN_API_ADDR6.trim_start_matches('[').split(']').next().unwrap_or_default();
                let addr = format!("{ip6}/64");
                ns_exec(&lab.state.lan_netns, &["ip", "-6", "addr", "add", &addr, "dev", "br0", "nodad"])?;
                LAN_API_ADDR6
            } else {
                let ip = LAN_API_ADDR.split(':').next().unwrap_or_default();
                ns_exec(&lab.state.lan_netns, &["ip", "addr", "add", &format!("{ip}/24"), "dev", "br0"])?;
                LAN_API_ADDR
            };
            if opts.subnets > 1 {
                // Nodes on the second network reach the API server through the router.
                let via = format!("{LAN_PREFIX}.{ROUTER_HOST}");
                let other = format!("{LAN2_PREFIX}.0/24");
                ns_exec(&lab.state.lan_netns, &["ip", "route", "add", &other, "via", &via, "dev", "br0"])?;
            }
            let api = crate::apiserver::ApiServer::start(api_addr, Some(&lab.state.lan_netns))?;
            for n in &lab.state.nodes {
                api.upsert(crate::apiserver::Kind::Node, node_object_of(n));
            }
            let kubeconfig = lab.state.dir.join("kubeconfig");
            api.write_kubeconfig(&kubeconfig)?;
            lab.state.kubeconfig = Some(kubeconfig);
            lab.api = Some(api);
            lab.save()?;
        }
        for i in 0..opts.nodes {
            lab.start_agent(i)?;
        }
        for i in 0..opts.nodes {
            lab.wait_agent_ready(i)?;
        }
        for i in 0..opts.nodes {
            for p in 1..=opts.pods_per_node {
                lab.add_pod(i, &format!("{}p{p}", lab.state.nodes[i].name))?;
            }
        }
        if lab.state.has_ipv6() {
            for node in &lab.state.nodes {
                wait_dad_done(&node.netns, "eth0", crate::patience(Duration::from_secs(10)))?;
            }
            // The router solicits neighbours for what it forwards, as the
            // nodes do (see `wait_dad_done`).
            if let Some(router) = lab.state.router_netns.as_ref().filter(|_| lab.state.router6) {
                for subnet in 0..lab.state.subnets {
                    wait_dad_done(router, &format!("r{subnet}"), crate::patience(Duration::from_secs(10)))?;
                }
            }
        }
        if opts.cluster_model {
            crate::cluster::install(&mut lab)?;
        }
        Ok(lab)
    }

    /// Start a background helper process (its own process group), killed
    /// with its children on `down`.
    pub fn spawn_helper(&mut self, cmd: Command, name: &str) -> Result<u32> {
        let pid = spawn_logged(cmd, &self.state.dir.join(format!("{name}.log")))?;
        self.state.helper_pids.push(pid);
        self.save()?;
        Ok(pid)
    }

    /// Create a namespace that `down` deletes.
    pub fn add_helper_netns(&mut self, name: &str) -> Result<()> {
        self.state.helper_netns.push(name.to_string());
        self.save()?;
        add_netns(name)
    }

    pub fn state_file(dir: &Path) -> PathBuf {
        dir.join("lab.json")
    }

    fn save(&self) -> Result<()> {
        fs::write(Self::state_file(&self.state.dir), serde_json::to_vec_pretty(&self.state)?)?;
        Ok(())
    }

    /// Keep everything after this `Lab` is dropped (for `xtask lab up`).
    pub fn persist(mut self) -> Result<()> {
        self.save()?;
        self.persist = true;
        Ok(())
    }

    pub fn load(dir: &Path) -> Result<Self> {
        let bytes = fs::read(Self::state_file(dir))
            .with_context(|| format!("no lab state in {} (is a lab up?)", dir.display()))?;
        Ok(Lab { state: serde_json::from_slice(&bytes)?, api: None, agent_command: None, persist: true })
    }

    fn build_lan(&mut self) -> Result<()> {
        let lan = &self.state.lan_netns;
        add_netns(lan)?;
        ns_exec(lan, &["ip", "link", "add", "br0", "type", "bridge"])?;
        ns_exec(lan, &["ip", "link", "set", "br0", "mtu", &self.state.mtu.to_string(), "up"])?;
        if self.state.has_ipv6() {
            enable_ipv6_in(lan)?;
        }
        if self.state.subnets > 1 {
            ns_exec(lan, &["ip", "link", "add", "br1", "type", "bridge"])?;
            ns_exec(lan, &["ip", "link", "set", "br1", "mtu", &self.state.mtu.to_string(), "up"])?;
        }
        Ok(())
    }

    /// The router between the node networks: `r<s>` on bridge `br<s>` with
    /// `<prefix>.253` (and `<prefix6>fd` when it forwards IPv6), forwarding
    /// on, no route to any pod CIDR.
    fn build_router(&mut self) -> Result<()> {
        let router = format!("sl{}rt", self.state.id);
        self.state.router_netns = Some(router.clone());
        self.add_helper_netns(&router)?;
        if self.state.router6 {
            enable_ipv6_in(&router)?;
        }
        let lan = self.state.lan_netns.clone();
        let mtu = self.state.mtu.to_string();
        for subnet in 0..self.state.subnets {
            let (inner, outer) = (format!("r{subnet}"), format!("rt{subnet}"));
            run(Command::new("ip").args([
                "link", "add", &inner, "netns", &router, "type", "veth", "peer", "name", &outer, "netns", &lan,
            ]))?;
            ns_exec(&lan, &["ip", "link", "set", &outer, "master", &format!("br{subnet}"), "mtu", &mtu, "up"])?;
            ns_exec(&router, &["ip", "link", "set", &inner, "mtu", &mtu, "up"])?;
            if !self.state.ipv6_only {
                let addr = format!("{}.{ROUTER_HOST}/24", subnet_prefix(subnet));
                ns_exec(&router, &["ip", "addr", "add", &addr, "dev", &inner])?;
            }
            if self.state.router6 {
                let addr6 = format!("{}/64", router_ip6(subnet));
                ns_exec(&router, &["ip", "-6", "addr", "add", &addr6, "dev", &inner, "nodad"])?;
            }
        }
        if !self.state.ipv6_only {
            ns_exec(&router, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        }
        if self.state.router6 {
            ns_exec(&router, &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])?;
        }
        Ok(())
    }

    fn add_node(&mut self, i: usize, subnet: usize) -> Result<()> {
        let name = format!("n{i}");
        let netns = format!("sl{}{name}", self.state.id);
        let dir = self.state.dir.join(&name);
        fs::create_dir_all(&dir)?;
        let node = Node {
            name: name.clone(),
            netns: netns.clone(),
            // An IPv6-only lab's nodes have no IPv4 address.
            ip: if self.state.ipv6_only { String::new() } else { format!("{}.{i}", subnet_prefix(subnet)) },
            pod_cidr: format!("10.244.{i}.0/24"),
            ip6: self
                .state
                .has_ipv6()
                .then(|| format!("{}{i:x}", if subnet == 0 { LAN6_PREFIX } else { LAN2_6_PREFIX })),
            pod_cidr6: self.state.has_ipv6().then(|| format!("fd00:244:0:{i:x}::/64")),
            pin_dir: self.state.pin_root.join(&name),
            dir,
            agent_pid: None,
            pods: Vec::new(),
        };
        add_netns(&netns)?;
        self.state.nodes.push(node.clone());
        self.save()?;
        if self.state.has_ipv6() {
            enable_ipv6_in(&netns)?;
        }
        if let Some(cgroup) = self.node_cgroup(&node) {
            fs::create_dir_all(&cgroup).with_context(|| format!("create cgroup {}", cgroup.display()))?;
        }
        let lan = &self.state.lan_netns;
        let mtu = self.state.mtu.to_string();
        run(Command::new("ip")
            .args(["link", "add", "eth0", "netns", &netns, "type", "veth", "peer", "name", &name, "netns", lan]))?;
        ns_exec(lan, &["ip", "link", "set", &name, "master", &format!("br{subnet}"), "mtu", &mtu, "up"])?;
        ns_exec(&netns, &["ip", "link", "set", "eth0", "mtu", &mtu, "up"])?;
        if !node.ip.is_empty() {
            ns_exec(&netns, &["ip", "addr", "add", &format!("{}/24", node.ip), "dev", "eth0"])?;
        } else if self.state.ipv4_uplink {
            let ip = format!("{}.{i}/24", subnet_prefix(subnet));
            ns_exec(&netns, &["ip", "addr", "add", &ip, "dev", "eth0"])?;
        }
        if let Some(ip6) = &node.ip6 {
            ns_exec(&netns, &["ip", "-6", "addr", "add", &format!("{ip6}/64"), "dev", "eth0", "nodad"])?;
        }
        Ok(())
    }

    pub fn peers_file(&self) -> PathBuf {
        self.state.dir.join("peers.json")
    }

    /// Write the peers file from `nodes` (all by default).
    pub fn write_peers_of(&self, nodes: &[&Node]) -> Result<()> {
        let peers: Vec<Value> = nodes
            .iter()
            .map(|n| {
                let mut peer = json!({"name": n.name});
                if !self.state.ipv6_only {
                    peer["nodeIP"] = json!(n.ip);
                    peer["podCIDR"] = json!(n.pod_cidr);
                }
                if let (Some(ip6), Some(cidr6)) = (&n.ip6, &n.pod_cidr6) {
                    peer["nodeIP6"] = json!(ip6);
                    peer["podCIDR6"] = json!(cidr6);
                }
                peer
            })
            .collect();
        let tmp = self.state.dir.join("peers.json.tmp");
        fs::write(&tmp, serde_json::to_vec_pretty(&json!({ "peers": peers }))?)?;
        fs::rename(&tmp, self.peers_file())?;
        Ok(())
    }

    pub fn write_peers(&self) -> Result<()> {
        let all: Vec<&Node> = self.state.nodes.iter().collect();
        self.write_peers_of(&all)
    }

    pub fn agent_args(&self, node: &Node) -> Vec<String> {
        let bin = self.state.bin_dir.join("sluice-agent");
        let mut args: Vec<String> = vec![
            bin.display().to_string(),
            "run".into(),
            "--node-name".into(),
            node.name.clone(),
            "--uplink".into(),
            "eth0".into(),
            "--pin-dir".into(),
            node.pin_dir.display().to_string(),
            "--data-dir".into(),
            Self::data_dir(node).display().to_string(),
            "--cni-conf-dir".into(),
            node.dir.join("cni").display().to_string(),
            // Sweep often and soon, so tests of crash cleanup stay short.
            "--sweep-interval-ms".into(),
            "500".into(),
            "--sweep-grace-ms".into(),
            "4000".into(),
            "--health-netns".into(),
            Self::health_netns(node),
            "--service-cidr".into(),
            crate::cluster::SERVICE_CIDR.into(),
        ];
        // An IPv6-only node has no IPv4 cluster range.
        if !self.state.ipv6_only {
            args.extend(["--cluster-cidr".into(), CLUSTER_CIDR.into()]);
        }
        let cidr_from_node = self.state.kubeconfig.is_some() && self.state.pod_cidr_from_node;
        if !cidr_from_node && !self.state.ipv6_only {
            args.extend(["--pod-cidr".into(), node.pod_cidr.clone()]);
        }
        if let Some(cidr6) = &node.pod_cidr6 {
            let family = if self.state.ipv6_only { "ipv6" } else { "dual" };
            args.extend([
                "--ip-family".into(),
                family.into(),
                "--pod-cidr6".into(),
                cidr6.clone(),
                "--cluster-cidr6".into(),
                CLUSTER_CIDR6.into(),
            ]);
        }
        if self.state.kubeconfig.is_some() {
            args.push("--kubernetes".into());
        } else {
            args.extend(["--peers-file".into(), self.peers_file().display().to_string()]);
        }
        if let Some(cgroup) = self.node_cgroup(node) {
            args.extend(["--kube-proxy-replacement=true".into(), "--cgroup-root".into(), cgroup.display().to_string()]);
        }
        // A test may ask for its own pace (clap refuses the flag twice).
        if !self.state.extra_agent_args.iter().any(|a| a == "--resync-ms") {
            args.extend(["--resync-ms".into(), "200".into()]);
        }
        args.extend(self.state.extra_agent_args.iter().cloned());
        args
    }

    /// The node's cgroup (with `kube_proxy_replacement`): its socket load
    /// balancer covers the processes in it.
    pub fn node_cgroup(&self, node: &Node) -> Option<PathBuf> {
        self.state.cgroup_root.as_ref().map(|root| root.join(&node.name))
    }

    /// A command in `netns` run as a process of `node` (in its cgroup,
    /// when the lab has them): a pod's or the node's own client.
    pub fn node_cmd(&self, node: &Node, netns: &str, args: &[&str]) -> Command {
        let mut cmd = ns_cmd(netns, args);
        if let Some(cgroup) = self.node_cgroup(node) {
            crate::cgroups::place(&mut cmd, &cgroup);
        }
        cmd
    }

    /// Start (or restart) node `i`'s agent in the background.
    pub fn start_agent(&mut self, i: usize) -> Result<()> {
        let node = self.state.nodes[i].clone();
        let (args, extra_env) = match &self.agent_command {
            Some(f) => f(&self.state, &node),
            None => (self.agent_args(&node), Vec::new()),
        };
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let log = node.dir.join("agent.log");
        // Append across restarts so the whole history is in one place.
        let pid = {
            let out = fs::OpenOptions::new().create(true).append(true).open(&log)?;
            let err = out.try_clone()?;
            use std::os::unix::process::CommandExt;
            let mut cmd = ns_cmd(&node.netns, &args);
            if let Some(kubeconfig) = &self.state.kubeconfig {
                cmd.env("KUBECONFIG", kubeconfig);
            }
            cmd.envs(extra_env);
            cmd.stdin(Stdio::null()).stdout(out).stderr(err).process_group(0);
            cmd.spawn().context("start sluice-agent")?.id()
        };
        self.state.nodes[i].agent_pid = Some(pid);
        self.save()
    }

    /// SIGKILL node `i`'s agent (the datapath must carry on without it).
    pub fn kill_agent(&mut self, i: usize) -> Result<()> {
        if let Some(pid) = self.state.nodes[i].agent_pid.take() {
            // The whole process group (the agent was started as its
            // leader): whatever the command forked goes too.
            let _ = Command::new("kill").args(["-KILL", "--", &format!("-{pid}")]).output();
            if let Err(left) = crate::process::wait_group_gone(pid, crate::patience(Duration::from_secs(10))) {
                bail!("node {i}'s agent (process group {pid}) still runs 10 s after SIGKILL: {left:?}");
            }
        }
        self.save()
    }

    /// The name of node's health endpoint namespace (made by its agent).
    pub fn health_netns(node: &Node) -> String {
        format!("{}h", node.netns)
    }

    /// `sluice-agent connectivity-test --json <extra>` on node `i`:
    /// (exit success, parsed results).
    pub fn connectivity_test(&self, i: usize, extra: &[&str]) -> Result<(bool, Value)> {
        let node = &self.state.nodes[i];
        let bin = self.state.bin_dir.join("sluice-agent").display().to_string();
        let pin_dir = node.pin_dir.display().to_string();
        let data_dir = Self::data_dir(node).display().to_string();
        let mut args =
            vec![bin.as_str(), "connectivity-test", "--json", "--pin-dir", &pin_dir, "--data-dir", &data_dir];
        args.extend(extra);
        let out = try_run(&mut ns_cmd(&node.netns, &args))?;
        let v = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("connectivity-test output: {}", String::from_utf8_lossy(&out.stderr)))?;
        Ok((out.status.success(), v))
    }

    pub fn conflist_path(node: &Node) -> PathBuf {
        node.dir.join("cni").join("10-sluice.conflist")
    }

    /// The node agent's `--data-dir` (the DaemonSet's is mapped here too).
    pub fn data_dir(node: &Node) -> PathBuf {
        node.dir.join("data")
    }

    /// Wait until the agent process the lab last started on node `i` is
    /// ready: the agent state file names *its* pid (an earlier agent's file,
    /// or its conflist, say nothing about this one) and the conflist exists.
    /// Fails at once if that process exits, and after 30 s. Call it for every
    /// node whose agent was (re)started.
    pub fn wait_agent_ready(&self, i: usize) -> Result<()> {
        let node = &self.state.nodes[i];
        let pid = node.agent_pid.with_context(|| format!("no agent started on {}", node.name))?;
        wait_ready(pid, &Self::data_dir(node), &Self::conflist_path(node), crate::patience(Duration::from_secs(30)))
            .with_context(|| format!("agent on {}", node.name))?;
        // A suite run with SLUICE_ATTACH (the agents' `--attach`) must run
        // in that mode, never fall back unseen.
        if let Ok(want) = std::env::var("SLUICE_ATTACH") {
            let state: Value = serde_json::from_slice(&fs::read(Self::data_dir(node).join("agent-state.json"))?)?;
            let got = state["attachMode"].as_str().unwrap_or_default();
            if want != "auto" && got != want {
                bail!("SLUICE_ATTACH={want}, but the agent on {} attaches with '{got}'", node.name);
            }
        }
        Ok(())
    }

    /// The plugin config a runtime would pass for this node: the conflist's
    /// `plugins[0]` with the network's `name` and `cniVersion`.
    pub fn plugin_config(node: &Node) -> Result<Value> {
        let conflist: Value = serde_json::from_slice(&fs::read(Self::conflist_path(node))?)?;
        let mut conf = conflist["plugins"][0].clone();
        conf["name"] = conflist["name"].clone();
        conf["cniVersion"] = conflist["cniVersion"].clone();
        Ok(conf)
    }

    /// Call `sluice-cni` the way a runtime does, inside the node's namespace.
    pub fn cni(
        &self,
        node: &Node,
        command: &str,
        container_id: &str,
        netns: Option<&str>,
        conf: &Value,
    ) -> Result<(bool, String)> {
        let out = self.cni_call(node, &CniCall::new(command, container_id, netns, conf.clone()))?;
        Ok((out.success, out.stdout + &out.stderr))
    }

    /// A CNI call with every knob: another plugin binary, extra environment.
    pub fn cni_call(&self, node: &Node, call: &CniCall) -> Result<CniOutcome> {
        use std::io::Write;
        let bin = call.bin.clone().unwrap_or_else(|| self.state.bin_dir.join("sluice-cni"));
        let mut cmd = ns_cmd(&node.netns, &[&bin.display().to_string()]);
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", &call.command)
            .env("CNI_CONTAINERID", &call.container_id)
            .env("CNI_IFNAME", &call.ifname)
            .env("CNI_PATH", &self.state.bin_dir)
            .env("CNI_NETNS", call.netns.clone().unwrap_or_default())
            .envs(call.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("start sluice-cni")?;
        // A plugin may exit without reading its config (VERSION): a closed
        // pipe is its answer, not an error of ours.
        match child.stdin.take().expect("piped").write_all(&serde_json::to_vec(&call.conf)?) {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e).context("write plugin config"),
            _ => {}
        }
        let out = child.wait_with_output()?;
        Ok(CniOutcome {
            success: out.status.success(),
            exit_code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// A pod on node `i`: its namespace, `sluice-cni` ADD, an echo listener.
    pub fn add_pod(&mut self, i: usize, name: &str) -> Result<Pod> {
        self.add_pod_with_cni_env(i, name, &[])
    }

    /// `add_pod` with extra environment for the plugin, as a runtime sets
    /// it (`CNI_ARGS` with `K8S_POD_NAMESPACE` and `K8S_POD_NAME`).
    pub fn add_pod_with_cni_env(&mut self, i: usize, name: &str, env: &[(String, String)]) -> Result<Pod> {
        let mut pod = self.cni_add_pod(i, name, env)?;
        let node = self.state.nodes[i].clone();
        let netns = pod.netns.clone();
        // Dual-stack: one listener for both families (IPv4 as mapped
        // addresses).
        let listen = if self.state.has_ipv6() {
            format!("TCP6-LISTEN:{ECHO_PORT},ipv6only=0,reuseaddr,fork")
        } else {
            format!("TCP-LISTEN:{ECHO_PORT},reuseaddr,fork")
        };
        let cmd = self.node_cmd(&node, &netns, &["socat", &listen, &format!("SYSTEM:echo {name}")]);
        pod.listener_pid = Some(spawn_logged(cmd, &node.dir.join(format!("{name}-listener.log")))?);
        let slot = self.state.nodes[i].pods.iter_mut().find(|p| p.name == name).expect("pushed above");
        *slot = pod.clone();
        self.save()?;
        // The listener is ready once it accepts.
        let start = Instant::now();
        while !tcp_probe(&netns, "127.0.0.1", name) {
            if start.elapsed() > crate::patience(Duration::from_secs(5)) {
                bail!("echo listener in {name} did not start");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(pod)
    }

    /// A pod on node `i` with nothing running in it: its namespace and the
    /// plugin's ADD (with `env` added), returning as soon as ADD does.
    pub fn cni_add_pod(&mut self, i: usize, name: &str, env: &[(String, String)]) -> Result<Pod> {
        let node = self.state.nodes[i].clone();
        let netns = format!("sl{}{name}", self.state.id);
        add_netns(&netns)?;
        let mut pod =
            Pod { name: name.to_string(), netns: netns.clone(), ip: String::new(), listener_pid: None, ip6: None };
        self.state.nodes[i].pods.push(pod.clone());
        self.save()?;
        let conf = Self::plugin_config(&node)?;
        let mut call = CniCall::new("ADD", &netns, Some(&netns), conf);
        call.env = env.to_vec();
        let outcome = self.cni_call(&node, &call)?;
        if !outcome.success {
            bail!("sluice-cni ADD for {name} on {} failed: {}{}", node.name, outcome.stdout, outcome.stderr);
        }
        let result: Value =
            serde_json::from_str(&outcome.stdout).with_context(|| format!("ADD result: {}", outcome.stdout))?;
        let addr = result["ips"][0]["address"].as_str().context("ADD result has no address")?;
        if self.state.ipv6_only {
            // IPv6-only: the one address is the IPv6 one; `ip` stays empty
            // (no IPv4), and the pod must have no other.
            if result["ips"].as_array().map(Vec::len) != Some(1) || !addr.contains(':') {
                bail!("IPv6-only ADD result for {name} is not one IPv6 address: {result}");
            }
            enable_ipv6_in(&netns)?;
            pod.ip6 = Some(addr.split('/').next().unwrap_or_default().to_string());
        } else {
            pod.ip = addr.split('/').next().unwrap_or_default().to_string();
        }
        if self.state.dual_stack {
            // Like a Kubernetes pod: IPv6 on in its namespace (the plugin
            // turned it on for the pod's interface only).
            enable_ipv6_in(&netns)?;
            let addr6 = result["ips"][1]["address"].as_str().context("dual-stack ADD result has no IPv6 address")?;
            pod.ip6 = Some(addr6.split('/').next().unwrap_or_default().to_string());
        }
        let slot = self.state.nodes[i].pods.iter_mut().find(|p| p.name == name).expect("pushed above");
        *slot = pod.clone();
        self.save()?;
        Ok(pod)
    }

    /// Remove pod `name` of node `i`: its listener, the plugin's DEL, its
    /// namespace, its place in the state.
    pub fn remove_pod(&mut self, i: usize, name: &str) -> Result<()> {
        let node = self.state.nodes[i].clone();
        let pod =
            node.pods.iter().find(|p| p.name == name).with_context(|| format!("no pod {name} on {}", node.name))?;
        if let Some(pid) = pod.listener_pid {
            kill(pid);
            wait_gone(pid, Duration::from_secs(2));
        }
        let conf = Self::plugin_config(&node)?;
        let (ok, out) = self.cni(&node, "DEL", &pod.netns, Some(&pod.netns), &conf)?;
        del_netns(&pod.netns);
        self.state.nodes[i].pods.retain(|p| p.name != name);
        self.save()?;
        if !ok {
            bail!("sluice-cni DEL for {name} on {} failed: {out}", node.name);
        }
        Ok(())
    }

    pub fn pods(&self) -> Vec<(&Node, &Pod)> {
        self.state.nodes.iter().flat_map(|n| n.pods.iter().map(move |p| (n, p))).collect()
    }

    /// Reachability of every pod from every other: ICMP and TCP.
    pub fn matrix(&self) -> Matrix {
        let pods = self.pods();
        let mut cells = BTreeMap::new();
        for (_, src) in &pods {
            for (_, dst) in &pods {
                if src.name == dst.name {
                    continue;
                }
                let icmp = ping(&src.netns, &dst.ip);
                let tcp = tcp_probe(&src.netns, &dst.ip, &dst.name);
                cells.insert((src.name.clone(), dst.name.clone()), (icmp, tcp));
            }
        }
        Matrix { pods: pods.iter().map(|(n, p)| (n.name.clone(), p.name.clone(), p.ip.clone())).collect(), cells }
    }

    /// The IPv6 twin of `matrix` (dual-stack labs): every pod to every
    /// other's IPv6 address, ICMPv6 and TCP.
    pub fn matrix6(&self) -> Matrix {
        let pods = self.pods();
        let mut cells = BTreeMap::new();
        for (_, src) in &pods {
            for (_, dst) in &pods {
                let Some(dst_ip6) = dst.ip6.as_deref().filter(|_| src.name != dst.name) else { continue };
                let icmp = ping(&src.netns, dst_ip6);
                let tcp = tcp_probe(&src.netns, dst_ip6, &dst.name);
                cells.insert((src.name.clone(), dst.name.clone()), (icmp, tcp));
            }
        }
        let pods = pods.iter().map(|(n, p)| (n.name.clone(), p.name.clone(), p.ip6.clone().unwrap_or_default()));
        Matrix { pods: pods.collect(), cells }
    }

    /// `sluice-agent cleanup` on node `i` (its agent stopped first by the caller).
    pub fn cleanup(&self, i: usize) -> Result<String> {
        let node = &self.state.nodes[i];
        let agent = self.state.bin_dir.join("sluice-agent").display().to_string();
        ns_exec(
            &node.netns,
            &[
                &agent,
                "cleanup",
                "--pin-dir",
                &node.pin_dir.display().to_string(),
                "--data-dir",
                &Self::data_dir(node).display().to_string(),
                "--health-netns",
                &Self::health_netns(node),
            ],
        )
    }

    /// `sluice-agent status --json` for node `i` (whatever its health: the
    /// exit code says healthy or not, the JSON says everything).
    pub fn status(&self, i: usize) -> Result<Value> {
        let node = &self.state.nodes[i];
        let bin = self.state.bin_dir.join("sluice-agent");
        let out = try_run(Command::new(bin).args([
            "status",
            "--json",
            "--pin-dir",
            &node.pin_dir.display().to_string(),
            "--data-dir",
            &Self::data_dir(node).display().to_string(),
        ]))?;
        serde_json::from_slice(&out.stdout)
            .with_context(|| format!("status output: {}", String::from_utf8_lossy(&out.stdout)))
    }

    /// The device pair node `i`'s agent gives new pods (its `status`:
    /// `--device`, or what `auto` found), so a test can guard what it
    /// guards on each kind.
    pub fn pod_device(&self, i: usize) -> Result<sluice_node::pod::device::PodDevice> {
        let s = self.status(i)?;
        let name = s["agent"]["podDevice"].as_str().unwrap_or_default().to_string();
        sluice_node::pod::device::PodDevice::parse(&name)
            .with_context(|| format!("node {i}'s status names no pod device: {:?}", s["agent"]))
    }

    /// Addresses in node `i`'s endpoint map, less its own health endpoint:
    /// the pods.
    pub fn pod_endpoints(&self, i: usize) -> Result<Vec<String>> {
        let s = self.status(i)?;
        let health = s["agent"]["healthIp"].as_str().unwrap_or_default().to_string();
        Ok(s["endpoints"]
            .as_array()
            .context("endpoints")?
            .iter()
            .filter_map(|e| e["ip"].as_str())
            .filter(|ip| *ip != health)
            .map(str::to_string)
            .collect())
    }

    /// Remove everything: listeners, pods (CNI DEL), agents, namespaces, pins.
    pub fn down(&mut self) -> Result<()> {
        self.down_reporting(&mut |_| {})
    }

    /// `down`, telling `progress` what it removes as it goes (`xtask lab
    /// down` prints it with the time taken).
    pub fn down_reporting(&mut self, progress: &mut dyn FnMut(&str)) -> Result<()> {
        let mut problems = Vec::new();
        let helpers = std::mem::take(&mut self.state.helper_pids);
        if !helpers.is_empty() {
            progress(&format!("stopping {} helper processes", helpers.len()));
        }
        // Kill every group first, then wait: the waits overlap.
        for pid in &helpers {
            let _ = Command::new("kill").args(["-KILL", "--", &format!("-{pid}")]).output();
        }
        for pid in helpers {
            wait_gone(pid, Duration::from_secs(2));
        }
        let nodes = self.state.nodes.clone();
        for node in &nodes {
            let conf = Self::plugin_config(node).ok();
            for pod in &node.pods {
                progress(&format!("{}: pod {} (CNI DEL, netns {})", node.name, pod.name, pod.netns));
                if let Some(pid) = pod.listener_pid {
                    kill(pid);
                    wait_gone(pid, Duration::from_secs(2));
                }
                if let Some(conf) = &conf {
                    match self.cni(node, "DEL", &pod.netns, Some(&pod.netns), conf) {
                        Ok((true, _)) => {}
                        Ok((false, out)) => problems.push(format!("DEL {}: {out}", pod.name)),
                        Err(e) => problems.push(format!("DEL {}: {e:#}", pod.name)),
                    }
                }
                del_netns(&pod.netns);
            }
            progress(&format!("{}: agent, processes and netns {}", node.name, node.netns));
            if let Some(pid) = node.agent_pid {
                kill(pid);
                wait_gone(pid, Duration::from_secs(5));
            }
            // Whatever still runs there: an agent restarted by hand, servers.
            kill_processes_in(&node.netns);
            del_netns(&Self::health_netns(node));
            del_netns(&node.netns);
        }
        let helper_netns = std::mem::take(&mut self.state.helper_netns);
        if !helper_netns.is_empty() {
            progress(&format!("helper namespaces {}", helper_netns.join(", ")));
        }
        for ns in helper_netns {
            del_netns(&ns);
        }
        progress(&format!("LAN netns {}, cgroups, pins under {}", self.state.lan_netns, self.state.pin_root.display()));
        del_netns(&self.state.lan_netns);
        if let Some(cgroup) = self.state.cgroup_root.take() {
            crate::cgroups::remove(&cgroup);
        }
        if self.state.pin_root.exists() {
            if let Err(e) = fs::remove_dir_all(&self.state.pin_root) {
                problems.push(format!("remove pins {}: {e}", self.state.pin_root.display()));
            }
        }
        let _ = fs::remove_dir_all(&self.state.dir);
        self.state.nodes.clear();
        if problems.is_empty() {
            Ok(())
        } else {
            bail!("lab down finished with problems:\n  {}", problems.join("\n  "))
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.persist {
            if let Err(e) = self.down() {
                eprintln!("{e:#}");
            }
        }
    }
}

/// The pid in `<data_dir>/agent-state.json`, if the file is there and whole.
pub fn agent_state_pid(data_dir: &Path) -> Option<u32> {
    let bytes = fs::read(data_dir.join("agent-state.json")).ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    v["pid"].as_u64().and_then(|p| u32::try_from(p).ok())
}

/// Wait until agent process `pid` is ready: it wrote the agent state file in
/// `data_dir` (which it does on every pass of its loop, after start-up) and
/// `conflist` exists. Fails when `pid` exits first (with the log beside
/// `data_dir`, if there is one) or after `timeout`.
pub fn wait_ready(pid: u32, data_dir: &Path, conflist: &Path, timeout: Duration) -> Result<()> {
    let log = || {
        let log = data_dir.parent().map(|d| d.join("agent.log"));
        log.and_then(|l| fs::read_to_string(l).ok()).unwrap_or_default()
    };
    let start = Instant::now();
    loop {
        if agent_state_pid(data_dir) == Some(pid) && conflist.exists() {
            return Ok(());
        }
        let reaped = matches!(
            nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid as i32), Some(nix::sys::wait::WaitPidFlag::WNOHANG)),
            Ok(nix::sys::wait::WaitStatus::Exited(..)) | Ok(nix::sys::wait::WaitStatus::Signaled(..))
        );
        if reaped || !Path::new(&format!("/proc/{pid}")).exists() {
            bail!("agent (pid {pid}) exited during start:\n{}", log());
        }
        if start.elapsed() > timeout {
            bail!(
                "agent (pid {pid}) not ready after {timeout:?} (state file names pid {:?}, conflist {}):\n{}",
                agent_state_pid(data_dir),
                if conflist.exists() { "present" } else { "absent" },
                log()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Wait until a socket in `netns` listens on `port` (`proto`: "tcp" or
/// "udp"), as `ss` shows it: the readiness of a server a test just spawned.
pub fn wait_listening(netns: &str, proto: &str, port: u16) -> Result<()> {
    let flag = match proto {
        "tcp" => "-Hltn",
        "udp" => "-Hlun",
        other => bail!("wait_listening: unknown protocol {other}"),
    };
    let filter = format!("sport = :{port}");
    let start = Instant::now();
    loop {
        let out = ns_exec(netns, &["ss", flag, &filter]).unwrap_or_default();
        if !out.trim().is_empty() {
            return Ok(());
        }
        if start.elapsed() > crate::patience(Duration::from_secs(10)) {
            bail!("nothing listens on {proto}/{port} in {netns} after {:?}", start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reachability by ICMP from `netns` to `ip`: up to three echoes, one at a
/// time, true at the first reply (a busy CI machine may lose one to a timeout).
pub fn ping(netns: &str, ip: &str) -> bool {
    (0..3).any(|_| {
        try_run(&mut ns_cmd(netns, &["ping", "-c", "1", "-W", "1", ip])).map(|o| o.status.success()).unwrap_or(false)
    })
}

/// Connect to the echo listener on `ip` and expect `expect` back.
pub fn tcp_probe(netns: &str, ip: &str, expect: &str) -> bool {
    // An IPv6 address in brackets (socat's syntax).
    let target = if ip.contains(':') {
        format!("TCP:[{ip}]:{ECHO_PORT},connect-timeout=1")
    } else {
        format!("TCP:{ip}:{ECHO_PORT},connect-timeout=1")
    };
    match try_run(&mut ns_cmd(netns, &["timeout", "3", "socat", "-T1", "-", &target])) {
        Ok(o) => o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == expect,
        Err(_) => false,
    }
}

/// A counter from `status --json` of node `node` (`group`: drops or forwards).
pub fn counter(lab: &Lab, node: usize, group: &str, name: &str) -> u64 {
    lab.status(node).unwrap()[group][name].as_u64().unwrap()
}

/// The comment that marks the tests' FORWARD rule in a node's iptables.
pub const FORWARD_DROP: &str = "sluice-test-forward-drop";

/// Forwarding on, as on a Kubernetes node, and a rule first in `node`'s
/// FORWARD chain that drops and counts whatever the node's stack forwards:
/// a pod packet no program took is seen there even when the stack would
/// have delivered it.
pub fn drop_stack_forwarding(node: &Node) -> Result<()> {
    ns_exec(&node.netns, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
    let rule = ["-m", "comment", "--comment", FORWARD_DROP, "-j", "DROP"];
    ns_exec(&node.netns, &[&["iptables", "-I", "FORWARD", "1"][..], &rule].concat())?;
    Ok(())
}

/// Packets node `node`'s FORWARD drop rule (the first rule, `FORWARD_DROP`)
/// has counted: every packet the node's stack forwarded.
pub fn forward_drops(node: &Node) -> u64 {
    let rules = ns_exec(&node.netns, &["iptables", "-L", "FORWARD", "1", "-v", "-n", "-x"]).unwrap();
    assert!(rules.contains(FORWARD_DROP), "rule 1 of {}'s FORWARD chain is not the test's: {rules}", node.name);
    rules.split_whitespace().next().unwrap().parse().unwrap()
}

/// Wait (10 s at most) until forward counter `name` of node `node` grew by `by`.
pub fn wait_forwards_grow(lab: &Lab, node: usize, name: &str, by: u64) {
    let base = counter(lab, node, "forwards", name);
    let start = Instant::now();
    while counter(lab, node, "forwards", name) < base + by {
        assert!(
            start.elapsed() < crate::patience(Duration::from_secs(10)),
            "forwards.{name} on node {node} stayed near {base}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Send one UDP datagram from `src` to `dst` and check it arrives.
pub fn udp_reaches(src: &Pod, dst: &Pod, port: u16) -> bool {
    let out = std::env::temp_dir().join(format!("sluice-udp-{}-{port}", std::process::id()));
    let _ = std::fs::remove_file(&out);
    let mut listener =
        ns_cmd(&dst.netns, &["socat", "-u", &format!("UDP-RECV:{port}"), &format!("CREATE:{}", out.display())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
    wait_listening(&dst.netns, "udp", port).expect("UDP listener");
    let msg = format!("hello-from-{}", src.name);
    let sent = ns_cmd(&src.netns, &["sh", "-c", &format!("echo {msg} | socat -u - UDP-SENDTO:{}:{port}", dst.ip)])
        .status()
        .unwrap();
    assert!(sent.success());
    let start = Instant::now();
    let mut got = String::new();
    while start.elapsed() < Duration::from_secs(3) {
        got = std::fs::read_to_string(&out).unwrap_or_default();
        if got.contains(&msg) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = listener.kill();
    let _ = listener.wait();
    let _ = std::fs::remove_file(&out);
    got.contains(&msg)
}

/// One plugin invocation, as a runtime would make it.
#[derive(Clone, Debug)]
pub struct CniCall {
    /// Plugin binary; `sluice-cni` from the lab's binaries if `None`.
    pub bin: Option<PathBuf>,
    pub command: String,
    pub container_id: String,
    /// Full path of the pod's network namespace (empty on a DEL without one).
    pub netns: Option<String>,
    pub ifname: String,
    pub conf: Value,
    pub env: Vec<(String, String)>,
}

impl CniCall {
    /// `netns` is a name under /run/netns.
    pub fn new(command: &str, container_id: &str, netns: Option<&str>, conf: Value) -> Self {
        Self {
            bin: None,
            command: command.into(),
            container_id: container_id.into(),
            netns: netns.map(|n| format!("/run/netns/{n}")),
            ifname: "eth0".into(),
            conf,
            env: Vec::new(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct CniOutcome {
    pub success: bool,
    /// `None` when killed by a signal.
    pub exit_code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CniOutcome {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or(Value::Null)
    }
}

pub struct Matrix {
    /// (node, pod, ip)
    pub pods: Vec<(String, String, String)>,
    /// (src pod, dst pod) → (icmp ok, tcp ok)
    pub cells: BTreeMap<(String, String), (bool, bool)>,
}

impl Matrix {
    pub fn all_ok(&self) -> bool {
        self.cells.values().all(|(i, t)| *i && *t)
    }

    pub fn failures(&self) -> Vec<String> {
        self.cells
            .iter()
            .filter(|(_, (i, t))| !(*i && *t))
            .map(|((s, d), (i, t))| format!("{s} -> {d}: icmp {} tcp {}", ok(*i), ok(*t)))
            .collect()
    }

    pub fn render(&self) -> String {
        let w = 10;
        let mut out = format!("{:<16}", "from \\ to");
        for (_, p, _) in &self.pods {
            out.push_str(&format!("{p:>w$}"));
        }
        out.push('\n');
        for (n, src, ip) in &self.pods {
            out.push_str(&format!("{:<16}", format!("{src} {ip}")));
            for (_, dst, _) in &self.pods {
                let cell = match self.cells.get(&(src.clone(), dst.clone())) {
                    None => "-".to_string(),
                    Some((i, t)) => format!("{}/{}", if *i { "I" } else { "i!" }, if *t { "T" } else { "t!" }),
                };
                out.push_str(&format!("{cell:>w$}"));
            }
            let _ = n;
            out.push('\n');
        }
        let total = self.cells.len();
        let good = self.cells.values().filter(|(i, t)| *i && *t).count();
        out.push_str(&format!(
            "I/T = ICMP/TCP reached, i!/t! = failed. {good} of {total} pod pairs reach each other both ways.\n"
        ));
        out
    }
}

fn ok(b: bool) -> &'static str {
    if b {
        "ok"
    } else {
        "FAILED"
    }
}
