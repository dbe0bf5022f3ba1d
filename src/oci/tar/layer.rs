//! OCI layer tarballs: writing one from a change list (or a whole tree) and applying one to a
//! directory, either flattened (whiteouts delete) or as an overlay lowerdir (whiteouts become
//! overlay whiteouts).
//!
//! Writing is deterministic: entries sorted by path, headers normalised (no user/group names,
//! mtimes in whole seconds, optionally clamped to SOURCE_DATE_EPOCH), PAX records only where
//! USTAR cannot hold a value, and for xattrs (`SCHILY.xattr.*`).
//!
//! Applying never writes outside the target: `..` components are rejected, absolute paths are
//! taken relative to the target, and parent directories are resolved with symlinks interpreted
//! inside the target (like a chroot), so a symlinked parent or a hard link cannot escape.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::{CString, OsStr, OsString};
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use crate::digest::Sha256;
use anyhow::{bail, Context, Result};

use crate::oci::change::Change;
use crate::store::space::{Limits, SpaceGuard};

/// The opaque-directory marker in a layer.
pub const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";
/// The prefix of a whiteout entry.
pub const WHITEOUT_PREFIX: &str = ".wh.";

/// Options for writing a layer.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    /// Clamp every mtime to at most this (seconds since the epoch): SOURCE_DATE_EPOCH.
    pub source_date_epoch: Option<i64>,
}

enum Planned {
    Upsert,
    Whiteout,
    Opaque,
}

/// Every path under `root` (not `root` itself) as an Upsert, sorted.
pub fn tree_changes(root: &Path) -> Result<Vec<Change>> {
    let mut changes = Vec::new();
    for entry in walkdir::WalkDir::new(root).follow_links(false).min_depth(1) {
        let entry = entry.with_context(|| format!("walking {}", root.display()))?;
        let rel = entry
            .path()
            .strip_prefix(root)
            .context("walked outside the root")?;
        changes.push(Change::Upsert(rel.to_path_buf()));
    }
    changes.sort();
    Ok(changes)
}

/// Writes the whole tree at `root` as a layer.
pub fn write_tree_layer(root: &Path, out: impl Write, opts: &WriteOptions) -> Result<()> {
    write_layer(root, &tree_changes(root)?, out, opts)
}

/// Writes an uncompressed OCI layer tar for `changes` (paths relative to `source_root`): Upsert
/// -> the entry as on disk with its metadata; Delete -> `.wh.<name>`; Opaque -> the directory
/// plus `.wh..wh..opq`. Hard links among the layer's files are written as links.
pub fn write_layer(
    source_root: &Path,
    changes: &[Change],
    out: impl Write,
    opts: &WriteOptions,
) -> Result<()> {
    let plan = plan_entries(changes)?;
    let mut tar = TarWriter::new(Plain(out), opts);
    for (rel, planned) in &plan {
        tar.append_planned(source_root, rel, planned)?;
    }
    tar.out.bytes(&[0u8; 1024])?;
    tar.out.0.flush()?;
    Ok(())
}

/// The entries a change list makes, in the tar's order (sorted by path). A later whiteout or
/// opaque marker for a path replaces what was planned there; an upsert never does.
fn plan_entries(changes: &[Change]) -> Result<Vec<(PathBuf, Planned)>> {
    // Sorted by `sort_key`, not by `Path`'s order, which is the same order: comparing paths
    // component by component was most of planning a layer of tens of thousands of entries.
    let mut plan: Vec<(Vec<u8>, PathBuf, Planned)> = Vec::with_capacity(changes.len());
    let mut at: HashMap<Vec<u8>, usize> = HashMap::with_capacity(changes.len());
    let mut put = |rel: PathBuf, planned: Planned, replace: bool| {
        let key = sort_key(&rel);
        match at.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => {
                if replace {
                    plan[*e.get()].2 = planned;
                }
            }
            std::collections::hash_map::Entry::Vacant(v) => {
                plan.push((v.key().clone(), rel, planned));
                v.insert(plan.len() - 1);
            }
        }
    };
    for change in changes {
        let rel = clean_change_path(change.path())?;
        match change {
            Change::Upsert(_) => put(rel, Planned::Upsert, false),
            Change::Delete(_) => {
                let name = rel.file_name().context("a whiteout needs a name")?;
                let mut wh = OsString::from(WHITEOUT_PREFIX);
                wh.push(name);
                put(rel.with_file_name(wh), Planned::Whiteout, true);
            }
            Change::Opaque(_) => {
                put(rel.join(OPAQUE_WHITEOUT), Planned::Opaque, true);
                put(rel, Planned::Upsert, true);
            }
        }
    }
    plan.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    Ok(plan.into_iter().map(|(_, rel, p)| (rel, p)).collect())
}

/// A clean relative path's bytes with each `/` as a NUL: their byte order is the paths' order
/// (component by component), since no name holds a NUL and a NUL sorts before any other byte.
fn sort_key(rel: &Path) -> Vec<u8> {
    rel.as_os_str()
        .as_bytes()
        .iter()
        .map(|&b| if b == b'/' { 0 } else { b })
        .collect()
}

/// A point of a layer's tar where hashing can resume: before entry `entry` (in the tar's order),
/// at byte `state.len`, with the SHA-256 state there. `skeleton` is the digest of the tar so far
/// with each regular file's content replaced by its identity (device, inode, size, mtime): equal
/// skeletons at the same entry mean the same bytes, because an unpacked layer's files are never
/// written once it is kept, so an inode it shares (a hard link an incremental COPY made) has the
/// same content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarCheckpoint {
    pub entry: u64,
    pub state: crate::digest::Sha256State,
    pub skeleton: [u8; 32],
}

/// Bytes of one encoded checkpoint: entry (8), state (40), skeleton (32).
const CHECKPOINT_BYTES: usize = 80;

/// Encodes checkpoints for the store (see [`decode_checkpoints`]).
pub fn encode_checkpoints(cps: &[TarCheckpoint]) -> Vec<u8> {
    let mut out = Vec::with_capacity(cps.len() * CHECKPOINT_BYTES);
    for c in cps {
        out.extend_from_slice(&c.entry.to_le_bytes());
        out.extend_from_slice(&c.state.to_bytes());
        out.extend_from_slice(&c.skeleton);
    }
    out
}

/// Decodes [`encode_checkpoints`]' output; anything damaged gives none (they only save work).
pub fn decode_checkpoints(bytes: &[u8]) -> Vec<TarCheckpoint> {
    if bytes.len() % CHECKPOINT_BYTES != 0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    for rec in bytes.chunks_exact(CHECKPOINT_BYTES) {
        let entry = u64::from_le_bytes(rec[..8].try_into().unwrap_or_default());
        let Some(state) = crate::digest::Sha256State::from_bytes(&rec[8..48]) else {
            return Vec::new();
        };
        let mut skeleton = [0u8; 32];
        skeleton.copy_from_slice(&rec[48..]);
        out.push(TarCheckpoint {
            entry,
            state,
            skeleton,
        });
    }
    out
}

/// A layer's DiffID and size from [`hash_layer`], with the checkpoints to resume from next time.
#[derive(Debug, Clone)]
pub struct HashedLayer {
    pub diff_id: String,
    pub size: u64,
    pub checkpoints: Vec<TarCheckpoint>,
    /// Bytes at the start of the tar that were not hashed again (a checkpoint of `base` matched).
    pub reused: u64,
}

/// Files with more than one link a tar has had so far: their first name, and that entry's index.
type SeenInodes = HashMap<(u64, u64), (Vec<u8>, usize)>;

/// What the hashing thread ends with: the digest, the bytes hashed, the state at each mark.
type HashResult = ([u8; 32], u64, Vec<Option<crate::digest::Sha256State>>);

/// Tar bytes between checkpoints (at the next entry boundary past it).
const CHECKPOINT_EVERY: u64 = 2 << 20;

/// The DiffID and size of the layer [`write_layer`] would write for `changes`, without writing
/// it: the tar is streamed into SHA-256 on a thread of its own. `base` are the checkpoints of
/// another layer (the same step's previous result): the tar's entries are first gone through
/// without reading any file (headers from stat, files by identity) and hashing resumes at the
/// last checkpoint whose skeleton this tar shares, so only the bytes from there on are read and
/// hashed. The result is the same as hashing the whole tar.
pub fn hash_layer(
    source_root: &Path,
    changes: &[Change],
    opts: &WriteOptions,
    base: &[TarCheckpoint],
) -> Result<HashedLayer> {
    let plan = plan_entries(changes)?;
    // Where to resume: the last checkpoint of `base` whose skeleton matches.
    let mut start: Option<(usize, Sha256, SeenInodes)> = None;
    if !base.is_empty() {
        let mut tar = TarWriter::new(
            SkeletonSink {
                skeleton: Sha256::new(),
                offset: 0,
            },
            opts,
        );
        let mut next = 0;
        for (i, (rel, planned)) in plan.iter().enumerate() {
            while next < base.len() && base[next].entry < i as u64 {
                next += 1;
            }
            if next == base.len() {
                break;
            }
            let cp = &base[next];
            if cp.entry == i as u64 {
                let same = tar.out.offset == cp.state.len
                    && tar.out.skeleton.clone().finalize() == cp.skeleton;
                if !same {
                    break;
                }
                start = Some((next, tar.out.skeleton.clone(), tar.inodes.clone()));
                next += 1;
                if next == base.len() {
                    break;
                }
            }
            tar.append_planned(source_root, rel, planned)?;
        }
    }
    let (first, state, skeleton, inodes, mut checkpoints) = match start {
        Some((k, skeleton, inodes)) => (
            base[k].entry as usize,
            base[k].state,
            skeleton,
            inodes,
            base[..=k].to_vec(),
        ),
        None => (
            0,
            crate::digest::Sha256State::INITIAL,
            Sha256::new(),
            HashMap::new(),
            Vec::new(),
        ),
    };
    let reused = state.len;
    let mut tar = TarWriter::new(HashSink::start(state, skeleton), opts);
    tar.inodes = inodes;
    tar.index = first;
    let mut gather = Gather::start(source_root, &plan, first);
    let mut marks = Vec::new();
    let mut last_mark = reused;
    for (i, (rel, planned)) in plan.iter().enumerate().skip(first) {
        if i > first && tar.out.offset - last_mark >= CHECKPOINT_EVERY {
            last_mark = tar.out.offset;
            marks.push((i as u64, tar.out.mark()?));
        }
        if matches!(planned, Planned::Upsert) {
            tar.pre = gather.take(i);
        }
        tar.append_planned(source_root, rel, planned)?;
    }
    drop(gather);
    tar.out.bytes(&[0u8; 1024])?;
    let (digest, size, states) = tar.out.finish()?;
    for ((entry, skeleton), state) in marks.into_iter().zip(states) {
        if let Some(state) = state {
            checkpoints.push(TarCheckpoint {
                entry,
                state,
                skeleton,
            });
        }
    }
    Ok(HashedLayer {
        diff_id: format!("sha256:{}", hex::encode(digest)),
        size,
        checkpoints,
        reused,
    })
}

