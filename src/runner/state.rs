//! Containers and volumes in the store's database (the runner's own tables), and whether a
//! container's owner process (the foreground `kiln run` or the detached monitor) still lives.

use std::net::IpAddr;

use anyhow::{bail, Context, Result};
use rusqlite::{params, OptionalExtension, Row};
use serde::{Deserialize, Serialize};

use super::config::{PortBinding, PortRequest, VolumeMount};
use crate::store::Store;

pub(crate) const MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE containers (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        image TEXT NOT NULL,            -- as the user named it
        image_id TEXT NOT NULL,         -- the config digest
        manifest TEXT NOT NULL,
        created INTEGER NOT NULL,       -- unix nanoseconds
        config TEXT NOT NULL,           -- JSON ContainerConfig
        state TEXT NOT NULL,            -- created | running | exited
        owner_pid INTEGER NOT NULL DEFAULT 0,
        owner_start INTEGER NOT NULL DEFAULT 0,
        init_pid INTEGER NOT NULL DEFAULT 0,
        exit_code INTEGER NOT NULL DEFAULT 0,
        oom_killed INTEGER NOT NULL DEFAULT 0,
        error TEXT NOT NULL DEFAULT '',
        started INTEGER NOT NULL DEFAULT 0,
        finished INTEGER NOT NULL DEFAULT 0,
        ports TEXT NOT NULL DEFAULT '[]'  -- JSON [PortBinding] as bound
    );
    CREATE TABLE volumes (
        name TEXT PRIMARY KEY,
        created INTEGER NOT NULL,       -- unix seconds
        anonymous INTEGER NOT NULL
    );
    CREATE TABLE volume_uses (
        volume TEXT NOT NULL,
        container TEXT NOT NULL,
        PRIMARY KEY (volume, container)
    );
    CREATE INDEX volume_uses_container ON volume_uses(container);
",
    "
    -- `volume create --label`: a JSON object of strings.
    ALTER TABLE volumes ADD COLUMN labels TEXT NOT NULL DEFAULT '{}';
",
];

/// Everything a container runs with, fixed at `kiln run`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ContainerConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub hostname: String,
    /// `none` or `host`.
    pub network: String,
    pub publish: Vec<PortRequest>,
    pub mounts: Vec<VolumeMount>,
    pub memory: Option<u64>,
    pub cpu_shares: Option<u64>,
    pub cpuset: Option<String>,
    pub pids_limit: Option<u64>,
    pub stop_signal: i32,
    pub auto_remove: bool,
    pub interactive: bool,
    pub tty: bool,
    pub init: bool,
    pub exposed: Vec<String>,
    /// `--security-opt seccomp=...` (absent in records of older kilns: the default).
    #[serde(default)]
    pub seccomp: super::config::SeccompConfig,
    /// `--restart` (absent in records of older kilns: no).
    #[serde(default)]
    pub restart: super::restart::RestartPolicy,
    /// The image's labels with `--label` over them.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// `--add-host` lines for /etc/hosts.
    #[serde(default)]
    pub extra_hosts: Vec<(String, IpAddr)>,
    /// `--ulimit` specs as given (checked at `run`; parsed again at each start).
    #[serde(default)]
    pub ulimits: Vec<String>,
    /// `--group-add` groups as given (resolved in the container at each start and exec).
    #[serde(default)]
    pub group_add: Vec<String>,
    /// `--shm-size` in bytes (None: docker's 64 MiB).
    #[serde(default)]
    pub shm_size: Option<u64>,
    /// `--stop-timeout`: seconds `kiln stop` waits by default (docker's 10 when absent).
    #[serde(default)]
    pub stop_timeout: Option<u64>,
    /// The image's HEALTHCHECK or `--health-*` (None: no check).
    #[serde(default)]
    pub healthcheck: Option<super::health::HealthCheck>,
    /// `--read-only`: the root filesystem is mounted read-only.
    #[serde(default)]
    pub read_only: bool,
    /// `--cpus`, as a CFS quota per 100 ms (µs).
    #[serde(default)]
    pub cpu_quota_us: Option<u64>,
    /// `--memory-swap` in bytes (-1: unlimited).
    #[serde(default)]
    pub memory_swap: Option<i64>,
    /// The capabilities after `--cap-add`/`--cap-drop` (None: Docker's default set).
    #[serde(default)]
    pub caps: Option<u64>,
    /// `--security-opt no-new-privileges`.
    #[serde(default)]
    pub no_new_privileges: bool,
    /// `--privileged`: every capability, the host's devices, no seccomp filter, no masked paths.
    #[serde(default)]
    pub privileged: bool,
    /// `--log-opt max-size/max-file` (absent in records of older kilns: no rotation).
    #[serde(default)]
    pub log: super::logs::LogLimits,
}

