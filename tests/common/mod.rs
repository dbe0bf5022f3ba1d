//! Fixtures shared by the integration tests. Everything is made here, on this machine: a busybox
//! root filesystem from Debian's `busybox-static`, cached under `target/test-fixtures/`.
//!
//! Each test file uses what it needs; keep additions general (one file's private helpers belong
//! in that file).
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The kiln binary under test.
pub fn kiln_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kiln"))
}

/// A command for the kiln binary, set to refuse every registry that is not on loopback
/// (`KILN_LOOPBACK_REGISTRIES_ONLY`): this machine reaches no public registry, so a test that
/// would FROM or pull a name that is not local fails at once, saying so, instead of waiting on
/// Docker Hub. Every test starts kiln through this (or `kiln`/`kiln_ok`).
pub fn kiln_command() -> Command {
    let mut cmd = Command::new(kiln_bin());
    cmd.env("KILN_LOOPBACK_REGISTRIES_ONLY", "1");
    cmd
}

/// Runs `kiln --root ROOT ARGS...` and returns its output (never panics on a non-zero exit).
pub fn kiln(root: &Path, args: &[&str]) -> Output {
    kiln_command()
        .arg("--root")
        .arg(root)
        .args(args)
        .output()
        .expect("spawn kiln")
}

/// Like `kiln`, but panics with stdout and stderr when the command fails.
pub fn kiln_ok(root: &Path, args: &[&str]) -> String {
    let out = kiln(root, args);
    assert!(
        out.status.success(),
        "kiln {:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        args,
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Panics unless the tests run as root, as CI does: these tests drive real mounts and namespaces.
pub fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this test needs root (real mounts and namespaces); run the suite as root, as CI does"
    );
}

fn fixtures_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-fixtures");
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// A static C program built once per machine into target/test-fixtures/NAME, from `source`
/// (the program's text) with `cc -O2 -static` and `flags`; safe to call from concurrent tests.
pub fn static_c_binary(name: &str, source: &str, flags: &[&str]) -> PathBuf {
    let dir = fixtures_dir();
    let bin = dir.join(name);
    if bin.exists() {
        return bin;
    }
    // Unique per caller: tests of one process build it concurrently.
    let work = tempfile::Builder::new()
        .prefix(&format!("{name}."))
        .tempdir_in(&dir)
        .unwrap();
    let src = work.path().join(format!("{name}.c"));
    fs::write(&src, source).unwrap();
    let tmp = work.path().join(name);
    let out = Command::new("cc")
        .args(["-O2", "-static"])
        .args(flags)
        .arg("-o")
        .arg(&tmp)
        .arg(&src)
        .output()
        .expect("cc is needed by these tests (apt-get install gcc libc6-dev)");
    assert!(
        out.status.success(),
        "building {name} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::rename(&tmp, &bin).unwrap();
    bin
}

/// A busybox root filesystem directory (read-only by convention: copy it before changing it).
/// Built once per machine from /bin/busybox; safe to call from concurrent test processes.
pub fn busybox_rootfs() -> PathBuf {
    let dir = fixtures_dir().join("busybox-rootfs");
    if dir.join(".complete").exists() {
        return dir;
    }
    let tmp = tempfile::Builder::new()
        .prefix("busybox-rootfs.")
        .tempdir_in(fixtures_dir())
        .unwrap();
    let root = tmp.path();
    for d in [
        "bin", "etc", "tmp", "root", "proc", "sys", "dev", "home", "var",
    ] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.exists(),
        "/bin/busybox is missing: apt-get install busybox-static"
    );
    fs::copy(busybox, root.join("bin/busybox")).unwrap();
    let list = Command::new(busybox).arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" && !applet.is_empty() {
            symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
    }
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n",
    )
    .unwrap();
    fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::write(root.join(".complete"), "").unwrap();
    let kept = tmp.keep();
    // Another process may have won the race; either copy is complete and identical.
    if fs::rename(&kept, &dir).is_err() {
        let _ = fs::remove_dir_all(&kept);
    }
    dir
}

/// The busybox root filesystem as an uncompressed tarball (sorted, mtime 0, numeric owners), the
/// way `../shared/tools/reference-env` makes its busybox.tar.
pub fn busybox_tar() -> PathBuf {
    let tar = fixtures_dir().join("busybox.tar");
    if tar.exists() {
        return tar;
    }
    let rootfs = busybox_rootfs();
    // Unique per process and thread: tests of one binary run on threads of one process, and
    // several may make the fixture at once.
    let tmp = fixtures_dir().join(format!(
        "busybox.tar.{}.{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let status = Command::new("tar")
        .args([
            "--sort=name",
            "--mtime=@0",
            "--numeric-owner",
            "--exclude=./.complete",
            "-C",
        ])
        .arg(&rootfs)
        .arg("-cf")
        .arg(&tmp)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success(), "tar of the busybox rootfs failed");
    fs::rename(&tmp, &tar).unwrap();
    tar
}

/// A fresh, empty kiln root for one test.
pub fn temp_root() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("kiln-test-root.")
        .tempdir()
        .unwrap()
}
