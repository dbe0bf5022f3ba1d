//! The build cache shared through a registry or a directory (`--cache-to` / `--cache-from`).
//!
//! A cache is a set of records, one per step: the step's cache key -> the layer it produced (a
//! descriptor: digest, DiffID, size, media type; none for a step that changed nothing), the chain
//! of DiffIDs the layer sits on, when it was built, and the step's inputs (secret-free) to explain
//! misses on another machine. The records travel as the config of an OCI artifact manifest
//! (`ARTIFACT_TYPE`, config `CONFIG_MEDIA_TYPE`) whose layers are the records' layer blobs:
//! `registry` keeps it under a tag, `local` in an OCI layout directory, `inline` in the pushed
//! image's own config.
//!
//! The solver asks one trait, [`RemoteCache`], before it executes a step: `lookup` by key (the
//! planning reads only manifests and configs), and `materialize` once a step that misses needs the
//! filesystem of the layers below it (only then are blobs downloaded, verified; a blob that does not
//! match drops its records with a warning and the build is solved again without them).

pub mod inline;
pub mod local;
pub mod registry;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::cache::{LayerRef, StepInputs};
use crate::store::Store;

/// The manifest's `artifactType`.
pub const ARTIFACT_TYPE: &str = "application/vnd.kiln.build-cache.v1";
/// The media type of the config blob that holds the records.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.kiln.build-cache.config.v1+json";
/// The key of the records in an image config (`type=inline`).
pub const INLINE_KEY: &str = "kiln.build-cache.v1";
/// The media type of a blob holding one record's list of selected files (`CacheRecord::files_blob`).
pub const FILES_MEDIA_TYPE: &str = "application/vnd.kiln.build-cache.files.v1+json";
/// A record whose step selected more files than this keeps their list in a blob of its own.
pub const INLINE_FILES_MAX: usize = 64;
/// Cache configs are small JSON documents; larger ones are refused.
pub const MAX_CONFIG_BYTES: u64 = 64 << 20;

/// A layer as a record names it (an OCI descriptor plus its DiffID).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LayerDesc {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(rename = "diffID")]
    pub diff_id: String,
}

impl From<&LayerRef> for LayerDesc {
    fn from(l: &LayerRef) -> LayerDesc {
        LayerDesc {
            media_type: l.media_type.clone(),
            digest: l.digest.clone(),
            size: l.size,
            diff_id: l.diff_id.clone(),
        }
    }
}

impl LayerDesc {
    pub fn to_ref(&self) -> LayerRef {
        LayerRef {
            digest: self.digest.clone(),
            diff_id: self.diff_id.clone(),
            size: self.size,
            media_type: self.media_type.clone(),
        }
    }
}

/// One step of a cache.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheRecord {
    /// The step's cache key (`solver::plan`).
    pub key: String,
    /// The layer the step made; `None`: it changed nothing.
    #[serde(default)]
    pub layer: Option<LayerDesc>,
    /// The DiffIDs of the filesystem after the step, bottom first (the layers below and its own).
    #[serde(default)]
    pub chain: Vec<String>,
    /// When the step was built (seconds since the epoch), for the history of later hits.
    pub created: i64,
    /// Where the step is in its Dockerfile (independent of the machine's paths).
    #[serde(default)]
    pub place: String,
    /// What went into the key, with values of build args and environment variables hashed.
    #[serde(default)]
    pub inputs: StepInputs,
    /// The blob holding `inputs.files` when the step selected more than `INLINE_FILES_MAX`
    /// entries (`inputs.files` is then empty): read only to explain a miss of this step, and
    /// the same blob (not uploaded again) while the selected files stay the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files_blob: Option<LayerDesc>,
}

/// A `RUN --mount=type=cache` directory exported as a layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MountRecord {
    /// The directory's name under `build-cache-mounts/` (a digest of the id and options).
    pub key: String,
    pub layer: LayerDesc,
}

/// The cache config document.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheDoc {
    pub version: u32,
    pub records: Vec<CacheRecord>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<MountRecord>,
}

impl CacheDoc {
    pub fn new(mut records: Vec<CacheRecord>, mounts: Vec<MountRecord>) -> CacheDoc {
        records.sort_by(|a, b| a.key.cmp(&b.key));
        records.dedup_by(|a, b| a.key == b.key);
        CacheDoc {
            version: 1,
            records,
            mounts,
        }
    }

