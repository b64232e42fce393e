//! Services from outside the cluster, per packet (issue 27; the tables are
//! described in `sluice_common::nat`): the kube-proxy replacement at the
//! uplink.
//!
//! - `from_uplink`, a client's packet: through its `NAT4` forward entry,
//!   or, new, to a frontend reachable from outside (`nodeIP:nodePort` on
//!   one of this node's addresses, an external IP, a LoadBalancer ingress
//!   IP): a backend picked, the pair of entries written, the packet DNATed
//!   into the local backend (through the one door, `deliver`) or DNATed
//!   and SNATed (the node's address, a port from the SNAT range) to the
//!   backend's node.
//! - `from_uplink`, a remote backend's answer to a SNAT port: through its
//!   reply entry, back to the client, out of the uplink.
//! - `from_pod`, a local backend's answer to an outside client: the same.
//!
//! - `from_uplink`, a new connection to a frontend of a Service without
//!   endpoints: refused as kube-proxy's `REJECT` does (a TCP RST, an ICMP
//!   port unreachable; `sluice_common::reject`), the request rewritten into
//!   the answer and sent back out of the uplink, counted as a drop
//!   (`service_no_endpoints`).
//!
//! The work is in BPF global functions (`sluice_lb4_*`): the verifier
//! checks each once, on its own, instead of once per path of the program
//! calling it. They return `LB4_PASS` (not a Service packet: carry on),
//! `LB4_TO_LOCAL_POD` (translated: the caller delivers it), `LB4_SENT`
//! (translated and redirected) or a drop reason + `LB4_DROP`.
use aya_ebpf::{
    bindings::{
        __sk_buff, bpf_adj_room_mode::BPF_ADJ_ROOM_NET, bpf_redir_neigh, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR,
        BPF_NOEXIST, TC_ACT_REDIRECT, TC_ACT_SHOT,
    },
    helpers::{
        bpf_check_mtu, bpf_get_prandom_u32, bpf_ktime_get_coarse_ns, bpf_redirect, bpf_redirect_neigh,
        bpf_skb_adjust_room, bpf_skb_change_tail, bpf_skb_load_bytes, bpf_skb_store_bytes,
    },
    maps::lpm_trie::Key,
    programs::TcContext,
};
use sluice_common::{
    lb4_frag::{FRAG4_LOCAL, FRAG4_REMOTE, FRAG4_REPLY, FRAG4_VIA_TUNNEL},
    maps::{FAST_PATH_MARK, REMOTE_NODE_VXLAN},
    nat::{
        close_bits, dsr_client_mtu, dsr_frontend, dsr_insert_option, dsr_strip_option, may_take_over,
        reachable_from_outside, syn_reopens, Lb4Config, Nat4Counter, Nat4Entry, Nat4Key, SourceRangeKey,
        DSR_IPV4_HEADER_LEN, DSR_OPTION_LEN, DSR_VERSION_IHL, LB4_DSR, LB4_ENABLED, LB4_PAUSED, NAT4_DSR, NAT4_FORWARD,
        NAT4_REPLY, NAT4_REPLY_SEEN, NAT4_SNAT, NAT4_VIA_TUNNEL, SNAT_PORT_TRIES, SOURCE_RANGE_FRONTEND_BITS, TCP_FIN,
        TCP_RST, TCP_SYN,
    },
    reject,
    services::{
        frontend_kind, Backend, ServiceKey, ServiceValue, NODE_ADDRESS_LOCAL, SCOPE_ADDRESS,
        SERVICE_NO_LOCAL_ENDPOINTS, SERVICE_SOURCE_RANGES,
    },
    DropReason, ForwardPath, HookDirection,
};

use crate::{
    counters::{count_drop, count_forward},
    forward,
    maps::{
        ENDPOINTS, LB4_CONFIG, LB4_SCRATCH, LB4_SOURCE_RANGES, NAT4, NAT4_STATS, NODE_ADDRESSES, NODE_CONFIG,
        NODE_ROUTES, SERVICES,
    },
    parse::{self, Ipv4Hdr, Ports, ETH_HLEN, L4_OFF},
};

/// Not a Service packet: the caller carries on as before.
pub const LB4_PASS: u32 = 0;
/// Translated for a backend on this node: the caller delivers it.
pub const LB4_TO_LOCAL_POD: u32 = 1;
/// Translated and redirected: the caller returns `TC_ACT_REDIRECT`.
pub const LB4_SENT: u32 = 2;
/// A new connection to a Service without endpoints: the caller refuses it
/// (`refuse`).
pub const LB4_REFUSE: u32 = 3;
/// Admitted as a new connection: `sluice_lb4_new_connection` goes on
/// (never seen by the programs).
pub const LB4_NEW_CONNECTION: u32 = 4;
/// Its pair written: `sluice_lb4_send_new` sends the packet (never seen
/// by the programs).
pub const LB4_SEND_NEW: u32 = 5;
/// A later fragment of an IPv4 datagram: `sluice_lb4_fragment` goes on
/// (never seen by the programs).
pub const LB4_FRAGMENT: u32 = 6;
/// `--lb-mode=dsr`: a packet for a backend on another node, its `NAT4`
/// forward entry (`NAT4_DSR`) written: the caller sends it
/// (`sluice_lb4_dsr_forward`), with the DSR option on a TCP SYN and every
/// UDP datagram.
pub const LB4_DSR_SEND: u32 = 7;
/// Added to a `DropReason`: drop it.
pub const LB4_DROP: u32 = 0x100;
/// Or-ed with an MTU (at most 0xffff): too big once the DSR option is in;
/// the caller answers ICMP fragmentation needed with that MTU
/// (`frag_needed`).
pub const LB4_FRAG_NEEDED: u32 = 0x1_0000;

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IP_OFFSET: u16 = 0x1fff;
/// More fragments or an offset: any fragment (the DSR option is read from
/// whole datagrams only).
const IP_MF_OFFSET: u16 = 0x3fff;
const IP_CSUM_OFF: usize = ETH_HLEN + 10;
const IP_SRC_OFF: usize = ETH_HLEN + 12;
const IP_DST_OFF: usize = ETH_HLEN + 16;
const TCP_CSUM_OFF: usize = L4_OFF + 16;
const UDP_CSUM_OFF: usize = L4_OFF + 6;
/// A `last_seen_ns` is refreshed at most this often.
const LAST_SEEN_REFRESH_NS: u64 = 1_000_000_000;

/// What the caller does with the global function's answer.
pub enum Lb4 {
    Pass,
    ToLocalPod,
    Sent,
    Refuse,
    Dsr,
    /// Too big for the DSR option: tell the client this MTU.
    FragNeeded(u16),
}

#[inline(always)]
fn outcome(code: u32) -> Result<Lb4, DropReason> {
    if code & LB4_FRAG_NEEDED != 0 {
        return Ok(Lb4::FragNeeded(code as u16));
    }
    match code {
        LB4_PASS => Ok(Lb4::Pass),
        LB4_TO_LOCAL_POD => Ok(Lb4::ToLocalPod),
        LB4_SENT => Ok(Lb4::Sent),
        LB4_REFUSE => Ok(Lb4::Refuse),
        LB4_DSR_SEND => Ok(Lb4::Dsr),
        _ => Err(reason_from(code)),
    }
}