fn clean_change_path(p: &Path) -> Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                bail!("change path {} leaves the root", p.display())
            }
        }
    }
    if out.as_os_str().is_empty() {
        bail!("a change names the root itself ({:?})", p);
    }
    Ok(out)
}

struct EntryHeader {
    name: Vec<u8>,
    kind: u8,
    mode: u32,
    uid: u64,
    gid: u64,
    size: u64,
    mtime: i64,
    link: Vec<u8>,
    dev: (u64, u64),
}

impl EntryHeader {
    fn marker(name: Vec<u8>) -> EntryHeader {
        EntryHeader {
            name,
            kind: b'0',
            mode: 0,
            uid: 0,
            gid: 0,
            size: 0,
            mtime: 0,
            link: Vec::new(),
            dev: (0, 0),
        }
    }
}

/// Where [`TarWriter`] puts a tar: its bytes, told apart from regular files' contents (which a
/// sink may read, or stand for by the file's identity).
trait TarSink {
    fn bytes(&mut self, b: &[u8]) -> io::Result<()>;
    /// The `size` bytes of the regular file at `path`; `pre`: those bytes, when they were read
    /// already (with `meta`, see [`Gather`]).
    fn content(
        &mut self,
        path: &Path,
        meta: &fs::Metadata,
        size: u64,
        pre: Option<&[u8]>,
    ) -> io::Result<()>;
}

/// The tar itself, into a writer.
struct Plain<W>(W);

impl<W: Write> TarSink for Plain<W> {
    fn bytes(&mut self, b: &[u8]) -> io::Result<()> {
        self.0.write_all(b)
    }

    fn content(
        &mut self,
        path: &Path,
        _meta: &fs::Metadata,
        size: u64,
        pre: Option<&[u8]>,
    ) -> io::Result<()> {
        if let Some(data) = pre.filter(|d| d.len() as u64 == size) {
            return self.0.write_all(data);
        }
        let file = fs::File::open(path)?;
        let copied = io::copy(&mut file.take(size), &mut self.0)?;
        if copied != size {
            return Err(io::Error::other(
                "file shrank while being added to the layer",
            ));
        }
        Ok(())
    }
}

/// A file's identity in a skeleton (see [`TarCheckpoint`]).
fn identity(meta: &fs::Metadata) -> [u8; 32] {
    let mut id = [0u8; 32];
    id[..8].copy_from_slice(&meta.dev().to_le_bytes());
    id[8..16].copy_from_slice(&meta.ino().to_le_bytes());
    id[16..24].copy_from_slice(&meta.size().to_le_bytes());
    let mtime_ns = meta.mtime() * 1_000_000_000 + meta.mtime_nsec();
    id[24..].copy_from_slice(&mtime_ns.to_le_bytes());
    id
}

/// The skeleton of a tar and its length, reading no file.
struct SkeletonSink {
    skeleton: Sha256,
    offset: u64,
}

impl TarSink for SkeletonSink {
    fn bytes(&mut self, b: &[u8]) -> io::Result<()> {
        self.skeleton.update(b);
        self.offset += b.len() as u64;
        Ok(())
    }

    fn content(
        &mut self,
        _path: &Path,
        meta: &fs::Metadata,
        size: u64,
        _pre: Option<&[u8]>,
    ) -> io::Result<()> {
        self.skeleton.update(identity(meta));
        self.offset += size;
        Ok(())
    }
}

enum HashMsg {
    /// A buffer and how many of its bytes are data.
    Data(Vec<u8>, usize),
    /// Note the state here (an entry boundary).
    Mark,
}

/// The tar into a resumable SHA-256 on another thread (fed 1 MiB chunks, so it overlaps with
/// reading the files), and its skeleton on this one. The chunks' buffers go back and forth
/// between the two threads: files are read into them as they are (no allocation, no zeroing per
/// chunk).
struct HashSink {
    /// Always `HASH_CHUNK` long; `fill` bytes are data.
    buf: Vec<u8>,
    fill: usize,
    tx: Option<std::sync::mpsc::SyncSender<HashMsg>>,
    /// Buffers the hashing thread is done with.
    spare: std::sync::mpsc::Receiver<Vec<u8>>,
    worker: Option<std::thread::JoinHandle<HashResult>>,
    skeleton: Sha256,
    offset: u64,
}

const HASH_CHUNK: usize = 1 << 20;

impl HashSink {
    fn start(state: crate::digest::Sha256State, skeleton: Sha256) -> HashSink {
        let (tx, rx) = std::sync::mpsc::sync_channel::<HashMsg>(4);
        let (back, spare) = std::sync::mpsc::channel::<Vec<u8>>();
        let worker = std::thread::spawn(move || {
            let mut h = crate::digest::ResumableSha256::resume(state);
            let mut states = Vec::new();
            for msg in rx {
                match msg {
                    HashMsg::Data(d, n) => {
                        h.update(&d[..n]);
                        // The sink may be gone already (an error): the buffer is then freed.
                        let _ = back.send(d);
                    }
                    HashMsg::Mark => states.push(h.state()),
                }
            }
            let len = h.len();
            (h.finalize(), len, states)
        });
        HashSink {
            buf: vec![0; HASH_CHUNK],
            fill: 0,
            tx: Some(tx),
            spare,
            worker: Some(worker),
            skeleton,
            offset: state.len,
        }
    }

    fn send(&mut self, msg: HashMsg) -> io::Result<()> {
        let tx = self
            .tx
            .as_ref()
            .ok_or_else(|| io::Error::other("hashing ended"))?;
        tx.send(msg)
            .map_err(|_| io::Error::other("the layer hashing thread stopped early"))
    }

    /// Sends the buffered data to the hashing thread.
    fn flush_chunk(&mut self) -> io::Result<()> {
        if self.fill == 0 {
            return Ok(());
        }
        let next = self
            .spare
            .try_recv()
            .unwrap_or_else(|_| vec![0; HASH_CHUNK]);
        let full = std::mem::replace(&mut self.buf, next);
        let n = std::mem::take(&mut self.fill);
        self.send(HashMsg::Data(full, n))
    }

    fn push(&mut self, mut b: &[u8]) -> io::Result<()> {
        self.offset += b.len() as u64;
        while !b.is_empty() {
            let n = (HASH_CHUNK - self.fill).min(b.len());
            self.buf[self.fill..self.fill + n].copy_from_slice(&b[..n]);
            self.fill += n;
            b = &b[n..];
            if self.fill == HASH_CHUNK {
                self.flush_chunk()?;
            }
        }
        Ok(())
    }

    /// Marks a checkpoint here: its skeleton digest now, its hash state when the thread gets here.
    fn mark(&mut self) -> io::Result<[u8; 32]> {
        self.flush_chunk()?;
        self.send(HashMsg::Mark)?;
        Ok(self.skeleton.clone().finalize())
    }

    /// The digest, the length and the state at each mark.
    fn finish(&mut self) -> io::Result<([u8; 32], u64, Vec<Option<crate::digest::Sha256State>>)> {
        self.flush_chunk()?;
        self.tx = None;
        let worker = self
            .worker
            .take()
            .ok_or_else(|| io::Error::other("hashing ended"))?;
        worker
            .join()
            .map_err(|_| io::Error::other("the layer hashing thread failed"))
    }
}

impl TarSink for HashSink {
    fn bytes(&mut self, b: &[u8]) -> io::Result<()> {
        self.skeleton.update(b);
        self.push(b)
    }

    fn content(
        &mut self,
        path: &Path,
        meta: &fs::Metadata,
        size: u64,
        pre: Option<&[u8]>,
    ) -> io::Result<()> {
        self.skeleton.update(identity(meta));
        if let Some(data) = pre.filter(|d| d.len() as u64 == size) {
            return self.push(data);
        }
        let mut file = fs::File::open(path)?;
        let mut left = size;
        while left > 0 {
            let room = (HASH_CHUNK - self.fill).min(usize::try_from(left).unwrap_or(usize::MAX));
            let at = self.fill;
            let n = loop {
                match file.read(&mut self.buf[at..at + room]) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    other => break other?,
                }
            };
            if n == 0 {
                return Err(io::Error::other(
                    "file shrank while being added to the layer",
                ));
            }
            self.fill += n;
            left -= n as u64;
            self.offset += n as u64;
            if self.fill == HASH_CHUNK {
                self.flush_chunk()?;
            }
        }
        Ok(())
    }
}

