//! The labs a round measures besides sluice's own: the bench Service
//! (kube-proxy's rules for the ClusterIP row), the veth pair (L), the bridge
//! pod network joined by host routes (B) or the kernel's VXLAN overlay (K),
//! and a two-node sluice lab with a given `--tunnel` mode.
use std::{net::Ipv4Addr, path::Path, process::Command};

use anyhow::{Context, Result};
use serde_json::{json, Value};
use sluice_tests::{
    kube_proxy,
    lab::{ns_exec, Lab, LabOptions, Pod},
    runtime::{cni_bin_dir, Attachment, ChainRuntime},
    unique,
};

use super::vxlan;
use crate::shell;

/// The benchmark's Service: one ClusterIP port whose only backend is the
/// cross-node server pod, with kube-proxy's rules on both nodes.
pub(super) const BENCH_SERVICE: (&str, u16) = ("10.96.0.200", 80);
pub(super) const BENCH_SERVER_PORT: u16 = 9100;

pub(super) fn install_bench_service(lab: &Lab, backend: &Pod, backend_node: &str) -> Result<()> {
    let service = kube_proxy::Service {
        namespace: "bench".into(),
        name: "rr".into(),
        cluster_ip: BENCH_SERVICE.0.parse()?,
        ports: vec![kube_proxy::ServicePort {
            name: "tcp".into(),
            protocol: kube_proxy::Protocol::Tcp,
            port: BENCH_SERVICE.1,
            target_port: BENCH_SERVER_PORT,
            node_port: None,
        }],
        external_traffic_policy_local: false,
        endpoints: vec![kube_proxy::Endpoint { ip: pod_ip(backend), node: backend_node.into() }],
    };
    let cidr = sluice_tests::lab::CLUSTER_CIDR.parse()?;
    for n in &lab.state.nodes {
        kube_proxy::apply(&n.netns, std::slice::from_ref(&service), &n.name, cidr)?;
    }
    Ok(())
}

/// Two namespaces joined by one veth: the floor for same-node traffic.
pub(super) struct VethPair {
    pub(super) a: String,
    pub(super) b: String,
}

impl VethPair {
    pub(super) fn new() -> Result<Self> {
        let (a, b) = (unique("slbl"), unique("slbl"));
        for n in [&a, &b] {
            shell::output(Command::new("ip").args(["netns", "add", n]))?;
            ns_exec(n, &["ip", "link", "set", "lo", "up"])?;
        }
        shell::output(
            Command::new("ip")
                .args(["link", "add", "eth0", "netns", &a, "type", "veth", "peer", "name", "eth0", "netns", &b]),
        )?;
        for (n, ip) in [(&a, "10.99.0.1/24"), (&b, "10.99.0.2/24")] {
            ns_exec(n, &["ip", "addr", "add", ip, "dev", "eth0"])?;
            ns_exec(n, &["ip", "link", "set", "eth0", "up"])?;
        }
        Ok(Self { a, b })
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        for n in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

/// The bridge pod network (Debian's `bridge` + `host-local`) on a lab
/// without sluice, its nodes joined by host routes (the B rows) or by the
/// kernel's VXLAN overlay (the K row).
pub(super) struct BridgeNet {
    /// Its namespaces (and the overlay's devices in them); torn down after
    /// our Drop has DELeted the pods.
    pub(super) lab: Lab,
    pub(super) rt: Vec<ChainRuntime>,
    pub(super) pods: Vec<(usize, String, Ipv4Addr)>,
}

/// `mtu`: the pods' (and the bridge's); the plugin's default (the
/// bridge's, 1500 here) when None.
fn bridge_conflist(subnet: &str, data: &Path, mtu: Option<u32>) -> Value {
    let mut bridge = json!({
        "type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]], "routes": [{"dst": "0.0.0.0/0"}],
                 "dataDir": data.display().to_string()}});
    if let Some(mtu) = mtu {
        bridge["mtu"] = json!(mtu);
    }
    json!({"cniVersion": "1.0.0", "name": "bench-bridge", "plugins": [bridge]})
}

/// How the bridge network's nodes reach each other's pod CIDRs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Overlay {
    /// `ip route add <other pod CIDR> via <other node>` (Flannel host-gw).
    HostRoutes,
    /// The kernel's VXLAN device with static entries (Flannel vxlan).
    KernelVxlan,
}

impl BridgeNet {
    pub(super) fn new(bins: &Path, pods_on: &[usize], overlay: Overlay) -> Result<Self> {
        let mut opts = LabOptions::new(2, 0, bins.to_path_buf());
        opts.sluice = false;
        let lab = Lab::up(&opts)?;
        let cni_path = cni_bin_dir(
            &lab.state.dir.join("cni-bin"),
            &bins.join("sluice-cni"),
            &["bridge", "host-local", "loopback"],
        )?;
        let pod_mtu = match overlay {
            Overlay::HostRoutes => None,
            Overlay::KernelVxlan => {
                vxlan::lay_out(&lab.state.nodes, lab.state.mtu)?;
                Some(lab.state.mtu - vxlan::OVERHEAD)
            }
        };
        let mut rt = Vec::new();
        for (i, n) in lab.state.nodes.iter().enumerate() {
            ns_exec(&n.netns, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
            if overlay == Overlay::HostRoutes {
                let other = &lab.state.nodes[1 - i];
                ns_exec(&n.netns, &["ip", "route", "add", &other.pod_cidr, "via", &other.ip])?;
            }
            rt.push(ChainRuntime {
                cni_path: cni_path.clone(),
                conflist: bridge_conflist(&n.pod_cidr, &n.dir.join("host-local"), pod_mtu),
                node_netns: n.netns.clone(),
                path: "/usr/sbin:/usr/bin:/sbin:/bin".into(),
            });
        }
        let mut net = Self { lab, rt, pods: Vec::new() };
        for &i in pods_on {
            let ns = unique("slbp");
            shell::output(Command::new("ip").args(["netns", "add", &ns]))?;
            net.pods.push((i, ns.clone(), Ipv4Addr::UNSPECIFIED));
            let result = net.rt[i].add(&net.attachment(&ns))?;
            let ip = result["ips"][0]["address"]
                .as_str()
                .context("bridge ADD result")?
                .split('/')
                .next()
                .unwrap_or_default()
                .parse()?;
            net.pods.last_mut().expect("pushed").2 = ip;
        }
        Ok(net)
    }

    pub(super) fn node_netns(&self, i: usize) -> String {
        self.lab.state.nodes[i].netns.clone()
    }

    pub(super) fn attachment(&self, ns: &str) -> Attachment {
        Attachment {
            container_id: ns.to_string(),
            netns: format!("/run/netns/{ns}"),
            ifname: "eth0".into(),
            capabilities: json!({}),
        }
    }
}

impl Drop for BridgeNet {
    fn drop(&mut self) {
        for (i, ns, _) in &self.pods {
            let _ = self.rt[*i].del(&self.attachment(ns), None);
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

pub(super) fn pod_ip(p: &Pod) -> Ipv4Addr {
    p.ip.parse().expect("lab pod address")
}

/// A two-node sluice lab without pods, agents run with `--tunnel=<mode>`.
pub(super) fn sluice_lab(bins: &Path, tunnel: &str) -> Result<Lab> {
    let mut opts = LabOptions::new(2, 0, bins.to_path_buf());
    opts.extra_agent_args = vec![format!("--tunnel={tunnel}")];
    Lab::up(&opts)
}
