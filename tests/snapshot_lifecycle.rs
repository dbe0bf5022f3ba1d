//! Snapshot lifecycle, as root: many lower layers, release, recovery after a killed kiln,
//! cleanup on SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use kiln::sandbox::{self, ExecSpec};
use kiln::snapshot::{self, PrepareOptions, Snapshotter};

fn mounts_under(dir: &Path) -> usize {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| Path::new(m).starts_with(dir))
        .count()
}

#[test]
fn many_layers_with_long_paths_mount_past_the_option_page_limit() {
    common::require_root();
    let root = common::temp_root();
    let layers = tempfile::tempdir().unwrap();
    let mut lowers = vec![common::busybox_rootfs()];
    let long = "x".repeat(80);
    for i in 0..150 {
        let l = layers.path().join(format!("{long}-layer-{i:03}"));
        std::fs::create_dir_all(l.join("layers")).unwrap();
        std::fs::write(l.join("which"), format!("{i}\n")).unwrap();
        std::fs::write(l.join(format!("layers/{i}")), "").unwrap();
    }
    for i in 0..150 {
        lowers.push(layers.path().join(format!("{long}-layer-{i:03}")));
    }
    let total: usize = lowers.iter().map(|l| l.as_os_str().len() + 1).sum();
    assert!(
        total > 4096,
        "the lowerdir option alone exceeds a page: {total}"
    );
    let snap = Snapshotter::new(root.path())
        .unwrap()
        .prepare(&lowers, &PrepareOptions::default())
        .unwrap();
    let (exit, out, err) = sandbox::output(&ExecSpec::new(
        snap.merged(),
        ["/bin/sh", "-c", "cat /which; ls /layers | wc -l"],
    ))
    .unwrap();
    assert_eq!(exit.code, 0, "{}", String::from_utf8_lossy(&err));
    assert_eq!(
        String::from_utf8_lossy(&out),
        "149\n150\n",
        "the last layer is on top"
    );
    let merged = snap.merged();
    snap.release().unwrap();
    assert!(!merged.exists());
    assert_eq!(mounts_under(root.path()), 0);
}

#[test]
fn empty_lower_list_gives_an_empty_writable_root() {
    common::require_root();
    let root = common::temp_root();
    let snap = Snapshotter::new(root.path())
        .unwrap()
        .prepare(&[], &PrepareOptions::default())
        .unwrap();
    std::fs::write(snap.merged().join("f"), "x").unwrap();
    assert_eq!(
        snap.changes().unwrap(),
        vec![kiln::oci::change::Change::Upsert(PathBuf::from("f"))]
    );
}

#[test]
fn recover_leaves_live_snapshots_alone() {
    common::require_root();
    let root = common::temp_root();
    let snap = Snapshotter::new(root.path())
        .unwrap()
        .prepare(&[common::busybox_rootfs()], &PrepareOptions::default())
        .unwrap();
    assert_eq!(snapshot::recover(root.path()).unwrap(), 0);
    assert!(snap.merged().join("bin/busybox").exists());
}

/// Not a test on its own: the child process of the two tests below. It prepares a snapshot,
/// starts a sandboxed `sleep` with a cgroup, prints the init pid and waits to be killed.
#[test]
#[ignore]
fn helper_hold_a_snapshot_and_a_sandbox() {
    let Ok(root) = std::env::var("KILN_TEST_HELPER_ROOT") else {
        return;
    };
    let snap = Snapshotter::new(Path::new(&root))
        .unwrap()
        .prepare(
            &[common::busybox_rootfs()],
            &PrepareOptions { volatile: true },
        )
        .unwrap();
    let mut spec = ExecSpec::new(snap.merged(), ["/bin/sleep", "1000"]);
    spec.resources.pids_limit = Some(10);
    let running = sandbox::spawn(&spec).unwrap();
    println!("ready {}", running.pid());
    std::thread::sleep(std::time::Duration::from_secs(1000));
}

/// Starts the helper; returns it and the container init's pid.
fn start_helper(root: &Path) -> (std::process::Child, i32) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "helper_hold_a_snapshot_and_a_sandbox",
            "--ignored",
            "--nocapture",
        ])
        .env("KILN_TEST_HELPER_ROOT", root)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let init = loop {
        let line = lines.next().expect("helper output").unwrap();
        if let Some(pid) = line.strip_prefix("ready ") {
            break pid.trim().parse::<i32>().unwrap();
        }
    };
    (child, init)
}

