//! `from_uplink`: ingress of the node's uplink.
use aya_ebpf::{bindings::TC_ACT_OK, macros::classifier, maps::lpm_trie::Key, programs::TcContext};
use sluice_common::{
    verdict::{self, FromUplinkFacts, Verdict},
    DropReason, ForwardPath,
};

use crate::{
    counters::{count_forward, drop_packet},
    forward,
    maps::{ENDPOINTS, NODE_ROUTES},
    parse, stack_flows, tunnel,
};

#[classifier]
pub fn from_uplink(ctx: TcContext) -> i32 {
    match try_from_uplink(&ctx) {
        Ok(action) => action,
        Err(reason) => drop_packet(&ctx, reason),
    }
}

#[inline(always)]
fn try_from_uplink(ctx: &TcContext) -> Result<i32, DropReason> {
    // VXLAN from a peer's `from_pod` (or its VXLAN device), for one of our
    // pods: decapsulated and delivered here, without the device. First,
    // as it may change the packet: everything below parses afresh.
    if let Some(action) = tunnel::decap_to_pod(ctx)? {
        return Ok(action);
    }
    let Some((eth, ip)) = parse::ipv4(ctx)? else {
        count_forward(ctx, ForwardPath::ToStack);
        return Ok(TC_ACT_OK as i32);
    };
    // SAFETY: bounds checked by parse::ipv4.
    let (src_be, dst_be, ttl, version_ihl, tot_len_be) =
        unsafe { ((*ip).src_be, (*ip).dst_be, (*ip).ttl, (*ip).version_ihl, (*ip).tot_len_be) };
    // SAFETY: only presence is read.
    let source_is_local_pod = unsafe { ENDPOINTS.get(&src_be).is_some() };
    // SAFETY: read-only use of the value before any other helper call.
    let local = unsafe { ENDPOINTS.get(&dst_be) };
    let header_ok = verdict::ipv4_header_ok(version_ihl, tot_len_be, parse::l3_len(ctx));
    let (mut source_is_remote_pod, mut replies_to_stack_flow, mut is_fragment) = (false, false, false);
    if local.is_some() {
        source_is_remote_pod = NODE_ROUTES.get(Key::new(32, src_be)).is_some();
        let (key, stack_only) = parse::flow(ctx, ip)?;
        is_fragment = stack_only;
        replies_to_stack_flow = !stack_only && stack_flows::is_reply(&key);
        if !stack_only && !replies_to_stack_flow {
            stack_flows::forget_on_new_connection(ctx, &key);
        }
    }
    let facts = FromUplinkFacts {
        dest_is_local_pod: local.is_some(),
        source_is_remote_pod,
        source_is_local_pod,
        header_ok,
        ttl,
        replies_to_stack_flow,
        is_fragment,
    };
    match verdict::from_uplink(facts) {
        Verdict::Drop(reason) => Err(reason),
        Verdict::StackFlowReply => {
            count_forward(ctx, ForwardPath::StackFlowReply);
            Ok(TC_ACT_OK as i32)
        }
        Verdict::ToLocalPod => {
            let Some(ep) = local else {
                return Err(DropReason::LookupMismatch);
            };
            forward::decrement_ttl(ip);
            let action = forward::into_pod(eth, ep)?;
            count_forward(ctx, ForwardPath::UplinkToPod);
            Ok(action)
        }
        // Node traffic, ARP, and anything not for a pod: the node decides.
        _ => {
            count_forward(ctx, ForwardPath::ToStack);
            Ok(TC_ACT_OK as i32)
        }
    }
}
