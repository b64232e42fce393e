//! Judging a connection: the bounded lookups of docs/ARCHITECTURE.md
//! ("NetworkPolicy"), then `sluice_common::policy::policy_verdict`. At most,
//! per direction: one `POLICY_IDENTITIES` (`POLICY_IDENTITIES6`) lookup and
//! two `POLICY_RULES` lookups, whatever the number of policies. One code
//! for both families (`Family`).
use aya_ebpf::{maps::lpm_trie::Key, programs::TcContext};
use sluice_common::{
    policy::{
        needs_judgement, policy_stat_slot, policy_verdict, Direction, EndpointPolicy, PolicyKey, PolicyValue,
        PolicyVerdict, CT_EGRESS_DEFERRED, CT_EGRESS_JUDGED, CT_INGRESS_JUDGED, IDENTITY_ANY, IDENTITY_UNKNOWN_CLUSTER,
        POLICY_PREFIX_EXACT_PORT, POLICY_REF_NONE,
    },
    DropReason,
};

use super::family::Family;
use crate::maps::{POLICY_RULES, POLICY_STATS};

/// What judging a connection found.
pub struct Judged {
    /// The first denial's reason (the client's egress before the server's
    /// ingress: the packet leaves one before it reaches the other).
    pub denied: Option<DropReason>,
    /// `CT_*_JUDGED`, `CT_EGRESS_DEFERRED`.
    pub flags: u32,
    pub egress_ref: u32,
    pub ingress_ref: u32,
}

/// Judge the connection `key` (client → server) with the policy entries of
/// whichever of its ends are pods of this node (`None`: not a local pod,
/// or not selected by any policy). The client's egress is judged unless
/// the server address is in the service CIDR (kube-proxy translates it
/// later: judged then, where the stack hands the packet back); the
/// server's ingress always. Each judged direction is counted in
/// `POLICY_STATS` and reported to subscribed monitors.
#[inline(always)]
pub fn connection<F: Family>(
    ctx: &TcContext,
    key: &F::Key,
    client: Option<EndpointPolicy>,
    server: Option<EndpointPolicy>,
    port_known: bool,
) -> Judged {
    let mut judged = Judged { denied: None, flags: 0, egress_ref: POLICY_REF_NONE, ingress_ref: POLICY_REF_NONE };
    // The destination port, for the rules: 0 when it is not known (an
    // untracked packet), which only a rule without ports matches.
    let port = if port_known { F::dst_port(key) } else { 0 };
    let protocol = F::protocol(key);
    if let Some(ep) = client {
        if F::dst_in_service_cidr(key) {
            judged.flags |= CT_EGRESS_DEFERRED;
        } else {
            let (verdict, policy_ref) = direction::<F>(Direction::Egress, &ep, key, protocol, port);
            record::<F>(ctx, key, Direction::Egress, verdict, policy_ref);
            judged.flags |= CT_EGRESS_JUDGED;
            judged.egress_ref = policy_ref;
            if judged.denied.is_none() {
                judged.denied = verdict.drop_reason();
            }
        }
    }
    if let Some(ep) = server {
        let (verdict, policy_ref) = direction::<F>(Direction::Ingress, &ep, key, protocol, port);
        record::<F>(ctx, key, Direction::Ingress, verdict, policy_ref);
        judged.flags |= CT_INGRESS_JUDGED;
        judged.ingress_ref = policy_ref;
        if judged.denied.is_none() {
            judged.denied = verdict.drop_reason();
        }
    }
    judged
}

/// The verdict for the local pod `ep` in `dir` against its peer in `key`
/// (the server for egress, the client for ingress), and the allowing
/// entry's policy (`POLICY_REF_NONE` when no rule decided).
#[inline(always)]
fn direction<F: Family>(
    dir: Direction,
    ep: &EndpointPolicy,
    key: &F::Key,
    protocol: u8,
    port: u16,
) -> (PolicyVerdict, u32) {
    if !needs_judgement(ep.flags, dir) {
        return (PolicyVerdict::AllowedNotIsolated, POLICY_REF_NONE);
    }
    let identity = F::peer_identity(key, dir);
    let packed =
        sluice_policy_direction(dir as u32, ep.rules_id, ep.flags, identity, (protocol as u32) << 16 | port as u32);
    (verdict_from((packed >> 32) as u32), packed as u32)
}

