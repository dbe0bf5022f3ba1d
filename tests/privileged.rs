//! Privileged executions (issue 12): a build's `RUN --security=insecure`, granted by `kiln build
//! --allow security.insecure` (BuildKit's entitlement), and `kiln run|create|exec --privileged`
//! (docker's): every capability kiln holds, no seccomp filter, /proc and /sys unmasked and
//! writable, the host's devices.
mod build_support;
mod common;

use build_support::*;

/// The CapEff line a process with every capability kiln holds shows.
fn full_caps() -> String {
    format!("{:016x}", kiln::sandbox::caps::all_held())
}

fn cap_eff(status: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap_or_else(|| panic!("no CapEff in {status:?}"))
        .trim()
        .to_string()
}

fn read(dir: &tempfile::TempDir, path: &str) -> String {
    std::fs::read_to_string(dir.path().join(path)).unwrap()
}

#[test]
fn insecure_run_has_every_capability_only_when_allowed() {
    let root = root_with_busybox();
    let insecure = context(&[(
        "Dockerfile",
        "FROM busybox\nRUN --security=insecure cat /proc/self/status > /status\n",
    )]);
    let c = insecure.path().to_str().unwrap();

    // Refused without the entitlement, with BuildKit's words, the line and what to do.
    let out = build(root.path(), &["-t", "ins", c]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("Dockerfile:2"), "{err}");
    assert!(err.contains("security.insecure is not allowed"), "{err}");
    assert!(err.contains("--allow security.insecure"), "{err}");

    build_ok(
        root.path(),
        &["--allow", "security.insecure", "-t", "ins", c],
    );
    let fs = rootfs_of(root.path(), "ins");
    let status = read(&fs, "status");
    assert_eq!(cap_eff(&status), full_caps(), "{status}");
    assert!(status.contains("Seccomp:\t0"), "{status}");

    // The same command in the default sandbox is another step (the flag is in the key): it
    // runs again and gets Docker's 14 capabilities, even with --allow.
    let sandbox = context(&[(
        "Dockerfile",
        "FROM busybox\nRUN --security=sandbox cat /proc/self/status > /status\n",
    )]);
    let (_, log) = build_ok(
        root.path(),
        &[
            "--allow",
            "security.insecure",
            "-t",
            "sb",
            sandbox.path().to_str().unwrap(),
        ],
    );
    assert!(!log.contains("CACHED"), "{log}");
    let status = read(&rootfs_of(root.path(), "sb"), "status");
    assert_eq!(
        cap_eff(&status),
        format!("{:016x}", kiln::sandbox::caps::default_mask())
    );
    assert!(status.contains("Seccomp:\t2"), "{status}");

    // And the insecure step is a hit the second time.
    let (_, log) = build_ok(
        root.path(),
        &["--allow", "security.insecure", "-t", "ins", c],
    );
    assert!(log.contains("CACHED"), "{log}");

    // Another user keeps them too, as ambient capabilities (BuildKit's insecure spec sets
    // every set); in the default sandbox that user has none.
    let user = context(&[(
        "Dockerfile",
        "FROM busybox\nUSER nobody\nRUN --security=insecure cat /proc/self/status > /tmp/ins\n\
         RUN cat /proc/self/status > /tmp/sb\n",
    )]);
    build_ok(
        root.path(),
        &[
            "--allow",
            "security.insecure",
            "-t",
            "user",
            user.path().to_str().unwrap(),
        ],
    );
    let fs = rootfs_of(root.path(), "user");
    assert_eq!(cap_eff(&read(&fs, "tmp/ins")), full_caps());
    assert_eq!(cap_eff(&read(&fs, "tmp/sb")), "0000000000000000");

    // Unknown entitlements are refused.
    let out = build(root.path(), &["--allow", "security.unsafe", c]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("unknown entitlement security.unsafe"),
        "{err}"
    );
}

