//! How full each pinned map is, for `status` and metrics: read from the
//! kernel (its `max_entries`, so a map sized at load reports its real size)
//! and, for maps whose entries come and go, counted by walking the keys in
//! user space (`bpf_sys::count_keys`): one syscall a key, nothing on the
//! datapath's side. Arrays report their size only (every slot exists), the
//! ring buffer its bytes.
use anyhow::{Context, Result};
use aya::maps::MapData;
use sluice_common::{counters::evicted, maps::names, StackFlowEvent};

use super::{bpf_sys, loader::ALL_MAPS, pinned_maps, pins::PinDir};

/// How a map's fill is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FillKind {
    /// Entries come and go (hash, LPM trie): counted. A full map refuses
    /// inserts.
    Entries,
    /// The same, least recently used entries making room: a full map is
    /// its normal state once busy; evictions are the figure to watch.
    LruEntries,
    /// An array: every slot exists; only its size says anything.
    Slots,
    /// A ring buffer: its size in bytes.
    Bytes,
}

impl FillKind {
    /// From the kernel's `enum bpf_map_type`.
    pub fn of_map_type(map_type: u32) -> FillKind {
        match map_type {
            // HASH, PERCPU_HASH, LPM_TRIE
            1 | 5 | 11 => FillKind::Entries,
            // LRU_HASH, LRU_PERCPU_HASH
            9 | 10 => FillKind::LruEntries,
            // RINGBUF
            27 => FillKind::Bytes,
            _ => FillKind::Slots,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            FillKind::Entries => "hash",
            FillKind::LruEntries => "lru",
            FillKind::Slots => "array",
            FillKind::Bytes => "ringbuf",
        }
    }

    fn counted(self) -> bool {
        matches!(self, FillKind::Entries | FillKind::LruEntries)
    }
}

/// One pinned map's fill.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapFill {
    pub name: String,
    pub kind: FillKind,
    /// Entries now (counted kinds only).
    pub entries: Option<u64>,
    /// The kernel's `max_entries`: entries, slots, or bytes (`Bytes`).
    pub max_entries: u32,
}

impl MapFill {
    /// A map that refuses inserts when full has 90 % or more of its room
    /// taken (LRU maps make room instead: see `StackFlows`).
    pub fn nearly_full(&self) -> bool {
        self.kind == FillKind::Entries && self.entries.is_some_and(|n| n * 10 >= u64::from(self.max_entries) * 9)
    }
}

/// The fill of the pinned map `name`.
pub fn read(pins: &PinDir, name: &str) -> Result<MapFill> {
    let path = pins.map(name);
    let data = MapData::from_pin(&path).with_context(|| format!("open pinned map {}", path.display()))?;
    let info = data.info().with_context(|| format!("info of map {name}"))?;
    let raw_type = info.map_type().with_context(|| format!("type of map {name}"))? as u32;
    let kind = FillKind::of_map_type(raw_type);
    let entries = if kind.counted() {
        use std::os::fd::AsFd;
        let n = bpf_sys::count_keys(data.fd().as_fd(), info.key_size(), info.max_entries())
            .with_context(|| format!("count the entries of map {name}"))?;
        Some(n)
    } else {
        None
    };
    Ok(MapFill { name: name.to_string(), kind, entries, max_entries: info.max_entries() })
}

/// Every map of the object that is pinned here, in `ALL_MAPS` order; a map
/// that cannot be read is left out (an older layout may lack it).
pub fn read_all(pins: &PinDir) -> Vec<MapFill> {
    ALL_MAPS.iter().filter_map(|name| read(pins, name).ok()).collect()
}

/// `STACK_FLOWS` or `STACK_FLOWS6` and what happened to its entries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StackFlows {
    /// `names::STACK_FLOWS` or `names::STACK_FLOWS6`.
    pub table: &'static str,
    pub entries: u64,
    pub max_entries: u32,
    pub remembered: u64,
    pub forgotten: u64,
    pub insert_failed: u64,
    /// Derived: remembered − forgotten − entries.
    pub evicted: u64,
}

impl StackFlows {
    /// From the table's fill and the counters of both tables (pure): the
    /// table's own events, `*6` for `STACK_FLOWS6`. `None` for another map.
    pub fn new(fill: &MapFill, counters: &[(StackFlowEvent, u64)]) -> Option<Self> {
        let (table, [remembered, insert_failed, forgotten]) = match fill.name.as_str() {
            names::STACK_FLOWS => (names::STACK_FLOWS, StackFlowEvent::IPV4),
            names::STACK_FLOWS6 => (names::STACK_FLOWS6, StackFlowEvent::IPV6),
            _ => return None,
        };
        let get = |e: StackFlowEvent| counters.iter().find(|(k, _)| *k == e).map_or(0, |(_, n)| *n);
        let entries = fill.entries.unwrap_or(0);
        let (remembered, forgotten) = (get(remembered), get(forgotten));
        Some(StackFlows {
            table,
            entries,
            max_entries: fill.max_entries,
            remembered,
            forgotten,
            insert_failed: get(insert_failed),
            evicted: evicted(remembered, forgotten, entries),
        })
    }

