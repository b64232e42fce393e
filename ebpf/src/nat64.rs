//! Node-local NAT64 (issue 28, `--nat64`; the model is described in
//! `sluice_common::nat64`): RFC 7915's stateless header translation, with
//! the node's conntrack and masquerade as the state.
//!
//! - Forward (`from_pod`'s IPv6 path, a pod's packet for `64:ff9b::/96`
//!   that its verdict sends to the stack): translated to IPv4 from the
//!   pod's pool address to the embedded IPv4 address (TTL = hop limit − 1;
//!   hop limit 1 is left to the stack, which answers time exceeded;
//!   DF set, TCP/UDP checksums updated for the pseudo header, ICMPv6 echo
//!   turned into ICMPv4 echo with its checksum rid of the pseudo header),
//!   then handed to the stack as arriving on the NAT64 device
//!   (`bpf_redirect(.., BPF_F_INGRESS)`, addressed to its MAC), so reverse
//!   path filtering finds it on the device the pool is routed to.
//! - Reverse (`to_nat64`, egress of the NAT64 device, where the stack
//!   routes the pool after conntrack de-NATed the answer): translated to
//!   IPv6 from `64:ff9b::<source>` to the pool address's pod, then into
//!   the pod through the one door (`deliver::enter_pod6`: NetworkPolicy,
//!   hop limit − 1, out of the pod's host end as netkit's delivery does:
//!   `bpf_redirect_peer` works only at TC ingress).
//! - Not translated, dropped and counted (`nat64_unsupported`): IPv6
//!   extension headers and fragments, IPv4 options and fragments, ICMP
//!   other than echo (ICMP errors — Packet Too Big, unreachable — are not
//!   translated yet), protocols other than TCP, UDP and ICMP, an IPv4 UDP
//!   datagram without checksum (IPv6 requires one; computing it needs the
//!   whole payload).
//!
//! The work is in two BPF global functions (`sluice_nat64_from_pod`,
//! `sluice_nat64_to_pod`) whose frames hold nothing but pointers: headers,
//! checksum inputs and the endpoint are built in `NAT64_SCRATCH` (Linux
//! 6.1's 512 bytes of stack per call chain: `from_pod`'s frame is most of
//! it).
use aya_ebpf::{
    bindings::{__sk_buff, BPF_F_INGRESS, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_REDIRECT, TC_ACT_UNSPEC},
    helpers::{bpf_csum_diff, bpf_redirect, bpf_skb_change_proto, bpf_skb_load_bytes, bpf_skb_store_bytes},
    macros::classifier,
    programs::TcContext,
};
use sluice_common::{
    nat64::{embedded_ipv4_be, ipv4_header_checksum, is_nat64_address, nat64_address, Nat64Config},
    DropReason, EndpointInfo, ForwardPath, HookDirection,
};

use crate::{
    counters::{count_forward, drop_packet},
    deliver::{enter_pod6, Origin},
    maps::{ENDPOINTS6, NAT64_CONFIG, NAT64_SCRATCH},
    parse::{self, Ipv4Hdr, Ipv6Hdr, ETH_HLEN, ETH_P_IP, ETH_P_IPV6},
};

const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMPV6: u8 = 58;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO: u8 = 8;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;
/// Where the transport header starts: after Ethernet and the fixed IPv6
/// header / an IPv4 header without options.
const L4_OFF6: usize = ETH_HLEN + 40;
const L4_OFF4: usize = ETH_HLEN + 20;
/// The checksum's offset in each transport header.
const TCP_CSUM: usize = 16;
const UDP_CSUM: usize = 6;
const ICMP_CSUM: usize = 2;
/// IPv4's DF bit in `frag_off` (host order); MF and the offset.
const IP_DF: u16 = 0x4000;
const IP_MF_OFFSET: u16 = 0x3fff;
const ETHER_TYPE_OFF: usize = 12;

/// The global functions' answers.
const NAT64_PASS: u32 = 0;
const NAT64_SENT: u32 = 1;
const NAT64_DELIVER: u32 = 2;
const NAT64_DROP: u32 = 0x100;

