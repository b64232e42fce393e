//! `from_uplink`: ingress of the node's uplink (IPv6: `from_uplink6`).
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_REDIRECT},
    macros::classifier,
    programs::TcContext,
};
use sluice_common::{verdict::Verdict, DropReason, EndpointInfo, ForwardPath, HookDirection};

use crate::{
    counters::{count_detail, count_forward, drop_packet},
    deliver::{deliver_to_local_pod, Origin},
    from_peer, from_uplink6,
    lb4::{self, Lb4},
    maps::ENDPOINTS,
    node_path::{self, NODE_PATH_FAST},
    parse::{self, Ipv4Hdr, ETH_HLEN, ETH_P_IPV6, L4_OFF},
    tunnel,
};

#[classifier]
pub fn from_uplink(ctx: TcContext) -> i32 {
    match try_from_uplink(&ctx) {
        Ok(action) => action,
        Err(reason) => drop_packet(&ctx, reason, HookDirection::Ingress),
    }
}

#[inline(always)]
fn try_from_uplink(ctx: &TcContext) -> Result<i32, DropReason> {
    // VXLAN from a peer's `from_pod` (or its VXLAN device), for one of our
    // pods: decapsulated and delivered here, without the device. First,
    // as it may change the packet: everything below parses afresh.
    if let Some(action) = tunnel::decap::decap_to_pod(ctx)? {
        return Ok(action);
    }
    // Services from outside (`lb4`): a frontend's packet translated, or a
    // backend's answer sent back. Before the rest: it changes the packet.
    match lb4::from_uplink(ctx)? {
        Lb4::Pass => {}
        Lb4::Sent => return Ok(TC_ACT_REDIRECT as i32),
        Lb4::ToLocalPod => return to_service_backend(ctx),
        Lb4::Refuse => return Ok(lb4::refuse(ctx)),
        Lb4::FragNeeded(mtu) => return Ok(lb4::frag_needed(ctx, mtu)),
        // `lb4::from_uplink` carries these on itself (`dsr_new`,
        // `dsr_forward`).
        Lb4::Dsr => return Err(DropReason::LookupMismatch),
    }
    let Some((_, ip)) = parse::ipv4(ctx)? else {
        // IPv6 from another node's pod: its own path (`from_uplink6`).
        // Without a dual-stack node's `ENDPOINTS6` it finds no pod and
        // leaves everything to the stack, as before.
        if parse::ether_type_be(ctx)? == ETH_P_IPV6.to_be() {
            return from_uplink6::try_from_uplink6(ctx);
        }
        count_forward(ctx, ForwardPath::ToStack);
        return Ok(TC_ACT_OK as i32);
    };
    // Natively routed: nothing on the wire says which node sent it.
    let judged = from_peer::judge::<ETH_HLEN, L4_OFF>(ctx, ip, None::<fn() -> u32>)?;
    // For a local pod from no pod: another node's own address may skip
    // the stack (`node_path`).
    if let (Verdict::ToStack, Some(ep)) = (judged.verdict, judged.dest) {
        if node_path::sluice_from_node_decide(ctx.skb.skb) == NODE_PATH_FAST {
            return from_node(ctx, &ep);
        }
    }
    from_peer::carry_out(ctx, judged, Origin::Uplink)
}

/// From another node's address into the local pod `ep` through the one
/// door, as from another node's pod; then its answers are remembered
/// (`NODE_FLOWS`), so they leave the same way.
#[inline(always)]
fn from_node(ctx: &TcContext, ep: &EndpointInfo) -> Result<i32, DropReason> {
    let action = deliver_to_local_pod(ctx, ep, Origin::Uplink)?;
    node_path::sluice_node_flows_remember(ctx.skb.skb);
    count_detail(ForwardPath::NodeToPod);
    Ok(action)
}

/// A Service's packet `lb4` translated for a backend on this node: into it
/// through the one door, as from another node.
#[inline(always)]
fn to_service_backend(ctx: &TcContext) -> Result<i32, DropReason> {
    let ip: *const Ipv4Hdr = parse::header_mut(ctx, ETH_HLEN)?;
    // SAFETY: bounds checked by header_mut.
    let dst_be = unsafe { (*ip).dst_be };
    // SAFETY: copied out at once.
    let Some(ep) = (unsafe { ENDPOINTS.get(&dst_be) }).copied() else {
        return Err(DropReason::LookupMismatch);
    };
    let action = deliver_to_local_pod(ctx, &ep, Origin::Uplink)?;
    count_detail(ForwardPath::UplinkToService);
    Ok(action)
}
