//! `STACK_FLOWS` at capacity: what happens, and that an operator sees it.
//!
//! The table remembers each flow the node's stack forwarded from a pod
//! (here a DNAT like kube-proxy's ClusterIP rule), so the flow's replies go
//! back through conntrack. It is an LRU: a connection idle while the table
//! fills with newer flows loses its entry, and a server speaking first
//! after the idle has its packet delivered on the fast path, un-NATed, to
//! a client socket that never asked that address (the client's kernel
//! answers with a reset). A client speaking first re-remembers the flow on
//! its way out and loses nothing.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::Path,
    time::Duration,
};

use serde_json::Value;
use sluice_tests::{
    bin,
    lab::{ns_exec, Lab, LabOptions, Pod},
    require_root,
};

/// The made-up ClusterIP the node DNATs to the backend pod.
const VIP: &str = "10.96.0.200";
const SMALL: u64 = 1024;
/// New flows between the idle connection's last packet and its server's
/// next one: several times the small table.
const CHURN: u16 = 5000;

fn in_netns<T: Send + 'static>(netns: &str, f: impl FnOnce() -> anyhow::Result<T> + Send + 'static) -> T {
    sluice_node::net::netns::run_in(&Path::new("/run/netns").join(netns), f).unwrap()
}

/// A connection from `client` to VIP:80, DNATed by the node to the
/// backend's listener: (client end, server end).
fn natted_connection(client: &Pod, listener: &TcpListener) -> (TcpStream, TcpStream) {
    let vip: SocketAddr = format!("{VIP}:80").parse().unwrap();
    let c = in_netns(&client.netns, move || Ok(TcpStream::connect_timeout(&vip, Duration::from_secs(2))?));
    c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let (s, _) = listener.accept().unwrap();
    (c, s)
}

/// The server speaks first; does the client hear it?
fn server_push_arrives(server: &mut TcpStream, client: &mut TcpStream, n: u32) -> bool {
    let line = format!("push {n}\n");
    if server.write_all(line.as_bytes()).is_err() {
        return false;
    }
    let mut got = vec![0u8; line.len()];
    client.read_exact(&mut got).is_ok() && got == line.as_bytes()
}

/// `CHURN` new NATed UDP flows from `client` on every CPU (three
/// datagrams each, to VIP:10000.. which the node DNATs to the backend,
/// port kept).
/// Every CPU: the kernel's LRU hands each CPU free entries of its own and
/// evicts from another CPU's only when it must, as real churn (spread over
/// the node's CPUs) makes it.
fn churn(client: &Pod) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
    let senders: Vec<_> = (0..cpus)
        .map(|cpu| {
            let netns = client.netns.clone();
            std::thread::spawn(move || {
                in_netns(&netns, move || {
                    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET and
                    // sched_setaffinity only touch this thread's mask.
                    unsafe {
                        let mut set: libc::cpu_set_t = std::mem::zeroed();
                        libc::CPU_SET(cpu, &mut set);
                        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                            return Err(std::io::Error::last_os_error().into());
                        }
                    }
                    let s = UdpSocket::bind("0.0.0.0:0")?;
                    let base = 10_000 + cpu as u16 * CHURN;
                    for i in 0..CHURN {
                        // Three packets a flow: the kernel's LRU keeps an
                        // entry used more than once ahead of single-packet
                        // ones, so only flows of several packets (as real
                        // connections are) displace a once busy, now idle one.
                        for _ in 0..3 {
                            s.send_to(b"x", (VIP, base + i))?;
                        }
                        if i % 200 == 199 {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                    }
                    Ok(())
                })
            })
        })
        .collect();
    for s in senders {
        s.join().unwrap();
    }
}

fn stack_flows(lab: &Lab) -> Value {
    lab.status(0).unwrap()["stackFlows"].clone()
}

fn metrics(lab: &Lab) -> String {
    let n1 = lab.state.nodes[0].clone();
    in_netns(&n1.netns, move || {
        let mut s = TcpStream::connect((n1.ip.as_str(), 9962))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })
}

