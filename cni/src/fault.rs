//! Fault injection for the rollback and crash-safety tests. Compiled in only
//! with the `fault-injection` feature; otherwise `after` is a no-op.

/// The ADD steps, in order, as named to `SLUICE_CNI_FAIL_AFTER`.
pub const ADD_STEPS: [&str; 7] = ["ipam", "veth", "move", "pod-config", "host-config", "endpoint", "attach"];

/// When the previous step ended (for `SLUICE_CNI_TIMINGS`).
static LAST: std::sync::Mutex<Option<std::time::Instant>> = std::sync::Mutex::new(None);

/// Mark the start of ADD's steps (for `SLUICE_CNI_TIMINGS`).
pub fn start() {
    if let Ok(mut last) = LAST.lock() {
        *last = Some(std::time::Instant::now());
    }
}

/// Called right after each ADD step succeeds. With `SLUICE_CNI_TIMINGS=1`
/// each step's wall time goes to stderr (`step veth 16.2 ms`): the profile
/// the performance work starts from.
pub fn after(step: &'static str) -> anyhow::Result<()> {
    debug_assert!(ADD_STEPS.contains(&step), "unknown step {step}");
    if std::env::var_os("SLUICE_CNI_TIMINGS").is_some() {
        if let Ok(mut last) = LAST.lock() {
            let now = std::time::Instant::now();
            if let Some(then) = last.replace(now) {
                eprintln!("step {step} {:.1} ms", (now - then).as_secs_f64() * 1000.0);
            }
        }
    }
    #[cfg(feature = "fault-injection")]
    {
        if std::env::var("SLUICE_CNI_FAIL_AFTER").as_deref() == Ok(step) {
            anyhow::bail!("injected failure after step {step}");
        }
        if std::env::var("SLUICE_CNI_CRASH_AFTER").as_deref() == Ok(step) {
            // As abrupt as a SIGKILL: no destructors, no rollback.
            std::process::abort();
        }
    }
    Ok(())
}
