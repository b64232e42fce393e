//! Loading the eBPF object and pinning it; attaching the agent's programs.
//!
//! Restart rules (nothing is flushed, nothing stops forwarding):
//! - Maps: every map is opened from its pin if present, created and pinned if
//!   not, so endpoints, routes and counters survive the agent.
//! - Programs: the freshly loaded programs are pinned over the old pins
//!   (pin under a temporary name, then `rename`), so the CNI plugin always
//!   finds a complete program.
//! - Links: an existing pinned attachment is updated in place to the new
//!   program as it was made (a TCX link with `BPF_LINK_UPDATE`, a tc filter
//!   replaced at its priority and handle; atomic either way: no packet sees
//!   no program). Only one whose interface is gone is replaced by a fresh
//!   attachment, made in the node's `AttachMode`.
use std::{fs, path::Path};

use anyhow::{anyhow, bail, Context, Result};
use aya::{
    programs::{CgroupSockAddr, SchedClassifier},
    Ebpf, EbpfLoader,
};
use sluice_common::maps::{names, programs};
use tracing::{info, warn};

use super::{
    attach_mode::AttachMode,
    links::{self, attach_and_pin, interface_exists, update_pinned},
    migrate,
    pin_lock::PinLock,
    pins::PinDir,
    retired_maps,
    sock_lb::{self, CGROUP_LINK, SOCK_PROGRAMS},
};
use crate::pod::device::PodDevice;

/// The object built by `cargo xtask build-ebpf`, embedded at compile time.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sluice.bpf.o"));

/// Every map of the object, as pinned.
pub const ALL_MAPS: [&str; 58] = [
    names::ENDPOINTS,
    names::NODE_ROUTES,
    names::NODE_CONFIG,
    names::DROP_STATS,
    names::FORWARDS,
    names::IFACE_PACKETS,
    names::STACK_FLOWS,
    names::EVENTS[0],
    names::EVENTS[1],
    names::EVENTS[2],
    names::EVENTS[3],
    names::MONITORS,
    names::SERVICES,
    names::BACKENDS,
    names::BACKEND_MEMBERS,
    names::SOCK_REVERSE,
    names::AFFINITY,
    names::SOCK_LB_STATS,
    names::TUNNEL_CONFIG,
    names::STACK_FLOW_STATS,
    // NetworkPolicy (issue 25). An older layout has none of them: their
    // pins are simply created (nothing to migrate).
    names::POLICY_IDENTITIES,
    names::POLICY_ENDPOINTS,
    names::POLICY_RULES,
    names::POLICY_STATE,
    names::POLICY_CT,
    names::POLICY_PODS,
    names::POLICY_STATS,
    // NodePorts at the socket (issue 27): created where absent.
    names::NODE_ADDRESSES,
    names::SOCK_LB_CONFIG,
    // Dual-stack (issue 28): created where absent.
    names::ENDPOINTS6,
    // Services from outside at the uplink (issue 27): created where absent.
    names::NAT4,
    names::LB4_CONFIG,
    names::NAT4_STATS,
    // IPv6 Services at the socket (issue 28): created where absent.
    names::SERVICES6,
    names::BACKENDS6,
    names::BACKEND_MEMBERS6,
    names::SOCK_REVERSE6,
    names::AFFINITY6,
    // loadBalancerSourceRanges at the uplink (issue 27): created where
    // absent.
    names::LB4_SOURCE_RANGES,
    // Its IPv6 twin (issues 27 x 28): created where absent.
    names::LB6_SOURCE_RANGES,
    // NetworkPolicy for IPv6 (issue 28): created where absent.
    names::POLICY_IDENTITIES6,
    names::POLICY_ENDPOINTS6,
    names::POLICY_CT6,
    names::POLICY_SCRATCH6,
    // The IPv6 fast path's node routes (issue 28): created where absent.
    names::NODE_ROUTES6,
    names::FAST6_SCRATCH,
    // STACK_FLOWS' IPv6 twin (issue 28): created where absent.
    names::STACK_FLOWS6,
    names::FLOW6_SCRATCH,
    // Session affinity for outside clients at the uplink (issue 27):
    // created where absent.
    names::LB4_SVC_AFFINITY,
    names::LB4_SCRATCH,
    // Fragments through the uplink's translation (issue 27): created
    // where absent.
    names::LB4_FRAGS,
    // Answers to other nodes' addresses without the stack (issue 27):
    // created where absent.
    names::NODE_FLOWS,
    // IPv6 Services from outside at the uplink (issues 27 × 28): created
    // where absent.
    names::NAT6,
    names::NAT6_STATS,
    names::NODE_ADDRESSES6,
    names::LB6_SCRATCH,
    // NAT64 (issue 28): created where absent.
    names::NAT64_CONFIG,
    names::NAT64_SCRATCH,
];

