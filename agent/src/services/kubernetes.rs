//! Services and EndpointSlices from Kubernetes (two kube-rs watchers).
//!
//! Like `membership::kubernetes`: each watcher lists, then watches from the
//! list's resourceVersion, relists on 410 Gone and reconnects after a
//! dropped connection, retrying as `kube_watch` says. A relist replaces its kind whole:
//! when it ends, every object it did not show is gone (deleted while the
//! watch was cut). Every change that alters the view notifies the planner,
//! which replans from the whole view (never from one event); the changes a
//! relist brings are announced once, at its end.
//!
//! Memory: only the converted model is kept; each k8s-openapi object is
//! dropped as soon as it is converted, and lists are paged
//! (`LIST_PAGE_SIZE`), so one page of full objects is alive at a time. A
//! relist updates the view in place and remembers only the keys it has
//! seen, rather than buffering a second copy of the model (13 MiB at
//! 10,000 Services): while it runs, the view holds objects already relisted
//! beside ones not yet relisted (each a version that was current once).
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Debug,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::{Arc, Mutex},
    time::Instant,
};

use k8s_openapi::{
    api::{core::v1 as core, discovery::v1 as discovery},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{Api, Client, Resource};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio::sync::Notify;

use sluice_node::clock::now_unix;

use crate::kube_watch::{self, KeyedKind, Recovery, Store, StreamState};

use super::model::{
    Endpoint, EndpointSlice, Family, Protocol, Service, ServiceKind, ServiceName, ServicePort, ServiceView, SlicePort,
    Touched,
};

/// The label naming a slice's Service (set by the EndpointSlice controller).
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Objects with this label belong to another proxy: kube-proxy ignores them
/// (it watches with `!service.kubernetes.io/service-proxy-name`), so do we.
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// Set on the slices of headless Services: nothing to balance (kube-proxy
/// filters them out with `!service.kubernetes.io/headless`).
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// Objects per page of the initial list (and of every relist). Memory, not
/// round trips, is what matters here: each page is held whole, as JSON and
/// as k8s-openapi objects, while it is converted. Measured with 10,000
/// Services and 10,000 slices of 5 endpoints (tests/tests/services_watch.rs):
/// RSS grows 24 MiB with pages of 100, 30 MiB with kube-rs' default 500,
/// 52 MiB with 2,000; the model itself is 13 MiB of heap.
pub const LIST_PAGE_SIZE: u32 = 100;
/// `sessionAffinityConfig.clientIP.timeoutSeconds` when unset (3 hours, the
/// API server's default).
pub const DEFAULT_AFFINITY_TIMEOUT_SECS: u32 = 10_800;

/// What `status` shows about the Service and EndpointSlice watches.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicesState {
    /// Both Services and EndpointSlices have been listed at least once.
    pub synced: bool,
    /// The last thing that happened on each of the two streams was not an error.
    pub connected: bool,
    /// The latest error of a stream that has not recovered since, named by kind.
    pub last_error: Option<String>,
    /// Watch events received (list items included), both kinds.
    pub events: u64,
    /// Complete lists received, both kinds (2 after the first sync).
    pub relists: u64,
    pub last_event_unix: u64,
    /// The last time a kind's watch was synced again after errors (an API
    /// server outage, a 410 Gone): the later of the two kinds when both
    /// were out.
    #[serde(default)]
    pub last_recovery: Option<Recovery>,
    /// When the latest change to the view arrived (the watch event that
    /// carried it was read off the stream): where "event → maps updated"
    /// latency starts. In-process only.
    #[serde(skip)]
    pub last_change: Option<Instant>,
}

#[derive(Default)]
struct Shared {
    view: ServiceView,
    /// What changed since the planner last took it.
    touched: Touched,
    state: ServicesState,
    services: StreamState,
    slices: StreamState,
}

impl Shared {
    fn stream(&mut self, kind: Kind) -> &mut StreamState {
        match kind {
            Kind::Services => &mut self.services,
            Kind::Slices => &mut self.slices,
        }
    }

