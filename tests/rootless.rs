//! kiln as an unprivileged user (issue #13). The suite runs as root, as CI does: it makes its own
//! unprivileged users (idempotently) and drives kiln as them through `setpriv`, with HOME set:
//! `kilnrl-full` has subuid/subgid ranges, `kilnrl-single` has none (one id mapped).
//!
//! Builds as the user are compared with the same builds as root, layer by layer (equal DiffIDs:
//! byte-identical layer tarballs, owners, modes and contents included), under a fixed
//! SOURCE_DATE_EPOCH.

mod common;
mod registry_support;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

const FULL_USER: &str = "kilnrl-full";
const SINGLE_USER: &str = "kilnrl-single";
/// The range given to FULL_USER (none of the other users has one).
const FULL_RANGE: (u32, u32) = (400_000, 65_536);
const EPOCH: &str = "1700000000";

#[derive(Debug, Clone, Copy)]
struct User {
    name: &'static str,
    uid: u32,
    gid: u32,
}

static USERADD: Mutex<()> = Mutex::new(());
/// One test at a time: the leftover checks look at every process of the test users.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn id_of(name: &str, flag: &str) -> Option<u32> {
    let out = Command::new("id").arg(flag).arg(name).output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The user, made if missing, with exactly `range` as its subordinate ids (None: no range).
fn ensure_user(name: &'static str, range: Option<(u32, u32)>) -> User {
    common::require_root();
    let _g = USERADD.lock().unwrap_or_else(|e| e.into_inner());
    if id_of(name, "-u").is_none() {
        // No automatic ranges (login.defs' SUB_UID_COUNT): this suite decides who has one.
        run_ok(Command::new("useradd").args([
            "-M",
            "-s",
            "/bin/sh",
            "-K",
            "SUB_UID_COUNT=0",
            "-K",
            "SUB_GID_COUNT=0",
            name,
        ]));
    }
    for (file, add, del) in [
        ("/etc/subuid", "--add-subuids", "--del-subuids"),
        ("/etc/subgid", "--add-subgids", "--del-subgids"),
    ] {
        let text = fs::read_to_string(file).unwrap_or_default();
        let have: Vec<String> = text
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() == 3 && f[0] == name).then(|| {
                    let start: u64 = f[1].parse().unwrap_or(0);
                    let count: u64 = f[2].parse().unwrap_or(1);
                    format!("{start}-{}", start + count - 1)
                })
            })
            .collect();
        let want = range.map(|(s, n)| format!("{s}-{}", s as u64 + n as u64 - 1));
        for r in &have {
            if Some(r) != want.as_ref() {
                run_ok(Command::new("usermod").args([del, r, name]));
            }
        }
        if let Some(w) = &want {
            if !have.contains(w) {
                run_ok(Command::new("usermod").args([add, w, name]));
            }
        }
    }
    User {
        name,
        uid: id_of(name, "-u").unwrap(),
        gid: id_of(name, "-g").unwrap(),
    }
}

/// The kiln binary, where the test users can run it (cargo's own when its directories are open
/// to everyone, else a copy).
fn user_kiln() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let bin = common::kiln_bin();
        let open = bin.ancestors().skip(1).all(|d| {
            fs::metadata(d)
                .map(|m| m.mode() & 0o001 != 0)
                .unwrap_or(false)
        }) && fs::metadata(&bin)
            .map(|m| m.mode() & 0o005 == 0o005)
            .unwrap_or(false);
        if open {
            return bin;
        }
        let dir = std::env::temp_dir().join(format!("kiln-rootless-bin.{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let copy = dir.join("kiln");
        fs::copy(&bin, &copy).unwrap();
        fs::set_permissions(&copy, fs::Permissions::from_mode(0o755)).unwrap();
        copy
    })
    .clone()
}

/// A home directory for one test, owned by the user (removed by root at the end).
struct Home {
    dir: tempfile::TempDir,
    user: User,
    /// KILN_ROOTLESS_HOLD for the user's kilns: a namespace holder that ends a second after
    /// the last kiln, so the leftover checks see it gone.
    hold_secs: &'static str,
}

