//! The agent's command line: start-up validation fails loudly and early,
//! `install-cni` installs the plugin, `status` tells healthy from not.
use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use sluice_tests::{
    bin,
    lab::{del_netns, ns_cmd, ns_exec, wait_ready, Lab, LabOptions, CLUSTER_CIDR},
    require_root, unique, PinDirGuard,
};

/// Run `sluice-agent run` with `args` in node 0's namespace; it must exit
/// non-zero within 20 s, having left nothing behind: no pin directory (every
/// refusal comes before the datapath is loaded) and no agent state. Returns
/// what it printed.
fn run_expecting_failure(lab: &Lab, args: &[&str]) -> String {
    let node = &lab.state.nodes[0];
    // Removes the pins on drop should the agent leave some (the assertion
    // below fails first); never before that assertion.
    let pins = PinDirGuard::new().unwrap();
    let pin_dir = pins.path.display().to_string();
    let data_dir = node.dir.join(unique("bad"));
    let agent = bin("sluice-agent").display().to_string();
    let mut cmd = ns_cmd(
        &node.netns,
        &[&agent, "run", "--node-name", "n1", "--pin-dir", &pin_dir, "--data-dir", &data_dir.display().to_string()],
    );
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("agent with {args:?} kept running; it should have refused to start");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!status.success(), "agent with {args:?} exited 0");
    assert!(!pins.path.exists(), "a refused start ({args:?}) left pins in {pin_dir}:\n{text}");
    let state = data_dir.join("agent-state.json");
    assert!(!state.exists(), "a refused start ({args:?}) left agent state {}", state.display());
    text
}

#[test]
fn start_up_validation_fails_loudly_with_the_reason() {
    require_root();
    let lab = Lab::up(&LabOptions::new(1, 0, bin("sluice-agent").parent().unwrap().to_path_buf())).unwrap();
    let peers = lab.peers_file().display().to_string();
    let base = |pod: &'static str| vec!["--uplink", "eth0", "--pod-cidr", pod, "--cluster-cidr", CLUSTER_CIDR];

    let mut a = base("10.244.1.0/24");
    a[1] = "nope0";
    a.extend(["--peers-file", &peers]);
    let out = run_expecting_failure(&lab, &a);
    assert!(out.contains("interface nope0 does not exist"), "{out}");

    let mut a = vec!["--uplink", "eth0", "--pod-cidr", "172.30.0.0/26", "--cluster-cidr", "172.30.0.0/16"];
    a.extend(["--peers-file", &peers]);
    let out = run_expecting_failure(&lab, &a);
    assert!(out.contains("overlaps the node network 172.30.0.0/24"), "{out}");

    let mut a = base("10.244.1.0/24");
    a.extend(["--service-cidr", "10.244.128.0/17", "--peers-file", &peers]);
    let out = run_expecting_failure(&lab, &a);
    assert!(out.contains("overlaps the service CIDR 10.244.128.0/17"), "{out}");

    // Another node's CIDR overlapping ours.
    let bad_peers = lab.state.dir.join("overlap-peers.json");
    std::fs::write(
        &bad_peers,
        r#"{"peers":[{"name":"n1","nodeIP":"172.30.0.1","podCIDR":"10.244.1.0/24"},
                     {"name":"n2","nodeIP":"172.30.0.2","podCIDR":"10.244.1.128/25"}]}"#,
    )
    .unwrap();
    let bad = bad_peers.display().to_string();
    let mut a = base("10.244.1.0/24");
    a.extend(["--peers-file", &bad]);
    let out = run_expecting_failure(&lab, &a);
    assert!(out.contains("n2") && out.contains("overlap"), "{out}");

    // bpffs cannot be mounted where asked.
    let mut a = base("10.244.1.0/24");
    a.extend(["--peers-file", &peers, "--bpffs", "/proc/sluice-no-bpffs"]);
    let out = run_expecting_failure(&lab, &a);
    assert!(out.contains("bpffs"), "{out}");
    // A directory that is not a bpffs (as `ip netns exec`'s fresh /sys
    // leaves /sys/fs/bpf): refused, never mounted privately.
    let mut a = base("10.244.1.0/24");
    a.extend(["--peers-file", &peers, "--bpffs", "/tmp"]);
    let out = run_expecting_failure(&lab, &a);
    assert!(out.contains("/tmp is not a bpffs") && out.contains("--mount-bpffs"), "{out}");

    // No membership source.
    let out = run_expecting_failure(&lab, &base("10.244.1.0/24"));
    assert!(out.contains("--kubernetes or --peers-file"), "{out}");
}

