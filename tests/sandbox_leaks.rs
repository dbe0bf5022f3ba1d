//! 200 executions in a loop leave no mounts, processes, cgroups or directories behind.

mod common;

use kiln::sandbox::{self, ExecSpec, Resources, Stdio};
use kiln::snapshot::{PrepareOptions, Snapshotter};

/// Mounts at or below `under` (field 5 of mountinfo is the mount point). Counting only this
/// test's own root keeps other tests that mount things at the same time out of the count.
fn mount_count(under: &std::path::Path) -> usize {
    let under = under.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| {
            l.split(' ')
                .nth(4)
                .is_some_and(|mp| mp.starts_with(under.as_str()))
        })
        .count()
}

/// Processes whose parent is this test process, and sandbox inits descended from it, so other
/// tests' sandboxes running at the same time do not count.
fn our_processes() -> (usize, usize) {
    let me = std::process::id().to_string();
    let (mut children, mut inits) = (0, 0);
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(e.path().join("status")) else {
            continue;
        };
        if status.lines().any(|l| l == format!("PPid:\t{me}")) {
            children += 1;
        }
        // An init's parent is the setup process this test forked (inits are killed with their
        // parent through PR_SET_PDEATHSIG, so a leaked one still hangs below this test).
        if status.lines().next() == Some("Name:\tkiln-init") {
            let ppid_of = |s: &str| {
                s.lines()
                    .find_map(|l| l.strip_prefix("PPid:\t"))
                    .unwrap_or("0")
                    .to_string()
            };
            let parent = ppid_of(&status);
            let grandparent = ppid_of(
                &std::fs::read_to_string(format!("/proc/{parent}/status")).unwrap_or_default(),
            );
            if parent == me || grandparent == me {
                inits += 1;
            }
        }
    }
    (children, inits)
}

fn our_cgroups() -> Vec<String> {
    let prefix = format!("{}.", std::process::id());
    let mut found = Vec::new();
    for c in ["memory", "cpu", "cpuset", "pids", "unified", ""] {
        let dir = std::path::Path::new("/sys/fs/cgroup").join(c).join("kiln");
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with(&prefix) {
                    found.push(e.path().display().to_string());
                }
            }
        }
    }
    found
}

#[test]
fn two_hundred_executions_leave_nothing_behind() {
    common::require_root();
    let root = common::temp_root();
    let snapshotter = Snapshotter::new(root.path()).unwrap();
    let lower = common::busybox_rootfs();
    let mounts_before = mount_count(root.path());
    let (_, inits_before) = our_processes();
    for i in 0..200 {
        let snap = snapshotter
            .prepare(
                std::slice::from_ref(&lower),
                &PrepareOptions { volatile: true },
            )
            .unwrap();
        let mut spec = ExecSpec::new(
            snap.merged(),
            ["/bin/sh", "-c", "echo $0 > /tmp/out; sleep 0 & true"],
        );
        spec.stdout = Stdio::Null;
        if i % 2 == 0 {
            spec.resources = Resources {
                memory_bytes: Some(64 << 20),
                pids_limit: Some(64),
                ..Default::default()
            };
        }
        let exit = sandbox::run(&spec).unwrap();
        assert_eq!(exit.code, 0);
        if i % 3 == 0 {
            snap.release().unwrap();
        } else {
            drop(snap);
        }
    }
    assert_eq!(mount_count(root.path()), mounts_before, "no mounts left");
    let (children, inits) = our_processes();
    assert_eq!(children, 0, "no child processes left");
    assert_eq!(inits, inits_before, "no sandbox inits left");
    assert!(
        our_cgroups().is_empty(),
        "no cgroups left: {:?}",
        our_cgroups()
    );
    let active: Vec<_> = std::fs::read_dir(root.path().join("snapshots/active"))
        .unwrap()
        .collect();
    assert!(active.is_empty(), "no snapshot directories left");
    assert!(
        !lower.join("tmp/out").exists(),
        "the lower layer is untouched"
    );
}
