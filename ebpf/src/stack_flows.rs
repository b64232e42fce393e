//! Flows the node's stack forwarded, so their replies return through it.
//!
//! The fast path (`from_pod`, `from_uplink`) skips netfilter. That is right
//! for plain pod-to-pod traffic, and wrong for a reply to a flow the stack
//! translated: kube-proxy's DNAT of a ClusterIP or NodePort, portmap's
//! hostPort. Conntrack must see that reply to undo the translation, or the
//! client gets an answer from an address it never asked.
//!
//! So the two egress programs, which see only what the stack sends (the
//! fast path's local deliveries never pass a host veth's egress, and its
//! uplink packets and deliveries from netkit pods carry `FAST_PATH_MARK`), remember the reply tuple of every
//! packet from a pod; the ingress programs send packets matching one to the
//! stack. The kernel's conntrack is the state; this map only says "ask it".
//!
//! IPv6 (a dual-stack node) has the twin, `STACK_FLOWS6`: remembered at
//! the same two egress doors, checked by the IPv6 fast path's decisions
//! (`from_pod6`, `from_uplink6`). Its key (40 bytes) is built in
//! `FLOW6_SCRATCH`, never on the stack, and the remembering is a global
//! function of its own, so neither adds to the callers' frames (see
//! `fast6`).
use aya_ebpf::{
    bindings::{__sk_buff, TC_ACT_UNSPEC},
    macros::classifier,
    maps::lpm_trie::Key,
    programs::TcContext,
};
use sluice_common::{maps::FAST_PATH_MARK, DropReason, FlowKey, FlowKey6, HookDirection, StackFlowEvent};

use crate::{
    counters::drop_packet,
    deliver::{deliver6_from_stack, deliver_to_local_pod, Origin},
    maps::{
        found, ENDPOINTS, ENDPOINTS6, FLOW6_SCRATCH, NODE_ROUTES, NODE_ROUTES6, STACK_FLOWS, STACK_FLOWS6,
        STACK_FLOW_STATS,
    },
    parse::{self, Ipv6Hdr, ETH_HLEN, ETH_P_IPV6},
    policy,
};

/// Where an IPv6 packet's transport header starts when nothing but the
/// fixed header comes before it (the only packets the IPv6 fast path
/// carries, `verdict::ipv6_plain_transport`).
pub const L4_OFF6: usize = ETH_HLEN + core::mem::size_of::<Ipv6Hdr>();

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMPV6: u8 = 58;
const IPPROTO_SCTP: u8 = 132;

/// `FLOW6_SCRATCH`'s value: per CPU, used by one program run at a time.
#[repr(C)]
pub struct Flow6Scratch {
    /// A `STACK_FLOWS6` key.
    pub key: FlowKey6,
    /// A `NODE_ROUTES6` key (is the source another node's pod?).
    pub route: Key<[u8; 16]>,
}

/// Count a `STACK_FLOWS` or `STACK_FLOWS6` event (user space derives each
/// table's evictions from its own).
#[inline(always)]
fn count(event: StackFlowEvent) {
    if let Some(n) = STACK_FLOW_STATS.get_ptr_mut(event as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe { *n += 1 }
    }
}

/// Is `key` the reply of a flow the stack forwarded?
#[inline(always)]
pub fn is_reply(key: &FlowKey) -> bool {
    // SAFETY: only presence is read.
    unsafe { STACK_FLOWS.get(key).is_some() }
}

/// A pod opens a connection on the fast path: whatever the stack once
/// forwarded with this tuple (kube-proxy's DNAT to the same backend port
/// from the same source port, since ended) is over. Its entry would send
/// this connection's replies to the stack, where conntrack finds no flow
/// and drops them as INVALID. `L4_OFFSET`: where `key`'s packet has its
/// TCP header (`parse::L4_OFF`, or further in for a VXLAN packet's inner
/// one).
#[inline(always)]
pub fn forget_on_new_connection<const L4_OFFSET: usize>(ctx: &TcContext, key: &FlowKey) {
    if parse::is_tcp_syn_at::<L4_OFFSET>(ctx, key) && STACK_FLOWS.remove(&key.reversed()).is_ok() {
        count(StackFlowEvent::Forgotten);
    }
}

/// Remember the reply tuple of this packet (refreshing it if known).
#[inline(always)]
pub fn remember(key: &FlowKey) {
    let reply = key.reversed();
    // SAFETY: only presence is read; a lookup also refreshes the LRU entry.
    if unsafe { STACK_FLOWS.get(&reply).is_none() } {
        // A full LRU table evicts its least recently used entry to make
        // room; a failure here means not even that worked.
        match STACK_FLOWS.insert(&reply, &0, 0) {
            Ok(()) => count(StackFlowEvent::Remembered),
            Err(_) => count(StackFlowEvent::InsertFailed),
        }
    }
}

