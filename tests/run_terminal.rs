//! Terminals and PID 1, as a docker user meets them: `run -it`, `exec -it` and `attach` typed
//! into a real terminal (tmux, `apt-get install tmux`), window resizes, Ctrl-C, Ctrl-Z, the
//! detach keys; PID 1 is the user's command (its signals, `stop` after the grace period),
//! `--init`, and nothing of kiln's command line or environment inside the container. The
//! expected answers are Docker 28's (`docker run -it busybox`, recorded by hand).

mod common;
mod run_fixtures;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use run_fixtures::{kiln, out, root_with_bb, Container};
use serde_json::json;

/// One tmux server of its own (`-S`, its socket in a temp dir removed with it), so tests never
/// touch another tmux, with one window.
struct Tmux {
    dir: tempfile::TempDir,
}

impl Tmux {
    /// Starts `command` (a shell line) in a `cols`x`rows` window; the shell then prints
    /// `EXIT=<code>` and lingers, so the pane can be read after the command ends.
    fn start(command: &str, cols: u16, rows: u16) -> Tmux {
        let t = Tmux {
            dir: tempfile::Builder::new()
                .prefix("kiln-tmux.")
                .tempdir_in("/tmp")
                .unwrap(),
        };
        let line = format!("{command}; echo EXIT=$?; sleep 600");
        let ok = t
            .cmd()
            .args(["new-session", "-d", "-s", "main"])
            .args(["-x", &cols.to_string(), "-y", &rows.to_string()])
            .arg(line)
            .status()
            .expect("run tmux (apt-get install tmux)");
        assert!(ok.success(), "tmux new-session failed");
        t
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.arg("-S")
            .arg(self.dir.path().join("s"))
            .args(["-f", "/dev/null"]);
        c
    }

