//! The process tree of one execution:
//!
//! ```text
//! kiln ──fork──> setup (S): joins the cgroup, unshares the namespaces, waits for I
//!                  └─fork──> I (PID 1): builds the filesystem, pivots, opens the terminal;
//!                            without an init it becomes the command (drops privileges, execs);
//!                            with one (`ExecSpec::init`) it reaps and forwards signals and
//!                              └─fork──> command (C): drops privileges, execs
//! ```
//! Forks happen on one long-lived thread (PR_SET_PDEATHSIG fires when the forking *thread*
//! ends), with everything the children need prepared beforehand. Children report setup errors
//! through a close-on-exec pipe, so `spawn` returns only once the command is exec'd or failed.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::{bail, Context};

use super::cgroup::Cgroup;
use super::rootfs::{self, EtcFile, PlannedMount, RootfsPlan};
use super::syscall::LinuxSyscall;
use super::{caps, user, ExecSpec, ExitInfo, MountKind, Network, Stdio};

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Record tags on the report pipes.
const TAG_ERROR: u8 = b'E';
const TAG_INIT_PID: u8 = b'P';
const TAG_COMMAND_STATUS: u8 = b'C';
const TAG_INIT_STATUS: u8 = b'I';

type Job = Box<dyn FnOnce() + Send>;

/// Runs `f` on the process-wide fork thread.
fn on_fork_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> io::Result<T> {
    static SENDER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    let sender = SENDER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("kiln-sandbox-fork".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
            })
            .expect("spawn the sandbox fork thread");
        Mutex::new(tx)
    });
    let (rtx, rrx) = mpsc::sync_channel(1);
    let job: Job = Box::new(move || {
        let _ = rtx.send(f());
    });
    sender
        .lock()
        .map_err(|_| io::Error::other("sandbox fork thread lock poisoned"))?
        .send(job)
        .map_err(|_| io::Error::other("sandbox fork thread is gone"))?;
    rrx.recv()
        .map_err(|_| io::Error::other("sandbox fork thread dropped a job"))
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn cstr(s: &[u8]) -> anyhow::Result<CString> {
    CString::new(s).with_context(|| format!("{:?} contains a NUL byte", String::from_utf8_lossy(s)))
}

/// Everything the three child processes need, prepared before forking.
struct ChildContext {
    parent_pid: i32,
    plan: RootfsPlan,
    unshare_flags: libc::c_int,
    /// A network namespace to join (setns) before unsharing the others.
    join_netns: Option<RawFd>,
    cgroup_procs: Vec<CString>,
    report_fd: RawFd,
    status_fd: RawFd,
    /// Descriptors for 0, 1, 2 (`None` = inherited).
    stdio: [Option<RawFd>; 3],
    args: Vec<CString>,
    env: Vec<CString>,
    search_path: Vec<PathBuf>,
    user: String,
    set_home: bool,
    tty: bool,
    /// Open a terminal in the container (its initial size) and send the master over `pty_sock`.
    pty: Option<Option<super::tty::WinSize>>,
    pty_sock: Option<RawFd>,
    /// Fork the command under an init (else PID 1 execs the command).
    init: bool,
    /// What the init shows as its command line: `kiln-init\0--\0CMD...\0`.
    init_cmdline: Vec<u8>,
    /// The compiled seccomp programs (`None` = unconfined).
    seccomp: Option<Arc<super::seccomp::Filter>>,
    /// `--ulimit`s, set in the command's process while it has every capability.
    ulimits: Vec<super::ulimit::Ulimit>,
    /// `--group-add`, resolved with the container's /etc/group.
    group_add: Vec<String>,
    /// The capabilities a root command keeps.
    caps: u64,
    no_new_privs: bool,
    /// BuildKit's insecure mode: a user other than root keeps `caps` too, as ambient ones.
    ambient_caps: bool,
}

/// A started execution.
pub struct Running {
    setup_pid: i32,
    init_pid: i32,
    status: File,
    cgroup: Option<Cgroup>,
    created: Vec<PathBuf>,
    exit: Option<ExitInfo>,
    cleanup_key: Option<u64>,
    /// The write end of the command's stdin with `Stdio::Piped`.
    pub stdin: Option<File>,
    /// The read end of the command's stdout with `Stdio::Piped`.
    pub stdout: Option<File>,
    /// The read end of the command's stderr with `Stdio::Piped`.
    pub stderr: Option<File>,
    /// The master side of the container's terminal with `ExecSpec::pty`.
    pub pty_master: Option<File>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("init_pid", &self.init_pid)
            .field("exit", &self.exit)
            .finish()
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// Creates missing mount points under the root filesystem; returns the resolved target and
/// records what it created (deepest last) so it can be removed afterwards.
fn mount_point(
    rootfs: &Path,
    target: &Path,
    is_dir: bool,
    created: &mut Vec<PathBuf>,
) -> anyhow::Result<PathBuf> {
    let resolved = rootfs::resolve_in_root(rootfs, target)
        .with_context(|| format!("resolve mount point {}", target.display()))?;
    let mut missing = Vec::new();
    let mut p = resolved.as_path();
    while p != rootfs && std::fs::symlink_metadata(p).is_err() {
        missing.push(p.to_path_buf());
        match p.parent() {
            Some(parent) => p = parent,
            None => break,
        }
    }
    for (i, m) in missing.iter().rev().enumerate() {
        let last = i + 1 == missing.len();
        if last && !is_dir {
            File::create(m).with_context(|| format!("create mount point {}", m.display()))?;
        } else {
            std::fs::create_dir(m)
                .with_context(|| format!("create mount point {}", m.display()))?;
        }
        created.push(m.clone());
    }
    Ok(resolved)
}

/// Removes mount points `mount_point` created, if they are still empty.
fn remove_created(created: &mut Vec<PathBuf>) {
    while let Some(p) = created.pop() {
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => {
                let _ = std::fs::remove_dir(&p);
            }
            Ok(m) if m.len() == 0 => {
                let _ = std::fs::remove_file(&p);
            }
            _ => {}
        }
    }
}

