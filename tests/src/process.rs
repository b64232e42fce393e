//! Waiting for a process the lab killed to be gone.
//!
//! A killed process that is not our child (a lab's agents and helpers once
//! `xtask lab up` has exited) is reparented to the nearest subreaper or to
//! pid 1. If that one never calls wait() (as on these VMs, whose pid 1 is
//! not an init), the dead process stays a zombie: `/proc/<pid>` remains and
//! a wait on "the directory is gone" runs to its timeout for every process
//! (`lab down` took about two minutes that way). A zombie has exited and
//! released its sockets, namespaces and BPF links; only its table entry is
//! left, so it counts as gone.
use std::{
    fs,
    path::Path,
    time::{Duration, Instant},
};

pub use sluice_agent::commands::status::stat_says_exited;

/// Whether `pid` no longer runs: no such process, or only its zombie.
pub fn exited(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat_says_exited(&stat),
        Err(_) => !Path::new(&format!("/proc/{pid}")).exists(),
    }
}

/// Reap `pid` if it is our child and has exited (any thread's child:
/// `__WALL`).
fn reap(pid: u32) {
    use nix::sys::wait::{waitpid, WaitPidFlag};
    let _ = waitpid(nix::unistd::Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL));
}

/// The processes of process group `pgid` that still run (zombies do not).
pub fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
            // After the command name: state, ppid, pgrp.
            let fields: Vec<&str> =
                stat.rfind(')').map(|i| stat[i + 1..].split_whitespace().collect()).unwrap_or_default();
            fields.get(2).and_then(|g| g.parse::<u32>().ok()) == Some(pgid) && !stat_says_exited(&stat)
        })
        .collect()
}

/// Wait up to `timeout` until no process of group `pgid` runs, reaping
/// those that are our children. `Err` names the ones left.
pub fn wait_group_gone(pgid: u32, timeout: Duration) -> Result<(), Vec<u32>> {
    let start = Instant::now();
    loop {
        let left = group_members(pgid);
        for &pid in &left {
            reap(pid);
        }
        reap(pgid);
        if left.is_empty() {
            return Ok(());
        }
        if start.elapsed() >= timeout {
            return Err(left);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Wait up to `timeout` for `pid` to exit, reaping it if it is our child.
pub fn wait_gone(pid: u32, timeout: Duration) {
    let start = Instant::now();
    loop {
        // Reap if it is our child (then /proc/<pid> goes away too).
        reap(pid);
        if exited(pid) {
            // It may have exited just after the wait above: reap it now if
            // it is ours, so nothing (a `status` run) still sees its pid.
            reap(pid);
            return;
        }
        if start.elapsed() >= timeout {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_after_the_command_name_decides() {
        assert!(stat_says_exited("12254 (sleep) Z 1 12253 12253 0 -1 4228172 87 0 0 0 0 0 0 0 20 0 1 0"));
        assert!(stat_says_exited("7 (x) X 1 7"));
        assert!(!stat_says_exited("12254 (sleep) S 1 12253 12253 0 -1"));
        assert!(!stat_says_exited("1 (process_api) R 0 1 1"));
        // A command name with spaces and parentheses, and a Z inside it.
        assert!(!stat_says_exited("99 (a) Z (b) S 1 99"));
        assert!(stat_says_exited("99 (a) S (b) Z 1 99"));
        assert!(!stat_says_exited(""));
        assert!(!stat_says_exited("garbage"));
    }

    #[test]
    fn a_zombie_we_do_not_reap_counts_as_gone_at_once() {
        // A child that exits but is not reaped stays a zombie, like an
        // orphan whose pid 1 never waits; `exited` must say so without
        // reaping it.
        let mut child = std::process::Command::new("true").spawn().expect("spawn true");
        let pid = child.id();
        let start = Instant::now();
        while !exited(pid) {
            assert!(start.elapsed() < Duration::from_secs(5), "pid {pid} still running after 5 s");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(Path::new(&format!("/proc/{pid}")).exists(), "still a zombie: not reaped by exited()");
        child.wait().expect("reap");
        assert!(exited(pid));
    }

    #[test]
    fn a_running_process_is_not_gone() {
        let mut child = std::process::Command::new("sleep").arg("5").spawn().expect("spawn sleep");
        assert!(!exited(child.id()));
        child.kill().expect("kill");
        child.wait().expect("reap");
    }
}

/// The CPU time `pid` (all its threads) has used so far, user and system
/// (`/proc/<pid>/stat` fields 14 and 15); `None` when it is gone.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    cpu_time_of_stat(&stat, clock_ticks_per_sec())
}

/// `cpu_time` of one `/proc/<pid>/stat` line, at `ticks` per second.
pub fn cpu_time_of_stat(stat: &str, ticks: u64) -> Option<Duration> {
    // After the command name (which may hold spaces): state is field 3,
    // utime field 14, stime field 15.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    (ticks > 0).then(|| Duration::from_secs_f64((utime + stime) as f64 / ticks as f64))
}

fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf reads a constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// Keep every thread of `pid` off CPU `cpu` (on all the others), so its
/// work never preempts what is measured there. Threads started later
/// inherit the mask of the thread that starts them. Returns the threads
/// moved; an error when none could be (one CPU only, or `pid` gone).
pub fn keep_off_cpu(pid: u32, cpu: usize) -> anyhow::Result<usize> {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    if cpus < 2 {
        anyhow::bail!("one CPU only: nothing to keep pid {pid} off CPU {cpu} onto");
    }
    // SAFETY: a zeroed cpu_set_t with every CPU but `cpu` set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for c in (0..cpus).filter(|&c| c != cpu) {
        // SAFETY: c < CPU_SETSIZE (available_parallelism is far below it).
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    let mut moved = 0;
    for task in fs::read_dir(format!("/proc/{pid}/task"))? {
        let Some(tid) = task?.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        // SAFETY: sched_setaffinity on a thread id with a valid set.
        if unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) } == 0 {
            moved += 1;
        }
    }
    if moved == 0 {
        anyhow::bail!("no thread of pid {pid} could be moved off CPU {cpu}");
    }
    Ok(moved)
}

#[cfg(test)]
mod cpu_tests {
    use super::*;

    #[test]
    fn cpu_time_reads_utime_and_stime_after_a_command_name_with_spaces() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime ...
        let stat = "42 (sluice agent) S 1 42 42 0 -1 4194560 100 0 0 0 250 130 0 0 20 0 9 0";
        assert_eq!(cpu_time_of_stat(stat, 100), Some(Duration::from_millis(3800)));
        assert_eq!(cpu_time_of_stat("42 (x) S 1", 100), None);
    }

    #[test]
    fn own_cpu_time_grows_with_work() {
        let pid = std::process::id();
        let before = cpu_time(pid).expect("own stat");
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(200) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        std::hint::black_box(x);
        let after = cpu_time(pid).expect("own stat");
        assert!(after > before, "{before:?} then {after:?} after 200 ms of spinning");
    }
}