    /// The summary fields of `state`, from the two streams.
    fn summarize(&mut self) {
        self.state.synced = self.services.listed && self.slices.listed;
        self.state.connected = self.services.connected && self.slices.connected;
        self.state.last_error = [(Kind::Services, &self.services), (Kind::Slices, &self.slices)]
            .into_iter()
            .find_map(|(kind, s)| s.error.as_ref().map(|e| format!("{}: {e}", kind.name())));
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Services,
    Slices,
}

impl Kind {
    const fn name(self) -> &'static str {
        match self {
            Kind::Services => "services",
            Kind::Slices => "endpointslices",
        }
    }
}

/// A watched Kubernetes kind and the model it becomes; `KeyedKind` is
/// the same for both.
trait Watched: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static {
    type Model: PartialEq + Send + 'static;
    const KIND: Kind;
    /// `None`: not one of ours.
    fn model(&self) -> Option<Self::Model>;
    fn entries(view: &mut ServiceView) -> &mut BTreeMap<ServiceName, Self::Model>;
    /// The Service an object of this kind (under `key`) belongs to.
    fn service_of(key: &ServiceName, model: &Self::Model) -> ServiceName;
}

impl Watched for core::Service {
    type Model = Service;
    const KIND: Kind = Kind::Services;
    fn model(&self) -> Option<Service> {
        service_from_k8s(self)
    }
    fn entries(view: &mut ServiceView) -> &mut BTreeMap<ServiceName, Service> {
        &mut view.services
    }
    fn service_of(key: &ServiceName, _: &Service) -> ServiceName {
        key.clone()
    }
}

impl Watched for discovery::EndpointSlice {
    type Model = EndpointSlice;
    const KIND: Kind = Kind::Slices;
    fn model(&self) -> Option<EndpointSlice> {
        slice_from_k8s(self)
    }
    fn entries(view: &mut ServiceView) -> &mut BTreeMap<ServiceName, EndpointSlice> {
        &mut view.slices
    }
    fn service_of(_: &ServiceName, slice: &EndpointSlice) -> ServiceName {
        slice.service.clone()
    }
}

/// Mark the Services an event touches: the one the stored version names
/// and the one the new version names (a slice may be relabelled).
fn touch<K: Watched>(shared: &mut Shared, key: &ServiceName, model: Option<&K::Model>) {
    let old = K::entries(&mut shared.view).get(key).map(|m| K::service_of(key, m));
    let new = model.map(|m| K::service_of(key, m));
    for name in old.into_iter().chain(new) {
        shared.touched.add(name);
    }
}

impl<K: Watched> KeyedKind<Shared> for K {
    type Key = ServiceName;
    type Converted = Option<K::Model>;
    const NAME: &'static str = K::KIND.name();
    fn key(meta: &ObjectMeta) -> Option<ServiceName> {
        object_name(meta)
    }
    fn convert(&self) -> Option<K::Model> {
        K::model(self)
    }
    fn kept(model: &Option<K::Model>) -> bool {
        model.is_some()
    }
    fn stream(shared: &mut Shared) -> &mut StreamState {
        shared.stream(K::KIND)
    }
    fn listed(shared: &mut Shared, key: ServiceName, model: Option<K::Model>) -> bool {
        // The planner hears of it at the list's end, as of every Service.
        kube_watch::put(K::entries(&mut shared.view), key, model)
    }
    fn applied(shared: &mut Shared, key: ServiceName, model: Option<K::Model>) -> bool {
        touch::<K>(shared, &key, model.as_ref());
        kube_watch::put(K::entries(&mut shared.view), key, model)
    }
    fn deleted(shared: &mut Shared, key: &ServiceName) -> bool {
        touch::<K>(shared, key, None);
        K::entries(&mut shared.view).remove(key).is_some()
    }
    fn retain(shared: &mut Shared, keep: &BTreeSet<ServiceName>) -> usize {
        shared.touched = Touched::All;
        let entries = K::entries(&mut shared.view);
        let before = entries.len();
        entries.retain(|k, _| keep.contains(k));
        before - entries.len()
    }
    fn changed(shared: &mut Shared, arrived: Instant) {
        shared.state.last_change = Some(arrived);
    }
}

/// namespace/name of an object; `None` without either.
fn object_name(meta: &ObjectMeta) -> Option<ServiceName> {
    match (meta.namespace.as_deref(), meta.name.as_deref()) {
        (Some(ns), Some(name)) if !ns.is_empty() && !name.is_empty() => Some(ServiceName::new(ns, name)),
        _ => None,
    }
}

