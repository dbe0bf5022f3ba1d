//! runner: `kiln run` and the container lifecycle, on the snapshot and sandbox modules.
//!
//! # Model
//! A container is a row in the runner's tables (`state`) plus `ROOT/containers/<id>/` (its
//! json-file log and the monitor's own error log). Exactly one process *owns* a running
//! container: the foreground `kiln run`, or for `-d` a monitor (kiln re-executed as the hidden
//! `container-monitor` command, double-forked in its own session). The owner mounts the root filesystem,
//! binds the published ports, starts the sandbox, runs the port proxy and the log copiers,
//! records the exit status and cleans up. Killing the owner kills the container (the sandbox's
//! parent-death signals); a container whose owner is gone shows as exited (pid + start time).
//!
//! # API for other modules
//! ```ignore
//! runner::image_in_use(&store, manifest_digest)?  // container IDs using an image (for rmi)
//! runner::inspect_containers(root, &names)?       // docker-like JSON, or None if not containers
//! ```

pub mod attach;
pub mod commit;
pub mod config;
pub mod copy;
pub mod exec;
pub mod health;
pub mod lifecycle;
pub mod observe;
pub mod proxy;
pub mod pull;
pub mod restart;
pub mod rootview;
pub mod runflags;
pub mod settings;
pub mod state;
pub mod volumes;

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};

use anyhow::{bail, Context, Result};

use config::{MountType, PortRequest, VolumeMount};
use lifecycle::StreamMode;
use state::{ContainerConfig, ContainerRecord, Status};

use crate::store::Store;

pub use observe::{logs, stats, top};
pub use state::open_store;

/// `kiln run`'s options, as parsed from the command line.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub image: String,
    /// `--platform`: which manifest of a multi-platform image (default this machine's); a
    /// foreign one runs emulated.
    pub platform: Option<crate::platform::Platform>,
    pub args: Vec<String>,
    pub name: Option<String>,
    pub detach: bool,
    pub rm: bool,
    pub env: Vec<String>,
    pub env_files: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub volumes: Vec<String>,
    pub publish: Vec<String>,
    pub publish_all: bool,
    pub network: String,
    pub hostname: Option<String>,
    pub entrypoint: Option<String>,
    pub cpuset: Option<String>,
    pub cpu_shares: Option<u64>,
    pub memory: Option<String>,
    pub pids_limit: Option<i64>,
    pub init: bool,
    pub interactive: bool,
    pub tty: bool,
    /// `--security-opt` values.
    pub security_opt: Vec<String>,
    /// `--restart` (empty: no).
    pub restart: String,
    /// `--pull missing|always|never` (empty: missing).
    pub pull: String,
    /// `--mount` specs.
    pub mounts: Vec<String>,
    /// `--tmpfs` specs.
    pub tmpfs: Vec<String>,
    /// `--add-host NAME:IP`.
    pub add_hosts: Vec<String>,
    /// `--ulimit NAME=SOFT[:HARD]`.
    pub ulimits: Vec<String>,
    /// `--group-add GROUP`.
    pub group_add: Vec<String>,
    /// `--shm-size`.
    pub shm_size: Option<String>,
    /// `--label K=V`.
    pub labels: Vec<String>,
    /// `--stop-signal` (over the image's STOPSIGNAL).
    pub stop_signal: Option<String>,
    /// `--stop-timeout` seconds.
    pub stop_timeout: Option<u64>,
    /// `--health-*`, `--no-healthcheck`.
    pub health: health::HealthFlags,
    /// `--read-only`.
    pub read_only: bool,
    /// `--cpus` (e.g. 1.5).
    pub cpus: Option<String>,
    /// `--memory-swap` (e.g. 1g, -1).
    pub memory_swap: Option<String>,
    /// `--cap-add`, `--cap-drop`.
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    /// `--privileged`.
    pub privileged: bool,
    /// `--log-driver` (json-file only) and `--log-opt`s.
    pub log_driver: Option<String>,
    pub log_opts: Vec<String>,
    /// `--detach-keys` (docker's format; default ctrl-p,ctrl-q).
    pub detach_keys: Option<String>,
}

/// `bytes` random bytes in hex: container IDs, anonymous volumes' names.
pub fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut b = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// A docker-style name: `adjective_scientist`.
fn random_name() -> String {
    use rand::seq::SliceRandom;
    const LEFT: &[&str] = &[
        "admiring",
        "brave",
        "clever",
        "dazzling",
        "eager",
        "focused",
        "gallant",
        "happy",
        "jolly",
        "keen",
        "loving",
        "modest",
        "nifty",
        "optimistic",
        "peaceful",
        "quirky",
        "relaxed",
        "serene",
        "trusting",
        "upbeat",
        "vibrant",
        "wizardly",
        "youthful",
        "zealous",
    ];
    const RIGHT: &[&str] = &[
        "agnesi", "babbage", "curie", "darwin", "euler", "fermat", "galois", "hopper", "hypatia",
        "johnson", "kepler", "lovelace", "mayer", "noether", "pascal", "ritchie", "shannon",
        "thompson", "turing", "volta", "wozniak", "yalow", "zuse", "lamarr",
    ];
    let mut rng = rand::thread_rng();
    format!(
        "{}_{}_{}",
        LEFT.choose(&mut rng).unwrap_or(&"kiln"),
        RIGHT.choose(&mut rng).unwrap_or(&"box"),
        &random_hex(2)
    )
}

