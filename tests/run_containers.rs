//! Docker's container habits (issue 16): `run -h`, `--net`, relative `-v`, `--network
//! container:NAME`, pause/unpause, top, start/restart. As root, on busybox images.

mod common;
mod run_fixtures;

use run_fixtures::{kiln, out, root_with_bb, Container};
use serde_json::json;

fn setup() -> tempfile::TempDir {
    root_with_bb(json!({"Cmd": ["sh"]}))
}

#[test]
fn hostname_short_flag_net_alias_and_relative_volume() {
    let root = setup();
    let r = root.path();
    // -h is the hostname (docker's), --help still prints help.
    assert_eq!(
        common::kiln_ok(r, &["run", "--rm", "-h", "myhost", "bb", "hostname"]),
        "myhost\n"
    );
    let help = common::kiln_ok(r, &["run", "--help"]);
    assert!(help.contains("--hostname") && help.contains("-h"), "{help}");
    // HOSTNAME is in the environment of the command and of exec, as docker's daemon puts it
    // (docker 28: `HOSTNAME=myhost`; on the host's network the host's name; -e wins).
    assert_eq!(
        common::kiln_ok(
            r,
            &[
                "run",
                "--rm",
                "-h",
                "myhost",
                "bb",
                "sh",
                "-c",
                "echo $HOSTNAME"
            ]
        ),
        "myhost\n"
    );
    let host = nix::unistd::gethostname().unwrap().into_string().unwrap();
    assert_eq!(
        common::kiln_ok(
            r,
            &[
                "run",
                "--rm",
                "--network=host",
                "bb",
                "sh",
                "-c",
                "hostname; echo $HOSTNAME; cat /etc/hostname"
            ]
        ),
        format!("{host}\n{host}\n{host}\n")
    );
    assert_eq!(
        common::kiln_ok(
            r,
            &[
                "run",
                "--rm",
                "-e",
                "HOSTNAME=given",
                "bb",
                "sh",
                "-c",
                "echo $HOSTNAME"
            ]
        ),
        "given\n"
    );
    common::kiln_ok(
        r,
        &[
            "run", "-d", "--name", "hn", "-h", "hnbox", "bb", "sleep", "60",
        ],
    );
    assert_eq!(
        common::kiln_ok(r, &["exec", "hn", "sh", "-c", "echo $HOSTNAME"]),
        "hnbox\n"
    );
    common::kiln_ok(r, &["rm", "-f", "hn"]);
    // --net is --network.
    let o = common::kiln_ok(
        r,
        &["run", "--rm", "--net", "host", "bb", "cat", "/proc/net/dev"],
    );
    let host = std::fs::read_to_string("/proc/net/dev").unwrap();
    assert_eq!(o.lines().count(), host.lines().count(), "{o}");
    let o = common::kiln_ok(
        r,
        &["run", "--rm", "--net=none", "bb", "cat", "/proc/net/dev"],
    );
    assert_eq!(o.lines().count(), 3, "only lo: {o}");
    // -v ./dir:/x is relative to the working directory, as docker's.
    let work = tempfile::tempdir().unwrap();
    std::fs::create_dir(work.path().join("data")).unwrap();
    std::fs::write(work.path().join("data/in.txt"), "from-host\n").unwrap();
    let o = common::kiln_command()
        .current_dir(work.path())
        .arg("--root")
        .arg(r)
        .args(["run", "--rm", "-v", "./data:/x", "bb", "sh", "-c"])
        .arg("cat /x/in.txt && echo written > /x/out.txt")
        .output()
        .unwrap();
    let (code, stdout, stderr) = out(&o);
    assert_eq!((code, stdout.as_str()), (0, "from-host\n"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(work.path().join("data/out.txt")).unwrap(),
        "written\n"
    );
}

#[test]
fn network_container_shares_the_apps_loopback() {
    let root = setup();
    let r = root.path();
    let app = Container::run(
        r,
        &[
            "--name",
            "app",
            "bb",
            "sh",
            "-c",
            "mkdir -p /www && echo hello-from-app > /www/index.html && \
             exec httpd -f -p 127.0.0.1:8080 -h /www",
        ],
    );
    // The test container reaches the app on localhost, with no bridge and no published port.
    let body = run_fixtures::eventually(10, || {
        let o = kiln(
            r,
            &[
                "run",
                "--rm",
                "--network",
                "container:app",
                "bb",
                "wget",
                "-qO-",
                "http://127.0.0.1:8080/",
            ],
        );
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
    })
    .expect("a container on the app's network reaches it on localhost");
    assert_eq!(body, "hello-from-app\n");
    // Same namespace: the same interfaces, and the app's hostname, as docker's.
    let o = common::kiln_ok(
        r,
        &["run", "--rm", "--net", "container:app", "bb", "hostname"],
    );
    assert_eq!(o.trim(), &app.id[..12]);
    let insp = {
        let o = common::kiln_ok(
            r,
            &[
                "run",
                "-d",
                "--network",
                &format!("container:{}", &app.id[..10]),
                "bb",
                "true",
            ],
        );
        let c = Container {
            root: r.to_path_buf(),
            id: o.trim().to_string(),
        };
        c.inspect()
    };
    assert_eq!(
        insp["HostConfig"]["NetworkMode"],
        format!("container:{}", app.id)
    );
    // Conflicting flags and a container that is not running: one clear error, exit 125.
    let (code, _, stderr) = out(&kiln(
        r,
        &[
            "run",
            "--rm",
            "--network",
            "container:app",
            "-p",
            "9000:80",
            "bb",
            "true",
        ],
    ));
    assert_eq!(code, 125, "{stderr}");
    assert!(stderr.contains("port publishing"), "{stderr}");
    let (code, _, stderr) = out(&kiln(
        r,
        &["run", "--rm", "--network", "container:nosuch", "bb", "true"],
    ));
    assert_eq!(code, 125, "{stderr}");
    assert!(stderr.contains("no such container: nosuch"), "{stderr}");
    common::kiln_ok(r, &["stop", "-t", "1", "app"]);
    let (code, _, stderr) = out(&kiln(
        r,
        &["run", "--rm", "--network", "container:app", "bb", "true"],
    ));
    assert_eq!(code, 125, "{stderr}");
    assert!(
        stderr.contains(
            "cannot join network namespace of a non running container: container app is exited"
        ),
        "{stderr}"
    );
}

fn read_counter(path: &std::path::Path) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .trim()
        .parse()
        .unwrap_or(0)
}