fn has_label(meta: &ObjectMeta, key: &str) -> bool {
    meta.labels.as_ref().is_some_and(|l| l.contains_key(key))
}

/// A port number from the API: 1..=65535, anything else is no port.
fn port_number(p: i32) -> Option<u16> {
    u16::try_from(p).ok().filter(|&p| p != 0)
}

/// The addresses of `ips` of family `A`, in order; what does not parse is
/// skipped, and so is `0.0.0.0`/`::` with `no_unspecified`.
fn of_family<A: Family>(ips: &[&str], no_unspecified: bool) -> Vec<A> {
    ips.iter()
        .filter_map(|ip| ip.parse::<IpAddr>().ok())
        .filter(|ip| !(no_unspecified && ip.is_unspecified()))
        .filter_map(A::of)
        .collect()
}

/// A Service as sluice balances it. `None`: not one of ours (no
/// namespace/name, or labelled for another proxy).
pub fn service_from_k8s(svc: &core::Service) -> Option<Service> {
    let name = object_name(&svc.metadata)?;
    if has_label(&svc.metadata, SERVICE_PROXY_NAME_LABEL) {
        return None;
    }
    let default_spec = core::ServiceSpec::default();
    let spec = svc.spec.as_ref().unwrap_or(&default_spec);
    let kind = if spec.type_.as_deref() == Some("ExternalName") {
        ServiceKind::ExternalName
    } else if spec.cluster_ip.as_deref() == Some("None") {
        ServiceKind::Headless
    } else {
        ServiceKind::ClusterIp
    };
    // clusterIPs[0] is clusterIP; a dual-stack Service (PreferDualStack
    // with both families allocated, RequireDualStack) has one of each
    // family, a SingleStack one only `ipFamilies[0]`'s: what the API server
    // allocated is what `clusterIPs` lists, whatever the policy, so it is
    // read per family as kube-proxy reads it (GetClusterIPByFamily).
    let cluster: Vec<&str> = match spec.cluster_ips.as_deref() {
        _ if kind != ServiceKind::ClusterIp => Vec::new(),
        Some(ips) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
        _ => spec.cluster_ip.as_deref().into_iter().collect(),
    };
    let cluster_ips = of_family(&cluster, false);
    let cluster_ips6 = of_family(&cluster, false);
    let type_ = spec.type_.as_deref().unwrap_or("ClusterIP");
    let has_node_ports = type_ == "NodePort" || type_ == "LoadBalancer";
    let ports = spec
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            Some(ServicePort {
                name: p.name.clone().unwrap_or_default(),
                port: port_number(p.port)?,
                protocol: Protocol::from_kubernetes(p.protocol.as_deref())?,
                node_port: p.node_port.filter(|_| has_node_ports).and_then(port_number),
            })
        })
        .collect();
    let external: Vec<&str> = spec.external_ips.iter().flatten().map(String::as_str).collect();
    let ingress: Vec<&str> = if type_ == "LoadBalancer" {
        let ingress = svc.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|l| l.ingress.as_ref());
        ingress
            .into_iter()
            .flatten()
            .filter(|i| i.ip_mode.as_deref().unwrap_or("VIP") == "VIP")
            .filter_map(|i| i.ip.as_deref())
            .collect()
    } else {
        Vec::new()
    };
    let affinity_timeout_secs = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok())
            .filter(|&t| t > 0)
            .unwrap_or(DEFAULT_AFFINITY_TIMEOUT_SECS)
    });
    Some(Service {
        name,
        kind,
        cluster_ips,
        cluster_ips6,
        ports,
        affinity_timeout_secs,
        internal_traffic_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
        external_ips: of_family(&external, true),
        external_ips6: of_family(&external, true),
        load_balancer_ips: of_family(&ingress, true),
        load_balancer_ips6: of_family(&ingress, true),
        external_traffic_local: spec.external_traffic_policy.as_deref() == Some("Local"),
        health_check_node_port: spec.health_check_node_port.and_then(port_number),
        load_balancer_source_ranges: if type_ == "LoadBalancer" {
            source_ranges(spec.load_balancer_source_ranges.iter().flatten())
        } else {
            Vec::new()
        },
    })
}

