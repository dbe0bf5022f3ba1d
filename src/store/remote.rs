//! Remote blobs: layer blobs an image in the store names but that stay at a registry until
//! something reads them. A build whose every step hit a `--cache-from` cache assembles its image
//! from the cache's descriptors alone; each of its layers is recorded here with where it lives
//! (`source`, the registry's `host/repository`), and the image is stored as if the blob were
//! present. The first reader (`open_blob`, `read_blob`, [`Store::ensure_blob`]: unpacking for
//! `kiln run` or a later build's step, `save`, a push that cannot mount it) fetches it through the
//! hook the command line installs ([`set_fetch_hook`]; the store knows nothing of registries),
//! verified against its digest, after which it is an ordinary blob.

use std::sync::OnceLock;

use anyhow::{Context, Result};
use rusqlite::{params, OptionalExtension};

use super::Store;

pub(super) const MIGRATIONS: &[&str] = &["
    -- Blobs an image names that are still at a registry (`source`: host/repository).
    CREATE TABLE remote_blobs (
        digest TEXT PRIMARY KEY,
        source TEXT NOT NULL,
        media_type TEXT NOT NULL,
        size INTEGER NOT NULL
    );
"];

/// Whether `digest` is a remote blob (inside a transaction).
pub(super) fn is_remote_tx(tx: &rusqlite::Transaction, digest: &str) -> rusqlite::Result<bool> {
    tx.query_row(
        "SELECT 1 FROM remote_blobs WHERE digest = ?1",
        [digest],
        |_| Ok(()),
    )
    .optional()
    .map(|r| r.is_some())
}

/// A blob kept at a registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteBlob {
    pub digest: String,
    /// Where it is: `host/repository` of a registry.
    pub source: String,
    pub media_type: String,
    pub size: u64,
}

/// Fetches a remote blob into the store (verified); installed by the command line.
pub type FetchHook = fn(&Store, &RemoteBlob) -> Result<()>;

static FETCH_HOOK: OnceLock<FetchHook> = OnceLock::new();

/// Installs the function that fetches remote blobs; the first one installed wins.
pub fn set_fetch_hook(hook: FetchHook) -> bool {
    FETCH_HOOK.set(hook).is_ok()
}

impl Store {
    /// Records that `blob` may be absent here and is fetched from its source when read.
    pub fn record_remote_blob(&self, blob: &RemoteBlob) -> Result<()> {
        self.with_conn(|conn| {
            conn.execute(
                "INSERT OR REPLACE INTO remote_blobs (digest, source, media_type, size)
                 VALUES (?1, ?2, ?3, ?4)",
                params![blob.digest, blob.source, blob.media_type, blob.size as i64],
            )?;
            Ok(())
        })
    }

    /// Where the blob `digest` is kept, when it is a remote blob.
    pub fn remote_blob(&self, digest: &str) -> Result<Option<RemoteBlob>> {
        self.with_conn(|conn| {
            Ok(conn
                .query_row(
                    "SELECT source, media_type, size FROM remote_blobs WHERE digest = ?1",
                    [digest],
                    |row| {
                        Ok(RemoteBlob {
                            digest: digest.to_string(),
                            source: row.get(0)?,
                            media_type: row.get(1)?,
                            size: row.get::<_, i64>(2)? as u64,
                        })
                    },
                )
                .optional()?)
        })
    }

    /// Whether the blob is here or can be fetched when read (a remote blob).
    pub fn has_blob_or_remote(&self, digest: &str) -> Result<bool> {
        Ok(self.has_blob(digest) || self.remote_blob(digest)?.is_some())
    }

    /// Makes the blob present: nothing to do when it is here, a fetch when it is a remote blob.
    /// Returns false when it is neither.
    pub fn ensure_blob(&self, digest: &str) -> Result<bool> {
        if self.has_blob(digest) {
            return Ok(true);
        }
        let Some(remote) = self.remote_blob(digest)? else {
            return Ok(false);
        };
        let hook = FETCH_HOOK.get().with_context(|| {
            format!(
                "blob {digest} is kept at {} and this program cannot fetch it",
                remote.source
            )
        })?;
        hook(self, &remote)
            .with_context(|| format!("fetching the layer {digest} from {}", remote.source))?;
        Ok(self.has_blob(digest))
    }
}