fn hosts_file(spec: &ExecSpec) -> Vec<u8> {
    let mut s = format!("127.0.0.1\tlocalhost {}\n", spec.hostname);
    s.push_str("::1\tlocalhost ip6-localhost ip6-loopback\n");
    for (name, ip) in &spec.extra_hosts {
        s.push_str(&format!("{ip}\t{name}\n"));
    }
    s.into_bytes()
}

pub fn spawn(spec: &ExecSpec) -> anyhow::Result<Running> {
    if spec.args.is_empty() {
        bail!("no command to run: the argument list is empty");
    }
    if !spec.cwd.is_absolute() {
        bail!("working directory {} is not absolute", spec.cwd.display());
    }
    let rootfs = std::fs::canonicalize(&spec.rootfs)
        .with_context(|| format!("root filesystem {}", spec.rootfs.display()))?;
    if !rootfs.is_dir() {
        bail!("root filesystem {} is not a directory", rootfs.display());
    }

    let mut created = Vec::new();
    let result = prepare_and_start(spec, &rootfs, &mut created);
    if result.is_err() {
        remove_created(&mut created);
    }
    result.map(|mut r| {
        r.created = created;
        r
    })
}

fn prepare_and_start(
    spec: &ExecSpec,
    rootfs: &Path,
    created: &mut Vec<PathBuf>,
) -> anyhow::Result<Running> {
    // /proc, /dev and /sys made here stay for a build step (`keep_system_mount_points`: runc
    // makes them too, so a RUN on `scratch` has them in its layer under BuildKit); the other
    // mount points are removed afterwards.
    let mut kept = Vec::new();
    let system = if spec.keep_system_mount_points {
        &mut kept
    } else {
        &mut *created
    };
    let proc_dir = mount_point(rootfs, Path::new("/proc"), true, system)?;
    let dev_dir = mount_point(rootfs, Path::new("/dev"), true, system)?;
    let sys_dir = mount_point(rootfs, Path::new("/sys"), true, system)?;
    mount_point(rootfs, Path::new("/etc"), true, created)?;
    let mut etc_files = vec![EtcFile {
        name: "hosts",
        target: mount_point(rootfs, Path::new("/etc/hosts"), false, created)?,
        content: hosts_file(spec),
    }];
    if spec.etc_hostname {
        etc_files.push(EtcFile {
            name: "hostname",
            target: mount_point(rootfs, Path::new("/etc/hostname"), false, created)?,
            content: format!("{}\n", spec.hostname).into_bytes(),
        });
    }
    if spec.network == Network::Host {
        let content = std::fs::read("/etc/resolv.conf").unwrap_or_default();
        etc_files.push(EtcFile {
            name: "resolv.conf",
            target: mount_point(rootfs, Path::new("/etc/resolv.conf"), false, created)?,
            content,
        });
    }
    let mut mounts = Vec::new();
    for m in &spec.mounts {
        if !m.target.is_absolute() {
            bail!("mount target {} is not absolute", m.target.display());
        }
        let is_dir = match &m.kind {
            MountKind::Bind { source, .. } => std::fs::metadata(source)
                .with_context(|| format!("bind mount source {}", source.display()))?
                .is_dir(),
            MountKind::Tmpfs { .. } => true,
        };
        mounts.push(PlannedMount {
            target: mount_point(rootfs, &m.target, is_dir, created)?,
            kind: m.kind.clone(),
        });
    }
    let mut plan = RootfsPlan {
        rootfs: rootfs.to_path_buf(),
        proc_dir,
        dev_dir,
        sys_dir,
        etc_files,
        mounts,
        hostname: spec.hostname.clone(),
        network: spec.network.clone(),
        cwd: spec.cwd.clone(),
        nodev_binds: true,
        proc_bind_fallback: crate::rootless::in_userns(),
        single_id: crate::rootless::mapping() == crate::rootless::Mapping::Single,
        shm_size: spec.shm_size,
        read_only: spec.read_only_root,
        privileged: spec.privileged.is_some(),
        devices: match spec.privileged {
            Some(which) => super::privileged::nodes(which, Path::new("/dev"))
                .context("list the host's devices for a privileged container")?,
            None => Vec::new(),
        },
        cgroup_views: Vec::new(),
    };

    let id = format!(
        "{}.{}",
        std::process::id(),
        NEXT_ID.fetch_add(1, Ordering::Relaxed)
    );
    if crate::rootless::mapping() == crate::rootless::Mapping::Single {
        // Made here, where /etc/passwd is still the host's (the child reports with it).
        let _ = crate::rootless::single_mapping_hint();
    }
    let devices = match spec.privileged {
        Some(_) => super::privileged::ALL_DEVICES,
        None => super::cgroup::DEFAULT_DEVICES,
    };
    let cgroup =
        Cgroup::create_with_devices(&id, &spec.resources, devices).context("create the cgroup")?;
    plan.nodev_binds = !cgroup.as_ref().is_some_and(Cgroup::restricts_devices);
    plan.cgroup_views = cgroup.as_ref().map(Cgroup::views).unwrap_or_default();
    let started = start(spec, plan, &cgroup);
    match started {
        Ok(mut running) => {
            // If kiln is interrupted, the container dies with it and its cgroup goes.
            let init = running.init_pid;
            let dirs = cgroup
                .as_ref()
                .map(|c| c.dirs().to_vec())
                .unwrap_or_default();
            running.cleanup_key = Some(crate::cleanup::register(move || {
                // SAFETY: kill(2) on the init this execution started.
                unsafe { libc::kill(init, libc::SIGKILL) };
                super::cgroup::remove_dirs(&dirs);
            }));
            running.cgroup = cgroup;
            Ok(running)
        }
        Err(e) => {
            if let Some(cg) = cgroup {
                cg.remove();
            }
            Err(e)
        }
    }
}

