//! A test Kubernetes API server for Nodes, Services, EndpointSlices, Pods,
//! Namespaces and NetworkPolicies: no real API server runs in these tests. It speaks the parts of the real
//! protocol a watcher uses — HTTP/1.1 with keep-alive, JSON,
//! `resourceVersion` (one counter for every kind, as etcd's), a paged list
//! (`limit` / `continue`), a get, a chunked watch stream of ADDED /
//! MODIFIED / DELETED / BOOKMARK events — and lets a test make it misbehave
//! the ways real ones do: expire history (410 Gone, which forces a relist)
//! and drop every open connection.
//!
//! Paths, as kube-rs' `Api::all` / `Api::namespaced` request them:
//! `/api/v1/nodes`, `/api/v1/services`,
//! `/api/v1/namespaces/<ns>/services`,
//! `/apis/discovery.k8s.io/v1/endpointslices`,
//! `/apis/discovery.k8s.io/v1/namespaces/<ns>/endpointslices`,
//! `/api/v1/pods`, `/api/v1/namespaces/<ns>/pods`, `/api/v1/namespaces`,
//! `/apis/networking.k8s.io/v1/networkpolicies`,
//! `/apis/networking.k8s.io/v1/namespaces/<ns>/networkpolicies`, each with
//! `/<name>` for a get.
//!
//! Sized for benchmarks (10,000 Services, 10,000+ slices): objects are kept
//! serialized (shared between the current state and the history), a watch
//! finds its next events by binary search over its kind's history, and
//! `upsert_many` loads many objects under one lock and one wake-up.
use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    ops::Bound,
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Condvar, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use serde_json::{json, Value};

/// The kinds this server serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Node,
    Service,
    EndpointSlice,
    Pod,
    Namespace,
    NetworkPolicy,
}

/// How many kinds there are (`Kind::ALL.len()`).
const KINDS: usize = 6;

impl Kind {
    pub const ALL: [Kind; KINDS] =
        [Kind::Node, Kind::Service, Kind::EndpointSlice, Kind::Pod, Kind::Namespace, Kind::NetworkPolicy];

    fn index(self) -> usize {
        self as usize
    }

    /// `kind` of one object.
    pub fn kind(self) -> &'static str {
        match self {
            Kind::Node => "Node",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Pod => "Pod",
            Kind::Namespace => "Namespace",
            Kind::NetworkPolicy => "NetworkPolicy",
        }
    }

    /// `kind` of a list of them.
    pub fn list_kind(self) -> &'static str {
        match self {
            Kind::Node => "NodeList",
            Kind::Service => "ServiceList",
            Kind::EndpointSlice => "EndpointSliceList",
            Kind::Pod => "PodList",
            Kind::Namespace => "NamespaceList",
            Kind::NetworkPolicy => "NetworkPolicyList",
        }
    }

    pub fn api_version(self) -> &'static str {
        match self {
            Kind::Node | Kind::Service | Kind::Pod | Kind::Namespace => "v1",
            Kind::EndpointSlice => "discovery.k8s.io/v1",
            Kind::NetworkPolicy => "networking.k8s.io/v1",
        }
    }

    /// API group, as RBAC names it ("" for core).
    pub fn group(self) -> &'static str {
        match self {
            Kind::Node | Kind::Service | Kind::Pod | Kind::Namespace => "",
            Kind::EndpointSlice => "discovery.k8s.io",
            Kind::NetworkPolicy => "networking.k8s.io",
        }
    }

    /// Resource, as paths and RBAC name it.
    pub fn resource(self) -> &'static str {
        match self {
            Kind::Node => "nodes",
            Kind::Service => "services",
            Kind::EndpointSlice => "endpointslices",
            Kind::Pod => "pods",
            Kind::Namespace => "namespaces",
            Kind::NetworkPolicy => "networkpolicies",
        }
    }

    pub fn namespaced(self) -> bool {
        !matches!(self, Kind::Node | Kind::Namespace)
    }
}

/// The (API group, resource) a request path addresses, as RBAC rules name
/// them: `/api/v1/nodes/n1` → ("", "nodes"),
/// `/apis/discovery.k8s.io/v1/namespaces/x/endpointslices` →
/// ("discovery.k8s.io", "endpointslices"). `None`: not a resource path.
pub fn api_resource(path: &str) -> Option<(String, String)> {
    let (group, rest) = if let Some(rest) = path.strip_prefix("/api/v1/") {
        ("", rest)
    } else {
        let rest = path.strip_prefix("/apis/")?;
        let mut parts = rest.splitn(3, '/');
        let group = parts.next()?;
        let _version = parts.next()?;
        (group, parts.next()?)
    };
    let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let resource = match segs.as_slice() {
        ["namespaces", _, resource, ..] => resource,
        [resource, ..] => resource,
        [] => return None,
    };
    Some((group.to_string(), resource.to_string()))
}

/// What one request addresses.
struct Route {
    kind: Kind,
    namespace: Option<String>,
    name: Option<String>,
}

impl Route {
    fn parse(path: &str) -> Option<Route> {
        let (group, resource) = api_resource(path)?;
        let kind = Kind::ALL.into_iter().find(|k| k.group() == group && k.resource() == resource)?;
        let rest = path.split('/').filter(|s| !s.is_empty()).collect::<Vec<_>>();
        // Skip "api", "v1" or "apis", group, version.
        let rest = &rest[if group.is_empty() { 2 } else { 3 }..];
        let (namespace, rest) = match rest {
            ["namespaces", ns, rest @ ..] if kind.namespaced() => (Some(ns.to_string()), rest),
            _ => (None, rest),
        };
        let name = match rest {
            [_] => None,
            [_, name] => Some(name.to_string()),
            _ => return None,
        };
        Some(Route { kind, namespace, name })
    }

    /// Does the object stored under `key` belong to this request?
    fn matches(&self, key: &str) -> bool {
        let (ns, name) = split_key(key);
        self.namespace.as_deref().is_none_or(|n| n == ns) && self.name.as_deref().is_none_or(|n| n == name)
    }

    /// The first key of this request's namespace (every key, cluster-wide).
    fn key_prefix(&self) -> String {
        self.namespace.as_ref().map(|ns| format!("{ns}/")).unwrap_or_default()
    }
}

