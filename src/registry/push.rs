//! Pushing: every blob of the image (skipped when the registry has it, mounted from another
//! repository of the same registry when kiln knows one that holds it, else uploaded in one
//! request or in chunks), then the manifest under the tag.

use std::io::{Read, Seek, SeekFrom};

use anyhow::{bail, Context, Result};
use ureq::http::Method;

use super::client::{encode, Body, Client};
use super::local::LocalStore;
use super::manifest::{self, Descriptor, Manifest};
use super::progress::{self, Progress};
use super::pull::status_error;
use super::RepoRef;
use crate::digest::sha256_digest;

const PARALLEL_BLOBS: usize = 4;

#[derive(Debug, Clone, Default)]
pub struct PushOptions {
    /// Upload blobs larger than this in PATCH chunks of this size; `None`: one PUT per blob.
    pub chunk_size: Option<u64>,
    pub quiet: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushedImage {
    pub name: String,
    pub manifest_digest: String,
    pub config_digest: String,
}

fn header(resp: &ureq::http::Response<ureq::Body>, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn with_query(url: &str, query: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{query}")
}

/// How one blob reached the registry.
pub(super) enum Outcome {
    Exists,
    Mounted(String),
    Uploaded,
}

pub(super) fn push_blob(
    client: &Client,
    repo: &str,
    desc: &Descriptor,
    store: &dyn LocalStore,
    registry: &str,
    opts: &PushOptions,
) -> Result<Outcome> {
    let digest = &desc.digest;
    let head = client.send(
        Method::HEAD,
        &client.url(&format!("/v2/{repo}/blobs/{digest}")),
        &[],
        &Body::Empty,
    )?;
    if head.status().as_u16() == 200 {
        return Ok(Outcome::Exists);
    }
    let mut location = None;
    for source in store.blob_sources(digest, registry)? {
        if source == repo {
            continue;
        }
        let url = client.url(&format!(
            "/v2/{repo}/blobs/uploads/?mount={}&from={}",
            encode(digest),
            encode(&source)
        ));
        let mut resp = client.send(Method::POST, &url, &[], &Body::Empty)?;
        match resp.status().as_u16() {
            201 => return Ok(Outcome::Mounted(source)),
            // The registry did not mount but opened an upload session instead.
            202 => {
                location =
                    header(&resp, "location").map(|l| super::client::resolve_location(&url, &l));
                break;
            }
            _ => {
                let _ = resp.body_mut().read_to_vec();
            }
        }
    }
    let mut location = match location {
        Some(l) => l,
        None => {
            let url = client.url(&format!("/v2/{repo}/blobs/uploads/"));
            let mut resp = client.send(Method::POST, &url, &[], &Body::Empty)?;
            if resp.status().as_u16() != 202 {
                return Err(status_error(
                    &mut resp,
                    &client.name,
                    &format!("starting the upload of {digest} to {repo}"),
                ));
            }
            let loc = header(&resp, "location")
                .context("the registry opened an upload without a Location")?;
            super::client::resolve_location(&url, &loc)
        }
    };
    if store.blob_size(digest).is_none() {
        // A blob the store keeps at another registry comes now (`store::remote`).
        drop(store.open_blob(digest)?);
    }
    let size = store
        .blob_size(digest)
        .with_context(|| format!("blob {digest} is missing from the local store"))?;
    let open_at = |offset: u64| -> Result<Box<dyn Read + Send>> {
        let mut f = store.open_blob(digest)?;
        f.seek(SeekFrom::Start(offset))?;
        Ok(Box::new(f))
    };
    let octet = ("Content-Type", "application/octet-stream");
    let final_url = match opts.chunk_size {
        Some(chunk) if chunk > 0 && size > chunk => {
            let mut offset = 0;
            while offset < size {
                let len = chunk.min(size - offset);
                let range = format!("{}-{}", offset, offset + len - 1);
                let open = move || open_at(offset);
                let mut resp = client.send(
                    Method::PATCH,
                    &location,
                    &[octet, ("Content-Range", &range)],
                    &Body::Stream { open: &open, len },
                )?;
                if resp.status().as_u16() != 202 {
                    return Err(status_error(
                        &mut resp,
                        &client.name,
                        &format!("uploading bytes {range} of {digest}"),
                    ));
                }
                let loc = header(&resp, "location")
                    .context("the registry answered a chunk without a Location")?;
                location = super::client::resolve_location(&location, &loc);
                offset += len;
            }
            let url = with_query(&location, &format!("digest={}", encode(digest)));
            let resp = client.send(Method::PUT, &url, &[octet], &Body::Empty)?;
            (url, resp)
        }
        _ => {
            let url = with_query(&location, &format!("digest={}", encode(digest)));
            let open = || open_at(0);
            let resp = client.send(
                Method::PUT,
                &url,
                &[octet],
                &Body::Stream {
                    open: &open,
                    len: size,
                },
            )?;
            (url, resp)
        }
    };
    let (_, mut resp) = final_url;
    if resp.status().as_u16() != 201 {
        return Err(status_error(
            &mut resp,
            &client.name,
            &format!("finishing the upload of {digest}"),
        ));
    }
    if let Some(d) = header(&resp, "docker-content-digest") {
        if &d != digest {
            bail!("{}: the registry stored {digest} as {d}", client.name);
        }
    }
    Ok(Outcome::Uploaded)
}

/// PUTs a manifest or index (`what`, for messages) under `dest`'s tag (`latest` by default)
/// and checks the digest the registry says it stored; returns the digest.
pub(crate) fn put_manifest(
    client: &Client,
    dest: &RepoRef,
    media_type: &str,
    bytes: &[u8],
    what: &str,
) -> Result<String> {
    let tag = dest.tag.clone().unwrap_or_else(|| "latest".to_string());
    let url = client.url(&format!("/v2/{}/manifests/{tag}", dest.repository));
    let mut resp = client.send(
        Method::PUT,
        &url,
        &[("Content-Type", media_type)],
        &Body::Bytes(bytes),
    )?;
    if resp.status().as_u16() != 201 {
        return Err(status_error(
            &mut resp,
            &client.name,
            &format!("putting the {what} {dest}"),
        ));
    }
    let digest = sha256_digest(bytes);
    if let Some(d) = header(&resp, "docker-content-digest") {
        if d != digest {
            bail!(
                "{}: the registry stored {what} {digest} as {d}",
                client.name
            );
        }
    }
    Ok(digest)
}

/// Pushes the image whose manifest is `manifest_digest` to `dest` (tag `latest` by default).
pub(crate) fn push_manifest(
    client: &Client,
    store: &dyn LocalStore,
    manifest_digest: &str,
    dest: &RepoRef,
    opts: &PushOptions,
) -> Result<PushedImage> {
    let bytes = store.read_blob(manifest_digest)?;
    let (parsed, media_type) = manifest::parse(&bytes, None)?;
    let image = match parsed {
        Manifest::Image(image) => image,
        Manifest::Index(index) => {
            return push_index(client, store, &index, &bytes, &media_type, dest, opts)
        }
    };
    let repo = &dest.repository;
    let progress = Progress::new(opts.quiet);
    let mut blobs: Vec<&Descriptor> = image
        .layers
        .iter()
        .filter(|d| d.is_distributable())
        .collect();
    blobs.push(&image.config);
    progress::parallel(&blobs, PARALLEL_BLOBS, |d| {
        let bar = progress.start("push", &d.digest, d.size);
        let outcome = push_blob(client, repo, d, store, &dest.registry, opts)
            .with_context(|| format!("pushing blob {} to {dest}", d.digest));
        match outcome {
            Ok(Outcome::Exists) => bar.finish("already exists"),
            Ok(Outcome::Mounted(from)) => bar.finish(&format!("mounted from {from}")),
            Ok(Outcome::Uploaded) => {
                bar.inc(d.size);
                bar.finish("pushed")
            }
            Err(e) => {
                bar.finish("failed");
                return Err(e);
            }
        }
        Ok(())
    })?;
    let digest = put_manifest(client, dest, &media_type, &bytes, "manifest")?;
    let names: Vec<String> = blobs.iter().map(|d| d.digest.clone()).collect();
    store.record_blob_sources(&dest.registry, repo, &names)?;
    progress.line(&format!("{dest}: digest: {digest} size: {}", bytes.len()));
    Ok(PushedImage {
        name: dest.name(),
        manifest_digest: digest,
        config_digest: image.config.digest,
    })
}

/// Pushes a multi-platform image: every platform's manifest (with its blobs) by digest, then the
/// index under the tag. Every entry must be in the local store (a partly pulled index cannot be
/// pushed whole).
fn push_index(
    client: &Client,
    store: &dyn LocalStore,
    index: &manifest::Index,
    bytes: &[u8],
    media_type: &str,
    dest: &RepoRef,
    opts: &PushOptions,
) -> Result<PushedImage> {
    let mut first_config = None;
    for entry in &index.manifests {
        let platform = entry
            .platform
            .as_ref()
            .map(|p| p.to_string())
            .unwrap_or_else(|| "no platform".into());
        if !store.has_blob(&entry.digest) {
            bail!(
                "the index has {platform} ({}), which is not in the local store: pull it first \
                 (kiln pull --all-platforms {})",
                entry.digest,
                dest.name()
            );
        }
        let by_digest = RepoRef {
            tag: Some(entry.digest.clone()),
            digest: None,
            ..dest.clone()
        };
        let pushed = push_manifest(client, store, &entry.digest, &by_digest, opts)
            .with_context(|| format!("pushing the {platform} manifest"))?;
        first_config.get_or_insert(pushed.config_digest);
    }
    let progress = Progress::new(opts.quiet);
    let digest = put_manifest(client, dest, media_type, bytes, "index")?;
    progress.line(&format!("{dest}: digest: {digest} size: {}", bytes.len()));
    Ok(PushedImage {
        name: dest.name(),
        manifest_digest: digest,
        config_digest: first_config.unwrap_or_default(),
    })
}
