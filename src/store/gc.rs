//! Housekeeping of the state root: what its content costs on disk (`kiln system df`), the build
//! cache's records by when they were last used, build leases, and collecting what nothing needs
//! any more (`kiln builder prune`, the automatic cap at the end of a build, `rmi`'s leftovers).
//!
//! Crash safety: a collection first changes rows in one SQLite transaction, which also lists the
//! files to delete in `gc_pending`; [`Store::sweep_pending`] then deletes each listed file that is
//! still unreferenced, under the write lock (so a concurrent commit that re-checks its blobs in
//! its own transaction either sees the file or fails cleanly), and forgets the row. A kiln killed
//! at any point leaves rows that say what is left to delete, and the next collection finishes it.
//!
//! Leases: a build holds a row in `build_leases` (holder = its pid and start time) from before
//! its first cache lookup to its end, and touches each cache key *before* looking it up
//! ([`touch_cache_key`]). The collector never evicts a record touched since the oldest live
//! lease began, so a record a running build has found is never taken from under it; a build
//! whose lookup comes after an eviction simply misses and runs the step. Leases of processes
//! that are gone are removed by the next collection.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::{ImageRecord, Store};

pub(super) const MIGRATIONS: &[&str] = &["
    -- Files a collection decided to delete (relative to the root: blobs/sha256/<hex> or
    -- snapshots/layers/<hex>); removed once the file is gone or is referenced again.
    CREATE TABLE gc_pending (path TEXT PRIMARY KEY);
    -- Running builds: `<pid>-<start>-<n>` and when the lease began (ms since the epoch).
    CREATE TABLE build_leases (holder TEXT PRIMARY KEY, started INTEGER NOT NULL);
"];

/// The build cache's tables as the collector reads them (the solver's `build_cache` and the
/// use times kept here), created when a root has none yet.
pub const CACHE_USE_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS build_cache (
    key TEXT PRIMARY KEY,
    layer TEXT,
    created INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS build_cache_used (
    key TEXT PRIMARY KEY,
    last_used INTEGER NOT NULL,     -- ms since the epoch
    uses INTEGER NOT NULL DEFAULT 0
);";

/// The directory of `RUN --mount=type=cache` directories (`ops::run` owns their layout).
pub const CACHE_MOUNTS_DIR: &str = "build-cache-mounts";

/// In each active snapshot's directory (`snapshots/active/<id>/`): the names of the layer
/// directories it stands on, one a line (written by `snapshot` before it mounts them).
pub const LOWERS_FILE: &str = "lowers";

/// The layer directories (by name) that live snapshots (builds' steps, containers) stand on.
fn layers_in_use(root: &Path) -> HashSet<String> {
    let mut names = HashSet::new();
    if let Ok(entries) = std::fs::read_dir(root.join("snapshots/active")) {
        for e in entries.flatten() {
            if let Ok(text) = std::fs::read_to_string(e.path().join(LOWERS_FILE)) {
                names.extend(text.lines().map(str::to_string));
            }
        }
    }
    names
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Records that a build is about to look up (or has just recorded) the cache entry `key`: the
/// collector keeps entries touched since the oldest running build began. Call it before the
/// lookup (see the module's comment).
/// (The tables must exist: `solver::cache::init` makes them with [`CACHE_USE_SCHEMA`].) The
/// use count (`system df -v`'s USAGE) counts the lookups that found the entry, plus its build.
pub fn touch_cache_key(conn: &Connection, key: &str) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO build_cache_used (key, last_used, uses)
         VALUES (?1, ?2, EXISTS(SELECT 1 FROM build_cache WHERE key = ?1))
         ON CONFLICT(key) DO UPDATE SET last_used = excluded.last_used,
             uses = uses + EXISTS(SELECT 1 FROM build_cache WHERE key = ?1)",
    )?
    .execute(params![key, now_ms()])
    .context("recording a build cache use")?;
    Ok(())
}

/// Allocated bytes of a file or tree (st_blocks), each inode counted once across calls that share
/// `seen` (hard links between layers, as `du` counts them).
pub fn tree_size(path: &Path, seen: &mut HashSet<(u64, u64)>) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    let mut total = 0;
    if seen.insert((meta.dev(), meta.ino())) {
        total += meta.blocks() * 512;
    }
    if meta.is_dir() {
        if let Ok(entries) = std::fs::read_dir(path) {
            for e in entries.flatten() {
                total += tree_size(&e.path(), seen);
            }
        }
    }
    total
}

/// Bytes that deleting the tree at `path` frees: inodes whose every link is inside it.
pub fn freed_by_removing(path: &Path) -> u64 {
    fn walk(p: &Path, links: &mut HashMap<(u64, u64), (u64, u64, u64)>) {
        let Ok(meta) = std::fs::symlink_metadata(p) else {
            return;
        };
        // A directory's link count counts its subdirectories' `..`: it goes with its tree.
        let nlink = if meta.is_dir() { 1 } else { meta.nlink() };
        let entry =
            links
                .entry((meta.dev(), meta.ino()))
                .or_insert((nlink, 0, meta.blocks() * 512));
        entry.1 += 1;
        if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(p) {
                for e in entries.flatten() {
                    walk(&e.path(), links);
                }
            }
        }
    }
    let mut links = HashMap::new();
    walk(path, &mut links);
    links
        .values()
        .filter(|(nlink, seen, _)| seen >= nlink)
        .map(|(_, _, bytes)| bytes)
        .sum()
}

