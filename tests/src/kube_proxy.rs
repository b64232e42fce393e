//! kube-proxy's iptables rules, generated here because no kube-proxy runs on
//! the test machine.
//!
//! [`render`] produces the `iptables-restore` input that kube-proxy's iptables
//! proxier (`pkg/proxy/iptables`, the rules as of v1.31 through current
//! master) syncs on one node for a set of services, rule for rule and in
//! kube-proxy's order, for this configuration:
//! IPv4, local traffic detected by `--cluster-cidr`, `masqueradeAll: false`,
//! masquerade bit 14, `localhostNodePorts: true` with `nodePortAddresses`
//! unset (NodePorts on every local address), `nf_conntrack_tcp_be_liberal`
//! unset, no nfacct counters, ready endpoints only, no session affinity, no
//! external IPs, load balancers or topology hints, internal traffic policy
//! Cluster.
//!
//! What differs from kube-proxy, on purpose:
//! - kube-proxy installs its jumps from the built-in chains (`PREROUTING` →
//!   `KUBE-SERVICES`, …) with one `iptables -I` each before the restore, and
//!   only when the same rule is not there yet. Here they are `-I` lines at the
//!   top of the same restore input, in kube-proxy's order, which gives the
//!   same chains; [`apply`] leaves out those already present, as kube-proxy
//!   does.
//! - kube-proxy walks its services in Go map order (random); here services
//!   and ports come in the order given. Endpoints are sorted by `ip:port`
//!   text, as kube-proxy's endpoints map sorts them.
//! - No `KUBE-PROXY-CANARY` chains (kube-proxy's monitor for flushed tables).
//!
//! IPv6 (a dual-stack node runs one proxier per family): the same rules,
//! written by [`render`] for `Service<Ipv6Addr>` and applied by [`apply`]
//! with `ip6tables`, and what kube-proxy's IPv6 proxier does differently:
//! endpoints as `[ip]:port` (Go's `net.JoinHostPort`, in DNAT targets,
//! comments and the hashed `KUBE-SEP-` names), no "block incoming localnet
//! connections" rule (IPv4 only; the `KUBE-FIREWALL` chain its jumps lead
//! to is there, empty), and `! -d ::1/128` on the NodePorts jump (localhost
//! NodePorts never work over IPv6).
use std::{
    collections::BTreeSet,
    fmt::{Debug, Display},
    hash::Hash,
    io::Write as _,
    net::{Ipv4Addr, Ipv6Addr},
    process::{Output, Stdio},
};

use anyhow::{bail, Context, Result};
use data_encoding::BASE32;
use ipnetwork::{Ipv4Network, Ipv6Network};
use sha2::{Digest, Sha256};

use crate::lab::ns_cmd;

/// kube-proxy's masquerade mark: bit 14, formatted by Go's `%#08x`
/// (iptables-save shows it back as `0x4000`).
pub const MASQUERADE_MARK: &str = "0x00004000";

const KUBE_SERVICES: &str = "KUBE-SERVICES";
const KUBE_EXTERNAL_SERVICES: &str = "KUBE-EXTERNAL-SERVICES";
const KUBE_NODEPORTS: &str = "KUBE-NODEPORTS";
const KUBE_POSTROUTING: &str = "KUBE-POSTROUTING";
const KUBE_MARK_MASQ: &str = "KUBE-MARK-MASQ";
const KUBE_FORWARD: &str = "KUBE-FORWARD";
const KUBE_PROXY_FIREWALL: &str = "KUBE-PROXY-FIREWALL";
const KUBE_FIREWALL: &str = "KUBE-FIREWALL";

/// Prefixes of the per-service and per-endpoint chains, which kube-proxy
/// deletes when no service uses them any more.
const SERVICE_CHAIN_PREFIXES: [&str; 5] = ["KUBE-SVC-", "KUBE-SVL-", "KUBE-SEP-", "KUBE-FW-", "KUBE-EXT-"];

/// Above this many endpoints kube-proxy leaves the comments out of the
/// per-endpoint rules.
const LARGE_CLUSTER_ENDPOINTS: usize = 1000;

/// The address family of one kube-proxy proxier: `Ipv4Addr` (iptables)
/// or `Ipv6Addr` (ip6tables).
pub trait Family: Copy + Ord + Hash + Debug + Display {
    /// Its CIDRs (`--cluster-cidr`).
    type Network: Copy + Display;
    const IPV6: bool;
    /// `iptables` or `ip6tables` (and their `-save`, `-restore`).
    const IPTABLES: &'static str;
    /// `ip:port` as Go's `net.JoinHostPort` writes it.
    fn host_port(self, port: u16) -> String;
}

impl Family for Ipv4Addr {
    type Network = Ipv4Network;
    const IPV6: bool = false;
    const IPTABLES: &'static str = "iptables";
    fn host_port(self, port: u16) -> String {
        format!("{self}:{port}")
    }
}

impl Family for Ipv6Addr {
    type Network = Ipv6Network;
    const IPV6: bool = true;
    const IPTABLES: &'static str = "ip6tables";
    fn host_port(self, port: u16) -> String {
        format!("[{self}]:{port}")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// Lower case, as kube-proxy writes it in `-m`/`-p` and hashes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// A ready endpoint of a service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint<A: Family = Ipv4Addr> {
    pub ip: A,
    /// The node the endpoint pod runs on.
    pub node: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// The port's name; may be empty for a service's only port.
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    /// The endpoints' port (a number: named target ports are not modelled).
    pub target_port: u16,
    /// Set for NodePort services.
    pub node_port: Option<u16>,
}

/// A service of one family (a dual-stack service is one of each, as
/// kube-proxy's two proxiers see it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service<A: Family = Ipv4Addr> {
    pub namespace: String,
    pub name: String,
    pub cluster_ip: A,
    pub ports: Vec<ServicePort>,
    /// `externalTrafficPolicy: Local` (only takes effect on NodePort ports).
    pub external_traffic_policy_local: bool,
    pub endpoints: Vec<Endpoint<A>>,
}

impl<A: Family> Service<A> {
    /// kube-proxy's name for a service port, used in comments and hashed into
    /// chain names: `ns/name:port`, or `ns/name` for an unnamed port.
    pub fn port_name(&self, port: &ServicePort) -> String {
        if port.name.is_empty() {
            format!("{}/{}", self.namespace, self.name)
        } else {
            format!("{}/{}:{}", self.namespace, self.name, port.name)
        }
    }

    /// The `KUBE-SVC-…` chain of a port (Cluster traffic policy).
    pub fn svc_chain(&self, port: &ServicePort) -> String {
        format!("KUBE-SVC-{}", port_proto_hash(&self.port_name(port), port.protocol))
    }

    /// The `KUBE-SVL-…` chain of a port (Local traffic policy).
    pub fn svl_chain(&self, port: &ServicePort) -> String {
        format!("KUBE-SVL-{}", port_proto_hash(&self.port_name(port), port.protocol))
    }

