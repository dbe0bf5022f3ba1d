//! The command line. Each family of commands lives in its own file with its own clap types, so
//! the modules behind them can grow without touching each other:
//!
//! - `image_cmds`: import, images, tag, rmi, inspect, save, load (store + OCI formats)
//! - `dockerfile_cmds`: parse, check (the Dockerfile front end)
//! - `build_cmd`: build (the build engine)
//! - `run_cmds`: run, ps, logs, stop, kill, rm, wait, exec, port, volume (the runner)
//! - `registry_cmds`: pull, push, login, logout (the registry client)

pub mod build_cmd;
pub mod dockerfile_cmds;
pub mod image_cmds;
pub mod registry_cmds;
pub mod run_cmds;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// kiln: build OCI images from Dockerfiles without a daemon, and run them.
#[derive(Debug, Parser)]
#[command(name = "kiln", version, about, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    pub globals: Globals,
    #[command(subcommand)]
    pub command: Commands,
}

/// Options that every command takes.
#[derive(Debug, Clone, clap::Args)]
pub struct Globals {
    /// Where kiln keeps its state (images, cache, containers).
    #[arg(
        long,
        global = true,
        env = "KILN_ROOT",
        default_value = "/var/lib/kiln"
    )]
    pub root: PathBuf,
}

// Parsed once per process and consumed at once: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Commands {
    #[command(flatten)]
    Image(image_cmds::ImageCommands),
    #[command(flatten)]
    Dockerfile(dockerfile_cmds::DockerfileCommands),
    #[command(flatten)]
    Build(build_cmd::BuildCommands),
    #[command(flatten)]
    Run(run_cmds::RunCommands),
    #[command(flatten)]
    Registry(registry_cmds::RegistryCommands),
}

/// Runs kiln with the process's arguments and returns the exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    crate::store::set_open_hook(recover_leftovers);
    match dispatch(cli) {
        Ok(code) => code,
        Err(err) => {
            crate::report::report_error(&err);
            // Commands that must use docker's codes (run: 125) map their own errors.
            1
        }
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<i32> {
    let globals = cli.globals;
    match cli.command {
        Commands::Image(cmd) => image_cmds::run(cmd, &globals),
        Commands::Dockerfile(cmd) => dockerfile_cmds::run(cmd, &globals),
        Commands::Build(cmd) => build_cmd::run(cmd, &globals),
        Commands::Run(cmd) => run_cmds::run(cmd, &globals),
        Commands::Registry(cmd) => registry_cmds::run(cmd, &globals),
    }
}

/// Cleans what killed kiln processes left under the root: every command that opens the store
/// runs this once (`store::set_open_hook`), as the store empties `tmp/`. Overlay mounts and
/// directories of active snapshots whose lock is free, unpack directories and cgroups whose
/// owner is gone; whatever a live kiln holds (its snapshot lock, its pid) is left alone. A
/// failure here is reported and does not stop the command.
fn recover_leftovers(store: &crate::store::Store) {
    if let Err(e) = crate::snapshot::recover(store.root()) {
        crate::report::report_error(&e.context("warning: cleaning up after an earlier kiln"));
    }
    crate::sandbox::recover();
}