#[test]
fn install_cni_puts_a_working_plugin_in_place() {
    require_root();
    let dir = std::env::temp_dir().join(unique("sluice-cni-bin-"));
    let out = Command::new(bin("sluice-agent"))
        .args(["install-cni", "--bin-dir", &dir.display().to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let installed = dir.join("sluice");
    let v = Command::new(&installed).env_clear().env("CNI_COMMAND", "VERSION").output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let j: serde_json::Value = serde_json::from_slice(&v.stdout).unwrap();
    assert!(j["supportedVersions"].as_array().unwrap().iter().any(|v| v == "1.1.0"), "{j}");
}

#[test]
fn status_text_says_healthy_and_then_names_the_problem_first() {
    require_root();
    let mut lab = Lab::up(&LabOptions::new(2, 1, bin("sluice-agent").parent().unwrap().to_path_buf())).unwrap();
    let node = lab.state.nodes[0].clone();
    let status = || {
        Command::new(bin("sluice-agent"))
            .args(["status", "--pin-dir", &node.pin_dir.display().to_string()])
            .args(["--data-dir", &node.dir.join("data").display().to_string()])
            .output()
            .unwrap()
    };
    let ok = status();
    let text = String::from_utf8_lossy(&ok.stdout).to_string();
    assert!(ok.status.success(), "{text}");
    assert_eq!(text.lines().next(), Some("sluice: healthy"), "{text}");
    // One pod plus the node's health endpoint.
    for needle in [
        "programs attached:",
        "from_uplink",
        "from_pod",
        "10.244.2.0/24",
        "node n2",
        "local endpoints (2 of",
        "source_spoofed",
    ] {
        assert!(text.contains(needle), "status lacks {needle:?}:\n{text}");
    }
    lab.kill_agent(0).unwrap();
    let bad = status();
    let text = String::from_utf8_lossy(&bad.stdout).to_string();
    assert!(!bad.status.success());
    assert!(text.lines().next().unwrap().starts_with("sluice: UNHEALTHY: agent not running"), "{text}");
}

#[test]
fn uplink_defaults_to_the_default_route_and_mtu_can_be_lowered() {
    require_root();
    let lab = Lab::up(&LabOptions::new(1, 0, bin("sluice-agent").parent().unwrap().to_path_buf())).unwrap();
    let node = lab.state.nodes[0].clone();
    ns_exec(&node.netns, &["ip", "route", "add", "default", "dev", "eth0"]).unwrap();
    let pins = PinDirGuard::new().unwrap();
    let dir = node.dir.join("second");
    let health = format!("{}x", Lab::health_netns(&node));
    let agent_bin = bin("sluice-agent").display().to_string();
    let mut agent = ns_cmd(
        &node.netns,
        &[&agent_bin, "run", "--node-name", "n1", "--cluster-cidr", CLUSTER_CIDR, "--pod-cidr", "10.244.1.0/24"],
    )
    .args(["--peers-file", &lab.peers_file().display().to_string(), "--mtu", "1400"])
    // The lab's agent already serves metrics in this namespace.
    .args(["--metrics-addr", "off"])
    .args(["--pin-dir", &pins.path.display().to_string(), "--health-netns", &health])
    .args(["--data-dir", &dir.join("data").display().to_string()])
    .args(["--cni-conf-dir", &dir.join("cni").display().to_string()])
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let conflist = dir.join("cni/10-sluice.conflist");
    let ready = wait_ready(agent.id(), &dir.join("data"), &conflist, Duration::from_secs(20));
    let _ = Command::new("kill").args(["-TERM", &agent.id().to_string()]).status();
    let _ = agent.wait();
    del_netns(&health);
    ready.expect("agent came up");
    let c: serde_json::Value = serde_json::from_slice(&std::fs::read(&conflist).unwrap()).unwrap();
    assert_eq!(c["plugins"][0]["mtu"], 1400, "{c}");
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("data/agent-state.json")).unwrap()).unwrap();
    assert_eq!(state["uplink"], "eth0", "uplink chosen from the default route: {state}");
}

fn updated_unix(data_dir: &std::path::Path) -> u64 {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data_dir.join("agent-state.json")).unwrap()).unwrap();
    v["updatedUnix"].as_u64().unwrap()
}

