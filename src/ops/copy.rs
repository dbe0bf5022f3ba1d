//! COPY and ADD as file operations from a source tree (the context or a stage's filesystem) into a
//! destination tree (the step's root filesystem), with BuildKit's semantics:
//!
//! - sources are cleaned so they cannot leave their tree; globs match per path component; a
//!   directory source copies its contents; a source symlink is followed (inside its tree);
//! - the destination is a directory when it ends with `/` (or `.`) or when it is one when a
//!   source is copied (sources are copied in turn); otherwise a file source is written to it;
//! - missing parents are created (0755, or the `--chmod` bits less group and other write; owned by
//!   the `--chown` owner);
//! - owners: files from the context become 0:0, files from a stage keep theirs, `--chown` wins;
//!   `--chmod` sets the permission bits of everything copied; mtimes are kept;
//! - destination symlinks are resolved inside the destination root, never outside it;
//! - ADD unpacks local tar archives (plain or compressed) into the destination directory.

use std::collections::HashMap;
use std::fs;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::AtFlags;
use nix::sys::stat::fstatat;
use nix::unistd::linkat;

use anyhow::{anyhow, bail, Context, Result};

use crate::solver::CopyOptions;
use crate::source::fsutil::{clean_rel, join_rel, resolve_in_root, resolve_parent_in_root};
use crate::source::select::{expand_sources, CopySource, ExcludeSet};

/// Copies `sources` (as written in the Dockerfile) from `src` to `dest` (an absolute path in the
/// image, already made absolute against WORKDIR) inside `dest_root`.
pub fn copy(
    src: &CopySource,
    sources: &[String],
    dest_root: &Path,
    dest: &str,
    opts: &CopyOptions,
) -> Result<()> {
    copy_reusing(src, sources, dest_root, dest, opts, None)
}

/// What an incremental COPY builds on: the layer the same step made last time, unpacked, laid
/// out as `dest_root` is (an upperdir written directly), and which source files are unchanged
/// since then.
pub struct Reuse<'a> {
    pub prev_root: &'a Path,
    /// Context-relative paths of the sources whose digest (content, mode, owner) is unchanged.
    pub unchanged: &'a std::collections::HashSet<String>,
    /// The build's SOURCE_DATE_EPOCH: the previous layer's mtimes were clamped to it.
    pub source_date_epoch: Option<i64>,
}

/// [`copy`], with regular files that a full copy would write exactly as the previous layer has
/// them (unchanged source, same size, mode, owner and mtime) hard-linked from that layer instead
/// of written. The layer is immutable and the link's inode is never written through: its
/// metadata is not set again, a later RUN changes it in its own upperdir (overlay copy-up), and
/// the tar writer writes the only name it has in the new layer as a regular file. Everything else
/// (directories, symlinks, changed, added files; removed ones are simply not copied) is written
/// as by a full copy, so the new layer is byte for byte the one a full copy makes.
pub fn copy_reusing(
    src: &CopySource,
    sources: &[String],
    dest_root: &Path,
    dest: &str,
    opts: &CopyOptions,
    reuse: Option<&Reuse>,
) -> Result<()> {
    let expanded = expand_sources(src, sources)?;
    let excludes = ExcludeSet::new(&opts.excludes)?;
    let owner_default = opts.chown.unwrap_or((0, 0));
    let dest_clean = clean_rel(dest);
    let dest_says_dir =
        dest.ends_with('/') || dest.ends_with("/.") || dest == "." || dest_clean.is_empty();
    // Each source is copied in turn, as BuildKit's copy does (several sources are not made to
    // need a directory): a file goes into the destination when that is a directory by then.
    let dest_is_dir = |dest_root: &Path| {
        dest_says_dir
            || resolve_in_root(dest_root, &dest_clean)
                .map(|p| p.is_dir())
                .unwrap_or(false)
    };
    let mut w = Writer {
        src,
        dest_root,
        opts,
        excludes: &excludes,
        owner_default,
        jobs: Vec::new(),
        dir_times: Vec::new(),
        reuse,
        first_links: HashMap::new(),
        links: Vec::new(),
    };
    let mut filled_here: Vec<PathBuf> = Vec::new();
    for rel in &expanded {
        let path = resolve_in_root(src.root, rel)?;
        let meta = fs::symlink_metadata(&path).with_context(|| format!("\"/{rel}\": not found"))?;
        let target_base = if opts.parents {
            join_rel(&dest_clean, &parents_path(sources, rel))
        } else {
            dest_clean.clone()
        };
        if meta.is_dir() {
            let target = if opts.parents {
                target_base
            } else {
                dest_clean.clone()
            };
            let was_empty = resolve_in_root(dest_root, &target)
                .map(|p| fs::read_dir(p).map_or(true, |mut d| d.next().is_none()))
                .unwrap_or(true);
            let dir = w.ensure_dir_path(&target)?;
            if was_empty {
                filled_here.push(dir.clone());
            }
            w.copy_children(&path, rel, "", &dir)?;
            w.flush()?;
            // A destination that was missing or empty gets the (last) source directory's
            // times, not its mode or owner, as in BuildKit (checked with docker-ref). BuildKit
            // sets them on a destination that has entries too, but its layer then records the
            // directory only if entries in it changed, and kiln's never records a directory
            // for its entries' sake alone, so there it keeps its own.
            if filled_here.contains(&dir) {
                w.set_times(&dir, &meta)?;
            }
        } else if opts.unpack_archives
            && meta.is_file()
            && crate::source::archive::is_local_archive(&path)
        {
            // `--chmod` is for copied files: an unpacked archive's directory is made 0755.
            let dir = ensure_dir_path(dest_root, &dest_clean, owner_default, 0o755)?;
            crate::source::archive::unpack_file(&path, &dir, opts.chown)?;
        } else {
            let name = rel.rsplit('/').next().unwrap_or(rel);
            let target = if opts.parents {
                target_base
            } else if dest_is_dir(dest_root) {
                join_rel(&dest_clean, name)
            } else {
                dest_clean.clone()
            };
            let (parent_rel, file_name) = match target.rfind('/') {
                Some(i) => (&target[..i], &target[i + 1..]),
                None => ("", target.as_str()),
            };
            let parent = w.ensure_dir_path(parent_rel)?;
            let mut dest_path = parent.join(file_name);
            // A symlink already at the destination is followed, inside the root, and the file
            // written where it points (BuildKit's copy does the same).
            if fs::symlink_metadata(&dest_path).is_ok_and(|m| m.file_type().is_symlink()) {
                dest_path = resolve_in_root(dest_root, &target)?;
            }
            w.copy_entry(&path, &meta, &dest_path)?;
        }
    }
    Ok(())
}