/// `loadBalancerSourceRanges` as kube-proxy reads them: spaces trimmed; a
/// range that does not parse (the API server validates them, so only an
/// old object) is left out with a warning, as kube-proxy does.
fn source_ranges<'a>(ranges: impl Iterator<Item = &'a String>) -> Vec<ipnetwork::IpNetwork> {
    ranges
        .filter_map(|r| match r.trim().parse::<ipnetwork::IpNetwork>() {
            Ok(net) => Some(net),
            Err(e) => {
                tracing::warn!(range = %r, error = %e, "loadBalancerSourceRanges entry ignored");
                None
            }
        })
        .collect()
}

/// An IPv4 or IPv6 EndpointSlice as sluice balances to it. `None`: another
/// address type (FQDN), no `kubernetes.io/service-name` label, a headless
/// Service's slice, or labelled for another proxy.
pub fn slice_from_k8s(slice: &discovery::EndpointSlice) -> Option<EndpointSlice> {
    // Each endpoint's first address of the slice's type.
    let address: fn(&str) -> Option<IpAddr> = match slice.address_type.as_str() {
        "IPv4" => |a| a.parse::<IpAddr>().ok().and_then(Ipv4Addr::of).map(IpAddr::V4),
        "IPv6" => |a| a.parse::<IpAddr>().ok().and_then(Ipv6Addr::of).map(IpAddr::V6),
        _ => return None,
    };
    let name = object_name(&slice.metadata)?;
    let meta = &slice.metadata;
    if has_label(meta, SERVICE_PROXY_NAME_LABEL) || has_label(meta, HEADLESS_LABEL) {
        return None;
    }
    let service = meta.labels.as_ref()?.get(SERVICE_NAME_LABEL).filter(|s| !s.is_empty())?;
    let service = ServiceName { namespace: name.namespace.clone(), name: service.clone() };
    let ports = slice
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            Some(SlicePort {
                name: p.name.clone().unwrap_or_default(),
                port: port_number(p.port?)?,
                protocol: Protocol::from_kubernetes(p.protocol.as_deref())?,
            })
        })
        .collect();
    let endpoints = slice
        .endpoints
        .iter()
        .filter_map(|e| {
            let address = e.addresses.iter().find_map(|a| address(a))?;
            let c = e.conditions.as_ref();
            // The API's defaults (discovery/v1 EndpointConditions), as
            // kube-proxy's endpointslicecache reads them: ready nil → true,
            // serving nil → true, terminating nil → false.
            let ready = c.and_then(|c| c.ready).unwrap_or(true);
            Some(Endpoint {
                address,
                ready,
                serving: c.and_then(|c| c.serving).unwrap_or(true),
                terminating: c.and_then(|c| c.terminating).unwrap_or(false),
                node_name: e.node_name.clone(),
            })
        })
        .collect();
    Some(EndpointSlice { name, service, ports, endpoints })
}

/// The Services and EndpointSlices of the cluster, kept by two watchers.
#[derive(Clone)]
pub struct KubeServices {
    shared: Arc<Mutex<Shared>>,
    /// Notified (one permit, `notify_one`) after every change to the view.
    pub changed: Arc<Notify>,
}

impl KubeServices {
    /// Start watching Services and EndpointSlices in the background.
    pub fn start(client: Client) -> Self {
        let me = Self { shared: Arc::default(), changed: Arc::new(Notify::new()) };
        tokio::spawn(me.watch::<core::Service>(Api::all(client.clone())));
        tokio::spawn(me.watch::<discovery::EndpointSlice>(Api::all(client)));
        me
    }