/// Map sizes chosen at load rather than by the object (`None`: the
/// object's). A pinned map of another size is migrated (`migrate`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MapSizes {
    pub stack_flows: Option<u32>,
    pub nat4: Option<u32>,
}

impl MapSizes {
    /// `(map name, max_entries)` for each size set.
    pub fn overrides(&self) -> Vec<(&'static str, u32)> {
        // STACK_FLOWS' twins are sized alike, and NAT4's.
        [
            (names::STACK_FLOWS, self.stack_flows),
            (names::STACK_FLOWS6, self.stack_flows),
            (names::NAT4, self.nat4),
            (names::NAT6, self.nat4),
        ]
        .into_iter()
        .filter_map(|(name, n)| Some((name, n?)))
        .collect()
    }
}

/// Every TC program of the object (pinned under `progs/`).
pub const ALL_PROGRAMS: [&str; 9] = [
    programs::FROM_POD,
    programs::FROM_POD_NETKIT,
    programs::TO_POD,
    programs::FROM_UPLINK,
    programs::TO_UPLINK,
    programs::FROM_TUNNEL,
    programs::TO_TUNNEL,
    programs::TO_NAT64,
    programs::COUNT_PACKETS,
];

/// The loaded object with its maps pinned and programs loaded and pinned.
pub struct Datapath {
    ebpf: Ebpf,
    pins: PinDir,
    /// How fresh attachments are made (TCX unless the agent says otherwise).
    attach_mode: AttachMode,
    /// Maps this load migrated, until `finish_migration`.
    migration: Option<migrate::Migration>,
}

impl Datapath {
    /// Load the object, reusing every pinned map, and pin the programs.
    pub fn load(pins: &PinDir) -> Result<Self> {
        Self::load_sized(pins, &MapSizes::default(), true)
    }

