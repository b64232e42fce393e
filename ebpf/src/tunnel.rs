//! VXLAN (issue 15): encapsulation for peers `NODE_ROUTES` flags
//! `REMOTE_NODE_VXLAN`, and `from_tunnel`, the ingress of the node's VXLAN
//! device (external / collect_md mode: the program names the remote end
//! per packet, the device only encapsulates).
//!
//! Pod-to-pod packets skip the device both ways: `encap_to_node` (from
//! `from_pod`) writes the outer headers itself and sends the result out of
//! the uplink, and `decap_to_pod` (from `from_uplink`) strips them and
//! delivers into the pod. What they produce and accept is plain VXLAN on
//! `TUNNEL_PORT` with `TUNNEL_VNI`, the same bytes the device sends, so a
//! node still running the device-only programs interoperates.
use aya_ebpf::{
    bindings::{
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, bpf_fib_lookup, bpf_tunnel_key, BPF_ADJ_ROOM_ENCAP_L2_SHIFT,
        BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_OUTPUT, BPF_FIB_LOOKUP_SKIP_NEIGH, BPF_FIB_LOOKUP_SRC,
        BPF_F_ADJ_ROOM_DECAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L2_ETH, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4,
        BPF_F_ADJ_ROOM_ENCAP_L4_UDP, BPF_F_ADJ_ROOM_FIXED_GSO, BPF_F_ZERO_CSUM_TX, TC_ACT_OK, TC_ACT_REDIRECT,
        TC_ACT_UNSPEC,
    },
    helpers::{
        bpf_fib_lookup, bpf_get_hash_recalc, bpf_get_prandom_u32, bpf_redirect, bpf_skb_adjust_room,
        bpf_skb_change_type, bpf_skb_get_tunnel_key, bpf_skb_set_tunnel_key,
    },
    macros::classifier,
    maps::lpm_trie::Key,
    programs::TcContext,
};
use sluice_common::{
    maps::{FAST_PATH_MARK, TUNNEL_OVERHEAD, TUNNEL_PORT, TUNNEL_VNI},
    verdict::{self, FromUplinkFacts, Verdict, VxlanOuter},
    DropReason, EndpointInfo, ForwardPath,
};

use crate::{
    counters::{count_detail, count_forward, drop_packet},
    forward,
    maps::{ENDPOINTS, NODE_CONFIG, NODE_ROUTES},
    parse::{self, EthHdr, Ipv4Hdr, ETH_HLEN},
    stack_flows,
};

/// Where the headers of a VXLAN packet start, from the outer Ethernet
/// header: outer IPv4 (no options), UDP, VXLAN, inner Ethernet, inner IPv4.
const OUTER_IP_OFF: usize = ETH_HLEN;
const UDP_OFF: usize = OUTER_IP_OFF + 20;
const VXLAN_OFF: usize = UDP_OFF + 8;
const INNER_ETH_OFF: usize = VXLAN_OFF + 8;
const INNER_IP_OFF: usize = INNER_ETH_OFF + ETH_HLEN;
const _: () = assert!(INNER_IP_OFF - ETH_HLEN == TUNNEL_OVERHEAD as usize);

const IPPROTO_UDP: u8 = 17;

#[repr(C)]
struct UdpHdr {
    src_port_be: u16,
    dst_port_be: u16,
    len_be: u16,
    check_be: u16,
}

/// Flags and VNI (24 bits, then a reserved byte), both network order.
#[repr(C)]
struct VxlanHdr {
    flags_be: u32,
    vni_be: u32,
}

/// The VXLAN header's "VNI is valid" (I) flag, as the first byte.
const VXLAN_FLAG_I: u32 = 0x0800_0000;

/// The outer header's TTL (the kernel's IPDEFTTL, as Cilium's encap.h).
const OUTER_TTL: u8 = 64;

