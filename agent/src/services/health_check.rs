//! `healthCheckNodePort`: what the agent answers there, as kube-proxy's
//! service health server does (pkg/proxy/healthcheck), so a cloud load
//! balancer sends `externalTrafficPolicy: Local` traffic only to nodes
//! with a local endpoint. Pure: which ports to serve, and the response.
//!
//! kube-proxy's contract: any path, status 200 when the node has a ready
//! local endpoint and the proxy is healthy, 503 otherwise; headers
//! `Content-Type: application/json` and `X-Content-Type-Options: nosniff`;
//! the body names the Service and counts its local ready endpoints by IP
//! (one pod behind two ports counts once; terminating ones do not count,
//! so a node left with only terminating endpoints is taken out of the
//! load balancer).
use std::collections::{BTreeMap, BTreeSet};

use super::model::{EndpointSlice, ServiceKind, ServiceName, ServiceView};

/// One health check port's Service and its count on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub service: ServiceName,
    pub local_endpoints: usize,
}

/// healthCheckNodePort → its Service, for every balanced Service with
/// `externalTrafficPolicy: Local` and a health check port (two Services on
/// one port cannot happen: the API server allocates it as a NodePort; the
/// first by name would win).
pub fn desired(view: &ServiceView, node: &str) -> BTreeMap<u16, HealthCheck> {
    let mut out = BTreeMap::new();
    let checked: Vec<_> = view
        .services
        .values()
        .filter(|s| s.kind == ServiceKind::ClusterIp && s.external_traffic_local)
        .filter_map(|s| Some((s, s.health_check_node_port?)))
        .collect();
    if checked.is_empty() {
        return out;
    }
    let mut slices: BTreeMap<&ServiceName, Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in view.slices.values() {
        slices.entry(&slice.service).or_default().push(slice);
    }
    for (service, port) in checked {
        let service_is_ipv4 = !service.cluster_ips.is_empty();
        // Endpoints of the Service's ports (a slice port matched by name
        // and protocol), ready and on this node, by address.
        let local: BTreeSet<_> = slices
            .get(&service.name)
            .into_iter()
            .flatten()
            .filter(|s| {
                s.ports.iter().any(|p| service.ports.iter().any(|q| q.name == p.name && q.protocol == p.protocol))
            })
            .flat_map(|s| s.endpoints.iter())
            .filter(|e| e.ready && e.node_name.as_deref() == Some(node))
            // One family's: a dual-stack pod is in an IPv4 and an IPv6
            // slice, and counts once (IPv4 unless the Service has none).
            .filter(|e| e.address.is_ipv4() == service_is_ipv4)
            .map(|e| e.address)
            .collect();
        out.entry(port).or_insert(HealthCheck { service: service.name.clone(), local_endpoints: local.len() });
    }
    out
}

/// The response headers besides the length.
pub const HEADERS: [(&str, &str); 2] = [("Content-Type", "application/json"), ("X-Content-Type-Options", "nosniff")];

