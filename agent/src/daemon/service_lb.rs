//! The socket load balancer's loop (`--kube-proxy-replacement=true`): on
//! every Service or EndpointSlice change, replan the Services it touched
//! and apply their frontends to the maps; every `RESYNC`, replan and
//! compare everything. It runs beside the membership loop, so a Service change never
//! waits behind route or netfilter work.
//!
//! Nothing is applied before both kinds are listed: an empty view at start
//! would wipe the maps an earlier agent left, and every Service with them.
use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Result;
use serde::{Deserialize, Serialize};
use sluice_node::datapath::{pins::PinDir, service_maps::ServiceMaps};
use tracing::{info, warn};

use crate::{
    daemon::udp_sockets,
    reconcile::service_maps::{RemovedBackend, ServiceReconciler},
    services::{kubernetes::KubeServices, model::Touched, plan},
};

const RESYNC: Duration = Duration::from_secs(10);

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
}

pub type SharedState = Arc<Mutex<ServiceLbState>>;

/// Run until the process ends. `observe` gets each change's latency
/// (watch event → maps updated) in seconds, `destroyed` the count of each
/// sweep of stale UDP sockets. `state.cgroup` names the cgroup whose
/// processes' sockets are swept.
pub async fn run(
    kube: KubeServices,
    pins: PinDir,
    node_name: String,
    state: SharedState,
    observe: impl Fn(f64) + Send + 'static,
    destroyed: impl Fn(u64) + Send + 'static,
) -> Result<()> {
    let mut maps = ServiceMaps::open(&pins)?;
    let mut reconciler = ServiceReconciler::resume(&mut maps)?;
    info!(frontends = reconciler.len(), "socket load balancer: took over the service maps");
    let mut planner = plan::Planner::default();
    let mut last_full = Instant::now();
    loop {
        // Every RESYNC, replan everything (a safety net: the incremental
        // path can then never drift for long).
        let full = last_full.elapsed() >= RESYNC;
        let (changed, synced, last_change) = kube.with_changes(|view, s, touched| {
            if !s.synced {
                return (None, false, None);
            }
            let touched = if full { Touched::All } else { touched };
            if touched.is_empty() {
                return (Some(Some(Default::default())), true, s.last_change);
            }
            (Some(planner.update(view, touched, &node_name)), true, s.last_change)
        });
        let mut st = ServiceLbState { synced, ..state.lock().expect("service state lock").clone() };
        if let Some(changed) = changed {
            let result = match &changed {
                None => {
                    last_full = Instant::now();
                    reconciler.apply(&mut maps, planner.plan())
                }
                Some(frontends) => reconciler.apply_some(&mut maps, planner.plan(), frontends),
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
            if !removed.is_empty() {
                sweep_udp(&pins, removed, &mut st, &destroyed).await;
            }
        }
        st.frontends = reconciler.len();
        st.backends = reconciler.backend_count();
        *state.lock().expect("service state lock") = st;
        let wake = last_full + RESYNC;
        tokio::select! {
            _ = kube.changed.notified() => {}
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
    }
}

/// Destroy connected UDP sockets to the backends UDP frontends just lost,
/// on a blocking thread (it enters every namespace of the cgroup). Awaited:
/// bounded work (a fraction of a millisecond per namespace), and changes
/// that arrive meanwhile are taken together at the next pass.
async fn sweep_udp(pins: &PinDir, removed: Vec<RemovedBackend>, st: &mut ServiceLbState, destroyed: &impl Fn(u64)) {
    let (cgroup, pins) = (PathBuf::from(&st.cgroup), pins.clone());
    let netns_dir = st.netns_dir.as_ref().map(PathBuf::from);
    let backends = removed.len();
    let started = Instant::now();
    let result =
        tokio::task::spawn_blocking(move || udp_sockets::destroy(&cgroup, netns_dir.as_deref(), &pins, &removed)).await;
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
