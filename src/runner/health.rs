//! Health checks: the image's HEALTHCHECK, or `--health-cmd` and its flags, run by the
//! container's owner process (foreground `kiln run`, `start -a`, or the monitor) while the
//! container runs, as docker's daemon runs them: every interval the test runs inside the
//! container (`kiln exec`), a run longer than the timeout fails, `retries` failures in a row
//! make it `unhealthy` (failures in the start period do not count), a success `healthy`.
//! `kiln ps` shows `Up … (healthy)`; `inspect` has `State.Health` (Status, FailingStreak and
//! the last five results).
//!
//! State: table `container_health` (migration module `runner_health`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use rusqlite::{params, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::store::Store;

pub(crate) const MIGRATIONS: &[&str] = &["
    CREATE TABLE container_health (
        id TEXT PRIMARY KEY,
        status TEXT NOT NULL,           -- starting | healthy | unhealthy
        failing_streak INTEGER NOT NULL DEFAULT 0,
        log TEXT NOT NULL DEFAULT '[]'  -- JSON [HealthResult], the last five
    );
"];

/// A container's health check, fixed at `run`/`create`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    /// The command (`CMD-SHELL x` is already `sh -c x`).
    pub test: Vec<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub start_period: Duration,
    pub retries: u32,
}

const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_RETRIES: u32 = 3;

/// `--health-*` flags.
#[derive(Debug, Clone, Default)]
pub struct HealthFlags {
    pub cmd: Option<String>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub start_period: Option<String>,
    pub retries: Option<u32>,
    pub none: bool,
}

/// A Go duration as docker's flags take it: `30s`, `1m30s`, `500ms`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = s.trim();
    if rest.is_empty() {
        bail!("invalid duration {s:?}");
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    while !rest.is_empty() {
        let n_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| anyhow::anyhow!("invalid duration {s:?}: a unit is missing (30s)"))?;
        let n: f64 = rest[..n_end]
            .parse()
            .map_err(|_| anyhow::anyhow!("invalid duration {s:?}"))?;
        rest = &rest[n_end..];
        let u_end = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..u_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            u => bail!("invalid duration {s:?}: unknown unit {u:?}"),
        };
        total += Duration::from_secs_f64(n * unit);
        rest = &rest[u_end..];
    }
    Ok(total)
}

fn nanos(d: Option<i64>) -> Option<Duration> {
    d.filter(|n| *n > 0).map(|n| Duration::from_nanos(n as u64))
}

/// The check a container gets: the image's HEALTHCHECK with the flags over it (docker's
/// rules: `--no-healthcheck` disables it, `--health-cmd` replaces the test, each other flag
/// its field).
pub fn resolve(
    image: Option<&crate::oci::config::HealthConfig>,
    flags: &HealthFlags,
) -> Result<Option<HealthCheck>> {
    if flags.none {
        if flags.cmd.is_some() {
            bail!("--no-healthcheck conflicts with --health-* options");
        }
        return Ok(None);
    }
    let mut test: Option<Vec<String>> = image.and_then(|h| h.test.clone());
    if let Some(cmd) = &flags.cmd {
        test = Some(vec!["CMD-SHELL".into(), cmd.clone()]);
    }
    let test = match test.as_deref() {
        None | Some([]) => return Ok(None),
        Some([kind, ..]) if kind == "NONE" => return Ok(None),
        Some([kind, cmd]) if kind == "CMD-SHELL" => {
            vec!["/bin/sh".to_string(), "-c".to_string(), cmd.clone()]
        }
        Some([kind, rest @ ..]) if kind == "CMD" && !rest.is_empty() => rest.to_vec(),
        Some(other) => bail!("the health check test {other:?} is not valid"),
    };
    let dur = |flag: &Option<String>, img: Option<i64>, default: Duration, what: &str| {
        Ok::<_, anyhow::Error>(match flag {
            Some(s) => {
                let d = parse_duration(s).map_err(|e| e.context(format!("--health-{what}")))?;
                if d != Duration::ZERO && d < Duration::from_millis(1) {
                    bail!("--health-{what} {s:?}: the minimum is 1ms");
                }
                if d == Duration::ZERO {
                    default
                } else {
                    d
                }
            }
            None => nanos(img).unwrap_or(default),
        })
    };
    Ok(Some(HealthCheck {
        test,
        interval: dur(
            &flags.interval,
            image.and_then(|h| h.interval),
            DEFAULT_INTERVAL,
            "interval",
        )?,
        timeout: dur(
            &flags.timeout,
            image.and_then(|h| h.timeout),
            DEFAULT_TIMEOUT,
            "timeout",
        )?,
        start_period: dur(
            &flags.start_period,
            image.and_then(|h| h.start_period),
            Duration::ZERO,
            "start-period",
        )?,
        retries: flags
            .retries
            .or(image
                .and_then(|h| h.retries)
                .filter(|r| *r > 0)
                .map(|r| r as u32))
            .unwrap_or(DEFAULT_RETRIES),
    }))
}

/// One check's result (docker's `State.Health.Log` entries).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthResult {
    pub start: String,
    pub end: String,
    pub exit_code: i32,
    pub output: String,
}

fn migrate(store: &Store) -> Result<()> {
    store.migrate("runner_health", MIGRATIONS)
}

