//! A container's files and life as a docker user drives them (issue 16, lifecycle): cp both
//! ways, diff, export, commit, create/start, rename, restart policies, update. As root, on
//! busybox images.

mod common;
mod registry_support;
mod run_fixtures;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use run_fixtures::{kiln, out, root_with_bb, Container};
use serde_json::json;

fn setup() -> tempfile::TempDir {
    root_with_bb(json!({"Cmd": ["sh"]}))
}

fn ok(root: &Path, args: &[&str]) -> String {
    common::kiln_ok(root, args)
}

/// kiln fails with an error mentioning `needle`.
fn fails(root: &Path, args: &[&str], needle: &str) {
    let (code, stdout, stderr) = out(&kiln(root, args));
    assert_ne!(code, 0, "kiln {args:?} succeeded: {stdout}");
    assert!(stderr.contains(needle), "kiln {args:?}: {stderr}");
}

#[test]
fn cp_out_of_and_into_a_stopped_container_keeps_modes_and_owners() {
    let root = setup();
    let r = root.path();
    ok(
        r,
        &[
            "run",
            "--name",
            "src",
            "bb",
            "sh",
            "-c",
            "mkdir -p /data/sub && echo one > /data/a && echo two > /data/sub/b && \
             chown 1234:2345 /data/a && chmod 640 /data/a && ln -s a /data/link",
        ],
    );
    let host = tempfile::tempdir().unwrap();
    let h = host.path();
    // A directory onto a missing name is created with that name; owners are the caller's.
    ok(r, &["cp", "src:/data", h.join("copy").to_str().unwrap()]);
    let a = std::fs::symlink_metadata(h.join("copy/a")).unwrap();
    assert_eq!(std::fs::read_to_string(h.join("copy/a")).unwrap(), "one\n");
    assert_eq!(a.permissions().mode() & 0o7777, 0o640);
    assert_eq!((a.uid(), a.gid()), (0, 0));
    assert_eq!(
        std::fs::read_to_string(h.join("copy/sub/b")).unwrap(),
        "two\n"
    );
    assert_eq!(
        std::fs::read_link(h.join("copy/link")).unwrap(),
        Path::new("a")
    );
    // -a keeps the container's owners; onto an existing directory it goes inside.
    ok(r, &["cp", "-a", "src:/data", h.to_str().unwrap()]);
    let a = std::fs::metadata(h.join("data/a")).unwrap();
    assert_eq!((a.uid(), a.gid()), (1234, 2345));
    // -L follows the symlink SRC is; without it the link itself is copied.
    ok(
        r,
        &["cp", "src:/data/link", h.join("nolink").to_str().unwrap()],
    );
    assert!(std::fs::symlink_metadata(h.join("nolink"))
        .unwrap()
        .file_type()
        .is_symlink());
    ok(
        r,
        &[
            "cp",
            "-L",
            "src:/data/link",
            h.join("followed").to_str().unwrap(),
        ],
    );
    assert_eq!(
        std::fs::read_to_string(h.join("followed")).unwrap(),
        "one\n"
    );
    // SRC/. copies the content into an existing directory.
    std::fs::create_dir(h.join("content")).unwrap();
    ok(
        r,
        &["cp", "src:/data/.", h.join("content").to_str().unwrap()],
    );
    assert!(h.join("content/sub/b").is_file() && !h.join("content/data").exists());

    // Into the stopped container: a file with its mode, owned by the container's root unless -a.
    let f = h.join("script.sh");
    std::fs::write(&f, "echo from-host\n").unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o751)).unwrap();
    std::os::unix::fs::chown(&f, Some(4321), Some(4321)).unwrap();
    ok(r, &["cp", f.to_str().unwrap(), "src:/data/"]);
    ok(r, &["cp", "-a", f.to_str().unwrap(), "src:/data/kept.sh"]);
    // The container's writable layer has them, as they were copied.
    let listing = {
        let tar = kiln(r, &["cp", "src:/data", "-"]);
        assert!(tar.status.success());
        let list = std::process::Command::new("tar")
            .args(["tvf", "-", "--numeric-owner"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        let mut list = list;
        list.stdin.take().unwrap().write_all(&tar.stdout).unwrap();
        String::from_utf8(list.wait_with_output().unwrap().stdout).unwrap()
    };
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("-rwxr-x--x 0/0") && l.ends_with("data/script.sh")),
        "{listing}"
    );
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("-rwxr-x--x 4321/4321") && l.ends_with("data/kept.sh")),
        "{listing}"
    );
    // Errors say what is wrong.
    fails(
        r,
        &["cp", "src:/nope", h.to_str().unwrap()],
        "could not find /nope",
    );
    fails(
        r,
        &["cp", f.to_str().unwrap(), "src:/no/such/dir/"],
        "does not exist",
    );
    fails(r, &["cp", "/etc/hostname", "/tmp/x"], "CONTAINER:PATH");
}

