//! `sluice-agent run`: bring the datapath up, then keep it in step with
//! cluster membership until stopped. Stopping (or dying) leaves the datapath
//! attached and forwarding.
use std::{path::PathBuf, time::Duration};

use anyhow::{bail, Context, Result};
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use sluice_common::maps::programs;
use tracing::{error, info, warn};

pub mod attach_mode;
pub mod cni_conf;
pub mod health_check_ports;
pub mod map_sizes;
pub mod metrics;
pub mod nat64;
pub mod netfilter_worker;
pub mod node_address;
pub mod plugin_install;
pub mod pod_device;
pub mod policy_loop;
pub mod policy_tables;
pub mod port_ownership;
pub mod service_lb;
pub mod sweep;
pub mod sysctl;
pub mod tunnel;
pub mod udp_sockets;
pub mod uplink_choice;

use sluice_node::datapath::attach_mode::AttachMode;
use sluice_node::{
    clock::now_unix,
    datapath::{
        bpffs, kernel_features, nat4_gc, nat4_maps,
        pinned_maps::{self, NodeRoutes, NodeRoutes6},
        pins::PinDir,
        policy_ct_gc, policy_maps, sock_lb, Datapath, MapSizes,
    },
    net::netlink::Netlink,
    pod::device::PodDevice,
};

use crate::{
    config::AgentConfig,
    health_endpoint,
    membership::{self, kubernetes::KubeNodes, peers_file::PeersFile, Membership, Problem, Ranges},
    policy::kubernetes::KubePolicy,
    reconcile::{kernel_routes, kernel_routes6, map_routes, map_routes6, masquerade},
    services::kubernetes::KubeServices,
    state_file::{self, AgentState},
};

pub struct Timing {
    pub resync: Duration,
    pub sweep_interval: Duration,
    pub sweep_grace: Duration,
}

/// Where membership comes from.
pub enum Source {
    PeersFile(PathBuf),
    Kubernetes(KubeNodes),
}

impl Source {
    fn name(&self) -> &'static str {
        match self {
            Source::PeersFile(_) => "peers-file",
            Source::Kubernetes(_) => "kubernetes",
        }
    }

    /// The membership now. `Ok(None)`: not known yet (Kubernetes not listed).
    /// On a dual-stack node its IPv6 half too (`membership::family6`), with
    /// `own6` (the uplink's IPv6 address and prefix) never a peer's next
    /// hop; on an IPv6-only node each IPv6 peer's path is chosen against
    /// that prefix (`choose_path6`: VXLAN over IPv6 to peers off it).
    fn membership(
        &self,
        node: &AgentConfig,
        own_cidr: Option<Ipv4Network>,
        ranges: &Ranges,
        own6: Option<Ipv6Network>,
    ) -> Result<Option<Membership>> {
        let (mut m, entries) = match self {
            Source::PeersFile(path) => {
                let bytes = std::fs::read(path).with_context(|| format!("read peers file {}", path.display()))?;
                let file = PeersFile::parse(&bytes)?;
                if node.ip_family.has_ipv4() {
                    let own = own_cidr.context("--pod-cidr is required with --peers-file")?;
                    (file.membership(&node.node_name, own, ranges)?, file.entries())
                } else {
                    // IPv6-only: no IPv4 half at all (`family6::fill` below).
                    (Membership::default(), file.entries())
                }
            }
            Source::Kubernetes(kube) => {
                let (entries, state) = kube.snapshot();
                if !state.synced {
                    return Ok(None);
                }
                let m = if node.ip_family.has_ipv4() {
                    membership::from_entries(&entries, &node.node_name, own_cidr, ranges)
                } else {
                    Membership::default()
                };
                (m, entries)
            }
        };
        if node.ip_family.has_ipv6() {
            let name = &node.node_name;
            let own_ip6 = own6.map(|n| n.ip());
            let underlay6 = (!node.ip_family.has_ipv4()).then(|| membership::family6::Underlay6 {
                tunnel: node.tunnel,
                network6: own6.map(|n| Ipv6Network::new(n.network(), n.prefix()).expect("a valid prefix")),
            });
            membership::family6::fill(&mut m, &entries, name, node.pod_cidr6, node.cluster_cidr6, own_ip6, underlay6);
        }
        Ok(Some(m))
    }
}

async fn sweep(
    netlink: &Netlink,
    node: &AgentConfig,
    pod_cidr: Option<Ipv4Network>,
    pod_cidr6: Option<Ipv6Network>,
    pins: &PinDir,
    grace: Duration,
) {
    let Some(pod_cidr) = pod_cidr else {
        // IPv6-only: the IPv6 leases lead (`sweep::sweep_ipv6_only`).
        if let Some(pod_cidr6) = pod_cidr6 {
            sweep::sweep_ipv6_only(netlink, pins, &node.data_dir, pod_cidr6, grace).await;
        }
        return;
    };
    let swept = match sweep::NodeSweep::open(netlink, pins, &node.data_dir, pod_cidr, pod_cidr6) {
        Ok(Some(mut target)) => {
            match target.release_orphans6(grace) {
                Ok(released) if !released.is_empty() => {
                    info!(count = released.len(), "released IPv6 leases whose IPv4 twin was gone")
                }
                Ok(_) => {}
                Err(e) => warn!(error = %format!("{e:#}"), "IPv6 lease sweep failed; will retry"),
            }
            let swept = sweep::sweep(&mut target, grace).await;
            // After the IPv4 repairs: the IPv6 entries copy them.
            match target.repair_endpoints6(grace) {
                Ok(repaired) if !repaired.is_empty() => {
                    info!(count = repaired.len(), "IPv6 endpoint entries re-derived for pods that are still there")
                }
                Ok(_) => {}
                Err(e) => warn!(error = %format!("{e:#}"), "IPv6 endpoint repair failed; will retry"),
            }
            match target.remove_stale_endpoints6().await {
                Ok(removed) if !removed.is_empty() => {
                    info!(addresses = ?removed, "IPv6 endpoint entries removed: no pod behind them")
                }
                Ok(_) => {}
                Err(e) => warn!(error = %format!("{e:#}"), "IPv6 endpoint cleanup failed; will retry"),
            }
            swept
        }
        Ok(None) => {
            info!("a CNI call holds the IPAM lock; sweeping at the next tick");
            return;
        }
        Err(e) => Err(e),
    };
    match swept {
        Ok(plan) if !plan.is_empty() => info!(
            repaired = plan.repairs.len(),
            attachments = plan.attachments.len(),
            endpoints = plan.endpoints.len(),
            links = plan.link_pins.len(),
            "swept: entries of live pods repaired, leftovers of pods that are gone removed"
        ),
        Ok(_) => {}
        Err(e) => warn!(error = %format!("{e:#}"), "sweep failed; will retry"),
    }
}

