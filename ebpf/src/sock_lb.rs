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
//! An `AF_INET6` socket (Java's default, and any dual-stack program) names
//! a cluster IP v4-mapped, `::ffff:10.96.0.10`. The kernel carries it over
//! IPv4, but runs the IPv6 hooks for `connect()`, `recvmsg()` and
//! `getpeername()`: those programs have IPv6 twins (`sock_connect6`,
//! `sock_recvmsg6`, `sock_getpeername6`) that translate v4-mapped addresses
//! and only those, writing the backend (or the cluster IP) back v4-mapped;
//! a native IPv6 address is an IPv6 Service's (below). An unconnected
//! datagram to a v4-mapped address needs no twin:
//! `udpv6_sendmsg` hands it to `udp_sendmsg` with the IPv4 address before
//! any hook, so `sock_sendmsg` translates it (a `sendmsg6` program never
//! sees a v4-mapped destination, and the kernel refuses one written there
//! with `ENOTSUPP`). The unsuffixed names are the IPv4 programs: pinned
//! links carry them, so they keep them.
//!
//! IPv6 Services (issue 28): a native IPv6 destination is looked up in the
//! IPv6 twins of the maps (`SERVICES6`, `BACKENDS6`, `BACKEND_MEMBERS6`,
//! `SOCK_REVERSE6`, `AFFINITY6`; `sluice_common::services6`) by
//! `translate6`/`reverse6`, on `sock_connect6`, `sock_sendmsg6` (unconnected
//! UDP over IPv6), `sock_recvmsg6` and `sock_getpeername6`; refusals as in
//! IPv4. Cluster, external and LoadBalancer IPs, and IPv6 NodePorts as
//! IPv4's below (`lookup6`): on a node IPv6 address (`NODE_ADDRESSES6`:
//! this node's and the other nodes' IPv6 InternalIPs) or, from the node's
//! own network namespace, on `[::1]`. No IPv6 hostPorts (yet): those are
//! IPv4's only.
//!
//! NodePorts (`SCOPE_NODE_PORT` entries, one per port for every node
//! address): a destination that is not itself a frontend, but is a node
//! address (`NODE_ADDRESSES`: this node's and the other nodes') or, from the
//! node's own network namespace, loopback, is looked up again as a
//! NodePort. The socket still remembers the address it named, so
//! `recvmsg()` / `getpeername()` show `nodeIP:nodePort`.
//!
//! hostPorts (`SCOPE_HOST_PORT*` entries, pods of this node only): a
//! destination that is not itself a frontend but is one of *this* node's
//! addresses (`NODE_ADDRESS_LOCAL`), or loopback from the node, is looked
//! up as a hostPort with that address (`hostIP`), then on every address,
//! before the NodePort entry. Another node's address never matches one:
//! its pods' hostPorts are its own.
//!
//! Every program returns 1 (carry on) except a refusal: 0 with the error
//! set by `bpf_set_retval` (`ECONNREFUSED` when a Service has no
//! endpoints, as kube-proxy's REJECT; `EHOSTUNREACH` when only other
//! nodes have endpoints and the policy is Local).
use core::ptr::{read_volatile, write_volatile};

use aya_ebpf::{
    helpers::generated::{
        bpf_get_netns_cookie, bpf_get_prandom_u32, bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_set_retval,
    },
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
    EbpfContext,
};
use sluice_common::{
    maps::SOCK_LB_BYPASS_MARK,
    services::{
        admission, affinity_fresh, host_port_candidate, is_host_port_scope, is_loopback_be, nodeport_candidate,
        v4_mapped_be, Admission, AffinityKey, AffinityValue, Backend, BackendMember, BackendSlot, ReverseKey,
        ServiceKey, ServiceValue, SockLbCounter, NODE_ADDRESS_LOCAL, SCOPE_ADDRESS, SCOPE_NODE_PORT,
    },
    services6::{
        is_loopback6, native_ipv6, AffinityKey6, AffinityValue6, Backend6, BackendMember6, Ip6Words, ReverseKey6,
        ServiceKey6,
    },
};

use crate::{
    lb6::bytes,
    maps::{
        AFFINITY, AFFINITY6, BACKENDS, BACKENDS6, BACKEND_MEMBERS, BACKEND_MEMBERS6, NODE_ADDRESSES, NODE_ADDRESSES6,
        SERVICES, SERVICES6, SOCK_LB_CONFIG, SOCK_LB_STATS, SOCK_REVERSE, SOCK_REVERSE6,
    },
};

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

