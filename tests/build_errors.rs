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
    std::fs::write(ctx.path().join("Dockerfile"), "FROM no-such-image:1\n").unwrap();
    let err = fails(root.path(), &[c]);
    assert!(err.contains("Dockerfile:1: FROM no-such-image:1"), "{err}");
    // Exactly one error line for a missing Dockerfile.
    let empty = context(&[("x", "")]);
    let err = fails(root.path(), &[empty.path().to_str().unwrap()]);
    assert_eq!(
        err.lines().filter(|l| l.starts_with("kiln:")).count(),
        1,
        "{err}"
    );
}