/// Objects are stored under `namespace/name` (`name` for cluster-scoped ones).
fn object_key(kind: Kind, namespace: &str, name: &str) -> String {
    if kind.namespaced() {
        format!("{namespace}/{name}")
    } else {
        name.to_string()
    }
}

fn split_key(key: &str) -> (&str, &str) {
    key.split_once('/').unwrap_or(("", key))
}

/// One change, as watchers see it.
struct Change {
    rv: u64,
    type_: &'static str,
    key: String,
    object: Arc<Vec<u8>>,
    /// When it was first written to a watch stream.
    written: Option<Instant>,
}

/// The objects of one kind and their history.
#[derive(Default)]
struct Store {
    /// Serialized, shared with `history`.
    objects: BTreeMap<String, Arc<Vec<u8>>>,
    /// Sorted by resourceVersion (the counter only grows).
    history: Vec<Change>,
    lists: u64,
    watches: u64,
    gone_sent: u64,
}

#[derive(Default)]
struct Inner {
    rv: u64,
    stores: [Store; KINDS],
    /// A watch (or a list continued) from an older resourceVersion than
    /// this gets 410 Gone.
    oldest_watchable: u64,
    /// Bumped to cut every open connection.
    drop_generation: u64,
    /// Every request: (verb as RBAC names it, resource path).
    requests: Vec<(String, String)>,
    bookmarks_sent: u64,
    /// Kinds whose every request gets 403 Forbidden (RBAC says no).
    forbidden: [bool; KINDS],
}

impl Inner {
    fn store(&mut self, kind: Kind) -> &mut Store {
        &mut self.stores[kind.index()]
    }

    /// Create or replace an object: a new resourceVersion, ADDED or MODIFIED.
    fn put(&mut self, kind: Kind, mut obj: Value) -> u64 {
        let meta = &obj["metadata"];
        let name = meta["name"].as_str().expect("object has metadata.name");
        let namespace = meta["namespace"].as_str().unwrap_or_default();
        assert!(!kind.namespaced() || !namespace.is_empty(), "a {} needs metadata.namespace", kind.kind());
        let key = object_key(kind, namespace, name);
        self.rv += 1;
        let rv = self.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        obj["apiVersion"] = json!(kind.api_version());
        obj["kind"] = json!(kind.kind());
        let object = Arc::new(serde_json::to_vec(&obj).expect("serialize object"));
        let store = self.store(kind);
        let type_ = if store.objects.insert(key.clone(), object.clone()).is_some() { "MODIFIED" } else { "ADDED" };
        store.history.push(Change { rv, type_, key, object, written: None });
        rv
    }

    fn remove(&mut self, kind: Kind, key: &str) -> Option<u64> {
        let old = self.store(kind).objects.remove(key)?;
        self.rv += 1;
        let rv = self.rv;
        let mut obj: Value = serde_json::from_slice(&old).expect("stored object is JSON");
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let object = Arc::new(serde_json::to_vec(&obj).expect("serialize object"));
        self.store(kind).history.push(Change { rv, type_: "DELETED", key: key.to_string(), object, written: None });
        Some(rv)
    }
}

pub struct ApiServer {
    pub addr: SocketAddr,
    shared: Arc<(Mutex<Inner>, Condvar)>,
    stop: Arc<AtomicBool>,
    /// `None` while stopped (`stop_serving`): connections are refused.
    listener: Arc<Mutex<Option<TcpListener>>>,
    netns: Option<String>,
}

fn bind(addr: SocketAddr, netns: Option<&str>) -> Result<TcpListener> {
    let listener = match netns {
        None => TcpListener::bind(addr)?,
        Some(ns) => {
            let path = Path::new("/run/netns").join(ns);
            sluice_node::net::netns::run_in(&path, move || Ok(TcpListener::bind(addr)?))?
        }
    };
    listener.set_nonblocking(true)?;
    Ok(listener)
}

pub fn node_object(name: &str, ip: &str, pod_cidr: Option<&str>, rv: u64) -> Value {
    let mut spec = json!({});
    if let Some(c) = pod_cidr {
        spec = json!({"podCIDR": c, "podCIDRs": [c]});
    }
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "uid": format!("uid-{name}"), "resourceVersion": rv.to_string()},
        "spec": spec,
        "status": {"addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}]},
    })
}

/// A port of a Service (`spec.ports[]`).
#[derive(Clone, Debug)]
pub struct ServicePortObject {
    pub name: String,
    pub port: u16,
    /// A number or a container port's name.
    pub target_port: Value,
    pub protocol: String,
}

/// A Service as the API server returns it (defaults filled in). Build with
/// the constructors and chained setters, then `build()`.
#[derive(Clone, Debug)]
pub struct ServiceObject {
    pub namespace: String,
    pub name: String,
    /// `spec.type`: ClusterIP, NodePort, LoadBalancer, ExternalName.
    pub type_: String,
    /// `spec.clusterIPs` (`spec.clusterIP` is the first): `["None"]` for
    /// headless, empty for ExternalName.
    pub cluster_ips: Vec<String>,
    pub external_name: Option<String>,
    pub ports: Vec<ServicePortObject>,
    /// `sessionAffinity: ClientIP`, with `timeoutSeconds` when `Some`.
    pub client_ip_affinity: Option<Option<u32>>,
    pub internal_traffic_local: bool,
    pub labels: BTreeMap<String, String>,
    /// `spec.externalIPs`.
    pub external_ips: Vec<String>,
    /// `status.loadBalancer.ingress[].ip`.
    pub load_balancer_ips: Vec<String>,
    /// `spec.loadBalancerSourceRanges`.
    pub load_balancer_source_ranges: Vec<String>,
    /// `externalTrafficPolicy: Local` (with `healthCheckNodePort` for a
    /// LoadBalancer, as the API server allocates it).
    pub external_traffic_local: bool,
    /// `nodePort`s set by hand, by port index (`node_ports`); the others
    /// are the allocator's (`node_port`).
    pub fixed_node_ports: Vec<u16>,
}