/// Makes sure the directory `rel` (relative to `root`) exists, creating missing parents with
/// `mode` and `owner`, following existing symlinks inside the root; returns its resolved path.
/// Makes sure the directory `dest` (an absolute path in the image) exists under `root`, its
/// missing parts created with `owner` and `mode`; the directory's path on the host.
pub fn ensure_dir_in_root(
    root: &Path,
    dest: &str,
    owner: (u32, u32),
    mode: u32,
) -> Result<PathBuf> {
    ensure_dir_path(root, &clean_rel(dest), owner, mode)
}

fn ensure_dir_path(root: &Path, rel: &str, owner: (u32, u32), mode: u32) -> Result<PathBuf> {
    let mut current = String::new();
    for comp in rel.split('/').filter(|c| !c.is_empty()) {
        current = join_rel(&current, comp);
        let (parent, name) = resolve_parent_in_root(root, &current)?;
        let name = name.ok_or_else(|| anyhow!("empty path component"))?;
        let path = parent.join(&name);
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => {
                let resolved = resolve_in_root(root, &current)?;
                if !resolved.is_dir() {
                    fs::create_dir_all(&resolved)
                        .with_context(|| format!("creating /{current} in the image"))?;
                }
            }
            Ok(_) => bail!("cannot copy into /{current}: it exists and is not a directory"),
            Err(_) => {
                fs::create_dir(&path)
                    .with_context(|| format!("creating /{current} in the image"))?;
                fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
                let (uid, gid) = owner;
                std::os::unix::fs::lchown(&path, Some(uid), Some(gid))?;
            }
        }
    }
    resolve_in_root(root, rel)
}

/// For a COPY whose sources are all directories (their contents go into `dest`): when the
/// destination directory is missing or empty in `root` (the step's overlay), makes it exist
/// there, so that the overlay has copied it and its parents up with their metadata, and returns
/// its path relative to the root, symlinks resolved. Nothing the copy then writes can meet an
/// entry of the layers below, so it can be written straight into the upperdir, without the
/// overlay's per-file cost. `None` when the destination holds something already.
pub fn claim_fresh_directory(
    root: &Path,
    dest: &str,
    owner: (u32, u32),
    created_dir_mode: u32,
) -> Result<Option<String>> {
    let rel = clean_rel(dest);
    if rel.is_empty() {
        return Ok(None);
    }
    let resolved = resolve_in_root(root, &rel)?;
    match fs::symlink_metadata(&resolved) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            ensure_dir_path(root, &rel, owner, created_dir_mode)?;
        }
        Ok(m) if m.is_dir() => {
            let empty = fs::read_dir(&resolved)
                .with_context(|| format!("listing /{rel} in the image"))?
                .next()
                .is_none();
            if !empty {
                return Ok(None);
            }
            // Setting the owner it already has changes nothing but makes the overlay copy the
            // directory up, so the upperdir has it with its metadata.
            std::os::unix::fs::lchown(&resolved, Some(m.uid()), Some(m.gid()))
                .with_context(|| format!("preparing /{rel} in the image"))?;
        }
        _ => return Ok(None),
    }
    let resolved = resolve_in_root(root, &rel)?;
    Ok(resolved
        .strip_prefix(root)
        .ok()
        .map(|p| p.to_string_lossy().into_owned()))
}

/// `--parents`: the path kept under the destination, everything after a `/./` pivot in the
/// source pattern, or the whole relative path.
fn parents_path(sources: &[String], rel: &str) -> String {
    for s in sources {
        if let Some(i) = s.find("/./") {
            let prefix = clean_rel(&s[..i]);
            if let Some(rest) = rel.strip_prefix(&format!("{prefix}/")) {
                return rest.to_string();
            }
        }
    }
    rel.to_string()
}

/// How many threads copy files.
const COPY_THREADS: usize = 2;

/// A queued file copy: source, its metadata, destination.
type FileJob = (PathBuf, fs::Metadata, PathBuf);

