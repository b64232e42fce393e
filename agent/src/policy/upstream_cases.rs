//! The Kubernetes e2e NetworkPolicy suite's cases
//! (`test/e2e/network/netpol/network_policy.go`), modelled on the pure core:
//! namespaces x, y, z × pods a, b, c (label `pod: <name>`), every pod
//! serving 80 and 81 over TCP, UDP and SCTP with named ports
//! `serve-<port>-<proto>`, spread over two nodes (so each verdict is judged
//! by the source's node for egress and the destination's for ingress, with
//! node-local identities). Each test builds the policies as the upstream
//! case does (written here as API objects and converted by `model.rs`),
//! builds the expected 9×9 matrix as upstream's reachability table does,
//! and compares every ordered pair but loopback (upstream ignores it too)
//! with `evaluate::reach`, printing both matrices on a mismatch.
//!
//! Upstream now starts each case with only the pods it needs; these use all
//! nine in every case (the suite's earlier, full form), which only adds
//! pairs. Policy updates, deletions and label changes are model edits
//! between two matrices; what upstream checks with real traffic, and what
//! stays for the datapath's tests, is how fast and for which connections a
//! change takes effect, probing through Services, and SCTP on the wire.
use std::{collections::BTreeMap, fmt::Write as _, net::Ipv4Addr};

use k8s_openapi::api::{core::v1 as core, networking::v1 as networking};
use serde_json::{json, Value};

use super::{
    evaluate::{reach, ClusterMaps, Reach},
    model::{Namespace, NetworkPolicy, Pod, PodKey, PolicyModel, PolicyName, Protocol, NAMESPACE_NAME_LABEL},
};

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];

/// Every upstream case (Ginkgo name) and the test here that models it.
pub const UPSTREAM_CASES: [(&str, &str); 48] = [
    ("should support a 'default-deny-ingress' policy", "should_support_a_default_deny_ingress_policy"),
    ("should support a 'default-deny-all' policy", "should_support_a_default_deny_all_policy"),
    ("should enforce policy to allow traffic from pods within server namespace based on PodSelector", "should_enforce_policy_to_allow_traffic_from_pods_within_server_namespace_based_on_pod_selector"),
    ("should enforce policy to allow ingress traffic for a target", "should_enforce_policy_to_allow_ingress_traffic_for_a_target"),
    ("should enforce policy to allow ingress traffic from pods in all namespaces", "should_enforce_policy_to_allow_ingress_traffic_from_pods_in_all_namespaces"),
    ("should enforce policy to allow traffic only from a different namespace, based on NamespaceSelector", "should_enforce_policy_to_allow_traffic_only_from_a_different_namespace_based_on_namespace_selector"),
    ("should enforce policy based on PodSelector with MatchExpressions", "should_enforce_policy_based_on_pod_selector_with_match_expressions"),
    ("should enforce policy based on NamespaceSelector with MatchExpressions", "should_enforce_policy_based_on_namespace_selector_with_match_expressions"),
    ("should enforce policy based on PodSelector or NamespaceSelector", "should_enforce_policy_based_on_pod_selector_or_namespace_selector"),
    ("should enforce policy based on PodSelector and NamespaceSelector", "should_enforce_policy_based_on_pod_selector_and_namespace_selector"),
    ("should enforce policy based on Multiple PodSelectors and NamespaceSelectors", "should_enforce_policy_based_on_multiple_pod_selectors_and_namespace_selectors"),
    ("should enforce policy based on any PodSelectors", "should_enforce_policy_based_on_any_pod_selectors"),
    ("should enforce policy to allow traffic only from a pod in a different namespace based on PodSelector and NamespaceSelector", "should_enforce_policy_to_allow_traffic_only_from_a_pod_in_a_different_namespace_based_on_pod_selector_and_namespace_selector"),
    ("should enforce policy based on Ports", "should_enforce_policy_based_on_ports"),
    ("should enforce multiple, stacked policies with overlapping podSelectors", "should_enforce_multiple_stacked_policies_with_overlapping_pod_selectors"),
    ("should support allow-all policy", "should_support_allow_all_policy"),
    ("should allow ingress access on one named port", "should_allow_ingress_access_on_one_named_port"),
    ("should allow ingress access from namespace on one named port", "should_allow_ingress_access_from_namespace_on_one_named_port"),
    ("should allow egress access on one named port", "should_allow_egress_access_on_one_named_port"),
    ("should enforce updated policy", "should_enforce_updated_policy"),
    ("should allow ingress access from updated namespace", "should_allow_ingress_access_from_updated_namespace"),
    ("should allow ingress access from updated pod", "should_allow_ingress_access_from_updated_pod"),
    ("should deny ingress from pods on other namespaces", "should_deny_ingress_from_pods_on_other_namespaces"),
    ("should deny ingress access to updated pod", "should_deny_ingress_access_to_updated_pod"),
    ("should deny egress from pods based on PodSelector", "should_deny_egress_from_pods_based_on_pod_selector"),
    ("should deny egress from all pods in a namespace", "should_deny_egress_from_all_pods_in_a_namespace"),
    ("should work with Ingress, Egress specified together", "should_work_with_ingress_egress_specified_together"),
    ("should support denying of egress traffic on the client side (even if the server explicitly allows this traffic)", "should_support_denying_of_egress_traffic_on_the_client_side_even_if_the_server_explicitly_allows_this_traffic"),
    ("should enforce egress policy allowing traffic to a server in a different namespace based on PodSelector and NamespaceSelector", "should_enforce_egress_policy_allowing_traffic_to_a_server_in_a_different_namespace_based_on_pod_selector_and_namespace_selector"),
    ("should enforce ingress policy allowing any port traffic to a server on a specific protocol", "should_enforce_ingress_policy_allowing_any_port_traffic_to_a_server_on_a_specific_protocol"),
    ("should enforce multiple ingress policies with ingress allow-all policy taking precedence", "should_enforce_multiple_ingress_policies_with_ingress_allow_all_policy_taking_precedence"),
    ("should enforce multiple egress policies with egress allow-all policy taking precedence", "should_enforce_multiple_egress_policies_with_egress_allow_all_policy_taking_precedence"),
    ("should stop enforcing policies after they are deleted", "should_stop_enforcing_policies_after_they_are_deleted"),
    ("should allow egress access to server in CIDR block", "should_allow_egress_access_to_server_in_cidr_block"),
    ("should enforce except clause while egress access to server in CIDR block", "should_enforce_except_clause_while_egress_access_to_server_in_cidr_block"),
    ("should ensure an IP overlapping both IPBlock.CIDR and IPBlock.Except is allowed", "should_ensure_an_ip_overlapping_both_ip_block_cidr_and_ip_block_except_is_allowed"),
    ("should enforce policies to check ingress and egress policies can be controlled independently based on PodSelector", "should_enforce_policies_to_check_ingress_and_egress_policies_can_be_controlled_independently_based_on_pod_selector"),
    ("should not mistakenly treat 'protocol: SCTP' as 'protocol: TCP', even if the plugin doesn't support SCTP", "should_not_mistakenly_treat_protocol_sctp_as_protocol_tcp_even_if_the_plugin_doesnt_support_sctp"),
    ("should properly isolate pods that are selected by a policy allowing SCTP, even if the plugin doesn't support SCTP", "should_properly_isolate_pods_that_are_selected_by_a_policy_allowing_sctp_even_if_the_plugin_doesnt_support_sctp"),
    ("should not allow access by TCP when a policy specifies only UDP", "should_not_allow_access_by_tcp_when_a_policy_specifies_only_udp"),
    ("should enforce policy to allow traffic based on NamespaceSelector with MatchLabels using default ns label", "should_enforce_policy_to_allow_traffic_based_on_namespace_selector_with_match_labels_using_default_ns_label"),
    ("should enforce policy based on NamespaceSelector with MatchExpressions using default ns label", "should_enforce_policy_based_on_namespace_selector_with_match_expressions_using_default_ns_label"),
    ("[UDP] should support a 'default-deny-ingress' policy", "udp::should_support_a_default_deny_ingress_policy"),
    ("[UDP] should enforce policy based on Ports", "udp::should_enforce_policy_based_on_ports"),
    ("[UDP] should enforce policy to allow traffic only from a pod in a different namespace based on PodSelector and NamespaceSelector", "udp::should_enforce_policy_to_allow_traffic_only_from_a_pod_in_a_different_namespace_based_on_pod_selector_and_namespace_selector"),
    ("[SCTP] should support a 'default-deny-ingress' policy", "sctp::should_support_a_default_deny_ingress_policy"),
    ("[SCTP] should enforce policy based on Ports", "sctp::should_enforce_policy_based_on_ports"),
    ("[SCTP] should enforce policy to allow traffic only from a pod in a different namespace based on PodSelector and NamespaceSelector", "sctp::should_enforce_policy_to_allow_traffic_only_from_a_pod_in_a_different_namespace_based_on_pod_selector_and_namespace_selector"),
];

