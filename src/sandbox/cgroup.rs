//! Resource limits and device control through cgroups, v1 (one directory per controller, as on
//! this machine) or v2 (one unified directory). A cgroup is made per execution under `kiln/` and
//! removed when it ends; `recover` removes the ones a killed kiln left behind.
//!
//! Every execution gets Docker's default device rules (`DEFAULT_DEVICES`): on v1 in the
//! `devices` controller (`devices.deny a`, then one `devices.allow` per rule), on v2 as a
//! `BPF_PROG_TYPE_CGROUP_DEVICE` program attached to the cgroup (`device_filter`). Where neither
//! is available kiln says so once and relies on `nodev` mounts alone (see `rootfs`).

use std::io;
use std::path::{Path, PathBuf};

use super::{device_filter, Resources};
use crate::rootless::delegation;

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The v1 controllers kiln makes cgroups in (`devices`, `freezer` and the accounting ones of
/// `STATS_V1_CONTROLLERS` for every execution, `cpu` and `cpuset` for limits); `recover` and
/// `kiln exec` look in each.
/// `freezer` comes first: recovery thaws and empties a frozen cgroup there before the others.
pub const V1_CONTROLLERS: &[&str] = &[
    "freezer", "memory", "cpu", "cpuacct", "cpuset", "pids", "blkio", "devices",
];

/// The v1 controllers every execution joins (where mounted) so `kiln stats` can account for
/// it: CPU time, memory, block I/O, processes. Limits use `memory` and `pids` too.
pub const STATS_V1_CONTROLLERS: &[&str] = &["memory", "cpuacct", "pids", "blkio"];

/// Whether the v1 `controller` is mounted at /sys/fs/cgroup/<controller>.
fn v1_mounted(controller: &str) -> bool {
    Path::new(CGROUP_ROOT)
        .join(controller)
        .join("cgroup.procs")
        .exists()
}

/// A device cgroup rule: `kind` `b` or `c`, `None` for `*`, `access` of `r` `w` `m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceRule {
    pub kind: char,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    pub access: &'static str,
}

const fn rule(
    kind: char,
    major: Option<u32>,
    minor: Option<u32>,
    access: &'static str,
) -> DeviceRule {
    DeviceRule {
        kind,
        major,
        minor,
        access,
    }
}

/// Docker's default device list: mknod of any node, and read/write/mknod of null, zero, full,
/// random, urandom, tty, console, ptmx and the ptys; everything else is denied.
pub const DEFAULT_DEVICES: &[DeviceRule] = &[
    rule('c', None, None, "m"),
    rule('b', None, None, "m"),
    rule('c', Some(1), Some(3), "rwm"),
    rule('c', Some(1), Some(5), "rwm"),
    rule('c', Some(1), Some(7), "rwm"),
    rule('c', Some(1), Some(8), "rwm"),
    rule('c', Some(1), Some(9), "rwm"),
    rule('c', Some(5), Some(0), "rwm"),
    rule('c', Some(5), Some(1), "rwm"),
    rule('c', Some(5), Some(2), "rwm"),
    rule('c', Some(136), None, "rwm"),
];

impl DeviceRule {
    /// The line for v1's `devices.allow` (`c 1:3 rwm`, `c *:* m`).
    pub fn v1_line(&self) -> String {
        let n = |v: Option<u32>| v.map_or("*".to_string(), |v| v.to_string());
        format!(
            "{} {}:{} {}",
            self.kind,
            n(self.major),
            n(self.minor),
            self.access
        )
    }
}

/// Says once per process that devices are guarded by `nodev` mounts only.
fn warn_no_device_cgroup(why: &str) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        eprintln!(
            "WARNING: no device cgroup ({why}): containers are kept from devices by nodev mounts only"
        )
    });
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