impl ServiceObject {
    /// A ClusterIP Service with no ports yet.
    pub fn new(namespace: &str, name: &str, cluster_ip: &str) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            type_: "ClusterIP".into(),
            cluster_ips: vec![cluster_ip.into()],
            external_name: None,
            ports: Vec::new(),
            client_ip_affinity: None,
            internal_traffic_local: false,
            labels: BTreeMap::new(),
            external_ips: Vec::new(),
            load_balancer_ips: Vec::new(),
            load_balancer_source_ranges: Vec::new(),
            external_traffic_local: false,
            fixed_node_ports: Vec::new(),
        }
    }

    /// The `nodePort` `build()` gives port `i` (NodePort and LoadBalancer
    /// types): the one set with `node_ports`, else as the API server's
    /// allocator would, in 30000-32767.
    pub fn node_port(&self, i: usize) -> u16 {
        match self.fixed_node_ports.get(i) {
            Some(&p) => p,
            None => 30000 + ((u32::from(self.ports[i].port) * 7 + i as u32) % 2768) as u16,
        }
    }

    /// The `nodePort`s of the first ports, in order (an API server with a
    /// wider `--service-node-port-range`, or a user's choice).
    pub fn node_ports(mut self, ports: &[u16]) -> Self {
        self.fixed_node_ports = ports.to_vec();
        self
    }

    /// `spec.healthCheckNodePort` `build()` gives a LoadBalancer Service
    /// with `externalTrafficPolicy: Local`.
    pub fn health_check_node_port(&self) -> Option<u16> {
        (self.type_ == "LoadBalancer" && self.external_traffic_local)
            .then(|| 32000 + (self.name.bytes().map(u16::from).sum::<u16>() % 700))
    }

    pub fn external_ips(mut self, ips: &[&str]) -> Self {
        self.external_ips = ips.iter().map(|s| s.to_string()).collect();
        self
    }

    /// `spec.loadBalancerSourceRanges`.
    pub fn source_ranges(mut self, ranges: &[&str]) -> Self {
        self.load_balancer_source_ranges = ranges.iter().map(|s| s.to_string()).collect();
        self
    }

    /// `status.loadBalancer.ingress` IPs (a load balancer controller's).
    pub fn load_balancer_ips(mut self, ips: &[&str]) -> Self {
        self.load_balancer_ips = ips.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn external_traffic_local(mut self) -> Self {
        self.external_traffic_local = true;
        self
    }

    /// `clusterIP: None`.
    pub fn headless(namespace: &str, name: &str) -> Self {
        Self::new(namespace, name, "None")
    }

    /// `type: ExternalName`, a CNAME to `host`.
    pub fn external_name(namespace: &str, name: &str, host: &str) -> Self {
        let mut s = Self::new(namespace, name, "");
        s.type_ = "ExternalName".into();
        s.cluster_ips.clear();
        s.external_name = Some(host.into());
        s
    }

    pub fn type_(mut self, type_: &str) -> Self {
        self.type_ = type_.into();
        self
    }

    /// Every cluster IP, first is `clusterIP` (dual stack: one per family).
    pub fn cluster_ips(mut self, ips: &[&str]) -> Self {
        self.cluster_ips = ips.iter().map(|s| s.to_string()).collect();
        self
    }

    /// A port: `target_port` a number or a name, protocol "TCP", "UDP", "SCTP".
    pub fn port(mut self, name: &str, port: u16, target_port: impl Into<Value>, protocol: &str) -> Self {
        self.ports.push(ServicePortObject {
            name: name.into(),
            port,
            target_port: target_port.into(),
            protocol: protocol.into(),
        });
        self
    }

    /// `sessionAffinity: ClientIP`; `timeout_secs: None` leaves
    /// `sessionAffinityConfig` out.
    pub fn client_ip_affinity(mut self, timeout_secs: Option<u32>) -> Self {
        self.client_ip_affinity = Some(timeout_secs);
        self
    }

    pub fn internal_traffic_local(mut self) -> Self {
        self.internal_traffic_local = true;
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    pub fn build(&self) -> Value {
        let mut spec = json!({
            "type": self.type_,
            "sessionAffinity": if self.client_ip_affinity.is_some() { "ClientIP" } else { "None" },
        });
        if self.type_ != "ExternalName" {
            let ipv6 = self.cluster_ips.iter().filter(|ip| ip.contains(':')).count();
            let families: Vec<&str> = self
                .cluster_ips
                .iter()
                .filter(|ip| *ip != "None")
                .map(|ip| if ip.contains(':') { "IPv6" } else { "IPv4" })
                .collect();
            spec["clusterIP"] = json!(self.cluster_ips.first().cloned().unwrap_or_default());
            spec["clusterIPs"] = json!(self.cluster_ips);
            spec["ipFamilies"] = json!(if families.is_empty() { vec!["IPv4"] } else { families });
            spec["ipFamilyPolicy"] =
                json!(if ipv6 > 0 && ipv6 < self.cluster_ips.len() { "PreferDualStack" } else { "SingleStack" });
            spec["internalTrafficPolicy"] = json!(if self.internal_traffic_local { "Local" } else { "Cluster" });
            spec["selector"] = json!({"app": self.name});
        }
        if let Some(host) = &self.external_name {
            spec["externalName"] = json!(host);
        }
        if !self.ports.is_empty() {
            spec["ports"] = self
                .ports
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let mut port =
                        json!({"name": p.name, "port": p.port, "targetPort": p.target_port, "protocol": p.protocol});
                    if self.type_ == "NodePort" || self.type_ == "LoadBalancer" {
                        port["nodePort"] = json!(self.node_port(i));
                    }
                    port
                })
                .collect();
        }
        if let Some(timeout) = self.client_ip_affinity.flatten() {
            spec["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": timeout}});
        }
        if !self.external_ips.is_empty() {
            spec["externalIPs"] = json!(self.external_ips);
        }
        if !self.load_balancer_source_ranges.is_empty() {
            spec["loadBalancerSourceRanges"] = json!(self.load_balancer_source_ranges);
        }
        if self.type_ == "NodePort" || self.type_ == "LoadBalancer" {
            spec["externalTrafficPolicy"] = json!(if self.external_traffic_local { "Local" } else { "Cluster" });
        }
        if let Some(port) = self.health_check_node_port() {
            spec["healthCheckNodePort"] = json!(port);
        }
        let ingress: Vec<Value> = self.load_balancer_ips.iter().map(|ip| json!({"ip": ip, "ipMode": "VIP"})).collect();
        let mut labels = json!({"app": self.name});
        for (k, v) in &self.labels {
            labels[k] = json!(v);
        }
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "namespace": self.namespace,
                "name": self.name,
                "uid": format!("uid-svc-{}-{}", self.namespace, self.name),
                "resourceVersion": "0",
                "creationTimestamp": "2025-01-01T00:00:00Z",
                "labels": labels,
            },
            "spec": spec,
            "status": {"loadBalancer": if ingress.is_empty() { json!({}) } else { json!({"ingress": ingress}) }},
        })
    }
}

