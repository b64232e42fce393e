//! The uplink's kube-proxy replacement (issue 27): Services reached from
//! outside the cluster, translated per packet by `from_uplink` and undone
//! on the way back (`ebpf/src/lb4`).
//!
//! A connection from the world to a frontend (`nodeIP:nodePort`, an
//! external IP, a LoadBalancer ingress IP) is written into `NAT4` as a
//! pair of entries, each keyed by a tuple as it arrives:
//! - the *forward* entry, under the client's tuple (client → frontend):
//!   the tuple the packet leaves with (client → backend, or, for a backend
//!   on another node, node address:SNAT port → backend) and the node to
//!   send it to;
//! - the *reply* entry, under the backend's answer as it arrives (backend
//!   → client from a local pod, backend → node address:SNAT port from
//!   another node): the tuple the answer leaves with (frontend → client).
//!
//! The reply key of a SNATed connection is what reserves its SNAT port: it
//! is inserted first, with `BPF_NOEXIST`, so two connections can never
//! share a port towards one backend; a taken port is retried, and after
//! `SNAT_PORT_TRIES` a new connection is dropped (`DropReason::
//! Nat4PortExhausted`), never given another connection's replies.
//!
//! A TCP connection's closing is tracked (`Nat4Closing`): a FIN or an RST
//! marks both halves, the GC then removes the pair after a short idle
//! lifetime, a new connection may take a closed one's SNAT port
//! (`may_take_over`) and a client's SYN on a closed tuple starts a new
//! connection (`syn_reopens`).
//!
//! `NAT4` is a plain hash, not an LRU: a full table refuses the insert, so
//! a new connection is dropped (counted, `DropReason::Nat4TableFull`) and
//! no live connection is ever evicted to make room. The agent's GC removes
//! idle pairs (`Nat4Key::twin` finds an entry's other half).

/// `Nat4Key::direction`: the client's packets (towards the frontend).
pub const NAT4_FORWARD: u8 = 0;
/// `Nat4Key::direction`: the backend's answers.
pub const NAT4_REPLY: u8 = 1;

/// Key of `NAT4`: a packet's tuple as it arrives, and which half of a
/// connection it is. Addresses and ports as in the packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Nat4Key {
    pub src_be: u32,
    pub dst_be: u32,
    pub src_port_be: u16,
    pub dst_port_be: u16,
    /// IANA number: 6 TCP, 17 UDP.
    pub protocol: u8,
    /// `NAT4_FORWARD` or `NAT4_REPLY`.
    pub direction: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<Nat4Key>() == 16);

/// `Nat4Entry::flags`: the source is rewritten too (a backend on another
/// node: the node's address and a SNAT port).
pub const NAT4_SNAT: u32 = 1;
/// `Nat4Entry::flags`: a packet of this half was seen after the first
/// (on a reply entry: the backend answered; for TCP, established).
pub const NAT4_REPLY_SEEN: u32 = 2;
/// `Nat4Entry::flags`: the backend's node is reached through the VXLAN
/// device (`next_hop_be` is its outer destination).
pub const NAT4_VIA_TUNNEL: u32 = 4;

/// `Nat4Entry::flags`: the client sent a FIN (TCP). Set on both halves.
pub const NAT4_FIN_CLIENT: u32 = 8;
/// `Nat4Entry::flags`: the backend sent a FIN (TCP). Set on both halves.
pub const NAT4_FIN_BACKEND: u32 = 16;
/// `Nat4Entry::flags`: either side sent an RST (TCP). Set on both halves.
pub const NAT4_RST: u32 = 32;
/// `Nat4Entry::flags`: a half of a direct server return connection
/// (`--lb-mode=dsr`), which has no twin on its node. On the entry node, a
/// forward entry: DNAT only (the client's address and port kept), the
/// frontend carried to the backend's node in the DSR IPv4 option. On the
/// backend's node, a reply entry written from that option: the local
/// backend's answers leave as from the frontend, straight to the client.
pub const NAT4_DSR: u32 = 64;

/// TCP header flags (byte 13 of the header).
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Where a TCP connection of `NAT4` is in its closing, from the flags of
/// its halves (either half's: the datapath sets the closing bits on both;
/// the GC ORs the two).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nat4Closing {
    /// No FIN, no RST (or not TCP).
    Open,
    /// One side sent its FIN: the other may still send (a half-close).
    HalfClosed,
    /// An RST, or a FIN each way: nothing more but the last ACK and
    /// retransmissions of the FINs.
    Closed,
}

