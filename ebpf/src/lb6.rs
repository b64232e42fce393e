//! IPv6 Services from outside the cluster, per packet (issues 27 × 28;
//! the table is described in `sluice_common::nat6`): `lb4`'s twin for a
//! dual-stack node's IPv6 frontends.
//!
//! - `from_uplink`, a client's packet: through its `NAT6` forward entry,
//!   or, new, to a frontend reachable from outside (`[nodeIPv6]:nodePort`
//!   on one of this node's IPv6 addresses, `NODE_ADDRESSES6`; an IPv6
//!   external or LoadBalancer ingress IP, `SERVICES6`): a backend picked,
//!   the pair of entries written, the packet DNATed into the local backend
//!   (through the one door, `deliver::enter_pod6`) or DNATed and SNATed
//!   (the address the client used, a port from the SNAT range of
//!   `LB4_CONFIG`) to the backend's node (`NODE_ROUTES6`, natively).
//! - `from_uplink`, a remote backend's answer to a SNAT port: through its
//!   reply entry, back to the client, out of the uplink.
//! - `from_pod6`, a local backend's answer to an outside client: the same.
//! - A new connection to a frontend of a Service without endpoints:
//!   refused as kube-proxy's `REJECT` (a TCP RST, an ICMPv6 port
//!   unreachable: `sluice_common::reject`), counted as
//!   `service_no_endpoints`.
//!
//! Not (yet) for IPv6: direct server return (a remote backend is always
//! SNATed), session affinity (every new connection is balanced at
//! random), a backend's node reached over VXLAN
//! (`no_tunnel`), TCP close tracking (the GC keeps a closed connection
//! for its protocol's timeout), fragments (to the stack, counted as
//! `fragment_passed` in `NAT6_STATS`). A packet with extension headers
//! is the stack's.
//!
//! The work is in BPF global functions (`sluice_lb6_*`), each called from
//! the program's own frame, as `lb4`'s (Linux 6.1's 512 bytes of stack per
//! call chain). Their answers are `lb4`'s codes. The packet's tuple, keys
//! and entries are built in `LB6_SCRATCH`, never on the stack.
use aya_ebpf::{
    bindings::{
        __sk_buff, bpf_redir_neigh, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_NOEXIST, TC_ACT_REDIRECT, TC_ACT_SHOT,
    },
    helpers::{
        bpf_get_prandom_u32, bpf_ktime_get_coarse_ns, bpf_redirect, bpf_redirect_neigh, bpf_skb_change_tail,
        bpf_skb_load_bytes, bpf_skb_store_bytes,
    },
    maps::lpm_trie::Key,
    programs::TcContext,
};
use sluice_common::{
    maps::{FAST_PATH_MARK, REMOTE_NODE_VXLAN},
    nat::{
        may_take_over, reachable_from_outside, Lb4Config, Nat4Counter, LB4_ENABLED, NAT4_FORWARD, NAT4_REPLY,
        NAT4_REPLY_SEEN, NAT4_SNAT, SNAT_PORT_TRIES,
    },
    nat6::{Nat6Entry, Nat6Key, SourceRangeKey6, SOURCE_RANGE6_FRONTEND_BITS},
    reject,
    services::{
        frontend_kind_of, local_backend_count, BackendSlot, ServiceValue, NODE_ADDRESS_LOCAL, SCOPE_ADDRESS,
        SCOPE_NODE_PORT, SERVICE_EXTERNAL_LOCAL, SERVICE_NO_LOCAL_ENDPOINTS, SERVICE_SOURCE_RANGES,
    },
    services6::{Backend6, ServiceKey6},
    DropReason, ForwardPath, HookDirection,
};

use crate::{
    counters::{count_detail, count_drop, count_forward},
    deliver::{enter_pod6, Origin},
    forward,
    lb4::{code, reason_from, LB4_NEW_CONNECTION, LB4_PASS, LB4_REFUSE, LB4_SEND_NEW, LB4_SENT, LB4_TO_LOCAL_POD},
    maps::{
        BACKENDS6, ENDPOINTS6, LB4_CONFIG, LB6_SCRATCH, LB6_SOURCE_RANGES, NAT6, NAT6_STATS, NODE_ADDRESSES6,
        NODE_CONFIG, NODE_ROUTES6, SERVICES6,
    },
    parse::{self, Ipv6Hdr, ETH_HLEN},
};

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_FRAGMENT: u8 = 44;
const AF_INET6: u32 = 10;
/// Where the transport header starts: after Ethernet and the fixed IPv6
/// header (a packet with extension headers is the stack's).
const L4_OFF6: usize = ETH_HLEN + 40;
const IP6_SRC_OFF: usize = ETH_HLEN + 8;
const TCP_CSUM_OFF6: usize = L4_OFF6 + 16;
const UDP_CSUM_OFF6: usize = L4_OFF6 + 6;
/// A `last_seen_ns` is refreshed at most this often.
const LAST_SEEN_REFRESH_NS: u64 = 1_000_000_000;