/// `NAT64_SCRATCH`'s value (per CPU, one program run at a time): the
/// translation's inputs and outputs, off the stack.
#[repr(C)]
pub struct Nat64Scratch {
    pub config: Nat64Config,
    /// What leaves the checksum (`bpf_csum_diff`'s `from`): addresses,
    /// then for ICMPv6 the pseudo header's length and next header and the
    /// message's type word.
    pub from: [u32; 11],
    /// What enters it (`to`).
    pub to: [u32; 11],
    /// The IPv4 header written (forward).
    pub ip4: [u8; 20],
    /// The IPv6 header written (reverse).
    pub ip6: [u8; 40],
    /// The pod an answer is for (reverse): its address and endpoint.
    pub pod: [u8; 16],
    pub ep: EndpointInfo,
}

#[inline(always)]
fn code(r: Result<u32, DropReason>) -> u32 {
    match r {
        Ok(c) => c,
        Err(reason) => NAT64_DROP + reason as u32,
    }
}

/// The drop reason of a `NAT64_DROP` code (those the functions give).
#[inline(always)]
fn reason(code: u32) -> DropReason {
    const UNSUPPORTED: u32 = DropReason::Nat64Unsupported as u32;
    const NO_POOL: u32 = DropReason::Nat64NoPoolAddress as u32;
    const NO_ENDPOINT: u32 = DropReason::Nat64NoEndpoint as u32;
    const TTL: u32 = DropReason::TtlExpired as u32;
    const TRUNCATED: u32 = DropReason::Truncated as u32;
    const REWRITE: u32 = DropReason::HeaderRewrite as u32;
    const REDIRECT: u32 = DropReason::RedirectFailed as u32;
    match code.wrapping_sub(NAT64_DROP) {
        UNSUPPORTED => DropReason::Nat64Unsupported,
        NO_POOL => DropReason::Nat64NoPoolAddress,
        NO_ENDPOINT => DropReason::Nat64NoEndpoint,
        TTL => DropReason::TtlExpired,
        TRUNCATED => DropReason::Truncated,
        REWRITE => DropReason::HeaderRewrite,
        REDIRECT => DropReason::RedirectFailed,
        _ => DropReason::LookupMismatch,
    }
}

/// `from_pod`'s IPv6 step for a packet its verdict sends to the stack:
/// `Ok(true)` when it was for `64:ff9b::/96` with NAT64 on, translated and
/// redirected (counted as `pod_to_nat64`); `Ok(false)`: not NAT64's.
#[inline(always)]
pub fn from_pod(ctx: &TcContext) -> Result<bool, DropReason> {
    match sluice_nat64_from_pod(ctx.skb.skb) {
        NAT64_PASS => Ok(false),
        NAT64_SENT => Ok(true),
        c => Err(reason(c)),
    }
}

/// Counted (and traced) here, not by the caller: `from_pod`'s frame has
/// no room for the trace event under Linux 6.1's 512 bytes (272 + the
/// policy judgement's 184, each rounded up to 32, plus the entry's and
/// `memset`'s 32 came to 544).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn sluice_nat64_from_pod(skb: *mut __sk_buff) -> u32 {
    let ctx = TcContext::new(skb);
    let c = code(try_from_pod(&ctx));
    if c == NAT64_SENT {
        count_forward(&ctx, ForwardPath::PodToNat64);
    }
    c
}

