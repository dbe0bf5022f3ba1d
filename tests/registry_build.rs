//! `FROM` a registry: an image kiln pushed to a real registry is the base of a build in a fresh
//! root, pulled on demand; and `kiln build --pull` notices when the tag has moved.

mod common;
mod registry_support;

use registry_support::*;

fn build_from(root: &std::path::Path, base: &str, tag: &str, extra: &[&str]) -> String {
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!("FROM {base}\nRUN cat /marker > /seen\nCMD [\"cat\", \"/seen\"]\n"),
    )
    .unwrap();
    let mut args = vec!["build", "-q", "-t", tag];
    args.extend_from_slice(extra);
    let dir = ctx.path().to_str().unwrap().to_string();
    args.push(&dir);
    common::kiln_ok(root, &args).trim().to_string()
}

/// Pushes busybox with `/marker` containing `text` as `name` from a scratch root.
fn push_marked_busybox(name: &str, text: &str) {
    let src = common::temp_root();
    common::kiln_ok(
        src.path(),
        &[
            "import",
            common::busybox_tar().to_str().unwrap(),
            "busybox:latest",
        ],
    );
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!("FROM busybox:latest\nRUN echo {text} > /marker\n"),
    )
    .unwrap();
    common::kiln_ok(
        src.path(),
        &["build", "-q", "-t", name, ctx.path().to_str().unwrap()],
    );
    common::kiln_ok(src.path(), &["push", name]);
}

#[test]
fn from_a_loopback_registry_builds_and_pull_follows_a_moved_tag() {
    common::require_root();
    let reg = Registry::start(AuthMode::None);
    let base = format!("{}/base/busybox:1", reg.host());
    push_marked_busybox(&base, "first");

    // A fresh root has no images at all: FROM pulls the base.
    let root = common::temp_root();
    build_from(root.path(), &base, "app:1", &[]);
    let out = common::kiln_ok(root.path(), &["run", "--rm", "app:1"]);
    assert_eq!(out.trim(), "first");
    let images = common::kiln_ok(root.path(), &["images"]);
    assert!(
        images.contains("base/busybox"),
        "the pulled base is in the store:\n{images}"
    );

    // The tag moves at the registry. Without --pull the local base is used (docker's rule);
    // with --pull the new base is fetched and the RUN step is not taken from the cache.
    push_marked_busybox(&base, "second");
    build_from(root.path(), &base, "app:2", &[]);
    let out = common::kiln_ok(root.path(), &["run", "--rm", "app:2"]);
    assert_eq!(out.trim(), "first");
    build_from(root.path(), &base, "app:3", &["--pull"]);
    let out = common::kiln_ok(root.path(), &["run", "--rm", "app:3"]);
    assert_eq!(out.trim(), "second");
}

#[test]
fn build_push_and_output_push_reach_the_registry() {
    common::require_root();
    let reg = Registry::start(AuthMode::None);
    let root = common::temp_root();
    common::kiln_ok(
        root.path(),
        &[
            "import",
            common::busybox_tar().to_str().unwrap(),
            "busybox:latest",
        ],
    );
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM busybox:latest\nRUN echo pushed > /marker\n",
    )
    .unwrap();
    let dir = ctx.path().to_str().unwrap();

    let first = format!("{}/app/one:1", reg.host());
    common::kiln_ok(root.path(), &["build", "-q", "--push", "-t", &first, dir]);
    let second = format!("{}/app/two:1", reg.host());
    let spec = format!("type=image,name={second},push=true");
    common::kiln_ok(root.path(), &["build", "-q", "--output", &spec, dir]);

    // What the registry holds is the image in the store: the same config (image ID), seen by
    // skopeo, with the layers the build kept unpacked compressed for the push.
    for (name, repo) in [(&first, "app/one:1"), (&second, "app/two:1")] {
        let (_, config) = skopeo_inspect(&reg, repo);
        let id = common::kiln_ok(root.path(), &["inspect", "-f", "{{.Id}}", name]);
        assert_eq!(
            sha256(&config),
            id.trim(),
            "{name}: the registry's image is not the local one"
        );
    }
    // A second push makes no blob: the compressed layers were kept.
    let before = std::fs::read_dir(root.path().join("blobs/sha256"))
        .unwrap()
        .count();
    let pushed = common::kiln_ok(root.path(), &["push", "-q", &first]);
    let (digest, _) = skopeo_inspect(&reg, "app/one:1");
    assert_eq!(pushed.trim(), digest);
    let after = std::fs::read_dir(root.path().join("blobs/sha256"))
        .unwrap()
        .count();
    assert_eq!(before, after, "the second push made blobs again");

    // A push without a name is refused before anything is built.
    let out = common::kiln(root.path(), &["build", "-q", "--push", dir]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--push needs a name"));
}
