//! The state root: content blobs (`blobs/sha256/<hex>`), the SQLite database (`kiln.db`, WAL
//! mode) and images by name. Other modules keep their own tables in the same database through
//! [`Store::with_conn`], [`Store::transaction`] and [`Store::migrate`], and put their temporary
//! files in [`Store::tmp_dir`] so that renames into place stay on one filesystem.
//!
//! Crash safety: a blob is written to `tmp/`, hashed while written, fsynced and renamed into
//! place; metadata changes are SQLite transactions. Concurrency: SQLite serialises writers
//! (busy_timeout waits for the lock); blob writes are idempotent renames of content-addressed
//! files, so two processes writing the same blob both succeed.

mod blobs;
pub mod gc;
mod images;
mod remote;
pub mod space;

pub use blobs::{Blob, BlobWriter};
pub use images::{
    CommittedImage, ImageRecord, IndexEntry, IndexRecord, LayerRecord, UnpackedLayerRecord,
    UNCOMPRESSED_LAYER,
};
pub use remote::{set_fetch_hook, FetchHook, RemoteBlob};

use std::fs;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use rusqlite::{Connection, Transaction, TransactionBehavior};

/// How long a writer waits for another process's transaction before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(60);

/// Temp files older than this are removed even while another kiln process is alive (they can
/// only be left over from a crash).
const STALE_TMP_AGE: Duration = Duration::from_secs(24 * 3600);

/// What [`set_open_hook`] installed: run once per root per process, after the first open.
static OPEN_HOOK: OnceLock<fn(&Store)> = OnceLock::new();
/// The roots the hook already ran for in this process.
static HOOKED_ROOTS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Installs `hook`, run by [`Store::open`] the first time this process opens each root (after
/// `tmp/` is cleaned and the schema migrated). The command line installs the recovery of what
/// killed kiln processes left (overlay mounts, cgroups) here, so that every command cleans up,
/// while the store itself knows nothing of the modules above it. The first hook installed wins;
/// returns false when one already was.
pub fn set_open_hook(hook: fn(&Store)) -> bool {
    OPEN_HOOK.set(hook).is_ok()
}

/// An open state root. Cheap to share: `Send + Sync`; the database connection sits behind a mutex.
pub struct Store {
    root: PathBuf,
    conn: Mutex<Connection>,
    /// Held (shared) for the life of the store: tells other processes that our temp files are live.
    _lock: fs::File,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("root", &self.root).finish()
    }
}

