//! Volumes: named ones under `ROOT/volumes/<name>/_data`, filled from the image's content at the
//! mount point on first use (as docker does), and bind mounts, turned into sandbox mounts.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::config::{MountType, VolumeMount};
use crate::sandbox::{self, MountKind};

/// A named volume's data directory.
pub fn data_dir(root: &Path, name: &str) -> PathBuf {
    root.join("volumes").join(name).join("_data")
}

fn is_empty_dir(dir: &Path) -> Result<bool> {
    Ok(std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .next()
        .is_none())
}

/// The sandbox mounts for a container's volumes. Named volumes are created when missing; an
/// empty one is filled with what the image has at the mount point (`rootfs` is the container's
/// root filesystem, not yet started).
pub fn sandbox_mounts(
    root: &Path,
    rootfs: &Path,
    mounts: &[VolumeMount],
) -> Result<Vec<sandbox::Mount>> {
    let mut out = Vec::new();
    for m in mounts {
        if m.kind == MountType::Tmpfs {
            let (size_bytes, mode) = super::runflags::tmpfs_options(&m.source)?;
            out.push(sandbox::Mount {
                target: PathBuf::from(&m.target),
                kind: MountKind::Tmpfs { size_bytes, mode },
            });
            continue;
        }
        let source = match m.kind {
            MountType::Bind => {
                let source = PathBuf::from(&m.source);
                if !source.exists() {
                    // docker creates a missing bind source as a directory.
                    std::fs::create_dir_all(&source).with_context(|| {
                        format!("creating the bind mount source {}", source.display())
                    })?;
                }
                source
            }
            MountType::Volume => {
                let data = data_dir(root, &m.source);
                std::fs::create_dir_all(&data)
                    .with_context(|| format!("creating volume {}", data.display()))?;
                if is_empty_dir(&data)? {
                    let image_dir = sandbox::rootfs::resolve_in_root(rootfs, Path::new(&m.target))
                        .with_context(|| format!("resolving {} in the image", m.target))?;
                    if image_dir.is_dir() && !is_empty_dir(&image_dir)? {
                        copy_tree(&image_dir, &data).with_context(|| {
                            format!("filling volume {} from the image's {}", m.source, m.target)
                        })?;
                    }
                }
                data
            }
            MountType::Tmpfs => unreachable!("handled above"),
        };
        out.push(sandbox::Mount {
            target: PathBuf::from(&m.target),
            kind: MountKind::Bind {
                source,
                readonly: m.readonly,
            },
        });
    }
    Ok(out)
}

/// Copies a directory's content with owners, modes, times, xattrs and links (`cp -a`).
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg("--")
        .arg(from.join("."))
        .arg(to)
        .status()
        .context("running cp")?;
    if !status.success() {
        bail!(
            "cp -a {} {} failed ({status})",
            from.display(),
            to.display()
        );
    }
    Ok(())
}

/// Removes a volume's directory (its row is the caller's business).
pub fn remove_dir(root: &Path, name: &str) -> Result<()> {
    let dir = root.join("volumes").join(name);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing volume {}", dir.display())),
    }
}
