//! A test Kubernetes API server for Node objects: no real API server runs in
//! these tests. It speaks the parts of the real protocol a watcher uses —
//! HTTP/1.1 with keep-alive, JSON, `resourceVersion`, a list, a chunked watch
//! stream of ADDED / MODIFIED / DELETED / BOOKMARK events — and lets a test
//! make it misbehave the ways real ones do: expire history (410 Gone, which
//! forces a relist) and drop every open connection.
use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Condvar, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use serde_json::{json, Value};

#[derive(Default)]
struct Inner {
    rv: u64,
    nodes: BTreeMap<String, Value>,
    /// Every change: (resourceVersion, event type, object).
    history: Vec<(u64, &'static str, Value)>,
    /// A watch from an older resourceVersion than this gets 410 Gone.
    oldest_watchable: u64,
    /// Bumped to cut every open connection.
    drop_generation: u64,
    lists: u64,
    watches: u64,
    /// Every request: (verb as RBAC names it, resource path).
    requests: Vec<(String, String)>,
    gone_sent: u64,
    bookmarks_sent: u64,
}

pub struct ApiServer {
    pub addr: SocketAddr,
    shared: Arc<(Mutex<Inner>, Condvar)>,
    stop: Arc<AtomicBool>,
}

pub fn node_object(name: &str, ip: &str, pod_cidr: Option<&str>, rv: u64) -> Value {
    let mut spec = json!({});
    if let Some(c) = pod_cidr {
        spec = json!({"podCIDR": c, "podCIDRs": [c]});
    }
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "uid": format!("uid-{name}"), "resourceVersion": rv.to_string()},
        "spec": spec,
        "status": {"addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}]},
    })
}

impl ApiServer {
    /// Listen on `addr`; with `netns`, inside that network namespace (the
    /// lab's LAN, where the nodes can reach it).
    pub fn start(addr: &str, netns: Option<&str>) -> Result<Self> {
        let addr: SocketAddr = addr.parse()?;
        let listener = match netns {
            None => TcpListener::bind(addr)?,
            Some(ns) => {
                let path = Path::new("/run/netns").join(ns);
                sluice_node::net::netns::run_in(&path, move || Ok(TcpListener::bind(addr)?))?
            }
        };
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let shared: Arc<(Mutex<Inner>, Condvar)> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (s2, stop2) = (shared.clone(), stop.clone());
        thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let s3 = s2.clone();
                        let stop3 = stop2.clone();
                        thread::spawn(move || {
                            let _ = serve(conn, &s3, &stop3);
                        });
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Ok(Self { addr, shared, stop })
    }

    /// A kubeconfig pointing at this server.
    pub fn write_kubeconfig(&self, path: &Path) -> Result<()> {
        let cfg = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: http://{}\n\
             users:\n- name: lab\n  user:\n    token: lab-token\ncontexts:\n- name: lab\n  context:\n    cluster: lab\n    user: lab\n\
             current-context: lab\n",
            self.addr
        );
        std::fs::write(path, cfg).context("write kubeconfig")
    }

    fn change(&self, f: impl FnOnce(&mut Inner)) {
        let (lock, cond) = &*self.shared;
        f(&mut lock.lock().unwrap());
        cond.notify_all();
    }

    /// Create or update a Node (ADDED or MODIFIED to watchers).
    pub fn upsert_node(&self, name: &str, ip: &str, pod_cidr: Option<&str>) {
        self.change(|s| {
            s.rv += 1;
            let obj = node_object(name, ip, pod_cidr, s.rv);
            let kind = if s.nodes.contains_key(name) { "MODIFIED" } else { "ADDED" };
            s.nodes.insert(name.to_string(), obj.clone());
            s.history.push((s.rv, kind, obj));
        });
    }

    pub fn delete_node(&self, name: &str) {
        self.change(|s| {
            if let Some(mut obj) = s.nodes.remove(name) {
                s.rv += 1;
                obj["metadata"]["resourceVersion"] = json!(s.rv.to_string());
                s.history.push((s.rv, "DELETED", obj));
            }
        });
    }

    /// Forget history (as etcd compaction does) and cut open watches: every
    /// watcher's next watch gets 410 Gone and must relist.
    pub fn expire_history(&self) {
        self.change(|s| {
            s.oldest_watchable = s.rv + 1;
            s.drop_generation += 1;
        });
    }

    /// Cut every open connection, as a restarting API server or a flaky
    /// network would.
    pub fn drop_connections(&self) {
        self.change(|s| s.drop_generation += 1);
    }

    /// Every request so far as (RBAC verb, path): what a ClusterRole must allow.
    pub fn requests(&self) -> Vec<(String, String)> {
        self.shared.0.lock().unwrap().requests.clone()
    }

    /// (lists, watches, 410s sent, bookmarks sent) so far.
    pub fn counters(&self) -> (u64, u64, u64, u64) {
        let s = self.shared.0.lock().unwrap();
        (s.lists, s.watches, s.gone_sent, s.bookmarks_sent)
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.drop_connections();
    }
}

