//! Image indexes (multi-platform images): an OCI index over manifests already in the store, each
//! entry carrying the platform its config declares. `kiln manifest create` and multi-platform
//! builds make them; the store keeps them under a name (`Store::add_index_with_names`).

use anyhow::{bail, Context, Result};
use serde_json::json;

use super::config::ImageConfigFile;
use crate::platform::Platform;
use crate::store::Store;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// The platform an image's config declares (`architecture`, `os`, `variant`).
pub fn manifest_platform(store: &Store, manifest_digest: &str) -> Result<Platform> {
    let manifest = store.manifest(manifest_digest)?;
    let config_digest = manifest.config().digest().to_string();
    let config = ImageConfigFile::from_json(&store.read_blob(&config_digest)?)
        .with_context(|| format!("reading the config {config_digest}"))?;
    if config.architecture.is_empty() {
        bail!("image {manifest_digest}: its config names no architecture, so it cannot be part of an index (import it with --platform)");
    }
    Ok(Platform::of_config(
        &config.os,
        &config.architecture,
        config.variant.as_deref(),
    ))
}

/// The bytes of an OCI index listing `manifests` (stored manifest digests) in order, each with
/// the platform given, else the one its config declares; two entries for the same platform are
/// refused.
pub fn build_index(store: &Store, manifests: &[(String, Option<Platform>)]) -> Result<Vec<u8>> {
    if manifests.is_empty() {
        bail!("an image index needs at least one image");
    }
    let mut seen: Vec<(Platform, String)> = Vec::new();
    let mut entries = Vec::new();
    for (digest, given) in manifests {
        let bytes = store.manifest_bytes(digest)?;
        let media_type = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| {
                v.get("mediaType")
                    .and_then(|m| m.as_str())
                    .map(String::from)
            })
            .unwrap_or_else(|| "application/vnd.oci.image.manifest.v1+json".into());
        let platform = match given {
            Some(p) => p.clone(),
            None => manifest_platform(store, digest)?,
        };
        if let Some((_, other)) = seen.iter().find(|(p, _)| *p == platform) {
            bail!("images {other} and {digest} are both for {platform}: an index has one image per platform");
        }
        seen.push((platform.clone(), digest.clone()));
        let mut p = json!({"architecture": platform.architecture, "os": platform.os});
        if let Some(v) = &platform.variant {
            p["variant"] = json!(v);
        }
        entries.push(json!({
            "mediaType": media_type,
            "digest": digest,
            "size": bytes.len(),
            "platform": p,
        }));
    }
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": entries,
    });
    Ok(serde_json::to_vec(&index)?)
}
