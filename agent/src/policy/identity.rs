//! Identities: a number per class of peer address, and the table from
//! address prefixes to them (`POLICY_IDENTITIES` for the IPv4 prefixes,
//! `POLICY_IDENTITIES6` for the IPv6 ones: one table, split by family
//! when written).
//!
//! A pod's IPv6 address is classed as its IPv4 one (same namespace,
//! labels, ports), so it gets the same identity unless an ipBlock holds
//! one of its addresses and not the other (an ipBlock is of one family):
//! one `POLICY_RULES` entry serves both families. This node's addresses of
//! both families are `IDENTITY_HOST`, other nodes' a remote-node class, and
//! both pod cluster CIDRs `IDENTITY_UNKNOWN_CLUSTER`.
//!
//! A pod's class is what any policy could tell it apart by: its namespace
//! and the namespace's labels, its labels, its named container ports
//! (egress named ports resolve against the destination), and the policy
//! ipBlocks its address falls in (ipBlock matches pod IPs too). Addresses
//! outside the cluster get a class by the ipBlocks they fall in; other
//! nodes' addresses likewise. Two replicas of a Deployment share a class,
//! so policy entries grow with the number of classes, not of pods.
//!
//! Numbers are node-local (every node resolves a peer's address itself)
//! and stable: a class keeps its number while it lives
//! ([`IdentityAllocator`]), so a pod added to a Deployment changes no
//! policy entry, only one `POLICY_IDENTITIES` element.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
};

use ipnetwork::IpNetwork;
use sluice_common::policy::{
    IDENTITY_FIRST_ALLOCATED, IDENTITY_HOST, IDENTITY_REMOTE_NODE, IDENTITY_UNKNOWN_CLUSTER, IDENTITY_WORLD,
};

use super::model::{host_prefix as host, IpBlock, Labels, PolicyModel, Protocol};

/// What an identity stands for.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IdentityClass {
    Pod {
        namespace: String,
        namespace_labels: Labels,
        labels: Labels,
        /// (name, protocol, port) of every named container port.
        named_ports: BTreeSet<(String, Protocol, u16)>,
        /// The policy ipBlocks the address is in.
        blocks: BTreeSet<IpBlock>,
    },
    /// Another node's address; no blocks: `IDENTITY_REMOTE_NODE`.
    RemoteNode { blocks: BTreeSet<IpBlock> },
    /// An address outside the cluster CIDR; no blocks: `IDENTITY_WORLD`.
    External { blocks: BTreeSet<IpBlock> },
}

impl IdentityClass {
    pub fn blocks(&self) -> &BTreeSet<IpBlock> {
        match self {
            IdentityClass::Pod { blocks, .. }
            | IdentityClass::RemoteNode { blocks }
            | IdentityClass::External { blocks } => blocks,
        }
    }

    /// The port `name` resolves to on pods of this class.
    pub fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        match self {
            IdentityClass::Pod { named_ports, .. } => {
                named_ports.iter().find(|(n, p, _)| n == name && *p == protocol).map(|&(_, _, port)| port)
            }
            _ => None,
        }
    }
}

/// Hands out identity numbers; keeps a class's number while it is in use.
#[derive(Clone, Debug, Default)]
pub struct IdentityAllocator {
    by_class: BTreeMap<IdentityClass, u32>,
    next: u32,
}

impl IdentityAllocator {
    /// The class's identity: a reserved one for the classes that have one,
    /// else the number it already has, else a new one.
    pub fn identity(&mut self, class: &IdentityClass) -> u32 {
        match class {
            IdentityClass::External { blocks } if blocks.is_empty() => return IDENTITY_WORLD,
            IdentityClass::RemoteNode { blocks } if blocks.is_empty() => return IDENTITY_REMOTE_NODE,
            _ => {}
        }
        if let Some(&id) = self.by_class.get(class) {
            return id;
        }
        let id = self.next.max(IDENTITY_FIRST_ALLOCATED);
        self.next = id + 1;
        self.by_class.insert(class.clone(), id);
        id
    }

    /// Forgets every class not in `live` (numbers are not reused).
    pub fn retain(&mut self, live: &BTreeSet<IdentityClass>) {
        self.by_class.retain(|class, _| live.contains(class));
    }

    /// Forgets one class (its number is not reused).
    pub fn forget(&mut self, class: &IdentityClass) {
        self.by_class.remove(class);
    }

    /// Forgets every class whose number `live` does not hold.
    pub fn retain_ids(&mut self, live: impl Fn(u32) -> bool) {
        self.by_class.retain(|_, id| live(*id));
    }