/// Name `node_ip_be` as the outer destination of this packet for the
/// VXLAN device.
#[inline(always)]
fn set_key(ctx: &TcContext, node_ip_be: u32) -> Result<(), DropReason> {
    // SAFETY: an all-zero bpf_tunnel_key is valid (plain integers and
    // unions of integers); zeroing also initialises every stack byte the
    // helper reads, as the verifier wants.
    let mut key: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    key.tunnel_id = TUNNEL_VNI;
    // The helper takes the remote IPv4 address in host byte order (Cilium's
    // encap.h passes `bpf_ntohl(ip)`); local 0: the route decides.
    key.__bindgen_anon_1.remote_ipv4 = u32::from_be(node_ip_be);
    key.tunnel_ttl = OUTER_TTL;
    // SAFETY: helper call with a valid, fully sized key on our stack.
    let rc = unsafe {
        bpf_skb_set_tunnel_key(
            ctx.skb.skb,
            &mut key as *mut bpf_tunnel_key,
            core::mem::size_of::<bpf_tunnel_key>() as u32,
            BPF_F_ZERO_CSUM_TX as u64,
        )
    };
    if rc < 0 {
        return Err(DropReason::TunnelKey);
    }
    Ok(())
}

/// Hand the packet to the VXLAN device with `node_ip_be` as the outer
/// destination: the device adds Ethernet (as the pod sent it), VXLAN, UDP
/// and the outer IPv4 header, and the node's routing table takes the
/// outer packet from there (so a router between the nodes is fine).
/// Marked, so `to_tunnel` and then `to_uplink` (which clears it) know the
/// fast path sent it.
#[inline(always)]
pub fn to_node(ctx: &TcContext, vxlan_ifindex: u32, node_ip_be: u32) -> Result<i32, DropReason> {
    set_key(ctx, node_ip_be)?;
    ctx.set_mark(parse::mark(ctx) | FAST_PATH_MARK);
    // SAFETY: helper call; returns TC_ACT_REDIRECT for valid flags.
    let rc = unsafe { bpf_redirect(vxlan_ifindex, 0) };
    if rc as i32 != TC_ACT_REDIRECT as i32 {
        return Err(DropReason::RedirectFailed);
    }
    Ok(rc as i32)
}

/// Ingress of the VXLAN device: what it decapsulated. Pod-to-pod packets
/// for a local pod go straight into it, as `from_uplink` does; anything
/// else goes to the node's stack.
#[classifier]
pub fn from_tunnel(ctx: TcContext) -> i32 {
    match try_from_tunnel(&ctx) {
        Ok(action) => action,
        Err(reason) => drop_packet(&ctx, reason),
    }
}

#[inline(always)]
fn try_from_tunnel(ctx: &TcContext) -> Result<i32, DropReason> {
    let Some((eth, ip)) = parse::ipv4(ctx)? else {
        count_forward(ctx, ForwardPath::ToStack);
        return Ok(TC_ACT_OK as i32);
    };
    // The device set the packet type from the inner destination MAC, the
    // sending node's (`eth_type_trans` on decap): it is for this host (the
    // stack, or a pod behind it), or `ip_rcv` drops it as PACKET_OTHERHOST.
    // SAFETY: helper call on our skb; PACKET_HOST is always allowed.
    unsafe { bpf_skb_change_type(ctx.skb.skb, PACKET_HOST) };
    // SAFETY: bounds checked by parse::ipv4.
    let (src_be, dst_be, ttl, version_ihl, tot_len_be) =
        unsafe { ((*ip).src_be, (*ip).dst_be, (*ip).ttl, (*ip).version_ihl, (*ip).tot_len_be) };
    // SAFETY: only presence is read.
    let source_is_local_pod = unsafe { ENDPOINTS.get(&src_be).is_some() };
    // SAFETY: read-only use of the value before any other helper call.
    let local = unsafe { ENDPOINTS.get(&dst_be) };
    let header_ok = verdict::ipv4_header_ok(version_ihl, tot_len_be, parse::l3_len(ctx));
    let (mut source_is_remote_pod, mut replies_to_stack_flow, mut is_fragment) = (false, false, false);
    let mut sent_by_owner = false;
    if local.is_some() {
        (source_is_remote_pod, sent_by_owner) = remote_pod_source(src_be, || outer_source_be(ctx));
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
    match verdict::from_tunnel(facts, sent_by_owner) {
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
            count_forward(ctx, ForwardPath::TunnelToPod);
            Ok(action)
        }
        _ => {
            count_forward(ctx, ForwardPath::ToStack);
            Ok(TC_ACT_OK as i32)
        }
    }
}

