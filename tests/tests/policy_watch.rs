//! The agent's Pod, Namespace and NetworkPolicy watchers
//! (`policy::kubernetes`) against the test API server: no root, no
//! namespaces (the server listens on 127.0.0.1). The view must equal the
//! conversion of what the server holds after a list, after each kind of
//! change, after a 410 Gone (relist, including a delete made while the
//! watch was cut) and after dropped connections; `synced` waits for all
//! three kinds; lists come in pages.
use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use k8s_openapi::api::{core::v1 as core, networking::v1 as networking};
use serde_json::{json, Value};
use sluice_agent::policy::{
    kubernetes::{pod_from_k8s, policy_from_k8s, KubePolicy, PolicyView, PolicyWatchState, LIST_PAGE_SIZE},
    model::{Namespace, PodKey, PolicyName, Touched},
};
use sluice_tests::apiserver::{namespace_object, network_policy_object, ApiServer, Kind, PodObject};

/// The test API server and a copy of what the test put there.
struct Cluster {
    api: ApiServer,
    pods: BTreeMap<String, Value>,
    namespaces: BTreeMap<String, Value>,
    policies: BTreeMap<String, Value>,
}

fn key(obj: &Value) -> String {
    let m = &obj["metadata"];
    format!("{}/{}", m["namespace"].as_str().unwrap_or_default(), m["name"].as_str().unwrap())
}

impl Cluster {
    fn new() -> Self {
        Self {
            api: ApiServer::start("127.0.0.1:0", None).unwrap(),
            pods: BTreeMap::new(),
            namespaces: BTreeMap::new(),
            policies: BTreeMap::new(),
        }
    }

    fn client(&self) -> kube::Client {
        let config = kube::Config::new(format!("http://{}", self.api.addr).parse().unwrap());
        kube::Client::try_from(config).unwrap()
    }

    fn pod(&mut self, obj: Value) -> u64 {
        self.pods.insert(key(&obj), obj.clone());
        self.api.upsert_pod(obj)
    }

    fn namespace(&mut self, obj: Value) -> u64 {
        self.namespaces.insert(key(&obj), obj.clone());
        self.api.upsert_namespace(obj)
    }

    fn policy(&mut self, obj: Value) -> u64 {
        self.policies.insert(key(&obj), obj.clone());
        self.api.upsert_network_policy(obj)
    }

    fn delete_pod(&mut self, ns: &str, name: &str) -> u64 {
        self.pods.remove(&format!("{ns}/{name}"));
        self.api.delete_pod(ns, name).unwrap()
    }

    fn delete_namespace(&mut self, name: &str) -> u64 {
        self.namespaces.remove(&format!("/{name}"));
        self.api.delete_namespace(name).unwrap()
    }

    fn delete_policy(&mut self, ns: &str, name: &str) -> u64 {
        self.policies.remove(&format!("{ns}/{name}"));
        self.api.delete_network_policy(ns, name).unwrap()
    }

    /// Whether `view` is the conversion of every object the server holds
    /// (the conversions have their own unit tests in the agent); the
    /// differences otherwise.
    fn differences(&self, view: &PolicyView) -> Option<String> {
        let pods: BTreeMap<PodKey, _> = self
            .pods
            .values()
            .filter_map(|v| {
                let p = pod_from_k8s(&serde_json::from_value::<core::Pod>(v.clone()).unwrap()).model?;
                Some((p.key.clone(), p))
            })
            .collect();
        let namespaces: BTreeMap<String, _> = self
            .namespaces
            .values()
            .map(|v| {
                let ns = Namespace::from_k8s(&serde_json::from_value::<core::Namespace>(v.clone()).unwrap()).unwrap();
                (ns.name.clone(), ns)
            })
            .collect();
        let policies: BTreeMap<PolicyName, _> = self
            .policies
            .values()
            .filter_map(|v| {
                let p =
                    policy_from_k8s(&serde_json::from_value::<networking::NetworkPolicy>(v.clone()).unwrap()).model?;
                Some((p.name.clone(), p))
            })
            .collect();
        let m = &view.model;
        let mut out = Vec::new();
        if m.pods != pods {
            out.push(format!("pods: {:?} vs {:?}", m.pods.keys().collect::<Vec<_>>(), pods.keys().collect::<Vec<_>>()));
        }
        if m.namespaces != namespaces {
            out.push(format!("namespaces: {:?} vs {:?}", m.namespaces, namespaces));
        }
        if m.policies != policies {
            out.push(format!(
                "policies: {:?} vs {:?}",
                m.policies.keys().collect::<Vec<_>>(),
                policies.keys().collect::<Vec<_>>()
            ));
        }
        (!out.is_empty()).then(|| out.join("\n"))
    }

