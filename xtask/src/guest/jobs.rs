//! The guest jobs `cargo xtask test` runs after the native tests (issue
//! 26): which kernel, how the agents attach and which pod device they
//! make, and which of the suite's tests prove each path there. Each job is
//! one boot; TCG is 10-50x slower than this machine, so a job names the
//! few tests that prove its paths, not whole binaries.
//!
//! To add a job (a netkit row, another kernel), add a row to [`JOBS`]: the
//! environment reaches the agents (`--attach` and `--device` read
//! `SLUICE_ATTACH` and `SLUICE_DEVICE`), and the lab fails any test whose
//! agent attaches otherwise than `SLUICE_ATTACH` says
//! (`Lab::wait_agent_ready`), so a fallback never passes silently.
use std::path::Path;

/// One boot of a guest kernel running named tests.
#[derive(Clone, Copy, Debug)]
pub struct GuestJob {
    /// The name in the closing summary (`guest 6.1 tc: ...`).
    pub name: &'static str,
    /// `cargo xtask guest`'s kernel: `6.1` or `6.12`.
    pub kernel: &'static str,
    /// `SLUICE_ATTACH`: the attach mode every agent must report.
    pub attach: &'static str,
    /// `SLUICE_DEVICE`: the pod device the agents make.
    pub device: &'static str,
    pub tests: &'static [GuestTests],
}

/// Tests of one test binary (`tests/tests/<binary>.rs`), by exact name.
#[derive(Clone, Copy, Debug)]
pub struct GuestTests {
    pub binary: &'static str,
    pub names: &'static [&'static str],
}

/// The lab matrix `cargo xtask lab up` prints, reached in full.
const MATRIX: GuestTests =
    GuestTests { binary: "cluster_traffic", names: &["lab_up_reaches_every_path_of_the_matrix"] };
/// CNI GC releases every attachment not listed (ADD, GC; nothing left).
const CNI_GC: GuestTests = GuestTests { binary: "cni", names: &["gc_releases_every_attachment_not_listed"] };

/// Every guest job, in the order they run.
pub const JOBS: &[GuestJob] = &[
    // Debian 12's kernel: no TCX, so legacy tc (clsact + cls_bpf).
    GuestJob {
        name: "6.1 tc",
        kernel: "6.1",
        attach: "tc",
        device: "veth",
        tests: &[
            GuestTests {
                binary: "attach_tc",
                names: &[
                    // pod-to-pod fast path: counters move, the FORWARD drop rule counts nothing
                    "pods_talk_through_tc_filters_same_node_and_across_nodes",
                    // SIGKILL + restart under a flow, filters swapped in place, nothing lost
                    "agent_restarts_under_a_flow_swap_tc_filters_in_place_and_lose_nothing",
                    // CNI ADD/CHECK/DEL and cleanup leave no filter or pin
                    "cni_add_check_del_and_cleanup_leave_no_tc_filter_behind",
                ],
            },
            CNI_GC,
            MATRIX,
        ],
    },
    // Debian 12's backported kernel: TCX links, veth pods.
    GuestJob {
        name: "6.12 tcx",
        kernel: "6.12",
        attach: "tcx",
        device: "veth",
        tests: &[
            GuestTests {
                binary: "datapath",
                names: &[
                    // pod-to-pod fast path: the FORWARD drop rule counts nothing
                    "pod_traffic_bypasses_the_nodes_forwarding_path_even_with_forwarding_on",
                    // SIGKILL + restart under a flow: same links, programs replaced, nothing lost
                    "agent_killed_and_restarted_loses_nothing",
                ],
            },
            GuestTests {
                binary: "cni",
                names: &[
                    // ADD, DEL twice and after the namespace went: the node as before.
                    // (check_verifies_what_add_left races the agent's endpoint
                    // repair under TCG: the entry it removes came back before
                    // CHECK ran, on 6.12.)
                    "del_is_idempotent",
                    "gc_releases_every_attachment_not_listed",
                ],
            },
            MATRIX,
        ],
    },
    // The same kernel with netkit pods (issue 26): the paths netkit changes.
    // Each test run in the 6.12 guest with netkit pods: about 450 s in all.
    GuestJob {
        name: "6.12 netkit",
        kernel: "6.12",
        attach: "tcx",
        device: "netkit",
        tests: &[
            // Services through kube-proxy's rules from pods and nodes, pod to pod, the world
            MATRIX,
            GuestTests {
                binary: "datapath",
                names: &[
                    // pod to pod same node (redirect to the host end) and cross node
                    "pods_reach_each_other_same_node_and_across_nodes_icmp_tcp_udp",
                    // SIGKILL + restart under a flow: netkit links updated in place, nothing lost
                    "agent_killed_and_restarted_loses_nothing",
                    // drops in the sender's transmit path: nothing arrives, every attempt counted
                    "spoofed_source_is_dropped_and_counted",
                ],
            },
            // node <-> remote pod across VXLAN (inner frames with no MACs: the device must not learn)
            GuestTests { binary: "tunnel", names: &["tunnel_always_on_one_lan_tunnels_every_peer_and_works_the_same"] },
            // ClusterIP through the socket load balancer from pods and nodes
            GuestTests {
                binary: "services",
                names: &["cluster_ip_from_pods_and_nodes_reaches_every_backend_over_tcp_and_udp"],
            },
            GuestTests {
                binary: "cni",
                names: &[
                    // ADD, CHECK (an L3 pod's routes), DEL: nothing left
                    "check_verifies_what_add_left",
                    "gc_releases_every_attachment_not_listed",
                ],
            },
            // --device=auto takes netkit on this kernel
            GuestTests {
                binary: "agent",
                names: &["pod_device_auto_takes_what_the_kernel_has_and_a_forced_netkit_it_lacks_is_refused"],
            },
        ],
    },
];