/// The nine pods and their namespaces, and the policies of one case.
struct Lab {
    model: PolicyModel,
}

impl Lab {
    fn new() -> Self {
        let mut model = PolicyModel::default();
        model.cluster_cidrs.push("10.244.0.0/16".parse().unwrap());
        model.nodes.insert("n1".into(), Ipv4Addr::new(192, 168, 0, 1));
        model.nodes.insert("n2".into(), Ipv4Addr::new(192, 168, 0, 2));
        let mut ports = Vec::new();
        for port in [80, 81] {
            for (proto, api) in [("tcp", "TCP"), ("udp", "UDP"), ("sctp", "SCTP")] {
                ports.push(json!({"name": format!("cont-{port}-{proto}"), "ports": [
                    {"name": format!("serve-{port}-{proto}"), "containerPort": port, "protocol": api}
                ]}));
            }
        }
        for (n, ns) in NAMESPACES.iter().enumerate() {
            let k8s: core::Namespace = serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap();
            model.add_namespace(Namespace::from_k8s(&k8s).unwrap());
            for (p, pod) in PODS.iter().enumerate() {
                let i = n * 3 + p;
                let node = 1 + i % 2;
                let k8s: core::Pod = serde_json::from_value(json!({
                    "metadata": {"namespace": ns, "name": pod, "labels": {"pod": pod}},
                    "spec": {"nodeName": format!("n{node}"), "containers": ports},
                    "status": {"podIP": format!("10.244.{node}.{}", 10 + i)}
                }))
                .unwrap();
                model.add_pod(Pod::from_k8s(&k8s).unwrap());
            }
        }
        Lab { model }
    }

    /// Creates or updates (same name) a policy from its API form.
    fn apply(&mut self, namespace: &str, name: &str, spec: Value) {
        let k8s: networking::NetworkPolicy =
            serde_json::from_value(json!({"metadata": {"namespace": namespace, "name": name}, "spec": spec}))
                .unwrap_or_else(|e| panic!("policy {namespace}/{name}: {e}"));
        let policy = NetworkPolicy::from_k8s(&k8s).unwrap_or_else(|e| panic!("policy {namespace}/{name}: {e}"));
        self.model.add_policy(policy);
    }

    fn delete_all_policies(&mut self) {
        let names: Vec<PolicyName> = self.model.policies.keys().cloned().collect();
        for name in names {
            self.model.remove_policy(&name);
        }
    }