    /// `load`, with the maps `sizes` names sized as it says; the socket
    /// load balancer's programs only with `socket_lb` (a kernel without
    /// their helpers refuses them: `kernel_features`).
    pub fn load_sized(pins: &PinDir, sizes: &MapSizes, socket_lb: bool) -> Result<Self> {
        if OBJECT.is_empty() {
            bail!("this build has no eBPF object: run `cargo xtask build-ebpf`, then rebuild");
        }
        for dir in [pins.maps_dir(), pins.progs_dir(), pins.links_dir()] {
            fs::create_dir_all(&dir).with_context(|| format!("create pin directory {}", dir.display()))?;
        }
        // An earlier layout's links and maps become ours (same kernel
        // objects, renamed pins); then every pinned map is checked against
        // the object: reused, migrated, or refused.
        migrate::adopt_other_layouts(pins)?;
        retired_maps::unpin_transient(pins)?;
        let overrides = sizes.overrides();
        let migrating = migrate::plan(pins, OBJECT, &ALL_MAPS, &overrides)?;
        let map_paths: Vec<_> = ALL_MAPS.iter().map(|m| (*m, pins.map(m))).collect();
        let mut loader = EbpfLoader::new();
        for (name, max_entries) in &overrides {
            loader.map_max_entries(name, *max_entries);
        }
        for (name, path) in &map_paths {
            if !migrating.iter().any(|m| m == name) {
                loader.map_pin_path(name, path.as_path());
            }
        }
        let mut ebpf = loader.load(OBJECT).context("load the eBPF object (maps reused from pins)")?;
        // Every program verified first, so that what follows, while the
        // old programs still run, is short.
        for name in ALL_PROGRAMS {
            let prog: &mut SchedClassifier = program_mut(&mut ebpf, name)?;
            load_retrying(name, || prog.load())?;
        }
        // The socket load balancer's programs: only the agent attaches
        // them (to a cgroup, not an interface), so they are not pinned.
        for name in SOCK_PROGRAMS.iter().filter(|_| socket_lb) {
            let prog = sock_program_mut(&mut ebpf, name)?;
            load_retrying(name, || prog.load())?;
        }
        let migration = if migrating.is_empty() {
            None
        } else {
            // A connection from outside written into the old NAT4 (or
            // NAT6) from now on would be lost with it: new ones of both
            // families wait (`migrate::Pause`) until `finish_migration`.
            let pause = if migrating.iter().any(|m| migrate::pauses_new_connections(m)) {
                migrate::Pause::start(pins)?
            } else {
                None
            };
            // No plugin writes an entry into a map while it is replaced.
            let _lock = PinLock::exclusive(pins)?;
            let mut carried = Vec::new();
            for name in &migrating {
                let map = ebpf.map_mut(name).with_context(|| format!("map {name} missing from the eBPF object"))?;
                carried.push(migrate::copy_into(pins, name, map)?);
            }
            Some(migrate::Migration { carried, pause })
        };
        // A map this version replaced (e.g. `DROPS` by `DROP_STATS`):
        // its pin's content carried into the successor, then removed.
        retired_maps::carry_over(pins, &mut ebpf);
        for name in ALL_PROGRAMS {
            let prog: &mut SchedClassifier = program_mut(&mut ebpf, name)?;
            let tmp = pins.prog(&format!("{name}_new"));
            let _ = fs::remove_file(&tmp);
            prog.pin(&tmp).with_context(|| format!("pin program {name} at {}", tmp.display()))?;
            fs::rename(&tmp, pins.prog(name)).with_context(|| format!("move pin of {name} into place"))?;
        }
        info!(pin_dir = %pins.root().display(), "datapath loaded");
        Ok(Self { ebpf, pins: pins.clone(), attach_mode: AttachMode::Tcx, migration })
    }

    /// Every link now runs this load's programs: copy into the migrated
    /// maps what the old programs wrote since their entries were copied,
    /// and let new connections from outside in again. Nothing to do when
    /// no map was migrated.
    pub fn finish_migration(&mut self) -> Result<()> {
        match self.migration.take() {
            Some(m) => m.finish(&self.pins),
            None => Ok(()),
        }
    }

    pub fn pins(&self) -> &PinDir {
        &self.pins
    }

    /// Make fresh attachments (`attach`, pods' missing programs) in `mode`
    /// from now on; pinned ones are updated as they were made.
    pub fn set_attach_mode(&mut self, mode: AttachMode) {
        self.attach_mode = mode;
    }

    /// Attach `program` to `ifname` (ingress or egress by its name) and pin
    /// the link, or update the already pinned link to this program atomically.
    pub fn attach(&mut self, program: &str, ifname: &str) -> Result<()> {
        let pin = self.pins.link(program, ifname);
        let prog: &mut SchedClassifier = program_mut(&mut self.ebpf, program)?;
        attach_or_update(prog, program, ifname, &pin, self.attach_mode)
    }

    /// Attach the socket load balancer to the cgroup v2 directory `cgroup`
    /// (the node's root, so every process is covered), or swap the programs
    /// of its pinned links in place.
    pub fn attach_sock_lb(&mut self, cgroup: &Path) -> Result<()> {
        for name in SOCK_PROGRAMS {
            let pin = self.pins.link(name, CGROUP_LINK);
            let prog = sock_program_mut(&mut self.ebpf, name)?;
            sock_lb::attach_or_update(prog, name, cgroup, &pin)?;
        }
        if !sock_lb::is_root_cgroup(cgroup) {
            warn!(
                cgroup = %cgroup.display(),
                "socket load balancer attached below the cgroup root: processes outside this cgroup \
                 (host-network ones included) reach Services only through kube-proxy"
            );
        }
        info!(cgroup = %cgroup.display(), "socket load balancer attached");
        Ok(())
    }

