//! `sluice-agent cleanup`: undo everything sluice did to a node, for
//! uninstalling. Programs are detached by removing their link pins (a pin
//! holds the last reference; a legacy tc filter is removed from its device
//! first), then the health endpoint, pod veths, kernel
//! routes, the netfilter table and chain, pins, the conflist, the plugin
//! binary and IPAM state go. Every step runs; what is
//! already gone counts as done.
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use tracing::info;

use sluice_node::{
    datapath::{
        links,
        loader::ALL_PROGRAMS,
        pins::{link_pin_name, PinDir},
    },
    net::netlink::Netlink,
    paths::PLUGIN_TYPE,
    pod::names,
};

use crate::health_endpoint;
use crate::{
    daemon::{cni_conf, port_ownership},
    reconcile::{kernel_routes, masquerade},
    state_file,
};

pub struct CleanupPlan {
    pub pin_dir: PathBuf,
    pub data_dir: PathBuf,
    pub cni_conf_dir: Option<PathBuf>,
    pub cni_bin_dir: Option<PathBuf>,
    pub health_netns: String,
}

fn remove_file(path: &Path, errors: &mut Vec<String>) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            errors.push(format!("remove {}: {e}", path.display()));
        }
    }
}

pub async fn run(plan: &CleanupPlan) -> Result<()> {
    let mut errors = Vec::new();
    let pins = PinDir::new(&plan.pin_dir);
    let netlink = Netlink::open()?;
    // 1. Detach: every pinned attachment (a tc filter's device found by
    //    the pin's name: the uplink's outlive its pins otherwise).
    let ifnames: Vec<String> =
        netlink.links().await.map(|l| l.into_iter().map(|l| l.name).collect()).unwrap_or_default();
    if let Ok(dir) = std::fs::read_dir(pins.links_dir()) {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let attached = ALL_PROGRAMS
                .iter()
                .find_map(|p| ifnames.iter().find(|i| link_pin_name(p, i) == name).map(|i| (*p, i.as_str())));
            match attached {
                Some((program, ifname)) => {
                    if let Err(e) = links::detach(&e.path(), program, ifname) {
                        errors.push(format!("{e:#}"));
                    }
                }
                None => remove_file(&e.path(), &mut errors),
            }
        }
    }
    // 2. The health endpoint.
    let state = state_file::read(&plan.data_dir).ok();
    let pod_cidr = state.as_ref().and_then(|s| s.pod_cidr.parse().ok());
    let pod_cidr6 = state.as_ref().and_then(|s| s.pod_cidr6.as_deref()).and_then(|c| c.parse().ok());
    // The namespace the agent says it made, else the one named by the flag.
    let health_netns = state
        .as_ref()
        .and_then(|s| Path::new(&s.health_netns).file_name().map(|n| n.to_string_lossy().into_owned()))
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| plan.health_netns.clone());
    if let Err(e) = health_endpoint::remove(&netlink, &pins, &health_netns, pod_cidr, pod_cidr6).await {
        errors.push(format!("health endpoint: {e:#}"));
    }
    // 3. Pod veths sluice made (their routes and neighbours go with them).
    match netlink.links().await {
        Ok(links) => {
            for l in links.iter().filter(|l| names::is_pod_link(&l.name)) {
                if let Err(e) = netlink.delete_link(&l.name).await {
                    errors.push(format!("{e:#}"));
                }
            }
        }
        Err(e) => errors.push(format!("{e:#}")),
    }
    // The VXLAN device (peers on other networks), and the NAT64 device
    // (`--nat64`; its pool's route goes with it).
    for device in [sluice_node::net::vxlan::DEVICE, crate::daemon::nat64::DEVICE] {
        if let Err(e) = netlink.delete_link(device).await {
            errors.push(format!("{e:#}"));
        }
    }
    // 4. Kernel routes to other nodes' pods (only those with sluice's
    //    protocol number) and sluice's netfilter table and chain.
    match netlink.routes_of_protocol(kernel_routes::ROUTE_PROTOCOL).await {
        Ok(routes) => {
            for r in routes {
                if let Err(e) = netlink.delete_route(&r, kernel_routes::ROUTE_PROTOCOL).await {
                    errors.push(format!("{e:#}"));
                }
            }
        }
        Err(e) => errors.push(format!("{e:#}")),
    }
    errors.extend(masquerade::remove().await);
    // 5. Pins (maps and programs go when nothing else holds them).
    if plan.pin_dir.exists() {
        if let Err(e) = std::fs::remove_dir_all(&plan.pin_dir) {
            errors.push(format!("remove {}: {e}", plan.pin_dir.display()));
        }
    }
    // 6. What the runtime sees: conflist first, so no new pod is sent to us.
    if let Some(dir) = &plan.cni_conf_dir {
        remove_file(&dir.join(cni_conf::CONFLIST_NAME), &mut errors);
    }
    if let Some(dir) = &plan.cni_bin_dir {
        remove_file(&dir.join(PLUGIN_TYPE), &mut errors);
    }
    // 7. State: IPAM leases and the agent's state file.
    let ipam = plan.data_dir.join("ipam");
    if ipam.exists() {
        if let Err(e) = std::fs::remove_dir_all(&ipam) {
            errors.push(format!("remove {}: {e}", ipam.display()));
        }
    }
    remove_file(&state_file::path(&plan.data_dir), &mut errors);
    // 8. The ports sluice added to ip_local_reserved_ports (others' stay).
    if let Err(e) = port_ownership::release(&plan.data_dir) {
        errors.push(format!("reserved ports: {e:#}"));
    }
    for name in [sluice_node::cni_stats::FILE_NAME, sluice_node::cni_stats::LOCK_NAME] {
        remove_file(&plan.data_dir.join(name), &mut errors);
    }
    if errors.is_empty() {
        info!("node cleaned: no sluice programs, pins, interfaces or files left");
        Ok(())
    } else {
        bail!("cleanup incomplete:\n  {}", errors.join("\n  "))
    }
}