    fn watch<K: Watched>(&self, api: Api<K>) -> impl std::future::Future<Output = ()> + Send + 'static {
        kube_watch::keep(api, LIST_PAGE_SIZE, self.shared.clone(), self.changed.clone())
    }

    /// The current view (a copy) and the watches' state.
    pub fn snapshot(&self) -> (ServiceView, ServicesState) {
        let shared = self.shared.lock().expect("services state lock");
        (shared.view.clone(), shared.state.clone())
    }

    /// Read the view in place, without copying it (10,000 Services are
    /// megabytes): `f` runs under the lock the watchers take for every
    /// event, so keep it short (plan, don't touch the maps).
    pub fn with_view<R>(&self, f: impl FnOnce(&ServiceView, &ServicesState) -> R) -> R {
        let shared = self.shared.lock().expect("services state lock");
        f(&shared.view, &shared.state)
    }

    /// As `with_view`, and take what changed since the last call (under
    /// the same lock: no change falls between the two). Until both kinds
    /// are listed nothing is taken (the first plan must be a whole one).
    pub fn with_changes<R>(&self, f: impl FnOnce(&ServiceView, &ServicesState, Touched) -> R) -> R {
        let mut shared = self.shared.lock().expect("services state lock");
        let touched =
            if shared.state.synced { std::mem::replace(&mut shared.touched, Touched::none()) } else { Touched::All };
        f(&shared.view, &shared.state, touched)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    fn service(spec: Value) -> core::Service {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"namespace": "default", "name": "web", "resourceVersion": "1"},
            "spec": spec,
        }))
        .unwrap()
    }

    fn converted(spec: Value) -> Service {
        service_from_k8s(&service(spec)).expect("a Service")
    }

    fn tcp(name: &str, port: u16) -> ServicePort {
        ServicePort { name: name.into(), port, protocol: Protocol::Tcp, node_port: None }
    }

    fn with_status(spec: Value, status: Value) -> Service {
        let mut s = service(spec);
        s.status = Some(serde_json::from_value(status).unwrap());
        service_from_k8s(&s).expect("a Service")
    }

    #[test]
    fn cluster_ip_node_port_and_load_balancer_services_have_cluster_ips() {
        for (type_, node_port) in [("ClusterIP", None), ("NodePort", Some(30080)), ("LoadBalancer", Some(30080))] {
            let s = converted(json!({
                "type": type_, "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP", "nodePort": 30080}],
            }));
            assert_eq!(
                s,
                Service {
                    name: ServiceName::new("default", "web"),
                    kind: ServiceKind::ClusterIp,
                    cluster_ips: vec![Ipv4Addr::new(10, 96, 0, 10)],
                    ports: vec![ServicePort { node_port, ..tcp("http", 80) }],
                    affinity_timeout_secs: None,
                    internal_traffic_local: false,
                    external_ips: Vec::new(),
                    load_balancer_ips: Vec::new(),
                    load_balancer_ips6: Vec::new(),
                    external_ips6: Vec::new(),
                    cluster_ips6: Vec::new(),
                    external_traffic_local: false,
                    health_check_node_port: None,
                    load_balancer_source_ranges: Vec::new(),
                },
                "{type_}: a nodePort only where the type has one"
            );
        }
        // No type: ClusterIP; only clusterIP (older objects): still read.
        let s = converted(json!({"clusterIP": "10.96.0.11", "ports": [{"port": 53, "protocol": "UDP"}]}));
        assert_eq!(s.kind, ServiceKind::ClusterIp);
        assert_eq!(s.cluster_ips, vec![Ipv4Addr::new(10, 96, 0, 11)]);
        assert_eq!(s.ports, vec![ServicePort { name: "".into(), port: 53, protocol: Protocol::Udp, node_port: None }]);
    }

    #[test]
    fn headless_and_external_name_services_have_nothing_to_balance() {
        let s = converted(json!({"clusterIP": "None", "clusterIPs": ["None"], "ports": [{"port": 80}]}));
        assert_eq!(s.kind, ServiceKind::Headless);
        assert!(s.cluster_ips.is_empty());
        let s = converted(json!({"type": "ExternalName", "externalName": "example.com"}));
        assert_eq!(s.kind, ServiceKind::ExternalName);
        assert!(s.cluster_ips.is_empty());
    }

    #[test]
    fn protocol_defaults_to_tcp_and_sctp_ports_are_dropped() {
        let s = converted(json!({
            "clusterIP": "10.96.0.12",
            "ports": [
                {"name": "a", "port": 80},
                {"name": "b", "port": 9999, "protocol": "SCTP"},
                {"name": "c", "port": 53, "protocol": "UDP"},
            ],
        }));
        assert_eq!(
            s.ports,
            vec![tcp("a", 80), ServicePort { name: "c".into(), port: 53, protocol: Protocol::Udp, node_port: None }]
        );
    }

    /// What the API server allocates for each `ipFamilyPolicy`
    /// (clusterIPs in the order of ipFamilies), read per family.
    #[test]
    fn cluster_ips_are_read_per_family_for_every_ip_family_policy() {
        let v4 = Ipv4Addr::new(10, 96, 0, 13);
        let v6: Ipv6Addr = "fd00:10:96::13".parse().unwrap();
        let cases = [
            (
                json!({"clusterIP": "10.96.0.13", "clusterIPs": ["10.96.0.13"], "ipFamilies": ["IPv4"],
                "ipFamilyPolicy": "SingleStack"}),
                vec![v4],
                vec![],
            ),
            (
                json!({"clusterIP": "fd00:10:96::13", "clusterIPs": ["fd00:10:96::13"], "ipFamilies": ["IPv6"],
                "ipFamilyPolicy": "SingleStack"}),
                vec![],
                vec![v6],
            ),
            // PreferDualStack on a single-stack cluster gets one family.
            (
                json!({"clusterIP": "10.96.0.13", "clusterIPs": ["10.96.0.13"], "ipFamilies": ["IPv4"],
                "ipFamilyPolicy": "PreferDualStack"}),
                vec![v4],
                vec![],
            ),
            (
                json!({"clusterIP": "10.96.0.13", "clusterIPs": ["10.96.0.13", "fd00:10:96::13"],
                "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "PreferDualStack"}),
                vec![v4],
                vec![v6],
            ),
            (
                json!({"clusterIP": "fd00:10:96::13", "clusterIPs": ["fd00:10:96::13", "10.96.0.13"],
                "ipFamilies": ["IPv6", "IPv4"], "ipFamilyPolicy": "RequireDualStack"}),
                vec![v4],
                vec![v6],
            ),
            // An object from before clusterIPs existed.
            (json!({"clusterIP": "fd00:10:96::13"}), vec![], vec![v6]),
            // A v4-mapped address is not an IPv6 cluster IP.
            (json!({"clusterIP": "::ffff:10.96.0.13"}), vec![], vec![]),
        ];
        for (spec, want4, want6) in cases {
            let s = converted(spec.clone());
            assert_eq!(s.kind, ServiceKind::ClusterIp);
            assert_eq!((s.cluster_ips, s.cluster_ips6), (want4, want6), "{spec}");
        }
        let headless = converted(json!({"clusterIP": "None", "clusterIPs": ["None"], "ipFamilies": ["IPv4", "IPv6"],
            "ipFamilyPolicy": "RequireDualStack"}));
        assert_eq!((headless.kind, headless.cluster_ips6), (ServiceKind::Headless, vec![]));
    }

    #[test]
    fn client_ip_affinity_has_a_timeout_defaulting_to_three_hours() {
        let s = converted(json!({"clusterIP": "10.96.0.14", "sessionAffinity": "ClientIP",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}}));
        assert_eq!(s.affinity_timeout_secs, Some(60));
        let s = converted(json!({"clusterIP": "10.96.0.14", "sessionAffinity": "ClientIP"}));
        assert_eq!(s.affinity_timeout_secs, Some(10_800));
        let s = converted(json!({"clusterIP": "10.96.0.14", "sessionAffinity": "ClientIP",
            "sessionAffinityConfig": {"clientIP": {}}}));
        assert_eq!(s.affinity_timeout_secs, Some(DEFAULT_AFFINITY_TIMEOUT_SECS));
        // A timeout left over from ClientIP does not make None sticky.
        let s = converted(json!({"clusterIP": "10.96.0.14", "sessionAffinity": "None",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}}));
        assert_eq!(s.affinity_timeout_secs, None);
        assert_eq!(converted(json!({"clusterIP": "10.96.0.14"})).affinity_timeout_secs, None);
    }

    #[test]
    fn external_ips_load_balancer_ingress_and_external_policy_are_read() {
        let spec = json!({
            "type": "LoadBalancer", "clusterIP": "10.96.0.16",
            "externalIPs": ["192.0.2.10", "2001:db8::1", "0.0.0.0"],
            "externalTrafficPolicy": "Local", "healthCheckNodePort": 32000,
            "ports": [{"port": 80, "nodePort": 30080}],
        });
        let status = json!({"loadBalancer": {"ingress": [
            {"ip": "198.51.100.7"}, {"ip": "198.51.100.8", "ipMode": "VIP"},
            {"ip": "198.51.100.9", "ipMode": "Proxy"}, {"hostname": "lb.example.com"}, {"ip": "2001:db8::2"},
        ]}});
        let s = with_status(spec.clone(), status.clone());
        assert_eq!(s.external_ips, vec![Ipv4Addr::new(192, 0, 2, 10)], "IPv4 ones, never 0.0.0.0");
        assert_eq!(s.external_ips6, vec!["2001:db8::1".parse::<Ipv6Addr>().unwrap()], "IPv6 ones apart");
        assert_eq!(s.load_balancer_ips6, vec!["2001:db8::2".parse::<Ipv6Addr>().unwrap()]);
        assert_eq!(
            s.load_balancer_ips,
            vec![Ipv4Addr::new(198, 51, 100, 7), Ipv4Addr::new(198, 51, 100, 8)],
            "ipMode Proxy is the load balancer's to answer, as kube-proxy leaves it"
        );
        assert!(s.external_traffic_local);
        assert_eq!(s.health_check_node_port, Some(32000));
        assert_eq!(s.ports[0].node_port, Some(30080));
        // An ingress IP on a Service that is no longer a LoadBalancer is
        // not captured (kube-proxy reads it only for that type).
        let mut spec = spec;
        spec["type"] = json!("NodePort");
        let s = with_status(spec, status);
        assert!(s.load_balancer_ips.is_empty() && s.load_balancer_ips6.is_empty());
        assert_eq!(s.external_ips, vec![Ipv4Addr::new(192, 0, 2, 10)]);
        assert!(!converted(json!({"clusterIP": "10.96.0.16"})).external_traffic_local);
    }

    #[test]
    fn load_balancer_source_ranges_are_read_for_load_balancers_only() {
        let spec = json!({
            "type": "LoadBalancer", "clusterIP": "10.96.0.17",
            "loadBalancerSourceRanges": ["203.0.113.0/24", " 192.0.2.1/32 ", "2001:db8::/64", "not-a-cidr"],
            "ports": [{"port": 80, "nodePort": 30081}],
        });
        let s = converted(spec.clone());
        let want: Vec<ipnetwork::IpNetwork> =
            ["203.0.113.0/24", "192.0.2.1/32", "2001:db8::/64"].iter().map(|r| r.parse().unwrap()).collect();
        assert_eq!(s.load_balancer_source_ranges, want, "trimmed; a bad one left out");
        let mut spec = spec;
        spec["type"] = json!("NodePort");
        assert!(converted(spec).load_balancer_source_ranges.is_empty());
    }

    #[test]
    fn internal_traffic_policy_local() {
        let s = converted(json!({"clusterIP": "10.96.0.15", "internalTrafficPolicy": "Local"}));
        assert!(s.internal_traffic_local);
        let s = converted(json!({"clusterIP": "10.96.0.15", "internalTrafficPolicy": "Cluster"}));
        assert!(!s.internal_traffic_local);
    }

    #[test]
    fn services_of_another_proxy_and_nameless_ones_are_not_ours() {
        let mut s = service(json!({"clusterIP": "10.96.0.16"}));
        s.metadata.labels = Some([(SERVICE_PROXY_NAME_LABEL.to_string(), "other".to_string())].into());
        assert_eq!(service_from_k8s(&s), None);
        let mut s = service(json!({"clusterIP": "10.96.0.16"}));
        s.metadata.namespace = None;
        assert_eq!(service_from_k8s(&s), None);
    }

    fn slice(body: Value) -> discovery::EndpointSlice {
        let mut obj = json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"namespace": "default", "name": "web-abc12", "resourceVersion": "1",
                "labels": {SERVICE_NAME_LABEL: "web", "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
            "addressType": "IPv4",
            "endpoints": [],
        });
        for (k, v) in body.as_object().unwrap() {
            obj[k] = v.clone();
        }
        serde_json::from_value(obj).unwrap()
    }

    fn endpoint(address: [u8; 4], ready: bool, serving: bool, terminating: bool, node: Option<&str>) -> Endpoint {
        Endpoint { address: address.into(), ready, serving, terminating, node_name: node.map(str::to_string) }
    }

    #[test]
    fn slice_ports_and_endpoints_are_read() {
        let s = slice_from_k8s(&slice(json!({
            "ports": [
                {"name": "http", "port": 8080, "protocol": "TCP"},
                {"port": 53, "protocol": "UDP"},
                {"name": "sctp", "port": 7777, "protocol": "SCTP"},
                {"name": "all-ports"},
            ],
            "endpoints": [
                {"addresses": ["10.244.1.5"], "conditions": {"ready": true, "serving": true, "terminating": false}, "nodeName": "n1"},
                {"addresses": ["10.244.2.6"]},
            ],
        })))
        .unwrap();
        assert_eq!(s.name, ServiceName::new("default", "web-abc12"));
        assert_eq!(s.service, ServiceName::new("default", "web"));
        assert_eq!(
            s.ports,
            vec![
                SlicePort { name: "http".into(), port: 8080, protocol: Protocol::Tcp },
                SlicePort { name: "".into(), port: 53, protocol: Protocol::Udp },
            ]
        );
        assert_eq!(
            s.endpoints,
            vec![
                endpoint([10, 244, 1, 5], true, true, false, Some("n1")),
                endpoint([10, 244, 2, 6], true, true, false, None)
            ]
        );
    }

    #[test]
    fn endpoint_conditions_default_as_kube_proxy_reads_them() {
        let cases = [
            (json!({}), (true, true, false)),
            (json!({"ready": false}), (false, true, false)),
            (json!({"ready": false, "serving": true, "terminating": true}), (false, true, true)),
            (json!({"ready": false, "serving": false, "terminating": true}), (false, false, true)),
            (json!({"ready": true, "serving": false}), (true, false, false)),
            (json!({"terminating": true}), (true, true, true)),
        ];
        for (conditions, (ready, serving, terminating)) in cases {
            let s =
                slice_from_k8s(&slice(json!({"endpoints": [{"addresses": ["10.244.1.5"], "conditions": conditions}]})))
                    .unwrap();
            assert_eq!(s.endpoints, vec![endpoint([10, 244, 1, 5], ready, serving, terminating, None)], "{conditions}");
        }
    }

    #[test]
    fn endpoints_without_an_ipv4_address_are_skipped() {
        let s = slice_from_k8s(&slice(json!({"endpoints": [
            {"addresses": ["not-an-ip"]},
            {"addresses": []},
            {"addresses": ["fd00::1", "10.244.1.7"]},
        ]})))
        .unwrap();
        assert_eq!(s.endpoints, vec![endpoint([10, 244, 1, 7], true, true, false, None)]);
    }

    #[test]
    fn ipv6_slices_keep_each_endpoints_first_ipv6_address() {
        let s = slice_from_k8s(&slice(json!({"addressType": "IPv6", "endpoints": [
            {"addresses": ["10.244.1.7", "fd00:10:244:1::7", "fd00:10:244:1::8"], "nodeName": "n1"},
            {"addresses": ["::ffff:10.244.1.9"]},
            {"addresses": ["not-an-ip"]},
        ]})))
        .unwrap();
        let address: IpAddr = "fd00:10:244:1::7".parse().unwrap();
        assert_eq!(
            s.endpoints,
            vec![Endpoint { address, ready: true, serving: true, terminating: false, node_name: Some("n1".into()) }],
            "an IPv4 address in an IPv6 slice, and a v4-mapped one, are not the slice's family"
        );
    }

    #[test]
    fn slices_that_are_not_ours_are_none() {
        assert!(slice_from_k8s(&slice(json!({}))).is_some());
        assert!(slice_from_k8s(&slice(json!({"addressType": "IPv6"}))).is_some());
        for t in ["FQDN", "ipv6", ""] {
            assert_eq!(slice_from_k8s(&slice(json!({"addressType": t}))), None, "{t}");
        }
        let mut s = slice(json!({}));
        s.metadata.labels.as_mut().unwrap().remove(SERVICE_NAME_LABEL);
        assert_eq!(slice_from_k8s(&s), None, "no service-name label");
        for label in [SERVICE_PROXY_NAME_LABEL, HEADLESS_LABEL] {
            let mut s = slice(json!({}));
            s.metadata.labels.as_mut().unwrap().insert(label.to_string(), "".to_string());
            assert_eq!(slice_from_k8s(&s), None, "{label}");
        }
    }
}
