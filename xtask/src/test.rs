//! `cargo xtask test`: the one command that proves the tree is good.
use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};

use crate::{
    build_ebpf,
    guest::{jobs::JOBS, results::JobResult, suite},
    repo_root, setup, shell,
};

pub fn run(extra: &[String]) -> Result<()> {
    shell::require_root("cargo xtask test (end-to-end tests create namespaces and load eBPF)")?;
    setup::run()?;
    build_ebpf::run()?;
    let root = repo_root();
    let cargo = || {
        let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        c.current_dir(&root);
        c
    };
    shell::run(cargo().args(["fmt", "--all", "--check"]))?;
    shell::run(cargo().args(["fmt", "--manifest-path", "ebpf/Cargo.toml", "--check"]))?;
    shell::run(cargo().args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    // The end-to-end tests run the real binaries.
    shell::run(cargo().args(["build", "--workspace", "--bins"]))?;
    // A CNI plugin with fault injection, for the rollback tests; its own
    // target directory keeps it away from every other build.
    shell::run(cargo().args([
        "build",
        "-p",
        "sluice-cni",
        "--features",
        "fault-injection",
        "--target-dir",
        "target/fault",
    ]))?;
    let (passed, failed) = run_tests(cargo().args(["test", "--workspace", "--no-fail-fast"]).args(extra))?;
    // The benchmarks, short, so they cannot rot: each must run to the end.
    // They are not tests and are not counted as ones; they are reported on
    // their own. The NodePort rows and connection tables (`--nodeport`)
    // are a run of their own, not part of the full bench.
    let mut bench_ok = true;
    for extra in [&[][..], &["--nodeport"][..]] {
        let bench = shell::run(cargo().args(["xtask", "bench", "--smoke"]).args(extra));
        if let Err(e) = &bench {
            eprintln!("bench --smoke {} failed: {e:#}", extra.join(" "));
            bench_ok = false;
        }
    }
    // The same tests on other kernels, in qemu (issue 26): each job's tests
    // are counted on their own line.
    let guests = suite::run_jobs(JOBS).unwrap_or_else(|e| {
        vec![JobResult {
            name: "jobs".into(),
            passed: 0,
            failed: 0,
            named: 0,
            seconds: 0.0,
            problem: Some(format!("{e:#}")),
        }]
    });
    // One closing line for the whole run.
    println!("{}", summary(passed, failed, bench_ok, &guests));
    verdict(passed, failed, bench_ok, &guests)
}

/// The closing line: tests summed over every test binary, the benchmark
/// smoke run, then each guest job.
fn summary(passed: u64, failed: u64, bench_ok: bool, guests: &[JobResult]) -> String {
    let mut s = format!("{passed} passed, {failed} failed; bench smoke {}", if bench_ok { "ok" } else { "FAILED" });
    for g in guests {
        s.push_str("; ");
        s.push_str(&g.summary());
    }
    s
}

/// The run passes when tests ran, none failed, the benchmark smoke run
/// went to the end, and every guest job ran its tests and passed.
fn verdict(passed: u64, failed: u64, bench_ok: bool, guests: &[JobResult]) -> Result<()> {
    if failed > 0 || passed == 0 {
        bail!("tests failed ({failed}) or none ran ({passed} passed)");
    }
    if !bench_ok {
        bail!("bench --smoke failed");
    }
    if let Some(bad) = guests.iter().find(|g| !g.ok()) {
        bail!("{}", bad.summary());
    }
    Ok(())
}

/// Run `cargo test`, echoing its output, and add up its "test result" lines.
fn run_tests(cmd: &mut Command) -> Result<(u64, u64)> {
    eprintln!("+ {}", shell::describe(cmd));
    let mut child = cmd.stdout(Stdio::piped()).spawn().context("start cargo test")?;
    let stdout = child.stdout.take().expect("piped");
    let (mut passed, mut failed) = (0, 0);
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some((p, f)) = parse_result_line(&line) {
            passed += p;
            failed += f;
        }
    }
    let status = child.wait()?;
    if !status.success() && failed == 0 {
        failed = 1; // a crash or build failure counts
    }
    Ok((passed, failed))
}

/// `test result: ok. 8 passed; 0 failed; ...` → (8, 0).
pub fn parse_result_line(line: &str) -> Option<(u64, u64)> {
    let rest = line.strip_prefix("test result: ")?;
    let num = |word: &str| -> Option<u64> {
        rest.split(';').find_map(|part| {
            let part = part.trim().trim_start_matches("ok. ").trim_start_matches("FAILED. ");
            part.strip_suffix(word)?.trim().parse().ok()
        })
    };
    Some((num(" passed")?, num(" failed")?))
}

#[cfg(test)]
mod tests {
    use super::{parse_result_line, summary, verdict};
    use crate::guest::results::{JobResult, Tally};

    #[test]
    fn bench_smoke_is_reported_apart_from_the_tests_and_fails_the_run() {
        assert_eq!(summary(12, 0, true, &[]), "12 passed, 0 failed; bench smoke ok");
        assert_eq!(summary(12, 0, false, &[]), "12 passed, 0 failed; bench smoke FAILED");
        assert_eq!(summary(11, 1, true, &[]), "11 passed, 1 failed; bench smoke ok");
        assert!(verdict(12, 0, true, &[]).is_ok());
        assert!(verdict(12, 0, false, &[]).is_err(), "a failed bench smoke run fails the run");
        assert!(verdict(11, 1, true, &[]).is_err(), "a failed test fails the run");
        assert!(verdict(0, 0, true, &[]).is_err(), "no test ran: the bench smoke run alone is not a pass");
    }

    #[test]
    fn guest_jobs_are_counted_apart_and_any_failed_or_empty_job_fails_the_run() {
        let mut ok = Tally::default();
        ok.line("test result: ok. 6 passed; 0 failed; 0 ignored");
        let passed = JobResult::new("6.1 tc", 6, &ok, Ok(0), 401.0);
        let empty = JobResult::new("6.12 tcx", 5, &Tally::default(), Ok(0), 20.0);
        assert_eq!(
            summary(12, 0, true, std::slice::from_ref(&passed)),
            "12 passed, 0 failed; bench smoke ok; guest 6.1 tc: 6 passed, 0 failed, 401 s of guest time"
        );
        assert!(verdict(12, 0, true, std::slice::from_ref(&passed)).is_ok());
        let e = verdict(12, 0, true, &[passed, empty]).unwrap_err().to_string();
        assert!(e.contains("guest 6.12 tcx: 0 passed") && e.contains("5 tests named, 0 ran"), "{e}");
    }

    #[test]
    fn parses_cargo_summaries() {
        assert_eq!(
            parse_result_line("test result: ok. 8 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out"),
            Some((8, 0))
        );
        assert_eq!(parse_result_line("test result: FAILED. 1 passed; 2 failed; 0 ignored"), Some((1, 2)));
        assert_eq!(parse_result_line("running 3 tests"), None);
    }
}