/// Everything kept in step with membership on each pass: the BPF routes
/// map and the kernel's routes here; the node's netfilter through its
/// worker, which applies it beside the pass (`netfilter_worker`).
struct Reconcilers {
    routes_map: NodeRoutes,
    /// `NODE_ROUTES6`: membership's `routes6` (empty unless dual-stack).
    routes_map6: NodeRoutes6,
    netlink: Netlink,
    uplink_ifindex: u32,
    /// The VXLAN device (0: `--tunnel=never`).
    vxlan_ifindex: u32,
    /// The MTU metric of native routes to peers' pods
    /// (`kernel_routes::native_route_mtu`).
    native_route_mtu: Option<u32>,
    /// The uplink's IPv4 (none on an IPv6-only node without one).
    node_ip: Option<std::net::Ipv4Addr>,
    masquerade: bool,
    /// None on an IPv6-only node (no IPv4 masquerade rules then).
    cluster_cidr: Option<Ipv4Network>,
    /// Dual-stack: the IPv6 cluster range, if given (else the pod CIDRs
    /// membership knows stand for it).
    cluster_cidr6: Option<Ipv6Network>,
    /// Dual-stack: the uplink's IPv6 address.
    node_ip6: Option<std::net::Ipv6Addr>,
    non_masquerade: Vec<IpNetwork>,
    /// Started by the first pass.
    netfilter: Option<netfilter_worker::NetfilterWorker>,
    /// Dual-stack: the IPv6 kernel routes are reconciled too.
    ipv6: bool,
    /// `--nat64`: the pool, masqueraded and forwarded.
    nat64_pool: Option<Ipv4Network>,
}

impl Reconcilers {
    /// The node's own IPv6 source through the tunnel
    /// (`kernel_routes6::tunnel_source6`), put on the VXLAN device (a /128,
    /// no DAD, deprecated so that only the tunneled routes' `src` picks it;
    /// present already is fine). None without a device or an IPv6
    /// pod CIDR, or if the kernel refused the address (then the tunneled
    /// routes go without `src`, which the kernel would refuse too).
    async fn ensure_tunnel_source6(&self, m: &Membership) -> Option<std::net::Ipv6Addr> {
        let cidr6 = m.own_pod_cidr6.filter(|_| self.vxlan_ifindex != 0)?;
        let src = kernel_routes6::tunnel_source6(cidr6);
        // Read first: most passes find it there and write nothing.
        let present = self.netlink.ipv6_addresses(self.vxlan_ifindex).await;
        if present.as_ref().is_ok_and(|addrs| addrs.contains(&(src, 128))) {
            return Some(src);
        }
        match self.netlink.add_route_source6(self.vxlan_ifindex, src).await {
            Ok(()) => Some(src),
            Err(e) => {
                warn!(error = %format!("{e:#}"), %src, "IPv6 tunnel source not added to the VXLAN device");
                None
            }
        }
    }

    /// One pass. The kernel routes it could not apply are returned (every
    /// other route, and the netfilter state, were still applied); an
    /// error means the pass stopped.
    async fn pass(&mut self, m: &Membership) -> Result<Vec<kernel_routes::RouteFailure>> {
        map_routes::reconcile_hops(&mut self.routes_map, &m.map_hops())?;
        let kernel =
            kernel_routes::desired_hops(&m.hops(), self.uplink_ifindex, self.vxlan_ifindex, self.native_route_mtu);
        let failed = kernel_routes::reconcile(&self.netlink, &kernel).await?.failed;
        let mut map6 = map_routes6::MapRoutes6::new();
        if self.ipv6 {
            let tunnel_src6 = self.ensure_tunnel_source6(m).await;
            let kernel6 = kernel_routes6::desired6(
                &m.routes6,
                &m.vxlan6(),
                self.uplink_ifindex,
                self.vxlan_ifindex,
                tunnel_src6,
                self.native_route_mtu,
            );
            for failure in kernel_routes6::reconcile6(&self.netlink, &kernel6).await? {
                warn!(%failure, "IPv6 kernel route not applied; every other one was");
            }
            // The IPv6 fast path follows the kernel's routes: a peer whose
            // route the kernel refused stays on the stack's path.
            let installed = kernel_routes6::installed6(&self.netlink).await?;
            map6 = map_routes6::desired6(&m.routes6, &installed, self.uplink_ifindex);
        }
        map_routes6::reconcile6(&mut self.routes_map6, &map6)?;
        let node_ips = self.node_ip.into_iter().chain(m.routes.values().copied());
        let mut desired = masquerade::Desired::new(self.masquerade, self.cluster_cidr, node_ips, &self.non_masquerade);
        if let (true, Some(own6)) = (self.ipv6, m.own_pod_cidr6) {
            // Pods' IPv6 leaves masqueraded too (`ip6 sluice`): the
            // cluster's IPv6 range (or, without --cluster-cidr6, every
            // IPv6 pod CIDR membership knows) and the nodes' IPv6 stay
            // un-NATed.
            let pods6: Vec<IpNetwork> =
                std::iter::once(own6).chain(m.routes6.keys().copied()).map(IpNetwork::V6).collect();
            let extra: Vec<IpNetwork> = self.non_masquerade.iter().copied().chain(pods6).collect();
            let node_ips6 = self.node_ip6.into_iter().chain(m.routes6.values().copied());
            desired = desired.with_ipv6(self.cluster_cidr6.unwrap_or(own6), node_ips6, &extra);
        }
        let desired = desired.with_nat64(self.nat64_pool, self.node_ip);
        match &self.netfilter {
            Some(worker) => worker.want(desired),
            None => self.netfilter = Some(netfilter_worker::NetfilterWorker::start(desired).await?),
        }
        Ok(failed)
    }

    /// The reconcilers, with membership's first pass applied: the netfilter
    /// state (pods must never reach the world unmasqueraded) before
    /// anything else goes on.
    async fn start(
        netlink: &Netlink,
        node: &AgentConfig,
        uplink: &Uplink,
        datapath: &DatapathUp,
        membership: &Membership,
        own_ip6: Option<std::net::Ipv6Addr>,
    ) -> Result<Self> {
        let mut reconcilers = Reconcilers {
            routes_map: NodeRoutes::open(&datapath.pins)?,
            routes_map6: NodeRoutes6::open(&datapath.pins)?,
            netlink: netlink.clone(),
            uplink_ifindex: uplink.link.index,
            vxlan_ifindex: datapath.vxlan_ifindex,
            native_route_mtu: kernel_routes::native_route_mtu(uplink.pod_mtu, uplink.link.mtu),
            node_ip: uplink.address.map(|a| a.ip),
            masquerade: node.masquerade,
            cluster_cidr: node.cluster_cidr,
            cluster_cidr6: node.cluster_cidr6,
            node_ip6: own_ip6,
            non_masquerade: node.non_masquerade_cidr.clone(),
            netfilter: None,
            ipv6: node.ip_family.has_ipv6(),
            nat64_pool: datapath.nat64_pool,
        };
        for failure in reconcilers.pass(membership).await? {
            // Reported in `status` from the first pass of the loop on.
            warn!(%failure, "kernel route not applied at start");
        }
        Ok(reconcilers)
    }

