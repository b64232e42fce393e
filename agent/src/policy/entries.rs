//! Lowering a compiled node into the entries of its three policy maps
//! (`common/src/policy.rs`): `POLICY_IDENTITIES`, `POLICY_ENDPOINTS`,
//! `POLICY_RULES`. What the policy reconciler (not built yet) will write;
//! what `evaluate.rs` looks up exactly as the datapath will.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use ipnetwork::IpNetwork;
use sluice_common::policy::{
    Direction, EndpointPolicy, PolicyKey, PolicyValue, IDENTITY_ANY, POLICY_PREFIX_ANY_PORT, POLICY_PREFIX_ANY_PROTOCOL,
};

use super::{
    compile::{CompiledNode, Peers, PodPolicy, Ports},
    model::{PodKey, PolicyModel, PolicyName},
};

/// A `POLICY_RULES` entry's key: the key data and its prefix length.
pub type RuleKey = (PolicyKey, u32);

/// One node's policy maps, as data.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeMaps {
    /// `POLICY_IDENTITIES`.
    pub identities: BTreeMap<IpNetwork, u32>,
    /// `POLICY_ENDPOINTS`: only pods some policy isolates.
    pub endpoints: BTreeMap<IpAddr, EndpointPolicy>,
    /// `POLICY_RULES`.
    pub rules: BTreeMap<RuleKey, PolicyValue>,
    /// `PolicyValue::policy_ref` → policy.
    pub policy_names: Vec<PolicyName>,
    /// Which local pod an endpoint address is, and its policy (for
    /// explanations; not in any map).
    pub pods_by_ip: BTreeMap<IpAddr, PodPolicy>,
}

/// Lowers `compiled`. Rule set ids are handed out 1, 2, ... in pod order;
/// the reconciler will instead write each changed pod's entries under a
/// fresh id and then switch `POLICY_ENDPOINTS` (see `EndpointPolicy`).
pub fn lower(model: &PolicyModel, compiled: &CompiledNode) -> NodeMaps {
    let names: BTreeSet<&PolicyName> =
        compiled.pods.values().flat_map(|p| p.ingress.rules.iter().chain(&p.egress.rules)).map(|r| &r.policy).collect();
    let policy_names: Vec<PolicyName> = names.into_iter().cloned().collect();
    let policy_ref = |name: &PolicyName| policy_names.binary_search(name).map_or(u32::MAX, |i| i as u32);
    let mut maps = NodeMaps { identities: compiled.identities.prefixes.clone(), ..NodeMaps::default() };
    let mut next_rules_id = 1;
    for (key, policy) in &compiled.pods {
        let Some(pod) = model.pods.get(key) else { continue };
        for &ip in &pod.ips {
            maps.pods_by_ip.insert(ip, policy.clone());
        }
        let mut flags = 0;
        for direction in [Direction::Ingress, Direction::Egress] {
            if policy.direction(direction).isolated() {
                flags |= direction.isolation_flag();
            }
        }
        if flags == 0 {
            continue;
        }
        let rules_id = next_rules_id;
        next_rules_id += 1;
        for &ip in &pod.ips {
            maps.endpoints.insert(ip, EndpointPolicy { rules_id, flags });
        }
        for direction in [Direction::Ingress, Direction::Egress] {
            for rule in &policy.direction(direction).rules {
                let value = PolicyValue { policy_ref: policy_ref(&rule.policy) };
                let ids: Vec<u32> = match &rule.peers {
                    Peers::Any => vec![IDENTITY_ANY],
                    Peers::Identities(ids) => ids.iter().copied().collect(),
                };
                for id in ids {
                    for (rule_key, prefix_len) in rule_keys(rules_id, id, direction, rule.ports) {
                        // Additive: an entry two policies ask for names the
                        // first (by name), as it allows either way.
                        maps.rules
                            .entry((rule_key, prefix_len))
                            .and_modify(|v| v.policy_ref = v.policy_ref.min(value.policy_ref))
                            .or_insert(value);
                    }
                }
            }
        }
    }
    maps.policy_names = policy_names;
    maps
}

/// The `POLICY_RULES` keys of one rule for one peer identity.
pub fn rule_keys(rules_id: u32, identity: u32, direction: Direction, ports: Ports) -> Vec<RuleKey> {
    let key = |protocol: u8, port: u16| PolicyKey::probe(rules_id, identity, direction, protocol, port);
    match ports {
        Ports::All => vec![(key(0, 0), POLICY_PREFIX_ANY_PROTOCOL)],
        Ports::Protocol(p) => vec![(key(p.number(), 0), POLICY_PREFIX_ANY_PORT)],
        Ports::Range { protocol, first, last } => port_prefixes(first, last)
            .into_iter()
            .map(|(port, bits)| (key(protocol.number(), port), POLICY_PREFIX_ANY_PORT + bits))
            .collect(),
    }
}

/// The fewest (port, leading bits) prefixes that tile `first..=last`
/// exactly: at most 30 for any range.
pub fn port_prefixes(first: u16, last: u16) -> Vec<(u16, u32)> {
    let mut out = Vec::new();
    let (mut start, end) = (u32::from(first), u32::from(last));
    while start <= end {
        let mut size: u32 = if start == 0 { 1 << 16 } else { 1 << start.trailing_zeros().min(16) };
        while start + size - 1 > end {
            size >>= 1;
        }
        out.push((start as u16, 16 - size.trailing_zeros()));
        start += size;
    }
    out
}

/// Longest-prefix lookup over IPv4 prefixes, as the kernel's LPM trie.
pub fn lpm<V: Copy>(table: &BTreeMap<IpNetwork, V>, ip: IpAddr) -> Option<V> {
    table.iter().filter(|(net, _)| net.contains(ip)).max_by_key(|(net, _)| net.prefix()).map(|(_, &v)| v)
}

/// The `PodKey` an endpoint address belongs to, if it is a local pod.
pub fn local_pod(maps: &NodeMaps, ip: IpAddr) -> Option<&PodKey> {
    maps.pods_by_ip.get(&ip).map(|p| &p.pod)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_tile_exactly() {
        assert_eq!(port_prefixes(80, 80), vec![(80, 16)]);
        assert_eq!(port_prefixes(0, 65535), vec![(0, 0)]);
        assert_eq!(port_prefixes(8064, 8095), vec![(8064, 11)]);
        assert_eq!(port_prefixes(65535, 65535), vec![(65535, 16)]);
        for (first, last) in [(1, 65535), (1000, 2000), (80, 81), (0, 0), (32767, 32769), (12345, 54321)] {
            let prefixes = port_prefixes(first, last);
            assert!(prefixes.len() <= 30, "{first}-{last}: {} prefixes", prefixes.len());
            for port in 0..=65535u32 {
                let covering = prefixes
                    .iter()
                    .filter(|&&(p, bits)| {
                        let mask = if bits == 0 { 0 } else { u32::MAX << (32 - bits) >> 16 };
                        (port & mask) == (u32::from(p) & mask)
                    })
                    .count();
                let inside = (u32::from(first)..=u32::from(last)).contains(&port);
                assert_eq!(covering, usize::from(inside), "{first}-{last}: port {port} covered {covering} times");
            }
        }
    }
}
