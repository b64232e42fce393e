//! From the Service view to what the socket load balancer must hold: one
//! entry per frontend (cluster IP × port × protocol) with its backends.
//! kube-proxy's semantics (its `CategorizeEndpoints`), pure:
//! - ready endpoints; none ready → serving-and-terminating ones (fallback);
//! - `internalTrafficPolicy: Local`: the same choice among this node's
//!   endpoints only; endpoints elsewhere but none here → unreachable
//!   (kube-proxy DROPs; the socket LB fails the connect at once);
//! - no usable endpoint at all → refused (kube-proxy's REJECT);
//! - a Service port's backends come from the EndpointSlice port of the same
//!   name and protocol (its number is the resolved, maybe named, targetPort);
//! - headless and ExternalName Services are not balanced; topology hints
//!   are not read.
//!
//! Besides the cluster IPs, each Service's external frontends: its
//! NodePorts (one wildcard entry per port, `Frontend::node_port`: every
//! node address), `externalIPs` and LoadBalancer ingress IPs. Clients of
//! the socket LB are pods and host processes, in-cluster clients for which
//! kube-proxy short-circuits `externalTrafficPolicy: Local` to the
//! Service's cluster-wide endpoints (its `KUBE-EXT-*` chain jumps pod and
//! local-host sources to `KUBE-SVC-*`), and `internalTrafficPolicy` is
//! about cluster IPs only: external frontends get every usable endpoint
//! (ready, else serving-and-terminating), and none is a refusal. An
//! external address that is also a cluster IP (or another Service's
//! external address) on the same port keeps the first: cluster IPs before
//! external ones, then Services in name order.
//!
//! One plan per address family, each from the model's fields of its family
//! (`Family`): `Plan` (= `Plan<Ipv4Addr>`) for the IPv4 maps, exactly as
//! before dual-stack, and `Plan<Ipv6Addr>` for the IPv6 ones. As kube-proxy
//! runs one proxier per family and each skips a Service without a cluster
//! IP of its family, a Service is planned in a family only if it has a
//! cluster IP of it (a SingleStack IPv4 Service has no IPv6 NodePort); its
//! backends come from the slices of that family (`addressType`).
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use serde::Serialize;

use sluice_common::services::{service_port_id, FrontendKind};

use super::model::{
    Endpoint, EndpointSlice, Family, Protocol, Service, ServiceKind, ServiceName, ServiceView, Touched,
};

/// A Service's address as clients name it. A NodePort's `ip` is
/// `0.0.0.0` (`::`): every node address (`Frontend::node_port`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Frontend<A = Ipv4Addr> {
    pub ip: A,
    pub port: u16,
    pub protocol: Protocol,
}

impl<A: Family> Frontend<A> {
    /// A NodePort: `port` on every node address.
    pub const fn node_port(port: u16, protocol: Protocol) -> Self {
        Frontend { ip: A::UNSPECIFIED, port, protocol }
    }

    pub fn is_node_port(&self) -> bool {
        self.ip == A::UNSPECIFIED
    }
}

/// A backend pod's address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct BackendAddr<A = Ipv4Addr> {
    pub ip: A,
    pub port: u16,
}

/// What happens to a connection to a frontend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FrontendPlan<A = Ipv4Addr> {
    pub service: ServiceName,
    /// Sorted, no duplicates (one pod listed by two slices counts once).
    pub backends: Vec<BackendAddr<A>>,
    /// 0: no session affinity.
    pub affinity_timeout_secs: u32,
    /// Endpoints exist, none on this node, policy Local.
    pub no_local_endpoints: bool,
    /// An external frontend of an `externalTrafficPolicy: Local` Service:
    /// clients from outside (the uplink) get this node's backends only,
    /// the first `local_backends` of `backends`.
    pub external_local: bool,
    pub local_backends: usize,
    /// A LoadBalancer ingress IP's `loadBalancerSourceRanges` of this
    /// family (address, prefix length): clients from outside must be in
    /// one. Empty: everyone, and for every other kind of frontend (as
    /// kube-proxy's iptables mode, whose `KUBE-PROXY-FIREWALL` rules match
    /// the ingress IPs only, never the NodePort).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_ranges: Vec<(A, u8)>,
    /// ClusterIP, NodePort, ExternalIP or LoadBalancer (ingress IP).
    #[serde(serialize_with = "kind_name")]
    pub kind: FrontendKind,
    /// The Service port this frontend belongs to
    /// (`sluice_common::services::service_port_id`): the same on all its
    /// frontends, whatever its endpoints; the uplink's session affinity
    /// is kept per Service port by it.
    #[serde(skip)]
    pub service_port_id: u64,
}

fn kind_name<S: serde::Serializer>(kind: &FrontendKind, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(kind.name())
}

pub type Plan<A = Ipv4Addr> = BTreeMap<Frontend<A>, FrontendPlan<A>>;

/// Every frontend of family `A` of every balanced Service in `view`, seen
/// from `node`.
pub fn desired<A: Family>(view: &ServiceView, node: &str) -> Plan<A> {
    desired_and_contested(view, node).0
}

/// `desired`, and the frontends more than one Service claims (all but the
/// first claim lost).
fn desired_and_contested<A: Family>(view: &ServiceView, node: &str) -> (Plan<A>, BTreeSet<Frontend<A>>) {
    let mut contested = BTreeSet::new();
    let mut slices: BTreeMap<&ServiceName, Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in view.slices.values() {
        slices.entry(&slice.service).or_default().push(slice);
    }
    let mut plan = Plan::new();
    // Cluster IPs of every Service first: an external address never
    // shadows one (`plan_service` keeps what is there).
    for external in [false, true] {
        for service in view.services.values() {
            let its_slices = slices.get(&service.name).map(Vec::as_slice).unwrap_or(&[]);
            let mut fresh = Plan::new();
            plan_service(&mut fresh, service, its_slices, node);
            for (f, p) in fresh {
                if (p.kind != FrontendKind::ClusterIp) == external {
                    match plan.entry(f) {
                        std::collections::btree_map::Entry::Vacant(v) => {
                            v.insert(p);
                        }
                        std::collections::btree_map::Entry::Occupied(_) => {
                            contested.insert(f);
                        }
                    }
                }
            }
        }
    }
    (plan, contested)
}

