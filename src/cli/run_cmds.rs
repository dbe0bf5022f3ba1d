//! Container commands (docker's flags and output): run, ps, logs, stop, kill, rm, wait, exec,
//! port, container inspect, volume. The work is in `crate::runner`.

use super::template::Format;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Subcommand;

use super::Globals;
use crate::runner::{self, state, state::Status, RunOptions};

#[derive(Debug, Subcommand)]
pub enum RunCommands {
    /// Run a command in a new container.
    // docker's `-h` is --hostname here, so help is --help only.
    #[command(disable_help_flag = true)]
    Run(Box<RunArgs>),
    /// List containers.
    Ps {
        /// Show all containers (default shows just running).
        #[arg(short, long)]
        all: bool,
        /// Only display container IDs.
        #[arg(short, long)]
        quiet: bool,
        /// Do not truncate output.
        #[arg(long)]
        no_trunc: bool,
        /// A Go template per container (`{{.Names}} {{.Status}}`), `table TEMPLATE` or `json`.
        #[arg(long)]
        format: Option<String>,
        /// Only containers that match: status=, name=, label=K[=V], ancestor=, exited=, id=,
        /// before=, since= (repeatable, combined as docker does).
        #[arg(short, long = "filter", value_name = "KEY=VALUE")]
        filter: Vec<String>,
        /// Show the N last created containers (all states).
        #[arg(short = 'n', long, value_name = "N")]
        last: Option<i64>,
        /// Show the latest created container (all states).
        #[arg(short = 'l', long)]
        latest: bool,
        /// Add a SIZE column: the writable layer's bytes (and the image's, as virtual).
        #[arg(short, long)]
        size: bool,
    },
    /// Print a container's logs.
    Logs {
        /// Follow the output until the container stops.
        #[arg(short, long)]
        follow: bool,
        /// Number of lines from the end ("all" for everything).
        #[arg(short = 'n', long, default_value = "all")]
        tail: String,
        /// Show entries since a time (2024-01-02T13:23:37Z, a Unix timestamp) or for a
        /// duration (10m, 1h30m).
        #[arg(long)]
        since: Option<String>,
        /// Show entries up to a time or a duration ago.
        #[arg(long)]
        until: Option<String>,
        /// Prefix each line with the time it was written.
        #[arg(short = 't', long)]
        timestamps: bool,
        /// Show the extra details given to the log (kiln has none: a space, as docker's).
        #[arg(long)]
        details: bool,
        container: String,
    },
    /// Stop running containers (the image's STOPSIGNAL, then SIGKILL after a grace period).
    Stop {
        /// Seconds to wait before killing.
        /// (default: the container's --stop-timeout, else 10)
        #[arg(short = 't', long = "timeout", visible_alias = "time")]
        time: Option<u64>,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Start stopped containers (their writable layer as they left it).
    Start {
        /// Attach the container's output and wait for its exit code.
        #[arg(short = 'a', long)]
        attach: bool,
        /// Attach kiln's standard input to the container's (with -a).
        #[arg(short = 'i', long)]
        interactive: bool,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Restart containers (stop, then start).
    Restart {
        /// Seconds to wait before killing.
        #[arg(
            short = 't',
            long = "time",
            visible_alias = "timeout",
            default_value_t = 10
        )]
        time: u64,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Send a signal to running containers.
    Kill {
        /// Signal (name or number).
        #[arg(short, long, default_value = "KILL")]
        signal: String,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Remove containers.
    Rm {
        /// Kill and remove running containers.
        #[arg(short, long)]
        force: bool,
        /// Remove the containers' anonymous volumes too.
        #[arg(short, long)]
        volumes: bool,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Wait for containers to stop, then print their exit codes.
    Wait {
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Attach to a running container: its terminal (-t; detach: ctrl-p ctrl-q), else its output.
    Attach {
        /// The keys that detach, leaving the container running (docker's format).
        #[arg(long = "detach-keys", value_name = "KEYS")]
        detach_keys: Option<String>,
        /// Do not attach standard input.
        #[arg(long = "no-stdin")]
        no_stdin: bool,
        /// Pass the signals kiln gets on to a container without a terminal (with one, the keys
        /// go to its terminal).
        #[arg(long = "sig-proxy", default_value_t = true, action = clap::ArgAction::Set)]
        sig_proxy: bool,
        container: String,
    },
    /// Run a command in a running container.
    Exec {
        /// Keep standard input open.
        #[arg(short = 'i', long)]
        interactive: bool,
        /// Allocate a terminal in the container (kiln relays its own terminal in raw mode).
        #[arg(short = 't', long)]
        tty: bool,
        /// Set environment variables.
        #[arg(short = 'e', long = "env")]
        env: Vec<String>,
        /// Working directory inside the container.
        #[arg(short = 'w', long = "workdir")]
        workdir: Option<String>,
        /// User (name, uid, uid:gid, name:group).
        #[arg(short = 'u', long = "user")]
        user: Option<String>,
        /// Give the command every capability (the container's seccomp filter stays, as
        /// docker's).
        #[arg(long)]
        privileged: bool,
        container: String,
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Pause all processes within containers (the cgroup freezer).
    Pause {
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Unpause all processes within containers.
    Unpause {
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Display the running processes of a container (the host's ps, -ef by default).
    Top {
        container: String,
        /// Options for ps (e.g. -o pid,comm).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        ps_options: Vec<String>,
    },
    /// Display containers' resource usage (CPU, memory, network and block I/O, processes),
    /// refreshed every second until interrupted.
    Stats {
        /// Show all containers (default shows just running).
        #[arg(short, long)]
        all: bool,
        /// Print one reading and exit (still about a second: CPU % needs two readings).
        #[arg(long)]
        no_stream: bool,
        /// Do not truncate output.
        #[arg(long)]
        no_trunc: bool,
        /// A Go template per container (`{{.Name}} {{.CPUPerc}}`), `table TEMPLATE` or `json`.
        #[arg(long)]
        format: Option<String>,
        containers: Vec<String>,
    },
    /// List a container's published ports, or the host address of one.
    Port {
        container: String,
        /// PORT[/PROTO]
        port: Option<String>,
    },
    /// Container commands: inspect; and docker's management forms ls, rm, logs, stop, kill,
    /// wait, port, exec, run (the same as ps, rm, logs, …).
    Container {
        #[command(subcommand)]
        cmd: ContainerCommands,
    },
    /// Manage volumes.
    Volume {
        #[command(subcommand)]
        cmd: VolumeCommands,
    },
    /// Internal: owns a detached container (started by `kiln run -d`).
    #[command(name = "container-monitor", hide = true)]
    ContainerMonitor { id: String },
}

/// `kiln run`'s flags (boxed in `RunCommands`: they are many).
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Remove the container (and its anonymous volumes) when it exits.
    #[arg(long)]
    rm: bool,
    /// Run in the background and print the container ID.
    #[arg(short = 'd', long)]
    detach: bool,
    /// Name the container.
    #[arg(long)]
    name: Option<String>,
    /// Set an environment variable (KEY=VALUE, or KEY to take kiln's value).
    #[arg(short = 'e', long = "env", value_name = "KEY[=VALUE]")]
    env: Vec<String>,
    /// Read environment variables from a file (KEY=VALUE lines).
    #[arg(long = "env-file", value_name = "FILE")]
    env_file: Vec<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    workdir: Option<String>,
    /// User (name, uid, uid:gid, name:group).
    #[arg(short = 'u', long = "user", value_name = "USER[:GROUP]")]
    user: Option<String>,
    /// Mount a host path or a named volume: /host:/ctr[:ro], NAME:/ctr[:ro], /ctr.
    #[arg(short = 'v', long = "volume", value_name = "SRC:DST[:ro]")]
    volume: Vec<String>,
    /// Publish a port: [ip:][hostPort:]containerPort[/tcp|/udp], ranges allowed.
    #[arg(short = 'p', long = "publish", value_name = "SPEC")]
    publish: Vec<String>,
    /// Publish every EXPOSEd port on a free host port.
    #[arg(short = 'P', long = "publish-all")]
    publish_all: bool,
    /// none (own network namespace, loopback only), host, or container:NAME (share that running
    /// container's network namespace).
    #[arg(long, visible_alias = "net", default_value = "none")]
    network: String,
    /// The container's hostname (default: the short container ID).
    #[arg(short = 'h', long)]
    hostname: Option<String>,
    /// Override the image's ENTRYPOINT ("" clears it).
    #[arg(long)]
    entrypoint: Option<String>,
    /// CPUs the container may use (0-3, 0,1).
    #[arg(long = "cpuset-cpus", value_name = "CPUS")]
    cpuset_cpus: Option<String>,
    /// CPU shares (relative weight, default 1024).
    #[arg(short = 'c', long = "cpu-shares")]
    cpu_shares: Option<u64>,
    /// Memory limit (e.g. 256m, 1g).
    #[arg(short = 'm', long = "memory")]
    memory: Option<String>,
    /// Maximum number of processes (-1 for unlimited).
    #[arg(long = "pids-limit", allow_negative_numbers = true)]
    pids_limit: Option<i64>,
    /// Run an init as PID 1 that reaps zombies and forwards signals (else the command is PID 1).
    #[arg(long)]
    init: bool,
    /// The keys that detach from a -it container, leaving it running (default ctrl-p,ctrl-q).
    #[arg(long = "detach-keys", value_name = "KEYS")]
    detach_keys: Option<String>,
    /// Keep standard input open.
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Allocate a terminal for the command (with -i, kiln relays its own terminal in raw mode).
    #[arg(short = 't', long)]
    tty: bool,
    /// Security options: seccomp=unconfined, seccomp=PROFILE.json (Docker's format),
    /// apparmor=unconfined.
    #[arg(long = "security-opt", value_name = "OPT")]
    security_opt: Vec<String>,
    /// Restart policy: no, on-failure[:max-retries], always, unless-stopped (the container's
    /// monitor restarts it, with docker's back-off).
    #[arg(long, value_name = "POLICY", default_value = "no")]
    restart: String,
    /// Pull the image before running: missing (when it is not in the store), always, never.
    #[arg(long, value_name = "POLICY", default_value = "missing")]
    pull: String,
    /// Attach a filesystem mount: type=bind|volume|tmpfs,source=…,target=…[,readonly]
    /// [,tmpfs-size=…][,tmpfs-mode=…].
    #[arg(long = "mount", value_name = "SPEC")]
    mount: Vec<String>,
    /// Mount a tmpfs: /path[:size=64m,mode=1777].
    #[arg(long = "tmpfs", value_name = "PATH[:OPTS]")]
    tmpfs: Vec<String>,
    /// Add a line to /etc/hosts: NAME:IP.
    #[arg(long = "add-host", value_name = "NAME:IP")]
    add_host: Vec<String>,
    /// A resource limit of the command: NAME=SOFT[:HARD] (nofile=1024:2048, nproc=512, core=-1).
    #[arg(long = "ulimit", value_name = "NAME=SOFT[:HARD]")]
    ulimit: Vec<String>,
    /// Add a supplementary group of the container's user (a name from the image's /etc/group,
    /// or a number).
    #[arg(long = "group-add", value_name = "GROUP")]
    group_add: Vec<String>,
    /// The size of /dev/shm (default 64m).
    #[arg(long = "shm-size", value_name = "SIZE")]
    shm_size: Option<String>,
    /// Set metadata on the container: KEY=VALUE.
    #[arg(short = 'l', long = "label", value_name = "KEY=VALUE")]
    label: Vec<String>,
    /// The signal that stops the container (default: the image's STOPSIGNAL, else SIGTERM).
    #[arg(long = "stop-signal", value_name = "SIGNAL")]
    stop_signal: Option<String>,
    /// Seconds kiln stop waits before killing (default 10).
    #[arg(long = "stop-timeout", value_name = "SECONDS")]
    stop_timeout: Option<u64>,
    /// Command to run to check health (in the container, through sh -c).
    #[arg(long = "health-cmd", value_name = "CMD")]
    health_cmd: Option<String>,
    /// Time between health checks (ms|s|m|h; default 30s).
    #[arg(long = "health-interval", value_name = "DURATION")]
    health_interval: Option<String>,
    /// Longest a health check may run (default 30s).
    #[arg(long = "health-timeout", value_name = "DURATION")]
    health_timeout: Option<String>,
    /// Time to start before failed checks count (default 0s).
    #[arg(long = "health-start-period", value_name = "DURATION")]
    health_start_period: Option<String>,
    /// Consecutive failures that make the container unhealthy (default 3).
    #[arg(long = "health-retries", value_name = "N")]
    health_retries: Option<u32>,
    /// Disable the image's HEALTHCHECK.
    #[arg(long = "no-healthcheck")]
    no_healthcheck: bool,
    /// Mount the container's root filesystem read-only (volumes and tmpfs stay writable).
    #[arg(long = "read-only")]
    read_only: bool,
    /// Number of CPUs (CFS quota, e.g. 1.5).
    #[arg(long)]
    cpus: Option<String>,
    /// Memory plus swap (needs -m; -1 for unlimited swap).
    #[arg(long = "memory-swap", allow_negative_numbers = true)]
    memory_swap: Option<String>,
    /// Add a Linux capability (NET_ADMIN, SYS_PTRACE, ALL, ...).
    #[arg(long = "cap-add", value_name = "CAP")]
    cap_add: Vec<String>,
    /// Drop a Linux capability (CHOWN, ALL, ...).
    #[arg(long = "cap-drop", value_name = "CAP")]
    cap_drop: Vec<String>,
    /// Give the container every capability and the host's devices, with no seccomp filter and
    /// /proc, /sys unmasked and writable, as docker's.
    #[arg(long)]
    privileged: bool,
    /// The logging driver: json-file (the only one; what `kiln logs` reads).
    #[arg(long = "log-driver", value_name = "DRIVER")]
    log_driver: Option<String>,
    /// json-file options: max-size=SIZE (rotate past it), max-file=N (files kept).
    #[arg(long = "log-opt", value_name = "KEY=VALUE")]
    log_opt: Vec<String>,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
    /// The platform of a multi-platform image to run (`linux/arm64`: emulated through qemu)
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    platform: Option<String>,
    /// The image to run.
    image: String,
    /// The command and its arguments (replace the image's CMD).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

impl RunArgs {
    /// The runner's options (also `kiln create`'s, which takes the same flags).
    pub fn into_options(self) -> Result<RunOptions> {
        let RunArgs {
            rm,
            detach,
            name,
            env,
            env_file,
            workdir,
            user,
            volume,
            publish,
            publish_all,
            network,
            hostname,
            entrypoint,
            cpuset_cpus,
            cpu_shares,
            memory,
            pids_limit,
            init,
            detach_keys,
            interactive,
            tty,
            security_opt,
            restart,
            pull,
            mount,
            tmpfs,
            add_host,
            ulimit,
            group_add,
            shm_size,
            label,
            stop_signal,
            stop_timeout,
            health_cmd,
            health_interval,
            health_timeout,
            health_start_period,
            health_retries,
            no_healthcheck,
            read_only,
            cpus,
            memory_swap,
            cap_add,
            cap_drop,
            privileged,
            log_driver,
            log_opt,
            help: _,
            platform,
            image,
            command,
        } = self;
        let opts = RunOptions {
            platform: platform
                .as_deref()
                .map(crate::platform::Platform::parse)
                .transpose()?,
            image,
            args: command,
            name,
            detach,
            rm,
            env,
            env_files: env_file,
            workdir,
            user,
            volumes: volume,
            publish,
            publish_all,
            network,
            hostname,
            entrypoint,
            cpuset: cpuset_cpus,
            cpu_shares,
            memory,
            pids_limit,
            init,
            interactive,
            tty,
            security_opt,
            detach_keys,
            restart,
            pull,
            mounts: mount,
            tmpfs,
            add_hosts: add_host,
            ulimits: ulimit,
            group_add,
            shm_size,
            labels: label,
            stop_signal,
            stop_timeout,
            health: runner::health::HealthFlags {
                cmd: health_cmd,
                interval: health_interval,
                timeout: health_timeout,
                start_period: health_start_period,
                retries: health_retries,
                none: no_healthcheck,
            },
            read_only,
            cpus,
            memory_swap,
            cap_add,
            cap_drop,
            privileged,
            log_driver,
            log_opts: log_opt,
        };
        Ok(opts)
    }
}

#[derive(Debug, Subcommand)]
pub enum ContainerCommands {
    /// Print containers' details as JSON.
    Inspect {
        /// A Go template run on each container (`{{.State.Status}}`, `{{json .Config}}`).
        #[arg(short, long)]
        format: Option<String>,
        #[arg(required = true)]
        containers: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum VolumeCommands {
    /// Create a named volume (a random name when none is given).
    Create {
        name: Option<String>,
        /// Set a label on the volume (KEY=VALUE, or KEY for an empty value).
        #[arg(short = 'l', long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
    },
    /// List volumes.
    Ls {
        #[arg(short, long)]
        quiet: bool,
        /// Filter: name=REGEX, label=KEY[=VALUE], dangling=true|false, driver=local.
        #[arg(short, long, value_name = "KEY=VALUE")]
        filter: Vec<String>,
        /// A Go template per volume (`{{.Name}}`), `table TEMPLATE` or `json`.
        #[arg(long)]
        format: Option<String>,
    },
    /// Remove volumes (refuses volumes in use).
    Rm {
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        volumes: Vec<String>,
    },
    /// Remove unused anonymous volumes (-a: all unused volumes).
    Prune {
        #[arg(short, long)]
        all: bool,
        /// Do not ask for confirmation.
        #[arg(short, long)]
        force: bool,
    },
    /// Print volumes' details as JSON.
    Inspect {
        #[arg(required = true)]
        volumes: Vec<String>,
    },
}

pub fn run(cmd: RunCommands, globals: &Globals) -> anyhow::Result<i32> {
    let root = globals.root.as_path();
    match cmd {
        RunCommands::Run(args) => {
            let opts = args.into_options()?;
            Ok(runner::run(root, &opts))
        }
        RunCommands::ContainerMonitor { id } => Ok(runner::monitor(root, &id)),
        RunCommands::Ps {
            all,
            quiet,
            no_trunc,
            format,
            filter,
            last,
            latest,
            size,
        } => {
            if let Err(e) = super::image_filter::check_syntax(&filter) {
                crate::errln!("kiln ps: {e:#}");
                return Ok(super::EXIT_KILN_ERROR);
            }
            let opts = PsOptions {
                filters: &filter,
                // docker: -l is -n 1; -n of 0 or less is no limit.
                last: if latest {
                    Some(1)
                } else {
                    last.filter(|n| *n > 0)
                },
                size,
            };
            ps(root, all, quiet, no_trunc, format.as_deref(), &opts)
        }
        RunCommands::Logs {
            follow,
            tail,
            since,
            until,
            timestamps,
            details,
            container,
        } => {
            let filter = runner::observe::logfilter::Filter::new(
                since.as_deref(),
                until.as_deref(),
                timestamps,
                details,
            )?;
            logs(root, follow, &tail, &container, &filter)
        }
        RunCommands::Stop { time, containers } => each(root, &containers, |store, rec| {
            let secs = time.or(rec.config.stop_timeout).unwrap_or(10);
            runner::stop(store, rec, Duration::from_secs(secs))
        }),
        RunCommands::Start {
            attach,
            interactive,
            containers,
        } => {
            if !attach {
                return each(root, &containers, |store, rec| {
                    runner::start_detached(store, rec)
                });
            }
            if containers.len() > 1 {
                bail!("you cannot start and attach multiple containers at once");
            }
            let store = runner::open_store(root)?;
            let rec = state::find(&store, &containers[0])?;
            runner::start_attached(&store, &rec, interactive)
        }
        RunCommands::Restart { time, containers } => each(root, &containers, |store, rec| {
            runner::restart(store, rec, Duration::from_secs(time))
        }),
        RunCommands::Kill { signal, containers } => {
            let sig = runner::config::parse_signal(&signal)?;
            each(root, &containers, |_, rec| runner::signal(rec, sig))
        }
        RunCommands::Pause { containers } => each(root, &containers, |_, rec| runner::pause(rec)),
        RunCommands::Unpause { containers } => {
            each(root, &containers, |_, rec| runner::unpause(rec))
        }
        RunCommands::Top {
            container,
            ps_options,
        } => {
            let store = runner::open_store(root)?;
            let rec = state::find(&store, &container)?;
            let top = runner::top::top(&rec, &ps_options)?;
            print!("{}", runner::top::format_table(&top));
            Ok(0)
        }
        RunCommands::Stats {
            all,
            no_stream,
            no_trunc,
            format,
            containers,
        } => stats(
            root,
            all,
            no_stream,
            no_trunc,
            format.as_deref(),
            &containers,
        ),
        RunCommands::Rm {
            force,
            volumes,
            containers,
        } => each(root, &containers, |store, rec| {
            runner::rm(store, rec, force, volumes)
        }),
        RunCommands::Wait { containers } => {
            let store = runner::open_store(root)?;
            let mut failed = false;
            for c in &containers {
                let result = state::find(&store, c)
                    .and_then(|rec| runner::wait_stopped(&store, &rec.id, None));
                match result {
                    Ok(Some(rec)) => crate::outln!("{}", rec.shown_exit_code())?,
                    Ok(None) => crate::outln!("0")?,
                    Err(e) => {
                        crate::report::report_error(&e.context(format!("wait {c}")));
                        failed = true;
                    }
                }
            }
            Ok(failed as i32)
        }
        RunCommands::Exec {
            interactive,
            tty,
            env,
            workdir,
            user,
            privileged,
            container,
            command,
        } => {
            let store = runner::open_store(root)?;
            let rec = state::find(&store, &container)?;
            drop(store);
            if runner::is_paused(&rec) {
                bail!(
                    "container {} is paused, unpause the container before exec (kiln unpause {})",
                    rec.id,
                    container
                );
            }
            let opts = runner::exec::ExecOptions {
                privileged,
                interactive: interactive || tty,
                tty,
                env,
                workdir,
                user,
            };
            match runner::exec::exec(&rec, &opts, &command) {
                Ok(code) => Ok(code),
                Err(e) => {
                    crate::report::report_error(&e.context("kiln exec"));
                    Ok(126)
                }
            }
        }
        RunCommands::Attach {
            detach_keys,
            no_stdin,
            sig_proxy,
            container,
        } => {
            let store = runner::open_store(root)?;
            let rec = state::find(&store, &container)?;
            runner::attach::attach_cmd(&store, &rec, detach_keys.as_deref(), no_stdin, sig_proxy)
        }
        RunCommands::Port { container, port } => cmd_port(root, &container, port.as_deref()),
        RunCommands::Container {
            cmd: ContainerCommands::Inspect { format, containers },
        } => match runner::inspect_containers(root, &containers)? {
            Some(v) => {
                let template = match format.as_deref() {
                    None | Some("json") => None,
                    Some(f) => {
                        Some(super::template::Template::parse(f).context("inspect: --format")?)
                    }
                };
                match template {
                    None => crate::outln!(
                        "{}",
                        super::format::docker_json::to_string_pretty(
                            &v,
                            super::format::docker_json::Style::Inspect
                        )
                    )?,
                    Some(t) => {
                        for obj in v.as_array().into_iter().flatten() {
                            crate::outln!("{}", t.execute(obj).context("inspect: --format")?)?;
                        }
                    }
                }
                Ok(0)
            }
            None => {
                let store = runner::open_store(root)?;
                for c in &containers {
                    state::find(&store, c)?;
                }
                Ok(1)
            }
        },
        RunCommands::Volume { cmd } => volume(root, cmd),
    }
}

/// Runs `f` on each named container, printing each name as docker does; exit 1 if any failed.
fn each(
    root: &Path,
    names: &[String],
    f: impl Fn(&crate::store::Store, &state::ContainerRecord) -> Result<()>,
) -> Result<i32> {
    let store = runner::open_store(root)?;
    let mut failed = false;
    for n in names {
        match state::find(&store, n).and_then(|rec| f(&store, &rec)) {
            Ok(()) => crate::outln!("{n}")?,
            Err(e) => {
                crate::report::report_error(&e);
                failed = true;
            }
        }
    }
    Ok(failed as i32)
}

/// `kiln stats`: the named containers (or every running one, `-a` every one, listed again at
/// each refresh), read twice a second apart for CPU %, then printed; every second again
/// unless `no_stream` (the screen redrawn in place, as docker does).
/// docker's column names of `stats --format 'table …'`.
const STATS_HEADERS: &[(&str, &str)] = &[
    ("BlockIO", "BLOCK I/O"),
    ("CPUPerc", "CPU %"),
    ("Container", "CONTAINER"),
    ("ID", "CONTAINER ID"),
    ("MemPerc", "MEM %"),
    ("MemUsage", "MEM USAGE / LIMIT"),
    ("Name", "NAME"),
    ("NetIO", "NET I/O"),
    ("PIDs", "PIDS"),
];

/// One `stats` row as docker's template sees it; `Container` is the name or ID as given on
/// the command line, else the ID.
fn stats_object(row: &[String], given: Option<&str>) -> serde_json::Value {
    let cell = |i: usize| row.get(i).cloned().unwrap_or_default();
    serde_json::json!({
        "BlockIO": cell(6),
        "CPUPerc": cell(2),
        "Container": given.map(String::from).unwrap_or_else(|| cell(0)),
        "ID": cell(0),
        "MemPerc": cell(4),
        "MemUsage": cell(3),
        "Name": cell(1),
        "NetIO": cell(5),
        "PIDs": cell(7),
    })
}

fn stats(
    root: &Path,
    all: bool,
    no_stream: bool,
    no_trunc: bool,
    format: Option<&str>,
    names: &[String],
) -> Result<i32> {
    use runner::stats as st;
    let format = Format::parse(format).context("stats: --format")?;
    let store = runner::open_store(root)?;
    let named: Vec<String> = names
        .iter()
        .map(|n| state::find(&store, n).map(|rec| rec.id))
        .collect::<Result<_>>()?;
    let containers = || -> Result<Vec<state::ContainerRecord>> {
        if named.is_empty() {
            Ok(state::list(&store)?
                .into_iter()
                .filter(|r| all || r.status() == Status::Running)
                .collect())
        } else {
            // A named container removed meanwhile is left out.
            let mut recs = Vec::new();
            for id in &named {
                recs.extend(state::get(&store, id)?);
            }
            Ok(recs)
        }
    };
    let mut prev: std::collections::HashMap<String, st::Sample> = containers()?
        .iter()
        .map(|r| (r.id.clone(), st::sample(r)))
        .collect();
    let mut first = true;
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let recs = containers()?;
        let mut next = std::collections::HashMap::new();
        let rows: Vec<Vec<String>> = recs
            .iter()
            .map(|rec| {
                let cur = st::sample(rec);
                // A container that appeared since the last reading: no CPU % until the next.
                let before = prev.get(&rec.id).copied().unwrap_or(cur);
                next.insert(rec.id.clone(), cur);
                st::row(rec, &before, &cur, no_trunc)
            })
            .collect();
        prev = next;
        let table = if matches!(format, Format::DefaultTable) {
            let mut table = Vec::new();
            super::table::write(&mut table, st::HEADER, &rows)?;
            String::from_utf8_lossy(&table).into_owned()
        } else {
            let objects: Vec<serde_json::Value> = recs
                .iter()
                .zip(&rows)
                .map(|(rec, row)| {
                    let given = names
                        .iter()
                        .zip(&named)
                        .find(|(_, id)| **id == rec.id)
                        .map(|(n, _)| n.as_str());
                    stats_object(row, given)
                })
                .collect();
            match format
                .render(STATS_HEADERS, &objects)
                .context("stats: --format")?
            {
                Some(text) => text,
                None => objects.iter().map(|o| format!("{o}\n")).collect(),
            }
        };
        if no_stream {
            crate::out!("{table}")?;
            return Ok(0);
        }
        // Home, each line cleared to its end, the rest of the screen cleared (the first frame
        // clears the whole screen).
        let mut frame = String::from(if first { "\x1b[2J\x1b[H" } else { "\x1b[H" });
        for line in table.lines() {
            frame.push_str(line);
            frame.push_str("\x1b[K\n");
        }
        frame.push_str("\x1b[J");
        crate::out!("{frame}")?;
        crate::report::stdout().flush()?;
        first = false;
    }
}

/// docker's HumanDuration.
fn human_duration(secs: i64) -> String {
    let secs = secs.max(0);
    match secs {
        0 => "Less than a second".into(),
        1 => "1 second".into(),
        s if s < 60 => format!("{s} seconds"),
        s if s < 120 => "About a minute".into(),
        s if s < 3600 => format!("{} minutes", s / 60),
        s if s < 7200 => "About an hour".into(),
        s if s < 48 * 3600 => format!("{} hours", s / 3600),
        s if s < 7 * 86400 * 2 => format!("{} days", s / 86400),
        s if s < 30 * 86400 * 2 => format!("{} weeks", s / (7 * 86400)),
        s if s < 365 * 86400 * 2 => format!("{} months", s / (30 * 86400)),
        s => format!("{} years", s / (365 * 86400)),
    }
}

fn ago(ns: i64) -> i64 {
    (state::now_ns() - ns) / 1_000_000_000
}

/// docker's column names of `ps --format 'table …'`.
const PS_HEADERS: &[(&str, &str)] = &[
    ("Command", "COMMAND"),
    ("CreatedAt", "CREATED AT"),
    ("ID", "CONTAINER ID"),
    ("Image", "IMAGE"),
    ("Labels", "LABELS"),
    ("LocalVolumes", "LOCAL VOLUMES"),
    ("Mounts", "MOUNTS"),
    ("Names", "NAMES"),
    ("Networks", "NETWORKS"),
    ("Platform", "PLATFORM"),
    ("Ports", "PORTS"),
    ("RunningFor", "CREATED"),
    ("Size", "SIZE"),
    ("State", "STATE"),
    ("Status", "STATUS"),
];

/// `ps`'s docker flags beyond the listing itself (`--filter`, `-n`/`-l`, `-s`).
struct PsOptions<'a> {
    filters: &'a [String],
    last: Option<i64>,
    size: bool,
}

fn ps(
    root: &Path,
    all: bool,
    quiet: bool,
    no_trunc: bool,
    format: Option<&str>,
    opts: &PsOptions,
) -> Result<i32> {
    let format = Format::parse(format).context("ps: --format")?;
    let store = runner::open_store(root)?;
    let filter =
        super::ps_filter::PsFilter::parse(&store, &store, opts.filters).context("ps: --filter")?;
    // docker: -n/-l and a status filter look at every container, not only running ones.
    let all = all || opts.last.is_some() || filter.wants_stopped();
    let mut rows: Vec<[String; 7]> = Vec::new();
    let mut sizes: Vec<String> = Vec::new();
    let mut objects = Vec::new();
    let mut listed = 0i64;
    for rec in state::list(&store)? {
        let status = rec.status();
        if !all && status != Status::Running {
            continue;
        }
        let shown_state = match status {
            Status::Created => "created",
            Status::Running if runner::is_paused(&rec) => "paused",
            Status::Running => "running",
            Status::Exited => "exited",
        };
        // The labels for a filter and for the Labels column (`a=b,k=v`, as docker's).
        let labels = if filter.needs_labels() || !matches!(format, Format::DefaultTable) {
            super::ps_filter::container_labels(&store, &rec)
        } else {
            Default::default()
        };
        if !filter.matches(&rec, shown_state, &labels) {
            continue;
        }
        if opts.last.is_some_and(|n| listed >= n) {
            break;
        }
        listed += 1;
        let size_text = if opts.size {
            let rw =
                super::ps_filter::dir_content_size(&runner::lifecycle::upper_dir(&store, &rec.id));
            let image = super::image_sizes::image_content_size(&store, &rec.manifest).unwrap_or(0);
            format!(
                "{} (virtual {})",
                crate::oci::progress::human_bytes(rw),
                crate::oci::progress::human_bytes(rw + image)
            )
        } else {
            "N/A".to_string()
        };
        if quiet {
            crate::outln!(
                "{}",
                if no_trunc {
                    rec.id.as_str()
                } else {
                    rec.short_id()
                }
            )?;
            continue;
        }
        // docker's daemon quotes the arguments that hold a space: `sh -c 'echo hi'`.
        let mut command = rec
            .config
            .args()
            .iter()
            .enumerate()
            .map(|(i, a)| {
                if i > 0 && a.contains(' ') {
                    format!("'{a}'")
                } else {
                    a.clone()
                }
            })
            .collect::<Vec<_>>()
            .join(" ");
        if !no_trunc && command.chars().count() > 20 {
            command = command.chars().take(19).collect::<String>() + "…";
        }
        let status_text = match status {
            Status::Running if runner::is_paused(&rec) => {
                format!("Up {} (Paused)", human_duration(ago(rec.started_ns)))
            }
            Status::Running => format!(
                "Up {}{}",
                human_duration(ago(rec.started_ns)),
                runner::health_suffix(&store, &rec)
            ),
            Status::Created => "Created".into(),
            // A restart policy's monitor waiting out its back-off.
            Status::Exited
                if rec.owner_alive()
                    && rec.config.restart != crate::runner::restart::RestartPolicy::No =>
            {
                format!(
                    "Restarting ({}) {} ago",
                    rec.shown_exit_code(),
                    human_duration(ago(rec.finished_ns.max(rec.created_ns)))
                )
            }
            Status::Exited => format!(
                "Exited ({}) {} ago",
                rec.shown_exit_code(),
                human_duration(ago(rec.finished_ns.max(rec.created_ns)))
            ),
        };
        let state_name = match status {
            Status::Created => "created",
            Status::Running if runner::is_paused(&rec) => "paused",
            Status::Running => "running",
            Status::Exited
                if rec.owner_alive()
                    && rec.config.restart != crate::runner::restart::RestartPolicy::No =>
            {
                "restarting"
            }
            Status::Exited => "exited",
        };
        let created_at = chrono::DateTime::from_timestamp(rec.created_ns / 1_000_000_000, 0)
            .map(|t| t.format("%Y-%m-%d %H:%M:%S +0000 UTC").to_string())
            .unwrap_or_default();
        let mounts: Vec<&str> = rec
            .config
            .mounts
            .iter()
            .filter(|m| m.kind == runner::config::MountType::Volume)
            .map(|m| m.source.as_str())
            .collect();
        let mut network = rec.config.network.clone();
        if network.is_empty() {
            network = "none".into();
        }
        objects.push(serde_json::json!({
            "Command": format!("\"{command}\""),
            "CreatedAt": created_at,
            "ID": if no_trunc { rec.id.as_str() } else { rec.short_id() },
            "Image": rec.image,
            "Labels": labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","),
            "LocalVolumes": mounts.len().to_string(),
            "Mounts": mounts.join(","),
            "Names": rec.name,
            "Networks": network,
            "Platform": null,
            "Ports": if status == Status::Running { state::ports_column(&rec.ports) } else { String::new() },
            "RunningFor": format!("{} ago", human_duration(ago(rec.created_ns))),
            "Size": size_text,
            "State": state_name,
            "Status": status_text,
        }));
        rows.push([
            if no_trunc {
                rec.id.clone()
            } else {
                rec.short_id().to_string()
            },
            rec.image.clone(),
            format!("\"{command}\""),
            format!("{} ago", human_duration(ago(rec.created_ns))),
            status_text,
            if status == Status::Running {
                state::ports_column(&rec.ports)
            } else {
                String::new()
            },
            rec.name.clone(),
        ]);
        sizes.push(size_text);
    }
    if quiet {
        return Ok(0);
    }
    if let Format::Json = format {
        for obj in &objects {
            crate::outln!("{obj}")?;
        }
        return Ok(0);
    }
    if let Some(text) = format
        .render(PS_HEADERS, &objects)
        .context("ps: --format")?
    {
        crate::out!("{text}")?;
        return Ok(0);
    }
    let header = [
        "CONTAINER ID",
        "IMAGE",
        "COMMAND",
        "CREATED",
        "STATUS",
        "PORTS",
        "NAMES",
    ];
    let mut rows: Vec<Vec<String>> = rows.into_iter().map(Vec::from).collect();
    let mut header = header.to_vec();
    if opts.size {
        header.push("SIZE");
        for (row, size) in rows.iter_mut().zip(sizes) {
            row.push(size);
        }
    }
    super::table::write(&mut crate::report::stdout(), &header, &rows)?;
    Ok(0)
}

fn logs(
    root: &Path,
    follow: bool,
    tail: &str,
    container: &str,
    filter: &runner::observe::logfilter::Filter,
) -> Result<i32> {
    let store = runner::open_store(root)?;
    let rec = state::find(&store, container)?;
    let path = runner::logs::log_path(&runner::lifecycle::container_dir(&store, &rec.id), &rec.id);
    let tail: Option<usize> = match tail {
        "all" | "-1" => None,
        n => Some(
            n.parse()
                .with_context(|| format!("invalid --tail {n:?}: expected a number or all"))?,
        ),
    };
    let (mut lines, mut cursor) = runner::logs::read_all(&path)?;
    lines.retain(|l| filter.keeps(&l.time));
    if let Some(n) = tail {
        let skip = lines.len().saturating_sub(n);
        lines.drain(..skip);
    }
    let emit = |lines: Vec<runner::logs::LogLine>| -> Result<()> {
        let mut out = crate::report::stdout();
        let mut err = std::io::stderr().lock();
        for l in lines.into_iter().filter(|l| filter.keeps(&l.time)) {
            let prefix = filter.prefix(&l.time);
            if l.stream == "stderr" {
                err.write_all(prefix.as_bytes())?;
                err.write_all(&l.text)?;
            } else {
                out.write_all(prefix.as_bytes())?;
                out.write_all(&l.text)?;
            }
        }
        out.flush()?;
        Ok(())
    };
    emit(lines)?;
    if follow {
        loop {
            // Follow while the container runs or its owner is still starting it.
            let running = state::get(&store, &rec.id)?
                .is_some_and(|r| r.status() == Status::Running || r.owner_alive());
            emit(runner::logs::follow(&path, &mut cursor)?)?;
            if !running || filter.past_until() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(0)
}

fn cmd_port(root: &Path, container: &str, port: Option<&str>) -> Result<i32> {
    let store = runner::open_store(root)?;
    let rec = state::find(&store, container)?;
    let filter = match port {
        None => None,
        Some(p) => {
            let (num, proto) = p.split_once('/').unwrap_or((p, "tcp"));
            let num: u16 = num
                .parse()
                .with_context(|| format!("invalid port {p:?}: expected PORT[/tcp|/udp]"))?;
            Some((num, proto.to_string()))
        }
    };
    let fmt = |b: &runner::config::PortBinding| match b.host_ip {
        std::net::IpAddr::V6(ip) => format!("[{ip}]:{}", b.host_port),
        ip => format!("{ip}:{}", b.host_port),
    };
    let mut found = false;
    for b in &rec.ports {
        match &filter {
            None => crate::outln!("{}/{} -> {}", b.container_port, b.proto, fmt(b))?,
            Some((n, p)) if *n == b.container_port && *p == b.proto.to_string() => {
                crate::outln!("{}", fmt(b))?;
                found = true;
            }
            Some(_) => {}
        }
    }
    if let Some((n, p)) = filter {
        if !found {
            bail!("no public port '{n}/{p}' published for {}", rec.short_id());
        }
    }
    Ok(0)
}

/// docker's column names of `volume ls --format 'table …'`.
const VOLUME_HEADERS: &[(&str, &str)] = &[
    ("Availability", "AVAILABILITY"),
    ("Driver", "DRIVER"),
    ("Group", "GROUP"),
    ("Labels", "LABELS"),
    ("Links", "LINKS"),
    ("Mountpoint", "MOUNTPOINT"),
    ("Name", "VOLUME NAME"),
    ("Scope", "SCOPE"),
    ("Size", "SIZE"),
    ("Status", "STATUS"),
];

fn volume(root: &Path, cmd: VolumeCommands) -> Result<i32> {
    let store = runner::open_store(root)?;
    match cmd {
        VolumeCommands::Create { name, labels } => {
            // docker's name for a volume created without one: 64 hex digits.
            let name = name.unwrap_or_else(|| runner::random_hex(32));
            if !runner::config::valid_volume_name(&name) {
                bail!("invalid volume name {name:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed");
            }
            let labels = runner::runflags::labels(None, &labels)?;
            let dir = runner::volumes::data_dir(store.root(), &name);
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            state::add_volume(&store, &name, &labels)?;
            crate::outln!("{name}")?;
            Ok(0)
        }
        VolumeCommands::Ls {
            quiet,
            filter,
            format,
        } => {
            let format = Format::parse(format.as_deref()).context("volume ls: --format")?;
            let chosen = super::volume_filter::VolumeFilter::parse(&filter)?;
            let vols: Vec<_> = state::volumes(&store)?
                .into_iter()
                .filter(|v| chosen.matches(v))
                .collect();
            if !quiet && !matches!(format, Format::DefaultTable) {
                let objects: Vec<serde_json::Value> = vols
                    .iter()
                    .map(|v| {
                        serde_json::json!({
                            "Availability": "N/A",
                            "Driver": "local",
                            "Group": "N/A",
                            "Labels": super::volume_filter::labels_text(&v.labels),
                            "Links": "N/A",
                            "Mountpoint": runner::volumes::data_dir(store.root(), &v.name),
                            "Name": v.name,
                            "Scope": "local",
                            "Size": "N/A",
                            "Status": "N/A",
                        })
                    })
                    .collect();
                match format
                    .render(VOLUME_HEADERS, &objects)
                    .context("volume ls: --format")?
                {
                    Some(text) => crate::out!("{text}")?,
                    None => {
                        for obj in &objects {
                            crate::outln!("{obj}")?;
                        }
                    }
                }
                return Ok(0);
            }
            if !quiet {
                crate::outln!("DRIVER    VOLUME NAME")?;
            }
            for v in vols {
                if quiet {
                    crate::outln!("{}", v.name)?;
                } else {
                    crate::outln!("local     {}", v.name)?;
                }
            }
            Ok(0)
        }
        VolumeCommands::Rm { force: _, volumes } => {
            let mut failed = false;
            for name in &volumes {
                let result = (|| -> Result<()> {
                    let v = state::volume(&store, name)?
                        .with_context(|| format!("no such volume: {name}"))?;
                    if !v.users.is_empty() {
                        bail!(
                            "remove {name}: volume is in use - [{}]: remove those containers \
                             first",
                            v.users.join(", ")
                        );
                    }
                    if state::delete_volume_row(&store, name)? {
                        runner::volumes::remove_dir(store.root(), name)?;
                    }
                    Ok(())
                })();
                match result {
                    Ok(()) => crate::outln!("{name}")?,
                    Err(e) => {
                        crate::report::report_error(&e);
                        failed = true;
                    }
                }
            }
            Ok(failed as i32)
        }
        VolumeCommands::Prune { all, force } => {
            drop(store);
            super::housekeeping_cmds::volume_prune(root, all, force)
        }
        VolumeCommands::Inspect { volumes } => {
            let mut out = Vec::new();
            for name in &volumes {
                let v = state::volume(&store, name)?
                    .with_context(|| format!("no such volume: {name}"))?;
                let created = chrono::DateTime::from_timestamp(v.created, 0)
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                    .unwrap_or_default();
                out.push(serde_json::json!({
                    "CreatedAt": created,
                    "Driver": "local",
                    // docker's: null for a volume without labels.
                    "Labels": (!v.labels.is_empty()).then_some(&v.labels),
                    "Mountpoint": runner::volumes::data_dir(store.root(), &v.name),
                    "Name": v.name,
                    "Options": null,
                    "Scope": "local",
                    "Anonymous": v.anonymous,
                    "UsedBy": v.users,
                }));
            }
            crate::outln!("{}", serde_json::to_string_pretty(&out)?)?;
            Ok(0)
        }
    }
}
