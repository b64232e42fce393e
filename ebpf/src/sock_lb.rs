//! The socket load balancer: Services' cluster IPs translated where the
//! socket is, not per packet.
//!
//! Attached to the node's cgroup v2 root, these programs run for every
//! process of the node (pods and host processes alike):
//! - `sock_connect` (`connect()`, TCP and UDP): a cluster IP:port becomes
//!   one backend pod's IP:targetPort, so on the wire it is pod-to-pod and
//!   takes the fast path; established connections never see a Service map
//!   again.
//! - `sock_sendmsg`: the same per datagram, for unconnected UDP.
//! - `sock_recvmsg` / `sock_getpeername`: a reply's source, or a connected
//!   socket's peer, is shown as the cluster IP the program asked for.
//!
//! Every program returns 1 (carry on) except a refusal: 0 with the error
//! set by `bpf_set_retval` (`ECONNREFUSED` when a Service has no
//! endpoints, as kube-proxy's REJECT; `EHOSTUNREACH` when only other
//! nodes have endpoints and the policy is Local).
use aya_ebpf::{
    helpers::generated::{
        bpf_get_netns_cookie, bpf_get_prandom_u32, bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_set_retval,
    },
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
    EbpfContext,
};
use sluice_common::services::{
    admission, affinity_fresh, Admission, AffinityKey, AffinityValue, Backend, BackendMember, BackendSlot, ReverseKey,
    ServiceKey, ServiceValue, SockLbCounter,
};

use crate::maps::{AFFINITY, BACKENDS, BACKEND_MEMBERS, SERVICES, SOCK_LB_STATS, SOCK_REVERSE};

const ALLOW: i32 = 1;
const REJECT: i32 = 0;
const ECONNREFUSED: i32 = 111;
const EHOSTUNREACH: i32 = 113;
const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;

#[inline(always)]
fn count(counter: SockLbCounter) {
    if let Some(n) = SOCK_LB_STATS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe { *n += 1 }
    }
}

/// The destination the socket call names, as a frontend key.
#[inline(always)]
fn frontend(ctx: &SockAddrContext) -> Option<ServiceKey> {
    // SAFETY: the kernel hands a valid `bpf_sock_addr`; these fields are
    // readable in every sock_addr program.
    let (ip, port, protocol) =
        unsafe { ((*ctx.sock_addr).user_ip4, (*ctx.sock_addr).user_port, (*ctx.sock_addr).protocol) };
    if protocol != IPPROTO_TCP && protocol != IPPROTO_UDP {
        return None;
    }
    // `user_port` holds the port in network byte order in its low 16 bits.
    Some(ServiceKey { vip_be: ip, port_be: port as u16, protocol: protocol as u8, _pad: 0 })
}

/// The backend remembered for this client, if still fresh and still in
/// the Service's set; refreshes its time of use.
#[inline(always)]
fn remembered(key: &AffinityKey, service: &ServiceValue, now: u64) -> Option<Backend> {
    let entry = AFFINITY.get_ptr_mut(key)?;
    // SAFETY: a valid map value pointer; a racing writer can only leave
    // another valid backend and time.
    let (backend, last_used) = unsafe { ((*entry).backend, (*entry).last_used_ns) };
    if !affinity_fresh(last_used, now, service.affinity_timeout_secs) {
        return None;
    }
    let member = BackendMember { set: service.backend_set, backend };
    // SAFETY: only presence is read.
    unsafe { BACKEND_MEMBERS.get(&member) }?;
    unsafe { (*entry).last_used_ns = now };
    Some(backend)
}

