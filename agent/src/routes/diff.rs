//! Desired vs actual node routes: what to add, change and remove.
use std::{collections::BTreeMap, net::Ipv4Addr};

use ipnetwork::Ipv4Network;

pub type Routes = BTreeMap<Ipv4Network, Ipv4Addr>;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct RouteDiff {
    /// New CIDRs, and CIDRs whose node IP changed (an upsert replaces).
    pub upsert: Vec<(Ipv4Network, Ipv4Addr)>,
    pub remove: Vec<Ipv4Network>,
}

impl RouteDiff {
    pub fn is_empty(&self) -> bool {
        self.upsert.is_empty() && self.remove.is_empty()
    }
}

pub fn diff_routes(desired: &Routes, actual: &Routes) -> RouteDiff {
    RouteDiff {
        upsert: desired.iter().filter(|(cidr, ip)| actual.get(cidr) != Some(ip)).map(|(c, ip)| (*c, *ip)).collect(),
        remove: actual.keys().filter(|c| !desired.contains_key(c)).copied().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(entries: &[(&str, &str)]) -> Routes {
        entries.iter().map(|(c, ip)| (c.parse().unwrap(), ip.parse().unwrap())).collect()
    }

    #[test]
    fn table() {
        let a = routes(&[("10.244.2.0/24", "192.168.0.2"), ("10.244.3.0/24", "192.168.0.3")]);
        // Equal: nothing to do (idempotent).
        assert!(diff_routes(&a, &a).is_empty());
        // From scratch: everything added.
        assert_eq!(diff_routes(&a, &Routes::new()).upsert.len(), 2);
        // Everything gone.
        assert_eq!(diff_routes(&Routes::new(), &a).remove.len(), 2);
        // One moved to another node IP, one removed, one added.
        let b = routes(&[("10.244.2.0/24", "192.168.0.9"), ("10.244.4.0/24", "192.168.0.4")]);
        let d = diff_routes(&b, &a);
        assert_eq!(
            d.upsert,
            vec![
                ("10.244.2.0/24".parse().unwrap(), "192.168.0.9".parse().unwrap()),
                ("10.244.4.0/24".parse().unwrap(), "192.168.0.4".parse().unwrap())
            ]
        );
        assert_eq!(d.remove, vec!["10.244.3.0/24".parse().unwrap()]);
    }
}