/// Value of `LB6_SCRATCH` (per-CPU array of one): the IPv6 translation's
/// keys and entries, built off the stack (`lb4_scratch::Lb4Scratch`'s
/// twin), and what `sluice_lb6_from_uplink` hands the functions after it.
#[repr(C)]
pub struct Lb6Scratch {
    /// The packet's tuple as it arrived (a key of `NAT6`).
    pub key: Nat6Key,
    /// A new connection's frontend, its `SERVICES6` value.
    pub frontend: ServiceKey6,
    pub service: ServiceValue,
    /// The packet's hop limit.
    pub hop_limit: u32,
    /// The entry the packet is translated by (a new connection's forward
    /// entry, once written; an existing one's, copied).
    pub entry: Nat6Entry,
    /// A new connection's reply key and entry.
    pub reply_key: Nat6Key,
    pub reply: Nat6Entry,
    /// The backend picked.
    pub backend: Backend6,
    /// A `NODE_ROUTES6` lookup.
    pub route: Key<[u8; 16]>,
    /// A `LB6_SOURCE_RANGES` lookup.
    pub range: Key<SourceRangeKey6>,
    /// The next hop of a packet to a backend's node.
    pub nh: bpf_redir_neigh,
    /// A refusal being built (`sluice_lb6_refuse`): in map memory, as the
    /// frame would not fit beside `from_uplink`'s on the stack.
    pub frame: [u8; reject::ICMP6_UNREACHABLE_LEN],
}

#[inline(always)]
fn count(counter: Nat4Counter) {
    if let Some(n) = NAT6_STATS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe { *n += 1 }
    }
}

/// What the caller does with the global functions' answer (`lb4::Lb4`'s
/// IPv6 subset).
pub enum Lb6 {
    Pass,
    ToLocalPod,
    Sent,
    Refuse,
}

#[inline(always)]
fn outcome(code: u32) -> Result<Lb6, DropReason> {
    match code {
        LB4_PASS => Ok(Lb6::Pass),
        LB4_TO_LOCAL_POD => Ok(Lb6::ToLocalPod),
        LB4_SENT => Ok(Lb6::Sent),
        LB4_REFUSE => Ok(Lb6::Refuse),
        _ => Err(reason_from(code)),
    }
}

/// `from_uplink`'s IPv6 step: see the module doc.
#[inline(always)]
pub fn from_uplink(ctx: &TcContext) -> Result<Lb6, DropReason> {
    match sluice_lb6_from_uplink(ctx.skb.skb) {
        LB4_NEW_CONNECTION => match sluice_lb6_new_connection() {
            LB4_SEND_NEW => outcome(sluice_lb6_send_new(ctx.skb.skb)),
            code => outcome(code),
        },
        code => outcome(code),
    }
}

/// `from_pod6`'s step, for a packet its verdict sends to the stack.
#[inline(always)]
pub fn reply_from_pod(ctx: &TcContext) -> Result<Lb6, DropReason> {
    outcome(sluice_lb6_reply_from_pod(ctx.skb.skb))
}

/// Into the local backend a translated packet's new destination is
/// (`LB4_TO_LOCAL_POD`), through the one door (NetworkPolicy judged
/// there); the TC action. Inlined into `from_uplink6::sluice_from_uplink6`
/// as its own delivery is: one more global function's frame would take
/// the policy judgement under it past Linux 6.1's 512 bytes.
#[inline(always)]
pub fn to_local_backend(ctx: &TcContext) -> Result<i32, DropReason> {
    try_to_local_backend(ctx)
}

#[inline(always)]
fn try_to_local_backend(ctx: &TcContext) -> Result<i32, DropReason> {
    let ip6: *const Ipv6Hdr = parse::header_mut(ctx, ETH_HLEN)?;
    // SAFETY: bounds checked by header_mut; the key is read in place.
    let Some(ep) = (unsafe { ENDPOINTS6.get(&(*ip6).dst) }) else {
        return Err(DropReason::LookupMismatch);
    };
    let (action, _) = enter_pod6(ctx, ep, Origin::Uplink)?;
    // Counted here, without a trace event: `from_uplink`'s frame has no
    // room for another.
    count_detail(ForwardPath::UplinkToService);
    Ok(action)
}