struct Request {
    path: String,
    query: BTreeMap<String, String>,
}

fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let target = line.split_whitespace().nth(1)?.to_string();
    let mut content_length = 0usize;
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
            content_length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; content_length];
    reader.read_exact(&mut body).ok()?;
    let (path, q) = target.split_once('?').unwrap_or((&target, ""));
    let query = q.split('&').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect();
    Some(Request { path: path.to_string(), query })
}

fn respond_json(conn: &mut TcpStream, status: &str, body: &Value) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(body)?;
    write!(conn, "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", bytes.len())?;
    conn.write_all(&bytes)?;
    conn.flush()
}

fn chunk(conn: &mut TcpStream, event: &Value) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(event)?;
    line.push(b'\n');
    write!(conn, "{:x}\r\n", line.len())?;
    conn.write_all(&line)?;
    conn.write_all(b"\r\n")?;
    conn.flush()
}

fn serve(conn: TcpStream, shared: &Arc<(Mutex<Inner>, Condvar)>, stop: &AtomicBool) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut conn = conn;
    let generation = shared.0.lock().unwrap().drop_generation;
    while let Some(req) = read_request(&mut reader) {
        if shared.0.lock().unwrap().drop_generation != generation || stop.load(Ordering::Relaxed) {
            break;
        }
        let is_watch = req.query.get("watch").map(String::as_str) == Some("true");
        let verb = if is_watch {
            "watch"
        } else if req.path.matches('/').count() > 3 {
            "get"
        } else {
            "list"
        };
        shared.0.lock().unwrap().requests.push((verb.to_string(), req.path.clone()));
        if req.path != "/api/v1/nodes" {
            respond_json(
                &mut conn,
                "404 Not Found",
                &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404}),
            )?;
            continue;
        }
        if req.query.get("watch").map(String::as_str) == Some("true") {
            if !watch(&mut conn, shared, stop, &req, generation)? {
                break; // connection cut on purpose
            }
        } else {
            let body = {
                let mut s = shared.0.lock().unwrap();
                s.lists += 1;
                json!({
                    "apiVersion": "v1",
                    "kind": "NodeList",
                    "metadata": {"resourceVersion": s.rv.to_string()},
                    "items": s.nodes.values().cloned().collect::<Vec<_>>(),
                })
            };
            respond_json(&mut conn, "200 OK", &body)?;
        }
    }
    let _ = conn.shutdown(Shutdown::Both);
    Ok(())
}

/// Stream a watch. Returns false if the connection must be cut.
fn watch(
    conn: &mut TcpStream,
    shared: &Arc<(Mutex<Inner>, Condvar)>,
    stop: &AtomicBool,
    req: &Request,
    generation: u64,
) -> std::io::Result<bool> {
    let (lock, cond) = &**shared;
    let from: u64 = req.query.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
    let bookmarks = req.query.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let timeout = Duration::from_secs(req.query.get("timeoutSeconds").and_then(|v| v.parse().ok()).unwrap_or(300));
    write!(conn, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")?;
    conn.flush()?;
    let started = Instant::now();
    let mut sent = from;
    let mut last_bookmark = Instant::now();
    {
        let mut s = lock.lock().unwrap();
        s.watches += 1;
        if from < s.oldest_watchable {
            s.gone_sent += 1;
            let msg = format!("too old resource version: {from} ({})", s.oldest_watchable);
            drop(s);
            chunk(
                conn,
                &json!({"type": "ERROR", "object": {
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": msg, "reason": "Expired", "code": 410}}),
            )?;
            conn.write_all(b"0\r\n\r\n")?;
            return Ok(true);
        }
    }
    loop {
        let (events, cut, rv) = {
            let s = lock.lock().unwrap();
            let s = if s.history.iter().any(|(rv, _, _)| *rv > sent) || s.drop_generation != generation {
                s
            } else {
                cond.wait_timeout(s, Duration::from_millis(100)).unwrap().0
            };
            let events: Vec<Value> = s
                .history
                .iter()
                .filter(|(rv, _, _)| *rv > sent)
                .map(|(_, kind, obj)| json!({"type": kind, "object": obj}))
                .collect();
            (events, s.drop_generation != generation || stop.load(Ordering::Relaxed), s.rv)
        };
        if cut {
            return Ok(false);
        }
        for e in &events {
            chunk(conn, e)?;
        }
        if !events.is_empty() {
            sent = rv;
        }
        if bookmarks && last_bookmark.elapsed() > Duration::from_secs(1) {
            chunk(
                conn,
                &json!({"type": "BOOKMARK", "object": {
                "kind": "Node", "apiVersion": "v1", "metadata": {"resourceVersion": rv.to_string()}}}),
            )?;
            sent = sent.max(rv);
            lock.lock().unwrap().bookmarks_sent += 1;
            last_bookmark = Instant::now();
        }
        if started.elapsed() > timeout {
            conn.write_all(b"0\r\n\r\n")?;
            return Ok(true);
        }
    }
}
