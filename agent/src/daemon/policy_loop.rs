//! NetworkPolicy's loop: on every Pod, Namespace or NetworkPolicy change
//! (gathered for `DEBOUNCE`), compile this node's policy from the whole
//! view and apply the difference to the maps (`reconcile::policy_maps`);
//! every `RESYNC`, read the maps back first (the CNI plugin writes them
//! too) and compare everything.
//!
//! Nothing is applied before all three kinds are listed: an empty view
//! would leave every pod unselected (open) and every peer unknown.
//!
//! Each pass writes, when they changed, the names table `monitor` reads
//! (`policy::names`) and the pods' policy `status --policy` shows
//! (`policy::report`), JSON files in the agent's data dir. A full
//! map is logged once per change of who it affects, counted
//! (`sluice_policy_map_full_total{map}`) and kept in the state until a pass
//! fits again; `status` reports the agent unhealthy meanwhile.
use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use sluice_node::{
    clock::now_unix,
    ipam::store::{read_pod_leases, read_pod_leases6},
};
use tracing::{error, info, warn};

use crate::{
    policy::{
        kubernetes::KubePolicy,
        model::{NodeAddresses, PodKey},
        names::NamesTable,
        report::{LocalPod, PolicyReport},
    },
    reconcile::{
        policy_desired::{IncrementalDesired, NodeInputs, UpdateSummary},
        policy_maps::{ApplyReport, PolicyReconciler, PolicyRefs, PolicyTables},
    },
};

/// How long a change waits for the ones right behind it (a Deployment's
/// pods, a namespace relabelled with its pods) before a pass.
pub const DEBOUNCE: Duration = Duration::from_millis(10);
const RESYNC: Duration = Duration::from_secs(10);

/// What `status` shows about NetworkPolicy enforcement.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PolicyLoopState {
    /// Pods, Namespaces and NetworkPolicies all listed; the maps follow them.
    pub synced: bool,
    /// Local pods (this node's, not host network) and the isolated ones.
    pub local_pods: usize,
    pub isolated_pods: usize,
    pub policies: usize,
    pub identities: usize,
    pub rule_sets: usize,
    pub rules: usize,
    /// Full maps and the pods each left isolated with no allow rule.
    pub full: Vec<String>,
    /// Objects kept in a degraded form (refused policies enforced as
    /// isolating stand-ins, pods without readable ports).
    pub refused: BTreeMap<String, String>,
    pub last_error: Option<String>,
    /// The last pass that changed the maps: from the first watch event it
    /// carried to the maps holding it, and its compile + apply alone.
    pub last_update_ms: Option<f64>,
    pub last_pass_ms: Option<f64>,
    /// Of the last pass: compiling the desired maps, and applying them.
    pub last_compile_ms: Option<f64>,
    pub last_apply_ms: Option<f64>,
    pub heartbeat_unix: u64,
    pub watch_error: Option<String>,
    pub stopped: Option<String>,
    pub restarts: u64,
}

impl PolicyLoopState {
    /// Whether `status` must call the agent unhealthy: a full map (pods
    /// isolated beyond what their policies say) or maps not written.
    pub fn unhealthy(&self) -> Option<String> {
        if let Some(s) = &self.stopped {
            return Some(format!(
                "NetworkPolicy loop stopped: {s}; restarting (restarted {} times); the policy maps keep their last state",
                self.restarts
            ));
        }
        if !self.synced {
            return Some(format!(
                "NetworkPolicy not synced: {}; new pods wait for their policy (fail closed)",
                self.watch_error.as_deref().unwrap_or("Pods, Namespaces and NetworkPolicies not listed yet")
            ));
        }
        if !self.full.is_empty() {
            return Some(format!("NetworkPolicy: {}", self.full.join("; ")));
        }
        if let Some(e) = &self.last_error {
            return Some(format!("NetworkPolicy maps not updated: {e}"));
        }
        None
    }
}

pub type SharedState = Arc<Mutex<PolicyLoopState>>;

