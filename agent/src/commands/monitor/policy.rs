//! `monitor --type policy`: each NetworkPolicy verdict the datapath
//! reports (`PolicyEvent`, one per judged direction of a new connection, or
//! of an open one judged again after a policy change), with both ends'
//! pod names, the port and protocol, and for an allow the policy that
//! allowed it, for a deny "isolated by <policies>, no rule allows". Names
//! come from the tables the agent writes (`policy::names`: policy refs and
//! pod addresses; `policy::report`: what isolates each local pod), re-read
//! when they change. `decode`, `render` and `to_json` are pure.
use std::net::Ipv4Addr;

use jiff::Timestamp;
use serde_json::{json, Value};
use sluice_common::{
    events::EVENT_POLICY,
    policy::{Direction, PolicyEvent, PolicyVerdict, POLICY_REF_NONE},
};
use sluice_node::datapath::pinned_maps::ip_from_be;

use crate::policy::{names::NamesTable, report::PolicyReport};

/// A policy event from the ring buffer's bytes (`None`: too short, or
/// another kind).
pub fn decode(bytes: &[u8]) -> Option<PolicyEvent> {
    if bytes.len() < std::mem::size_of::<PolicyEvent>() || bytes[8] != EVENT_POLICY {
        return None;
    }
    // SAFETY: long enough, `PolicyEvent` is plain data; unaligned read.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const PolicyEvent) })
}

/// What the tables say about one event.
struct Explained {
    direction: &'static str,
    verdict: PolicyVerdict,
    allowed: bool,
    client: Ipv4Addr,
    server: Ipv4Addr,
    client_name: String,
    server_name: String,
    /// The local pod the verdict is for.
    local: String,
    /// For an allow: the policy, or why no policy was needed.
    reason: String,
}

fn name(names: &NamesTable, ip: Ipv4Addr) -> String {
    names.pod(ip).map(str::to_string).unwrap_or_else(|| ip.to_string())
}

fn explain(ev: &PolicyEvent, names: &NamesTable, report: &PolicyReport) -> Explained {
    let direction = if ev.direction == Direction::Egress as u8 { Direction::Egress } else { Direction::Ingress };
    let verdict = PolicyVerdict::ALL.get(ev.verdict as usize).copied().unwrap_or(PolicyVerdict::DeniedIngress);
    let (client, server) = (ip_from_be(ev.saddr_be), ip_from_be(ev.daddr_be));
    let local_ip = if direction == Direction::Egress { client } else { server };
    let local = name(names, local_ip);
    let isolated_by = || {
        let view = report.pods.get(&local);
        let by = view.map(|v| if direction == Direction::Egress { &v.egress } else { &v.ingress });
        match by.map(|d| d.isolated_by.join(", ")).filter(|s| !s.is_empty()) {
            Some(p) => p,
            None => "a policy (not in the agent's report yet)".to_string(),
        }
    };
    let reason = match verdict {
        PolicyVerdict::AllowedNotIsolated => format!("{local} is not isolated for {}", direction.name()),
        PolicyVerdict::AllowedHost => "the peer is the pod's own node".to_string(),
        PolicyVerdict::AllowedByPeerRule | PolicyVerdict::AllowedByAnyPeerRule => {
            match (ev.policy_ref, names.policy(ev.policy_ref)) {
                (POLICY_REF_NONE, _) => "an allow rule".to_string(),
                (_, Some(p)) => format!("allowed by {p}"),
                (r, None) => format!("allowed by policy #{r}"),
            }
        }
        PolicyVerdict::PeerUnknown => {
            format!(
                "{local} is isolated by {}; the peer is a cluster address this node does not know yet",
                isolated_by()
            )
        }
        PolicyVerdict::Pending => {
            format!("{local} waits for its policy (the CNI plugin found none from the agent)")
        }
        _ => format!("{local} is isolated by {}, no rule allows", isolated_by()),
    };
    Explained {
        direction: direction.name(),
        verdict,
        allowed: verdict.allowed(),
        client,
        server,
        client_name: name(names, client),
        server_name: name(names, server),
        local,
        reason,
    }
}

fn protocol_name(p: u8) -> String {
    match p {
        6 => "tcp".into(),
        17 => "udp".into(),
        132 => "sctp".into(),
        1 => "icmp".into(),
        n => format!("proto {n}"),
    }
}

/// `12:15:17.123456 POLICY deny ingress x/b (10.244.1.3:41234) → x/a
/// (10.244.1.2:80) tcp: x/a is isolated by x/deny-all, no rule allows`.
pub fn render(ev: &PolicyEvent, names: &NamesTable, report: &PolicyReport, at: Timestamp) -> String {
    let e = explain(ev, names, report);
    format!(
        "{} POLICY {} {} {} ({}:{}) → {} ({}:{}) {}: {}",
        at.strftime("%H:%M:%S%.6f"),
        if e.allowed { "allow" } else { "deny" },
        e.direction,
        e.client_name,
        e.client,
        u16::from_be(ev.sport_be),
        e.server_name,
        e.server,
        u16::from_be(ev.dport_be),
        protocol_name(ev.protocol),
        e.reason
    )
}

