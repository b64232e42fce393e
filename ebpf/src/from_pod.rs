//! `from_pod`: ingress of a pod's host-side veth; `from_pod_netkit`: the
//! same decisions as a netkit pod's peer program, run in the pod's transmit
//! path with the host end as the packet's device. The one difference is
//! local delivery: `bpf_redirect_peer` works only at TC ingress, so from
//! netkit the packet is redirected to the destination's host end (whose
//! transmit hands it to the pod).
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_REDIRECT},
    macros::classifier,
    maps::lpm_trie::Key,
    programs::TcContext,
};
use sluice_common::{
    maps::REMOTE_NODE_VXLAN,
    verdict::{self, FromPodFacts, Verdict},
    DropReason, ForwardPath, HookDirection,
};

use crate::{
    counters::{count_detail, count_forward, drop_packet},
    deliver::{deliver_to_local_pod, Origin},
    forward, from_pod6,
    lb4::{self, Lb4},
    maps::{ENDPOINTS, NODE_CONFIG, NODE_ROUTES, TUNNEL_CONFIG},
    node_path::{self, NODE_PATH_FAST, NODE_PATH_STACK},
    parse::{self, ETH_P_IPV6, L4_OFF},
    policy, stack_flows, tunnel,
};

#[classifier]
pub fn from_pod(ctx: TcContext) -> i32 {
    match try_from_pod::<false>(&ctx) {
        Ok(action) => action,
        // TC ingress of the host veth: from the pod.
        Err(reason) => drop_packet(&ctx, reason, HookDirection::Ingress),
    }
}

#[classifier]
pub fn from_pod_netkit(ctx: TcContext) -> i32 {
    match try_from_pod::<true>(&ctx) {
        Ok(action) => action,
        // The pod's transmit path, received by its host end: from the pod,
        // as `from_pod`.
        Err(reason) => drop_packet(&ctx, reason, HookDirection::Ingress),
    }
}