    /// The `KUBE-EXT-…` chain of a port (NodePort traffic).
    pub fn ext_chain(&self, port: &ServicePort) -> String {
        format!("KUBE-EXT-{}", port_proto_hash(&self.port_name(port), port.protocol))
    }

    /// The `KUBE-SEP-…` chain of the endpoint at `ip` for a port.
    pub fn sep_chain(&self, port: &ServicePort, ip: A) -> String {
        endpoint_chain_name(&self.port_name(port), port.protocol, &ip.host_port(port.target_port))
    }
}

/// First 16 characters of base32(sha256(port name + protocol)), the suffix of
/// a port's SVC/SVL/EXT/FW chains.
pub fn port_proto_hash(service_port_name: &str, protocol: Protocol) -> String {
    hash16(&format!("{service_port_name}{}", protocol.as_str()))
}

/// `KUBE-SEP-` + the first 16 characters of base32(sha256(port name +
/// protocol + `ip:port`)).
pub fn endpoint_chain_name(service_port_name: &str, protocol: Protocol, endpoint: &str) -> String {
    format!("KUBE-SEP-{}", hash16(&format!("{service_port_name}{}{endpoint}", protocol.as_str())))
}

fn hash16(input: &str) -> String {
    let digest = Sha256::digest(input.as_bytes());
    let mut encoded = BASE32.encode(&digest);
    encoded.truncate(16);
    encoded
}

/// `1/n` as kube-proxy prints a `--probability` (Go's `%0.10f`).
fn probability(n: usize) -> String {
    format!("{:.10}", 1.0 / n as f64)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Table {
    Filter,
    Nat,
}

impl Table {
    fn as_str(self) -> &'static str {
        match self {
            Table::Filter => "filter",
            Table::Nat => "nat",
        }
    }
}

/// A jump from a built-in chain into one of kube-proxy's.
struct Jump {
    table: Table,
    dst: &'static str,
    src: &'static str,
    comment: &'static str,
    only_new: bool,
}

const fn jump(table: Table, dst: &'static str, src: &'static str, comment: &'static str, only_new: bool) -> Jump {
    Jump { table, dst, src, comment, only_new }
}

/// kube-proxy's jumps, in the order it ensures them (each one prepended to
/// its chain); the last two are its copies of the kubelet's KUBE-FIREWALL
/// jumps, which carry no comment.
const JUMPS: [Jump; 14] = [
    jump(Table::Filter, KUBE_EXTERNAL_SERVICES, "INPUT", "kubernetes externally-visible service portals", true),
    jump(Table::Filter, KUBE_EXTERNAL_SERVICES, "FORWARD", "kubernetes externally-visible service portals", true),
    jump(Table::Filter, KUBE_NODEPORTS, "INPUT", "kubernetes health check service ports", false),
    jump(Table::Filter, KUBE_SERVICES, "FORWARD", "kubernetes service portals", true),
    jump(Table::Filter, KUBE_SERVICES, "OUTPUT", "kubernetes service portals", true),
    jump(Table::Filter, KUBE_FORWARD, "FORWARD", "kubernetes forwarding rules", false),
    jump(Table::Filter, KUBE_PROXY_FIREWALL, "INPUT", "kubernetes load balancer firewall", true),
    jump(Table::Filter, KUBE_PROXY_FIREWALL, "OUTPUT", "kubernetes load balancer firewall", true),
    jump(Table::Filter, KUBE_PROXY_FIREWALL, "FORWARD", "kubernetes load balancer firewall", true),
    jump(Table::Nat, KUBE_SERVICES, "OUTPUT", "kubernetes service portals", false),
    jump(Table::Nat, KUBE_SERVICES, "PREROUTING", "kubernetes service portals", false),
    jump(Table::Nat, KUBE_POSTROUTING, "POSTROUTING", "kubernetes postrouting rules", false),
    jump(Table::Filter, KUBE_FIREWALL, "INPUT", "", false),
    jump(Table::Filter, KUBE_FIREWALL, "OUTPUT", "", false),
];

impl Jump {
    /// The rule's arguments, as kube-proxy passes them to `iptables`.
    fn args(&self) -> Vec<&'static str> {
        let mut args = Vec::new();
        if self.only_new {
            args.extend(["-m", "conntrack", "--ctstate", "NEW"]);
        }
        if !self.comment.is_empty() {
            args.extend(["-m", "comment", "--comment", self.comment]);
        }
        args.extend(["-j", self.dst]);
        args
    }

    /// The same rule as an `iptables-restore` line that prepends it.
    fn restore_line(&self) -> String {
        let mut line = format!("-I {}", self.src);
        for arg in self.args() {
            if arg.contains(' ') {
                line.push_str(&format!(" \"{arg}\""));
            } else {
                line.push(' ');
                line.push_str(arg);
            }
        }
        line
    }
}

/// What the node already has, which changes what a sync writes.
struct NodeState<'a> {
    /// `JUMPS[i]` is already in place (kube-proxy then does not add it again).
    jump_present: [bool; JUMPS.len()],
    /// Chains in the node's nat table (stale service chains get deleted).
    nat_chains: &'a [String],
}

impl NodeState<'_> {
    fn fresh() -> Self {
        NodeState { jump_present: [false; JUMPS.len()], nat_chains: &[] }
    }
}

/// Lines of one table section, kept apart as kube-proxy keeps them: chain
/// declarations first, then rules.
#[derive(Default)]
struct Section {
    chains: Vec<String>,
    rules: Vec<String>,
}

impl Section {
    fn chain(&mut self, name: &str) {
        self.chains.push(format!(":{name} - [0:0]"));
    }

    fn rule(&mut self, line: String) {
        self.rules.push(line);
    }
}

/// One endpoint of one service port.
struct Ep {
    ip: String,
    /// `ip:targetPort`.
    addr: String,
    local: bool,
    chain: String,
}

/// iptables-restore input (both `*filter` and `*nat` sections, each ending in
/// COMMIT) for node `this_node`, exactly what kube-proxy would sync on that
/// node, plus `-I` lines for kube-proxy's jumps from the built-in chains.
pub fn render<A: Family>(services: &[Service<A>], this_node: &str, cluster_cidr: A::Network) -> String {
    render_with(services, this_node, cluster_cidr, &NodeState::fresh())
}

