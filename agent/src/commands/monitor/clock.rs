//! When an event happened: the programs stamp it with `bpf_ktime_get_ns`
//! (`CLOCK_MONOTONIC`), the monitor prints wall time. `Clocks::wall` is
//! pure.
use jiff::Timestamp;

/// One reading of both clocks, nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Clocks {
    pub monotonic_ns: u64,
    pub realtime_ns: i128,
}

fn read(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid out-pointer; both clocks exist on every Linux.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    debug_assert_eq!(rc, 0);
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

impl Clocks {
    pub fn now() -> Self {
        let monotonic_ns = read(libc::CLOCK_MONOTONIC) as u64;
        Self { monotonic_ns, realtime_ns: read(libc::CLOCK_REALTIME) }
    }

    /// The wall time of monotonic instant `ts_ns` (an event's stamp): as far
    /// before or after this reading as it is on the monotonic clock.
    pub fn wall(&self, ts_ns: u64) -> Timestamp {
        let ns = self.realtime_ns - (i128::from(self.monotonic_ns) - i128::from(ts_ns));
        Timestamp::from_nanosecond(ns).unwrap_or(Timestamp::UNIX_EPOCH)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_as_far_back_in_wall_time_as_in_monotonic_time() {
        // Monotonic 1000 s after boot is 2026-12-06T12:00:00Z.
        let c = Clocks { monotonic_ns: 1_000_000_000_000, realtime_ns: 1_796_558_400_000_000_000 };
        assert_eq!(c.wall(1_000_000_000_000).to_string(), "2026-12-06T12:00:00Z");
        assert_eq!(c.wall(999_750_000_000).to_string(), "2026-12-06T11:59:59.75Z");
        assert_eq!(c.wall(1_000_000_123_456).to_string(), "2026-12-06T12:00:00.000123456Z");
    }

    #[test]
    fn the_clocks_are_read() {
        let (a, b) = (Clocks::now(), Clocks::now());
        assert!(b.monotonic_ns >= a.monotonic_ns);
        let wall = a.wall(a.monotonic_ns);
        let now = Timestamp::now();
        assert!((now.as_nanosecond() - wall.as_nanosecond()).abs() < 1_000_000_000, "{wall} vs {now}");
    }
}