impl Drop for HashSink {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

/// Files up to this size are read by the [`Gather`] threads; bigger ones are read in place.
const READ_AHEAD_FILE: u64 = 64 << 10;
/// Entries in one block a gather thread hands over.
const GATHER_BLOCK: usize = 32;
/// Blocks each gather thread may have ready before the hashing loop takes them (memory: at most
/// threads x (this + 1) x `GATHER_BLOCK` x `READ_AHEAD_FILE`, 12 MiB, plus the block in use).
const GATHER_QUEUE: usize = 2;
/// Threads gathering entries ahead of the hashing loop.
const GATHER_THREADS: usize = 2;

/// What a [`Gather`] thread found for one entry: what the hashing loop would otherwise look up
/// itself (its lstat, its xattrs) and, for a small regular file, its bytes (exactly `meta`'s
/// size, read from the descriptor `meta` was taken from).
struct Gathered {
    meta: fs::Metadata,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    data: Option<Vec<u8>>,
}

/// Gathered entries in the tar's order: (entry index, what was found; None: look in place).
type GatherBlock = Vec<(usize, Option<Gathered>)>;

/// The tar's entries gathered ahead of the hashing loop on `GATHER_THREADS` threads: for a tar of
/// tens of thousands of small files, stat'ing them, listing their xattrs and reading them is most
/// of its time, and one thread in the kernel at a time left the rest of the machine idle. The
/// entries are cut into blocks of `GATHER_BLOCK`, thread k gathering blocks k, k + n, k + 2n...
/// into a bounded channel of its own, which the loop reads in turn, so the blocks arrive in the
/// tar's order. A regular file is stat'ed and opened relative to its directory's descriptor
/// (kept while the thread's entries share it), its xattrs and bytes read through that
/// descriptor and its metadata taken from it (`fstat`), so the bytes go with the metadata the
/// header is written from; anything else is looked up by path as the loop would. An entry that
/// could not be gathered is looked up by the loop itself (which then reports its error), so the
/// bytes hashed are always those `write_layer` writes.
struct Gather {
    rxs: Vec<std::sync::mpsc::Receiver<GatherBlock>>,
    block: VecDeque<(usize, Option<Gathered>)>,
    next_block: usize,
    workers: Vec<std::thread::JoinHandle<()>>,
}

impl Gather {
    fn start(source_root: &Path, plan: &[(PathBuf, Planned)], first: usize) -> Gather {
        let entries: Vec<(usize, PathBuf)> = plan
            .iter()
            .enumerate()
            .skip(first)
            .filter(|(_, (_, p))| matches!(p, Planned::Upsert))
            .map(|(i, (rel, _))| (i, rel.clone()))
            .collect();
        let entries = std::sync::Arc::new(entries);
        let root = std::sync::Arc::new(source_root.to_path_buf());
        let threads = GATHER_THREADS.min(entries.len().div_ceil(GATHER_BLOCK));
        let mut rxs = Vec::new();
        let mut workers = Vec::new();
        for k in 0..threads {
            let (tx, rx) = std::sync::mpsc::sync_channel::<GatherBlock>(GATHER_QUEUE);
            let (entries, root) = (entries.clone(), root.clone());
            workers.push(std::thread::spawn(move || {
                let mut dir = None;
                let mut b = k;
                while b * GATHER_BLOCK < entries.len() {
                    let end = ((b + 1) * GATHER_BLOCK).min(entries.len());
                    let block = entries[b * GATHER_BLOCK..end]
                        .iter()
                        .map(|(i, rel)| (*i, gather_entry(&root, rel, &mut dir)))
                        .collect();
                    // The loop is gone (an error): stop.
                    if tx.send(block).is_err() {
                        return;
                    }
                    b += threads;
                }
            }));
            rxs.push(rx);
        }
        Gather {
            rxs,
            block: VecDeque::new(),
            next_block: 0,
            workers,
        }
    }

    /// What was gathered for entry `entry` (the loop asks for every upserted entry in order).
    fn take(&mut self, entry: usize) -> Option<Gathered> {
        loop {
            if self.block.is_empty() {
                let rx = self.rxs.get(self.next_block % self.rxs.len().max(1))?;
                // A thread that stopped (it cannot, short of a panic) leaves the rest in place.
                let block = rx.recv().ok()?;
                self.next_block += 1;
                self.block = block.into();
            }
            let &(i, _) = self.block.front()?;
            if i < entry {
                self.block.pop_front();
                continue;
            }
            if i > entry {
                return None;
            }
            return self.block.pop_front()?.1;
        }
    }
}

impl Drop for Gather {
    fn drop(&mut self) {
        // The threads stop at their next send once their receivers are gone.
        self.rxs.clear();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// One entry for [`Gather`]; `dir`: the thread's last parent directory and its descriptor.
fn gather_entry(
    root: &Path,
    rel: &Path,
    dir: &mut Option<(PathBuf, fs::File)>,
) -> Option<Gathered> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let (parent, name) = (rel.parent()?, rel.file_name()?);
    if dir.as_ref().map(|(p, _)| p.as_path()) != Some(parent) {
        let f = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(root.join(parent))
            .ok()?;
        *dir = Some((parent.to_path_buf(), f));
    }
    let dfd = dir.as_ref()?.1.as_raw_fd();
    let st =
        nix::sys::stat::fstatat(Some(dfd), name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW).ok()?;
    if st.st_mode & libc::S_IFMT == libc::S_IFREG && st.st_size as u64 <= READ_AHEAD_FILE {
        let cname = CString::new(name.as_bytes()).ok()?;
        // SAFETY: dfd is an open directory and cname a valid C string; the descriptor returned
        // is owned by the File made from it below. O_NONBLOCK: never wait on a FIFO put there
        // since the stat (the identity is checked against it).
        let fd = unsafe {
            libc::openat(
                dfd,
                cname.as_ptr(),
                libc::O_RDONLY
                    | libc::O_NOFOLLOW
                    | libc::O_NONBLOCK
                    | libc::O_NOCTTY
                    | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return None;
        }
        // SAFETY: fd was just opened and nothing else owns it.
        let file = unsafe { fs::File::from_raw_fd(fd) };
        let meta = file.metadata().ok()?;
        if !meta.is_file() || meta.dev() != st.st_dev || meta.ino() != st.st_ino {
            return None;
        }
        let xattrs = read_xattrs_fd(&file).ok()?;
        let mut data = Vec::with_capacity(meta.len() as usize);
        // One byte more than the size: a file that grew is read in place, as stat'ed.
        match (&file).take(meta.len() + 1).read_to_end(&mut data) {
            Ok(n) if n as u64 == meta.len() => {}
            _ => return None,
        }
        return Some(Gathered {
            meta,
            xattrs,
            data: Some(data),
        });
    }
    let path = root.join(rel);
    let meta = fs::symlink_metadata(&path).ok()?;
    let xattrs = read_xattrs(&path).ok()?;
    Some(Gathered {
        meta,
        xattrs,
        data: None,
    })
}

struct TarWriter<'o, W> {
    out: W,
    opts: &'o WriteOptions,
    /// Files with more than one link seen so far.
    inodes: SeenInodes,
    /// The index of the entry being appended.
    index: usize,
    /// What a [`Gather`] thread found for the next entry appended from disk (used instead of
    /// looking again).
    pre: Option<Gathered>,
}

impl<'o, W: TarSink> TarWriter<'o, W> {
    fn new(out: W, opts: &'o WriteOptions) -> TarWriter<'o, W> {
        TarWriter {
            out,
            opts,
            inodes: HashMap::new(),
            index: 0,
            pre: None,
        }
    }

    fn append_planned(&mut self, source_root: &Path, rel: &Path, planned: &Planned) -> Result<()> {
        let name = rel.as_os_str().as_bytes();
        match planned {
            Planned::Whiteout | Planned::Opaque => {
                self.append(&EntryHeader::marker(name.to_vec()), &[], None)?;
            }
            Planned::Upsert => {
                let path = source_root.join(rel);
                self.append_from_disk(&path, name)
                    .with_context(|| format!("adding {} to a layer", path.display()))?;
            }
        }
        self.index += 1;
        Ok(())
    }

    fn append_from_disk(&mut self, path: &Path, name: &[u8]) -> Result<()> {
        let (meta, xattrs, data) = match self.pre.take() {
            Some(g) => (g.meta, g.xattrs, g.data),
            None => {
                let meta = fs::symlink_metadata(path)?;
                let xattrs = read_xattrs(path)?;
                (meta, xattrs, None)
            }
        };
        let ft = meta.file_type();
        let mut mtime = meta.mtime();
        if let Some(epoch) = self.opts.source_date_epoch {
            mtime = mtime.min(epoch);
        }
        let mut h = EntryHeader {
            name: name.to_vec(),
            kind: b'0',
            mode: meta.mode() & 0o7777,
            uid: meta.uid() as u64,
            gid: meta.gid() as u64,
            size: 0,
            mtime,
            link: Vec::new(),
            dev: (0, 0),
        };
        if !ft.is_dir() && meta.nlink() > 1 {
            let key = (meta.dev(), meta.ino());
            if let Some((first, _)) = self.inodes.get(&key) {
                h.kind = b'1';
                h.link = first.clone();
                h.mode = meta.mode() & 0o7777;
                return self.append(&h, &[], None);
            }
            self.inodes.insert(key, (name.to_vec(), self.index));
        }
        if ft.is_dir() {
            h.kind = b'5';
            h.name.push(b'/');
            self.append(&h, &xattrs, None)
        } else if ft.is_file() {
            h.size = meta.len();
            self.append(&h, &xattrs, Some((path, &meta, data.as_deref())))
        } else if ft.is_symlink() {
            h.kind = b'2';
            h.link = fs::read_link(path)?.into_os_string().into_vec();
            self.append(&h, &xattrs, None)
        } else if ft.is_char_device() || ft.is_block_device() {
            h.kind = if ft.is_char_device() { b'3' } else { b'4' };
            let rdev = meta.rdev();
            h.dev = (libc::major(rdev) as u64, libc::minor(rdev) as u64);
            self.append(&h, &xattrs, None)
        } else if ft.is_fifo() {
            h.kind = b'6';
            self.append(&h, &xattrs, None)
        } else {
            bail!("sockets cannot go into a layer")
        }
    }

    fn append(
        &mut self,
        h: &EntryHeader,
        xattrs: &[(Vec<u8>, Vec<u8>)],
        data: Option<(&Path, &fs::Metadata, Option<&[u8]>)>,
    ) -> Result<()> {
        let mut pax: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        if h.name.len() > 100 {
            pax.push((b"path".to_vec(), h.name.clone()));
        }
        if h.link.len() > 100 {
            pax.push((b"linkpath".to_vec(), h.link.clone()));
        }
        const MAX7: u64 = 0o7777777;
        const MAX11: u64 = 0o77777777777;
        if h.uid > MAX7 {
            pax.push((b"uid".to_vec(), h.uid.to_string().into_bytes()));
        }
        if h.gid > MAX7 {
            pax.push((b"gid".to_vec(), h.gid.to_string().into_bytes()));
        }
        if h.size > MAX11 {
            pax.push((b"size".to_vec(), h.size.to_string().into_bytes()));
        }
        if h.mtime < 0 || h.mtime as u64 > MAX11 {
            pax.push((b"mtime".to_vec(), h.mtime.to_string().into_bytes()));
        }
        for (k, v) in xattrs {
            let mut key = b"SCHILY.xattr.".to_vec();
            key.extend_from_slice(k);
            pax.push((key, v.clone()));
        }
        if !pax.is_empty() {
            let mut body = Vec::new();
            for (k, v) in &pax {
                body.extend_from_slice(&pax_record(k, v));
            }
            let mut name = b"PaxHeaders/".to_vec();
            name.extend_from_slice(&h.name[..h.name.len().min(80)]);
            let xh = EntryHeader {
                kind: b'x',
                size: body.len() as u64,
                ..EntryHeader::marker(name)
            };
            self.write_header(&xh)?;
            self.out.bytes(&body)?;
            self.pad(body.len() as u64)?;
        }
        self.write_header(h)?;
        if let Some((path, meta, pre)) = data {
            self.out.content(path, meta, h.size, pre)?;
            self.pad(h.size)?;
        }
        Ok(())
    }

    fn pad(&mut self, size: u64) -> io::Result<()> {
        let rem = (size % 512) as usize;
        if rem != 0 {
            self.out.bytes(&[0u8; 512][..512 - rem])?;
        }
        Ok(())
    }

    fn write_header(&mut self, h: &EntryHeader) -> io::Result<()> {
        let mut b = [0u8; 512];
        let name = &h.name[..h.name.len().min(100)];
        b[..name.len()].copy_from_slice(name);
        octal(&mut b[100..108], h.mode as u64);
        octal(&mut b[108..116], h.uid.min(0o7777777));
        octal(&mut b[116..124], h.gid.min(0o7777777));
        octal(&mut b[124..136], h.size.min(0o77777777777));
        octal(&mut b[136..148], h.mtime.clamp(0, 0o77777777777) as u64);
        b[156] = h.kind;
        let link = &h.link[..h.link.len().min(100)];
        b[157..157 + link.len()].copy_from_slice(link);
        b[257..263].copy_from_slice(b"ustar\0");
        b[263..265].copy_from_slice(b"00");
        if h.kind == b'3' || h.kind == b'4' {
            octal(&mut b[329..337], h.dev.0.min(0o7777777));
            octal(&mut b[337..345], h.dev.1.min(0o7777777));
        }
        b[148..156].copy_from_slice(b"        ");
        let sum: u32 = b.iter().map(|&x| x as u32).sum();
        let cks = format!("{sum:06o}\0 ");
        b[148..156].copy_from_slice(cks.as_bytes());
        self.out.bytes(&b)
    }
}

/// Writes `v` as zero-padded octal filling `field` but its last byte (a NUL).
fn octal(field: &mut [u8], v: u64) {
    let digits = field.len() - 1;
    let s = format!("{v:0digits$o}");
    field[..digits].copy_from_slice(&s.as_bytes()[s.len() - digits..]);
    field[digits] = 0;
}

fn pax_record(key: &[u8], value: &[u8]) -> Vec<u8> {
    // "<len> <key>=<value>\n" where len counts itself.
    let rest = key.len() + value.len() + 3;
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    let mut r = format!("{len} ").into_bytes();
    r.extend_from_slice(key);
    r.push(b'=');
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::other("path contains NUL"))
}

/// The xattrs of `path` (not followed), sorted, without overlayfs' own `trusted.overlay.*`.
fn read_xattrs(path: &Path) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let c = cpath(path)?;
    xattrs_with(
        // SAFETY: c is a valid C string; the buffer is writable for the length passed.
        |buf| unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) },
        // SAFETY: valid C strings; the buffer is writable for the length passed.
        |name, buf| unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        },
    )
}

