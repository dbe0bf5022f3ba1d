//! One container's life in its owner process (the foreground `kiln run`, or the detached
//! monitor): root filesystem, volumes, ports, the sandboxed process, logs, the exit status, and
//! the clean-up afterwards.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::thread::JoinHandle;

use anyhow::{Context, Result};

use super::config::PortBinding;
use super::logs::{self, LogWriter};
use super::proxy::{self, Proxy};
use super::state::{self, ContainerRecord};
use super::volumes;
use crate::sandbox::{self, ExecSpec, ExitInfo, Network, Resources, Stdio};
use crate::snapshot::{ActiveSnapshot, PrepareOptions, Snapshotter};
use crate::store::Store;

/// Where the container's standard streams go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamMode {
    /// Straight to kiln's own streams, no log (foreground `--rm`: the log would be removed).
    Inherit,
    /// To kiln's streams and the log (foreground).
    Tee,
    /// To the log only (detached).
    LogOnly,
}

/// A started container, owned by this process.
pub struct Started {
    pub running: sandbox::Running,
    /// kiln's terminal settings before `-it` made it raw; restored at the end.
    saved_termios: Option<nix::sys::termios::Termios>,
    snapshot: Option<ActiveSnapshot>,
    proxy: Option<Proxy>,
    copiers: Vec<JoinHandle<()>>,
    pub ports: Vec<PortBinding>,
    /// The health checker while the container runs (`health`).
    health: Option<super::health::Checker>,
    /// A detached `-t` container's terminal server (`attach.sock`).
    attach: Option<super::attach::Server>,
}

/// The monitor's environment: the size of the terminal of the `kiln run -t` that started it
/// (`ROWSxCOLS`), and whether that client attaches right away (so the first output is kept
/// for it).
pub const ENV_TTY_SIZE: &str = "KILN_MONITOR_TTY_SIZE";
pub const ENV_ATTACH_BACKLOG: &str = "KILN_MONITOR_ATTACH_BACKLOG";

/// Whether the client that started this monitor attaches at once: true for the first start
/// only (a container the monitor starts again has no such client).
fn attach_backlog_wanted() -> bool {
    static TAKEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    std::env::var_os(ENV_ATTACH_BACKLOG).is_some()
        && !TAKEN.swap(true, std::sync::atomic::Ordering::Relaxed)
}

fn monitor_tty_size() -> Option<crate::sandbox::tty::WinSize> {
    let v = std::env::var(ENV_TTY_SIZE).ok()?;
    let (r, c) = v.split_once('x')?;
    Some(crate::sandbox::tty::WinSize {
        rows: r.parse().ok()?,
        cols: c.parse().ok()?,
    })
}

/// A container's writable layer (kept across runs): `ROOT/containers/<id>/upper`.
pub fn upper_dir(store: &Store, id: &str) -> PathBuf {
    container_dir(store, id).join("upper")
}

/// A container's directory: `ROOT/containers/<id>`.
pub fn container_dir(store: &Store, id: &str) -> PathBuf {
    store.root().join("containers").join(id)
}

/// The exit code docker gives a container that could not start: 127 when the command is not
/// found, 126 when it cannot be executed, 125 for everything else (kiln's own failures).
pub fn start_failure_code(err: &anyhow::Error) -> i32 {
    let text = format!("{err:#}");
    let exec_failure = text.contains("exec \"") || text.contains("exec: ");
    if exec_failure
        && (text.contains("not found in $PATH") || text.contains("No such file or directory"))
    {
        127
    } else if exec_failure
        && (text.contains("Permission denied") || text.contains("Exec format error"))
    {
        126
    } else {
        125
    }
}