    fn label_namespace(&mut self, namespace: &str, key: &str, value: &str) {
        let ns = self.model.namespaces.get_mut(namespace).unwrap();
        ns.labels.insert(key.into(), value.into());
    }

    fn label_pod(&mut self, namespace: &str, pod: &str, key: &str, value: &str) {
        let pod = self.model.pods.get_mut(&PodKey::new(namespace, pod)).unwrap();
        pod.labels.insert(key.into(), value.into());
    }

    fn ip(&self, namespace: &str, pod: &str) -> Ipv4Addr {
        self.model.pods[&PodKey::new(namespace, pod)].ips[0]
    }

    /// Upstream's ValidateOrFail: every ordered pair but loopback.
    fn validate(&self, protocol: Protocol, port: u16, expected: &Reachability) {
        let maps = ClusterMaps::compile(&self.model);
        let mut observed = BTreeMap::new();
        let mut wrong = Vec::new();
        for from in all_pods() {
            for to in all_pods() {
                let r =
                    reach(&maps, &self.model, &from, &to, protocol, port).expect("every pod has an address and a node");
                let got = r.allowed();
                if from != to && got != expected.get(&from, &to) {
                    let why = match &r {
                        Reach::Loopback => "loopback".to_string(),
                        Reach::Judged { egress, ingress } => {
                            format!("egress at {from}: {egress}; ingress at {to}: {ingress}")
                        }
                    };
                    wrong.push(format!("  {from} -> {to}: expected {}, observed {} ({why})", word(!got), word(got)));
                }
                observed.insert((from.clone(), to), got);
            }
        }
        if !wrong.is_empty() {
            let observed = Reachability { connected: observed };
            panic!(
                "{protocol:?}/{port}: {} of 72 pairs wrong\nexpected:\n{}observed:\n{}{}",
                wrong.len(),
                expected.table(),
                observed.table(),
                wrong.join("\n")
            );
        }
    }
}

fn word(connected: bool) -> &'static str {
    if connected {
        "connected"
    } else {
        "blocked"
    }
}

fn all_pods() -> impl Iterator<Item = PodKey> {
    NAMESPACES.iter().flat_map(|ns| PODS.iter().map(move |p| PodKey::new(ns, p)))
}

/// A side of `expect_peer`: every pod, a namespace's pods, or one pod.
#[derive(Clone, Copy)]
enum Sel {
    All,
    Ns(&'static str),
    Pod(&'static str, &'static str),
}

impl Sel {
    fn matches(self, pod: &PodKey) -> bool {
        match self {
            Sel::All => true,
            Sel::Ns(ns) => pod.namespace == ns,
            Sel::Pod(ns, name) => pod.namespace == ns && pod.name == name,
        }
    }
}

/// Upstream's reachability table: (from, to) → connected.
#[derive(Clone)]
struct Reachability {
    connected: BTreeMap<(PodKey, PodKey), bool>,
}

impl Reachability {
    fn all(connected: bool) -> Self {
        let connected = all_pods().flat_map(|from| all_pods().map(move |to| ((from.clone(), to), connected))).collect();
        Reachability { connected }
    }

    fn get(&self, from: &PodKey, to: &PodKey) -> bool {
        self.connected[&(from.clone(), to.clone())]
    }

    fn expect_peer(&mut self, from: Sel, to: Sel, connected: bool) {
        for ((f, t), v) in self.connected.iter_mut() {
            if from.matches(f) && to.matches(t) {
                *v = connected;
            }
        }
    }

    fn expect(&mut self, from: (&'static str, &'static str), to: (&'static str, &'static str), connected: bool) {
        self.expect_peer(Sel::Pod(from.0, from.1), Sel::Pod(to.0, to.1), connected);
    }

    fn expect_all_ingress(&mut self, to: (&'static str, &'static str), connected: bool) {
        self.expect_peer(Sel::All, Sel::Pod(to.0, to.1), connected);
    }

    fn expect_all_egress(&mut self, from: (&'static str, &'static str), connected: bool) {
        self.expect_peer(Sel::Pod(from.0, from.1), Sel::All, connected);
    }

    /// Rows: from; columns: to; `.` connected, `X` blocked, `-` loopback
    /// (not compared).
    fn table(&self) -> String {
        let mut s = String::from("      ");
        for to in all_pods() {
            let _ = write!(s, " {to}");
        }
        s.push('\n');
        for from in all_pods() {
            let _ = write!(s, "  {from}");
            for to in all_pods() {
                let c = if from == to {
                    '-'
                } else if self.get(&from, &to) {
                    '.'
                } else {
                    'X'
                };
                let _ = write!(s, "   {c}");
            }
            s.push('\n');
        }
        s
    }
}

const TCP: Protocol = Protocol::Tcp;
const UDP: Protocol = Protocol::Udp;
const SCTP: Protocol = Protocol::Sctp;

fn pod_label(pod: &str) -> Value {
    json!({"matchLabels": {"pod": pod}})
}

fn ns_named(ns: &str) -> Value {
    json!({"matchLabels": {NAMESPACE_NAME_LABEL: ns}})
}

fn ns_expression(op: &str, ns: &str) -> Value {
    json!({"matchExpressions": [{"key": NAMESPACE_NAME_LABEL, "operator": op, "values": [ns]}]})
}

/// `cidr/4` around `ip`, as upstream's makeLargeCIDRForIP.
fn large_cidr(ip: Ipv4Addr) -> String {
    format!("{}/4", Ipv4Addr::from(u32::from(ip) & 0xf000_0000))
}

// Ingress-only policies are written without policyTypes, as most are: the
// API defaults them to [Ingress]. Policies with egress say so.

#[test]
fn the_case_list_is_upstreams_48() {
    let mut names: Vec<&str> = UPSTREAM_CASES.iter().map(|c| c.0).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 48);
    let mut tests: Vec<&str> = UPSTREAM_CASES.iter().map(|c| c.1).collect();
    tests.sort();
    tests.dedup();
    assert_eq!(tests.len(), 48);
}

