//! Upgrades lose nothing: an agent started over an earlier layout's pins
//! takes over every link in place and carries the state over; a pinned map
//! whose size changed is migrated; one whose entries mean something else is
//! refused, and the datapath keeps running meanwhile.
//!
//! "An earlier layout" is made from a running one: with the agents stopped,
//! each node's `v1` pin tree is renamed to `v0` (the same kernel objects,
//! still forwarding), its `FORWARDS` pin replaced by a shorter array, as a
//! version with fewer forwarding paths had, and its `DROP_STATS` by the
//! `DROPS` of versions before it (packets per reason, fewer reasons). The
//! programs keep their own maps; only what a new agent finds at the pins
//! changes.
use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use serde_json::Value;
use sluice_common::{
    maps::{names, LAYOUT_VERSION},
    DropReason, ForwardPath, DROP_SLOTS,
};
use sluice_node::datapath::pins::PinDir;
use sluice_tests::{
    bin,
    cluster::STREAM_PORT,
    lab::{ns_cmd, ns_exec, Lab, LabOptions},
    ping_received, require_root, sh,
};

fn link_ids(pin: &Path) -> (u64, u64) {
    sluice_tests::link_ids(pin).unwrap()
}

fn map_info(pin: &Path) -> Value {
    sluice_tests::bpftool_json(&["map", "show", "pinned", &pin.display().to_string()]).unwrap()
}

fn pin_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    v.sort();
    v
}

/// Turn node `i`'s pins into "an earlier layout": `v1` → `v0`, and the
/// drop counters as versions before `DROP_STATS` had them: `DROPS`, packets
/// per reason, here of only 6 reasons, with `OLD_SPOOFED` source_spoofed
/// drops on every CPU.
fn age_pins(lab: &Lab, i: usize) -> PathBuf {
    let root = &lab.state.nodes[i].pin_dir;
    let (new, old) = (root.join(format!("v{LAYOUT_VERSION}")), root.join("v0"));
    std::fs::rename(&new, &old).unwrap();
    // FORWARDS of a version before the eBPF encapsulation (8 paths).
    let forwards = old.join("maps").join(names::FORWARDS);
    std::fs::remove_file(&forwards).unwrap();
    let f = forwards.display().to_string();
    sh(
        "bpftool",
        &["map", "create", &f, "type", "percpu_array", "key", "4", "value", "8", "entries", "8", "name", "FORWARDS"],
    )
    .unwrap();
    let _ = std::fs::remove_file(old.join("maps").join(names::DROP_STATS));
    let drops = old.join("maps").join(names::DROPS);
    let d = drops.display().to_string();
    sh(
        "bpftool",
        &["map", "create", &d, "type", "percpu_array", "key", "4", "value", "8", "entries", "6", "name", "DROPS"],
    )
    .unwrap();
    let key = (DropReason::SourceSpoofed as u32).to_le_bytes().map(|b| b.to_string());
    let value = OLD_SPOOFED.to_le_bytes().map(|b| b.to_string());
    let mut args = vec!["map", "update", "pinned", &d, "key"];
    args.extend(key.iter().map(String::as_str));
    args.push("value");
    args.extend(value.iter().map(String::as_str));
    sh("bpftool", &args).unwrap();
    old
}

/// source_spoofed drops per CPU in the old `DROPS` `age_pins` makes.
const OLD_SPOOFED: u64 = 5;

/// CPUs the kernel keeps per-CPU map values for (`/sys/.../possible`).
fn possible_cpus() -> u64 {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible").unwrap();
    text.trim()
        .split(',')
        .map(|range| match range.split_once('-') {
            Some((a, b)) => b.parse::<u64>().unwrap() - a.parse::<u64>().unwrap() + 1,
            None => 1,
        })
        .sum()
}

fn counter(lab: &Lab, i: usize, group: &str, name: &str) -> u64 {
    lab.status(i).unwrap()[group][name].as_u64().unwrap_or(0)
}