    pub fn len(&self) -> usize {
        self.by_class.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_class.is_empty()
    }
}

/// `POLICY_IDENTITIES` and `POLICY_IDENTITIES6` as the compiler wants
/// them: prefix (of either family) → identity, and what each allocated
/// identity stands for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdentityTable {
    pub prefixes: BTreeMap<IpNetwork, u32>,
    pub classes: BTreeMap<u32, IdentityClass>,
}

impl IdentityTable {
    /// The identity of `ip`, as the LPM trie answers (longest prefix;
    /// `IDENTITY_WORLD` when none matches; only prefixes of `ip`'s family).
    pub fn lookup(&self, ip: impl Into<IpAddr>) -> u32 {
        let ip = ip.into();
        self.prefixes
            .iter()
            .filter(|(net, _)| net.contains(ip))
            .max_by_key(|(net, _)| net.prefix())
            .map_or(IDENTITY_WORLD, |(_, &id)| id)
    }

    /// Builds the table for `node` (its own address is `IDENTITY_HOST`).
    ///
    /// - every known, non-host-network pod's address (/32, /128): its pod
    ///   class, the same for both families unless an ipBlock tells them
    ///   apart (a pod
    ///   whose namespace is not known yet: `IDENTITY_UNKNOWN_CLUSTER`, since
    ///   namespace selectors cannot be judged for it);
    /// - node addresses (both families): `IDENTITY_HOST` for `node`, the
    ///   others a remote-node class;
    /// - the cluster CIDRs: `IDENTITY_UNKNOWN_CLUSTER`;
    /// - every prefix a policy ipBlock names (cidr or except) that is not
    ///   inside the cluster CIDR: the external class of the addresses whose
    ///   longest match it is; inside the cluster CIDR: unknown-cluster, so
    ///   an ipBlock never lets an unknown pod address through.
    pub fn build(model: &PolicyModel, node: &str, allocator: &mut IdentityAllocator) -> Self {
        let blocks: Vec<IpBlock> = model.ip_blocks().into_iter().collect();
        // The blocks `ip` is in, by index into `blocks`.
        let block_indices =
            |ip: IpAddr| -> Vec<usize> { (0..blocks.len()).filter(|&i| blocks[i].contains(ip)).collect() };
        let blocks_of =
            |indices: &[usize]| -> BTreeSet<IpBlock> { indices.iter().map(|&i| blocks[i].clone()).collect() };
        let mut table = IdentityTable::default();
        let mut live = BTreeSet::new();
        let mut add = |table: &mut IdentityTable, net: IpNetwork, class: IdentityClass| {
            let id = allocator.identity(&class);
            table.prefixes.entry(net).or_insert(id);
            if id >= IDENTITY_FIRST_ALLOCATED {
                table.classes.insert(id, class.clone());
            }
            live.insert(class);
            id
        };
        // Pods that look alike (a Deployment's replicas: same namespace,
        // labels, ports, ipBlocks) make their class once: at 10,000 pods
        // building and comparing classes was most of a rebuild. The first
        // pod of each class still allocates it, in the same order as before.
        // Blocks by index: hashing a block would hash all its excepts, for
        // every pod.
        type Alike<'m> = (&'m str, &'m Labels, &'m [super::model::ContainerPort], Vec<usize>);
        let mut seen: HashMap<Alike, u32> = HashMap::new();
        for pod in model.pods.values().filter(|p| !p.host_network) {
            let Some(ns) = model.namespaces.get(&pod.key.namespace) else {
                for &ip in &pod.ips {
                    table.prefixes.insert(host(ip), IDENTITY_UNKNOWN_CLUSTER);
                }
                continue;
            };
            for &ip in &pod.ips {
                let alike: Alike = (ns.name.as_str(), &pod.labels, pod.ports.as_slice(), block_indices(ip));
                if let Some(&id) = seen.get(&alike) {
                    table.prefixes.entry(host(ip)).or_insert(id);
                    continue;
                }
                let named_ports = pod
                    .ports
                    .iter()
                    .filter_map(|p| p.name.as_ref().map(|n| (n.clone(), p.protocol, p.port)))
                    .collect::<BTreeSet<_>>();
                let class = IdentityClass::Pod {
                    namespace: ns.name.clone(),
                    namespace_labels: ns.labels.clone(),
                    labels: pod.labels.clone(),
                    named_ports,
                    blocks: blocks_of(&alike.3),
                };
                let id = add(&mut table, host(ip), class);
                seen.insert(alike, id);
            }
        }
        for (name, ips) in &model.nodes {
            for &ip in ips {
                if name == node {
                    table.prefixes.insert(host(ip), IDENTITY_HOST);
                } else {
                    add(&mut table, host(ip), IdentityClass::RemoteNode { blocks: blocks_of(&block_indices(ip)) });
                }
            }
        }
        for &cidr in &model.cluster_cidrs {
            table.prefixes.entry(cidr).or_insert(IDENTITY_UNKNOWN_CLUSTER);
        }
        let named: BTreeSet<IpNetwork> =
            blocks.iter().flat_map(|b| std::iter::once(b.cidr).chain(b.except().iter().copied())).collect();
        for prefix in named {
            if table.prefixes.contains_key(&prefix) {
                continue;
            }
            if model.in_cluster_cidr(prefix) {
                table.prefixes.insert(prefix, IDENTITY_UNKNOWN_CLUSTER);
                continue;
            }
            let covering = blocks.iter().filter(|b| b.covers_prefix(prefix)).cloned().collect();
            add(&mut table, prefix, IdentityClass::External { blocks: covering });
        }
        allocator.retain(&live);
        table
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::policy::model::{Namespace, NetworkPolicy, Peer, PodKey, PolicyName, PolicyTypes, Rule};
    use crate::policy::{model::Pod, selector::LabelSelector};

