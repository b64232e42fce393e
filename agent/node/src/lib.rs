//! `sluice-node`: the node-side library every sluice process links — the
//! agent, the CNI plugin, the tests and the benchmarks.
//!
//! - `datapath/`: bpffs, the pin layout, loading the eBPF object, TCX links,
//!   typed access to the pinned maps.
//! - `pod/`: wiring a pod to the node (veth, addresses, routes, endpoint
//!   entry, `from_pod`), tearing it down, and the names both derive.
//! - `ipam/`: which address a pod gets (pure) and the leases on disk.
//! - `net/`: netlink through rtnetlink, entering network namespaces.
//! - `paths`: the default locations every binary agrees on.
//!
//! It never links Kubernetes or TLS: those belong to the agent's membership.
pub mod clock;
pub mod cni_stats;
pub mod datapath;
pub mod ipam;
pub mod net;
pub mod paths;
pub mod pod;
pub mod step_timer;
