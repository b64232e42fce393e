//! The socket load balancer's loop (`--kube-proxy-replacement=true`): on
//! every Service or EndpointSlice change, replan the Services it touched
//! and apply their frontends to the maps; every `RESYNC`, replan and
//! compare everything. It runs beside the membership loop, so a Service change never
//! waits behind route or netfilter work.
//!
//! Nothing is applied before both kinds are listed: an empty view at start
//! would wipe the maps an earlier agent left, and every Service with them.
//!
//! `supervise` keeps the loop running: one that stops (it can only fail,
//! opening the maps at its start) is recorded for `status` and started
//! again with backoff. Each pass beats `heartbeat_unix`, so `status
//! --liveness` (the livenessProbe) tells a wedged loop from a quiet one.
use std::{
    collections::BTreeMap,
    future::Future,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{anyhow, Result};
use serde::{Deserialize, Serialize};
use sluice_common::{nat::Nat4Key, nat6::Nat6Key, services::SockLbConfig};
use sluice_node::{
    clock::now_unix,
    datapath::{
        nat4_gc::{self, Translated},
        nat4_maps::{NatTable, NodeAddressMap6, SourceRanges, SourceRanges6},
        pinned_maps::{ip_be, ip_from_be},
        pins::PinDir,
        service_maps::{own_netns_cookie, set_sock_lb_config, NodeAddressMap, ServiceMaps, ServiceMaps6},
    },
    net::netlink::Netlink,
};
use tracing::{error, info, warn};

use crate::{
    daemon::{health_check_ports::HealthCheckPorts, udp_sockets},
    policy::kubernetes::KubePolicy,
    port_ownership::listeners::HostPortClaim,
    reconcile::{
        service_maps::{PassStats, RemovedBackend, ServiceReconciler, V6},
        source_ranges,
    },
    services::{health_check, host_ports, kubernetes::KubeServices, model::Touched, node_addresses, plan},
};

/// This node's hostPorts as port ownership checks host sockets against
/// them (the Services loop keeps it).
pub type HostPortClaims = Arc<Mutex<Vec<HostPortClaim>>>;

/// Where hostPorts come from: the Pods the NetworkPolicy watch keeps.
#[derive(Clone)]
pub struct HostPortSource {
    pub pods: KubePolicy,
    pub claims: HostPortClaims,
}

/// Every node's InternalIPs, both families (the Node watch's current
/// view).
pub type NodeIps = Arc<dyn Fn() -> Vec<IpAddr> + Send + Sync>;

const RESYNC: Duration = Duration::from_secs(10);
/// A loop whose last pass is older than this is wedged: it passes at
/// least every `RESYNC`, and the supervisor beats before each restart
/// wait (at most `RESTART_MAX`).
pub const WEDGED_AFTER_SECS: u64 = 60;
const RESTART_FIRST: Duration = Duration::from_secs(1);
const RESTART_MAX: Duration = Duration::from_secs(30);
/// A run that lasted this long starts the backoff over.
const RESTART_RESET: Duration = Duration::from_secs(60);

/// What `status` shows about the socket load balancer.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceLbState {
    /// The cgroup v2 directory the programs are attached to.
    pub cgroup: String,
    /// Where the runtime pins pods' network namespaces (`--netns-dir`),
    /// swept for stale UDP sockets besides the cgroup's processes'.
    #[serde(default)]
    pub netns_dir: Option<String>,
    /// Services and EndpointSlices both listed; the maps follow them.
    pub synced: bool,
    /// Frontends (cluster IP × port × protocol) and backends in the maps.
    pub frontends: usize,
    pub backends: usize,
    /// Balanced Services (with at least one frontend).
    pub services: usize,
    /// hostPort frontends (pods of this node) in the maps.
    #[serde(default)]
    pub host_ports: usize,
    /// hostPorts two pods here claim: `frontend: kept pod, refused pod`.
    #[serde(default)]
    pub host_port_conflicts: Vec<String>,
    /// Addresses NodePorts answer on (`NODE_ADDRESSES`: this node's and the
    /// other nodes'), besides loopback from the node itself.
    #[serde(default)]
    pub node_addresses: Vec<String>,
    /// healthCheckNodePorts served (`externalTrafficPolicy: Local`).
    #[serde(default)]
    pub health_check_ports: Vec<u16>,
    pub last_error: Option<String>,
    /// The last pass that changed something: how long from the watch
    /// event to the maps holding it.
    pub last_update_ms: Option<f64>,
    /// Connected UDP sockets destroyed because the backend they were
    /// connected to left the Service (`udp_sockets`), since the start.
    #[serde(default)]
    pub udp_sockets_destroyed: u64,
    /// The last such sweep: how long it took over how many namespaces.
    #[serde(default)]
    pub last_udp_sweep_ms: Option<f64>,
    #[serde(default)]
    pub last_udp_sweep_namespaces: usize,
    /// The last pass of the loop (or restart of it): `status` calls the
    /// loop wedged past `WEDGED_AFTER_SECS`. 0: an agent that predates it.
    #[serde(default)]
    pub heartbeat_unix: u64,
    /// Why the loop stopped, while it waits to be started again.
    #[serde(default)]
    pub stopped: Option<String>,
    /// Times the loop was started again.
    #[serde(default)]
    pub restarts: u64,
    /// The Service or EndpointSlice watch's error, while it has not
    /// recovered (the maps do not follow the cluster meanwhile).
    #[serde(default)]
    pub watch_error: Option<String>,
    /// The watches' last return to synced after an outage (`kube_watch`).
    #[serde(default)]
    pub watch_recovery: Option<crate::kube_watch::Recovery>,
}

