//! `kiln exec`: a new process in a running container. It joins the container's cgroups and its
//! IPC, UTS, network, PID and mount namespaces, takes the container's root as its root, then
//! drops to the user and capabilities a container process gets, installs the container's
//! seccomp filter, and execs.
//!
//! ```text
//! kiln ──fork──> joiner (J): joins cgroups + namespaces (setns(PID) applies to children only),
//!                  │         with -t opens a pty of the container's devpts and passes kiln the
//!                  │         master (SCM_RIGHTS)
//!                  └─fork──> command (C): a new session (with -t the pty as its controlling
//!                            terminal), user, capabilities, cwd, exec
//! ```
//!
//! kiln keeps the only copy of the master: when kiln exec ends or is killed, the terminal hangs
//! up (SIGHUP to the session, as a real terminal's hangup). The joiner's parent-death signal
//! is SIGHUP too: it then sends SIGHUP to every process of the command's session, and SIGKILL
//! to those still there a moment later, so nothing the exec started is left behind unmanaged
//! (a process that made a session of its own has detached itself, as under a terminal).

use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::config;
use super::state::{ContainerRecord, Status};
use crate::sandbox::{caps, cgroup, tty, user};

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// `kiln exec` options.
#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    /// `--privileged`: the command gets every capability (the container's seccomp filter
    /// stays, as docker's exec does).
    pub privileged: bool,
    pub interactive: bool,
    pub tty: bool,
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
}

/// The cgroup.procs files of the process `pid` for the controllers the sandbox uses.
fn cgroup_procs_of(pid: i32) -> Vec<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    let mut out = Vec::new();
    for line in text.lines() {
        let mut f = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if !path.starts_with("/kiln/") {
            continue;
        }
        let rel = path.trim_start_matches('/');
        match cgroup::detect() {
            cgroup::CgroupVersion::V2 if controllers.is_empty() => {
                out.push(Path::new("/sys/fs/cgroup").join(rel).join("cgroup.procs"));
            }
            cgroup::CgroupVersion::V1 => {
                for c in cgroup::V1_CONTROLLERS {
                    if controllers.split(',').any(|x| x == *c) {
                        out.push(
                            Path::new("/sys/fs/cgroup")
                                .join(c)
                                .join(rel)
                                .join("cgroup.procs"),
                        );
                    }
                }
            }
            _ => {}
        }
    }
    out
}

fn cstring(s: impl AsRef<[u8]>) -> Result<CString> {
    CString::new(s.as_ref()).context("an argument contains a NUL byte")
}

