//! Image archives: `kiln save` writes docker archives (what `docker load` reads: manifest.json,
//! repositories, plus the OCI layout docker 25+ also writes) and OCI image layouts (oci-layout,
//! index.json, blobs/sha256); `kiln load` reads both, whether kiln, docker or skopeo wrote them,
//! compressed as a whole or not.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};
use oci_spec::image::{
    Descriptor, ImageConfiguration, ImageIndex, ImageManifest, ImageManifestBuilder, MediaType,
};
use serde::{Deserialize, Serialize};

use super::compress::{decompress, Compression, Compressor};
use super::progress::{Progress, ProgressReader, ProgressWriter};
use super::targuard::TarGuard;
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
    // An OCI archive of a multi-platform image holds its index and every platform's manifest:
    // the platforms are saved as nameless items, then the index is written over them.
    let mut expanded: Vec<SaveItem> = Vec::new();
    let mut indexes = Vec::new();
    // docker's manifest.json holds single images: of an index, this machine's platform's (else
    // the first) carries the index's names there; the other platforms are left out of it.
    let mut docker_names: Vec<Option<Vec<Reference>>> = Vec::new();
    for item in items {
        match store.index(&item.manifest_digest)? {
            Some(index) if format == ArchiveFormat::Oci => {
                let start = expanded.len();
                let host = crate::platform::Platform::host();
                let chosen = index
                    .manifests
                    .iter()
                    .position(|m| host.matches(&m.platform))
                    .unwrap_or(0);
                for (i, m) in index.manifests.iter().enumerate() {
                    expanded.push(SaveItem {
                        manifest_digest: m.manifest_digest.clone(),
                        names: Vec::new(),
                    });
                    docker_names.push((i == chosen).then(|| item.names.clone()));
                }
                indexes.push((start..expanded.len(), item.clone(), index));
            }
            Some(index) => bail!(
                "image {} is multi-platform ({}): the docker format holds one platform; save \
                 one (kiln save --platform PLATFORM) or use --format oci",
                item.manifest_digest,
                index.platform_list()
            ),
            None => {
                expanded.push(item.clone());
                docker_names.push(Some(item.names.clone()));
            }
        }
    }
    let mut entry_of_item = Vec::new();
    for (item, docker_names) in expanded.iter().zip(&docker_names) {
        entry_of_item.push(index_entries.len());
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
                // A layer kept at a registry (`store::remote`) is fetched now.
                store.ensure_blob(&d)?;
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
        let Some(docker_names) = docker_names else {
            continue;
        };
        let tags: Vec<String> = docker_names
            .iter()
            .filter(|n| n.tag().is_some())
            .map(|n| n.to_string())
            .collect();
        for name in docker_names {
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
    if !indexes.is_empty() {
        let mut children = std::collections::BTreeSet::new();
        for (range, item, index) in &indexes {
            let mut changed = false;
            let mut entries = Vec::new();
            for (i, m) in range.clone().zip(&index.manifests) {
                let d: &Descriptor = &index_entries[entry_of_item[i]];
                children.insert(entry_of_item[i]);
                changed |= d.digest().to_string() != m.manifest_digest;
                let mut p = serde_json::json!({
                    "architecture": m.platform.architecture,
                    "os": m.platform.os,
                });
                if let Some(v) = &m.platform.variant {
                    p["variant"] = v.clone().into();
                }
                entries.push(serde_json::json!({
                    "mediaType": d.media_type().to_string(),
                    "digest": d.digest().to_string(),
                    "size": d.size(),
                    "platform": p,
                }));
            }
            // Unchanged platforms: the index as stored (its digest kept), else one over the
            // recompressed manifests.
            let bytes = if changed {
                serde_json::to_vec(&serde_json::json!({
                    "schemaVersion": 2,
                    "mediaType": "application/vnd.oci.image.index.v1+json",
                    "manifests": entries,
                }))?
            } else {
                store.read_blob(&index.digest)?
            };
            let digest = crate::digest::sha256_digest(&bytes);
            let size = bytes.len() as u64;
            blobs.insert(digest.clone(), (size, BlobSource::Bytes(bytes)));
            let names: Vec<Option<&Reference>> = if item.names.is_empty() {
                vec![None]
            } else {
                item.names.iter().map(Some).collect()
            };
            for name in names {
                let mut d = Descriptor::new(
                    MediaType::ImageIndex,
                    size,
                    digest.parse::<oci_spec::image::Digest>()?,
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
            }
        }
        // The platforms' manifests are reached through their index, not listed on their own.
        let mut i = 0;
        index_entries.retain(|_| {
            let keep = !children.contains(&i);
            i += 1;
            keep
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
    // Both formats carry docker's manifest.json (and repositories) beside index.json, as `docker
    // save` does since Docker 25: one archive is an OCI layout and loads with `docker load`.
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

/// The most kiln reads into memory of one JSON member of an archive (manifest.json, index.json,
/// a manifest, an index or a config). Registries cap manifests at 4 MiB too.
pub const MAX_JSON_MEMBER: u64 = 4 << 20;
/// The first pass over a compressed archive keeps small members that look like JSON, up to
/// this much in all, so that reading the manifests and configs needs no second decompression.
const JSON_CACHE_BUDGET: u64 = 32 << 20;
/// The most members an archive may have (docker's archives have a few per layer).
pub const MAX_MEMBERS: usize = 100_000;

/// One regular file of the archive: its size and where its data starts in the tar stream.
#[derive(Debug, Clone, Copy)]
struct Member {
    size: u64,
    offset: u64,
}

/// The archive's table of contents, read in a first pass that writes nothing: regular files,
/// and the symlinks and hard links old docker archives use for repeated layers (resolved inside
/// the archive). Members are then read (JSON into memory, capped) or streamed into the store
/// only when the manifests reference them; nothing else is ever written.
struct ArchiveIndex<'f> {
    file: &'f fs::File,
    /// Where the archive starts in `file`.
    start: u64,
    compression: Compression,
    files: HashMap<String, Member>,
    links: HashMap<String, String>,
    /// Members read into memory, by archive path.
    json: HashMap<String, Vec<u8>>,
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

/// What one tar entry is, for the index.
enum EntryKind {
    File,
    Link(String),
    Other,
}

fn entry_kind<R: Read>(name: &str, entry: &tar::Entry<R>) -> Result<EntryKind> {
    Ok(match entry.header().entry_type() {
        tar::EntryType::Regular | tar::EntryType::Continuous => EntryKind::File,
        kind @ (tar::EntryType::Symlink | tar::EntryType::Link) => {
            let target = entry.link_name_bytes().unwrap_or_default().into_owned();
            let resolved = if kind == tar::EntryType::Symlink && !target.starts_with(b"/") {
                let parent = name.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
                let mut joined = parent.as_bytes().to_vec();
                joined.push(b'/');
                joined.extend_from_slice(&target);
                normalise_dots(&joined)?
            } else {
                clean_archive_path(&target)?
            };
            EntryKind::Link(resolved)
        }
        _ => EntryKind::Other,
    })
}

/// Reads a whole member into memory, refusing one over [`MAX_JSON_MEMBER`].
fn read_json_member(name: &str, size: u64, r: &mut dyn Read) -> Result<Vec<u8>> {
    if size > MAX_JSON_MEMBER {
        bail!(
            "{name} in the archive is {}, over the {} kiln reads of an archive's JSON: \
             not an image archive (or a hostile one)",
            crate::store::space::human(size),
            crate::store::space::human(MAX_JSON_MEMBER)
        );
    }
    let mut buf = Vec::with_capacity(size as usize);
    r.take(size)
        .read_to_end(&mut buf)
        .with_context(|| format!("reading {name} from the archive"))?;
    Ok(buf)
}

/// What a pass over the archive does with each entry: its cleaned name, kind, size and data
/// offset, and its data.
type Visit<'a> = dyn FnMut(&str, EntryKind, Member, &mut dyn Read) -> Result<()> + 'a;

/// Calls `f` for every entry.
fn walk_entries<R: Read>(entries: io::Result<tar::Entries<R>>, f: &mut Visit) -> Result<()> {
    let mut count = 0usize;
    for entry in entries.context("not a tar archive")? {
        let mut entry = entry.context("corrupt archive")?;
        count += 1;
        if count > MAX_MEMBERS {
            bail!("the archive has more than {MAX_MEMBERS} members: not an image archive");
        }
        let name = clean_archive_path(&entry.path_bytes())?;
        if name.is_empty() {
            continue;
        }
        let kind = entry_kind(&name, &entry)?;
        let member = Member {
            size: entry.size(),
            offset: entry.raw_file_position(),
        };
        f(&name, kind, member, &mut entry)?;
    }
    // Trailing data after the end marker (e.g. padding from gzip wrappers) is ignored.
    Ok(())
}

impl<'f> ArchiveIndex<'f> {
    /// The first pass: the table of contents, plus manifest.json and index.json (and, for a
    /// compressed archive, other small JSON members) in memory.
    fn read(file: &'f fs::File, progress: &mut Progress) -> Result<ArchiveIndex<'f>> {
        let mut raw = file;
        let start = raw.stream_position().context("reading the archive")?;
        let mut magic = [0u8; 6];
        let n = read_up_to(&mut raw, &mut magic)?;
        let compression = Compression::detect(&magic[..n]);
        let mut index = ArchiveIndex {
            file,
            start,
            compression,
            files: HashMap::new(),
            links: HashMap::new(),
            json: HashMap::new(),
        };
        let mut cached = 0u64;
        let mut json = HashMap::new();
        let mut files = HashMap::new();
        let mut links = HashMap::new();
        let mut visit = |name: &str, kind: EntryKind, m: Member, r: &mut dyn Read| -> Result<()> {
            match kind {
                EntryKind::File => {
                    links.remove(name);
                    json.remove(name);
                    files.insert(name.to_string(), m);
                    if name == "manifest.json" || name == "index.json" {
                        json.insert(name.to_string(), read_json_member(name, m.size, r)?);
                    } else if compression != Compression::None
                        && m.size <= MAX_JSON_MEMBER
                        && cached + m.size <= JSON_CACHE_BUDGET
                    {
                        let mut first = [0u8; 1];
                        if read_up_to(r, &mut first)? == 1 && first[0] == b'{' {
                            let mut buf = first.to_vec();
                            buf.extend(read_json_member(name, m.size - 1, r)?);
                            cached += m.size;
                            json.insert(name.to_string(), buf);
                        }
                    }
                }
                EntryKind::Link(target) => {
                    files.remove(name);
                    json.remove(name);
                    links.insert(name.to_string(), target);
                }
                EntryKind::Other => {}
            }
            Ok(())
        };
        index.walk(Some(progress), &mut visit)?;
        index.files = files;
        index.links = links;
        index.json = json;
        Ok(index)
    }

    /// One pass over the archive's entries.
    fn walk(&self, progress: Option<&mut Progress>, f: &mut Visit) -> Result<()> {
        let mut raw = self.file;
        raw.seek(SeekFrom::Start(self.start))
            .context("reading the archive")?;
        if self.compression == Compression::None {
            // Seek over the data of the members not read.
            let mut archive = tar::Archive::new(raw);
            walk_entries(archive.entries_with_seek(), f)?;
            if let Some(p) = progress {
                p.inc(raw.stream_position().unwrap_or(self.start) - self.start);
            }
            return Ok(());
        }
        match progress {
            Some(progress) => {
                let (_, stream) = decompress(ProgressReader {
                    inner: raw,
                    progress,
                })
                .context("reading the archive")?;
                walk_entries(tar::Archive::new(TarGuard::new(stream)).entries(), f)
            }
            None => {
                let (_, stream) = decompress(raw).context("reading the archive")?;
                walk_entries(tar::Archive::new(TarGuard::new(stream)).entries(), f)
            }
        }
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
            .is_ok_and(|n| self.files.contains_key(&n))
    }

    /// The regular file `name` refers to.
    fn member(&self, name: &str) -> Result<(String, Member)> {
        let resolved = self.resolve(name)?;
        match self.files.get(&resolved) {
            Some(m) => Ok((resolved, *m)),
            None => bail!("{name} is missing from the archive (or is not a regular file)"),
        }
    }

    /// Reads the named members into memory (each at most [`MAX_JSON_MEMBER`]): one pass over a
    /// compressed archive, seeks in an uncompressed one.
    fn fetch_json(&mut self, names: &[String]) -> Result<()> {
        let mut need: HashMap<u64, (String, String)> = HashMap::new();
        for name in names {
            let (resolved, m) = self.member(name)?;
            if self.json.contains_key(&resolved) {
                continue;
            }
            if m.size > MAX_JSON_MEMBER {
                read_json_member(name, m.size, &mut io::empty())?;
            }
            need.insert(m.offset, (resolved, name.clone()));
        }
        if need.is_empty() {
            return Ok(());
        }
        let mut got = HashMap::new();
        if self.compression == Compression::None {
            let mut raw = self.file;
            for (offset, (resolved, name)) in &need {
                raw.seek(SeekFrom::Start(self.start + offset))?;
                let size = self.files[resolved].size;
                got.insert(resolved.clone(), read_json_member(name, size, &mut raw)?);
            }
        } else {
            let mut visit = |name: &str, _: EntryKind, m: Member, r: &mut dyn Read| -> Result<()> {
                if let Some((resolved, asked)) = need.get(&m.offset) {
                    if resolved == name {
                        got.insert(resolved.clone(), read_json_member(asked, m.size, r)?);
                    }
                }
                Ok(())
            };
            self.walk(None, &mut visit)?;
        }
        self.json.extend(got);
        Ok(())
    }

    /// A member read into memory (by [`ArchiveIndex::fetch_json`] or the first pass).
    fn read_small(&mut self, name: &str) -> Result<Vec<u8>> {
        self.fetch_json(&[name.to_string()])?;
        let (resolved, _) = self.member(name)?;
        Ok(self.json[&resolved].clone())
    }

    /// Streams the named members (with the digest each must have, when known) into the store,
    /// in one pass (or by seeking); members held in memory are stored from there. The result is
    /// by the name asked for.
    fn store_members(
        &mut self,
        store: &Store,
        wanted: &[(String, Option<String>)],
        quiet: bool,
    ) -> Result<HashMap<String, crate::store::Blob>> {
        let mut stored: HashMap<String, crate::store::Blob> = HashMap::new();
        // offset -> (resolved, expected, a name asked for)
        let mut need: BTreeMap<u64, (String, Option<String>, String)> = BTreeMap::new();
        let mut total = 0u64;
        for (name, expected) in wanted {
            let (resolved, m) = self.member(name)?;
            if let Some(bytes) = self.json.get(&resolved) {
                let blob = store
                    .put_blob(&bytes[..], expected.as_deref())
                    .with_context(|| format!("storing {name}"))?;
                stored.insert(resolved, blob);
                continue;
            }
            if let Some(e) = expected {
                if store.has_blob(e) {
                    stored.insert(
                        resolved,
                        crate::store::Blob {
                            digest: e.clone(),
                            size: store.blob_size(e).unwrap_or(m.size),
                        },
                    );
                    continue;
                }
            }
            if need
                .insert(m.offset, (resolved, expected.clone(), name.clone()))
                .is_none()
            {
                total += m.size;
            }
        }
        if !need.is_empty() {
            let mut progress = Progress::new("Storing layers", Some(total), quiet);
            if self.compression == Compression::None {
                let mut raw = self.file;
                for (offset, (resolved, expected, name)) in &need {
                    raw.seek(SeekFrom::Start(self.start + offset))?;
                    let size = self.files[resolved].size;
                    let input = ProgressReader {
                        inner: (&mut raw).take(size),
                        progress: &mut progress,
                    };
                    let blob = store
                        .put_blob(input, expected.as_deref())
                        .with_context(|| format!("storing {name}"))?;
                    stored.insert(resolved.clone(), blob);
                }
            } else {
                let mut visit =
                    |name: &str, _: EntryKind, m: Member, r: &mut dyn Read| -> Result<()> {
                        if let Some((resolved, expected, asked)) = need.get(&m.offset) {
                            if resolved == name {
                                let input = ProgressReader {
                                    inner: r,
                                    progress: &mut progress,
                                };
                                let blob = store
                                    .put_blob(input, expected.as_deref())
                                    .with_context(|| format!("storing {asked}"))?;
                                stored.insert(resolved.clone(), blob);
                            }
                        }
                        Ok(())
                    };
                self.walk(None, &mut visit)?;
            }
            progress.finish();
        }
        let mut out = HashMap::new();
        for (name, _) in wanted {
            let resolved = self.resolve(name)?;
            let blob = stored
                .get(&resolved)
                .with_context(|| format!("{name} is missing from the archive"))?;
            out.insert(name.clone(), blob.clone());
        }
        Ok(out)
    }
}

fn read_up_to(r: &mut dyn Read, buf: &mut [u8]) -> Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("reading the archive"),
        }
    }
    Ok(filled)
}

/// Copies a stream that cannot be read twice (stdin from a pipe) to a temp file in the store's
/// `tmp/`, for [`load`]; the free-space floor applies. Removed when dropped.
pub fn spool(store: &Store, mut input: impl Read, quiet: bool) -> Result<tempfile::NamedTempFile> {
    let mut tmp = tempfile::Builder::new()
        .prefix("load-input.")
        .tempfile_in(store.tmp_dir())?;
    let mut space = crate::store::space::SpaceGuard::new(
        &store.tmp_dir(),
        crate::store::space::Limits::current()?,
    )?;
    let mut progress = Progress::new("Receiving archive", None, quiet);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("reading the archive"),
        };
        tmp.write_all(&buf[..n]).context("spooling the archive")?;
        space.wrote(n as u64).context("spooling the archive")?;
        progress.inc(n as u64);
    }
    progress.finish();
    tmp.as_file_mut().seek(SeekFrom::Start(0))?;
    Ok(tmp)
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

/// Reads an archive (docker or OCI layout; gzip/zstd/uncompressed) from `file` (from its current
/// position) and stores its images. The archive's structure is checked before anything is
/// written: the members the manifests name must exist, the JSON ones are read into memory up to
/// [`MAX_JSON_MEMBER`], and only the referenced members are then streamed into the store.
pub fn load(store: &Store, file: &fs::File, quiet: bool) -> Result<Vec<LoadedImage>> {
    let total = file
        .metadata()
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.len());
    let mut progress = Progress::new("Reading archive", total, quiet);
    let mut index = ArchiveIndex::read(file, &mut progress)?;
    progress.finish();
    drop(progress);

    let docker: Option<Vec<DockerManifestEntry>> = if index.exists("manifest.json") {
        Some(
            serde_json::from_slice(&index.read_small("manifest.json")?)
                .context("manifest.json: not a docker archive manifest")?,
        )
    } else {
        None
    };
    if index.exists("index.json") {
        load_oci(store, &mut index, docker.as_deref(), quiet)
    } else if let Some(entries) = docker {
        load_docker(store, &mut index, &entries, quiet)
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
    index: &mut ArchiveIndex,
    docker: Option<&[DockerManifestEntry]>,
    quiet: bool,
) -> Result<Vec<LoadedImage>> {
    let top: ImageIndex = serde_json::from_slice(&index.read_small("index.json")?)
        .context("index.json: not an OCI image index")?;
    // manifest digest -> names
    let mut wanted: Vec<(Descriptor, Vec<Reference>)> = Vec::new();
    let mut queue: Vec<(Descriptor, Vec<Reference>)> = top
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
            let bytes = read_described(index, &desc)?;
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
    // Every manifest, then every blob they name, is checked before anything is stored.
    let manifest_names = merged
        .iter()
        .map(|(d, _)| blob_name(d.digest().as_ref()))
        .collect::<Result<Vec<_>>>()?;
    index.fetch_json(&manifest_names)?;
    let mut images = Vec::new();
    let mut blobs: Vec<(String, Option<String>)> = Vec::new();
    for (desc, names) in merged {
        let bytes = read_described(index, &desc)?;
        let digest = desc.digest().to_string();
        let manifest: ImageManifest = serde_json::from_slice(&bytes)
            .with_context(|| format!("manifest {digest}: not an image manifest"))?;
        for d in std::iter::once(manifest.config()).chain(manifest.layers()) {
            let name = blob_name(d.digest().as_ref())?;
            check_described(index, &name, d)?;
            blobs.push((name, Some(d.digest().to_string())));
        }
        images.push((bytes, manifest, names));
    }
    index.store_members(store, &blobs, quiet)?;
    let mut loaded = Vec::new();
    for (bytes, manifest, mut names) in images {
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
        let manifest_digest = store.add_manifest_with_names(&bytes, &names)?;
        loaded.push(LoadedImage {
            manifest_digest,
            config_digest,
            names,
        });
    }
    Ok(loaded)
}

/// Checks that the member for a descriptor exists with the size the descriptor says.
fn check_described(index: &ArchiveIndex, name: &str, desc: &Descriptor) -> Result<()> {
    let (_, m) = index
        .member(name)
        .with_context(|| format!("{} is referenced but not in the archive", desc.digest()))?;
    if m.size != desc.size() {
        bail!(
            "{name} is {} bytes in the archive, its descriptor says {}: the archive is corrupt",
            m.size,
            desc.size()
        );
    }
    Ok(())
}

/// A manifest or index named by a descriptor: read into memory, its size and digest checked.
fn read_described(index: &mut ArchiveIndex, desc: &Descriptor) -> Result<Vec<u8>> {
    let digest = desc.digest().to_string();
    let name = blob_name(&digest)?;
    check_described(index, &name, desc)?;
    let bytes = index.read_small(&name)?;
    if crate::digest::sha256_digest(&bytes) != digest {
        bail!("{name} does not match its digest {digest}: the archive is corrupt");
    }
    Ok(bytes)
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
    index: &mut ArchiveIndex,
    entries: &[DockerManifestEntry],
    quiet: bool,
) -> Result<Vec<LoadedImage>> {
    // Check that everything is there, and read the configs, before storing anything.
    for e in entries {
        for name in std::iter::once(&e.config).chain(&e.layers) {
            if !index.exists(name) {
                bail!("manifest.json names {name}, which is missing from the archive");
            }
        }
    }
    let config_names: Vec<String> = entries.iter().map(|e| e.config.clone()).collect();
    index.fetch_json(&config_names)?;
    let mut configs = Vec::new();
    for e in entries {
        let config_bytes = index.read_small(&e.config)?;
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
        configs.push(diff_ids);
    }
    let members: Vec<(String, Option<String>)> = entries
        .iter()
        .flat_map(|e| std::iter::once(&e.config).chain(&e.layers))
        .map(|n| (n.clone(), None))
        .collect();
    let stored = index.store_members(store, &members, quiet)?;
    let mut loaded = Vec::new();
    for (e, diff_ids) in entries.iter().zip(configs) {
        let config_blob = stored[&e.config].clone();
        let mut layers = Vec::new();
        for (name, diff_id) in e.layers.iter().zip(&diff_ids) {
            let blob = stored[name].clone();
            let path = store.blob_path(&blob.digest)?;
            let mut magic = [0u8; 4];
            let n = read_up_to(&mut fs::File::open(&path)?, &mut magic)?;
            let compression = Compression::detect(&magic[..n]);
            if compression == Compression::None {
                if &blob.digest != diff_id {
                    bail!(
                        "layer {name} does not match the DiffID in the config: it is {}, the \
                         config says {diff_id}: the archive is corrupt",
                        blob.digest
                    );
                }
            } else {
                verify_diff_id(&path, diff_id).with_context(|| format!("layer {name}"))?;
            }
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