pub type SharedState = Arc<Mutex<ServiceLbState>>;

/// Run until the process ends. `observe` gets each change's latency
/// (watch event → maps updated) in seconds, `destroyed` the count of each
/// sweep of stale UDP sockets. `state.cgroup` names the cgroup whose
/// processes' sockets are swept.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    kube: KubeServices,
    pins: PinDir,
    node_name: String,
    node_ips: NodeIps,
    host_port_source: Option<HostPortSource>,
    state: SharedState,
    observe: impl Fn(f64) + Send + 'static,
    destroyed: impl Fn(u64) + Send + 'static,
) -> Result<()> {
    let mut maps = ServiceMaps::open(&pins)?;
    let mut reconciler = ServiceReconciler::resume(&mut maps)?;
    // IPv6 Services: the twin maps, planned and applied beside IPv4's.
    let mut maps6 = ServiceMaps6::open(&pins)?;
    let mut reconciler6 = ServiceReconciler::<V6>::resume(&mut maps6)?;
    info!(
        frontends = reconciler.len(),
        ipv6_frontends = reconciler6.len(),
        "socket load balancer: took over the service maps"
    );
    // Loopback NodePorts: from this namespace only (the agent runs in the
    // node's).
    let host_netns_cookie = own_netns_cookie()?;
    set_sock_lb_config(&pins, SockLbConfig { host_netns_cookie })?;
    let mut addresses = NodeAddressMap::open(&pins)?;
    let mut addresses6 = NodeAddressMap6::open(&pins)?;
    let mut ranges = SourceRanges::open(&pins)?;
    let mut ranges6 = SourceRanges6::open(&pins)?;
    let netlink = Netlink::open()?;
    let mut planner = plan::Planner::default();
    let mut planner6 = plan::Planner::<Ipv6Addr>::default();
    let mut health_ports = HealthCheckPorts::default();
    let mut last_full = Instant::now();
    let mut first = true;
    // hostPorts are replanned when Pods changed (or on a full pass).
    let mut host_ports_due = true;
    let mut last_host_ports: Option<host_ports::HostPortPlan> = None;
    loop {
        // Every RESYNC, replan everything (a safety net: the incremental
        // path can then never drift for long).
        let full = last_full.elapsed() >= RESYNC;
        // Node addresses change seldom: at start and with every full pass.
        let node_addresses = if full || first {
            first = false;
            if let Err(e) = sync_node_addresses6(&netlink, &mut addresses6, &node_ips).await {
                warn!(error = %format!("{e:#}"), "IPv6 NodePort addresses not updated");
            }
            Some(sync_node_addresses(&netlink, &mut addresses, &node_ips).await)
        } else {
            None
        };
        let (changed, watch, checks) = kube.with_changes(|view, s, touched| {
            if !s.synced {
                return (None, s.clone(), None);
            }
            let checks = Some(health_check::desired(view, &node_name));
            let touched = if full { Touched::All } else { touched };
            if touched.is_empty() {
                return (Some((Some(Default::default()), Some(Default::default()))), s.clone(), checks);
            }
            let changed6 = planner6.update(view, touched.clone(), &node_name);
            (Some((planner.update(view, touched, &node_name), changed6)), s.clone(), checks)
        });
        let last_change = watch.last_change;
        let mut st = ServiceLbState {
            synced: watch.synced,
            watch_error: watch.last_error,
            watch_recovery: watch.last_recovery,
            heartbeat_unix: now_unix(),
            stopped: None,
            ..state.lock().expect("service state lock").clone()
        };
        match node_addresses {
            Some(Ok(list)) => st.node_addresses = list.iter().map(Ipv4Addr::to_string).collect(),
            Some(Err(e)) => {
                let msg = format!("node addresses: {e:#}");
                warn!(error = %msg, "NodePort addresses not updated; retrying");
                st.last_error = Some(msg);
            }
            None => {}
        }
        if let Some((changed, changed6)) = changed {
            // loadBalancerSourceRanges: new ones before the frontends that
            // need them are flagged, old ones after (`source_ranges`).
            let ranges_added = source_ranges::add_new(&mut ranges, planner.plan());
            let ranges6_added = source_ranges::add_new(&mut ranges6, planner6.plan());
            let result4 = match &changed {
                None => {
                    last_full = Instant::now();
                    reconciler.apply(&mut maps, planner.plan())
                }
                Some(frontends) => reconciler.apply_some(&mut maps, planner.plan(), frontends),
            };
            let result6 = match &changed6 {
                None => reconciler6.apply(&mut maps6, planner6.plan()),
                Some(frontends) => reconciler6.apply_some(&mut maps6, planner6.plan(), frontends),
            };
            let ranges_removed = source_ranges::remove_old(&mut ranges, planner.plan());
            let ranges6_removed = source_ranges::remove_old(&mut ranges6, planner6.plan());
            let result4 = with_ranges(result4, ranges_added, ranges_removed);
            let result6 = with_ranges(result6, ranges6_added, ranges6_removed);
            // One pass over both families: counted together, the first
            // error reported (IPv4's, then IPv6's).
            let result = match (result4, result6) {
                (Ok(a), Ok(b)) => Ok(PassStats {
                    added: a.added + b.added,
                    changed: a.changed + b.changed,
                    removed: a.removed + b.removed,
                    failed: 0,
                }),
                (Err(e), _) => Err(e),
                (Ok(_), Err(e)) => Err(e.context("IPv6")),
            };
            match result {
                Ok(stats) => {
                    if stats.added + stats.changed + stats.removed > 0 {
                        if let Some(at) = last_change {
                            let secs = at.elapsed().as_secs_f64();
                            observe(secs);
                            st.last_update_ms = Some(secs * 1000.0);
                        }
                        info!(
                            added = stats.added,
                            changed = stats.changed,
                            removed = stats.removed,
                            "service maps updated"
                        );
                    }
                    st.last_error = None;
                }
                Err(e) => {
                    let msg = format!("{e:#}");
                    if st.last_error.as_deref() != Some(&msg) {
                        warn!(error = %msg, "service maps not fully updated; retrying");
                    }
                    st.last_error = Some(msg);
                    // A failed frontend must be retried even if nothing
                    // else changes: replan everything at the next wake.
                    last_full = Instant::now() - RESYNC;
                }
            }
            st.services = planner.services();
            // Whether or not every frontend switched: those that did
            // no longer offer what they lost.
            let removed = reconciler.take_removed_udp_backends();
            let removed6 = reconciler6.take_removed_udp_backends();
            if !removed.is_empty() || !removed6.is_empty() {
                sweep_udp(&pins, removed, removed6, &mut st, &destroyed).await;
            }
        }
        if let Some(source) = host_port_source.as_ref().filter(|_| host_ports_due || full) {
            let planned = source.pods.with_view(|view, watch| {
                watch.synced.then(|| host_ports::desired(view.model.pods.values(), &node_name))
            });
            // Nothing before the Pods are listed: an empty list would
            // remove every hostPort an earlier agent left.
            if let Some((wanted, conflicts)) = planned {
                let conflicts: Vec<String> =
                    conflicts.iter().map(|c| format!("{}: {}, not {}", c.frontend, c.kept, c.refused)).collect();
                if conflicts != st.host_port_conflicts {
                    for c in &conflicts {
                        warn!(conflict = %c, "two pods here claim one hostPort; the first by name keeps it");
                    }
                }
                st.host_port_conflicts = conflicts;
                if last_host_ports.as_ref() == Some(&wanted) && !full {
                    host_ports_due = false;
                } else {
                    match reconciler.apply_host_ports(&mut maps, &wanted) {
                        Ok(stats) => {
                            if stats.added + stats.changed + stats.removed > 0 {
                                info!(
                                    added = stats.added,
                                    changed = stats.changed,
                                    removed = stats.removed,
                                    "hostPort frontends updated"
                                );
                            }
                            *source.claims.lock().expect("host port claims") = host_ports::claims(&wanted);
                            last_host_ports = Some(wanted);
                            host_ports_due = false;
                        }
                        Err(e) => {
                            let msg = format!("hostPorts: {e:#}");
                            warn!(error = %msg, "hostPort frontends not fully updated; retrying");
                            st.last_error = Some(msg);
                            last_full = Instant::now() - RESYNC;
                        }
                    }
                }
            }
            st.host_ports = reconciler.host_port_count();
        }
        if let Some(checks) = checks {
            // kube-proxy's "healthy": its rules are in sync.
            let healthy = st.last_error.is_none();
            st.health_check_ports = checks.keys().copied().collect();
            if !health_ports.update(checks, healthy).is_empty() && st.last_error.is_none() {
                st.last_error = Some("a healthCheckNodePort could not be bound".into());
            }
        }
        st.frontends = reconciler.len() + reconciler6.len();
        st.backends = reconciler.backend_count() + reconciler6.backend_count();
        *state.lock().expect("service state lock") = st;
        let wake = last_full + RESYNC;
        let pods_changed = async {
            match &host_port_source {
                Some(s) => s.pods.pods_changed.notified().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = kube.changed.notified() => {}
            _ = pods_changed => host_ports_due = true,
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
    }
}

/// A family's pass with its `loadBalancerSourceRanges` updates: the
/// pass's error first, then the ranges'.
fn with_ranges(pass: Result<PassStats>, added: Result<usize>, removed: Result<usize>) -> Result<PassStats> {
    match (pass, added, removed) {
        (Ok(stats), Ok(_), Ok(_)) => Ok(stats),
        (Err(e), _, _) => Err(e),
        (_, Err(e), _) | (_, _, Err(e)) => Err(e.context("loadBalancerSourceRanges not fully updated")),
    }
}

/// Make `NODE_ADDRESSES` hold this namespace's addresses and the nodes'
/// InternalIPs. Returns the addresses it holds.
async fn sync_node_addresses(netlink: &Netlink, map: &mut NodeAddressMap, node_ips: &NodeIps) -> Result<Vec<Ipv4Addr>> {
    let local = netlink.all_ipv4_addresses().await?;
    let nodes: Vec<Ipv4Addr> =
        node_ips().into_iter().filter_map(|ip| if let IpAddr::V4(v4) = ip { Some(v4) } else { None }).collect();
    let want = node_addresses::desired(&local, &nodes);
    let actual: BTreeMap<Ipv4Addr, u32> = map.entries()?.into_iter().map(|(ip, k)| (ip_from_be(ip), k)).collect();
    let diff = node_addresses::diff(&want, &actual);
    if !diff.is_empty() {
        info!(put = diff.put.len(), removed = diff.remove.len(), "NodePort addresses updated");
    }
    for ip in diff.remove {
        map.remove(ip_be(ip))?;
    }
    for (ip, kind) in diff.put {
        map.put(ip_be(ip), kind)?;
    }
    Ok(want.into_keys().collect())
}

/// Make `NODE_ADDRESSES6` hold this namespace's own IPv6 addresses (the
/// uplink's IPv6 NodePorts, `lb6`, and the socket's) and the other nodes'
/// IPv6 InternalIPs (the socket's).
async fn sync_node_addresses6(netlink: &Netlink, map: &mut NodeAddressMap6, node_ips: &NodeIps) -> Result<()> {
    let nodes: Vec<Ipv6Addr> =
        node_ips().into_iter().filter_map(|ip| if let IpAddr::V6(v6) = ip { Some(v6) } else { None }).collect();
    let want = node_addresses::desired6(&netlink.all_ipv6_addresses().await?, &nodes);
    let actual: BTreeMap<Ipv6Addr, u32> = map.entries()?.into_iter().map(|(ip, k)| (Ipv6Addr::from(ip), k)).collect();
    let diff = node_addresses::diff(&want, &actual);
    if !diff.is_empty() {
        info!(put = diff.put.len(), removed = diff.remove.len(), "IPv6 NodePort addresses updated");
    }
    for ip in diff.remove {
        map.remove(ip)?;
    }
    for (ip, kind) in diff.put {
        map.put(ip, kind)?;
    }
    Ok(())
}

/// When to start a stopped loop again: 1 s, doubling to 30 s; from 1 s
/// again after a run that lasted a minute.
#[derive(Debug)]
pub struct RestartBackoff {
    next: Duration,
}

impl Default for RestartBackoff {
    fn default() -> Self {
        Self { next: RESTART_FIRST }
    }
}

impl RestartBackoff {
    /// The wait before the next start, after a run that lasted `ran_for`.
    pub fn after_stop(&mut self, ran_for: Duration) -> Duration {
        if ran_for >= RESTART_RESET {
            self.next = RESTART_FIRST;
        }
        let wait = self.next;
        self.next = (self.next * 2).min(RESTART_MAX);
        wait
    }
}

/// Run the loop `start` makes, forever: each time it stops, record why in
/// `state` (for `status`) and start it again after `RestartBackoff`'s
/// wait. The maps keep their last state meanwhile.
pub async fn supervise<F, Fut>(state: SharedState, mut start: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let mut backoff = RestartBackoff::default();
    loop {
        let started = Instant::now();
        let why = match start().await {
            Ok(()) => anyhow!("the loop returned"),
            Err(e) => e,
        };
        let wait = backoff.after_stop(started.elapsed());
        let why = format!("{why:#}");
        error!(error = %why, restart_in_ms = wait.as_millis() as u64, "socket load balancer loop stopped; the maps keep their last state");
        {
            let mut st = state.lock().expect("service state lock");
            st.stopped = Some(why);
            st.heartbeat_unix = now_unix();
        }
        tokio::time::sleep(wait).await;
        state.lock().expect("service state lock").restarts += 1;
    }
}

/// Remove the `NAT4` or `NAT6` (`K`) pairs of the UDP connections
/// translated to backends their frontends lost (`lost`).
fn purge_nat<K: Translated>(pins: &PinDir, lost: Vec<(K::Frontend, K::Backend)>) {
    if lost.is_empty() {
        return;
    }
    match NatTable::<K>::open(pins).and_then(|mut nat| nat4_gc::purge_removed_backends(&mut nat, &lost)) {
        Ok(0) => {}
        Ok(entries) => {
            info!(entries, backends = lost.len(), table = K::MAP, "connections to removed UDP backends purged")
        }
        Err(e) => warn!(error = %format!("{e:#}"), table = K::MAP, "connections to removed UDP backends not purged"),
    }
}

/// Destroy connected UDP sockets to the backends UDP frontends just lost,
/// on a blocking thread (it enters every namespace of the cgroup). Awaited:
/// bounded work (a fraction of a millisecond per namespace), and changes
/// that arrive meanwhile are taken together at the next pass.
async fn sweep_udp(
    pins: &PinDir,
    removed: Vec<RemovedBackend>,
    removed6: Vec<udp_sockets::RemovedBackend6>,
    st: &mut ServiceLbState,
    destroyed: &impl Fn(u64),
) {
    // Connections from outside the uplink translated to those backends
    // (`NAT4`, `NAT6`): gone too, so the client's next datagram picks a
    // live one.
    purge_nat::<Nat4Key>(pins, removed.iter().map(|r| (r.frontend, r.backend)).collect());
    purge_nat::<Nat6Key>(pins, removed6.iter().map(|r| (r.frontend, r.backend)).collect());
    let (cgroup, pins) = (PathBuf::from(&st.cgroup), pins.clone());
    let netns_dir = st.netns_dir.as_ref().map(PathBuf::from);
    let backends = removed.len() + removed6.len();
    let started = Instant::now();
    let result = tokio::task::spawn_blocking(move || {
        udp_sockets::destroy(&cgroup, netns_dir.as_deref(), &pins, &removed, &removed6)
    })
    .await;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    match result {
        Ok(Ok(sweep)) => {
            info!(
                backends,
                namespaces = sweep.namespaces,
                connected = sweep.connected,
                destroyed = sweep.destroyed,
                ms,
                "connected UDP sockets to removed backends destroyed"
            );
            for (pid, error) in &sweep.failed {
                warn!(pid, %error, "network namespace not swept for stale UDP sockets");
            }
            if sweep.hidden_pids > 0 && st.netns_dir.is_none() {
                warn!(
                    hidden = sweep.hidden_pids,
                    cgroup = %st.cgroup,
                    "processes of the cgroup are in a pid namespace the agent cannot see (no hostPID?): \
                     their stale UDP sockets cannot be destroyed; --netns-dir /run/netns reaches pods'"
                );
            }
            st.udp_sockets_destroyed += sweep.destroyed as u64;
            st.last_udp_sweep_ms = Some(ms);
            st.last_udp_sweep_namespaces = sweep.namespaces;
            destroyed(sweep.destroyed as u64);
        }
        Ok(Err(e)) => warn!(error = %format!("{e:#}"), backends, "stale UDP sockets not destroyed"),
        Err(e) => warn!(error = %e, backends, "stale UDP socket sweep panicked"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[test]
    fn restart_backoff_doubles_to_thirty_seconds_and_starts_over_after_a_long_run() {
        let mut b = RestartBackoff::default();
        let short = Duration::from_millis(5);
        let waits: Vec<u64> = (0..7).map(|_| b.after_stop(short).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(b.after_stop(Duration::from_secs(61)), Duration::from_secs(1));
        assert_eq!(b.after_stop(short), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_loop_that_fails_at_start_is_reported_and_started_again() {
        let state = SharedState::default();
        let starts = Arc::new(AtomicU32::new(0));
        let (st, n) = (state.clone(), starts.clone());
        let task = tokio::spawn(supervise(st, move || {
            let n = n.clone();
            async move {
                // Fails twice (as opening missing maps would), then runs.
                if n.fetch_add(1, Ordering::SeqCst) < 2 {
                    anyhow::bail!("open the service maps: no such pin");
                }
                std::future::pending::<Result<()>>().await
            }
        }));
        let t0 = tokio::time::Instant::now();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(starts.load(Ordering::SeqCst), 1);
        let st = state.lock().unwrap().clone();
        assert_eq!(st.stopped.as_deref(), Some("open the service maps: no such pin"));
        assert!(st.heartbeat_unix > 0, "the supervisor beats while it waits");
        // Started again after 1 s, then after 2 s more; it then runs.
        tokio::time::sleep_until(t0 + Duration::from_millis(1005)).await;
        assert_eq!(starts.load(Ordering::SeqCst), 2);
        tokio::time::sleep_until(t0 + Duration::from_millis(3005)).await;
        assert_eq!(starts.load(Ordering::SeqCst), 3);
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert_eq!(starts.load(Ordering::SeqCst), 3, "a running loop is left alone");
        assert_eq!(state.lock().unwrap().restarts, 2);
        task.abort();
    }
}