#[test]
fn an_agent_over_an_earlier_layout_takes_over_in_place_and_loses_nothing() {
    require_root();
    let mut opts = LabOptions::new(2, 2, bin("sluice-agent").parent().unwrap().to_path_buf());
    opts.cluster_model = true;
    let mut lab = Lab::up(&opts).unwrap();
    let (a, b) = (lab.state.nodes[0].pods[0].clone(), lab.state.nodes[1].pods[0].clone());
    let pins0 = PinDir::new(&lab.state.nodes[0].pin_dir);
    let links_before: Vec<(String, (u64, u64))> = pin_names(&pins0.links_dir())
        .into_iter()
        .map(|n| {
            let ids = link_ids(&pins0.links_dir().join(&n));
            (n, ids)
        })
        .collect();
    let endpoints_id = map_info(&pins0.map(names::ENDPOINTS))["id"].clone();

    // A long-lived TCP connection and a steady ping flow across nodes.
    let addr = SocketAddr::from((b.ip.parse::<std::net::Ipv4Addr>().unwrap(), STREAM_PORT));
    let path = Path::new("/run/netns").join(&a.netns);
    let mut conn =
        sluice_node::net::netns::run_in(&path, move || Ok(TcpStream::connect_timeout(&addr, Duration::from_secs(2))?))
            .unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut round_trip = |n: u32| {
        conn.write_all(format!("line {n}\n").as_bytes()).unwrap();
        let mut back = String::new();
        reader.read_line(&mut back).unwrap();
        assert_eq!(back, format!("line {n}\n"), "the TCP connection broke");
    };
    round_trip(1);
    const FLOW: u32 = 3000;
    let flow = ns_cmd(&a.netns, &["ping", "-q", "-c", &FLOW.to_string(), "-i", "0.002", "-W", "1", &b.ip])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));

    // Both agents stop; their pins become an earlier layout's; new agents start.
    let mut old_trees = Vec::new();
    for i in 0..2 {
        lab.kill_agent(i).unwrap();
        old_trees.push(age_pins(&lab, i));
    }
    std::thread::sleep(Duration::from_millis(300));
    for i in 0..2 {
        lab.start_agent(i).unwrap();
    }
    for i in 0..2 {
        lab.wait_agent_ready(i).unwrap();
    }
    let out = flow.wait_with_output().unwrap();
    let received = ping_received(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert_eq!(received, FLOW, "packets lost across the layout change");
    round_trip(2);

    // Taken over in place: the same links (ids), new programs in them, the
    // same ENDPOINTS map, the old tree gone, no extra attachment.
    for old in &old_trees {
        assert!(!old.exists(), "{} left behind", old.display());
    }
    for (name, (link_id, prog_id)) in &links_before {
        let (id_now, prog_now) = link_ids(&pins0.links_dir().join(name));
        assert_eq!(id_now, *link_id, "{name}: the link was replaced instead of updated");
        assert_ne!(prog_now, *prog_id, "{name}: still the old program");
    }
    assert_eq!(pin_names(&pins0.links_dir()).len(), links_before.len(), "no second attachment");
    assert_eq!(map_info(&pins0.map(names::ENDPOINTS))["id"], endpoints_id, "ENDPOINTS carried over, not rebuilt");
    // The old DROPS was carried into DROP_STATS (its counts kept, as
    // ingress, the direction those versions dropped source_spoofed in) and
    // its pin removed; a reason the short map had no slot for is counted.
    let forwards = map_info(&pins0.map(names::FORWARDS));
    assert_eq!(forwards["max_entries"].as_u64().unwrap(), ForwardPath::COUNT as u64, "migrated: {forwards}");
    assert!(!pins0.map(names::DROPS).exists(), "the retired DROPS pin is gone");
    let stats = map_info(&pins0.map(names::DROP_STATS));
    assert_eq!(stats["max_entries"].as_u64().unwrap(), DROP_SLOTS as u64, "{stats}");
    let status = lab.status(0).unwrap();
    assert_eq!(status["drops"].as_object().unwrap().len(), DropReason::COUNT as usize, "every reason: {status:#}");
    assert_eq!(status["drops"]["source_spoofed"], OLD_SPOOFED * possible_cpus(), "carried over: {status:#}");
    let spoofed = status["dropsByDirection"].as_array().unwrap().iter().find(|r| r["reason"] == "source_spoofed");
    assert_eq!(spoofed.map(|r| r["direction"].clone()), Some("ingress".into()), "{status:#}");
    // A host on the LAN claiming to be n1's second pod, to n1's first pod.
    let lan = lab.state.lan_netns.clone();
    let (n1, spoofed) = (lab.state.nodes[0].clone(), lab.state.nodes[0].pods[1].ip.clone());
    ns_exec(&lan, &["ip", "addr", "add", &format!("{spoofed}/32"), "dev", "lo"]).unwrap();
    ns_exec(&lan, &["ip", "addr", "add", "172.30.0.254/24", "dev", "br0"]).unwrap();
    ns_exec(&lan, &["ip", "route", "add", &n1.pod_cidr, "via", &n1.ip]).unwrap();
    let before = counter(&lab, 0, "drops", "uplink_source_spoofed");
    let _ =
        sluice_tests::try_run(&mut ns_cmd(&lan, &["ping", "-c", "3", "-i", "0.2", "-W", "1", "-I", &spoofed, &a.ip]));
    assert_eq!(counter(&lab, 0, "drops", "uplink_source_spoofed"), before + 3, "the new reason is counted");
}

