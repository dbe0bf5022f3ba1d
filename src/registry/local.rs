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