    /// The address family the table serves, for metrics' labels.
    pub fn family(&self) -> &'static str {
        if self.table == names::STACK_FLOWS6 {
            "ipv6"
        } else {
            "ipv4"
        }
    }

    /// Whether the table may still be evicting: at least half full. (A
    /// full LRU on many CPUs holds well below `max_entries`, so "full" is
    /// not a fixed fraction; a table that evicted and then fell below half
    /// is not evicting now.)
    fn still_full(&self) -> bool {
        self.entries * 2 >= u64::from(self.max_entries)
    }

    /// What an operator must hear about the table (pure).
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.insert_failed > 0 {
            w.push(format!(
                "{}: {} inserts failed: those flows' replies skipped conntrack (kube-proxy's or a hostPort's NAT \
                 not reversed)",
                self.table, self.insert_failed
            ));
        }
        // Evictions happen only in a full table. (A full LRU holds somewhat
        // fewer than `max_entries`: each CPU keeps free entries of its own.)
        // The counter never goes down, so the warning is for a table that
        // is still full: once it has drained, the evictions are history
        // (status' line and the metric keep the count).
        if self.evicted > 0 && self.still_full() {
            w.push(format!(
                "{} is at capacity ({} of {}) and has evicted {} flows: a connection through kube-proxy or a \
                 hostPort that stays idle while {} newer such flows pass loses its replies' reverse NAT; raise \
                 --stack-flows-max",
                self.table, self.entries, self.max_entries, self.evicted, self.max_entries
            ));
        }
        w
    }
}

/// `STACK_FLOWS` and, on a dual-stack node, `STACK_FLOWS6` now (`maps`:
/// `read_all`'s answer).
pub fn stack_flows(pins: &PinDir, maps: &[MapFill]) -> Result<Vec<StackFlows>> {
    let counters = pinned_maps::stack_flow_stats(pins)?;
    Ok(maps.iter().filter_map(|fill| StackFlows::new(fill, &counters)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(kind: FillKind, entries: Option<u64>, max_entries: u32) -> MapFill {
        MapFill { name: "M".into(), kind, entries, max_entries }
    }

    #[test]
    fn kinds_from_the_kernel_map_type() {
        assert_eq!(FillKind::of_map_type(1), FillKind::Entries);
        assert_eq!(FillKind::of_map_type(11), FillKind::Entries);
        assert_eq!(FillKind::of_map_type(9), FillKind::LruEntries);
        assert_eq!(FillKind::of_map_type(6), FillKind::Slots);
        assert_eq!(FillKind::of_map_type(2), FillKind::Slots);
        assert_eq!(FillKind::of_map_type(27), FillKind::Bytes);
    }

    #[test]
    fn only_maps_that_refuse_inserts_are_nearly_full() {
        assert!(fill(FillKind::Entries, Some(3687), 4096).nearly_full());
        assert!(!fill(FillKind::Entries, Some(3686), 4096).nearly_full());
        assert!(!fill(FillKind::LruEntries, Some(4096), 4096).nearly_full(), "an LRU makes room");
        assert!(!fill(FillKind::Slots, None, 14).nearly_full());
    }

    #[test]
    fn stack_flows_warn_when_full_and_evicting_or_failing() {
        let counters = |r, f, x| {
            [(StackFlowEvent::Remembered, r), (StackFlowEvent::InsertFailed, x), (StackFlowEvent::Forgotten, f)]
        };
        let table = |entries, counters: &[(StackFlowEvent, u64)]| {
            let fill = MapFill { name: names::STACK_FLOWS.into(), ..fill(FillKind::LruEntries, Some(entries), 1024) };
            StackFlows::new(&fill, counters).unwrap()
        };
        let roomy = table(400, &counters(500, 100, 0));
        assert_eq!((roomy.evicted, roomy.warnings()), (0, vec![]));
        // What a 1,024-entry table on two CPUs held after 10,001 flows.
        let full = table(785, &counters(10_001, 0, 0));
        assert_eq!(full.evicted, 9216);
        let w = full.warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("STACK_FLOWS is at capacity (785 of 1024) and has evicted 9216 flows"), "{w:?}");
        assert!(w[0].contains("--stack-flows-max"), "{w:?}");
        // The same table after its flows ended: the evictions are history.
        let drained = table(300, &counters(10_001, 485, 0));
        assert_eq!(drained.evicted, 9216);
        assert_eq!(drained.warnings(), Vec::<String>::new(), "a drained table does not warn forever");
        let failing = table(10, &counters(10, 0, 3));
        assert_eq!(failing.warnings().len(), 1);
        assert!(failing.warnings()[0].contains("3 inserts failed"));
    }

    /// Each table is judged by its own events: IPv6 flows remembered in
    /// `STACK_FLOWS6` are no evictions of a half-full `STACK_FLOWS`.
    #[test]
    fn each_stack_flows_table_counts_its_own_family() {
        let counters = [
            (StackFlowEvent::Remembered, 600),
            (StackFlowEvent::Forgotten, 0),
            (StackFlowEvent::Remembered6, 5000),
            (StackFlowEvent::Forgotten6, 10),
            (StackFlowEvent::InsertFailed6, 2),
        ];
        let named =
            |name: &str, entries| MapFill { name: name.into(), ..fill(FillKind::LruEntries, Some(entries), 1024) };
        let v4 = StackFlows::new(&named(names::STACK_FLOWS, 600), &counters).unwrap();
        assert_eq!((v4.remembered, v4.evicted, v4.family()), (600, 0, "ipv4"));
        assert_eq!(v4.warnings(), Vec::<String>::new(), "IPv6 flows are no IPv4 evictions");
        let v6 = StackFlows::new(&named(names::STACK_FLOWS6, 900), &counters).unwrap();
        assert_eq!((v6.remembered, v6.forgotten, v6.evicted, v6.insert_failed), (5000, 10, 4090, 2));
        let w = v6.warnings();
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].starts_with("STACK_FLOWS6: 2 inserts failed"), "{w:?}");
        assert!(w[1].starts_with("STACK_FLOWS6 is at capacity (900 of 1024) and has evicted 4090"), "{w:?}");
        assert_eq!(StackFlows::new(&named("NAT4", 900), &counters), None);
    }
}
