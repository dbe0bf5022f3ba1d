//! `ADD <git repository>` through the real binary, against repositories served on loopback with
//! git's "dumb HTTP" protocol (a bare repository after `git update-server-info`, served as static
//! files by a small HTTP server thread): branches, tags with a subdir, `--keep-git-dir`,
//! `--chown`/`--exclude`, the cache keyed by the commit, and the errors.
mod build_support;
mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use build_support::*;

fn cached(stderr: &str) -> usize {
    stderr.lines().filter(|l| l.ends_with(" CACHED")).count()
}

/// Serves the files under a directory over HTTP/1.0 on 127.0.0.1 (a free port), one thread per
/// connection, for as long as the test runs: all git's dumb protocol needs.
struct StaticServer {
    port: u16,
}

impl StaticServer {
    fn start(dir: &Path) -> StaticServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let dir = dir.to_path_buf();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let dir = dir.clone();
                std::thread::spawn(move || serve_one(stream, &dir));
            }
        });
        StaticServer { port }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }
}

fn serve_one(mut stream: TcpStream, dir: &Path) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request = String::new();
    if reader.read_line(&mut request).is_err() {
        return;
    }
    // Skip the headers.
    let mut line = String::new();
    while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
        line.clear();
    }
    let path = request.split_whitespace().nth(1).unwrap_or("/");
    let path = path.split('?').next().unwrap_or("");
    let rel: PathBuf = path
        .split('/')
        .filter(|c| !c.is_empty() && *c != "." && *c != "..")
        .collect();
    match std::fs::read(dir.join(rel)) {
        Ok(body) => {
            let _ = write!(
                stream,
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(&body);
        }
        Err(_) => {
            let _ = stream.write_all(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n");
        }
    }
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(["-c", "user.email=t@example.com", "-c", "user.name=t"])
        .args(["-c", "init.defaultBranch=main", "-c", "safe.directory=*"])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .expect("git is needed by these tests (apt-get install git)");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A working repository and the bare copy the server publishes (`<served>/repo.git`).
struct Repo {
    _dirs: tempfile::TempDir,
    work: PathBuf,
    bare: PathBuf,
}

impl Repo {
    /// Commits: `v1` (tagged, annotated) with hello=one and sub/x=tag-sub, then hello=two on main.
    fn new() -> (Repo, PathBuf) {
        let dirs = tempfile::Builder::new()
            .prefix("kiln-git.")
            .tempdir()
            .unwrap();
        let work = dirs.path().join("work");
        let served = dirs.path().join("served");
        std::fs::create_dir_all(work.join("sub")).unwrap();
        std::fs::create_dir_all(&served).unwrap();
        git(&work, &["init", "-q"]);
        std::fs::write(work.join("hello"), "one\n").unwrap();
        std::fs::write(work.join("sub/x"), "tag-sub\n").unwrap();
        std::fs::write(work.join("README.md"), "readme\n").unwrap();
        std::fs::write(work.join("run.sh"), "#!/bin/sh\necho run\n").unwrap();
        std::fs::set_permissions(work.join("run.sh"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "-q", "-m", "one"]);
        git(&work, &["tag", "-a", "v1", "-m", "v1"]);
        std::fs::write(work.join("hello"), "two\n").unwrap();
        std::fs::write(work.join("sub/x"), "main-sub\n").unwrap();
        git(&work, &["commit", "-q", "-am", "two"]);
        let bare = served.join("repo.git");
        git(
            dirs.path(),
            &["clone", "-q", "--bare", "work", bare.to_str().unwrap()],
        );
        git(&bare, &["update-server-info"]);
        (
            Repo {
                _dirs: dirs,
                work,
                bare,
            },
            served,
        )
    }

    /// A new commit on main, published.
    fn commit_hello(&self, content: &str) -> String {
        std::fs::write(self.work.join("hello"), content).unwrap();
        git(&self.work, &["commit", "-q", "-am", content.trim()]);
        git(
            &self.work,
            &["push", "-q", self.bare.to_str().unwrap(), "main"],
        );
        git(&self.bare, &["update-server-info"]);
        git(&self.work, &["rev-parse", "HEAD"])
    }
}

/// A store with busybox, the repository, where it is served from, and its server.
fn setup() -> (tempfile::TempDir, Repo, PathBuf, StaticServer) {
    let root = root_with_busybox();
    let (repo, served) = Repo::new();
    let server = StaticServer::start(&served);
    (root, repo, served, server)
}

fn read(root: &Path, path: &str) -> String {
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn add_branch_tag_subdir_keep_git_dir_chown_exclude() {
    let (root, repo, _served, server) = setup();
    let url = server.url("repo.git");
    let head = git(&repo.work, &["rev-parse", "HEAD"]);
    let dockerfile = format!(
        "FROM busybox:latest\n\
         ADD {url}#main /src\n\
         ADD {url}#v1:sub /tagsub/\n\
         ADD --keep-git-dir=true {secret_url}#main /kept\n\
         ADD --chown=1000:1001 --exclude=*.md --checksum={short} {url} /owned\n\
         RUN /src/run.sh > /ran.txt\n",
        short = &head[..12],
        secret_url = url.replace("http://", "http://user:s3cret@"),
    );
    let ctx = context(&[("Dockerfile", &dockerfile)]);
    let (out, err) = build_ok(root.path(), &["-t", "g:1", ctx.path().to_str().unwrap()]);
    // Credentials in the URL reach neither the progress, the history nor the kept repository.
    assert!(!out.contains("s3cret") && !err.contains("s3cret"), "{err}");
    let fs = rootfs_of(root.path(), "g:1");
    let fs = fs.path();

    // A branch: its tree, without .git, modes as git records them, owned by root.
    assert_eq!(read(fs, "src/hello"), "two\n");
    assert_eq!(read(fs, "src/sub/x"), "main-sub\n");
    assert!(!fs.join("src/.git").exists());
    let script = std::fs::metadata(fs.join("src/run.sh")).unwrap();
    assert_eq!(script.mode() & 0o777, 0o755);
    let hello = std::fs::metadata(fs.join("src/hello")).unwrap();
    assert_eq!(
        (hello.mode() & 0o777, hello.uid(), hello.gid()),
        (0o644, 0, 0)
    );
    assert_eq!(read(fs, "ran.txt"), "run\n");

    // An annotated tag's subdir: that commit's directory, its contents in the destination.
    assert_eq!(read(fs, "tagsub/x"), "tag-sub\n");
    assert!(!fs.join("tagsub/hello").exists());

    // --keep-git-dir: a repository on the commit, clean, with no trace of the fetch.
    assert!(fs.join("kept/.git").is_dir());
    assert!(!fs.join("kept/.git/FETCH_HEAD").exists());
    let kept = fs.join("kept");
    assert_eq!(git(&kept, &["rev-parse", "HEAD"]), head);
    assert_eq!(git(&kept, &["status", "--porcelain"]), "");
    assert_eq!(git(&kept, &["remote", "get-url", "origin"]), url);

    // The remote's HEAD, --chown and --exclude as for any source, --checksum a commit prefix.
    assert_eq!(read(fs, "owned/hello"), "two\n");
    assert!(!fs.join("owned/README.md").exists());
    let owned = std::fs::metadata(fs.join("owned/sub/x")).unwrap();
    assert_eq!((owned.uid(), owned.gid()), (1000, 1001));

    // The history shows the URL.
    let config = config_of(root.path(), "g:1");
    let history = config["history"].to_string();
    assert!(
        history.contains(&format!("ADD {url}#v1:sub /tagsub/")),
        "{history}"
    );
    assert!(!config.to_string().contains("s3cret"), "{config}");
    let git_config = std::fs::read_to_string(kept.join(".git/config")).unwrap();
    assert!(!git_config.contains("s3cret"), "{git_config}");
}

/// BuildKit's query form of a git URL (Dockerfile 1.18): `?tag=`, `?branch=`, `?subdir=`,
/// `?keep-git-dir=`, `?checksum=`; the same trees as the fragment form, and BuildKit's errors
/// for a query it refuses.
#[test]
fn git_urls_in_the_query_form() {
    let (root, repo, _served, server) = setup();
    let url = server.url("repo.git");
    let head = git(&repo.work, &["rev-parse", "HEAD"]);
    let dockerfile = format!(
        "FROM busybox:latest\n\
         ADD {url}?tag=v1&subdir=sub /tagsub/\n\
         ADD {url}?branch=main&keep-git-dir=true /kept\n\
         ADD {url}?ref=main&checksum={short} /checked\n",
        short = &head[..10],
    );
    let ctx = context(&[("Dockerfile", &dockerfile)]);
    build_ok(root.path(), &["-t", "q:1", ctx.path().to_str().unwrap()]);
    let fs = rootfs_of(root.path(), "q:1");
    let fs = fs.path();
    assert_eq!(read(fs, "tagsub/x"), "tag-sub\n");
    assert!(!fs.join("tagsub/hello").exists());
    assert_eq!(git(&fs.join("kept"), &["rev-parse", "HEAD"]), head);
    assert_eq!(read(fs, "checked/hello"), "two\n");
    let config = config_of(root.path(), "q:1");
    let created: Vec<&str> = config["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| h["created_by"].as_str())
        .collect();
    assert!(
        created
            .iter()
            .any(|c| c.contains("?tag=v1&subdir=sub /tagsub/")),
        "{created:?}"
    );

    for (query, says) in [
        ("?tag=v1&branch=main", "branch conflicts with tag"),
        ("?depth=1", "unexpected query \"depth\""),
        (
            "?ref=main&checksum=0000000000",
            "expected checksum to match",
        ),
    ] {
        let ctx = context(&[(
            "Dockerfile",
            &format!("FROM busybox:latest\nADD {url}{query} /x\n"),
        )]);
        let out = build(root.path(), &[ctx.path().to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{query}");
        assert!(err.contains(says), "{query}: {err}");
        assert!(err.contains("Dockerfile:2"), "{query}: {err}");
    }
}

/// A git URL as a named build context (`--build-context src=URL#ref`): COPY --from and FROM of
/// it read the repository's tree at that ref.
#[test]
fn a_git_repository_as_a_named_build_context() {
    let (root, _repo, _served, server) = setup();
    let url = server.url("repo.git");
    let ctx = context(&[(
        "Dockerfile",
        "FROM busybox:latest AS first\nCOPY --from=src /hello /from-tag.txt\nFROM src AS tree\n\
         FROM busybox:latest\nCOPY --from=tree /sub /sub\n",
    )]);
    let spec = format!("src={url}#v1");
    build_ok(
        root.path(),
        &[
            "--build-context",
            &spec,
            "--target",
            "first",
            "-t",
            "nc:tag",
            ctx.path().to_str().unwrap(),
        ],
    );
    let fs = rootfs_of(root.path(), "nc:tag");
    assert_eq!(read(fs.path(), "from-tag.txt"), "one\n");
    let spec = format!("src={url}?branch=main");
    build_ok(
        root.path(),
        &[
            "--build-context",
            &spec,
            "-t",
            "nc:main",
            ctx.path().to_str().unwrap(),
        ],
    );
    let fs = rootfs_of(root.path(), "nc:main");
    assert_eq!(read(fs.path(), "sub/x"), "main-sub\n");
    assert!(!fs.path().join("sub/.git").exists());
}

/// `SOURCE_DATE_EPOCH=<stage>`: a `FROM scratch` stage with one ADD of a git repository gives
/// the epoch, its commit's time (BuildKit's source stage); RUN steps see the number.
#[test]
fn source_date_epoch_from_a_git_source_stage() {
    let (root, repo, _served, server) = setup();
    let url = server.url("repo.git");
    let v1_time: i64 = git(&repo.work, &["show", "-s", "--format=%ct", "v1^{commit}"])
        .parse()
        .unwrap();
    let ctx = context(&[(
        "Dockerfile",
        &format!(
            "ARG SOURCE_DATE_EPOCH=src\nFROM scratch AS src\nARG REF=v1\nADD {url}#$REF /\n\
             FROM busybox:latest\nARG SOURCE_DATE_EPOCH\nRUN echo $SOURCE_DATE_EPOCH > /epoch\n"
        ),
    )]);
    build_ok(root.path(), &["-t", "e", ctx.path().to_str().unwrap()]);
    let fs = rootfs_of(root.path(), "e");
    assert_eq!(read(fs.path(), "epoch").trim(), v1_time.to_string());
    let created = config_of(root.path(), "e")["created"]
        .as_str()
        .unwrap()
        .to_string();
    let want = chrono_like(v1_time);
    assert_eq!(created, want);

    let bad = context(&[(
        "Dockerfile",
        "ARG SOURCE_DATE_EPOCH=src\nFROM busybox:latest AS src\nFROM busybox:latest\n",
    )]);
    let out = build(root.path(), &[bad.path().to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("must use FROM scratch"), "{err}");
}

/// RFC 3339 in UTC, as image configs write `created`.
fn chrono_like(t: i64) -> String {
    let out = Command::new("date")
        .args(["-u", "-d", &format!("@{t}"), "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn cached_while_the_branch_stays_rebuilt_when_it_moves() {
    let (root, repo, _served, server) = setup();
    let url = server.url("repo.git");
    let dockerfile =
        format!("FROM busybox:latest\nADD {url}#main /src\nRUN cat /src/hello > /copy.txt\n");
    let ctx = context(&[("Dockerfile", &dockerfile)]);
    let c = ctx.path().to_str().unwrap();
    let (_, err) = build_ok(root.path(), &["-t", "g:1", c]);
    assert_eq!(cached(&err), 0, "{err}");
    let first = image_id(root.path(), "g:1");

    // Nothing changed: both steps come from the cache, the image is the same.
    let (_, err) = build_ok(root.path(), &["-t", "g:1", c]);
    assert_eq!(cached(&err), 2, "{err}");
    assert_eq!(image_id(root.path(), "g:1"), first);

    // A new commit on the branch (same URL text): a miss, and the image has the new content.
    repo.commit_hello("three\n");
    let (_, err) = build_ok(root.path(), &["-t", "g:1", c]);
    assert_eq!(cached(&err), 0, "{err}");
    assert!(
        err.contains(&format!(
            "cache miss: ADD {url}#main /src: the git ref now points at commit"
        )),
        "{err}"
    );
    let fs = rootfs_of(root.path(), "g:1");
    assert_eq!(read(fs.path(), "src/hello"), "three\n");
    assert_eq!(read(fs.path(), "copy.txt"), "three\n");
}

#[test]
fn unknown_refs_missing_subdirs_and_unreachable_repositories_fail_clearly() {
    let (root, _repo, served, server) = setup();
    let url = server.url("repo.git");
    // A port nothing listens on.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let head = git(&served.join("repo.git"), &["rev-parse", "main"]);
    let cases = [
        (
            format!("ADD {url}#no-such-branch /src"),
            vec!["Dockerfile:2", "no branch or tag \"no-such-branch\""],
        ),
        (
            format!("ADD {url}#main:nope /src"),
            vec!["Dockerfile:2", "has no directory \"nope\""],
        ),
        (
            format!("ADD --checksum=0123abc {url}#main /src"),
            vec!["Dockerfile:2", "expected checksum to match 0123abc", &head],
        ),
        (
            format!("ADD http://user:s3cret@127.0.0.1:{closed}/repo.git#main /src"),
            vec![
                "Dockerfile:2",
                "cannot read git repository http://127.0.0.1",
            ],
        ),
        (format!("COPY {url} /src"), vec!["Dockerfile:2", "use ADD"]),
    ];
    for (line, wanted) in cases {
        let dockerfile = format!("FROM busybox:latest\n{line}\n");
        let ctx = context(&[("Dockerfile", &dockerfile)]);
        let out = build(root.path(), &[ctx.path().to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{line}: should fail:\n{stderr}");
        let last = stderr.lines().last().unwrap_or("");
        for w in wanted {
            assert!(last.contains(w), "{line}: {w:?} not in {last:?}\n{stderr}");
        }
        // Credentials in a URL never reach the progress or the error.
        assert!(!stderr.contains("s3cret"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn a_missing_git_command_says_to_install_it() {
    let root = root_with_busybox();
    let ctx = context(&[(
        "Dockerfile",
        "FROM busybox:latest\nADD https://example.invalid/r.git#main /src\n",
    )]);
    let empty = tempfile::tempdir().unwrap();
    let out = common::kiln_command()
        .arg("--root")
        .arg(root.path())
        .args(["build", "--progress", "plain"])
        .arg(ctx.path())
        .env("PATH", empty.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let last = stderr.lines().last().unwrap_or("");
    assert!(last.contains("Dockerfile:2"), "{last}");
    assert!(
        last.contains("the git command is not installed") && last.contains("install"),
        "{last}"
    );
}

#[test]
fn submodules_are_checked_out_and_source_date_epoch_gives_commit_mtimes() {
    let (root, repo, served, server) = setup();
    // A second repository, a submodule of the first, served beside it.
    let lib_work = served.parent().unwrap().join("lib");
    std::fs::create_dir_all(&lib_work).unwrap();
    git(&lib_work, &["init", "-q"]);
    std::fs::write(lib_work.join("libfile"), "lib\n").unwrap();
    git(&lib_work, &["add", "-A"]);
    git(&lib_work, &["commit", "-q", "-m", "lib"]);
    let lib_bare = served.join("lib.git");
    git(
        &lib_work,
        &["clone", "-q", "--bare", ".", lib_bare.to_str().unwrap()],
    );
    git(&lib_bare, &["update-server-info"]);
    git(
        &repo.work,
        &["submodule", "add", "-q", &server.url("lib.git"), "lib"],
    );
    git(&repo.work, &["commit", "-q", "-m", "add lib"]);
    git(
        &repo.work,
        &["push", "-q", repo.bare.to_str().unwrap(), "main"],
    );
    git(&repo.bare, &["update-server-info"]);
    let commit_time: i64 = git(&repo.bare, &["show", "-s", "--format=%ct", "main"])
        .parse()
        .unwrap();

    let url = server.url("repo.git");
    let ctx = context(&[(
        "Dockerfile",
        &format!("FROM busybox:latest\nADD {url} /src\n"),
    )]);
    build_ok(
        root.path(),
        &[
            "-t",
            "g:1",
            "--build-arg",
            "SOURCE_DATE_EPOCH=4000000000",
            ctx.path().to_str().unwrap(),
        ],
    );
    let fs = rootfs_of(root.path(), "g:1");
    assert_eq!(read(fs.path(), "src/lib/libfile"), "lib\n");
    assert!(!fs.path().join("src/lib/.git").exists());
    for f in ["src/hello", "src/lib/libfile", "src/sub"] {
        let m = std::fs::symlink_metadata(fs.path().join(f)).unwrap();
        assert_eq!(m.mtime(), commit_time, "{f}");
    }
}
