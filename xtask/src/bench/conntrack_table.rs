//! The connection tables at scale (issue 27) in `cargo xtask bench
//! --nodeport`: a one-node lab (`--kube-proxy-replacement=true`), its
//! `NAT4` and `POLICY_CT` filled through their pins with crafted entries,
//! `Plan::ct_entries` together (no one table holds 500,000: each has
//! `limits::MAX_NAT4` / `MAX_POLICY_CT` = 262,144 slots, so the entries
//! are split between the two, `fill_split`), then the agent's RSS and its
//! GC passes over them, as the agent itself times them
//! (`sluice_conntrack_gc_last_seconds{table}`):
//! - a pass over live entries (stamped now, TCP answered: hours to live),
//!   which walks every entry and removes none: the steady-state cost;
//! - a pass over the same entries made idle (stamped at boot, never
//!   answered: a minute to live), which removes every one of them.
//!
//! The agent runs with `--conntrack-gc-interval-secs` `GC_INTERVAL_SECS`
//! so the passes come soon; each fill starts just after a pass ended, so
//! the next one sees all of it (checked: its `scanned`, its `removed`).
use std::{
    net::Ipv4Addr,
    path::Path,
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use sluice_common::{
    maps::limits,
    nat::{Nat4Entry, Nat4Key, NAT4_FORWARD, NAT4_REPLY_SEEN, NAT4_SNAT},
    policy::{CtEntry, CtKey, CT_REPLY_SEEN},
};
use sluice_node::datapath::{
    nat4_maps::Nat4Table, pins::PinDir, policy_ct_gc::monotonic_now_ns, policy_maps::PolicyCt,
};
use sluice_tests::lab::{Lab, LabOptions, Node};

use super::{
    args::Plan,
    services::{rss_hwm_kib, scrape},
};

/// Seconds between the agent's GC passes in this lab.
const GC_INTERVAL_SECS: u64 = 8;
const TABLES: [&str; 2] = ["nat4", "policy_ct"];
const IPPROTO_TCP: u8 = 6;
/// SNAT ports per backend in the crafted connections (the default range).
const SNAT_PORTS: usize =
    (sluice_common::nat::DEFAULT_SNAT_PORT_MAX - sluice_common::nat::DEFAULT_SNAT_PORT_MIN) as usize + 1;
const CLIENT_PORTS: usize = 50_000;

/// `total` entries split between `NAT4` (two per connection, so even) and
/// `POLICY_CT`: half each, or as much as one holds with the rest in the
/// other; an error when both together cannot hold them. A 64th of each
/// table is left free: `POLICY_CT` is an LRU, which evicts before it is
/// quite full.
pub(super) fn fill_split(total: usize, nat4_max: usize, ct_max: usize) -> Result<(usize, usize)> {
    let (nat_room, ct_room) = ((nat4_max - nat4_max / 64) & !1, ct_max - ct_max / 64);
    let mut nat = ((total / 2) & !1).min(nat_room);
    if total - nat > ct_room {
        // Round up to whole connections.
        nat = (total - ct_room + 1) & !1;
    }
    if nat > nat_room {
        bail!("{total} entries: NAT4 and POLICY_CT hold {nat_room} + {ct_room} without evicting");
    }
    Ok((nat, total - nat))
}

/// Connection `i` from the world to `node`'s NodePort, SNATed to a backend
/// on another node: its forward and reply entries, as `from_uplink` writes
/// them (distinct for every `i` below `SNAT_PORTS` × 65,536).
pub(super) fn nat4_pair(i: usize, node: Ipv4Addr, last_seen_ns: u64, answered: bool) -> [(Nat4Key, Nat4Entry); 2] {
    let be = |ip: Ipv4Addr| u32::from(ip).to_be();
    let client = Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 0)) + (i / CLIENT_PORTS) as u32);
    let client_port = (10_000 + i % CLIENT_PORTS) as u16;
    let j = i / SNAT_PORTS;
    let backend = Ipv4Addr::new(10, 200, (j / 256) as u8, (j % 256) as u8);
    let snat_port = sluice_common::nat::DEFAULT_SNAT_PORT_MIN + (i % SNAT_PORTS) as u16;
    let flags = if answered { NAT4_REPLY_SEEN } else { 0 };
    let forward = Nat4Key {
        src_be: be(client),
        dst_be: be(node),
        src_port_be: client_port.to_be(),
        dst_port_be: 31000u16.to_be(),
        protocol: IPPROTO_TCP,
        direction: NAT4_FORWARD,
        _pad: [0; 2],
    };
    let out = Nat4Entry {
        src_be: be(node),
        dst_be: be(backend),
        src_port_be: snat_port.to_be(),
        dst_port_be: 8080u16.to_be(),
        next_hop_be: be(Ipv4Addr::new(172, 30, 0, 2)),
        flags: NAT4_SNAT | flags,
        _pad: 0,
        last_seen_ns,
    };
    let reply = forward.twin(&out);
    let back = Nat4Entry {
        src_be: forward.dst_be,
        dst_be: forward.src_be,
        src_port_be: forward.dst_port_be,
        dst_port_be: forward.src_port_be,
        next_hop_be: 0,
        flags,
        _pad: 0,
        last_seen_ns,
    };
    [(forward, out), (reply, back)]
}

