//! `sessionAffinity: ClientIP` for clients from outside the cluster, at
//! the uplink (issue 27; `ebpf/src/lb4_affinity.rs`): the twin of the
//! socket load balancer's `AFFINITY`, keyed by the client's address (the
//! uplink has no network namespace cookie: the client is a remote host).
//!
//! A new connection from the world to a frontend of a Service with
//! affinity (`ServiceValue::affinity_timeout_secs` != 0) goes to the
//! backend remembered for (client address, Service port) when that choice
//! is fresh (used within the timeout) and its backend is one of the
//! frontend's (`BACKEND_MEMBERS` of its current set; with
//! `externalTrafficPolicy: Local`, one of this node's, the set's first
//! slots). Otherwise a backend is picked at random and remembered. Every
//! new connection that uses an entry restamps it, so the timeout counts
//! from the client's last new connection, as kube-proxy's `recent` match
//! (`--rcheck --seconds T` then `--set` in the endpoint's chain).
//!
//! The key is the Service port (`ServiceValue::service_port_id`), not the
//! frontend, as kube-proxy keeps it (one `recent` list per endpoint of a
//! Service port, which its `KUBE-SVC-`/`KUBE-EXT-` chains share): a client
//! reaching one Service port through its NodePort on any node address,
//! an external IP or a LoadBalancer IP keeps one backend; two Services (or
//! two ports of one) keep a choice each. Not the backend set, which every
//! endpoint change replaces: a client keeps its backend across endpoint
//! updates as long as that backend stays. The remembered backend is checked
//! against the current set of the frontend reached, so a choice made
//! through one frontend is only reused where it is a member.
//!
//! An entry an earlier version wrote carries no id (0) until the agent
//! rewrites it: its frontend key stands in (`affinity_scope`), affinity per
//! frontend as that version had it, in a range the agent's ids never take
//! (`SERVICE_PORT_ID_TAG`).
//!
//! Per node: a client whose connections arrive at two nodes (a load
//! balancer in front spreading them) has one choice on each, as with
//! kube-proxy, whose `recent` lists are per node too.
use crate::services::{ServiceKey, ServiceValue};

/// Key of `LB4_SVC_AFFINITY`: an outside client's address and the Service
/// port it reached (`affinity_scope`). (`LB4_AFFINITY`, keyed by the
/// frontend, is retired.)
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lb4AffinityKey {
    pub client_be: u32,
    pub _pad: u32,
    pub service_port: u64,
}
const _: () = assert!(core::mem::size_of::<Lb4AffinityKey>() == 16);

#[cfg(feature = "user")]
mod pod_impls {
    // SAFETY: plain `repr(C)` data, explicit padding, no invalid bit
    // patterns.
    unsafe impl aya::Pod for super::Lb4AffinityKey {}
}

/// What a client's affinity at `frontend` (value `service`) is remembered
/// under: the Service port's id, or, for an entry written without one (0:
/// an earlier version's), the frontend key's 8 bytes, whose top byte (the
/// scope, 0..=3) keeps them clear of `SERVICE_PORT_ID_TAG`.
pub const fn affinity_scope(frontend: &ServiceKey, service: &ServiceValue) -> u64 {
    if service.service_port_id != 0 {
        return service.service_port_id;
    }
    let port = frontend.port_be.to_ne_bytes();
    let vip = frontend.vip_be.to_ne_bytes();
    u64::from_le_bytes([vip[0], vip[1], vip[2], vip[3], port[0], port[1], frontend.protocol, frontend.scope])
}

/// May a new connection go to the remembered backend? Only if the choice
/// is fresh (`last_used_ns` within `timeout_secs` of `now_ns`), the
/// backend is in the set of the frontend reached now (`member_slot`, its
/// slot there; `None`: it left the Service, the set was replaced without
/// it, or the choice was made for another frontend it is no member of) and,
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
    use crate::services::{service_port_id, SCOPE_ADDRESS, SERVICE_LOAD_BALANCER, SERVICE_PORT_ID_TAG};

    fn be(ip: [u8; 4]) -> u32 {
        u32::from_ne_bytes(ip)
    }

    #[test]
    fn every_frontend_of_a_service_port_shares_its_scope_and_other_ports_do_not() {
        let web_http = service_port_id(b"default", b"web", b"http", 6);
        let v = |id, flags| ServiceValue {
            backend_set: 7,
            count: 2,
            affinity_timeout_secs: 60,
            flags,
            service_port_id: id,
        };
        let node_port = ServiceKey::node_port(30080u16.to_be(), 6);
        let lb =
            ServiceKey { vip_be: be([198, 51, 100, 1]), port_be: 80u16.to_be(), protocol: 6, scope: SCOPE_ADDRESS };
        assert_eq!(affinity_scope(&node_port, &v(web_http, 0)), web_http);
        assert_eq!(affinity_scope(&lb, &v(web_http, SERVICE_LOAD_BALANCER)), web_http, "the LB IP: the same");
        // Another backend set (the endpoints changed): the same scope.
        let moved = ServiceValue { backend_set: 8, ..v(web_http, 0) };
        assert_eq!(affinity_scope(&node_port, &moved), web_http);
        let api_http = service_port_id(b"default", b"api", b"http", 6);
        assert_ne!(affinity_scope(&node_port, &v(api_http, 0)), web_http, "another Service");
    }

    #[test]
    fn an_entry_without_an_id_is_scoped_by_its_frontend_clear_of_every_id() {
        let node_port = ServiceKey::node_port(30080u16.to_be(), 6);
        let lb =
            ServiceKey { vip_be: be([198, 51, 100, 1]), port_be: 80u16.to_be(), protocol: 6, scope: SCOPE_ADDRESS };
        let none = ServiceValue { backend_set: 7, count: 2, affinity_timeout_secs: 60, ..Default::default() };
        let (a, b) = (affinity_scope(&node_port, &none), affinity_scope(&lb, &none));
        assert_ne!(a, b, "per frontend, as before ids");
        assert_eq!(affinity_scope(&node_port, &none), a, "stable");
        for scope in [a, b] {
            assert_eq!(scope & SERVICE_PORT_ID_TAG, 0, "{scope:#x}");
        }
        // Every scope (0..=3) in the top byte: still clear of the tag.
        let top = ServiceKey { vip_be: u32::MAX, port_be: u16::MAX, protocol: 255, scope: 3 };
        assert_eq!(affinity_scope(&top, &none) & SERVICE_PORT_ID_TAG, 0);
    }

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