/// Refuse a new connection to a Service without endpoints (`lb4::refuse`'s
/// twin): counted as a drop (`service_no_endpoints`, by the global
/// function: `from_uplink`'s frame has no room for the trace event),
/// answered with a TCP RST or an ICMPv6 port unreachable back out of the
/// interface it came in on. Returns the TC action.
#[inline(always)]
pub fn refuse(ctx: &TcContext) -> i32 {
    let tcp = matches!(ctx.load::<u8>(ETH_HLEN + 6), Ok(IPPROTO_TCP));
    // One global function per answer: each one's checksum, unrolled,
    // spills registers of its own; together they would not fit beside
    // `from_uplink`'s frame.
    let sent = if tcp { sluice_lb6_reset(ctx.skb.skb) } else { sluice_lb6_unreachable(ctx.skb.skb) };
    match sent {
        LB4_SENT => TC_ACT_REDIRECT as i32,
        _ => TC_ACT_SHOT as i32,
    }
}

/// A TCP RST for the segment.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn sluice_lb6_reset(skb: *mut __sk_buff) -> u32 {
    let ctx = TcContext::new(skb);
    code(try_refuse::<true>(&ctx))
}

/// An ICMPv6 port unreachable for the datagram.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn sluice_lb6_unreachable(skb: *mut __sk_buff) -> u32 {
    let ctx = TcContext::new(skb);
    code(try_refuse::<false>(&ctx))
}

#[inline(always)]
fn try_refuse<const TCP: bool>(ctx: &TcContext) -> Result<u32, DropReason> {
    count_drop(ctx, DropReason::ServiceNoEndpoints, HookDirection::Ingress);
    let ifindex = parse::ifindex(ctx);
    let tcp = TCP;
    let len = if tcp { reject::TCP_RESET6_LEN } else { reject::ICMP6_UNREACHABLE_LEN };
    // SAFETY: helper call on the program's own packet.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, len as u32, 0) } != 0 {
        return Err(DropReason::HeaderRewrite);
    }
    let Some(scratch) = LB6_SCRATCH.get_ptr_mut(0) else { return Err(DropReason::LookupMismatch) };
    // SAFETY: this CPU's slot, used by this program run alone.
    let buf = unsafe { (*scratch).frame.as_mut_ptr() };
    // SAFETY: `len` bytes fit the scratch's frame; the packet is `len`
    // long now.
    if unsafe { bpf_skb_load_bytes(ctx.skb.skb as *const _, 0, buf as *mut _, len as u32) } != 0 {
        return Err(DropReason::Truncated);
    }
    // SAFETY: the first `len` bytes were written by the helper above;
    // an ICMPv6 error's quote (48 bytes from the IPv6 header on) is loaded
    // in place too.
    unsafe {
        if tcp {
            reject::tcp_reset6(&mut *(buf as *mut [u8; reject::TCP_RESET6_LEN]));
        } else {
            let quote = buf.add(reject::ICMP6_QUOTE_OFF);
            if bpf_skb_load_bytes(ctx.skb.skb as *const _, ETH_HLEN as u32, quote as *mut _, 48) != 0 {
                return Err(DropReason::Truncated);
            }
            reject::icmp6_port_unreachable_quoted(&mut *(buf as *mut [u8; reject::ICMP6_UNREACHABLE_LEN]));
        }
    }
    // SAFETY: as above.
    if unsafe { bpf_skb_store_bytes(ctx.skb.skb, 0, buf as *const _, len as u32, 0) } != 0 {
        return Err(DropReason::HeaderRewrite);
    }
    ctx.set_mark(parse::mark(ctx) | FAST_PATH_MARK);
    // SAFETY: helper call; back out of the device it came in on.
    let rc = unsafe { bpf_redirect(ifindex, 0) };
    if rc as i32 != TC_ACT_REDIRECT as i32 {
        return Err(DropReason::RedirectFailed);
    }
    Ok(LB4_SENT)
}

/// The uplink's settings, when the translation is on.
#[inline(always)]
fn config() -> Option<Lb4Config> {
    match LB4_CONFIG.get(0) {
        Some(c) if c.flags & LB4_ENABLED != 0 => Some(*c),
        _ => None,
    }
}

/// An address of the scratch's keys as the `[u8; 16]` the address maps
/// are keyed by (the same bytes).
#[inline(always)]
pub(crate) fn bytes(words: &[u32; 4]) -> &[u8; 16] {
    // SAFETY: 16 bytes either way, and u8's alignment is 1.
    unsafe { &*(words as *const [u32; 4] as *const [u8; 16]) }
}

