//! Image archives: `kiln save` writes docker archives (what `docker load` reads: manifest.json,
//! repositories, plus the OCI layout docker 25+ also writes) and OCI image layouts (oci-layout,
//! index.json, blobs/sha256); `kiln load` reads both, whether kiln, docker or skopeo wrote them,
//! compressed as a whole or not.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use oci_spec::image::{
    Descriptor, ImageConfiguration, ImageIndex, ImageManifest, ImageManifestBuilder, MediaType,
};
use serde::{Deserialize, Serialize};

use super::compress::{decompress, Compression, Compressor};
use super::progress::{Progress, ProgressReader, ProgressWriter};
use crate::digest::canonical_json;
use crate::digest::digest_hex;
use crate::reference::Reference;
use crate::store::Store;

/// The annotation docker and containerd use for an image's full name in an OCI index.
pub const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";
/// The OCI annotation for the reference (docker writes the tag) of a manifest in an index.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveFormat {
    Docker,
    Oci,
}

/// One image to save: its manifest and the names to record for it (may be empty).
#[derive(Debug, Clone)]
pub struct SaveItem {
    pub manifest_digest: String,
    pub names: Vec<Reference>,
}

/// docker's manifest.json entry.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifestEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

enum BlobSource {
    Store(String),
    Temp(tempfile::NamedTempFile),
    Bytes(Vec<u8>),
}

/// The compression a layer media type says.
pub fn media_type_compression(media_type: &str) -> Compression {
    if media_type.contains("gzip") {
        Compression::Gzip
    } else if media_type.contains("zstd") {
        Compression::Zstd
    } else {
        Compression::None
    }
}

