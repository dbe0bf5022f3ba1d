//! `kiln images`, `kiln save` and `kiln inspect` as a docker user reads them: SIZE as docker
//! counts it (unpacked), `--filter`, `--digests`, and an OCI archive that `docker load` reads
//! too. Docker 28.5's answers are in `testdata/docker/` and beside each check.

mod common;

use std::path::Path;
use std::process::Command;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn root_with_busybox() -> tempfile::TempDir {
    common::require_root();
    let root = common::temp_root();
    let tar = common::busybox_tar();
    common::kiln_ok(
        root.path(),
        &["import", "-q", tar.to_str().unwrap(), "busybox:latest"],
    );
    root
}

fn build(root: &Path, name: &str, dockerfile: &str) -> String {
    let ctx = root.join(format!("ctx-{}", name.replace([':', '/'], "-")));
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
    let mut args = vec!["build", "-q"];
    if !name.is_empty() {
        args.extend(["-t", name]);
    }
    args.push(ctx.to_str().unwrap());
    common::kiln_ok(root, &args).trim().to_string()
}

fn tar_member(archive: &Path, name: &str) -> Option<Vec<u8>> {
    let out = Command::new("tar")
        .arg("-xOf")
        .arg(archive)
        .arg(name)
        .output()
        .unwrap();
    out.status.success().then_some(out.stdout)
}

/// `kiln save --format oci` writes docker's manifest.json and repositories beside index.json
/// (as `docker save` does since Docker 25): Docker 28.5 loads it (testdata/docker/
/// save-oci-load.txt; without manifest.json it failed), skopeo reads it as an OCI archive and as
/// a docker archive, and kiln loads it back under its name.
#[test]
fn oci_archive_is_also_a_docker_archive() {
    let root = root_with_busybox();
    let r = root.path();
    let id = build(r, "app:oci", "FROM busybox\nRUN echo hi > /x\nCMD [\"sh\"]\n");
    let archive = r.join("app.tar");
    common::kiln_ok(
        r,
        &[
            "save",
            "--format",
            "oci",
            "-o",
            archive.to_str().unwrap(),
            "app:oci",
        ],
    );
    let listing = text(
        &Command::new("tar")
            .arg("-tf")
            .arg(&archive)
            .output()
            .unwrap()
            .stdout,
    );
    for member in ["index.json", "oci-layout", "manifest.json", "repositories"] {
        assert!(
            listing.lines().any(|l| l == member),
            "{member} missing: {listing}"
        );
    }
    let manifest: serde_json::Value =
        serde_json::from_slice(&tar_member(&archive, "manifest.json").unwrap()).unwrap();
    let entry = &manifest[0];
    assert_eq!(entry["RepoTags"], serde_json::json!(["app:oci"]));
    assert_eq!(
        entry["Config"].as_str().unwrap(),
        format!("blobs/sha256/{}", &id[7..])
    );
    // Every member manifest.json names is in the archive (what docker load opens).
    let layers = entry["Layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    for l in layers {
        assert!(listing.lines().any(|m| m == l.as_str().unwrap()), "{l}");
    }
    let repositories: serde_json::Value =
        serde_json::from_slice(&tar_member(&archive, "repositories").unwrap()).unwrap();
    let top = layers[1].as_str().unwrap().trim_start_matches("blobs/sha256/");
    assert_eq!(repositories, serde_json::json!({"app": {"oci": top}}));

    // skopeo reads the one file both ways, with the same config.
    if Command::new("skopeo").arg("--version").output().is_ok() {
        for transport in ["oci-archive", "docker-archive"] {
            let out = Command::new("skopeo")
                .args(["inspect", "--config"])
                .arg(format!("{transport}:{}", archive.display()))
                .output()
                .unwrap();
            assert!(out.status.success(), "{transport}: {}", text(&out.stderr));
            let config: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(config["config"]["Cmd"], serde_json::json!(["sh"]));
        }
    }

    // kiln loads it into an empty root under its name, with the same ID.
    let other = common::temp_root();
    let loaded = common::kiln_ok(other.path(), &["load", "-q", "-i", archive.to_str().unwrap()]);
    assert_eq!(loaded, "Loaded image: app:oci\n");
    let ids = common::kiln_ok(other.path(), &["images", "-q", "--no-trunc", "app:oci"]);
    assert_eq!(ids.trim(), id);
}
