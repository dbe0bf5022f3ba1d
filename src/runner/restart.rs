//! Restart policies (`--restart no|on-failure[:N]|always|unless-stopped`), kept by the
//! container's owner process since there is no daemon.
//!
//! The detached monitor that owns a container starts it again when it ends and its policy says
//! so, after docker's back-off: 100 ms before the first restart, doubled each time up to a
//! minute, back to 100 ms once a run lasted 10 s. `kiln stop` (and `rm -f`) records that the
//! user stopped it, which ends the loop (also during a back-off); `kiln start` clears that.
//! Each automatic restart counts in `RestartCount`.
//!
//! After a reboot (or a killed monitor) no process owns the container: the next kiln command
//! that opens the root (`revive`, from the command line's open hook) starts `always`
//! containers, and `unless-stopped` ones the user had not stopped, under a new monitor.
//!
//! State: table `container_restarts` (migration module `runner_restart`): per container the
//! number of automatic restarts and whether the user stopped it.

use std::time::Duration;

use anyhow::{bail, Result};
use rusqlite::{params, OptionalExtension};
use serde::{Deserialize, Serialize};

use super::state::{self, ContainerRecord, Status};
use crate::store::Store;

pub(crate) const MIGRATIONS: &[&str] = &["
    CREATE TABLE container_restarts (
        id TEXT PRIMARY KEY,
        count INTEGER NOT NULL DEFAULT 0,
        manually_stopped INTEGER NOT NULL DEFAULT 0,
        stopped_boot TEXT NOT NULL DEFAULT ''  -- /proc/sys/kernel/random/boot_id at the stop
    );
"];

/// A container's restart policy, as docker names them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    #[default]
    No,
    /// Restart after a non-zero exit, at most this many times (0: no limit).
    OnFailure(u32),
    Always,
    UnlessStopped,
}

impl RestartPolicy {
    /// `no`, `on-failure`, `on-failure:N`, `always`, `unless-stopped`.
    pub fn parse(s: &str) -> Result<RestartPolicy> {
        let (name, max) = match s.split_once(':') {
            Some((n, m)) => (n, Some(m)),
            None => (s, None),
        };
        let policy = match (name, max) {
            ("no" | "", None) => RestartPolicy::No,
            ("always", None) => RestartPolicy::Always,
            ("unless-stopped", None) => RestartPolicy::UnlessStopped,
            ("on-failure", None) => RestartPolicy::OnFailure(0),
            ("on-failure", Some(m)) => match m.parse::<u32>() {
                Ok(n) => RestartPolicy::OnFailure(n),
                Err(_) => bail!(
                    "invalid restart policy {s:?}: the maximum retry count must be a number \
                     (on-failure:3)"
                ),
            },
            ("no" | "always" | "unless-stopped", Some(_)) => {
                bail!("invalid restart policy {s:?}: a maximum retry count is only for on-failure")
            }
            _ => bail!(
                "invalid restart policy {s:?}: expected no, on-failure[:max-retries], always or \
                 unless-stopped"
            ),
        };
        Ok(policy)
    }

    /// docker's `HostConfig.RestartPolicy.Name`.
    pub fn name(&self) -> &'static str {
        match self {
            RestartPolicy::No => "no",
            RestartPolicy::OnFailure(_) => "on-failure",
            RestartPolicy::Always => "always",
            RestartPolicy::UnlessStopped => "unless-stopped",
        }
    }

    pub fn max_retries(&self) -> u32 {
        match self {
            RestartPolicy::OnFailure(n) => *n,
            _ => 0,
        }
    }
}

/// Whether a container that exited with `code` after `restarts` automatic restarts starts
/// again.
pub fn should_restart(
    policy: RestartPolicy,
    code: i32,
    restarts: u32,
    manually_stopped: bool,
) -> bool {
    if manually_stopped {
        return false;
    }
    match policy {
        RestartPolicy::No => false,
        RestartPolicy::Always | RestartPolicy::UnlessStopped => true,
        RestartPolicy::OnFailure(max) => code != 0 && (max == 0 || restarts < max),
    }
}

/// The first back-off; each restart doubles it.
pub const FIRST_DELAY: Duration = Duration::from_millis(100);
const MAX_DELAY: Duration = Duration::from_secs(60);
/// A run at least this long resets the back-off.
const RESET_AFTER: Duration = Duration::from_secs(10);

/// The delay before the next restart, given the previous one (`None` before the first) and
/// how long the last run lasted.
pub fn next_delay(previous: Option<Duration>, ran_for: Duration) -> Duration {
    match previous {
        _ if ran_for >= RESET_AFTER => FIRST_DELAY,
        None => FIRST_DELAY,
        Some(d) => (d * 2).min(MAX_DELAY),
    }
}

fn migrate(store: &Store) -> Result<()> {
    store.migrate("runner_restart", MIGRATIONS)
}

