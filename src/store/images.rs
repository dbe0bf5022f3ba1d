//! Images in the store: names -> manifest digests, the manifests' blobs (for garbage collection),
//! and layer records (compressed digest -> DiffID).

use std::collections::BTreeSet;

use anyhow::{bail, Context, Result};
use oci_spec::image::{
    Descriptor, ImageConfiguration, ImageManifest, ImageManifestBuilder, MediaType,
};
use rusqlite::{params, OptionalExtension, Transaction};

use super::Store;
use crate::platform::Platform;
use crate::reference::Reference;

pub(super) const MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE images (
        name TEXT PRIMARY KEY,          -- full normalised reference
        manifest TEXT NOT NULL,
        updated INTEGER NOT NULL
    );
    CREATE INDEX images_manifest ON images(manifest);
    CREATE TABLE manifests (
        digest TEXT PRIMARY KEY,
        config TEXT NOT NULL,
        size INTEGER NOT NULL,          -- config + layers, compressed
        created INTEGER NOT NULL        -- unix seconds, from the config
    );
    CREATE INDEX manifests_config ON manifests(config);
    CREATE TABLE manifest_blobs (
        manifest TEXT NOT NULL,
        blob TEXT NOT NULL,
        PRIMARY KEY (manifest, blob)
    );
    CREATE INDEX manifest_blobs_blob ON manifest_blobs(blob);
    CREATE TABLE layers (
        digest TEXT PRIMARY KEY,        -- the blob as stored (compressed or not)
        diff_id TEXT NOT NULL,          -- sha256 of the uncompressed tar
        media_type TEXT NOT NULL,
        size INTEGER NOT NULL
    );
    CREATE INDEX layers_diff_id ON layers(diff_id);
    -- Other modules pin blobs they need (e.g. the build cache): never garbage-collected.
    CREATE TABLE blob_refs (
        owner TEXT NOT NULL,
        blob TEXT NOT NULL,
        PRIMARY KEY (owner, blob)
    );
    -- Users of an image (the runner's containers): `rmi` refuses these images unless forced.
    CREATE TABLE image_uses (
        manifest TEXT NOT NULL,
        user TEXT NOT NULL,
        PRIMARY KEY (manifest, user)
    );
",
    "
    -- Layers a build made, kept unpacked instead of as a blob: the content of the layer whose
    -- descriptor digest is `diff_id` (media type application/vnd.oci.image.layer.v1.tar) is the
    -- unpacked snapshot `snapshots/layers/<hex of diff_id>/`; its tar is written again from
    -- there, through the entry list in blob `changes`, when something needs a blob.
    CREATE TABLE unpacked_layers (
        diff_id TEXT PRIMARY KEY,
        size INTEGER NOT NULL,          -- bytes of the uncompressed tar
        changes TEXT NOT NULL,          -- blob: the layer's entries (see snapshot::built)
        source_date_epoch INTEGER       -- the mtime clamp the tar was written with, if any
    );
    CREATE INDEX unpacked_layers_changes ON unpacked_layers(changes);
",
];

/// Where hashing an unpacked layer's tar can resume (`oci::tar::layer::TarCheckpoint`, encoded),
/// for a layer a build made whose directory is the tar it was hashed from. Forgotten with the
/// layer's `unpacked_layers` row.
pub(super) const RESUME_MIGRATIONS: &[&str] = &["
    CREATE TABLE layer_resume (
        diff_id TEXT PRIMARY KEY,
        checkpoints BLOB NOT NULL
    );
"];

/// Image indexes (multi-platform images), kept in their own module's migrations: a name in
/// `images` points at a manifest or at an index; an index lists its manifests with their
/// platforms. Manifests an index lists are kept while it exists, and are not dangling images.
pub(super) const INDEX_MIGRATIONS: &[&str] = &["
    CREATE TABLE indexes (
        digest TEXT PRIMARY KEY,
        created INTEGER NOT NULL
    );
    CREATE TABLE index_manifests (
        idx TEXT NOT NULL,
        manifest TEXT NOT NULL,
        platform TEXT NOT NULL,         -- os/arch[/variant], normalised
        position INTEGER NOT NULL,
        PRIMARY KEY (idx, manifest)
    );
    CREATE INDEX index_manifests_manifest ON index_manifests(manifest);
"];

/// An image as `kiln images` lists it: one row per name, or a nameless (dangling) manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRecord {
    pub name: Option<Reference>,
    pub manifest_digest: String,
    /// The image ID (docker shows its first 12 hex digits).
    pub config_digest: String,
    /// Config + layers as stored (compressed), in bytes.
    pub size: u64,
    /// Unix seconds, from the config's `created` (0 when absent).
    pub created: i64,
    /// When the name (or digest) is an image index: the index. `manifest_digest` and
    /// `config_digest` are then its manifest for this machine's platform (else its first), which
    /// is what commands that take one image (run, history, docker-format save) use.
    pub index: Option<IndexRecord>,
}

/// An image index in the store: its digest and its manifests with their platforms, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexRecord {
    pub digest: String,
    pub manifests: Vec<IndexEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    pub manifest_digest: String,
    pub config_digest: String,
    pub platform: Platform,
    pub size: u64,
    pub created: i64,
}

impl IndexRecord {
    pub fn platforms(&self) -> Vec<Platform> {
        self.manifests.iter().map(|m| m.platform.clone()).collect()
    }

    /// The manifest for `want`, if the index has it.
    pub fn find(&self, want: &Platform) -> Option<&IndexEntry> {
        self.manifests.iter().find(|m| want.matches(&m.platform))
    }

