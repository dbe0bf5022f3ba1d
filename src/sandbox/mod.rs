//! sandbox: running one process isolated inside a root filesystem. Used by `build` (RUN steps)
//! and `runner` (`kiln run`).
//!
//! # What a sandboxed process gets
//! - New mount, PID, UTS and IPC namespaces; a new network namespace with only a loopback that
//!   is up (`Network::None`), the host's (`Network::Host`), or one joined by `setns`
//!   (`Network::Join`: another container's).
//! - `pivot_root` into `ExecSpec::rootfs` (typically `snapshot::ActiveSnapshot::merged()`), with
//!   a new procfs on /proc, a tmpfs /dev (null zero full random urandom tty, ptmx + a new devpts,
//!   shm, mqueue, fd/stdin/stdout/stderr links), read-only sysfs on /sys (with the execution's own cgroup read-only at /sys/fs/cgroup, as runc
//!   shows it: v1 a tmpfs of its controllers' directories, v2 its one directory), generated /etc/hosts
//!   and /etc/hostname (and the host's /etc/resolv.conf with `Network::Host`) bound in; the old
//!   root is detached. Mount points that had to be created in the root filesystem (e.g. a
//!   missing /etc/hosts) are removed again when the execution ends, so they never reach a diff.
//! - Docker's masked and read-only /proc paths (`rootfs::MASKED_PATHS`, `READONLY_PATHS`) and
//!   Docker's 14 default capabilities (`caps::DEFAULT_CAPS`, or `ExecSpec::caps`: the seccomp
//!   filter is then compiled for that set); no_new_privs is not set (Docker's default) unless
//!   `ExecSpec::no_new_privileges`.
//! - Docker's default seccomp profile (`seccomp`), or none, or a profile of the user's
//!   (`ExecSpec::seccomp`), compiled before the fork and installed in the command's process
//!   before the user switch; the command and all it starts are filtered (the init is not).
//! - The user (`name`, `uid`, `uid:gid`, `name:group`) resolved in the image's /etc/passwd and
//!   /etc/group with supplementary groups; `HOME` from passwd and a default `PATH` when the
//!   environment has none; the working directory created if missing.
//! - Devices as Docker allows them: the root filesystem and /dev are `nodev`, the host's default
//!   device nodes are bound into /dev, and a device cgroup (v1) or device program (v2) allows
//!   only `cgroup::DEFAULT_DEVICES`. Read-only bind mounts are read-only on every submount.
//! - PID 1 is the command itself (`ExecSpec::init = false`, `kiln run` as docker's), or an init
//!   (a forked copy of the setup process, shown as `kiln-init -- CMD...` with an empty
//!   environment, none of kiln's arguments or variables) that reaps zombies, forwards signals
//!   to the command and exits when the command does (`kiln run --init`, build steps). Killing
//!   kiln kills the whole tree (PR_SET_PDEATHSIG at each level, set again after the user
//!   switch; the PID namespace dies with its PID 1).
//! - With `ExecSpec::pty`, a terminal from the container's own devpts (`tty`).
//! - With `ExecSpec::privileged` (`kiln run --privileged`, `RUN --security=insecure`): none of
//!   the masks, read-only paths, `nodev`, seccomp filter or capability cuts above; every device
//!   allowed, and the device nodes of `privileged::HostDevices` in /dev.
//! - A cgroup per execution for device control, with optional limits (`Resources`), v1 or v2 as
//!   mounted; the cgroup is removed at the end. Rootless (`crate::rootless::in_userns`): no
//!   cgroup, and limits fail with `cgroup::rootless_limits_error`; /proc falls back to the
//!   host's read-only where a new one is refused.
//!
//! # API
//! ```ignore
//! let mut spec = sandbox::ExecSpec::new(snapshot.merged(), ["/bin/sh", "-c", "echo hi"]);
//! spec.stdout = sandbox::Stdio::Piped;
//! let mut running = sandbox::spawn(&spec)?;      // returns once the command is exec'd
//! let out = running.stdout.take();                // read it while it runs
//! let exit = running.wait()?;                     // ExitInfo { code, signal, oom_killed }
//! let exit = sandbox::run(&spec)?;                // spawn + wait (inherit/null/fd stdio)
//! let (exit, out, err) = sandbox::output(&spec)?; // captures stdout and stderr
//! ```
//! `Running::pid()` is the host pid of the container's PID 1 (the command or the init):
//! `/proc/<pid>/ns/net` is the container's network namespace (see `Running::netns_path`). Call
//! `sandbox::recover()` at start-up to remove cgroups a killed kiln left behind.
//!
//! Privileged calls of the filesystem setup go through `syscall::Syscall` (real:
//! `LinuxSyscall`; test: `RecordingSyscall`).

