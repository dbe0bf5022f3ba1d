//! Layers a build makes are kept unpacked (no blob, nothing compressed) until something sends
//! the image elsewhere: `kiln save`, `--output type=oci|docker`, `kiln push`. The export makes
//! each blob once, keeps it, and the image ID never changes.
mod build_support;
mod common;

use std::collections::BTreeSet;
use std::path::Path;

use build_support::*;

const DOCKERFILE: &str = "FROM busybox:latest\nRUN echo hello > /hello.txt\nCOPY app /app/\nRUN rm /app/b.txt && echo c > /app/c.txt\nCMD [\"cat\", \"/hello.txt\"]\n";

/// A context whose files have fixed mtimes, so that with SOURCE_DATE_EPOCH its layers are the
/// same on any machine.
fn fixed_context() -> tempfile::TempDir {
    let ctx = context(&[
        ("Dockerfile", DOCKERFILE),
        ("app/a.txt", "a\n"),
        ("app/b.txt", "b\n"),
        ("app/sub/d.txt", "d\n"),
    ]);
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000);
    for f in ["app/a.txt", "app/b.txt", "app/sub/d.txt"] {
        std::fs::File::options()
            .write(true)
            .open(ctx.path().join(f))
            .unwrap()
            .set_modified(t)
            .unwrap();
    }
    ctx
}

/// Names of the blob files in the store.
fn blobs(root: &Path) -> BTreeSet<String> {
    std::fs::read_dir(root.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// The blobs that are gzip or zstd streams.
fn compressed_blobs(root: &Path) -> BTreeSet<String> {
    blobs(root)
        .into_iter()
        .filter(|b| {
            let bytes = std::fs::read(root.join("blobs/sha256").join(b)).unwrap();
            bytes.starts_with(&[0x1f, 0x8b]) || bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd])
        })
        .collect()
}

/// The layer digests and media types of the single image in an OCI archive.
fn archive_manifest(archive: &Path) -> (Vec<String>, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let ok = std::process::Command::new("tar")
        .arg("-xf")
        .arg(archive)
        .arg("-C")
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(ok.success());
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("index.json")).unwrap()).unwrap();
    let digest = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("blobs/sha256").join(&digest[7..])).unwrap(),
    )
    .unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    let field = |k: &str| {
        layers
            .iter()
            .map(|l| l[k].as_str().unwrap().to_string())
            .collect()
    };
    (field("digest"), field("mediaType"))
}

fn skopeo_ok(target: &str) {
    match std::process::Command::new("skopeo")
        .args(["inspect", "--raw", target])
        .output()
    {
        Ok(r) => assert!(
            r.status.success(),
            "skopeo inspect {target}: {}",
            String::from_utf8_lossy(&r.stderr)
        ),
        Err(_) => eprintln!("skopeo not installed; skipping the check of {target}"),
    }
}

