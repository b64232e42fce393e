//! Between another node's own address and a local pod, without this node's
//! stack (issue 27).
//!
//! A NodePort that another node translated and SNATed (its `lb4`, or
//! kube-proxy's masquerade) reaches this node's backend from that node's
//! address, not from a pod; so does that node's host network. `from_uplink`
//! used to leave such packets to the stack, and the pod's answers went
//! back through it too: the kernel's forwarding path twice per
//! transaction. Now:
//! - `from_uplink`: a plain packet from an address `NODE_ADDRESSES` names
//!   as another node's (`NODE_ADDRESS_REMOTE`) to a local pod goes through
//!   the one door (`deliver_to_local_pod`, `Origin::Uplink`: NetworkPolicy
//!   judges it with the remote-node identity `POLICY_IDENTITIES` gives
//!   that address, as `to_pod` would after the stack), TTL decremented;
//!   its answer tuple is remembered in `NODE_FLOWS`.
//! - `from_pod`: a packet its verdict sends to the stack, to another node's
//!   address, whose tuple is in `NODE_FLOWS`, leaves out of the uplink
//!   (`bpf_redirect_neigh`, next hop from the FIB), TTL decremented, marked
//!   (so `to_uplink` leaves it alone). Both halves of such a connection skip
//!   the stack, so its conntrack sees neither, as for pod-to-pod traffic.
//!
//! Why a map of its own rather than a flag in `POLICY_CT`: `POLICY_CT`
//! holds entries only for connections of pods some NetworkPolicy selects
//! (unselected pods take the policy fast path with no entry), so it cannot
//! say "came in from a node" for every pod; and its entries are the
//! policy's state (epoch, GC), not the forwarding's. `NODE_FLOWS` is the
//! inverse of `STACK_FLOWS`: that one says "the stack carries this flow,
//! its replies go back through it", this one "the fast path carried it in,
//! its answers may go back that way". A pod-initiated connection to a node
//! address never gets an entry (its first packet goes to the stack, which
//! remembers it in `STACK_FLOWS`, so node's replies return through the
//! stack too); a TCP SYN from the pod forgets an old entry of its tuple.
//! An ICMP error the pod sends about such a connection is looked up by the
//! answer it stands for (the quoted packet, reversed) and leaves the same
//! way: this node's conntrack never saw the connection and would find the
//! error INVALID.
//!
//! What still goes to the stack, both ways: IP options and fragments, TTL
//! 1 (time exceeded is the stack's), packets larger than the egress
//! device's MTU (fragmentation needed), replies of flows in
//! `STACK_FLOWS`, and IPv6 (not done: `from_uplink6` leaves non-pod
//! sources to the stack as before). Every decision is a global function,
//! so none adds to `from_uplink`'s or `from_pod`'s frame (Linux 6.1's 512
//! bytes per call chain: see `fast6`).
use aya_ebpf::{
    bindings::{__sk_buff, TC_ACT_REDIRECT},
    helpers::bpf_redirect_neigh,
    programs::TcContext,
};
use sluice_common::{
    maps::FAST_PATH_MARK,
    services::NODE_ADDRESS_REMOTE,
    verdict::{self, AnswerToNodeFacts, FromNodeFacts},
    DropReason, FlowKey,
};

use crate::{
    forward,
    maps::{ENDPOINTS, NODE_ADDRESSES, NODE_CONFIG, NODE_FLOWS},
    parse::{self, Ipv4Hdr, L4_OFF},
    stack_flows,
};

/// `sluice_from_node_decide`, `sluice_answer_to_node`: leave it to the
/// stack.
pub const NODE_PATH_STACK: u32 = 0;
/// `sluice_from_node_decide`: into the local pod through the door.
/// `sluice_answer_to_node`: sent out of the uplink.
pub const NODE_PATH_FAST: u32 = 1;

/// Is `addr_be` another node's address?
#[inline(always)]
fn remote_node(addr_be: u32) -> bool {
    // SAFETY: copied out at once.
    matches!(unsafe { NODE_ADDRESSES.get(&addr_be) }, Some(&NODE_ADDRESS_REMOTE))
}

