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

/// Turn node `i`'s pins into "an earlier layout": `v1` → `v0`, the drop
/// counters as versions before `DROP_STATS` had them: `DROPS`, packets per
/// reason, here of only 6 reasons, with `OLD_SPOOFED` source_spoofed drops
/// on every CPU, the monitor's maps before issue 24 (one shared `EVENTS`
/// ring buffer and its `MONITOR` switch), and the uplink's session affinity
/// per frontend (`LB4_AFFINITY`, before `LB4_SVC_AFFINITY`).
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
    for (name, shape) in [
        ("EVENTS", ["ringbuf", "key", "0", "value", "0", "entries", "262144"]),
        ("MONITOR", ["array", "key", "4", "value", "4", "entries", "1"]),
        ("LB4_AFFINITY", ["lru_hash", "key", "12", "value", "16", "entries", "65536"]),
    ] {
        let pin = old.join("maps").join(name).display().to_string();
        let mut args = vec!["map", "create", &pin, "type"];
        args.extend(shape);
        args.extend(["name", name]);
        sh("bpftool", &args).unwrap();
    }
    old
}

/// Both agents of a two-node lab stop; their pins become an earlier
/// layout's (`age_pins`); new agents start and take over. Returns the old
/// trees, which the new agents must have removed.
fn restart_both_agents_over_an_earlier_layout(lab: &mut Lab) -> Vec<PathBuf> {
    let mut old_trees = Vec::new();
    for i in 0..2 {
        lab.kill_agent(i).unwrap();
        old_trees.push(age_pins(lab, i));
    }
    std::thread::sleep(Duration::from_millis(300));
    for i in 0..2 {
        lab.start_agent(i).unwrap();
    }
    for i in 0..2 {
        lab.wait_agent_ready(i).unwrap();
    }
    old_trees
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

    let old_trees = restart_both_agents_over_an_earlier_layout(&mut lab);
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
    for retired in names::RETIRED_TRANSIENT {
        assert!(!pins0.map(retired).exists(), "{retired}: a map this version replaced is unpinned");
    }
    // By name too (`age_pins` made one): the per-frontend affinity map
    // must not linger beside `LB4_SVC_AFFINITY`.
    assert!(!pins0.map("LB4_AFFINITY").exists(), "the retired LB4_AFFINITY pin is still there");
    assert!(pins0.map(names::LB4_SVC_AFFINITY).exists());
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
    // NODE_CONFIG with a value 4 bytes longer than this version's: a value
    // that would shrink, fields lost.
    let pins0 = PinDir::new(&lab.state.nodes[0].pin_dir);
    let cfg = pins0.map(names::NODE_CONFIG);
    std::fs::remove_file(&cfg).unwrap();
    let c = cfg.display().to_string();
    let longer = (std::mem::size_of::<sluice_common::NodeConfig>() + 4).to_string();
    sh(
        "bpftool",
        &["map", "create", &c, "type", "array", "key", "4", "value", &longer, "entries", "1", "name", "NODE_CONFIG"],
    )
    .unwrap();
    lab.start_agent(0).unwrap();
    let err = lab.wait_agent_ready(0).expect_err("the agent must refuse the map");
    let log = std::fs::read_to_string(lab.state.nodes[0].dir.join("agent.log")).unwrap();
    assert!(
        log.contains("pinned map NODE_CONFIG")
            && log.contains(&format!("value {longer} B"))
            && log.contains(&format!("value {} B", std::mem::size_of::<sluice_common::NodeConfig>())),
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

/// The eBPF object of an earlier version, kept as a fixture (see
/// `tests/fixtures/README.md` for its commit and how to rebuild it).
const OLD_OBJECT: &str = "fixtures/sluice-f7b75f2.bpf.o";

/// Maps whose capacity the "old version" had at half of this one's: the
/// new agent must migrate every one of them (a capacity change on upgrade).
const SHRUNK: [&str; 8] = [
    names::ENDPOINTS,
    names::NODE_ROUTES,
    names::SERVICES,
    names::BACKENDS,
    names::BACKEND_MEMBERS,
    names::STACK_FLOWS,
    names::SOCK_REVERSE,
    names::AFFINITY,
];

/// Maps only the agent and the plugin write: after an upgrade their entries
/// are exactly what they were.
const AGENT_WRITTEN: [&str; 7] = [
    names::ENDPOINTS,
    names::NODE_ROUTES,
    names::NODE_CONFIG,
    names::TUNNEL_CONFIG,
    names::SERVICES,
    names::BACKENDS,
    names::BACKEND_MEMBERS,
];

/// Every entry of a pinned map, as bytes (all CPUs' values of a per-CPU map).
fn dump(path: &Path) -> std::collections::BTreeMap<Vec<u8>, Vec<u8>> {
    use sluice_node::datapath::{bpf_sys, map_compat, migrate::pinned_shape};
    use std::os::fd::AsFd;
    let shape = pinned_shape(path).unwrap();
    let map = aya::maps::MapData::from_pin(path).unwrap();
    let fd = map.fd().as_fd();
    let cpus = aya::util::nr_cpus().unwrap();
    let mut out = std::collections::BTreeMap::new();
    let mut value = vec![0u8; map_compat::value_buffer_len(shape, cpus)];
    let mut keys = Vec::new();
    match map_compat::entries_of(shape.map_type).unwrap() {
        map_compat::Entries::Events => {}
        map_compat::Entries::Indexed => keys.extend((0..shape.max_entries).map(|i| i.to_ne_bytes().to_vec())),
        map_compat::Entries::Keyed => {
            let mut key: Option<Vec<u8>> = None;
            let mut next = vec![0u8; shape.key_size as usize];
            while bpf_sys::map_next_key(fd, key.as_deref(), &mut next).unwrap() {
                keys.push(next.clone());
                key = Some(next.clone());
            }
        }
    }
    for k in keys {
        if bpf_sys::map_lookup(fd, &k, &mut value).unwrap() {
            out.insert(k, value.clone());
        }
    }
    out
}

/// Node `i` (its agent stopped) as an earlier version left it: the old
/// object's maps (half this version's capacity, `NODE_CONFIG` of the old 8
/// bytes) holding every entry of the running ones, pinned in an earlier
/// layout's tree (`v0`); the old object's programs swapped into every link
/// in place (TCX and cgroup links alike: `BPF_LINK_UPDATE`), so the old
/// programs forward from then on, on the old maps. Traffic never stops.
fn run_old_object(lab: &Lab, i: usize) {
    use aya::programs::Program;
    use sluice_node::datapath::{bpf_sys, migrate};
    use std::os::fd::AsFd;
    let pins = PinDir::new(&lab.state.nodes[i].pin_dir);
    let old = lab.state.nodes[i].pin_dir.join("v0");
    for sub in ["maps", "progs", "links"] {
        std::fs::create_dir_all(old.join(sub)).unwrap();
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(OLD_OBJECT);
    let object = std::fs::read(&path).unwrap_or_else(|e| panic!("the old object {}: {e}", path.display()));
    let mut loader = aya::EbpfLoader::new();
    for name in SHRUNK {
        let now = migrate::pinned_shape(&pins.map(name)).unwrap().max_entries;
        loader.map_max_entries(name, now / 2);
    }
    let mut ebpf = loader.load(&object).unwrap();
    // The object's data sections (`.rodata`, `.bss`) are maps too, never pinned.
    for (name, map) in ebpf.maps_mut().filter(|(name, _)| !name.starts_with('.')) {
        let pin = old.join("maps").join(name);
        map.pin(&pin).unwrap();
        let (from, to) = (pins.map(name), pin);
        // A map this version retired (`DROPS`, now `DROP_STATS`): the old
        // node's starts empty; the new agent carries it over.
        if !from.exists() {
            continue;
        }
        let (from_map, to_map) =
            (aya::maps::MapData::from_pin(&from).unwrap(), aya::maps::MapData::from_pin(&to).unwrap());
        migrate::copy_entries(
            from_map.fd().as_fd(),
            migrate::pinned_shape(&from).unwrap(),
            to_map.fd().as_fd(),
            migrate::pinned_shape(&to).unwrap(),
            migrate::CopyScope::Every,
        )
        .unwrap_or_else(|e| panic!("carry {name} down to the old object: {e:#}"));
    }
    let mut programs = std::collections::BTreeMap::new();
    for (name, prog) in ebpf.programs_mut() {
        match prog {
            Program::SchedClassifier(p) => p.load().unwrap(),
            Program::CgroupSockAddr(p) => p.load().unwrap(),
            _ => panic!("program {name}: neither a TC classifier nor a cgroup sock_addr program"),
        }
        prog.pin(old.join("progs").join(name)).unwrap();
        programs.insert(name.to_string(), prog.fd().unwrap().try_clone().unwrap());
    }
    for link in pin_names(&pins.links_dir()) {
        let program = link.split("__").next().unwrap();
        let pin = pins.links_dir().join(&link);
        // A program the old version did not have (a later hook): its node
        // had no such link. Unpinning detaches it; the new agent attaches
        // it anew.
        let Some(prog) = programs.get(program) else {
            std::fs::remove_file(&pin).unwrap();
            continue;
        };
        let fd = bpf_sys::obj_get(&pin).unwrap();
        bpf_sys::link_update(fd.as_fd(), prog.as_fd())
            .unwrap_or_else(|e| panic!("swap {link} to the old program: {e}"));
        std::fs::rename(&pin, old.join("links").join(&link)).unwrap();
    }
    std::fs::remove_dir_all(pins.versioned()).unwrap();
}

/// An earlier version's node (its object, from an earlier commit, with half
/// the capacity of most maps and `NODE_CONFIG` of the old size) upgraded
/// under Service traffic: the new agent migrates every map, Services
/// included, and ClusterIP connections succeed before, during and after,
/// with the Services forbidden in the API server meanwhile, so nothing but
/// the migration can have put them back. Every map the agent writes holds
/// exactly the entries it held. Before, SERVICES, BACKENDS and
/// BACKEND_MEMBERS "started empty" on a capacity change: every ClusterIP
/// failed until the watchers relisted.
#[test]
fn an_earlier_versions_maps_are_all_carried_under_service_traffic() {
    use sluice_tests::{apiserver::Kind, services};
    require_root();
    let mut lab = services::lab(2, 2).unwrap();
    let backends: Vec<(String, String)> = lab.pods().iter().map(|(n, p)| (n.name.clone(), p.ip.clone())).collect();
    let eps: Vec<(&str, &str)> = backends.iter().map(|(n, ip)| (n.as_str(), ip.as_str())).collect();
    let api = lab.api.as_ref().unwrap();
    api.upsert_service(services::service("web", "10.96.0.50", &[("http", 80, 7777, "TCP")]).build());
    api.upsert_endpoint_slice(services::slice("web", &[("http", 7777, "TCP")], &services::ready(&eps)).build());
    let want: Vec<String> = backends.iter().map(|(_, ip)| format!("{ip}:7777")).collect();
    services::wait_backends(&lab, "10.96.0.50", 80, "TCP", &want).unwrap();
    let (n1, pod) = (lab.state.nodes[0].clone(), lab.state.nodes[0].pods[0].clone());
    let pins0 = PinDir::new(&n1.pin_dir);
    let before: Vec<_> = AGENT_WRITTEN.iter().map(|m| (m.to_string(), dump(&pins0.map(m)))).collect();
    let shapes_before: Vec<_> =
        SHRUNK.iter().map(|m| sluice_node::datapath::migrate::pinned_shape(&pins0.map(m)).unwrap()).collect();
    let forwards_before = dump(&pins0.map(names::FORWARDS));

    // ClusterIP connections from a pod, every 10 ms, throughout.
    let client = services::spawn_client(&lab, &n1, &pod.netns, &["tcp", "10.96.0.50", "80", "100000", "10"]).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    lab.kill_agent(0).unwrap();
    run_old_object(&lab, 0);
    // The old object forwards on its own maps; nothing in v1 any more.
    assert!(!pins0.versioned().exists());
    lab.api.as_ref().unwrap().forbid(Kind::Service, true);
    std::thread::sleep(Duration::from_millis(500));
    lab.start_agent(0).unwrap();
    lab.wait_agent_ready(0).unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    let mut client = client;
    let _ = client.kill();
    let (outcomes, text) = services::finish(client).unwrap();
    let failed: Vec<&services::Outcome> = outcomes.iter().filter(|o| o.answer().is_none()).collect();
    assert!(outcomes.len() > 100, "the client ran throughout: {text}");
    assert!(failed.is_empty(), "ClusterIP connections failed across the upgrade: {:?}", services::tally(&outcomes));

    // Every shrunk map was migrated to this version's shape; NODE_CONFIG grew.
    for (m, shape) in SHRUNK.iter().zip(&shapes_before) {
        let now = sluice_node::datapath::migrate::pinned_shape(&pins0.map(m)).unwrap();
        assert_eq!(&now, shape, "{m} is not back at this version's shape");
    }
    let log = std::fs::read_to_string(n1.dir.join("agent.log")).unwrap();
    for m in SHRUNK.iter().chain([&names::NODE_CONFIG]) {
        assert!(
            log.lines().any(|l| l.contains("map migrated") && l.contains(&format!("map=\"{m}\""))),
            "{m} not migrated:\n{log}"
        );
    }
    for (m, entries) in &before {
        if *m == names::SERVICES {
            // The old version's values had no Service port id (the 8
            // bytes appended since): it comes back zero, and only the
            // agent's next plan writes it again (below).
            let (now, then) = (dump(&pins0.map(m)), entries.clone());
            let cut = |d: &std::collections::BTreeMap<Vec<u8>, Vec<u8>>| -> Vec<(Vec<u8>, Vec<u8>)> {
                d.iter().map(|(k, v)| (k.clone(), v[..SERVICE_VALUE_V1_BYTES].to_vec())).collect()
            };
            assert_eq!(cut(&now), cut(&then), "{m}: the entries were not all carried over");
            continue;
        }
        assert_eq!(&dump(&pins0.map(m)), entries, "{m}: the entries were not all carried over");
    }
    // Counters carried on (summed over CPUs, never lower).
    let sum = |v: &Vec<u8>| v.chunks(8).map(|c| u64::from_ne_bytes(c.try_into().unwrap())).sum::<u64>();
    let forwards_after = dump(&pins0.map(names::FORWARDS));
    for (k, v) in &forwards_before {
        assert!(sum(&forwards_after[k]) >= sum(v), "FORWARDS[{k:?}] went back");
    }
    // And after: still every backend, with the Services still forbidden.
    let after = services::client(&lab, &n1, &pod.netns, &["tcp", "10.96.0.50", "80", "40"]).unwrap();
    assert!(after.iter().all(|o| o.answer().is_some()), "{:?}", services::tally(&after));
    lab.api.as_ref().unwrap().forbid(Kind::Service, false);
    // The Services readable again: the agent's plan puts every frontend's
    // Service port id back (on a new backend set: the rest of the value
    // is what it was).
    let but_the_set = |d: &std::collections::BTreeMap<Vec<u8>, Vec<u8>>| -> Vec<(Vec<u8>, Vec<u8>)> {
        d.iter().map(|(k, v)| (k.clone(), v[4..].to_vec())).collect()
    };
    let services_before = but_the_set(&before.iter().find(|(m, _)| m == names::SERVICES).unwrap().1);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while but_the_set(&dump(&pins0.map(names::SERVICES))) != services_before {
        assert!(std::time::Instant::now() < deadline, "the Service port ids were not written again within 60 s");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Bytes of a `SERVICES` value before the Service port id was appended.
const SERVICE_VALUE_V1_BYTES: usize = 16;

/// CNI ADDs and DELs racing a migration all land: while the agent migrates
/// `ENDPOINTS` (an earlier version's, of another capacity and holding 1,500
/// entries: the copy, then the rename over the pin), a writer inserts and
/// removes entries in a loop the way ADD and DEL do
/// (`plumbing::insert_endpoint`/`remove_endpoint`, under the pin
/// directory's shared lock). Afterwards the pinned map holds exactly the
/// writer's live entries and every old one. Without the lock, an entry
/// written into the old map after its copy is lost with it, and one removed
/// from it comes back.
#[test]
fn endpoint_writes_racing_a_migration_all_land() {
    use sluice_node::{
        datapath::{pinned_maps::Endpoints, Datapath},
        net::netlink::LinkInfo,
        pod::plumbing,
    };
    use std::{
        collections::BTreeSet,
        net::Ipv4Addr,
        sync::{
            atomic::{AtomicBool, Ordering},
            Arc,
        },
    };
    require_root();
    let guard = sluice_tests::PinDirGuard::new().unwrap();
    let pins = PinDir::new(&guard.path);
    drop(Datapath::load(&pins).unwrap());
    let path = pins.map(names::ENDPOINTS);
    let wanted_max = sluice_node::datapath::migrate::pinned_shape(&path).unwrap().max_entries;
    std::fs::remove_file(&path).unwrap();
    let p = path.display().to_string();
    sh(
        "bpftool",
        &["map", "create", &p, "type", "hash", "key", "4", "value", "16", "entries", "2048", "name", "ENDPOINTS"],
    )
    .unwrap();
    let old_ip = |i: u32| Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 100, 0, 0)) + i);
    let ep = sluice_common::EndpointInfo { host_ifindex: 7, pod_mac: [2, 0, 0, 0, 0, 1], host_mac: [2, 0, 0, 0, 0, 2] };
    let mut old = Endpoints::open(&pins).unwrap();
    for i in 0..1500 {
        old.insert(old_ip(i), ep).unwrap();
    }
    drop(old);

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (pins, stop) = (pins.clone(), stop.clone());
        std::thread::spawn(move || {
            let link = LinkInfo {
                index: 9,
                name: "slcwriter".into(),
                mtu: 1500,
                mac: [2, 0, 0, 0, 0, 3],
                up: true,
                admin_up: true,
                arp: true,
            };
            let ip = |i: u32| Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 200, 0, 0)) + i);
            let mut live = BTreeSet::new();
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                plumbing::insert_endpoint(&pins, ip(i), &link, [2, 0, 0, 0, 0, 4]).unwrap();
                live.insert(ip(i));
                if i >= 200 {
                    plumbing::remove_endpoint(&pins, ip(i - 200)).unwrap();
                    live.remove(&ip(i - 200));
                }
                i += 1;
            }
            (live, i)
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    let datapath = Datapath::load(&pins).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);
    let (live, writes) = writer.join().unwrap();
    drop(datapath);
    assert_eq!(sluice_node::datapath::migrate::pinned_shape(&path).unwrap().max_entries, wanted_max, "migrated");
    let all = Endpoints::open(&pins).unwrap().all().unwrap();
    // The writer's addresses count up from 10.200.0.0 and pass 10.201.0.0
    // after 65,536 writes (a slow migration on a loaded machine sees more).
    let first_written = u32::from(Ipv4Addr::new(10, 200, 0, 0));
    let written: BTreeSet<Ipv4Addr> = all.keys().filter(|ip| u32::from(**ip) >= first_written).copied().collect();
    let lost: Vec<_> = live.difference(&written).collect();
    let back: Vec<_> = written.difference(&live).collect();
    assert!(lost.is_empty() && back.is_empty(), "{writes} writes: lost {lost:?}, came back {back:?}");
    assert_eq!(all.keys().filter(|ip| ip.octets()[1] == 100).count(), 1500, "every old entry carried");
}