impl ContainerConfig {
    /// The capabilities its root processes keep.
    pub fn caps_mask(&self) -> u64 {
        if self.privileged {
            return crate::sandbox::caps::all_held();
        }
        self.caps.unwrap_or_else(crate::sandbox::caps::default_mask)
    }

    /// argv: ENTRYPOINT + CMD.
    pub fn args(&self) -> Vec<String> {
        self.entrypoint.iter().chain(&self.cmd).cloned().collect()
    }
}

/// A container row.
#[derive(Debug, Clone)]
pub struct ContainerRecord {
    pub id: String,
    pub name: String,
    pub image: String,
    pub image_id: String,
    pub manifest: String,
    pub created_ns: i64,
    pub config: ContainerConfig,
    pub state: String,
    pub owner_pid: i32,
    pub owner_start: u64,
    pub init_pid: i32,
    pub exit_code: i32,
    pub oom_killed: bool,
    pub error: String,
    pub started_ns: i64,
    pub finished_ns: i64,
    pub ports: Vec<PortBinding>,
}

/// The state shown to users: `running` only while the owner process lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Exited,
}

impl ContainerRecord {
    pub fn status(&self) -> Status {
        match self.state.as_str() {
            "running" | "created" if self.owner_alive() => {
                if self.state == "running" {
                    Status::Running
                } else {
                    Status::Created
                }
            }
            "created" if self.owner_pid == 0 => Status::Created,
            _ => Status::Exited,
        }
    }

    /// The exit code to show: the recorded one, or 255 when the owner died without recording
    /// one (kill -9, reboot).
    pub fn shown_exit_code(&self) -> i32 {
        if self.state != "exited" && self.status() == Status::Exited {
            255
        } else {
            self.exit_code
        }
    }

    pub fn owner_alive(&self) -> bool {
        self.owner_pid > 0 && process_start_time(self.owner_pid) == Some(self.owner_start)
    }

    pub fn short_id(&self) -> &str {
        &self.id[..12.min(self.id.len())]
    }
}

/// The start time of a process (field 22 of /proc/PID/stat): with the pid it identifies a
/// process across pid reuse (`crate::owner`).
pub fn process_start_time(pid: i32) -> Option<u64> {
    crate::owner::start_time(pid)
}

pub fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)
}

const COLUMNS: &str = "id, name, image, image_id, manifest, created, config, state, owner_pid, \
     owner_start, init_pid, exit_code, oom_killed, error, started, finished, ports";

fn from_row(row: &Row) -> rusqlite::Result<(ContainerRecord, String, String)> {
    let config: String = row.get(6)?;
    let ports: String = row.get(16)?;
    let rec = ContainerRecord {
        id: row.get(0)?,
        name: row.get(1)?,
        image: row.get(2)?,
        image_id: row.get(3)?,
        manifest: row.get(4)?,
        created_ns: row.get(5)?,
        config: ContainerConfig::default(),
        state: row.get(7)?,
        owner_pid: row.get(8)?,
        owner_start: row.get::<_, i64>(9)? as u64,
        init_pid: row.get(10)?,
        exit_code: row.get(11)?,
        oom_killed: row.get::<_, i64>(12)? != 0,
        error: row.get(13)?,
        started_ns: row.get(14)?,
        finished_ns: row.get(15)?,
        ports: Vec::new(),
    };
    Ok((rec, config, ports))
}

fn finish_row(parts: (ContainerRecord, String, String)) -> Result<ContainerRecord> {
    let (mut rec, config, ports) = parts;
    rec.config = serde_json::from_str(&config)
        .with_context(|| format!("container {}: stored config is not valid", rec.short_id()))?;
    rec.ports = serde_json::from_str(&ports)
        .with_context(|| format!("container {}: stored ports are not valid", rec.short_id()))?;
    Ok(rec)
}