/// Is the inner source `src_be` another node's pod (it has a `NODE_ROUTES`
/// owner), and did that owner send it (`outer_src_be`, asked only then, is
/// the owner's node IP)? The check `from_tunnel` and `decap_to_pod` share.
#[inline(always)]
fn remote_pod_source(src_be: u32, outer_src_be: impl FnOnce() -> u32) -> (bool, bool) {
    match NODE_ROUTES.get(Key::new(32, src_be)) {
        Some(node) if node.node_ip_be != 0 => {
            let owner_ip_be = node.node_ip_be;
            (true, outer_src_be() == owner_ip_be)
        }
        _ => (false, false),
    }
}

/// The outer IPv4 source of a decapsulated packet (be); 0 if the device
/// gave no tunnel metadata.
#[inline(always)]
fn outer_source_be(ctx: &TcContext) -> u32 {
    // SAFETY: all-zero is a valid key, and initialises what the helper reads.
    let mut key: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    // SAFETY: helper call with a valid, fully sized key on our stack.
    let rc = unsafe {
        bpf_skb_get_tunnel_key(
            ctx.skb.skb,
            &mut key as *mut bpf_tunnel_key,
            core::mem::size_of::<bpf_tunnel_key>() as u32,
            0,
        )
    };
    if rc < 0 {
        return 0;
    }
    // SAFETY: reading an integer out of a union of integers. The helper
    // gives the address in host byte order.
    u32::to_be(unsafe { key.__bindgen_anon_1.remote_ipv4 })
}

/// `skb->pkt_type` for a packet addressed to this host.
const PACKET_HOST: u32 = 0;

/// Egress of the VXLAN device. The fast path's packets (marked) already
/// carry their tunnel key; what the node's stack routes here (host
/// traffic, kube-proxy's DNAT to a remote backend) gets one from
/// `NODE_ROUTES`, and a pod's packet is remembered as a stack flow, as
/// `to_uplink` does, so its reply returns through the stack.
#[classifier]
pub fn to_tunnel(ctx: TcContext) -> i32 {
    match try_to_tunnel(&ctx) {
        Ok(action) => action,
        Err(reason) => drop_packet(&ctx, reason),
    }
}

#[inline(always)]
fn try_to_tunnel(ctx: &TcContext) -> Result<i32, DropReason> {
    if parse::mark(ctx) & FAST_PATH_MARK != 0 {
        return Ok(TC_ACT_UNSPEC);
    }
    let Some((_, ip)) = parse::ipv4(ctx)? else {
        // The device is NOARP; anything else has no remote end either way.
        return Ok(TC_ACT_UNSPEC);
    };
    // SAFETY: bounds checked by parse::ipv4.
    let dst_be = unsafe { (*ip).dst_be };
    let node_ip_be = match NODE_ROUTES.get(Key::new(32, dst_be)) {
        Some(node) => node.node_ip_be,
        None => return Err(DropReason::TunnelNoRoute),
    };
    set_key(ctx, node_ip_be)?;
    if let Some(key) = stack_flows::flow_key(ctx) {
        // SAFETY: only presence is read.
        if unsafe { ENDPOINTS.get(&key.src_be).is_some() } {
            stack_flows::remember(&key);
        }
    }
    Ok(TC_ACT_UNSPEC)
}