/// `POLICY_CT` entry `i`: a pod-to-pod TCP connection (distinct for every
/// `i` below 2^32).
pub(super) fn ct_entry(i: usize, last_seen_ns: u64, answered: bool) -> (CtKey, CtEntry) {
    let src = u32::from(Ipv4Addr::new(10, 201, 0, 0)) + (i / 40_000) as u32;
    let key = CtKey {
        src_be: src.to_be(),
        dst_be: u32::from(Ipv4Addr::new(10, 244, 9, 9)).to_be(),
        src_port_be: ((20_000 + i % 40_000) as u16).to_be(),
        dst_port_be: 80u16.to_be(),
        protocol: IPPROTO_TCP,
        _pad: [0; 3],
    };
    let entry = CtEntry {
        epoch: 0,
        flags: if answered { CT_REPLY_SEEN } else { 0 },
        last_seen_ns,
        egress_ref: 0,
        ingress_ref: 0,
    };
    (key, entry)
}

/// `name{table="<table>"} value` in Prometheus text.
pub(super) fn gauge(text: &str, name: &str, table: &str) -> Option<f64> {
    let prefix = format!("{name}{{table=\"{table}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
}

/// What the agent says of one table's last GC pass.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Pass {
    pub(super) count: f64,
    pub(super) seconds: f64,
    pub(super) scanned: f64,
    pub(super) removed: f64,
}

pub(super) fn last_pass(text: &str, table: &str) -> Option<Pass> {
    let count_prefix = format!("sluice_conntrack_gc_seconds_count{{table=\"{table}\"}} ");
    Some(Pass {
        count: text.lines().find_map(|l| l.strip_prefix(&count_prefix)?.trim().parse().ok())?,
        seconds: gauge(text, "sluice_conntrack_gc_last_seconds", table)?,
        scanned: gauge(text, "sluice_conntrack_gc_last_scanned", table)?,
        removed: gauge(text, "sluice_conntrack_gc_last_removed", table)?,
    })
}

/// Wait until every table has had a pass after `after` (their counts), or
/// at least one pass when `after` is None; the last passes.
fn next_passes(node: &Node, after: Option<&[Pass]>, limit: Duration) -> Result<Vec<Pass>> {
    let start = Instant::now();
    loop {
        let text = scrape(node).unwrap_or_default();
        let passes: Vec<Option<Pass>> = TABLES.iter().map(|t| last_pass(&text, t)).collect();
        let done = passes.iter().enumerate().all(|(i, p)| match (p, after) {
            (Some(p), Some(a)) => p.count > a[i].count,
            (Some(_), None) => true,
            (None, _) => false,
        });
        if done {
            return Ok(passes.into_iter().flatten().collect());
        }
        if start.elapsed() > limit {
            bail!("{}: no GC pass of {TABLES:?} within {limit:?} (last scrape: {passes:?})", node.name);
        }
        sleep(Duration::from_millis(50));
    }
}

/// Write the crafted entries (`nat` NAT4 entries, `ct` POLICY_CT entries).
fn fill(pins: &PinDir, node_ip: Ipv4Addr, nat: usize, ct: usize, live: bool) -> Result<Duration> {
    let start = Instant::now();
    let stamp = if live { monotonic_now_ns()? } else { 0 };
    let mut table = Nat4Table::open(pins)?;
    for i in 0..nat / 2 {
        for (k, v) in nat4_pair(i, node_ip, stamp, live) {
            table.insert(k, v)?;
        }
    }
    let mut policy = PolicyCt::open(pins)?;
    for i in 0..ct {
        let (k, v) = ct_entry(i, stamp, live);
        policy.insert(k, v)?;
    }
    Ok(start.elapsed())
}

