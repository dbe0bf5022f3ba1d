//! Image sources: a FROM (or `--from`) image, from the store or pulled from its registry, as its
//! config and layer chain. Its cache key is the manifest digest.

use anyhow::{bail, Context, Result};

use crate::oci::config::ImageConfigFile;
use crate::oci::layer::LayerRef;
use crate::store::Store;

/// A base image as the store (or a registry) gives it.
#[derive(Debug, Clone)]
pub struct BaseImage {
    /// A stable identity for cache keys (the config or manifest digest).
    pub id: String,
    pub config: ImageConfigFile,
    pub layers: Vec<LayerRef>,
    /// A single-platform image whose config names another platform than the one asked for:
    /// that platform (`linux/arm64`). BuildKit builds on it all the same and warns
    /// (InvalidBaseImagePlatform); the solver says so.
    pub platform_mismatch: Option<String>,
}

/// A FROM (or `--from`) image: the local image when there is one (docker's default), else a pull;
/// `pull` always asks the registry. Local-only names (an image ID, a name that is not a registry
/// reference) are looked up in the store alone. A name is never an image-ID prefix
/// (`Store::resolve_reference`).
/// `platform` picks an index's manifest (an index without it is one error naming the image and
/// the platforms it has); a single-platform image for another platform is taken as it is, with
/// `platform_mismatch` set, as BuildKit takes it (with a warning). An image whose config names
/// no architecture is taken as it is.
pub fn resolve(
    store: &Store,
    name: &str,
    pull: bool,
    platform: &crate::platform::Platform,
) -> Result<BaseImage> {
    let manifest_digest = resolve_manifest(store, name, pull, platform)?;
    let record = store.resolve(&manifest_digest)?;
    let record = record
        .for_platform(platform)
        .with_context(|| format!("base image {name}"))?;
    let manifest = store.manifest(&record.manifest_digest)?;
    let config_bytes = store.read_blob(&record.config_digest)?;
    let config = ImageConfigFile::from_json(&config_bytes)
        .with_context(|| format!("reading the config of {name}"))?;
    let mut platform_mismatch = None;
    if !config.architecture.is_empty() {
        let have = crate::platform::Platform::of_config(
            &config.os,
            &config.architecture,
            config.variant.as_deref(),
        );
        // BuildKit compares the OS and architecture only (not the variant).
        if have.os != platform.os || have.architecture != platform.architecture {
            platform_mismatch = Some(have.to_string());
        }
    }
    if config.rootfs.diff_ids.len() != manifest.layers().len() {
        bail!("image {name}: config and manifest disagree on the number of layers");
    }
    let layers = manifest
        .layers()
        .iter()
        .zip(&config.rootfs.diff_ids)
        .map(|(d, diff_id)| LayerRef {
            digest: d.digest().to_string(),
            diff_id: diff_id.clone(),
            size: d.size(),
            media_type: d.media_type().to_string(),
        })
        .collect();
    Ok(BaseImage {
        id: record.manifest_digest,
        config,
        layers,
        platform_mismatch,
    })
}
fn resolve_manifest(
    store: &Store,
    name: &str,
    pull: bool,
    want: &crate::platform::Platform,
) -> Result<String> {
    if !pull {
        if let Some(record) = store.resolve_reference(name)? {
            match &record.index {
                None => return Ok(record.manifest_digest),
                Some(index) => {
                    if let Some(entry) = index.find(want) {
                        return Ok(entry.manifest_digest.clone());
                    }
                    // A pulled index may have the platform at its registry: pull it; an index
                    // made here gets the error naming what it has.
                    let pulled = match (&record.name, crate::registry::RepoRef::parse(name)) {
                        (Some(n), Ok(_)) => {
                            use crate::registry::LocalStore;
                            store.prepare()?;
                            store.pulled_digest(&n.full())?.is_some()
                        }
                        _ => false,
                    };
                    if !pulled {
                        bail!(
                            "base image {name} has no {want} variant (it has: {})",
                            index.platform_list()
                        );
                    }
                }
            }
        }
    }
    let Ok(r) = crate::registry::RepoRef::parse(name) else {
        bail!("base image {name} is not in kiln's store (kiln pull, load or import it)");
    };
    let mut ctx = crate::registry::RegistryContext::load(store.root().to_path_buf())?;
    ctx.quiet = true;
    let platform = want.clone();
    let policy = if pull {
        crate::registry::PullPolicy::Always
    } else {
        crate::registry::PullPolicy::Missing
    };
    let record =
        crate::registry::ensure_image(&ctx, store, &r, policy, &platform).with_context(|| {
            format!("base image {name} ({platform}): not in kiln's store, and pulling it failed")
        })?;
    Ok(record.manifest_digest)
}
