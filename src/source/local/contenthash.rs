//! Content digests of what a COPY/ADD selects, as BuildKit's contenthash computes them: each entry
//! contributes its type, mode, uid, gid, size, link target, xattrs and content (never its mtime),
//! and a selection's digest covers its entries in sorted order. Two contexts with the same files
//! give the same digest; touching a file without changing it does not change it.
//!
//! Reading file contents is the expensive part, so entry digests are cached per path, keyed by
//! (path, size, mtime ns, inode, ctime ns): any change to content, mode, owner or xattrs moves
//! ctime, so a no-op rebuild stats every entry and reads nothing else (no contents, no xattrs).
//! The stat walk itself runs on several threads, and entries that do need reading are hashed on
//! two.

use std::borrow::Cow;
use std::collections::HashMap;
use std::ffi::CString;
use std::fs;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};

use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{fstatat, Mode};

use crate::digest::Sha256;
use anyhow::{Context, Result};

use crate::source::fsutil::PathFilter;
use crate::source::fsutil::{join_rel, resolve_in_root};

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

/// One cached entry: its stat when it was hashed, and its digest.
type Cached = (StatKey, [u8; 32]);
/// Directory path -> name -> entry.
type FreshDigests = HashMap<Vec<u8>, HashMap<Vec<u8>, Cached>>;

/// Cached entry digests of one context, one record per directory: the digests of its children by
/// name. Loading is one row per directory (a 30,000-file context loads in a few milliseconds), a
/// directory's record is decoded only when the walk lists that directory, and saving rewrites only
/// the directories where something was hashed.
#[derive(Default)]
pub struct FileDigestCache {
    /// Directory path (absolute) -> its encoded record, as loaded.
    stored: HashMap<Vec<u8>, Vec<u8>>,
    /// Digests computed since loading, by directory and name, to be saved and reused by later
    /// steps of the same build.
    fresh: Mutex<FreshDigests>,
}

const CACHE_SCHEMA: &str = "DROP TABLE IF EXISTS build_entry_digest;
CREATE TABLE IF NOT EXISTS build_dir_digests (
    dir BLOB PRIMARY KEY,
    entries BLOB NOT NULL
) WITHOUT ROWID";

/// Bytes of one encoded entry after its name: size, mtime, inode, ctime, digest.
const RECORD_TAIL: usize = 8 * 4 + 32;

/// The entries of one directory, sorted by name, for lookups during a walk: names borrowed from
/// the loaded record (a no-op walk copies none), owned only for digests computed since loading.
pub struct DirDigests<'a>(Vec<(Cow<'a, [u8]>, Cached)>);

impl DirDigests<'_> {
    fn get(&self, name: &[u8], key: StatKey) -> Option<[u8; 32]> {
        let i = self
            .0
            .binary_search_by(|(n, _)| n.as_ref().cmp(name))
            .ok()?;
        let (k, d) = &self.0[i].1;
        (*k == key).then_some(*d)
    }
}

/// Encodes a directory's entries: for each, name length (u32), name, size, mtime ns, inode,
/// ctime ns (8 bytes each, little endian) and the digest.
fn encode_entries(entries: &[(Vec<u8>, Cached)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * (RECORD_TAIL + 24));
    for (name, (key, digest)) in entries {
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(name);
        out.extend_from_slice(&key.size.to_le_bytes());
        out.extend_from_slice(&key.mtime_ns.to_le_bytes());
        out.extend_from_slice(&key.ino.to_le_bytes());
        out.extend_from_slice(&key.ctime_ns.to_le_bytes());
        out.extend_from_slice(digest);
    }
    out
}

/// Decodes `encode_entries`' output, sorted by name. A damaged record decodes as far as it is
/// intact: the cache only ever saves work, it never decides a digest on its own.
fn decode_entries(bytes: &[u8]) -> Vec<(Vec<u8>, Cached)> {
    decode_entries_borrowed(bytes)
        .into_iter()
        .map(|(n, c)| (n.to_vec(), c))
        .collect()
}