fn render_with<A: Family>(
    services: &[Service<A>],
    this_node: &str,
    cluster_cidr: A::Network,
    node: &NodeState,
) -> String {
    let mark = MASQUERADE_MARK;
    let mut filter = Section::default();
    let mut nat = Section::default();

    for chain in [KUBE_SERVICES, KUBE_EXTERNAL_SERVICES, KUBE_FORWARD, KUBE_NODEPORTS, KUBE_PROXY_FIREWALL] {
        filter.chain(chain);
    }
    for chain in [KUBE_SERVICES, KUBE_NODEPORTS, KUBE_POSTROUTING, KUBE_MARK_MASQ] {
        nat.chain(chain);
    }

    // Masquerade what KUBE-MARK-MASQ marked, clearing the mark so a packet
    // that goes through the stack again is not masqueraded twice.
    nat.rule(format!("-A {KUBE_POSTROUTING} -m mark ! --mark {mark}/{mark} -j RETURN"));
    nat.rule(format!("-A {KUBE_POSTROUTING} -j MARK --xor-mark {mark}"));
    nat.rule(format!(
        "-A {KUBE_POSTROUTING} -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully"
    ));
    nat.rule(format!("-A {KUBE_MARK_MASQ} -j MARK --or-mark {mark}"));

    // localhostNodePorts sets route_localnet, and this closes the hole it
    // opens (IPv4 only: kube-proxy's IPv6 proxier writes neither; the
    // chain its jumps lead to exists, empty, as kube-proxy ensures it).
    filter.chain(KUBE_FIREWALL);
    if !A::IPV6 {
        filter.rule(format!(
            "-A {KUBE_FIREWALL} -m comment --comment \"block incoming localnet connections\" -d 127.0.0.0/8 \
             ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP"
        ));
    }

    let total_endpoints: usize = services.iter().map(|s| s.ports.len() * endpoint_ips(s).len()).sum();
    let ctx =
        Ctx { this_node, cidr: cluster_cidr.to_string(), large_cluster: total_endpoints > LARGE_CLUSTER_ENDPOINTS };
    let mut active_nat_chains = BTreeSet::new();
    for svc in services {
        for port in &svc.ports {
            write_service_port(&mut filter, &mut nat, &mut active_nat_chains, &ctx, svc, port);
        }
    }

    // Service chains that no service uses any more: a chain line flushes
    // them, then they are deleted.
    let mut stale: Vec<&String> = node
        .nat_chains
        .iter()
        .filter(|c| SERVICE_CHAIN_PREFIXES.iter().any(|p| c.starts_with(p)) && !active_nat_chains.contains(*c))
        .collect();
    stale.sort();
    stale.dedup();
    for chain in stale {
        nat.chain(chain);
        nat.rule(format!("-X {chain}"));
    }

    // Localhost NodePorts never work over IPv6: kube-proxy leaves ::1 out.
    let not_localhost = if A::IPV6 { " ! -d ::1/128" } else { "" };
    nat.rule(format!(
        "-A {KUBE_SERVICES} -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule \
         in this chain\" -m addrtype --dst-type LOCAL{not_localhost} -j {KUBE_NODEPORTS}"
    ));

    // Drop INVALID packets, which could otherwise reset connections; let
    // marked (service) traffic through a FORWARD policy that drops.
    filter.rule(format!("-A {KUBE_FORWARD} -m conntrack --ctstate INVALID -j DROP"));
    filter.rule(format!(
        "-A {KUBE_FORWARD} -m comment --comment \"kubernetes forwarding rules\" -m mark --mark {mark}/{mark} -j ACCEPT"
    ));
    filter.rule(format!(
        "-A {KUBE_FORWARD} -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate \
         RELATED,ESTABLISHED -j ACCEPT"
    ));

    let mut out = String::new();
    for (table, section) in [(Table::Filter, &filter), (Table::Nat, &nat)] {
        out.push_str(&format!("*{}\n", table.as_str()));
        for line in &section.chains {
            out.push_str(&format!("{line}\n"));
        }
        for (j, present) in JUMPS.iter().zip(node.jump_present) {
            if j.table == table && !present {
                out.push_str(&format!("{}\n", j.restore_line()));
            }
        }
        for line in &section.rules {
            out.push_str(&format!("{line}\n"));
        }
        out.push_str("COMMIT\n");
    }
    out
}

/// What every service port's rules depend on.
struct Ctx<'a> {
    this_node: &'a str,
    cidr: String,
    /// Over [`LARGE_CLUSTER_ENDPOINTS`]: no comments on per-endpoint rules.
    large_cluster: bool,
}

impl Ctx<'_> {
    /// `-m comment --comment <name> ` unless the cluster is large.
    fn endpoint_comment(&self, comment: &str) -> String {
        if self.large_cluster {
            String::new()
        } else {
            format!("-m comment --comment {comment} ")
        }
    }
}

/// A service's endpoint IPs, each once, with the node it runs on.
fn endpoint_ips<A: Family>(svc: &Service<A>) -> Vec<&Endpoint<A>> {
    let mut seen = BTreeSet::new();
    svc.endpoints.iter().filter(|e| seen.insert(e.ip)).collect()
}

