//! `LB4_SOURCE_RANGES` and its IPv6 twin `LB6_SOURCE_RANGES` kept equal
//! to the plans' `loadBalancerSourceRanges` (one entry per LoadBalancer
//! ingress IP frontend × range of its family), one generic pass per
//! family (`RangeFamily`).
//!
//! A frontend's `SERVICE_SOURCE_RANGES` flag and its ranges are separate
//! maps, so the order matters: new ranges go in before the Service maps'
//! pass (`add_new`) and old ones come out after it (`remove_old`). A
//! frontend that gains the flag then already has its ranges (never a
//! moment where every client is refused), and one that loses a range
//! stops admitting it only once its flag's pass is done.
use std::{
    collections::BTreeSet,
    fmt::Debug,
    net::{Ipv4Addr, Ipv6Addr},
};

use anyhow::Result;
use sluice_common::{nat::SourceRangeKey, nat6::SourceRangeKey6, services6::ip6_words};
use sluice_node::datapath::{
    nat4_maps::{SourceRangeKind, SourceRangeTable},
    pinned_maps::ip_be,
};
use tracing::warn;

use crate::services::{
    model::Family,
    plan::{Frontend, Plan},
};

/// One entry: a frontend and a range (its address in the key, its prefix
/// length beside).
pub type RangeEntry<K = SourceRangeKey> = (K, u8);

/// A family's trie key: a frontend and a range's (masked) address.
pub trait RangeFamily: Family {
    type Key: Copy + Ord + Debug;
    /// The address's length in bits (the longest prefix).
    const BITS: u8;
    /// `ip` with the bits past `len` cleared.
    fn masked(ip: Self, len: u8) -> Self;
    fn key(frontend: &Frontend<Self>, net: Self) -> Self::Key;
}

impl RangeFamily for Ipv4Addr {
    type Key = SourceRangeKey;
    const BITS: u8 = 32;
    fn masked(ip: Self, len: u8) -> Self {
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len)) };
        Ipv4Addr::from(u32::from(ip) & mask)
    }
    fn key(f: &Frontend<Self>, net: Self) -> SourceRangeKey {
        SourceRangeKey {
            vip_be: ip_be(f.ip),
            port_be: f.port.to_be(),
            protocol: f.protocol.number(),
            _pad: 0,
            src_be: ip_be(net),
        }
    }
}

impl RangeFamily for Ipv6Addr {
    type Key = SourceRangeKey6;
    const BITS: u8 = 128;
    fn masked(ip: Self, len: u8) -> Self {
        let mask = if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len)) };
        Ipv6Addr::from(u128::from(ip) & mask)
    }
    fn key(f: &Frontend<Self>, net: Self) -> SourceRangeKey6 {
        SourceRangeKey6 {
            vip: ip6_words(f.ip.octets()),
            port_be: f.port.to_be(),
            protocol: f.protocol.number(),
            _pad: 0,
            src: ip6_words(net.octets()),
        }
    }
}

/// Every range of every frontend of `plan` that has any. The address is
/// masked to its prefix: the trie stores prefixes, so a key is found
/// again as it was written.
pub fn desired<A: RangeFamily>(plan: &Plan<A>) -> BTreeSet<RangeEntry<A::Key>> {
    plan.iter()
        .flat_map(|(f, p)| {
            p.source_ranges.iter().map(move |(ip, len)| {
                let len = (*len).min(A::BITS);
                (A::key(f, A::masked(*ip, len)), len)
            })
        })
        .collect()
}

/// What the map lacks and what it has too many of.
pub fn diff<K: Ord + Copy>(
    desired: &BTreeSet<RangeEntry<K>>,
    actual: &BTreeSet<RangeEntry<K>>,
) -> (Vec<RangeEntry<K>>, Vec<RangeEntry<K>>) {
    (desired.difference(actual).copied().collect(), actual.difference(desired).copied().collect())
}

/// The map's side, which the tests fake.
pub trait RangeTable<K> {
    fn all(&self) -> Result<Vec<RangeEntry<K>>>;
    fn insert(&mut self, key: K, len: u8) -> Result<()>;
    fn remove(&mut self, key: K, len: u8) -> Result<()>;
}

impl<K: SourceRangeKind> RangeTable<K> for SourceRangeTable<K> {
    fn all(&self) -> Result<Vec<RangeEntry<K>>> {
        SourceRangeTable::all(self)
    }
    fn insert(&mut self, key: K, len: u8) -> Result<()> {
        SourceRangeTable::insert(self, key, len)
    }
    fn remove(&mut self, key: K, len: u8) -> Result<()> {
        SourceRangeTable::remove(self, key, len)
    }
}

/// Write the ranges `plan` has and the map lacks. Returns how many; the
/// first error after trying them all.
pub fn add_new<A: RangeFamily>(table: &mut impl RangeTable<A::Key>, plan: &Plan<A>) -> Result<usize> {
    let actual: BTreeSet<RangeEntry<A::Key>> = table.all()?.into_iter().collect();
    let (add, _) = diff(&desired(plan), &actual);
    each(add, |(k, len)| table.insert(k, len), "loadBalancerSourceRanges entry not written; retrying")
}

