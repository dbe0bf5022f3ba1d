//! What the registry client needs from the local store, as a trait so the protocol code does
//! not depend on how the store keeps things.

use std::fs::File;
use std::io::Read;

use anyhow::{Context, Result};
use rusqlite::{params, OptionalExtension};

use crate::reference::Reference;

pub trait LocalStore: Sync {
    /// Makes sure the registry's own tables exist. Every entry point of the registry module calls
    /// it first, so callers (the build engine's FROM, the CLI) may pass any opened store.
    fn prepare(&self) -> Result<()> {
        Ok(())
    }
    fn has_blob(&self, digest: &str) -> bool;
    /// Stores the bytes of `reader` as blob `expected`; it lands only if the bytes hash to
    /// `expected` (temp file, fsync, verify, rename), and nothing is left behind otherwise.
    fn put_blob(&self, reader: &mut dyn Read, expected: &str) -> Result<()>;
    fn open_blob(&self, digest: &str) -> Result<File>;
    fn blob_size(&self, digest: &str) -> Option<u64>;
    fn read_blob(&self, digest: &str) -> Result<Vec<u8>>;
    /// Stores `manifest_bytes` exactly (its config and layers are in the store already) and
    /// names it `name` (normalised, `docker.io/library/busybox:latest`); returns its digest.
    fn add_image(&self, name: &str, manifest_bytes: &[u8]) -> Result<String>;
    /// The manifest digest of the image called `name` exactly.
    fn image(&self, name: &str) -> Result<Option<String>>;
    /// Stores an index (its manifests that are in the store are recorded) and names it `name`.
    fn add_index(&self, name: &str, index_bytes: &[u8]) -> Result<String>;
    /// Stores a manifest without a name (a platform of an index stored next).
    fn add_unnamed(&self, manifest_bytes: &[u8]) -> Result<String>;
    /// The manifest digest of the image called `name` for `platform`: an index's manifest for
    /// it (`None` when the index lacks it here), or a single manifest whatever its platform.
    fn image_for(&self, name: &str, platform: &super::Platform) -> Result<Option<String>> {
        let _ = platform;
        self.image(name)
    }
    /// The manifest (or index) digest of a local image as the user names it (name, ID, digest).
    fn resolve_image(&self, spec: &str) -> Result<String>;
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
    /// Remembers that the local image `stored_digest` was pushed as `name` and the registry has
    /// it as `pushed_digest` (docker's RepoDigests after a push).
    fn record_push(&self, name: &str, stored_digest: &str, pushed_digest: &str) -> Result<()>;
    /// Remembers that `registry/repository` holds these blobs (after a push).
    fn record_blob_sources(&self, registry: &str, repository: &str, blobs: &[String])
        -> Result<()>;
}

const MIGRATIONS: &[&str] = &[
    "
    -- What each pulled name resolved to at the registry (an index digest for a multi-platform
    -- image): the build cache keys FROM on it.
    CREATE TABLE registry_pulls (
        name TEXT PRIMARY KEY,
        resolved TEXT NOT NULL,
        pulled INTEGER NOT NULL
    );
    -- Repositories known to hold a blob, for cross-repository mounts on push.
    CREATE TABLE registry_blob_sources (
        blob TEXT NOT NULL,
        registry TEXT NOT NULL,
        repository TEXT NOT NULL,
        PRIMARY KEY (blob, registry, repository)
    );
",
    "
    -- What each push of a local image gave at the registry: the manifest digest there differs
    -- from the stored one (compressed layers), and is the one `inspect`'s RepoDigests shows.
    CREATE TABLE registry_pushes (
        name TEXT NOT NULL,
        stored TEXT NOT NULL,
        pushed TEXT NOT NULL,
        PRIMARY KEY (name, stored)
    );
",
];

/// Opens the store with the registry's tables.
pub fn open_store(root: &std::path::Path) -> Result<crate::store::Store> {
    let store = crate::store::Store::open(root)?;
    store.migrate("registry", MIGRATIONS)?;
    Ok(store)
}

fn parse_name(name: &str) -> Result<Reference> {
    Reference::parse(name).with_context(|| format!("image name {name:?}"))
}