    /// The masquerade counter the netfilter worker keeps (empty before the
    /// first pass).
    fn masquerade_counter(&self) -> netfilter_worker::SharedCounter {
        self.netfilter.as_ref().map(|w| w.masquerade_counter()).unwrap_or_default()
    }

    /// The netfilter worker's last error, if its last run failed.
    fn netfilter_error(&self) -> Option<String> {
        self.netfilter.as_ref().and_then(|w| w.last_error())
    }
}

/// Follow the node's own address (see `node_address`): peers' paths, the
/// masquerade exceptions and the eBPF decapsulation's check take the new
/// one from this pass.
async fn follow_uplink_address(
    netlink: &Netlink,
    pins: &PinDir,
    uplink_ifindex: u32,
    address: &mut Option<node_address::NodeAddress>,
    ranges: &mut Ranges,
    reconcilers: &mut Reconcilers,
) {
    // An IPv6-only node without an IPv4 uplink address follows none.
    let Some(address) = address else { return };
    let now = match netlink.first_ipv4(uplink_ifindex).await {
        Ok(now) => now,
        Err(e) => return warn!(error = %format!("{e:#}"), "cannot read the uplink's address; keeping the last"),
    };
    let Some(moved) = address.moved(now) else { return };
    // The rest (the pod CIDR) as recorded at start.
    let recorded = match pinned_maps::read_node_config(pins) {
        Ok(c) => c,
        Err(e) => return warn!(error = %format!("{e:#}"), "cannot read NODE_CONFIG; keeping the last address"),
    };
    let config = sluice_common::NodeConfig { uplink_ifindex, node_ip_be: pinned_maps::ip_be(moved.ip), ..recorded };
    if let Err(e) = pinned_maps::write_node_config(pins, config) {
        // Retried on the next pass: `address` still holds the old one.
        return warn!(error = %format!("{e:#}"), "cannot record the uplink's new address");
    }
    info!(from = %address.ip, to = %moved.ip, network = %moved.network, "the uplink's address changed; following it");
    ranges.node_network = Some(moved.network);
    ranges.own_ip = Some(moved.ip);
    reconcilers.node_ip = Some(moved.ip);
    *address = moved;
}

/// The uplink: `--uplink`, or the interface of the IPv4 default route, or
/// on a node without one that of the IPv6 default route
/// (`uplink_choice`; then recorded in `node.uplink`).
async fn choose_uplink(netlink: &Netlink, node: &mut AgentConfig) -> Result<sluice_node::net::netlink::LinkInfo> {
    if !node.uplink.is_empty() {
        return netlink.require_link(&node.uplink).await.context("uplink");
    }
    let ipv4 = netlink.default_route_interface().await?;
    // Only asked when IPv4 has none: an IPv4 node's start is unchanged.
    let ipv6 = if ipv4.is_none() { netlink.default_route6_interface().await? } else { None };
    let (found, from) = uplink_choice::choose(ipv4, ipv6)?;
    info!(uplink = %found.name, from = %from, "uplink chosen from the default route");
    node.uplink = found.name.clone();
    Ok(found)
}

/// The host's bpffs at `bpffs_mount` (mounted here with --mount-bpffs).
fn require_bpffs(node: &AgentConfig, bpffs_mount: &std::path::Path) -> Result<()> {
    if node.mount_bpffs {
        bpffs::ensure_mounted(bpffs_mount)?;
    } else if !bpffs::is_bpffs(bpffs_mount).unwrap_or(false) {
        bail!(
            "{} is not a bpffs: the host's bpffs must be mounted there (and, in a container, mounted in from the \
             host) so pins outlive the agent; a bpffs mounted here would vanish with this mount namespace. \
             Mount it on the host (`mount -t bpf bpf {}`), or pass --mount-bpffs on a host process",
            bpffs_mount.display(),
            bpffs_mount.display()
        );
    }
    Ok(())
}

/// With Services in eBPF, attach the socket load balancer to the cgroup
/// root (returned); without, detach an earlier run's.
fn attach_or_detach_sock_lb(
    node: &AgentConfig,
    datapath: &mut Datapath,
    pins: &PinDir,
    services: bool,
) -> Result<Option<PathBuf>> {
    if services {
        let cgroup = node.cgroup_root()?;
        datapath.attach_sock_lb(&cgroup)?;
        return Ok(Some(cgroup));
    }
    // Turned off (or never on): an earlier run's programs must not keep
    // translating behind kube-proxy's back.
    if sock_lb::detach(pins)? > 0 {
        info!("socket load balancer detached (--kube-proxy-replacement=false)");
    }
    Ok(None)
}

/// Start the Services loop under its supervisor, in the background.
fn start_services_loop(
    sources: ServiceSources,
    cgroup: &std::path::Path,
    node: &AgentConfig,
    pins: &PinDir,
    agent_metrics: &metrics::AgentMetrics,
    service_lb_state: &service_lb::SharedState,
) {
    let ServiceSources { kube, node_ips, host_ports } = sources;
    {
        let mut st = service_lb_state.lock().expect("service state lock");
        st.cgroup = cgroup.display().to_string();
        st.netns_dir = node.netns_dir.as_ref().map(|d| d.display().to_string());
    }
    let (pins, name, st) = (pins.clone(), node.node_name.clone(), service_lb_state.clone());
    let latency = agent_metrics.service_update_seconds.clone();
    let destroyed = agent_metrics.service_udp_sockets_destroyed.clone();
    let start = move || {
        let (latency, destroyed) = (latency.clone(), destroyed.clone());
        let observe = move |s| latency.observe(s);
        let destroyed = move |n| {
            destroyed.inc_by(n);
        };
        service_lb::run(
            kube.clone(),
            pins.clone(),
            name.clone(),
            node_ips.clone(),
            host_ports.clone(),
            st.clone(),
            observe,
            destroyed,
        )
    };
    tokio::spawn(service_lb::supervise(service_lb_state.clone(), start));
}

/// What the Services loop reads: Services and EndpointSlices, every
/// node's InternalIP, and (from the Pods) this node's hostPorts.
struct ServiceSources {
    kube: KubeServices,
    node_ips: service_lb::NodeIps,
    host_ports: Option<service_lb::HostPortSource>,
}

