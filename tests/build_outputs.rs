//! Outputs and reproducibility: `--output` types, `--iidfile`, SOURCE_DATE_EPOCH, ONBUILD
//! triggers, secrets that never reach the image.
mod build_support;
mod common;

use build_support::*;

const DOCKERFILE: &str = "FROM busybox:latest\nRUN echo hello > /hello.txt\nCOPY app.js /app/\nCMD [\"cat\", \"/hello.txt\"]\n";

#[test]
fn local_tar_oci_docker_outputs_and_iidfile() {
    let root = root_with_busybox();
    let ctx = context(&[("Dockerfile", DOCKERFILE), ("app.js", "1\n")]);
    let c = ctx.path().to_str().unwrap();
    let out = tempfile::tempdir().unwrap();
    let o = |n: &str| out.path().join(n).display().to_string();
    let local = format!("type=local,dest={}", o("local"));
    let tar = format!("type=tar,dest={}", o("fs.tar"));
    let oci = format!("type=oci,dest={}", o("oci.tar"));
    let docker = format!("type=docker,dest={}", o("docker.tar"));
    let iid = o("iid");
    build_ok(
        root.path(),
        &[
            "-t",
            "out:1",
            "-o",
            "type=image",
            "-o",
            &local,
            "-o",
            &tar,
            "-o",
            &oci,
            "-o",
            &docker,
            "--iidfile",
            &iid,
            c,
        ],
    );
    assert_eq!(
        std::fs::read_to_string(out.path().join("local/hello.txt")).unwrap(),
        "hello\n"
    );
    assert_eq!(
        std::fs::read_to_string(out.path().join("local/app/app.js")).unwrap(),
        "1\n"
    );
    let listing = std::process::Command::new("tar")
        .arg("-tf")
        .arg(o("fs.tar"))
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(
        listing
            .lines()
            .any(|l| l.trim_start_matches("./") == "hello.txt"),
        "{listing}"
    );
    assert_eq!(
        std::fs::read_to_string(&iid).unwrap(),
        image_id(root.path(), "out:1")
    );
    for (kind, file) in [("oci-archive", "oci.tar"), ("docker-archive", "docker.tar")] {
        let r = std::process::Command::new("skopeo")
            .args(["inspect", "--raw"])
            .arg(format!("{kind}:{}", o(file)))
            .output();
        let r = match r {
            Ok(r) => r,
            Err(_) => {
                eprintln!("skopeo not installed; skipping the {kind} check");
                continue;
            }
        };
        assert!(
            r.status.success(),
            "skopeo inspect {kind}: {}",
            String::from_utf8_lossy(&r.stderr)
        );
    }
}

#[test]
fn source_date_epoch_builds_are_reproducible_across_roots() {
    let ctx = context(&[("Dockerfile", DOCKERFILE), ("app.js", "1\n")]);
    let c = ctx.path().to_str().unwrap();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let root = root_with_busybox();
        build_ok(
            root.path(),
            &["-t", "r", "--build-arg", "SOURCE_DATE_EPOCH=1700000000", c],
        );
        let cfg = config_of(root.path(), "r");
        assert_eq!(cfg["created"], "2023-11-14T22:13:20Z");
        ids.push(image_id(root.path(), "r"));
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    assert_eq!(ids[0], ids[1]);
}

/// `ARG SOURCE_DATE_EPOCH=…` in the Dockerfile's global scope is the epoch (Dockerfile 1.20);
/// a --build-arg beats it; `context` of a local directory is no epoch, with a warning; a value
/// that is neither a number, `context` nor a stage is an error.
#[test]
fn source_date_epoch_from_the_dockerfiles_global_arg() {
    let root = root_with_busybox();
    let ctx = context(&[(
        "Dockerfile",
        "ARG SOURCE_DATE_EPOCH=1700000000\nFROM busybox:latest\nRUN echo x > /x\n",
    )]);
    let c = ctx.path().to_str().unwrap();
    build_ok(root.path(), &["-t", "a", c]);
    assert_eq!(
        config_of(root.path(), "a")["created"],
        "2023-11-14T22:13:20Z"
    );
    build_ok(
        root.path(),
        &["-t", "b", "--build-arg", "SOURCE_DATE_EPOCH=1600000000", c],
    );
    assert_eq!(
        config_of(root.path(), "b")["created"],
        "2020-09-13T12:26:40Z"
    );

    let (_, err) = build_ok(
        root.path(),
        &["-t", "c", "--build-arg", "SOURCE_DATE_EPOCH=context", c],
    );
    assert!(
        err.contains("a local build context has no commit time"),
        "{err}"
    );
    assert_ne!(
        config_of(root.path(), "c")["created"],
        "2023-11-14T22:13:20Z"
    );

    let out = build(
        root.path(),
        &["--build-arg", "SOURCE_DATE_EPOCH=yesterday", c],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid SOURCE_DATE_EPOCH: yesterday"),
        "{err}"
    );
}

