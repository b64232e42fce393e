//! The health endpoint's TCP responder: what `connectivity-test` reaches
//! through the pod datapath, on each family the node has.
use std::{
    net::{Ipv6Addr, SocketAddr, TcpListener},
    path::Path,
};

use anyhow::{Context, Result};
use tokio::io::AsyncWriteExt;
use tracing::warn;

use sluice_node::net::netns;

use super::HEALTH_PORT;

/// Answer TCP on `HEALTH_PORT` inside the endpoint with "sluice-health
/// <node>", over IPv4 and, with `ipv6`, over IPv6 (a second, IPv6-only
/// socket).
pub fn serve(netns_path: &Path, node_name: &str, ipv6: bool) -> Result<()> {
    let (v4, v6) = netns::run_in(netns_path, move || {
        let v4 = TcpListener::bind(("0.0.0.0", HEALTH_PORT)).context("bind health port")?;
        let v6 = if ipv6 { Some(bind_ipv6_only().context("bind health port over IPv6")?) } else { None };
        Ok((v4, v6))
    })?;
    let banner = format!("sluice-health {node_name}\n");
    for listener in std::iter::once(v4).chain(v6) {
        listener.set_nonblocking(true)?;
        answer(tokio::net::TcpListener::from_std(listener)?, banner.clone());
    }
    Ok(())
}

/// `[::]:HEALTH_PORT` for IPv6 alone: beside the IPv4 socket, which holds
/// the port for IPv4.
fn bind_ipv6_only() -> Result<TcpListener> {
    let s = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    s.set_only_v6(true)?;
    s.set_reuse_address(true)?;
    s.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, HEALTH_PORT)).into())?;
    s.listen(128)?;
    Ok(s.into())
}

fn answer(listener: tokio::net::TcpListener, banner: String) {
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((mut conn, _)) => {
                    let b = banner.clone();
                    tokio::spawn(async move {
                        let _ = conn.write_all(b.as_bytes()).await;
                    });
                }
                Err(e) => {
                    warn!(error = %e, "health accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    });
}