#[test]
fn should_support_a_default_deny_ingress_policy() {
    let mut lab = Lab::new();
    lab.apply("x", "deny-ingress", json!({"podSelector": {}}));
    let mut r = Reachability::all(true);
    r.expect_peer(Sel::All, Sel::Ns("x"), false);
    lab.validate(TCP, 80, &r);
}

#[test]
fn should_support_a_default_deny_all_policy() {
    let mut lab = Lab::new();
    lab.apply("x", "deny-all", json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}));
    let mut r = Reachability::all(true);
    r.expect_peer(Sel::All, Sel::Ns("x"), false);
    r.expect_peer(Sel::Ns("x"), Sel::All, false);
    lab.validate(TCP, 80, &r);
}

#[test]
fn should_enforce_policy_to_allow_traffic_from_pods_within_server_namespace_based_on_pod_selector() {
    let mut lab = Lab::new();
    lab.apply(
        "x",
        "x-a-allows-x-b",
        json!({"podSelector": pod_label("a"), "ingress": [{"from": [{"podSelector": pod_label("b")}]}]}),
    );
    let mut r = Reachability::all(true);
    r.expect_all_ingress(("x", "a"), false);
    r.expect(("x", "b"), ("x", "a"), true);
    lab.validate(TCP, 80, &r);
}

#[test]
fn should_enforce_policy_to_allow_ingress_traffic_for_a_target() {
    let mut lab = Lab::new();
    lab.apply("x", "deny-all", json!({"podSelector": {}}));
    lab.apply(
        "x",
        "allow-all-to-a",
        json!({"podSelector": pod_label("a"), "ingress": [{"from": [{"podSelector": {}, "namespaceSelector": {}}]}]}),
    );
    let mut r = Reachability::all(true);
    r.expect_peer(Sel::All, Sel::Ns("x"), false);
    r.expect_all_ingress(("x", "a"), true);
    lab.validate(TCP, 80, &r);
}

