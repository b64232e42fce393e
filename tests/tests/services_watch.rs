//! The agent's Service and EndpointSlice watchers (`services::kubernetes`)
//! against the test API server: no root, no namespaces (the server listens
//! on 127.0.0.1). The view must equal the conversion of what the server
//! holds after a list, after each kind of change, after a 410 Gone (relist,
//! including a delete made while the watch was cut) and after dropped
//! connections; `synced` waits for both kinds.
use std::{
    alloc::{GlobalAlloc, Layout, System},
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    net::Ipv4Addr,
    process::{Command, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use serde_json::Value;
use sluice_agent::services::{
    kubernetes::{service_from_k8s, slice_from_k8s, KubeServices, ServicesState, LIST_PAGE_SIZE},
    model::{Protocol, ServiceKind, ServiceName, ServiceView},
};
use sluice_tests::apiserver::{
    endpoint_slice_object, service_object, ApiServer, EndpointObject, EndpointSliceObject, Kind, ServiceObject,
};

/// The test API server and a copy of what the test put there, to compute
/// the view the watchers must reach.
struct Cluster {
    api: ApiServer,
    services: BTreeMap<ServiceName, Value>,
    slices: BTreeMap<ServiceName, Value>,
}

fn key(obj: &Value) -> ServiceName {
    ServiceName::new(obj["metadata"]["namespace"].as_str().unwrap(), obj["metadata"]["name"].as_str().unwrap())
}

impl Cluster {
    fn new() -> Self {
        Self { api: ApiServer::start("127.0.0.1:0", None).unwrap(), services: BTreeMap::new(), slices: BTreeMap::new() }
    }

    fn client(&self) -> kube::Client {
        let config = kube::Config::new(format!("http://{}", self.api.addr).parse().unwrap());
        kube::Client::try_from(config).unwrap()
    }

    fn service(&mut self, obj: Value) -> u64 {
        self.services.insert(key(&obj), obj.clone());
        self.api.upsert_service(obj)
    }

    fn slice(&mut self, obj: Value) -> u64 {
        self.slices.insert(key(&obj), obj.clone());
        self.api.upsert_endpoint_slice(obj)
    }

    fn delete_service(&mut self, namespace: &str, name: &str) -> u64 {
        self.services.remove(&ServiceName::new(namespace, name));
        self.api.delete_service(namespace, name).unwrap()
    }

    fn delete_slice(&mut self, namespace: &str, name: &str) -> u64 {
        self.slices.remove(&ServiceName::new(namespace, name));
        self.api.delete_endpoint_slice(namespace, name).unwrap()
    }

    /// What the watchers must show: the conversion of every object (the
    /// conversions have their own unit tests in the agent).
    fn expected(&self) -> ServiceView {
        ServiceView {
            services: self
                .services
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), service_from_k8s(&serde_json::from_value(v.clone()).unwrap())?)))
                .collect(),
            slices: self
                .slices
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), slice_from_k8s(&serde_json::from_value(v.clone()).unwrap())?)))
                .collect(),
        }
    }

    /// A few Services and slices of every shape.
    fn populate(&mut self) {
        self.service(
            ServiceObject::new("default", "web", "10.96.0.10")
                .port("http", 80, 8080, "TCP")
                .port("https", 443, "https", "TCP")
                .client_ip_affinity(Some(600))
                .build(),
        );
        self.service(
            ServiceObject::new("kube-system", "kube-dns", "10.96.0.53")
                .cluster_ips(&["10.96.0.53", "fd00::53"])
                .port("dns", 53, 53, "UDP")
                .port("dns-tcp", 53, 53, "TCP")
                .port("sctp", 9999, 9999, "SCTP")
                .internal_traffic_local()
                .build(),
        );
        self.service(ServiceObject::headless("shop", "db").port("pg", 5432, 5432, "TCP").build());
        self.service(ServiceObject::external_name("shop", "upstream", "example.com").build());
        self.service(service_object("shop", "cart", "10.96.1.2", &[("", 8080, 8080)]));
        self.slice(
            EndpointSliceObject::new("default", "web-abc12", "web")
                .port("http", 8080, "TCP")
                .port("https", 8443, "TCP")
                .endpoint("10.244.1.5", "n1")
                .endpoint("10.244.2.6", "n2")
                .endpoint_with(EndpointObject::terminating("10.244.1.9", "n1", true))
                .build(),
        );
        self.slice(
            EndpointSliceObject::new("kube-system", "kube-dns-x1", "kube-dns")
                .port("dns", 53, "UDP")
                .port("dns-tcp", 53, "TCP")
                .endpoint("10.244.1.3", "n1")
                .build(),
        );
        self.slice(endpoint_slice_object("shop", "cart-q9", "cart", &[("", 8080)], &[("10.244.3.4", "n3")]));
        // An IPv6 slice (kept since issue 28: the IPv6 plan reads it) and
        // one without its Service's label (not ours).
        self.slice(
            EndpointSliceObject::new("default", "web-v6", "web").address_type("IPv6").endpoint("fd00::5", "n1").build(),
        );
        let mut orphan = EndpointSliceObject::new("default", "orphan", "x");
        orphan.service = None;
        self.slice(orphan.endpoint("10.244.9.9", "n9").build());
    }
}

