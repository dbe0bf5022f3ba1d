//! The image in kiln's store: the config and manifest written as blobs, the manifest named by the
//! `-t` names. Every build does this; the other exporters read the image from here.

use anyhow::{anyhow, Context, Result};

use crate::oci::config::ImageConfigFile;
use crate::oci::layer::LayerRef;
use crate::reference::Reference;
use crate::store::Store;

/// An image committed to the store.
pub struct Committed {
    /// The config digest, which docker calls the image ID.
    pub image_id: String,
    pub manifest_digest: String,
}

/// Writes the config and manifest and names the manifest.
pub fn commit(
    store: &Store,
    config: &ImageConfigFile,
    layers: &[LayerRef],
    names: &[Reference],
) -> Result<Committed> {
    let config_bytes = config.to_json();
    // A no-op rebuild produces the same config: skip rewriting (and fsyncing) it.
    let config_digest = crate::digest::sha256_digest(&config_bytes);
    let config_blob = store.put_blob(&config_bytes[..], Some(&config_digest))?;
    let layers: Vec<oci_spec::image::Descriptor> =
        layers.iter().map(descriptor).collect::<Result<_>>()?;
    let manifest = oci_spec::image::ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(oci_spec::image::MediaType::ImageManifest)
        .config(oci_spec::image::Descriptor::new(
            oci_spec::image::MediaType::ImageConfig,
            config_blob.size,
            config_blob
                .digest
                .parse::<oci_spec::image::Digest>()
                .map_err(|e| anyhow!("config digest: {e}"))?,
        ))
        .layers(layers)
        .build()
        .context("building the image manifest")?;
    let manifest_bytes = serde_json::to_vec(&manifest)?;
    let manifest_digest = store.add_manifest_with_names(&manifest_bytes, names)?;
    Ok(Committed {
        image_id: config_blob.digest,
        manifest_digest,
    })
}

fn descriptor(layer: &LayerRef) -> Result<oci_spec::image::Descriptor> {
    let media_type: oci_spec::image::MediaType = layer.media_type.as_str().into();
    Ok(oci_spec::image::Descriptor::new(
        media_type,
        layer.size,
        layer
            .digest
            .parse::<oci_spec::image::Digest>()
            .map_err(|e| anyhow!("layer digest {}: {e}", layer.digest))?,
    ))
}