#[test]
fn should_enforce_policy_to_allow_ingress_traffic_from_pods_in_all_namespaces() {
    let mut lab = Lab::new();
    lab.apply(
        "x",
        "allow-from-another-ns",
        json!({"podSelector": pod_label("a"), "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {}}}]}]}),
    );
    lab.validate(TCP, 80, &Reachability::all(true));
}

#[test]
fn should_enforce_policy_to_allow_traffic_only_from_a_different_namespace_based_on_namespace_selector() {
    let mut lab = Lab::new();
    lab.apply(
        "x",
        "allow-client-a-via-ns-selector",
        json!({"podSelector": pod_label("a"), "ingress": [{"from": [{"namespaceSelector": ns_named("y")}]}]}),
    );
    let mut r = Reachability::all(true);
    r.expect_peer(Sel::Ns("x"), Sel::Pod("x", "a"), false);
    r.expect_peer(Sel::Ns("z"), Sel::Pod("x", "a"), false);
    lab.validate(TCP, 80, &r);
}

#[test]
fn should_enforce_policy_based_on_pod_selector_with_match_expressions() {
    let mut lab = Lab::new();
    let b = json!({"matchExpressions": [{"key": "pod", "operator": "In", "values": ["b"]}]});
    lab.apply(
        "x",
        "x-a-allows-x-b",
        json!({"podSelector": pod_label("a"), "ingress": [{"from": [{"podSelector": b}]}]}),
    );
    let mut r = Reachability::all(true);
    r.expect_all_ingress(("x", "a"), false);
    r.expect(("x", "b"), ("x", "a"), true);
    lab.validate(TCP, 80, &r);
}

#[test]
fn should_enforce_policy_based_on_namespace_selector_with_match_expressions() {
    let mut lab = Lab::new();
    lab.apply(
        "x",
        "allow-ns-y-match-selector",
        json!({"podSelector": pod_label("a"), "ingress": [{"from": [{"namespaceSelector": ns_expression("In", "y")}]}]}),
    );
    let mut r = Reachability::all(true);
    r.expect_peer(Sel::Ns("x"), Sel::Pod("x", "a"), false);
    r.expect_peer(Sel::Ns("z"), Sel::Pod("x", "a"), false);
    lab.validate(TCP, 80, &r);
}

#[test]
fn should_enforce_policy_based_on_pod_selector_or_namespace_selector() {
    let mut lab = Lab::new();
    lab.apply(
        "x",
        "allow-ns-y-match-selector",
        json!({"podSelector": pod_label("a"), "ingress": [{"from": [
            {"namespaceSelector": ns_expression("NotIn", "x")},
            {"podSelector": pod_label("b")}
        ]}]}),
    );
    let mut r = Reachability::all(true);
    r.expect(("x", "a"), ("x", "a"), false);
    r.expect(("x", "c"), ("x", "a"), false);
    lab.validate(TCP, 80, &r);
}

#[test]
fn should_enforce_policy_based_on_pod_selector_and_namespace_selector() {
    let mut lab = Lab::new();
    lab.apply(
        "x",
        "allow-ns-y-podselector-and-nsselector",
        json!({"podSelector": pod_label("a"), "ingress": [{"from": [
            {"namespaceSelector": ns_expression("NotIn", "x"), "podSelector": pod_label("b")}
        ]}]}),
    );
    let mut r = Reachability::all(true);
    r.expect_all_ingress(("x", "a"), false);
    r.expect(("y", "b"), ("x", "a"), true);
    r.expect(("z", "b"), ("x", "a"), true);
    lab.validate(TCP, 80, &r);
}

#[test]
fn should_enforce_policy_based_on_multiple_pod_selectors_and_namespace_selectors() {
    let mut lab = Lab::new();
    let b_or_c = json!({"matchExpressions": [{"key": "pod", "operator": "In", "values": ["b", "c"]}]});
    lab.apply(
        "x",
        "allow-ns-y-z-pod-b-c",
        json!({"podSelector": pod_label("a"), "ingress": [{"from": [
            {"namespaceSelector": ns_expression("NotIn", "x"), "podSelector": b_or_c}
        ]}]}),
    );
    let mut r = Reachability::all(true);
    r.expect_peer(Sel::Ns("x"), Sel::Pod("x", "a"), false);
    r.expect(("y", "a"), ("x", "a"), false);
    r.expect(("z", "a"), ("x", "a"), false);
    lab.validate(TCP, 80, &r);
}

#[test]
fn should_enforce_policy_based_on_any_pod_selectors() {
    let mut lab = Lab::new();
    lab.apply(
        "x",
        "allow-ns-x-pod-b-c",
        json!({"podSelector": pod_label("a"), "ingress": [{"from": [
            {"podSelector": pod_label("b")},
            {"podSelector": pod_label("c")}
        ]}]}),
    );
    let mut r = Reachability::all(true);
    r.expect_all_ingress(("x", "a"), false);
    r.expect(("x", "b"), ("x", "a"), true);
    r.expect(("x", "c"), ("x", "a"), true);
    lab.validate(TCP, 80, &r);
}

fn from_y_a_only(lab: &mut Lab) -> Reachability {
    lab.apply(
        "x",
        "allow-ns-y-pod-a-via-namespace-pod-selector",
        json!({"podSelector": pod_label("a"), "ingress": [{"from": [
            {"namespaceSelector": ns_named("y"), "podSelector": pod_label("a")}
        ]}]}),
    );
    let mut r = Reachability::all(true);
    r.expect_all_ingress(("x", "a"), false);
    r.expect(("y", "a"), ("x", "a"), true);
    r
}

#[test]
fn should_enforce_policy_to_allow_traffic_only_from_a_pod_in_a_different_namespace_based_on_pod_selector_and_namespace_selector(
) {
    let mut lab = Lab::new();
    let r = from_y_a_only(&mut lab);
    lab.validate(TCP, 80, &r);
}

/// x/a accepts `port`/`protocol` from namespace y only.
fn port_from_y(lab: &mut Lab, name: &str, port: Value, protocol: &str) -> Reachability {
    lab.apply(
        "x",
        name,
        json!({"podSelector": pod_label("a"), "ingress": [{
            "from": [{"namespaceSelector": ns_named("y")}],
            "ports": [{"port": port, "protocol": protocol}]
        }]}),
    );
    let mut r = Reachability::all(true);
    r.expect_peer(Sel::Ns("x"), Sel::Pod("x", "a"), false);
    r.expect_peer(Sel::Ns("y"), Sel::Pod("x", "a"), true);
    r.expect_peer(Sel::Ns("z"), Sel::Pod("x", "a"), false);
    r
}

#[test]
fn should_enforce_policy_based_on_ports() {
    let mut lab = Lab::new();
    let r = port_from_y(&mut lab, "allow-client-a-via-ns-selector", json!(81), "TCP");
    lab.validate(TCP, 81, &r);
}

#[test]
fn should_enforce_multiple_stacked_policies_with_overlapping_pod_selectors() {
    let mut lab = Lab::new();
    let allow = port_from_y(&mut lab, "allow-client-a-via-ns-selector", json!(81), "TCP");
    lab.validate(TCP, 81, &allow);
    let mut deny = Reachability::all(true);
    deny.expect_all_ingress(("x", "a"), false);
    lab.validate(TCP, 80, &deny);
    let allow80 = port_from_y(&mut lab, "allow-client-a-via-ns-selector-80", json!(80), "TCP");
    lab.validate(TCP, 80, &allow80);
    lab.validate(TCP, 81, &allow);
}

#[test]
fn should_support_allow_all_policy() {
    let mut lab = Lab::new();
    lab.apply("x", "allow-all", json!({"podSelector": {}, "ingress": [{}]}));
    lab.validate(TCP, 80, &Reachability::all(true));
    lab.validate(TCP, 81, &Reachability::all(true));
}

#[test]
fn should_allow_ingress_access_on_one_named_port() {
    let mut lab = Lab::new();
    lab.apply("x", "allow-all", json!({"podSelector": {}, "ingress": [{"ports": [{"port": "serve-81-tcp"}]}]}));
    lab.validate(TCP, 81, &Reachability::all(true));
    let mut r = Reachability::all(true);
    r.expect_peer(Sel::All, Sel::Ns("x"), false);
    lab.validate(TCP, 80, &r);
}

#[test]
fn should_allow_ingress_access_from_namespace_on_one_named_port() {
    let mut lab = Lab::new();
    let r = port_from_y(&mut lab, "allow-client-a-via-ns-selector-80", json!("serve-80-tcp"), "TCP");
    lab.validate(TCP, 80, &r);
    let mut fail = Reachability::all(true);
    fail.expect_all_ingress(("x", "a"), false);
    lab.validate(TCP, 81, &fail);
}

#[test]
fn should_allow_egress_access_on_one_named_port() {
    let mut lab = Lab::new();
    lab.apply(
        "x",
        "allow-egress",
        json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"ports": [{"port": "serve-80-tcp"}]}]}),
    );
    lab.validate(TCP, 80, &Reachability::all(true));
    let mut r = Reachability::all(true);
    r.expect_peer(Sel::Ns("x"), Sel::All, false);
    lab.validate(TCP, 81, &r);
}

