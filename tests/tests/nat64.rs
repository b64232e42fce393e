//! NAT64 end to end (issue 28, `--nat64`): IPv6-only pods on a node whose
//! uplink also has an IPv4 address reach an IPv4-only world through
//! `64:ff9b::/96` (the address DNS64 would hand out) over TCP, UDP and
//! ping; the world sees the node's IPv4 address; `status` counts the
//! translations both ways. Without `--nat64` the same pod reaches nothing
//! there, and the agent takes its device away.
use std::time::{Duration, Instant};

use sluice_tests::{
    bin,
    cluster::{add_world, tcp_text, udp_text, WORLD_IP},
    lab::{ns_cmd, ns_exec, Lab, LabOptions, LAN_PREFIX},
    patience, require_root,
};

const WHOAMI_PORT: u16 = 7780;
const UDP_PORT: u16 = 5380;

/// `64:ff9b::<ip>`.
fn nat64(ip: &str) -> String {
    format!("64:ff9b::{ip}")
}

/// Wait until `check` holds, within the tests' patience.
fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < patience(Duration::from_secs(5)), "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_ipv6_only_pod_reaches_an_ipv4_world_through_64_ff9b_as_its_node() {
    require_root();
    let mut opts = LabOptions::new(1, 1, bin("sluice-agent").parent().unwrap().to_path_buf());
    opts.ipv6_only = true;
    opts.ipv4_uplink = true;
    opts.extra_agent_args = vec!["--nat64".into()];
    let mut lab = Lab::up(&opts).expect("IPv6-only lab, IPv4 on the uplink, NAT64 on");
    let world = add_world(&mut lab).unwrap();
    // The world is IPv4-only.
    ns_exec(&world, &["ip", "-6", "addr", "flush", "dev", "eth0", "scope", "global"]).unwrap();
    let whoami = format!("TCP4-LISTEN:{WHOAMI_PORT},reuseaddr,fork");
    lab.spawn_helper(ns_cmd(&world, &["socat", &whoami, "SYSTEM:echo world saw $SOCAT_PEERADDR"]), "world-whoami")
        .unwrap();
    let udp = format!("UDP4-RECVFROM:{UDP_PORT},fork");
    lab.spawn_helper(ns_cmd(&world, &["socat", &udp, "SYSTEM:echo world saw $SOCAT_PEERADDR"]), "world-udp").unwrap();
    wait_for("the world's servers did not start", || {
        tcp_text(&world, "127.0.0.1", WHOAMI_PORT).is_some()
            && !ns_exec(&world, &["ss", "-H", "-4", "-uln", &format!("sport = :{UDP_PORT}")]).unwrap().trim().is_empty()
    });

    let node = lab.state.nodes[0].clone();
    let pod = node.pods[0].clone();
    let node_ip4 = format!("{LAN_PREFIX}.1");
    let target = nat64(WORLD_IP);
    assert_eq!(
        tcp_text(&pod.netns, &target, WHOAMI_PORT),
        Some(format!("world saw {node_ip4}")),
        "TCP to [{target}]:{WHOAMI_PORT}: the world sees the node's IPv4"
    );
    assert_eq!(udp_text(&pod.netns, &target, UDP_PORT), Some(format!("world saw {node_ip4}")), "UDP");
    let ping = ns_exec(&pod.netns, &["ping", "-6", "-c", "3", "-i", "0.2", "-W", "2", &target]).unwrap();
    assert!(ping.contains("3 received"), "ping {target}: {ping}");

    // `status` says NAT64 is on and counts both ways (TCP: at least the
    // handshake and the answer; UDP and ping likewise).
    let s = lab.status(0).unwrap();
    assert_eq!(s["nat64"]["on"], true, "{s:#}");
    assert_eq!(s["nat64"]["pool"], "198.18.0.0/16", "{s:#}");
    let (out, back) = (s["nat64"]["out"].as_u64().unwrap(), s["nat64"]["back"].as_u64().unwrap());
    assert!(out >= 5 && back >= 5, "translated out {out}, back {back}: {s:#}");
    for reason in ["nat64_unsupported", "nat64_no_pool_address", "nat64_no_endpoint"] {
        assert_eq!(s["drops"][reason], 0, "{reason}: {s:#}");
    }
    let text = ns_exec(&node.netns, &["nft", "list", "table", "ip", "sluice"]).unwrap();
    assert!(text.contains("198.18.0.0/16"), "the pool is masqueraded: {text}");

    // Without --nat64: the device goes, 64:ff9b::/96 is the stack's (no
    // route there on this node): the world is out of reach.
    lab.state.extra_agent_args.clear();
    lab.kill_agent(0).unwrap();
    lab.start_agent(0).unwrap();
    lab.wait_agent_ready(0).unwrap();
    let links = ns_exec(&node.netns, &["ip", "-o", "link", "show"]).unwrap();
    assert!(!links.contains("sluice_nat64"), "{links}");
    assert_eq!(lab.status(0).unwrap()["nat64"]["on"], false);
    assert_eq!(tcp_text(&pod.netns, &target, WHOAMI_PORT), None, "NAT64 off");
}
