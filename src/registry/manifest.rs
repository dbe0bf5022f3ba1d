//! The manifest formats a registry serves: OCI and Docker schema 2 image manifests, OCI image
//! indexes and Docker manifest lists, and choosing one platform out of an index.

use anyhow::{bail, Context, Result};
use serde::Deserialize;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Foreign (non-distributable) Docker layers live at `urls`, not in the registry.
const DOCKER_FOREIGN_LAYER: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
const OCI_NONDISTRIBUTABLE_PREFIX: &str = "application/vnd.oci.image.layer.nondistributable.";

/// The `Accept` header for manifest requests: every format kiln understands.
pub fn accept_header() -> String {
    [OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST].join(", ")
}

/// Manifests and indexes are small; anything larger is refused instead of read into memory.
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default)]
    pub platform: Option<Platform>,
    #[serde(default)]
    pub urls: Vec<String>,
}

impl Descriptor {
    /// Whether the blob is meant to be fetched from the registry (not a foreign layer).
    pub fn is_distributable(&self) -> bool {
        !(self.media_type == DOCKER_FOREIGN_LAYER
            || self.media_type.starts_with(OCI_NONDISTRIBUTABLE_PREFIX))
    }
}

pub use crate::platform::Platform;

/// An image manifest (OCI or Docker schema 2; the fields kiln needs are the same).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    #[serde(default)]
    pub media_type: Option<String>,
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub manifests: Vec<Descriptor>,
}

/// What a manifest request returned, by its media type.
pub enum Manifest {
    Image(ImageManifest),
    Index(Index),
}

/// Parses manifest bytes. The media type comes from the response's Content-Type, or from the
/// document's own `mediaType` field when the registry sends a generic type.
pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<(Manifest, String)> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        #[serde(default)]
        media_type: Option<String>,
        #[serde(default)]
        schema_version: Option<u32>,
        #[serde(default)]
        manifests: Option<serde_json::Value>,
    }
    let probe: Probe =
        serde_json::from_slice(bytes).context("the registry sent a manifest that is not JSON")?;
    let content_type = content_type
        .map(|c| c.split(';').next().unwrap_or("").trim())
        .filter(|c| [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST].contains(c));
    let media_type = match (probe.media_type.as_deref(), content_type) {
        (Some(m), _) => m.to_string(),
        (None, Some(c)) => c.to_string(),
        // An OCI document may omit mediaType; tell an index by its `manifests`.
        (None, None) if probe.manifests.is_some() => OCI_INDEX.to_string(),
        (None, None) => OCI_MANIFEST.to_string(),
    };
    match media_type.as_str() {
        OCI_INDEX | DOCKER_LIST => {
            let index: Index = serde_json::from_slice(bytes).context("parsing an image index")?;
            Ok((Manifest::Index(index), media_type))
        }
        OCI_MANIFEST | DOCKER_MANIFEST => {
            let m: ImageManifest =
                serde_json::from_slice(bytes).context("parsing an image manifest")?;
            Ok((Manifest::Image(m), media_type))
        }
        other => {
            if probe.schema_version == Some(1) {
                bail!("the registry only has a Docker schema 1 manifest (deprecated, unsupported); push the image again with a current client")
            }
            bail!("unsupported manifest media type {other:?}")
        }
    }
}

/// Picks the entry of `index` for `want`, or says which platforms the index has.
pub fn select_platform<'a>(index: &'a Index, want: &Platform) -> Result<&'a Descriptor> {
    index
        .manifests
        .iter()
        .find(|d| d.platform.as_ref().is_some_and(|p| want.matches(p)))
        .with_context(|| {
            let have: Vec<String> = index
                .manifests
                .iter()
                .filter_map(|d| d.platform.as_ref().map(|p| p.to_string()))
                .collect();
            format!(
                "no image for platform {want} in the index (it has: {}); choose one with --platform",
                if have.is_empty() { "none".to_string() } else { have.join(", ") }
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_platform_and_tolerates_variant() {
        let index: Index = serde_json::from_str(
            r#"{"manifests":[
              {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:a","size":1,
               "platform":{"architecture":"arm64","os":"linux","variant":"v8"}},
              {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:b","size":1,
               "platform":{"architecture":"amd64","os":"linux"}}]}"#,
        )
        .unwrap();
        assert_eq!(
            select_platform(&index, &Platform::linux_amd64())
                .unwrap()
                .digest,
            "sha256:b"
        );
        let arm = Platform::parse("linux/arm64").unwrap();
        assert_eq!(select_platform(&index, &arm).unwrap().digest, "sha256:a");
        let err = select_platform(&index, &Platform::parse("linux/s390x").unwrap()).unwrap_err();
        assert!(
            err.to_string().contains("linux/arm64/v8, linux/amd64"),
            "{err}"
        );
        assert!(Platform::parse("linux").is_err());
    }
}
