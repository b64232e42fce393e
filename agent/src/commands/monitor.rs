//! `sluice-agent monitor`: where did my packet go? One line (or one JSON
//! object) per datapath event, with the time it happened: every drop with
//! its reason, and with `--type trace|all` every forwarding decision.
//! Reads the pinned maps, so it works while the agent is down. Several
//! monitors run at once, each on a slot of its own (`subscription`), and
//! each prints only what happened after it started. `decode`,
//! `Filter::matches`, `render` and `to_json` are pure. `--type policy`
//! prints NetworkPolicy's verdicts (`policy.rs`).
use std::{net::Ipv4Addr, time::Duration};

use anyhow::Result;
use jiff::Timestamp;
use serde_json::{json, Value};
use sluice_common::{
    events::{
        drop_bit, policy_bit, trace_bit, DatapathEvent, DIR_EGRESS, EVENT_DROP, EVENT_POLICY, EVENT_POLICY6,
        EVENT_TRACE,
    },
    DropReason, ForwardPath,
};
use sluice_node::datapath::{pinned_maps::ip_from_be, pins::PinDir};

mod clock;
pub mod policy;
mod subscription;

use clock::Clocks;
use subscription::{is_stale, Subscription};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EventType {
    Drop,
    Trace,
    /// NetworkPolicy verdicts on new (and re-judged) connections.
    Policy,
    All,
}

/// Which events to show.
#[derive(Clone, Debug)]
pub struct Filter {
    pub types: EventType,
    /// Only events whose source or destination is this address.
    pub ip: Option<Ipv4Addr>,
    /// Only events on this interface.
    pub ifindex: Option<u32>,
}

impl Filter {
    /// `MONITORS` bits of `slot` for these types.
    fn subscription(&self, slot: u32) -> u32 {
        match self.types {
            EventType::Drop => drop_bit(slot),
            EventType::Trace => trace_bit(slot),
            EventType::Policy => policy_bit(slot),
            EventType::All => drop_bit(slot) | trace_bit(slot) | policy_bit(slot),
        }
    }

    /// A policy event passes the filter.
    pub fn matches_policy(&self, ev: &policy::PolicyRecord) -> bool {
        let kind_ok = matches!(self.types, EventType::Policy | EventType::All);
        let ip_ok = self.ip.is_none_or(|ip| ev.client == ip || ev.server == ip);
        kind_ok && ip_ok && self.ifindex.is_none_or(|i| i == ev.ifindex)
    }

    pub fn matches(&self, ev: &DatapathEvent) -> bool {
        let kind_ok = match self.types {
            EventType::Drop => ev.kind == EVENT_DROP,
            EventType::Trace => ev.kind == EVENT_TRACE,
            EventType::Policy => false,
            EventType::All => ev.kind != EVENT_POLICY && ev.kind != EVENT_POLICY6,
        };
        let ip_ok = self.ip.is_none_or(|ip| ip_from_be(ev.src_be) == ip || ip_from_be(ev.dst_be) == ip);
        kind_ok && ip_ok && self.ifindex.is_none_or(|i| i == ev.ifindex)
    }
}

/// An event from the ring buffer's bytes (`None` if too short).
pub fn decode(bytes: &[u8]) -> Option<DatapathEvent> {
    if bytes.len() < std::mem::size_of::<DatapathEvent>() {
        return None;
    }
    // SAFETY: long enough, `DatapathEvent` is plain data; unaligned read.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const DatapathEvent) })
}

fn protocol_name(p: u8) -> String {
    match p {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        132 => "sctp".into(),
        0 => "-".into(),
        n => format!("proto {n}"),
    }
}

fn code_name(ev: &DatapathEvent) -> String {
    let name = match ev.kind {
        EVENT_DROP => DropReason::ALL.get(ev.code as usize).map(|r| r.name()),
        _ => ForwardPath::ALL.get(ev.code as usize).map(|p| p.name()),
    };
    name.map(str::to_string).unwrap_or_else(|| format!("#{}", ev.code))
}

fn endpoint(ip_be: u32, port_be: u16, protocol: u8) -> String {
    let ip = ip_from_be(ip_be);
    match protocol {
        6 | 17 | 132 => format!("{ip}:{}", u16::from_be(port_be)),
        _ => ip.to_string(),
    }
}