    fn pod(ns: &str, name: &str, ip: [u8; 4], labels: &[(&str, &str)]) -> Pod {
        Pod {
            key: PodKey::new(ns, name),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ips: vec![Ipv4Addr::from(ip).into()],
            node: "n1".into(),
            host_network: false,
            ports: vec![],
        }
    }

    fn egress_to_block(cidr: &str, except: &[&str]) -> NetworkPolicy {
        NetworkPolicy {
            name: PolicyName::new("x", "cidr"),
            pod_selector: LabelSelector::everything(),
            types: PolicyTypes { ingress: false, egress: true },
            ingress: vec![],
            egress: vec![Rule {
                peers: vec![Peer::IpBlock(IpBlock::new(
                    cidr.parse().unwrap(),
                    except.iter().map(|e| e.parse().unwrap()),
                ))],
                ports: vec![],
            }],
        }
    }

    fn model() -> PolicyModel {
        let mut m = PolicyModel::default();
        m.add_namespace(Namespace::new("x", Labels::new()));
        m.add_pod(pod("x", "a", [10, 244, 1, 2], &[("app", "web")]));
        m.add_pod(pod("x", "b", [10, 244, 2, 2], &[("app", "web")]));
        m.add_pod(pod("y", "c", [10, 244, 2, 3], &[("app", "web")]));
        m.nodes.insert("n1".into(), vec![Ipv4Addr::new(192, 168, 1, 1).into()]);
        m.nodes.insert("n2".into(), vec![Ipv4Addr::new(192, 168, 1, 2).into()]);
        m.cluster_cidrs.push("10.244.0.0/16".parse().unwrap());
        m
    }

    #[test]
    fn address_classes_without_policies() {
        let mut alloc = IdentityAllocator::default();
        let t = IdentityTable::build(&model(), "n1", &mut alloc);
        let a = t.lookup(Ipv4Addr::new(10, 244, 1, 2));
        assert!(a >= IDENTITY_FIRST_ALLOCATED);
        assert_eq!(t.lookup(Ipv4Addr::new(10, 244, 2, 2)), a, "same labels, same namespace: same identity");
        assert_eq!(t.lookup(Ipv4Addr::new(10, 244, 2, 3)), IDENTITY_UNKNOWN_CLUSTER, "namespace y not known yet");
        assert_eq!(t.lookup(Ipv4Addr::new(10, 244, 9, 9)), IDENTITY_UNKNOWN_CLUSTER);
        assert_eq!(t.lookup(Ipv4Addr::new(192, 168, 1, 1)), IDENTITY_HOST);
        assert_eq!(t.lookup(Ipv4Addr::new(192, 168, 1, 2)), IDENTITY_REMOTE_NODE);
        assert_eq!(t.lookup(Ipv4Addr::new(8, 8, 8, 8)), IDENTITY_WORLD);
        // on n2 the nodes swap roles
        let t2 = IdentityTable::build(&model(), "n2", &mut alloc);
        assert_eq!(t2.lookup(Ipv4Addr::new(192, 168, 1, 2)), IDENTITY_HOST);
        assert_eq!(t2.lookup(Ipv4Addr::new(192, 168, 1, 1)), IDENTITY_REMOTE_NODE);
    }

