//! `from_uplink`'s IPv6 path, the twin of its IPv4 one (`from_peer`'s
//! judgement for a natively routed packet): another node's pod
//! (`NODE_ROUTES6`) sending to a pod of this node (`ENDPOINTS6`) goes
//! straight into it through the one door (`deliver::deliver_to_local_pod6`,
//! NetworkPolicy judged there), hop limit decremented; a router's answer
//! (hop limit 1, larger than the pod's MTU, extension headers or a
//! fragment) and everything not pod-to-pod (the node's own traffic, the
//! world's replies to masqueraded connections: conntrack must see them) go
//! to the stack; a packet claiming one of this node's pods as its source
//! is dropped as `uplink_source_spoofed`. Decided by a global function of
//! its own (`fast6` says why), carried out here.
use aya_ebpf::{
    bindings::{__sk_buff, TC_ACT_OK, TC_ACT_REDIRECT},
    programs::TcContext,
};
use sluice_common::{
    verdict::{self, FromUplink6Facts},
    DropReason, ForwardPath,
};

use crate::{
    counters::{count_detail, count_forward},
    deliver::{enter_pod6, Origin},
    fast6::{self, V6_ROUTER_TO_STACK, V6_STACK_FLOW_REPLY, V6_TO_LOCAL_POD, V6_TO_STACK},
    forward,
    lb6::{self, Lb6},
    maps::{found, ENDPOINTS6, FAST6_SCRATCH, NODE_ROUTES6},
    parse::{self, Ipv6Hdr, ETH_HLEN},
    stack_flows,
};

/// The IPv6 path, for `from_uplink`: decided and carried out by a global
/// function of its own, so that its frame (and the policy judgement's
/// under it) never adds to `from_uplink`'s, whose other call
/// (`sluice_lb4_from_uplink`) already takes what Linux 6.1 allows (see
/// `fast6`). The counting (and its trace event's frame) stays here.
#[inline(always)]
pub fn try_from_uplink6(ctx: &TcContext) -> Result<i32, DropReason> {
    let result = sluice_from_uplink6(ctx.skb.skb);
    if result & RESULT_DROP != 0 {
        return Err(fast6::drop_reason(fast6::V6_DROP + (result & 0xffff)));
    }
    // An IPv6 Service's packet (`lb6`): counted where it went.
    if result & RESULT_SERVICE != 0 {
        return Ok((result & 0xff) as i32);
    }
    let router = result & RESULT_ROUTER != 0;
    if router {
        count_detail(ForwardPath::Ipv6RouterToStack);
    }
    if result & RESULT_DELIVERED != 0 {
        count_forward(ctx, ForwardPath::UplinkToPod6);
    } else if result & RESULT_STACK_FLOW != 0 {
        count_forward(ctx, ForwardPath::StackFlowReply);
    } else {
        count_forward(ctx, ForwardPath::ToStack);
    }
    Ok((result & 0xff) as i32)
}

/// `sluice_from_uplink6`'s result: the TC action in the low byte, and
/// these flags; or `RESULT_DROP` with the drop reason in the low 16 bits.
const RESULT_DROP: u32 = 1 << 31;
/// Into a pod (`UplinkToPod6`); else to the stack (`ToStack`).
const RESULT_DELIVERED: u32 = 1 << 8;
/// To the stack as the router (`Ipv6RouterToStack`).
const RESULT_ROUTER: u32 = 1 << 9;
/// To the stack as the reply of a flow it forwarded (`StackFlowReply`).
const RESULT_STACK_FLOW: u32 = 1 << 10;
/// An IPv6 Service's packet `lb6` translated and sent, or refused
/// (counted there).
const RESULT_SERVICE: u32 = 1 << 11;

#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn sluice_from_uplink6(skb: *mut __sk_buff) -> u32 {
    let ctx = TcContext::new(skb);
    match carry_out(&ctx) {
        Ok(result) => result,
        Err(reason) => RESULT_DROP | reason as u32,
    }
}

