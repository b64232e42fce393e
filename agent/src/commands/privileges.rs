//! The Linux capabilities sluice-agent needs, and naming the missing ones
//! when a call fails for lack of privilege.
//!
//! The agent container of `deploy/sluice.yaml` is not privileged: it runs as
//! root with `drop: [ALL]` plus the capabilities listed there (README,
//! "Installing on Kubernetes", has the table: today NET_ADMIN, NET_RAW,
//! SYS_ADMIN).
//! `tests/tests/privileges.rs` runs the agent with exactly the manifest's set
//! and then with each one removed, and expects this module's hint to name it.
//!
//! CAP_SYS_ADMIN is needed for the health endpoint's network namespace, and
//! the kernel accepts it in place of CAP_BPF (`bpf_capable()`), CAP_PERFMON
//! (`perfmon_capable()`) and, for TC programs, CAP_NET_ADMIN
//! (`bpf_net_capable()`); without it, CAP_BPF and CAP_PERFMON are needed.
use std::fmt::Write as _;

const CAP_NET_ADMIN: u8 = 12;
const CAP_NET_RAW: u8 = 13;
const CAP_SYS_ADMIN: u8 = 21;
const CAP_PERFMON: u8 = 38;
const CAP_BPF: u8 = 39;

/// Calls that need privilege, and any one of which capabilities grants it.
#[derive(Clone, Copy, Debug)]
pub struct Requirement {
    /// Capability bits, any of which will do (the first is the specific one).
    pub any_of: &'static [u8],
    /// The calls that fail without it.
    pub calls: &'static str,
    /// The subcommands that make those calls.
    pub commands: &'static [&'static str],
}

/// What `sluice-agent` needs, command by command. `run` needs them all: it is
/// the DaemonSet's agent container, whose `kubectl exec`s (`status`,
/// `connectivity-test`) get the same set.
pub const NEEDED: &[Requirement] = &[
    Requirement {
        any_of: &[CAP_BPF, CAP_SYS_ADMIN],
        calls: "bpf(): create and pin maps, load and pin programs, open pins (BPF_OBJ_GET), TCX links",
        commands: &["run", "status", "connectivity-test", "monitor", "cleanup"],
    },
    Requirement {
        any_of: &[CAP_PERFMON, CAP_SYS_ADMIN],
        calls: "BPF_PROG_LOAD: the verifier accepts the programs' packet and map pointer arithmetic only \
                from a process with it (otherwise Spectre v1 hardening refuses them)",
        commands: &["run"],
    },
    Requirement {
        any_of: &[CAP_NET_ADMIN, CAP_SYS_ADMIN],
        calls: "loading TC (sched_cls) programs and attaching them with TCX (bpf_net_capable)",
        commands: &["run", "cleanup"],
    },
    Requirement {
        any_of: &[CAP_NET_ADMIN],
        calls: "netlink changes: veths, addresses, routes (protocol 83), neighbours, moving a veth into a \
                namespace; nft and iptables-restore (nfnetlink)",
        commands: &["run", "cleanup"],
    },
    Requirement {
        any_of: &[CAP_SYS_ADMIN],
        calls: "the health endpoint's network namespace: unshare(CLONE_NEWNET), bind-mounting it under \
                /run/netns, setns() into it",
        commands: &["run", "connectivity-test", "cleanup"],
    },
    Requirement {
        any_of: &[CAP_NET_RAW],
        calls: "connectivity-test's ICMP probes (raw sockets)",
        commands: &["run", "connectivity-test"],
    },
];

/// Names of every capability the kernel knows, by bit.
const NAMES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The effective set of this process (`CapEff` in /proc/self/status).
pub fn effective() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_cap_eff(&status)
}

fn parse_cap_eff(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line.trim_start_matches("CapEff:").trim(), 16).ok()
}

/// `CAP_NET_ADMIN,CAP_BPF,...` for a set.
pub fn names_of(set: u64) -> String {
    let all = (0..64u8)
        .filter(|b| set & (1u64 << b) != 0)
        .map(|b| NAMES.get(b as usize).map(|s| s.to_string()).unwrap_or_else(|| format!("cap_{b}")))
        .collect::<Vec<_>>();
    if all.len() >= NAMES.len() {
        "all".to_string()
    } else if all.is_empty() {
        "none".to_string()
    } else {
        all.join(",")
    }
}

/// The requirements of `command` that the effective set `eff` does not meet.
pub fn unmet(command: &str, eff: u64) -> Vec<&'static Requirement> {
    NEEDED
        .iter()
        .filter(|r| r.commands.contains(&command) && !r.any_of.iter().any(|b| eff & (1u64 << b) != 0))
        .collect()
}

