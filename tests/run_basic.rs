//! `kiln run` and the container lifecycle on busybox images, as root.

mod common;
mod run_fixtures;

use run_fixtures::{kiln, out, root_with_bb, Container};
use serde_json::json;

fn setup(config: serde_json::Value) -> tempfile::TempDir {
    root_with_bb(config)
}

#[test]
fn foreground_streams_output_and_exit_codes() {
    let root = setup(json!({"Cmd": ["sh", "-c", "echo from-cmd"], "Env": ["A=image", "B=image"]}));
    let r = root.path();
    let (code, stdout, stderr) = out(&kiln(r, &["run", "--rm", "bb"]));
    assert_eq!((code, stdout.as_str()), (0, "from-cmd\n"), "{stderr}");
    let (code, stdout, _) = out(&kiln(
        r,
        &[
            "run",
            "--rm",
            "bb",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 7",
        ],
    ));
    assert_eq!((code, stdout.as_str()), (7, "out\n"));
    let (code, _, stderr) = out(&kiln(r, &["run", "--rm", "bb", "no-such-command"]));
    assert_eq!(code, 127, "{stderr}");
    assert!(stderr.contains("no-such-command"), "{stderr}");
    let (code, _, stderr) = out(&kiln(r, &["run", "--rm", "bb", "/etc/passwd"]));
    assert_eq!(code, 126, "{stderr}");
    // The command is PID 1: a signal without a handler from inside is dropped (Docker 28:
    // `survived`, exit 0); under --init the command is not PID 1 and dies of it.
    let (code, stdout, _) = out(&kiln(
        r,
        &[
            "run",
            "--rm",
            "bb",
            "sh",
            "-c",
            "kill -TERM $$; echo survived",
        ],
    ));
    assert_eq!((code, stdout.as_str()), (0, "survived\n"));
    let (code, _, _) = out(&kiln(
        r,
        &["run", "--rm", "--init", "bb", "sh", "-c", "kill -TERM $$"],
    ));
    assert_eq!(code, 128 + 15);
    let (code, _, stderr) = out(&kiln(r, &["run", "--rm", "no-such-image"]));
    assert_eq!(code, 125, "{stderr}");
    assert!(stderr.contains("no-such-image"), "{stderr}");
    // Environment: image, -e K=V, -e K from kiln's environment, --env-file.
    let env_file = r.join("env.list");
    std::fs::write(&env_file, "# comment\nC=file\n").unwrap();
    let o = common::kiln_ok(
        r,
        &[
            "run",
            "--rm",
            "-e",
            "B=flag",
            "-e",
            "HOME",
            "--env-file",
            env_file.to_str().unwrap(),
            "-w",
            "/tmp/wd",
            "-u",
            "nobody",
            "--hostname",
            "hh",
            "bb",
            "sh",
            "-c",
            "echo $A $B $C $HOME; pwd; id -u; hostname",
        ],
    );
    let home = std::env::var("HOME").unwrap_or_default();
    assert_eq!(o, format!("image flag file {home}\n/tmp/wd\n65534\nhh\n"));
    // --entrypoint replaces the image's ENTRYPOINT and drops its CMD.
    let o = common::kiln_ok(r, &["run", "--rm", "--entrypoint", "echo", "bb", "a", "b"]);
    assert_eq!(o, "a b\n");
    // Nothing is left: --rm removed every container.
    assert_eq!(common::kiln_ok(r, &["ps", "-a", "-q"]), "");
}

#[test]
fn detached_container_lifecycle() {
    let root = setup(json!({"Cmd": ["sh"], "StopSignal": "SIGUSR1"}));
    let r = root.path();
    let c = Container::run(
        r,
        &[
            "--name",
            "web",
            "bb",
            "sh",
            "-c",
            "trap 'echo got-usr1; exit 3' USR1; echo started; while true; do sleep 0.1; done",
        ],
    );
    let ps = common::kiln_ok(r, &["ps"]);
    assert!(ps.starts_with("CONTAINER ID   IMAGE"), "{ps}");
    assert!(
        ps.contains(&c.id[..12]) && ps.contains("web") && ps.contains("Up "),
        "{ps}"
    );
    run_fixtures::eventually(5, || {
        common::kiln_ok(r, &["logs", "web"])
            .contains("started")
            .then_some(())
    })
    .expect("the log shows the container's output");
    // exec joins the container: same hostname, sees the container's processes.
    let o = common::kiln_ok(
        r,
        &[
            "exec",
            "web",
            "sh",
            "-c",
            "hostname; ps -o comm | grep -c sh",
        ],
    );
    assert!(o.starts_with(&c.id[..12]), "{o}");
    let (code, _, _) = out(&kiln(r, &["exec", "web", "sh", "-c", "exit 4"]));
    assert_eq!(code, 4);
    let (code, _, _) = out(&kiln(r, &["exec", "web", "nope"]));
    assert_eq!(code, 127);
    // stop sends the image's STOPSIGNAL (USR1 here).
    assert_eq!(common::kiln_ok(r, &["stop", "-t", "5", "web"]), "web\n");
    assert_eq!(common::kiln_ok(r, &["wait", "web"]), "3\n");
    let insp = c.inspect();
    assert_eq!(insp["State"]["Status"], "exited");
    assert_eq!(insp["State"]["ExitCode"], 3);
    assert!(common::kiln_ok(r, &["logs", "--tail", "1", "web"]).contains("got-usr1"));
    let ps = common::kiln_ok(r, &["ps", "-a"]);
    assert!(ps.contains("Exited (3)"), "{ps}");
    assert!(!common::kiln_ok(r, &["ps"]).contains("web"));
    // The name is taken until the container is removed.
    let (code, _, stderr) = out(&kiln(r, &["run", "-d", "--name", "web", "bb", "true"]));
    assert_eq!(code, 125);
    assert!(stderr.contains("already in use"), "{stderr}");
    // `kiln inspect` (an image command) falls back to containers; rmi refuses a used image.
    let insp: serde_json::Value =
        serde_json::from_str(&common::kiln_ok(r, &["inspect", "web"])).unwrap();
    assert_eq!(insp[0]["Id"], c.id.as_str());
    assert_eq!(insp[0]["Name"], "/web");
    let (code, _, stderr) = out(&kiln(r, &["rmi", "bb"]));
    assert_ne!(code, 0);
    assert!(stderr.contains(&c.id), "{stderr}");
    common::kiln_ok(r, &["rm", &c.id[..8]]);
    assert!(common::kiln_ok(r, &["rmi", "bb"]).contains("Untagged"));
    assert_eq!(common::kiln_ok(r, &["ps", "-a", "-q"]), "");
}

