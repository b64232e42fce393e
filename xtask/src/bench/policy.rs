//! NetworkPolicy in `cargo xtask bench` (issue 25).
//!
//! Three Kubernetes labs per round, one per row, all up at once (two
//! nodes each, the test API server): a client pod `bench/client` on n1
//! and a server pod `bench/server` on n2, made by the real CNI plugin with
//! their Pod objects published before the ADD (as the scheduler leaves
//! them) and after (with the address). Cross-node TCP_RR and TCP_CRR
//! between them:
//! - "P no policy": no NetworkPolicy; neither pod isolated.
//! - "P allow, 1 policy": one policy selecting both pods, `Ingress` and
//!   `Egress` isolated, its rules allowing exactly the pair (client egress
//!   to the server, server ingress from the client, every port: the
//!   bench's servers listen on ephemeral ports).
//! - "P allow, N policies": the same policy plus `Plan::policies` − 1
//!   more over `Plan::policy_pods` made-up pods (objects only, on made-up
//!   nodes, addresses in 10.244.128.0/17) in `Plan::policy_namespaces`
//!   namespaces; `REAL_SELECTING` of them select the real pods too (their
//!   rules allow other ports from other namespaces and labelled pods), so
//!   the real pods' rule sets and the identity map are what a busy cluster
//!   gives them.
//!
//! The rows take turns: each row's measuring time is cut into `SLICES`
//! slices and every slice measures the three labs once, in an order
//! rotated slice by slice (`paths::measure_interleaved`). This VM's
//! request/response rate drifts by ±10 % over a minute; rows measured one
//! after the other (as this bench first did, one lab per round) put that
//! drift into their ratios, and a 1000/1 ratio read anything from 0.90 to
//! 1.06 between rounds of one run. In turns, the drift falls on all rows.
//!
//! Before each row the maps are awaited, never slept for: the server's and
//! the client's `POLICY_ENDPOINTS` entries isolated (or not) as the row
//! says, the last made-up pod's identity known on both nodes, and then no
//! pass changing `POLICY_STATE.epoch` for `SETTLED` (the agent bumps it
//! after each pass that changed the maps).
//!
//! No throughput: the targets are TCP_RR and TCP_CRR (a policy costs per
//! packet and per connection, not per byte).
//!
//! Every row also gets the sluice programs' cost per packet in a pass of
//! its own with BPF statistics on (`prog_cost`), so a ratio below target
//! shows which program pays.
//!
//! Control plane, on round 1's lab with the N policies in: the server
//! node's agent RSS (now and its peak), and two kinds of single changes,
//! each timed from the moment the test API server hands the event to the
//! watches (`ApiServer::written_at`) to the map write that carries it on
//! the server's node, one map lookup per poll:
//! - policy change: a policy selecting the server gains a port; done when
//!   the server's `POLICY_ENDPOINTS` entry points at a new rule set (the
//!   agent writes a new set, then switches the entry to it);
//! - label change: a made-up pod gains (or loses) the label a rule of the
//!   server's admits; done when its identity in `POLICY_IDENTITIES` or the
//!   server's rule set changed.
//!
//! The agent's own `sluice_policy_update_seconds` histogram over the same
//! changes is reported beside them.
use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::Path,
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use sluice_common::policy::{ENDPOINT_EGRESS_ISOLATED, ENDPOINT_INGRESS_ISOLATED, ENDPOINT_POLICY_PENDING};
use sluice_node::datapath::{
    pins::PinDir,
    policy_maps::{PolicyEndpoints, PolicyIdentities, PolicyState},
};
use sluice_tests::{
    apiserver::{namespace_object, network_policy_object, ApiServer, Kind, PodObject},
    bench::{self, percentiles_ms},
    lab::{Lab, LabOptions, Node},
};

use super::{
    args::Plan,
    labs::pod_ip,
    paths::{self, PathFigures},
    services,
};

pub const ROW_NONE: &str = "P no policy";
pub const ROW_ALLOW: &str = "P allow, 1 policy";

