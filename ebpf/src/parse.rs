//! Bounds-checked access to packet headers. Every read and write of packet
//! bytes goes through `header_mut`, so the verifier sees one pattern.
use aya_ebpf::programs::TcContext;
use sluice_common::{DropReason, FlowKey};

pub const ETH_HLEN: usize = 14;
/// Where a plain packet's transport header starts: after Ethernet and an
/// IPv4 header without options (the only kind the fast path reads ports of).
pub const L4_OFF: usize = ETH_HLEN + core::mem::size_of::<Ipv4Hdr>();
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;

#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    /// Network byte order.
    pub ether_type_be: u16,
}

#[repr(C)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub tot_len_be: u16,
    pub id_be: u16,
    pub frag_off_be: u16,
    pub ttl: u8,
    pub protocol: u8,
    pub check_be: u16,
    pub src_be: u32,
    pub dst_be: u32,
}

/// The fixed IPv6 header (RFC 8200 3).
#[repr(C)]
pub struct Ipv6Hdr {
    /// Version (4 bits), traffic class, flow label.
    pub version_class_flow: [u8; 4],
    pub payload_len_be: u16,
    pub next_header: u8,
    pub hop_limit: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
}

/// A pointer to a `T` at `offset`, or `Truncated` if the packet is shorter.
#[inline(always)]
pub fn header_mut<T>(ctx: &TcContext, offset: usize) -> Result<*mut T, DropReason> {
    let start = ctx.data();
    if start + offset + core::mem::size_of::<T>() > ctx.data_end() {
        return Err(DropReason::Truncated);
    }
    Ok((start + offset) as *mut T)
}

/// The frame's EtherType, as in the packet (network byte order).
#[inline(always)]
pub fn ether_type_be(ctx: &TcContext) -> Result<u16, DropReason> {
    let eth: *const EthHdr = header_mut(ctx, 0)?;
    // SAFETY: bounds checked by header_mut.
    Ok(unsafe { (*eth).ether_type_be })
}

/// The Ethernet and IPv4 headers, or `None` if this is not IPv4.
#[inline(always)]
pub fn ipv4(ctx: &TcContext) -> Result<Option<(*mut EthHdr, *mut Ipv4Hdr)>, DropReason> {
    let eth: *mut EthHdr = header_mut(ctx, 0)?;
    // SAFETY: bounds checked by header_mut.
    if unsafe { (*eth).ether_type_be } != ETH_P_IP.to_be() {
        return Ok(None);
    }
    let ip: *mut Ipv4Hdr = header_mut(ctx, ETH_HLEN)?;
    Ok(Some((eth, ip)))
}

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_SCTP: u8 = 132;
/// More-fragments flag and fragment offset, host order.
const IP_MF_OFFSET: u16 = 0x3fff;

/// Source and destination port, as in the packet (TCP, UDP, SCTP).
#[repr(C)]
pub struct Ports {
    pub src_be: u16,
    pub dst_be: u16,
}

/// The packet's flow tuple, and whether the fast path must leave it to the
/// stack: a fragment (no ports in all but the first; the stack reassembles)
/// or a header with options (ports not at a fixed offset).
#[inline(always)]
pub fn flow(ctx: &TcContext, ip: *const Ipv4Hdr) -> Result<(FlowKey, bool), DropReason> {
    flow_at::<L4_OFF>(ctx, ip)
}

/// `flow` for an IPv4 header whose ports (if any, and no options) start at
/// `L4_OFFSET`: the inner packet of a VXLAN one.
#[inline(always)]
pub fn flow_at<const L4_OFFSET: usize>(ctx: &TcContext, ip: *const Ipv4Hdr) -> Result<(FlowKey, bool), DropReason> {
    // SAFETY: `ip` was bounds checked by `ipv4`.
    let (src_be, dst_be, protocol, version_ihl, frag_off_be) =
        unsafe { ((*ip).src_be, (*ip).dst_be, (*ip).protocol, (*ip).version_ihl, (*ip).frag_off_be) };
    let mut key = FlowKey { src_be, dst_be, src_port_be: 0, dst_port_be: 0, protocol, _pad: [0; 3] };
    let stack_only = version_ihl & 0x0f != 5 || u16::from_be(frag_off_be) & IP_MF_OFFSET != 0;
    if !stack_only && matches!(protocol, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP) {
        let ports: *const Ports = header_mut(ctx, L4_OFFSET)?;
        // SAFETY: bounds checked by header_mut.
        unsafe {
            key.src_port_be = (*ports).src_be;
            key.dst_port_be = (*ports).dst_be;
        }
    }
    Ok((key, stack_only))
}

/// Is this a TCP SYN without ACK: the first packet of a new connection?
/// `key` must come from `flow_at::<L4_OFFSET>` on a packet without IP
/// options: its TCP header starts at `L4_OFFSET`.
#[inline(always)]
pub fn is_tcp_syn_at<const L4_OFFSET: usize>(ctx: &TcContext, key: &FlowKey) -> bool {
    const TCP_FLAGS_OFFSET: usize = 13;
    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    if key.protocol != IPPROTO_TCP {
        return false;
    }
    match header_mut::<u8>(ctx, L4_OFFSET + TCP_FLAGS_OFFSET) {
        // SAFETY: bounds checked by header_mut.
        Ok(flags) => unsafe { *flags & (SYN | ACK) == SYN },
        Err(_) => false,
    }
}

/// Bytes of IPv4 (no options) and TCP or UDP header in front of each
/// segment's payload, for a packet `flow` found without options; 0 for
/// other protocols.
#[inline(always)]
pub fn l3_l4_header_len(ctx: &TcContext, protocol: u8) -> u32 {
    const TCP_DOFF_OFFSET: usize = 12;
    const IPV4_LEN: u32 = 20;
    match protocol {
        IPPROTO_UDP => IPV4_LEN + 8,
        IPPROTO_TCP => match header_mut::<u8>(ctx, L4_OFF + TCP_DOFF_OFFSET) {
            // SAFETY: bounds checked by header_mut.
            Ok(doff) => IPV4_LEN + ((unsafe { *doff } >> 4) as u32) * 4,
            Err(_) => 0,
        },
        _ => 0,
    }
}

/// Interface the packet arrived on (TC ingress: the device the hook is on).
#[inline(always)]
pub fn ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: the context pointer is valid for the program's run.
    unsafe { (*ctx.skb.skb).ifindex }
}

/// The packet's `skb->mark`.
#[inline(always)]
pub fn mark(ctx: &TcContext) -> u32 {
    // SAFETY: the context pointer is valid for the program's run.
    unsafe { (*ctx.skb.skb).mark }
}

/// The segment size of a GSO packet; 0 for a single packet.
#[inline(always)]
pub fn gso_size(ctx: &TcContext) -> u32 {
    // SAFETY: the context pointer is valid for the program's run.
    unsafe { (*ctx.skb.skb).gso_size }
}

/// Bytes from the IP header to the end of the packet (the skb's whole
/// length: GSO packets count every segment, as their total length does).
#[inline(always)]
pub fn l3_len(ctx: &TcContext) -> u32 {
    ctx.len().saturating_sub(ETH_HLEN as u32)
}
