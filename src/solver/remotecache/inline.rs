//! `type=inline`: the records ride in the pushed image's own config (under `INLINE_KEY`), in
//! min mode: every record names a layer of the image itself, so no other blob is sent.
//! `--cache-from REPO:TAG` reads them back from the image's config at the registry.

use std::collections::HashSet;

use anyhow::{bail, Context, Result};

use super::{CacheDoc, CacheRecord, Loaded, INLINE_KEY};
use crate::oci::config::ImageConfigFile;
use crate::registry::artifact::Repository;
use crate::registry::manifest::{self, Manifest};
use crate::registry::{RegistryContext, RepoRef};

/// Puts the records whose layers are the image's own into its config (and removes records a
/// base image brought along).
pub fn embed(config: &mut ImageConfigFile, records: &[CacheRecord]) -> Result<()> {
    let ours: HashSet<&String> = config.rootfs.diff_ids.iter().collect();
    let kept: Vec<CacheRecord> = records
        .iter()
        .filter(|r| r.layer.as_ref().map_or(true, |l| ours.contains(&l.diff_id)))
        .cloned()
        .collect();
    let doc = CacheDoc::new(kept, Vec::new());
    config
        .other
        .insert(INLINE_KEY.to_string(), serde_json::to_value(&doc)?);
    Ok(())
}

/// Removes inline records from a config (an image built FROM one must not carry them on).
pub fn strip(config: &mut ImageConfigFile) {
    config.other.remove(INLINE_KEY);
}

/// Reads the inline cache of the image `reference` at its registry: `Ok(None)` when the tag
/// does not exist or the image has no records.
pub fn import(ctx: &RegistryContext, reference: &str) -> Result<Option<Loaded>> {
    let r = RepoRef::parse(reference)
        .with_context(|| format!("{reference:?} is not an image reference"))?;
    let repo = Repository::open(ctx, &r, false, &[])?;
    let Some((bytes, _)) = repo.manifest()? else {
        return Ok(None);
    };
    let (parsed, _) = manifest::parse(&bytes, None)?;
    let Manifest::Image(image) = parsed else {
        bail!("{reference} is an index; give the image of one platform for its inline cache");
    };
    let config_bytes = repo.blob_bytes(&image.config)?;
    let config: serde_json::Value =
        serde_json::from_slice(&config_bytes).context("the image config is not JSON")?;
    let Some(records) = config.get(INLINE_KEY) else {
        return Ok(None);
    };
    let doc = CacheDoc::parse(&serde_json::to_vec(records)?)?;
    let listed: HashSet<String> = image.layers.iter().map(|l| l.digest.clone()).collect();
    // Only records naming a layer of the image are usable.
    let records = doc
        .records
        .into_iter()
        .filter(|r| {
            r.layer
                .as_ref()
                .map_or(true, |l| listed.contains(&l.digest))
        })
        .collect();
    Ok(Some(Loaded {
        name: reference.to_string(),
        doc: CacheDoc::new(records, Vec::new()),
        listed,
        blobs: super::registry::image_blobs(repo),
    }))
}