/// [`decode_entries`] with the names borrowed from `bytes`.
fn decode_entries_borrowed(mut bytes: &[u8]) -> Vec<(&[u8], Cached)> {
    let mut out = Vec::new();
    let u64_at = |b: &[u8], i: usize| {
        let mut word = [0u8; 8];
        word.copy_from_slice(&b[i..i + 8]);
        u64::from_le_bytes(word)
    };
    while bytes.len() >= 4 {
        let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        let Some(rest) = bytes.get(4..) else { break };
        if rest.len() < len + RECORD_TAIL {
            break;
        }
        let (name, tail) = rest.split_at(len);
        let key = StatKey {
            size: u64_at(tail, 0),
            mtime_ns: u64_at(tail, 8) as i64,
            ino: u64_at(tail, 16),
            ctime_ns: u64_at(tail, 24) as i64,
        };
        let mut digest = [0u8; 32];
        digest.copy_from_slice(&tail[32..RECORD_TAIL]);
        out.push((name, (key, digest)));
        bytes = &tail[RECORD_TAIL..];
    }
    out.sort_by(|a, b| a.0.cmp(b.0));
    out.dedup_by(|later, earlier| later.0 == earlier.0);
    out
}

/// A path split into its directory and name, as the cache files it.
fn split_parent(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|b| *b == b'/') {
        Some(0) => (&path[..1], &path[1..]),
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

impl FileDigestCache {
    /// Loads the cached digests of the context `dir` (its own directory and everything below).
    pub fn load(conn: &rusqlite::Connection, dir: &Path) -> Result<FileDigestCache> {
        conn.execute_batch(CACHE_SCHEMA)
            .context("creating the file digest cache table")?;
        let exact = dir.as_os_str().as_bytes().to_vec();
        let mut lo = exact.clone();
        lo.push(b'/');
        let mut hi = exact.clone();
        hi.push(b'/' + 1);
        let mut stmt = conn.prepare_cached(
            "SELECT dir, entries FROM build_dir_digests
             WHERE dir = ?1 OR (dir >= ?2 AND dir < ?3)",
        )?;
        let mut stored = HashMap::new();
        let mut rows = stmt.query(rusqlite::params![exact, lo, hi])?;
        while let Some(row) = rows.next()? {
            stored.insert(row.get(0)?, row.get(1)?);
        }
        Ok(FileDigestCache {
            stored,
            fresh: Mutex::new(HashMap::new()),
        })
    }

    /// Writes the directories where digests were computed since `load` (one transaction).
    pub fn save(&self, conn: &mut rusqlite::Connection) -> Result<()> {
        let fresh = std::mem::take(&mut *self.fresh.lock().unwrap_or_else(|e| e.into_inner()));
        if fresh.is_empty() {
            return Ok(());
        }
        conn.execute_batch(CACHE_SCHEMA)?;
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT OR REPLACE INTO build_dir_digests (dir, entries) VALUES (?1, ?2)",
            )?;
            for (dir, new) in fresh {
                let mut merged: HashMap<Vec<u8>, Cached> = self
                    .stored
                    .get(&dir)
                    .map(|b| decode_entries(b).into_iter().collect())
                    .unwrap_or_default();
                merged.extend(new);
                let mut entries: Vec<(Vec<u8>, Cached)> = merged.into_iter().collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                stmt.execute(rusqlite::params![dir, encode_entries(&entries)])?;
            }
        }
        tx.commit().context("saving the file digest cache")?;
        Ok(())
    }

    /// The cached entries of the directory at `dir` (absolute), for a walk listing it.
    pub fn directory(&self, dir: &[u8]) -> DirDigests<'_> {
        let mut entries: Vec<(Cow<[u8]>, Cached)> = self
            .stored
            .get(dir)
            .map(|b| {
                decode_entries_borrowed(b)
                    .into_iter()
                    .map(|(n, c)| (Cow::Borrowed(n), c))
                    .collect()
            })
            .unwrap_or_default();
        let fresh = self.fresh.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(new) = fresh.get(dir) {
            entries.retain(|(n, _)| !new.contains_key(n.as_ref()));
            entries.extend(new.iter().map(|(n, c)| (Cow::Owned(n.clone()), *c)));
            entries.sort_by(|a, b| a.0.cmp(&b.0));
        }
        DirDigests(entries)
    }

    /// The cached digest of the entry at `path` (absolute) if its stat still matches.
    fn lookup(&self, path: &[u8], key: StatKey) -> Option<[u8; 32]> {
        let (dir, name) = split_parent(path);
        self.directory(dir).get(name, key)
    }

    fn record(&self, path: &[u8], key: StatKey, digest: [u8; 32], now_ns: i64) {
        if now_ns - key.mtime_ns < RACY_WINDOW_NS || now_ns - key.ctime_ns < RACY_WINDOW_NS {
            return;
        }
        let (dir, name) = split_parent(path);
        self.fresh
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(dir.to_vec())
            .or_default()
            .insert(name.to_vec(), (key, digest));
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

/// What an entry's digest needs of its lstat: kept small, since a big context has tens of
/// thousands of these alive at once.
#[derive(Debug, Clone, Copy)]
struct EntryStat {
    kind: u8,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    rdev: u64,
    key: StatKey,
}

impl EntryStat {
    fn of_raw(st: &libc::stat) -> EntryStat {
        let kind = match st.st_mode & libc::S_IFMT {
            libc::S_IFDIR => b'd',
            libc::S_IFLNK => b'l',
            libc::S_IFREG => b'f',
            libc::S_IFBLK => b'b',
            libc::S_IFCHR => b'c',
            libc::S_IFIFO => b'p',
            _ => b's',
        };
        EntryStat {
            kind,
            mode: st.st_mode,
            uid: st.st_uid,
            gid: st.st_gid,
            size: st.st_size as u64,
            rdev: st.st_rdev,
            key: StatKey {
                size: st.st_size as u64,
                mtime_ns: st.st_mtime * 1_000_000_000 + st.st_mtime_nsec,
                ino: st.st_ino,
                ctime_ns: st.st_ctime * 1_000_000_000 + st.st_ctime_nsec,
            },
        }
    }

    fn of(meta: &fs::Metadata) -> EntryStat {
        EntryStat {
            kind: kind_of(meta),
            mode: meta.mode(),
            uid: meta.uid(),
            gid: meta.gid(),
            size: meta.size(),
            rdev: meta.rdev(),
            key: StatKey::of(meta),
        }
    }
}

struct Pending {
    rel: String,
    stat: EntryStat,
    /// The whole entry's digest: from the cache when its stat matched, else computed.
    digest: Option<[u8; 32]>,
    /// Where to read the entry, for one the cache did not have (None: cached).
    path: Option<PathBuf>,
}

/// Hashes the sources (paths relative to `root`, already expanded from globs) the way a COPY reads
/// them: a source symlink is followed (inside the root), a directory source contributes everything
/// below it that the filter keeps.
pub fn hash_selection(root: &Path, sources: &[String], opts: &HashOptions) -> Result<Selection> {
    let excludes = crate::source::select::ExcludeSet::new(opts.excludes)?;
    let mut pending: Vec<Pending> = Vec::new();
    for source in sources {
        let path = resolve_in_root(root, source)?;
        let meta = fs::symlink_metadata(&path)
            .with_context(|| format!("{}: not found in the build context", display_rel(source)))?;
        let walk = SourceWalk {
            filter: opts.filter,
            excludes: &excludes,
            cache: opts.cache,
        };
        let abs = path.as_os_str().as_bytes();
        let stat = EntryStat::of(&meta);
        let cached = opts.cache.and_then(|c| c.lookup(abs, stat.key));
        match walk.visit(source.to_string(), "", abs, stat, cached) {
            Visit::Keep(p) => pending.push(p),
            Visit::Descend => {}
            Visit::Skip => continue,
        }
        if meta.is_dir() {
            pending.extend(walk.below(DirJob {
                abs: abs.to_vec(),
                rel: source.to_string(),
                in_source: String::new(),
            })?);
        }
    }
    hash_misses(&mut pending)?;
    let now = now_ns();
    let mut entries = Vec::with_capacity(pending.len());
    let mut total = Sha256::new();
    for p in pending {
        let Some(digest) = p.digest else {
            anyhow::bail!("internal error: {} was not hashed", p.rel);
        };
        if let (Some(cache), Some(path)) = (opts.cache, p.path) {
            cache.record(path.as_os_str().as_bytes(), p.stat.key, digest, now);
        }
        total.update(p.rel.as_bytes());
        total.update([0]);
        total.update(digest);
        entries.push((p.rel, digest));
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

/// What the walk does with one entry.
enum Visit {
    Keep(Pending),
    /// Excluded itself, but an exception may re-include something below it: descend.
    Descend,
    /// Excluded with everything below it.
    Skip,
}

/// A directory still to be listed.
struct DirJob {
    /// Its absolute path (what the digest cache is keyed by).
    abs: Vec<u8>,
    /// Relative to the tree root, and to the source.
    rel: String,
    in_source: String,
}

/// The directories waiting to be listed, shared by the walking threads.
struct WorkQueue {
    state: Mutex<QueueState>,
    wake: Condvar,
}

struct QueueState {
    jobs: Vec<DirJob>,
    /// Threads listing a directory (which may add jobs).
    busy: usize,
    failure: Option<anyhow::Error>,
}

/// One source of a selection. A big context's no-op rebuild is all stat calls, so directories are
/// listed on several threads, each entry stat'ed relative to its directory's descriptor (no path
/// lookup per file), and only entries the cache lacks get a path of their own.
struct SourceWalk<'a> {
    filter: &'a dyn PathFilter,
    excludes: &'a crate::source::select::ExcludeSet,
    cache: Option<&'a FileDigestCache>,
}

impl SourceWalk<'_> {
    /// Decides on one entry; `rel` is relative to the tree root, `in_source` to the source (what
    /// `--exclude` matches) and `abs` is its absolute path.
    fn visit(
        &self,
        rel: String,
        in_source: &str,
        abs: &[u8],
        stat: EntryStat,
        cached: Option<[u8; 32]>,
    ) -> Visit {
        // As the copy does (ops::copy): `--exclude` leaves out all below what it matches, so
        // the key covers exactly what is copied; `.dockerignore` may re-include below.
        if !in_source.is_empty() && self.excludes.is_excluded(in_source) {
            return Visit::Skip;
        }
        if !rel.is_empty() && self.filter.is_excluded(&rel) {
            let prune = stat.kind != b'd' || self.filter.can_prune_dir(&rel);
            return if prune { Visit::Skip } else { Visit::Descend };
        }
        let digest = cached;
        let path = match digest {
            Some(_) => None,
            None => Some(PathBuf::from(std::ffi::OsStr::from_bytes(abs))),
        };
        Visit::Keep(Pending {
            rel,
            stat,
            digest,
            path,
        })
    }

    /// Every kept entry below a directory, in depth-first name order.
    fn below(&self, top: DirJob) -> Result<Vec<Pending>> {
        let queue = WorkQueue {
            state: Mutex::new(QueueState {
                jobs: vec![top],
                busy: 0,
                failure: None,
            }),
            wake: Condvar::new(),
        };
        let mut found: Vec<Pending> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..walk_threads())
                .map(|_| scope.spawn(|| self.work(&queue)))
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().unwrap_or_default())
                .collect()
        });
        let state = queue.state.into_inner().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = state.failure {
            return Err(e);
        }
        // Any fixed order makes the selection's digest deterministic; byte order is the cheapest.
        found.sort_unstable_by(|a, b| a.rel.cmp(&b.rel));
        Ok(found)
    }

    /// One walking thread: lists directories from the queue until none is left and no other
    /// thread can add more.
    fn work(&self, queue: &WorkQueue) -> Vec<Pending> {
        let mut found = Vec::new();
        let mut abs = Vec::new();
        loop {
            let job = {
                let mut state = queue.state.lock().unwrap_or_else(|p| p.into_inner());
                loop {
                    if state.failure.is_some() {
                        return found;
                    }
                    if let Some(job) = state.jobs.pop() {
                        state.busy += 1;
                        break job;
                    }
                    if state.busy == 0 {
                        queue.wake.notify_all();
                        return found;
                    }
                    state = queue.wake.wait(state).unwrap_or_else(|p| p.into_inner());
                }
            };
            let mut subdirs = Vec::new();
            let result = self.list(&job, &mut abs, &mut found, &mut subdirs);
            let mut state = queue.state.lock().unwrap_or_else(|p| p.into_inner());
            state.busy -= 1;
            match result {
                Ok(()) => state.jobs.append(&mut subdirs),
                Err(e) => {
                    state.failure.get_or_insert(e);
                }
            }
            queue.wake.notify_all();
        }
    }

    /// Lists one directory: visits each child, queues the subdirectories to descend into.
    fn list(
        &self,
        job: &DirJob,
        abs: &mut Vec<u8>,
        found: &mut Vec<Pending>,
        subdirs: &mut Vec<DirJob>,
    ) -> Result<()> {
        let dir_path = std::ffi::OsStr::from_bytes(&job.abs);
        let listing = || format!("listing {}", Path::new(dir_path).display());
        let mut dir = nix::dir::Dir::open(
            dir_path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .with_context(listing)?;
        let fd = dir.as_raw_fd();
        let cached = self.cache.map(|c| c.directory(&job.abs));
        for entry in dir.iter() {
            let entry = entry.with_context(listing)?;
            let name = entry.file_name();
            let name_bytes = name.to_bytes();
            if name_bytes == b"." || name_bytes == b".." {
                continue;
            }
            let st = fstatat(Some(fd), name, AtFlags::AT_SYMLINK_NOFOLLOW).with_context(|| {
                format!(
                    "reading {}/{}",
                    Path::new(dir_path).display(),
                    name.to_string_lossy()
                )
            })?;
            let stat = EntryStat::of_raw(&st);
            let name = String::from_utf8_lossy(name_bytes);
            abs.clear();
            abs.extend_from_slice(&job.abs);
            abs.push(b'/');
            abs.extend_from_slice(name_bytes);
            // The path within the source only matters to `--exclude` patterns.
            let in_source = if self.excludes.is_empty() {
                String::new()
            } else {
                join_rel(&job.in_source, &name)
            };
            let rel = join_rel(&job.rel, &name);
            let digest = cached.as_ref().and_then(|c| c.get(name_bytes, stat.key));
            // Only a directory needs its path again (to descend): a file's goes into `visit`.
            let dir_rel = (stat.kind == b'd').then(|| rel.clone());
            let visit = self.visit(rel, &in_source, abs, stat, digest);
            if matches!(visit, Visit::Skip) {
                continue;
            }
            if let Visit::Keep(p) = visit {
                found.push(p);
            }
            if let Some(rel) = dir_rel {
                subdirs.push(DirJob {
                    abs: abs.clone(),
                    rel,
                    in_source,
                });
            }
        }
        Ok(())
    }
}

