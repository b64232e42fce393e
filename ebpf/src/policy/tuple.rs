//! A packet's connection tuple for `POLICY_CT` (`sluice_common::policy::CtKey`)
//! and `POLICY_CT6` (`CtKey6`).
use aya_ebpf::programs::TcContext;
use sluice_common::{
    policy::{
        CtKey, CtKey6, ICMP6_DEST_UNREACH, ICMP6_ECHO_REPLY, ICMP6_ECHO_REQUEST, ICMP6_PARAMETER_PROBLEM,
        IPPROTO_ICMPV6,
    },
    DropReason,
};

use crate::parse::{self, Ipv4Hdr, Ipv6Hdr, Ports, ETH_HLEN, L4_OFF};

const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_SCTP: u8 = 132;

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_ECHO: u8 = 8;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETER_PROBLEM: u8 = 12;

/// The ICMP header's first 8 bytes: type, code, checksum, then (echo)
/// identifier and sequence.
#[repr(C)]
struct IcmpHdr {
    kind: u8,
    code: u8,
    check_be: u16,
    id_be: u16,
    seq_be: u16,
}

/// How a packet is matched against `POLICY_CT`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Tracking {
    /// By its tuple (then the reversed one: a reply); a new one is judged
    /// and, allowed, remembered.
    Tracked,
    /// A fragment, or a header with options: its ports are not where the
    /// program reads them (a non-first fragment has none). Judged on every
    /// packet by protocol alone (port 0: only a rule without ports allows
    /// it), never remembered. Fail closed for port rules; see
    /// docs/ARCHITECTURE.md.
    Untracked,
    /// An ICMP error (destination unreachable, time exceeded, parameter
    /// problem): `key` is the quoted packet's tuple reversed (the error
    /// travels against it). Passes when that connection is in `POLICY_CT`,
    /// in either direction; otherwise judged as `Untracked` ICMP between
    /// the outer addresses.
    Related,
}

pub struct Tuple<K> {
    pub key: K,
    pub tracking: Tracking,
}

/// The tuple of the IPv4 packet whose header `ip` sits at `ETH_HLEN` (its
/// transport header, without options, at `L4_OFF`).
#[inline(always)]
pub fn of_packet(ctx: &TcContext, ip: *const Ipv4Hdr) -> Result<Tuple<CtKey>, DropReason> {
    let (flow, stack_only) = parse::flow(ctx, ip)?;
    let mut key = CtKey {
        src_be: flow.src_be,
        dst_be: flow.dst_be,
        src_port_be: flow.src_port_be,
        dst_port_be: flow.dst_port_be,
        protocol: flow.protocol,
        _pad: [0; 3],
    };
    if stack_only {
        return Ok(Tuple { key, tracking: Tracking::Untracked });
    }
    if flow.protocol != IPPROTO_ICMP {
        return Ok(Tuple { key, tracking: Tracking::Tracked });
    }
    let icmp: *const IcmpHdr = parse::header_mut(ctx, L4_OFF)?;
    // SAFETY: bounds checked by header_mut.
    let (kind, id_be) = unsafe { ((*icmp).kind, (*icmp).id_be) };
    match kind {
        // An echo is keyed by its identifier: the request's source port,
        // the reply's destination port, so a reply's reversed tuple is its
        // request's.
        ICMP_ECHO => key.src_port_be = id_be,
        ICMP_ECHO_REPLY => key.dst_port_be = id_be,
        ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROBLEM => {
            return quoted(ctx).map(|key| Tuple { key, tracking: Tracking::Related });
        }
        // Anything else (timestamps, router adverts...): by protocol alone,
        // one connection per address pair.
        _ => {}
    }
    Ok(Tuple { key, tracking: Tracking::Tracked })
}

/// The tuple of the packet an ICMP error quotes, reversed. A quoted header
/// with options, or too short to hold what it claims, is matched by
/// addresses and protocol alone (ports 0), which no tracked connection
/// with ports has: such an error is then judged as plain ICMP.
#[inline(always)]
fn quoted(ctx: &TcContext) -> Result<CtKey, DropReason> {
    const QUOTED_IP_OFF: usize = L4_OFF + core::mem::size_of::<IcmpHdr>();
    const QUOTED_L4_OFF: usize = QUOTED_IP_OFF + core::mem::size_of::<Ipv4Hdr>();
    let inner: *const Ipv4Hdr = parse::header_mut(ctx, QUOTED_IP_OFF)?;
    // SAFETY: bounds checked by header_mut.
    let (src_be, dst_be, protocol, version_ihl) =
        unsafe { ((*inner).src_be, (*inner).dst_be, (*inner).protocol, (*inner).version_ihl) };
    let mut key = CtKey { src_be: dst_be, dst_be: src_be, src_port_be: 0, dst_port_be: 0, protocol, _pad: [0; 3] };
    if version_ihl & 0x0f != 5 {
        return Ok(key);
    }
    match protocol {
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP => {
            if let Ok(ports) = parse::header_mut::<Ports>(ctx, QUOTED_L4_OFF) {
                // SAFETY: bounds checked by header_mut.
                unsafe {
                    key.src_port_be = (*ports).dst_be;
                    key.dst_port_be = (*ports).src_be;
                }
            }
        }
        IPPROTO_ICMP => {
            if let Ok(echo) = parse::header_mut::<IcmpHdr>(ctx, QUOTED_L4_OFF) {
                // SAFETY: bounds checked by header_mut.
                let (kind, id_be) = unsafe { ((*echo).kind, (*echo).id_be) };
                // The quoted echo's own key, reversed.
                match kind {
                    ICMP_ECHO => key.dst_port_be = id_be,
                    ICMP_ECHO_REPLY => key.src_port_be = id_be,
                    _ => {}
                }
            }
        }
        _ => {}
    }
    Ok(key)
}