#[inline(always)]
fn try_from_pod(ctx: &TcContext) -> Result<u32, DropReason> {
    let Some(config) = NAT64_CONFIG.get(0) else { return Ok(NAT64_PASS) };
    if !config.enabled() {
        return Ok(NAT64_PASS);
    }
    let ip6: *const Ipv6Hdr = parse::header_mut(ctx, ETH_HLEN)?;
    // SAFETY: bounds checked by header_mut; read in place.
    if !is_nat64_address(unsafe { &(*ip6).dst }) {
        return Ok(NAT64_PASS);
    }
    let Some(s) = NAT64_SCRATCH.get_ptr_mut(0) else { return Err(DropReason::LookupMismatch) };
    // SAFETY: this CPU's slot, used by this program run alone; the header
    // was bounds checked above.
    unsafe {
        (*s).config = *config;
        let (vcf, payload_len_be, next_header, hop_limit) =
            ((*ip6).version_class_flow, (*ip6).payload_len_be, (*ip6).next_header, (*ip6).hop_limit);
        if !matches!(next_header, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_ICMPV6) {
            return Err(DropReason::Nat64Unsupported);
        }
        // The stack answers it (time exceeded), as for any destination.
        if hop_limit <= 1 {
            return Ok(NAT64_PASS);
        }
        // The addresses, as the checksum's `from`, in packet order.
        if bpf_skb_load_bytes(skb_of(ctx), (ETH_HLEN + 8) as u32, (*s).from.as_mut_ptr() as *mut _, 32) != 0 {
            return Err(DropReason::Truncated);
        }
        let src = &*((*s).from.as_ptr() as *const [u8; 16]);
        let dst = &*((*s).from.as_ptr().add(4) as *const [u8; 16]);
        let Some(pool_be) = (*s).config.pool_address_be(src) else {
            return Err(DropReason::Nat64NoPoolAddress);
        };
        let dst_be = embedded_ipv4_be(dst);
        let payload_len = u16::from_be(payload_len_be);
        let tos = (vcf[0] << 4) | (vcf[1] >> 4);
        let protocol = if next_header == IPPROTO_ICMPV6 { IPPROTO_ICMP } else { next_header };
        let tot_len = (payload_len as u32 + 20) as u16;
        let h = &mut (*s).ip4;
        let [l0, l1] = tot_len.to_be_bytes();
        let [f0, f1] = IP_DF.to_be_bytes();
        let [s0, s1, s2, s3] = pool_be.to_ne_bytes();
        let [d0, d1, d2, d3] = dst_be.to_ne_bytes();
        *h = [0x45, tos, l0, l1, 0, 0, f0, f1, hop_limit - 1, protocol, 0, 0, s0, s1, s2, s3, d0, d1, d2, d3];
        let [c0, c1] = ipv4_header_checksum(h).to_be_bytes();
        h[10] = c0;
        h[11] = c1;
        if next_header == IPPROTO_ICMPV6 {
            // Echo request/reply only; the checksum loses the pseudo header
            // (ICMPv4's covers the message alone) and the type changes.
            let icmp: *const [u8; 2] = parse::header_mut(ctx, L4_OFF6)?;
            let (ty, code) = ((*icmp)[0], (*icmp)[1]);
            let ty4 = match ty {
                ICMPV6_ECHO_REQUEST => ICMP_ECHO,
                ICMPV6_ECHO_REPLY => ICMP_ECHO_REPLY,
                _ => return Err(DropReason::Nat64Unsupported),
            };
            (*s).from[8] = (payload_len as u32).to_be();
            (*s).from[9] = (IPPROTO_ICMPV6 as u32).to_be();
            (*s).from[10] = u32::from_ne_bytes([ty, code, 0, 0]);
            (*s).to[0] = u32::from_ne_bytes([ty4, code, 0, 0]);
            let diff = bpf_csum_diff((*s).from.as_mut_ptr(), 44, (*s).to.as_mut_ptr(), 4, 0);
            if diff < 0 {
                return Err(DropReason::HeaderRewrite);
            }
            ctx.l4_csum_replace(L4_OFF6 + ICMP_CSUM, 0, diff as u32 as u64, 0)
                .map_err(|_| DropReason::HeaderRewrite)?;
            ctx.store(L4_OFF6, &ty4, 0).map_err(|_| DropReason::HeaderRewrite)?;
        } else {
            // TCP, UDP: only the pseudo header's addresses change (its
            // length and protocol sum alike in both families).
            (*s).to[0] = pool_be;
            (*s).to[1] = dst_be;
            let diff = bpf_csum_diff((*s).from.as_mut_ptr(), 32, (*s).to.as_mut_ptr(), 8, 0);
            if diff < 0 {
                return Err(DropReason::HeaderRewrite);
            }
            let (off, mangled) = if next_header == IPPROTO_TCP {
                (L4_OFF6 + TCP_CSUM, 0)
            } else {
                (L4_OFF6 + UDP_CSUM, BPF_F_MARK_MANGLED_0 as u64)
            };
            ctx.l4_csum_replace(off, 0, diff as u32 as u64, BPF_F_PSEUDO_HDR as u64 | mangled)
                .map_err(|_| DropReason::HeaderRewrite)?;
        }
        // 40 bytes of IPv6 header become 20 of IPv4 (GSO's type and size
        // follow), then the new header, EtherType and the device's MAC.
        if bpf_skb_change_proto(ctx.skb.skb, ETH_P_IP.to_be(), 0) != 0 {
            return Err(DropReason::HeaderRewrite);
        }
        if bpf_skb_store_bytes(ctx.skb.skb, ETH_HLEN as u32, (*s).ip4.as_ptr() as *const _, 20, 0) != 0
            || bpf_skb_store_bytes(ctx.skb.skb, 0, (*s).config.device_mac.as_ptr() as *const _, 6, 0) != 0
        {
            return Err(DropReason::HeaderRewrite);
        }
        ctx.store(ETHER_TYPE_OFF, &ETH_P_IP.to_be(), 0).map_err(|_| DropReason::HeaderRewrite)?;
        // Into the stack as if received on the NAT64 device.
        let rc = bpf_redirect((*s).config.device_ifindex, BPF_F_INGRESS as u64);
        if rc as i32 != TC_ACT_REDIRECT as i32 {
            return Err(DropReason::RedirectFailed);
        }
    }
    Ok(NAT64_SENT)
}