/// The closing state `flags` record.
pub const fn closing(flags: u32) -> Nat4Closing {
    if flags & NAT4_RST != 0 || flags & (NAT4_FIN_CLIENT | NAT4_FIN_BACKEND) == NAT4_FIN_CLIENT | NAT4_FIN_BACKEND {
        Nat4Closing::Closed
    } else if flags & (NAT4_FIN_CLIENT | NAT4_FIN_BACKEND) != 0 {
        Nat4Closing::HalfClosed
    } else {
        Nat4Closing::Open
    }
}

/// The closing bits a TCP segment with `tcp_flags` adds to its
/// connection, arriving on the half `direction` (`NAT4_FORWARD`: the
/// client's). 0: the segment closes nothing.
pub const fn close_bits(direction: u8, tcp_flags: u8) -> u32 {
    let mut bits = 0;
    if tcp_flags & TCP_RST != 0 {
        bits |= NAT4_RST;
    }
    if tcp_flags & TCP_FIN != 0 {
        bits |= if direction == NAT4_FORWARD { NAT4_FIN_CLIENT } else { NAT4_FIN_BACKEND };
    }
    bits
}

/// How long a half-closed connection lives once idle: conntrack's
/// `nf_conntrack_tcp_timeout_fin_wait` (120 s; its `close_wait` is 60 s).
/// The side still open may go on sending; each packet refreshes it.
pub const NAT4_HALF_CLOSED_SECS: u64 = 120;
/// How long a closed connection's entries stay once idle: conntrack's
/// `nf_conntrack_tcp_timeout_close` (10 s, after an RST). Not its
/// `time_wait` (120 s): that keeps a tuple from being reused, and here a
/// new connection may take a closed one's SNAT port at once
/// (`may_take_over`) and a client's new SYN on its old tuple starts a new
/// connection (`syn_reopens`), so the entries only need to outlive the
/// last ACK and retransmitted FINs (the RTO starts at 200 ms–1 s: 10 s
/// covers several).
pub const NAT4_CLOSED_SECS: u64 = 10;
/// A connection closed by FINs gives its SNAT port up only once idle this
/// long: between the second FIN and the last ACK the backend's socket is
/// still in LAST_ACK, and a new connection's SYN from the same port would
/// meet it (a challenge ACK, a second's stall). An RST leaves nothing
/// behind at either end: its port is free at once.
pub const NAT4_FIN_REUSE_SECS: u64 = 2;

/// The idle lifetime of a connection in `state`, when its closing
/// shortens it (`None`: the protocol's own timeout).
pub const fn closing_lifetime_secs(state: Nat4Closing) -> Option<u64> {
    match state {
        Nat4Closing::Open => None,
        Nat4Closing::HalfClosed => Some(NAT4_HALF_CLOSED_SECS),
        Nat4Closing::Closed => Some(NAT4_CLOSED_SECS),
    }
}

/// May a new connection take the SNAT port (the reply key) held by a
/// connection with `holder_flags`, idle for `idle_ns`? Only a closed one:
/// at once after an RST, `NAT4_FIN_REUSE_SECS` after its FINs. An open or
/// half-closed connection's port is never taken (its answers would reach
/// the wrong client).
pub const fn may_take_over(holder_flags: u32, idle_ns: u64) -> bool {
    match closing(holder_flags) {
        Nat4Closing::Closed => holder_flags & NAT4_RST != 0 || idle_ns >= NAT4_FIN_REUSE_SECS * 1_000_000_000,
        _ => false,
    }
}

/// Does a client's segment with `tcp_flags`, arriving on a forward entry
/// with `entry_flags`, start a new connection on the old tuple? A SYN
/// (without ACK) on a closed connection does, as conntrack treats a SYN in
/// CLOSE or TIME_WAIT: the old pair goes, the SYN is balanced afresh. On
/// an open or half-closed connection it is a retransmission: kept.
pub const fn syn_reopens(entry_flags: u32, tcp_flags: u8) -> bool {
    tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN && matches!(closing(entry_flags), Nat4Closing::Closed)
}

/// Value of `NAT4`: the tuple the packet leaves with, where it goes, and
/// when the half was last used.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Nat4Entry {
    pub src_be: u32,
    pub dst_be: u32,
    pub src_port_be: u16,
    pub dst_port_be: u16,
    /// Forward entry of a backend on another node: that node's address
    /// (the next hop). 0: a local backend, or a reply (routed to the
    /// client by the node's FIB).
    pub next_hop_be: u32,
    /// `NAT4_*` bits.
    pub flags: u32,
    pub _pad: u32,
    /// CLOCK_MONOTONIC (`bpf_ktime_get_coarse_ns`) of its last packet,
    /// refreshed at most about once a second.
    pub last_seen_ns: u64,
}
const _: () = assert!(core::mem::size_of::<Nat4Entry>() == 32);