/// [`read_xattrs`] of an open file (no path to look up again).
fn read_xattrs_fd(file: &fs::File) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    xattrs_with(
        // SAFETY: fd is an open descriptor; the buffer is writable for the length passed.
        |buf| unsafe { libc::flistxattr(fd, buf.as_mut_ptr().cast(), buf.len()) },
        // SAFETY: fd is open, name a valid C string; the buffer is writable for its length.
        |name, buf| unsafe {
            libc::fgetxattr(fd, name.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
        },
    )
}

/// The xattrs `list` names and `get` reads (`listxattr`/`getxattr` of one inode), sorted,
/// without overlayfs' own.
fn xattrs_with(
    list: impl Fn(&mut [u8]) -> isize,
    get: impl Fn(&CString, &mut [u8]) -> isize,
) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut names = vec![0u8; 1024];
    let len = loop {
        let n = list(&mut names);
        if n >= 0 {
            break n as usize;
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::ERANGE) => names.resize(names.len() * 4, 0),
            Some(libc::ENOTSUP) => return Ok(Vec::new()),
            _ => return Err(err),
        }
    };
    let mut out = Vec::new();
    for name in names[..len].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if crate::rootless::is_overlay_xattr(name) {
            continue;
        }
        let cname = CString::new(name).map_err(io::Error::other)?;
        let mut value = vec![0u8; 256];
        loop {
            let n = get(&cname, &mut value);
            if n >= 0 {
                value.truncate(n as usize);
                break;
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::ERANGE) => value.resize(value.len() * 16, 0),
                Some(libc::ENODATA) => {
                    value.clear();
                    break;
                }
                _ => return Err(err),
            }
        }
        out.push((name.to_vec(), value));
    }
    out.sort();
    Ok(out)
}

fn set_xattr(path: &Path, name: &[u8], value: &[u8]) -> io::Result<()> {
    let c = cpath(path)?;
    let cname = CString::new(name).map_err(io::Error::other)?;
    // SAFETY: valid C strings; value is a readable buffer of the length passed.
    let rc = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            cname.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

// ---------------------------------------------------------------------------------------------
// Applying

/// How whiteouts are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyMode {
    /// Onto a full root filesystem: `.wh.x` deletes `x`, `.wh..wh..opq` empties the directory of
    /// what lower layers put there.
    Flatten,
    /// Into the layer's own directory, to serve as an overlay lowerdir: `.wh.x` becomes a 0:0
    /// character device `x`, `.wh..wh..opq` the xattr `trusted.overlay.opaque=y`.
    Overlay,
}

/// What applying a layer saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedLayer {
    /// `sha256:` of the uncompressed tar stream.
    pub diff_id: String,
    /// Size of the uncompressed tar stream.
    pub size: u64,
    pub entries: u64,
}

/// Hashes and counts the uncompressed stream, and stops it at the storage bounds: the largest
/// accepted layer, and the free-space floor of the target's filesystem (everything written comes
/// from this stream, so it is checked as the stream is read).
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    size: u64,
    limits: Limits,
    space: SpaceGuard,
    /// Why reading stopped at a bound (the tar reader reports it as a read error).
    stopped: Option<String>,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        let bounded = self
            .limits
            .check_layer_size(self.size)
            .and_then(|()| self.space.wrote(n as u64));
        if let Err(e) = &bounded {
            self.stopped = Some(e.to_string());
        }
        bounded.map(|()| n)
    }
}

/// Applies a layer tar (gzip, zstd or uncompressed: detected) to `target`, preserving owners
/// (when running as root), modes, xattrs, devices and mtimes. Never writes outside `target`.
/// Stops at the storage bounds in force ([`Limits::current`]).
pub fn apply_layer(tar: impl Read, target: &Path, mode: ApplyMode) -> Result<AppliedLayer> {
    apply_layer_with(tar, target, mode, Limits::current()?)
}

/// [`apply_layer`] with explicit storage bounds.
pub fn apply_layer_with(
    tar: impl Read,
    target: &Path,
    mode: ApplyMode,
    limits: Limits,
) -> Result<AppliedLayer> {
    let (_, stream) = crate::oci::compress::decompress(tar).context("reading the layer")?;
    fs::create_dir_all(target).with_context(|| format!("creating {}", target.display()))?;
    let space = SpaceGuard::new(target, limits).context("unpacking a layer")?;
    let mut reader = HashingReader {
        inner: super::targuard::TarGuard::new(stream),
        hasher: Sha256::new(),
        size: 0,
        limits,
        space,
        stopped: None,
    };
    let root = target
        .canonicalize()
        .with_context(|| format!("resolving {}", target.display()))?;
    let mut applier = Applier::new(root, mode, None);
    let applied = applier.apply_all(&mut reader).and_then(|entries| {
        // Hash what follows the end-of-archive marker too: the DiffID covers the whole stream.
        io::copy(&mut reader, &mut io::sink()).context("reading the layer tar")?;
        Ok(entries)
    });
    let entries = match applied {
        Ok(entries) => entries,
        Err(e) => match reader.stopped.take() {
            Some(why) => bail!("{why}"),
            None => return Err(e),
        },
    };
    // Directory mtimes last: creating their children changed them.
    for (path, mtime) in applier.dir_times.iter().rev() {
        set_times(path, *mtime)?;
    }
    Ok(AppliedLayer {
        diff_id: format!("sha256:{}", hex::encode(reader.hasher.finalize())),
        size: reader.size,
        entries,
    })
}

struct Applier {
    root: PathBuf,
    mode: ApplyMode,
    as_root: bool,
    /// Real paths this layer wrote (an opaque marker keeps them).
    written: HashSet<PathBuf>,
    dir_times: Vec<(PathBuf, (i64, u32))>,
    /// The last directory resolved, as far as it was real directories from the root (no
    /// symlink followed): the next entry usually lies under it, so resolving it does not walk
    /// from the root again (which made deeply nested archives quadratic). Emptied whenever
    /// something is removed.
    known_dirs: Vec<OsString>,
    /// Archive extraction (ADD) instead of a layer: see [`extract_archive`].
    extract: Option<ExtractOptions>,
}