/// A ClusterIP Service with TCP ports (name, port, targetPort).
pub fn service_object(namespace: &str, name: &str, cluster_ip: &str, ports: &[(&str, u16, u16)]) -> Value {
    ports.iter().fold(ServiceObject::new(namespace, name, cluster_ip), |s, (n, p, t)| s.port(n, *p, *t, "TCP")).build()
}

/// One endpoint of a slice; `None` conditions are left out of the object.
#[derive(Clone, Debug)]
pub struct EndpointObject {
    pub addresses: Vec<String>,
    pub ready: Option<bool>,
    pub serving: Option<bool>,
    pub terminating: Option<bool>,
    pub node_name: Option<String>,
}

impl EndpointObject {
    /// A ready pod on `node`, as the EndpointSlice controller writes it.
    pub fn ready(address: &str, node: &str) -> Self {
        Self {
            addresses: vec![address.into()],
            ready: Some(true),
            serving: Some(true),
            terminating: Some(false),
            node_name: Some(node.into()),
        }
    }

    /// A terminating pod, still serving or not.
    pub fn terminating(address: &str, node: &str, serving: bool) -> Self {
        Self { ready: Some(false), serving: Some(serving), terminating: Some(true), ..Self::ready(address, node) }
    }
}

/// A discovery.k8s.io/v1 EndpointSlice as the EndpointSlice controller
/// writes it. Build with `new` and chained setters, then `build()`.
#[derive(Clone, Debug)]
pub struct EndpointSliceObject {
    pub namespace: String,
    pub name: String,
    /// The `kubernetes.io/service-name` label (`None`: left out).
    pub service: Option<String>,
    pub address_type: String,
    /// (name, port, protocol).
    pub ports: Vec<(String, u16, String)>,
    pub endpoints: Vec<EndpointObject>,
    pub labels: BTreeMap<String, String>,
}

impl EndpointSliceObject {
    pub fn new(namespace: &str, name: &str, service: &str) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            service: Some(service.into()),
            address_type: "IPv4".into(),
            ports: Vec::new(),
            endpoints: Vec::new(),
            labels: BTreeMap::new(),
        }
    }

    pub fn address_type(mut self, t: &str) -> Self {
        self.address_type = t.into();
        self
    }

    /// A port: `name` "" for a Service's single unnamed port.
    pub fn port(mut self, name: &str, port: u16, protocol: &str) -> Self {
        self.ports.push((name.into(), port, protocol.into()));
        self
    }

    /// A ready endpoint on `node`.
    pub fn endpoint(self, address: &str, node: &str) -> Self {
        self.endpoint_with(EndpointObject::ready(address, node))
    }

    pub fn endpoint_with(mut self, e: EndpointObject) -> Self {
        self.endpoints.push(e);
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    pub fn build(&self) -> Value {
        let mut labels = json!({"endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"});
        if let Some(s) = &self.service {
            labels["kubernetes.io/service-name"] = json!(s);
        }
        for (k, v) in &self.labels {
            labels[k] = json!(v);
        }
        let service = self.service.clone().unwrap_or_else(|| self.name.clone());
        let endpoints: Vec<Value> = self
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let mut conditions = json!({});
                for (k, v) in [("ready", e.ready), ("serving", e.serving), ("terminating", e.terminating)] {
                    if let Some(v) = v {
                        conditions[k] = json!(v);
                    }
                }
                let pod = format!("{service}-{i}");
                let mut ep = json!({
                    "addresses": e.addresses,
                    "conditions": conditions,
                    "targetRef": {"kind": "Pod", "namespace": self.namespace, "name": pod,
                        "uid": format!("uid-pod-{}-{pod}", self.namespace)},
                });
                if let Some(n) = &e.node_name {
                    ep["nodeName"] = json!(n);
                }
                ep
            })
            .collect();
        let ports: Vec<Value> = self
            .ports
            .iter()
            .map(|(name, port, protocol)| json!({"name": name, "port": port, "protocol": protocol}))
            .collect();
        json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "namespace": self.namespace,
                "name": self.name,
                "generateName": format!("{service}-"),
                "uid": format!("uid-eps-{}-{}", self.namespace, self.name),
                "resourceVersion": "0",
                "creationTimestamp": "2025-01-01T00:00:00Z",
                "labels": labels,
                "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": service,
                    "uid": format!("uid-svc-{}-{service}", self.namespace),
                    "controller": true, "blockOwnerDeletion": true}],
            },
            "addressType": self.address_type,
            "endpoints": endpoints,
            "ports": ports,
        })
    }
}

/// An IPv4 slice of `service` with TCP ports (name, port) and ready
/// endpoints (address, node).
pub fn endpoint_slice_object(
    namespace: &str,
    name: &str,
    service: &str,
    ports: &[(&str, u16)],
    endpoints: &[(&str, &str)],
) -> Value {
    let s = ports.iter().fold(EndpointSliceObject::new(namespace, name, service), |s, (n, p)| s.port(n, *p, "TCP"));
    endpoints.iter().fold(s, |s, (a, node)| s.endpoint(a, node)).build()
}