    /// `linux/amd64, linux/arm64`, for messages.
    pub fn platform_list(&self) -> String {
        self.manifests
            .iter()
            .map(|m| m.platform.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl ImageRecord {
    /// What names point at: the index digest for a multi-platform image, else the manifest.
    pub fn stored_digest(&self) -> &str {
        self.index
            .as_ref()
            .map_or(self.manifest_digest.as_str(), |i| i.digest.as_str())
    }

    /// The platforms of the image: an index's, or `None` for a single manifest.
    pub fn platforms(&self) -> Option<Vec<Platform>> {
        self.index.as_ref().map(IndexRecord::platforms)
    }

    /// This image for one platform: an index's manifest for `want` (an error naming the
    /// platforms it has when it lacks it); a single manifest as it is (its config's platform is
    /// checked by the caller, which has the config).
    pub fn for_platform(&self, want: &Platform) -> Result<ImageRecord> {
        let Some(index) = &self.index else {
            return Ok(self.clone());
        };
        let entry = index.find(want).with_context(|| {
            format!(
                "image {} has no manifest for platform {want} (it has: {})",
                self.name
                    .as_ref()
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| index.digest.clone()),
                index.platform_list()
            )
        })?;
        Ok(ImageRecord {
            manifest_digest: entry.manifest_digest.clone(),
            config_digest: entry.config_digest.clone(),
            size: entry.size,
            created: entry.created,
            ..self.clone()
        })
    }

    /// The ID docker prints: the first 12 hex digits of the config digest.
    pub fn short_id(&self) -> &str {
        let hex = self.config_digest.trim_start_matches("sha256:");
        &hex[..hex.len().min(12)]
    }
}

/// A layer blob and its DiffID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerRecord {
    pub digest: String,
    pub diff_id: String,
    pub media_type: String,
    pub size: u64,
}

/// A layer a build made, whose content is its unpacked snapshot (no blob): see
/// [`Store::record_unpacked_layer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackedLayerRecord {
    /// The DiffID, which is also the digest of its (uncompressed) descriptor.
    pub diff_id: String,
    /// Bytes of the uncompressed tar.
    pub size: u64,
    /// The blob holding the layer's entry list.
    pub changes: String,
    pub source_date_epoch: Option<i64>,
}

/// The media type of an uncompressed layer, the descriptor of an unpacked layer.
pub const UNCOMPRESSED_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

/// What [`Store::commit_image`] wrote.
#[derive(Debug, Clone)]
pub struct CommittedImage {
    pub manifest_digest: String,
    pub manifest: ImageManifest,
    pub config_digest: String,
    pub manifest_size: u64,
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

impl Store {
    /// Writes `config` and a manifest over `layers` (blobs already in the store, in order, each
    /// with its DiffID in `config.rootfs.diff_ids`), then points every name in `names` at it, in
    /// one transaction. This is what the build engine, import and pull call.
    pub fn commit_image(
        &self,
        config: &ImageConfiguration,
        layers: &[Descriptor],
        names: &[Reference],
    ) -> Result<CommittedImage> {
        if config.rootfs().diff_ids().len() != layers.len() {
            bail!(
                "image config lists {} layer DiffIDs but the manifest has {} layers",
                config.rootfs().diff_ids().len(),
                layers.len()
            );
        }
        let config_bytes =
            crate::digest::canonical_json(config).context("serialising the image config")?;
        self.commit_config_bytes(&config_bytes, layers, names)
    }

    /// [`Store::commit_image`] for a config already serialised (one that keeps fields the OCI
    /// type does not model, as `kiln commit` writes): the config blob, a manifest over
    /// `layers`, `names` pointed at it.
    pub fn commit_config_bytes(
        &self,
        config_bytes: &[u8],
        layers: &[Descriptor],
        names: &[Reference],
    ) -> Result<CommittedImage> {
        let config_blob = self.put_blob_bytes(config_bytes)?;
        let manifest = ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageManifest)
            .config(Descriptor::new(
                MediaType::ImageConfig,
                config_blob.size,
                config_blob
                    .digest
                    .parse::<oci_spec::image::Digest>()
                    .context("config digest")?,
            ))
            .layers(layers.to_vec())
            .build()
            .context("building the image manifest")?;
        let manifest_bytes =
            crate::digest::canonical_json(&manifest).context("serialising the manifest")?;
        let manifest_digest = self.add_manifest_with_names(&manifest_bytes, names)?;
        Ok(CommittedImage {
            manifest_digest,
            manifest,
            config_digest: config_blob.digest,
            manifest_size: manifest_bytes.len() as u64,
        })
    }

    /// Stores an image manifest exactly as given (so its digest is kept, e.g. on load or pull)
    /// and records its blobs and layers. The config and layer blobs must already be stored.
    /// Returns the manifest digest.
    pub fn add_manifest(&self, manifest_bytes: &[u8]) -> Result<String> {
        self.add_manifest_with_names(manifest_bytes, &[])
    }

