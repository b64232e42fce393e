//! What an operator runs on a node, one module a command: `status` (and
//! `status --services`), `connectivity-test`, `monitor`, `cleanup`, and
//! the init containers' node preparation (`node-init`).
pub mod cleanup;
pub mod connectivity;
pub mod monitor;
pub mod node_init;
pub mod status;
