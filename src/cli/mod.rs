//! The command line. Each family of commands lives in its own file with its own clap types, so
//! the modules behind them can grow without touching each other:
//!
//! - `image_cmds`: import, images, tag, rmi, inspect, save, load (store + OCI formats)
//! - `dockerfile_cmds`: parse, check (the Dockerfile front end)
//! - `build_cmd`: build (the build engine)
//! - `container_cmds`: cp, diff, export, commit, create, rename, update (a container's files
//!   and settings)
//! - `run_cmds`: run, ps, logs, stop, kill, rm, wait, exec, port, top, stats, volume (the runner)
//! - `registry_cmds`: pull, push, login, logout (the registry client)
//! - `platform_cmds`: manifest create|inspect (image indexes), binfmt (emulation)
//! - `housekeeping_cmds`: system df, system prune, image/container/builder prune (`store::gc`)

pub mod build_cmd;
pub mod container_cmds;
pub mod dockerfile_cmds;
pub mod format;
pub mod housekeeping_cmds;
pub mod image_cmds;
pub mod image_filter;
pub mod image_sizes;
pub mod platform_cmds;
pub mod ps_filter;
pub mod registry_cmds;
pub mod run_cmds;
pub mod system_cmds;
pub mod unsupported;
pub mod volume_filter;

pub use format::{table, template};

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
    /// Where kiln keeps its state (images, cache, containers). Default: /var/lib/kiln for root,
    /// $XDG_DATA_HOME/kiln or ~/.local/share/kiln for another user.
    #[arg(
        long,
        global = true,
        env = "KILN_ROOT",
        default_value_os_t = crate::rootless::default_root()
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
    Container(container_cmds::ContainerCommands),
    #[command(flatten)]
    Registry(registry_cmds::RegistryCommands),
    #[command(flatten)]
    System(system_cmds::SystemCommands),
    #[command(flatten)]
    Platform(platform_cmds::PlatformCommands),
    #[command(flatten)]
    Housekeeping(housekeeping_cmds::HousekeepingCommands),
}

/// The exit code of a kiln error that is not a command's own result, as docker's CLI uses it for
/// bad flags and for `docker run`'s own failures.
pub const EXIT_KILN_ERROR: i32 = 125;

/// Runs kiln with the process's arguments and returns the exit code.
pub fn main() -> i32 {
    let args = management_aliases(std::env::args().collect());
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(err) => return usage_error(&err, &args[1.min(args.len())..]),
    };
    // Rootless: into a user namespace (and a mount namespace of kiln's own) while the process
    // still has one thread. `info` still reports when that fails (it says what is missing).
    // `parse`, `check` and `version` read no state: they run as they are.
    let stateless = matches!(
        cli.command,
        Commands::Dockerfile(_) | Commands::System(system_cmds::SystemCommands::Version { .. })
    );
    if crate::rootless::needs_entry() && !stateless {
        if let Err(err) = crate::rootless::enter(&cli.globals.root) {
            let reports = matches!(
                cli.command,
                Commands::System(system_cmds::SystemCommands::Info { .. })
            );
            crate::report::report_error(&err);
            if !reports {
                return EXIT_KILN_ERROR;
            }
        }
    }
    crate::store::set_open_hook(recover_leftovers);
    crate::store::set_fetch_hook(crate::registry::artifact::fetch_remote_blob);
    let code = match dispatch(cli) {
        Ok(code) => code,
        // The output was cut short by its reader: not an error to report.
        Err(_) if crate::report::stdout_closed() => 0,
        Err(err) => {
            crate::report::report_error(&err);
            // Operational errors exit 1, as docker's CLI does for a daemon's error; `run` maps
            // its own to 125 and passes the container's code through.
            1
        }
    };
    if crate::report::stdout_closed() {
        die_of_sigpipe();
    }
    code
}

