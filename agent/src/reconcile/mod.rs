//! Desired vs actual, one file per thing the agent keeps equal to cluster
//! membership. Each has a pure `diff` and an `apply` behind a small trait,
//! so order and failure behaviour are unit-tested without root.
//!
//! - `map_routes`: the BPF routes map `NODE_ROUTES` (pod CIDR → node IP);
//!   `map_routes6`, its IPv6 twin `NODE_ROUTES6` (dual-stack).
//! - `kernel_routes`: the same routes in the kernel, for the node's own stack.
//! - `masquerade`: pods' egress NAT (nftables) and the forward accept
//!   (iptables) for traffic the stack forwards for pods.
//! - `policy_maps`: NetworkPolicy's maps, kept equal to the compiled policy
//!   of this node's pods.
//! - `policy_desired`: what those maps must hold, kept up to date change by
//!   change (only what a change touches is compiled again).
//! - `service_maps`: the socket load balancer's maps, kept equal to the
//!   Service plan (`services::plan`).
pub mod kernel_routes;
pub mod kernel_routes6;
pub mod map_routes;
pub mod map_routes6;
pub mod masquerade;
pub mod policy_desired;
pub mod policy_maps;
pub mod service_maps;
pub mod source_ranges;
