//! What differs between IPv4 and IPv6 in judging a connection: the tuple's
//! type, the maps keyed by an address (`POLICY_IDENTITIES*`,
//! `POLICY_CT*`), the service CIDR, the monitor record. Everything else
//! (the rules, the epoch, the verdict, the counters, the CT logic in
//! `judge_packet`) is one code for both, instantiated per family, so the
//! two cannot drift apart.
use aya_ebpf::{maps::lpm_trie::Key, programs::TcContext};
use sluice_common::{
    policy::{compare6, CtEntry, CtKey, CtKey6, Direction, IDENTITY_WORLD},
    DropReason,
};

use crate::{
    events,
    maps::{POLICY_CT, POLICY_CT6, POLICY_IDENTITIES, POLICY_IDENTITIES6, POLICY_SCRATCH6, POLICY_STATE},
    parse::{self, Ipv4Hdr, Ipv6Hdr, ETH_HLEN},
};

use super::tuple::{self, Tracking};

pub trait Family {
    /// The connection tuple (`CtKey` / `CtKey6`).
    type Key: Copy;

    /// Write the packet's tuple (its IP header at `ETH_HLEN`) into `key`.
    /// Tuples are worked on in place, never returned: an IPv6 one lives in
    /// `POLICY_SCRATCH6`, not on the stack.
    fn tuple(ctx: &TcContext, key: &mut Self::Key) -> Result<Tracking, DropReason>;
    /// The outer addresses and protocol, ports 0 (an ICMP error whose
    /// quoted connection is unknown is judged as plain ICMP by these).
    fn outer(ctx: &TcContext, key: &mut Self::Key) -> Result<(), DropReason>;
    /// `key` := the tuple of its reply.
    fn reverse(key: &mut Self::Key);
    /// `stored` := `key`'s canonical tuple; whether that is `key` reversed.
    fn canonical_into(key: &Self::Key, stored: &mut Self::Key) -> bool;
    fn protocol(key: &Self::Key) -> u8;
    /// Destination port, host order.
    fn dst_port(key: &Self::Key) -> u16;
    /// The identity of a local pod's peer in `dir`: the server for its
    /// egress, the client for its ingress (`IDENTITY_WORLD` when no prefix
    /// holds the address).
    fn peer_identity(key: &Self::Key, dir: Direction) -> u32;
    /// Is the server a ClusterIP that kube-proxy translates later?
    fn dst_in_service_cidr(key: &Self::Key) -> bool;
    fn ct_get_ptr_mut(key: &Self::Key) -> Option<*mut CtEntry>;
    fn ct_contains(key: &Self::Key) -> bool;
    fn ct_remove(key: &Self::Key);
    /// Remember an allowed connection under `key` (the entry built where
    /// the family keeps its working memory).
    fn ct_insert(key: &Self::Key, epoch: u32, flags: u32, last_seen_ns: u64, egress_ref: u32, ingress_ref: u32);
    /// Report a verdict to the monitors.
    fn event(ctx: &TcContext, key: &Self::Key, dir: u8, verdict: u8, policy_ref: u32);
}

pub struct V4;
pub struct V6;

impl Family for V4 {
    type Key = CtKey;

    #[inline(always)]
    fn tuple(ctx: &TcContext, key: &mut CtKey) -> Result<Tracking, DropReason> {
        let ip: *const Ipv4Hdr = parse::header_mut(ctx, ETH_HLEN)?;
        let tuple = tuple::of_packet(ctx, ip)?;
        *key = tuple.key;
        Ok(tuple.tracking)
    }

    #[inline(always)]
    fn outer(ctx: &TcContext, key: &mut CtKey) -> Result<(), DropReason> {
        let ip: *const Ipv4Hdr = parse::header_mut(ctx, ETH_HLEN)?;
        // SAFETY: bounds checked by header_mut.
        let (src_be, dst_be, protocol) = unsafe { ((*ip).src_be, (*ip).dst_be, (*ip).protocol) };
        *key = CtKey { src_be, dst_be, src_port_be: 0, dst_port_be: 0, protocol, _pad: [0; 3] };
        Ok(())
    }

    #[inline(always)]
    fn reverse(key: &mut CtKey) {
        *key = key.reversed();
    }

    #[inline(always)]
    fn canonical_into(key: &CtKey, stored: &mut CtKey) -> bool {
        let (canonical, swapped) = key.canonical();
        *stored = canonical;
        swapped
    }

    #[inline(always)]
    fn protocol(key: &CtKey) -> u8 {
        key.protocol
    }

    #[inline(always)]
    fn dst_port(key: &CtKey) -> u16 {
        u16::from_be(key.dst_port_be)
    }

    #[inline(always)]
    fn peer_identity(key: &CtKey, dir: Direction) -> u32 {
        let peer_be = if dir == Direction::Egress { key.dst_be } else { key.src_be };
        match POLICY_IDENTITIES.get(Key::new(32, peer_be)) {
            Some(id) => id.identity,
            None => IDENTITY_WORLD,
        }
    }

    #[inline(always)]
    fn dst_in_service_cidr(key: &CtKey) -> bool {
        match POLICY_STATE.get(0) {
            Some(state) => state.in_service_cidr(key.dst_be),
            None => false,
        }
    }