/// Read the TCP or UDP tuple of a plain IPv6 packet (no extension header)
/// into `scratch.key` (as `direction`), its hop limit into
/// `scratch.hop_limit`. `Ok(false)`: not such a packet; a fragment is
/// counted (`fragment_passed`) when `count_fragment`.
#[inline(always)]
fn tuple(ctx: &TcContext, scratch: *mut Lb6Scratch, direction: u8) -> Result<bool, DropReason> {
    if parse::ether_type_be(ctx)? != parse::ETH_P_IPV6.to_be() {
        return Ok(false);
    }
    let ip6: *const Ipv6Hdr = parse::header_mut(ctx, ETH_HLEN)?;
    // SAFETY: bounds checked by header_mut.
    let (version, next_header, hop_limit) =
        unsafe { ((*ip6).version_class_flow[0] >> 4, (*ip6).next_header, (*ip6).hop_limit) };
    if version != 6 {
        return Ok(false);
    }
    if next_header == IPPROTO_FRAGMENT {
        // SAFETY: the key is read in place; only presence is read.
        if unsafe { ENDPOINTS6.get(&(*ip6).dst) }.is_none() {
            count(Nat4Counter::FragmentPassed);
        }
        return Ok(false);
    }
    if next_header != IPPROTO_TCP && next_header != IPPROTO_UDP {
        return Ok(false);
    }
    // SAFETY: this CPU's slot; the helpers write the addresses (contiguous
    // in the key, as in the packet) and the ports.
    unsafe {
        let key = &mut (*scratch).key;
        if bpf_skb_load_bytes(ctx.skb.skb as *const _, IP6_SRC_OFF as u32, key.src.as_mut_ptr() as *mut _, 32) != 0
            || bpf_skb_load_bytes(
                ctx.skb.skb as *const _,
                L4_OFF6 as u32,
                &mut key.src_port_be as *mut u16 as *mut _,
                4,
            ) != 0
        {
            return Err(DropReason::Truncated);
        }
        key.protocol = next_header;
        key.direction = direction;
        key._pad = [0; 2];
        (*scratch).hop_limit = hop_limit as u32;
    }
    Ok(true)
}

#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn sluice_lb6_from_uplink(skb: *mut __sk_buff) -> u32 {
    let ctx = TcContext::new(skb);
    code(try_from_uplink(&ctx))
}

#[inline(always)]
fn try_from_uplink(ctx: &TcContext) -> Result<u32, DropReason> {
    let Some(config) = config() else { return Ok(LB4_PASS) };
    let Some(scratch) = LB6_SCRATCH.get_ptr_mut(0) else { return Err(DropReason::LookupMismatch) };
    if !tuple(ctx, scratch, NAT4_FORWARD)? {
        return Ok(LB4_PASS);
    }
    // SAFETY: this CPU's slot, used by this program run alone.
    let key = unsafe { &mut (*scratch).key };
    // For a pod of this node: pod traffic, never a frontend.
    // SAFETY: only presence is read.
    if unsafe { ENDPOINTS6.get(bytes(&key.dst)) }.is_some() {
        return Ok(LB4_PASS);
    }
    // A remote backend's answer to one of our SNAT ports.
    if config.in_snat_range(u16::from_be(key.dst_port_be)) {
        key.direction = NAT4_REPLY;
        if let Some(entry) = NAT6.get_ptr_mut(&*key) {
            return reverse(ctx, scratch, entry);
        }
        key.direction = NAT4_FORWARD;
    }
    // A client's packet of a connection already translated.
    if let Some(entry) = NAT6.get_ptr_mut(&*key) {
        touch(entry, false);
        count(Nat4Counter::Forwarded);
        // SAFETY: copied into the scratch at once.
        unsafe { (*scratch).entry = *entry };
        return send_forward(ctx, scratch);
    }
    admit(ctx, scratch)
}

/// Is a client's packet of no connection `NAT6` knows a new connection to
/// a frontend reachable from outside? Then `LB4_NEW_CONNECTION`, its
/// frontend and Service left in the scratch.
#[inline(always)]
fn admit(ctx: &TcContext, scratch: *mut Lb6Scratch) -> Result<u32, DropReason> {
    if !frontend(scratch) {
        return Ok(LB4_PASS);
    }
    // SAFETY: this CPU's slot.
    let (key, frontend, service) = unsafe { (&(*scratch).key, &(*scratch).frontend, &(*scratch).service) };
    if !reachable_from_outside(frontend_kind_of(frontend.scope, service)) {
        return Ok(LB4_PASS);
    }
    // loadBalancerSourceRanges: the client must be in one of the
    // frontend's (`LB6_SOURCE_RANGES`), else dropped, as `lb4` does.
    let ranged = service.flags & SERVICE_SOURCE_RANGES != 0;
    if ranged && !in_source_ranges(scratch) {
        return Err(DropReason::LoadBalancerSourceRange);
    }
    if key.protocol == IPPROTO_TCP && !is_syn(ctx) {
        return Ok(LB4_PASS);
    }
    if service.count == 0 {
        return Ok(LB4_REFUSE);
    }
    if service.flags & SERVICE_NO_LOCAL_ENDPOINTS != 0 {
        return Err(DropReason::ServiceNoEndpoints);
    }
    // SAFETY: as above.
    if unsafe { (*scratch).hop_limit } <= 1 {
        return Err(DropReason::TtlExpired);
    }
    Ok(LB4_NEW_CONNECTION)
}

