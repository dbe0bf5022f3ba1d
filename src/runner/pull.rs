//! `kiln run --pull missing|always|never` (and `create`): the image from the store, pulled
//! from its registry first when it is missing (or always), with the pull's progress on stderr,
//! as docker's `run` does.

use anyhow::{bail, Context, Result};

use crate::platform::Platform;
use crate::store::{ImageRecord, Store};

/// `--pull`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    Missing,
    Always,
    Never,
}

impl PullPolicy {
    pub fn parse(s: &str) -> Result<PullPolicy> {
        match s {
            "" | "missing" => Ok(PullPolicy::Missing),
            "always" => Ok(PullPolicy::Always),
            "never" => Ok(PullPolicy::Never),
            _ => bail!("invalid --pull {s:?}: expected missing, always or never"),
        }
    }
}

/// Whether `spec` names an image by reference (pullable), not by ID or ID prefix.
fn pullable(spec: &str) -> bool {
    let hexish = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit());
    !(spec.starts_with("sha256:") || (hexish(spec) && spec.len() >= 12))
        && crate::reference::Reference::parse(spec).is_ok()
}

/// The image `spec` names for `platform` (this machine's when `None`), pulled as `policy`
/// says.
pub fn image_for_run(
    store: &Store,
    spec: &str,
    policy: PullPolicy,
    platform: Option<&Platform>,
) -> Result<ImageRecord> {
    let local = || -> Result<ImageRecord> {
        let image = store.resolve(spec)?;
        match platform {
            Some(p) => image.for_platform(p),
            None => Ok(image),
        }
    };
    if policy == PullPolicy::Always && pullable(spec) {
        pull(store, spec, platform)?;
        return local();
    }
    match local() {
        Ok(image) => Ok(image),
        Err(e) if policy == PullPolicy::Missing && pullable(spec) => {
            eprintln!("Unable to find image '{spec}' locally");
            pull(store, spec, platform)
                .map_err(|pe| pe.context(format!("{e:#}; pulling it from its registry failed")))?;
            local()
        }
        Err(e) if policy == PullPolicy::Never => Err(e.context(format!(
            "unable to find image {spec:?} locally (--pull never: not pulled)"
        ))),
        Err(e) => Err(e.context(format!("unable to find image {spec:?} locally"))),
    }
}

fn pull(store: &Store, spec: &str, platform: Option<&Platform>) -> Result<()> {
    let ctx = crate::registry::RegistryContext::load(store.root().to_path_buf())?;
    let r = crate::registry::RepoRef::parse(spec)?;
    let platform = platform.cloned().unwrap_or_else(Platform::host);
    let pulled = crate::registry::pull(&ctx, store, &r, &platform)
        .with_context(|| format!("pulling {spec}"))?;
    eprintln!("Status: Downloaded image for {}", pulled.name);
    eprintln!("Digest: {}", pulled.resolved_digest);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_and_pullable_names() {
        assert_eq!(PullPolicy::parse("missing").unwrap(), PullPolicy::Missing);
        assert_eq!(PullPolicy::parse("always").unwrap(), PullPolicy::Always);
        assert_eq!(PullPolicy::parse("never").unwrap(), PullPolicy::Never);
        assert!(PullPolicy::parse("sometimes").is_err());
        assert!(pullable("busybox"));
        assert!(pullable("127.0.0.1:5000/app:1"));
        assert!(!pullable("sha256:abcd"));
        assert!(!pullable("0123456789abcdef"));
    }
}