#[test]
fn a_build_compresses_nothing_and_the_first_export_makes_each_blob_once() {
    let root = root_with_busybox();
    let ctx = fixed_context();
    let c = ctx.path().to_str().unwrap();
    let before = compressed_blobs(root.path());
    build_ok(
        root.path(),
        &[
            "-t",
            "lazy:1",
            "--build-arg",
            "SOURCE_DATE_EPOCH=1700000000",
            c,
        ],
    );
    let id = image_id(root.path(), "lazy:1");
    let ids = diff_ids(root.path(), "lazy:1");
    // The built layers: the same DiffIDs a kiln that compressed while building gave for this
    // build (recorded from that kiln, commit 0cb6184).
    assert_eq!(
        ids[1..],
        [
            "sha256:a5ff992fd1fe3550ddf220b2d79dd3548435a428e561bb1c7b7f92236c2f4cd4",
            "sha256:6d3343ae0dfff22e912b5519b9ce2e7091eeac5aaa52aa68e90c1ee08e911d3e",
            "sha256:535b2b0a90cddc5d398da7df46be9707cb2bb79b8ecccee372a86b8a4951354e",
        ]
    );
    // In the store: uncompressed descriptors (digest = DiffID) with no blob behind them, and no
    // compressed blob was written.
    let store = kiln::store::Store::open(root.path()).unwrap();
    let manifest = store
        .manifest(&store.resolve("lazy:1").unwrap().manifest_digest)
        .unwrap();
    for (layer, diff_id) in manifest.layers()[1..].iter().zip(&ids[1..]) {
        assert_eq!(
            layer.media_type().to_string(),
            kiln::store::UNCOMPRESSED_LAYER
        );
        assert_eq!(&layer.digest().to_string(), diff_id);
        assert!(!store.has_blob(diff_id), "a blob was written for {diff_id}");
    }
    drop(store);
    assert_eq!(
        compressed_blobs(root.path()),
        before,
        "the build compressed a layer"
    );

    // Running the image and rebuilding it compress nothing either.
    let out = common::kiln_ok(root.path(), &["run", "--rm", "lazy:1", "cat", "/app/c.txt"]);
    assert_eq!(out, "c\n");
    build_ok(
        root.path(),
        &[
            "-t",
            "lazy:1",
            "--build-arg",
            "SOURCE_DATE_EPOCH=1700000000",
            c,
        ],
    );
    assert_eq!(compressed_blobs(root.path()), before);
    // history reads the sizes from the unpacked layers.
    let history = common::kiln_ok(root.path(), &["history", "--format", "{{.Size}}", "lazy:1"]);
    assert!(history.lines().any(|l| l == "6B"), "{history}");

    // The first export compresses each built layer once; the second one writes no blob.
    let out = tempfile::tempdir().unwrap();
    let a = out.path().join("a.tar");
    common::kiln_ok(
        root.path(),
        &[
            "save",
            "--format",
            "oci",
            "-o",
            a.to_str().unwrap(),
            "lazy:1",
        ],
    );
    let made: BTreeSet<String> = compressed_blobs(root.path())
        .difference(&before)
        .cloned()
        .collect();
    assert_eq!(made.len(), 3, "one blob per built layer: {made:?}");
    let (exported, types) = archive_manifest(&a);
    assert!(types.iter().all(|t| t.ends_with("tar+gzip")), "{types:?}");
    // Byte for byte the blobs the kiln that compressed while building stored and saved.
    assert_eq!(
        exported[1..],
        [
            "sha256:9dbc2e41fb252bd2c9efe56bbbfe3ff7980e01976da3330b2a74f335a9ae24ba",
            "sha256:fb60997c28e4cb6fb91082518d3067fdec4bc63fd5e1293b765b60f5a5c8fe25",
            "sha256:828ca43e7ec707ce5d98a5f24f15d918fa362e81ede0f485a17cc617c287c82d",
        ]
    );
    skopeo_ok(&format!("oci-archive:{}", a.display()));
    let all = blobs(root.path());
    let b = out.path().join("b.tar");
    let docker = out.path().join("docker.tar");
    common::kiln_ok(
        root.path(),
        &[
            "save",
            "--format",
            "oci",
            "-o",
            b.to_str().unwrap(),
            "lazy:1",
        ],
    );
    common::kiln_ok(
        root.path(),
        &["save", "-o", docker.to_str().unwrap(), "lazy:1"],
    );
    assert_eq!(
        blobs(root.path()),
        all,
        "the second export made blobs again"
    );
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    skopeo_ok(&format!("docker-archive:{}", docker.display()));
    assert_eq!(
        image_id(root.path(), "lazy:1"),
        id,
        "exporting changed the image ID"
    );
    assert_eq!(diff_ids(root.path(), "lazy:1"), ids);

    // zstd is another blob per layer, made once too.
    let z = out.path().join("z.tar");
    common::kiln_ok(
        root.path(),
        &[
            "save",
            "--format",
            "oci",
            "--compression",
            "zstd",
            "-o",
            z.to_str().unwrap(),
            "lazy:1",
        ],
    );
    let (_, types) = archive_manifest(&z);
    assert!(
        types[1..].iter().all(|t| t.ends_with("tar+zstd")),
        "{types:?}"
    );

    // A loaded export is the same image.
    let other = root_with_busybox();
    common::kiln_ok(other.path(), &["load", "-i", a.to_str().unwrap()]);
    assert_eq!(image_id(other.path(), "lazy:1"), id);
    let out = common::kiln_ok(other.path(), &["run", "--rm", "lazy:1", "ls", "/app"]);
    assert_eq!(out, "a.txt\nc.txt\nsub\n");
}

