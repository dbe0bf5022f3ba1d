//! `--cache-from` / `--cache-to` around a build: reading the caches before the solve (a missing or
//! broken one is a warning), restoring cache mounts before the first RUN that mounts them, and
//! exporting the records after the image is in the store.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, Context, Result};

use crate::registry::RegistryContext;
use crate::solver::progress::{Mode, Progress};
use crate::solver::remotecache::{
    self, CacheFrom, CacheMode, CacheRecord, CacheTo, Imports, Loaded, MountRecord, RemoteCache,
};
use crate::solver::{BuildCacheInfo, RunMount};
use crate::store::Store;

/// A line about the cache that must be seen whatever the progress mode.
pub fn warn(progress: &Progress, text: &str) {
    if progress.mode() == Mode::Quiet {
        crate::errln!("{text}");
    } else {
        progress.note(text);
    }
}

fn registry_context(store: &Store) -> Result<RegistryContext> {
    let mut ctx = RegistryContext::load(store.root().to_path_buf())?;
    ctx.quiet = true;
    Ok(ctx)
}

/// Reads every `--cache-from`; `None` when none gave records.
pub fn load_imports(
    store: &Arc<Store>,
    from: &[CacheFrom],
    progress: &Arc<Progress>,
) -> Option<Arc<Imports>> {
    if from.is_empty() {
        return None;
    }
    let mut loaded = Vec::new();
    for f in from {
        let name = f.describe();
        let result: Result<Option<Loaded>> = (|| match f {
            CacheFrom::Registry { reference } => {
                remotecache::registry::import(&registry_context(store)?, store, reference)
            }
            CacheFrom::Local { src } => remotecache::local::import(src),
            CacheFrom::Inline { reference } => {
                remotecache::inline::import(&registry_context(store)?, reference)
            }
        })();
        match result {
            Ok(Some(l)) => {
                progress.note(&format!(
                    "importing cache from {name}: {} records",
                    l.doc.records.len()
                ));
                loaded.push(l);
            }
            Ok(None) => warn(
                progress,
                &format!("warning: --cache-from {name}: no cache there yet; building without it"),
            ),
            Err(e) => warn(
                progress,
                &format!("warning: --cache-from {name}: {e:#}; building without it"),
            ),
        }
    }
    if loaded.is_empty() {
        return None;
    }
    let p = progress.clone();
    Some(Arc::new(Imports::new(
        store.clone(),
        loaded,
        Box::new(move |text| warn(&p, text)),
    )))
}

/// The records an export of `mode` holds.
pub fn records_for(info: &BuildCacheInfo, mode: CacheMode) -> Vec<CacheRecord> {
    info.steps
        .iter()
        .filter(|s| mode == CacheMode::Max || info.image_stages.contains(&s.stage))
        .map(|s| s.record.clone())
        .collect()
}

/// The layers (by digest) of the steps of the image's stages: an export sends these as the push
/// does (gzip), the others as the cache's own (`remotecache::layer_blob_for_export`).
fn image_layers(info: &BuildCacheInfo) -> HashSet<String> {
    info.steps
        .iter()
        .filter(|s| info.image_stages.contains(&s.stage))
        .filter_map(|s| s.record.layer.as_ref().map(|l| l.digest.clone()))
        .collect()
}

/// The cache mount directories of the build, as layers.
fn mount_records(store: &Store, info: &BuildCacheInfo) -> Result<Vec<MountRecord>> {
    let mut out = Vec::new();
    for (id, uid, gid, mode) in &info.cache_mounts {
        let dir = crate::ops::cache_mount_dir(store.root(), id, *uid, *gid, *mode);
        if !dir.is_dir() {
            continue;
        }
        let layer = remotecache::mount_layer_from_dir(store, &dir)?;
        let key = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        out.push(MountRecord {
            key,
            layer: remotecache::LayerDesc::from(&layer),
        });
    }
    Ok(out)
}

/// Writes one `--cache-to` (not inline: that one rides in the image config).
pub fn export(
    store: &Store,
    to: &CacheTo,
    info: &BuildCacheInfo,
    imports: Option<&Imports>,
) -> Result<remotecache::ExportStats> {
    let records = records_for(info, to.mode());
    let image = image_layers(info);
    let in_image = |l: &remotecache::LayerDesc| image.contains(&l.digest);
    let mounts = if to.cache_mounts() {
        mount_records(store, info)?
    } else {
        Vec::new()
    };
    match to {
        CacheTo::Registry {
            reference,
            compression,
            ..
        } => {
            let ctx = registry_context(store)?;
            let r = crate::registry::RepoRef::parse(reference)?;
            // Blobs a cache on the same registry lists are skipped or mounted, not downloaded.
            let keep = |l: &remotecache::LayerDesc| {
                imports.is_some_and(|i| i.listed_on(&r.registry, &l.digest))
            };
            let prepared = remotecache::prepare(
                store,
                &records,
                &mounts,
                *compression,
                imports,
                &keep,
                &in_image,
            )?;
            remotecache::registry::export(&ctx, store, reference, &prepared.doc, imports)
        }
        CacheTo::Local {
            dest, compression, ..
        } => {
            let prepared = remotecache::prepare(
                store,
                &records,
                &mounts,
                *compression,
                imports,
                &|_| false,
                &in_image,
            )?;
            remotecache::local::export(store, dest, &prepared.doc, imports)
        }
        CacheTo::Inline => Err(anyhow!("an inline cache is written with the image")),
    }
}