/// One build cache record as the collector and `system df -v` see it.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheRecord {
    pub key: String,
    /// The layer's descriptor digest and DiffID; `None` for a step that changed nothing.
    pub layer: Option<(String, String)>,
    /// Seconds since the epoch, when the step was built.
    pub created: i64,
    /// Milliseconds since the epoch (the build time when the record was never touched).
    pub last_used: i64,
    pub uses: i64,
}

/// A layer (by DiffID) that build cache records hold, with the records: the unit the collector
/// evicts (a layer is freed only with the last record that names it).
#[derive(Debug, Clone, PartialEq)]
pub struct CacheGroup {
    pub diff_id: Option<String>,
    pub keys: Vec<String>,
    /// The latest use of any of its records (ms).
    pub last_used: i64,
    /// Bytes on disk the layer costs that no image shares (0 when an image has it too, or for
    /// records without a layer): what evicting the group frees.
    pub size: u64,
    /// An image has the layer too.
    pub shared: bool,
}

/// What a collection may evict.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Policy {
    /// Evict oldest-used first only while the cache holds more than this many bytes (`None`:
    /// every eligible group).
    pub keep_bytes: Option<u64>,
    /// Only groups last used before this time (ms): `--filter until=`.
    pub used_before: Option<i64>,
    /// Also groups whose layer an image has (evicting them frees nothing until the image goes):
    /// `builder prune -a`.
    pub include_shared: bool,
}

/// Which groups to evict, oldest-used first: never a group used at or after `protected_since`
/// (the oldest running build's start), nor one the filter leaves out; with a cap, only until the
/// groups that stay fit under it. Returns indexes into `groups`.
pub fn plan(groups: &[CacheGroup], policy: &Policy, protected_since: Option<i64>) -> Vec<usize> {
    let mut order: Vec<usize> = (0..groups.len()).collect();
    order.sort_by_key(|&i| (groups[i].last_used, groups[i].keys.first().cloned()));
    let mut total: u64 = groups.iter().map(|g| g.size).sum();
    let mut out = Vec::new();
    for i in order {
        let g = &groups[i];
        if let Some(keep) = policy.keep_bytes {
            if total <= keep {
                break;
            }
            if g.size == 0 {
                // Frees nothing: under a cap it waits for a prune (or for its layer's image to go).
                continue;
            }
        }
        if g.shared && !policy.include_shared {
            continue;
        }
        if protected_since.is_some_and(|t| g.last_used >= t) {
            continue;
        }
        // A pin without a record may be a running build's newest layer, pinned a moment before
        // its record is written: those go only while no build runs.
        if g.keys.is_empty() && protected_since.is_some() {
            continue;
        }
        if policy.used_before.is_some_and(|t| g.last_used >= t) {
            continue;
        }
        total -= g.size;
        out.push(i);
    }
    out
}

/// What a collection removed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Collected {
    /// The groups evicted (their records, with the sizes they were counted at).
    pub groups: Vec<CacheGroup>,
    /// Bytes freed on disk.
    pub freed: u64,
}

/// Per image, for `system df -v`.
#[derive(Debug, Clone)]
pub struct ImageUsage {
    pub record: ImageRecord,
    pub size: u64,
    pub shared: u64,
    pub containers: usize,
}

/// Per build cache record, for `system df -v`.
#[derive(Debug, Clone)]
pub struct CacheUsage {
    pub record: CacheRecord,
    /// The bytes of its layer (shared or not).
    pub size: u64,
    pub shared: bool,
    pub in_use: bool,
}

/// What the root's content costs, as `kiln system df` shows it.
#[derive(Debug, Clone, Default)]
pub struct DiskUsage {
    pub images: Vec<ImageUsage>,
    /// Distinct images (a name and its other names are one).
    pub image_count: usize,
    pub images_active: usize,
    pub images_size: u64,
    pub images_reclaimable: u64,
    pub cache: Vec<CacheUsage>,
    /// (directory name, bytes, in use) of each `RUN --mount=type=cache` directory.
    pub cache_mounts: Vec<(String, u64, bool)>,
    pub cache_size: u64,
    pub cache_reclaimable: u64,
}

