//! The agent's configuration (`sluice-agent run` flags) and its validation
//! (pure). Not to be confused with `sluice_common::NodeConfig`, the
//! `NODE_CONFIG` map value the datapath reads.
use std::path::PathBuf;

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use sluice_node::paths;

/// `--ip-family`: which address families pods get.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum IpFamily {
    /// IPv4 only (sluice's behaviour before dual-stack).
    #[default]
    Ipv4,
    /// IPv6 only: pods get an IPv6 address and no IPv4 one; the node's
    /// IPv6 pod CIDR from --pod-cidr6 or its Node's `spec.podCIDRs`.
    Ipv6,
    /// An address of each family for every pod.
    Dual,
}

impl IpFamily {
    pub fn has_ipv6(self) -> bool {
        matches!(self, IpFamily::Ipv6 | IpFamily::Dual)
    }

    /// Do pods get an IPv4 address (an IPv4 pod CIDR, IPv4 routes)?
    pub fn has_ipv4(self) -> bool {
        matches!(self, IpFamily::Ipv4 | IpFamily::Dual)
    }
}

/// `--lb-mode`: how a connection from outside the cluster (NodePort,
/// externalIP, LoadBalancer IP) reaches a backend on another node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LbMode {
    /// The entry node SNATs it to its own address and a port of
    /// --snat-port-range; the answer comes back through it.
    #[default]
    Snat,
    /// Direct server return: the entry node DNATs only (the backend sees
    /// the client's address) and carries the frontend to the backend's
    /// node in an IPv4 option; that node answers the client directly, as
    /// from the frontend. Natively and over sluice's VXLAN.
    Dsr,
}