    /// Two namespaces, pods of every shape, two policies (one the agent
    /// refuses).
    fn populate(&mut self) {
        self.namespace(namespace_object("x", &[("team", "a")]));
        self.namespace(namespace_object("y", &[]));
        self.pod(PodObject::new("x", "a", "n1", "10.244.1.5").port(Some("serve-80-tcp"), 80, "TCP").build());
        self.pod(
            PodObject::new("x", "b", "n2", "10.244.2.6")
                .label("app", "web")
                .sidecar_port(Some("serve-81-udp"), 81, "UDP")
                .build(),
        );
        self.pod(PodObject::pending("y", "c").build());
        self.pod(PodObject::new("y", "h", "n1", "172.30.0.1").host_network().build());
        self.pod(PodObject::new("y", "done", "n1", "10.244.1.9").phase("Succeeded").build());
        self.policy(network_policy_object(
            "x",
            "deny-all",
            json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
        ));
        self.policy(network_policy_object(
            "x",
            "bad",
            json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"ports": [{"protocol": "ICMP"}]}]}),
        ));
    }
}

async fn wait_for(
    policy: &KubePolicy,
    what: &str,
    limit: Duration,
    pred: impl Fn(&PolicyView, &PolicyWatchState) -> bool,
) -> (PolicyView, PolicyWatchState) {
    let start = Instant::now();
    loop {
        if policy.with_view(&pred) {
            return policy.snapshot();
        }
        if start.elapsed() > limit {
            let (view, state) = policy.snapshot();
            panic!("{what}: not within {limit:?}\nstate: {state:?}\nview: {view:#?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Wait until the view is exactly what the cluster holds, and synced.
async fn wait_matches(policy: &KubePolicy, cluster: &Cluster, what: &str, limit: Duration) -> PolicyWatchState {
    let start = Instant::now();
    loop {
        let (view, state) = policy.snapshot();
        let diff = cluster.differences(&view);
        if diff.is_none() && state.synced {
            return state;
        }
        if start.elapsed() > limit {
            panic!("{what}: view not as the server holds it within {limit:?}\nstate: {state:?}\n{diff:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

const SECOND: Duration = Duration::from_secs(1);
const RECOVERY: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_list_gives_the_whole_view_and_synced_waits_for_all_three_kinds() {
    let mut cluster = Cluster::new();
    cluster.populate();
    // NetworkPolicies refused (a ClusterRole without them): pods and
    // namespaces are listed, the view is not synced.
    cluster.api.forbid(Kind::NetworkPolicy, true);
    let policy = KubePolicy::start(cluster.client());
    let (_, state) = wait_for(&policy, "pods and namespaces listed", RECOVERY, |v, _| {
        v.model.pods.len() == 5 && v.model.namespaces.len() == 2
    })
    .await;
    assert!(!state.synced, "synced with NetworkPolicies never listed: {state:?}");
    let (_, state) = wait_for(&policy, "the refusal seen", RECOVERY, |_, s| s.last_error.is_some()).await;
    assert!(!state.synced && !state.connected, "{state:?}");
    assert!(state.last_error.as_deref().unwrap().starts_with("networkpolicies: "), "{state:?}");
    assert_eq!(policy.take_pending(|_, _| ()).1, None, "nothing is pending for the loop before the sync");
    cluster.api.forbid(Kind::NetworkPolicy, false);
    let state = wait_matches(&policy, &cluster, "after policies are allowed", RECOVERY).await;
    assert!(state.connected && state.last_error.is_none(), "{state:?}");
    assert_eq!(state.relists, 3, "one list of each kind: {state:?}");
    assert!(policy.take_pending(|_, _| ()).1.is_some(), "the first sync is a change for the loop");

    // Spot checks beside the conversions' own tests.
    let (view, _) = policy.snapshot();
    let m = &view.model;
    assert_eq!(m.namespaces["x"].labels["kubernetes.io/metadata.name"], "x");
    assert_eq!(m.namespaces["x"].labels["team"], "a");
    let b = &m.pods[&PodKey::new("x", "b")];
    assert_eq!((b.node.as_str(), b.ips.len(), b.ports.len()), ("n2", 1, 1), "the sidecar's port counts: {b:?}");
    let c = &m.pods[&PodKey::new("y", "c")];
    assert!(c.ips.is_empty() && c.node.is_empty(), "{c:?}");
    assert!(m.pods[&PodKey::new("y", "h")].host_network);
    assert!(m.pods[&PodKey::new("y", "done")].ips.is_empty(), "a finished pod's address may be another's");
    let bad = &m.policies[&PolicyName::new("x", "bad")];
    assert!(bad.types.ingress && bad.ingress.is_empty(), "the refused policy isolates and allows nothing: {bad:?}");
    assert!(view.refused["networkpolicies x/bad"].contains("ICMP"), "{:?}", view.refused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_modified_and_deleted_objects_of_each_kind_reach_the_view_within_a_second() {
    let mut cluster = Cluster::new();
    cluster.populate();
    let policy = KubePolicy::start(cluster.client());
    let mut generation = wait_matches(&policy, &cluster, "initial list", RECOVERY).await.generation;
    policy.take_pending(|_, _| ());
    policy.with_changes(|_, _, _| ());
    let mut step = async |cluster: &Cluster, what: &str, rv: u64| {
        let state = wait_matches(&policy, cluster, what, SECOND).await;
        assert!(state.generation > generation, "{what}: the generation did not move");
        generation = state.generation;
        let written = cluster.api.written_at(rv).unwrap_or_else(|| panic!("{what}: rv {rv} never written"));
        let (touched, since) = policy.with_changes(|_, _, t| t);
        let since = since.unwrap_or_else(|| panic!("{what}: no pending change"));
        assert!(since >= written, "{what}: the change arrived before it was written");
        touched
    };
    let pod = |ns: &str, name: &str| Touched { pods: [PodKey::new(ns, name)].into(), ..Touched::default() };
    let namespace = |ns: &str| Touched { namespaces: [ns.to_string()].into(), ..Touched::default() };
    let policy_named =
        |ns: &str, name: &str| Touched { policies: [PolicyName::new(ns, name)].into(), ..Touched::default() };
    let rv = cluster.pod(PodObject::new("x", "d", "n1", "10.244.1.7").build());
    assert_eq!(step(&cluster, "Pod ADDED", rv).await, pod("x", "d"), "only what changed is reported");
    let rv = cluster.pod(PodObject::new("x", "d", "n1", "10.244.1.7").label("role", "db").build());
    assert_eq!(step(&cluster, "Pod relabelled", rv).await, pod("x", "d"), "only what changed is reported");
    let rv = cluster.delete_pod("x", "d");
    assert_eq!(step(&cluster, "Pod DELETED", rv).await, pod("x", "d"), "only what changed is reported");
    let rv = cluster.namespace(namespace_object("z", &[("team", "b")]));
    assert_eq!(step(&cluster, "Namespace ADDED", rv).await, namespace("z"), "only what changed is reported");
    let rv = cluster.namespace(namespace_object("z", &[("team", "c")]));
    assert_eq!(step(&cluster, "Namespace relabelled", rv).await, namespace("z"), "only what changed is reported");
    let rv = cluster.delete_namespace("z");
    assert_eq!(step(&cluster, "Namespace DELETED", rv).await, namespace("z"), "only what changed is reported");
    let rv = cluster.policy(network_policy_object(
        "y",
        "allow-80",
        json!({
            "podSelector": {},
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "a"}}}], "ports": [{"port": 80}]}]
        }),
    ));
    assert_eq!(
        step(&cluster, "NetworkPolicy ADDED", rv).await,
        policy_named("y", "allow-80"),
        "only what changed is reported"
    );
    let rv = cluster.policy(network_policy_object("y", "allow-80", json!({"podSelector": {}, "ingress": [{}]})));
    assert_eq!(
        step(&cluster, "NetworkPolicy MODIFIED", rv).await,
        policy_named("y", "allow-80"),
        "only what changed is reported"
    );
    let rv = cluster.delete_policy("x", "bad");
    assert_eq!(
        step(&cluster, "NetworkPolicy DELETED", rv).await,
        policy_named("x", "bad"),
        "only what changed is reported"
    );
    let (view, _) = policy.snapshot();
    assert!(view.refused.is_empty(), "the refused policy's error left with it: {:?}", view.refused);
    // An event that changes nothing the compiler reads is no change.
    let before = policy.snapshot().1.generation;
    let mut same = PodObject::new("x", "a", "n1", "10.244.1.5").port(Some("serve-80-tcp"), 80, "TCP").build();
    same["metadata"]["annotations"] = json!({"touched": "yes"});
    let rv = cluster.pod(same);
    let start = Instant::now();
    while cluster.api.written_at(rv).is_none() || start.elapsed() < Duration::from_millis(200) {
        assert!(start.elapsed() < SECOND, "the annotation change was never written to the watch");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(policy.snapshot().1.generation, before, "an annotation alone moved the generation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relist_after_410_gone_replaces_the_view_and_reconnects_after_dropped_connections() {
    let mut cluster = Cluster::new();
    cluster.populate();
    let policy = KubePolicy::start(cluster.client());
    wait_matches(&policy, &cluster, "initial list", RECOVERY).await;
    let lists_before = [Kind::Pod, Kind::Namespace, Kind::NetworkPolicy].map(|k| cluster.api.counters_of(k).0);
    policy.with_changes(|_, _, _| ());
    // History expires (the watches get 410 and relist); meanwhile objects
    // are deleted and added that the watches never see as events.
    cluster.api.stop_serving();
    cluster.api.expire_history();
    cluster.delete_pod("x", "a");
    cluster.delete_policy("x", "deny-all");
    cluster.delete_namespace("y");
    cluster.pod(PodObject::new("x", "e", "n1", "10.244.1.8").build());
    cluster.api.start_serving().unwrap();
    let state = wait_matches(&policy, &cluster, "after 410 and relist", RECOVERY).await;
    assert!(state.relists >= 6, "{state:?}");
    // What the relists removed and added is what the loop recompiles.
    let (touched, _) = policy.with_changes(|_, _, t| t);
    assert!(!touched.all, "{touched:?}");
    for pod in [PodKey::new("x", "a"), PodKey::new("x", "e")] {
        assert!(touched.pods.contains(&pod), "{pod} not reported changed: {touched:?}");
    }
    assert!(touched.policies.contains(&PolicyName::new("x", "deny-all")), "{touched:?}");
    assert!(touched.namespaces.contains("y"), "{touched:?}");
    for (kind, before) in [Kind::Pod, Kind::Namespace, Kind::NetworkPolicy].into_iter().zip(lists_before) {
        assert!(cluster.api.counters_of(kind).0 > before, "{kind:?} not relisted");
    }
    assert!(cluster.api.counters().2 > 0, "no 410 was sent");
    // Dropped connections: the watches come back and see later changes.
    let watches_before = [Kind::Pod, Kind::Namespace, Kind::NetworkPolicy].map(|k| cluster.api.counters_of(k).1);
    cluster.api.drop_connections();
    cluster.pod(PodObject::new("x", "f", "n2", "10.244.2.9").build());
    wait_matches(&policy, &cluster, "after dropped connections", RECOVERY).await;
    for (kind, before) in [Kind::Pod, Kind::Namespace, Kind::NetworkPolicy].into_iter().zip(watches_before) {
        let start = Instant::now();
        while cluster.api.counters_of(kind).1 <= before {
            assert!(start.elapsed() < RECOVERY, "{kind:?} never watched again");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_larger_than_a_page_is_read_page_by_page() {
    let mut cluster = Cluster::new();
    cluster.namespace(namespace_object("x", &[]));
    let n = LIST_PAGE_SIZE as usize * 3 + 7;
    let pods: Vec<Value> = (0..n)
        .map(|i| PodObject::new("x", &format!("p{i}"), "n1", &format!("10.244.{}.{}", i / 250, i % 250 + 2)).build())
        .collect();
    for p in &pods {
        cluster.pods.insert(key(p), p.clone());
    }
    cluster.api.upsert_many(Kind::Pod, pods);
    let policies: Vec<Value> = (0..n)
        .map(|i| {
            network_policy_object(
                "x",
                &format!("np{i}"),
                json!({"podSelector": {"matchLabels": {"pod": format!("p{i}")}}}),
            )
        })
        .collect();
    for p in &policies {
        cluster.policies.insert(key(p), p.clone());
    }
    cluster.api.upsert_many(Kind::NetworkPolicy, policies);
    let policy = KubePolicy::start(cluster.client());
    wait_matches(&policy, &cluster, "a paged list", RECOVERY).await;
    for kind in [Kind::Pod, Kind::NetworkPolicy] {
        let (lists, _, _) = cluster.api.counters_of(kind);
        assert_eq!(lists, 4, "{kind:?}: {n} objects in pages of {LIST_PAGE_SIZE}");
    }
}