/// This boot of the machine (`/proc/sys/kernel/random/boot_id`).
fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// (automatic restarts, stopped by the user) of a container.
pub fn status(store: &Store, id: &str) -> Result<(u32, bool)> {
    Ok(status_with_boot(store, id)?.0)
}

/// [`status`] and whether the user's stop was in an earlier boot.
fn status_with_boot(store: &Store, id: &str) -> Result<((u32, bool), bool)> {
    migrate(store)?;
    let row: Option<(u32, bool, String)> = store.with_conn(|c| {
        Ok(c.query_row(
            "SELECT count, manually_stopped, stopped_boot FROM container_restarts WHERE id = ?1",
            [id],
            |r| {
                Ok((
                    r.get::<_, i64>(0)? as u32,
                    r.get::<_, i64>(1)? != 0,
                    r.get::<_, String>(2)?,
                ))
            },
        )
        .optional()?)
    })?;
    Ok(match row {
        Some((n, stopped, boot)) => ((n, stopped), stopped && boot != boot_id()),
        None => ((0, false), false),
    })
}

/// Counts one automatic restart.
pub fn count_restart(store: &Store, id: &str) -> Result<()> {
    migrate(store)?;
    store.with_conn(|c| {
        c.execute(
            "INSERT INTO container_restarts (id, count) VALUES (?1, 1) \
             ON CONFLICT(id) DO UPDATE SET count = count + 1",
            [id],
        )?;
        Ok(())
    })
}

/// Records that the user stopped the container (`stop`, `rm -f`), or started it (`start`).
pub fn set_manually_stopped(store: &Store, id: &str, stopped: bool) -> Result<()> {
    migrate(store)?;
    store.with_conn(|c| {
        c.execute(
            "INSERT INTO container_restarts (id, manually_stopped, stopped_boot) \
             VALUES (?1, ?2, ?3) \
             ON CONFLICT(id) DO UPDATE SET manually_stopped = ?2, stopped_boot = ?3",
            params![id, stopped as i64, boot_id()],
        )?;
        Ok(())
    })
}

/// Forgets a removed container.
pub fn forget(store: &Store, id: &str) -> Result<()> {
    migrate(store)?;
    store.with_conn(|c| {
        c.execute("DELETE FROM container_restarts WHERE id = ?1", [id])?;
        Ok(())
    })
}

/// Waits `delay` unless the user stops (or removes) the container meanwhile; returns whether
/// to restart.
pub fn back_off(store: &Store, id: &str, delay: Duration) -> bool {
    let until = std::time::Instant::now() + delay;
    loop {
        match (state::get(store, id), status(store, id)) {
            (Ok(Some(_)), Ok((_, false))) => {}
            _ => return false,
        }
        let now = std::time::Instant::now();
        if now >= until {
            return true;
        }
        std::thread::sleep((until - now).min(Duration::from_millis(50)));
    }
}

/// The monitor's part after the container's first run ended with `code` after `ran_for`:
/// starts it again while its policy says so (after the back-off), and returns the last exit
/// code.
pub fn monitor_loop(store: &Store, rec: &ContainerRecord, code: i32, ran_for: Duration) -> i32 {
    let (mut code, mut ran_for, mut delay) = (code, ran_for, None);
    loop {
        let Ok(Some(fresh)) = state::get(store, &rec.id) else {
            return code;
        };
        let (count, stopped) = status(store, &rec.id).unwrap_or((0, true));
        if !should_restart(fresh.config.restart, code, count, stopped) {
            return code;
        }
        let d = next_delay(delay, ran_for);
        delay = Some(d);
        if !back_off(store, &rec.id, d) {
            return code;
        }
        if let Err(e) = count_restart(store, &rec.id) {
            eprintln!("kiln monitor: counting a restart: {e:#}");
        }
        let Ok(Some(fresh)) = state::get(store, &rec.id) else {
            return code;
        };
        let started_at = std::time::Instant::now();
        match super::lifecycle::start(store, &fresh, super::lifecycle::StreamMode::LogOnly) {
            Ok(started) => {
                super::forward_signals_to(started.running.pid());
                // A `kiln stop` that came between the back-off and the start.
                if status(store, &rec.id).is_ok_and(|s| s.1) {
                    // SAFETY: kill(2) on the init this process just started and still owns.
                    unsafe { libc::kill(started.running.pid(), fresh.config.stop_signal) };
                }
                match super::lifecycle::finish(store, &fresh, started) {
                    Ok(exit) => code = exit.code,
                    Err(e) => {
                        eprintln!("kiln monitor: {e:#}");
                        return 125;
                    }
                }
            }
            Err(e) => {
                code = super::lifecycle::start_failure_code(&e);
                let _ = state::set_exited(store, &rec.id, code, false, &format!("{e:#}"));
            }
        }
        ran_for = started_at.elapsed();
    }
}

