//! Desired vs actual, one file per thing the agent keeps equal to cluster
//! membership. Each has a pure `diff` and an `apply` behind a small trait,
//! so order and failure behaviour are unit-tested without root.
//!
//! - `map_routes`: the BPF routes map `NODE_ROUTES` (pod CIDR → node IP).
pub mod map_routes;
