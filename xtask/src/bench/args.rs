//! The bench's command line and what a run measures (`Plan`: rounds,
//! durations, sizes; `--smoke` shrinks them for CI).
use std::time::Duration;

use super::report::{CROSS_PATHS, VXLAN_PATHS};

#[derive(clap::Args, Clone, Debug)]
pub struct BenchArgs {
    /// A few seconds per metric, one round: for CI, so the bench can't rot.
    #[arg(long)]
    pub smoke: bool,
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Only the CNI section: ADD+DEL cycles and the burst for sluice and
    /// bridge + host-local, and sluice's per-step profile (release build;
    /// 50 cycles unless --cni-cycles). Writes target/bench/cni.json.
    #[arg(long)]
    pub cni: bool,
    /// ADD+DEL cycles per plugin (default 200, --smoke 10, --cni 50).
    #[arg(long)]
    pub cni_cycles: Option<usize>,
    /// Only the VXLAN comparison (issue 15): A, S cross-node, S-vxlan and
    /// K vxlan, their ratios and targets (release build; --rounds, default
    /// 3). Writes target/bench/vxlan.json.
    #[arg(long)]
    pub vxlan: bool,
    /// Only the native cross-node rows (issue 24): S cross-node against
    /// the sluice lab's own nodes (A), bare nodes (A-bare) and B
    /// cross-node, with the sluice programs' cost per packet (release
    /// build; --rounds, default 3). Writes target/bench/cross.json.
    #[arg(long, conflicts_with_all = ["vxlan", "cni"])]
    pub cross: bool,
    /// Only the NetworkPolicy rows (issue 25): cross-node TCP_RR/TCP_CRR
    /// with no policy, one allow policy and N policies over made-up pods,
    /// their program costs, the agent's RSS and change → maps latency
    /// (release build; --rounds, default 3). Writes target/bench/policy.json.
    #[arg(long, conflicts_with_all = ["vxlan", "cni", "cross"])]
    pub policy: bool,
    /// Only IPv6 beside IPv4 (issue 28): node-node, cross-node and
    /// same-node TCP_RR/TCP_CRR over both families on one dual-stack lab
    /// per round, the paths in turns, with the sluice programs' cost
    /// (release build; --rounds, default 3). Writes target/bench/ipv6.json.
    #[arg(long, conflicts_with_all = ["vxlan", "cni", "cross", "policy"])]
    pub ipv6: bool,
    /// Only veth against netkit pods (issues 17, 26): same-node and
    /// cross-node TCP_RR, TCP_CRR and eBPF ns per transaction on one lab per
    /// device, rounds alternating the order; ratios netkit/veth with their
    /// spread, no targets (debug build; --rounds, default 5). Needs a kernel
    /// with netkit: run it in `cargo xtask guest 6.12 -- target/debug/xtask
    /// bench --devices --prebuilt`. Writes target/bench/devices.json.
    #[arg(long, conflicts_with_all = ["vxlan", "cni", "cross", "policy"])]
    pub devices: bool,
    /// TCX links against legacy tc filters (issue 26), natively: the same
    /// rows, labs and rounds as --devices, one lab with `--attach=tcx` and
    /// one with `--attach=tc`; ratios tc/tcx with their spread (debug
    /// build; --rounds, default 5). Writes target/bench/attach_modes.json.
    #[arg(long, conflicts_with_all = ["vxlan", "cni", "cross", "policy", "devices"])]
    pub attach_modes: bool,
    /// Only the NodePort rows (issue 27): the world → NodePort on node 1
    /// → the backend on node 2, TCP_RR and TCP_CRR, through sluice's SNAT
    /// and through kube-proxy's iptables rules, with 10, 1,000 and 10,000
    /// NodePort Services; then the connection tables at 500,000 entries:
    /// agent RSS and GC pass time (release build; --rounds, default 3).
    /// Writes target/bench/nodeport.json.
    #[arg(long, conflicts_with_all = ["vxlan", "cni", "cross", "policy", "devices", "attach_modes"])]
    pub nodeport: bool,
    /// Use the binaries and eBPF object already built (no setup, no
    /// build): for a run inside `cargo xtask guest`, where the tree is
    /// read-only and a build would crawl.
    #[arg(long)]
    pub prebuilt: bool,
    /// With --policy: only its control plane (the agent's RSS, the time
    /// from publishing every object to the maps, single changes → maps),
    /// without the TCP_RR/TCP_CRR rows: minutes instead of the rows' half
    /// hour at the scale, for iterating on the agent.
    #[arg(long, requires = "policy")]
    pub policy_control_only: bool,
    /// Internal: be one measurement's client (MODE rr|crr, ADDR, MILLIS)
    /// and print its figures as JSON; the bench starts it inside a node's
    /// cgroup, where the socket load balancer sees it.
    #[arg(long, hide = true, num_args = 3, value_names = ["MODE", "ADDR", "MILLIS"])]
    pub client: Option<Vec<String>>,
}