/// Status code and body for one request. `proxy_healthy`: the Services
/// loop is synced and running (kube-proxy's own healthz).
pub fn response(check: &HealthCheck, proxy_healthy: bool) -> (u16, String) {
    let status = if check.local_endpoints != 0 && proxy_healthy { 200 } else { 503 };
    // kube-proxy's layout, tab-indented; JSON strings escaped by serde.
    let body = format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": {},\n\t\t\"name\": {}\n\t}},\n\t\"localEndpoints\": {},\n\t\"serviceProxyHealthy\": {}\n}}",
        serde_json::Value::from(check.service.namespace.as_str()),
        serde_json::Value::from(check.service.name.as_str()),
        check.local_endpoints,
        proxy_healthy,
    );
    (status, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::model::{Endpoint, Protocol, Service, ServicePort, SlicePort};

    fn service(name: &str, etp_local: bool, port: Option<u16>) -> Service {
        Service {
            name: ServiceName::new("default", name),
            kind: ServiceKind::ClusterIp,
            cluster_ips: vec!["10.96.0.1".parse().unwrap()],
            ports: ["http", "https"]
                .iter()
                .map(|n| ServicePort { name: n.to_string(), port: 80, protocol: Protocol::Tcp, node_port: Some(30080) })
                .collect(),
            affinity_timeout_secs: None,
            internal_traffic_local: false,
            external_ips: vec![],
            load_balancer_ips: vec![],
            load_balancer_ips6: Vec::new(),
            external_ips6: Vec::new(),
            cluster_ips6: Vec::new(),
            external_traffic_local: etp_local,
            health_check_node_port: port,
            load_balancer_source_ranges: Vec::new(),
        }
    }

    fn ep(ip: &str, ready: bool, node: &str) -> Endpoint {
        Endpoint {
            address: ip.parse().unwrap(),
            ready,
            serving: true,
            terminating: !ready,
            node_name: Some(node.into()),
        }
    }

    fn view(services: Vec<Service>, endpoints: Vec<Endpoint>) -> ServiceView {
        let slice = EndpointSlice {
            name: ServiceName::new("default", "lb-abc"),
            service: ServiceName::new("default", "lb"),
            ports: ["http", "https"]
                .iter()
                .map(|n| SlicePort { name: n.to_string(), port: 8080, protocol: Protocol::Tcp })
                .collect(),
            endpoints,
        };
        ServiceView {
            services: services.into_iter().map(|s| (s.name.clone(), s)).collect(),
            slices: [(slice.name.clone(), slice)].into(),
        }
    }

    #[test]
    fn counts_local_ready_endpoints_by_address_for_local_policy_services_only() {
        let eps = vec![ep("10.244.1.2", true, "a"), ep("10.244.1.3", false, "a"), ep("10.244.2.2", true, "b")];
        let v = view(vec![service("lb", true, Some(32000)), service("cluster", false, Some(32001))], eps);
        let on_a = desired(&v, "a");
        assert_eq!(
            on_a,
            [(32000, HealthCheck { service: ServiceName::new("default", "lb"), local_endpoints: 1 })].into(),
            "one ready pod behind two ports is one; a terminating one is none; ETP Cluster has no check"
        );
        assert_eq!(desired(&v, "c")[&32000].local_endpoints, 0);
        assert!(desired(&view(vec![service("lb", true, None)], vec![]), "a").is_empty());
    }

    #[test]
    fn a_dual_stack_pod_counts_once_and_an_ipv6_only_service_counts_its_ipv6_endpoints() {
        let dual = |mut s: Service| {
            s.cluster_ips6 = vec!["fd00:10:96::a".parse().unwrap()];
            s
        };
        let mut v = view(vec![dual(service("lb", true, Some(32000)))], vec![ep("10.244.1.2", true, "a")]);
        let mut v6 = v.slices.values().next().unwrap().clone();
        v6.name = ServiceName::new("default", "lb-v6");
        v6.endpoints = vec![ep("fd00:10:244:1::2", true, "a")];
        v.slices.insert(v6.name.clone(), v6);
        assert_eq!(desired(&v, "a")[&32000].local_endpoints, 1, "its IPv4 and IPv6 addresses are one pod");
        v.services.values_mut().for_each(|s| s.cluster_ips.clear());
        v.slices.retain(|n, _| n.name == "lb-v6");
        assert_eq!(desired(&v, "a")[&32000].local_endpoints, 1, "an IPv6 SingleStack Service");
    }

    #[test]
    fn the_answer_is_kube_proxys() {
        let check = HealthCheck { service: ServiceName::new("default", "lb"), local_endpoints: 2 };
        let (status, body) = response(&check, true);
        assert_eq!(status, 200);
        assert_eq!(
            body,
            "{\n\t\"service\": {\n\t\t\"namespace\": \"default\",\n\t\t\"name\": \"lb\"\n\t},\n\t\"localEndpoints\": 2,\n\t\"serviceProxyHealthy\": true\n}"
        );
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["localEndpoints"], 2);
        assert_eq!(response(&HealthCheck { local_endpoints: 0, ..check.clone() }, true).0, 503);
        let (status, body) = response(&check, false);
        assert_eq!(status, 503, "an unhealthy proxy fails the check even with endpoints");
        assert!(body.contains("\"serviceProxyHealthy\": false"));
    }
}