pub fn scale_row(policies: usize) -> String {
    format!("P allow, {policies} policies")
}

const NS: &str = "bench";
const ALLOW: &str = "allow-pair";
/// Policies among the N that select the real pods besides `ALLOW`.
const REAL_SELECTING: usize = 6;
/// The server's policy whose port the policy changes edit.
const CHANGED: &str = "server-ports";
/// The label a rule of the server's admits pods by (the label changes).
const PEER_LABEL: &str = "bench-peer";
/// The maps are settled once no pass changed them for this long.
const SETTLED: Duration = Duration::from_millis(600);
/// Longest wait for the maps to follow the API server (a loaded machine
/// and N objects: generous; a miss is an error, never a figure).
const APPLY_TIMEOUT: Duration = Duration::from_secs(120);
const CHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// The made-up pods' addresses: clear of the lab nodes' pod CIDRs.
fn fake_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 128 + (i / 250) as u8, 1 + (i % 250) as u8)
}

fn fake_namespace(i: usize, namespaces: usize) -> String {
    format!("pns-{}", i % namespaces)
}

fn fake_pod(i: usize, namespaces: usize) -> PodObject {
    PodObject::new(
        &fake_namespace(i, namespaces),
        &format!("p{i}"),
        &format!("fake-node-{}", i / 110),
        &fake_ip(i).to_string(),
    )
    .label("app", &format!("app-{}", i % 20))
    .label("tier", if i.is_multiple_of(2) { "frontend" } else { "backend" })
    .port(Some("http"), 8080, "TCP")
}

/// The filler policies: each selects an app in its namespace, admits
/// frontends of its own namespace and a team's namespaces on one port,
/// and every fourth isolates egress too (DNS anywhere, its app's peers).
fn fake_policy(p: usize, namespaces: usize) -> Value {
    let mut spec = json!({
        "podSelector": {"matchLabels": {"app": format!("app-{}", p % 20)}},
        "policyTypes": ["Ingress"],
        "ingress": [{
            "from": [
                {"podSelector": {"matchLabels": {"tier": "frontend"}}},
                {"namespaceSelector": {"matchLabels": {"team": format!("team-{}", p % 25)}}},
            ],
            "ports": [{"protocol": "TCP", "port": 8080 + (p % 10) as u16}],
        }],
    });
    if p.is_multiple_of(4) {
        spec["policyTypes"] = json!(["Ingress", "Egress"]);
        spec["egress"] = json!([
            {"ports": [{"protocol": "UDP", "port": 53}]},
            {"to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": format!("app-{}", (p + 1) % 20)}}}],
             "ports": [{"protocol": "TCP", "port": "http"}]},
        ]);
    }
    network_policy_object(&fake_namespace(p, namespaces), &format!("pol-{p}"), spec)
}

/// The measured pair's policy: both isolated both ways, the pair allowed.
fn allow_policy() -> Value {
    network_policy_object(
        NS,
        ALLOW,
        json!({
            "podSelector": {"matchExpressions": [{"key": "role", "operator": "In", "values": ["client", "server"]}]},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}]}],
            "egress": [{"to": [{"podSelector": {"matchLabels": {"role": "server"}}}]}],
        }),
    )
}