#[test]
fn should_enforce_updated_policy() {
    let mut lab = Lab::new();
    lab.apply("x", "allow-all-mutate-to-deny-all", json!({"podSelector": {}, "ingress": [{}]}));
    lab.validate(TCP, 81, &Reachability::all(true));
    lab.apply("x", "allow-all-mutate-to-deny-all", json!({"podSelector": {}, "ingress": []}));
    let mut r = Reachability::all(true);
    r.expect_peer(Sel::All, Sel::Ns("x"), false);
    lab.validate(TCP, 81, &r);
}

#[test]
fn should_allow_ingress_access_from_updated_namespace() {
    let mut lab = Lab::new();
    lab.apply(
        "x",
        "allow-client-a-via-ns-selector",
        json!({"podSelector": pod_label("a"), "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns2": "updated"}}}]}]}),
    );
    let mut r = Reachability::all(true);
    r.expect_all_ingress(("x", "a"), false);
    lab.validate(TCP, 80, &r);
    lab.label_namespace("y", "ns2", "updated");
    r.expect_peer(Sel::Ns("y"), Sel::All, true);
    lab.validate(TCP, 80, &r);
}

#[test]
fn should_allow_ingress_access_from_updated_pod() {
    let mut lab = Lab::new();
    lab.apply(
        "x",
        "allow-client-a-via-pod-selector",
        json!({"podSelector": pod_label("a"), "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b", "pod2": "updated"}}}]}]}),
    );
    let mut r = Reachability::all(true);
    r.expect_all_ingress(("x", "a"), false);
    lab.validate(TCP, 80, &r);
    lab.label_pod("x", "b", "pod2", "updated");
    r.expect(("x", "b"), ("x", "a"), true);
    lab.validate(TCP, 80, &r);
}

#[test]
fn should_deny_ingress_from_pods_on_other_namespaces() {
    let mut lab = Lab::new();
    lab.apply(
        "x",
        "deny-empty-policy",
        json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchLabels": {}}}]}]}),
    );
    let mut r = Reachability::all(true);
    r.expect_peer(Sel::Ns("y"), Sel::Ns("x"), false);
    r.expect_peer(Sel::Ns("z"), Sel::Ns("x"), false);
    lab.validate(TCP, 80, &r);
}

#[test]
fn should_deny_ingress_access_to_updated_pod() {
    let mut lab = Lab::new();
    lab.apply("x", "deny-ingress-via-label-selector", json!({"podSelector": {"matchLabels": {"target": "isolated"}}}));
    lab.validate(TCP, 80, &Reachability::all(true));
    lab.label_pod("x", "a", "target", "isolated");
    let mut r = Reachability::all(true);
    r.expect_all_ingress(("x", "a"), false);
    lab.validate(TCP, 80, &r);
}

#[test]
fn should_deny_egress_from_pods_based_on_pod_selector() {
    let mut lab = Lab::new();
    lab.apply("x", "deny-egress-pod-a", json!({"podSelector": pod_label("a"), "policyTypes": ["Egress"]}));
    let mut r = Reachability::all(true);
    r.expect_all_egress(("x", "a"), false);
    lab.validate(TCP, 80, &r);
}

#[test]
fn should_deny_egress_from_all_pods_in_a_namespace() {
    let mut lab = Lab::new();
    lab.apply("x", "deny-egress-ns-x", json!({"podSelector": {}, "policyTypes": ["Egress"]}));
    let mut r = Reachability::all(true);
    r.expect_peer(Sel::Ns("x"), Sel::All, false);
    lab.validate(TCP, 80, &r);
}

#[test]
fn should_work_with_ingress_egress_specified_together() {
    let mut lab = Lab::new();
    lab.apply(
        "x",
        "allow-client-a-via-pod-selector",
        json!({
            "podSelector": pod_label("a"),
            "policyTypes": ["Egress", "Ingress"],
            "ingress": [{"from": [{"podSelector": pod_label("b")}]}],
            "egress": [{"ports": [{"port": 80}]}]
        }),
    );
    let mut r80 = Reachability::all(true);
    r80.expect_all_ingress(("x", "a"), false);
    r80.expect(("x", "b"), ("x", "a"), true);
    lab.validate(TCP, 80, &r80);
    let mut r81 = Reachability::all(true);
    r81.expect_all_ingress(("x", "a"), false);
    r81.expect_all_egress(("x", "a"), false);
    r81.expect(("x", "b"), ("x", "a"), true);
    lab.validate(TCP, 81, &r81);
}

#[test]
fn should_support_denying_of_egress_traffic_on_the_client_side_even_if_the_server_explicitly_allows_this_traffic() {
    let mut lab = Lab::new();
    lab.apply(
        "x",
        "allow-to-ns-y-pod-a",
        json!({"podSelector": pod_label("a"), "policyTypes": ["Egress"], "egress": [{"to": [
            {"namespaceSelector": ns_named("y"), "podSelector": pod_label("a")}
        ]}]}),
    );
    let from_x_a = json!([{"from": [{"namespaceSelector": ns_named("x"), "podSelector": pod_label("a")}]}]);
    lab.apply("y", "allow-from-xa-on-ya-match-selector", json!({"podSelector": pod_label("a"), "ingress": from_x_a}));
    lab.apply("y", "allow-from-xa-on-yb-match-selector", json!({"podSelector": pod_label("b"), "ingress": from_x_a}));
    let mut r = Reachability::all(true);
    r.expect_peer(Sel::Pod("x", "a"), Sel::All, false);
    r.expect_peer(Sel::All, Sel::Pod("y", "a"), false);
    r.expect_peer(Sel::Pod("x", "a"), Sel::Pod("y", "a"), true);
    r.expect_peer(Sel::All, Sel::Pod("y", "b"), false);
    lab.validate(TCP, 80, &r);
}

