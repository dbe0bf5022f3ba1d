//! Executing one filesystem step: an overlay snapshot over the parent's layers (unpacked once per
//! layer and shared), the operation (RUN in the sandbox, COPY/ADD as file operations, WORKDIR's
//! mkdir), then the snapshot's upperdir becomes the layer, kept unpacked (no blob, no
//! compression until an export). A step that changed nothing produces no layer.

pub mod copy;
mod file;
mod run;
pub mod ssh_agent;

pub use run::{cache_mount_dir, RunSettings};

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::snapshot::{ActiveSnapshot, PrepareOptions, Snapshotter};
use crate::solver::cache::LayerRef;
use crate::solver::{ExecRequest, Op, SourceTree};
use crate::store::Store;

/// Layers a build could not keep unpacked (see [`execute`]) are written as blobs with this.
const FALLBACK_COMPRESSION: crate::oci::compress::Compression =
    crate::oci::compress::Compression::Gzip;

/// Executes one step; a RUN gets `run_limits` (memory, CPU, pids) as its cgroup limits.
///
/// The layer is kept unpacked: the upperdir becomes `snapshots/layers/<diffid>/` and the store
/// records its DiffID and size (`snapshot::built`), with an uncompressed descriptor (digest =
/// DiffID) and no blob. Nothing is compressed here; `snapshot::blobs::ensure_compressed` makes
/// the blob when something sends the layer elsewhere.
pub fn execute(
    store: &Store,
    req: ExecRequest,
    run_limits: &crate::sandbox::Resources,
    run_settings: &RunSettings,
) -> Result<Option<LayerRef>> {
    let snapshotter = Snapshotter::new(store.root())?;
    let mut snap = mount_layers(store, &snapshotter, &req.parent)?;
    match &req.op {
        Op::Run(run) => run::run_step(
            store,
            &snapshotter,
            &snap,
            run,
            &req,
            run_limits,
            run_settings,
        )?,
        Op::Copy(c) => file::copy_step(store, &snapshotter, &mut snap, c, &req)?,
        Op::Mkdir { path, user } => file::mkdir_step(&snap.merged(), path, user.as_deref(), &req)?,
    }
    // The changed entries are read from the upperdir when it is self-contained (no overlay
    // lookups: a big COPY's layer reads every file again).
    let (changes, source) = snap.changes_with_source()?;
    if changes.is_empty() {
        snap.release()?;
        return Ok(None);
    }
    // Only an overlay's upperdir is the layer in overlay form; the copy-based snapshotter's
    // (rootless without overlay) is the whole tree, so its layer is written as a blob.
    let kept = if snap.upper_is_diff() {
        if matches!(req.op, Op::Run(_)) {
            // The disk writes a RUN's layer out while it is hashed (a COPY's files are mostly
            // links to an earlier layer, or were just written by kiln itself, in order).
            crate::snapshot::writeback::start_all(&snap.upper(), &changes);
        }
        crate::snapshot::built::keep_upper(
            store,
            &snapshotter,
            &snap,
            &changes,
            req.source_date_epoch,
            req.previous.as_ref().map(|p| p.layer.diff_id.as_str()),
        )?
    } else {
        None
    };
    if let Some(k) = kept.as_ref().filter(|k| k.reused > 0) {
        req.progress.log(
            req.step,
            &format!(
                "layer: the first {} of its tar are the previous layer's, hashed from there on",
                crate::store::space::human(k.reused)
            ),
        );
    }
    let layer = match kept {
        Some(kept) => LayerRef {
            digest: kept.diff_id.clone(),
            diff_id: kept.diff_id,
            size: kept.size,
            media_type: crate::store::UNCOMPRESSED_LAYER.to_string(),
        },
        None => {
            // The upperdir could not become the layer's directory: a blob, as before.
            let opts = crate::oci::layer::WriteOptions {
                source_date_epoch: req.source_date_epoch,
            };
            let stored = crate::oci::layer::store_layer_with_gzip_level(
                store,
                FALLBACK_COMPRESSION,
                crate::oci::compress::FAST_GZIP_LEVEL,
                |w| crate::oci::layer::write_layer(&source, &changes, w, &opts),
            )
            .context("writing the step's layer")?;
            LayerRef {
                digest: stored.descriptor.digest().to_string(),
                diff_id: stored.diff_id,
                size: stored.descriptor.size(),
                media_type: stored.descriptor.media_type().to_string(),
            }
        }
    };
    snap.release()?;
    // Keep the layer while the build cache refers to it, whatever image GC decides.
    store.pin_blob("build-cache", &layer.digest)?;
    Ok(Some(layer))
}

/// The unpacked directory of a layer (a lowerdir), through the snapshotter's shared layer store.
pub fn ensure_unpacked(
    store: &Store,
    snapshotter: &Snapshotter,
    layer: &LayerRef,
) -> Result<PathBuf> {
    snapshotter.ensure_unpacked_blob(store, &layer.digest, Some(&layer.diff_id))
}

fn mount_layers(
    store: &Store,
    snapshotter: &Snapshotter,
    layers: &[LayerRef],
) -> Result<ActiveSnapshot> {
    let lowers = layers
        .iter()
        .map(|l| ensure_unpacked(store, snapshotter, l))
        .collect::<Result<Vec<_>>>()?;
    snapshotter.prepare(&lowers, &PrepareOptions { volatile: true })
}

/// A read-only view of a stage's or image's filesystem, for COPY --from and bind mounts.
fn source_view(
    store: &Store,
    snapshotter: &Snapshotter,
    tree: &SourceTree,
) -> Result<Option<ActiveSnapshot>> {
    match tree {
        SourceTree::Context | SourceTree::Named(_) => Ok(None),
        SourceTree::Layers(layers) => Ok(Some(mount_layers(store, snapshotter, layers)?)),
    }
}
