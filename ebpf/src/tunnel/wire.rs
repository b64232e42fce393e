//! VXLAN's bytes on the wire, as `encap` writes them and `decap` reads
//! them: where each header starts and what it holds.
use sluice_common::maps::TUNNEL_OVERHEAD;

use crate::parse::ETH_HLEN;

/// Where the headers of a VXLAN packet start, from the outer Ethernet
/// header: outer IPv4 (no options), UDP, VXLAN, inner Ethernet, inner IPv4.
pub const OUTER_IP_OFF: usize = ETH_HLEN;
pub const UDP_OFF: usize = OUTER_IP_OFF + 20;
pub const VXLAN_OFF: usize = UDP_OFF + 8;
pub const INNER_ETH_OFF: usize = VXLAN_OFF + 8;
pub const INNER_IP_OFF: usize = INNER_ETH_OFF + ETH_HLEN;
/// The inner packet's ports, for an inner IPv4 header without options.
pub const INNER_L4_OFF: usize = INNER_IP_OFF + 20;
const _: () = assert!(INNER_IP_OFF - ETH_HLEN == TUNNEL_OVERHEAD as usize);

pub const IPPROTO_UDP: u8 = 17;

#[repr(C)]
pub struct UdpHdr {
    pub src_port_be: u16,
    pub dst_port_be: u16,
    pub len_be: u16,
    pub check_be: u16,
}

/// Flags and VNI (24 bits, then a reserved byte), both network order.
#[repr(C)]
pub struct VxlanHdr {
    pub flags_be: u32,
    pub vni_be: u32,
}

/// The VXLAN header's "VNI is valid" (I) flag, as the first byte.
pub const VXLAN_FLAG_I: u32 = 0x0800_0000;

/// The outer header's TTL (the kernel's IPDEFTTL, as Cilium's encap.h).
pub const OUTER_TTL: u8 = 64;
