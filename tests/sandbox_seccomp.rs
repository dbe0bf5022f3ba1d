//! seccomp in real sandboxes, as root: `kiln run` (default, unconfined, a custom profile),
//! `kiln exec`, and build RUN steps give the answers Docker gives to the same probes
//! (testdata/seccomp/docker-answers.txt, recorded by testdata/seccomp/record-docker.sh).
//! The probes are a static C program (testdata/seccomp/probe.c) built with gcc.

mod common;
mod run_fixtures;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use run_fixtures::{busybox_image_with, kiln, Container};
use serde_json::json;

/// The script run in the container, by kiln here and by Docker in record-docker.sh (which
/// reads it from this line: keep it one line, without double quotes or backslashes).
const PROBE_SCRIPT: &str = "grep '^Seccomp:' /proc/self/status | awk '{print $1 $2}'; for p in keyctl add_key io_uring_setup unshare_user unshare_mount clone_newuser clone_fork clone3 mount_tmpfs personality_exec socket_vsock socket_inet mkdir; do /probe $p; done; unshare -U true 2>/dev/null; echo unshare-U exit=$?; mkdir /tmp/d 2>/dev/null; echo mkdir exit=$?; ls / >/dev/null; echo ls exit=$?";

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/seccomp")
        .join(name)
}

/// The probe program, built once per test process.
fn probe_binary() -> &'static Path {
    static PROBE: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &PROBE
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let bin = dir.path().join("probe");
            let out = Command::new("gcc")
                .args(["-static", "-O2", "-o"])
                .arg(&bin)
                .arg(testdata("probe.c"))
                .output()
                .expect("gcc is needed for the seccomp probes: apt-get install gcc libc6-dev");
            assert!(
                out.status.success(),
                "gcc failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            (dir, bin)
        })
        .1
}

/// A kiln root with image `probe`: busybox plus /probe.
fn setup() -> tempfile::TempDir {
    common::require_root();
    let root = common::temp_root();
    busybox_image_with(
        root.path(),
        "probe",
        json!({"Cmd": ["sh"]}),
        &[(probe_binary(), "/probe")],
    );
    root
}

/// Docker's recorded answers for one mode.
fn docker_answers(mode: &str) -> Vec<String> {
    let text = std::fs::read_to_string(testdata("docker-answers.txt")).unwrap();
    let mut lines = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        if let Some(m) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = m == mode;
            continue;
        }
        if inside {
            lines.push(line.to_string());
        }
    }
    assert!(
        !lines.is_empty(),
        "no [{mode}] answers in docker-answers.txt"
    );
    lines
}

fn kiln_answers(root: &Path, opts: &[&str]) -> Vec<String> {
    let mut args = vec!["run", "--rm"];
    args.extend_from_slice(opts);
    args.extend_from_slice(&["probe", "sh", "-c", PROBE_SCRIPT]);
    let o = kiln(root, &args);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "kiln {args:?}: {}\n{stdout}",
        String::from_utf8_lossy(&o.stderr)
    );
    stdout.lines().map(str::to_string).collect()
}

fn assert_same(kiln: &[String], docker: &[String]) {
    assert_eq!(
        kiln.len(),
        docker.len(),
        "kiln:\n{}\ndocker:\n{}",
        kiln.join("\n"),
        docker.join("\n")
    );
    for (k, d) in kiln.iter().zip(docker) {
        assert_eq!(
            k,
            d,
            "kiln:\n{}\ndocker:\n{}",
            kiln.join("\n"),
            docker.join("\n")
        );
    }
}

#[test]
fn default_profile_answers_as_docker_does() {
    let root = setup();
    let answers = kiln_answers(root.path(), &[]);
    // The headline answers, spelled out: filtered; keyrings, io_uring, user namespaces and
    // mounts refused (EPERM); clone3 ENOSYS; a plain fork, sockets, mkdir and ls work.
    for want in [
        "Seccomp:2",
        "keyctl errno=1",
        "add_key errno=1",
        "io_uring_setup errno=1",
        "unshare_user errno=1",
        "clone_newuser errno=1",
        "clone3 errno=38",
        "clone_fork ok",
        "socket_inet ok",
        "unshare-U exit=1",
        "mkdir exit=0",
        "ls exit=0",
    ] {
        assert!(answers.iter().any(|a| a == want), "{want:?} in {answers:?}");
    }
    assert_same(&answers, &docker_answers("default"));
}

