//! What NetworkPolicy enforcement needs to know about the cluster: pods
//! (namespace, name, labels, IPs, node, container ports), namespaces
//! (labels), NetworkPolicies, the nodes' addresses and the cluster CIDR.
//! The pure input of the compiler (`compile.rs`); filled from Kubernetes
//! by watchers or by tests. Both families: a pod's IPv4 and IPv6 addresses
//! are the same pod to every selector; an ipBlock holds addresses of its
//! own family only.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::IpAddr,
};

use ipnetwork::IpNetwork;
use k8s_openapi::{
    api::{core::v1 as core, networking::v1 as networking},
    apimachinery::pkg::util::intstr::IntOrString,
};

use super::selector::LabelSelector;

pub type Labels = BTreeMap<String, String>;

/// Node name → its addresses (an IPv4 one, and an IPv6 one where the node
/// has it), in the order the node lists them.
pub type NodeAddresses = BTreeMap<String, Vec<IpAddr>>;

/// The label the API server puts on every namespace, holding its name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("object without namespace or name")]
    NoName,
    #[error("selector key {key:?}: {reason}")]
    Selector { key: String, reason: String },
    #[error("protocol {0:?} (TCP, UDP or SCTP)")]
    Protocol(String),
    #[error("port {0}: not 1..=65535")]
    Port(i64),
    #[error("hostIP {0:?}: not an IP address")]
    HostIp(String),
    #[error("endPort {end} below port {start:?}, or without a numeric port")]
    EndPort { start: Option<i32>, end: i32 },
    #[error("ipBlock {cidr:?}: {reason}")]
    IpBlock { cidr: String, reason: String },
    #[error("peer with no selector and no ipBlock, or an ipBlock with a selector")]
    Peer,
    #[error("policyTypes entry {0:?} (Ingress or Egress)")]
    PolicyType(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// IANA protocol number, as in IP headers and `PolicyKey::protocol`.
    pub const fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }

    /// As Kubernetes spells it; absent means TCP.
    pub fn from_kubernetes(s: Option<&str>) -> Result<Self, PolicyError> {
        match s.unwrap_or("TCP") {
            "TCP" => Ok(Protocol::Tcp),
            "UDP" => Ok(Protocol::Udp),
            "SCTP" => Ok(Protocol::Sctp),
            other => Err(PolicyError::Protocol(other.to_string())),
        }
    }
}

/// namespace/name of a pod.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodKey {
    pub namespace: String,
    pub name: String,
}

impl PodKey {
    pub fn new(namespace: &str, name: &str) -> Self {
        PodKey { namespace: namespace.to_string(), name: name.to_string() }
    }
}

impl fmt::Display for PodKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// namespace/name of a NetworkPolicy.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyName {
    pub namespace: String,
    pub name: String,
}

impl PolicyName {
    pub fn new(namespace: &str, name: &str) -> Self {
        PolicyName { namespace: namespace.to_string(), name: name.to_string() }
    }
}

impl fmt::Display for PolicyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A container port: what a named policy port can resolve to, and (with
/// `hostPort`) a frontend on the pod's node (`services::host_ports`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContainerPort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
    /// `hostPort`: the node's port that reaches this one.
    pub host_port: Option<u16>,
    /// `hostIP`: the node address the hostPort is on (`None`: every one;
    /// "0.0.0.0" and "::" say the same).
    pub host_ip: Option<std::net::IpAddr>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    pub key: PodKey,
    pub labels: Labels,
    /// Its addresses of both families (`status.podIPs`); empty until the
    /// pod has one.
    pub ips: Vec<IpAddr>,
    pub node: String,
    /// Host-network pods are never selected by a policy; their address is
    /// their node's.
    pub host_network: bool,
    /// Every container's ports, restartable init containers' too.
    pub ports: Vec<ContainerPort>,
}

