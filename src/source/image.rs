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
}

/// A FROM (or `--from`) image: the local image when there is one (docker's default), else a pull;
/// `pull` always asks the registry. Local-only names (an image ID, a name that is not a registry
/// reference) are looked up in the store alone. A name is never an image-ID prefix
/// (`Store::resolve_reference`).
pub fn resolve(store: &Store, name: &str, pull: bool) -> Result<BaseImage> {
    let manifest_digest = resolve_manifest(store, name, pull)?;
    let record = store.resolve(&manifest_digest)?;
    let manifest = store.manifest(&record.manifest_digest)?;
    let config_bytes = store.read_blob(&record.config_digest)?;
    let config = ImageConfigFile::from_json(&config_bytes)
        .with_context(|| format!("reading the config of {name}"))?;
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
    })
}
fn resolve_manifest(store: &Store, name: &str, pull: bool) -> Result<String> {
    if !pull {
        if let Some(record) = store.resolve_reference(name)? {
            return Ok(record.manifest_digest);
        }
    }
    let Ok(r) = crate::registry::RepoRef::parse(name) else {
        bail!("base image {name} is not in kiln's store (kiln pull, load or import it)");
    };
    let mut ctx = crate::registry::RegistryContext::load(store.root().to_path_buf())?;
    ctx.quiet = true;
    let platform = crate::registry::Platform::parse(&format!(
        "linux/{}",
        crate::oci::image::host_architecture()
    ))?;
    let policy = if pull {
        crate::registry::PullPolicy::Always
    } else {
        crate::registry::PullPolicy::Missing
    };
    let record =
        crate::registry::ensure_image(&ctx, store, &r, policy, &platform).with_context(|| {
            format!("base image {name}: not in kiln's store, and pulling it failed")
        })?;
    Ok(record.manifest_digest)
}