fn start(spec: &ExecSpec, plan: RootfsPlan, cgroup: &Option<Cgroup>) -> anyhow::Result<Running> {
    let (report_r, report_w) = pipe()?;
    let (status_r, status_w) = pipe()?;
    let pty_socks = match spec.pty {
        Some(_) => Some(super::tty::socket_pair().context("a socket for the terminal")?),
        None => None,
    };

    // The command's stdio: the child's end of each stream (kept alive until the fork) and the
    // parent's end of pipes.
    let mut child_ends: Vec<OwnedFd> = Vec::new();
    let mut stdio: [Option<RawFd>; 3] = [None; 3];
    let mut parent_ends: [Option<File>; 3] = [None, None, None];
    let mut shared: Vec<Arc<OwnedFd>> = Vec::new();
    for (i, s) in [&spec.stdin, &spec.stdout, &spec.stderr]
        .into_iter()
        .enumerate()
    {
        match s {
            Stdio::Inherit => {}
            Stdio::Null => {
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open("/dev/null")?;
                let fd: OwnedFd = f.into();
                stdio[i] = Some(fd.as_raw_fd());
                child_ends.push(fd);
            }
            Stdio::Piped => {
                let (r, w) = pipe()?;
                let (mine, theirs) = if i == 0 { (w, r) } else { (r, w) };
                stdio[i] = Some(theirs.as_raw_fd());
                child_ends.push(theirs);
                parent_ends[i] = Some(File::from(mine));
            }
            Stdio::Fd(fd) => {
                stdio[i] = Some(fd.as_raw_fd());
                shared.push(fd.clone());
            }
        }
    }

    let mut env: Vec<String> = spec.env.clone();
    let path_value = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH=").map(str::to_string));
    if path_value.is_none() {
        env.push(format!("PATH={DEFAULT_PATH}"));
    }
    let set_home = !env.iter().any(|e| e.starts_with("HOME="));
    let search_path = path_value
        .as_deref()
        .unwrap_or(DEFAULT_PATH)
        .split(':')
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .collect();

    let mut unshare_flags =
        libc::CLONE_NEWNS | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC | libc::CLONE_NEWPID;
    let join_netns = match &spec.network {
        Network::None => {
            unshare_flags |= libc::CLONE_NEWNET;
            None
        }
        Network::Host => None,
        Network::Join(ns) => Some(ns.0.clone()),
    };
    let ctx = ChildContext {
        // SAFETY: getpid has no preconditions.
        parent_pid: unsafe { libc::getpid() },
        plan,
        unshare_flags,
        join_netns: join_netns.as_ref().map(|f| f.as_raw_fd()),
        cgroup_procs: cgroup
            .as_ref()
            .map(|c| c.procs_files())
            .unwrap_or_default()
            .iter()
            .map(|p| cstr(p.as_os_str().as_bytes()))
            .collect::<anyhow::Result<_>>()?,
        report_fd: report_w.as_raw_fd(),
        status_fd: status_w.as_raw_fd(),
        stdio,
        args: spec
            .args
            .iter()
            .map(|a| cstr(a.as_bytes()))
            .collect::<anyhow::Result<_>>()?,
        env: env
            .iter()
            .map(|e| cstr(e.as_bytes()))
            .collect::<anyhow::Result<_>>()?,
        search_path,
        user: spec.user.clone(),
        set_home,
        tty: spec.tty || spec.pty.is_some(),
        pty: spec.pty,
        pty_sock: pty_socks.as_ref().map(|(_, w)| w.as_raw_fd()),
        init: spec.init,
        init_cmdline: {
            let mut b = b"kiln-init\0--\0".to_vec();
            for a in &spec.args {
                b.extend_from_slice(a.as_bytes());
                b.push(0);
            }
            b
        },
        // A privileged command has every capability and no filter (docker's --privileged
        // ignores --cap-drop and --security-opt seccomp=, as here).
        seccomp: match spec.privileged {
            Some(_) => None,
            None => spec
                .seccomp
                .filter_with_caps(spec.caps.unwrap_or_else(caps::default_mask))?,
        },
        ulimits: spec.ulimits.clone(),
        group_add: spec.group_add.clone(),
        caps: spec.effective_caps(),
        no_new_privs: spec.no_new_privileges,
        ambient_caps: spec.privileged == Some(super::HostDevices::BuildKitInsecure),
    };

    let ctx = Arc::new(ctx);
    let child_ctx = ctx.clone();
    let setup_pid = on_fork_thread(move || {
        // SAFETY: fork from the fork thread; glibc's fork resets its allocator locks in the
        // child, which then only makes syscalls and allocations before exec or _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            setup_process(&child_ctx);
        }
        pid
    })?;
    if setup_pid < 0 {
        return Err(io::Error::last_os_error()).context("fork the sandbox setup process");
    }
    drop(report_w);
    drop(status_w);
    drop(child_ends);
    drop(shared);
    drop(join_netns);
    let pty_r = pty_socks.map(|(r, _w)| r);

    // Read the report pipe to its end: it closes when the command is exec'd (close-on-exec) or
    // when every child has given up.
    let mut report = Vec::new();
    let _ = File::from(report_r).read_to_end(&mut report);
    let mut init_pid = 0;
    let mut errors = Vec::new();
    for (tag, payload) in records(&report) {
        match tag {
            TAG_INIT_PID => {
                init_pid = i32::from_ne_bytes(payload.try_into().unwrap_or([0; 4]));
            }
            TAG_ERROR => errors.push(String::from_utf8_lossy(payload).into_owned()),
            _ => {}
        }
    }
    let mut running = Running {
        setup_pid,
        init_pid,
        status: File::from(status_r),
        cgroup: None,
        created: Vec::new(),
        exit: None,
        cleanup_key: None,
        stdin: parent_ends[0].take(),
        stdout: parent_ends[1].take(),
        stderr: parent_ends[2].take(),
        pty_master: None,
    };
    if errors.is_empty() && init_pid != 0 {
        if let Some(sock) = &pty_r {
            // Sent before the command was exec'd, so it is here (or every sender is gone).
            match super::tty::recv_fd(sock) {
                Ok(Some(fd)) => running.pty_master = Some(File::from(fd)),
                Ok(None) => errors.push("the container's terminal was not passed on".into()),
                Err(e) => errors.push(format!("receive the container's terminal: {e}")),
            }
        }
    }
    if !errors.is_empty() || init_pid == 0 {
        let _ = running.reap();
        if errors.is_empty() {
            errors.push("the sandbox setup process died before starting the command".into());
        }
        bail!("sandbox: {}", errors.join("; "));
    }
    Ok(running)
}

