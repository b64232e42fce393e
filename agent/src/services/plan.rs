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
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use serde::Serialize;

use super::model::{Endpoint, EndpointSlice, Protocol, Service, ServiceKind, ServiceName, ServiceView, Touched};

/// A Service's address as clients name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Frontend {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
}

/// A backend pod's address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct BackendAddr {
    pub ip: Ipv4Addr,
    pub port: u16,
}

/// What happens to a connection to a frontend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FrontendPlan {
    pub service: ServiceName,
    /// Sorted, no duplicates (one pod listed by two slices counts once).
    pub backends: Vec<BackendAddr>,
    /// 0: no session affinity.
    pub affinity_timeout_secs: u32,
    /// Endpoints exist, none on this node, policy Local.
    pub no_local_endpoints: bool,
}

pub type Plan = BTreeMap<Frontend, FrontendPlan>;

/// Every frontend of every balanced Service in `view`, seen from `node`.
pub fn desired(view: &ServiceView, node: &str) -> Plan {
    let mut slices: BTreeMap<&ServiceName, Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in view.slices.values() {
        slices.entry(&slice.service).or_default().push(slice);
    }
    let mut plan = Plan::new();
    for service in view.services.values() {
        let its_slices = slices.get(&service.name).map(Vec::as_slice).unwrap_or(&[]);
        plan_service(&mut plan, service, its_slices, node);
    }
    plan
}

/// The frontends of one Service (nothing for headless or ExternalName).
pub fn plan_service(plan: &mut Plan, service: &Service, slices: &[&EndpointSlice], node: &str) {
    if service.kind != ServiceKind::ClusterIp {
        return;
    }
    for port in &service.ports {
        let candidates: BTreeMap<BackendAddr, &Endpoint> = slices
            .iter()
            .flat_map(|slice| {
                let target =
                    slice.ports.iter().find(|p| p.name == port.name && p.protocol == port.protocol).map(|p| p.port);
                target
                    .into_iter()
                    .flat_map(move |t| slice.endpoints.iter().map(move |e| (BackendAddr { ip: e.address, port: t }, e)))
            })
            .collect();
        let (backends, no_local_endpoints) = choose(&candidates, service.internal_traffic_local, node);
        for ip in &service.cluster_ips {
            plan.insert(
                Frontend { ip: *ip, port: port.port, protocol: port.protocol },
                FrontendPlan {
                    service: service.name.clone(),
                    backends: backends.clone(),
                    affinity_timeout_secs: service.affinity_timeout_secs.unwrap_or(0),
                    no_local_endpoints,
                },
            );
        }
    }
}

/// Ready ones, else serving-and-terminating ones; with `local`, among this
/// node's only. Returns the backends and "endpoints exist but none here".
fn choose(candidates: &BTreeMap<BackendAddr, &Endpoint>, local: bool, node: &str) -> (Vec<BackendAddr>, bool) {
    let usable = |only_here: bool| -> Vec<BackendAddr> {
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
#[derive(Debug, Default)]
pub struct Planner {
    plan: Plan,
    by_service: BTreeMap<ServiceName, Vec<Frontend>>,
}

impl Planner {
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Balanced Services (with at least one frontend).
    pub fn services(&self) -> usize {
        self.by_service.len()
    }

    /// Bring the plan up to date with `view`. Returns the frontends whose
    /// entries may have changed, or `None` when everything was replanned.
    pub fn update(&mut self, view: &ServiceView, touched: Touched, node: &str) -> Option<BTreeSet<Frontend>> {
        let names = match touched {
            Touched::Services(names) if names.len() <= REPLAN_ALL_ABOVE => names,
            _ => {
                self.plan = desired(view, node);
                self.by_service.clear();
                for (f, p) in &self.plan {
                    self.by_service.entry(p.service.clone()).or_default().push(*f);
                }
                return None;
            }
        };
        let mut out = BTreeSet::new();
        for name in names {
            for f in self.by_service.remove(&name).unwrap_or_default() {
                self.plan.remove(&f);
                out.insert(f);
            }
            let Some(service) = view.services.get(&name) else { continue };
            let slices: Vec<&EndpointSlice> = view.slices.values().filter(|s| s.service == name).collect();
            let mut fresh = Plan::new();
            plan_service(&mut fresh, service, &slices, node);
            if !fresh.is_empty() {
                self.by_service.insert(name, fresh.keys().copied().collect());
            }
            out.extend(fresh.keys().copied());
            self.plan.extend(fresh);
        }
        Some(out)
    }
}

/// Frontends whose plan differs between two plans (added, changed or
/// removed): what a reconcile pass must touch.
pub fn changed<'a>(old: &'a Plan, new: &'a Plan) -> BTreeSet<&'a Frontend> {
    let mut out: BTreeSet<&Frontend> = old.keys().filter(|k| !new.contains_key(*k)).collect();
    out.extend(new.iter().filter(|(k, v)| old.get(*k) != Some(*v)).map(|(k, _)| k));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::model::{ServicePort, SlicePort};

    const NODE: &str = "node-a";

    fn svc(name: &str, ip: &str, ports: &[(&str, u16, Protocol)]) -> Service {
        Service {
            name: ServiceName::new("default", name),
            kind: ServiceKind::ClusterIp,
            cluster_ips: vec![ip.parse().unwrap()],
            ports: ports
                .iter()
                .map(|(n, p, pr)| ServicePort { name: n.to_string(), port: *p, protocol: *pr })
                .collect(),
            affinity_timeout_secs: None,
            internal_traffic_local: false,
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