impl Nat4Key {
    /// The key of the other half of the connection this entry translates:
    /// what arrives in the other direction is `entry`'s tuple reversed.
    pub const fn twin(&self, entry: &Nat4Entry) -> Nat4Key {
        Nat4Key {
            src_be: entry.dst_be,
            dst_be: entry.src_be,
            src_port_be: entry.dst_port_be,
            dst_port_be: entry.src_port_be,
            protocol: self.protocol,
            direction: if self.direction == NAT4_FORWARD { NAT4_REPLY } else { NAT4_FORWARD },
            _pad: [0; 2],
        }
    }

    /// Is `twin` (found under `self.twin(..)`) this connection's other
    /// half, translating back to this key's tuple? Not when the key was
    /// reused since: a closed connection's SNAT port taken over by a new
    /// connection (`may_take_over`) leaves the old forward half pointing
    /// at the new connection's reply half, which must never be marked or
    /// removed for it.
    pub const fn pairs_with(&self, twin: &Nat4Entry) -> bool {
        twin.src_be == self.dst_be
            && twin.dst_be == self.src_be
            && twin.src_port_be == self.dst_port_be
            && twin.dst_port_be == self.src_port_be
    }
}

/// Key data of `LB4_SOURCE_RANGES`, an LPM trie: a frontend (a
/// LoadBalancer ingress IP's `SERVICES` key fields) and a client address.
/// An entry's prefix length is `SOURCE_RANGE_FRONTEND_BITS` plus its
/// range's, so a lookup with the full length matches only that
/// frontend's ranges. Written by the agent (from
/// `spec.loadBalancerSourceRanges`), read by `from_uplink` for a frontend
/// with `SERVICE_SOURCE_RANGES`. Value: unused (1).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct SourceRangeKey {
    pub vip_be: u32,
    pub port_be: u16,
    pub protocol: u8,
    pub _pad: u8,
    /// The range's address (an entry) or the client's (a lookup).
    pub src_be: u32,
}
const _: () = assert!(core::mem::size_of::<SourceRangeKey>() == 12);
#[cfg(feature = "user")]
unsafe impl aya::Pod for SourceRangeKey {}

/// Bits of `SourceRangeKey` before the client address: always matched.
pub const SOURCE_RANGE_FRONTEND_BITS: u32 = 64;

/// `Lb4Config::flags`: translate Services at the uplink
/// (`--kube-proxy-replacement=true`). Without it `from_uplink` leaves
/// every packet to the stack (kube-proxy's rules), as before.
pub const LB4_ENABLED: u32 = 1;
/// `Lb4Config::flags`: `--lb-mode=dsr`: a backend on another node answers
/// the client directly (direct server return) instead of through this
/// node's SNAT.
pub const LB4_DSR: u32 = 4;

/// `Lb4Config::flags`: new connections from outside are dropped
/// (`DropReason::Nat4Migrating`) while existing ones carry on. Set by an
/// agent carrying `NAT4` over to a new layout, from just before it copies
/// the entries until every link runs its programs and the entries the old
/// programs wrote meanwhile are copied too (`migrate`), so that no new
/// connection lives in the table being left behind. Cleared at the end,
/// and by every agent start (`LB4_CONFIG` is rewritten whole).
pub const LB4_PAUSED: u32 = 2;

/// Value of `LB4_CONFIG` (one entry): the uplink's Service settings,
/// written by the agent at start; read by `from_uplink` and `from_pod`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Lb4Config {
    /// `LB4_*` bits.
    pub flags: u32,
    /// The SNAT ports the datapath allocates (`--snat-port-range`), host
    /// order, inclusive.
    pub snat_port_min: u16,
    pub snat_port_max: u16,
}
const _: () = assert!(core::mem::size_of::<Lb4Config>() == 8);

/// Ports tried for a new SNATed connection before it is dropped.
pub const SNAT_PORT_TRIES: u32 = 16;

/// The default `--snat-port-range`: above the kernel's default ephemeral
/// range (`ip_local_port_range` 32768–60999) and the NodePort range
/// (30000–32767), so a reply to a SNAT port is never a local socket's.
pub const DEFAULT_SNAT_PORT_MIN: u16 = 61000;
pub const DEFAULT_SNAT_PORT_MAX: u16 = 65535;

impl Lb4Config {
    /// Is `port` (host order) one the datapath allocates?
    pub const fn in_snat_range(&self, port: u16) -> bool {
        self.snat_port_min != 0 && port >= self.snat_port_min && port <= self.snat_port_max
    }

