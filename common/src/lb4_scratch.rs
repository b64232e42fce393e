//! The uplink translation's working memory (`ebpf/src/lb4*.rs`).
use crate::{
    lb4_affinity::Lb4AffinityKey,
    lb4_frag::{Frag4Entry, Frag4Key},
    nat::{Nat4Entry, Nat4Key},
    services::{AffinityValue, BackendMember, ServiceKey, ServiceValue},
};

/// Value of `LB4_SCRATCH` (per-CPU array of one): keys and values the
/// uplink's translation builds off the stack, and what
/// `sluice_lb4_from_uplink` hands `sluice_lb4_new_connection` (two global
/// functions, each with a frame of its own beside `from_uplink`'s: one
/// frame holding both would not fit the 512 bytes Linux 6.1 allows a call
/// chain). Only the program running on this CPU uses it, for the duration
/// of one run. User space never reads it (pinned like every map).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Lb4Scratch {
    /// A new connection: the client's tuple, the frontend it reached and
    /// its `SERVICES` value, the packet's TTL.
    pub new_key: Nat4Key,
    pub frontend: ServiceKey,
    pub service: ServiceValue,
    pub ttl: u32,
    pub _pad: u32,
    /// Its forward entry, once written (`sluice_lb4_send_new` sends it).
    pub entry: Nat4Entry,
    /// Session affinity's lookups (`lb4_affinity`).
    pub affinity_key: Lb4AffinityKey,
    /// The remembered choice, copied out; then the new one.
    pub affinity: AffinityValue,
    /// The remembered backend's membership key.
    pub member: BackendMember,
    /// A first fragment's translation, before it is remembered
    /// (`lb4_frag`).
    pub frag_key: Frag4Key,
    pub frag: Frag4Entry,
}
const _: () = assert!(core::mem::size_of::<Lb4Scratch>() == 160);
// No padding the compiler put in: the fields' sizes add up to the whole.
const _: () = assert!(
    core::mem::size_of::<Nat4Key>()
        + core::mem::size_of::<ServiceKey>()
        + core::mem::size_of::<ServiceValue>()
        + 2 * core::mem::size_of::<u32>() // ttl, _pad
        + core::mem::size_of::<Nat4Entry>()
        + core::mem::size_of::<Lb4AffinityKey>()
        + core::mem::size_of::<AffinityValue>()
        + core::mem::size_of::<BackendMember>()
        + core::mem::size_of::<Frag4Key>()
        + core::mem::size_of::<Frag4Entry>()
        == core::mem::size_of::<Lb4Scratch>()
);

#[cfg(feature = "user")]
// SAFETY: plain `repr(C)` data, explicit padding, no invalid bit patterns.
unsafe impl aya::Pod for Lb4Scratch {}
