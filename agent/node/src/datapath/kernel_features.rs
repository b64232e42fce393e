//! What the datapath needs from the kernel past Linux 5.10, probed at the
//! agent's start (issue 26). Each need is probed the way libbpf does
//! (aya's `is_helper_supported` loads a two-instruction program calling
//! the helper from the program type that uses it; `is_map_supported`
//! creates the map), so a distribution kernel with backports is judged by
//! what it has, not by its version. TCX and netkit have their own probes
//! and choices (`attach_mode`, the agent's `pod_device`).
//!
//! A missing need either makes the agent refuse to start, naming it, or
//! degrades one feature with a message (`decide`, pure).
use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{is_helper_supported, is_map_supported, BpfHelper},
};

/// One thing the eBPF object uses that Linux 5.10 does not have everywhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feature {
    /// `bpf_redirect_peer` from TC programs (5.10).
    RedirectPeer,
    /// `bpf_redirect_neigh` from TC programs (5.10).
    RedirectNeigh,
    /// Ring buffer maps (5.8): the monitor's event maps.
    RingBuf,
    /// `bpf_set_retval` from cgroup sock_addr programs (5.18): the socket
    /// load balancer's refused connects.
    SockAddrSetRetval,
    /// `bpf_get_netns_cookie` from cgroup sock_addr programs (5.7): the
    /// socket load balancer's session affinity.
    SockAddrNetnsCookie,
}

/// What a missing feature costs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IfMissing {
    /// The datapath cannot run: the agent refuses to start.
    Refuse,
    /// The socket load balancer cannot load: Services stay with
    /// kube-proxy (`--kube-proxy-replacement=true` is refused).
    NoSocketLb,
}

/// A need: the feature, the kernel that brought it, what uses it.
#[derive(Clone, Copy, Debug)]
pub struct Need {
    pub feature: Feature,
    pub name: &'static str,
    pub since: &'static str,
    pub used_for: &'static str,
    pub if_missing: IfMissing,
}

/// Everything probed, in order.
pub const NEEDS: [Need; 5] = [
    Need {
        feature: Feature::RedirectPeer,
        name: "bpf_redirect_peer",
        since: "5.10",
        used_for: "delivering packets into a pod",
        if_missing: IfMissing::Refuse,
    },
    Need {
        feature: Feature::RedirectNeigh,
        name: "bpf_redirect_neigh",
        since: "5.10",
        used_for: "sending pod packets to other nodes",
        if_missing: IfMissing::Refuse,
    },
    Need {
        feature: Feature::RingBuf,
        name: "ring buffer maps",
        since: "5.8",
        used_for: "the monitor's event maps, created with the object",
        if_missing: IfMissing::Refuse,
    },
    Need {
        feature: Feature::SockAddrSetRetval,
        name: "bpf_set_retval in cgroup sock_addr programs",
        since: "5.18",
        used_for: "the socket load balancer",
        if_missing: IfMissing::NoSocketLb,
    },
    Need {
        feature: Feature::SockAddrNetnsCookie,
        name: "bpf_get_netns_cookie in cgroup sock_addr programs",
        since: "5.7",
        used_for: "the socket load balancer",
        if_missing: IfMissing::NoSocketLb,
    },
];

/// What this kernel allows, once every need was probed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelSupport {
    /// The socket load balancer's programs can load.
    pub socket_lb: bool,
    /// One line per degraded feature (empty: nothing degraded).
    pub degraded: Vec<String>,
}

/// Decide from the probes (`Ok(present)`, or the probe's error: counted
/// as missing, with the error named) whether the agent can run, and what
/// degrades. `want_socket_lb`: `--kube-proxy-replacement=true`, which a
/// kernel without the socket load balancer's needs refuses. Pure.
pub fn decide(probes: &[(Feature, Result<bool, String>)], want_socket_lb: bool) -> Result<KernelSupport, String> {
    let mut refused = Vec::new();
    let mut no_socket_lb = Vec::new();
    for need in &NEEDS {
        let missing = match probes.iter().find(|(f, _)| *f == need.feature).map(|(_, r)| r) {
            Some(Ok(true)) => continue,
            Some(Ok(false)) => format!("{} (Linux {}+, for {})", need.name, need.since, need.used_for),
            Some(Err(e)) => format!("{} (Linux {}+, for {}): probe failed: {e}", need.name, need.since, need.used_for),
            None => format!("{} (Linux {}+, for {}): not probed", need.name, need.since, need.used_for),
        };
        match need.if_missing {
            IfMissing::Refuse => refused.push(missing),
            IfMissing::NoSocketLb => no_socket_lb.push(missing),
        }
    }
    if !no_socket_lb.is_empty() && want_socket_lb {
        refused.push(format!("--kube-proxy-replacement=true needs {}", no_socket_lb.join(" and ")));
    }
    if !refused.is_empty() {
        return Err(format!("this kernel lacks what sluice needs: {}", refused.join("; ")));
    }
    let degraded = if no_socket_lb.is_empty() {
        Vec::new()
    } else {
        vec![format!(
            "no socket load balancer (Services through kube-proxy only): this kernel lacks {}",
            no_socket_lb.join(" and ")
        )]
    };
    Ok(KernelSupport { socket_lb: no_socket_lb.is_empty(), degraded })
}

