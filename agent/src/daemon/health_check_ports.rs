//! The `healthCheckNodePort` listeners (`services::health_check` decides
//! what they say): one TCP listener on `[::]:<port>` (IPv4 and IPv6) per
//! Service with `externalTrafficPolicy: Local`, as kube-proxy listens on
//! every node address. The Services loop hands over the wanted table each pass;
//! listeners for ports no longer wanted are closed, new ones opened. A
//! port that cannot be bound (a host process holds it) is logged and
//! retried at the next pass.
use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use http_body_util::Full;
use hyper::{body::Bytes, service::service_fn, Response};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::services::health_check::{self, HealthCheck};

/// What every listener answers from: the checks by port, and whether the
/// Services loop is healthy.
#[derive(Default)]
struct Table {
    checks: BTreeMap<u16, HealthCheck>,
    proxy_healthy: bool,
}

#[derive(Default)]
pub struct HealthCheckPorts {
    table: Arc<Mutex<Table>>,
    listeners: BTreeMap<u16, JoinHandle<()>>,
}

const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECTION_LIFETIME: Duration = Duration::from_secs(10);

impl HealthCheckPorts {
    /// Serve `wanted` from now on. Returns the ports that could not be
    /// bound (retried at the next call).
    pub fn update(&mut self, wanted: BTreeMap<u16, HealthCheck>, proxy_healthy: bool) -> Vec<u16> {
        let ports: Vec<u16> = wanted.keys().copied().collect();
        *self.table.lock().expect("health check table") = Table { checks: wanted, proxy_healthy };
        self.listeners.retain(|port, task| {
            let keep = ports.contains(port) && !task.is_finished();
            if !keep {
                task.abort();
                info!(port, "healthCheckNodePort closed");
            }
            keep
        });
        let mut failed = Vec::new();
        for port in ports {
            if self.listeners.contains_key(&port) {
                continue;
            }
            match bind(port) {
                Ok(listener) => {
                    info!(port, "healthCheckNodePort served");
                    self.listeners.insert(port, tokio::spawn(serve(listener, port, self.table.clone())));
                }
                Err(e) => {
                    warn!(port, error = %e, "healthCheckNodePort not served; retrying");
                    failed.push(port);
                }
            }
        }
        failed
    }
}

/// Every node address of both families: one dual-stack socket on `[::]`
/// (IPv4 arrives mapped), so a load balancer probes an IPv6-only or
/// dual-stack node over IPv6 as over IPv4. A kernel without IPv6
/// (`ipv6.disable=1`: no AF_INET6 sockets) gets `0.0.0.0` as before.
fn bind(port: u16) -> std::io::Result<tokio::net::TcpListener> {
    let std = match bind_dual_stack(port) {
        Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
            std::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))?
        }
        other => other?,
    };
    std.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(std)
}

fn bind_dual_stack(port: u16) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP))?;
    // Not IPv6 alone whatever net.ipv6.bindv6only says: IPv4 probes too.
    s.set_only_v6(false)?;
    // As std's bind does: a port closed a moment ago binds again.
    s.set_reuse_address(true)?;
    s.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)).into())?;
    s.listen(1024)?;
    Ok(s.into())
}

async fn serve(listener: tokio::net::TcpListener, port: u16, table: Arc<Mutex<Table>>) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                warn!(port, error = %e, "healthCheckNodePort accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let table = table.clone();
        tokio::spawn(async move {
            let service = service_fn(move |_req| {
                let table = table.clone();
                async move { Ok::<_, Infallible>(respond(&table, port)) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(io, service);
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, conn).await;
        });
    }
}

fn respond(table: &Mutex<Table>, port: u16) -> Response<Full<Bytes>> {
    let answer = {
        let t = table.lock().expect("health check table");
        t.checks.get(&port).map(|c| health_check::response(c, t.proxy_healthy))
    };
    // A port closed between accept and request: kube-proxy answers
    // nothing; an empty 503 says the same to a prober.
    let (status, body) = answer.unwrap_or((503, String::new()));
    let mut r = Response::builder().status(status);
    for (k, v) in health_check::HEADERS {
        r = r.header(k, v);
    }
    r.body(Full::new(Bytes::from(body))).expect("static headers")
}