fn name(bit: u8) -> &'static str {
    NAMES.get(bit as usize).copied().unwrap_or("CAP_?")
}

/// Did this error come from the kernel refusing a call for lack of
/// privilege (EPERM, EACCES), or from a tool saying so?
pub fn is_permission_error(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        let errno = cause
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
            .or_else(|| cause.downcast_ref::<nix::errno::Errno>().map(|e| *e as i32));
        matches!(errno, Some(libc::EPERM) | Some(libc::EACCES)) || mentions_permission(&cause.to_string())
    })
}

/// Text (a tool's stderr, a probe's error) that says a call was refused.
pub fn mentions_permission(text: &str) -> bool {
    text.contains("Operation not permitted") || text.contains("Permission denied")
}

/// The lines to print after a permission failure of `command` when this
/// process lacks capabilities it needs; `None` when it lacks none (then the
/// refusal has another cause: an LSM, seccomp, a read-only mount).
pub fn hint(command: &str, eff: u64) -> Option<String> {
    let lacking = unmet(command, eff);
    if lacking.is_empty() {
        return None;
    }
    let mut names: Vec<&str> = lacking.iter().map(|r| name(r.any_of[0])).collect();
    names.dedup();
    let mut out =
        format!("hint: `sluice-agent {command}` was refused a call and runs without {}; it needs:", names.join(", "));
    for r in &lacking {
        let caps: Vec<&str> = r.any_of.iter().map(|b| name(*b)).collect();
        let _ = write!(out, "\n  {} for {}", caps.join(" or "), r.calls);
    }
    let _ = write!(out, "\n  (effective set: {}; README's install section lists what each is for)", names_of(eff));
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: u64 = 1 << CAP_NET_ADMIN | 1 << CAP_NET_RAW | 1 << CAP_SYS_ADMIN;

    #[test]
    fn bits_match_names() {
        for (bit, n) in
            [(CAP_NET_ADMIN, "CAP_NET_ADMIN"), (CAP_NET_RAW, "CAP_NET_RAW"), (CAP_SYS_ADMIN, "CAP_SYS_ADMIN")]
        {
            assert_eq!(name(bit), n);
        }
        assert_eq!(name(CAP_PERFMON), "CAP_PERFMON");
        assert_eq!(name(CAP_BPF), "CAP_BPF");
        assert_eq!(NAMES.len(), 41);
    }

    #[test]
    fn names_the_missing_ones_only() {
        assert!(hint("run", MANIFEST).is_none());
        let h = hint("run", MANIFEST & !(1 << CAP_NET_RAW)).unwrap();
        assert!(h.contains("runs without CAP_NET_RAW;"), "{h}");
        assert!(!h.contains("CAP_BPF or"), "{h}");
        // Without CAP_SYS_ADMIN, bpf() needs CAP_BPF and the verifier CAP_PERFMON.
        let h = hint("run", 1 << CAP_NET_ADMIN | 1 << CAP_NET_RAW).unwrap();
        assert!(h.contains("runs without CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN;"), "{h}");
        let h = hint("run", 1 << CAP_NET_ADMIN | 1 << CAP_NET_RAW | 1 << CAP_BPF | 1 << CAP_PERFMON).unwrap();
        assert!(h.contains("runs without CAP_SYS_ADMIN;"), "{h}");
        // status needs only bpf().
        assert!(hint("status", 1 << CAP_BPF).is_none());
        assert!(hint("status", 1 << CAP_SYS_ADMIN).is_none());
        assert!(hint("status", 0).unwrap().contains("CAP_BPF or CAP_SYS_ADMIN"));
    }

    #[test]
    fn reads_the_effective_set() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t0000008000001000\n";
        assert_eq!(parse_cap_eff(status), Some((1 << 39) | (1 << 12)));
        assert_eq!(names_of((1 << 39) | (1 << 12)), "CAP_NET_ADMIN,CAP_BPF");
        assert_eq!(names_of(0), "none");
        assert_eq!(names_of((1 << 41) - 1), "all");
    }

    #[test]
    fn recognises_refusals() {
        let e = anyhow::Error::new(std::io::Error::from_raw_os_error(libc::EPERM)).context("load program");
        assert!(is_permission_error(&e));
        let e = anyhow::Error::new(nix::errno::Errno::EACCES).context("x");
        assert!(is_permission_error(&e));
        let e = anyhow::anyhow!("nft -f -: Error: Could not process rule: Operation not permitted");
        assert!(is_permission_error(&e));
        let e = anyhow::Error::new(std::io::Error::from_raw_os_error(libc::ENOENT));
        assert!(!is_permission_error(&e));
    }
}