fn write_service_port<A: Family>(
    filter: &mut Section,
    nat: &mut Section,
    active: &mut BTreeSet<String>,
    ctx: &Ctx,
    svc: &Service<A>,
    port: &ServicePort,
) {
    let name = svc.port_name(port);
    let proto = port.protocol.as_str();
    let cidr = &ctx.cidr;
    let svc_chain = svc.svc_chain(port);
    let svl_chain = svc.svl_chain(port);
    let ext_chain = svc.ext_chain(port);
    // How kube-proxy matches the cluster IP, in KUBE-SERVICES and again in
    // the SVC chain's masquerade rule.
    let cluster_ip_match = format!(
        "-m comment --comment \"{name} cluster IP\" -m {proto} -p {proto} -d {} --dport {}",
        svc.cluster_ip, port.port
    );

    let mut eps: Vec<Ep> = endpoint_ips(svc)
        .into_iter()
        .map(|e| Ep {
            ip: e.ip.to_string(),
            addr: e.ip.host_port(port.target_port),
            local: e.node == ctx.this_node,
            chain: svc.sep_chain(port, e.ip),
        })
        .collect();
    eps.sort_by(|a, b| a.addr.cmp(&b.addr));

    // Traffic policies: internal is always Cluster here; external is Local
    // only when asked for and the port is reachable from outside at all.
    let externally_accessible = port.node_port.is_some();
    let external_local = svc.external_traffic_policy_local && externally_accessible;
    let cluster_eps: Vec<&Ep> = eps.iter().collect();
    let local_eps: Vec<&Ep> = if external_local { eps.iter().filter(|e| e.local).collect() } else { Vec::new() };
    let has_endpoints = !cluster_eps.is_empty();
    let has_internal_endpoints = has_endpoints;
    let (external_policy_chain, has_external_endpoints) =
        if external_local { (&svl_chain, !local_eps.is_empty()) } else { (&svc_chain, has_endpoints) };
    let uses_external_chain = has_endpoints && externally_accessible;

    // What filter does with traffic the nat table has no endpoint for.
    let external_filter = if !has_endpoints {
        Some(("REJECT", format!("\"{name} has no endpoints\"")))
    } else if !has_external_endpoints {
        Some(("DROP", format!("\"{name} has no local endpoints\"")))
    } else {
        None
    };

    // The cluster IP.
    if has_internal_endpoints {
        nat.rule(format!("-A {KUBE_SERVICES} {cluster_ip_match} -j {svc_chain}"));
    } else {
        filter.rule(format!(
            "-A {KUBE_SERVICES} -m comment --comment \"{name} has no endpoints\" -m {proto} -p {proto} -d {} \
             --dport {} -j REJECT",
            svc.cluster_ip, port.port
        ));
    }

    // The node port.
    if let Some(node_port) = port.node_port {
        if has_endpoints {
            nat.rule(format!(
                "-A {KUBE_NODEPORTS} -m comment --comment {name} -m {proto} -p {proto} --dport {node_port} -j {ext_chain}"
            ));
        }
        if let Some((target, comment)) = &external_filter {
            filter.rule(format!(
                "-A {KUBE_EXTERNAL_SERVICES} -m comment --comment {comment} -m addrtype --dst-type LOCAL \
                 -m {proto} -p {proto} --dport {node_port} -j {target}"
            ));
        }
    }

    // Traffic to the cluster IP from outside the cluster CIDR gets
    // masqueraded (it may be bounced off-node).
    if has_internal_endpoints {
        nat.rule(format!("-A {svc_chain} {cluster_ip_match} ! -s {cidr} -j {KUBE_MARK_MASQ}"));
    }

    // External (NodePort) traffic.
    if uses_external_chain {
        nat.chain(&ext_chain);
        active.insert(ext_chain.clone());
        if !external_local {
            nat.rule(format!(
                "-A {ext_chain} -m comment --comment \"masquerade traffic for {name} external destinations\" \
                 -j {KUBE_MARK_MASQ}"
            ));
        } else {
            // Pods reaching a node port go through the cluster policy, as if
            // they had come back in from an external load balancer.
            nat.rule(format!(
                "-A {ext_chain} -m comment --comment \"pod traffic for {name} external destinations\" -s {cidr} \
                 -j {svc_chain}"
            ));
            // The node itself picks a local address as source: masquerade it
            // and send it through the cluster policy too.
            nat.rule(format!(
                "-A {ext_chain} -m comment --comment \"masquerade LOCAL traffic for {name} external destinations\" \
                 -m addrtype --src-type LOCAL -j {KUBE_MARK_MASQ}"
            ));
            nat.rule(format!(
                "-A {ext_chain} -m comment --comment \"route LOCAL traffic for {name} external destinations\" \
                 -m addrtype --src-type LOCAL -j {svc_chain}"
            ));
        }
        if has_external_endpoints {
            nat.rule(format!("-A {ext_chain} -j {external_policy_chain}"));
        }
    }

    if !cluster_eps.is_empty() {
        nat.chain(&svc_chain);
        active.insert(svc_chain.clone());
        write_load_balancing(nat, ctx, &name, &svc_chain, &cluster_eps);
    }
    if !local_eps.is_empty() {
        nat.chain(&svl_chain);
        active.insert(svl_chain.clone());
        write_load_balancing(nat, ctx, &name, &svl_chain, &local_eps);
    }

    // One chain per reachable endpoint (every local endpoint is also a
    // cluster endpoint here, so that is all of them).
    for ep in &eps {
        let (chain, comment) = (&ep.chain, ctx.endpoint_comment(&name));
        nat.chain(chain);
        active.insert(chain.clone());
        // Hairpin: an endpoint reaching itself through the service.
        nat.rule(format!("-A {chain} {comment}-s {} -j {KUBE_MARK_MASQ}", ep.ip));
        nat.rule(format!("-A {chain} {comment}-m {proto} -p {proto} -j DNAT --to-destination {}", ep.addr));
    }
}

/// Jumps from a service chain to its endpoints' chains: endpoint i of n is
/// taken with probability 1/(n-i), the last one always.
fn write_load_balancing(nat: &mut Section, ctx: &Ctx, name: &str, chain: &str, eps: &[&Ep]) {
    let n = eps.len();
    for (i, ep) in eps.iter().enumerate() {
        let comment = ctx.endpoint_comment(&format!("\"{name} -> {}\"", ep.addr));
        let statistic = if i + 1 < n {
            format!("-m statistic --mode random --probability {} ", probability(n - i))
        } else {
            String::new()
        };
        nat.rule(format!("-A {chain} {comment}{statistic}-j {}", ep.chain));
    }
}

/// Apply on a node namespace as kube-proxy syncs: jumps it finds missing
/// (`iptables -C`), stale service chains deleted (from `iptables-save -t
/// nat`), everything else in one `iptables-restore --noflush --counters`,
/// with kube-proxy's wait flags when the iptables version has them. Fails
/// with the tool's stderr.
pub fn apply<A: Family>(netns: &str, services: &[Service<A>], this_node: &str, cluster_cidr: A::Network) -> Result<()> {
    let iptables = A::IPTABLES;
    let (save, restore_tool) = (format!("{iptables}-save"), format!("{iptables}-restore"));
    let version = iptables_version(netns)?;
    let (wait, restore_wait) = wait_flags(version);

    let mut jump_present = [false; JUMPS.len()];
    for (present, j) in jump_present.iter_mut().zip(&JUMPS) {
        let mut args: Vec<&str> = vec![iptables];
        args.extend(&wait);
        args.extend(["-C", j.src, "-t", j.table.as_str()]);
        args.extend(j.args());
        *present = crate::try_run(&mut ns_cmd(netns, &args))?.status.success();
    }

    // As kube-proxy: if the nat table can't be read, stale chains stay.
    let nat_chains = match crate::try_run(&mut ns_cmd(netns, &[&save, "-t", "nat"])) {
        Ok(out) if out.status.success() => chains_in_save(&String::from_utf8_lossy(&out.stdout)),
        _ => Vec::new(),
    };

    let state = NodeState { jump_present, nat_chains: &nat_chains };
    let input = render_with(services, this_node, cluster_cidr, &state);

    let mut args: Vec<&str> = vec![&restore_tool];
    args.extend(&restore_wait);
    args.extend(["--noflush", "--counters"]);
    let out = restore(netns, &args, &input)?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        bail!("{} in {netns} failed ({}): {}{}", args.join(" "), out.status, stderr, failed_line(&stderr, &input));
    }
    Ok(())
}

fn restore(netns: &str, args: &[&str], input: &str) -> Result<Output> {
    let mut child = ns_cmd(netns, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("start {} in {netns}", args[0]))?;
    child.stdin.take().context("stdin")?.write_all(input.as_bytes()).context("write iptables-restore input")?;
    child.wait_with_output().context("wait for iptables-restore")
}

