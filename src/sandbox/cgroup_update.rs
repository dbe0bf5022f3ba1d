//! Changing a running execution's limits (`kiln update`): the files of the cgroup its init is
//! in, found from `/proc/<pid>/cgroup` (`cgroup::dir_of`). On v1 a limit whose controller the
//! execution was not put in at start (`cpu` or `cpuset` without `--cpu-shares`/`--cpuset-cpus`)
//! gets a cgroup `kiln/<same name>` in that controller, and every process of the execution is
//! moved into it; the owner does not know that directory, so it is removed by
//! `cgroup::recover` once the owner is gone (its name starts with the owner's pid).

use std::io;
use std::path::{Path, PathBuf};

use super::cgroup::{self, CgroupVersion};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// New limits; `None` leaves one as it is.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    pub memory_bytes: Option<u64>,
    pub cpu_shares: Option<u64>,
    pub cpuset: Option<String>,
    /// -1 or 0: no limit.
    pub pids_limit: Option<i64>,
}

fn write(path: &Path, value: &str) -> io::Result<()> {
    std::fs::write(path, value).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("write {value:?} to {}: {e}", path.display()),
        )
    })
}

/// A cpuset list (`0-3`, `0,2`) names only CPUs this machine has online.
pub fn check_cpuset(list: &str) -> anyhow::Result<()> {
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap_or_default();
    let parse = |s: &str| -> Option<Vec<u32>> {
        let mut out = Vec::new();
        for part in s.trim().split(',').filter(|p| !p.is_empty()) {
            match part.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (a.trim().parse::<u32>().ok()?, b.trim().parse::<u32>().ok()?);
                    if a > b {
                        return None;
                    }
                    out.extend(a..=b);
                }
                None => out.push(part.trim().parse().ok()?),
            }
        }
        Some(out)
    };
    let Some(want) = parse(list).filter(|w| !w.is_empty()) else {
        anyhow::bail!("invalid --cpuset-cpus {list:?}: expected a list such as 0-3 or 0,2");
    };
    if let Some(have) = parse(&online).filter(|h| !h.is_empty()) {
        if let Some(cpu) = want.iter().find(|c| !have.contains(c)) {
            anyhow::bail!(
                "invalid --cpuset-cpus {list:?}: CPU {cpu} is not available (online: {})",
                online.trim()
            );
        }
    }
    Ok(())
}

/// Applies `limits` to the cgroup of process `pid` (an execution's init).
pub fn apply(pid: i32, limits: &Limits) -> io::Result<()> {
    match cgroup::detect() {
        CgroupVersion::V2 => apply_v2(pid, limits),
        CgroupVersion::V1 => apply_v1(pid, limits),
    }
}

fn no_cgroup(pid: i32, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("process {pid} is in no kiln {what} cgroup (is it a kiln container?)"),
    )
}

fn apply_v2(pid: i32, l: &Limits) -> io::Result<()> {
    let dir = cgroup::dir_of(pid, "").ok_or_else(|| no_cgroup(pid, "v2"))?;
    if let Some(bytes) = l.memory_bytes {
        write(&dir.join("memory.max"), &bytes.to_string())?;
    }
    if let Some(shares) = l.cpu_shares {
        write(
            &dir.join("cpu.weight"),
            &cgroup::shares_to_weight(shares).to_string(),
        )?;
    }
    if let Some(cpus) = &l.cpuset {
        write(&dir.join("cpuset.cpus"), cpus)?;
    }
    if let Some(p) = l.pids_limit {
        write(&dir.join("pids.max"), &pids_value(p))?;
    }
    Ok(())
}

fn pids_value(p: i64) -> String {
    if p > 0 {
        p.to_string()
    } else {
        "max".into()
    }
}

fn apply_v1(pid: i32, l: &Limits) -> io::Result<()> {
    if let Some(bytes) = l.memory_bytes {
        let dir = cgroup::dir_of(pid, "memory").ok_or_else(|| no_cgroup(pid, "memory"))?;
        let limit = dir.join("memory.limit_in_bytes");
        let memsw = dir.join("memory.memsw.limit_in_bytes");
        // memory <= memory+swap at every moment: raise memsw first, lower it last.
        let current: u64 = std::fs::read_to_string(&limit)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(u64::MAX);
        if memsw.exists() && bytes > current {
            write(&memsw, &bytes.to_string())?;
            write(&limit, &bytes.to_string())?;
        } else {
            write(&limit, &bytes.to_string())?;
            if memsw.exists() {
                write(&memsw, &bytes.to_string())?;
            }
        }
    }
    if let Some(shares) = l.cpu_shares {
        let dir = controller_dir(pid, "cpu")?;
        write(&dir.join("cpu.shares"), &shares.to_string())?;
    }
    if let Some(cpus) = &l.cpuset {
        let dir = controller_dir(pid, "cpuset")?;
        write(&dir.join("cpuset.cpus"), cpus)?;
    }
    if let Some(p) = l.pids_limit {
        let dir = controller_dir(pid, "pids")?;
        write(&dir.join("pids.max"), &pids_value(p))?;
    }
    Ok(())
}

/// The execution's cgroup in the v1 `controller`, made (and every process of the execution
/// moved into it) when the execution has none there.
fn controller_dir(pid: i32, controller: &str) -> io::Result<PathBuf> {
    if let Some(dir) = cgroup::dir_of(pid, controller) {
        return Ok(dir);
    }
    // The execution's cgroup name and its processes, from a controller it is in.
    let (name, procs) = ["memory", "pids", "freezer", "cpuacct", "devices"]
        .iter()
        .find_map(|c| {
            let d = cgroup::dir_of(pid, c)?;
            let procs = std::fs::read_to_string(d.join("cgroup.procs")).ok()?;
            Some((d.file_name()?.to_os_string(), procs))
        })
        .ok_or_else(|| no_cgroup(pid, "v1"))?;
    let root = Path::new(CGROUP_ROOT).join(controller);
    if !root.join("cgroup.procs").exists() {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("the cgroup v1 {controller} controller is not mounted on this machine"),
        ));
    }
    let parent = root.join("kiln");
    if !parent.exists() {
        std::fs::create_dir_all(&parent)?;
        if controller == "cpuset" {
            copy_cpuset(&root, &parent)?;
        }
    }
    let dir = parent.join(&name);
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("mkdir {}: {e}", dir.display()),
            ))
        }
    }
    if controller == "cpuset" {
        copy_cpuset(&parent, &dir)?;
    }
    for p in procs.lines().filter(|l| !l.trim().is_empty()) {
        // A process that ended meanwhile cannot be moved; the rest must be.
        if let Err(e) = write(&dir.join("cgroup.procs"), p.trim()) {
            if Path::new(&format!("/proc/{}", p.trim())).exists() {
                return Err(e);
            }
        }
    }
    Ok(dir)
}

fn copy_cpuset(from: &Path, to: &Path) -> io::Result<()> {
    for f in ["cpuset.cpus", "cpuset.mems"] {
        let v = std::fs::read_to_string(from.join(f))?;
        write(&to.join(f), v.trim())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpuset_lists_are_checked() {
        assert!(check_cpuset("0").is_ok());
        assert!(check_cpuset("x").is_err());
        assert!(check_cpuset("3-1").is_err());
        assert!(check_cpuset("").is_err());
        assert!(check_cpuset("100000").is_err());
    }
}
