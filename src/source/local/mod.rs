//! The build context: the directory (or tar stream, or tarball) that COPY and ADD read from, as
//! docker reads it. A context is always a directory on disk here; a tar context is unpacked into
//! a temporary directory under the root's `tmp/` first, confined to it.
//!
//! `.dockerignore` is applied through a `PathFilter` before anything is read: excluded files are
//! never hashed or copied, and directories that nothing can re-include are never walked.

use std::fs;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};

pub mod contenthash;

use crate::dockerfile::DockerIgnore;
use crate::source::fsutil::{NoFilter, PathFilter};

/// `.dockerignore` as a context filter.
pub struct IgnoreFilter(pub DockerIgnore);

impl PathFilter for IgnoreFilter {
    fn is_excluded(&self, rel: &str) -> bool {
        self.0.is_excluded(rel)
    }
    fn can_prune_dir(&self, rel: &str) -> bool {
        self.0.can_prune_dir(rel)
    }
}

/// Where the context comes from, as `kiln build CONTEXT` names it.
pub enum ContextSource {
    /// A directory on disk.
    Dir(PathBuf),
    /// A tar archive (plain, gzip, bzip2 or xz), from a file.
    Tarball(PathBuf),
    /// `-`: stdin holds either a tar archive or a Dockerfile (docker sniffs which).
    Stdin,
}

/// A build context ready to be read: a directory plus its filter. The Dockerfile may come from
/// stdin instead of the directory (`kiln build - < Dockerfile`).
pub struct BuildContext {
    root: PathBuf,
    filter: Arc<dyn PathFilter>,
    /// A Dockerfile that came on stdin instead of a context.
    pub stdin_dockerfile: Option<String>,
    /// Keeps what the context's directory lives in (an unpacked tar context's temporary
    /// directory, a git checkout) alive for the build.
    _keep_alive: Option<Box<dyn std::any::Any + Send + Sync>>,
}

impl BuildContext {
    /// Opens a context. `tmp_dir` is where a tar context is unpacked (the root's `tmp/`).
    pub fn open(source: ContextSource, tmp_dir: &Path) -> Result<BuildContext> {
        match source {
            ContextSource::Dir(dir) => {
                let meta = fs::metadata(&dir)
                    .with_context(|| format!("build context {}", dir.display()))?;
                if !meta.is_dir() {
                    bail!("build context {}: not a directory", dir.display());
                }
                // Fail now, with a clear message, when the context cannot be listed.
                fs::read_dir(&dir).with_context(|| format!("build context {}", dir.display()))?;
                let root = fs::canonicalize(&dir)
                    .with_context(|| format!("build context {}", dir.display()))?;
                Ok(BuildContext::from_dir(root))
            }
            ContextSource::Tarball(path) => {
                let file = fs::File::open(&path)
                    .with_context(|| format!("build context {}", path.display()))?;
                let unpacked = unpack_tar_context(BufReader::new(file), tmp_dir)
                    .with_context(|| format!("build context {}", path.display()))?;
                Ok(BuildContext::from_unpacked(unpacked, None))
            }
            ContextSource::Stdin => {
                let mut data = Vec::new();
                std::io::stdin()
                    .lock()
                    .read_to_end(&mut data)
                    .context("build context: reading stdin")?;
                if crate::source::archive::archive_kind(&data).is_some() {
                    let unpacked = unpack_tar_context(std::io::Cursor::new(data), tmp_dir)
                        .context("build context from stdin")?;
                    Ok(BuildContext::from_unpacked(unpacked, None))
                } else {
                    let text = String::from_utf8(data).context(
                        "build context from stdin: neither a tar archive nor a UTF-8 Dockerfile",
                    )?;
                    let empty = make_tmp_dir(tmp_dir)?;
                    Ok(BuildContext::from_unpacked(empty, Some(text)))
                }
            }
        }
    }

    /// A context over an existing directory (tests, `kiln build DIR`).
    pub fn from_dir(root: PathBuf) -> BuildContext {
        BuildContext {
            root,
            filter: Arc::new(NoFilter),
            stdin_dockerfile: None,
            _keep_alive: None,
        }
    }

    /// A context over a temporary directory, removed when the context is dropped.
    pub fn from_tempdir(dir: tempfile::TempDir) -> BuildContext {
        BuildContext::from_unpacked(dir, None)
    }

    /// A context over a git checkout's tree (a named build context given as a git URL).
    pub fn from_checkout(checkout: crate::source::git::Checkout) -> BuildContext {
        BuildContext {
            root: checkout.root().to_path_buf(),
            filter: Arc::new(NoFilter),
            stdin_dockerfile: None,
            _keep_alive: Some(Box::new(checkout)),
        }
    }

    fn from_unpacked(dir: tempfile::TempDir, stdin_dockerfile: Option<String>) -> BuildContext {
        BuildContext {
            root: dir.path().to_path_buf(),
            filter: Arc::new(NoFilter),
            stdin_dockerfile,
            _keep_alive: Some(Box::new(dir)),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn filter(&self) -> Arc<dyn PathFilter> {
        self.filter.clone()
    }

    pub fn set_filter(&mut self, filter: Arc<dyn PathFilter>) {
        self.filter = filter;
    }

    /// Reads a small file of the context (the Dockerfile, `.dockerignore`), refusing paths that
    /// leave it. `None` when it does not exist.
    pub fn read_file(&self, rel: &str) -> Result<Option<Vec<u8>>> {
        let path = crate::source::fsutil::resolve_in_root(&self.root, rel)?;
        match fs::read(&path) {
            Ok(data) => Ok(Some(data)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {rel} in the build context")),
        }
    }
}

fn make_tmp_dir(tmp_dir: &Path) -> Result<tempfile::TempDir> {
    fs::create_dir_all(tmp_dir).with_context(|| format!("creating {}", tmp_dir.display()))?;
    tempfile::Builder::new()
        .prefix("build-context.")
        .tempdir_in(tmp_dir)
        .with_context(|| format!("creating a temporary directory in {}", tmp_dir.display()))
}

/// Unpacks a (possibly compressed) tar into a fresh temporary directory, confined to it.
fn unpack_tar_context<R: Read + Send + 'static>(
    reader: R,
    tmp_dir: &Path,
) -> Result<tempfile::TempDir> {
    let dir = make_tmp_dir(tmp_dir)?;
    let (reader, _) = crate::source::archive::decompressing_reader(reader)?;
    crate::source::archive::unpack_confined(reader, dir.path(), None)?;
    Ok(dir)
}