/// What the loop needs besides the watchers and the maps.
#[derive(Clone)]
pub struct PolicyNode {
    pub node_name: String,
    /// The pod cluster CIDRs of both families.
    pub cluster_cidrs: Vec<IpNetwork>,
    /// Where the IPAM leases and the names table are.
    pub data_dir: PathBuf,
    /// Every node's name → its addresses (IPv4, and IPv6 on a dual-stack
    /// node), now.
    pub nodes: Arc<dyn Fn() -> NodeAddresses + Send + Sync>,
}

/// What a pass needs and keeps between passes: moved onto a blocking
/// thread for each pass (compiling and writing thousands of map entries
/// must not hold a runtime worker), and back.
struct PassState<T> {
    kube: KubePolicy,
    tables: T,
    reconciler: PolicyReconciler,
    desired: IncrementalDesired,
    /// Every pod's address → name, rebuilt when some pod's addresses
    /// changed (for the names table).
    pods_by_ip: BTreeMap<IpAddr, PodKey>,
}

/// What one pass found and did.
struct PassOutcome {
    report: ApplyReport,
    summary: UpdateSummary,
    generation: u64,
    policies: usize,
    refused: BTreeMap<String, String>,
    since: Option<Instant>,
    compile_ms: f64,
    apply_ms: f64,
    /// The pods' policy for `status --policy`, when anything changed.
    pod_report: Option<PolicyReport>,
}

impl<T: PolicyTables> PassState<T> {
    fn pass(&mut self, node: &PolicyNode, resync: bool) -> Result<PassOutcome> {
        if resync {
            self.reconciler.refresh(&mut self.tables)?;
        }
        // After the maps: a lease the plugin wrote entries for is older
        // than those entries, so it is seen here.
        // Both families' (an IPv6 lease beside each IPv4 one, dual-stack).
        let leases: Vec<(IpAddr, Option<String>)> = (read_pod_leases(&node.data_dir)?.into_iter())
            .map(|l| (IpAddr::V4(l.ip), l.pod))
            .chain(read_pod_leases6(&node.data_dir)?.into_iter().map(|l| (IpAddr::V6(l.ip), l.pod)))
            .collect();
        let nodes = (node.nodes)();
        let inputs =
            NodeInputs { node: &node.node_name, nodes: &nodes, cluster_cidrs: &node.cluster_cidrs, leases: &leases };
        let compile_started = Instant::now();
        // Under the watchers' lock, reading their model in place: only what
        // changed since the last pass is compiled again.
        let desired = &mut self.desired;
        let pods_by_ip = &mut self.pods_by_ip;
        let ((summary, generation, policies, refused), since) = self.kube.with_changes(|view, watch, touched| {
            let summary = desired.update(&view.model, &touched, &inputs);
            if summary.addresses_changed {
                *pods_by_ip = NamesTable::pods_of(&view.model);
            }
            (summary, watch.generation, view.model.policies.len(), view.refused.clone())
        });
        let apply_started = Instant::now();
        let report = self.reconciler.apply(&mut self.tables, self.desired.view())?;
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let compile_ms = ms(apply_started - compile_started);
        let apply_ms = ms(apply_started.elapsed());
        let pod_report = (summary.changed() || report.changed() || resync).then(|| {
            let local = self
                .desired
                .pods()
                .iter()
                .map(|(k, p)| {
                    let ips = p.ips.iter().copied().collect();
                    (k.clone(), LocalPod { ips, identity: p.identity, identity6: p.identity6 })
                })
                .collect();
            PolicyReport::build(self.desired.identities(), self.desired.compiled(), &self.pods_by_ip, &local)
        });
        Ok(PassOutcome { report, summary, generation, policies, refused, since, compile_ms, apply_ms, pod_report })
    }
}

