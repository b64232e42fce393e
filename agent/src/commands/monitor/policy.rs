//! `monitor --type policy`: each NetworkPolicy verdict the datapath
//! reports (`PolicyEvent`, one per judged direction of a new connection, or
//! of an open one judged again after a policy change), with both ends'
//! pod names, the port and protocol, and for an allow the policy that
//! allowed it, for a deny "isolated by <policies>, no rule allows". Names
//! come from the tables the agent writes (`policy::names`: policy refs and
//! pod addresses; `policy::report`: what isolates each local pod), re-read
//! when they change. `decode`, `render` and `to_json` are pure. Both
//! families: an IPv6 verdict (`PolicyEvent6`) decodes to the same
//! [`PolicyRecord`] and prints the same way.
use std::net::{IpAddr, Ipv6Addr};

use jiff::Timestamp;
use serde_json::{json, Value};
use sluice_common::{
    events::{EVENT_POLICY, EVENT_POLICY6},
    policy::{Direction, PolicyEvent, PolicyEvent6, PolicyVerdict, POLICY_REF_NONE},
};
use sluice_node::datapath::pinned_maps::ip_from_be;

use crate::policy::{names::NamesTable, report::PolicyReport};

/// A policy verdict of either family: a `PolicyEvent` or `PolicyEvent6`
/// with its addresses as `IpAddr` and ports in host order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyRecord {
    pub ts_ns: u64,
    pub direction: u8,
    pub protocol: u8,
    pub verdict: u8,
    pub policy_ref: u32,
    pub client: IpAddr,
    pub server: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub ifindex: u32,
}

impl From<PolicyEvent> for PolicyRecord {
    fn from(e: PolicyEvent) -> Self {
        Self {
            ts_ns: e.ts_ns,
            direction: e.direction,
            protocol: e.protocol,
            verdict: e.verdict,
            policy_ref: e.policy_ref,
            client: IpAddr::V4(ip_from_be(e.saddr_be)),
            server: IpAddr::V4(ip_from_be(e.daddr_be)),
            sport: u16::from_be(e.sport_be),
            dport: u16::from_be(e.dport_be),
            ifindex: e.ifindex,
        }
    }
}

impl From<PolicyEvent6> for PolicyRecord {
    fn from(e: PolicyEvent6) -> Self {
        Self {
            ts_ns: e.ts_ns,
            direction: e.direction,
            protocol: e.protocol,
            verdict: e.verdict,
            policy_ref: e.policy_ref,
            client: IpAddr::V6(Ipv6Addr::from(e.saddr)),
            server: IpAddr::V6(Ipv6Addr::from(e.daddr)),
            sport: u16::from_be(e.sport_be),
            dport: u16::from_be(e.dport_be),
            ifindex: e.ifindex,
        }
    }
}

/// A policy event of either family from the ring buffer's bytes (`None`:
/// too short for its kind, or another kind).
pub fn decode(bytes: &[u8]) -> Option<PolicyRecord> {
    match bytes.get(8).copied() {
        Some(EVENT_POLICY) if bytes.len() >= std::mem::size_of::<PolicyEvent>() => {
            // SAFETY: long enough, `PolicyEvent` is plain data; unaligned read.
            Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const PolicyEvent) }.into())
        }
        Some(EVENT_POLICY6) if bytes.len() >= std::mem::size_of::<PolicyEvent6>() => {
            // SAFETY: as above, `PolicyEvent6`.
            Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const PolicyEvent6) }.into())
        }
        _ => None,
    }
}

/// Is `bytes` a policy record of either family (which `decode` may still
/// refuse as too short)? Such a record is never a `DatapathEvent`.
pub fn is_policy_kind(bytes: &[u8]) -> bool {
    matches!(bytes.get(8).copied(), Some(EVENT_POLICY | EVENT_POLICY6))
}

/// What the tables say about one event.
struct Explained {
    direction: &'static str,
    verdict: PolicyVerdict,
    allowed: bool,
    client: IpAddr,
    server: IpAddr,
    client_name: String,
    server_name: String,
    /// The local pod the verdict is for.
    local: String,
    /// For an allow: the policy, or why no policy was needed.
    reason: String,
}

/// The pod at `ip` (either family), as the agent's names table has it.
fn pod_name(names: &NamesTable, ip: IpAddr) -> Option<&str> {
    names.pod(ip)
}

fn name(names: &NamesTable, ip: IpAddr) -> String {
    pod_name(names, ip).map(str::to_string).unwrap_or_else(|| ip.to_string())
}

/// `addr:port`, an IPv6 address in brackets.
fn endpoint(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

fn explain(ev: &PolicyRecord, names: &NamesTable, report: &PolicyReport) -> Explained {
    let direction = if ev.direction == Direction::Egress as u8 { Direction::Egress } else { Direction::Ingress };
    let verdict = PolicyVerdict::ALL.get(ev.verdict as usize).copied().unwrap_or(PolicyVerdict::DeniedIngress);
    let (client, server) = (ev.client, ev.server);
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
        58 => "icmpv6".into(),
        n => format!("proto {n}"),
    }
}

/// `12:15:17.123456 POLICY deny ingress x/b (10.244.1.3:41234) → x/a
/// (10.244.1.2:80) tcp: x/a is isolated by x/deny-all, no rule allows`.
pub fn render(ev: &PolicyRecord, names: &NamesTable, report: &PolicyReport, at: Timestamp) -> String {
    let e = explain(ev, names, report);
    format!(
        "{} POLICY {} {} {} ({}) → {} ({}) {}: {}",
        at.strftime("%H:%M:%S%.6f"),
        if e.allowed { "allow" } else { "deny" },
        e.direction,
        e.client_name,
        endpoint(e.client, ev.sport),
        e.server_name,
        endpoint(e.server, ev.dport),
        protocol_name(ev.protocol),
        e.reason
    )
}

