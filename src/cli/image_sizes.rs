//! Image sizes as docker shows them (`images` SIZE, `inspect`'s `Size`, `history` SIZE): the
//! unpacked bytes of the layers' files and symlinks (directories and hard links count nothing),
//! what docker's overlay2 driver counts in each layer's directory. Compressed blob sizes are
//! what the store keeps; the unpacked size of a layer is read once from its tar and remembered
//! by layer digest (content-addressed, so a remembered size never goes stale) in the table
//! `cli_layer_content_sizes`.

use std::io;

use anyhow::{Context, Result};
use rusqlite::OptionalExtension;

use crate::store::Store;

const MIGRATIONS: &[&str] = &["CREATE TABLE IF NOT EXISTS cli_layer_content_sizes (
        digest TEXT PRIMARY KEY,       -- the layer's descriptor digest
        size INTEGER NOT NULL          -- bytes of its files and symlinks, unpacked
    )"];

/// The size docker gives a layer (descriptor `digest`), read from its tar the first time.
pub fn layer_content_size(store: &Store, digest: &str) -> Result<u64> {
    store.migrate("cli_layer_content_sizes", MIGRATIONS)?;
    let known = store.with_conn(|conn| {
        Ok(conn
            .query_row(
                "SELECT size FROM cli_layer_content_sizes WHERE digest = ?1",
                [digest],
                |row| row.get::<_, i64>(0),
            )
            .optional()?)
    })?;
    if let Some(size) = known {
        return Ok(size as u64);
    }
    let size = count_tar(store, digest).with_context(|| format!("reading layer {digest}"))?;
    store.with_conn(|conn| {
        conn.execute(
            "INSERT OR REPLACE INTO cli_layer_content_sizes (digest, size) VALUES (?1, ?2)",
            rusqlite::params![digest, size as i64],
        )?;
        Ok(())
    })?;
    Ok(size)
}

fn count_tar(store: &Store, digest: &str) -> Result<u64> {
    // A layer a build made is kept unpacked (digest = DiffID): its tar is written again.
    let reader = crate::snapshot::blobs::open_layer_tar(store, digest, digest)?;
    let mut archive = tar::Archive::new(io::BufReader::new(reader));
    let mut total = 0u64;
    for entry in archive.entries()? {
        let entry = entry?;
        let header = entry.header();
        match header.entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => total += header.size()?,
            tar::EntryType::Symlink => {
                total += entry.link_name_bytes().map_or(0, |l| l.len() as u64)
            }
            _ => {}
        }
    }
    Ok(total)
}

/// The layer digests of a stored manifest, in order.
pub fn manifest_layers(store: &Store, manifest_digest: &str) -> Result<Vec<String>> {
    let manifest: serde_json::Value =
        serde_json::from_slice(&store.manifest_bytes(manifest_digest)?)
            .with_context(|| format!("parsing stored manifest {manifest_digest}"))?;
    Ok(manifest["layers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|l| l["digest"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default())
}

/// An image's size as docker shows it: the sum of its layers' unpacked sizes.
pub fn image_content_size(store: &Store, manifest_digest: &str) -> Result<u64> {
    let mut total = 0;
    for layer in manifest_layers(store, manifest_digest)? {
        total += layer_content_size(store, &layer)?;
    }
    Ok(total)
}
