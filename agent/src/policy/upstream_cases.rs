//! The Kubernetes e2e NetworkPolicy suite's 48 cases
//! (`test/e2e/network/netpol/network_policy.go`), written once and run on
//! two labs: the pure core here (`ModelLab` in the tests below: policies
//! converted by `model.rs`, verdicts from `evaluate::reach`) and the real
//! datapath in the truth-table lab (`tests/src/netpol/`: real pods, real
//! packets). Both implement [`CaseLab`]; a case applies policies and edits
//! labels as the upstream case does, builds the expected 9×9 matrix as
//! upstream's reachability table does, and asks the lab to validate every
//! ordered pair but loopback (upstream ignores it too), which prints both
//! matrices on a mismatch.
//!
//! Both labs are dual-stack (issue 28): `validate` checks the matrix over
//! IPv4 and over IPv6, the same expected matrix for both. The three ipBlock
//! cases write each block twice, the upstream block around the pod's IPv4
//! address and its IPv6 twin around the pod's IPv6 address (what upstream
//! writes on an IPv6 cluster: `/128` for a host, the `/4` around it for
//! makeLargeCIDRForIP), as two peers of one rule; an IPv4 block never
//! matches an IPv6 peer nor the other way round, so each family's verdicts
//! are those of its own block and the matrix is the same.
//!
//! The world both labs model is upstream's: namespaces x, y, z × pods a, b,
//! c (label `pod: <name>`), every pod serving 80 and 81 over TCP, UDP and
//! SCTP with named ports `serve-<port>-<proto>` (containers
//! `cont-<port>-<proto>`), spread over two nodes (so each verdict is judged
//! by the source's node for egress and the destination's for ingress, with
//! node-local identities).
//!
//! Upstream now starts each case with only the pods it needs; these use all
//! nine in every case (the suite's earlier, full form), which only adds
//! pairs. Policy updates, deletions and label changes are steps between two
//! matrices; what only the lab can check is how fast and for which
//! connections a change takes effect, probing through Services, and SCTP
//! on the wire.
use std::{
    collections::BTreeMap,
    fmt::{self, Write as _},
    net::{Ipv4Addr, Ipv6Addr},
};

use serde_json::{json, Value};

use super::model::{PodKey, Protocol, NAMESPACE_NAME_LABEL};

pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
pub const PODS: [&str; 3] = ["a", "b", "c"];

/// Where a case runs: the pure model or the lab. Steps are the upstream
/// case's; `validate` panics with both matrices when a pair differs.
pub trait CaseLab {
    /// Creates or updates (same name) a policy from its API form (`spec`).
    fn apply(&mut self, namespace: &str, name: &str, spec: Value);
    fn delete_all_policies(&mut self);
    fn label_namespace(&mut self, namespace: &str, key: &str, value: &str);
    fn label_pod(&mut self, namespace: &str, pod: &str, key: &str, value: &str);
    /// The pod's IPv4 address (the ipBlock cases name them).
    fn ip(&self, namespace: &str, pod: &str) -> Ipv4Addr;
    /// The pod's IPv6 address (the ipBlock cases' IPv6 twins name them).
    fn ip6(&self, namespace: &str, pod: &str) -> Ipv6Addr;
    /// Upstream's ValidateOrFail: every ordered pair but loopback, on
    /// `protocol`/`port`, over both families (`Family`), each with
    /// `expected`.
    fn validate(&mut self, protocol: Protocol, port: u16, expected: &Reachability);
}

/// An address family a matrix is probed over; failure messages name it
/// ("x/a -> y/b over V6").
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const BOTH: [Family; 2] = [Family::V4, Family::V6];
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "V4",
            Family::V6 => "V6",
        })
    }
}

/// One upstream case: its Ginkgo name, the name it has here (the model's
/// test and the lab's trial), the protocol it probes, and its steps.
#[derive(Clone, Copy)]
pub struct Case {
    pub upstream: &'static str,
    pub name: &'static str,
    pub protocol: Protocol,
    pub run: fn(&mut dyn CaseLab),
}

