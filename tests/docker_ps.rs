//! `kiln ps` with docker's `--filter`, `-n`, `-l` and `-s`, checked against Docker 28.5's
//! answers to the same command lines (testdata/docker/ps-filters.txt).

mod common;

use std::path::Path;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn names(root: &Path, args: &[&str]) -> String {
    let mut full = vec!["ps", "--format", "{{.Names}}"];
    full.extend(args);
    common::kiln_ok(root, &full)
        .lines()
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn ps_filters_last_latest_and_size_as_docker() {
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
    std::fs::write(ctx.join("Dockerfile"), "FROM busybox\nLABEL a=b\n").unwrap();
    common::kiln_ok(r, &["build", "-q", "-t", "app:1", ctx.to_str().unwrap()]);
    let out = common::kiln(
        r,
        &[
            "run",
            "--name",
            "c1",
            "app:1",
            "sh",
            "-c",
            "echo hello > /f; exit 3",
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    common::kiln_ok(r, &["run", "--name", "c2", "busybox", "true"]);
    common::kiln_ok(
        r,
        &[
            "run", "-d", "--name", "c3", "-l", "a=over", "-l", "tier=web", "app:1", "sleep", "60",
        ],
    );

    assert_eq!(names(r, &["-a"]), "c3 c2 c1");
    assert_eq!(names(r, &["-a", "--filter", "status=exited"]), "c2 c1");
    // status= looks at every container without -a; exited= alone does not.
    assert_eq!(names(r, &["--filter", "status=exited"]), "c2 c1");
    assert_eq!(names(r, &["--filter", "exited=3"]), "");
    assert_eq!(names(r, &["-a", "--filter", "exited=3"]), "c1");
    assert_eq!(names(r, &["-a", "-f", "exited=0"]), "c2");
    assert_eq!(names(r, &["-a", "-f", "status=running"]), "c3");
    assert_eq!(
        names(r, &["-a", "-f", "status=exited", "-f", "status=running"]),
        "c3 c2 c1"
    );
    // name= is a regular expression found anywhere in the name.
    assert_eq!(names(r, &["-a", "-f", "name=^c[12]$"]), "c2 c1");
    assert_eq!(names(r, &["-a", "-f", "name=3"]), "c3");
    // label= reads the labels the container carries: its image's, with its --label over them.
    assert_eq!(names(r, &["-a", "-f", "label=a=b"]), "c1");
    assert_eq!(names(r, &["-a", "-f", "label=a=over"]), "c3");
    assert_eq!(names(r, &["-a", "-f", "label=a"]), "c3 c1");
    assert_eq!(names(r, &["-a", "-f", "label=tier=web"]), "c3");
    assert_eq!(names(r, &["-a", "-f", "label=a=c"]), "");
    // {{.Labels}} and docker's {{.Label "key"}} method.
    assert_eq!(
        common::kiln_ok(
            r,
            &[
                "ps",
                "-a",
                "--format",
                r#"{{.Names}}:{{.Label "tier"}}:{{.Label "a"}}:{{.Labels}}"#
            ]
        ),
        "c3:web:over:a=over,tier=web\nc2:::\nc1::b:a=b\n"
    );
    assert_eq!(names(r, &["-f", "ancestor=app:1"]), "c3");
    assert_eq!(names(r, &["-a", "-f", "ancestor=busybox"]), "c2");
    assert_eq!(names(r, &["-a", "-f", "ancestor=nosuch"]), "");
    assert_eq!(
        names(r, &["-a", "-f", "ancestor=app:1", "-f", "status=exited"]),
        "c1"
    );
    assert_eq!(names(r, &["-a", "-f", "since=c1"]), "c3 c2");
    assert_eq!(names(r, &["-a", "-f", "before=c2"]), "c1");
    let id = common::kiln_ok(r, &["ps", "-a", "-q", "--no-trunc", "-f", "name=c2"]);
    assert_eq!(names(r, &["-a", "-f", &format!("id={}", &id[..6])]), "c2");
    // -n N and -l: the last created, whatever their state.
    assert_eq!(names(r, &["-n", "2"]), "c3 c2");
    assert_eq!(names(r, &["-l"]), "c3");
    assert_eq!(names(r, &["-n", "1", "-f", "status=exited"]), "c2");

    // -s: SIZE after NAMES, the writable layer (6 bytes of /f) and virtual with the image.
    let table = common::kiln_ok(r, &["ps", "-a", "-s"]);
    let mut lines = table.lines();
    assert!(lines.next().unwrap().ends_with("NAMES     SIZE"), "{table}");
    let rows: Vec<&str> = lines.collect();
    assert!(
        rows[2].ends_with("c1        6B (virtual 1.98MB)"),
        "{table}"
    );
    assert!(
        rows[1].ends_with("c2        0B (virtual 1.98MB)"),
        "{table}"
    );
    // docker's COMMAND column quotes an argument with a space, then cuts at 20 characters.
    assert!(rows[2].contains("\"sh -c 'echo hello >…\""), "{table}");
    let size = common::kiln_ok(
        r,
        &["ps", "-a", "-s", "-f", "name=c1", "--format", "{{.Size}}"],
    );
    assert_eq!(size, "6B (virtual 1.98MB)\n");

    // Errors as docker's: a bad value or key exits 1 with docker's words, `-f x` is 125.
    for (f, msg) in [
        (
            "status=foo",
            "invalid filter 'status=foo': invalid value for state (foo): must be one of created, \
             running, paused, restarting, removing, exited, dead",
        ),
        ("bogus=1", "invalid filter 'bogus'"),
        ("exited=x", "invalid filter 'exited=x'"),
    ] {
        let out = common::kiln(r, &["ps", "-a", "--filter", f]);
        assert_eq!(out.status.code(), Some(1), "{f}");
        assert!(
            text(&out.stderr).contains(msg),
            "{f}: {}",
            text(&out.stderr)
        );
    }
    let out = common::kiln(r, &["ps", "--filter", "x"]);
    assert_eq!(out.status.code(), Some(125));
    common::kiln_ok(r, &["rm", "-f", "c1", "c2", "c3"]);
}

/// `stats --format` as docker's: its fields (`json` keys as Docker 28.5 printed them for a
/// `sleep` container: BlockIO CPUPerc Container ID MemPerc MemUsage Name NetIO PIDs), `table`
/// headers, `Container` as given on the command line.
#[test]
fn stats_templates() {
    common::require_root();
    let root = common::temp_root();
    let r = root.path();
    let tar = common::busybox_tar();
    common::kiln_ok(
        r,
        &["import", "-q", tar.to_str().unwrap(), "busybox:latest"],
    );
    common::kiln_ok(r, &["run", "-d", "--name", "s1", "busybox", "sleep", "60"]);
    let table = common::kiln_ok(
        r,
        &[
            "stats",
            "--no-stream",
            "--format",
            r"table {{.Name}}\t{{.Container}}\t{{.PIDs}}",
            "s1",
        ],
    );
    // docker: `NAME      CONTAINER   PIDS\nh15f-s1   h15f-s1     1` (kiln's init is a process
    // of the container too).
    let mut lines = table.lines();
    assert_eq!(lines.next().unwrap(), "NAME      CONTAINER   PIDS");
    assert!(
        lines.next().unwrap().starts_with("s1        s1          "),
        "{table}"
    );
    let json = common::kiln_ok(r, &["stats", "--no-stream", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
    assert_eq!(
        keys.join(" "),
        "BlockIO CPUPerc Container ID MemPerc MemUsage Name NetIO PIDs"
    );
    assert_eq!(v["Name"], "s1");
    // Not named on the command line: Container is the ID, as docker's.
    assert_eq!(v["Container"], v["ID"]);
    assert!(v["MemUsage"].as_str().unwrap().contains(" / "), "{v}");
    common::kiln_ok(r, &["rm", "-f", "s1"]);
}
