//! Named build contexts: `kiln build --build-context NAME=VALUE`, BuildKit's extra contexts.
//! A Dockerfile uses one where it would use a stage or an image of that name: `FROM NAME`,
//! `COPY --from=NAME`, `RUN --mount=from=NAME`; a stage called NAME is replaced by it.
//!
//! | VALUE | what NAME is |
//! |---|---|
//! | `docker-image://REF` | that image (the store, else a pull), in place of NAME |
//! | `oci-layout://DIR[:TAG\|@DIGEST]` | an image of an OCI layout directory, loaded into the store |
//! | a directory | that directory, with its own `.dockerignore` |
//! | a git URL (`https://…/r.git#ref`, `git@host:r.git`, query form) | the repository's tree at that ref |
//! | `https://…` (not git) | a tree holding the downloaded file as `context`, as BuildKit gives |
//!
//! A directory, git or HTTP context is a [`BuildContext`]: a COPY from it is keyed by the
//! contents it selects, exactly as a COPY from the main context; `FROM NAME` of one starts from
//! an empty image with its files as the first layer.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};

use crate::source::local::{BuildContext, IgnoreFilter};
use crate::store::Store;

/// What one `--build-context` gives a name.
#[derive(Clone)]
pub enum NamedContext {
    /// An image, by a name or digest the store (or a registry) resolves.
    Image(String),
    /// A tree of files.
    Files {
        context: Arc<BuildContext>,
        /// The value as given (credentials removed), for messages.
        shown: String,
    },
}

/// The named contexts of a build, by name as the Dockerfile matches them (see [`match_key`]).
#[derive(Clone, Default)]
pub struct NamedContexts {
    by_name: HashMap<String, NamedContext>,
}

/// The word a Dockerfile marks the copy of a named context's files with when it replaces a
/// stage or base (`COPY --from=<this> / /`): a name no stage and no image can have.
pub fn files_marker(name: &str) -> String {
    format!("<context:{name}>")
}

/// The name in a [`files_marker`] word.
pub fn name_in_marker(word: &str) -> Option<&str> {
    word.strip_prefix("<context:")?.strip_suffix('>')
}

/// How a name is matched, as BuildKit matches it: image-like names in their short, familiar
/// form without `:latest` (`docker.io/library/alpine:latest`, `alpine:latest` and `alpine` are
/// one name), others lowercased.
pub fn match_key(name: &str) -> String {
    let lower = name.to_ascii_lowercase();
    let short = lower
        .strip_prefix("docker.io/")
        .or_else(|| lower.strip_prefix("index.docker.io/"))
        .map(|rest| rest.strip_prefix("library/").unwrap_or(rest).to_string())
        .unwrap_or(lower.clone());
    match short.strip_suffix(":latest") {
        Some(s) if !s.contains('@') => s.to_string(),
        _ => short,
    }
}

