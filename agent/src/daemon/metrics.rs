//! Prometheus metrics on `--metrics-addr` (`GET /metrics`, text format).
//!
//! Datapath figures are read from the pinned maps at each scrape (the maps
//! are the truth; nothing is copied or can drift): drops (packets and
//! bytes) by reason and direction,
//! forwarded packets by path, entries and capacity per map. The agent's own
//! figures are kept here: reconcile duration, membership problems,
//! Kubernetes watch events and relists. Names follow Prometheus
//! conventions: `sluice_` prefix, base units, `_total` counters.
//!
//! The endpoint stays off the agent's critical path: the agent runs one
//! thread, and membership and Services share it. So a scrape's work (map
//! reads, the CNI stats file) runs on a blocking thread, one at a time,
//! and scrapes that queue behind a rendering share the next one; the
//! masquerade counter comes from the netfilter worker's last check, never
//! from an `nft` run of its own. Connections are limited
//! (`MAX_CONNECTIONS`), a request's headers must arrive within
//! `HEADER_TIMEOUT` and a connection lives at most `CONNECTION_LIFETIME`,
//! so stalled or slow clients cost a socket each for a bounded time.
use std::{
    net::SocketAddr,
    sync::{atomic::AtomicU64, Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use http_body_util::Full;
use hyper::{body::Bytes, service::service_fn, Request, Response};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
        histogram::{exponential_buckets, Histogram},
        MetricType,
    },
    registry::Registry,
};
use sluice_node::{
    cni_stats,
    datapath::{
        map_fill::{self, FillKind, MapFill},
        nat4_maps,
        pinned_maps::{self, DropRow},
        pins::PinDir,
        policy_maps::{PolicyStats, VerdictCount},
    },
};
use tracing::{info, warn};

use crate::{daemon::netfilter_worker::SharedCounter, membership::kubernetes::KubeState};

/// Connections served at once; more are closed as soon as accepted.
pub const MAX_CONNECTIONS: usize = 32;
/// A request's headers must be in within this time (hyper's timer).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// No connection, however busy, is kept longer (a client reading its
/// answer slowly holds it no more than this).
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// A metric family by one label (`[(name, value)]`).
type ByLabel<M, C = fn() -> M> = Family<[(&'static str, &'static str); 1], M, C>;

/// What the agent records as it runs.
#[derive(Debug, Clone)]
pub struct AgentMetrics {
    pub reconcile_seconds: Histogram,
    pub membership_problems: Gauge,
    /// The same by kind (`Problem::kind`): a kind gone from the list reads 0.
    pub membership_problems_by_kind: Family<[(&'static str, &'static str); 1], Gauge>,
    /// Kernel routes the last pass could not apply.
    pub kernel_route_failures: Gauge,
    /// Service or EndpointSlice watch event → socket LB maps updated.
    pub service_update_seconds: Histogram,
    /// Connected UDP sockets destroyed because their backend left the
    /// Service (`daemon::udp_sockets`).
    pub service_udp_sockets_destroyed: Counter,
    /// Pod, Namespace or NetworkPolicy watch event → policy maps updated.
    pub policy_update_seconds: Histogram,
    /// Passes that met a full policy map, by map (each failed closed).
    pub policy_map_full: Family<[(&'static str, &'static str); 1], Counter>,
    /// Per watch (`nodes`, `services`), its last outage: from the first
    /// error to synced again, and from the API server's return (at most)
    /// to synced again (`kube_watch::Recovery`).
    pub kubernetes_outage_seconds: Family<[(&'static str, &'static str); 1], Gauge<f64, AtomicU64>>,
    pub kubernetes_synced_after_return_seconds: Family<[(&'static str, &'static str); 1], Gauge<f64, AtomicU64>>,
    /// Host sockets on ports sluice owns (`daemon::port_ownership`).
    pub ports: crate::daemon::port_ownership::PortMetrics,
    /// Connection-table GC passes by table (`nat4`, `policy_ct`): each
    /// pass's time, and what the last one walked and removed.
    pub conntrack_gc_seconds: ByLabel<Histogram>,
    pub conntrack_gc_last_seconds: ByLabel<Gauge<f64, AtomicU64>>,
    pub conntrack_gc_last_scanned: ByLabel<Gauge>,
    pub conntrack_gc_last_removed: ByLabel<Gauge>,
    kube: Arc<Mutex<Option<KubeState>>>,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self {
            reconcile_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            membership_problems: Gauge::default(),
            membership_problems_by_kind: Family::default(),
            kernel_route_failures: Gauge::default(),
            service_update_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            service_udp_sockets_destroyed: Counter::default(),
            policy_update_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            policy_map_full: Family::default(),
            kubernetes_outage_seconds: Family::default(),
            kubernetes_synced_after_return_seconds: Family::default(),
            ports: Default::default(),
            conntrack_gc_seconds: Family::new_with_constructor(gc_histogram),
            conntrack_gc_last_seconds: Family::default(),
            conntrack_gc_last_scanned: Family::default(),
            conntrack_gc_last_removed: Family::default(),
            kube: Arc::default(),
        }
    }
}