/// Encapsulate a pod's packet for `remote_ip_be` in the program: room for
/// outer IPv4 + UDP + VXLAN + inner Ethernet after the Ethernet header
/// (`bpf_skb_adjust_room` marks a GSO packet UDP-tunnel GSO, so it is cut
/// into VXLAN segments later, and sets the inner header offsets for
/// checksum offload), the headers written, then out of the uplink with
/// `bpf_redirect_neigh` to the route's next hop (the peer, or the router
/// before it); the kernel resolves its MAC and fills in both MACs.
///
/// `Ok(None)`: no route out of the uplink, or the helper refused (e.g. a
/// packet that is already encapsulated); nothing changed, the caller
/// sends it through the device.
#[inline(always)]
pub fn encap_to_node(ctx: &TcContext, uplink_ifindex: u32, remote_ip_be: u32) -> Result<Option<i32>, DropReason> {
    // The route to the peer, before anything changes: the source address
    // the kernel would give the outer packet (the device gets it from the
    // same lookup, so a node re-addressed without an agent restart still
    // sends from its current address, which the peer checks), the
    // interface and the next hop (the router, for a peer behind one).
    let Some((src_be, out_ifindex, next_hop_be)) = route_to(uplink_ifindex, remote_ip_be, ctx) else {
        return Ok(None);
    };
    let eth: *mut EthHdr = parse::header_mut(ctx, 0)?;
    // SAFETY: bounds checked by header_mut; copied before the helper moves it.
    let (inner_dst, inner_src, inner_type_be) = unsafe { ((*eth).dst, (*eth).src, (*eth).ether_type_be) };
    // Before the headers change: the hash of the pod's own flow.
    // SAFETY: helper call on our skb.
    let hash = unsafe { bpf_get_hash_recalc(ctx.skb.skb) };
    // FIXED_GSO: the pod's MSS stays; the tunnel's MTU was taken off it
    // already (pods get the tunnel's MTU, `encap_fits` checked the rest).
    let flags = BPF_F_ADJ_ROOM_FIXED_GSO as u64
        | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 as u64
        | BPF_F_ADJ_ROOM_ENCAP_L4_UDP as u64
        | BPF_F_ADJ_ROOM_ENCAP_L2_ETH as u64
        | (ETH_HLEN as u64) << BPF_ADJ_ROOM_ENCAP_L2_SHIFT;
    // SAFETY: helper call on our skb.
    let rc = unsafe { bpf_skb_adjust_room(ctx.skb.skb, TUNNEL_OVERHEAD as i32, BPF_ADJ_ROOM_MAC, flags) };
    if rc < 0 {
        return Ok(None);
    }
    // The helper invalidated every packet pointer: fetch them anew.
    // For a GSO packet these lengths are the whole skb's; segmentation
    // writes each segment's own (and the outer checksum).
    let outer_len = ctx.len().saturating_sub(ETH_HLEN as u32);
    let ip: *mut Ipv4Hdr = parse::header_mut(ctx, OUTER_IP_OFF)?;
    let udp: *mut UdpHdr = parse::header_mut(ctx, UDP_OFF)?;
    let vxlan: *mut VxlanHdr = parse::header_mut(ctx, VXLAN_OFF)?;
    let inner: *mut EthHdr = parse::header_mut(ctx, INNER_ETH_OFF)?;
    // SAFETY: helper call, no arguments.
    let id = unsafe { bpf_get_prandom_u32() } as u16;
    // SAFETY: all bounds checked by header_mut just above.
    unsafe {
        (*ip).version_ihl = 0x45;
        // No ECN on the outer header: the decapsulating end would have
        // to carry a CE mark inward, and a not-ECT packet is never marked.
        (*ip).tos = 0;
        (*ip).tot_len_be = (outer_len as u16).to_be();
        (*ip).id_be = id;
        // DF clear, as the device sends it (no DONT_FRAGMENT in the key):
        // an underlay with a smaller MTU fragments the outer packet, and
        // the receiver reassembles it before the device decapsulates.
        (*ip).frag_off_be = 0;
        (*ip).ttl = OUTER_TTL;
        (*ip).protocol = IPPROTO_UDP;
        (*ip).check_be = 0;
        (*ip).src_be = src_be;
        (*ip).dst_be = remote_ip_be;
        (*udp).src_port_be = verdict::vxlan_source_port(hash).to_be();
        (*udp).dst_port_be = TUNNEL_PORT.to_be();
        (*udp).len_be = (outer_len.saturating_sub(20) as u16).to_be();
        // A zero UDP checksum is allowed over IPv4 (RFC 7348 §5), and is
        // what the device sends (BPF_F_ZERO_CSUM_TX); the inner packet
        // keeps its own checksums.
        (*udp).check_be = 0;
        (*vxlan).flags_be = VXLAN_FLAG_I.to_be();
        (*vxlan).vni_be = (TUNNEL_VNI << 8).to_be();
        (*inner).dst = inner_dst;
        (*inner).src = inner_src;
        (*inner).ether_type_be = inner_type_be;
    }
    // SAFETY: bounds checked above; ten 16-bit words of the outer header.
    let words: [u16; 10] = unsafe { core::ptr::read_unaligned(ip as *const [u16; 10]) };
    // SAFETY: as above.
    unsafe { (*ip).check_be = verdict::ipv4_header_checksum(words) };
    forward::to_node(ctx, out_ifindex, next_hop_be).map(Some)
}

