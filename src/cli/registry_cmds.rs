//! Commands of this family; see src/cli/mod.rs.

use clap::Subcommand;

use super::Globals;

#[derive(Debug, Subcommand)]
pub enum RegistryCommands {}

pub fn run(cmd: RegistryCommands, _globals: &Globals) -> anyhow::Result<i32> {
    match cmd {}
}
