//! `sluice-agent monitor`: every drop the lab can provoke shows up with its
//! reason and 5-tuple, exactly as many times as packets were sent, and in
//! the drop counters by the same number; `--type trace` shows forwarding
//! decisions; it works while the agent is down; several monitors see the
//! same events, stamped with when they happened, and none shows what
//! happened before it started.
use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    process::{Child, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use serde_json::Value;
use sluice_tests::{
    bin,
    lab::{ns_cmd, ns_exec, Lab, LabOptions},
    require_root, try_run,
};

/// A monitor running on a lab node, past its readiness line.
struct Monitor {
    child: Child,
    stderr: mpsc::Receiver<String>,
}

impl Monitor {
    /// Start `monitor --json` on node `i` for `ms` and wait until it says
    /// it listens (every event from then on is shown).
    fn start(lab: &Lab, i: usize, args: &[&str], ms: u64) -> Monitor {
        let node = &lab.state.nodes[i];
        let agent = bin("sluice-agent").display().to_string();
        let pin_dir = node.pin_dir.display().to_string();
        let duration = ms.to_string();
        let mut argv = vec![agent.as_str(), "monitor", "--json", "--pin-dir", &pin_dir, "--duration-ms", &duration];
        argv.extend(args);
        let mut child = ns_cmd(&node.netns, &argv).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let (tx, stderr) = mpsc::channel();
        let pipe = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut said = Vec::new();
        loop {
            match stderr.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.starts_with("monitor: listening") => break,
                Ok(line) => said.push(line),
                Err(_) => panic!("the monitor never said it listens: {said:?} (exit: {:?})", child.try_wait()),
            }
        }
        Monitor { child, stderr }
    }

    /// Its events, once it has run its time.
    fn events(self) -> Vec<Value> {
        let out = self.child.wait_with_output().unwrap();
        let said: Vec<String> = self.stderr.try_iter().collect();
        assert!(out.status.success(), "monitor failed: {said:?}");
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }
}

/// Run the monitor on node `i` for `ms`, while `provoke` runs; its JSON lines.
fn monitor_during(lab: &Lab, i: usize, args: &[&str], ms: u64, provoke: impl FnOnce()) -> Vec<Value> {
    let monitor = Monitor::start(lab, i, args, ms);
    provoke();
    monitor.events()
}

/// `MONITORS[0]` of node `i`: which monitor slots subscribe to what.
fn subscriptions(lab: &Lab, i: usize) -> u32 {
    let pin = lab.state.nodes[i].pin_dir.join("v1/maps/MONITORS").display().to_string();
    let dump = sluice_tests::bpftool_json(&["map", "dump", "pinned", &pin]).unwrap();
    let bytes: Vec<u8> = dump[0]["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| u8::from_str_radix(b.as_str().unwrap().trim_start_matches("0x"), 16).unwrap())
        .collect();
    u32::from_ne_bytes(bytes[..4].try_into().unwrap())
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid out-pointer.
    assert_eq!(unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) }, 0);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn drops(lab: &Lab, i: usize) -> BTreeMap<String, u64> {
    lab.status(i).unwrap()["drops"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.as_u64().unwrap())).collect()
}

fn ping(netns: &str, args: &[&str]) {
    let mut a = vec!["ping", "-i", "0.2", "-W", "1"];
    if !args.contains(&"-c") {
        a.extend(["-c", "3"]);
    }
    a.extend(args);
    let _ = try_run(&mut ns_cmd(netns, &a));
}