pub mod binfmt;
pub mod caps;
pub mod cgroup;
pub mod cgroup_stats;
pub mod cgroup_update;
pub mod device_filter;
pub mod privileged;
mod process;
pub mod rootfs;
pub mod seccomp;
pub mod syscall;
pub mod tty;
pub mod ulimit;
pub mod user;

use std::fs::File;
use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;

pub use privileged::HostDevices;
pub use process::Running;

/// The container's network.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Network {
    /// Its own network namespace with only the loopback interface, up.
    #[default]
    None,
    /// The host's network namespace.
    Host,
    /// Another process's network namespace (`kiln run --network container:NAME`), joined with
    /// `setns` before the other namespaces are made; its interfaces are left as they are.
    Join(NetnsFd),
}

/// An open network namespace (`/proc/<pid>/ns/net`), shared by the specs that use it.
#[derive(Debug, Clone)]
pub struct NetnsFd(pub Arc<File>);

impl PartialEq for NetnsFd {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for NetnsFd {}

/// What is mounted at an extra mount point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountKind {
    /// A host path (file or directory), bound recursively; `readonly` makes every mount in it
    /// read-only, not just the top one.
    Bind { source: PathBuf, readonly: bool },
    /// A fresh tmpfs.
    Tmpfs { size_bytes: Option<u64>, mode: u32 },
}

/// An extra mount: `target` is an absolute path inside the container (symlinks in it are
/// resolved inside the root filesystem; missing components are created and removed afterwards).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub target: PathBuf,
    pub kind: MountKind,
}

/// cgroup limits; all `None` = no limits (the execution's cgroup then only controls devices).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    pub memory_bytes: Option<u64>,
    /// cgroup v1 shares (converted to a v2 weight on v2).
    pub cpu_shares: Option<u64>,
    /// A cpuset list such as "0" or "0-1".
    pub cpuset: Option<String>,
    pub pids_limit: Option<u64>,
    /// `--cpus`: CPU time per 100 ms period, in microseconds (CFS quota; v2 `cpu.max`).
    pub cpu_quota_us: Option<u64>,
    /// `--memory-swap`: memory plus swap in bytes (`-1`: unlimited swap); with `memory_bytes`.
    /// Without it the memory limit counts swap too (no swap).
    pub memory_swap: Option<i64>,
    /// No freezer or accounting cgroups (v1): for build RUN steps, which nothing pauses or reads
    /// stats of. Each v1 cgroup an execution joins costs a `cgroup.procs` write, the slowest
    /// part of starting a short command.
    pub unobserved: bool,
}

impl Resources {
    pub fn is_empty(&self) -> bool {
        self.memory_bytes.is_none()
            && self.cpu_shares.is_none()
            && self.cpuset.is_none()
            && self.pids_limit.is_none()
            && self.cpu_quota_us.is_none()
            && self.memory_swap.is_none()
    }
}

/// Parses docker's memory sizes: `256m`, `1g`, `512k`, `100b`, `1048576`.
pub fn parse_memory(s: &str) -> anyhow::Result<u64> {
    let lower = s.trim().to_ascii_lowercase();
    let lower = lower.strip_suffix('b').unwrap_or(&lower).to_string();
    let (digits, mult) = match lower.chars().last() {
        Some('k') => (&lower[..lower.len() - 1], 1u64 << 10),
        Some('m') => (&lower[..lower.len() - 1], 1 << 20),
        Some('g') => (&lower[..lower.len() - 1], 1 << 30),
        Some('t') => (&lower[..lower.len() - 1], 1 << 40),
        _ => (lower.as_str(), 1),
    };
    let n: f64 = digits
        .parse()
        .ok()
        .filter(|n: &f64| n.is_finite() && *n > 0.0)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "invalid memory size {s:?}: expected a number with an optional b, k, m or g"
            )
        })?;
    let bytes = (n * mult as f64) as u64;
    if bytes < 6 << 20 {
        anyhow::bail!("invalid memory size {s:?}: the minimum memory limit is 6m, as docker's");
    }
    Ok(bytes)
}

