//! The kernel's networking interfaces: `netlink` (rtnetlink in-process,
//! never the `ip` binary) and `netns` (entering a network namespace on one
//! thread, never the mount namespace).
pub mod netlink;
pub mod netns;
