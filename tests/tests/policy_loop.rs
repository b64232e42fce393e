//! The agent's NetworkPolicy loop (`daemon::policy_loop`) with the real
//! watchers against the test API server, writing to in-memory tables
//! (`reconcile::policy_maps::MemoryTables`): no root. Nothing is applied
//! before Pods, Namespaces and NetworkPolicies are all listed; changes
//! reach the maps; and the scale (10,000 pods, 1,000 policies, 500
//! namespaces; 100 pods on this node) is measured: policy or label change
//! → maps, per change.
use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::{json, Value};
use sluice_agent::{
    daemon::policy_loop::{self, PolicyNode, SharedState},
    policy::{kubernetes::KubePolicy, names::NamesTable, report::PolicyReport},
    reconcile::policy_maps::MemoryTables,
};
use sluice_common::policy::{ENDPOINT_EGRESS_ISOLATED, ENDPOINT_INGRESS_ISOLATED, IDENTITY_HOST};
use sluice_tests::apiserver::{namespace_object, network_policy_object, ApiServer, Kind, PodObject};

struct Running {
    api: ApiServer,
    tables: MemoryTables,
    state: SharedState,
    latencies: Arc<Mutex<Vec<f64>>>,
    data_dir: std::path::PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

fn start(api: ApiServer) -> Running {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let data_dir = std::env::temp_dir().join(format!("sluice-policy-loop-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&data_dir).unwrap();
    let client = kube::Client::try_from(kube::Config::new(format!("http://{}", api.addr).parse().unwrap())).unwrap();
    let kube = KubePolicy::start(client);
    let tables = MemoryTables::default();
    let state = SharedState::default();
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let nodes: BTreeMap<String, Vec<std::net::IpAddr>> =
        (0..100).map(|i| (format!("n{i}"), vec![Ipv4Addr::new(172, 30, 0, i as u8 + 1).into()])).collect();
    let node = PolicyNode {
        node_name: "n0".into(),
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        data_dir: data_dir.clone(),
        nodes: Arc::new(move || nodes.clone()),
    };
    let (t, st, l) = (tables.clone(), state.clone(), latencies.clone());
    tokio::spawn(async move {
        let observe = move |s| l.lock().unwrap().push(s);
        if let Err(e) = policy_loop::run(kube, t, node, st, observe, |_| {}).await {
            panic!("policy loop stopped: {e:#}");
        }
    });
    Running { api, tables, state, latencies, data_dir }
}

async fn wait(what: &str, limit: Duration, mut pred: impl FnMut() -> bool) {
    let start = Instant::now();
    while !pred() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn endpoint(r: &Running, ip: &str) -> Option<sluice_common::policy::EndpointPolicy> {
    r.tables.maps.lock().unwrap().endpoints.get(&ip.parse().unwrap()).copied()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_applied_before_all_three_kinds_are_listed_then_changes_reach_the_maps() {
    let api = ApiServer::start("127.0.0.1:0", None).unwrap();
    api.upsert_namespace(namespace_object("x", &[]));
    api.upsert_pod(PodObject::new("x", "a", "n0", "10.244.0.2").build());
    api.upsert_pod(PodObject::new("x", "b", "n1", "10.244.1.2").build());
    api.upsert_network_policy(network_policy_object("x", "deny-in", json!({"podSelector": {}})));
    api.forbid(Kind::NetworkPolicy, true);
    let r = start(api);
    // The loop has seen the watches' state (pods and namespaces listed,
    // policies refused) and wrote nothing.
    wait("the loop sees policies refused", Duration::from_secs(10), || {
        r.state.lock().unwrap().watch_error.as_deref().is_some_and(|e| e.starts_with("networkpolicies"))
    })
    .await;
    assert!(!r.state.lock().unwrap().synced);
    let epoch = r.tables.epoch.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(epoch, 0, "the maps were written before policies were listed");
    assert_eq!(*r.tables.maps.lock().unwrap(), Default::default());

    r.api.forbid(Kind::NetworkPolicy, false);
    wait("a isolated", Duration::from_secs(10), || endpoint(&r, "10.244.0.2").is_some_and(|e| e.flags != 0)).await;
    assert_eq!(endpoint(&r, "10.244.0.2").unwrap().flags, ENDPOINT_INGRESS_ISOLATED);
    assert_eq!(endpoint(&r, "10.244.1.2"), None, "b is another node's");
    {
        let maps = r.tables.maps.lock().unwrap();
        assert_eq!(maps.identities[&"172.30.0.1/32".parse().unwrap()], IDENTITY_HOST);
        assert!(maps.identities.contains_key(&"10.244.1.2/32".parse().unwrap()), "remote pods are peers");
        assert_eq!(maps.pods.keys().collect::<Vec<_>>(), ["x/a"]);
    }
    // Allow from b: a's endpoint moves to a rule set with an entry.
    r.api.upsert_network_policy(network_policy_object(
        "x",
        "from-b",
        json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
    ));
    wait("a has rules", Duration::from_secs(2), || endpoint(&r, "10.244.0.2").is_some_and(|e| e.rules_id != 0)).await;
    // The tables are written after the maps, in the same pass.
    let names_path = NamesTable::path(&r.data_dir);
    wait("the names table names x/from-b", Duration::from_secs(2), || {
        NamesTable::read(&names_path).is_ok_and(|t| !t.policies.is_empty())
    })
    .await;
    let table = NamesTable::read(&names_path).unwrap();
    assert_eq!(table.policies.values().collect::<Vec<_>>(), ["x/from-b"]);
    assert_eq!(table.pod("10.244.1.2".parse::<Ipv4Addr>().unwrap()), Some("x/b"));
    // What `status --policy x/a` shows.
    let report = PolicyReport::read(&PolicyReport::path(&r.data_dir)).unwrap();
    let a = &report.pods["x/a"];
    assert_eq!(a.ingress.isolated_by, ["x/deny-in", "x/from-b"]);
    assert_eq!(a.ingress.allow.len(), 1, "{a:?}");
    assert_eq!(
        (a.ingress.allow[0].peers.as_slice(), a.ingress.allow[0].policy.as_str()),
        (&["x/b".to_string()][..], "x/from-b")
    );
    assert!(a.egress.isolated_by.is_empty());
    // Every policy gone: a is open again, its entries and sets go.
    r.api.delete_network_policy("x", "from-b");
    r.api.delete_network_policy("x", "deny-in");
    wait("a open", Duration::from_secs(2), || endpoint(&r, "10.244.0.2").is_some_and(|e| e.flags == 0)).await;
    wait("rules gone", Duration::from_secs(2), || r.tables.maps.lock().unwrap().rules.is_empty()).await;
    assert!(!r.latencies.lock().unwrap().is_empty());
}

/// The scale: 500 namespaces (team=t0..t9) of 20 pods (app=a0..a4),
/// labelled as replicas are (no per-pod label), spread over 100 nodes
/// (100 on this one), 2 policies per namespace: deny
/// ingress to all, allow app=aK from namespaces of one team on port 80.
fn scale_objects() -> (Vec<Value>, Vec<Value>, Vec<Value>) {
    let namespaces =
        (0..500).map(|i| namespace_object(&format!("ns{i}"), &[("team", &format!("t{}", i % 10))])).collect();
    let mut pods = Vec::new();
    for i in 0..10_000u32 {
        let ns = format!("ns{}", i / 20);
        let ip = format!("10.244.{}.{}", i / 200, i % 200 + 2);
        pods.push(
            PodObject::new(&ns, &format!("p{}", i % 20), &format!("n{}", i % 100), &ip)
                .without_labels()
                .label("app", &format!("a{}", i % 5))
                .port(Some("http"), 80, "TCP")
                .build(),
        );
    }
    let mut policies = Vec::new();
    for i in 0..500 {
        let ns = format!("ns{i}");
        policies.push(network_policy_object(&ns, "deny", json!({"podSelector": {}})));
        policies.push(network_policy_object(
            &ns,
            "allow",
            json!({
                "podSelector": {"matchLabels": {"app": format!("a{}", i % 5)}},
                "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": format!("t{}", i % 10)}},
                                       "podSelector": {"matchLabels": {"app": format!("a{}", (i + 1) % 5)}}}],
                             "ports": [{"port": 80}]}]
            }),
        ));
    }
    (namespaces, pods, policies)
}