    /// The SNAT port for try `attempt` from the random `seed`: each try
    /// an independent-looking draw from the range (host order). Not a
    /// fixed stride from the seed: a stride is linear probing, taken
    /// ports gather in runs (each new connection takes the first free
    /// port below a run, lengthening it), and a seed landing at a run's
    /// top spends every try inside it. On a 40-port range at a third
    /// taken that refused a connection in one CI run of 80.
    pub const fn snat_port(&self, seed: u32, attempt: u32) -> u16 {
        let span = (self.snat_port_max as u32).saturating_sub(self.snat_port_min as u32) + 1;
        let offset = mix32(seed ^ attempt.wrapping_mul(0x9e37_79b9)) % span;
        (self.snat_port_min as u32 + offset) as u16
    }
}

/// A 32-bit finaliser (the murmur3 one): every input bit moves about half
/// the output bits, so consecutive tries land anywhere in the range.
const fn mix32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x85eb_ca6b);
    x ^= x >> 13;
    x = x.wrapping_mul(0xc2b2_ae35);
    x ^= x >> 16;
    x
}

/// Direct server return (`--lb-mode=dsr`): the entry node DNATs a
/// client's packet for a backend on another node and keeps the client's
/// address and port; the frontend the client named travels to the
/// backend's node in an IPv4 option inserted right after the fixed
/// header, which that node strips, recording a reply entry from it.
///
/// The option, 8 bytes: type `DSR_OPTION_TYPE`, length 8, the frontend's
/// port, then its address (both network order). Type 30 with the copy
/// flag and class 0 is the number RFC 4727 sets aside for experiments
/// (`0x1e`): no standard option is taken, and a Linux host that receives
/// it unstripped ignores it (`ip_options_compile` skips unknown types).
pub const DSR_OPTION_TYPE: u8 = 0x1e;
/// Bytes the option adds to the packet (and to its IPv4 header).
pub const DSR_OPTION_LEN: usize = 8;
/// The IPv4 header with the option: 20 bytes + the option.
pub const DSR_IPV4_HEADER_LEN: usize = 20 + DSR_OPTION_LEN;
/// `version_ihl` of such a header (IHL 7 words).
pub const DSR_VERSION_IHL: u8 = 0x40 | (DSR_IPV4_HEADER_LEN / 4) as u8;

/// The option's bytes for a frontend (`frontend_be`, `port_be` as in the
/// packet: their memory bytes are the wire's).
pub const fn dsr_option(frontend_be: u32, port_be: u16) -> [u8; DSR_OPTION_LEN] {
    let a = frontend_be.to_ne_bytes();
    let p = port_be.to_ne_bytes();
    [DSR_OPTION_TYPE, DSR_OPTION_LEN as u8, p[0], p[1], a[0], a[1], a[2], a[3]]
}

/// The frontend in an option's bytes (as `dsr_option` takes it), or
/// `None` when they are not sluice's DSR option.
pub const fn dsr_frontend(option: &[u8; DSR_OPTION_LEN]) -> Option<(u32, u16)> {
    if option[0] != DSR_OPTION_TYPE || option[1] != DSR_OPTION_LEN as u8 {
        return None;
    }
    let port_be = u16::from_ne_bytes([option[2], option[3]]);
    let frontend_be = u32::from_ne_bytes([option[4], option[5], option[6], option[7]]);
    if frontend_be == 0 || port_be == 0 {
        return None;
    }
    Some((frontend_be, port_be))
}

/// Does a packet of `l3_len` bytes (IPv4 header and on) still fit
/// `egress_mtu` once the option is in? A GSO packet is measured per
/// segment by the caller (`bpf_check_mtu` does both).
pub const fn dsr_fits(l3_len: u32, egress_mtu: u32) -> bool {
    l3_len + DSR_OPTION_LEN as u32 <= egress_mtu
}

/// The MTU a too-big client is told (ICMP fragmentation needed): the
/// egress path's, less the option, so its next packet fits with it.
pub const fn dsr_client_mtu(egress_mtu: u32) -> u16 {
    let m = egress_mtu.saturating_sub(DSR_OPTION_LEN as u32);
    if m > u16::MAX as u32 {
        u16::MAX
    } else {
        m as u16
    }
}