/// 1 ms to 33 s: a pass walks the table with syscalls per entry (about
/// a second per 100,000 entries).
fn gc_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

impl AgentMetrics {
    /// One GC pass over `table` (`nat4`, `policy_ct`): how long it took,
    /// what it walked and removed.
    pub fn record_gc_pass(&self, table: &'static str, took: Duration, scanned: u64, removed: u64) {
        self.conntrack_gc_seconds.get_or_create(&[("table", table)]).observe(took.as_secs_f64());
        self.conntrack_gc_last_seconds.get_or_create(&[("table", table)]).set(took.as_secs_f64());
        self.conntrack_gc_last_scanned.get_or_create(&[("table", table)]).set(scanned as i64);
        self.conntrack_gc_last_removed.get_or_create(&[("table", table)]).set(removed as i64);
    }

    /// The last pass's problems and its kernel routes not applied.
    pub fn set_problems(&self, problems: &[crate::membership::Problem], kernel_route_failures: usize) {
        self.membership_problems.set(problems.len() as i64);
        self.membership_problems_by_kind.clear();
        for p in problems {
            self.membership_problems_by_kind.get_or_create(&[("kind", p.kind())]).inc();
        }
        self.kernel_route_failures.set(kernel_route_failures as i64);
    }

    /// Watch `watch`'s last recovery, if it had one.
    pub fn set_recovery(&self, watch: &'static str, recovery: Option<&crate::kube_watch::Recovery>) {
        let Some(r) = recovery else { return };
        self.kubernetes_outage_seconds.get_or_create(&[("watch", watch)]).set(r.outage_ms as f64 / 1000.0);
        self.kubernetes_synced_after_return_seconds
            .get_or_create(&[("watch", watch)])
            .set(r.synced_after_return_ms as f64 / 1000.0);
    }

    pub fn set_kubernetes(&self, state: Option<KubeState>) {
        *self.kube.lock().expect("metrics lock") = state;
    }
}

/// Reads the pinned maps and the CNI plugin's stats at every scrape.
#[derive(Debug)]
struct DatapathCollector {
    pins: PinDir,
    data_dir: std::path::PathBuf,
    kube: Arc<Mutex<Option<KubeState>>>,
    masquerade: SharedCounter,
}

/// The CNI plugin's calls (`sluice_node::cni_stats`): counts by verb and
/// result code, and a duration histogram per verb.
fn encode_cni(encoder: &mut DescriptorEncoder, stats: &cni_stats::Stats) -> std::fmt::Result {
    let rows = stats.verbs.iter().flat_map(|(verb, v)| {
        v.codes
            .iter()
            .map(move |(code, n)| (vec![("verb", verb.clone()), ("code", code.to_string())], ConstCounter::new(*n)))
    });
    family(
        encoder,
        "sluice_cni_calls",
        "CNI plugin calls by verb and result code (0: success).",
        MetricType::Counter,
        rows,
    )?;
    let mut m = encoder.encode_descriptor(
        "sluice_cni_duration_seconds",
        "How long CNI plugin calls took, by verb.",
        None,
        MetricType::Histogram,
    )?;
    for (verb, v) in &stats.verbs {
        let buckets = per_bucket(&cni_stats::BUCKETS, &v.buckets, v.count);
        let labels = vec![("verb".to_string(), verb.clone())];
        m.encode_family(&labels)?.encode_histogram::<Vec<(String, String)>>(v.sum_seconds, v.count, &buckets, None)?;
    }
    let mut m = encoder.encode_descriptor(
        "sluice_cni_step_duration_seconds",
        "How long each step of the CNI plugin's calls took (ipam, veth, attach-from_pod, ...), by verb.",
        None,
        MetricType::Histogram,
    )?;
    for (verb, v) in &stats.verbs {
        for (step, h) in &v.steps {
            let buckets = per_bucket(&cni_stats::STEP_BUCKETS, &h.buckets, h.count);
            let labels = vec![("verb".to_string(), verb.clone()), ("step".to_string(), step.clone())];
            m.encode_family(&labels)?.encode_histogram::<Vec<(String, String)>>(
                h.sum_seconds,
                h.count,
                &buckets,
                None,
            )?;
        }
    }
    Ok(())
}