/// Start NetworkPolicy's loop under its supervisor, in the background.
/// Node addresses come from the Node watch.
fn start_policy_loop(
    kube: KubePolicy,
    nodes: KubeNodes,
    node: &AgentConfig,
    pins: &PinDir,
    agent_metrics: &metrics::AgentMetrics,
) -> policy_loop::SharedState {
    let state = policy_loop::SharedState::default();
    // Both families of every node: a node's IPv6 is its host (or
    // remote-node) identity as its IPv4 is.
    let node_ips = move || {
        let node_addresses = |n: membership::NodeEntry| {
            let ips: Vec<std::net::IpAddr> =
                n.node_ip.map(Into::into).into_iter().chain(n.node_ip6.map(Into::into)).collect();
            (!ips.is_empty()).then_some((n.name, ips))
        };
        nodes.snapshot().0.into_iter().filter_map(node_addresses).collect()
    };
    let policy_node = policy_loop::PolicyNode {
        node_name: node.node_name.clone(),
        cluster_cidrs: node
            .cluster_cidr
            .map(Into::into)
            .into_iter()
            .chain(node.cluster_cidr6.map(Into::into))
            .collect(),
        data_dir: node.data_dir.clone(),
        nodes: std::sync::Arc::new(node_ips),
    };
    let (pins, st, m) = (pins.clone(), state.clone(), agent_metrics.clone());
    let start = move || {
        let (kube, pins, node, st, m) = (kube.clone(), pins.clone(), policy_node.clone(), st.clone(), m.clone());
        async move {
            let tables = policy_tables::PinnedPolicyTables::open(&pins)?;
            let latency = m.policy_update_seconds.clone();
            let full = m.policy_map_full.clone();
            policy_loop::run(
                kube,
                tables,
                node,
                st,
                move |s| latency.observe(s),
                move |map| {
                    full.get_or_create(&[("map", map)]).inc();
                },
            )
            .await
        }
    };
    tokio::spawn(policy_loop::supervise(state.clone(), start));
    state
}

/// Collect `POLICY_CT`'s idle entries every `interval`, in the background
/// (a pass walks the map with a syscall per entry: off the runtime's
/// threads). A failed pass is logged and the next one tried.
fn start_policy_ct_gc(pins: &PinDir, interval: Duration, metrics: &metrics::AgentMetrics) {
    start_gc("policy_ct", "POLICY_CT idle entries collected", interval, pins, metrics, |pins| {
        let mut ct = policy_maps::PolicyCt::open(pins)?;
        policy_ct_gc::collect(&mut ct, policy_ct_gc::monotonic_now_ns()?, &Default::default())
    });
    // Its IPv6 twin, the same timeouts.
    start_gc("policy_ct6", "POLICY_CT6 idle entries collected", interval, pins, metrics, |pins| {
        let mut ct = policy_maps::PolicyCt6::open(pins)?;
        policy_ct_gc::collect(&mut ct, policy_ct_gc::monotonic_now_ns()?, &Default::default())
    });
}

/// A connection table's GC every `interval`: each pass timed and recorded
/// (`sluice_conntrack_gc_*{table}`), one that removed entries logged.
fn start_gc(
    table: &'static str,
    collected: &'static str,
    interval: Duration,
    pins: &PinDir,
    metrics: &metrics::AgentMetrics,
    pass: fn(&PinDir) -> Result<policy_ct_gc::GcPass>,
) {
    let (pins, metrics) = (pins.clone(), metrics.clone());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let pins = pins.clone();
            let outcome = tokio::task::spawn_blocking(move || {
                let start = std::time::Instant::now();
                pass(&pins).map(|p| (p, start.elapsed()))
            })
            .await;
            match outcome {
                Ok(Ok((p, took))) => {
                    metrics.record_gc_pass(table, took, p.scanned, p.removed);
                    if p.removed > 0 {
                        info!(
                            table,
                            scanned = p.scanned,
                            removed = p.removed,
                            ms = took.as_millis() as u64,
                            "{collected}"
                        )
                    }
                }
                Ok(Err(e)) => warn!(table, error = %format!("{e:#}"), "connection table collection failed"),
                Err(e) => warn!(table, error = %e, "connection table collection panicked"),
            }
        }
    });
}

/// Services from outside at the uplink (`LB4_CONFIG`): on with
/// `--kube-proxy-replacement`, with the SNAT port range checked against
/// the node's ephemeral ports first; off otherwise (kube-proxy's rules
/// take them, as before).
fn configure_uplink_services(pins: &PinDir, node: &AgentConfig, on: bool) -> Result<()> {
    use crate::services::snat_ports;
    if on {
        const SYSCTL: &str = "/proc/sys/net/ipv4/ip_local_port_range";
        let text = std::fs::read_to_string(SYSCTL).with_context(|| format!("read {SYSCTL}"))?;
        let ephemeral = snat_ports::parse_ephemeral(&text).map_err(|e| anyhow::anyhow!(e))?;
        snat_ports::check(node.snat_port_range, ephemeral, node.node_port_range).map_err(|e| anyhow::anyhow!(e))?;
        info!(snat_ports = %node.snat_port_range, lb_mode = ?node.lb_mode, "Services from outside translated at the uplink");
    }
    nat4_maps::set_lb4_config(pins, snat_ports::lb4_config(on, node.snat_port_range, node.lb_mode))
}

/// Collect `NAT4`'s idle connections every `interval`, as
/// `start_policy_ct_gc` does `POLICY_CT`'s.
fn start_nat4_gc(pins: &PinDir, interval: Duration, metrics: &metrics::AgentMetrics) {
    start_gc("nat4", "NAT4 idle connections collected", interval, pins, metrics, |pins| {
        let mut nat = nat4_maps::Nat4Table::open(pins)?;
        nat4_gc::collect(&mut nat, policy_ct_gc::monotonic_now_ns()?, &Default::default())
    });
    // Its IPv6 twin, by the same rules (`nat4_gc::collect` over `NAT6`).
    start_gc("nat6", "NAT6 idle connections collected", interval, pins, metrics, |pins| {
        let mut nat = nat4_maps::Nat6Table::open(pins)?;
        nat4_gc::collect(&mut nat, policy_ct_gc::monotonic_now_ns()?, &Default::default())
    });
}

