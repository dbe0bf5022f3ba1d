//! Named build contexts (`kiln build --build-context NAME=VALUE`), as a BuildKit user writes
//! them: a directory, `docker-image://`, `oci-layout://`, used by FROM, COPY --from and
//! RUN --mount=from, and replacing a stage of the same name. (Git URLs are tested with the
//! other git sources in build_add_git.rs.) The expectations were checked against Docker 28's
//! BuildKit (`docker build --build-context`) with the same Dockerfiles.
mod build_support;
mod common;

use std::path::Path;

use build_support::*;

fn write(dir: &Path, rel: &str, content: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

fn read(root: &Path, rel: &str) -> String {
    std::fs::read_to_string(root.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// A directory context: FROM, COPY --from, RUN --mount=from, its own .dockerignore, a stage of
/// its name replaced (that stage's RUN never runs), and its files in the cache key.
#[test]
fn a_directory_replaces_stages_and_images_of_its_name() {
    let root = root_with_busybox();
    let other = tempfile::tempdir().unwrap();
    write(other.path(), "o.txt", "other\n");
    write(other.path(), "ignored.txt", "never sent\n");
    write(other.path(), ".dockerignore", "ignored.txt\n");
    let ctx = context(&[
        ("m.txt", "main\n"),
        (
            "Dockerfile",
            "FROM busybox:latest AS other\n\
             RUN echo this stage is replaced > /replaced.txt\n\
             FROM busybox:latest AS final\n\
             COPY --from=other /o.txt /copied/\n\
             COPY --from=other / /all/\n\
             RUN --mount=from=other,target=/mnt cat /mnt/o.txt > /mounted.txt\n\
             COPY m.txt /\n\
             FROM other AS files\n\
             FROM final\n\
             COPY --from=files / /files/\n",
        ),
    ]);
    let spec = format!("other={}", other.path().display());
    let args = [
        "--build-context",
        &spec,
        "-t",
        "nc",
        ctx.path().to_str().unwrap(),
    ];
    build_ok(root.path(), &args);
    let fs = rootfs_of(root.path(), "nc");
    let fs = fs.path();
    assert_eq!(read(fs, "copied/o.txt"), "other\n");
    assert_eq!(read(fs, "all/o.txt"), "other\n");
    assert!(fs.join("all/.dockerignore").exists());
    assert!(
        !fs.join("all/ignored.txt").exists(),
        ".dockerignore applies"
    );
    assert_eq!(read(fs, "mounted.txt"), "other\n");
    assert_eq!(read(fs, "m.txt"), "main\n");
    // `FROM other`: the context's files as the whole filesystem, not the replaced stage's.
    assert_eq!(read(fs, "files/o.txt"), "other\n");
    assert!(!fs.join("files/replaced.txt").exists());
    assert!(!fs.join("files/bin").exists());

    // Unchanged: every step is cached; a changed file of the context misses its COPYs.
    let (_, again) = build_ok(root.path(), &args);
    assert!(!again.contains("cache miss"), "{again}");
    write(other.path(), "o.txt", "changed\n");
    let (_, changed) = build_ok(root.path(), &args);
    assert!(changed.contains("cache miss"), "{changed}");
    let fs = rootfs_of(root.path(), "nc");
    assert_eq!(read(fs.path(), "copied/o.txt"), "changed\n");
    // A file the context's .dockerignore leaves out is not part of any key.
    write(other.path(), "ignored.txt", "still never sent\n");
    let (_, ignored) = build_ok(root.path(), &args);
    assert!(!ignored.contains("cache miss"), "{ignored}");
}

/// `docker-image://` puts an image in place of a name the Dockerfile uses: a FROM of an image
/// that is nowhere here (it would go to Docker Hub) and COPY --from of it.
#[test]
fn docker_image_contexts_replace_image_names() {
    let root = root_with_busybox();
    let ctx = context(&[(
        "Dockerfile",
        "FROM alpine:latest\n\
         COPY --from=tools /bin/busybox /tools/busybox\n\
         RUN test -x /bin/sh && echo built > /built.txt\n",
    )]);
    build_ok(
        root.path(),
        &[
            "--build-context",
            "alpine=docker-image://busybox:latest",
            "--build-context",
            "tools=docker-image://busybox",
            "-t",
            "img",
            ctx.path().to_str().unwrap(),
        ],
    );
    let fs = rootfs_of(root.path(), "img");
    assert_eq!(read(fs.path(), "built.txt"), "built\n");
    assert!(fs.path().join("tools/busybox").is_file());
}

/// `oci-layout://DIR[:TAG]`: an image of an OCI layout directory (here, one `kiln save
/// --format oci` wrote and tar unpacked), never tagged in the store.
#[test]
fn oci_layout_contexts_load_an_image_of_the_layout() {
    let root = root_with_busybox();
    let base = context(&[(
        "Dockerfile",
        "FROM busybox:latest\nRUN echo from-layout > /layout.txt\n",
    )]);
    build_ok(
        root.path(),
        &["-t", "layout-src:v1", base.path().to_str().unwrap()],
    );
    let archive = tempfile::tempdir().unwrap();
    let tar = archive.path().join("img.tar");
    common::kiln_ok(
        root.path(),
        &[
            "save",
            "--format",
            "oci",
            "-o",
            tar.to_str().unwrap(),
            "layout-src:v1",
        ],
    );
    let layout = archive.path().join("layout");
    std::fs::create_dir(&layout).unwrap();
    let status = std::process::Command::new("tar")
        .arg("-xf")
        .arg(&tar)
        .arg("-C")
        .arg(&layout)
        .status()
        .unwrap();
    assert!(status.success());

    // A fresh root that never saw the image.
    let fresh = root_with_busybox();
    let ctx = context(&[("Dockerfile", "FROM base\nRUN cat /layout.txt > /seen.txt\n")]);
    let spec = format!("base=oci-layout://{}", layout.display());
    build_ok(
        fresh.path(),
        &[
            "--build-context",
            &spec,
            "-t",
            "from-layout",
            ctx.path().to_str().unwrap(),
        ],
    );
    let fs = rootfs_of(fresh.path(), "from-layout");
    assert_eq!(read(fs.path(), "seen.txt"), "from-layout\n");
    let images = common::kiln_ok(fresh.path(), &["images", "--format", "{{.Repository}}"]);
    assert!(!images.contains("layout-src"), "{images}");

    // A tag the layout does not have names what it has.
    let bad = format!("base=oci-layout://{}:nope", layout.display());
    let out = build(
        fresh.path(),
        &["--build-context", &bad, ctx.path().to_str().unwrap()],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no image tagged \"nope\""), "{err}");
}

#[test]
fn bad_build_context_values_fail_clearly() {
    let root = root_with_busybox();
    let ctx = context(&[("Dockerfile", "FROM busybox:latest\n")]);
    let dir = ctx.path().to_str().unwrap();
    for (spec, says) in [
        ("novalue", "expected NAME=VALUE"),
        ("x=/nonexistent/dir", "build context /nonexistent/dir"),
        ("x=s3://bucket/key", "unsupported context source s3://"),
        ("scratch=docker-image://busybox", "reserved"),
    ] {
        let out = build(root.path(), &["--build-context", spec, dir]);
        assert!(!out.status.success(), "{spec}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{spec}: {err}");
        assert!(!err.contains("panicked"), "{spec}: {err}");
    }
}