/// What the agent needs to know about its node.
#[derive(Clone, Debug, clap::Args)]
pub struct AgentConfig {
    /// This node's name (Kubernetes gives it as NODE_NAME).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// The interface that carries traffic to other nodes; by default the one
    /// holding the IPv4 default route, or, on a node without one, the IPv6
    /// default route (`daemon::uplink_choice`).
    #[arg(long, env = "SLUICE_UPLINK", default_value = "")]
    pub uplink: String,
    /// Pod MTU; by default the uplink's less VXLAN's 50 bytes (70 on an
    /// IPv6-only node, whose VXLAN runs over IPv6; the uplink's own with
    /// --tunnel=never). A packet too large for the tunnel is
    /// handed to the node's stack, which refuses it (ICMP "fragmentation
    /// needed" with the VXLAN device's MTU) or fragments it.
    #[arg(long, env = "SLUICE_MTU")]
    pub mtu: Option<u32>,
    /// How to reach other nodes' pods: `auto` routes natively to peers on
    /// the uplink's subnet and through VXLAN (UDP 8472) to the rest,
    /// `always` tunnels to every peer, `never` only routes natively (peers
    /// off the subnet are reported and left out).
    #[arg(long, env = "SLUICE_TUNNEL", value_enum, default_value_t = crate::membership::TunnelMode::Auto)]
    pub tunnel: crate::membership::TunnelMode,
    /// The device pair joining each new pod to the node: `auto` (the
    /// default): netkit when the kernel can make one (probed at start),
    /// veth otherwise; `netkit` (the program runs in the pod's transmit
    /// path; Linux 6.7+ built with CONFIG_NETKIT) or `veth` force it.
    /// `status` says which and why.
    #[arg(long, env = "SLUICE_DEVICE", value_enum, default_value_t = crate::daemon::pod_device::DeviceChoice::Auto)]
    pub device: crate::daemon::pod_device::DeviceChoice,
    /// How the TC programs attach to the uplink and each pod's device:
    /// `auto` (TCX where the kernel has it, Linux 6.6+, else legacy tc),
    /// `tcx`, or `tc` (a `clsact` qdisc and `cls_bpf` filters). Decided at
    /// start; `status` says which and why.
    #[arg(long, env = "SLUICE_ATTACH", value_enum, default_value_t = crate::daemon::attach_mode::AttachChoice::Auto)]
    pub attach: crate::daemon::attach_mode::AttachChoice,
    /// Pod CIDR of this node. With --kubernetes it may be left out: the
    /// node's own `spec.podCIDR` is used.
    #[arg(long, env = "SLUICE_POD_CIDR")]
    pub pod_cidr: Option<Ipv4Network>,
    /// Which address families pods get: `ipv4` (the default), `dual` (an
    /// IPv4 and an IPv6 address each; the node's IPv6 pod CIDR from
    /// --pod-cidr6 or its Node's `spec.podCIDRs`), or `ipv6` (IPv6-only:
    /// pods get only an IPv6 address, from --pod-cidr6 or `spec.podCIDRs`;
    /// no --pod-cidr; no VXLAN; Services in eBPF with
    /// --kube-proxy-replacement as elsewhere, but no --lb-mode=dsr).
    #[arg(long, env = "SLUICE_IP_FAMILY", value_enum, default_value_t = IpFamily::Ipv4)]
    pub ip_family: IpFamily,
    /// IPv6 pod CIDR of this node (`--ip-family dual` or `ipv6`). With --kubernetes it
    /// may be left out: the IPv6 entry of the Node's `spec.podCIDRs` is used.
    #[arg(long, env = "SLUICE_POD_CIDR6")]
    pub pod_cidr6: Option<Ipv6Network>,
    /// The cluster's whole IPv6 pod range (`--ip-family dual` or `ipv6`); every
    /// node's IPv6 pod CIDR lies inside it.
    #[arg(long, env = "SLUICE_CLUSTER_CIDR6")]
    pub cluster_cidr6: Option<Ipv6Network>,
    /// The cluster's whole (IPv4) pod range; every node's pod CIDR lies
    /// inside it. Required but with `--ip-family ipv6` (which takes none).
    #[arg(long, env = "SLUICE_CLUSTER_CIDR")]
    pub cluster_cidr: Option<Ipv4Network>,
    /// The cluster's service range, which no pod CIDR may overlap.
    #[arg(long, env = "SLUICE_SERVICE_CIDR")]
    pub service_cidr: Option<Ipv4Network>,
    /// bpffs directory for this node's maps, programs and links.
    #[arg(long, env = "SLUICE_PIN_DIR", default_value = paths::DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
    /// State: IPAM leases (written into the conflist) and the agent's status file.
    #[arg(long, env = "SLUICE_DATA_DIR", default_value = paths::DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Directory to write `10-sluice.conflist` into, once the datapath is up.
    #[arg(long, env = "SLUICE_CNI_CONF_DIR")]
    pub cni_conf_dir: Option<PathBuf>,
    /// Directory to install the CNI plugin into (as `sluice`) at start.
    #[arg(long, env = "SLUICE_CNI_BIN_DIR")]
    pub cni_bin_dir: Option<PathBuf>,
    /// Chain the reference `portmap` plugin after sluice in the conflist,
    /// so pods' hostPorts work: runtimes hand port mappings only to plugins
    /// that declare `portMappings`. `portmap` must be in the runtime's CNI
    /// bin directory (Kubernetes' CNI plugins package has it).
    #[arg(long, env = "SLUICE_HOST_PORTS")]
    pub host_ports: bool,
    /// Masquerade pods' traffic to destinations outside the cluster (the
    /// node's address as source); `--masquerade=false` to turn it off.
    #[arg(long, env = "SLUICE_MASQUERADE", default_value_t = true, action = clap::ArgAction::Set)]
    pub masquerade: bool,
    /// Destinations (besides the cluster CIDR and the nodes) that pods reach
    /// with their own address, as ip-masq-agent's nonMasqueradeCIDRs; IPv4
    /// and (with `--ip-family dual`) IPv6 ranges, each in its family's table.
    #[arg(long, env = "SLUICE_NON_MASQUERADE_CIDRS", value_delimiter = ',')]
    pub non_masquerade_cidr: Vec<IpNetwork>,
    /// Where to serve Prometheus metrics (`GET /metrics`): `node:PORT` (the
    /// default, `node:9962`) binds the node's own address (the uplink's
    /// IPv4, what Prometheus scrapes a host-network pod at), `ADDR:PORT` an
    /// address of your choice (`0.0.0.0:9962` for every interface), `off`
    /// for none.
    #[arg(long, env = "SLUICE_METRICS_ADDR", default_value = "node:9962")]
    pub metrics_addr: String,
    /// Entries of `STACK_FLOWS`, the table of flows the node's stack
    /// forwarded (kube-proxy's DNAT, hostPorts) whose replies must go back
    /// through conntrack. Default: the node's `nf_conntrack_max` (at least
    /// 65536, at most 2^20; 65536 when conntrack is not loaded). An LRU: a
    /// connection idle while this many newer such flows pass loses its
    /// entry (`status` warns; metrics count evictions). About 80 bytes of
    /// kernel memory each, allocated whole. A new size migrates the pinned
    /// table (entries copied).
    #[arg(long, env = "SLUICE_STACK_FLOWS_MAX", value_parser = clap::value_parser!(u32).range(64..=(1 << 24)))]
    pub stack_flows_max: Option<u32>,
    /// Entries of `NAT4`, the table of connections from outside translated
    /// at the uplink (two per connection). Default 262144. A plain hash,
    /// never evicting: when full, new connections from outside are dropped
    /// (`nat4_table_full`). About 100 bytes of kernel memory each,
    /// allocated whole. A new size migrates the pinned table under open
    /// connections: new ones from outside are held back (dropped, then
    /// retransmitted by their clients) for the moments the programs swap.
    #[arg(long, env = "SLUICE_NAT4_MAX", value_parser = clap::value_parser!(u32).range(1024..=(1 << 24)))]
    pub nat4_max: Option<u32>,
    /// Mount bpffs at --bpffs when none is there. Off by default: a bpffs
    /// the agent mounts itself lives only as long as its mount namespace
    /// (a container, `ip netns exec`), and every pin with it; a host
    /// process on a node without bpffs mounted may turn this on.
    #[arg(long, env = "SLUICE_MOUNT_BPFFS")]
    pub mount_bpffs: bool,
    /// Name of the health endpoint's network namespace (under /run/netns).
    /// Default `sluice-health-<node name>`, so two agents on one machine
    /// (labs, tests) never share one.
    #[arg(long, env = "SLUICE_HEALTH_NETNS")]
    pub health_netns: Option<String>,
    /// Balance Services' cluster IPs in eBPF, at the socket (cgroup
    /// connect/sendmsg programs), instead of leaving them to kube-proxy.
    /// Needs --kubernetes (Services and EndpointSlices are watched).
    /// From outside the cluster, NodePorts, externalIPs and LoadBalancer
    /// IPs are translated per packet at the uplink (`NAT4`, IPv6's `NAT6`).
    /// On every --ip-family, IPv6-only included.
    #[arg(long, env = "SLUICE_KUBE_PROXY_REPLACEMENT", default_value_t = false, action = clap::ArgAction::Set)]
    pub kube_proxy_replacement: bool,
    /// With --kube-proxy-replacement: the ports the datapath allocates when
    /// it SNATs a connection from outside the cluster to a backend on
    /// another node (MIN-MAX). Must not overlap the kernel's ephemeral
    /// ports (net.ipv4.ip_local_port_range, checked at start) nor the
    /// NodePort range.
    #[arg(long, env = "SLUICE_SNAT_PORT_RANGE", default_value_t = crate::services::snat_ports::DEFAULT_SNAT_PORT_RANGE)]
    pub snat_port_range: crate::port_ownership::ranges::PortRange,
    /// With --kube-proxy-replacement: `snat` (default) or `dsr` (direct
    /// server return: a backend on another node answers the client itself;
    /// every node of the cluster must run with the same mode, as each one
    /// strips the option for its own backends).
    #[arg(long, env = "SLUICE_LB_MODE", value_enum, default_value_t = LbMode::Snat)]
    pub lb_mode: LbMode,
    /// The cgroup v2 directory the socket load balancer attaches to: every
    /// process below it is covered. Default: the host's cgroup2 mount (its
    /// root, so host-network processes are covered too).
    #[arg(long, env = "SLUICE_CGROUP_ROOT")]
    pub cgroup_root: Option<PathBuf>,
    /// Where the container runtime pins pods' network namespaces
    /// (containerd and CRI-O: /run/netns). When a UDP Service loses a
    /// backend, connected UDP sockets to it are destroyed in these
    /// namespaces too, not only in those of processes the agent can see.
    #[arg(long, env = "SLUICE_NETNS_DIR")]
    pub netns_dir: Option<PathBuf>,
    /// The NodePort range, FIRST-LAST: the API server's
    /// `--service-node-port-range` (its default is this one). With
    /// --kube-proxy-replacement=true it is added to
    /// `net.ipv4.ip_local_reserved_ports` (so no host process gets a
    /// NodePort as its ephemeral port) and host sockets in it are reported.
    #[arg(long, env = "SLUICE_NODE_PORT_RANGE", default_value = "30000-32767")]
    pub node_port_range: crate::port_ownership::ranges::PortRange,
    /// Seconds between garbage-collection passes over the connection
    /// tables (`NAT4`, `POLICY_CT`); each pass's time is the metric
    /// `sluice_conntrack_gc_seconds`.
    #[arg(long, env = "SLUICE_CONNTRACK_GC_INTERVAL_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub conntrack_gc_interval_secs: u64,
    /// Node-local NAT64 (`--ip-family ipv6` or `dual`): a pod's IPv6
    /// packet for `64:ff9b::/96` (what DNS64, the cluster DNS's job, hands
    /// out for an IPv4-only name) is translated to IPv4 in eBPF and leaves
    /// with the node's IPv4 address (masqueraded from --nat64-pool); the
    /// answer comes back as from `64:ff9b::<address>`. TCP, UDP, ping.
    /// Needs an IPv4 address on the uplink and masquerading on.
    #[arg(long, env = "SLUICE_NAT64")]
    pub nat64: bool,
    /// The node-local IPv4 range NAT64 numbers pods from (pod CIDR offset
    /// n is the pool's address n) before masquerading them; never seen off
    /// the node. Pods numbered past its size get no NAT64 (counted as
    /// `nat64_no_pool_address`). Default: RFC 2544's benchmarking range,
    /// never routed on the Internet.
    #[arg(long, env = "SLUICE_NAT64_POOL", default_value = "198.18.0.0/16")]
    pub nat64_pool: Ipv4Network,
}

