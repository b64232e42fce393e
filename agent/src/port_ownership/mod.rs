//! Port ownership: the ports sluice answers for on this node (the NodePort
//! range, hostPorts of pods here, and any range the datapath allocates
//! from) kept from host processes (pure).
//!
//! - `ranges`: port ranges, `net.ipv4.ip_local_reserved_ports` merged
//!   with others' entries, and what `cleanup` gives back.
//! - `listeners`: host sockets on those ports (`/proc/net/*` parsed),
//!   reported as collisions.
//!
//! The syscalls (the sysctl, `/proc`, the record of what sluice added) are
//! in `daemon::port_ownership`.
pub mod listeners;
pub mod ranges;