impl NamedContexts {
    /// Reads `NAME=VALUE` specs: images are resolved later (as a FROM is), files are opened now.
    pub fn open(specs: &[String], store: &Store) -> Result<NamedContexts> {
        let mut by_name = HashMap::new();
        for spec in specs {
            let (name, value) = spec.split_once('=').ok_or_else(|| {
                anyhow!("--build-context {spec}: expected NAME=VALUE (a directory, docker-image://REF, oci-layout://DIR, or a git or https URL)")
            })?;
            let name = name.trim();
            if name.is_empty() || value.is_empty() {
                bail!("--build-context {spec}: expected NAME=VALUE with neither empty");
            }
            let key = match_key(name);
            if key == "scratch" || key == "context" {
                bail!("--build-context {name}: {name:?} is reserved (scratch and context cannot be replaced)");
            }
            let context = open_one(name, value, store)
                .with_context(|| format!("--build-context {name}={}", shown(value)))?;
            if by_name.insert(key, context).is_some() {
                bail!("--build-context {name} is given twice");
            }
        }
        Ok(NamedContexts { by_name })
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The context a stage name, base name or `--from` word means, if any.
    pub fn get(&self, name: &str) -> Option<&NamedContext> {
        if let Some(n) = name_in_marker(name) {
            return self.by_name.get(&match_key(n));
        }
        self.by_name.get(&match_key(name))
    }
}

fn shown(value: &str) -> String {
    crate::source::git::redact_urls(value)
}

fn open_one(name: &str, value: &str, store: &Store) -> Result<NamedContext> {
    if let Some(reference) = value.strip_prefix("docker-image://") {
        if reference.is_empty() {
            bail!("docker-image:// needs an image reference");
        }
        return Ok(NamedContext::Image(reference.to_string()));
    }
    if let Some(layout) = value.strip_prefix("oci-layout://") {
        let digest = load_oci_layout(layout, store)?;
        return Ok(NamedContext::Image(digest));
    }
    if let Some(url) = crate::source::git::parse_checked(value)? {
        let resolved = crate::source::git::resolve(&url, url.query.checksum.as_deref())?;
        let source = crate::source::git::GitSource {
            keep_git_dir: url.query.keep_git_dir.unwrap_or(false),
            url,
            resolved,
        };
        let checkout = crate::source::git::checkout(&source, &store.tmp_dir(), None)?;
        return Ok(files(BuildContext::from_checkout(checkout), value, false));
    }
    if value.starts_with("http://") || value.starts_with("https://") {
        let data = crate::source::http::fetch(value, None)?;
        let dir = tempfile::Builder::new()
            .prefix("named-context.")
            .tempdir_in(store.tmp_dir())
            .context("making a directory for the download")?;
        let file = dir.path().join("context");
        std::fs::write(&file, &data).with_context(|| format!("writing {}", file.display()))?;
        return Ok(files(BuildContext::from_tempdir(dir), value, false));
    }
    if let Some((scheme, _)) = value.split_once("://") {
        bail!(
            "unsupported context source {scheme}:// for {name}: use a directory, \
             docker-image://, oci-layout://, or a git or https URL"
        );
    }
    let dir = PathBuf::from(value);
    let context = BuildContext::open(
        crate::source::local::ContextSource::Dir(dir),
        &store.tmp_dir(),
    )?;
    Ok(files(context, value, true))
}

fn files(mut context: BuildContext, value: &str, dockerignore: bool) -> NamedContext {
    if dockerignore {
        // A directory's own .dockerignore applies to it, as to the main context.
        if let Ok(ignore) = crate::dockerfile::DockerIgnore::load(context.root(), None) {
            context.set_filter(Arc::new(IgnoreFilter(ignore)));
        }
    }
    NamedContext::Files {
        context: Arc::new(context),
        shown: shown(value),
    }
}

/// Loads the image an `oci-layout://DIR[:TAG|@sha256:…]` names into the store; its manifest
/// digest. With neither a tag nor a digest, the layout must hold one image.
fn load_oci_layout(spec: &str, store: &Store) -> Result<String> {
    let (dir, selector) = split_layout_spec(spec);
    let dir = Path::new(dir);
    let index_path = dir.join("index.json");
    let index_bytes = std::fs::read(&index_path).with_context(|| {
        format!(
            "{}: not an OCI layout (no readable index.json)",
            dir.display()
        )
    })?;
    let index: serde_json::Value = serde_json::from_slice(&index_bytes)
        .with_context(|| format!("{}: not an OCI image index", index_path.display()))?;
    let manifests = index["manifests"]
        .as_array()
        .ok_or_else(|| anyhow!("{}: no manifests", index_path.display()))?;
    let ref_name = |m: &serde_json::Value| {
        m["annotations"]["org.opencontainers.image.ref.name"]
            .as_str()
            .map(str::to_string)
    };
    let chosen: Vec<&serde_json::Value> = match &selector {
        LayoutSelector::Digest(d) => manifests
            .iter()
            .filter(|m| m["digest"].as_str() == Some(d.as_str()))
            .collect(),
        LayoutSelector::Tag(t) => manifests
            .iter()
            .filter(|m| ref_name(m).as_deref() == Some(t.as_str()))
            .collect(),
        LayoutSelector::Only => manifests.iter().collect(),
    };
    let descriptor = match chosen.as_slice() {
        [one] => (*one).clone(),
        [] => bail!(
            "{}: no image {} in index.json (it has: {})",
            dir.display(),
            selector.describe(),
            manifests
                .iter()
                .map(|m| ref_name(m)
                    .unwrap_or_else(|| m["digest"].as_str().unwrap_or("?").to_string()))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        _ => bail!(
            "{}: index.json has several images; name one with oci-layout://DIR:TAG or @sha256:…",
            dir.display()
        ),
    };
    let digest = descriptor["digest"]
        .as_str()
        .ok_or_else(|| anyhow!("{}: a manifest without a digest", index_path.display()))?
        .to_string();
    // The store loads archives: one is written with an index of just that image, unnamed (a
    // named context never tags anything), and the layout's blobs.
    let mut bare = descriptor;
    if let Some(obj) = bare.as_object_mut() {
        obj.remove("annotations");
    }
    let one_index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [bare],
    });
    let tmp = tempfile::Builder::new()
        .prefix("oci-layout.")
        .suffix(".tar")
        .tempfile_in(store.tmp_dir())
        .context("making a temporary archive")?;
    {
        let mut builder = tar::Builder::new(std::io::BufWriter::new(tmp.as_file()));
        let layout = std::fs::read(dir.join("oci-layout"))
            .unwrap_or_else(|_| br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec());
        append_bytes(&mut builder, "oci-layout", &layout)?;
        append_bytes(&mut builder, "index.json", &serde_json::to_vec(&one_index)?)?;
        builder
            .append_dir_all("blobs", dir.join("blobs"))
            .with_context(|| format!("reading {}", dir.join("blobs").display()))?;
        builder
            .into_inner()?
            .into_inner()
            .map_err(|e| e.into_error())?;
    }
    let file = std::fs::File::open(tmp.path())?;
    crate::oci::archive::load(store, &file, true)
        .with_context(|| format!("loading the image {digest} of {}", dir.display()))?;
    Ok(digest)
}

