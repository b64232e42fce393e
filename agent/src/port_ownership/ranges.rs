//! Port ranges and `net.ipv4.ip_local_reserved_ports` (pure).
//!
//! The kernel never hands a reserved port out as an ephemeral (automatic)
//! port, so a host process's outgoing connection can never take a
//! NodePort (or a SNAT port sluice allocates) as its source port and have
//! the replies taken for a Service's. Explicit `bind()`s still succeed:
//! those are reported (`listeners`).
//!
//! The sysctl is shared with whoever else reserves ports on the node
//! (kubelet does not, but operators and other agents do). sluice adds its
//! ranges to what is there, records what it added (ports that were not
//! reserved before it), and on `cleanup` removes only those: a port
//! someone else had reserved before sluice stays reserved. The sysctl is
//! one bitmap: a port inside sluice's ranges that someone reserves after
//! sluice did cannot be told from sluice's; `cleanup` gives it back too.
use std::{collections::BTreeSet, fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// An inclusive range of ports, `first..=last`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

/// kube-apiserver's default `--service-node-port-range`.
pub const DEFAULT_NODE_PORT_RANGE: PortRange = PortRange { first: 30000, last: 32767 };

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RangeError {
    #[error("{0:?} is not a port range: write FIRST-LAST (e.g. 30000-32767) or a single port")]
    Syntax(String),
    #[error("{0:?}: ports are 1 to 65535")]
    OutOfBounds(String),
    #[error("{0:?}: the first port is above the last")]
    Reversed(String),
}

impl PortRange {
    pub const fn single(port: u16) -> Self {
        PortRange { first: port, last: port }
    }

    pub const fn contains(&self, port: u16) -> bool {
        self.first <= port && port <= self.last
    }
}

impl FromStr for PortRange {
    type Err = RangeError;

    /// `FIRST-LAST` (as kube-apiserver's `--service-node-port-range`, and
    /// the sysctl) or one port. Port 0 is no port.
    fn from_str(s: &str) -> Result<Self, RangeError> {
        let t = s.trim();
        let (a, b) = t.split_once('-').unwrap_or((t, t));
        let num = |x: &str| -> Result<u16, RangeError> {
            let x = x.trim();
            if x.is_empty() || !x.bytes().all(|c| c.is_ascii_digit()) {
                return Err(RangeError::Syntax(s.to_string()));
            }
            match x.parse::<u32>() {
                Ok(n) if (1..=65535).contains(&n) => Ok(n as u16),
                _ => Err(RangeError::OutOfBounds(s.to_string())),
            }
        };
        let (first, last) = (num(a)?, num(b)?);
        if first > last {
            return Err(RangeError::Reversed(s.to_string()));
        }
        Ok(PortRange { first, last })
    }
}

impl fmt::Display for PortRange {
    /// As the sysctl writes it: `30000-32767`, or `8080` for one port.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// A set of ports, kept as sorted, disjoint, non-adjacent ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSet(Vec<PortRange>);

impl PortSet {
    pub fn new(ranges: impl IntoIterator<Item = PortRange>) -> Self {
        let mut v: Vec<PortRange> = ranges.into_iter().collect();
        v.sort();
        let mut out: Vec<PortRange> = Vec::with_capacity(v.len());
        for r in v {
            match out.last_mut() {
                Some(l) if r.first as u32 <= l.last as u32 + 1 => l.last = l.last.max(r.last),
                _ => out.push(r),
            }
        }
        PortSet(out)
    }

    /// The sysctl's text: comma-separated ports and `FIRST-LAST` ranges;
    /// empty (or a lone newline) for none.
    pub fn parse_sysctl(text: &str) -> Result<Self, RangeError> {
        let ranges: Result<Vec<PortRange>, RangeError> =
            text.split(',').map(str::trim).filter(|p| !p.is_empty()).map(str::parse).collect();
        Ok(PortSet::new(ranges?))
    }

    pub fn ranges(&self) -> &[PortRange] {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, port: u16) -> bool {
        self.0.iter().any(|r| r.contains(port))
    }

    pub fn union(&self, other: &PortSet) -> PortSet {
        PortSet::new(self.0.iter().chain(&other.0).copied())
    }

    /// The ports of `self` not in `other`.
    pub fn minus(&self, other: &PortSet) -> PortSet {
        let mut out = Vec::new();
        for r in &self.0 {
            let mut first = r.first as u32;
            let last = r.last as u32;
            for o in other.0.iter().filter(|o| o.last >= r.first && o.first <= r.last) {
                if (o.first as u32) > first {
                    out.push(PortRange { first: first as u16, last: o.first - 1 });
                }
                first = first.max(o.last as u32 + 1);
            }
            if first <= last {
                out.push(PortRange { first: first as u16, last: last as u16 });
            }
        }
        PortSet::new(out)
    }

    pub fn intersect(&self, other: &PortSet) -> PortSet {
        self.minus(&self.minus(other))
    }
}

impl fmt::Display for PortSet {
    /// As the sysctl takes it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&parts.join(","))
    }
}

/// What a reservation pass writes and records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reservation {
    /// The sysctl's new value; `None`: it already holds what it must.
    pub write: Option<PortSet>,
    /// The ports sluice has added (and `cleanup` removes): record this.
    pub added: PortSet,
}