#[test]
fn cp_into_a_running_container_and_tar_streams() {
    let root = setup();
    let r = root.path();
    let c = Container::run(r, &["--name", "live", "bb", "sleep", "300"]);
    let host = tempfile::tempdir().unwrap();
    let h = host.path();
    std::fs::create_dir(h.join("dir")).unwrap();
    std::fs::write(h.join("dir/f.txt"), "in a dir\n").unwrap();
    ok(r, &["cp", h.join("dir").to_str().unwrap(), "live:/tmp"]);
    assert_eq!(
        ok(r, &["exec", "live", "cat", "/tmp/dir/f.txt"]),
        "in a dir\n"
    );
    // A tar stream on stdin goes into a directory; out, it is a tar of SRC by its base name.
    let tar = std::process::Command::new("tar")
        .arg("-C")
        .arg(h)
        .args(["-cf", "-", "dir"])
        .output()
        .unwrap()
        .stdout;
    let mut child = common::kiln_command()
        .arg("--root")
        .arg(r)
        .args(["cp", "-", "live:/root"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(&tar).unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(
        ok(r, &["exec", "live", "cat", "/root/dir/f.txt"]),
        "in a dir\n"
    );
    let o = kiln(r, &["cp", "live:/root/dir/f.txt", "-"]);
    let mut ar = tar::Archive::new(&o.stdout[..]);
    let names: Vec<String> = ar
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["f.txt"]);
    fails(
        r,
        &["cp", "-", "live:/root/dir/f.txt"],
        "must be an existing directory",
    );
    drop(c);
}

#[test]
fn cp_never_writes_or_reads_outside_the_containers_root() {
    let root = setup();
    let r = root.path();
    let host = tempfile::tempdir().unwrap();
    let h = host.path();
    let target = h.join("victim");
    std::fs::create_dir(&target).unwrap();
    std::fs::write(h.join("secret"), "host secret\n").unwrap();
    let t = target.to_str().unwrap();
    // Symlinks in the container pointing at host paths, absolute and through `..`.
    let script = format!(
        "ln -s {t} /abs && ln -s ../../../../../../..{t} /rel && ln -s {} /secret",
        h.join("secret").display()
    );
    ok(r, &["run", "--name", "evil", "bb", "sh", "-c", &script]);
    let payload = h.join("payload");
    std::fs::write(&payload, "payload\n").unwrap();
    let p = payload.to_str().unwrap();
    for dest in ["evil:/abs/", "evil:/rel/", "evil:/abs/x", "evil:/rel"] {
        let _ = kiln(r, &["cp", p, dest]);
        assert_eq!(
            std::fs::read_dir(&target).unwrap().count(),
            0,
            "cp to {dest} wrote outside the container"
        );
    }
    // Running too (the path resolution is the kernel's, in a chroot).
    let c = Container::run(
        r,
        &[
            "--name",
            "evil2",
            "bb",
            "sh",
            "-c",
            &format!("{script} && sleep 300"),
        ],
    );
    run_fixtures::eventually(10, || {
        out(&kiln(r, &["exec", "evil2", "test", "-L", "/secret"]))
            .0
            .eq(&0)
            .then_some(())
    })
    .expect("the links are made");
    for dest in ["evil2:/abs/", "evil2:/rel/", "evil2:/abs/y"] {
        let _ = kiln(r, &["cp", p, dest]);
        assert_eq!(
            std::fs::read_dir(&target).unwrap().count(),
            0,
            "cp to {dest} wrote outside the container"
        );
    }
    // Reading a link that points at a host file gets the container's view (nothing there).
    let o = kiln(
        r,
        &["cp", "-L", "evil2:/secret", h.join("got").to_str().unwrap()],
    );
    assert_ne!(o.status.code(), Some(0));
    assert!(!h.join("got").exists());
    drop(c);
}

#[test]
fn diff_export_and_commit_then_run_the_new_image() {
    let root = setup();
    let r = root.path();
    ok(
        r,
        &[
            "run",
            "--name",
            "work",
            "-e",
            "GREETING=hello",
            "bb",
            "sh",
            "-c",
            "echo hi > /tmp/x; echo extra >> /etc/passwd; rm /bin/ls; mkdir -p /new/sub; \
             touch /new/sub/f",
        ],
    );
    // Docker 28 prints these lines for the same commands (its order differs: kiln sorts).
    assert_eq!(
        ok(r, &["diff", "work"]),
        "C /bin\nD /bin/ls\nC /etc\nC /etc/passwd\nA /new\nA /new/sub\nA /new/sub/f\nC /tmp\n\
         A /tmp/x\n"
    );
    let tarball = tempfile::tempdir().unwrap();
    let t = tarball.path().join("fs.tar");
    ok(r, &["export", "-o", t.to_str().unwrap(), "work"]);
    let mut names = Vec::new();
    let mut passwd = String::new();
    let mut ar = tar::Archive::new(std::fs::File::open(&t).unwrap());
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        if name == "etc/passwd" {
            use std::io::Read;
            e.read_to_string(&mut passwd).unwrap();
        }
        names.push(name);
    }
    assert!(names.iter().any(|n| n == "new/sub/f"), "{names:?}");
    assert!(names.iter().any(|n| n == "bin/sh"));
    assert!(!names.iter().any(|n| n == "bin/ls" || n.contains(".wh.")));
    assert!(passwd.ends_with("extra\n"), "{passwd}");

    let id = ok(
        r,
        &[
            "commit",
            "-m",
            "my change",
            "-a",
            "Jane <j@example.com>",
            "--change",
            "CMD [\"cat\", \"/tmp/x\"]",
            "work",
            "committed:v1",
        ],
    );
    assert!(id.trim().starts_with("sha256:"), "{id}");
    assert_eq!(ok(r, &["run", "--rm", "committed:v1"]), "hi\n");
    assert_eq!(
        ok(
            r,
            &[
                "run",
                "--rm",
                "committed:v1",
                "sh",
                "-c",
                "echo $GREETING; test -e /bin/ls || echo gone"
            ]
        ),
        "hello\ngone\n"
    );
    assert_eq!(
        ok(
            r,
            &[
                "inspect",
                "-f",
                "{{.Author}}|{{.Config.Cmd}}",
                "committed:v1"
            ]
        )
        .trim(),
        "Jane <j@example.com>|[cat /tmp/x]"
    );
    let history = ok(r, &["history", "--no-trunc", "committed:v1"]);
    assert!(
        history.lines().nth(1).unwrap().contains("my change"),
        "{history}"
    );
    // A running container: its diff leaves out kiln's mount points, commit pauses it.
    let c = Container::run(
        r,
        &[
            "--name",
            "live",
            "bb",
            "sh",
            "-c",
            "echo live > /live; sleep 300",
        ],
    );
    run_fixtures::eventually(10, || {
        (ok(r, &["diff", "live"]) == "A /live\n").then_some(())
    })
    .expect("diff of a running container: A /live only");
    ok(r, &["commit", "live", "fromlive"]);
    assert_eq!(
        ok(r, &["run", "--rm", "fromlive", "cat", "/live"]),
        "live\n"
    );
    assert_eq!(c.inspect()["State"]["Status"], "running");
}