/// Writes `items` as one archive to `out`. For the OCI format, layers stored with another
/// compression than `compression` are recompressed (which gives new layer and manifest
/// digests); the docker format keeps the stored blobs, so loading it gives back the same image.
pub fn save(
    store: &Store,
    items: &[SaveItem],
    format: ArchiveFormat,
    compression: Compression,
    out: impl Write,
    quiet: bool,
) -> Result<()> {
    let mut blobs: BTreeMap<String, (u64, BlobSource)> = BTreeMap::new();
    let mut index_entries = Vec::new();
    let mut docker_entries = Vec::new();
    let mut repositories: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut total = 0u64;
    for item in items {
        let mut manifest_bytes = store.manifest_bytes(&item.manifest_digest)?;
        let mut manifest: ImageManifest = serde_json::from_slice(&manifest_bytes)
            .with_context(|| format!("parsing stored manifest {}", item.manifest_digest))?;
        let mut manifest_digest = item.manifest_digest.clone();
        if format == ArchiveFormat::Oci {
            let mut layers = manifest.layers().clone();
            let mut changed = false;
            for layer in layers.iter_mut() {
                if media_type_compression(layer.media_type().as_ref()) == compression {
                    continue;
                }
                let digest = layer.digest().to_string();
                let mut progress = Progress::new(
                    &format!("Compressing layer {}", &digest[7..19]),
                    Some(layer.size()),
                    quiet,
                );
                let tmp = tempfile::Builder::new()
                    .prefix("save-layer.")
                    .tempfile_in(store.tmp_dir())?;
                let input = ProgressReader {
                    inner: store.open_blob(&digest)?,
                    progress: &mut progress,
                };
                let (_, mut plain) = decompress(input)?;
                let mut c = Compressor::new(io::BufWriter::new(tmp.reopen()?), compression)?
                    .without_diff_id();
                io::copy(&mut plain, &mut c)
                    .with_context(|| format!("recompressing layer {digest}"))?;
                let (mut w, d) = c.finish()?;
                w.flush()?;
                drop(plain);
                progress.finish();
                *layer = Descriptor::new(
                    compression.layer_media_type(),
                    d.size,
                    d.digest.parse::<oci_spec::image::Digest>()?,
                );
                blobs.insert(d.digest, (d.size, BlobSource::Temp(tmp)));
                changed = true;
            }
            if changed {
                manifest.set_layers(layers);
                manifest.set_media_type(Some(MediaType::ImageManifest));
                manifest_bytes = canonical_json(&manifest)?;
                manifest_digest = crate::digest::sha256_digest(&manifest_bytes);
            }
        }
        let config_digest = manifest.config().digest().to_string();
        let config_size = store
            .blob_size(&config_digest)
            .with_context(|| format!("config {config_digest} is missing from the store"))?;
        blobs.insert(
            config_digest.clone(),
            (config_size, BlobSource::Store(config_digest.clone())),
        );
        for layer in manifest.layers() {
            let d = layer.digest().to_string();
            if !blobs.contains_key(&d) {
                let size = store
                    .blob_size(&d)
                    .with_context(|| format!("layer {d} is missing from the store"))?;
                blobs.insert(d.clone(), (size, BlobSource::Store(d)));
            }
        }
        let media_type = manifest
            .media_type()
            .clone()
            .unwrap_or(MediaType::ImageManifest);
        let mut descriptor_for = |name: Option<&Reference>| {
            let mut d = Descriptor::new(
                media_type.clone(),
                manifest_bytes.len() as u64,
                manifest_digest
                    .parse::<oci_spec::image::Digest>()
                    .expect("sha256 digest we computed"),
            );
            if let Some(name) = name {
                let mut ann = HashMap::new();
                ann.insert(ANNOTATION_IMAGE_NAME.to_string(), name.full());
                if let Some(tag) = name.tag() {
                    ann.insert(ANNOTATION_REF_NAME.to_string(), tag.to_string());
                }
                d.set_annotations(Some(ann));
            }
            index_entries.push(d);
        };
        if item.names.is_empty() {
            descriptor_for(None);
        }
        for name in &item.names {
            descriptor_for(Some(name));
        }
        blobs.insert(
            manifest_digest.clone(),
            (
                manifest_bytes.len() as u64,
                BlobSource::Bytes(manifest_bytes),
            ),
        );
        let tags: Vec<String> = item
            .names
            .iter()
            .filter(|n| n.tag().is_some())
            .map(|n| n.to_string())
            .collect();
        for name in &item.names {
            if let Some(tag) = name.tag() {
                let top = manifest
                    .layers()
                    .last()
                    .map(|l| l.digest().to_string())
                    .unwrap_or_else(|| config_digest.clone());
                repositories
                    .entry(name.familiar_repository())
                    .or_default()
                    .insert(tag.to_string(), top[7..].to_string());
            }
        }
        docker_entries.push(DockerManifestEntry {
            config: format!("blobs/sha256/{}", &config_digest[7..]),
            repo_tags: Some(tags),
            layers: manifest
                .layers()
                .iter()
                .map(|l| format!("blobs/sha256/{}", &l.digest().to_string()[7..]))
                .collect(),
        });
    }
    for (size, _) in blobs.values() {
        total += size;
    }

    let mut progress = Progress::new("Writing archive", Some(total), quiet);
    let mut tar = tar::Builder::new(ProgressWriter {
        inner: out,
        progress: &mut progress,
    });
    append_dir(&mut tar, "blobs/")?;
    append_dir(&mut tar, "blobs/sha256/")?;
    for (digest, (size, source)) in &blobs {
        let name = format!("blobs/sha256/{}", &digest[7..]);
        match source {
            BlobSource::Store(d) => append_file(&mut tar, &name, *size, store.open_blob(d)?)?,
            BlobSource::Temp(t) => append_file(&mut tar, &name, *size, t.reopen()?)?,
            BlobSource::Bytes(b) => append_file(&mut tar, &name, *size, &b[..])?,
        }
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": index_entries,
    });
    append_bytes(&mut tar, "index.json", &serde_json::to_vec(&index)?)?;
    append_bytes(&mut tar, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    if format == ArchiveFormat::Docker {
        append_bytes(
            &mut tar,
            "manifest.json",
            &serde_json::to_vec(&docker_entries)?,
        )?;
        if !repositories.is_empty() {
            append_bytes(
                &mut tar,
                "repositories",
                &serde_json::to_vec(&repositories)?,
            )?;
        }
    }
    let mut w = tar.into_inner().context("writing the archive")?;
    w.flush().context("writing the archive")?;
    drop(w);
    progress.finish();
    Ok(())
}

