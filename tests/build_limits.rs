//! RUN steps run under cgroup limits (issue 11): `kiln build --pids-limit`, `--memory`, the
//! `[build]` table of the config file, and a default pids limit, so a fork bomb in a Dockerfile
//! cannot take the machine down.
mod build_support;
mod common;

use build_support::*;

/// Starts 40 sleeping children at once; fails when the pids limit refuses a fork.
const MANY_PROCESSES: &str =
    "FROM busybox\nRUN for i in $(seq 40); do sleep 3 & done; wait && echo all-forked > /ok\n";

fn build_with_env(
    root: &std::path::Path,
    env: &[(&str, &str)],
    args: &[&str],
) -> std::process::Output {
    let mut cmd = common::kiln_command();
    cmd.arg("--root")
        .arg(root)
        .args(["build", "--progress", "plain"])
        .args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[test]
fn pids_limit_bounds_run_steps_from_the_flag_and_the_config() {
    let root = root_with_busybox();
    let ctx = context(&[("Dockerfile", MANY_PROCESSES)]);
    let c = ctx.path().to_str().unwrap();

    let out = build(root.path(), &["--no-cache", "--pids-limit", "10", c]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "40 processes under a limit of 10 should fail: {err}"
    );
    assert!(err.contains("Dockerfile:2"), "{err}");

    // The default (4096) leaves room for ordinary builds.
    build_ok(root.path(), &["--no-cache", "-t", "many", c]);

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "[build]\npids-limit = 10\n").unwrap();
    let cfg = config.to_str().unwrap();
    let out = build_with_env(root.path(), &[("KILN_CONFIG", cfg)], &["--no-cache", c]);
    assert!(!out.status.success(), "the config's pids-limit applies");
    // The flag wins over the config; -1 is no limit.
    let out = build_with_env(
        root.path(),
        &[("KILN_CONFIG", cfg)],
        &["--no-cache", "--pids-limit", "-1", c],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    std::fs::write(&config, "[build]\npids = 10\n").unwrap();
    let out = build_with_env(root.path(), &[("KILN_CONFIG", cfg)], &[c]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("[build]"), "{err}");
}

#[test]
fn memory_limit_oom_kills_a_run_step() {
    let root = root_with_busybox();
    // dd allocates its 64 MiB block at once.
    let ctx = context(&[(
        "Dockerfile",
        "FROM busybox\nRUN dd if=/dev/zero of=/dev/null bs=64M count=2\n",
    )]);
    let c = ctx.path().to_str().unwrap();
    let out = build(root.path(), &["--memory", "16m", c]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("out of memory") || err.contains("137"),
        "{err}"
    );
    build_ok(root.path(), &["--memory", "512m", c]);
    let out = build(root.path(), &["--memory", "lots", c]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--memory"), "{err}");
}