/// The IPv4 header checksum (RFC 791, RFC 1071) of `header`, whose
/// checksum field (bytes 10–11) is taken as zero. Network order.
pub fn ipv4_header_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut i = 0;
    while i + 1 < header.len() {
        if i != 10 {
            sum += u16::from_be_bytes([header[i], header[i + 1]]) as u32;
        }
        i += 2;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// Turn `header`, an IPv4 header without options followed by 8 bytes of
/// room, into one carrying the DSR option for the frontend: IHL 7, total
/// length + 8, the option, the checksum. `tot_len` stays as is if it
/// would overflow (the caller refuses such a packet first).
pub fn dsr_insert_option(header: &mut [u8; DSR_IPV4_HEADER_LEN], frontend_be: u32, port_be: u16) {
    header[0] = DSR_VERSION_IHL;
    let tot = u16::from_be_bytes([header[2], header[3]]).saturating_add(DSR_OPTION_LEN as u16);
    header[2..4].copy_from_slice(&tot.to_be_bytes());
    header[20..].copy_from_slice(&dsr_option(frontend_be, port_be));
    let c = ipv4_header_checksum(header);
    header[10..12].copy_from_slice(&c.to_be_bytes());
}

/// The other way: `header` (its first 20 bytes, once the option's 8 are
/// gone) back to an IPv4 header without options: IHL 5, total length − 8,
/// the checksum.
pub fn dsr_strip_option(header: &mut [u8; 20]) {
    header[0] = 0x45;
    let tot = u16::from_be_bytes([header[2], header[3]]).saturating_sub(DSR_OPTION_LEN as u16);
    header[2..4].copy_from_slice(&tot.to_be_bytes());
    let c = ipv4_header_checksum(header);
    header[10..12].copy_from_slice(&c.to_be_bytes());
}

/// Does a packet from outside the cluster to this kind of frontend get
/// translated at the uplink? Not a ClusterIP: it is the cluster's own.
pub const fn reachable_from_outside(kind: crate::services::FrontendKind) -> bool {
    !matches!(kind, crate::services::FrontendKind::ClusterIp)
}

/// What the uplink's Service translation counts (`NAT4_STATS`, per CPU,
/// by this index). Numbered, never renumbered.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nat4Counter {
    /// A new connection from outside to a backend on this node (DNAT).
    NewLocal = 0,
    /// A new connection from outside to a backend on another node (DNAT
    /// and SNAT to the node's address).
    NewRemote = 1,
    /// A SNAT port already held by another connection: another was tried.
    PortCollision = 2,
    /// Every try collided: the new connection was dropped.
    PortExhausted = 3,
    /// `NAT4` refused an insert (full): the new connection was dropped.
    InsertFailed = 4,
    /// Another CPU created the same connection first; its entry is used.
    Raced = 5,
    /// A packet translated through an existing forward entry.
    Forwarded = 6,
    /// An answer translated back (frontend → client).
    Reversed = 7,
    /// A new connection took the SNAT port of a closed one
    /// (`may_take_over`), whose pair was removed.
    PortTakenOver = 8,
    /// A client's SYN on the tuple of a closed connection: the old pair
    /// removed, a new connection balanced (`syn_reopens`).
    Reopened = 9,
    /// A new connection of a Service with `sessionAffinity: ClientIP` sent
    /// to the backend remembered for its client (`LB4_SVC_AFFINITY`).
    AffinityReused = 10,
    /// A new connection of a Service with affinity whose client had no
    /// usable choice (none, expired, or its backend gone): picked at
    /// random and remembered.
    AffinityPicked = 11,
    /// A first fragment (offset 0, more to come) translated; its
    /// translation remembered in `LB4_FRAGS` for the later ones.
    FragmentFirst = 12,
    /// A later fragment translated through `LB4_FRAGS` and sent where its
    /// first went.
    FragmentForwarded = 13,
    /// A later fragment with no `LB4_FRAGS` entry (not a Service's, or it
    /// arrived before its first): left to the stack.
    FragmentPassed = 14,
    /// `--lb-mode=dsr`, the entry node: a packet sent to a backend's node
    /// with the DSR option (a TCP SYN, every UDP datagram).
    DsrOptionSent = 15,
    /// `--lb-mode=dsr`, the backend's node: a packet with the DSR option
    /// for a local pod: its reply entry written, the option stripped.
    DsrReplyRecorded = 16,
    /// `--lb-mode=dsr`, the entry node: a packet the option would take
    /// past the egress MTU, answered with ICMP fragmentation needed.
    DsrFragNeeded = 17,
}

impl Nat4Counter {
    pub const COUNT: u32 = 18;
    pub const ALL: [Nat4Counter; Self::COUNT as usize] = [
        Nat4Counter::NewLocal,
        Nat4Counter::NewRemote,
        Nat4Counter::PortCollision,
        Nat4Counter::PortExhausted,
        Nat4Counter::InsertFailed,
        Nat4Counter::Raced,
        Nat4Counter::Forwarded,
        Nat4Counter::Reversed,
        Nat4Counter::PortTakenOver,
        Nat4Counter::Reopened,
        Nat4Counter::AffinityReused,
        Nat4Counter::AffinityPicked,
        Nat4Counter::FragmentFirst,
        Nat4Counter::FragmentForwarded,
        Nat4Counter::FragmentPassed,
        Nat4Counter::DsrOptionSent,
        Nat4Counter::DsrReplyRecorded,
        Nat4Counter::DsrFragNeeded,
    ];