fn header(name: &str, size: u64, kind: tar::EntryType, mode: u32) -> Result<tar::Header> {
    let mut h = tar::Header::new_ustar();
    h.set_path(name)?;
    h.set_size(size);
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_cksum();
    Ok(h)
}

fn append_dir<W: Write>(tar: &mut tar::Builder<W>, name: &str) -> Result<()> {
    let h = header(name, 0, tar::EntryType::Directory, 0o755)?;
    tar.append(&h, io::empty()).context("writing the archive")
}

fn append_file<W: Write>(
    tar: &mut tar::Builder<W>,
    name: &str,
    size: u64,
    data: impl Read,
) -> Result<()> {
    let h = header(name, size, tar::EntryType::Regular, 0o644)?;
    tar.append(&h, data.take(size))
        .with_context(|| format!("writing {name} to the archive"))
}

fn append_bytes<W: Write>(tar: &mut tar::Builder<W>, name: &str, data: &[u8]) -> Result<()> {
    append_file(tar, name, data.len() as u64, data)
}

// ---------------------------------------------------------------------------------------------
// Loading

/// An image that [`load`] stored.
#[derive(Debug, Clone)]
pub struct LoadedImage {
    pub manifest_digest: String,
    pub config_digest: String,
    pub names: Vec<Reference>,
}

/// The archive unpacked into a private temp dir (regular files only; symlinks, which old docker
/// archives use for repeated layers, are kept as a map and resolved inside the archive).
struct Unpacked {
    dir: tempfile::TempDir,
    links: HashMap<String, String>,
    /// Files already moved into the store, by archive path.
    moved: HashMap<String, crate::store::Blob>,
}

fn clean_archive_path(raw: &[u8]) -> Result<String> {
    let mut parts = Vec::new();
    for part in raw.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => bail!(
                "archive entry {:?} climbs out with `..`",
                String::from_utf8_lossy(raw)
            ),
            p => parts.push(
                std::str::from_utf8(p)
                    .with_context(|| {
                        format!(
                            "archive entry {:?} is not UTF-8",
                            String::from_utf8_lossy(raw)
                        )
                    })?
                    .to_string(),
            ),
        }
    }
    Ok(parts.join("/"))
}