/// Policies selecting the real pods besides `ALLOW` (`REAL_SELECTING`):
/// the server admits teams' namespaces and `PEER_LABEL`led pods on ports
/// of their own, the client may reach a database port in every namespace.
/// `CHANGED` gets `extra_port` (the policy changes).
fn real_selecting(extra_port: u16) -> Vec<Value> {
    let mut v = Vec::new();
    v.push(network_policy_object(
        NS,
        CHANGED,
        json!({
            "podSelector": {"matchLabels": {"role": "server"}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "team-1"}}}],
                         "ports": [{"protocol": "TCP", "port": 9000}, {"protocol": "TCP", "port": extra_port}]}],
        }),
    ));
    v.push(network_policy_object(
        NS,
        "server-peers",
        json!({
            "podSelector": {"matchLabels": {"role": "server"}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {PEER_LABEL: "yes"}}}],
                         "ports": [{"protocol": "TCP", "port": 9443}]}],
        }),
    ));
    for k in 0..REAL_SELECTING - 3 {
        v.push(network_policy_object(
            NS,
            &format!("server-team-{k}"),
            json!({
                "podSelector": {"matchLabels": {"role": "server"}},
                "policyTypes": ["Ingress"],
                "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": format!("team-{}", k + 2)}},
                                       "podSelector": {"matchLabels": {"tier": "frontend"}}}],
                             "ports": [{"protocol": "TCP", "port": 9100 + k as u16, "endPort": 9110 + k as u16}]}],
            }),
        ));
    }
    v.push(network_policy_object(
        NS,
        "client-db",
        json!({
            "podSelector": {"matchLabels": {"role": "client"}},
            "policyTypes": ["Egress"],
            "egress": [{"to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "app-3"}}}],
                        "ports": [{"protocol": "TCP", "port": 5432}]},
                       {"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.244.0.0/16"]}}]}],
        }),
    ));
    v
}

/// The lab of a round: two nodes, the API server, the measured pair.
struct PolicyLab {
    lab: Lab,
}

impl PolicyLab {
    fn up(bins: &Path) -> Result<Self> {
        let mut opts = LabOptions::new(2, 0, bins.to_path_buf());
        opts.kubernetes = true;
        let mut lab = Lab::up(&opts)?;
        let api = lab.api.as_ref().context("a Kubernetes lab has an API server")?;
        api.upsert(Kind::Namespace, namespace_object(NS, &[("team", "bench")]));
        for (i, role) in [(0usize, "client"), (1, "server")] {
            let node = lab.state.nodes[i].name.clone();
            let pending = PodObject::new(NS, role, &node, "").ips(&[]).phase("Pending").label("role", role);
            lab.api.as_ref().expect("checked").upsert(Kind::Pod, pending.build());
            let cni_args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={NS};K8S_POD_NAME={role}");
            let pod = lab
                .add_pod_with_cni_env(i, role, &[("CNI_ARGS".into(), cni_args)])
                .with_context(|| format!("pod {NS}/{role}"))?;
            let running = PodObject::new(NS, role, &node, &pod.ip).label("role", role);
            lab.api.as_ref().expect("checked").upsert(Kind::Pod, running.build());
        }
        Ok(Self { lab })
    }

    fn api(&self) -> &ApiServer {
        self.lab.api.as_ref().expect("a Kubernetes lab")
    }

    fn client(&self) -> (&Node, Ipv4Addr) {
        let n = &self.lab.state.nodes[0];
        (n, pod_ip(&n.pods[0]))
    }

    fn server(&self) -> (&Node, Ipv4Addr) {
        let n = &self.lab.state.nodes[1];
        (n, pod_ip(&n.pods[0]))
    }

    fn path(&self, name: &str) -> paths::Path2 {
        let ((cn, _), (sn, sip)) = (self.client(), self.server());
        let mut p = paths::path(name, &cn.pods[0].netns, &sn.pods[0].netns, bench::Target::direct(sip));
        p.programs = paths::lab_pins(&self.lab);
        p.throughput = false;
        p
    }