#[test]
fn the_agent_keeps_serving_while_a_cni_call_holds_the_ipam_lock() {
    require_root();
    let lab = Lab::up(&LabOptions::new(1, 1, bin("sluice-agent").parent().unwrap().to_path_buf())).unwrap();
    let node = lab.state.nodes[0].clone();
    let data = Lab::data_dir(&node);
    let lock = data.join("ipam").join(node.pod_cidr.replace('/', "_")).join("lock");
    assert!(lock.exists(), "{}", lock.display());
    // A CNI ADD stuck with the lock for 6 s; the agent's sweep (every 500 ms
    // in the lab) wants it too.
    let mut holder = Command::new("flock").arg(&lock).args(["sleep", "6"]).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let health = sluice_tests::lab::Lab::status(&lab, 0).unwrap()["agent"]["healthIp"].as_str().unwrap().to_string();
    let first = updated_unix(&data);
    std::thread::sleep(Duration::from_millis(2500));
    let answered = sluice_tests::cluster::tcp_text(&node.netns, &health, 4240);
    let second = updated_unix(&data);
    let _ = holder.wait();
    assert!(second > first, "the agent's loop stalled behind the IPAM lock ({first} → {second})");
    assert!(answered.is_some_and(|a| a.starts_with("sluice-health")), "the health endpoint stalled behind the lock");
}

#[test]
fn a_live_pods_link_that_fails_to_update_keeps_its_pin() {
    require_root();
    let mut lab = Lab::up(&LabOptions::new(1, 1, bin("sluice-agent").parent().unwrap().to_path_buf())).unwrap();
    let node = lab.state.nodes[0].clone();
    let pod = node.pods[0].clone();
    let host_veth = sluice_node::pod::names::host_veth(&pod.netns, "eth0");
    let pins = sluice_node::datapath::pins::PinDir::new(&node.pin_dir);
    let pin = pins.link(sluice_common::maps::programs::TO_POD, &host_veth);
    lab.kill_agent(0).unwrap();
    // Something that is not a TC link where the pod's to_pod link was (the
    // interface is alive): the update fails, and must not unpin it.
    std::fs::remove_file(&pin).unwrap();
    let p = pin.display().to_string();
    sluice_tests::sh(
        "bpftool",
        &["map", "create", &p, "type", "array", "key", "4", "value", "4", "entries", "1", "name", "not_a_link"],
    )
    .unwrap();
    lab.start_agent(0).unwrap();
    lab.wait_agent_ready(0).unwrap();
    assert!(pin.exists(), "a live pod's link pin was removed after a failed update");
    let log = std::fs::read_to_string(node.dir.join("agent.log")).unwrap();
    assert!(log.contains("pod link not updated; left as is"), "{log}");
    // Its from_pod link was updated as usual: the pod still talks.
    assert!(sluice_tests::lab::ping(&pod.netns, &node.ip));
}

/// Whether this kernel can make a netkit pair (CONFIG_NETKIT): its transmit
/// function is in the symbol table only then.
fn kernel_has_netkit() -> bool {
    std::fs::read_to_string("/proc/kallsyms").unwrap().lines().any(|l| l.ends_with(" netkit_xmit"))
}

