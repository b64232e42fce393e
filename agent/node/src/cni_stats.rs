//! What the CNI plugin tells the agent's metrics: how many calls of each
//! verb ended with each code, how long they took, and how long each of
//! their steps took (`step_timer`: IPAM, veth, attach, ...). Each plugin run adds
//! itself to `<dataDir>/cni-stats.json` under an exclusive lock (no count
//! is lost to a concurrent run); the agent reads the file at each scrape.
//! `Stats` is pure; `record` and `read` touch the file.
use std::{collections::BTreeMap, fs, io::Write, os::fd::AsRawFd, path::Path};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

pub const FILE_NAME: &str = "cni-stats.json";
pub const LOCK_NAME: &str = "cni-stats.lock";

/// Upper bounds (seconds) of the duration histogram's buckets.
pub const BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// Upper bounds (seconds) of the per-step histograms' buckets: steps are
/// sub-millisecond netlink calls up to kernel waits of tens of ms.
pub const STEP_BUCKETS: [f64; 10] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0];

/// One histogram: cumulative counts at or under each bound, then all.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    pub buckets: Vec<u64>,
    pub count: u64,
    pub sum_seconds: f64,
}

impl Histogram {
    fn observe(&mut self, bounds: &[f64], seconds: f64) {
        if self.buckets.len() != bounds.len() {
            self.buckets = vec![0; bounds.len()];
        }
        for (i, bound) in bounds.iter().enumerate() {
            if seconds <= *bound {
                self.buckets[i] += 1;
            }
        }
        self.count += 1;
        self.sum_seconds += seconds;
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct VerbStats {
    /// Result code → calls (0: success, else the spec's error code).
    pub codes: BTreeMap<u32, u64>,
    /// Calls at or under each of `BUCKETS` (cumulative), then all calls.
    pub buckets: Vec<u64>,
    pub count: u64,
    pub sum_seconds: f64,
    /// Step name → its durations (`STEP_BUCKETS`), over successful and
    /// failed calls alike. Absent in files written before steps were kept.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub steps: BTreeMap<String, Histogram>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// "ADD", "DEL", ... → its figures.
    pub verbs: BTreeMap<String, VerbStats>,
}

impl Stats {
    pub fn record(&mut self, verb: &str, code: u32, seconds: f64, steps: &[(&str, f64)]) {
        let v = self.verbs.entry(verb.to_string()).or_default();
        for (step, seconds) in steps {
            v.steps.entry(step.to_string()).or_default().observe(&STEP_BUCKETS, *seconds);
        }
        if v.buckets.len() != BUCKETS.len() {
            v.buckets = vec![0; BUCKETS.len()];
        }
        *v.codes.entry(code).or_insert(0) += 1;
        for (i, bound) in BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                v.buckets[i] += 1;
            }
        }
        v.count += 1;
        v.sum_seconds += seconds;
    }
}

/// The stats so far (empty if no call was recorded yet).
pub fn read(data_dir: &Path) -> Stats {
    fs::read(data_dir.join(FILE_NAME)).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
}

/// Add one call (and its steps' seconds), under the lock: read, add, write
/// a temp file, rename.
pub fn record(data_dir: &Path, verb: &str, code: u32, seconds: f64, steps: &[(&str, f64)]) -> Result<()> {
    fs::create_dir_all(data_dir)?;
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(data_dir.join(LOCK_NAME))
        .context("open the CNI stats lock")?;
    // SAFETY: flock on an fd we own; released when it closes.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error()).context("lock the CNI stats");
    }
    let mut stats = read(data_dir);
    stats.record(verb, code, seconds, steps);
    let tmp = data_dir.join(format!(".{FILE_NAME}.tmp"));
    let mut f = fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec(&stats)?)?;
    fs::rename(&tmp, data_dir.join(FILE_NAME))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_codes_counted() {
        let mut s = Stats::default();
        s.record("ADD", 0, 0.04, &[("ipam", 0.0004), ("attach", 0.02)]);
        s.record("ADD", 0, 0.2, &[("ipam", 0.003)]);
        s.record("ADD", 103, 0.003, &[]);
        let add = &s.verbs["ADD"];
        assert_eq!(add.count, 3);
        assert_eq!(add.codes, [(0, 2), (103, 1)].into());
        assert_eq!(add.buckets, vec![1, 1, 1, 2, 2, 3, 3, 3, 3, 3]);
        assert!((add.sum_seconds - 0.243).abs() < 1e-9);
        assert_eq!(add.steps["ipam"].count, 2);
        assert_eq!(add.steps["ipam"].buckets, vec![1, 1, 1, 2, 2, 2, 2, 2, 2, 2]);
        assert_eq!(add.steps["attach"].buckets, vec![0, 0, 0, 0, 0, 1, 1, 1, 1, 1]);
    }

    #[test]
    fn files_without_steps_still_read() {
        let old = r#"{"verbs":{"DEL":{"codes":{"0":3},"buckets":[3,3,3,3,3,3,3,3,3,3],"count":3,"sum_seconds":0.01}}}"#;
        let s: Stats = serde_json::from_str(old).unwrap();
        assert_eq!(s.verbs["DEL"].count, 3);
        assert!(s.verbs["DEL"].steps.is_empty());
    }

    #[test]
    fn concurrent_records_lose_nothing() {
        let dir = std::env::temp_dir().join(format!("sluice-cni-stats-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let dir = dir.clone();
                std::thread::spawn(move || {
                    for _ in 0..25 {
                        record(&dir, "DEL", 0, 0.01, &[]).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(read(&dir).verbs["DEL"].count, 200);
        fs::remove_dir_all(&dir).unwrap();
    }
}
