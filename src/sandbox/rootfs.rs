//! The container's filesystem: which mounts go where (planned in the parent, where paths are
//! resolved safely inside the root filesystem) and the calls that build it (run in the container's
//! init before `pivot_root`, then after it). Every privileged call goes through `Syscall`, so the
//! sequence is unit-tested with `RecordingSyscall`.

use std::io;
use std::path::{Component, Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

use super::syscall::{
    FileKind, Syscall, MOUNT_ATTR_NODEV, MOUNT_ATTR_NOEXEC, MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY,
};
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

/// The device nodes of the container's /dev (Docker's default devices; ptmx is the new devpts
/// instance's, pts/* are the container's own ptys): name, major, minor. Each is the container's
/// own node, made with mknod in its /dev tmpfs and bound onto itself, so it opens while the rest
/// of /dev and the root filesystem are `nodev` (a node the command makes with mknod cannot be
/// opened). Binding the host's nodes instead would let the container's root `chmod` or `chown`
/// the host's /dev/null. Where mknod is not allowed (a user namespace: rootless), the host's
/// nodes are bound: there the container's root does not own them and cannot change them.
pub const DEVICES: &[(&str, u64, u64)] = &[
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

/// One of the container's own cgroup directories, shown read-only under /sys/fs/cgroup:
/// `controller` names the v1 controller (its subdirectory there); `None` is v2's one directory,
/// shown as /sys/fs/cgroup itself.
#[derive(Debug, Clone, PartialEq)]
pub struct CgroupView {
    pub host_dir: PathBuf,
    pub controller: Option<String>,
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
    /// No device cgroup restricts this execution: bind mounts get `nodev` too, so a host
    /// device reached through a bind (e.g. `-v /dev:/d`) cannot be opened either.
    pub nodev_binds: bool,
    /// Rootless: where a new procfs is refused (EPERM), bind the host's read-only with a
    /// warning instead of failing.
    pub proc_bind_fallback: bool,
    /// Rootless with only the user's id mapped: no gid other than 0 exists (devpts without
    /// `gid=5`).
    pub single_id: bool,
    /// The size of /dev/shm's tmpfs in bytes.
    pub shm_size: u64,
    /// `--read-only`: the root mount is made read-only last (its submounts, such as volumes,
    /// tmpfs, /dev and /proc, keep their own flags).
    pub read_only: bool,
    /// `--privileged` / `RUN --security=insecure` (`privileged`): no `nodev` on the root
    /// filesystem and /dev, a writable /sys, no masked or read-only paths.
    pub privileged: bool,
    /// Device nodes made in /dev besides `DEVICES` (a privileged execution's).
    pub devices: Vec<super::privileged::DeviceNode>,
    /// The execution's cgroup, shown at /sys/fs/cgroup (empty: nothing there, as without a
    /// cgroup).
    pub cgroup_views: Vec<CgroupView>,
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
    // Device nodes in the image, or made by the command with mknod, cannot be opened (a
    // privileged command may open any device: its device cgroup allows them all).
    if !plan.privileged {
        set_attrs_recursive(sys, &plan.rootfs, MOUNT_ATTR_NODEV)
            .map_err(ctx("make nodev", &plan.rootfs))?;
    }

    let nsn = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    match sys.mount(
        Some(Path::new("proc")),
        &plan.proc_dir,
        Some("proc"),
        nsn,
        None,
    ) {
        Ok(()) => {}
        // A user namespace whose /proc has covered paths (a Kubernetes pod's masked /proc) may
        // not mount a new one: the host's, read-only, as BuildKit's no-process-sandbox does.
        Err(e) if e.raw_os_error() == Some(libc::EPERM) && plan.proc_bind_fallback => {
            eprintln!(
                "kiln: WARNING: cannot mount a new /proc here ({e}): the command sees the \
                 host's /proc read-only, with every process of the host's PID namespace \
                 (allow it with procMount: Unmasked, or run kiln where /proc is not masked)"
            );
            bind_host_read_only(sys, Path::new("/proc"), &plan.proc_dir)?;
        }
        Err(e) => return Err(e).map_err(ctx("mount proc on", &plan.proc_dir)),
    }

    setup_dev(sys, plan)?;

    // Read-only, except for a privileged command (docker's and BuildKit's writable sysfs).
    let sys_flags = if plan.privileged {
        nsn
    } else {
        nsn | MsFlags::MS_RDONLY
    };
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
        // read-only instead (its /sys/fs/cgroup is then the host's, read-only).
        bind_host_read_only(sys, Path::new("/sys"), &plan.sys_dir)?;
    } else {
        mount_cgroup_views(sys, plan)?;
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
        mount_extra(sys, m, plan.nodev_binds)?;
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

/// Shows the execution's own cgroup at /sys/fs/cgroup, read-only, as runc does: on v1 a tmpfs
/// with each controller's directory bound at its name, on v2 the one directory bound there.
fn mount_cgroup_views(sys: &dyn Syscall, plan: &RootfsPlan) -> io::Result<()> {
    if plan.cgroup_views.is_empty() {
        return Ok(());
    }
    let target = plan.sys_dir.join("fs/cgroup");
    let read_only = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC;
    if let [only] = plan.cgroup_views.as_slice() {
        if only.controller.is_none() {
            sys.mount(Some(&only.host_dir), &target, None, MsFlags::MS_BIND, None)
                .map_err(ctx(
                    &format!("bind {} on", only.host_dir.display()),
                    &target,
                ))?;
            return set_attrs_recursive(sys, &target, read_only)
                .map_err(ctx("make read-only", &target));
        }
    }
    sys.mount(
        Some(Path::new("tmpfs")),
        &target,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=755"),
    )
    .map_err(ctx("mount tmpfs on", &target))?;
    for view in &plan.cgroup_views {
        let Some(name) = &view.controller else {
            continue;
        };
        let point = target.join(name);
        sys.mkdir_all(&point, 0o755)
            .map_err(ctx("create", &point))?;
        sys.mount(Some(&view.host_dir), &point, None, MsFlags::MS_BIND, None)
            .map_err(ctx(&format!("bind {} on", view.host_dir.display()), &point))?;
        // Co-mounted controllers (`cpu,cpuacct`) are also found by each name, as on the host.
        if name.contains(',') {
            for part in name.split(',') {
                let link = target.join(part);
                sys.symlink(Path::new(name), &link)
                    .map_err(ctx("symlink", &link))?;
            }
        }
    }
    set_attrs_recursive(sys, &target, read_only).map_err(ctx("make read-only", &target))
}

/// Binds the host's `host` (and every mount below it) on `target`, read-only, nosuid, nodev,
/// noexec: the fallback where a new /proc or sysfs is refused.
fn bind_host_read_only(sys: &dyn Syscall, host: &Path, target: &Path) -> io::Result<()> {
    sys.mount(
        Some(host),
        target,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )
    .map_err(ctx(&format!("bind {} on", host.display()), target))?;
    set_attrs_recursive(
        sys,
        target,
        MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC,
    )
    .map_err(ctx("make read-only", target))
}

fn setup_dev(sys: &dyn Syscall, plan: &RootfsPlan) -> io::Result<()> {
    let (dev, single_id, shm_size) = (plan.dev_dir.as_path(), plan.single_id, plan.shm_size);
    // Mounted without nodev so that the nodes made here open; /dev itself is made nodev below,
    // after each node has been bound onto itself (a bind keeps the flags its source had).
    sys.mount(
        Some(Path::new("tmpfs")),
        dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )
    .map_err(ctx("mount tmpfs on", dev))?;
    for &(name, major, minor) in DEVICES {
        let p = dev.join(name);
        let source = match sys.mknod_char(&p, 0o666, major, minor) {
            Ok(()) => p.clone(),
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                sys.touch(&p).map_err(ctx("create", &p))?;
                Path::new("/dev").join(name)
            }
            Err(e) => return Err(ctx("mknod", &p)(e)),
        };
        sys.mount(Some(&source), &p, None, MsFlags::MS_BIND, None)
            .map_err(ctx(&format!("bind {} on", source.display()), &p))?;
    }
    if plan.privileged {
        // /dev stays without nodev: the extra nodes open as they are made.
        extra_devices(sys, dev, &plan.devices)?;
    } else {
        sys.mount(
            None,
            dev,
            None,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            None,
        )
        .map_err(ctx("make nodev", dev))?;
    }
    let pts = dev.join("pts");
    sys.mkdir_all(&pts, 0o755).map_err(ctx("mkdir", &pts))?;
    sys.mount(
        Some(Path::new("devpts")),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        // gid 5 (tty) does not exist when rootless kiln maps only the user's own id.
        Some(if single_id {
            "newinstance,ptmxmode=0666,mode=0620"
        } else {
            "newinstance,ptmxmode=0666,mode=0620,gid=5"
        }),
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
        Some(&format!("mode=1777,size={}k", shm_size.div_ceil(1024))),
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

/// A privileged execution's device nodes, made in /dev (`dev`) with the host's numbers, mode
/// and owner. The default ones (`DEVICES`) and ptmx (the devpts instance's) are already there.
/// Where mknod is refused (a user namespace) the host's node is bound instead.
fn extra_devices(
    sys: &dyn Syscall,
    dev: &Path,
    nodes: &[super::privileged::DeviceNode],
) -> io::Result<()> {
    for n in nodes {
        let own = DEVICES.iter().any(|(name, _, _)| n.path == Path::new(name));
        if own || n.path == Path::new("ptmx") || n.path.is_absolute() {
            continue;
        }
        let p = dev.join(&n.path);
        if let Some(parent) = p.parent().filter(|d| *d != dev) {
            sys.mkdir_all(parent, 0o755).map_err(ctx("mkdir", parent))?;
        }
        match sys.mknod_dev(&p, &n.spec()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                let host = Path::new("/dev").join(&n.path);
                if sys.kind(&host).is_none() {
                    continue;
                }
                sys.touch(&p).map_err(ctx("create", &p))?;
                sys.mount(Some(&host), &p, None, MsFlags::MS_BIND, None)
                    .map_err(ctx(&format!("bind {} on", host.display()), &p))?;
            }
            Err(e) => return Err(ctx("mknod", &p)(e)),
        }
    }
    Ok(())
}

/// Sets `attrs` (`MOUNT_ATTR_*`) on the mount at `target` and on every mount below it:
/// `mount_setattr(AT_RECURSIVE)` where the kernel has it (5.12), else a bind remount of each
/// mount found in /proc/self/mountinfo, keeping its own flags.
pub fn set_attrs_recursive(sys: &dyn Syscall, target: &Path, attrs: u64) -> io::Result<()> {
    match sys.mount_setattr(target, true, attrs, 0) {
        Ok(()) => Ok(()),
        // ENOSYS: before 5.12; EPERM: a seccomp filter (an outer container) refusing it.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS) | Some(libc::EPERM)) => {
            let mut wanted = MsFlags::empty();
            for (attr, flag) in [
                (MOUNT_ATTR_RDONLY, MsFlags::MS_RDONLY),
                (MOUNT_ATTR_NOSUID, MsFlags::MS_NOSUID),
                (MOUNT_ATTR_NODEV, MsFlags::MS_NODEV),
                (MOUNT_ATTR_NOEXEC, MsFlags::MS_NOEXEC),
            ] {
                if attrs & attr != 0 {
                    wanted |= flag;
                }
            }
            let info = sys.mountinfo()?;
            let mut tree = mounts_at_or_below(&info, target);
            if tree.is_empty() {
                tree.push((target.to_path_buf(), MsFlags::empty()));
            }
            for (point, own) in tree {
                sys.mount(
                    None,
                    &point,
                    None,
                    MsFlags::MS_BIND | MsFlags::MS_REMOUNT | own | wanted,
                    None,
                )
                .map_err(ctx("remount", &point))?;
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape_mountinfo(field: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// The mounts at `target` or below it, in mountinfo's order (a parent before what is mounted
/// on it), each with the flags of its own mount options. A path mounted over twice is listed
/// once, with the flags of the mount on top.
pub fn mounts_at_or_below(mountinfo: &str, target: &Path) -> Vec<(PathBuf, MsFlags)> {
    let mut out: Vec<(PathBuf, MsFlags)> = Vec::new();
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        if fields.len() < 6 {
            continue;
        }
        let point = unescape_mountinfo(fields[4]);
        if !point.starts_with(target) {
            continue;
        }
        let mut flags = MsFlags::empty();
        let mut atime = false;
        for opt in fields[5].split(',') {
            match opt {
                "ro" => flags |= MsFlags::MS_RDONLY,
                "nosuid" => flags |= MsFlags::MS_NOSUID,
                "nodev" => flags |= MsFlags::MS_NODEV,
                "noexec" => flags |= MsFlags::MS_NOEXEC,
                "noatime" => {
                    flags |= MsFlags::MS_NOATIME;
                    atime = true;
                }
                "relatime" => {
                    flags |= MsFlags::MS_RELATIME;
                    atime = true;
                }
                "nodiratime" => flags |= MsFlags::MS_NODIRATIME,
                _ => {}
            }
        }
        if !atime {
            flags |= MsFlags::MS_STRICTATIME;
        }
        match out.iter_mut().find(|(p, _)| *p == point) {
            Some(existing) => existing.1 = flags,
            None => out.push((point, flags)),
        }
    }
    out
}

fn mount_extra(sys: &dyn Syscall, m: &PlannedMount, nodev_binds: bool) -> io::Result<()> {
    // The parent made every mount point in the root filesystem; one inside an earlier mount of
    // this list (`/cache` then `/cache/sub`) is hidden by that mount and is made here, in it.
    if sys.kind(&m.target).is_none() {
        let file_bind = matches!(&m.kind, MountKind::Bind { source, .. } if sys.kind(source) == Some(FileKind::Other));
        if file_bind {
            if let Some(parent) = m.target.parent() {
                sys.mkdir_all(parent, 0o755)
                    .map_err(ctx("create mount point", parent))?;
            }
            sys.touch(&m.target)
                .map_err(ctx("create mount point", &m.target))?;
        } else {
            sys.mkdir_all(&m.target, 0o755)
                .map_err(ctx("create mount point", &m.target))?;
        }
    }
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
            // Read-only means every mount below the target too (a bind of / brings the host's
            // /proc, /sys/fs/cgroup, /dev/shm along).
            let mut attrs = 0;
            if *readonly {
                attrs |= MOUNT_ATTR_RDONLY;
            }
            if nodev_binds {
                attrs |= MOUNT_ATTR_NODEV;
            }
            if attrs != 0 {
                set_attrs_recursive(sys, &m.target, attrs)
                    .map_err(ctx("set read-only/nodev on", &m.target))?;
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
    // A privileged command sees /proc and /sys unmasked and writable, as docker's and BuildKit's.
    let (masked, readonly) = if plan.privileged {
        (&[][..], &[][..])
    } else {
        (MASKED_PATHS, READONLY_PATHS)
    };
    for p in masked.iter().map(Path::new) {
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
    for p in readonly.iter().map(Path::new) {
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
    if plan.read_only {
        // The root's own flags (nodev) are kept: a bind remount sets them all.
        let root = Path::new("/");
        let mut flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY;
        if !plan.privileged {
            flags |= MsFlags::MS_NODEV;
        }
        sys.mount(None, root, None, flags, None)
            .map_err(ctx("remount read-only", root))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::syscall::{Call, DevNodeSpec, RecordingSyscall};
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
            nodev_binds: false,
            proc_bind_fallback: false,
            single_id: false,
            shm_size: crate::sandbox::DEFAULT_SHM_SIZE,
            read_only: false,
            privileged: false,
            devices: Vec::new(),
            cgroup_views: Vec::new(),
        }
    }

    fn view(host_dir: &str, controller: Option<&str>) -> CgroupView {
        CgroupView {
            host_dir: host_dir.into(),
            controller: controller.map(str::to_string),
        }
    }

    #[test]
    fn the_executions_cgroup_is_shown_read_only_at_sys_fs_cgroup() {
        // v1: a tmpfs, each controller's directory bound at its name, all made read-only.
        let sys = RecordingSyscall::new(&[], &[]);
        let mut p = plan(Network::None, vec![]);
        p.cgroup_views = vec![
            view("/sys/fs/cgroup/memory/kiln/1.0", Some("memory")),
            view("/sys/fs/cgroup/cpu/kiln/1.0", Some("cpu")),
            view(
                "/sys/fs/cgroup/net_cls,net_prio/kiln/1.0",
                Some("net_cls,net_prio"),
            ),
        ];
        setup_and_pivot(&sys, &p).unwrap();
        let calls = sys.calls();
        let m = mounts_of(&calls);
        let at = |t: &str| m.iter().filter(|x| x.1 == Path::new(t)).collect::<Vec<_>>();
        assert_eq!(at("/r/sys/fs/cgroup")[0].2.as_deref(), Some("tmpfs"));
        for (host, point) in [
            ("/sys/fs/cgroup/memory/kiln/1.0", "/r/sys/fs/cgroup/memory"),
            ("/sys/fs/cgroup/cpu/kiln/1.0", "/r/sys/fs/cgroup/cpu"),
        ] {
            let bind = at(point);
            assert_eq!(bind.len(), 1, "{point}");
            assert_eq!(bind[0].0.as_deref(), Some(Path::new(host)));
            assert!(bind[0].3.contains(MsFlags::MS_BIND));
        }
        assert!(setattrs_of(&calls)
            .iter()
            .any(|(t, rec, a)| t == Path::new("/r/sys/fs/cgroup")
                && *rec
                && a & MOUNT_ATTR_RDONLY != 0));
        for part in ["net_cls", "net_prio"] {
            let link = Path::new("/r/sys/fs/cgroup").join(part);
            assert!(
                calls.iter().any(|c| matches!(c, Call::Symlink(target, l)
                    if target == Path::new("net_cls,net_prio") && *l == link)),
                "{calls:?}"
            );
        }

        // v2: the one directory bound at /sys/fs/cgroup itself, no tmpfs.
        let sys = RecordingSyscall::new(&[], &[]);
        p.cgroup_views = vec![view("/sys/fs/cgroup/kiln/1.0", None)];
        setup_and_pivot(&sys, &p).unwrap();
        let calls = sys.calls();
        let m = mounts_of(&calls);
        let at: Vec<_> = m
            .iter()
            .filter(|x| x.1 == Path::new("/r/sys/fs/cgroup"))
            .collect();
        assert_eq!(at.len(), 1);
        assert_eq!(
            at[0].0.as_deref(),
            Some(Path::new("/sys/fs/cgroup/kiln/1.0"))
        );
        assert!(setattrs_of(&calls)
            .iter()
            .any(|(t, _, a)| t == Path::new("/r/sys/fs/cgroup") && a & MOUNT_ATTR_RDONLY != 0));

        // Without a cgroup, nothing is mounted there.
        let sys = RecordingSyscall::new(&[], &[]);
        p.cgroup_views.clear();
        setup_and_pivot(&sys, &p).unwrap();
        assert!(!mounts_of(&sys.calls())
            .iter()
            .any(|x| x.1.starts_with("/r/sys/fs")));
    }

    #[test]
    fn refused_proc_is_the_hosts_read_only_only_when_rootless() {
        let mut sys = RecordingSyscall::new(&["/r/work"], &[]);
        sys.mount_fstype_errno = Some(("proc".into(), libc::EPERM));
        let mut p = plan(Network::None, vec![]);
        let err = setup_and_pivot(&sys, &p).unwrap_err();
        assert!(err.to_string().contains("mount proc on /r/proc"), "{err}");
        let sys2 = RecordingSyscall {
            mount_fstype_errno: sys.mount_fstype_errno.clone(),
            ..RecordingSyscall::new(&["/r/work"], &[])
        };
        p.proc_bind_fallback = true;
        setup_and_pivot(&sys2, &p).unwrap();
        let calls = sys2.calls();
        let m = mounts_of(&calls);
        let bind = m
            .iter()
            .find(|x| x.1 == Path::new("/r/proc") && x.0.as_deref() == Some(Path::new("/proc")))
            .expect("host /proc bound");
        assert!(bind.3.contains(MsFlags::MS_BIND | MsFlags::MS_REC));
        assert!(setattrs_of(&calls)
            .iter()
            .any(|(t, rec, a)| t == Path::new("/r/proc") && *rec && a & MOUNT_ATTR_RDONLY != 0));
    }

    fn privileged_plan() -> RootfsPlan {
        use crate::sandbox::privileged::DeviceNode;
        let node = |path: &str, block, major, minor| DeviceNode {
            path: path.into(),
            block,
            major,
            minor,
            mode: 0o600,
            uid: 0,
            gid: 6,
        };
        let mut p = plan(Network::None, vec![]);
        p.privileged = true;
        p.devices = vec![
            node("null", false, 1, 3),
            node("ptmx", false, 5, 2),
            node("net/tun", false, 10, 200),
            node("loop0", true, 7, 0),
        ];
        p
    }

    #[test]
    fn privileged_has_no_nodev_a_writable_sys_and_the_extra_devices() {
        let sys = RecordingSyscall::new(&[], &[]);
        setup_and_pivot(&sys, &privileged_plan()).unwrap();
        let calls = sys.calls();
        let m = mounts_of(&calls);
        // Neither the root filesystem nor /dev is made nodev.
        assert!(setattrs_of(&calls)
            .iter()
            .all(|(_, _, a)| a & MOUNT_ATTR_NODEV == 0));
        assert!(!m
            .iter()
            .any(|x| x.1 == Path::new("/r/dev") && x.3.contains(MsFlags::MS_REMOUNT)));
        let sysfs = m.iter().find(|x| x.2.as_deref() == Some("sysfs")).unwrap();
        assert!(!sysfs.3.contains(MsFlags::MS_RDONLY));
        assert!(sysfs.3.contains(MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC));
        // The extra nodes are made with their kind, numbers, mode and owner, parents first;
        // the default ones and ptmx are not made twice.
        let made: Vec<(PathBuf, DevNodeSpec)> = calls
            .iter()
            .filter_map(|c| match c {
                Call::MknodDev(p, n) => Some((p.clone(), *n)),
                _ => None,
            })
            .collect();
        let spec = |block, major, minor| DevNodeSpec {
            block,
            mode: 0o600,
            major,
            minor,
            uid: 0,
            gid: 6,
        };
        assert_eq!(
            made,
            vec![
                ("/r/dev/net/tun".into(), spec(false, 10, 200)),
                ("/r/dev/loop0".into(), spec(true, 7, 0)),
            ]
        );
        let mkdir = calls
            .iter()
            .position(|c| *c == Call::MkdirAll("/r/dev/net".into(), 0o755))
            .expect("/dev/net made");
        let tun = calls
            .iter()
            .position(|c| matches!(c, Call::MknodDev(p, _) if p == Path::new("/r/dev/net/tun")))
            .unwrap();
        assert!(mkdir < tun);
        // The default devices are still the container's own nodes.
        assert!(calls.contains(&Call::MknodChar("/r/dev/null".into(), 0o666, 1, 3)));
    }

    #[test]
    fn privileged_devices_are_bound_from_the_host_where_mknod_is_refused() {
        let sys = RecordingSyscall {
            mknod_errno: Some(libc::EPERM),
            ..RecordingSyscall::new(&[], &["/dev/loop0"])
        };
        setup_and_pivot(&sys, &privileged_plan()).unwrap();
        let calls = sys.calls();
        let m = mounts_of(&calls);
        assert!(m.contains(&(
            Some("/dev/loop0".into()),
            "/r/dev/loop0".into(),
            None,
            MsFlags::MS_BIND
        )));
        // A node the host does not have is left out rather than bound from nothing.
        assert!(!m.iter().any(|x| x.1 == Path::new("/r/dev/net/tun")));
    }

    #[test]
    fn privileged_masks_nothing_and_keeps_proc_writable() {
        let sys = RecordingSyscall::new(
            &["/proc/acpi", "/proc/sys", "/proc/irq"],
            &["/proc/kcore", "/proc/keys", "/proc/sysrq-trigger"],
        );
        let mut p = privileged_plan();
        p.read_only = true;
        finish_in_root(&sys, &p).unwrap();
        let m = mounts_of(&sys.calls());
        // Only the read-only root's remount, and it keeps no nodev.
        assert_eq!(m.len(), 1, "{m:?}");
        assert_eq!(m[0].1, Path::new("/"));
        assert!(!m[0].3.contains(MsFlags::MS_NODEV));
    }

    #[test]
    fn devpts_has_no_tty_group_with_a_single_id() {
        for (single, gid5) in [(false, true), (true, false)] {
            let sys = RecordingSyscall::new(&["/r/work"], &[]);
            let mut p = plan(Network::None, vec![]);
            p.single_id = single;
            setup_and_pivot(&sys, &p).unwrap();
            let data = sys
                .calls()
                .into_iter()
                .find_map(|c| match c {
                    Call::Mount {
                        fstype: Some(t),
                        data,
                        ..
                    } if t == "devpts" => data,
                    _ => None,
                })
                .unwrap();
            assert_eq!(data.contains("gid=5"), gid5, "{data}");
        }
    }

    fn setattrs_of(calls: &[Call]) -> Vec<(PathBuf, bool, u64)> {
        calls
            .iter()
            .filter_map(|c| match c {
                Call::MountSetattr {
                    target,
                    recursive,
                    attr_set,
                    ..
                } => Some((target.clone(), *recursive, *attr_set)),
                _ => None,
            })
            .collect()
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
        // The root filesystem and /dev are nodev; the default devices are the container's own
        // nodes, each bound onto itself before /dev is made nodev, so they open (and a chmod of
        // them changes no host inode).
        assert_eq!(
            setattrs_of(&calls)[0],
            ("/r".into(), true, MOUNT_ATTR_NODEV)
        );
        let devtmpfs = m.iter().position(|x| x.1 == Path::new("/r/dev")).unwrap();
        assert!(m[devtmpfs].3.contains(MsFlags::MS_NOSUID));
        assert!(!m[devtmpfs].3.contains(MsFlags::MS_NODEV));
        let remount = m
            .iter()
            .position(|x| x.1 == Path::new("/r/dev") && x.3.contains(MsFlags::MS_REMOUNT))
            .expect("/dev is remounted nodev");
        assert!(m[remount].3.contains(MsFlags::MS_BIND | MsFlags::MS_NODEV));
        for (dev, major, minor) in [
            ("null", 1, 3),
            ("zero", 1, 5),
            ("full", 1, 7),
            ("random", 1, 8),
            ("urandom", 1, 9),
            ("tty", 5, 0),
        ] {
            let node = Path::new("/r/dev").join(dev);
            assert!(calls.contains(&Call::MknodChar(node.clone(), 0o666, major, minor)));
            let bind = m
                .iter()
                .position(|x| x == &(Some(node.clone()), node.clone(), None, MsFlags::MS_BIND))
                .unwrap_or_else(|| panic!("{dev} bound onto itself"));
            assert!(devtmpfs < bind && bind < remount);
        }
        assert!(calls.contains(&Call::Symlink("pts/ptmx".into(), "/r/dev/ptmx".into())));
        assert!(calls.contains(&Call::Symlink(
            "/proc/self/fd/1".into(),
            "/r/dev/stdout".into()
        )));
        assert!(m.iter().any(|x| x.2.as_deref() == Some("devpts")));
        // The ro bind is a recursive bind, then read-only on it and every mount below it.
        let i = m.iter().position(|x| x.1 == Path::new("/r/src")).unwrap();
        assert_eq!(m[i].0.as_deref(), Some(Path::new("/host/src")));
        assert!(m[i].3.contains(MsFlags::MS_BIND | MsFlags::MS_REC));
        assert!(setattrs_of(&calls).contains(&("/r/src".into(), true, MOUNT_ATTR_RDONLY)));
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
    fn devices_fall_back_to_the_hosts_nodes_where_mknod_is_refused() {
        // In a user namespace (rootless) mknod fails with EPERM: the host's nodes are bound,
        // which the container's root does not own there and so cannot chmod.
        let sys = RecordingSyscall {
            mknod_errno: Some(libc::EPERM),
            ..RecordingSyscall::new(&[], &[])
        };
        setup_and_pivot(&sys, &plan(Network::None, vec![])).unwrap();
        let calls = sys.calls();
        let m = mounts_of(&calls);
        assert!(calls.contains(&Call::Touch("/r/dev/null".into())));
        assert!(m.contains(&(
            Some("/dev/null".into()),
            "/r/dev/null".into(),
            None,
            MsFlags::MS_BIND
        )));
        // Any other mknod failure is an error, not a silent fallback.
        let sys = RecordingSyscall {
            mknod_errno: Some(libc::ENOSPC),
            ..RecordingSyscall::new(&[], &[])
        };
        let err = setup_and_pivot(&sys, &plan(Network::None, vec![])).unwrap_err();
        assert!(err.to_string().contains("mknod /r/dev/null"), "{err}");
    }

    #[test]
    fn binds_get_nodev_when_no_device_cgroup_guards_them() {
        let bind = |readonly| PlannedMount {
            target: "/r/d".into(),
            kind: MountKind::Bind {
                source: "/dev".into(),
                readonly,
            },
        };
        let sys = RecordingSyscall::new(&[], &[]);
        setup_and_pivot(&sys, &plan(Network::None, vec![bind(false)])).unwrap();
        // With a device cgroup a rw bind is left as it is (Docker's answers: the host's
        // /dev/null under a bind opens).
        assert!(!setattrs_of(&sys.calls())
            .iter()
            .any(|x| x.0 == Path::new("/r/d")));

        let sys = RecordingSyscall::new(&[], &[]);
        let mut p = plan(Network::None, vec![bind(true)]);
        p.nodev_binds = true;
        setup_and_pivot(&sys, &p).unwrap();
        assert!(setattrs_of(&sys.calls()).contains(&(
            "/r/d".into(),
            true,
            MOUNT_ATTR_RDONLY | MOUNT_ATTR_NODEV
        )));
    }

    const MOUNTINFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:5 / /dev rw,nosuid,relatime shared:2 - devtmpfs udev rw
31 30 0:6 / /dev/shm rw,nosuid,nodev shared:3 - tmpfs tmpfs rw
40 22 0:30 / /r/src rw,relatime - ext4 /dev/sda1 rw
41 40 0:5 / /r/src/dev rw,nosuid,relatime - devtmpfs udev rw
42 41 0:6 / /r/src/dev/shm rw,nosuid,nodev - tmpfs tmpfs rw
43 40 0:21 / /r/src/proc rw,nosuid,nodev,noexec,relatime - proc proc rw
44 40 0:40 / /r/src/my\\040dir ro,noatime - tmpfs tmpfs rw
45 43 0:41 / /r/src/proc/sys/fs/binfmt_misc rw,relatime - binfmt_misc binfmt_misc rw
46 22 0:42 / /r/srcother rw,relatime - tmpfs tmpfs rw
47 40 0:43 / /r/src/dev rw,nosuid,noexec - tmpfs tmpfs rw
";

    #[test]
    fn mountinfo_lists_a_mount_and_everything_below_it_with_own_flags() {
        let t = mounts_at_or_below(MOUNTINFO, Path::new("/r/src"));
        let points: Vec<&Path> = t.iter().map(|(p, _)| p.as_path()).collect();
        assert_eq!(
            points,
            [
                "/r/src",
                "/r/src/dev",
                "/r/src/dev/shm",
                "/r/src/proc",
                "/r/src/my dir",
                "/r/src/proc/sys/fs/binfmt_misc",
            ]
            .map(Path::new)
        );
        // /r/src/dev was mounted over: the top mount's flags.
        assert_eq!(
            t[1].1,
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_STRICTATIME
        );
        assert_eq!(
            t[3].1,
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_RELATIME
        );
        assert_eq!(t[4].1, MsFlags::MS_RDONLY | MsFlags::MS_NOATIME);
    }

    #[test]
    fn without_mount_setattr_each_submount_is_remounted_read_only() {
        let mut sys = RecordingSyscall::new(&[], &[]);
        sys.mountinfo = MOUNTINFO.to_string();
        sys.mount_setattr_errno = Some(libc::ENOSYS);
        set_attrs_recursive(&sys, Path::new("/r/src"), MOUNT_ATTR_RDONLY).unwrap();
        let calls = sys.calls();
        assert_eq!(calls[1], Call::Mountinfo);
        let remounts = mounts_of(&calls);
        assert_eq!(remounts.len(), 6);
        for (source, target, _, flags) in &remounts {
            assert!(source.is_none());
            assert!(
                flags.contains(MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY),
                "{target:?}"
            );
        }
        // Each keeps its own flags (a remount sets them all).
        let proc = remounts
            .iter()
            .find(|x| x.1 == Path::new("/r/src/proc"))
            .unwrap();
        assert!(proc
            .3
            .contains(MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC));
        assert!(!remounts.iter().any(|x| x.1 == Path::new("/r/srcother")));

        // Another error is the caller's.
        let mut sys = RecordingSyscall::new(&[], &[]);
        sys.mount_setattr_errno = Some(libc::EBUSY);
        assert!(set_attrs_recursive(&sys, Path::new("/r/src"), MOUNT_ATTR_RDONLY).is_err());
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
        // The root stays writable unless asked.
        assert!(!m.iter().any(|x| x.1 == Path::new("/")));
    }

    #[test]
    fn read_only_remounts_the_root_last_keeping_nodev() {
        let sys = RecordingSyscall::new(&[], &[]);
        let mut p = plan(Network::None, vec![]);
        p.read_only = true;
        finish_in_root(&sys, &p).unwrap();
        let calls = sys.calls();
        let m = mounts_of(&calls);
        let last = m.last().unwrap();
        assert_eq!(last.1, Path::new("/"));
        assert_eq!(
            last.3,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | MsFlags::MS_NODEV
        );
        // After the working directory is made (it may not exist in the image).
        let mkdir = calls
            .iter()
            .position(|c| *c == Call::MkdirAll("/work".into(), 0o755))
            .unwrap();
        let remount = calls
            .iter()
            .rposition(|c| matches!(c, Call::Mount { .. }))
            .unwrap();
        assert!(mkdir < remount);
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
