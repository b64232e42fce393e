//! The NetworkPolicy truth-table lab (issue 25), modelled on the upstream
//! Kubernetes e2e suite `test/e2e/network/netpol/`: namespaces x, y, z ×
//! pods a, b, c (labels `pod: a`; namespaces labelled `ns: x` and
//! `kubernetes.io/metadata.name: x`), every pod serving 80 and 81 over TCP
//! and UDP (containers `cont-80-tcp` with ports named `serve-80-tcp`, etc.,
//! SCTP ports declared too), every ordered pod pair probed at once, and the
//! expected matrix printed beside the observed one on a mismatch.
//!
//! The cases and their expected matrices are not written here: they are
//! `sluice_agent::policy::upstream_cases::CASES`, the same 48 the pure core's
//! tests run, and [`NetpolLab`] is their [`CaseLab`] on real packets.
//!
//! The lab: two nodes (or the two-subnet VXLAN lab: one node per LAN,
//! behind the router) with the test API server, every agent with
//! `--kube-proxy-replacement=true`; the nine pods alternate between the
//! nodes (`upstream_cases::pod_node`), each made through the real CNI
//! plugin with `K8S_POD_NAMESPACE`/`K8S_POD_NAME`, its Pod object (labels,
//! nodeName, podIPs, the named container ports) published before the ADD
//! (without an address, as the scheduler leaves it) and after (with it).
//! Objects change the way the API server changes them (labels edited in
//! place, policies created, replaced and deleted by name).
//! In each pod one process (`pod.py`, in the pod's netns and its node's
//! cgroup) serves and probes.
//!
//! Each pod is reached three ways ([`Path`]), all probed in the same round:
//! - its pod IP;
//! - a ClusterIP of its own (`s-<ns>-<pod>`, ports 80/81 TCP and UDP, as
//!   upstream probes through one Service per pod), published to the API
//!   server, so the agents' socket load balancer translates it at connect();
//! - another ClusterIP, known only to kube-proxy's iptables rules
//!   (`crate::kube_proxy`, installed on every node), so the packet leaves the
//!   pod addressed to the Service and is DNATed in the node's stack.
//!
//! Over IPv6 (issue 28): the lab is dual-stack and every round probes each
//! pair by its IPv6 pod address too ([`Path::PodIpV6`], TCP, UDP and SCTP),
//! with the same expected matrix (the cases' ipBlocks have IPv6 twins, see
//! `upstream_cases`); a failure names the family ("x/a -> y/b over V6").
//! The Service paths are IPv4 only (the Services are single-stack).
//!
//! SCTP has no sockets on this kernel: its probes are crafted SCTP INITs
//! sent from a raw socket in the source pod, and "connected" means the INIT
//! was delivered in the destination pod (its raw socket saw it). They go to
//! pod IPs only (neither Service path balances SCTP here).
//!
//! Probe timing: allowed probes answer in milliseconds; a blocked one costs
//! the probe timeout (`SLUICE_NETPOL_PROBE_MS`, 800 ms by default), so a
//! round costs about that when anything is blocked. A policy takes effect
//! some time after the API server has it: `validate` probes round after
//! round until every path shows the expected matrix (upstream's
//! ValidateOrFail retries the same way), and fails after
//! `SLUICE_NETPOL_SETTLE_MS` (10 s) printing the last round.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    io::{BufRead, BufReader, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    process::{Child, ChildStdin, ChildStdout, Stdio},
    str::FromStr,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use sluice_agent::policy::{
    model::{PodKey, Protocol},
    upstream_cases::{
        all_pods, pod_containers, pod_node, side_by_side_over, CaseLab, Family, Reachability, NAMESPACES,
    },
};

use crate::{
    apiserver::{namespace_object, network_policy_object, ApiServer, EndpointSliceObject, ServiceObject},
    kube_proxy,
    lab::{Lab, LabOptions, CLUSTER_CIDR},
};

/// The process each pod runs (`python3 -c`).
const POD_PY: &str = include_str!("pod.py");

/// How a probe reaches its target pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Path {
    PodIp,
    /// The pod's own ClusterIP, translated by the socket load balancer.
    ServiceSocketLb,
    /// The pod's ClusterIP in kube-proxy's iptables rules only.
    ServiceKubeProxy,
    /// Its IPv6 pod address.
    PodIpV6,
}

impl Path {
    pub const ALL: [Path; 4] = [Path::PodIp, Path::ServiceSocketLb, Path::ServiceKubeProxy, Path::PodIpV6];

    pub fn describe(self) -> &'static str {
        match self {
            Path::PodIp => "by pod IP over V4",
            Path::ServiceSocketLb => "through a ClusterIP (socket load balancer) over V4",
            Path::ServiceKubeProxy => "through a ClusterIP (kube-proxy's iptables rules) over V4",
            Path::PodIpV6 => "by pod IP over V6",
        }
    }

    pub fn family(self) -> Family {
        match self {
            Path::PodIpV6 => Family::V6,
            _ => Family::V4,
        }
    }
}

/// The paths a protocol is probed on: both families by pod IP, and for
/// TCP and UDP through both ClusterIPs (IPv4).
pub fn paths_for(protocol: Protocol) -> &'static [Path] {
    match protocol {
        Protocol::Tcp | Protocol::Udp => &Path::ALL,
        Protocol::Sctp => &[Path::PodIp, Path::PodIpV6],
    }
}