/// Where the metrics endpoint listens (`--metrics-addr`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricsBind {
    /// The node's own address (the uplink's IPv4), on this port.
    NodeAddress(u16),
    /// Exactly this address.
    Socket(std::net::SocketAddr),
}

impl MetricsBind {
    /// The address to bind, given the node's own (its uplink's IPv4, or
    /// on an IPv6-only node without one, its IPv6).
    pub fn socket(self, node_ip: std::net::IpAddr) -> std::net::SocketAddr {
        match self {
            MetricsBind::NodeAddress(port) => std::net::SocketAddr::from((node_ip, port)),
            MetricsBind::Socket(a) => a,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("pod CIDR {0} has host bits set: use {1}")]
    PodCidrNotNetwork(Ipv4Network, Ipv4Network),
    #[error("pod CIDR {pod} is not inside the cluster CIDR {cluster}")]
    PodCidrOutsideCluster { pod: Ipv4Network, cluster: Ipv4Network },
    #[error("pod CIDR {0} is too small: it needs room for at least one pod (/30 or larger)")]
    PodCidrTooSmall(Ipv4Network),
    #[error("pod CIDR {pod} overlaps the node network {network} (uplink {uplink})")]
    OverlapsNodeNetwork { pod: Ipv4Network, network: Ipv4Network, uplink: String },
    #[error("{what} {cidr} overlaps the service CIDR {service}")]
    OverlapsServices { what: &'static str, cidr: Ipv4Network, service: Ipv4Network },
    #[error("node name is empty")]
    EmptyNodeName,
    #[error("--cluster-cidr is required (but with --ip-family ipv6)")]
    ClusterCidrMissing,
    #[error("{flag} needs --ip-family dual or ipv6")]
    NeedsDualStack { flag: &'static str },
    #[error("{flag} is not for --ip-family ipv6: an IPv6-only node's pods get no IPv4 address{hint}")]
    NotForIpv6Only { flag: &'static str, hint: &'static str },
    #[error("IPv6 pod CIDR {0} has host bits set: use {1}")]
    PodCidr6NotNetwork(Ipv6Network, Ipv6Network),
    #[error("IPv6 pod CIDR {0} is too small: it needs room for at least one pod (/126 or larger)")]
    PodCidr6TooSmall(Ipv6Network),
    #[error("IPv6 pod CIDR {pod} is not inside the IPv6 cluster CIDR {cluster}")]
    PodCidr6OutsideCluster { pod: Ipv6Network, cluster: Ipv6Network },
    #[error("--metrics-addr {0:?} is not node:PORT, ADDR:PORT or off")]
    MetricsAddr(String),
    #[error("--nat64 needs --ip-family ipv6 or dual: its pods are IPv6 ones")]
    Nat64NeedsIpv6,
    #[error("--nat64 needs masquerading (--masquerade=false given): the pool's addresses never leave the node")]
    Nat64NeedsMasquerade,
    #[error("--nat64-pool {pool} {why}")]
    Nat64Pool { pool: Ipv4Network, why: String },
    #[error(
        "pod CIDR {pod} holds {endpoints} pods and the health endpoint, more than the endpoint map's {max} entries: use a /{min_prefix} or smaller"
    )]
    PodCidrLargerThanEndpointMap { pod: Ipv4Network, endpoints: u64, max: u32, min_prefix: u8 },
}

impl AgentConfig {
    /// The health endpoint's namespace name: the flag, or derived from the
    /// node name.
    pub fn health_netns_name(&self) -> String {
        self.health_netns.clone().unwrap_or_else(|| format!("{}-{}", paths::DEFAULT_HEALTH_NETNS, self.node_name))
    }