struct Writer<'a> {
    src: &'a CopySource<'a>,
    dest_root: &'a Path,
    opts: &'a CopyOptions,
    excludes: &'a ExcludeSet,
    owner_default: (u32, u32),
    jobs: Vec<FileJob>,
    dir_times: Vec<(PathBuf, fs::Metadata)>,
    reuse: Option<&'a Reuse<'a>>,
    /// Hard links in the copied trees stay hard links, as in BuildKit's copy: the first
    /// destination of each multiply linked source inode (device, inode) ...
    first_links: HashMap<(u64, u64), PathBuf>,
    /// ... and the later ones, linked to it once the files are written: (first, later).
    links: Vec<(PathBuf, PathBuf)>,
}

impl Writer<'_> {
    /// Makes sure the directory `rel` (relative to the destination root) exists: see
    /// [`ensure_dir_path`].
    fn ensure_dir_path(&mut self, rel: &str) -> Result<PathBuf> {
        ensure_dir_path(
            self.dest_root,
            rel,
            self.owner_default,
            self.opts.created_dir_mode(),
        )
    }

    /// Copies the children of the source directory `dir` into the existing directory `target`.
    fn copy_children(
        &mut self,
        dir: &Path,
        rel: &str,
        in_source: &str,
        target: &Path,
    ) -> Result<()> {
        // Each child is stat'ed relative to the listed directory (`DirEntry::metadata`: one
        // path component to look up, not the whole path).
        let mut children: Vec<(std::ffi::OsString, PathBuf, fs::Metadata)> = Vec::new();
        for e in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
            let e = e.with_context(|| format!("listing {}", dir.display()))?;
            let meta = e
                .metadata()
                .with_context(|| format!("reading {}", e.path().display()))?;
            children.push((e.file_name(), e.path(), meta));
        }
        children.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, child, meta) in children {
            let name_str = name.to_string_lossy();
            let child_rel = join_rel(rel, &name_str);
            let child_in_source = join_rel(in_source, &name_str);
            // `--exclude` leaves out everything below what it matches; `.dockerignore` may
            // re-include a path below an ignored directory.
            if self.excludes.is_excluded(&child_in_source) {
                continue;
            }
            let excluded = self.src.filter.is_excluded(&child_rel);
            if excluded && (!meta.is_dir() || self.src.filter.can_prune_dir(&child_rel)) {
                continue;
            }
            let dest = target.join(&name);
            if meta.is_dir() {
                let dest_dir = self.ensure_child_dir(&dest, &meta, excluded)?;
                self.copy_children(&child, &child_rel, &child_in_source, &dest_dir)?;
                if !excluded {
                    self.dir_times.push((dest_dir, meta));
                }
            } else if !excluded {
                // (Not when building on a previous layer: its files are links already.)
                if meta.is_file() && meta.nlink() > 1 && self.reuse.is_none() {
                    match self.first_links.entry((meta.dev(), meta.ino())) {
                        std::collections::hash_map::Entry::Occupied(first) => {
                            self.links.push((first.get().clone(), dest));
                            continue;
                        }
                        std::collections::hash_map::Entry::Vacant(v) => {
                            v.insert(dest.clone());
                        }
                    }
                }
                self.jobs.push((child, meta, dest));
            }
        }
        Ok(())
    }

    /// Copies the files queued by `copy_children` on `COPY_THREADS` threads (creating inodes is
    /// most of a big COPY's time), then sets directory times, children before parents, since
    /// creating entries changed them.
    fn flush(&mut self) -> Result<()> {
        let jobs = std::mem::take(&mut self.jobs);
        if !jobs.is_empty() {
            let threads = COPY_THREADS.min(jobs.len());
            let chunk = jobs.len().div_ceil(threads);
            let this = &*self;
            std::thread::scope(|scope| -> Result<()> {
                let handles: Vec<_> = jobs
                    .chunks(chunk)
                    .map(|slice| {
                        scope.spawn(move || -> Result<()> {
                            let mut dirs = LinkDirs::default();
                            for (src, meta, dest) in slice {
                                this.copy_file(src, meta, dest, &mut dirs)?;
                            }
                            Ok(())
                        })
                    })
                    .collect();
                for h in handles {
                    h.join().map_err(|_| anyhow!("a copy thread panicked"))??;
                }
                Ok(())
            })?;
        }
        for (first, dest) in std::mem::take(&mut self.links) {
            self.remove_existing(&dest)?;
            fs::hard_link(&first, &dest)
                .with_context(|| format!("linking {}", display_in_root(self.dest_root, &dest)))?;
        }
        for (dir, meta) in std::mem::take(&mut self.dir_times) {
            self.set_times(&dir, &meta)?;
        }
        Ok(())
    }

    /// A directory inside a copied tree: kept when it exists, created with the source's metadata
    /// otherwise. Anything else in its place (a file, a symlink, even one to a directory) fails
    /// the copy, as BuildKit's does ("cannot copy to non-directory"); only the destination
    /// itself is followed through symlinks.
    fn ensure_child_dir(
        &mut self,
        dest: &Path,
        meta: &fs::Metadata,
        excluded: bool,
    ) -> Result<PathBuf> {
        // Usually the destination is new: creating it first saves a lookup through the overlay.
        match fs::create_dir(dest) {
            Ok(()) => return self.set_up_new_dir(dest, meta, excluded),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("creating {}", dest.display())),
        }
        match fs::symlink_metadata(dest) {
            Ok(m) if m.is_dir() => Ok(dest.to_path_buf()),
            Ok(m) => bail!(
                "cannot copy to non-directory: {} is {} in the image, the source has a directory there",
                display_in_root(self.dest_root, dest),
                if m.file_type().is_symlink() { "a symlink" } else { "a file" }
            ),
            Err(_) => self.make_dir(dest, meta, excluded),
        }
    }

    fn make_dir(&mut self, dest: &Path, meta: &fs::Metadata, excluded: bool) -> Result<PathBuf> {
        fs::create_dir(dest).with_context(|| format!("creating {}", dest.display()))?;
        self.set_up_new_dir(dest, meta, excluded)
    }

    fn set_up_new_dir(&self, dest: &Path, meta: &fs::Metadata, excluded: bool) -> Result<PathBuf> {
        let mode = if excluded {
            0o755
        } else {
            self.opts.mode_for(meta.mode(), meta.is_dir())
        };
        self.set_owner(dest, meta)?;
        fs::set_permissions(dest, fs::Permissions::from_mode(mode))?;
        Ok(dest.to_path_buf())
    }

    fn owner_for(&self, meta: &fs::Metadata) -> (u32, u32) {
        match self.opts.chown {
            Some(o) => o,
            None if self.src.from_context => (0, 0),
            None => (meta.uid(), meta.gid()),
        }
    }

    fn set_owner(&self, path: &Path, meta: &fs::Metadata) -> Result<()> {
        let (uid, gid) = self.owner_for(meta);
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))
            .with_context(|| format!("chown {}", path.display()))
    }

    fn set_times(&self, path: &Path, meta: &fs::Metadata) -> Result<()> {
        let ts = nix::sys::time::TimeSpec::new(meta.mtime(), meta.mtime_nsec());
        nix::sys::stat::utimensat(
            None,
            path,
            &ts,
            &ts,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .with_context(|| format!("setting times of {}", path.display()))
    }

    /// Copies one non-directory entry (file, symlink, device, fifo) to `dest`, replacing what is
    /// there unless it is a directory. The destination itself is never followed.
    fn copy_entry(&mut self, src: &Path, meta: &fs::Metadata, dest: &Path) -> Result<()> {
        if meta.is_dir() {
            let dir = self.ensure_child_dir(dest, meta, false)?;
            let rel = src
                .strip_prefix(self.src.root)
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            self.copy_children(src, &rel, "", &dir)?;
            self.flush()?;
            return self.set_times(&dir, meta);
        }
        self.copy_file(src, meta, dest, &mut LinkDirs::default())
    }

    /// Copies one non-directory entry; safe to run for different destinations at once.
    fn copy_file(
        &self,
        src: &Path,
        meta: &fs::Metadata,
        dest: &Path,
        dirs: &mut LinkDirs,
    ) -> Result<()> {
        let ft = meta.file_type();
        if ft.is_file() {
            return self.copy_regular_file(src, meta, dest, dirs);
        }
        self.remove_existing(dest)?;
        if ft.is_symlink() {
            let target = fs::read_link(src)?;
            std::os::unix::fs::symlink(&target, dest)
                .with_context(|| format!("creating link {}", dest.display()))?;
        } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
            let kind = if ft.is_char_device() {
                nix::sys::stat::SFlag::S_IFCHR
            } else if ft.is_block_device() {
                nix::sys::stat::SFlag::S_IFBLK
            } else {
                nix::sys::stat::SFlag::S_IFIFO
            };
            nix::sys::stat::mknod(
                dest,
                kind,
                nix::sys::stat::Mode::from_bits_truncate(meta.mode() & 0o7777),
                meta.rdev(),
            )
            .with_context(|| format!("creating {}", dest.display()))?;
        } else {
            return Ok(()); // sockets are not copied
        }
        self.set_owner(dest, meta)?;
        if !ft.is_symlink() {
            let mode = self.opts.mode_for(meta.mode(), meta.is_dir());
            fs::set_permissions(dest, fs::Permissions::from_mode(mode))?;
        }
        self.set_times(dest, meta)
    }
    /// Clears the way for a new entry at `dest`: a file or symlink there is removed, a directory
    /// is an error (BuildKit's rule), nothing there is fine.
    fn remove_existing(&self, dest: &Path) -> Result<()> {
        match fs::symlink_metadata(dest) {
            Ok(m) if m.is_dir() => bail!(
                "cannot replace directory {} with a file",
                display_in_root(self.dest_root, dest)
            ),
            Ok(_) => fs::remove_file(dest).with_context(|| format!("replacing {}", dest.display())),
            Err(_) => Ok(()),
        }
    }

    /// A regular file: created exclusively (the common case, a fresh destination, costs no
    /// lookup first; an existing entry is replaced as `remove_existing` says), its data copied,
    /// then owner, mode and times set through the open descriptor. Every path-based call
    /// resolves the destination through the overlay again, which is most of a big COPY's time.
    fn copy_regular_file(
        &self,
        src: &Path,
        meta: &fs::Metadata,
        dest: &Path,
        dirs: &mut LinkDirs,
    ) -> Result<()> {
        if let Some(reuse) = self.reuse {
            if self.link_previous(reuse, src, meta, dest, dirs)? {
                return Ok(());
            }
        }
        let open_new = || {
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags_nofollow()
                .open(dest)
        };
        let mut input =
            fs::File::open(src).with_context(|| format!("reading {}", src.display()))?;
        let mut output = match open_new() {
            Ok(f) => Ok(f),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                self.remove_existing(dest)?;
                open_new()
            }
            Err(e) => Err(e),
        }
        .with_context(|| format!("writing {}", display_in_root(self.dest_root, dest)))?;
        copy_data(&mut input, &mut output, meta.len())
            .with_context(|| format!("copying {}", src.display()))?;
        let (uid, gid) = self.owner_for(meta);
        std::os::unix::fs::fchown(&output, Some(uid), Some(gid))
            .with_context(|| format!("chown {}", dest.display()))?;
        // After the chown, which clears set-id bits.
        let mode = self.opts.mode_for(meta.mode(), meta.is_dir());
        output
            .set_permissions(fs::Permissions::from_mode(mode))
            .with_context(|| format!("chmod {}", dest.display()))?;
        let ts = nix::sys::time::TimeSpec::new(meta.mtime(), meta.mtime_nsec());
        nix::sys::stat::futimens(std::os::fd::AsRawFd::as_raw_fd(&output), &ts, &ts)
            .with_context(|| format!("setting times of {}", dest.display()))
    }
}

