//! `sessionAffinity: ClientIP` for clients from outside the cluster
//! (`sluice_common::lb4_affinity`): the backend of a new connection at the
//! uplink, the one remembered for the client and the Service port while it
//! is fresh and one of the frontend's, else one at random, remembered.
use aya_ebpf::helpers::{bpf_get_prandom_u32, bpf_ktime_get_coarse_ns};
use sluice_common::{
    lb4_affinity::{affinity_scope, reuse_remembered},
    lb4_scratch::Lb4Scratch,
    nat::Nat4Counter,
    services::{local_backend_count, Backend, BackendSlot, ServiceKey, ServiceValue, SERVICE_EXTERNAL_LOCAL},
    DropReason,
};

use crate::{
    lb4::count,
    maps::{BACKENDS, BACKEND_MEMBERS, LB4_SVC_AFFINITY},
};

/// The backend for a new connection from `client_be` to `frontend` (its
/// `SERVICES` key, `service` its value; the caller has checked the Service
/// has endpoints). With `externalTrafficPolicy: Local` only this node's
/// backends, which the agent puts first in the set. Lookups are built in
/// `scratch` (`Lb4Scratch`: its affinity fields only), not on the stack.
#[inline(always)]
pub fn pick(
    scratch: *mut Lb4Scratch,
    client_be: u32,
    frontend: &ServiceKey,
    service: &ServiceValue,
) -> Result<Backend, DropReason> {
    let local_only = service.flags & SERVICE_EXTERNAL_LOCAL != 0;
    let choices = if local_only { local_backend_count(service.flags) } else { service.count };
    if choices == 0 {
        return Err(DropReason::ServiceNoLocalEndpoints);
    }
    if service.affinity_timeout_secs == 0 {
        return at_random(service.backend_set, choices);
    }
    // SAFETY: this CPU's slot, used by this program run alone; fields the
    // caller holds no reference to.
    let (key, member, chosen) =
        unsafe { (&mut (*scratch).affinity_key, &mut (*scratch).member, &mut (*scratch).affinity) };
    key.client_be = client_be;
    key._pad = 0;
    // One choice per Service port, whichever of its frontends the client
    // reached (the remembered backend is checked against this one's set).
    key.service_port = affinity_scope(frontend, service);
    // SAFETY: a plain helper.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if let Some(entry) = LB4_SVC_AFFINITY.get_ptr_mut(&*key) {
        // SAFETY: a valid map value pointer, copied out at once; a racing
        // writer leaves another valid backend and time.
        *chosen = unsafe { *entry };
        member.set = service.backend_set;
        member.backend = chosen.backend;
        // SAFETY: copied out at once.
        let slot = unsafe { BACKEND_MEMBERS.get(&*member) }.copied();
        if reuse_remembered(chosen.last_used_ns, now, service.affinity_timeout_secs, slot, local_only, choices) {
            // SAFETY: as above; a time any CPU wrote is right.
            unsafe { (*entry).last_used_ns = now };
            count(Nat4Counter::AffinityReused);
            return Ok(chosen.backend);
        }
    }
    let backend = at_random(service.backend_set, choices)?;
    chosen.backend = backend;
    chosen.last_used_ns = now;
    // An LRU map makes room: a failed insert (no memory) only costs the
    // client its affinity, never the connection.
    let _ = LB4_SVC_AFFINITY.insert(&*key, &*chosen, 0);
    count(Nat4Counter::AffinityPicked);
    Ok(backend)
}

/// One of the first `choices` backends of `set`, at random.
#[inline(always)]
fn at_random(set: u32, choices: u32) -> Result<Backend, DropReason> {
    // SAFETY: a plain helper.
    let slot = unsafe { bpf_get_prandom_u32() } % choices;
    // SAFETY: copied out at once.
    match unsafe { BACKENDS.get(&BackendSlot { set, slot }) } {
        Some(b) => Ok(*b),
        None => Err(DropReason::LookupMismatch),
    }
}
