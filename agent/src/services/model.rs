//! Services and their endpoints, as sluice needs them: the pure input of
//! the service plan (`plan.rs`). Filled from Kubernetes (`kubernetes.rs`,
//! Service and discovery.k8s.io/v1 EndpointSlice objects) or built by tests.
//! Both families are kept, each in fields of its own (`cluster_ips` and
//! `cluster_ips6` side by side), so the plan of one family
//! (`plan::desired::<Ipv4Addr>` / `<Ipv6Addr>`) reads only its own; SCTP
//! ports are dropped.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    hash::Hash,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// IANA protocol number, as in IP headers and socket calls.
    pub const fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }

    /// "TCP" / "UDP" as Kubernetes spells them; SCTP and others are `None`.
    pub fn from_kubernetes(s: Option<&str>) -> Option<Self> {
        match s.unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            _ => None,
        }
    }
}

/// namespace/name of a Service.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServiceName {
    pub namespace: String,
    pub name: String,
}

impl ServiceName {
    pub fn new(namespace: &str, name: &str) -> Self {
        Self { namespace: namespace.to_string(), name: name.to_string() }
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What kind of Service: only those with a cluster IP are load-balanced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServiceKind {
    /// ClusterIP, NodePort and LoadBalancer Services: all have cluster IPs.
    ClusterIp,
    /// `clusterIP: None`: DNS names the pods, nothing to balance.
    Headless,
    /// `type: ExternalName`: a DNS CNAME, nothing to balance.
    ExternalName,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePort {
    /// `spec.ports[].name` ("" when the Service has a single unnamed port):
    /// matched against the EndpointSlice port of the same name, whose number
    /// is the resolved targetPort (named target ports included).
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
    /// `spec.ports[].nodePort` of a NodePort or LoadBalancer Service.
    #[serde(default)]
    pub node_port: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub name: ServiceName,
    pub kind: ServiceKind,
    /// IPv4 entries of `spec.clusterIPs` (or `spec.clusterIP`).
    pub cluster_ips: Vec<Ipv4Addr>,
    /// IPv6 entries of `spec.clusterIPs` (or `spec.clusterIP`): a
    /// dual-stack Service (`ipFamilyPolicy` PreferDualStack or
    /// RequireDualStack) has one of each family, a SingleStack one only
    /// the family of `ipFamilies[0]`.
    #[serde(default)]
    pub cluster_ips6: Vec<Ipv6Addr>,
    pub ports: Vec<ServicePort>,
    /// `sessionAffinity: ClientIP`: its timeout in seconds
    /// (`sessionAffinityConfig.clientIP.timeoutSeconds`, default 10800).
    pub affinity_timeout_secs: Option<u32>,
    /// `internalTrafficPolicy: Local`: only endpoints on this node.
    pub internal_traffic_local: bool,
    /// IPv4 entries of `spec.externalIPs`.
    #[serde(default)]
    pub external_ips: Vec<Ipv4Addr>,
    /// IPv6 entries of `spec.externalIPs`.
    #[serde(default)]
    pub external_ips6: Vec<Ipv6Addr>,
    /// IPv4 `status.loadBalancer.ingress[].ip` of a LoadBalancer Service
    /// whose `ipMode` is `VIP` (or unset): kube-proxy captures those, and
    /// leaves `Proxy` ones to the load balancer.
    #[serde(default)]
    pub load_balancer_ips: Vec<Ipv4Addr>,
    /// The IPv6 ones of those.
    #[serde(default)]
    pub load_balancer_ips6: Vec<Ipv6Addr>,
    /// `externalTrafficPolicy: Local`.
    #[serde(default)]
    pub external_traffic_local: bool,
    /// `spec.loadBalancerSourceRanges` of a LoadBalancer Service (both
    /// families; each plan reads its own): only clients in one of them
    /// reach its ingress IPs from outside.
    #[serde(default)]
    pub load_balancer_source_ranges: Vec<ipnetwork::IpNetwork>,
    /// `spec.healthCheckNodePort` (set by the API server for a
    /// LoadBalancer Service with `externalTrafficPolicy: Local`).
    #[serde(default)]
    pub health_check_node_port: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlicePort {
    /// `ports[].name`, "" when unnamed.
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
}

/// One endpoint of a slice, with its conditions as kube-proxy reads them:
/// `ready` nil → true; `serving` nil → true; `terminating` nil → false
/// (the API's defaults, as kube-proxy's endpointslicecache reads them).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// The endpoint's first address of its slice's `addressType` (all
    /// addresses of one endpoint are the same pod; kube-proxy uses the
    /// first). A slice holds one family: IPv4 and IPv6 slices of a
    /// dual-stack Service are separate objects.
    pub address: IpAddr,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub node_name: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointSlice {
    /// The slice's own namespace/name.
    pub name: ServiceName,
    /// From the `kubernetes.io/service-name` label (same namespace).
    pub service: ServiceName,
    pub ports: Vec<SlicePort>,
    pub endpoints: Vec<Endpoint>,
}

/// Everything known about Services: a complete view, replaced or edited as
/// watch events arrive.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceView {
    pub services: BTreeMap<ServiceName, Service>,
    /// Keyed by the slice's own namespace/name.
    pub slices: BTreeMap<ServiceName, EndpointSlice>,
}

/// Which Services' plans may have changed since the planner last looked:
/// a Service event touches that Service, a slice event the Service(s) its
/// old and new versions name; a relist touches everything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Touched {
    All,
    Services(BTreeSet<ServiceName>),
}

impl Default for Touched {
    /// Nothing has been planned yet: everything.
    fn default() -> Self {
        Touched::All
    }
}

impl Touched {
    pub fn none() -> Self {
        Touched::Services(BTreeSet::new())
    }

    pub fn add(&mut self, name: ServiceName) {
        if let Touched::Services(s) = self {
            s.insert(name);
        }
    }

    pub fn is_empty(&self) -> bool {
        matches!(self, Touched::Services(s) if s.is_empty())
    }
}

/// An address family of Services: what the plan of one family reads from
/// the model. Implemented by `Ipv4Addr` and `Ipv6Addr`; the IPv4 plan is
/// `Plan<Ipv4Addr>` (the default), the IPv6 one `Plan<Ipv6Addr>`.
pub trait Family: Copy + Ord + Hash + fmt::Debug + fmt::Display + Serialize + 'static {
    /// `0.0.0.0` / `::`: a NodePort frontend's address (every node address).
    const UNSPECIFIED: Self;
    /// `ip` if it is of this family (an IPv4-mapped IPv6 address is not
    /// IPv6: the API server never allocates one, and the socket LB treats
    /// it as the IPv4 address it maps).
    fn of(ip: IpAddr) -> Option<Self>;
    fn cluster_ips(service: &Service) -> &[Self];
    fn external_ips(service: &Service) -> &[Self];
    fn load_balancer_ips(service: &Service) -> &[Self];
}

impl Family for Ipv4Addr {
    const UNSPECIFIED: Self = Ipv4Addr::UNSPECIFIED;
    fn of(ip: IpAddr) -> Option<Self> {
        match ip {
            IpAddr::V4(ip) => Some(ip),
            IpAddr::V6(_) => None,
        }
    }
    fn cluster_ips(service: &Service) -> &[Self] {
        &service.cluster_ips
    }
    fn external_ips(service: &Service) -> &[Self] {
        &service.external_ips
    }
    fn load_balancer_ips(service: &Service) -> &[Self] {
        &service.load_balancer_ips
    }
}

impl Family for Ipv6Addr {
    const UNSPECIFIED: Self = Ipv6Addr::UNSPECIFIED;
    fn of(ip: IpAddr) -> Option<Self> {
        match ip {
            IpAddr::V6(ip) if ip.to_ipv4_mapped().is_none() => Some(ip),
            _ => None,
        }
    }
    fn cluster_ips(service: &Service) -> &[Self] {
        &service.cluster_ips6
    }
    fn external_ips(service: &Service) -> &[Self] {
        &service.external_ips6
    }
    fn load_balancer_ips(service: &Service) -> &[Self] {
        &service.load_balancer_ips6
    }
}
