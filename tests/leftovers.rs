//! Nothing left behind: what a killed kiln leaves (an overlay still mounted, a half-written
//! `kiln save -o` file) is cleaned by the next kiln, and never while its owner still runs.

mod build_support;
mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

fn mounts_under(dir: &Path) -> usize {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| Path::new(m).starts_with(dir))
        .count()
}

fn active_snapshots(root: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(root.join("snapshots/active"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Starts `kiln build` of a Dockerfile whose RUN step sleeps `secs` and then writes /done.
fn start_sleeping_build(root: &Path, secs: u32) -> (Child, tempfile::TempDir) {
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!("FROM busybox:latest\nRUN sleep {secs} && echo ok > /done\n"),
    )
    .unwrap();
    let child = common::kiln_command()
        .arg("--root")
        .arg(root)
        .args(["build", "-q", "-t", "slept"])
        .arg(ctx.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    (child, ctx)
}

#[test]
fn a_build_killed_during_run_is_cleaned_by_kiln_images() {
    let root = build_support::root_with_busybox();
    let r = root.path();
    let (mut build, _ctx) = start_sleeping_build(r, 1000);
    wait_for("the RUN step's overlay", 30, || mounts_under(r) > 0);
    build.kill().unwrap(); // SIGKILL: no cleanup code runs
    build.wait().unwrap();
    assert!(mounts_under(r) > 0, "a SIGKILL leaves the overlay mounted");
    assert!(!active_snapshots(r).is_empty());

    common::kiln_ok(r, &["images"]);
    assert_eq!(mounts_under(r), 0, "kiln images unmounted the overlay");
    assert_eq!(active_snapshots(r), Vec::<PathBuf>::new());
}

#[test]
fn commands_during_a_build_leave_its_snapshot_alone() {
    let root = build_support::root_with_busybox();
    let r = root.path();
    let (build, _ctx) = start_sleeping_build(r, 2);
    wait_for("the RUN step's overlay", 30, || mounts_under(r) > 0);
    let held = active_snapshots(r);
    for args in [
        &["images"][..],
        &["ps", "-a"],
        &["volume", "ls"],
        &["images", "-q"],
    ] {
        common::kiln_ok(r, args);
    }
    assert!(
        mounts_under(r) > 0,
        "the live build's overlay is still mounted"
    );
    assert!(held.iter().all(|d| d.exists()), "and its snapshot is there");
    let out = build.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the build finished: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rootfs = build_support::rootfs_of(r, "slept");
    assert_eq!(
        std::fs::read_to_string(rootfs.path().join("done")).unwrap(),
        "ok\n"
    );
}

/// A root with `big:1`: busybox plus 48 MiB that does not compress, so that saving it takes
/// long enough to be killed half-way.
fn root_with_a_big_image() -> tempfile::TempDir {
    let root = build_support::root_with_busybox();
    let ctx = tempfile::tempdir().unwrap();
    let mut data = vec![0u8; 48 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    std::fs::write(ctx.path().join("blob"), data).unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM busybox:latest\nCOPY blob /\n",
    )
    .unwrap();
    common::kiln_ok(
        root.path(),
        &["build", "-q", "-t", "big:1", ctx.path().to_str().unwrap()],
    );
    root
}

fn save_temps(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".kiln-save."))
        .collect();
    names.sort();
    names
}

/// Starts `kiln save -o DIR/big.tar big:1` and sends `signal` once its temp file is there.
/// Returns the temp file's name, or `None` when the save finished first.
fn interrupted_save(root: &Path, dir: &Path, signal: i32) -> Option<String> {
    let mut save = common::kiln_command()
        .arg("--root")
        .arg(root)
        .args(["save", "-q", "--compression", "none", "-o"])
        .arg(dir.join("big.tar"))
        .arg("big:1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let temp = loop {
        if let Some(t) = save_temps(dir).pop() {
            break Some(t);
        }
        if save.try_wait().unwrap().is_some() {
            break None;
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(save.id() as i32, signal) };
    save.wait().unwrap();
    let finished = dir.join("big.tar").exists();
    let _ = std::fs::remove_file(dir.join("big.tar"));
    let temp = temp.filter(|_| !finished)?;
    assert!(
        temp.starts_with(&format!(".kiln-save.{}-", save.id())),
        "the temp name carries the owner's pid and start time: {temp}"
    );
    Some(temp)
}

#[test]
fn a_killed_save_leaves_a_temp_file_that_the_next_save_there_removes() {
    let root = root_with_a_big_image();
    let r = root.path();
    let out = tempfile::tempdir().unwrap();
    let killed = (0..5)
        .find_map(|_| interrupted_save(r, out.path(), libc::SIGKILL))
        .expect("a save was killed before it finished");
    assert_eq!(save_temps(out.path()), vec![killed.clone()], "left behind");

    // A live save's file, and files of an older kiln (no owner in the name): a fresh one might
    // be a live save's, one untouched for two days is not.
    let me = std::process::id();
    let my_start = kiln::owner::start_time(me as i32).unwrap();
    let live = format!(".kiln-save.{me}-{my_start}.abc123");
    std::fs::write(out.path().join(&live), "live").unwrap();
    std::fs::write(out.path().join(".kiln-save.Xy12Ab"), "recent").unwrap();
    let old = out.path().join(".kiln-save.Qq34Zz");
    std::fs::write(&old, "old").unwrap();
    let two_days_ago = std::time::SystemTime::now() - Duration::from_secs(2 * 24 * 3600);
    std::fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(two_days_ago)
        .unwrap();

    let out_tar = out.path().join("small.tar");
    let saved = common::kiln(
        r,
        &["save", "-o", out_tar.to_str().unwrap(), "busybox:latest"],
    );
    assert!(saved.status.success());
    let stderr = String::from_utf8_lossy(&saved.stderr);
    assert!(
        stderr.contains("removed 2 temporary files of killed saves"),
        "{stderr}"
    );
    assert!(std::fs::metadata(&out_tar).unwrap().size() > 0);
    let mut want = vec![live, ".kiln-save.Xy12Ab".to_string()];
    want.sort();
    assert_eq!(save_temps(out.path()), want, "only dead owners' files went");
}

#[test]
fn a_save_stopped_by_sigterm_removes_its_temp_file() {
    let root = root_with_a_big_image();
    let out = tempfile::tempdir().unwrap();
    (0..5)
        .find_map(|_| interrupted_save(root.path(), out.path(), libc::SIGTERM))
        .expect("a save was stopped before it finished");
    assert_eq!(save_temps(out.path()), Vec::<String>::new());
}
