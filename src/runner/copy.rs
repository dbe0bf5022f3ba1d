//! `kiln cp`: files between a container and the host, in both directions, as docker's.
//!
//! Everything moves as a tar stream. The side inside the container is a helper process (kiln
//! re-executed as the hidden `container-cp-helper`) that `chroot`s into the container's root
//! (`rootview`) before it reads or writes anything, so the kernel resolves every path and
//! symlink inside that root: a symlink the container made (even one swapped in while the copy
//! runs) cannot lead a write or a read outside it. The host side runs in kiln itself.
//!
//! Destination rules (docker's): a file onto an existing directory goes inside it, onto a file
//! replaces it, onto a missing name creates it (its parent must exist; a trailing `/` needs a
//! directory); a directory onto an existing directory goes inside it (`SRC/.`: its content),
//! onto a missing name is created with that name, onto a file is an error. Owners: into a
//! container the files belong to its root (0:0) unless `-a` keeps the source's; out of one they
//! belong to the user running kiln unless `-a`. Modes and mtimes are kept. `-L` follows a
//! symlink that SRC itself is. `-` is a tar stream on stdin (into a directory) or stdout.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use super::rootview;
use super::state::ContainerRecord;
use crate::store::Store;

/// One end of a copy, as docker's command line reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `-`: a tar stream on stdin or stdout.
    Stream,
    Host(PathBuf),
    /// CONTAINER:PATH
    Container(String, String),
}

impl Endpoint {
    /// `NAME:PATH` is a container's path unless the argument starts with `/` or `.` (a local
    /// path with a colon must be written `./a:b`), as docker's.
    pub fn parse(arg: &str) -> Result<Endpoint> {
        if arg == "-" {
            return Ok(Endpoint::Stream);
        }
        if arg.starts_with('/') || arg.starts_with('.') {
            return Ok(Endpoint::Host(PathBuf::from(arg)));
        }
        match arg.split_once(':') {
            Some((c, p)) if !c.is_empty() && !c.contains('/') => {
                if p.is_empty() {
                    bail!("{arg:?}: no path after the container name (CONTAINER:PATH)");
                }
                Ok(Endpoint::Container(c.to_string(), p.to_string()))
            }
            _ => Ok(Endpoint::Host(PathBuf::from(arg))),
        }
    }
}

/// `-a` and `-L`.
#[derive(Debug, Clone, Copy, Default)]
pub struct CopyOptions {
    pub archive: bool,
    pub follow_link: bool,
}

/// What the source is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceInfo {
    pub is_dir: bool,
    /// `SRC/.`: a directory's content, not the directory.
    pub contents_only: bool,
    /// The source's last path component.
    pub base: OsString,
}

/// What the destination is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DestState {
    Dir,
    NotDir,
    Missing { parent_is_dir: bool },
}

/// Where to extract and the name the stream's top entry gets: docker's destination rules.
pub fn plan(src: &SourceInfo, dest: &str, state: DestState) -> Result<(PathBuf, OsString)> {
    let dest_path = Path::new(dest);
    let trailing_slash = dest.ends_with('/') || dest.ends_with("/.");
    match state {
        DestState::Dir => {
            let name = if src.is_dir && src.contents_only {
                OsString::from(".")
            } else {
                src.base.clone()
            };
            Ok((dest_path.to_path_buf(), name))
        }
        DestState::NotDir => {
            if src.is_dir {
                bail!("cannot copy a directory onto the file {dest}: name a directory instead");
            }
            if trailing_slash {
                bail!("{dest} is not a directory");
            }
            Ok(split(dest_path))
        }
        DestState::Missing { parent_is_dir } => {
            if trailing_slash && !src.is_dir {
                bail!("the directory {dest} does not exist (a file is copied into an existing directory)");
            }
            if !parent_is_dir {
                bail!("the parent directory of {dest} does not exist: create it first",);
            }
            Ok(split(dest_path.components().as_path()))
        }
    }
}

fn split(p: &Path) -> (PathBuf, OsString) {
    let parent = p
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = p
        .file_name()
        .map(OsString::from)
        .unwrap_or_else(|| ".".into());
    (parent.to_path_buf(), name)
}

fn source_info(path: &str, is_dir: bool) -> SourceInfo {
    let contents_only = path.ends_with("/.") || path == ".";
    let base = Path::new(path)
        .components()
        .rfind(|c| matches!(c, Component::Normal(_)))
        .map(|c| c.as_os_str().to_os_string())
        .unwrap_or_else(|| ".".into());
    SourceInfo {
        is_dir,
        contents_only,
        base,
    }
}