/// Issue 28: "restart and layout migration under IPv6 traffic lose
/// nothing". On a dual-stack lab, two long-lived IPv6 TCP connections (to a
/// pod on the other node, the cross-node fast path, and to a pod on the
/// same node, the same-node one) and a steady ICMPv6 echo flow across nodes
/// run while both agents are killed, their pins aged into an earlier layout
/// and new agents take over: every echo is answered and both connections
/// carry on.
#[test]
fn an_agent_restart_across_a_layout_change_under_ipv6_traffic_loses_nothing() {
    require_root();
    let mut opts = LabOptions::new(2, 2, bin("sluice-agent").parent().unwrap().to_path_buf());
    opts.dual_stack = true;
    let mut lab = Lab::up(&opts).unwrap();
    let (a, same, other) =
        (lab.state.nodes[0].pods[0].clone(), lab.state.nodes[0].pods[1].clone(), lab.state.nodes[1].pods[0].clone());
    let ip6 = |p: &sluice_tests::lab::Pod| -> std::net::Ipv6Addr {
        p.ip6.as_deref().expect("a dual-stack lab's pod has an IPv6 address").parse().unwrap()
    };
    const ECHO6_PORT: u16 = 7790;
    for server in [&same, &other] {
        let listen = format!("TCP6-LISTEN:{ECHO6_PORT},reuseaddr,fork");
        lab.spawn_helper(ns_cmd(&server.netns, &["socat", &listen, "EXEC:cat"]), &format!("{}-echo6", server.name))
            .unwrap();
    }
    let path = Path::new("/run/netns").join(&a.netns);
    let connect = |to: std::net::Ipv6Addr| {
        let addr = SocketAddr::from((to, ECHO6_PORT));
        let start = std::time::Instant::now();
        let conn = loop {
            match sluice_node::net::netns::run_in(&path, move || {
                Ok(TcpStream::connect_timeout(&addr, Duration::from_secs(2))?)
            }) {
                Ok(c) => break c,
                // The server's socat may still be starting.
                Err(_) if start.elapsed() < sluice_tests::patience(Duration::from_secs(5)) => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("connect to [{to}]:{ECHO6_PORT}: {e:#}"),
            }
        };
        conn.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let reader = BufReader::new(conn.try_clone().unwrap());
        (conn, reader)
    };
    let mut conns = [(same.name.clone(), connect(ip6(&same))), (other.name.clone(), connect(ip6(&other)))];
    let mut round_trip = |n: u32| {
        for (to, (conn, reader)) in conns.iter_mut() {
            conn.write_all(format!("line {n}\n").as_bytes()).unwrap_or_else(|e| panic!("to {to}: {e}"));
            let mut back = String::new();
            reader.read_line(&mut back).unwrap_or_else(|e| panic!("to {to}: {e}"));
            assert_eq!(back, format!("line {n}\n"), "the IPv6 TCP connection to {to} broke");
        }
    };
    round_trip(1);
    const FLOW: u32 = 3000;
    let flow = ns_cmd(
        &a.netns,
        &["ping", "-6", "-q", "-c", &FLOW.to_string(), "-i", "0.002", "-W", "1", &ip6(&other).to_string()],
    )
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));

    let old_trees = restart_both_agents_over_an_earlier_layout(&mut lab);
    round_trip(2);
    let out = flow.wait_with_output().unwrap();
    let received = ping_received(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert_eq!(received, FLOW, "ICMPv6 echoes lost across the restart and layout change");
    round_trip(3);
    for old in &old_trees {
        assert!(!old.exists(), "{} left behind", old.display());
    }
    // The IPv6 state was carried, not rebuilt empty: the endpoints of both
    // pods of node 1 are still in ENDPOINTS6.
    let pins0 = PinDir::new(&lab.state.nodes[0].pin_dir);
    let endpoints6 = sluice_node::datapath::pinned_maps::Endpoints6::open(&pins0).unwrap();
    for p in [&a, &same] {
        assert!(endpoints6.get(ip6(p)).is_some(), "{}'s ENDPOINTS6 entry", p.name);
    }
}
