//! `--push` / `--output type=registry`: the built image, from the store, pushed to the registry
//! of each of its names once the build has committed it.

use std::path::Path;

use anyhow::{Context, Result};

/// Pushes each named image from the store at `root`.
pub fn push(root: &Path, names: &[String], quiet: bool) -> Result<()> {
    use crate::registry::{self, PushOptions, RegistryContext, RepoRef};
    let mut ctx = RegistryContext::load(root.to_path_buf())?;
    ctx.quiet |= quiet;
    let store = registry::local::open_store(root)?;
    for name in names {
        let dest = RepoRef::parse(name)?;
        let stored = store.resolve(name)?.stored_digest().to_string();
        let manifest = crate::snapshot::blobs::export_manifest(
            &store,
            &stored,
            crate::oci::compress::Compression::Gzip,
        )?;
        let pushed = registry::push_digest(&ctx, &store, &manifest, &dest, &PushOptions::default())
            .with_context(|| format!("pushing the built image {name}"))?;
        registry::LocalStore::record_push(
            &store,
            &dest.to_string(),
            &stored,
            &pushed.manifest_digest,
        )?;
        if !quiet {
            crate::errln!("pushed {name}");
        }
    }
    Ok(())
}
