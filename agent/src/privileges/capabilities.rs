//! Linux capabilities by bit and by name, and this process's effective set.

pub const CAP_NET_ADMIN: u8 = 12;
pub const CAP_NET_RAW: u8 = 13;
pub const CAP_SYS_ADMIN: u8 = 21;
pub const CAP_PERFMON: u8 = 38;
pub const CAP_BPF: u8 = 39;

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

pub fn name(bit: u8) -> &'static str {
    NAMES.get(bit as usize).copied().unwrap_or("CAP_?")
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn reads_the_effective_set() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t0000008000001000\n";
        assert_eq!(parse_cap_eff(status), Some((1 << 39) | (1 << 12)));
        assert_eq!(names_of((1 << 39) | (1 << 12)), "CAP_NET_ADMIN,CAP_BPF");
        assert_eq!(names_of(0), "none");
        assert_eq!(names_of((1 << 41) - 1), "all");
    }
}