/// Runs `cmd` in the running container `rec`; returns its exit code (126/127 for exec
/// failures, 128+n for a signal).
pub fn exec(rec: &ContainerRecord, opts: &ExecOptions, cmd: &[String]) -> Result<i32> {
    if rec.status() != Status::Running || rec.init_pid <= 0 {
        bail!(
            "container {} is not running: start a new one with kiln run",
            rec.short_id()
        );
    }
    if cmd.is_empty() {
        bail!("no command given: kiln exec CONTAINER COMMAND [ARG...]");
    }
    let pid = rec.init_pid;
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let open = |p: &str| -> Result<File> {
        File::open(proc_dir.join(p)).with_context(|| {
            format!(
                "opening {}/{p} of container {}",
                proc_dir.display(),
                rec.short_id()
            )
        })
    };
    let mut namespaces = Vec::new();
    for (name, flag) in [
        ("ns/ipc", libc::CLONE_NEWIPC),
        ("ns/uts", libc::CLONE_NEWUTS),
        ("ns/net", libc::CLONE_NEWNET),
        ("ns/pid", libc::CLONE_NEWPID),
        ("ns/mnt", libc::CLONE_NEWNS),
    ] {
        namespaces.push((open(name)?, flag));
    }
    let root = open("root")?;
    let passwd = std::fs::read_to_string(proc_dir.join("root/etc/passwd")).unwrap_or_default();
    let group = std::fs::read_to_string(proc_dir.join("root/etc/group")).unwrap_or_default();
    let user_spec = opts.user.clone().unwrap_or_else(|| rec.config.user.clone());
    let mut user = user::resolve(&user_spec, &passwd, &group)
        .map_err(|e| anyhow::anyhow!("exec: user {user_spec:?}: {e}"))?;
    // docker's exec gets the container's --group-add groups too.
    user::add_groups(&mut user, &rec.config.group_add, &group)
        .map_err(|e| anyhow::anyhow!("exec: --group-add: {e}"))?;

    let mut env = rec.config.env.clone();
    for e in &opts.env {
        config::apply_env_flag(&mut env, e, |k| std::env::var(k).ok())?;
    }
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push(format!("PATH={DEFAULT_PATH}"));
    }
    config::add_hostname_env(&mut env, &rec.config.hostname);
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", user.home));
    }
    let search: Vec<CString> = if cmd[0].contains('/') {
        vec![cstring(&cmd[0])?]
    } else {
        let path = env
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or(DEFAULT_PATH);
        path.split(':')
            .filter(|d| !d.is_empty())
            .map(|d| cstring(format!("{d}/{}", cmd[0])))
            .collect::<Result<_>>()?
    };
    let cwd = cstring(
        opts.workdir
            .clone()
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| {
                if rec.config.working_dir.is_empty() {
                    "/".into()
                } else {
                    rec.config.working_dir.clone()
                }
            }),
    )?;
    let argv: Vec<CString> = cmd.iter().map(cstring).collect::<Result<_>>()?;
    let envp: Vec<CString> = env.iter().map(cstring).collect::<Result<_>>()?;
    let mut envp_extra_term = false;
    let procs: Vec<CString> = cgroup_procs_of(pid)
        .iter()
        .map(|p| cstring(p.as_os_str().as_bytes()))
        .collect::<Result<_>>()?;
    // A privileged container has no filter; a privileged exec into another keeps the
    // container's (docker's exec --privileged: every capability, seccomp unchanged).
    let seccomp = if rec.config.privileged {
        None
    } else {
        rec.config
            .seccomp
            .to_sandbox()
            .and_then(|s| s.filter_with_caps(rec.config.caps_mask()))
            .context("exec: the container's seccomp filter")?
    };
    let exec_caps = if opts.privileged {
        caps::all_held()
    } else {
        rec.config.caps_mask()
    };
    let null = if opts.interactive {
        None
    } else {
        Some(File::open("/dev/null")?)
    };

    if opts.tty && !env.iter().any(|e| e.starts_with("TERM=")) {
        envp_extra_term = true;
    }
    let mut envp: Vec<CString> = envp;
    if envp_extra_term {
        envp.push(cstring("TERM=xterm")?);
    }
    let (pty_r, pty_w) = if opts.tty {
        let (r, w) = tty::socket_pair().context("exec: a socket for the terminal")?;
        (Some(r), Some(w))
    } else {
        (None, None)
    };
    let host_proc = File::open("/proc").context("exec: opening /proc")?;
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the array with two new descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("exec: pipe");
    }
    // SAFETY: both were just created and are owned only here.
    let (report_r, report_w) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let child = Child {
        namespaces: namespaces
            .iter()
            .map(|(f, fl)| (f.as_raw_fd(), *fl))
            .collect(),
        root: root.as_raw_fd(),
        procs,
        report: report_w.as_raw_fd(),
        stdin: null.as_ref().map(|f| f.as_raw_fd()),
        tty: opts.tty,
        pty_sock: pty_w.as_ref().map(|f| f.as_raw_fd()),
        pty_size: tty::size_of(0),
        host_proc: host_proc.as_raw_fd(),
        // SAFETY: getpid has no preconditions.
        parent: unsafe { libc::getpid() },
        user,
        cwd,
        search,
        argv,
        envp,
        seccomp,
        caps: exec_caps,
        no_new_privs: rec.config.no_new_privileges,
    };
    // SAFETY: kiln exec is single-threaded here; the child only makes syscalls and small
    // allocations before exec or _exit.
    let joiner = unsafe { libc::fork() };
    if joiner < 0 {
        return Err(std::io::Error::last_os_error()).context("exec: fork");
    }
    if joiner == 0 {
        child.joiner();
    }
    drop(report_w);
    drop(pty_w);
    let master = match &pty_r {
        // Sent before the command is forked, so before the report pipe closes.
        Some(sock) => tty::recv_fd(sock)
            .context("exec: receiving the container's terminal")?
            .map(File::from),
        None => None,
    };
    let mut report = Vec::new();
    let _ = File::from(report_r).read_to_end(&mut report);
    if let (Some(master), true) = (master, report.is_empty()) {
        return relay_tty(joiner, master, opts.interactive);
    }
    let status = wait_joiner(joiner);
    if !report.is_empty() {
        let msg = String::from_utf8_lossy(&report[1..]).into_owned();
        let code = report[0] as i32;
        eprintln!("kiln: exec: {msg}");
        return Ok(code);
    }
    Ok(status_code(status))
}