#[inline(always)]
fn try_from_pod<const NETKIT: bool>(ctx: &TcContext) -> Result<i32, DropReason> {
    let Some((_, ip)) = parse::ipv4(ctx)? else {
        let ether_type_be = parse::ether_type_be(ctx)?;
        // IPv6 on a dual-stack node: its own path (`from_pod6`), source
        // checked. On an IPv4-only node it is dropped below, as before.
        if ether_type_be == ETH_P_IPV6.to_be() && NODE_CONFIG.get(0).is_some_and(|c| c.dual_stack()) {
            return from_pod6::try_from_pod6::<NETKIT>(ctx);
        }
        // ARP goes to the node's stack (pods use a static neighbour for
        // their gateway, so it is rare); anything else (IPv6 on an
        // IPv4-only node) would reach the stack with no source check.
        return match verdict::from_pod_not_ipv4(ether_type_be) {
            Verdict::Drop(reason) => Err(reason),
            _ => {
                count_forward(ctx, ForwardPath::ToStack);
                Ok(TC_ACT_OK as i32)
            }
        };
    };
    // SAFETY: bounds checked by parse::ipv4.
    let (src_be, dst_be, ttl, version_ihl, tot_len_be) =
        unsafe { ((*ip).src_be, (*ip).dst_be, (*ip).ttl, (*ip).version_ihl, (*ip).tot_len_be) };
    let header_ok = verdict::ipv4_header_ok(version_ihl, tot_len_be, parse::l3_len(ctx));

    let this_ifindex = parse::ifindex(ctx);
    // SAFETY: map values are only read here, never kept across helper calls
    // that could free them.
    let source_is_own = match unsafe { ENDPOINTS.get(&src_be) } {
        Some(ep) => ep.host_ifindex == this_ifindex,
        None => false,
    };
    let local = unsafe { ENDPOINTS.get(&dst_be) };
    let remote = NODE_ROUTES.get(Key::new(32, dst_be));
    let config = NODE_CONFIG.get(0);
    let (uplink_ifindex, node_ip_be) = match config {
        Some(c) => (c.uplink_ifindex, c.node_ip_be),
        None => (0, 0),
    };
    let dest_via_tunnel = match remote {
        Some(node) => node.flags & REMOTE_NODE_VXLAN != 0,
        None => false,
    };
    let (vxlan_ifindex, vxlan_mtu) = match TUNNEL_CONFIG.get(0) {
        Some(t) => (t.vxlan_ifindex, t.mtu),
        None => (0, 0),
    };
    // GSO packets are cut to the pod's MSS on the way out; only a single
    // packet's length counts.
    let gso_size = parse::gso_size(ctx);
    let too_big_for_tunnel = gso_size == 0 && parse::l3_len(ctx) > vxlan_mtu;
    // Looked up for every packet, not only pod-bound ones: testing
    // `local.is_some() || remote.is_some()` compiles to an OR of two map
    // pointers, which the verifier refuses.
    let (key, is_fragment) = parse::flow(ctx, ip)?;
    let replies_to_stack_flow = !is_fragment && stack_flows::is_reply(&key);
    // Only a GSO packet's segments need measuring.
    let inner_headers = if gso_size != 0 { parse::l3_l4_header_len(ctx, key.protocol) } else { 0 };
    let can_encap = dest_via_tunnel && verdict::encap_fits(node_ip_be != 0, NETKIT, gso_size, inner_headers, vxlan_mtu);

    let decision = verdict::from_pod(FromPodFacts {
        source_is_own,
        dest_is_local_pod: local.is_some(),
        dest_is_remote_pod: remote.is_some(),
        dest_via_tunnel,
        uplink_configured: uplink_ifindex != 0,
        tunnel_configured: vxlan_ifindex != 0,
        too_big_for_tunnel,
        can_encap,
        ttl,
        replies_to_stack_flow,
        is_fragment,
        header_ok,
    });
    if matches!(decision, Verdict::ToLocalPod | Verdict::ToRemoteNode | Verdict::ToTunnel | Verdict::EncapToNode)
        && !is_fragment
    {
        stack_flows::forget_on_new_connection::<L4_OFF>(ctx, &key);
    }
    // NetworkPolicy: the pod's egress (and a local destination's ingress,
    // when the stack is to deliver it). Into a local pod, the door judges
    // both. To the world it must be here: the stack masquerades it next.
    if !matches!(decision, Verdict::Drop(_) | Verdict::ToLocalPod) {
        policy::enforce(ctx, ip, true, local.is_some())?;
    }
    match decision {
        Verdict::Drop(reason) => Err(reason),
        Verdict::ToStack => {
            // A Service backend's answer to a client outside the cluster
            // (`lb4`): translated back and sent out of the uplink.
            if let Lb4::Sent = lb4::reply_from_pod(ctx)? {
                return Ok(TC_ACT_REDIRECT as i32);
            }
            // The answer of a connection another node's address opened
            // without the stack (`node_path`): back the same way.
            match node_path::sluice_answer_to_node(ctx.skb.skb) {
                NODE_PATH_STACK => {}
                NODE_PATH_FAST => {
                    count_forward(ctx, ForwardPath::PodAnswerToNode);
                    return Ok(TC_ACT_REDIRECT as i32);
                }
                _ => return Err(DropReason::RedirectFailed),
            }
            count_forward(ctx, ForwardPath::ToStack);
            Ok(TC_ACT_OK as i32)
        }
        Verdict::StackFlowReply => {
            count_forward(ctx, ForwardPath::StackFlowReply);
            Ok(TC_ACT_OK as i32)
        }
        Verdict::TunnelTooBig => {
            count_forward(ctx, ForwardPath::TunnelTooBig);
            Ok(TC_ACT_OK as i32)
        }
        // IPv6 only (`from_pod6`).
        Verdict::RouterToStack => {
            count_forward(ctx, ForwardPath::ToStack);
            Ok(TC_ACT_OK as i32)
        }
        Verdict::ToLocalPod => {
            let Some(ep) = local else {
                return Err(DropReason::LookupMismatch);
            };
            deliver_to_local_pod(ctx, ep, if NETKIT { Origin::LocalPodNetkit } else { Origin::LocalPod })
        }
        Verdict::ToRemoteNode => {
            let Some(node) = remote else {
                return Err(DropReason::LookupMismatch);
            };
            forward::decrement_ttl(ip);
            let action = forward::to_node(ctx, uplink_ifindex, node.node_ip_be)?;
            count_forward(ctx, ForwardPath::PodToNode);
            Ok(action)
        }
        Verdict::ToTunnel => {
            let Some(node) = remote else {
                return Err(DropReason::LookupMismatch);
            };
            forward::decrement_ttl(ip);
            let action = tunnel::device::to_node(ctx, vxlan_ifindex, node.node_ip_be)?;
            count_forward(ctx, ForwardPath::PodToTunnel);
            Ok(action)
        }
        Verdict::EncapToNode => {
            let Some(node) = remote else {
                return Err(DropReason::LookupMismatch);
            };
            let remote_ip_be = node.node_ip_be;
            forward::decrement_ttl(ip);
            let action = match tunnel::encap::encap_to_node(ctx, uplink_ifindex, remote_ip_be)? {
                Some(action) => {
                    count_detail(ForwardPath::TunnelEncap);
                    action
                }
                // The helper refused, the packet is as it was: the device.
                None => tunnel::device::to_node(ctx, vxlan_ifindex, remote_ip_be)?,
            };
            count_forward(ctx, ForwardPath::PodToTunnel);
            Ok(action)
        }
    }
}