    pub fn parse(bytes: &[u8]) -> Result<CacheDoc> {
        let doc: CacheDoc =
            serde_json::from_slice(bytes).context("the cache config is not kiln's format")?;
        if doc.version != 1 {
            bail!(
                "cache format version {} (this kiln reads version 1)",
                doc.version
            );
        }
        for r in &doc.records {
            check_digest(&r.key).context("a record's key")?;
            if let Some(l) = &r.layer {
                check_digest(&l.digest).context("a record's layer digest")?;
                check_digest(&l.diff_id).context("a record's layer DiffID")?;
            }
            if let Some(f) = &r.files_blob {
                check_digest(&f.digest).context("a record's file list digest")?;
            }
        }
        for m in &doc.mounts {
            check_digest(&m.layer.digest).context("a cache mount's layer digest")?;
            if m.key.len() != 64 || !m.key.bytes().all(|b| b.is_ascii_hexdigit()) {
                bail!("a cache mount's key {:?} is not 64 hex digits", m.key);
            }
        }
        Ok(doc)
    }

    /// The distinct blobs the records and mounts name, in a stable order: the layers, then the
    /// file lists (`files_blob`); the manifest lists them all.
    pub fn layers(&self) -> Vec<LayerDesc> {
        let mut seen = HashSet::new();
        self.records
            .iter()
            .filter_map(|r| r.layer.as_ref())
            .chain(self.mounts.iter().map(|m| &m.layer))
            .chain(self.records.iter().filter_map(|r| r.files_blob.as_ref()))
            .filter(|l| seen.insert(l.digest.clone()))
            .cloned()
            .collect()
    }

    /// Moves each long list of selected files (more than `INLINE_FILES_MAX`) out of its record
    /// into a blob in `store` (`files_blob`), so the config stays small and a list that did not
    /// change is the same blob, which an export finds at the destination instead of sending again.
    pub fn split_file_lists(&mut self, store: &Store) -> Result<()> {
        for r in &mut self.records {
            if r.inputs.files.len() <= INLINE_FILES_MAX {
                continue;
            }
            let bytes = serde_json::to_vec(&r.inputs.files)?;
            let blob = store
                .put_blob_bytes(&bytes)
                .context("storing a step's list of files")?;
            r.files_blob = Some(LayerDesc {
                media_type: FILES_MEDIA_TYPE.to_string(),
                digest: blob.digest,
                size: blob.size,
                diff_id: String::new(),
            });
            r.inputs.files = Vec::new();
        }
        Ok(())
    }
}

/// Reads a record's list of files from `blob` (fetched into the store through `source`,
/// verified, unless the store has it).
fn load_file_list(
    store: &Store,
    source: &dyn BlobSource,
    blob: &LayerDesc,
) -> Result<Vec<(String, String)>> {
    if blob.size > MAX_CONFIG_BYTES {
        bail!(
            "the file list {} is {} bytes, larger than kiln reads",
            blob.digest,
            blob.size
        );
    }
    if !store.has_blob(&blob.digest) {
        source.fetch(store, blob)?;
    }
    let bytes = store.read_blob(&blob.digest)?;
    if crate::digest::sha256_digest(&bytes) != blob.digest {
        bail!("the file list {} failed verification", blob.digest);
    }
    serde_json::from_slice(&bytes)
        .with_context(|| format!("the file list {} is not kiln's format", blob.digest))
}

fn check_digest(d: &str) -> Result<()> {
    crate::digest::digest_hex(d).map(|_| ())
}

/// The artifact manifest over a cache config blob and the layers its records name.
pub fn artifact_manifest(config: &LayerDesc, layers: &[LayerDesc]) -> Result<Vec<u8>> {
    let desc = |l: &LayerDesc| serde_json::json!({"mediaType": l.media_type, "digest": l.digest, "size": l.size});
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": crate::registry::manifest::OCI_MANIFEST,
        "artifactType": ARTIFACT_TYPE,
        "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": config.digest, "size": config.size},
        "layers": layers.iter().map(desc).collect::<Vec<_>>(),
    });
    Ok(serde_json::to_vec(&manifest)?)
}

/// The config descriptor and layer digests of a cache manifest, checked to be kiln's artifact.
pub fn parse_artifact_manifest(bytes: &[u8]) -> Result<(LayerDesc, HashSet<String>)> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Desc {
        #[serde(default)]
        media_type: String,
        digest: String,
        size: u64,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct M {
        #[serde(default)]
        artifact_type: Option<String>,
        config: Desc,
        #[serde(default)]
        layers: Vec<Desc>,
    }
    let m: M = serde_json::from_slice(bytes).context("the cache manifest is not a manifest")?;
    if m.config.media_type != CONFIG_MEDIA_TYPE {
        bail!(
            "not a kiln build cache (artifactType {:?}, config media type {:?})",
            m.artifact_type.unwrap_or_default(),
            m.config.media_type
        );
    }
    check_digest(&m.config.digest)?;
    if m.config.size > MAX_CONFIG_BYTES {
        bail!(
            "the cache config is {} bytes, larger than kiln reads",
            m.config.size
        );
    }
    Ok((
        LayerDesc {
            media_type: m.config.media_type,
            digest: m.config.digest,
            size: m.config.size,
            diff_id: String::new(),
        },
        m.layers.into_iter().map(|l| l.digest).collect(),
    ))
}