impl GuestJob {
    /// How many tests the job names (each must run).
    pub fn named(&self) -> usize {
        self.tests.iter().map(|t| t.names.len()).sum()
    }

    /// The environment every test (and through it every agent) runs with.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("SLUICE_ATTACH", self.attach.to_string()),
            ("SLUICE_DEVICE", self.device.to_string()),
            // TCG: an agent's start takes 20-30 s instead of one.
            ("SLUICE_TEST_PATIENCE", PATIENCE.to_string()),
        ]
    }

    /// The shell script the guest runs: each binary once with its tests
    /// (exact names, one at a time), a marker line before each, and the
    /// exit status 1 if any binary failed. `executable` maps a binary
    /// name to its path (from cargo's build messages).
    pub fn script(&self, executable: impl Fn(&str) -> Option<String>) -> Result<String, String> {
        let mut s = String::from("failed=0\n");
        for (k, v) in self.env() {
            s.push_str(&format!("export {k}={}\n", quote(&v)));
        }
        for t in self.tests {
            let exe = executable(t.binary).ok_or_else(|| format!("no test executable for {}", t.binary))?;
            s.push_str(&format!("echo {}; start=$(date +%s)\n", quote(&format!("{MARKER}{}", t.binary))));
            let names: Vec<String> = t.names.iter().map(|n| quote(n)).collect();
            s.push_str(&format!(
                "{} --exact --test-threads 1 --color never {} || failed=1\n",
                quote(&exe),
                names.join(" ")
            ));
            s.push_str(&format!("echo \"{MARKER}{} took $(( $(date +%s) - start )) s\"\n", t.binary));
        }
        s.push_str("exit $failed\n");
        Ok(s)
    }
}

/// How many times longer the tests' readiness waits are in a guest.
pub const PATIENCE: u32 = 6;

/// The line the guest prints before each test binary.
pub const MARKER: &str = "guest-tests: ";

/// Single quotes for sh.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The job named `name` (`6.1 tc`), or every job.
pub fn select(name: Option<&str>) -> Result<Vec<GuestJob>, String> {
    match name {
        None => Ok(JOBS.to_vec()),
        Some(n) => JOBS.iter().find(|j| j.name == n).map(|j| vec![*j]).ok_or_else(|| {
            let names: Vec<&str> = JOBS.iter().map(|j| j.name).collect();
            format!("no guest job {n:?}; the jobs are {names:?}")
        }),
    }
}

