//! The datapath end to end: pods on one node and across nodes in a netns
//! lab, real agents, real `sluice-cni` ADDs, real packets.
use sluice_node::{datapath::pins::PinDir, pod::device::PodDevice};
use std::{
    process::{Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use sluice_tests::{
    bin,
    capture::Capture,
    lab::{
        counter, drop_stack_forwarding, forward_drops, ns_cmd, ns_exec, ping, tcp_probe, udp_reaches,
        wait_forwards_grow, wait_listening, Lab, LabOptions, Node, Pod, LAN_PREFIX,
    },
    require_root, try_run,
};

fn lab(nodes: usize, pods: usize, mtu: u32) -> Lab {
    require_root();
    let mut opts = LabOptions::new(nodes, pods, bin("sluice-agent").parent().unwrap().to_path_buf());
    opts.mtu = mtu;
    Lab::up(&opts).expect("lab up")
}

fn pod(lab: &Lab, node: usize, i: usize) -> Pod {
    lab.state.nodes[node].pods[i].clone()
}

#[test]
fn pods_reach_each_other_same_node_and_across_nodes_icmp_tcp_udp() {
    let lab = lab(2, 2, 1500);
    let matrix = lab.matrix();
    assert!(matrix.all_ok(), "unreachable pairs:\n{}\n{}", matrix.failures().join("\n"), matrix.render());
    assert_eq!(matrix.cells.len(), 12);
    let (a1, a2, b1) = (pod(&lab, 0, 0), pod(&lab, 0, 1), pod(&lab, 1, 0));
    // UDP both directions, same node and across nodes.
    for (i, (s, d)) in [(&a1, &a2), (&a2, &a1), (&a1, &b1), (&b1, &a1)].into_iter().enumerate() {
        assert!(udp_reaches(s, d, 9000 + i as u16), "UDP {} -> {}", s.name, d.name);
    }
    // The eBPF paths carried it: the counters for each path moved.
    assert!(counter(&lab, 0, "forwards", "pod_to_local_pod") > 0);
    assert!(counter(&lab, 0, "forwards", "pod_to_node") > 0);
    assert!(counter(&lab, 0, "forwards", "uplink_to_pod") > 0);
    // Addresses come from each node's own pod CIDR.
    assert!(a1.ip.starts_with("10.244.1.") && b1.ip.starts_with("10.244.2."), "{} {}", a1.ip, b1.ip);
}

#[test]
fn cross_node_packets_carry_pod_addresses_unencapsulated() {
    let lab = lab(2, 1, 1500);
    let (a, b) = (pod(&lab, 0, 0), pod(&lab, 1, 0));
    // Capture on the LAN switch port of node 1: what leaves the node.
    let cap = Capture::start(&lab.state.lan_netns, "n1", &["-e", "icmp"]).unwrap();
    let out = ns_exec(&a.netns, &["ping", "-c", "3", "-i", "0.2", &b.ip]).unwrap();
    assert!(out.contains("3 received"), "{out}");
    let text = cap.stop();
    let want = format!("{} > {}: ICMP echo request", a.ip, b.ip);
    let back = format!("{} > {}: ICMP echo reply", b.ip, a.ip);
    assert!(text.lines().filter(|l| l.contains(&want)).count() >= 3, "no plain pod->pod packets on the LAN:\n{text}");
    assert!(text.lines().filter(|l| l.contains(&back)).count() >= 3, "no plain replies on the LAN:\n{text}");
    // Plain IPv4 in Ethernet: no UDP/VXLAN/GRE wrapping, no node addresses.
    for l in text.lines().filter(|l| l.contains("ICMP")) {
        assert!(l.contains("ethertype IPv4"), "{l}");
        assert!(!l.contains("172.30.0."), "node address in a pod packet (NAT or tunnel?): {l}");
    }
}

#[test]
fn pod_traffic_bypasses_the_nodes_forwarding_path_even_with_forwarding_on() {
    let lab = lab(2, 2, 1500);
    let nodes = &lab.state.nodes;
    // Forwarding on, as on a Kubernetes node, and a rule that counts and
    // drops whatever the stack forwards.
    for n in nodes {
        drop_stack_forwarding(n).unwrap();
    }
    let (a1, a2, b1) = (pod(&lab, 0, 0), pod(&lab, 0, 1), pod(&lab, 1, 0));
    let reaches = |s: &Pod, d: &Pod| ping(&s.netns, &d.ip) && tcp_probe(&s.netns, &d.ip, &d.name);
    let same_node = [(&a1, &a2), (&a2, &a1)].map(|(s, d)| reaches(s, d));
    let cross_node = [(&a1, &b1), (&b1, &a1)].map(|(s, d)| reaches(s, d));
    // No pod-to-pod packet went through either node's forwarding.
    let counted: Vec<u64> = nodes.iter().map(forward_drops).collect();
    assert_eq!(counted, [0, 0], "the FORWARD rule counted pod-to-pod packets (n1, n2)");
    assert_eq!(same_node, [true, true], "same node ({} <-> {}) with a FORWARD drop rule", a1.name, a2.name);
    assert_eq!(cross_node, [true, true], "across nodes ({} <-> {}) with a FORWARD drop rule", a1.name, b1.name);

    // The rule does see a path that uses the node's forwarding: a pod to an
    // address the node reaches through its stack, here the LAN bridge's
    // (the LAN routes n1's pod CIDR back via n1).
    let bridge = format!("{LAN_PREFIX}.254");
    let lan = &lab.state.lan_netns;
    ns_exec(lan, &["ip", "addr", "add", &format!("{bridge}/24"), "dev", "br0"]).unwrap();
    ns_exec(lan, &["ip", "route", "add", &nodes[0].pod_cidr, "via", &nodes[0].ip]).unwrap();
    let before = counter(&lab, 0, "forwards", "to_stack");
    let out = try_run(&mut ns_cmd(&a1.netns, &["ping", "-c", "3", "-i", "0.2", "-W", "1", &bridge])).unwrap();
    assert!(!out.status.success(), "{} -> {bridge} got through the FORWARD drop rule", a1.name);
    assert_eq!(forward_drops(&nodes[0]), 3, "n1's FORWARD rule counted each forwarded echo request");
    assert!(counter(&lab, 0, "forwards", "to_stack") >= before + 3, "the datapath handed them to the stack");
    // And it is that rule alone that stopped them.
    ns_exec(&nodes[0].netns, &["iptables", "-D", "FORWARD", "1"]).unwrap();
    assert!(ping(&a1.netns, &bridge), "{} -> {bridge} through n1's forwarding once the rule is gone", a1.name);
}

#[test]
fn node_reaches_its_pods_and_pods_reach_their_node() {
    let lab = lab(1, 1, 1500);
    let node: &Node = &lab.state.nodes[0];
    let p = pod(&lab, 0, 0);
    assert!(ping(&node.netns, &p.ip), "node -> pod ICMP");
    assert!(tcp_probe(&node.netns, &p.ip, &p.name), "node -> pod TCP");
    assert!(ping(&p.netns, &node.ip), "pod -> node ICMP");
    // pod -> node TCP: a listener on the node.
    let mut l = ns_cmd(&node.netns, &["socat", "TCP-LISTEN:7788,reuseaddr", "SYSTEM:echo node"]).spawn().unwrap();
    wait_listening(&node.netns, "tcp", 7788).unwrap();
    let target = format!("TCP:{}:7788,connect-timeout=2", node.ip);
    let out = try_run(&mut ns_cmd(&p.netns, &["socat", "-T2", "-", &target])).unwrap();
    let _ = l.kill();
    let _ = l.wait();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "node", "pod -> node TCP");
}

#[test]
fn spoofed_source_is_dropped_and_counted() {
    let lab = lab(2, 2, 1500);
    let (a1, a2, b1) = (pod(&lab, 0, 0), pod(&lab, 0, 1), pod(&lab, 1, 0));
    // a1 claims an address that is not its own (another pod's CIDR slot).
    ns_exec(&a1.netns, &["ip", "addr", "add", "10.244.1.200/32", "dev", "eth0"]).unwrap();
    let before = counter(&lab, 0, "drops", "source_spoofed");
    // At each destination: nothing from the claimed address arrives.
    let caps = [
        Capture::start(&a2.netns, "eth0", &["src", "host", "10.244.1.200"]).unwrap(),
        Capture::start(&b1.netns, "eth0", &["src", "host", "10.244.1.200"]).unwrap(),
    ];
    for dst in [&a2.ip, &b1.ip] {
        let out =
            try_run(&mut ns_cmd(&a1.netns, &["ping", "-c", "3", "-i", "0.2", "-W", "1", "-I", "10.244.1.200", dst]))
                .unwrap();
        assert!(!out.status.success(), "spoofed ping to {dst} got through");
    }
    for cap in caps {
        let text = cap.stop();
        let seen: Vec<&str> = text.lines().filter(|l| l.contains("10.244.1.200 >")).collect();
        assert!(seen.is_empty(), "a spoofed packet reached its destination: {seen:?}");
    }
    let dropped = counter(&lab, 0, "drops", "source_spoofed") - before;
    match lab.pod_device(0).unwrap() {
        // The host veth's ingress drops each packet after ping sent it.
        PodDevice::Veth => assert_eq!(dropped, 6, "every spoofed packet counted under source_spoofed"),
        // netkit runs the program in the pod's own transmit path: the drop
        // fails ping's sendmsg (ENOBUFS), and ping sends the same echo
        // again, so each of its 6 packets is counted once per attempt.
        PodDevice::Netkit => assert!(dropped >= 6, "every attempt counted under source_spoofed: {dropped}"),
    }
    // Its own address still works.
    assert!(ping(&a1.netns, &b1.ip));
}

#[test]
fn mtu_follows_the_lan_full_size_crosses_one_byte_more_is_refused() {
    let mtu = 1400;
    require_root();
    let mut opts = LabOptions::new(2, 1, bin("sluice-agent").parent().unwrap().to_path_buf());
    opts.mtu = mtu;
    // Native only: with VXLAN possible (`auto`, the default) pods get 50
    // bytes less (tests/tunnel.rs).
    opts.extra_agent_args = vec!["--tunnel=never".into()];
    let lab = Lab::up(&opts).expect("lab up");
    let (a, b) = (pod(&lab, 0, 0), pod(&lab, 1, 0));
    let link = ns_exec(&a.netns, &["ip", "-j", "link", "show", "dev", "eth0"]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&link).unwrap();
    assert_eq!(v[0]["mtu"].as_u64(), Some(mtu as u64), "pod MTU follows the uplink");
    let payload = mtu - 28; // IPv4 + ICMP headers
    let full =
        ns_exec(&a.netns, &["ping", "-c", "2", "-W", "1", "-M", "do", "-s", &payload.to_string(), &b.ip]).unwrap();
    assert!(full.contains("2 received"), "full-size DF packet across nodes: {full}");
    let over_size = (payload + 1).to_string();
    let over =
        try_run(&mut ns_cmd(&a.netns, &["ping", "-c", "1", "-W", "1", "-M", "do", "-s", &over_size, &b.ip])).unwrap();
    let text = String::from_utf8_lossy(&over.stdout).to_string() + &String::from_utf8_lossy(&over.stderr);
    assert!(!over.status.success(), "oversize DF packet must not pass: {text}");
    assert!(text.contains("message too long") || text.contains("mtu"), "refused cleanly at the source: {text}");
}

/// Wait until node `node`'s forward counter `name` has grown by `by`
/// packets (at most 10 s): traffic is flowing through that path now.
/// (link id, program id) of a pinned link, from bpftool. A legacy tc
/// filter (`SLUICE_ATTACH=tc`) has no link: (0, the pinned program's id);
/// that its filter stays the same one is `attach_tc.rs`'s to show.
fn link_ids(pin: &std::path::Path) -> (u64, u64) {
    use sluice_node::datapath::links::{pinned, Pinned};
    match pinned(pin).unwrap() {
        Some(Pinned::TcProgram) => (0, u64::from(aya::programs::ProgramInfo::from_pin(pin).unwrap().id())),
        _ => sluice_tests::link_ids(pin).unwrap(),
    }
}

#[test]
fn agent_killed_and_restarted_loses_nothing() {
    const FLOW: u32 = 3000;
    let mut lab = lab(2, 1, 1500);
    let (a, b) = (pod(&lab, 0, 0), pod(&lab, 1, 0));
    let routes_before = lab.status(0).unwrap()["routes"].clone();
    let endpoints_before = lab.status(0).unwrap()["endpoints"].clone();
    let links = std::fs::read_dir(PinDir::new(&lab.state.nodes[0].pin_dir).links_dir()).unwrap();
    let link_pins: Vec<std::path::PathBuf> = links.map(|e| e.unwrap().path()).collect();
    assert_eq!(
        link_pins.len(),
        8,
        "from_uplink and to_uplink, from_tunnel and to_tunnel on the VXLAN device, and from_pod and to_pod on \
         the pod and the health endpoint: {link_pins:?}"
    );
    let ids_before: Vec<(u64, u64)> = link_pins.iter().map(|p| link_ids(p)).collect();
    // A steady flow across nodes: 3000 pings at 500/s, both agents killed
    // (SIGKILL) and restarted while it runs.
    let flow = ns_cmd(&a.netns, &["ping", "-q", "-c", &FLOW.to_string(), "-i", "0.002", "-W", "1", &b.ip])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // The flow is on before the agents go: node 1 delivers its packets.
    wait_forwards_grow(&lab, 1, "uplink_to_pod", 100);
    lab.kill_agent(0).unwrap();
    lab.kill_agent(1).unwrap();
    // Agents gone: traffic still flows on pinned maps and links, and status
    // says plainly that the agent is down.
    let down = lab.status(0).unwrap();
    assert_eq!(down["healthy"], false);
    assert!(down["unhealthy"][0].as_str().unwrap().contains("agent not running"), "{down}");
    // With no agent on either node, the pinned programs keep delivering.
    wait_forwards_grow(&lab, 1, "uplink_to_pod", 200);
    assert!(tcp_probe(&a.netns, &b.ip, &b.name), "traffic with no agent running");
    for i in 0..2 {
        lab.start_agent(i).unwrap();
    }
    // Each restarted agent, not just one, and not the conflist its
    // predecessor left: the state file must name the new process.
    for i in 0..2 {
        lab.wait_agent_ready(i).unwrap();
        let pid = lab.status(i).unwrap()["agent"]["pid"].as_u64();
        assert_eq!(pid, lab.state.nodes[i].agent_pid.map(u64::from), "node {i} ready with its new agent");
    }
    let out = flow.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let want = format!("{FLOW} packets transmitted, {FLOW} received");
    assert!(text.contains(&want), "packets lost across kill/restart: {text}");
    // Restarted agents reused what was pinned: nothing flushed, and the new
    // programs replaced the old ones inside the same links (no detach).
    let start = Instant::now();
    let after = loop {
        let s = lab.status(0).unwrap();
        if s["healthy"] == true || start.elapsed() > Duration::from_secs(10) {
            break s;
        }
        sleep(Duration::from_millis(50));
    };
    assert_eq!(after["routes"], routes_before);
    assert_eq!(after["endpoints"], endpoints_before);
    assert_eq!(after["healthy"], true, "{after}");
    assert!(counter(&lab, 0, "forwards", "pod_to_node") >= FLOW as u64, "counters carried over the restart");
    for (pin, (link_before, prog_before)) in link_pins.iter().zip(ids_before) {
        let (link_after, prog_after) = link_ids(pin);
        assert_eq!(link_after, link_before, "{}: same link", pin.display());
        assert_ne!(prog_after, prog_before, "{}: program replaced in place", pin.display());
    }
    assert!(ping(&a.netns, &b.ip));
}

#[test]
fn peer_removed_from_peers_file_stops_traffic_and_comes_back() {
    let lab = lab(3, 1, 1500);
    let (a, b, c) = (pod(&lab, 0, 0), pod(&lab, 1, 0), pod(&lab, 2, 0));
    assert!(ping(&a.netns, &b.ip) && ping(&a.netns, &c.ip));
    let nodes = &lab.state.nodes;
    lab.write_peers_of(&[&nodes[0], &nodes[2]]).unwrap();
    // Both the map's routes and the kernel's (one pass applies the map
    // first, then the kernel routes).
    let wait_routes = |n: usize| {
        let start = Instant::now();
        loop {
            let r = lab.status(0).unwrap()["routes"].as_array().unwrap().len();
            let kernel = ns_exec(&nodes[0].netns, &["ip", "route", "show", "proto", "83"]).unwrap().lines().count();
            if (r == n && kernel == n) || start.elapsed() > Duration::from_secs(5) {
                return r;
            }
            sleep(Duration::from_millis(50));
        }
    };
    assert_eq!(wait_routes(1), 1, "n2's route left n1's map");
    assert!(!ping(&a.netns, &b.ip), "traffic to the removed peer stops");
    assert!(ping(&a.netns, &c.ip), "other peers unaffected");
    lab.write_peers().unwrap();
    assert_eq!(wait_routes(2), 2);
    assert!(ping(&a.netns, &b.ip), "traffic flows again once the peer is back");
}

#[test]
fn lab_leaves_nothing_behind_even_when_a_test_panics() {
    require_root();
    let (names, pins, dir, stray) = {
        let result = std::panic::catch_unwind(|| {
            let lab = lab(2, 1, 1500);
            let names: Vec<String> = std::iter::once(lab.state.lan_netns.clone())
                .chain(lab.state.nodes.iter().map(|n| n.netns.clone()))
                .chain(lab.pods().iter().map(|(_, p)| p.netns.clone()))
                .collect();
            let pins = lab.state.pin_root.clone();
            let dir = lab.state.dir.clone();
            // An agent restarted by hand, which the lab never heard of.
            // Reaped below, by pid, once the lab has killed it.
            #[allow(clippy::zombie_processes)]
            let stray = sluice_tests::lab::ns_cmd(&lab.state.nodes[0].netns, &["sleep", "600"]).spawn().unwrap();
            std::panic::panic_any((names, pins, dir, stray.id())); // a failing test, mid-lab
            #[allow(unreachable_code)]
            drop(lab);
        });
        *result.expect_err("panicked").downcast::<(Vec<String>, std::path::PathBuf, std::path::PathBuf, u32)>().unwrap()
    };
    assert_eq!(names.len(), 5);
    let netns = String::from_utf8(Command::new("ip").args(["netns", "list"]).output().unwrap().stdout).unwrap();
    for n in &names {
        assert!(!netns.lines().any(|l| l.split_whitespace().next() == Some(n)), "namespace {n} left behind");
    }
    assert!(!pins.exists(), "pins left at {}", pins.display());
    assert!(!dir.exists(), "lab dir left at {}", dir.display());
    // The stray process was ended with its namespace (a zombie until reaped
    // here counts as ended).
    let state = std::fs::read_to_string(format!("/proc/{stray}/stat")).unwrap_or_default();
    assert!(state.is_empty() || state.contains(") Z"), "process {stray} left running: {state}");
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(stray as i32), None);
}