impl Pod {
    /// The port `name` resolves to on this pod for `protocol`, if any.
    pub fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.ports.iter().find(|p| p.name.as_deref() == Some(name) && p.protocol == protocol).map(|p| p.port)
    }

    pub fn from_k8s(pod: &core::Pod) -> Result<Self, PolicyError> {
        let (Some(namespace), Some(name)) = (&pod.metadata.namespace, &pod.metadata.name) else {
            return Err(PolicyError::NoName);
        };
        let spec = pod.spec.as_ref();
        let status = pod.status.as_ref();
        let mut ips: Vec<IpAddr> =
            status.and_then(|s| s.pod_ips.as_ref()).into_iter().flatten().filter_map(|ip| ip.ip.parse().ok()).collect();
        if ips.is_empty() {
            ips.extend(status.and_then(|s| s.pod_ip.as_deref()).and_then(|ip| ip.parse::<IpAddr>().ok()));
        }
        // Restartable init containers (sidecars, restartPolicy: Always)
        // serve for the pod's life: their ports are named ports too.
        let containers = spec.into_iter().flat_map(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten().filter(|c| c.restart_policy.as_deref() == Some("Always")))
        });
        let mut ports = Vec::new();
        for c in containers {
            for p in c.ports.iter().flatten() {
                let port = u16::try_from(p.container_port)
                    .ok()
                    .filter(|&p| p != 0)
                    .ok_or(PolicyError::Port(p.container_port.into()))?;
                let host_port = match p.host_port {
                    None | Some(0) => None,
                    Some(h) => Some(u16::try_from(h).map_err(|_| PolicyError::Port(h.into()))?),
                };
                let host_ip = match p.host_ip.as_deref().map(str::trim) {
                    None | Some("") => None,
                    Some(ip) => Some(ip.parse::<std::net::IpAddr>().map_err(|_| PolicyError::HostIp(ip.to_string()))?)
                        .filter(|ip| !ip.is_unspecified()),
                };
                ports.push(ContainerPort {
                    name: p.name.clone(),
                    port,
                    protocol: Protocol::from_kubernetes(p.protocol.as_deref())?,
                    host_port,
                    host_ip,
                });
            }
        }
        Ok(Pod {
            key: PodKey::new(namespace, name),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            ips,
            node: spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
            host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
            ports,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    /// Always holds `kubernetes.io/metadata.name: <name>`.
    pub labels: Labels,
}

impl Namespace {
    pub fn new(name: &str, mut labels: Labels) -> Self {
        // The API server sets it on every namespace (immutable); an object
        // that lacks it (an old or fake API server) gets it here.
        labels.insert(NAMESPACE_NAME_LABEL.to_string(), name.to_string());
        Namespace { name: name.to_string(), labels }
    }

    pub fn from_k8s(ns: &core::Namespace) -> Result<Self, PolicyError> {
        let name = ns.metadata.name.as_deref().ok_or(PolicyError::NoName)?;
        Ok(Namespace::new(name, ns.metadata.labels.clone().unwrap_or_default()))
    }
}

/// An ipBlock: `cidr` minus `except`, of one family (an IPv4 block never
/// holds an IPv6 address, nor the reverse). Built by [`IpBlock::new`], which
/// keeps `except` sorted and deduplicated: every question about it is a few
/// binary searches, never a scan. A policy may name tens of thousands of
/// excepts, and each of them is asked about (`identity.rs` classifies every
/// named prefix): a scan per question made that quadratic (issue 25: 66,000
/// excepts never finished a pass).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpBlock {
    pub cidr: IpNetwork,
    except: Vec<IpNetwork>,
    /// The excepts no other except holds, as sorted, disjoint address
    /// ranges (first, last) within `cidr`'s family: what "is this
    /// excepted" searches (derived from `except`).
    outermost: Vec<(u128, u128)>,
}

impl IpBlock {
    /// `cidr` minus `except`; every prefix normalized (host bits cleared),
    /// the excepts sorted and deduplicated. An except of the other family
    /// excepts nothing (`from_k8s` refuses one).
    pub fn new(cidr: IpNetwork, except: impl IntoIterator<Item = IpNetwork>) -> Self {
        let mut except: Vec<IpNetwork> =
            except.into_iter().filter(|e| e.is_ipv4() == cidr.is_ipv4()).map(normalized).collect();
        except.sort_unstable();
        except.dedup();
        // Sorted by address, the wider first at one address: an except
        // inside another comes after it, and after no disjoint one between
        // (prefixes nest or are disjoint), so comparing with the last kept
        // range is enough.
        let mut by_address: Vec<(u128, u128)> = except.iter().map(|&e| range(e)).collect();
        by_address.sort_unstable_by_key(|&(first, last)| (first, std::cmp::Reverse(last)));
        let mut outermost: Vec<(u128, u128)> = Vec::with_capacity(by_address.len());
        for r in by_address {
            if outermost.last().is_none_or(|&(_, last)| r.0 > last) {
                outermost.push(r);
            }
        }
        IpBlock { cidr: normalized(cidr), except, outermost }
    }

    /// The excepts, sorted.
    pub fn except(&self) -> &[IpNetwork] {
        &self.except
    }