#[test]
fn pause_stops_a_counter_and_unpause_resumes_it() {
    let root = setup();
    let r = root.path();
    let data = tempfile::tempdir().unwrap();
    let counter = data.path().join("c");
    let vol = format!("{}:/out", data.path().display());
    let c = Container::run(
        r,
        &[
            "--name",
            "count",
            "-v",
            &vol,
            "bb",
            "sh",
            "-c",
            // PID 1: without a handler the kernel would drop stop's SIGTERM.
            "trap 'exit 143' TERM; i=0; while true; do i=$((i+1)); echo $i > /out/c.new; \
             mv /out/c.new /out/c; sleep 0.02; done",
        ],
    );
    run_fixtures::eventually(10, || (read_counter(&counter) > 3).then_some(()))
        .expect("the counter advances");
    assert_eq!(common::kiln_ok(r, &["pause", "count"]), "count\n");
    let ps = common::kiln_ok(r, &["ps"]);
    assert!(ps.contains("(Paused)"), "{ps}");
    let insp = c.inspect();
    assert_eq!(insp["State"]["Paused"], true);
    assert_eq!(insp["State"]["Status"], "paused");
    let frozen_at = read_counter(&counter);
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(read_counter(&counter), frozen_at, "a paused counter stays");
    // Twice is an error, as docker's; exec is refused while paused.
    let (code, _, stderr) = out(&kiln(r, &["pause", "count"]));
    assert_eq!(code, 1);
    assert!(stderr.contains("is already paused"), "{stderr}");
    let (code, _, stderr) = out(&kiln(r, &["exec", "count", "true"]));
    assert_ne!(code, 0);
    assert!(
        stderr.contains("unpause the container before exec"),
        "{stderr}"
    );
    assert_eq!(common::kiln_ok(r, &["unpause", "count"]), "count\n");
    run_fixtures::eventually(10, || {
        (read_counter(&counter) > frozen_at + 3).then_some(())
    })
    .expect("the counter advances again after unpause");
    assert!(!common::kiln_ok(r, &["ps"]).contains("(Paused)"));
    let (code, _, stderr) = out(&kiln(r, &["unpause", "count"]));
    assert_eq!(code, 1);
    assert!(stderr.contains("is not paused"), "{stderr}");
    // A paused container can be stopped (its stop signal arrives as it is thawed).
    common::kiln_ok(r, &["pause", "count"]);
    let t = std::time::Instant::now();
    assert_eq!(
        common::kiln_ok(r, &["stop", "-t", "20", "count"]),
        "count\n"
    );
    assert!(
        t.elapsed().as_secs() < 15,
        "stop used the stop signal, not the timeout"
    );
    assert_eq!(c.inspect()["State"]["Status"], "exited");
    // And killed: pause a fresh one, then rm -f.
    let c2 = Container::run(r, &["--name", "count2", "bb", "sleep", "1000"]);
    common::kiln_ok(r, &["pause", "count2"]);
    common::kiln_ok(r, &["rm", "-f", "count2"]);
    let (code, _, _) = out(&kiln(r, &["container", "inspect", &c2.id]));
    assert_ne!(code, 0, "removed");
    let (code, _, stderr) = out(&kiln(r, &["pause", "count"]));
    assert_eq!(code, 1);
    assert!(stderr.contains("is not running"), "{stderr}");
}