/// The frontends of family `A` of one Service (nothing for headless or
/// ExternalName, nor without a cluster IP of `A`): its cluster IPs,
/// NodePorts, external IPs and LoadBalancer ingress IPs. A frontend already
/// in `plan` is kept (the first claim wins).
pub fn plan_service<A: Family>(plan: &mut Plan<A>, service: &Service, slices: &[&EndpointSlice], node: &str) {
    if service.kind != ServiceKind::ClusterIp || A::cluster_ips(service).is_empty() {
        return;
    }
    for port in &service.ports {
        let candidates: BTreeMap<BackendAddr<A>, &Endpoint> = slices
            .iter()
            .flat_map(|slice| {
                let target =
                    slice.ports.iter().find(|p| p.name == port.name && p.protocol == port.protocol).map(|p| p.port);
                target.into_iter().flat_map(move |t| {
                    slice
                        .endpoints
                        .iter()
                        .filter_map(move |e| Some((BackendAddr { ip: A::of(e.address)?, port: t }, e)))
                })
            })
            .collect();
        let source_ranges: Vec<(A, u8)> = service
            .load_balancer_source_ranges
            .iter()
            .filter_map(|net| Some((A::of(net.network())?, net.prefix())))
            .collect();
        // As kube-proxy names a Service port: namespace, name, port name
        // and protocol (not its number).
        let id = service_port_id(
            service.name.namespace.as_bytes(),
            service.name.name.as_bytes(),
            port.name.as_bytes(),
            port.protocol.number(),
        );
        let entry = |kind, (backends, no_local_endpoints): (Vec<BackendAddr<A>>, bool), local_backends| FrontendPlan {
            service: service.name.clone(),
            backends,
            affinity_timeout_secs: service.affinity_timeout_secs.unwrap_or(0),
            no_local_endpoints,
            external_local: kind != FrontendKind::ClusterIp && service.external_traffic_local,
            local_backends,
            source_ranges: if kind == FrontendKind::LoadBalancer { source_ranges.clone() } else { Vec::new() },
            kind,
            service_port_id: id,
        };
        let internal = choose(&candidates, service.internal_traffic_local, node);
        for ip in A::cluster_ips(service) {
            let f = Frontend { ip: *ip, port: port.port, protocol: port.protocol };
            plan.entry(f).or_insert_with(|| entry(FrontendKind::ClusterIp, internal.clone(), 0));
        }
        // In-cluster clients of an external frontend: every endpoint.
        // With externalTrafficPolicy: Local, this node's (ready, else
        // serving-terminating) come first: the uplink's clients from
        // outside take those alone.
        let (mut external, mut local_backends) = (choose(&candidates, false, node), 0);
        if service.external_traffic_local {
            let (local, _) = choose(&candidates, true, node);
            local_backends = local.len();
            let rest = external.0.iter().filter(|b| !local.contains(b)).copied().collect::<Vec<_>>();
            external.0 = local.into_iter().chain(rest).collect();
        }
        let mut externals: Vec<(Frontend<A>, FrontendKind)> = Vec::new();
        if let Some(node_port) = port.node_port {
            externals.push((Frontend::node_port(node_port, port.protocol), FrontendKind::NodePort));
        }
        for ip in A::external_ips(service) {
            externals.push((Frontend { ip: *ip, port: port.port, protocol: port.protocol }, FrontendKind::ExternalIp));
        }
        for ip in A::load_balancer_ips(service) {
            externals
                .push((Frontend { ip: *ip, port: port.port, protocol: port.protocol }, FrontendKind::LoadBalancer));
        }
        for (f, kind) in externals {
            plan.entry(f).or_insert_with(|| entry(kind, external.clone(), local_backends));
        }
    }
}

/// Ready ones, else serving-and-terminating ones; with `local`, among this
/// node's only. Returns the backends and "endpoints exist but none here".
fn choose<A: Family>(
    candidates: &BTreeMap<BackendAddr<A>, &Endpoint>,
    local: bool,
    node: &str,
) -> (Vec<BackendAddr<A>>, bool) {
    let usable = |only_here: bool| -> Vec<BackendAddr<A>> {
        let here = |e: &Endpoint| !only_here || e.node_name.as_deref() == Some(node);
        let ready: Vec<_> = candidates.iter().filter(|(_, e)| here(e) && e.ready).map(|(b, _)| *b).collect();
        if !ready.is_empty() {
            return ready;
        }
        candidates.iter().filter(|(_, e)| here(e) && e.serving && e.terminating).map(|(b, _)| *b).collect()
    };
    if !local {
        return (usable(false), false);
    }
    let backends = usable(true);
    let anywhere = backends.is_empty() && !usable(false).is_empty();
    (backends, anywhere)
}

/// More touched Services than this in one go are replanned whole (each
/// touched Service costs a scan of the slices).
const REPLAN_ALL_ABOVE: usize = 64;

/// The plan, kept up to date one touched Service at a time: a change to one
/// of 10,000 Services replans that one, not all.
#[derive(Debug)]
pub struct Planner<A = Ipv4Addr> {
    plan: Plan<A>,
    by_service: BTreeMap<ServiceName, Vec<Frontend<A>>>,
    /// Frontends two Services claim (an external IP on another's address
    /// and port): a touched Service that has one, or would claim one, is
    /// not replanned alone, since the claim that wins depends on all.
    contested: BTreeSet<Frontend<A>>,
}

impl<A> Default for Planner<A> {
    fn default() -> Self {
        Planner { plan: Plan::new(), by_service: BTreeMap::new(), contested: BTreeSet::new() }
    }
}

impl<A: Family> Planner<A> {
    pub fn plan(&self) -> &Plan<A> {
        &self.plan
    }