impl Writer<'_> {
    /// Hard-links the previous layer's file for `dest` when it is exactly what copying `src`
    /// would write; false when it is not (or cannot be linked), and the file is copied. The
    /// previous file is stat'ed and linked by name, relative to descriptors of the two parent
    /// directories (`dirs`, kept while consecutive files share them), not by whole paths.
    fn link_previous(
        &self,
        reuse: &Reuse,
        src: &Path,
        meta: &fs::Metadata,
        dest: &Path,
        dirs: &mut LinkDirs,
    ) -> Result<bool> {
        let (Ok(src_rel), Ok(dest_rel)) = (
            src.strip_prefix(self.src.root),
            dest.strip_prefix(self.dest_root),
        ) else {
            return Ok(false);
        };
        if !reuse.unchanged.contains(src_rel.to_string_lossy().as_ref()) {
            return Ok(false);
        }
        let (Some(dest_dir), Some(name)) = (dest.parent(), dest.file_name()) else {
            return Ok(false);
        };
        let prev = reuse.prev_root.join(dest_rel);
        let Some(prev_dir) = prev.parent() else {
            return Ok(false);
        };
        let Some(prev_fd) = LinkDirs::fd(&mut dirs.prev, prev_dir) else {
            return Ok(false);
        };
        let Ok(pm) = fstatat(Some(prev_fd), name, AtFlags::AT_SYMLINK_NOFOLLOW) else {
            return Ok(false);
        };
        // The mtime a full copy ends with: the source's, clamped as the layer is.
        let mtime = match reuse.source_date_epoch {
            Some(epoch) if meta.mtime() > epoch => (epoch, 0),
            _ => (meta.mtime(), meta.mtime_nsec()),
        };
        let mode = self.opts.mode_for(meta.mode(), meta.is_dir());
        let same = pm.st_mode & libc::S_IFMT == libc::S_IFREG
            && pm.st_size as u64 == meta.len()
            && (pm.st_mtime, pm.st_mtime_nsec) == mtime
            && pm.st_mode & 0o7777 == mode
            && (pm.st_uid, pm.st_gid) == self.owner_for(meta)
            && crate::snapshot::diff::xattrs(&prev).is_ok_and(|x| x.is_empty());
        if !same {
            return Ok(false);
        }
        let Some(dest_fd) = LinkDirs::fd(&mut dirs.dest, dest_dir) else {
            return Ok(false);
        };
        let link = || linkat(Some(prev_fd), name, Some(dest_fd), name, AtFlags::empty());
        match link() {
            Ok(()) => Ok(true),
            Err(nix::errno::Errno::EEXIST) => {
                self.remove_existing(dest)?;
                Ok(link().is_ok())
            }
            // Another filesystem, too many links: a plain copy.
            Err(_) => Ok(false),
        }
    }
}

