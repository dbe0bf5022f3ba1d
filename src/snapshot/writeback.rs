//! Early writeback of an upperdir that is going to become a layer.
//!
//! A step's layer is made durable by fsyncing its own files and directories before the store
//! records it (`durable`, called by `built::keep_upper`). With the kernel's default writeback
//! thresholds (10% of memory dirty before background writeback starts, 30 s before dirty data
//! expires) nothing a RUN writes reaches the disk while it runs: the whole layer would be written
//! out by those fsyncs, after the command, while the build waits (a 437 MB layer: about a second
//! here). A RUN is mostly CPU work while the disk idles, so [`Flusher`] starts the writeback of
//! the upperdir's files while the command runs, and [`start_all`] starts it for every file of the
//! layer before it is hashed, so the disk writes while the tar is hashed. The fsyncs then mostly
//! wait for what is still in flight and for the journal.
//!
//! Nothing here makes anything durable or is relied on for it: `sync_file_range(WRITE)` only
//! queues dirty pages for writing and does not wait, and the store still records a layer only
//! after its fsyncs returned (crash safety is unchanged). What it costs: files the command
//! writes and then deletes may be written to disk once.

use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use crate::oci::change::Change;

/// How often the upperdir is walked while the command runs.
const PERIOD: Duration = Duration::from_millis(1000);

/// A walk that meets more entries than this ends the flusher: the walks would cost more than the
/// writeback they save (a step that writes many small files has little data per file).
const MAX_ENTRIES: usize = 20_000;

/// Starts the writeback of one file's dirty pages; does not wait. Errors are ignored: this is
/// only a head start for the fsyncs that follow.
fn start_file(path: &Path) {
    let Ok(f) = std::fs::File::open(path) else {
        return;
    };
    // SAFETY: sync_file_range on a descriptor we own; no memory is passed.
    unsafe {
        libc::sync_file_range(f.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// Starts the writeback of every regular file `changes` upserts under `root` (a RUN's layer's
/// files, before they are hashed), on a thread of its own; returns at once. Nothing for a layer
/// of more than [`MAX_ENTRIES`] entries.
pub fn start_all(root: &Path, changes: &[Change]) {
    if changes.len() > MAX_ENTRIES {
        // Many small files: opening each costs more than the head start gives.
        return;
    }
    let files: Vec<PathBuf> = changes
        .iter()
        .filter_map(|c| match c {
            Change::Upsert(p) => Some(root.join(p)),
            _ => None,
        })
        .collect();
    if files.is_empty() {
        return;
    }
    std::thread::spawn(move || {
        for path in files {
            match std::fs::symlink_metadata(&path) {
                Ok(m) if m.file_type().is_file() && m.size() > 0 => start_file(&path),
                _ => {}
            }
        }
    });
}

/// Walks an upperdir every [`PERIOD`] while a command runs and starts the writeback of each
/// regular file that grew or changed since the last walk. Stopped when dropped.
pub struct Flusher {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Flusher {
    pub fn start(upper: PathBuf) -> Flusher {
        let (tx, rx) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            // (device, inode) -> (size, mtime ns) at the last writeback started.
            let mut seen: std::collections::HashMap<(u64, u64), (u64, i64)> =
                std::collections::HashMap::new();
            while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(PERIOD) {
                if !walk_once(&upper, &mut seen) {
                    return;
                }
            }
        });
        Flusher {
            stop: Some(tx),
            thread: Some(thread),
        }
    }
}

/// One pass; false when the flusher should end (too many entries).
fn walk_once(upper: &Path, seen: &mut std::collections::HashMap<(u64, u64), (u64, i64)>) -> bool {
    let mut entries = 0usize;
    for entry in walkdir::WalkDir::new(upper)
        .follow_links(false)
        .min_depth(1)
    {
        entries += 1;
        if entries > MAX_ENTRIES {
            return false;
        }
        let Ok(entry) = entry else { continue };
        if !entry.file_type().is_file() {
            continue;
        }
        let Ok(meta) = entry.metadata() else { continue };
        if meta.size() == 0 {
            continue;
        }
        let now = (
            meta.size(),
            meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        );
        if seen.insert((meta.dev(), meta.ino()), now) != Some(now) {
            start_file(entry.path());
        }
    }
    true
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.stop = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walk_starts_writeback_once_per_change_and_stops_on_many_entries() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::fs::write(dir.path().join("d/a"), vec![1u8; 10_000]).unwrap();
        std::fs::write(dir.path().join("empty"), b"").unwrap();
        let mut seen = std::collections::HashMap::new();
        assert!(walk_once(dir.path(), &mut seen));
        assert_eq!(seen.len(), 1, "one non-empty regular file");
        let before = seen.clone();
        assert!(walk_once(dir.path(), &mut seen));
        assert_eq!(seen, before);
        std::fs::write(dir.path().join("d/a"), vec![2u8; 20_000]).unwrap();
        assert!(walk_once(dir.path(), &mut seen));
        assert_ne!(seen, before);
        for i in 0..MAX_ENTRIES {
            std::fs::write(dir.path().join(format!("f{i}")), b"").unwrap();
        }
        assert!(!walk_once(dir.path(), &mut seen));
        // Dropping a flusher stops its thread.
        drop(Flusher::start(dir.path().to_path_buf()));
    }
}