fn records(buf: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    let mut rest = buf;
    while rest.len() >= 5 {
        let tag = rest[0];
        let len = u32::from_ne_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        if rest.len() < 5 + len {
            break;
        }
        out.push((tag, &rest[5..5 + len]));
        rest = &rest[5 + len..];
    }
    out
}

/// One record on a pipe, in a single write (atomic below PIPE_BUF).
fn send(fd: RawFd, tag: u8, payload: &[u8]) {
    let payload = &payload[..payload.len().min(3000)];
    let mut msg = Vec::with_capacity(5 + payload.len());
    msg.push(tag);
    msg.extend_from_slice(&(payload.len() as u32).to_ne_bytes());
    msg.extend_from_slice(payload);
    // SAFETY: writing a buffer we own to an fd we hold.
    unsafe { libc::write(fd, msg.as_ptr().cast(), msg.len()) };
}

fn fail(fd: RawFd, what: &str, err: impl std::fmt::Display) -> ! {
    send(fd, TAG_ERROR, format!("{what}: {err}").as_bytes());
    // SAFETY: _exit never returns and runs no destructors or atexit handlers of the parent.
    unsafe { libc::_exit(127) }
}

fn errno() -> io::Error {
    io::Error::last_os_error()
}

fn set_pdeathsig() {
    // SAFETY: prctl with integer arguments.
    unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
}

