//! Commands of this family; see src/cli/mod.rs.

use clap::Subcommand;

use super::Globals;

#[derive(Debug, Subcommand)]
pub enum BuildCommands {}

pub fn run(cmd: BuildCommands, _globals: &Globals) -> anyhow::Result<i32> {
    match cmd {}
}