    #[test]
    fn ip_blocks_split_pods_and_the_world_but_never_claim_unknown_cluster_addresses() {
        let mut m = model();
        // 0.0.0.0/4 holds the cluster CIDR; except one pod and a /24 of
        // the cluster CIDR, and an outside /8.
        m.add_policy(egress_to_block("0.0.0.0/4", &["10.244.2.2/32", "10.244.7.0/24", "11.0.0.0/8"]));
        let mut alloc = IdentityAllocator::default();
        let t = IdentityTable::build(&m, "n1", &mut alloc);
        let a = t.lookup(Ipv4Addr::new(10, 244, 1, 2));
        let b = t.lookup(Ipv4Addr::new(10, 244, 2, 2));
        assert_ne!(a, b, "x/a is in the block, x/b excepted: their identities differ");
        assert_eq!(t.classes[&a].blocks().len(), 1);
        assert!(t.classes[&b].blocks().is_empty());
        assert_eq!(t.lookup(Ipv4Addr::new(10, 244, 7, 1)), IDENTITY_UNKNOWN_CLUSTER, "except inside the cluster CIDR");
        assert_eq!(t.lookup(Ipv4Addr::new(10, 244, 9, 9)), IDENTITY_UNKNOWN_CLUSTER, "cluster CIDR beats the /4");
        let outside = t.lookup(Ipv4Addr::new(9, 9, 9, 9));
        assert_eq!(t.classes[&outside].blocks().len(), 1, "outside, in the block");
        assert_eq!(t.lookup(Ipv4Addr::new(11, 1, 1, 1)), IDENTITY_WORLD, "excepted: no block, plain world");
        assert_eq!(t.lookup(Ipv4Addr::new(20, 1, 1, 1)), IDENTITY_WORLD);
        let n2 = t.lookup(Ipv4Addr::new(192, 168, 1, 2));
        assert_eq!(n2, IDENTITY_REMOTE_NODE, "192.168/16 is outside 0/4");
    }

    #[test]
    fn identities_are_stable_while_their_class_lives() {
        let mut alloc = IdentityAllocator::default();
        let mut m = model();
        let t1 = IdentityTable::build(&m, "n1", &mut alloc);
        let web = t1.lookup(Ipv4Addr::new(10, 244, 1, 2));
        m.add_pod(pod("x", "d", [10, 244, 3, 3], &[("app", "db")]));
        let t2 = IdentityTable::build(&m, "n1", &mut alloc);
        assert_eq!(t2.lookup(Ipv4Addr::new(10, 244, 1, 2)), web);
        let db = t2.lookup(Ipv4Addr::new(10, 244, 3, 3));
        assert_ne!(db, web);
        m.pods.remove(&PodKey::new("x", "d"));
        IdentityTable::build(&m, "n1", &mut alloc);
        m.add_pod(pod("x", "d", [10, 244, 3, 3], &[("app", "db")]));
        let t3 = IdentityTable::build(&m, "n1", &mut alloc);
        assert_ne!(t3.lookup(Ipv4Addr::new(10, 244, 3, 3)), db, "a released number is not handed out again");
        assert_eq!(t3.lookup(Ipv4Addr::new(10, 244, 1, 2)), web);
    }

    fn ip6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    /// `model()` on a dual-stack cluster: every pod and node has an IPv6
    /// address too, and the IPv6 pod cluster CIDR is known.
    fn dual_stack_model() -> PolicyModel {
        let mut m = model();
        for (name, v6) in [("a", "fd00:244:1::2"), ("b", "fd00:244:2::2"), ("c", "fd00:244:2::3")] {
            let ns = if name == "c" { "y" } else { "x" };
            m.pods.get_mut(&PodKey::new(ns, name)).unwrap().ips.push(ip6(v6).into());
        }
        m.nodes.get_mut("n1").unwrap().push(ip6("fd00:168::1").into());
        m.nodes.get_mut("n2").unwrap().push(ip6("fd00:168::2").into());
        m.cluster_cidrs.push("fd00:244::/32".parse().unwrap());
        m
    }

