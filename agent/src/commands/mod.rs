//! What an operator runs on a node (`status`, `connectivity-test`,
//! `cleanup`), and the health endpoint every node keeps for
//! `connectivity-test` to probe.
pub mod cleanup;
pub mod connectivity;
pub mod health_endpoint;
pub mod status;