    /// Point every pod's pinned links (found by their `from_pod` or
    /// `from_pod_netkit` pins) at the programs just loaded; a pod made by an
    /// older version that lacks one of its kind's programs gets it attached.
    /// Links whose interface is gone are unpinned. Returns the number of pods.
    pub fn update_pod_links(&mut self) -> Result<usize> {
        let mut pods = Vec::new();
        for entry in fs::read_dir(self.pins.links_dir()).context("list link pins")? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if let Some((ifname, device)) = PodDevice::of_link_pin(&name) {
                pods.push((ifname.to_string(), device));
            }
        }
        let mut updated = 0;
        for (ifname, device) in &pods {
            let mut ok = true;
            for program in device.programs() {
                let pin = self.pins.link(program, ifname);
                let prog: &mut SchedClassifier = program_mut(&mut self.ebpf, program)?;
                let result = if pin.exists() {
                    update_pinned(prog, program, ifname, &pin)
                } else {
                    attach_and_pin(prog, program, ifname, &pin, self.attach_mode)
                };
                if let Err(e) = result {
                    ok = false;
                    // Only a link whose interface is gone is stale. Any other
                    // failure leaves the pin (and the old program attached):
                    // unpinning would detach a live pod's datapath.
                    if interface_exists(ifname) {
                        warn!(link = %pin.display(), error = %format!("{e:#}"), "pod link not updated; left as is");
                    } else {
                        warn!(link = %pin.display(), "pod's interface is gone; removing its link pin");
                        let _ = fs::remove_file(&pin);
                    }
                }
            }
            updated += usize::from(ok);
        }
        Ok(updated)
    }
}

fn program_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut SchedClassifier> {
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))?
        .try_into()
        .with_context(|| format!("program {name} is not a TC classifier"))
}

fn sock_program_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut CgroupSockAddr> {
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))?
        .try_into()
        .with_context(|| format!("program {name} is not a cgroup sock_addr program"))
}

fn attach_or_update(
    prog: &mut SchedClassifier,
    program: &str,
    ifname: &str,
    pin: &Path,
    mode: AttachMode,
) -> Result<()> {
    if pin.exists() {
        match update_pinned(prog, program, ifname, pin) {
            Ok(()) => {
                info!(ifname, pin = %pin.display(), "updated pinned attachment in place");
                return Ok(());
            }
            Err(e) => {
                // The interface was deleted (and maybe re-created): the old
                // attachment is defunct, so a fresh one loses nothing.
                warn!(ifname, error = %format!("{e:#}"), "pinned attachment unusable; attaching anew");
                links::detach(pin, program, ifname)?;
            }
        }
    }
    attach_and_pin(prog, program, ifname, pin, mode)?;
    info!(ifname, pin = %pin.display(), %mode, "attached");
    Ok(())
}

/// How often a program's load is tried when the verifier was interrupted.
const LOAD_ATTEMPTS: u32 = 5;

/// Load one program, with the loading thread's signals held back and again
/// when the verifier was interrupted anyway. Since Linux 4.20 the verifier
/// stops with EAGAIN when a signal is pending for the loading thread (a
/// tokio runtime's SIGCHLD whenever any thread's child exits), and the
/// bigger the program the likelier (NetworkPolicy's judge made `from_pod`
/// ~40,000 verified instructions): with children exiting all the time,
/// five tries in a row were interrupted (CI, a test binary running 100
/// loads in parallel). A signal the thread blocks is delivered to another
/// thread, or to this one once the load is done, and never interrupts it.
/// libbpf retries such a load 5 times, aya 0.14 not at all; a failed load
/// leaves the program unloaded, so it can be retried.
fn load_retrying(name: &str, mut load: impl FnMut() -> Result<(), aya::programs::ProgramError>) -> Result<()> {
    let _held = SignalsHeld::new().context("hold back signals while the verifier runs")?;
    let mut attempt = 1;
    loop {
        match load() {
            Err(e) if attempt < LOAD_ATTEMPTS && verifier_interrupted(&e) => {
                warn!(program = name, attempt, "verifier interrupted by a signal (EAGAIN): loading again");
                attempt += 1;
            }
            result => return result.with_context(|| format!("load program {name} (verifier)")),
        }
    }
}