#[test]
fn every_provoked_drop_is_reported_with_its_reason_and_tuple() {
    require_root();
    let lab = Lab::up(&LabOptions::new(2, 2, bin("sluice-agent").parent().unwrap().to_path_buf())).unwrap();
    let (a1, a2, b1) =
        (lab.state.nodes[0].pods[0].clone(), lab.state.nodes[0].pods[1].clone(), lab.state.nodes[1].pods[0].clone());
    let n1 = lab.state.nodes[0].clone();
    // A pod with a second, foreign address; a LAN host claiming a local pod's.
    ns_exec(&a1.netns, &["ip", "addr", "add", "10.244.1.200/32", "dev", "eth0"]).unwrap();
    let lan = lab.state.lan_netns.clone();
    ns_exec(&lan, &["ip", "addr", "add", &format!("{}/32", a2.ip), "dev", "lo"]).unwrap();
    ns_exec(&lan, &["ip", "addr", "add", "172.30.0.254/24", "dev", "br0"]).unwrap();
    ns_exec(&lan, &["ip", "route", "add", &n1.pod_cidr, "via", &n1.ip]).unwrap();

    // Three frames with a broken IPv4 header (IHL 4) from a1, by hand.
    let link: Value =
        serde_json::from_str(&ns_exec(&a1.netns, &["ip", "-j", "link", "show", "eth0"]).unwrap()).unwrap();
    let pod_mac = link[0]["address"].as_str().unwrap().replace(':', "");
    let neigh = ns_exec(&a1.netns, &["ip", "neigh", "show", "169.254.1.1"]).unwrap();
    let gw_mac = neigh.split_whitespace().skip_while(|w| *w != "lladdr").nth(1).unwrap().replace(':', "");
    let broken = format!(
        "import socket,struct\n\
         s=socket.socket(socket.AF_PACKET,socket.SOCK_RAW)\n\
         s.bind(('eth0',0))\n\
         ip=struct.pack('!BBHHHBBH4s4s',0x44,0,40,1,0,64,1,0,socket.inet_aton('{src}'),socket.inet_aton('{dst}'))+bytes(20)\n\
         [s.send(bytes.fromhex('{gw_mac}{pod_mac}0800')+ip) for _ in range(3)]\n",
        src = a1.ip,
        dst = b1.ip
    );
    let before = drops(&lab, 0);
    let events = monitor_during(&lab, 0, &[], 7000, || {
        ping(&a1.netns, &["-I", "10.244.1.200", &b1.ip]); // source_spoofed x3
        ping(&a1.netns, &["-t", "1", &b1.ip]); // ttl_expired x3
        ping(&lan, &["-I", &a2.ip, &a1.ip]); // uplink_source_spoofed x3
        ns_exec(&a1.netns, &["python3", "-c", &broken]).unwrap(); // bad_ip_header x3
    });
    let after = drops(&lab, 0);
    // The node's health namespace sends IPv6 frames (router solicitations,
    // MLD) at times of its own: dropped as unknown_l3, not provoked here.
    let events: Vec<Value> =
        events.into_iter().filter(|e| !(e["reason"] == "unknown_l3" && e["interface"] == "slhealth")).collect();
    let mut by_reason: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for e in &events {
        assert_eq!(e["type"], "drop", "--type drop shows drops only: {e}");
        by_reason.entry(e["reason"].as_str().unwrap().to_string()).or_default().push(e);
    }
    for (reason, src, dst, ifname_prefix) in [
        ("source_spoofed", "10.244.1.200", b1.ip.as_str(), "slc"),
        ("ttl_expired", a1.ip.as_str(), b1.ip.as_str(), "slc"),
        ("uplink_source_spoofed", a2.ip.as_str(), a1.ip.as_str(), "eth0"),
        ("bad_ip_header", a1.ip.as_str(), b1.ip.as_str(), "slc"),
    ] {
        let got = by_reason.get(reason).cloned().unwrap_or_default();
        assert_eq!(got.len(), 3, "{reason}: {events:#?}");
        for e in &got {
            assert_eq!(
                (e["src"].as_str(), e["dst"].as_str(), e["protocol"].as_str()),
                (Some(src), Some(dst), Some("icmp"))
            );
            assert!(e["interface"].as_str().unwrap().starts_with(ifname_prefix), "{e}");
            assert!(e["len"].as_u64().unwrap() >= 54, "{e}");
            assert_eq!(e["header"].as_str().unwrap().len(), 96, "the header's first 48 bytes: {e}");
        }
        assert_eq!(after[reason] - before[reason], 3, "{reason}: the counter moved by exactly what was sent");
    }
    assert_eq!(events.len(), 12, "nothing else was dropped: {events:#?}");
}

