//! Helpers shared by the build tests (tests/build_*.rs): a store with `busybox:latest`, running
//! `kiln build`, reading back the image config and the built filesystem.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Output;

use super::common;

/// A fresh root with `busybox:latest` (one layer from the busybox fixture tarball).
pub fn root_with_busybox() -> tempfile::TempDir {
    common::require_root();
    let root = common::temp_root();
    import_busybox(root.path());
    root
}

pub fn import_busybox(root: &Path) {
    import_busybox_from(root, &common::busybox_tar());
}

/// Stores a rootfs tarball as `busybox:latest` (what `kiln import` will do once it exists).
pub fn import_busybox_from(root: &Path, tar: &Path) {
    let store = kiln::store::Store::open(root).unwrap();
    let tar = tar.to_path_buf();
    let layer =
        kiln::oci::layer::store_layer(&store, kiln::oci::compress::Compression::Gzip, |w| {
            let mut f = std::fs::File::open(&tar)?;
            std::io::copy(&mut f, w)?;
            Ok(())
        })
        .unwrap();
    let config: oci_spec::image::ImageConfiguration = serde_json::from_value(serde_json::json!({
        "created": "2024-01-01T00:00:00Z",
        "architecture": kiln::oci::image::host_architecture(),
        "os": "linux",
        "config": {"Cmd": ["sh"], "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
        "history": [{"created": "2024-01-01T00:00:00Z", "created_by": "busybox fixture"}]
    }))
    .unwrap();
    let name = kiln::reference::Reference::parse("busybox:latest").unwrap();
    store
        .commit_image(&config, &[layer.descriptor], &[name])
        .unwrap();
}

pub fn build(root: &Path, args: &[&str]) -> Output {
    let mut all = vec!["build", "--progress", "plain"];
    all.extend_from_slice(args);
    common::kiln(root, &all)
}

pub fn build_ok(root: &Path, args: &[&str]) -> (String, String) {
    let out = build(root, args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "kiln build {args:?} failed ({}):\n{stderr}",
        out.status
    );
    (stdout, stderr)
}

/// The image config JSON of a named image.
pub fn config_of(root: &Path, name: &str) -> serde_json::Value {
    let store = kiln::store::Store::open(root).unwrap();
    let rec = store.resolve(name).unwrap();
    serde_json::from_slice(&store.read_blob(&rec.config_digest).unwrap()).unwrap()
}

/// The image's layer DiffIDs (`rootfs.diff_ids` of its config).
pub fn diff_ids(root: &Path, name: &str) -> Vec<String> {
    config_of(root, name)["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_string())
        .collect()
}

pub fn image_id(root: &Path, name: &str) -> String {
    let store = kiln::store::Store::open(root).unwrap();
    store.resolve(name).unwrap().config_digest
}

/// The image's filesystem, flattened into a temp dir.
pub fn rootfs_of(root: &Path, name: &str) -> tempfile::TempDir {
    let store = kiln::store::Store::open(root).unwrap();
    let rec = store.resolve(name).unwrap();
    let manifest = store.manifest(&rec.manifest_digest).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for l in manifest.layers() {
        // A built layer is kept unpacked (digest = DiffID): its tar is written again.
        let d = l.digest().to_string();
        let tar = kiln::snapshot::blobs::open_layer_tar(&store, &d, &d).unwrap();
        kiln::oci::layer::apply_layer(
            std::io::BufReader::new(tar),
            dir.path(),
            kiln::oci::layer::ApplyMode::Flatten,
        )
        .unwrap();
    }
    dir
}

/// A context directory with the given files.
pub fn context(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("kiln-ctx.")
        .tempdir()
        .unwrap();
    for (path, content) in files {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
    dir
}

pub fn testdata(case: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/build")
        .join(case)
}