/// The drop reason a global function returned (+ `LB4_DROP`); one it
/// cannot name is still a drop: fail closed.
#[inline(always)]
pub(crate) fn reason_from(code: u32) -> DropReason {
    const TRUNCATED: u32 = DropReason::Truncated as u32;
    const TTL: u32 = DropReason::TtlExpired as u32;
    const REWRITE: u32 = DropReason::HeaderRewrite as u32;
    const REDIRECT: u32 = DropReason::RedirectFailed as u32;
    const NO_UPLINK: u32 = DropReason::NoUplink as u32;
    const NO_TUNNEL: u32 = DropReason::NoTunnel as u32;
    const TUNNEL_KEY: u32 = DropReason::TunnelKey as u32;
    const MISMATCH: u32 = DropReason::LookupMismatch as u32;
    const FULL: u32 = DropReason::Nat4TableFull as u32;
    const PORTS: u32 = DropReason::Nat4PortExhausted as u32;
    const NO_LOCAL: u32 = DropReason::ServiceNoLocalEndpoints as u32;
    const SOURCE_RANGE: u32 = DropReason::LoadBalancerSourceRange as u32;
    const MIGRATING: u32 = DropReason::Nat4Migrating as u32;
    const DSR_REFUSED: u32 = DropReason::DsrOptionRefused as u32;
    const BAD_HEADER: u32 = DropReason::BadIpHeader as u32;
    const FULL6: u32 = DropReason::Nat6TableFull as u32;
    const PORTS6: u32 = DropReason::Nat6PortExhausted as u32;
    match code.wrapping_sub(LB4_DROP) {
        TRUNCATED => DropReason::Truncated,
        TTL => DropReason::TtlExpired,
        REWRITE => DropReason::HeaderRewrite,
        REDIRECT => DropReason::RedirectFailed,
        NO_UPLINK => DropReason::NoUplink,
        NO_TUNNEL => DropReason::NoTunnel,
        TUNNEL_KEY => DropReason::TunnelKey,
        MISMATCH => DropReason::LookupMismatch,
        FULL => DropReason::Nat4TableFull,
        PORTS => DropReason::Nat4PortExhausted,
        NO_LOCAL => DropReason::ServiceNoLocalEndpoints,
        SOURCE_RANGE => DropReason::LoadBalancerSourceRange,
        MIGRATING => DropReason::Nat4Migrating,
        DSR_REFUSED => DropReason::DsrOptionRefused,
        BAD_HEADER => DropReason::BadIpHeader,
        FULL6 => DropReason::Nat6TableFull,
        PORTS6 => DropReason::Nat6PortExhausted,
        _ => DropReason::ServiceNoEndpoints,
    }
}

#[inline(always)]
pub(crate) fn code(result: Result<u32, DropReason>) -> u32 {
    match result {
        Ok(c) => c,
        Err(reason) => reason as u32 + LB4_DROP,
    }
}

#[inline(always)]
pub(crate) fn count(counter: Nat4Counter) {
    if let Some(n) = NAT4_STATS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe { *n += 1 }
    }
}

/// `from_uplink`'s step: see the module doc. Each global function is
/// called from here, the program's own frame, never from another: their
/// frames do not add up (Linux 6.1's 512 bytes, `stack`).
#[inline(always)]
pub fn from_uplink(ctx: &TcContext) -> Result<Lb4, DropReason> {
    // `--lb-mode=dsr`, a backend's node: the option stripped (and a
    // VXLAN packet carrying it decapsulated), a reply entry written.
    match outcome(sluice_lb4_dsr_receive(ctx.skb.skb))? {
        Lb4::Pass => {}
        other => return Ok(other),
    }
    sluice_lb4_track_close(ctx.skb.skb, 0);
    match sluice_lb4_from_uplink(ctx.skb.skb) {
        LB4_NEW_CONNECTION => match sluice_lb4_new_connection() {
            LB4_SEND_NEW => outcome(sluice_lb4_send_new(ctx.skb.skb)),
            LB4_DSR_SEND => outcome(sluice_lb4_dsr_forward(ctx.skb.skb)),
            code => outcome(code),
        },
        LB4_DSR_SEND => outcome(sluice_lb4_dsr_forward(ctx.skb.skb)),
        LB4_FRAGMENT => outcome(crate::lb4_frag::sluice_lb4_fragment(ctx.skb.skb)),
        code => outcome(code),
    }
}

/// `from_pod`'s step, for a packet its verdict sends to the stack.
#[inline(always)]
pub fn reply_from_pod(ctx: &TcContext) -> Result<Lb4, DropReason> {
    sluice_lb4_track_close(ctx.skb.skb, 1);
    match sluice_lb4_reply_from_pod(ctx.skb.skb) {
        LB4_FRAGMENT => outcome(crate::lb4_frag::sluice_lb4_fragment(ctx.skb.skb)),
        code => outcome(code),
    }
}

/// A TCP connection's closing, before its packet is translated
/// (`sluice_common::nat::Nat4Closing`): a FIN or an RST marks both halves
/// (and restamps them: their short lifetime counts from the close); a
/// client's SYN on a closed connection's tuple removes the old pair, so
/// the translation that follows balances it as a new connection. `from_pod`
/// is 1 for a local backend's answer (a reply half only), 0 for the
/// uplink.
///
/// Its own global function, called by the programs rather than from the
/// translation: `sluice_lb4_from_uplink`'s frame alone fills what Linux
/// 6.1 allows beside `from_uplink`'s (`stack`).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn sluice_lb4_track_close(skb: *mut __sk_buff, from_pod: u32) -> u32 {
    let ctx = TcContext::new(skb);
    match try_track_close(&ctx, from_pod != 0) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

#[inline(always)]
fn try_track_close(ctx: &TcContext, from_pod: bool) -> Result<(), DropReason> {
    let Some((mut key, _)) = tuple(ctx)? else { return Ok(()) };
    if key.protocol != IPPROTO_TCP {
        return Ok(());
    }
    let flags_at: *const u8 = parse::header_mut(ctx, L4_OFF + 13)?;
    // SAFETY: bounds checked by header_mut.
    let tcp_flags = unsafe { *flags_at };
    if tcp_flags & (TCP_FIN | TCP_RST | TCP_SYN) == 0 {
        return Ok(());
    }
    let Some(config) = config() else { return Ok(()) };
    // The half this packet arrives on, as the translation will find it.
    let mut entry = None;
    if from_pod || config.in_snat_range(u16::from_be(key.dst_port_be)) {
        key.direction = NAT4_REPLY;
        entry = NAT4.get_ptr_mut(&key);
    }
    if entry.is_none() && !from_pod {
        key.direction = NAT4_FORWARD;
        entry = NAT4.get_ptr_mut(&key);
    }
    let Some(entry) = entry else { return Ok(()) };
    // SAFETY: a valid map value pointer; copied out at once.
    let e = unsafe { *entry };
    let twin_key = key.twin(&e);
    if key.direction == NAT4_FORWARD && syn_reopens(e.flags, tcp_flags) {
        // The reply half only if it is still this connection's (its port
        // may have gone to another connection since).
        // SAFETY: copied out at once.
        if let Some(twin) = unsafe { NAT4.get(&twin_key) }.copied() {
            if key.pairs_with(&twin) {
                let _ = NAT4.remove(&twin_key);
            }
        }
        let _ = NAT4.remove(&key);
        count(Nat4Counter::Reopened);
        return Ok(());
    }
    let bits = close_bits(key.direction, tcp_flags);
    if bits == 0 || e.flags & bits == bits {
        return Ok(());
    }
    // SAFETY: a plain helper.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    // SAFETY: valid map value pointers; a racing writer only adds bits or
    // a time.
    unsafe {
        (*entry).flags |= bits;
        (*entry).last_seen_ns = now;
    }
    if let Some(twin) = NAT4.get_ptr_mut(&twin_key) {
        // Only this connection's other half (see `pairs_with`).
        // SAFETY: as above.
        unsafe {
            if key.pairs_with(&*twin) {
                (*twin).flags |= bits;
                (*twin).last_seen_ns = now;
            }
        }
    }
    Ok(())
}