    /// Balanced Services (with at least one frontend).
    pub fn services(&self) -> usize {
        self.by_service.len()
    }

    /// Bring the plan up to date with `view`. Returns the frontends whose
    /// entries may have changed, or `None` when everything was replanned.
    pub fn update(&mut self, view: &ServiceView, touched: Touched, node: &str) -> Option<BTreeSet<Frontend<A>>> {
        let names = match touched {
            Touched::Services(names) if names.len() <= REPLAN_ALL_ABOVE => names,
            _ => return self.replan_all(view, node),
        };
        let mut fresh_plans = Vec::new();
        let mut claimed_now = BTreeSet::new();
        for name in &names {
            let mut fresh = Plan::new();
            if let Some(service) = view.services.get(name) {
                let slices: Vec<&EndpointSlice> = view.slices.values().filter(|s| &s.service == name).collect();
                plan_service(&mut fresh, service, &slices, node);
            }
            let old = self.by_service.get(name).map(Vec::as_slice).unwrap_or(&[]);
            let claims_anothers = fresh.keys().any(|f| self.plan.get(f).is_some_and(|p| &p.service != name));
            let claimed_twice = fresh.keys().any(|f| !claimed_now.insert(*f));
            if claims_anothers || claimed_twice || fresh.keys().chain(old).any(|f| self.contested.contains(f)) {
                return self.replan_all(view, node);
            }
            fresh_plans.push((name.clone(), fresh));
        }
        let mut out = BTreeSet::new();
        for (name, fresh) in fresh_plans {
            for f in self.by_service.remove(&name).unwrap_or_default() {
                self.plan.remove(&f);
                out.insert(f);
            }
            if !fresh.is_empty() {
                self.by_service.insert(name, fresh.keys().copied().collect());
            }
            out.extend(fresh.keys().copied());
            self.plan.extend(fresh);
        }
        Some(out)
    }

    fn replan_all(&mut self, view: &ServiceView, node: &str) -> Option<BTreeSet<Frontend<A>>> {
        (self.plan, self.contested) = desired_and_contested(view, node);
        self.by_service.clear();
        for (f, p) in &self.plan {
            self.by_service.entry(p.service.clone()).or_default().push(*f);
        }
        None
    }
}

