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
use aya_ebpf::{bindings::TC_ACT_UNSPEC, macros::classifier, maps::lpm_trie::Key, programs::TcContext};
use sluice_common::{maps::FAST_PATH_MARK, DropReason, FlowKey, HookDirection, StackFlowEvent};

use crate::{
    counters::drop_packet,
    deliver::{deliver6_from_stack, deliver_to_local_pod, Origin},
    maps::{ENDPOINTS, NODE_ROUTES, STACK_FLOWS, STACK_FLOW_STATS},
    parse::{self, ETH_P_IPV6},
    policy,
};

/// Count a `STACK_FLOWS` event (user space derives evictions from these).
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
