//! snapshot: root filesystems for executions, and what an execution changed.
//!
//! # Layout under the kiln root
//! - `snapshots/layers/<diffid hex>/`: one unpacked layer (an overlay lowerdir, with
//!   overlay-style whiteouts), shared by every image that has it (`ensure_unpacked`);
//!   `layers/.unpack-<pid>-*` while one is being unpacked.
//! - `snapshots/active/<id>/`: one active snapshot: `lock` (flock'ed by the owning process),
//!   `upper/` (unless the upperdir is kept elsewhere: `prepare_with_upper`, a container's
//!   writable layer), `work/`, `merged/` (the overlay mount), and transient `lowerview/`.
//!
//! # API
//! ```ignore
//! snapshot::recover(root)?;                          // at start-up: leftovers of a killed kiln
//! let snapshotter = snapshot::Snapshotter::new(root)?;
//! let lower = snapshotter.ensure_unpacked(&store, &layer_descriptor)?; // by DiffID, once
//! let lowers = snapshotter.image_lowers(&store, &manifest, &config)?; // a whole image
//! // lowers: layer directories, base layer FIRST (image order).
//! let snap = snapshotter.prepare(&lowers, &snapshot::PrepareOptions { volatile: true })?;
//! sandbox::run(&sandbox::ExecSpec::new(snap.merged(), ["sh", "-c", "..."]))?;
//! let changes: Vec<oci::change::Change> = snap.changes()?; // read from snap.merged()/upper()
//! snap.release()?;                                  // or drop: unmount + remove
//! ```
//! `changes()` reads the upperdir (`diff::diff_upper`), self-contained because of the mount
//! options; `changes_by_tree_compare()` compares the lower and merged views instead. Every active snapshot is also registered with `cleanup`, so Ctrl-C/SIGTERM
//! unmounts it; `recover` handles SIGKILL.

pub mod blobs;
pub mod built;
mod copyfs;
pub mod diff;
pub mod durable;
mod layers;
pub mod overlay;
pub mod writeback;

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::oci::change::Change;

/// Options for an active snapshot.
#[derive(Debug, Clone, Default)]
pub struct PrepareOptions {
    /// Mount with `volatile` (no syncs): for throwaway build containers whose upperdir is never
    /// reused after a crash.
    pub volatile: bool,
}

/// Owns `ROOT/snapshots`.
#[derive(Debug, Clone)]
pub struct Snapshotter {
    dir: PathBuf,
}

/// A mounted overlay: `merged()` is the root filesystem for a sandbox.
#[derive(Debug)]
pub struct ActiveSnapshot {
    dir: PathBuf,
    /// `dir/upper`, or a kept upperdir outside it (`prepare_with_upper`).
    upper: PathBuf,
    /// Top-most first (overlay's order).
    lowers: Vec<PathBuf>,
    mounted: bool,
    /// The copy-based snapshotter (rootless, overlay refused): `merged/` is a plain copy of
    /// `lowerview/` (the lowers applied by copying), changes come from comparing the two.
    copy: bool,
    cleanup_key: u64,
    _lock: File,
}

/// Whether snapshots are copies: only in a user namespace whose kernel refuses overlayfs (tried
/// once per process under `snapshots/active/`), or when `KILN_SNAPSHOTTER=copy` asks for it
/// there. Says so once.
fn copy_mode(active: &Path) -> bool {
    static MODE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *MODE.get_or_init(|| {
        if !crate::rootless::in_userns() {
            return false;
        }
        let why = if std::env::var("KILN_SNAPSHOTTER").as_deref() == Ok("copy") {
            "KILN_SNAPSHOTTER=copy".to_string()
        } else {
            match overlay_probe(active) {
                Ok(()) => return false,
                Err(e) => format!("overlayfs is refused in this user namespace ({e})"),
            }
        };
        eprintln!(
            "kiln: note: {why}: snapshots are copies of their layers (slower and larger, same \
             results)"
        );
        true
    })
}