/// What a step record keeps of the inputs: the instruction and sources with credentials in URLs
/// removed, build args and environment values replaced by their digests (a miss still says which
/// one changed; a token passed as a build arg never leaves the machine).
pub fn redact_inputs(inputs: &StepInputs) -> StepInputs {
    let hide = |v: &str| crate::digest::sha256_digest(v.as_bytes());
    StepInputs {
        parent: inputs.parent.clone(),
        instruction: crate::source::git::redact_urls(&inputs.instruction),
        args: inputs
            .args
            .iter()
            .map(|(k, v)| (k.clone(), hide(v)))
            .collect::<BTreeMap<_, _>>(),
        env: inputs
            .env
            .iter()
            .map(|e| match e.split_once('=') {
                Some((k, v)) => format!("{k}={}", hide(v)),
                None => e.clone(),
            })
            .collect(),
        files: inputs.files.clone(),
        // The local layer a step made is this machine's business (an incremental COPY's base).
        layer: None,
        sources: inputs
            .sources
            .iter()
            .map(|s| crate::source::git::redact_urls(s))
            .collect(),
    }
}

/// `mode=` of `--cache-to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheMode {
    /// The steps of the exported image.
    Min,
    /// Every step of every stage built.
    Max,
}

/// Layer compression of `--cache-to compression=`; `None`: the blobs as the store has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheCompression {
    Gzip,
    Zstd,
}

/// One `--cache-to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheTo {
    Registry {
        reference: String,
        mode: CacheMode,
        compression: Option<CacheCompression>,
        ignore_error: bool,
        cache_mounts: bool,
    },
    Local {
        dest: PathBuf,
        mode: CacheMode,
        compression: Option<CacheCompression>,
        ignore_error: bool,
        cache_mounts: bool,
    },
    Inline,
}

impl CacheTo {
    pub fn mode(&self) -> CacheMode {
        match self {
            CacheTo::Registry { mode, .. } | CacheTo::Local { mode, .. } => *mode,
            CacheTo::Inline => CacheMode::Min,
        }
    }

    pub fn cache_mounts(&self) -> bool {
        match self {
            CacheTo::Registry { cache_mounts, .. } | CacheTo::Local { cache_mounts, .. } => {
                *cache_mounts
            }
            CacheTo::Inline => false,
        }
    }

    pub fn ignore_error(&self) -> bool {
        match self {
            CacheTo::Registry { ignore_error, .. } | CacheTo::Local { ignore_error, .. } => {
                *ignore_error
            }
            CacheTo::Inline => false,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            CacheTo::Registry { reference, .. } => reference.clone(),
            CacheTo::Local { dest, .. } => dest.display().to_string(),
            CacheTo::Inline => "inline".to_string(),
        }
    }
}

/// One `--cache-from`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheFrom {
    Registry {
        reference: String,
    },
    Local {
        src: PathBuf,
    },
    /// A bare image reference: the records in its config.
    Inline {
        reference: String,
    },
}

impl CacheFrom {
    pub fn describe(&self) -> String {
        match self {
            CacheFrom::Registry { reference } | CacheFrom::Inline { reference } => {
                reference.clone()
            }
            CacheFrom::Local { src } => src.display().to_string(),
        }
    }
}

/// A blob that failed to arrive from a cache: its records are dropped and the build is solved
/// again without them.
#[derive(Debug)]
pub struct Refused {
    pub digest: String,
    pub source: String,
    pub reason: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the layer {} from the cache {} was refused: {}",
            self.digest, self.source, self.reason
        )
    }
}

impl std::error::Error for Refused {}

/// What the solver asks before it executes a step.
pub trait RemoteCache: Send + Sync {
    /// A record of the step `key` whose layers sit on `parent` (DiffIDs, bottom first).
    fn lookup(&self, key: &str, parent: &[String]) -> Option<CacheRecord>;
    /// When a cache has the step at the same place with other inputs: why it differs.
    fn explain(&self, place: &str, inputs: &StepInputs, first_step: bool) -> Option<String>;
    /// Makes sure the blob of each layer is in the store, downloading (verified) what a cache
    /// lists; `Err(Refused)` when one does not arrive intact.
    fn materialize(&self, layers: &[LayerRef]) -> Result<()>;
}

/// Where one imported cache keeps its blobs.
pub trait BlobSource: Send + Sync {
    /// Copies `layer`'s blob into the store; it lands only if its bytes match the digest.
    fn fetch(&self, store: &Store, layer: &LayerDesc) -> Result<()>;
    /// The registry and repository of the cache (for skipping and mounting blobs on export).
    fn registry_repo(&self) -> Option<(String, String)> {
        None
    }
}