/// Which hierarchy holds the controllers: v2 when /sys/fs/cgroup is the unified hierarchy,
/// otherwise v1 (hybrid systems keep a controller-less cgroup2 at /sys/fs/cgroup/unified).
/// Moves the calling process into the cgroup whose `cgroup.procs` file is `procs` (writes "0").
/// Only raw syscalls and no allocation, so a forked child of a multi-threaded process may call
/// it before exec. False when the file could not be opened or written.
pub fn join_raw(procs: &std::ffi::CStr) -> bool {
    // SAFETY: open/write/close of a file by a NUL-terminated path; the descriptor is closed.
    unsafe {
        let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        let ok = fd >= 0 && libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
        if fd >= 0 {
            libc::close(fd);
        }
        ok
    }
}

pub fn detect() -> CgroupVersion {
    // Rootless kiln uses the v2 subtree delegated to it, also on a hybrid system.
    if crate::rootless::in_userns() && delegation::current().is_ok() {
        return CgroupVersion::V2;
    }
    if Path::new(CGROUP_ROOT).join("cgroup.controllers").exists() {
        CgroupVersion::V2
    } else {
        CgroupVersion::V1
    }
}

/// One execution's cgroup.
#[derive(Debug)]
pub struct Cgroup {
    version: CgroupVersion,
    /// v1: one directory per controller used; v2: the single directory.
    dirs: Vec<PathBuf>,
    memory_dir: Option<PathBuf>,
    /// A device cgroup (v1) or device program (v2) restricts the execution to `DEFAULT_DEVICES`.
    devices: bool,
}

fn write(path: &Path, value: &str) -> io::Result<()> {
    std::fs::write(path, value).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("write {value:?} to {}: {e}", path.display()),
        )
    })
}

