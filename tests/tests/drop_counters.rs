//! Drops are counted by reason and by the direction of the program that
//! dropped them (its TC hook), packets and bytes, and reported so in the
//! metrics, `status` and the monitor: an egress program's drop (`to_tunnel`,
//! on the VXLAN device's egress) says `egress`, a pod's spoofed packet
//! (`from_pod`, on its host veth's ingress) says `ingress`.
use std::{
    io::{BufRead, BufReader},
    process::Stdio,
};

use serde_json::Value;
use sluice_tests::{
    bin,
    lab::{ns_cmd, ns_exec, Lab, LabOptions},
    require_root, try_run,
};

/// `GET /metrics` of node `i`'s agent, from inside its namespace.
fn metrics(lab: &Lab, i: usize) -> String {
    let node = &lab.state.nodes[i];
    let url = format!("http://{}:9962/metrics", node.ip);
    ns_exec(&node.netns, &["curl", "-sf", "--max-time", "3", &url]).expect("the agent's metrics")
}

/// The value of the sample `name{labels}` in Prometheus text, if present.
fn sample(text: &str, name_and_labels: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn an_egress_programs_drop_is_labelled_egress_with_packets_and_bytes() {
    require_root();
    let mut opts = LabOptions::new(2, 1, bin("sluice-agent").parent().unwrap().to_path_buf());
    opts.extra_agent_args = vec!["--tunnel=always".into()];
    let lab = Lab::up(&opts).unwrap();
    let (n1, a) = (lab.state.nodes[0].clone(), lab.state.nodes[0].pods[0].clone());

    // The node's stack routes an address no peer owns into the VXLAN
    // device: `to_tunnel` has no remote end for it (tunnel_no_route).
    ns_exec(&n1.netns, &["ip", "route", "add", "10.99.0.0/24", "dev", "sluice_vxlan"]).unwrap();
    // Three UDP datagrams of 100 bytes: 14 + 20 + 8 + 100 = 142 bytes each
    // on the device. UDP rather than ping: a drop on egress is synchronous
    // (sendto fails with ENOBUFS), and ping would retry.
    let send = "import socket\n\
                s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
                for _ in range(3):\n\
                \x20   try: s.sendto(bytes(100),('10.99.0.1',9))\n\
                \x20   except OSError: pass\n";
    // A pod sending with an address not its own: `from_pod` drops it on
    // its host veth's ingress (source_spoofed), 98 bytes a ping.
    ns_exec(&a.netns, &["ip", "addr", "add", "10.244.1.200/32", "dev", "eth0"]).unwrap();

    // The monitor, for the egress drops; ready once it says it listens.
    let agent = bin("sluice-agent").display().to_string();
    let pin_dir = n1.pin_dir.display().to_string();
    let argv =
        [&agent, "monitor", "--json", "--type", "all", "--ip", "10.99.0.1", "--pin-dir", &pin_dir, "--count", "3"];
    let mut monitor = ns_cmd(&n1.netns, &argv[..]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let (mut said, mut ready) = (Vec::new(), false);
    for line in BufReader::new(monitor.stderr.take().unwrap()).lines().map_while(Result::ok) {
        ready = line.starts_with("monitor: listening");
        if ready {
            break;
        }
        said.push(line);
    }
    assert!(ready, "the monitor never listened: {said:?}");
    ns_exec(&n1.netns, &["python3", "-c", send]).unwrap();
    let b = lab.state.nodes[1].pods[0].ip.clone();
    let _ = try_run(&mut ns_cmd(&a.netns, &["ping", "-c", "3", "-i", "0.2", "-W", "1", "-I", "10.244.1.200", &b]));
    let out = monitor.wait_with_output().unwrap();
    assert!(out.status.success(), "monitor: {:?}", out.status);

    // Metrics: each drop under its direction, with its bytes; nothing
    // under the other direction.
    let text = metrics(&lab, 0);
    let m = |family: &str, reason: &str, direction: &str| {
        sample(&text, &format!("{family}{{reason=\"{reason}\",direction=\"{direction}\"}}"))
    };
    assert_eq!(m("sluice_drops_total", "tunnel_no_route", "egress"), Some(3), "{text}");
    assert_eq!(m("sluice_drop_bytes_total", "tunnel_no_route", "egress"), Some(3 * 142), "{text}");
    assert_eq!(m("sluice_drops_total", "tunnel_no_route", "ingress"), Some(0), "{text}");
    assert_eq!(m("sluice_drops_total", "source_spoofed", "ingress"), Some(3), "{text}");
    assert_eq!(m("sluice_drop_bytes_total", "source_spoofed", "ingress"), Some(3 * 98), "{text}");
    assert_eq!(m("sluice_drops_total", "source_spoofed", "egress"), Some(0), "{text}");

    // status: the same rows.
    let status = lab.status(0).unwrap();
    let rows = status["dropsByDirection"].as_array().cloned().unwrap_or_default();
    let row = |reason: &str| rows.iter().find(|r| r["reason"] == reason).cloned();
    assert_eq!(
        row("tunnel_no_route"),
        Some(serde_json::json!({"reason": "tunnel_no_route", "direction": "egress", "packets": 3, "bytes": 426})),
        "{status:#}"
    );
    assert_eq!(status["drops"]["tunnel_no_route"], 3, "{status:#}");

    // The monitor: each event with the direction of the program.
    let events: Vec<Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let seen: Vec<(&str, &str)> =
        events.iter().map(|e| (e["reason"].as_str().unwrap_or("-"), e["direction"].as_str().unwrap_or("-"))).collect();
    assert_eq!(seen, vec![("tunnel_no_route", "egress"); 3], "{events:#?}");
}
