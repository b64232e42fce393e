//! Pods, Namespaces and NetworkPolicies from Kubernetes (three kube-rs
//! watchers), converted with `model.rs` into the view the policy loop
//! compiles from.
//!
//! As `services::kubernetes`: each watcher lists in pages
//! (`LIST_PAGE_SIZE`), then watches from the list's resourceVersion,
//! relists on 410 Gone and reconnects after a dropped connection, retrying
//! as `kube_watch` says. A relist replaces its kind whole: when it ends,
//! every object it did not show is gone (deleted while the watch was cut).
//! `synced` holds once all three kinds have been listed: nothing may be
//! applied before (an empty view would make every pod unselected, and an
//! empty pod list would make every peer unknown).
//!
//! Conversion never loses an object:
//! - a NetworkPolicy `NetworkPolicy::from_k8s` refuses is kept as
//!   `model::isolating_stand_in` (it isolates what it selects and allows
//!   nothing), its error in `PolicyView::refused`;
//! - a Pod whose container ports cannot be read is kept without its ports
//!   (its labels, addresses and node still count), its error in
//!   `PolicyView::refused` too;
//! - a Pod that has finished (phase Succeeded or Failed) keeps no
//!   address: the address may already be another pod's.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Debug,
    sync::{Arc, Mutex},
    time::Instant,
};

use k8s_openapi::{
    api::{core::v1 as core, networking::v1 as networking},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{Api, Client, Resource};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio::sync::Notify;
use tracing::warn;

use sluice_node::clock::now_unix;

use super::model::{isolating_stand_in, Namespace, NetworkPolicy, Pod, PodKey, PolicyModel, PolicyName, Touched};
use crate::kube_watch::{self, KeyedKind, Recovery, Store, StreamState};

/// Objects per page of a list. Pods are the big kind (10,000 at the
/// issue's scale, a few KiB of JSON each): a page is held whole while it
/// is converted, so pages stay small, as for Services.
pub const LIST_PAGE_SIZE: u32 = 100;

/// What the watchers hold: the cluster as the compiler reads it (nodes and
/// the cluster CIDR are left empty: the policy loop adds them).
#[derive(Clone, Debug, Default)]
pub struct PolicyView {
    pub model: PolicyModel,
    /// Objects kept in a degraded form, and why (`kind namespace/name` →
    /// error): policies enforced as isolating stand-ins, pods without
    /// ports.
    pub refused: BTreeMap<String, String>,
}

/// What `status` shows about the three watches.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyWatchState {
    /// Pods, Namespaces and NetworkPolicies have all been listed.
    pub synced: bool,
    /// The last thing on each of the three streams was not an error.
    pub connected: bool,
    /// The latest error of a stream that has not recovered, named by kind.
    pub last_error: Option<String>,
    /// Watch events received (list items included), all kinds.
    pub events: u64,
    /// Complete lists received, all kinds (3 after the first sync).
    pub relists: u64,
    pub last_event_unix: u64,
    #[serde(default)]
    pub last_recovery: Option<Recovery>,
    /// Bumped on every change to the view (a relist's changes count once,
    /// at its end): the policy loop recompiles when it moved.
    pub generation: u64,
    /// The same per kind (`Kind::ALL`'s order: pods, namespaces,
    /// policies): what a change touched, so the loop can keep what did not
    /// change (the identity table, when only policies did).
    #[serde(default)]
    pub generations: [u64; 3],
    /// When the first change the loop has not applied yet arrived: where
    /// "policy event → maps" latency starts. In-process only.
    #[serde(skip)]
    pub pending_since: Option<Instant>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Pods,
    Namespaces,
    Policies,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Pods, Kind::Namespaces, Kind::Policies];

    pub const fn name(self) -> &'static str {
        match self {
            Kind::Pods => "pods",
            Kind::Namespaces => "namespaces",
            Kind::Policies => "networkpolicies",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

struct Shared {
    view: PolicyView,
    state: PolicyWatchState,
    streams: [StreamState; 3],
    /// The objects changed since the policy loop last took them.
    touched: Touched,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            view: PolicyView::default(),
            state: PolicyWatchState::default(),
            streams: Default::default(),
            touched: Touched::everything(),
        }
    }
}

impl Shared {
    fn summarize(&mut self) {
        self.state.synced = self.streams.iter().all(|s| s.listed);
        self.state.connected = self.streams.iter().all(|s| s.connected);
        self.state.last_error = Kind::ALL
            .into_iter()
            .find_map(|k| self.streams[k.index()].error.as_ref().map(|e| format!("{}: {e}", k.name())));
    }

