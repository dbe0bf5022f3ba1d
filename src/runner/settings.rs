//! Changing a container after `run`/`create`: `kiln rename` and `kiln update` (its cgroup
//! limits, live when it runs, and in its config for its next start).

use anyhow::{bail, Context, Result};

use super::state::{self, ContainerRecord, Status};
use crate::store::Store;

/// docker's rule for container names.
pub fn valid_name(n: &str) -> bool {
    n.len() >= 2
        && n.as_bytes()[0].is_ascii_alphanumeric()
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// `kiln rename OLD NEW`.
pub fn rename(store: &Store, rec: &ContainerRecord, new: &str) -> Result<()> {
    let new = new.strip_prefix('/').unwrap_or(new);
    if !valid_name(new) {
        bail!("invalid container name {new:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed");
    }
    if new == rec.name {
        bail!(
            "renaming container {}: the new name is the same as the old one",
            rec.name
        );
    }
    state::rename(store, &rec.id, new)
}

/// `kiln update`'s flags.
#[derive(Debug, Clone, Default)]
pub struct Update {
    pub cpu_shares: Option<u64>,
    pub cpuset: Option<String>,
    pub memory: Option<String>,
    pub pids_limit: Option<i64>,
    pub restart: Option<String>,
}

impl Update {
    pub fn is_empty(&self) -> bool {
        self.cpu_shares.is_none()
            && self.cpuset.is_none()
            && self.memory.is_none()
            && self.pids_limit.is_none()
            && self.restart.is_none()
    }
}

/// `kiln update`: records the new limits (and restart policy) in the container's config and,
/// when it runs, writes them to its cgroup (v1 or v2) at once.
pub fn update(store: &Store, rec: &ContainerRecord, u: &Update) -> Result<()> {
    if u.is_empty() {
        bail!(
            "you must provide one or more flags when using this command (see kiln update --help)"
        );
    }
    let mut cfg = rec.config.clone();
    let memory = u
        .memory
        .as_deref()
        .map(super::config::parse_memory)
        .transpose()?;
    if let Some(s) = u.cpu_shares {
        if s < 2 {
            bail!("invalid --cpu-shares: the minimum is 2");
        }
        cfg.cpu_shares = Some(s);
    }
    if let Some(c) = &u.cpuset {
        crate::sandbox::cgroup_update::check_cpuset(c)?;
        cfg.cpuset = Some(c.clone());
    }
    if let Some(m) = memory {
        cfg.memory = Some(m);
    }
    if let Some(p) = u.pids_limit {
        cfg.pids_limit = (p > 0).then_some(p as u64);
    }
    if let Some(r) = &u.restart {
        let policy = super::restart::RestartPolicy::parse(r).context("--restart")?;
        if cfg.auto_remove && policy != super::restart::RestartPolicy::No {
            bail!("conflicting options: --restart and --rm (the container was run with --rm)");
        }
        cfg.restart = policy;
    }
    if rec.status() == Status::Running && rec.init_pid > 0 {
        if crate::rootless::in_userns() && crate::rootless::delegation::current().is_err() {
            bail!("{}", crate::sandbox::cgroup::rootless_limits_error());
        }
        let limits = crate::sandbox::cgroup_update::Limits {
            memory_bytes: memory,
            cpu_shares: u.cpu_shares,
            cpuset: u.cpuset.clone(),
            pids_limit: u.pids_limit,
        };
        crate::sandbox::cgroup_update::apply(rec.init_pid, &limits)
            .with_context(|| format!("updating the cgroup of container {}", rec.name))?;
    }
    state::set_config(store, &rec.id, &cfg)
}
