//! Making a built layer durable before the store records it, by syncing only what the layer
//! consists of (not the whole filesystem, whose other writers' dirty data a `syncfs` would wait
//! for).
//!
//! A layer a build keeps unpacked has no blob: its directory is the only copy of its content, so
//! the store's record must never point at files that a power loss could take away or leave half
//! written. [`plan`] reads the layer's change list (the entries its tar is written from) and lists
//! what to sync:
//!
//! - every regular file the layer upserts, once per inode, except a hard link to a file of a
//!   layer the store already recorded (an incremental COPY links unchanged files from the step's
//!   previous layer): that inode's content was made durable before that layer was recorded, and
//!   nothing writes through it;
//! - every directory with entries the step made: the parent of each changed path and its
//!   ancestors (every directory of an upperdir was created or copied up by this step), each
//!   upserted or opaque directory itself (its mode, owner, xattrs), and the layer's root. This
//!   makes the names durable: new files, the new links to old inodes, whiteouts and symlinks
//!   (which cannot be opened to be fsynced; their inodes are written with the directory entry).
//!
//! [`sync`] fsyncs them on a few threads (an fsync mostly waits for the disk and the journal, and
//! concurrent ones share a journal commit). The order that makes a crash safe
//! (`built::keep_upper`): the files and directories while the layer is still under its temporary
//! name (the snapshot's upperdir), then the rename to `snapshots/layers/<hex>/`, then an fsync of
//! `snapshots/layers/` (the rename itself), then the entry-list blob (fsynced by the store) and
//! the SQLite record. A crash before the record leaves at most a complete layer directory that no
//! record names (found and used by the next build of the same layer, removed by GC otherwise).

use std::collections::{BTreeSet, HashSet};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result};

use crate::oci::change::Change;

/// Threads that fsync at once (at most one per path). An fsync is almost all waiting: for the
/// journal commit and the device's cache flush, which the kernel shares among the fsyncs waiting
/// at the same time. On a 2-core VM with a virtio disk (ext4), 30,000 small files and 6,000
/// directories took 1.6-2.1 s on 32 threads, 0.85 s on 256 (benches/durable.md).
const THREADS: usize = 256;

/// Each thread only opens and fsyncs.
const STACK: usize = 64 << 10;

/// What [`plan`] needs to know about one path of the layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// A regular file: its inode (device, number), and whether its content is already durable (a
    /// hard link to a file of a recorded layer).
    File {
        inode: (u64, u64),
        durable: bool,
    },
    Dir,
    /// A symlink, whiteout, device, fifo or socket: nothing to open; its parent's fsync makes it
    /// durable.
    Other,
    /// Not there (the plan skips it).
    Missing,
}

/// Answers [`Entry`] for paths relative to the layer's root.
pub trait Inspect {
    fn entry(&self, rel: &Path) -> Entry;
}

/// The paths to fsync, relative to the layer's root (`""` is the root). [`sync`] fsyncs the files,
/// then the directories (listed deepest first, fsynced in parallel: all before the rename).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SyncPlan {
    pub files: Vec<PathBuf>,
    pub dirs: Vec<PathBuf>,
}

/// Lists what to fsync so that the layer of `changes` is durable (see the module doc).
pub fn plan(changes: &[Change], fs: &impl Inspect) -> SyncPlan {
    let mut files = Vec::new();
    let mut inodes = HashSet::new();
    let mut dirs = BTreeSet::new();
    dirs.insert(PathBuf::new());
    for c in changes {
        let p = c.path();
        // Every ancestor holds a new entry (or a new directory with one).
        let mut a = p.parent();
        while let Some(d) = a.filter(|d| !d.as_os_str().is_empty()) {
            if !dirs.insert(d.to_path_buf()) {
                break; // its ancestors are in already
            }
            a = d.parent();
        }
        if matches!(c, Change::Delete(_)) {
            continue; // a whiteout: its parent's entry
        }
        match fs.entry(p) {
            Entry::File { inode, durable } => {
                if !durable && inodes.insert(inode) {
                    files.push(p.to_path_buf());
                }
            }
            Entry::Dir => {
                dirs.insert(p.to_path_buf());
            }
            Entry::Other | Entry::Missing => {}
        }
    }
    let mut dirs: Vec<PathBuf> = dirs.into_iter().collect();
    // Deepest first: a directory's entries before the entry naming it.
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    SyncPlan { files, dirs }
}