#[inline(always)]
fn carry_out(ctx: &TcContext) -> Result<u32, DropReason> {
    // IPv6 Services from outside first (`lb6`): it may change the packet.
    match lb6::from_uplink(ctx)? {
        Lb6::Pass => {}
        Lb6::Sent => return Ok(TC_ACT_REDIRECT as u32 | RESULT_SERVICE),
        Lb6::ToLocalPod => {
            let action = lb6::to_local_backend(ctx)?;
            return Ok(action as u32 | RESULT_SERVICE);
        }
        Lb6::Refuse => return Ok(lb6::refuse(ctx) as u32 | RESULT_SERVICE),
    }
    let code = sluice_from_uplink6_decide(ctx.skb.skb);
    match code {
        V6_TO_LOCAL_POD => {
            let Some(scratch) = FAST6_SCRATCH.get_ptr(0) else {
                return Err(DropReason::LookupMismatch);
            };
            // SAFETY: this CPU's slot, written by the decision just now.
            let (action, _) = enter_pod6(ctx, unsafe { &(*scratch).ep }, Origin::Uplink)?;
            Ok(action as u32 | RESULT_DELIVERED)
        }
        V6_TO_STACK => Ok(TC_ACT_OK as u32),
        V6_ROUTER_TO_STACK => Ok(TC_ACT_OK as u32 | RESULT_ROUTER),
        V6_STACK_FLOW_REPLY => Ok(TC_ACT_OK as u32 | RESULT_STACK_FLOW),
        code => Err(fast6::drop_reason(code)),
    }
}

/// Decide for an IPv6 packet from the uplink (`verdict::from_uplink6`);
/// for a local pod, leave it in `FAST6_SCRATCH`. Returns the verdict's
/// `fast6` code.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn sluice_from_uplink6_decide(skb: *mut __sk_buff) -> u32 {
    let ctx = TcContext::new(skb);
    match decide(&ctx) {
        Ok(code) => code,
        Err(reason) => fast6::V6_DROP + reason as u32,
    }
}

#[inline(always)]
fn decide(ctx: &TcContext) -> Result<u32, DropReason> {
    let ip6: *const Ipv6Hdr = parse::header_mut(ctx, ETH_HLEN)?;
    // SAFETY: bounds checked by header_mut. The addresses stay in the
    // packet (map keys may live there; nothing here changes the packet).
    let (version, next_header, hop_limit) =
        unsafe { ((*ip6).version_class_flow[0] >> 4, (*ip6).next_header, (*ip6).hop_limit) };
    let (src, dst) = unsafe { (&(*ip6).src, &(*ip6).dst) };
    let Some(scratch) = FAST6_SCRATCH.get_ptr_mut(0) else {
        return Err(DropReason::LookupMismatch);
    };
    // SAFETY: map values, read within this run.
    let dest = unsafe { ENDPOINTS6.get(dst) };
    // SAFETY: only presence is read.
    let source_is_local_pod = found(unsafe { ENDPOINTS6.get(src) });
    let mut facts = FromUplink6Facts {
        version_ok: version == 6,
        dest_is_local_pod: found(dest),
        source_is_local_pod,
        plain_transport: verdict::ipv6_plain_transport(next_header),
        hop_limit,
        ..FromUplink6Facts::default()
    };
    // The rest matters only for a local pod: the stack takes anything else.
    if let Some(ep) = dest {
        // SAFETY: this CPU's slot, used by this program run alone.
        facts.source_is_remote_pod = found(unsafe {
            (*scratch).key.prefix_len = 128;
            (*scratch).key.data = *src;
            NODE_ROUTES6.get(&(*scratch).key)
        });
        facts.fits_mtu = forward::fits_mtu(ctx, ep.host_ifindex);
        // Only pod-to-pod traffic could take the fast path.
        facts.replies_to_stack_flow = facts.source_is_remote_pod && stack_flows::is_reply6_or_forget(ctx, ip6);
    }
    let code = fast6::encode(verdict::from_uplink6(facts));
    if code == V6_TO_LOCAL_POD {
        let Some(ep) = dest else {
            return Err(DropReason::LookupMismatch);
        };
        // SAFETY: this CPU's slot; `ep` a map value read now.
        unsafe { (*scratch).ep = *ep };
    }
    Ok(code)
}
