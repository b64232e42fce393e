//! The datapath from user space: where it is pinned (`pins`), mounting
//! bpffs (`bpffs`), loading the object (`loader`), attaching programs to
//! interfaces (`links`: TCX links, or legacy tc filters, `tc_filter`, as
//! the node's `attach_mode` says),
//! typed access to the pinned maps (`pinned_maps`; NetworkPolicy's in
//! `policy_maps`), how full they are
//! (`map_fill`), and upgrades: whether a
//! pinned map fits (`map_compat`, pure), taking over an earlier
//! version's pins (`migrate`, under `pin_lock` against the plugin's
//! writes) and carrying a replaced map's content into its successor
//! (`retired_maps`); the socket load balancer's cgroup links
//! (`sock_lb`, with the raw `bpf()` calls aya lacks in `bpf_sys`).
pub mod attach_mode;
pub mod bpf_sys;
pub mod bpffs;
pub mod kernel_features;
pub mod links;
pub mod loader;
pub mod map_compat;
pub mod map_fill;
pub mod migrate;
pub mod nat4_gc;
pub mod nat4_maps;
pub mod pin_lock;
pub mod pinned_maps;
pub mod pins;
pub mod policy_ct_gc;
pub mod policy_maps;
pub mod retired_maps;
pub mod service_maps;
pub mod sock_lb;
pub mod tc_filter;

pub use loader::{Datapath, MapSizes, OBJECT};