#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn sluice_lb4_from_uplink(skb: *mut __sk_buff) -> u32 {
    let ctx = TcContext::new(skb);
    code(try_from_uplink(&ctx))
}

/// Refuse a new connection `from_uplink` found for a Service without
/// endpoints: counted as a drop (`service_no_endpoints`, the request's
/// bytes), answered as kube-proxy's `REJECT` (see
/// `sluice_common::reject`) back out of the interface it came in on. An
/// answer that cannot be built or sent leaves a plain drop. Returns the TC
/// action.
///
/// Its own global function, called by the program itself rather than from
/// `sluice_lb4_from_uplink`: the two frames together would not fit the 512
/// bytes of stack Linux 6.1 allows a call chain.
#[inline(always)]
pub fn refuse(ctx: &TcContext) -> i32 {
    count_drop(ctx, DropReason::ServiceNoEndpoints, HookDirection::Ingress);
    match sluice_lb4_refuse(ctx.skb.skb, 0) {
        LB4_SENT => TC_ACT_REDIRECT as i32,
        _ => TC_ACT_SHOT as i32,
    }
}

/// `--lb-mode=dsr`: a packet the option would take past the egress MTU
/// (`dsr_forward` found it): counted as a drop (`dsr_frag_needed`) and
/// answered, never dropped silently: an ICMP fragmentation needed telling
/// the client `mtu` (the egress MTU less the option), from the address it
/// sent to, back out of the interface it came in on. Returns the TC
/// action.
#[inline(always)]
pub fn frag_needed(ctx: &TcContext, mtu: u16) -> i32 {
    count_drop(ctx, DropReason::DsrFragNeeded, HookDirection::Ingress);
    match sluice_lb4_refuse(ctx.skb.skb, mtu as u32) {
        LB4_SENT => TC_ACT_REDIRECT as i32,
        _ => TC_ACT_SHOT as i32,
    }
}

/// `mtu` 0: refuse (RST / port unreachable); else ICMP fragmentation
/// needed with that MTU.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn sluice_lb4_refuse(skb: *mut __sk_buff, mtu: u32) -> u32 {
    let ctx = TcContext::new(skb);
    code(try_refuse(&ctx, mtu))
}

#[inline(always)]
fn try_refuse(ctx: &TcContext, mtu: u32) -> Result<u32, DropReason> {
    let ifindex = parse::ifindex(ctx);
    let protocol: u8 = ctx.load(ETH_HLEN + 9).map_err(|_| DropReason::Truncated)?;
    let tcp = protocol == IPPROTO_TCP && mtu == 0;
    let len = if tcp { reject::TCP_RESET_LEN } else { reject::ICMP_UNREACHABLE_LEN };
    // `bpf_skb_change_tail` (made for such answers) trims what the answer
    // does not use, or grows the packet by zeros; every byte is then
    // written. One buffer for both answers, read and written whole by one
    // helper call each: copies of it would not fit Linux 6.1's stack.
    resize(ctx, len)?;
    let mut frame = core::mem::MaybeUninit::<[u8; reject::ICMP_UNREACHABLE_LEN]>::uninit();
    let buf = frame.as_mut_ptr() as *mut u8;
    // SAFETY: `len` bytes fit `frame`; the packet is `len` long now.
    if unsafe { bpf_skb_load_bytes(ctx.skb.skb as *const _, 0, buf as *mut _, len as u32) } != 0 {
        return Err(DropReason::Truncated);
    }
    // SAFETY: the first `len` bytes were written by the helper above.
    unsafe {
        if tcp {
            reject::tcp_reset(&mut *(buf as *mut [u8; reject::TCP_RESET_LEN]));
        } else if mtu != 0 {
            reject::icmp_frag_needed(&mut *(buf as *mut [u8; reject::ICMP_UNREACHABLE_LEN]), mtu as u16);
        } else {
            reject::icmp_port_unreachable(&mut *(buf as *mut [u8; reject::ICMP_UNREACHABLE_LEN]));
        }
    }
    // SAFETY: as above.
    if unsafe { bpf_skb_store_bytes(ctx.skb.skb, 0, buf as *const _, len as u32, 0) } != 0 {
        return Err(DropReason::HeaderRewrite);
    }
    ctx.set_mark(parse::mark(ctx) | FAST_PATH_MARK);
    // SAFETY: helper call; back out of the device it came in on, to the
    // MAC it came from.
    let rc = unsafe { bpf_redirect(ifindex, 0) };
    if rc as i32 != TC_ACT_REDIRECT as i32 {
        return Err(DropReason::RedirectFailed);
    }
    Ok(LB4_SENT)
}

#[inline(always)]
fn resize(ctx: &TcContext, len: usize) -> Result<(), DropReason> {
    // SAFETY: helper call on the program's own packet.
    match unsafe { bpf_skb_change_tail(ctx.skb.skb, len as u32, 0) } {
        0 => Ok(()),
        _ => Err(DropReason::HeaderRewrite),
    }
}

#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn sluice_lb4_reply_from_pod(skb: *mut __sk_buff) -> u32 {
    let ctx = TcContext::new(skb);
    code(try_reply_from_pod(&ctx))
}

/// `LB4_FRAGMENT` for a later fragment a Service's first may have gone
/// before (`lb4_frag`), else `LB4_PASS`.
#[inline(always)]
fn later_fragment(ctx: &TcContext) -> u32 {
    if crate::lb4_frag::later_fragment(ctx) {
        LB4_FRAGMENT
    } else {
        LB4_PASS
    }
}

/// The uplink's settings, when the translation is on.
#[inline(always)]
fn config() -> Option<Lb4Config> {
    match LB4_CONFIG.get(0) {
        Some(c) if c.flags & LB4_ENABLED != 0 => Some(*c),
        _ => None,
    }
}

/// Are new connections held back (`LB4_PAUSED`)? Read apart from
/// `config()`'s copy, which would cost the caller's frame.
#[inline(always)]
pub(crate) fn paused() -> bool {
    matches!(LB4_CONFIG.get(0), Some(c) if c.flags & LB4_PAUSED != 0)
}

/// The tuple of a TCP or UDP IPv4 packet without options, whole or the
/// first fragment of its datagram (its ports are there; the later ones
/// follow it: `lb4_frag`), and its TTL; `None` for anything else.
#[inline(always)]
fn tuple(ctx: &TcContext) -> Result<Option<(Nat4Key, u8)>, DropReason> {
    let Some((_, ip)) = parse::ipv4(ctx)? else { return Ok(None) };
    // SAFETY: bounds checked by parse::ipv4.
    let (version_ihl, frag_off_be, protocol, ttl, src_be, dst_be) =
        unsafe { ((*ip).version_ihl, (*ip).frag_off_be, (*ip).protocol, (*ip).ttl, (*ip).src_be, (*ip).dst_be) };
    if version_ihl != 0x45 || u16::from_be(frag_off_be) & IP_OFFSET != 0 {
        return Ok(None);
    }
    if protocol != IPPROTO_TCP && protocol != IPPROTO_UDP {
        return Ok(None);
    }
    let ports: *const Ports = parse::header_mut(ctx, L4_OFF)?;
    // SAFETY: bounds checked by header_mut.
    let (src_port_be, dst_port_be) = unsafe { ((*ports).src_be, (*ports).dst_be) };
    Ok(Some((
        Nat4Key { src_be, dst_be, src_port_be, dst_port_be, protocol, direction: NAT4_FORWARD, _pad: [0; 2] },
        ttl,
    )))
}

