//! The health endpoint's TCP responder: what `connectivity-test` reaches
//! through the pod datapath.
use std::{net::TcpListener, path::Path};

use anyhow::{Context, Result};
use tokio::io::AsyncWriteExt;
use tracing::warn;

use sluice_node::net::netns;

use super::HEALTH_PORT;

/// Answer TCP on `HEALTH_PORT` inside the endpoint with "sluice-health <node>".
pub fn serve(netns_path: &Path, node_name: &str) -> Result<()> {
    let listener = netns::run_in(netns_path, || {
        let l = TcpListener::bind(("0.0.0.0", HEALTH_PORT)).context("bind health port")?;
        l.set_nonblocking(true)?;
        Ok(l)
    })?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let banner = format!("sluice-health {node_name}\n");
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
    Ok(())
}