/// The flow tuple of an IPv4 packet (`None` for anything else).
#[inline(always)]
pub fn flow_key(ctx: &TcContext) -> Option<FlowKey> {
    let (_, ip) = parse::ipv4(ctx).ok()??;
    parse::flow(ctx, ip).ok().map(|(key, _)| key)
}

/// What the stack sends out of a pod's host device. From a pod (this
/// node's or another's), it crossed the stack on the way: remember it.
/// Then it enters the pod through the same door as the fast path's
/// deliveries (`deliver::deliver_to_local_pod`, `Origin::Stack`). A netkit
/// pod's local delivery passes here too, marked (cleared here): it went
/// through that door already, in `from_pod_netkit`.
#[classifier]
pub fn to_pod(ctx: TcContext) -> i32 {
    match try_to_pod(&ctx) {
        Ok(action) => action,
        Err(reason) => drop_packet(&ctx, reason, HookDirection::Egress),
    }
}

#[inline(always)]
fn try_to_pod(ctx: &TcContext) -> Result<i32, DropReason> {
    let mark = parse::mark(ctx);
    if mark & FAST_PATH_MARK != 0 {
        ctx.set_mark(mark & !FAST_PATH_MARK);
        return Ok(TC_ACT_UNSPEC);
    }
    let Some(key) = flow_key(ctx) else {
        // IPv6 (dual-stack): the stack is its one way into a pod, and
        // this its door. ARP: not for the door.
        if parse::ether_type_be(ctx).ok() == Some(ETH_P_IPV6.to_be()) {
            sluice_stack_flows_remember6(ctx.skb.skb, 1);
            return deliver6_from_stack(ctx);
        }
        return Ok(TC_ACT_UNSPEC);
    };
    // SAFETY: only presence is read.
    let from_pod =
        unsafe { ENDPOINTS.get(&key.src_be).is_some() } || NODE_ROUTES.get(Key::new(32, key.src_be)).is_some();
    if from_pod {
        remember(&key);
    }
    // SAFETY: read before any helper call that could free it.
    match unsafe { ENDPOINTS.get(&key.dst_be) } {
        // The pod behind this very device.
        Some(ep) if ep.host_ifindex == parse::ifindex(ctx) => deliver_to_local_pod(ctx, ep, Origin::Stack),
        // Not a pod of this device (an address the stack routes here by
        // a rule of its own): let it go, as before the door existed.
        _ => Ok(TC_ACT_UNSPEC),
    }
}

/// What leaves through the uplink. The fast path's own packets carry the
/// mark (cleared here); anything else from a local pod went through the
/// stack: its egress judged (`local_pod_via_stack`), then remembered.
#[classifier]
pub fn to_uplink(ctx: TcContext) -> i32 {
    let mark = parse::mark(&ctx);
    if mark & FAST_PATH_MARK != 0 {
        ctx.set_mark(mark & !FAST_PATH_MARK);
        return TC_ACT_UNSPEC;
    }
    if parse::ether_type_be(&ctx).ok() == Some(ETH_P_IPV6.to_be()) {
        // A pod's IPv6 the stack forwarded (its egress was judged in
        // `from_pod6` already).
        sluice_stack_flows_remember6(ctx.skb.skb, 0);
        return TC_ACT_UNSPEC;
    }
    match local_pod_via_stack(&ctx) {
        Ok(()) => TC_ACT_UNSPEC,
        Err(reason) => drop_packet(&ctx, reason, HookDirection::Egress),
    }
}

/// A packet the stack sends out towards another node (`to_uplink`,
/// `to_tunnel`): if it is from a local pod, its egress is judged here
/// (NetworkPolicy: a connection to a ClusterIP is judged after kube-proxy's
/// DNAT, to the backend it chose), and it is remembered as a stack flow.
#[inline(always)]
pub fn local_pod_via_stack(ctx: &TcContext) -> Result<(), DropReason> {
    let Some((_, ip)) = parse::ipv4(ctx)? else {
        return Ok(());
    };
    let Ok((key, _)) = parse::flow(ctx, ip) else {
        return Ok(());
    };
    // SAFETY: only presence is read.
    if unsafe { ENDPOINTS.get(&key.src_be).is_none() } {
        return Ok(());
    }
    policy::enforce(ctx, ip, true, false)?;
    remember(&key);
    Ok(())
}

