//! The copy-based snapshotter's file work, for a user namespace whose kernel refuses overlayfs:
//! layers (overlay form) applied onto a plain directory by copying, and a change list written
//! back in overlay form (a container's kept upperdir). Slower than an overlay and costs the
//! image's size per snapshot; the results are the same.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use crate::oci::change::Change;

fn opaque_name() -> Vec<u8> {
    [crate::rootless::overlay_xattr_prefix(), b"opaque"].concat()
}

fn is_whiteout(m: &fs::Metadata) -> bool {
    m.file_type().is_char_device() && m.rdev() == 0
}

fn is_opaque(p: &Path) -> bool {
    let name = String::from_utf8_lossy(&opaque_name()).into_owned();
    super::diff::get_xattr(p, &name)
        .ok()
        .flatten()
        .is_some_and(|v| v == b"y")
}

fn remove_any(p: &Path) -> io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::other("path contains NUL"))
}

/// Owner, mode, xattrs and times of `src` onto `dst` (not followed).
fn copy_metadata(src: &Path, m: &fs::Metadata, dst: &Path) -> io::Result<()> {
    std::os::unix::fs::lchown(dst, Some(m.uid()), Some(m.gid()))?;
    if !m.file_type().is_symlink() {
        fs::set_permissions(dst, fs::Permissions::from_mode(m.mode() & 0o7777))?;
    }
    for (name, value) in super::diff::xattrs(src).unwrap_or_default() {
        let c = dst_cstr(dst)?;
        let n = CString::new(name).map_err(io::Error::other)?;
        // SAFETY: valid C strings; value is a readable buffer of the length passed.
        unsafe {
            libc::lsetxattr(
                c.as_ptr(),
                n.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            );
        }
    }
    set_times(dst, m)
}

fn dst_cstr(p: &Path) -> io::Result<CString> {
    cpath(p)
}

fn set_times(dst: &Path, m: &fs::Metadata) -> io::Result<()> {
    let c = cpath(dst)?;
    let times = [
        libc::timespec {
            tv_sec: m.atime(),
            tv_nsec: m.atime_nsec(),
        },
        libc::timespec {
            tv_sec: m.mtime(),
            tv_nsec: m.mtime_nsec(),
        },
    ];
    // SAFETY: a valid C string and an array of two timespecs.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes `dst` the entry `src` is (not a directory's children): a copy of a file, a symlink, a
/// fifo; a device where mknod is allowed (never in a user namespace: skipped). Returns false
/// for what was skipped.
fn copy_entry(src: &Path, m: &fs::Metadata, dst: &Path) -> io::Result<bool> {
    let ft = m.file_type();
    if ft.is_dir() {
        match fs::symlink_metadata(dst) {
            Ok(d) if d.is_dir() => {}
            Ok(_) => {
                fs::remove_file(dst)?;
                fs::create_dir(dst)?;
            }
            Err(_) => fs::create_dir(dst)?,
        }
    } else {
        remove_any(dst)?;
        if ft.is_file() {
            fs::copy(src, dst)?;
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(src)?, dst)?;
        } else if ft.is_fifo() {
            nix::unistd::mkfifo(dst, nix::sys::stat::Mode::from_bits_truncate(0o600))?;
        } else {
            let kind = if ft.is_char_device() {
                nix::sys::stat::SFlag::S_IFCHR
            } else if ft.is_block_device() {
                nix::sys::stat::SFlag::S_IFBLK
            } else {
                return Ok(false); // sockets
            };
            if nix::sys::stat::mknod(
                dst,
                kind,
                nix::sys::stat::Mode::from_bits_truncate(0o600),
                m.rdev(),
            )
            .is_err()
            {
                return Ok(false);
            }
        }
    }
    copy_metadata(src, m, dst)?;
    Ok(true)
}

/// Applies the overlay-form directory `layer` onto the plain tree `dst`: whiteouts remove,
/// opaque directories replace, everything else is copied over what is there.
pub fn apply_layer_dir(layer: &Path, dst: &Path) -> io::Result<()> {
    let mut names: Vec<_> = fs::read_dir(layer)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<_>>()?;
    names.sort();
    for name in names {
        let (s, d) = (layer.join(&name), dst.join(&name));
        let m = fs::symlink_metadata(&s)?;
        if is_whiteout(&m) {
            remove_any(&d)?;
            continue;
        }
        if m.is_dir() {
            if is_opaque(&s) {
                remove_any(&d)?;
            }
            copy_entry(&s, &m, &d)?;
            apply_layer_dir(&s, &d)?;
            // Children changed the directory's mtime: set it again.
            set_times(&d, &m)?;
        } else {
            copy_entry(&s, &m, &d)?;
        }
    }
    Ok(())
}