#[test]
fn an_idle_natted_connection_at_capacity_is_lost_and_reported_and_the_default_size_keeps_it() {
    require_root();
    let mut opts = LabOptions::new(1, 2, bin("sluice-agent").parent().unwrap().to_path_buf());
    opts.extra_agent_args = vec!["--stack-flows-max".into(), SMALL.to_string()];
    let mut lab = Lab::up(&opts).unwrap();
    let n1 = lab.state.nodes[0].clone();
    let (client, backend) = (n1.pods[0].clone(), n1.pods[1].clone());
    let to = |port: &str| format!("{}{port}", backend.ip);
    for (proto, dport, dest) in [("tcp", "80", to(":9000")), ("udp", "10000:60000", to(""))] {
        let rule = ["-t", "nat", "-A", "PREROUTING", "-d", VIP, "-p", proto, "--dport", dport, "-j", "DNAT"];
        let mut args = vec!["iptables"];
        args.extend(rule);
        args.extend(["--to-destination", &dest]);
        ns_exec(&n1.netns, &args).unwrap();
    }
    let listener = in_netns(&backend.netns, || Ok(TcpListener::bind("0.0.0.0:9000")?));
    let sf = stack_flows(&lab);
    assert_eq!(sf["max"], SMALL, "sized by the flag: {sf}");

    // A small table: the churn evicts the idle connection's entry.
    let (mut c, mut s) = natted_connection(&client, &listener);
    assert!(server_push_arrives(&mut s, &mut c, 1), "a fresh NATed connection works both ways");
    churn(&client);
    let lost = !server_push_arrives(&mut s, &mut c, 2);
    let sf = stack_flows(&lab);
    eprintln!("small table after {CHURN} new flows: {sf}");
    assert!(lost, "with {SMALL} entries and {CHURN} newer flows the idle connection's entry was evicted: {sf}");
    // ... and the operator sees it: status warns, metrics count evictions.
    let evicted = sf["evicted"].as_u64().unwrap();
    assert!(evicted >= u64::from(CHURN) - SMALL, "evictions counted: {sf}");
    let status = lab.status(0).unwrap();
    let warned = status["warnings"].as_array().unwrap().iter().any(|w| {
        w.as_str().is_some_and(|w| w.starts_with("STACK_FLOWS is at capacity") && w.contains(&format!("of {SMALL})")))
    });
    assert!(warned, "status warns: {}", status["warnings"]);
    assert_eq!(status["healthy"], true, "a warning, not a failed readiness probe");
    let text = metrics(&lab);
    for line in [
        format!("sluice_map_capacity_entries{{map=\"STACK_FLOWS\"}} {SMALL}"),
        "sluice_stack_flows_evicted_total{family=\"ipv4\"} ".to_string(),
        "sluice_stack_flows_total{event=\"remembered\",family=\"ipv4\"}".to_string(),
        "sluice_map_entries{map=\"SOCK_REVERSE\"}".to_string(),
        "sluice_map_capacity_entries{map=\"FORWARDS\"}".to_string(),
        "sluice_map_capacity_bytes{map=\"EVENTS_0\"}".to_string(),
    ] {
        assert!(text.contains(&line), "{line} missing from the metrics:\n{text}");
    }
    let exported: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("sluice_stack_flows_evicted_total{family=\"ipv4\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    assert!(exported >= evicted, "metrics {exported} evictions, status {evicted}");

    // The default: sized from the node's nf_conntrack_max; the restart
    // migrates the pinned table to it. The same churn leaves an idle
    // connection working.
    lab.kill_agent(0).unwrap();
    lab.state.extra_agent_args.clear();
    lab.start_agent(0).unwrap();
    lab.wait_agent_ready(0).unwrap();
    let conntrack_max: u64 =
        ns_exec(&n1.netns, &["cat", "/proc/sys/net/netfilter/nf_conntrack_max"]).unwrap().trim().parse().unwrap();
    let sf = stack_flows(&lab);
    assert_eq!(sf["max"], conntrack_max.clamp(65_536, 1 << 20), "sized from nf_conntrack_max {conntrack_max}: {sf}");
    let (mut c, mut s) = natted_connection(&client, &listener);
    assert!(server_push_arrives(&mut s, &mut c, 3));
    churn(&client);
    let after = stack_flows(&lab);
    eprintln!("default table after {CHURN} more flows: {after}");
    assert!(server_push_arrives(&mut s, &mut c, 4), "the idle connection survives with room for every flow: {after}");
    assert_eq!(after["evicted"], sf["evicted"], "no new evictions: {after}");
}