/// Find the `SERVICES6` entry for the packet's destination (into the
/// scratch): the address itself (external IPs, LoadBalancer IPs; a
/// ClusterIP too, which the caller refuses), else, when the address is
/// this node's own, a NodePort.
#[inline(always)]
fn frontend(scratch: *mut Lb6Scratch) -> bool {
    // SAFETY: this CPU's slot; fields no other reference is held to.
    let (key, frontend, service) = unsafe { (&(*scratch).key, &mut (*scratch).frontend, &mut (*scratch).service) };
    frontend.vip = key.dst;
    frontend.port_be = key.dst_port_be;
    frontend.protocol = key.protocol;
    frontend.scope = SCOPE_ADDRESS;
    // SAFETY: copied out at once.
    if let Some(v) = unsafe { SERVICES6.get(&*frontend) } {
        *service = *v;
        return true;
    }
    // SAFETY: copied out at once.
    match unsafe { NODE_ADDRESSES6.get(bytes(&key.dst)) }.copied() {
        Some(NODE_ADDRESS_LOCAL) => {}
        _ => return false,
    }
    frontend.vip = [0; 4];
    frontend.scope = SCOPE_NODE_PORT;
    // SAFETY: as above.
    match unsafe { SERVICES6.get(&*frontend) } {
        Some(v) => {
            *service = *v;
            true
        }
        None => false,
    }
}

/// Is the client in one of the `loadBalancerSourceRanges` of the
/// scratch's frontend (`lb4::in_source_ranges`' twin)? The lookup key is
/// built in the scratch.
#[inline(always)]
fn in_source_ranges(scratch: *mut Lb6Scratch) -> bool {
    // SAFETY: this CPU's slot; distinct fields.
    let (key, frontend, range) = unsafe { (&(*scratch).key, &(*scratch).frontend, &mut (*scratch).range) };
    range.prefix_len = SOURCE_RANGE6_FRONTEND_BITS + 128;
    range.data.vip = frontend.vip;
    range.data.port_be = frontend.port_be;
    range.data.protocol = frontend.protocol;
    range.data._pad = 0;
    range.data.src = key.src;
    LB6_SOURCE_RANGES.get(&*range).is_some()
}

/// Is this TCP segment a SYN without ACK?
#[inline(always)]
fn is_syn(ctx: &TcContext) -> bool {
    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    match parse::header_mut::<u8>(ctx, L4_OFF6 + 13) {
        // SAFETY: bounds checked by header_mut.
        Ok(flags) => unsafe { *flags & (SYN | ACK) == SYN },
        Err(_) => false,
    }
}

/// A new connection `sluice_lb6_from_uplink` admitted: a backend picked,
/// the pair written (the forward entry left in the scratch for
/// `sluice_lb6_send_new`).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn sluice_lb6_new_connection() -> u32 {
    code(try_new_connection())
}

#[inline(always)]
fn try_new_connection() -> Result<u32, DropReason> {
    let Some(config) = config() else { return Ok(LB4_PASS) };
    // The agent is carrying NAT4 or NAT6 over to a new layout
    // (`LB4_PAUSED`, one flag for both tables): held back as `lb4` does,
    // the client retransmits into the new table.
    if crate::lb4::paused() {
        return Err(DropReason::Nat4Migrating);
    }
    let Some(scratch) = LB6_SCRATCH.get_ptr_mut(0) else { return Err(DropReason::LookupMismatch) };
    pick(scratch)?;
    new_connection(scratch, &config)?;
    Ok(LB4_SEND_NEW)
}

