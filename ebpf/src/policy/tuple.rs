//! A packet's connection tuple for `POLICY_CT` (`sluice_common::policy::CtKey`).
use aya_ebpf::programs::TcContext;
use sluice_common::{policy::CtKey, DropReason};

use crate::parse::{self, Ipv4Hdr, Ports, L4_OFF};

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

pub struct Tuple {
    pub key: CtKey,
    pub tracking: Tracking,
}

/// The tuple of the IPv4 packet whose header `ip` sits at `ETH_HLEN` (its
/// transport header, without options, at `L4_OFF`).
#[inline(always)]
pub fn of_packet(ctx: &TcContext, ip: *const Ipv4Hdr) -> Result<Tuple, DropReason> {
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