/// [`Inspect`] of a directory on disk: `root` is the layer (an upperdir), `durable_base` the
/// directory of a layer the store recorded that `root`'s files may be hard links into, laid out as
/// `root` is (an incremental COPY's previous layer).
pub struct DiskInspect<'a> {
    pub root: &'a Path,
    pub durable_base: Option<&'a Path>,
}

impl Inspect for DiskInspect<'_> {
    fn entry(&self, rel: &Path) -> Entry {
        let Ok(meta) = std::fs::symlink_metadata(self.root.join(rel)) else {
            return Entry::Missing;
        };
        let ft = meta.file_type();
        if ft.is_dir() {
            return Entry::Dir;
        }
        if !ft.is_file() {
            return Entry::Other;
        }
        let inode = (meta.dev(), meta.ino());
        let durable = meta.nlink() > 1
            && self.durable_base.is_some_and(|b| {
                std::fs::symlink_metadata(b.join(rel)).is_ok_and(|m| (m.dev(), m.ino()) == inode)
            });
        Entry::File { inode, durable }
    }
}

/// Fsyncs every path of `plan` under `root` on [`THREADS`] threads: files, then directories.
/// Returns the first error, naming the path.
pub fn sync(root: &Path, plan: &SyncPlan) -> Result<()> {
    sync_paths(root, &plan.files, false)?;
    sync_paths(root, &plan.dirs, true)
}

fn sync_paths(root: &Path, paths: &[PathBuf], dirs: bool) -> Result<()> {
    let next = AtomicUsize::new(0);
    let threads = THREADS.min(paths.len());
    let work = || -> Result<()> {
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(rel) = paths.get(i) else {
                return Ok(());
            };
            let path = root.join(rel);
            fsync_path(&path, dirs).inspect_err(|_| {
                // The others stop at their next path.
                next.store(paths.len(), Ordering::Relaxed);
            })?;
        }
    };
    if threads <= 1 {
        return work();
    }
    std::thread::scope(|s| {
        let mut handles = Vec::with_capacity(threads);
        for _ in 0..threads {
            match std::thread::Builder::new()
                .stack_size(STACK)
                .spawn_scoped(s, work)
            {
                Ok(h) => handles.push(h),
                // Fewer threads (a process limit): the ones running do the rest.
                Err(_) if !handles.is_empty() => break,
                Err(e) => return Err(e).context("starting a thread to fsync the layer"),
            }
        }
        let mut first = Ok(());
        for h in handles {
            let r = h
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("an fsync thread panicked")));
            if first.is_ok() {
                first = r;
            }
        }
        first
    })
}