/// Closes every descriptor except 0, 1, 2 and `keep`, so no other execution's pipe ends linger
/// in this tree.
fn close_other_fds(keep: &[RawFd]) {
    let mut keep: Vec<u32> = keep
        .iter()
        .filter(|&&fd| fd > 2)
        .map(|&fd| fd as u32)
        .collect();
    keep.sort_unstable();
    keep.dedup();
    let mut from = 3u32;
    for k in keep {
        if k > from {
            // SAFETY: close_range on a range of descriptors this process no longer needs.
            unsafe { libc::syscall(libc::SYS_close_range, from, k - 1, 0) };
        }
        from = k + 1;
    }
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_close_range, from, u32::MAX, 0) };
}

fn wait_status(pid: i32) -> i32 {
    let mut status = 0;
    loop {
        // SAFETY: waitpid on our own child with a valid out pointer.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        if rc == pid {
            return status;
        }
        if rc < 0 && errno().raw_os_error() != Some(libc::EINTR) {
            return status;
        }
    }
}

/// The shell convention: the exit code, or 128+n for a death by signal n.
fn exit_code(status: i32) -> i32 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        255
    }
}

/// S: in kiln's namespaces; joins the cgroup, unshares, forks the init and waits for it.
fn setup_process(ctx: &ChildContext) -> ! {
    let report = ctx.report_fd;
    set_pdeathsig();
    // SAFETY: getppid has no preconditions.
    if unsafe { libc::getppid() } != ctx.parent_pid {
        // SAFETY: leaving without running the parent's destructors.
        unsafe { libc::_exit(1) };
    }
    let mut keep = vec![ctx.report_fd, ctx.status_fd];
    keep.extend(ctx.stdio.iter().flatten());
    keep.extend(ctx.join_netns);
    keep.extend(ctx.pty_sock);
    close_other_fds(&keep);
    // The descriptors kept were close-on-exec in kiln; they must survive only until exec, which
    // they do.
    for procs in &ctx.cgroup_procs {
        if !crate::sandbox::cgroup::join_raw(procs) {
            fail(
                report,
                &format!("join cgroup {}", procs.to_string_lossy()),
                errno(),
            );
        }
    }
    if let Some(fd) = ctx.join_netns {
        // SAFETY: setns with a network namespace fd kept open for this process, then closed;
        // this process is single-threaded.
        unsafe {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                fail(report, "join the network namespace (setns)", errno());
            }
            libc::close(fd);
        }
    }
    // SAFETY: unshare with namespace flags; this process is single-threaded.
    if unsafe { libc::unshare(ctx.unshare_flags) } != 0 {
        fail(report, "unshare namespaces", errno());
    }
    // SAFETY: fork in a single-threaded process.
    let init = unsafe { libc::fork() };
    if init < 0 {
        fail(report, "fork the container init", errno());
    }
    if init == 0 {
        init_process(ctx);
    }
    send(report, TAG_INIT_PID, &init.to_ne_bytes());
    // SAFETY: these fds are ours; the init holds its own copies.
    unsafe {
        libc::close(report);
        if let Some(fd) = ctx.pty_sock {
            libc::close(fd);
        }
        for fd in ctx.stdio.iter().flatten() {
            libc::close(*fd);
        }
        // A terminal's Ctrl-C reaches the command directly; this process must outlive it.
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGQUIT, libc::SIG_IGN);
    }
    let status = wait_status(init);
    send(ctx.status_fd, TAG_INIT_STATUS, &status.to_ne_bytes());
    // SAFETY: leaving without running the parent's destructors.
    unsafe { libc::_exit(exit_code(status)) }
}

extern "C" fn forward_marker(_: libc::c_int) {}

/// The prctl_mm_map of <linux/prctl.h> (PR_SET_MM_MAP).
#[repr(C)]
struct MmMap {
    start_code: u64,
    end_code: u64,
    start_data: u64,
    end_data: u64,
    start_brk: u64,
    brk: u64,
    start_stack: u64,
    arg_start: u64,
    arg_end: u64,
    env_start: u64,
    env_end: u64,
    auxv: u64,
    auxv_size: u32,
    exe_fd: u32,
}

const PR_SET_MM_MAP: libc::c_ulong = 14;

/// This process's memory layout from /proc/self/stat (fields 26-28 and 45-47).
fn current_mm_map() -> Option<MmMap> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    // Field 3 is the first after the command name.
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let field = |n: usize| f.get(n - 3).copied();
    // SAFETY: sbrk(0) only reports the current program break.
    let brk = unsafe { libc::sbrk(0) } as u64;
    Some(MmMap {
        start_code: field(26)?,
        end_code: field(27)?,
        start_stack: field(28)?,
        start_data: field(45)?,
        end_data: field(46)?,
        start_brk: field(47)?,
        brk,
        arg_start: field(48)?,
        arg_end: field(49)?,
        env_start: field(50)?,
        env_end: field(51)?,
        auxv: 0,
        auxv_size: 0,
        exe_fd: u32::MAX,
    })
}