/// One round's outcome on one path: the matrix and, per pair, what the
/// probe saw ("x/a" answered, "err timeout", "err ECONNREFUSED", ...).
#[derive(Clone, Debug)]
pub struct Observed {
    pub matrix: Reachability,
    pub outcomes: BTreeMap<(PodKey, PodKey), String>,
}

/// Drop counters of every node, by reason.
type Drops = BTreeMap<String, BTreeMap<String, u64>>;

/// How a failed validation ended: its last round.
struct LastRound {
    rounds: usize,
    took: Duration,
    drops_before: Drops,
    drops_after: Drops,
}

/// The lab's layout choices.
#[derive(Clone, Copy, Debug)]
pub struct NetpolOptions {
    /// 1: both nodes on one LAN (native routing); 2: one node on each of
    /// the two LANs, behind the router (VXLAN between them).
    pub subnets: usize,
}

/// A pod's process: serves, probes on command.
struct PodProcess {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl PodProcess {
    fn send(&mut self, cmd: &Value) -> Result<()> {
        writeln!(self.stdin, "{cmd}").context("write to pod.py")?;
        self.stdin.flush().context("flush to pod.py")
    }

    fn receive(&mut self) -> Result<Value> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line).context("read from pod.py")? == 0 {
            bail!("pod.py exited");
        }
        serde_json::from_str(&line).with_context(|| format!("pod.py said {line:?}"))
    }
}

struct LabPod {
    node: usize,
    ip: Ipv4Addr,
    ip6: Ipv6Addr,
    /// ClusterIP of `s-<ns>-<pod>` (the API server's, socket LB).
    service_ip: Ipv4Addr,
    /// ClusterIP in kube-proxy's rules only.
    kube_proxy_ip: Ipv4Addr,
    process: PodProcess,
}

/// The truth-table lab: nine pods, their objects, their Services.
pub struct NetpolLab {
    // Dropped first (declaration order): the pods' processes go before the lab.
    pods: BTreeMap<PodKey, LabPod>,
    pub lab: Lab,
    pub options: NetpolOptions,
    policies: BTreeSet<(String, String)>,
    namespace_labels: BTreeMap<String, BTreeMap<String, String>>,
    pod_labels: BTreeMap<PodKey, BTreeMap<String, String>>,
    probe_timeout: Duration,
    settle: Duration,
    /// Every validation so far: (what, rounds, time until it matched).
    pub log: Vec<(String, usize, Duration)>,
}

fn env_ms(name: &str, default_ms: u64) -> Duration {
    Duration::from_millis(std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default_ms))
}

/// "x/a" → the key.
fn pod_key(namespace: &str, pod: &str) -> PodKey {
    PodKey::new(namespace, pod)
}

/// Base labels: upstream's.
fn base_namespace_labels(ns: &str) -> BTreeMap<String, String> {
    [("ns".to_string(), ns.to_string()), ("kubernetes.io/metadata.name".to_string(), ns.to_string())].into()
}

fn base_pod_labels(pod: &str) -> BTreeMap<String, String> {
    [("pod".to_string(), pod.to_string())].into()
}

/// The n-th pod (0..9) in `all_pods` order.
fn pod_index(key: &PodKey) -> usize {
    all_pods().position(|k| &k == key).expect("one of the nine")
}