    /// [`Store::add_manifest`], then points `names` at it, in one transaction.
    pub fn add_manifest_with_names(
        &self,
        manifest_bytes: &[u8],
        names: &[Reference],
    ) -> Result<String> {
        let manifest: ImageManifest = serde_json::from_slice(manifest_bytes)
            .context("parsing an image manifest: not valid OCI/docker manifest JSON")?;
        let config_digest = manifest.config().digest().to_string();
        let config_bytes = self
            .read_blob(&config_digest)
            .context("the manifest's config")?;
        let config: ImageConfiguration = serde_json::from_slice(&config_bytes)
            .with_context(|| format!("parsing image config {config_digest}"))?;
        let diff_ids = config.rootfs().diff_ids();
        if diff_ids.len() != manifest.layers().len() {
            bail!(
                "image config {config_digest} lists {} layer DiffIDs but the manifest has {} layers",
                diff_ids.len(),
                manifest.layers().len()
            );
        }
        let mut size = config_bytes.len() as u64;
        for layer in manifest.layers() {
            let digest = layer.digest().to_string();
            if !self.has_layer_content(&digest)? && self.remote_blob(&digest)?.is_none() {
                bail!("layer {digest} is missing from the store");
            }
            size += self.blob_size(&digest).unwrap_or(layer.size());
        }
        let created = config
            .created()
            .as_deref()
            .and_then(|c| chrono::DateTime::parse_from_rfc3339(c).ok())
            .map(|t| t.timestamp())
            .unwrap_or(0);
        let manifest_blob = self.put_blob_bytes(manifest_bytes)?;
        let digest = manifest_blob.digest.clone();
        self.transaction(|tx| {
            tx.execute(
                "INSERT OR IGNORE INTO manifests (digest, config, size, created)
                 VALUES (?1, ?2, ?3, ?4)",
                params![digest, config_digest, size as i64, created],
            )?;
            tx.execute(
                "INSERT OR IGNORE INTO manifest_blobs (manifest, blob) VALUES (?1, ?2)",
                params![digest, config_digest],
            )?;
            for (layer, diff_id) in manifest.layers().iter().zip(diff_ids) {
                let layer_digest = layer.digest().to_string();
                tx.execute(
                    "INSERT OR IGNORE INTO manifest_blobs (manifest, blob) VALUES (?1, ?2)",
                    params![digest, layer_digest],
                )?;
                tx.execute(
                    "INSERT OR IGNORE INTO layers (digest, diff_id, media_type, size)
                     VALUES (?1, ?2, ?3, ?4)",
                    params![
                        layer_digest,
                        diff_id,
                        layer.media_type().to_string(),
                        layer.size() as i64
                    ],
                )?;
            }
            // A concurrent rmi may have collected a blob between our checks and this
            // transaction; check again under the write lock.
            for blob in std::iter::once(&config_digest).chain(
                manifest
                    .layers()
                    .iter()
                    .map(|l| l.digest().to_string())
                    .collect::<Vec<_>>()
                    .iter(),
            ) {
                if !self.has_blob(blob)
                    && !unpacked_tx(tx, blob)?
                    && !super::remote::is_remote_tx(tx, blob)?
                {
                    bail!("blob {blob} was removed while the image was being stored; try again");
                }
            }
            for name in names {
                set_name_tx(tx, name, &digest)?;
            }
            Ok(())
        })?;
        Ok(digest)
    }

    /// Points `name` at a stored manifest. The manifest the name pointed to before (if any) stays
    /// in the store without a name (docker's `<none>`).
    pub fn set_name(&self, name: &Reference, manifest_digest: &str) -> Result<()> {
        self.transaction(|tx| set_name_tx(tx, name, manifest_digest))
    }

    /// Records the layer blob `digest` with its DiffID (done by [`Store::commit_image`] too).
    pub fn record_layer(&self, layer: &LayerRecord) -> Result<()> {
        self.with_conn(|conn| {
            conn.execute(
                "INSERT OR IGNORE INTO layers (digest, diff_id, media_type, size)
                 VALUES (?1, ?2, ?3, ?4)",
                params![
                    layer.digest,
                    layer.diff_id,
                    layer.media_type,
                    layer.size as i64
                ],
            )?;
            Ok(())
        })
    }

    /// Records a layer a build made and keeps unpacked: its content is the directory
    /// `snapshots/layers/<hex of diff_id>/` (which must be in place), its entry list the blob
    /// `changes` (already stored). Also recorded as a layer (digest = DiffID, uncompressed).
    pub fn record_unpacked_layer(&self, layer: &UnpackedLayerRecord) -> Result<()> {
        self.record_unpacked_layer_resumable(layer, None)
    }

    /// [`Store::record_unpacked_layer`], with the checkpoints its tar's hashing can resume from
    /// (replacing any the DiffID had: they describe the directory just made).
    pub fn record_unpacked_layer_resumable(
        &self,
        layer: &UnpackedLayerRecord,
        checkpoints: Option<&[u8]>,
    ) -> Result<()> {
        self.transaction(|tx| {
            if let Some(cps) = checkpoints {
                tx.execute(
                    "INSERT OR REPLACE INTO layer_resume (diff_id, checkpoints) VALUES (?1, ?2)",
                    params![layer.diff_id, cps],
                )?;
            }
            tx.execute(
                "INSERT OR IGNORE INTO unpacked_layers (diff_id, size, changes, source_date_epoch)
                 VALUES (?1, ?2, ?3, ?4)",
                params![
                    layer.diff_id,
                    layer.size as i64,
                    layer.changes,
                    layer.source_date_epoch
                ],
            )?;
            tx.execute(
                "INSERT OR IGNORE INTO layers (digest, diff_id, media_type, size)
                 VALUES (?1, ?1, ?2, ?3)",
                params![layer.diff_id, UNCOMPRESSED_LAYER, layer.size as i64],
            )?;
            Ok(())
        })
    }