#[inline(always)]
fn try_from_uplink(ctx: &TcContext) -> Result<u32, DropReason> {
    let Some(config) = config() else { return Ok(LB4_PASS) };
    let Some((mut key, ttl)) = tuple(ctx)? else { return Ok(later_fragment(ctx)) };
    // For a pod of this node: pod traffic, never a frontend (one lookup,
    // which spares cross-node pod traffic the rest).
    // SAFETY: only presence is read.
    if unsafe { ENDPOINTS.get(&key.dst_be) }.is_some() {
        return Ok(LB4_PASS);
    }
    // A remote backend's answer to one of our SNAT ports.
    if config.in_snat_range(u16::from_be(key.dst_port_be)) {
        key.direction = NAT4_REPLY;
        if let Some(entry) = NAT4.get_ptr_mut(&key) {
            return reverse(ctx, &key, entry, ttl);
        }
        key.direction = NAT4_FORWARD;
    }
    // A client's packet of a connection already translated.
    if let Some(entry) = NAT4.get_ptr_mut(&key) {
        // SAFETY: copied out at once.
        let e = unsafe { *entry };
        if e.flags & NAT4_DSR != 0 {
            // A direct server return connection's: the caller's
            // `dsr_forward` sends it.
            return Ok(LB4_DSR_SEND);
        }
        touch(entry, false);
        count(Nat4Counter::Forwarded);
        return send_forward(ctx, &key, &e, ttl);
    }
    admit(ctx, &key, ttl)
}

/// Is a client's packet of no connection `NAT4` knows a new connection to
/// a frontend reachable from outside? Then `LB4_NEW_CONNECTION`, its
/// tuple, frontend and Service left in `LB4_SCRATCH` for
/// `sluice_lb4_new_connection`; else the global function's answer.
#[inline(always)]
fn admit(ctx: &TcContext, key: &Nat4Key, ttl: u8) -> Result<u32, DropReason> {
    let Some((service_key, service)) = frontend(key) else { return Ok(LB4_PASS) };
    if !reachable_from_outside(frontend_kind(&service_key, &service)) {
        return Ok(LB4_PASS);
    }
    // loadBalancerSourceRanges: a client outside them is dropped, as
    // kube-proxy's firewall chain does (before its REJECT of a Service
    // without endpoints), whatever segment it sends.
    if service.flags & SERVICE_SOURCE_RANGES != 0 && !in_source_ranges(&service_key, key.src_be) {
        return Err(DropReason::LoadBalancerSourceRange);
    }
    // A TCP segment of no connection we know (this node's table lost it,
    // or it never was one): the stack answers it (RST), no backend does.
    if key.protocol == IPPROTO_TCP && !is_syn(ctx) {
        return Ok(LB4_PASS);
    }
    if service.count == 0 {
        return Ok(LB4_REFUSE);
    }
    if service.flags & SERVICE_NO_LOCAL_ENDPOINTS != 0 {
        return Err(DropReason::ServiceNoEndpoints);
    }
    if ttl <= 1 {
        return Err(DropReason::TtlExpired);
    }
    // Balanced by `sluice_lb4_new_connection`, called next by the program.
    let Some(scratch) = LB4_SCRATCH.get_ptr_mut(0) else { return Err(DropReason::LookupMismatch) };
    // SAFETY: this CPU's slot, used by this program run alone.
    unsafe {
        (*scratch).new_key = *key;
        (*scratch).frontend = service_key;
        (*scratch).service = service;
        (*scratch).ttl = ttl as u32;
    }
    Ok(LB4_NEW_CONNECTION)
}

/// A new connection `sluice_lb4_from_uplink` admitted (its tuple, frontend
/// and Service in `LB4_SCRATCH`): a backend picked, the pair written
/// (the forward entry left in `LB4_SCRATCH` for `sluice_lb4_send_new`). A
/// global function of its own, called by the program after the other
/// returned, so the frames never stack: any two of them together would
/// not fit Linux 6.1's 512 bytes beside `from_uplink`'s.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn sluice_lb4_new_connection() -> u32 {
    code(try_new_connection())
}

#[inline(always)]
fn try_new_connection() -> Result<u32, DropReason> {
    let Some(config) = config() else { return Ok(LB4_PASS) };
    // The agent is carrying NAT4 over to a new layout: a connection
    // written now could land in the table being left behind. The client
    // retransmits; by then the new table serves it. (Before the pick: a
    // held-back SYN leaves no affinity behind.)
    if paused() {
        return Err(DropReason::Nat4Migrating);
    }
    let Some(scratch) = LB4_SCRATCH.get_ptr_mut(0) else { return Err(DropReason::LookupMismatch) };
    // SAFETY: this CPU's slot, written by `sluice_lb4_from_uplink` in this
    // program run; read in place (copies would fill the frame). `pick`
    // writes only its other fields.
    let (key, frontend, service) = unsafe { (&(*scratch).new_key, &(*scratch).frontend, &(*scratch).service) };
    // externalTrafficPolicy: Local: this node's backends only, the
    // client's address kept (no SNAT: the backend is here). Session
    // affinity: the client's remembered backend.
    let backend = crate::lb4_affinity::pick(scratch, key.src_be, frontend, service)?;
    // `--lb-mode=dsr`: a backend on another node gets DNAT only.
    let entry = if config.flags & LB4_DSR != 0 {
        new_connection::<true>(key, backend, &config)?
    } else {
        new_connection::<false>(key, backend, &config)?
    };
    // SAFETY: as above; a field no reference is held to.
    unsafe { (*scratch).entry = entry };
    if entry.flags & NAT4_DSR != 0 {
        // Sent by `sluice_lb4_dsr_forward`, which finds this entry.
        return Ok(LB4_DSR_SEND);
    }
    Ok(LB4_SEND_NEW)
}

/// The first packet of the new connection `sluice_lb4_new_connection`
/// wrote (tuple and forward entry in `LB4_SCRATCH`), sent: its own global
/// function for the same reason.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn sluice_lb4_send_new(skb: *mut __sk_buff) -> u32 {
    let ctx = TcContext::new(skb);
    let Some(scratch) = LB4_SCRATCH.get_ptr_mut(0) else { return code(Err(DropReason::LookupMismatch)) };
    // SAFETY: this CPU's slot, written earlier in this program run.
    let (key, entry, ttl) = unsafe { (&(*scratch).new_key, &(*scratch).entry, (*scratch).ttl as u8) };
    code(send_forward(&ctx, key, entry, ttl))
}

