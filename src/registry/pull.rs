//! Pulling: manifest (through an index to one platform), config and layers, each verified
//! against its digest before it lands in the store.

use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{anyhow, bail, Context, Result};
use ureq::http::Method;

use super::client::{read_error_summary, Body, Client};
use super::local::LocalStore;
use super::manifest::{self, Descriptor, Manifest, Platform};
use super::progress::{self, Progress};
use super::{RegistryContext, RepoRef};

/// How many blobs download at once.
const PARALLEL_BLOBS: usize = 4;
/// Attempts for one blob whose connection broke mid-transfer.
const BLOB_ATTEMPTS: u32 = 3;

/// What a pull put in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PulledImage {
    /// The normalised name the image is stored under.
    pub name: String,
    /// The digest the tag resolved to at the registry (the index for a multi-platform image):
    /// a build cache keyed on it notices when the tag moves.
    pub resolved_digest: String,
    /// The platform manifest stored for the image.
    pub manifest_digest: String,
    pub config_digest: String,
    /// Which endpoint served it (a mirror or the registry itself).
    pub source: String,
}

/// Turns a non-success answer into an error that says what was missing.
pub fn status_error(
    resp: &mut ureq::http::Response<ureq::Body>,
    registry: &str,
    what: &str,
) -> anyhow::Error {
    let status = resp.status().as_u16();
    let summary = read_error_summary(resp);
    let code = summary.as_ref().map(|(c, _)| c.as_str()).unwrap_or("");
    let detail = summary
        .as_ref()
        .map(|(c, m)| format!(" ({c}: {m})"))
        .unwrap_or_default();
    match (status, code) {
        (404, "NAME_UNKNOWN") => anyhow!("{registry}: repository not found: {what}{detail}"),
        (404, "MANIFEST_UNKNOWN") | (404, _) if what.contains("manifest") => {
            anyhow!("{registry}: not found: {what}{detail}; check the tag or digest")
        }
        (403, _) | (401, _) => anyhow!(
            "{registry}: access denied to {what} (HTTP {status}){detail}; the repository may not exist or the login lacks permission"
        ),
        _ => anyhow!("{registry}: {what}: HTTP {status}{detail}"),
    }
}

/// A reader that counts what passes through (the store hashes and verifies it) and remembers
/// whether the transport failed (a broken connection is worth a retry, a digest mismatch is
/// not).
struct Verifying<'a, R> {
    inner: R,
    read: u64,
    limit: u64,
    io_failed: &'a AtomicBool,
    bar: &'a progress::Bar,
}

impl<R: Read> Read for Verifying<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self
            .inner
            .read(buf)
            .inspect_err(|_| self.io_failed.store(true, Ordering::SeqCst))?;
        self.read += n as u64;
        if self.read > self.limit {
            return Err(io::Error::other(format!(
                "the registry sent more than the {} bytes the manifest declares",
                self.limit
            )));
        }
        self.bar.inc(n as u64);
        Ok(n)
    }
}

pub(crate) fn fetch_manifest(
    client: &Client,
    repo: &str,
    reference: &str,
    display: &str,
) -> Result<(Vec<u8>, Option<String>, String)> {
    let url = client.url(&format!("/v2/{repo}/manifests/{reference}"));
    let accept = manifest::accept_header();
    let mut resp = client.send(Method::GET, &url, &[("Accept", &accept)], &Body::Empty)?;
    if resp.status().as_u16() != 200 {
        return Err(status_error(
            &mut resp,
            &client.name,
            &format!("manifest {display}"),
        ));
    }
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let header_digest = resp
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let bytes = resp
        .body_mut()
        .with_config()
        .limit(manifest::MAX_MANIFEST_BYTES)
        .read_to_vec()
        .with_context(|| format!("{}: reading manifest {display}", client.name))?;
    let digest = crate::digest::sha256_digest(&bytes);
    let expected = if reference.starts_with("sha256:") {
        Some(reference.to_string())
    } else {
        header_digest.filter(|d| d.starts_with("sha256:"))
    };
    if let Some(expected) = expected {
        if expected != digest {
            bail!(
                "{}: manifest {display} failed verification: expected {expected}, got {digest}; nothing was stored (a proxy or the registry corrupted it)",
                client.name
            );
        }
    }
    Ok((bytes, content_type, digest))
}

