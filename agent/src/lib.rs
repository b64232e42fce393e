//! `sluice-agent`: the per-node daemon and the commands an operator runs on
//! a node. What the CNI plugin shares with it (the datapath's pins and
//! maps, pod plumbing, IPAM, netlink) is the `sluice-node` crate.
//!
//! - `config`: the agent's flags and their validation (pure).
//! - `membership/`: one model of the cluster's nodes (pure), two sources:
//!   Kubernetes Nodes (kube-rs) and the peers file.
//! - `reconcile/`: desired vs actual, one file per thing kept in step with
//!   membership (today `map_routes`, the BPF routes map).
//! - `daemon/`: `sluice-agent run`: start-up, the loop, the sweep of dead
//!   pods, installing the plugin and its conflist.
//! - `commands/`: on-call, one module a command: `status`,
//!   `connectivity-test`, `monitor`, `cleanup`, `node-init`.
//! - `health_endpoint/`: the namespace wired like a pod that every node
//!   keeps for `connectivity-test` to probe (the daemon makes and serves
//!   it, `cleanup` removes it).
//! - `privileges/`: the capabilities each command needs, and the hint
//!   naming the missing ones when a call is refused.
//! - `services/`: Services in eBPF: the model, its Kubernetes watchers, the
//!   plan the socket load balancer's maps are kept in step with.
//! - `policy/`: NetworkPolicy's pure core: model, selectors, identities,
//!   the compiler and an evaluator (no watcher or datapath yet).
//! - `port_ownership/`: the ports sluice owns on a node (NodePort range,
//!   hostPorts) reserved from ephemeral use, and host sockets on them
//!   found (pure; `daemon::port_ownership` does the syscalls).
//! - `state_file`: what the daemon tells the commands (another process).
pub mod commands;
pub mod config;
pub mod daemon;
pub mod health_endpoint;
pub mod kube_watch;
pub mod membership;
pub mod policy;
pub mod port_ownership;
pub mod privileges;
pub mod reconcile;
pub mod services;
pub mod state_file;
