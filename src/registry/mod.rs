//! The OCI distribution client: pull, push, auth, mirrors.
//!
//! - [`pull`] fetches an image (through an index to one platform) into the store, verifying
//!   every byte against its digest; [`ensure_image`] is what `FROM` calls.
//! - [`push`] sends an image from the store to a registry.
//! - [`login`] / [`logout`] manage `ROOT/auth.json`; see [`auth`] for where credentials come from.
//! - Mirrors and insecure registries come from [`config::RegistryConfig`].

pub mod artifact;
pub mod auth;
pub mod client;
pub mod config;
pub mod local;
pub mod manifest;
pub mod progress;
pub mod pull;
pub mod push;
pub mod reference;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

pub use local::LocalStore;
pub use manifest::Platform;
pub use pull::PulledImage;
pub use push::{PushOptions, PushedImage};
pub use reference::RepoRef;

use client::Client;
use config::RegistryConfig;
use progress::Progress;

/// Docker Hub's API host.
const DOCKER_HUB: &str = "https://registry-1.docker.io";

/// What every registry operation needs: where credentials live and the config file.
#[derive(Debug, Clone)]
pub struct RegistryContext {
    pub root: PathBuf,
    pub config: RegistryConfig,
    /// No progress output.
    pub quiet: bool,
}

impl RegistryContext {
    /// Reads the config file (`KILN_CONFIG` or /etc/kiln/config.toml).
    pub fn load(root: PathBuf) -> Result<RegistryContext> {
        Ok(RegistryContext {
            root,
            config: RegistryConfig::load()?,
            quiet: false,
        })
    }

    /// A client for `registry` (a normalised host such as `docker.io` or `127.0.0.1:5000`).
    fn client(&self, registry: &str, scopes: Vec<String>) -> Result<Client> {
        let base = if registry == "docker.io" {
            DOCKER_HUB.to_string()
        } else {
            self.config.base_url(registry)
        };
        let creds = auth::lookup(&self.root, registry)?;
        Ok(Client::new(base, registry.to_string(), creds, scopes))
    }

    /// The endpoints to pull `registry` from, in order: docker.io's mirrors, then the registry.
    fn pull_clients(&self, r: &RepoRef) -> Result<Vec<Client>> {
        let scopes = vec![format!("repository:{}:pull", r.repository)];
        let mut clients = Vec::new();
        if r.registry == "docker.io" {
            for base in self.config.mirror_urls() {
                let host = auth::normalize_registry_key(&base);
                let creds = auth::lookup(&self.root, &host)?;
                clients.push(Client::new(base, host, creds, scopes.clone()));
            }
        }
        clients.push(self.client(&r.registry, scopes)?);
        Ok(clients)
    }
}

/// When `FROM` (or `kiln pull`) goes to the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    /// Use the local image when there is one (docker's default for `FROM`).
    Missing,
    /// Always ask the registry what the tag points to now (`--pull`).
    Always,
}

/// An image in the store as the build engine sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRecord {
    pub name: String,
    pub manifest_digest: String,
    /// What the name resolved to at the registry when it was last pulled (the index digest for
    /// a multi-platform image); `None` for an image built or imported locally. Key build cache
    /// entries for `FROM` on this.
    pub resolved_digest: Option<String>,
    /// Whether this call went to the registry.
    pub pulled: bool,
}

/// Pulls `r` into the store for `platform`, trying docker.io's mirrors first.
pub fn pull(
    ctx: &RegistryContext,
    store: &dyn LocalStore,
    r: &RepoRef,
    platform: &Platform,
) -> Result<PulledImage> {
    store.prepare()?;
    let progress = Progress::new(ctx.quiet);
    let clients = ctx.pull_clients(r)?;
    let last = clients.len() - 1;
    for (i, client) in clients.iter().enumerate() {
        match pull::pull_from(ctx, client, r, store, platform, &progress) {
            Ok(img) => return Ok(img),
            Err(e) if i < last => {
                progress.line(&format!(
                    "kiln: mirror {} failed for {r}: {e:#}; trying the next source",
                    client.base
                ));
            }
            Err(e) => return Err(e).with_context(|| format!("pulling {r}")),
        }
    }
    unreachable!("pull_clients always returns the registry itself last")
}

/// The platforms of `r` at its registry when it is an index (entries without a real platform,
/// such as attestations, left out); empty for a single-platform image.
pub fn remote_platforms(ctx: &RegistryContext, r: &RepoRef) -> Result<Vec<Platform>> {
    let clients = ctx.pull_clients(r)?;
    let client = clients
        .last()
        .expect("pull_clients always returns the registry itself");
    let (bytes, content_type, _) =
        pull::fetch_manifest(client, &r.repository, &r.reference(), &r.to_string())
            .with_context(|| format!("pulling {r}"))?;
    let (parsed, _) = manifest::parse(&bytes, content_type.as_deref())?;
    Ok(match parsed {
        manifest::Manifest::Image(_) => Vec::new(),
        manifest::Manifest::Index(index) => index
            .manifests
            .iter()
            .filter_map(|d| d.platform.clone())
            .filter(|p| p.os != "unknown" && p.architecture != "unknown")
            .collect(),
    })
}

