//! `--output type=oci|docker`: the built image as an archive. Both formats are written the way
//! Docker 25+ writes `docker save`: an OCI image layout (`oci-layout`, `index.json`,
//! `blobs/sha256/...`) and, for `docker`, the legacy `manifest.json` + `repositories` beside it,
//! so `docker load`, `skopeo` (`oci-archive:`/`docker-archive:`) and `kiln load` all read it.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::options::OutputCompression;
use crate::reference::Reference;
use crate::store::Store;

fn append(builder: &mut tar::Builder<impl Write>, path: &str, data: &[u8]) -> Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    builder
        .append_data(&mut h, path, data)
        .with_context(|| format!("writing {path}"))?;
    Ok(())
}

fn append_dir(builder: &mut tar::Builder<impl Write>, path: &str) -> Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_size(0);
    h.set_mode(0o755);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Directory);
    builder.append_data(&mut h, path, std::io::empty())?;
    Ok(())
}

fn blob_name(digest: &str) -> Result<String> {
    Ok(format!(
        "blobs/sha256/{}",
        crate::store::digest_hex(digest)?
    ))
}

/// Writes the image (its manifest already in the store) as an archive to `dest` (`-`: stdout).
pub fn save_archive(
    store: &Store,
    manifest_digest: &str,
    names: &[Reference],
    oci: bool,
    compression: OutputCompression,
    dest: &Path,
) -> Result<()> {
    if compression != OutputCompression::Gzip {
        bail!("--output compression other than gzip is not supported yet (layers are stored gzip-compressed)");
    }
    let manifest_bytes = store.manifest_bytes(manifest_digest)?;
    let manifest = store.manifest(manifest_digest)?;
    let config_digest = manifest.config().digest().to_string();
    super::engine::write_to_dest(dest, |out| {
        let mut b = tar::Builder::new(out);
        append(&mut b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        append_dir(&mut b, "blobs")?;
        append_dir(&mut b, "blobs/sha256")?;
        append(
            &mut b,
            &blob_name(&config_digest)?,
            &store.read_blob(&config_digest)?,
        )?;
        let mut layer_paths = Vec::new();
        for layer in manifest.layers() {
            let digest = layer.digest().to_string();
            let path = blob_name(&digest)?;
            let mut file = store.open_blob(&digest)?;
            let size = file.metadata()?.len();
            let mut h = tar::Header::new_ustar();
            h.set_size(size);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, &path, &mut file)
                .with_context(|| format!("writing layer {digest}"))?;
            layer_paths.push(path);
        }
        append(&mut b, &blob_name(manifest_digest)?, &manifest_bytes)?;
        let annotations: Vec<serde_json::Value> = if names.is_empty() {
            vec![serde_json::json!({})]
        } else {
            names
                .iter()
                .map(|n| {
                    let mut a = serde_json::json!({"org.opencontainers.image.ref.name": n.tag().unwrap_or("latest")});
                    if !oci {
                        a["io.containerd.image.name"] = serde_json::Value::String(n.full());
                    }
                    a
                })
                .collect()
        };
        let manifests: Vec<serde_json::Value> = annotations
            .into_iter()
            .map(|a| {
                let mut m = serde_json::json!({
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": manifest_digest,
                    "size": manifest_bytes.len(),
                });
                if a.as_object().is_some_and(|o| !o.is_empty()) {
                    m["annotations"] = a;
                }
                m
            })
            .collect();
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": manifests,
        });
        append(&mut b, "index.json", &serde_json::to_vec(&index)?)?;
        if !oci {
            let tags: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            let legacy = serde_json::json!([{
                "Config": blob_name(&config_digest)?,
                "RepoTags": tags,
                "Layers": layer_paths,
            }]);
            append(&mut b, "manifest.json", &serde_json::to_vec(&legacy)?)?;
            let mut repos = serde_json::Map::new();
            for n in names {
                let entry = repos
                    .entry(n.familiar_repository())
                    .or_insert_with(|| serde_json::json!({}));
                if let Some(tag) = n.tag() {
                    entry[tag] = serde_json::Value::String(
                        crate::store::digest_hex(&config_digest)?.to_string(),
                    );
                }
            }
            append(&mut b, "repositories", &serde_json::to_vec(&repos)?)?;
        }
        b.finish()?;
        Ok(())
    })
}