/// Restores `RUN --mount=type=cache` directories from the imported caches before the first step
/// that mounts them (a directory that exists already is left as it is).
pub struct MountRestorer {
    pub imports: Option<Arc<Imports>>,
    pub done: Mutex<HashSet<String>>,
}

impl MountRestorer {
    pub fn restore(&self, store: &Store, mounts: &[RunMount]) -> Result<()> {
        let Some(imports) = &self.imports else {
            return Ok(());
        };
        for m in mounts {
            let RunMount::Cache {
                id, uid, gid, mode, ..
            } = m
            else {
                continue;
            };
            let dir = crate::ops::cache_mount_dir(store.root(), id, *uid, *gid, *mode);
            let key = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let mut done = self.done.lock().map_err(|_| anyhow!("lock poisoned"))?;
            if !done.insert(key.clone()) || dir.exists() {
                continue;
            }
            let Some(layer) = imports.mount_layer(&key) else {
                continue;
            };
            if let Err(e) = restore_one(store, imports, &layer, &dir, (*uid, *gid, *mode)) {
                crate::errln!("warning: cache mount {id}: not restored from the cache: {e:#}");
            }
        }
        Ok(())
    }
}

fn restore_one(
    store: &Store,
    imports: &Imports,
    layer: &remotecache::LayerDesc,
    dir: &Path,
    (uid, gid, mode): (u32, u32, u32),
) -> Result<()> {
    imports.materialize(&[layer.to_ref()])?;
    let parent = dir.parent().context("cache mount directory")?;
    std::fs::create_dir_all(parent)?;
    let tmp = tempfile::Builder::new()
        .prefix(".restore-")
        .tempdir_in(parent)?;
    let blob = store.open_blob(&layer.digest)?;
    let (_, tar) = crate::oci::compress::decompress(std::io::BufReader::new(blob))?;
    crate::oci::layer::apply_layer(tar, tmp.path(), crate::oci::layer::ApplyMode::Flatten)?;
    std::os::unix::fs::chown(tmp.path(), Some(uid), Some(gid))?;
    std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(mode),
    )?;
    let path = tmp.keep();
    std::fs::rename(&path, dir).with_context(|| format!("moving into {}", dir.display()))?;
    Ok(())
}

/// Compresses each layer a step makes on a thread of its own while the build goes on, when a
/// `--cache-to` of every step (`mode=max`) will send it: the export then finds the blob made
/// (`remotecache::layer_blob_for_export` is idempotent) instead of compressing every layer after
/// the last step.
pub struct Precompress {
    compression: Option<remotecache::CacheCompression>,
    pending: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl Precompress {
    /// For the first registry or local `--cache-to` in `mode=max`, if there is one.
    pub fn for_exports(to: &[CacheTo]) -> Option<Precompress> {
        to.iter().find_map(|t| match t {
            CacheTo::Registry {
                mode: CacheMode::Max,
                compression,
                ..
            }
            | CacheTo::Local {
                mode: CacheMode::Max,
                compression,
                ..
            } => Some(Precompress {
                compression: *compression,
                pending: Mutex::new(Vec::new()),
            }),
            _ => None,
        })
    }

    /// Starts compressing `layer`, a layer of the image's stages when `in_image` (an error is
    /// left for the export, which tries again and reports it).
    pub fn start(
        &self,
        store: &Arc<Store>,
        layer: &crate::solver::cache::LayerRef,
        in_image: bool,
    ) {
        let (store, layer, compression) = (store.clone(), layer.clone(), self.compression);
        let handle = std::thread::spawn(move || {
            let _ = remotecache::layer_blob_for_export(&store, &layer, compression, in_image);
        });
        if let Ok(mut p) = self.pending.lock() {
            p.push(handle);
        }
    }

    /// Waits for every compression started.
    pub fn wait(&self) {
        let handles = self
            .pending
            .lock()
            .map(|mut p| std::mem::take(&mut *p))
            .unwrap_or_default();
        for h in handles {
            let _ = h.join();
        }
    }
}