/// cgroup v1 shares (2..262144, default 1024) to v2 weight (1..10000, default 100), as runc does.
pub fn shares_to_weight(shares: u64) -> u64 {
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

/// The v2 mount point and the directory holding `kiln/`: the delegated subtree for rootless
/// kiln, else /sys/fs/cgroup.
fn v2_base() -> (PathBuf, PathBuf) {
    if crate::rootless::in_userns() {
        if let Ok(d) = delegation::current() {
            return (d.mount.clone(), d.dir.clone());
        }
    }
    (PathBuf::from(CGROUP_ROOT), PathBuf::from(CGROUP_ROOT))
}

/// Why limits fail rootless: no cgroup v2 subtree delegated to the user (on v1 there is none),
/// or one without the controllers.
pub fn rootless_limits_error() -> String {
    let why = match delegation::current() {
        Err(why) => why.clone(),
        Ok(d) => format!(
            "the cgroup delegated to you, {}, lacks their controllers (it has: {})",
            d.dir.display(),
            d.controllers_text()
        ),
    };
    format!(
        "resource limits (-m/--memory, --cpus, --cpuset-cpus, --pids-limit, --cpu-shares) need \
         cgroups, which kiln running rootless cannot use: {why}; leave the limits out or run \
         kiln as root (`kiln info` lists what rootless kiln has)"
    )
}

impl Cgroup {
    /// Makes `kiln/<name>` with the limits in `res` and Docker's default device rules; `None`
    /// when `res` asks for nothing and no device control is available (a warning says so once).
    pub fn create(name: &str, res: &Resources) -> io::Result<Option<Cgroup>> {
        Self::create_with_devices(name, res, DEFAULT_DEVICES)
    }

    /// `create` with these device rules instead of Docker's default ones (a privileged
    /// execution's: `privileged::ALL_DEVICES`).
    pub fn create_with_devices(
        name: &str,
        res: &Resources,
        rules: &'static [DeviceRule],
    ) -> io::Result<Option<Cgroup>> {
        // Rootless: a cgroup in the subtree delegated to the user, if any (containers: for
        // pause and stats; limits: where the subtree has their controllers). Without one, no
        // cgroup unless limits are asked, and then one clear error. Devices stay guarded by
        // `nodev` mounts and the host's nodes bound into /dev (a device program needs the
        // host's CAP_SYS_ADMIN).
        if crate::rootless::in_userns() {
            return match delegation::current() {
                Ok(d) if !res.is_empty() || !res.unobserved => Self::create_delegated(d, name, res),
                Ok(_) => Ok(None),
                Err(_) if res.is_empty() => Ok(None),
                Err(_) => Err(io::Error::other(rootless_limits_error())),
            };
        }
        match detect() {
            CgroupVersion::V1 => {
                let devices = Path::new(CGROUP_ROOT)
                    .join("devices/devices.allow")
                    .exists();
                let freezer =
                    !res.unobserved && Path::new(CGROUP_ROOT).join("freezer/cgroup.procs").exists();
                if !devices {
                    warn_no_device_cgroup("the v1 devices controller is not mounted");
                    let accounting =
                        !res.unobserved && STATS_V1_CONTROLLERS.iter().any(|c| v1_mounted(c));
                    if res.is_empty() && !freezer && !accounting {
                        return Ok(None);
                    }
                }
                let cg = Self::create_v1(name, res, devices.then_some(rules), freezer)?;
                Ok((!cg.dirs.is_empty()).then_some(cg))
            }
            CgroupVersion::V2 => Self::create_v2(name, res, rules),
        }
    }

    fn create_v1(
        name: &str,
        res: &Resources,
        devices: Option<&[DeviceRule]>,
        freezer: bool,
    ) -> io::Result<Cgroup> {
        let mut cg = Cgroup {
            version: CgroupVersion::V1,
            dirs: Vec::new(),
            memory_dir: None,
            devices: false,
        };
        // Co-mounted controllers (`cpu,cpuacct`, reached through symlinks) share one directory:
        // it is made once, and its path is returned for each of them.
        let mut roots: Vec<(PathBuf, PathBuf)> = Vec::new();
        let mut make = |controller: &str| -> io::Result<PathBuf> {
            let root = Path::new(CGROUP_ROOT).join(controller);
            let real = root.canonicalize().unwrap_or_else(|_| root.clone());
            if let Some((_, dir)) = roots.iter().find(|(r, _)| *r == real) {
                return Ok(dir.clone());
            }
            let parent = root.join("kiln");
            if controller == "cpuset" && !parent.exists() {
                std::fs::create_dir_all(&parent)?;
                copy_cpuset(&Path::new(CGROUP_ROOT).join("cpuset"), &parent)?;
            }
            std::fs::create_dir_all(&parent)?;
            let dir = parent.join(name);
            std::fs::create_dir(&dir)
                .map_err(|e| io::Error::new(e.kind(), format!("mkdir {}: {e}", dir.display())))?;
            cg.dirs.push(dir.clone());
            roots.push((real, dir.clone()));
            Ok(dir)
        };
        let result = (|| {
            // The accounting controllers for `kiln stats`: joined when mounted; one that cannot
            // be made (kiln in a container with a read-only hierarchy) only costs its numbers.
            // A limit below asks `make` again for its controller: the same directory, or the
            // error of making it.
            for c in STATS_V1_CONTROLLERS {
                if !res.unobserved && v1_mounted(c) {
                    let _ = make(c);
                }
            }
            if let Some(bytes) = res.memory_bytes {
                let dir = make("memory")?;
                write(&dir.join("memory.limit_in_bytes"), &bytes.to_string())?;
                // With swap the limit would only slow an allocation down; count swap too
                // (unless --memory-swap says how much swap).
                let memsw = dir.join("memory.memsw.limit_in_bytes");
                match res.memory_swap {
                    Some(total) if memsw.exists() => write(&memsw, &total.to_string())?,
                    Some(_) => {
                        return Err(io::Error::new(
                            io::ErrorKind::Unsupported,
                            "--memory-swap needs swap accounting (memory.memsw.*), which this \
                             kernel does not have (boot with swapaccount=1)",
                        ))
                    }
                    None if memsw.exists() => write(&memsw, &bytes.to_string())?,
                    None => {}
                }
                if res.memory_swap.is_none() {
                    let _ = write(&dir.join("memory.swappiness"), "0");
                }
                cg.memory_dir = Some(dir);
            }
            if let Some(shares) = res.cpu_shares {
                let dir = make("cpu")?;
                write(&dir.join("cpu.shares"), &shares.to_string())?;
            }
            if let Some(quota) = res.cpu_quota_us {
                let dir = make("cpu")?;
                write(&dir.join("cpu.cfs_period_us"), "100000")?;
                write(&dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
            }
            if let Some(cpus) = &res.cpuset {
                let dir = make("cpuset")?;
                let mems =
                    std::fs::read_to_string(dir.parent().unwrap_or(&dir).join("cpuset.mems"))?;
                write(&dir.join("cpuset.mems"), mems.trim())?;
                write(&dir.join("cpuset.cpus"), cpus)?;
            }
            if let Some(pids) = res.pids_limit {
                let dir = make("pids")?;
                write(&dir.join("pids.max"), &pids.to_string())?;
            }
            Ok(())
        })();
        if let (true, Some(rules)) = (result.is_ok(), devices) {
            // A new cgroup inherits its parent's rules; "a" clears them and denies all. A rule
            // the parent does not allow is refused (EPERM, e.g. kiln inside a container): the
            // device stays denied. When the cgroup cannot be made at all, nodev mounts remain.
            let dir = Path::new(CGROUP_ROOT).join("devices/kiln").join(name);
            let made = std::fs::create_dir_all(dir.parent().unwrap_or(&dir))
                .and_then(|()| std::fs::create_dir(&dir))
                .map_err(|e| io::Error::new(e.kind(), format!("mkdir {}: {e}", dir.display())));
            match made.and_then(|()| {
                cg.dirs.push(dir.clone());
                write(&dir.join("devices.deny"), "a")
            }) {
                Ok(()) => {
                    for r in rules {
                        let _ = write(&dir.join("devices.allow"), &r.v1_line());
                    }
                    cg.devices = true;
                }
                Err(e) => {
                    warn_no_device_cgroup(&e.to_string());
                    if cg.dirs.last() == Some(&dir) {
                        cg.dirs.pop();
                        remove_dir(&dir);
                    }
                }
            }
        }
        if result.is_ok() && freezer {
            // A freezer cgroup for `kiln pause`; without one, pause says it is unavailable.
            let dir = Path::new(CGROUP_ROOT).join("freezer/kiln").join(name);
            if std::fs::create_dir_all(dir.parent().unwrap_or(&dir))
                .and_then(|()| std::fs::create_dir(&dir))
                .is_ok()
            {
                cg.dirs.push(dir);
            }
        }
        match result {
            Ok(()) => Ok(cg),
            Err(e) => {
                cg.remove();
                Err(e)
            }
        }
    }

    fn create_v2(name: &str, res: &Resources, rules: &[DeviceRule]) -> io::Result<Option<Cgroup>> {
        let root = Path::new(CGROUP_ROOT);
        let parent = root.join("kiln");
        std::fs::create_dir_all(&parent)?;
        let available =
            std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
        let wanted: Vec<&str> = ["memory", "cpu", "cpuset", "pids", "io"]
            .into_iter()
            .filter(|c| available.split_whitespace().any(|a| a == *c))
            .collect();
        let enable: String = wanted.iter().map(|c| format!("+{c} ")).collect();
        let _ = write(&root.join("cgroup.subtree_control"), enable.trim());
        let _ = write(&parent.join("cgroup.subtree_control"), enable.trim());
        let dir = parent.join(name);
        std::fs::create_dir(&dir)
            .map_err(|e| io::Error::new(e.kind(), format!("mkdir {}: {e}", dir.display())))?;
        let mut cg = Self::v2_with_limits(dir.clone(), res)?;
        match device_filter::attach(&dir, rules) {
            Ok(()) => cg.devices = true,
            Err(e) => {
                warn_no_device_cgroup(&format!("attach a device program: {e}"));
                if res.is_empty() {
                    cg.remove();
                    return Ok(None);
                }
            }
        }
        Ok(Some(cg))
    }

    /// Rootless: `DELEGATED/kiln/<name>` with the limits in `res`, each of whose controllers the
    /// delegated subtree must have. A container without limits whose cgroup cannot be made
    /// runs without one (as without delegation).
    fn create_delegated(
        d: &delegation::Delegation,
        name: &str,
        res: &Resources,
    ) -> io::Result<Option<Cgroup>> {
        let wanted = controllers_for(res);
        let missing = d.missing(&wanted);
        if !missing.is_empty() {
            return Err(io::Error::other(format!(
                "{} (needed: {})",
                rootless_limits_error(),
                missing.join(" ")
            )));
        }
        let made = d.prepare(&wanted).and_then(|parent| {
            let dir = parent.join(name);
            std::fs::create_dir(&dir)
                .map_err(|e| io::Error::new(e.kind(), format!("mkdir {}: {e}", dir.display())))?;
            Ok(dir)
        });
        let dir = match made {
            Ok(dir) => dir,
            Err(_) if res.is_empty() => return Ok(None),
            Err(e) => return Err(e),
        };
        Self::v2_with_limits(dir, res).map(Some)
    }

    /// The v2 cgroup `dir` (made by the caller) with `res`'s limits written; removed again when
    /// one cannot be.
    fn v2_with_limits(dir: PathBuf, res: &Resources) -> io::Result<Cgroup> {
        let cg = Cgroup {
            version: CgroupVersion::V2,
            memory_dir: res.memory_bytes.map(|_| dir.clone()),
            dirs: vec![dir],
            devices: false,
        };
        if let Err(e) = write_v2_limits(&cg.dirs[0], res) {
            cg.remove();
            return Err(e);
        }
        Ok(cg)
    }

    /// Whether a device cgroup or program restricts the execution to `DEFAULT_DEVICES`.
    pub fn restricts_devices(&self) -> bool {
        self.devices
    }

    pub fn version(&self) -> CgroupVersion {
        self.version
    }

    /// The `cgroup.procs` files a process writes itself into (one per v1 controller).
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// How many processes the kernel's OOM killer killed in this cgroup.
    pub fn oom_kills(&self) -> u64 {
        let Some(dir) = &self.memory_dir else {
            return 0;
        };
        let file = match self.version {
            CgroupVersion::V1 => "memory.oom_control",
            CgroupVersion::V2 => "memory.events",
        };
        std::fs::read_to_string(dir.join(file))
            .unwrap_or_default()
            .lines()
            .find_map(|l| {
                l.strip_prefix("oom_kill ")
                    .and_then(|n| n.trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// Kills whatever is still inside and removes the directories.
    pub fn remove(&self) {
        remove_dirs(&self.dirs);
    }

    /// The cgroup's directories (one per v1 controller).
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// What the container sees at /sys/fs/cgroup: its own cgroup, read-only, as runc shows
    /// it (so a JVM or a Go runtime sizes itself to `-m` and `--cpus`). v1: each controller's
    /// directory at /sys/fs/cgroup/<controller>; v2: the one directory at /sys/fs/cgroup.
    pub fn views(&self) -> Vec<super::rootfs::CgroupView> {
        self.dirs
            .iter()
            .map(|dir| super::rootfs::CgroupView {
                host_dir: dir.clone(),
                controller: match self.version {
                    CgroupVersion::V2 => None,
                    CgroupVersion::V1 => dir
                        .strip_prefix(CGROUP_ROOT)
                        .ok()
                        .and_then(|rel| rel.components().next())
                        .map(|c| c.as_os_str().to_string_lossy().into_owned()),
                },
            })
            .collect()
    }
}

/// The v2 controllers that `Resources`' limits need.
pub fn controllers_for(res: &Resources) -> Vec<&'static str> {
    let mut wanted = Vec::new();
    if res.memory_bytes.is_some() {
        wanted.push("memory");
    }
    if res.cpu_shares.is_some() || res.cpu_quota_us.is_some() {
        wanted.push("cpu");
    }
    if res.cpuset.is_some() {
        wanted.push("cpuset");
    }
    if res.pids_limit.is_some() {
        wanted.push("pids");
    }
    wanted
}

/// Writes `res`'s limits into the v2 cgroup `dir`.
fn write_v2_limits(dir: &Path, res: &Resources) -> io::Result<()> {
    if let Some(bytes) = res.memory_bytes {
        write(&dir.join("memory.max"), &bytes.to_string())?;
        let swap = dir.join("memory.swap.max");
        if swap.exists() {
            let value = match res.memory_swap {
                Some(-1) => "max".to_string(),
                Some(total) => (total as u64).saturating_sub(bytes).to_string(),
                None => "0".to_string(),
            };
            write(&swap, &value)?;
        }
    }
    if let Some(shares) = res.cpu_shares {
        write(
            &dir.join("cpu.weight"),
            &shares_to_weight(shares).to_string(),
        )?;
    }
    if let Some(cpus) = &res.cpuset {
        write(&dir.join("cpuset.cpus"), cpus)?;
    }
    if let Some(pids) = res.pids_limit {
        write(&dir.join("pids.max"), &pids.to_string())?;
    }
    if let Some(quota) = res.cpu_quota_us {
        write(&dir.join("cpu.max"), &format!("{quota} 100000"))?;
    }
    Ok(())
}

/// Kills whatever is inside these cgroup directories and removes them (thawed first: on v1 a
/// frozen task does not die of SIGKILL until it is thawed).
pub fn remove_dirs(dirs: &[PathBuf]) {
    for dir in dirs {
        thaw_dir(dir);
    }
    for dir in dirs {
        remove_dir(dir);
    }
}

/// Thaws a frozen cgroup directory (v1 freezer or v2), if it is one.
fn thaw_dir(dir: &Path) {
    let v1 = dir.join("freezer.state");
    if v1.exists() {
        let _ = std::fs::write(v1, "THAWED");
    }
    let v2 = dir.join("cgroup.freeze");
    if v2.exists() {
        let _ = std::fs::write(v2, "0");
    }
}

/// The directory of the kiln cgroup (`kiln/<pid>.<n>`) process `pid` is in: for the v1
/// `controller`, or the v2 one (`controller` ignored). Read from `/proc/<pid>/cgroup`.
pub fn dir_of(pid: i32, controller: &str) -> Option<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let (mount, base) = v2_base();
    parse_dir_of(&text, detect(), controller, &mount, &base)
}

/// `dir_of` from the text of `/proc/<pid>/cgroup`: a v1 `controller`'s
/// `/sys/fs/cgroup/<controller>/kiln/<name>`, or on v2 `<base>/kiln/<name>` (the v2 line's path
/// under `mount`).
fn parse_dir_of(
    text: &str,
    version: CgroupVersion,
    controller: &str,
    mount: &Path,
    base: &Path,
) -> Option<PathBuf> {
    text.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, full) = (parts.next()?, parts.next()?, parts.next()?);
        if full.contains("..") {
            return None;
        }
        if version == CgroupVersion::V2 && controllers.is_empty() {
            let dir = mount.join(full.trim_start_matches('/'));
            let in_kiln = dir.parent() == Some(base.join("kiln").as_path());
            return in_kiln.then_some(dir);
        }
        let rel = full.strip_prefix("/kiln/")?;
        if rel.is_empty() {
            return None;
        }
        let base = Path::new(CGROUP_ROOT);
        match version {
            CgroupVersion::V1 if controllers.split(',').any(|c| c == controller) => {
                Some(base.join(controller).join("kiln").join(rel))
            }
            _ => None,
        }
    })
}

/// The freezer of the cgroup process `pid` is in: `freezer.state` (v1) or `cgroup.freeze` (v2).
fn freezer_of(pid: i32) -> io::Result<(CgroupVersion, PathBuf)> {
    let version = detect();
    if !Path::new(&format!("/proc/{pid}")).exists() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("process {pid} is gone"),
        ));
    }
    let dir = dir_of(pid, "freezer").ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::Unsupported,
            match version {
                CgroupVersion::V1 => {
                    "the process is in no kiln freezer cgroup (is the v1 freezer \
                                      controller mounted at /sys/fs/cgroup/freezer?)"
                }
                CgroupVersion::V2 => "the process is in no kiln cgroup",
            },
        )
    })?;
    Ok((version, dir))
}

