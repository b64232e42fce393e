//! What a guest job's console says: the tests' own summary lines, added
//! up per job, and the job's line in `cargo xtask test`'s closing summary.
use crate::test::parse_result_line;

/// One guest job's outcome.
#[derive(Clone, Debug, PartialEq)]
pub struct JobResult {
    pub name: String,
    pub passed: u64,
    pub failed: u64,
    /// How many tests the job names: each must have run.
    pub named: u64,
    /// Wall-clock seconds of the boot (kernel start to power-off).
    pub seconds: f64,
    /// Why the job failed beyond its tests (no boot, wrong kernel, ...).
    pub problem: Option<String>,
}

/// Adds up cargo's `test result:` lines as the console shows them.
#[derive(Debug, Default)]
pub struct Tally {
    pub passed: u64,
    pub failed: u64,
}

impl Tally {
    pub fn line(&mut self, line: &str) {
        // The console is a terminal: a test binary told `--color never`
        // still may not be the only writer, so colours are taken out; and
        // the kernel's output may come before a line.
        let line = strip_ansi(line);
        if let Some(at) = line.find("test result: ") {
            if let Some((p, f)) = parse_result_line(&line[at..]) {
                self.passed += p;
                self.failed += f;
            }
        }
    }
}

/// `line` without ANSI escape sequences (`ESC [ ... letter`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl JobResult {
    /// From the tests' tally, the guest's exit status (`None`: no status
    /// came back) and the boot's time.
    pub fn new(name: &str, named: usize, tally: &Tally, status: Result<i32, String>, seconds: f64) -> Self {
        let named = named as u64;
        let problem = match status {
            Err(e) => Some(e),
            Ok(code) if code != 0 && tally.failed == 0 => {
                Some(format!("a test binary exited with status {code} without a failed test (it crashed?)"))
            }
            Ok(_) if tally.passed + tally.failed < named => {
                Some(format!("{named} tests named, {} ran", tally.passed + tally.failed))
            }
            Ok(_) => None,
        };
        JobResult { name: name.to_string(), passed: tally.passed, failed: tally.failed, named, seconds, problem }
    }

    pub fn ok(&self) -> bool {
        self.problem.is_none() && self.failed == 0 && self.passed > 0
    }

    /// `guest 6.1 tc: 5 passed, 0 failed, 412 s of guest time`.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "guest {}: {} passed, {} failed, {:.0} s of guest time",
            self.name, self.passed, self.failed, self.seconds
        );
        if let Some(p) = &self.problem {
            s.push_str(&format!(" ({p})"));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(lines: &[&str]) -> Tally {
        let mut t = Tally::default();
        for l in lines {
            t.line(l);
        }
        t
    }

    #[test]
    fn the_console_is_added_up_per_job() {
        let t = tally(&[
            "guest-tests: attach_tc",
            "running 3 tests",
            "test result: ok. 3 passed; 0 failed; 0 ignored; 0 measured; 5 filtered out; finished in 310.2s",
            "[  412.1] random: crng init done",
            "[  413.0] kernel noise test result: FAILED. 1 passed; 1 failed; 0 ignored",
            // As the 6.1 guest's serial console showed it, in colour.
            "test result: \u{1b}[31mFAILED\u{1b}[m. 0 passed; 3 failed; 0 ignored; 0 measured; 0 filtered out",
        ]);
        assert_eq!((t.passed, t.failed), (4, 4));
        let r = JobResult::new("6.1 tc", 5, &t, Ok(1), 431.6);
        assert!(!r.ok());
        assert_eq!(r.summary(), "guest 6.1 tc: 4 passed, 4 failed, 432 s of guest time");
    }

    #[test]
    fn a_job_passes_only_when_every_named_test_ran_and_passed() {
        let all = tally(&["test result: ok. 5 passed; 0 failed; 0 ignored"]);
        let r = JobResult::new("6.12 tcx", 5, &all, Ok(0), 300.0);
        assert!(r.ok(), "{r:?}");
        assert_eq!(r.summary(), "guest 6.12 tcx: 5 passed, 0 failed, 300 s of guest time");

        // A renamed test: --exact matched nothing, and nothing failed.
        let fewer = tally(&["test result: ok. 4 passed; 0 failed; 0 ignored"]);
        let r = JobResult::new("6.12 tcx", 5, &fewer, Ok(0), 300.0);
        assert!(!r.ok());
        assert!(r.summary().ends_with("(5 tests named, 4 ran)"), "{}", r.summary());

        // None ran at all.
        let r = JobResult::new("6.12 tcx", 5, &Tally::default(), Ok(0), 30.0);
        assert!(!r.ok());

        // A crash: no failed test, a failed status.
        let r = JobResult::new("6.12 tcx", 5, &all, Ok(101), 300.0);
        assert!(!r.ok());
        assert!(r.summary().contains("status 101"), "{}", r.summary());

        // No boot, or the wrong kernel.
        let r = JobResult::new("6.1 tc", 5, &Tally::default(), Err("the guest did not report kernel 6.1".into()), 9.0);
        assert!(!r.ok());
        assert!(r.summary().contains("did not report kernel"), "{}", r.summary());
    }
}