/// The input line iptables-restore names ("line N failed", "Error occurred at
/// line: N"), to help read its error.
fn failed_line(stderr: &str, input: &str) -> String {
    let n = stderr.split("line").skip(1).find_map(|rest| {
        let digits: String =
            rest.trim_start_matches(':').trim_start().chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<usize>().ok()
    });
    match n.and_then(|n| input.lines().nth(n.checked_sub(1)?)) {
        Some(line) => format!("(input line: {line})"),
        None => String::new(),
    }
}

/// Chain names declared in iptables-save output.
fn chains_in_save(save: &str) -> Vec<String> {
    save.lines().filter_map(|l| l.strip_prefix(':')?.split_whitespace().next()).map(str::to_string).collect()
}

/// `iptables --version` inside the namespace, as (major, minor, patch).
fn iptables_version(netns: &str) -> Result<(u32, u32, u32)> {
    let out = crate::run(&mut ns_cmd(netns, &["iptables", "--version"]))?;
    parse_version(&out).with_context(|| format!("no version in `iptables --version` output {out:?}"))
}

fn parse_version(s: &str) -> Option<(u32, u32, u32)> {
    let v = s.split_whitespace().find_map(|w| w.strip_prefix('v'))?;
    let mut nums = v.split('.').map(|p| p.parse::<u32>().ok());
    Some((nums.next()??, nums.next()??, nums.next().flatten().unwrap_or(0)))
}

