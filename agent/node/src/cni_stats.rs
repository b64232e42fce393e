//! What the CNI plugin tells the agent's metrics: how many calls of each
//! verb ended with each code, and how long they took. Each plugin run adds
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

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct VerbStats {
    /// Result code → calls (0: success, else the spec's error code).
    pub codes: BTreeMap<u32, u64>,
    /// Calls at or under each of `BUCKETS` (cumulative), then all calls.
    pub buckets: Vec<u64>,
    pub count: u64,
    pub sum_seconds: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// "ADD", "DEL", ... → its figures.
    pub verbs: BTreeMap<String, VerbStats>,
}

impl Stats {
    pub fn record(&mut self, verb: &str, code: u32, seconds: f64) {
        let v = self.verbs.entry(verb.to_string()).or_default();
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

/// Add one call, under the lock: read, add, write a temp file, rename.
pub fn record(data_dir: &Path, verb: &str, code: u32, seconds: f64) -> Result<()> {
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
    stats.record(verb, code, seconds);
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
        s.record("ADD", 0, 0.04);
        s.record("ADD", 0, 0.2);
        s.record("ADD", 103, 0.003);
        let add = &s.verbs["ADD"];
        assert_eq!(add.count, 3);
        assert_eq!(add.codes, [(0, 2), (103, 1)].into());
        assert_eq!(add.buckets, vec![1, 1, 1, 2, 2, 3, 3, 3, 3, 3]);
        assert!((add.sum_seconds - 0.243).abs() < 1e-9);
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
                        record(&dir, "DEL", 0, 0.01).unwrap();
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
