//! Content digests of what a COPY/ADD selects, as BuildKit's contenthash computes them: each entry
//! contributes its type, mode, uid, gid, size, link target, xattrs and content (never its mtime),
//! and a selection's digest covers its entries in sorted order. Two contexts with the same files
//! give the same digest; touching a file without changing it does not change it.
//!
//! Reading file contents is the expensive part, so entry digests are cached per path, keyed by
//! (path, size, mtime ns, inode, ctime ns): any change to content, mode, owner or xattrs moves
//! ctime, so a no-op rebuild stats every entry and reads nothing else (no contents, no xattrs).
//! Files that do need reading are hashed on two threads.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::digest::Sha256;
use anyhow::{Context, Result};

use super::context::PathFilter;
use super::fsutil::{join_rel, resolve_in_root};

/// How many threads read file contents.
const HASH_THREADS: usize = 2;

/// Files modified this recently are not cached: their mtime may not change on a write that
/// follows within the clock's granularity (git's "racy" files).
const RACY_WINDOW_NS: i64 = 2_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StatKey {
    size: u64,
    mtime_ns: i64,
    ino: u64,
    ctime_ns: i64,
}

impl StatKey {
    fn of(meta: &fs::Metadata) -> StatKey {
        StatKey {
            size: meta.size(),
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            ino: meta.ino(),
            ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
        }
    }
}

/// Cached content digests of files, by absolute path. Loaded for one context from the database,
/// saved back (only what changed) after hashing.
/// Absolute path bytes -> (stat key, content digest).
type DigestMap = HashMap<Vec<u8>, (StatKey, [u8; 32])>;
/// Entries computed since loading, to be saved.
type DirtyList = Vec<(Vec<u8>, StatKey, [u8; 32])>;

#[derive(Default)]
pub struct FileDigestCache {
    entries: Mutex<DigestMap>,
    dirty: Mutex<DirtyList>,
}

const CACHE_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS build_entry_digest (
    path BLOB PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ino INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    digest BLOB NOT NULL
) WITHOUT ROWID";

impl FileDigestCache {
    /// Loads the cached digests of the files under `dir`.
    pub fn load(conn: &rusqlite::Connection, dir: &Path) -> Result<FileDigestCache> {
        conn.execute_batch(CACHE_SCHEMA)
            .context("creating the file digest cache table")?;
        let mut lo = dir.as_os_str().as_bytes().to_vec();
        lo.push(b'/');
        let mut hi = dir.as_os_str().as_bytes().to_vec();
        hi.push(b'/' + 1);
        let mut stmt = conn.prepare_cached(
            "SELECT path, size, mtime_ns, ino, ctime_ns, digest FROM build_entry_digest
             WHERE path >= ?1 AND path < ?2",
        )?;
        let mut map = HashMap::new();
        let mut rows = stmt.query(rusqlite::params![lo, hi])?;
        while let Some(row) = rows.next()? {
            let path: Vec<u8> = row.get(0)?;
            let digest: Vec<u8> = row.get(5)?;
            let Ok(digest) = <[u8; 32]>::try_from(digest.as_slice()) else {
                continue;
            };
            let key = StatKey {
                size: row.get::<_, i64>(1)? as u64,
                mtime_ns: row.get(2)?,
                ino: row.get::<_, i64>(3)? as u64,
                ctime_ns: row.get(4)?,
            };
            map.insert(path, (key, digest));
        }
        Ok(FileDigestCache {
            entries: Mutex::new(map),
            dirty: Mutex::new(Vec::new()),
        })
    }

    /// Writes the digests computed since `load` (one transaction).
    pub fn save(&self, conn: &mut rusqlite::Connection) -> Result<()> {
        let dirty = std::mem::take(&mut *self.dirty.lock().unwrap_or_else(|e| e.into_inner()));
        if dirty.is_empty() {
            return Ok(());
        }
        conn.execute_batch(CACHE_SCHEMA)?;
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT OR REPLACE INTO build_entry_digest (path, size, mtime_ns, ino, ctime_ns, digest)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for (path, key, digest) in &dirty {
                stmt.execute(rusqlite::params![
                    path,
                    key.size as i64,
                    key.mtime_ns,
                    key.ino as i64,
                    key.ctime_ns,
                    &digest[..]
                ])?;
            }
        }
        tx.commit().context("saving the file digest cache")?;
        Ok(())
    }

    fn lookup(&self, path: &[u8], key: StatKey) -> Option<[u8; 32]> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match entries.get(path) {
            Some((k, d)) if *k == key => Some(*d),
            _ => None,
        }
    }

    fn record(&self, path: Vec<u8>, key: StatKey, digest: [u8; 32], now_ns: i64) {
        if now_ns - key.mtime_ns < RACY_WINDOW_NS || now_ns - key.ctime_ns < RACY_WINDOW_NS {
            return;
        }
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(path.clone(), (key, digest));
        self.dirty
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((path, key, digest));
    }
}