/// Works out the container's config from the image and the options, and records it (state
/// `created`).
pub fn create(store: &Store, opts: &RunOptions) -> Result<ContainerRecord> {
    let policy = pull::PullPolicy::parse(&opts.pull)?;
    let image = pull::image_for_run(store, &opts.image, policy, opts.platform.as_ref())?;
    let image_config = store.config(&image.config_digest)?;
    if let Some(want) = &opts.platform {
        let have = crate::platform::Platform::of_config(
            &image_config.os().to_string(),
            &image_config.architecture().to_string(),
            image_config.variant().as_deref(),
        );
        if !want.matches(&have) {
            bail!("image {} is for {have}, not {want}", opts.image);
        }
        if !want.is_native() {
            crate::sandbox::binfmt::ensure_runnable(want)?;
        }
    }
    let ic = image_config.config().clone().unwrap_or_default();

    let (entrypoint, cmd) = config::command_line(
        ic.entrypoint().as_deref().unwrap_or(&[]),
        ic.cmd().as_deref().unwrap_or(&[]),
        opts.entrypoint.as_deref(),
        &opts.args,
    )?;
    let mut env: Vec<String> = ic.env().clone().unwrap_or_default();
    for file in &opts.env_files {
        for e in config::read_env_file(file)? {
            config::apply_env_flag(&mut env, &e, |k| std::env::var(k).ok())?;
        }
    }
    for e in &opts.env {
        config::apply_env_flag(&mut env, e, |k| std::env::var(k).ok())?;
    }

    // `container:NAME` shares that container's network namespace: recorded by ID, and the
    // container must be running now (it is checked again when this one starts).
    let mut shared_net: Option<ContainerRecord> = None;
    let network = match opts.network.as_str() {
        "" | "none" => "none".to_string(),
        "host" => "host".to_string(),
        n if n.starts_with("container:") => {
            let other = state::find(store, &n["container:".len()..])
                .with_context(|| format!("--network {n}"))?;
            if other.status() != Status::Running {
                bail!(
                    "cannot join network namespace of a non running container: container {} \
                     is {}: start it first",
                    other.name,
                    if other.status() == Status::Created {
                        "created"
                    } else {
                        "exited"
                    }
                );
            }
            if !opts.publish.is_empty() || opts.publish_all {
                bail!(
                    "conflicting options: port publishing and the container type network mode \
                     (publish the ports on container {} instead)",
                    other.name
                );
            }
            if opts.hostname.is_some() {
                bail!("conflicting options: hostname and the network mode (container:)");
            }
            let mode = format!("container:{}", other.id);
            shared_net = Some(other);
            mode
        }
        n => bail!(
            "network {n:?} is not supported: kiln has `none` (own namespace, loopback only, \
             ports published through a proxy), `host` and `container:NAME` (another running \
             container's namespace)"
        ),
    };
    let network = network.as_str();
    let exposed: Vec<String> = ic
        .exposed_ports()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let mut publish: Vec<PortRequest> = Vec::new();
    for p in &opts.publish {
        publish.extend(config::parse_publish(p)?);
    }
    if opts.publish_all {
        for e in &exposed {
            for mut r in config::parse_exposed(e)? {
                r.host_ports = None;
                if !publish
                    .iter()
                    .any(|p| p.container_port == r.container_port && p.proto == r.proto)
                {
                    publish.push(r);
                }
            }
        }
    }
    if network == "host" && !publish.is_empty() {
        eprintln!("WARNING: Published ports are discarded when using host network mode");
        publish.clear();
    }

    let mut mounts: Vec<VolumeMount> = Vec::new();
    let cwd = if opts.volumes.iter().any(|v| v.starts_with('.')) {
        std::env::current_dir().context("finding the working directory for a relative -v path")?
    } else {
        std::path::PathBuf::from("/")
    };
    for v in &opts.volumes {
        let mut m = config::parse_volume(v, &cwd)?;
        if m.anonymous {
            m.source = random_hex(32);
        }
        if mounts.iter().any(|o| o.target == m.target) {
            bail!("duplicate mount point: {}", m.target);
        }
        mounts.push(m);
    }
    let more = opts
        .mounts
        .iter()
        .map(|m| runflags::parse_mount(m, &cwd_for_mounts()?))
        .chain(opts.tmpfs.iter().map(|t| runflags::parse_tmpfs(t)));
    for m in more {
        let mut m = m?;
        if m.anonymous {
            m.source = random_hex(32);
        }
        if mounts.iter().any(|o| o.target == m.target) {
            bail!("duplicate mount point: {}", m.target);
        }
        mounts.push(m);
    }
    for target in ic.volumes().clone().unwrap_or_default() {
        let target = config::normalize_path(&target);
        if !mounts.iter().any(|m| m.target == target) {
            mounts.push(VolumeMount {
                kind: MountType::Volume,
                source: random_hex(32),
                target,
                readonly: false,
                anonymous: true,
            });
        }
    }

    let memory = opts
        .memory
        .as_deref()
        .map(config::parse_memory)
        .transpose()?;
    let stop_signal = match (&opts.stop_signal, ic.stop_signal()) {
        (Some(s), _) => config::parse_signal(s).context("--stop-signal")?,
        (None, Some(s)) => config::parse_signal(s).with_context(|| "the image's STOPSIGNAL")?,
        (None, None) => libc::SIGTERM,
    };
    let labels = runflags::labels(ic.labels().as_ref(), &opts.labels)?;
    // Docker's HEALTHCHECK is not in the OCI config type: read from the config as stored.
    let docker_config: Option<crate::oci::config::ImageConfigFile> = store
        .read_blob(&image.config_digest)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let healthcheck = health::resolve(
        docker_config
            .as_ref()
            .and_then(|c| c.config.healthcheck.as_ref()),
        &opts.health,
    )?;
    let extra_hosts = opts
        .add_hosts
        .iter()
        .map(|h| runflags::parse_add_host(h))
        .collect::<Result<Vec<_>>>()?;
    for u in &opts.ulimits {
        crate::sandbox::ulimit::parse(u).context("--ulimit")?;
    }
    let shm_size = match opts.shm_size.as_deref() {
        None => None,
        Some(s) => {
            let bytes =
                crate::sandbox::parse_memory(s).with_context(|| format!("--shm-size {s:?}"))?;
            if bytes == 0 {
                bail!("--shm-size {s:?}: the size must be more than 0");
            }
            Some(bytes)
        }
    };
    let cpu_quota_us = opts.cpus.as_deref().map(runflags::parse_cpus).transpose()?;
    let memory_swap = opts
        .memory_swap
        .as_deref()
        .map(|s| runflags::parse_memory_swap(s, memory))
        .transpose()?;
    if opts.cpu_shares == Some(0) || opts.cpu_shares.is_some_and(|s| s < 2) {
        bail!("invalid --cpu-shares: the minimum is 2");
    }
    // `no-new-privileges` is kiln's (here), the others `config`'s.
    let (nnp, other_opts): (Vec<String>, Vec<String>) =
        opts.security_opt.iter().cloned().partition(|o| {
            matches!(
                o.as_str(),
                "no-new-privileges" | "no-new-privileges=true" | "no-new-privileges:true"
            )
        });
    let no_new_privileges = !nnp.is_empty();
    let seccomp = config::parse_security_opts(&other_opts, |p| std::fs::read_to_string(p))?;
    let restart = restart::RestartPolicy::parse(&opts.restart).context("--restart")?;
    if opts.rm && restart != restart::RestartPolicy::No {
        bail!("conflicting options: --restart and --rm (a container that restarts is kept)");
    }
    let id = random_hex(32);
    let cfg = ContainerConfig {
        entrypoint,
        cmd,
        env,
        working_dir: opts
            .workdir
            .clone()
            .or_else(|| ic.working_dir().clone())
            .unwrap_or_default(),
        user: opts
            .user
            .clone()
            .or_else(|| ic.user().clone())
            .unwrap_or_default(),
        // Sharing a network namespace shares its hostname too, as docker's.
        hostname: match (&opts.hostname, &shared_net) {
            (Some(h), _) => h.clone(),
            (None, Some(other)) => other.config.hostname.clone(),
            // On the host's network a container is named as the host (docker's daemon does so).
            (None, None) if network == "host" => nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| id[..12].to_string()),
            (None, None) => id[..12].to_string(),
        },
        network: network.to_string(),
        publish,
        mounts,
        memory,
        cpu_shares: opts.cpu_shares,
        cpuset: opts.cpuset.clone(),
        pids_limit: opts.pids_limit.filter(|n| *n > 0).map(|n| n as u64),
        stop_signal,
        auto_remove: opts.rm,
        interactive: opts.interactive,
        tty: opts.tty,
        init: opts.init,
        exposed,
        seccomp,
        restart,
        labels,
        extra_hosts,
        ulimits: opts.ulimits.clone(),
        group_add: opts.group_add.clone(),
        shm_size,
        stop_timeout: opts.stop_timeout,
        healthcheck,
        read_only: opts.read_only,
        cpu_quota_us,
        memory_swap,
        caps: runflags::capabilities(&opts.cap_add, &opts.cap_drop)?,
        no_new_privileges,
        privileged: opts.privileged,
        log: logs::LogLimits::parse(opts.log_driver.as_deref(), &opts.log_opts)?,
    };
    if !cfg.working_dir.is_empty() && !cfg.working_dir.starts_with('/') {
        bail!(
            "the working directory {:?} is not an absolute path",
            cfg.working_dir
        );
    }
    let name = match &opts.name {
        Some(n) => {
            let valid = n.len() >= 2
                && n.as_bytes()[0].is_ascii_alphanumeric()
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
            if !valid {
                bail!("invalid container name {n:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed");
            }
            n.clone()
        }
        None => random_name(),
    };
    let rec = ContainerRecord {
        id: id.clone(),
        name,
        image: opts.image.clone(),
        image_id: image.config_digest.clone(),
        manifest: image.manifest_digest.clone(),
        created_ns: state::now_ns(),
        config: cfg,
        state: "created".into(),
        owner_pid: 0,
        owner_start: 0,
        init_pid: 0,
        exit_code: 0,
        oom_killed: false,
        error: String::new(),
        started_ns: 0,
        finished_ns: 0,
        ports: Vec::new(),
    };
    // The container's directory is made when something goes in it (a log, the monitor's log):
    // `run --rm` in the foreground needs none.
    state::insert(store, &rec)?;
    Ok(rec)
}