static PARENT_DIED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_parent_death(_: libc::c_int) {
    PARENT_DIED.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// The host pids of the processes whose session is `sid`, read through the host's /proc
/// (`proc_fd`, opened before the joiner entered the container's root).
fn session_members(proc_fd: RawFd, sid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    // SAFETY: dup of a descriptor we hold, for the directory stream to own.
    let fd = unsafe { libc::fcntl(proc_fd, libc::F_DUPFD_CLOEXEC, 3) };
    if fd < 0 {
        return out;
    }
    let Ok(mut dir) = nix::dir::Dir::from_fd(fd) else {
        return out;
    };
    for entry in dir.iter().flatten() {
        let name = entry.file_name().to_bytes();
        let Some(pid) = std::str::from_utf8(name)
            .ok()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(path) = CString::new(format!("{pid}/stat")) else {
            continue;
        };
        // SAFETY: openat relative to the /proc descriptor with a NUL-terminated path.
        let f = unsafe { libc::openat(proc_fd, path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if f < 0 {
            continue;
        }
        // SAFETY: f was just opened and is owned here.
        let mut file = unsafe { File::from_raw_fd(f) };
        let mut stat = String::new();
        if file.read_to_string(&mut stat).is_err() {
            continue;
        }
        // Fields after the command name: state ppid pgrp session ...; zombies are done.
        let fields: Vec<&str> = match stat.rfind(')') {
            Some(i) => stat[i + 1..].split_whitespace().take(4).collect(),
            None => continue,
        };
        if fields.len() == 4 && fields[0] != "Z" && fields[3].parse::<i32>().ok() == Some(sid) {
            out.push(pid);
        }
    }
    out
}

fn wait_joiner(joiner: i32) -> i32 {
    let mut status = 0;
    // SAFETY: waiting for our own child with a valid pointer.
    while unsafe { libc::waitpid(joiner, &mut status, 0) } < 0 {
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            break;
        }
    }
    status
}

fn status_code(status: i32) -> i32 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        125
    }
}

struct MasterSink(File);

impl super::attach::Sink for MasterSink {
    fn input(&mut self, data: &[u8]) -> std::io::Result<()> {
        std::io::Write::write_all(&mut self.0, data)
    }
    fn resize(&mut self, size: tty::WinSize) -> std::io::Result<()> {
        tty::set_size(self.0.as_raw_fd(), size)
    }
}

/// `exec -t`: kiln's terminal relayed to the container's pty until the command ends; its exit
/// code (a joiner's report of a failed exec comes through the terminal's output).
fn relay_tty(joiner: i32, master: File, stdin_open: bool) -> Result<i32> {
    let mut reader = master.try_clone().context("exec: the terminal")?;
    let output = move || {
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            let mut stdout = std::io::stdout();
            let mut buf = [0u8; 8192];
            // EIO once no process has the terminal open any more.
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0
                    || std::io::Write::write_all(&mut stdout, &buf[..n])
                        .and_then(|_| std::io::Write::flush(&mut stdout))
                        .is_err()
                {
                    break;
                }
            }
            let _ = done_tx.send(());
        });
        let code = status_code(wait_joiner(joiner));
        // What the command wrote last is still to be copied; a background process that keeps
        // the terminal open does not hold kiln exec.
        let _ = done_rx.recv_timeout(std::time::Duration::from_millis(500));
        super::attach::Ended::Exited(code)
    };
    match super::attach::relay(MasterSink(master), output, stdin_open, None)? {
        super::attach::Ended::Exited(code) => Ok(code),
        _ => Ok(125),
    }
}