/// Drops by reason and by the direction of the program that dropped them
/// (`sluice_common::HookDirection`: the side of its device its TC hook is on),
/// packets and bytes.
fn encode_drops(encoder: &mut DescriptorEncoder, rows: &[DropRow]) -> std::fmt::Result {
    let labels =
        |r: &DropRow| vec![("reason", r.reason.name().to_string()), ("direction", r.direction.name().to_string())];
    family(
        encoder,
        "sluice_drops",
        "Packets the datapath dropped, by reason and direction (the dropping program's TC hook).",
        MetricType::Counter,
        rows.iter().map(|r| (labels(r), ConstCounter::new(r.packets))),
    )?;
    family(
        encoder,
        "sluice_drop_bytes",
        "Bytes of the packets the datapath dropped (skb length, Ethernet header included), by reason and direction.",
        MetricType::Counter,
        rows.iter().map(|r| (labels(r), ConstCounter::new(r.bytes))),
    )
}

/// NetworkPolicy's judgements of new (and re-judged) connections, from
/// `POLICY_STATS`: by the local pod's direction, the action and the verdict
/// (`allowed_by_peer_rule`, `policy_denied_ingress`, ...).
fn encode_policy_verdicts(encoder: &mut DescriptorEncoder, rows: &[VerdictCount]) -> std::fmt::Result {
    family(
        encoder,
        "sluice_policy_verdicts",
        "NetworkPolicy verdicts on new connections (and open ones judged again after a policy change), by the local \
         pod's direction, action (allow, deny) and verdict.",
        MetricType::Counter,
        rows.iter().map(|r| {
            let action = if r.verdict.allowed() { "allow" } else { "deny" };
            (
                vec![
                    ("direction", r.direction.name().to_string()),
                    ("action", action.to_string()),
                    ("verdict", r.verdict.name().to_string()),
                ],
                ConstCounter::new(r.count),
            )
        }),
    )
}

/// The file holds cumulative counts; the encoder wants them per bucket.
fn per_bucket(bounds: &[f64], cumulative: &[u64], count: u64) -> Vec<(f64, u64)> {
    let mut buckets = Vec::new();
    let mut below = 0;
    for (bound, c) in bounds.iter().zip(cumulative) {
        buckets.push((*bound, c - below));
        below = *c;
    }
    buckets.push((f64::MAX, count - below));
    buckets
}