    /// `--metrics-addr` parsed, `None` for `off`.
    pub fn metrics_bind(&self) -> Result<Option<MetricsBind>, ConfigError> {
        let bad = || ConfigError::MetricsAddr(self.metrics_addr.clone());
        if self.metrics_addr == "off" {
            return Ok(None);
        }
        if let Some(port) = self.metrics_addr.strip_prefix("node:") {
            return port.parse().map(|p| Some(MetricsBind::NodeAddress(p))).map_err(|_| bad());
        }
        self.metrics_addr.parse().map(|a| Some(MetricsBind::Socket(a))).map_err(|_| bad())
    }

    /// Checks that need nothing but the configuration.
    /// The cgroup v2 directory the socket load balancer attaches to: the
    /// flag, or the host's cgroup2 mount.
    /// A directory given by the flag may be the host's `/sys/fs/cgroup`
    /// mounted into a container: on a hybrid host its cgroup2 hierarchy is
    /// the `unified` directory inside it, which is then taken.
    pub fn cgroup_root(&self) -> anyhow::Result<PathBuf> {
        use sluice_node::datapath::sock_lb::{cgroup2_mount, is_cgroup2};
        if let Some(p) = &self.cgroup_root {
            for candidate in [p.clone(), p.join("unified")] {
                if is_cgroup2(&candidate) {
                    return Ok(candidate);
                }
            }
            anyhow::bail!("--cgroup-root {}: neither it nor its `unified` directory is a cgroup2 mount", p.display());
        }
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
        cgroup2_mount(&mountinfo)
            .map(PathBuf::from)
            .ok_or_else(|| anyhow::anyhow!("no cgroup2 mount found: mount cgroup v2 or pass --cgroup-root"))
    }