#[test]
fn pod_device_auto_takes_what_the_kernel_has_and_a_forced_netkit_it_lacks_is_refused() {
    require_root();
    let bins = bin("sluice-agent").parent().unwrap().to_path_buf();
    let mut opts = LabOptions::new(1, 1, bins.clone());
    opts.extra_agent_args = vec!["--device=auto".into()];
    let lab = Lab::up(&opts).unwrap();
    let agent = lab.status(0).unwrap()["agent"].clone();
    let pod = &lab.state.nodes[0].pods[0];
    let link: serde_json::Value =
        serde_json::from_str(&ns_exec(&pod.netns, &["ip", "-d", "-j", "link", "show", "eth0"]).unwrap()).unwrap();
    let kind = link[0]["linkinfo"]["info_kind"].as_str().unwrap_or_default().to_string();
    let why = agent["podDeviceWhy"].as_str().unwrap_or_default().to_string();
    if kernel_has_netkit() {
        assert_eq!(agent["podDevice"], "netkit", "{agent}");
        assert_eq!(kind, "netkit", "{link}");
    } else {
        assert_eq!(agent["podDevice"], "veth", "{agent}");
        assert!(why.starts_with("auto: no netkit"), "{why}");
        assert_eq!(kind, "veth", "{link}");
        // Forced, it is refused at start with the kernel's answer, before
        // anything is pinned, and the probe leaves no device behind.
        let peers = lab.peers_file().display().to_string();
        let args = ["--uplink", "eth0", "--pod-cidr", "10.244.1.0/24", "--cluster-cidr", CLUSTER_CIDR];
        let mut a = args.to_vec();
        a.extend(["--peers-file", &peers, "--device=netkit"]);
        let out = run_expecting_failure(&lab, &a);
        assert!(out.contains("--device=netkit, but this kernel cannot make a netkit pair"), "{out}");
        let links = ns_exec(&lab.state.nodes[0].netns, &["ip", "-o", "link"]).unwrap();
        assert!(!links.contains("sluice_nkprobe"), "{links}");
    }
    // The default is auto. A lab's agents inherit SLUICE_DEVICE (the guest
    // runs set it to pick the device under test), which then decides
    // instead; the flag's default is also unit-tested (config.rs).
    drop(lab);
    if std::env::var_os("SLUICE_DEVICE").is_none() {
        let lab = Lab::up(&LabOptions::new(1, 1, bins.clone())).unwrap();
        let agent = lab.status(0).unwrap()["agent"].clone();
        let want = if kernel_has_netkit() { "netkit" } else { "veth" };
        assert_eq!(agent["podDevice"], want, "{agent}");
        assert!(agent["podDeviceWhy"].as_str().unwrap_or_default().starts_with("auto: "), "{agent}");
        drop(lab);
    }
    let mut opts = LabOptions::new(1, 1, bins);
    opts.extra_agent_args = vec!["--device=veth".into()];
    let lab = Lab::up(&opts).unwrap();
    assert_eq!(lab.status(0).unwrap()["agent"]["podDevice"], "veth");
    assert_eq!(lab.status(0).unwrap()["agent"]["podDeviceWhy"], "--device=veth");
}