impl LocalStore for crate::store::Store {
    fn prepare(&self) -> Result<()> {
        self.migrate("registry", MIGRATIONS)
    }

    fn has_blob(&self, digest: &str) -> bool {
        crate::store::Store::has_blob(self, digest)
    }

    fn put_blob(&self, reader: &mut dyn Read, expected: &str) -> Result<()> {
        crate::store::Store::put_blob(self, reader, Some(expected)).map(|_| ())
    }

    fn open_blob(&self, digest: &str) -> Result<File> {
        crate::store::Store::open_blob(self, digest)
    }

    fn blob_size(&self, digest: &str) -> Option<u64> {
        crate::store::Store::blob_size(self, digest)
    }

    fn read_blob(&self, digest: &str) -> Result<Vec<u8>> {
        crate::store::Store::read_blob(self, digest)
    }

    fn add_image(&self, name: &str, manifest_bytes: &[u8]) -> Result<String> {
        self.add_manifest_with_names(manifest_bytes, &[parse_name(name)?])
    }

    fn image(&self, name: &str) -> Result<Option<String>> {
        Ok(crate::store::Store::image(self, &parse_name(name)?)?.map(|r| r.manifest_digest))
    }

    fn add_index(&self, name: &str, index_bytes: &[u8]) -> Result<String> {
        self.add_index_with_names(index_bytes, &[parse_name(name)?])
    }

    fn add_unnamed(&self, manifest_bytes: &[u8]) -> Result<String> {
        self.add_manifest(manifest_bytes)
    }

    fn image_for(&self, name: &str, platform: &super::Platform) -> Result<Option<String>> {
        let Some(rec) = crate::store::Store::image(self, &parse_name(name)?)? else {
            return Ok(None);
        };
        match &rec.index {
            Some(index) => Ok(index.find(platform).map(|e| e.manifest_digest.clone())),
            None => Ok(Some(rec.manifest_digest)),
        }
    }

    fn resolve_image(&self, spec: &str) -> Result<String> {
        Ok(self.resolve(spec)?.stored_digest().to_string())
    }

    fn record_pull(
        &self,
        name: &str,
        resolved_digest: &str,
        registry: &str,
        repository: &str,
        blobs: &[String],
    ) -> Result<()> {
        self.transaction(|tx| {
            tx.execute(
                "INSERT OR REPLACE INTO registry_pulls (name, resolved, pulled) VALUES (?1, ?2, ?3)",
                params![name, resolved_digest, chrono::Utc::now().timestamp()],
            )?;
            for b in blobs {
                tx.execute(
                    "INSERT OR IGNORE INTO registry_blob_sources (blob, registry, repository) VALUES (?1, ?2, ?3)",
                    params![b, registry, repository],
                )?;
            }
            Ok(())
        })
    }

    fn record_push(&self, name: &str, stored_digest: &str, pushed_digest: &str) -> Result<()> {
        self.with_conn(|c| {
            c.execute(
                "INSERT OR REPLACE INTO registry_pushes (name, stored, pushed) VALUES (?1, ?2, ?3)",
                params![name, stored_digest, pushed_digest],
            )?;
            Ok(())
        })
    }

    fn pulled_digest(&self, name: &str) -> Result<Option<String>> {
        self.with_conn(|c| {
            Ok(c.query_row(
                "SELECT resolved FROM registry_pulls WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .optional()?)
        })
    }

    fn blob_sources(&self, digest: &str, registry: &str) -> Result<Vec<String>> {
        self.with_conn(|c| {
            let mut stmt = c.prepare(
                "SELECT repository FROM registry_blob_sources WHERE blob = ?1 AND registry = ?2 ORDER BY repository",
            )?;
            let rows = stmt
                .query_map(params![digest, registry], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
    }

    fn record_blob_sources(
        &self,
        registry: &str,
        repository: &str,
        blobs: &[String],
    ) -> Result<()> {
        self.transaction(|tx| {
            for b in blobs {
                tx.execute(
                    "INSERT OR IGNORE INTO registry_blob_sources (blob, registry, repository) VALUES (?1, ?2, ?3)",
                    params![b, registry, repository],
                )?;
            }
            Ok(())
        })
    }
}