/// Opens `path` (not following a symlink) and fsyncs it.
pub fn fsync_path(path: &Path, dir: bool) -> Result<()> {
    let mut flags = libc::O_NOFOLLOW | libc::O_CLOEXEC;
    if dir {
        flags |= libc::O_DIRECTORY;
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)
        .with_context(|| format!("opening {} to fsync it", path.display()))?;
    f.sync_all()
        .with_context(|| format!("fsyncing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Fake(HashMap<PathBuf, Entry>);

    impl Inspect for Fake {
        fn entry(&self, rel: &Path) -> Entry {
            self.0.get(rel).copied().unwrap_or(Entry::Missing)
        }
    }

    fn file(ino: u64, durable: bool) -> Entry {
        Entry::File {
            inode: (1, ino),
            durable,
        }
    }

    #[test]
    fn plan_lists_written_files_once_and_every_directory_with_new_entries() {
        let fs = Fake(HashMap::from([
            (PathBuf::from("app"), Entry::Dir),
            (PathBuf::from("app/new.js"), file(10, false)),
            (PathBuf::from("app/changed.js"), file(11, false)),
            // An unchanged file an incremental COPY linked from the previous layer.
            (PathBuf::from("app/same.js"), file(12, true)),
            // Two names of one inode the step made (RUN ln): synced once.
            (PathBuf::from("app/lib/a"), file(13, false)),
            (PathBuf::from("app/lib/b"), file(13, false)),
            (PathBuf::from("app/link"), Entry::Other),
            (PathBuf::from("etc/opaque"), Entry::Dir),
        ]));
        let changes = vec![
            Change::Upsert("app".into()),
            Change::Upsert("app/new.js".into()),
            Change::Upsert("app/changed.js".into()),
            Change::Upsert("app/same.js".into()),
            Change::Upsert("app/lib/a".into()),
            Change::Upsert("app/lib/b".into()),
            Change::Upsert("app/link".into()),
            // A copied-up parent that is not itself a change, with a whiteout in it.
            Change::Delete("usr/share/doc/x".into()),
            Change::Opaque("etc/opaque".into()),
        ];
        let p = plan(&changes, &fs);
        let paths = |v: &[&str]| v.iter().map(PathBuf::from).collect::<Vec<_>>();
        assert_eq!(
            p.files,
            paths(&["app/new.js", "app/changed.js", "app/lib/a"])
        );
        let mut dirs = p.dirs.clone();
        dirs.sort();
        assert_eq!(
            dirs,
            paths(&[
                "",
                "app",
                "app/lib",
                "etc",
                "etc/opaque",
                "usr",
                "usr/share",
                "usr/share/doc"
            ])
        );
        // Deepest first, the root last.
        assert_eq!(p.dirs.first(), Some(&PathBuf::from("usr/share/doc")));
        assert_eq!(p.dirs.last(), Some(&PathBuf::new()));
    }

    #[test]
    fn disk_inspect_tells_links_into_the_base_layer_from_other_links() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("base");
        let upper = tmp.path().join("upper");
        std::fs::create_dir_all(base.join("d")).unwrap();
        std::fs::create_dir_all(upper.join("d")).unwrap();
        std::fs::write(base.join("d/same"), b"old").unwrap();
        std::fs::hard_link(base.join("d/same"), upper.join("d/same")).unwrap();
        std::fs::write(upper.join("d/new"), b"new").unwrap();
        // Linked within the layer, not to the base: not durable.
        std::fs::hard_link(upper.join("d/new"), upper.join("d/new2")).unwrap();
        // Same name in the base, another inode (the file changed).
        std::fs::write(base.join("d/changed"), b"v1").unwrap();
        std::fs::write(upper.join("d/changed"), b"v2").unwrap();
        std::os::unix::fs::symlink("new", upper.join("d/sym")).unwrap();
        let fs = DiskInspect {
            root: &upper,
            durable_base: Some(&base),
        };
        let durable = |rel: &str| match fs.entry(Path::new(rel)) {
            Entry::File { durable, .. } => durable,
            other => panic!("{rel}: {other:?}"),
        };
        assert!(durable("d/same"));
        assert!(!durable("d/new"));
        assert!(!durable("d/new2"));
        assert!(!durable("d/changed"));
        assert_eq!(fs.entry(Path::new("d")), Entry::Dir);
        assert_eq!(fs.entry(Path::new("d/sym")), Entry::Other);
        assert_eq!(fs.entry(Path::new("d/gone")), Entry::Missing);
        // Without a base nothing is durable already.
        let no_base = DiskInspect {
            root: &upper,
            durable_base: None,
        };
        assert!(matches!(
            no_base.entry(Path::new("d/same")),
            Entry::File { durable: false, .. }
        ));
        let changes: Vec<Change> = ["d", "d/same", "d/new", "d/new2", "d/changed", "d/sym"]
            .iter()
            .map(|p| Change::Upsert(p.into()))
            .collect();
        let p = plan(&changes, &fs);
        assert_eq!(
            p.files,
            vec![PathBuf::from("d/new"), PathBuf::from("d/changed")]
        );
        // And the real fsyncs of that plan succeed; a missing path is an error naming it.
        sync(&upper, &p).unwrap();
        let bad = SyncPlan {
            files: vec![PathBuf::from("d/gone")],
            dirs: vec![],
        };
        let err = format!("{:#}", sync(&upper, &bad).unwrap_err());
        assert!(err.contains("d/gone"), "{err}");
    }
}
