//! `cargo xtask`: the developer's and user's tasks.
//!
//! - `setup`: install what sluice needs on a fresh Debian 12 machine.
//! - `build-ebpf`: build the eBPF object with Debian's toolchain.
//! - `test`: setup, build, lint, and every test (unit and end to end).
//! - `lab up|status|down`: a multi-node lab in network namespaces.
//! - `guest <kernel> -- <command>`: a command on Debian's 6.1 or 6.12 kernel
//!   in a qemu guest.
//! - `guest-suite [--job NAME]`: the guest jobs `test` ends with, alone.
use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::{Parser, Subcommand};

mod bench;
mod build_ebpf;
mod guest;
mod image;
mod lab;
mod setup;
mod shell;
mod test;

#[derive(Parser)]
#[command(name = "xtask", about = "sluice's developer and user tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install the eBPF toolchain and test tools (root; idempotent).
    Setup,
    /// Build the eBPF object into target/ebpf/sluice.bpf.o.
    BuildEbpf {
        /// Kept for symmetry with cargo; the object is always optimised
        /// (the verifier needs it).
        #[arg(long)]
        release: bool,
    },
    /// Set up, build, lint and run every test.
    Test {
        /// Extra arguments passed to `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Benchmarks: sluice against node-to-node, a veth pair and bridge +
    /// host routes, plus CNI and control-plane figures.
    Bench {
        #[command(flatten)]
        args: bench::BenchArgs,
    },
    /// Run a command on another kernel: Debian's 6.1 or 6.12 in a qemu
    /// guest (TCG) sharing this machine's root read-only (root; slow).
    Guest {
        #[command(flatten)]
        args: guest::GuestArgs,
    },
    /// The guest jobs `cargo xtask test` runs after the native tests
    /// (xtask/src/guest/jobs.rs), alone: Debian's 6.1 (tc) and 6.12 (TCX)
    /// kernels in qemu, each running its named tests (root; slow).
    GuestSuite {
        /// Only this job (`6.1 tc`, `6.12 tcx`, ...).
        #[arg(long)]
        job: Option<String>,
        /// Only build what the jobs need (then run them under the machine
        /// lock without compiling there).
        #[arg(long)]
        build_only: bool,
    },
    /// Build sluice's container image as an OCI archive (target/image/image.tar).
    Image,
    /// A local multi-node lab built from network namespaces.
    Lab {
        #[command(subcommand)]
        command: lab::LabCommand,
    },
}

/// The repository root (xtask lives one level below it).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask is inside the repo").to_path_buf()
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Setup => setup::run(),
        Command::BuildEbpf { release: _ } => build_ebpf::run().map(|_| ()),
        Command::Test { args } => test::run(&args),
        Command::Lab { command } => lab::run(command),
        Command::Image => image::run(),
        Command::Guest { args } => guest::run(&args),
        Command::GuestSuite { job, build_only } => guest::suite::run(job.as_deref(), build_only),
        Command::Bench { args } => bench::run(&args),
    }
}