/// lstat (or stat with `follow`) of `path` inside `root`, with the container's view of symlinks
/// (for decisions only: the copy itself happens in the chrooted helper).
fn stat_in_root(root: &Path, path: &str, follow: bool) -> std::io::Result<std::fs::Metadata> {
    let p = Path::new(path);
    let resolved = if follow {
        crate::sandbox::rootfs::resolve_in_root(root, p)?
    } else {
        let parent = p.parent().unwrap_or(Path::new("/"));
        let mut r = crate::sandbox::rootfs::resolve_in_root(root, parent)?;
        match p.file_name() {
            Some(n) => r.push(n),
            None => {
                // `/`, `x/..`, `x/.`: the directory itself
                r = crate::sandbox::rootfs::resolve_in_root(root, p)?;
            }
        }
        r
    };
    std::fs::symlink_metadata(resolved)
}

fn dest_state(
    meta: std::io::Result<std::fs::Metadata>,
    parent: impl FnOnce() -> bool,
) -> Result<DestState> {
    match meta {
        Ok(m) if m.is_dir() => Ok(DestState::Dir),
        Ok(_) => Ok(DestState::NotDir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(DestState::Missing {
            parent_is_dir: parent(),
        }),
        Err(e) => Err(e.into()),
    }
}

fn parent_of(path: &str) -> String {
    let p = Path::new(path);
    match p.parent() {
        Some(pp) if !pp.as_os_str().is_empty() => pp.to_string_lossy().into_owned(),
        _ if path.starts_with('/') => "/".into(),
        _ => ".".into(),
    }
}

/// In the container a path is absolute (a relative one is relative to `/`, as docker's).
fn container_path(p: &str) -> String {
    if p.starts_with('/') {
        p.to_string()
    } else {
        format!("/{p}")
    }
}

/// `kiln cp SRC DEST`.
pub fn cp(store: &Store, src: &Endpoint, dest: &Endpoint, opts: CopyOptions) -> Result<()> {
    // Limits are read from the host's config now, before any helper chroots.
    crate::store::space::Limits::current()?;
    match (src, dest) {
        (Endpoint::Container(c, path), Endpoint::Host(_) | Endpoint::Stream) => {
            let rec = super::state::find(store, c)?;
            copy_out(store, &rec, &container_path(path), dest, opts)
        }
        (Endpoint::Host(_) | Endpoint::Stream, Endpoint::Container(c, path)) => {
            let rec = super::state::find(store, c)?;
            copy_in(store, &rec, src, &container_path(path), opts)
        }
        (Endpoint::Container(..), Endpoint::Container(..)) => {
            bail!("copying between containers is not supported: copy to the host first")
        }
        _ => bail!(
            "one of SRC and DEST must be a container's path (CONTAINER:PATH); use cp(1) on the \
             host"
        ),
    }
}

fn helper(view: &Path) -> Command {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
    let mut cmd = Command::new(exe);
    cmd.arg("container-cp-helper").arg("--chroot").arg(view);
    cmd.stderr(Stdio::piped());
    cmd
}

fn wait_helper(child: std::process::Child, what: &str) -> Result<()> {
    let out = child
        .wait_with_output()
        .context("waiting for the copy helper")?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stderr);
        let msg = msg.trim().trim_start_matches("kiln: ");
        bail!(
            "{what}: {}",
            if msg.is_empty() {
                "the copy helper failed"
            } else {
                msg
            }
        );
    }
    Ok(())
}