fn inspect(r: &Path, c: &str, tmpl: &str) -> String {
    ok(r, &["inspect", "-f", tmpl, c]).trim().to_string()
}

#[test]
fn create_then_start_keeps_the_writable_layer_and_rename() {
    let root = setup();
    let r = root.path();
    let id = ok(
        r,
        &[
            "create",
            "--name",
            "made",
            "-e",
            "X=1",
            "bb",
            "sh",
            "-c",
            "echo run >> /runs; wc -l < /runs; echo $X",
        ],
    );
    assert_eq!(id.trim().len(), 64, "{id}");
    assert_eq!(inspect(r, "made", "{{.State.Status}}"), "created");
    // Each start runs on the writable layer the previous run left.
    assert_eq!(ok(r, &["start", "-a", "made"]), "1\n1\n");
    assert_eq!(ok(r, &["start", "-a", "made"]), "2\n1\n");
    assert_eq!(inspect(r, "made", "{{.State.Status}}"), "exited");
    ok(r, &["rename", "made", "renamed"]);
    assert_eq!(inspect(r, "renamed", "{{.Name}}"), "/renamed");
    fails(r, &["inspect", "made"], "");
    ok(r, &["create", "--name", "other", "bb", "true"]);
    fails(r, &["rename", "renamed", "other"], "already in use");
    fails(r, &["rename", "renamed", "a@b"], "invalid container name");
    // start -a -i: stdin reaches the command.
    ok(r, &["create", "--name", "reader", "bb", "cat"]);
    let mut child = common::kiln_command()
        .arg("--root")
        .arg(r)
        .args(["start", "-a", "-i", "reader"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"typed in\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "typed in\n");
    fails(
        r,
        &["create", "--rm", "--restart", "always", "bb"],
        "--restart and --rm",
    );
    fails(
        r,
        &["create", "--restart", "sometimes", "bb"],
        "invalid restart policy",
    );
}

#[test]
fn restart_on_failure_is_counted_and_stop_ends_always() {
    let root = setup();
    let r = root.path();
    let _c = Container::run(
        r,
        &[
            "--name",
            "flaky",
            "--restart",
            "on-failure:3",
            "bb",
            "sh",
            "-c",
            "echo ran; exit 3",
        ],
    );
    // `wait` returns when the monitor gives up: the first run and three restarts.
    assert_eq!(ok(r, &["wait", "flaky"]), "3\n");
    assert_eq!(
        inspect(
            r,
            "flaky",
            "{{.RestartCount}} {{.State.ExitCode}} {{.HostConfig.RestartPolicy.Name}} \
             {{.HostConfig.RestartPolicy.MaximumRetryCount}}"
        ),
        "3 3 on-failure 3"
    );
    assert_eq!(ok(r, &["logs", "flaky"]), "ran\nran\nran\nran\n");
    // A zero exit is not a failure.
    let _ok = Container::run(
        r,
        &["--name", "fine", "--restart", "on-failure", "bb", "true"],
    );
    assert_eq!(ok(r, &["wait", "fine"]), "0\n");
    assert_eq!(inspect(r, "fine", "{{.RestartCount}}"), "0");

    // always: restarts after any exit until stopped, also during a back-off.
    let _a = Container::run(
        r,
        &[
            "--name",
            "loop",
            "--restart",
            "always",
            "bb",
            "sh",
            "-c",
            "sleep 0.2",
        ],
    );
    run_fixtures::eventually(20, || {
        (inspect(r, "loop", "{{.RestartCount}}")
            .parse::<u32>()
            .unwrap()
            >= 2)
            .then_some(())
    })
    .expect("always restarts");
    // Between runs (the back-off) ps says so, as docker's.
    run_fixtures::eventually(20, || {
        ok(r, &["ps", "-a", "--format", "{{.Names}} {{.Status}}"])
            .lines()
            .any(|l| l.starts_with("loop Restarting (0) "))
            .then_some(())
    })
    .expect("ps shows Restarting (0) during a back-off");
    ok(r, &["stop", "loop"]);
    let after = inspect(
        r,
        "loop",
        "{{.RestartCount}} {{.State.Status}} {{.State.OwnerPid}}",
    );
    std::thread::sleep(std::time::Duration::from_millis(800));
    assert_eq!(
        inspect(
            r,
            "loop",
            "{{.RestartCount}} {{.State.Status}} {{.State.OwnerPid}}"
        ),
        after
    );
    assert!(after.ends_with(" exited 0"), "{after}");
    // Nor does the next kiln command bring back a container the user stopped.
    ok(r, &["ps"]);
    assert_eq!(inspect(r, "loop", "{{.State.Status}}"), "exited");
}

#[test]
fn always_containers_without_an_owner_come_back_at_the_next_command() {
    let root = setup();
    let r = root.path();
    let _c = Container::run(
        r,
        &["--name", "svc", "--restart", "always", "bb", "sleep", "300"],
    );
    let _u = Container::run(
        r,
        &[
            "--name",
            "svc2",
            "--restart",
            "unless-stopped",
            "bb",
            "sleep",
            "300",
        ],
    );
    let _n = Container::run(r, &["--name", "plain", "bb", "sleep", "300"]);
    // What a reboot does to kiln: every owner process is gone (the container dies with it).
    for c in ["svc", "svc2", "plain"] {
        let owner: i32 = inspect(r, c, "{{.State.OwnerPid}}").parse().unwrap();
        assert!(owner > 0);
        // SAFETY: kill(2) of the monitor this test started.
        unsafe { libc::kill(owner, libc::SIGKILL) };
        run_fixtures::eventually(10, || {
            (!Path::new(&format!("/proc/{owner}")).exists()).then_some(())
        })
        .expect("the monitor is gone");
    }
    // Any command revives the ones whose policy says so.
    let ps = ok(r, &["ps", "--format", "{{.Names}}"]);
    let mut names: Vec<&str> = ps.lines().collect();
    names.sort();
    assert_eq!(names, ["svc", "svc2"], "{ps}");
    assert_eq!(inspect(r, "plain", "{{.State.Status}}"), "exited");
    assert_eq!(ok(r, &["exec", "svc", "echo", "back"]), "back\n");
}

/// The limit file of the cgroup `pid` is in, v1 or v2.
fn memory_limit_of(pid: &str) -> u64 {
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let path = cg
        .lines()
        .find_map(|l| {
            let mut p = l.splitn(3, ':');
            let (_, ctl, rel) = (p.next()?, p.next()?, p.next()?);
            if ctl.split(',').any(|c| c == "memory") {
                Some(format!("/sys/fs/cgroup/memory{rel}/memory.limit_in_bytes"))
            } else if ctl.is_empty() && rel.starts_with("/kiln/") {
                Some(format!("/sys/fs/cgroup{rel}/memory.max"))
            } else {
                None
            }
        })
        .expect("a memory cgroup");
    std::fs::read_to_string(path)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn update_changes_a_running_containers_cgroup_and_its_next_start() {
    let root = setup();
    let r = root.path();
    let _c = Container::run(
        r,
        &["--name", "limited", "-m", "128m", "bb", "sleep", "300"],
    );
    let pid = inspect(r, "limited", "{{.State.Pid}}");
    assert_eq!(memory_limit_of(&pid), 128 << 20);
    assert_eq!(
        ok(
            r,
            &[
                "update",
                "-m",
                "64m",
                "--cpu-shares",
                "512",
                "--pids-limit",
                "40",
                "limited"
            ]
        ),
        "limited\n"
    );
    assert_eq!(memory_limit_of(&pid), 64 << 20);
    assert_eq!(
        inspect(
            r,
            "limited",
            "{{.HostConfig.Memory}} {{.HostConfig.CpuShares}} {{.HostConfig.PidsLimit}}"
        ),
        "67108864 512 40"
    );
    // Raising it again (v1: the memory+swap limit moves first).
    ok(r, &["update", "-m", "256m", "limited"]);
    assert_eq!(memory_limit_of(&pid), 256 << 20);
    fails(
        r,
        &["update", "--cpuset-cpus", "99999", "limited"],
        "not available",
    );
    fails(r, &["update", "limited"], "one or more flags");
    // The next start runs with the stored limits.
    ok(r, &["stop", "-t", "0", "limited"]);
    ok(r, &["start", "limited"]);
    let pid = inspect(r, "limited", "{{.State.Pid}}");
    assert_eq!(memory_limit_of(&pid), 256 << 20);
}

#[test]
fn run_pulls_a_missing_image_unless_told_never() {
    let root = setup();
    let r = root.path();
    let registry = registry_support::Registry::start(registry_support::AuthMode::None);
    let name = format!("{}/tools/bb:1", registry.host());
    ok(r, &["tag", "bb", &name]);
    ok(r, &["push", &name]);
    let fresh = common::temp_root();
    let f = fresh.path();
    fails(
        f,
        &["run", "--rm", "--pull", "never", &name, "true"],
        "--pull never",
    );
    // missing: pulled with its progress on stderr, then run.
    let (code, stdout, stderr) = out(&kiln(f, &["run", "--rm", &name, "echo", "pulled-and-ran"]));
    assert_eq!((code, stdout.as_str()), (0, "pulled-and-ran\n"), "{stderr}");
    assert!(
        stderr.contains("Unable to find image") && stderr.contains("Digest: sha256:"),
        "{stderr}"
    );
    // Present now: not pulled again; always pulls (the registry must answer).
    let (_, _, stderr) = out(&kiln(f, &["run", "--rm", &name, "true"]));
    assert!(!stderr.contains("Unable to find image"), "{stderr}");
    let (code, _, stderr) = out(&kiln(f, &["create", "--pull", "always", &name]));
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("Digest: sha256:"), "{stderr}");
    fails(f, &["run", "--pull", "sometimes", &name], "invalid --pull");
}

#[test]
fn mount_tmpfs_add_host_label_and_stop_flags() {
    let root = setup();
    let r = root.path();
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("in.txt"), "bound\n").unwrap();
    let bind = format!(
        "type=bind,source={},target=/h,readonly",
        host.path().display()
    );
    let o = ok(
        r,
        &[
            "run",
            "--rm",
            "--add-host",
            "db:127.0.0.2",
            "--tmpfs",
            "/scratch:size=1m",
            "--mount",
            "type=tmpfs,target=/t2,tmpfs-mode=700",
            "--mount",
            &bind,
            "--mount",
            "type=volume,source=vol1,target=/v",
            "bb",
            "sh",
            "-c",
            // -w: the container's random hostname (also in /etc/hosts) may contain "db".
            "grep -w db /etc/hosts; grep -E ' /(scratch|t2) ' /proc/mounts | cut -d' ' -f2,4 | sort; \
             cat /h/in.txt; touch /h/x 2>/dev/null || echo ro; echo kept > /v/f",
        ],
    );
    assert_eq!(
        o,
        "127.0.0.2\tdb\n/scratch rw,nosuid,nodev,relatime,size=1024k\n\
         /t2 rw,nosuid,nodev,relatime,mode=700\nbound\nro\n"
    );
    assert_eq!(
        ok(r, &["run", "--rm", "-v", "vol1:/v", "bb", "cat", "/v/f"]),
        "kept\n"
    );
    fails(
        r,
        &[
            "run",
            "--rm",
            "--mount",
            "type=bind,source=/no/such,target=/x",
            "bb",
        ],
        "does not exist",
    );
    fails(
        r,
        &["run", "--rm", "--tmpfs", "/x:noexec", "bb"],
        "does not support the option",
    );
    fails(
        r,
        &["run", "--rm", "--add-host", "x:host-gateway", "bb"],
        "no host gateway",
    );

    // Labels over the image's; the stop signal and timeout are the container's own.
    let _c = Container::run(
        r,
        &[
            "--name",
            "labelled",
            "-l",
            "team=core",
            "--label",
            "tier",
            "--stop-signal",
            "USR1",
            "--stop-timeout",
            "1",
            "bb",
            "sh",
            "-c",
            "trap 'echo got-usr1; exit 0' USR1; while :; do sleep 0.05; done",
        ],
    );
    assert_eq!(
        inspect(
            r,
            "labelled",
            "{{json .Config.Labels}} {{.Config.StopSignal}} {{.Config.StopTimeout}}"
        ),
        r#"{"team":"core","tier":""} 10 1"#
    );
    ok(r, &["stop", "labelled"]);
    assert_eq!(inspect(r, "labelled", "{{.State.ExitCode}}"), "0");
    assert_eq!(ok(r, &["logs", "labelled"]), "got-usr1\n");
}

#[test]
fn the_images_healthcheck_runs_and_ps_shows_it() {
    let root = setup();
    let r = root.path();
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM bb\nHEALTHCHECK --interval=200ms --retries=2 CMD test -f /ready\n",
    )
    .unwrap();
    ok(
        r,
        &["build", "-q", "-t", "checked", ctx.path().to_str().unwrap()],
    );
    let _c = Container::run(
        r,
        &[
            "--name",
            "svc",
            "checked",
            "sh",
            "-c",
            "sleep 1.5; touch /ready; sleep 300",
        ],
    );
    let status = |r: &Path| ok(r, &["ps", "--format", "{{.Names}} {{.Status}}"]);
    assert!(status(r).contains("(health: starting)"), "{}", status(r));
    run_fixtures::eventually(10, || status(r).contains("(unhealthy)").then_some(()))
        .unwrap_or_else(|| panic!("not unhealthy: {}", status(r)));
    run_fixtures::eventually(10, || status(r).contains("(healthy)").then_some(()))
        .unwrap_or_else(|| panic!("not healthy: {}", status(r)));
    assert_eq!(
        inspect(
            r,
            "svc",
            "{{.State.Health.Status}} {{.State.Health.FailingStreak}}"
        ),
        "healthy 0"
    );
    // --health-cmd replaces it; --no-healthcheck turns it off; commit keeps the image's.
    let _d = Container::run(
        r,
        &[
            "--name",
            "flagged",
            "--health-cmd",
            "exit 1",
            "--health-interval",
            "100ms",
            "--health-retries",
            "1",
            "checked",
            "sleep",
            "300",
        ],
    );
    run_fixtures::eventually(10, || {
        (inspect(r, "flagged", "{{.State.Health.Status}}") == "unhealthy").then_some(())
    })
    .expect("--health-cmd exit 1 is unhealthy");
    let _e = Container::run(
        r,
        &[
            "--name",
            "off",
            "--no-healthcheck",
            "checked",
            "sleep",
            "300",
        ],
    );
    assert!(!status(r)
        .lines()
        .any(|l| l.starts_with("off ") && l.contains("health")));
    ok(r, &["commit", "svc", "checked:committed"]);
    let _f = Container::run(r, &["--name", "again", "checked:committed", "sleep", "300"]);
    run_fixtures::eventually(10, || {
        (inspect(r, "again", "{{.State.Health.Status}}") == "healthy").then_some(())
    })
    .expect("the committed image keeps the HEALTHCHECK (and the /ready file)");
}