#[test]
fn a_pinned_map_that_no_longer_fits_is_refused_and_traffic_carries_on() {
    require_root();
    let mut lab = Lab::up(&LabOptions::new(2, 1, bin("sluice-agent").parent().unwrap().to_path_buf())).unwrap();
    let (a, b) = (lab.state.nodes[0].pods[0].clone(), lab.state.nodes[1].pods[0].clone());
    lab.kill_agent(0).unwrap();
    // NODE_CONFIG with a 16-byte value: entries that mean something else.
    let pins0 = PinDir::new(&lab.state.nodes[0].pin_dir);
    let cfg = pins0.map(names::NODE_CONFIG);
    std::fs::remove_file(&cfg).unwrap();
    let c = cfg.display().to_string();
    sh(
        "bpftool",
        &["map", "create", &c, "type", "array", "key", "4", "value", "16", "entries", "1", "name", "NODE_CONFIG"],
    )
    .unwrap();
    lab.start_agent(0).unwrap();
    let err = lab.wait_agent_ready(0).expect_err("the agent must refuse the map");
    let log = std::fs::read_to_string(lab.state.nodes[0].dir.join("agent.log")).unwrap();
    assert!(
        log.contains("pinned map NODE_CONFIG") && log.contains("value 16 B") && log.contains("value 8 B"),
        "{err:#}\n{log}"
    );
    // The programs already attached keep their own maps: pods still talk.
    assert!(sluice_tests::lab::ping(&a.netns, &b.ip), "traffic stops when an agent refuses to start");
}