/// A Pod as the API server returns it, scheduled or not. Build with `new`
/// and chained setters, then `build()`.
#[derive(Clone, Debug)]
pub struct PodObject {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// `spec.nodeName` (`None`: not scheduled yet).
    pub node: Option<String>,
    /// `status.podIPs` (the first is `status.podIP`).
    pub ips: Vec<String>,
    pub host_network: bool,
    /// (container, port name, port, protocol) of `spec.containers`.
    pub ports: Vec<(String, Option<String>, u16, String)>,
    /// The same for restartable init containers (sidecars).
    pub sidecar_ports: Vec<(String, Option<String>, u16, String)>,
    /// (container port, hostPort, protocol, hostIP) of `spec.containers`.
    pub host_ports: Vec<(u16, u16, String, Option<String>)>,
    /// `status.phase`.
    pub phase: String,
}

impl PodObject {
    /// A running pod on `node` with address `ip`, labelled `pod: <name>`.
    pub fn new(namespace: &str, name: &str, node: &str, ip: &str) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            labels: [("pod".to_string(), name.to_string())].into(),
            node: Some(node.into()),
            ips: vec![ip.into()],
            host_network: false,
            ports: Vec::new(),
            sidecar_ports: Vec::new(),
            host_ports: Vec::new(),
            phase: "Running".into(),
        }
    }

    /// Not scheduled and without an address (Pending).
    pub fn pending(namespace: &str, name: &str) -> Self {
        Self { node: None, ips: Vec::new(), phase: "Pending".into(), ..Self::new(namespace, name, "", "") }
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    pub fn without_labels(mut self) -> Self {
        self.labels.clear();
        self
    }

    pub fn node(mut self, node: &str) -> Self {
        self.node = Some(node.into());
        self
    }

    /// Every address (`[]`: none yet).
    pub fn ips(mut self, ips: &[&str]) -> Self {
        self.ips = ips.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn host_network(mut self) -> Self {
        self.host_network = true;
        self
    }

    pub fn phase(mut self, phase: &str) -> Self {
        self.phase = phase.into();
        self
    }

    /// A container port (`name` may be `None`), protocol "TCP", "UDP", "SCTP".
    pub fn port(mut self, name: Option<&str>, port: u16, protocol: &str) -> Self {
        let container = format!("c{}", self.ports.len());
        self.ports.push((container, name.map(str::to_string), port, protocol.into()));
        self
    }

    /// A container port with a `hostPort` (and a `hostIP`, if given).
    pub fn host_port(mut self, port: u16, host_port: u16, protocol: &str, host_ip: Option<&str>) -> Self {
        self.host_ports.push((port, host_port, protocol.into(), host_ip.map(str::to_string)));
        self
    }

    /// A port of a restartable init container (`restartPolicy: Always`).
    pub fn sidecar_port(mut self, name: Option<&str>, port: u16, protocol: &str) -> Self {
        let container = format!("sidecar{}", self.sidecar_ports.len());
        self.sidecar_ports.push((container, name.map(str::to_string), port, protocol.into()));
        self
    }

    pub fn build(&self) -> Value {
        let container = |(c, name, port, protocol): &(String, Option<String>, u16, String)| {
            let mut p = json!({"containerPort": port, "protocol": protocol});
            if let Some(n) = name {
                p["name"] = json!(n);
            }
            json!({"name": c, "image": "registry.k8s.io/e2e-test-images/agnhost:2.53", "ports": [p]})
        };
        let mut containers: Vec<Value> = self.ports.iter().map(container).collect();
        for (i, (port, host_port, protocol, host_ip)) in self.host_ports.iter().enumerate() {
            let mut p = json!({"containerPort": port, "hostPort": host_port, "protocol": protocol});
            if let Some(ip) = host_ip {
                p["hostIP"] = json!(ip);
            }
            containers.push(json!({"name": format!("hp{i}"), "image": "registry.k8s.io/pause:3.10", "ports": [p]}));
        }
        if containers.is_empty() {
            containers.push(json!({"name": "main", "image": "registry.k8s.io/pause:3.10"}));
        }
        let mut spec = json!({"containers": containers, "restartPolicy": "Always"});
        if !self.sidecar_ports.is_empty() {
            let init: Vec<Value> = self
                .sidecar_ports
                .iter()
                .map(|p| {
                    let mut c = container(p);
                    c["restartPolicy"] = json!("Always");
                    c
                })
                .collect();
            spec["initContainers"] = json!(init);
        }
        if let Some(n) = &self.node {
            spec["nodeName"] = json!(n);
        }
        if self.host_network {
            spec["hostNetwork"] = json!(true);
        }
        let mut status = json!({"phase": self.phase});
        if let Some(first) = self.ips.first() {
            status["podIP"] = json!(first);
            status["podIPs"] = self.ips.iter().map(|ip| json!({"ip": ip})).collect();
        }
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "namespace": self.namespace,
                "name": self.name,
                "uid": format!("uid-pod-{}-{}", self.namespace, self.name),
                "resourceVersion": "0",
                "creationTimestamp": "2025-01-01T00:00:00Z",
                "labels": self.labels,
            },
            "spec": spec,
            "status": status,
        })
    }
}

/// A Namespace as the API server returns it: with the
/// `kubernetes.io/metadata.name` label it sets on every namespace, and
/// `labels` beside it.
pub fn namespace_object(name: &str, labels: &[(&str, &str)]) -> Value {
    let mut l = json!({"kubernetes.io/metadata.name": name});
    for (k, v) in labels {
        l[*k] = json!(v);
    }
    json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "uid": format!("uid-ns-{name}"), "resourceVersion": "0",
            "creationTimestamp": "2025-01-01T00:00:00Z", "labels": l},
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    })
}

/// A networking.k8s.io/v1 NetworkPolicy with `spec` as given (JSON, as in
/// a manifest: `{"podSelector": {}, "policyTypes": ["Ingress"]}`).
pub fn network_policy_object(namespace: &str, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"namespace": namespace, "name": name, "uid": format!("uid-netpol-{namespace}-{name}"),
            "resourceVersion": "0", "generation": 1, "creationTimestamp": "2025-01-01T00:00:00Z"},
        "spec": spec,
    })
}