#[test]
fn logs_since_until_timestamps_and_details() {
    let root = setup();
    let r = root.path();
    ok(
        r,
        &[
            "run",
            "--name",
            "talk",
            "bb",
            "sh",
            "-c",
            "echo first; sleep 1.2; echo second",
        ],
    );
    let stamped = ok(r, &["logs", "-t", "talk"]);
    let lines: Vec<&str> = stamped.lines().collect();
    assert_eq!(lines.len(), 2, "{stamped}");
    let (t1, text1) = lines[0].split_once(' ').unwrap();
    assert_eq!(text1, "first");
    // docker's fixed format: nine fraction digits, UTC.
    assert!(
        t1.len() == 30 && t1.ends_with('Z') && t1.as_bytes()[19] == b'.',
        "{t1}"
    );
    let (t2, _) = lines[1].split_once(' ').unwrap();
    // The second line is after a time between the two; the first is before it.
    let t1 = chrono::DateTime::parse_from_rfc3339(t1).unwrap();
    let t2 = chrono::DateTime::parse_from_rfc3339(t2).unwrap();
    let mid = t1 + (t2 - t1) / 2;
    let mid = mid.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    assert_eq!(ok(r, &["logs", "--since", &mid, "talk"]), "second\n");
    assert_eq!(ok(r, &["logs", "--until", &mid, "talk"]), "first\n");
    let unix = format!("{}.{:09}", t2.timestamp(), t2.timestamp_subsec_nanos());
    assert_eq!(ok(r, &["logs", "--since", &unix, "talk"]), "second\n");
    assert_eq!(ok(r, &["logs", "--since", "1h", "talk"]), "first\nsecond\n");
    assert_eq!(ok(r, &["logs", "--until", "1h", "talk"]), "");
    // --details: no attributes here, so docker's single space.
    assert_eq!(ok(r, &["logs", "--details", "talk"]), " first\n second\n");
    fails(r, &["logs", "--since", "yesterday", "talk"], "invalid time");
}

