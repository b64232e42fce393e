//! Port ownership's syscalls (`crate::port_ownership` decides): the
//! node's `net.ipv4.ip_local_reserved_ports` and the record of what sluice
//! added to it, and a periodic scan of the node's sockets for host
//! processes on ports sluice answers for.
//!
//! The sysctl and `/proc/net/*` are per network namespace: the agent's,
//! which is the node's. The record lives in the data directory
//! (`RECORD_FILE`), apart from the state file (which each start removes):
//! `cleanup` reads it to give back exactly what sluice added.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result};
use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge};
use serde::{Deserialize, Serialize};
use sluice_node::clock::now_unix;
use tracing::{info, warn};

use crate::port_ownership::{
    listeners::{self, Collision, HostPortClaim, SocketProtocol},
    ranges::{self, PortSet},
};

pub const SYSCTL: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";
/// What sluice added to the sysctl (JSON, in the data directory).
pub const RECORD_FILE: &str = "reserved-ports.json";
/// How often host sockets are looked for.
pub const SCAN_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
struct Record {
    /// Ports sluice added (not reserved by anyone before it).
    added: PortSet,
}

fn record_path(data_dir: &Path) -> PathBuf {
    data_dir.join(RECORD_FILE)
}

/// The record; none yet is an empty one. A record that cannot be read is
/// an error, never taken as empty: sluice would forget what it added.
fn read_record(data_dir: &Path) -> Result<Record> {
    let path = record_path(data_dir);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| format!("parse {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Record::default()),
        Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
    }
}

fn write_record(data_dir: &Path, record: &Record) -> Result<()> {
    std::fs::create_dir_all(data_dir).with_context(|| format!("create {}", data_dir.display()))?;
    let path = record_path(data_dir);
    let tmp = data_dir.join(format!(".{RECORD_FILE}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec_pretty(record)?).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("rename into {}", path.display()))
}

fn read_sysctl() -> Result<PortSet> {
    let text = std::fs::read_to_string(SYSCTL).with_context(|| format!("read {SYSCTL}"))?;
    PortSet::parse_sysctl(&text).with_context(|| format!("parse {SYSCTL}"))
}

fn write_sysctl(value: &PortSet) -> Result<()> {
    // "" clears it; the kernel takes the same syntax it prints.
    std::fs::write(SYSCTL, format!("{value}\n")).with_context(|| {
        format!(
            "write {SYSCTL} (read-only in an unprivileged container: `sluice-agent node-init reserve-ports` does it)"
        )
    })
}

/// Reserve `wanted` (merged with what is there, see `ranges::reserve`).
/// The record grows before the sysctl does, so a crash in between never
/// leaves a port reserved that `cleanup` would not give back. Returns
/// what sluice has added, all told.
pub fn reserve(data_dir: &Path, wanted: &PortSet) -> Result<PortSet> {
    let recorded = read_record(data_dir)?.added;
    let current = read_sysctl()?;
    let plan = ranges::reserve(&current, wanted, &recorded);
    if let Some(value) = &plan.write {
        write_record(data_dir, &Record { added: recorded.union(&plan.added) })?;
        write_sysctl(value)?;
        info!(reserved = %value, added = %plan.added, "ip_local_reserved_ports updated");
    }
    if plan.added != recorded {
        write_record(data_dir, &Record { added: plan.added.clone() })?;
    }
    Ok(plan.added)
}

/// Give back what sluice added (`cleanup`, or the mode turned off); the
/// record goes once the sysctl no longer holds sluice's ports. Returns
/// the ports released.
pub fn release(data_dir: &Path) -> Result<PortSet> {
    let recorded = read_record(data_dir)?.added;
    if !recorded.is_empty() {
        if let Some(value) = ranges::release(&read_sysctl()?, &recorded) {
            write_sysctl(&value)?;
            info!(released = %recorded, left = %value, "ip_local_reserved_ports: sluice's ports given back");
        }
    }
    match std::fs::remove_file(record_path(data_dir)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("remove {}", record_path(data_dir).display()))
        }
        _ => Ok(recorded),
    }
}