/// Every upstream case, in upstream's order.
pub const CASES: [Case; 48] = [
    Case {
        upstream: "should support a 'default-deny-ingress' policy",
        name: "should_support_a_default_deny_ingress_policy",
        protocol: Protocol::Tcp,
        run: should_support_a_default_deny_ingress_policy,
    },
    Case {
        upstream: "should support a 'default-deny-all' policy",
        name: "should_support_a_default_deny_all_policy",
        protocol: Protocol::Tcp,
        run: should_support_a_default_deny_all_policy,
    },
    Case {
        upstream: "should enforce policy to allow traffic from pods within server namespace based on PodSelector",
        name: "should_enforce_policy_to_allow_traffic_from_pods_within_server_namespace_based_on_pod_selector",
        protocol: Protocol::Tcp,
        run: should_enforce_policy_to_allow_traffic_from_pods_within_server_namespace_based_on_pod_selector,
    },
    Case {
        upstream: "should enforce policy to allow ingress traffic for a target",
        name: "should_enforce_policy_to_allow_ingress_traffic_for_a_target",
        protocol: Protocol::Tcp,
        run: should_enforce_policy_to_allow_ingress_traffic_for_a_target,
    },
    Case {
        upstream: "should enforce policy to allow ingress traffic from pods in all namespaces",
        name: "should_enforce_policy_to_allow_ingress_traffic_from_pods_in_all_namespaces",
        protocol: Protocol::Tcp,
        run: should_enforce_policy_to_allow_ingress_traffic_from_pods_in_all_namespaces,
    },
    Case {
        upstream: "should enforce policy to allow traffic only from a different namespace, based on NamespaceSelector",
        name: "should_enforce_policy_to_allow_traffic_only_from_a_different_namespace_based_on_namespace_selector",
        protocol: Protocol::Tcp,
        run: should_enforce_policy_to_allow_traffic_only_from_a_different_namespace_based_on_namespace_selector,
    },
    Case {
        upstream: "should enforce policy based on PodSelector with MatchExpressions",
        name: "should_enforce_policy_based_on_pod_selector_with_match_expressions",
        protocol: Protocol::Tcp,
        run: should_enforce_policy_based_on_pod_selector_with_match_expressions,
    },
    Case {
        upstream: "should enforce policy based on NamespaceSelector with MatchExpressions",
        name: "should_enforce_policy_based_on_namespace_selector_with_match_expressions",
        protocol: Protocol::Tcp,
        run: should_enforce_policy_based_on_namespace_selector_with_match_expressions,
    },
    Case {
        upstream: "should enforce policy based on PodSelector or NamespaceSelector",
        name: "should_enforce_policy_based_on_pod_selector_or_namespace_selector",
        protocol: Protocol::Tcp,
        run: should_enforce_policy_based_on_pod_selector_or_namespace_selector,
    },
    Case {
        upstream: "should enforce policy based on PodSelector and NamespaceSelector",
        name: "should_enforce_policy_based_on_pod_selector_and_namespace_selector",
        protocol: Protocol::Tcp,
        run: should_enforce_policy_based_on_pod_selector_and_namespace_selector,
    },
    Case {
        upstream: "should enforce policy based on Multiple PodSelectors and NamespaceSelectors",
        name: "should_enforce_policy_based_on_multiple_pod_selectors_and_namespace_selectors",
        protocol: Protocol::Tcp,
        run: should_enforce_policy_based_on_multiple_pod_selectors_and_namespace_selectors,
    },
    Case {
        upstream: "should enforce policy based on any PodSelectors",
        name: "should_enforce_policy_based_on_any_pod_selectors",
        protocol: Protocol::Tcp,
        run: should_enforce_policy_based_on_any_pod_selectors,
    },
    Case {
        upstream: "should enforce policy to allow traffic only from a pod in a different namespace based on PodSelector and NamespaceSelector",
        name: "should_enforce_policy_to_allow_traffic_only_from_a_pod_in_a_different_namespace_based_on_pod_selector_and_namespace_selector",
        protocol: Protocol::Tcp,
        run: should_enforce_policy_to_allow_traffic_only_from_a_pod_in_a_different_namespace_based_on_pod_selector_and_namespace_selector,
    },
    Case {
        upstream: "should enforce policy based on Ports",
        name: "should_enforce_policy_based_on_ports",
        protocol: Protocol::Tcp,
        run: should_enforce_policy_based_on_ports,
    },
    Case {
        upstream: "should enforce multiple, stacked policies with overlapping podSelectors",
        name: "should_enforce_multiple_stacked_policies_with_overlapping_pod_selectors",
        protocol: Protocol::Tcp,
        run: should_enforce_multiple_stacked_policies_with_overlapping_pod_selectors,
    },
    Case {
        upstream: "should support allow-all policy",
        name: "should_support_allow_all_policy",
        protocol: Protocol::Tcp,
        run: should_support_allow_all_policy,
    },
    Case {
        upstream: "should allow ingress access on one named port",
        name: "should_allow_ingress_access_on_one_named_port",
        protocol: Protocol::Tcp,
        run: should_allow_ingress_access_on_one_named_port,
    },
    Case {
        upstream: "should allow ingress access from namespace on one named port",
        name: "should_allow_ingress_access_from_namespace_on_one_named_port",
        protocol: Protocol::Tcp,
        run: should_allow_ingress_access_from_namespace_on_one_named_port,
    },
    Case {
        upstream: "should allow egress access on one named port",
        name: "should_allow_egress_access_on_one_named_port",
        protocol: Protocol::Tcp,
        run: should_allow_egress_access_on_one_named_port,
    },
    Case {
        upstream: "should enforce updated policy",
        name: "should_enforce_updated_policy",
        protocol: Protocol::Tcp,
        run: should_enforce_updated_policy,
    },
    Case {
        upstream: "should allow ingress access from updated namespace",
        name: "should_allow_ingress_access_from_updated_namespace",
        protocol: Protocol::Tcp,
        run: should_allow_ingress_access_from_updated_namespace,
    },
    Case {
        upstream: "should allow ingress access from updated pod",
        name: "should_allow_ingress_access_from_updated_pod",
        protocol: Protocol::Tcp,
        run: should_allow_ingress_access_from_updated_pod,
    },
    Case {
        upstream: "should deny ingress from pods on other namespaces",
        name: "should_deny_ingress_from_pods_on_other_namespaces",
        protocol: Protocol::Tcp,
        run: should_deny_ingress_from_pods_on_other_namespaces,
    },
    Case {
        upstream: "should deny ingress access to updated pod",
        name: "should_deny_ingress_access_to_updated_pod",
        protocol: Protocol::Tcp,
        run: should_deny_ingress_access_to_updated_pod,
    },
    Case {
        upstream: "should deny egress from pods based on PodSelector",
        name: "should_deny_egress_from_pods_based_on_pod_selector",
        protocol: Protocol::Tcp,
        run: should_deny_egress_from_pods_based_on_pod_selector,
    },
    Case {
        upstream: "should deny egress from all pods in a namespace",
        name: "should_deny_egress_from_all_pods_in_a_namespace",
        protocol: Protocol::Tcp,
        run: should_deny_egress_from_all_pods_in_a_namespace,
    },
    Case {
        upstream: "should work with Ingress, Egress specified together",
        name: "should_work_with_ingress_egress_specified_together",
        protocol: Protocol::Tcp,
        run: should_work_with_ingress_egress_specified_together,
    },
    Case {
        upstream: "should support denying of egress traffic on the client side (even if the server explicitly allows this traffic)",
        name: "should_support_denying_of_egress_traffic_on_the_client_side_even_if_the_server_explicitly_allows_this_traffic",
        protocol: Protocol::Tcp,
        run: should_support_denying_of_egress_traffic_on_the_client_side_even_if_the_server_explicitly_allows_this_traffic,
    },
    Case {
        upstream: "should enforce egress policy allowing traffic to a server in a different namespace based on PodSelector and NamespaceSelector",
        name: "should_enforce_egress_policy_allowing_traffic_to_a_server_in_a_different_namespace_based_on_pod_selector_and_namespace_selector",
        protocol: Protocol::Tcp,
        run: should_enforce_egress_policy_allowing_traffic_to_a_server_in_a_different_namespace_based_on_pod_selector_and_namespace_selector,
    },
    Case {
        upstream: "should enforce ingress policy allowing any port traffic to a server on a specific protocol",
        name: "should_enforce_ingress_policy_allowing_any_port_traffic_to_a_server_on_a_specific_protocol",
        protocol: Protocol::Tcp,
        run: should_enforce_ingress_policy_allowing_any_port_traffic_to_a_server_on_a_specific_protocol,
    },
    Case {
        upstream: "should enforce multiple ingress policies with ingress allow-all policy taking precedence",
        name: "should_enforce_multiple_ingress_policies_with_ingress_allow_all_policy_taking_precedence",
        protocol: Protocol::Tcp,
        run: should_enforce_multiple_ingress_policies_with_ingress_allow_all_policy_taking_precedence,
    },
    Case {
        upstream: "should enforce multiple egress policies with egress allow-all policy taking precedence",
        name: "should_enforce_multiple_egress_policies_with_egress_allow_all_policy_taking_precedence",
        protocol: Protocol::Tcp,
        run: should_enforce_multiple_egress_policies_with_egress_allow_all_policy_taking_precedence,
    },
    Case {
        upstream: "should stop enforcing policies after they are deleted",
        name: "should_stop_enforcing_policies_after_they_are_deleted",
        protocol: Protocol::Tcp,
        run: should_stop_enforcing_policies_after_they_are_deleted,
    },
    Case {
        upstream: "should allow egress access to server in CIDR block",
        name: "should_allow_egress_access_to_server_in_cidr_block",
        protocol: Protocol::Tcp,
        run: should_allow_egress_access_to_server_in_cidr_block,
    },
    Case {
        upstream: "should enforce except clause while egress access to server in CIDR block",
        name: "should_enforce_except_clause_while_egress_access_to_server_in_cidr_block",
        protocol: Protocol::Tcp,
        run: should_enforce_except_clause_while_egress_access_to_server_in_cidr_block,
    },
    Case {
        upstream: "should ensure an IP overlapping both IPBlock.CIDR and IPBlock.Except is allowed",
        name: "should_ensure_an_ip_overlapping_both_ip_block_cidr_and_ip_block_except_is_allowed",
        protocol: Protocol::Tcp,
        run: should_ensure_an_ip_overlapping_both_ip_block_cidr_and_ip_block_except_is_allowed,
    },
    Case {
        upstream: "should enforce policies to check ingress and egress policies can be controlled independently based on PodSelector",
        name: "should_enforce_policies_to_check_ingress_and_egress_policies_can_be_controlled_independently_based_on_pod_selector",
        protocol: Protocol::Tcp,
        run: should_enforce_policies_to_check_ingress_and_egress_policies_can_be_controlled_independently_based_on_pod_selector,
    },
    Case {
        upstream: "should not mistakenly treat 'protocol: SCTP' as 'protocol: TCP', even if the plugin doesn't support SCTP",
        name: "should_not_mistakenly_treat_protocol_sctp_as_protocol_tcp_even_if_the_plugin_doesnt_support_sctp",
        protocol: Protocol::Tcp,
        run: should_not_mistakenly_treat_protocol_sctp_as_protocol_tcp_even_if_the_plugin_doesnt_support_sctp,
    },
    Case {
        upstream: "should properly isolate pods that are selected by a policy allowing SCTP, even if the plugin doesn't support SCTP",
        name: "should_properly_isolate_pods_that_are_selected_by_a_policy_allowing_sctp_even_if_the_plugin_doesnt_support_sctp",
        protocol: Protocol::Tcp,
        run: should_properly_isolate_pods_that_are_selected_by_a_policy_allowing_sctp_even_if_the_plugin_doesnt_support_sctp,
    },
    Case {
        upstream: "should not allow access by TCP when a policy specifies only UDP",
        name: "should_not_allow_access_by_tcp_when_a_policy_specifies_only_udp",
        protocol: Protocol::Tcp,
        run: should_not_allow_access_by_tcp_when_a_policy_specifies_only_udp,
    },
    Case {
        upstream: "should enforce policy to allow traffic based on NamespaceSelector with MatchLabels using default ns label",
        name: "should_enforce_policy_to_allow_traffic_based_on_namespace_selector_with_match_labels_using_default_ns_label",
        protocol: Protocol::Tcp,
        run: should_enforce_policy_to_allow_traffic_based_on_namespace_selector_with_match_labels_using_default_ns_label,
    },
    Case {
        upstream: "should enforce policy based on NamespaceSelector with MatchExpressions using default ns label",
        name: "should_enforce_policy_based_on_namespace_selector_with_match_expressions_using_default_ns_label",
        protocol: Protocol::Tcp,
        run: should_enforce_policy_based_on_namespace_selector_with_match_expressions_using_default_ns_label,
    },
    Case {
        upstream: "[UDP] should support a 'default-deny-ingress' policy",
        name: "udp::should_support_a_default_deny_ingress_policy",
        protocol: Protocol::Udp,
        run: udp::should_support_a_default_deny_ingress_policy,
    },
    Case {
        upstream: "[UDP] should enforce policy based on Ports",
        name: "udp::should_enforce_policy_based_on_ports",
        protocol: Protocol::Udp,
        run: udp::should_enforce_policy_based_on_ports,
    },
    Case {
        upstream: "[UDP] should enforce policy to allow traffic only from a pod in a different namespace based on PodSelector and NamespaceSelector",
        name: "udp::should_enforce_policy_to_allow_traffic_only_from_a_pod_in_a_different_namespace_based_on_pod_selector_and_namespace_selector",
        protocol: Protocol::Udp,
        run: udp::should_enforce_policy_to_allow_traffic_only_from_a_pod_in_a_different_namespace_based_on_pod_selector_and_namespace_selector,
    },
    Case {
        upstream: "[SCTP] should support a 'default-deny-ingress' policy",
        name: "sctp::should_support_a_default_deny_ingress_policy",
        protocol: Protocol::Sctp,
        run: sctp::should_support_a_default_deny_ingress_policy,
    },
    Case {
        upstream: "[SCTP] should enforce policy based on Ports",
        name: "sctp::should_enforce_policy_based_on_ports",
        protocol: Protocol::Sctp,
        run: sctp::should_enforce_policy_based_on_ports,
    },
    Case {
        upstream: "[SCTP] should enforce policy to allow traffic only from a pod in a different namespace based on PodSelector and NamespaceSelector",
        name: "sctp::should_enforce_policy_to_allow_traffic_only_from_a_pod_in_a_different_namespace_based_on_pod_selector_and_namespace_selector",
        protocol: Protocol::Sctp,
        run: sctp::should_enforce_policy_to_allow_traffic_only_from_a_pod_in_a_different_namespace_based_on_pod_selector_and_namespace_selector,
    },
];

