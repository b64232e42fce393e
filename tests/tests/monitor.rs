//! `sluice-agent monitor`: every drop the lab can provoke shows up with its
//! reason and 5-tuple, exactly as many times as packets were sent, and in
//! the drop counters by the same number; `--type trace` shows forwarding
//! decisions; it works while the agent is down.
use std::{collections::BTreeMap, process::Stdio, time::Duration};

use serde_json::Value;
use sluice_tests::{
    bin,
    lab::{ns_cmd, ns_exec, Lab, LabOptions},
    require_root, try_run,
};

/// Run the monitor on node `i` for `ms`, while `provoke` runs; its JSON lines.
fn monitor_during(lab: &Lab, i: usize, args: &[&str], ms: u64, provoke: impl FnOnce()) -> Vec<Value> {
    let node = &lab.state.nodes[i];
    let agent = bin("sluice-agent").display().to_string();
    let pin_dir = node.pin_dir.display().to_string();
    let duration = ms.to_string();
    let mut argv = vec![agent.as_str(), "monitor", "--json", "--pin-dir", &pin_dir, "--duration-ms", &duration];
    argv.extend(args);
    let child = ns_cmd(&node.netns, &argv).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    provoke();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "monitor failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
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
    let monitor = lab.state.nodes[0].pin_dir.join("v1/maps/MONITOR").display().to_string();
    let dump = sluice_tests::sh("bpftool", &["map", "dump", "pinned", &monitor]).unwrap();
    assert!(dump.contains("value: 00 00 00 00"), "{dump}");
}