    /// Keys in tmux's names (`C-c`, `Enter`).
    fn keys(&self, keys: &[&str]) {
        let ok = self
            .cmd()
            .args(["send-keys", "-t", "main"])
            .args(keys)
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Types `text` literally, then Enter.
    fn line(&self, text: &str) {
        let ok = self
            .cmd()
            .args(["send-keys", "-t", "main", "-l", text])
            .status()
            .unwrap();
        assert!(ok.success());
        self.keys(&["Enter"]);
    }

    fn screen(&self) -> String {
        let o = self
            .cmd()
            .args(["capture-pane", "-p", "-J", "-S", "-500", "-t", "main"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Waits until the screen shows `text` `times` times; panics with the screen otherwise.
    fn wait_for_n(&self, text: &str, times: usize) -> String {
        let start = Instant::now();
        loop {
            let s = self.screen();
            if s.matches(text).count() >= times {
                return s;
            }
            if start.elapsed() > Duration::from_secs(20) {
                panic!("the terminal never showed {text:?} ({times} times):\n{s}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_for(&self, text: &str) -> String {
        self.wait_for_n(text, 1)
    }

    /// Asks `stty size` until the shell inside reports `size` ("ROWS COLS"): the new size
    /// travels from tmux's SIGWINCH through kiln, a moment the typed keys may overtake.
    fn wait_for_size(&self, size: &str) {
        for _ in 0..40 {
            self.line("stty size");
            std::thread::sleep(Duration::from_millis(250));
            if self.screen().contains(size) {
                return;
            }
        }
        panic!("the size never became {size}:\n{}", self.screen());
    }

    fn resize(&self, cols: u16, rows: u16) {
        let ok = self
            .cmd()
            .args(["resize-window", "-t", "main"])
            .args(["-x", &cols.to_string(), "-y", &rows.to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// The pid of the pane's shell (`sh -c "kiln ...; echo EXIT=$?; ..."`).
    fn pane_pid(&self) -> i32 {
        let o = self
            .cmd()
            .args(["display-message", "-p", "-t", "main", "#{pane_pid}"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").status();
    }
}

/// The shell line that runs kiln under tmux, as `common::kiln_command` would.
fn kiln_line(root: &Path, args: &str) -> String {
    format!(
        "env KILN_LOOPBACK_REGISTRIES_ONLY=1 {} --root {} {args}",
        common::kiln_bin().display(),
        root.display()
    )
}

fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let c = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            out.extend(c.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
        }
    }
    out
}

fn ps_in(root: &Path, name: &str) -> String {
    run_fixtures::eventually(5, || {
        let (code, o, _) = out(&kiln(root, &["exec", name, "ps", "-o", "pid,stat,args"]));
        (code == 0).then_some(o)
    })
    .expect("kiln exec ps")
}

/// Waits until the container runs a process whose command line is `args` (so a key meant for
/// it does not reach the shell before it started).
fn wait_running(root: &Path, name: &str, args: &str) {
    run_fixtures::eventually(20, || ps_in(root, name).contains(args).then_some(()))
        .unwrap_or_else(|| panic!("{args} never ran in {name}"));
}

#[test]
fn run_it_is_a_terminal_of_the_container_with_resize_ctrl_keys_detach_and_attach() {
    let root = root_with_bb(json!({"Cmd": ["sh"]}));
    let r = root.path();
    let t = Tmux::start(&kiln_line(r, "run -it --name term bb"), 100, 30);
    t.wait_for("/ # ");
    // The container's own pty: its devpts has it, TERM is docker's, the size is the window's.
    t.line("tty; [ -c $(tty) ] && echo own-pty; echo TERM=$TERM; stty size");
    let s = t.wait_for("30 100");
    assert!(s.contains("/dev/pts/0\n"), "{s}");
    assert!(s.contains("own-pty"), "{s}");
    assert!(s.contains("TERM=xterm"), "{s}");
    t.resize(72, 21);
    t.wait_for_size("21 72");
    // Ctrl-C interrupts the foreground sleep; the shell (PID 1) lives on.
    t.line("sleep 1000");
    wait_running(r, "term", "sleep 1000");
    t.keys(&["C-c"]);
    t.line("echo alive-$((40+2))");
    t.wait_for("alive-42");
    // Ctrl-Z stops it: job control works (the shell owns the terminal's foreground).
    t.line("sleep 1001");
    wait_running(r, "term", "sleep 1001");
    t.keys(&["C-z"]);
    t.wait_for("Stopped");
    t.line("kill -9 %1; echo cleaned");
    t.wait_for("cleaned");
    // Ctrl-\\ quits the foreground process (SIGQUIT), not the shell.
    t.line("sleep 1003");
    wait_running(r, "term", "sleep 1003");
    t.keys(&["C-\\"]);
    t.line("echo after-quit");
    t.wait_for("after-quit");
    assert!(!ps_in(r, "term").contains("sleep 1003"));
    // Ctrl-P Ctrl-Q: kiln run returns 0, the container runs on.
    t.keys(&["C-p", "C-q"]);
    t.wait_for("EXIT=0");
    let c = Container {
        root: r.to_path_buf(),
        id: common::kiln_ok(r, &["ps", "-q", "--no-trunc"])
            .trim()
            .to_string(),
    };
    assert_eq!(c.inspect()["State"]["Status"], "running");
    assert_eq!(c.inspect()["Config"]["Tty"], true);
    // kiln attach: the same shell (its variable), detach again (docker's message, exit 1).
    let a = Tmux::start(&kiln_line(r, "attach term"), 80, 24);
    std::thread::sleep(Duration::from_millis(300));
    a.line("X=kept; stty size");
    a.wait_for("24 80");
    a.keys(&["C-p", "C-q"]);
    let s = a.wait_for("EXIT=1");
    assert!(s.contains("read escape sequence"), "{s}");
    drop(a);
    // Attach once more and end the shell: attach returns its exit code.
    let a = Tmux::start(&kiln_line(r, "attach --detach-keys ctrl-a,x term"), 80, 24);
    std::thread::sleep(Duration::from_millis(300));
    a.line("echo X=$X; exit 3");
    let s = a.wait_for("EXIT=3");
    assert!(s.contains("X=kept"), "{s}");
    assert_eq!(common::kiln_ok(r, &["wait", "term"]), "3\n");
    // The session is in the log, as docker's json-file log has it.
    assert!(common::kiln_ok(r, &["logs", "term"]).contains("alive-42"));
    let (code, _, stderr) = out(&kiln(r, &["attach", "term"]));
    assert_eq!(code, 1);
    assert!(
        stderr.contains("cannot attach to a stopped container"),
        "{stderr}"
    );
}

#[test]
fn run_it_with_rm_and_custom_detach_keys() {
    let root = root_with_bb(json!({"Cmd": ["sh"]}));
    let r = root.path();
    // A key of the sequence that is not followed by the rest is typed through.
    let t = Tmux::start(
        &kiln_line(r, "run -it --rm -e TERM=vt100 --detach-keys ctrl-a,d bb"),
        90,
        25,
    );
    t.wait_for("/ # ");
    t.keys(&["C-a"]);
    t.line("echo TERM=$TERM");
    t.wait_for("TERM=vt100");
    t.line("exit 5");
    t.wait_for("EXIT=5");
    // --rm: gone once kiln run returned.
    assert_eq!(common::kiln_ok(r, &["ps", "-a", "-q"]), "");
    let (code, _, stderr) = out(&kiln(r, &["run", "-it", "--detach-keys", "ctrl-1", "bb"]));
    assert_eq!(code, 125);
    assert!(stderr.contains("invalid detach keys"), "{stderr}");
}

#[test]
fn exec_it_is_a_terminal_and_a_killed_client_leaves_nothing_behind() {
    let root = root_with_bb(json!({"Cmd": ["sleep", "1000"]}));
    let r = root.path();
    let _c = Container::run(r, &["--name", "box", "bb"]);
    let t = Tmux::start(&kiln_line(r, "exec -it box sh"), 100, 30);
    t.wait_for("/ # ");
    t.line("tty; echo TERM=$TERM; stty size");
    let s = t.wait_for("30 100");
    assert!(s.contains("/dev/pts/0\n"), "{s}");
    assert!(s.contains("TERM=xterm"), "{s}");
    t.resize(64, 18);
    t.wait_for_size("18 64");
    t.line("sleep 1002");
    wait_running(r, "box", "sleep 1002");
    t.keys(&["C-c"]);
    t.line("echo alive-$((40+1))");
    t.wait_for("alive-41");
    // A background job, then the client dies (SIGKILL): the shell gets the hangup and what is
    // left of its session is ended.
    t.line("sleep 777 & echo started-bg");
    t.wait_for("started-bg");
    let client = children(t.pane_pid())
        .into_iter()
        .find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                .unwrap_or_default()
                .contains("exec")
        })
        .expect("the kiln exec client");
    // SAFETY: kill(2) on the kiln exec this test started.
    unsafe { libc::kill(client, libc::SIGKILL) };
    let ps = run_fixtures::eventually(10, || {
        let ps = ps_in(r, "box");
        (!ps.contains("sleep 777") && !ps.contains(" sh")).then_some(ps)
    });
    assert!(ps.is_some(), "left behind: {}", ps_in(r, "box"));
    // The exit code of a command in a terminal comes back.
    let t = Tmux::start(&kiln_line(r, "exec -t box sh -c 'exit 6'"), 80, 24);
    t.wait_for("EXIT=6");
}

#[test]
fn pid_1_is_the_command_and_stop_kills_it_after_the_grace_period() {
    let root = root_with_bb(json!({"Cmd": ["sleep", "1000"], "Env": ["FROM_IMAGE=1"]}));
    let r = root.path();
    let c = Container::run(r, &["--name", "p1", "bb"]);
    let (_, cmdline, _) = out(&kiln(r, &["exec", "p1", "cat", "/proc/1/cmdline"]));
    assert_eq!(cmdline, "sleep\u{0}1000\u{0}");
    // Nothing of kiln's command line or environment in any process of the container.
    let (_, all, _) = out(&kiln(
        r,
        &[
            "exec",
            "p1",
            "sh",
            "-c",
            "for p in /proc/[0-9]*; do cat $p/cmdline $p/environ; echo; done",
        ],
    ));
    assert!(all.contains("FROM_IMAGE=1"), "{all}");
    let root_str = r.display().to_string();
    for leak in [root_str.as_str(), "kiln", "KILN_", "--root"] {
        assert!(!all.contains(leak), "{leak:?} is visible inside: {all}");
    }
    // `sleep` as PID 1 has no SIGTERM handler, so stop's SIGTERM does nothing and SIGKILL
    // ends it after the grace period: 137, as docker's.
    let start = Instant::now();
    common::kiln_ok(r, &["stop", "-t", "1", "p1"]);
    assert!(start.elapsed() >= Duration::from_secs(1));
    assert_eq!(common::kiln_ok(r, &["wait", "p1"]), "137\n");
    assert_eq!(c.inspect()["State"]["ExitCode"], 137);
    // A PID 1 that handles SIGTERM gets it.
    let _d = Container::run(
        r,
        &[
            "--name",
            "p2",
            "bb",
            "sh",
            "-c",
            "trap 'exit 9' TERM; while :; do sleep 0.1; done",
        ],
    );
    common::kiln_ok(r, &["stop", "-t", "20", "p2"]);
    assert_eq!(common::kiln_ok(r, &["wait", "p2"]), "9\n");
}

#[test]
fn init_reaps_orphans_and_forwards_signals_without_it_zombies_stay() {
    let root = root_with_bb(json!({}));
    let r = root.path();
    // An orphan that exits: its parent is gone, so PID 1 inherits it.
    let script = "(sleep 0.2 &); exec sleep 1000";
    let _plain = Container::run(r, &["--name", "plain", "bb", "sh", "-c", script]);
    let init = Container::run(r, &["--init", "--name", "init", "bb", "sh", "-c", script]);
    std::thread::sleep(Duration::from_millis(800));
    let (_, cmdline, _) = out(&kiln(r, &["exec", "init", "cat", "/proc/1/cmdline"]));
    assert_eq!(
        cmdline,
        format!("kiln-init\0--\0sh\0-c\0{script}\0"),
        "the init shows the command it runs, not kiln's"
    );
    // Read from the host: inside, the init (all capabilities) is not readable by the
    // container's root, as docker-init is not.
    let pid = init.inspect()["State"]["Pid"].as_i64().unwrap();
    assert_eq!(std::fs::read(format!("/proc/{pid}/environ")).unwrap(), b"");
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap(),
        format!("kiln-init\0--\0sh\0-c\0{script}\0")
    );
    let ps = ps_in(r, "init");
    assert!(!ps.contains(" Z "), "--init reaps: {ps}");
    // Without an init nobody reaps (docker's too): `sleep` is PID 1.
    let ps = ps_in(r, "plain");
    assert!(ps.contains(" Z "), "a zombie without --init: {ps}");
    // The init forwards stop's SIGTERM to the command, which dies of it.
    let start = Instant::now();
    common::kiln_ok(r, &["stop", "-t", "30", "init"]);
    assert!(start.elapsed() < Duration::from_secs(20));
    assert_eq!(common::kiln_ok(r, &["wait", "init"]), "143\n");
}

#[test]
fn attach_without_a_terminal_follows_the_output_and_proxies_signals() {
    let root = root_with_bb(json!({}));
    let r = root.path();
    let _c = Container::run(
        r,
        &[
            "--name",
            "plain",
            "bb",
            "sh",
            "-c",
            "trap 'echo got-int; exit 4' INT; echo before; while :; do sleep 0.1; done",
        ],
    );
    run_fixtures::eventually(10, || {
        common::kiln_ok(r, &["logs", "plain"])
            .contains("before")
            .then_some(())
    })
    .expect("the container printed");
    let child = common::kiln_command()
        .arg("--root")
        .arg(r)
        .args(["attach", "plain"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: kill(2) on the kiln attach this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let o = child.wait_with_output().unwrap();
    // What came before the attach is not repeated (docker's attach neither).
    assert_eq!(String::from_utf8_lossy(&o.stdout), "got-int\n");
    assert_eq!(o.status.code(), Some(4));
}