fn family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric_type: MetricType,
    rows: impl IntoIterator<Item = (Vec<(&'static str, String)>, M)>,
) -> std::fmt::Result {
    let mut m = encoder.encode_descriptor(name, help, None, metric_type)?;
    for (labels, value) in rows {
        let labels: Vec<(String, String)> = labels.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        value.encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for DatapathCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let pins = &self.pins;
        if let Ok(drops) = pinned_maps::drop_stats(pins) {
            encode_drops(&mut encoder, &drops)?;
        }
        if let Ok(fwd) = pinned_maps::forwards(pins) {
            let rows = fwd.into_iter().map(|(p, n)| (vec![("path", p.name().to_string())], ConstCounter::new(n)));
            family(
                &mut encoder,
                "sluice_forwarded_packets",
                "Packets the datapath forwarded, by path.",
                MetricType::Counter,
                rows,
            )?;
        }
        let maps = map_fill::read_all(pins);
        let label = |m: &MapFill| vec![("map", m.name.clone())];
        let used = maps.iter().filter_map(|m| Some((label(m), ConstGauge::new(m.entries? as i64))));
        family(&mut encoder, "sluice_map_entries", "Entries in each datapath map.", MetricType::Gauge, used)?;
        let cap = maps
            .iter()
            .filter(|m| m.kind != FillKind::Bytes)
            .map(|m| (label(m), ConstGauge::new(i64::from(m.max_entries))));
        family(
            &mut encoder,
            "sluice_map_capacity_entries",
            "Capacity of each datapath map (an array's slots).",
            MetricType::Gauge,
            cap,
        )?;
        let bytes = maps
            .iter()
            .filter(|m| m.kind == FillKind::Bytes)
            .map(|m| (label(m), ConstGauge::new(i64::from(m.max_entries))));
        family(&mut encoder, "sluice_map_capacity_bytes", "Size of each ring buffer.", MetricType::Gauge, bytes)?;
        let stack_flows = map_fill::stack_flows(pins, &maps).unwrap_or_default();
        if !stack_flows.is_empty() {
            let rows = stack_flows.iter().flat_map(|f| {
                [("remembered", f.remembered), ("forgotten", f.forgotten), ("insert_failed", f.insert_failed)].map(
                    |(event, n)| {
                        (vec![("event", event.to_string()), ("family", f.family().to_string())], ConstCounter::new(n))
                    },
                )
            });
            family(
                &mut encoder,
                "sluice_stack_flows",
                "STACK_FLOWS (family ipv4) and STACK_FLOWS6 (ipv6) entries remembered (flows the stack forwarded), \
                 forgotten (a new connection on the tuple) and inserts that failed (those replies skipped conntrack).",
                MetricType::Counter,
                rows,
            )?;
            family(
                &mut encoder,
                "sluice_stack_flows_evicted",
                "STACK_FLOWS / STACK_FLOWS6 entries evicted to make room (remembered - forgotten - present): at \
                 capacity, an idle NATed connection's entry goes too.",
                MetricType::Counter,
                stack_flows.iter().map(|f| (vec![("family", f.family().to_string())], ConstCounter::new(f.evicted))),
            )?;
        }
        // NAT4 (family ipv4) and NAT6 (ipv6), numbered alike; a table
        // whose counters are absent (an older datapath) is left out.
        let nat: Vec<_> = [("ipv4", nat4_maps::nat4_counters(pins)), ("ipv6", nat4_maps::nat6_counters(pins))]
            .into_iter()
            .filter_map(|(fam, counters)| Some((fam, counters.ok()?)))
            .collect();
        if !nat.is_empty() {
            let rows = nat.into_iter().flat_map(|(fam, counters)| {
                counters.into_iter().map(move |(c, n)| {
                    (vec![("event", c.name().to_string()), ("family", fam.to_string())], ConstCounter::new(n))
                })
            });
            family(
                &mut encoder,
                "sluice_nat4_events",
                "Connections from outside to Services at the uplink, NAT4 (family ipv4) and NAT6 (ipv6): new ones \
                 by backend place, SNAT port collisions and exhaustion, inserts the full table refused, packets \
                 translated each way.",
                MetricType::Counter,
                rows,
            )?;
        }
        if let Ok(verdicts) = PolicyStats::open(pins).and_then(|s| s.all()) {
            encode_policy_verdicts(&mut encoder, &verdicts)?;
        }
        encode_cni(&mut encoder, &cni_stats::read(&self.data_dir))?;
        let masquerade = *self.masquerade.lock().expect("netfilter counter lock");
        if let Some(counter) = masquerade {
            family(
                &mut encoder,
                "sluice_masquerade_packets",
                "Connections' first packets masqueraded to the node's address (nft table ip sluice), \
                 as of the agent's last netfilter check (every 10 s).",
                MetricType::Counter,
                [(vec![], ConstCounter::new(counter.packets))],
            )?;
            family(
                &mut encoder,
                "sluice_masquerade_bytes",
                "Bytes of those packets.",
                MetricType::Counter,
                [(vec![], ConstCounter::new(counter.bytes))],
            )?;
        }
        if let Some(k) = self.kube.lock().expect("metrics lock").clone() {
            family(
                &mut encoder,
                "sluice_kubernetes_watch_events",
                "Node watch events received.",
                MetricType::Counter,
                [(vec![], ConstCounter::new(k.events))],
            )?;
            family(
                &mut encoder,
                "sluice_kubernetes_relists",
                "Complete lists of Nodes (start, 410 Gone, reconnects).",
                MetricType::Counter,
                [(vec![], ConstCounter::new(k.relists))],
            )?;
            family(
                &mut encoder,
                "sluice_kubernetes_connected",
                "1 while the Node watch is connected.",
                MetricType::Gauge,
                [(vec![], ConstGauge::new(i64::from(k.connected)))],
            )?;
        }
        Ok(())
    }
}

/// The registry: the agent's metrics and the datapath collector
/// (`masquerade`: the netfilter worker's counter).
pub fn registry(pins: &PinDir, data_dir: &std::path::Path, m: &AgentMetrics, masquerade: SharedCounter) -> Registry {
    let mut r = Registry::default();
    r.register(
        "sluice_reconcile_duration_seconds",
        "Time of one pass over membership (map routes, kernel routes, netfilter).",
        m.reconcile_seconds.clone(),
    );
    r.register(
        "sluice_service_update_seconds",
        "Time from a Service or EndpointSlice watch event to the socket load balancer's maps holding it.",
        m.service_update_seconds.clone(),
    );
    r.register(
        "sluice_service_udp_sockets_destroyed",
        "Connected UDP sockets destroyed (SOCK_DESTROY) because the backend they were connected to left the Service.",
        m.service_udp_sockets_destroyed.clone(),
    );
    r.register(
        "sluice_policy_update_seconds",
        "Time from the first Pod, Namespace or NetworkPolicy watch event a pass carried to the policy maps holding it.",
        m.policy_update_seconds.clone(),
    );
    r.register(
        "sluice_policy_map_full",
        "Policy passes that met a full map, by map: the pods affected were isolated with no allow rule (fail closed).",
        m.policy_map_full.clone(),
    );
    r.register(
        "sluice_membership_problems",
        "Nodes left out of the routes, and why (see `status`).",
        m.membership_problems.clone(),
    );
    r.register(
        "sluice_membership_problems_by_kind",
        "Nodes left out of the routes, by why (the kind `status --json` names).",
        m.membership_problems_by_kind.clone(),
    );
    r.register(
        "sluice_kubernetes_outage_seconds",
        "A watch's last outage: from its first error to a complete list again.",
        m.kubernetes_outage_seconds.clone(),
    );
    r.register(
        "sluice_kubernetes_synced_after_return_seconds",
        "A watch's last outage: from its last attempt that found the API server unreachable (the server came back \
         after it) to a complete list again.",
        m.kubernetes_synced_after_return_seconds.clone(),
    );
    r.register(
        "sluice_kernel_route_failures",
        "Kernel routes to peers the last pass could not apply (every other route was applied; see `status`).",
        m.kernel_route_failures.clone(),
    );
    r.register(
        "sluice_port_collisions",
        "Host sockets (listening TCP, bound UDP) on ports sluice answers for, by protocol and owner \
         (node_port_range, host_port): Services' and pods' traffic never reaches them (see `status`).",
        m.ports.collisions.clone(),
    );
    r.register(
        "sluice_port_collisions_detected",
        "Host sockets seen appear on ports sluice answers for (each counted once while it stays).",
        m.ports.collisions_detected.clone(),
    );
    r.register(
        "sluice_conntrack_gc_seconds",
        "Time of one garbage-collection pass over a connection table (NAT4, POLICY_CT), by table.",
        m.conntrack_gc_seconds.clone(),
    );
    r.register(
        "sluice_conntrack_gc_last_seconds",
        "Time of the last garbage-collection pass over a connection table, by table.",
        m.conntrack_gc_last_seconds.clone(),
    );
    r.register(
        "sluice_conntrack_gc_last_scanned",
        "Entries the last garbage-collection pass over a connection table walked, by table.",
        m.conntrack_gc_last_scanned.clone(),
    );
    r.register(
        "sluice_conntrack_gc_last_removed",
        "Entries the last garbage-collection pass over a connection table removed as idle, by table.",
        m.conntrack_gc_last_removed.clone(),
    );
    r.register_collector(Box::new(DatapathCollector {
        pins: pins.clone(),
        data_dir: data_dir.to_path_buf(),
        kube: m.kube.clone(),
        masquerade,
    }));
    r
}

/// Encode the registry in the Prometheus text format.
pub fn render(registry: &Registry) -> Result<String> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry).context("encode metrics")?;
    Ok(out)
}

