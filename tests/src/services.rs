//! Services in eBPF on a lab: the API server holds Services and
//! EndpointSlices, every agent runs `--kube-proxy-replacement=true` on its
//! node's cgroup, and clients (`svc_client.py`) run as processes of a node
//! so its socket programs see them.
use std::{
    collections::{BTreeMap, BTreeSet},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::{
    apiserver::{EndpointObject, EndpointSliceObject, ServiceObject},
    lab::{Lab, LabOptions, Node},
};

/// The client, run with `python3 -c`.
pub const CLIENT: &str = include_str!("svc_client.py");

/// One attempt's outcome, as the client prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok { peer: String, answer: String, line: String },
    Err(String),
}

impl Outcome {
    pub fn parse(line: &str) -> Option<Self> {
        if let Some(e) = line.strip_prefix("err ") {
            return Some(Outcome::Err(e.trim().to_string()));
        }
        let rest = line.strip_prefix("ok ")?;
        let field = |name: &str| {
            rest.split_whitespace().find_map(|w| w.strip_prefix(name).map(str::to_string)).unwrap_or_default()
        };
        Some(Outcome::Ok { peer: field("peer="), answer: field("answer="), line: line.to_string() })
    }

    pub fn answer(&self) -> Option<&str> {
        match self {
            Outcome::Ok { answer, .. } => Some(answer),
            Outcome::Err(_) => None,
        }
    }
}

/// The pods' UDP server (the cluster model's: `udp-serve`, answering every
/// datagram with the pod's name).
pub const UDP_PORT: u16 = crate::cluster::UDP_PORT;

/// A lab with Services in eBPF and every pod running the cluster model's
/// servers (echo :7777 answers the pod's name, stream :7779) and a UDP
/// server on `UDP_PORT`.
pub fn lab(nodes: usize, pods_per_node: usize) -> Result<Lab> {
    lab_with_agent_args(nodes, pods_per_node, &[])
}

/// `lab`, every agent started with `agent_args` besides.
pub fn lab_with_agent_args(nodes: usize, pods_per_node: usize, agent_args: &[&str]) -> Result<Lab> {
    let mut opts = LabOptions::new(nodes, pods_per_node, crate::bin("sluice-agent").parent().unwrap().to_path_buf());
    opts.kubernetes = true;
    opts.kube_proxy_replacement = true;
    opts.extra_agent_args = agent_args.iter().map(|a| a.to_string()).collect();
    let mut lab = Lab::up(&opts)?;
    let pods: Vec<(String, String)> = lab.pods().iter().map(|(_, p)| (p.netns.clone(), p.name.clone())).collect();
    for (netns, name) in pods {
        crate::cluster::start_pod_servers(&mut lab, &netns, &name)?;
    }
    Ok(lab)
}

/// A dual-stack Kubernetes lab (both pod CIDRs and InternalIPs) with
/// Services in eBPF and no kube-proxy; no servers started (IPv6 tests
/// start their own on the pods' IPv6).
pub fn dual_stack_lab(nodes: usize, pods_per_node: usize) -> Result<Lab> {
    let mut opts = LabOptions::new(nodes, pods_per_node, crate::bin("sluice-agent").parent().unwrap().to_path_buf());
    opts.kubernetes = true;
    opts.kube_proxy_replacement = true;
    opts.dual_stack = true;
    Lab::up(&opts)
}

/// Run the client as a process of `node` in `netns` (a pod's, or the
/// node's own for a host client). `args`: mode, ip, port, n.
pub fn client_cmd(lab: &Lab, node: &Node, netns: &str, args: &[&str]) -> Command {
    let mut all = vec!["python3", "-c", CLIENT];
    all.extend_from_slice(args);
    lab.node_cmd(node, netns, &all)
}

/// Start the client in the background (see `finish`).
pub fn spawn_client(lab: &Lab, node: &Node, netns: &str, args: &[&str]) -> Result<std::process::Child> {
    client_cmd(lab, node, netns, args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("start the service client")
}

/// Wait for a background client: its outcomes and its whole output.
pub fn finish(child: std::process::Child) -> Result<(Vec<Outcome>, String)> {
    let out = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    Ok((text.lines().filter_map(Outcome::parse).collect(), text))
}

pub fn client(lab: &Lab, node: &Node, netns: &str, args: &[&str]) -> Result<Vec<Outcome>> {
    let out = client_cmd(lab, node, netns, args).output().context("run the service client")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("client failed: {}{}", text, String::from_utf8_lossy(&out.stderr));
    }
    Ok(text.lines().filter_map(Outcome::parse).collect())
}

