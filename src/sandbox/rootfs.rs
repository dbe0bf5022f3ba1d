//! The container's filesystem: which mounts go where (planned in the parent, where paths are
//! resolved safely inside the root filesystem) and the calls that build it (run in the container's
//! init before `pivot_root`, then after it). Every privileged call goes through `Syscall`, so the
//! sequence is unit-tested with `RecordingSyscall`.

use std::io;
use std::path::{Component, Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

use super::syscall::{CharDev, FileKind, Syscall};
use super::{MountKind, Network};

/// Paths Docker hides from containers: files get /dev/null bound over them, directories an empty
/// read-only tmpfs.
pub const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths Docker leaves visible but read-only.
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

const DEVICES: &[(&str, u64, u64)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// Resolves `path` (absolute inside the container) to a host path under `root`, following
/// symlinks as the container would see them: `..` and absolute link targets never leave `root`.
/// Components that do not exist are appended as they are.
pub fn resolve_in_root(root: &Path, path: &Path) -> io::Result<PathBuf> {
    let mut resolved: Vec<std::ffi::OsString> = Vec::new();
    let mut hops = 0;
    // A work list of component sequences: when a symlink is met, its target's components are
    // pushed in front of what remains.
    let mut rest: std::collections::VecDeque<std::ffi::OsString> =
        std::collections::VecDeque::new();
    for c in path.components() {
        if let Component::Normal(n) = c {
            rest.push_back(n.to_os_string());
        } else if c == Component::ParentDir {
            rest.push_back("..".into());
        }
    }
    while let Some(name) = rest.pop_front() {
        if name == ".." {
            resolved.pop();
            continue;
        }
        let mut candidate = root.to_path_buf();
        candidate.extend(&resolved);
        candidate.push(&name);
        match std::fs::symlink_metadata(&candidate) {
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                if hops > 40 {
                    return Err(io::Error::other(format!(
                        "too many levels of symbolic links resolving {}",
                        path.display()
                    )));
                }
                let target = std::fs::read_link(&candidate)?;
                if target.is_absolute() {
                    resolved.clear();
                }
                let mut front = Vec::new();
                for c in target.components() {
                    match c {
                        Component::Normal(n) => front.push(n.to_os_string()),
                        Component::ParentDir => front.push("..".into()),
                        _ => {}
                    }
                }
                for n in front.into_iter().rev() {
                    rest.push_front(n);
                }
            }
            _ => resolved.push(name),
        }
    }
    let mut out = root.to_path_buf();
    out.extend(&resolved);
    Ok(out)
}

/// One extra mount, with its target already resolved to a host path inside the root filesystem.
#[derive(Debug, Clone)]
pub struct PlannedMount {
    pub target: PathBuf,
    pub kind: MountKind,
}

/// A file bound over a path in the container (/etc/hosts, /etc/hostname, /etc/resolv.conf).
#[derive(Debug, Clone)]
pub struct EtcFile {
    pub name: &'static str,
    pub target: PathBuf,
    pub content: Vec<u8>,
}

/// Everything the init needs to build the container's filesystem; made in the parent.
#[derive(Debug, Clone)]
pub struct RootfsPlan {
    pub rootfs: PathBuf,
    pub proc_dir: PathBuf,
    pub dev_dir: PathBuf,
    pub sys_dir: PathBuf,
    pub etc_files: Vec<EtcFile>,
    pub mounts: Vec<PlannedMount>,
    pub hostname: String,
    pub network: Network,
    /// Absolute path in the container; created if missing.
    pub cwd: PathBuf,
}

fn ctx(what: &str, path: &Path) -> impl FnOnce(io::Error) -> io::Error {
    let what = format!("{what} {}", path.display());
    move |e| io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Mounts everything into the root filesystem and pivots into it. Runs in the container's init
/// (new mount and PID namespaces) before anything else.
pub fn setup_and_pivot(sys: &dyn Syscall, plan: &RootfsPlan) -> io::Result<()> {
    let root = Path::new("/");
    // Nothing we do here may propagate back to the host.
    sys.mount(
        None,
        root,
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )
    .map_err(ctx("make / private", root))?;
    // pivot_root needs the new root to be a mount point; an overlay already is, a plain
    // directory is not.
    sys.mount(
        Some(&plan.rootfs),
        &plan.rootfs,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )
    .map_err(ctx("bind root filesystem", &plan.rootfs))?;

    let nsn = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    sys.mount(
        Some(Path::new("proc")),
        &plan.proc_dir,
        Some("proc"),
        nsn,
        None,
    )
    .map_err(ctx("mount proc on", &plan.proc_dir))?;

    setup_dev(sys, &plan.dev_dir)?;

    let sys_flags = nsn | MsFlags::MS_RDONLY;
    if sys
        .mount(
            Some(Path::new("sysfs")),
            &plan.sys_dir,
            Some("sysfs"),
            sys_flags,
            None,
        )
        .is_err()
    {
        // A new sysfs can be refused (e.g. host network in a user namespace): bind the host's
        // read-only instead.
        let host_sys = Path::new("/sys");
        sys.mount(
            Some(host_sys),
            &plan.sys_dir,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )
        .map_err(ctx("bind /sys on", &plan.sys_dir))?;
        sys.mount(
            None,
            &plan.sys_dir,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_REC | sys_flags,
            None,
        )
        .map_err(ctx("remount read-only", &plan.sys_dir))?;
    }

    // /etc files: written in the container's /dev tmpfs, bound over their targets, then unlinked
    // (the bind keeps them alive), so nothing is left on the host.
    for f in &plan.etc_files {
        let staging = plan.dev_dir.join(format!(".kiln-{}", f.name));
        sys.write_file(&staging, &f.content, 0o644)
            .map_err(ctx("write", &staging))?;
        sys.mount(Some(&staging), &f.target, None, MsFlags::MS_BIND, None)
            .map_err(ctx("bind mount on", &f.target))?;
        sys.unlink(&staging).map_err(ctx("remove", &staging))?;
    }

    for m in &plan.mounts {
        mount_extra(sys, m)?;
    }

    sys.chdir(&plan.rootfs)
        .map_err(ctx("chdir", &plan.rootfs))?;
    // pivot_root(".", ".") stacks the old root on top of the new one; detaching "." then removes
    // it entirely, with everything mounted below it, and needs no put_old directory.
    let dot = Path::new(".");
    sys.pivot_root(dot, dot)
        .map_err(ctx("pivot_root into", &plan.rootfs))?;
    sys.umount2(dot, MntFlags::MNT_DETACH)
        .map_err(ctx("detach old root", dot))?;
    sys.chdir(root).map_err(ctx("chdir", root))?;
    Ok(())
}

fn setup_dev(sys: &dyn Syscall, dev: &Path) -> io::Result<()> {
    sys.mount(
        Some(Path::new("tmpfs")),
        dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )
    .map_err(ctx("mount tmpfs on", dev))?;
    for (name, major, minor) in DEVICES {
        let p = dev.join(name);
        sys.mknod_char(
            &p,
            CharDev {
                major: *major,
                minor: *minor,
                mode: 0o666,
            },
        )
        .map_err(ctx("mknod", &p))?;
    }
    let pts = dev.join("pts");
    sys.mkdir_all(&pts, 0o755).map_err(ctx("mkdir", &pts))?;
    sys.mount(
        Some(Path::new("devpts")),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )
    .map_err(ctx("mount devpts on", &pts))?;
    sys.symlink(Path::new("pts/ptmx"), &dev.join("ptmx"))?;
    let shm = dev.join("shm");
    sys.mkdir_all(&shm, 0o1777).map_err(ctx("mkdir", &shm))?;
    sys.mount(
        Some(Path::new("shm")),
        &shm,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=1777,size=65536k"),
    )
    .map_err(ctx("mount shm on", &shm))?;
    let mqueue = dev.join("mqueue");
    sys.mkdir_all(&mqueue, 0o755)
        .map_err(ctx("mkdir", &mqueue))?;
    sys.mount(
        Some(Path::new("mqueue")),
        &mqueue,
        Some("mqueue"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None,
    )
    .map_err(ctx("mount mqueue on", &mqueue))?;
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("core", "/proc/kcore"),
    ] {
        let l = dev.join(link);
        sys.symlink(Path::new(target), &l)
            .map_err(ctx("symlink", &l))?;
    }
    Ok(())
}

fn mount_extra(sys: &dyn Syscall, m: &PlannedMount) -> io::Result<()> {
    match &m.kind {
        MountKind::Bind { source, readonly } => {
            sys.mount(
                Some(source),
                &m.target,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None,
            )
            .map_err(ctx(&format!("bind {} on", source.display()), &m.target))?;
            if *readonly {
                sys.mount(
                    None,
                    &m.target,
                    None,
                    MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_REC,
                    None,
                )
                .map_err(ctx("remount read-only", &m.target))?;
            }
        }
        MountKind::Tmpfs { size_bytes, mode } => {
            let mut data = format!("mode={mode:o}");
            if let Some(size) = size_bytes {
                data.push_str(&format!(",size={size}"));
            }
            sys.mount(
                Some(Path::new("tmpfs")),
                &m.target,
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                Some(&data),
            )
            .map_err(ctx("mount tmpfs on", &m.target))?;
        }
    }
    Ok(())
}

/// After `pivot_root`: masks and read-only paths, hostname, loopback, working directory.
pub fn finish_in_root(sys: &dyn Syscall, plan: &RootfsPlan) -> io::Result<()> {
    for p in MASKED_PATHS.iter().map(Path::new) {
        match sys.kind(p) {
            Some(FileKind::Dir) => sys
                .mount(
                    Some(Path::new("tmpfs")),
                    p,
                    Some("tmpfs"),
                    MsFlags::MS_RDONLY,
                    None,
                )
                .map_err(ctx("mask", p))?,
            Some(FileKind::Other) => sys
                .mount(
                    Some(Path::new("/dev/null")),
                    p,
                    None,
                    MsFlags::MS_BIND,
                    None,
                )
                .map_err(ctx("mask", p))?,
            None => {}
        }
    }
    for p in READONLY_PATHS.iter().map(Path::new) {
        if sys.kind(p).is_none() {
            continue;
        }
        sys.mount(Some(p), p, None, MsFlags::MS_BIND | MsFlags::MS_REC, None)
            .map_err(ctx("bind", p))?;
        sys.mount(
            None,
            p,
            None,
            MsFlags::MS_BIND
                | MsFlags::MS_REMOUNT
                | MsFlags::MS_RDONLY
                | MsFlags::MS_REC
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOEXEC,
            None,
        )
        .map_err(ctx("remount read-only", p))?;
    }
    if !plan.hostname.is_empty() {
        sys.sethostname(&plan.hostname)
            .map_err(|e| io::Error::new(e.kind(), format!("sethostname: {e}")))?;
    }
    if plan.network == Network::None {
        sys.loopback_up()
            .map_err(|e| io::Error::new(e.kind(), format!("bring loopback up: {e}")))?;
    }
    sys.mkdir_all(&plan.cwd, 0o755)
        .map_err(ctx("create working directory", &plan.cwd))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::syscall::{Call, RecordingSyscall};
    use super::*;

    fn plan(network: Network, mounts: Vec<PlannedMount>) -> RootfsPlan {
        RootfsPlan {
            rootfs: "/r".into(),
            proc_dir: "/r/proc".into(),
            dev_dir: "/r/dev".into(),
            sys_dir: "/r/sys".into(),
            etc_files: vec![EtcFile {
                name: "hosts",
                target: "/r/etc/hosts".into(),
                content: b"127.0.0.1 localhost\n".to_vec(),
            }],
            mounts,
            hostname: "box".into(),
            network,
            cwd: "/work".into(),
        }
    }

    fn mounts_of(calls: &[Call]) -> Vec<(Option<PathBuf>, PathBuf, Option<String>, MsFlags)> {
        calls
            .iter()
            .filter_map(|c| match c {
                Call::Mount {
                    source,
                    target,
                    fstype,
                    flags,
                    ..
                } => Some((source.clone(), target.clone(), fstype.clone(), *flags)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn setup_mounts_proc_dev_sys_then_pivots_and_detaches_old_root() {
        let sys = RecordingSyscall::new(&[], &[]);
        let extra = vec![
            PlannedMount {
                target: "/r/src".into(),
                kind: MountKind::Bind {
                    source: "/host/src".into(),
                    readonly: true,
                },
            },
            PlannedMount {
                target: "/r/tmp".into(),
                kind: MountKind::Tmpfs {
                    size_bytes: Some(1 << 20),
                    mode: 0o1777,
                },
            },
        ];
        setup_and_pivot(&sys, &plan(Network::None, extra)).unwrap();
        let calls = sys.calls();
        let m = mounts_of(&calls);
        assert_eq!(m[0].1, PathBuf::from("/"));
        assert!(m[0].3.contains(MsFlags::MS_PRIVATE | MsFlags::MS_REC));
        assert_eq!(
            (m[1].0.clone(), m[1].1.clone()),
            (Some("/r".into()), "/r".into())
        );
        assert_eq!(m[2].2.as_deref(), Some("proc"));
        assert!(m[2]
            .3
            .contains(MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV));
        let sysfs = m.iter().find(|x| x.2.as_deref() == Some("sysfs")).unwrap();
        assert!(sysfs.3.contains(MsFlags::MS_RDONLY));
        for dev in ["null", "zero", "full", "random", "urandom", "tty"] {
            assert!(calls
                .iter()
                .any(|c| matches!(c, Call::Mknod(p, _) if p == &Path::new("/r/dev").join(dev))));
        }
        assert!(calls.contains(&Call::Symlink("pts/ptmx".into(), "/r/dev/ptmx".into())));
        assert!(calls.contains(&Call::Symlink(
            "/proc/self/fd/1".into(),
            "/r/dev/stdout".into()
        )));
        assert!(m.iter().any(|x| x.2.as_deref() == Some("devpts")));
        // The ro bind is a bind then a read-only remount.
        let i = m.iter().position(|x| x.1 == Path::new("/r/src")).unwrap();
        assert_eq!(m[i].0.as_deref(), Some(Path::new("/host/src")));
        assert!(m[i + 1]
            .3
            .contains(MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY));
        assert!(m
            .iter()
            .any(|x| x.1 == Path::new("/r/tmp") && x.2.as_deref() == Some("tmpfs")));
        assert!(m.iter().any(|x| x.1 == Path::new("/r/etc/hosts")));
        // Pivot, then the old root is lazily detached, then cwd is the new /.
        let n = calls.len();
        assert_eq!(calls[n - 4], Call::Chdir("/r".into()));
        assert_eq!(calls[n - 3], Call::PivotRoot(".".into(), ".".into()));
        assert_eq!(
            calls[n - 2],
            Call::Umount2(".".into(), MntFlags::MNT_DETACH)
        );
        assert_eq!(calls[n - 1], Call::Chdir("/".into()));
    }

    #[test]
    fn finish_masks_files_and_dirs_and_makes_proc_paths_read_only() {
        let sys = RecordingSyscall::new(
            &["/proc/acpi", "/proc/sys", "/proc/irq"],
            &["/proc/kcore", "/proc/keys", "/proc/sysrq-trigger"],
        );
        finish_in_root(&sys, &plan(Network::None, vec![])).unwrap();
        let calls = sys.calls();
        let m = mounts_of(&calls);
        assert!(m.contains(&(
            Some("/dev/null".into()),
            "/proc/kcore".into(),
            None,
            MsFlags::MS_BIND
        )));
        assert!(m.iter().any(|x| x.1 == Path::new("/proc/acpi")
            && x.2.as_deref() == Some("tmpfs")
            && x.3.contains(MsFlags::MS_RDONLY)));
        for ro in ["/proc/sys", "/proc/irq", "/proc/sysrq-trigger"] {
            assert!(m
                .iter()
                .any(|x| x.1 == Path::new(ro)
                    && x.3.contains(MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY)));
        }
        // Paths that do not exist are skipped, not errors.
        assert!(!m.iter().any(|x| x.1 == Path::new("/proc/scsi")));
        assert!(calls.contains(&Call::Sethostname("box".into())));
        assert!(calls.contains(&Call::LoopbackUp));
        assert!(calls.contains(&Call::MkdirAll("/work".into(), 0o755)));
    }

    #[test]
    fn host_network_leaves_loopback_alone() {
        let sys = RecordingSyscall::new(&[], &[]);
        finish_in_root(&sys, &plan(Network::Host, vec![])).unwrap();
        assert!(!sys.calls().contains(&Call::LoopbackUp));
    }

    #[test]
    fn resolve_in_root_never_leaves_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        std::fs::create_dir_all(r.join("etc")).unwrap();
        std::fs::create_dir_all(r.join("real")).unwrap();
        std::os::unix::fs::symlink("/etc/shadow", r.join("etc/hosts")).unwrap();
        std::os::unix::fs::symlink("../../../../real", r.join("etc/up")).unwrap();
        std::os::unix::fs::symlink("/real/x", r.join("abs")).unwrap();
        std::os::unix::fs::symlink("loop2", r.join("loop1")).unwrap();
        std::os::unix::fs::symlink("loop1", r.join("loop2")).unwrap();
        assert_eq!(
            resolve_in_root(r, Path::new("/etc/hosts")).unwrap(),
            r.join("etc/shadow")
        );
        assert_eq!(
            resolve_in_root(r, Path::new("/etc/up/a")).unwrap(),
            r.join("real/a")
        );
        assert_eq!(
            resolve_in_root(r, Path::new("/abs")).unwrap(),
            r.join("real/x")
        );
        assert_eq!(
            resolve_in_root(r, Path::new("/../../x/../y")).unwrap(),
            r.join("y")
        );
        assert!(resolve_in_root(r, Path::new("/loop1")).is_err());
    }
}
