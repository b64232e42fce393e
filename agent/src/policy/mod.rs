//! NetworkPolicy's pure core (issue 25; the datapath half is not built):
//!
//! - `model`: pods, namespaces, NetworkPolicies (from k8s-openapi), nodes.
//! - `selector`: label selectors.
//! - `identity`: numeric identities for classes of peer addresses, and the
//!   prefix → identity table (`POLICY_IDENTITIES`).
//! - `compile`: per local pod, isolation per direction and the resolved
//!   allow rules, each naming its policy.
//! - `entries`: the compiled node lowered to map entries
//!   (`common/src/policy.rs`).
//! - `evaluate`: verdicts from those entries with the datapath's lookups;
//!   `reachable(from, to, port, protocol)`.
//! - `kubernetes`: the Pod, Namespace and NetworkPolicy watchers.
//! - `upstream_cases`: the Kubernetes e2e suite's 48 cases, written once
//!   for two labs (`CaseLab`): the pure core's tests here and the truth-table
//!   lab on real packets (`tests/src/netpol/`).
pub mod compile;
pub mod entries;
pub mod evaluate;
pub mod identity;
pub mod kubernetes;
pub mod model;
pub mod names;
pub mod report;
pub mod selector;
pub mod upstream_cases;