/// How many answers each answerer gave.
pub fn tally(outcomes: &[Outcome]) -> BTreeMap<String, usize> {
    let mut t = BTreeMap::new();
    for o in outcomes {
        let key = match o {
            Outcome::Ok { answer, .. } => answer.clone(),
            Outcome::Err(e) => format!("err {e}"),
        };
        *t.entry(key).or_default() += 1;
    }
    t
}

/// `status --services --json` of node `i`.
pub fn service_status(lab: &Lab, i: usize) -> Result<Value> {
    let node = &lab.state.nodes[i];
    let out = Command::new(lab.state.bin_dir.join("sluice-agent"))
        .args(["status", "--services", "--json", "--pin-dir"])
        .arg(&node.pin_dir)
        .arg("--data-dir")
        .arg(Lab::data_dir(node))
        .output()?;
    serde_json::from_slice(&out.stdout).with_context(|| format!("status: {}", String::from_utf8_lossy(&out.stderr)))
}

/// The backends node `i`'s maps give `ip:port/protocol` (None: no frontend).
pub fn frontend_backends(lab: &Lab, i: usize, ip: &str, port: u16, protocol: &str) -> Result<Option<Vec<String>>> {
    let v = service_status(lab, i)?;
    let fronts = v["services"]["frontends"].as_array().cloned().unwrap_or_default();
    Ok(fronts.iter().find(|f| f["ip"] == ip && f["port"] == port && f["protocol"] == protocol).map(|f| {
        f["backends"]
            .as_array()
            .map(|b| b.iter().filter_map(|x| x.as_str().map(String::from)).collect())
            .unwrap_or_default()
    }))
}