/// Just after a pass, write the entries (`live` or idle) and wait for
/// the next pass of each table; its figures if it saw all of them (walked
/// every live entry and removed none, or removed every idle one), else
/// (a pass began during the fill) again, at most three times. Also how
/// long the fill took and the agent's RSS right after it.
fn fill_and_pass(
    node: &Node,
    pins: &PinDir,
    after: &[Pass],
    (nat, ct): (usize, usize),
    live: bool,
    limit: Duration,
) -> Result<(Vec<Pass>, Duration, u64)> {
    let pid = node.agent_pid.context("agent pid")?;
    let node_ip: Ipv4Addr = node.ip.parse()?;
    let mut last = next_passes(node, Some(after), limit)?;
    for attempt in 1..=3 {
        let took = fill(pins, node_ip, nat, ct, live)?;
        let (rss, _) = rss_hwm_kib(pid);
        let passes = next_passes(node, Some(&last), limit)?;
        let whole = |p: &Pass, want: usize| {
            if live {
                p.scanned == want as f64 && p.removed == 0.0
            } else {
                p.removed == want as f64
            }
        };
        if whole(&passes[0], nat) && whole(&passes[1], ct) {
            return Ok((passes, took, rss));
        }
        eprintln!("bench: attempt {attempt}: a GC pass overlapped the fill ({took:?}): {passes:?}");
        last = next_passes(node, Some(&passes), limit)?;
    }
    bail!("{}: no GC pass saw the whole fill in three attempts", node.name)
}

fn pass_json(p: &Pass) -> Value {
    json!({"seconds": p.seconds, "scanned": p.scanned, "removed": p.removed})
}

/// The connection tables with `plan.ct_entries` entries (see the module doc).
pub fn run(bins: &Path, plan: &Plan) -> Result<Value> {
    let (nat, ct) = fill_split(plan.ct_entries, limits::MAX_NAT4 as usize, limits::MAX_POLICY_CT as usize)?;
    let mut opts = LabOptions::new(1, 0, bins.to_path_buf());
    opts.kubernetes = true;
    opts.kube_proxy_replacement = true;
    opts.extra_agent_args = vec![format!("--conntrack-gc-interval-secs={GC_INTERVAL_SECS}")];
    let lab = Lab::up(&opts)?;
    let node = lab.state.nodes[0].clone();
    let pid = node.agent_pid.context("agent pid")?;
    let pins = PinDir::new(&node.pin_dir);
    let limit = Duration::from_secs(GC_INTERVAL_SECS * 3 + 120);

    let (idle, _) = rss_hwm_kib(pid);
    let mut last = next_passes(&node, None, limit)?;
    eprintln!("bench: {nat} NAT4 and {ct} POLICY_CT entries, live");
    let (live, fill_live, rss_filled) = fill_and_pass(&node, &pins, &last, (nat, ct), true, limit)?;
    last = live.clone();
    let (rss_after_live, _) = rss_hwm_kib(pid);
    eprintln!("bench: the same entries idle");
    let (expired, fill_idle, _) = fill_and_pass(&node, &pins, &last, (nat, ct), false, limit)?;
    let (rss_end, hwm) = rss_hwm_kib(pid);
    let mib = |kib: u64| kib as f64 / 1024.0;
    Ok(json!({
        "entries": nat + ct,
        "nat4_entries": nat,
        "nat4_connections": nat / 2,
        "policy_ct_entries": ct,
        "capacity": {"nat4": limits::MAX_NAT4, "policy_ct": limits::MAX_POLICY_CT},
        "gc_interval_secs": GC_INTERVAL_SECS,
        "fill_live_secs": fill_live.as_secs_f64(),
        "fill_idle_secs": fill_idle.as_secs_f64(),
        "agent_rss_idle_mib": mib(idle),
        "agent_rss_filled_mib": mib(rss_filled),
        "agent_rss_after_live_pass_mib": mib(rss_after_live),
        "agent_rss_end_mib": mib(rss_end),
        "agent_rss_peak_mib": mib(hwm),
        "live_pass": {"nat4": pass_json(&live[0]), "policy_ct": pass_json(&live[1])},
        "expiring_pass": {"nat4": pass_json(&expired[0]), "policy_ct": pass_json(&expired[1])},
    }))
}