#[test]
fn build_outputs_oci_and_local_from_unpacked_layers() {
    let root = root_with_busybox();
    let ctx = fixed_context();
    let c = ctx.path().to_str().unwrap();
    let out = tempfile::tempdir().unwrap();
    let oci = out.path().join("o.tar");
    let local = out.path().join("fs");
    let spec_oci = format!("type=oci,dest={}", oci.display());
    let spec_local = format!("type=local,dest={}", local.display());
    build_ok(
        root.path(),
        &[
            "-t",
            "o:1",
            "-o",
            "type=image",
            "-o",
            &spec_oci,
            "-o",
            &spec_local,
            c,
        ],
    );
    skopeo_ok(&format!("oci-archive:{}", oci.display()));
    assert_eq!(
        std::fs::read_to_string(local.join("app/c.txt")).unwrap(),
        "c\n"
    );
    assert!(!local.join("app/b.txt").exists());
    assert_eq!(
        std::fs::read_to_string(local.join("app/sub/d.txt")).unwrap(),
        "d\n"
    );
}

#[test]
fn a_changed_unpacked_layer_is_one_clear_error_at_export() {
    let root = root_with_busybox();
    let ctx = context(&[("Dockerfile", "FROM busybox:latest\nRUN echo x > /x\n")]);
    build_ok(root.path(), &["-t", "t:1", ctx.path().to_str().unwrap()]);
    let diff_id = diff_ids(root.path(), "t:1").pop().unwrap();
    // Something wrote into the immutable snapshot behind kiln's back.
    let dir = root.path().join("snapshots/layers").join(&diff_id[7..]);
    std::fs::write(dir.join("x"), "changed\n").unwrap();
    let out = common::kiln(root.path(), &["save", "-o", "/dev/null", "t:1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("was changed after it was built"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

/// Writes `files` under `dir` with a fixed mtime each (so the context is the same on any
/// machine), removing those given as None.
fn write_tree(dir: &Path, files: &[(&str, Option<&str>)]) {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000);
    for (path, content) in files {
        let p = dir.join(path);
        match content {
            Some(c) => {
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(&p, c).unwrap();
                std::fs::File::options()
                    .write(true)
                    .open(&p)
                    .unwrap()
                    .set_modified(t)
                    .unwrap();
            }
            None => std::fs::remove_file(&p).unwrap(),
        }
    }
}

fn layer_dir(root: &Path, diff_id: &str) -> std::path::PathBuf {
    root.join("snapshots/layers").join(&diff_id[7..])
}

#[test]
fn a_copy_where_few_files_changed_links_the_rest_and_equals_a_full_copy() {
    use std::os::unix::fs::MetadataExt;
    let root = root_with_busybox();
    let ctx = context(&[(
        "Dockerfile",
        "FROM busybox:latest\nWORKDIR /srv\nCOPY tree /srv/tree\n",
    )]);
    let mut files = vec![
        ("tree/a/1.txt", Some("one\n")),
        ("tree/a/2.txt", Some("two\n")),
        ("tree/b/3.txt", Some("three\n")),
    ];
    for i in 0..50 {
        files.push((
            Box::leak(format!("tree/many/{i}.js").into_boxed_str()),
            Some("// x\n"),
        ));
    }
    write_tree(ctx.path(), &files);
    let c = ctx.path().to_str().unwrap();
    let sde = ["--build-arg", "SOURCE_DATE_EPOCH=1700000000"];
    build_ok(root.path(), &[&["-t", "inc:1"][..], &sde, &[c]].concat());
    let first = diff_ids(root.path(), "inc:1").pop().unwrap();

    // One file changed, one added, one removed.
    write_tree(
        ctx.path(),
        &[
            ("tree/a/1.txt", Some("one, changed\n")),
            ("tree/b/new.txt", Some("new\n")),
            ("tree/a/2.txt", None),
        ],
    );
    let (_, log) = build_ok(root.path(), &[&["-t", "inc:2"][..], &sde, &[c]].concat());
    assert!(log.contains("1 file changed"), "{log}");
    let second = diff_ids(root.path(), "inc:2").pop().unwrap();
    assert_ne!(first, second);

    // The unchanged files are the previous layer's inodes; the changed and new ones are not.
    let (old, new) = (
        layer_dir(root.path(), &first),
        layer_dir(root.path(), &second),
    );
    let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
    let shared = "srv/tree/many/7.js";
    assert_eq!(ino(&old.join(shared)), ino(&new.join(shared)), "not linked");
    assert_eq!(
        ino(&old.join("srv/tree/b/3.txt")),
        ino(&new.join("srv/tree/b/3.txt"))
    );
    assert_ne!(
        ino(&old.join("srv/tree/a/1.txt")),
        ino(&new.join("srv/tree/a/1.txt"))
    );
    assert!(!new.join("srv/tree/a/2.txt").exists());

    // A full copy of the same context gives the same layer, byte for byte.
    let fresh = root_with_busybox();
    build_ok(fresh.path(), &[&["-t", "inc:2"][..], &sde, &[c]].concat());
    assert_eq!(
        diff_ids(fresh.path(), "inc:2"),
        diff_ids(root.path(), "inc:2")
    );
    let full = layer_dir(fresh.path(), &second);
    assert_eq!(std::fs::metadata(full.join(shared)).unwrap().nlink(), 1);

    // A RUN that changes a linked file writes its own copy: both layers stay what they were
    // (an export writes each again and checks its DiffID).
    let child = context(&[(
        "Dockerfile",
        "FROM inc:2\nRUN echo more >> /srv/tree/many/7.js && chmod 600 /srv/tree/b/3.txt\n",
    )]);
    build_ok(
        root.path(),
        &["-t", "inc:3", child.path().to_str().unwrap()],
    );
    let out = common::kiln_ok(
        root.path(),
        &["run", "--rm", "inc:3", "cat", "/srv/tree/many/7.js"],
    );
    assert_eq!(out, "// x\nmore\n");
    assert_eq!(std::fs::read_to_string(old.join(shared)).unwrap(), "// x\n");
    let dir = tempfile::tempdir().unwrap();
    for image in ["inc:1", "inc:2", "inc:3"] {
        let to = dir.path().join("x.tar");
        common::kiln_ok(root.path(), &["save", "-o", to.to_str().unwrap(), image]);
    }
}

#[test]
fn a_rebuild_after_one_file_changed_hashes_only_the_layer_past_it() {
    // 40 files of 256 KiB: the layer's tar has checkpoints every few MiB to resume hashing at.
    let root = root_with_busybox();
    let ctx = context(&[(
        "Dockerfile",
        "FROM busybox:latest\nWORKDIR /srv\nCOPY tree /srv/tree\n",
    )]);
    let bodies: Vec<(String, String)> = (0..40)
        .map(|i| {
            let line = format!("// file {i}\n");
            (
                format!("tree/f{i:02}.js"),
                line.repeat(256 * 1024 / line.len()),
            )
        })
        .collect();
    let files: Vec<(&str, Option<&str>)> = bodies
        .iter()
        .map(|(p, b)| (p.as_str(), Some(b.as_str())))
        .collect();
    write_tree(ctx.path(), &files);
    let c = ctx.path().to_str().unwrap();
    let sde = ["--build-arg", "SOURCE_DATE_EPOCH=1700000000"];
    let (_, log) = build_ok(root.path(), &[&["-t", "one:1"][..], &sde, &[c]].concat());
    assert!(!log.contains("are the previous layer's"), "{log}");

    // A file in the middle changed: the tar before it is the previous layer's.
    write_tree(ctx.path(), &[("tree/f20.js", Some("changed\n"))]);
    let (_, log) = build_ok(root.path(), &[&["-t", "one:2"][..], &sde, &[c]].concat());
    assert!(
        log.contains("are the previous layer's, hashed from there on"),
        "{log}"
    );
    // Then one further on, from the checkpoints that rebuild recorded.
    write_tree(ctx.path(), &[("tree/f35.js", Some("changed too\n"))]);
    let (_, log) = build_ok(root.path(), &[&["-t", "one:3"][..], &sde, &[c]].concat());
    assert!(
        log.contains("are the previous layer's, hashed from there on"),
        "{log}"
    );

    // The same DiffIDs as a full copy in an empty root, and an export checks them once more.
    let fresh = root_with_busybox();
    build_ok(fresh.path(), &[&["-t", "one:3"][..], &sde, &[c]].concat());
    assert_eq!(
        diff_ids(fresh.path(), "one:3"),
        diff_ids(root.path(), "one:3")
    );
    let dir = tempfile::tempdir().unwrap();
    for image in ["one:2", "one:3"] {
        let to = dir.path().join("x.tar");
        common::kiln_ok(root.path(), &["save", "-o", to.to_str().unwrap(), image]);
    }
}