#[inline(always)]
fn skb_of(ctx: &TcContext) -> *const core::ffi::c_void {
    ctx.skb.skb as *const _
}

/// Egress of the NAT64 device: an IPv4 answer the stack routed to a pool
/// address (conntrack de-NATed it), translated to IPv6 and delivered into
/// its pod. Anything else IPv4 is dropped (counted); other frames (the
/// device's own IPv6 neighbour discovery) go on to the device, which
/// discards them.
#[classifier]
pub fn to_nat64(ctx: TcContext) -> i32 {
    match try_to_nat64(&ctx) {
        Ok(action) => action,
        Err(reason) => drop_packet(&ctx, reason, HookDirection::Egress),
    }
}

#[inline(always)]
fn try_to_nat64(ctx: &TcContext) -> Result<i32, DropReason> {
    match sluice_nat64_to_pod(ctx.skb.skb) {
        NAT64_PASS => Ok(TC_ACT_UNSPEC),
        NAT64_DELIVER => {
            let Some(s) = NAT64_SCRATCH.get_ptr(0) else { return Err(DropReason::LookupMismatch) };
            // SAFETY: this CPU's slot, written by the translation just now.
            let ep = unsafe { &(*s).ep };
            let (action, _) = enter_pod6(ctx, ep, Origin::LocalPodNetkit)?;
            count_forward(ctx, ForwardPath::Nat64ToPod);
            Ok(action)
        }
        c => Err(reason(c)),
    }
}

#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn sluice_nat64_to_pod(skb: *mut __sk_buff) -> u32 {
    let ctx = TcContext::new(skb);
    code(try_to_pod(&ctx))
}

