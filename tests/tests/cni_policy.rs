//! The CNI plugin's NetworkPolicy step (root): ADD copies the agent's
//! `POLICY_PODS` entry for the pod into `POLICY_ENDPOINTS[ip]` and
//! `POLICY_IDENTITIES[ip/32]` before the pod's programs are attached;
//! without an entry it waits briefly, then fails closed
//! (`ENDPOINT_POLICY_PENDING`) and says so; a failure after the step takes
//! the entries back; DEL removes them; on a node where no agent enforces
//! NetworkPolicy (`POLICY_STATE_ENFORCING` clear) it writes nothing. The
//! agent here runs from a peers file, so the test plays the agent's part in
//! the maps.
use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use serde_json::Value;
use sluice_common::policy::{
    EndpointPolicy, PodPolicy, ENDPOINT_INGRESS_ISOLATED, ENDPOINT_POLICY_PENDING, IDENTITY_UNKNOWN_CLUSTER,
};
use sluice_node::datapath::{
    pins::PinDir,
    policy_maps::{PolicyEndpoints, PolicyIdentities, PolicyPods, PolicyState},
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
        _pad: 0,
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
        _pad: 0,
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
