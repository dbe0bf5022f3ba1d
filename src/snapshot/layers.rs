//! Unpacked layers, one directory per DiffID under `snapshots/layers/<diffid hex>/`, in overlay
//! form (whiteouts as 0:0 devices, opaque directories marked), shared by every image and every
//! execution that uses the layer. Unpacking goes to `layers/.unpack-<pid>-<random>` and is renamed
//! into place, so a killed kiln never leaves a half-unpacked layer under its final name (and
//! `recover` removes the temporary directory).

use std::io::BufReader;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::Snapshotter;
use crate::oci::layer::{apply_layer, ApplyMode};
use crate::store::Store;

const UNPACK_PREFIX: &str = ".unpack-";

fn diff_id_hex(diff_id: &str) -> Result<&str> {
    let hex = diff_id.strip_prefix("sha256:").unwrap_or("");
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("malformed DiffID {diff_id:?}: expected sha256:<64 hex digits>");
    }
    Ok(hex)
}

impl Snapshotter {
    /// Where the layer with this DiffID is (or would be) unpacked.
    pub fn layer_dir(&self, diff_id: &str) -> Result<PathBuf> {
        Ok(self.layers_dir().join(diff_id_hex(diff_id)?))
    }

    /// The unpacked directory of a layer blob (a lowerdir), unpacking it on first use. The
    /// DiffID comes from the store's layer record; without one, the blob is unpacked and keyed by
    /// the DiffID computed while unpacking (and recorded).
    pub fn ensure_unpacked(
        &self,
        store: &Store,
        layer: &oci_spec::image::Descriptor,
    ) -> Result<PathBuf> {
        let digest = layer.digest().to_string();
        let known = store.layer(&digest)?.map(|r| r.diff_id);
        self.ensure_unpacked_blob(store, &digest, known.as_deref())
    }

    /// Like `ensure_unpacked`, with the blob digest and, when known (e.g. from the image
    /// config's `rootfs.diff_ids`), the DiffID the content must have.
    pub fn ensure_unpacked_blob(
        &self,
        store: &Store,
        blob_digest: &str,
        diff_id: Option<&str>,
    ) -> Result<PathBuf> {
        if let Some(diff_id) = diff_id {
            let dir = self.layer_dir(diff_id)?;
            if dir.is_dir() {
                return Ok(dir);
            }
        }
        let tmp = tempfile::Builder::new()
            .prefix(&format!("{UNPACK_PREFIX}{}-", std::process::id()))
            .tempdir_in(self.layers_dir())
            .with_context(|| format!("create a directory in {}", self.layers_dir().display()))?;
        let blob = store.open_blob(blob_digest)?;
        let applied = apply_layer(BufReader::new(blob), tmp.path(), ApplyMode::Overlay)
            .with_context(|| format!("unpack layer {blob_digest}"))?;
        if let Some(expected) = diff_id {
            if applied.diff_id != expected {
                bail!(
                    "layer {blob_digest}: its content has DiffID {}, the image says {expected}; \
                     the blob is corrupt or the image config is wrong (pull it again)",
                    applied.diff_id
                );
            }
        }
        let dir = self.layer_dir(&applied.diff_id)?;
        let kept = tmp.keep();
        if let Err(e) = std::fs::rename(&kept, &dir) {
            let _ = std::fs::remove_dir_all(&kept);
            // Another kiln unpacked the same layer first; its copy is identical.
            if !dir.is_dir() {
                return Err(e).with_context(|| format!("move unpacked layer to {}", dir.display()));
            }
        }
        Ok(dir)
    }

    /// The lowerdirs of an image (base layer first), unpacking what is missing.
    pub fn image_lowers(
        &self,
        store: &Store,
        manifest: &oci_spec::image::ImageManifest,
        config: &oci_spec::image::ImageConfiguration,
    ) -> Result<Vec<PathBuf>> {
        let diff_ids = config.rootfs().diff_ids();
        if diff_ids.len() != manifest.layers().len() {
            bail!(
                "the image config lists {} layers but the manifest {}",
                diff_ids.len(),
                manifest.layers().len()
            );
        }
        manifest
            .layers()
            .iter()
            .zip(diff_ids)
            .map(|(layer, diff_id)| {
                self.ensure_unpacked_blob(store, layer.digest().as_ref(), Some(diff_id))
            })
            .collect()
    }
}

/// Removes unpack directories of kiln processes that are gone.
pub(super) fn recover_unpacks(layers: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(layers) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(UNPACK_PREFIX) else {
            continue;
        };
        let owner = rest.split('-').next().and_then(|p| p.parse::<i32>().ok());
        let alive = owner.is_some_and(crate::cleanup::process_alive);
        if !alive && std::fs::remove_dir_all(e.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}
