//! `type=local`: the cache as an OCI image layout directory (`oci-layout`, `index.json`,
//! `blobs/sha256/`) holding the same artifact manifest as a registry cache. An export writes the
//! blobs first and `index.json` last (temp name, fsync, rename), then removes the blobs no longer
//! named, so the directory does not grow without bound.

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use super::{
    artifact_manifest, parse_artifact_manifest, BlobSource, CacheDoc, ExportStats, Imports,
    LayerDesc, Loaded, RemoteCache, CONFIG_MEDIA_TYPE, MAX_CONFIG_BYTES,
};
use crate::store::Store;

const LAYOUT: &str = "{\"imageLayoutVersion\":\"1.0.0\"}";

fn blob_path(dir: &Path, digest: &str) -> Result<PathBuf> {
    let hex = crate::digest::digest_hex(digest)?;
    Ok(dir.join("blobs").join("sha256").join(hex))
}

fn read_verified(dir: &Path, digest: &str, limit: u64) -> Result<Vec<u8>> {
    let path = blob_path(dir, digest)?;
    let meta = fs::metadata(&path).with_context(|| format!("reading {}", path.display()))?;
    if meta.len() > limit {
        bail!(
            "{} is {} bytes, larger than kiln reads",
            path.display(),
            meta.len()
        );
    }
    let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let got = crate::digest::sha256_digest(&bytes);
    if got != digest {
        bail!(
            "{} failed verification (its bytes hash to {got})",
            path.display()
        );
    }
    Ok(bytes)
}

struct DirBlobs {
    dir: PathBuf,
}

impl BlobSource for DirBlobs {
    fn fetch(&self, store: &Store, layer: &LayerDesc) -> Result<()> {
        let path = blob_path(&self.dir, &layer.digest)?;
        let file = fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        store
            .put_blob(std::io::BufReader::new(file), Some(&layer.digest))
            .with_context(|| format!("copying {} into the store", path.display()))?;
        Ok(())
    }
}

/// The cache manifest `index.json` points at (the entry with kiln's artifact type).
fn manifest_digest(dir: &Path) -> Result<Option<String>> {
    let path = dir.join("index.json");
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let index: serde_json::Value = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not JSON", path.display()))?;
    let entry = index["manifests"]
        .as_array()
        .and_then(|m| {
            m.iter()
                .find(|e| e["artifactType"] == super::ARTIFACT_TYPE)
                .or_else(|| m.first())
        })
        .ok_or_else(|| anyhow!("{} lists no manifest", path.display()))?;
    let digest = entry["digest"]
        .as_str()
        .ok_or_else(|| anyhow!("{}: a manifest entry without a digest", path.display()))?;
    Ok(Some(digest.to_string()))
}

/// Reads the cache in `dir`: `Ok(None)` when there is none yet.
pub fn import(dir: &Path) -> Result<Option<Loaded>> {
    let Some(digest) = manifest_digest(dir)? else {
        return Ok(None);
    };
    let manifest = read_verified(dir, &digest, crate::registry::manifest::MAX_MANIFEST_BYTES)?;
    let (config, listed) = parse_artifact_manifest(&manifest)?;
    let doc = CacheDoc::parse(&read_verified(dir, &config.digest, MAX_CONFIG_BYTES)?)?;
    Ok(Some(Loaded {
        name: dir.display().to_string(),
        doc,
        listed,
        blobs: Box::new(DirBlobs {
            dir: dir.to_path_buf(),
        }),
    }))
}

/// Writes `bytes` to `path` through a temporary name, fsynced, renamed.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("writing into {}", dir.display()))?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .map_err(|e| anyhow!("writing {}: {}", path.display(), e.error))?;
    Ok(())
}

/// Copies a store blob into the layout (skipped when it is there with the right size).
fn put_blob(store: &Store, dir: &Path, l: &LayerDesc) -> Result<bool> {
    let dest = blob_path(dir, &l.digest)?;
    if fs::metadata(&dest).is_ok_and(|m| m.len() == l.size) {
        return Ok(false);
    }
    let src = store.blob_path(&l.digest)?;
    let parent = dest.parent().unwrap_or(dir);
    let mut tmp = tempfile::NamedTempFile::new_in(parent)?;
    let mut input = fs::File::open(&src).with_context(|| format!("reading {}", src.display()))?;
    std::io::copy(&mut input, tmp.as_file_mut())?;
    tmp.as_file().sync_all()?;
    tmp.persist(&dest)
        .map_err(|e| anyhow!("writing {}: {}", dest.display(), e.error))?;
    Ok(true)
}

/// Writes `doc` as the cache in `dir` and removes the blobs it no longer names.
pub fn export(
    store: &Store,
    dir: &Path,
    doc: &CacheDoc,
    imports: Option<&Imports>,
) -> Result<ExportStats> {
    let blobs = dir.join("blobs").join("sha256");
    fs::create_dir_all(&blobs).with_context(|| format!("creating {}", blobs.display()))?;
    // One export at a time per directory: another's clean-up must not remove blobs this one
    // has written but not yet named in index.json.
    let lock_path = dir.join(".kiln-export.lock");
    let lock_file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow!("locking {}: {e}", lock_path.display()))?;
    let layers = doc.layers();
    let mut stats = ExportStats {
        records: doc.records.len(),
        blobs: layers.len() + 1,
        ..Default::default()
    };
    for l in &layers {
        if !store.has_blob(&l.digest) {
            let dest = blob_path(dir, &l.digest)?;
            if fs::metadata(&dest).is_ok_and(|m| m.len() == l.size) {
                stats.skipped += 1;
                continue;
            }
            imports
                .ok_or_else(|| anyhow!("the layer {} is not in the store", l.digest))?
                .materialize(&[l.to_ref()])?;
        }
        if put_blob(store, dir, l)? {
            stats.uploaded += 1;
            stats.uploaded_bytes += l.size;
        } else {
            stats.skipped += 1;
        }
    }
    let config_bytes = serde_json::to_vec(doc)?;
    let config_digest = crate::digest::sha256_digest(&config_bytes);
    write_atomic(&blob_path(dir, &config_digest)?, &config_bytes)?;
    let config = LayerDesc {
        media_type: CONFIG_MEDIA_TYPE.into(),
        digest: config_digest,
        size: config_bytes.len() as u64,
        diff_id: String::new(),
    };
    let manifest = artifact_manifest(&config, &layers)?;
    let manifest_digest = crate::digest::sha256_digest(&manifest);
    write_atomic(&blob_path(dir, &manifest_digest)?, &manifest)?;
    write_atomic(&dir.join("oci-layout"), LAYOUT.as_bytes())?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": crate::registry::manifest::OCI_INDEX,
        "manifests": [{
            "mediaType": crate::registry::manifest::OCI_MANIFEST,
            "artifactType": super::ARTIFACT_TYPE,
            "digest": manifest_digest,
            "size": manifest.len(),
        }],
    });
    write_atomic(&dir.join("index.json"), &serde_json::to_vec(&index)?)?;
    // Only now, with the new index in place: blobs no record names go.
    let mut keep: HashSet<String> = layers
        .iter()
        .map(|l| l.digest.clone())
        .chain([config.digest.clone(), manifest_digest])
        .filter_map(|d| crate::digest::digest_hex(&d).ok().map(str::to_string))
        .collect();
    keep.shrink_to_fit();
    for entry in fs::read_dir(&blobs)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !keep.contains(&name) {
            let _ = fs::remove_file(entry.path());
        }
    }
    Ok(stats)
}