/// Pushes the local image `local_name` (normalised) to `dest`.
pub fn push(
    ctx: &RegistryContext,
    store: &dyn LocalStore,
    local_name: &str,
    dest: &RepoRef,
    opts: &PushOptions,
) -> Result<PushedImage> {
    store.prepare()?;
    if dest.digest.is_some() {
        bail!("cannot push to a digest reference ({dest}); push to a tag");
    }
    let manifest_digest = store.resolve_image(local_name).with_context(|| {
        format!("image {local_name} is not in the local store; build, pull or tag it first")
    })?;
    push_digest(ctx, store, &manifest_digest, dest, opts)
}

/// Pushes the stored manifest `manifest_digest` (every layer a blob: see
/// `snapshot::blobs::export_manifest`) to `dest`.
pub fn push_digest(
    ctx: &RegistryContext,
    store: &dyn LocalStore,
    manifest_digest: &str,
    dest: &RepoRef,
    opts: &PushOptions,
) -> Result<PushedImage> {
    store.prepare()?;
    if dest.digest.is_some() {
        bail!("cannot push to a digest reference ({dest}); push to a tag");
    }
    let manifest_digest = manifest_digest.to_string();
    // Ask for pull access to the repositories a blob could be mounted from, in the same token.
    let bytes = store.read_blob(&manifest_digest)?;
    let mut scopes = vec![format!("repository:{}:pull,push", dest.repository)];
    let mut images = Vec::new();
    match manifest::parse(&bytes, None) {
        Ok((manifest::Manifest::Image(m), _)) => images.push(m),
        Ok((manifest::Manifest::Index(index), _)) => {
            for entry in &index.manifests {
                if let Ok(b) = store.read_blob(&entry.digest) {
                    if let Ok((manifest::Manifest::Image(m), _)) = manifest::parse(&b, None) {
                        images.push(m);
                    }
                }
            }
        }
        Err(_) => {}
    }
    for m in &images {
        for d in m.layers.iter().chain([&m.config]) {
            for source in store.blob_sources(&d.digest, &dest.registry)? {
                let scope = format!("repository:{source}:pull");
                if source != dest.repository && !scopes.contains(&scope) {
                    scopes.push(scope);
                }
            }
        }
    }
    let client = ctx.client(&dest.registry, scopes)?;
    // Authenticate once, up front: the parallel uploads then share one token, and a wrong
    // login fails before anything is sent.
    client.ping().with_context(|| format!("pushing {dest}"))?;
    let opts = PushOptions {
        quiet: opts.quiet || ctx.quiet,
        ..opts.clone()
    };
    push::push_manifest(&client, store, &manifest_digest, dest, &opts)
        .with_context(|| format!("pushing {dest}"))
}

/// Makes sure `r` is in the store: the local image when there is one and `policy` allows,
/// else a pull. Records the digest the registry resolved the name to.
pub fn ensure_image(
    ctx: &RegistryContext,
    store: &dyn LocalStore,
    r: &RepoRef,
    policy: PullPolicy,
    platform: &Platform,
) -> Result<ImageRecord> {
    store.prepare()?;
    let name = r.name();
    let local = store.image_for(&name, platform)?;
    let pinned = r.digest.is_some();
    if let Some(manifest_digest) = &local {
        if policy == PullPolicy::Missing || pinned {
            return Ok(ImageRecord {
                resolved_digest: store.pulled_digest(&name)?,
                name,
                manifest_digest: manifest_digest.clone(),
                pulled: false,
            });
        }
    }
    let pulled = pull(ctx, store, r, platform)?;
    Ok(ImageRecord {
        name: pulled.name,
        manifest_digest: pulled.manifest_digest,
        resolved_digest: Some(pulled.resolved_digest),
        pulled: true,
    })
}

/// Checks `creds` against `registry` and saves them in `ROOT/auth.json`.
pub fn login(ctx: &RegistryContext, registry: &str, creds: auth::Credentials) -> Result<()> {
    let registry = auth::normalize_registry_key(registry);
    let base = if registry == "docker.io" {
        DOCKER_HUB.to_string()
    } else {
        ctx.config.base_url(&registry)
    };
    let client = Client::new(base, registry.clone(), Some(creds.clone()), Vec::new());
    client
        .ping()
        .with_context(|| format!("logging in to {registry}"))?;
    auth::store(&ctx.root, &registry, Some(&creds))?;
    Ok(())
}

/// Forgets the saved credentials for `registry`; says whether there were any.
pub fn logout(ctx: &RegistryContext, registry: &str) -> Result<bool> {
    auth::store(&ctx.root, &auth::normalize_registry_key(registry), None)
}