/// `12:15:17.123456 DROP source_spoofed from slc… 10.244.1.9:1234 →
/// 10.244.2.2:80 tcp len 60` (`at`: the event's wall time, shown in UTC).
pub fn render(ev: &DatapathEvent, ifname: &str, at: Timestamp) -> String {
    let kind = if ev.kind == EVENT_DROP { "DROP" } else { "TRACE" };
    let side = if ev.direction == DIR_EGRESS { "to" } else { "from" };
    format!(
        "{} {kind} {} {side} {ifname} {} → {} {} len {}",
        at.strftime("%H:%M:%S%.6f"),
        code_name(ev),
        endpoint(ev.src_be, ev.src_port_be, ev.protocol),
        endpoint(ev.dst_be, ev.dst_port_be, ev.protocol),
        protocol_name(ev.protocol),
        ev.len
    )
}

/// `time`: RFC 3339, UTC; `monotonicNs`: the stamp itself
/// (`CLOCK_MONOTONIC`), to order or subtract exactly.
pub fn to_json(ev: &DatapathEvent, ifname: &str, at: Timestamp) -> Value {
    let hex: String =
        ev.header[..(ev.header_len as usize).min(ev.header.len())].iter().map(|b| format!("{b:02x}")).collect();
    json!({
        "time": at.to_string(),
        "monotonicNs": ev.ts_ns,
        "type": if ev.kind == EVENT_DROP { "drop" } else { "trace" },
        (if ev.kind == EVENT_DROP { "reason" } else { "path" }): code_name(ev),
        "direction": if ev.direction == DIR_EGRESS { "egress" } else { "ingress" },
        "interface": ifname,
        "ifindex": ev.ifindex,
        "protocol": protocol_name(ev.protocol),
        "src": ip_from_be(ev.src_be).to_string(),
        "dst": ip_from_be(ev.dst_be).to_string(),
        "srcPort": u16::from_be(ev.src_port_be),
        "dstPort": u16::from_be(ev.dst_port_be),
        "len": ev.len,
        "header": hex,
    })
}

fn ifname(index: u32) -> String {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: the buffer holds IF_NAMESIZE bytes, as the call requires.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        return format!("if#{index}");
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned()
}

pub struct Options {
    pub filter: Filter,
    pub json: bool,
    /// Stop after this many events.
    pub count: Option<usize>,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Where the agent writes the names policy events are shown with.
    pub data_dir: std::path::PathBuf,
}

/// The agent's name tables, re-read when their files change.
#[derive(Default)]
struct PolicyTables {
    names: crate::policy::names::NamesTable,
    report: crate::policy::report::PolicyReport,
    seen: (Option<std::time::SystemTime>, Option<std::time::SystemTime>),
}

impl PolicyTables {
    fn refresh(&mut self, data_dir: &std::path::Path) {
        use crate::policy::{names::NamesTable, report::PolicyReport};
        let mtime = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let (names_path, report_path) = (NamesTable::path(data_dir), PolicyReport::path(data_dir));
        let now = (mtime(&names_path), mtime(&report_path));
        if now == self.seen {
            return;
        }
        if let Ok(n) = NamesTable::read(&names_path) {
            self.names = n;
        }
        if let Ok(r) = PolicyReport::read(&report_path) {
            self.report = r;
        }
        self.seen = now;
    }
}

