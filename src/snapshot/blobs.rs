//! Layer blobs for what leaves the machine. A build keeps its layers unpacked
//! (`snapshot::built`: the store's image has uncompressed descriptors, digest = DiffID, and no
//! blob behind them); the compressed blob is made here, once, when an export needs it, and kept
//! for the next export.
//!
//! [`ensure_compressed`] is the single entry point for "this layer as a blob of that
//! compression": `kiln save`, `--output type=oci|docker`, `kiln push` / `--push` (through
//! [`export_manifest`]) and a remote-cache export call it. [`open_layer_tar`] reads any layer's
//! uncompressed tar (a blob decompressed, or written again from the unpacked snapshot) for the
//! outputs that flatten an image.

use std::io::{self, Read, Write};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;

use anyhow::{anyhow, bail, Context, Result};

use crate::oci::archive::media_type_compression;
use crate::oci::compress::{Compression, Compressor, FAST_GZIP_LEVEL};
use crate::oci::layer::LayerRef;
use crate::store::{LayerRecord, Store};

/// The blob of `layer` compressed with `compression`, made if the store has none: from the
/// layer's unpacked snapshot when a build made it (the tar written again by the same writer and
/// checked against the DiffID), else from a stored blob of the layer in another compression.
/// gzip runs in parallel at [`FAST_GZIP_LEVEL`], zstd at its default level. The blob is recorded
/// (digest -> DiffID) so the next call, from any process, returns it without work. A
/// `Compression::None` blob of a built layer has the DiffID as its digest.
pub fn ensure_compressed(
    store: &Store,
    layer: &LayerRef,
    compression: Compression,
) -> Result<LayerRef> {
    if media_type_compression(&layer.media_type) == compression && store.has_blob(&layer.digest) {
        return Ok(layer.clone());
    }
    // A remote blob of this layer (`store::remote`) is fetched to be recompressed.
    if store.unpacked_layer(&layer.diff_id)?.is_none() && !store.has_blob(&layer.digest) {
        store.ensure_blob(&layer.digest)?;
    }
    let stored = store.layers_with_diff_id(&layer.diff_id)?;
    if let Some(found) = stored
        .iter()
        .find(|r| media_type_compression(&r.media_type) == compression && store.has_blob(&r.digest))
    {
        return Ok(layer_ref(found));
    }
    let media_type = compression.layer_media_type().to_string();
    let mut c = Compressor::with_gzip_level(store.blob_writer()?, compression, FAST_GZIP_LEVEL)?;
    if let Some(unpacked) = store.unpacked_layer(&layer.diff_id)? {
        crate::snapshot::built::write_tar(store, &unpacked, &mut c)?;
    } else {
        let source = stored
            .iter()
            .chain(std::iter::once(&record_of(layer)))
            .find(|r| store.has_blob(&r.digest))
            .cloned()
            .with_context(|| {
                format!(
                    "layer {} (DiffID {}) has neither a blob nor its unpacked content in the store",
                    layer.digest, layer.diff_id
                )
            })?;
        let (_, mut plain) =
            crate::oci::compress::decompress(io::BufReader::new(store.open_blob(&source.digest)?))?;
        io::copy(&mut plain, &mut c)
            .with_context(|| format!("recompressing layer {}", source.digest))?;
    }
    let (writer, digests) = c
        .finish()
        .with_context(|| format!("compressing layer {}", layer.diff_id))?;
    if digests.diff_id != layer.diff_id {
        bail!(
            "layer {}: its content, written again for the export, has DiffID {} ({} bytes): the \
             unpacked layer in {} was changed after it was built; rebuild the image with \
             --no-cache",
            layer.diff_id,
            digests.diff_id,
            digests.uncompressed_size,
            store
                .unpacked_layer_path(&layer.diff_id)
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        );
    }
    let blob = writer.commit(Some(&digests.digest))?;
    let record = LayerRecord {
        digest: blob.digest,
        diff_id: layer.diff_id.clone(),
        media_type,
        size: blob.size,
    };
    store.record_layer(&record)?;
    Ok(layer_ref(&record))
}

fn layer_ref(r: &LayerRecord) -> LayerRef {
    LayerRef {
        digest: r.digest.clone(),
        diff_id: r.diff_id.clone(),
        size: r.size,
        media_type: r.media_type.clone(),
    }
}

fn record_of(l: &LayerRef) -> LayerRecord {
    LayerRecord {
        digest: l.digest.clone(),
        diff_id: l.diff_id.clone(),
        media_type: l.media_type.clone(),
        size: l.size,
    }
}

