//! A packet another node sent, for one of this node's pods or its stack:
//! the facts its verdict needs, gathered in one place for the three ways
//! such a packet arrives — routed natively (`from_uplink`), through the
//! VXLAN device (`from_tunnel`), or VXLAN that `from_uplink` decapsulates
//! itself (`tunnel::decap::decap_to_pod`, which judges the inner packet
//! before it strips the outer headers) — and the verdict carried out.
use aya_ebpf::{bindings::TC_ACT_OK, maps::lpm_trie::Key, programs::TcContext};
use sluice_common::{
    verdict::{self, FromUplinkFacts, Verdict},
    DropReason, EndpointInfo, ForwardPath,
};

use crate::{
    counters::count_forward,
    deliver::{deliver_to_local_pod, Origin},
    maps::{ENDPOINTS, NODE_ROUTES},
    parse::{self, Ipv4Hdr},
    stack_flows,
};

/// What `judge` found: the verdict, and the local pod it is for (if any).
pub struct Judged {
    pub verdict: Verdict,
    pub dest: Option<EndpointInfo>,
}

/// Judge an IPv4 packet from another node whose IPv4 header is `ip`, at
/// `L3_OFFSET` in the packet (ports, if any, at `L4_OFFSET`: the plain
/// packet's `parse::L4_OFF`, or a VXLAN packet's inner ones).
///
/// `sender_be`: through a tunnel, the sending node's address (the outer
/// source), asked only when the packet is for a local pod and its source
/// is another node's pod; the verdict is then `verdict::from_tunnel`,
/// which checks that node owns the source's pod CIDR. `None` from the
/// uplink, where nothing on the wire says which node sent it
/// (`verdict::from_uplink`).
///
/// Side effect, as the fast path's entry points have always had: a TCP SYN
/// for a local pod forgets the stack flow its tuple reverses
/// (`stack_flows::forget_on_new_connection`).
#[inline(always)]
pub fn judge<const L3_OFFSET: usize, const L4_OFFSET: usize>(
    ctx: &TcContext,
    ip: *const Ipv4Hdr,
    sender_be: Option<impl FnOnce() -> u32>,
) -> Result<Judged, DropReason> {
    let through_tunnel = sender_be.is_some();
    // SAFETY: `ip` was bounds checked by the caller (parse::ipv4 or
    // parse::header_mut).
    let (src_be, dst_be, ttl, version_ihl, tot_len_be) =
        unsafe { ((*ip).src_be, (*ip).dst_be, (*ip).ttl, (*ip).version_ihl, (*ip).tot_len_be) };
    // SAFETY: only presence is read.
    let source_is_local_pod = unsafe { ENDPOINTS.get(&src_be).is_some() };
    // SAFETY: copied out at once (a decapsulating caller calls helpers
    // before delivering).
    let dest: Option<EndpointInfo> = unsafe { ENDPOINTS.get(&dst_be).copied() };
    let l3_len = ctx.len().saturating_sub(L3_OFFSET as u32);
    let mut facts = FromUplinkFacts {
        dest_is_local_pod: dest.is_some(),
        source_is_remote_pod: false,
        source_is_local_pod,
        header_ok: verdict::ipv4_header_ok(version_ihl, tot_len_be, l3_len),
        ttl,
        replies_to_stack_flow: false,
        is_fragment: false,
    };
    let mut sent_by_owner = false;
    // The rest matters only for a local pod: the stack takes anything else.
    if dest.is_some() {
        match (NODE_ROUTES.get(Key::new(32, src_be)), sender_be) {
            (Some(_), None) => facts.source_is_remote_pod = true,
            // Through a tunnel, the owner must be a node that can send.
            (Some(node), Some(sender)) if node.node_ip_be != 0 => {
                let owner_ip_be = node.node_ip_be;
                facts.source_is_remote_pod = true;
                sent_by_owner = sender() == owner_ip_be;
            }
            _ => {}
        }
        let (key, stack_only) = parse::flow_at::<L4_OFFSET>(ctx, ip)?;
        facts.is_fragment = stack_only;
        facts.replies_to_stack_flow = !stack_only && stack_flows::is_reply(&key);
        if !stack_only && !facts.replies_to_stack_flow {
            stack_flows::forget_on_new_connection::<L4_OFFSET>(ctx, &key);
        }
    }
    let verdict = if through_tunnel { verdict::from_tunnel(facts, sent_by_owner) } else { verdict::from_uplink(facts) };
    Ok(Judged { verdict, dest })
}

/// Carry out `judge`'s verdict for a packet still as it arrived (not
/// decapsulated by the program): into the local pod through
/// `deliver_to_local_pod`, or to the node's stack.
#[inline(always)]
pub fn carry_out(ctx: &TcContext, judged: Judged, origin: Origin) -> Result<i32, DropReason> {
    match judged.verdict {
        Verdict::Drop(reason) => Err(reason),
        Verdict::StackFlowReply => {
            count_forward(ctx, ForwardPath::StackFlowReply);
            Ok(TC_ACT_OK as i32)
        }
        Verdict::ToLocalPod => {
            let Some(ep) = judged.dest else {
                return Err(DropReason::LookupMismatch);
            };
            deliver_to_local_pod(ctx, &ep, origin)
        }
        // Node traffic, and anything not for a pod: the node decides.
        _ => {
            count_forward(ctx, ForwardPath::ToStack);
            Ok(TC_ACT_OK as i32)
        }
    }
}