/// A tar path for an error message: quoted, and cut in the middle when long.
fn shorten(raw: &[u8]) -> String {
    const KEEP: usize = 60;
    let text = String::from_utf8_lossy(raw);
    let chars: Vec<char> = text.chars().collect();
    if chars.len() <= 2 * KEEP {
        return format!("{text:?}");
    }
    let head: String = chars[..KEEP].iter().collect();
    let tail: String = chars[chars.len() - KEEP..].iter().collect();
    format!(
        "{:?}",
        format!("{head}...({} characters)...{tail}", chars.len())
    )
}

/// Splits a tar path into normal components: leading `/` and `.` dropped, `..` rejected.
fn tar_components(raw: &[u8]) -> Result<Vec<OsString>> {
    let mut out = Vec::new();
    for part in raw.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => bail!(
                "the path {} climbs out of the layer with `..`: refusing this layer",
                shorten(raw)
            ),
            p => out.push(OsStr::from_bytes(p).to_os_string()),
        }
    }
    Ok(out)
}

const MAX_SYMLINKS: usize = 255;

impl Applier {
    fn new(root: PathBuf, mode: ApplyMode, extract: Option<ExtractOptions>) -> Applier {
        Applier {
            root,
            mode,
            as_root: nix::unistd::Uid::effective().is_root(),
            written: HashSet::new(),
            dir_times: Vec::new(),
            known_dirs: Vec::new(),
            extract,
        }
    }

    /// Applies every entry of the tar read from `input`; the number of entries.
    fn apply_all(&mut self, input: impl Read) -> Result<u64> {
        let mut entries = 0u64;
        let mut archive = tar::Archive::new(input);
        let what = if self.extract.is_some() {
            "archive"
        } else {
            "layer"
        };
        for entry in archive
            .entries()
            .with_context(|| format!("reading the {what} tar"))?
        {
            let mut entry = entry.with_context(|| format!("reading the {what} tar"))?;
            let name = entry.path_bytes().into_owned();
            if let Err(e) = self.apply_entry(&mut entry) {
                let too_long = e.chain().any(|c| {
                    c.downcast_ref::<io::Error>()
                        .is_some_and(|e| e.raw_os_error() == Some(libc::ENAMETOOLONG))
                });
                let mut err = e.context(format!("{what} entry {}", shorten(&name)));
                if too_long {
                    err = err.context(format!(
                        "the {what} nests deeper than Linux paths reach ({} bytes of path \
                         under {})",
                        libc::PATH_MAX,
                        self.root.display()
                    ));
                }
                return Err(err);
            }
            entries += 1;
        }
        Ok(entries)
    }

    /// Resolves the directory `comps` inside the root, following symlinks as if the root were
    /// `/`, creating missing directories (0755) when `create`. The result is always inside the
    /// root.
    fn resolve_dir(&mut self, comps: &[OsString], create: bool) -> Result<PathBuf> {
        // Start below the longest known prefix: those components are real directories.
        let known = comps
            .iter()
            .zip(&self.known_dirs)
            .take_while(|(a, b)| a == b)
            .count();
        let mut todo: VecDeque<OsString> = comps[known..].iter().cloned().collect();
        let mut resolved: Vec<OsString> = comps[..known].to_vec();
        let mut dir = self.root.clone();
        dir.extend(&resolved);
        // Whether `resolved` is still `comps[..resolved.len()]` (no symlink, `.` or `..` seen).
        let mut plain = true;
        let mut links = 0;
        while let Some(c) = todo.pop_front() {
            match c.as_bytes() {
                b"" | b"." => {
                    plain = false;
                    continue;
                }
                b".." => {
                    plain = false;
                    // Never above the root: `..` of the root is the root.
                    if resolved.pop().is_some() {
                        dir.pop();
                    }
                    continue;
                }
                _ => {}
            }
            let candidate = dir.join(&c);
            match fs::symlink_metadata(&candidate) {
                Ok(m) if m.is_dir() => {
                    resolved.push(c);
                    dir = candidate;
                }
                Ok(m) if m.file_type().is_symlink() => {
                    plain = false;
                    links += 1;
                    if links > MAX_SYMLINKS {
                        bail!(
                            "too many levels of symbolic links under {}",
                            candidate.display()
                        );
                    }
                    let target = fs::read_link(&candidate)?;
                    let bytes = target.as_os_str().as_bytes();
                    if bytes.starts_with(b"/") {
                        resolved.clear();
                        dir = self.root.clone();
                    }
                    for part in bytes.split(|&b| b == b'/').rev() {
                        todo.push_front(OsStr::from_bytes(part).to_os_string());
                    }
                }
                Ok(_) => bail!(
                    "{} is not a directory but the layer puts files under it",
                    candidate
                        .strip_prefix(&self.root)
                        .unwrap_or(&candidate)
                        .display()
                ),
                Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                    fs::DirBuilder::new()
                        .mode(0o755)
                        .create(&candidate)
                        .with_context(|| {
                            format!("creating {}", shorten(candidate.as_os_str().as_bytes()))
                        })?;
                    resolved.push(c);
                    dir = candidate;
                }
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("looking up {}", shorten(candidate.as_os_str().as_bytes()))
                    })
                }
            }
            if plain {
                // Still the archive's own components: remember them as real directories.
                if self.known_dirs.len() >= resolved.len() {
                    self.known_dirs.truncate(resolved.len() - 1);
                }
                if self.known_dirs.len() + 1 == resolved.len() {
                    self.known_dirs.push(resolved[resolved.len() - 1].clone());
                }
            }
        }
        Ok(dir)
    }

    /// Removes what is at `path` (forgetting the directories known to exist).
    fn remove(&mut self, path: &Path) -> Result<()> {
        self.known_dirs.clear();
        remove_any(path)
    }

    fn apply_entry<R: Read>(&mut self, entry: &mut tar::Entry<R>) -> Result<()> {
        let kind = entry.header().entry_type();
        if matches!(kind, tar::EntryType::XGlobalHeader) {
            return Ok(());
        }
        // A PAX sparse file is stored under a made-up name (GNUSparseFile.N/...); its real
        // name is a PAX record.
        let sparse = SparseFile::from_pax(entry)?;
        let path = match &sparse {
            Some(s) if kind == tar::EntryType::Regular => s.name.clone(),
            _ => entry.path_bytes().into_owned(),
        };
        let comps = tar_components(&path)?;
        let Some((name, parents)) = comps.split_last() else {
            // The root itself: take its metadata when it is a directory (not for ADD, whose
            // destination keeps its own).
            if kind.is_dir() && self.extract.is_none() {
                let meta = EntryMeta::read(entry)?;
                let root = self.root.clone();
                self.set_metadata(&root, &meta, true)?;
            }
            return Ok(());
        };
        let name_bytes = name.as_bytes();
        if self.extract.is_none() {
            if let Some(hidden) = name_bytes.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
                return self.apply_whiteout(parents, hidden);
            }
        }
        let parent = self.resolve_dir(parents, true)?;
        let dest = parent.join(name);
        let mut meta = EntryMeta::read(entry)?;
        if let Some(x) = &self.extract {
            meta.xattrs.clear();
            if let Some((uid, gid)) = x.owner {
                meta.uid = uid;
                meta.gid = gid;
            }
        }
        let existing = fs::symlink_metadata(&dest).ok();
        if kind.is_dir() {
            if !existing.as_ref().is_some_and(|m| m.is_dir()) {
                if existing.is_some() {
                    self.remove(&dest)?;
                }
                fs::DirBuilder::new().mode(0o700).create(&dest)?;
            }
            self.set_metadata(&dest, &meta, true)?;
            self.dir_times.push((dest.clone(), meta.mtime));
            self.written.insert(dest);
            return Ok(());
        }
        if existing.is_some() {
            self.remove(&dest)?;
        }
        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&dest)?;
                match &sparse {
                    Some(s) if kind == tar::EntryType::Regular => s.write(entry, &mut file)?,
                    // The tar crate expands old GNU sparse files with zeros: keep the holes.
                    _ if kind == tar::EntryType::GNUSparse => copy_with_holes(entry, &mut file)?,
                    _ => {
                        io::copy(entry, &mut file)?;
                    }
                }
                // Through the open file: no path walks, no lstat (unpacking thousands of small
                // files is bound by these metadata calls).
                self.set_file_metadata(&file, &dest, &meta)?;
                drop(file);
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .context("symlink without a target")?
                    .into_owned();
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &dest)?;
                self.set_metadata(&dest, &meta, false)?;
            }
            tar::EntryType::Link => {
                let raw = entry
                    .link_name_bytes()
                    .context("hard link without a target")?
                    .into_owned();
                let target_comps = tar_components(&raw)?;
                let Some((tname, tparents)) = target_comps.split_last() else {
                    bail!("hard link to the root directory");
                };
                let source = self.resolve_dir(tparents, false)?.join(tname);
                let smeta = fs::symlink_metadata(&source).with_context(|| {
                    format!(
                        "hard link target {:?} does not exist in the layer",
                        String::from_utf8_lossy(&raw)
                    )
                })?;
                if smeta.is_dir() {
                    bail!("hard link to a directory");
                }
                fs::hard_link(&source, &dest)?;
                // ADD's extraction applies the link entry's own header to the shared inode (mode,
                // owner, time), as BuildKit's (containerd's) archive applier does: the last
                // entry naming the inode wins.
                if self.extract.is_some() {
                    self.set_metadata(&dest, &meta, false)?;
                }
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let (sflag, dev) = match kind {
                    tar::EntryType::Char => (nix::sys::stat::SFlag::S_IFCHR, meta.dev),
                    tar::EntryType::Block => (nix::sys::stat::SFlag::S_IFBLK, meta.dev),
                    _ => (nix::sys::stat::SFlag::S_IFIFO, (0, 0)),
                };
                nix::sys::stat::mknod(
                    &dest,
                    sflag,
                    nix::sys::stat::Mode::from_bits_truncate(0o600),
                    nix::sys::stat::makedev(dev.0, dev.1),
                )
                .with_context(|| format!("creating device {}", dest.display()))?;
                self.set_metadata(&dest, &meta, false)?;
            }
            other => bail!("unsupported tar entry type {other:?}"),
        }
        self.written.insert(dest);
        Ok(())
    }

    fn apply_whiteout(&mut self, parents: &[OsString], hidden: &[u8]) -> Result<()> {
        if hidden == &OPAQUE_WHITEOUT.as_bytes()[WHITEOUT_PREFIX.len()..] {
            let dir = self.resolve_dir(parents, true)?;
            match self.mode {
                ApplyMode::Flatten => {
                    for child in fs::read_dir(&dir)? {
                        let child = child?.path();
                        if !self.written.contains(&child) {
                            self.remove(&child)?;
                        }
                    }
                }
                ApplyMode::Overlay => set_xattr(
                    &dir,
                    &[crate::rootless::overlay_xattr_prefix(), b"opaque"].concat(),
                    b"y",
                )
                .with_context(|| format!("marking {} opaque", dir.display()))?,
            }
            return Ok(());
        }
        if hidden.starts_with(WHITEOUT_PREFIX.as_bytes()) {
            // Other `.wh..wh.` names are aufs metadata (hard link directories): nothing to do.
            return Ok(());
        }
        if hidden.is_empty() || hidden == b"." || hidden == b".." {
            bail!(
                "malformed whiteout name {:?}",
                String::from_utf8_lossy(hidden)
            );
        }
        let dir = self.resolve_dir(parents, true)?;
        let victim = dir.join(OsStr::from_bytes(hidden));
        match self.mode {
            ApplyMode::Flatten => {
                if fs::symlink_metadata(&victim).is_ok() {
                    self.remove(&victim)?;
                }
            }
            ApplyMode::Overlay => {
                if fs::symlink_metadata(&victim).is_ok() {
                    self.remove(&victim)?;
                }
                nix::sys::stat::mknod(
                    &victim,
                    nix::sys::stat::SFlag::S_IFCHR,
                    nix::sys::stat::Mode::empty(),
                    0,
                )
                .with_context(|| format!("creating overlay whiteout {}", victim.display()))?;
                self.written.insert(victim);
            }
        }
        Ok(())
    }

    /// Owner (through `chown`: by descriptor or by path) and xattrs of an entry just written.
    fn set_owner_and_xattrs(
        &self,
        path: &Path,
        meta: &EntryMeta,
        chown: impl Fn(u32, u32) -> std::io::Result<()>,
    ) -> Result<()> {
        if let Err(e) = chown(meta.uid, meta.gid) {
            // Rootless with only the user's id mapped: other owners are stored as root (kiln
            // said so when it entered its namespace).
            let single = crate::rootless::mapping() == crate::rootless::Mapping::Single;
            if single && e.raw_os_error() == Some(libc::EINVAL) {
                chown(0, 0).with_context(|| format!("chown {}", path.display()))?;
            } else if self.as_root {
                return Err(e).with_context(|| format!("chown {}", path.display()));
            }
        }
        for (k, v) in &meta.xattrs {
            if crate::rootless::is_overlay_xattr(k) {
                continue; // overlayfs' own: a layer must not smuggle redirects or opacity
            }
            if let Err(e) = set_xattr(path, k, v) {
                if self.as_root && e.raw_os_error() != Some(libc::ENOTSUP) {
                    return Err(e).with_context(|| {
                        format!(
                            "setting xattr {} on {}",
                            String::from_utf8_lossy(k),
                            path.display()
                        )
                    });
                }
            }
        }
        Ok(())
    }

    /// [`Self::set_metadata`] of a regular file just written, through its descriptor.
    fn set_file_metadata(&self, file: &fs::File, path: &Path, meta: &EntryMeta) -> Result<()> {
        self.set_owner_and_xattrs(path, meta, |uid, gid| {
            std::os::unix::fs::fchown(file, Some(uid), Some(gid))
        })?;
        // After chown, which clears set-id bits.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(meta.mode & 0o7777))
            .with_context(|| format!("chmod {}", path.display()))?;
        let t = nix::sys::time::TimeSpec::new(meta.mtime.0, meta.mtime.1 as i64);
        nix::sys::stat::futimens(std::os::fd::AsRawFd::as_raw_fd(file), &t, &t)
            .with_context(|| format!("setting times on {}", path.display()))?;
        Ok(())
    }

    fn set_metadata(&self, path: &Path, meta: &EntryMeta, is_dir: bool) -> Result<()> {
        let is_link = fs::symlink_metadata(path)?.file_type().is_symlink();
        self.set_owner_and_xattrs(path, meta, |uid, gid| {
            std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        })?;
        if !is_link {
            // After chown, which clears set-id bits.
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(path, fs::Permissions::from_mode(meta.mode & 0o7777))?;
        }
        if !is_dir {
            set_times(path, meta.mtime)?;
        }
        Ok(())
    }
}