/// What a COPY/ADD selected: the digest of the whole selection and one digest per entry (for
/// explaining a cache miss: which files changed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    pub digest: String,
    /// (path relative to the tree root, digest of the entry), sorted by path.
    pub entries: Vec<(String, [u8; 32])>,
}

/// Options for hashing a selection.
pub struct HashOptions<'a> {
    /// The `.dockerignore` of a context (or nothing for a stage's filesystem).
    pub filter: &'a dyn PathFilter,
    /// `--exclude` patterns, matched against paths relative to each source.
    pub excludes: &'a [String],
    pub cache: Option<&'a FileDigestCache>,
}

struct Pending {
    rel: String,
    path: PathBuf,
    meta: fs::Metadata,
    kind: u8,
    content: Option<[u8; 32]>,
    /// The whole entry's digest, when the cache had it.
    digest: Option<[u8; 32]>,
}

/// Hashes the sources (paths relative to `root`, already expanded from globs) the way a COPY reads
/// them: a source symlink is followed (inside the root), a directory source contributes everything
/// below it that the filter keeps.
pub fn hash_selection(root: &Path, sources: &[String], opts: &HashOptions) -> Result<Selection> {
    let excludes = super::copy::ExcludeSet::new(opts.excludes)?;
    let mut pending: Vec<Pending> = Vec::new();
    for source in sources {
        let path = resolve_in_root(root, source)?;
        let meta = fs::symlink_metadata(&path)
            .with_context(|| format!("{}: not found in the build context", display_rel(source)))?;
        collect(
            &path,
            source,
            "",
            meta,
            opts.filter,
            &excludes,
            &mut pending,
        )?;
    }
    hash_contents(&mut pending, opts.cache)?;
    let now = now_ns();
    let mut entries = Vec::with_capacity(pending.len());
    let mut total = Sha256::new();
    for p in &pending {
        let digest = match p.digest {
            Some(d) => d,
            None => {
                let d = entry_digest(p)?;
                if let Some(cache) = opts.cache {
                    cache.record(
                        p.path.as_os_str().as_bytes().to_vec(),
                        StatKey::of(&p.meta),
                        d,
                        now,
                    );
                }
                d
            }
        };
        total.update(p.rel.as_bytes());
        total.update([0]);
        total.update(digest);
        entries.push((p.rel.clone(), digest));
    }
    Ok(Selection {
        digest: format!("sha256:{}", hex::encode(total.finalize())),
        entries,
    })
}

fn display_rel(rel: &str) -> String {
    format!("\"/{rel}\"")
}

fn kind_of(meta: &fs::Metadata) -> u8 {
    let ft = meta.file_type();
    use std::os::unix::fs::FileTypeExt;
    if ft.is_dir() {
        b'd'
    } else if ft.is_symlink() {
        b'l'
    } else if ft.is_file() {
        b'f'
    } else if ft.is_block_device() {
        b'b'
    } else if ft.is_char_device() {
        b'c'
    } else if ft.is_fifo() {
        b'p'
    } else {
        b's'
    }
}

