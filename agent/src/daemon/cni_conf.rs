//! The CNI network configuration the agent writes for the runtime.
use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use ipnetwork::Ipv4Network;
use serde_json::json;
use sluice_node::{paths::PLUGIN_TYPE, pod::device::PodDevice};

pub const CONFLIST_NAME: &str = "10-sluice.conflist";
pub const NETWORK_NAME: &str = "sluice";

/// The conflist for this node. `mtu` is the pods' MTU: the uplink's, less the
/// VXLAN overhead when a peer is or may become tunneled (`--tunnel`);
/// `device` the pair new pods get (`--device`). `pod_cidr` is None on an
/// IPv6-only node: no `podCIDR` then (`set_pod_cidr6` gives the one).
pub fn render(
    pod_cidr: Option<Ipv4Network>,
    mtu: u32,
    device: PodDevice,
    pin_dir: &Path,
    data_dir: &Path,
) -> serde_json::Value {
    let mut conf = json!({
        "cniVersion": "1.0.0",
        "name": NETWORK_NAME,
        "plugins": [{
            "type": PLUGIN_TYPE,
            "mtu": mtu,
            "device": device,
            "pinDir": pin_dir,
            "dataDir": data_dir,
        }]
    });
    if let Some(pod_cidr) = pod_cidr {
        conf["plugins"][0]["podCIDR"] = json!(pod_cidr.to_string());
    }
    conf
}

/// A dual-stack node's IPv6 pod CIDR for sluice's plugin (`podCIDR6`):
/// every pod then gets an address of each family.
pub fn set_pod_cidr6(conflist: &mut serde_json::Value, pod_cidr6: ipnetwork::Ipv6Network) {
    if let Some(sluice) = conflist["plugins"].as_array_mut().and_then(|p| p.first_mut()) {
        sluice["podCIDR6"] = json!(pod_cidr6.to_string());
    }
}

/// `--host-ports`: the reference `portmap` plugin after sluice, taking the
/// pod's hostPorts (`runtimeConfig.portMappings`) and DNATing them to the
/// pod in the node's stack; `snat` so a hostPort reached from the node itself
/// answers too.
pub fn chain_portmap(conflist: &mut serde_json::Value) {
    if let Some(plugins) = conflist["plugins"].as_array_mut() {
        plugins.push(json!({"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}));
    }
}

/// Who serves pods' hostPorts on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostPortsBy {
    /// Nobody (`--host-ports` off, Services left to kube-proxy).
    Nobody,
    /// The reference portmap plugin, chained after sluice (`--host-ports`).
    Portmap,
    /// sluice's socket load balancer (`--kube-proxy-replacement=true`):
    /// portmap's iptables rules would only duplicate it.
    SocketLb,
}

/// `ipv4_pods`: the socket load balancer's hostPorts are IPv4's alone
/// (`services::host_ports`), so on an IPv6-only node, Services in eBPF or
/// not, `--host-ports` still chains portmap (its ip6tables rules).
pub fn host_ports_by(host_ports_flag: bool, kube_proxy_replacement: bool, ipv4_pods: bool) -> HostPortsBy {
    match (kube_proxy_replacement && ipv4_pods, host_ports_flag) {
        (true, _) => HostPortsBy::SocketLb,
        (false, true) => HostPortsBy::Portmap,
        (false, false) => HostPortsBy::Nobody,
    }
}

/// Write atomically (temp file, then rename), so a runtime never reads half.
pub fn write(dir: &Path, conflist: &serde_json::Value) -> Result<PathBuf> {
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let path = dir.join(CONFLIST_NAME);
    let tmp = dir.join(format!(".{CONFLIST_NAME}.tmp"));
    let mut f = fs::File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?;
    f.write_all(serde_json::to_string_pretty(conflist)?.as_bytes())?;
    f.sync_all()?;
    fs::rename(&tmp, &path).with_context(|| format!("rename into {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflist_shape() {
        let c = render(
            Some("10.244.1.0/24".parse().unwrap()),
            1400,
            PodDevice::Netkit,
            Path::new("/sys/fs/bpf/s"),
            Path::new("/var/lib/s"),
        );
        assert_eq!(c["plugins"][0]["type"], "sluice");
        assert_eq!(c["plugins"][0]["mtu"], 1400);
        assert_eq!(c["plugins"][0]["device"], "netkit");
        assert_eq!(c["plugins"][0]["podCIDR"], "10.244.1.0/24");
        assert_eq!(c["name"], NETWORK_NAME);
        // IPv6-only: no podCIDR, podCIDR6 alone (what the plugin parses as
        // an IPv6-only node's config).
        let mut c = render(None, 1400, PodDevice::Veth, Path::new("/p"), Path::new("/d"));
        set_pod_cidr6(&mut c, "fd00:244:0:1::/64".parse().unwrap());
        assert!(c["plugins"][0].get("podCIDR").is_none(), "{c}");
        assert_eq!(c["plugins"][0]["podCIDR6"], "fd00:244:0:1::/64");
    }

    #[test]
    fn dual_stack_adds_the_ipv6_pod_cidr() {
        let mut c =
            render(Some("10.244.1.0/24".parse().unwrap()), 1500, PodDevice::Veth, Path::new("/p"), Path::new("/d"));
        assert!(c["plugins"][0].get("podCIDR6").is_none(), "IPv4-only conflists stay as they were");
        set_pod_cidr6(&mut c, "fd00:244:1::/64".parse().unwrap());
        chain_portmap(&mut c);
        assert_eq!(c["plugins"][0]["podCIDR6"], "fd00:244:1::/64");
        assert_eq!(c["plugins"][0]["podCIDR"], "10.244.1.0/24");
    }

    #[test]
    fn portmap_comes_after_sluice() {
        let mut c =
            render(Some("10.244.1.0/24".parse().unwrap()), 1500, PodDevice::Veth, Path::new("/p"), Path::new("/d"));
        chain_portmap(&mut c);
        assert_eq!(c["plugins"][0]["type"], "sluice");
        assert_eq!(c["plugins"][1]["type"], "portmap");
        assert_eq!(c["plugins"][1]["capabilities"]["portMappings"], true);
    }

    #[test]
    fn portmap_is_chained_only_while_the_socket_lb_does_not_serve_host_ports() {
        assert_eq!(host_ports_by(true, false, true), HostPortsBy::Portmap);
        assert_eq!(host_ports_by(false, false, true), HostPortsBy::Nobody);
        assert_eq!(host_ports_by(true, true, true), HostPortsBy::SocketLb);
        assert_eq!(host_ports_by(false, true, true), HostPortsBy::SocketLb);
        // IPv6-only: the socket LB has no IPv6 hostPorts; portmap keeps them.
        assert_eq!(host_ports_by(true, true, false), HostPortsBy::Portmap);
        assert_eq!(host_ports_by(false, true, false), HostPortsBy::Nobody);
        assert_eq!(host_ports_by(true, false, false), HostPortsBy::Portmap);
    }

    #[test]
    fn write_is_whole() {
        let dir = std::env::temp_dir().join(format!("sluice-conf-test-{}", std::process::id()));
        let c = render(Some("10.244.1.0/24".parse().unwrap()), 1500, PodDevice::Veth, Path::new("/p"), Path::new("/d"));
        let path = write(&dir, &c).unwrap();
        let back: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(back, c);
        fs::remove_dir_all(&dir).unwrap();
    }
}