/// The files of one layer (every blob with its DiffID, its unpacked directory, its entry list).
fn layer_paths(root: &Path, conn: &Connection, diff_id: &str) -> Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    let mut stmt = conn.prepare_cached("SELECT digest FROM layers WHERE diff_id = ?1")?;
    let digests = stmt
        .query_map([diff_id], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    for d in digests {
        if let Ok(hex) = crate::digest::digest_hex(&d) {
            paths.push(root.join("blobs/sha256").join(hex));
        }
    }
    if let Ok(hex) = crate::digest::digest_hex(diff_id) {
        paths.push(root.join("snapshots/layers").join(hex));
    }
    let changes: Option<String> = conn
        .query_row(
            "SELECT changes FROM unpacked_layers WHERE diff_id = ?1",
            [diff_id],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(hex) = changes.and_then(|c| crate::digest::digest_hex(&c).ok().map(String::from)) {
        paths.push(root.join("blobs/sha256").join(hex));
    }
    paths.dedup();
    Ok(paths)
}

/// The bytes of one unit of content (`layer:<DiffID>` or a blob digest), measured once.
fn unit_bytes(
    root: &Path,
    conn: &Connection,
    unit: &str,
    sizes: &mut HashMap<String, u64>,
    seen: &mut HashSet<(u64, u64)>,
) -> Result<u64> {
    if let Some(s) = sizes.get(unit) {
        return Ok(*s);
    }
    let s = match unit.strip_prefix("layer:") {
        Some(diff_id) => layer_paths(root, conn, diff_id)?
            .iter()
            .map(|p| tree_size(p, seen))
            .sum(),
        None => blob_path(root, unit).map_or(0, |p| tree_size(&p, seen)),
    };
    sizes.insert(unit.to_string(), s);
    Ok(s)
}

fn blob_path(root: &Path, digest: &str) -> Option<PathBuf> {
    crate::digest::digest_hex(digest)
        .ok()
        .map(|hex| root.join("blobs/sha256").join(hex))
}

fn cache_records(conn: &Connection) -> Result<Vec<CacheRecord>> {
    conn.execute_batch(CACHE_USE_SCHEMA)?;
    let mut stmt = conn.prepare(
        "SELECT c.key, c.layer, c.created, u.last_used, COALESCE(u.uses, 0)
         FROM build_cache c LEFT JOIN build_cache_used u ON u.key = c.key",
    )?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, Option<i64>>(3)?,
                r.get::<_, i64>(4)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows
        .into_iter()
        .map(|(key, layer, created, used, uses)| {
            let layer = layer
                .and_then(|j| serde_json::from_str::<serde_json::Value>(&j).ok())
                .and_then(|v| {
                    Some((
                        v.get("digest")?.as_str()?.to_string(),
                        v.get("diff_id")?.as_str()?.to_string(),
                    ))
                });
            CacheRecord {
                key,
                layer,
                created,
                last_used: used.unwrap_or(created.saturating_mul(1000)),
                uses,
            }
        })
        .collect())
}

/// DiffIDs of the layers images have.
fn image_diff_ids(conn: &Connection) -> Result<HashSet<String>> {
    let mut stmt = conn.prepare(
        "SELECT DISTINCT l.diff_id FROM manifest_blobs b JOIN layers l ON l.digest = b.blob",
    )?;
    let rows = stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<HashSet<_>>>()?;
    Ok(rows)
}

/// The oldest live lease's start (ms), after removing the leases of processes that are gone.
fn live_leases_since(conn: &Connection) -> Result<Option<i64>> {
    let mut stmt = conn.prepare("SELECT holder, started FROM build_leases")?;
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut oldest: Option<i64> = None;
    for (holder, started) in rows {
        let alive = holder
            .rsplit_once('-')
            .and_then(|(owner, _)| crate::owner::Owner::parse_tag(owner))
            .is_some_and(|o| o.is_alive());
        if alive {
            oldest = Some(oldest.map_or(started, |o| o.min(started)));
        } else {
            conn.execute("DELETE FROM build_leases WHERE holder = ?1", [&holder])?;
        }
    }
    Ok(oldest)
}

/// A running build's lease (see the module's comment); released when dropped.
#[derive(Debug)]
pub struct BuildLease {
    /// The lease's own connection, without a sync per commit (see [`Store::build_lease`]).
    conn: Connection,
    holder: String,
}

impl Drop for BuildLease {
    fn drop(&mut self) {
        // A lease left behind (kill -9) is removed by the next collection once its process is
        // gone.
        let _ = self
            .conn
            .execute("DELETE FROM build_leases WHERE holder = ?1", [&self.holder]);
    }
}