/// Wait until every node's maps give `ip:port/protocol` exactly `want`
/// backends ("ip:port", any order); returns how long it took.
pub fn wait_backends(lab: &Lab, ip: &str, port: u16, protocol: &str, want: &[String]) -> Result<Duration> {
    let start = Instant::now();
    let mut want: Vec<String> = want.to_vec();
    want.sort();
    for i in 0..lab.state.nodes.len() {
        loop {
            let mut got = frontend_backends(lab, i, ip, port, protocol)?;
            if let Some(g) = got.as_mut() {
                g.sort();
            }
            if got.as_ref() == Some(&want) {
                break;
            }
            if start.elapsed() > Duration::from_secs(10) {
                bail!("node {i}: {ip}:{port}/{protocol} has backends {got:?}, want {want:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(start.elapsed())
}

/// A Service `name` at `ip` with ports (name, port, target, protocol).
pub fn service(name: &str, ip: &str, ports: &[(&str, u16, u16, &str)]) -> ServiceObject {
    ports.iter().fold(ServiceObject::new("default", name, ip), |s, (n, p, t, pr)| s.port(n, *p, *t as i64, pr))
}

/// The EndpointSlice of `service` with ports (name, target, protocol) and
/// ready endpoints: the given pods (node, pod) of the lab.
pub fn slice(service: &str, ports: &[(&str, u16, &str)], endpoints: &[EndpointObject]) -> EndpointSliceObject {
    let s = ports
        .iter()
        .fold(EndpointSliceObject::new("default", &format!("{service}-abc12"), service), |s, (n, p, pr)| {
            s.port(n, *p, pr)
        });
    endpoints.iter().cloned().fold(s, |s, e| s.endpoint_with(e))
}

/// Ready endpoints for pods, by (node name, pod IP).
pub fn ready(pods: &[(&str, &str)]) -> Vec<EndpointObject> {
    pods.iter().map(|(node, ip)| EndpointObject::ready(ip, node)).collect()
}

/// Lab for Services in eBPF on IPv6-only nodes (issues 27 × 28): the API
/// server on the LAN's IPv6, Node objects with IPv6 alone, agents with
/// `--ip-family ipv6 --kube-proxy-replacement=true`, no kube-proxy rules,
/// no IPv4 on nodes or pods. No servers started (see
/// `start_pod_ipv6_servers`).
pub fn ipv6_only_lab(nodes: usize, pods_per_node: usize) -> Result<Lab> {
    let mut opts = LabOptions::new(nodes, pods_per_node, crate::bin("sluice-agent").parent().unwrap().to_path_buf());
    opts.kubernetes = true;
    opts.kube_proxy_replacement = true;
    opts.ipv6_only = true;
    Lab::up(&opts)
}

/// How many attempts were answered.
pub fn oks(outcomes: &[Outcome]) -> usize {
    outcomes.iter().filter(|o| matches!(o, Outcome::Ok { .. })).count()
}

/// `python3 svc_client.py args..` in the world (no node's cgroup: the
/// world is no node, and its sockets see no socket load balancer).
pub fn world_client(world: &str, args: &[&str]) -> Vec<Outcome> {
    let mut all = vec!["python3", "-c", CLIENT];
    all.extend_from_slice(args);
    let out: std::process::Output = crate::lab::ns_cmd(world, &all).output().expect("run the client in the world");
    String::from_utf8_lossy(&out.stdout).lines().filter_map(Outcome::parse).collect()
}

/// No kube-proxy here: not one of its chains on any node, in IPv4's or
/// IPv6's tables, so whatever answers from the world is sluice's doing.
pub fn assert_no_kube_proxy_rules(lab: &Lab) {
    for node in &lab.state.nodes {
        for save in ["iptables-save", "ip6tables-save"] {
            let out = Command::new("nsenter").arg(format!("--net=/run/netns/{}", node.netns)).arg(save).output();
            let text = out.map(|o| String::from_utf8_lossy(&o.stdout).to_string()).unwrap_or_default();
            assert!(!text.contains("KUBE-"), "{}: kube-proxy rules present ({save}):\n{text}", node.name);
        }
    }
}

/// In each pod of a dual-stack or IPv6-only lab, on its IPv6 address: a
/// TCP server on 7777 answering the pod's name, one on 7778 answering the
/// peer's address (who the pod saw), a UDP server answering the pod's
/// name; bound before anyone connects.
pub fn start_pod_ipv6_servers(lab: &mut Lab) {
    let pods: Vec<_> = lab.pods().iter().map(|(_, p)| (*p).clone()).collect();
    for pod in pods {
        let (netns, name, ip6) = (pod.netns, pod.name, pod.ip6.expect("a pod with IPv6"));
        for (port, answer, tag) in
            [(7777, format!("echo {name}"), "tcp6"), (7778, "echo $SOCAT_PEERADDR".into(), "who6")]
        {
            let listen = format!("TCP6-LISTEN:{port},bind=[{ip6}],reuseaddr,fork");
            lab.spawn_helper(
                crate::lab::ns_cmd(&netns, &["socat", &listen, &format!("SYSTEM:{answer}")]),
                &format!("{name}-{tag}"),
            )
            .unwrap();
        }
        let port = UDP_PORT.to_string();
        let serve = ["python3", "-c", CLIENT, "udp-serve", &ip6, &port, &name];
        lab.spawn_helper(crate::lab::ns_cmd(&netns, &serve), &format!("{name}-udp6")).unwrap();
        let start = Instant::now();
        loop {
            let tcp = crate::lab::ns_exec(&netns, &["ss", "-H", "-6tln"]).unwrap();
            let udp = crate::lab::ns_exec(&netns, &["ss", "-H", "-6uln"]).unwrap();
            if tcp.lines().count() >= 2 && udp.lines().count() >= 1 {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "IPv6 servers in {netns} did not bind: {tcp} {udp}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Wait until the world's first connection to `[ip]:port` is answered:
/// the agents have planned the Service (a readiness wait; a datapath that
/// never answers fails it).
pub fn wait_world_answer(world: &str, ip: &str, port: u16) {
    let start = Instant::now();
    loop {
        let out = world_client(world, &["tcp", ip, &port.to_string(), "1"]);
        if oks(&out) == 1 {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "world → [{ip}]:{port} never answered: {out:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Wait until every node's `status --services` lists each of `want` (an
/// address, its kind from that node: "local" on the node `i` it belongs
/// to, "remote" elsewhere) among the addresses NodePorts answer on.
pub fn wait_node_addresses6(lab: &Lab, want: &[String]) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    for i in 0..lab.state.nodes.len() {
        loop {
            let v = service_status(lab, i).unwrap();
            let got: BTreeSet<(String, String)> = v["services"]["nodeAddresses"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| Some((a["ip"].as_str()?.to_string(), a["kind"].as_str()?.to_string())))
                .collect();
            let kind = |j: usize| if i == j { "local" } else { "remote" };
            if want.iter().enumerate().all(|(j, ip)| got.contains(&(ip.clone(), kind(j).to_string()))) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "node {i}: NodePort addresses {got:?}, want {want:?}");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}
