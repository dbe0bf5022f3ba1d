//! `--output type=local`: the final filesystem, flattened, written into a directory.

use std::path::Path;

use anyhow::{Context, Result};

use crate::oci::layer::LayerRef;
use crate::store::Store;

/// Flattens the image's layers into `dest` (created when missing).
pub fn export(store: &Store, layers: &[LayerRef], dest: &Path) -> Result<()> {
    std::fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
    flatten_into(store, layers, dest)
}

/// Applies the layers in order onto `dest` (whiteouts delete).
pub fn flatten_into(store: &Store, layers: &[LayerRef], dest: &Path) -> Result<()> {
    for layer in layers {
        let tar = crate::snapshot::blobs::open_layer_tar(store, &layer.digest, &layer.diff_id)?;
        crate::oci::layer::apply_layer(
            std::io::BufReader::new(tar),
            dest,
            crate::oci::layer::ApplyMode::Flatten,
        )
        .with_context(|| format!("applying layer {}", layer.digest))?;
    }
    Ok(())
}
