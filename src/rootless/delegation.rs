//! The cgroup v2 subtree delegated to a rootless kiln: where its containers' cgroups go when kiln
//! runs as an unprivileged user.
//!
//! A user owns a cgroup v2 subtree when the manager above hands it over (systemd's
//! `Delegate=yes`: `systemd-run --user --scope -p Delegate=yes kiln ...`, or a pod's own
//! cgroup namespace). kiln finds it from its own cgroup (`/proc/self/cgroup`'s `0::` line): the
//! highest ancestor, walking up from there, whose directory and `cgroup.procs` belong to the
//! user. Containers get `DELEGATED/kiln/<pid>.<n>`, as root's get `/sys/fs/cgroup/kiln/...`.
//!
//! Which controllers the subtree has is the parent's choice (`cgroup.controllers`); a limit
//! needing one it lacks fails with one error naming it. Without controllers the subtree still
//! gives what every v2 cgroup has: `cgroup.freeze` (pause/unpause) and `cgroup.kill`.
//!
//! cgroup v2's "no internal processes" rule: a cgroup holding processes cannot hand controllers
//! to its children. When the delegated cgroup holds kiln itself (the usual `systemd-run
//! --scope`), kiln moves itself into the leaf `DELEGATED/kiln-processes` before enabling any.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// A delegated cgroup v2 subtree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delegation {
    /// The cgroup v2 mount point (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on a hybrid
    /// system).
    pub mount: PathBuf,
    /// The delegated directory (under `mount`).
    pub dir: PathBuf,
    /// The controllers it has (its `cgroup.controllers`).
    pub controllers: Vec<String>,
}

/// Where cgroup v2 is mounted: the unified /sys/fs/cgroup, else a hybrid system's
/// /sys/fs/cgroup/unified.
pub fn unified_mount() -> Option<PathBuf> {
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .map(PathBuf::from)
        .find(|m| m.join("cgroup.controllers").exists())
}

/// The subtree delegated to this (rootless) process, found once; `Err` says why there is none.
pub fn current() -> &'static Result<Delegation, String> {
    static FOUND: OnceLock<Result<Delegation, String>> = OnceLock::new();
    FOUND.get_or_init(|| {
        let Some(mount) = unified_mount() else {
            return Err(
                "this machine has no cgroup v2 hierarchy (cgroup v1 cannot be delegated to a \
                 user)"
                    .to_string(),
            );
        };
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        find(&mount, &own, nix::unistd::geteuid().as_raw())
    })
}

/// The delegated subtree for a process whose `/proc/self/cgroup` reads `own_cgroup`, on the
/// v2 hierarchy at `mount`, for owner `uid` (as the process sees ids).
pub fn find(mount: &Path, own_cgroup: &str, uid: u32) -> Result<Delegation, String> {
    let rel = own_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::trim)
        .ok_or("kiln is in no cgroup v2 cgroup (/proc/self/cgroup has no 0:: line)")?;
    if rel.split('/').any(|c| c == "..") {
        return Err(format!("kiln's cgroup path {rel:?} is not usable"));
    }
    let own_dir = mount.join(rel.trim_start_matches('/'));
    let mut top: Option<PathBuf> = None;
    let mut dir = own_dir.as_path();
    // Walk up while the directory is the user's; stop below the mount point (the root cgroup
    // is never delegated).
    while dir != mount && dir.starts_with(mount) {
        if !owned_and_writable(dir, uid) {
            break;
        }
        top = Some(dir.to_path_buf());
        match dir.parent() {
            Some(p) => dir = p,
            None => break,
        }
    }
    let Some(dir) = top else {
        return Err(format!(
            "your cgroup {} is not delegated to you (it is not yours to write); start kiln in a \
             delegated scope: `systemd-run --user --scope -p Delegate=yes kiln ...`",
            own_dir.display()
        ));
    };
    let controllers = std::fs::read_to_string(dir.join("cgroup.controllers"))
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect();
    Ok(Delegation {
        mount: mount.to_path_buf(),
        dir,
        controllers,
    })
}

fn owned_and_writable(dir: &Path, uid: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    let owned = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.uid() == uid);
    owned(dir)
        && owned(&dir.join("cgroup.procs"))
        && nix::unistd::access(&dir.join("cgroup.procs"), nix::unistd::AccessFlags::W_OK).is_ok()
}

impl Delegation {
    /// The parent of the containers' cgroups.
    pub fn kiln_dir(&self) -> PathBuf {
        self.dir.join("kiln")
    }

    /// The controllers, as a message lists them.
    pub fn controllers_text(&self) -> String {
        if self.controllers.is_empty() {
            "none".to_string()
        } else {
            self.controllers.join(" ")
        }
    }

