//! The privileged calls the container setup makes, behind a trait (as youki's `Syscall`): the
//! real implementation talks to the kernel; the recording one logs each call so the setup logic
//! in `rootfs` is unit-tested without root.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::mount::{MntFlags, MsFlags};

/// What kind of file a path is, as far as mount setup cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Dir,
    Other,
}

/// `mount_setattr` flags (linux/mount.h).
pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub const MOUNT_ATTR_NODEV: u64 = 0x4;
pub const MOUNT_ATTR_NOEXEC: u64 = 0x8;

/// `struct mount_attr` (linux/mount.h, MOUNT_ATTR_SIZE_VER0).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

pub trait Syscall {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> io::Result<()>;
    fn umount2(&self, target: &Path, flags: MntFlags) -> io::Result<()>;
    /// `mount_setattr(2)`: sets (`attr_set`) and clears (`attr_clr`) `MOUNT_ATTR_*` flags on the
    /// mount at `target`, and with `recursive` on every mount below it, atomically. ENOSYS on
    /// kernels before 5.12.
    fn mount_setattr(
        &self,
        target: &Path,
        recursive: bool,
        attr_set: u64,
        attr_clr: u64,
    ) -> io::Result<()>;
    /// The calling process's `/proc/self/mountinfo`.
    fn mountinfo(&self) -> io::Result<String>;
    /// `pivot_root(new_root, put_old)`.
    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> io::Result<()>;
    fn chdir(&self, path: &Path) -> io::Result<()>;
    fn mkdir_all(&self, path: &Path, mode: u32) -> io::Result<()>;
    /// Creates an empty regular file if nothing is there (a mount point for a file bind).
    fn touch(&self, path: &Path) -> io::Result<()>;
    fn symlink(&self, target: &Path, link: &Path) -> io::Result<()>;
    fn sethostname(&self, name: &str) -> io::Result<()>;
    /// Brings the loopback interface of the current network namespace up.
    fn loopback_up(&self) -> io::Result<()>;
    /// `lstat`-based kind of a path; `None` when it does not exist.
    fn kind(&self, path: &Path) -> Option<FileKind>;
    fn write_file(&self, path: &Path, content: &[u8], mode: u32) -> io::Result<()>;
    fn unlink(&self, path: &Path) -> io::Result<()>;
    /// `mknod(2)` of a character device with exactly `mode` (not reduced by the umask). EPERM
    /// without CAP_MKNOD in the initial user namespace (rootless).
    fn mknod_char(&self, path: &Path, mode: u32, major: u64, minor: u64) -> io::Result<()>;
    /// `mknod(2)` of a character or block device (`block`) with exactly `mode`, then `lchown`
    /// to `uid`:`gid` (a privileged container's copies of the host's nodes).
    fn mknod_dev(&self, path: &Path, node: &DevNodeSpec) -> io::Result<()>;
}