pub(super) fn render(c: &Value) -> String {
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let pass = |p: &Value| format!("{:.2} s ({} walked, {} removed)", f(&p["seconds"]), p["scanned"], p["removed"]);
    format!(
        "connection tables: {} entries ({} NAT4 = {} connections, {} POLICY_CT; each table holds {}):\n  \
         agent RSS idle {:.1} MiB, filled {:.1} MiB, after a pass {:.1} MiB, peak {:.1} MiB\n  \
         GC pass over live entries: NAT4 {}, POLICY_CT {}\n  \
         GC pass over idle entries: NAT4 {}, POLICY_CT {}\n",
        c["entries"],
        c["nat4_entries"],
        c["nat4_connections"],
        c["policy_ct_entries"],
        c["capacity"]["nat4"],
        f(&c["agent_rss_idle_mib"]),
        f(&c["agent_rss_filled_mib"]),
        f(&c["agent_rss_after_live_pass_mib"]),
        f(&c["agent_rss_peak_mib"]),
        pass(&c["live_pass"]["nat4"]),
        pass(&c["live_pass"]["policy_ct"]),
        pass(&c["expiring_pass"]["nat4"]),
        pass(&c["expiring_pass"]["policy_ct"]),
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn half_a_million_entries_split_between_the_two_tables() {
        assert_eq!(fill_split(500_000, 262_144, 262_144).unwrap(), (250_000, 250_000));
        // One small table: the other takes the rest.
        let (nat, ct) = fill_split(300_000, 65_536, 262_144).unwrap();
        assert_eq!((nat + ct, nat % 2), (300_000, 0));
        assert!(nat <= 65_536 && ct <= 262_144 - 262_144 / 64);
        assert_eq!(fill_split(11, 1_000, 1_000).unwrap(), (4, 7));
        assert!(fill_split(600_000, 262_144, 262_144).is_err(), "more than both hold");
    }

    #[test]
    fn crafted_connections_are_distinct_and_each_half_finds_its_twin() {
        let node = Ipv4Addr::new(172, 30, 0, 1);
        let mut keys = BTreeSet::new();
        for i in (0..125_000).chain([400_000, 1_000_000]) {
            let [(fk, fe), (rk, re)] = nat4_pair(i, node, 7, true);
            assert_eq!(fk.twin(&fe), rk, "{i}: the GC finds the reply half from the forward one");
            assert_eq!(rk.twin(&re), fk, "{i}: and back");
            assert!(keys.insert(fk) && keys.insert(rk), "{i}: a key written twice");
        }
        let ct: BTreeSet<(u32, u32, u16)> = (0..250_000)
            .map(|i| {
                let (k, _) = ct_entry(i, 0, true);
                (k.src_be, k.dst_be, k.src_port_be)
            })
            .collect();
        assert_eq!(ct.len(), 250_000);
    }

    #[test]
    fn live_entries_outlast_the_gc_and_idle_ones_do_not() {
        use sluice_node::datapath::{nat4_gc, policy_ct_gc};
        let now = 100_000 * 1_000_000_000u64;
        let t = Default::default();
        let [(k, e), (_, twin)] = nat4_pair(3, Ipv4Addr::new(172, 30, 0, 1), now, true);
        assert!(!nat4_gc::expired(&k, &e, Some(&twin), now, &t));
        let [(k, e), (_, twin)] = nat4_pair(3, Ipv4Addr::new(172, 30, 0, 1), 0, false);
        assert!(nat4_gc::expired(&k, &e, Some(&twin), now, &t));
        let (k, e) = ct_entry(3, now, true);
        assert!(!policy_ct_gc::expired(k.protocol, &e, now, &t));
        let (k, e) = ct_entry(3, 0, false);
        assert!(policy_ct_gc::expired(k.protocol, &e, now, &t));
    }

    #[test]
    fn the_last_pass_is_read_from_the_agents_metrics() {
        let text = "# TYPE sluice_conntrack_gc_seconds histogram\n\
            sluice_conntrack_gc_seconds_sum{table=\"nat4\"} 3.5\n\
            sluice_conntrack_gc_seconds_count{table=\"nat4\"} 4\n\
            sluice_conntrack_gc_last_seconds{table=\"nat4\"} 1.25\n\
            sluice_conntrack_gc_last_scanned{table=\"nat4\"} 250000\n\
            sluice_conntrack_gc_last_removed{table=\"nat4\"} 0\n\
            sluice_conntrack_gc_last_scanned{table=\"policy_ct\"} 9\n";
        assert_eq!(last_pass(text, "nat4"), Some(Pass { count: 4.0, seconds: 1.25, scanned: 250_000.0, removed: 0.0 }));
        assert_eq!(last_pass(text, "policy_ct"), None, "no pass recorded yet");
    }
}