/// Shows `cmdline` (NUL-separated) as this process's command line and an empty environment in
/// /proc/self/cmdline and environ, instead of the kiln command line and environment this
/// forked copy of kiln still has in memory. PR_SET_MM_MAP without a new executable needs no
/// capability (CRIU's interface); where the kernel refuses it (no CONFIG_CHECKPOINT_RESTORE)
/// the command line stays kiln's.
fn hide_kiln_command_line(map: Option<MmMap>, cmdline: &[u8]) {
    let Some(mut map) = map else { return };
    // Leaked: it must live as long as the process.
    let buf: &'static mut [u8] = Vec::leak(cmdline.to_vec());
    map.arg_start = buf.as_ptr() as u64;
    map.arg_end = map.arg_start + buf.len() as u64;
    map.env_start = map.arg_end;
    map.env_end = map.arg_end;
    // The heap may have grown since the layout was read.
    // SAFETY: sbrk(0) only reports the current program break.
    map.brk = unsafe { libc::sbrk(0) } as u64;
    // SAFETY: PR_SET_MM_MAP with a valid, fully initialised prctl_mm_map and its size; the
    // areas named stay mapped for the life of the process.
    unsafe {
        libc::prctl(
            libc::PR_SET_MM,
            PR_SET_MM_MAP,
            &map as *const MmMap as libc::c_ulong,
            std::mem::size_of::<MmMap>() as libc::c_ulong,
            0,
        )
    };
}

/// I: PID 1 of the new PID namespace.
fn init_process(ctx: &ChildContext) -> ! {
    let report = ctx.report_fd;
    set_pdeathsig();
    if ctx.init {
        // SAFETY: PR_SET_NAME with a NUL-terminated name of at most 16 bytes.
        unsafe {
            libc::prctl(
                libc::PR_SET_NAME,
                c"kiln-init".as_ptr() as libc::c_ulong,
                0,
                0,
                0,
            )
        };
    }
    // Read while kiln's /proc is still there.
    let mm_map = if ctx.init { current_mm_map() } else { None };
    let sys = LinuxSyscall;
    if let Err(e) = rootfs::setup_and_pivot(&sys, &ctx.plan) {
        fail(report, "set up the container filesystem", e);
    }
    if let Err(e) = rootfs::finish_in_root(&sys, &ctx.plan) {
        fail(report, "set up the container", e);
    }
    let mut stdio = ctx.stdio;
    let mut pty_slave = None;
    if let Some(size) = ctx.pty {
        // The container's /dev/ptmx: a terminal of its own devpts instance.
        let (master, slave) = match super::tty::open_pair(size) {
            Ok(p) => p,
            Err(e) => fail(report, "open a terminal in the container (/dev/ptmx)", e),
        };
        if let Some(sock) = ctx.pty_sock {
            if let Err(e) = super::tty::send_fd(sock, master.as_raw_fd()) {
                fail(report, "pass on the container's terminal", e);
            }
            // SAFETY: our copy of the socket is no longer needed.
            unsafe { libc::close(sock) };
        }
        // Only kiln keeps the master: when it goes, the terminal hangs up.
        drop(master);
        stdio = [Some(slave.as_raw_fd()); 3];
        pty_slave = Some(slave);
    }
    if !ctx.init {
        // No init: this process, PID 1, becomes the command.
        command_process(ctx, stdio);
    }
    hide_kiln_command_line(mm_map, &ctx.init_cmdline);

    // Signals are collected with sigwaitinfo and forwarded. PID 1 only receives signals it has
    // a handler for, so every catchable signal gets a (never run) handler, and all are blocked.
    // SAFETY: sigset manipulation and sigaction with a valid handler.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    unsafe {
        libc::sigfillset(&mut all);
        libc::sigprocmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
        for sig in 1..libc::SIGRTMAX() {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = forward_marker as extern "C" fn(libc::c_int) as usize;
            libc::sigfillset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }

    // SAFETY: fork in a single-threaded process.
    let command = unsafe { libc::fork() };
    if command < 0 {
        fail(report, "fork the command", errno());
    }
    if command == 0 {
        command_process(ctx, stdio);
    }
    drop(pty_slave);
    // SAFETY: our copies of these fds are no longer needed.
    unsafe {
        libc::close(report);
        for fd in ctx.stdio.iter().flatten() {
            libc::close(*fd);
        }
    }
    loop {
        // SAFETY: sigwaitinfo with a filled set and a valid out pointer.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let sig = unsafe { libc::sigwaitinfo(&all, &mut info) };
        if sig < 0 {
            continue;
        }
        if sig == libc::SIGCHLD {
            loop {
                let mut status = 0;
                // SAFETY: reaping any child without blocking.
                let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
                if pid <= 0 {
                    break;
                }
                if pid == command {
                    send(ctx.status_fd, TAG_COMMAND_STATUS, &status.to_ne_bytes());
                    // SAFETY: the command is done; the namespace dies with us.
                    unsafe { libc::_exit(exit_code(status)) };
                }
            }
        } else {
            // SAFETY: forwarding a signal to our child.
            unsafe { libc::kill(command, sig) };
        }
    }
}