/// The image `manifest_digest` as it leaves the machine: when every layer has a blob, the
/// manifest itself; otherwise a manifest whose unpacked layers are replaced by their blobs from
/// [`ensure_compressed`] (the same config, so the same image ID), stored as a blob that belongs to
/// the image (removing the image collects it). Returns that manifest's digest.
pub fn export_manifest(
    store: &Store,
    manifest_digest: &str,
    compression: Compression,
) -> Result<String> {
    if store.index(manifest_digest)?.is_some() {
        return export_index(store, manifest_digest, compression);
    }
    let mut manifest = store.manifest(manifest_digest)?;
    let config = store.config(manifest.config().digest().as_ref())?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != manifest.layers().len() {
        bail!(
            "image {manifest_digest}: the config lists {} layers, the manifest {}",
            diff_ids.len(),
            manifest.layers().len()
        );
    }
    let mut layers = manifest.layers().clone();
    let mut changed = false;
    for (desc, diff_id) in layers.iter_mut().zip(diff_ids) {
        let digest = desc.digest().to_string();
        // A remote blob goes as it is: a push mounts it, a save fetches it (`store::remote`).
        if store.has_blob_or_remote(&digest)? {
            continue;
        }
        let blob = ensure_compressed(
            store,
            &LayerRef {
                digest,
                diff_id: diff_id.clone(),
                size: desc.size(),
                media_type: desc.media_type().to_string(),
            },
            compression,
        )?;
        *desc = oci_spec::image::Descriptor::new(
            blob.media_type.as_str().into(),
            blob.size,
            blob.digest
                .parse::<oci_spec::image::Digest>()
                .map_err(|e| anyhow!("layer digest {}: {e}", blob.digest))?,
        );
        changed = true;
    }
    if !changed {
        return Ok(manifest_digest.to_string());
    }
    manifest.set_layers(layers);
    let bytes = serde_json::to_vec(&manifest).context("serialising the export manifest")?;
    let blob = store.put_blob_bytes(&bytes)?;
    store.attach_blobs(manifest_digest, std::slice::from_ref(&blob.digest))?;
    Ok(blob.digest)
}

/// A multi-platform image as it leaves the machine: each platform's manifest through
/// [`export_manifest`]; when one of them changed, a new index over the exported manifests, stored
/// and registered as an index (without names) so saves and pushes read it like any index.
fn export_index(store: &Store, index_digest: &str, compression: Compression) -> Result<String> {
    let bytes = store.read_blob(index_digest)?;
    let mut index: serde_json::Value = serde_json::from_slice(&bytes)
        .with_context(|| format!("parsing stored index {index_digest}"))?;
    let mut changed = false;
    let mut made = Vec::new();
    if let Some(entries) = index.get_mut("manifests").and_then(|m| m.as_array_mut()) {
        for entry in entries {
            let Some(child) = entry
                .get("digest")
                .and_then(|d| d.as_str())
                .map(str::to_string)
            else {
                continue;
            };
            if !store.has_blob(&child) {
                continue; // a platform not pulled: the push and save say so
            }
            let exported = export_manifest(store, &child, compression)?;
            if exported != child {
                let child_bytes = store.read_blob(&exported)?;
                store.add_manifest_with_names(&child_bytes, &[])?;
                entry["digest"] = exported.clone().into();
                entry["size"] = (child_bytes.len() as u64).into();
                made.push(exported);
                changed = true;
            }
        }
    }
    if !changed {
        return Ok(index_digest.to_string());
    }
    let new_bytes = serde_json::to_vec(&index).context("serialising the export index")?;
    let digest = store.add_index_with_names(&new_bytes, &[])?;
    made.push(digest.clone());
    store.attach_blobs(index_digest, &made)?;
    Ok(digest)
}

/// The uncompressed tar of a layer (descriptor `digest`, DiffID `diff_id`): its blob
/// decompressed, or for a layer kept unpacked, its tar written again on a thread (checked
/// against the DiffID: a mismatch is a read error at the end of the stream).
pub fn open_layer_tar(store: &Store, digest: &str, diff_id: &str) -> Result<Box<dyn Read>> {
    if store.ensure_blob(digest)? {
        let file = store.open_blob(digest)?;
        let (_, reader) = crate::oci::compress::decompress(io::BufReader::new(file))?;
        return Ok(reader);
    }
    let Some(unpacked) = store.unpacked_layer(diff_id)? else {
        bail!("layer {digest} is missing from the store");
    };
    let source = crate::snapshot::built::tar_source(store, &unpacked)?;
    let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(8);
    let handle = std::thread::spawn(move || -> Result<()> {
        let mut w = ChunkWriter {
            tx,
            buf: Vec::with_capacity(CHUNK),
            hasher: crate::digest::Sha256::new(),
        };
        source.write(&mut w)?;
        w.flush()?;
        let got = format!("sha256:{}", hex::encode(w.hasher.finalize()));
        if got != unpacked.diff_id {
            bail!(
                "layer {}: its content, written again, has DiffID {got}: the unpacked layer was \
                 changed after it was built; rebuild the image with --no-cache",
                unpacked.diff_id
            );
        }
        Ok(())
    });
    Ok(Box::new(ChunkReader {
        rx,
        chunk: Vec::new(),
        pos: 0,
        handle: Some(handle),
    }))
}

const CHUNK: usize = 1 << 20;

struct ChunkWriter {
    tx: SyncSender<Vec<u8>>,
    buf: Vec<u8>,
    hasher: crate::digest::Sha256,
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.hasher.update(&chunk);
        self.tx
            .send(chunk)
            .map_err(|_| io::Error::other("the layer's reader stopped"))
    }
}

struct ChunkReader {
    rx: Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    pos: usize,
    handle: Option<JoinHandle<Result<()>>>,
}

impl Read for ChunkReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            match self.rx.recv() {
                Ok(chunk) => {
                    self.chunk = chunk;
                    self.pos = 0;
                }
                Err(_) => {
                    // The writer is done: its result decides between the end and an error.
                    if let Some(handle) = self.handle.take() {
                        match handle.join() {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => return Err(io::Error::other(format!("{e:#}"))),
                            Err(_) => return Err(io::Error::other("the layer writer panicked")),
                        }
                    }
                    return Ok(0);
                }
            }
        }
        let n = out.len().min(self.chunk.len() - self.pos);
        out[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
