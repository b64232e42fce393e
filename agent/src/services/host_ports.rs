//! hostPorts as frontends of the socket load balancer (pure): container
//! ports with `hostPort`, of pods on this node, read from the Pods the
//! NetworkPolicy watch keeps. `connect()` from a pod or a host process to
//! one of this node's addresses (or 127.0.0.1 from the node itself, or
//! the port's `hostIP` when it has one) and the hostPort reaches the pod's
//! containerPort, with no portmap plugin and no iptables rule.
//!
//! As portmap and kubelet read them: a hostPort is the pod's on its node
//! only; a `hostNetwork` pod's hostPort is its containerPort on the node
//! already (nothing to translate); a pod without an IPv4 address yet, or
//! finished, has nothing to reach; SCTP and IPv6 `hostIP`s are left out.
//! Two pods claiming one (hostIP, port, protocol) — the scheduler keeps
//! that from happening, a static pod may not — keep the first by
//! namespace/name, and the others are reported.
use std::{collections::BTreeMap, fmt, net::Ipv4Addr};

use serde::Serialize;

use super::{model::Protocol, plan::BackendAddr};
use crate::{
    policy::model::{self as policy, Pod},
    port_ownership::listeners::{HostPortClaim, SocketProtocol},
};

/// A hostPort as clients name it: `host_ip` `None` is every address of
/// this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct HostPortFrontend {
    pub host_ip: Option<Ipv4Addr>,
    pub port: u16,
    pub protocol: Protocol,
}

impl fmt::Display for HostPortFrontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ip = self.host_ip.map_or_else(|| "*".to_string(), |ip| ip.to_string());
        write!(f, "{ip}:{}/{:?}", self.port, self.protocol)
    }
}

/// Where a hostPort leads: the pod (namespace/name) and its address and
/// containerPort.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HostPortTarget {
    pub pod: String,
    pub backend: BackendAddr,
}

pub type HostPortPlan = BTreeMap<HostPortFrontend, HostPortTarget>;

/// A hostPort two pods claim: the one kept and the one left out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    pub frontend: HostPortFrontend,
    pub kept: String,
    pub refused: String,
}

/// The hostPorts of `pods` that are on `node`, and the conflicts.
/// A pod's first IPv4 address (the hostPort backends are IPv4).
fn first_ipv4(pod: &Pod) -> Option<std::net::Ipv4Addr> {
    pod.ips.iter().find_map(|ip| match ip {
        std::net::IpAddr::V4(v4) => Some(*v4),
        std::net::IpAddr::V6(_) => None,
    })
}

pub fn desired<'a>(pods: impl IntoIterator<Item = &'a Pod>, node: &str) -> (HostPortPlan, Vec<Conflict>) {
    let mut mine: Vec<&Pod> =
        pods.into_iter().filter(|p| p.node == node && !p.host_network && first_ipv4(p).is_some()).collect();
    mine.sort_by(|a, b| a.key.cmp(&b.key));
    let mut plan = HostPortPlan::new();
    let mut conflicts = Vec::new();
    for pod in mine {
        let Some(pod_ip) = first_ipv4(pod) else { continue };
        let name = pod.key.to_string();
        for port in &pod.ports {
            let Some(host_port) = port.host_port else { continue };
            let protocol = match port.protocol {
                policy::Protocol::Tcp => Protocol::Tcp,
                policy::Protocol::Udp => Protocol::Udp,
                policy::Protocol::Sctp => continue,
            };
            let host_ip = match port.host_ip {
                None => None,
                Some(std::net::IpAddr::V4(ip)) => Some(ip),
                Some(std::net::IpAddr::V6(_)) => continue,
            };
            let frontend = HostPortFrontend { host_ip, port: host_port, protocol };
            let target = HostPortTarget { pod: name.clone(), backend: BackendAddr { ip: pod_ip, port: port.port } };
            match plan.get(&frontend) {
                Some(kept) if kept.pod != name => {
                    conflicts.push(Conflict { frontend, kept: kept.pod.clone(), refused: name.clone() })
                }
                Some(_) => {}
                None => {
                    plan.insert(frontend, target);
                }
            }
        }
    }
    (plan, conflicts)
}