impl Unpacked {
    fn read(store: &Store, input: impl Read) -> Result<Unpacked> {
        let dir = tempfile::Builder::new()
            .prefix("load.")
            .tempdir_in(store.tmp_dir())?;
        let mut links = HashMap::new();
        let mut archive = tar::Archive::new(input);
        for entry in archive.entries().context("not a tar archive")? {
            let mut entry = entry.context("corrupt archive")?;
            let name = clean_archive_path(&entry.path_bytes())?;
            if name.is_empty() {
                continue;
            }
            match entry.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let dest = dir.path().join(&name);
                    if let Some(parent) = dest.parent() {
                        fs::create_dir_all(parent)?;
                    }
                    let mut f =
                        fs::File::create(&dest).with_context(|| format!("extracting {name}"))?;
                    io::copy(&mut entry, &mut f).with_context(|| format!("extracting {name}"))?;
                }
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    let target = entry.link_name_bytes().unwrap_or_default().into_owned();
                    let resolved = if entry.header().entry_type() == tar::EntryType::Symlink
                        && !target.starts_with(b"/")
                    {
                        let parent = name.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
                        let mut joined = parent.as_bytes().to_vec();
                        joined.push(b'/');
                        joined.extend_from_slice(&target);
                        normalise_dots(&joined)?
                    } else {
                        clean_archive_path(&target)?
                    };
                    links.insert(name, resolved);
                }
                _ => {}
            }
        }
        // Trailing data after the end marker (e.g. padding from gzip wrappers) is ignored.
        Ok(Unpacked {
            dir,
            links,
            moved: HashMap::new(),
        })
    }

    /// The archive path a name refers to after following in-archive links.
    fn resolve(&self, name: &str) -> Result<String> {
        let mut name = clean_archive_path(name.as_bytes())?;
        for _ in 0..16 {
            match self.links.get(&name) {
                Some(t) => name = t.clone(),
                None => return Ok(name),
            }
        }
        bail!("{name}: too many links in the archive")
    }

    fn exists(&self, name: &str) -> bool {
        self.resolve(name)
            .is_ok_and(|n| self.moved.contains_key(&n) || self.dir.path().join(&n).is_file())
    }

    fn path(&self, name: &str) -> Result<PathBuf> {
        Ok(self.dir.path().join(self.resolve(name)?))
    }

    fn read_small(&self, name: &str) -> Result<Vec<u8>> {
        let path = self.path(name)?;
        fs::read(&path).with_context(|| format!("{name} is missing from the archive"))
    }

    /// Moves an archive file into the store (verified against `expected` when given).
    fn store_blob(
        &mut self,
        store: &Store,
        name: &str,
        expected: Option<&str>,
    ) -> Result<crate::store::Blob> {
        let resolved = self.resolve(name)?;
        if let Some(blob) = self.moved.get(&resolved) {
            if expected.is_some_and(|e| e != blob.digest) {
                bail!("{name}: content does not match its digest");
            }
            return Ok(blob.clone());
        }
        let path = self.dir.path().join(&resolved);
        if !path.is_file() {
            if let Some(e) = expected {
                if store.has_blob(e) {
                    return Ok(crate::store::Blob {
                        digest: e.to_string(),
                        size: store.blob_size(e).unwrap_or(0),
                    });
                }
            }
            bail!("{name} is missing from the archive");
        }
        let blob = store
            .put_blob_file(&path, expected)
            .with_context(|| format!("storing {name}"))?;
        self.moved.insert(resolved, blob.clone());
        Ok(blob)
    }
}

fn normalise_dots(raw: &[u8]) -> Result<String> {
    let mut parts: Vec<&[u8]> = Vec::new();
    for part in raw.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                if parts.pop().is_none() {
                    bail!(
                        "link {:?} climbs out of the archive",
                        String::from_utf8_lossy(raw)
                    );
                }
            }
            p => parts.push(p),
        }
    }
    let joined = parts.join(&b'/');
    String::from_utf8(joined).context("link target is not UTF-8")
}

fn blob_name(digest: &str) -> Result<String> {
    Ok(format!("blobs/sha256/{}", digest_hex(digest)?))
}

/// Reads an archive (docker or OCI layout; gzip/zstd/uncompressed) and stores its images.
/// `total`: the input's size when known (for progress).
pub fn load(
    store: &Store,
    input: impl Read,
    total: Option<u64>,
    quiet: bool,
) -> Result<Vec<LoadedImage>> {
    let mut progress = Progress::new("Reading archive", total, quiet);
    let (_, stream) = decompress(ProgressReader {
        inner: input,
        progress: &mut progress,
    })
    .context("reading the archive")?;
    let mut unpacked = Unpacked::read(store, stream)?;
    progress.finish();
    drop(progress);

    let docker: Option<Vec<DockerManifestEntry>> = if unpacked.exists("manifest.json") {
        Some(
            serde_json::from_slice(&unpacked.read_small("manifest.json")?)
                .context("manifest.json: not a docker archive manifest")?,
        )
    } else {
        None
    };
    if unpacked.exists("index.json") {
        load_oci(store, &mut unpacked, docker.as_deref())
    } else if let Some(entries) = docker {
        load_docker(store, &mut unpacked, &entries)
    } else {
        bail!("not an OCI layout or docker archive (no index.json or manifest.json)")
    }
}