#[test]
fn read_only_root_keeps_volumes_and_tmpfs_writable() {
    let root = setup();
    let r = root.path();
    let o = ok(
        r,
        &[
            "run",
            "--rm",
            "--read-only",
            "--tmpfs",
            "/run",
            "-v",
            "rw:/v",
            "bb",
            "sh",
            "-c",
            "touch /x 2>/dev/null || echo root-ro; touch /run/a /v/a && echo mounts-rw; \
             grep ' / / ' /proc/self/mountinfo | cut -d' ' -f6",
        ],
    );
    assert_eq!(o, "root-ro\nmounts-rw\nro,nodev,relatime\n");
    let c = Container::run(r, &["--name", "ro", "--read-only", "bb", "sleep", "300"]);
    assert_eq!(c.inspect()["HostConfig"]["ReadonlyRootfs"], true);
}

/// A file of the cgroup `pid` is in: `v1` in that controller's hierarchy, else `v2` in the
/// unified one.
fn cgroup_file(pid: &str, controller: &str, v1: &str, v2: &str) -> String {
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    for l in cg.lines() {
        let mut p = l.splitn(3, ':');
        let (_, ctl, rel) = (p.next().unwrap(), p.next().unwrap(), p.next().unwrap());
        if ctl.split(',').any(|c| c == controller) {
            let base = format!("/sys/fs/cgroup/{controller}{rel}/{v1}");
            return std::fs::read_to_string(base).unwrap().trim().to_string();
        }
        if ctl.is_empty() && rel.starts_with("/kiln/") {
            return std::fs::read_to_string(format!("/sys/fs/cgroup{rel}/{v2}"))
                .unwrap()
                .trim()
                .to_string();
        }
    }
    panic!("no {controller} cgroup for {pid}: {cg}");
}