impl Store {
    /// Takes a build lease: until it is dropped, no collection evicts a cache record this build
    /// has touched.
    ///
    /// The lease has a connection of its own whose commits are not synced (WAL with
    /// `synchronous=NORMAL`): other processes see the row at once, and a lease only matters
    /// while its process lives, so losing it to a power cut loses nothing. Taking and releasing
    /// it then costs no fsync, which every build (a no-op rebuild too) would otherwise pay twice.
    pub fn build_lease(&self) -> Result<BuildLease> {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let holder = format!(
            "{}-{}",
            crate::owner::Owner::current().tag(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let conn = Connection::open(self.root.join("kiln.db"))
            .context("opening the database for a build lease")?;
        conn.busy_timeout(super::BUSY_TIMEOUT)?;
        conn.execute_batch("PRAGMA synchronous=NORMAL;")?;
        // As the store's own connection: no checkpoint (three fsyncs) when it closes.
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
            true,
        )?;
        conn.execute(
            "INSERT OR REPLACE INTO build_leases (holder, started) VALUES (?1, ?2)",
            params![holder, now_ms()],
        )
        .context("taking a build lease")?;
        Ok(BuildLease { conn, holder })
    }

    /// Whether a build (other than ones that are gone) holds a lease now.
    pub fn builds_running(&self) -> Result<bool> {
        self.with_conn(|conn| Ok(live_leases_since(conn)?.is_some()))
    }

    /// The build cache records, grouped by layer, with what evicting each group frees.
    pub fn cache_groups(&self) -> Result<Vec<CacheGroup>> {
        self.with_conn(|conn| cache_groups(&self.root, conn))
    }

    /// Evicts build cache groups as `policy` says ([`plan`]), then deletes the layers and blobs
    /// that only they held (and every collection's leftovers). Returns the keys and bytes freed.
    pub fn collect_build_cache(&self, policy: &Policy) -> Result<Collected> {
        let evicted = self.transaction(|tx| {
            let protected = live_leases_since(tx)?;
            let groups = cache_groups(&self.root, tx)?;
            let chosen = plan(&groups, policy, protected);
            let mut evicted = Vec::new();
            for i in chosen {
                let g = &groups[i];
                evict_group_tx(tx, g)?;
                evicted.push(g.clone());
            }
            tx.execute(
                "DELETE FROM build_cache_used WHERE key NOT IN (SELECT key FROM build_cache)
                 AND last_used < ?1",
                [now_ms() - 3_600_000],
            )?;
            Ok(evicted)
        })?;
        let freed = self.sweep_pending()?;
        Ok(Collected {
            groups: evicted,
            freed,
        })
    }

    /// Deletes the files listed in `gc_pending` that nothing references (any more), and forgets
    /// the rows. Returns the bytes freed.
    pub fn sweep_pending(&self) -> Result<u64> {
        // The usual case, answered by a read: nothing is pending.
        let pending: bool = self.with_conn(|c| {
            Ok(c.query_row("SELECT EXISTS(SELECT 1 FROM gc_pending)", [], |r| r.get(0))?)
        })?;
        if !pending {
            return Ok(0);
        }
        let mut freed = 0;
        let mut dirs = Vec::new();
        let in_use = layers_in_use(&self.root);
        self.transaction(|tx| {
            let paths: Vec<String> = {
                let mut stmt = tx.prepare("SELECT path FROM gc_pending")?;
                let rows = stmt
                    .query_map([], |r| r.get(0))?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                rows
            };
            for rel in paths {
                let path = self.root.join(&rel);
                if let Some(hex) = rel.strip_prefix("blobs/sha256/") {
                    let digest = format!("sha256:{hex}");
                    if !blob_referenced_tx(tx, &digest)? {
                        if let Ok(m) = std::fs::symlink_metadata(&path) {
                            if m.nlink() <= 1 {
                                freed += m.blocks() * 512;
                            }
                        }
                        match std::fs::remove_file(&path) {
                            Ok(()) => {}
                            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                            Err(e) => {
                                return Err(e)
                                    .with_context(|| format!("deleting {}", path.display()))
                            }
                        }
                    }
                } else if let Some(hex) = rel.strip_prefix("snapshots/layers/") {
                    let diff_id = format!("sha256:{hex}");
                    if in_use.contains(hex) {
                        // A running container or step stands on it: the next sweep takes it.
                        continue;
                    }
                    if !layer_dir_referenced_tx(tx, &diff_id)? {
                        // One rename under the lock; the tree goes after the commit (a crash
                        // leaves it in tmp/, which the next kiln empties).
                        let gone = self.tmp_dir().join(format!(
                            "gc-layer.{}.{hex}",
                            crate::owner::Owner::current().tag()
                        ));
                        match std::fs::rename(&path, &gone) {
                            Ok(()) => dirs.push(gone),
                            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                            Err(e) => {
                                return Err(e)
                                    .with_context(|| format!("collecting {}", path.display()))
                            }
                        }
                    }
                }
                tx.execute("DELETE FROM gc_pending WHERE path = ?1", [&rel])?;
            }
            Ok(())
        })?;
        for dir in dirs {
            freed += freed_by_removing(&dir);
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("removing collected layer {}", dir.display()))?;
        }
        Ok(freed)
    }

    /// Lists a blob for deletion by the next [`Store::sweep_pending`] (in `tx`, with the rows
    /// that stop referencing it).
    pub(super) fn pend_blob_tx(&self, tx: &Transaction, digest: &str) -> Result<()> {
        if let Ok(hex) = crate::digest::digest_hex(digest) {
            tx.execute(
                "INSERT OR IGNORE INTO gc_pending (path) VALUES (?1)",
                [format!("blobs/sha256/{hex}")],
            )?;
        }
        Ok(())
    }

    /// Lists a layer's unpacked directory for deletion (see [`Store::pend_blob_tx`]).
    pub(super) fn pend_layer_dir_tx(&self, tx: &Transaction, diff_id: &str) -> Result<()> {
        if let Ok(hex) = crate::digest::digest_hex(diff_id) {
            tx.execute(
                "INSERT OR IGNORE INTO gc_pending (path) VALUES (?1)",
                [format!("snapshots/layers/{hex}")],
            )?;
        }
        Ok(())
    }