/// A foreground `kiln run --restart ...` whose container ended with `code`: a detached monitor
/// takes over the restarts (kiln returns the first run's code, as docker's client does).
pub fn hand_over(store: &Store, rec: &ContainerRecord, code: i32) {
    let stopped = status(store, &rec.id).map(|s| s.1).unwrap_or(true);
    if !should_restart(rec.config.restart, code, 0, stopped) {
        return;
    }
    if !back_off(store, &rec.id, FIRST_DELAY) {
        return;
    }
    let result = count_restart(store, &rec.id).and_then(|()| {
        let fresh = state::get(store, &rec.id)?
            .ok_or_else(|| anyhow::anyhow!("the container was removed"))?;
        super::spawn_monitor(store, &fresh).map_err(|(_, msg)| anyhow::anyhow!("{msg}"))
    });
    if let Err(e) = result {
        crate::report::report_error(&e.context(format!(
            "warning: restarting container {} (restart policy {})",
            rec.name,
            rec.config.restart.name()
        )));
    }
}

/// Containers that should run but have no owner (a reboot, a killed monitor): `always` (also
/// one the user stopped before the reboot, as docker's daemon start does), and `unless-stopped`
/// unless the user stopped them. Started again under new monitors; errors are
/// reported, not fatal (any kiln command runs this).
pub fn revive(store: &Store) {
    let Ok(all) = state::list(store) else { return };
    for rec in all {
        if !matches!(
            rec.config.restart,
            RestartPolicy::Always | RestartPolicy::UnlessStopped
        ) || rec.owner_alive()
            || rec.owner_pid == 0
        {
            continue;
        }
        let Ok(((_, stopped), stopped_before_boot)) = status_with_boot(store, &rec.id) else {
            continue;
        };
        // docker: a stopped `always` container comes back when the daemon starts (here: after a
        // reboot); a stopped `unless-stopped` one does not.
        let comes_back =
            !stopped || (stopped_before_boot && rec.config.restart == RestartPolicy::Always);
        if !comes_back {
            continue;
        }
        if let Err(e) = revive_one(store, &rec) {
            crate::report::report_error(&e.context(format!(
                "warning: restarting container {} (restart policy {})",
                rec.name,
                rec.config.restart.name()
            )));
        }
    }
}

fn revive_one(store: &Store, rec: &ContainerRecord) -> Result<()> {
    // Claimed first, so that the new monitor's own open of the store (and any other kiln doing
    // this now) leaves it alone.
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() };
    if !state::claim_owner(store, &rec.id, (rec.owner_pid, rec.owner_start), me)? {
        return Ok(());
    }
    if rec.status() != Status::Exited || rec.state != "exited" {
        state::set_exited(store, &rec.id, 255, false, "the owner process died")?;
    }
    let fresh = state::get(store, &rec.id)?;
    let Some(fresh) = fresh else { return Ok(()) };
    super::spawn_monitor(store, &fresh).map_err(|(_, msg)| anyhow::anyhow!("{msg}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_as_dockers() {
        assert_eq!(RestartPolicy::parse("no").unwrap(), RestartPolicy::No);
        assert_eq!(
            RestartPolicy::parse("on-failure").unwrap(),
            RestartPolicy::OnFailure(0)
        );
        assert_eq!(
            RestartPolicy::parse("on-failure:3").unwrap(),
            RestartPolicy::OnFailure(3)
        );
        assert_eq!(
            RestartPolicy::parse("always").unwrap(),
            RestartPolicy::Always
        );
        assert_eq!(
            RestartPolicy::parse("unless-stopped").unwrap(),
            RestartPolicy::UnlessStopped
        );
        for bad in ["sometimes", "always:2", "on-failure:x", "on-failure:-1"] {
            assert!(RestartPolicy::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn restart_decisions() {
        use RestartPolicy::*;
        assert!(!should_restart(No, 1, 0, false));
        assert!(should_restart(OnFailure(3), 1, 2, false));
        assert!(!should_restart(OnFailure(3), 1, 3, false));
        assert!(!should_restart(OnFailure(3), 0, 0, false));
        assert!(should_restart(OnFailure(0), 1, 1000, false));
        assert!(should_restart(Always, 0, 5, false));
        assert!(!should_restart(Always, 0, 5, true));
        assert!(!should_restart(UnlessStopped, 1, 0, true));
    }

    #[test]
    fn back_off_doubles_from_100ms_to_a_minute_and_resets() {
        let short = Duration::from_millis(5);
        let mut d = next_delay(None, short);
        assert_eq!(d, Duration::from_millis(100));
        d = next_delay(Some(d), short);
        assert_eq!(d, Duration::from_millis(200));
        d = next_delay(Some(d), short);
        assert_eq!(d, Duration::from_millis(400));
        assert_eq!(
            next_delay(Some(Duration::from_secs(40)), short),
            Duration::from_secs(60)
        );
        assert_eq!(
            next_delay(Some(Duration::from_secs(40)), Duration::from_secs(11)),
            Duration::from_millis(100)
        );
    }
}