fn overlay_probe(active: &Path) -> io::Result<()> {
    let dir = active.join(format!(".overlay-probe-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let result = (|| {
        let d: Vec<PathBuf> = ["l", "u", "w", "m"].iter().map(|n| dir.join(n)).collect();
        for p in &d {
            std::fs::create_dir_all(p)?;
        }
        let spec = overlay::OverlaySpec {
            lowers: &d[..1],
            upper_work: Some((&d[1], &d[2])),
            volatile: false,
        };
        overlay::mount_overlay(&spec, &d[3])?;
        overlay::unmount(&d[3])
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn random_id() -> String {
    use rand::Rng;
    let n: u64 = rand::thread_rng().gen();
    format!("{n:016x}")
}

fn try_lock(f: &File) -> bool {
    // SAFETY: flock on an fd we own.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

impl Snapshotter {
    /// The snapshotter of the kiln root `root` (creates `snapshots/` if needed).
    pub fn new(root: &Path) -> Result<Snapshotter> {
        let dir = root.join("snapshots");
        for d in ["layers", "active"] {
            std::fs::create_dir_all(dir.join(d))
                .with_context(|| format!("create {}", dir.join(d).display()))?;
        }
        Ok(Snapshotter { dir })
    }

    /// Where unpacked layers live (`layers/<key>`).
    pub fn layers_dir(&self) -> PathBuf {
        self.dir.join("layers")
    }

    /// Mounts an overlay of `lowers` (layer directories, base layer first; may be empty) with a
    /// fresh upperdir.
    pub fn prepare(&self, lowers: &[PathBuf], opts: &PrepareOptions) -> Result<ActiveSnapshot> {
        self.prepare_inner(lowers, opts, None)
    }

    /// Like `prepare`, with the upperdir `upper` (created if missing) kept outside the snapshot:
    /// a container's writable layer, which outlives its runs. Releasing the snapshot (or
    /// `recover` after a killed kiln) removes the rest and leaves `upper` as it is, ready to be
    /// mounted again. It must be on the same filesystem as the root (overlay's workdir rule).
    pub fn prepare_with_upper(
        &self,
        lowers: &[PathBuf],
        opts: &PrepareOptions,
        upper: &Path,
    ) -> Result<ActiveSnapshot> {
        std::fs::create_dir_all(upper).with_context(|| format!("create {}", upper.display()))?;
        self.prepare_inner(lowers, opts, Some(upper))
    }

    fn prepare_inner(
        &self,
        lowers: &[PathBuf],
        opts: &PrepareOptions,
        kept_upper: Option<&Path>,
    ) -> Result<ActiveSnapshot> {
        let dir = self.dir.join("active").join(random_id());
        std::fs::create_dir(&dir).with_context(|| format!("create {}", dir.display()))?;
        // The lock is taken on a file of another name and renamed to `lock` only once held:
        // `recover` (which every kiln command runs) must never see a `lock` that is free because
        // its owner has not taken it yet.
        let lock = File::create(dir.join("lock.new"))
            .and_then(|f| {
                if try_lock(&f) {
                    std::fs::rename(dir.join("lock.new"), dir.join("lock"))?;
                    Ok(f)
                } else {
                    Err(io::Error::other("locked"))
                }
            })
            .with_context(|| format!("lock {}", dir.display()));
        let lock = match lock {
            Ok(l) => l,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        // The layers this snapshot stands on, by directory name: the collector
        // (`store::gc`) leaves a layer listed here in place while the snapshot lives.
        let names: String = lowers
            .iter()
            .filter_map(|l| l.file_name())
            .map(|n| format!("{}\n", n.to_string_lossy()))
            .collect();
        if let Err(e) = std::fs::write(dir.join(crate::store::gc::LOWERS_FILE), names) {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e).with_context(|| format!("write {}", dir.display()));
        }
        let cleanup_dir = dir.clone();
        let cleanup_key = crate::cleanup::register(move || remove_snapshot_dir(&cleanup_dir));
        let mut snap = ActiveSnapshot {
            upper: kept_upper.map_or_else(|| dir.join("upper"), Path::to_path_buf),
            dir,
            lowers: lowers.iter().rev().cloned().collect(),
            mounted: false,
            copy: false,
            cleanup_key,
            _lock: lock,
        };
        let own = if kept_upper.is_some() {
            &["work", "merged"][..]
        } else {
            &["upper", "work", "merged"][..]
        };
        for d in own {
            std::fs::create_dir(snap.dir.join(d))
                .with_context(|| format!("create {}", snap.dir.join(d).display()))?;
        }
        if copy_mode(&self.dir.join("active")) {
            snap.copy = true;
            let view = snap.dir.join("lowerview");
            std::fs::create_dir(&view).with_context(|| format!("create {}", view.display()))?;
            for l in lowers {
                copyfs::apply_layer_dir(l, &view).with_context(|| {
                    format!("copy layer {} into {}", l.display(), view.display())
                })?;
            }
            let merged = snap.merged();
            copyfs::apply_layer_dir(&view, &merged)
                .with_context(|| format!("copy {} into {}", view.display(), merged.display()))?;
            if let Some(kept) = kept_upper {
                copyfs::apply_layer_dir(kept, &merged).with_context(|| {
                    format!("copy {} into {}", kept.display(), merged.display())
                })?;
            }
            snap.mounted = true;
            return Ok(snap);
        }
        if snap.lowers.is_empty() {
            let empty = snap.dir.join("empty");
            std::fs::create_dir(&empty).with_context(|| format!("create {}", empty.display()))?;
            snap.lowers.push(empty);
        }
        let upper = snap.upper();
        let work = snap.dir.join("work");
        let spec = overlay::OverlaySpec {
            lowers: &snap.lowers,
            upper_work: Some((&upper, &work)),
            volatile: opts.volatile,
        };
        overlay::mount_overlay(&spec, &snap.merged()).with_context(|| {
            format!(
                "mount overlay on {} ({} lower layers)",
                snap.merged().display(),
                snap.lowers.len()
            )
        })?;
        snap.mounted = true;
        Ok(snap)
    }
}

impl ActiveSnapshot {
    /// The overlay mount: the execution's root filesystem.
    pub fn merged(&self) -> PathBuf {
        self.dir.join("merged")
    }

    /// The upperdir: what the execution wrote. With the copy-based snapshotter, the merged tree
    /// itself (written directly, compared with the lower view for changes).
    pub fn upper(&self) -> PathBuf {
        if self.copy {
            return self.merged();
        }
        self.upper.clone()
    }

    /// The upperdir is an overlay-form diff (false with the copy-based snapshotter, whose
    /// `upper()` is the whole tree).
    pub fn upper_is_diff(&self) -> bool {
        !self.copy
    }

    /// The lower layer directories, top-most first.
    pub fn lowers(&self) -> &[PathBuf] {
        &self.lowers
    }

    /// What the execution changed, relative to the lower layers, read from the upperdir.
    ///
    /// The upperdir is a self-contained diff by construction: the overlay is mounted with
    /// `redirect_dir=off,metacopy=off` (a kernel without those options fails the mount), so the kernel writes no redirect or
    /// metacopy entries pointing into lower layers, and it refuses `trusted.overlay.*` xattrs set
    /// through the mount. Nothing needs checking first (a check walked the whole upperdir again).
    pub fn changes(&self) -> Result<Vec<Change>> {
        Ok(self.changes_with_source()?.0)
    }

    /// Like [`ActiveSnapshot::changes`], with the directory to read the changed entries from for
    /// the layer: the upperdir, where every upserted path is a plain entry with the metadata the
    /// merged view shows, which spares the overlay's lookups.
    pub fn changes_with_source(&self) -> Result<(Vec<Change>, PathBuf)> {
        if self.copy {
            return Ok((self.changes_by_tree_compare()?, self.merged()));
        }
        let upper = self.upper();
        let changes = self
            .with_lower_view(|lower| diff::diff_upper(&upper, lower))
            .context("diff the snapshot")?;
        Ok((changes, upper))
    }

    /// Compares the lower view with the merged view directly (`diff::diff_trees`), ignoring the
    /// upperdir's overlay metadata.
    pub fn changes_by_tree_compare(&self) -> Result<Vec<Change>> {
        self.with_lower_view(|lower| diff::diff_trees(lower, &self.merged()))
            .context("diff the snapshot trees")
    }

    /// Runs `f` with the merged view of the lower layers: the layer itself when there is one, a
    /// temporary read-only overlay otherwise.
    fn with_lower_view<T>(&self, f: impl FnOnce(&Path) -> io::Result<T>) -> io::Result<T> {
        if self.copy {
            return f(&self.dir.join("lowerview"));
        }
        if self.lowers.len() == 1 {
            return f(&self.lowers[0]);
        }
        let view = self.dir.join("lowerview");
        std::fs::create_dir_all(&view)?;
        let spec = overlay::OverlaySpec {
            lowers: &self.lowers,
            upper_work: None,
            volatile: false,
        };
        overlay::mount_overlay(&spec, &view)?;
        let result = f(&view);
        let unmounted = overlay::unmount(&view);
        let _ = std::fs::remove_dir(&view);
        let value = result?;
        unmounted?;
        Ok(value)
    }

    /// Unmounts the merged view and keeps the rest: the upperdir becomes a plain directory that
    /// may be written directly (the kernel allows changing an upperdir while its overlay is not
    /// mounted, never while it is), and `changes` still reads it. `release` removes it all.
    pub fn unmount_merged(&mut self) -> Result<()> {
        if self.copy {
            return Ok(()); // a plain directory: `upper()` is it
        }
        let merged = self.merged();
        overlay::unmount(&merged).with_context(|| format!("unmount {}", merged.display()))
    }

    /// Unmounts and removes the snapshot (upperdir included).
    pub fn release(mut self) -> Result<()> {
        self.release_inner()
    }

    fn release_inner(&mut self) -> Result<()> {
        if !self.mounted {
            return Ok(());
        }
        self.mounted = false;
        crate::cleanup::unregister(self.cleanup_key);
        if self.copy && self.upper != self.dir.join("upper") {
            self.write_back_kept_upper()?;
        }
        for m in overlay::mounts_under(&self.dir) {
            overlay::unmount(&m).with_context(|| format!("unmount {}", m.display()))?;
        }
        std::fs::remove_dir_all(&self.dir)
            .with_context(|| format!("remove {}", self.dir.display()))?;
        Ok(())
    }
}

impl ActiveSnapshot {
    /// Copy-based snapshotter: the kept upperdir (a container's writable layer) becomes what
    /// this run changed, in overlay form, replacing the old one by renames.
    fn write_back_kept_upper(&self) -> Result<()> {
        let changes = self.changes_by_tree_compare()?;
        let kept = &self.upper;
        let name = kept
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let new = kept.with_file_name(format!("{name}.new"));
        let old = kept.with_file_name(format!("{name}.old"));
        let _ = std::fs::remove_dir_all(&new);
        std::fs::create_dir(&new).with_context(|| format!("create {}", new.display()))?;
        copyfs::write_changes(&changes, &self.merged(), &new)
            .with_context(|| format!("write the changes into {}", new.display()))?;
        let _ = std::fs::remove_dir_all(&old);
        std::fs::rename(kept, &old).with_context(|| format!("rename {}", kept.display()))?;
        std::fs::rename(&new, kept).with_context(|| format!("rename {}", new.display()))?;
        let _ = std::fs::remove_dir_all(&old);
        Ok(())
    }
}

impl Drop for ActiveSnapshot {
    fn drop(&mut self) {
        if self.mounted {
            let _ = self.release_inner();
        } else {
            // Failed half-way through `prepare`.
            crate::cleanup::unregister(self.cleanup_key);
            remove_snapshot_dir(&self.dir);
        }
    }
}

fn remove_snapshot_dir(dir: &Path) {
    for m in overlay::mounts_under(dir) {
        let _ = overlay::unmount(&m);
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Whether the open file `f` is the file now at `path`.
fn same_file(f: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (f.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Removes active snapshots a killed kiln left under `root` (their lock is free): unmounts them
/// and deletes their directories. Snapshots of running kiln processes are left alone. Returns
/// how many were removed.
pub fn recover(root: &Path) -> Result<usize> {
    layers::recover_unpacks(&root.join("snapshots").join("layers"));
    let active = root.join("snapshots").join("active");
    let entries = match std::fs::read_dir(&active) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e).with_context(|| format!("read {}", active.display())),
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let dir = entry.path();
        // Held while the directory is removed, so a second kiln recovering at the same time
        // sees it taken and leaves it to us.
        let (stale, _held) = match File::open(dir.join("lock")) {
            // The lock is ours and still the snapshot's: an owner that is releasing unlinks it
            // before letting go, and that snapshot is gone already.
            Ok(f) if try_lock(&f) && same_file(&f, &dir.join("lock")) => (true, Some(f)),
            Ok(_) => (false, None),
            // No lock file: a prepare that died before taking it, if it is not brand new.
            Err(_) => (
                entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age.as_secs() > 60),
                None,
            ),
        };
        if stale {
            remove_snapshot_dir(&dir);
            removed += 1;
        }
    }
    Ok(removed)
}