/// The working directory, for relative `--mount` bind sources.
fn cwd_for_mounts() -> Result<std::path::PathBuf> {
    std::env::current_dir().context("finding the working directory for a relative --mount source")
}

/// Settles containers whose owner died (kill -9, reboot): marked exited (255, as docker after a
/// crash), and removed when they were started with `--rm`. (Their snapshots and cgroups were
/// already recovered when the command opened the store: `cli::recover_leftovers`.)
fn recover(store: &Store) {
    let orphans: Vec<ContainerRecord> = state::list_unfinished(store)
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.owner_pid > 0 && !r.owner_alive())
        .collect();
    for rec in orphans {
        if rec.config.auto_remove {
            let _ = lifecycle::remove(store, &rec, true);
        } else {
            let _ = state::set_exited(store, &rec.id, 255, false, "the owner process died");
        }
    }
}

/// `kiln create`: the container recorded (state created) for a later `kiln start`; its ID.
pub fn create_only(root: &Path, opts: &RunOptions) -> Result<String> {
    let store = open_store(root)?;
    recover(&store);
    Ok(create(&store, opts)?.id)
}

/// `kiln run`: returns the exit code (the container's, or 125/126/127 as docker).
pub fn run(root: &Path, opts: &RunOptions) -> i32 {
    let store = match open_store(root) {
        Ok(s) => s,
        Err(e) => {
            crate::report::report_error(&e);
            return 125;
        }
    };
    recover(&store);
    let rec = match create(&store, opts) {
        Ok(r) => r,
        Err(e) => {
            crate::report::report_error(&e.context("kiln run"));
            return 125;
        }
    };
    if rec.config.tty && !opts.detach {
        return run_attached_tty(&store, &rec, opts);
    }
    if opts.detach {
        return match spawn_monitor(&store, &rec) {
            Ok(()) => {
                println!("{}", rec.id);
                0
            }
            Err((code, msg)) => {
                eprintln!("kiln: kiln run: {msg}");
                code
            }
        };
    }
    // Rootless: later kilns (exec, stop) join this process's user namespace to reach the
    // container.
    let _hold = crate::rootless::hold_namespace(root);
    let mode = if opts.rm {
        StreamMode::Inherit
    } else {
        StreamMode::Tee
    };
    let started = match lifecycle::start(&store, &rec, mode) {
        Ok(s) => s,
        Err(e) => return start_failed(&store, &rec, e),
    };
    forward_signals_to(started.running.pid());
    match lifecycle::finish(&store, &rec, started) {
        Ok(exit) => {
            restart::hand_over(&store, &rec, exit.code);
            exit.code
        }
        Err(e) => {
            crate::report::report_error(&e.context("kiln run"));
            125
        }
    }
}