#[test]
fn a_tmpfs_mounts_in_an_insecure_run_and_not_in_the_sandbox() {
    let root = root_with_busybox();
    let script = "mkdir -p /m && mount -t tmpfs none /m && echo hi > /m/f && \
                  grep ' /m tmpfs' /proc/mounts > /mounted && umount /m && \
                  grep -E ' /sys sysfs rw' /proc/mounts > /sys-rw && \
                  ls /dev/loop-control /dev/net/tun /dev/fuse > /devices";
    let insecure = context(&[(
        "Dockerfile",
        &format!("FROM busybox\nRUN --security=insecure {script}\n"),
    )]);
    build_ok(
        root.path(),
        &[
            "--allow",
            "security.insecure",
            "-t",
            "m",
            insecure.path().to_str().unwrap(),
        ],
    );
    let fs = rootfs_of(root.path(), "m");
    assert!(read(&fs, "mounted").contains("tmpfs"));
    assert!(read(&fs, "sys-rw").contains("sysfs"));
    assert_eq!(
        read(&fs, "devices"),
        "/dev/fuse\n/dev/loop-control\n/dev/net/tun\n"
    );
    // What the tmpfs held went with it: only the mount point is in the layer.
    assert!(!fs.path().join("m/f").exists());

    let sandbox = context(&[("Dockerfile", &format!("FROM busybox\nRUN {script}\n"))]);
    let out = build(root.path(), &[sandbox.path().to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "mount must fail in the sandbox: {err}"
    );
    assert!(err.contains("Dockerfile:2"), "{err}");
}

#[test]
fn run_create_and_exec_privileged_as_docker() {
    let root = root_with_busybox();
    let r = root.path();
    // The hostname is the container's own (its UTS namespace): a harmless /proc/sys write.
    let probe = "grep -E '^(CapEff|Seccomp):' /proc/self/status; \
                 mkdir -p /m && mount -t tmpfs none /m && echo mounted; \
                 grep -E ' /sys sysfs rw' /proc/mounts >/dev/null && echo sys-rw; \
                 test -c /dev/net/tun && echo tun; \
                 echo probe > /proc/sys/kernel/hostname 2>/dev/null || echo proc-sys-read-only";
    let out = common::kiln(
        r,
        &["run", "--rm", "--privileged", "busybox", "sh", "-c", probe],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{:?}", out);
    assert_eq!(cap_eff(&text), full_caps(), "{text}");
    assert!(text.contains("Seccomp:\t0"), "{text}");
    assert!(text.contains("mounted\nsys-rw\n"), "{text}");
    // docker's --privileged brings every host device: the host's tun, where it has one.
    if std::path::Path::new("/dev/net/tun").exists() {
        assert!(text.contains("tun\n"), "{text}");
    }
    assert!(!text.contains("proc-sys-read-only"), "{text}");

    let out = common::kiln(r, &["run", "--rm", "busybox", "sh", "-c", probe]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        cap_eff(&text),
        format!("{:016x}", kiln::sandbox::caps::default_mask())
    );
    assert!(text.contains("Seccomp:\t2"), "{text}");
    assert!(
        !text.contains("mounted") && !text.contains("sys-rw"),
        "{text}"
    );
    assert!(text.contains("proc-sys-read-only"), "{text}");

    // create --privileged is kept with the container (inspect shows it) and applied at start.
    let created = common::kiln_ok(
        r,
        &[
            "create",
            "--privileged",
            "busybox",
            "grep",
            "CapEff",
            "/proc/self/status",
        ],
    );
    let id = created.trim();
    let shown = common::kiln_ok(r, &["inspect", "-f", "{{.HostConfig.Privileged}}", id]);
    assert_eq!(shown.trim(), "true");
    let started = common::kiln_ok(r, &["start", "-a", id]);
    assert_eq!(cap_eff(&started), full_caps());
    common::kiln_ok(r, &["rm", id]);

    // exec --privileged into an ordinary container: every capability, its filter kept (as
    // docker's exec).
    let id = common::kiln_ok(r, &["run", "-d", "busybox", "sleep", "60"]);
    let id = id.trim();
    let status = common::kiln_ok(r, &["exec", "--privileged", id, "cat", "/proc/self/status"]);
    assert_eq!(cap_eff(&status), full_caps());
    assert!(status.contains("Seccomp:\t2"), "{status}");
    let status = common::kiln_ok(r, &["exec", id, "cat", "/proc/self/status"]);
    assert_eq!(
        cap_eff(&status),
        format!("{:016x}", kiln::sandbox::caps::default_mask())
    );
    common::kiln_ok(r, &["rm", "-f", id]);
}
