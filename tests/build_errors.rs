//! Bad input gives one clear error with the Dockerfile line, a non-zero exit, and leaves the
//! image previously built under the tag in place.
mod build_support;
mod common;

use build_support::*;

fn fails(root: &std::path::Path, args: &[&str]) -> String {
    let out = build(root, args);
    assert!(
        !out.status.success(),
        "kiln build {args:?} should have failed"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A registry on loopback that has no images: every request gets 404. Returns `127.0.0.1:PORT`.
fn empty_registry() -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(&stream);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                line.clear();
            }
            let _ = (&stream).write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n\
                  Content-Length: 2\r\nConnection: close\r\n\r\n{}",
            );
        }
    });
    addr.to_string()
}

#[test]
fn unknown_target_missing_source_failing_run() {
    let root = root_with_busybox();
    let ctx = context(&[
        (
            "Dockerfile",
            "FROM busybox:latest AS base\nRUN echo ok > /ok\n",
        ),
        ("a.txt", "a"),
    ]);
    let c = ctx.path().to_str().unwrap();
    build_ok(root.path(), &["-t", "keep", c]);
    let before = image_id(root.path(), "keep");

    let err = fails(root.path(), &["-t", "keep", "--target", "nope", c]);
    assert!(
        err.contains("target stage \"nope\" could not be found (stages: base)"),
        "{err}"
    );

    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM busybox:latest\nCOPY missing.txt /x\n",
    )
    .unwrap();
    let err = fails(root.path(), &["-t", "keep", c]);
    assert!(
        err.contains("Dockerfile:2: COPY missing.txt /x")
            && err.contains("\"/missing.txt\": not found"),
        "{err}"
    );

    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM busybox:latest\n\nRUN echo first && echo the-last-words >&2 && exit 3\n",
    )
    .unwrap();
    let err = fails(root.path(), &["-t", "keep", c]);
    assert!(err.contains("Dockerfile:3: RUN echo first"), "{err}");
    assert!(err.contains("exit code: 3"), "{err}");
    assert!(err.contains("the-last-words"), "{err}");

    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM busybox:latest\nRUNN echo\n",
    )
    .unwrap();
    let err = fails(root.path(), &["-t", "keep", c]);
    assert!(err.contains("Dockerfile:2:"), "{err}");

    assert_eq!(
        image_id(root.path(), "keep"),
        before,
        "a failed build must not move the tag"
    );
}

#[test]
fn bad_flags_context_and_base() {
    let root = root_with_busybox();
    let out = common::kiln(root.path(), &["build", "--no-such-flag", "."]);
    assert_eq!(
        out.status.code(),
        Some(125),
        "docker exits 125 for a bad flag"
    );
    let err = fails(root.path(), &["/nonexistent/context/dir"]);
    assert!(
        err.contains("build context /nonexistent/context/dir"),
        "{err}"
    );
    let ctx = context(&[("Dockerfile", "FROM busybox:latest\n")]);
    let c = ctx.path().to_str().unwrap();
    let err = fails(root.path(), &["--network", "bridge", c]);
    assert!(err.contains("--network=bridge"), "{err}");
    let err = fails(root.path(), &["--secret", "id=x,src=/nonexistent", c]);
    assert!(err.contains("--secret"), "{err}");
    // A base that is neither local nor at the registry: one on loopback that knows no image
    // (a bare name would go to Docker Hub, which the tests must never reach).
    let registry = empty_registry();
    let from = format!("FROM {registry}/no-such-image:1");
    std::fs::write(ctx.path().join("Dockerfile"), format!("{from}\n")).unwrap();
    let err = fails(root.path(), &[c]);
    assert!(err.contains(&format!("Dockerfile:1: {from}")), "{err}");
    // Exactly one error line for a missing Dockerfile.
    let empty = context(&[("x", "")]);
    let err = fails(root.path(), &[empty.path().to_str().unwrap()]);
    assert_eq!(
        err.lines().filter(|l| l.starts_with("kiln:")).count(),
        1,
        "{err}"
    );
}

/// In a Dockerfile a name is a reference, never a prefix of a local image's ID (issue 11): `FROM
/// <first hex digit of busybox's ID>` must not build on busybox, and `COPY --from=a` inside stage
/// `a` is BuildKit's cycle error, not a copy from some image. The command line keeps docker's
/// prefix matching.
#[test]
fn dockerfile_names_are_references_not_image_id_prefixes() {
    let root = root_with_busybox();
    let id = image_id(root.path(), "busybox");
    let hex = id.strip_prefix("sha256:").unwrap();
    let prefix = &hex[..1];
    let ctx = context(&[("Dockerfile", &format!("FROM {prefix}\nRUN true\n"))]);
    let err = fails(root.path(), &["-t", "x", ctx.path().to_str().unwrap()]);
    assert!(
        err.contains(&format!("base image {prefix}")) && !err.contains("RUN true"),
        "FROM {prefix} should be the image docker.io/library/{prefix}, not busybox: {err}"
    );
    // A full ID names the image.
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!("FROM {id}\nRUN true\n"),
    )
    .unwrap();
    build_ok(root.path(), &["-t", "by-id", ctx.path().to_str().unwrap()]);

    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM busybox AS a\nCOPY --from=a /bin/sh /x\n",
    )
    .unwrap();
    let err = fails(root.path(), &["-t", "x", ctx.path().to_str().unwrap()]);
    assert!(
        err.contains("circular dependency detected on stage: a"),
        "{err}"
    );

    // The CLI: `inspect`, `run` and friends still take an ID prefix, as docker's do.
    let out = common::kiln(root.path(), &["inspect", &hex[..12]]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A failing RUN with a 4 MB line: the error quotes the instruction shortened, and the whole
/// output stays small (it used to repeat the line several times).
#[test]
fn an_over_long_run_line_is_quoted_once_and_short() {
    let root = root_with_busybox();
    let long = "x".repeat(4 << 20);
    let ctx = context(&[("Dockerfile", &format!("FROM busybox\nRUN false # {long}\n"))]);
    let out = build(root.path(), &[ctx.path().to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Dockerfile:2: RUN false # xxx"),
        "{}",
        &err[..err.len().min(2000)]
    );
    assert!(
        err.contains("more characters)"),
        "{}",
        &err[..err.len().min(2000)]
    );
    assert!(
        out.stderr.len() + out.stdout.len() < 64 * 1024,
        "{} bytes of output for one failing step",
        out.stderr.len() + out.stdout.len()
    );
}