fn copy_out(
    store: &Store,
    rec: &ContainerRecord,
    path: &str,
    dest: &Endpoint,
    opts: CopyOptions,
) -> Result<()> {
    let view = rootview::open(store, rec, false)?;
    let result = (|| {
        let meta = stat_in_root(view.path(), path, opts.follow_link)
            .map_err(|e| anyhow::anyhow!("could not find {path} in container {}: {e}", rec.name))?;
        let info = source_info(path, meta.is_dir());
        let mut cmd = helper(view.path());
        cmd.arg("archive").arg(path);
        if opts.follow_link {
            cmd.arg("--follow");
        }
        let what = format!("copying {}:{path}", rec.name);
        match dest {
            Endpoint::Stream => {
                cmd.arg("--name").arg(&info.base);
                cmd.stdout(Stdio::inherit()).stdin(Stdio::null());
                let child = cmd.spawn().context("starting the copy helper")?;
                wait_helper(child, &what)
            }
            Endpoint::Host(d) => {
                let d_str = d.to_string_lossy().into_owned();
                let state = dest_state(std::fs::metadata(d), || {
                    Path::new(&parent_of(&d_str)).is_dir()
                })?;
                let (dir, name) = plan(&info, &d_str, state)?;
                cmd.arg("--name").arg(&name);
                cmd.stdout(Stdio::piped()).stdin(Stdio::null());
                let mut child = cmd.spawn().context("starting the copy helper")?;
                let out = child.stdout.take().context("the helper's stdout")?;
                let owner = if opts.archive {
                    None
                } else {
                    // SAFETY: getuid/getgid have no preconditions.
                    Some(unsafe { (libc::getuid(), libc::getgid()) })
                };
                let extracted = crate::oci::layer::extract_archive(
                    out,
                    &dir,
                    crate::oci::layer::ExtractOptions { owner },
                );
                let helped = wait_helper(child, &what);
                helped?;
                extracted.with_context(|| format!("writing into {}", dir.display()))
            }
            Endpoint::Container(..) => unreachable!("checked by cp"),
        }
    })();
    let released = view.release();
    result?;
    released
}

fn copy_in(
    store: &Store,
    rec: &ContainerRecord,
    src: &Endpoint,
    path: &str,
    opts: CopyOptions,
) -> Result<()> {
    let view = rootview::open(store, rec, true)?;
    let result = (|| {
        let dest_meta = stat_in_root(view.path(), path, true);
        let state = dest_state(dest_meta, || {
            stat_in_root(view.path(), &parent_of(path), true).is_ok_and(|m| m.is_dir())
        })?;
        let what = format!("copying into {}:{path}", rec.name);
        let owner = if opts.archive {
            None
        } else {
            Some((0u32, 0u32))
        };
        let mut cmd = helper(view.path());
        cmd.arg("extract");
        if let Some((u, g)) = owner {
            cmd.arg("--owner").arg(format!("{u}:{g}"));
        }
        match src {
            Endpoint::Stream => {
                if state != DestState::Dir {
                    bail!("the destination {path} must be an existing directory for a tar stream");
                }
                cmd.arg(path);
                cmd.stdin(Stdio::piped()).stdout(Stdio::null());
                let mut child = cmd.spawn().context("starting the copy helper")?;
                let mut stdin = child.stdin.take().context("the helper's stdin")?;
                let (_, mut input) = crate::oci::compress::decompress(std::io::stdin().lock())
                    .context("reading the tar stream on stdin")?;
                let copied = std::io::copy(&mut input, &mut stdin);
                drop(stdin);
                let helped = wait_helper(child, &what);
                helped?;
                copied.context("sending the tar stream")?;
                Ok(())
            }
            Endpoint::Host(s) => {
                let meta = if opts.follow_link {
                    std::fs::metadata(s)
                } else {
                    std::fs::symlink_metadata(s)
                }
                .with_context(|| format!("could not find {} on the host", s.display()))?;
                let info = source_info(&s.to_string_lossy(), meta.is_dir());
                let (dir, name) = plan(&info, path, state)?;
                cmd.arg(&dir);
                cmd.stdin(Stdio::piped()).stdout(Stdio::null());
                let mut child = cmd.spawn().context("starting the copy helper")?;
                let stdin = child.stdin.take().context("the helper's stdin")?;
                let written = write_tar(s, Path::new(&name), opts.follow_link, stdin);
                let helped = wait_helper(child, &what);
                helped?;
                written.with_context(|| format!("reading {}", s.display()))
            }
            Endpoint::Container(..) => unreachable!("checked by cp"),
        }
    })();
    let released = view.release();
    result?;
    released
}

/// Writes `path` as a tar stream whose top entry is `name` (`.`: a directory's content).
/// Symlinks are stored as links, except `path` itself with `follow`.
pub fn write_tar(path: &Path, name: &Path, follow: bool, out: impl Write) -> Result<()> {
    let path = if follow {
        std::fs::canonicalize(path).with_context(|| format!("following {}", path.display()))?
    } else {
        path.to_path_buf()
    };
    let mut b = tar::Builder::new(out);
    b.follow_symlinks(false);
    b.mode(tar::HeaderMode::Complete);
    let meta = std::fs::symlink_metadata(&path)?;
    if meta.is_dir() {
        b.append_dir_all(name, &path)?;
    } else {
        b.append_path_with_name(&path, name)?;
    }
    b.into_inner()?.flush()?;
    Ok(())
}

