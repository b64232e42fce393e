//! ADD: a veth or netkit pair into the pod, an address from the node's pod CIDR, routes and
//! a static gateway neighbour inside the pod, the endpoint map entry, its
//! NetworkPolicy entries (`policy.rs`), and `from_pod` attached to the host
//! side. Every step registers its undo; a
//! failure anywhere leaves the node as it was.
//!
//! With `podCIDR6` (a dual-stack node) the pod gets an IPv6 address too,
//! allocated right after the IPv4 one (whose release is already
//! registered: an exhausted IPv6 pool gives the IPv4 address back), and
//! its IPv6 plumbing after the IPv4 one's, in the same steps. With
//! `podCIDR6` alone (an IPv6-only node) the IPv4 steps are skipped: the
//! pod gets its IPv6 address, `ENDPOINTS6` entry and default route only.
use std::{
    fs::File,
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd,
};

use anyhow::{anyhow, Context};
use serde_json::{json, Value};
use sluice_node::ipam::{
    allocator::PodCidr,
    store::{Allocation, Exhausted, LeaseStore},
};
use sluice_node::{
    datapath::pins::PinDir,
    net::{netlink::Netlink, netns},
    pod::{device::PodDevice, names as pod_names},
};

use crate::{config::NetConf, env::CniEnv, error::CniError, fault, node_cidr, policy, rollback::Rollback};
use ipnetwork::{Ipv4Network, Ipv6Network};
use sluice_common::policy::PodNameKey;
use sluice_node::datapath::pinned_maps::{node_pod_cidr, node_pod_cidr6, read_node_config};
use sluice_node::datapath::policy_maps::{
    PolicyEndpoints, PolicyEndpoints6, PolicyIdentities, PolicyIdentities6, PolicyPods, PolicyState,
};
use sluice_node::pod::plumbing::{self, POD_GATEWAY, POD_GATEWAY6};
use sluice_node::step_timer;

/// `step` is done: charge its time, then the fault point after it.
fn done(step: &'static str) -> Result<(), CniError> {
    step_timer::mark(step);
    fault::after(step).map_err(plugin)
}

pub async fn add(conf: &NetConf, env: &CniEnv) -> Result<Value, CniError> {
    let mut rb = Rollback::default();
    match add_steps(conf, env, &mut rb).await {
        Ok(v) => {
            rb.commit();
            Ok(v)
        }
        Err(e) => {
            rb.run().await;
            Err(e)
        }
    }
}

fn plugin(e: anyhow::Error) -> CniError {
    CniError::Plugin(e)
}