/// Wait for the first complete membership that names this node's pod CIDR.
async fn initial_membership(
    source: &Source,
    node: &AgentConfig,
    ranges: &Ranges,
    own6: Option<Ipv6Network>,
) -> Result<Membership> {
    let mut waited = 0u32;
    loop {
        // A bad peers file at start is fatal: nothing is running yet to keep.
        if let Some(m) = source.membership(node, node.pod_cidr, ranges, own6)? {
            let own6_known = !node.ip_family.has_ipv6() || m.own_pod_cidr6.is_some();
            let own4_known = !node.ip_family.has_ipv4() || m.own_pod_cidr.is_some();
            if own4_known && own6_known {
                return Ok(m);
            }
            if waited.is_multiple_of(10) && !own4_known {
                warn!(node = %node.node_name, "this node has no pod CIDR yet (spec.podCIDR); waiting");
            } else if waited.is_multiple_of(10) {
                warn!(
                    node = %node.node_name,
                    "--ip-family dual or ipv6: this node has no IPv6 pod CIDR yet (--pod-cidr6 or spec.podCIDRs); waiting"
                );
            }
        } else if waited.is_multiple_of(10) {
            info!("waiting for the first list of Kubernetes nodes");
        }
        waited += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// This node's uplink and what start-up learnt from it.
struct Uplink {
    link: sluice_node::net::netlink::LinkInfo,
    /// The pods' MTU (`--mtu`, or the uplink's less the tunnel's overhead).
    pod_mtu: u32,
    /// Its IPv4 address; None on an IPv6-only node whose uplink has none.
    address: Option<node_address::NodeAddress>,
}

/// The uplink (see `choose_uplink`), the pods' MTU and the node's address on it.
async fn discover_uplink(netlink: &Netlink, node: &mut AgentConfig) -> Result<Uplink> {
    let link = choose_uplink(netlink, node).await?;
    // An IPv6-only node's VXLAN runs over IPv6: 70 bytes, not 50.
    let overhead = membership::tunnel_overhead(!node.ip_family.has_ipv4());
    let pod_mtu = tunnel::pod_mtu(node.mtu, link.mtu, node.tunnel, overhead);
    if pod_mtu > link.mtu {
        bail!("--mtu {pod_mtu} is larger than uplink {}'s MTU {}", node.uplink, link.mtu);
    }
    let address = match netlink.first_ipv4(link.index).await? {
        Some((node_ip, prefix)) => Some(node_address::NodeAddress::new(node_ip, prefix)?),
        // An IPv6-only node needs none (the uplink's IPv6 is its address).
        None if !node.ip_family.has_ipv4() => None,
        None => bail!("uplink {} has no IPv4 address", node.uplink),
    };
    Ok(Uplink { link, pod_mtu, address })
}

/// This node's IPv6 pod CIDR from the first membership (dual-stack),
/// checked against the flags.
fn own_pod_cidr6(membership: &Membership, node: &AgentConfig) -> Result<Option<Ipv6Network>> {
    if !node.ip_family.has_ipv6() {
        return Ok(None);
    }
    let pod_cidr6 = membership.own_pod_cidr6.expect("initial_membership waits for it");
    node.validate_pod_cidr6(pod_cidr6).context("invalid IPv6 pod CIDR")?;
    Ok(Some(pod_cidr6))
}

/// This node's pod CIDR from the first membership, checked against the
/// flags and the node's network (`None` on an IPv6-only node).
fn own_pod_cidr(
    membership: &Membership,
    node: &AgentConfig,
    node_network: Option<Ipv4Network>,
) -> Result<Option<Ipv4Network>> {
    if !node.ip_family.has_ipv4() {
        return Ok(None);
    }
    let node_network = node_network.expect("a node with IPv4 pods has an IPv4 uplink address (discover_uplink)");
    let pod_cidr = membership.own_pod_cidr.expect("initial_membership waits for it");
    node.validate_pod_cidr(pod_cidr, node_network).context("invalid pod CIDR")?;
    if let Some(p) = membership.problems.iter().find(|p| p.involves_own_cidr()) {
        bail!("invalid pod CIDR {pod_cidr}: {p}");
    }
    Ok(Some(pod_cidr))
}

/// What `bring_up_datapath` attached, and how.
struct DatapathUp {
    pins: PinDir,
    attach_mode: AttachMode,
    attach_mode_why: String,
    pod_device: PodDevice,
    pod_device_why: String,
    /// The VXLAN device (0: `--tunnel=never`).
    vxlan_ifindex: u32,
    /// Pods whose links were updated to this version's programs.
    pods: usize,
    /// The socket load balancer's cgroup, when Services are in eBPF.
    sock_lb_cgroup: Option<PathBuf>,
    /// What this kernel's missing features degrade (`kernel_features`).
    kernel_degraded: Vec<String>,
    /// `--nat64`: the pool (its masquerade is the netfilter reconciler's).
    nat64_pool: Option<Ipv4Network>,
}

/// Load (or take over) the datapath: the pinned maps, `NODE_CONFIG`, the
/// uplink's programs, the VXLAN device, every pod's links, the socket load
/// balancer; and IP forwarding.
async fn bring_up_datapath(
    netlink: &Netlink,
    node: &AgentConfig,
    uplink: &Uplink,
    pod_cidr: Option<Ipv4Network>,
    pod_cidr6: Option<Ipv6Network>,
    services: bool,
) -> Result<DatapathUp> {
    let (pod_device, pod_device_why) = pod_device::decide(netlink, node.device).await?;
    let (attach_mode, attach_mode_why) = attach_mode::decide(node.attach, &node.uplink)?;
    let pins = PinDir::new(&node.pin_dir);
    let (stack_flows, stack_flows_why) = map_sizes::stack_flows(node.stack_flows_max, map_sizes::read_conntrack_max());
    info!(stack_flows, from = %stack_flows_why, "STACK_FLOWS size");
    // What this kernel lacks: refused by name, or degraded with a warning.
    let kernel = kernel_features::check(services).map_err(anyhow::Error::msg)?;
    for degraded in &kernel.degraded {
        warn!(%degraded, "kernel");
    }
    let mut datapath = Datapath::load_sized(
        &pins,
        &MapSizes { stack_flows: Some(stack_flows), nat4: node.nat4_max },
        kernel.socket_lb,
    )?;
    let node_config = sluice_common::NodeConfig {
        uplink_ifindex: uplink.link.index,
        node_ip_be: uplink.address.map(|a| pinned_maps::ip_be(a.ip)).unwrap_or(0),
        // The CNI plugin attaches new pods' programs the same way.
        attach_mode: attach_mode.recorded(),
        ..Default::default()
    };
    datapath.set_attach_mode(attach_mode);
    // The pod CIDR too: the CNI plugin refuses a conflist that disagrees.
    // None (prefix 0) on an IPv6-only node: the plugin then refuses a
    // conflist with a `podCIDR`.
    let mut node_config = match pod_cidr {
        Some(pod_cidr) => pinned_maps::with_pod_cidr(node_config, pod_cidr),
        None => node_config,
    };
    if let Some(pod_cidr6) = pod_cidr6 {
        // Marks the node as having IPv6 pods for the programs (pods' IPv6
        // checked and passed) and gives the plugin the IPv6 pod CIDR to check.
        node_config = pinned_maps::with_pod_cidr6(node_config, pod_cidr6);
    }
    pinned_maps::write_node_config(&pins, node_config)?;
    // NetworkPolicy judges a pod's egress to a ClusterIP after kube-proxy's
    // DNAT: the programs must know which addresses those are.
    policy_maps::PolicyState::open(&pins)?.set_service_cidr(node.service_cidr).context("write POLICY_STATE")?;
    datapath.attach(programs::FROM_UPLINK, &node.uplink)?;
    datapath.attach(programs::TO_UPLINK, &node.uplink)?;
    let device_mtu = tunnel::device_mtu(uplink.link.mtu, !node.ip_family.has_ipv4());
    let vxlan_ifindex = tunnel::ensure(netlink, &mut datapath, &pins, node.tunnel, uplink.link.index, device_mtu)
        .await
        .context("VXLAN device")?;
    let nat64_setup = nat64::Nat64Setup {
        on: node.nat64,
        pool: node.nat64_pool,
        pod_cidr6,
        node_ip: uplink.address.map(|a| a.ip),
        uplink: &node.uplink,
    };
    let nat64_pool = nat64::ensure(netlink, &mut datapath, &pins, &nat64_setup).await.context("NAT64")?;
    let pods = datapath.update_pod_links()?;
    let sock_lb_cgroup = attach_or_detach_sock_lb(node, &mut datapath, &pins, services)?;
    // Every link runs this version's programs now.
    datapath.finish_migration().context("finish carrying the pinned maps over")?;
    // The node's stack forwards pods' traffic to the world, to other nodes'
    // host processes and through kube-proxy's DNAT.
    sysctl::ensure_ip_forward()?;
    if pod_cidr6.is_some() {
        sysctl::ensure_ipv6_forwarding()?;
        if vxlan_ifindex != 0 {
            // Pods' IPv6 to tunneled peers goes into the device, and
            // theirs comes out of it (`kernel_routes6`): the kernel takes
            // neither on an interface with IPv6 off (a runtime's default).
            sluice_node::net::netlink6::enable_ipv6_on(sluice_node::net::vxlan::DEVICE)
                .context("IPv6 on the VXLAN device")?;
        }
    }
    Ok(DatapathUp {
        pins,
        attach_mode,
        attach_mode_why,
        pod_device,
        pod_device_why,
        vxlan_ifindex,
        pods,
        sock_lb_cgroup,
        kernel_degraded: kernel.degraded,
        nat64_pool,
    })
}

/// Every node's InternalIPs (IPv4 and IPv6), for NodePorts at the socket:
/// from the Node watch (Services in eBPF need Kubernetes; a peers file
/// gives none).
fn node_ips(source: &Source) -> service_lb::NodeIps {
    match source {
        Source::Kubernetes(nodes) => {
            let nodes = nodes.clone();
            std::sync::Arc::new(move || {
                let both = |n: membership::NodeEntry| {
                    n.node_ip.map(std::net::IpAddr::from).into_iter().chain(n.node_ip6.map(Into::into))
                };
                nodes.snapshot().0.into_iter().flat_map(both).collect()
            })
        }
        _ => std::sync::Arc::new(Vec::new),
    }
}

/// The node's pod CIDRs: IPv4's (none on an IPv6-only node), and IPv6's on
/// a dual-stack or IPv6-only node.
#[derive(Clone, Copy)]
struct PodCidrs {
    v4: Option<Ipv4Network>,
    v6: Option<Ipv6Network>,
}

/// What the node serves: the health endpoint (`connectivity-test` probes
/// it, on each family the node has), the Services loop (when Services are
/// in eBPF) and metrics.
async fn serve_node_endpoints(
    netlink: &Netlink,
    node: &AgentConfig,
    uplink: &Uplink,
    cidrs: PodCidrs,
    datapath: &DatapathUp,
    services: Option<ServiceSources>,
    reconcilers: &Reconcilers,
) -> Result<(PathBuf, metrics::AgentMetrics, service_lb::SharedState)> {
    let pins = &datapath.pins;
    let health_netns =
        health_endpoint::ensure(netlink, pins, &node.health_netns_name(), cidrs.v4, cidrs.v6, uplink.pod_mtu)
            .await
            .context("health endpoint")?;
    health_endpoint::responder::serve(&health_netns, &node.node_name, cidrs.v6.is_some())?;
    let agent_metrics = metrics::AgentMetrics::default();
    let service_lb_state = service_lb::SharedState::default();
    if let (Some(sources), Some(cgroup)) = (services, &datapath.sock_lb_cgroup) {
        start_services_loop(sources, cgroup, node, pins, &agent_metrics, &service_lb_state);
    }
    if let Some(bind) = node.metrics_bind()? {
        let masquerade = reconcilers.masquerade_counter();
        let registry = metrics::registry(pins, &node.data_dir, &agent_metrics, masquerade);
        // The node's own address: its IPv4, or an IPv6-only node's IPv6.
        let own = uplink.address.map(|a| std::net::IpAddr::V4(a.ip)).or(reconcilers.node_ip6.map(Into::into));
        let own = own.context("--metrics-addr node:PORT: the uplink has no address to bind; give ADDR:PORT")?;
        metrics::serve(bind.socket(own), registry).await?;
    }
    Ok((health_netns, agent_metrics, service_lb_state))
}

/// With Services in eBPF, sluice answers for the NodePort range (and
/// hostPorts): reserve it and watch for host sockets on it
/// (`port_ownership`). Without, give back what an earlier run reserved.
fn own_ports(
    node: &AgentConfig,
    services: bool,
    agent_metrics: &metrics::AgentMetrics,
    host_port_claims: service_lb::HostPortClaims,
) -> Option<port_ownership::SharedState> {
    if !services {
        match port_ownership::release(&node.data_dir) {
            Ok(released) if !released.is_empty() => {
                info!(%released, "reserved ports given back (--kube-proxy-replacement=false)")
            }
            Ok(_) => {}
            Err(e) => warn!(error = %format!("{e:#}"), "reserved ports not given back"),
        }
        return None;
    }
    let owned = crate::port_ownership::ranges::owned(node.node_port_range, &[]);
    let host_ports: port_ownership::HostPorts =
        std::sync::Arc::new(move || host_port_claims.lock().expect("host port claims").clone());
    Some(port_ownership::start(
        node.data_dir.clone(),
        node.node_port_range,
        owned,
        host_ports,
        agent_metrics.ports.clone(),
    ))
}

/// Install the bundled CNI plugin into `--cni-bin-dir`, if given.
fn install_plugin(node: &AgentConfig) -> Result<()> {
    if let Some(dir) = &node.cni_bin_dir {
        let dest = plugin_install::install_plugin(&plugin_install::bundled_plugin()?, dir)?;
        info!(path = %dest.display(), "CNI plugin installed");
    }
    Ok(())
}

/// Write the conflist into `--cni-conf-dir`, if given: from then on the
/// runtime sends this node's pods to the plugin.
/// With Services in eBPF (`services`), hostPorts are the socket LB's:
/// portmap is not chained even with --host-ports.
fn write_conflist(
    node: &AgentConfig,
    pod_cidr: Option<Ipv4Network>,
    pod_cidr6: Option<Ipv6Network>,
    mtu: u32,
    pod_device: PodDevice,
    services: bool,
) -> Result<()> {
    if let Some(dir) = &node.cni_conf_dir {
        let mut conf = cni_conf::render(pod_cidr, mtu, pod_device, &node.pin_dir, &node.data_dir);
        if let Some(pod_cidr6) = pod_cidr6 {
            cni_conf::set_pod_cidr6(&mut conf, pod_cidr6);
        }
        match cni_conf::host_ports_by(node.host_ports, services, node.ip_family.has_ipv4()) {
            cni_conf::HostPortsBy::Portmap => cni_conf::chain_portmap(&mut conf),
            cni_conf::HostPortsBy::SocketLb if node.host_ports => {
                info!("hostPorts served by the socket load balancer: portmap not chained (--host-ports ignored)")
            }
            _ => {}
        }
        let path = cni_conf::write(dir, &conf)?;
        info!(path = %path.display(), "CNI config written");
    }
    Ok(())
}

/// What the daemon tells the commands before its first pass.
fn initial_state(
    node: &AgentConfig,
    source: &Source,
    timing: &Timing,
    uplink: &Uplink,
    pod_cidr: Option<Ipv4Network>,
    datapath: &DatapathUp,
    health_netns: &std::path::Path,
) -> AgentState {
    AgentState {
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        node_name: node.node_name.clone(),
        uplink: node.uplink.clone(),
        // Empty on an IPv6-only node (`podCidr6` names its one).
        pod_cidr: pod_cidr.map(|c| c.to_string()).unwrap_or_default(),
        membership: source.name().to_string(),
        started_unix: now_unix(),
        resync_ms: timing.resync.as_millis() as u64,
        health_netns: health_netns.display().to_string(),
        health_ip: pod_cidr.map(|c| health_endpoint::health_ip(c).to_string()).unwrap_or_default(),
        pod_device: datapath.pod_device.to_string(),
        pod_device_why: datapath.pod_device_why.clone(),
        attach_mode: datapath.attach_mode.to_string(),
        attach_mode_why: datapath.attach_mode_why.clone(),
        kernel_degraded: datapath.kernel_degraded.clone(),
        uplink_mtu: uplink.link.mtu,
        pod_mtu: uplink.pod_mtu,
        ..Default::default()
    }
}

/// What the loop keeps from one pass to the next.
struct Daemon {
    node: AgentConfig,
    source: Source,
    netlink: Netlink,
    pins: PinDir,
    uplink_ifindex: u32,
    address: Option<node_address::NodeAddress>,
    ranges: Ranges,
    /// None on an IPv6-only node.
    pod_cidr: Option<Ipv4Network>,
    /// Dual-stack or IPv6-only: the IPv6 pod CIDR.
    pod_cidr6: Option<Ipv6Network>,
    /// Dual-stack and IPv6-only: the uplink's IPv6 address (never a peer's
    /// next hop) and prefix (`Source::membership`).
    own6: Option<Ipv6Network>,
    reconcilers: Reconcilers,
    metrics: metrics::AgentMetrics,
    /// The Services loop's state, when Services are in eBPF.
    service_lb: Option<service_lb::SharedState>,
    /// NetworkPolicy's loop's state, with `--kubernetes`.
    policy: Option<policy_loop::SharedState>,
    /// Port ownership's state, when Services are in eBPF.
    ports: Option<port_ownership::SharedState>,
    state: AgentState,
    last_error: Option<String>,
    last_problems: Vec<Problem>,
}

impl Daemon {
    /// Pass after pass, on each tick or membership change, sweeping on its
    /// own timer, until SIGTERM or SIGINT.
    async fn keep_in_step(mut self, timing: &Timing) -> Result<()> {
        let mut tick = tokio::time::interval(timing.resync);
        let mut sweep_tick = tokio::time::interval(timing.sweep_interval);
        sweep_tick.tick().await; // the first tick is immediate; we just swept
        let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let changed = match &self.source {
            Source::Kubernetes(k) => Some(k.changed.clone()),
            Source::PeersFile(_) => None,
        };
        loop {
            self.pass().await;
            tokio::select! {
                _ = tick.tick() => {}
                _ = async { match &changed { Some(n) => n.notified().await, None => std::future::pending().await } } => {}
                _ = sweep_tick.tick() => {
                    sweep(&self.netlink, &self.node, self.pod_cidr, self.pod_cidr6, &self.pins, timing.sweep_grace).await
                }
                _ = sigterm.recv() => return Ok(()),
                _ = tokio::signal::ctrl_c() => return Ok(()),
            }
        }
    }

    /// The loop's body: follow the uplink's address, apply membership,
    /// and tell the commands (state file) and metrics how it went.
    async fn pass(&mut self) {
        follow_uplink_address(
            &self.netlink,
            &self.pins,
            self.uplink_ifindex,
            &mut self.address,
            &mut self.ranges,
            &mut self.reconcilers,
        )
        .await;
        match self.apply_membership().await {
            Ok((m, failed_routes)) => self.applied(m, failed_routes),
            Err(e) => self.not_applied(e),
        }
        self.publish();
    }

    /// Desired state is read whole on every pass; the diff makes that
    /// cheap and a missed change impossible.
    async fn apply_membership(&mut self) -> Result<(Membership, Vec<kernel_routes::RouteFailure>)> {
        let m = self
            .source
            .membership(&self.node, self.pod_cidr, &self.ranges, self.own6)
            .and_then(|m| m.context("membership not known"))?;
        let started = std::time::Instant::now();
        let done = self.reconcilers.pass(&m).await;
        self.metrics.reconcile_seconds.observe(started.elapsed().as_secs_f64());
        done.map(|failed| (m, failed))
    }

    fn applied(&mut self, m: Membership, failed_routes: Vec<kernel_routes::RouteFailure>) {
        if m.problems != self.last_problems {
            for p in &m.problems {
                warn!(problem = %p, "membership");
            }
            self.last_problems = m.problems.clone();
        }
        let state = &mut self.state;
        state.route_nodes = m.route_nodes.iter().map(|(c, n)| (c.to_string(), n.clone())).collect();
        state.route_paths = m.paths.iter().map(|(c, p)| (c.to_string(), *p)).collect();
        state.route_nodes6 = m.route_nodes6.iter().map(|(c, n)| (c.to_string(), n.clone())).collect();
        state.route_node_ips6 = m.routes6.iter().map(|(c, ip)| (c.to_string(), ip.to_string())).collect();
        state.route_paths6 = m.paths6.iter().map(|(c, p)| (c.to_string(), *p)).collect();
        if m.problems6 != state.problems6 {
            for p in &m.problems6 {
                warn!(problem = %p, "membership (IPv6)");
            }
        }
        state.problems6 = m.problems6;
        self.metrics.set_problems(&m.problems, failed_routes.len());
        state.problems = m.problems;
        let failures: Vec<String> = failed_routes.iter().map(ToString::to_string).collect();
        if failures != state.kernel_route_failures {
            for f in &failures {
                warn!(failure = %f, "kernel route not applied; every other one was");
            }
        }
        state.kernel_route_failures = failures;
        self.last_error = self.reconcilers.netfilter_error();
    }

    fn not_applied(&mut self, e: anyhow::Error) {
        let msg = format!("{e:#}");
        // Keep the routes we have: a bad edit must not cut traffic.
        if self.last_error.as_deref() != Some(&msg) {
            error!(error = %msg, "membership not applied; keeping current routes");
        }
        self.last_error = Some(msg);
    }

    /// The state file and the metrics that follow it.
    fn publish(&mut self) {
        let state = &mut self.state;
        state.last_error = self.last_error.clone();
        state.kubernetes = match &self.source {
            Source::Kubernetes(k) => Some(k.snapshot().1),
            Source::PeersFile(_) => None,
        };
        self.metrics.set_kubernetes(state.kubernetes.clone());
        state.service_lb = self.service_lb.as_ref().map(|s| s.lock().expect("service state lock").clone());
        state.policy = self.policy.as_ref().map(|s| s.lock().expect("policy state lock").clone());
        state.port_ownership = self.ports.as_ref().map(|s| s.lock().expect("port ownership lock").clone());
        self.metrics.set_recovery("nodes", state.kubernetes.as_ref().and_then(|k| k.last_recovery.as_ref()));
        self.metrics.set_recovery("services", state.service_lb.as_ref().and_then(|s| s.watch_recovery.as_ref()));
        state.updated_unix = now_unix();
        if let Err(e) = state_file::write(&self.node.data_dir, state) {
            warn!(error = %format!("{e:#}"), "cannot write agent state");
        }
    }
}

pub async fn run(
    mut node: AgentConfig,
    source: Source,
    services: Option<KubeServices>,
    policy: Option<KubePolicy>,
    bpffs_mount: PathBuf,
    timing: Timing,
) -> Result<()> {
    node.validate_static().context("invalid node configuration")?;
    // An earlier agent's state file would make `status` (the readiness
    // probe) report this one ready before it is: in a container every
    // agent is pid 1. The file comes back once the datapath is up.
    state_file::remove(&node.data_dir)?;
    let netlink = Netlink::open()?;
    let uplink = discover_uplink(&netlink, &mut node).await?;
    let node_ip = uplink.address.map(|a| a.ip);
    require_bpffs(&node, &bpffs_mount)?;

    let ranges = Ranges {
        // IPv6-only: no IPv4 cluster range, and no IPv4 half of membership
        // that would read it (`Source::membership`).
        cluster: node.cluster_cidr.unwrap_or(Ipv4Network::new(std::net::Ipv4Addr::UNSPECIFIED, 32).expect("/32")),
        service: node.service_cidr,
        node_network: uplink.address.map(|a| a.network),
        tunnel: node.tunnel,
        own_ip: node_ip,
    };
    // The uplink's IPv6 address and prefix (dual-stack and IPv6-only): never
    // a peer's next hop; on an IPv6-only node, which peers are on its link.
    let own6 = match node.ip_family.has_ipv6() {
        true => {
            let found = netlink.first_global_ipv6(uplink.link.index).await?;
            if found.is_none() {
                warn!(uplink = %node.uplink, "--ip-family dual or ipv6: the uplink has no global IPv6 address; other nodes' pods are reachable over IPv6 only if they route to this node's pods some other way");
            }
            found.and_then(|(ip, prefix)| Ipv6Network::new(ip, prefix).ok())
        }
        false => None,
    };
    let own_ip6 = own6.map(|n| n.ip());
    let membership = initial_membership(&source, &node, &ranges, own6).await?;
    let pod_cidr = own_pod_cidr(&membership, &node, uplink.address.map(|a| a.network))?;
    let pod_cidr6 = own_pod_cidr6(&membership, &node)?;
    info!(node = %node.node_name, pod_cidr = ?pod_cidr, pod_cidr6 = ?pod_cidr6, source = source.name(), "membership known");

    let datapath = bring_up_datapath(&netlink, &node, &uplink, pod_cidr, pod_cidr6, services.is_some()).await?;
    let pins = datapath.pins.clone();
    let reconcilers = Reconcilers::start(&netlink, &node, &uplink, &datapath, &membership, own_ip6).await?;
    info!(node = %node.node_name, uplink = %node.uplink, node_ip = ?node_ip, own_ip6 = ?own_ip6, mtu = uplink.pod_mtu, pods = datapath.pods, "datapath ready");

    let services_on = services.is_some();
    // hostPorts: this node's pods' (the Pods NetworkPolicy watches), served
    // by the socket LB when Services are in eBPF.
    let host_port_claims = service_lb::HostPortClaims::default();
    let services = services.map(|kube| ServiceSources {
        kube,
        node_ips: node_ips(&source),
        host_ports: policy.clone().map(|pods| service_lb::HostPortSource { pods, claims: host_port_claims.clone() }),
    });
    let (health_netns, agent_metrics, service_lb_state) = serve_node_endpoints(
        &netlink,
        &node,
        &uplink,
        PodCidrs { v4: pod_cidr, v6: pod_cidr6 },
        &datapath,
        services,
        &reconcilers,
    )
    .await?;

    let gc_interval = Duration::from_secs(node.conntrack_gc_interval_secs);
    start_policy_ct_gc(&pins, gc_interval, &agent_metrics);
    configure_uplink_services(&pins, &node, services_on)?;
    start_nat4_gc(&pins, gc_interval, &agent_metrics);
    let ports = own_ports(&node, datapath.sock_lb_cgroup.is_some(), &agent_metrics, host_port_claims);
    // Before the conflist: ADD waits (briefly) for POLICY_PODS, and fails
    // closed once the flag says an agent enforces NetworkPolicy here.
    let policy_state = match (policy, &source) {
        (Some(kube), Source::Kubernetes(nodes)) => {
            policy_maps::PolicyState::open(&pins)?.set_enforcing(true)?;
            Some(start_policy_loop(kube, nodes.clone(), &node, &pins, &agent_metrics))
        }
        _ => {
            // Nothing enforces here (peers file): ADD writes no policy entry.
            policy_maps::PolicyState::open(&pins)?.set_enforcing(false)?;
            None
        }
    };
    install_plugin(&node)?;
    sweep(&netlink, &node, pod_cidr, pod_cidr6, &pins, timing.sweep_grace).await;
    write_conflist(&node, pod_cidr, pod_cidr6, uplink.pod_mtu, datapath.pod_device, datapath.sock_lb_cgroup.is_some())?;

    let mut state = initial_state(&node, &source, &timing, &uplink, pod_cidr, &datapath, &health_netns);
    state.pod_cidr6 = pod_cidr6.map(|c| c.to_string());
    state.health_ip6 = pod_cidr6.map(|c| health_endpoint::health_ip6(c).to_string());
    let daemon = Daemon {
        service_lb: datapath.sock_lb_cgroup.as_ref().map(|_| service_lb_state),
        policy: policy_state,
        ports,
        node,
        source,
        netlink,
        pins,
        uplink_ifindex: uplink.link.index,
        address: uplink.address,
        ranges,
        pod_cidr,
        pod_cidr6,
        own6,
        reconcilers,
        metrics: agent_metrics,
        state,
        last_error: None,
        last_problems: Vec::new(),
    };
    daemon.keep_in_step(&timing).await?;
    warn!("stopping; the datapath stays attached and keeps forwarding");
    Ok(())
}