#[test]
fn top_lists_the_containers_processes_as_the_host_sees_them() {
    let root = setup();
    let r = root.path();
    let c = Container::run(
        r,
        &[
            "--name",
            "busy",
            "bb",
            "sh",
            "-c",
            "sleep 1001 & sleep 1002",
        ],
    );
    let top = run_fixtures::eventually(10, || {
        let o = common::kiln_ok(r, &["top", "busy"]);
        (o.contains("sleep 1001") && o.contains("sleep 1002")).then_some(o)
    })
    .expect("top shows both sleeps");
    let mut lines = top.lines();
    let header = lines.next().unwrap();
    assert!(
        header.starts_with("UID                 PID                 PPID"),
        "docker's layout: {top}"
    );
    assert!(header.trim_end().ends_with("CMD"), "{top}");
    // Host pids: each listed process is a real host process in the container's PID namespace.
    let init = c.inspect()["State"]["Pid"].as_i64().unwrap();
    let init_ns = std::fs::read_link(format!("/proc/{init}/ns/pid")).unwrap();
    let pids: Vec<i64> = lines
        .map(|l| l.split_whitespace().nth(1).unwrap().parse().unwrap())
        .collect();
    // PID 1 is sh, which execs its last command (sleep 1002), and sleep 1001.
    assert!(pids.len() >= 2, "two sleeps: {top}");
    for p in &pids {
        assert_eq!(
            std::fs::read_link(format!("/proc/{p}/ns/pid")).unwrap(),
            init_ns,
            "{top}"
        );
    }
    assert!(
        !top.contains("cargo") && !top.contains("run_containers"),
        "{top}"
    );
    // ps options, as docker's `top C -o pid,comm`.
    let o = common::kiln_ok(r, &["top", "busy", "-o", "pid,comm"]);
    assert!(o.starts_with("PID                 COMMAND\n"), "{o}");
    assert_eq!(
        o.lines().filter(|l| l.ends_with(" sleep")).count(),
        2,
        "{o}"
    );
    let (code, _, stderr) = out(&kiln(r, &["top", "busy", "-o", "comm"]));
    assert_eq!(code, 1);
    assert!(stderr.contains("PID field"), "{stderr}");
    common::kiln_ok(r, &["kill", "busy"]);
    common::kiln_ok(r, &["wait", "busy"]);
    let (code, _, stderr) = out(&kiln(r, &["top", "busy"]));
    assert_eq!(code, 1);
    assert!(stderr.contains("is not running"), "{stderr}");
}

