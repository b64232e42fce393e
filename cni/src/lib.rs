//! The plugin's parts that other crates name: the ADD step list (the
//! end-to-end tests inject a failure or a crash after each step by name).
//! Everything else is the binary's (`main.rs`).
pub mod fault;