/// Remove the ranges the map has and `plan` does not.
pub fn remove_old<A: RangeFamily>(table: &mut impl RangeTable<A::Key>, plan: &Plan<A>) -> Result<usize> {
    let actual: BTreeSet<RangeEntry<A::Key>> = table.all()?.into_iter().collect();
    let (_, del) = diff(&desired(plan), &actual);
    each(del, |(k, len)| table.remove(k, len), "loadBalancerSourceRanges entry not removed; retrying")
}

fn each<K: Copy + Debug>(
    entries: Vec<RangeEntry<K>>,
    mut f: impl FnMut(RangeEntry<K>) -> Result<()>,
    what: &str,
) -> Result<usize> {
    let mut first_error = None;
    let n = entries.len();
    for e in entries {
        if let Err(err) = f(e) {
            warn!(error = %format!("{err:#}"), entry = ?e, "{what}");
            first_error.get_or_insert(err);
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use sluice_common::services::FrontendKind;

    use super::*;
    use crate::services::{
        model::{Protocol, ServiceName},
        plan::{Frontend, FrontendPlan},
    };

    struct Fake<K = SourceRangeKey>(BTreeSet<RangeEntry<K>>);
    impl<K> Default for Fake<K> {
        fn default() -> Self {
            Fake(BTreeSet::new())
        }
    }
    impl<K: Ord + Copy> RangeTable<K> for Fake<K> {
        fn all(&self) -> Result<Vec<RangeEntry<K>>> {
            Ok(self.0.iter().copied().collect())
        }
        fn insert(&mut self, key: K, len: u8) -> Result<()> {
            self.0.insert((key, len));
            Ok(())
        }
        fn remove(&mut self, key: K, len: u8) -> Result<()> {
            self.0.remove(&(key, len));
            Ok(())
        }
    }

    fn plan_of<A: RangeFamily + std::str::FromStr>(vip: A, ranges: &[(&str, u8)]) -> Plan<A>
    where
        A::Err: Debug,
    {
        let f = Frontend { ip: vip, port: 80, protocol: Protocol::Tcp };
        let p = FrontendPlan {
            service: ServiceName::new("default", "lb"),
            backends: vec![],
            affinity_timeout_secs: 0,
            no_local_endpoints: false,
            external_local: false,
            local_backends: 0,
            source_ranges: ranges.iter().map(|(ip, len)| (ip.parse().unwrap(), *len)).collect(),
            kind: FrontendKind::LoadBalancer,
            service_port_id: 0,
        };
        [(f, p)].into()
    }

    fn plan(ranges: &[(&str, u8)]) -> Plan {
        plan_of(Ipv4Addr::new(198, 51, 100, 7), ranges)
    }

    #[test]
    fn ranges_are_added_before_and_removed_after_and_stored_as_prefixes() {
        let mut t = Fake::default();
        // A host address inside a /24 is stored as the /24's network.
        assert_eq!(add_new(&mut t, &plan(&[("203.0.113.9", 24), ("192.0.2.1", 32)])).unwrap(), 2);
        let mut stored: Vec<(Ipv4Addr, u8)> =
            t.0.iter().map(|(k, len)| (Ipv4Addr::from(u32::from_be(k.src_be)), *len)).collect();
        stored.sort();
        assert_eq!(stored, vec![(Ipv4Addr::new(192, 0, 2, 1), 32), (Ipv4Addr::new(203, 0, 113, 0), 24)]);
        let key = t.0.iter().next().unwrap().0;
        assert_eq!(
            (key.vip_be, key.port_be, key.protocol),
            (u32::from(Ipv4Addr::new(198, 51, 100, 7)).to_be(), 80u16.to_be(), 6)
        );
        // The next plan drops one: adding leaves it, removing takes it.
        let next = plan(&[("203.0.113.0", 24)]);
        assert_eq!(add_new(&mut t, &next).unwrap(), 0);
        assert_eq!(t.0.len(), 2, "still admitted until the Service maps switched");
        assert_eq!(remove_old(&mut t, &next).unwrap(), 1);
        assert_eq!(t.0, desired(&next));
        assert_eq!(remove_old(&mut t, &Plan::<Ipv4Addr>::new()).unwrap(), 1);
        assert!(t.0.is_empty());
    }

    #[test]
    fn ipv6_ranges_are_stored_as_prefixes_under_their_ipv6_frontend() {
        let vip: Ipv6Addr = "2001:db8:5::7".parse().unwrap();
        let mut t = Fake::<SourceRangeKey6>::default();
        let p = plan_of(vip, &[("fd00:30::fe", 64), ("2001:db8::1", 128), ("::", 0)]);
        assert_eq!(add_new(&mut t, &p).unwrap(), 3);
        let mut stored: Vec<(Ipv6Addr, u8)> =
            t.0.iter().map(|(k, len)| (Ipv6Addr::from(sluice_common::services6::ip6_octets(k.src)), *len)).collect();
        stored.sort();
        let want: Vec<(Ipv6Addr, u8)> = [("::", 0), ("2001:db8::1", 128), ("fd00:30::", 64)]
            .iter()
            .map(|(a, l)| (a.parse().unwrap(), *l))
            .collect();
        assert_eq!(stored, want, "a host address inside a /64 is stored as the /64's network");
        let key = t.0.iter().next().unwrap().0;
        assert_eq!((key.vip, key.port_be, key.protocol), (ip6_words(vip.octets()), 80u16.to_be(), 6));
        assert_eq!(remove_old(&mut t, &Plan::<Ipv6Addr>::new()).unwrap(), 3);
        assert!(t.0.is_empty());
    }
}
