//! Commands of this family; see src/cli/mod.rs.

use clap::Subcommand;

use super::Globals;

#[derive(Debug, Subcommand)]
pub enum ImageCommands {}

pub fn run(cmd: ImageCommands, _globals: &Globals) -> anyhow::Result<i32> {
    match cmd {}
}