    #[inline(always)]
    fn ct_get_ptr_mut(key: &CtKey) -> Option<*mut CtEntry> {
        POLICY_CT.get_ptr_mut(key)
    }

    #[inline(always)]
    fn ct_contains(key: &CtKey) -> bool {
        // SAFETY: only presence is read.
        unsafe { POLICY_CT.get(key).is_some() }
    }

    #[inline(always)]
    fn ct_remove(key: &CtKey) {
        let _ = POLICY_CT.remove(key);
    }

    #[inline(always)]
    fn ct_insert(key: &CtKey, epoch: u32, flags: u32, last_seen_ns: u64, egress_ref: u32, ingress_ref: u32) {
        let entry = CtEntry { epoch, flags, last_seen_ns, egress_ref, ingress_ref };
        let _ = POLICY_CT.insert(key, &entry, 0);
    }

    #[inline(always)]
    fn event(ctx: &TcContext, key: &CtKey, dir: u8, verdict: u8, policy_ref: u32) {
        events::policy(ctx, key, dir, verdict, policy_ref);
    }
}

impl Family for V6 {
    type Key = CtKey6;

    #[inline(always)]
    fn tuple(ctx: &TcContext, key: &mut CtKey6) -> Result<Tracking, DropReason> {
        tuple::of_packet6(ctx, key)
    }

    #[inline(always)]
    fn outer(ctx: &TcContext, key: &mut CtKey6) -> Result<(), DropReason> {
        let ip6: *const Ipv6Hdr = parse::header_mut(ctx, ETH_HLEN)?;
        // SAFETY: bounds checked by header_mut.
        unsafe {
            key.src = (*ip6).src;
            key.dst = (*ip6).dst;
            key.protocol = (*ip6).next_header;
        }
        key.src_port_be = 0;
        key.dst_port_be = 0;
        Ok(())
    }

    /// Swapped word by word in place (no 40-byte temporary).
    #[inline(always)]
    fn reverse(key: &mut CtKey6) {
        let mut i = 0;
        while i < 16 {
            let b = key.src[i];
            key.src[i] = key.dst[i];
            key.dst[i] = b;
            i += 1;
        }
        let port = key.src_port_be;
        key.src_port_be = key.dst_port_be;
        key.dst_port_be = port;
    }

    #[inline(always)]
    fn canonical_into(key: &CtKey6, stored: &mut CtKey6) -> bool {
        let order = compare6(&key.src, &key.dst);
        let swap = order > 0 || (order == 0 && u16::from_be(key.src_port_be) > u16::from_be(key.dst_port_be));
        stored.src = key.src;
        stored.dst = key.dst;
        stored.src_port_be = key.src_port_be;
        stored.dst_port_be = key.dst_port_be;
        stored.protocol = key.protocol;
        stored._pad = [0; 3];
        if swap {
            Self::reverse(stored);
        }
        swap
    }

    #[inline(always)]
    fn protocol(key: &CtKey6) -> u8 {
        key.protocol
    }

    #[inline(always)]
    fn dst_port(key: &CtKey6) -> u16 {
        u16::from_be(key.dst_port_be)
    }

    #[inline(always)]
    fn peer_identity(key: &CtKey6, dir: Direction) -> u32 {
        let peer = if dir == Direction::Egress { &key.dst } else { &key.src };
        match POLICY_IDENTITIES6.get(Key::new(128, *peer)) {
            Some(id) => id.identity,
            None => IDENTITY_WORLD,
        }
    }

    /// No IPv6 service CIDR is deferred: IPv6 ClusterIPs are translated
    /// at the socket (`sock_connect6`), before any packet exists, so a
    /// pod's packets already carry the backend's address.
    #[inline(always)]
    fn dst_in_service_cidr(_key: &CtKey6) -> bool {
        false
    }

    #[inline(always)]
    fn ct_get_ptr_mut(key: &CtKey6) -> Option<*mut CtEntry> {
        POLICY_CT6.get_ptr_mut(key)
    }

    #[inline(always)]
    fn ct_contains(key: &CtKey6) -> bool {
        // SAFETY: only presence is read.
        unsafe { POLICY_CT6.get(key).is_some() }
    }

    #[inline(always)]
    fn ct_remove(key: &CtKey6) {
        let _ = POLICY_CT6.remove(key);
    }

    #[inline(always)]
    /// The entry is built in `POLICY_SCRATCH6` (24 bytes the stack lacks).
    fn ct_insert(key: &CtKey6, epoch: u32, flags: u32, last_seen_ns: u64, egress_ref: u32, ingress_ref: u32) {
        let Some(scratch) = POLICY_SCRATCH6.get_ptr_mut(0) else {
            return;
        };
        // SAFETY: this CPU's slot, used by this program run alone; a field
        // of its own (`key` may be another field of the same value).
        let entry = unsafe { &mut (*scratch).entry };
        entry.epoch = epoch;
        entry.flags = flags;
        entry.last_seen_ns = last_seen_ns;
        entry.egress_ref = egress_ref;
        entry.ingress_ref = ingress_ref;
        let _ = POLICY_CT6.insert(key, &*entry, 0);
    }

    #[inline(always)]
    fn event(ctx: &TcContext, key: &CtKey6, dir: u8, verdict: u8, policy_ref: u32) {
        events::policy6(ctx, key, dir, verdict, policy_ref);
    }
}