    /// Name in `status` and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Nat4Counter::NewLocal => "new_local",
            Nat4Counter::NewRemote => "new_remote",
            Nat4Counter::PortCollision => "port_collision",
            Nat4Counter::PortExhausted => "port_exhausted",
            Nat4Counter::InsertFailed => "insert_failed",
            Nat4Counter::Raced => "raced",
            Nat4Counter::Forwarded => "forwarded",
            Nat4Counter::Reversed => "reversed",
            Nat4Counter::PortTakenOver => "port_taken_over",
            Nat4Counter::Reopened => "reopened",
            Nat4Counter::AffinityReused => "affinity_reused",
            Nat4Counter::AffinityPicked => "affinity_picked",
            Nat4Counter::FragmentFirst => "fragment_first",
            Nat4Counter::FragmentForwarded => "fragment_forwarded",
            Nat4Counter::FragmentPassed => "fragment_passed",
            Nat4Counter::DsrOptionSent => "dsr_option_sent",
            Nat4Counter::DsrReplyRecorded => "dsr_reply_recorded",
            Nat4Counter::DsrFragNeeded => "dsr_frag_needed",
        }
    }
}

#[cfg(feature = "user")]
mod pod_impls {
    // SAFETY: plain `repr(C)` data, explicit padding, no invalid bit
    // patterns.
    unsafe impl aya::Pod for super::Nat4Key {}
    unsafe impl aya::Pod for super::Nat4Entry {}
    unsafe impl aya::Pod for super::Lb4Config {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::golden::{check, golden};
    use crate::services::FrontendKind;

    const NAT4_COUNTERS: &[(Nat4Counter, u32, &str)] = &golden!(Nat4Counter {
        NewLocal = 0, "new_local";
        NewRemote = 1, "new_remote";
        PortCollision = 2, "port_collision";
        PortExhausted = 3, "port_exhausted";
        InsertFailed = 4, "insert_failed";
        Raced = 5, "raced";
        Forwarded = 6, "forwarded";
        Reversed = 7, "reversed";
        PortTakenOver = 8, "port_taken_over";
        Reopened = 9, "reopened";
        AffinityReused = 10, "affinity_reused";
        AffinityPicked = 11, "affinity_picked";
        FragmentFirst = 12, "fragment_first";
        FragmentForwarded = 13, "fragment_forwarded";
        FragmentPassed = 14, "fragment_passed";
        DsrOptionSent = 15, "dsr_option_sent";
        DsrReplyRecorded = 16, "dsr_reply_recorded";
        DsrFragNeeded = 17, "dsr_frag_needed";
    });

    #[test]
    fn nat4_counters_match_the_golden_table() {
        check(NAT4_COUNTERS, &Nat4Counter::ALL, Nat4Counter::COUNT, |c| c as u32, Nat4Counter::name);
    }

    #[test]
    fn twins_find_each_other() {
        // World 203.0.113.5:40000 → node 172.30.0.1:30080, SNAT to
        // 172.30.0.1:61005 → backend 10.244.2.2:7777.
        let fwd = Nat4Key {
            src_be: 5,
            dst_be: 1,
            src_port_be: 40000,
            dst_port_be: 30080,
            protocol: 6,
            direction: NAT4_FORWARD,
            _pad: [0; 2],
        };
        let fwd_entry =
            Nat4Entry { src_be: 1, dst_be: 22, src_port_be: 61005, dst_port_be: 7777, ..Default::default() };
        let rev = fwd.twin(&fwd_entry);
        assert_eq!(
            rev,
            Nat4Key {
                src_be: 22,
                dst_be: 1,
                src_port_be: 7777,
                dst_port_be: 61005,
                protocol: 6,
                direction: NAT4_REPLY,
                _pad: [0; 2]
            }
        );
        let rev_entry =
            Nat4Entry { src_be: 1, dst_be: 5, src_port_be: 30080, dst_port_be: 40000, ..Default::default() };
        assert_eq!(rev.twin(&rev_entry), fwd);
        assert!(fwd.pairs_with(&rev_entry) && rev.pairs_with(&fwd_entry));
        // The SNAT port taken over by a client 203.0.113.9:41000: the old
        // forward half's twin key now holds the new connection's reply.
        let taken = Nat4Entry { dst_be: 9, dst_port_be: 41000, ..rev_entry };
        assert!(!fwd.pairs_with(&taken));
        assert!(!fwd.pairs_with(&Nat4Entry { src_port_be: 30081, ..rev_entry }));
    }