impl ApiServer {
    /// Listen on `addr`; with `netns`, inside that network namespace (the
    /// lab's LAN, where the nodes can reach it).
    pub fn start(addr: &str, netns: Option<&str>) -> Result<Self> {
        let addr: SocketAddr = addr.parse()?;
        let listener = bind(addr, netns)?;
        let addr = listener.local_addr()?;
        let listener = Arc::new(Mutex::new(Some(listener)));
        let shared: Arc<(Mutex<Inner>, Condvar)> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (s2, stop2, l2) = (shared.clone(), stop.clone(), listener.clone());
        thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                let accepted = match &*l2.lock().unwrap() {
                    Some(l) => l.accept(),
                    None => Err(std::io::ErrorKind::NotConnected.into()),
                };
                match accepted {
                    Ok((conn, _)) => {
                        let s3 = s2.clone();
                        let stop3 = stop2.clone();
                        thread::spawn(move || {
                            let _ = serve(conn, &s3, &stop3);
                        });
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Ok(Self { addr, shared, stop, listener, netns: netns.map(str::to_string) })
    }

    /// Stop serving, as a stopped API server does: the listening socket
    /// is closed (connections are refused) and open connections are cut.
    /// The objects stay for `start_serving`.
    pub fn stop_serving(&self) {
        self.listener.lock().unwrap().take();
        self.drop_connections();
    }

    /// Serve again on the same address, as the server restarted: its
    /// watch history is gone (a watch from an older resourceVersion gets
    /// 410 Expired, as from a real one whose watch cache was rebuilt).
    pub fn start_serving(&self) -> Result<()> {
        let listener = bind(self.addr, self.netns.as_deref())?;
        self.expire_history();
        *self.listener.lock().unwrap() = Some(listener);
        Ok(())
    }

    /// A kubeconfig pointing at this server.
    pub fn write_kubeconfig(&self, path: &Path) -> Result<()> {
        let cfg = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: http://{}\n\
             users:\n- name: lab\n  user:\n    token: lab-token\ncontexts:\n- name: lab\n  context:\n    cluster: lab\n    user: lab\n\
             current-context: lab\n",
            self.addr
        );
        std::fs::write(path, cfg).context("write kubeconfig")
    }

    fn change<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        let (lock, cond) = &*self.shared;
        let r = f(&mut lock.lock().unwrap());
        cond.notify_all();
        r
    }

    /// Create or update a Node (ADDED or MODIFIED to watchers).
    pub fn upsert_node(&self, name: &str, ip: &str, pod_cidr: Option<&str>) {
        self.upsert(Kind::Node, node_object(name, ip, pod_cidr, 0));
    }

    pub fn delete_node(&self, name: &str) {
        self.delete(Kind::Node, "", name);
    }

    /// Create or replace an object of `kind` (ADDED or MODIFIED to
    /// watchers); its `metadata.resourceVersion` is set to the new one,
    /// which is returned.
    pub fn upsert(&self, kind: Kind, obj: Value) -> u64 {
        self.change(|s| s.put(kind, obj))
    }

    /// Many objects at once: one resourceVersion each, one wake-up for the
    /// watchers. Returns the last resourceVersion (the current one when
    /// `objs` is empty).
    pub fn upsert_many(&self, kind: Kind, objs: impl IntoIterator<Item = Value>) -> u64 {
        self.change(|s| {
            for obj in objs {
                s.put(kind, obj);
            }
            s.rv
        })
    }

    /// Delete an object (DELETED to watchers, with a new resourceVersion,
    /// returned). `namespace` is ignored for Nodes and Namespaces. `None`: no
    /// such object.
    pub fn delete(&self, kind: Kind, namespace: &str, name: &str) -> Option<u64> {
        self.change(|s| s.remove(kind, &object_key(kind, namespace, name)))
    }

    /// Delete many objects of `kind` at once (namespace, name): one
    /// resourceVersion each, one wake-up for the watchers. Returns the last
    /// resourceVersion.
    pub fn delete_many(&self, kind: Kind, keys: impl IntoIterator<Item = (String, String)>) -> u64 {
        self.change(|s| {
            for (namespace, name) in keys {
                s.remove(kind, &object_key(kind, &namespace, &name));
            }
            s.rv
        })
    }

    /// Create or update a Service (see `ServiceObject`, `service_object`).
    pub fn upsert_service(&self, obj: Value) -> u64 {
        self.upsert(Kind::Service, obj)
    }

    pub fn delete_service(&self, namespace: &str, name: &str) -> Option<u64> {
        self.delete(Kind::Service, namespace, name)
    }

    /// Create or update an EndpointSlice (see `EndpointSliceObject`,
    /// `endpoint_slice_object`).
    pub fn upsert_endpoint_slice(&self, obj: Value) -> u64 {
        self.upsert(Kind::EndpointSlice, obj)
    }

    pub fn delete_endpoint_slice(&self, namespace: &str, name: &str) -> Option<u64> {
        self.delete(Kind::EndpointSlice, namespace, name)
    }

    /// Create or update a Pod (see `PodObject`).
    pub fn upsert_pod(&self, obj: Value) -> u64 {
        self.upsert(Kind::Pod, obj)
    }

    pub fn delete_pod(&self, namespace: &str, name: &str) -> Option<u64> {
        self.delete(Kind::Pod, namespace, name)
    }

    /// Create or update a Namespace (see `namespace_object`).
    pub fn upsert_namespace(&self, obj: Value) -> u64 {
        self.upsert(Kind::Namespace, obj)
    }

    pub fn delete_namespace(&self, name: &str) -> Option<u64> {
        self.delete(Kind::Namespace, "", name)
    }

    /// Create or update a NetworkPolicy (see `network_policy_object`).
    pub fn upsert_network_policy(&self, obj: Value) -> u64 {
        self.upsert(Kind::NetworkPolicy, obj)
    }

    pub fn delete_network_policy(&self, namespace: &str, name: &str) -> Option<u64> {
        self.delete(Kind::NetworkPolicy, namespace, name)
    }

    /// The current resourceVersion (of every kind: one counter).
    pub fn resource_version(&self) -> u64 {
        self.shared.0.lock().unwrap().rv
    }

