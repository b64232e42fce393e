//! The sluice agent: everything a node runs in user space.
//!
//! It owns the life of the datapath on its node: mounting bpffs, loading the
//! eBPF object, pinning maps, programs and links under one pin directory
//! (`pins`), attaching `from_uplink` (`datapath`), and keeping the routes map
//! equal to cluster membership (`peers` → `routes`).
//!
//! It is also the node-side library the CNI plugin builds on: `pins`, `maps`,
//! `netlink`, `netns`, `ipam` (leases on disk) and `pod_names` are shared, so
//! the agent can clean up after pods whose plugin call never finished.
pub mod agent_state;
pub mod bpffs;
pub mod cleanup;
pub mod cni_conf;
pub mod connectivity;
pub mod daemon;
pub mod datapath;
pub mod health;
pub mod icmp;
pub mod install;
pub mod ipam;
pub mod kube_nodes;
pub mod maps;
pub mod membership;
pub mod netlink;
pub mod netns;
pub mod node;
pub mod peers;
pub mod pins;
pub mod plumbing;
pub mod pod_names;
pub mod routes;
pub mod status;
pub mod sweep;
pub mod teardown;
