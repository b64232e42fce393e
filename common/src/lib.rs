//! The contract between sluice's eBPF programs and its user space.
//!
//! Every type here crosses the kernel boundary as a map key or value, so each
//! is `#[repr(C)]`, fixed-size, holds no `bool`/`Option`/data-carrying enum,
//! and has its size pinned by a compile-time check. The `user` feature adds the
//! `aya::Pod` impls the agent and the CNI plugin need; the eBPF build never
//! enables it, so it never links aya. Pure packet decisions live in
//! [`verdict`] so they are unit-tested on the host and used by the programs.
#![no_std]

pub mod counters;
pub mod events;
#[cfg(test)]
mod golden;
pub mod lb4_affinity;
pub mod lb4_frag;
pub mod lb4_scratch;
pub mod maps;
pub mod nat;
pub mod nat6;
pub mod nat64;
pub mod policy;
pub mod reject;
pub mod services;
pub mod services6;
pub mod verdict;

pub use counters::{drop_slot, DropCount, DropReason, ForwardPath, HookDirection, StackFlowEvent, DROP_SLOTS};
pub use maps::{EndpointInfo, FlowKey, FlowKey6, NodeConfig, RemoteNode, RemoteNode6, TunnelConfig};
