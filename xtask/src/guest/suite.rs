//! Run the guest jobs ([`super::jobs::JOBS`]): the test executables are
//! built here (`cargo test --no-run`) and their paths taken from cargo's
//! build messages; each job is one boot running its named tests.
use std::{collections::BTreeMap, process::Command};

use anyhow::{bail, Result};

use super::{
    jobs::{self, GuestJob},
    results::{JobResult, Tally},
};
use crate::{repo_root, shell};

/// Guest memory for a job (three nodes' agents and a cluster model).
const MEMORY_MIB: u32 = 4096;

/// `cargo xtask guest-suite`: build what the jobs need, run them, print a
/// line per job; fails if any job failed or ran nothing.
/// With `build_only`, stop once everything is built (so that the machine
/// lock is not held while compiling).
pub fn run(job: Option<&str>, build_only: bool) -> Result<()> {
    let selected = jobs::select(job).map_err(anyhow::Error::msg)?;
    crate::setup::run()?;
    crate::build_ebpf::run()?;
    shell::run(cargo().args(["build", "--workspace", "--bins"]))?;
    if build_only {
        let found = test_executables()?;
        eprintln!("guest-suite: built ({} test executables)", found.len());
        return Ok(());
    }
    let results = run_jobs(&selected)?;
    for r in &results {
        println!("{}", r.summary());
    }
    if let Some(bad) = results.iter().find(|r| !r.ok()) {
        bail!("{}", bad.summary());
    }
    Ok(())
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(repo_root());
    c
}

/// Run `jobs` one after the other (the binaries are built already).
pub fn run_jobs(jobs: &[GuestJob]) -> Result<Vec<JobResult>> {
    let executables = test_executables()?;
    let root = repo_root();
    let mut results = Vec::new();
    for job in jobs {
        let missing = jobs::missing_tests(&root, job);
        if !missing.is_empty() {
            bail!("guest job {} names tests that do not exist: {missing:?}", job.name);
        }
        let script = job.script(|b| executables.get(b).cloned()).map_err(anyhow::Error::msg)?;
        eprintln!("guest job {} (kernel {}): {} tests", job.name, job.kernel, job.named());
        let mut tally = Tally::default();
        let started = std::time::Instant::now();
        let run = super::run_command(job.kernel, MEMORY_MIB, &["sh".into(), "-c".into(), script], &mut |line| {
            println!("{line}");
            tally.line(line);
        });
        let (status, seconds) = match run {
            Ok(r) => (Ok(r.status), r.seconds),
            Err(e) => (Err(format!("{e:#}")), started.elapsed().as_secs_f64()),
        };
        let result = JobResult::new(job.name, job.named(), &tally, status, seconds);
        eprintln!("{}", result.summary());
        results.push(result);
    }
    Ok(results)
}

/// The sluice-tests executables by test target name, built if needed.
fn test_executables() -> Result<BTreeMap<String, String>> {
    let out = shell::output(cargo().args(["test", "-p", "sluice-tests", "--no-run", "--message-format=json"]))?;
    let found = executables_from_messages(&out);
    if found.is_empty() {
        bail!("cargo test --no-run named no test executable");
    }
    Ok(found)
}

/// From cargo's JSON build messages: each `test` target's executable.
pub fn executables_from_messages(messages: &str) -> BTreeMap<String, String> {
    let mut found = BTreeMap::new();
    for line in messages.lines() {
        let Ok(m) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        if m["reason"] != "compiler-artifact" || m["profile"]["test"] != true {
            continue;
        }
        let is_test_target = m["target"]["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "test"));
        if let (true, Some(name), Some(exe)) = (is_test_target, m["target"]["name"].as_str(), m["executable"].as_str())
        {
            found.insert(name.to_string(), exe.to_string());
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::executables_from_messages;

    #[test]
    fn test_targets_are_found_in_cargos_messages_and_the_library_is_not() {
        let messages = r#"{"reason":"compiler-artifact","target":{"kind":["test"],"name":"attach_tc"},"profile":{"test":true},"executable":"/r/target/debug/deps/attach_tc-1f2e"}
{"reason":"compiler-artifact","target":{"kind":["lib"],"name":"sluice_tests"},"profile":{"test":true},"executable":"/r/target/debug/deps/sluice_tests-9a"}
{"reason":"compiler-artifact","target":{"kind":["lib"],"name":"sluice_tests"},"profile":{"test":false},"executable":null}
{"reason":"build-finished","success":true}
not json"#;
        let found = executables_from_messages(messages);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found["attach_tc"], "/r/target/debug/deps/attach_tc-1f2e");
    }
}