    /// When the change with resourceVersion `rv` (as `upsert*`/`delete*`
    /// return) was first handed to a watch stream of its kind (just before
    /// the write, so it is never later than the client's read): where
    /// "watch event → datapath" latency starts. `None`: not written yet
    /// (or forgotten by `expire_history`).
    pub fn written_at(&self, rv: u64) -> Option<Instant> {
        let s = self.shared.0.lock().unwrap();
        s.stores.iter().find_map(|st| {
            let i = st.history.binary_search_by_key(&rv, |c| c.rv).ok()?;
            st.history[i].written
        })
    }

    /// Forget history (as etcd compaction does) and cut open watches: every
    /// watcher's next watch gets 410 Gone and must relist.
    pub fn expire_history(&self) {
        self.change(|s| {
            // A revision of its own, as if something else had been written:
            // every watcher has seen less than it (410), and a list made
            // after this (at it) can be watched from and continued.
            s.rv += 1;
            s.oldest_watchable = s.rv;
            s.drop_generation += 1;
            for st in &mut s.stores {
                st.history.clear();
            }
        });
    }

    /// Cut every open connection, as a restarting API server or a flaky
    /// network would.
    pub fn drop_connections(&self) {
        self.change(|s| s.drop_generation += 1);
    }

    /// Answer every request for `kind` with 403 Forbidden (as a ClusterRole
    /// without it would) until called again with `false`. Open watches of
    /// the kind are cut; other kinds' are left alone.
    pub fn forbid(&self, kind: Kind, forbidden: bool) {
        self.change(|s| s.forbidden[kind.index()] = forbidden);
    }

    /// Every request so far as (RBAC verb, path): what a ClusterRole must allow.
    pub fn requests(&self) -> Vec<(String, String)> {
        self.shared.0.lock().unwrap().requests.clone()
    }

    /// (lists, watches, 410s sent, bookmarks sent) so far, every kind.
    pub fn counters(&self) -> (u64, u64, u64, u64) {
        let s = self.shared.0.lock().unwrap();
        let sum = |f: fn(&Store) -> u64| s.stores.iter().map(f).sum::<u64>();
        (sum(|st| st.lists), sum(|st| st.watches), sum(|st| st.gone_sent), s.bookmarks_sent)
    }

    /// (list requests, watches, 410s sent) of one kind so far (a paged list
    /// counts once per page).
    pub fn counters_of(&self, kind: Kind) -> (u64, u64, u64) {
        let s = self.shared.0.lock().unwrap();
        let st = &s.stores[kind.index()];
        (st.lists, st.watches, st.gone_sent)
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.drop_connections();
    }
}

struct Request {
    path: String,
    query: BTreeMap<String, String>,
}

fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let target = line.split_whitespace().nth(1)?.to_string();
    let mut content_length = 0usize;
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
            content_length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; content_length];
    reader.read_exact(&mut body).ok()?;
    let (path, q) = target.split_once('?').unwrap_or((&target, ""));
    let query = q.split('&').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect();
    Some(Request { path: path.to_string(), query })
}

/// One response, header and body in one write (the socket has Nagle off).
fn respond(conn: &mut TcpStream, status: &str, body: &[u8]) -> std::io::Result<()> {
    let mut out =
        format!("HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len())
            .into_bytes();
    out.extend_from_slice(body);
    conn.write_all(&out)?;
    conn.flush()
}

fn status_body(code: u16, reason: &str, message: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code}))
    .expect("serialize status")
}

/// Append one chunk of a chunked body holding `line` and a newline.
fn push_chunk(out: &mut Vec<u8>, parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|p| p.len()).sum::<usize>() + 1;
    out.extend_from_slice(format!("{len:x}\r\n").as_bytes());
    for p in parts {
        out.extend_from_slice(p);
    }
    out.extend_from_slice(b"\n\r\n");
}

fn chunk(conn: &mut TcpStream, event: &Value) -> std::io::Result<()> {
    let mut out = Vec::new();
    push_chunk(&mut out, &[&serde_json::to_vec(event)?]);
    conn.write_all(&out)?;
    conn.flush()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<String> {
    let bytes: Option<Vec<u8>> =
        (0..s.len()).step_by(2).map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok())).collect();
    String::from_utf8(bytes?).ok()
}

fn serve(conn: TcpStream, shared: &Arc<(Mutex<Inner>, Condvar)>, stop: &AtomicBool) -> std::io::Result<()> {
    conn.set_nodelay(true)?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut conn = conn;
    let generation = shared.0.lock().unwrap().drop_generation;
    while let Some(req) = read_request(&mut reader) {
        if shared.0.lock().unwrap().drop_generation != generation || stop.load(Ordering::Relaxed) {
            break;
        }
        let is_watch = req.query.get("watch").map(String::as_str) == Some("true");
        let route = Route::parse(&req.path);
        let verb = match &route {
            _ if is_watch => "watch",
            Some(Route { name: None, .. }) => "list",
            _ => "get",
        };
        shared.0.lock().unwrap().requests.push((verb.to_string(), req.path.clone()));
        let Some(route) = route else {
            respond(
                &mut conn,
                "404 Not Found",
                &status_body(404, "NotFound", "the server could not find the requested resource"),
            )?;
            continue;
        };
        if shared.0.lock().unwrap().forbidden[route.kind.index()] {
            let msg =
                format!("{} is forbidden: cannot {verb} resource {:?}", route.kind.resource(), route.kind.resource());
            respond(&mut conn, "403 Forbidden", &status_body(403, "Forbidden", &msg))?;
            continue;
        }
        if is_watch {
            if !watch(&mut conn, shared, stop, &route, &req, generation)? {
                break; // connection cut on purpose
            }
        } else if route.name.is_some() {
            let found = {
                let mut s = shared.0.lock().unwrap();
                let key = object_key(
                    route.kind,
                    route.namespace.as_deref().unwrap_or_default(),
                    route.name.as_deref().unwrap_or_default(),
                );
                s.store(route.kind).objects.get(&key).cloned()
            };
            match found {
                Some(obj) => respond(&mut conn, "200 OK", &obj)?,
                None => respond(&mut conn, "404 Not Found", &status_body(404, "NotFound", "not found"))?,
            }
        } else {
            let (status, body) = list(&mut shared.0.lock().unwrap(), &route, &req);
            respond(&mut conn, status, &body)?;
        }
    }
    let _ = conn.shutdown(Shutdown::Both);
    Ok(())
}