fn wait_gone(pid: i32) -> bool {
    for _ in 0..200 {
        // SAFETY: kill with signal 0 only checks for existence.
        if unsafe { libc::kill(pid, 0) } != 0 {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    false
}

fn kiln_cgroups_of(pid: u32) -> Vec<PathBuf> {
    let prefix = format!("{pid}.");
    [
        "freezer", "memory", "cpu", "cpuacct", "cpuset", "pids", "blkio", "devices", "",
    ]
    .iter()
    .filter_map(|c| std::fs::read_dir(Path::new("/sys/fs/cgroup").join(c).join("kiln")).ok())
    .flat_map(|d| d.flatten())
    .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
    .map(|e| e.path())
    .collect()
}

/// Kills the helper with SIGKILL (no cleanup code runs) and checks what it leaves: the overlay
/// mounted under `root`. Returns the helper's cgroups, seen while it lived.
///
/// Its cgroups are left too, until some kiln recovers them: the test's own recovery, or any
/// other kiln process that starts meanwhile on this machine (cgroups of every kiln share
/// `/sys/fs/cgroup/<controller>/kiln/`, and each kiln removes those whose owner is gone). So
/// the tests assert they are there while the helper lives and gone after a recovery, never
/// that they are still there in between.
fn start_and_sigkill_helper(root: &Path) -> Vec<PathBuf> {
    let (mut child, init) = start_helper(root);
    assert!(mounts_under(root) > 0);
    let cgroups = kiln_cgroups_of(child.id());
    assert!(
        !cgroups.is_empty(),
        "the helper's execution has a cgroup, kept while the helper lives"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(wait_gone(init), "the container died with kiln (PDEATHSIG)");
    assert!(
        mounts_under(root) > 0,
        "a SIGKILL leaves the overlay mounted"
    );
    cgroups
}

#[test]
fn sigkill_leftovers_are_recovered_at_the_next_start() {
    common::require_root();
    let root = common::temp_root();
    let cgroups = start_and_sigkill_helper(root.path());

    assert_eq!(snapshot::recover(root.path()).unwrap(), 1);
    sandbox::recover();
    assert_eq!(mounts_under(root.path()), 0);
    let active: Vec<_> = std::fs::read_dir(root.path().join("snapshots/active"))
        .unwrap()
        .collect();
    assert!(active.is_empty());
    let left: Vec<_> = cgroups.iter().filter(|c| c.exists()).collect();
    assert!(left.is_empty(), "cgroups left: {left:?}");
}

/// Not only a build: every command that opens the store cleans what a killed kiln left (as
/// they empty `tmp/`).
#[test]
fn sigkill_leftovers_are_recovered_by_any_command() {
    common::require_root();
    for cmd in [&["images"][..], &["ps", "-a"], &["volume", "ls"]] {
        let root = common::temp_root();
        let cgroups = start_and_sigkill_helper(root.path());
        common::kiln_ok(root.path(), cmd);
        assert_eq!(mounts_under(root.path()), 0, "kiln {cmd:?} unmounted it");
        let active: Vec<_> = std::fs::read_dir(root.path().join("snapshots/active"))
            .unwrap()
            .collect();
        assert!(active.is_empty(), "kiln {cmd:?} removed it: {active:?}");
        let left: Vec<_> = cgroups.iter().filter(|c| c.exists()).collect();
        assert!(left.is_empty(), "cgroups left after kiln {cmd:?}: {left:?}");
    }
}

#[test]
fn sigterm_unmounts_and_kills_the_container_before_exiting() {
    common::require_root();
    let root = common::temp_root();
    let (mut child, init) = start_helper(root.path());
    let helper_pid = child.id();
    // SAFETY: sending SIGTERM to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGTERM)
    );
    assert!(wait_gone(init));
    assert_eq!(
        mounts_under(root.path()),
        0,
        "unmounted by the SIGTERM cleanup"
    );
    let active: Vec<_> = std::fs::read_dir(root.path().join("snapshots/active"))
        .unwrap()
        .collect();
    assert!(active.is_empty());
    assert!(kiln_cgroups_of(helper_pid).is_empty());
}

/// Every kiln command recovers at start-up now, so recovery runs while other kilns prepare
/// snapshots: it must never take a snapshot whose owner is still setting it up.
#[test]
fn recovery_running_beside_prepare_never_takes_a_live_snapshot() {
    common::require_root();
    let root = common::temp_root();
    let snapshotter = Snapshotter::new(root.path()).unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    /// Stops the recovering thread even when the preparing side panics (else the scope hangs).
    struct Stop<'a>(&'a std::sync::atomic::AtomicBool);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
    std::thread::scope(|s| {
        let recovering = s.spawn(|| {
            let mut taken = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                taken += snapshot::recover(root.path()).unwrap();
            }
            taken
        });
        let stop = Stop(&done);
        for _ in 0..300 {
            let snap = snapshotter
                .prepare(&[], &PrepareOptions::default())
                .expect("prepare beside a recovery");
            std::fs::write(snap.merged().join("f"), "x").expect("the snapshot is still mounted");
            snap.release()
                .expect("the snapshot is still there to release");
        }
        drop(stop);
        assert_eq!(
            recovering.join().unwrap(),
            0,
            "recovery took a live snapshot"
        );
    });
}