impl Home {
    fn new(user: User) -> Home {
        let dir = tempfile::Builder::new()
            .prefix("kiln-rootless-home.")
            .tempdir()
            .unwrap();
        std::os::unix::fs::chown(dir.path(), Some(user.uid), Some(user.gid)).unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
        Home {
            dir,
            user,
            hold_secs: "1",
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The default root of the user (`~/.local/share/kiln`).
    fn root(&self) -> PathBuf {
        self.path().join(".local/share/kiln")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("setpriv");
        cmd.arg(format!("--reuid={}", self.user.uid))
            .arg(format!("--regid={}", self.user.gid))
            .arg("--clear-groups")
            .arg("--")
            .arg(user_kiln())
            .args(args)
            .current_dir(self.path())
            .env("HOME", self.path())
            .env("USER", self.user.name)
            .env("SOURCE_DATE_EPOCH", EPOCH)
            .env("KILN_LOOPBACK_REGISTRIES_ONLY", "1")
            .env("KILN_ROOTLESS_HOLD", self.hold_secs)
            .env_remove("KILN_ROOT")
            .env_remove("XDG_DATA_HOME");
        cmd
    }

    fn kiln(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("spawn setpriv")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.kiln(args);
        assert!(
            out.status.success(),
            "as {}: kiln {args:?} failed ({}):\n{}{}",
            self.user.name,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A copy of `src` (a build context) the user can read, inside the home.
    fn context(&self, name: &str, src: &Path) -> PathBuf {
        let dst = self.path().join(name);
        run_ok(Command::new("cp").arg("-a").arg(src).arg(&dst));
        run_ok(Command::new("chmod").args(["-R", "a+rX"]).arg(&dst));
        dst
    }

    fn import_busybox(&self) {
        let tar = self.path().join("busybox.tar");
        fs::copy(common::busybox_tar(), &tar).unwrap();
        fs::set_permissions(&tar, fs::Permissions::from_mode(0o644)).unwrap();
        self.ok(&["import", tar.to_str().unwrap(), "busybox:latest"]);
    }
}

/// As root: a fresh root with the same busybox import.
fn root_store() -> tempfile::TempDir {
    let root = common::temp_root();
    common::kiln_ok(
        root.path(),
        &[
            "import",
            common::busybox_tar().to_str().unwrap(),
            "busybox:latest",
        ],
    );
    root
}

fn root_build(root: &Path, args: &[&str]) {
    let out = common::kiln_command()
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .arg("--root")
        .arg(root)
        .args(["build", "--progress", "plain"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "root build {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn layers_in(inspect_json: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(inspect_json).unwrap();
    v[0]["RootFS"]["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_string())
        .collect()
}

const OWNERS_DOCKERFILE: &str = r#"FROM busybox:latest AS build
COPY --chown=7:8 a.txt /owned/seven.txt
COPY --chown=1000:1000 --chmod=600 a.txt /owned/thousand.txt
COPY --chown=65534:65534 dir/ /owned/nobody/
RUN mkdir -p /data/sub && echo x > /data/sub/f && chown -R 123:456 /data && chmod 2750 /data/sub \
 && ln -s sub/f /data/link && chown -h 42:43 /data/link && mkfifo /data/fifo && chown 9:9 /data/fifo
RUN --mount=type=cache,target=/cache,uid=321,gid=654 touch /cache/x && stat -c %u:%g /cache > /from-cache
FROM busybox:latest
COPY --from=build /owned /owned
COPY --from=build /data /data
COPY --from=build /from-cache /from-cache
"#;

fn owners_context(dir: &Path) {
    fs::create_dir_all(dir.join("dir/deep")).unwrap();
    fs::write(dir.join("a.txt"), "a\n").unwrap();
    fs::write(dir.join("dir/deep/b.txt"), "b\n").unwrap();
    fs::write(dir.join("Dockerfile"), OWNERS_DOCKERFILE).unwrap();
}

/// Every testdata/build case that needs nothing of the host's root, plus a Dockerfile of many
/// owners (COPY --chown to several ids, a RUN that chowns, multi-stage, a cache mount): built as
/// the user with subordinate ids and as root, the layers are the same.
#[test]
fn rootless_builds_have_the_same_layers_as_root() {
    let _serial = serial();
    let user = ensure_user(FULL_USER, Some(FULL_RANGE));
    let home = Home::new(user);
    home.import_busybox();
    let root = root_store();
    let src = tempfile::tempdir().unwrap();
    owners_context(src.path());
    let mut cases: Vec<(String, PathBuf, PathBuf, Vec<String>)> = Vec::new();
    let owners = home.context("owners", src.path());
    cases.push((
        "owners".into(),
        owners.join("Dockerfile"),
        owners.clone(),
        vec![],
    ));
    for name in [
        "copy_semantics",
        "multistage",
        "run_features",
        "instructions",
        "arg_scoping",
        "dockerignore",
    ] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata/build")
            .join(name);
        let case: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(dir.join("case.json")).unwrap()).unwrap();
        let copy = home.context(name, &dir);
        let ctx = if copy.join("context").is_dir() {
            copy.join("context")
        } else {
            copy.clone()
        };
        let args = case["args"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| a.as_str().unwrap().to_string())
            .collect();
        cases.push((name.to_string(), copy.join("Dockerfile"), ctx, args));
    }
    for (name, dockerfile, ctx, extra) in &cases {
        let tag = format!("case-{name}");
        let mut args: Vec<&str> = vec!["-t", &tag, "-f", dockerfile.to_str().unwrap()];
        args.extend(extra.iter().map(String::as_str));
        args.push(ctx.to_str().unwrap());
        let mut user_args = vec!["build", "--progress", "plain"];
        user_args.extend(&args);
        home.ok(&user_args);
        root_build(root.path(), &args);
        let mine = layers_in(&home.ok(&["inspect", &tag]));
        let roots = layers_in(&common::kiln_ok(root.path(), &["inspect", &tag]));
        assert_eq!(
            mine, roots,
            "case {name}: rootless layers differ from root's"
        );
    }
    // The owners really are many (a rootless build that stored everything as root would have
    // failed the comparison above; this says which ids it is about).
    let flat = tempfile::tempdir().unwrap();
    common::kiln_ok(
        root.path(),
        &[
            "build",
            "-q",
            "--output",
            &format!("type=local,dest={}", flat.path().display()),
            "-f",
            owners.join("Dockerfile").to_str().unwrap(),
            owners.to_str().unwrap(),
        ],
    );
    let ids = |p: &str| {
        let m = fs::symlink_metadata(flat.path().join(p)).unwrap();
        (m.uid(), m.gid())
    };
    assert_eq!(ids("owned/seven.txt"), (7, 8));
    assert_eq!(ids("owned/thousand.txt"), (1000, 1000));
    assert_eq!(ids("owned/nobody/deep/b.txt"), (65534, 65534));
    assert_eq!(ids("data/sub/f"), (123, 456));
    assert_eq!(ids("data/link"), (42, 43));
    assert_eq!(ids("data/fifo"), (9, 9));
    assert_eq!(
        fs::read_to_string(flat.path().join("from-cache")).unwrap(),
        "321:654\n"
    );
    assert_no_leftovers(&home);
}

/// Whatever a user's kiln left: processes of the user's ids, entries under the root's
/// `snapshots/active`, `userns` and `tmp`.
fn assert_no_leftovers(home: &Home) {
    let uid = home.user.uid;
    let ours = |u: u32| u == uid || (FULL_RANGE.0..FULL_RANGE.0 + FULL_RANGE.1).contains(&u);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut procs = Vec::new();
        for e in fs::read_dir("/proc").unwrap().flatten() {
            let Ok(status) = fs::read_to_string(e.path().join("status")) else {
                continue;
            };
            let real = status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().next()?.parse::<u32>().ok());
            if real.is_some_and(ours) && !status.contains("State:\tZ") {
                procs.push(e.file_name().to_string_lossy().into_owned());
            }
        }
        if procs.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "processes of {} left: {procs:?}",
            home.user.name
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let root = home.root();
    for sub in ["snapshots/active", "userns", "tmp"] {
        let left: Vec<_> = fs::read_dir(root.join(sub))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "left under {sub}: {left:?}");
    }
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(home.path().to_str().unwrap()),
        "mounts left in the host's namespace"
    );
}

/// Push to a loopback registry as the user, pull it back into another root of the user and as
/// root, save and load: the layers stay the ones root builds.
#[test]
fn rootless_push_pull_save_load_keep_owners() {
    let _serial = serial();
    let user = ensure_user(FULL_USER, Some(FULL_RANGE));
    let home = Home::new(user);
    home.import_busybox();
    let src = tempfile::tempdir().unwrap();
    owners_context(src.path());
    let ctx = home.context("owners", src.path());
    home.ok(&["build", "-q", "-t", "owners:1", ctx.to_str().unwrap()]);
    let built = layers_in(&home.ok(&["inspect", "owners:1"]));

    let registry = registry_support::Registry::start(registry_support::AuthMode::None);
    let remote = format!("{}/rootless/owners:1", registry.host());
    home.ok(&["tag", "owners:1", &remote]);
    home.ok(&["push", &remote]);
    let second = home.path().join("second-root");
    let second_s = second.to_str().unwrap();
    home.ok(&["--root", second_s, "pull", &remote]);
    assert_eq!(
        layers_in(&home.ok(&["--root", second_s, "inspect", &remote])),
        built
    );

    let root = common::temp_root();
    common::kiln_ok(root.path(), &["pull", &remote]);
    assert_eq!(
        layers_in(&common::kiln_ok(root.path(), &["inspect", &remote])),
        built
    );
    let archive = home.path().join("owners.tar");
    home.ok(&["save", "-o", archive.to_str().unwrap(), "owners:1"]);
    let third = home.path().join("third-root");
    let third_s = third.to_str().unwrap();
    home.ok(&["--root", third_s, "load", "-i", archive.to_str().unwrap()]);
    assert_eq!(
        layers_in(&home.ok(&["--root", third_s, "inspect", "owners:1"])),
        built
    );
    // What the pulled image runs with: owners as built.
    let ls = home.ok(&[
        "--root",
        second_s,
        "run",
        "--rm",
        &remote,
        "ls",
        "-ln",
        "/owned/seven.txt",
        "/data/sub/f",
    ]);
    assert!(
        ls.contains(" 7        8 ") && ls.contains(" 123      456 "),
        "{ls}"
    );
    assert!(home.ok(&["images"]).contains("owners"));
    assert_no_leftovers(&home);
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// `kiln run -d -p HIGH:PORT` as the user, a fetch through the port, exec (also as another user
/// inside), logs, stop, rm; a low port is refused with the sysctl named; limits fail clearly.
#[test]
fn rootless_containers_run_publish_exec_stop_rm() {
    let _serial = serial();
    let user = ensure_user(FULL_USER, Some(FULL_RANGE));
    let home = Home::new(user);
    home.import_busybox();
    let port = free_port();
    let id = home.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "-p",
        &format!("127.0.0.1:{port}:8080"),
        "busybox:latest",
        "sh",
        "-c",
        "mkdir /www && echo rootless-page > /www/index.html && echo serving && exec httpd -f -p 8080 -h /www",
    ]);
    assert_eq!(id.trim().len(), 64, "{id}");
    let mut page = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while page.is_none() && Instant::now() < deadline {
        page = http_get(port, "/index.html").filter(|p| p.contains("rootless-page"));
        if page.is_none() {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    assert!(page.is_some(), "no page through 127.0.0.1:{port}");
    assert_eq!(home.ok(&["exec", "web", "id", "-u"]).trim(), "0");
    assert_eq!(
        home.ok(&["exec", "-u", "1000:1000", "web", "id", "-u"])
            .trim(),
        "1000"
    );
    assert!(home.ok(&["logs", "web"]).contains("serving"));
    assert!(home.ok(&["ps"]).contains("web"));
    assert!(home.ok(&["top", "web"]).contains("httpd"));
    let pause = home.kiln(&["pause", "web"]);
    assert!(!pause.status.success());
    assert!(String::from_utf8_lossy(&pause.stderr).contains("rootless"));
    home.ok(&["stop", "-t", "2", "web"]);
    assert!(home.ok(&["ps", "-a"]).contains("Exited"));
    home.ok(&["rm", "web"]);
    assert!(!home.ok(&["ps", "-a"]).contains("web"));

    let low = home.kiln(&["run", "--rm", "-p", "80:80", "busybox:latest", "true"]);
    let err = String::from_utf8_lossy(&low.stderr);
    assert!(!low.status.success());
    assert!(err.contains("ip_unprivileged_port_start"), "{err}");

    let limited = home.kiln(&["run", "--rm", "-m", "64m", "busybox:latest", "true"]);
    let err = String::from_utf8_lossy(&limited.stderr);
    assert!(!limited.status.success());
    assert!(
        err.contains("resource limits") && err.contains("rootless"),
        "{err}"
    );
    assert_no_leftovers(&home);
}

/// Without a subordinate range: one note, files of other owners stored as root, and clear
/// errors (with the usermod line) for what needs other ids.
#[test]
fn rootless_single_mapping_stores_root_owned_and_refuses_other_owners() {
    let _serial = serial();
    let user = ensure_user(SINGLE_USER, None);
    let home = Home::new(user);
    let first = home.command(&["images"]).output().unwrap();
    let note = String::from_utf8_lossy(&first.stderr);
    assert!(first.status.success(), "{note}");
    assert!(note.contains("stored as root-owned"), "{note}");
    let again = home.kiln(&["images"]);
    assert!(
        !String::from_utf8_lossy(&again.stderr).contains("root-owned"),
        "the note is said once"
    );
    home.import_busybox();
    let info = home.ok(&["info"]);
    assert!(info.contains("subuid range: MISSING"), "{info}");

    let ctx = home.path().join("ctx");
    fs::create_dir_all(&ctx).unwrap();
    fs::write(ctx.join("a.txt"), "a\n").unwrap();
    let dockerfile = |name: &str, text: &str| {
        let p = ctx.join(name);
        fs::write(&p, text).unwrap();
        p
    };
    let chown = dockerfile(
        "Dockerfile.chown",
        "FROM busybox:latest\nCOPY --chown=7:8 a.txt /a\n",
    );
    let run_chown = dockerfile(
        "Dockerfile.run",
        "FROM busybox:latest\nRUN touch /x && chown 5:5 /x\n",
    );
    let plain = dockerfile(
        "Dockerfile.plain",
        "FROM busybox:latest\nCOPY a.txt /a\nRUN echo ok > /ok && ls -ln /etc/passwd > /owners\n",
    );
    run_ok(Command::new("chmod").args(["-R", "a+rX"]).arg(&ctx));
    for (f, what) in [(&chown, "--chown=7:8"), (&run_chown, "Invalid argument")] {
        let out = home.kiln(&[
            "build",
            "-q",
            "-f",
            f.to_str().unwrap(),
            ctx.to_str().unwrap(),
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{f:?} built");
        assert!(
            err.contains(what) && err.contains("usermod --add-subuids"),
            "{f:?}: {err}"
        );
    }
    home.ok(&[
        "build",
        "-q",
        "-t",
        "plain",
        "-f",
        plain.to_str().unwrap(),
        ctx.to_str().unwrap(),
    ]);
    let out = home.ok(&["run", "--rm", "plain", "cat", "/ok", "/owners"]);
    assert!(
        out.starts_with("ok\n") && out.contains(" 0        0 "),
        "{out}"
    );
    let user_run = home.kiln(&["run", "--rm", "-u", "1000", "busybox:latest", "true"]);
    assert!(!user_run.status.success());
    assert!(String::from_utf8_lossy(&user_run.stderr).contains("usermod --add-subuids"));
}

/// Each user has a root of its own (0700); another user can neither read it nor use it.
#[test]
fn rootless_second_user_cannot_read_or_change_the_first_root() {
    let _serial = serial();
    let first = Home::new(ensure_user(FULL_USER, Some(FULL_RANGE)));
    let second = Home::new(ensure_user(SINGLE_USER, None));
    first.ok(&["images"]);
    let root = first.root();
    let meta = fs::metadata(&root).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o700);
    assert_eq!(meta.uid(), first.user.uid);
    // The second user's home must let it reach the first's path to try: open the first home.
    fs::set_permissions(first.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let root_s = root.to_str().unwrap();
    let out = second.kiln(&["--root", root_s, "images"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("not to you"), "{err}");
    let ls = Command::new("setpriv")
        .arg(format!("--reuid={}", second.user.uid))
        .arg(format!("--regid={}", second.user.gid))
        .args(["--clear-groups", "--", "ls"])
        .arg(&root)
        .output()
        .unwrap();
    assert!(
        !ls.status.success(),
        "the second user lists the first's root"
    );
    // Its own default root is elsewhere, and XDG_DATA_HOME moves it.
    let info = second.ok(&["info", "-f", "{{.KilnRootDir}}"]);
    assert_eq!(info.trim(), second.root().to_str().unwrap());
    let xdg = second.path().join("xdg");
    let out = second
        .command(&["info", "-f", "{{.KilnRootDir}}"])
        .env("XDG_DATA_HOME", &xdg)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        xdg.join("kiln").to_str().unwrap()
    );
}

/// A rootless build killed by SIGKILL in the middle of a RUN: its mounts die with its mount
/// namespace, its processes with it, and the next command removes its snapshot directories.
#[test]
fn rootless_killed_build_leaves_nothing_behind() {
    let _serial = serial();
    let home = Home::new(ensure_user(FULL_USER, Some(FULL_RANGE)));
    home.import_busybox();
    let ctx = home.path().join("ctx");
    fs::create_dir_all(&ctx).unwrap();
    fs::write(
        ctx.join("Dockerfile"),
        "FROM busybox:latest\nRUN sleep 60\n",
    )
    .unwrap();
    run_ok(Command::new("chmod").args(["-R", "a+rX"]).arg(&ctx));
    let mut child = home
        .command(&["build", "-q", "--no-cache", ctx.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let active = home.root().join("snapshots/active");
    let deadline = Instant::now() + Duration::from_secs(30);
    while fs::read_dir(&active).map(|d| d.count()).unwrap_or(0) == 0 {
        assert!(
            Instant::now() < deadline,
            "the build never started its RUN step"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    // setpriv execs kiln: the child's pid is kiln's.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let _ = child.wait();
    home.ok(&["images"]);
    assert_no_leftovers(&home);
}

/// The copy-based snapshotter (what kiln falls back to where a kernel refuses overlayfs in a user
/// namespace; forced here by KILN_SNAPSHOTTER=copy): one note, the same layers as root's, and a
/// container's writable layer kept across `start`.
#[test]
fn rootless_copy_snapshotter_builds_the_same_layers() {
    let _serial = serial();
    let home = Home::new(ensure_user(FULL_USER, Some(FULL_RANGE)));
    home.import_busybox();
    let root = root_store();
    let src = tempfile::tempdir().unwrap();
    owners_context(src.path());
    let owners = home.context("owners", src.path());
    let multistage = home.context(
        "multistage",
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/build/multistage"),
    );
    for (tag, ctx, extra) in [
        ("owners", &owners, vec![]),
        ("multistage", &multistage, vec!["--target", "final"]),
    ] {
        let df = ctx.join("Dockerfile");
        let mut args = vec!["-t", tag, "-f", df.to_str().unwrap()];
        args.extend(extra);
        args.push(ctx.to_str().unwrap());
        let mut user_args = vec!["build", "--progress", "plain"];
        user_args.extend(&args);
        let out = home
            .command(&user_args)
            .env("KILN_SNAPSHOTTER", "copy")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        assert_eq!(err.matches("snapshots are copies").count(), 1, "{err}");
        root_build(root.path(), &args);
        assert_eq!(
            layers_in(&home.ok(&["inspect", tag])),
            layers_in(&common::kiln_ok(root.path(), &["inspect", tag])),
            "{tag}: copy-snapshotter layers differ from root's"
        );
    }
    let script = "if [ -f /mark ]; then cat /mark; ls /etc/group || true; else echo kept > /mark; rm /etc/group; fi";
    let run = |args: &[&str]| {
        let out = home
            .command(args)
            .env("KILN_SNAPSHOTTER", "copy")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run(&[
        "run",
        "--name",
        "keep",
        "busybox:latest",
        "sh",
        "-c",
        script,
    ]);
    let second = run(&["start", "-a", "keep"]);
    assert!(second.starts_with("kept\n"), "{second}");
    assert!(
        !second.contains("/etc/group\n"),
        "the deletion was not kept: {second}"
    );
    home.ok(&["rm", "keep"]);
    assert_no_leftovers(&home);
}

/// A container's files as the user: `cp` in and out, `diff`, `commit` and `export` keep the
/// owners the container gave them (ids of the subordinate range), and `run -it` / `exec -it` get a
/// terminal inside the user namespace.
#[test]
fn rootless_cp_diff_commit_export_and_terminals() {
    let _serial = serial();
    let home = Home::new(ensure_user(FULL_USER, Some(FULL_RANGE)));
    home.import_busybox();
    home.ok(&[
        "run",
        "-d",
        "--name",
        "box",
        "busybox:latest",
        "sh",
        "-c",
        "mkdir /work && echo made-inside > /work/a && chown 1234:4321 /work/a && touch /ready && exec sleep 1000",
    ]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !home
        .kiln(&["exec", "box", "test", "-f", "/ready"])
        .status
        .success()
    {
        assert!(Instant::now() < deadline, "the container never got ready");
        std::thread::sleep(Duration::from_millis(100));
    }

    // cp into the container: the file lands as root:root (docker's default without -a).
    let incoming = home.path().join("in.txt");
    fs::write(&incoming, "from-host\n").unwrap();
    std::os::unix::fs::chown(&incoming, Some(home.user.uid), Some(home.user.gid)).unwrap();
    home.ok(&["cp", incoming.to_str().unwrap(), "box:/work/in.txt"]);
    assert_eq!(
        home.ok(&[
            "exec",
            "box",
            "stat",
            "-c",
            "%u:%g %n",
            "/work/in.txt",
            "/work/a"
        ]),
        "0:0 /work/in.txt\n1234:4321 /work/a\n"
    );
    // cp out: the copy belongs to the user, with the container's contents.
    let out_dir = home.path().join("out");
    home.ok(&["cp", "box:/work", out_dir.to_str().unwrap()]);
    assert_eq!(
        fs::read_to_string(out_dir.join("a")).unwrap(),
        "made-inside\n"
    );
    assert_eq!(
        fs::metadata(out_dir.join("a")).unwrap().uid(),
        home.user.uid
    );

    let diff = home.ok(&["diff", "box"]);
    for line in ["A /work", "A /work/a", "A /work/in.txt", "A /ready"] {
        assert!(
            diff.lines().any(|l| l == line),
            "no {line:?} in diff:\n{diff}"
        );
    }

    // commit: the new image's layer keeps the container's owners.
    home.ok(&["commit", "box", "snap:1"]);
    assert_eq!(
        home.ok(&["run", "--rm", "snap:1", "stat", "-c", "%u:%g", "/work/a"]),
        "1234:4321\n"
    );
    // export: the tarball carries the ids as the container sees them.
    let exported = home.path().join("box.tar");
    home.ok(&["export", "-o", exported.to_str().unwrap(), "box"]);
    let mut archive = tar::Archive::new(fs::File::open(&exported).unwrap());
    let mut owner = None;
    for entry in archive.entries().unwrap() {
        let entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        if path.trim_start_matches("./").trim_start_matches('/') == "work/a" {
            owner = Some((entry.header().uid().unwrap(), entry.header().gid().unwrap()));
        }
    }
    assert_eq!(owner, Some((1234, 4321)), "work/a in the export");

    // Terminals: a pty from the container's own devpts, inside the user namespace.
    let in_terminal = |kiln_args: &str| -> String {
        let cmd = format!("{} {kiln_args}", user_kiln().display());
        let out = Command::new("setpriv")
            .arg(format!("--reuid={}", home.user.uid))
            .arg(format!("--regid={}", home.user.gid))
            .args(["--clear-groups", "--", "script", "-qec", &cmd, "/dev/null"])
            .current_dir(home.path())
            .env("HOME", home.path())
            .env("TERM", "xterm")
            .env("KILN_ROOTLESS_HOLD", home.hold_secs)
            .env_remove("KILN_ROOT")
            .env_remove("XDG_DATA_HOME")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{kiln_args}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).replace('\r', "")
    };
    let run_tty = in_terminal("run --rm -it busybox:latest sh -c 'tty; echo $TERM'");
    // (script may echo its closed stdin as a control character between the lines)
    assert!(
        run_tty.contains("/dev/pts/0\n") && run_tty.contains("xterm\n"),
        "{run_tty:?}"
    );
    let exec_tty = in_terminal("exec -it box tty");
    assert!(exec_tty.contains("/dev/pts/"), "{exec_tty:?}");

    home.ok(&["rm", "-f", "box"]);
    home.ok(&["rmi", "snap:1"]);
    assert_no_leftovers(&home);
}

/// A cgroup v2 subtree handed to the test user (as systemd's `Delegate=yes` does: the directory
/// and its `cgroup.procs`, `cgroup.subtree_control` and `cgroup.threads` chowned), with the
/// commands of the test started inside it. Removed, with anything left in it, on drop.
struct DelegatedCgroup {
    dir: PathBuf,
}

impl DelegatedCgroup {
    fn new(user: User) -> Option<DelegatedCgroup> {
        let mount = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
            .into_iter()
            .map(PathBuf::from)
            .find(|m| m.join("cgroup.controllers").exists())?;
        let dir = mount.join(format!("kiln-test-delegated.{}", std::process::id()));
        fs::create_dir(&dir).unwrap();
        for p in [
            "",
            "cgroup.procs",
            "cgroup.subtree_control",
            "cgroup.threads",
        ] {
            std::os::unix::fs::chown(dir.join(p), Some(user.uid), Some(user.gid)).unwrap();
        }
        Some(DelegatedCgroup { dir })
    }

    /// `cmd`, started inside the delegated cgroup (it moves itself there, then execs).
    fn wrap(&self, cmd: &Command) -> Command {
        let mut wrapped = Command::new("sh");
        wrapped
            .arg("-c")
            .arg("echo $$ > \"$0/cgroup.procs\" && exec \"$@\"")
            .arg(&self.dir)
            .arg(cmd.get_program())
            .args(cmd.get_args());
        if let Some(dir) = cmd.get_current_dir() {
            wrapped.current_dir(dir);
        }
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => wrapped.env(k, v),
                None => wrapped.env_remove(k),
            };
        }
        wrapped
    }

    /// The cgroups under it, deepest first.
    fn tree(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            for e in fs::read_dir(dir).into_iter().flatten().flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&e.path(), out);
                    out.push(e.path());
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.dir, &mut out);
        out
    }
}

impl Drop for DelegatedCgroup {
    fn drop(&mut self) {
        let mut dirs = self.tree();
        dirs.push(self.dir.clone());
        for d in &dirs {
            let _ = fs::write(d.join("cgroup.freeze"), "0");
            let _ = fs::write(d.join("cgroup.kill"), "1");
        }
        for d in &dirs {
            for _ in 0..100 {
                if fs::remove_dir(d).is_ok() || !d.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Rootless kiln in a delegated cgroup v2 subtree: containers get cgroups inside it
/// (`DELEGATED/kiln/<name>`), `pause`/`unpause` work through `cgroup.freeze`, `kiln info` names
/// the subtree, a limit whose controller the subtree lacks fails naming it, and `rm` leaves
/// no cgroup behind. (This machine's v2 hierarchy has no controllers: the limits themselves
/// are written as root's v2 limits are.)
#[test]
fn rootless_delegated_cgroup_subtree_holds_containers_and_pauses_them() {
    let _serial = serial();
    let user = ensure_user(FULL_USER, Some(FULL_RANGE));
    let Some(cgroup) = DelegatedCgroup::new(user) else {
        panic!("no cgroup v2 hierarchy at /sys/fs/cgroup or /sys/fs/cgroup/unified");
    };
    let home = Home::new(user);
    let run = |args: &[&str]| -> Output { cgroup.wrap(&home.command(args)).output().unwrap() };
    let ok = |args: &[&str]| -> String {
        let out = run(args);
        assert!(
            out.status.success(),
            "kiln {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // The first kiln starts in the delegated cgroup: its namespace holder, which stays, moves
    // into the leaf `kiln-processes` so the subtree can still hand controllers down.
    let tar = home.path().join("busybox.tar");
    fs::copy(common::busybox_tar(), &tar).unwrap();
    fs::set_permissions(&tar, fs::Permissions::from_mode(0o644)).unwrap();
    ok(&["import", tar.to_str().unwrap(), "busybox:latest"]);
    let holders = registrations(&home);
    assert_eq!(holders.len(), 1, "{holders:?}");
    let holder_cgroup = fs::read_to_string(format!("/proc/{}/cgroup", holders[0].0)).unwrap();
    let leaf = format!(
        "0::/{}/kiln-processes",
        cgroup.dir.file_name().unwrap().to_str().unwrap()
    );
    assert!(
        holder_cgroup.lines().any(|l| l == leaf),
        "the holder is in {holder_cgroup:?}, not {leaf}"
    );

    let info = ok(&["info"]);
    assert!(
        info.contains(&format!("cgroup v2 subtree {}", cgroup.dir.display())),
        "{info}"
    );

    ok(&[
        "run",
        "-d",
        "--name",
        "held",
        "busybox:latest",
        "sleep",
        "1000",
    ]);
    let pid = ok(&["inspect", "-f", "{{.State.Pid}}", "held"]);
    let own = fs::read_to_string(format!("/proc/{}/cgroup", pid.trim())).unwrap();
    let v2 = own.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
    let name = cgroup.dir.file_name().unwrap().to_str().unwrap();
    assert!(
        v2.starts_with(&format!("/{name}/kiln/")),
        "the container's cgroup {v2:?} is not in the delegated subtree"
    );
    let container_cgroup = cgroup.dir.join(v2.trim_start_matches(&format!("/{name}/")));

    ok(&["pause", "held"]);
    let events = fs::read_to_string(container_cgroup.join("cgroup.events")).unwrap();
    assert!(events.lines().any(|l| l == "frozen 1"), "{events}");
    assert_eq!(
        ok(&["inspect", "-f", "{{.State.Status}}", "held"]).trim(),
        "paused"
    );
    ok(&["unpause", "held"]);
    let events = fs::read_to_string(container_cgroup.join("cgroup.events")).unwrap();
    assert!(events.lines().any(|l| l == "frozen 0"), "{events}");

    let limited = run(&[
        "run",
        "--rm",
        "--pids-limit",
        "10",
        "busybox:latest",
        "true",
    ]);
    let err = String::from_utf8_lossy(&limited.stderr);
    assert!(!limited.status.success());
    assert!(
        err.contains("needed: pids") && err.contains(&cgroup.dir.display().to_string()),
        "{err}"
    );

    ok(&["rm", "-f", "held"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while container_cgroup.exists() {
        assert!(
            Instant::now() < deadline,
            "{} left",
            container_cgroup.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_no_leftovers(&home);
}

/// The registrations under the user's `ROOT/userns`: (pid, contents).
fn registrations(home: &Home) -> Vec<(i32, String)> {
    fs::read_dir(home.root().join("userns"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let pid = name.split_once('-')?.0.parse().ok()?;
                    Some((pid, fs::read_to_string(e.path()).unwrap_or_default()))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Waits (up to 20 s) until process `pid` has ended.
fn wait_gone(pid: i32, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while fs::metadata(format!("/proc/{pid}")).is_ok() {
        assert!(Instant::now() < deadline, "{what} (pid {pid}) still runs");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn user_ns_of(pid: &str) -> String {
    fs::read_link(format!("/proc/{pid}/ns/user"))
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// The first kiln leaves a holder of its user namespace; the next kilns join it (one namespace
/// for all), and the holder ends by itself once no kiln has come for KILN_ROOTLESS_HOLD seconds.
#[test]
fn rootless_namespace_holder_is_joined_then_ends_when_idle() {
    let _serial = serial();
    let user = ensure_user(FULL_USER, Some(FULL_RANGE));
    let mut home = Home::new(user);
    home.hold_secs = "3";
    home.import_busybox();
    let regs = registrations(&home);
    assert_eq!(regs.len(), 1, "one holder registered: {regs:?}");
    let (pid, text) = regs[0].clone();
    assert_eq!(text, "holder full");
    let pid = pid.to_string();
    assert_eq!(
        fs::read_to_string(format!("/proc/{pid}/comm"))
            .unwrap()
            .trim(),
        "kiln-userns"
    );
    let held = user_ns_of(&pid);
    assert_ne!(
        held,
        user_ns_of("self"),
        "the holder is in the user's namespace"
    );
    // Two more kilns: each reports its own process's namespace, the holder's.
    for _ in 0..2 {
        let out = home.ok(&["run", "--rm", "busybox", "readlink", "/proc/self/ns/user"]);
        assert_eq!(out.trim(), held, "a later kiln joined the holder");
    }
    assert_eq!(registrations(&home).len(), 1, "no second holder");
    let info = home.ok(&["info"]);
    assert!(
        info.contains(&format!("process {pid} keeps the user namespace")),
        "{info}"
    );
    // Idle for 3 s: the holder unregisters and ends (the leftover check waits up to 10 s).
    assert_no_leftovers(&home);
    // KILN_ROOTLESS_HOLD=0 starts none.
    home.hold_secs = "0";
    home.ok(&["images"]);
    assert!(
        registrations(&home).is_empty(),
        "{:?}",
        registrations(&home)
    );
    let info = home.ok(&["info"]);
    assert!(info.contains("turned off (KILN_ROOTLESS_HOLD=0)"), "{info}");
    assert_no_leftovers(&home);
}

/// A user given a subordinate range after a kiln made a one-id namespace: the next kiln does not
/// join that holder (it would keep the single mapping) but makes a full namespace.
#[test]
fn rootless_holder_of_a_single_mapping_is_replaced_once_the_user_has_a_range() {
    let _serial = serial();
    const USER: &str = "kilnrl-upgrade";
    const RANGE: (u32, u32) = (470_000, 65_536);
    let user = ensure_user(USER, None);
    let mut home = Home::new(user);
    home.hold_secs = "30";
    home.ok(&["images"]);
    let before = registrations(&home);
    assert_eq!(before.len(), 1, "{before:?}");
    assert_eq!(before[0].1, "holder single");
    let user = ensure_user(USER, Some(RANGE));
    assert_eq!(user.uid, home.user.uid);
    // `info` prints the uid_map of the namespace it runs in.
    let info = home.ok(&["info"]);
    assert!(
        info.contains(&format!("1 {} {}", RANGE.0, RANGE.1)),
        "the range is mapped: {info}"
    );
    let after = registrations(&home);
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(after[0].1, "holder full");
    assert_ne!(after[0].0, before[0].0);
    // The old holder saw its registration go and ended; the new one ends once unregistered.
    wait_gone(before[0].0, "the one-id holder");
    fs::remove_dir_all(home.root().join("userns")).unwrap();
    wait_gone(after[0].0, "the holder whose registration went");
    ensure_user(USER, None);
}