    #[test]
    fn a_pods_ipv6_address_carries_its_ipv4_identity_and_nodes_and_cluster_cidrs_classify_alike() {
        let m = dual_stack_model();
        let mut alloc = IdentityAllocator::default();
        let t = IdentityTable::build(&m, "n1", &mut alloc);
        let a4 = t.lookup(Ipv4Addr::new(10, 244, 1, 2));
        assert!(a4 >= IDENTITY_FIRST_ALLOCATED);
        assert_eq!(t.lookup(ip6("fd00:244:1::2")), a4, "x/a's IPv6 is x/a: one identity, one rule for both");
        assert_eq!(t.lookup(ip6("fd00:244:2::2")), a4, "x/b (same labels) over IPv6 too");
        assert_eq!(t.prefixes[&"fd00:244:1::2/128".parse().unwrap()], a4, "a /128 of its own");
        assert_eq!(t.lookup(ip6("fd00:244:2::3")), IDENTITY_UNKNOWN_CLUSTER, "namespace y not known yet");
        assert_eq!(t.lookup(ip6("fd00:244:9::9")), IDENTITY_UNKNOWN_CLUSTER, "IPv6 cluster CIDR, no pod known");
        assert_eq!(t.lookup(ip6("fd00:168::1")), IDENTITY_HOST, "this node's IPv6");
        assert_eq!(t.lookup(ip6("fd00:168::2")), IDENTITY_REMOTE_NODE, "another node's IPv6");
        assert_eq!(t.lookup(ip6("2001:db8::1")), IDENTITY_WORLD);
        // An IPv4 prefix never answers for an IPv6 address, nor the reverse.
        assert_eq!(t.lookup(ip6("::a0f4:102")), IDENTITY_WORLD, "10.244.1.2's bits in IPv6 are not x/a");
        let t2 = IdentityTable::build(&m, "n2", &mut alloc);
        assert_eq!(t2.lookup(ip6("fd00:168::2")), IDENTITY_HOST);
        assert_eq!(t2.lookup(ip6("fd00:168::1")), IDENTITY_REMOTE_NODE);
        // Without the IPv6 cluster CIDR an unknown IPv6 pod address would
        // be the world, which an ipBlock for outside could let in.
        let mut no6 = m.clone();
        no6.cluster_cidrs.retain(|c| c.is_ipv4());
        let t3 = IdentityTable::build(&no6, "n1", &mut alloc);
        assert_eq!(t3.lookup(ip6("fd00:244:9::9")), IDENTITY_WORLD);
    }

    #[test]
    fn ipv6_ip_blocks_with_except_split_ipv6_addresses_and_never_touch_ipv4_ones() {
        let mut m = dual_stack_model();
        // ::/0 except x/b's IPv6 and an outside /64.
        m.add_policy(egress_to_block("::/0", &["fd00:244:2::2/128", "2001:db8:0:7::/64"]));
        let mut alloc = IdentityAllocator::default();
        let t = IdentityTable::build(&m, "n1", &mut alloc);
        let a6 = t.lookup(ip6("fd00:244:1::2"));
        let b6 = t.lookup(ip6("fd00:244:2::2"));
        let a4 = t.lookup(Ipv4Addr::new(10, 244, 1, 2));
        let b4 = t.lookup(Ipv4Addr::new(10, 244, 2, 2));
        assert_eq!(t.classes[&a6].blocks().len(), 1, "x/a's IPv6 is in ::/0");
        assert!(t.classes[&b6].blocks().is_empty(), "x/b's IPv6 is excepted");
        assert_ne!(a6, b6);
        assert!(t.classes[&a4].blocks().is_empty(), "an IPv6 block holds no IPv4 address");
        assert_eq!(a4, b4, "their IPv4 addresses are alike");
        assert_eq!(b6, a4, "x/b's IPv6 (no block) is the plain x/app=web class, as the IPv4s");
        let outside = t.lookup(ip6("2001:db8::1"));
        assert_eq!(t.classes[&outside].blocks().len(), 1, "outside, in the block");
        assert_eq!(t.lookup(ip6("2001:db8:0:7::1")), IDENTITY_WORLD, "excepted outside: plain world");
        assert_eq!(t.lookup(ip6("fd00:244:9::9")), IDENTITY_UNKNOWN_CLUSTER, "cluster CIDR beats ::/0");
        assert_eq!(t.lookup(Ipv4Addr::new(8, 8, 8, 8)), IDENTITY_WORLD, "::/0 is no IPv4 block");
        let n2 = t.lookup(ip6("fd00:168::2"));
        assert_eq!(t.classes[&n2].blocks().len(), 1, "another node's IPv6 is in ::/0");
        // And an IPv4 block classes no IPv6 address.
        let mut m4 = dual_stack_model();
        m4.add_policy(egress_to_block("0.0.0.0/0", &[]));
        let t4 = IdentityTable::build(&m4, "n1", &mut alloc);
        let a4 = t4.lookup(Ipv4Addr::new(10, 244, 1, 2));
        let a6 = t4.lookup(ip6("fd00:244:1::2"));
        assert_eq!(t4.classes[&a4].blocks().len(), 1);
        assert!(t4.classes[&a6].blocks().is_empty(), "0.0.0.0/0 holds no IPv6 address");
        assert_eq!(t4.lookup(ip6("2001:db8::1")), IDENTITY_WORLD);
    }
}
