//! The CNI plugin end to end: every verb, spec errors, rollback after a
//! failure at each ADD step, crash cleanup, idempotent DEL, concurrency.
use std::{collections::BTreeSet, path::PathBuf, thread::sleep, time::Duration};

use serde_json::{json, Value};
use sluice_node::{datapath::pins::PinDir, pod::device::PodDevice};
use sluice_tests::{
    bin, faulty_cni_bin,
    lab::{ns_exec, ping, CniCall, Lab, LabOptions, Node},
    node_state::{files_under, snapshot},
    require_root, Netns,
};

use sluice_cni::fault::ADD_STEPS;

fn lab(nodes: usize) -> Lab {
    require_root();
    let opts = LabOptions::new(nodes, 0, bin("sluice-agent").parent().unwrap().to_path_buf());
    Lab::up(&opts).expect("lab up")
}

fn conf(node: &Node) -> Value {
    Lab::plugin_config(node).unwrap()
}

/// The node's IPAM state (`<data dir>/ipam`).
fn ipam_dir(node: &Node) -> PathBuf {
    Lab::data_dir(node).join("ipam")
}

fn leases(node: &Node) -> usize {
    files_under(&ipam_dir(node))
        .iter()
        .filter(|p| p.rsplit('/').next().unwrap().parse::<std::net::Ipv4Addr>().is_ok())
        .count()
}

fn add(lab: &Lab, node: &Node, pod: &Netns) -> Value {
    let out = lab.cni_call(node, &CniCall::new("ADD", &pod.name, Some(&pod.name), conf(node))).unwrap();
    assert!(out.success, "ADD failed: {} {}", out.stdout, out.stderr);
    out.json()
}

