//! A docker user's habits, typed exactly as they would type them: each test runs shell command
//! lines (`kiln images | head -1`) with kiln on PATH and `KILN_ROOT` set, and checks what the
//! user sees. Docker 28.5's answers to the same command lines are written next to each check.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// Runs `line` in bash (`-o pipefail` off, as an interactive shell) with kiln on PATH.
fn sh(root: &Path, line: &str) -> Output {
    let bin_dir = common::kiln_bin().parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    Command::new("bash")
        .arg("-c")
        .arg(line)
        .env("PATH", path)
        .env("KILN_ROOT", root)
        .env_remove("RUST_BACKTRACE")
        .current_dir(root)
        .output()
        .expect("spawn bash")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A root with busybox imported from the fixture tarball, as a user would make their base image.
fn root_with_busybox() -> tempfile::TempDir {
    let root = common::temp_root();
    let tar = common::busybox_tar();
    let out = sh(
        root.path(),
        &format!("kiln import -q {} busybox:latest", tar.display()),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    root
}

/// `kiln ARGS` with stdout a pipe whose reader has already gone: every write is EPIPE.
fn with_closed_stdout(root: &Path, args: &[&str]) -> Output {
    let (read, write) = nix::unistd::pipe().unwrap();
    drop(read);
    Command::new(common::kiln_bin())
        .args(args)
        .env("KILN_ROOT", root)
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(Stdio::from(write))
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

#[test]
fn output_into_a_closed_pipe_ends_quietly_like_docker() {
    let root = root_with_busybox();
    let r = root.path();
    // docker: `docker inspect busybox | head -1` prints `[`, nothing on stderr, and docker exits
    // 0 or 141 (SIGPIPE) depending on who wins the race. Repeated to catch the race.
    for line in [
        "kiln inspect busybox | head -1",
        "kiln images | head -1",
        "kiln --help | head -1",
        "kiln info | head -1",
        "kiln save busybox | head -c 1000 | wc -c",
        "kiln history busybox | head -1",
        "kiln ps -a | head -1",
    ] {
        for _ in 0..50 {
            let out = sh(
                r,
                &format!("{line}; echo \"status=${{PIPESTATUS[0]}}\" >&2"),
            );
            let stderr = text(&out.stderr);
            assert!(
                stderr == "status=0\n" || stderr == "status=141\n",
                "{line}: stderr {stderr:?}"
            );
            let first = text(&out.stdout);
            let want = match line {
                l if l.starts_with("kiln inspect") => "[\n",
                l if l.starts_with("kiln images") => "REPOSITORY   TAG ",
                l if l.starts_with("kiln --help") => "A daemonless",
                l if l.starts_with("kiln info") => "Containers: ",
                l if l.starts_with("kiln history") => "IMAGE  ",
                l if l.starts_with("kiln ps") => "CONTAINER ID   ",
                _ => "1000\n",
            };
            assert!(first.starts_with(want), "{line}: stdout {first:?}");
        }
    }
    // The reader gone before kiln writes anything: killed by SIGPIPE, as docker (a Go program)
    // and every Unix filter are, with nothing on stderr.
    for args in [
        &["images"][..],
        &["inspect", "busybox"],
        &["version"],
        &["info"],
        &["--help"],
        &["save", "busybox"],
        &["images", "--format", "json"],
        &["history", "busybox"],
        &["ps", "-a"],
    ] {
        let out = with_closed_stdout(r, args);
        assert_eq!(
            out.status.signal(),
            Some(13),
            "kiln {args:?}: {:?}",
            out.status
        );
        assert_eq!(text(&out.stderr), "", "kiln {args:?}");
    }
}

#[test]
fn exit_codes_are_dockers() {
    let root = root_with_busybox();
    let r = root.path();
    let code = |line: &str| sh(r, line).status.code();
    // docker: a bad flag or an unknown command is 125.
    assert_eq!(code("kiln images --bogus"), Some(125));
    assert_eq!(code("kiln bogus"), Some(125));
    assert_eq!(code("kiln images --format"), Some(125));
    // docker: an operation that fails (no such image) is 1.
    assert_eq!(code("kiln rmi nope"), Some(1));
    assert_eq!(code("kiln inspect nope"), Some(1));
    assert_eq!(code("kiln tag nope x"), Some(1));
    // Help is not an error.
    assert_eq!(code("kiln images --help >/dev/null"), Some(0));
    let out = sh(r, "kiln images --bogus");
    assert!(
        text(&out.stderr).contains("'--bogus'"),
        "{}",
        text(&out.stderr)
    );
    assert!(!text(&out.stderr).contains("panicked"));
}

#[test]
fn run_keeps_the_containers_exit_codes() {
    common::require_root();
    let root = root_with_busybox();
    let r = root.path();
    let code = |line: &str| sh(r, line).status.code();
    // docker: the container's code, 127 for a command not found, 125 for run's own errors.
    assert_eq!(code("kiln run --rm busybox sh -c 'exit 3'"), Some(3));
    assert_eq!(code("kiln run --rm busybox no-such-command"), Some(127));
    assert_eq!(code("kiln run --rm no-such-image:1 true"), Some(125));
    assert_eq!(code("kiln run --rm --pid host busybox true"), Some(125));
    // docker: `-h` is the container's hostname.
    let out = sh(r, "kiln run --rm -h myhost busybox hostname");
    assert_eq!(
        (out.status.code(), text(&out.stdout).as_str()),
        (Some(0), "myhost\n"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn docker_flags_kiln_lacks_say_what_docker_does() {
    let root = common::temp_root();
    let r = root.path();
    for (line, want) in [
        (
            "kiln run --pid host busybox",
            "kiln run: kiln does not support --pid (docker: selects the PID namespace (host or \
             container:NAME))",
        ),
        (
            "kiln run --link other:alias busybox",
            "kiln run: kiln does not support --link (docker: links to another container on the \
             legacy bridge)",
        ),
        (
            "kiln images --tree",
            "kiln images: kiln does not support --tree (docker: lists multi-platform images",
        ),
        (
            "kiln run --gpus all busybox",
            "kiln run: kiln does not support --gpus (docker: adds GPU devices",
        ),
        (
            "kiln build --sbom=true .",
            "kiln build: kiln does not support --sbom (docker: attaches an SBOM attestation)",
        ),
        (
            "kiln run --device-read-bps /dev/sda:1mb busybox",
            "kiln run: kiln does not support --device-read-bps (docker: limits the read rate",
        ),
    ] {
        let out = sh(r, line);
        assert_eq!(out.status.code(), Some(125), "{line}");
        let stderr = text(&out.stderr);
        assert!(stderr.starts_with(want), "{line}: {stderr}");
        assert!(!stderr.contains("unexpected argument"), "{line}: {stderr}");
    }
    // A flag docker does not have either: clap's own message, still 125.
    let out = sh(r, "kiln run --no-such-flag busybox");
    assert_eq!(out.status.code(), Some(125));
    assert!(text(&out.stderr).contains("unexpected argument '--no-such-flag'"));
    // docker's `stop --timeout` and `restart --timeout` spellings.
    let out = sh(r, "kiln stop --help");
    assert!(text(&out.stdout).contains("--timeout"));
    let out = sh(r, "kiln restart --help");
    assert!(text(&out.stdout).contains("--timeout"));
}

#[test]
fn version_and_info_describe_this_machine() {
    let root = root_with_busybox();
    let r = root.path();
    let out = sh(r, "kiln version");
    assert!(out.status.success());
    let v = text(&out.stdout);
    assert!(
        v.contains(&format!(
            " Version:           {}\n",
            env!("CARGO_PKG_VERSION")
        )),
        "{v}"
    );
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        a => a,
    };
    assert!(
        v.contains(&format!(" OS/Arch:           linux/{arch}\n")),
        "{v}"
    );

    let out = sh(r, "kiln info");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let info = text(&out.stdout);
    let cgroup = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        "2"
    } else {
        "1"
    };
    let rootless = !nix::unistd::geteuid().is_root();
    for want in [
        "Images: 1\n".to_string(),
        "Containers: 0\n".to_string(),
        format!("Kiln Root Dir: {}\n", r.display()),
        format!("Cgroup Version: {cgroup}\n"),
        format!("Rootless: {rootless}\n"),
        format!("Platforms:\n linux/{arch}\n"),
        "Storage Driver: overlay".to_string(),
    ] {
        assert!(info.contains(&want), "missing {want:?} in:\n{info}");
    }
    // Registry mirrors come from the config file kiln reads.
    let cfg = r.join("config.toml");
    std::fs::write(
        &cfg,
        "registry-mirrors = [\"https://mirror.example.com\"]\n",
    )
    .unwrap();
    let out = sh(r, &format!("KILN_CONFIG={} kiln info", cfg.display()));
    assert!(
        text(&out.stdout).contains("Registry Mirrors:\n https://mirror.example.com\n"),
        "{}",
        text(&out.stdout)
    );
    // --format with docker's field names, as scripts use them (docker: `overlay2
    // /var/lib/docker 1 0`, `28.5.2 linux/amd64`).
    let out = sh(
        r,
        "kiln info --format '{{.Driver}} {{.DockerRootDir}} {{.Images}} {{.ContainersRunning}} {{len .Warnings}}'",
    );
    assert_eq!(
        text(&out.stdout),
        format!("overlay {} 1 0 0\n", r.display()),
        "{}",
        text(&out.stderr)
    );
    let out = sh(
        r,
        "kiln version --format '{{.Client.Version}} {{.Client.Os}}/{{.Client.Arch}}'",
    );
    assert_eq!(
        text(&out.stdout),
        format!("{} linux/{arch}\n", env!("CARGO_PKG_VERSION"))
    );
    // A field docker has and kiln does not: docker's template error, exit 1.
    let out = sh(r, "kiln info --format '{{.Swarm}}'");
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("map has no entry for key \"Swarm\""));
}

/// A build context in the root's directory: `Dockerfile` and `sub/Other.df` (which fails).
fn write_context(root: &Path) {
    std::fs::write(
        root.join("Dockerfile"),
        "FROM busybox\nCOPY hello.txt /\nENV GREETING=hi\n",
    )
    .unwrap();
    std::fs::write(root.join("hello.txt"), "hello\n").unwrap();
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(
        root.join("sub/Other.df"),
        "FROM busybox\nRUN echo about to fail; exit 3\n",
    )
    .unwrap();
}

#[test]
fn build_prints_the_image_id_and_names_as_buildkit_does() {
    common::require_root();
    let root = root_with_busybox();
    let r = root.path();
    write_context(r);
    // docker (BuildKit, --progress plain) ends with:
    //   #6 exporting to image
    //   #6 writing image sha256:03686e3e… done
    //   #6 naming to docker.io/library/hb2:latest done
    //   #6 DONE 0.0s
    let out = sh(r, "kiln build --progress plain -t hello .");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let log = text(&out.stderr);
    let id = text(&sh(r, "kiln images -q --no-trunc hello").stdout)
        .trim()
        .to_string();
    assert!(id.starts_with("sha256:") && id.len() == 71, "{id:?}");
    let lines: Vec<&str> = log.lines().collect();
    let export = lines
        .iter()
        .position(|l| l.ends_with(" exporting to image"))
        .unwrap_or_else(|| panic!("no export step in:\n{log}"));
    let step = lines[export].split(' ').next().unwrap();
    assert_eq!(
        &lines[export + 1..export + 3],
        &[
            format!("{step} writing image {id} done").as_str(),
            format!("{step} naming to docker.io/library/hello:latest done").as_str(),
        ],
        "{log}"
    );
    assert!(
        lines[export + 3].starts_with(&format!("{step} DONE ")),
        "{log}"
    );
    // The export is not one of the build's steps (FROM, COPY) in the summary.
    assert!(log.contains(": 2 steps, "), "{log}");

    // With no -t the ID is how the user finds the image: written, and no name.
    let out = sh(r, "kiln build --progress plain .");
    let log = text(&out.stderr);
    assert!(
        log.contains(&format!(" writing image {id} done\n")),
        "{log}"
    );
    assert!(!log.contains("naming to"), "{log}");
    // docker build -q prints only the ID, on stdout.
    let out = sh(r, "kiln build -q .");
    assert_eq!(text(&out.stdout), format!("{id}\n"));
    assert_eq!(text(&out.stderr), "");
}

#[test]
fn build_errors_name_the_dockerfile_given_with_f() {
    common::require_root();
    let root = root_with_busybox();
    let r = root.path();
    write_context(r);
    // docker: exit 1, and the error names the Dockerfile and its line.
    let out = sh(r, "kiln build -f sub/Other.df .");
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("kiln: sub/Other.df:2: RUN echo about to fail; exit 3: "),
        "{err}"
    );
    assert!(!err.contains("Dockerfile:2"), "{err}");
    let out = sh(r, &format!("kiln build -f {}/sub/Other.df .", r.display()));
    assert!(
        text(&out.stderr).contains(&format!("kiln: {}/sub/Other.df:2: RUN", r.display())),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn build_accepts_dockers_no_op_flags() {
    common::require_root();
    let root = root_with_busybox();
    let r = root.path();
    write_context(r);
    let id = text(&sh(r, "kiln build -q .").stdout);
    for line in [
        "kiln build -q --load .",
        "kiln build -q --rm --force-rm .",
        "kiln build -q --rm=false --force-rm=false .",
        "kiln build -q --pull=false .",
        "kiln build --load --rm --force-rm --pull=false -q .",
    ] {
        let out = sh(r, line);
        assert!(out.status.success(), "{line}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), id, "{line}");
    }
    // --pull alone still means pull (busybox is local only: the pull fails, as it must).
    let out = sh(r, "kiln build -q --pull .");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("FROM busybox"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn history_lists_the_steps_newest_first_with_layer_sizes() {
    common::require_root();
    let root = root_with_busybox();
    let r = root.path();
    write_context(r);
    std::fs::write(
        r.join("Dockerfile"),
        "FROM busybox\nCOPY hello.txt /\nENV GREETING=hi\n\
         RUN echo a-fairly-long-command-line-that-docker-would-cut-short > /long\n",
    )
    .unwrap();
    let out = sh(r, "kiln build -q -t hist .");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_string();
    let short = &id[7..19];
    // docker history: IMAGE CREATED CREATED BY SIZE COMMENT, newest first, the image's ID on
    // the top row and <missing> below (BuildKit's images), sizes of the unpacked files.
    let out = sh(r, "kiln history hist");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(lines.len(), 5, "{shown}");
    assert!(lines[0].starts_with("IMAGE          CREATED   "), "{shown}");
    assert!(lines[0].ends_with("   SIZE      COMMENT"), "{shown}");
    assert!(lines[1].starts_with(&format!("{short}   ")), "{shown}");
    // The RUN line is cut at 45 characters with docker's ellipsis; its layer holds 55 bytes (the file).
    assert!(
        lines[1].contains("RUN /bin/sh -c echo a-fairly-long-command-li…   55B "),
        "{shown}"
    );
    assert!(lines[2].starts_with("<missing>  "), "{shown}");
    assert!(lines[2].contains("ENV GREETING=hi"), "{shown}");
    assert!(
        lines[2].contains("   0B        buildkit.dockerfile.v0"),
        "{shown}"
    );
    assert!(
        lines[3].contains("   COPY hello.txt / # buildkit   "),
        "{shown}"
    );
    assert!(
        lines[3].contains("   6B        buildkit.dockerfile.v0"),
        "{shown}"
    );
    // The imported busybox layer: the binary plus its symlinks, as docker counts it.
    assert!(lines[4].contains("MB    "), "{shown}");
    for l in &lines[1..] {
        assert!(l.contains("ago "), "{l}");
    }

    let out = sh(r, "kiln history --no-trunc hist");
    let full = text(&out.stdout);
    assert!(full.contains(&id), "{full}");
    assert!(
        full.contains("echo a-fairly-long-command-line-that-docker-would-cut-short > /long"),
        "{full}"
    );
    let out = sh(r, "kiln history -q hist");
    assert_eq!(
        text(&out.stdout),
        format!("{short}\n<missing>\n<missing>\n<missing>\n")
    );
    // -H=false: bytes and RFC 3339 times.
    let out = sh(r, "kiln history -H=false hist");
    let raw = text(&out.stdout);
    assert!(raw.starts_with("IMAGE          CREATED AT  "), "{raw}");
    assert!(raw.contains("   55        "), "{raw}");
    assert_eq!(sh(r, "kiln history nope").status.code(), Some(1));
}

#[test]
fn management_commands_are_the_short_forms() {
    common::require_root();
    let root = root_with_busybox();
    let r = root.path();
    // The two commands run a moment apart, so a CREATED column may go from "Less than a second
    // ago" to "1 second ago" (and its padding with it): compare without times and padding.
    let same = |a: &str, b: &str| {
        let (x, y) = (sh(r, a), sh(r, b));
        assert_eq!(x.status.code(), y.status.code(), "{a} / {b}");
        assert_eq!(
            without_times(&text(&x.stdout)),
            without_times(&text(&y.stdout)),
            "{a} / {b}"
        );
    };
    same("kiln image ls", "kiln images");
    same("kiln image list -q", "kiln images -q");
    same("kiln image inspect busybox", "kiln inspect busybox");
    same("kiln image history busybox", "kiln history busybox");
    same("kiln container ls -a", "kiln ps -a");
    assert!(sh(r, "kiln image tag busybox bb:2").status.success());
    assert!(text(&sh(r, "kiln images").stdout).contains("bb           2 "));
    assert!(sh(r, "kiln image rm bb:2").status.success());
    assert!(!text(&sh(r, "kiln images").stdout).contains("bb "));
    let out = sh(r, "kiln container run --name c1 busybox echo hi");
    assert_eq!(text(&out.stdout), "hi\n", "{}", text(&out.stderr));
    assert_eq!(text(&sh(r, "kiln container logs c1").stdout), "hi\n");
    assert_eq!(text(&sh(r, "kiln container wait c1").stdout), "0\n");
    assert_eq!(text(&sh(r, "kiln container rm c1").stdout), "c1\n");
    let out = sh(r, "kiln image save busybox | kiln image load");
    assert_eq!(text(&out.stdout), "Loaded image: busybox:latest\n");
    // `kiln --root R image ls` too.
    let out = sh(r, &format!("kiln --root {} image ls -q", r.display()));
    assert_eq!(text(&out.stdout), text(&sh(r, "kiln images -q").stdout));
    let out = sh(r, "kiln image bogus");
    assert_eq!(out.status.code(), Some(125));
    assert!(text(&out.stderr).contains("kiln image has ls, "));
}

/// Output with relative times ("3 seconds ago", "Less than a second ago", "About a minute ago")
/// taken out and runs of spaces folded, line by line.
fn without_times(out: &str) -> String {
    out.lines()
        .map(|line| {
            let mut words: Vec<&str> = line.split_whitespace().collect();
            while let Some(i) = words.iter().position(|w| *w == "ago" || *w == "ago\"") {
                let start = if i >= 4 && words[i - 4..i] == ["Less", "than", "a", "second"] {
                    i - 4
                } else {
                    i.saturating_sub(2)
                };
                words.drain(start..=i);
            }
            words.join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}