/// Print events until stopped (Ctrl-C, SIGTERM, `count`, `duration`).
pub async fn run(pins: &PinDir, opts: &Options) -> Result<usize> {
    let mut sub = Subscription::claim(pins, |slot| opts.filter.subscription(slot))?;
    // The readiness line (on stderr, apart from the events): from here on
    // every event is shown.
    eprintln!("monitor: listening (slot {})", sub.slot);
    let deadline = opts.duration.map(|d| tokio::time::Instant::now() + d);
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut shown = 0usize;
    let mut tables = PolicyTables::default();
    loop {
        // Read both clocks once per batch: the offset follows NTP's steps.
        let clocks = Clocks::now();
        let mut tables_fresh = false;
        while let Some(item) = sub.ring.next() {
            if let Some(ev) = policy::decode(&item) {
                if is_stale(ev.ts_ns, sub.since_ns) || !opts.filter.matches_policy(&ev) {
                    continue;
                }
                if !tables_fresh {
                    tables.refresh(&opts.data_dir);
                    tables_fresh = true;
                }
                let at = clocks.wall(ev.ts_ns);
                if opts.json {
                    println!("{}", policy::to_json(&ev, &tables.names, &tables.report, at));
                } else {
                    println!("{}", policy::render(&ev, &tables.names, &tables.report, at));
                }
                shown += 1;
                if opts.count.is_some_and(|c| shown >= c) {
                    return Ok(shown);
                }
                continue;
            }
            // A policy record too short for its kind is no DatapathEvent.
            if policy::is_policy_kind(&item) {
                continue;
            }
            let Some(ev) = decode(&item) else { continue };
            if is_stale(ev.ts_ns, sub.since_ns) || !opts.filter.matches(&ev) {
                continue;
            }
            let (name, at) = (ifname(ev.ifindex), clocks.wall(ev.ts_ns));
            if opts.json {
                println!("{}", to_json(&ev, &name, at));
            } else {
                println!("{}", render(&ev, &name, at));
            }
            shown += 1;
            if opts.count.is_some_and(|c| shown >= c) {
                return Ok(shown);
            }
        }
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            return Ok(shown);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
            _ = tokio::signal::ctrl_c() => return Ok(shown),
            _ = sigterm.recv() => return Ok(shown),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: u8, code: u32) -> DatapathEvent {
        DatapathEvent {
            ts_ns: 5_000_000_000,
            kind,
            direction: 0,
            protocol: 6,
            _pad: 0,
            code,
            ifindex: 7,
            len: 60,
            src_be: u32::from_ne_bytes([10, 244, 1, 9]),
            dst_be: u32::from_ne_bytes([10, 244, 2, 2]),
            src_port_be: 1234u16.to_be(),
            dst_port_be: 80u16.to_be(),
            header_len: 2,
            header: [0xab; 48],
        }
    }

    fn at() -> Timestamp {
        "2026-12-06T12:15:17.123456789Z".parse().unwrap()
    }

    #[test]
    fn renders_a_drop_as_one_line() {
        let line = render(&ev(EVENT_DROP, DropReason::SourceSpoofed as u32), "slc1234", at());
        assert_eq!(line, "12:15:17.123456 DROP source_spoofed from slc1234 10.244.1.9:1234 → 10.244.2.2:80 tcp len 60");
        let t = render(&ev(EVENT_TRACE, ForwardPath::PodToNode as u32), "slc1234", at());
        assert!(t.starts_with("12:15:17.123456 TRACE pod_to_node from slc1234"), "{t}");
        let icmp = DatapathEvent { protocol: 1, ..ev(EVENT_DROP, DropReason::TtlExpired as u32) };
        assert_eq!(
            render(&icmp, "eth0", at()),
            "12:15:17.123456 DROP ttl_expired from eth0 10.244.1.9 → 10.244.2.2 icmp len 60"
        );
        let unknown = ev(EVENT_DROP, 99);
        assert!(render(&unknown, "x", at()).contains("#99"));
    }

    #[test]
    fn json_has_the_time_the_reason_and_the_tuple() {
        let j = to_json(&ev(EVENT_DROP, DropReason::TtlExpired as u32), "eth0", at());
        assert_eq!(
            (j["time"].as_str(), j["monotonicNs"].as_u64()),
            (Some("2026-12-06T12:15:17.123456789Z"), Some(5_000_000_000))
        );
        assert_eq!(j["reason"], "ttl_expired");
        assert_eq!((j["src"].as_str(), j["dstPort"].as_u64()), (Some("10.244.1.9"), Some(80)));
        assert_eq!(j["header"], "abab");
    }

    #[test]
    fn each_type_subscribes_its_slot_to_its_kinds() {
        let f = |types| Filter { types, ip: None, ifindex: None };
        assert_eq!(f(EventType::Drop).subscription(2), drop_bit(2));
        assert_eq!(f(EventType::Trace).subscription(2), trace_bit(2));
        assert_eq!(f(EventType::Policy).subscription(2), policy_bit(2));
        assert_eq!(f(EventType::All).subscription(3), drop_bit(3) | trace_bit(3) | policy_bit(3));
    }

    #[test]
    fn filters() {
        let drop = ev(EVENT_DROP, 1);
        let trace = ev(EVENT_TRACE, 1);
        let f = |types, ip: Option<&str>| Filter { types, ip: ip.map(|s| s.parse().unwrap()), ifindex: None };
        assert!(f(EventType::Drop, None).matches(&drop) && !f(EventType::Drop, None).matches(&trace));
        assert!(f(EventType::Trace, None).matches(&trace) && !f(EventType::Trace, None).matches(&drop));
        assert!(f(EventType::All, None).matches(&drop) && f(EventType::All, None).matches(&trace));
        assert!(f(EventType::All, Some("10.244.2.2")).matches(&drop));
        assert!(!f(EventType::All, Some("10.244.3.3")).matches(&drop));
        assert!(!Filter { ifindex: Some(8), ..f(EventType::All, None) }.matches(&drop));
    }

    #[test]
    fn decode_round_trips() {
        let e = ev(EVENT_DROP, 3);
        // SAFETY: viewing plain data as bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts(&e as *const DatapathEvent as *const u8, std::mem::size_of::<DatapathEvent>())
        };
        assert_eq!(decode(bytes), Some(e));
        assert_eq!(decode(&bytes[..10]), None);
    }
}
