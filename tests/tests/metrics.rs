//! Prometheus metrics: a real Prometheus server (Debian's `prometheus`)
//! scrapes every lab agent's `/metrics`; its HTTP API reports `up == 1` for
//! every node and the drop counter equal to the drops provoked.
use std::{
    io::{Read, Write},
    net::TcpStream,
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use serde_json::Value;
use sluice_tests::{
    bin,
    lab::{ns_cmd, ns_exec, Lab, LabOptions},
    require_root, try_run,
};

/// `GET path` on `addr` from inside `netns`; the body.
fn http_get(netns: &str, addr: &str, path: &str) -> Option<String> {
    let (addr, path) = (addr.to_string(), path.to_string());
    let ns = Path::new("/run/netns").join(netns);
    sluice_node::net::netns::run_in(&ns, move || {
        let mut s = TcpStream::connect(&addr)?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
    })
    .ok()
}

fn query(netns: &str, promql: &str) -> Vec<Value> {
    let q: String = promql
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"_:.".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    http_get(netns, "127.0.0.1:9090", &format!("/api/v1/query?query={q}"))
        .and_then(|body| serde_json::from_str::<Value>(&body).ok())
        .and_then(|v| v["data"]["result"].as_array().cloned())
        .unwrap_or_default()
}

#[test]
fn a_real_prometheus_scrapes_every_agent_and_sees_the_drops() {
    require_root();
    let lab = Lab::up(&LabOptions::new(2, 1, bin("sluice-agent").parent().unwrap().to_path_buf())).unwrap();
    let (n1, n2) = (lab.state.nodes[0].clone(), lab.state.nodes[1].clone());
    let a = n1.pods[0].clone();

    // The agent's own endpoint, by convention.
    let text = http_get(&n1.netns, &format!("{}:9962", n1.ip), "/metrics").expect("metrics endpoint");
    for name in [
        "sluice_drops_total{reason=\"source_spoofed\",direction=\"ingress\"}",
        // The lab added one pod on this node through the plugin.
        "sluice_cni_calls_total{verb=\"ADD\",code=\"0\"} 1",
        "sluice_cni_duration_seconds_count{verb=\"ADD\"} 1",
        "sluice_forwarded_packets_total{path=\"pod_to_node\"}",
        "sluice_map_entries{map=\"ENDPOINTS\"}",
        "sluice_map_capacity_entries{map=\"NODE_ROUTES\"} 16384",
        "sluice_reconcile_duration_seconds_bucket",
        "sluice_membership_problems 0",
        "sluice_masquerade_packets_total",
    ] {
        assert!(text.contains(name), "{name} missing:\n{text}");
    }

    // Three spoofed packets on n1.
    ns_exec(&a.netns, &["ip", "addr", "add", "10.244.1.200/32", "dev", "eth0"]).unwrap();
    let _ = try_run(&mut ns_cmd(
        &a.netns,
        &["ping", "-c", "3", "-i", "0.2", "-W", "1", "-I", "10.244.1.200", &n2.pods[0].ip],
    ));

    // Prometheus on the LAN, scraping both agents every second.
    let lan = lab.state.lan_netns.clone();
    ns_exec(&lan, &["ip", "addr", "add", "172.30.0.254/24", "dev", "br0"]).unwrap();
    let dir = lab.state.dir.join("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: sluice\n    static_configs:\n      - targets: ['{}:9962', '{}:9962']\n",
            n1.ip, n2.ip
        ),
    )
    .unwrap();
    let cfg = format!("--config.file={}", config.display());
    let tsdb = format!("--storage.tsdb.path={}", dir.join("data").display());
    let mut prometheus = ns_cmd(&lan, &["prometheus", &cfg, &tsdb, "--web.listen-address=127.0.0.1:9090"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus (Debian package prometheus)");
    let start = Instant::now();
    let mut seen = (Vec::new(), Vec::new());
    while start.elapsed() < Duration::from_secs(40) {
        let up = query(&lan, "up == 1");
        let drops =
            query(&lan, &format!("sluice_drops_total{{reason=\"source_spoofed\",instance=\"{}:9962\"}}", n1.ip));
        if up.len() == 2 && drops.first().is_some_and(|d| d["value"][1] == "3") {
            seen = (up, drops);
            break;
        }
        seen = (up, drops);
        std::thread::sleep(Duration::from_millis(500));
    }
    let _ = prometheus.kill();
    let _ = prometheus.wait();
    assert_eq!(seen.0.len(), 2, "up == 1 for both agents: {:?}", seen.0);
    assert_eq!(seen.1.first().map(|d| d["value"][1].clone()), Some(Value::from("3")), "{:?}", seen.1);
}