#[test]
fn cpus_and_memory_swap_reach_the_cgroup() {
    let root = setup();
    let r = root.path();
    let _c = Container::run(
        r,
        &[
            "--name",
            "quota",
            "--cpus",
            "0.5",
            "-m",
            "64m",
            "--memory-swap",
            "128m",
            "bb",
            "sleep",
            "300",
        ],
    );
    let pid = inspect(r, "quota", "{{.State.Pid}}");
    let quota = cgroup_file(&pid, "cpu", "cpu.cfs_quota_us", "cpu.max");
    assert!(quota == "50000" || quota == "50000 100000", "{quota}");
    let swap = cgroup_file(
        &pid,
        "memory",
        "memory.memsw.limit_in_bytes",
        "memory.swap.max",
    );
    // v1: memory plus swap; v2: the swap alone.
    assert!(
        swap == (128u64 << 20).to_string() || swap == (64u64 << 20).to_string(),
        "{swap}"
    );
    assert_eq!(
        inspect(
            r,
            "quota",
            "{{.HostConfig.NanoCpus}} {{.HostConfig.MemorySwap}}"
        ),
        format!("500000000 {}", 128u64 << 20)
    );
    fails(r, &["run", "--rm", "--memory-swap", "1g", "bb"], "needs -m");
    fails(
        r,
        &["run", "--rm", "-m", "64m", "--memory-swap", "32m", "bb"],
        "at least -m",
    );
    fails(
        r,
        &["run", "--rm", "--cpus", "100000", "bb"],
        "range of CPUs",
    );
}