/// A copy thread's descriptors of the directories its last linked file was in: that file's
/// directory in the previous layer and in the destination.
#[derive(Default)]
struct LinkDirs {
    prev: Option<(PathBuf, fs::File)>,
    dest: Option<(PathBuf, fs::File)>,
}

impl LinkDirs {
    /// The descriptor of `dir`, opened unless `slot` already holds it; None when it cannot be
    /// opened (the file is then copied).
    fn fd(slot: &mut Option<(PathBuf, fs::File)>, dir: &Path) -> Option<RawFd> {
        if slot.as_ref().map(|(p, _)| p.as_path()) != Some(dir) {
            let f = fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECTORY)
                .open(dir)
                .ok()?;
            *slot = Some((dir.to_path_buf(), f));
        }
        slot.as_ref().map(|(_, f)| f.as_raw_fd())
    }
}

/// Files up to this size are copied through a per-thread buffer (two syscalls); bigger ones
/// through `std::io::copy` (copy_file_range/sendfile in the kernel).
const SMALL_FILE: u64 = 256 * 1024;

/// Copies a file's data. Small files: read into a reused buffer until the size `stat` gave is
/// reached (a short read at that size is the end; a file that grew is read to its new end).
fn copy_data(input: &mut fs::File, output: &mut fs::File, size: u64) -> std::io::Result<()> {
    use std::io::{Read, Write};
    if size > SMALL_FILE {
        std::io::copy(input, output)?;
        return Ok(());
    }
    thread_local! {
        static BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; SMALL_FILE as usize + 1]);
    }
    BUF.with(|buf| {
        let mut buf = buf.borrow_mut();
        let mut total = 0u64;
        loop {
            let n = match input.read(&mut buf[..]) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if n == 0 {
                return Ok(());
            }
            output.write_all(&buf[..n])?;
            total += n as u64;
            if n < buf.len() && total >= size {
                return Ok(());
            }
        }
    })
}