/// Is the socket marked to be left alone (`SOCK_LB_BYPASS_MARK`: an
/// outside client's probe)? Counted as `Bypassed`.
#[inline(always)]
fn bypassed(ctx: &SockAddrContext) -> bool {
    // SAFETY: in every sock_addr program `sk` is the calling socket, never
    // null (the verifier types it as a socket), and its `mark` readable.
    // Volatile keeps each a single load of the width the verifier allows.
    let mark = unsafe {
        let sk = read_volatile(&(*ctx.sock_addr).__bindgen_anon_1.sk);
        read_volatile(&(*sk).mark)
    };
    if mark & SOCK_LB_BYPASS_MARK == 0 {
        return false;
    }
    count(SockLbCounter::Bypassed);
    true
}

/// Which hook a program sits on: it decides where the address is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    /// `connect4` & co.: `user_ip4`.
    V4,
    /// `connect6` & co.: `user_ip6`, translated only when v4-mapped.
    V6,
}

/// The IPv4 address the socket call names (network order): `user_ip4`, or
/// the IPv4 address in a v4-mapped `user_ip6`. `None`: native IPv6.
#[inline(always)]
fn address(ctx: &SockAddrContext, family: Family) -> Option<u32> {
    // SAFETY: the kernel hands a valid `bpf_sock_addr`; `user_ip4` is
    // readable on the IPv4 hooks, `user_ip6` on the IPv6 ones. One 4-byte
    // volatile load per word: the verifier refuses wider ctx loads, and
    // volatile keeps the compiler from merging two into one.
    unsafe {
        let sa = ctx.sock_addr;
        match family {
            Family::V4 => Some((*sa).user_ip4),
            Family::V6 => v4_mapped_be([
                read_volatile(&(*sa).user_ip6[0]),
                read_volatile(&(*sa).user_ip6[1]),
                read_volatile(&(*sa).user_ip6[2]),
                read_volatile(&(*sa).user_ip6[3]),
            ]),
        }
    }
}

/// Write `ip_be:port_be` as the call's address. On the IPv6 hooks only the
/// last word changes: the first three already hold the v4-mapped prefix
/// (`address` checked them), so the result is `::ffff:<ip>`.
#[inline(always)]
fn set_address(ctx: &SockAddrContext, family: Family, ip_be: u32, port_be: u16) {
    // SAFETY: `user_ip4` / `user_ip6` and `user_port` are writable (4-byte
    // stores) in every hook these programs sit on; the port goes in
    // network byte order.
    unsafe {
        let sa = ctx.sock_addr;
        match family {
            Family::V4 => (*sa).user_ip4 = ip_be,
            Family::V6 => write_volatile(&mut (*sa).user_ip6[3], ip_be),
        }
        (*sa).user_port = port_be as u32;
    }
}

/// The destination the socket call names, as a frontend key.
#[inline(always)]
fn frontend(ctx: &SockAddrContext, family: Family) -> Option<ServiceKey> {
    // SAFETY: the kernel hands a valid `bpf_sock_addr`; these fields are
    // readable in every sock_addr program.
    let (port, protocol) = unsafe { ((*ctx.sock_addr).user_port, (*ctx.sock_addr).protocol) };
    if protocol != IPPROTO_TCP && protocol != IPPROTO_UDP {
        return None;
    }
    let ip = address(ctx, family)?;
    // `user_port` holds the port in network byte order in its low 16 bits.
    Some(ServiceKey { vip_be: ip, port_be: port as u16, protocol: protocol as u8, scope: SCOPE_ADDRESS })
}

/// Is the call made from the node's own network namespace (not a pod's)?
#[inline(always)]
fn in_host_netns(ctx: &SockAddrContext) -> bool {
    let Some(config) = SOCK_LB_CONFIG.get(0) else { return false };
    // SAFETY: a plain helper valid in sock_addr programs.
    config.host_netns_cookie != 0 && unsafe { bpf_get_netns_cookie(ctx.as_ptr()) } == config.host_netns_cookie
}