#[test]
fn should_enforce_egress_policy_allowing_traffic_to_a_server_in_a_different_namespace_based_on_pod_selector_and_namespace_selector(
) {
    let mut lab = Lab::new();
    lab.apply(
        "x",
        "allow-to-ns-y-pod-a",
        json!({"podSelector": pod_label("a"), "policyTypes": ["Egress"], "egress": [{"to": [
            {"namespaceSelector": ns_named("y"), "podSelector": pod_label("a")}
        ]}]}),
    );
    let mut r = Reachability::all(true);
    r.expect_all_egress(("x", "a"), false);
    r.expect(("x", "a"), ("y", "a"), true);
    lab.validate(TCP, 80, &r);
}

#[test]
fn should_enforce_ingress_policy_allowing_any_port_traffic_to_a_server_on_a_specific_protocol() {
    let mut lab = Lab::new();
    lab.apply(
        "x",
        "allow-ingress-by-proto",
        json!({"podSelector": pod_label("a"), "ingress": [{"ports": [{"protocol": "TCP"}]}]}),
    );
    lab.validate(TCP, 80, &Reachability::all(true));
    let mut r = Reachability::all(true);
    r.expect_peer(Sel::All, Sel::Pod("x", "a"), false);
    lab.validate(UDP, 80, &r);
}

#[test]
fn should_enforce_multiple_ingress_policies_with_ingress_allow_all_policy_taking_precedence() {
    let mut lab = Lab::new();
    lab.apply("x", "allow-ingress-port-80", json!({"podSelector": {}, "ingress": [{"ports": [{"port": 80}]}]}));
    let mut r = Reachability::all(true);
    r.expect_peer(Sel::All, Sel::Ns("x"), false);
    lab.validate(TCP, 81, &r);
    lab.apply("x", "allow-ingress", json!({"podSelector": {}, "ingress": [{}]}));
    lab.validate(TCP, 81, &Reachability::all(true));
}

#[test]
fn should_enforce_multiple_egress_policies_with_egress_allow_all_policy_taking_precedence() {
    let mut lab = Lab::new();
    lab.apply(
        "x",
        "allow-egress-port-80",
        json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"ports": [{"port": 80}]}]}),
    );
    let mut r = Reachability::all(true);
    r.expect_peer(Sel::Ns("x"), Sel::All, false);
    lab.validate(TCP, 81, &r);
    lab.apply("x", "allow-egress", json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{}]}));
    lab.validate(TCP, 81, &Reachability::all(true));
}

#[test]
fn should_stop_enforcing_policies_after_they_are_deleted() {
    let mut lab = Lab::new();
    lab.apply("x", "deny-all", json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}));
    let mut r = Reachability::all(true);
    r.expect_peer(Sel::Ns("x"), Sel::All, false);
    r.expect_peer(Sel::All, Sel::Ns("x"), false);
    lab.validate(TCP, 80, &r);
    lab.delete_all_policies();
    lab.validate(TCP, 80, &Reachability::all(true));
}

fn egress_to_block(lab: &mut Lab, block: Value) {
    lab.apply(
        "x",
        "allow-client-a-via-cidr-egress-rule",
        json!({"podSelector": pod_label("a"), "policyTypes": ["Egress"], "egress": [{"to": [{"ipBlock": block}]}]}),
    );
}

#[test]
fn should_allow_egress_access_to_server_in_cidr_block() {
    let mut lab = Lab::new();
    let y_b = lab.ip("y", "b");
    egress_to_block(&mut lab, json!({"cidr": format!("{y_b}/32")}));
    let mut r = Reachability::all(true);
    r.expect_all_egress(("x", "a"), false);
    r.expect(("x", "a"), ("y", "b"), true);
    lab.validate(TCP, 80, &r);
}

#[test]
fn should_enforce_except_clause_while_egress_access_to_server_in_cidr_block() {
    let mut lab = Lab::new();
    let x_b = lab.ip("x", "b");
    egress_to_block(&mut lab, json!({"cidr": large_cidr(x_b), "except": [format!("{x_b}/32")]}));
    let mut r = Reachability::all(true);
    r.expect(("x", "a"), ("x", "b"), false);
    lab.validate(TCP, 80, &r);
}

#[test]
fn should_ensure_an_ip_overlapping_both_ip_block_cidr_and_ip_block_except_is_allowed() {
    let mut lab = Lab::new();
    let x_b = lab.ip("x", "b");
    egress_to_block(&mut lab, json!({"cidr": large_cidr(x_b), "except": [format!("{x_b}/32")]}));
    let mut r = Reachability::all(true);
    r.expect(("x", "a"), ("x", "b"), false);
    lab.validate(TCP, 80, &r);
    // Same name: an update that replaces the except with x/b alone.
    egress_to_block(&mut lab, json!({"cidr": format!("{x_b}/32")}));
    let mut allow = Reachability::all(true);
    allow.expect_all_egress(("x", "a"), false);
    allow.expect(("x", "a"), ("x", "b"), true);
    lab.validate(TCP, 80, &allow);
}

