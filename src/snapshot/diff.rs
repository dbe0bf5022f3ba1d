//! Turning an execution's effect into a list of changes.
//!
//! `diff_upper` reads an overlay upperdir (mounted with redirect_dir=off, metacopy=off): whiteouts
//! (char device 0:0) are deletions, `trusted.overlay.opaque=y` directories replace what was
//! below, and entries overlay copied up without changing them (a chmod to the same mode, a file
//! opened for writing but left as it was) are left out by comparing them with the lower view.
//! A file or symlink whose only change is its mtime (`touch`) is a change, as in BuildKit's
//! differ; a directory's mtime alone is only when the step set it (`touch -r`: mtime and ctime
//! differ), not when entries came and went (every RUN touches some, such as /etc).
//! `diff_trees` compares two complete trees; tests use it to check `diff_upper`.

use std::collections::BTreeSet;
use std::ffi::{CString, OsString};
use std::fs::{self, Metadata};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::oci::change::Change;

fn lstat(p: &Path) -> Option<Metadata> {
    fs::symlink_metadata(p).ok()
}

fn sorted_entries(dir: &Path) -> io::Result<Vec<OsString>> {
    let mut names: Vec<OsString> = fs::read_dir(dir)
        .map_err(|e| io::Error::new(e.kind(), format!("read {}: {e}", dir.display())))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<_>>()?;
    names.sort();
    Ok(names)
}

fn is_whiteout(m: &Metadata) -> bool {
    m.file_type().is_char_device() && m.rdev() == 0
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// One extended attribute's value (`None` when absent), without following symlinks.
pub fn get_xattr(p: &Path, name: &str) -> io::Result<Option<Vec<u8>>> {
    let path = cpath(p)?;
    let name = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: lgetxattr with valid C strings and a buffer of the given length.
        let n = unsafe {
            libc::lgetxattr(
                path.as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n >= 0 {
            buf.truncate(n as usize);
            return Ok(Some(buf));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENODATA) | Some(libc::ENOTSUP) => return Ok(None),
            Some(libc::ERANGE) => buf.resize(buf.len() * 4, 0),
            _ => return Err(e),
        }
    }
}

/// All extended attributes of a path except overlay's own, sorted by name.
pub fn xattrs(p: &Path) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let path = cpath(p)?;
    let mut names = vec![0u8; 1024];
    let len = loop {
        // SAFETY: llistxattr with a valid path and a buffer of the given length.
        let n = unsafe { libc::llistxattr(path.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENOTSUP) => return Ok(Vec::new()),
            Some(libc::ERANGE) => names.resize(names.len() * 4, 0),
            _ => return Err(e),
        }
    };
    let mut out = Vec::new();
    for name in names[..len].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        if crate::rootless::is_overlay_xattr(name) {
            continue;
        }
        let name_str = String::from_utf8_lossy(name).into_owned();
        if let Some(v) = get_xattr(p, &name_str)? {
            out.push((name.to_vec(), v));
        }
    }
    out.sort();
    Ok(out)
}

fn is_opaque(p: &Path) -> io::Result<bool> {
    // `user.overlay.opaque` when the overlay was mounted in a user namespace (userxattr).
    let name = [crate::rootless::overlay_xattr_prefix(), b"opaque"].concat();
    Ok(get_xattr(p, &String::from_utf8_lossy(&name))?.as_deref() == Some(b"y"))
}

fn same_content(a: &Path, b: &Path) -> io::Result<bool> {
    let mut fa = fs::File::open(a)?;
    let mut fb = fs::File::open(b)?;
    let mut ba = vec![0u8; 64 * 1024];
    let mut bb = vec![0u8; 64 * 1024];
    loop {
        let na = read_full(&mut fa, &mut ba)?;
        let nb = read_full(&mut fb, &mut bb)?;
        if na != nb || ba[..na] != bb[..nb] {
            return Ok(false);
        }
        if na == 0 {
            return Ok(true);
        }
    }
}