    fn changed(&mut self, arrived: Instant) {
        self.state.generation += 1;
        self.state.pending_since.get_or_insert(arrived);
    }
}

impl Store for Shared {
    fn counted(&mut self) {
        self.state.events += 1;
        self.state.last_event_unix = now_unix();
    }

    fn relisted(&mut self, recovered: Option<Recovery>) {
        self.state.relists += 1;
        if recovered.is_some() {
            self.state.last_recovery = recovered;
        }
    }

    fn summarize(&mut self) {
        Shared::summarize(self)
    }
}

/// One object converted: its model, and the error that degraded it.
pub struct Converted<M> {
    pub model: Option<M>,
    pub error: Option<String>,
}

/// A watched kind and the model it becomes.
trait Watched: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static {
    type Key: Ord + Clone + Send + std::fmt::Display + 'static;
    type Model: PartialEq + Send + 'static;
    const KIND: Kind;
    fn key(meta: &ObjectMeta) -> Option<Self::Key>;
    fn convert(&self) -> Converted<Self::Model>;
    fn entries(view: &mut PolicyView) -> &mut BTreeMap<Self::Key, Self::Model>;
    /// Record that the object under `key` changed.
    fn touch(touched: &mut Touched, key: &Self::Key);
}

fn namespaced(meta: &ObjectMeta) -> Option<(String, String)> {
    match (meta.namespace.as_deref(), meta.name.as_deref()) {
        (Some(ns), Some(name)) if !ns.is_empty() && !name.is_empty() => Some((ns.to_string(), name.to_string())),
        _ => None,
    }
}

impl Watched for core::Pod {
    type Key = PodKey;
    type Model = Pod;
    const KIND: Kind = Kind::Pods;
    fn key(meta: &ObjectMeta) -> Option<PodKey> {
        namespaced(meta).map(|(ns, name)| PodKey { namespace: ns, name })
    }
    fn convert(&self) -> Converted<Pod> {
        pod_from_k8s(self)
    }
    fn entries(view: &mut PolicyView) -> &mut BTreeMap<PodKey, Pod> {
        &mut view.model.pods
    }
    fn touch(touched: &mut Touched, key: &PodKey) {
        touched.pods.insert(key.clone());
    }
}

impl Watched for core::Namespace {
    type Key = String;
    type Model = Namespace;
    const KIND: Kind = Kind::Namespaces;
    fn key(meta: &ObjectMeta) -> Option<String> {
        meta.name.clone().filter(|n| !n.is_empty())
    }
    fn convert(&self) -> Converted<Namespace> {
        match Namespace::from_k8s(self) {
            Ok(ns) => Converted { model: Some(ns), error: None },
            Err(e) => Converted { model: None, error: Some(e.to_string()) },
        }
    }
    fn entries(view: &mut PolicyView) -> &mut BTreeMap<String, Namespace> {
        &mut view.model.namespaces
    }
    fn touch(touched: &mut Touched, key: &String) {
        touched.namespaces.insert(key.clone());
    }
}

impl Watched for networking::NetworkPolicy {
    type Key = PolicyName;
    type Model = NetworkPolicy;
    const KIND: Kind = Kind::Policies;
    fn key(meta: &ObjectMeta) -> Option<PolicyName> {
        namespaced(meta).map(|(ns, name)| PolicyName { namespace: ns, name })
    }
    fn convert(&self) -> Converted<NetworkPolicy> {
        policy_from_k8s(self)
    }
    fn entries(view: &mut PolicyView) -> &mut BTreeMap<PolicyName, NetworkPolicy> {
        &mut view.model.policies
    }
    fn touch(touched: &mut Touched, key: &PolicyName) {
        touched.policies.insert(key.clone());
    }
}

