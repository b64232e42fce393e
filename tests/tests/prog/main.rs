//! Program-level tests: the real compiled programs (target/ebpf/sluice.bpf.o,
//! loaded by the agent's loader) run once each on crafted packets with
//! `BPF_PROG_TEST_RUN`; each test checks the TC action, the bytes the
//! program left, and the drop and forward counters. See
//! `sluice_tests::prog_test` for the harness.
//!
//! One file per behaviour, in the manner of Calico's `felix/bpf/ut`, but one
//! test binary: every binary of the `tests` crate links the whole crate and
//! its dependencies (tonic, the test API server), a few seconds each on a
//! two-core machine, and these tests share one harness.
//!
//! Needs root (bpffs, loading programs, a network namespace per test); run
//! under the machine's lock:
//! `flock /tmp/sluice-e2e.lock cargo test -p sluice-tests --test prog`.
mod dsr;
mod from_pod;
mod from_pod6;
mod from_uplink;
mod lb4_affinity;
mod lb4_frag;
mod malformed;
mod nat64;
mod node_path;
mod nodeport;
mod nodeport6;
mod policy6;
mod policy_ct;
mod policy_ct_gc;
mod policy_egress;
mod policy_events;
mod policy_ingress;
mod policy_maps;
mod policy_not_isolated;
mod policy_pending;
mod policy_ports;
mod stack_flows;
mod stack_flows6;
mod tunnel;
mod unknown_l3;
mod verifier_cost;
