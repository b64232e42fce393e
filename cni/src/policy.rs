//! ADD's NetworkPolicy step (issue 25): before the pod's programs are
//! attached (and so before its first packet), its address gets its policy
//! entries: `POLICY_IDENTITIES[ip/32]` and `POLICY_ENDPOINTS[ip]`, copied
//! from what the agent compiled for the pod by name (`POLICY_PODS`); its
//! IPv6 address (dual-stack) the same endpoint entry and its IPv6 identity
//! in `POLICY_ENDPOINTS6` / `POLICY_IDENTITIES6`.
//!
//! - No agent enforces NetworkPolicy here (`POLICY_STATE_ENFORCING` clear:
//!   a peers-file node): nothing is written.
//! - No pod name in `CNI_ARGS`: not a Kubernetes pod, no policy can select
//!   it; nothing is written.
//! - The agent has no entry for the pod yet (down, or behind the API
//!   server): ADD waits up to `POD_POLICY_WAIT` for it, then writes a
//!   fail-closed entry (`ENDPOINT_POLICY_PENDING`: the datapath drops
//!   everything but the pod's own node, reason `policy_pending`) and says so
//!   on stderr. Never open. The agent replaces it once it knows the pod.
use std::time::Duration;

use sluice_common::policy::{EndpointPolicy, PodPolicy, ENDPOINT_POLICY_PENDING, IDENTITY_UNKNOWN_CLUSTER};

/// How long ADD waits for the agent to have compiled the pod.
pub const POD_POLICY_WAIT: Duration = Duration::from_secs(1);
/// How often it looks meanwhile.
pub const POD_POLICY_POLL: Duration = Duration::from_millis(10);

/// What ADD writes for a pod's address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyEntries {
    /// For both addresses.
    pub endpoint: EndpointPolicy,
    pub identity: u32,
    /// For the IPv6 address.
    pub identity6: u32,
    /// No entry from the agent: failed closed.
    pub pending: bool,
}

/// The entries for a pod, from the agent's `POLICY_PODS` entry if found.
pub fn entries(found: Option<PodPolicy>) -> PolicyEntries {
    match found {
        Some(p) => PolicyEntries {
            endpoint: p.endpoint,
            identity: p.identity,
            identity6: p.identity_for_ipv6(),
            pending: false,
        },
        None => PolicyEntries {
            endpoint: EndpointPolicy { rules_id: 0, flags: ENDPOINT_POLICY_PENDING },
            // Peers see an address they cannot place: only "every peer"
            // rules admit it, as for any cluster address not known yet.
            identity: IDENTITY_UNKNOWN_CLUSTER,
            identity6: IDENTITY_UNKNOWN_CLUSTER,
            pending: true,
        },
    }
}

/// Look for the pod's entry until it is there or `wait` has passed.
/// `lookup` is `POLICY_PODS[namespace/name]`; its errors end the wait.
pub fn wait_for<E>(
    mut lookup: impl FnMut() -> Result<Option<PodPolicy>, E>,
    wait: Duration,
    poll: Duration,
    mut sleep: impl FnMut(Duration),
) -> Result<Option<PodPolicy>, E> {
    let mut waited = Duration::ZERO;
    loop {
        if let Some(p) = lookup()? {
            return Ok(Some(p));
        }
        if waited >= wait {
            return Ok(None);
        }
        sleep(poll);
        waited += poll;
    }
}

/// The stderr line for a pod that failed closed.
pub fn pending_message(pod: &str, ip: std::net::IpAddr, wait: Duration) -> String {
    format!(
        "sluice-cni: no NetworkPolicy entry for pod {pod} from the agent within {} ms (agent down or behind): \
         {ip} isolated until the agent writes it (drops counted as policy_pending)",
        wait.as_millis()
    )
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    fn policy(rules_id: u32) -> PodPolicy {
        PodPolicy { endpoint: EndpointPolicy { rules_id, flags: 1 }, identity: 300, identity6: 301 }
    }

    #[test]
    fn a_pod_the_agent_knows_gets_its_entries_and_an_unknown_one_fails_closed() {
        assert_eq!(
            entries(Some(policy(7))),
            PolicyEntries {
                endpoint: EndpointPolicy { rules_id: 7, flags: 1 },
                identity: 300,
                identity6: 301,
                pending: false
            }
        );
        // An entry from an agent before IPv6 policy (identity6 0): the
        // IPv6 address takes the IPv4 one's identity.
        let old = PodPolicy { identity6: 0, ..policy(7) };
        assert_eq!(entries(Some(old)).identity6, 300);
        let pending = entries(None);
        assert!(pending.pending);
        assert_eq!(pending.endpoint.flags, ENDPOINT_POLICY_PENDING, "never open");
        assert_eq!(pending.identity, IDENTITY_UNKNOWN_CLUSTER);
        assert_eq!(pending.identity6, IDENTITY_UNKNOWN_CLUSTER, "never a guess for the IPv6 address either");
    }

    #[test]
    fn the_wait_is_bounded_and_ends_when_the_entry_appears() {
        // Appears on the 4th look: found after 3 polls.
        let looks = Cell::new(0);
        let slept = Cell::new(Duration::ZERO);
        let found = wait_for::<()>(
            || {
                looks.set(looks.get() + 1);
                Ok((looks.get() >= 4).then(|| policy(1)))
            },
            POD_POLICY_WAIT,
            POD_POLICY_POLL,
            |d| slept.set(slept.get() + d),
        );
        assert_eq!(found, Ok(Some(policy(1))));
        assert_eq!(slept.get(), POD_POLICY_POLL * 3);
        // Never appears: gives up after the wait.
        slept.set(Duration::ZERO);
        let found = wait_for::<()>(|| Ok(None), POD_POLICY_WAIT, POD_POLICY_POLL, |d| slept.set(slept.get() + d));
        assert_eq!(found, Ok(None));
        assert_eq!(slept.get(), POD_POLICY_WAIT);
        // An error ends it at once.
        assert_eq!(wait_for(|| Err("EPERM"), POD_POLICY_WAIT, POD_POLICY_POLL, |_| panic!("slept")), Err("EPERM"));
    }
}