/// Builds the root filesystem and starts the container's command.
pub fn start(store: &Store, rec: &ContainerRecord, mode: StreamMode) -> Result<Started> {
    let cfg = &rec.config;
    let root = store.root();
    let image_config = store.config(&rec.image_id).with_context(|| {
        format!(
            "reading the config of image {} (was it removed?)",
            rec.image
        )
    })?;
    let snapshotter = Snapshotter::new(root)?;
    let manifest = store.manifest(&rec.manifest)?;
    let lowers = snapshotter.image_lowers(store, &manifest, &image_config)?;
    // A `--rm` container's upperdir is thrown away (volatile: no syncs); any other keeps its
    // writable layer in `containers/<id>/upper` for `kiln start` (synced as usual).
    let snapshot = if cfg.auto_remove {
        snapshotter.prepare(&lowers, &PrepareOptions { volatile: true })?
    } else {
        snapshotter.prepare_with_upper(
            &lowers,
            &PrepareOptions { volatile: false },
            &upper_dir(store, &rec.id),
        )?
    };
    let mounts = volumes::sandbox_mounts(root, &snapshot.merged(), &cfg.mounts)?;

    let network = match cfg.network.as_str() {
        "host" => Network::Host,
        n => match n.strip_prefix("container:") {
            Some(other) => Network::Join(shared_netns(store, other)?),
            None => Network::None,
        },
    };
    let (ports, listeners) = if network == Network::None {
        proxy::bind(&cfg.publish)?
    } else {
        (Vec::new(), Vec::new())
    };

    let mut spec = ExecSpec::new(snapshot.merged(), cfg.args());
    spec.env = cfg.env.clone();
    super::config::add_hostname_env(&mut spec.env, &cfg.hostname);
    spec.cwd = PathBuf::from(if cfg.working_dir.is_empty() {
        "/"
    } else {
        &cfg.working_dir
    });
    spec.user = cfg.user.clone();
    // PID 1 is the command, as docker's; `--init` puts an init above it.
    spec.init = cfg.init;
    if cfg.tty && !spec.env.iter().any(|e| e.starts_with("TERM=")) {
        // docker's daemon sets it for a terminal (not in the container's config).
        spec.env.push("TERM=xterm".into());
    }
    spec.hostname = cfg.hostname.clone();
    spec.extra_hosts = cfg.extra_hosts.clone();
    spec.group_add = cfg.group_add.clone();
    for u in &cfg.ulimits {
        spec.ulimits
            .push(crate::sandbox::ulimit::parse(u).context("--ulimit")?);
    }
    if let Some(bytes) = cfg.shm_size {
        spec.shm_size = bytes;
    }
    spec.read_only_root = cfg.read_only;
    spec.caps = cfg.caps;
    spec.no_new_privileges = cfg.no_new_privileges;
    if cfg.privileged {
        spec.privileged = Some(crate::sandbox::HostDevices::All);
    }
    spec.network = network.clone();
    spec.mounts = mounts;
    spec.seccomp = cfg.seccomp.to_sandbox()?;
    spec.resources = Resources {
        memory_bytes: cfg.memory,
        cpu_shares: cfg.cpu_shares,
        cpuset: cfg.cpuset.clone(),
        pids_limit: cfg.pids_limit,
        cpu_quota_us: cfg.cpu_quota_us,
        memory_swap: cfg.memory_swap,
        // Containers are paused and read by `kiln pause` and `kiln stats`.
        unobserved: false,
    };
    spec.stdin = if cfg.interactive && mode != StreamMode::LogOnly {
        Stdio::Inherit
    } else {
        Stdio::Null
    };
    let (out, err) = match mode {
        StreamMode::Inherit => (Stdio::Inherit, Stdio::Inherit),
        StreamMode::Tee | StreamMode::LogOnly => (Stdio::Piped, Stdio::Piped),
    };
    spec.stdout = out;
    spec.stderr = err;
    // -t: the command's stdio is a new terminal of the container's own devpts; kiln relays
    // its master side (a detached monitor serves it to `kiln attach` clients).
    if cfg.tty {
        spec.pty = Some(if mode == StreamMode::LogOnly {
            monitor_tty_size()
        } else {
            crate::sandbox::tty::size_of(0)
        });
    }

    let mut running = sandbox::spawn(&spec)?;
    drop(spec);
    let mut copiers = Vec::new();
    let mut saved_termios = None;
    let mut attach = None;
    let mut pty_master = running.pty_master.take();
    if mode == StreamMode::LogOnly {
        if let Some(master) = pty_master.take() {
            let dir = container_dir(store, &rec.id);
            let server = super::attach::Server::start(
                &dir,
                &master,
                cfg.interactive,
                attach_backlog_wanted(),
            )?;
            let log = LogWriter::open(&logs::log_path(&dir, &rec.id), &cfg.log)?;
            copiers.push(log.copy_from(master, "stdout", Some(server.tee())));
            attach = Some(server);
        }
    }
    if let Some(master) = pty_master {
        let log = match mode {
            StreamMode::Inherit => None,
            _ => Some(LogWriter::open(
                &logs::log_path(&container_dir(store, &rec.id), &rec.id),
                &cfg.log,
            )?),
        };
        if mode != StreamMode::LogOnly && cfg.interactive {
            saved_termios = raw_terminal();
            let mut to_master = master.try_clone()?;
            // Not joined: it blocks on kiln's stdin until kiln exits.
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut std::io::stdin().lock(), &mut to_master);
            });
        }
        let tee: Option<Box<dyn Write + Send>> =
            (mode != StreamMode::LogOnly).then(|| Box::new(std::io::stdout()) as _);
        copiers.push(match log {
            Some(log) => log.copy_from(master, "stdout", tee),
            None => std::thread::spawn(move || {
                let mut master = master;
                if let Some(mut t) = tee {
                    let _ = std::io::copy(&mut master, &mut t);
                }
            }),
        });
    } else if mode != StreamMode::Inherit {
        let dir = container_dir(store, &rec.id);
        let log = LogWriter::open(&logs::log_path(&dir, &rec.id), &cfg.log)?;
        let tee = mode == StreamMode::Tee;
        if let Some(o) = running.stdout.take() {
            let t: Option<Box<dyn Write + Send>> = tee.then(|| Box::new(std::io::stdout()) as _);
            copiers.push(log.copy_from(o, "stdout", t));
        }
        if let Some(e) = running.stderr.take() {
            let t: Option<Box<dyn Write + Send>> = tee.then(|| Box::new(std::io::stderr()) as _);
            copiers.push(log.copy_from(e, "stderr", t));
        }
    }
    let proxy = if listeners.is_empty() {
        None
    } else {
        match open_netns_unless_exited(&running) {
            Ok(Some(netns)) => Some(Proxy::start(&ports, listeners, netns)?),
            // A command that ends at once (`true`) takes its namespace with it: nothing to
            // forward to, and the host ports close as the listeners drop.
            Ok(None) => None,
            Err(e) => {
                return Err(e)
                    .context("opening the container's network namespace for the port proxy")
            }
        }
    };
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() };
    state::set_running(store, &rec.id, me, running.pid(), &ports)?;
    let health = super::health::start(store, &rec.id, cfg.healthcheck.as_ref());
    Ok(Started {
        health,
        running,
        saved_termios,
        snapshot: Some(snapshot),
        proxy,
        copiers,
        ports,
        attach,
    })
}