/// Frontends whose plan differs between two plans (added, changed or
/// removed): what a reconcile pass must touch.
pub fn changed<'a, A: Family>(old: &'a Plan<A>, new: &'a Plan<A>) -> BTreeSet<&'a Frontend<A>> {
    let mut out: BTreeSet<&Frontend<A>> = old.keys().filter(|k| !new.contains_key(*k)).collect();
    out.extend(new.iter().filter(|(k, v)| old.get(*k) != Some(*v)).map(|(k, _)| k));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::model::{ServicePort, SlicePort};

    const NODE: &str = "node-a";

    /// The IPv4 plan: every test below written before dual-stack reads it
    /// unchanged (the IPv4 maps hold what they held).
    fn desired(view: &ServiceView, node: &str) -> Plan {
        super::desired(view, node)
    }

    fn svc(name: &str, ip: &str, ports: &[(&str, u16, Protocol)]) -> Service {
        Service {
            name: ServiceName::new("default", name),
            kind: ServiceKind::ClusterIp,
            cluster_ips: vec![ip.parse().unwrap()],
            ports: ports
                .iter()
                .map(|(n, p, pr)| ServicePort { name: n.to_string(), port: *p, protocol: *pr, node_port: None })
                .collect(),
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
        }
    }

    /// (ip, ready, serving, terminating, node)
    type Ep<'a> = (&'a str, bool, bool, bool, &'a str);

    fn slice(name: &str, service: &str, ports: &[(&str, u16, Protocol)], eps: &[Ep]) -> EndpointSlice {
        EndpointSlice {
            name: ServiceName::new("default", name),
            service: ServiceName::new("default", service),
            ports: ports.iter().map(|(n, p, pr)| SlicePort { name: n.to_string(), port: *p, protocol: *pr }).collect(),
            endpoints: eps
                .iter()
                .map(|(ip, r, s, t, n)| Endpoint {
                    address: ip.parse().unwrap(),
                    ready: *r,
                    serving: *s,
                    terminating: *t,
                    node_name: Some(n.to_string()),
                })
                .collect(),
        }
    }

    fn view(services: Vec<Service>, slices: Vec<EndpointSlice>) -> ServiceView {
        ServiceView {
            services: services.into_iter().map(|s| (s.name.clone(), s)).collect(),
            slices: slices.into_iter().map(|s| (s.name.clone(), s)).collect(),
        }
    }

    fn fe(ip: &str, port: u16, protocol: Protocol) -> Frontend {
        Frontend { ip: ip.parse().unwrap(), port, protocol }
    }

    fn be(ip: &str, port: u16) -> BackendAddr {
        BackendAddr { ip: ip.parse().unwrap(), port }
    }

    #[test]
    fn each_port_takes_backends_from_the_slice_port_of_its_name() {
        let v = view(
            vec![svc("web", "10.96.0.10", &[("http", 80, Protocol::Tcp), ("dns", 53, Protocol::Udp)])],
            vec![slice(
                "web-1",
                "web",
                &[("http", 8080, Protocol::Tcp), ("dns", 5353, Protocol::Udp)],
                &[("10.244.1.5", true, true, false, "node-a"), ("10.244.2.5", true, true, false, "node-b")],
            )],
        );
        let p = desired(&v, NODE);
        assert_eq!(p.len(), 2);
        assert_eq!(
            p[&fe("10.96.0.10", 80, Protocol::Tcp)].backends,
            vec![be("10.244.1.5", 8080), be("10.244.2.5", 8080)]
        );
        assert_eq!(
            p[&fe("10.96.0.10", 53, Protocol::Udp)].backends,
            vec![be("10.244.1.5", 5353), be("10.244.2.5", 5353)]
        );
    }

    #[test]
    fn a_port_name_or_protocol_that_matches_no_slice_port_has_no_backends() {
        let v = view(
            vec![svc("web", "10.96.0.10", &[("http", 80, Protocol::Tcp)])],
            vec![slice("web-1", "web", &[("http", 8080, Protocol::Udp)], &[("10.244.1.5", true, true, false, "a")])],
        );
        let p = desired(&v, NODE);
        assert!(p[&fe("10.96.0.10", 80, Protocol::Tcp)].backends.is_empty());
    }

    #[test]
    fn ready_first_then_serving_terminating_as_fallback() {
        let ports = [("", 80, Protocol::Tcp)];
        let mixed = view(
            vec![svc("s", "10.96.0.1", &ports)],
            vec![slice(
                "s-1",
                "s",
                &[("", 8080, Protocol::Tcp)],
                &[
                    ("10.244.1.1", true, true, false, "a"),
                    ("10.244.1.2", false, true, true, "a"),
                    ("10.244.1.3", false, false, false, "a"),
                ],
            )],
        );
        assert_eq!(desired(&mixed, NODE)[&fe("10.96.0.1", 80, Protocol::Tcp)].backends, vec![be("10.244.1.1", 8080)]);
        let terminating = view(
            vec![svc("s", "10.96.0.1", &ports)],
            vec![slice(
                "s-1",
                "s",
                &[("", 8080, Protocol::Tcp)],
                &[
                    ("10.244.1.2", false, true, true, "a"),
                    ("10.244.1.3", false, false, true, "a"),
                    ("10.244.1.4", false, false, false, "a"),
                ],
            )],
        );
        assert_eq!(
            desired(&terminating, NODE)[&fe("10.96.0.1", 80, Protocol::Tcp)].backends,
            vec![be("10.244.1.2", 8080)],
            "only serving and terminating endpoints are the fallback"
        );
    }

    #[test]
    fn internal_traffic_local_uses_this_nodes_endpoints_or_none() {
        let mut s = svc("s", "10.96.0.1", &[("", 80, Protocol::Tcp)]);
        s.internal_traffic_local = true;
        let eps = [("10.244.1.1", true, true, false, "node-a"), ("10.244.2.1", true, true, false, "node-b")];
        let v = view(vec![s.clone()], vec![slice("s-1", "s", &[("", 8080, Protocol::Tcp)], &eps)]);
        let p = &desired(&v, NODE)[&fe("10.96.0.1", 80, Protocol::Tcp)];
        assert_eq!(p.backends, vec![be("10.244.1.1", 8080)]);
        assert!(!p.no_local_endpoints);
        let p = &desired(&v, "node-c")[&fe("10.96.0.1", 80, Protocol::Tcp)];
        assert!(p.backends.is_empty());
        assert!(p.no_local_endpoints, "endpoints elsewhere, none here: unreachable, not refused");
        // A local terminating endpoint is used when no local one is ready,
        // even though other nodes have ready ones (kube-proxy does this).
        let eps = [("10.244.1.9", false, true, true, "node-a"), ("10.244.2.1", true, true, false, "node-b")];
        let v = view(vec![s], vec![slice("s-1", "s", &[("", 8080, Protocol::Tcp)], &eps)]);
        assert_eq!(desired(&v, NODE)[&fe("10.96.0.1", 80, Protocol::Tcp)].backends, vec![be("10.244.1.9", 8080)]);
    }

    #[test]
    fn no_endpoints_is_an_empty_frontend_not_a_missing_one() {
        let v = view(vec![svc("s", "10.96.0.1", &[("", 80, Protocol::Tcp)])], vec![]);
        let p = &desired(&v, NODE)[&fe("10.96.0.1", 80, Protocol::Tcp)];
        assert!(p.backends.is_empty());
        assert!(!p.no_local_endpoints);
    }

    #[test]
    fn headless_and_external_name_are_not_balanced() {
        let mut h = svc("h", "10.96.0.1", &[("", 80, Protocol::Tcp)]);
        h.kind = ServiceKind::Headless;
        let mut e = svc("e", "10.96.0.2", &[("", 80, Protocol::Tcp)]);
        e.kind = ServiceKind::ExternalName;
        assert!(desired(&view(vec![h, e], vec![]), NODE).is_empty());
    }

    #[test]
    fn slices_of_one_service_merge_and_duplicates_count_once() {
        let v = view(
            vec![svc("s", "10.96.0.1", &[("", 80, Protocol::Tcp)])],
            vec![
                slice("s-1", "s", &[("", 8080, Protocol::Tcp)], &[("10.244.1.1", true, true, false, "a")]),
                slice(
                    "s-2",
                    "s",
                    &[("", 8080, Protocol::Tcp)],
                    &[("10.244.1.1", true, true, false, "a"), ("10.244.1.2", true, true, false, "a")],
                ),
                slice("other-1", "other", &[("", 8080, Protocol::Tcp)], &[("10.244.9.9", true, true, false, "a")]),
            ],
        );
        assert_eq!(
            desired(&v, NODE)[&fe("10.96.0.1", 80, Protocol::Tcp)].backends,
            vec![be("10.244.1.1", 8080), be("10.244.1.2", 8080)]
        );
    }

    #[test]
    fn the_planner_replans_only_touched_services_and_matches_a_full_plan() {
        let eps_a = [("10.244.1.1", true, true, false, "node-a")];
        let eps_b = [("10.244.2.1", true, true, false, "node-b")];
        let mut v = view(
            vec![svc("a", "10.96.0.1", &[("", 80, Protocol::Tcp)]), svc("b", "10.96.0.2", &[("", 80, Protocol::Tcp)])],
            vec![
                slice("a-1", "a", &[("", 8080, Protocol::Tcp)], &eps_a),
                slice("b-1", "b", &[("", 8080, Protocol::Tcp)], &eps_b),
            ],
        );
        let mut p = Planner::default();
        assert_eq!(p.update(&v, Touched::All, NODE), None);
        assert_eq!(p.plan(), &desired(&v, NODE));
        assert_eq!(p.services(), 2);
        // b's slice changes and a is deleted: only their frontends are named.
        v.slices.insert(
            ServiceName::new("default", "b-1"),
            slice("b-1", "b", &[("", 8080, Protocol::Tcp)], &[eps_b[0], eps_a[0]]),
        );
        v.services.remove(&ServiceName::new("default", "a"));
        let mut t = Touched::none();
        t.add(ServiceName::new("default", "b"));
        t.add(ServiceName::new("default", "a"));
        let changed = p.update(&v, t, NODE).unwrap();
        assert_eq!(
            changed.into_iter().collect::<Vec<_>>(),
            vec![fe("10.96.0.1", 80, Protocol::Tcp), fe("10.96.0.2", 80, Protocol::Tcp)]
        );
        assert_eq!(p.plan(), &desired(&v, NODE), "incremental equals full");
        assert_eq!(p.services(), 1);
        // Touching an untouched-in-fact Service changes nothing in the plan.
        let mut t = Touched::none();
        t.add(ServiceName::new("default", "b"));
        p.update(&v, t, NODE);
        assert_eq!(p.plan(), &desired(&v, NODE));
    }

    fn external(mut s: Service, node_port: u16, external_ips: &[&str], lb: &[&str]) -> Service {
        for p in &mut s.ports {
            p.node_port = Some(node_port);
        }
        s.external_ips = external_ips.iter().map(|ip| ip.parse().unwrap()).collect();
        s.load_balancer_ips = lb.iter().map(|ip| ip.parse().unwrap()).collect();
        s
    }

    #[test]
    fn node_ports_external_ips_and_ingress_ips_are_frontends_of_their_kind() {
        let s = external(
            svc("web", "10.96.0.10", &[("http", 80, Protocol::Tcp), ("dns", 53, Protocol::Udp)]),
            30080,
            &["192.0.2.10"],
            &["198.51.100.7"],
        );
        let eps = [("10.244.1.5", true, true, false, "node-a"), ("10.244.2.5", true, true, false, "node-b")];
        let v = view(
            vec![s],
            vec![slice("web-1", "web", &[("http", 8080, Protocol::Tcp), ("dns", 5353, Protocol::Udp)], &eps)],
        );
        let p = desired(&v, NODE);
        let kinds: Vec<(Frontend, FrontendKind)> = p.iter().map(|(f, e)| (*f, e.kind)).collect();
        assert_eq!(
            kinds,
            vec![
                (Frontend::node_port(30080, Protocol::Tcp), FrontendKind::NodePort),
                (Frontend::node_port(30080, Protocol::Udp), FrontendKind::NodePort),
                (fe("10.96.0.10", 53, Protocol::Udp), FrontendKind::ClusterIp),
                (fe("10.96.0.10", 80, Protocol::Tcp), FrontendKind::ClusterIp),
                (fe("192.0.2.10", 53, Protocol::Udp), FrontendKind::ExternalIp),
                (fe("192.0.2.10", 80, Protocol::Tcp), FrontendKind::ExternalIp),
                (fe("198.51.100.7", 53, Protocol::Udp), FrontendKind::LoadBalancer),
                (fe("198.51.100.7", 80, Protocol::Tcp), FrontendKind::LoadBalancer),
            ]
        );
        assert!(Frontend::<Ipv4Addr>::node_port(30080, Protocol::Tcp).is_node_port());
        for (f, e) in &p {
            let port = if f.protocol == Protocol::Tcp { 8080 } else { 5353 };
            assert_eq!(e.backends, vec![be("10.244.1.5", port), be("10.244.2.5", port)], "{f:?}");
        }
    }

    #[test]
    fn source_ranges_guard_the_ingress_ips_only_in_their_family() {
        let mut s = external(
            svc("web", "10.96.0.10", &[("http", 80, Protocol::Tcp)]),
            30080,
            &["192.0.2.10"],
            &["198.51.100.7"],
        );
        s.load_balancer_source_ranges = vec!["203.0.113.0/24".parse().unwrap(), "2001:db8::/64".parse().unwrap()];
        let v = view(vec![s], vec![]);
        let p = desired(&v, NODE);
        let ranges: Vec<(FrontendKind, Vec<(Ipv4Addr, u8)>)> =
            p.values().map(|e| (e.kind, e.source_ranges.clone())).collect();
        assert_eq!(
            ranges,
            vec![
                (FrontendKind::NodePort, vec![]),
                (FrontendKind::ClusterIp, vec![]),
                (FrontendKind::ExternalIp, vec![]),
                (FrontendKind::LoadBalancer, vec![(Ipv4Addr::new(203, 0, 113, 0), 24)]),
            ]
        );
    }

    #[test]
    fn external_frontends_use_every_endpoint_whatever_the_traffic_policies() {
        // Pods and host processes are in-cluster clients: kube-proxy sends
        // them to the cluster-wide endpoints even with
        // externalTrafficPolicy: Local, and internalTrafficPolicy is about
        // the cluster IP only.
        let mut s = external(svc("s", "10.96.0.1", &[("", 80, Protocol::Tcp)]), 30001, &["192.0.2.1"], &[]);
        s.internal_traffic_local = true;
        s.external_traffic_local = true;
        let eps = [("10.244.2.1", true, true, false, "node-b"), ("10.244.3.1", false, true, true, "node-c")];
        let v = view(vec![s.clone()], vec![slice("s-1", "s", &[("", 8080, Protocol::Tcp)], &eps)]);
        let p = desired(&v, NODE);
        let cluster = &p[&fe("10.96.0.1", 80, Protocol::Tcp)];
        assert!(cluster.backends.is_empty() && cluster.no_local_endpoints, "the cluster IP keeps ITP Local");
        assert!(!cluster.external_local, "a cluster IP is never reached from outside");
        for f in [Frontend::node_port(30001, Protocol::Tcp), fe("192.0.2.1", 80, Protocol::Tcp)] {
            assert_eq!(p[&f].backends, vec![be("10.244.2.1", 8080)], "ready ones: {f:?}");
            assert!(!p[&f].no_local_endpoints);
            // Clients from outside: the uplink takes this node's only.
            assert!(p[&f].external_local, "{f:?}");
        }
        s.external_traffic_local = false;
        let v = view(vec![s.clone()], vec![slice("s-1", "s", &[("", 8080, Protocol::Tcp)], &eps)]);
        assert!(!desired(&v, NODE)[&Frontend::node_port(30001, Protocol::Tcp)].external_local, "Cluster policy");
        s.external_traffic_local = true;
        // None ready: the terminating one is the fallback; none at all:
        // refused (count 0), not unreachable.
        let eps = [("10.244.3.1", false, true, true, "node-c")];
        let v = view(vec![s.clone()], vec![slice("s-1", "s", &[("", 8080, Protocol::Tcp)], &eps)]);
        assert_eq!(
            desired(&v, NODE)[&Frontend::node_port(30001, Protocol::Tcp)].backends,
            vec![be("10.244.3.1", 8080)]
        );
        let p = desired(&view(vec![s], vec![]), NODE);
        let np = &p[&Frontend::node_port(30001, Protocol::Tcp)];
        assert!(np.backends.is_empty() && !np.no_local_endpoints);
    }

    #[test]
    fn external_traffic_policy_local_puts_this_nodes_backends_first_and_counts_them() {
        let mut s = external(svc("s", "10.96.0.1", &[("", 80, Protocol::Tcp)]), 30001, &[], &["198.51.100.1"]);
        s.external_traffic_local = true;
        // Two here (one sorting after the others), two elsewhere.
        let eps = [
            ("10.244.2.1", true, true, false, "node-b"),
            ("10.244.1.9", true, true, false, NODE),
            ("10.244.1.2", true, true, false, NODE),
            ("10.244.3.1", true, true, false, "node-c"),
        ];
        let v = view(vec![s.clone()], vec![slice("s-1", "s", &[("", 8080, Protocol::Tcp)], &eps)]);
        let p = desired(&v, NODE);
        for f in [Frontend::node_port(30001, Protocol::Tcp), fe("198.51.100.1", 80, Protocol::Tcp)] {
            let want = ["10.244.1.2", "10.244.1.9", "10.244.2.1", "10.244.3.1"].map(|ip| be(ip, 8080));
            assert_eq!(p[&f].backends, want, "{f:?}: local ones first, then the rest");
            assert_eq!((p[&f].external_local, p[&f].local_backends), (true, 2), "{f:?}");
        }
        assert_eq!(p[&fe("10.96.0.1", 80, Protocol::Tcp)].local_backends, 0);
        // Cluster policy: sorted as ever, nothing counted.
        s.external_traffic_local = false;
        let v = view(vec![s], vec![slice("s-1", "s", &[("", 8080, Protocol::Tcp)], &eps)]);
        let np = &desired(&v, NODE)[&Frontend::node_port(30001, Protocol::Tcp)];
        assert_eq!(np.backends[0], be("10.244.1.2", 8080));
        assert_eq!((np.external_local, np.local_backends), (false, 0));
    }

    #[test]
    fn a_cluster_ip_is_never_shadowed_and_the_first_external_claim_wins_incrementally_too() {
        let a = svc("a", "10.96.0.1", &[("", 80, Protocol::Tcp)]);
        // b names a's cluster IP and c's address as external IPs.
        let b = external(svc("b", "10.96.0.2", &[("", 80, Protocol::Tcp)]), 30002, &["10.96.0.1", "192.0.2.9"], &[]);
        let c = external(svc("c", "10.96.0.3", &[("", 80, Protocol::Tcp)]), 30003, &[], &["192.0.2.9"]);
        let slices = vec![
            slice("a-1", "a", &[("", 8080, Protocol::Tcp)], &[("10.244.1.1", true, true, false, "a")]),
            slice("b-1", "b", &[("", 8080, Protocol::Tcp)], &[("10.244.1.2", true, true, false, "a")]),
            slice("c-1", "c", &[("", 8080, Protocol::Tcp)], &[("10.244.1.3", true, true, false, "a")]),
        ];
        let mut v = view(vec![a, b, c], slices);
        let p = desired(&v, NODE);
        assert_eq!(p[&fe("10.96.0.1", 80, Protocol::Tcp)].service.name, "a");
        assert_eq!(p[&fe("10.96.0.1", 80, Protocol::Tcp)].kind, FrontendKind::ClusterIp);
        assert_eq!(p[&fe("192.0.2.9", 80, Protocol::Tcp)].service.name, "b", "b before c by name");
        let mut planner = Planner::default();
        planner.update(&v, Touched::All, NODE);
        // a goes: b's external IP takes the address; then b goes: c's
        // ingress IP takes 192.0.2.9. Each touched alone.
        for gone in ["a", "b"] {
            v.services.remove(&ServiceName::new("default", gone));
            let mut t = Touched::none();
            t.add(ServiceName::new("default", gone));
            planner.update(&v, t, NODE);
            assert_eq!(planner.plan(), &desired(&v, NODE), "after {gone} went");
        }
        assert_eq!(planner.plan()[&fe("192.0.2.9", 80, Protocol::Tcp)].service.name, "c");
        assert!(!planner.plan().contains_key(&fe("10.96.0.1", 80, Protocol::Tcp)));
    }

    /// Session affinity from outside is kept per Service port (as
    /// kube-proxy's): every frontend of one port carries one id, whatever
    /// its kind or endpoints; another port, another Service, another
    /// namespace: another id.
    #[test]
    fn every_frontend_of_a_service_port_carries_one_id_stable_across_endpoint_changes() {
        let web = external(
            svc("web", "10.96.0.10", &[("http", 80, Protocol::Tcp), ("dns", 53, Protocol::Udp)]),
            30080,
            &["192.0.2.10"],
            &["198.51.100.10"],
        );
        let mut api =
            external(svc("api", "10.96.0.11", &[("http", 80, Protocol::Tcp)]), 30081, &[], &["198.51.100.11"]);
        api.name = ServiceName::new("prod", "api");
        let eps = [("10.244.1.5", true, true, false, "node-a")];
        let slices = |eps: &[Ep]| {
            vec![
                slice("web-1", "web", &[("http", 8080, Protocol::Tcp), ("dns", 5353, Protocol::Udp)], eps),
                EndpointSlice {
                    name: ServiceName::new("prod", "api-1"),
                    service: ServiceName::new("prod", "api"),
                    ..slice("api-1", "api", &[("http", 8080, Protocol::Tcp)], eps)
                },
            ]
        };
        let p = desired(&view(vec![web.clone(), api.clone()], slices(&eps)), NODE);
        let web_http = service_port_id(b"default", b"web", b"http", 6);
        let web_http_frontends = [
            fe("10.96.0.10", 80, Protocol::Tcp),
            Frontend::node_port(30080, Protocol::Tcp),
            fe("192.0.2.10", 80, Protocol::Tcp),
            fe("198.51.100.10", 80, Protocol::Tcp),
        ];
        for f in &web_http_frontends {
            assert_eq!(p[f].service_port_id, web_http, "{f:?} ({:?})", p[f].kind);
        }
        let web_dns = p[&Frontend::node_port(30080, Protocol::Udp)].service_port_id;
        assert_eq!(web_dns, service_port_id(b"default", b"web", b"dns", 17));
        assert_eq!(p[&fe("198.51.100.10", 53, Protocol::Udp)].service_port_id, web_dns);
        let api_http = p[&fe("198.51.100.11", 80, Protocol::Tcp)].service_port_id;
        assert_eq!(p[&Frontend::node_port(30081, Protocol::Tcp)].service_port_id, api_http);
        let ids: BTreeSet<u64> = [web_http, web_dns, api_http].into();
        assert_eq!(ids.len(), 3, "another port, another Service: another id");
        // The endpoints change (another backend, so another backend set
        // in the maps): the ids stay.
        let moved = [("10.244.2.9", true, true, false, "node-b")];
        let q = desired(&view(vec![web, api], slices(&moved)), NODE);
        for f in &web_http_frontends {
            assert_ne!(q[f].backends, p[f].backends);
            assert_eq!(q[f].service_port_id, web_http, "{f:?}");
        }
    }

    #[test]
    fn affinity_timeout_is_carried_and_changes_are_found() {
        let mut s = svc("s", "10.96.0.1", &[("", 80, Protocol::Tcp)]);
        s.affinity_timeout_secs = Some(10800);
        let eps = [("10.244.1.1", true, true, false, "a")];
        let a = desired(&view(vec![s.clone()], vec![slice("s-1", "s", &[("", 8080, Protocol::Tcp)], &eps)]), NODE);
        assert_eq!(a[&fe("10.96.0.1", 80, Protocol::Tcp)].affinity_timeout_secs, 10800);
        assert!(changed(&a, &a).is_empty());
        let b = desired(&view(vec![s], vec![]), NODE);
        assert_eq!(changed(&a, &b).into_iter().collect::<Vec<_>>(), vec![&fe("10.96.0.1", 80, Protocol::Tcp)]);
        assert_eq!(changed(&a, &Plan::new()).len(), 1);
    }
}