pub fn to_json(ev: &PolicyEvent, names: &NamesTable, report: &PolicyReport, at: Timestamp) -> Value {
    let e = explain(ev, names, report);
    json!({
        "time": at.to_string(),
        "monotonicNs": ev.ts_ns,
        "type": "policy",
        "action": if e.allowed { "allow" } else { "deny" },
        "verdict": e.verdict.name(),
        "direction": e.direction,
        "pod": e.local,
        "protocol": protocol_name(ev.protocol),
        "src": e.client.to_string(),
        "srcPod": names.pod(e.client),
        "srcPort": u16::from_be(ev.sport_be),
        "dst": e.server.to_string(),
        "dstPod": names.pod(e.server),
        "dstPort": u16::from_be(ev.dport_be),
        "policy": (ev.policy_ref != POLICY_REF_NONE).then(|| names.policy(ev.policy_ref)).flatten(),
        "reason": e.reason,
        "ifindex": ev.ifindex,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{
        model::{PodKey, PolicyName},
        report::{DirectionView, PodPolicyView},
    };

    fn tables() -> (NamesTable, PolicyReport) {
        let names = NamesTable::new(
            [(3, PolicyName::new("x", "allow-b"))].into(),
            [
                (Ipv4Addr::new(10, 244, 1, 2), PodKey::new("x", "a")),
                (Ipv4Addr::new(10, 244, 2, 3), PodKey::new("y", "b")),
            ]
            .into(),
        );
        let view = PodPolicyView {
            ingress: DirectionView { isolated_by: vec!["x/allow-b".into(), "x/deny-all".into()], allow: vec![] },
            ..Default::default()
        };
        (names, PolicyReport { pods: [("x/a".to_string(), view)].into() })
    }

    fn ev(verdict: PolicyVerdict, policy_ref: u32) -> PolicyEvent {
        PolicyEvent {
            ts_ns: 1,
            kind: EVENT_POLICY,
            direction: Direction::Ingress as u8,
            protocol: 6,
            verdict: verdict as u8,
            policy_ref,
            saddr_be: u32::from_ne_bytes([10, 244, 2, 3]),
            daddr_be: u32::from_ne_bytes([10, 244, 1, 2]),
            sport_be: 41234u16.to_be(),
            dport_be: 80u16.to_be(),
            ifindex: 7,
        }
    }

    fn at() -> Timestamp {
        "2026-12-06T12:15:17.123456Z".parse().unwrap()
    }

    #[test]
    fn an_allow_names_both_pods_the_port_and_the_policy_a_deny_what_isolates() {
        let (names, report) = tables();
        let allow = render(&ev(PolicyVerdict::AllowedByPeerRule, 3), &names, &report, at());
        assert_eq!(
            allow,
            "12:15:17.123456 POLICY allow ingress y/b (10.244.2.3:41234) → x/a (10.244.1.2:80) tcp: allowed by x/allow-b"
        );
        let deny = render(&ev(PolicyVerdict::DeniedIngress, POLICY_REF_NONE), &names, &report, at());
        assert_eq!(
            deny,
            "12:15:17.123456 POLICY deny ingress y/b (10.244.2.3:41234) → x/a (10.244.1.2:80) tcp: x/a is isolated by \
             x/allow-b, x/deny-all, no rule allows"
        );
        let j = to_json(&ev(PolicyVerdict::DeniedIngress, POLICY_REF_NONE), &names, &report, at());
        assert_eq!(j["action"], "deny");
        assert_eq!(j["verdict"], "policy_denied_ingress");
        assert_eq!(
            (j["srcPod"].as_str(), j["dstPod"].as_str(), j["dstPort"].as_u64()),
            (Some("y/b"), Some("x/a"), Some(80))
        );
        assert_eq!(j["policy"], Value::Null);
        let j = to_json(&ev(PolicyVerdict::AllowedByPeerRule, 3), &names, &report, at());
        assert_eq!(j["policy"], "x/allow-b");
        // An address no table knows prints as itself.
        let mut unknown = ev(PolicyVerdict::PeerUnknown, POLICY_REF_NONE);
        unknown.saddr_be = u32::from_ne_bytes([10, 244, 9, 9]);
        let line = render(&unknown, &names, &report, at());
        assert!(line.contains("10.244.9.9 (10.244.9.9:41234)") && line.contains("does not know yet"), "{line}");
    }

    #[test]
    fn only_policy_records_decode() {
        let e = ev(PolicyVerdict::AllowedHost, POLICY_REF_NONE);
        // SAFETY: plain data viewed as bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts(&e as *const PolicyEvent as *const u8, std::mem::size_of::<PolicyEvent>())
        };
        assert_eq!(decode(bytes), Some(e));
        let mut drop = bytes.to_vec();
        drop[8] = sluice_common::events::EVENT_DROP;
        assert_eq!(decode(&drop), None);
        assert_eq!(decode(&bytes[..20]), None);
    }
}
