//! Red-team probes (testdata/isolation/probes.sh) run inside `kiln run` with the host's / bound
//! read-only at /host, compared with Docker 28's answers to the same probes
//! (testdata/isolation/docker-answers.txt, recorded by testdata/isolation/record-docker.sh with
//! `docker run --network=none`). One test per probe group; each lists every probe whose verdict
//! differs from Docker's. As root.
//!
//! To add a probe: add it to probes.sh, record Docker's answers again, and (for a new group) add
//! a test below calling `assert_group_matches_docker`.

mod build_support;
mod common;
mod run_fixtures;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use run_fixtures::busybox_image;
use serde_json::json;

fn testdata() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/isolation")
}

/// NAME -> VERDICT from probe output or the answers file (comments and blank lines skipped).
fn verdicts(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?.to_string(), f.next().unwrap_or("").to_string()))
        })
        .collect()
}

/// Docker's answers for the probes of `group` (names start with `GROUP-`).
fn docker_answers(group: &str) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(testdata().join("docker-answers.txt")).unwrap();
    let prefix = format!("{group}-");
    let answers: BTreeMap<_, _> = verdicts(&text)
        .into_iter()
        .filter(|(name, _)| name.starts_with(&prefix))
        .collect();
    assert!(
        !answers.is_empty(),
        "docker-answers.txt has no {group} probes"
    );
    answers
}

/// The static syscall probe (testdata/isolation/syscall-probe.c), built once per machine.
fn syscall_probe() -> PathBuf {
    let source = std::fs::read_to_string(testdata().join("syscall-probe.c")).unwrap();
    common::static_c_binary("syscall-probe", &source, &[])
}