    /// Whether `ip` is in the block (never for the other family).
    pub fn contains(&self, ip: impl Into<IpAddr>) -> bool {
        let ip = ip.into();
        self.cidr.contains(ip) && !self.excepted(host_prefix(ip))
    }

    /// Whether every address of `prefix` is in the block (prefixes are
    /// nested or disjoint, so this is exact for the prefixes policies name).
    pub fn covers_prefix(&self, prefix: IpNetwork) -> bool {
        is_subnet(prefix, self.cidr) && !self.excepted(prefix)
    }

    /// Whether one except holds all of `prefix`: the outermost except
    /// starting at or before it ends at or after it. One binary search.
    fn excepted(&self, prefix: IpNetwork) -> bool {
        let (first, last) = range(prefix);
        let i = self.outermost.partition_point(|&(start, _)| start <= first);
        i > 0 && self.outermost[i - 1].1 >= last
    }
}

/// `net` with its host bits cleared.
fn normalized(net: IpNetwork) -> IpNetwork {
    IpNetwork::new(net.network(), net.prefix()).expect("a valid prefix stays valid")
}

/// An address as a number (IPv4 in the low 32 bits; the caller keeps the
/// families apart).
fn number(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The first and last address of `net`.
fn range(net: IpNetwork) -> (u128, u128) {
    (number(net.network()), number(net.broadcast()))
}

/// `ip`/32 or `ip`/128: the prefix of one address.
pub fn host_prefix(ip: IpAddr) -> IpNetwork {
    let bits = if ip.is_ipv4() { 32 } else { 128 };
    IpNetwork::new(ip, bits).expect("a host prefix is valid")
}

/// Whether `net` is one address (/32, /128).
pub fn is_host_prefix(net: IpNetwork) -> bool {
    net.prefix() == if net.is_ipv4() { 32 } else { 128 }
}

/// `inner` ⊆ `outer` (never across families).
pub fn is_subnet(inner: IpNetwork, outer: IpNetwork) -> bool {
    inner.is_ipv4() == outer.is_ipv4() && outer.prefix() <= inner.prefix() && outer.contains(inner.network())
}

/// Which namespaces a pod peer is looked for in.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NamespaceScope {
    /// No `namespaceSelector`: the policy's own namespace.
    PolicyNamespace,
    Selected(LabelSelector),
}

/// One entry of `from`/`to`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Peer {
    /// `podSelector` and/or `namespaceSelector` (both: ANDed).
    Pods { namespaces: NamespaceScope, pods: LabelSelector },
    /// An ipBlock of either family.
    IpBlock(IpBlock),
}

/// A policy port's port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortRef {
    Number(u16),
    /// Resolved against the destination pod's container ports.
    Name(String),
}

/// One entry of `ports`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortSpec {
    pub protocol: Protocol,
    /// `None`: every port of the protocol.
    pub port: Option<PortRef>,
    /// With a numeric `port`: the range's last port.
    pub end_port: Option<u16>,
}

/// One ingress or egress rule.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    /// Empty: every peer.
    pub peers: Vec<Peer>,
    /// Empty: every protocol and port.
    pub ports: Vec<PortSpec>,
}

/// The directions a policy isolates its pods in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyTypes {
    pub ingress: bool,
    pub egress: bool,
}