/// The node's listening TCP and unconnected UDP sockets (this network
/// namespace's), and the inodes of the agent's own sockets.
fn host_sockets() -> Result<(Vec<listeners::HostSocket>, BTreeSet<u64>)> {
    let mut sockets = Vec::new();
    for (file, protocol) in [
        ("tcp", SocketProtocol::Tcp),
        ("tcp6", SocketProtocol::Tcp),
        ("udp", SocketProtocol::Udp),
        ("udp6", SocketProtocol::Udp),
    ] {
        let path = format!("/proc/self/net/{file}");
        match std::fs::read_to_string(&path) {
            Ok(text) => sockets.extend(listeners::parse_proc_net(&text, protocol)),
            // No IPv6 in this kernel: no `*6` files.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && file.ends_with('6') => {}
            Err(e) => return Err(e).with_context(|| format!("read {path}")),
        }
    }
    let links: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .context("read /proc/self/fd")?
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|l| l.to_string_lossy().into_owned())
        .collect();
    Ok((sockets, listeners::socket_inodes(links.iter().map(String::as_str))))
}

/// What `status` shows about port ownership.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PortOwnershipState {
    /// `--node-port-range`.
    pub node_port_range: String,
    /// Every port sluice owns here, as reserved (the sysctl's syntax).
    pub owned: String,
    /// Of those, the ones sluice added (given back by `cleanup`).
    pub added: String,
    /// Why the reservation did not happen, while it has not.
    pub reserve_error: Option<String>,
    /// Host sockets on ports sluice answers for, at the last scan.
    pub collisions: Vec<Collision>,
    pub scan_error: Option<String>,
    pub last_scan_unix: u64,
}

pub type SharedState = Arc<Mutex<PortOwnershipState>>;

/// This node's hostPorts now (the Services loop knows them).
pub type HostPorts = Arc<dyn Fn() -> Vec<HostPortClaim> + Send + Sync>;

/// The metrics port ownership keeps.
#[derive(Clone, Debug, Default)]
pub struct PortMetrics {
    /// Host sockets on owned ports now, by protocol and owner.
    pub collisions: Family<[(&'static str, &'static str); 2], Gauge>,
    /// Such sockets seen appear (each counted once while it stays).
    pub collisions_detected: Counter,
}

/// Reserve `owned` now (failure is reported, not fatal: the datapath
/// works without, host processes may only pick an owned port as an
/// ephemeral one), then scan every `SCAN_INTERVAL` in the background,
/// reserving again each time (cheap when nothing changed; heals a sysctl
/// someone rewrote).
pub fn start(
    data_dir: PathBuf,
    node_port_range: ranges::PortRange,
    owned: PortSet,
    host_ports: HostPorts,
    metrics: PortMetrics,
) -> SharedState {
    let state = SharedState::new(Mutex::new(PortOwnershipState {
        node_port_range: node_port_range.to_string(),
        owned: owned.to_string(),
        ..Default::default()
    }));
    let st = state.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SCAN_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let node_ports = PortSet::new([node_port_range]);
        loop {
            tick.tick().await;
            let (data_dir, owned, node_ports, claims) =
                (data_dir.clone(), owned.clone(), node_ports.clone(), host_ports());
            let pass = tokio::task::spawn_blocking(move || {
                let reserved = reserve(&data_dir, &owned);
                let scanned =
                    host_sockets().map(|(sockets, own)| listeners::collisions(&sockets, &node_ports, &claims, &own));
                (reserved, scanned)
            })
            .await;
            let Ok((reserved, scanned)) = pass else { continue };
            let mut s = st.lock().expect("port ownership state");
            match reserved {
                Ok(added) => {
                    s.added = added.to_string();
                    s.reserve_error = None;
                }
                Err(e) => {
                    let msg = format!("{e:#}");
                    if s.reserve_error.as_deref() != Some(&msg) {
                        warn!(error = %msg, ports = %s.owned, "owned ports not reserved from ephemeral use");
                    }
                    s.reserve_error = Some(msg);
                }
            }
            match scanned {
                Ok(found) => {
                    for c in found.iter().filter(|c| !s.collisions.contains(c)) {
                        warn!(
                            collision = %c,
                            "port_collision: a host socket sits on a port sluice answers for; \
                             Services' and pods' traffic to it never reaches it"
                        );
                        metrics.collisions_detected.inc();
                    }
                    metrics.collisions.clear();
                    for c in &found {
                        metrics
                            .collisions
                            .get_or_create(&[("protocol", c.socket.protocol.name()), ("owner", c.owner.label())])
                            .inc();
                    }
                    s.collisions = found;
                    s.scan_error = None;
                }
                Err(e) => s.scan_error = Some(format!("{e:#}")),
            }
            s.last_scan_unix = now_unix();
        }
    });
    state
}
