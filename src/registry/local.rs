//! What the registry client needs from the local store, as a trait so the protocol code does
//! not depend on how the store keeps things.

use std::fs::File;
use std::io::Read;

use anyhow::Result;

pub trait LocalStore: Sync {
    fn has_blob(&self, digest: &str) -> bool;
    /// Stores the bytes of `reader` as blob `expected`; it lands only if the bytes hash to
    /// `expected` (temp file, fsync, verify, rename), and nothing is left behind otherwise.
    fn put_blob(&self, reader: &mut dyn Read, expected: &str) -> Result<()>;
    fn open_blob(&self, digest: &str) -> Result<File>;
    fn blob_size(&self, digest: &str) -> Option<u64>;
    fn read_blob(&self, digest: &str) -> Result<Vec<u8>>;
    /// Names `name` (normalised, `docker.io/library/busybox:latest`) the image whose manifest is
    /// `manifest_digest`; its config and layers are in the store already.
    fn set_image(&self, name: &str, manifest_digest: &str) -> Result<()>;
    /// The manifest digest of the image called `name`.
    fn image(&self, name: &str) -> Result<Option<String>>;
    /// Remembers what a pull of `name` resolved to at the registry (an index's digest for a
    /// multi-platform image), and that these blobs exist in `registry/repository`.
    fn record_pull(
        &self,
        name: &str,
        resolved_digest: &str,
        registry: &str,
        repository: &str,
        blobs: &[String],
    ) -> Result<()>;
    /// The digest the last pull of `name` resolved to.
    fn pulled_digest(&self, name: &str) -> Result<Option<String>>;
    /// Repositories on `registry` known to hold `digest`, for cross-repository mounts.
    fn blob_sources(&self, digest: &str, registry: &str) -> Result<Vec<String>>;
    /// Remembers that `registry/repository` holds these blobs (after a push).
    fn record_blob_sources(&self, registry: &str, repository: &str, blobs: &[String])
        -> Result<()>;
}

/// A stand-in store (blobs under `ROOT/blobs/sha256`, names in `ROOT/registry-state.json`)
/// until `store::Store` lands; replaced by the real store's implementation of [`LocalStore`].
pub struct DirStore {
    root: std::path::PathBuf,
    state: std::sync::Mutex<()>,
}

#[derive(Default, serde::Serialize, serde::Deserialize)]
struct DirState {
    images: std::collections::BTreeMap<String, String>,
    pulls: std::collections::BTreeMap<String, String>,
    sources: std::collections::BTreeMap<String, Vec<String>>,
}

impl DirStore {
    pub fn open(root: &std::path::Path) -> Result<DirStore> {
        std::fs::create_dir_all(root.join("blobs/sha256"))?;
        std::fs::create_dir_all(root.join("tmp"))?;
        Ok(DirStore {
            root: root.to_path_buf(),
            state: std::sync::Mutex::new(()),
        })
    }

    fn path(&self, digest: &str) -> Result<std::path::PathBuf> {
        let hex = digest
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| anyhow::anyhow!("invalid digest {digest:?}"))?;
        Ok(self.root.join("blobs/sha256").join(hex))
    }

    fn update(&self, f: impl FnOnce(&mut DirState)) -> Result<()> {
        let _guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let path = self.root.join("registry-state.json");
        let mut state: DirState = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)?,
            Err(_) => DirState::default(),
        };
        f(&mut state);
        let tmp = tempfile::NamedTempFile::new_in(self.root.join("tmp"))?;
        std::fs::write(tmp.path(), serde_json::to_vec(&state)?)?;
        tmp.persist(&path)?;
        Ok(())
    }

    fn read_state(&self) -> Result<DirState> {
        match std::fs::read(self.root.join("registry-state.json")) {
            Ok(b) => Ok(serde_json::from_slice(&b)?),
            Err(_) => Ok(DirState::default()),
        }
    }
}

impl LocalStore for DirStore {
    fn has_blob(&self, digest: &str) -> bool {
        self.path(digest).is_ok_and(|p| p.exists())
    }

    fn put_blob(&self, reader: &mut dyn Read, expected: &str) -> Result<()> {
        use sha2::Digest as _;
        use std::io::Write as _;
        let dest = self.path(expected)?;
        let mut tmp = tempfile::NamedTempFile::new_in(self.root.join("tmp"))?;
        let mut hasher = sha2::Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            tmp.write_all(&buf[..n])?;
        }
        let got = format!("sha256:{}", hex::encode(hasher.finalize()));
        if got != expected {
            anyhow::bail!("content does not match its digest: expected {expected}, got {got}");
        }
        tmp.as_file().sync_all()?;
        tmp.persist(dest)?;
        Ok(())
    }

    fn open_blob(&self, digest: &str) -> Result<File> {
        Ok(File::open(self.path(digest)?)?)
    }

    fn blob_size(&self, digest: &str) -> Option<u64> {
        std::fs::metadata(self.path(digest).ok()?)
            .ok()
            .map(|m| m.len())
    }

    fn read_blob(&self, digest: &str) -> Result<Vec<u8>> {
        Ok(std::fs::read(self.path(digest)?)?)
    }

    fn set_image(&self, name: &str, manifest_digest: &str) -> Result<()> {
        self.update(|s| {
            s.images
                .insert(name.to_string(), manifest_digest.to_string());
        })
    }

    fn image(&self, name: &str) -> Result<Option<String>> {
        Ok(self.read_state()?.images.get(name).cloned())
    }

    fn record_pull(
        &self,
        name: &str,
        resolved_digest: &str,
        registry: &str,
        repository: &str,
        blobs: &[String],
    ) -> Result<()> {
        self.update(|s| {
            s.pulls
                .insert(name.to_string(), resolved_digest.to_string());
        })?;
        self.record_blob_sources(registry, repository, blobs)
    }

    fn pulled_digest(&self, name: &str) -> Result<Option<String>> {
        Ok(self.read_state()?.pulls.get(name).cloned())
    }

    fn blob_sources(&self, digest: &str, registry: &str) -> Result<Vec<String>> {
        let prefix = format!("{registry}/");
        Ok(self
            .read_state()?
            .sources
            .get(digest)
            .map(|v| {
                v.iter()
                    .filter_map(|s| s.strip_prefix(&prefix).map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    }

    fn record_blob_sources(
        &self,
        registry: &str,
        repository: &str,
        blobs: &[String],
    ) -> Result<()> {
        let source = format!("{registry}/{repository}");
        self.update(|s| {
            for b in blobs {
                let v = s.sources.entry(b.clone()).or_default();
                if !v.contains(&source) {
                    v.push(source.clone());
                }
            }
        })
    }
}