/// The API's defaulting of an empty `policyTypes`: always Ingress, and
/// Egress when the policy has egress rules.
pub fn default_policy_types(has_egress_rules: bool) -> PolicyTypes {
    PolicyTypes { ingress: true, egress: has_egress_rules }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkPolicy {
    pub name: PolicyName,
    pub pod_selector: LabelSelector,
    pub types: PolicyTypes,
    pub ingress: Vec<Rule>,
    pub egress: Vec<Rule>,
}

impl NetworkPolicy {
    pub fn from_k8s(policy: &networking::NetworkPolicy) -> Result<Self, PolicyError> {
        let (Some(namespace), Some(name)) = (&policy.metadata.namespace, &policy.metadata.name) else {
            return Err(PolicyError::NoName);
        };
        let spec = policy.spec.clone().unwrap_or_default();
        let pod_selector = match &spec.pod_selector {
            Some(s) => LabelSelector::from_k8s(s)?,
            None => LabelSelector::everything(),
        };
        let ingress = spec
            .ingress
            .iter()
            .flatten()
            .map(|r| rule(r.from.as_deref(), r.ports.as_deref()))
            .collect::<Result<Vec<_>, _>>()?;
        let egress = spec
            .egress
            .iter()
            .flatten()
            .map(|r| rule(r.to.as_deref(), r.ports.as_deref()))
            .collect::<Result<Vec<_>, _>>()?;
        let types = match spec.policy_types.as_deref() {
            None | Some([]) => default_policy_types(!egress.is_empty()),
            Some(types) => {
                let mut t = PolicyTypes { ingress: false, egress: false };
                for ty in types {
                    match ty.as_str() {
                        "Ingress" => t.ingress = true,
                        "Egress" => t.egress = true,
                        other => return Err(PolicyError::PolicyType(other.to_string())),
                    }
                }
                t
            }
        };
        Ok(NetworkPolicy { name: PolicyName::new(namespace, name), pod_selector, types, ingress, egress })
    }
}

/// A policy [`NetworkPolicy::from_k8s`] refused, as enforced: it still
/// isolates what it selects, in the directions it names, and allows
/// nothing (fail closed; the error goes to the log, a metric and `status`).
/// The API server validates policies, so this meets an old or broken API
/// server or a gap here, never a user's typo. A selector that cannot be
/// read selects the whole namespace; `policyTypes` that cannot be read
/// isolate both ways. `None` without namespace/name (nothing to place).
pub fn isolating_stand_in(policy: &networking::NetworkPolicy) -> Option<NetworkPolicy> {
    let (Some(namespace), Some(name)) = (&policy.metadata.namespace, &policy.metadata.name) else {
        return None;
    };
    let spec = policy.spec.clone().unwrap_or_default();
    let pod_selector = spec
        .pod_selector
        .as_ref()
        .map_or(Ok(LabelSelector::everything()), LabelSelector::from_k8s)
        .unwrap_or_else(|_| LabelSelector::everything());
    let has_egress_rules = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
    let types = match spec.policy_types.as_deref() {
        None | Some([]) => default_policy_types(has_egress_rules),
        Some(types) if types.iter().all(|t| t == "Ingress" || t == "Egress") => {
            PolicyTypes { ingress: types.iter().any(|t| t == "Ingress"), egress: types.iter().any(|t| t == "Egress") }
        }
        Some(_) => PolicyTypes { ingress: true, egress: true },
    };
    Some(NetworkPolicy { name: PolicyName::new(namespace, name), pod_selector, types, ingress: vec![], egress: vec![] })
}

fn rule(
    peers: Option<&[networking::NetworkPolicyPeer]>,
    ports: Option<&[networking::NetworkPolicyPort]>,
) -> Result<Rule, PolicyError> {
    Ok(Rule {
        peers: peers.unwrap_or_default().iter().map(peer).collect::<Result<_, _>>()?,
        ports: ports.unwrap_or_default().iter().map(port_spec).collect::<Result<_, _>>()?,
    })
}

fn peer(p: &networking::NetworkPolicyPeer) -> Result<Peer, PolicyError> {
    match (&p.ip_block, &p.pod_selector, &p.namespace_selector) {
        (Some(block), None, None) => ip_block(block),
        (None, None, None) | (Some(_), _, _) => Err(PolicyError::Peer),
        (None, pods, namespaces) => Ok(Peer::Pods {
            namespaces: match namespaces {
                Some(s) => NamespaceScope::Selected(LabelSelector::from_k8s(s)?),
                None => NamespaceScope::PolicyNamespace,
            },
            pods: match pods {
                Some(s) => LabelSelector::from_k8s(s)?,
                None => LabelSelector::everything(),
            },
        }),
    }
}

fn ip_block(block: &networking::IPBlock) -> Result<Peer, PolicyError> {
    let bad = |reason: &str| PolicyError::IpBlock { cidr: block.cidr.clone(), reason: reason.to_string() };
    let parse = |s: &str| -> Result<IpNetwork, PolicyError> {
        let net = s.parse::<IpNetwork>().map_err(|e| bad(&e.to_string()))?;
        Ok(normalized(net))
    };
    let cidr = parse(&block.cidr)?;
    let mut except = Vec::new();
    for e in block.except.iter().flatten() {
        let net = parse(e)?;
        if net.is_ipv4() != cidr.is_ipv4() {
            let (theirs, ours) = if cidr.is_ipv4() { ("IPv6", "IPv4") } else { ("IPv4", "IPv6") };
            return Err(bad(&format!("{theirs} except {net} in an {ours} block")));
        }
        if !is_subnet(net, cidr) {
            return Err(bad(&format!("except {net} is not inside the cidr")));
        }
        except.push(net);
    }
    Ok(Peer::IpBlock(IpBlock::new(cidr, except)))
}

fn port_spec(p: &networking::NetworkPolicyPort) -> Result<PortSpec, PolicyError> {
    let protocol = Protocol::from_kubernetes(p.protocol.as_deref())?;
    let number = |n: i64| u16::try_from(n).ok().filter(|&n| n != 0).ok_or(PolicyError::Port(n));
    let port = match &p.port {
        None => None,
        Some(IntOrString::Int(n)) => Some(PortRef::Number(number((*n).into())?)),
        Some(IntOrString::String(s)) => match s.parse::<i64>() {
            Ok(n) => Some(PortRef::Number(number(n)?)),
            Err(_) => Some(PortRef::Name(s.clone())),
        },
    };
    let end_port = match (p.end_port, &port) {
        (None, _) => None,
        (Some(end), Some(PortRef::Number(start))) if i64::from(end) >= i64::from(*start) => Some(number(end.into())?),
        (Some(end), _) => {
            let start = match &port {
                Some(PortRef::Number(n)) => Some(i32::from(*n)),
                _ => None,
            };
            return Err(PolicyError::EndPort { start, end });
        }
    };
    Ok(PortSpec { protocol, port, end_port })
}

/// Which objects of a [`PolicyModel`] changed since the last look (the
/// watchers record them; the policy loop recompiles only what they touch).
/// `all`: everything may have changed (a start, a relist the loop did not
/// follow): compile from scratch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Touched {
    pub all: bool,
    pub pods: BTreeSet<PodKey>,
    pub namespaces: BTreeSet<String>,
    pub policies: BTreeSet<PolicyName>,
}

