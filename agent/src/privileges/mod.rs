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

pub mod capabilities;
pub mod refusal;

pub use capabilities::{effective, names_of};
use capabilities::{name, CAP_BPF, CAP_NET_ADMIN, CAP_NET_RAW, CAP_PERFMON, CAP_SYS_ADMIN};
pub use refusal::{is_permission_error, mentions_permission};

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

/// The requirements of `command` that the effective set `eff` does not meet.
pub fn unmet(command: &str, eff: u64) -> Vec<&'static Requirement> {
    NEEDED
        .iter()
        .filter(|r| r.commands.contains(&command) && !r.any_of.iter().any(|b| eff & (1u64 << b) != 0))
        .collect()
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
}