#[cfg(test)]
mod family_tests {
    //! The plan per family of dual-stack Services (issue 28): each family
    //! from its own cluster IPs, external addresses and slices.
    use std::net::{IpAddr, Ipv6Addr};

    use super::*;
    use crate::services::model::{ServicePort, SlicePort};

    const NODE: &str = "node-a";

    /// A Service with these cluster IPs (both families mixed, as
    /// `clusterIPs` lists them), one TCP port 80 with this NodePort.
    fn svc(name: &str, cluster_ips: &[&str], node_port: u16) -> Service {
        let ips: Vec<IpAddr> = cluster_ips.iter().map(|ip| ip.parse().unwrap()).collect();
        Service {
            name: ServiceName::new("default", name),
            kind: ServiceKind::ClusterIp,
            cluster_ips: ips.iter().filter_map(|ip| Ipv4Addr::of(*ip)).collect(),
            cluster_ips6: ips.iter().filter_map(|ip| Ipv6Addr::of(*ip)).collect(),
            ports: vec![ServicePort {
                name: "http".into(),
                port: 80,
                protocol: Protocol::Tcp,
                node_port: Some(node_port),
            }],
            affinity_timeout_secs: None,
            internal_traffic_local: false,
            external_ips: Vec::new(),
            external_ips6: Vec::new(),
            load_balancer_ips: Vec::new(),
            load_balancer_ips6: Vec::new(),
            external_traffic_local: false,
            health_check_node_port: None,
            load_balancer_source_ranges: Vec::new(),
        }
    }