impl Touched {
    pub fn everything() -> Self {
        Touched { all: true, ..Touched::default() }
    }

    pub fn is_empty(&self) -> bool {
        !self.all && self.pods.is_empty() && self.namespaces.is_empty() && self.policies.is_empty()
    }
}

/// Everything the compiler reads. Maps are keyed so that iteration (and so
/// identity allocation and rule order) is deterministic.
#[derive(Clone, Debug, Default)]
pub struct PolicyModel {
    pub namespaces: BTreeMap<String, Namespace>,
    pub pods: BTreeMap<PodKey, Pod>,
    pub policies: BTreeMap<PolicyName, NetworkPolicy>,
    /// Node name → its addresses (IPv4, and IPv6 on a dual-stack node).
    pub nodes: NodeAddresses,
    /// Addresses that belong to pods, of both families: one not known as a
    /// pod is `IDENTITY_UNKNOWN_CLUSTER`, never world.
    pub cluster_cidrs: Vec<IpNetwork>,
}

impl PolicyModel {
    pub fn add_namespace(&mut self, ns: Namespace) {
        self.namespaces.insert(ns.name.clone(), ns);
    }

    pub fn add_pod(&mut self, pod: Pod) {
        self.pods.insert(pod.key.clone(), pod);
    }

    /// Adds or replaces (same namespace/name) a policy.
    pub fn add_policy(&mut self, policy: NetworkPolicy) {
        self.policies.insert(policy.name.clone(), policy);
    }

    pub fn remove_policy(&mut self, name: &PolicyName) -> Option<NetworkPolicy> {
        self.policies.remove(name)
    }

    /// Every distinct ipBlock (of either family) any policy names.
    pub fn ip_blocks(&self) -> BTreeSet<IpBlock> {
        self.policies
            .values()
            .flat_map(|p| p.ingress.iter().chain(&p.egress))
            .flat_map(|r| &r.peers)
            .filter_map(|peer| match peer {
                Peer::IpBlock(b) => Some(b.clone()),
                Peer::Pods { .. } => None,
            })
            .collect()
    }