    /// What the root's images and build cache cost on disk (allocated bytes, each inode once).
    pub fn disk_usage(&self) -> Result<DiskUsage> {
        let images = self.list_images()?;
        let root = self.root.clone();
        self.with_conn(|conn| {
            conn.execute_batch(CACHE_USE_SCHEMA)?;
            let mut seen = HashSet::new();
            // Units: a layer (by DiffID) or another blob (by digest), each with its bytes.
            let mut unit_size: HashMap<String, u64> = HashMap::new();
            // The units of each distinct stored image.
            let mut by_stored: BTreeMap<String, (Vec<String>, usize)> = BTreeMap::new();
            for img in &images {
                let stored = img.stored_digest().to_string();
                if by_stored.contains_key(&stored) {
                    continue;
                }
                let manifests: Vec<String> = match &img.index {
                    Some(ix) => ix
                        .manifests
                        .iter()
                        .map(|m| m.manifest_digest.clone())
                        .collect(),
                    None => vec![img.manifest_digest.clone()],
                };
                let mut units = vec![stored.clone()];
                let mut containers = 0usize;
                for m in &manifests {
                    units.push(m.clone());
                    let mut stmt = conn.prepare_cached(
                        "SELECT b.blob, l.diff_id FROM manifest_blobs b
                         LEFT JOIN layers l ON l.digest = b.blob WHERE b.manifest = ?1",
                    )?;
                    let rows = stmt
                        .query_map([m], |r| {
                            Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?))
                        })?
                        .collect::<rusqlite::Result<Vec<_>>>()?;
                    for (blob, diff_id) in rows {
                        units.push(match diff_id {
                            Some(d) => format!("layer:{d}"),
                            None => blob,
                        });
                    }
                    containers += conn.query_row(
                        "SELECT COUNT(*) FROM image_uses WHERE manifest = ?1",
                        [m],
                        |r| r.get::<_, i64>(0),
                    )? as usize;
                }
                units.sort();
                units.dedup();
                by_stored.insert(stored, (units, containers));
            }
            let mut users: HashMap<String, usize> = HashMap::new();
            for (units, _) in by_stored.values() {
                for u in units {
                    *users.entry(u.clone()).or_default() += 1;
                }
            }
            let mut usage = DiskUsage {
                image_count: by_stored.len(),
                ..DiskUsage::default()
            };
            let mut active_units = HashSet::new();
            let mut stored_sizes: HashMap<String, (u64, u64, usize)> = HashMap::new();
            for (stored, (units, containers)) in &by_stored {
                let (mut size, mut shared) = (0, 0);
                for u in units {
                    let s = unit_bytes(&root, conn, u, &mut unit_size, &mut seen)?;
                    size += s;
                    if users.get(u).copied().unwrap_or(0) > 1 {
                        shared += s;
                    }
                    if *containers > 0 {
                        active_units.insert(u.clone());
                    }
                }
                if *containers > 0 {
                    usage.images_active += 1;
                }
                stored_sizes.insert(stored.clone(), (size, shared, *containers));
            }
            usage.images_size = users.keys().map(|u| unit_size[u]).sum();
            let active: u64 = active_units.iter().map(|u| unit_size[u]).sum();
            usage.images_reclaimable = usage.images_size - active;
            for img in images {
                if let Some(&(size, shared, containers)) = stored_sizes.get(img.stored_digest()) {
                    usage.images.push(ImageUsage {
                        record: img,
                        size,
                        shared,
                        containers,
                    });
                }
            }
            // The build cache: layers of records that no image has.
            let image_layers = image_diff_ids(conn)?;
            let protected = live_leases_since(conn)?;
            let mut counted = HashSet::new();
            for rec in cache_records(conn)? {
                let (size, shared) = match &rec.layer {
                    Some((_, diff_id)) => {
                        let unit = format!("layer:{diff_id}");
                        let s = unit_bytes(&root, conn, &unit, &mut unit_size, &mut seen)?;
                        let shared = image_layers.contains(diff_id) || !counted.insert(unit);
                        (s, shared)
                    }
                    None => (0, false),
                };
                let in_use = protected.is_some_and(|t| rec.last_used >= t);
                if !shared {
                    usage.cache_size += size;
                    if !in_use {
                        usage.cache_reclaimable += size;
                    }
                }
                usage.cache.push(CacheUsage {
                    record: rec,
                    size,
                    shared,
                    in_use,
                });
            }
            // Layers pinned for the cache whose records were replaced: the next prune's first.
            for g in cache_groups(&root, conn)? {
                let Some(diff_id) = g.diff_id.filter(|_| g.keys.is_empty()) else {
                    continue;
                };
                let unit = format!("layer:{diff_id}");
                let size = unit_bytes(&root, conn, &unit, &mut unit_size, &mut seen)?;
                let shared = g.shared || !counted.insert(unit);
                if !shared {
                    usage.cache_size += size;
                    if protected.is_none() {
                        usage.cache_reclaimable += size;
                    }
                }
                usage.cache.push(CacheUsage {
                    record: CacheRecord {
                        key: diff_id.clone(),
                        layer: Some((diff_id.clone(), diff_id)),
                        created: 0,
                        last_used: 0,
                        uses: 0,
                    },
                    size,
                    shared,
                    in_use: protected.is_some(),
                });
            }
            usage
                .cache
                .sort_by_key(|c| std::cmp::Reverse(c.record.last_used));
            let mounts = root.join(CACHE_MOUNTS_DIR);
            if let Ok(entries) = std::fs::read_dir(&mounts) {
                let mut names: Vec<_> = entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
                names.sort();
                for name in names {
                    let s = tree_size(&mounts.join(&name), &mut seen);
                    let in_use = protected.is_some();
                    usage.cache_size += s;
                    if !in_use {
                        usage.cache_reclaimable += s;
                    }
                    usage.cache_mounts.push((name, s, in_use));
                }
            }
            Ok(usage)
        })
    }

    /// Removes the `RUN --mount=type=cache` directories (`builder prune -a`), unless a build is
    /// running (it may be using one). Returns (names removed, bytes freed).
    pub fn remove_cache_mounts(&self) -> Result<(Vec<String>, u64)> {
        if self.builds_running()? {
            return Ok((Vec::new(), 0));
        }
        let dir = self.root.join(CACHE_MOUNTS_DIR);
        let mut removed = Vec::new();
        let mut freed = 0;
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok((removed, 0));
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let path = e.path();
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            // Renamed away first, so a build never sees half a directory; tmp/ is emptied by
            // the next kiln if this one is killed.
            let gone = self.tmp_dir().join(format!(
                "gc-mount.{}.{name}",
                crate::owner::Owner::current().tag()
            ));
            match std::fs::rename(&path, &gone) {
                Ok(()) => {
                    freed += freed_by_removing(&gone);
                    std::fs::remove_dir_all(&gone)
                        .with_context(|| format!("removing cache mount {}", gone.display()))?;
                    // Its lock file (`sharing=locked|private`), which no build holds now.
                    let lock = dir.join(format!("{name}.lock"));
                    if let Ok(m) = std::fs::symlink_metadata(&lock) {
                        freed += m.blocks() * 512;
                        let _ = std::fs::remove_file(&lock);
                    }
                    removed.push(name);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
            }
        }
        Ok((removed, freed))
    }

    /// Forgets the inputs recorded to explain cache misses (`builder prune -a`).
    pub fn forget_step_inputs(&self) -> Result<()> {
        self.with_conn(|conn| {
            conn.execute_batch(
                "CREATE TABLE IF NOT EXISTS build_step_inputs (
                    place TEXT PRIMARY KEY, inputs TEXT NOT NULL);
                 DELETE FROM build_step_inputs;",
            )?;
            Ok(())
        })
    }
}