/// Where one of the command's standard streams goes.
#[derive(Debug, Clone, Default)]
pub enum Stdio {
    /// kiln's own stream.
    #[default]
    Inherit,
    /// /dev/null.
    Null,
    /// A pipe; the other end is in `Running::stdin`/`stdout`/`stderr`.
    Piped,
    /// This descriptor (a file, a socket, a pty's slave end).
    Fd(Arc<OwnedFd>),
}

/// One execution.
#[derive(Debug, Clone)]
pub struct ExecSpec {
    /// The root filesystem (host path), e.g. an active snapshot's merged directory.
    pub rootfs: PathBuf,
    /// argv; `args[0]` without a `/` is looked up in the `PATH` of `env` inside the container.
    pub args: Vec<String>,
    /// `KEY=VALUE` entries. `PATH` and `HOME` get defaults when missing.
    pub env: Vec<String>,
    /// Working directory inside the container (created if missing).
    pub cwd: PathBuf,
    /// `""` (root), `name`, `uid`, `uid:gid`, `name:group`.
    pub user: String,
    pub hostname: String,
    /// Extra /etc/hosts lines (`--add-host name:ip`).
    pub extra_hosts: Vec<(String, IpAddr)>,
    pub network: Network,
    pub mounts: Vec<Mount>,
    pub resources: Resources,
    pub stdin: Stdio,
    pub stdout: Stdio,
    pub stderr: Stdio,
    /// The command's stdin is a terminal: it gets a new session with stdin as its controlling
    /// terminal (a pty slave passed as `Stdio::Fd`; `pty` makes one in the container instead).
    pub tty: bool,
    /// A terminal from the container's own devpts instance, opened after the pivot with this
    /// initial size (`None`: no terminal): the command's stdin, stdout, stderr and controlling
    /// terminal (the `Stdio` fields are then ignored); the master side is `Running::pty_master`.
    pub pty: Option<Option<tty::WinSize>>,
    /// An init as PID 1 that forks the command, reaps zombies and forwards signals (`kiln run
    /// --init`, and build steps); without it the command itself is PID 1, as in docker.
    pub init: bool,
    /// The system call filter: Docker's default profile unless told otherwise (`kiln run
    /// --security-opt seccomp=...`); none when `privileged`.
    pub seccomp: seccomp::Seccomp,
    /// Bind a generated /etc/hostname (containers: yes, as docker run; build steps: no, as
    /// BuildKit's RUN, which has none).
    pub etc_hostname: bool,
    /// Keep the /proc, /dev and /sys directories made for the mounts when the root filesystem
    /// lacked them (build steps: yes, as runc under BuildKit leaves them in the layer; containers:
    /// no, as docker's init layer keeps them out of the container's changes).
    pub keep_system_mount_points: bool,
    /// `--ulimit`: resource limits set in the command's process before exec.
    pub ulimits: Vec<ulimit::Ulimit>,
    /// `--group-add`: supplementary groups (names from the image's /etc/group, or numbers).
    pub group_add: Vec<String>,
    /// `--shm-size`: the bytes of /dev/shm's tmpfs (docker's default: 64 MiB).
    pub shm_size: u64,
    /// Mount the root filesystem read-only (`--read-only`).
    pub read_only_root: bool,
    /// The capabilities a root command keeps (`--cap-add`/`--cap-drop`); None: Docker's
    /// default set (`caps::DEFAULT_CAPS`).
    pub caps: Option<u64>,
    /// Set no_new_privs before the exec (`--security-opt no-new-privileges`).
    pub no_new_privileges: bool,
    /// A privileged execution (`kiln run --privileged`, `RUN --security=insecure`) and the
    /// device nodes its /dev gets: every capability (`caps` is ignored), no seccomp filter
    /// (`seccomp` is ignored), no masked or read-only paths, a writable /sys, every device
    /// allowed (`privileged`). `None`: the default sandbox.
    pub privileged: Option<HostDevices>,
}

