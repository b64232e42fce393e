//! Cluster membership from Kubernetes Node objects (kube-rs watcher).
//!
//! A background task keeps a complete view of the Nodes: the watcher lists,
//! then watches from the list's resourceVersion, relists on 410 Gone and
//! reconnects after a dropped connection, retrying as `kube_watch` says
//! (within a second of the API server's return). Every change
//! notifies the reconciler, which recomputes membership from the whole view
//! (never from one event's payload) — the agent's timer does the same, so a
//! missed notification heals at the next resync.
use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
    sync::{Arc, Mutex},
    time::Instant,
};

use futures::{StreamExt, TryStreamExt};
use ipnetwork::{Ipv4Network, Ipv6Network};
use k8s_openapi::api::core::v1::Node;
use kube::{runtime::watcher, Api, Client};
use serde::Serialize;
use tokio::sync::Notify;
use tracing::{info, warn};

use sluice_node::clock::now_unix;

use super::NodeEntry;
use crate::kube_watch::{self, OutageClock, Recovery, Retry};

/// What `status` shows about the API connection.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KubeState {
    /// A complete list has been received since start.
    pub synced: bool,
    /// The last thing that happened on the stream was not an error.
    pub connected: bool,
    pub last_error: Option<String>,
    pub events: u64,
    pub relists: u64,
    pub last_event_unix: u64,
    /// The last time the watch was synced again after errors (an API
    /// server outage, a 410 Gone): how long it took.
    #[serde(default)]
    pub last_recovery: Option<Recovery>,
}

#[derive(Default)]
struct Shared {
    nodes: BTreeMap<String, NodeEntry>,
    state: KubeState,
}

#[derive(Clone)]
pub struct KubeNodes {
    shared: Arc<Mutex<Shared>>,
    pub changed: Arc<Notify>,
}

/// The pieces of a Node sluice routes by: its first pod CIDR and its first
/// InternalIP of each family (`spec.podCIDRs` holds one per family on a
/// dual-stack cluster; `spec.podCIDR` is the first).
pub fn entry_from_node(node: &Node) -> NodeEntry {
    let name = node.metadata.name.clone().unwrap_or_default();
    let spec = node.spec.as_ref();
    let cidrs = spec
        .and_then(|s| s.pod_cidrs.clone())
        .filter(|v| !v.is_empty())
        .or_else(|| spec.and_then(|s| s.pod_cidr.clone()).map(|c| vec![c]))
        .unwrap_or_default();
    let pod_cidr = cidrs.iter().find_map(|c| c.parse::<Ipv4Network>().ok());
    let pod_cidr6 = cidrs.iter().find_map(|c| c.parse::<Ipv6Network>().ok());
    let internal = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .map(|addrs| addrs.iter().filter(|a| a.type_ == "InternalIP").collect::<Vec<_>>())
        .unwrap_or_default();
    let node_ip = internal.iter().find_map(|a| a.address.parse::<Ipv4Addr>().ok());
    let node_ip6 = internal.iter().find_map(|a| a.address.parse::<Ipv6Addr>().ok());
    NodeEntry { name, node_ip, pod_cidr, node_ip6, pod_cidr6 }
}

impl KubeNodes {
    /// Start watching Nodes in the background.
    pub fn start(client: Client) -> Self {
        let me = Self { shared: Arc::default(), changed: Arc::new(Notify::new()) };
        let task = me.clone();
        tokio::spawn(async move { task.watch(client).await });
        me
    }

    async fn watch(self, client: Client) {
        let api: Api<Node> = Api::all(client);
        let mut stream = watcher(api, watcher::Config::default()).boxed();
        let mut buffer: BTreeMap<String, NodeEntry> = BTreeMap::new();
        let (mut retry, mut outage) = (Retry::default(), OutageClock::default());
        loop {
            let next = match stream.try_next().await {
                Ok(next) => next,
                Err(e) => {
                    // Keep the last view; the watcher retries when polled.
                    let class = kube_watch::classify(&e);
                    outage.failed(Instant::now(), class);
                    {
                        let mut shared = self.shared.lock().expect("kube state lock");
                        shared.state.connected = false;
                        shared.state.last_error = Some(e.to_string());
                    }
                    warn!(error = %e, ?class, "Kubernetes watch error; retrying");
                    retry.wait(class).await;
                    continue;
                }
            };
            let at = Instant::now();
            let mut shared = self.shared.lock().expect("kube state lock");
            match next {
                Some(event) => {
                    retry.reset();
                    shared.state.connected = true;
                    shared.state.last_error = None;
                    shared.state.events += 1;
                    shared.state.last_event_unix = now_unix();
                    let notify = match event {
                        watcher::Event::Init => {
                            buffer.clear();
                            false
                        }
                        watcher::Event::InitApply(node) => {
                            let e = entry_from_node(&node);
                            buffer.insert(e.name.clone(), e);
                            false
                        }
                        watcher::Event::InitDone => {
                            shared.nodes = std::mem::take(&mut buffer);
                            shared.state.synced = true;
                            shared.state.relists += 1;
                            info!(nodes = shared.nodes.len(), "Kubernetes nodes listed");
                            if let Some(r) = outage.synced(at) {
                                info!(
                                    outage_ms = r.outage_ms,
                                    synced_after_return_ms = r.synced_after_return_ms,
                                    "Kubernetes nodes synced again"
                                );
                                shared.state.last_recovery = Some(r);
                            }
                            true
                        }
                        watcher::Event::Apply(node) => {
                            let e = entry_from_node(&node);
                            shared.nodes.insert(e.name.clone(), e);
                            true
                        }
                        watcher::Event::Delete(node) => {
                            let e = entry_from_node(&node);
                            shared.nodes.remove(&e.name);
                            true
                        }
                    };
                    drop(shared);
                    if notify {
                        self.changed.notify_one();
                    }
                }
                None => {
                    shared.state.connected = false;
                    shared.state.last_error = Some("watch stream ended".into());
                    warn!("Kubernetes watch stream ended");
                    return;
                }
            }
        }
    }

    /// The current view: every node, and whether it is complete yet.
    pub fn snapshot(&self) -> (Vec<NodeEntry>, KubeState) {
        let shared = self.shared.lock().expect("kube state lock");
        (shared.nodes.values().cloned().collect(), shared.state.clone())
    }
}