/// Pick a backend of `service` for this client (session affinity, else at
/// random). `None` if a slot vanished under us (the set was replaced).
#[inline(always)]
fn pick(ctx: &SockAddrContext, key: &ServiceKey, service: &ServiceValue) -> Option<Backend> {
    let affinity = service.affinity_timeout_secs != 0;
    let mut akey = AffinityKey::default();
    let mut now = 0;
    if affinity {
        // SAFETY: plain helpers valid in sock_addr programs.
        akey = AffinityKey { netns_cookie: unsafe { bpf_get_netns_cookie(ctx.as_ptr()) }, service: *key };
        now = unsafe { bpf_ktime_get_ns() };
        if let Some(b) = remembered(&akey, service, now) {
            return Some(b);
        }
    }
    // SAFETY: as above.
    let slot = unsafe { bpf_get_prandom_u32() } % service.count;
    // SAFETY: the value is copied out at once.
    let backend = *unsafe { BACKENDS.get(&BackendSlot { set: service.backend_set, slot }) }?;
    if affinity {
        let _ = AFFINITY.insert(&akey, &AffinityValue { backend, last_used_ns: now }, 0);
    }
    Some(backend)
}

/// Translate a cluster IP destination to a backend. Returns the program's
/// verdict.
#[inline(always)]
fn translate(ctx: &SockAddrContext, done: SockLbCounter) -> i32 {
    let Some(key) = frontend(ctx) else { return ALLOW };
    // SAFETY: the value is copied out at once.
    let Some(service) = (unsafe { SERVICES.get(&key) }).copied() else { return ALLOW };
    match admission(&service) {
        Admission::Balance => {}
        Admission::Refuse => {
            count(SockLbCounter::RefusedNoEndpoints);
            // SAFETY: a cgroup program's own return value.
            unsafe { bpf_set_retval(-ECONNREFUSED) };
            return REJECT;
        }
        Admission::Unreachable => {
            count(SockLbCounter::RefusedNoLocalEndpoints);
            // SAFETY: as above.
            unsafe { bpf_set_retval(-EHOSTUNREACH) };
            return REJECT;
        }
    }
    let Some(backend) = pick(ctx, &key, &service) else {
        count(SockLbCounter::SlotMissing);
        return ALLOW;
    };
    // SAFETY: `user_ip4` and `user_port` are writable in connect4 and
    // sendmsg4; the port goes back in network byte order.
    unsafe {
        (*ctx.sock_addr).user_ip4 = backend.ip_be;
        (*ctx.sock_addr).user_port = backend.port_be as u32;
    }
    // SAFETY: a plain helper valid in sock_addr programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let _ = SOCK_REVERSE.insert(&ReverseKey { cookie, backend }, &key, 0);
    count(done);
    ALLOW
}

/// Show a backend source or peer as the cluster IP the socket asked for.
#[inline(always)]
fn reverse(ctx: &SockAddrContext) -> i32 {
    // SAFETY: readable in recvmsg4 / getpeername4.
    let (ip, port) = unsafe { ((*ctx.sock_addr).user_ip4, (*ctx.sock_addr).user_port) };
    // SAFETY: a plain helper valid in sock_addr programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let key = ReverseKey { cookie, backend: Backend { ip_be: ip, port_be: port as u16, _pad: 0 } };
    // SAFETY: the value is copied out at once.
    if let Some(frontend) = unsafe { SOCK_REVERSE.get(&key) }.copied() {
        // SAFETY: writable in recvmsg4 and getpeername4.
        unsafe {
            (*ctx.sock_addr).user_ip4 = frontend.vip_be;
            (*ctx.sock_addr).user_port = frontend.port_be as u32;
        }
        count(SockLbCounter::Reversed);
    }
    ALLOW
}

#[cgroup_sock_addr(connect4)]
pub fn sock_connect(ctx: SockAddrContext) -> i32 {
    translate(&ctx, SockLbCounter::Connected)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sock_sendmsg(ctx: SockAddrContext) -> i32 {
    translate(&ctx, SockLbCounter::Sent)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn sock_recvmsg(ctx: SockAddrContext) -> i32 {
    reverse(&ctx)
}

#[cgroup_sock_addr(getpeername4)]
pub fn sock_getpeername(ctx: SockAddrContext) -> i32 {
    reverse(&ctx)
}