/// docker's default size of /dev/shm.
pub const DEFAULT_SHM_SIZE: u64 = 64 << 20;

impl ExecSpec {
    /// A spec with Docker-like defaults: root, cwd `/`, hostname `kiln`, no network, stdio
    /// inherited, no limits.
    pub fn new<I, S>(rootfs: impl Into<PathBuf>, args: I) -> ExecSpec
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ExecSpec {
            rootfs: rootfs.into(),
            args: args.into_iter().map(Into::into).collect(),
            env: Vec::new(),
            cwd: PathBuf::from("/"),
            user: String::new(),
            hostname: "kiln".to_string(),
            extra_hosts: Vec::new(),
            network: Network::None,
            mounts: Vec::new(),
            resources: Resources::default(),
            stdin: Stdio::Inherit,
            stdout: Stdio::Inherit,
            stderr: Stdio::Inherit,
            tty: false,
            pty: None,
            init: true,
            seccomp: seccomp::Seccomp::Default,
            etc_hostname: true,
            keep_system_mount_points: false,
            ulimits: Vec::new(),
            group_add: Vec::new(),
            shm_size: DEFAULT_SHM_SIZE,
            read_only_root: false,
            caps: None,
            no_new_privileges: false,
            privileged: None,
        }
    }

    /// The capabilities a root command gets: all that kiln holds with `privileged`, else
    /// `caps` or Docker's default set.
    pub fn effective_caps(&self) -> u64 {
        match self.privileged {
            Some(_) => caps::all_held(),
            None => self.caps.unwrap_or_else(caps::default_mask),
        }
    }
}

/// How the command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    /// The exit code, or 128+n for a death by signal n.
    pub code: i32,
    /// The signal that killed the command, if one did.
    pub signal: Option<i32>,
    /// The cgroup's OOM killer killed a process of this execution (a memory limit was set).
    pub oom_killed: bool,
}

impl ExitInfo {
    pub fn success(&self) -> bool {
        self.code == 0
    }
}

/// Starts the command and returns once it has been exec'd (setup and exec failures are errors
/// here, with the reason, e.g. `exec "foo": No such file or directory`).
pub fn spawn(spec: &ExecSpec) -> anyhow::Result<Running> {
    process::spawn(spec)
}

/// Runs the command to its end. With `Stdio::Piped` use `output` or `spawn` instead (nothing
/// would read the pipes).
pub fn run(spec: &ExecSpec) -> anyhow::Result<ExitInfo> {
    spawn(spec)?.wait()
}

/// Runs the command with stdout and stderr captured (stdin as in `spec`).
pub fn output(spec: &ExecSpec) -> anyhow::Result<(ExitInfo, Vec<u8>, Vec<u8>)> {
    let mut spec = spec.clone();
    spec.stdout = Stdio::Piped;
    spec.stderr = Stdio::Piped;
    let mut running = spawn(&spec)?;
    let out = running.stdout.take();
    let err = running.stderr.take();
    let read_all = |f: Option<File>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut f) = f {
                let _ = std::io::Read::read_to_end(&mut f, &mut buf);
            }
            buf
        })
    };
    let (t_out, t_err) = (read_all(out), read_all(err));
    let exit = running.wait()?;
    let out = t_out.join().unwrap_or_default();
    let err = t_err.join().unwrap_or_default();
    Ok((exit, out, err))
}

/// Removes what a killed kiln left behind: cgroups under `kiln/` whose owner is gone.
pub fn recover() {
    cgroup::recover();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn privileged_specs_get_every_held_capability_over_cap_drop() {
        let mut spec = ExecSpec::new("/r", ["true"]);
        assert_eq!(spec.effective_caps(), caps::default_mask());
        spec.caps = Some(0);
        assert_eq!(spec.effective_caps(), 0);
        spec.privileged = Some(HostDevices::All);
        assert_eq!(spec.effective_caps(), caps::all_held());
        assert_eq!(
            spec.effective_caps() & caps::default_mask(),
            caps::default_mask()
        );
    }
}