pub fn to_json(ev: &PolicyRecord, names: &NamesTable, report: &PolicyReport, at: Timestamp) -> Value {
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
        "srcPod": pod_name(names, e.client),
        "srcPort": ev.sport,
        "dst": e.server.to_string(),
        "dstPod": pod_name(names, e.server),
        "dstPort": ev.dport,
        "policy": (ev.policy_ref != POLICY_REF_NONE).then(|| names.policy(ev.policy_ref)).flatten(),
        "reason": e.reason,
        "ifindex": ev.ifindex,
    })
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::policy::{
        model::{PodKey, PolicyName},
        report::{DirectionView, PodPolicyView},
    };

    fn tables() -> (NamesTable, PolicyReport) {
        let names = NamesTable::new(
            [(3, PolicyName::new("x", "allow-b"))].into(),
            [
                (Ipv4Addr::new(10, 244, 1, 2).into(), PodKey::new("x", "a")),
                (Ipv4Addr::new(10, 244, 2, 3).into(), PodKey::new("y", "b")),
                ("fd00:244:0:1::2".parse().unwrap(), PodKey::new("x", "a")),
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

    fn rec(verdict: PolicyVerdict, policy_ref: u32) -> PolicyRecord {
        ev(verdict, policy_ref).into()
    }

    fn at() -> Timestamp {
        "2026-12-06T12:15:17.123456Z".parse().unwrap()
    }

    #[test]
    fn an_allow_names_both_pods_the_port_and_the_policy_a_deny_what_isolates() {
        let (names, report) = tables();
        let allow = render(&rec(PolicyVerdict::AllowedByPeerRule, 3), &names, &report, at());
        assert_eq!(
            allow,
            "12:15:17.123456 POLICY allow ingress y/b (10.244.2.3:41234) → x/a (10.244.1.2:80) tcp: allowed by x/allow-b"
        );
        let deny = render(&rec(PolicyVerdict::DeniedIngress, POLICY_REF_NONE), &names, &report, at());
        assert_eq!(
            deny,
            "12:15:17.123456 POLICY deny ingress y/b (10.244.2.3:41234) → x/a (10.244.1.2:80) tcp: x/a is isolated by \
             x/allow-b, x/deny-all, no rule allows"
        );
        let j = to_json(&rec(PolicyVerdict::DeniedIngress, POLICY_REF_NONE), &names, &report, at());
        assert_eq!(j["action"], "deny");
        assert_eq!(j["verdict"], "policy_denied_ingress");
        assert_eq!(
            (j["srcPod"].as_str(), j["dstPod"].as_str(), j["dstPort"].as_u64()),
            (Some("y/b"), Some("x/a"), Some(80))
        );
        assert_eq!(j["policy"], Value::Null);
        let j = to_json(&rec(PolicyVerdict::AllowedByPeerRule, 3), &names, &report, at());
        assert_eq!(j["policy"], "x/allow-b");
        // An address no table knows prints as itself.
        let mut unknown = ev(PolicyVerdict::PeerUnknown, POLICY_REF_NONE);
        unknown.saddr_be = u32::from_ne_bytes([10, 244, 9, 9]);
        let line = render(&unknown.into(), &names, &report, at());
        assert!(line.contains("10.244.9.9 (10.244.9.9:41234)") && line.contains("does not know yet"), "{line}");
    }

    #[test]
    fn only_policy_records_decode() {
        let e = ev(PolicyVerdict::AllowedHost, POLICY_REF_NONE);
        // SAFETY: plain data viewed as bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts(&e as *const PolicyEvent as *const u8, std::mem::size_of::<PolicyEvent>())
        };
        assert_eq!(decode(bytes), Some(e.into()));
        let mut drop = bytes.to_vec();
        drop[8] = sluice_common::events::EVENT_DROP;
        assert_eq!(decode(&drop), None);
        assert_eq!(decode(&bytes[..20]), None);
    }

    #[test]
    fn an_ipv6_verdict_decodes_and_prints_like_an_ipv4_one() {
        let (names, report) = tables();
        let e = PolicyEvent6 {
            ts_ns: 1,
            kind: EVENT_POLICY6,
            direction: Direction::Ingress as u8,
            protocol: 6,
            verdict: PolicyVerdict::DeniedIngress as u8,
            policy_ref: POLICY_REF_NONE,
            saddr: "fd00:244:0:2::3".parse::<Ipv6Addr>().unwrap().octets(),
            daddr: "fd00:244:0:1::2".parse::<Ipv6Addr>().unwrap().octets(),
            sport_be: 41234u16.to_be(),
            dport_be: 80u16.to_be(),
            ifindex: 7,
        };
        // SAFETY: plain data viewed as bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts(&e as *const PolicyEvent6 as *const u8, std::mem::size_of::<PolicyEvent6>())
        };
        let rec = decode(bytes).expect("a PolicyEvent6 decodes");
        assert!(is_policy_kind(bytes));
        assert_eq!(decode(&bytes[..40]), None, "cut short");
        let line = render(&rec, &names, &report, at());
        // x/a by its IPv6 address (the names table holds both families);
        // the peer's IPv6 is not in the table: printed as itself.
        assert_eq!(
            line,
            "12:15:17.123456 POLICY deny ingress fd00:244:0:2::3 ([fd00:244:0:2::3]:41234) → x/a \
             ([fd00:244:0:1::2]:80) tcp: x/a is isolated by x/allow-b, x/deny-all, no rule allows"
        );
        let j = to_json(&rec, &names, &report, at());
        assert_eq!((j["src"].as_str(), j["dstPort"].as_u64()), (Some("fd00:244:0:2::3"), Some(80)));
    }
}