#[test]
fn should_enforce_policies_to_check_ingress_and_egress_policies_can_be_controlled_independently_based_on_pod_selector()
{
    let mut lab = Lab::new();
    lab.apply(
        "x",
        "allow-egress-for-target",
        json!({"podSelector": pod_label("a"), "policyTypes": ["Egress"], "egress": [{}]}),
    );
    lab.validate(TCP, 80, &Reachability::all(true));
    lab.apply("x", "deny-ingress-via-label-selector", json!({"podSelector": pod_label("a")}));
    let mut r = Reachability::all(true);
    r.expect_all_ingress(("x", "a"), false);
    lab.validate(TCP, 80, &r);
}

#[test]
fn should_not_mistakenly_treat_protocol_sctp_as_protocol_tcp_even_if_the_plugin_doesnt_support_sctp() {
    let mut lab = Lab::new();
    lab.apply("x", "deny-ingress", json!({"podSelector": {}}));
    lab.apply(
        "x",
        "allow-only-sctp-ingress-on-port-81",
        json!({"podSelector": pod_label("a"), "ingress": [{"ports": [{"port": 81, "protocol": "SCTP"}]}]}),
    );
    let mut r = Reachability::all(true);
    r.expect_peer(Sel::All, Sel::Ns("x"), false);
    lab.validate(TCP, 81, &r);
}

#[test]
fn should_properly_isolate_pods_that_are_selected_by_a_policy_allowing_sctp_even_if_the_plugin_doesnt_support_sctp() {
    let mut lab = Lab::new();
    lab.apply(
        "x",
        "allow-only-sctp-ingress-on-port-80",
        json!({"podSelector": pod_label("a"), "ingress": [{"ports": [{"port": 80, "protocol": "SCTP"}]}]}),
    );
    let mut r = Reachability::all(true);
    r.expect_all_ingress(("x", "a"), false);
    lab.validate(TCP, 81, &r);
}

#[test]
fn should_not_allow_access_by_tcp_when_a_policy_specifies_only_udp() {
    let mut lab = Lab::new();
    lab.apply(
        "x",
        "allow-only-udp-ingress-on-port-81",
        json!({"podSelector": pod_label("a"), "ingress": [{"ports": [{"port": 81, "protocol": "UDP"}]}]}),
    );
    let mut r = Reachability::all(true);
    r.expect_all_ingress(("x", "a"), false);
    lab.validate(TCP, 81, &r);
}

#[test]
fn should_enforce_policy_to_allow_traffic_based_on_namespace_selector_with_match_labels_using_default_ns_label() {
    let mut lab = Lab::new();
    lab.apply(
        "x",
        "allow-client-a-via-ns-selector-for-immutable-ns-label",
        json!({"podSelector": pod_label("a"), "ingress": [{"from": [{"namespaceSelector": ns_named("y")}]}]}),
    );
    let mut r = Reachability::all(true);
    r.expect_peer(Sel::Ns("x"), Sel::Pod("x", "a"), false);
    r.expect_peer(Sel::Ns("z"), Sel::Pod("x", "a"), false);
    lab.validate(TCP, 80, &r);
}

#[test]
fn should_enforce_policy_based_on_namespace_selector_with_match_expressions_using_default_ns_label() {
    let mut lab = Lab::new();
    lab.apply(
        "x",
        "allow-ns-y-match-selector-for-immutable-ns-label",
        json!({"podSelector": pod_label("a"), "policyTypes": ["Egress"], "egress": [{"to": [
            {"namespaceSelector": ns_expression("NotIn", "y")}
        ]}]}),
    );
    let mut r = Reachability::all(true);
    r.expect_peer(Sel::Pod("x", "a"), Sel::Ns("y"), false);
    lab.validate(TCP, 80, &r);
}

/// The three cases upstream repeats per protocol ("using UDP", "using
/// SCTP"); upstream probes SCTP with real sockets, the datapath tests will
/// use crafted packets (this kernel has no SCTP sockets).
fn default_deny_ingress(protocol: Protocol) {
    let mut lab = Lab::new();
    lab.apply("x", "deny-all", json!({"podSelector": {}}));
    let mut r = Reachability::all(true);
    r.expect_peer(Sel::All, Sel::Ns("x"), false);
    lab.validate(protocol, 80, &r);
}

fn ports_from_y(protocol: Protocol, api: &str) {
    let mut lab = Lab::new();
    let r = port_from_y(&mut lab, "allow-ingress-on-port-81-ns-x", json!(81), api);
    lab.validate(protocol, 81, &r);
    // the same port over TCP is not opened by a UDP or SCTP rule
    let mut tcp = Reachability::all(true);
    tcp.expect_all_ingress(("x", "a"), false);
    lab.validate(TCP, 81, &tcp);
}

fn pod_in_other_namespace(protocol: Protocol) {
    let mut lab = Lab::new();
    let r = from_y_a_only(&mut lab);
    lab.validate(protocol, 80, &r);
}

mod udp {
    use super::*;

    #[test]
    fn should_support_a_default_deny_ingress_policy() {
        default_deny_ingress(UDP);
    }

    #[test]
    fn should_enforce_policy_based_on_ports() {
        ports_from_y(UDP, "UDP");
    }

    #[test]
    fn should_enforce_policy_to_allow_traffic_only_from_a_pod_in_a_different_namespace_based_on_pod_selector_and_namespace_selector(
    ) {
        pod_in_other_namespace(UDP);
    }
}

mod sctp {
    use super::*;

    #[test]
    fn should_support_a_default_deny_ingress_policy() {
        default_deny_ingress(SCTP);
    }

    #[test]
    fn should_enforce_policy_based_on_ports() {
        ports_from_y(SCTP, "SCTP");
    }

    #[test]
    fn should_enforce_policy_to_allow_traffic_only_from_a_pod_in_a_different_namespace_based_on_pod_selector_and_namespace_selector(
    ) {
        pod_in_other_namespace(SCTP);
    }
}