impl Store {
    /// Opens (creating if needed) the state root at `root`: the directory layout, the database
    /// and its schema. Empties `tmp/` of files left by crashed processes.
    pub fn open(root: &Path) -> Result<Store> {
        for dir in ["blobs/sha256", "tmp"] {
            fs::create_dir_all(root.join(dir))
                .with_context(|| format!("creating {}", root.join(dir).display()))?;
        }
        let root = root
            .canonicalize()
            .with_context(|| format!("resolving state root {}", root.display()))?;
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(root.join("kiln.lock"))
            .with_context(|| format!("opening {}", root.join("kiln.lock").display()))?;
        clean_tmp(&root, &lock)?;

        let db_path = root.join("kiln.db");
        let conn = Connection::open(&db_path)
            .with_context(|| format!("opening database {}", db_path.display()))?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let mode = set_wal_mode(&conn)
            .with_context(|| format!("setting WAL mode on {}", db_path.display()))?;
        if !mode.eq_ignore_ascii_case("wal") {
            bail!(
                "{}: database refused WAL mode (got {mode})",
                db_path.display()
            );
        }
        conn.execute_batch("PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;")?;
        // Every commit is already durable in the WAL (synchronous=FULL), and SQLite checkpoints
        // by itself as the WAL grows. The checkpoint it would also run when the last connection
        // closes costs three fsyncs at the end of every kiln command (`kiln run --rm x true`
        // included); skip it.
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
            true,
        )?;
        let store = Store {
            root,
            conn: Mutex::new(conn),
            _lock: lock,
        };
        store.migrate("store", images::MIGRATIONS)?;
        store.migrate("store_indexes", images::INDEX_MIGRATIONS)?;
        store.migrate("store_gc", gc::MIGRATIONS)?;
        store.migrate("store_remote", remote::MIGRATIONS)?;
        store.migrate("store_layer_resume", images::RESUME_MIGRATIONS)?;
        if let Some(hook) = OPEN_HOOK.get() {
            let first = HOOKED_ROOTS.lock().is_ok_and(|mut roots| {
                let first = !roots.contains(&store.root);
                if first {
                    roots.push(store.root.clone());
                }
                first
            });
            if first {
                hook(&store);
            }
        }
        Ok(store)
    }

    /// The state root directory (canonical).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A directory on the root's filesystem for temporary files (rename them into place). Files
    /// here are removed by the next kiln that starts while no other kiln runs.
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Runs `f` with the database connection (one at a time per process).
    pub fn with_conn<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let conn = self
            .conn
            .lock()
            .map_err(|_| anyhow::anyhow!("store database lock poisoned by a panic"))?;
        f(&conn)
    }

    /// Runs `f` in an IMMEDIATE transaction (takes the write lock up front, so two processes
    /// never deadlock upgrading read locks). Commits if `f` returns Ok, rolls back otherwise.
    pub fn transaction<T>(&self, f: impl FnOnce(&Transaction) -> Result<T>) -> Result<T> {
        let mut conn = self
            .conn
            .lock()
            .map_err(|_| anyhow::anyhow!("store database lock poisoned by a panic"))?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .context("starting a database transaction")?;
        let value = f(&tx)?;
        tx.commit().context("committing a database transaction")?;
        Ok(value)
    }

    /// Brings `module`'s tables up to date: runs `migrations[n..]` where `n` is the number
    /// already applied (recorded in `schema_versions`). Append new migrations; never edit old ones.
    pub fn migrate(&self, module: &str, migrations: &[&str]) -> Result<()> {
        // Every command opens the store and migrates; when the schema is already current, a plain
        // read answers that without taking the write lock or paying for a commit's fsync.
        let current = self.with_conn(|conn| {
            Ok(conn
                .query_row(
                    "SELECT version FROM schema_versions WHERE module = ?1",
                    [module],
                    |row| row.get::<_, i64>(0),
                )
                .ok())
        })?;
        if current == Some(migrations.len() as i64) {
            return Ok(());
        }
        self.transaction(|tx| {
            tx.execute_batch(
                "CREATE TABLE IF NOT EXISTS schema_versions (
                    module TEXT PRIMARY KEY, version INTEGER NOT NULL)",
            )?;
            let applied: i64 = tx
                .query_row(
                    "SELECT version FROM schema_versions WHERE module = ?1",
                    [module],
                    |row| row.get(0),
                )
                .or_else(|e| match e {
                    rusqlite::Error::QueryReturnedNoRows => Ok(0),
                    e => Err(e),
                })?;
            let applied = usize::try_from(applied).unwrap_or(0);
            if applied > migrations.len() {
                bail!(
                    "the database's {module} schema (version {applied}) is newer than this kiln \
                     (version {}): use a newer kiln or another --root",
                    migrations.len()
                );
            }
            for (i, sql) in migrations.iter().enumerate().skip(applied) {
                tx.execute_batch(sql)
                    .with_context(|| format!("{module} schema migration {}", i + 1))?;
            }
            tx.execute(
                "INSERT INTO schema_versions (module, version) VALUES (?1, ?2)
                 ON CONFLICT(module) DO UPDATE SET version = excluded.version",
                rusqlite::params![module, migrations.len() as i64],
            )?;
            Ok(())
        })
        .with_context(|| format!("migrating the {module} tables"))
    }
}

/// Empties `tmp/` when no other kiln process holds the root; otherwise removes only entries old
/// enough to be crash leftovers. Leaves the root lock held shared.
fn clean_tmp(root: &Path, lock: &fs::File) -> Result<()> {
    let tmp = root.join("tmp");
    let exclusive = flock(lock, libc::LOCK_EX | libc::LOCK_NB).is_ok();
    let now = SystemTime::now();
    for entry in fs::read_dir(&tmp).with_context(|| format!("reading {}", tmp.display()))? {
        let entry = entry?;
        let stale = exclusive
            || entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .is_some_and(|age| age > STALE_TMP_AGE);
        if stale {
            let path = entry.path();
            let removed = if entry.file_type()?.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            // Another process may be cleaning too.
            if let Err(e) = removed {
                if e.kind() != std::io::ErrorKind::NotFound {
                    return Err(e).with_context(|| format!("removing stale {}", path.display()));
                }
            }
        }
    }
    flock(lock, libc::LOCK_SH)
        .with_context(|| format!("locking {}", root.join("kiln.lock").display()))?;
    Ok(())
}

fn flock(file: &fs::File, op: libc::c_int) -> std::io::Result<()> {
    // SAFETY: flock on a descriptor we own; no memory is passed.
    let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Switches the database to WAL mode (a no-op once it is). The switch needs the write lock, and
/// while another process is opening a new database SQLite can answer "locked" without calling
/// the busy handler, so that answer is retried here until `BUSY_TIMEOUT` has passed.
fn set_wal_mode(conn: &Connection) -> rusqlite::Result<String> {
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    let mut pause = std::time::Duration::from_millis(2);
    loop {
        match conn.query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0)) {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if matches!(
                    e.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                ) && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_millis(100));
            }
            other => return other,
        }
    }
}
