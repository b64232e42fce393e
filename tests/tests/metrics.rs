//! Prometheus metrics: a real Prometheus server (Debian's `prometheus`)
//! scrapes every lab agent's `/metrics`; its HTTP API reports `up == 1` for
//! every node and the drop counter equal to the drops provoked. And the
//! endpoint stays off the agent's critical path: stalled and slow scrapes
//! do not hold back a membership change.
use std::{
    io::{Read, Write},
    net::TcpStream,
    path::Path,
    process::Stdio,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use ipnetwork::Ipv4Network;
use serde_json::Value;
use sluice_agent::daemon::metrics::MAX_CONNECTIONS;
use sluice_node::datapath::{pinned_maps::NodeRoutes, pins::PinDir};
use sluice_tests::{
    bin,
    lab::{ns_cmd, ns_exec, Lab, LabOptions, Node},
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
        let drops = query(
            &lan,
            &format!(
                "sluice_drops_total{{reason=\"source_spoofed\",direction=\"ingress\",instance=\"{}:9962\"}}",
                n1.ip
            ),
        );
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

/// How long after the peers file changes the agent's routes map holds the
/// change, for `trials` changes (each adds a made-up node and drops the
/// last one).
fn membership_delays(lab: &Lab, trials: std::ops::Range<u8>) -> Vec<Duration> {
    let n1 = lab.state.nodes[0].clone();
    let routes = NodeRoutes::open(&PinDir::new(&n1.pin_dir)).expect("n1's NODE_ROUTES");
    trials
        .map(|k| {
            let fake = Node {
                name: format!("f{k}"),
                ip: format!("172.30.0.{}", 150 + k),
                pod_cidr: format!("10.244.{}.0/24", 150 + k),
                ..n1.clone()
            };
            let cidr: Ipv4Network = fake.pod_cidr.parse().unwrap();
            let start = Instant::now();
            lab.write_peers_of(&[&n1, &fake]).unwrap();
            loop {
                if routes.all().unwrap().contains_key(&cidr) {
                    break start.elapsed();
                }
                assert!(start.elapsed() < Duration::from_secs(30), "route to {cidr} never appeared");
                std::thread::sleep(Duration::from_millis(1));
            }
        })
        .collect()
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}

/// A connection to the metrics endpoint opened in `netns`.
fn connect_in(netns: &str, addr: &str, n: usize) -> Vec<TcpStream> {
    let ns = Path::new("/run/netns").join(netns);
    let addr = addr.to_string();
    sluice_node::net::netns::run_in(&ns, move || {
        Ok((0..n).map(|_| TcpStream::connect(&addr)).collect::<Result<Vec<_>, _>>()?)
    })
    .expect("connect to the metrics endpoint")
}

/// Scrapes over and over on its own connection, reading each answer in
/// small pieces with pauses; counts the answers it got whole.
fn slow_scraper(mut s: TcpStream, stop: Arc<AtomicBool>, answers: Arc<AtomicUsize>) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = [0u8; 512];
    while !stop.load(Ordering::Relaxed) {
        if s.write_all(b"GET /metrics HTTP/1.1\r\nHost: sluice\r\n\r\n").is_err() {
            return;
        }
        // Headers, then exactly Content-Length bytes of body.
        let mut got = Vec::new();
        let body_len = loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
            let text = String::from_utf8_lossy(&got);
            if let Some((head, _)) = text.split_once("\r\n\r\n") {
                let len = head
                    .lines()
                    .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
                    .and_then(|v| v.parse::<usize>().ok())
                    .unwrap_or(0);
                break head.len() + 4 + len;
            }
        };
        while got.len() < body_len {
            std::thread::sleep(Duration::from_millis(2));
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        answers.fetch_add(1, Ordering::Relaxed);
    }
}

const SCRAPERS: usize = 20;
const STALLED: usize = 30;

#[test]
fn stalled_and_slow_scrapes_do_not_delay_membership() {
    require_root();
    let mut opts = LabOptions::new(1, 0, bin("sluice-agent").parent().unwrap().to_path_buf());
    // A fast pace, so the delay measured is the agent's, not the tick's.
    opts.extra_agent_args = vec!["--resync-ms".into(), "20".into()];
    let lab = Lab::up(&opts).unwrap();
    let n1 = lab.state.nodes[0].clone();
    let addr = format!("{}:9962", n1.ip);
    assert!(http_get(&n1.netns, &addr, "/metrics").is_some_and(|t| t.contains("sluice_map_entries")));

    let quiet = membership_delays(&lab, 0..15);

    // 50 connections: 20 clients scraping as fast as they read (slowly),
    // then 30 that send half a request's headers and stall.
    let stop = Arc::new(AtomicBool::new(false));
    let answers = Arc::new(AtomicUsize::new(0));
    let scrapers: Vec<_> = connect_in(&n1.netns, &addr, SCRAPERS)
        .into_iter()
        .map(|s| {
            let (stop, answers) = (stop.clone(), answers.clone());
            std::thread::spawn(move || slow_scraper(s, stop, answers))
        })
        .collect();
    let mut stalled = connect_in(&n1.netns, &addr, STALLED);
    for s in &mut stalled {
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: slu").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
    }
    // Each stalled connection must be closed by the agent: beyond the
    // limit at once, the rest when their headers time out.
    let watcher = std::thread::spawn(move || {
        let opened = Instant::now();
        let mut closed_after = vec![None; stalled.len()];
        while closed_after.iter().any(Option::is_none) && opened.elapsed() < Duration::from_secs(20) {
            for (s, closed) in stalled.iter_mut().zip(&mut closed_after) {
                if closed.is_none() {
                    let mut b = [0u8; 256];
                    match s.read(&mut b) {
                        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                        }
                        // EOF, a reset, or an answer (a 408): the agent let go.
                        _ => *closed = Some(opened.elapsed()),
                    }
                }
            }
        }
        closed_after
    });
    // Let the scrapers get going.
    let t = Instant::now();
    while answers.load(Ordering::Relaxed) < SCRAPERS && t.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let loaded = membership_delays(&lab, 15..30);
    let scraped = answers.load(Ordering::Relaxed);
    let closed_after = watcher.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    for t in scrapers {
        t.join().unwrap();
    }

    let (q, l) = (median(&quiet), median(&loaded));
    eprintln!("membership change to routes map: quiet median {q:?} {quiet:?}; under scrapes median {l:?} {loaded:?}");
    eprintln!(
        "answers to the slow scrapers while measuring: {scraped}; stalled connections closed after {closed_after:?}"
    );
    assert!(scraped >= SCRAPERS, "the slow scrapers were served ({scraped} answers)");
    assert!(l <= q + Duration::from_millis(100), "scrapes delayed membership: median {l:?} against {q:?} quiet");
    assert!(
        closed_after.iter().all(|c| c.is_some_and(|c| c < Duration::from_secs(12))),
        "every stalled connection is closed by the agent (header timeout; the rest at once over the limit): {closed_after:?}"
    );
    assert!(
        closed_after.iter().filter(|c| c.is_some_and(|c| c < Duration::from_secs(2))).count()
            >= SCRAPERS + STALLED - MAX_CONNECTIONS,
        "connections over the limit are closed at once: {closed_after:?}"
    );
}