#[test]
fn kill_rm_force_and_dead_monitor() {
    let root = setup(json!({"Cmd": ["sleep", "1000"]}));
    let r = root.path();
    // `sleep` as PID 1 has no handler for SIGTERM, so the kernel drops it (docker's too);
    // under --init the init forwards it to sleep, which dies of it.
    let a = Container::run(r, &["--init", "bb"]);
    common::kiln_ok(r, &["kill", "-s", "TERM", &a.id]);
    assert_eq!(common::kiln_ok(r, &["wait", &a.id]), "143\n");
    // rm refuses a running container, rm -f kills it.
    let b = Container::run(r, &["bb"]);
    let (code, _, stderr) = out(&kiln(r, &["rm", &b.id]));
    assert_ne!(code, 0);
    assert!(stderr.contains("running"), "{stderr}");
    // A monitor killed with SIGKILL: the container dies with it and shows as exited.
    let c = Container::run(r, &["bb"]);
    let owner = c.inspect()["State"]["OwnerPid"].as_i64().unwrap();
    let init = c.inspect()["State"]["Pid"].as_i64().unwrap();
    unsafe { libc::kill(owner as i32, libc::SIGKILL) };
    run_fixtures::eventually(5, || (!run_fixtures::process_alive(init)).then_some(()))
        .expect("the container dies with its monitor");
    assert_eq!(c.inspect()["State"]["Status"], "exited");
    assert_eq!(c.inspect()["State"]["ExitCode"], 255);
    // A foreground `run --rm` killed with SIGKILL: the next kiln run removes its container.
    let mut fg = common::kiln_command()
        .arg("--root")
        .arg(r)
        .args(["run", "--rm", "--name", "fg", "bb"])
        .spawn()
        .unwrap();
    run_fixtures::eventually(5, || {
        common::kiln_ok(r, &["ps"]).contains(" fg\n").then_some(())
    })
    .expect("the foreground container runs");
    fg.kill().unwrap();
    fg.wait().unwrap();
    common::kiln_ok(r, &["run", "--rm", "bb", "true"]);
    assert!(!common::kiln_ok(r, &["ps", "-a"]).contains(" fg\n"));
    common::kiln_ok(r, &["rm", "-f", &b.id, &c.id, &a.id]);
    // The next kiln cleans what the dead monitor left.
    common::kiln_ok(r, &["run", "--rm", "bb", "true"]);
    assert!(run_fixtures::cgroups_of(owner).is_empty());
    assert_eq!(run_fixtures::mounts_under(r), Vec::<String>::new());
}

#[test]
fn stdin_with_i_and_a_terminal_with_t() {
    let root = setup(json!({"Cmd": ["sh"]}));
    let r = root.path();
    // -i: kiln's stdin reaches the command; without it the command reads nothing.
    let mut child = common::kiln_command()
        .arg("--root")
        .arg(r)
        .args([
            "run",
            "--rm",
            "-i",
            "bb",
            "sh",
            "-c",
            "read line; echo got:$line",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"hello\n").unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "got:hello\n");
    assert_eq!(
        common::kiln_ok(r, &["run", "--rm", "bb", "sh", "-c", "cat; echo end"]),
        "end\n"
    );
    // -t: the command's stdio is a terminal (its output gets the terminal's \r\n); -d logs it.
    let c = Container::run(
        r,
        &[
            "-t",
            "bb",
            "sh",
            "-c",
            "[ -t 0 ] && [ -t 1 ] && echo is-a-tty",
        ],
    );
    assert_eq!(common::kiln_ok(r, &["wait", &c.id]), "0\n");
    assert_eq!(common::kiln_ok(r, &["logs", &c.id]), "is-a-tty\r\n");
}

#[test]
fn signals_to_foreground_kiln_reach_the_container() {
    let root = setup(json!({"Cmd": ["sh"]}));
    let r = root.path();
    let child = common::kiln_command()
        .arg("--root")
        .arg(r)
        .args([
            "run",
            "--rm",
            "--name",
            "sig",
            "bb",
            "sh",
            "-c",
            "trap 'echo got-int; exit 5' INT; echo ready; while :; do sleep 0.1; done",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    run_fixtures::eventually(10, || {
        common::kiln_ok(r, &["ps"]).contains(" sig\n").then_some(())
    })
    .expect("the container runs");
    std::thread::sleep(std::time::Duration::from_millis(300));
    // What Ctrl-C sends kiln (SIGINT) goes to the container, and kiln exits with its code.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(5));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "ready\ngot-int\n");
    assert_eq!(common::kiln_ok(r, &["ps", "-a", "-q"]), "");
}