    /// The controllers of `wanted` that the subtree lacks.
    pub fn missing<'a>(&self, wanted: &[&'a str]) -> Vec<&'a str> {
        wanted
            .iter()
            .copied()
            .filter(|w| !self.controllers.iter().any(|c| c == w))
            .collect()
    }

    /// Moves this process into the leaf `kiln-processes` when it sits in the delegated cgroup
    /// itself, where it would keep [`Delegation::prepare`] from handing controllers down. The
    /// namespace holder, which outlives the kiln that started it, does this once at its start.
    pub fn step_aside(&self) {
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let Some(rel) = own.lines().find_map(|l| l.strip_prefix("0::")) else {
            return;
        };
        if self.mount.join(rel.trim().trim_start_matches('/')) == self.dir {
            let leaf = self.dir.join("kiln-processes");
            let _ = std::fs::create_dir_all(&leaf);
            let _ = std::fs::write(leaf.join("cgroup.procs"), "0");
        }
    }

    /// Makes `kiln/` and hands it `wanted` (each must be in `controllers`): enabled in the
    /// delegated cgroup's and in `kiln/`'s `cgroup.subtree_control`. When the delegated cgroup
    /// itself holds this process, it first moves into the leaf `kiln-processes`.
    pub fn prepare(&self, wanted: &[&str]) -> io::Result<PathBuf> {
        let kiln = self.kiln_dir();
        std::fs::create_dir_all(&kiln)
            .map_err(|e| io::Error::new(e.kind(), format!("mkdir {}: {e}", kiln.display())))?;
        if wanted.is_empty() {
            return Ok(kiln);
        }
        let enable: String = wanted
            .iter()
            .map(|c| format!("+{c}"))
            .collect::<Vec<_>>()
            .join(" ");
        let control = self.dir.join("cgroup.subtree_control");
        if std::fs::write(&control, &enable).is_err() {
            let leaf = self.dir.join("kiln-processes");
            std::fs::create_dir_all(&leaf)?;
            std::fs::write(leaf.join("cgroup.procs"), "0").map_err(|e| {
                io::Error::new(e.kind(), format!("move kiln into {}: {e}", leaf.display()))
            })?;
            std::fs::write(&control, &enable).map_err(|e| {
                let others = std::fs::read_to_string(self.dir.join("cgroup.procs"))
                    .unwrap_or_default()
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ");
                io::Error::new(
                    e.kind(),
                    format!(
                        "enable {enable} in {}: {e} (cgroup v2 gives no controllers to the \
                         children of a cgroup that holds processes; it holds: {others}): start \
                         kiln in a scope of its own, `systemd-run --user --scope -p Delegate=yes \
                         kiln ...`",
                        control.display()
                    ),
                )
            })?;
        }
        let inner = kiln.join("cgroup.subtree_control");
        std::fs::write(&inner, &enable).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("write {enable:?} to {}: {e}", inner.display()),
            )
        })?;
        Ok(kiln)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cgroup directory and its ancestors below `mount`, each with its `cgroup.procs`.
    fn cgroup_dir(mount: &Path, rel: &str) {
        let mut dir = mount.to_path_buf();
        for part in rel.split('/') {
            dir.push(part);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("cgroup.procs"), "").unwrap();
        }
    }

    #[test]
    fn the_delegated_subtree_is_the_highest_ancestor_of_ours() {
        let mount = tempfile::tempdir().unwrap();
        let m = mount.path();
        std::fs::write(m.join("cgroup.procs"), "").unwrap();
        cgroup_dir(m, "user.slice/user@1000.service/app.slice/run-1.scope");
        std::fs::write(
            m.join("user.slice/user@1000.service/app.slice/run-1.scope/cgroup.controllers"),
            "cpu memory pids\n",
        )
        .unwrap();
        let me = nix::unistd::geteuid().as_raw();
        let own = "0::/user.slice/user@1000.service/app.slice/run-1.scope\n";
        // Everything in the temp dir is ours: the walk stops below the mount point.
        let d = find(m, own, me).unwrap();
        assert_eq!(d.dir, m.join("user.slice"));

        // As another owner, the same tree is not delegated, and the error says how to get one.
        let err = find(m, own, me + 1).unwrap_err();
        assert!(err.contains("systemd-run --user --scope"), "{err}");

        // The ancestors above the scope not ours (seen as another uid): the scope alone.
        if me == 0 {
            let other = 4242;
            for p in [
                "user.slice",
                "user.slice/user@1000.service",
                "user.slice/user@1000.service/app.slice",
            ] {
                std::os::unix::fs::chown(m.join(p), Some(other), None).unwrap();
            }
            let d = find(m, own, me).unwrap();
            assert_eq!(
                d.dir,
                m.join("user.slice/user@1000.service/app.slice/run-1.scope")
            );
            assert_eq!(d.controllers, ["cpu", "memory", "pids"]);
            assert_eq!(d.missing(&["memory", "cpuset"]), ["cpuset"]);
        }
    }

    #[test]
    fn a_cgroup_path_without_a_v2_line_or_with_dots_is_refused() {
        let m = Path::new("/nonexistent");
        assert!(find(m, "4:memory:/x\n", 0).is_err());
        assert!(find(m, "0::/a/../b\n", 0).is_err());
    }
}
