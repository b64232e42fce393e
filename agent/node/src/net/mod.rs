//! The kernel's networking interfaces: `netlink` (rtnetlink in-process,
//! never the `ip` binary), `netns` (entering a network namespace on one
//! thread, never the mount namespace), `sockets` (sock_diag: connected UDP
//! sockets listed and destroyed), `vxlan` (the node's VXLAN device) and
//! `netkit` (netkit pod devices); `netlink6` holds the IPv6 twins.
pub mod netkit;
pub mod netlink;
pub mod netlink6;
pub mod netns;
pub mod sockets;
pub mod tc_filters;
pub mod vxlan;