fn parse_names(tags: &[String]) -> Result<Vec<Reference>> {
    tags.iter()
        .map(|t| {
            Reference::parse(t).with_context(|| format!("bad image name {t:?} in the archive"))
        })
        .collect()
}

fn load_oci(
    store: &Store,
    unpacked: &mut Unpacked,
    docker: Option<&[DockerManifestEntry]>,
) -> Result<Vec<LoadedImage>> {
    let index: ImageIndex = serde_json::from_slice(&unpacked.read_small("index.json")?)
        .context("index.json: not an OCI image index")?;
    // manifest digest -> names
    let mut wanted: Vec<(Descriptor, Vec<Reference>)> = Vec::new();
    let mut queue: Vec<(Descriptor, Vec<Reference>)> = index
        .manifests()
        .iter()
        .map(|d| Ok((d.clone(), names_from_annotations(d)?)))
        .collect::<Result<_>>()?;
    let mut depth = 0;
    while let Some((desc, names)) = queue.pop() {
        let media = desc.media_type().to_string();
        if media.contains("index") || media.contains("manifest.list") {
            depth += 1;
            if depth > 8 {
                bail!("index.json: nested indexes too deep");
            }
            let bytes = unpacked.read_small(&blob_name(desc.digest().as_ref())?)?;
            if crate::digest::sha256_digest(&bytes) != desc.digest().to_string() {
                bail!("index {} does not match its digest", desc.digest());
            }
            let nested: ImageIndex =
                serde_json::from_slice(&bytes).context("parsing a nested index")?;
            let chosen = pick_platform(nested.manifests()).with_context(|| {
                format!(
                    "index {} has no linux/{} image",
                    desc.digest(),
                    super::image::host_architecture()
                )
            })?;
            queue.push((chosen.clone(), names));
        } else {
            wanted.push((desc, names));
        }
    }
    wanted.reverse();
    // Merge names for the same manifest.
    let mut merged: Vec<(Descriptor, Vec<Reference>)> = Vec::new();
    for (d, names) in wanted {
        match merged.iter_mut().find(|(m, _)| m.digest() == d.digest()) {
            Some((_, existing)) => existing.extend(names),
            None => merged.push((d, names)),
        }
    }
    let mut loaded = Vec::new();
    for (desc, mut names) in merged {
        let digest = desc.digest().to_string();
        let bytes = unpacked.read_small(&blob_name(&digest)?)?;
        if crate::digest::sha256_digest(&bytes) != digest {
            bail!("manifest {digest} does not match its digest: the archive is corrupt");
        }
        let manifest: ImageManifest = serde_json::from_slice(&bytes)
            .with_context(|| format!("manifest {digest}: not an image manifest"))?;
        let config_digest = manifest.config().digest().to_string();
        if let Some(entries) = docker {
            for e in entries {
                if e.config.ends_with(&config_digest[7..]) {
                    names.extend(parse_names(e.repo_tags.as_deref().unwrap_or_default())?);
                }
            }
        }
        names.sort();
        names.dedup();
        unpacked.store_blob(store, &blob_name(&config_digest)?, Some(&config_digest))?;
        for layer in manifest.layers() {
            let d = layer.digest().to_string();
            unpacked.store_blob(store, &blob_name(&d)?, Some(&d))?;
        }
        let manifest_digest = store.add_manifest_with_names(&bytes, &names)?;
        loaded.push(LoadedImage {
            manifest_digest,
            config_digest,
            names,
        });
    }
    Ok(loaded)
}

fn names_from_annotations(d: &Descriptor) -> Result<Vec<Reference>> {
    let Some(ann) = d.annotations() else {
        return Ok(Vec::new());
    };
    if let Some(full) = ann.get(ANNOTATION_IMAGE_NAME) {
        return Ok(vec![Reference::parse(full).with_context(|| {
            format!("bad {ANNOTATION_IMAGE_NAME} {full:?}")
        })?]);
    }
    if let Some(r) = ann.get(ANNOTATION_REF_NAME) {
        // A bare tag ("latest") names no repository; "name:tag" or "host/name" does.
        if r.contains(':') || r.contains('/') {
            if let Ok(reference) = Reference::parse(r) {
                return Ok(vec![reference]);
            }
        }
    }
    Ok(Vec::new())
}