#[test]
fn unconfined_answers_as_docker_does() {
    let root = setup();
    let answers = kiln_answers(root.path(), &["--security-opt", "seccomp=unconfined"]);
    assert!(answers.iter().any(|a| a == "Seccomp:0"), "{answers:?}");
    assert_same(&answers, &docker_answers("unconfined"));
}

#[test]
fn custom_profile_that_denies_mkdir_answers_as_docker_does() {
    let root = setup();
    let opt = format!("seccomp={}", testdata("deny-mkdir.json").display());
    let answers = kiln_answers(root.path(), &["--security-opt", &opt]);
    assert!(answers.iter().any(|a| a == "mkdir exit=1"), "{answers:?}");
    assert!(answers.iter().any(|a| a == "keyctl ok"), "{answers:?}");
    assert_same(&answers, &docker_answers("deny-mkdir"));
}

#[test]
fn bad_profiles_and_unknown_security_opts_are_clear_errors() {
    let root = setup();
    let r = root.path();
    let bad = r.join("bad.json");
    std::fs::write(
        &bad,
        r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQUALS"}]}]}"#,
    )
    .unwrap();
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            format!("seccomp={}", bad.display()),
            vec![
                bad.to_str().unwrap(),
                "is not valid",
                "syscalls[0]: args[0]: unknown comparison \"SCMP_CMP_EQUALS\"",
            ],
        ),
        (
            format!("seccomp={}", r.join("missing.json").display()),
            vec![
                "reading the seccomp profile",
                "missing.json",
                "No such file",
            ],
        ),
        (
            "systempaths=unconfined".to_string(),
            vec!["unsupported --security-opt \"systempaths=unconfined\""],
        ),
    ];
    for (opt, wants) in cases {
        let o = kiln(r, &["run", "--rm", "--security-opt", &opt, "probe", "true"]);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(125), "{opt}: {stderr}");
        for w in wants {
            assert!(stderr.contains(w), "{opt}: {w:?} in {stderr}");
        }
    }
    // Nothing was created for the refused runs.
    let ps = common::kiln_ok(r, &["ps", "-a", "-q"]);
    assert_eq!(ps.trim(), "", "no container records: {ps}");
}

#[test]
fn exec_applies_the_containers_filter() {
    let root = setup();
    let r = root.path();
    let seccomp_of = |c: &Container| {
        let o = kiln(r, &["exec", &c.id, "/probe", "keyctl", "mkdir"]);
        let status = kiln(
            r,
            &["exec", &c.id, "grep", "^Seccomp:", "/proc/self/status"],
        );
        (
            String::from_utf8_lossy(&status.stdout)
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    };
    let confined = Container::run(r, &["probe", "sleep", "60"]);
    let (status, probes) = seccomp_of(&confined);
    assert_eq!(status, "Seccomp: 2");
    assert_eq!(probes, "keyctl errno=1\nmkdir ok\n");

    let opt = format!("seccomp={}", testdata("deny-mkdir.json").display());
    let custom = Container::run(r, &["--security-opt", &opt, "probe", "sleep", "60"]);
    let (status, probes) = seccomp_of(&custom);
    assert_eq!(status, "Seccomp: 2");
    assert_eq!(probes, "keyctl ok\nmkdir errno=1\n");

    let unconfined = Container::run(
        r,
        &[
            "--security-opt",
            "seccomp=unconfined",
            "probe",
            "sleep",
            "60",
        ],
    );
    let (status, _) = seccomp_of(&unconfined);
    assert_eq!(status, "Seccomp: 0");
}

#[test]
fn build_run_steps_get_the_default_profile() {
    let root = setup();
    let r = root.path();
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM probe\n\
         RUN mkdir -p /out && ls / > /dev/null && echo built > /out/ordinary\n\
         RUN grep '^Seccomp:' /proc/self/status | awk '{print $1 $2}' > /out/answers \
         && /probe keyctl io_uring_setup unshare_user clone3 >> /out/answers\n",
    )
    .unwrap();
    let dest = tempfile::tempdir().unwrap();
    let output = format!("type=local,dest={}", dest.path().display());
    let o = kiln(r, &["build", "-o", &output, ctx.path().to_str().unwrap()]);
    assert!(
        o.status.success(),
        "kiln build: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let read = |p: &str| std::fs::read_to_string(dest.path().join(p)).unwrap();
    assert_eq!(read("out/ordinary"), "built\n");
    assert_eq!(
        read("out/answers"),
        "Seccomp:2\nkeyctl errno=1\nio_uring_setup errno=1\nunshare_user errno=1\nclone3 errno=38\n"
    );
}