fn pod_ip(result: &Value) -> String {
    result["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().to_string()
}

#[test]
fn failed_add_after_each_step_leaves_the_node_exactly_as_before() {
    let lab = lab(1);
    let node = lab.state.nodes[0].clone();
    for step in ADD_STEPS {
        let pod = Netns::new("slpod").unwrap();
        let before = snapshot(&lab, &node, Some(&pod));
        let mut call = CniCall::new("ADD", &pod.name, Some(&pod.name), conf(&node));
        call.bin = Some(faulty_cni_bin());
        call.env.push(("SLUICE_CNI_FAIL_AFTER".into(), step.into()));
        let out = lab.cni_call(&node, &call).unwrap();
        assert!(!out.success, "ADD with a failure after {step} succeeded");
        let err = out.json();
        assert_eq!(err["code"], 102, "after {step}: {}", out.stdout);
        assert!(err["details"].as_str().unwrap().contains(step), "{}", out.stdout);
        let after = snapshot(&lab, &node, Some(&pod));
        assert_eq!(before, after, "node changed by a failed ADD (failure after {step})");
        // And the same pod can be added cleanly afterwards.
        let result = add(&lab, &node, &pod);
        assert!(ping(&pod.name, &node.ip), "pod added after a failed ADD works");
        let del = lab.cni_call(&node, &CniCall::new("DEL", &pod.name, Some(&pod.name), conf(&node))).unwrap();
        assert!(del.success, "{}", del.stdout);
        let _ = result;
    }
}

#[test]
fn add_killed_after_each_step_is_cleaned_up_by_del() {
    let lab = lab(1);
    let node = lab.state.nodes[0].clone();
    for step in ADD_STEPS {
        let pod = Netns::new("slpod").unwrap();
        let before = snapshot(&lab, &node, None);
        let mut call = CniCall::new("ADD", &pod.name, Some(&pod.name), conf(&node));
        call.bin = Some(faulty_cni_bin());
        call.env.push(("SLUICE_CNI_CRASH_AFTER".into(), step.into()));
        let out = lab.cni_call(&node, &call).unwrap();
        assert_eq!(out.exit_code, None, "plugin should have died by a signal after {step}");
        let del = lab.cni_call(&node, &CniCall::new("DEL", &pod.name, Some(&pod.name), conf(&node))).unwrap();
        assert!(del.success, "DEL after a crash at {step}: {}", del.stdout);
        assert_eq!(before, snapshot(&lab, &node, None), "DEL left something after a crash at {step}");
    }
}

#[test]
fn agent_sweeps_pods_whose_namespace_is_gone_and_crashed_adds() {
    let lab = lab(1);
    let node = lab.state.nodes[0].clone();
    let before = snapshot(&lab, &node, None);
    // A pod whose namespace is deleted without DEL.
    let gone = Netns::new("slpod").unwrap();
    add(&lab, &node, &gone);
    // An ADD killed right after making the veth (the pod's end is made in
    // the pod's namespace): no endpoint entry, so never finished.
    let crashed = Netns::new("slpod").unwrap();
    let mut call = CniCall::new("ADD", &crashed.name, Some(&crashed.name), conf(&node));
    call.bin = Some(faulty_cni_bin());
    call.env.push(("SLUICE_CNI_CRASH_AFTER".into(), "veth".into()));
    assert_eq!(lab.cni_call(&node, &call).unwrap().exit_code, None);
    assert_eq!(leases(&node), 2);
    drop(gone);
    // Grace 4 s, sweep every 0.5 s (the lab's agent settings).
    let mut after = String::new();
    for _ in 0..60 {
        sleep(Duration::from_millis(250));
        after = snapshot(&lab, &node, None);
        if after == before {
            break;
        }
    }
    assert_eq!(before, after, "agent did not sweep the dead pod and the crashed ADD");
    assert_eq!(leases(&node), 0);
}

#[test]
fn del_is_idempotent() {
    let lab = lab(1);
    let node = lab.state.nodes[0].clone();
    let before = snapshot(&lab, &node, None);
    let del = |cid: &str, netns: Option<&str>| {
        let out = lab.cni_call(&node, &CniCall::new("DEL", cid, netns, conf(&node))).unwrap();
        assert!(out.success, "DEL {cid}: {} {}", out.stdout, out.stderr);
        assert!(out.stdout.trim().is_empty(), "DEL prints nothing on success: {}", out.stdout);
    };
    // Twice.
    let pod = Netns::new("slpod").unwrap();
    add(&lab, &node, &pod);
    del(&pod.name, Some(&pod.name));
    del(&pod.name, Some(&pod.name));
    // Never added.
    del("never-added", Some(&pod.name));
    // After the namespace is gone, without CNI_NETNS (as ctr does).
    let pod2 = Netns::new("slpod").unwrap();
    add(&lab, &node, &pod2);
    let name = pod2.name.clone();
    drop(pod2);
    del(&name, None);
    assert_eq!(before, snapshot(&lab, &node, None));
}

#[test]
fn repeated_add_returns_the_same_address() {
    let lab = lab(1);
    let node = lab.state.nodes[0].clone();
    let pod = Netns::new("slpod").unwrap();
    let first = pod_ip(&add(&lab, &node, &pod));
    let second = pod_ip(&add(&lab, &node, &pod));
    assert_eq!(first, second);
    assert_eq!(leases(&node), 1);
    assert!(ping(&pod.name, &node.ip));
    // Released addresses are not handed out again at once (round-robin).
    let del = lab.cni_call(&node, &CniCall::new("DEL", &pod.name, Some(&pod.name), conf(&node))).unwrap();
    assert!(del.success);
    let other = Netns::new("slpod").unwrap();
    assert_ne!(pod_ip(&add(&lab, &node, &other)), first);
}

#[test]
fn twenty_concurrent_adds_get_distinct_addresses_and_dels_release_them() {
    let lab = lab(1);
    let node = lab.state.nodes[0].clone();
    let before = snapshot(&lab, &node, None);
    let pods: Vec<Netns> = (0..20).map(|_| Netns::new("slpod").unwrap()).collect();
    let ips: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = pods.iter().map(|p| s.spawn(|| pod_ip(&add(&lab, &node, p)))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let distinct: BTreeSet<&String> = ips.iter().collect();
    assert_eq!(distinct.len(), 20, "{ips:?}");
    for (p, ip) in pods.iter().zip(&ips) {
        assert!(ping(&node.netns, ip), "node -> {ip}");
        assert!(ping(&p.name, &node.ip));
    }
    std::thread::scope(|s| {
        for p in &pods {
            s.spawn(|| {
                let out = lab.cni_call(&node, &CniCall::new("DEL", &p.name, Some(&p.name), conf(&node))).unwrap();
                assert!(out.success, "{}", out.stdout);
            });
        }
    });
    assert_eq!(leases(&node), 0);
    assert_eq!(before, snapshot(&lab, &node, None));
}

#[test]
fn errors_follow_the_spec() {
    let lab = lab(1);
    let node = lab.state.nodes[0].clone();
    let pod = Netns::new("slpod").unwrap();
    let call = |conf: Value, env: &[(&str, &str)]| {
        let mut c = CniCall::new("ADD", &pod.name, Some(&pod.name), conf);
        c.env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        lab.cni_call(&node, &c).unwrap()
    };
    let expect = |out: sluice_tests::lab::CniOutcome, code: u64, needle: &str| {
        assert!(!out.success, "should fail: {}", out.stdout);
        let j = out.json();
        assert_eq!(j["code"], code, "{}", out.stdout);
        assert!(j["msg"].is_string() && j["cniVersion"].is_string(), "{}", out.stdout);
        assert!(j["details"].as_str().unwrap().contains(needle), "details should mention {needle}: {}", out.stdout);
    };
    let good = conf(&node);
    let mut bad_mtu = good.clone();
    bad_mtu["mtu"] = json!("big");
    let mut bad_version = good.clone();
    bad_version["cniVersion"] = json!("0.1.0");
    let mut no_agent = good.clone();
    no_agent["pinDir"] = json!("/sys/fs/bpf/sluice-no-such-node");
    expect(call(json!({"name": "sluice", "type": "sluice"}), &[]), 7, "cniVersion");
    // A JSON string, not an object: decode failure.
    expect(call(json!("{not json"), &[]), 6, "not valid JSON");
    expect(call(bad_mtu, &[]), 7, "mtu");
    expect(call(bad_version, &[]), 1, "0.1.0");
    expect(call(no_agent.clone(), &[]), 11, "sluice-no-such-node");
    // Missing CNI_IFNAME: invalid environment.
    let mut raw = CniCall::new("ADD", &pod.name, Some(&pod.name), Value::Null);
    raw.ifname = String::new();
    expect(lab.cni_call(&node, &raw).unwrap(), 4, "CNI_IFNAME");
    // Valid JSON, but an array, not a network config object.
    let undecodable = CniCall::new("ADD", &pod.name, Some(&pod.name), json!([1, 2]));
    expect(
        lab.cni_call(&node, &undecodable).unwrap(),
        6,
        "network config is not valid JSON: invalid type: integer `1`",
    );
    // Nothing was left by any of these.
    assert_eq!(leases(&node), 0);
    // VERSION.
    let v = lab.cni_call(&node, &CniCall::new("VERSION", "", None, json!({"cniVersion": "1.0.0"}))).unwrap();
    let j = v.json();
    assert!(v.success);
    let versions: Vec<&str> = j["supportedVersions"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(versions.contains(&"1.0.0") && versions.contains(&"1.1.0") && versions.contains(&"0.4.0"), "{versions:?}");
    // STATUS: ready, then not (no agent for that pin dir).
    let st = lab.cni_call(&node, &CniCall::new("STATUS", "", None, good.clone())).unwrap();
    assert!(st.success, "{}", st.stdout);
    expect(lab.cni_call(&node, &CniCall::new("STATUS", "", None, no_agent)).unwrap(), 50, "sluice-no-such-node");
}

#[test]
fn pool_exhaustion_is_a_clear_error_and_status_says_so() {
    let lab = lab(1);
    let node = lab.state.nodes[0].clone();
    // A /30 has one pod address (network, node-reserved and broadcast excluded).
    let mut tiny = conf(&node);
    tiny["podCIDR"] = json!("10.244.1.0/30");
    let (a, b) = (Netns::new("slpod").unwrap(), Netns::new("slpod").unwrap());
    let ok = lab.cni_call(&node, &CniCall::new("ADD", &a.name, Some(&a.name), tiny.clone())).unwrap();
    assert!(ok.success, "{}", ok.stdout);
    let full = lab.cni_call(&node, &CniCall::new("ADD", &b.name, Some(&b.name), tiny.clone())).unwrap();
    let j = full.json();
    assert_eq!(j["code"], 100, "{}", full.stdout);
    let details = j["details"].as_str().unwrap();
    assert!(details.contains("10.244.1.0/30") && details.contains("1 of 1"), "{details}");
    let st = lab.cni_call(&node, &CniCall::new("STATUS", "", None, tiny.clone())).unwrap();
    assert_eq!(st.json()["code"], 50, "{}", st.stdout);
    assert!(st.json()["details"].as_str().unwrap().contains("exhausted"));
    let del = lab.cni_call(&node, &CniCall::new("DEL", &a.name, Some(&a.name), tiny.clone())).unwrap();
    assert!(del.success);
    assert!(lab.cni_call(&node, &CniCall::new("STATUS", "", None, tiny)).unwrap().success);
}

#[test]
fn gc_releases_every_attachment_not_listed() {
    let lab = lab(1);
    let node = lab.state.nodes[0].clone();
    let pods: Vec<Netns> = (0..3).map(|_| Netns::new("slpod").unwrap()).collect();
    let ips: Vec<String> = pods.iter().map(|p| pod_ip(&add(&lab, &node, p))).collect();
    let mut gc = conf(&node);
    gc["cniVersion"] = json!("1.1.0");
    // Without the list, GC is a configuration error and removes nothing.
    let refused = lab.cni_call(&node, &CniCall::new("GC", "", None, gc.clone())).unwrap();
    assert!(!refused.success);
    assert_eq!(refused.json()["code"], 7, "{}", refused.stdout);
    assert!(refused.json()["details"].as_str().unwrap().contains("cni.dev/valid-attachments"), "{}", refused.stdout);
    assert_eq!(leases(&node), 3, "a GC without its list wiped attachments");
    gc["cni.dev/valid-attachments"] = json!([{"containerID": pods[0].name, "ifname": "eth0"}]);
    let out = lab.cni_call(&node, &CniCall::new("GC", "", None, gc)).unwrap();
    assert!(out.success, "{} {}", out.stdout, out.stderr);
    assert_eq!(leases(&node), 1);
    assert_eq!(lab.pod_endpoints(0).unwrap(), vec![ips[0].clone()]);
    assert!(ping(&pods[0].name, &node.ip), "the listed pod is untouched");
    let links = ns_exec(&pods[1].name, &["ip", "-o", "link", "show"]).unwrap();
    assert!(!links.contains("eth0"), "GC removed the unlisted pod's interface: {links}");
}

#[test]
fn a_full_endpoint_map_is_a_named_error_and_add_leaves_nothing() {
    let lab = lab(1);
    let node = lab.state.nodes[0].clone();
    let pins = PinDir::new(&node.pin_dir);
    let mut endpoints = sluice_node::datapath::pinned_maps::Endpoints::open(&pins).unwrap();
    let used = endpoints.all().unwrap().len() as u32;
    let fake = |i: u32| std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(10, 200, 0, 0)) + i);
    let ep = sluice_common::EndpointInfo { host_ifindex: 1, pod_mac: [0; 6], host_mac: [0; 6] };
    let room = sluice_common::maps::limits::MAX_ENDPOINTS - used;
    for i in 0..room {
        endpoints.insert(fake(i), ep).unwrap();
    }
    let pod = Netns::new("slpod").unwrap();
    let out = lab.cni_call(&node, &CniCall::new("ADD", &pod.name, Some(&pod.name), conf(&node))).unwrap();
    assert!(!out.success);
    assert_eq!(out.json()["code"], 103, "{}", out.stdout);
    let details = out.json()["details"].as_str().unwrap().to_string();
    assert!(details.contains("map ENDPOINTS is full (4096 entries)"), "{details}");
    assert_eq!(leases(&node), 0, "the failed ADD released its address");
    let links = ns_exec(&node.netns, &["ip", "-o", "link", "show"]).unwrap();
    assert_eq!(links.matches("slc").count(), 0, "the failed ADD removed its veth: {links}");
    for i in 0..room {
        endpoints.remove(fake(i)).unwrap();
    }
    assert!(lab.cni_call(&node, &CniCall::new("ADD", &pod.name, Some(&pod.name), conf(&node))).unwrap().success);
}

#[test]
fn check_verifies_what_add_left() {
    let lab = lab(1);
    let node = lab.state.nodes[0].clone();
    let pod = Netns::new("slpod").unwrap();
    let result = add(&lab, &node, &pod);
    let mut check_conf = conf(&node);
    check_conf["prevResult"] = result.clone();
    let check = |c: &Value| lab.cni_call(&node, &CniCall::new("CHECK", &pod.name, Some(&pod.name), c.clone())).unwrap();
    let ok = check(&check_conf);
    assert!(ok.success, "{}", ok.stdout);
    // Inside the pod: each of ADD's settings, broken and restored in turn.
    let details = |out: &sluice_tests::lab::CniOutcome| out.json()["details"].as_str().unwrap_or_default().to_string();
    let ip_addr = pod_ip(&result);
    let host_mac = result["interfaces"][0]["mac"].as_str().unwrap().to_string();
    // The MTU the conflist gives pods (the agent's choice, e.g. less the
    // tunnel's overhead).
    let mtu = check_conf["mtu"].as_u64().map(|m| m.to_string()).unwrap_or_else(|| lab.state.mtu.to_string());
    let device =
        PodDevice::parse(check_conf["device"].as_str().unwrap_or("veth")).expect("a pod device in the conflist");
    let neighbour = ["ip", "neigh", "replace", "169.254.1.1", "lladdr", &host_mac, "dev", "eth0", "nud", "permanent"];
    let mut breakages = vec![
        (
            vec!["ip", "link", "set", "eth0", "mtu", "1280"],
            vec!["ip", "link", "set", "eth0", "mtu", mtu.as_str()],
            "MTU",
        ),
        (
            vec!["ip", "route", "del", "default"],
            vec!["ip", "route", "add", "default", "via", "169.254.1.1", "dev", "eth0"],
            "default route",
        ),
        (
            vec!["ip", "route", "del", "169.254.1.1", "dev", "eth0"],
            vec!["ip", "route", "add", "169.254.1.1", "dev", "eth0", "scope", "link"],
            "route to the gateway",
        ),
    ];
    // A veth pod reaches its gateway through a permanent neighbour entry; a
    // netkit (L3, NOARP) pod has none to break.
    if device == PodDevice::Veth {
        breakages.push((vec!["ip", "neigh", "del", "169.254.1.1", "dev", "eth0"], neighbour.to_vec(), "neighbour"));
    }
    for (break_it, restore, needle) in breakages {
        ns_exec(&pod.name, &break_it).unwrap();
        let out = check(&check_conf);
        assert!(!out.success, "CHECK missed: {break_it:?}");
        assert!(details(&out).contains(needle), "{needle}: {}", out.stdout);
        ns_exec(&pod.name, &restore).unwrap();
        assert!(check(&check_conf).success, "restored {restore:?}: {}", check(&check_conf).stdout);
    }
    let addr = format!("{ip_addr}/32");
    ns_exec(&pod.name, &["ip", "addr", "del", &addr, "dev", "eth0"]).unwrap();
    let out = check(&check_conf);
    assert!(!out.success && details(&out).contains("lacks its address"), "{}", out.stdout);
    ns_exec(&pod.name, &["ip", "addr", "add", &addr, "dev", "eth0"]).unwrap();
    // Deleting the last address took the routes and the neighbour with it:
    // put them back too.
    ns_exec(&pod.name, &["ip", "route", "add", "169.254.1.1", "dev", "eth0", "scope", "link"]).unwrap();
    ns_exec(&pod.name, &["ip", "route", "replace", "default", "via", "169.254.1.1", "dev", "eth0"]).unwrap();
    if device == PodDevice::Veth {
        ns_exec(&pod.name, &neighbour).unwrap();
    }
    assert!(check(&check_conf).success, "{}", check(&check_conf).stdout);
    // A prevResult that does not list our address fails.
    let mut wrong = check_conf.clone();
    wrong["prevResult"]["ips"] = json!([]);
    assert!(!check(&wrong).success);
    // Remove the endpoint entry behind the plugin's back: CHECK notices.
    let pins = PinDir::new(&node.pin_dir);
    let ip: std::net::Ipv4Addr = pod_ip(&result).parse().unwrap();
    sluice_node::datapath::pinned_maps::Endpoints::open(&pins).unwrap().remove(ip).unwrap();
    let broken = check(&check_conf);
    assert!(!broken.success);
    assert!(broken.json()["details"].as_str().unwrap().contains("ENDPOINTS"), "{}", broken.stdout);
}

/// A conflist whose `podCIDR` is not this node's (left from an earlier node
/// configuration) is refused before anything is allocated: CNI code 7 with
/// both CIDRs named, no lease, no device, no entry. Before, ADD handed out
/// an address from it that no node routes here.
#[test]
fn a_stale_conflist_pod_cidr_is_refused_and_nothing_is_allocated() {
    let lab = lab(1);
    let node = lab.state.nodes[0].clone();
    let pod = Netns::new("slpod").unwrap();
    let before = snapshot(&lab, &node, Some(&pod));
    for stale in ["10.244.9.0/24", "10.0.0.0/8"] {
        let mut conf = conf(&node);
        conf["podCIDR"] = json!(stale);
        let out = lab.cni_call(&node, &CniCall::new("ADD", &pod.name, Some(&pod.name), conf)).unwrap();
        assert!(!out.success, "ADD with a stale podCIDR {stale} succeeded: {}", out.stdout);
        let err = out.json();
        assert_eq!(err["code"], 7, "{}", out.stdout);
        assert!(err["msg"].as_str().unwrap().contains("podCIDR"), "{}", out.stdout);
        let details = err["details"].as_str().unwrap();
        assert!(details.contains(stale) && details.contains(&node.pod_cidr) && details.contains("stale"), "{details}");
        assert_eq!(before, snapshot(&lab, &node, Some(&pod)), "a refused ADD ({stale}) changed the node");
        let stale_store = ipam_dir(&node).join(stale.replace('/', "_"));
        assert!(!stale_store.exists(), "IPAM opened a store for {stale}");
    }
    // The node's own conflist still adds the pod.
    add(&lab, &node, &pod);
    assert!(ping(&pod.name, &node.ip));
}