    /// Wait until both pods are isolated both ways (`isolated`) or not at
    /// all, `known` (if any) has an identity on both nodes, and then no
    /// pass changed the maps for `SETTLED`.
    fn await_maps(&self, isolated: bool, known: Option<Ipv4Addr>) -> Result<Duration> {
        let want = if isolated { ENDPOINT_INGRESS_ISOLATED | ENDPOINT_EGRESS_ISOLATED } else { 0 };
        let start = Instant::now();
        for (node, ip) in [self.client(), self.server()] {
            let pins = PinDir::new(&node.pin_dir);
            let endpoints = PolicyEndpoints::open(&pins)?;
            let identities = PolicyIdentities::open(&pins)?;
            loop {
                let flags = endpoints.get(ip)?.map_or(0, |e| e.flags);
                let id = known.map(|k| identities.lookup(k)).transpose()?;
                if flags & (ENDPOINT_INGRESS_ISOLATED | ENDPOINT_EGRESS_ISOLATED | ENDPOINT_POLICY_PENDING) == want
                    && id.is_none_or(|i| i.is_some())
                {
                    break;
                }
                let last =
                    format!("{}: {ip} flags {flags:#x} (want {want:#x}), identity of {known:?}: {id:?}", node.name);
                if start.elapsed() > APPLY_TIMEOUT {
                    bail!("policy maps did not follow the API server in {APPLY_TIMEOUT:?}: {last}");
                }
                sleep(Duration::from_millis(5));
            }
        }
        // Settled: the epoch of both nodes unchanged for SETTLED.
        let states: Vec<PolicyState> = [self.client().0, self.server().0]
            .iter()
            .map(|n| PolicyState::open(&PinDir::new(&n.pin_dir)))
            .collect::<Result<_>>()?;
        let epochs = || states.iter().map(|s| s.get().map(|v| v.epoch)).collect::<Result<Vec<u32>>>();
        let (mut seen, mut since) = (epochs()?, Instant::now());
        while since.elapsed() < SETTLED {
            sleep(Duration::from_millis(20));
            let now = epochs()?;
            if now != seen {
                (seen, since) = (now, Instant::now());
            }
            if start.elapsed() > APPLY_TIMEOUT {
                bail!("policy maps still changing after {APPLY_TIMEOUT:?}");
            }
        }
        Ok(start.elapsed())
    }

    fn set_allow(&self) -> Result<()> {
        self.api().upsert(Kind::NetworkPolicy, allow_policy());
        self.await_maps(true, None)?;
        Ok(())
    }

    /// Publish the N − 1 other policies, the namespaces and the made-up
    /// pods; returns the time to the maps settled.
    fn set_scale(&self, plan: &Plan) -> Result<Duration> {
        let api = self.api();
        let t = Instant::now();
        api.upsert_many(
            Kind::Namespace,
            (0..plan.policy_namespaces)
                .map(|j| namespace_object(&format!("pns-{j}"), &[("team", &format!("team-{}", j % 25))])),
        );
        api.upsert_many(Kind::Pod, (0..plan.policy_pods).map(|i| fake_pod(i, plan.policy_namespaces).build()));
        let real = real_selecting(9001);
        let fillers = plan.policies.saturating_sub(1 + real.len());
        api.upsert_many(
            Kind::NetworkPolicy,
            real.into_iter().chain((0..fillers).map(|p| fake_policy(p, plan.policy_namespaces))),
        );
        self.await_maps(true, Some(fake_ip(plan.policy_pods - 1)))?;
        Ok(t.elapsed())
    }
}

/// Slices each row's TCP_RR (and TCP_CRR) time is cut into: the three
/// rows take turns slice by slice (`paths::measure_interleaved`), each in
/// every position twice a round.
const SLICES: usize = 6;

/// One round's rows into `figures`; with `control`, the control-plane
/// figures too (returned, measured on the N-policies lab after its rows).
pub(super) fn round(
    round: usize,
    bins: &Path,
    plan: &Plan,
    control: bool,
    figures: &mut BTreeMap<String, PathFigures>,
) -> Result<Option<Value>> {
    if !plan.policy_rows {
        // The control plane only (`--policy-control-only`).
        let lab = PolicyLab::up(bins)?;
        lab.set_allow()?;
        let to_maps = lab.set_scale(plan)?;
        return if control { Ok(Some(control_plane(&lab, plan, to_maps)?)) } else { Ok(None) };
    }
    let scale = scale_row(plan.policies);
    eprintln!("bench: round {} three labs: {ROW_NONE}, {ROW_ALLOW}, {scale}", round + 1);
    let none = PolicyLab::up(bins).context("the lab without policy")?;
    none.await_maps(false, None)?;
    let allow = PolicyLab::up(bins).context("the lab with one policy")?;
    allow.set_allow()?;
    let big = PolicyLab::up(bins).with_context(|| format!("the lab with {} policies", plan.policies))?;
    big.set_allow()?;
    eprintln!(
        "bench: round {} {} policies over {} pods in {} namespaces",
        round + 1,
        plan.policies,
        plan.policy_pods,
        plan.policy_namespaces
    );
    let to_maps = big.set_scale(plan)?;
    eprintln!("bench: round {} rows in turns, {SLICES} slices each", round + 1);
    let rows = [none.path(ROW_NONE), allow.path(ROW_ALLOW), big.path(&scale)];
    figures.extend(paths::measure_interleaved(&rows, plan, SLICES, round).context("the NetworkPolicy rows")?);
    if !control {
        return Ok(None);
    }
    Ok(Some(control_plane(&big, plan, to_maps)?))
}