/// Whether the cgroup of process `pid` is frozen (or freezing).
pub fn is_frozen(pid: i32) -> bool {
    let Ok((version, dir)) = freezer_of(pid) else {
        return false;
    };
    match version {
        CgroupVersion::V1 => {
            std::fs::read_to_string(dir.join("freezer.state")).is_ok_and(|s| s.trim() != "THAWED")
        }
        CgroupVersion::V2 => {
            std::fs::read_to_string(dir.join("cgroup.freeze")).is_ok_and(|s| s.trim() == "1")
        }
    }
}

/// Freezes (`true`) or thaws the whole cgroup of process `pid` (every process of the
/// execution), and waits until the kernel says it is done.
pub fn set_frozen(pid: i32, frozen: bool) -> io::Result<()> {
    let (version, dir) = freezer_of(pid)?;
    let (file, value, done_file, want) = match version {
        CgroupVersion::V1 => {
            let v = if frozen { "FROZEN" } else { "THAWED" };
            ("freezer.state", v, "freezer.state", v)
        }
        CgroupVersion::V2 => (
            "cgroup.freeze",
            if frozen { "1" } else { "0" },
            "cgroup.events",
            if frozen { "frozen 1" } else { "frozen 0" },
        ),
    };
    let done = |s: &str| s.lines().any(|l| l.trim() == want);
    let start = std::time::Instant::now();
    loop {
        // v1 can stay FREEZING while a task is busy in the kernel; writing again retries it.
        write(&dir.join(file), value)?;
        let state = std::fs::read_to_string(dir.join(done_file))?;
        if done(&state) {
            return Ok(());
        }
        if start.elapsed() > std::time::Duration::from_secs(10) {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "{} is still {:?} after 10 s",
                    dir.join(done_file).display(),
                    state.trim()
                ),
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

fn copy_cpuset(from: &Path, to: &Path) -> io::Result<()> {
    for f in ["cpuset.cpus", "cpuset.mems"] {
        let v = std::fs::read_to_string(from.join(f))?;
        write(&to.join(f), v.trim())?;
    }
    Ok(())
}

/// Removes one cgroup directory, killing stragglers; retries briefly because the kernel frees a
/// cgroup a moment after its last process is reaped.
fn remove_dir(dir: &Path) {
    thaw_dir(dir);
    for attempt in 0..50 {
        match std::fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(_) => {
                if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                        // SAFETY: kill(2) with a pid read from the cgroup.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(if attempt < 10 {
                    1
                } else {
                    10
                }));
            }
        }
    }
}