/// What `Syscall::mknod_dev` makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DevNodeSpec {
    pub block: bool,
    pub mode: u32,
    pub major: u64,
    pub minor: u64,
    pub uid: u32,
    pub gid: u32,
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn nix_io(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// The kernel.
pub struct LinuxSyscall;

impl Syscall for LinuxSyscall {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> io::Result<()> {
        nix::mount::mount(source, target, fstype, flags, data).map_err(nix_io)
    }

    fn umount2(&self, target: &Path, flags: MntFlags) -> io::Result<()> {
        nix::mount::umount2(target, flags).map_err(nix_io)
    }

    fn mount_setattr(
        &self,
        target: &Path,
        recursive: bool,
        attr_set: u64,
        attr_clr: u64,
    ) -> io::Result<()> {
        let c = cpath(target)?;
        let attr = MountAttr {
            attr_set,
            attr_clr,
            propagation: 0,
            userns_fd: 0,
        };
        let flags = if recursive { libc::AT_RECURSIVE } else { 0 };
        // SAFETY: mount_setattr(2) with a NUL-terminated path that outlives the call, a pointer
        // to a `struct mount_attr` we own and its exact size; the kernel only reads them.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                libc::AT_FDCWD,
                c.as_ptr(),
                flags as libc::c_uint,
                &attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn mountinfo(&self) -> io::Result<String> {
        std::fs::read_to_string("/proc/self/mountinfo")
    }

    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> io::Result<()> {
        nix::unistd::pivot_root(new_root, put_old).map_err(nix_io)
    }

    fn chdir(&self, path: &Path) -> io::Result<()> {
        nix::unistd::chdir(path).map_err(nix_io)
    }

    fn mkdir_all(&self, path: &Path, mode: u32) -> io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(path)
    }

    fn touch(&self, path: &Path) -> io::Result<()> {
        match std::fs::symlink_metadata(path) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
                .map(|_| ()),
            Err(e) => Err(e),
        }
    }

    fn symlink(&self, target: &Path, link: &Path) -> io::Result<()> {
        std::os::unix::fs::symlink(target, link)
    }

    fn sethostname(&self, name: &str) -> io::Result<()> {
        nix::unistd::sethostname(name).map_err(nix_io)
    }

    fn loopback_up(&self) -> io::Result<()> {
        // SAFETY: plain socket(2); the fd is closed below.
        let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if sock < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: ifreq is plain old data; zeroed is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (i, b) in b"lo".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        // SAFETY: `req` is a valid ifreq for SIOCGIFFLAGS/SIOCSIFFLAGS on an open socket.
        let result = unsafe {
            if libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut req) != 0 {
                Err(io::Error::last_os_error())
            } else {
                req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
                if libc::ioctl(sock, libc::SIOCSIFFLAGS, &req) != 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(())
                }
            }
        };
        // SAFETY: `sock` is an fd we own.
        unsafe { libc::close(sock) };
        result
    }

    fn write_file(&self, path: &Path, content: &[u8], mode: u32) -> io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(path)?;
        f.write_all(content)
    }

    fn unlink(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn mknod_char(&self, path: &Path, mode: u32, major: u64, minor: u64) -> io::Result<()> {
        use nix::sys::stat::{makedev, mknod, Mode, SFlag};
        use std::os::unix::fs::PermissionsExt;
        mknod(
            path,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(mode),
            makedev(major, minor),
        )
        .map_err(nix_io)?;
        // mknod's mode is reduced by the umask; the node must have exactly `mode`.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
    }

    fn mknod_dev(&self, path: &Path, node: &DevNodeSpec) -> io::Result<()> {
        use nix::sys::stat::{makedev, mknod, Mode, SFlag};
        use std::os::unix::fs::PermissionsExt;
        let kind = if node.block {
            SFlag::S_IFBLK
        } else {
            SFlag::S_IFCHR
        };
        mknod(
            path,
            kind,
            Mode::from_bits_truncate(node.mode),
            makedev(node.major, node.minor),
        )
        .map_err(nix_io)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(node.mode))?;
        std::os::unix::fs::lchown(path, Some(node.uid), Some(node.gid))
    }

    fn kind(&self, path: &Path) -> Option<FileKind> {
        std::fs::symlink_metadata(path).ok().map(|m| {
            if m.is_dir() {
                FileKind::Dir
            } else {
                FileKind::Other
            }
        })
    }
}

/// One recorded call (paths as given).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Mount {
        source: Option<PathBuf>,
        target: PathBuf,
        fstype: Option<String>,
        flags: MsFlags,
        data: Option<String>,
    },
    Umount2(PathBuf, MntFlags),
    MountSetattr {
        target: PathBuf,
        recursive: bool,
        attr_set: u64,
        attr_clr: u64,
    },
    Mountinfo,
    PivotRoot(PathBuf, PathBuf),
    Chdir(PathBuf),
    MkdirAll(PathBuf, u32),
    Touch(PathBuf),
    Symlink(PathBuf, PathBuf),
    Sethostname(String),
    LoopbackUp,
    WriteFile(PathBuf, Vec<u8>, u32),
    Unlink(PathBuf),
    MknodChar(PathBuf, u32, u64, u64),
    MknodDev(PathBuf, DevNodeSpec),
}

/// Records every call and succeeds; `kind` answers from the paths given at construction,
/// `mountinfo` with `mountinfo`, and `mount_setattr` fails with `mount_setattr_errno` when set
/// (e.g. ENOSYS, an old kernel).
#[derive(Default)]
pub struct RecordingSyscall {
    pub calls: Mutex<Vec<Call>>,
    pub dirs: Vec<PathBuf>,
    pub files: Vec<PathBuf>,
    pub mountinfo: String,
    pub mount_setattr_errno: Option<i32>,
    /// Mounts of this filesystem type fail with this errno (recorded first), e.g. a procfs
    /// refused in a user namespace.
    pub mount_fstype_errno: Option<(String, i32)>,
    /// When set, `mknod_char` records the call and fails with this errno (EPERM: rootless).
    pub mknod_errno: Option<i32>,
}