    pub fn validate_static(&self) -> Result<(), ConfigError> {
        if self.node_name.is_empty() {
            return Err(ConfigError::EmptyNodeName);
        }
        self.metrics_bind()?;
        if self.cluster_cidr.is_none() && self.ip_family.has_ipv4() {
            return Err(ConfigError::ClusterCidrMissing);
        }
        if let (Some(service), Some(cluster)) = (self.service_cidr, self.cluster_cidr) {
            if service.overlaps(cluster) {
                return Err(ConfigError::OverlapsServices { what: "cluster CIDR", cidr: cluster, service });
            }
        }
        if self.nat64 {
            self.validate_nat64()?;
        }
        match self.ip_family {
            IpFamily::Ipv6 if self.pod_cidr.is_some() => {
                return Err(ConfigError::NotForIpv6Only { flag: "--pod-cidr", hint: " (give --pod-cidr6)" })
            }
            // Services in eBPF work on an IPv6-only node (IPv6 ClusterIPs at
            // the socket, IPv6 NodePorts at the uplink, `lb6`), but direct
            // server return carries the frontend in an IPv4 option: `lb6`
            // SNATs every remote backend, so asking for DSR there is refused
            // rather than silently not done.
            IpFamily::Ipv6 if self.kube_proxy_replacement && self.lb_mode == LbMode::Dsr => {
                return Err(ConfigError::NotForIpv6Only {
                    flag: "--lb-mode=dsr",
                    hint: ": direct server return carries the frontend in an IPv4 option; IPv6 NodePorts to \
                           another node's backend are SNATed in this version (--lb-mode=snat)",
                })
            }
            IpFamily::Ipv4 if self.pod_cidr6.is_some() => {
                return Err(ConfigError::NeedsDualStack { flag: "--pod-cidr6" })
            }
            IpFamily::Ipv4 if self.cluster_cidr6.is_some() => {
                return Err(ConfigError::NeedsDualStack { flag: "--cluster-cidr6" })
            }
            IpFamily::Ipv4 if self.non_masquerade_cidr.iter().any(IpNetwork::is_ipv6) => {
                return Err(ConfigError::NeedsDualStack { flag: "an IPv6 --non-masquerade-cidr" })
            }
            _ => {}
        }
        Ok(())
    }

    /// `--nat64`'s checks: IPv6 pods, masquerading, a pool of its own.
    fn validate_nat64(&self) -> Result<(), ConfigError> {
        if !self.ip_family.has_ipv6() {
            return Err(ConfigError::Nat64NeedsIpv6);
        }
        if !self.masquerade {
            return Err(ConfigError::Nat64NeedsMasquerade);
        }
        let pool = self.nat64_pool;
        let bad = |why: String| Err(ConfigError::Nat64Pool { pool, why });
        if pool.network() != pool.ip() {
            return bad(format!("has host bits set: use {}/{}", pool.network(), pool.prefix()));
        }
        // Every IPv6 pod offset the allocator hands out (below
        // `IPV6_HOST_NUMBERS`) must have its pool address.
        if pool.prefix() == 0 || pool.prefix() > 16 {
            return bad(
                "must be a /1 to /16: a pod numbered up to 0xffff in its IPv6 pod CIDR needs its address".into()
            );
        }
        for (what, other) in [("the cluster CIDR", self.cluster_cidr), ("the service CIDR", self.service_cidr)] {
            if let Some(other) = other.filter(|o| o.overlaps(pool)) {
                return bad(format!("overlaps {what} {other}"));
            }
        }
        Ok(())
    }

    /// Checks of this node's IPv6 pod CIDR (from the flag or from
    /// Kubernetes) against the IPv6 cluster CIDR, when given.
    pub fn validate_pod_cidr6(&self, pod: Ipv6Network) -> Result<(), ConfigError> {
        let network = Ipv6Network::new(pod.network(), pod.prefix()).expect("prefix came from a valid network");
        if network.ip() != pod.ip() {
            return Err(ConfigError::PodCidr6NotNetwork(pod, network));
        }
        if pod.prefix() > 126 {
            return Err(ConfigError::PodCidr6TooSmall(pod));
        }
        if let Some(cluster) = self.cluster_cidr6 {
            if !(cluster.contains(pod.network()) && cluster.prefix() <= pod.prefix()) {
                return Err(ConfigError::PodCidr6OutsideCluster { pod, cluster });
            }
        }
        Ok(())
    }