/// Removes cgroups under `kiln/` whose owning kiln process (the pid in the name) is gone.
///
/// The `kiln/` parents are shared by every kiln on the machine, whatever its root, so any kiln
/// that starts removes the cgroups that any killed kiln left; a live kiln's cgroups (its pid
/// exists) are never touched.
pub fn recover() {
    if crate::rootless::in_userns() {
        // Rootless kiln's cgroups are in the subtree delegated to it, if any.
        if let Ok(d) = delegation::current() {
            recover_under(&[d.kiln_dir()]);
        }
        return;
    }
    let mut parents = Vec::new();
    match detect() {
        CgroupVersion::V2 => parents.push(Path::new(CGROUP_ROOT).join("kiln")),
        CgroupVersion::V1 => {
            for c in V1_CONTROLLERS {
                parents.push(Path::new(CGROUP_ROOT).join(c).join("kiln"));
            }
        }
    }
    recover_under(&parents);
}

/// `recover` for the given `kiln/` directories; returns how many cgroups were removed.
fn recover_under(parents: &[PathBuf]) -> usize {
    let mut removed = 0;
    for parent in parents {
        let Ok(entries) = std::fs::read_dir(parent) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(owner) = name.split('.').next().and_then(|p| p.parse::<i32>().ok()) else {
                continue;
            };
            if owner > 0 && e.path().is_dir() && !crate::cleanup::process_alive(owner) {
                remove_dir(&e.path());
                removed += usize::from(!e.path().exists());
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_device_rules_are_dockers_default_list() {
        let lines: Vec<String> = DEFAULT_DEVICES.iter().map(DeviceRule::v1_line).collect();
        assert_eq!(
            lines,
            [
                "c *:* m",
                "b *:* m",
                "c 1:3 rwm",
                "c 1:5 rwm",
                "c 1:7 rwm",
                "c 1:8 rwm",
                "c 1:9 rwm",
                "c 5:0 rwm",
                "c 5:1 rwm",
                "c 5:2 rwm",
                "c 136:* rwm",
            ]
        );
    }

    #[test]
    fn recovery_removes_only_cgroups_of_dead_owners() {
        let parent = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let live = std::process::id();
        for name in [
            format!("{dead}.0"),
            format!("{dead}.7"),
            format!("{live}.0"),
            "system".to_string(),
        ] {
            std::fs::create_dir(parent.path().join(name)).unwrap();
        }
        std::fs::write(parent.path().join(format!("{dead}.9")), "").unwrap();
        let parents = [parent.path().to_path_buf(), parent.path().join("missing")];
        assert_eq!(recover_under(&parents), 2);
        let mut left: Vec<String> = std::fs::read_dir(parent.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let mut want = vec![
            format!("{dead}.9"),
            format!("{live}.0"),
            "system".to_string(),
        ];
        want.sort();
        assert_eq!(
            left, want,
            "a live owner's cgroup, files and other names stay"
        );
    }

    #[test]
    fn kiln_cgroup_of_a_process() {
        let root = Path::new(CGROUP_ROOT);
        let v1 = "6:freezer:/kiln/12.3\n5:devices:/kiln/12.3\n4:memory:/other\n1:cpu,cpuacct:/kiln/12.3\n0::/\n";
        assert_eq!(
            parse_dir_of(v1, CgroupVersion::V1, "freezer", root, root),
            Some(PathBuf::from("/sys/fs/cgroup/freezer/kiln/12.3"))
        );
        assert_eq!(
            parse_dir_of(v1, CgroupVersion::V1, "cpuacct", root, root),
            Some(PathBuf::from("/sys/fs/cgroup/cpuacct/kiln/12.3"))
        );
        assert_eq!(
            parse_dir_of(v1, CgroupVersion::V1, "memory", root, root),
            None
        );
        assert_eq!(
            parse_dir_of(v1, CgroupVersion::V2, "freezer", root, root),
            None
        );
        let v2 = "0::/kiln/7.0\n";
        assert_eq!(
            parse_dir_of(v2, CgroupVersion::V2, "", root, root),
            Some(PathBuf::from("/sys/fs/cgroup/kiln/7.0"))
        );
        assert_eq!(
            parse_dir_of("0::/kiln/../etc\n", CgroupVersion::V2, "", root, root),
            None
        );
        // Rootless on a hybrid system: the delegated subtree on the unified mount.
        let mount = Path::new("/sys/fs/cgroup/unified");
        let delegated = mount.join("user.slice/run-1.scope");
        let line = "0::/user.slice/run-1.scope/kiln/9.1\n";
        assert_eq!(
            parse_dir_of(line, CgroupVersion::V2, "", mount, &delegated),
            Some(delegated.join("kiln/9.1"))
        );
        assert_eq!(
            parse_dir_of(
                "0::/user.slice/run-1.scope/kiln-processes\n",
                CgroupVersion::V2,
                "",
                mount,
                &delegated
            ),
            None
        );
    }

    #[test]
    fn limits_name_their_controllers() {
        let res = Resources {
            memory_bytes: Some(1 << 20),
            pids_limit: Some(5),
            ..Default::default()
        };
        assert_eq!(controllers_for(&res), ["memory", "pids"]);
        assert!(controllers_for(&Resources::default()).is_empty());
    }

    #[test]
    fn shares_convert_like_runc() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
    }
}
