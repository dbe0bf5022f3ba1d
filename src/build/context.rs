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

/// Decides which context paths exist for the build (the `.dockerignore` rules). Paths are
/// relative to the context root, `/`-separated, without a leading `/` or `./`.
pub trait PathFilter: Send + Sync {
    /// The path is excluded from the context.
    fn is_excluded(&self, rel: &str) -> bool;
    /// Nothing below this (excluded) directory can be re-included by an exception, so a walk may
    /// skip it without reading it.
    fn can_prune_dir(&self, rel: &str) -> bool;
}

/// The filter of a context without a `.dockerignore`.
pub struct NoFilter;

impl PathFilter for NoFilter {
    fn is_excluded(&self, _rel: &str) -> bool {
        false
    }
    fn can_prune_dir(&self, _rel: &str) -> bool {
        false
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
    /// Keeps an unpacked tar context alive for the build.
    _unpacked: Option<tempfile::TempDir>,
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
                if archive_kind(&data).is_some() {
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
            _unpacked: None,
        }
    }

    fn from_unpacked(dir: tempfile::TempDir, stdin_dockerfile: Option<String>) -> BuildContext {
        BuildContext {
            root: dir.path().to_path_buf(),
            filter: Arc::new(NoFilter),
            stdin_dockerfile,
            _unpacked: Some(dir),
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
        let path = crate::build::fsutil::resolve_in_root(&self.root, rel)?;
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

/// The compression of an archive, sniffed from its first bytes; `None` when it is not an archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveKind {
    Tar,
    Gzip,
    Bzip2,
    Xz,
    Zstd,
}

pub fn archive_kind(head: &[u8]) -> Option<ArchiveKind> {
    if head.starts_with(&[0x1f, 0x8b]) {
        return Some(ArchiveKind::Gzip);
    }
    if head.starts_with(b"BZh") {
        return Some(ArchiveKind::Bzip2);
    }
    if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        return Some(ArchiveKind::Xz);
    }
    if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Some(ArchiveKind::Zstd);
    }
    if head.len() >= 262 && &head[257..262] == b"ustar" {
        return Some(ArchiveKind::Tar);
    }
    None
}

/// Wraps a reader in the decompressor its first bytes call for. bzip2 and xz go through the
/// system's `bzip2` and `xz` programs (Debian's bzip2 and xz-utils).
pub fn decompressing_reader<R: Read + Send + 'static>(
    reader: R,
) -> Result<(Box<dyn Read>, ArchiveKind)> {
    let mut reader = BufReader::with_capacity(64 * 1024, reader);
    let head = std::io::BufRead::fill_buf(&mut reader)?.to_vec();
    let kind = archive_kind(&head).unwrap_or(ArchiveKind::Tar);
    let boxed: Box<dyn Read> = match kind {
        ArchiveKind::Tar => Box::new(reader),
        ArchiveKind::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(reader)),
        ArchiveKind::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(reader)?),
        ArchiveKind::Bzip2 => Box::new(ExternalDecoder::spawn("bzip2", reader)?),
        ArchiveKind::Xz => Box::new(ExternalDecoder::spawn("xz", reader)?),
    };
    Ok((boxed, kind))
}

/// A decompressor run as a child process (`PROGRAM -dc`), fed by a thread.
struct ExternalDecoder {
    program: &'static str,
    child: std::process::Child,
    stdout: std::process::ChildStdout,
    feeder: Option<std::thread::JoinHandle<()>>,
}

impl ExternalDecoder {
    fn spawn<R: Read + Send + 'static>(
        program: &'static str,
        mut input: R,
    ) -> Result<ExternalDecoder> {
        let mut child = std::process::Command::new(program)
            .arg("-dc")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .with_context(|| {
                format!("running {program} to decompress (install Debian's {program} package)")
            })?;
        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| anyhow::anyhow!("{program}: no stdin"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("{program}: no stdout"))?;
        let feeder = std::thread::spawn(move || {
            let _ = std::io::copy(&mut input, &mut stdin);
        });
        Ok(ExternalDecoder {
            program,
            child,
            stdout,
            feeder: Some(feeder),
        })
    }
}

impl Read for ExternalDecoder {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.stdout.read(buf)?;
        if n == 0 && !buf.is_empty() {
            if let Some(f) = self.feeder.take() {
                let _ = f.join();
            }
            let status = self.child.wait()?;
            if !status.success() {
                return Err(std::io::Error::other(format!(
                    "{} -dc failed: {status}",
                    self.program
                )));
            }
        }
        Ok(n)
    }
}

impl Drop for ExternalDecoder {
    fn drop(&mut self) {
        // Stop a decoder whose output is no longer read (is_local_archive reads one block).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Unpacks a (possibly compressed) tar into a fresh temporary directory, confined to it.
fn unpack_tar_context<R: Read + Send + 'static>(
    reader: R,
    tmp_dir: &Path,
) -> Result<tempfile::TempDir> {
    let dir = make_tmp_dir(tmp_dir)?;
    let (reader, _) = decompressing_reader(reader)?;
    crate::build::archive::unpack_confined(reader, dir.path(), None)?;
    Ok(dir)
}