    /// Checks of this node's pod CIDR (from the flag or from Kubernetes)
    /// against the cluster, the services and the node's own network.
    pub fn validate_pod_cidr(&self, pod: Ipv4Network, node_network: Ipv4Network) -> Result<(), ConfigError> {
        let network = Ipv4Network::new(pod.network(), pod.prefix()).expect("prefix came from a valid network");
        if network.ip() != pod.ip() {
            return Err(ConfigError::PodCidrNotNetwork(pod, network));
        }
        if pod.prefix() > 30 {
            return Err(ConfigError::PodCidrTooSmall(pod));
        }
        if let Some(cluster) = self.cluster_cidr.filter(|c| !(c.contains(pod.network()) && c.prefix() <= pod.prefix()))
        {
            return Err(ConfigError::PodCidrOutsideCluster { pod, cluster });
        }
        // Every address but the network's and the broadcast one is an
        // endpoint: the pods', and the health endpoint's.
        let endpoints = (1u64 << (32 - pod.prefix())) - 2;
        let max = sluice_common::maps::limits::MAX_ENDPOINTS;
        if endpoints > max as u64 {
            let min_prefix = (0..=30u8).find(|p| (1u64 << (32 - p)) - 2 <= max as u64).unwrap_or(30);
            return Err(ConfigError::PodCidrLargerThanEndpointMap { pod, endpoints, max, min_prefix });
        }
        if pod.overlaps(node_network) {
            return Err(ConfigError::OverlapsNodeNetwork { pod, network: node_network, uplink: self.uplink.clone() });
        }
        if let Some(service) = self.service_cidr {
            if pod.overlaps(service) {
                return Err(ConfigError::OverlapsServices { what: "pod CIDR", cidr: pod, service });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(cluster: &str, service: Option<&str>) -> AgentConfig {
        AgentConfig {
            node_name: "n1".into(),
            uplink: "eth0".into(),
            pod_cidr: None,
            ip_family: IpFamily::Ipv4,
            pod_cidr6: None,
            cluster_cidr6: None,
            cluster_cidr: Some(cluster.parse().unwrap()),
            service_cidr: service.map(|s| s.parse().unwrap()),
            pin_dir: "/sys/fs/bpf/x".into(),
            data_dir: "/tmp".into(),
            cni_conf_dir: None,
            cni_bin_dir: None,
            host_ports: false,
            health_netns: None,
            kube_proxy_replacement: false,
            snat_port_range: crate::services::snat_ports::DEFAULT_SNAT_PORT_RANGE,
            lb_mode: LbMode::Snat,
            cgroup_root: None,
            netns_dir: None,
            mtu: None,
            tunnel: crate::membership::TunnelMode::Auto,
            device: crate::daemon::pod_device::DeviceChoice::Auto,
            attach: crate::daemon::attach_mode::AttachChoice::Auto,
            masquerade: true,
            non_masquerade_cidr: vec![],
            mount_bpffs: false,
            metrics_addr: "off".into(),
            stack_flows_max: None,
            nat4_max: None,
            node_port_range: crate::port_ownership::ranges::DEFAULT_NODE_PORT_RANGE,
            conntrack_gc_interval_secs: 30,
            nat64: false,
            nat64_pool: "198.18.0.0/16".parse().unwrap(),
        }
    }

    #[test]
    fn nat64_needs_ipv6_pods_masquerading_and_a_pool_of_its_own() {
        let ipv6_only = AgentConfig {
            ip_family: IpFamily::Ipv6,
            pod_cidr6: Some("fd00:244:0:1::/64".parse().unwrap()),
            nat64: true,
            ..cfg("10.244.0.0/16", Some("10.96.0.0/12"))
        };
        assert_eq!(ipv6_only.validate_static(), Ok(()));
        let dual = AgentConfig { ip_family: IpFamily::Dual, ..ipv6_only.clone() };
        assert_eq!(dual.validate_static(), Ok(()), "harmless on dual-stack");
        let v4 = AgentConfig { ip_family: IpFamily::Ipv4, pod_cidr6: None, ..ipv6_only.clone() };
        assert_eq!(v4.validate_static(), Err(ConfigError::Nat64NeedsIpv6));
        let no_masq = AgentConfig { masquerade: false, ..ipv6_only.clone() };
        assert_eq!(no_masq.validate_static(), Err(ConfigError::Nat64NeedsMasquerade));
        for (pool, why) in [
            ("198.18.0.1/16", "host bits"),
            ("10.244.0.0/16", "cluster CIDR"),
            ("10.100.0.0/16", "service CIDR"),
            ("198.18.0.0/31", "/1 to /16"),
            ("198.18.0.0/17", "/1 to /16"),
        ] {
            let c = AgentConfig { nat64_pool: pool.parse().unwrap(), ..ipv6_only.clone() };
            let err = c.validate_static().unwrap_err().to_string();
            assert!(err.contains(why) && err.contains("--nat64-pool"), "{pool}: {err}");
        }
        // Off, the pool is not looked at.
        let off = AgentConfig { nat64: false, nat64_pool: "10.244.0.0/16".parse().unwrap(), ..ipv6_only };
        assert_eq!(off.validate_static(), Ok(()));
    }

    #[test]
    fn the_pod_device_and_the_node_port_range_default_and_parse() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            agent: AgentConfig,
        }
        use clap::Parser;
        // What a node gets with no --device (SLUICE_DEVICE unset: clap reads
        // the environment, and `cargo test` is not run with it).
        if std::env::var_os("SLUICE_DEVICE").is_none() {
            let cli =
                Cli::try_parse_from(["sluice-agent", "--node-name", "n1", "--cluster-cidr", "10.244.0.0/16"]).unwrap();
            assert_eq!(cli.agent.device, crate::daemon::pod_device::DeviceChoice::Auto);
        }
        let forced = Cli::try_parse_from([
            "sluice-agent",
            "--node-name",
            "n1",
            "--cluster-cidr",
            "10.244.0.0/16",
            "--device",
            "veth",
        ]);
        assert_eq!(forced.unwrap().agent.device, crate::daemon::pod_device::DeviceChoice::Veth);
        let base = ["sluice-agent", "--node-name", "n1", "--cluster-cidr", "10.244.0.0/16"];
        if std::env::var_os("SLUICE_NODE_PORT_RANGE").is_none() {
            let cli = Cli::try_parse_from(base).unwrap();
            assert_eq!(cli.agent.node_port_range, crate::port_ownership::ranges::DEFAULT_NODE_PORT_RANGE);
        }
        let narrow = Cli::try_parse_from(base.iter().copied().chain(["--node-port-range", "20000-20999"]));
        assert_eq!(narrow.unwrap().agent.node_port_range.to_string(), "20000-20999");
        let bad = Cli::try_parse_from(base.iter().copied().chain(["--node-port-range", "32767-30000"]))
            .err()
            .unwrap()
            .to_string();
        assert!(bad.contains("--node-port-range") && bad.contains("the first port is above the last"), "{bad}");
        // The connection tables' GC interval: 30 s unless set, never 0.
        if std::env::var_os("SLUICE_CONNTRACK_GC_INTERVAL_SECS").is_none() {
            assert_eq!(Cli::try_parse_from(base).unwrap().agent.conntrack_gc_interval_secs, 30);
        }
        let every = Cli::try_parse_from(base.iter().copied().chain(["--conntrack-gc-interval-secs", "5"]));
        assert_eq!(every.unwrap().agent.conntrack_gc_interval_secs, 5);
        assert!(Cli::try_parse_from(base.iter().copied().chain(["--conntrack-gc-interval-secs", "0"])).is_err());
    }

    fn net(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    #[test]
    fn validation() {
        let c = cfg("10.244.0.0/16", Some("10.96.0.0/12"));
        let lan = net("192.168.1.0/24");
        assert_eq!(c.validate_static(), Ok(()));
        assert_eq!(c.validate_pod_cidr(net("10.244.1.0/24"), lan), Ok(()));
        assert!(matches!(c.validate_pod_cidr(net("10.244.1.7/24"), lan), Err(ConfigError::PodCidrNotNetwork(..))));
        assert!(matches!(
            c.validate_pod_cidr(net("10.245.1.0/24"), lan),
            Err(ConfigError::PodCidrOutsideCluster { .. })
        ));
        assert!(matches!(c.validate_pod_cidr(net("10.0.0.0/8"), lan), Err(ConfigError::PodCidrOutsideCluster { .. })));
        assert!(matches!(c.validate_pod_cidr(net("10.244.1.0/31"), lan), Err(ConfigError::PodCidrTooSmall(_))));
        // The largest pod CIDR the endpoint map holds, and one bit more.
        assert_eq!(c.validate_pod_cidr(net("10.244.16.0/20"), lan), Ok(()));
        let too_big = c.validate_pod_cidr(net("10.244.32.0/19"), lan).unwrap_err();
        assert!(matches!(too_big, ConfigError::PodCidrLargerThanEndpointMap { endpoints: 8190, max: 4096, .. }));
        assert!(too_big.to_string().contains("8190") && too_big.to_string().contains("/20"), "{too_big}");
        assert!(matches!(
            c.validate_pod_cidr(net("10.244.1.0/24"), net("10.244.0.0/20")),
            Err(ConfigError::OverlapsNodeNetwork { .. })
        ));
        let wide = cfg("10.0.0.0/8", Some("10.96.0.0/12"));
        assert!(matches!(wide.validate_static(), Err(ConfigError::OverlapsServices { .. })));
        let no_svc = cfg("10.0.0.0/8", None);
        assert_eq!(no_svc.validate_pod_cidr(net("10.100.0.0/24"), lan), Ok(()));
        let svc_inside = AgentConfig { service_cidr: Some(net("10.100.0.0/16")), ..cfg("10.0.0.0/8", None) };
        assert!(matches!(
            svc_inside.validate_pod_cidr(net("10.100.0.0/24"), lan),
            Err(ConfigError::OverlapsServices { what: "pod CIDR", .. })
        ));
    }

    #[test]
    fn ip_family_validation() {
        let base = cfg("10.244.0.0/16", None);
        assert_eq!(base.ip_family, IpFamily::Ipv4);
        let net6 = |s: &str| s.parse::<Ipv6Network>().unwrap();
        let dual = AgentConfig {
            ip_family: IpFamily::Dual,
            cluster_cidr6: Some(net6("fd00:244::/56")),
            ..cfg("10.244.0.0/16", None)
        };
        assert_eq!(dual.validate_static(), Ok(()));
        assert_eq!(dual.validate_pod_cidr6(net6("fd00:244:0:1::/64")), Ok(()));
        assert!(matches!(
            dual.validate_pod_cidr6(net6("fd00:244:0:1::5/64")),
            Err(ConfigError::PodCidr6NotNetwork(..))
        ));
        assert!(matches!(
            dual.validate_pod_cidr6(net6("fd00:245::/64")),
            Err(ConfigError::PodCidr6OutsideCluster { .. })
        ));
        assert!(matches!(dual.validate_pod_cidr6(net6("fd00:244::/127")), Err(ConfigError::PodCidr6TooSmall(_))));
        // IPv6-only: accepted without an IPv4 pod CIDR; refused with one
        // and with every peer tunneled, by name.
        let ipv6_only = AgentConfig {
            ip_family: IpFamily::Ipv6,
            pod_cidr6: Some(net6("fd00:244:0:1::/64")),
            ..cfg("10.244.0.0/16", None)
        };
        assert_eq!(ipv6_only.validate_static(), Ok(()));
        assert!(!ipv6_only.ip_family.has_ipv4() && ipv6_only.ip_family.has_ipv6());
        let with_v4 = AgentConfig { pod_cidr: Some(net("10.244.1.0/24")), ..ipv6_only.clone() };
        let err = with_v4.validate_static().unwrap_err();
        assert!(matches!(err, ConfigError::NotForIpv6Only { flag: "--pod-cidr", .. }), "{err}");
        assert!(err.to_string().contains("--pod-cidr6"), "{err}");
        // Services in eBPF on an IPv6-only node: accepted (issue 28), but
        // direct server return (an IPv4 option) is refused by name.
        let kpr = AgentConfig { kube_proxy_replacement: true, ..ipv6_only.clone() };
        assert_eq!(kpr.validate_static(), Ok(()));
        let dsr = AgentConfig { lb_mode: LbMode::Dsr, ..kpr.clone() };
        let err = dsr.validate_static().unwrap_err();
        assert!(matches!(err, ConfigError::NotForIpv6Only { flag: "--lb-mode=dsr", .. }), "{err}");
        assert!(err.to_string().contains("--lb-mode=snat"), "{err}");
        // DSR without Services in eBPF means nothing, and dual-stack keeps it.
        assert_eq!(AgentConfig { lb_mode: LbMode::Dsr, ..ipv6_only.clone() }.validate_static(), Ok(()));
        let dual_dsr = AgentConfig { kube_proxy_replacement: true, lb_mode: LbMode::Dsr, ..dual.clone() };
        assert_eq!(dual_dsr.validate_static(), Ok(()));
        // VXLAN over the IPv6 underlay: every peer tunneled is fine.
        let always = AgentConfig { tunnel: crate::membership::TunnelMode::Always, ..ipv6_only.clone() };
        assert_eq!(always.validate_static(), Ok(()));
        // No IPv4 cluster range for an IPv6-only node; every other family needs one.
        let no_cluster = AgentConfig { cluster_cidr: None, ..ipv6_only.clone() };
        assert_eq!(no_cluster.validate_static(), Ok(()));
        let v4_without = AgentConfig { cluster_cidr: None, ..base.clone() };
        assert_eq!(v4_without.validate_static(), Err(ConfigError::ClusterCidrMissing));
        let dual_without = AgentConfig { cluster_cidr: None, ..dual.clone() };
        assert_eq!(dual_without.validate_static(), Err(ConfigError::ClusterCidrMissing));
        let stray = AgentConfig { pod_cidr6: Some(net6("fd00:244::/64")), ..cfg("10.244.0.0/16", None) };
        assert_eq!(stray.validate_static(), Err(ConfigError::NeedsDualStack { flag: "--pod-cidr6" }));
        let v6_exception = vec!["fd00:99::/64".parse().unwrap()];
        let stray = AgentConfig { non_masquerade_cidr: v6_exception.clone(), ..cfg("10.244.0.0/16", None) };
        let want = Err(ConfigError::NeedsDualStack { flag: "an IPv6 --non-masquerade-cidr" });
        assert_eq!(stray.validate_static(), want);
        assert_eq!(AgentConfig { non_masquerade_cidr: v6_exception, ..dual }.validate_static(), Ok(()));
    }

    #[test]
    fn metrics_bind_defaults_to_the_node_address() {
        let node: std::net::IpAddr = "172.30.0.1".parse().unwrap();
        let with = |a: &str| AgentConfig { metrics_addr: a.into(), ..cfg("10.244.0.0/16", None) };
        let default = with("node:9962").metrics_bind().unwrap().unwrap();
        assert_eq!(default, MetricsBind::NodeAddress(9962));
        assert_eq!(default.socket(node).to_string(), "172.30.0.1:9962");
        let any = with("0.0.0.0:9100").metrics_bind().unwrap().unwrap();
        assert_eq!(any.socket(node).to_string(), "0.0.0.0:9100");
        assert_eq!(with("off").metrics_bind(), Ok(None));
        assert_eq!(default.socket("fd00:30::1".parse().unwrap()).to_string(), "[fd00:30::1]:9962");
        for bad in ["node:", "node:x", "9962", "localhost:9962", ""] {
            assert_eq!(with(bad).metrics_bind(), Err(ConfigError::MetricsAddr(bad.into())), "{bad}");
            assert!(with(bad).validate_static().is_err(), "{bad}");
        }
    }
}