/// Writes `changes` (read from the plain tree `from`) into the empty directory `upper` in
/// overlay form: upserts copied (parents as in `from`), deletions as 0:0 whiteouts, replaced
/// directories marked opaque.
pub fn write_changes(changes: &[Change], from: &Path, upper: &Path) -> io::Result<()> {
    let ensure_parents = |rel: &Path| -> io::Result<()> {
        let mut cur = std::path::PathBuf::new();
        if let Some(parent) = rel.parent() {
            for c in parent.components() {
                cur.push(c);
                let d = upper.join(&cur);
                if fs::symlink_metadata(&d).is_err() {
                    let m = fs::symlink_metadata(from.join(&cur))?;
                    copy_entry(&from.join(&cur), &m, &d)?;
                }
            }
        }
        Ok(())
    };
    let mut dirs = Vec::new();
    for c in changes {
        let rel = c.path();
        ensure_parents(rel)?;
        let d = upper.join(rel);
        match c {
            Change::Delete(_) => {
                remove_any(&d)?;
                nix::sys::stat::mknod(
                    &d,
                    nix::sys::stat::SFlag::S_IFCHR,
                    nix::sys::stat::Mode::empty(),
                    0,
                )?;
            }
            Change::Upsert(_) | Change::Opaque(_) => {
                let s = from.join(rel);
                let m = fs::symlink_metadata(&s)?;
                copy_entry(&s, &m, &d)?;
                if m.is_dir() {
                    dirs.push((d.clone(), m));
                }
                if matches!(c, Change::Opaque(_)) {
                    let cp = cpath(&d)?;
                    let n = CString::new(opaque_name()).map_err(io::Error::other)?;
                    // SAFETY: valid C strings; a one-byte value.
                    let r = unsafe {
                        libc::lsetxattr(cp.as_ptr(), n.as_ptr(), b"y".as_ptr().cast(), 1, 0)
                    };
                    if r != 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
            }
        }
    }
    for (d, m) in dirs.iter().rev() {
        set_times(d, m)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_apply_by_copy_with_whiteouts_and_back() {
        let t = tempfile::tempdir().unwrap();
        let (l1, l2, dst) = (
            t.path().join("l1"),
            t.path().join("l2"),
            t.path().join("dst"),
        );
        for d in [&l1, &l2, &dst] {
            fs::create_dir(d).unwrap();
        }
        fs::create_dir_all(l1.join("etc/sub")).unwrap();
        fs::write(l1.join("etc/a"), "a").unwrap();
        fs::write(l1.join("etc/sub/b"), "b").unwrap();
        fs::write(l1.join("gone"), "x").unwrap();
        std::os::unix::fs::symlink("etc/a", l1.join("link")).unwrap();
        fs::create_dir(l2.join("etc")).unwrap();
        fs::write(l2.join("etc/a"), "a2").unwrap();
        nix::sys::stat::mknod(
            &l2.join("gone"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .unwrap();
        apply_layer_dir(&l1, &dst).unwrap();
        apply_layer_dir(&l2, &dst).unwrap();
        assert_eq!(fs::read_to_string(dst.join("etc/a")).unwrap(), "a2");
        assert_eq!(fs::read_to_string(dst.join("etc/sub/b")).unwrap(), "b");
        assert!(!dst.join("gone").exists());
        assert_eq!(fs::read_link(dst.join("link")).unwrap(), Path::new("etc/a"));

        let upper = t.path().join("upper");
        fs::create_dir(&upper).unwrap();
        let changes = vec![
            Change::Upsert("etc/sub/b".into()),
            Change::Delete("etc/a".into()),
        ];
        write_changes(&changes, &dst, &upper).unwrap();
        assert_eq!(fs::read_to_string(upper.join("etc/sub/b")).unwrap(), "b");
        assert!(is_whiteout(
            &fs::symlink_metadata(upper.join("etc/a")).unwrap()
        ));
    }
}