/// A peer whose node IP cannot be a next hop (here the LAN's broadcast
/// address, which the kernel refuses as a gateway: "Nexthop has invalid
/// gateway") is reported by name and skipped; a good peer listed after it
/// is still routed, in the map and in the kernel, and the node stays
/// healthy. Before, the refused route stopped every later route change on
/// every pass.
#[test]
fn a_peer_with_an_unusable_node_ip_is_reported_and_later_peers_still_route() {
    require_root();
    let lab = Lab::up(&LabOptions::new(2, 0, bin("sluice-agent").parent().unwrap().to_path_buf())).unwrap();
    let mut peers: Vec<serde_json::Value> = lab
        .state
        .nodes
        .iter()
        .map(|n| serde_json::json!({"name": n.name, "nodeIP": n.ip, "podCIDR": n.pod_cidr}))
        .collect();
    // The bad one's CIDR sorts before the good one's: the order the routes
    // are applied in.
    peers.push(serde_json::json!({"name": "bad", "nodeIP": "172.30.0.255", "podCIDR": "10.244.3.0/24"}));
    peers.push(serde_json::json!({"name": "good", "nodeIP": "172.30.0.9", "podCIDR": "10.244.9.0/24"}));
    std::fs::write(lab.peers_file(), serde_json::to_vec(&serde_json::json!({ "peers": peers })).unwrap()).unwrap();
    let node = &lab.state.nodes[0];
    let start = Instant::now();
    let (status, kernel) = loop {
        let status = lab.status(0).unwrap();
        let kernel = ns_exec(&node.netns, &["ip", "route", "show", "proto", "83"]).unwrap();
        let map_has_good = status["routes"].as_array().unwrap().iter().any(|r| r["podCIDR"] == "10.244.9.0/24");
        if map_has_good && kernel.contains("10.244.9.0/24 via 172.30.0.9") {
            break (status, kernel);
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the good peer after the bad one is not routed:\nkernel: {kernel}\nstatus: {status:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!kernel.contains("10.244.3.0/24"), "{kernel}");
    assert!(!status["routes"].as_array().unwrap().iter().any(|r| r["podCIDR"] == "10.244.3.0/24"), "{status:#}");
    let problems = status["agent"]["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{status:#}");
    assert_eq!(problems[0]["kind"], "unusableNodeIp", "{status:#}");
    assert_eq!(problems[0]["fault"]["reason"], "subnetBroadcast", "{status:#}");
    let warnings: Vec<&str> = status["warnings"].as_array().unwrap().iter().filter_map(|w| w.as_str()).collect();
    assert!(
        warnings.contains(
            &"node bad: node IP 172.30.0.255 is the broadcast address of this node's network 172.30.0.0/24; not routed"
        ),
        "{status:#}"
    );
    assert_eq!(status["healthy"], true, "{status:#}");
}

/// Node `i`'s pods' endpoint entries (the health endpoint's left out).
fn pod_entries(lab: &Lab, i: usize) -> std::collections::BTreeMap<std::net::Ipv4Addr, sluice_common::EndpointInfo> {
    let pins = sluice_node::datapath::pins::PinDir::new(&lab.state.nodes[i].pin_dir);
    let pods: Vec<std::net::Ipv4Addr> = lab.state.nodes[i].pods.iter().map(|p| p.ip.parse().unwrap()).collect();
    let mut all = sluice_node::datapath::pinned_maps::Endpoints::open(&pins).unwrap().all().unwrap();
    all.retain(|ip, _| pods.contains(ip));
    all
}

/// The node's pod-side devices (`slc…`) with their indexes.
fn pod_links(lab: &Lab, i: usize) -> Vec<String> {
    let out = ns_exec(&lab.state.nodes[i].netns, &["ip", "-o", "link", "show"]).unwrap();
    let mut v: Vec<String> = out
        .lines()
        .filter_map(|l| {
            let mut parts = l.split(": ");
            let index = parts.next()?;
            let name = parts.next()?.split('@').next()?;
            name.starts_with("slc").then(|| format!("{index}:{name}"))
        })
        .collect();
    v.sort();
    v
}

/// Wait (up to `secs`) until node `i`'s pod entries are `want` again.
fn wait_entries(
    lab: &Lab,
    i: usize,
    want: &std::collections::BTreeMap<std::net::Ipv4Addr, sluice_common::EndpointInfo>,
    secs: u64,
) -> Result<(), String> {
    let start = Instant::now();
    loop {
        let now = pod_entries(lab, i);
        if &now == want {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(secs) {
            return Err(format!("entries now {now:?}, want {want:?}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A pod whose endpoint entry is lost while it runs (entries deleted behind
/// the agent's back; then a recreated, empty `ENDPOINTS` pin across a
/// restart) is repaired by the agent's sweep from its lease, its host veth
/// and netlink: the same entries come back, nothing is torn down, the pods
/// talk again. The old rule ("a lease without an entry is an ADD that never
/// finished") tore down every pod on the node here.
#[test]
fn lost_endpoint_entries_are_repaired_and_no_pod_is_torn_down() {
    require_root();
    let mut lab = Lab::up(&LabOptions::new(2, 2, bin("sluice-agent").parent().unwrap().to_path_buf())).unwrap();
    let pins0 = sluice_node::datapath::pins::PinDir::new(&lab.state.nodes[0].pin_dir);
    let entries = pod_entries(&lab, 0);
    assert_eq!(entries.len(), 2, "{entries:?}");
    let links = pod_links(&lab, 0);
    assert_eq!(links.len(), 2, "{links:?}");
    let log = lab.state.nodes[0].dir.join("agent.log");
    let repaired_lines =
        || std::fs::read_to_string(&log).unwrap().lines().filter(|l| l.contains("endpoint entry re-derived")).count();

    // 1. Deleted from the live map (what an ADD racing a map migration
    // leaves: its entry in the map that was replaced).
    let mut endpoints = sluice_node::datapath::pinned_maps::Endpoints::open(&pins0).unwrap();
    for ip in entries.keys() {
        endpoints.remove(*ip).unwrap();
    }
    assert!(pod_entries(&lab, 0).is_empty());
    // Grace 4 s, sweep every 0.5 s (the lab's agent settings).
    wait_entries(&lab, 0, &entries, 20).unwrap_or_else(|e| panic!("the sweep did not repair the entries: {e}"));
    assert_eq!(pod_links(&lab, 0), links, "a pod was torn down and re-made instead of repaired");
    assert_eq!(repaired_lines(), 2, "the agent says what it repaired");
    let m = lab.matrix();
    assert!(m.all_ok(), "pods after the repair:\n{}", m.render());

    // 2. A recreated ENDPOINTS pin: the agent stopped, the pin removed, the
    // agent started (it pins a new, empty map and points the programs at it).
    lab.kill_agent(0).unwrap();
    std::fs::remove_file(pins0.map(sluice_common::maps::names::ENDPOINTS)).unwrap();
    lab.start_agent(0).unwrap();
    lab.wait_agent_ready(0).unwrap();
    wait_entries(&lab, 0, &entries, 20).unwrap_or_else(|e| panic!("the sweep did not refill a recreated map: {e}"));
    assert_eq!(pod_links(&lab, 0), links, "a pod was torn down after the map was recreated");
    let m = lab.matrix();
    assert!(m.all_ok(), "pods after a recreated ENDPOINTS pin:\n{}", m.render());
}
