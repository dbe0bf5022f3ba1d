//! Nothing left behind: what a killed kiln leaves (an overlay still mounted) is cleaned by the
//! next kiln, and never while its owner still runs.

mod build_support;
mod common;

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