fn p(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_and_label_changes_reach_the_maps_at_ten_thousand_pods_and_a_thousand_policies() {
    let api = ApiServer::start("127.0.0.1:0", None).unwrap();
    let (namespaces, pods, policies) = scale_objects();
    api.upsert_many(Kind::Namespace, namespaces);
    api.upsert_many(Kind::Pod, pods);
    api.upsert_many(Kind::NetworkPolicy, policies);
    let started = Instant::now();
    let r = start(api);
    wait("first sync", Duration::from_secs(120), || r.tables.maps.lock().unwrap().pods.len() == 100).await;
    wait("first pass done", Duration::from_secs(60), || r.state.lock().unwrap().last_pass_ms.is_some()).await;
    let first = started.elapsed();
    let st = r.state.lock().unwrap().clone();
    assert_eq!((st.local_pods, st.policies), (100, 1000), "{st:?}");
    assert_eq!(st.isolated_pods, 100);
    r.latencies.lock().unwrap().clear();
    // Local pod ns0/p0 (i = 0, node n0, app a0): changes that move it in
    // and out of a selector, and policy edits that touch it.
    let local = "10.244.0.2";
    let before = endpoint(&r, local).unwrap();
    let rounds = 20;
    // Per kind of change: (latency event -> maps, pass, compile, apply).
    let mut by_kind: [Vec<[f64; 4]>; 2] = [Vec::new(), Vec::new()];
    for round in 0..rounds {
        let rv_epoch = r.tables.epoch.load(std::sync::atomic::Ordering::SeqCst);
        r.latencies.lock().unwrap().clear();
        let kind = round % 2;
        if kind == 0 {
            // A policy change: ns0's deny (selecting every pod there) now
            // allows port 9999 from everywhere, or no longer.
            let spec = if round % 4 == 0 {
                json!({"podSelector": {}, "ingress": [{"ports": [{"port": 9999}]}]})
            } else {
                json!({"podSelector": {}})
            };
            r.api.upsert_network_policy(network_policy_object("ns0", "deny", spec));
        } else {
            // A label change: the local pod leaves (or rejoins) app=a0.
            let app = if round % 4 == 1 { "other" } else { "a0" };
            r.api.upsert_pod(
                PodObject::new("ns0", "p0", "n0", local)
                    .without_labels()
                    .label("app", app)
                    .port(Some("http"), 80, "TCP")
                    .build(),
            );
        }
        let t0 = Instant::now();
        while r.tables.epoch.load(std::sync::atomic::Ordering::SeqCst) == rv_epoch {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "round {round}: the change never applied: {:?}",
                r.state.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // The epoch is bumped by the pass's last write; the latency and the
        // state are recorded right after, when the pass returns.
        while r.latencies.lock().unwrap().is_empty() {
            assert!(t0.elapsed() < Duration::from_secs(30), "round {round}: no latency observed");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let st = r.state.lock().unwrap().clone();
        let latency = r.latencies.lock().unwrap().iter().copied().fold(0.0, f64::max) * 1000.0;
        assert!(latency > 0.0, "round {round}: no latency observed");
        by_kind[kind].push([latency, st.last_pass_ms.unwrap(), st.last_compile_ms.unwrap(), st.last_apply_ms.unwrap()]);
    }
    let after = endpoint(&r, local).unwrap();
    assert_eq!(before.flags, after.flags);
    let build = if cfg!(debug_assertions) { "debug" } else { "release" };
    eprintln!(
        "policy loop at 10,000 pods / 1,000 policies / 500 namespaces, 100 local pods ({build} build): first sync {:.1} s",
        first.as_secs_f64()
    );
    for (kind, rows) in ["policy change", "label change"].iter().zip(&by_kind) {
        let col = |i: usize| rows.iter().map(|r| r[i]).collect::<Vec<f64>>();
        let (mut lat, mut pass, mut compile, mut apply) = (col(0), col(1), col(2), col(3));
        eprintln!(
            "  {kind} -> maps: p50 {:.0} ms, p99 {:.0} ms over {} changes; pass p50 {:.0} ms (compile {:.0} ms, diff + apply {:.0} ms)",
            p(&mut lat, 0.5),
            p(&mut lat, 0.99),
            rows.len(),
            p(&mut pass, 0.5),
            p(&mut compile, 0.5),
            p(&mut apply, 0.5)
        );
    }
}

/// Issue 25's stall, through the watch: a NetworkPolicy of about 1.2 MB
/// (an ipBlock with 66,000 excepts) arrives as a watch event; the loop
/// finishes the pass with it (the policy counted, every except a prefix in
/// the maps) within seconds, where it used to compile for minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_with_sixty_six_thousand_excepts_arrives_by_watch_and_completes_a_pass() {
    const EXCEPTS: u32 = 66_000;
    let api = ApiServer::start("127.0.0.1:0", None).unwrap();
    api.upsert_namespace(namespace_object("z", &[]));
    api.upsert_pod(PodObject::new("z", "a", "n0", "10.244.0.2").build());
    api.upsert_network_policy(network_policy_object("z", "deny-in", json!({"podSelector": {}})));
    let r = start(api);
    wait("first pass", Duration::from_secs(10), || r.state.lock().unwrap().policies == 1).await;
    let except: Vec<String> =
        (0..EXCEPTS).map(|i| Ipv4Addr::from(u32::from(Ipv4Addr::new(200, 0, 0, 0)) + i).to_string() + "/32").collect();
    let big = network_policy_object(
        "z",
        "too-many-prefixes",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"], "egress": [
            {"to": [{"ipBlock": {"cidr": "192.0.0.0/2", "except": except}}]}
        ]}),
    );
    let bytes = serde_json::to_vec(&big).unwrap().len();
    let sent = Instant::now();
    r.api.upsert_network_policy(big);
    // Polled on this thread's own clock: a pass that blocks a runtime
    // worker for minutes also held up `wait`'s timer (seen: it returned
    // after 178 s instead of failing at 30 s).
    while r.state.lock().unwrap().policies != 2 {
        assert!(sent.elapsed() < Duration::from_secs(30), "the pass with the big policy: not within 30 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    let took = sent.elapsed();
    let st = r.state.lock().unwrap().clone();
    eprintln!(
        "{bytes} bytes: in the maps after {:.0} ms (compile {:.0} ms, apply {:.0} ms)",
        took.as_secs_f64() * 1000.0,
        st.last_compile_ms.unwrap_or_default(),
        st.last_apply_ms.unwrap_or_default()
    );
    assert!(st.identities > EXCEPTS as usize, "{st:?}");
    let maps = r.tables.maps.lock().unwrap();
    assert!(maps.identities.contains_key(&"200.1.1.207/32".parse().unwrap()), "the last except");
    assert_eq!(
        maps.endpoints[&"10.244.0.2".parse().unwrap()].flags & ENDPOINT_EGRESS_ISOLATED,
        ENDPOINT_EGRESS_ISOLATED,
        "z/a isolated for egress"
    );
}