    /// A slice of `service` with ready endpoints at these addresses.
    fn slice(name: &str, service: &str, addresses: &[&str]) -> EndpointSlice {
        EndpointSlice {
            name: ServiceName::new("default", name),
            service: ServiceName::new("default", service),
            ports: vec![SlicePort { name: "http".into(), port: 8080, protocol: Protocol::Tcp }],
            endpoints: addresses
                .iter()
                .map(|a| Endpoint {
                    address: a.parse().unwrap(),
                    ready: true,
                    serving: true,
                    terminating: false,
                    node_name: Some(NODE.into()),
                })
                .collect(),
        }
    }

    fn view(services: Vec<Service>, slices: Vec<EndpointSlice>) -> ServiceView {
        ServiceView {
            services: services.into_iter().map(|s| (s.name.clone(), s)).collect(),
            slices: slices.into_iter().map(|s| (s.name.clone(), s)).collect(),
        }
    }

    fn fe6(ip: &str, port: u16) -> Frontend<Ipv6Addr> {
        Frontend { ip: ip.parse().unwrap(), port, protocol: Protocol::Tcp }
    }

    fn be6(ip: &str) -> BackendAddr<Ipv6Addr> {
        BackendAddr { ip: ip.parse().unwrap(), port: 8080 }
    }