/// The default cap of the build cache: this share of the filesystem holding the root.
pub const DEFAULT_CACHE_PERCENT: f64 = 10.0;

/// The build cache's cap as set: `KILN_BUILD_CACHE_SIZE`, else `build-cache-size` in
/// `[storage]` of the config file, else [`DEFAULT_CACHE_PERCENT`]% of the filesystem.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CacheCap {
    Bytes(u64),
    Percent(f64),
    Off,
}

impl CacheCap {
    /// Parses `"20GiB"`, `"10%"` or `"off"`.
    pub fn parse(s: &str) -> Result<CacheCap> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("off") {
            return Ok(CacheCap::Off);
        }
        if let Some(p) = t.strip_suffix('%') {
            let p: f64 = p
                .trim()
                .parse()
                .ok()
                .filter(|p| (0.0..=100.0).contains(p))
                .with_context(|| {
                    format!("build-cache-size {s:?}: a percentage must be from 0% to 100%")
                })?;
            return Ok(CacheCap::Percent(p));
        }
        Ok(CacheCap::Bytes(
            super::space::parse_size(t).with_context(|| {
                format!("build-cache-size {s:?}: expected a size (\"20GiB\"), a share (\"10%\") or \"off\"")
            })?,
        ))
    }

    /// The cap in force for this process.
    pub fn current() -> Result<CacheCap> {
        let env = std::env::var("KILN_BUILD_CACHE_SIZE")
            .ok()
            .filter(|v| !v.trim().is_empty());
        let text = match env {
            Some(v) => Some(v),
            None => crate::config::load()?.storage.build_cache_size,
        };
        match text {
            Some(t) => CacheCap::parse(&t),
            None => Ok(CacheCap::Percent(DEFAULT_CACHE_PERCENT)),
        }
    }

    /// The cap in bytes for a filesystem of `total` bytes (`None`: off).
    pub fn bytes(&self, total: u64) -> Option<u64> {
        match *self {
            CacheCap::Bytes(b) => Some(b),
            CacheCap::Percent(p) => Some((total as f64 * p / 100.0) as u64),
            CacheCap::Off => None,
        }
    }
}

impl Store {
    /// The automatic collector, run at the end of a build: when the build cache's layers (those
    /// no image has) exceed the cap, evicts the least recently used until they fit, never what
    /// a running build has used. Returns what it removed (nothing when under the cap).
    pub fn enforce_cache_cap(&self) -> Result<Collected> {
        let (_, total) = super::space::free_space(&self.root)
            .with_context(|| format!("statfs {}", self.root.display()))?;
        let Some(cap) = CacheCap::current()?.bytes(total) else {
            return Ok(Collected::default());
        };
        let held: u64 = self.cache_groups()?.iter().map(|g| g.size).sum();
        if held <= cap {
            // Leftovers of a killed collection still go.
            let freed = self.sweep_pending()?;
            return Ok(Collected {
                groups: Vec::new(),
                freed,
            });
        }
        self.collect_build_cache(&Policy {
            keep_bytes: Some(cap),
            ..Policy::default()
        })
    }
}

fn cache_groups(root: &Path, conn: &Connection) -> Result<Vec<CacheGroup>> {
    let image_layers = image_diff_ids(conn)?;
    let mut groups: BTreeMap<Option<String>, CacheGroup> = BTreeMap::new();
    let mut empty = Vec::new();
    for rec in cache_records(conn)? {
        match &rec.layer {
            None => empty.push(CacheGroup {
                diff_id: None,
                keys: vec![rec.key.clone()],
                last_used: rec.last_used,
                size: 0,
                shared: false,
            }),
            Some((_, diff_id)) => {
                let g = groups
                    .entry(Some(diff_id.clone()))
                    .or_insert_with(|| CacheGroup {
                        diff_id: Some(diff_id.clone()),
                        keys: Vec::new(),
                        last_used: i64::MIN,
                        size: 0,
                        shared: image_layers.contains(diff_id),
                    });
                g.keys.push(rec.key.clone());
                g.last_used = g.last_used.max(rec.last_used);
            }
        }
    }
    // Layers still pinned for the build cache that no record names any more (a `--no-cache`
    // rebuild replaced the record): the oldest of all, with no keys.
    let named: HashSet<String> = groups.keys().flatten().cloned().collect();
    let mut stmt = conn.prepare(
        "SELECT DISTINCT l.diff_id FROM blob_refs r JOIN layers l ON l.digest = r.blob
         WHERE r.owner = 'build-cache'",
    )?;
    let pinned = stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    for diff_id in pinned {
        if !named.contains(&diff_id) {
            groups.insert(
                Some(diff_id.clone()),
                CacheGroup {
                    shared: image_layers.contains(&diff_id),
                    diff_id: Some(diff_id),
                    keys: Vec::new(),
                    last_used: i64::MIN,
                    size: 0,
                },
            );
        }
    }
    let mut out: Vec<CacheGroup> = groups.into_values().collect();
    for g in &mut out {
        if g.shared {
            continue;
        }
        if let Some(d) = &g.diff_id {
            g.size = recorded_layer_size(root, conn, d)?;
        }
    }
    out.extend(empty);
    Ok(out)
}