/// Every blockable signal blocked in this thread until dropped, then the
/// thread's earlier mask again.
struct SignalsHeld(nix::sys::signal::SigSet);

impl SignalsHeld {
    fn new() -> nix::Result<Self> {
        use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow};
        let mut before = SigSet::empty();
        pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&SigSet::all()), Some(&mut before))?;
        Ok(Self(before))
    }
}

impl Drop for SignalsHeld {
    fn drop(&mut self) {
        let _ = nix::sys::signal::pthread_sigmask(nix::sys::signal::SigmaskHow::SIG_SETMASK, Some(&self.0), None);
    }
}

/// Whether a load failed because the verifier was interrupted (EAGAIN).
fn verifier_interrupted(e: &aya::programs::ProgramError) -> bool {
    matches!(e, aya::programs::ProgramError::LoadError { io_error, .. } if io_error.raw_os_error() == Some(libc::EAGAIN))
}

#[cfg(test)]
mod load_retry_tests {
    use std::{cell::Cell, io};

    use aya::programs::ProgramError;

    use super::*;

    fn failed(errno: i32) -> ProgramError {
        ProgramError::LoadError {
            io_error: io::Error::from_raw_os_error(errno),
            verifier_log: aya_obj::VerifierLog::new(String::new()),
        }
    }

    #[test]
    fn an_interrupted_verifier_is_tried_again_until_it_loads() {
        let calls = Cell::new(0);
        let result = load_retrying("from_pod", || {
            calls.set(calls.get() + 1);
            if calls.get() < 3 {
                Err(failed(libc::EAGAIN))
            } else {
                Ok(())
            }
        });
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(calls.get(), 3);
    }

    fn this_threads_mask() -> nix::sys::signal::SigSet {
        nix::sys::signal::SigSet::thread_get_mask().unwrap()
    }

    #[test]
    fn signals_are_held_back_while_a_program_loads_and_let_through_after() {
        use nix::sys::signal::Signal;
        // On a thread of its own: the harness's threads keep their masks.
        std::thread::spawn(|| {
            assert!(!this_threads_mask().contains(Signal::SIGCHLD));
            let mut during = None;
            load_retrying("from_pod", || {
                during = Some(this_threads_mask());
                Ok(())
            })
            .unwrap();
            let during = during.unwrap();
            for signal in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT, Signal::SIGUSR1, Signal::SIGALRM] {
                assert!(during.contains(signal), "{signal} not blocked while loading");
            }
            assert!(!this_threads_mask().contains(Signal::SIGCHLD), "the mask is restored after the load");
            let _ = load_retrying("to_pod", || Err(failed(libc::EINVAL)));
            assert!(!this_threads_mask().contains(Signal::SIGTERM), "and after a refused load");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn retries_are_bounded_and_other_errors_are_not_retried() {
        let calls = Cell::new(0);
        let e = load_retrying("from_pod", || {
            calls.set(calls.get() + 1);
            Err(failed(libc::EAGAIN))
        })
        .unwrap_err();
        assert_eq!(calls.get(), LOAD_ATTEMPTS);
        assert!(format!("{e:#}").contains("load program from_pod (verifier)"), "{e:#}");

        calls.set(0);
        let e = load_retrying("to_pod", || {
            calls.set(calls.get() + 1);
            Err(failed(libc::EINVAL))
        })
        .unwrap_err();
        assert_eq!(calls.get(), 1, "a refusal is final: {e:#}");
    }
}