/// `kiln run -t` in the foreground: the container runs under a detached monitor, which keeps
/// its terminal, and this process is a client of it (`attach`), so the detach keys can leave it
/// running and the end of this process never takes the container's processes with it.
fn run_attached_tty(store: &Store, rec: &ContainerRecord, opts: &RunOptions) -> i32 {
    let keys = match attach::parse_detach_keys(
        opts.detach_keys
            .as_deref()
            .unwrap_or(attach::DEFAULT_DETACH_KEYS),
    ) {
        Ok(k) => k,
        Err(e) => {
            crate::report::report_error(&e.context("kiln run"));
            let _ = lifecycle::remove(store, rec, true);
            return 125;
        }
    };
    if let Err((code, msg)) = spawn_monitor_with(store, rec, true) {
        eprintln!("kiln: kiln run: {msg}");
        return code;
    }
    let dir = lifecycle::container_dir(store, &rec.id);
    let ended = attach::attach(&dir, opts.interactive, opts.interactive.then_some(keys));
    match ended {
        Ok(attach::Ended::Exited(code)) => code,
        Ok(attach::Ended::Detached) => 0,
        Ok(attach::Ended::Lost) => attach::exit_code_after_loss(store, &rec.id).unwrap_or(125),
        Err(e) => {
            crate::report::report_error(&e.context("kiln run: attaching to the container"));
            125
        }
    }
}

fn start_failed(store: &Store, rec: &ContainerRecord, e: anyhow::Error) -> i32 {
    let code = lifecycle::start_failure_code(&e);
    let msg = format!("{e:#}");
    let e = e.context("kiln run: starting the container");
    crate::report::report_error(&e);
    if rec.config.auto_remove {
        let _ = lifecycle::remove(store, rec, true);
    } else {
        let _ = state::set_exited(store, &rec.id, code, false, &msg);
    }
    code
}