/// Fill `key` with the tuple of the IPv6 packet `ip6` (at `ETH_HLEN`) if
/// a transport follows the fixed header directly (TCP, UDP, SCTP with
/// their ports; ICMPv6 with none). Anything else (an extension header, a
/// fragment) has no tuple here: `false`, and the IPv6 fast path leaves it
/// to the stack anyway.
#[inline(always)]
fn flow6(ctx: &TcContext, ip6: *const Ipv6Hdr, key: *mut FlowKey6) -> bool {
    // SAFETY: `ip6` bounds checked by the caller's `header_mut`; `key` is
    // this CPU's scratch slot.
    unsafe {
        let protocol = (*ip6).next_header;
        if !matches!(protocol, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP | IPPROTO_ICMPV6) {
            return false;
        }
        (*key).src = (*ip6).src;
        (*key).dst = (*ip6).dst;
        (*key).protocol = protocol;
        (*key)._pad = [0; 3];
        (*key).src_port_be = 0;
        (*key).dst_port_be = 0;
        if protocol != IPPROTO_ICMPV6 {
            let Ok(ports) = parse::header_mut::<parse::Ports>(ctx, L4_OFF6) else {
                return false;
            };
            (*key).src_port_be = (*ports).src_be;
            (*key).dst_port_be = (*ports).dst_be;
        }
    }
    true
}

/// Turn `key` into its reply's tuple, in place.
#[inline(always)]
fn reverse6(key: *mut FlowKey6) {
    // SAFETY: this CPU's scratch slot.
    unsafe { *key = (*key).reversed() }
}

/// For the IPv6 fast path's decisions (`from_pod6`, `from_uplink6`), on a
/// packet it would carry (a pod's, to a pod): is it the reply of a flow
/// the stack forwarded (`STACK_FLOWS6`)? If not, and it opens a TCP
/// connection, whatever the stack once forwarded with the reverse tuple is
/// over (as `forget_on_new_connection`). Leaves `FLOW6_SCRATCH`'s key
/// reversed or not: its callers do not read it.
#[inline(always)]
pub fn is_reply6_or_forget(ctx: &TcContext, ip6: *const Ipv6Hdr) -> bool {
    let Some(scratch) = FLOW6_SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's slot, used by this program run alone.
    let key = unsafe { &mut (*scratch).key as *mut FlowKey6 };
    if !flow6(ctx, ip6, key) {
        return false;
    }
    // SAFETY: only presence is read (a lookup refreshes the LRU entry).
    if found(unsafe { STACK_FLOWS6.get(&*key) }) {
        return true;
    }
    // SAFETY: the protocol as just written.
    if unsafe { (*key).protocol } == IPPROTO_TCP && is_tcp_syn6(ctx) {
        reverse6(key);
        // SAFETY: as above.
        if STACK_FLOWS6.remove(unsafe { &*key }).is_ok() {
            count(StackFlowEvent::Forgotten6);
        }
    }
    false
}

/// A TCP SYN without ACK right after the fixed IPv6 header.
#[inline(always)]
fn is_tcp_syn6(ctx: &TcContext) -> bool {
    const TCP_FLAGS_OFFSET: usize = 13;
    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    match parse::header_mut::<u8>(ctx, L4_OFF6 + TCP_FLAGS_OFFSET) {
        // SAFETY: bounds checked by header_mut.
        Ok(flags) => unsafe { *flags & (SYN | ACK) == SYN },
        Err(_) => false,
    }
}

/// The IPv6 twin of `remember` with its callers' test: an IPv6 packet the
/// stack sends out of a pod's host end (`to_pod`, `from_remote_too` set:
/// from a pod of this node or another's) or out of the uplink (`to_uplink`:
/// from a pod of this node) crossed the stack: its reply tuple goes into
/// `STACK_FLOWS6`. A global function, so that its frame never adds to the
/// door's that `to_pod` calls next. Returns 1 when it remembered.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn sluice_stack_flows_remember6(skb: *mut __sk_buff, from_remote_too: u32) -> u32 {
    let ctx = TcContext::new(skb);
    let Ok(ip6) = parse::header_mut::<Ipv6Hdr>(&ctx, ETH_HLEN) else {
        return 0;
    };
    let Some(scratch) = FLOW6_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: bounds checked by header_mut; map values only tested for
    // presence; the scratch slot is this CPU's.
    let from_pod = unsafe {
        let src = &(*ip6).src;
        found(ENDPOINTS6.get(src))
            || (from_remote_too != 0 && {
                (*scratch).route.prefix_len = 128;
                (*scratch).route.data = *src;
                found(NODE_ROUTES6.get(&(*scratch).route))
            })
    };
    // SAFETY: as above.
    let key = unsafe { &mut (*scratch).key as *mut FlowKey6 };
    if !from_pod || !flow6(&ctx, ip6, key) {
        return 0;
    }
    reverse6(key);
    // SAFETY: as above.
    let reply = unsafe { &*key };
    // SAFETY: only presence is read; a lookup also refreshes the LRU entry.
    if unsafe { STACK_FLOWS6.get(reply).is_none() } {
        match STACK_FLOWS6.insert(reply, &0, 0) {
            Ok(()) => count(StackFlowEvent::Remembered6),
            Err(_) => count(StackFlowEvent::InsertFailed6),
        }
    }
    1
}