/// The flow tuple of the IPv4 packet at `ETH_HLEN` and whether only the
/// stack carries it (options, fragment); `None`: not IPv4, or truncated.
#[inline(always)]
fn flow(ctx: &TcContext) -> Option<(*mut Ipv4Hdr, FlowKey, bool)> {
    let (_, ip) = parse::ipv4(ctx).ok()??;
    let (key, stack_only) = parse::flow(ctx, ip).ok()?;
    Some((ip, key, stack_only))
}

/// For `from_uplink`, on an IPv4 packet its verdict left to the stack:
/// `NODE_PATH_FAST` when it is from another node's address to a local pod
/// and takes the door (`verdict::from_node_fast`), else
/// `NODE_PATH_STACK`. Changes nothing; the caller delivers, then calls
/// `sluice_node_flows_remember`.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn sluice_from_node_decide(skb: *mut __sk_buff) -> u32 {
    let ctx = TcContext::new(skb);
    let Some((ip, key, stack_only)) = flow(&ctx) else {
        return NODE_PATH_STACK;
    };
    if !remote_node(key.src_be) {
        return NODE_PATH_STACK;
    }
    // SAFETY: copied out at once.
    let Some(host_ifindex) = (unsafe { ENDPOINTS.get(&key.dst_be) }).map(|ep| ep.host_ifindex) else {
        return NODE_PATH_STACK;
    };
    let facts = FromNodeFacts {
        source_is_remote_node: true,
        stack_only,
        replies_to_stack_flow: !stack_only && stack_flows::is_reply(&key),
        // SAFETY: bounds checked by parse::ipv4.
        ttl: unsafe { (*ip).ttl },
        fits_mtu: forward::fits_mtu(&ctx, host_ifindex),
    };
    if verdict::from_node_fast(facts) {
        NODE_PATH_FAST
    } else {
        NODE_PATH_STACK
    }
}

/// After `from_uplink` delivered a packet `sluice_from_node_decide` let
/// through: remember its answer's tuple (pod → node) in `NODE_FLOWS`, or
/// refresh it. The door changed only the TTL and the MACs: the tuple is as
/// it arrived. Returns 1 when it inserted.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn sluice_node_flows_remember(skb: *mut __sk_buff) -> u32 {
    let ctx = TcContext::new(skb);
    let Some((_, key, _)) = flow(&ctx) else {
        return 0;
    };
    let answer = key.reversed();
    // SAFETY: only presence is read; a lookup also refreshes the LRU entry.
    if unsafe { NODE_FLOWS.get(&answer).is_some() } {
        return 0;
    }
    // A full LRU evicts its least recently used entry; a failed insert
    // leaves the answers to the stack (which picks TCP up mid-stream).
    u32::from(NODE_FLOWS.insert(&answer, &0, 0).is_ok())
}

/// For `from_pod`, on a local pod's IPv4 packet its verdict sends to the
/// stack (after its egress was judged): the answer of a connection
/// `from_uplink` carried in from another node's address
/// (`verdict::answer_to_node_fast`) is sent out of the uplink here, TTL
/// decremented: `NODE_PATH_FAST`. Otherwise `NODE_PATH_STACK`, the packet
/// unchanged (a TCP SYN forgets its tuple's entry first: the pod opens a
/// connection the stack carries). `NODE_PATH_FAST + 1 + reason`: the
/// redirect failed, a drop.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn sluice_answer_to_node(skb: *mut __sk_buff) -> u32 {
    let ctx = TcContext::new(skb);
    let Some((ip, key, stack_only)) = flow(&ctx) else {
        return NODE_PATH_STACK;
    };
    if !remote_node(key.dst_be) {
        return NODE_PATH_STACK;
    }
    // An ICMP error the pod sends about such a connection is looked up by
    // the tuple of the answer it stands for (the packet it quotes,
    // reversed).
    let lookup = if key.protocol == IPPROTO_ICMP && !stack_only { icmp_error_answer(&ctx).unwrap_or(key) } else { key };
    // SAFETY: only presence is read (refreshing the LRU entry).
    let mut answers_node_flow = !stack_only && unsafe { NODE_FLOWS.get(&lookup).is_some() };
    let opens_connection = !stack_only && parse::is_tcp_syn_at::<L4_OFF>(&ctx, &key);
    if answers_node_flow && opens_connection {
        let _ = NODE_FLOWS.remove(&key);
        answers_node_flow = false;
    }
    let uplink_ifindex = NODE_CONFIG.get(0).map_or(0, |c| c.uplink_ifindex);
    let facts = AnswerToNodeFacts {
        dest_is_remote_node: true,
        answers_node_flow,
        opens_connection,
        stack_only,
        // SAFETY: bounds checked by parse::ipv4.
        ttl: unsafe { (*ip).ttl },
        fits_mtu: uplink_ifindex != 0 && forward::fits_mtu(&ctx, uplink_ifindex),
        uplink_configured: uplink_ifindex != 0,
    };
    if !verdict::answer_to_node_fast(facts) {
        return NODE_PATH_STACK;
    }
    match to_node_via_fib(&ctx, ip, uplink_ifindex) {
        Ok(()) => NODE_PATH_FAST,
        Err(reason) => NODE_PATH_FAST + 1 + reason as u32,
    }
}