static FORWARD_TO: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward_signal(sig: libc::c_int) {
    let pid = FORWARD_TO.load(Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill(2) is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
}

/// Sends the signals a user sends kiln (Ctrl-C, kill) to the container's init, which passes
/// them to the command; kiln keeps waiting for the container's exit.
fn forward_signals_to(pid: i32) {
    FORWARD_TO.store(pid, Ordering::Relaxed);
    for sig in [
        libc::SIGINT,
        libc::SIGTERM,
        libc::SIGHUP,
        libc::SIGQUIT,
        libc::SIGUSR1,
        libc::SIGUSR2,
    ] {
        // SAFETY: installing a handler that only calls kill(2).
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = forward_signal as extern "C" fn(libc::c_int) as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// Starts the detached monitor and waits until the container runs (or failed to start).
pub(crate) fn spawn_monitor(
    store: &Store,
    rec: &ContainerRecord,
) -> std::result::Result<(), (i32, String)> {
    spawn_monitor_with(store, rec, false)
}

/// `spawn_monitor`; with `attach_now` a client attaches at once (`kiln run -t`): the monitor
/// gets this terminal's size and keeps the first output for the client.
fn spawn_monitor_with(
    store: &Store,
    rec: &ContainerRecord,
    attach_now: bool,
) -> std::result::Result<(), (i32, String)> {
    let fail = |e: anyhow::Error| (125, format!("{e:#}"));
    let dir = lifecycle::container_dir(store, &rec.id);
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("creating {}", dir.display()))
        .map_err(fail)?;
    let monitor_log = std::fs::File::create(dir.join("monitor.log"))
        .context("creating the monitor log")
        .map_err(fail)?;
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(fail(std::io::Error::last_os_error().into()));
    }
    // SAFETY: both descriptors were just created and are owned here.
    let (ready_r, ready_w) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let exe = std::env::current_exe()
        .context("finding the kiln executable")
        .map_err(fail)?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("--root")
        .arg(store.root())
        .arg("container-monitor")
        .arg(&rec.id)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(monitor_log);
    if rec.config.tty && attach_now {
        if let Some(size) = crate::sandbox::tty::size_of(0) {
            cmd.env(
                lifecycle::ENV_TTY_SIZE,
                format!("{}x{}", size.rows, size.cols),
            );
        }
        cmd.env(lifecycle::ENV_ATTACH_BACKLOG, "1");
    }
    let w = ready_w.as_raw_fd();
    // SAFETY: between fork and exec only async-signal-safe calls: setsid, dup2, fcntl.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            libc::setsid();
            if w == 3 {
                libc::fcntl(3, libc::F_SETFD, 0);
            } else if libc::dup2(w, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // The spawned process forks the monitor and exits at once (reaped here); the monitor
    // outlives this command, a child of init.
    let mut child = cmd.spawn().context("starting the monitor").map_err(fail)?;
    let _ = child.wait();
    drop(ready_w);
    let mut report = String::new();
    let _ = std::io::Read::read_to_string(&mut std::fs::File::from(ready_r), &mut report);
    if report.starts_with("ok") {
        return Ok(());
    }
    match report.split_once(' ') {
        Some((code, msg)) => Err((code.parse().unwrap_or(125), msg.trim().to_string())),
        None => {
            let log = std::fs::read_to_string(dir.join("monitor.log")).unwrap_or_default();
            Err((125, format!("the container monitor died: {}", log.trim())))
        }
    }
}

/// The hidden `container-monitor` command: owns a detached container until it ends. fd 3 is
/// the ready pipe to `kiln run -d`.
pub fn monitor(root: &Path, id: &str) -> i32 {
    // The second fork of the classic daemon double fork: `kiln run -d` reaps the first process
    // at once, and this one (already in its own session) is never anyone's child but init's.
    // SAFETY: nothing has started a thread yet; the child only continues as a normal process.
    match unsafe { libc::fork() } {
        0 => {}
        pid if pid > 0 => {
            // SAFETY: leaving the intermediate process without running destructors.
            unsafe { libc::_exit(0) }
        }
        _ => {
            eprintln!("kiln monitor: fork: {}", std::io::Error::last_os_error());
            return 125;
        }
    }
    // SAFETY: fd 3 was set up by `spawn_monitor` for this process.
    let mut ready = unsafe { std::fs::File::from_raw_fd(3) };
    let mut report = |msg: String| {
        let _ = ready.write_all(msg.as_bytes());
    };
    let store = match open_store(root) {
        Ok(s) => s,
        Err(e) => {
            report(format!("125 {e:#}"));
            return 125;
        }
    };
    let rec = match state::get(&store, id) {
        Ok(Some(r)) => r,
        Ok(None) => {
            report(format!("125 no such container: {id}"));
            return 125;
        }
        Err(e) => {
            report(format!("125 {e:#}"));
            return 125;
        }
    };
    // SAFETY: getpid has no preconditions.
    let _ = state::set_owner(&store, id, unsafe { libc::getpid() });
    let _hold = crate::rootless::hold_namespace(root);
    let started = match lifecycle::start(&store, &rec, StreamMode::LogOnly) {
        Ok(s) => s,
        Err(e) => {
            let code = lifecycle::start_failure_code(&e);
            let msg = format!("{e:#}");
            if rec.config.auto_remove {
                let _ = lifecycle::remove(&store, &rec, true);
            } else {
                let _ = state::set_exited(&store, id, code, false, &msg);
            }
            report(format!("{code} {msg}"));
            return code;
        }
    };
    forward_signals_to(started.running.pid());
    report("ok\n".into());
    drop(ready);
    let ran_since = std::time::Instant::now();
    match lifecycle::finish(&store, &rec, started) {
        Ok(exit) => restart::monitor_loop(&store, &rec, exit.code, ran_since.elapsed()),
        Err(e) => {
            eprintln!("kiln monitor: {e:#}");
            125
        }
    }
}

/// `kiln start`: runs an exited (or created) container again, with its writable layer as it
/// left it, under a new detached monitor. A running container is left alone, as docker's.
pub fn start_detached(store: &Store, rec: &ContainerRecord) -> Result<()> {
    recover(store);
    let rec = startable(store, rec)?;
    let Some(rec) = rec else { return Ok(()) };
    restart::set_manually_stopped(store, &rec.id, false)?;
    spawn_monitor(store, &rec).map_err(|(_, msg)| anyhow::anyhow!("{msg}"))
}

/// `kiln start -a`: like `start_detached`, but this process owns the container and streams its
/// output; returns its exit code.
pub fn start_attached(store: &Store, rec: &ContainerRecord, interactive: bool) -> Result<i32> {
    recover(store);
    let Some(mut rec) = startable(store, rec)? else {
        bail!(
            "container {} is already running: use kiln logs -f {} to follow it",
            rec.name,
            rec.name
        );
    };
    restart::set_manually_stopped(store, &rec.id, false)?;
    // `start -a -i`: this run reads kiln's stdin, whatever `run` said.
    rec.config.interactive |= interactive;
    // SAFETY: getpid has no preconditions.
    state::set_owner(store, &rec.id, unsafe { libc::getpid() })?;
    let _hold = crate::rootless::hold_namespace(store.root());
    let started = match lifecycle::start(store, &rec, StreamMode::Tee) {
        Ok(s) => s,
        Err(e) => {
            let code = lifecycle::start_failure_code(&e);
            let _ = state::set_exited(store, &rec.id, code, false, &format!("{e:#}"));
            return Err(e.context(format!("starting container {}", rec.name)));
        }
    };
    forward_signals_to(started.running.pid());
    Ok(lifecycle::finish(store, &rec, started)?.code)
}

/// The fresh record of a container that can be started, `None` when it is running already.
fn startable(store: &Store, rec: &ContainerRecord) -> Result<Option<ContainerRecord>> {
    let rec =
        state::get(store, &rec.id)?.with_context(|| format!("no such container: {}", rec.name))?;
    match rec.status() {
        Status::Running => Ok(None),
        _ if rec.owner_alive() => bail!(
            "container {} is being started or stopped by process {}: try again in a moment",
            rec.name,
            rec.owner_pid
        ),
        _ => Ok(Some(rec)),
    }
}

/// `kiln restart`: stops the container if it runs (stop signal, SIGKILL after `timeout`), then
/// starts it again detached.
pub fn restart(store: &Store, rec: &ContainerRecord, timeout: std::time::Duration) -> Result<()> {
    stop(store, rec, timeout)?;
    start_detached(store, rec)
}

/// Waits until the container is no longer running (or gone); returns the fresh record.
pub fn wait_stopped(
    store: &Store,
    id: &str,
    timeout: Option<std::time::Duration>,
) -> Result<Option<ContainerRecord>> {
    let start = std::time::Instant::now();
    loop {
        let rec = state::get(store, id)?;
        match &rec {
            None => return Ok(None),
            Some(r) if r.status() == Status::Exited && !r.owner_alive() => return Ok(rec),
            Some(r) if r.status() == Status::Created && r.owner_pid == 0 => return Ok(rec),
            _ => {}
        }
        if timeout.is_some_and(|t| start.elapsed() >= t) {
            return Ok(rec);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Sends `signal` to a running container's command (SIGKILL kills the whole container). A
/// paused container is thawed after a SIGKILL, so that it dies (on cgroup v1 a frozen task
/// does not); other signals wait for `unpause`.
pub fn signal(rec: &ContainerRecord, signal: i32) -> Result<()> {
    if rec.status() != Status::Running || rec.init_pid <= 0 {
        bail!("container {} is not running", rec.name);
    }
    // SAFETY: kill(2) on the init of a container whose owner is alive (so it is not reaped).
    if unsafe { libc::kill(rec.init_pid, signal) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("signalling container {}", rec.name));
    }
    if signal == libc::SIGKILL {
        thaw_if_paused(rec)?;
    }
    Ok(())
}

/// docker's health suffix of `ps`'s STATUS for a running container: ` (healthy)`,
/// ` (unhealthy)`, ` (health: starting)`, or nothing without a check.
pub fn health_suffix(store: &Store, rec: &ContainerRecord) -> String {
    if rec.config.healthcheck.is_none() {
        return String::new();
    }
    match health::read(store, &rec.id).ok().flatten() {
        Some((s, _, _)) if s == "starting" => " (health: starting)".into(),
        Some((s, _, _)) => format!(" ({s})"),
        None => String::new(),
    }
}

/// Whether a running container is paused (its cgroup frozen).
pub fn is_paused(rec: &ContainerRecord) -> bool {
    rec.init_pid > 0
        && rec.status() == Status::Running
        && crate::sandbox::cgroup::is_frozen(rec.init_pid)
}

fn thaw_if_paused(rec: &ContainerRecord) -> Result<()> {
    if crate::sandbox::cgroup::is_frozen(rec.init_pid) {
        match crate::sandbox::cgroup::set_frozen(rec.init_pid, false) {
            Ok(()) => {}
            // The signal ended it (a fatal signal can reach a frozen task) and its owner
            // already removed the cgroup: nothing left to thaw. (ENODEV: the kernel is
            // taking that cgroup down as it is written.)
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(libc::ENODEV) => {}
            Err(e) => {
                return Err(e).with_context(|| format!("thawing container {}", rec.name));
            }
        }
    }
    Ok(())
}

/// `kiln pause`: freezes every process of a running container (the cgroup freezer).
pub fn pause(rec: &ContainerRecord) -> Result<()> {
    if rec.status() != Status::Running || rec.init_pid <= 0 {
        bail!("container {} is not running", rec.id);
    }
    if crate::rootless::in_userns() {
        if let Err(why) = crate::rootless::delegation::current() {
            bail!(
                "kiln pause needs the cgroup freezer, which kiln running rootless cannot use: \
                 {why}; stop the container instead, or run kiln as root"
            );
        }
    }
    if is_paused(rec) {
        bail!("container {} is already paused", rec.id);
    }
    crate::sandbox::cgroup::set_frozen(rec.init_pid, true)
        .with_context(|| format!("pausing container {}", rec.name))
}

/// `kiln unpause`: thaws a paused container.
pub fn unpause(rec: &ContainerRecord) -> Result<()> {
    if !is_paused(rec) {
        bail!("container {} is not paused", rec.id);
    }
    crate::sandbox::cgroup::set_frozen(rec.init_pid, false)
        .with_context(|| format!("unpausing container {}", rec.name))
}

/// `kiln stop`: the stop signal, then SIGKILL after `timeout`.
pub fn stop(store: &Store, rec: &ContainerRecord, timeout: std::time::Duration) -> Result<()> {
    // Ends a restart policy's loop, also while its monitor waits out a back-off.
    restart::set_manually_stopped(store, &rec.id, true)?;
    if rec.status() != Status::Running {
        if rec.owner_alive() {
            wait_stopped(store, &rec.id, Some(timeout))?;
        }
        return Ok(());
    }
    signal(rec, rec.config.stop_signal)?;
    // A paused container gets the stop signal when it is thawed: now, as docker's stop.
    thaw_if_paused(rec)?;
    let after = wait_stopped(store, &rec.id, Some(timeout))?;
    if let Some(r) = after {
        if r.owner_alive() && r.status() == Status::Running {
            let _ = signal(&r, libc::SIGKILL);
            wait_stopped(store, &rec.id, Some(std::time::Duration::from_secs(30)))?;
        }
    }
    Ok(())
}

/// `kiln rm`: removes a stopped container (with `force`, kills a running one first).
pub fn rm(store: &Store, rec: &ContainerRecord, force: bool, volumes: bool) -> Result<()> {
    if rec.owner_alive() {
        if !force {
            bail!(
                "cannot remove container {}: it is running: stop it first (kiln stop) or use \
                 kiln rm -f",
                rec.name
            );
        }
        restart::set_manually_stopped(store, &rec.id, true)?;
        if rec.init_pid > 0 {
            // SAFETY: kill(2) on the init of a live container.
            unsafe { libc::kill(rec.init_pid, libc::SIGKILL) };
            thaw_if_paused(rec)?;
        }
        // The owner unmounts and removes the cgroup before it exits.
        let start = std::time::Instant::now();
        while rec.owner_alive() && start.elapsed() < std::time::Duration::from_secs(30) {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
    match state::get(store, &rec.id)? {
        Some(fresh) => lifecycle::remove(store, &fresh, volumes),
        None => Ok(()), // removed by its owner (--rm)
    }
}

/// The IDs of containers (any state) that use the image with this manifest digest: `rmi`
/// refuses to remove it unless forced.
pub fn image_in_use(store: &Store, manifest_digest: &str) -> Result<Vec<String>> {
    store.migrate("runner", state::MIGRATIONS)?;
    state::image_in_use(store, manifest_digest)
}

/// docker-like `inspect` JSON for each name if every name is a container (`Ok(None)` when one
/// is not: the caller then treats the names as images).
pub fn inspect_containers(root: &Path, names: &[String]) -> Result<Option<serde_json::Value>> {
    let store = open_store(root)?;
    let mut out = Vec::new();
    for n in names {
        match state::find(&store, n) {
            Ok(rec) => out.push(inspect_json(&store, &rec)),
            Err(_) => return Ok(None),
        }
    }
    Ok(Some(serde_json::Value::Array(out)))
}

/// docker-like `inspect` JSON of one container by ID, ID prefix or name; `None` when there is
/// no such container (or the root cannot be opened). `kiln inspect` falls back to this.
pub fn inspect_container(root: &Path, spec: &str) -> Option<serde_json::Value> {
    let store = open_store(root).ok()?;
    let rec = state::find(&store, spec).ok()?;
    Some(inspect_json(&store, &rec))
}

fn rfc3339(ns: i64) -> String {
    if ns == 0 {
        return "0001-01-01T00:00:00Z".into();
    }
    chrono::DateTime::from_timestamp(ns / 1_000_000_000, (ns % 1_000_000_000) as u32)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true))
        .unwrap_or_default()
}

/// One container as docker's `inspect` shows it (the fields scripts use).
pub fn inspect_json(store: &Store, rec: &ContainerRecord) -> serde_json::Value {
    use serde_json::json;
    let status = rec.status();
    let c = &rec.config;
    let args = c.args();
    let mut ports = serde_json::Map::new();
    for p in &rec.ports {
        let key = format!("{}/{}", p.container_port, p.proto);
        let entry = ports.entry(key).or_insert_with(|| json!([]));
        if let Some(a) = entry.as_array_mut() {
            a.push(json!({"HostIp": p.host_ip.to_string(), "HostPort": p.host_port.to_string()}));
        }
    }
    let mounts: Vec<serde_json::Value> = c
        .mounts
        .iter()
        .map(|m| match m.kind {
            MountType::Bind => json!({
                "Type": "bind", "Source": m.source, "Destination": m.target,
                "Mode": if m.readonly {"ro"} else {""}, "RW": !m.readonly,
            }),
            MountType::Tmpfs => json!({
                "Type": "tmpfs", "Source": "", "Destination": m.target, "Mode": m.source, "RW": true,
            }),
            MountType::Volume => json!({
                "Type": "volume", "Name": m.source,
                "Source": volumes::data_dir(store.root(), &m.source),
                "Destination": m.target, "Driver": "local",
                "Mode": if m.readonly {"ro"} else {""}, "RW": !m.readonly,
            }),
        })
        .collect();
    let dir = lifecycle::container_dir(store, &rec.id);
    let mut doc = json!({
        "Id": rec.id,
        "Created": rfc3339(rec.created_ns),
        "Path": args.first(),
        "Args": args.get(1..).unwrap_or(&[]),
        "State": {
            "Status": match status { Status::Created => "created", Status::Running if is_paused(rec) => "paused", Status::Running => "running", Status::Exited if rec.owner_alive() && rec.config.restart != crate::runner::restart::RestartPolicy::No => "restarting", Status::Exited => "exited" },
            "Running": status == Status::Running,
            "Paused": status == Status::Running && is_paused(rec),
            "Restarting": status == Status::Exited && rec.owner_alive() && c.restart != restart::RestartPolicy::No,
            "OOMKilled": rec.oom_killed,
            "Dead": false,
            "Pid": if status == Status::Running { rec.init_pid } else { 0 },
            "ExitCode": if status == Status::Exited { rec.shown_exit_code() } else { 0 },
            "Error": rec.error,
            "Health": health::read(store, &rec.id).ok().flatten().filter(|_| c.healthcheck.is_some()).map(|(s, n, log)| json!({"Status": s, "FailingStreak": n, "Log": log})),
            "StartedAt": rfc3339(rec.started_ns),
            "FinishedAt": rfc3339(rec.finished_ns),
            // kiln's: the process that owns the container (foreground kiln or monitor).
            "OwnerPid": if rec.owner_alive() { rec.owner_pid } else { 0 },
        },
        "RestartCount": restart::status(store, &rec.id).map(|s| s.0).unwrap_or(0),
        "Image": rec.image_id,
        "LogPath": logs::log_path(&dir, &rec.id),
        "Name": format!("/{}", rec.name),
        "Config": {
            "Hostname": c.hostname,
            "User": c.user,
            "Env": c.env,
            "Cmd": c.cmd,
            "Entrypoint": c.entrypoint,
            "WorkingDir": c.working_dir,
            "Image": rec.image,
            "ExposedPorts": c.exposed.iter().map(|e| (e.clone(), json!({}))).collect::<serde_json::Map<_,_>>(),
            "StopSignal": c.stop_signal,
            "StopTimeout": c.stop_timeout,
            "Labels": c.labels,
            "OpenStdin": c.interactive,
            "Tty": c.tty,
        },
        "HostConfig": {
            "NetworkMode": c.network,
            "AutoRemove": c.auto_remove,
            "Memory": c.memory.unwrap_or(0),
            "CpuShares": c.cpu_shares.unwrap_or(0),
            "NanoCpus": c.cpu_quota_us.map(|q| q * 10_000).unwrap_or(0),
            "MemorySwap": c.memory_swap.unwrap_or(0),
            "CpusetCpus": c.cpuset.clone().unwrap_or_default(),
            "PidsLimit": c.pids_limit,
            "Init": c.init,
            "ReadonlyRootfs": c.read_only,
            "Privileged": c.privileged,
            "LogConfig": {"Type": "json-file", "Config": c.log.docker_config()},
            "ExtraHosts": c.extra_hosts.iter().map(|(n, ip)| format!("{n}:{ip}")).collect::<Vec<_>>(),
            "GroupAdd": (!c.group_add.is_empty()).then(|| c.group_add.clone()),
            "RestartPolicy": {"Name": c.restart.name(), "MaximumRetryCount": c.restart.max_retries()},
            "PortBindings": c.publish.iter().map(|p| json!({
                "ContainerPort": format!("{}/{}", p.container_port, p.proto),
                "HostIp": p.host_ip.to_string(),
                "HostPort": p.host_ports.map(|(a, b)| if a == b { a.to_string() } else { format!("{a}-{b}") }).unwrap_or_default(),
            })).collect::<Vec<_>>(),
        },
        "Mounts": mounts,
        "NetworkSettings": { "Ports": ports },
    });
    // docker's StopTimeout is omitted unless set (`omitempty`).
    if c.stop_timeout.is_none() {
        if let Some(config) = doc.get_mut("Config").and_then(|v| v.as_object_mut()) {
            config.remove("StopTimeout");
        }
    }
    doc
}