#[test]
fn start_and_restart_keep_the_writable_layer() {
    let root = setup();
    let r = root.path();
    let c = Container::run(
        r,
        &[
            "--name",
            "keep",
            "bb",
            "sh",
            "-c",
            "echo run >> /etc/runs; echo runs=$(wc -l < /etc/runs); exit 3",
        ],
    );
    assert_eq!(common::kiln_ok(r, &["wait", "keep"]), "3\n");
    assert!(common::kiln_ok(r, &["logs", "keep"]).contains("runs=1"));
    // The overlay is gone while it is stopped, its upperdir kept with the container.
    let active = std::fs::read_dir(r.join("snapshots/active"))
        .unwrap()
        .count();
    assert_eq!(
        active, 0,
        "no mounted snapshot while the container is stopped"
    );
    assert!(r
        .join("containers")
        .join(&c.id)
        .join("upper/etc/runs")
        .exists());
    // start -a: attached, the container's output and exit code.
    let (code, stdout, stderr) = out(&kiln(r, &["start", "-a", "keep"]));
    assert_eq!((code, stdout.as_str()), (3, "runs=2\n"), "{stderr}");
    // start: detached, prints the name, as docker's.
    assert_eq!(common::kiln_ok(r, &["start", "keep"]), "keep\n");
    assert_eq!(common::kiln_ok(r, &["wait", "keep"]), "3\n");
    assert!(common::kiln_ok(r, &["logs", "keep"]).contains("runs=3"));
    let (code, _, stderr) = out(&kiln(r, &["start", "nosuch"]));
    assert_eq!(code, 1);
    assert!(stderr.contains("no such container: nosuch"), "{stderr}");

    // restart of a running container: stopped, then running again with its files.
    let s = Container::run(
        r,
        &[
            "--name",
            "svc",
            "bb",
            "sh",
            "-c",
            "echo run >> /runs; echo svc-runs=$(wc -l < /runs); exec sleep 1000",
        ],
    );
    let first_pid = s.inspect()["State"]["Pid"].as_i64().unwrap();
    assert_eq!(common::kiln_ok(r, &["restart", "-t", "1", "svc"]), "svc\n");
    let insp = s.inspect();
    assert_eq!(insp["State"]["Status"], "running");
    assert_ne!(insp["State"]["Pid"].as_i64().unwrap(), first_pid);
    run_fixtures::eventually(10, || {
        common::kiln_ok(r, &["logs", "svc"])
            .contains("svc-runs=2")
            .then_some(())
    })
    .expect("the restarted container saw its first run's file");
    // start of a running container changes nothing.
    assert_eq!(common::kiln_ok(r, &["start", "svc"]), "svc\n");
    assert_eq!(s.inspect()["State"]["Pid"], insp["State"]["Pid"]);
    common::kiln_ok(r, &["rm", "-f", "svc"]);
    assert!(!r.join("containers").join(&s.id).exists());
    // --rm containers keep nothing.
    common::kiln_ok(r, &["run", "--rm", "bb", "touch", "/x"]);
    assert_eq!(
        std::fs::read_dir(r.join("snapshots/active"))
            .unwrap()
            .count(),
        0
    );
}