trait NoFollow {
    fn custom_flags_nofollow(&mut self) -> &mut Self;
}

impl NoFollow for fs::OpenOptions {
    fn custom_flags_nofollow(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_NOFOLLOW)
    }
}

fn display_in_root(root: &Path, path: &Path) -> String {
    match path.strip_prefix(root) {
        Ok(rel) => format!("/{}", rel.display()),
        Err(_) => path.display().to_string(),
    }
}

/// `mkdir -p` of an absolute image path inside `root` (WORKDIR): symlinks resolved inside the
/// root, created directories 0755 and owned by `owner` (root when `None`).
/// The path's components are walked as written, as `mkdir -p` (BuildKit's) does: in
/// `/a/b/../c` both `/a/b` and `/a/c` are made.
pub fn mkdir_in_root(root: &Path, path: &str, owner: Option<(u32, u32)>) -> Result<()> {
    let owner = owner.unwrap_or((0, 0));
    let mut current = String::new();
    for comp in path.split('/') {
        match comp {
            "" | "." => {}
            ".." => {
                if !current.is_empty() {
                    ensure_dir_path(root, &current, owner, 0o755)?;
                }
                current = match current.rfind('/') {
                    Some(i) => current[..i].to_string(),
                    None => String::new(),
                };
            }
            c => current = join_rel(&current, c),
        }
    }
    ensure_dir_path(root, &current, owner, 0o755)?;
    Ok(())
}

/// Writes a file at an absolute image path inside `root` (here-documents, downloads), creating
/// parents, replacing what is there (never following a symlink at the destination).
pub fn write_file_in_root(
    root: &Path,
    path: &str,
    data: &[u8],
    mode: u32,
    owner: (u32, u32),
) -> Result<()> {
    write_file_in_root_at(root, path, data, mode, owner, None)
}

/// [`write_file_in_root`], with the file's mtime (and atime) set to `mtime` seconds since the
/// epoch when given (an ADD of a URL: the server's `Last-Modified`).
pub fn write_file_in_root_at(
    root: &Path,
    path: &str,
    data: &[u8],
    mode: u32,
    owner: (u32, u32),
    mtime: Option<i64>,
) -> Result<()> {
    let rel = clean_rel(path);
    let (parent_rel, name) = match rel.rfind('/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => ("", rel.as_str()),
    };
    if name.is_empty() {
        bail!("cannot write a file at {path}");
    }
    let parent = ensure_dir_path(root, parent_rel, owner, 0o755)?;
    let dest = parent.join(name);
    match fs::symlink_metadata(&dest) {
        Ok(m) if m.is_dir() => bail!("cannot replace directory {path} with a file"),
        Ok(_) => fs::remove_file(&dest)?,
        Err(_) => {}
    }
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags_nofollow()
        .open(&dest)
        .with_context(|| format!("writing {path}"))?;
    std::io::Write::write_all(&mut f, data)?;
    if let Some(t) = mtime {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(t.max(0) as u64);
        f.set_times(fs::FileTimes::new().set_modified(at).set_accessed(at))
            .with_context(|| format!("setting the time of {path}"))?;
    }
    std::os::unix::fs::lchown(&dest, Some(owner.0), Some(owner.1))?;
    fs::set_permissions(&dest, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Resolves a `--chown` value (`user`, `uid`, `user:group`, `uid:gid`) through the image's
/// /etc/passwd and /etc/group. A user name without a group takes that user's primary group from
/// /etc/passwd; a numeric uid without a group uses the same number as the gid (both as
/// BuildKit). A name the image lacks is not an error, as in BuildKit: a missing user is uid 0,
/// a missing group keeps the gid the user gave; the second value names what was missing (for a
/// warning).
pub fn resolve_chown(image_root: &Path, spec: &str) -> Result<((u32, u32), Vec<String>)> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let mut missing = Vec::new();
    let (uid, primary_gid) = match user.parse::<u32>() {
        Ok(n) => (n, n),
        Err(_) => lookup_passwd(image_root, user)
            .with_context(|| format!("--chown={spec}"))?
            .unwrap_or_else(|| {
                missing.push(format!("user {user:?} is not in the image's /etc/passwd"));
                (0, 0)
            }),
    };
    let gid = match group {
        None => primary_gid,
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => lookup_id(image_root, "etc/group", g)
                .with_context(|| format!("--chown={spec}"))?
                .unwrap_or_else(|| {
                    missing.push(format!("group {g:?} is not in the image's /etc/group"));
                    uid
                }),
        },
    };
    Ok(((uid, gid), missing))
}

/// A user's uid and primary gid from the image's /etc/passwd; `None` when the file or the user
/// is missing.
fn lookup_passwd(image_root: &Path, name: &str) -> Result<Option<(u32, u32)>> {
    let Ok(path) = resolve_in_root(image_root, "etc/passwd") else {
        return Ok(None);
    };
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).context("reading /etc/passwd"),
    };
    for line in text.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() >= 4 && fields[0] == name {
            let id = |f: &str| {
                f.parse::<u32>()
                    .with_context(|| format!("/etc/passwd: bad id for {name}"))
            };
            return Ok(Some((id(fields[2])?, id(fields[3])?)));
        }
    }
    Ok(None)
}