    /// Everything IPv6 taken out of a view: what the view was before
    /// dual-stack was read.
    fn without_ipv6(v: &ServiceView) -> ServiceView {
        let mut v = v.clone();
        for s in v.services.values_mut() {
            s.cluster_ips6.clear();
            s.external_ips6.clear();
            s.load_balancer_ips6.clear();
        }
        v.slices.retain(|_, s| s.endpoints.iter().all(|e| e.address.is_ipv4()));
        v
    }

    fn mixed_view() -> ServiceView {
        let mut dual = svc("dual", &["10.96.0.10", "fd00:10:96::10"], 30080);
        dual.external_ips = vec!["192.0.2.10".parse().unwrap()];
        dual.external_ips6 = vec!["2001:db8::10".parse().unwrap()];
        dual.load_balancer_ips6 = vec!["2001:db8::11".parse().unwrap()];
        view(
            vec![dual, svc("v4-only", &["10.96.0.11"], 30081), svc("v6-only", &["fd00:10:96::12"], 30082)],
            vec![
                slice("dual-v4", "dual", &["10.244.1.5", "10.244.2.5"]),
                slice("dual-v6", "dual", &["fd00:10:244:1::5", "fd00:10:244:2::5"]),
                slice("v4-only-1", "v4-only", &["10.244.1.6"]),
                slice("v6-only-1", "v6-only", &["fd00:10:244:1::7"]),
            ],
        )
    }