/// How [`extract_archive`] writes an archive (ADD's auto-extraction).
#[derive(Debug, Clone, Copy, Default)]
pub struct ExtractOptions {
    /// Every entry owned by this uid:gid (ADD --chown); else the archive's numeric owners.
    pub owner: Option<(u32, u32)>,
}

/// Extracts an uncompressed tar stream into `dest` as ADD does: confined to `dest` like a layer
/// (symlinks resolved inside it, `..` refused), `.wh.` names are ordinary files, xattrs are not
/// applied, `dest` keeps its own metadata. Linear in the archive's size, however deep it nests.
/// Stops at the free-space floor.
pub fn extract_archive(tar: impl Read, dest: &Path, opts: ExtractOptions) -> Result<()> {
    fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
    let root = dest
        .canonicalize()
        .with_context(|| format!("resolving {}", dest.display()))?;
    let limits = Limits {
        max_layer_size: None,
        ..Limits::current()?
    };
    let mut reader = HashingReader {
        inner: super::targuard::TarGuard::new(tar),
        hasher: Sha256::new(),
        size: 0,
        limits,
        space: SpaceGuard::new(&root, limits).context("extracting an archive")?,
        stopped: None,
    };
    let mut applier = Applier::new(root, ApplyMode::Flatten, Some(opts));
    if let Err(e) = applier.apply_all(&mut reader) {
        match reader.stopped.take() {
            Some(why) => bail!("{why}"),
            None => return Err(e),
        }
    }
    for (path, mtime) in applier.dir_times.iter().rev() {
        set_times(path, *mtime)?;
    }
    Ok(())
}

/// A file in GNU tar's PAX sparse formats (0.0, 0.1, 1.0): the data chunks stored and where
/// they go in a file of `real_size` bytes; the rest are holes.
struct SparseFile {
    name: Vec<u8>,
    real_size: u64,
    /// 0.x: the map, from PAX records; 1.0: read from the start of the data.
    map: Option<Vec<(u64, u64)>>,
}

/// The most chunks a sparse map may list.
const MAX_SPARSE_CHUNKS: u64 = 1 << 20;

impl SparseFile {
    fn from_pax<R: Read>(entry: &mut tar::Entry<R>) -> Result<Option<SparseFile>> {
        let Some(exts) = entry.pax_extensions().context("bad PAX header")? else {
            return Ok(None);
        };
        let mut sparse = false;
        let (mut major, mut name, mut real_size, mut map_text) = (None, None, None, None);
        let mut offsets = Vec::new();
        let mut sizes = Vec::new();
        for ext in exts {
            let ext = ext.context("bad PAX record")?;
            let Some(key) = ext.key_bytes().strip_prefix(b"GNU.sparse.") else {
                continue;
            };
            sparse = true;
            let value = || {
                std::str::from_utf8(ext.value_bytes())
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .with_context(|| {
                        format!(
                            "bad GNU.sparse.{} record {:?}",
                            String::from_utf8_lossy(key),
                            String::from_utf8_lossy(ext.value_bytes())
                        )
                    })
            };
            match key {
                b"major" => major = Some(value()?),
                b"name" => name = Some(ext.value_bytes().to_vec()),
                b"realsize" | b"size" => real_size = Some(value()?),
                b"map" => map_text = Some(ext.value_bytes().to_vec()),
                b"offset" => offsets.push(value()?),
                b"numbytes" => sizes.push(value()?),
                _ => {}
            }
        }
        if !sparse {
            return Ok(None);
        }
        let name = name.unwrap_or_else(|| entry.path_bytes().into_owned());
        let real_size = real_size.context("a GNU sparse file without its real size")?;
        let map = match major {
            Some(1) => None,
            Some(m) if m != 0 => bail!("GNU sparse format {m}.x is not supported"),
            _ => {
                let numbers: Vec<u64> = match map_text {
                    Some(text) => std::str::from_utf8(&text)
                        .ok()
                        .and_then(|t| {
                            t.split(',')
                                .filter(|p| !p.is_empty())
                                .map(|p| p.trim().parse().ok())
                                .collect()
                        })
                        .context("bad GNU.sparse.map record")?,
                    None => {
                        if offsets.len() != sizes.len() {
                            bail!("GNU sparse 0.0 records: offsets and sizes do not pair up");
                        }
                        offsets
                            .iter()
                            .zip(&sizes)
                            .flat_map(|(o, s)| [*o, *s])
                            .collect()
                    }
                };
                if numbers.len() % 2 != 0 {
                    bail!("the GNU sparse map has an odd number of values");
                }
                Some(numbers.chunks(2).map(|c| (c[0], c[1])).collect())
            }
        };
        Ok(Some(SparseFile {
            name,
            real_size,
            map,
        }))
    }