/// What the forked processes need, prepared before the fork.
struct Child {
    namespaces: Vec<(RawFd, libc::c_int)>,
    root: RawFd,
    procs: Vec<CString>,
    report: RawFd,
    stdin: Option<RawFd>,
    tty: bool,
    /// With -t: where the joiner sends the master of the pty it opens in the container.
    pty_sock: Option<RawFd>,
    pty_size: Option<tty::WinSize>,
    /// The host's /proc, opened before joining (to find the session's processes).
    host_proc: RawFd,
    /// kiln exec's pid (the joiner's parent).
    parent: i32,
    user: user::User,
    cwd: CString,
    search: Vec<CString>,
    argv: Vec<CString>,
    envp: Vec<CString>,
    seccomp: Option<std::sync::Arc<crate::sandbox::seccomp::Filter>>,
    /// The container's capabilities (root keeps them) and no_new_privs.
    caps: u64,
    no_new_privs: bool,
}

impl Child {
    fn fail(&self, code: u8, what: &str) -> ! {
        let err = std::io::Error::last_os_error();
        let msg = format!("{}{what}: {err}", code as char);
        // SAFETY: writing our buffer to the report pipe, then leaving without destructors.
        unsafe {
            libc::write(self.report, msg.as_ptr().cast(), msg.len());
            libc::_exit(code as i32)
        }
    }

    fn fail_msg(&self, code: u8, msg: &str) -> ! {
        let msg = format!("{}{msg}", code as char);
        // SAFETY: as in `fail`.
        unsafe {
            libc::write(self.report, msg.as_ptr().cast(), msg.len());
            libc::_exit(code as i32)
        }
    }

