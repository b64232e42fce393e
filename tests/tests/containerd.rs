//! A real container runtime: containerd + runc, `ctr run --cni`, busybox
//! containers built offline from Debian's busybox-static. Two containers on
//! one node and one on another reach each other through sluice; stopping
//! them releases their addresses (ctr calls CNI DEL).
use std::{
    thread::sleep,
    time::{Duration, Instant},
};

use serde_json::Value;
use sluice_tests::{
    bin,
    containerd::Containerd,
    lab::{ns_exec, Lab, LabOptions, Node},
    oci, require_root,
    runtime::cni_bin_dir,
    unique, Netns,
};

const IMAGE: &str = "docker.io/sluice/busybox:test";

fn pod_ns() -> Netns {
    Netns::new("slctr").unwrap()
}

/// The container's address, once CNI ADD has given it one.
fn wait_ip(netns: &str, log: &std::path::Path) -> String {
    let start = Instant::now();
    loop {
        let out = ns_exec(netns, &["ip", "-j", "-4", "addr", "show", "dev", "eth0"]).unwrap_or_default();
        let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
        if let Some(ip) = v[0]["addr_info"][0]["local"].as_str() {
            return ip.to_string();
        }
        if start.elapsed() > Duration::from_secs(30) {
            panic!("no address in {netns}; ctr said:\n{}", std::fs::read_to_string(log).unwrap_or_default());
        }
        sleep(Duration::from_millis(100));
    }
}

fn lease_count(node: &Node) -> usize {
    let dir = node.dir.join("data/ipam");
    let mut n = 0;
    for sub in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        for f in std::fs::read_dir(sub.path()).into_iter().flatten().flatten() {
            if f.file_name().to_string_lossy().parse::<std::net::Ipv4Addr>().is_ok() {
                n += 1;
            }
        }
    }
    n
}

#[test]
fn containers_on_one_and_two_nodes_talk_and_release_addresses_when_stopped() {
    require_root();
    let lab = Lab::up(&LabOptions::new(2, 0, bin("sluice-agent").parent().unwrap().to_path_buf())).unwrap();
    let (n1, n2) = (lab.state.nodes[0].clone(), lab.state.nodes[1].clone());

    let work = lab.state.dir.join("image");
    std::fs::create_dir_all(&work).unwrap();
    oci::busybox_rootfs(&work.join("rootfs")).unwrap();
    let archive = oci::build_archive(&work.join("rootfs"), IMAGE, &["/bin/sh"], &work).unwrap();
    let cni_bin = cni_bin_dir(&lab.state.dir.join("cni-bin"), &bin("sluice-cni"), &["loopback"]).unwrap();

    let c1 = Containerd::start(&n1, &cni_bin).unwrap();
    let c2 = Containerd::start(&n2, &cni_bin).unwrap();
    c1.import(&archive).unwrap();
    c2.import(&archive).unwrap();

    // Each container answers TCP on 7777 with its name.
    let serve = |name: &str| format!("while true; do echo {name} | nc -l -p 7777; done");
    let (pa, pb, pc) = (pod_ns(), pod_ns(), pod_ns());
    let mut a = c1.run_container(IMAGE, "ctr-a", &pa.name, &serve("ctr-a")).unwrap();
    let mut b = c1.run_container(IMAGE, "ctr-b", &pb.name, &serve("ctr-b")).unwrap();
    let mut c = c2.run_container(IMAGE, "ctr-c", &pc.name, &serve("ctr-c")).unwrap();
    let log = |c: &Containerd, id: &str| c.dir.join(format!("{id}.log"));
    let (ip_a, ip_b, ip_c) = (
        wait_ip(&pa.name, &log(&c1, "ctr-a")),
        wait_ip(&pb.name, &log(&c1, "ctr-b")),
        wait_ip(&pc.name, &log(&c2, "ctr-c")),
    );
    assert!(ip_a.starts_with("10.244.1.") && ip_b.starts_with("10.244.1.") && ip_c.starts_with("10.244.2."));
    assert_eq!(lease_count(&n1), 2);
    assert_eq!(lease_count(&n2), 1);
    sleep(Duration::from_millis(500)); // let the listeners start

    // From inside the containers (ctr task exec): ICMP and TCP, same node and across.
    for (ctr, from, to_ip, to_name) in
        [(&c1, "ctr-a", &ip_b, "ctr-b"), (&c1, "ctr-a", &ip_c, "ctr-c"), (&c2, "ctr-c", &ip_a, "ctr-a")]
    {
        let (ok, out) = ctr.exec(from, &unique("ping"), &["ping", "-c", "2", "-W", "2", to_ip]).unwrap();
        assert!(ok, "{from} -> {to_name} ping: {out}");
        let (ok, out) = ctr.exec(from, &unique("nc"), &["nc", "-w", "2", to_ip, "7777"]).unwrap();
        assert!(ok && out.trim() == to_name, "{from} -> {to_name} TCP got {out:?}");
    }

    // Stopping the containers: ctr runs CNI DEL, addresses are released.
    for (ctr, id) in [(&c1, "ctr-a"), (&c1, "ctr-b"), (&c2, "ctr-c")] {
        ctr.kill(id).unwrap();
    }
    for child in [&mut a, &mut b, &mut c] {
        let start = Instant::now();
        while child.try_wait().unwrap().is_none() {
            assert!(start.elapsed() < Duration::from_secs(20), "ctr run did not exit after kill");
            sleep(Duration::from_millis(100));
        }
    }
    assert_eq!(lease_count(&n1), 0, "addresses on n1 released");
    assert_eq!(lease_count(&n2), 0, "addresses on n2 released");
    assert!(lab.pod_endpoints(0).unwrap().is_empty());
    assert!(lab.pod_endpoints(1).unwrap().is_empty());
}