fn append_bytes<W: std::io::Write>(
    builder: &mut tar::Builder<W>,
    name: &str,
    data: &[u8],
) -> Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    builder.append_data(&mut header, name, data)?;
    Ok(())
}

enum LayoutSelector {
    Only,
    Tag(String),
    Digest(String),
}

impl LayoutSelector {
    fn describe(&self) -> String {
        match self {
            LayoutSelector::Only => "at all".into(),
            LayoutSelector::Tag(t) => format!("tagged {t:?}"),
            LayoutSelector::Digest(d) => d.clone(),
        }
    }
}

/// `DIR`, `DIR:TAG` or `DIR@sha256:…` (a `:` in the last path component only).
fn split_layout_spec(spec: &str) -> (&str, LayoutSelector) {
    if let Some((dir, digest)) = spec.rsplit_once('@') {
        if digest.starts_with("sha256:") {
            return (dir, LayoutSelector::Digest(digest.to_string()));
        }
    }
    let last = spec.rfind('/').map_or(0, |i| i + 1);
    if let Some(colon) = spec[last..].rfind(':') {
        let at = last + colon;
        return (&spec[..at], LayoutSelector::Tag(spec[at + 1..].to_string()));
    }
    (spec, LayoutSelector::Only)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_as_buildkit_normalises_them() {
        for n in [
            "alpine",
            "alpine:latest",
            "docker.io/library/alpine:latest",
            "ALPINE",
        ] {
            assert_eq!(match_key(n), "alpine", "{n}");
        }
        assert_eq!(match_key("alpine:3"), "alpine:3");
        assert_eq!(match_key("docker.io/me/app"), "me/app");
        assert_eq!(match_key("localhost:5000/app:latest"), "localhost:5000/app");
        assert_eq!(name_in_marker(&files_marker("base")), Some("base"));
    }

    #[test]
    fn layout_specs() {
        let (d, s) = split_layout_spec("/x/layout:v1");
        assert_eq!(d, "/x/layout");
        assert!(matches!(s, LayoutSelector::Tag(t) if t == "v1"));
        let (d, s) = split_layout_spec("/x/lay:out/dir@sha256:abc");
        assert_eq!(d, "/x/lay:out/dir");
        assert!(matches!(s, LayoutSelector::Digest(_)));
        let (d, s) = split_layout_spec("/x/lay:out/dir");
        assert_eq!(d, "/x/lay:out/dir");
        assert!(matches!(s, LayoutSelector::Only));
    }
}