    /// J: joins the container, forks the command, passes its status on.
    fn joiner(&self) -> ! {
        // SAFETY: prctl with integer arguments; a handler that only sets a flag.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_parent_death as extern "C" fn(libc::c_int) as usize;
            libc::sigaction(libc::SIGHUP, &sa, std::ptr::null_mut());
            libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGHUP as libc::c_ulong,
                0,
                0,
                0,
            );
            if libc::getppid() != self.parent {
                libc::_exit(125);
            }
        }
        for procs in &self.procs {
            if !crate::sandbox::cgroup::join_raw(procs) {
                self.fail(125, &format!("join cgroup {}", procs.to_string_lossy()));
            }
        }
        for (fd, flag) in &self.namespaces {
            // SAFETY: setns with a namespace fd we hold; this process is single-threaded.
            if unsafe { libc::setns(*fd, *flag) } != 0 {
                self.fail(125, "join the container's namespaces");
            }
        }
        // SAFETY: fchdir to the container's root (an fd opened before joining), then chroot.
        unsafe {
            if libc::fchdir(self.root) != 0 || libc::chroot(c".".as_ptr()) != 0 {
                self.fail(125, "enter the container's root");
            }
        }
        // With -t: a terminal of the container's own devpts (its /dev/ptmx, now our root's).
        let mut slave = None;
        if let Some(sock) = self.pty_sock {
            let (master, s) = match tty::open_pair(self.pty_size) {
                Ok(p) => p,
                Err(e) => self.fail_msg(125, &format!("open a terminal in the container: {e}")),
            };
            if let Err(e) = tty::send_fd(sock, master.as_raw_fd()) {
                self.fail_msg(125, &format!("pass on the container's terminal: {e}"));
            }
            // SAFETY: our copy of the socket is no longer needed.
            unsafe { libc::close(sock) };
            drop(master);
            slave = Some(s);
        }
        // SAFETY: fork in a single-threaded process; the child is in the container's PID ns.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            self.fail(125, "fork in the container");
        }
        if pid == 0 {
            self.command(slave.as_ref().map(|s| s.as_raw_fd()));
        }
        drop(slave);
        // SAFETY: our copy of the report pipe is no longer needed; terminal signals are the
        // command's business.
        unsafe {
            libc::close(self.report);
            libc::signal(libc::SIGINT, libc::SIG_IGN);
            libc::signal(libc::SIGQUIT, libc::SIG_IGN);
        }
        let mut status = 0;
        loop {
            if PARENT_DIED.load(std::sync::atomic::Ordering::Relaxed) {
                self.end_session(pid);
            }
            // SAFETY: waiting for our child.
            if unsafe { libc::waitpid(pid, &mut status, 0) } == pid {
                break;
            }
            if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                break;
            }
        }
        // kiln exec's death hangs the terminal up, which may end the command before the
        // parent-death signal is seen: what is left of its session goes too.
        // SAFETY: getppid has no preconditions.
        if PARENT_DIED.load(std::sync::atomic::Ordering::Relaxed)
            || unsafe { libc::getppid() } != self.parent
        {
            self.end_session(pid);
        }
        let code = if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else if libc::WIFSIGNALED(status) {
            128 + libc::WTERMSIG(status)
        } else {
            125
        };
        // SAFETY: leaving without running kiln's destructors.
        unsafe { libc::_exit(code) }
    }

    /// kiln exec died: SIGHUP to every process of the command's session (`sid`), SIGKILL to
    /// what is left of it two seconds later; then the joiner leaves.
    fn end_session(&self, sid: i32) -> ! {
        for sig in [libc::SIGHUP, libc::SIGKILL] {
            for _ in 0..200 {
                let members = session_members(self.host_proc, sid);
                if members.is_empty() {
                    break;
                }
                for p in &members {
                    // SAFETY: kill(2) on processes of the session this exec started.
                    unsafe { libc::kill(*p, sig) };
                }
                if sig == libc::SIGKILL {
                    break;
                }
                // SAFETY: reaping the command if it is done; usleep has no preconditions.
                unsafe {
                    let mut st = 0;
                    libc::waitpid(sid, &mut st, libc::WNOHANG);
                    libc::usleep(10_000);
                }
            }
        }
        // SAFETY: leaving without running kiln's destructors.
        unsafe { libc::_exit(129) }
    }

    /// C: the command.
    fn command(&self, pty_slave: Option<RawFd>) -> ! {
        // SAFETY: stdio and session setup with descriptors we hold.
        unsafe {
            if let Some(fd) = self.stdin {
                libc::dup2(fd, 0);
            }
            if let Some(fd) = pty_slave {
                for target in 0..3 {
                    libc::dup2(fd, target);
                }
            }
            // A session of its own: its processes are found (and ended) by the session id,
            // and with -t the terminal is its controlling one.
            libc::setsid();
            if self.tty {
                libc::ioctl(0, libc::TIOCSCTTY, 0);
            }
            // The exec'd command dies with the joiner.
            libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            );
        }
        if caps::drop_bounding(self.caps).is_err() {
            self.fail(125, "drop capabilities");
        }
        // The container's filter, installed while still root with every capability (see
        // sandbox::seccomp).
        if let Some(filter) = &self.seccomp {
            if filter.install().is_err() {
                self.fail(125, "install the seccomp filter");
            }
        }
        let u = &self.user;
        // SAFETY: identity changes with computed values; each checked.
        unsafe {
            if libc::setgroups(u.additional_gids.len(), u.additional_gids.as_ptr()) != 0 {
                self.fail(125, "setgroups");
            }
            if libc::setgid(u.gid) != 0 {
                self.fail(125, "setgid");
            }
            if libc::setuid(u.uid) != 0 {
                self.fail(125, "setuid");
            }
        }
        let mask = if u.uid == 0 { self.caps } else { 0 };
        if caps::set_process_caps(mask).is_err() {
            self.fail(125, "set capabilities");
        }
        // SAFETY: prctl with integer arguments only.
        if self.no_new_privs && unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            self.fail(125, "set no_new_privs");
        }
        // The user switch cleared the parent-death signal.
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
        // SAFETY: chdir with a NUL-terminated path.
        if unsafe { libc::chdir(self.cwd.as_ptr()) } != 0 {
            self.fail(125, &format!("chdir to {}", self.cwd.to_string_lossy()));
        }
        let mut argv: Vec<*const libc::c_char> = self.argv.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<*const libc::c_char> = self.envp.iter().map(|e| e.as_ptr()).collect();
        envp.push(std::ptr::null());
        let mut denied = false;
        for candidate in &self.search {
            // SAFETY: execve with NUL-terminated arrays; returns only on failure.
            unsafe { libc::execve(candidate.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
            match std::io::Error::last_os_error().raw_os_error() {
                Some(libc::EACCES) | Some(libc::ENOEXEC) => denied = true,
                _ => {}
            }
        }
        let name = self.argv[0].to_string_lossy();
        if denied {
            self.fail_msg(126, &format!("{name:?}: permission denied"))
        } else if name.contains('/') {
            self.fail_msg(127, &format!("{name:?}: no such file or directory"))
        } else {
            self.fail_msg(
                127,
                &format!("{name:?}: executable file not found in $PATH"),
            )
        }
    }
}