fn find_executable(ctx: &ChildContext) -> Result<CString, String> {
    let arg0 = ctx.args[0].as_bytes();
    if arg0.contains(&b'/') {
        return Ok(ctx.args[0].clone());
    }
    let mut last_err = format!(
        "exec {:?}: executable file not found in $PATH",
        String::from_utf8_lossy(arg0)
    );
    for dir in &ctx.search_path {
        let candidate = dir.join(std::ffi::OsStr::from_bytes(arg0));
        let Ok(c) = CString::new(candidate.as_os_str().as_bytes()) else {
            continue;
        };
        // SAFETY: access(2) with a valid path.
        if unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0 {
            match std::fs::metadata(&candidate) {
                Ok(m) if m.is_file() => return Ok(c),
                Ok(_) => {}
                Err(e) => last_err = format!("exec {}: {e}", candidate.display()),
            }
        }
    }
    Err(last_err)
}

/// C: the command (or PID 1 itself without an init). Drops privileges and execs.
fn command_process(ctx: &ChildContext, stdio: [Option<RawFd>; 3]) -> ! {
    let report = ctx.report_fd;
    // SAFETY: getppid has no preconditions.
    let parent = unsafe { libc::getppid() };
    // SAFETY: restoring default dispositions and an empty mask for the command.
    unsafe {
        for sig in 1..libc::SIGRTMAX() {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        libc::close(ctx.status_fd);
    }

    // stdio: move the sources out of the way first so dup2 cannot clobber one with another.
    let mut high = [None; 3];
    for (i, fd) in stdio.iter().enumerate() {
        if let Some(fd) = fd {
            // SAFETY: duplicating an fd we hold.
            let d = unsafe { libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 100) };
            if d < 0 {
                fail(report, "duplicate stdio", errno());
            }
            high[i] = Some(d);
        }
    }
    for (i, fd) in high.iter().enumerate() {
        // SAFETY: dup2 onto 0, 1 or 2 (clears close-on-exec on the new fd).
        if let Some(fd) = fd {
            if unsafe { libc::dup2(*fd, i as i32) } < 0 {
                fail(report, "set up stdio", errno());
            }
        }
    }
    if ctx.tty {
        // SAFETY: new session, then stdin as the controlling terminal.
        unsafe {
            libc::setsid();
            libc::ioctl(0, libc::TIOCSCTTY, 0);
        }
    }

    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
    let mut user = match user::resolve(&ctx.user, &passwd, &group) {
        Ok(u) => u,
        Err(e) => fail(report, "user", e),
    };
    if let Err(e) = user::add_groups(&mut user, &ctx.group_add, &group) {
        fail(report, "user", e);
    }
    let mut env = ctx.env.clone();
    if ctx.set_home {
        if let Ok(c) = CString::new(format!("HOME={}", user.home)) {
            env.push(c);
        }
    }

    // Raising a hard limit needs CAP_SYS_RESOURCE: before the capabilities are cut.
    for u in &ctx.ulimits {
        if let Err(e) = u.apply() {
            fail(report, "set a --ulimit", e);
        }
    }
    if let Err(e) = caps::drop_bounding(ctx.caps) {
        fail(report, "drop capabilities", e);
    }
    // While still root with every capability: without no_new_privs, installing a filter needs
    // CAP_SYS_ADMIN. What follows (setgroups, setuid, capset, chdir, execve) is allowed by
    // Docker's profile.
    if let Some(filter) = &ctx.seccomp {
        if let Err(e) = filter.install() {
            fail(report, "install the seccomp filter", e);
        }
    }
    let gids: Vec<libc::gid_t> = user.additional_gids.clone();
    // SAFETY: setgroups/setgid/setuid with values we computed; each result is checked.
    unsafe {
        // Rootless with one id mapped, setgroups is denied: only root without extra groups
        // can run there (setgid/setuid below refuse other ids, with the hint).
        let single = crate::rootless::mapping() == crate::rootless::Mapping::Single;
        if libc::setgroups(gids.len(), gids.as_ptr()) != 0
            && !(single && gids.iter().all(|g| *g == 0))
        {
            fail(report, "setgroups", errno());
        }
        let hint = |what: String| {
            if single {
                format!("{what} ({})", crate::rootless::single_mapping_hint())
            } else {
                what
            }
        };
        if libc::setgid(user.gid) != 0 {
            let e = errno();
            fail(report, &hint(format!("setgid {}", user.gid)), e);
        }
        // Ambient capabilities for another user start from the permitted set kept across the
        // setuid (the kernel clears it otherwise).
        if ctx.ambient_caps && user.uid != 0 && libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0
        {
            fail(report, "keep capabilities across the user switch", errno());
        }
        if libc::setuid(user.uid) != 0 {
            let e = errno();
            fail(report, &hint(format!("setuid {}", user.uid)), e);
        }
    }
    if ctx.ambient_caps && user.uid != 0 {
        // BuildKit's insecure spec gives every set, ambient included: the command keeps them
        // across its execve as this user.
        if let Err(e) = caps::set_ambient_caps(ctx.caps) {
            fail(report, "set ambient capabilities", e);
        }
    } else {
        let mask = if user.uid == 0 { ctx.caps } else { 0 };
        if let Err(e) = caps::set_process_caps(mask) {
            fail(report, "set capabilities", e);
        }
    }
    // SAFETY: prctl with integer arguments only.
    if ctx.no_new_privs && unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        fail(report, "set no_new_privs", errno());
    }
    // A change of user clears the parent-death signal: set it again, so that the command still
    // dies with its parent (the setup process, or the init).
    set_pdeathsig();
    // SAFETY: getppid has no preconditions.
    if unsafe { libc::getppid() } != parent {
        fail(report, "start the command", "its parent process died");
    }
    if let Err(e) = std::env::set_current_dir(&ctx.plan.cwd) {
        fail(report, &format!("chdir {}", ctx.plan.cwd.display()), e);
    }

    let program = match find_executable(ctx) {
        Ok(p) => p,
        Err(e) => fail(report, "exec", e),
    };
    // Everything above 2 is closed on exec, including the report pipe, which tells kiln the
    // command started.
    // SAFETY: close_range with the CLOEXEC flag only marks descriptors.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    let mut argv: Vec<*const libc::c_char> = ctx.args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());
    // SAFETY: NUL-terminated argv and envp arrays of valid C strings.
    unsafe { libc::execve(program.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    let e = errno();
    if e.raw_os_error() == Some(libc::ENOEXEC) {
        // A binary of another platform: say which, and how to make it run.
        let path = std::path::Path::new(std::ffi::OsStr::from_bytes(program.as_bytes()));
        if let Some(text) = super::binfmt::explain_exec_format_error(path) {
            send(report, TAG_ERROR, text.as_bytes());
            // SAFETY: _exit never returns and runs no destructors of the parent.
            unsafe { libc::_exit(127) }
        }
    }
    fail(report, &format!("exec {:?}", program.to_string_lossy()), e)
}

impl Running {
    /// The host pid of the container's PID 1 (the command, or the init).
    pub fn pid(&self) -> i32 {
        self.init_pid
    }

    /// The container's network namespace, for `setns` (e.g. a port proxy).
    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.init_pid))
    }

    /// Sends `signal` to PID 1: the command itself (the kernel drops a signal it has no
    /// handler for, except SIGKILL), or the init, which forwards it. SIGKILL kills the whole
    /// container.
    pub fn kill(&self, signal: i32) -> io::Result<()> {
        if self.exit.is_some() {
            return Ok(());
        }
        // SAFETY: kill(2) on the init we started and have not reaped.
        if unsafe { libc::kill(self.init_pid, signal) } != 0 {
            return Err(errno());
        }
        Ok(())
    }

    /// Waits for the command to end; removes the cgroup and mount points created for it.
    pub fn wait(&mut self) -> anyhow::Result<ExitInfo> {
        self.reap()
    }

    fn reap(&mut self) -> anyhow::Result<ExitInfo> {
        if let Some(exit) = self.exit {
            return Ok(exit);
        }
        let setup_status = wait_status(self.setup_pid);
        if let Some(key) = self.cleanup_key.take() {
            crate::cleanup::unregister(key);
        }
        let mut buf = Vec::new();
        let _ = self.status.read_to_end(&mut buf);
        let recs = records(&buf);
        let find = |tag| {
            recs.iter()
                .find(|(t, p)| *t == tag && p.len() == 4)
                .map(|(_, p)| i32::from_ne_bytes([p[0], p[1], p[2], p[3]]))
        };
        let status = find(TAG_COMMAND_STATUS).or_else(|| find(TAG_INIT_STATUS));
        let (code, signal) = match status {
            Some(st) if libc::WIFSIGNALED(st) => (exit_code(st), Some(libc::WTERMSIG(st))),
            Some(st) => (exit_code(st), None),
            None => (exit_code(setup_status), None),
        };
        let oom_killed = self
            .cgroup
            .as_ref()
            .map(|c| c.oom_kills() > 0)
            .unwrap_or(false);
        if let Some(cg) = self.cgroup.take() {
            cg.remove();
        }
        remove_created(&mut self.created);
        let exit = ExitInfo {
            code,
            signal,
            oom_killed,
        };
        self.exit = Some(exit);
        Ok(exit)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.exit.is_none() {
            if self.init_pid > 0 {
                // SAFETY: kill(2) on the init we started and have not reaped.
                unsafe { libc::kill(self.init_pid, libc::SIGKILL) };
            }
            let _ = self.reap();
        }
    }
}