    /// The checkpoints recorded with the unpacked layer `diff_id` (see `RESUME_MIGRATIONS`).
    pub fn layer_checkpoints(&self, diff_id: &str) -> Result<Option<Vec<u8>>> {
        self.with_conn(|conn| {
            Ok(conn
                .query_row(
                    "SELECT checkpoints FROM layer_resume WHERE diff_id = ?1",
                    [diff_id],
                    |r| r.get(0),
                )
                .optional()?)
        })
    }

    /// The unpacked-layer record of `diff_id`, if a build made that layer and keeps it unpacked.
    pub fn unpacked_layer(&self, diff_id: &str) -> Result<Option<UnpackedLayerRecord>> {
        self.with_conn(|conn| {
            Ok(conn
                .query_row(
                    "SELECT diff_id, size, changes, source_date_epoch FROM unpacked_layers
                     WHERE diff_id = ?1",
                    [diff_id],
                    |row| {
                        Ok(UnpackedLayerRecord {
                            diff_id: row.get(0)?,
                            size: row.get::<_, i64>(1)? as u64,
                            changes: row.get(2)?,
                            source_date_epoch: row.get(3)?,
                        })
                    },
                )
                .optional()?)
        })
    }

    /// Where the unpacked content of a layer lives (the snapshot layout's
    /// `snapshots/layers/<hex>`; `snapshot` owns that directory, the store only removes an
    /// unpacked layer's directory when it collects the layer).
    pub fn unpacked_layer_path(&self, diff_id: &str) -> Result<std::path::PathBuf> {
        Ok(self
            .root
            .join("snapshots/layers")
            .join(crate::digest::digest_hex(diff_id)?))
    }

    /// Whether the layer whose descriptor digest is `digest` has its content here: a blob, or an
    /// unpacked layer whose directory is in place.
    pub fn has_layer_content(&self, digest: &str) -> Result<bool> {
        if self.has_blob(digest) {
            return Ok(true);
        }
        Ok(self.unpacked_layer(digest)?.is_some() && self.unpacked_layer_path(digest)?.is_dir())
    }

