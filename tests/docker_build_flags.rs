//! `kiln build`'s docker flags for RUN steps: `--add-host`, `--shm-size`, `--ulimit`, with
//! Docker 28.5's answers to the same build (testdata/docker/build-run-settings.txt).

mod common;

#[test]
fn add_host_shm_size_and_ulimit_reach_run_steps_as_in_docker() {
    common::require_root();
    let root = common::temp_root();
    let r = root.path();
    let tar = common::busybox_tar();
    common::kiln_ok(
        r,
        &["import", "-q", tar.to_str().unwrap(), "busybox:latest"],
    );
    let ctx = r.join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM busybox\nRUN cat /etc/hosts; df -k /dev/shm | tail -1; ulimit -n; ulimit -Hn\n",
    )
    .unwrap();
    let run = |extra: &[&str]| -> Vec<String> {
        let mut args = vec!["build", "--progress", "plain", "--no-cache"];
        args.extend(extra);
        args.push(ctx.to_str().unwrap());
        let out = common::kiln(r, &args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        // The step's output lines without `#N 0.123 `, as docker's are compared.
        stderr
            .lines()
            .filter(|l| l.starts_with("#2 0.") || l.starts_with("#2 1."))
            .map(|l| l.splitn(3, ' ').nth(2).unwrap().to_string())
            .collect()
    };
    let lines = run(&[
        "--add-host",
        "db:127.0.0.2",
        "--add-host",
        "v6=::1",
        "--shm-size",
        "128m",
        "--ulimit",
        "nofile=100:200",
    ]);
    assert_eq!(
        lines[..4],
        [
            "127.0.0.1\tlocalhost buildkitsandbox",
            "::1\tlocalhost ip6-localhost ip6-loopback",
            "127.0.0.2\tdb",
            "::1\tv6"
        ]
    );
    let shm: Vec<&str> = lines[4].split_whitespace().collect();
    assert_eq!(shm[1], "131072", "{}", lines[4]);
    assert_eq!(lines[5..], ["100", "200"]);
    // Without them: docker's defaults (64 MiB of /dev/shm, no extra hosts).
    let lines = run(&[]);
    assert_eq!(lines.len(), 5, "{lines:?}");
    let shm: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(shm[1], "65536", "{}", lines[2]);
    // Bad values: one error each, before anything is built (exit 1).
    for (flag, value, msg) in [
        (
            "--ulimit",
            "nofile=200:100",
            "soft limit must be less than or equal",
        ),
        ("--ulimit", "nofiles=1", "invalid ulimit type \"nofiles\""),
        ("--add-host", "db", "expected HOST:IP"),
        ("--add-host", "db:host-gateway", "no host gateway"),
        ("--shm-size", "lots", "--shm-size"),
    ] {
        let out = common::kiln(r, &["build", flag, value, ctx.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{flag} {value}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(msg), "{flag} {value}: {stderr}");
        assert!(!stderr.contains("#1 "), "{flag} {value}: started: {stderr}");
    }
}