/// `--log-opt max-size/max-file`: the json-file log rotates as docker's (`seq 1 1000` with 1k
/// files, two kept, shows 981..1000 in docker 28): `logs` shows a contiguous tail ending at the
/// last line, from at most max-file files each within max-size; `inspect` shows the options
/// as given. Options docker refuses, kiln refuses.
#[test]
fn log_opts_rotate_the_json_log() {
    let root = setup();
    let r = root.path();
    let c = Container::run(
        r,
        &[
            "--name",
            "chatty",
            "--log-opt",
            "max-size=1k",
            "--log-opt",
            "max-file=2",
            "bb",
            "seq",
            "1",
            "1000",
        ],
    );
    assert_eq!(common::kiln_ok(r, &["wait", "chatty"]), "0\n");
    let logs = common::kiln_ok(r, &["logs", "chatty"]);
    let shown: Vec<u32> = logs.lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(shown.last(), Some(&1000), "{logs}");
    assert!(
        shown.len() > 5 && shown.len() < 60,
        "{} lines kept",
        shown.len()
    );
    let first = shown[0];
    assert_eq!(shown, (first..=1000).collect::<Vec<_>>());
    let dir = r.join("containers").join(&c.id);
    let log = dir.join(format!("{}-json.log", c.id));
    for p in [log.clone(), dir.join(format!("{}-json.log.1", c.id))] {
        assert!(
            std::fs::metadata(&p).unwrap().len() <= 1024,
            "{}",
            p.display()
        );
    }
    assert!(!dir.join(format!("{}-json.log.2", c.id)).exists());
    assert_eq!(
        c.inspect()["HostConfig"]["LogConfig"],
        json!({"Type": "json-file", "Config": {"max-file": "2", "max-size": "1k"}})
    );
    assert_eq!(
        common::kiln_ok(r, &["logs", "--tail", "2", "chatty"]),
        "999\n1000\n"
    );
    for (bad, says) in [
        (
            "bogus=1",
            "unknown log opt 'bogus' for the json-file log driver",
        ),
        ("max-size=0", "must be more than 0"),
    ] {
        let (code, _, stderr) = out(&kiln(r, &["run", "--rm", "--log-opt", bad, "bb", "true"]));
        assert_eq!(code, 125, "{bad}");
        assert!(stderr.contains(says), "{bad}: {stderr}");
    }
    let (code, _, stderr) = out(&kiln(
        r,
        &["run", "--rm", "--log-driver", "syslog", "bb", "true"],
    ));
    assert_eq!(code, 125);
    assert!(stderr.contains("json-file logs only"), "{stderr}");
}

/// `--group-add` (docker's): supplementary groups of the container's user, for the command
/// and for `exec`, shown in inspect's `HostConfig.GroupAdd`; a name the image's /etc/group
/// lacks fails the start with docker's message (docker 28's answers, from docker-ref).
#[test]
fn group_add_gives_supplementary_groups_to_run_and_exec() {
    let root = setup();
    let r = root.path();
    assert_eq!(
        common::kiln_ok(
            r,
            &[
                "run",
                "--rm",
                "--group-add",
                "5",
                "--group-add",
                "1234",
                "bb",
                "id",
                "-G"
            ]
        ),
        "0 5 1234\n"
    );
    common::kiln_ok(
        r,
        &[
            "run",
            "-d",
            "--name",
            "ga",
            "--group-add",
            "77",
            "-u",
            "1000",
            "bb",
            "sleep",
            "60",
        ],
    );
    assert_eq!(common::kiln_ok(r, &["exec", "ga", "id", "-G"]), "0 77\n");
    assert_eq!(
        common::kiln_ok(r, &["inspect", "-f", "{{json .HostConfig.GroupAdd}}", "ga"]),
        "[\"77\"]\n"
    );
    common::kiln_ok(r, &["rm", "-f", "ga"]);
    let out = common::kiln(r, &["run", "--rm", "--group-add", "staff", "bb", "id"]);
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unable to find group staff: no matching entries in group file"),
        "{err}"
    );
}