/// The `SERVICES` entry for a packet's destination: the address itself
/// (external IPs, LoadBalancer IPs; a ClusterIP too, which the caller
/// refuses), else, when the address is this node's own, a hostPort of a
/// pod here, then a NodePort.
#[inline(always)]
fn frontend(key: &Nat4Key) -> Option<(ServiceKey, ServiceValue)> {
    let exact =
        ServiceKey { vip_be: key.dst_be, port_be: key.dst_port_be, protocol: key.protocol, scope: SCOPE_ADDRESS };
    // SAFETY: copied out at once.
    if let Some(v) = unsafe { SERVICES.get(&exact) }.copied() {
        return Some((exact, v));
    }
    // SAFETY: copied out at once.
    match unsafe { NODE_ADDRESSES.get(&key.dst_be) }.copied() {
        Some(NODE_ADDRESS_LOCAL) => {}
        _ => return None,
    }
    // A hostPort of a pod here (on this address, else on every one), as
    // the socket programs look it up: before the NodePort.
    for hp in [
        ServiceKey::host_port_on(key.dst_be, key.dst_port_be, key.protocol),
        ServiceKey::host_port(key.dst_port_be, key.protocol),
    ] {
        // SAFETY: copied out at once.
        if let Some(v) = unsafe { SERVICES.get(&hp) }.copied() {
            return Some((hp, v));
        }
    }
    let np = ServiceKey::node_port(key.dst_port_be, key.protocol);
    // SAFETY: as above.
    let v = unsafe { SERVICES.get(&np) }.copied()?;
    Some((np, v))
}

/// Is `src_be` in one of the `loadBalancerSourceRanges` of `frontend`?
#[inline(always)]
fn in_source_ranges(frontend: &ServiceKey, src_be: u32) -> bool {
    let data = SourceRangeKey {
        vip_be: frontend.vip_be,
        port_be: frontend.port_be,
        protocol: frontend.protocol,
        _pad: 0,
        src_be,
    };
    LB4_SOURCE_RANGES.get(Key::new(SOURCE_RANGE_FRONTEND_BITS + 32, data)).is_some()
}

/// Is this TCP segment a SYN without ACK?
#[inline(always)]
fn is_syn(ctx: &TcContext) -> bool {
    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    match parse::header_mut::<u8>(ctx, L4_OFF + 13) {
        // SAFETY: bounds checked by header_mut.
        Ok(flags) => unsafe { *flags & (SYN | ACK) == SYN },
        Err(_) => false,
    }
}

/// A backend picked, the pair of entries written: the forward entry for
/// `key` (returned). A backend on another node gets a SNAT port, reserved
/// by its reply entry before anything else is written.
///
/// `DSR` (`--lb-mode=dsr`, from `dsr_forward` only): a backend on another
/// node gets DNAT only, and no reply entry here.
#[inline(always)]
fn new_connection<const DSR: bool>(
    key: &Nat4Key,
    backend: Backend,
    config: &Lb4Config,
) -> Result<Nat4Entry, DropReason> {
    // SAFETY: a plain helper.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    // The answer leaves as from the frontend the client named.
    let reply = Nat4Entry {
        src_be: key.dst_be,
        dst_be: key.src_be,
        src_port_be: key.dst_port_be,
        dst_port_be: key.src_port_be,
        next_hop_be: 0,
        flags: 0,
        _pad: 0,
        last_seen_ns: now,
    };
    // SAFETY: only presence is read.
    let local = unsafe { ENDPOINTS.get(&backend.ip_be) }.is_some();
    let mut forward = Nat4Entry {
        src_be: key.src_be,
        dst_be: backend.ip_be,
        src_port_be: key.src_port_be,
        dst_port_be: backend.port_be,
        next_hop_be: 0,
        flags: 0,
        _pad: 0,
        last_seen_ns: now,
    };
    let mut reply_key = Nat4Key {
        src_be: backend.ip_be,
        dst_be: key.src_be,
        src_port_be: backend.port_be,
        dst_port_be: key.src_port_be,
        protocol: key.protocol,
        direction: NAT4_REPLY,
        _pad: [0; 2],
    };
    if local {
        // The client's own tuple: unique towards this frontend, but two
        // frontends of one backend could share it.
        if NAT4.insert(&reply_key, &reply, BPF_NOEXIST as u64).is_err() {
            return Err(insert_refused(&reply_key));
        }
        count(Nat4Counter::NewLocal);
    } else {
        let Some(node) = NODE_ROUTES.get(Key::new(32, backend.ip_be)) else {
            // Neither here nor on a node we know: nothing to send it to.
            return Err(DropReason::LookupMismatch);
        };
        let next_hop_be = node.node_ip_be;
        let vxlan = node.flags & REMOTE_NODE_VXLAN != 0;
        forward.next_hop_be = next_hop_be;
        if DSR {
            // Direct server return: DNAT only, no SNAT port, no reply
            // entry here (the backend's node writes it from the option).
            // The reply key removed below on a lost race is then no
            // entry of this node's: a remote backend's answer to the
            // client's own address is never one.
            forward.flags = NAT4_DSR | if vxlan { NAT4_VIA_TUNNEL } else { 0 };
        } else {
            // The address the client used when it is this node's (a
            // NodePort); else (an external or LoadBalancer IP) the node's
            // own, which the backend's node routes back here.
            let snat_ip_be = match unsafe { NODE_ADDRESSES.get(&key.dst_be) }.copied() {
                Some(NODE_ADDRESS_LOCAL) => key.dst_be,
                _ => match NODE_CONFIG.get(0) {
                    Some(c) if c.node_ip_be != 0 => c.node_ip_be,
                    _ => return Err(DropReason::NoUplink),
                },
            };
            reply_key.dst_be = snat_ip_be;
            // SAFETY: a plain helper.
            let seed = unsafe { bpf_get_prandom_u32() };
            let mut reserved = false;
            let mut attempt = 0;
            while attempt < SNAT_PORT_TRIES {
                reply_key.dst_port_be = config.snat_port(seed, attempt).to_be();
                match NAT4.insert(&reply_key, &reply, BPF_NOEXIST as u64) {
                    Ok(()) => {
                        reserved = true;
                        break;
                    }
                    Err(_) => match NAT4.get_ptr(&reply_key) {
                        // SAFETY: a valid map value pointer, read at once.
                        Some(holder)
                            if unsafe { may_take_over((*holder).flags, now.wrapping_sub((*holder).last_seen_ns)) } =>
                        {
                            // A closed connection's port: its reply half goes
                            // (its forward half, left alone, sends nothing
                            // anyone answers; the GC removes it), then the
                            // port is ours if no other CPU took it first.
                            let _ = NAT4.remove(&reply_key);
                            if NAT4.insert(&reply_key, &reply, BPF_NOEXIST as u64).is_ok() {
                                count(Nat4Counter::PortTakenOver);
                                reserved = true;
                                break;
                            }
                            count(Nat4Counter::PortCollision);
                        }
                        Some(_) => count(Nat4Counter::PortCollision),
                        None => return Err(insert_refused(&reply_key)),
                    },
                }
                attempt += 1;
            }
            if !reserved {
                count(Nat4Counter::PortExhausted);
                return Err(DropReason::Nat4PortExhausted);
            }
            forward.src_be = snat_ip_be;
            forward.src_port_be = reply_key.dst_port_be;
            forward.flags = NAT4_SNAT | if vxlan { NAT4_VIA_TUNNEL } else { 0 };
        }
        count(Nat4Counter::NewRemote);
    }
    if NAT4.insert(key, &forward, BPF_NOEXIST as u64).is_err() {
        // Another CPU wrote this connection first (its first packets sent
        // twice at once): ours goes, its entry is the connection's.
        let _ = NAT4.remove(&reply_key);
        // SAFETY: copied out at once.
        return match unsafe { NAT4.get(key) }.copied() {
            Some(theirs) => {
                count(Nat4Counter::Raced);
                Ok(theirs)
            }
            None => {
                count(Nat4Counter::InsertFailed);
                Err(DropReason::Nat4TableFull)
            }
        };
    }
    Ok(forward)
}