    #[test]
    fn snat_ports_stay_in_range_and_tries_spread_over_it() {
        let small = Lb4Config { flags: LB4_ENABLED, snat_port_min: 61000, snat_port_max: 61039 };
        let full = Lb4Config { flags: 0, snat_port_min: 61000, snat_port_max: 65535 };
        let single = Lb4Config { flags: LB4_ENABLED, snat_port_min: 61000, snat_port_max: 61000 };
        for seed in [0, 1, 12345, u32::MAX, 4535, 4536] {
            for attempt in 0..SNAT_PORT_TRIES {
                assert!(small.in_snat_range(small.snat_port(seed, attempt)));
                assert!(full.in_snat_range(full.snat_port(seed, attempt)));
                assert_eq!(single.snat_port(seed, attempt), 61000);
            }
        }
        // Every port of a 40-port range is drawn, evenly enough.
        let mut drawn = [0u32; 40];
        for seed in 0..4000u32 {
            drawn[(small.snat_port(seed.wrapping_mul(2_654_435_761), seed % SNAT_PORT_TRIES) - 61000) as usize] += 1;
        }
        assert!(drawn.iter().all(|n| (50..=150).contains(n)), "{drawn:?}");
        assert!(!full.in_snat_range(60999));
        assert!(!Lb4Config::default().in_snat_range(0), "no range configured: no SNAT port");
    }

    /// Taken ports in a run (what a connection taking the first free port
    /// after its draw leaves behind) do not trap a new connection: of
    /// 10,000 seeds, none spends all its tries inside a run of as many
    /// taken ports as it has tries, of 40. A fixed stride walks down the
    /// run from a seed at its top: 1 in 40 seeds, 250, were refused.
    #[test]
    fn a_run_of_taken_ports_does_not_spend_every_try() {
        let c = Lb4Config { flags: LB4_ENABLED, snat_port_min: 61000, snat_port_max: 61039 };
        let taken = |p: u16| (61010..61010 + SNAT_PORT_TRIES as u16).contains(&p);
        let trapped = (0..10_000u32)
            .map(|i| i.wrapping_mul(2_654_435_761))
            .filter(|seed| (0..SNAT_PORT_TRIES).all(|attempt| taken(c.snat_port(*seed, attempt))))
            .count();
        assert_eq!(trapped, 0);
        // A third of the range taken (what 40 ports at a connection every
        // 150 ms, each held 2 s after its FINs, leave), scattered: every
        // try taken for at most 1 seed in 10,000.
        let scattered = |p: u16| p.is_multiple_of(3);
        let trapped = (0..10_000u32)
            .map(|i| i.wrapping_mul(2_654_435_761))
            .filter(|seed| (0..SNAT_PORT_TRIES).all(|attempt| scattered(c.snat_port(*seed, attempt))))
            .count();
        assert!(trapped <= 1, "{trapped}");
    }

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn fins_and_rsts_move_a_connection_to_closing() {
        assert_eq!(closing(0), Nat4Closing::Open);
        assert_eq!(closing(NAT4_SNAT | NAT4_REPLY_SEEN | NAT4_VIA_TUNNEL), Nat4Closing::Open);
        let client_fin = close_bits(NAT4_FORWARD, TCP_FIN | TCP_ACK);
        let backend_fin = close_bits(NAT4_REPLY, TCP_FIN | TCP_ACK);
        assert_eq!((client_fin, backend_fin), (NAT4_FIN_CLIENT, NAT4_FIN_BACKEND));
        assert_eq!(closing(client_fin), Nat4Closing::HalfClosed);
        assert_eq!(closing(backend_fin), Nat4Closing::HalfClosed);
        // The same side's FIN twice (a retransmission) is still half.
        assert_eq!(closing(client_fin | close_bits(NAT4_FORWARD, TCP_FIN)), Nat4Closing::HalfClosed);
        assert_eq!(closing(client_fin | backend_fin), Nat4Closing::Closed);
        for direction in [NAT4_FORWARD, NAT4_REPLY] {
            assert_eq!(close_bits(direction, TCP_RST), NAT4_RST);
            assert_eq!(closing(close_bits(direction, TCP_RST | TCP_ACK)), Nat4Closing::Closed);
            for plain in [TCP_ACK, TCP_SYN, TCP_SYN | TCP_ACK, 0x08 | TCP_ACK] {
                assert_eq!(close_bits(direction, plain), 0, "{plain:#x} closes nothing");
            }
        }
        assert_eq!(closing_lifetime_secs(Nat4Closing::Open), None);
        assert_eq!(closing_lifetime_secs(Nat4Closing::HalfClosed), Some(120));
        assert_eq!(closing_lifetime_secs(Nat4Closing::Closed), Some(10));
    }