/// (status, failing streak, log) of a container with a health check.
pub fn read(store: &Store, id: &str) -> Result<Option<(String, u32, Vec<HealthResult>)>> {
    migrate(store)?;
    let row: Option<(String, i64, String)> = store.with_conn(|c| {
        Ok(c.query_row(
            "SELECT status, failing_streak, log FROM container_health WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?)
    })?;
    Ok(row.map(|(s, n, log)| (s, n as u32, serde_json::from_str(&log).unwrap_or_default())))
}

fn write(store: &Store, id: &str, status: &str, streak: u32, log: &[HealthResult]) -> Result<()> {
    migrate(store)?;
    let log = serde_json::to_string(log)?;
    store.with_conn(|c| {
        c.execute(
            "INSERT INTO container_health (id, status, failing_streak, log) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT(id) DO UPDATE SET status = ?2, failing_streak = ?3, log = ?4",
            params![id, status, streak as i64, log],
        )?;
        Ok(())
    })
}

/// Forgets a removed container's health.
pub fn forget(store: &Store, id: &str) -> Result<()> {
    migrate(store)?;
    store.with_conn(|c| {
        c.execute("DELETE FROM container_health WHERE id = ?1", [id])?;
        Ok(())
    })
}

/// The health checker of one run of a container; stops when dropped.
pub struct Checker {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Checker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts checking container `id` (state `starting`), when it has a check.
pub fn start(store: &Store, id: &str, check: Option<&HealthCheck>) -> Option<Checker> {
    let check = check?.clone();
    if let Err(e) = write(store, id, "starting", 0, &[]) {
        eprintln!("kiln: warning: health check of {id}: {e:#}");
        return None;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let root = store.root().to_path_buf();
    let id = id.to_string();
    let flag = stop.clone();
    let thread = std::thread::spawn(move || run_checks(&root, &id, &check, &flag));
    Some(Checker {
        stop,
        thread: Some(thread),
    })
}

/// Sleeps `d` unless `stop` is set meanwhile; false when stopped.
fn sleep_unless(stop: &AtomicBool, d: Duration) -> bool {
    let until = Instant::now() + d;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= until {
            return true;
        }
        std::thread::sleep((until - now).min(Duration::from_millis(50)));
    }
    false
}

fn run_checks(root: &Path, id: &str, check: &HealthCheck, stop: &AtomicBool) {
    let Ok(store) = super::state::open_store(root) else {
        return;
    };
    let started = Instant::now();
    let mut log: Vec<HealthResult> = Vec::new();
    let mut streak = 0u32;
    let mut status = "starting".to_string();
    while sleep_unless(stop, check.interval) {
        let start = chrono::Utc::now();
        let (code, output) = run_one(root, id, check);
        if stop.load(Ordering::Relaxed) {
            return; // the container ended during the check: its result means nothing
        }
        if code == 0 {
            streak = 0;
            status = "healthy".into();
        } else if started.elapsed() >= check.start_period || status != "starting" {
            streak += 1;
            if streak >= check.retries {
                status = "unhealthy".into();
            }
        }
        log.push(HealthResult {
            start: start.to_rfc3339(),
            end: chrono::Utc::now().to_rfc3339(),
            exit_code: code,
            output,
        });
        if log.len() > 5 {
            log.remove(0);
        }
        if let Err(e) = write(&store, id, &status, streak, &log) {
            eprintln!("kiln: warning: recording the health of {id}: {e:#}");
        }
    }
}

/// Runs the test once in the container (`kiln exec`), killed after the timeout; (exit code,
/// output, at most 4 KiB as docker keeps).
fn run_one(root: &Path, id: &str, check: &HealthCheck) -> (i32, String) {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
    let child = std::process::Command::new(exe)
        .arg("--root")
        .arg(root)
        .arg("exec")
        .arg(id)
        .args(&check.test)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return (-1, format!("starting the health check: {e}")),
    };
    let deadline = Instant::now() + check.timeout;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return (
                    -1,
                    format!("Health check exceeded timeout ({:?})", check.timeout),
                );
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return (-1, format!("waiting for the health check: {e}")),
        }
    }
    match child.wait_with_output() {
        Ok(o) => {
            let mut text = String::from_utf8_lossy(&o.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&o.stderr));
            text.truncate(4096);
            (o.status.code().unwrap_or(-1), text)
        }
        Err(e) => (-1, format!("reading the health check's output: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_as_go_writes_them() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5x").is_err());
    }

    #[test]
    fn flags_over_the_images_check() {
        let image = crate::oci::config::HealthConfig {
            test: Some(vec!["CMD".into(), "true".into()]),
            interval: Some(5_000_000_000),
            retries: Some(2),
            ..Default::default()
        };
        let h = resolve(Some(&image), &HealthFlags::default())
            .unwrap()
            .unwrap();
        assert_eq!(h.test, ["true"]);
        assert_eq!((h.interval, h.retries), (Duration::from_secs(5), 2));
        assert_eq!(h.timeout, DEFAULT_TIMEOUT);
        let flags = HealthFlags {
            cmd: Some("test -f /ok".into()),
            interval: Some("1s".into()),
            ..Default::default()
        };
        let h = resolve(Some(&image), &flags).unwrap().unwrap();
        assert_eq!(h.test, ["/bin/sh", "-c", "test -f /ok"]);
        assert_eq!(h.interval, Duration::from_secs(1));
        let none = HealthFlags {
            none: true,
            ..Default::default()
        };
        assert!(resolve(Some(&image), &none).unwrap().is_none());
        assert!(resolve(None, &HealthFlags::default()).unwrap().is_none());
        let disabled = crate::oci::config::HealthConfig {
            test: Some(vec!["NONE".into()]),
            ..Default::default()
        };
        assert!(resolve(Some(&disabled), &HealthFlags::default())
            .unwrap()
            .is_none());
    }
}