#[test]
fn onbuild_triggers_run_in_the_child() {
    let root = root_with_busybox();
    let base = context(&[(
        "Dockerfile",
        "FROM busybox:latest\nONBUILD RUN echo triggered > /onbuild.txt\n",
    )]);
    build_ok(
        root.path(),
        &["-t", "with-trigger", base.path().to_str().unwrap()],
    );
    let child = context(&[(
        "Dockerfile",
        "FROM with-trigger\nRUN cat /onbuild.txt > /seen.txt\n",
    )]);
    build_ok(
        root.path(),
        &["-t", "child", child.path().to_str().unwrap()],
    );
    let fs = rootfs_of(root.path(), "child");
    assert_eq!(
        std::fs::read_to_string(fs.path().join("seen.txt")).unwrap(),
        "triggered\n"
    );
    assert!(config_of(root.path(), "child")["config"]["OnBuild"].is_null());
}

#[test]
fn secrets_never_reach_the_image_or_the_store() {
    let root = root_with_busybox();
    let secret_dir = tempfile::tempdir().unwrap();
    let secret = secret_dir.path().join("tok");
    std::fs::write(&secret, "kiln-very-secret-value").unwrap();
    let ctx = context(&[(
        "Dockerfile",
        "FROM busybox:latest\nRUN --mount=type=secret,id=tok wc -c < /run/secrets/tok > /len\nRUN --mount=type=secret,id=tok,env=TOK test ${#TOK} -eq 22 && touch /ok\n",
    )]);
    let spec = format!("id=tok,src={}", secret.display());
    build_ok(
        root.path(),
        &["-t", "s", "--secret", &spec, ctx.path().to_str().unwrap()],
    );
    let fs = rootfs_of(root.path(), "s");
    assert!(fs.path().join("ok").exists());
    assert_eq!(
        std::fs::read_to_string(fs.path().join("len"))
            .unwrap()
            .trim(),
        "22"
    );
    assert!(fs
        .path()
        .join("run/secrets/tok")
        .symlink_metadata()
        .is_err());
    // Not in any blob (layers are gzip: check the flattened tree too) nor in the database.
    let grep = std::process::Command::new("grep")
        .args(["-r", "-a", "-l", "kiln-very-secret-value"])
        .arg(root.path())
        .arg(fs.path())
        .output()
        .unwrap();
    assert!(
        grep.stdout.is_empty(),
        "secret found in: {}",
        String::from_utf8_lossy(&grep.stdout)
    );
}

