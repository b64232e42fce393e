//! The one door into a local pod.
//!
//! Every program whose verdict is "into this pod" ends here, whatever way
//! the packet came: `from_pod` / `from_pod_netkit` (a pod on this node),
//! `from_uplink` (a pod on another node, routed natively), `from_tunnel`
//! and `tunnel::decap::decap_to_pod` (through VXLAN), and `to_pod` (the
//! node's stack sending it out of the pod's host end). A check added to
//! `deliver_to_local_pod` applies to all of them at once; nothing else
//! writes a pod's MACs or redirects into a pod (`into_pod` and
//! `to_pods_host_end` are private to this module).
//!
//! **NetworkPolicy's ingress check sits here** (`policy::enforce`): first
//! in `deliver_to_local_pod`, before a byte of the packet changes (a
//! decapsulating caller has only removed the outer headers), with the
//! destination endpoint and the origin in hand; a denied packet returns
//! `Err(reason)`, which every caller turns into a counted drop under its
//! own hook's direction.
//! The stack path (`Origin::Stack`) passes through it too, so a packet
//! the stack forwarded (kube-proxy's DNAT, a node's own connection) is
//! judged like one the fast path delivered. Cilium's model is the same:
//! `bpf/lib/local_delivery.h`'s `ipv4_local_delivery` tail-calls the
//! destination's policy program before redirecting.
use aya_ebpf::{
    bindings::{TC_ACT_REDIRECT, TC_ACT_UNSPEC},
    helpers::{bpf_redirect, bpf_redirect_peer},
    programs::TcContext,
};
use sluice_common::{maps::FAST_PATH_MARK, DropReason, EndpointInfo, ForwardPath};

use crate::{
    counters::count_forward,
    forward,
    maps::ENDPOINTS6,
    parse::{self, EthHdr, Ipv4Hdr, Ipv6Hdr, ETH_HLEN},
    policy,
};

/// Which way the packet reached the pod's door: how it goes through, and
/// (for the policy check) whether its source can be a pod of this node.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// `from_pod`: another pod on this node, at its host veth's ingress.
    LocalPod,
    /// `from_pod_netkit`: another pod on this node, in that (netkit) pod's
    /// transmit path, where `bpf_redirect_peer` does not work.
    LocalPodNetkit,
    /// `from_uplink`: a pod on another node, routed natively.
    Uplink,
    /// `from_tunnel` or `decap_to_pod`: a pod on another node, through
    /// VXLAN (the outer headers already gone).
    Tunnel,
    /// `to_pod`: the node's stack is sending it out of the pod's host end;
    /// it already went through the stack's hop (TTL, MACs, netfilter).
    Stack,
}

/// Deliver an IPv4 packet into the local pod `ep`: the check every
/// delivery passes (NetworkPolicy: the pod's ingress, and a local
/// sender's egress; see the module doc), then, for the fast path's origins, the router's hop (TTL−1,
/// MACs as from the pod's gateway) and the redirect, counted under the
/// origin's `ForwardPath`. The caller has decided the packet goes to this
/// pod (its verdict said `ToLocalPod`; TTL > 1 checked). `Err`: a drop,
/// with its reason.
#[inline(always)]
pub fn deliver_to_local_pod(ctx: &TcContext, ep: &EndpointInfo, origin: Origin) -> Result<i32, DropReason> {
    // NetworkPolicy, ahead of any change. From another node the source is
    // no pod of this node (anti-spoofing saw to it); from a local pod or
    // the stack (kube-proxy's DNAT of a local pod's connection) it may be.
    let src_may_be_local = !matches!(origin, Origin::Uplink | Origin::Tunnel);
    policy::enforce_delivery(ctx, src_may_be_local)?;
    let path = match origin {
        Origin::LocalPod | Origin::LocalPodNetkit => ForwardPath::PodToLocalPod,
        Origin::Uplink => ForwardPath::UplinkToPod,
        Origin::Tunnel => ForwardPath::TunnelToPod,
        // The stack did the hop, and its device hands the packet over:
        // let it go on (and any program after this one run).
        Origin::Stack => return Ok(TC_ACT_UNSPEC),
    };
    // Fetched here rather than passed in: a caller that decapsulated just
    // before (`bpf_skb_adjust_room`) holds no valid packet pointer.
    let eth: *mut EthHdr = parse::header_mut(ctx, 0)?;
    let ip: *mut Ipv4Hdr = parse::header_mut(ctx, ETH_HLEN)?;
    forward::decrement_ttl(ip);
    let action = if origin == Origin::LocalPodNetkit { to_pods_host_end(ctx, eth, ep)? } else { into_pod(eth, ep)? };
    count_forward(ctx, path);
    Ok(action)
}