/// The backend for a new connection (into the scratch): with
/// `externalTrafficPolicy: Local` one of this node's, which the agent puts
/// first in the set; at random.
#[inline(always)]
fn pick(scratch: *mut Lb6Scratch) -> Result<(), DropReason> {
    // SAFETY: this CPU's slot.
    let service = unsafe { &(*scratch).service };
    let local_only = service.flags & SERVICE_EXTERNAL_LOCAL != 0;
    let choices = if local_only { local_backend_count(service.flags) } else { service.count };
    if choices == 0 {
        return Err(DropReason::ServiceNoLocalEndpoints);
    }
    // SAFETY: a plain helper.
    let slot = unsafe { bpf_get_prandom_u32() } % choices;
    // SAFETY: copied out at once.
    match unsafe { BACKENDS6.get(&BackendSlot { set: service.backend_set, slot }) } {
        // SAFETY: as above.
        Some(b) => unsafe { (*scratch).backend = *b },
        None => return Err(DropReason::LookupMismatch),
    }
    Ok(())
}

/// The pair of entries for the scratch's new connection and backend
/// written (`lb4::new_connection`'s twin, without DSR): the forward entry
/// left in `scratch.entry`. A backend on another node gets a SNAT port,
/// reserved by its reply entry before anything else is written.
#[inline(always)]
fn new_connection(scratch: *mut Lb6Scratch, config: &Lb4Config) -> Result<(), DropReason> {
    // SAFETY: this CPU's slot; distinct fields.
    let (key, backend, entry, reply_key, reply) = unsafe {
        (&(*scratch).key, &(*scratch).backend, &mut (*scratch).entry, &mut (*scratch).reply_key, &mut (*scratch).reply)
    };
    // SAFETY: a plain helper.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    // The answer leaves as from the frontend the client named.
    reply.src = key.dst;
    reply.dst = key.src;
    reply.src_port_be = key.dst_port_be;
    reply.dst_port_be = key.src_port_be;
    reply.next_hop = [0; 4];
    reply.flags = 0;
    reply.last_seen_ns = now;
    entry.src = key.src;
    entry.dst = backend.ip;
    entry.src_port_be = key.src_port_be;
    entry.dst_port_be = backend.port_be;
    entry.next_hop = [0; 4];
    entry.flags = 0;
    entry.last_seen_ns = now;
    reply_key.src = backend.ip;
    reply_key.dst = key.src;
    reply_key.src_port_be = backend.port_be;
    reply_key.dst_port_be = key.src_port_be;
    reply_key.protocol = key.protocol;
    reply_key.direction = NAT4_REPLY;
    reply_key._pad = [0; 2];
    // SAFETY: only presence is read.
    let local = unsafe { ENDPOINTS6.get(bytes(&backend.ip)) }.is_some();
    if local {
        if NAT6.insert(&*reply_key, &*reply, BPF_NOEXIST as u64).is_err() {
            return Err(insert_refused(&*reply_key));
        }
        count(Nat4Counter::NewLocal);
    } else {
        // SAFETY: this CPU's slot.
        let route = unsafe { &mut (*scratch).route };
        route.prefix_len = 128;
        route.data = *bytes(&backend.ip);
        let Some(node) = NODE_ROUTES6.get(&*route) else {
            // Neither here nor on a node we know: nothing to send it to.
            return Err(DropReason::LookupMismatch);
        };
        if node.flags & REMOTE_NODE_VXLAN != 0 {
            // IPv6 Services to a backend over VXLAN: not yet.
            return Err(DropReason::NoTunnel);
        }
        entry.next_hop = forward::words(&node.node_ip6);
        // The address the client used: a NodePort's is this node's own;
        // an external or LoadBalancer IP needs the node's IPv6 address,
        // which the datapath has not been given (not yet: refused).
        // SAFETY: only presence is read.
        match unsafe { NODE_ADDRESSES6.get(bytes(&key.dst)) }.copied() {
            Some(NODE_ADDRESS_LOCAL) => {}
            _ => return Err(DropReason::NoUplink),
        }
        reply_key.dst = key.dst;
        // SAFETY: a plain helper.
        let seed = unsafe { bpf_get_prandom_u32() };
        let mut reserved = false;
        let mut attempt = 0;
        while attempt < SNAT_PORT_TRIES {
            reply_key.dst_port_be = config.snat_port(seed, attempt).to_be();
            match NAT6.insert(&*reply_key, &*reply, BPF_NOEXIST as u64) {
                Ok(()) => {
                    reserved = true;
                    break;
                }
                Err(_) => match NAT6.get_ptr(&*reply_key) {
                    // SAFETY: a valid map value pointer, read at once.
                    Some(holder)
                        if unsafe { may_take_over((*holder).flags, now.wrapping_sub((*holder).last_seen_ns)) } =>
                    {
                        let _ = NAT6.remove(&*reply_key);
                        if NAT6.insert(&*reply_key, &*reply, BPF_NOEXIST as u64).is_ok() {
                            count(Nat4Counter::PortTakenOver);
                            reserved = true;
                            break;
                        }
                        count(Nat4Counter::PortCollision);
                    }
                    Some(_) => count(Nat4Counter::PortCollision),
                    None => return Err(insert_refused(&*reply_key)),
                },
            }
            attempt += 1;
        }
        if !reserved {
            count(Nat4Counter::PortExhausted);
            return Err(DropReason::Nat6PortExhausted);
        }
        entry.src = key.dst;
        entry.src_port_be = reply_key.dst_port_be;
        entry.flags = NAT4_SNAT;
        count(Nat4Counter::NewRemote);
    }
    if NAT6.insert(key, &*entry, BPF_NOEXIST as u64).is_err() {
        // Another CPU wrote this connection first: ours goes, its entry
        // is the connection's.
        let _ = NAT6.remove(&*reply_key);
        // SAFETY: copied out at once.
        return match unsafe { NAT6.get(key) } {
            Some(theirs) => {
                *entry = *theirs;
                count(Nat4Counter::Raced);
                Ok(())
            }
            None => {
                count(Nat4Counter::InsertFailed);
                Err(DropReason::Nat6TableFull)
            }
        };
    }
    Ok(())
}