#[test]
fn trace_shows_forwarding_and_the_monitor_works_while_the_agent_is_down() {
    require_root();
    let mut lab = Lab::up(&LabOptions::new(2, 1, bin("sluice-agent").parent().unwrap().to_path_buf())).unwrap();
    let (a, b) = (lab.state.nodes[0].pods[0].clone(), lab.state.nodes[1].pods[0].clone());
    lab.kill_agent(0).unwrap();
    let events = monitor_during(&lab, 0, &["--type", "trace", "--ip", &b.ip], 2500, || {
        ping(&a.netns, &["-c", "2", &b.ip]);
    });
    let paths: Vec<&str> = events.iter().map(|e| e["path"].as_str().unwrap()).collect();
    assert_eq!(paths.iter().filter(|p| **p == "pod_to_node").count(), 2, "{events:#?}");
    assert_eq!(paths.iter().filter(|p| **p == "uplink_to_pod").count(), 2, "{events:#?}");
    // Tracing is switched off again once the monitor leaves.
    assert_eq!(subscriptions(&lab, 0), 0);
}

/// Issue #24: one ring buffer for all monitors meant a new monitor printed
/// whatever had piled up before it started, and two monitors split the
/// events between them; events had no time.
#[test]
fn monitors_show_only_new_events_all_of_them_each_stamped_with_its_time() {
    require_root();
    let lab = Lab::up(&LabOptions::new(1, 2, bin("sluice-agent").parent().unwrap().to_path_buf())).unwrap();
    let (a, b) = (lab.state.nodes[0].pods[0].clone(), lab.state.nodes[0].pods[1].clone());
    ns_exec(&a.netns, &["ip", "addr", "add", "10.244.1.200/32", "dev", "eth0"]).unwrap();
    let spoof = |n: &str| ping(&a.netns, &["-c", n, "-I", "10.244.1.200", &b.ip]);

    // A monitor killed outright cannot unsubscribe: the datapath keeps
    // writing its slot's ring buffer, a backlog for whoever comes next.
    let mut killed = Monitor::start(&lab, 0, &[], 60_000);
    killed.child.kill().unwrap();
    killed.child.wait().unwrap();
    assert_ne!(subscriptions(&lab, 0), 0, "the killed monitor's slot is still subscribed");
    spoof("3");

    // Two new monitors (the first takes the killed one's slot), then two
    // packets dropped while both listen.
    // (Only the spoofed address's drops: the node's health namespace sends
    // IPv6 frames, dropped as unknown_l3, at times of its own.)
    let only = ["--ip", "10.244.1.200"];
    let first = Monitor::start(&lab, 0, &only, 4000);
    let second = Monitor::start(&lab, 0, &only, 4000);
    let (wall_before, mono_before) = (jiff::Timestamp::now(), monotonic_ns());
    spoof("2");
    let (wall_after, mono_after) = (jiff::Timestamp::now(), monotonic_ns());
    let (first, second) = (first.events(), second.events());

    let stamps = |events: &[Value]| -> Vec<u64> {
        for e in events {
            assert_eq!(
                (e["reason"].as_str(), e["src"].as_str()),
                (Some("source_spoofed"), Some("10.244.1.200")),
                "{e}"
            );
        }
        events.iter().map(|e| e["monotonicNs"].as_u64().unwrap()).collect()
    };
    let (s1, s2) = (stamps(&first), stamps(&second));
    assert_eq!(s1.len(), 2, "the first monitor shows the two new drops and none of the backlog: {first:#?}");
    assert_eq!(s1, s2, "both monitors see the same events: {first:#?} {second:#?}");
    assert!(s1.windows(2).all(|w| w[0] < w[1]), "in order: {s1:?}");
    for (e, ts) in first.iter().zip(&s1) {
        assert!(
            (mono_before..=mono_after).contains(ts),
            "stamped while it happened: {ts} in {mono_before}..{mono_after}"
        );
        let at: jiff::Timestamp = e["time"].as_str().unwrap().parse().unwrap();
        let slack = jiff::SignedDuration::from_millis(5);
        assert!(at >= wall_before - slack && at <= wall_after + slack, "wall time {at} in {wall_before}..{wall_after}");
    }
    assert_eq!(subscriptions(&lab, 0), 0, "every slot unsubscribed, the killed monitor's too");
}