/// "connected" or "blocked".
pub fn word(connected: bool) -> &'static str {
    if connected {
        "connected"
    } else {
        "blocked"
    }
}

/// The nine pods, namespace by namespace: the matrices' order.
pub fn all_pods() -> impl Iterator<Item = PodKey> {
    NAMESPACES.iter().flat_map(|ns| PODS.iter().map(move |p| PodKey::new(ns, p)))
}

/// A side of `expect_peer`: every pod, a namespace's pods, or one pod.
#[derive(Clone, Copy)]
pub enum Sel {
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
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reachability {
    connected: BTreeMap<(PodKey, PodKey), bool>,
}

impl Reachability {
    pub fn all(connected: bool) -> Self {
        let connected = all_pods().flat_map(|from| all_pods().map(move |to| ((from.clone(), to), connected))).collect();
        Reachability { connected }
    }

    /// An observed table: `connected(from, to)` for every ordered pair.
    pub fn from_fn(mut connected: impl FnMut(&PodKey, &PodKey) -> bool) -> Self {
        let mut r = Reachability::all(false);
        for ((from, to), v) in r.connected.iter_mut() {
            *v = connected(from, to);
        }
        r
    }

    pub fn get(&self, from: &PodKey, to: &PodKey) -> bool {
        self.connected[&(from.clone(), to.clone())]
    }

