//! `LB4_SOURCE_RANGES` kept equal to the plan's `loadBalancerSourceRanges`
//! (one entry per LoadBalancer ingress IP frontend × range).
//!
//! A frontend's `SERVICE_SOURCE_RANGES` flag and its ranges are separate
//! maps, so the order matters: new ranges go in before the Service maps'
//! pass (`add_new`) and old ones come out after it (`remove_old`). A
//! frontend that gains the flag then already has its ranges (never a
//! moment where every client is refused), and one that loses a range
//! stops admitting it only once its flag's pass is done.
use std::collections::BTreeSet;

use anyhow::Result;
use sluice_common::nat::SourceRangeKey;
use sluice_node::datapath::{nat4_maps::SourceRanges, pinned_maps::ip_be};
use tracing::warn;

use crate::services::plan::Plan;

/// One entry: a frontend and a range (its address in `src_be`, its prefix
/// length beside).
pub type RangeEntry = (SourceRangeKey, u8);

/// Every range of every frontend of `plan` that has any. The address is
/// masked to its prefix: the trie stores prefixes, so a key is found
/// again as it was written.
pub fn desired(plan: &Plan) -> BTreeSet<RangeEntry> {
    plan.iter()
        .flat_map(|(f, p)| {
            p.source_ranges.iter().map(move |(ip, len)| {
                let len = (*len).min(32);
                let mask = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len)) };
                let net = std::net::Ipv4Addr::from(u32::from(*ip) & mask);
                let key = SourceRangeKey {
                    vip_be: ip_be(f.ip),
                    port_be: f.port.to_be(),
                    protocol: f.protocol.number(),
                    _pad: 0,
                    src_be: ip_be(net),
                };
                (key, len)
            })
        })
        .collect()
}

/// What the map lacks and what it has too many of.
pub fn diff(desired: &BTreeSet<RangeEntry>, actual: &BTreeSet<RangeEntry>) -> (Vec<RangeEntry>, Vec<RangeEntry>) {
    (desired.difference(actual).copied().collect(), actual.difference(desired).copied().collect())
}

/// The map's side, which the tests fake.
pub trait RangeTable {
    fn all(&self) -> Result<Vec<RangeEntry>>;
    fn insert(&mut self, key: SourceRangeKey, len: u8) -> Result<()>;
    fn remove(&mut self, key: SourceRangeKey, len: u8) -> Result<()>;
}

impl RangeTable for SourceRanges {
    fn all(&self) -> Result<Vec<RangeEntry>> {
        SourceRanges::all(self)
    }
    fn insert(&mut self, key: SourceRangeKey, len: u8) -> Result<()> {
        SourceRanges::insert(self, key, len)
    }
    fn remove(&mut self, key: SourceRangeKey, len: u8) -> Result<()> {
        SourceRanges::remove(self, key, len)
    }
}

/// Write the ranges `plan` has and the map lacks. Returns how many; the
/// first error after trying them all.
pub fn add_new(table: &mut impl RangeTable, plan: &Plan) -> Result<usize> {
    let actual: BTreeSet<RangeEntry> = table.all()?.into_iter().collect();
    let (add, _) = diff(&desired(plan), &actual);
    each(add, |(k, len)| table.insert(k, len), "loadBalancerSourceRanges entry not written; retrying")
}

/// Remove the ranges the map has and `plan` does not.
pub fn remove_old(table: &mut impl RangeTable, plan: &Plan) -> Result<usize> {
    let actual: BTreeSet<RangeEntry> = table.all()?.into_iter().collect();
    let (_, del) = diff(&desired(plan), &actual);
    each(del, |(k, len)| table.remove(k, len), "loadBalancerSourceRanges entry not removed; retrying")
}

fn each(entries: Vec<RangeEntry>, mut f: impl FnMut(RangeEntry) -> Result<()>, what: &str) -> Result<usize> {
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

    #[derive(Default)]
    struct Fake(BTreeSet<RangeEntry>);
    impl RangeTable for Fake {
        fn all(&self) -> Result<Vec<RangeEntry>> {
            Ok(self.0.iter().copied().collect())
        }
        fn insert(&mut self, key: SourceRangeKey, len: u8) -> Result<()> {
            self.0.insert((key, len));
            Ok(())
        }
        fn remove(&mut self, key: SourceRangeKey, len: u8) -> Result<()> {
            self.0.remove(&(key, len));
            Ok(())
        }
    }

    fn plan(ranges: &[(&str, u8)]) -> Plan {
        let f = Frontend { ip: Ipv4Addr::new(198, 51, 100, 7), port: 80, protocol: Protocol::Tcp };
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
        assert_eq!(remove_old(&mut t, &Plan::new()).unwrap(), 1);
        assert!(t.0.is_empty());
    }
}