/// Where an IPv6 packet's transport header starts when no extension
/// header precedes it.
const L4_OFF6: usize = ETH_HLEN + core::mem::size_of::<Ipv6Hdr>();

/// The tuple of the IPv6 packet at `ETH_HLEN`. Its transport header is
/// read only where it directly follows the fixed header (TCP, UDP, SCTP,
/// ICMPv6 as next header); behind any extension header (a fragment,
/// hop-by-hop options, routing...) the packet is `Untracked`, judged by
/// that next header as its protocol with port 0: only a rule allowing
/// every protocol lets it through. Fail closed, as IPv4 with options.
#[inline(always)]
pub fn of_packet6(ctx: &TcContext, key: &mut CtKey6) -> Result<Tracking, DropReason> {
    let ip6: *const Ipv6Hdr = parse::header_mut(ctx, ETH_HLEN)?;
    // SAFETY: bounds checked by header_mut; copied straight into `key`.
    let next_header = unsafe {
        key.src = (*ip6).src;
        key.dst = (*ip6).dst;
        (*ip6).next_header
    };
    key.src_port_be = 0;
    key.dst_port_be = 0;
    key.protocol = next_header;
    key._pad = [0; 3];
    match next_header {
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP => {
            let ports: *const Ports = parse::header_mut(ctx, L4_OFF6)?;
            // SAFETY: bounds checked by header_mut.
            unsafe {
                key.src_port_be = (*ports).src_be;
                key.dst_port_be = (*ports).dst_be;
            }
            Ok(Tracking::Tracked)
        }
        IPPROTO_ICMPV6 => {
            let icmp: *const IcmpHdr = parse::header_mut(ctx, L4_OFF6)?;
            // SAFETY: bounds checked by header_mut.
            let (kind, id_be) = unsafe { ((*icmp).kind, (*icmp).id_be) };
            match kind {
                ICMP6_ECHO_REQUEST => key.src_port_be = id_be,
                ICMP6_ECHO_REPLY => key.dst_port_be = id_be,
                // Destination unreachable, packet too big, time exceeded,
                // parameter problem: about the packet they quote.
                ICMP6_DEST_UNREACH..=ICMP6_PARAMETER_PROBLEM => {
                    quoted6(ctx, key)?;
                    return Ok(Tracking::Related);
                }
                _ => {}
            }
            Ok(Tracking::Tracked)
        }
        _ => Ok(Tracking::Untracked),
    }
}

/// The tuple of the packet an ICMPv6 error quotes, reversed (as `quoted`).
#[inline(always)]
fn quoted6(ctx: &TcContext, key: &mut CtKey6) -> Result<(), DropReason> {
    const QUOTED_IP_OFF: usize = L4_OFF6 + core::mem::size_of::<IcmpHdr>();
    const QUOTED_L4_OFF: usize = QUOTED_IP_OFF + core::mem::size_of::<Ipv6Hdr>();
    let inner: *const Ipv6Hdr = parse::header_mut(ctx, QUOTED_IP_OFF)?;
    // SAFETY: bounds checked by header_mut; copied straight into `key`
    // (reversed: the error travels against the quoted packet).
    let protocol = unsafe {
        key.src = (*inner).dst;
        key.dst = (*inner).src;
        (*inner).next_header
    };
    key.protocol = protocol;
    match protocol {
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP => {
            if let Ok(ports) = parse::header_mut::<Ports>(ctx, QUOTED_L4_OFF) {
                // SAFETY: bounds checked by header_mut.
                unsafe {
                    key.src_port_be = (*ports).dst_be;
                    key.dst_port_be = (*ports).src_be;
                }
            }
        }
        IPPROTO_ICMPV6 => {
            if let Ok(echo) = parse::header_mut::<IcmpHdr>(ctx, QUOTED_L4_OFF) {
                // SAFETY: bounds checked by header_mut.
                let (kind, id_be) = unsafe { ((*echo).kind, (*echo).id_be) };
                match kind {
                    ICMP6_ECHO_REQUEST => key.dst_port_be = id_be,
                    ICMP6_ECHO_REPLY => key.src_port_be = id_be,
                    _ => {}
                }
            }
        }
        _ => {}
    }
    Ok(())
}