    /// Every ordered pair but loopback where `self` and `other` differ.
    pub fn differences(&self, other: &Reachability) -> Vec<(PodKey, PodKey)> {
        self.connected
            .iter()
            .filter(|((from, to), v)| from != to && other.connected.get(&(from.clone(), to.clone())) != Some(*v))
            .map(|(pair, _)| pair.clone())
            .collect()
    }

    pub fn expect_peer(&mut self, from: Sel, to: Sel, connected: bool) {
        for ((f, t), v) in self.connected.iter_mut() {
            if from.matches(f) && to.matches(t) {
                *v = connected;
            }
        }
    }

    pub fn expect(&mut self, from: (&'static str, &'static str), to: (&'static str, &'static str), connected: bool) {
        self.expect_peer(Sel::Pod(from.0, from.1), Sel::Pod(to.0, to.1), connected);
    }

    pub fn expect_all_ingress(&mut self, to: (&'static str, &'static str), connected: bool) {
        self.expect_peer(Sel::All, Sel::Pod(to.0, to.1), connected);
    }

    pub fn expect_all_egress(&mut self, from: (&'static str, &'static str), connected: bool) {
        self.expect_peer(Sel::Pod(from.0, from.1), Sel::All, connected);
    }

    /// How many ordered pairs but loopback are blocked.
    pub fn blocked(&self) -> usize {
        self.connected.iter().filter(|((f, t), v)| f != t && !**v).count()
    }

