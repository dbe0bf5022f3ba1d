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

/// What a terminal shows once `bytes` are written to it (`cols` wide): text, `\r`, `\n`,
/// `ESC[nA`/`ESC[nB` (up/down), `ESC[2K`/`ESC[K` (clear the line), wrapping at the edge.
fn screen(bytes: &[u8], cols: usize) -> Vec<String> {
    let text = String::from_utf8_lossy(bytes);
    let chars: Vec<char> = text.chars().collect();
    let mut rows: Vec<Vec<char>> = vec![Vec::new()];
    let (mut r, mut c, mut wrap) = (0usize, 0usize, false);
    let mut i = 0;
    while i < chars.len() {
        let ch = chars[i];
        if ch == '\x1b' && chars.get(i + 1) == Some(&'[') {
            let mut j = i + 2;
            let mut num = String::new();
            while j < chars.len() && (chars[j].is_ascii_digit() || chars[j] == '?') {
                num.push(chars[j]);
                j += 1;
            }
            let n: usize = num.trim_start_matches('?').parse().unwrap_or(1);
            match chars.get(j) {
                Some('A') => r = r.saturating_sub(n),
                Some('B') => r += n,
                Some('K') if num == "2" => rows.get_mut(r).map(|l| l.clear()).unwrap_or(()),
                Some('K') => rows.get_mut(r).map(|l| l.truncate(c)).unwrap_or(()),
                _ => {}
            }
            wrap = false;
            while rows.len() <= r {
                rows.push(Vec::new());
            }
            i = j + 1;
            continue;
        }
        match ch {
            '\r' => (c, wrap) = (0, false),
            '\n' => (r, c, wrap) = (r + 1, 0, false),
            _ => {
                if wrap {
                    (r, c, wrap) = (r + 1, 0, false);
                }
                while rows.len() <= r {
                    rows.push(Vec::new());
                }
                let row = &mut rows[r];
                while row.len() < c {
                    row.push(' ');
                }
                if c < row.len() {
                    row[c] = ch;
                } else {
                    row.push(ch);
                }
                c += 1;
                if c >= cols {
                    (c, wrap) = (cols - 1, true);
                }
            }
        }
        while rows.len() <= r {
            rows.push(Vec::new());
        }
        i += 1;
    }
    rows.iter()
        .map(|l| l.iter().collect::<String>().trim_end().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// On a terminal the step list stays after a successful build, one line per step with its
/// time or CACHED, then the export lines and the summary (BuildKit's tty display does the
/// same; before, the finished steps were erased with the live area).
#[test]
fn terminal_display_keeps_the_steps_after_success() {
    use std::io::Read;
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
    std::fs::write(ctx.join("Dockerfile"), "FROM busybox\nRUN echo hi > /x\n").unwrap();
    let on_terminal = |extra: &[&str]| -> Vec<String> {
        let size = nix::pty::Winsize {
            ws_row: 40,
            ws_col: 120,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = nix::pty::openpty(Some(&size), None).unwrap();
        let mut cmd = common::kiln_command();
        cmd.arg("--root").arg(r).arg("build");
        cmd.args(extra);
        cmd.args(["-t", "tty:1", ctx.to_str().unwrap()]);
        let mut child = cmd
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::from(pty.slave))
            .spawn()
            .unwrap();
        // The command holds its copy of the slave: drop it, so the reads below end (EIO)
        // when kiln exits.
        drop(cmd);
        let mut master = std::fs::File::from(pty.master);
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        // Reads until the slave side is closed (EIO on Linux).
        loop {
            match master.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
        assert!(child.wait().unwrap().success());
        screen(&out, 120)
    };
    let lines = on_terminal(&["--no-cache"]);
    assert_eq!(lines.len(), 6, "{lines:#?}");
    assert_eq!(lines[0], "#1 [stage-0 1/2] FROM busybox DONE 0.0s");
    assert!(
        lines[1].starts_with("#2 [stage-0 2/2] RUN echo hi > /x DONE "),
        "{lines:#?}"
    );
    assert!(
        lines[2].starts_with("#3 writing image sha256:"),
        "{lines:#?}"
    );
    assert_eq!(lines[3], "#3 naming to docker.io/library/tty:1 done");
    assert!(
        lines[4].starts_with("#3 exporting to image DONE"),
        "{lines:#?}"
    );
    assert!(lines[5].ends_with("2 steps, 0 cached"), "{lines:#?}");
    let lines = on_terminal(&[]);
    assert_eq!(
        lines[1], "#2 [stage-0 2/2] RUN echo hi > /x CACHED",
        "{lines:#?}"
    );
    assert!(lines[5].ends_with("2 steps, 1 cached"), "{lines:#?}");
}