impl RecordingSyscall {
    pub fn new(dirs: &[&str], files: &[&str]) -> Self {
        RecordingSyscall {
            calls: Mutex::new(Vec::new()),
            dirs: dirs.iter().map(PathBuf::from).collect(),
            files: files.iter().map(PathBuf::from).collect(),
            ..Default::default()
        }
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }

    fn push(&self, call: Call) -> io::Result<()> {
        if let Ok(mut c) = self.calls.lock() {
            c.push(call);
        }
        Ok(())
    }
}

impl Syscall for RecordingSyscall {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> io::Result<()> {
        self.push(Call::Mount {
            source: source.map(Path::to_path_buf),
            target: target.to_path_buf(),
            fstype: fstype.map(str::to_string),
            flags,
            data: data.map(str::to_string),
        })?;
        match &self.mount_fstype_errno {
            Some((t, errno)) if Some(t.as_str()) == fstype => {
                Err(io::Error::from_raw_os_error(*errno))
            }
            _ => Ok(()),
        }
    }
    fn umount2(&self, target: &Path, flags: MntFlags) -> io::Result<()> {
        self.push(Call::Umount2(target.to_path_buf(), flags))
    }
    fn mount_setattr(
        &self,
        target: &Path,
        recursive: bool,
        attr_set: u64,
        attr_clr: u64,
    ) -> io::Result<()> {
        self.push(Call::MountSetattr {
            target: target.to_path_buf(),
            recursive,
            attr_set,
            attr_clr,
        })?;
        match self.mount_setattr_errno {
            Some(errno) => Err(io::Error::from_raw_os_error(errno)),
            None => Ok(()),
        }
    }
    fn mountinfo(&self) -> io::Result<String> {
        self.push(Call::Mountinfo)?;
        Ok(self.mountinfo.clone())
    }
    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> io::Result<()> {
        self.push(Call::PivotRoot(
            new_root.to_path_buf(),
            put_old.to_path_buf(),
        ))
    }
    fn chdir(&self, path: &Path) -> io::Result<()> {
        self.push(Call::Chdir(path.to_path_buf()))
    }
    fn mkdir_all(&self, path: &Path, mode: u32) -> io::Result<()> {
        self.push(Call::MkdirAll(path.to_path_buf(), mode))
    }
    fn touch(&self, path: &Path) -> io::Result<()> {
        self.push(Call::Touch(path.to_path_buf()))
    }
    fn symlink(&self, target: &Path, link: &Path) -> io::Result<()> {
        self.push(Call::Symlink(target.to_path_buf(), link.to_path_buf()))
    }
    fn sethostname(&self, name: &str) -> io::Result<()> {
        self.push(Call::Sethostname(name.to_string()))
    }
    fn loopback_up(&self) -> io::Result<()> {
        self.push(Call::LoopbackUp)
    }
    fn write_file(&self, path: &Path, content: &[u8], mode: u32) -> io::Result<()> {
        self.push(Call::WriteFile(path.to_path_buf(), content.to_vec(), mode))
    }
    fn unlink(&self, path: &Path) -> io::Result<()> {
        self.push(Call::Unlink(path.to_path_buf()))
    }
    fn mknod_char(&self, path: &Path, mode: u32, major: u64, minor: u64) -> io::Result<()> {
        self.push(Call::MknodChar(path.to_path_buf(), mode, major, minor))?;
        match self.mknod_errno {
            Some(errno) => Err(io::Error::from_raw_os_error(errno)),
            None => Ok(()),
        }
    }
    fn mknod_dev(&self, path: &Path, node: &DevNodeSpec) -> io::Result<()> {
        self.push(Call::MknodDev(path.to_path_buf(), *node))?;
        match self.mknod_errno {
            Some(errno) => Err(io::Error::from_raw_os_error(errno)),
            None => Ok(()),
        }
    }
    fn kind(&self, path: &Path) -> Option<FileKind> {
        if self.dirs.iter().any(|d| d == path) {
            Some(FileKind::Dir)
        } else if self.files.iter().any(|f| f == path) {
            Some(FileKind::Other)
        } else {
            None
        }
    }
}
