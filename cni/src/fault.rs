//! Fault injection for the rollback and crash-safety tests. Compiled in only
//! with the `fault-injection` feature; otherwise `after` is a no-op.

/// The ADD steps, in order, as named to `SLUICE_CNI_FAIL_AFTER`.
pub const ADD_STEPS: [&str; 8] = ["ipam", "veth", "move", "pod-config", "host-config", "endpoint", "policy", "attach"];

/// Called right after each ADD step succeeds (its time is charged by
/// `sluice_node::step_timer`, not here).
pub fn after(step: &'static str) -> anyhow::Result<()> {
    debug_assert!(ADD_STEPS.contains(&step), "unknown step {step}");
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