/// The lookups and `policy_verdict` of `direction`. Inlined into
/// `sluice_policy_judge_packet` (a global function, checked once per
/// program): a global function of its own here would add a frame, and
/// Linux 6.1 counts every frame of the call chain against its 512-byte
/// stack (`from_pod` 272 + judge 192 + this 40, each rounded up to 32:
/// 544, refused), where 6.18 accepts it. Scalars in, one scalar out: the
/// verdict in the high 32 bits, the policy ref in the low ones;
/// `identity`: the peer's (its family's `POLICY_IDENTITIES*` lookup);
/// `protocol_port`: protocol << 16 | destination port.
#[inline(always)]
fn sluice_policy_direction(dir: u32, rules_id: u32, flags: u32, identity: u32, protocol_port: u32) -> u64 {
    let dir = if dir == Direction::Egress as u32 { Direction::Egress } else { Direction::Ingress };
    let (protocol, port) = ((protocol_port >> 16) as u8, protocol_port as u16);
    // `policy_verdict` ignores an entry for an identity-less peer; not
    // looking it up saves the lookup.
    let peer_entry = if identity != IDENTITY_UNKNOWN_CLUSTER && identity != IDENTITY_ANY {
        rule(rules_id, identity, dir, protocol, port)
    } else {
        None
    };
    let any_entry = if peer_entry.is_none() { rule(rules_id, IDENTITY_ANY, dir, protocol, port) } else { None };
    let verdict = policy_verdict(dir, flags, identity, peer_entry, any_entry);
    let policy_ref = match (verdict, peer_entry, any_entry) {
        (PolicyVerdict::AllowedByPeerRule, Some(v), _) => v.policy_ref,
        (PolicyVerdict::AllowedByAnyPeerRule, _, Some(v)) => v.policy_ref,
        _ => POLICY_REF_NONE,
    };
    ((verdict as u64) << 32) | policy_ref as u64
}

/// The verdict numbered `n` (the packed result): an unknown number is a
/// denial.
#[inline(always)]
fn verdict_from(n: u32) -> PolicyVerdict {
    const NOT_ISOLATED: u32 = PolicyVerdict::AllowedNotIsolated as u32;
    const HOST: u32 = PolicyVerdict::AllowedHost as u32;
    const PEER_RULE: u32 = PolicyVerdict::AllowedByPeerRule as u32;
    const ANY_PEER_RULE: u32 = PolicyVerdict::AllowedByAnyPeerRule as u32;
    const DENIED_EGRESS: u32 = PolicyVerdict::DeniedEgress as u32;
    const PEER_UNKNOWN: u32 = PolicyVerdict::PeerUnknown as u32;
    const PENDING: u32 = PolicyVerdict::Pending as u32;
    match n {
        NOT_ISOLATED => PolicyVerdict::AllowedNotIsolated,
        HOST => PolicyVerdict::AllowedHost,
        PEER_RULE => PolicyVerdict::AllowedByPeerRule,
        ANY_PEER_RULE => PolicyVerdict::AllowedByAnyPeerRule,
        DENIED_EGRESS => PolicyVerdict::DeniedEgress,
        PEER_UNKNOWN => PolicyVerdict::PeerUnknown,
        PENDING => PolicyVerdict::Pending,
        _ => PolicyVerdict::DeniedIngress,
    }
}

/// `POLICY_RULES` probed for one port (the trie finds the entry for the
/// port, its range, its protocol or every protocol).
#[inline(always)]
fn rule(rules_id: u32, identity: u32, dir: Direction, protocol: u8, port: u16) -> Option<PolicyValue> {
    let probe = Key::new(POLICY_PREFIX_EXACT_PORT, PolicyKey::probe(rules_id, identity, dir, protocol, port));
    POLICY_RULES.get(&probe).copied()
}

/// Count a verdict and report it to the monitors that want it.
#[inline(always)]
fn record<F: Family>(ctx: &TcContext, key: &F::Key, dir: Direction, verdict: PolicyVerdict, policy_ref: u32) {
    if let Some(n) = POLICY_STATS.get_ptr_mut(policy_stat_slot(dir, verdict)) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe { *n += 1 }
    }
    F::event(ctx, key, dir as u8, verdict as u8, policy_ref);
}