    /// Rows: from; columns: to; `.` connected, `X` blocked, `-` loopback
    /// (not compared).
    pub fn table(&self) -> String {
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

/// The containers every pod of the nine runs, as upstream's model makes
/// them: one per port and protocol, `cont-<port>-<proto>`, its port named
/// `serve-<port>-<proto>`.
pub fn pod_containers() -> Value {
    let mut containers = Vec::new();
    for port in [80, 81] {
        for (proto, api) in [("tcp", "TCP"), ("udp", "UDP"), ("sctp", "SCTP")] {
            containers.push(json!({"name": format!("cont-{port}-{proto}"), "image": "agnhost", "ports": [
                {"name": format!("serve-{port}-{proto}"), "containerPort": port, "protocol": api}
            ]}));
        }
    }
    Value::Array(containers)
}

/// The node (0 or 1) pod `pod` of namespace `namespace` runs on: the nine
/// alternate between two nodes (x/a on the first, x/b on the second, ...),
/// so every case has same-node and cross-node pairs in both directions.
pub fn pod_node(namespace: &str, pod: &str) -> usize {
    let n = NAMESPACES.iter().position(|x| *x == namespace).expect("one of x, y, z");
    let p = PODS.iter().position(|x| *x == pod).expect("one of a, b, c");
    (n * 3 + p) % 2
}

/// Expected and observed side by side, the differing cells marked `!`
/// on the observed side, then one line per differing pair.
pub fn side_by_side(expected: &Reachability, observed: &Reachability) -> String {
    side_by_side_over(expected, observed, None)
}

/// [`side_by_side`] with the family in each differing pair's line
/// ("x/a -> y/b over V6: expected connected, observed blocked").
pub fn side_by_side_over(expected: &Reachability, observed: &Reachability, family: Option<Family>) -> String {
    let left: Vec<String> = expected.table().lines().map(str::to_string).collect();
    let right = observed.table();
    let mut s = format!("{:<44}   {}\n", "expected", "observed");
    for (i, (l, r)) in left.iter().zip(right.lines()).enumerate() {
        let mut marked = String::new();
        if i == 0 {
            marked.push_str(r);
        } else {
            let from = all_pods().nth(i - 1).expect("9 rows");
            marked.push_str(&r[..5.min(r.len())]);
            for to in all_pods() {
                let c = if from == to {
                    '-'
                } else if observed.get(&from, &to) {
                    '.'
                } else {
                    'X'
                };
                let differs = from != to && observed.get(&from, &to) != expected.get(&from, &to);
                let _ = write!(marked, "  {}{c}", if differs { '!' } else { ' ' });
            }
        }
        let _ = writeln!(s, "{l:<44}   {marked}");
    }
    s.push_str("(rows: from, columns: to; . connected, X blocked, - loopback not compared, ! differs)\n");
    for (from, to) in expected.differences(observed) {
        let want = expected.get(&from, &to);
        let over = family.map(|f| format!(" over {f}")).unwrap_or_default();
        let _ = writeln!(s, "  {from} -> {to}{over}: expected {}, observed {}", word(want), word(!want));
    }
    s
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

/// The IPv6 twin of [`large_cidr`]: the `/4` around `ip` (upstream's
/// makeLargeCIDRForIP masks an IPv6 address to `/4` too).
fn large_cidr6(ip: Ipv6Addr) -> String {
    format!("{}/4", Ipv6Addr::from(u128::from(ip) & (0xf << 124)))
}

// Ingress-only policies are written without policyTypes, as most are: the
// API defaults them to [Ingress]. Policies with egress say so.

pub fn should_support_a_default_deny_ingress_policy(lab: &mut dyn CaseLab) {
    lab.apply("x", "deny-ingress", json!({"podSelector": {}}));
    let mut r = Reachability::all(true);
    r.expect_peer(Sel::All, Sel::Ns("x"), false);
    lab.validate(TCP, 80, &r);
}

pub fn should_support_a_default_deny_all_policy(lab: &mut dyn CaseLab) {
    lab.apply("x", "deny-all", json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}));
    let mut r = Reachability::all(true);
    r.expect_peer(Sel::All, Sel::Ns("x"), false);
    r.expect_peer(Sel::Ns("x"), Sel::All, false);
    lab.validate(TCP, 80, &r);
}

pub fn should_enforce_policy_to_allow_traffic_from_pods_within_server_namespace_based_on_pod_selector(
    lab: &mut dyn CaseLab,
) {
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

pub fn should_enforce_policy_to_allow_ingress_traffic_for_a_target(lab: &mut dyn CaseLab) {
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

pub fn should_enforce_policy_to_allow_ingress_traffic_from_pods_in_all_namespaces(lab: &mut dyn CaseLab) {
    lab.apply(
        "x",
        "allow-from-another-ns",
        json!({"podSelector": pod_label("a"), "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {}}}]}]}),
    );
    lab.validate(TCP, 80, &Reachability::all(true));
}

pub fn should_enforce_policy_to_allow_traffic_only_from_a_different_namespace_based_on_namespace_selector(
    lab: &mut dyn CaseLab,
) {
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

pub fn should_enforce_policy_based_on_pod_selector_with_match_expressions(lab: &mut dyn CaseLab) {
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

pub fn should_enforce_policy_based_on_namespace_selector_with_match_expressions(lab: &mut dyn CaseLab) {
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

pub fn should_enforce_policy_based_on_pod_selector_or_namespace_selector(lab: &mut dyn CaseLab) {
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

pub fn should_enforce_policy_based_on_pod_selector_and_namespace_selector(lab: &mut dyn CaseLab) {
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

pub fn should_enforce_policy_based_on_multiple_pod_selectors_and_namespace_selectors(lab: &mut dyn CaseLab) {
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

pub fn should_enforce_policy_based_on_any_pod_selectors(lab: &mut dyn CaseLab) {
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

fn from_y_a_only(lab: &mut dyn CaseLab) -> Reachability {
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

pub fn should_enforce_policy_to_allow_traffic_only_from_a_pod_in_a_different_namespace_based_on_pod_selector_and_namespace_selector(
    lab: &mut dyn CaseLab,
) {
    let r = from_y_a_only(lab);
    lab.validate(TCP, 80, &r);
}

/// x/a accepts `port`/`protocol` from namespace y only.
fn port_from_y(lab: &mut dyn CaseLab, name: &str, port: Value, protocol: &str) -> Reachability {
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

pub fn should_enforce_policy_based_on_ports(lab: &mut dyn CaseLab) {
    let r = port_from_y(lab, "allow-client-a-via-ns-selector", json!(81), "TCP");
    lab.validate(TCP, 81, &r);
}

pub fn should_enforce_multiple_stacked_policies_with_overlapping_pod_selectors(lab: &mut dyn CaseLab) {
    let allow = port_from_y(lab, "allow-client-a-via-ns-selector", json!(81), "TCP");
    lab.validate(TCP, 81, &allow);
    let mut deny = Reachability::all(true);
    deny.expect_all_ingress(("x", "a"), false);
    lab.validate(TCP, 80, &deny);
    let allow80 = port_from_y(lab, "allow-client-a-via-ns-selector-80", json!(80), "TCP");
    lab.validate(TCP, 80, &allow80);
    lab.validate(TCP, 81, &allow);
}

pub fn should_support_allow_all_policy(lab: &mut dyn CaseLab) {
    lab.apply("x", "allow-all", json!({"podSelector": {}, "ingress": [{}]}));
    lab.validate(TCP, 80, &Reachability::all(true));
    lab.validate(TCP, 81, &Reachability::all(true));
}

pub fn should_allow_ingress_access_on_one_named_port(lab: &mut dyn CaseLab) {
    lab.apply("x", "allow-all", json!({"podSelector": {}, "ingress": [{"ports": [{"port": "serve-81-tcp"}]}]}));
    lab.validate(TCP, 81, &Reachability::all(true));
    let mut r = Reachability::all(true);
    r.expect_peer(Sel::All, Sel::Ns("x"), false);
    lab.validate(TCP, 80, &r);
}

pub fn should_allow_ingress_access_from_namespace_on_one_named_port(lab: &mut dyn CaseLab) {
    let r = port_from_y(lab, "allow-client-a-via-ns-selector-80", json!("serve-80-tcp"), "TCP");
    lab.validate(TCP, 80, &r);
    let mut fail = Reachability::all(true);
    fail.expect_all_ingress(("x", "a"), false);
    lab.validate(TCP, 81, &fail);
}

pub fn should_allow_egress_access_on_one_named_port(lab: &mut dyn CaseLab) {
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

pub fn should_enforce_updated_policy(lab: &mut dyn CaseLab) {
    lab.apply("x", "allow-all-mutate-to-deny-all", json!({"podSelector": {}, "ingress": [{}]}));
    lab.validate(TCP, 81, &Reachability::all(true));
    lab.apply("x", "allow-all-mutate-to-deny-all", json!({"podSelector": {}, "ingress": []}));
    let mut r = Reachability::all(true);
    r.expect_peer(Sel::All, Sel::Ns("x"), false);
    lab.validate(TCP, 81, &r);
}

pub fn should_allow_ingress_access_from_updated_namespace(lab: &mut dyn CaseLab) {
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

pub fn should_allow_ingress_access_from_updated_pod(lab: &mut dyn CaseLab) {
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

pub fn should_deny_ingress_from_pods_on_other_namespaces(lab: &mut dyn CaseLab) {
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

pub fn should_deny_ingress_access_to_updated_pod(lab: &mut dyn CaseLab) {
    lab.apply("x", "deny-ingress-via-label-selector", json!({"podSelector": {"matchLabels": {"target": "isolated"}}}));
    lab.validate(TCP, 80, &Reachability::all(true));
    lab.label_pod("x", "a", "target", "isolated");
    let mut r = Reachability::all(true);
    r.expect_all_ingress(("x", "a"), false);
    lab.validate(TCP, 80, &r);
}

pub fn should_deny_egress_from_pods_based_on_pod_selector(lab: &mut dyn CaseLab) {
    lab.apply("x", "deny-egress-pod-a", json!({"podSelector": pod_label("a"), "policyTypes": ["Egress"]}));
    let mut r = Reachability::all(true);
    r.expect_all_egress(("x", "a"), false);
    lab.validate(TCP, 80, &r);
}

pub fn should_deny_egress_from_all_pods_in_a_namespace(lab: &mut dyn CaseLab) {
    lab.apply("x", "deny-egress-ns-x", json!({"podSelector": {}, "policyTypes": ["Egress"]}));
    let mut r = Reachability::all(true);
    r.expect_peer(Sel::Ns("x"), Sel::All, false);
    lab.validate(TCP, 80, &r);
}

pub fn should_work_with_ingress_egress_specified_together(lab: &mut dyn CaseLab) {
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

pub fn should_support_denying_of_egress_traffic_on_the_client_side_even_if_the_server_explicitly_allows_this_traffic(
    lab: &mut dyn CaseLab,
) {
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

pub fn should_enforce_egress_policy_allowing_traffic_to_a_server_in_a_different_namespace_based_on_pod_selector_and_namespace_selector(
    lab: &mut dyn CaseLab,
) {
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

pub fn should_enforce_ingress_policy_allowing_any_port_traffic_to_a_server_on_a_specific_protocol(
    lab: &mut dyn CaseLab,
) {
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

pub fn should_enforce_multiple_ingress_policies_with_ingress_allow_all_policy_taking_precedence(lab: &mut dyn CaseLab) {
    lab.apply("x", "allow-ingress-port-80", json!({"podSelector": {}, "ingress": [{"ports": [{"port": 80}]}]}));
    let mut r = Reachability::all(true);
    r.expect_peer(Sel::All, Sel::Ns("x"), false);
    lab.validate(TCP, 81, &r);
    lab.apply("x", "allow-ingress", json!({"podSelector": {}, "ingress": [{}]}));
    lab.validate(TCP, 81, &Reachability::all(true));
}

pub fn should_enforce_multiple_egress_policies_with_egress_allow_all_policy_taking_precedence(lab: &mut dyn CaseLab) {
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

pub fn should_stop_enforcing_policies_after_they_are_deleted(lab: &mut dyn CaseLab) {
    lab.apply("x", "deny-all", json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}));
    let mut r = Reachability::all(true);
    r.expect_peer(Sel::Ns("x"), Sel::All, false);
    r.expect_peer(Sel::All, Sel::Ns("x"), false);
    lab.validate(TCP, 80, &r);
    lab.delete_all_policies();
    lab.validate(TCP, 80, &Reachability::all(true));
}

/// x/a's egress only to `blocks`: one rule, one ipBlock peer per block
/// (an upstream block and its IPv6 twin).
fn egress_to_blocks(lab: &mut dyn CaseLab, blocks: [Value; 2]) {
    let to: Vec<Value> = blocks.into_iter().map(|b| json!({"ipBlock": b})).collect();
    lab.apply(
        "x",
        "allow-client-a-via-cidr-egress-rule",
        json!({"podSelector": pod_label("a"), "policyTypes": ["Egress"], "egress": [{"to": to}]}),
    );
}

/// `ip/32` and its IPv6 twin `ip6/128`: pod `namespace/pod` alone.
fn host_blocks(lab: &dyn CaseLab, namespace: &str, pod: &str) -> [Value; 2] {
    [
        json!({"cidr": format!("{}/32", lab.ip(namespace, pod))}),
        json!({"cidr": format!("{}/128", lab.ip6(namespace, pod))}),
    ]
}

/// The `/4` around pod `namespace/pod` but the pod itself, per family.
fn large_blocks_but(lab: &dyn CaseLab, namespace: &str, pod: &str) -> [Value; 2] {
    let (ip, ip6) = (lab.ip(namespace, pod), lab.ip6(namespace, pod));
    [
        json!({"cidr": large_cidr(ip), "except": [format!("{ip}/32")]}),
        json!({"cidr": large_cidr6(ip6), "except": [format!("{ip6}/128")]}),
    ]
}

pub fn should_allow_egress_access_to_server_in_cidr_block(lab: &mut dyn CaseLab) {
    let blocks = host_blocks(lab, "y", "b");
    egress_to_blocks(lab, blocks);
    let mut r = Reachability::all(true);
    r.expect_all_egress(("x", "a"), false);
    r.expect(("x", "a"), ("y", "b"), true);
    lab.validate(TCP, 80, &r);
}

pub fn should_enforce_except_clause_while_egress_access_to_server_in_cidr_block(lab: &mut dyn CaseLab) {
    let blocks = large_blocks_but(lab, "x", "b");
    egress_to_blocks(lab, blocks);
    let mut r = Reachability::all(true);
    r.expect(("x", "a"), ("x", "b"), false);
    lab.validate(TCP, 80, &r);
}

pub fn should_ensure_an_ip_overlapping_both_ip_block_cidr_and_ip_block_except_is_allowed(lab: &mut dyn CaseLab) {
    let blocks = large_blocks_but(lab, "x", "b");
    egress_to_blocks(lab, blocks);
    let mut r = Reachability::all(true);
    r.expect(("x", "a"), ("x", "b"), false);
    lab.validate(TCP, 80, &r);
    // Same name: an update that replaces the except with x/b alone.
    let blocks = host_blocks(lab, "x", "b");
    egress_to_blocks(lab, blocks);
    let mut allow = Reachability::all(true);
    allow.expect_all_egress(("x", "a"), false);
    allow.expect(("x", "a"), ("x", "b"), true);
    lab.validate(TCP, 80, &allow);
}

pub fn should_enforce_policies_to_check_ingress_and_egress_policies_can_be_controlled_independently_based_on_pod_selector(
    lab: &mut dyn CaseLab,
) {
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

pub fn should_not_mistakenly_treat_protocol_sctp_as_protocol_tcp_even_if_the_plugin_doesnt_support_sctp(
    lab: &mut dyn CaseLab,
) {
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

pub fn should_properly_isolate_pods_that_are_selected_by_a_policy_allowing_sctp_even_if_the_plugin_doesnt_support_sctp(
    lab: &mut dyn CaseLab,
) {
    lab.apply(
        "x",
        "allow-only-sctp-ingress-on-port-80",
        json!({"podSelector": pod_label("a"), "ingress": [{"ports": [{"port": 80, "protocol": "SCTP"}]}]}),
    );
    let mut r = Reachability::all(true);
    r.expect_all_ingress(("x", "a"), false);
    lab.validate(TCP, 81, &r);
}

pub fn should_not_allow_access_by_tcp_when_a_policy_specifies_only_udp(lab: &mut dyn CaseLab) {
    lab.apply(
        "x",
        "allow-only-udp-ingress-on-port-81",
        json!({"podSelector": pod_label("a"), "ingress": [{"ports": [{"port": 81, "protocol": "UDP"}]}]}),
    );
    let mut r = Reachability::all(true);
    r.expect_all_ingress(("x", "a"), false);
    lab.validate(TCP, 81, &r);
}

pub fn should_enforce_policy_to_allow_traffic_based_on_namespace_selector_with_match_labels_using_default_ns_label(
    lab: &mut dyn CaseLab,
) {
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

pub fn should_enforce_policy_based_on_namespace_selector_with_match_expressions_using_default_ns_label(
    lab: &mut dyn CaseLab,
) {
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
fn default_deny_ingress(lab: &mut dyn CaseLab, protocol: Protocol) {
    lab.apply("x", "deny-all", json!({"podSelector": {}}));
    let mut r = Reachability::all(true);
    r.expect_peer(Sel::All, Sel::Ns("x"), false);
    lab.validate(protocol, 80, &r);
}

fn ports_from_y(lab: &mut dyn CaseLab, protocol: Protocol, api: &str) {
    let r = port_from_y(lab, "allow-ingress-on-port-81-ns-x", json!(81), api);
    lab.validate(protocol, 81, &r);
    // the same port over TCP is not opened by a UDP or SCTP rule
    let mut tcp = Reachability::all(true);
    tcp.expect_all_ingress(("x", "a"), false);
    lab.validate(TCP, 81, &tcp);
}

fn pod_in_other_namespace(lab: &mut dyn CaseLab, protocol: Protocol) {
    let r = from_y_a_only(lab);
    lab.validate(protocol, 80, &r);
}

pub mod udp {
    use super::*;

    pub fn should_support_a_default_deny_ingress_policy(lab: &mut dyn CaseLab) {
        default_deny_ingress(lab, UDP);
    }

    pub fn should_enforce_policy_based_on_ports(lab: &mut dyn CaseLab) {
        ports_from_y(lab, UDP, "UDP");
    }

    pub fn should_enforce_policy_to_allow_traffic_only_from_a_pod_in_a_different_namespace_based_on_pod_selector_and_namespace_selector(
        lab: &mut dyn CaseLab,
    ) {
        pod_in_other_namespace(lab, UDP);
    }
}

pub mod sctp {
    use super::*;

    pub fn should_support_a_default_deny_ingress_policy(lab: &mut dyn CaseLab) {
        default_deny_ingress(lab, SCTP);
    }

    pub fn should_enforce_policy_based_on_ports(lab: &mut dyn CaseLab) {
        ports_from_y(lab, SCTP, "SCTP");
    }

    pub fn should_enforce_policy_to_allow_traffic_only_from_a_pod_in_a_different_namespace_based_on_pod_selector_and_namespace_selector(
        lab: &mut dyn CaseLab,
    ) {
        pod_in_other_namespace(lab, SCTP);
    }
}

/// The cases on the pure core: the policies converted by `model.rs`, every
/// pair judged by `evaluate::reach` with the datapath's lookups.
#[cfg(test)]
mod model_tests {
    use std::{
        collections::BTreeSet,
        net::{IpAddr, Ipv4Addr, Ipv6Addr},
    };

    use k8s_openapi::api::{core::v1 as core, networking::v1 as networking};
    use serde_json::{json, Value};
    use sluice_common::policy::Direction;

    use super::*;
    use crate::policy::{
        evaluate::ClusterMaps,
        model::{Namespace, NetworkPolicy, Pod, PolicyModel, PolicyName},
    };

    /// The nine pods (dual-stack, as the truth-table lab's) and their
    /// namespaces, and the policies of one case.
    struct ModelLab {
        model: PolicyModel,
    }

    impl ModelLab {
        fn new() -> Self {
            let mut model = PolicyModel::default();
            model.cluster_cidrs.push("10.244.0.0/16".parse().unwrap());
            model.cluster_cidrs.push("fd00:244::/56".parse().unwrap());
            for n in 1..=2u8 {
                let v6: Ipv6Addr = format!("fd00:30::{n}").parse().unwrap();
                model.nodes.insert(format!("n{n}"), vec![Ipv4Addr::new(192, 168, 0, n).into(), v6.into()]);
            }
            for (n, ns) in NAMESPACES.iter().enumerate() {
                let k8s: core::Namespace =
                    serde_json::from_value(json!({"metadata": {"name": ns, "labels": {"ns": ns}}})).unwrap();
                model.add_namespace(Namespace::from_k8s(&k8s).unwrap());
                for (p, pod) in PODS.iter().enumerate() {
                    let node = 1 + pod_node(ns, pod);
                    let (v4, v6) = (
                        format!("10.244.{node}.{}", 10 + n * 3 + p),
                        format!("fd00:244:0:{node}::{:x}", 10 + n * 3 + p),
                    );
                    let k8s: core::Pod = serde_json::from_value(json!({
                        "metadata": {"namespace": ns, "name": pod, "labels": {"pod": pod}},
                        "spec": {"nodeName": format!("n{node}"), "containers": pod_containers()},
                        "status": {"podIP": v4, "podIPs": [{"ip": v4}, {"ip": v6}]}
                    }))
                    .unwrap();
                    model.add_pod(Pod::from_k8s(&k8s).unwrap());
                }
            }
            ModelLab { model }
        }

        /// Pod `key`'s address of `family`.
        fn address(&self, key: &PodKey, family: Family) -> IpAddr {
            let ips = &self.model.pods[key].ips;
            *ips.iter()
                .find(|ip| ip.is_ipv4() == (family == Family::V4))
                .unwrap_or_else(|| panic!("{key} has an address of each family: {ips:?}"))
        }
    }

    impl CaseLab for ModelLab {
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
            match self.address(&PodKey::new(namespace, pod), Family::V4) {
                IpAddr::V4(v4) => v4,
                IpAddr::V6(_) => unreachable!("an IPv4 address"),
            }
        }

        fn ip6(&self, namespace: &str, pod: &str) -> Ipv6Addr {
            match self.address(&PodKey::new(namespace, pod), Family::V6) {
                IpAddr::V6(v6) => v6,
                IpAddr::V4(_) => unreachable!("an IPv6 address"),
            }
        }

        /// Each pair judged as `evaluate::reach` does (the source node's
        /// egress lookups, then the destination node's ingress ones), with
        /// the pods' addresses of each family in turn.
        fn validate(&mut self, protocol: Protocol, port: u16, expected: &Reachability) {
            let maps = ClusterMaps::compile(&self.model);
            for family in Family::BOTH {
                let mut why = Vec::new();
                let observed = Reachability::from_fn(|from, to| {
                    if from == to {
                        return true;
                    }
                    let (src, dst) = (&self.model.pods[from], &self.model.pods[to]);
                    let (src_ip, dst_ip) = (self.address(from, family), self.address(to, family));
                    let egress = maps.nodes[&src.node].judge(Direction::Egress, src_ip, dst_ip, protocol, port);
                    let ingress = maps.nodes[&dst.node].judge(Direction::Ingress, dst_ip, src_ip, protocol, port);
                    let got = egress.verdict.allowed() && ingress.verdict.allowed();
                    if got != expected.get(from, to) {
                        why.push(format!(
                            "  {from} -> {to} over {family}: egress at {from}: {egress}; ingress at {to}: {ingress}"
                        ));
                    }
                    got
                });
                let wrong = expected.differences(&observed);
                if !wrong.is_empty() {
                    panic!(
                        "{protocol:?}/{port} over {family}: {} of 72 pairs wrong\n{}why:\n{}",
                        wrong.len(),
                        side_by_side_over(expected, &observed, Some(family)),
                        why.join("\n")
                    );
                }
            }
        }
    }

    fn run(case: fn(&mut dyn CaseLab)) {
        case(&mut ModelLab::new());
    }

    /// One test per case, named as the case; `MODEL_TESTS` lists them.
    macro_rules! model_tests {
        ($prefix:literal, $($name:ident),* $(,)?) => {
            $(
                #[test]
                fn $name() {
                    run(cases::$name);
                }
            )*
            const MODEL_TESTS: &[&str] = &[$(concat!($prefix, stringify!($name))),*];
        };
    }

    mod tcp {
        use super::{super as cases, run};
        model_tests!(
            "",
            should_support_a_default_deny_ingress_policy,
            should_support_a_default_deny_all_policy,
            should_enforce_policy_to_allow_traffic_from_pods_within_server_namespace_based_on_pod_selector,
            should_enforce_policy_to_allow_ingress_traffic_for_a_target,
            should_enforce_policy_to_allow_ingress_traffic_from_pods_in_all_namespaces,
            should_enforce_policy_to_allow_traffic_only_from_a_different_namespace_based_on_namespace_selector,
            should_enforce_policy_based_on_pod_selector_with_match_expressions,
            should_enforce_policy_based_on_namespace_selector_with_match_expressions,
            should_enforce_policy_based_on_pod_selector_or_namespace_selector,
            should_enforce_policy_based_on_pod_selector_and_namespace_selector,
            should_enforce_policy_based_on_multiple_pod_selectors_and_namespace_selectors,
            should_enforce_policy_based_on_any_pod_selectors,
            should_enforce_policy_to_allow_traffic_only_from_a_pod_in_a_different_namespace_based_on_pod_selector_and_namespace_selector,
            should_enforce_policy_based_on_ports,
            should_enforce_multiple_stacked_policies_with_overlapping_pod_selectors,
            should_support_allow_all_policy,
            should_allow_ingress_access_on_one_named_port,
            should_allow_ingress_access_from_namespace_on_one_named_port,
            should_allow_egress_access_on_one_named_port,
            should_enforce_updated_policy,
            should_allow_ingress_access_from_updated_namespace,
            should_allow_ingress_access_from_updated_pod,
            should_deny_ingress_from_pods_on_other_namespaces,
            should_deny_ingress_access_to_updated_pod,
            should_deny_egress_from_pods_based_on_pod_selector,
            should_deny_egress_from_all_pods_in_a_namespace,
            should_work_with_ingress_egress_specified_together,
            should_support_denying_of_egress_traffic_on_the_client_side_even_if_the_server_explicitly_allows_this_traffic,
            should_enforce_egress_policy_allowing_traffic_to_a_server_in_a_different_namespace_based_on_pod_selector_and_namespace_selector,
            should_enforce_ingress_policy_allowing_any_port_traffic_to_a_server_on_a_specific_protocol,
            should_enforce_multiple_ingress_policies_with_ingress_allow_all_policy_taking_precedence,
            should_enforce_multiple_egress_policies_with_egress_allow_all_policy_taking_precedence,
            should_stop_enforcing_policies_after_they_are_deleted,
            should_allow_egress_access_to_server_in_cidr_block,
            should_enforce_except_clause_while_egress_access_to_server_in_cidr_block,
            should_ensure_an_ip_overlapping_both_ip_block_cidr_and_ip_block_except_is_allowed,
            should_enforce_policies_to_check_ingress_and_egress_policies_can_be_controlled_independently_based_on_pod_selector,
            should_not_mistakenly_treat_protocol_sctp_as_protocol_tcp_even_if_the_plugin_doesnt_support_sctp,
            should_properly_isolate_pods_that_are_selected_by_a_policy_allowing_sctp_even_if_the_plugin_doesnt_support_sctp,
            should_not_allow_access_by_tcp_when_a_policy_specifies_only_udp,
            should_enforce_policy_to_allow_traffic_based_on_namespace_selector_with_match_labels_using_default_ns_label,
            should_enforce_policy_based_on_namespace_selector_with_match_expressions_using_default_ns_label,
        );
        pub(super) const NAMES: &[&str] = MODEL_TESTS;
    }

    mod udp {
        use super::{super::udp as cases, run};
        model_tests!(
            "udp::",
            should_support_a_default_deny_ingress_policy,
            should_enforce_policy_based_on_ports,
            should_enforce_policy_to_allow_traffic_only_from_a_pod_in_a_different_namespace_based_on_pod_selector_and_namespace_selector,
        );
        pub(super) const NAMES: &[&str] = MODEL_TESTS;
    }

    mod sctp {
        use super::{super::sctp as cases, run};
        model_tests!(
            "sctp::",
            should_support_a_default_deny_ingress_policy,
            should_enforce_policy_based_on_ports,
            should_enforce_policy_to_allow_traffic_only_from_a_pod_in_a_different_namespace_based_on_pod_selector_and_namespace_selector,
        );
        pub(super) const NAMES: &[&str] = MODEL_TESTS;
    }

    #[test]
    fn the_case_list_is_upstreams_48_each_with_a_model_test() {
        let upstream: BTreeSet<&str> = CASES.iter().map(|c| c.upstream).collect();
        assert_eq!(upstream.len(), 48);
        let names: BTreeSet<&str> = CASES.iter().map(|c| c.name).collect();
        assert_eq!(names.len(), 48);
        let tests: BTreeSet<&str> = tcp::NAMES.iter().chain(udp::NAMES).chain(sctp::NAMES).copied().collect();
        assert_eq!(names, tests, "every case in CASES has its model test, and no other");
        for case in CASES {
            let family = if case.upstream.starts_with("[UDP]") {
                Protocol::Udp
            } else if case.upstream.starts_with("[SCTP]") {
                Protocol::Sctp
            } else {
                Protocol::Tcp
            };
            assert_eq!(case.protocol, family, "{}", case.upstream);
        }
    }

    #[test]
    fn side_by_side_marks_the_pairs_that_differ() {
        let expected = Reachability::all(true);
        let mut observed = Reachability::all(true);
        observed.expect(("x", "a"), ("y", "b"), false);
        let s = side_by_side(&expected, &observed);
        assert!(s.contains("x/a -> y/b: expected connected, observed blocked"), "{s}");
        assert_eq!(s.matches('!').count(), 2, "one marked cell and the legend:\n{s}");
        assert_eq!(expected.differences(&observed).len(), 1);
        assert_eq!(observed.blocked(), 1);
    }
}
