//! `from_pod`'s IPv6 path, the twin of its IPv4 one, on a dual-stack node
//! (`NodeConfig::dual_stack`). First the source, checked against
//! `ENDPOINTS6` for this very interface (or link-local / unspecified to a
//! link-scope destination: neighbour discovery for the gateway, MLD, DAD);
//! a forged one is dropped and counted as `source_spoofed`, as for IPv4.
//! Then the fast path, as IPv4's (`verdict::from_pod6`):
//! - a pod of this node (`ENDPOINTS6`): into it through the one door
//!   (`deliver::deliver_to_local_pod6`, which judges its NetworkPolicy),
//!   hop limit decremented;
//! - another node's pod, natively routed (`NODE_ROUTES6`): hop limit
//!   decremented, out of the uplink by `bpf_redirect_neigh` to that node's
//!   IPv6 address;
//! - pod-bound but a router's answer is due (hop limit 1, larger than the
//!   egress MTU, extension headers or a fragment): to the stack, which
//!   sends time exceeded / Packet Too Big or walks the header chain;
//! - for `64:ff9b::/96` with NAT64 on (`--nat64`): translated to IPv4 and
//!   handed to the stack on the NAT64 device (`nat64`);
//! - anything else (the node, the world, a peer over VXLAN: its
//!   `NODE_ROUTES6` entry is flagged `REMOTE_NODE_VXLAN`, and the kernel
//!   route encapsulates it): to the stack, which routes it.
//!
//! Decided by a global function of its own (`fast6` says why), carried out
//! here.
use aya_ebpf::{
    bindings::{__sk_buff, TC_ACT_OK, TC_ACT_REDIRECT},
    programs::TcContext,
};
use sluice_common::{
    maps::REMOTE_NODE_VXLAN,
    verdict::{self, FromPod6Facts},
    DropReason, ForwardPath,
};

use crate::{
    counters::{count_detail, count_forward},
    deliver::{deliver_to_local_pod6, Origin},
    fast6::{self, V6_ROUTER_TO_STACK, V6_STACK_FLOW_REPLY, V6_TO_LOCAL_POD, V6_TO_REMOTE_NODE, V6_TO_STACK},
    forward,
    lb6::{self, Lb6},
    maps::{found, ENDPOINTS6, FAST6_SCRATCH, NODE_CONFIG, NODE_ROUTES6},
    nat64,
    parse::{self, Ipv6Hdr, ETH_HLEN},
    policy, stack_flows,
};

const AF_INET6: u32 = 10;

#[inline(always)]
pub fn try_from_pod6<const NETKIT: bool>(ctx: &TcContext) -> Result<i32, DropReason> {
    let code = sluice_from_pod6_decide(ctx.skb.skb);
    match code {
        V6_TO_LOCAL_POD => {
            let Some(scratch) = FAST6_SCRATCH.get_ptr(0) else {
                return Err(DropReason::LookupMismatch);
            };
            // SAFETY: this CPU's slot, written by the decision just now.
            let ep = unsafe { &(*scratch).ep };
            // NetworkPolicy: the door judges both ends, once.
            deliver_to_local_pod6(ctx, ep, if NETKIT { Origin::LocalPodNetkit } else { Origin::LocalPod })
        }
        V6_TO_REMOTE_NODE => {
            // NetworkPolicy: the pod's egress (the other node judges the
            // destination's ingress).
            policy::enforce6(ctx, true, false)?;
            let ip6: *mut Ipv6Hdr = parse::header_mut(ctx, ETH_HLEN)?;
            let Some(scratch) = FAST6_SCRATCH.get_ptr_mut(0) else {
                return Err(DropReason::LookupMismatch);
            };
            forward::decrement_hop_limit(ip6);
            // SAFETY: as above; the next hop is read by the helper from
            // map memory.
            let action = unsafe { forward::to_node6(ctx, (*scratch).uplink_ifindex, &mut (*scratch).nh)? };
            count_forward(ctx, ForwardPath::PodToNode6);
            Ok(action)
        }
        V6_TO_STACK | V6_ROUTER_TO_STACK | V6_STACK_FLOW_REPLY => {
            // NetworkPolicy: the pod's egress, and a local destination's
            // ingress (the stack delivers it next, through `to_pod`, which
            // then finds the connection judged for both ends).
            policy::enforce6(ctx, true, true)?;
            // A Service backend's answer to a client outside the cluster
            // (`lb6`): translated back and sent out of the uplink.
            if code == V6_TO_STACK {
                if let Lb6::Sent = lb6::reply_from_pod(ctx)? {
                    return Ok(TC_ACT_REDIRECT as i32);
                }
                // For `64:ff9b::/96` with NAT64 on: translated to IPv4
                // and handed to the stack on the NAT64 device (`nat64`).
                if nat64::from_pod(ctx)? {
                    return Ok(TC_ACT_REDIRECT as i32);
                }
            }
            if code == V6_ROUTER_TO_STACK {
                count_detail(ForwardPath::Ipv6RouterToStack);
            }
            if code == V6_STACK_FLOW_REPLY {
                count_forward(ctx, ForwardPath::StackFlowReply);
            } else {
                count_forward(ctx, ForwardPath::PodIpv6ToStack);
            }
            Ok(TC_ACT_OK as i32)
        }
        code => Err(fast6::drop_reason(code)),
    }
}