/// Walks one source depth-first in name order; `rel` is the path relative to the tree root and
/// `in_source` relative to the source (what `--exclude` matches).
fn collect(
    path: &Path,
    rel: &str,
    in_source: &str,
    meta: fs::Metadata,
    filter: &dyn PathFilter,
    excludes: &super::copy::ExcludeSet,
    out: &mut Vec<Pending>,
) -> Result<()> {
    let kind = kind_of(&meta);
    let excluded = !rel.is_empty() && filter.is_excluded(rel)
        || !in_source.is_empty() && excludes.is_excluded(in_source);
    if excluded && (kind != b'd' || filter.can_prune_dir(rel) && excludes.is_empty()) {
        return Ok(());
    }
    if !excluded {
        out.push(Pending {
            rel: rel.to_string(),
            path: path.to_path_buf(),
            meta: meta.clone(),
            kind,
            content: None,
            digest: None,
        });
    }
    if kind == b'd' {
        let mut children: Vec<(std::ffi::OsString, PathBuf)> = fs::read_dir(path)
            .with_context(|| format!("listing {}", path.display()))?
            .map(|e| e.map(|e| (e.file_name(), e.path())))
            .collect::<std::io::Result<_>>()
            .with_context(|| format!("listing {}", path.display()))?;
        children.sort();
        for (name, child) in children {
            let name = name.to_string_lossy();
            let meta = fs::symlink_metadata(&child)
                .with_context(|| format!("reading {}", child.display()))?;
            collect(
                &child,
                &join_rel(rel, &name),
                &join_rel(in_source, &name),
                meta,
                filter,
                excludes,
                out,
            )?;
        }
    }
    Ok(())
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Takes each entry's digest from the cache where its stat matches; reads the content of the
/// regular files that missed (on `HASH_THREADS` threads).
fn hash_contents(pending: &mut [Pending], cache: Option<&FileDigestCache>) -> Result<()> {
    let mut todo: Vec<&mut Pending> = Vec::new();
    for p in pending.iter_mut() {
        if let Some(cache) = cache {
            let key = StatKey::of(&p.meta);
            if let Some(d) = cache.lookup(p.path.as_os_str().as_bytes(), key) {
                p.digest = Some(d);
                continue;
            }
        }
        if p.kind == b'f' {
            todo.push(p);
        }
    }
    if todo.is_empty() {
        return Ok(());
    }
    let threads = HASH_THREADS.min(todo.len()).max(1);
    let chunk = todo.len().div_ceil(threads);
    std::thread::scope(|scope| -> Result<()> {
        let handles: Vec<_> = todo
            .chunks_mut(chunk)
            .map(|slice| {
                scope.spawn(move || -> Result<()> {
                    let mut buf = vec![0u8; 64 * 1024];
                    for p in slice.iter_mut() {
                        p.content = Some(hash_file(&p.path, &mut buf)?);
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("a hashing thread panicked"))??;
        }
        Ok(())
    })
}

fn hash_file(path: &Path, buf: &mut [u8]) -> Result<[u8; 32]> {
    let mut file = fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut h = Sha256::new();
    loop {
        let n = file
            .read(buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize())
}

/// The digest of one entry: type, permission bits, owner, size, link target, xattrs, content.
fn entry_digest(p: &Pending) -> Result<[u8; 32]> {
    let mut h = Sha256::new();
    h.update([p.kind]);
    h.update((p.meta.mode() & 0o7777).to_le_bytes());
    h.update(p.meta.uid().to_le_bytes());
    h.update(p.meta.gid().to_le_bytes());
    match p.kind {
        b'f' => {
            h.update(p.meta.size().to_le_bytes());
            h.update(p.content.unwrap_or([0; 32]));
        }
        b'l' => {
            let target = fs::read_link(&p.path)
                .with_context(|| format!("reading link {}", p.path.display()))?;
            h.update(target.as_os_str().as_bytes());
        }
        b'b' | b'c' => h.update(p.meta.rdev().to_le_bytes()),
        _ => {}
    }
    for (name, value) in read_xattrs(&p.path) {
        h.update([0xff]);
        h.update(&name);
        h.update([0]);
        h.update(&value);
    }
    Ok(h.finalize())
}

/// The extended attributes of a path (not followed), sorted by name; empty when it has none or
/// the filesystem does not support them.
pub fn read_xattrs(path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let Ok(cpath) = CString::new(path.as_os_str().as_bytes()) else {
        return Vec::new();
    };
    let mut names = vec![0u8; 1024];
    // SAFETY: cpath is NUL-terminated and names is a writable buffer of the given length.
    let n = unsafe { libc::llistxattr(cpath.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n <= 0 {
        return Vec::new();
    }
    names.truncate(n as usize);
    let mut out = Vec::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let Ok(cname) = CString::new(name) else {
            continue;
        };
        let mut value = vec![0u8; 4096];
        // SAFETY: both strings are NUL-terminated; value is writable for its length.
        let len = unsafe {
            libc::lgetxattr(
                cpath.as_ptr(),
                cname.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        if len >= 0 {
            value.truncate(len as usize);
            out.push((name.to_vec(), value));
        }
    }
    out.sort();
    out
}

/// Compares two selections and describes the difference for a cache-miss explanation, e.g.
/// `1 file changed: src/app.js`.
pub fn describe_changes(old: &[(String, [u8; 32])], new: &[(String, [u8; 32])]) -> Option<String> {
    let old_map: HashMap<&str, &[u8; 32]> = old.iter().map(|(p, d)| (p.as_str(), d)).collect();
    let new_map: HashMap<&str, &[u8; 32]> = new.iter().map(|(p, d)| (p.as_str(), d)).collect();
    let mut changed = Vec::new();
    let mut added = Vec::new();
    let mut removed = Vec::new();
    for (p, d) in new {
        match old_map.get(p.as_str()) {
            Some(o) if *o == d => {}
            Some(_) => changed.push(p.as_str()),
            None => added.push(p.as_str()),
        }
    }
    for (p, _) in old {
        if !new_map.contains_key(p.as_str()) {
            removed.push(p.as_str());
        }
    }
    let mut parts = Vec::new();
    for (list, verb) in [
        (&changed, "changed"),
        (&added, "added"),
        (&removed, "removed"),
    ] {
        if list.is_empty() {
            continue;
        }
        let noun = if list.len() == 1 { "file" } else { "files" };
        let shown: Vec<&str> = list.iter().take(3).copied().collect();
        let more = if list.len() > 3 {
            format!(" and {} more", list.len() - 3)
        } else {
            String::new()
        };
        parts.push(format!(
            "{} {noun} {verb}: {}{more}",
            list.len(),
            shown.join(", ")
        ));
    }
    if parts.is_empty() {
        None
    } else {
        Some(parts.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::context::NoFilter;

    fn opts<'a>(cache: Option<&'a FileDigestCache>) -> HashOptions<'a> {
        HashOptions {
            filter: &NoFilter,
            excludes: &[],
            cache,
        }
    }

    #[test]
    fn digest_ignores_mtime_but_sees_content_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("src")).unwrap();
        fs::write(root.join("src/app.js"), "one").unwrap();
        let srcs = vec!["src".to_string()];
        let a = hash_selection(root, &srcs, &opts(None)).unwrap();
        let f = fs::File::options()
            .write(true)
            .open(root.join("src/app.js"))
            .unwrap();
        f.set_modified(std::time::SystemTime::UNIX_EPOCH).unwrap();
        let b = hash_selection(root, &srcs, &opts(None)).unwrap();
        assert_eq!(a.digest, b.digest, "mtime must not count");
        fs::write(root.join("src/app.js"), "two").unwrap();
        let c = hash_selection(root, &srcs, &opts(None)).unwrap();
        assert_ne!(a.digest, c.digest);
        assert_eq!(
            describe_changes(&a.entries, &c.entries).unwrap(),
            "1 file changed: src/app.js"
        );
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(root.join("src/app.js"), fs::Permissions::from_mode(0o755)).unwrap();
        let d = hash_selection(root, &srcs, &opts(None)).unwrap();
        assert_ne!(c.digest, d.digest);
    }

    #[test]
    fn cache_is_used_when_stat_matches() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::write(root.join("f"), "content").unwrap();
        let path = root.join("f");
        let meta = fs::symlink_metadata(&path).unwrap();
        let cache = FileDigestCache::default();
        // A stale entry with the same stat proves the cache is consulted (no read happens).
        cache.entries.lock().unwrap().insert(
            path.as_os_str().as_bytes().to_vec(),
            (StatKey::of(&meta), [7u8; 32]),
        );
        let with = hash_selection(root, &["f".to_string()], &opts(Some(&cache))).unwrap();
        let without = hash_selection(root, &["f".to_string()], &opts(None)).unwrap();
        assert_ne!(with.digest, without.digest);
    }

    #[test]
    fn cache_round_trips_through_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = dir.path().join("ctx");
        fs::create_dir_all(&ctx).unwrap();
        fs::write(ctx.join("f"), "content").unwrap();
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
        fs::File::options()
            .write(true)
            .open(ctx.join("f"))
            .unwrap()
            .set_modified(old)
            .unwrap();
        let mut conn = rusqlite::Connection::open(dir.path().join("db")).unwrap();
        let cache = FileDigestCache::load(&conn, &ctx).unwrap();
        let first = hash_selection(&ctx, &["f".to_string()], &opts(Some(&cache))).unwrap();
        // ctime is "now", so the entry is racy and not cached yet.
        cache.save(&mut conn).unwrap();
        let cache = FileDigestCache::load(&conn, &ctx).unwrap();
        assert!(cache.entries.lock().unwrap().is_empty());
        let now = now_ns();
        let meta = fs::symlink_metadata(ctx.join("f")).unwrap();
        cache.record(
            ctx.join("f").as_os_str().as_bytes().to_vec(),
            StatKey::of(&meta),
            [1; 32],
            now + 10 * RACY_WINDOW_NS,
        );
        cache.save(&mut conn).unwrap();
        let cache = FileDigestCache::load(&conn, &ctx).unwrap();
        assert_eq!(cache.entries.lock().unwrap().len(), 1);
        let again = hash_selection(&ctx, &["f".to_string()], &opts(Some(&cache))).unwrap();
        assert_ne!(
            first.digest, again.digest,
            "the cached (fake) digest was used"
        );
    }

    #[test]
    fn filter_excludes_before_reading() {
        struct Skip;
        impl PathFilter for Skip {
            fn is_excluded(&self, rel: &str) -> bool {
                rel.starts_with("secret")
            }
            fn can_prune_dir(&self, _rel: &str) -> bool {
                true
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("secret")).unwrap();
        // Unreadable: reading it would fail the hash.
        std::os::unix::fs::symlink("/nonexistent", root.join("secret/x")).unwrap();
        fs::write(root.join("a"), "a").unwrap();
        let sel = hash_selection(
            root,
            &[String::new()],
            &HashOptions {
                filter: &Skip,
                excludes: &[],
                cache: None,
            },
        )
        .unwrap();
        let names: Vec<&str> = sel.entries.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(names, vec!["", "a"]);
    }
}
