//! `type=registry`: the cache as an artifact manifest under a tag of a registry repository.
//! Import reads the manifest and the config only; layers are fetched when a hit needs them.
//! Export sends the blobs in parallel (HEAD skip, cross-repository mount, skip of what the
//! imported cache already lists), the config, and the manifest last: a killed export leaves the
//! tag on the previous, complete cache.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use anyhow::{Context, Result};

use super::{
    artifact_manifest, parse_artifact_manifest, BlobSource, CacheDoc, ExportStats, Imports,
    LayerDesc, Loaded, RemoteCache, CONFIG_MEDIA_TYPE,
};
use crate::registry::artifact::{BlobPushed, Repository};
use crate::registry::manifest::Descriptor;
use crate::registry::{RegistryContext, RepoRef};
use crate::store::Store;

const PARALLEL_UPLOADS: usize = 6;

fn descriptor(l: &LayerDesc) -> Descriptor {
    Descriptor {
        media_type: l.media_type.clone(),
        digest: l.digest.clone(),
        size: l.size,
        platform: None,
        urls: Vec::new(),
    }
}

struct RegistryBlobs {
    repo: Repository,
}

impl BlobSource for RegistryBlobs {
    fn fetch(&self, store: &Store, layer: &LayerDesc) -> Result<()> {
        self.repo.fetch_blob(&descriptor(layer), store)
    }

    fn registry_repo(&self) -> Option<(String, String)> {
        Some((
            self.repo.repo.registry.clone(),
            self.repo.repo.repository.clone(),
        ))
    }
}

fn parse_ref(reference: &str) -> Result<RepoRef> {
    let r = RepoRef::parse(reference)
        .with_context(|| format!("{reference:?} is not a registry reference"))?;
    Ok(r)
}

/// Reads the cache at `reference`: `Ok(None)` when the tag does not exist.
pub fn import(ctx: &RegistryContext, store: &Store, reference: &str) -> Result<Option<Loaded>> {
    let r = parse_ref(reference)?;
    let repo = Repository::open(ctx, &r, false, &[])?;
    let Some((bytes, _digest)) = repo.manifest()? else {
        return Ok(None);
    };
    let (config, listed) = parse_artifact_manifest(&bytes)?;
    let config_bytes = repo.blob_bytes(&descriptor(&config))?;
    let doc = CacheDoc::parse(&config_bytes)?;
    // A later push of an image with these layers mounts them from the cache's repository.
    let digests: Vec<String> = listed.iter().cloned().collect();
    crate::registry::LocalStore::prepare(store)?;
    crate::registry::LocalStore::record_blob_sources(store, &r.registry, &r.repository, &digests)?;
    Ok(Some(Loaded {
        name: reference.to_string(),
        doc,
        listed,
        blobs: Box::new(RegistryBlobs { repo }),
    }))
}

/// The blobs of an image reference's inline cache come from the image's repository.
pub(super) fn image_blobs(repo: Repository) -> Box<dyn BlobSource> {
    Box::new(RegistryBlobs { repo })
}

/// Pushes `doc` (with its layer blobs) as the cache at `reference`.
pub fn export(
    ctx: &RegistryContext,
    store: &Store,
    reference: &str,
    doc: &CacheDoc,
    imports: Option<&Imports>,
) -> Result<ExportStats> {
    let r = parse_ref(reference)?;
    let mount_from = imports
        .map(|i| i.repositories_on(&r.registry))
        .unwrap_or_default();
    let repo = Repository::open(ctx, &r, true, &mount_from)?;
    let layers = doc.layers();
    let uploaded = AtomicUsize::new(0);
    let uploaded_bytes = AtomicU64::new(0);
    let skipped = AtomicUsize::new(0);
    let mounted = AtomicUsize::new(0);
    crate::registry::progress::parallel(&layers, PARALLEL_UPLOADS, |l| {
        if imports.is_some_and(|i| i.listed_in(&r.registry, &r.repository, &l.digest)) {
            skipped.fetch_add(1, Ordering::SeqCst);
            return Ok(());
        }
        if !store.has_blob(&l.digest) {
            // Not here: the registry may have it (HEAD) or mount it; else fetch it first.
            if !mount_from.is_empty() {
                if let Ok(outcome) = repo.push_blob(&descriptor(l), store) {
                    count(&outcome, l, &uploaded, &uploaded_bytes, &skipped, &mounted);
                    return Ok(());
                }
            }
            let imports =
                imports.with_context(|| format!("the layer {} is not in the store", l.digest))?;
            imports.materialize(&[l.to_ref()])?;
        }
        let outcome = repo
            .push_blob(&descriptor(l), store)
            .with_context(|| format!("pushing the cache layer {}", l.digest))?;
        count(&outcome, l, &uploaded, &uploaded_bytes, &skipped, &mounted);
        Ok(())
    })?;
    let config_bytes = serde_json::to_vec(doc)?;
    let blob = store.put_blob_bytes(&config_bytes)?;
    let config = LayerDesc {
        media_type: CONFIG_MEDIA_TYPE.to_string(),
        digest: blob.digest.clone(),
        size: blob.size,
        diff_id: String::new(),
    };
    let outcome = repo
        .push_blob(&descriptor(&config), store)
        .context("pushing the cache config")?;
    count(
        &outcome,
        &config,
        &uploaded,
        &uploaded_bytes,
        &skipped,
        &mounted,
    );
    let manifest = artifact_manifest(&config, &layers)?;
    repo.put_manifest(crate::registry::manifest::OCI_MANIFEST, &manifest)?;
    let digests: Vec<String> = layers.iter().map(|l| l.digest.clone()).collect();
    crate::registry::LocalStore::record_blob_sources(store, &r.registry, &r.repository, &digests)?;
    Ok(ExportStats {
        records: doc.records.len(),
        blobs: layers.len() + 1,
        uploaded: uploaded.into_inner(),
        uploaded_bytes: uploaded_bytes.into_inner(),
        skipped: skipped.into_inner(),
        mounted: mounted.into_inner(),
    })
}

fn count(
    outcome: &BlobPushed,
    l: &LayerDesc,
    uploaded: &AtomicUsize,
    bytes: &AtomicU64,
    skipped: &AtomicUsize,
    mounted: &AtomicUsize,
) {
    match outcome {
        BlobPushed::Exists => skipped.fetch_add(1, Ordering::SeqCst),
        BlobPushed::Mounted(_) => mounted.fetch_add(1, Ordering::SeqCst),
        BlobPushed::Uploaded => {
            bytes.fetch_add(l.size, Ordering::SeqCst);
            uploaded.fetch_add(1, Ordering::SeqCst)
        }
    };
}