/// One cache read by `--cache-from`.
pub struct Loaded {
    pub name: String,
    pub doc: CacheDoc,
    /// The digests the cache's manifest lists (those its registry repository certainly holds).
    pub listed: HashSet<String>,
    pub blobs: Box<dyn BlobSource>,
}

/// Every `--cache-from`, merged: the first that has a key wins.
pub struct Imports {
    store: Arc<Store>,
    sources: Vec<Loaded>,
    by_key: HashMap<String, (usize, CacheRecord)>,
    by_place: HashMap<String, (usize, StepInputs, Option<LayerDesc>)>,
    by_blob: HashMap<String, usize>,
    mounts: HashMap<String, (usize, LayerDesc)>,
    refused: Mutex<HashSet<String>>,
    warn: Box<dyn Fn(&str) + Send + Sync>,
}

impl Imports {
    pub fn new(
        store: Arc<Store>,
        sources: Vec<Loaded>,
        warn: Box<dyn Fn(&str) + Send + Sync>,
    ) -> Imports {
        let mut by_key = HashMap::new();
        let mut by_place = HashMap::new();
        let mut by_blob = HashMap::new();
        let mut mounts = HashMap::new();
        for (i, s) in sources.iter().enumerate() {
            for r in &s.doc.records {
                if let Some(l) = &r.layer {
                    by_blob.entry(l.digest.clone()).or_insert(i);
                }
                by_key
                    .entry(r.key.clone())
                    .or_insert_with(|| (i, r.clone()));
                if !r.place.is_empty() {
                    by_place
                        .entry(r.place.clone())
                        .or_insert_with(|| (i, r.inputs.clone(), r.files_blob.clone()));
                }
            }
            for m in &s.doc.mounts {
                by_blob.entry(m.layer.digest.clone()).or_insert(i);
                mounts
                    .entry(m.key.clone())
                    .or_insert_with(|| (i, m.layer.clone()));
            }
        }
        Imports {
            store,
            sources,
            by_key,
            by_place,
            by_blob,
            mounts,
            refused: Mutex::new(HashSet::new()),
            warn,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    pub fn records(&self) -> usize {
        self.by_key.len()
    }

    /// The registry repository (`host/repository`) of a cache whose manifest lists `digest`: the
    /// blob is certainly there, so an image may name it without fetching it.
    pub fn remote_source(&self, digest: &str) -> Option<String> {
        if self.is_refused(digest) {
            return None;
        }
        self.sources.iter().find_map(|s| {
            let (registry, repository) = s.blobs.registry_repo()?;
            s.listed
                .contains(digest)
                .then(|| format!("{registry}/{repository}"))
        })
    }

    /// Puts the built image's layers in the store lazily: a layer a registry cache lists stays
    /// there, recorded as a remote blob (`store::remote`, fetched when something first reads it:
    /// `kiln run`, a later step, `save`; a push to the same registry mounts it); the others (a
    /// `type=local` cache's) are copied now.
    pub fn assemble(&self, layers: &[LayerRef]) -> Result<()> {
        let mut fetch = Vec::new();
        for l in layers {
            if self.store.has_layer_content(&l.digest)?
                || self.store.remote_blob(&l.digest)?.is_some()
            {
                continue;
            }
            match self.remote_source(&l.digest) {
                Some(source) => {
                    self.store.record_remote_blob(&crate::store::RemoteBlob {
                        digest: l.digest.clone(),
                        source,
                        media_type: l.media_type.clone(),
                        size: l.size,
                    })?;
                    self.store.record_layer(&crate::store::LayerRecord {
                        digest: l.digest.clone(),
                        diff_id: l.diff_id.clone(),
                        media_type: l.media_type.clone(),
                        size: l.size,
                    })?;
                }
                None => fetch.push(l.clone()),
            }
        }
        self.materialize(&fetch)
    }

    /// Whether the cache at `registry/repository` lists `digest` in its manifest.
    pub fn listed_in(&self, registry: &str, repository: &str, digest: &str) -> bool {
        self.sources.iter().any(|s| {
            s.blobs
                .registry_repo()
                .is_some_and(|(r, p)| r == registry && p == repository)
                && s.listed.contains(digest)
        })
    }

    /// Whether a cache in some repository of `registry` lists `digest` (a push there can mount it).
    pub fn listed_on(&self, registry: &str, digest: &str) -> bool {
        self.sources.iter().any(|s| {
            s.blobs.registry_repo().is_some_and(|(r, _)| r == registry) && s.listed.contains(digest)
        })
    }

    /// Repositories of `registry` the imported caches live in.
    pub fn repositories_on(&self, registry: &str) -> Vec<String> {
        self.sources
            .iter()
            .filter_map(|s| s.blobs.registry_repo())
            .filter(|(r, _)| r == registry)
            .map(|(_, p)| p)
            .collect()
    }

    /// How many blobs were refused so far (grows with each one; never beyond the blobs listed).
    pub fn refused_count(&self) -> usize {
        self.refused.lock().map(|r| r.len()).unwrap_or(usize::MAX)
    }

    fn is_refused(&self, digest: &str) -> bool {
        self.refused
            .lock()
            .map(|r| r.contains(digest))
            .unwrap_or(true)
    }

    /// The cache mount layer recorded for the directory `key`, if a cache has one.
    pub fn mount_layer(&self, key: &str) -> Option<LayerDesc> {
        self.mounts
            .get(key)
            .filter(|(_, l)| !self.is_refused(&l.digest))
            .map(|(_, l)| l.clone())
    }

    fn fetch_one(&self, layer: &LayerDesc) -> Result<()> {
        if self.store.has_layer_content(&layer.digest)? {
            return Ok(());
        }
        let Some(&i) = self.by_blob.get(&layer.digest) else {
            bail!(
                "the layer {} is neither in the store nor in a cache",
                layer.digest
            );
        };
        let source = &self.sources[i];
        if let Err(e) = source.blobs.fetch(&self.store, layer) {
            if let Ok(mut r) = self.refused.lock() {
                r.insert(layer.digest.clone());
            }
            (self.warn)(&format!(
                "warning: the cache from {} has a bad layer {}: {e:#}; its records are dropped",
                source.name, layer.digest
            ));
            return Err(anyhow!(Refused {
                digest: layer.digest.clone(),
                source: source.name.clone(),
                reason: format!("{e:#}"),
            }));
        }
        self.store.record_layer(&crate::store::LayerRecord {
            digest: layer.digest.clone(),
            diff_id: layer.diff_id.clone(),
            media_type: layer.media_type.clone(),
            size: layer.size,
        })?;
        Ok(())
    }
}

impl RemoteCache for Imports {
    fn lookup(&self, key: &str, parent: &[String]) -> Option<CacheRecord> {
        let (_, r) = self.by_key.get(key)?;
        if let Some(l) = &r.layer {
            if self.is_refused(&l.digest) {
                return None;
            }
        }
        // The chain must continue the layers the step sits on.
        let own = usize::from(r.layer.is_some());
        if r.chain.len() != parent.len() + own || r.chain[..parent.len()] != *parent {
            return None;
        }
        if let Some(l) = &r.layer {
            if r.chain.last() != Some(&l.diff_id) {
                return None;
            }
        }
        Some(r.clone())
    }

    fn explain(&self, place: &str, inputs: &StepInputs, first_step: bool) -> Option<String> {
        let (i, old, files_blob) = self.by_place.get(place)?;
        let new = redact_inputs(inputs);
        let mut old = old.clone();
        if let Some(blob) = files_blob {
            // The list is read only now, for the one step that needs it.
            match load_file_list(&self.store, self.sources[*i].blobs.as_ref(), blob) {
                Ok(files) => old.files = files,
                Err(e) => {
                    return Some(format!(
                        "the cache from {} has this step with different inputs (its list of files could not be read: {e:#})",
                        self.sources[*i].name
                    ))
                }
            }
        }
        let why = super::cache::explain_miss(Some(&old), &new, first_step);
        Some(format!(
            "the cache from {} has this step with different inputs: {why}",
            self.sources[*i].name
        ))
    }

    fn materialize(&self, layers: &[LayerRef]) -> Result<()> {
        let missing: Vec<LayerDesc> = layers
            .iter()
            .filter(|l| !self.store.has_layer_content(&l.digest).unwrap_or(false))
            .map(LayerDesc::from)
            .collect();
        crate::registry::progress::parallel(&missing, 4, |l| self.fetch_one(l))
    }
}

/// The one place a local layer's blob is obtained for a cache export, made once from its
/// unpacked snapshot when the build kept it uncompressed, and kept in the store for the next
/// export (`snapshot::blobs`). `compression=` decides when given. Without it, a compressed blob
/// the store has (a pulled layer) goes as it is; otherwise a layer of the image (`in_image`:
/// the push sends the same blob, so it is uploaded once) is gzip, and a layer only the cache
/// holds (a builder stage's, `mode=max`) is zstd: at its default level it takes a fraction of
/// gzip's CPU for a smaller blob, and only kiln reads these blobs back.
pub fn layer_blob_for_export(
    store: &Store,
    layer: &LayerRef,
    compression: Option<CacheCompression>,
    in_image: bool,
) -> Result<LayerRef> {
    use crate::oci::compress::Compression;
    let uncompressed = Compression::None.layer_media_type().to_string();
    let want = match compression {
        None if layer.media_type != uncompressed && store.has_blob(&layer.digest) => {
            return Ok(layer.clone())
        }
        None if in_image => Compression::Gzip,
        None => {
            // A compressed blob of the layer made before (an earlier export's) is sent again
            // rather than a second one made.
            let stored = store.layers_with_diff_id(&layer.diff_id)?;
            if let Some(found) = stored
                .iter()
                .find(|r| r.media_type != uncompressed && store.has_blob(&r.digest))
            {
                return Ok(LayerRef {
                    digest: found.digest.clone(),
                    diff_id: found.diff_id.clone(),
                    size: found.size,
                    media_type: found.media_type.clone(),
                });
            }
            Compression::Zstd
        }
        Some(CacheCompression::Gzip) => Compression::Gzip,
        Some(CacheCompression::Zstd) => Compression::Zstd,
    };
    crate::snapshot::blobs::ensure_compressed(store, layer, want)
}

/// Writes a cache mount directory as a layer blob in the store.
pub fn mount_layer_from_dir(store: &Store, dir: &Path) -> Result<LayerRef> {
    let stored =
        crate::oci::layer::store_layer(store, crate::oci::compress::Compression::Gzip, |out| {
            crate::oci::layer::write_tree_layer(
                dir,
                out,
                &crate::oci::layer::WriteOptions::default(),
            )
        })
        .with_context(|| format!("writing the cache mount {} as a layer", dir.display()))?;
    Ok(LayerRef {
        digest: stored.descriptor.digest().to_string(),
        diff_id: stored.diff_id,
        size: stored.descriptor.size(),
        media_type: stored.descriptor.media_type().to_string(),
    })
}

/// What an export did, for the build's output and the benchmark.
#[derive(Debug, Clone, Default)]
pub struct ExportStats {
    pub records: usize,
    pub blobs: usize,
    pub uploaded: usize,
    pub uploaded_bytes: u64,
    pub skipped: usize,
    pub mounted: usize,
}

impl std::fmt::Display for ExportStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} records, {} blobs: {} uploaded ({} bytes), {} mounted, {} already there",
            self.records,
            self.blobs,
            self.uploaded,
            self.uploaded_bytes,
            self.mounted,
            self.skipped
        )
    }
}