fn fmt_mac(mac: [u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

async fn add_steps(conf: &NetConf, env: &CniEnv, rb: &mut Rollback) -> Result<Value, CniError> {
    let netns_path = env.netns.as_deref().ok_or_else(|| plugin(anyhow!("CNI_NETNS missing")))?;
    let pins = PinDir::new(&conf.pin_dir);
    plumbing::require_datapath(&pins).map_err(CniError::DatapathNotReady)?;
    // Before anything is allocated: the conflist's pod CIDR is this node's.
    let node_config = read_node_config(&pins).map_err(CniError::DatapathNotReady)?;
    match node_cidr::check4(conf.pod_cidr, node_pod_cidr(&node_config)) {
        Ok(()) => {}
        Err(e @ node_cidr::CidrMismatch::NotRecorded) => return Err(CniError::DatapathNotReady(e.into())),
        Err(e) => return Err(CniError::StalePodCidr(e)),
    }
    if let Some(cidr6) = conf.pod_cidr6 {
        match node_cidr::check6(cidr6, node_pod_cidr6(&node_config)) {
            // IPv6-only: no IPv6 pod CIDR recorded is the agent not there yet.
            Err(e @ node_cidr::CidrMismatch::NotDualStack(_)) if conf.pod_cidr.is_none() => {
                return Err(CniError::DatapathNotReady(e.into()))
            }
            r => r.map_err(CniError::StalePodCidr)?,
        }
    }
    let host = Netlink::open().map_err(plugin)?;
    let ns_file = File::open(netns_path)
        .with_context(|| format!("open pod network namespace {}", netns_path.display()))
        .map_err(plugin)?;
    let pod = netns::netlink_in(netns_path).map_err(plugin)?;
    step_timer::mark("setup");

    // 1. An address (of each family).
    let ip = match conf.pod_cidr {
        Some(cidr) => Some(allocate(cidr, conf, env, rb)?),
        None => None,
    };
    let ip6 = match conf.pod_cidr6 {
        Some(cidr6) => Some(allocate(cidr6, conf, env, rb)?),
        None => None,
    };
    done("ipam")?;

    // 2. The veth pair, starting clean if an earlier ADD left one behind.
    let host_name = pod_names::host_veth(&env.container_id, &env.ifname);
    let peer_tmp = pod_names::temp_peer(&env.container_id, &env.ifname);
    // A repeated ADD: the old pair goes first (taking the pod's end with it).
    host.delete_link(&host_name).await.map_err(plugin)?;
    host.delete_link(&peer_tmp).await.map_err(plugin)?;
    if pod.link_by_name(&env.ifname).await.map_err(plugin)?.is_some() {
        return Err(plugin(anyhow!("interface {} already exists in {}", env.ifname, netns_path.display())));
    }
    {
        let host = host.clone();
        let name = host_name.clone();
        rb.push("delete veth", async move { host.delete_link(&name).await });
    }
    // The pod's end is made in the pod's namespace: no move between
    // namespaces, whose RCU wait was half of an ADD (docs/BENCHMARKS.md).
    let host_link =
        plumbing::create_pair_into(&host, conf.device, &host_name, &peer_tmp, ns_file.as_raw_fd(), conf.mtu)
            .await
            .map_err(plugin)?;
    // netkit's L3 mode has no MAC addresses and no ARP: no neighbours.
    let has_arp = conf.device == PodDevice::Veth;
    done("veth")?;
    fault::after("move").map_err(plugin)?;

    // 3. Inside the pod.
    let gateway_mac = has_arp.then_some(host_link.mac);
    let pod_link =
        plumbing::configure_pod_side(&pod, &peer_tmp, &env.ifname, conf.mtu, ip, gateway_mac).await.map_err(plugin)?;
    if let Some(ip6) = ip6 {
        plumbing::configure_pod_side6(&pod, netns_path, &pod_link, ip6, gateway_mac).await.map_err(plugin)?;
    }
    done("pod-config")?;

    // 4. On the node.
    let pod_mac = has_arp.then_some(pod_link.mac);
    plumbing::configure_host_side(&host, &host_link, ip, pod_mac).await.map_err(plugin)?;
    if let Some(ip6) = ip6 {
        plumbing::configure_host_side6(&host, &host_link, ip6, pod_mac).await.map_err(plugin)?;
    }
    done("host-config")?;

    // 5. The endpoint entry, before the program that checks it is attached.
    if let Some(ip) = ip {
        plumbing::insert_endpoint(&pins, ip, &host_link, pod_link.mac).map_err(|e| {
            if e.chain().any(|c| c.is::<sluice_node::datapath::pinned_maps::MapFull>()) {
                CniError::EndpointsFull(e)
            } else {
                CniError::Plugin(e)
            }
        })?;
        let pins = pins.clone();
        rb.push("remove endpoint", async move { plumbing::remove_endpoint(&pins, ip) });
    }
    if let Some(ip6) = ip6 {
        plumbing::insert_endpoint6(&pins, ip6, &host_link, pod_link.mac).map_err(|e| {
            if e.chain().any(|c| c.is::<sluice_node::datapath::pinned_maps::MapFull>()) {
                CniError::EndpointsFull(e)
            } else {
                CniError::Plugin(e)
            }
        })?;
        let pins = pins.clone();
        rb.push("remove IPv6 endpoint", async move { plumbing::remove_endpoint6(&pins, ip6) });
    }
    done("endpoint")?;

    // 6. NetworkPolicy: the address's entries before its first packet
    // (`policy.rs`).
    policy_step(&pins, env, ip, ip6, rb)?;
    done("policy")?;

    // 7. `from_pod` on the host side's ingress (veth) or `from_pod_netkit`
    // in the pod's transmit path (netkit), and `to_pod` on the host side's
    // egress, pinned to outlive us.
    {
        let (pins, host_name) = (pins.clone(), host_name.clone());
        rb.push("detach pod programs", async move { plumbing::detach_pod_programs(&pins, &host_name) });
    }
    // Charges its own steps (attach-open, attach-from_pod, attach-to_pod).
    plumbing::attach_pod_programs(&pins, conf.device, &host_name).map_err(plugin)?;
    fault::after("attach").map_err(plugin)?;

    Ok(result(conf, env, &host_name, host_link.mac, pod_link.mac, ip, ip6))
}

/// `POLICY_IDENTITIES[ip/32]` and `POLICY_ENDPOINTS[ip]` from the agent's
/// `POLICY_PODS` entry for the pod, or failed closed (see `policy.rs`);
/// on a dual-stack pod `POLICY_IDENTITIES6[ip6/128]` and
/// `POLICY_ENDPOINTS6[ip6]` from the same entry, in the same step: the pod
/// is isolated from its first packet of either family.
fn policy_step(
    pins: &PinDir,
    env: &CniEnv,
    ip: Option<Ipv4Addr>,
    ip6: Option<Ipv6Addr>,
    rb: &mut Rollback,
) -> Result<(), CniError> {
    // A datapath without the policy maps enforces nothing either.
    let Ok(state) = PolicyState::open(pins) else { return Ok(()) };
    if !state.enforcing().map_err(plugin)? {
        return Ok(());
    }
    let Some(pod) = &env.pod else {
        let addrs: Vec<String> = ip.map(|a| a.to_string()).into_iter().chain(ip6.map(|a| a.to_string())).collect();
        eprintln!(
            "sluice-cni: no pod name in CNI_ARGS: not a Kubernetes pod, no NetworkPolicy entry for {}",
            addrs.join(", ")
        );
        return Ok(());
    };
    let pods = PolicyPods::open(pins).map_err(plugin)?;
    // A name too long for a key is never in the map: fail closed at once.
    let found = if PodNameKey::new(&pod.namespace, &pod.name).is_some() {
        policy::wait_for(
            || pods.get(&pod.namespace, &pod.name),
            policy::POD_POLICY_WAIT,
            policy::POD_POLICY_POLL,
            std::thread::sleep,
        )
        .map_err(plugin)?
    } else {
        None
    };
    let entries = policy::entries(found);
    if entries.pending {
        let first: std::net::IpAddr = match (ip, ip6) {
            (Some(ip), _) => ip.into(),
            (None, Some(ip6)) => ip6.into(),
            (None, None) => return Err(plugin(anyhow!("no address to write NetworkPolicy entries for"))),
        };
        eprintln!("{}", policy::pending_message(&pod.to_string(), first, policy::POD_POLICY_WAIT));
    }
    let full = |e: anyhow::Error| {
        if e.chain().any(|c| c.is::<sluice_node::datapath::pinned_maps::MapFull>()) {
            CniError::PolicyMapFull(e)
        } else {
            CniError::Plugin(e)
        }
    };
    if let Some(ip) = ip {
        let prefix = Ipv4Network::new(ip, 32).map_err(|e| plugin(e.into()))?;
        PolicyIdentities::open(pins).and_then(|mut m| m.insert(prefix, entries.identity)).map_err(full)?;
        {
            let pins = pins.clone();
            rb.push("remove policy identity", async move { PolicyIdentities::open(&pins)?.remove(prefix) });
        }
        PolicyEndpoints::open(pins).and_then(|mut m| m.insert(ip, entries.endpoint)).map_err(full)?;
        {
            let pins = pins.clone();
            rb.push("remove policy endpoint", async move { PolicyEndpoints::open(&pins)?.remove(ip) });
        }
    }
    if let Some(ip6) = ip6 {
        let prefix6 = Ipv6Network::new(ip6, 128).map_err(|e| plugin(e.into()))?;
        PolicyIdentities6::open(pins).and_then(|mut m| m.insert(prefix6, entries.identity6)).map_err(full)?;
        {
            let pins = pins.clone();
            rb.push("remove IPv6 policy identity", async move { PolicyIdentities6::open(&pins)?.remove(prefix6) });
        }
        PolicyEndpoints6::open(pins).and_then(|mut m| m.insert(ip6, entries.endpoint)).map_err(full)?;
        {
            let pins = pins.clone();
            rb.push("remove IPv6 policy endpoint", async move { PolicyEndpoints6::open(&pins)?.remove(ip6) });
        }
    }
    Ok(())
}

/// An address from `cidr`'s store (either family), its release registered
/// when it is new. The store's lock is held only here: the second family's
/// allocation takes its own.
fn allocate<C: PodCidr>(cidr: C, conf: &NetConf, env: &CniEnv, rb: &mut Rollback) -> Result<C::Addr, CniError> {
    let store = LeaseStore::lock(&conf.data_dir, cidr).map_err(CniError::Ipam)?;
    let pod = env.pod.as_ref().map(|p| p.to_string());
    match store.allocate_for_pod(&env.container_id, &env.ifname, pod.as_deref()) {
        Ok(Allocation::Existing(ip)) => Ok(ip),
        Ok(Allocation::New(ip)) => {
            let dir = conf.data_dir.clone();
            let step = if C::FAMILY == 6 { "release IPv6 address" } else { "release address" };
            rb.push(step, async move { LeaseStore::lock(&dir, cidr)?.release_ip(ip) });
            Ok(ip)
        }
        Err(e) if e.is::<Exhausted>() => Err(CniError::PoolExhausted(e.to_string())),
        Err(e) => Err(CniError::Ipam(e)),
    }
}

/// Our result, appended to `prevResult`'s when chained after other plugins:
/// one `ips` entry and one default route per family the pod has (IPv4
/// first; an IPv6-only pod's only entry is its IPv6 one). Pure.
fn result(
    conf: &NetConf,
    env: &CniEnv,
    host_name: &str,
    host_mac: [u8; 6],
    pod_mac: [u8; 6],
    ip: Option<Ipv4Addr>,
    ip6: Option<Ipv6Addr>,
) -> Value {
    let prev = conf.prev_result.clone().unwrap_or_else(|| json!({}));
    let list = |key: &str| prev[key].as_array().cloned().unwrap_or_default();
    let mut interfaces = list("interfaces");
    let pod_if_index = interfaces.len() + 1;
    interfaces.push(json!({"name": host_name, "mac": fmt_mac(host_mac)}));
    interfaces.push(json!({"name": env.ifname, "mac": fmt_mac(pod_mac), "sandbox": env.netns}));
    let mut ips = list("ips");
    let mut routes = list("routes");
    if let Some(ip) = ip {
        let mut ip_entry = json!({
            "address": format!("{ip}/32"),
            "gateway": POD_GATEWAY.to_string(),
            "interface": pod_if_index,
        });
        if conf.cni_version.starts_with("0.") {
            ip_entry["version"] = json!("4");
        }
        ips.push(ip_entry);
        routes.push(json!({"dst": "0.0.0.0/0", "gw": POD_GATEWAY.to_string()}));
    }
    if let Some(ip6) = ip6 {
        let mut ip6_entry = json!({
            "address": format!("{ip6}/128"),
            "gateway": POD_GATEWAY6.to_string(),
            "interface": pod_if_index,
        });
        if conf.cni_version.starts_with("0.") {
            ip6_entry["version"] = json!("6");
        }
        ips.push(ip6_entry);
        routes.push(json!({"dst": "::/0", "gw": POD_GATEWAY6.to_string()}));
    }
    json!({
        "cniVersion": conf.cni_version,
        "interfaces": interfaces,
        "ips": ips,
        "routes": routes,
        "dns": prev.get("dns").cloned().unwrap_or_else(|| json!({})),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(cni_version: &str) -> NetConf {
        let mut c =
            NetConf::parse(br#"{"cniVersion":"1.0.0","name":"sluice","type":"sluice","podCIDR6":"fd00:244:0:1::/64"}"#)
                .unwrap();
        c.cni_version = cni_version.into();
        c
    }

    fn env() -> CniEnv {
        CniEnv {
            command: crate::env::Command::Add,
            container_id: "c1".into(),
            netns: Some("/run/netns/p".into()),
            ifname: "eth0".into(),
            pod: None,
        }
    }

    /// The result's `ips` and `routes` per family the pod has: IPv6-only
    /// lists its one IPv6 address and `::/0` alone; dual-stack IPv4 first.
    #[test]
    fn result_lists_each_family_the_pod_has() {
        let (ip, ip6) = ("10.244.1.2".parse().ok(), "fd00:244:0:1::2".parse().ok());
        let v6 = result(&conf("1.0.0"), &env(), "h", [1; 6], [2; 6], None, ip6);
        assert_eq!(v6["ips"], json!([{"address": "fd00:244:0:1::2/128", "gateway": "fe80::1", "interface": 1}]));
        assert_eq!(v6["routes"], json!([{"dst": "::/0", "gw": "fe80::1"}]));
        assert_eq!(v6["interfaces"].as_array().unwrap().len(), 2);
        let old = result(&conf("0.4.0"), &env(), "h", [1; 6], [2; 6], None, ip6);
        assert_eq!(old["ips"][0]["version"], "6", "a 0.x result names the family");
        let dual = result(&conf("1.0.0"), &env(), "h", [1; 6], [2; 6], ip, ip6);
        let addrs: Vec<&str> = dual["ips"].as_array().unwrap().iter().map(|i| i["address"].as_str().unwrap()).collect();
        assert_eq!(addrs, ["10.244.1.2/32", "fd00:244:0:1::2/128"]);
        let dsts: Vec<&str> = dual["routes"].as_array().unwrap().iter().map(|r| r["dst"].as_str().unwrap()).collect();
        assert_eq!(dsts, ["0.0.0.0/0", "::/0"]);
    }
}