/// The `SERVICES` entry for the address the call names, and the key it was
/// found under: the address itself; else, when the address is this
/// node's (`host_port_candidate`), a hostPort entry (with that address,
/// then on every address); else the NodePort entry when the address is a
/// node's (`nodeport_candidate`).
#[inline(always)]
fn lookup(ctx: &SockAddrContext, key: &ServiceKey) -> Option<(ServiceKey, ServiceValue)> {
    // SAFETY: the value is copied out at once.
    if let Some(v) = unsafe { SERVICES.get(key) }.copied() {
        return Some((*key, v));
    }
    // SAFETY: the value is copied out at once.
    let node_address = unsafe { NODE_ADDRESSES.get(&key.vip_be) }.copied();
    // The netns cookie only for loopback: most misses are neither.
    let from_host = node_address.is_none() && is_loopback_be(key.vip_be) && in_host_netns(ctx);
    if host_port_candidate(key.vip_be, node_address == Some(NODE_ADDRESS_LOCAL), from_host) {
        for hp in [
            ServiceKey::host_port_on(key.vip_be, key.port_be, key.protocol),
            ServiceKey::host_port(key.port_be, key.protocol),
        ] {
            // SAFETY: as above.
            if let Some(v) = unsafe { SERVICES.get(&hp) }.copied() {
                return Some((hp, v));
            }
        }
    }
    if !nodeport_candidate(key.vip_be, node_address.is_some(), from_host) {
        return None;
    }
    let np = ServiceKey::node_port(key.port_be, key.protocol);
    // SAFETY: as above.
    let v = unsafe { SERVICES.get(&np) }.copied()?;
    Some((np, v))
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

/// `Some(verdict)` when the call is refused (no endpoints, or none this
/// node may use), with the error set; `None`: balance it.
#[inline(always)]
fn refused(service: &ServiceValue) -> Option<i32> {
    match admission(service) {
        Admission::Balance => None,
        Admission::Refuse => {
            count(SockLbCounter::RefusedNoEndpoints);
            // SAFETY: a cgroup program's own return value.
            unsafe { bpf_set_retval(-ECONNREFUSED) };
            Some(REJECT)
        }
        Admission::Unreachable => {
            count(SockLbCounter::RefusedNoLocalEndpoints);
            // SAFETY: as above.
            unsafe { bpf_set_retval(-EHOSTUNREACH) };
            Some(REJECT)
        }
    }
}

/// Translate a cluster IP destination to a backend. Returns the program's
/// verdict.
#[inline(always)]
fn translate(ctx: &SockAddrContext, family: Family, done: SockLbCounter) -> i32 {
    if bypassed(ctx) {
        return ALLOW;
    }
    let Some(named) = frontend(ctx, family) else { return ALLOW };
    let Some((key, service)) = lookup(ctx, &named) else { return ALLOW };
    if let Some(verdict) = refused(&service) {
        return verdict;
    }
    let Some(backend) = pick(ctx, &key, &service) else {
        count(SockLbCounter::SlotMissing);
        return ALLOW;
    };
    set_address(ctx, family, backend.ip_be, backend.port_be);
    // SAFETY: a plain helper valid in sock_addr programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // What the socket named (a NodePort: the node address it used), with
    // the entry's scope: `entry_key()` finds the entry again.
    let remembered = ServiceKey { scope: key.scope, ..named };
    let _ = SOCK_REVERSE.insert(&ReverseKey { cookie, backend }, &remembered, 0);
    count(done);
    if family == Family::V6 {
        count(SockLbCounter::V4Mapped);
    }
    if key.scope == SCOPE_NODE_PORT {
        count(SockLbCounter::NodePort);
    } else if is_host_port_scope(key.scope) {
        count(SockLbCounter::HostPort);
    }
    ALLOW
}

/// Show a backend source or peer as the cluster IP the socket asked for.
#[inline(always)]
fn reverse(ctx: &SockAddrContext, family: Family) -> i32 {
    let Some(ip) = address(ctx, family) else { return ALLOW };
    // SAFETY: readable in every sock_addr program.
    let port = unsafe { (*ctx.sock_addr).user_port };
    // SAFETY: a plain helper valid in sock_addr programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let key = ReverseKey { cookie, backend: Backend { ip_be: ip, port_be: port as u16, _pad: 0 } };
    // SAFETY: the value is copied out at once.
    if let Some(frontend) = unsafe { SOCK_REVERSE.get(&key) }.copied() {
        set_address(ctx, family, frontend.vip_be, frontend.port_be);
        count(SockLbCounter::Reversed);
    }
    ALLOW
}

/// The four words of `user_ip6` (each in network order).
#[inline(always)]
fn address6(ctx: &SockAddrContext) -> Ip6Words {
    // SAFETY: `user_ip6` is readable on the IPv6 hooks; one 4-byte volatile
    // load per word (see `address`).
    unsafe {
        let sa = ctx.sock_addr;
        [
            read_volatile(&(*sa).user_ip6[0]),
            read_volatile(&(*sa).user_ip6[1]),
            read_volatile(&(*sa).user_ip6[2]),
            read_volatile(&(*sa).user_ip6[3]),
        ]
    }
}

/// Write `ip:port_be` as the call's IPv6 address.
#[inline(always)]
fn set_address6(ctx: &SockAddrContext, ip: &Ip6Words, port_be: u16) {
    // SAFETY: `user_ip6` and `user_port` are writable (4-byte stores) on
    // the IPv6 hooks these programs sit on.
    unsafe {
        let sa = ctx.sock_addr;
        write_volatile(&mut (*sa).user_ip6[0], ip[0]);
        write_volatile(&mut (*sa).user_ip6[1], ip[1]);
        write_volatile(&mut (*sa).user_ip6[2], ip[2]);
        write_volatile(&mut (*sa).user_ip6[3], ip[3]);
        (*sa).user_port = port_be as u32;
    }
}

/// The IPv6 frontend the call names, if native IPv6 TCP or UDP (a
/// v4-mapped address is the IPv4 path's).
#[inline(always)]
fn frontend6(ctx: &SockAddrContext) -> Option<ServiceKey6> {
    // SAFETY: readable in every sock_addr program.
    let (port, protocol) = unsafe { ((*ctx.sock_addr).user_port, (*ctx.sock_addr).protocol) };
    if protocol != IPPROTO_TCP && protocol != IPPROTO_UDP {
        return None;
    }
    let ip = address6(ctx);
    if !native_ipv6(ip) {
        return None;
    }
    Some(ServiceKey6::address(ip, port as u16, protocol as u8))
}

/// `lookup`'s IPv6 twin: the `SERVICES6` entry for the address the call
/// names, and the key it was found under: the address itself; else the
/// NodePort entry when the address is a node's IPv6 (`NODE_ADDRESSES6`,
/// this node's or another's) or, from the node's own network namespace,
/// `::1` (`services::nodeport_candidate`'s rule).
#[inline(always)]
fn lookup6(ctx: &SockAddrContext, key: &ServiceKey6) -> Option<(ServiceKey6, ServiceValue)> {
    // SAFETY: the value is copied out at once.
    if let Some(v) = unsafe { SERVICES6.get(key) }.copied() {
        return Some((*key, v));
    }
    // SAFETY: only presence is read.
    let node_address = unsafe { NODE_ADDRESSES6.get(bytes(&key.vip)) }.is_some();
    // The netns cookie only for loopback: most misses are neither.
    let from_host = !node_address && is_loopback6(key.vip) && in_host_netns(ctx);
    if !node_address && !from_host {
        return None;
    }
    let np = ServiceKey6::node_port(key.port_be, key.protocol);
    // SAFETY: as above.
    let v = unsafe { SERVICES6.get(&np) }.copied()?;
    Some((np, v))
}

/// `remembered` for IPv6 frontends.
#[inline(always)]
fn remembered6(key: &AffinityKey6, service: &ServiceValue, now: u64) -> Option<Backend6> {
    let entry = AFFINITY6.get_ptr_mut(key)?;
    // SAFETY: a valid map value pointer; a racing writer can only leave
    // another valid backend and time.
    let (backend, last_used) = unsafe { ((*entry).backend, (*entry).last_used_ns) };
    if !affinity_fresh(last_used, now, service.affinity_timeout_secs) {
        return None;
    }
    let member = BackendMember6 { set: service.backend_set, backend };
    // SAFETY: only presence is read.
    unsafe { BACKEND_MEMBERS6.get(&member) }?;
    unsafe { (*entry).last_used_ns = now };
    Some(backend)
}

/// `pick` for IPv6 frontends.
#[inline(always)]
fn pick6(ctx: &SockAddrContext, key: &ServiceKey6, service: &ServiceValue) -> Option<Backend6> {
    let affinity = service.affinity_timeout_secs != 0;
    let mut akey = AffinityKey6::default();
    let mut now = 0;
    if affinity {
        // SAFETY: plain helpers valid in sock_addr programs.
        akey = AffinityKey6 { netns_cookie: unsafe { bpf_get_netns_cookie(ctx.as_ptr()) }, service: *key, _pad: 0 };
        now = unsafe { bpf_ktime_get_ns() };
        if let Some(b) = remembered6(&akey, service, now) {
            return Some(b);
        }
    }
    // SAFETY: as above.
    let slot = unsafe { bpf_get_prandom_u32() } % service.count;
    // SAFETY: the value is copied out at once.
    let backend = *unsafe { BACKENDS6.get(&BackendSlot { set: service.backend_set, slot }) }?;
    if affinity {
        let _ = AFFINITY6.insert(&akey, &AffinityValue6 { backend, _pad: 0, last_used_ns: now }, 0);
    }
    Some(backend)
}

/// Translate a native IPv6 Service address to a backend (`translate`'s
/// twin). Returns the program's verdict.
#[inline(always)]
fn translate6(ctx: &SockAddrContext, done: SockLbCounter) -> i32 {
    if bypassed(ctx) {
        return ALLOW;
    }
    let Some(named) = frontend6(ctx) else { return ALLOW };
    let Some((key, service)) = lookup6(ctx, &named) else { return ALLOW };
    if let Some(verdict) = refused(&service) {
        return verdict;
    }
    let Some(backend) = pick6(ctx, &key, &service) else {
        count(SockLbCounter::SlotMissing);
        return ALLOW;
    };
    set_address6(ctx, &backend.ip, backend.port_be);
    // SAFETY: a plain helper valid in sock_addr programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // What the socket named (a NodePort: the node address it used), with
    // the entry's scope, as `translate` remembers it.
    let remembered = ServiceKey6 { scope: key.scope, ..named };
    let _ = SOCK_REVERSE6.insert(&ReverseKey6 { cookie, backend, _pad: 0 }, &remembered, 0);
    count(done);
    if key.scope == SCOPE_NODE_PORT {
        count(SockLbCounter::NodePort);
    }
    ALLOW
}

/// Show an IPv6 backend source or peer as the Service address the socket
/// asked for (`reverse`'s twin).
#[inline(always)]
fn reverse6(ctx: &SockAddrContext) -> i32 {
    let ip = address6(ctx);
    // SAFETY: readable in every sock_addr program.
    let port = unsafe { (*ctx.sock_addr).user_port };
    // SAFETY: a plain helper valid in sock_addr programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let key = ReverseKey6 { cookie, backend: Backend6 { ip, port_be: port as u16, _pad: 0 }, _pad: 0 };
    // SAFETY: the value is copied out at once.
    if let Some(frontend) = unsafe { SOCK_REVERSE6.get(&key) }.copied() {
        set_address6(ctx, &frontend.vip, frontend.port_be);
        count(SockLbCounter::Reversed);
    }
    ALLOW
}

/// Is the IPv6 call's address v4-mapped (the IPv4 path's)?
#[inline(always)]
fn v4_mapped(ctx: &SockAddrContext) -> bool {
    address(ctx, Family::V6).is_some()
}

#[cgroup_sock_addr(connect4)]
pub fn sock_connect(ctx: SockAddrContext) -> i32 {
    translate(&ctx, Family::V4, SockLbCounter::Connected)
}

#[cgroup_sock_addr(connect6)]
pub fn sock_connect6(ctx: SockAddrContext) -> i32 {
    if v4_mapped(&ctx) {
        translate(&ctx, Family::V6, SockLbCounter::Connected)
    } else {
        translate6(&ctx, SockLbCounter::Connected)
    }
}

/// Unconnected UDP over IPv6 to a native IPv6 Service address (a
/// v4-mapped one never reaches this hook).
#[cgroup_sock_addr(sendmsg6)]
pub fn sock_sendmsg6(ctx: SockAddrContext) -> i32 {
    translate6(&ctx, SockLbCounter::Sent)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sock_sendmsg(ctx: SockAddrContext) -> i32 {
    translate(&ctx, Family::V4, SockLbCounter::Sent)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn sock_recvmsg(ctx: SockAddrContext) -> i32 {
    reverse(&ctx, Family::V4)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn sock_recvmsg6(ctx: SockAddrContext) -> i32 {
    if v4_mapped(&ctx) {
        reverse(&ctx, Family::V6)
    } else {
        reverse6(&ctx)
    }
}

#[cgroup_sock_addr(getpeername4)]
pub fn sock_getpeername(ctx: SockAddrContext) -> i32 {
    reverse(&ctx, Family::V4)
}

#[cgroup_sock_addr(getpeername6)]
pub fn sock_getpeername6(ctx: SockAddrContext) -> i32 {
    if v4_mapped(&ctx) {
        reverse(&ctx, Family::V6)
    } else {
        reverse6(&ctx)
    }
}