/// A layer's bytes from what the store recorded (tar size of an unpacked layer, blob sizes) and
/// the blobs' file sizes: cheap enough for the end of every build.
fn recorded_layer_size(root: &Path, conn: &Connection, diff_id: &str) -> Result<u64> {
    let unpacked: Option<i64> = conn
        .query_row(
            "SELECT size FROM unpacked_layers WHERE diff_id = ?1",
            [diff_id],
            |r| r.get(0),
        )
        .optional()?;
    let mut size = unpacked.unwrap_or(0).max(0) as u64;
    let mut stmt = conn.prepare_cached("SELECT digest, size FROM layers WHERE diff_id = ?1")?;
    let rows = stmt
        .query_map([diff_id], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let dir = crate::digest::digest_hex(diff_id)
        .ok()
        .map(|hex| root.join("snapshots/layers").join(hex));
    let mut unpacked_counted = unpacked.is_some();
    for (digest, recorded) in rows {
        if let Some(m) = blob_path(root, &digest).and_then(|p| std::fs::metadata(p).ok()) {
            size += m.len();
        }
        // A pulled layer unpacked for a build: its directory costs about its tar, which is
        // not recorded; its blob's size stands in for it.
        if !unpacked_counted && dir.as_ref().is_some_and(|d| d.is_dir()) {
            size += recorded.max(0) as u64;
            unpacked_counted = true;
        }
    }
    Ok(size)
}

/// Deletes a group's records and their pins, and lists for deletion the layer's files when
/// nothing else (an image, another pin) references them.
fn evict_group_tx(tx: &Transaction, g: &CacheGroup) -> Result<()> {
    let mut digests = HashSet::new();
    for key in &g.keys {
        let layer: Option<Option<String>> = tx
            .query_row("SELECT layer FROM build_cache WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()?;
        if let Some(d) = layer
            .flatten()
            .and_then(|j| serde_json::from_str::<serde_json::Value>(&j).ok())
            .and_then(|v| Some(v.get("digest")?.as_str()?.to_string()))
        {
            digests.insert(d);
        }
        tx.execute("DELETE FROM build_cache WHERE key = ?1", [key])?;
        tx.execute("DELETE FROM build_cache_used WHERE key = ?1", [key])?;
    }
    let Some(diff_id) = &g.diff_id else {
        return Ok(());
    };
    for d in &digests {
        tx.execute(
            "DELETE FROM blob_refs WHERE owner = 'build-cache' AND blob = ?1",
            [d],
        )?;
    }
    tx.execute(
        "DELETE FROM blob_refs WHERE owner = 'build-cache'
         AND blob IN (SELECT digest FROM layers WHERE diff_id = ?1)",
        [diff_id],
    )?;
    let held: bool = tx.query_row(
        "SELECT EXISTS(SELECT 1 FROM layers l WHERE l.diff_id = ?1 AND (
                EXISTS(SELECT 1 FROM manifest_blobs b WHERE b.blob = l.digest)
             OR EXISTS(SELECT 1 FROM blob_refs r WHERE r.blob = l.digest)))
         OR EXISTS(SELECT 1 FROM build_cache c WHERE c.layer LIKE '%' || ?1 || '%')",
        [diff_id],
        |r| r.get(0),
    )?;
    if held {
        return Ok(());
    }
    forget_layer_tx(tx, diff_id)
}