/// Why a `BPF_NOEXIST` insert of a reply key failed: the key is taken or
/// the table is full.
#[inline(always)]
fn insert_refused(key: &Nat6Key) -> DropReason {
    // SAFETY: only presence is read.
    if unsafe { NAT6.get(key) }.is_some() {
        count(Nat4Counter::PortExhausted);
        DropReason::Nat6PortExhausted
    } else {
        count(Nat4Counter::InsertFailed);
        DropReason::Nat6TableFull
    }
}

/// Refresh a half's `last_seen_ns` and, for an answer, mark it seen.
#[inline(always)]
fn touch(entry: *mut Nat6Entry, answered: bool) {
    // SAFETY: a valid map value pointer; racing writers only store times
    // and flags, any of which is right.
    unsafe {
        let now = bpf_ktime_get_coarse_ns();
        if now.wrapping_sub((*entry).last_seen_ns) > LAST_SEEN_REFRESH_NS {
            (*entry).last_seen_ns = now;
        }
        if answered && (*entry).flags & NAT4_REPLY_SEEN == 0 {
            (*entry).flags |= NAT4_REPLY_SEEN;
        }
    }
}

/// The first packet of the new connection `sluice_lb6_new_connection`
/// wrote, sent.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn sluice_lb6_send_new(skb: *mut __sk_buff) -> u32 {
    let ctx = TcContext::new(skb);
    let Some(scratch) = LB6_SCRATCH.get_ptr_mut(0) else { return code(Err(DropReason::LookupMismatch)) };
    code(send_forward(&ctx, scratch))
}

/// Rewrite the client's packet (`scratch.key`) to `scratch.entry`'s tuple
/// and send it on: into the local backend (the caller's door), or to the
/// backend's node.
#[inline(always)]
fn send_forward(ctx: &TcContext, scratch: *mut Lb6Scratch) -> Result<u32, DropReason> {
    // SAFETY: this CPU's slot.
    let (key, entry) = unsafe { (&(*scratch).key, &(*scratch).entry) };
    if unsafe { (*scratch).hop_limit } <= 1 {
        return Err(DropReason::TtlExpired);
    }
    rewrite(ctx, key, entry)?;
    if entry.next_hop == [0; 4] {
        return Ok(LB4_TO_LOCAL_POD);
    }
    let ip6: *mut Ipv6Hdr = parse::header_mut(ctx, ETH_HLEN)?;
    forward::decrement_hop_limit(ip6);
    let uplink_ifindex = match NODE_CONFIG.get(0) {
        Some(c) if c.uplink_ifindex != 0 => c.uplink_ifindex,
        _ => return Err(DropReason::NoUplink),
    };
    // SAFETY: this CPU's slot; the helper reads the next hop from it.
    unsafe {
        (*scratch).nh.nh_family = AF_INET6;
        (*scratch).nh.__bindgen_anon_1.ipv6_nh = entry.next_hop;
        forward::to_node6(ctx, uplink_ifindex, &mut (*scratch).nh)?;
    }
    count_forward(ctx, ForwardPath::UplinkToService);
    Ok(LB4_SENT)
}

