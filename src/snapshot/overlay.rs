//! Mounting overlayfs. The classic mount(2) takes all options in one page, which a deep image
//! (many lowerdirs with long paths) overflows; then the new mount API is used, adding one
//! lowerdir per `fsconfig` call (`lowerdir+`, Linux 6.8+), with no length limit.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

/// An overlay to mount. `lowers` are top-most first (overlay's order).
#[derive(Debug, Clone)]
pub struct OverlaySpec<'a> {
    pub lowers: &'a [PathBuf],
    /// `None` = a read-only overlay of the lowers only.
    pub upper_work: Option<(&'a Path, &'a Path)>,
    pub volatile: bool,
}

/// The most a classic mount(2) data page holds (minus the NUL).
const PAGE_LIMIT: usize = 4095;

fn escape(p: &Path) -> String {
    // overlay splits lowerdir on ':' and mount data on ','; '\' escapes both.
    let s = p.to_string_lossy();
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c == ':' || c == ',' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn base_options(spec: &OverlaySpec) -> Vec<(String, Option<String>)> {
    let mut opts = Vec::new();
    if let Some((upper, work)) = spec.upper_work {
        opts.push(("upperdir".to_string(), Some(escape(upper))));
        opts.push(("workdir".to_string(), Some(escape(work))));
    }
    // A self-contained upperdir: no redirects to lower paths, no metadata-only copies, no
    // hard-link index. In a user namespace (rootless) overlay keeps its xattrs as
    // `user.overlay.*` (`userxattr`), which implies redirect_dir=nofollow: none are made either.
    if crate::rootless::in_userns() {
        opts.push(("userxattr".to_string(), None));
    } else {
        opts.push(("redirect_dir".to_string(), Some("off".to_string())));
    }
    opts.push(("metacopy".to_string(), Some("off".to_string())));
    opts.push(("index".to_string(), Some("off".to_string())));
    if spec.volatile && spec.upper_work.is_some() {
        opts.push(("volatile".to_string(), None));
    }
    opts
}

/// Mounts the overlay on `target`.
pub fn mount_overlay(spec: &OverlaySpec, target: &Path) -> io::Result<()> {
    if spec.lowers.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "overlay needs a lowerdir",
        ));
    }
    let lowerdir: Vec<String> = spec.lowers.iter().map(|p| escape(p)).collect();
    let mut data = format!("lowerdir={}", lowerdir.join(":"));
    for (k, v) in base_options(spec) {
        data.push(',');
        data.push_str(&k);
        if let Some(v) = v {
            data.push('=');
            data.push_str(&v);
        }
    }
    if data.len() <= PAGE_LIMIT {
        let r = nix::mount::mount(
            Some("overlay"),
            target,
            Some("overlay"),
            MsFlags::empty(),
            Some(data.as_str()),
        );
        match r {
            Ok(()) => return Ok(()),
            // Kernels before 5.10 do not know `volatile`; it is only an optimisation.
            Err(nix::Error::EINVAL) if spec.volatile => {
                let without = OverlaySpec {
                    volatile: false,
                    ..spec.clone()
                };
                return mount_overlay(&without, target);
            }
            Err(e) => return Err(io::Error::from_raw_os_error(e as i32)),
        }
    }
    mount_overlay_fsconfig(spec, target)
}

fn c(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn fsconfig(fd: &OwnedFd, cmd: u32, key: Option<&str>, value: Option<&str>) -> io::Result<()> {
    let key = key.map(c).transpose()?;
    let value = value.map(c).transpose()?;
    // SAFETY: fsconfig(2) with NUL-terminated strings (or NULL) that outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fd.as_raw_fd(),
            cmd,
            key.as_ref().map_or(std::ptr::null(), |k| k.as_ptr()),
            value.as_ref().map_or(std::ptr::null(), |v| v.as_ptr()),
            0,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!(
                "fsconfig overlay {}: {e}",
                key.map(|k| k.to_string_lossy().into_owned())
                    .unwrap_or_default()
            ),
        ));
    }
    Ok(())
}

const FSCONFIG_SET_FLAG: u32 = 0;
const FSCONFIG_SET_STRING: u32 = 1;
const FSCONFIG_CMD_CREATE: u32 = 6;
const MOVE_MOUNT_F_EMPTY_PATH: u32 = 0x4;

fn mount_overlay_fsconfig(spec: &OverlaySpec, target: &Path) -> io::Result<()> {
    let fstype = c("overlay")?;
    // SAFETY: fsopen(2) with a valid name; the fd is owned below.
    let fd = unsafe {
        libc::syscall(libc::SYS_fsopen, fstype.as_ptr(), 1u32 /* CLOEXEC */)
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd we own.
    let fs = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    for lower in spec.lowers {
        // Values go unescaped through fsconfig: no ':' or ',' parsing for `lowerdir+`.
        fsconfig(
            &fs,
            FSCONFIG_SET_STRING,
            Some("lowerdir+"),
            Some(&lower.to_string_lossy()),
        )?;
    }
    if let Some((upper, work)) = spec.upper_work {
        fsconfig(
            &fs,
            FSCONFIG_SET_STRING,
            Some("upperdir"),
            Some(&upper.to_string_lossy()),
        )?;
        fsconfig(
            &fs,
            FSCONFIG_SET_STRING,
            Some("workdir"),
            Some(&work.to_string_lossy()),
        )?;
    }
    for (k, v) in base_options(spec)
        .into_iter()
        .skip(if spec.upper_work.is_some() { 2 } else { 0 })
    {
        match v {
            Some(v) => fsconfig(&fs, FSCONFIG_SET_STRING, Some(&k), Some(&v))?,
            None => fsconfig(&fs, FSCONFIG_SET_FLAG, Some(&k), None)?,
        }
    }
    fsconfig(&fs, FSCONFIG_CMD_CREATE, None, None)?;
    // SAFETY: fsmount(2) on the configured fs context.
    let mfd = unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), 1u32, 0u32) };
    if mfd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd we own.
    let mnt = unsafe { OwnedFd::from_raw_fd(mfd as i32) };
    let empty = c("")?;
    let target_c = CString::new(target.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: move_mount(2) of the detached mount onto a valid path.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mnt.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            target_c.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Unmounts `target`; a busy mount is detached lazily.
pub fn unmount(target: &Path) -> io::Result<()> {
    match nix::mount::umount2(target, MntFlags::empty()) {
        Ok(()) => Ok(()),
        Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => Ok(()), // not mounted
        Err(nix::Error::EBUSY) => nix::mount::umount2(target, MntFlags::MNT_DETACH)
            .map_err(|e| io::Error::from_raw_os_error(e as i32)),
        Err(e) => Err(io::Error::from_raw_os_error(e as i32)),
    }
}

/// Mount points at or below `dir`, deepest first (from /proc/self/mountinfo).
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape_mountinfo(m)))
        .filter(|m| m.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_separators() {
        assert_eq!(escape(Path::new("/a:b,c\\d")), "/a\\:b\\,c\\\\d");
    }

    #[test]
    fn mountinfo_octal_escapes() {
        assert_eq!(unescape_mountinfo("/tmp/a\\040b"), "/tmp/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }
}
