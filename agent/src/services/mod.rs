//! Services in eBPF (`--kube-proxy-replacement=true`): ClusterIP
//! translated at `connect()` / `sendmsg()` by cgroup sock_addr programs.
//!
//! - `model`: Services and EndpointSlices as sluice reads them (pure).
//! - `kubernetes`: the kube-rs watchers that keep a `ServiceView`.
//! - `plan`: the view → the frontends and backends the maps must hold
//!   (kube-proxy's semantics, pure): cluster IPs, NodePorts, external IPs
//!   and LoadBalancer ingress IPs.
//! - `node_addresses`: the addresses NodePorts answer on (pure).
//! - `host_ports`: container ports' `hostPort`s of this node's pods, as
//!   frontends (pure).
//! - `health_check`: `healthCheckNodePort` ports and kube-proxy's answer
//!   there (pure; `daemon::health_check_ports` serves them).
//! - `snat_ports`: `--snat-port-range`, checked against the node's own
//!   ports (pure): the uplink's SNAT for remote backends.
pub mod health_check;
pub mod host_ports;
pub mod kubernetes;
pub mod model;
pub mod node_addresses;
pub mod plan;
pub mod snat_ports;