/// Decide for a pod's IPv6 packet (`verdict::from_pod6`); for a fast-path
/// verdict, leave the destination in `FAST6_SCRATCH`. Returns the verdict's
/// `fast6` code.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn sluice_from_pod6_decide(skb: *mut __sk_buff) -> u32 {
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
    // SAFETY: the value is only read here.
    let source_is_own = match unsafe { ENDPOINTS6.get(src) } {
        Some(ep) => ep.host_ifindex == parse::ifindex(ctx),
        None => false,
    };
    // SAFETY: map values, read within this run.
    let local = unsafe { ENDPOINTS6.get(dst) };
    // SAFETY: this CPU's slot, used by this program run alone.
    let remote = unsafe {
        (*scratch).key.prefix_len = 128;
        (*scratch).key.data = *dst;
        NODE_ROUTES6.get(&(*scratch).key)
    };
    // A peer reached through VXLAN (`REMOTE_NODE_VXLAN`, its IPv4 node
    // address IPv4-mapped) is not for the native fast path: the stack
    // routes it into the VXLAN device (`kernel_routes6`).
    let remote = remote.filter(|node| node.flags & REMOTE_NODE_VXLAN == 0);
    // Their presence as scalars (see `maps::found`): combined below.
    let (is_local, is_remote) = (found(local), found(remote));
    let uplink_ifindex = match NODE_CONFIG.get(0) {
        Some(c) => c.uplink_ifindex,
        None => 0,
    };
    // The device it would leave by: the destination pod's host end, or the
    // uplink. Asked only of packets for a pod.
    let egress_ifindex = if is_local {
        match local {
            Some(ep) => ep.host_ifindex,
            None => 0,
        }
    } else if is_remote {
        uplink_ifindex
    } else {
        0
    };
    let fits_mtu = egress_ifindex != 0 && forward::fits_mtu(ctx, egress_ifindex);
    // Only for a packet the fast path would carry (a pod's own, to a pod).
    let replies_to_stack_flow = source_is_own && egress_ifindex != 0 && stack_flows::is_reply6_or_forget(ctx, ip6);
    let code = fast6::encode(verdict::from_pod6(FromPod6Facts {
        version_ok: version == 6,
        source_is_own,
        source_is_link_local_or_unspecified: verdict::ipv6_link_local_or_unspecified(src),
        dest_is_link_scope: verdict::ipv6_link_scope(dst),
        dest_is_local_pod: is_local,
        dest_is_remote_pod: is_remote,
        uplink_configured: uplink_ifindex != 0,
        plain_transport: verdict::ipv6_plain_transport(next_header),
        hop_limit,
        fits_mtu,
        replies_to_stack_flow,
    }));
    if code == V6_TO_LOCAL_POD || code == V6_TO_REMOTE_NODE {
        if code == V6_TO_LOCAL_POD {
            let Some(ep) = local else {
                return Err(DropReason::LookupMismatch);
            };
            // SAFETY: this CPU's slot; `ep` a map value read now.
            unsafe { (*scratch).ep = *ep };
        } else {
            let Some(node) = remote else {
                return Err(DropReason::LookupMismatch);
            };
            // SAFETY: as above.
            unsafe {
                (*scratch).uplink_ifindex = uplink_ifindex;
                (*scratch).nh.nh_family = AF_INET6;
                (*scratch).nh.__bindgen_anon_1.ipv6_nh = forward::words(&node.node_ip6);
            }
        }
    }
    Ok(code)
}