/// Opens the store and brings the runner's tables up to date.
pub fn open_store(root: &std::path::Path) -> Result<Store> {
    let store =
        Store::open(root).with_context(|| format!("opening the state root {}", root.display()))?;
    // Migrating is a write transaction; skip it when the tables are current (every command
    // opens the store, and `kiln run --rm` is benchmarked).
    let current: i64 = store
        .with_conn(|c| {
            Ok(c.query_row(
                "SELECT version FROM schema_versions WHERE module = 'runner'",
                [],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(0))
        })
        .unwrap_or(0);
    if current != MIGRATIONS.len() as i64 {
        store.migrate("runner", MIGRATIONS)?;
    }
    store.with_conn(|c| {
        // Container rows are runtime state (nothing of theirs survives a reboot): commits stay
        // atomic and the database consistent, but are not fsynced one by one (WAL + NORMAL).
        // Each fsync costs milliseconds on a busy disk and `kiln run --rm` makes three.
        c.execute_batch("PRAGMA synchronous=NORMAL")?;
        // Keep the WAL file when this connection closes instead of deleting it and creating it
        // again in the next kiln command.
        let mut on: libc::c_int = 1;
        // SAFETY: SQLITE_FCNTL_PERSIST_WAL takes a pointer to an int, on the open connection's
        // main database; both outlive the call.
        unsafe {
            rusqlite::ffi::sqlite3_file_control(
                c.handle(),
                c"main".as_ptr(),
                rusqlite::ffi::SQLITE_FCNTL_PERSIST_WAL,
                (&mut on as *mut libc::c_int).cast(),
            );
        }
        Ok(())
    })?;
    Ok(store)
}

pub fn insert(store: &Store, rec: &ContainerRecord) -> Result<()> {
    let config = serde_json::to_string(&rec.config)?;
    let ports = serde_json::to_string(&rec.ports)?;
    store.transaction(|tx| {
        let taken: Option<String> = tx
            .query_row(
                "SELECT id FROM containers WHERE name = ?1",
                [&rec.name],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(other) = taken {
            bail!(
                "conflict: the container name {:?} is already in use by container {}: remove \
                 that container (kiln rm) or choose another --name",
                rec.name,
                &other[..12]
            );
        }
        tx.execute(
            &format!(
                "INSERT INTO containers ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, \
                 ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)"
            ),
            params![
                rec.id,
                rec.name,
                rec.image,
                rec.image_id,
                rec.manifest,
                rec.created_ns,
                config,
                rec.state,
                rec.owner_pid,
                rec.owner_start as i64,
                rec.init_pid,
                rec.exit_code,
                rec.oom_killed as i64,
                rec.error,
                rec.started_ns,
                rec.finished_ns,
                ports
            ],
        )?;
        tx.execute(
            "INSERT OR IGNORE INTO image_uses (manifest, user) VALUES (?1, ?2)",
            params![rec.manifest, rec.id],
        )?;
        for m in &rec.config.mounts {
            if m.kind == super::config::MountType::Volume {
                tx.execute(
                    "INSERT OR IGNORE INTO volumes (name, created, anonymous) VALUES (?1, ?2, ?3)",
                    params![m.source, chrono::Utc::now().timestamp(), m.anonymous as i64],
                )?;
                tx.execute(
                    "INSERT OR IGNORE INTO volume_uses (volume, container) VALUES (?1, ?2)",
                    params![m.source, rec.id],
                )?;
            }
        }
        Ok(())
    })
}

/// Marks the container running under this process.
pub fn set_running(
    store: &Store,
    id: &str,
    owner_pid: i32,
    init_pid: i32,
    ports: &[PortBinding],
) -> Result<()> {
    let owner_start = process_start_time(owner_pid).unwrap_or(0);
    let ports = serde_json::to_string(ports)?;
    store.with_conn(|c| {
        c.execute(
            "UPDATE containers SET state = 'running', owner_pid = ?2, owner_start = ?3, \
             init_pid = ?4, started = ?5, ports = ?6, error = '' WHERE id = ?1",
            params![id, owner_pid, owner_start as i64, init_pid, now_ns(), ports],
        )?;
        Ok(())
    })
}

/// Records how the container ended (or why it could not start).
pub fn set_exited(
    store: &Store,
    id: &str,
    exit_code: i32,
    oom_killed: bool,
    error: &str,
) -> Result<()> {
    store.with_conn(|c| {
        c.execute(
            "UPDATE containers SET state = 'exited', exit_code = ?2, oom_killed = ?3, \
             error = ?4, finished = ?5, init_pid = 0, ports = '[]' WHERE id = ?1",
            params![id, exit_code, oom_killed as i64, error, now_ns()],
        )?;
        Ok(())
    })
}

/// Records the owner of a container that is being started (a monitor), before it runs.
pub fn set_owner(store: &Store, id: &str, owner_pid: i32) -> Result<()> {
    let owner_start = process_start_time(owner_pid).unwrap_or(0);
    store.with_conn(|c| {
        c.execute(
            "UPDATE containers SET owner_pid = ?2, owner_start = ?3 WHERE id = ?1",
            params![id, owner_pid, owner_start as i64],
        )?;
        Ok(())
    })
}

pub fn get(store: &Store, id: &str) -> Result<Option<ContainerRecord>> {
    let row = store.with_conn(|c| {
        Ok(c.query_row(
            &format!("SELECT {COLUMNS} FROM containers WHERE id = ?1"),
            [id],
            from_row,
        )
        .optional()?)
    })?;
    row.map(finish_row).transpose()
}

/// Every container, newest first.
pub fn list(store: &Store) -> Result<Vec<ContainerRecord>> {
    select(store, "ORDER BY created DESC")
}

/// Containers not recorded as exited (running, or being started).
pub fn list_unfinished(store: &Store) -> Result<Vec<ContainerRecord>> {
    select(store, "WHERE state != 'exited'")
}

/// The containers a `SELECT ... FROM containers {tail}` query returns.
fn select(store: &Store, tail: &str) -> Result<Vec<ContainerRecord>> {
    let rows = store.with_conn(|c| {
        let mut stmt = c.prepare(&format!("SELECT {COLUMNS} FROM containers {tail}"))?;
        let rows = stmt
            .query_map([], from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    })?;
    rows.into_iter().map(finish_row).collect()
}

/// Finds a container by full ID, name, or unique ID prefix (docker's order).
pub fn find(store: &Store, spec: &str) -> Result<ContainerRecord> {
    let spec_name = spec.strip_prefix('/').unwrap_or(spec);
    let found: Vec<String> = store.with_conn(|c| {
        if let Some(id) = c
            .query_row(
                "SELECT id FROM containers WHERE id = ?1 OR name = ?2",
                params![spec, spec_name],
                |r| r.get::<_, String>(0),
            )
            .optional()?
        {
            return Ok(vec![id]);
        }
        if spec.is_empty() || !spec.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(vec![]);
        }
        let mut stmt = c.prepare("SELECT id FROM containers WHERE substr(id, 1, ?2) = ?1")?;
        let ids = stmt
            .query_map(params![spec.to_ascii_lowercase(), spec.len() as i64], |r| {
                r.get(0)
            })?
            .collect::<rusqlite::Result<Vec<String>>>()?;
        Ok(ids)
    })?;
    match found.as_slice() {
        [id] => get(store, id)?.with_context(|| format!("no such container: {spec}")),
        [] => bail!("no such container: {spec}"),
        _ => bail!("container ID prefix {spec:?} is ambiguous: give more digits or the name"),
    }
}

/// Deletes a container's rows (its record, image use and volume uses).
pub fn delete(store: &Store, id: &str) -> Result<()> {
    super::restart::forget(store, id)?;
    super::health::forget(store, id)?;
    store.transaction(|tx| {
        tx.execute("DELETE FROM containers WHERE id = ?1", [id])?;
        tx.execute("DELETE FROM image_uses WHERE user = ?1", [id])?;
        tx.execute("DELETE FROM volume_uses WHERE container = ?1", [id])?;
        Ok(())
    })
}

/// A volume row.
#[derive(Debug, Clone)]
pub struct VolumeRecord {
    pub name: String,
    pub created: i64,
    pub anonymous: bool,
    /// IDs of containers that use it.
    pub users: Vec<String>,
    /// `volume create --label`s.
    pub labels: std::collections::BTreeMap<String, String>,
}

pub fn volumes(store: &Store) -> Result<Vec<VolumeRecord>> {
    store.with_conn(|c| {
        let mut stmt = c.prepare(
            "SELECT v.name, v.created, v.anonymous, group_concat(u.container), v.labels \
             FROM volumes v \
             LEFT JOIN volume_uses u ON u.volume = v.name GROUP BY v.name ORDER BY v.name",
        )?;
        let rows = stmt
            .query_map([], |r| {
                let users: Option<String> = r.get(3)?;
                Ok(VolumeRecord {
                    name: r.get(0)?,
                    created: r.get(1)?,
                    anonymous: r.get::<_, i64>(2)? != 0,
                    users: users
                        .map(|u| u.split(',').map(str::to_string).collect())
                        .unwrap_or_default(),
                    // A row kiln cannot read keeps its volume usable, without labels.
                    labels: serde_json::from_str(&r.get::<_, String>(4)?).unwrap_or_default(),
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    })
}

pub fn volume(store: &Store, name: &str) -> Result<Option<VolumeRecord>> {
    Ok(volumes(store)?.into_iter().find(|v| v.name == name))
}

/// Records a named volume (`kiln volume create`) with its labels; an existing volume is kept as
/// it is (docker's `volume create` of an existing name is a no-op too).
pub fn add_volume(
    store: &Store,
    name: &str,
    labels: &std::collections::BTreeMap<String, String>,
) -> Result<()> {
    store.with_conn(|c| {
        c.execute(
            "INSERT OR IGNORE INTO volumes (name, created, anonymous, labels) \
             VALUES (?1, ?2, 0, ?3)",
            params![
                name,
                chrono::Utc::now().timestamp(),
                serde_json::to_string(labels)?
            ],
        )?;
        Ok(())
    })
}

/// Deletes a volume's row unless a container uses it; returns whether it was deleted.
pub fn delete_volume_row(store: &Store, name: &str) -> Result<bool> {
    store.transaction(|tx| {
        let used: bool = tx.query_row(
            "SELECT EXISTS(SELECT 1 FROM volume_uses WHERE volume = ?1)",
            [name],
            |r| r.get(0),
        )?;
        if used {
            return Ok(false);
        }
        Ok(tx.execute("DELETE FROM volumes WHERE name = ?1", [name])? > 0)
    })
}

/// Whether a container (any state) uses the image with this manifest digest.
pub fn image_in_use(store: &Store, manifest: &str) -> Result<Vec<String>> {
    store.with_conn(|c| {
        let mut stmt = c.prepare("SELECT id FROM containers WHERE manifest = ?1")?;
        let ids = stmt
            .query_map([manifest], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<String>>>()?;
        Ok(ids)
    })
}

/// `0.0.0.0:49153->80/tcp, :::80->...` as docker's PORTS column.
pub fn ports_column(ports: &[PortBinding]) -> String {
    ports
        .iter()
        .map(|p| {
            let ip = match p.host_ip {
                IpAddr::V6(v6) => format!("[{v6}]"),
                ip => ip.to_string(),
            };
            format!("{ip}:{}->{}/{}", p.host_port, p.container_port, p.proto)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Sets a container's name (`kiln rename`): refused when another container has it.
pub fn rename(store: &Store, id: &str, name: &str) -> Result<()> {
    store.transaction(|tx| {
        let taken: Option<String> = tx
            .query_row("SELECT id FROM containers WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()?;
        if let Some(other) = taken {
            bail!(
                "conflict: the container name {name:?} is already in use by container {}: \
                 remove that container (kiln rm) or choose another name",
                &other[..12.min(other.len())]
            );
        }
        tx.execute(
            "UPDATE containers SET name = ?2 WHERE id = ?1",
            params![id, name],
        )?;
        Ok(())
    })
}

/// Replaces a container's stored config (`kiln update`).
pub fn set_config(store: &Store, id: &str, config: &ContainerConfig) -> Result<()> {
    let json = serde_json::to_string(config)?;
    store.with_conn(|c| {
        c.execute(
            "UPDATE containers SET config = ?2 WHERE id = ?1",
            params![id, json],
        )?;
        Ok(())
    })
}

/// Records `me` as the owner of container `id` if its owner is still `prev` (pid, start time):
/// false when another process took it in between.
pub fn claim_owner(store: &Store, id: &str, prev: (i32, u64), me: i32) -> Result<bool> {
    let start = process_start_time(me).unwrap_or(0);
    store.with_conn(|c| {
        Ok(c.execute(
            "UPDATE containers SET owner_pid = ?2, owner_start = ?3 \
             WHERE id = ?1 AND owner_pid = ?4 AND owner_start = ?5",
            params![id, me, start as i64, prev.0, prev.1 as i64],
        )? == 1)
    })
}

/// Gives a claimed container back its previous owner columns (a dead or no owner).
pub fn restore_owner(store: &Store, id: &str, prev: (i32, u64)) -> Result<()> {
    store.with_conn(|c| {
        c.execute(
            "UPDATE containers SET owner_pid = ?2, owner_start = ?3 WHERE id = ?1",
            params![id, prev.0, prev.1 as i64],
        )?;
        Ok(())
    })
}