/// The hidden helper's work, in the container's root (chrooted first, by the caller).
pub enum HelperWork {
    Archive {
        path: String,
        name: OsString,
        follow: bool,
    },
    Extract {
        dir: String,
        owner: Option<(u32, u32)>,
    },
}

/// `kiln container-cp-helper --chroot ROOT ...`: chroots into ROOT, then archives to stdout or
/// extracts stdin. Runs in a fresh, single-threaded process.
pub fn helper_main(root: &Path, work: HelperWork) -> Result<()> {
    // The storage limits come from the host's config, read before the chroot.
    crate::store::space::Limits::current()?;
    nix::unistd::chroot(root).with_context(|| format!("chroot into {}", root.display()))?;
    std::env::set_current_dir("/").context("chdir / in the container's root")?;
    match work {
        HelperWork::Archive { path, name, follow } => {
            let stdout = std::io::stdout().lock();
            write_tar(Path::new(&path), Path::new(&name), follow, stdout)
        }
        HelperWork::Extract { dir, owner } => {
            let input: Box<dyn Read> = Box::new(std::io::stdin().lock());
            let dir_path = Path::new(&dir);
            if !dir_path.is_dir() {
                bail!("{dir} is not a directory");
            }
            crate::oci::layer::extract_archive(
                input,
                dir_path,
                crate::oci::layer::ExtractOptions { owner },
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(base: &str) -> SourceInfo {
        SourceInfo {
            is_dir: false,
            contents_only: false,
            base: base.into(),
        }
    }

    #[test]
    fn endpoints_as_docker_reads_them() {
        assert_eq!(Endpoint::parse("-").unwrap(), Endpoint::Stream);
        assert_eq!(
            Endpoint::parse("web:/etc/hosts").unwrap(),
            Endpoint::Container("web".into(), "/etc/hosts".into())
        );
        assert_eq!(
            Endpoint::parse("./a:b").unwrap(),
            Endpoint::Host("./a:b".into())
        );
        assert_eq!(
            Endpoint::parse("/tmp/x:y").unwrap(),
            Endpoint::Host("/tmp/x:y".into())
        );
        assert_eq!(
            Endpoint::parse("rel").unwrap(),
            Endpoint::Host("rel".into())
        );
        assert!(Endpoint::parse("web:").is_err());
    }

    #[test]
    fn destination_rules() {
        // A file into a directory keeps its name; onto a file or a new name takes that name.
        assert_eq!(
            plan(&file("a.txt"), "/tmp", DestState::Dir).unwrap(),
            ("/tmp".into(), "a.txt".into())
        );
        assert_eq!(
            plan(&file("a.txt"), "/tmp/b", DestState::NotDir).unwrap(),
            ("/tmp".into(), "b".into())
        );
        assert_eq!(
            plan(
                &file("a.txt"),
                "/tmp/new",
                DestState::Missing {
                    parent_is_dir: true
                }
            )
            .unwrap(),
            ("/tmp".into(), "new".into())
        );
        assert!(plan(
            &file("a.txt"),
            "/tmp/new/",
            DestState::Missing {
                parent_is_dir: true
            }
        )
        .is_err());
        assert!(plan(
            &file("a.txt"),
            "/nope/new",
            DestState::Missing {
                parent_is_dir: false
            }
        )
        .is_err());
        let dir = SourceInfo {
            is_dir: true,
            contents_only: false,
            base: "d".into(),
        };
        assert_eq!(
            plan(&dir, "/x", DestState::Dir).unwrap(),
            ("/x".into(), "d".into())
        );
        assert!(plan(&dir, "/x", DestState::NotDir).is_err());
        assert_eq!(
            plan(
                &dir,
                "/x/new",
                DestState::Missing {
                    parent_is_dir: true
                }
            )
            .unwrap(),
            ("/x".into(), "new".into())
        );
        let content = SourceInfo {
            contents_only: true,
            ..dir
        };
        assert_eq!(
            plan(&content, "/x", DestState::Dir).unwrap(),
            ("/x".into(), ".".into())
        );
        assert_eq!(source_info("/a/b/.", true).base, "b");
        assert!(source_info("/a/b/.", true).contents_only);
        assert_eq!(source_info("/a/b/", true).base, "b");
    }
}