    /// Golden: reading IPv6 changes nothing in the IPv4 plan (so nothing in
    /// the IPv4 maps) for IPv4 and dual-stack Services.
    #[test]
    fn the_ipv4_plan_is_what_it_was_before_ipv6_was_read() {
        let v = mixed_view();
        let with: Plan = desired(&v, NODE);
        let before: Plan = desired(&without_ipv6(&v), NODE);
        // The IPv6 SingleStack Service had IPv4 NodePort entries before
        // (it has no IPv4 cluster IP: kube-proxy's IPv4 proxier skips it).
        let before: Plan = before.into_iter().filter(|(_, p)| p.service.name != "v6-only").collect();
        assert_eq!(with, before);
        let s = serde_json::to_value(
            &with[&Frontend { ip: "10.96.0.10".parse().unwrap(), port: 80, protocol: Protocol::Tcp }],
        )
        .unwrap();
        assert_eq!(
            s["backends"],
            serde_json::json!([{"ip": "10.244.1.5", "port": 8080}, {"ip": "10.244.2.5", "port": 8080}])
        );
    }

    #[test]
    fn the_ipv6_plan_has_each_services_ipv6_frontends_with_ipv6_backends() {
        let p: Plan<Ipv6Addr> = desired(&mixed_view(), NODE);
        let dual = [be6("fd00:10:244:1::5"), be6("fd00:10:244:2::5")];
        let v6_only = [be6("fd00:10:244:1::7")];
        let want = [
            (fe6("::", 30080), FrontendKind::NodePort, "dual", &dual[..]),
            (fe6("::", 30082), FrontendKind::NodePort, "v6-only", &v6_only[..]),
            (fe6("2001:db8::10", 80), FrontendKind::ExternalIp, "dual", &dual[..]),
            (fe6("2001:db8::11", 80), FrontendKind::LoadBalancer, "dual", &dual[..]),
            (fe6("fd00:10:96::10", 80), FrontendKind::ClusterIp, "dual", &dual[..]),
            (fe6("fd00:10:96::12", 80), FrontendKind::ClusterIp, "v6-only", &v6_only[..]),
        ];
        let got: Vec<_> = p.iter().map(|(f, p)| (*f, p.kind, p.service.name.as_str(), p.backends.as_slice())).collect();
        assert_eq!(got, want.to_vec(), "no IPv4 address anywhere, no frontend of the SingleStack IPv4 Service");
        assert!(Frontend::<Ipv6Addr>::node_port(30080, Protocol::Tcp).is_node_port());
    }

    #[test]
    fn a_dual_stack_service_without_ipv6_endpoints_refuses_on_ipv6_only() {
        let v = view(
            vec![svc("dual", &["10.96.0.10", "fd00:10:96::10"], 30080)],
            vec![slice("d4", "dual", &["10.244.1.5"])],
        );
        let p6: Plan<Ipv6Addr> = desired(&v, NODE);
        assert!(p6[&fe6("fd00:10:96::10", 80)].backends.is_empty(), "an empty frontend: refused");
        let p4: Plan = desired(&v, NODE);
        assert_eq!(p4.values().map(|p| p.backends.len()).collect::<Vec<_>>(), vec![1, 1], "its ClusterIP and NodePort");
    }

    #[test]
    fn the_ipv6_planner_replans_touched_services_and_matches_a_full_plan() {
        let mut v = mixed_view();
        let mut p = Planner::<Ipv6Addr>::default();
        assert_eq!(p.update(&v, Touched::All, NODE), None);
        assert_eq!(p.plan(), &desired::<Ipv6Addr>(&v, NODE));
        v.slices.insert(ServiceName::new("default", "v6-only-1"), slice("v6-only-1", "v6-only", &["fd00:10:244:2::9"]));
        let mut t = Touched::none();
        t.add(ServiceName::new("default", "v6-only"));
        let changed = p.update(&v, t, NODE).expect("one Service replanned alone");
        assert_eq!(changed.into_iter().collect::<Vec<_>>(), vec![fe6("::", 30082), fe6("fd00:10:96::12", 80)]);
        assert_eq!(p.plan(), &desired::<Ipv6Addr>(&v, NODE), "incremental equals full");
        assert_eq!(p.plan()[&fe6("fd00:10:96::12", 80)].backends, vec![be6("fd00:10:244:2::9")]);
    }
}