#[test]
fn context_from_a_tarball_and_dockerfile_from_stdin() {
    let root = root_with_busybox();
    let ctx = context(&[("Dockerfile", DOCKERFILE), ("app.js", "from-tar\n")]);
    let tarball = tempfile::NamedTempFile::new().unwrap();
    let st = std::process::Command::new("tar")
        .arg("-czf")
        .arg(tarball.path())
        .arg("-C")
        .arg(ctx.path())
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    build_ok(root.path(), &["-t", "t", tarball.path().to_str().unwrap()]);
    let fs = rootfs_of(root.path(), "t");
    assert_eq!(
        std::fs::read_to_string(fs.path().join("app/app.js")).unwrap(),
        "from-tar\n"
    );

    let mut child = common::kiln_command()
        .arg("--root")
        .arg(root.path())
        .args(["build", "-q", "-t", "stdin", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"FROM busybox:latest\nRUN echo piped > /p.txt\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let fs = rootfs_of(root.path(), "stdin");
    assert_eq!(
        std::fs::read_to_string(fs.path().join("p.txt")).unwrap(),
        "piped\n"
    );
}

#[test]
fn add_from_a_url_with_checksum() {
    let port = serve_http(std::sync::Arc::new(std::sync::Mutex::new(
        b"download\n".to_vec(),
    )));
    let root = root_with_busybox();
    // sha256 of "download\n"
    let sum = "sha256:0b4b4e0a8c8b4c4e2f3f3c54c9e8d2b8e6e4c3a0d6c5b8b4f6b6f3b7a1e2d3c4";
    let good = {
        use sha2::Digest;
        format!(
            "sha256:{}",
            hex::encode(sha2::Sha256::digest(b"download\n"))
        )
    };
    let url = format!("http://127.0.0.1:{port}/files/got.txt");
    let ctx = context(&[(
        "Dockerfile",
        &format!("FROM busybox:latest\nADD --checksum={good} {url} /dl/\n"),
    )]);
    build_ok(root.path(), &["-t", "u", ctx.path().to_str().unwrap()]);
    let fs = rootfs_of(root.path(), "u");
    let p = fs.path().join("dl/got.txt");
    assert_eq!(std::fs::read_to_string(&p).unwrap(), "download\n");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
    // As BuildKit (checked with docker-ref): the file's mtime is the server's Last-Modified.
    assert_eq!(std::fs::metadata(&p).unwrap().mtime(), 1_577_934_245);
    let bad = context(&[(
        "Dockerfile",
        &format!("FROM busybox:latest\nADD --checksum={sum} {url} /dl/\n"),
    )]);
    let out = build(root.path(), &[bad.path().to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("checksum mismatch"));
}

/// Without `--checksum`, ADD of a URL is keyed by what the URL serves at build time (BuildKit's
/// behaviour): the same content is a cache hit, new content is a miss and lands in the image.
#[test]
fn add_url_without_checksum_follows_the_content() {
    use std::sync::{Arc, Mutex};
    let served = Arc::new(Mutex::new(b"first\n".to_vec()));
    let port = serve_http(served.clone());
    let root = root_with_busybox();
    let url = format!("http://127.0.0.1:{port}/f.txt");
    let ctx = context(&[(
        "Dockerfile",
        &format!("FROM busybox:latest\nADD {url} /dl/\n"),
    )]);
    let dir = ctx.path().to_str().unwrap();
    let read = |root: &std::path::Path| {
        std::fs::read_to_string(rootfs_of(root, "u").path().join("dl/f.txt")).unwrap()
    };
    build_ok(root.path(), &["-t", "u", dir]);
    assert_eq!(read(root.path()), "first\n");
    let (_, again) = build_ok(root.path(), &["-t", "u", dir]);
    assert!(
        again.contains("CACHED"),
        "same content must hit the cache:\n{again}"
    );
    *served.lock().unwrap() = b"second\n".to_vec();
    let (_, changed) = build_ok(root.path(), &["-t", "u", dir]);
    assert!(
        !changed.contains("#2 CACHED"),
        "new content must miss:\n{changed}"
    );
    assert_eq!(read(root.path()), "second\n");
}

/// `ADD --unpack` (Dockerfile 1.17, BuildKit's testAddUnpack): a URL's archive is unpacked only
/// with `--unpack=true`, a local archive is copied as it is with `--unpack=false`; the cache key
/// tells the two apart.
#[test]
fn add_unpack_flag_for_urls_and_local_archives() {
    use std::sync::{Arc, Mutex};
    let scratch = tempfile::tempdir().unwrap();
    std::fs::create_dir(scratch.path().join("in")).unwrap();
    std::fs::write(scratch.path().join("in/foo"), "content0").unwrap();
    let tgz = scratch.path().join("t.tar.gz");
    let status = std::process::Command::new("tar")
        .arg("-czf")
        .arg(&tgz)
        .arg("-C")
        .arg(scratch.path().join("in"))
        .arg("foo")
        .status()
        .unwrap();
    assert!(status.success());
    let archive = std::fs::read(&tgz).unwrap();
    let port = serve_http(Arc::new(Mutex::new(archive.clone())));
    let url = format!("http://127.0.0.1:{port}/t.tar.gz");
    let root = root_with_busybox();
    let dockerfile = format!(
        "FROM busybox:latest\nADD {url} /plain/\nADD --unpack=true {url} /dest/\n\
         ADD --unpack=false t.tar.gz /kept/\nADD t.tar.gz /auto/\n"
    );
    let ctx = context(&[("Dockerfile", &dockerfile)]);
    std::fs::write(ctx.path().join("t.tar.gz"), &archive).unwrap();
    build_ok(root.path(), &["-t", "u", ctx.path().to_str().unwrap()]);
    let fs = rootfs_of(root.path(), "u");
    let p = fs.path();
    assert_eq!(std::fs::read(p.join("plain/t.tar.gz")).unwrap(), archive);
    assert_eq!(
        std::fs::read_to_string(p.join("dest/foo")).unwrap(),
        "content0"
    );
    assert!(!p.join("dest/t.tar.gz").exists());
    assert_eq!(std::fs::read(p.join("kept/t.tar.gz")).unwrap(), archive);
    assert!(!p.join("kept/foo").exists());
    assert_eq!(
        std::fs::read_to_string(p.join("auto/foo")).unwrap(),
        "content0"
    );
}

/// `HTTP_AUTH_TOKEN_<host>` and `HTTP_AUTH_HEADER_<host>` secrets authorize ADD of a URL of
/// that host (BuildKit's names); the token is never in the image, the store or the output.
#[test]
fn add_of_a_url_with_http_auth_secrets() {
    let port = serve_with(|request| {
        if request.contains("\r\nAuthorization: Bearer t0ken-s3cret\r\n") {
            Some(b"by token\n".to_vec())
        } else if request.contains("\r\nAuthorization: Basic dXNlcjpwdw==\r\n") {
            Some(b"by header\n".to_vec())
        } else {
            None
        }
    });
    let root = root_with_busybox();
    let secrets = tempfile::tempdir().unwrap();
    let token = secrets.path().join("token");
    std::fs::write(&token, "t0ken-s3cret\n").unwrap();
    let header = secrets.path().join("header");
    std::fs::write(&header, "Basic dXNlcjpwdw==").unwrap();
    let ctx = context(&[(
        "Dockerfile",
        &format!("FROM busybox:latest\nADD http://127.0.0.1:{port}/f.txt /dl/\n"),
    )]);
    let dir = ctx.path().to_str().unwrap();
    let read = |root: &std::path::Path| {
        std::fs::read_to_string(rootfs_of(root, "auth").path().join("dl/f.txt")).unwrap()
    };
    let by_token = format!("id=HTTP_AUTH_TOKEN_127.0.0.1,src={}", token.display());
    let (out, err) = build_ok(root.path(), &["--secret", &by_token, "-t", "auth", dir]);
    assert_eq!(read(root.path()), "by token\n");
    assert!(!out.contains("t0ken") && !err.contains("t0ken"));
    let config = config_of(root.path(), "auth").to_string();
    assert!(!config.contains("t0ken"), "{config}");
    let by_header = format!("id=HTTP_AUTH_HEADER_127.0.0.1,src={}", header.display());
    build_ok(root.path(), &["--secret", &by_header, "-t", "auth", dir]);
    assert_eq!(read(root.path()), "by header\n");
    // Without either, the server's refusal.
    let out = build(root.path(), &[dir]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("HTTP status 401"));
    // A secret for another host is not sent.
    let other = format!("id=HTTP_AUTH_TOKEN_example.com,src={}", token.display());
    assert!(!build(root.path(), &["--secret", &other, dir])
        .status
        .success());
}

/// A one-file HTTP server on 127.0.0.1 (any path gets `body` as it is at the time of the
/// request); returns its port.
/// The `Last-Modified` the test server sends: 2020-01-02T03:04:05Z.
const SERVED_MODIFIED: &str = "Thu, 02 Jan 2020 03:04:05 GMT";

fn serve_http(body: std::sync::Arc<std::sync::Mutex<Vec<u8>>>) -> u16 {
    serve_with(move |_| Some(body.lock().unwrap().clone()))
}

/// An HTTP server on 127.0.0.1 answering each request with what `answer` makes of the request's
/// head: `Some(body)` is a 200, `None` a 401; returns its port.
fn serve_with(answer: impl Fn(&str) -> Option<Vec<u8>> + Send + 'static) -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { break };
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let _ = match answer(&String::from_utf8_lossy(&req)) {
                Some(data) => {
                    let head = format!("HTTP/1.0 200 OK\r\nLast-Modified: {SERVED_MODIFIED}\r\nContent-Length: {}\r\n\r\n", data.len());
                    s.write_all(head.as_bytes())
                        .and_then(|_| s.write_all(&data))
                }
                None => s.write_all(b"HTTP/1.0 401 Unauthorized\r\nContent-Length: 0\r\n\r\n"),
            };
        }
    });
    port
}