/// kube-proxy's wait flags for `iptables` and for `iptables-restore`.
fn wait_flags(version: (u32, u32, u32)) -> (Vec<&'static str>, Vec<&'static str>) {
    let full = vec!["-w", "5", "-W", "100000"];
    let iptables = if version >= (1, 6, 1) {
        full.clone()
    } else if version >= (1, 4, 22) {
        vec!["-w", "5"]
    } else if version >= (1, 4, 20) {
        vec!["-w"]
    } else {
        Vec::new()
    };
    let restore = if version >= (1, 6, 2) { full } else { Vec::new() };
    (iptables, restore)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: &str = "node-a";

    fn cidr() -> Ipv4Network {
        "10.0.0.0/8".parse().unwrap()
    }

    fn ep(ip: &str, node: &str) -> Endpoint {
        Endpoint { ip: ip.parse().unwrap(), node: node.to_string() }
    }

    fn tcp(name: &str, port: u16, target_port: u16, node_port: Option<u16>) -> ServicePort {
        ServicePort { name: name.to_string(), protocol: Protocol::Tcp, port, target_port, node_port }
    }

    fn service(ns: &str, name: &str, ip: &str, port: ServicePort, local: bool, endpoints: Vec<Endpoint>) -> Service {
        Service {
            namespace: ns.to_string(),
            name: name.to_string(),
            cluster_ip: ip.parse().unwrap(),
            ports: vec![port],
            external_traffic_policy_local: local,
            endpoints,
        }
    }

    fn section<'a>(text: &'a str, table: &str) -> Vec<&'a str> {
        let start = format!("*{table}");
        text.lines().skip_while(|l| *l != start).skip(1).take_while(|l| *l != "COMMIT").collect()
    }

    /// The lines of `table` that mention `needle`, in order.
    fn grep<'a>(text: &'a str, table: &str, needle: &str) -> Vec<&'a str> {
        section(text, table).into_iter().filter(|l| l.contains(needle)).collect()
    }

    #[test]
    fn chain_names_match_upstream() {
        // Names from kube-proxy's proxier_test.go / cleanup_test.go expected output.
        assert_eq!(port_proto_hash("ns1/svc1:p80", Protocol::Tcp), "XPGD46QRK7WJZT7O");
        assert_eq!(port_proto_hash("ns2/svc2:p80", Protocol::Tcp), "GNZBNJ2PO5MGZ6GT");
        assert_eq!(port_proto_hash("ns3/svc3:p80", Protocol::Tcp), "X27LE4BHSL4DOUIK");
        assert_eq!(port_proto_hash("ns4/svc4:p80", Protocol::Tcp), "4SW47YFZTEDKD3PK");
        assert_eq!(port_proto_hash("ns5/svc5:p80", Protocol::Tcp), "NUKIZ6OKUXPJNT4C");
        assert_eq!(endpoint_chain_name("ns1/svc1:p80", Protocol::Tcp, "10.180.0.1:80"), "KUBE-SEP-SXIVWICOYRO3J4NJ");
        assert_eq!(endpoint_chain_name("ns2/svc2:p80", Protocol::Tcp, "10.180.0.2:80"), "KUBE-SEP-RS4RBKLTHTF2IUXJ");
        assert_eq!(endpoint_chain_name("ns4/svc4:p80", Protocol::Tcp, "10.180.0.4:80"), "KUBE-SEP-UKSFD7AGPMPPLUHC");
        assert_eq!(endpoint_chain_name("ns4/svc4:p80", Protocol::Tcp, "10.180.0.5:80"), "KUBE-SEP-C6EBXVWJJZMIWKLZ");

        let s = service("ns1", "svc1", "172.30.0.41", tcp("p80", 80, 80, None), false, vec![]);
        assert_eq!(s.port_name(&s.ports[0]), "ns1/svc1:p80");
        assert_eq!(s.svc_chain(&s.ports[0]), "KUBE-SVC-XPGD46QRK7WJZT7O");
        assert_eq!(s.svl_chain(&s.ports[0]), "KUBE-SVL-XPGD46QRK7WJZT7O");
        assert_eq!(s.ext_chain(&s.ports[0]), "KUBE-EXT-XPGD46QRK7WJZT7O");
        assert_eq!(s.sep_chain(&s.ports[0], "10.180.0.1".parse().unwrap()), "KUBE-SEP-SXIVWICOYRO3J4NJ");

        // An unnamed port has no ":" in its name; udp hashes differently.
        let u = service("ns", "dns", "172.30.0.10", tcp("", 53, 53, None), false, vec![]);
        assert_eq!(u.port_name(&u.ports[0]), "ns/dns");
        assert_ne!(port_proto_hash("ns/dns", Protocol::Udp), port_proto_hash("ns/dns", Protocol::Tcp));
    }

    #[test]
    fn probabilities_are_formatted_like_go() {
        assert_eq!(probability(2), "0.5000000000");
        assert_eq!(probability(3), "0.3333333333");
        assert_eq!(probability(6), "0.1666666667");
        // An exact tie at the 11th digit rounds to even, as Go does.
        assert_eq!(probability(2048), "0.0004882812");
    }

    #[test]
    fn no_services_gives_the_fixed_layout() {
        let want = "\
*filter
:KUBE-SERVICES - [0:0]
:KUBE-EXTERNAL-SERVICES - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
:KUBE-FIREWALL - [0:0]
-I INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES
-I FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES
-I INPUT -m comment --comment \"kubernetes health check service ports\" -j KUBE-NODEPORTS
-I FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-I OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-I FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD
-I INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL
-I OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL
-I FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL
-I INPUT -j KUBE-FIREWALL
-I OUTPUT -j KUBE-FIREWALL
-A KUBE-FIREWALL -m comment --comment \"block incoming localnet connections\" -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x00004000/0x00004000 -j ACCEPT
-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
COMMIT
*nat
:KUBE-SERVICES - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-MARK-MASQ - [0:0]
-I OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-I PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-I POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING
-A KUBE-POSTROUTING -m mark ! --mark 0x00004000/0x00004000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x00004000
-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully
-A KUBE-MARK-MASQ -j MARK --or-mark 0x00004000
-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
COMMIT
";
        assert_eq!(render::<Ipv4Addr>(&[], NODE, cidr()), want);
    }

    #[test]
    fn cluster_ip_with_two_endpoints() {
        // Endpoints given out of order: kube-proxy sorts them by "ip:port".
        let s = service(
            "ns4",
            "svc4",
            "172.30.0.44",
            tcp("p80", 80, 80, None),
            false,
            vec![ep("10.180.0.5", NODE), ep("10.180.0.4", "node-b")],
        );
        let out = render(&[s], NODE, cidr());
        let svc = "KUBE-SVC-4SW47YFZTEDKD3PK";
        let (sep4, sep5) = ("KUBE-SEP-UKSFD7AGPMPPLUHC", "KUBE-SEP-C6EBXVWJJZMIWKLZ");
        let nat = section(&out, "nat");
        let want = [
            ":KUBE-SERVICES - [0:0]",
            ":KUBE-NODEPORTS - [0:0]",
            ":KUBE-POSTROUTING - [0:0]",
            ":KUBE-MARK-MASQ - [0:0]",
            ":KUBE-SVC-4SW47YFZTEDKD3PK - [0:0]",
            ":KUBE-SEP-UKSFD7AGPMPPLUHC - [0:0]",
            ":KUBE-SEP-C6EBXVWJJZMIWKLZ - [0:0]",
        ];
        assert_eq!(&nat[..7], &want);
        let rules: Vec<&str> = nat.iter().copied().filter(|l| l.contains("ns4/svc4")).collect();
        assert_eq!(
            rules,
            [
                format!("-A KUBE-SERVICES -m comment --comment \"ns4/svc4:p80 cluster IP\" -m tcp -p tcp -d 172.30.0.44 --dport 80 -j {svc}"),
                format!("-A {svc} -m comment --comment \"ns4/svc4:p80 cluster IP\" -m tcp -p tcp -d 172.30.0.44 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ"),
                format!("-A {svc} -m comment --comment \"ns4/svc4:p80 -> 10.180.0.4:80\" -m statistic --mode random --probability 0.5000000000 -j {sep4}"),
                format!("-A {svc} -m comment --comment \"ns4/svc4:p80 -> 10.180.0.5:80\" -j {sep5}"),
                format!("-A {sep4} -m comment --comment ns4/svc4:p80 -s 10.180.0.4 -j KUBE-MARK-MASQ"),
                format!("-A {sep4} -m comment --comment ns4/svc4:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.4:80"),
                format!("-A {sep5} -m comment --comment ns4/svc4:p80 -s 10.180.0.5 -j KUBE-MARK-MASQ"),
                format!("-A {sep5} -m comment --comment ns4/svc4:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.5:80"),
            ]
        );
        assert_eq!(out.matches("--probability").count(), 1);
        // The nodeports jump stays the last rule of KUBE-SERVICES.
        let last = nat.iter().rev().find(|l| l.starts_with("-A KUBE-SERVICES")).unwrap();
        assert!(last.ends_with("-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"), "{last}");
        // Nothing service-specific in filter.
        assert!(grep(&out, "filter", "ns4/svc4").is_empty());
    }

    #[test]
    fn three_endpoints_and_udp() {
        let mut s = service(
            "kube-system",
            "dns",
            "172.30.0.10",
            tcp("dns", 53, 5353, None),
            false,
            vec![ep("10.1.0.2", NODE), ep("10.1.0.10", NODE), ep("10.1.0.3", "node-b")],
        );
        s.ports[0].protocol = Protocol::Udp;
        let out = render(std::slice::from_ref(&s), NODE, cidr());
        let svc = s.svc_chain(&s.ports[0]);
        let lb: Vec<&str> = grep(&out, "nat", &format!("-A {svc} -m comment --comment \"kube-system/dns:dns ->"));
        // "10.1.0.10:5353" sorts before "10.1.0.2:5353", as in kube-proxy.
        assert_eq!(lb.len(), 3);
        assert!(lb[0].contains("-> 10.1.0.10:5353\" -m statistic --mode random --probability 0.3333333333 -j"));
        assert!(lb[1].contains("-> 10.1.0.2:5353\" -m statistic --mode random --probability 0.5000000000 -j"));
        assert!(lb[2].contains("-> 10.1.0.3:5353\" -j KUBE-SEP-"));
        let dnat = grep(&out, "nat", "-j DNAT");
        assert_eq!(dnat.len(), 3);
        assert!(dnat[0].ends_with("-m udp -p udp -j DNAT --to-destination 10.1.0.10:5353"), "{}", dnat[0]);
        assert_eq!(
            grep(&out, "nat", "-A KUBE-SERVICES -m comment --comment \"kube-system/dns:dns cluster IP\""),
            [format!("-A KUBE-SERVICES -m comment --comment \"kube-system/dns:dns cluster IP\" -m udp -p udp -d 172.30.0.10 --dport 53 -j {svc}")]
        );
    }

    #[test]
    fn node_port_cluster_policy() {
        let s = service(
            "ns3",
            "svc3",
            "172.30.0.43",
            tcp("p80", 80, 8080, Some(30080)),
            false,
            vec![ep("10.180.0.3", "node-b")],
        );
        let out = render(std::slice::from_ref(&s), NODE, cidr());
        let (svc, ext) = ("KUBE-SVC-X27LE4BHSL4DOUIK", "KUBE-EXT-X27LE4BHSL4DOUIK");
        let sep = s.sep_chain(&s.ports[0], "10.180.0.3".parse().unwrap());
        assert_eq!(
            grep(&out, "nat", "ns3/svc3"),
            [
                format!("-A KUBE-SERVICES -m comment --comment \"ns3/svc3:p80 cluster IP\" -m tcp -p tcp -d 172.30.0.43 --dport 80 -j {svc}"),
                format!("-A KUBE-NODEPORTS -m comment --comment ns3/svc3:p80 -m tcp -p tcp --dport 30080 -j {ext}"),
                format!("-A {svc} -m comment --comment \"ns3/svc3:p80 cluster IP\" -m tcp -p tcp -d 172.30.0.43 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ"),
                format!("-A {ext} -m comment --comment \"masquerade traffic for ns3/svc3:p80 external destinations\" -j KUBE-MARK-MASQ"),
                format!("-A {svc} -m comment --comment \"ns3/svc3:p80 -> 10.180.0.3:8080\" -j {sep}"),
                format!("-A {sep} -m comment --comment ns3/svc3:p80 -s 10.180.0.3 -j KUBE-MARK-MASQ"),
                format!("-A {sep} -m comment --comment ns3/svc3:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.3:8080"),
            ]
        );
        assert_eq!(grep(&out, "nat", &format!("-A {ext} -j")), [format!("-A {ext} -j {svc}")]);
        let chains = grep(&out, "nat", " - [0:0]");
        assert_eq!(&chains[4..], [format!(":{ext} - [0:0]"), format!(":{svc} - [0:0]"), format!(":{sep} - [0:0]")]);
        // Cluster policy needs no SVL chain and no filter rules.
        assert!(!out.contains("KUBE-SVL-"));
        assert!(grep(&out, "filter", "ns3/svc3").is_empty());
    }

    #[test]
    fn node_port_local_policy_with_a_local_endpoint() {
        let s = service(
            "ns2",
            "svc2",
            "172.30.0.42",
            tcp("p80", 80, 80, Some(3001)),
            true,
            vec![ep("10.180.0.2", "node-b"), ep("10.180.0.7", NODE)],
        );
        let out = render(std::slice::from_ref(&s), NODE, cidr());
        let (svc, svl, ext) = ("KUBE-SVC-GNZBNJ2PO5MGZ6GT", "KUBE-SVL-GNZBNJ2PO5MGZ6GT", "KUBE-EXT-GNZBNJ2PO5MGZ6GT");
        let sep2 = "KUBE-SEP-RS4RBKLTHTF2IUXJ";
        let sep7 = s.sep_chain(&s.ports[0], "10.180.0.7".parse().unwrap());
        let nat = grep(&out, "nat", "ns2/svc2");
        assert_eq!(
            &nat[..9],
            [
                format!("-A KUBE-SERVICES -m comment --comment \"ns2/svc2:p80 cluster IP\" -m tcp -p tcp -d 172.30.0.42 --dport 80 -j {svc}"),
                format!("-A KUBE-NODEPORTS -m comment --comment ns2/svc2:p80 -m tcp -p tcp --dport 3001 -j {ext}"),
                format!("-A {svc} -m comment --comment \"ns2/svc2:p80 cluster IP\" -m tcp -p tcp -d 172.30.0.42 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ"),
                format!("-A {ext} -m comment --comment \"pod traffic for ns2/svc2:p80 external destinations\" -s 10.0.0.0/8 -j {svc}"),
                format!("-A {ext} -m comment --comment \"masquerade LOCAL traffic for ns2/svc2:p80 external destinations\" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ"),
                format!("-A {ext} -m comment --comment \"route LOCAL traffic for ns2/svc2:p80 external destinations\" -m addrtype --src-type LOCAL -j {svc}"),
                format!("-A {svc} -m comment --comment \"ns2/svc2:p80 -> 10.180.0.2:80\" -m statistic --mode random --probability 0.5000000000 -j {sep2}"),
                format!("-A {svc} -m comment --comment \"ns2/svc2:p80 -> 10.180.0.7:80\" -j {sep7}"),
                format!("-A {svl} -m comment --comment \"ns2/svc2:p80 -> 10.180.0.7:80\" -j {sep7}"),
            ]
        );
        // Outside traffic falls through to the local endpoints only.
        assert_eq!(grep(&out, "nat", &format!("-A {ext} -j")), [format!("-A {ext} -j {svl}")]);
        // Both endpoints get SEP chains (the cluster IP still uses both).
        assert_eq!(grep(&out, "nat", "-j DNAT").len(), 2);
        assert_eq!(grep(&out, "nat", &format!(":{svl} ")).len(), 1);
        assert!(grep(&out, "filter", "ns2/svc2").is_empty());
    }

    #[test]
    fn node_port_local_policy_without_local_endpoints() {
        let s = service(
            "ns2",
            "svc2",
            "172.30.0.42",
            tcp("p80", 80, 80, Some(3001)),
            true,
            vec![ep("10.180.0.2", "node-b")],
        );
        let out = render(&[s], NODE, cidr());
        let (svc, ext) = ("KUBE-SVC-GNZBNJ2PO5MGZ6GT", "KUBE-EXT-GNZBNJ2PO5MGZ6GT");
        // The EXT chain keeps its short-circuits for pods and the node, but
        // has no fall-through, and there is no SVL chain.
        assert_eq!(
            grep(&out, "nat", &format!("-A {ext} ")),
            [
                format!("-A {ext} -m comment --comment \"pod traffic for ns2/svc2:p80 external destinations\" -s 10.0.0.0/8 -j {svc}"),
                format!("-A {ext} -m comment --comment \"masquerade LOCAL traffic for ns2/svc2:p80 external destinations\" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ"),
                format!("-A {ext} -m comment --comment \"route LOCAL traffic for ns2/svc2:p80 external destinations\" -m addrtype --src-type LOCAL -j {svc}"),
            ]
        );
        assert!(!out.contains("KUBE-SVL-"));
        assert_eq!(
            grep(&out, "nat", "-A KUBE-NODEPORTS"),
            [format!("-A KUBE-NODEPORTS -m comment --comment ns2/svc2:p80 -m tcp -p tcp --dport 3001 -j {ext}")]
        );
        // Whatever the EXT chain did not catch is dropped in filter.
        assert_eq!(
            grep(&out, "filter", "ns2/svc2"),
            ["-A KUBE-EXTERNAL-SERVICES -m comment --comment \"ns2/svc2:p80 has no local endpoints\" -m addrtype --dst-type LOCAL -m tcp -p tcp --dport 3001 -j DROP"]
        );
        // The cluster IP still works through the remote endpoint.
        assert_eq!(grep(&out, "nat", "-j DNAT").len(), 1);
    }

    #[test]
    fn no_endpoints_at_all_rejects() {
        let s = service("ns6", "svc6", "172.30.0.46", tcp("p80", 80, 80, Some(3006)), false, vec![]);
        let out = render(&[s], NODE, cidr());
        assert!(grep(&out, "nat", "ns6/svc6").is_empty());
        assert_eq!(section(&out, "nat").iter().filter(|l| l.starts_with(':')).count(), 4);
        assert_eq!(
            grep(&out, "filter", "ns6/svc6"),
            [
                "-A KUBE-SERVICES -m comment --comment \"ns6/svc6:p80 has no endpoints\" -m tcp -p tcp -d 172.30.0.46 --dport 80 -j REJECT",
                "-A KUBE-EXTERNAL-SERVICES -m comment --comment \"ns6/svc6:p80 has no endpoints\" -m addrtype --dst-type LOCAL -m tcp -p tcp --dport 3006 -j REJECT",
            ]
        );
    }

    #[test]
    fn present_jumps_are_not_added_again_and_stale_chains_go() {
        let s = service("ns1", "svc1", "172.30.0.41", tcp("p80", 80, 80, None), false, vec![ep("10.180.0.1", NODE)]);
        let mut present = [true; JUMPS.len()];
        present[11] = false; // POSTROUTING -> KUBE-POSTROUTING missing
        let existing: Vec<String> = [
            "KUBE-SERVICES",
            "KUBE-SVC-XPGD46QRK7WJZT7O",
            "KUBE-SEP-OLDOLDOLDOLDOLD1",
            "KUBE-SVC-OLDOLDOLDOLDOLD2",
            "DOCKER",
        ]
        .map(String::from)
        .to_vec();
        let state = NodeState { jump_present: present, nat_chains: &existing };
        let out = render_with(&[s], NODE, cidr(), &state);
        let jumps: Vec<&str> = out.lines().filter(|l| l.starts_with("-I ")).collect();
        assert_eq!(jumps, ["-I POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING"]);
        let nat = section(&out, "nat");
        let n = nat.len();
        assert_eq!(
            &nat[n - 3..],
            [
                "-X KUBE-SEP-OLDOLDOLDOLDOLD1",
                "-X KUBE-SVC-OLDOLDOLDOLDOLD2",
                "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS",
            ]
        );
        assert!(nat.contains(&":KUBE-SEP-OLDOLDOLDOLDOLD1 - [0:0]"));
        assert!(!out.contains("-X KUBE-SVC-XPGD46QRK7WJZT7O"));
        assert!(!out.contains("DOCKER"));
    }

    #[test]
    fn large_clusters_drop_endpoint_comments() {
        let endpoints = (0..1001u32).map(|i| ep(&Ipv4Addr::from(0x0a00_0000 + i).to_string(), NODE)).collect();
        let s = service("big", "svc", "172.30.0.99", tcp("p", 80, 80, None), false, endpoints);
        let out = render(&[s], NODE, cidr());
        assert!(!out.contains("big/svc:p ->"));
        assert!(!out.contains("--comment big/svc:p"));
        assert!(out.contains("\"big/svc:p cluster IP\""));
        assert_eq!(out.matches("--probability").count(), 1000);
    }

    #[test]
    fn restore_output_helpers() {
        assert_eq!(parse_version("iptables v1.8.9 (nf_tables)\n"), Some((1, 8, 9)));
        assert_eq!(parse_version("iptables v1.6\n"), Some((1, 6, 0)));
        assert_eq!(wait_flags((1, 8, 9)), (vec!["-w", "5", "-W", "100000"], vec!["-w", "5", "-W", "100000"]));
        assert_eq!(wait_flags((1, 4, 21)).1, Vec::<&str>::new());
        let save =
            "# Generated\n*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SVC-X - [0:0]\n-A PREROUTING -j KUBE-SVC-X\nCOMMIT\n";
        assert_eq!(chains_in_save(save), ["PREROUTING", "KUBE-SVC-X"]);
        let input = "*nat\n-A BAD\nCOMMIT\n";
        assert_eq!(failed_line("iptables-restore: line 2 failed\n", input), "(input line: -A BAD)");
        assert_eq!(
            failed_line("Couldn't load match `x'\n\nError occurred at line: 2\n", input),
            "(input line: -A BAD)"
        );
        assert_eq!(failed_line("something else\n", input), "");
    }
    /// An IPv6 ClusterIP as kube-proxy's IPv6 proxier writes it: the same
    /// chains, endpoints as `[ip]:port` (DNAT target, comments, the hashed
    /// SEP name), no localnet rule, `! -d ::1/128` on the NodePorts jump.
    #[test]
    fn ipv6_cluster_ip_as_the_ipv6_proxier_writes_it() {
        let ep6 = |ip: &str, node: &str| Endpoint { ip: ip.parse::<Ipv6Addr>().unwrap(), node: node.to_string() };
        let s = Service {
            namespace: "ns1".into(),
            name: "svc1".into(),
            cluster_ip: "fd00:96::10".parse::<Ipv6Addr>().unwrap(),
            ports: vec![tcp("p80", 80, 8080, None)],
            external_traffic_policy_local: false,
            endpoints: vec![ep6("fd00:244:0:2::5", "node-b"), ep6("fd00:244:0:1::5", NODE)],
        };
        let cidr6: Ipv6Network = "fd00:244::/48".parse().unwrap();
        let out = render(std::slice::from_ref(&s), NODE, cidr6);
        let port = &s.ports[0];
        let svc = s.svc_chain(port);
        // The chain names hash the port name as for IPv4; the endpoints'
        // hash `[ip]:port`.
        assert_eq!(svc, format!("KUBE-SVC-{}", port_proto_hash("ns1/svc1:p80", Protocol::Tcp)));
        let sep = endpoint_chain_name("ns1/svc1:p80", Protocol::Tcp, "[fd00:244:0:1::5]:8080");
        assert_eq!(s.sep_chain(port, "fd00:244:0:1::5".parse().unwrap()), sep);
        assert_eq!(
            grep(&out, "nat", "-A KUBE-SERVICES"),
            [
                "-A KUBE-SERVICES -m comment --comment \"ns1/svc1:p80 cluster IP\" -m tcp -p tcp -d fd00:96::10 \
                 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O",
                "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last \
                 rule in this chain\" -m addrtype --dst-type LOCAL ! -d ::1/128 -j KUBE-NODEPORTS",
            ]
        );
        assert_eq!(
            grep(&out, "nat", &format!("-A {svc} ")),
            [
                "-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment \"ns1/svc1:p80 cluster IP\" -m tcp -p tcp \
                 -d fd00:96::10 --dport 80 ! -s fd00:244::/48 -j KUBE-MARK-MASQ"
                    .to_string(),
                format!(
                    "-A {svc} -m comment --comment \"ns1/svc1:p80 -> [fd00:244:0:1::5]:8080\" -m statistic \
                     --mode random --probability 0.5000000000 -j {sep}"
                ),
                format!(
                    "-A {svc} -m comment --comment \"ns1/svc1:p80 -> [fd00:244:0:2::5]:8080\" -j {}",
                    s.sep_chain(port, "fd00:244:0:2::5".parse().unwrap())
                ),
            ]
        );
        assert_eq!(
            grep(&out, "nat", &format!("-A {sep} ")),
            [
                format!("-A {sep} -m comment --comment ns1/svc1:p80 -s fd00:244:0:1::5 -j KUBE-MARK-MASQ"),
                format!(
                    "-A {sep} -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination \
                     [fd00:244:0:1::5]:8080"
                ),
            ]
        );
        // No localnet rule over IPv6; the chain its jumps lead to is there.
        assert!(!out.contains("127.0.0.0/8"), "{out}");
        assert_eq!(grep(&out, "filter", "KUBE-FIREWALL - [0:0]").len(), 1);
    }
}