fn pick_platform(manifests: &[Descriptor]) -> Option<&Descriptor> {
    let arch = super::image::host_architecture();
    manifests
        .iter()
        .find(|m| {
            m.platform().as_ref().is_some_and(|p| {
                p.os().to_string() == "linux" && p.architecture().to_string() == arch
            })
        })
        .or(if manifests.len() == 1 {
            manifests.first()
        } else {
            None
        })
}

fn load_docker(
    store: &Store,
    unpacked: &mut Unpacked,
    entries: &[DockerManifestEntry],
) -> Result<Vec<LoadedImage>> {
    // Check that everything is there before storing anything.
    for e in entries {
        for name in std::iter::once(&e.config).chain(&e.layers) {
            if !unpacked.exists(name) {
                bail!("manifest.json names {name}, which is missing from the archive");
            }
        }
    }
    let mut loaded = Vec::new();
    for e in entries {
        let config_bytes = unpacked.read_small(&e.config)?;
        let config: ImageConfiguration = serde_json::from_slice(&config_bytes)
            .with_context(|| format!("{}: not an image config", e.config))?;
        let diff_ids = config.rootfs().diff_ids().clone();
        if diff_ids.len() != e.layers.len() {
            bail!(
                "{}: the config lists {} layers but manifest.json {}",
                e.config,
                diff_ids.len(),
                e.layers.len()
            );
        }
        let config_blob = unpacked.store_blob(store, &e.config, None)?;
        let mut layers = Vec::new();
        for (name, diff_id) in e.layers.iter().zip(&diff_ids) {
            let path = unpacked.path(name)?;
            let compression = if path.is_file() {
                let mut magic = [0u8; 4];
                let n = fs::File::open(&path)?.read(&mut magic)?;
                Compression::detect(&magic[..n])
            } else {
                Compression::None
            };
            if compression != Compression::None {
                verify_diff_id(&path, diff_id).with_context(|| format!("layer {name}"))?;
            }
            let expected = (compression == Compression::None).then_some(diff_id.as_str());
            let blob = unpacked
                .store_blob(store, name, expected)
                .with_context(|| format!("layer {name} does not match the DiffID in the config"))?;
            store.record_layer(&crate::store::LayerRecord {
                digest: blob.digest.clone(),
                diff_id: diff_id.clone(),
                media_type: compression.layer_media_type().to_string(),
                size: blob.size,
            })?;
            layers.push(Descriptor::new(
                compression.layer_media_type(),
                blob.size,
                blob.digest.parse::<oci_spec::image::Digest>()?,
            ));
        }
        let manifest = ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageManifest)
            .config(Descriptor::new(
                MediaType::ImageConfig,
                config_blob.size,
                config_blob.digest.parse::<oci_spec::image::Digest>()?,
            ))
            .layers(layers)
            .build()?;
        let bytes = canonical_json(&manifest)?;
        let names = parse_names(e.repo_tags.as_deref().unwrap_or_default())?;
        let manifest_digest = store.add_manifest_with_names(&bytes, &names)?;
        loaded.push(LoadedImage {
            manifest_digest,
            config_digest: config_blob.digest,
            names,
        });
    }
    Ok(loaded)
}

fn verify_diff_id(path: &Path, diff_id: &str) -> Result<()> {
    let (_, mut r) = decompress(fs::File::open(path)?)?;
    let mut hasher = crate::digest::Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let got = format!("sha256:{}", hex::encode(hasher.finalize()));
    if got != diff_id {
        bail!("uncompressed content is {got}, the config says {diff_id}: the archive is corrupt");
    }
    Ok(())
}