#[inline(always)]
fn try_to_pod(ctx: &TcContext) -> Result<u32, DropReason> {
    let Some((_, ip)) = parse::ipv4(ctx)? else { return Ok(NAT64_PASS) };
    let Some(config) = NAT64_CONFIG.get(0) else { return Err(DropReason::Nat64NoPoolAddress) };
    let Some(s) = NAT64_SCRATCH.get_ptr_mut(0) else { return Err(DropReason::LookupMismatch) };
    // SAFETY: this CPU's slot; the header bounds checked by `ipv4`.
    unsafe {
        (*s).config = *config;
        let (version_ihl, tos, tot_len_be, frag_off_be, ttl, protocol, src_be, dst_be) = (
            (*ip).version_ihl,
            (*ip).tos,
            (*ip).tot_len_be,
            (*ip).frag_off_be,
            (*ip).ttl,
            (*ip).protocol,
            (*ip).src_be,
            (*ip).dst_be,
        );
        let Some(pod) = (*s).config.pod_address(dst_be) else {
            return Err(DropReason::Nat64NoPoolAddress);
        };
        if version_ihl != 0x45 || u16::from_be(frag_off_be) & IP_MF_OFFSET != 0 {
            return Err(DropReason::Nat64Unsupported);
        }
        if !matches!(protocol, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_ICMP) {
            return Err(DropReason::Nat64Unsupported);
        }
        // The door takes one more hop off.
        if ttl <= 1 {
            return Err(DropReason::TtlExpired);
        }
        (*s).pod = pod;
        let Some(ep) = ENDPOINTS6.get(&(*s).pod) else {
            return Err(DropReason::Nat64NoEndpoint);
        };
        (*s).ep = *ep;
        let payload_len = u16::from_be(tot_len_be).saturating_sub(20);
        let next_header = if protocol == IPPROTO_ICMP { IPPROTO_ICMPV6 } else { protocol };
        let src6 = nat64_address(src_be);
        let h = &mut (*s).ip6;
        let [l0, l1] = payload_len.to_be_bytes();
        h[0] = 0x60 | (tos >> 4);
        h[1] = tos << 4;
        h[2] = 0;
        h[3] = 0;
        h[4] = l0;
        h[5] = l1;
        h[6] = next_header;
        h[7] = ttl;
        let mut i = 0;
        while i < 16 {
            h[8 + i] = src6[i];
            h[24 + i] = pod[i];
            i += 1;
        }
        // The checksum's `to`: the new addresses (in the header just built).
        let to = (*s).to.as_mut_ptr() as *mut u8;
        let mut i = 0;
        while i < 32 {
            *to.add(i) = h[8 + i];
            i += 1;
        }
        (*s).from[0] = src_be;
        (*s).from[1] = dst_be;
        if protocol == IPPROTO_ICMP {
            let icmp: *const [u8; 2] = parse::header_mut(ctx, L4_OFF4)?;
            let (ty, code) = ((*icmp)[0], (*icmp)[1]);
            let ty6 = match ty {
                ICMP_ECHO => ICMPV6_ECHO_REQUEST,
                ICMP_ECHO_REPLY => ICMPV6_ECHO_REPLY,
                _ => return Err(DropReason::Nat64Unsupported),
            };
            // ICMPv6's checksum covers the pseudo header too.
            (*s).from[0] = u32::from_ne_bytes([ty, code, 0, 0]);
            (*s).to[8] = (payload_len as u32).to_be();
            (*s).to[9] = (IPPROTO_ICMPV6 as u32).to_be();
            (*s).to[10] = u32::from_ne_bytes([ty6, code, 0, 0]);
            let diff = bpf_csum_diff((*s).from.as_mut_ptr(), 4, (*s).to.as_mut_ptr(), 44, 0);
            if diff < 0 {
                return Err(DropReason::HeaderRewrite);
            }
            ctx.l4_csum_replace(L4_OFF4 + ICMP_CSUM, 0, diff as u32 as u64, 0)
                .map_err(|_| DropReason::HeaderRewrite)?;
            ctx.store(L4_OFF4, &ty6, 0).map_err(|_| DropReason::HeaderRewrite)?;
        } else {
            let off = if protocol == IPPROTO_TCP { L4_OFF4 + TCP_CSUM } else { L4_OFF4 + UDP_CSUM };
            if protocol == IPPROTO_UDP {
                let csum: *const u16 = parse::header_mut(ctx, off)?;
                if *csum == 0 {
                    return Err(DropReason::Nat64Unsupported);
                }
            }
            let diff = bpf_csum_diff((*s).from.as_mut_ptr(), 8, (*s).to.as_mut_ptr(), 32, 0);
            if diff < 0 {
                return Err(DropReason::HeaderRewrite);
            }
            ctx.l4_csum_replace(off, 0, diff as u32 as u64, BPF_F_PSEUDO_HDR as u64)
                .map_err(|_| DropReason::HeaderRewrite)?;
        }
        if bpf_skb_change_proto(ctx.skb.skb, ETH_P_IPV6.to_be(), 0) != 0 {
            return Err(DropReason::HeaderRewrite);
        }
        if bpf_skb_store_bytes(ctx.skb.skb, ETH_HLEN as u32, (*s).ip6.as_ptr() as *const _, 40, 0) != 0 {
            return Err(DropReason::HeaderRewrite);
        }
        ctx.store(ETHER_TYPE_OFF, &ETH_P_IPV6.to_be(), 0).map_err(|_| DropReason::HeaderRewrite)?;
    }
    Ok(NAT64_DELIVER)
}

// The headers' layouts this module writes by hand.
const _: () = assert!(core::mem::size_of::<Ipv4Hdr>() == 20 && core::mem::size_of::<Ipv6Hdr>() == 40);