/// Finds `name` in a passwd- or group-format file of the image and returns its third field;
/// `None` when the file or the name is missing.
pub(super) fn lookup_id(image_root: &Path, file: &str, name: &str) -> Result<Option<u32>> {
    let Ok(path) = resolve_in_root(image_root, file) else {
        return Ok(None);
    };
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading /{file}")),
    };
    for line in text.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() >= 3 && fields[0] == name {
            return fields[2]
                .parse()
                .map(Some)
                .with_context(|| format!("/{file}: bad id for {name}"));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::fsutil::NoFilter;
    use std::os::unix::fs::symlink;

    struct Fixture {
        _dir: tempfile::TempDir,
        ctx: PathBuf,
        img: PathBuf,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let ctx = dir.path().join("ctx");
        let img = dir.path().join("img");
        for d in ["src/sub", "docs"] {
            fs::create_dir_all(ctx.join(d)).unwrap();
        }
        fs::write(ctx.join("src/a.js"), "a").unwrap();
        fs::write(ctx.join("src/b.txt"), "b").unwrap();
        fs::write(ctx.join("src/sub/c.js"), "c").unwrap();
        fs::write(ctx.join("docs/readme"), "r").unwrap();
        fs::write(ctx.join("top"), "t").unwrap();
        fs::create_dir_all(img.join("etc")).unwrap();
        fs::write(
            img.join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
        )
        .unwrap();
        fs::write(img.join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        Fixture {
            _dir: dir,
            ctx,
            img,
        }
    }

    fn run(f: &Fixture, sources: &[&str], dest: &str, opts: CopyOptions) -> Result<()> {
        let src = CopySource {
            root: &f.ctx,
            filter: &NoFilter,
            from_context: true,
        };
        let sources: Vec<String> = sources.iter().map(|s| s.to_string()).collect();
        copy(&src, &sources, &f.img, dest, &opts)
    }

    #[test]
    fn directory_sources_copy_their_contents() {
        let f = fixture();
        run(&f, &["src"], "/app", CopyOptions::default()).unwrap();
        assert_eq!(fs::read(f.img.join("app/a.js")).unwrap(), b"a");
        assert_eq!(fs::read(f.img.join("app/sub/c.js")).unwrap(), b"c");
        assert!(!f.img.join("app/src").exists());

        // A new or empty destination takes the source directory's mtime (not its mode), as
        // BuildKit's copy does; one with entries keeps its own.
        use std::os::unix::fs::PermissionsExt;
        let old = fs::FileTimes::new()
            .set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000));
        fs::File::open(f.ctx.join("docs"))
            .unwrap()
            .set_times(old)
            .unwrap();
        fs::set_permissions(f.ctx.join("docs"), fs::Permissions::from_mode(0o700)).unwrap();
        for d in ["empty", "full"] {
            fs::create_dir(f.img.join(d)).unwrap();
            fs::set_permissions(f.img.join(d), fs::Permissions::from_mode(0o711)).unwrap();
        }
        fs::write(f.img.join("full/x"), "x").unwrap();
        for (dest, mode, takes) in [
            ("/new", 0o755, true),
            ("/empty", 0o711, true),
            ("/full", 0o711, false),
        ] {
            run(&f, &["docs"], dest, CopyOptions::default()).unwrap();
            let m = fs::metadata(f.img.join(&dest[1..])).unwrap();
            assert_eq!(m.mode() & 0o7777, mode, "{dest}");
            assert_eq!(m.mtime() == 1_600_000_000, takes, "{dest}");
        }
    }

    #[test]
    fn file_to_file_and_file_into_dir() {
        let f = fixture();
        run(&f, &["top"], "/renamed", CopyOptions::default()).unwrap();
        assert_eq!(fs::read(f.img.join("renamed")).unwrap(), b"t");
        run(&f, &["top"], "/dir/", CopyOptions::default()).unwrap();
        assert_eq!(fs::read(f.img.join("dir/top")).unwrap(), b"t");
        run(
            &f,
            &["top", "docs/readme"],
            "/multi",
            CopyOptions::default(),
        )
        .unwrap();
        // Sources are copied in turn to a path that is not a directory: the last one wins, as
        // in BuildKit (no "must be a directory" rule).
        assert_eq!(fs::read(f.img.join("multi")).unwrap(), b"r");
        fs::create_dir(f.img.join("multidir")).unwrap();
        run(
            &f,
            &["top", "docs/readme"],
            "/multidir",
            CopyOptions::default(),
        )
        .unwrap();
        assert!(f.img.join("multidir/top").is_file() && f.img.join("multidir/readme").is_file());
    }

    #[test]
    fn globs_and_excludes() {
        let f = fixture();
        run(&f, &["src/*.js"], "/g/", CopyOptions::default()).unwrap();
        assert!(f.img.join("g/a.js").exists());
        assert!(!f.img.join("g/b.txt").exists());
        let opts = CopyOptions {
            excludes: vec!["*.txt".into()],
            ..Default::default()
        };
        run(&f, &["src"], "/e", opts).unwrap();
        assert!(f.img.join("e/a.js").exists() && f.img.join("e/sub/c.js").exists());
        assert!(!f.img.join("e/b.txt").exists());
        // A pattern that matches nothing is fine; a missing literal source is not.
        run(&f, &["nothing*"], "/n/", CopyOptions::default()).unwrap();
        let err = run(&f, &["missing.txt"], "/n/", CopyOptions::default()).unwrap_err();
        assert!(
            err.to_string().contains("\"/missing.txt\": not found"),
            "{err}"
        );
    }

    #[test]
    fn sources_cannot_leave_the_context() {
        let f = fixture();
        fs::write(f.ctx.parent().unwrap().join("outside"), "secret").unwrap();
        assert!(run(&f, &["../outside"], "/x", CopyOptions::default()).is_err());
        symlink("../outside", f.ctx.join("link")).unwrap();
        assert!(run(&f, &["link"], "/x", CopyOptions::default()).is_err());
    }

    #[test]
    fn destination_symlinks_stay_in_the_root() {
        let f = fixture();
        let outside = f.img.parent().unwrap().join("host-dir");
        fs::create_dir_all(&outside).unwrap();
        symlink(&outside, f.img.join("evil")).unwrap();
        run(&f, &["top"], "/evil/", CopyOptions::default()).unwrap();
        assert!(
            !outside.join("top").exists(),
            "followed a symlink out of the root"
        );
        assert!(f
            .img
            .join(outside.strip_prefix("/").unwrap())
            .join("top")
            .exists());
        // A file at the destination that is a symlink is written through, as BuildKit does,
        // but where the link points inside the root, never to the host path it names.
        let victim = f.img.parent().unwrap().join("victim");
        fs::write(&victim, "keep").unwrap();
        symlink(&victim, f.img.join("link-file")).unwrap();
        run(&f, &["top"], "/link-file", CopyOptions::default()).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"keep");
        assert!(fs::symlink_metadata(f.img.join("link-file"))
            .unwrap()
            .file_type()
            .is_symlink());
        let inside = f.img.join(victim.strip_prefix("/").unwrap());
        assert_eq!(fs::read(inside).unwrap(), b"t");
    }

    #[test]
    fn chown_by_name_and_chmod() {
        let f = fixture();
        let owner = resolve_chown(&f.img, "app:staff").unwrap().0;
        assert_eq!(owner, (1000, 50));
        assert_eq!(resolve_chown(&f.img, "app").unwrap().0, (1000, 1000));
        assert_eq!(resolve_chown(&f.img, "7:8").unwrap(), ((7, 8), vec![]));
        // Names the image lacks: uid 0, the gid the user gave (BuildKit's behaviour), and why.
        let (ids, missing) = resolve_chown(&f.img, "nobody").unwrap();
        assert_eq!(ids, (0, 0));
        assert_eq!(
            missing,
            ["user \"nobody\" is not in the image's /etc/passwd"]
        );
        let (ids, missing) = resolve_chown(&f.img, "1234:nogroup").unwrap();
        assert_eq!(ids, (1234, 1234));
        assert_eq!(
            missing,
            ["group \"nogroup\" is not in the image's /etc/group"]
        );
        assert_eq!(resolve_chown(&f.img, "nobody:7").unwrap().0, (0, 7));
        let opts = CopyOptions {
            chown: Some(owner),
            chmod: Some(crate::solver::chmod::Chmod::Octal(0o640)),
            ..Default::default()
        };
        run(&f, &["top"], "/new/parent/file", opts).unwrap();
        let meta = fs::metadata(f.img.join("new/parent/file")).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid(), meta.mode() & 0o777),
            (1000, 50, 0o640)
        );
        // Created parents get the --chmod bits less group and other write (BuildKit's mkdir).
        let parent = fs::metadata(f.img.join("new/parent")).unwrap();
        assert_eq!((parent.uid(), parent.mode() & 0o777), (1000, 0o640));
    }

    #[test]
    fn parents_keep_the_source_path() {
        let f = fixture();
        let opts = CopyOptions {
            parents: true,
            ..Default::default()
        };
        run(&f, &["src/*.js", "docs/readme"], "/p/", opts.clone()).unwrap();
        assert!(f.img.join("p/src/a.js").exists() && f.img.join("p/docs/readme").exists());
        run(&f, &["src/./sub/c.js"], "/q/", opts).unwrap();
        assert!(f.img.join("q/sub/c.js").exists());
    }

    #[test]
    fn add_unpacks_local_archives() {
        let f = fixture();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(5);
        h.set_mode(0o600);
        h.set_uid(33);
        h.set_gid(33);
        h.set_mtime(0);
        h.set_cksum();
        b.append_data(&mut h, "inner/file", &b"hello"[..]).unwrap();
        let data = b.into_inner().unwrap();
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut enc, &data).unwrap();
        fs::write(f.ctx.join("a.tgz"), enc.finish().unwrap()).unwrap();
        let opts = CopyOptions {
            unpack_archives: true,
            ..Default::default()
        };
        run(&f, &["a.tgz"], "/x", opts).unwrap();
        let meta = fs::metadata(f.img.join("x/inner/file")).unwrap();
        assert_eq!((meta.uid(), meta.mode() & 0o777), (33, 0o600));
        // COPY does not unpack.
        run(&f, &["a.tgz"], "/y/", CopyOptions::default()).unwrap();
        assert!(f.img.join("y/a.tgz").is_file());
    }
}
