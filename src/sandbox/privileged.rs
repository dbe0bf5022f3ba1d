//! Privileged executions: `kiln run --privileged` (docker's) and a build's `RUN
//! --security=insecure` (BuildKit's `security.insecure` entitlement). Both get every
//! capability, no seccomp filter, none of Docker's masked or read-only /proc and /sys paths, a
//! writable /sys, a root filesystem and /dev without `nodev`, and a device cgroup that allows
//! every device. They differ in which device nodes /dev holds besides the default ones
//! (`HostDevices`): docker's gives every node of the host's /dev, BuildKit's its fixed list.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::cgroup::DeviceRule;

/// Which device nodes a privileged execution's /dev gets besides the default ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum HostDevices {
    /// Every character and block device under the host's /dev, with its mode and owner, as
    /// docker's `--privileged` (runc's walk: not under pts/, shm/, mqueue/, fd/, not `console`).
    All,
    /// BuildKit's `security.insecure` list (`util/entitlements/security`): kmsg, cuse, fuse,
    /// kvm, net/tun, loop-control and loop0 to loop(N+7), N the first free loop device. Made
    /// whether or not the host has them, as BuildKit's spec lists them.
    BuildKitInsecure,
}

/// One device node to make in the container's /dev.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceNode {
    /// Relative to /dev (`net/tun`).
    pub path: PathBuf,
    pub block: bool,
    pub major: u64,
    pub minor: u64,
    /// Permission bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl DeviceNode {
    pub fn spec(&self) -> super::syscall::DevNodeSpec {
        super::syscall::DevNodeSpec {
            block: self.block,
            mode: self.mode,
            major: self.major,
            minor: self.minor,
            uid: self.uid,
            gid: self.gid,
        }
    }
}

/// The device cgroup rules of a privileged execution: everything.
pub const ALL_DEVICES: &[DeviceRule] = &[
    DeviceRule {
        kind: 'c',
        major: None,
        minor: None,
        access: "rwm",
    },
    DeviceRule {
        kind: 'b',
        major: None,
        minor: None,
        access: "rwm",
    },
];

/// Directories and names of the host's /dev that a privileged container does not get (runc's
/// `HostDevices`): the container has its own pts, shm, mqueue and fd; console is its terminal.
const SKIPPED: &[&str] = &["pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"];

/// The nodes for `which`, read from the host (`dev` is the host's /dev).
pub fn nodes(which: HostDevices, dev: &Path) -> io::Result<Vec<DeviceNode>> {
    match which {
        HostDevices::All => {
            let mut out = Vec::new();
            walk(dev, Path::new(""), &mut out)?;
            out.sort_by(|a, b| a.path.cmp(&b.path));
            Ok(out)
        }
        HostDevices::BuildKitInsecure => Ok(buildkit_insecure(first_free_loop(dev))),
    }
}

fn walk(dir: &Path, rel: &Path, out: &mut Vec<DeviceNode>) -> io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        // A directory that cannot be read (vanished, no permission) is left out, as runc does.
        Err(_) if !rel.as_os_str().is_empty() => return Ok(()),
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("read {}: {e}", dir.display()),
            ))
        }
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Ok(meta) = entry.path().symlink_metadata() else {
            continue;
        };
        let ft = meta.file_type();
        let child = rel.join(&name);
        if ft.is_dir() {
            if rel.as_os_str().is_empty() && SKIPPED.iter().any(|s| name == *s) {
                continue;
            }
            walk(&entry.path(), &child, out)?;
        } else if (ft.is_char_device() || ft.is_block_device()) && name != "console" {
            let rdev = meta.rdev();
            out.push(DeviceNode {
                path: child,
                block: ft.is_block_device(),
                major: nix::sys::stat::major(rdev),
                minor: nix::sys::stat::minor(rdev),
                mode: meta.permissions().mode() & 0o7777,
                uid: meta.uid(),
                gid: meta.gid(),
            });
        }
    }
    Ok(())
}

/// BuildKit's list, with loop devices 0 to `free_loop + 7`.
pub fn buildkit_insecure(free_loop: u32) -> Vec<DeviceNode> {
    let node = |path: &str, block: bool, major: u64, minor: u64| DeviceNode {
        path: PathBuf::from(path),
        block,
        major,
        minor,
        mode: 0o666,
        uid: 0,
        gid: 0,
    };
    let mut out = vec![
        node("kmsg", false, 1, 11),
        node("cuse", false, 10, 203),
        node("fuse", false, 10, 229),
        node("kvm", false, 10, 232),
        node("net/tun", false, 10, 200),
        node("loop-control", false, 10, 237),
    ];
    for i in 0..=free_loop + 7 {
        out.push(node(&format!("loop{i}"), true, 7, u64::from(i)));
    }
    out
}

/// The first free loop device (`LOOP_CTL_GET_FREE` on `dev`/loop-control, which makes one if
/// none is free); 0 when it cannot be asked, as BuildKit.
fn first_free_loop(dev: &Path) -> u32 {
    use std::os::fd::AsRawFd;
    const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
    let Ok(f) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev.join("loop-control"))
    else {
        return 0;
    };
    // SAFETY: an ioctl without an argument on a descriptor we own; it returns a number.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), LOOP_CTL_GET_FREE as _) };
    u32::try_from(rc).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buildkit_list_has_its_devices_and_eight_loops_past_the_free_one() {
        let n = buildkit_insecure(2);
        let paths: Vec<String> = n.iter().map(|d| d.path.display().to_string()).collect();
        assert_eq!(
            &paths[..6],
            ["kmsg", "cuse", "fuse", "kvm", "net/tun", "loop-control"]
        );
        assert_eq!(paths.len(), 6 + 10);
        assert_eq!(paths.last().map(String::as_str), Some("loop9"));
        let tun = &n[4];
        assert_eq!((tun.block, tun.major, tun.minor), (false, 10, 200));
        let loop9 = n.last().unwrap();
        assert_eq!((loop9.block, loop9.major, loop9.minor), (true, 7, 9));
    }

    #[test]
    fn every_device_is_allowed() {
        let lines: Vec<String> = ALL_DEVICES.iter().map(DeviceRule::v1_line).collect();
        assert_eq!(lines, ["c *:* rwm", "b *:* rwm"]);
    }

    #[test]
    fn the_hosts_dev_is_walked_without_its_own_pts_shm_and_console() {
        // The machine's /dev: its null is listed, with its numbers; nothing under pts/ or shm/.
        let n = nodes(HostDevices::All, Path::new("/dev")).unwrap();
        let null = n.iter().find(|d| d.path == Path::new("null")).unwrap();
        assert_eq!((null.block, null.major, null.minor), (false, 1, 3));
        assert!(n.iter().all(|d| !d.path.starts_with("pts")
            && !d.path.starts_with("shm")
            && d.path != Path::new("console")));
        let mut sorted = n.clone();
        sorted.sort_by(|a, b| a.path.cmp(&b.path));
        assert_eq!(n, sorted);
    }
}