    /// Writes the file: each chunk at its offset, holes between, `real_size` long.
    fn write<R: Read>(&self, entry: &mut tar::Entry<R>, file: &mut fs::File) -> Result<()> {
        use std::io::{Seek, SeekFrom};
        let stored = entry.size();
        let (map, map_bytes) = match &self.map {
            Some(m) => (m.clone(), 0),
            None => read_sparse_map(entry, stored)?,
        };
        let mut end = 0u64;
        let mut data = 0u64;
        for &(offset, size) in &map {
            let chunk_end = offset
                .checked_add(size)
                .context("sparse chunk out of range")?;
            if offset < end || chunk_end > self.real_size {
                bail!("the sparse map's chunks overlap, are out of order or pass the file's end");
            }
            end = chunk_end;
            data += size;
        }
        if data != stored - map_bytes {
            bail!(
                "the sparse map lists {data} bytes of data, the entry holds {}",
                stored - map_bytes
            );
        }
        for &(offset, size) in &map {
            file.seek(SeekFrom::Start(offset))?;
            let copied = io::copy(&mut (&mut *entry).take(size), file)?;
            if copied != size {
                bail!("the sparse file's data ends early");
            }
        }
        file.set_len(self.real_size)?;
        Ok(())
    }
}

/// Format 1.0's map at the start of the data: decimal numbers, one a line (the count, then
/// offset and size pairs), padded to a 512-byte block. Returns the map and its length.
fn read_sparse_map<R: Read>(entry: &mut R, stored: u64) -> Result<(Vec<(u64, u64)>, u64)> {
    let mut consumed = 0u64;
    let mut number = || -> Result<u64> {
        let mut text = Vec::new();
        loop {
            let mut b = [0u8; 1];
            entry
                .read_exact(&mut b)
                .context("the sparse map ends early")?;
            consumed += 1;
            if b[0] == b'\n' {
                break;
            }
            if !b[0].is_ascii_digit() || text.len() >= 20 {
                bail!("the sparse map is malformed");
            }
            text.push(b[0]);
        }
        std::str::from_utf8(&text)
            .ok()
            .and_then(|t| t.parse().ok())
            .context("the sparse map is malformed")
    };
    let count = number()?;
    if count > MAX_SPARSE_CHUNKS || count.saturating_mul(4) > stored {
        bail!("the sparse map lists {count} chunks: too many for the entry");
    }
    let mut map = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let offset = number()?;
        let size = number()?;
        map.push((offset, size));
    }
    let padded = consumed.div_ceil(512) * 512;
    if padded > stored {
        bail!("the sparse map is longer than the entry");
    }
    io::copy(&mut entry.take(padded - consumed), &mut io::sink())?;
    Ok((map, padded))
}

/// Copies `r` to `file`, seeking over 4 KiB blocks of zeros (so they stay holes); the file
/// gets its full length.
fn copy_with_holes(r: &mut impl Read, file: &mut fs::File) -> Result<()> {
    use std::io::{Seek, SeekFrom};
    let mut buf = vec![0u8; 64 * 1024];
    let mut len = 0u64;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        for block in buf[..n].chunks(4096) {
            if block.iter().all(|&b| b == 0) {
                file.seek(SeekFrom::Current(block.len() as i64))?;
            } else {
                file.write_all(block)?;
            }
        }
        len += n as u64;
    }
    file.set_len(len)?;
    Ok(())
}

fn set_times(path: &Path, (secs, nsecs): (i64, u32)) -> Result<()> {
    let t = nix::sys::time::TimeSpec::new(secs, nsecs as i64);
    nix::sys::stat::utimensat(
        None,
        path,
        &t,
        &t,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .with_context(|| format!("setting times on {}", path.display()))
}

fn remove_any(path: &Path) -> Result<()> {
    let meta = fs::symlink_metadata(path)?;
    if meta.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    }
    .with_context(|| format!("removing {}", path.display()))
}

struct EntryMeta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, u32),
    dev: (u64, u64),
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl EntryMeta {
    fn read<R: Read>(entry: &mut tar::Entry<R>) -> Result<EntryMeta> {
        let h = entry.header();
        let mode =
            lenient(h.mode().map(u64::from), &h.as_old().mode).context("bad mode field")? as u32;
        // Like Go's reader, an empty numeric field means 0.
        let old = h.as_old();
        let uid = lenient(h.uid(), &old.uid).context("bad uid field")?;
        let gid = lenient(h.gid(), &old.gid).context("bad gid field")?;
        let mtime = lenient(h.mtime(), &old.mtime).context("bad mtime field")?;
        let mut mtime = (mtime as i64, 0u32);
        let dev = (
            h.device_major().ok().flatten().unwrap_or(0) as u64,
            h.device_minor().ok().flatten().unwrap_or(0) as u64,
        );
        let mut xattrs = Vec::new();
        if let Some(exts) = entry.pax_extensions().context("bad PAX header")? {
            for ext in exts {
                let ext = ext.context("bad PAX record")?;
                let key = ext.key_bytes();
                if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                    xattrs.push((name.to_vec(), ext.value_bytes().to_vec()));
                } else if key == b"mtime" {
                    if let Some(t) = ext.value().ok().and_then(parse_pax_time) {
                        mtime = t;
                    }
                }
            }
        }
        Ok(EntryMeta {
            mode,
            uid: u32::try_from(uid).context("uid out of range")?,
            gid: u32::try_from(gid).context("gid out of range")?,
            mtime,
            dev,
            xattrs,
        })
    }
}

fn lenient(value: io::Result<u64>, field: &[u8]) -> io::Result<u64> {
    match value {
        Err(_) if field.iter().all(|&b| b == 0 || b == b' ') => Ok(0),
        v => v,
    }
}

fn parse_pax_time(s: &str) -> Option<(i64, u32)> {
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = secs.parse().ok()?;
    let mut digits: String = frac.chars().take(9).collect();
    while digits.len() < 9 {
        digits.push('0');
    }
    let nanos: u32 = digits.parse().ok()?;
    if secs < 0 && nanos > 0 {
        return Some((secs - 1, 1_000_000_000 - nanos));
    }
    Some((secs, nanos))
}

/// A layer in the store: compressed blob digest, uncompressed DiffID, size and media type.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LayerRef {
    pub digest: String,
    pub diff_id: String,
    pub size: u64,
    pub media_type: String,
}

/// A layer blob written to the store by [`store_layer`].
#[derive(Debug, Clone)]
pub struct StoredLayer {
    /// Media type, compressed digest and size: goes into the manifest.
    pub descriptor: oci_spec::image::Descriptor,
    /// Goes into the config's `rootfs.diff_ids`.
    pub diff_id: String,
    pub uncompressed_size: u64,
}

/// Streams a layer tar produced by `write` (e.g. a closure calling [`write_layer`]) through the
/// compressor into a new blob, and records the layer (digest -> DiffID). One pass, no temp tar.
pub fn store_layer(
    store: &crate::store::Store,
    compression: crate::oci::compress::Compression,
    write: impl FnOnce(&mut dyn Write) -> Result<()>,
) -> Result<StoredLayer> {
    store_layer_with_gzip_level(
        store,
        compression,
        crate::oci::compress::DEFAULT_GZIP_LEVEL,
        write,
    )
}