impl<K: Watched> KeyedKind<Shared> for K {
    type Key = K::Key;
    type Converted = Converted<K::Model>;
    const NAME: &'static str = K::KIND.name();
    fn key(meta: &ObjectMeta) -> Option<K::Key> {
        K::key(meta)
    }
    fn convert(&self) -> Converted<K::Model> {
        K::convert(self)
    }
    fn kept(converted: &Converted<K::Model>) -> bool {
        converted.model.is_some()
    }
    fn stream(shared: &mut Shared) -> &mut StreamState {
        &mut shared.streams[K::KIND.index()]
    }
    fn listed(shared: &mut Shared, key: K::Key, converted: Converted<K::Model>) -> bool {
        note_refusal(shared, K::KIND, &key, converted.error);
        let changed = kube_watch::put(K::entries(&mut shared.view), key.clone(), converted.model);
        if changed {
            K::touch(&mut shared.touched, &key);
        }
        changed
    }
    fn applied(shared: &mut Shared, key: K::Key, converted: Converted<K::Model>) -> bool {
        Self::listed(shared, key, converted)
    }
    fn deleted(shared: &mut Shared, key: &K::Key) -> bool {
        note_refusal(shared, K::KIND, key, None);
        let changed = K::entries(&mut shared.view).remove(key).is_some();
        if changed {
            K::touch(&mut shared.touched, key);
        }
        changed
    }
    fn retain(shared: &mut Shared, keep: &BTreeSet<K::Key>) -> usize {
        let kind = K::KIND;
        let entries = K::entries(&mut shared.view);
        let gone: Vec<K::Key> = entries.keys().filter(|k| !keep.contains(*k)).cloned().collect();
        for k in &gone {
            entries.remove(k);
        }
        let removed = gone.len();
        for k in &gone {
            K::touch(&mut shared.touched, k);
        }
        let prefix = format!("{} ", kind.name());
        shared
            .view
            .refused
            .retain(|k, _| !k.starts_with(&prefix) || keep.iter().any(|key| refused_key(kind, key) == *k));
        removed
    }
    fn changed(shared: &mut Shared, arrived: Instant) {
        shared.changed(arrived);
        shared.state.generations[K::KIND.index()] += 1;
    }
}

/// A Pod as the policy compiler reads it (see the module's comment).
pub fn pod_from_k8s(pod: &core::Pod) -> Converted<Pod> {
    let finished =
        pod.status.as_ref().and_then(|s| s.phase.as_deref()).is_some_and(|p| p == "Succeeded" || p == "Failed");
    let (converted, error) = match Pod::from_k8s(pod) {
        Ok(p) => (Some(p), None),
        Err(e) => {
            // Keep the pod without its ports: its labels and addresses
            // still decide what selects it and what it is as a peer.
            let mut stripped = pod.clone();
            if let Some(spec) = stripped.spec.as_mut() {
                for c in spec.containers.iter_mut().chain(spec.init_containers.iter_mut().flatten()) {
                    c.ports = None;
                }
            }
            (Pod::from_k8s(&stripped).ok(), Some(format!("container ports not read: {e}")))
        }
    };
    let model = converted.map(|mut p| {
        if finished {
            p.ips.clear();
        }
        p
    });
    Converted { model, error }
}

/// A NetworkPolicy as enforced: converted, or its isolating stand-in.
pub fn policy_from_k8s(policy: &networking::NetworkPolicy) -> Converted<NetworkPolicy> {
    match NetworkPolicy::from_k8s(policy) {
        Ok(p) => Converted { model: Some(p), error: None },
        Err(e) => Converted {
            model: isolating_stand_in(policy),
            error: Some(format!("{e}; enforced as isolating, allowing nothing")),
        },
    }
}

fn refused_key(kind: Kind, key: &impl std::fmt::Display) -> String {
    format!("{} {key}", kind.name())
}

/// The cluster's Pods, Namespaces and NetworkPolicies, kept by three
/// watchers.
#[derive(Clone)]
pub struct KubePolicy {
    shared: Arc<Mutex<Shared>>,
    /// Notified (one permit) after every change to the view.
    pub changed: Arc<Notify>,
    /// Notified (one permit) after every change to the Pods: the Services
    /// loop follows hostPorts (`services::host_ports`).
    pub pods_changed: Arc<Notify>,
}

impl KubePolicy {
    /// Start watching the three kinds in the background.
    pub fn start(client: Client) -> Self {
        let me =
            Self { shared: Arc::default(), changed: Arc::new(Notify::new()), pods_changed: Arc::new(Notify::new()) };
        // Pods have two readers, each with its own permit.
        let pods = Arc::new(Notify::new());
        tokio::spawn(kube_watch::keep(
            Api::<core::Pod>::all(client.clone()),
            LIST_PAGE_SIZE,
            me.shared.clone(),
            pods.clone(),
        ));
        let (changed, pods_changed) = (me.changed.clone(), me.pods_changed.clone());
        tokio::spawn(async move {
            loop {
                pods.notified().await;
                changed.notify_one();
                pods_changed.notify_one();
            }
        });
        tokio::spawn(me.watch::<core::Namespace>(Api::all(client.clone())));
        tokio::spawn(me.watch::<networking::NetworkPolicy>(Api::all(client)));
        me
    }

