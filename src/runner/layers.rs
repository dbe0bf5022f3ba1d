//! An image's layers as overlay lowerdirs: each layer unpacked once per DiffID under
//! `snapshots/layers/<diffid hex>` (overlay-style whiteouts) and shared by every container.
//!
//! Interim glue: the snapshot module will provide `ensure_unpacked`; this file goes away then.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::oci::layer::{apply_layer, ApplyMode};
use crate::snapshot::Snapshotter;
use crate::store::{digest_hex, Store};

/// The lower directories of an image, base layer first.
pub fn image_lowers(
    store: &Store,
    snapshotter: &Snapshotter,
    manifest_digest: &str,
    config: &oci_spec::image::ImageConfiguration,
) -> Result<Vec<PathBuf>> {
    let manifest = store.manifest(manifest_digest)?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != manifest.layers().len() {
        bail!(
            "image {manifest_digest}: the config lists {} layers, the manifest {}",
            diff_ids.len(),
            manifest.layers().len()
        );
    }
    let mut lowers = Vec::with_capacity(diff_ids.len());
    for (layer, diff_id) in manifest.layers().iter().zip(diff_ids) {
        let dir = snapshotter.layers_dir().join(digest_hex(diff_id)?);
        if !dir.exists() {
            unpack(store, layer.digest().as_ref(), diff_id, &dir)?;
        }
        lowers.push(dir);
    }
    Ok(lowers)
}

fn unpack(store: &Store, blob: &str, diff_id: &str, dir: &std::path::Path) -> Result<()> {
    let tmp = tempfile::Builder::new()
        .prefix(".unpack-")
        // The root's tmp/ (same filesystem, so the rename works) is emptied after a crash.
        .tempdir_in(store.tmp_dir())
        .context("creating a directory to unpack a layer in")?;
    let target = tmp.path().join("fs");
    let file = store.open_blob(blob)?;
    let applied = apply_layer(std::io::BufReader::new(file), &target, ApplyMode::Overlay)
        .with_context(|| format!("unpacking layer {blob}"))?;
    if applied.diff_id != *diff_id {
        bail!(
            "layer {blob} does not match the image config: its DiffID is {}, expected {diff_id}",
            applied.diff_id
        );
    }
    match std::fs::rename(&target, dir) {
        Ok(()) => Ok(()),
        // Another kiln unpacked it first: theirs is identical.
        Err(_) if dir.exists() => Ok(()),
        Err(e) => Err(e).with_context(|| format!("moving an unpacked layer to {}", dir.display())),
    }
}