/// [`store_layer`] with gzip at `gzip_level` (builds trade a little size for speed).
pub fn store_layer_with_gzip_level(
    store: &crate::store::Store,
    compression: crate::oci::compress::Compression,
    gzip_level: u32,
    write: impl FnOnce(&mut dyn Write) -> Result<()>,
) -> Result<StoredLayer> {
    let mut compressor = crate::oci::compress::Compressor::with_gzip_level(
        store.blob_writer()?,
        compression,
        gzip_level,
    )?;
    write(&mut compressor)?;
    let (blob_writer, digests) = compressor.finish().context("compressing a layer")?;
    let blob = blob_writer.commit(Some(&digests.digest))?;
    let media_type = compression.layer_media_type();
    store.record_layer(&crate::store::LayerRecord {
        digest: blob.digest.clone(),
        diff_id: digests.diff_id.clone(),
        media_type: media_type.to_string(),
        size: blob.size,
    })?;
    Ok(StoredLayer {
        descriptor: oci_spec::image::Descriptor::new(
            media_type,
            blob.size,
            blob.digest
                .parse::<oci_spec::image::Digest>()
                .context("layer digest")?,
        ),
        diff_id: digests.diff_id,
        uncompressed_size: digests.uncompressed_size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full_diff_id(root: &Path, changes: &[Change]) -> (String, u64) {
        let mut tar = Vec::new();
        write_layer(root, changes, &mut tar, &WriteOptions::default()).unwrap();
        (crate::digest::sha256_digest(&tar), tar.len() as u64)
    }

    /// 48 files of 256 KiB (several checkpoints apart) and a directory at the end.
    fn make_tree(root: &Path) {
        for i in 0..48u32 {
            let data: Vec<u8> = (0..256 * 1024u32)
                .map(|j| (i * 31 + j % 251) as u8)
                .collect();
            fs::write(root.join(format!("f{i:02}")), data).unwrap();
        }
        fs::create_dir(root.join("zz")).unwrap();
        fs::write(root.join("zz/last"), b"last").unwrap();
    }

    /// Another layer made as an incremental COPY makes one: every file hard-linked from `from`.
    fn link_tree(from: &Path, to: &Path) {
        for e in fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_file() {
                fs::hard_link(e.path(), to.join(e.file_name())).unwrap();
            }
        }
        fs::create_dir(to.join("zz")).unwrap();
        fs::hard_link(from.join("zz/last"), to.join("zz/last")).unwrap();
    }

    /// A temp dir with `a` (the test tree, hashed from scratch: its changes and result) and an
    /// empty `b`.
    fn hashed_test_tree() -> (
        tempfile::TempDir,
        PathBuf,
        PathBuf,
        Vec<Change>,
        HashedLayer,
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        fs::create_dir(&a).unwrap();
        fs::create_dir(&b).unwrap();
        make_tree(&a);
        let changes_a = tree_changes(&a).unwrap();
        let first = hash_layer(&a, &changes_a, &WriteOptions::default(), &[]).unwrap();
        (tmp, a, b, changes_a, first)
    }

    #[test]
    fn hashing_matches_the_written_tar_across_chunk_boundaries() {
        // Files larger than a hashing chunk, odd sizes, a long name (a PAX header) and empty
        // files, so that chunk ends fall inside contents and headers.
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let big: Vec<u8> = (0..(HASH_CHUNK * 3 + 4097))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        fs::write(root.join("big"), &big).unwrap();
        fs::write(root.join("big2"), &big[..HASH_CHUNK - 100]).unwrap();
        for i in 0..40 {
            fs::write(root.join(format!("odd{i}")), &big[..(i * 12_345 + 1)]).unwrap();
        }
        fs::write(root.join("empty"), b"").unwrap();
        fs::write(root.join("n".repeat(200)), b"long name").unwrap();
        let changes = tree_changes(root).unwrap();
        let hashed = hash_layer(root, &changes, &WriteOptions::default(), &[]).unwrap();
        assert_eq!((hashed.diff_id, hashed.size), full_diff_id(root, &changes));
    }

    #[test]
    fn small_files_read_ahead_hash_as_the_written_tar() {
        // Many small files (gathered ahead, in many blocks), files at and past the read-ahead
        // size (read in place), an empty one, hard links (second names have no content, the
        // names in blocks of different gather threads), a symlink, a deletion.
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        for d in 0..30u32 {
            fs::create_dir_all(root.join(format!("d{d:02}/lib"))).unwrap();
            for f in 0..7u32 {
                let body = vec![b'a' + (d * 7 + f) as u8 % 26; (d * 131 + f * 977) as usize];
                fs::write(root.join(format!("d{d:02}/lib/f{f}")), body).unwrap();
            }
        }
        fs::write(
            root.join("d03/at-limit"),
            vec![7u8; READ_AHEAD_FILE as usize],
        )
        .unwrap();
        fs::write(
            root.join("d03/past-limit"),
            vec![8u8; READ_AHEAD_FILE as usize + 1],
        )
        .unwrap();
        fs::write(root.join("d04/empty"), b"").unwrap();
        fs::hard_link(root.join("d05/lib/f1"), root.join("d29/linked")).unwrap();
        fs::hard_link(root.join("d05/lib/f1"), root.join("d00/linked-first")).unwrap();
        std::os::unix::fs::symlink("lib/f2", root.join("d06/link")).unwrap();
        let mut changes = tree_changes(root).unwrap();
        changes.push(Change::Delete("d07/gone".into()));
        let hashed = hash_layer(root, &changes, &WriteOptions::default(), &[]).unwrap();
        assert_eq!((hashed.diff_id, hashed.size), full_diff_id(root, &changes));
    }

    #[test]
    fn planned_entries_are_in_the_paths_order_and_markers_replace() {
        // Names where byte order and component order differ ('-' and '.' sort before '/').
        let names = [
            "a-b", "a/b", "a.b", "a", "a/b/c", "ab", "a/b-c", "a/b/c/d", "a b", "a/a", "b", "a/b.c",
        ];
        let mut changes: Vec<Change> = names.iter().map(|n| Change::Upsert(n.into())).collect();
        changes.push(Change::Upsert("a".into()));
        changes.push(Change::Delete("a/gone".into()));
        changes.push(Change::Opaque("ab".into()));
        changes.push(Change::Upsert("ab/.wh..wh..opq".into()));
        let plan = plan_entries(&changes).unwrap();
        let mut want: Vec<PathBuf> = names.iter().map(PathBuf::from).collect();
        want.push("a/.wh.gone".into());
        want.push("ab/.wh..wh..opq".into());
        want.sort();
        let got: Vec<PathBuf> = plan.iter().map(|(p, _)| p.clone()).collect();
        assert_eq!(got, want);
        let kind = |p: &str| {
            plan.iter()
                .find(|(q, _)| q == Path::new(p))
                .map(|(_, k)| match k {
                    Planned::Upsert => 'U',
                    Planned::Whiteout => 'W',
                    Planned::Opaque => 'O',
                })
        };
        // The opaque marker came first: the later upsert of the same name does not replace it.
        assert_eq!(kind("ab/.wh..wh..opq"), Some('O'));
        assert_eq!(kind("a/.wh.gone"), Some('W'));
        assert_eq!(kind("ab"), Some('U'));
    }

    #[test]
    fn gathered_xattrs_and_special_files_hash_as_the_written_tar() {
        // Entries the gather threads read through a descriptor (small files: metadata, xattrs,
        // bytes) or by path (directories, a FIFO, a file past the read-ahead size), with xattrs
        // on some of each, over many blocks of both threads.
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        for d in 0..12u32 {
            let dir = root.join(format!("d{d:02}"));
            fs::create_dir(&dir).unwrap();
            for f in 0..(GATHER_BLOCK as u32 / 3) {
                let p = dir.join(format!("f{f:02}"));
                fs::write(&p, vec![b'x'; (d * 37 + f * 101) as usize]).unwrap();
                if f % 4 == d % 4 {
                    set_xattr(&p, b"user.kiln.test", format!("{d}-{f}").as_bytes()).unwrap();
                }
            }
            if d % 3 == 0 {
                set_xattr(&dir, b"user.kiln.dir", b"yes").unwrap();
            }
        }
        let big = root.join("d05/big");
        fs::write(&big, vec![3u8; READ_AHEAD_FILE as usize * 2]).unwrap();
        set_xattr(&big, b"user.kiln.big", b"1").unwrap();
        nix::unistd::mkfifo(
            &root.join("d07/fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        let small = root.join("d02/f02");
        assert_eq!(
            read_xattrs_fd(&fs::File::open(&small).unwrap()).unwrap(),
            read_xattrs(&small).unwrap()
        );
        assert_eq!(read_xattrs(&small).unwrap().len(), 1);
        let changes = tree_changes(root).unwrap();
        let hashed = hash_layer(root, &changes, &WriteOptions::default(), &[]).unwrap();
        assert_eq!((hashed.diff_id, hashed.size), full_diff_id(root, &changes));
        // The xattrs are in that tar (the comparison above is not between two tars without them).
        let mut tar = Vec::new();
        write_layer(root, &changes, &mut tar, &WriteOptions::default()).unwrap();
        let text = String::from_utf8_lossy(&tar);
        assert!(text.contains("SCHILY.xattr.user.kiln.test=2-2"));
        assert!(text.contains("SCHILY.xattr.user.kiln.dir=yes"));
    }

    #[test]
    fn resumed_hashing_gives_the_full_tars_diff_id() {
        let (tmp, a, b, changes_a, first) = hashed_test_tree();
        assert_eq!(
            (first.diff_id.clone(), first.size),
            full_diff_id(&a, &changes_a)
        );
        // One about every CHECKPOINT_EVERY bytes, no more.
        let most = first.size / CHECKPOINT_EVERY;
        assert!(
            (4..=most as usize).contains(&first.checkpoints.len()),
            "{} checkpoints for {} bytes",
            first.checkpoints.len(),
            first.size
        );
        assert_eq!(first.reused, 0);
        let cps = decode_checkpoints(&encode_checkpoints(&first.checkpoints));
        assert_eq!(cps, first.checkpoints);

        // The same files through links, one in the middle rewritten: hashing resumes before it.
        link_tree(&a, &b);
        fs::remove_file(b.join("f30")).unwrap();
        fs::write(b.join("f30"), b"changed").unwrap();
        let changes_b = tree_changes(&b).unwrap();
        let second = hash_layer(&b, &changes_b, &WriteOptions::default(), &cps).unwrap();
        let (want, size) = full_diff_id(&b, &changes_b);
        assert_eq!((second.diff_id.clone(), second.size), (want, size));
        assert_ne!(second.diff_id, first.diff_id);
        assert!(second.reused > 20 * 256 * 1024, "reused {}", second.reused);
        assert!(second.reused <= 30 * (256 * 1024 + 512) + 512);

        // Its own checkpoints serve the next round (a file near the end changed).
        let c = tmp.path().join("c");
        fs::create_dir(&c).unwrap();
        link_tree(&b, &c);
        fs::remove_file(c.join("f45")).unwrap();
        fs::write(c.join("f45"), b"changed again").unwrap();
        let changes_c = tree_changes(&c).unwrap();
        let third = hash_layer(
            &c,
            &changes_c,
            &WriteOptions::default(),
            &second.checkpoints,
        )
        .unwrap();
        assert_eq!((third.diff_id, third.size), full_diff_id(&c, &changes_c));
        assert!(third.reused > second.reused);
        assert!(third.checkpoints.len() as u64 <= third.size / CHECKPOINT_EVERY);
    }

    #[test]
    fn resuming_never_trusts_a_different_prefix() {
        let (tmp, a, b, changes_a, first) = hashed_test_tree();
        // The first file has the same bytes, size and mtime but is a copy, not the same inode;
        // the rest are links: nothing before it is shared, so nothing is reused.
        link_tree(&a, &b);
        fs::remove_file(b.join("f00")).unwrap();
        fs::copy(a.join("f00"), b.join("f00")).unwrap();
        let mtime = fs::metadata(a.join("f00")).unwrap().modified().unwrap();
        fs::File::options()
            .write(true)
            .open(b.join("f00"))
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        let changes_b = tree_changes(&b).unwrap();
        let second =
            hash_layer(&b, &changes_b, &WriteOptions::default(), &first.checkpoints).unwrap();
        assert_eq!(second.reused, 0);
        assert_eq!(
            (second.diff_id.clone(), second.size),
            full_diff_id(&b, &changes_b)
        );

        // A layer with one more entry early on (an added file): its header shifts everything.
        let c = tmp.path().join("c");
        fs::create_dir(&c).unwrap();
        link_tree(&a, &c);
        fs::write(c.join("f00a"), b"new").unwrap();
        let changes_c = tree_changes(&c).unwrap();
        let third =
            hash_layer(&c, &changes_c, &WriteOptions::default(), &first.checkpoints).unwrap();
        assert_eq!(third.reused, 0);
        assert_eq!((third.diff_id, third.size), full_diff_id(&c, &changes_c));

        // Checkpoints of some other layer altogether, or damaged ones: a full hash.
        assert!(decode_checkpoints(b"short").is_empty());
        let mut wrong = first.checkpoints.clone();
        for cp in &mut wrong {
            cp.skeleton[0] ^= 1;
        }
        let fourth = hash_layer(&a, &changes_a, &WriteOptions::default(), &wrong).unwrap();
        assert_eq!(fourth.reused, 0);
        assert_eq!(fourth.diff_id, first.diff_id);
    }
}
