//! What `sluice-agent status --policy NAMESPACE/POD` shows: per local pod,
//! its isolation per direction (and the policies that isolate it) and its
//! effective allow rules, each naming its policy, with peers as pod names
//! and address blocks rather than identity numbers. The policy loop writes
//! it (`<data dir>/policy-pods.json`) after each pass that changed it.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::{
    compile::{DirectionPolicy, Peers, PodPolicy, Ports},
    identity::IdentityTable,
    model::{is_host_prefix, PodKey, Protocol},
};

pub const FILE_NAME: &str = "policy-pods.json";
/// Peers listed by name per rule; the rest are counted.
const PEERS_LISTED: usize = 10;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllowView {
    /// `["any peer"]`, or pods ("namespace/name") and address blocks.
    pub peers: Vec<String>,
    /// Peers beyond those listed.
    #[serde(default)]
    pub more_peers: usize,
    /// "all ports", "TCP (all ports)", "TCP/80", "UDP/1000-2000".
    pub ports: String,
    pub policy: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectionView {
    /// Empty: not isolated, everything allowed.
    pub isolated_by: Vec<String>,
    pub allow: Vec<AllowView>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodPolicyView {
    /// Both families' addresses.
    pub ips: Vec<IpAddr>,
    /// Of its IPv4 address.
    pub identity: u32,
    /// Of its IPv6 address (the IPv4 one's unless an ipBlock tells them
    /// apart; 0 in a report from before IPv6 policy).
    #[serde(default)]
    pub identity6: u32,
    pub ingress: DirectionView,
    pub egress: DirectionView,
}

/// A local pod's addresses and identities, as the maps hold them (the
/// input of [`PolicyReport::build`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalPod {
    pub ips: Vec<IpAddr>,
    pub identity: u32,
    pub identity6: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyReport {
    /// By "namespace/name".
    pub pods: BTreeMap<String, PodPolicyView>,
}

fn ports_text(ports: Ports) -> String {
    let proto = |p: Protocol| match p {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
        Protocol::Sctp => "SCTP",
    };
    match ports {
        Ports::All => "all ports".into(),
        Ports::Protocol(p) => format!("{} (all ports)", proto(p)),
        Ports::Range { protocol, first, last } if first == last => format!("{}/{first}", proto(protocol)),
        Ports::Range { protocol, first, last } => format!("{}/{first}-{last}", proto(protocol)),
    }
}

impl PolicyReport {
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(FILE_NAME)
    }

    /// From a compiled node: `pods_by_ip` names the pods behind identities
    /// (by either family's address); `local` holds each local pod's
    /// addresses and identities (IPv4, IPv6) as the maps hold them.
    pub fn build(
        identities: &IdentityTable,
        compiled: &BTreeMap<PodKey, PodPolicy>,
        pods_by_ip: &BTreeMap<IpAddr, PodKey>,
        local: &BTreeMap<PodKey, LocalPod>,
    ) -> Self {
        // Identity → what carries it: pod names, or prefixes; only for the
        // identities some local pod's rule names.
        let named: BTreeSet<u32> = compiled
            .values()
            .flat_map(|p| p.ingress.rules.iter().chain(&p.egress.rules))
            .filter_map(|r| match &r.peers {
                Peers::Identities(ids) => Some(ids.iter().copied()),
                Peers::Any => None,
            })
            .flatten()
            .collect();
        let mut holders: BTreeMap<u32, BTreeSet<String>> = BTreeMap::new();
        for (prefix, &id) in identities.prefixes.iter().filter(|(_, id)| named.contains(id)) {
            let name = match (is_host_prefix(*prefix), pods_by_ip.get(&prefix.ip())) {
                (true, Some(pod)) => pod.to_string(),
                _ => prefix.to_string(),
            };
            holders.entry(id).or_default().insert(name);
        }
        let direction = |d: &DirectionPolicy| DirectionView {
            isolated_by: d.isolated_by.iter().map(ToString::to_string).collect(),
            allow: d
                .rules
                .iter()
                .map(|r| {
                    let peers: Vec<String> = match &r.peers {
                        Peers::Any => vec!["any peer".into()],
                        Peers::Identities(ids) => {
                            ids.iter().flat_map(|id| holders.get(id).into_iter().flatten().cloned()).collect()
                        }
                    };
                    let more_peers = peers.len().saturating_sub(PEERS_LISTED);
                    AllowView {
                        peers: peers.into_iter().take(PEERS_LISTED).collect(),
                        more_peers,
                        ports: ports_text(r.ports),
                        policy: r.policy.to_string(),
                    }
                })
                .collect(),
        };
        let pods = compiled
            .iter()
            .map(|(key, p)| {
                let LocalPod { ips, identity, identity6 } = local.get(key).cloned().unwrap_or_default();
                let view = PodPolicyView {
                    ips,
                    identity,
                    identity6,
                    ingress: direction(&p.ingress),
                    egress: direction(&p.egress),
                };
                (key.to_string(), view)
            })
            .collect();
        PolicyReport { pods }
    }

    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
        serde_json::from_slice(&bytes).with_context(|| format!("parse {}", path.display()))
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(self)?).with_context(|| format!("write {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("rename to {}", path.display()))
    }
}

/// `status --policy` as text.
pub fn render(pod: &str, view: &PodPolicyView) -> String {
    let ips: Vec<String> = view.ips.iter().map(ToString::to_string).collect();
    // The IPv6 address's identity, where an ipBlock gave it its own.
    let identity6 = match view.identity6 {
        id6 if id6 != 0 && id6 != view.identity && view.ips.iter().any(IpAddr::is_ipv6) => {
            format!(" (IPv6: {id6})")
        }
        _ => String::new(),
    };
    let mut out = format!(
        "pod {pod} ({}), identity {}{identity6}\n",
        if ips.is_empty() { "no address yet".to_string() } else { ips.join(", ") },
        view.identity
    );
    for (name, d, peer_word) in [("ingress", &view.ingress, "from"), ("egress", &view.egress, "to")] {
        if d.isolated_by.is_empty() {
            out += &format!("  {name}: not isolated (no policy selects it for {name}): everything allowed\n");
            continue;
        }
        out += &format!("  {name}: isolated by {}\n", d.isolated_by.join(", "));
        if d.allow.is_empty() {
            out += "    no rule allows anything\n";
        }
        for a in &d.allow {
            let mut peers = a.peers.join(", ");
            if a.peers.is_empty() {
                peers = "no peer (the rule's selectors match nothing)".into();
            }
            if a.more_peers > 0 {
                peers += &format!(" and {} more", a.more_peers);
            }
            out += &format!("    allow {peer_word} {peers} on {} (policy {})\n", a.ports, a.policy);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::policy::{
        compile::compile_node,
        identity::IdentityAllocator,
        model::{
            Labels, Namespace, NamespaceScope, NetworkPolicy, Peer, Pod, PolicyModel, PolicyName, PolicyTypes, PortRef,
            PortSpec, Rule,
        },
        names::NamesTable,
        selector::LabelSelector,
    };

    fn pod(name: &str, ip: [u8; 4]) -> Pod {
        Pod {
            key: PodKey::new("x", name),
            labels: [("pod".to_string(), name.to_string())].into(),
            ips: vec![Ipv4Addr::from(ip).into()],
            node: "n1".into(),
            host_network: false,
            ports: vec![],
        }
    }

    #[test]
    fn a_pods_isolation_and_allow_rules_read_as_names() {
        let mut m = PolicyModel::default();
        m.add_namespace(Namespace::new("x", Labels::new()));
        m.add_pod(pod("a", [10, 244, 1, 2]));
        m.add_pod(pod("b", [10, 244, 1, 3]));
        m.add_policy(NetworkPolicy {
            name: PolicyName::new("x", "allow-b"),
            pod_selector: LabelSelector::labels([("pod", "a")]),
            types: PolicyTypes { ingress: true, egress: true },
            ingress: vec![Rule {
                peers: vec![Peer::Pods {
                    namespaces: NamespaceScope::PolicyNamespace,
                    pods: LabelSelector::labels([("pod", "b")]),
                }],
                ports: vec![PortSpec { protocol: Protocol::Tcp, port: Some(PortRef::Number(80)), end_port: Some(81) }],
            }],
            egress: vec![],
        });
        let compiled = compile_node(&m, "n1", &mut IdentityAllocator::default());
        let a = LocalPod { ips: vec![Ipv4Addr::new(10, 244, 1, 2).into()], identity: 256, identity6: 256 };
        let local = [(PodKey::new("x", "a"), a)].into();
        let report = PolicyReport::build(&compiled.identities, &compiled.pods, &NamesTable::pods_of(&m), &local);
        let a = &report.pods["x/a"];
        assert_eq!(a.ingress.isolated_by, ["x/allow-b"]);
        assert_eq!(
            a.ingress.allow,
            [AllowView {
                peers: vec!["x/b".into()],
                more_peers: 0,
                ports: "TCP/80-81".into(),
                policy: "x/allow-b".into()
            }]
        );
        let text = render("x/a", a);
        assert!(text.contains("ingress: isolated by x/allow-b"), "{text}");
        assert!(text.contains("allow from x/b on TCP/80-81 (policy x/allow-b)"), "{text}");
        assert!(text.contains("egress: isolated by x/allow-b\n    no rule allows anything"), "{text}");
        let b = render("x/b", &report.pods["x/b"]);
        assert!(b.contains("ingress: not isolated"), "{b}");
    }

    #[test]
    fn a_dual_stack_pod_shows_both_addresses_and_its_peers_by_name_over_either_family() {
        let mut m = PolicyModel::default();
        m.add_namespace(Namespace::new("x", Labels::new()));
        let mut a = pod("a", [10, 244, 1, 2]);
        a.ips.push("fd00:244:1::2".parse().unwrap());
        let mut b = pod("b", [10, 244, 1, 3]);
        b.ips.push("fd00:244:1::3".parse().unwrap());
        m.add_pod(a.clone());
        m.add_pod(b);
        m.add_policy(NetworkPolicy {
            name: PolicyName::new("x", "allow-b"),
            pod_selector: LabelSelector::labels([("pod", "a")]),
            types: PolicyTypes { ingress: true, egress: false },
            ingress: vec![Rule {
                peers: vec![Peer::Pods {
                    namespaces: NamespaceScope::PolicyNamespace,
                    pods: LabelSelector::labels([("pod", "b")]),
                }],
                ports: vec![],
            }],
            egress: vec![],
        });
        let compiled = compile_node(&m, "n1", &mut IdentityAllocator::default());
        let local = [(PodKey::new("x", "a"), LocalPod { ips: a.ips.clone(), identity: 256, identity6: 256 })].into();
        let report = PolicyReport::build(&compiled.identities, &compiled.pods, &NamesTable::pods_of(&m), &local);
        let view = &report.pods["x/a"];
        assert_eq!(view.ingress.allow[0].peers, ["x/b"], "x/b by name, once, though it has a /32 and a /128");
        let text = render("x/a", view);
        assert!(text.starts_with("pod x/a (10.244.1.2, fd00:244:1::2), identity 256\n"), "{text}");
        // An ipBlock gave the IPv6 address an identity of its own: shown.
        let split = PodPolicyView { identity6: 300, ..view.clone() };
        assert!(render("x/a", &split).starts_with("pod x/a (10.244.1.2, fd00:244:1::2), identity 256 (IPv6: 300)\n"));
        // A report written before IPv6 policy still reads.
        let old: PodPolicyView =
            serde_json::from_value(serde_json::json!({"ips": ["10.244.1.2"], "identity": 256, "ingress": {"isolated_by": [], "allow": []}, "egress": {"isolated_by": [], "allow": []}})).unwrap();
        assert_eq!(old.identity6, 0);
    }
}