/// Probe one feature on this kernel. `Ok(None)`: the kernel refused the
/// probe itself for want of privilege (EPERM, EACCES), which says nothing
/// about the kernel; the object's own load that follows fails the same way
/// and names the missing capability (`privileges`).
pub fn probe(feature: Feature) -> Result<Option<bool>, String> {
    let helper = |program: ProgramType, helper: BpfHelper| probe_outcome(is_helper_supported(program, helper));
    match feature {
        Feature::RedirectPeer => helper(ProgramType::SchedClassifier, BpfHelper::BPF_FUNC_redirect_peer),
        Feature::RedirectNeigh => helper(ProgramType::SchedClassifier, BpfHelper::BPF_FUNC_redirect_neigh),
        Feature::RingBuf => probe_outcome(is_map_supported(MapType::RingBuf)),
        Feature::SockAddrSetRetval => helper(ProgramType::CgroupSockAddr, BpfHelper::BPF_FUNC_set_retval),
        Feature::SockAddrNetnsCookie => helper(ProgramType::CgroupSockAddr, BpfHelper::BPF_FUNC_get_netns_cookie),
    }
}

/// A probe's answer: present or not, not permitted to ask (`None`), or its
/// error with the whole chain (aya's top error names only the syscall).
fn probe_outcome<E: std::error::Error + 'static>(r: Result<bool, E>) -> Result<Option<bool>, String> {
    match r {
        Ok(present) => Ok(Some(present)),
        Err(e) => {
            let mut errno = None;
            let mut chain = e.to_string();
            let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
            while let Some(err) = source {
                if let Some(io) = err.downcast_ref::<std::io::Error>() {
                    errno = errno.or(io.raw_os_error());
                }
                source = err.source();
                if let Some(next) = source {
                    chain = format!("{chain}: {next}");
                }
            }
            if not_permitted(errno) {
                Ok(None)
            } else {
                Err(chain)
            }
        }
    }
}

/// Whether a probe's errno means "not allowed to ask", not "not there" (pure).
fn not_permitted(errno: Option<i32>) -> bool {
    matches!(errno, Some(libc::EPERM) | Some(libc::EACCES))
}

/// Probe every need and decide. A need the agent was not permitted to
/// probe is left to the object's load, which fails naming the capability.
pub fn check(want_socket_lb: bool) -> Result<KernelSupport, String> {
    let mut probes = Vec::new();
    for need in &NEEDS {
        match probe(need.feature) {
            Ok(Some(present)) => probes.push((need.feature, Ok(present))),
            Ok(None) => return Ok(KernelSupport { socket_lb: true, degraded: Vec::new() }),
            Err(e) => probes.push((need.feature, Err(e))),
        }
    }
    decide(&probes, want_socket_lb)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_but(missing: &[Feature]) -> Vec<(Feature, Result<bool, String>)> {
        NEEDS.iter().map(|n| (n.feature, Ok(!missing.contains(&n.feature)))).collect()
    }

    #[test]
    fn a_kernel_with_everything_degrades_nothing() {
        let s = decide(&all_but(&[]), true).unwrap();
        assert_eq!(s, KernelSupport { socket_lb: true, degraded: vec![] });
    }

    #[test]
    fn without_bpf_set_retval_the_socket_lb_goes_and_kube_proxy_replacement_is_refused() {
        // Linux 5.15 (Ubuntu 22.04): everything but bpf_set_retval.
        let probes = all_but(&[Feature::SockAddrSetRetval]);
        let s = decide(&probes, false).unwrap();
        assert!(!s.socket_lb);
        assert_eq!(s.degraded.len(), 1);
        assert!(s.degraded[0].contains("kube-proxy only") && s.degraded[0].contains("bpf_set_retval"), "{s:?}");
        let e = decide(&probes, true).unwrap_err();
        assert!(e.contains("--kube-proxy-replacement=true needs bpf_set_retval"), "{e}");
        assert!(e.contains("Linux 5.18+"), "{e}");
    }

    #[test]
    fn a_probe_refused_for_privilege_is_not_a_missing_feature() {
        let denied = std::io::Error::from_raw_os_error(libc::EPERM);
        assert_eq!(probe_outcome::<std::io::Error>(Err(denied)), Ok(None));
        let denied = std::io::Error::from_raw_os_error(libc::EACCES);
        assert_eq!(probe_outcome::<std::io::Error>(Err(denied)), Ok(None));
        let other = std::io::Error::from_raw_os_error(libc::ENOMEM);
        let e = probe_outcome::<std::io::Error>(Err(other)).unwrap_err();
        assert!(e.contains("Cannot allocate memory"), "the error keeps the kernel's answer: {e}");
        assert_eq!(probe_outcome::<std::io::Error>(Ok(false)), Ok(Some(false)));
    }

    #[test]
    fn a_missing_datapath_helper_or_a_failed_probe_refuses_with_its_name() {
        let e = decide(&all_but(&[Feature::RedirectPeer]), false).unwrap_err();
        assert!(e.contains("bpf_redirect_peer (Linux 5.10+"), "{e}");
        let mut probes = all_but(&[]);
        probes[2].1 = Err("Operation not permitted".into());
        let e = decide(&probes, false).unwrap_err();
        assert!(e.contains("ring buffer maps") && e.contains("probe failed: Operation not permitted"), "{e}");
        // Every need must be probed: one left out is not a pass.
        let e = decide(&probes[1..], false).unwrap_err();
        assert!(e.contains("bpf_redirect_peer") && e.contains("not probed"), "{e}");
    }
}