    fn watch<K: Watched>(&self, api: Api<K>) -> impl std::future::Future<Output = ()> + Send + 'static {
        kube_watch::keep(api, LIST_PAGE_SIZE, self.shared.clone(), self.changed.clone())
    }

    /// A copy of the view and the watches' state.
    pub fn snapshot(&self) -> (PolicyView, PolicyWatchState) {
        let shared = self.shared.lock().expect("policy watch lock");
        (shared.view.clone(), shared.state.clone())
    }

    /// Read the view in place under the watchers' lock (keep `f` short).
    pub fn with_view<R>(&self, f: impl FnOnce(&PolicyView, &PolicyWatchState) -> R) -> R {
        let shared = self.shared.lock().expect("policy watch lock");
        f(&shared.view, &shared.state)
    }

    /// As `with_view`, and take what changed since the last call and the
    /// pending change's start (under the same lock: no change falls
    /// between the two; a change after this call starts a new pending
    /// period). Until all three kinds are listed nothing is taken (the
    /// first compile must be a whole one).
    pub fn with_changes<R>(
        &self,
        f: impl FnOnce(&PolicyView, &PolicyWatchState, Touched) -> R,
    ) -> (R, Option<Instant>) {
        let mut shared = self.shared.lock().expect("policy watch lock");
        let (touched, since) = if shared.state.synced {
            (std::mem::take(&mut shared.touched), shared.state.pending_since.take())
        } else {
            (Touched::everything(), None)
        };
        (f(&shared.view, &shared.state, touched), since)
    }

    /// As `with_view`, and take the pending change's start (under the same
    /// lock: a change after this call starts a new pending period).
    pub fn take_pending<R>(&self, f: impl FnOnce(&PolicyView, &PolicyWatchState) -> R) -> (R, Option<Instant>) {
        let mut shared = self.shared.lock().expect("policy watch lock");
        let r = f(&shared.view, &shared.state);
        let since = if shared.state.synced { shared.state.pending_since.take() } else { None };
        (r, since)
    }
}

fn note_refusal(shared: &mut Shared, kind: Kind, key: &impl std::fmt::Display, error: Option<String>) {
    let k = refused_key(kind, key);
    match error {
        Some(e) => {
            if shared.view.refused.get(&k) != Some(&e) {
                warn!(object = %k, error = %e, "Kubernetes object not fully understood");
            }
            shared.view.refused.insert(k, e);
        }
        None => {
            shared.view.refused.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::policy::{model::Protocol, selector::LabelSelector};

    fn pod(v: serde_json::Value) -> core::Pod {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_pod_with_unreadable_ports_keeps_its_labels_and_addresses() {
        let p = pod(json!({
            "metadata": {"namespace": "x", "name": "a", "labels": {"pod": "a"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": [{"containerPort": 80, "protocol": "ICMP"}]}]},
            "status": {"phase": "Running", "podIP": "10.244.1.5", "podIPs": [{"ip": "10.244.1.5"}]}
        }));
        let c = pod_from_k8s(&p);
        let m = c.model.expect("kept");
        assert_eq!(m.labels["pod"], "a");
        assert_eq!(m.ips, vec!["10.244.1.5".parse::<std::net::Ipv4Addr>().unwrap()]);
        assert!(m.ports.is_empty());
        assert!(c.error.unwrap().contains("ICMP"));
        // The same pod with a readable port: no error, the port kept.
        let mut ok = p.clone();
        ok.spec.as_mut().unwrap().containers[0].ports.as_mut().unwrap()[0].protocol = Some("UDP".into());
        let c = pod_from_k8s(&ok);
        assert!(c.error.is_none());
        assert_eq!(c.model.unwrap().ports[0].protocol, Protocol::Udp);
    }

    #[test]
    fn a_finished_pod_keeps_no_address() {
        for (phase, kept) in [("Running", true), ("Pending", true), ("Succeeded", false), ("Failed", false)] {
            let p = pod(json!({
                "metadata": {"namespace": "x", "name": "a"},
                "spec": {"nodeName": "n1", "containers": [{"name": "c"}]},
                "status": {"phase": phase, "podIP": "10.244.1.5"}
            }));
            let m = pod_from_k8s(&p).model.unwrap();
            assert_eq!(!m.ips.is_empty(), kept, "{phase}");
        }
    }

    #[test]
    fn a_refused_policy_is_kept_as_its_isolating_stand_in_with_its_error() {
        let p: networking::NetworkPolicy = serde_json::from_value(json!({
            "metadata": {"namespace": "x", "name": "p"},
            "spec": {"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"ports": [{"protocol": "ICMP"}]}]}
        }))
        .unwrap();
        let c = policy_from_k8s(&p);
        let m = c.model.expect("a stand-in");
        assert_eq!(m.pod_selector, LabelSelector::labels([("pod", "a")]));
        assert!(m.types.ingress && m.ingress.is_empty());
        assert!(c.error.unwrap().contains("ICMP"));
    }
}