/// Deletes every row of the layer `diff_id` (its blobs, its unpacked record) and lists its files
/// in `gc_pending`.
pub(super) fn forget_layer_tx(tx: &Transaction, diff_id: &str) -> Result<()> {
    let digests: Vec<String> = {
        let mut stmt = tx.prepare("SELECT digest FROM layers WHERE diff_id = ?1")?;
        let rows = stmt
            .query_map([diff_id], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows
    };
    let pend = |path: String| -> Result<()> {
        tx.execute(
            "INSERT OR IGNORE INTO gc_pending (path) VALUES (?1)",
            [path],
        )?;
        Ok(())
    };
    for d in digests {
        tx.execute("DELETE FROM layers WHERE digest = ?1", [&d])?;
        if let Ok(hex) = crate::digest::digest_hex(&d) {
            pend(format!("blobs/sha256/{hex}"))?;
        }
    }
    let changes: Option<String> = tx
        .query_row(
            "SELECT changes FROM unpacked_layers WHERE diff_id = ?1",
            [diff_id],
            |r| r.get(0),
        )
        .optional()?;
    tx.execute("DELETE FROM unpacked_layers WHERE diff_id = ?1", [diff_id])?;
    tx.execute("DELETE FROM layer_resume WHERE diff_id = ?1", [diff_id])?;
    if let Some(hex) = changes.and_then(|c| crate::digest::digest_hex(&c).ok().map(String::from)) {
        pend(format!("blobs/sha256/{hex}"))?;
    }
    if let Ok(hex) = crate::digest::digest_hex(diff_id) {
        pend(format!("snapshots/layers/{hex}"))?;
    }
    Ok(())
}

/// Whether any row names the blob `digest`.
fn blob_referenced_tx(tx: &Transaction, digest: &str) -> Result<bool> {
    Ok(tx.query_row(
        "SELECT EXISTS(SELECT 1 FROM manifest_blobs WHERE blob = ?1)
             OR EXISTS(SELECT 1 FROM manifests WHERE digest = ?1 OR config = ?1)
             OR EXISTS(SELECT 1 FROM layers WHERE digest = ?1)
             OR EXISTS(SELECT 1 FROM unpacked_layers WHERE changes = ?1)
             OR EXISTS(SELECT 1 FROM blob_refs WHERE blob = ?1)
             OR EXISTS(SELECT 1 FROM indexes WHERE digest = ?1)",
        [digest],
        |r| r.get(0),
    )?)
}

/// Whether a layer with this DiffID is still recorded (as a blob or unpacked).
fn layer_dir_referenced_tx(tx: &Transaction, diff_id: &str) -> Result<bool> {
    Ok(tx.query_row(
        "SELECT EXISTS(SELECT 1 FROM unpacked_layers WHERE diff_id = ?1)
             OR EXISTS(SELECT 1 FROM layers WHERE diff_id = ?1)",
        [diff_id],
        |r| r.get(0),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(key: &str, last_used: i64, size: u64) -> CacheGroup {
        CacheGroup {
            diff_id: Some(format!("sha256:{key}")),
            keys: vec![key.to_string()],
            last_used,
            size,
            shared: false,
        }
    }

    #[test]
    fn a_cap_evicts_oldest_used_first_until_the_rest_fits() {
        let groups = vec![
            group("new", 300, 10),
            group("old", 100, 10),
            group("mid", 200, 10),
        ];
        let cap = Policy {
            keep_bytes: Some(15),
            ..Policy::default()
        };
        assert_eq!(plan(&groups, &cap, None), vec![1, 2]);
        let cap = Policy {
            keep_bytes: Some(20),
            ..Policy::default()
        };
        assert_eq!(plan(&groups, &cap, None), vec![1]);
        assert_eq!(plan(&groups, &Policy::default(), None).len(), 3);
    }

    #[test]
    fn a_running_build_and_the_until_filter_protect_records() {
        let groups = vec![
            group("a", 100, 10),
            group("b", 200, 10),
            group("c", 300, 10),
        ];
        // A build running since 200 found b and c: only a may go.
        let all = Policy {
            keep_bytes: Some(0),
            ..Policy::default()
        };
        assert_eq!(plan(&groups, &all, Some(200)), vec![0]);
        let until = Policy {
            used_before: Some(250),
            ..Policy::default()
        };
        assert_eq!(plan(&groups, &until, None), vec![0, 1]);
    }

    #[test]
    fn records_that_free_nothing_wait_under_a_cap_but_go_with_a_prune() {
        let mut empty = group("e", 50, 0);
        empty.diff_id = None;
        let groups = vec![empty, group("x", 100, 10)];
        let cap = Policy {
            keep_bytes: Some(5),
            ..Policy::default()
        };
        assert_eq!(plan(&groups, &cap, None), vec![1]);
        assert_eq!(plan(&groups, &Policy::default(), None), vec![0, 1]);
    }

    #[test]
    fn pins_without_records_go_first_but_never_while_a_build_runs() {
        let mut stale = group("stale", i64::MIN, 10);
        stale.keys.clear();
        let groups = vec![group("a", 100, 10), stale];
        assert_eq!(plan(&groups, &Policy::default(), None), vec![1, 0]);
        assert_eq!(plan(&groups, &Policy::default(), Some(1_000)), vec![0]);
    }

    #[test]
    fn caps_parse_as_sizes_shares_or_off() {
        assert_eq!(CacheCap::parse("off").unwrap(), CacheCap::Off);
        assert_eq!(CacheCap::parse("10%").unwrap(), CacheCap::Percent(10.0));
        assert_eq!(CacheCap::parse("2GiB").unwrap(), CacheCap::Bytes(2 << 30));
        assert_eq!(CacheCap::Percent(10.0).bytes(1000), Some(100));
        assert_eq!(CacheCap::Off.bytes(1000), None);
        assert!(CacheCap::parse("150%").is_err());
        assert!(CacheCap::parse("lots").is_err());
    }

    #[test]
    fn removing_a_tree_frees_only_inodes_it_holds_every_link_of() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        std::fs::create_dir(&a).unwrap();
        std::fs::write(a.join("own"), vec![1u8; 100_000]).unwrap();
        std::fs::write(dir.path().join("outside"), vec![2u8; 100_000]).unwrap();
        std::fs::hard_link(dir.path().join("outside"), a.join("linked")).unwrap();
        let mut seen = HashSet::new();
        let whole = tree_size(&a, &mut seen);
        let freed = freed_by_removing(&a);
        assert!(freed < whole, "{freed} < {whole}");
        assert!(freed >= 100_000, "{freed}");
        // The same inode is counted once across calls sharing `seen`.
        assert_eq!(tree_size(&dir.path().join("outside"), &mut seen), 0);
    }
}