/// Waits for the container to end, closes its ports, records the exit and removes its root
/// filesystem (and the container itself with `--rm`).
pub fn finish(store: &Store, rec: &ContainerRecord, mut started: Started) -> Result<ExitInfo> {
    let exit = started.running.wait();
    drop(started.health.take());
    if let Some(p) = started.proxy.take() {
        p.stop();
    }
    for c in started.copiers.drain(..) {
        let _ = c.join();
    }
    if let Some(t) = started.saved_termios.take() {
        let _ =
            nix::sys::termios::tcsetattr(std::io::stdin(), nix::sys::termios::SetArg::TCSANOW, &t);
    }
    let released = started
        .snapshot
        .take()
        .map(|s| s.release())
        .unwrap_or(Ok(()));
    let exit = exit?;
    if rec.config.auto_remove {
        remove(store, rec, true)?;
    } else {
        state::set_exited(store, &rec.id, exit.code, exit.oom_killed, "")?;
    }
    if let Some(server) = started.attach.take() {
        server.finish(exit.code);
    }
    released?;
    Ok(exit)
}

/// Removes a container that is not running: its directory, rows, and with `volumes` its
/// anonymous volumes that nothing else uses.
pub fn remove(store: &Store, rec: &ContainerRecord, volumes: bool) -> Result<()> {
    let dir = container_dir(store, &rec.id);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", dir.display())),
    }
    state::delete(store, &rec.id)?;
    if volumes {
        for m in rec.config.mounts.iter().filter(|m| m.anonymous) {
            if state::delete_volume_row(store, &m.source)? {
                volumes::remove_dir(store.root(), &m.source)?;
            }
        }
    }
    Ok(())
}

/// Puts kiln's terminal in raw mode (keys go to the container as typed); returns the previous
/// settings, or None when stdin is not a terminal.
fn raw_terminal() -> Option<nix::sys::termios::Termios> {
    use nix::sys::termios;
    let stdin = std::io::stdin();
    let saved = termios::tcgetattr(&stdin).ok()?;
    let mut raw = saved.clone();
    termios::cfmakeraw(&mut raw);
    termios::tcsetattr(&stdin, termios::SetArg::TCSANOW, &raw).ok()?;
    Some(saved)
}

/// Opens the container's network namespace, or `None` when the container has already exited.
/// An exiting process drops its namespaces a moment before it becomes a zombie, so a failed open
/// while the process still looks alive is retried briefly before it counts as an error.
fn open_netns_unless_exited(running: &sandbox::Running) -> std::io::Result<Option<File>> {
    let mut last_err = None;
    for _ in 0..50 {
        match File::open(running.netns_path()) {
            Ok(netns) => return Ok(Some(netns)),
            Err(_) if state::process_start_time(running.pid()).is_none() => return Ok(None),
            Err(e) => last_err = Some(e),
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    Err(last_err.unwrap_or_else(|| std::io::Error::other("no network namespace")))
}

/// Opens the network namespace of the running container `id` (`--network container:ID`).
fn shared_netns(store: &Store, id: &str) -> Result<sandbox::NetnsFd> {
    let not_running = |name: &str| {
        anyhow::anyhow!(
            "cannot join network namespace of a non running container: container {name} is not \
             running: start it first"
        )
    };
    let other = state::get(store, id)?.ok_or_else(|| {
        anyhow::anyhow!(
            "cannot join network namespace of container {}: no such container (it was removed)",
            &id[..12.min(id.len())]
        )
    })?;
    if other.status() != state::Status::Running || other.init_pid <= 0 {
        return Err(not_running(&other.name));
    }
    let path = format!("/proc/{}/ns/net", other.init_pid);
    let ns = File::open(&path)
        .map_err(|_| not_running(&other.name))
        .with_context(|| format!("opening {path}"))?;
    // The init may have ended (and its pid been reused) between the read and the open.
    match state::get(store, id)? {
        Some(r) if r.status() == state::Status::Running && r.init_pid == other.init_pid => {}
        _ => return Err(not_running(&other.name)),
    }
    Ok(sandbox::NetnsFd(std::sync::Arc::new(ns)))
}