fn walk_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(2, 8)
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Computes the digests the cache did not have, on `HASH_THREADS` threads (reading contents is
/// what a cold build spends its hashing time on).
fn hash_misses(pending: &mut [Pending]) -> Result<()> {
    let mut todo: Vec<&mut Pending> = pending.iter_mut().filter(|p| p.digest.is_none()).collect();
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
                        p.digest = Some(entry_digest(p, &mut buf)?);
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
fn entry_digest(p: &Pending, buf: &mut [u8]) -> Result<[u8; 32]> {
    let st = &p.stat;
    let Some(path) = &p.path else {
        anyhow::bail!("internal error: no path to read {}", p.rel);
    };
    let mut h = Sha256::new();
    h.update([st.kind]);
    h.update((st.mode & 0o7777).to_le_bytes());
    h.update(st.uid.to_le_bytes());
    h.update(st.gid.to_le_bytes());
    match st.kind {
        b'f' => {
            h.update(st.size.to_le_bytes());
            h.update(hash_file(path, buf)?);
        }
        b'l' => {
            let target =
                fs::read_link(path).with_context(|| format!("reading link {}", path.display()))?;
            h.update(target.as_os_str().as_bytes());
        }
        b'b' | b'c' => h.update(st.rdev.to_le_bytes()),
        _ => {}
    }
    for (name, value) in read_xattrs(path) {
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
    use crate::source::fsutil::NoFilter;

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
        cache
            .fresh
            .lock()
            .unwrap()
            .entry(root.as_os_str().as_bytes().to_vec())
            .or_default()
            .insert(b"f".to_vec(), (StatKey::of(&meta), [7u8; 32]));
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
        assert!(cache.stored.is_empty());
        let now = now_ns();
        let meta = fs::symlink_metadata(ctx.join("f")).unwrap();
        cache.record(
            ctx.join("f").as_os_str().as_bytes(),
            StatKey::of(&meta),
            [1; 32],
            now + 10 * RACY_WINDOW_NS,
        );
        cache.save(&mut conn).unwrap();
        let cache = FileDigestCache::load(&conn, &ctx).unwrap();
        assert_eq!(cache.directory(ctx.as_os_str().as_bytes()).0.len(), 1);
        let again = hash_selection(&ctx, &["f".to_string()], &opts(Some(&cache))).unwrap();
        assert_ne!(
            first.digest, again.digest,
            "the cached (fake) digest was used"
        );
    }

    #[test]
    fn exclude_forms_key_exactly_what_is_copied() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("src/a/sub")).unwrap();
        fs::write(root.join("src/a/x"), "x").unwrap();
        fs::write(root.join("src/a/sub/y"), "y").unwrap();
        fs::write(root.join("src/keep"), "k").unwrap();
        let hash = |excl: &[&str]| {
            let excludes: Vec<String> = excl.iter().map(|s| s.to_string()).collect();
            hash_selection(
                root,
                &["src".to_string()],
                &HashOptions {
                    filter: &NoFilter,
                    excludes: &excludes,
                    cache: None,
                },
            )
            .unwrap()
        };
        let names = |excl: &[&str]| -> Vec<String> {
            hash(excl).entries.into_iter().map(|(p, _)| p).collect()
        };
        for p in ["./a", "a/", "a"] {
            assert_eq!(names(&[p]), ["src", "src/keep"], "{p}");
        }
        assert_eq!(names(&["a/*"]), ["src", "src/a", "src/keep"]);
        // A change below an excluded directory leaves the key as it was; one copied changes it.
        let before = hash(&["a/"]).digest;
        fs::write(root.join("src/a/sub/y"), "changed").unwrap();
        assert_eq!(hash(&["a/"]).digest, before);
        fs::write(root.join("src/keep"), "changed").unwrap();
        assert_ne!(hash(&["a/"]).digest, before);
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

    #[test]
    fn cache_records_round_trip_and_survive_damage() {
        let key = |n: u64| StatKey {
            size: n,
            mtime_ns: -(n as i64),
            ino: n * 7,
            ctime_ns: n as i64 * 3,
        };
        let entries = vec![
            (b"a".to_vec(), (key(1), [1u8; 32])),
            (b"b\xffc".to_vec(), (key(2), [2u8; 32])),
        ];
        let encoded = encode_entries(&entries);
        assert_eq!(decode_entries(&encoded), entries);
        // Cut inside the second record: the first still decodes, nothing panics.
        assert_eq!(decode_entries(&encoded[..encoded.len() - 5]), entries[..1]);
        assert!(decode_entries(&[0xff, 0xff, 0xff, 0xff, 1]).is_empty());
    }

    #[test]
    fn parallel_walk_sees_what_a_sequential_walk_sees() {
        /// Excludes `drop*` and everything in `skipdir`, but re-includes `skipdir/keep`, so
        /// `skipdir` must be descended without being selected.
        struct Rules;
        impl PathFilter for Rules {
            fn is_excluded(&self, rel: &str) -> bool {
                let name = rel.rsplit('/').next().unwrap_or(rel);
                name.starts_with("drop") || rel.starts_with("skipdir") && rel != "skipdir/keep"
            }
            fn can_prune_dir(&self, rel: &str) -> bool {
                rel != "skipdir"
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for d in 0..60 {
            let sub = root.join(format!("tree/d{d:02}/inner"));
            fs::create_dir_all(&sub).unwrap();
            fs::write(sub.join("f"), format!("{d}")).unwrap();
            fs::write(sub.join("drop.txt"), "x").unwrap();
        }
        fs::create_dir_all(root.join("tree/skipdir")).unwrap();
        fs::write(root.join("tree/skipdir/keep"), "k").unwrap();
        fs::write(root.join("tree/skipdir/other"), "o").unwrap();
        std::os::unix::fs::symlink("d00", root.join("tree/link")).unwrap();

        let mut expected: Vec<String> = walkdir::WalkDir::new(root.join("tree"))
            .into_iter()
            .map(|e| {
                let e = e.unwrap();
                e.path()
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .filter(|rel| {
                let in_tree = rel.strip_prefix("tree/").unwrap_or("");
                !Rules.is_excluded(in_tree) && !in_tree.starts_with("d00/inner/f")
            })
            .collect();
        expected.sort();
        let excludes = vec!["d00/inner/f".to_string()];
        let sel = |cache| {
            hash_selection(
                root,
                &["tree".to_string()],
                &HashOptions {
                    filter: &Prefixed(&Rules, "tree/"),
                    excludes: &excludes,
                    cache,
                },
            )
            .unwrap()
        };
        let first = sel(None);
        let names: Vec<&str> = first.entries.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(names, expected);
        assert!(names.contains(&"tree/skipdir/keep") && !names.contains(&"tree/skipdir"));
        // The same walk again, and through the cache, gives the same digest.
        let cache = FileDigestCache::default();
        assert_eq!(sel(Some(&cache)).digest, first.digest);
        assert_eq!(sel(Some(&cache)).digest, first.digest);
    }

    /// Applies a filter written for paths inside `tree/` to paths relative to the root.
    struct Prefixed<'a>(&'a dyn PathFilter, &'static str);
    impl PathFilter for Prefixed<'_> {
        fn is_excluded(&self, rel: &str) -> bool {
            rel.strip_prefix(self.1)
                .is_some_and(|r| self.0.is_excluded(r))
        }
        fn can_prune_dir(&self, rel: &str) -> bool {
            rel.strip_prefix(self.1)
                .is_some_and(|r| self.0.can_prune_dir(r))
        }
    }
}
