//! Bounds-checked access to packet headers. Every read and write of packet
//! bytes goes through `header_mut`, so the verifier sees one pattern.
use aya_ebpf::programs::TcContext;
use sluice_common::DropReason;

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;

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

/// A pointer to a `T` at `offset`, or `Truncated` if the packet is shorter.
#[inline(always)]
pub fn header_mut<T>(ctx: &TcContext, offset: usize) -> Result<*mut T, DropReason> {
    let start = ctx.data();
    if start + offset + core::mem::size_of::<T>() > ctx.data_end() {
        return Err(DropReason::Truncated);
    }
    Ok((start + offset) as *mut T)
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

/// Interface the packet arrived on (TC ingress: the device the hook is on).
#[inline(always)]
pub fn ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: the context pointer is valid for the program's run.
    unsafe { (*ctx.skb.skb).ifindex }
}
