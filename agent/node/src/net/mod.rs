//! The kernel's networking interfaces: `netlink` (rtnetlink in-process,
//! never the `ip` binary), `netns` (entering a network namespace on one
//! thread, never the mount namespace) and `vxlan` (the node's VXLAN device).
pub mod netlink;
pub mod netns;
pub mod vxlan;