/// Renders the registry off the agent's thread, one rendering at a time.
/// Scrapes that queued while a rendering ran share the next one, which
/// starts after all of them arrived: every answer is at least as new as its
/// request (a reader comparing two scrapes, as connectivity-test does, never
/// gets a copy from before its first one), and a storm of scrapes costs two
/// renderings, not one each.
struct Renderer {
    registry: Arc<Registry>,
    /// The last rendering and when it started.
    last: tokio::sync::Mutex<Option<(Instant, Arc<String>)>>,
}

impl Renderer {
    async fn text(&self) -> Result<Arc<String>> {
        let asked = Instant::now();
        // Held across the rendering: scrapes queue here, not on the CPU.
        let mut last = self.last.lock().await;
        if let Some((started, text)) = last.as_ref() {
            if *started >= asked {
                return Ok(text.clone());
            }
        }
        let registry = self.registry.clone();
        let started = Instant::now();
        let text = Arc::new(tokio::task::spawn_blocking(move || render(&registry)).await.context("metrics render")??);
        *last = Some((started, text.clone()));
        Ok(text)
    }
}

async fn respond(renderer: &Renderer, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let response = if req.uri().path() == "/metrics" {
        match renderer.text().await {
            Ok(body) => Response::builder()
                .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
                .body(Full::new(Bytes::from(body.as_bytes().to_vec()))),
            Err(e) => Response::builder().status(500).body(Full::new(Bytes::from(format!("{e:#}")))),
        }
    } else {
        Response::builder().status(404).body(Full::new(Bytes::from("try /metrics\n")))
    };
    response.expect("static response parts")
}

