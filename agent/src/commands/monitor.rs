//! `sluice-agent monitor`: where did my packet go? One line (or one JSON
//! object) per datapath event: every drop with its reason, and with
//! `--type trace|all` every forwarding decision. Reads the pinned `EVENTS`
//! ring buffer, so it works while the agent is down; tracing is switched on
//! in `MONITOR` for as long as a monitor asks and off when it leaves.
//! `decode`, `Filter::matches` and `render` are pure.
use std::{net::Ipv4Addr, time::Duration};

use anyhow::{Context, Result};
use aya::maps::{Array, Map, MapData, RingBuf};
use serde_json::{json, Value};
use sluice_common::{
    events::{DatapathEvent, DIR_EGRESS, EVENT_DROP, EVENT_TRACE, MONITOR_TRACE},
    maps::names,
    DropReason, ForwardPath,
};
use sluice_node::datapath::{pinned_maps::ip_from_be, pins::PinDir};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EventType {
    Drop,
    Trace,
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
    pub fn matches(&self, ev: &DatapathEvent) -> bool {
        let kind_ok = match self.types {
            EventType::Drop => ev.kind == EVENT_DROP,
            EventType::Trace => ev.kind == EVENT_TRACE,
            EventType::All => true,
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

/// `DROP source_spoofed from slc… 10.244.1.9:1234 → 10.244.2.2:80 tcp len 60`.
pub fn render(ev: &DatapathEvent, ifname: &str) -> String {
    let kind = if ev.kind == EVENT_DROP { "DROP" } else { "TRACE" };
    let side = if ev.direction == DIR_EGRESS { "to" } else { "from" };
    format!(
        "{kind} {} {side} {ifname} {} → {} {} len {}",
        code_name(ev),
        endpoint(ev.src_be, ev.src_port_be, ev.protocol),
        endpoint(ev.dst_be, ev.dst_port_be, ev.protocol),
        protocol_name(ev.protocol),
        ev.len
    )
}

pub fn to_json(ev: &DatapathEvent, ifname: &str) -> Value {
    let hex: String = ev.header[..ev.header_len as usize].iter().map(|b| format!("{b:02x}")).collect();
    json!({
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

/// Switches tracing on in `MONITOR` while alive (only if asked).
struct TraceGuard(Option<Array<MapData, u32>>);

impl TraceGuard {
    fn new(pins: &PinDir, on: bool) -> Result<Self> {
        if !on {
            return Ok(Self(None));
        }
        let data = MapData::from_pin(pins.map(names::MONITOR)).context("open MONITOR (is the datapath loaded?)")?;
        let mut arr: Array<MapData, u32> = Map::from_map_data(data)?.try_into()?;
        arr.set(0, MONITOR_TRACE, 0)?;
        Ok(Self(Some(arr)))
    }
}

impl Drop for TraceGuard {
    fn drop(&mut self) {
        if let Some(arr) = &mut self.0 {
            let _ = arr.set(0, 0, 0);
        }
    }
}

pub struct Options {
    pub filter: Filter,
    pub json: bool,
    /// Stop after this many events.
    pub count: Option<usize>,
    /// Stop after this long.
    pub duration: Option<Duration>,
}

/// Print events until stopped (Ctrl-C, SIGTERM, `count`, `duration`).
pub async fn run(pins: &PinDir, opts: &Options) -> Result<usize> {
    let data = MapData::from_pin(pins.map(names::EVENTS)).with_context(|| {
        format!("open the events ring buffer {} (is the datapath loaded?)", pins.map(names::EVENTS).display())
    })?;
    let mut ring: RingBuf<MapData> = Map::from_map_data(data)?.try_into()?;
    let _trace = TraceGuard::new(pins, opts.filter.types != EventType::Drop)?;
    let deadline = opts.duration.map(|d| tokio::time::Instant::now() + d);
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut shown = 0usize;
    loop {
        while let Some(item) = ring.next() {
            let Some(ev) = decode(&item) else { continue };
            if !opts.filter.matches(&ev) {
                continue;
            }
            let name = ifname(ev.ifindex);
            if opts.json {
                println!("{}", to_json(&ev, &name));
            } else {
                println!("{}", render(&ev, &name));
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

    #[test]
    fn renders_a_drop_as_one_line() {
        let line = render(&ev(EVENT_DROP, DropReason::SourceSpoofed as u32), "slc1234");
        assert_eq!(line, "DROP source_spoofed from slc1234 10.244.1.9:1234 → 10.244.2.2:80 tcp len 60");
        let t = render(&ev(EVENT_TRACE, ForwardPath::PodToNode as u32), "slc1234");
        assert!(t.starts_with("TRACE pod_to_node from slc1234"), "{t}");
        let icmp = DatapathEvent { protocol: 1, ..ev(EVENT_DROP, DropReason::TtlExpired as u32) };
        assert_eq!(render(&icmp, "eth0"), "DROP ttl_expired from eth0 10.244.1.9 → 10.244.2.2 icmp len 60");
        let unknown = ev(EVENT_DROP, 99);
        assert!(render(&unknown, "x").contains("#99"));
    }

    #[test]
    fn json_has_the_reason_and_the_tuple() {
        let j = to_json(&ev(EVENT_DROP, DropReason::TtlExpired as u32), "eth0");
        assert_eq!(j["reason"], "ttl_expired");
        assert_eq!((j["src"].as_str(), j["dstPort"].as_u64()), (Some("10.244.1.9"), Some(80)));
        assert_eq!(j["header"], "abab");
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