/// What port ownership checks host sockets against.
pub fn claims(plan: &HostPortPlan) -> Vec<HostPortClaim> {
    plan.iter()
        .map(|(f, t)| HostPortClaim {
            protocol: match f.protocol {
                Protocol::Tcp => SocketProtocol::Tcp,
                Protocol::Udp => SocketProtocol::Udp,
            },
            port: f.port,
            pod: t.pod.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(v: serde_json::Value) -> Pod {
        let p: k8s_openapi::api::core::v1::Pod = serde_json::from_value(v).unwrap();
        crate::policy::kubernetes::pod_from_k8s(&p).model.unwrap()
    }

    fn web(name: &str, node: &str, ip: &str, ports: serde_json::Value) -> Pod {
        pod(json!({
            "metadata": {"namespace": "default", "name": name},
            "spec": {"nodeName": node, "containers": [{"name": "c", "ports": ports}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
        }))
    }

    fn fe(ip: Option<&str>, port: u16, protocol: Protocol) -> HostPortFrontend {
        HostPortFrontend { host_ip: ip.map(|i| i.parse().unwrap()), port, protocol }
    }

    #[test]
    fn host_ports_of_this_nodes_pods_lead_to_their_container_ports() {
        let pods = [
            web(
                "a",
                "n1",
                "10.244.1.5",
                json!([
                    {"containerPort": 7777, "hostPort": 8080},
                    {"containerPort": 53, "hostPort": 5353, "protocol": "UDP", "hostIP": "172.30.0.1"},
                    {"containerPort": 9000, "hostPort": 9000, "hostIP": "0.0.0.0"},
                    {"containerPort": 80},
                    {"containerPort": 81, "hostPort": 8081, "hostIP": "fd00::1"},
                    {"containerPort": 82, "hostPort": 8082, "protocol": "SCTP"},
                ]),
            ),
            web("elsewhere", "n2", "10.244.2.5", json!([{"containerPort": 7777, "hostPort": 8090}])),
        ];
        let (plan, conflicts) = desired(&pods, "n1");
        assert!(conflicts.is_empty());
        let got: Vec<(HostPortFrontend, String, String)> =
            plan.iter().map(|(f, t)| (*f, t.pod.clone(), format!("{}:{}", t.backend.ip, t.backend.port))).collect();
        let a = "default/a".to_string();
        assert_eq!(
            got,
            [
                (fe(None, 8080, Protocol::Tcp), a.clone(), "10.244.1.5:7777".into()),
                (fe(None, 9000, Protocol::Tcp), a.clone(), "10.244.1.5:9000".into()),
                (fe(Some("172.30.0.1"), 5353, Protocol::Udp), a.clone(), "10.244.1.5:53".into()),
            ],
            "0.0.0.0 is every address; IPv6 hostIPs, SCTP, plain container ports and other nodes' pods are left out"
        );
        assert_eq!(fe(None, 8080, Protocol::Tcp).to_string(), "*:8080/Tcp");
        let c = claims(&plan);
        assert_eq!((c[2].protocol, c[2].port, c[2].pod.as_str()), (SocketProtocol::Udp, 5353, "default/a"));
    }

    #[test]
    fn host_network_pending_and_finished_pods_have_no_host_port_frontend() {
        let mut host = web("h", "n1", "172.30.0.1", json!([{"containerPort": 8080, "hostPort": 8080}]));
        host.host_network = true;
        let pending = pod(json!({
            "metadata": {"namespace": "default", "name": "p"},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": [{"containerPort": 1, "hostPort": 8081}]}]},
            "status": {"phase": "Pending"}
        }));
        let done = pod(json!({
            "metadata": {"namespace": "default", "name": "d"},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": [{"containerPort": 1, "hostPort": 8082}]}]},
            "status": {"phase": "Succeeded", "podIP": "10.244.1.9"}
        }));
        assert_eq!(desired(&[host, pending, done], "n1").0, HostPortPlan::new());
    }

    #[test]
    fn two_pods_on_one_host_port_keep_the_first_by_name_and_report_the_other() {
        let pods = [
            web("b", "n1", "10.244.1.6", json!([{"containerPort": 80, "hostPort": 8080}])),
            web("a", "n1", "10.244.1.5", json!([{"containerPort": 81, "hostPort": 8080}])),
            // The same port over UDP, or on a hostIP, is another frontend.
            web("c", "n1", "10.244.1.7", json!([{"containerPort": 82, "hostPort": 8080, "protocol": "UDP"}])),
        ];
        let (plan, conflicts) = desired(&pods, "n1");
        assert_eq!(plan[&fe(None, 8080, Protocol::Tcp)].pod, "default/a");
        assert_eq!(plan[&fe(None, 8080, Protocol::Udp)].pod, "default/c");
        assert_eq!(
            conflicts,
            [Conflict {
                frontend: fe(None, 8080, Protocol::Tcp),
                kept: "default/a".into(),
                refused: "default/b".into()
            }]
        );
    }

    #[test]
    fn a_bad_host_ip_keeps_the_pod_without_its_ports_and_says_why() {
        let p: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
            "metadata": {"namespace": "default", "name": "x"},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": [{"containerPort": 80, "hostPort": 8080, "hostIP": "nope"}]}]},
            "status": {"phase": "Running", "podIP": "10.244.1.5"}
        }))
        .unwrap();
        let c = crate::policy::kubernetes::pod_from_k8s(&p);
        assert!(c.error.unwrap().contains("hostIP \"nope\""));
        assert!(c.model.unwrap().ports.is_empty());
    }
}