/// 20 agent SIGKILL + restart cycles on both nodes, every other one across
/// a layout change, under a cross-node UDP flow at 2,000 packets/s and 20
/// open TCP connections: every datagram delivered, every connection alive,
/// no pin or link left over.
#[test]
fn soak_twenty_restarts_ten_across_a_layout_change() {
    use std::{
        net::UdpSocket,
        sync::{
            atomic::{AtomicBool, AtomicU64, Ordering},
            Arc,
        },
    };
    require_root();
    let mut opts = LabOptions::new(2, 2, bin("sluice-agent").parent().unwrap().to_path_buf());
    opts.cluster_model = true;
    let mut lab = Lab::up(&opts).unwrap();
    let (client, server) = (lab.state.nodes[0].pods[1].clone(), lab.state.nodes[1].pods[0].clone());
    let server_ip: std::net::Ipv4Addr = server.ip.parse().unwrap();
    let in_ns = |ns: &str| Path::new("/run/netns").join(ns);

    // 20 TCP connections through the line-echo server.
    let addr = SocketAddr::from((server_ip, STREAM_PORT));
    let mut conns: Vec<(TcpStream, BufReader<TcpStream>)> = (0..20)
        .map(|_| {
            let s = sluice_node::net::netns::run_in(&in_ns(&client.netns), move || {
                Ok(TcpStream::connect_timeout(&addr, Duration::from_secs(2))?)
            })
            .unwrap();
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            let r = BufReader::new(s.try_clone().unwrap());
            (s, r)
        })
        .collect();
    let mut line = 0u32;
    let mut all_alive = |conns: &mut Vec<(TcpStream, BufReader<TcpStream>)>, when: &str| {
        for (i, (s, r)) in conns.iter_mut().enumerate() {
            line += 1;
            s.write_all(format!("{line}\n").as_bytes()).unwrap_or_else(|e| panic!("connection {i} {when}: {e}"));
            let mut back = String::new();
            r.read_line(&mut back).unwrap_or_else(|e| panic!("connection {i} {when}: {e}"));
            assert_eq!(back.trim(), line.to_string(), "connection {i} {when}");
        }
    };
    all_alive(&mut conns, "at the start");

    // UDP at 2,000 packets/s, numbered; the receiver counts what arrives.
    let rx = sluice_node::net::netns::run_in(&in_ns(&server.netns), move || Ok(UdpSocket::bind((server_ip, 9999))?))
        .unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let tx = sluice_node::net::netns::run_in(&in_ns(&client.netns), || Ok(UdpSocket::bind("0.0.0.0:0")?)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let receiver = {
        let (stop, received) = (stop.clone(), received.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            let mut idle_after_stop = 0;
            loop {
                match rx.recv(&mut buf) {
                    Ok(_) => {
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) if stop.load(Ordering::Relaxed) => {
                        idle_after_stop += 1;
                        if idle_after_stop > 5 {
                            break;
                        }
                    }
                    Err(_) => {}
                }
            }
        })
    };
    let sender = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut sent = 0u64;
            let start = std::time::Instant::now();
            while !stop.load(Ordering::Relaxed) {
                let due = start.elapsed().as_micros() as u64 / 500; // one every 500 us
                while sent < due {
                    tx.send_to(&sent.to_be_bytes(), (server_ip, 9999)).unwrap();
                    sent += 1;
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            sent
        })
    };

    let links_at_start = pin_names(&PinDir::new(&lab.state.nodes[0].pin_dir).links_dir());
    for cycle in 0..20 {
        for i in 0..2 {
            lab.kill_agent(i).unwrap();
            if cycle % 2 == 1 {
                age_pins(&lab, i);
            }
        }
        for i in 0..2 {
            lab.start_agent(i).unwrap();
        }
        for i in 0..2 {
            lab.wait_agent_ready(i).unwrap();
        }
        all_alive(&mut conns, &format!("after restart {}", cycle + 1));
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let sent = sender.join().unwrap();
    receiver.join().unwrap();
    let got = received.load(Ordering::Relaxed);
    assert!(sent > 5_000, "the flow ran at 2,000 packets/s throughout ({sent} sent)");
    assert_eq!(got, sent, "UDP datagrams lost across 20 restarts");
    all_alive(&mut conns, "at the end");
    for node in &lab.state.nodes {
        let pins = PinDir::new(&node.pin_dir);
        let trees: Vec<String> = pin_names(&node.pin_dir);
        assert_eq!(trees, vec![format!("v{LAYOUT_VERSION}")], "only this layout's tree is left on {}", node.name);
        if node.name == "n1" {
            assert_eq!(pin_names(&pins.links_dir()), links_at_start, "no link pin left over or lost");
        }
    }
}