    #[test]
    fn only_a_closed_connections_snat_port_is_taken_over() {
        let both_fins = NAT4_FIN_CLIENT | NAT4_FIN_BACKEND | NAT4_REPLY_SEEN | NAT4_SNAT;
        // An open or half-closed holder: never, however idle.
        for open in [0, NAT4_SNAT | NAT4_REPLY_SEEN, NAT4_FIN_CLIENT, NAT4_FIN_BACKEND | NAT4_SNAT] {
            assert!(!may_take_over(open, 0), "{open:#x}");
            assert!(!may_take_over(open, 3600 * SEC), "{open:#x}");
        }
        // An RST: at once.
        assert!(may_take_over(NAT4_RST | NAT4_SNAT, 0));
        // FINs both ways: once the last ACK has had its time.
        assert!(!may_take_over(both_fins, 0));
        assert!(!may_take_over(both_fins, NAT4_FIN_REUSE_SECS * SEC - 1));
        assert!(may_take_over(both_fins, NAT4_FIN_REUSE_SECS * SEC));
    }

    #[test]
    fn a_syn_on_a_closed_tuple_starts_a_new_connection() {
        assert!(syn_reopens(NAT4_RST, TCP_SYN));
        assert!(syn_reopens(NAT4_FIN_CLIENT | NAT4_FIN_BACKEND, TCP_SYN));
        // A retransmitted SYN of a live or half-closed connection is its own.
        assert!(!syn_reopens(0, TCP_SYN));
        assert!(!syn_reopens(NAT4_REPLY_SEEN, TCP_SYN));
        assert!(!syn_reopens(NAT4_FIN_CLIENT, TCP_SYN));
        // Only a bare SYN: not a SYN-ACK, not a plain segment.
        assert!(!syn_reopens(NAT4_RST, TCP_SYN | TCP_ACK));
        assert!(!syn_reopens(NAT4_RST, TCP_ACK));
    }

    #[test]
    fn the_dsr_option_carries_the_frontend_and_the_header_stays_valid() {
        let frontend_be = u32::from_ne_bytes([172, 30, 0, 1]);
        let port_be = 30080u16.to_be();
        let opt = dsr_option(frontend_be, port_be);
        assert_eq!(opt, [0x1e, 8, 0x75, 0x80, 172, 30, 0, 1], "type, length, port, address: wire order");
        assert_eq!(dsr_frontend(&opt), Some((frontend_be, port_be)));
        for bad in [
            [0x1f, 8, 1, 1, 1, 1, 1, 1],
            [0x1e, 4, 1, 1, 1, 1, 1, 1],
            [0x1e, 8, 0, 0, 1, 1, 1, 1],
            [0x1e, 8, 1, 1, 0, 0, 0, 0],
        ] {
            assert_eq!(dsr_frontend(&bad), None, "{bad:?}");
        }
        // A UDP datagram's header, 192.0.2.1 → 10.244.2.9, 1400 bytes.
        let mut h = [0u8; DSR_IPV4_HEADER_LEN];
        h[..20].copy_from_slice(&[0x45, 0, 0x05, 0x78, 0x12, 0x34, 0x40, 0, 63, 17, 0, 0, 192, 0, 2, 1, 10, 244, 2, 9]);
        let c = ipv4_header_checksum(&h[..20]);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        let plain: [u8; 20] = h[..20].try_into().unwrap();
        dsr_insert_option(&mut h, frontend_be, port_be);
        assert_eq!((h[0], u16::from_be_bytes([h[2], h[3]])), (0x47, 1408));
        assert_eq!(&h[20..], &opt);
        // A header that checks out sums (checksum included) to 0xffff.
        let sum = |b: &[u8]| {
            let mut s: u32 = b.chunks(2).map(|w| u16::from_be_bytes([w[0], w[1]]) as u32).sum();
            s = (s & 0xffff) + (s >> 16);
            (s & 0xffff) + (s >> 16)
        };
        assert_eq!(sum(&h), 0xffff, "checksum over the 28 bytes");
        let mut back: [u8; 20] = h[..20].try_into().unwrap();
        dsr_strip_option(&mut back);
        assert_eq!(back, plain, "stripped: the header as it was");
    }

    #[test]
    fn the_dsr_mtu_rule_counts_the_option() {
        assert!(dsr_fits(1492, 1500));
        assert!(!dsr_fits(1493, 1500));
        assert_eq!(dsr_client_mtu(1500), 1492);
        // Over VXLAN the device's MTU (the uplink's less 50) is the egress.
        assert!(dsr_fits(1442, 1450) && !dsr_fits(1443, 1450));
        assert_eq!(dsr_client_mtu(1450), 1442);
        assert_eq!(dsr_client_mtu(4), 0);
    }

    #[test]
    fn only_cluster_ips_are_closed_to_the_outside() {
        assert!(!reachable_from_outside(FrontendKind::ClusterIp));
        for k in [FrontendKind::NodePort, FrontendKind::ExternalIp, FrontendKind::LoadBalancer, FrontendKind::HostPort]
        {
            assert!(reachable_from_outside(k), "{k:?}");
        }
    }
}