/// Why a `BPF_NOEXIST` insert of a reply key failed: the key is taken (a
/// collision: never another connection's answers) or the table is full.
#[inline(always)]
fn insert_refused(key: &Nat4Key) -> DropReason {
    // SAFETY: only presence is read.
    if unsafe { NAT4.get(key) }.is_some() {
        count(Nat4Counter::PortExhausted);
        DropReason::Nat4PortExhausted
    } else {
        count(Nat4Counter::InsertFailed);
        DropReason::Nat4TableFull
    }
}

/// Refresh a half's `last_seen_ns` (at most about once a second) and, for
/// an answer, mark it seen.
#[inline(always)]
fn touch(entry: *mut Nat4Entry, answered: bool) {
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

/// Rewrite the client's packet to `entry`'s tuple and send it on: into the
/// local backend (the caller's door), or to the backend's node.
#[inline(always)]
fn send_forward(ctx: &TcContext, key: &Nat4Key, entry: &Nat4Entry, ttl: u8) -> Result<u32, DropReason> {
    if ttl <= 1 {
        return Err(DropReason::TtlExpired);
    }
    let how = match (entry.next_hop_be, entry.flags & NAT4_VIA_TUNNEL) {
        (0, _) => FRAG4_LOCAL,
        (_, 0) => FRAG4_REMOTE,
        _ => FRAG4_REMOTE | FRAG4_VIA_TUNNEL,
    };
    crate::lb4_frag::remember(ctx, key, entry.src_be, entry.dst_be, entry.next_hop_be, how);
    rewrite(ctx, key, entry)?;
    if entry.next_hop_be == 0 {
        return Ok(LB4_TO_LOCAL_POD);
    }
    to_backend_node(ctx, entry.next_hop_be, entry.flags & NAT4_VIA_TUNNEL != 0)
}

/// A translated packet (a connection's first, or a later fragment of its
/// datagram) to its backend's node `next_hop_be`: TTL decremented, out of
/// the uplink natively or through the VXLAN device.
#[inline(always)]
pub(crate) fn to_backend_node(ctx: &TcContext, next_hop_be: u32, via_tunnel: bool) -> Result<u32, DropReason> {
    // The rewrite's helpers invalidated packet pointers: parse again.
    let ip: *mut Ipv4Hdr = parse::header_mut(ctx, ETH_HLEN)?;
    forward::decrement_ttl(ip);
    let (uplink_ifindex, vxlan_ifindex) = match (NODE_CONFIG.get(0), crate::maps::TUNNEL_CONFIG.get(0)) {
        (Some(c), t) => (c.uplink_ifindex, t.map(|t| t.vxlan_ifindex).unwrap_or(0)),
        (None, _) => (0, 0),
    };
    if via_tunnel {
        if vxlan_ifindex == 0 {
            return Err(DropReason::NoTunnel);
        }
        crate::tunnel::device::to_node(ctx, vxlan_ifindex, next_hop_be)?;
    } else {
        if uplink_ifindex == 0 {
            return Err(DropReason::NoUplink);
        }
        forward::to_node(ctx, uplink_ifindex, next_hop_be)?;
    }
    count_forward(ctx, ForwardPath::UplinkToService);
    Ok(LB4_SENT)
}

/// An answer through its reply entry: back to the client as from the
/// frontend, out of the uplink (the FIB picks the next hop).
#[inline(always)]
fn reverse(ctx: &TcContext, key: &Nat4Key, entry: *mut Nat4Entry, ttl: u8) -> Result<u32, DropReason> {
    touch(entry, true);
    // SAFETY: copied out at once.
    let e = unsafe { *entry };
    if ttl <= 1 {
        return Err(DropReason::TtlExpired);
    }
    crate::lb4_frag::remember(ctx, key, e.src_be, e.dst_be, 0, FRAG4_REPLY);
    rewrite(ctx, key, &e)?;
    let ip: *mut Ipv4Hdr = parse::header_mut(ctx, ETH_HLEN)?;
    forward::decrement_ttl(ip);
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

#[inline(always)]
fn try_reply_from_pod(ctx: &TcContext) -> Result<u32, DropReason> {
    if config().is_none() {
        return Ok(LB4_PASS);
    }
    let Some((mut key, ttl)) = tuple(ctx)? else { return Ok(later_fragment(ctx)) };
    key.direction = NAT4_REPLY;
    match NAT4.get_ptr_mut(&key) {
        Some(entry) => reverse(ctx, &key, entry, ttl),
        None => Ok(LB4_PASS),
    }
}

/// Rewrite the packet's addresses and ports from `from`'s to `to`'s,
/// checksums updated incrementally (the TCP/UDP one over the pseudo
/// header too; a UDP checksum of 0 stays 0).
#[inline(always)]
fn rewrite(ctx: &TcContext, from: &Nat4Key, to: &Nat4Entry) -> Result<(), DropReason> {
    let (l4_csum, mangled) =
        if from.protocol == IPPROTO_TCP { (TCP_CSUM_OFF, 0) } else { (UDP_CSUM_OFF, BPF_F_MARK_MANGLED_0 as u64) };
    let addr_flags = BPF_F_PSEUDO_HDR as u64 | mangled | 4;
    if from.src_be != to.src_be {
        ctx.l4_csum_replace(l4_csum, from.src_be as u64, to.src_be as u64, addr_flags)
            .and_then(|_| ctx.l3_csum_replace(IP_CSUM_OFF, from.src_be as u64, to.src_be as u64, 4))
            .and_then(|_| ctx.store(IP_SRC_OFF, &to.src_be, 0))
            .map_err(|_| DropReason::HeaderRewrite)?;
    }
    if from.dst_be != to.dst_be {
        ctx.l4_csum_replace(l4_csum, from.dst_be as u64, to.dst_be as u64, addr_flags)
            .and_then(|_| ctx.l3_csum_replace(IP_CSUM_OFF, from.dst_be as u64, to.dst_be as u64, 4))
            .and_then(|_| ctx.store(IP_DST_OFF, &to.dst_be, 0))
            .map_err(|_| DropReason::HeaderRewrite)?;
    }
    if from.src_port_be != to.src_port_be {
        ctx.l4_csum_replace(l4_csum, from.src_port_be as u64, to.src_port_be as u64, mangled | 2)
            .and_then(|_| ctx.store(L4_OFF, &to.src_port_be, 0))
            .map_err(|_| DropReason::HeaderRewrite)?;
    }
    if from.dst_port_be != to.dst_port_be {
        ctx.l4_csum_replace(l4_csum, from.dst_port_be as u64, to.dst_port_be as u64, mangled | 2)
            .and_then(|_| ctx.store(L4_OFF + 2, &to.dst_port_be, 0))
            .map_err(|_| DropReason::HeaderRewrite)?;
    }
    Ok(())
}

/// `--lb-mode=dsr`, the entry node: send a client's packet of a direct
/// server return connection to its backend's node, through its `NAT4`
/// forward entry (`NAT4_DSR`, written by `sluice_lb4_from_uplink`),
/// DNATed (the client's address and port kept). A TCP SYN and every UDP
/// datagram carry the DSR option with the frontend the client named,
/// inserted after the IPv4 header: such a packet is first checked against
/// the egress MTU with the option counted (over the tunnel the VXLAN
/// device's MTU, which has its overhead taken off); too big, it is not
/// sent: `LB4_FRAG_NEEDED` | the MTU to tell the client (the caller
/// answers, `frag_needed`). Later TCP segments go without the option (the
/// backend's node knows the connection from its SYN) and mark the
/// connection answered: the client acknowledged the backend's SYN-ACK,
/// which never passes here (the GC gives it TCP's established timeout).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn sluice_lb4_dsr_forward(skb: *mut __sk_buff) -> u32 {
    let ctx = TcContext::new(skb);
    code(try_dsr_forward(&ctx))
}

/// `bpf_check_mtu`'s answer for a packet past the MTU.
const BPF_MTU_CHK_RET_FRAG_NEEDED: i64 = 1;

#[inline(always)]
fn try_dsr_forward(ctx: &TcContext) -> Result<u32, DropReason> {
    let Some((key, ttl)) = tuple(ctx)? else { return Err(DropReason::LookupMismatch) };
    if ttl <= 1 {
        return Err(DropReason::TtlExpired);
    }
    let Some(entry) = NAT4.get_ptr_mut(&key) else { return Err(DropReason::LookupMismatch) };
    // SAFETY: copied out at once.
    let e = unsafe { *entry };
    if e.flags & NAT4_DSR == 0 || e.next_hop_be == 0 {
        return Err(DropReason::LookupMismatch);
    }
    let via_tunnel = e.flags & NAT4_VIA_TUNNEL != 0;
    let ifindex = if via_tunnel {
        match crate::maps::TUNNEL_CONFIG.get(0) {
            Some(t) if t.vxlan_ifindex != 0 => t.vxlan_ifindex,
            _ => return Err(DropReason::NoTunnel),
        }
    } else {
        match NODE_CONFIG.get(0) {
            Some(c) if c.uplink_ifindex != 0 => c.uplink_ifindex,
            _ => return Err(DropReason::NoUplink),
        }
    };
    let with_option = key.protocol == IPPROTO_UDP || is_syn(ctx);
    if with_option {
        // The packet as it will leave: the option's bytes more. On
        // return `mtu` is the device's MTU.
        let mut mtu: u32 = 0;
        // SAFETY: helper call on our skb with a valid pointer.
        let rc = unsafe { bpf_check_mtu(ctx.skb.skb as *mut _, ifindex, &mut mtu, DSR_OPTION_LEN as i32, 0) };
        if rc == BPF_MTU_CHK_RET_FRAG_NEEDED {
            count(Nat4Counter::DsrFragNeeded);
            return Ok(LB4_FRAG_NEEDED | dsr_client_mtu(mtu) as u32);
        }
        if rc != 0 {
            return Err(DropReason::RedirectFailed);
        }
    }
    touch(entry, !with_option);
    rewrite(ctx, &key, &e)?;
    if with_option {
        insert_dsr_option(ctx, key.dst_be, key.dst_port_be, ttl - 1)?;
        count(Nat4Counter::DsrOptionSent);
    } else {
        let ip: *mut Ipv4Hdr = parse::header_mut(ctx, ETH_HLEN)?;
        forward::decrement_ttl(ip);
        count(Nat4Counter::Forwarded);
    }
    if via_tunnel {
        crate::tunnel::device::to_node(ctx, ifindex, e.next_hop_be)?;
    } else {
        forward::to_node(ctx, ifindex, e.next_hop_be)?;
    }
    count_forward(ctx, ForwardPath::UplinkToService);
    Ok(LB4_SENT)
}

/// Insert the DSR option for `frontend_be:port_be` after the packet's
/// IPv4 header (which has none), with the router's hop (`ttl`) written in
/// the same pass: the header read whole, 8 bytes of room made between it
/// and the transport header (`BPF_ADJ_ROOM_NET`), the header with the
/// option and its checksum written whole. The transport checksum covers
/// no IP option: unchanged.
#[inline(always)]
fn insert_dsr_option(ctx: &TcContext, frontend_be: u32, port_be: u16, ttl: u8) -> Result<(), DropReason> {
    let mut header = core::mem::MaybeUninit::<[u8; DSR_IPV4_HEADER_LEN]>::uninit();
    let buf = header.as_mut_ptr() as *mut u8;
    // SAFETY: 20 bytes fit the buffer.
    if unsafe { bpf_skb_load_bytes(ctx.skb.skb as *const _, ETH_HLEN as u32, buf as *mut _, 20) } != 0 {
        return Err(DropReason::Truncated);
    }
    // SAFETY: helper call on our skb.
    if unsafe { bpf_skb_adjust_room(ctx.skb.skb, DSR_OPTION_LEN as i32, BPF_ADJ_ROOM_NET, 0) } != 0 {
        return Err(DropReason::HeaderRewrite);
    }
    // SAFETY: the first 20 bytes were written by the helper; the option's
    // 8 are written by `dsr_insert_option`.
    let header = unsafe {
        let h = &mut *header.as_mut_ptr();
        h[8] = ttl;
        h
    };
    dsr_insert_option(header, frontend_be, port_be);
    // SAFETY: as above.
    if unsafe { bpf_skb_store_bytes(ctx.skb.skb, ETH_HLEN as u32, buf as *const _, DSR_IPV4_HEADER_LEN as u32, 0) } != 0
    {
        return Err(DropReason::HeaderRewrite);
    }
    Ok(())
}

/// `--lb-mode=dsr`, a backend's node (see `try_dsr_receive`).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn sluice_lb4_dsr_receive(skb: *mut __sk_buff) -> u32 {
    let ctx = TcContext::new(skb);
    code(try_dsr_receive(&ctx))
}