/// Serve `GET /metrics` on `addr` in the background.
pub async fn serve(addr: SocketAddr, registry: Registry) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("bind metrics on {addr}"))?;
    info!(%addr, "metrics served at /metrics");
    let renderer = Arc::new(Renderer { registry: Arc::new(registry), last: Default::default() });
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        let mut refused: u64 = 0;
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    warn!(error = %e, "metrics accept failed");
                    // EMFILE and the like: don't spin.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                // Closed at once: the client learns, and costs nothing.
                refused += 1;
                if refused.is_power_of_two() {
                    warn!(%peer, refused, limit = MAX_CONNECTIONS, "metrics connection refused: too many open");
                }
                drop(stream);
                continue;
            };
            let renderer = renderer.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let renderer = renderer.clone();
                    async move { Ok::<_, std::convert::Infallible>(respond(&renderer, req).await) }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(io, service);
                let _ = tokio::time::timeout(CONNECTION_LIFETIME, conn).await;
                drop(slot);
            });
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::masquerade::MasqueradeCounter;

    #[test]
    fn agent_metrics_are_named_by_convention() {
        let m = AgentMetrics::default();
        m.reconcile_seconds.observe(0.002);
        let broadcast = crate::membership::Problem::UnusableNodeIp {
            node: "n9".into(),
            node_ip: "172.30.0.255".parse().unwrap(),
            fault: crate::membership::NodeIpFault::SubnetBroadcast { network: "172.30.0.0/24".parse().unwrap() },
        };
        m.set_problems(&[broadcast.clone(), crate::membership::Problem::NoPodCidr { node: "n4".into() }], 1);
        m.set_kubernetes(Some(KubeState { events: 5, relists: 1, connected: true, ..Default::default() }));
        let recovery = crate::kube_watch::Recovery { outage_ms: 20_500, synced_after_return_ms: 750, synced_unix: 1 };
        m.set_recovery("nodes", Some(&recovery));
        m.set_recovery("services", None);
        m.record_gc_pass("nat4", Duration::from_millis(1500), 250_000, 2);
        let dir = std::env::temp_dir().join(format!("sluice-metrics-test-{}", std::process::id()));
        cni_stats::record(&dir, "ADD", 0, 0.03, &[("attach-from_pod", 0.012)]).unwrap();
        cni_stats::record(&dir, "ADD", 103, 0.2, &[]).unwrap();
        let masquerade = SharedCounter::default();
        *masquerade.lock().unwrap() = Some(MasqueradeCounter { packets: 12, bytes: 840 });
        let text = render(&registry(&PinDir::new("/nonexistent"), &dir, &m, masquerade)).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        for line in [
            "sluice_reconcile_duration_seconds_count 1",
            "sluice_membership_problems 2",
            "sluice_membership_problems_by_kind{kind=\"unusableNodeIp\"} 1",
            "sluice_membership_problems_by_kind{kind=\"noPodCidr\"} 1",
            "sluice_kernel_route_failures 1",
            "sluice_kubernetes_watch_events_total 5",
            "sluice_kubernetes_relists_total 1",
            "sluice_kubernetes_connected 1",
            "sluice_kubernetes_outage_seconds{watch=\"nodes\"} 20.5",
            "sluice_kubernetes_synced_after_return_seconds{watch=\"nodes\"} 0.75",
            "# TYPE sluice_reconcile_duration_seconds histogram",
            "sluice_cni_calls_total{verb=\"ADD\",code=\"0\"} 1",
            "sluice_cni_calls_total{verb=\"ADD\",code=\"103\"} 1",
            "sluice_cni_duration_seconds_bucket{le=\"0.05\",verb=\"ADD\"} 1",
            "sluice_cni_duration_seconds_bucket{le=\"0.25\",verb=\"ADD\"} 2",
            "sluice_cni_duration_seconds_count{verb=\"ADD\"} 2",
            "sluice_cni_step_duration_seconds_bucket{le=\"0.025\",verb=\"ADD\",step=\"attach-from_pod\"} 1",
            "sluice_cni_step_duration_seconds_count{verb=\"ADD\",step=\"attach-from_pod\"} 1",
            "sluice_masquerade_packets_total 12",
            "sluice_masquerade_bytes_total 840",
            "sluice_conntrack_gc_seconds_count{table=\"nat4\"} 1",
            "sluice_conntrack_gc_seconds_bucket{le=\"2.048\",table=\"nat4\"} 1",
            "sluice_conntrack_gc_last_seconds{table=\"nat4\"} 1.5",
            "sluice_conntrack_gc_last_scanned{table=\"nat4\"} 250000",
            "sluice_conntrack_gc_last_removed{table=\"nat4\"} 2",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        // No pinned maps: the datapath families are left out, not zeroed.
        assert!(!text.contains("sluice_drops_total"), "{text}");
    }

    /// The drop families as the collector writes them from `DROP_STATS`.
    #[derive(Debug)]
    struct Drops(Vec<DropRow>);

    impl Collector for Drops {
        fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
            encode_drops(&mut encoder, &self.0)
        }
    }

    #[test]
    fn policy_verdicts_carry_direction_action_and_verdict() {
        use sluice_common::policy::{Direction, PolicyVerdict};
        #[derive(Debug)]
        struct Verdicts(Vec<VerdictCount>);
        impl Collector for Verdicts {
            fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
                encode_policy_verdicts(&mut encoder, &self.0)
            }
        }
        let row = |direction, verdict, count| VerdictCount { direction, verdict, count };
        let mut r = Registry::default();
        r.register_collector(Box::new(Verdicts(vec![
            row(Direction::Ingress, PolicyVerdict::AllowedByPeerRule, 7),
            row(Direction::Egress, PolicyVerdict::DeniedEgress, 2),
            row(Direction::Ingress, PolicyVerdict::PeerUnknown, 1),
        ])));
        let text = render(&r).unwrap();
        for line in [
            "sluice_policy_verdicts_total{direction=\"ingress\",action=\"allow\",verdict=\"allowed_by_peer_rule\"} 7",
            "sluice_policy_verdicts_total{direction=\"egress\",action=\"deny\",verdict=\"policy_denied_egress\"} 2",
            "sluice_policy_verdicts_total{direction=\"ingress\",action=\"deny\",verdict=\"policy_peer_unknown\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }

    #[test]
    fn drops_carry_their_direction_packets_and_bytes() {
        use sluice_common::{DropReason, HookDirection};
        let row = |reason, direction, packets, bytes| DropRow { reason, direction, packets, bytes };
        let mut r = Registry::default();
        r.register_collector(Box::new(Drops(vec![
            row(DropReason::SourceSpoofed, HookDirection::Ingress, 3, 294),
            row(DropReason::TunnelNoRoute, HookDirection::Egress, 2, 196),
            row(DropReason::TunnelNoRoute, HookDirection::Ingress, 0, 0),
        ])));
        let text = render(&r).unwrap();
        for line in [
            "sluice_drops_total{reason=\"source_spoofed\",direction=\"ingress\"} 3",
            "sluice_drops_total{reason=\"tunnel_no_route\",direction=\"egress\"} 2",
            "sluice_drops_total{reason=\"tunnel_no_route\",direction=\"ingress\"} 0",
            "sluice_drop_bytes_total{reason=\"source_spoofed\",direction=\"ingress\"} 294",
            "sluice_drop_bytes_total{reason=\"tunnel_no_route\",direction=\"egress\"} 196",
            "# TYPE sluice_drop_bytes counter",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }
}
