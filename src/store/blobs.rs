//! Content-addressed blobs under `blobs/sha256/<hex>`.

use std::fs;
use std::io::{self, Read, Write};
use std::path::PathBuf;

use crate::digest::Sha256;
use anyhow::{bail, Context, Result};

use super::Store;
use crate::digest::digest_hex;

/// A blob in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    /// `sha256:<hex>`
    pub digest: String,
    pub size: u64,
}

/// Writes one blob: a temp file in `tmp/`, hashed as written; [`BlobWriter::commit`] fsyncs it
/// and renames it into place. Dropped without commit, the temp file is removed.
pub struct BlobWriter {
    file: Option<tempfile::NamedTempFile>,
    hasher: Sha256,
    size: u64,
    blobs_dir: PathBuf,
    /// The free-space floor of the store's filesystem.
    space: super::space::SpaceGuard,
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("blob writer already committed"))?;
        let n = file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        self.space.wrote(n as u64)?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl BlobWriter {
    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Finishes the blob: checks it against `expected` (when given), fsyncs, renames it to
    /// `blobs/sha256/<hex>`. A blob that already exists is kept (same content by definition).
    pub fn commit(mut self, expected: Option<&str>) -> Result<Blob> {
        let file = self.file.take().context("blob writer already committed")?;
        let digest = format!("sha256:{}", hex::encode(self.hasher.clone().finalize()));
        if let Some(expected) = expected {
            if expected != digest {
                bail!(
                    "content does not match its digest: expected {expected}, got {digest} \
                     ({} bytes); the source is corrupt or was changed while read",
                    self.size
                );
            }
        }
        let hex = digest_hex(&digest)?;
        let dest = self.blobs_dir.join(hex);
        if !dest.exists() {
            file.as_file().sync_all().context("fsyncing a new blob")?;
            file.persist(&dest)
                .map_err(|e| e.error)
                .with_context(|| format!("moving a new blob to {}", dest.display()))?;
            // Make the rename durable.
            if let Ok(dir) = fs::File::open(&self.blobs_dir) {
                let _ = dir.sync_all();
            }
        }
        Ok(Blob {
            digest,
            size: self.size,
        })
    }
}

impl Store {
    fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs/sha256")
    }

    /// Starts writing a blob (see [`BlobWriter`]). Writing stops with an error when the
    /// filesystem drops under the free-space floor ([`super::space`]).
    pub fn blob_writer(&self) -> Result<BlobWriter> {
        let space =
            super::space::SpaceGuard::new(&self.tmp_dir(), super::space::Limits::current()?)
                .context("writing a blob")?;
        let file = tempfile::Builder::new()
            .prefix("blob.")
            .tempfile_in(self.tmp_dir())
            .with_context(|| format!("creating a temp file in {}", self.tmp_dir().display()))?;
        Ok(BlobWriter {
            file: Some(file),
            hasher: Sha256::new(),
            size: 0,
            blobs_dir: self.blobs_dir(),
            space,
        })
    }

    /// Stores the bytes read from `reader`, verified against `expected` when given.
    pub fn put_blob(&self, mut reader: impl Read, expected: Option<&str>) -> Result<Blob> {
        if let Some(expected) = expected {
            digest_hex(expected)?;
            if let Ok(size) = fs::metadata(self.blob_path(expected)?).map(|m| m.len()) {
                // Already present; still consume nothing and trust the content address.
                return Ok(Blob {
                    digest: expected.to_string(),
                    size,
                });
            }
        }
        let mut writer = self.blob_writer()?;
        io::copy(&mut reader, &mut writer).context("writing a blob")?;
        writer.commit(expected)
    }

    /// Moves the file at `path` (which must be in [`Store::tmp_dir`] or at least on the same
    /// filesystem; it is copied otherwise) into the store after hashing it and checking it
    /// against `expected` when given. The file is gone afterwards in every case but errors.
    pub fn put_blob_file(&self, path: &std::path::Path, expected: Option<&str>) -> Result<Blob> {
        let mut file =
            fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let mut hasher = Sha256::new();
        let size = io::copy(&mut file, &mut HashInto(&mut hasher))
            .with_context(|| format!("reading {}", path.display()))?;
        let digest = format!("sha256:{}", hex::encode(hasher.finalize()));
        if let Some(expected) = expected {
            if expected != digest {
                bail!(
                    "{}: content does not match its digest: expected {expected}, got {digest}; \
                     the archive is corrupt",
                    path.display()
                );
            }
        }
        let dest = self.blob_path(&digest)?;
        if dest.exists() {
            let _ = fs::remove_file(path);
        } else {
            file.sync_all().context("fsyncing a blob")?;
            if fs::rename(path, &dest).is_err() {
                // Another filesystem: copy through a temp file.
                let blob = self.put_blob(fs::File::open(path)?, Some(&digest))?;
                let _ = fs::remove_file(path);
                return Ok(blob);
            }
            if let Ok(dir) = fs::File::open(self.blobs_dir()) {
                let _ = dir.sync_all();
            }
        }
        Ok(Blob { digest, size })
    }

    /// Stores `bytes`.
    pub fn put_blob_bytes(&self, bytes: &[u8]) -> Result<Blob> {
        self.put_blob(bytes, None)
    }

    /// Whether the blob is present.
    pub fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).is_ok_and(|p| p.exists())
    }

    /// Where the blob lives (whether or not it exists). Errors on a malformed digest.
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        Ok(self.blobs_dir().join(digest_hex(digest)?))
    }

    /// Opens a blob for reading (a remote blob is fetched first: `store::remote`).
    pub fn open_blob(&self, digest: &str) -> Result<fs::File> {
        let path = self.blob_path(digest)?;
        match fs::File::open(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && self.ensure_blob(digest)? => {
                fs::File::open(&path)
            }
            other => other,
        }
        .with_context(|| format!("blob {digest} is missing from the store"))
    }

    /// Reads a whole (small) blob: manifests, configs (a remote blob is fetched first).
    pub fn read_blob(&self, digest: &str) -> Result<Vec<u8>> {
        let path = self.blob_path(digest)?;
        match fs::read(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && self.ensure_blob(digest)? => {
                fs::read(&path)
            }
            other => other,
        }
        .with_context(|| format!("blob {digest} is missing from the store"))
    }

    /// Size of a blob, if present.
    pub fn blob_size(&self, digest: &str) -> Option<u64> {
        fs::metadata(self.blob_path(digest).ok()?)
            .ok()
            .map(|m| m.len())
    }
}

struct HashInto<'a>(&'a mut Sha256);

impl Write for HashInto<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