const AF_INET: u8 = 2;

/// `bpf_fib_lookup` from the uplink's egress side for `dst_be`: (source
/// address, interface, next hop), all be but the ifindex; `None` if the
/// kernel has no unicast route out of the uplink.
#[inline(always)]
fn route_to(uplink_ifindex: u32, dst_be: u32, ctx: &TcContext) -> Option<(u32, u32, u32)> {
    // SAFETY: all-zero is a valid lookup request (plain integers).
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.l4_protocol = IPPROTO_UDP;
    params.ifindex = uplink_ifindex;
    params.__bindgen_anon_4.ipv4_dst = dst_be;
    let flags = BPF_FIB_LOOKUP_OUTPUT | BPF_FIB_LOOKUP_SRC | BPF_FIB_LOOKUP_SKIP_NEIGH;
    // SAFETY: helper call with a valid, fully sized request on our stack.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.skb.skb as *mut _,
            &mut params as *mut bpf_fib_lookup,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            flags,
        )
    };
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 || params.ifindex != uplink_ifindex {
        return None;
    }
    // SAFETY: integers out of unions of integers the helper filled.
    let (src_be, next_hop_be) = unsafe { (params.__bindgen_anon_3.ipv4_src, params.__bindgen_anon_4.ipv4_dst) };
    if src_be == 0 {
        return None;
    }
    Some((src_be, params.ifindex, next_hop_be))
}