/// What `dsr_kind` found.
const DSR_NONE: u32 = 0;
/// A packet for a local pod with sluice's DSR option.
const DSR_OPTION: u32 = 1;
/// A TCP segment of a DSR connection to a local pod (its reply entry is
/// here): after the SYN, the client's segments carry no option.
const DSR_CONTINUES: u32 = 2;

/// `--lb-mode=dsr`, on every node (each is a backend's node for the
/// others): a client's packet an entry node sent to one of this node's
/// pods, natively or inside sluice's VXLAN (then decapsulated here):
/// - with the DSR option: the frontend it names checked (a NodePort's
///   port, an external or LoadBalancer IP's address and port: never
///   another address a pod's answers could be made to come from), the
///   reply entry written (the pod → the client, rewritten to leave as
///   from the frontend, `NAT4_DSR`), the option stripped;
/// - a later TCP segment of such a connection;
///
/// then `LB4_TO_LOCAL_POD`: the caller delivers it through the one door
/// (NetworkPolicy sees the client's address). The pod's answers go
/// through `try_reply_from_pod`: to the client, straight out of this
/// node's uplink, never back through the entry node.
#[inline(always)]
fn try_dsr_receive(ctx: &TcContext) -> Result<u32, DropReason> {
    match config() {
        Some(c) if c.flags & LB4_DSR != 0 => {}
        _ => return Ok(LB4_PASS),
    }
    let Some((_, ip)) = parse::ipv4(ctx)? else { return Ok(LB4_PASS) };
    // SAFETY: bounds checked by parse::ipv4.
    let protocol = unsafe { (*ip).protocol };
    if protocol == IPPROTO_UDP && crate::tunnel::decap::for_this_node(ctx)? {
        if dsr_kind::<{ crate::tunnel::decap::INNER_IP_OFF }>(ctx) == DSR_NONE {
            return Ok(LB4_PASS);
        }
        if !crate::tunnel::decap::strip_outer(ctx) {
            // Unchanged: the VXLAN device decapsulates it.
            return Ok(LB4_PASS);
        }
        count_forward(ctx, ForwardPath::TunnelDecap);
    }
    match dsr_kind::<ETH_HLEN>(ctx) {
        DSR_OPTION => record_and_strip(ctx),
        DSR_CONTINUES => {
            let ttl: u8 = ctx.load(ETH_HLEN + 8).map_err(|_| DropReason::Truncated)?;
            if ttl <= 1 {
                return Err(DropReason::TtlExpired);
            }
            Ok(LB4_TO_LOCAL_POD)
        }
        _ => Ok(LB4_PASS),
    }
}