#[test]
fn cap_add_cap_drop_and_no_new_privileges() {
    let root = setup();
    let r = root.path();
    let (code, _, _) = out(&kiln(
        r,
        &[
            "run",
            "--rm",
            "--cap-drop",
            "CHOWN",
            "bb",
            "chown",
            "5",
            "/tmp",
        ],
    ));
    assert_ne!(code, 0, "chown without CAP_CHOWN");
    assert_eq!(ok(r, &["run", "--rm", "bb", "chown", "5", "/tmp"]), "");
    let (code, _, _) = out(&kiln(
        r,
        &["run", "--rm", "bb", "ip", "link", "set", "lo", "down"],
    ));
    assert_ne!(code, 0, "no NET_ADMIN by default");
    ok(
        r,
        &[
            "run",
            "--rm",
            "--cap-add",
            "net_admin",
            "bb",
            "ip",
            "link",
            "set",
            "lo",
            "down",
        ],
    );
    // A capability whose system calls Docker's seccomp profile gates opens them too.
    assert_eq!(
        ok(
            r,
            &[
                "run",
                "--rm",
                "--cap-add",
                "SYS_ADMIN",
                "bb",
                "sh",
                "-c",
                "mkdir /m && mount -t tmpfs t /m && echo mounted",
            ]
        ),
        "mounted\n"
    );
    // exec gets the container's set and no_new_privs.
    let _c = Container::run(
        r,
        &[
            "--name",
            "locked",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            "bb",
            "sleep",
            "300",
        ],
    );
    let status = ok(r, &["exec", "locked", "cat", "/proc/self/status"]);
    assert!(status.contains("CapEff:\t0000000000000000"), "{status}");
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    fails(
        r,
        &["run", "--rm", "--cap-add", "BOGUS", "bb"],
        "no such capability",
    );
}

/// `run --ulimit` and `--shm-size` (docker's forms), kept for the container's next start.
#[test]
fn ulimit_and_shm_size_reach_the_container_and_its_restarts() {
    let root = setup();
    let r = root.path();
    let probe = "ulimit -n; ulimit -Hn; df -k /dev/shm | tail -1 | awk '{print $2}'";
    let o = ok(
        r,
        &[
            "run",
            "--name",
            "lim",
            "--ulimit",
            "nofile=512:1024",
            "--shm-size",
            "8m",
            "bb",
            "sh",
            "-c",
            probe,
        ],
    );
    assert_eq!(o, "512\n1024\n8192\n");
    // The same limits at the next start of the kept container.
    ok(r, &["start", "lim"]);
    ok(r, &["wait", "lim"]);
    let logs = ok(r, &["logs", "lim"]);
    assert_eq!(logs, "512\n1024\n8192\n512\n1024\n8192\n");
    fails(
        r,
        &["run", "--rm", "--ulimit", "nofiles=1", "bb", "true"],
        "invalid ulimit type \"nofiles\"",
    );
    fails(
        r,
        &["run", "--rm", "--shm-size", "lots", "bb", "true"],
        "--shm-size \"lots\"",
    );
}