pub(super) struct Plan {
    pub(super) rounds: usize,
    /// Measure only these paths (all when empty).
    pub(super) only: Vec<&'static str>,
    pub(super) rr: Duration,
    pub(super) tput_secs: u32,
    pub(super) cni_cycles: usize,
    pub(super) burst: usize,
    pub(super) peers: usize,
    pub(super) release: bool,
    /// Services installed for each measurement of the Service paths, and
    /// rounds of those paths (cheaper than the others; TCP_CRR ratios
    /// near a target need more than three).
    pub(super) scales: Vec<usize>,
    pub(super) svc_rounds: usize,
    /// Services (with `services::PER_SERVICE` endpoints each) for the
    /// Services control plane, and single changes timed there.
    pub(super) svc_control: usize,
    pub(super) changes: usize,
    /// NetworkPolicy scale (issue 25): policies, made-up pods and
    /// namespaces served by the test API server, and single policy
    /// changes (and as many label changes) timed to the maps.
    pub(super) policies: usize,
    pub(super) policy_pods: usize,
    pub(super) policy_namespaces: usize,
    pub(super) policy_changes: usize,
    /// Measure the NetworkPolicy TCP_RR/TCP_CRR rows (not with
    /// `--policy-control-only`).
    pub(super) policy_rows: bool,
    /// Entries written into the connection tables (`NAT4` and
    /// `POLICY_CT` together) for their RSS and GC figures (`--nodeport`).
    pub(super) ct_entries: usize,
}

impl Plan {
    pub(super) fn from(args: &BenchArgs) -> Self {
        let mut plan = Self::defaults(args);
        plan.cni_cycles = args.cni_cycles.unwrap_or(if args.cni && !args.smoke { 50 } else { plan.cni_cycles });
        if args.vxlan {
            plan.only = VXLAN_PATHS.to_vec();
        }
        if args.cross {
            plan.only = CROSS_PATHS.to_vec();
        }
        if args.devices || args.attach_modes {
            // Debug binaries: the guest runs what the host built, and the
            // ratio compares two kernel paths driven by the same agent.
            plan.release = false;
            plan.rounds = args.rounds.unwrap_or(5);
            if !args.smoke {
                plan.rr = Duration::from_secs(1);
            }
        }
        plan.policy_rows = !args.policy_control_only;
        plan
    }

    /// Whether this run measures path `name`.
    pub(super) fn wants(&self, name: &str) -> bool {
        self.only.is_empty() || self.only.contains(&name)
    }

    fn defaults(args: &BenchArgs) -> Self {
        if args.smoke {
            Plan {
                rounds: args.rounds.unwrap_or(1),
                only: Vec::new(),
                rr: Duration::from_millis(300),
                tput_secs: 1,
                cni_cycles: 10,
                burst: 10,
                peers: 500,
                release: false,
                scales: vec![10, 100],
                svc_rounds: args.rounds.unwrap_or(1),
                svc_control: 100,
                changes: 20,
                policies: 20,
                policy_pods: 200,
                policy_namespaces: 10,
                policy_changes: 6,
                policy_rows: true,
                ct_entries: 20_000,
            }
        } else {
            Plan {
                rounds: args.rounds.unwrap_or(3),
                only: Vec::new(),
                rr: Duration::from_secs(2),
                tput_secs: 4,
                cni_cycles: 200,
                burst: 50,
                peers: 5000,
                release: true,
                scales: vec![10, 1_000, 10_000],
                svc_rounds: args.rounds.unwrap_or(5),
                svc_control: 10_000,
                changes: 200,
                policies: 1_000,
                policy_pods: 10_000,
                policy_namespaces: 500,
                policy_changes: 100,
                policy_rows: true,
                ct_entries: 500_000,
            }
        }
    }
}