/// A list, or one page of it (`limit`; `continue` is
/// `<list resourceVersion>-<hex of the last key sent>`). Later pages show
/// the objects as they are then, under the first page's resourceVersion:
/// a watch from it replays whatever changed meanwhile.
fn list(s: &mut Inner, route: &Route, req: &Request) -> (&'static str, Vec<u8>) {
    let kind = route.kind;
    let limit: usize = req.query.get("limit").and_then(|v| v.parse().ok()).unwrap_or(0);
    let (list_rv, after) = match req.query.get("continue").filter(|c| !c.is_empty()) {
        None => (s.rv, None),
        Some(token) => {
            let parsed = token.split_once('-').and_then(|(rv, key)| Some((rv.parse::<u64>().ok()?, unhex(key)?)));
            match parsed {
                None => return ("400 Bad Request", status_body(400, "BadRequest", "invalid continue token")),
                Some((rv, _)) if rv < s.oldest_watchable => {
                    s.store(kind).gone_sent += 1;
                    return (
                        "410 Gone",
                        status_body(410, "Expired", "The provided continue parameter is too old; restart the list"),
                    );
                }
                Some((rv, key)) => (rv, Some(key)),
            }
        }
    };
    let store = s.store(kind);
    store.lists += 1;
    let prefix = route.key_prefix();
    let lower = match &after {
        Some(k) => Bound::Excluded(k.clone()),
        None => Bound::Included(prefix.clone()),
    };
    let mut items = store.objects.range((lower, Bound::Unbounded)).take_while(|(k, _)| k.starts_with(&prefix));
    let mut page: Vec<(&String, &Arc<Vec<u8>>)> = Vec::new();
    let mut more = false;
    for item in items.by_ref() {
        if limit > 0 && page.len() == limit {
            more = true;
            break;
        }
        page.push(item);
    }
    let mut metadata = json!({"resourceVersion": list_rv.to_string()});
    if more {
        if let Some((last, _)) = page.last() {
            metadata["continue"] = json!(format!("{list_rv}-{}", hex(last.as_bytes())));
        }
    }
    let mut body = format!(
        r#"{{"apiVersion":"{}","kind":"{}","metadata":{},"items":["#,
        kind.api_version(),
        kind.list_kind(),
        metadata
    )
    .into_bytes();
    for (i, (_, obj)) in page.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(obj);
    }
    body.extend_from_slice(b"]}");
    ("200 OK", body)
}

/// Events written to a stream per write (and per `written` mark).
const WATCH_BATCH: usize = 256;

/// Stream a watch. Returns false if the connection must be cut.
fn watch(
    conn: &mut TcpStream,
    shared: &Arc<(Mutex<Inner>, Condvar)>,
    stop: &AtomicBool,
    route: &Route,
    req: &Request,
    generation: u64,
) -> std::io::Result<bool> {
    let (lock, cond) = &**shared;
    let kind = route.kind;
    let from: u64 = req.query.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
    let bookmarks = req.query.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let timeout = Duration::from_secs(req.query.get("timeoutSeconds").and_then(|v| v.parse().ok()).unwrap_or(300));
    conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")?;
    conn.flush()?;
    let started = Instant::now();
    let mut sent = from;
    let mut last_bookmark = Instant::now();
    {
        let mut s = lock.lock().unwrap();
        s.store(kind).watches += 1;
        if from < s.oldest_watchable {
            s.store(kind).gone_sent += 1;
            let msg = format!("too old resource version: {from} ({})", s.oldest_watchable);
            drop(s);
            chunk(
                conn,
                &json!({"type": "ERROR", "object": {
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": msg, "reason": "Expired", "code": 410}}),
            )?;
            conn.write_all(b"0\r\n\r\n")?;
            return Ok(true);
        }
    }
    loop {
        let (events, cut, rv) = {
            let s = lock.lock().unwrap();
            let pending = |s: &Inner| s.stores[kind.index()].history.last().is_some_and(|c| c.rv > sent);
            let s = if pending(&s) || s.drop_generation != generation || s.forbidden[kind.index()] {
                s
            } else {
                cond.wait_timeout(s, Duration::from_millis(100)).unwrap().0
            };
            let history = &s.stores[kind.index()].history;
            let start = history.partition_point(|c| c.rv <= sent);
            let events: Vec<(u64, &'static str, Arc<Vec<u8>>)> = history[start..]
                .iter()
                .filter(|c| route.matches(&c.key))
                .map(|c| (c.rv, c.type_, c.object.clone()))
                .collect();
            let cut = s.drop_generation != generation || s.forbidden[kind.index()] || stop.load(Ordering::Relaxed);
            (events, cut, s.rv)
        };
        if cut {
            return Ok(false);
        }
        for batch in events.chunks(WATCH_BATCH) {
            let mut out = Vec::new();
            for (_, type_, obj) in batch {
                push_chunk(&mut out, &[br#"{"type":""#, type_.as_bytes(), br#"","object":"#, obj, b"}"]);
            }
            // Marked before the write: once written, the client may act on
            // an event before this thread runs again.
            let at = Instant::now();
            {
                let mut s = lock.lock().unwrap();
                let history = &mut s.store(kind).history;
                for (rv, _, _) in batch {
                    if let Ok(i) = history.binary_search_by_key(rv, |c| c.rv) {
                        history[i].written.get_or_insert(at);
                    }
                }
            }
            conn.write_all(&out)?;
            conn.flush()?;
        }
        sent = rv;
        if bookmarks && last_bookmark.elapsed() > Duration::from_secs(1) {
            chunk(
                conn,
                &json!({"type": "BOOKMARK", "object": {
                "kind": kind.kind(), "apiVersion": kind.api_version(), "metadata": {"resourceVersion": rv.to_string()}}}),
            )?;
            lock.lock().unwrap().bookmarks_sent += 1;
            last_bookmark = Instant::now();
        }
        if started.elapsed() > timeout {
            conn.write_all(b"0\r\n\r\n")?;
            return Ok(true);
        }
    }
}