/// Downloads one blob into the store, verified, with retries for broken connections.
pub(crate) fn fetch_blob(
    client: &Client,
    repo: &str,
    desc: &Descriptor,
    store: &dyn LocalStore,
    progress: &Progress,
    verb: &str,
) -> Result<()> {
    if store.has_blob(&desc.digest) {
        progress
            .start(verb, &desc.digest, desc.size)
            .finish("already present");
        return Ok(());
    }
    let bar = progress.start(verb, &desc.digest, desc.size);
    let url = client.url(&format!("/v2/{repo}/blobs/{}", desc.digest));
    let mut attempt = 0;
    loop {
        attempt += 1;
        bar.reset();
        let io_failed = AtomicBool::new(false);
        let result = (|| -> Result<()> {
            let mut resp = client.send(Method::GET, &url, &[], &Body::Empty)?;
            if resp.status().as_u16() != 200 {
                return Err(status_error(
                    &mut resp,
                    &client.name,
                    &format!("blob {}", desc.digest),
                ));
            }
            let mut reader = Verifying {
                inner: resp.into_body().into_reader(),
                read: 0,
                limit: desc.size,
                io_failed: &io_failed,
                bar: &bar,
            };
            // Large reads: the store hashes and writes in big chunks instead of 8 KiB ones.
            let mut buffered = io::BufReader::with_capacity(1 << 20, &mut reader);
            store.put_blob(&mut buffered, &desc.digest)?;
            drop(buffered);
            // Nothing read: another pull (a second stage FROM the same image) stored the blob
            // meanwhile, and the store took it as present.
            let landed_meanwhile = reader.read == 0 && store.has_blob(&desc.digest);
            if reader.read != desc.size && !landed_meanwhile {
                // Cannot happen for a verified blob unless the manifest's size lies.
                bail!(
                    "blob {} has {} bytes, the manifest says {}",
                    desc.digest,
                    reader.read,
                    desc.size
                );
            }
            Ok(())
        })();
        match result {
            Ok(()) => {
                bar.finish("done");
                return Ok(());
            }
            Err(e) if io_failed.load(Ordering::SeqCst) && attempt < BLOB_ATTEMPTS => {
                progress.line(&format!(
                    "{}: transfer of {} broke ({e:#}); retrying",
                    client.name,
                    progress::short(&desc.digest)
                ));
                std::thread::sleep(std::time::Duration::from_millis(300 * attempt as u64));
            }
            Err(e) => {
                bar.finish("failed");
                return Err(e).with_context(|| {
                    format!(
                        "{}: downloading blob {} of {repo}; nothing was stored",
                        client.name, desc.digest
                    )
                });
            }
        }
    }
}

/// Pulls `r` from one endpoint.
pub(crate) fn pull_from(
    ctx: &RegistryContext,
    client: &Client,
    r: &RepoRef,
    store: &dyn LocalStore,
    platform: &Platform,
    progress: &Progress,
) -> Result<PulledImage> {
    let repo = &r.repository;
    let reference = r.reference();
    let display = r.to_string();
    let (bytes, content_type, resolved_digest) =
        fetch_manifest(client, repo, &reference, &display)?;
    let (parsed, _media_type) = manifest::parse(&bytes, content_type.as_deref())
        .with_context(|| format!("{}: manifest of {display}", client.name))?;
    let mut stored_first: Vec<(Vec<u8>, String)> = Vec::new();
    let (image, manifest_bytes, manifest_digest) = match parsed {
        Manifest::Image(m) => (m, bytes, resolved_digest.clone()),
        Manifest::Index(index) => {
            let entry = manifest::select_platform(&index, platform)
                .with_context(|| format!("{}: {display}", client.name))?;
            let (mbytes, mtype, mdigest) = fetch_manifest(
                client,
                repo,
                &entry.digest,
                &format!("{display} ({platform})"),
            )?;
            if mdigest != entry.digest {
                bail!(
                    "{}: manifest {} failed verification: got {mdigest}",
                    client.name,
                    entry.digest
                );
            }
            let (m, _) = manifest::parse(
                &mbytes,
                mtype.as_deref().or(Some(entry.media_type.as_str())),
            )?;
            let Manifest::Image(m) = m else {
                bail!("{}: {display}: the index entry for {platform} is itself an index (nested indexes are not supported)", client.name);
            };
            stored_first.push((bytes, resolved_digest.clone()));
            (m, mbytes, mdigest)
        }
    };
    let _ = ctx;
    fetch_blob(client, repo, &image.config, store, progress, "config")?;
    let layers: Vec<&Descriptor> = image
        .layers
        .iter()
        .filter(|d| d.is_distributable())
        .collect();
    progress::parallel(&layers, PARALLEL_BLOBS, |d| {
        fetch_blob(client, repo, d, store, progress, "layer")
    })?;
    // The manifest (and index) land last, so an image never names a blob that is missing.
    let name = r.name();
    let index_bytes = stored_first.first().map(|(b, _)| b.clone());
    for (b, d) in stored_first {
        store.put_blob(&mut b.as_slice(), &d)?;
    }
    // From an index: the name points at the index, with every platform pulled so far (an
    // earlier pull of another platform of the same index stays usable); the name never points
    // at the platform's manifest alone, which a concurrent pull of another platform would
    // take for the whole image.
    let stored = match &index_bytes {
        Some(_) => store.add_unnamed(&manifest_bytes),
        None => store.add_image(&name, &manifest_bytes),
    }
    .with_context(|| format!("storing {name}"))?;
    if stored != manifest_digest {
        bail!("the store recorded manifest {manifest_digest} as {stored}");
    }
    if let Some(index) = index_bytes {
        store
            .add_index(&name, &index)
            .with_context(|| format!("storing the index of {name}"))?;
    }
    let mut blobs: Vec<String> = layers.iter().map(|d| d.digest.clone()).collect();
    blobs.push(image.config.digest.clone());
    store.record_pull(&name, &resolved_digest, &r.registry, repo, &blobs)?;
    Ok(PulledImage {
        name,
        resolved_digest,
        manifest_digest,
        config_digest: image.config.digest,
        source: client.base.clone(),
    })
}