const IPPROTO_ICMP: u8 = 1;
/// ICMP's header before the quoted packet: type, code, checksum, 4 unused.
const ICMP_HLEN: usize = 8;
/// The quoted IPv4 header, when it has no options.
const QUOTED_IP_OFF: usize = L4_OFF + ICMP_HLEN;
const QUOTED_L4_OFF: usize = QUOTED_IP_OFF + core::mem::size_of::<Ipv4Hdr>();

/// For an ICMP error (`verdict::icmp4_error`) at `L4_OFF` whose quoted
/// packet has no options: the tuple of the answer it stands for
/// (`verdict::icmp4_error_answer`; ports when the quote is TCP, UDP or
/// SCTP and holds them). `None`: no error, or not quoted so.
#[inline(always)]
fn icmp_error_answer(ctx: &TcContext) -> Option<FlowKey> {
    let icmp_type: *const u8 = parse::header_mut(ctx, L4_OFF).ok()?;
    // SAFETY: bounds checked by header_mut.
    if !verdict::icmp4_error(unsafe { *icmp_type }) {
        return None;
    }
    let quoted: *const Ipv4Hdr = parse::header_mut(ctx, QUOTED_IP_OFF).ok()?;
    // SAFETY: bounds checked by header_mut.
    let (version_ihl, protocol, src_be, dst_be) =
        unsafe { ((*quoted).version_ihl, (*quoted).protocol, (*quoted).src_be, (*quoted).dst_be) };
    if version_ihl != 0x45 {
        return None;
    }
    let mut key = FlowKey { src_be, dst_be, src_port_be: 0, dst_port_be: 0, protocol, _pad: [0; 3] };
    if matches!(protocol, 6 | 17 | 132) {
        let ports: *const parse::Ports = parse::header_mut(ctx, QUOTED_L4_OFF).ok()?;
        // SAFETY: bounds checked by header_mut.
        unsafe {
            key.src_port_be = (*ports).src_be;
            key.dst_port_be = (*ports).dst_be;
        }
    }
    Some(verdict::icmp4_error_answer(key))
}

/// The router's hop, then out of the uplink to the packet's destination:
/// with no next hop given, `bpf_redirect_neigh` looks the route up in the
/// FIB (a node on another subnet is reached through its gateway) and
/// resolves its MAC. Marked, as `forward::to_node`'s.
#[inline(always)]
fn to_node_via_fib(ctx: &TcContext, ip: *mut Ipv4Hdr, uplink_ifindex: u32) -> Result<(), DropReason> {
    forward::decrement_ttl(ip);
    ctx.set_mark(parse::mark(ctx) | FAST_PATH_MARK);
    // SAFETY: helper call; no next-hop struct (NULL, length 0): the FIB's.
    let rc = unsafe { bpf_redirect_neigh(uplink_ifindex, core::ptr::null_mut(), 0, 0) };
    if rc as i32 != TC_ACT_REDIRECT as i32 {
        return Err(DropReason::RedirectFailed);
    }
    Ok(())
}