/// The records (with layers as they are to be exported) and the blobs to send.
pub struct Prepared {
    pub doc: CacheDoc,
}

/// Resolves each record's layer to the blob the export sends (`layer_blob_for_export`); a
/// layer whose blob is not in the store is downloaded from the cache that listed it first,
/// unless `keep_remote` says the destination has it already. `in_image` tells the layers the
/// built image has (their blob is the one the push sends).
pub fn prepare(
    store: &Store,
    records: &[CacheRecord],
    mounts: &[MountRecord],
    compression: Option<CacheCompression>,
    imports: Option<&Imports>,
    keep_remote: &dyn Fn(&LayerDesc) -> bool,
    in_image: &dyn Fn(&LayerDesc) -> bool,
) -> Result<Prepared> {
    let mut out = Vec::with_capacity(records.len());
    let mut converted: HashMap<String, LayerDesc> = HashMap::new();
    for r in records {
        let mut r = r.clone();
        if let Some(l) = &r.layer {
            let done = if let Some(c) = converted.get(&l.digest) {
                c.clone()
            } else {
                // A layer this build made is an unpacked snapshot, not a blob, until exported.
                let here = store.has_layer_content(&l.digest)?;
                let new = if !here && compression.is_none() && keep_remote(l) {
                    l.clone()
                } else {
                    // A remote blob no imported cache lists (an earlier build's) is fetched
                    // from where the store says it is.
                    let elsewhere = !here
                        && !imports.is_some_and(|i| i.by_blob.contains_key(&l.digest))
                        && store.ensure_blob(&l.digest)?;
                    if !here && !elsewhere {
                        let imports = imports.ok_or_else(|| {
                            anyhow!(
                                "the layer {} of step {} is not in the store",
                                l.digest,
                                r.key
                            )
                        })?;
                        imports.materialize(&[l.to_ref()])?;
                    }
                    LayerDesc::from(&layer_blob_for_export(
                        store,
                        &l.to_ref(),
                        compression,
                        in_image(l),
                    )?)
                };
                converted.insert(l.digest.clone(), new.clone());
                new
            };
            if let Some(last) = r.chain.last_mut() {
                *last = done.diff_id.clone();
            }
            r.layer = Some(done);
        }
        out.push(r);
    }
    let mut doc = CacheDoc::new(out, mounts.to_vec());
    doc.split_file_lists(store)?;
    Ok(Prepared { doc })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn records_round_trip_and_bad_ones_are_refused() {
        let rec = CacheRecord {
            key: digest('a'),
            layer: Some(LayerDesc {
                media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
                digest: digest('b'),
                size: 3,
                diff_id: digest('c'),
            }),
            chain: vec![digest('c')],
            created: 5,
            place: digest('d'),
            inputs: StepInputs::default(),
            files_blob: None,
        };
        let doc = CacheDoc::new(vec![rec.clone(), rec.clone()], vec![]);
        assert_eq!(doc.records.len(), 1);
        let bytes = serde_json::to_vec(&doc).unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.contains("\"diffID\""), "{text}");
        assert_eq!(CacheDoc::parse(&bytes).unwrap(), doc);
        let bad = text.replace(&digest('b'), "sha256:../../etc");
        assert!(CacheDoc::parse(bad.as_bytes()).is_err());
        assert!(CacheDoc::parse(b"{\"version\":2,\"records\":[]}").is_err());
    }

    #[test]
    fn manifest_is_an_artifact_and_others_are_refused() {
        let config = LayerDesc {
            media_type: CONFIG_MEDIA_TYPE.into(),
            digest: digest('e'),
            size: 10,
            diff_id: String::new(),
        };
        let layer = LayerDesc {
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            digest: digest('f'),
            size: 4,
            diff_id: digest('0'),
        };
        let bytes = artifact_manifest(&config, &[layer]).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["artifactType"], ARTIFACT_TYPE);
        assert_eq!(v["mediaType"], crate::registry::manifest::OCI_MANIFEST);
        assert!(v.get("subject").is_none());
        let (c, listed) = parse_artifact_manifest(&bytes).unwrap();
        assert_eq!(c.digest, digest('e'));
        assert!(listed.contains(&digest('f')));
        let image = bytes
            .iter()
            .map(|&b| b as char)
            .collect::<String>()
            .replace(
                CONFIG_MEDIA_TYPE,
                "application/vnd.oci.image.config.v1+json",
            );
        assert!(parse_artifact_manifest(image.as_bytes()).is_err());
    }

    struct Fake {
        bytes: Vec<u8>,
    }

    impl BlobSource for Fake {
        fn fetch(&self, store: &Store, layer: &LayerDesc) -> Result<()> {
            store.put_blob(self.bytes.as_slice(), Some(&layer.digest))?;
            Ok(())
        }
    }

    fn loaded(name: &str, records: Vec<CacheRecord>, bytes: &[u8]) -> Loaded {
        Loaded {
            name: name.into(),
            doc: CacheDoc::new(records, Vec::new()),
            listed: HashSet::new(),
            blobs: Box::new(Fake {
                bytes: bytes.to_vec(),
            }),
        }
    }

    #[test]
    fn lookups_follow_the_chain_first_source_wins_and_a_bad_blob_drops_its_records() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let good = b"good layer bytes".to_vec();
        let layer = |bytes: &[u8]| LayerDesc {
            media_type: "application/vnd.oci.image.layer.v1.tar".into(),
            digest: crate::digest::sha256_digest(bytes),
            size: bytes.len() as u64,
            diff_id: crate::digest::sha256_digest(bytes),
        };
        let rec = |key: char, l: &LayerDesc, parent: &[String]| CacheRecord {
            key: digest(key),
            layer: Some(l.clone()),
            chain: parent.iter().cloned().chain([l.diff_id.clone()]).collect(),
            created: 1,
            place: digest('9'),
            inputs: StepInputs {
                instruction: format!("RUN {key}"),
                ..Default::default()
            },
            files_blob: None,
        };
        let base = vec![digest('7')];
        let l1 = layer(&good);
        let other = layer(b"other");
        let imports = Imports::new(
            store.clone(),
            vec![
                loaded("first", vec![rec('a', &l1, &base)], &good),
                // The same key in a later cache loses; its own key is found.
                loaded(
                    "second",
                    vec![rec('a', &other, &base), rec('b', &other, &base)],
                    b"tampered",
                ),
            ],
            Box::new(|_| {}),
        );
        assert_eq!(imports.records(), 2);
        assert_eq!(
            imports.lookup(&digest('a'), &base).unwrap().layer,
            Some(l1.clone())
        );
        // A chain that does not continue the step's parent is no hit.
        assert!(imports.lookup(&digest('a'), &[digest('6')]).is_none());
        let why = imports
            .explain(
                &digest('9'),
                &StepInputs {
                    instruction: "RUN z".into(),
                    ..Default::default()
                },
                false,
            )
            .unwrap();
        assert!(
            why.starts_with("the cache from first has this step"),
            "{why}"
        );
        imports.materialize(&[l1.to_ref()]).unwrap();
        assert!(store.has_blob(&l1.digest));
        // The second cache serves bytes that do not match: refused, and its record is gone.
        let err = imports.materialize(&[other.to_ref()]).unwrap_err();
        assert!(err.chain().any(|c| c.is::<Refused>()), "{err:#}");
        assert!(!store.has_blob(&other.digest));
        assert!(imports.lookup(&digest('b'), &base).is_none());
    }

    #[test]
    fn long_file_lists_go_to_a_blob_read_only_to_explain_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let files = |changed: &str| -> Vec<(String, String)> {
            (0..=INLINE_FILES_MAX)
                .map(|i| {
                    let name = format!("vendor/f{i}.go");
                    let d = if name == changed { "0c0c" } else { "5a5a" };
                    (name, d.to_string())
                })
                .collect()
        };
        let rec = |key: char, place: char, files: Vec<(String, String)>| CacheRecord {
            key: digest(key),
            layer: None,
            chain: vec![],
            created: 1,
            place: digest(place),
            inputs: StepInputs {
                instruction: "COPY vendor /src/vendor".into(),
                files,
                ..Default::default()
            },
            files_blob: None,
        };
        let short = vec![("main.go".to_string(), "x".to_string())];
        let mut doc = CacheDoc::new(
            vec![rec('a', '1', files("")), rec('b', '2', short.clone())],
            vec![],
        );
        doc.split_file_lists(&store).unwrap();
        let long = doc.records.iter().find(|r| r.key == digest('a')).unwrap();
        assert!(long.inputs.files.is_empty());
        let blob = long.files_blob.clone().unwrap();
        assert_eq!(blob.media_type, FILES_MEDIA_TYPE);
        let short_rec = doc.records.iter().find(|r| r.key == digest('b')).unwrap();
        assert_eq!(short_rec.inputs.files, short);
        assert!(short_rec.files_blob.is_none());
        assert!(doc.layers().iter().any(|l| l.digest == blob.digest));
        // The same list is the same blob; another list is another.
        let mut again = CacheDoc::new(vec![rec('a', '1', files(""))], vec![]);
        again.split_file_lists(&store).unwrap();
        assert_eq!(again.records[0].files_blob.as_ref(), Some(&blob));
        let mut other = CacheDoc::new(vec![rec('a', '1', files("vendor/f3.go"))], vec![]);
        other.split_file_lists(&store).unwrap();
        assert_ne!(other.records[0].files_blob.as_ref(), Some(&blob));
        // The config round trips with the descriptor.
        let bytes = serde_json::to_vec(&doc).unwrap();
        assert_eq!(CacheDoc::parse(&bytes).unwrap(), doc);

        // Another machine: the list is fetched from the cache only when the step is explained.
        let list = store.read_blob(&blob.digest).unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let store_b = Arc::new(Store::open(elsewhere.path()).unwrap());
        let imports = Imports::new(
            store_b.clone(),
            vec![loaded("cache", doc.records.clone(), &list)],
            Box::new(|_| {}),
        );
        assert!(!store_b.has_blob(&blob.digest));
        let new = StepInputs {
            instruction: "COPY vendor /src/vendor".into(),
            files: files("vendor/f7.go"),
            ..Default::default()
        };
        let why = imports.explain(&digest('1'), &new, false).unwrap();
        assert!(why.contains("1 file changed: vendor/f7.go"), "{why}");
        assert!(store_b.has_blob(&blob.digest));
        // A source serving other bytes: the explanation says the list could not be read.
        let elsewhere_c = tempfile::tempdir().unwrap();
        let store_c = Arc::new(Store::open(elsewhere_c.path()).unwrap());
        let bad = Imports::new(
            store_c,
            vec![loaded("bad", doc.records.clone(), b"[]")],
            Box::new(|_| {}),
        );
        let why = bad.explain(&digest('1'), &new, false).unwrap();
        assert!(why.contains("could not be read"), "{why}");
    }

    #[test]
    fn redacted_inputs_keep_no_values_but_still_explain() {
        let mut old = StepInputs {
            instruction: "RUN curl https://user:hunter2@example.com/x".into(),
            env: vec!["TOKEN=hunter2".into()],
            ..Default::default()
        };
        old.args.insert("PASSWORD".into(), "hunter2".into());
        let r = redact_inputs(&old);
        let text = serde_json::to_string(&r).unwrap();
        assert!(!text.contains("hunter2"), "{text}");
        let mut new = old.clone();
        new.args.insert("PASSWORD".into(), "other".into());
        let why = super::super::cache::explain_miss(Some(&r), &redact_inputs(&new), false);
        assert_eq!(why, "build arg PASSWORD changed");
    }
}
