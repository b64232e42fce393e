//! The kernel's networking interfaces: `netlink` (rtnetlink in-process,
//! never the `ip` binary), `netns` (entering a network namespace on one
//! thread, never the mount namespace), `sockets` (sock_diag: connected UDP
//! sockets listed and destroyed) and `vxlan` (the node's VXLAN device).
pub mod netlink;
pub mod netns;
pub mod sockets;
pub mod vxlan;
