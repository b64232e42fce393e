//! `cargo xtask lab`: placeholder replaced below.
use anyhow::Result;

#[derive(clap::Subcommand)]
pub enum LabCommand {
    Up,
}

pub fn run(_c: LabCommand) -> Result<()> {
    Ok(())
}
