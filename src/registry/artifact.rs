//! One repository as a place to keep artifacts other than images (the build cache): its
//! manifest by tag, its blobs fetched (verified) or pushed (HEAD skip, cross-repository mount),
//! and a manifest put under a tag. Authenticates once when opened.

use anyhow::{bail, Context, Result};
use ureq::http::Method;

use super::client::{Body, Client};
use super::local::LocalStore;
use super::manifest::{Descriptor, MAX_MANIFEST_BYTES};
use super::progress::Progress;
use super::pull::status_error;
use super::{RegistryContext, RepoRef};

/// How a pushed blob reached the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobPushed {
    Exists,
    Mounted(String),
    Uploaded,
}

pub struct Repository {
    client: Client,
    pub repo: RepoRef,
}

impl Repository {
    /// Opens `repo` for reading (and for pushing when `push`), authenticated up front so a
    /// wrong login or an unreachable registry fails here. `mount_from`: repositories of the same
    /// registry blobs may be mounted from (pull scope is asked for them in the same token).
    pub fn open(
        ctx: &RegistryContext,
        repo: &RepoRef,
        push: bool,
        mount_from: &[String],
    ) -> Result<Repository> {
        let actions = if push { "pull,push" } else { "pull" };
        let mut scopes = vec![format!("repository:{}:{actions}", repo.repository)];
        for m in mount_from {
            let scope = format!("repository:{m}:pull");
            if m != &repo.repository && !scopes.contains(&scope) {
                scopes.push(scope);
            }
        }
        let client = ctx.client(&repo.registry, scopes)?;
        client.ping().with_context(|| format!("reaching {repo}"))?;
        Ok(Repository {
            client,
            repo: repo.clone(),
        })
    }

    /// The manifest under the reference's tag: `None` when the registry has no such tag.
    /// Returns the bytes and their digest (checked against the registry's digest header).
    pub fn manifest(&self) -> Result<Option<(Vec<u8>, String)>> {
        let reference = self.repo.reference();
        let url = self.client.url(&format!(
            "/v2/{}/manifests/{reference}",
            self.repo.repository
        ));
        let head = self.client.send(
            Method::HEAD,
            &url,
            &[("Accept", &super::manifest::accept_header())],
            &Body::Empty,
        )?;
        if head.status().as_u16() == 404 {
            return Ok(None);
        }
        let (bytes, _, digest) = super::pull::fetch_manifest(
            &self.client,
            &self.repo.repository,
            &reference,
            &self.repo.to_string(),
        )?;
        Ok(Some((bytes, digest)))
    }

    /// A small blob (a config) read into memory and verified against its digest.
    pub fn blob_bytes(&self, desc: &Descriptor) -> Result<Vec<u8>> {
        if desc.size > MAX_MANIFEST_BYTES * 16 {
            bail!(
                "{}: blob {} is too large ({} bytes) to read into memory",
                self.repo,
                desc.digest,
                desc.size
            );
        }
        let url = self.client.url(&format!(
            "/v2/{}/blobs/{}",
            self.repo.repository, desc.digest
        ));
        let mut resp = self.client.send(Method::GET, &url, &[], &Body::Empty)?;
        if resp.status().as_u16() != 200 {
            return Err(status_error(
                &mut resp,
                &self.client.name,
                &format!("blob {}", desc.digest),
            ));
        }
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(desc.size + 1)
            .read_to_vec()
            .with_context(|| format!("{}: reading blob {}", self.client.name, desc.digest))?;
        let got = crate::digest::sha256_digest(&bytes);
        if got != desc.digest {
            bail!(
                "{}: blob {} failed verification (got {got})",
                self.repo,
                desc.digest
            );
        }
        Ok(bytes)
    }

    /// Downloads a blob into the store, verified (nothing is stored when it does not match).
    pub fn fetch_blob(&self, desc: &Descriptor, store: &dyn LocalStore) -> Result<()> {
        store.prepare()?;
        let progress = Progress::new(true);
        super::pull::fetch_blob(
            &self.client,
            &self.repo.repository,
            desc,
            store,
            &progress,
            "cache",
        )
    }

    /// Pushes a blob from the store: skipped when the registry has it, mounted from another
    /// repository known to hold it, else uploaded.
    pub fn push_blob(&self, desc: &Descriptor, store: &dyn LocalStore) -> Result<BlobPushed> {
        store.prepare()?;
        let outcome = super::push::push_blob(
            &self.client,
            &self.repo.repository,
            desc,
            store,
            &self.repo.registry,
            &super::PushOptions {
                chunk_size: None,
                quiet: true,
            },
        )?;
        Ok(match outcome {
            super::push::Outcome::Exists => BlobPushed::Exists,
            super::push::Outcome::Mounted(from) => BlobPushed::Mounted(from),
            super::push::Outcome::Uploaded => BlobPushed::Uploaded,
        })
    }

    /// Puts `bytes` (of `media_type`) under the reference's tag; returns the manifest digest.
    pub fn put_manifest(&self, media_type: &str, bytes: &[u8]) -> Result<String> {
        super::push::put_manifest(&self.client, &self.repo, media_type, bytes, "manifest")
    }
}

/// Fetches a remote blob of the store (`store::remote`: a layer an image names that stayed at
/// its registry) from its `host/repository`, verified: the hook `cli` installs with
/// `store::set_fetch_hook`, so whatever reads the blob first (unpacking it for `kiln run` or a
/// step, `save`, a push that cannot mount it) downloads it then.
pub fn fetch_remote_blob(
    store: &crate::store::Store,
    blob: &crate::store::RemoteBlob,
) -> Result<()> {
    let Some((registry, repository)) = blob.source.split_once('/') else {
        bail!(
            "the blob {} has no registry repository ({:?})",
            blob.digest,
            blob.source
        );
    };
    let mut ctx = RegistryContext::load(store.root().to_path_buf())?;
    ctx.quiet = true;
    let repo = RepoRef {
        registry: registry.to_string(),
        repository: repository.to_string(),
        tag: None,
        digest: None,
    };
    let desc = Descriptor {
        media_type: blob.media_type.clone(),
        digest: blob.digest.clone(),
        size: blob.size,
        platform: None,
        urls: Vec::new(),
    };
    Repository::open(&ctx, &repo, false, &[])?.fetch_blob(&desc, store)
}