/// The IPv6 twin of `deliver_to_local_pod`, for the fast path's origins
/// (`LocalPod`, `LocalPodNetkit`, `Uplink`; IPv6 has no tunnel): the same
/// check first (NetworkPolicy, `policy::enforce6`: the pod's ingress, and a
/// local sender's egress), then the router's hop (hop limit − 1, MACs as
/// from the pod's gateway) and the redirect, counted as
/// `PodToLocalPod6` / `UplinkToPod6`. The caller has decided the packet
/// goes to this pod (hop limit > 1, fits the MTU, no extension header).
/// What the stack delivers comes through `deliver6_from_stack`.
#[inline(always)]
pub fn deliver_to_local_pod6(ctx: &TcContext, ep: &EndpointInfo, origin: Origin) -> Result<i32, DropReason> {
    let (action, path) = enter_pod6(ctx, ep, origin)?;
    if let Some(path) = path {
        count_forward(ctx, path);
    }
    Ok(action)
}

/// `deliver_to_local_pod6` but for the counting: the action, and the path
/// the caller counts (`None` for `Origin::Stack`). For a caller whose own
/// frame cannot hold the trace event's (`from_uplink6`, see `fast6`).
#[inline(always)]
pub fn enter_pod6(
    ctx: &TcContext,
    ep: &EndpointInfo,
    origin: Origin,
) -> Result<(i32, Option<ForwardPath>), DropReason> {
    let src_may_be_local = !matches!(origin, Origin::Uplink | Origin::Tunnel);
    policy::enforce6(ctx, src_may_be_local, true)?;
    let path = match origin {
        Origin::LocalPod | Origin::LocalPodNetkit => ForwardPath::PodToLocalPod6,
        Origin::Uplink | Origin::Tunnel => ForwardPath::UplinkToPod6,
        Origin::Stack => return Ok((TC_ACT_UNSPEC, None)),
    };
    let eth: *mut EthHdr = parse::header_mut(ctx, 0)?;
    let ip6: *mut Ipv6Hdr = parse::header_mut(ctx, ETH_HLEN)?;
    forward::decrement_hop_limit(ip6);
    let action = if origin == Origin::LocalPodNetkit { to_pods_host_end(ctx, eth, ep)? } else { into_pod(eth, ep)? };
    Ok((action, Some(path)))
}

/// The door for the node's stack sending an IPv6 packet out of a pod's
/// host end (`to_pod`): from the node itself, from the world, or what the
/// fast path left to the stack (`Verdict::RouterToStack`, a peer over
/// VXLAN). NetworkPolicy: the pod's ingress, and the sender's egress when
/// the sender is a pod here (`from_pod6` judged it already: the
/// connection is found in `POLICY_CT6`). An address that is no pod of this
/// device passes, as in `to_pod`'s IPv4 path.
#[inline(always)]
pub fn deliver6_from_stack(ctx: &TcContext) -> Result<i32, DropReason> {
    let ip6: *const Ipv6Hdr = parse::header_mut(ctx, ETH_HLEN)?;
    // SAFETY: bounds checked by header_mut; the key is read in place.
    let this_pods = match unsafe { ENDPOINTS6.get(&(*ip6).dst) } {
        Some(ep) => ep.host_ifindex == parse::ifindex(ctx),
        None => false,
    };
    if this_pods {
        policy::enforce6(ctx, true, true)?;
    }
    Ok(TC_ACT_UNSPEC)
}

/// Rewrite MACs as if the packet came from the pod's gateway, and deliver it
/// into the pod's namespace without passing the node's stack or a bridge.
/// A refused redirect (the pod's veth went away) is a drop with its reason.
#[inline(always)]
fn into_pod(eth: *mut EthHdr, ep: &EndpointInfo) -> Result<i32, DropReason> {
    rewrite_macs(eth, ep);
    // SAFETY: helper call; returns TC_ACT_REDIRECT or TC_ACT_SHOT.
    let rc = unsafe { bpf_redirect_peer(ep.host_ifindex, 0) } as i32;
    if rc != TC_ACT_REDIRECT as i32 {
        return Err(DropReason::RedirectFailed);
    }
    Ok(rc)
}

/// From a netkit pod's transmit path (no `bpf_redirect_peer` there): MACs
/// as `into_pod` writes them, then out of the destination pod's host end,
/// whose transmit hands the packet to the pod. Marked, so that host end's
/// `to_pod` knows this door was passed already (see `stack_flows`).
#[inline(always)]
fn to_pods_host_end(ctx: &TcContext, eth: *mut EthHdr, ep: &EndpointInfo) -> Result<i32, DropReason> {
    rewrite_macs(eth, ep);
    ctx.set_mark(parse::mark(ctx) | FAST_PATH_MARK);
    // SAFETY: helper call; returns TC_ACT_REDIRECT or TC_ACT_SHOT.
    let rc = unsafe { bpf_redirect(ep.host_ifindex, 0) } as i32;
    if rc != TC_ACT_REDIRECT as i32 {
        return Err(DropReason::RedirectFailed);
    }
    Ok(rc)
}

#[inline(always)]
fn rewrite_macs(eth: *mut EthHdr, ep: &EndpointInfo) {
    // SAFETY: `eth` was bounds checked by parse::header_mut.
    unsafe {
        (*eth).dst = ep.pod_mac;
        (*eth).src = ep.host_mac;
    }
}