/// Run until the process ends (or the maps fail to be read). `observe`
/// gets each applied change's latency (first watch event → maps) in
/// seconds; `full` each full map met, once per pass.
pub async fn run<T: PolicyTables + Send + 'static>(
    kube: KubePolicy,
    mut tables: T,
    node: PolicyNode,
    state: SharedState,
    observe: impl Fn(f64),
    full: impl Fn(&'static str),
) -> Result<()> {
    let names_path = NamesTable::path(&node.data_dir);
    let mut names = NamesTable::read(&names_path).unwrap_or_default();
    let refs = PolicyRefs::from_table(&names.policy_table());
    let reconciler = PolicyReconciler::resume(&mut tables)?;
    info!(rule_sets = reconciler.rule_sets(), "NetworkPolicy: took over the policy maps");
    let mut pass_state = Some(PassState {
        kube: kube.clone(),
        tables,
        reconciler,
        desired: IncrementalDesired::new(&node.node_name, refs),
        pods_by_ip: BTreeMap::new(),
    });
    let mut last_full = Instant::now();
    let mut last_generation = None;
    let mut last_full_msg: Vec<String> = Vec::new();
    let mut last_report = PolicyReport::default();
    // What the names table was last made from (pods' addresses, policy refs).
    let mut last_names_key = None;
    loop {
        let resync = last_full.elapsed() >= RESYNC;
        let watch = kube.with_view(|_, s| s.clone());
        let mut st = PolicyLoopState {
            synced: watch.synced,
            watch_error: watch.last_error.clone(),
            heartbeat_unix: now_unix(),
            stopped: None,
            ..state.lock().expect("policy state lock").clone()
        };
        let due = resync || last_generation != Some(watch.generation);
        if watch.synced && due {
            let started = Instant::now();
            let mut ps = pass_state.take().expect("the pass state is back after every pass");
            let n = node.clone();
            let (ps, pass) = tokio::task::spawn_blocking(move || {
                let pass = ps.pass(&n, resync);
                (ps, pass)
            })
            .await
            .context("the policy pass panicked")?;
            if resync {
                last_full = Instant::now();
            }
            match pass {
                Ok(out) => {
                    last_generation = Some(out.generation);
                    let report = &out.report;
                    let pass_ms = started.elapsed().as_secs_f64() * 1000.0;
                    st.last_pass_ms = Some(pass_ms);
                    st.last_compile_ms = Some(out.compile_ms);
                    st.last_apply_ms = Some(out.apply_ms);
                    if report.changed() {
                        if let Some(at) = out.since {
                            let secs = at.elapsed().as_secs_f64();
                            observe(secs);
                            st.last_update_ms = Some(secs * 1000.0);
                        }
                        info!(
                            written = report.written,
                            deleted = report.deleted,
                            sets_added = report.sets_added,
                            sets_removed = report.sets_removed,
                            rebuilt = out.summary.rebuilt,
                            pods_reclassified = out.summary.pods_reclassified,
                            pods_recompiled = out.summary.pods_recompiled,
                            pass_ms,
                            "policy maps updated"
                        );
                    }
                    let msgs: Vec<String> = report.full.iter().map(ToString::to_string).collect();
                    for f in &report.full {
                        full(f.map);
                    }
                    if msgs != last_full_msg {
                        for m in &msgs {
                            error!(error = %m, "NetworkPolicy map full: failed closed");
                        }
                        if msgs.is_empty() && !last_full_msg.is_empty() {
                            info!("NetworkPolicy maps fit again");
                        }
                        last_full_msg = msgs.clone();
                    }
                    st.full = msgs;
                    st.last_error = None;
                    st.refused = out.refused;
                    st.local_pods = ps.desired.pods().len();
                    st.isolated_pods = ps.desired.pods().values().filter(|p| p.flags != 0).count();
                    st.policies = out.policies;
                    st.identities = ps.reconciler.actual().identities.len();
                    st.rule_sets = ps.reconciler.rule_sets();
                    st.rules = ps.reconciler.actual().rules.len();
                    if let Some(pod_report) = out.pod_report.filter(|r| *r != last_report) {
                        match pod_report.write(&PolicyReport::path(&node.data_dir)) {
                            Ok(()) => last_report = pod_report,
                            Err(e) => warn!(error = %format!("{e:#}"), "cannot write the pods' policy report"),
                        }
                    }
                    let refs_now = ps.desired.refs().table();
                    let names_key = (out.summary.addresses_changed, refs_now.clone());
                    if names_key.0 || last_names_key.as_ref() != Some(&names_key.1) {
                        let table = NamesTable::new(refs_now, ps.pods_by_ip.clone());
                        if table == names {
                            last_names_key = Some(names_key.1);
                        } else {
                            match table.write(&names_path) {
                                Ok(()) => {
                                    names = table;
                                    last_names_key = Some(names_key.1);
                                }
                                // Written again at the next pass.
                                Err(e) => {
                                    last_names_key = None;
                                    warn!(error = %format!("{e:#}"), "cannot write the policy names table")
                                }
                            }
                        }
                    }
                }
                Err(e) => {
                    let msg = format!("{e:#}");
                    if st.last_error.as_deref() != Some(&msg) {
                        warn!(error = %msg, "policy maps not fully updated; retrying");
                    }
                    st.last_error = Some(msg);
                    // Read everything back at the next wake.
                    last_full = Instant::now() - RESYNC;
                }
            }
            pass_state = Some(ps);
        }
        *state.lock().expect("policy state lock") = st;
        let wake = if state.lock().expect("policy state lock").last_error.is_some() {
            Instant::now() + Duration::from_secs(1)
        } else {
            last_full + RESYNC
        };
        tokio::select! {
            _ = kube.changed.notified() => tokio::time::sleep(DEBOUNCE).await,
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
    }
}

/// Run the loop `start` makes, forever: each time it stops (it can only
/// fail opening or reading the maps), record why for `status` and start it
/// again after `service_lb::RestartBackoff`'s wait. The maps keep their
/// last state meanwhile (enforcement goes on, changes wait).
pub async fn supervise<F, Fut>(state: SharedState, mut start: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let mut backoff = crate::daemon::service_lb::RestartBackoff::default();
    loop {
        let started = Instant::now();
        let why = match start().await {
            Ok(()) => anyhow::anyhow!("the loop returned"),
            Err(e) => e,
        };
        let wait = backoff.after_stop(started.elapsed());
        let why = format!("{why:#}");
        error!(error = %why, restart_in_ms = wait.as_millis() as u64, "NetworkPolicy loop stopped; the maps keep their last state");
        {
            let mut st = state.lock().expect("policy state lock");
            st.stopped = Some(why);
            st.heartbeat_unix = now_unix();
        }
        tokio::time::sleep(wait).await;
        state.lock().expect("policy state lock").restarts += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_map_a_stopped_loop_or_no_sync_is_unhealthy() {
        let fine = PolicyLoopState { synced: true, ..Default::default() };
        assert_eq!(fine.unhealthy(), None);
        let full = PolicyLoopState {
            full: vec!["policy map POLICY_RULES is full: x/a isolated with no allow rule (failed closed)".into()],
            ..fine.clone()
        };
        assert_eq!(
            full.unhealthy().unwrap(),
            "NetworkPolicy: policy map POLICY_RULES is full: x/a isolated with no allow rule (failed closed)"
        );
        let unsynced = PolicyLoopState { synced: false, watch_error: Some("pods: 403".into()), ..fine.clone() };
        assert!(unsynced.unhealthy().unwrap().starts_with("NetworkPolicy not synced: pods: 403"));
        let stopped = PolicyLoopState { stopped: Some("open POLICY_RULES".into()), ..fine.clone() };
        assert!(stopped.unhealthy().unwrap().starts_with("NetworkPolicy loop stopped: open POLICY_RULES"));
        let failed = PolicyLoopState { last_error: Some("EPERM".into()), ..fine };
        assert_eq!(failed.unhealthy().unwrap(), "NetworkPolicy maps not updated: EPERM");
    }
}
