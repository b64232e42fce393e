//! Measuring a network path between two network namespaces, the way
//! ../shared/BENCHMARKING.md found stable on these VMs: client and server
//! threads pinned to one CPU, every CPU kept awake by a SCHED_IDLE spinner,
//! cubic congestion control for throughput.
//!
//! TCP request/response (RR) and connect/request/response/close (CRR) are
//! measured in-process: a server thread and a client thread, each entered
//! into its namespace, exchanging one byte. Throughput and its CPU cost come
//! from iperf3 (Debian). Where the client must be a process of its own (in
//! a lab node's cgroup, so the socket load balancer sees it), the server
//! stays a thread here (`rr_server`, `crr_server`) and the client process
//! runs `rr_client` / `crr_client` and hands back its `Latency`.
//!
//! `ServiceProbe` reads single entries of a node's pinned socket load
//! balancer maps, to time a Service change until the map holds it.
use std::{
    io::{self, Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    os::fd::{AsRawFd, OwnedFd},
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sluice_common::{
    maps::names,
    services::{Backend, BackendSlot, ServiceKey, ServiceValue, SockLbCounter},
    ForwardPath,
};
use sluice_node::datapath::{bpf_sys, pinned_maps, pins::PinDir, service_maps};

use crate::run;

/// Pin the calling thread to one CPU.
pub fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t with one bit set, for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// One SCHED_IDLE busy loop per CPU while alive: idle vCPUs here wake up
/// slowly and make request/response figures several times worse and noisy.
pub struct Spinners {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Spinners {
    pub fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let cpus = thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let threads = (0..cpus)
            .map(|cpu| {
                let stop = stop.clone();
                thread::spawn(move || {
                    pin_to_cpu(cpu);
                    // SAFETY: lowers only this thread's scheduling class.
                    unsafe {
                        let param = libc::sched_param { sched_priority: 0 };
                        libc::sched_setscheduler(0, libc::SCHED_IDLE, &param);
                    }
                    while !stop.load(Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        Self { stop, threads }
    }
}

impl Drop for Spinners {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Latency {
    pub per_sec: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub samples: usize,
}

impl Latency {
    /// Slices of one measurement as one: the rate over the slices' summed
    /// time; each percentile as the slices' own, weighted by their
    /// samples (a slice keeps only its percentiles, not its samples).
    pub fn merge(parts: &[Latency]) -> Latency {
        let samples: usize = parts.iter().map(|p| p.samples).sum();
        let secs: f64 = parts.iter().filter(|p| p.per_sec > 0.0).map(|p| p.samples as f64 / p.per_sec).sum();
        let weighted = |f: fn(&Latency) -> f64| {
            if samples == 0 {
                return 0.0;
            }
            parts.iter().map(|p| f(p) * p.samples as f64).sum::<f64>() / samples as f64
        };
        Latency {
            per_sec: if secs > 0.0 { samples as f64 / secs } else { 0.0 },
            p50_us: weighted(|p| p.p50_us),
            p99_us: weighted(|p| p.p99_us),
            samples,
        }
    }
}

fn summarize(mut samples: Vec<Duration>, elapsed: Duration) -> Latency {
    samples.sort();
    let pick = |q: f64| {
        if samples.is_empty() {
            return 0.0;
        }
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples[i].as_secs_f64() * 1e6
    };
    Latency {
        per_sec: samples.len() as f64 / elapsed.as_secs_f64(),
        p50_us: pick(0.5),
        p99_us: pick(0.99),
        samples: samples.len(),
    }
}

fn enter(ns: &str) -> Result<()> {
    let f = std::fs::File::open(Path::new("/run/netns").join(ns)).with_context(|| format!("open netns {ns}"))?;
    nix::sched::setns(std::os::fd::AsFd::as_fd(&f), nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
    Ok(())
}

/// Bind, waiting up to 2 s while the port is in use: the previous
/// measurement's server on the same port stops asynchronously (its
/// `Server` only raises `stop`), and on a busy machine its thread may
/// not have closed its listener yet (seen as EADDRINUSE in a full bench).
fn bind_when_free(ip: IpAddr, port: u16) -> Result<TcpListener> {
    let start = Instant::now();
    loop {
        match TcpListener::bind((ip, port)) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && start.elapsed() < Duration::from_secs(2) => {
                thread::sleep(Duration::from_millis(10))
            }
            r => return r.with_context(|| format!("bind {ip}:{port}")),
        }
    }
}

/// A listener in `ns` on `ip:port` (0: ephemeral), served by `serve` per connection.
fn server(ns: &str, ip: IpAddr, port: u16, serve: fn(TcpStream)) -> Result<(SocketAddr, Arc<AtomicBool>)> {
    let ns = ns.to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    thread::spawn(move || {
        let setup = (|| -> Result<TcpListener> {
            enter(&ns)?;
            pin_to_cpu(0);
            bind_when_free(ip, port)
        })();
        let listener = match setup {
            Ok(l) => l,
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        let _ = tx.send(Ok(listener.local_addr().expect("bound")));
        listener.set_nonblocking(true).expect("nonblocking");
        while !stop2.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((conn, _)) => {
                    conn.set_nonblocking(false).expect("blocking");
                    serve(conn)
                }
                Err(_) => thread::sleep(Duration::from_micros(50)),
            }
        }
    });
    let addr = rx.recv().context("server thread")??;
    Ok((addr, stop))
}

fn echo_forever(mut conn: TcpStream) {
    let _ = conn.set_nodelay(true);
    let mut b = [0u8; 1];
    while matches!(conn.read(&mut b), Ok(1)) {
        if conn.write_all(&b).is_err() {
            break;
        }
    }
}

fn echo_once(mut conn: TcpStream) {
    let _ = conn.set_nodelay(true);
    let mut b = [0u8; 1];
    if matches!(conn.read(&mut b), Ok(1)) {
        let _ = conn.write_all(&b);
    }
}

/// Run `client` on a thread in `ns`, pinned to CPU 0 (with the server).
fn client<T: Send + 'static>(ns: &str, f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    let ns = ns.to_string();
    thread::spawn(move || {
        enter(&ns)?;
        pin_to_cpu(0);
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("client thread panicked"))?
}

/// Where a measured server listens and where its client connects: the
/// same address, or (`via`) a Service address kube-proxy's DNAT (or the
/// socket load balancer) turns into the server's (then the server listens
/// on a fixed port the rules name).
#[derive(Clone, Copy, Debug)]
pub struct Target {
    /// IPv4 or IPv6: the server binds it, the client connects to it.
    pub server_ip: IpAddr,
    pub server_port: u16,
    pub via: Option<SocketAddr>,
}

impl Target {
    pub fn direct(server_ip: impl Into<IpAddr>) -> Self {
        Self { server_ip: server_ip.into(), server_port: 0, via: None }
    }
}

/// A measured server: a thread in its namespace, pinned to CPU 0, until
/// dropped.
pub struct Server {
    /// Where the client connects (the Service address with `via`).
    pub connect_to: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve_target(server_ns: &str, t: Target, serve: fn(TcpStream)) -> Result<Server> {
    let (addr, stop) = server(server_ns, t.server_ip, t.server_port, serve)?;
    Ok(Server { connect_to: t.via.unwrap_or(addr), stop })
}

/// The server of `tcp_rr`: echoes every byte on each connection.
pub fn rr_server(server_ns: &str, target: Target) -> Result<Server> {
    serve_target(server_ns, target, echo_forever)
}

/// The server of `tcp_crr`: one byte back per connection.
pub fn crr_server(server_ns: &str, target: Target) -> Result<Server> {
    serve_target(server_ns, target, echo_once)
}

/// TCP request/response of one byte over one connection, for `duration`.
pub fn tcp_rr(server_ns: &str, client_ns: &str, server_ip: Ipv4Addr, duration: Duration) -> Result<Latency> {
    tcp_rr_to(server_ns, client_ns, Target::direct(server_ip), duration)
}

/// `tcp_rr` to a `Target`.
pub fn tcp_rr_to(server_ns: &str, client_ns: &str, target: Target, duration: Duration) -> Result<Latency> {
    let server = rr_server(server_ns, target)?;
    let addr = server.connect_to;
    client(client_ns, move || rr_client(addr, duration))
}

/// The client of `tcp_rr`, on the calling thread (already in its
/// namespace and on its CPU).
pub fn rr_client(addr: SocketAddr, duration: Duration) -> Result<Latency> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).with_context(|| format!("connect {addr}"))?;
    s.set_nodelay(true)?;
    let mut samples = Vec::with_capacity(200_000);
    let start = Instant::now();
    let mut b = [1u8; 1];
    while start.elapsed() < duration {
        let t = Instant::now();
        s.write_all(&b)?;
        s.read_exact(&mut b)?;
        samples.push(t.elapsed());
    }
    Ok(summarize(samples, start.elapsed()))
}

/// TCP connect + one-byte request/response + close, repeated for `duration`.
pub fn tcp_crr(server_ns: &str, client_ns: &str, server_ip: Ipv4Addr, duration: Duration) -> Result<Latency> {
    tcp_crr_to(server_ns, client_ns, Target::direct(server_ip), duration)
}

/// `tcp_crr` to a `Target`.
pub fn tcp_crr_to(server_ns: &str, client_ns: &str, target: Target, duration: Duration) -> Result<Latency> {
    let server = crr_server(server_ns, target)?;
    let addr = server.connect_to;
    client(client_ns, move || crr_client(addr, duration))
}

/// The client of `tcp_crr`, on the calling thread.
pub fn crr_client(addr: SocketAddr, duration: Duration) -> Result<Latency> {
    let mut samples = Vec::with_capacity(50_000);
    let start = Instant::now();
    let mut b = [1u8; 1];
    while start.elapsed() < duration {
        let t = Instant::now();
        let mut s =
            TcpStream::connect_timeout(&addr, Duration::from_secs(2)).with_context(|| format!("connect {addr}"))?;
        s.set_nodelay(true)?;
        s.write_all(&b)?;
        s.read_exact(&mut b)?;
        // Close with RST (linger 0): no TIME_WAIT pile-up across many
        // thousand connections from one port range.
        let linger = libc::linger { l_onoff: 1, l_linger: 0 };
        // SAFETY: setsockopt on a live socket with a correctly sized value.
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                &linger as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::linger>() as u32,
            );
        }
        drop(s);
        samples.push(t.elapsed());
    }
    Ok(summarize(samples, start.elapsed()))
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Throughput {
    pub gbit_per_s: f64,
    /// Sender + receiver CPU (percent of one CPU) per Gbit/s.
    pub cpu_pct_per_gbit: f64,
}

/// Single-stream TCP throughput with iperf3 (cubic, both ends on CPU 0... and 1).
pub fn throughput(server_ns: &str, client_ns: &str, server_ip: IpAddr, secs: u32) -> Result<Throughput> {
    let port = 5201 + (std::process::id() % 1000) as u16;
    let port_arg = port.to_string();
    let mut server = crate::lab::ns_cmd(server_ns, &["iperf3", "-s", "-1", "-p", &port_arg, "-A", "1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("iperf3 server (Debian package iperf3)")?;
    crate::lab::wait_listening(server_ns, "tcp", port)?;
    let (ip_arg, secs_arg) = (server_ip.to_string(), secs.to_string());
    let out = run(&mut crate::lab::ns_cmd(
        client_ns,
        &["iperf3", "-c", &ip_arg, "-p", &port_arg, "-t", &secs_arg, "-C", "cubic", "-A", "0", "-J"],
    ));
    let _ = server.kill();
    let _ = server.wait();
    let v: serde_json::Value = serde_json::from_str(&out?)?;
    let bps = v["end"]["sum_received"]["bits_per_second"].as_f64().context("iperf3 JSON")?;
    let cpu = v["end"]["cpu_utilization_percent"]["host_total"].as_f64().unwrap_or(0.0)
        + v["end"]["cpu_utilization_percent"]["remote_total"].as_f64().unwrap_or(0.0);
    let gbit = bps / 1e9;
    if gbit <= 0.0 {
        bail!("iperf3 measured nothing");
    }
    Ok(Throughput { gbit_per_s: gbit, cpu_pct_per_gbit: cpu / gbit })
}

/// Single-key lookups in a node's pinned socket load balancer maps
/// (`SERVICES`, `BACKENDS`): one `bpf(BPF_MAP_LOOKUP_ELEM)` per look, so a
/// change can be polled for tightly with 10,000 Services in the map (aya's
/// iteration reads every key: milliseconds per look).
pub struct ServiceProbe {
    services: OwnedFd,
    backends: OwnedFd,
}

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;

/// The `bpf_attr` prefix of `BPF_MAP_LOOKUP_ELEM`.
#[repr(C)]
struct LookupAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// `map[key]`, `None` when absent. `K` and `V` must be the map's own
/// key and value types (plain `#[repr(C)]` data of the map's sizes).
fn lookup<K, V: Default>(map: &OwnedFd, key: &K) -> io::Result<Option<V>> {
    let mut value = V::default();
    let mut attr = LookupAttr {
        map_fd: map.as_raw_fd() as u32,
        _pad: 0,
        key: key as *const K as u64,
        value: &mut value as *mut V as u64,
        flags: 0,
    };
    // SAFETY: `attr` is the command's bpf_attr prefix; key and value point
    // at live buffers of the map's key and value sizes.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_ELEM,
            &mut attr as *mut LookupAttr,
            std::mem::size_of::<LookupAttr>(),
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ENOENT) { Ok(None) } else { Err(e) };
    }
    Ok(Some(value))
}

impl ServiceProbe {
    pub fn open(pins: &PinDir) -> Result<Self> {
        let open = |name: &str| {
            let path = pins.map(name);
            bpf_sys::obj_get(&path).with_context(|| format!("open pinned map {}", path.display()))
        };
        Ok(Self { services: open(names::SERVICES)?, backends: open(names::BACKENDS)? })
    }

    /// The `SERVICES` entry of a TCP frontend.
    pub fn frontend(&self, ip: Ipv4Addr, port: u16) -> Result<Option<ServiceValue>> {
        let key = ServiceKey { vip_be: u32::from_ne_bytes(ip.octets()), port_be: port.to_be(), protocol: 6, scope: 0 };
        lookup(&self.services, &key).context("look up SERVICES")
    }

    /// The backends of a frontend's set, as the program reads them.
    pub fn backends(&self, v: &ServiceValue) -> Result<Vec<SocketAddrV4>> {
        (0..v.count)
            .map(|slot| {
                let b: Backend = lookup(&self.backends, &BackendSlot { set: v.backend_set, slot })
                    .context("look up BACKENDS")?
                    .with_context(|| format!("slot {slot} of set {} missing", v.backend_set))?;
                Ok(SocketAddrV4::new(Ipv4Addr::from(b.ip_be.to_ne_bytes()), u16::from_be(b.port_be)))
            })
            .collect()
    }
}

/// Connects a node's socket load balancer has translated so far
/// (`SOCK_LB_STATS`): proof a measured path went through it.
pub fn sock_lb_connected(pins: &PinDir) -> Result<u64> {
    Ok(service_maps::sock_lb_counters(pins)?
        .into_iter()
        .find(|(c, _)| *c == SockLbCounter::Connected)
        .map_or(0, |(_, n)| n))
}

/// Packets a node's programs handed to its stack as the reply of a flow
/// the stack forwarded (`FORWARDS[stack_flow_reply]`): none of a measured
/// pod-to-pod flow's packets may be among them.
pub fn stack_flow_replies(pins: &PinDir) -> Result<u64> {
    Ok(pinned_maps::forwards(pins)?.into_iter().find(|(p, _)| *p == ForwardPath::StackFlowReply).map_or(0, |(_, n)| n))
}

/// Packets a node's programs sent towards a tunneled peer
/// (`FORWARDS[pod_to_tunnel]`), whether encapsulated by the programs
/// themselves or by the VXLAN device.
pub fn tunneled(pins: &PinDir) -> Result<u64> {
    Ok(pinned_maps::forwards(pins)?.into_iter().find(|(p, _)| *p == ForwardPath::PodToTunnel).map_or(0, |(_, n)| n))
}

/// p50 and p99 of durations, in milliseconds.
pub fn percentiles_ms(mut d: Vec<Duration>) -> (f64, f64) {
    d.sort();
    if d.is_empty() {
        return (0.0, 0.0);
    }
    let pick = |q: f64| d[((d.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1e3;
    (pick(0.5), pick(0.99))
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        let (p50, p99) = percentiles_ms((1..=100).map(Duration::from_millis).collect());
        assert_eq!((p50.round(), p99.round()), (51.0, 99.0));
        let l = summarize((1..=10).map(Duration::from_micros).collect(), Duration::from_secs(1));
        assert_eq!(l.samples, 10);
        assert_eq!(l.per_sec, 10.0);
    }

    #[test]
    fn merged_slices_give_the_rate_over_their_summed_time() {
        let slice = |samples: usize, secs: f64, p50_us: f64| Latency {
            per_sec: samples as f64 / secs,
            p50_us,
            p99_us: 2.0 * p50_us,
            samples,
        };
        // 100 in 1 s and 300 in 0.5 s: 400 in 1.5 s, not the mean of 100 and 600.
        let m = Latency::merge(&[slice(100, 1.0, 10.0), slice(300, 0.5, 20.0)]);
        assert_eq!(m.samples, 400);
        assert!((m.per_sec - 400.0 / 1.5).abs() < 1e-9, "{}", m.per_sec);
        assert!((m.p50_us - 17.5).abs() < 1e-9 && (m.p99_us - 35.0).abs() < 1e-9, "{m:?}");
        assert_eq!(Latency::merge(&[]).per_sec, 0.0);
    }
}
