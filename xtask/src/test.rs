//! `cargo xtask test`: the one command that proves the tree is good.
use std::process::Command;

use anyhow::Result;

use crate::{build_ebpf, repo_root, setup, shell};

pub fn run(extra: &[String]) -> Result<()> {
    shell::require_root("cargo xtask test (end-to-end tests create namespaces and load eBPF)")?;
    setup::run()?;
    build_ebpf::run()?;
    let root = repo_root();
    let cargo = || {
        let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        c.current_dir(&root);
        c
    };
    shell::run(cargo().args(["fmt", "--all", "--check"]))?;
    shell::run(cargo().args(["fmt", "--manifest-path", "ebpf/Cargo.toml", "--check"]))?;
    shell::run(cargo().args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    // The end-to-end tests run the real binaries.
    shell::run(cargo().args(["build", "--workspace", "--bins"]))?;
    shell::run(cargo().args(["test", "--workspace"]).args(extra))?;
    Ok(())
}