fn control_plane(lab: &PolicyLab, plan: &Plan, to_maps: Duration) -> Result<Value> {
    let (node, server_ip) = lab.server();
    let pid = node.agent_pid.context("agent pid")?;
    let (rss, hwm) = services::rss_hwm_kib(pid);
    let pins = PinDir::new(&node.pin_dir);
    let endpoints = PolicyEndpoints::open(&pins)?;
    let identities = PolicyIdentities::open(&pins)?;
    let rules_id = || -> Result<u32> {
        endpoints.get(server_ip)?.map(|e| e.rules_id).context("the server has no POLICY_ENDPOINTS entry")
    };
    let api = lab.api();
    let metrics_before = services::scrape(node).unwrap_or_default();
    let (mut policy_lat, mut label_lat) = (Vec::new(), Vec::new());
    let mut unwritten = 0;
    let gap = Duration::from_millis(30);
    for k in 0..plan.policy_changes {
        // A policy change: the server's CHANGED policy gains another port.
        let old = rules_id()?;
        let port = 20_000 + k as u16;
        let rv = api.upsert(Kind::NetworkPolicy, real_selecting(port).remove(0));
        let start = Instant::now();
        while rules_id()? == old {
            if start.elapsed() > CHANGE_TIMEOUT {
                bail!("policy change {k} (port {port}) not in the server's maps after {CHANGE_TIMEOUT:?}");
            }
            sleep(Duration::from_micros(100));
        }
        let done = Instant::now();
        match api.written_at(rv) {
            Some(w) => policy_lat.push(done.saturating_duration_since(w)),
            None => unwritten += 1,
        }
        sleep(gap);

        // A label change: even k, a made-up pod becomes a peer the
        // server admits; odd k, the same pod stops being one.
        let i = (k / 2 * 7919 + 13) % plan.policy_pods;
        let ip = fake_ip(i);
        let (old_rules, old_id) = (rules_id()?, identities.lookup(ip)?);
        let pod = fake_pod(i, plan.policy_namespaces);
        let pod = if k % 2 == 0 { pod.label(PEER_LABEL, "yes") } else { pod };
        let rv = api.upsert(Kind::Pod, pod.build());
        let start = Instant::now();
        while rules_id()? == old_rules && identities.lookup(ip)? == old_id {
            if start.elapsed() > CHANGE_TIMEOUT {
                bail!("label change {k} ({ip}, {PEER_LABEL}) not in the server's maps after {CHANGE_TIMEOUT:?}");
            }
            sleep(Duration::from_micros(100));
        }
        let done = Instant::now();
        match api.written_at(rv) {
            Some(w) => label_lat.push(done.saturating_duration_since(w)),
            None => unwritten += 1,
        }
        sleep(gap);
    }
    let metrics_after = services::scrape(node).unwrap_or_default();
    let all: Vec<Duration> = policy_lat.iter().chain(&label_lat).copied().collect();
    let max_ms = |v: &[Duration]| v.iter().max().map_or(f64::NAN, |d| d.as_secs_f64() * 1e3);
    let (pmax, lmax, amax) = (max_ms(&policy_lat), max_ms(&label_lat), max_ms(&all));
    let (p50, p99) = percentiles_ms(policy_lat);
    let (l50, l99) = percentiles_ms(label_lat);
    let (a50, a99) = percentiles_ms(all);
    Ok(json!({
        "policies": plan.policies,
        "pods": plan.policy_pods,
        "namespaces": plan.policy_namespaces,
        "publish_to_maps_ms": to_maps.as_secs_f64() * 1e3,
        "agent_rss_mib": rss as f64 / 1024.0,
        "agent_rss_peak_mib": hwm as f64 / 1024.0,
        "changes_each": plan.policy_changes,
        "policy_change_p50_ms": p50,
        "policy_change_p99_ms": p99,
        "policy_change_max_ms": pmax,
        "label_change_p50_ms": l50,
        "label_change_p99_ms": l99,
        "label_change_max_ms": lmax,
        "change_p50_ms": a50,
        "change_p99_ms": a99,
        "change_max_ms": amax,
        "changes_not_seen_written": unwritten,
        "agent_histogram": services::histogram_between(&metrics_before, &metrics_after, "sluice_policy_update_seconds"),
    }))
}

