//! The CNI plugin's NetworkPolicy step (root): ADD copies the agent's
//! `POLICY_PODS` entry for the pod into `POLICY_ENDPOINTS[ip]` and
//! `POLICY_IDENTITIES[ip/32]` before the pod's programs are attached;
//! without an entry it waits briefly, then fails closed
//! (`ENDPOINT_POLICY_PENDING`) and says so; a failure after the step takes
//! the entries back; DEL removes them; on a node where no agent enforces
//! NetworkPolicy (`POLICY_STATE_ENFORCING` clear) it writes nothing. On a
//! dual-stack node the pod's IPv6 address gets its entries in the same step
//! (`POLICY_ENDPOINTS6`, `POLICY_IDENTITIES6`), taken back and removed
//! alike. The
//! agent here runs from a peers file, so the test plays the agent's part in
//! the maps.
use std::{
    net::{Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

use serde_json::Value;
use sluice_common::policy::{
    EndpointPolicy, PodPolicy, ENDPOINT_INGRESS_ISOLATED, ENDPOINT_POLICY_PENDING, IDENTITY_UNKNOWN_CLUSTER,
};
use sluice_node::datapath::{
    pins::PinDir,
    policy_maps::{PolicyEndpoints, PolicyEndpoints6, PolicyIdentities, PolicyIdentities6, PolicyPods, PolicyState},
};
use sluice_tests::{
    bin, faulty_cni_bin,
    lab::{CniCall, Lab, LabOptions, Node},
    require_root, Netns,
};

fn lab() -> Lab {
    require_root();
    let opts = LabOptions::new(1, 0, bin("sluice-agent").parent().unwrap().to_path_buf());
    Lab::up(&opts).expect("lab up")
}

fn dual_stack_lab() -> Lab {
    require_root();
    let mut opts = LabOptions::new(1, 0, bin("sluice-agent").parent().unwrap().to_path_buf());
    opts.dual_stack = true;
    Lab::up(&opts).expect("dual-stack lab up")
}

fn ip6_of(result: &Value) -> Ipv6Addr {
    let ips = result["ips"].as_array().unwrap();
    let v6 = ips.iter().filter_map(|i| i["address"].as_str()).find(|a| a.contains(':'));
    v6.unwrap_or_else(|| panic!("no IPv6 address in {result}")).split('/').next().unwrap().parse().unwrap()
}

/// (POLICY_ENDPOINTS6[ip], POLICY_IDENTITIES6' exact /128 for ip).
fn entries6(pins: &PinDir, ip: Ipv6Addr) -> (Option<EndpointPolicy>, Option<u32>) {
    let endpoint = PolicyEndpoints6::open(pins).unwrap().get(ip).unwrap();
    let identity = PolicyIdentities6::open(pins)
        .unwrap()
        .all()
        .unwrap()
        .get(&ipnetwork::Ipv6Network::new(ip, 128).unwrap())
        .copied();
    (endpoint, identity)
}

fn call(node: &Node, verb: &str, pod: &Netns, k8s: Option<(&str, &str)>) -> CniCall {
    let mut c = CniCall::new(verb, &pod.name, Some(&pod.name), Lab::plugin_config(node).unwrap());
    if let Some((ns, name)) = k8s {
        c.env.push(("CNI_ARGS".into(), format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name}")));
    }
    c
}

fn ip_of(result: &Value) -> Ipv4Addr {
    result["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().parse().unwrap()
}

/// (POLICY_ENDPOINTS[ip], POLICY_IDENTITIES' exact /32 for ip).
fn entries(pins: &PinDir, ip: Ipv4Addr) -> (Option<EndpointPolicy>, Option<u32>) {
    let endpoint = PolicyEndpoints::open(pins).unwrap().get(ip).unwrap();
    let identity = PolicyIdentities::open(pins)
        .unwrap()
        .all()
        .unwrap()
        .get(&ipnetwork::Ipv4Network::new(ip, 32).unwrap())
        .copied();
    (endpoint, identity)
}

#[test]
fn add_copies_the_agents_entry_fails_closed_without_one_and_del_removes_them() {
    let lab = lab();
    let node = lab.state.nodes[0].clone();
    let pins = PinDir::new(&node.pin_dir);
    // The agent's part: it enforces, and has compiled pod x/a.
    PolicyState::open(&pins).unwrap().set_enforcing(true).unwrap();
    let compiled = PodPolicy {
        endpoint: EndpointPolicy { rules_id: 42, flags: ENDPOINT_INGRESS_ISOLATED },
        identity: 300,
        identity6: 0,
    };
    PolicyPods::open(&pins).unwrap().insert("x", "a", compiled).unwrap();

    let a = Netns::new("slpod").unwrap();
    let out = lab.cni_call(&node, &call(&node, "ADD", &a, Some(("x", "a")))).unwrap();
    assert!(out.success, "ADD x/a: {} {}", out.stdout, out.stderr);
    let ip_a = ip_of(&out.json());
    assert_eq!(entries(&pins, ip_a), (Some(compiled.endpoint), Some(300)), "x/a gets what the agent compiled");

    // x/b: nothing from the agent. ADD waits (bounded), then fails closed.
    let b = Netns::new("slpod").unwrap();
    let started = Instant::now();
    let out = lab.cni_call(&node, &call(&node, "ADD", &b, Some(("x", "b")))).unwrap();
    let took = started.elapsed();
    assert!(out.success, "ADD x/b: {} {}", out.stdout, out.stderr);
    assert!(took >= Duration::from_secs(1) && took < Duration::from_secs(5), "waited {took:?}");
    assert!(out.stderr.contains("no NetworkPolicy entry for pod x/b"), "said so: {}", out.stderr);
    let ip_b = ip_of(&out.json());
    let (endpoint, identity) = entries(&pins, ip_b);
    assert_eq!(endpoint.map(|e| e.flags), Some(ENDPOINT_POLICY_PENDING), "never open");
    assert_eq!(identity, Some(IDENTITY_UNKNOWN_CLUSTER));

    // A runtime that names no pod: not a Kubernetes pod, no entry.
    let c = Netns::new("slpod").unwrap();
    let out = lab.cni_call(&node, &call(&node, "ADD", &c, None)).unwrap();
    assert!(out.success, "{}", out.stderr);
    assert_eq!(entries(&pins, ip_of(&out.json())), (None, None));

    // DEL removes them.
    for (pod, k8s, ip) in [(&a, ("x", "a"), ip_a), (&b, ("x", "b"), ip_b)] {
        let out = lab.cni_call(&node, &call(&node, "DEL", pod, Some(k8s))).unwrap();
        assert!(out.success, "DEL: {}", out.stdout);
        assert_eq!(entries(&pins, ip), (None, None), "DEL of {k8s:?} left its policy entries");
    }
    let out = lab.cni_call(&node, &call(&node, "DEL", &c, None)).unwrap();
    assert!(out.success);

    // No agent enforcing: a named pod gets nothing (and no wait).
    PolicyState::open(&pins).unwrap().set_enforcing(false).unwrap();
    let d = Netns::new("slpod").unwrap();
    let started = Instant::now();
    let out = lab.cni_call(&node, &call(&node, "ADD", &d, Some(("x", "d")))).unwrap();
    assert!(out.success);
    assert!(started.elapsed() < Duration::from_secs(1), "waited with nothing enforcing");
    assert_eq!(entries(&pins, ip_of(&out.json())), (None, None));
    assert!(lab.cni_call(&node, &call(&node, "DEL", &d, Some(("x", "d")))).unwrap().success);
}

#[test]
fn a_failure_after_the_policy_step_takes_its_entries_back() {
    let lab = lab();
    let node = lab.state.nodes[0].clone();
    let pins = PinDir::new(&node.pin_dir);
    PolicyState::open(&pins).unwrap().set_enforcing(true).unwrap();
    let compiled = PodPolicy {
        endpoint: EndpointPolicy { rules_id: 7, flags: ENDPOINT_INGRESS_ISOLATED },
        identity: 301,
        identity6: 0,
    };
    PolicyPods::open(&pins).unwrap().insert("x", "a", compiled).unwrap();
    let before =
        (PolicyEndpoints::open(&pins).unwrap().all().unwrap(), PolicyIdentities::open(&pins).unwrap().all().unwrap());
    for step in ["policy", "attach"] {
        let pod = Netns::new("slpod").unwrap();
        let mut c = call(&node, "ADD", &pod, Some(("x", "a")));
        c.bin = Some(faulty_cni_bin());
        c.env.push(("SLUICE_CNI_FAIL_AFTER".into(), step.into()));
        let out = lab.cni_call(&node, &c).unwrap();
        assert!(!out.success, "ADD failing after {step} succeeded");
        let after = (
            PolicyEndpoints::open(&pins).unwrap().all().unwrap(),
            PolicyIdentities::open(&pins).unwrap().all().unwrap(),
        );
        assert_eq!(before, after, "a failure after {step} left policy entries");
    }
}

#[test]
fn dual_stack_add_writes_the_ipv6_entries_in_the_same_step_and_a_failure_or_del_removes_them() {
    let lab = dual_stack_lab();
    let node = lab.state.nodes[0].clone();
    let pins = PinDir::new(&node.pin_dir);
    PolicyState::open(&pins).unwrap().set_enforcing(true).unwrap();
    // An ipBlock told x/a's addresses apart: its IPv6 has an identity of
    // its own.
    let compiled = PodPolicy {
        endpoint: EndpointPolicy { rules_id: 42, flags: ENDPOINT_INGRESS_ISOLATED },
        identity: 300,
        identity6: 302,
    };
    PolicyPods::open(&pins).unwrap().insert("x", "a", compiled).unwrap();

    let a = Netns::new("slpod").unwrap();
    let out = lab.cni_call(&node, &call(&node, "ADD", &a, Some(("x", "a")))).unwrap();
    assert!(out.success, "ADD x/a: {} {}", out.stdout, out.stderr);
    let (ip_a, ip6_a) = (ip_of(&out.json()), ip6_of(&out.json()));
    assert_eq!(entries(&pins, ip_a), (Some(compiled.endpoint), Some(300)));
    assert_eq!(
        entries6(&pins, ip6_a),
        (Some(compiled.endpoint), Some(302)),
        "x/a's IPv6 is isolated as its IPv4 from its first packet, with its IPv6 identity"
    );

    // No entry from the agent: both addresses fail closed.
    let b = Netns::new("slpod").unwrap();
    let out = lab.cni_call(&node, &call(&node, "ADD", &b, Some(("x", "b")))).unwrap();
    assert!(out.success, "ADD x/b: {} {}", out.stdout, out.stderr);
    let ip6_b = ip6_of(&out.json());
    let (endpoint, identity) = entries6(&pins, ip6_b);
    assert_eq!(endpoint.map(|e| e.flags), Some(ENDPOINT_POLICY_PENDING), "never open over IPv6 either");
    assert_eq!(identity, Some(IDENTITY_UNKNOWN_CLUSTER));

    // A failure after the policy step (or after attaching) takes both
    // families' entries back.
    let before =
        (PolicyEndpoints6::open(&pins).unwrap().all().unwrap(), PolicyIdentities6::open(&pins).unwrap().all().unwrap());
    for step in ["policy", "attach"] {
        let pod = Netns::new("slpod").unwrap();
        let mut c = call(&node, "ADD", &pod, Some(("x", "a")));
        c.bin = Some(faulty_cni_bin());
        c.env.push(("SLUICE_CNI_FAIL_AFTER".into(), step.into()));
        let out = lab.cni_call(&node, &c).unwrap();
        assert!(!out.success, "ADD failing after {step} succeeded");
        let after = (
            PolicyEndpoints6::open(&pins).unwrap().all().unwrap(),
            PolicyIdentities6::open(&pins).unwrap().all().unwrap(),
        );
        assert_eq!(before, after, "a failure after {step} left IPv6 policy entries");
    }

    // DEL removes both families' entries.
    for (pod, k8s, ip6) in [(&a, ("x", "a"), ip6_a), (&b, ("x", "b"), ip6_b)] {
        let out = lab.cni_call(&node, &call(&node, "DEL", pod, Some(k8s))).unwrap();
        assert!(out.success, "DEL: {}", out.stdout);
        assert_eq!(entries6(&pins, ip6), (None, None), "DEL of {k8s:?} left its IPv6 policy entries");
    }
    assert_eq!(entries(&pins, ip_a), (None, None));
}