/// docker's management commands as aliases of the short forms: `image ls` is `images`,
/// `container ls` is `ps`, `image rm` is `rmi`, `container logs` is `logs`, and so on.
pub const IMAGE_ALIASES: &[(&str, &str)] = &[
    ("ls", "images"),
    ("list", "images"),
    ("rm", "rmi"),
    ("remove", "rmi"),
    ("inspect", "inspect"),
    ("history", "history"),
    ("tag", "tag"),
    ("save", "save"),
    ("load", "load"),
    ("import", "import"),
    ("pull", "pull"),
    ("push", "push"),
    ("prune", "image-prune"),
];
pub const CONTAINER_ALIASES: &[(&str, &str)] = &[
    ("ls", "ps"),
    ("list", "ps"),
    ("rm", "rm"),
    ("remove", "rm"),
    ("logs", "logs"),
    ("stop", "stop"),
    ("kill", "kill"),
    ("wait", "wait"),
    ("port", "port"),
    ("exec", "exec"),
    ("run", "run"),
    ("prune", "container-prune"),
];

/// Rewrites `kiln [--root R] image ls ARGS` to `kiln [--root R] images ARGS` (and the other
/// management forms) before clap sees the line; `container inspect` is a command of its own.
pub fn management_aliases(mut args: Vec<String>) -> Vec<String> {
    let mut i = 1;
    while i < args.len() {
        match args[i].as_str() {
            "--root" => i += 2,
            a if a.starts_with("--root=") => i += 1,
            _ => break,
        }
    }
    let table = match args.get(i).map(String::as_str) {
        Some("image") => IMAGE_ALIASES,
        Some("container") => CONTAINER_ALIASES,
        _ => return args,
    };
    if let Some(sub) = args.get(i + 1) {
        if let Some((_, short)) = table.iter().find(|(from, _)| from == sub) {
            args.splice(i..i + 2, [short.to_string()]);
        }
    }
    args
}

/// A command line clap refused: help and version go to stdout (exit 0, quietly on a closed
/// pipe); errors go to stderr with docker's 125, and a docker flag kiln lacks says what it does.
fn usage_error(err: &clap::Error, args: &[String]) -> i32 {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !err.use_stderr() {
        let text = err.render().to_string();
        let _ = crate::out!("{text}");
        if crate::report::stdout_closed() {
            die_of_sigpipe();
        }
        return 0;
    }
    if err.kind() == ErrorKind::UnknownArgument {
        if let (Some(ContextValue::String(flag)), Some(command)) = (
            err.get(ContextKind::InvalidArg),
            unsupported::command_of(args),
        ) {
            if let Some(msg) = unsupported::message(&command, flag) {
                crate::errln!("{msg}");
                crate::errln!("See 'kiln {command} --help' for what kiln supports.");
                return EXIT_KILN_ERROR;
            }
        }
    }
    let _ = err.print();
    EXIT_KILN_ERROR
}

/// Ends the process the way a Unix filter ends when its reader is gone: by SIGPIPE's default
/// action (a shell shows 141, as it does for docker). Rust ignores SIGPIPE so that writes return
/// EPIPE; the command has finished and cleaned up by now, so the default action is restored
/// only here.
fn die_of_sigpipe() -> ! {
    use nix::sys::signal::{raise, signal, SigHandler, Signal};
    // SAFETY: restoring the default disposition of SIGPIPE installs no handler code; the process
    // ends at the raise below.
    unsafe {
        let _ = signal(Signal::SIGPIPE, SigHandler::SigDfl);
    }
    let _ = raise(Signal::SIGPIPE);
    std::process::exit(141)
}

fn dispatch(cli: Cli) -> anyhow::Result<i32> {
    let globals = cli.globals;
    match cli.command {
        Commands::Image(cmd) => image_cmds::run(cmd, &globals),
        Commands::Dockerfile(cmd) => dockerfile_cmds::run(cmd, &globals),
        Commands::Build(cmd) => build_cmd::run(cmd, &globals),
        Commands::Run(cmd) => run_cmds::run(cmd, &globals),
        Commands::Container(cmd) => container_cmds::run(cmd, &globals),
        Commands::Registry(cmd) => registry_cmds::run(cmd, &globals),
        Commands::System(cmd) => system_cmds::run(cmd, &globals),
        Commands::Platform(cmd) => platform_cmds::run(cmd, &globals),
        Commands::Housekeeping(cmd) => housekeeping_cmds::run(cmd, &globals),
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
    crate::runner::restart::revive(store);
}
