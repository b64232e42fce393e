//! Wall time of each step of one CNI call, for the profile an operator (and
//! the benchmark) reads: `mark(step)` charges the time since the previous
//! mark to `step`. One recorder per process (a plugin run is one call); it
//! records nothing until `start`, so the agent's own use of the pod
//! plumbing (health endpoint) costs a lock and nothing else.
//!
//! Where the figures go is the caller's choice: the plugin adds them to the
//! agent's call stats (`cni_stats`, exported as
//! `sluice_cni_step_duration_seconds`) and, with `SLUICE_CNI_TIMINGS=1`,
//! prints `step <name> <ms> ms` lines on stderr.
use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

struct Recorder {
    last: Instant,
    steps: Vec<(&'static str, Duration)>,
}

static RECORDER: Mutex<Option<Recorder>> = Mutex::new(None);

/// Start timing (again): forget earlier steps.
pub fn start() {
    if let Ok(mut r) = RECORDER.lock() {
        *r = Some(Recorder { last: Instant::now(), steps: Vec::new() });
    }
}

/// The time since the previous mark (or `start`) was spent on `step`. A
/// step marked twice adds up.
pub fn mark(step: &'static str) {
    if let Ok(mut guard) = RECORDER.lock() {
        if let Some(r) = guard.as_mut() {
            let now = Instant::now();
            let spent = now - r.last;
            r.last = now;
            match r.steps.iter_mut().find(|(s, _)| *s == step) {
                Some((_, d)) => *d += spent,
                None => r.steps.push((step, spent)),
            }
        }
    }
}

/// The steps so far, in first-marked order, and stop timing.
pub fn take() -> Vec<(&'static str, Duration)> {
    RECORDER.lock().ok().and_then(|mut r| r.take()).map(|r| r.steps).unwrap_or_default()
}

/// `step veth 0.7 ms` lines, one per step (the `SLUICE_CNI_TIMINGS` format).
pub fn render(steps: &[(&'static str, Duration)]) -> String {
    steps.iter().map(|(s, d)| format!("step {s} {:.2} ms\n", d.as_secs_f64() * 1e3)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_charge_the_time_since_the_previous_one() {
        assert!(take().is_empty(), "nothing before start");
        mark("ignored");
        start();
        std::thread::sleep(Duration::from_millis(5));
        mark("a");
        mark("b");
        std::thread::sleep(Duration::from_millis(2));
        mark("a");
        let steps = take();
        assert_eq!(steps.iter().map(|s| s.0).collect::<Vec<_>>(), ["a", "b"]);
        assert!(steps[0].1 >= Duration::from_millis(7), "{steps:?}");
        assert!(steps[1].1 < Duration::from_millis(2), "{steps:?}");
        assert!(take().is_empty(), "take stops timing");
        let text = render(&[("veth", Duration::from_micros(700))]);
        assert_eq!(text, "step veth 0.70 ms\n");
    }
}