/// Runs probes.sh GROUP in `kiln run --rm -v /:/host:ro` on a local busybox image.
fn kiln_answers(group: &str) -> (String, BTreeMap<String, String>) {
    common::require_root();
    let root = common::temp_root();
    busybox_image(root.path(), "probe", json!({"Cmd": ["sh"]}));
    // The probes directory as the container sees it: the script, and the syscall probe.
    let probes = tempfile::tempdir().unwrap();
    std::fs::copy(
        testdata().join("probes.sh"),
        probes.path().join("probes.sh"),
    )
    .unwrap();
    if group == "seccomp" {
        std::fs::create_dir(probes.path().join("bin")).unwrap();
        std::fs::copy(syscall_probe(), probes.path().join("bin/syscall-probe")).unwrap();
    }
    let probes_bind = format!("{}:/probes:ro", probes.path().display());
    let out = common::kiln(
        root.path(),
        &[
            "run",
            "--rm",
            "--network",
            "none",
            "-v",
            "/:/host:ro",
            "-v",
            &probes_bind,
            "probe",
            "sh",
            "/probes/probes.sh",
            group,
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "kiln run of the {group} probes failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let v = verdicts(&stdout);
    (stdout, v)
}

/// Every probe of `group` gives Docker's verdict under kiln, and kiln ran no probe Docker did
/// not answer.
fn assert_group_matches_docker(group: &str) {
    let (raw, kiln) = kiln_answers(group);
    assert_answers_match_docker(group, &raw, &kiln);
}

fn assert_answers_match_docker(group: &str, raw: &str, kiln: &BTreeMap<String, String>) {
    let docker = docker_answers(group);
    let mut diffs = Vec::new();
    for (name, want) in &docker {
        match kiln.get(name) {
            Some(got) if got == want => {}
            Some(got) => diffs.push(format!("{name}: docker {want}, kiln {got}")),
            None => diffs.push(format!("{name}: docker {want}, kiln gave no answer")),
        }
    }
    for name in kiln.keys().filter(|n| !docker.contains_key(*n)) {
        diffs.push(format!(
            "{name}: not in docker-answers.txt (record again with record-docker.sh)"
        ));
    }
    assert!(
        diffs.is_empty(),
        "{} {group} probe(s) differ from Docker's answers:\n  {}\nkiln's output:\n{raw}",
        diffs.len(),
        diffs.join("\n  ")
    );
}

#[test]
fn capability_sets_match_docker() {
    assert_group_matches_docker("caps");
}

#[test]
fn proc_sys_writes_match_docker() {
    assert_group_matches_docker("proc");
}

#[test]
fn sys_writes_match_docker() {
    assert_group_matches_docker("sys");
}

#[test]
fn mount_attempts_match_docker() {
    assert_group_matches_docker("mount");
}

#[test]
fn device_mknod_and_open_match_docker() {
    assert_group_matches_docker("dev");
}

#[test]
fn writes_under_a_readonly_bind_of_root_match_docker() {
    assert_group_matches_docker("robind");
}

#[test]
fn seccomp_probes_match_docker() {
    assert_group_matches_docker("seccomp");
}

/// The device cgroup on its own (v1 `devices` controller, or v2's device program): the host's
/// /dev bound in (a bind keeps the host mount's flags, so nodev does not apply) still gives only
/// Docker's default devices. Without any device cgroup, binds are nodev and nothing opens.
#[test]
fn device_cgroup_guards_host_devices_reached_through_a_bind() {
    common::require_root();
    let root = common::temp_root();
    busybox_image(root.path(), "probe", json!({"Cmd": ["sh"]}));
    let out = common::kiln_ok(
        root.path(),
        &[
            "run",
            "--rm",
            "-v",
            "/dev:/hostdev",
            "probe",
            "sh",
            "-c",
            "for d in kvm loop-control loop0 fuse tty1 hwrng kmsg; do \
               [ -e /hostdev/$d ] && { ( exec 3</hostdev/$d ) 2>/dev/null && echo OPENED $d; }; \
             done; ( exec 3<>/hostdev/null ) && echo null-ok; grep devices /proc/self/cgroup",
        ],
    );
    assert!(!out.contains("OPENED"), "host devices opened: {out}");
    let v1_devices = std::path::Path::new("/sys/fs/cgroup/devices/devices.allow").exists();
    if v1_devices {
        assert!(out.contains("null-ok"), "default devices open: {out}");
        assert!(
            out.contains(":devices:/kiln/"),
            "in a kiln devices cgroup: {out}"
        );
    }
}

/// The v2 device program, live: attached to a new cgroup in a cgroup2 hierarchy (the unified
/// one, or /sys/fs/cgroup/unified on a hybrid v1 machine like this one, where the kernel runs
/// cgroup2 device programs too), a shell moved into it cannot open /dev/kvm but can /dev/null.
#[test]
fn v2_device_program_denies_all_but_the_default_devices() {
    common::require_root();
    let base = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .map(std::path::Path::new)
        .find(|p| p.join("cgroup.procs").exists() && p.join("cgroup.subtree_control").exists())
        .expect("a cgroup2 hierarchy (/sys/fs/cgroup or /sys/fs/cgroup/unified)");
    /// Removes the test's cgroup (empty once the shell has exited) however the test ends.
    struct CgroupDir(PathBuf);
    impl Drop for CgroupDir {
        fn drop(&mut self) {
            for _ in 0..100 {
                if std::fs::remove_dir(&self.0).is_ok() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let dir = CgroupDir(base.join(format!("kiln-test-devprog.{}.{nanos}", std::process::id())));
    std::fs::create_dir(&dir.0).unwrap();
    kiln::sandbox::device_filter::attach(&dir.0, kiln::sandbox::cgroup::DEFAULT_DEVICES).unwrap();
    let procs = dir.0.join("cgroup.procs");
    let out = Command::new("sh")
        .arg("-c")
        .arg(
            "echo $$ > \"$1\" || exit 9; \
             for d in kvm loop-control loop0 fuse hwrng kmsg; do \
               [ -e /dev/$d ] && { ( exec 3</dev/$d ) 2>/dev/null && echo OPENED $d || echo denied $d; }; \
             done; ( exec 3<>/dev/null ) && echo null-ok; ( exec 3</dev/urandom ) && echo urandom-ok",
        )
        .arg("sh")
        .arg(&procs)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    drop(dir);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(!text.contains("OPENED"), "{text}");
    assert!(text.contains("denied kvm"), "{text}");
    assert!(
        text.contains("null-ok") && text.contains("urandom-ok"),
        "{text}"
    );
}

/// RUN steps get the same sandbox: the device probes answer as Docker's, and a read-only
/// `RUN --mount=type=bind` is read-only below its top too (a tmpfs mounted inside the context).
#[test]
fn build_run_steps_get_the_device_rules_and_recursive_read_only_binds() {
    let root = build_support::root_with_busybox();
    let probes = std::fs::read_to_string(testdata().join("probes.sh")).unwrap();
    let ctx = build_support::context(&[
        (
            "Dockerfile",
            "FROM busybox:latest\n\
             RUN --mount=type=bind,target=/probes sh /probes/probes.sh dev > /dev-answers\n\
             RUN --mount=type=bind,target=/ctx sh -c 'if touch /ctx/sub/x 2>/dev/null; \
                 then echo writable; else echo read-only; fi > /bind-answer'\n",
        ),
        ("probes.sh", &probes),
        ("sub/.keep", ""),
    ]);
    let sub = ctx.path().join("sub");
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "kiln-test", sub.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(st.success(), "mount a tmpfs in the context");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(sub.clone());
    build_support::build_ok(root.path(), &["-t", "probed", ctx.path().to_str().unwrap()]);
    assert!(!sub.join("x").exists(), "the build wrote into the context");
    let fs = build_support::rootfs_of(root.path(), "probed");
    let bind = std::fs::read_to_string(fs.path().join("bind-answer")).unwrap();
    assert_eq!(bind.trim(), "read-only");
    let raw = std::fs::read_to_string(fs.path().join("dev-answers")).unwrap();
    assert_answers_match_docker("dev", &raw, &verdicts(&raw));
}
