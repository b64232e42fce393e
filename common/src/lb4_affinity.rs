//! `sessionAffinity: ClientIP` for clients from outside the cluster, at
//! the uplink (issue 27; `ebpf/src/lb4_affinity.rs`): the twin of the
//! socket load balancer's `AFFINITY`, keyed by the client's address (the
//! uplink has no network namespace cookie: the client is a remote host).
//!
//! A new connection from the world to a frontend of a Service with
//! affinity (`ServiceValue::affinity_timeout_secs` != 0) goes to the
//! backend remembered for (client address, frontend) when that choice is
//! fresh (used within the timeout) and its backend is still one of the
//! frontend's (`BACKEND_MEMBERS` of its current set; with
//! `externalTrafficPolicy: Local`, one of this node's, the set's first
//! slots). Otherwise a backend is picked at random and remembered. Every
//! new connection that uses an entry restamps it, so the timeout counts
//! from the client's last new connection, as kube-proxy's `recent` match
//! (`--rcheck --seconds T` then `--set` in the endpoint's chain).
//!
//! The key is the frontend as `SERVICES` holds it, not the Service: a
//! NodePort is one entry for every node address (`SCOPE_NODE_PORT`, vip
//! 0), so a client keeps its backend through any node address it uses, as
//! kube-proxy keeps it per Service port. Where kube-proxy goes further, a
//! client reaching one Service port through two *kinds* of frontend (its
//! NodePort and its external IP) keeps two choices here: the maps carry
//! no Service identity a frontend entry could name (each frontend has a
//! backend set of its own), and clients use one name for a Service.
//!
//! Per node: a client whose connections arrive at two nodes (a load
//! balancer in front spreading them) has one choice on each, as with
//! kube-proxy, whose `recent` lists are per node too.
use crate::services::ServiceKey;

/// Key of `LB4_AFFINITY`: an outside client's address and the frontend
/// it reached, as found in `SERVICES` (a NodePort's `vip_be` is 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lb4AffinityKey {
    pub client_be: u32,
    pub frontend: ServiceKey,
}
const _: () = assert!(core::mem::size_of::<Lb4AffinityKey>() == 12);

#[cfg(feature = "user")]
mod pod_impls {
    // SAFETY: plain `repr(C)` data, no padding, no invalid bit patterns.
    unsafe impl aya::Pod for super::Lb4AffinityKey {}
}

/// May a new connection go to the remembered backend? Only if the choice
/// is fresh (`last_used_ns` within `timeout_secs` of `now_ns`), the
/// backend is still in the frontend's set (`member_slot`, its slot there;
/// `None`: it left the Service, or the set was replaced without it) and,
/// for a frontend that sends outside clients to this node's backends only
/// (`externalTrafficPolicy: Local`, `local_only`), it is one of the first
/// `local_count` slots.
pub const fn reuse_remembered(
    last_used_ns: u64,
    now_ns: u64,
    timeout_secs: u32,
    member_slot: Option<u32>,
    local_only: bool,
    local_count: u32,
) -> bool {
    if timeout_secs == 0 || !crate::services::affinity_fresh(last_used_ns, now_ns, timeout_secs) {
        return false;
    }
    match member_slot {
        Some(slot) => !local_only || slot < local_count,
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn a_fresh_choice_of_a_member_is_reused() {
        assert!(reuse_remembered(100 * S, 150 * S, 10800, Some(3), false, 0));
        // Another CPU's clock read a moment before the entry was written.
        assert!(reuse_remembered(100 * S, 99 * S, 10800, Some(0), false, 0));
    }

    #[test]
    fn an_expired_choice_or_no_affinity_is_not() {
        assert!(!reuse_remembered(100 * S, 110 * S, 10, Some(0), false, 0), "exactly the timeout: expired");
        assert!(!reuse_remembered(100 * S, 200 * S, 10, Some(0), false, 0));
        assert!(!reuse_remembered(100 * S, 100 * S, 0, Some(0), false, 0), "affinity switched off");
    }

    #[test]
    fn a_backend_that_left_the_set_is_not() {
        assert!(!reuse_remembered(100 * S, 101 * S, 10800, None, false, 0));
    }

    #[test]
    fn external_traffic_local_reuses_only_this_nodes_backends() {
        // Slots 0..2 are this node's (`external_local_flags`).
        assert!(reuse_remembered(100 * S, 101 * S, 10800, Some(1), true, 2));
        assert!(!reuse_remembered(100 * S, 101 * S, 10800, Some(2), true, 2), "another node's backend");
        assert!(!reuse_remembered(100 * S, 101 * S, 10800, Some(0), true, 0));
    }
}
