//! The sluice agent: everything a node runs in user space.
//!
//! It owns the life of the datapath on its node: mounting bpffs, loading the
//! eBPF object, pinning maps, programs and links under one pin directory
//! (`pins`), attaching `from_uplink` (`datapath`), and keeping the routes map
//! equal to cluster membership (`peers` → `routes`). The CNI plugin reuses
//! `pins` and `maps` to add pods to the same pinned maps.
pub mod bpffs;
pub mod cni_conf;
pub mod datapath;
pub mod maps;
pub mod netlink;
pub mod netns;
pub mod node;
pub mod peers;
pub mod pins;
pub mod routes;
pub mod status;