/// Names a job lists that `tests/tests/<binary>.rs` under `root` does not
/// define as a `#[test] fn`: a renamed test would otherwise run nothing.
pub fn missing_tests(root: &Path, job: &GuestJob) -> Vec<String> {
    let mut missing = Vec::new();
    for t in job.tests {
        let source =
            std::fs::read_to_string(root.join("tests/tests").join(format!("{}.rs", t.binary))).unwrap_or_default();
        for name in t.names {
            if !source.contains(&format!("fn {name}()")) {
                missing.push(format!("{}::{name}", t.binary));
            }
        }
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_job_names_tests_that_exist_and_claims_a_known_mode() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        for job in JOBS {
            assert_eq!(missing_tests(root, job), Vec::<String>::new(), "job {}", job.name);
            assert!(["tc", "tcx"].contains(&job.attach), "{}: SLUICE_ATTACH must name a mode, never auto", job.name);
            assert!(["veth", "netkit"].contains(&job.device), "{}: SLUICE_DEVICE must name a device", job.name);
            assert!(["6.1", "6.12"].contains(&job.kernel), "{}", job.name);
            assert!(job.named() > 0, "{}", job.name);
        }
        let names: std::collections::BTreeSet<&str> = JOBS.iter().map(|j| j.name).collect();
        assert_eq!(names.len(), JOBS.len(), "job names are unique");
    }

    #[test]
    fn a_renamed_test_is_reported_missing() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let job = GuestJob {
            name: "x",
            kernel: "6.1",
            attach: "tc",
            device: "veth",
            tests: &[GuestTests { binary: "attach_tc", names: &["no_such_test", "pods_talk_through_tc_filters"] }],
        };
        // A prefix of a real name is not the name.
        assert_eq!(missing_tests(root, &job), ["attach_tc::no_such_test", "attach_tc::pods_talk_through_tc_filters"]);
    }

    #[test]
    fn the_script_exports_the_mode_runs_each_binary_once_and_fails_if_any_fails() {
        let job = GuestJob {
            name: "6.1 tc",
            kernel: "6.1",
            attach: "tc",
            device: "veth",
            tests: &[
                GuestTests { binary: "attach_tc", names: &["a", "b"] },
                GuestTests { binary: "cni", names: &["it's"] },
            ],
        };
        let script = job.script(|b| Some(format!("/t/deps/{b}-0123"))).unwrap();
        assert_eq!(
            script,
            "failed=0\n\
             export SLUICE_ATTACH='tc'\n\
             export SLUICE_DEVICE='veth'\n\
             export SLUICE_TEST_PATIENCE='6'\n\
             echo 'guest-tests: attach_tc'; start=$(date +%s)\n\
             '/t/deps/attach_tc-0123' --exact --test-threads 1 --color never 'a' 'b' || failed=1\n\
             echo \"guest-tests: attach_tc took $(( $(date +%s) - start )) s\"\n\
             echo 'guest-tests: cni'; start=$(date +%s)\n\
             '/t/deps/cni-0123' --exact --test-threads 1 --color never 'it'\\''s' || failed=1\n\
             echo \"guest-tests: cni took $(( $(date +%s) - start )) s\"\n\
             exit $failed\n"
        );
        assert_eq!(job.named(), 3);
        let e = job.script(|b| (b == "cni").then(|| "/t/cni".to_string())).unwrap_err();
        assert!(e.contains("attach_tc"), "{e}");
    }

    #[test]
    fn a_job_is_selected_by_name() {
        assert_eq!(select(None).unwrap().len(), JOBS.len());
        assert_eq!(select(Some("6.1 tc")).unwrap()[0].kernel, "6.1");
        let e = select(Some("5.10")).unwrap_err();
        assert!(e.contains("6.1 tc"), "{e}");
    }
}