fn read_full(f: &mut fs::File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Whether two entries look the same to a container: type and mode, owner, xattrs, and the
/// content (files), target (symlinks) or device number. Times are not compared.
fn same_entry(a: &Path, am: &Metadata, b: &Path, bm: &Metadata) -> io::Result<bool> {
    if am.mode() != bm.mode() || am.uid() != bm.uid() || am.gid() != bm.gid() {
        return Ok(false);
    }
    let ft = am.file_type();
    if ft.is_file() {
        if am.len() != bm.len() || !same_content(a, b)? {
            return Ok(false);
        }
    } else if ft.is_symlink() {
        if fs::read_link(a)? != fs::read_link(b)? {
            return Ok(false);
        }
    } else if (ft.is_char_device() || ft.is_block_device()) && am.rdev() != bm.rdev() {
        return Ok(false);
    }
    Ok(xattrs(a)? == xattrs(b)?)
}

/// Whether two non-directories have the same modification time, to the second (the precision a
/// layer's tar header keeps).
/// Whether a directory's mtime was set by the step (`touch -r`, `touch -d`), not moved by the
/// kernel when entries came and went (which sets mtime and ctime to the same instant).
///
/// Overlay leaves mtime and ctime apart too: after copying a file up it puts the parent's mtime
/// back as it was (an instant of this step) and the ctime moves on. So when the upperdir's
/// creation time (`started`, the step's start) is known, a set mtime is one before the step or
/// after the ctime, which a restore never gives.
fn set_mtime(m: &Metadata, started: Option<(i64, i64)>) -> bool {
    let mtime = (m.mtime(), m.mtime_nsec());
    let ctime = (m.ctime(), m.ctime_nsec());
    match started {
        Some(start) => mtime < start || mtime > ctime,
        None => mtime != ctime,
    }
}

/// When the upperdir was made (its birth time, where the filesystem keeps one).
fn birth_time(upper: &Path) -> Option<(i64, i64)> {
    let born = fs::metadata(upper).ok()?.created().ok()?;
    let since = born.duration_since(std::time::UNIX_EPOCH).ok()?;
    Some((since.as_secs() as i64, i64::from(since.subsec_nanos())))
}

fn same_mtime(am: &Metadata, bm: &Metadata) -> bool {
    am.mtime() == bm.mtime()
}

/// Upserts `rel` and everything below it in `tree` (skipping whiteouts, which mean nothing in a
/// directory that is new).
///
/// Each entry's type comes from the directory listing (`d_type`), so a new tree of tens of
/// thousands of files (a COPY into a new directory) costs its directory reads and no lstat per
/// entry; only character devices (possible whiteouts) are stat'ed for their device number.
fn add_all(tree: &Path, rel: &Path, out: &mut Vec<Change>) -> io::Result<()> {
    let dir = tree.join(rel);
    let mut entries: Vec<(OsString, fs::FileType)> = Vec::new();
    for e in fs::read_dir(&dir)
        .map_err(|e| io::Error::new(e.kind(), format!("read {}: {e}", dir.display())))?
    {
        let e = e?;
        // As an lstat that fails: an entry gone since the listing is left out.
        if let Ok(t) = e.file_type() {
            entries.push((e.file_name(), t));
        }
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, t) in entries {
        let r = rel.join(&name);
        if t.is_char_device() {
            match lstat(&dir.join(&name)) {
                Some(m) if is_whiteout(&m) => continue,
                Some(_) => {}
                None => continue,
            }
        }
        out.push(Change::Upsert(r.clone()));
        if t.is_dir() {
            add_all(tree, &r, out)?;
        }
    }
    Ok(())
}

/// The changes an overlay upperdir holds, relative to `lower` (the merged view of the lower
/// layers: a single layer directory, or a read-only overlay of several).
pub fn diff_upper(upper: &Path, lower: &Path) -> io::Result<Vec<Change>> {
    let mut out = Vec::new();
    let started = birth_time(upper);
    walk_upper(upper, lower, Path::new(""), started, &mut out)?;
    Ok(out)
}

fn walk_upper(
    upper: &Path,
    lower: &Path,
    rel: &Path,
    started: Option<(i64, i64)>,
    out: &mut Vec<Change>,
) -> io::Result<()> {
    for name in sorted_entries(&upper.join(rel))? {
        let r = rel.join(&name);
        let u = upper.join(&r);
        let Some(um) = lstat(&u) else { continue };
        // `lower.join(r)` is safe to lstat: its parent was checked to be a real directory.
        let l = lower.join(&r);
        let lm = lstat(&l);
        if is_whiteout(&um) {
            if lm.is_some() {
                out.push(Change::Delete(r));
            }
            continue;
        }
        if um.is_dir() {
            if is_opaque(&u)? {
                out.push(Change::Opaque(r.clone()));
                add_all(upper, &r, out)?;
                continue;
            }
            match lm {
                Some(lm) if lm.is_dir() => {
                    if !same_entry(&u, &um, &l, &lm)?
                        || (!same_mtime(&um, &lm) && set_mtime(&um, started))
                    {
                        out.push(Change::Upsert(r.clone()));
                    }
                    walk_upper(upper, lower, &r, started, out)?;
                }
                _ => {
                    // New, or replacing a non-directory (overlay hides what was below).
                    out.push(Change::Upsert(r.clone()));
                    add_all(upper, &r, out)?;
                }
            }
            continue;
        }
        // A link count above one in the upperdir means links made in the container (copy-up
        // does not preserve links with index=off): every name of the inode goes in the layer.
        let changed = match &lm {
            _ if um.nlink() > 1 => true,
            Some(lm) if !lm.is_dir() => !same_mtime(&um, lm) || !same_entry(&u, &um, &l, lm)?,
            _ => true,
        };
        if changed {
            out.push(Change::Upsert(r));
        }
    }
    Ok(())
}

/// The changes that turn tree `old` into tree `new` (both plain directory trees, e.g. the lower
/// view and the merged view of a snapshot).
pub fn diff_trees(old: &Path, new: &Path) -> io::Result<Vec<Change>> {
    let mut out = Vec::new();
    walk_trees(old, new, Path::new(""), &mut out)?;
    Ok(out)
}

fn walk_trees(old: &Path, new: &Path, rel: &Path, out: &mut Vec<Change>) -> io::Result<()> {
    let new_names = sorted_entries(&new.join(rel))?;
    let old_names: BTreeSet<OsString> = sorted_entries(&old.join(rel))?.into_iter().collect();
    let new_set: BTreeSet<&OsString> = new_names.iter().collect();
    // Deletions first, by name order, then additions and modifications.
    let mut changes = Vec::new();
    for name in old_names.iter().filter(|n| !new_set.contains(n)) {
        changes.push((name.clone(), None));
    }
    for name in &new_names {
        changes.push((name.clone(), Some(())));
    }
    changes.sort();
    for (name, present) in changes {
        let r = rel.join(&name);
        if present.is_none() {
            out.push(Change::Delete(r));
            continue;
        }
        let n = new.join(&r);
        let o = old.join(&r);
        let Some(nm) = lstat(&n) else { continue };
        let om = lstat(&o);
        match om {
            None => {
                out.push(Change::Upsert(r.clone()));
                if nm.is_dir() {
                    add_all(new, &r, out)?;
                }
            }
            Some(om) if nm.is_dir() && om.is_dir() => {
                if !same_entry(&n, &nm, &o, &om)? {
                    out.push(Change::Upsert(r.clone()));
                }
                walk_trees(old, new, &r, out)?;
            }
            Some(_) if nm.is_dir() => {
                out.push(Change::Upsert(r.clone()));
                add_all(new, &r, out)?;
            }
            Some(om) => {
                if om.is_dir()
                    || nm.nlink() != om.nlink()
                    || !same_mtime(&nm, &om)
                    || !same_entry(&n, &nm, &o, &om)?
                {
                    out.push(Change::Upsert(r));
                }
            }
        }
    }
    Ok(())
}

/// Paths in `changes`, for messages and tests.
pub fn paths(changes: &[Change]) -> Vec<PathBuf> {
    changes.iter().map(|c| c.path().to_path_buf()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_tree_lists_every_entry_by_its_listed_type_and_skips_whiteouts() {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path().join("new");
        fs::create_dir_all(top.join("sub/deeper")).unwrap();
        fs::write(top.join("b.txt"), "b").unwrap();
        fs::write(top.join("sub/deeper/c"), "c").unwrap();
        std::os::unix::fs::symlink("sub", top.join("a-link")).unwrap();
        let dev = |name: &str, rdev: libc::dev_t| {
            let c = cpath(&top.join(name)).unwrap();
            // SAFETY: mknod with a valid C string; the test runs as root (as the suite does).
            unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, rdev) == 0 }
        };
        // A whiteout (0:0) means nothing in a new directory; another device is an entry.
        let devices = dev("gone", 0) && dev("null-like", libc::makedev(1, 3));
        let mut out = Vec::new();
        add_all(dir.path(), Path::new("new"), &mut out).unwrap();
        let mut want = vec!["new/a-link", "new/b.txt"];
        if devices {
            want.push("new/null-like");
        }
        want.extend(["new/sub", "new/sub/deeper", "new/sub/deeper/c"]);
        let want: Vec<Change> = want.into_iter().map(|p| Change::Upsert(p.into())).collect();
        assert_eq!(out, want);
    }
}