/// Is the IPv4 packet at `L3` one `try_dsr_receive` takes? Anything it
/// cannot read is `DSR_NONE` (the stack's, as before).
#[inline(always)]
fn dsr_kind<const L3: usize>(ctx: &TcContext) -> u32 {
    let Ok(ip) = parse::header_mut::<Ipv4Hdr>(ctx, L3) else { return DSR_NONE };
    // SAFETY: bounds checked by header_mut.
    let (version_ihl, frag_off_be, protocol, src_be, dst_be) =
        unsafe { ((*ip).version_ihl, (*ip).frag_off_be, (*ip).protocol, (*ip).src_be, (*ip).dst_be) };
    if u16::from_be(frag_off_be) & IP_MF_OFFSET != 0 || (protocol != IPPROTO_TCP && protocol != IPPROTO_UDP) {
        return DSR_NONE;
    }
    // SAFETY: only presence is read.
    if unsafe { ENDPOINTS.get(&dst_be) }.is_none() {
        return DSR_NONE;
    }
    if version_ihl == DSR_VERSION_IHL {
        let Ok(option) = parse::header_mut::<[u8; DSR_OPTION_LEN]>(ctx, L3 + 20) else { return DSR_NONE };
        // SAFETY: bounds checked by header_mut.
        return match dsr_frontend(unsafe { &*option }) {
            Some(_) => DSR_OPTION,
            None => DSR_NONE,
        };
    }
    if version_ihl != 0x45 || protocol != IPPROTO_TCP {
        return DSR_NONE;
    }
    let Ok(ports) = parse::header_mut::<Ports>(ctx, L3 + 20) else { return DSR_NONE };
    // SAFETY: bounds checked by header_mut.
    let (src_port_be, dst_port_be) = unsafe { ((*ports).src_be, (*ports).dst_be) };
    let reply_key = Nat4Key {
        src_be: dst_be,
        dst_be: src_be,
        src_port_be: dst_port_be,
        dst_port_be: src_port_be,
        protocol,
        direction: NAT4_REPLY,
        _pad: [0; 2],
    };
    // SAFETY: copied out at once.
    match unsafe { NAT4.get(&reply_key) } {
        Some(e) if e.flags & NAT4_DSR != 0 => DSR_CONTINUES,
        _ => DSR_NONE,
    }
}

/// A DSR packet for a local pod (`DSR_OPTION`, at `ETH_HLEN`): its
/// frontend checked, its reply entry written, the option stripped.
#[inline(always)]
fn record_and_strip(ctx: &TcContext) -> Result<u32, DropReason> {
    let mut header = core::mem::MaybeUninit::<[u8; DSR_IPV4_HEADER_LEN]>::uninit();
    let buf = header.as_mut_ptr() as *mut u8;
    // SAFETY: the buffer holds the 28 bytes.
    if unsafe {
        bpf_skb_load_bytes(ctx.skb.skb as *const _, ETH_HLEN as u32, buf as *mut _, DSR_IPV4_HEADER_LEN as u32)
    } != 0
    {
        return Err(DropReason::Truncated);
    }
    // SAFETY: written whole by the helper.
    let header = unsafe { &mut *header.as_mut_ptr() };
    let mut option = [0u8; DSR_OPTION_LEN];
    option.copy_from_slice(&header[20..]);
    let Some((frontend_be, frontend_port_be)) = dsr_frontend(&option) else {
        return Err(DropReason::DsrOptionRefused);
    };
    let protocol = header[9];
    let ttl = header[8];
    let src_be = u32::from_ne_bytes([header[12], header[13], header[14], header[15]]);
    let dst_be = u32::from_ne_bytes([header[16], header[17], header[18], header[19]]);
    if !dsr_frontend_known(frontend_be, frontend_port_be, protocol) {
        return Err(DropReason::DsrOptionRefused);
    }
    if ttl <= 1 {
        return Err(DropReason::TtlExpired);
    }
    let ports: *const Ports = parse::header_mut(ctx, ETH_HLEN + DSR_IPV4_HEADER_LEN)?;
    // SAFETY: bounds checked by header_mut.
    let (src_port_be, dst_port_be) = unsafe { ((*ports).src_be, (*ports).dst_be) };
    let reply_key = Nat4Key {
        src_be: dst_be,
        dst_be: src_be,
        src_port_be: dst_port_be,
        dst_port_be: src_port_be,
        protocol,
        direction: NAT4_REPLY,
        _pad: [0; 2],
    };
    let fresh = match NAT4.get_ptr_mut(&reply_key) {
        // The same connection's (a UDP datagram after the first): kept,
        // refreshed. A TCP SYN always writes afresh (a new connection on
        // an old tuple starts with no closing bits).
        // SAFETY: a valid map value pointer, read at once.
        Some(e)
            if protocol == IPPROTO_UDP
                && unsafe { (*e).src_be == frontend_be && (*e).src_port_be == frontend_port_be } =>
        {
            touch(e, false);
            false
        }
        _ => true,
    };
    if fresh {
        let reply = Nat4Entry {
            src_be: frontend_be,
            dst_be: src_be,
            src_port_be: frontend_port_be,
            dst_port_be: src_port_be,
            next_hop_be: 0,
            flags: NAT4_DSR,
            _pad: 0,
            // SAFETY: a plain helper.
            last_seen_ns: unsafe { bpf_ktime_get_coarse_ns() },
        };
        if NAT4.insert(&reply_key, &reply, 0).is_err() {
            count(Nat4Counter::InsertFailed);
            return Err(DropReason::Nat4TableFull);
        }
    }
    // SAFETY: helper call on our skb: the 8 bytes after the fixed header
    // (the option) removed.
    if unsafe { bpf_skb_adjust_room(ctx.skb.skb, -(DSR_OPTION_LEN as i32), BPF_ADJ_ROOM_NET, 0) } != 0 {
        return Err(DropReason::HeaderRewrite);
    }
    // SAFETY: the first 20 bytes of the buffer, reinterpreted in place.
    let plain = unsafe { &mut *(buf as *mut [u8; 20]) };
    dsr_strip_option(plain);
    // SAFETY: as above.
    if unsafe { bpf_skb_store_bytes(ctx.skb.skb, ETH_HLEN as u32, buf as *const _, 20, 0) } != 0 {
        return Err(DropReason::HeaderRewrite);
    }
    count(Nat4Counter::DsrReplyRecorded);
    Ok(LB4_TO_LOCAL_POD)
}

/// Is `frontend_be:port_be` a frontend an entry node sends DSR for: an
/// external or LoadBalancer IP of this cluster (its exact key, not a
/// ClusterIP), or any address with a NodePort's port (every node has the
/// same NodePorts; which node's address the client used is the entry
/// node's to know)?
#[inline(always)]
fn dsr_frontend_known(frontend_be: u32, port_be: u16, protocol: u8) -> bool {
    let exact = ServiceKey { vip_be: frontend_be, port_be, protocol, scope: SCOPE_ADDRESS };
    // SAFETY: copied out at once.
    if let Some(v) = unsafe { SERVICES.get(&exact) }.copied() {
        return reachable_from_outside(frontend_kind(&exact, &v));
    }
    // SAFETY: only presence is read.
    unsafe { SERVICES.get(&ServiceKey::node_port(port_be, protocol)) }.is_some()
}