/// Wait until `pred` holds on the watchers' view; return the view and state.
async fn wait_for(
    services: &KubeServices,
    what: &str,
    limit: Duration,
    pred: impl Fn(&ServiceView, &ServicesState) -> bool,
) -> (ServiceView, ServicesState) {
    let start = Instant::now();
    loop {
        if services.with_view(&pred) {
            return services.snapshot();
        }
        if start.elapsed() > limit {
            let (view, state) = services.snapshot();
            panic!("{what}: not within {limit:?}\nstate: {state:?}\nview: {view:#?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Wait until the view is exactly what the cluster holds.
async fn wait_matches(services: &KubeServices, cluster: &Cluster, what: &str, limit: Duration) -> ServicesState {
    let expected = cluster.expected();
    let start = Instant::now();
    loop {
        let (view, state) = services.snapshot();
        if view == expected && state.synced {
            return state;
        }
        if start.elapsed() > limit {
            let missing: Vec<_> =
                expected.services.keys().filter(|k| view.services.get(*k) != expected.services.get(*k)).collect();
            let extra: Vec<_> = view.services.keys().filter(|k| !expected.services.contains_key(*k)).collect();
            let missing_slices: Vec<_> =
                expected.slices.keys().filter(|k| view.slices.get(*k) != expected.slices.get(*k)).collect();
            let extra_slices: Vec<_> = view.slices.keys().filter(|k| !expected.slices.contains_key(*k)).collect();
            panic!(
                "{what}: view not as the server holds it within {limit:?}\nstate: {state:?}\n\
                 services missing or different: {missing:?}, extra: {extra:?}\n\
                 slices missing or different: {missing_slices:?}, extra: {extra_slices:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

const SECOND: Duration = Duration::from_secs(1);
/// A relist or reconnect waits out the watcher's backoff (0.8 s at first).
const RECOVERY: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_list_gives_the_whole_view_and_synced_waits_for_both_kinds() {
    let mut cluster = Cluster::new();
    cluster.populate();
    // EndpointSlices refused (as a ClusterRole without them would): Services
    // are listed, the view is not synced.
    cluster.api.forbid(Kind::EndpointSlice, true);
    let services = KubeServices::start(cluster.client());
    let (_, state) = wait_for(&services, "services listed", RECOVERY, |v, _| v.services.len() == 5).await;
    assert!(!state.synced, "synced with EndpointSlices never listed: {state:?}");
    let (_, state) = wait_for(&services, "the refusal seen", RECOVERY, |_, s| s.last_error.is_some()).await;
    assert!(!state.synced && !state.connected, "{state:?}");
    assert!(state.last_error.as_deref().unwrap().starts_with("endpointslices: "), "{state:?}");
    cluster.api.forbid(Kind::EndpointSlice, false);
    let state = wait_matches(&services, &cluster, "after the slices are allowed", RECOVERY).await;
    assert!(state.connected && state.last_error.is_none(), "{state:?}");
    assert_eq!(state.relists, 2, "one list of each kind: {state:?}");
    assert!(state.last_change.is_some());

    // The view, spot-checked by hand beside the conversion's own tests.
    let (view, _) = services.snapshot();
    let web = &view.services[&ServiceName::new("default", "web")];
    assert_eq!((web.kind, web.cluster_ips.as_slice()), (ServiceKind::ClusterIp, &[Ipv4Addr::new(10, 96, 0, 10)][..]));
    assert_eq!(web.affinity_timeout_secs, Some(600));
    let dns = &view.services[&ServiceName::new("kube-system", "kube-dns")];
    assert_eq!(dns.cluster_ips, vec![Ipv4Addr::new(10, 96, 0, 53)]);
    assert_eq!(dns.ports.len(), 2, "SCTP dropped: {dns:?}");
    assert!(dns.internal_traffic_local);
    assert_eq!(view.services[&ServiceName::new("shop", "db")].kind, ServiceKind::Headless);
    assert_eq!(view.services[&ServiceName::new("shop", "upstream")].kind, ServiceKind::ExternalName);
    assert_eq!(view.slices.len(), 4, "the unlabelled slice is left out, the IPv6 one kept: {:?}", view.slices.keys());
    let v6 = &view.slices[&ServiceName::new("default", "web-v6")];
    assert_eq!(v6.service, ServiceName::new("default", "web"));
    assert_eq!(v6.endpoints[0].address, "fd00::5".parse::<std::net::IpAddr>().unwrap());
    let slice = &view.slices[&ServiceName::new("default", "web-abc12")];
    assert_eq!(slice.service, ServiceName::new("default", "web"));
    assert_eq!(slice.endpoints.len(), 3);
    assert!(slice.endpoints[2].terminating && slice.endpoints[2].serving && !slice.endpoints[2].ready);
    assert_eq!(view.slices[&ServiceName::new("shop", "cart-q9")].ports[0].name, "");
    assert_eq!(view.slices[&ServiceName::new("shop", "cart-q9")].ports[0].protocol, Protocol::Tcp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_modified_and_deleted_objects_of_each_kind_reach_the_view_within_a_second() {
    let mut cluster = Cluster::new();
    cluster.populate();
    let services = KubeServices::start(cluster.client());
    wait_matches(&services, &cluster, "initial list", RECOVERY).await;
    let mut latencies = Vec::new();
    let mut step = async |cluster: &Cluster, what: &str, rv: u64| {
        let state = wait_matches(&services, cluster, what, SECOND).await;
        let written = cluster.api.written_at(rv).unwrap_or_else(|| panic!("{what}: rv {rv} never written"));
        let arrived = state.last_change.unwrap();
        assert!(arrived >= written, "{what}: the change arrived before it was written");
        latencies.push(arrived - written);
    };
    let rv = cluster.service(service_object("default", "api", "10.96.0.20", &[("grpc", 9090, 9090)]));
    step(&cluster, "Service ADDED", rv).await;
    let rv = cluster.service(
        ServiceObject::new("default", "api", "10.96.0.20")
            .port("grpc", 9090, 9091, "TCP")
            .port("m", 9100, 9100, "UDP")
            .build(),
    );
    step(&cluster, "Service MODIFIED", rv).await;
    let rv =
        cluster.slice(endpoint_slice_object("default", "api-1", "api", &[("grpc", 9091)], &[("10.244.1.20", "n1")]));
    step(&cluster, "EndpointSlice ADDED", rv).await;
    let rv = cluster.slice(
        EndpointSliceObject::new("default", "api-1", "api")
            .port("grpc", 9091, "TCP")
            .endpoint_with(EndpointObject::terminating("10.244.1.20", "n1", false))
            .endpoint("10.244.2.21", "n2")
            .build(),
    );
    step(&cluster, "EndpointSlice MODIFIED", rv).await;
    let rv = cluster.delete_slice("default", "web-abc12");
    step(&cluster, "EndpointSlice DELETED", rv).await;
    let rv = cluster.delete_service("shop", "cart");
    step(&cluster, "Service DELETED", rv).await;
    // An object that stops being ours leaves the view on a MODIFIED.
    let rv = cluster.slice(
        EndpointSliceObject::new("shop", "cart-q9", "cart")
            .label("service.kubernetes.io/service-proxy-name", "other-proxy")
            .endpoint("10.244.3.4", "n3")
            .build(),
    );
    step(&cluster, "EndpointSlice relabelled for another proxy", rv).await;
    assert!(!services.snapshot().0.slices.contains_key(&ServiceName::new("shop", "cart-q9")));
    eprintln!("event handed to the watch stream → read by the watcher: {latencies:?}");

    // A change that changes nothing sluice keeps (here only the
    // resourceVersion) is counted but is no change.
    let (_, before) = services.snapshot();
    let same = cluster.services[&ServiceName::new("default", "api")].clone();
    cluster.service(same);
    let (_, after) = wait_for(&services, "the no-op event", SECOND, |_, s| s.events > before.events).await;
    assert_eq!(after.last_change, before.last_change, "a no-op event counted as a change");
    // A real change notifies (a permit left from the steps above taken first).
    let _ = tokio::time::timeout(Duration::from_millis(10), services.changed.notified()).await;
    let wait = services.changed.notified();
    cluster.delete_service("default", "api");
    tokio::time::timeout(SECOND, wait).await.expect("a DELETED notified");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relist_after_410_gone_replaces_the_view_and_reconnects_after_dropped_connections() {
    let mut cluster = Cluster::new();
    cluster.populate();
    let services = KubeServices::start(cluster.client());
    let first = wait_matches(&services, &cluster, "initial list", RECOVERY).await;
    let lists_before = [Kind::Service, Kind::EndpointSlice].map(|k| cluster.api.counters_of(k).0);

    // History expires and the watches are cut: what changes meanwhile only
    // a relist can show, the deletes above all (no DELETED event reaches a
    // watcher that gets 410).
    cluster.api.expire_history();
    cluster.delete_service("shop", "db");
    cluster.delete_slice("kube-system", "kube-dns-x1");
    cluster.service(service_object("default", "new", "10.96.0.30", &[("http", 80, 8080)]));
    cluster.slice(endpoint_slice_object("default", "new-1", "new", &[("http", 8080)], &[("10.244.1.30", "n1")]));
    cluster.slice(endpoint_slice_object("default", "web-abc12", "web", &[("http", 8080)], &[("10.244.2.31", "n2")]));
    let state = wait_matches(&services, &cluster, "after 410", RECOVERY).await;
    for (kind, before) in [Kind::Service, Kind::EndpointSlice].into_iter().zip(lists_before) {
        let (lists, _, gone) = cluster.api.counters_of(kind);
        assert!(gone >= 1, "{kind:?}: no 410 sent");
        assert!(lists > before, "{kind:?}: the 410 forced no relist");
    }
    assert!(state.relists >= first.relists + 2, "{state:?}");

    // Connections dropped: the watchers reconnect and catch up, resuming
    // from their resourceVersion (no relist needed).
    let watches_before = [Kind::Service, Kind::EndpointSlice].map(|k| cluster.api.counters_of(k).1);
    cluster.api.drop_connections();
    cluster.delete_service("default", "new");
    cluster.delete_slice("default", "new-1");
    cluster.service(service_object("default", "after-drop", "10.96.0.40", &[("http", 80, 8080)]));
    let state = wait_matches(&services, &cluster, "after dropped connections", RECOVERY).await;
    for (kind, before) in [Kind::Service, Kind::EndpointSlice].into_iter().zip(watches_before) {
        assert!(cluster.api.counters_of(kind).1 > before, "{kind:?}: no new watch after the connections dropped");
    }
    // The stream error (if it was seen) is cleared by the next event.
    let state = if state.connected {
        state
    } else {
        cluster.service(service_object("default", "ping", "10.96.0.41", &[]));
        wait_matches(&services, &cluster, "one more event", RECOVERY).await
    };
    assert!(state.connected && state.last_error.is_none(), "{state:?}");
}

/// The API server stopped for 10 s (kube-rs' default backoff would have
/// grown to 6–13 s, then backed off the 410 Expired once more) and started
/// again, a Service and a slice made meanwhile: both watches relist within
/// 3 s of the return, and the state says how long they took.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_kinds_relist_within_seconds_of_the_api_servers_return() {
    let mut cluster = Cluster::new();
    cluster.populate();
    let services = KubeServices::start(cluster.client());
    wait_matches(&services, &cluster, "initial list", RECOVERY).await;
    cluster.api.stop_serving();
    wait_for(&services, "the watches notice", RECOVERY, |_, s| !s.connected).await;
    // The outage itself (not a wait for anything): the backoff grows.
    tokio::time::sleep(Duration::from_secs(10)).await;
    cluster.service(service_object("default", "during", "10.96.0.60", &[("http", 80, 8080)]));
    cluster.slice(endpoint_slice_object("default", "during-1", "during", &[("http", 8080)], &[("10.244.1.60", "n1")]));
    cluster.api.start_serving().unwrap();
    let back = Instant::now();
    let state = wait_matches(&services, &cluster, "after the API server's return", 3 * SECOND).await;
    eprintln!("both kinds as the server holds them {:?} after its return", back.elapsed());
    let r = state.last_recovery.expect("the recovery is recorded");
    assert!(r.outage_ms >= 10_000, "{r:?}");
    assert!(r.synced_after_return_ms <= 3_000 + 1_000, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_larger_than_a_page_is_read_page_by_page() {
    let mut cluster = Cluster::new();
    let n: usize = 1_234;
    let svcs: Vec<Value> = (0..n)
        .map(|i| {
            service_object(
                "bulk",
                &format!("s{i}"),
                &format!("10.97.{}.{}", i / 250, i % 250 + 1),
                &[("http", 80, 8080)],
            )
        })
        .collect();
    let slices: Vec<Value> = (0..n)
        .map(|i| {
            endpoint_slice_object(
                "bulk",
                &format!("s{i}-x"),
                &format!("s{i}"),
                &[("http", 8080)],
                &[(&format!("10.245.{}.{}", i / 250, i % 250 + 1), "n1")],
            )
        })
        .collect();
    for v in &svcs {
        cluster.services.insert(key(v), v.clone());
    }
    for v in &slices {
        cluster.slices.insert(key(v), v.clone());
    }
    let rv_before = cluster.api.resource_version();
    let last = cluster.api.upsert_many(Kind::Service, svcs);
    assert_eq!(last, rv_before + n as u64, "one resourceVersion per object");
    cluster.api.upsert_many(Kind::EndpointSlice, slices);
    let services = KubeServices::start(cluster.client());
    wait_matches(&services, &cluster, "a paged list", Duration::from_secs(30)).await;
    let pages = n.div_ceil(LIST_PAGE_SIZE as usize) as u64;
    assert!(pages > 1);
    for kind in [Kind::Service, Kind::EndpointSlice] {
        let (lists, _, _) = cluster.api.counters_of(kind);
        assert_eq!(lists, pages, "{kind:?}: {n} objects in pages of {LIST_PAGE_SIZE}");
    }
}

/// The watchers' memory with 10,000 Services and 10,000 slices of 5
/// endpoints (50,000), listed and then relisted after a 410, measured in a
/// child process of its own (the test server's copy of the objects would
/// count otherwise). The child reports when it has listed; the parent then
/// expires the history and tells it to wait for the relist.
#[test]
fn ten_thousand_services_and_fifty_thousand_endpoints_fit_the_memory_budget() {
    const SERVICES: usize = 10_000;
    const PER_SLICE: usize = 5;
    if let Ok(addr) = std::env::var("SLUICE_SERVICES_MEMORY_CHILD") {
        return memory_child(&addr, SERVICES, SERVICES * PER_SLICE);
    }
    let api = ApiServer::start("127.0.0.1:0", None).unwrap();
    let started = Instant::now();
    api.upsert_many(
        Kind::Service,
        (0..SERVICES).map(|i| {
            ServiceObject::new(
                &format!("ns{}", i % 50),
                &format!("svc-{i}"),
                &format!("10.{}.{}.{}", 96 + i / 65_536, i / 256 % 256, i % 256),
            )
            .port("http", 80, 8080, "TCP")
            .port("metrics", 9100, 9100, "TCP")
            .build()
        }),
    );
    api.upsert_many(
        Kind::EndpointSlice,
        (0..SERVICES).map(|i| {
            let s = EndpointSliceObject::new(&format!("ns{}", i % 50), &format!("svc-{i}-abcde"), &format!("svc-{i}"))
                .port("http", 8080, "TCP")
                .port("metrics", 9100, "TCP");
            (0..PER_SLICE)
                .fold(s, |s, j| {
                    let n = i * PER_SLICE + j;
                    s.endpoint(
                        &format!("10.{}.{}.{}", 128 + n / 65_536, n / 256 % 256, n % 256),
                        &format!("node-{}", n % 100),
                    )
                })
                .build()
        }),
    );
    eprintln!("test API server loaded in {:?}", started.elapsed());
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["ten_thousand_services_and_fifty_thousand_endpoints_fit_the_memory_budget", "--exact", "--nocapture"])
        .env("SLUICE_SERVICES_MEMORY_CHILD", api.addr.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut text = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        text.push_str(&line);
        text.push('\n');
        if line == "LISTED" {
            api.expire_history();
            writeln!(child.stdin.as_mut().unwrap(), "relist").unwrap();
        }
    }
    let status = child.wait().unwrap();
    eprintln!("{text}");
    assert!(status.success(), "the child failed:\n{text}");
    assert!(text.contains("relisted"), "{text}");
}

/// The system allocator, counting the bytes live on the heap (what the
/// memory test reports beside RSS, which also counts freed memory malloc
/// keeps).
struct Counting;

static HEAP_LIVE: AtomicUsize = AtomicUsize::new(0);
static HEAP_PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed to System unchanged; only counted.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let live = HEAP_LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            HEAP_PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        HEAP_LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// VmRSS and VmHWM of this process, in KiB.
fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |name: &str| {
        status.lines().find_map(|l| l.strip_prefix(name)).unwrap().split_whitespace().next().unwrap().parse().unwrap()
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Measured in a debug build: the model is 13 MiB of heap; RSS grows
/// 24 MiB (the rest is malloc keeping pages of freed list pages and
/// fragmentation); a relist adds about 1 MiB (the keys it has seen).
fn memory_child(addr: &str, services: usize, endpoints: usize) {
    /// The whole agent must fit 60 MiB; the watchers' share of it.
    const RSS_BUDGET_KIB: u64 = 32 * 1024;
    const HEAP_BUDGET: usize = 20 << 20;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        let (base_rss, _) = rss_kib();
        let base_heap = HEAP_LIVE.load(Ordering::Relaxed);
        HEAP_PEAK.store(base_heap, Ordering::Relaxed);
        let report = |what: &str, took: Duration| {
            let (rss, hwm) = rss_kib();
            let (live, peak) =
                (HEAP_LIVE.load(Ordering::Relaxed) - base_heap, HEAP_PEAK.load(Ordering::Relaxed) - base_heap);
            println!(
                "{what} {services} Services and {endpoints} endpoints in {took:?}: heap {} MiB (peak {} MiB), \
                 RSS +{} MiB (peak +{} MiB) over {} MiB before the watchers started",
                live >> 20,
                peak >> 20,
                (rss - base_rss) >> 10,
                (hwm - base_rss) >> 10,
                base_rss >> 10,
            );
            assert!(peak <= HEAP_BUDGET, "{what}: heap peaked {peak} bytes over the start (budget {HEAP_BUDGET})");
            assert!(
                hwm - base_rss <= RSS_BUDGET_KIB,
                "{what}: RSS peaked {} KiB over the start (budget {RSS_BUDGET_KIB} KiB)",
                hwm - base_rss
            );
        };
        let all_there = |v: &ServiceView, s: &ServicesState| {
            s.synced
                && v.services.len() == services
                && v.slices.values().map(|s| s.endpoints.len()).sum::<usize>() == endpoints
        };
        let started = Instant::now();
        let watchers = KubeServices::start(client);
        while !watchers.with_view(all_there) {
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "not listed: {:?}",
                watchers.with_view(|_, s| s.clone())
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        report("listed", started.elapsed());
        // The parent expires the history: both kinds relist.
        println!("LISTED");
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).unwrap();
        let started = Instant::now();
        while !watchers.with_view(|v, s| s.relists >= 4 && all_there(v, s)) {
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "not relisted: {:?}",
                watchers.with_view(|_, s| s.clone())
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        report("relisted", started.elapsed());
    });
}