/// A packet on the uplink: if it is VXLAN,
/// is sluice's, for this node, and a pod-to-pod packet for a local pod
/// that `from_tunnel` would deliver, strip the outer headers here and
/// deliver it into the pod; a packet `from_tunnel` would drop is dropped
/// here, under the same reason. `Ok(None)` for everything else: the
/// caller goes on as for any packet to this node, and the VXLAN device
/// decapsulates it (host traffic, replies of flows the stack forwarded,
/// fragments).
#[inline(always)]
pub fn decap_to_pod(ctx: &TcContext) -> Result<Option<i32>, DropReason> {
    let Some((_, ip)) = parse::ipv4(ctx)? else {
        return Ok(None);
    };
    // SAFETY: bounds checked by parse::ipv4.
    if unsafe { (*ip).protocol } != IPPROTO_UDP {
        return Ok(None);
    }
    // Not VXLAN-sized, or not linear that far: not for the fast path.
    if ctx.data() + INNER_IP_OFF + core::mem::size_of::<Ipv4Hdr>() > ctx.data_end() {
        return Ok(None);
    }
    let node_ip_be = match NODE_CONFIG.get(0) {
        Some(c) => c.node_ip_be,
        None => 0,
    };
    let udp: *const UdpHdr = parse::header_mut(ctx, UDP_OFF)?;
    let vxlan: *const VxlanHdr = parse::header_mut(ctx, VXLAN_OFF)?;
    let inner_eth: *const EthHdr = parse::header_mut(ctx, INNER_ETH_OFF)?;
    let inner_ip: *mut Ipv4Hdr = parse::header_mut(ctx, INNER_IP_OFF)?;
    // SAFETY: all bounds checked by header_mut.
    let (outer, outer_src_be) = unsafe {
        let vni_host = u32::from_be((*vxlan).vni_be) >> 8;
        (
            VxlanOuter {
                dst_be: (*ip).dst_be,
                node_ip_be,
                version_ihl: (*ip).version_ihl,
                frag_off_be: (*ip).frag_off_be,
                protocol: (*ip).protocol,
                dst_port_be: (*udp).dst_port_be,
                vxlan_flags: (u32::from_be((*vxlan).flags_be) >> 24) as u8,
                vni: vni_host,
                inner_ether_type_be: (*inner_eth).ether_type_be,
            },
            (*ip).src_be,
        )
    };
    if !verdict::vxlan_for_this_node(outer) {
        return Ok(None);
    }
    // The inner packet, judged as `from_tunnel` judges it.
    // SAFETY: bounds checked by header_mut.
    let (src_be, dst_be, ttl, version_ihl, tot_len_be) = unsafe {
        ((*inner_ip).src_be, (*inner_ip).dst_be, (*inner_ip).ttl, (*inner_ip).version_ihl, (*inner_ip).tot_len_be)
    };
    // SAFETY: copied out at once; used after the adjust_room helper call.
    let local: Option<EndpointInfo> = unsafe { ENDPOINTS.get(&dst_be).copied() };
    let Some(ep) = local else {
        return Ok(None);
    };
    // SAFETY: only presence is read.
    let source_is_local_pod = unsafe { ENDPOINTS.get(&src_be).is_some() };
    let (source_is_remote_pod, sent_by_owner) = remote_pod_source(src_be, || outer_src_be);
    let inner_l3_len = ctx.len().saturating_sub(INNER_IP_OFF as u32);
    let header_ok = verdict::ipv4_header_ok(version_ihl, tot_len_be, inner_l3_len);
    let (key, is_fragment) = parse::flow_at::<{ INNER_IP_OFF + 20 }>(ctx, inner_ip)?;
    let replies_to_stack_flow = !is_fragment && stack_flows::is_reply(&key);
    let facts = FromUplinkFacts {
        dest_is_local_pod: true,
        source_is_remote_pod,
        source_is_local_pod,
        header_ok,
        ttl,
        replies_to_stack_flow,
        is_fragment,
    };
    match verdict::from_tunnel(facts, sent_by_owner) {
        Verdict::Drop(reason) => Err(reason),
        Verdict::ToLocalPod => {
            if !is_fragment {
                stack_flows::forget_on_new_connection(ctx, &key);
            }
            // FIXED_GSO: a GRO'd packet keeps the sender's MSS.
            let flags = BPF_F_ADJ_ROOM_FIXED_GSO as u64 | BPF_F_ADJ_ROOM_DECAP_L3_IPV4 as u64;
            // SAFETY: helper call on our skb.
            let rc = unsafe { bpf_skb_adjust_room(ctx.skb.skb, -(TUNNEL_OVERHEAD as i32), BPF_ADJ_ROOM_MAC, flags) };
            if rc < 0 {
                // Unchanged: the device decapsulates it instead.
                return Ok(None);
            }
            // The helper invalidated every packet pointer.
            let eth: *mut EthHdr = parse::header_mut(ctx, 0)?;
            let ip: *mut Ipv4Hdr = parse::header_mut(ctx, ETH_HLEN)?;
            forward::decrement_ttl(ip);
            let action = forward::into_pod(eth, &ep)?;
            count_forward(ctx, ForwardPath::TunnelToPod);
            count_detail(ForwardPath::TunnelDecap);
            Ok(Some(action))
        }
        // Stack flow replies, non-pod sources, fragments: the device and
        // `from_tunnel`, which decide the same again.
        _ => Ok(None),
    }
}