    /// Every stored blob of the layer with this DiffID (any compression), present or not.
    pub fn layers_with_diff_id(&self, diff_id: &str) -> Result<Vec<LayerRecord>> {
        self.with_conn(|conn| {
            let mut stmt = conn.prepare(
                "SELECT digest, diff_id, media_type, size FROM layers WHERE diff_id = ?1
                 ORDER BY digest",
            )?;
            let rows = stmt
                .query_map([diff_id], |row| {
                    Ok(LayerRecord {
                        digest: row.get(0)?,
                        diff_id: row.get(1)?,
                        media_type: row.get(2)?,
                        size: row.get::<_, i64>(3)? as u64,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
    }

    /// Records that `blobs` (already stored) belong to the image `manifest` (e.g. the manifest
    /// an export wrote for it): removing the image collects them.
    pub fn attach_blobs(&self, manifest: &str, blobs: &[String]) -> Result<()> {
        self.transaction(|tx| {
            for blob in blobs {
                if !self.has_blob(blob) {
                    bail!("blob {blob} is missing from the store");
                }
                tx.execute(
                    "INSERT OR IGNORE INTO manifest_blobs (manifest, blob) VALUES (?1, ?2)",
                    params![manifest, blob],
                )?;
            }
            Ok(())
        })
    }

    /// The layer record of a blob.
    pub fn layer(&self, digest: &str) -> Result<Option<LayerRecord>> {
        self.query_layer("digest", digest)
    }

    /// A stored layer blob with this DiffID (any compression), if any.
    pub fn layer_by_diff_id(&self, diff_id: &str) -> Result<Option<LayerRecord>> {
        self.query_layer("diff_id", diff_id)
    }

    fn query_layer(&self, column: &str, value: &str) -> Result<Option<LayerRecord>> {
        self.with_conn(|conn| {
            let sql = format!(
                "SELECT digest, diff_id, media_type, size FROM layers WHERE {column} = ?1 LIMIT 1"
            );
            Ok(conn
                .query_row(&sql, [value], |row| {
                    Ok(LayerRecord {
                        digest: row.get(0)?,
                        diff_id: row.get(1)?,
                        media_type: row.get(2)?,
                        size: row.get::<_, i64>(3)? as u64,
                    })
                })
                .optional()?)
        })
    }

    /// The image a name points to (a manifest, or an index).
    pub fn image(&self, name: &Reference) -> Result<Option<ImageRecord>> {
        let (single, index) = self.with_conn(|conn| {
            let single = conn
                .query_row(
                    "SELECT i.name, m.digest, m.config, m.size, m.created
                     FROM images i JOIN manifests m ON m.digest = i.manifest WHERE i.name = ?1",
                    [name.full()],
                    record_from_row,
                )
                .optional()?;
            let index: Option<String> = if single.is_none() {
                conn.query_row(
                    "SELECT i.manifest FROM images i JOIN indexes x ON x.digest = i.manifest
                     WHERE i.name = ?1",
                    [name.full()],
                    |r| r.get(0),
                )
                .optional()?
            } else {
                None
            };
            Ok((single, index))
        })?;
        if single.is_some() {
            return Ok(single);
        }
        match index {
            Some(d) => self.index_image(Some(name.clone()), &d),
            None => Ok(None),
        }
    }

    /// The stored index `digest`, if there is one.
    pub fn index(&self, digest: &str) -> Result<Option<IndexRecord>> {
        self.with_conn(|conn| {
            let exists: bool = conn.query_row(
                "SELECT EXISTS(SELECT 1 FROM indexes WHERE digest = ?1)",
                [digest],
                |r| r.get(0),
            )?;
            if !exists {
                return Ok(None);
            }
            let mut stmt = conn.prepare(
                "SELECT x.manifest, m.config, x.platform, m.size, m.created
                 FROM index_manifests x JOIN manifests m ON m.digest = x.manifest
                 WHERE x.idx = ?1 ORDER BY x.position",
            )?;
            let rows = stmt
                .query_map([digest], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, i64>(4)?,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut manifests = Vec::new();
            for (manifest_digest, config_digest, platform, size, created) in rows {
                manifests.push(IndexEntry {
                    manifest_digest,
                    config_digest,
                    platform: Platform::parse(&platform)?,
                    size: size as u64,
                    created,
                });
            }
            Ok(Some(IndexRecord {
                digest: digest.to_string(),
                manifests,
            }))
        })
    }

    /// An index as an image record: this machine's manifest (else the first) stands for it.
    fn index_image(&self, name: Option<Reference>, digest: &str) -> Result<Option<ImageRecord>> {
        let Some(index) = self.index(digest)? else {
            return Ok(None);
        };
        let host = Platform::host();
        let Some(chosen) = index.find(&host).or(index.manifests.first()).cloned() else {
            bail!("image index {digest} lists no manifests");
        };
        Ok(Some(ImageRecord {
            name,
            manifest_digest: chosen.manifest_digest,
            config_digest: chosen.config_digest,
            size: index.manifests.iter().map(|m| m.size).sum(),
            created: index.manifests.iter().map(|m| m.created).max().unwrap_or(0),
            index: Some(index),
        }))
    }

    /// Stores an image index exactly as given (an OCI index or a docker manifest list) and points
    /// `names` at it, in one transaction. Its entries whose manifests are in the store are
    /// recorded with their platforms (a pulled index may have only some platforms here; storing
    /// it again after pulling another adds that one); at least one must be. Entries without a
    /// platform (attestations) are not images and are left out. Returns the index digest.
    pub fn add_index_with_names(&self, index_bytes: &[u8], names: &[Reference]) -> Result<String> {
        let index: oci_spec::image::ImageIndex = serde_json::from_slice(index_bytes)
            .context("parsing an image index: not valid OCI index JSON")?;
        let mut entries = Vec::new();
        for (i, d) in index.manifests().iter().enumerate() {
            let digest = d.digest().to_string();
            let Some(platform) = d.platform().as_ref().map(|p| {
                Platform::of_config(
                    &p.os().to_string(),
                    &p.architecture().to_string(),
                    p.variant().as_deref(),
                )
            }) else {
                continue;
            };
            entries.push((digest, platform.to_string(), i as i64));
        }
        let index_blob = self.put_blob_bytes(index_bytes)?;
        let digest = index_blob.digest.clone();
        self.transaction(|tx| {
            let mut created = 0i64;
            let mut present = Vec::new();
            for (m, platform, position) in &entries {
                let c: Option<i64> = tx
                    .query_row(
                        "SELECT created FROM manifests WHERE digest = ?1",
                        [m],
                        |r| r.get(0),
                    )
                    .optional()?;
                if let Some(c) = c {
                    created = created.max(c);
                    present.push((m, platform, position));
                }
            }
            if present.is_empty() {
                bail!("none of the index's manifests is in the store");
            }
            let entries = present;
            tx.execute(
                "INSERT OR IGNORE INTO indexes (digest, created) VALUES (?1, ?2)",
                params![digest, created],
            )?;
            for (m, platform, position) in &entries {
                tx.execute(
                    "INSERT OR IGNORE INTO index_manifests (idx, manifest, platform, position)
                     VALUES (?1, ?2, ?3, ?4)",
                    params![digest, m, platform, position],
                )?;
            }
            if !self.has_blob(&digest) {
                bail!("blob {digest} was removed while the index was being stored; try again");
            }
            for name in names {
                set_name_tx(tx, name, &digest)?;
            }
            Ok(())
        })?;
        Ok(digest)
    }

    /// Finds an image as docker's commands do: a name (`busybox` = `busybox:latest`), a
    /// `name@sha256:...`, a manifest digest, or an image ID (config digest) or a unique prefix
    /// of its hex digits.
    /// An image as a Dockerfile names it (`FROM`, `COPY --from`, `RUN --mount=from`): a
    /// reference (`busybox` is `docker.io/library/busybox:latest`), `name@sha256:…`, or a full
    /// `sha256:<64 hex>` image ID (config digest) or manifest digest. Never an ID prefix: in a
    /// Dockerfile `a` is the image `a`, whatever local image's ID starts with `a`.
    pub fn resolve_reference(&self, spec: &str) -> Result<Option<ImageRecord>> {
        if let Ok(r) = Reference::parse(spec) {
            if let Some(rec) = self.image(&r)? {
                return Ok(Some(rec));
            }
            if let Some(d) = r.digest() {
                if let Some(rec) = self.manifest_record(d)? {
                    return Ok(Some(ImageRecord {
                        name: Some(r.clone()),
                        ..rec
                    }));
                }
            }
        }
        if let Some(hex) = spec.strip_prefix("sha256:") {
            if crate::digest::digest_hex(spec).is_ok() {
                if let Some(rec) = self.manifest_record(spec)? {
                    return Ok(Some(rec));
                }
                return Ok(self
                    .list_images()?
                    .into_iter()
                    .find(|r| r.config_digest.strip_prefix("sha256:") == Some(hex)));
            }
        }
        Ok(None)
    }

    /// An image as the command line names it (`run`, `rmi`, `inspect`, `tag`, …): what
    /// `resolve_reference` finds, else, as docker does, a prefix of an image ID (any length, with
    /// or without `sha256:`; an error when it matches several images).
    pub fn resolve(&self, spec: &str) -> Result<ImageRecord> {
        if let Some(rec) = self.resolve_reference(spec)? {
            return Ok(rec);
        }
        let hex = spec.strip_prefix("sha256:").unwrap_or(spec);
        if !hex.is_empty() && hex.len() <= 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            if let Some(rec) = self.manifest_record(&format!("sha256:{hex}"))? {
                return Ok(rec);
            }
            let matches: Vec<ImageRecord> = self
                .list_images()?
                .into_iter()
                .filter(|r| r.config_digest["sha256:".len()..].starts_with(hex))
                .collect();
            let ids: BTreeSet<&str> = matches.iter().map(|r| r.manifest_digest.as_str()).collect();
            match ids.len() {
                0 => {}
                1 => return Ok(matches[0].clone()),
                _ => bail!("image ID prefix {spec:?} is ambiguous: give more digits"),
            }
        }
        bail!("no such image: {spec}")
    }

    fn manifest_record(&self, digest: &str) -> Result<Option<ImageRecord>> {
        let single = self.with_conn(|conn| {
            Ok(conn
                .query_row(
                    "SELECT NULL, digest, config, size, created FROM manifests WHERE digest = ?1",
                    [digest],
                    record_from_row,
                )
                .optional()?)
        })?;
        match single {
            Some(r) => Ok(Some(r)),
            None => self.index_image(None, digest),
        }
    }

    /// Every named image (one row per name; an index is one image) and every manifest or index
    /// without a name (manifests an index lists are not images of their own), newest first.
    pub fn list_images(&self) -> Result<Vec<ImageRecord>> {
        let (mut rows, indexes) = self.with_conn(|conn| {
            let mut stmt = conn.prepare(
                "SELECT i.name, m.digest, m.config, m.size, m.created
                 FROM manifests m LEFT JOIN images i ON i.manifest = m.digest
                 WHERE i.name IS NOT NULL
                    OR NOT EXISTS(SELECT 1 FROM index_manifests x WHERE x.manifest = m.digest)
                 ORDER BY m.created DESC, i.name",
            )?;
            let rows = stmt
                .query_map([], record_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut stmt = conn.prepare(
                "SELECT i.name, x.digest FROM indexes x LEFT JOIN images i ON i.manifest = x.digest",
            )?;
            let indexes = stmt
                .query_map([], |r| Ok((r.get::<_, Option<String>>(0)?, r.get::<_, String>(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok((rows, indexes))
        })?;
        if indexes.is_empty() {
            return Ok(rows);
        }
        for (name, digest) in indexes {
            let name = name.and_then(|n| Reference::parse(&n).ok());
            if let Some(rec) = self.index_image(name, &digest)? {
                rows.push(rec);
            }
        }
        rows.sort_by(|a, b| {
            b.created.cmp(&a.created).then_with(|| {
                a.name
                    .as_ref()
                    .map(|n| n.full())
                    .cmp(&b.name.as_ref().map(|n| n.full()))
            })
        });
        Ok(rows)
    }

    /// The names pointing at a manifest.
    pub fn names_of(&self, manifest_digest: &str) -> Result<Vec<Reference>> {
        self.with_conn(|conn| {
            let mut stmt =
                conn.prepare("SELECT name FROM images WHERE manifest = ?1 ORDER BY name")?;
            let names = stmt
                .query_map([manifest_digest], |row| row.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            names.iter().map(|n| Reference::parse(n)).collect()
        })
    }

    /// The manifest bytes, exactly as stored.
    pub fn manifest_bytes(&self, manifest_digest: &str) -> Result<Vec<u8>> {
        self.read_blob(manifest_digest)
    }

    pub fn manifest(&self, manifest_digest: &str) -> Result<ImageManifest> {
        let bytes = self.read_blob(manifest_digest)?;
        serde_json::from_slice(&bytes)
            .with_context(|| format!("parsing stored manifest {manifest_digest}"))
    }

    pub fn config(&self, config_digest: &str) -> Result<ImageConfiguration> {
        let bytes = self.read_blob(config_digest)?;
        serde_json::from_slice(&bytes)
            .with_context(|| format!("parsing stored config {config_digest}"))
    }

    /// `kiln tag SOURCE TARGET`.
    pub fn tag(&self, source: &str, target: &Reference) -> Result<()> {
        let image = self.resolve(source)?;
        self.set_name(target, image.stored_digest())
    }

    /// Records that `user` (e.g. a container ID) uses the image: `rmi` refuses it unless forced.
    pub fn add_image_use(&self, manifest_digest: &str, user: &str) -> Result<()> {
        self.with_conn(|conn| {
            conn.execute(
                "INSERT OR IGNORE INTO image_uses (manifest, user) VALUES (?1, ?2)",
                params![manifest_digest, user],
            )?;
            Ok(())
        })
    }

    /// Forgets every image use by `user`.
    pub fn remove_image_uses(&self, user: &str) -> Result<()> {
        self.with_conn(|conn| {
            conn.execute("DELETE FROM image_uses WHERE user = ?1", [user])?;
            Ok(())
        })
    }

    /// Pins a blob for `owner` (e.g. a build-cache entry) so image removal never deletes it.
    pub fn pin_blob(&self, owner: &str, digest: &str) -> Result<()> {
        self.with_conn(|conn| {
            conn.execute(
                "INSERT OR IGNORE INTO blob_refs (owner, blob) VALUES (?1, ?2)",
                params![owner, digest],
            )?;
            Ok(())
        })
    }

    /// `kiln rmi SPEC`: removes a name; when a manifest is left without names, deletes it and
    /// the blobs nothing else references. Without `force`, refuses an image in use and an ID
    /// that several names share. Returns what docker prints: `Untagged: x` / `Deleted: sha256:..`.
    pub fn remove_image(&self, spec: &str, force: bool) -> Result<Vec<String>> {
        Ok(self.remove_image_counted(spec, force)?.0)
    }

    /// [`Store::remove_image`], also returning the bytes it freed on disk.
    pub fn remove_image_counted(&self, spec: &str, force: bool) -> Result<(Vec<String>, u64)> {
        let image = self.resolve(spec)?;
        let by_name = image
            .name
            .as_ref()
            .filter(|n| Reference::parse(spec).is_ok_and(|r| &r == *n && r.digest().is_none()));
        let stored = image.stored_digest().to_string();
        let names = self.names_of(&stored)?;
        let targets: Vec<Reference> =
            match by_name {
                Some(name) => vec![name.clone()],
                None => {
                    if names.len() > 1 && !force {
                        bail!(
                        "conflict: unable to delete {} (must be forced): image is referenced in \
                         multiple repositories ({})",
                        image.short_id(),
                        names.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", ")
                    );
                    }
                    names.clone()
                }
            };
        let mut report = Vec::new();
        self.transaction(|tx| {
            let remaining = names.len() - targets.len().min(names.len());
            if remaining == 0 && !force {
                let users: Vec<String> = {
                    let mut stmt = tx.prepare(
                        "SELECT user FROM image_uses WHERE manifest = ?1
                            OR manifest IN (SELECT manifest FROM index_manifests WHERE idx = ?1)",
                    )?;
                    let users = stmt
                        .query_map([&stored], |row| row.get(0))?
                        .collect::<rusqlite::Result<Vec<_>>>()?;
                    users
                };
                if !users.is_empty() {
                    bail!(
                        "conflict: unable to remove {spec}: image is being used by container {} \
                         (remove the container first, or use -f)",
                        users.join(", ")
                    );
                }
            }
            for name in &targets {
                tx.execute("DELETE FROM images WHERE name = ?1", [name.full()])?;
                report.push(format!("Untagged: {name}"));
            }
            if remaining == 0 {
                if image.index.is_some() {
                    report.extend(self.delete_index_tx(tx, &stored)?);
                } else {
                    let in_index: Option<String> = tx
                        .query_row(
                            "SELECT idx FROM index_manifests WHERE manifest = ?1 LIMIT 1",
                            [&stored],
                            |r| r.get(0),
                        )
                        .optional()?;
                    match in_index {
                        // Untagging a name of it is fine; the manifest stays for its index.
                        Some(_) if !targets.is_empty() => {}
                        Some(idx) => bail!(
                            "conflict: unable to delete {}: it is a platform manifest of image \
                             index {idx} (remove the index's names instead)",
                            image.manifest_digest
                        ),
                        None => report.extend(self.delete_manifest_tx(tx, &stored)?),
                    }
                }
            }
            Ok(())
        })?;
        let freed = self.sweep_pending()?;
        Ok((report, freed))
    }

    /// Deletes a nameless index, then each of its manifests that has no name and is in no other
    /// index (with the blobs nothing else references).
    fn delete_index_tx(&self, tx: &Transaction, index: &str) -> Result<Vec<String>> {
        let manifests: Vec<String> = {
            let mut stmt = tx
                .prepare("SELECT manifest FROM index_manifests WHERE idx = ?1 ORDER BY position")?;
            let rows = stmt
                .query_map([index], |row| row.get(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            rows
        };
        tx.execute("DELETE FROM index_manifests WHERE idx = ?1", [index])?;
        tx.execute("DELETE FROM indexes WHERE digest = ?1", [index])?;
        let mut deleted = vec![format!("Deleted: {index}")];
        for m in manifests {
            let kept: bool = tx.query_row(
                "SELECT EXISTS(SELECT 1 FROM images WHERE manifest = ?1)
                     OR EXISTS(SELECT 1 FROM index_manifests WHERE manifest = ?1)",
                [&m],
                |r| r.get(0),
            )?;
            if !kept {
                deleted.extend(self.delete_manifest_tx(tx, &m)?);
            }
        }
        self.pend_blob_tx(tx, index)?;
        Ok(deleted)
    }

    /// Deletes a nameless manifest and every blob of it that nothing else references.
    fn delete_manifest_tx(&self, tx: &Transaction, manifest: &str) -> Result<Vec<String>> {
        let blobs: Vec<String> = {
            let mut stmt = tx.prepare("SELECT blob FROM manifest_blobs WHERE manifest = ?1")?;
            let rows = stmt
                .query_map([manifest], |row| row.get(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            rows
        };
        let config: Option<String> = tx
            .query_row(
                "SELECT config FROM manifests WHERE digest = ?1",
                [manifest],
                |r| r.get(0),
            )
            .optional()?;
        tx.execute("DELETE FROM manifest_blobs WHERE manifest = ?1", [manifest])?;
        tx.execute("DELETE FROM manifests WHERE digest = ?1", [manifest])?;
        tx.execute("DELETE FROM image_uses WHERE manifest = ?1", [manifest])?;
        let mut deleted = vec![format!("Deleted: {manifest}")];
        // The files go after the commit (`sweep_pending`), each only if still unreferenced.
        self.pend_blob_tx(tx, manifest)?;
        for blob in blobs {
            let used: bool = tx.query_row(
                "SELECT EXISTS(SELECT 1 FROM manifest_blobs WHERE blob = ?1)
                     OR EXISTS(SELECT 1 FROM blob_refs WHERE blob = ?1)
                     OR EXISTS(SELECT 1 FROM manifests WHERE digest = ?1)",
                [&blob],
                |r| r.get(0),
            )?;
            if !used {
                let diff_id: Option<String> = tx
                    .query_row(
                        "SELECT diff_id FROM layers WHERE digest = ?1",
                        [&blob],
                        |r| r.get(0),
                    )
                    .optional()?;
                tx.execute("DELETE FROM layers WHERE digest = ?1", [&blob])?;
                if Some(&blob) == config.as_ref() {
                    deleted.push(format!("Deleted: {blob}"));
                }
                if unpacked_tx(tx, &blob)? {
                    for file in self.collect_unpacked_tx(tx, &blob)? {
                        self.pend_blob_tx(tx, &file)?;
                    }
                } else if let Some(d) = diff_id.filter(|d| d != &blob) {
                    // A pulled layer's unpacked copy goes with its last blob of that DiffID.
                    self.pend_layer_dir_tx(tx, &d)?;
                }
                self.pend_blob_tx(tx, &blob)?;
            }
        }
        Ok(deleted)
    }
}

impl Store {
    /// Forgets the unpacked layer `diff_id`, which nothing references any more: returns the blobs
    /// to delete (its entry list, unless another layer has the same, and the compressed blobs made
    /// from it that nothing references) and lists its directory in `gc_pending`.
    fn collect_unpacked_tx(&self, tx: &Transaction, diff_id: &str) -> Result<Vec<String>> {
        let changes: String = tx.query_row(
            "SELECT changes FROM unpacked_layers WHERE diff_id = ?1",
            [diff_id],
            |r| r.get(0),
        )?;
        tx.execute("DELETE FROM unpacked_layers WHERE diff_id = ?1", [diff_id])?;
        tx.execute("DELETE FROM layer_resume WHERE diff_id = ?1", [diff_id])?;
        let mut files = Vec::new();
        let shared: bool = tx.query_row(
            "SELECT EXISTS(SELECT 1 FROM unpacked_layers WHERE changes = ?1)
                 OR EXISTS(SELECT 1 FROM manifest_blobs WHERE blob = ?1)
                 OR EXISTS(SELECT 1 FROM blob_refs WHERE blob = ?1)",
            [&changes],
            |r| r.get(0),
        )?;
        if !shared {
            files.push(changes);
        }
        let derived: Vec<String> = {
            let mut stmt = tx.prepare(
                "SELECT digest FROM layers l WHERE diff_id = ?1 AND digest != ?1
                 AND NOT EXISTS(SELECT 1 FROM manifest_blobs WHERE blob = l.digest)
                 AND NOT EXISTS(SELECT 1 FROM blob_refs WHERE blob = l.digest)",
            )?;
            let rows = stmt
                .query_map([diff_id], |row| row.get(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            rows
        };
        for d in derived {
            tx.execute("DELETE FROM layers WHERE digest = ?1", [&d])?;
            files.push(d);
        }
        self.pend_layer_dir_tx(tx, diff_id)?;
        Ok(files)
    }
}

/// Whether `digest` is an unpacked layer.
fn unpacked_tx(tx: &Transaction, digest: &str) -> Result<bool> {
    Ok(tx.query_row(
        "SELECT EXISTS(SELECT 1 FROM unpacked_layers WHERE diff_id = ?1)",
        [digest],
        |r| r.get(0),
    )?)
}

fn set_name_tx(tx: &Transaction, name: &Reference, manifest_digest: &str) -> Result<()> {
    let exists: bool = tx.query_row(
        "SELECT EXISTS(SELECT 1 FROM manifests WHERE digest = ?1)",
        [manifest_digest],
        |r| r.get(0),
    )?;
    let exists = exists
        || tx.query_row(
            "SELECT EXISTS(SELECT 1 FROM indexes WHERE digest = ?1)",
            [manifest_digest],
            |r| r.get(0),
        )?;
    if !exists {
        bail!("manifest {manifest_digest} is not in the store");
    }
    // A name that already points there is left alone: a rebuild that changed nothing then
    // commits a transaction that wrote nothing, which costs no fsync.
    tx.execute(
        "INSERT INTO images (name, manifest, updated) VALUES (?1, ?2, ?3)
         ON CONFLICT(name) DO UPDATE SET manifest = excluded.manifest, updated = excluded.updated
         WHERE images.manifest IS NOT excluded.manifest",
        params![name.full(), manifest_digest, now()],
    )?;
    Ok(())
}

fn record_from_row(row: &rusqlite::Row) -> rusqlite::Result<ImageRecord> {
    let name: Option<String> = row.get(0)?;
    Ok(ImageRecord {
        name: name.and_then(|n| Reference::parse(&n).ok()),
        manifest_digest: row.get(1)?,
        config_digest: row.get(2)?,
        size: row.get::<_, i64>(3)? as u64,
        created: row.get(4)?,
        index: None,
    })
}