/// The ratios of the NetworkPolicy rows.
pub(super) fn ratio_pairs(policies: usize) -> Vec<(String, String, String)> {
    vec![
        ("P allow/none".into(), ROW_ALLOW.into(), ROW_NONE.into()),
        (format!("P {policies}/1 policies"), scale_row(policies), ROW_ALLOW.into()),
        (format!("P {policies} policies/none"), scale_row(policies), ROW_NONE.into()),
    ]
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn made_up_pods_have_distinct_addresses_in_the_cluster_cidr_clear_of_the_lab_nodes() {
        let cluster: ipnetwork::Ipv4Network = sluice_tests::lab::CLUSTER_CIDR.parse().unwrap();
        let ips: BTreeSet<Ipv4Addr> = (0..10_000).map(fake_ip).collect();
        assert_eq!(ips.len(), 10_000);
        // The lab nodes' pod CIDRs are 10.244.<node>.0/24, low in the /16.
        let clear: ipnetwork::Ipv4Network = "10.244.128.0/17".parse().unwrap();
        assert!(ips.iter().all(|ip| cluster.contains(*ip) && clear.contains(*ip)));
        assert!(ips.iter().all(|ip| ip.octets()[3] != 0 && ip.octets()[3] != 255));
    }

    #[test]
    fn the_scale_run_has_exactly_the_planned_policies_and_its_rows_match_the_ratios() {
        let (policies, namespaces) = (1_000, 500);
        let real = real_selecting(9001);
        assert_eq!(real.len(), REAL_SELECTING);
        let fillers = policies - 1 - real.len();
        let names: BTreeSet<String> = std::iter::once(allow_policy())
            .chain(real)
            .chain((0..fillers).map(|p| fake_policy(p, namespaces)))
            .map(|p| format!("{}/{}", p["metadata"]["namespace"], p["metadata"]["name"]))
            .collect();
        assert_eq!(names.len(), policies, "every policy its own object");
        let pairs = ratio_pairs(policies);
        let rows = [ROW_NONE.to_string(), ROW_ALLOW.to_string(), scale_row(policies)];
        assert!(pairs.iter().all(|(_, num, den)| rows.contains(num) && rows.contains(den)));
        assert_eq!(pairs[1].0, format!("P {policies}/1 policies"));
    }

    #[test]
    fn the_policy_change_edits_one_policy_in_place_and_the_label_change_only_the_peer_label() {
        let (a, b) = (real_selecting(20_000).remove(0), real_selecting(20_001).remove(0));
        assert_eq!(a["metadata"], b["metadata"], "same object, replaced");
        assert_ne!(a["spec"], b["spec"]);
        let plain = fake_pod(7, 10).build();
        let peer = fake_pod(7, 10).label(PEER_LABEL, "yes").build();
        assert_eq!(plain["status"], peer["status"]);
        assert_eq!(peer["metadata"]["labels"][PEER_LABEL], "yes");
        assert!(plain["metadata"]["labels"].get(PEER_LABEL).is_none());
    }
}