    pub fn in_cluster_cidr(&self, prefix: IpNetwork) -> bool {
        self.cluster_cidrs.iter().any(|&c| is_subnet(prefix, c))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn policy(spec: serde_json::Value) -> Result<NetworkPolicy, PolicyError> {
        let k8s: networking::NetworkPolicy =
            serde_json::from_value(json!({"metadata": {"namespace": "x", "name": "p"}, "spec": spec})).unwrap();
        NetworkPolicy::from_k8s(&k8s)
    }

    #[test]
    fn policy_types_default_as_the_api_does() {
        let t = |spec| policy(spec).unwrap().types;
        assert_eq!(t(json!({"podSelector": {}})), PolicyTypes { ingress: true, egress: false });
        assert_eq!(t(json!({"podSelector": {}, "ingress": [{}]})), PolicyTypes { ingress: true, egress: false });
        assert_eq!(t(json!({"podSelector": {}, "egress": [{}]})), PolicyTypes { ingress: true, egress: true });
        assert_eq!(t(json!({"podSelector": {}, "egress": []})), PolicyTypes { ingress: true, egress: false });
        assert_eq!(
            t(json!({"podSelector": {}, "policyTypes": ["Egress"]})),
            PolicyTypes { ingress: false, egress: true }
        );
        assert_eq!(
            t(json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"], "egress": [{}]})),
            PolicyTypes { ingress: true, egress: true }
        );
    }

    #[test]
    fn peers_and_ports_convert() {
        let p = policy(json!({
            "podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [{
                "from": [
                    {"podSelector": {"matchLabels": {"pod": "b"}}},
                    {"namespaceSelector": {}},
                    {"namespaceSelector": {"matchLabels": {"ns": "y"}}, "podSelector": {}},
                    {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}},
                    {"ipBlock": {"cidr": "fd00::/8"}}
                ],
                "ports": [
                    {"port": 80},
                    {"port": "serve-81-udp", "protocol": "UDP"},
                    {"port": 1000, "endPort": 2000, "protocol": "SCTP"},
                    {"protocol": "UDP"}
                ]
            }]
        }))
        .unwrap();
        let r = &p.ingress[0];
        assert_eq!(
            r.peers[0],
            Peer::Pods { namespaces: NamespaceScope::PolicyNamespace, pods: LabelSelector::labels([("pod", "b")]) }
        );
        assert_eq!(
            r.peers[1],
            Peer::Pods {
                namespaces: NamespaceScope::Selected(LabelSelector::everything()),
                pods: LabelSelector::everything()
            }
        );
        assert!(
            matches!(&r.peers[2], Peer::Pods { namespaces: NamespaceScope::Selected(s), .. } if s.match_labels["ns"] == "y")
        );
        assert_eq!(
            r.peers[3],
            Peer::IpBlock(IpBlock::new("10.0.0.0/8".parse().unwrap(), ["10.1.0.0/16".parse().unwrap()]))
        );
        assert_eq!(r.peers[4], Peer::IpBlock(IpBlock::new("fd00::/8".parse().unwrap(), [])));
        assert_eq!(r.ports[0], PortSpec { protocol: Protocol::Tcp, port: Some(PortRef::Number(80)), end_port: None });
        assert_eq!(
            r.ports[1],
            PortSpec { protocol: Protocol::Udp, port: Some(PortRef::Name("serve-81-udp".into())), end_port: None }
        );
        assert_eq!(
            r.ports[2],
            PortSpec { protocol: Protocol::Sctp, port: Some(PortRef::Number(1000)), end_port: Some(2000) }
        );
        assert_eq!(r.ports[3], PortSpec { protocol: Protocol::Udp, port: None, end_port: None });
    }

    #[test]
    fn bad_policies_are_named_errors() {
        let bad = |spec| policy(spec).unwrap_err();
        assert_eq!(bad(json!({"ingress": [{"ports": [{"protocol": "ICMP"}]}]})), PolicyError::Protocol("ICMP".into()));
        assert_eq!(bad(json!({"ingress": [{"ports": [{"port": 70000}]}]})), PolicyError::Port(70000));
        assert!(matches!(
            bad(json!({"ingress": [{"ports": [{"port": 80, "endPort": 79}]}]})),
            PolicyError::EndPort { .. }
        ));
        assert!(matches!(
            bad(json!({"ingress": [{"ports": [{"port": "http", "endPort": 90}]}]})),
            PolicyError::EndPort { .. }
        ));
        assert!(matches!(
            bad(json!({"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16"]}}]}]})),
            PolicyError::IpBlock { .. }
        ));
        assert!(matches!(
            bad(json!({"egress": [{"to": [{"ipBlock": {"cidr": "nonsense"}}]}]})),
            PolicyError::IpBlock { .. }
        ));
        assert_eq!(bad(json!({"egress": [{"to": [{}]}]})), PolicyError::Peer);
        assert_eq!(bad(json!({"policyTypes": ["Sideways"]})), PolicyError::PolicyType("Sideways".into()));
    }

    #[test]
    fn a_refused_policy_still_isolates_and_allows_nothing() {
        let k8s = |spec: serde_json::Value| -> networking::NetworkPolicy {
            serde_json::from_value(json!({"metadata": {"namespace": "x", "name": "p"}, "spec": spec})).unwrap()
        };
        let bad_port = k8s(json!({
            "podSelector": {"matchLabels": {"pod": "a"}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"ports": [{"port": 0}]}],
            "egress": [{}]
        }));
        assert_eq!(NetworkPolicy::from_k8s(&bad_port), Err(PolicyError::Port(0)));
        let p = isolating_stand_in(&bad_port).unwrap();
        assert_eq!(p.pod_selector, LabelSelector::labels([("pod", "a")]));
        assert_eq!(p.types, PolicyTypes { ingress: true, egress: true });
        assert!(p.ingress.is_empty() && p.egress.is_empty(), "the egress rule that did convert is not kept either");
        let bad_selector = k8s(json!({
            "podSelector": {"matchExpressions": [{"key": "pod", "operator": "Gt", "values": ["1"]}]},
            "policyTypes": ["Sideways"]
        }));
        let p = isolating_stand_in(&bad_selector).unwrap();
        assert_eq!(p.pod_selector, LabelSelector::everything(), "the whole namespace");
        assert_eq!(p.types, PolicyTypes { ingress: true, egress: true });
        let defaulted = k8s(json!({"podSelector": {}, "ingress": [{"ports": [{"protocol": "ICMP"}]}]}));
        assert_eq!(isolating_stand_in(&defaulted).unwrap().types, PolicyTypes { ingress: true, egress: false });
    }

    #[test]
    fn pods_convert_with_sidecar_ports_and_namespaces_get_their_name_label() {
        let pod: core::Pod = serde_json::from_value(json!({
            "metadata": {"namespace": "x", "name": "a", "labels": {"pod": "a"}},
            "spec": {
                "nodeName": "n1",
                "containers": [{"name": "c80", "ports": [{"name": "serve-80-tcp", "containerPort": 80}]}],
                "initContainers": [
                    {"name": "sidecar", "restartPolicy": "Always", "ports": [{"name": "serve-81-udp", "containerPort": 81, "protocol": "UDP"}]},
                    {"name": "setup", "ports": [{"name": "setup", "containerPort": 9}]}
                ]
            },
            "status": {"podIP": "10.244.1.5", "podIPs": [{"ip": "10.244.1.5"}, {"ip": "fd00::5"}]}
        }))
        .unwrap();
        let pod = Pod::from_k8s(&pod).unwrap();
        let both: Vec<IpAddr> = vec!["10.244.1.5".parse().unwrap(), "fd00::5".parse().unwrap()];
        assert_eq!(pod.ips, both, "both families, in status order");
        assert_eq!(pod.node, "n1");
        assert_eq!(pod.named_port("serve-80-tcp", Protocol::Tcp), Some(80));
        assert_eq!(pod.named_port("serve-81-udp", Protocol::Udp), Some(81));
        assert_eq!(pod.named_port("serve-81-udp", Protocol::Tcp), None);
        assert_eq!(pod.named_port("setup", Protocol::Tcp), None, "a plain init container's port is not the pod's");
        let ns: core::Namespace = serde_json::from_value(json!({"metadata": {"name": "y"}})).unwrap();
        assert_eq!(Namespace::from_k8s(&ns).unwrap().labels[NAMESPACE_NAME_LABEL], "y");
    }

    #[test]
    fn ip_block_excepts_nested_unsorted_or_with_host_bits_answer_as_a_scan_would() {
        let nets = |v: &[&str]| -> Vec<IpNetwork> { v.iter().map(|s| s.parse().unwrap()).collect() };
        // Unsorted, a duplicate, one with host bits set, excepts nested in
        // excepts, and many /32s after a wide except (the search must still
        // find the /16 that holds 10.1.200.7).
        let except = nets(&[
            "10.9.0.0/24",
            "10.1.0.0/16",
            "10.1.2.0/24",
            "10.1.2.3/32",
            "10.9.0.0/24",
            "10.5.7.9/16",
            "10.1.0.1/32",
            "10.1.255.255/32",
            "10.2.0.0/32",
        ]);
        let b = IpBlock::new("10.0.0.0/8".parse().unwrap(), except.clone());
        assert_eq!(b.except().len(), 8, "sorted and deduplicated: {:?}", b.except());
        assert!(b.except().windows(2).all(|w| w[0] < w[1]));
        let scan_contains = |ip: IpAddr| {
            "10.0.0.0/8".parse::<IpNetwork>().unwrap().contains(ip) && !except.iter().any(|e| e.contains(ip))
        };
        for ip in [
            "10.1.200.7",
            "10.1.2.3",
            "10.1.0.0",
            "10.1.255.255",
            "10.2.0.0",
            "10.2.0.1",
            "10.5.0.0",
            "10.5.255.255",
            "10.6.0.0",
            "10.9.0.255",
            "10.9.1.0",
            "10.0.0.0",
            "10.255.255.255",
            "11.0.0.0",
            "9.255.255.255",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(b.contains(ip), scan_contains(ip), "{ip}");
        }
        for (prefix, covered) in [
            ("10.1.2.0/24", false),
            ("10.1.0.0/16", false),
            ("10.0.0.0/15", true),
            ("10.5.0.0/16", false),
            ("10.5.0.0/15", true),
            ("10.9.0.0/23", true),
            ("10.9.0.128/25", false),
            ("10.2.0.0/32", false),
            ("10.2.0.0/31", true),
            ("10.0.0.0/8", true),
            ("0.0.0.0/0", false),
        ] {
            assert_eq!(b.covers_prefix(prefix.parse().unwrap()), covered, "{prefix}");
        }
        assert!(IpBlock::new("0.0.0.0/0".parse().unwrap(), []).contains(std::net::Ipv4Addr::new(1, 2, 3, 4)));
        assert_eq!(IpBlock::new("10.1.2.3/8".parse().unwrap(), []).cidr, "10.0.0.0/8".parse().unwrap());
    }

    #[test]
    fn ip_block_containment() {
        let b = IpBlock::new("10.0.0.0/8".parse().unwrap(), ["10.1.0.0/16".parse().unwrap()]);
        assert!(b.contains(std::net::Ipv4Addr::new(10, 2, 0, 1)));
        assert!(!b.contains(std::net::Ipv4Addr::new(10, 1, 0, 1)));
        assert!(!b.contains(std::net::Ipv4Addr::new(11, 0, 0, 1)));
        assert!(b.covers_prefix("10.2.0.0/16".parse().unwrap()));
        assert!(!b.covers_prefix("10.1.2.0/24".parse().unwrap()));
        assert!(!b.covers_prefix("0.0.0.0/4".parse().unwrap()));
    }

    #[test]
    fn ipv6_blocks_hold_ipv6_addresses_only_and_ipv4_blocks_ipv4_only() {
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        let v6 = IpBlock::new("fd00:10::/32".parse().unwrap(), ["fd00:10:0:7::/64".parse().unwrap()]);
        assert!(v6.contains(ip("fd00:10::1")));
        assert!(!v6.contains(ip("fd00:10:0:7::1")), "excepted");
        assert!(!v6.contains(ip("fd00:11::1")));
        assert!(v6.covers_prefix("fd00:10:0:8::/64".parse().unwrap()));
        assert!(!v6.covers_prefix("fd00:10:0:7::/80".parse().unwrap()));
        // The widest blocks of each family never reach into the other.
        let all4 = IpBlock::new("0.0.0.0/0".parse().unwrap(), []);
        let all6 = IpBlock::new("::/0".parse().unwrap(), []);
        for a in ["10.244.1.5", "0.0.0.0", "255.255.255.255"] {
            assert!(all4.contains(ip(a)) && !all6.contains(ip(a)), "{a}");
        }
        // IPv4 numbers inside ::/96 (and mapped ones) are still IPv6.
        for a in ["::a0f4:105", "::ffff:10.244.1.5", "fd00::5"] {
            assert!(all6.contains(ip(a)) && !all4.contains(ip(a)), "{a}");
        }
        assert!(!all4.covers_prefix("::/96".parse().unwrap()));
        assert!(!all6.covers_prefix("10.0.0.0/8".parse().unwrap()));
        // An except of the other family is refused by name.
        let bad = policy(json!({"egress": [{"to": [{"ipBlock": {"cidr": "fd00::/8", "except": ["10.0.0.0/8"]}}]}]}));
        assert!(matches!(&bad, Err(PolicyError::IpBlock { reason, .. }) if reason.contains("IPv4 except")), "{bad:?}");
        let bad = policy(json!({"egress": [{"to": [{"ipBlock": {"cidr": "fd00::/8", "except": ["fe00::/16"]}}]}]}));
        assert!(matches!(bad, Err(PolicyError::IpBlock { .. })), "{bad:?}");
        let p = policy(json!({"egress": [{"to": [{"ipBlock": {"cidr": "fd00::1/8", "except": ["fd00:1::/32"]}}]}]}));
        assert_eq!(
            p.unwrap().egress[0].peers[0],
            Peer::IpBlock(IpBlock::new("fd00::/8".parse().unwrap(), ["fd00:1::/32".parse().unwrap()]))
        );
    }
}