impl NetpolLab {
    /// Build the lab: nodes, agents, API objects, nine pods with servers,
    /// their Services on both paths; returns once every server answers and
    /// every node's socket load balancer has every Service.
    pub fn up(options: NetpolOptions) -> Result<Self> {
        crate::require_root();
        let started = Instant::now();
        let mut opts = LabOptions::new(2, 0, crate::bin("sluice-agent").parent().context("bin dir")?.to_path_buf());
        opts.kubernetes = true;
        opts.kube_proxy_replacement = true;
        opts.subnets = options.subnets;
        opts.dual_stack = true;
        let lab = Lab::up(&opts).context("lab up")?;
        let mut this = NetpolLab {
            pods: BTreeMap::new(),
            lab,
            options,
            policies: BTreeSet::new(),
            namespace_labels: NAMESPACES.iter().map(|ns| (ns.to_string(), base_namespace_labels(ns))).collect(),
            pod_labels: all_pods().map(|k| (k.clone(), base_pod_labels(&k.name))).collect(),
            probe_timeout: env_ms("SLUICE_NETPOL_PROBE_MS", 800),
            settle: env_ms("SLUICE_NETPOL_SETTLE_MS", 10_000),
            log: Vec::new(),
        };
        for ns in NAMESPACES {
            this.publish_namespace(ns)?;
        }
        let mut pending = Vec::new();
        for key in all_pods() {
            let node = pod_node(&key.namespace, &key.name);
            // Scheduled, no address yet: what the agent's watch has before
            // the runtime calls the plugin.
            this.publish_pod(&key, node, None, None)?;
            let name = format!("{}-{}", key.namespace, key.name);
            let cni_args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={}", key.namespace, key.name);
            let pod = this
                .lab
                .add_pod_with_cni_env(node, &name, &[("CNI_ARGS".into(), cni_args)])
                .with_context(|| format!("pod {key}"))?;
            let ip = Ipv4Addr::from_str(&pod.ip).with_context(|| format!("pod {key} address {}", pod.ip))?;
            let ip6 = pod.ip6.as_deref().with_context(|| format!("pod {key} has no IPv6 address"))?;
            let ip6 = Ipv6Addr::from_str(ip6).with_context(|| format!("pod {key} address {ip6}"))?;
            this.publish_pod(&key, node, Some(ip), Some(ip6))?;
            let node_state = this.lab.state.nodes[node].clone();
            let mut child = this
                .lab
                .node_cmd(&node_state, &pod.netns, &["python3", "-c", POD_PY, &key.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .with_context(|| format!("start pod.py in {key}"))?;
            let process = PodProcess {
                stdin: child.stdin.take().context("stdin")?,
                stdout: BufReader::new(child.stdout.take().context("stdout")?),
                child,
            };
            let i = pod_index(&key) as u8 + 1;
            pending.push(key.clone());
            this.pods.insert(
                key,
                LabPod {
                    node,
                    ip,
                    ip6,
                    service_ip: Ipv4Addr::new(10, 96, 1, i),
                    kube_proxy_ip: Ipv4Addr::new(10, 96, 2, i),
                    process,
                },
            );
        }
        // Every server bound: each process says "ready" once it is.
        for key in pending {
            let pod = this.pods.get_mut(&key).expect("inserted");
            let mut line = String::new();
            pod.process.stdout.read_line(&mut line).with_context(|| format!("pod.py in {key}"))?;
            if line.trim() != "ready" {
                bail!("pod.py in {key} did not start: {line:?}");
            }
        }
        this.publish_services()?;
        this.wait_services()?;
        eprintln!(
            "netpol lab up in {:.1} s ({} subnet(s)): {}",
            started.elapsed().as_secs_f64(),
            options.subnets,
            this.pods
                .iter()
                .map(|(k, p)| format!("{k} {} {} on {}", p.ip, p.ip6, this.lab.state.nodes[p.node].name))
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(this)
    }

    pub fn api(&self) -> &ApiServer {
        self.lab.api.as_ref().expect("a kubernetes lab")
    }

    fn publish_namespace(&self, ns: &str) -> Result<()> {
        let labels: Vec<(&str, &str)> =
            self.namespace_labels[ns].iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        self.api().upsert_namespace(namespace_object(ns, &labels));
        Ok(())
    }

    /// The Pod object: scheduled (no address) or running with its
    /// address(es), IPv4 first as a dual-stack cluster with IPv4 as its
    /// primary family lists them.
    fn pod_object(&self, key: &PodKey, node: usize, ip: Option<Ipv4Addr>, ip6: Option<Ipv6Addr>) -> Value {
        let node = &self.lab.state.nodes[node];
        let mut host_ips = vec![json!({"ip": node.ip})];
        host_ips.extend(node.ip6.iter().map(|ip| json!({"ip": ip})));
        let mut status = json!({"phase": "Pending", "hostIP": node.ip, "hostIPs": host_ips});
        if let Some(ip) = ip {
            status["phase"] = json!("Running");
            status["podIP"] = json!(ip.to_string());
            let mut ips = vec![json!({"ip": ip.to_string()})];
            ips.extend(ip6.map(|ip| json!({"ip": ip.to_string()})));
            status["podIPs"] = json!(ips);
        }
        json!({
            "metadata": {
                "namespace": key.namespace,
                "name": key.name,
                "uid": format!("uid-{}-{}", key.namespace, key.name),
                "labels": self.pod_labels[key],
            },
            "spec": {"nodeName": node.name, "containers": pod_containers()},
            "status": status,
        })
    }

    fn publish_pod(&self, key: &PodKey, node: usize, ip: Option<Ipv4Addr>, ip6: Option<Ipv6Addr>) -> Result<()> {
        self.api().upsert_pod(self.pod_object(key, node, ip, ip6));
        Ok(())
    }

    /// `s-<ns>-<pod>` per pod, as upstream: ports 80/81 over TCP and UDP.
    fn publish_services(&self) -> Result<()> {
        let ports = [("tcp", "TCP", 80), ("tcp", "TCP", 81), ("udp", "UDP", 80), ("udp", "UDP", 81)];
        let mut kube_proxy_services = Vec::new();
        for (key, pod) in &self.pods {
            let name = format!("s-{}-{}", key.namespace, key.name);
            let node = self.lab.state.nodes[pod.node].name.clone();
            let mut service = ServiceObject::new(&key.namespace, &name, &pod.service_ip.to_string());
            let mut slice = EndpointSliceObject::new(&key.namespace, &format!("{name}-abc12"), &name);
            let mut kp_ports = Vec::new();
            for (proto, api, port) in ports {
                let port_name = format!("service-port-{proto}-{port}");
                service = service.port(&port_name, port, port as i64, api);
                slice = slice.port(&port_name, port, api);
                kp_ports.push(kube_proxy::ServicePort {
                    name: port_name,
                    protocol: if proto == "tcp" { kube_proxy::Protocol::Tcp } else { kube_proxy::Protocol::Udp },
                    port,
                    target_port: port,
                    node_port: None,
                });
            }
            self.api().upsert_service(service.build());
            self.api().upsert_endpoint_slice(slice.endpoint(&pod.ip.to_string(), &node).build());
            kube_proxy_services.push(kube_proxy::Service {
                namespace: key.namespace.clone(),
                name: format!("{name}-kp"),
                cluster_ip: pod.kube_proxy_ip,
                ports: kp_ports,
                external_traffic_policy_local: false,
                endpoints: vec![kube_proxy::Endpoint { ip: pod.ip, node }],
            });
        }
        let cidr = ipnetwork::Ipv4Network::from_str(CLUSTER_CIDR).expect("constant");
        for node in &self.lab.state.nodes {
            kube_proxy::apply(&node.netns, &kube_proxy_services, &node.name, cidr)
                .with_context(|| format!("kube-proxy rules on {}", node.name))?;
        }
        Ok(())
    }

    /// Every node's socket load balancer has every pod's Service.
    fn wait_services(&self) -> Result<()> {
        let want: BTreeSet<String> = self
            .pods
            .values()
            .flat_map(|p| {
                ["TCP", "UDP"].into_iter().flat_map(move |proto| {
                    [80, 81].map(|port| format!("{}:{port}/{proto}>{}:{port}", p.service_ip, p.ip))
                })
            })
            .collect();
        let start = Instant::now();
        for i in 0..self.lab.state.nodes.len() {
            loop {
                let status = crate::services::service_status(&self.lab, i)?;
                let fronts = status["services"]["frontends"].as_array().cloned().unwrap_or_default();
                let have: BTreeSet<String> = fronts
                    .iter()
                    .flat_map(|f| {
                        let front = format!(
                            "{}:{}/{}",
                            f["ip"].as_str().unwrap_or_default(),
                            f["port"],
                            f["protocol"].as_str().unwrap_or_default()
                        );
                        f["backends"]
                            .as_array()
                            .cloned()
                            .unwrap_or_default()
                            .into_iter()
                            .filter_map(move |b| b.as_str().map(|b| format!("{front}>{b}")))
                    })
                    .collect();
                let missing: Vec<&String> = want.difference(&have).collect();
                if missing.is_empty() {
                    break;
                }
                if start.elapsed() > Duration::from_secs(20) {
                    bail!(
                        "node {i}'s socket load balancer lacks {} Service backends, e.g. {:?}",
                        missing.len(),
                        missing[0]
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    fn target_ip(&self, to: &PodKey, path: Path) -> IpAddr {
        let pod = &self.pods[to];
        match path {
            Path::PodIp => pod.ip.into(),
            Path::ServiceSocketLb => pod.service_ip.into(),
            Path::ServiceKubeProxy => pod.kube_proxy_ip.into(),
            Path::PodIpV6 => pod.ip6.into(),
        }
    }

    /// The source address pod `key`'s probes on `path` leave with.
    fn source_ip(&self, key: &PodKey, path: Path) -> IpAddr {
        let pod = &self.pods[key];
        match path.family() {
            Family::V4 => pod.ip.into(),
            Family::V6 => pod.ip6.into(),
        }
    }

    /// One round: every ordered pair (loopback too) on every path of
    /// `paths`, all at once.
    pub fn probe(&mut self, protocol: Protocol, port: u16, paths: &[Path]) -> Result<BTreeMap<Path, Observed>> {
        let proto = match protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        };
        // Probe ids: index into `jobs`, unique across the round (SCTP uses
        // them as the INIT's initiate tag, to tell probes apart where they land).
        let mut jobs: Vec<(PodKey, PodKey, Path)> = Vec::new();
        let mut commands: BTreeMap<PodKey, Vec<Value>> = BTreeMap::new();
        for from in all_pods() {
            for to in all_pods() {
                for &path in paths {
                    let id = jobs.len();
                    commands.entry(from.clone()).or_default().push(json!([
                        id,
                        proto,
                        self.target_ip(&to, path).to_string(),
                        port
                    ]));
                    jobs.push((from.clone(), to.clone(), path));
                }
            }
        }
        if protocol == Protocol::Sctp {
            self.sctp_seen()?; // forget what arrived before this round
        }
        let timeout_ms = self.probe_timeout.as_millis() as u64;
        for (from, probes) in &commands {
            let pod = self.pods.get_mut(from).expect("one of the nine");
            pod.process.send(&json!({"probe": probes, "timeout_ms": timeout_ms}))?;
        }
        let mut outcomes: BTreeMap<usize, String> = BTreeMap::new();
        for from in commands.keys() {
            let pod = self.pods.get_mut(from).expect("one of the nine");
            let answer = pod.process.receive().with_context(|| format!("probes from {from}"))?;
            let results = answer["results"].as_object().with_context(|| format!("{from}: {answer}"))?;
            for (id, outcome) in results {
                outcomes.insert(id.parse()?, outcome.as_str().unwrap_or_default().to_string());
            }
        }
        if protocol == Protocol::Sctp {
            self.collect_sctp(&jobs, port, &mut outcomes)?;
        }
        let mut by_path: BTreeMap<Path, BTreeMap<(PodKey, PodKey), String>> = BTreeMap::new();
        for (id, (from, to, path)) in jobs.into_iter().enumerate() {
            let outcome = outcomes.remove(&id).unwrap_or_else(|| "err no answer".into());
            by_path.entry(path).or_default().insert((from, to), outcome);
        }
        Ok(by_path
            .into_iter()
            .map(|(path, outcomes)| {
                let matrix = Reachability::from_fn(|from, to| outcomes[&(from.clone(), to.clone())] == to.to_string());
                (path, Observed { matrix, outcomes })
            })
            .collect())
    }

    /// SCTP INITs seen by each pod since the last ask: (receiver, source
    /// address, destination port, initiate tag).
    fn sctp_seen(&mut self) -> Result<Vec<(PodKey, IpAddr, u16, u64)>> {
        let mut seen = Vec::new();
        for (key, pod) in self.pods.iter_mut() {
            pod.process.send(&json!({"sctp_seen": true}))?;
            let answer = pod.process.receive()?;
            for s in answer["sctp_seen"].as_array().cloned().unwrap_or_default() {
                let src = IpAddr::from_str(s[0].as_str().unwrap_or_default())?;
                seen.push((
                    key.clone(),
                    src,
                    s[1].as_u64().unwrap_or_default() as u16,
                    s[2].as_u64().unwrap_or_default(),
                ));
            }
        }
        Ok(seen)
    }

    /// Turn "sent" into the receiver's name where the INIT arrived (from
    /// the sender's address, on `port`, with the probe's tag), waiting up
    /// to the probe timeout for the rest; what never arrives is
    /// "err not delivered".
    fn collect_sctp(
        &mut self,
        jobs: &[(PodKey, PodKey, Path)],
        port: u16,
        outcomes: &mut BTreeMap<usize, String>,
    ) -> Result<()> {
        let start = Instant::now();
        let mut pending: BTreeSet<usize> =
            outcomes.iter().filter(|(_, o)| o.as_str() == "sent").map(|(id, _)| *id).collect();
        loop {
            for (receiver, src, dst_port, tag) in self.sctp_seen()? {
                let Some(id) = (tag as usize).checked_sub(1) else { continue };
                let Some((from, to, path)) = jobs.get(id) else { continue };
                if pending.contains(&id) && &receiver == to && self.source_ip(from, *path) == src && dst_port == port {
                    pending.remove(&id);
                    outcomes.insert(id, receiver.to_string());
                }
            }
            if pending.is_empty() || start.elapsed() > self.probe_timeout {
                break;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        for id in pending {
            outcomes.insert(id, "err not delivered".into());
        }
        Ok(())
    }

    /// Every node's drop counters, by reason (only the non-zero ones).
    pub fn drops(&self) -> Drops {
        let mut all = BTreeMap::new();
        for (i, node) in self.lab.state.nodes.iter().enumerate() {
            let counts = self
                .lab
                .status(i)
                .ok()
                .and_then(|s| s["drops"].as_object().cloned())
                .unwrap_or_default()
                .into_iter()
                .filter_map(|(k, v)| v.as_u64().filter(|n| *n > 0).map(|n| (k, n)))
                .collect();
            all.insert(node.name.clone(), counts);
        }
        all
    }

    /// Probe until every path shows `expected` (loopback ignored), or fail
    /// after the settle time with the last round laid out.
    pub fn try_validate(&mut self, protocol: Protocol, port: u16, expected: &Reachability) -> Result<()> {
        self.try_validate_within(protocol, port, expected, self.settle)
    }

    /// `try_validate` giving up after `settle`.
    pub fn try_validate_within(
        &mut self,
        protocol: Protocol,
        port: u16,
        expected: &Reachability,
        settle: Duration,
    ) -> Result<()> {
        let what = format!("{protocol:?}/{port}");
        let start = Instant::now();
        let mut rounds = 0;
        loop {
            let drops_before = self.drops();
            rounds += 1;
            let observed = self.probe(protocol, port, paths_for(protocol))?;
            let wrong: Vec<(&Path, &Observed)> =
                observed.iter().filter(|(_, o)| !expected.differences(&o.matrix).is_empty()).collect();
            if wrong.is_empty() {
                self.log.push((what, rounds, start.elapsed()));
                return Ok(());
            }
            if start.elapsed() > settle {
                let drops_after = self.drops();
                let last = LastRound { rounds, took: start.elapsed(), drops_before, drops_after };
                bail!(self.report(&what, expected, &observed, &last));
            }
        }
    }

    /// Expected vs observed per path, what each differing probe saw, and
    /// the drops each node counted during the last round.
    fn report(
        &self,
        what: &str,
        expected: &Reachability,
        observed: &BTreeMap<Path, Observed>,
        last: &LastRound,
    ) -> String {
        let LastRound { rounds, took, drops_before, drops_after } = last;
        let mut s = format!(
            "{what}: the observed matrix still differs from the expected one after {rounds} rounds in {:.1} s\n",
            took.as_secs_f64()
        );
        // Each path's matrix, or which path's it repeats.
        let mut shown: Vec<(Path, &Reachability)> = Vec::new();
        let mut wrong_pairs: BTreeSet<(PodKey, PodKey)> = BTreeSet::new();
        for (path, o) in observed {
            let wrong = expected.differences(&o.matrix);
            if wrong.is_empty() {
                let _ = writeln!(s, "\n{what} {}: as expected ({} blocked)", path.describe(), expected.blocked());
                continue;
            }
            wrong_pairs.extend(wrong.iter().cloned());
            // Each family shows its own matrix (and names itself in each
            // pair's line); paths of one family may repeat each other.
            if let Some((same, _)) = shown.iter().find(|(p, m)| **m == o.matrix && p.family() == path.family()) {
                let _ = writeln!(s, "\n{what} {}: the same matrix as {}", path.describe(), same.describe());
                continue;
            }
            let _ = writeln!(s, "\n{what} {}: {} of 72 pairs wrong", path.describe(), wrong.len());
            s.push_str(&side_by_side_over(expected, &o.matrix, Some(path.family())));
            shown.push((*path, &o.matrix));
        }
        let paths: Vec<&Path> = observed.keys().collect();
        let _ = writeln!(
            s,
            "\nwhat the probes of those pairs saw ({}):",
            paths.iter().map(|p| format!("{p:?}")).collect::<Vec<_>>().join(" | ")
        );
        for (from, to) in wrong_pairs {
            let saw: Vec<&str> =
                paths.iter().map(|p| observed[p].outcomes[&(from.clone(), to.clone())].as_str()).collect();
            let _ = writeln!(
                s,
                "  {from} ({}) -> {to} ({}), expected {}: {}",
                self.node_of(&from),
                self.node_of(&to),
                if expected.get(&from, &to) { "connected" } else { "blocked" },
                saw.join(" | ")
            );
        }
        let _ = writeln!(s, "\ndrops counted during the last round:");
        for (node, after) in drops_after {
            let before = drops_before.get(node);
            let delta: Vec<String> = after
                .iter()
                .filter_map(|(reason, n)| {
                    let d = n - before.and_then(|b| b.get(reason)).copied().unwrap_or(0);
                    (d > 0).then(|| format!("{reason} {d}"))
                })
                .collect();
            let _ = writeln!(s, "  {node}: {}", if delta.is_empty() { "none".to_string() } else { delta.join(", ") });
        }
        // The agents' own view of the pods involved (`status --policy`):
        // isolation, the policies isolating them, their allow rules.
        let mut involved: BTreeSet<PodKey> = BTreeSet::new();
        for o in observed.values() {
            for (from, to) in expected.differences(&o.matrix) {
                involved.insert(to);
                involved.insert(from);
            }
        }
        let _ = writeln!(s, "\nthe agents' view of the pods involved (`status --policy`, on each pod's node):");
        for key in involved.iter().take(6) {
            let _ = writeln!(s, "  {key} ({}): {}", self.node_of(key), self.policy_view(key));
        }
        if involved.len() > 6 {
            let _ = writeln!(s, "  ({} more pods involved)", involved.len() - 6);
        }
        let _ = writeln!(s, "\neach agent's NetworkPolicy state (agent-state.json):");
        for node in &self.lab.state.nodes {
            let state: Option<Value> = std::fs::read(Lab::data_dir(node).join("agent-state.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            let policy = state.as_ref().map(|v| v["policy"].clone()).unwrap_or(Value::Null);
            let _ = writeln!(s, "  {}: {policy}", node.name);
        }
        s.push_str(&self.placement());
        s
    }

    /// The network namespace of a pod (for a test's own commands in it).
    pub fn netns(&self, namespace: &str, pod: &str) -> String {
        let key = pod_key(namespace, pod);
        let node = &self.lab.state.nodes[self.pods[&key].node];
        let name = format!("{namespace}-{pod}");
        node.pods.iter().find(|p| p.name == name).map(|p| p.netns.clone()).expect("one of the nine")
    }

    /// The pod's entry in `sluice-agent status --policy <pod> --json` on
    /// its node (isolation per direction, allow rules by name).
    pub fn policy_view(&self, key: &PodKey) -> String {
        let node = &self.lab.state.nodes[self.pods[key].node];
        let out = crate::try_run(
            std::process::Command::new(self.lab.state.bin_dir.join("sluice-agent"))
                .args(["status", "--json", "--policy", &key.to_string(), "--pin-dir"])
                .arg(&node.pin_dir)
                .arg("--data-dir")
                .arg(Lab::data_dir(node)),
        );
        match out.map(|o| serde_json::from_slice::<Value>(&o.stdout).map_err(|e| (e, o))) {
            Ok(Ok(v)) => v["policy"]["view"].to_string(),
            Ok(Err((e, o))) => format!("(status --policy: {e}: {})", String::from_utf8_lossy(&o.stderr)),
            Err(e) => format!("(status --policy failed: {e:#})"),
        }
    }

    fn node_of(&self, key: &PodKey) -> String {
        self.lab.state.nodes[self.pods[key].node].name.clone()
    }

    /// Which pod is where.
    pub fn placement(&self) -> String {
        let mut s = String::from("pods:");
        for (key, pod) in &self.pods {
            let _ = write!(
                s,
                " {key}={} {} on {} (svc {}, kube-proxy {});",
                pod.ip, pod.ip6, self.lab.state.nodes[pod.node].name, pod.service_ip, pod.kube_proxy_ip
            );
        }
        s.push('\n');
        s
    }

    /// Back to no policies and upstream's labels, then wait until every
    /// pair reaches every other on TCP/80 (the agents have caught up).
    pub fn reset(&mut self) -> Result<()> {
        self.delete_all_policies();
        for ns in NAMESPACES {
            if self.namespace_labels[ns] != base_namespace_labels(ns) {
                self.namespace_labels.insert(ns.to_string(), base_namespace_labels(ns));
                self.publish_namespace(ns)?;
            }
        }
        for key in all_pods() {
            if self.pod_labels[&key] != base_pod_labels(&key.name) {
                self.pod_labels.insert(key.clone(), base_pod_labels(&key.name));
                self.publish_running(&key)?;
            }
        }
        self.try_validate(Protocol::Tcp, 80, &Reachability::all(true)).context("after reset")
    }

    /// Create or replace (same name) a policy from its API form.
    pub fn apply_policy(&mut self, namespace: &str, name: &str, spec: Value) -> Result<()> {
        self.api().upsert_network_policy(network_policy_object(namespace, name, spec));
        self.policies.insert((namespace.to_string(), name.to_string()));
        Ok(())
    }
}

impl Drop for NetpolLab {
    fn drop(&mut self) {
        for pod in self.pods.values_mut() {
            let _ = pod.process.child.kill();
            let _ = pod.process.child.wait();
        }
    }
}

impl CaseLab for NetpolLab {
    fn apply(&mut self, namespace: &str, name: &str, spec: Value) {
        self.apply_policy(namespace, name, spec).unwrap_or_else(|e| panic!("apply {namespace}/{name}: {e:#}"))
    }

    fn delete_all_policies(&mut self) {
        for (ns, name) in std::mem::take(&mut self.policies) {
            self.api().delete_network_policy(&ns, &name);
        }
    }

    fn label_namespace(&mut self, namespace: &str, key: &str, value: &str) {
        self.namespace_labels.get_mut(namespace).expect("x, y or z").insert(key.into(), value.into());
        self.publish_namespace(namespace).unwrap_or_else(|e| panic!("label namespace {namespace}: {e:#}"));
    }

    fn label_pod(&mut self, namespace: &str, pod: &str, key: &str, value: &str) {
        let k = pod_key(namespace, pod);
        self.pod_labels.get_mut(&k).expect("one of the nine").insert(key.into(), value.into());
        self.publish_running(&k).unwrap_or_else(|e| panic!("label pod {k}: {e:#}"));
    }

    fn ip(&self, namespace: &str, pod: &str) -> Ipv4Addr {
        self.pods[&pod_key(namespace, pod)].ip
    }

    fn ip6(&self, namespace: &str, pod: &str) -> Ipv6Addr {
        self.pods[&pod_key(namespace, pod)].ip6
    }

    fn validate(&mut self, protocol: Protocol, port: u16, expected: &Reachability) {
        if let Err(e) = self.try_validate(protocol, port, expected) {
            panic!("{e:#}");
        }
    }
}

/// CLOCK_MONOTONIC in seconds: the clock pod.py stamps stream echoes with.
pub fn monotonic_now() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// One TCP connect from inside network namespace `netns` (a name under
/// /run/netns), made by a thread of this process that enters it: no
/// process to start, so it can be the namespace's first packet. "connected"
/// (the three-way handshake finished), or "err <why>" ("err timeout" when
/// nothing answered the SYN).
pub fn connect_from_netns(netns: &str, ip: Ipv4Addr, port: u16, timeout: Duration) -> String {
    let path = format!("/run/netns/{netns}");
    let handle = std::thread::spawn(move || -> Result<String> {
        let f = std::fs::File::open(&path).with_context(|| format!("open {path}"))?;
        nix::sched::setns(std::os::fd::AsFd::as_fd(&f), nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
        let addr = std::net::SocketAddr::from((ip, port));
        Ok(match std::net::TcpStream::connect_timeout(&addr, timeout) {
            Ok(_) => "connected".into(),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => "err timeout".into(),
            Err(e) => format!("err {e}"),
        })
    });
    match handle.join() {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => format!("err {e:#}"),
        Err(_) => "err the probing thread panicked".into(),
    }
}

/// A long-lived TCP connection's record, from pod.py.
#[derive(Clone, Debug, Default)]
pub struct StreamState {
    /// CLOCK_MONOTONIC seconds of every echoed line.
    pub echoes: Vec<f64>,
    pub sent: u64,
    pub error: Option<String>,
}

impl StreamState {
    /// The longest time without an echo between `from` and `to` (seconds,
    /// CLOCK_MONOTONIC), counting the edges.
    pub fn longest_silence(&self, from: f64, to: f64) -> f64 {
        let mut last = from;
        let mut longest: f64 = 0.0;
        for &t in self.echoes.iter().filter(|t| **t >= from && **t <= to) {
            longest = longest.max(t - last);
            last = t;
        }
        longest.max(to - last)
    }

    pub fn echoes_after(&self, t: f64) -> usize {
        self.echoes.iter().filter(|e| **e > t).count()
    }
}

/// A pod beside the nine (same namespaces, its own labels).
pub struct ExtraPod {
    pub key: PodKey,
    pub node: usize,
    pub lab_name: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    pub ip6: Option<Ipv6Addr>,
}

impl NetpolLab {
    /// The stream port of every pod (pod.py's line echo server; not an
    /// upstream port).
    pub const STREAM_PORT: u16 = 8090;

    fn pod_process(&mut self, from: (&str, &str)) -> &mut PodProcess {
        &mut self.pods.get_mut(&pod_key(from.0, from.1)).expect("one of the nine").process
    }

    fn ask(&mut self, from: (&str, &str), cmd: Value) -> Result<Value> {
        let p = self.pod_process(from);
        p.send(&cmd)?;
        p.receive()
    }

    /// Open stream `sid` from pod `from` to `ip`:STREAM_PORT, a line every
    /// `interval`.
    pub fn stream_open(&mut self, from: (&str, &str), sid: &str, ip: Ipv4Addr, interval: Duration) -> Result<()> {
        let cmd = json!({"stream_open": [sid, ip.to_string(), Self::STREAM_PORT, interval.as_millis() as u64]});
        let answer = self.ask(from, cmd)?;
        match answer["result"].as_str() {
            Some("ok") => Ok(()),
            other => bail!("stream {sid} from {}/{} to {ip}: {other:?}", from.0, from.1),
        }
    }

    fn stream_state(answer: &Value) -> Result<StreamState> {
        if let Some(e) = answer["error"].as_str().filter(|_| answer.get("echoes").is_none()) {
            bail!("{e}");
        }
        Ok(StreamState {
            echoes: answer["echoes"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_f64).collect())
                .unwrap_or_default(),
            sent: answer["sent"].as_u64().unwrap_or_default(),
            error: answer["error"].as_str().map(str::to_string),
        })
    }

    pub fn stream_read(&mut self, from: (&str, &str), sid: &str) -> Result<StreamState> {
        let answer = self.ask(from, json!({"stream_read": sid}))?;
        Self::stream_state(&answer)
    }

    pub fn stream_close(&mut self, from: (&str, &str), sid: &str) -> Result<StreamState> {
        let answer = self.ask(from, json!({"stream_close": sid}))?;
        Self::stream_state(&answer)
    }

    /// A pod `namespace/name` on node `node` with `labels`: its Pod object
    /// (scheduled, no address), the plugin's ADD, and nothing running in
    /// it. Returns as soon as ADD does; `publish_extra_pod_ip` tells the API
    /// server its address, as the kubelet would next.
    pub fn add_extra_pod(
        &mut self,
        namespace: &str,
        name: &str,
        node: usize,
        labels: &[(&str, &str)],
    ) -> Result<ExtraPod> {
        let key = pod_key(namespace, name);
        self.pod_labels.insert(key.clone(), labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        self.publish_pod(&key, node, None, None)?;
        let lab_name = format!("{namespace}-{name}");
        let cni_args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name}");
        let pod = self.lab.cni_add_pod(node, &lab_name, &[("CNI_ARGS".into(), cni_args)])?;
        let ip = Ipv4Addr::from_str(&pod.ip).with_context(|| format!("address {}", pod.ip))?;
        let ip6 = pod.ip6.as_deref().map(Ipv6Addr::from_str).transpose().context("IPv6 address")?;
        Ok(ExtraPod { key, node, lab_name, netns: pod.netns, ip, ip6 })
    }

    pub fn publish_extra_pod_ip(&mut self, pod: &ExtraPod) -> Result<()> {
        self.publish_pod(&pod.key, pod.node, Some(pod.ip), pod.ip6)
    }

    /// Remove an extra pod: the plugin's DEL, its namespace, its Pod object.
    pub fn remove_extra_pod(&mut self, pod: ExtraPod) -> Result<()> {
        self.api().delete_pod(&pod.key.namespace, &pod.key.name);
        self.pod_labels.remove(&pod.key);
        self.lab.remove_pod(pod.node, &pod.lab_name)
    }

    /// Pod `namespace/pod`'s labels become upstream's plus `extra` (a pod
    /// moving into or out of a selector).
    pub fn set_pod_labels(&mut self, namespace: &str, pod: &str, extra: &[(&str, &str)]) -> Result<()> {
        let key = pod_key(namespace, pod);
        let mut labels = base_pod_labels(pod);
        labels.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self.pod_labels.insert(key.clone(), labels);
        self.publish_running(&key)
    }

    /// Publish pod `key` of the nine, running with both addresses.
    fn publish_running(&self, key: &PodKey) -> Result<()> {
        let pod = &self.pods[key];
        self.publish_pod(key, pod.node, Some(pod.ip), Some(pod.ip6))
    }

    /// Namespace `ns`'s labels become upstream's plus `extra`.
    pub fn set_namespace_labels(&mut self, ns: &str, extra: &[(&str, &str)]) -> Result<()> {
        let mut labels = base_namespace_labels(ns);
        labels.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self.namespace_labels.insert(ns.to_string(), labels);
        self.publish_namespace(ns)
    }

    /// Delete one policy.
    pub fn delete_policy(&mut self, namespace: &str, name: &str) {
        self.policies.remove(&(namespace.to_string(), name.to_string()));
        self.api().delete_network_policy(namespace, name);
    }

    /// The index of the node pod `namespace/pod` of the nine runs on.
    pub fn node_index(&self, namespace: &str, pod: &str) -> usize {
        self.pods[&pod_key(namespace, pod)].node
    }

    /// One drop counter of node `i` (0 when absent).
    pub fn drop_count(&self, i: usize, reason: &str) -> u64 {
        self.lab.status(i).ok().and_then(|s| s["drops"][reason].as_u64()).unwrap_or(0)
    }
}