/// An answer through its reply entry: back to the client as from the
/// frontend, out of the uplink (the FIB picks the next hop).
#[inline(always)]
fn reverse(ctx: &TcContext, scratch: *mut Lb6Scratch, entry: *mut Nat6Entry) -> Result<u32, DropReason> {
    touch(entry, true);
    // SAFETY: this CPU's slot; the entry copied into it at once.
    let (key, e) = unsafe {
        (*scratch).entry = *entry;
        (&(*scratch).key, &(*scratch).entry)
    };
    if unsafe { (*scratch).hop_limit } <= 1 {
        return Err(DropReason::TtlExpired);
    }
    rewrite(ctx, key, e)?;
    let ip6: *mut Ipv6Hdr = parse::header_mut(ctx, ETH_HLEN)?;
    forward::decrement_hop_limit(ip6);
    let uplink_ifindex = match NODE_CONFIG.get(0) {
        Some(c) if c.uplink_ifindex != 0 => c.uplink_ifindex,
        _ => return Err(DropReason::NoUplink),
    };
    count(Nat4Counter::Reversed);
    ctx.set_mark(parse::mark(ctx) | FAST_PATH_MARK);
    // SAFETY: helper call; no next hop given: the kernel's FIB lookup on
    // the packet's destination picks it.
    let rc = unsafe { bpf_redirect_neigh(uplink_ifindex, core::ptr::null_mut::<bpf_redir_neigh>(), 0, 0) };
    if rc as i32 != TC_ACT_REDIRECT as i32 {
        return Err(DropReason::RedirectFailed);
    }
    count_forward(ctx, ForwardPath::ServiceReply);
    Ok(LB4_SENT)
}

#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn sluice_lb6_reply_from_pod(skb: *mut __sk_buff) -> u32 {
    let ctx = TcContext::new(skb);
    code(try_reply_from_pod(&ctx))
}

#[inline(always)]
fn try_reply_from_pod(ctx: &TcContext) -> Result<u32, DropReason> {
    if config().is_none() {
        return Ok(LB4_PASS);
    }
    let Some(scratch) = LB6_SCRATCH.get_ptr_mut(0) else { return Err(DropReason::LookupMismatch) };
    if !tuple(ctx, scratch, NAT4_REPLY)? {
        return Ok(LB4_PASS);
    }
    // SAFETY: this CPU's slot.
    match NAT6.get_ptr_mut(unsafe { &(*scratch).key }) {
        Some(entry) => reverse(ctx, scratch, entry),
        None => Ok(LB4_PASS),
    }
}

/// Rewrite the packet's addresses and ports from `from`'s to `to`'s, the
/// TCP/UDP checksum updated incrementally over the pseudo header (IPv6
/// has no header checksum), a word at a time.
#[inline(always)]
fn rewrite(ctx: &TcContext, from: &Nat6Key, to: &Nat6Entry) -> Result<(), DropReason> {
    let (l4_csum, mangled) =
        if from.protocol == IPPROTO_TCP { (TCP_CSUM_OFF6, 0) } else { (UDP_CSUM_OFF6, BPF_F_MARK_MANGLED_0 as u64) };
    let addr_flags = BPF_F_PSEUDO_HDR as u64 | mangled | 4;
    if from.src != to.src {
        rewrite_address(ctx, l4_csum, addr_flags, IP6_SRC_OFF, &from.src, &to.src)?;
    }
    if from.dst != to.dst {
        rewrite_address(ctx, l4_csum, addr_flags, IP6_SRC_OFF + 16, &from.dst, &to.dst)?;
    }
    if from.src_port_be != to.src_port_be {
        ctx.l4_csum_replace(l4_csum, from.src_port_be as u64, to.src_port_be as u64, mangled | 2)
            .and_then(|_| ctx.store(L4_OFF6, &to.src_port_be, 0))
            .map_err(|_| DropReason::HeaderRewrite)?;
    }
    if from.dst_port_be != to.dst_port_be {
        ctx.l4_csum_replace(l4_csum, from.dst_port_be as u64, to.dst_port_be as u64, mangled | 2)
            .and_then(|_| ctx.store(L4_OFF6 + 2, &to.dst_port_be, 0))
            .map_err(|_| DropReason::HeaderRewrite)?;
    }
    Ok(())
}

#[inline(always)]
fn rewrite_address(
    ctx: &TcContext,
    l4_csum: usize,
    flags: u64,
    offset: usize,
    from: &[u32; 4],
    to: &[u32; 4],
) -> Result<(), DropReason> {
    for i in 0..4 {
        if from[i] != to[i] {
            ctx.l4_csum_replace(l4_csum, from[i] as u64, to[i] as u64, flags).map_err(|_| DropReason::HeaderRewrite)?;
        }
    }
    // SAFETY: helper call; 16 bytes from map memory.
    if unsafe { bpf_skb_store_bytes(ctx.skb.skb, offset as u32, to.as_ptr() as *const _, 16, 0) } != 0 {
        return Err(DropReason::HeaderRewrite);
    }
    Ok(())
}
