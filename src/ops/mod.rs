//! Executing one filesystem step: an overlay snapshot over the parent's layers (unpacked once per
//! layer and shared), the operation (RUN in the sandbox, COPY/ADD as file operations, WORKDIR's
//! mkdir), then the snapshot's changes become a layer blob in the store. A step that changed
//! nothing produces no layer.

pub mod copy;
mod file;
mod run;

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::snapshot::{ActiveSnapshot, PrepareOptions, Snapshotter};
use crate::solver::cache::LayerRef;
use crate::solver::{ExecRequest, Op, SourceTree};
use crate::store::Store;

/// Layers written by builds are compressed with this (the store's parallel gzip).
const LAYER_COMPRESSION: crate::oci::compress::Compression =
    crate::oci::compress::Compression::Gzip;
/// At this level: gzip's fastest. Layer writing is on every rebuild's path (a big COPY's layer is
/// written again when one file changes); level 6 costs about twice the CPU for a few percent
/// smaller blobs on typical trees. Deterministic like any fixed level.
const LAYER_GZIP_LEVEL: u32 = 1;

/// Executes one step; a RUN gets `run_limits` (memory, CPU, pids) as its cgroup limits.
pub fn execute(
    store: &Store,
    req: ExecRequest,
    run_limits: &crate::sandbox::Resources,
) -> Result<Option<LayerRef>> {
    let snapshotter = Snapshotter::new(store.root())?;
    let mut snap = mount_layers(store, &snapshotter, &req.parent)?;
    match &req.op {
        Op::Run(run) => run::run_step(store, &snapshotter, &snap, run, &req, run_limits)?,
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
    let opts = crate::oci::layer::WriteOptions {
        source_date_epoch: req.source_date_epoch,
    };
    let stored = crate::oci::layer::store_layer_with_gzip_level(
        store,
        LAYER_COMPRESSION,
        LAYER_GZIP_LEVEL,
        |w| crate::oci::layer::write_layer(&source, &changes, w, &opts),
    )
    .context("writing the step's layer")?;
    reuse_upper_as_layer(
        &snapshotter,
        &snap,
        &stored.diff_id,
        req.source_date_epoch.is_none(),
    );
    snap.release()?;
    let layer = LayerRef {
        digest: stored.descriptor.digest().to_string(),
        diff_id: stored.diff_id,
        size: stored.descriptor.size(),
        media_type: stored.descriptor.media_type().to_string(),
    };
    // Keep the layer while the build cache refers to it, whatever image GC decides.
    store.pin_blob("build-cache", &layer.digest)?;
    Ok(Some(layer))
}

/// The upperdir of a finished step already is the new layer in overlay form (whiteouts as 0:0
/// devices, opaque directories marked), so it becomes the layer's unpacked directory instead of
/// unpacking the blob again when a later step needs it. Not with SOURCE_DATE_EPOCH, where the blob's
/// mtimes are clamped and the upperdir's are not. Best effort: on any failure the blob is
/// unpacked later as usual.
fn reuse_upper_as_layer(
    snapshotter: &Snapshotter,
    snap: &ActiveSnapshot,
    diff_id: &str,
    enabled: bool,
) {
    if !enabled || !snap.upper_is_diff() {
        return;
    }
    let Ok(dir) = snapshotter.layer_dir(diff_id) else {
        return;
    };
    if dir.exists() {
        return;
    }
    // Renaming within the snapshots filesystem; the overlay keeps working until it is unmounted.
    let _ = std::fs::rename(snap.upper(), &dir);
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
        SourceTree::Context => Ok(None),
        SourceTree::Layers(layers) => Ok(Some(mount_layers(store, snapshotter, layers)?)),
    }
}
