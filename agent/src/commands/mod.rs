//! What an operator runs on a node (`status`, `connectivity-test`,
//! `cleanup`), the health endpoint every node keeps for
//! `connectivity-test` to probe, the init containers' node preparation
//! (`node-init`), and the capabilities each command needs (`privileges`).
pub mod cleanup;
pub mod connectivity;
pub mod health_endpoint;
pub mod monitor;
pub mod node_init;
pub mod privileges;
pub mod service_table;
pub mod status;