/// Reserve `wanted` in the sysctl that holds `current`, where sluice had
/// earlier added `recorded`. Ports sluice added that are no longer
/// wanted (a narrower `--node-port-range`) are released; wanted ports not
/// reserved yet are added and recorded as sluice's; wanted ports that
/// were already reserved stay as they are, sluice's if they were, someone
/// else's if not. Idempotent: a second pass with the same input writes
/// nothing and records the same.
pub fn reserve(current: &PortSet, wanted: &PortSet, recorded: &PortSet) -> Reservation {
    let released = recorded.minus(wanted);
    let missing = wanted.minus(current);
    let target = current.minus(&released).union(&missing);
    let added = recorded.intersect(wanted).union(&missing);
    Reservation { write: (&target != current).then_some(target), added }
}

/// What `cleanup` writes: `current` without the ports sluice added.
pub fn release(current: &PortSet, recorded: &PortSet) -> Option<PortSet> {
    let target = current.minus(recorded);
    (&target != current).then_some(target)
}

/// The ports sluice owns on a node: the NodePort range and whatever other
/// ranges sluice allocates from (the uplink path's SNAT ports), as one
/// set to reserve.
pub fn owned(node_port_range: PortRange, others: &[PortRange]) -> PortSet {
    PortSet::new(std::iter::once(node_port_range).chain(others.iter().copied()))
}

/// The ports of `ports` that fall in `set` (for reporting).
pub fn inside(set: &PortSet, ports: impl IntoIterator<Item = u16>) -> BTreeSet<u16> {
    ports.into_iter().filter(|p| set.contains(*p)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(s: &str) -> PortSet {
        PortSet::parse_sysctl(s).unwrap()
    }

    #[test]
    fn a_range_parses_as_kube_apiserver_writes_it_and_bad_ones_say_why() {
        assert_eq!("30000-32767".parse(), Ok(DEFAULT_NODE_PORT_RANGE));
        assert_eq!(" 8080 ".parse(), Ok(PortRange::single(8080)));
        assert_eq!(DEFAULT_NODE_PORT_RANGE.to_string(), "30000-32767");
        for (bad, want) in [
            ("30000:32767", RangeError::Syntax("30000:32767".into())),
            ("", RangeError::Syntax("".into())),
            ("-5", RangeError::Syntax("-5".into())),
            ("30000-", RangeError::Syntax("30000-".into())),
            ("0-100", RangeError::OutOfBounds("0-100".into())),
            ("30000-70000", RangeError::OutOfBounds("30000-70000".into())),
            ("32767-30000", RangeError::Reversed("32767-30000".into())),
        ] {
            let got = bad.parse::<PortRange>().unwrap_err();
            assert_eq!(got, want, "{bad}");
            assert!(got.to_string().contains(bad), "the error names the input: {got}");
        }
    }

    #[test]
    fn sets_merge_overlapping_and_adjacent_ranges_and_print_as_the_sysctl() {
        let s = set("8080,30000-31000,30500-32767,32768,1-2");
        assert_eq!(s.to_string(), "1-2,8080,30000-32768");
        assert_eq!(set("").to_string(), "");
        assert_eq!(set("\n"), PortSet::default());
        assert!(PortSet::parse_sysctl("1,x").is_err());
        assert_eq!(set("1-100").minus(&set("1-10,50,90-200")).to_string(), "11-49,51-89");
        assert_eq!(set("1-100").intersect(&set("50-150,5")).to_string(), "5,50-100");
        assert_eq!(set("65535").minus(&set("65535")), PortSet::default());
    }

    #[test]
    fn reserving_merges_with_others_entries_and_records_only_what_sluice_added() {
        let wanted = owned(DEFAULT_NODE_PORT_RANGE, &[]);
        // Someone reserved 8080 and part of the range before sluice.
        let r = reserve(&set("8080,31000-31010"), &wanted, &PortSet::default());
        assert_eq!(r.write.as_ref().unwrap().to_string(), "8080,30000-32767");
        assert_eq!(r.added.to_string(), "30000-30999,31011-32767");
        // Restart: nothing to write, the record is kept.
        let again = reserve(r.write.as_ref().unwrap(), &wanted, &r.added);
        assert_eq!(again, Reservation { write: None, added: r.added.clone() });
        // Cleanup gives back exactly what was there before.
        assert_eq!(release(&set("8080,30000-32767"), &r.added).unwrap().to_string(), "8080,31000-31010");
        assert_eq!(release(&set("8080"), &r.added), None, "nothing of ours left: nothing to write");
    }

    #[test]
    fn a_narrower_range_releases_what_sluice_added_and_keeps_others_ports() {
        let before = reserve(&set("30100"), &owned(DEFAULT_NODE_PORT_RANGE, &[]), &PortSet::default());
        let current = before.write.unwrap();
        let narrow = owned("30000-30999".parse().unwrap(), &[]);
        let r = reserve(&current, &narrow, &before.added);
        assert_eq!(r.write.unwrap().to_string(), "30000-30999", "30100 stays: it was someone else's");
        assert_eq!(r.added.to_string(), "30000-30099,30101-30999");
    }

    #[test]
    fn other_owned_ranges_join_the_node_port_range() {
        let o = owned(DEFAULT_NODE_PORT_RANGE, &["40000-40999".parse().unwrap(), PortRange::single(32768)]);
        assert_eq!(o.to_string(), "30000-32768,40000-40999");
        assert_eq!(inside(&o, [80, 30000, 32768, 40500, 50000]).into_iter().collect::<Vec<_>>(), [30000, 32768, 40500]);
    }
}
