//! Exporters: where a built image goes. Each output kind is a sibling module: the image in
//! kiln's store (`image`, always: the other outputs read it from there), an OCI or docker archive
//! (`archive`), the flattened filesystem as a directory (`local`) or a tarball (`tar`), and a push
//! to its registry (`registry`). A new output is a new sibling and a new `Output` variant.

pub mod archive;
pub mod image;
pub mod local;
pub mod registry;
pub mod tar;

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};

use crate::oci::config::ImageConfigFile;
use crate::oci::layer::LayerRef;
use crate::reference::Reference;
use crate::solver::progress::Progress;
use crate::store::Store;

/// Layer compression for archive outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputCompression {
    Gzip,
    Zstd,
    None,
}

/// Where the result goes (`--output`); the default is the image in kiln's store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// The image in the store, under the `-t` names (and `name=` of the output).
    Image { names: Vec<String> },
    /// An OCI image layout tarball.
    Oci {
        dest: PathBuf,
        compression: OutputCompression,
    },
    /// A `docker load` tarball.
    Docker {
        dest: PathBuf,
        compression: OutputCompression,
    },
    /// The final filesystem as a tarball.
    Tar { dest: PathBuf },
    /// The final filesystem written into a directory.
    Local { dest: PathBuf },
}

/// Commits the image to the store under the `-t` names, then writes the other outputs. Returns
/// the image ID (the config digest, as docker prints it).
pub fn export(
    store: &Store,
    progress: &Progress,
    outputs: &[Output],
    config: &ImageConfigFile,
    layers: &[LayerRef],
) -> Result<String> {
    let mut names = Vec::new();
    for out in outputs {
        if let Output::Image { names: n } = out {
            for name in n {
                names.push(Reference::parse(name)?);
            }
        }
    }
    let step = progress.start_export();
    let result = export_to(store, progress, step, outputs, &names, config, layers);
    match &result {
        Ok(_) => progress.done(step),
        Err(e) => progress.failed(step, &format!("{e:#}")),
    }
    result
}

fn export_to(
    store: &Store,
    progress: &Progress,
    step: crate::solver::progress::StepId,
    outputs: &[Output],
    names: &[Reference],
    config: &ImageConfigFile,
    layers: &[LayerRef],
) -> Result<String> {
    let committed = image::commit(store, config, layers, names)?;
    // BuildKit's lines: the image ID, then each name.
    progress.status(step, &format!("writing image {} done", committed.image_id));
    for n in names {
        progress.status(step, &format!("naming to {} done", n.full()));
    }
    for out in outputs {
        match out {
            Output::Image { .. } => {}
            Output::Local { dest } => {
                progress.status(
                    step,
                    &format!("exporting the filesystem to {}", dest.display()),
                );
                local::export(store, layers, dest)?;
            }
            Output::Tar { dest } => {
                progress.status(
                    step,
                    &format!(
                        "exporting the filesystem as a tarball to {}",
                        dest.display()
                    ),
                );
                tar::export(store, layers, dest)?;
            }
            Output::Oci { dest, compression } | Output::Docker { dest, compression } => {
                let oci = matches!(out, Output::Oci { .. });
                progress.status(
                    step,
                    &format!(
                        "exporting to {} archive {}",
                        if oci { "an OCI" } else { "a docker" },
                        dest.display()
                    ),
                );
                archive::save_archive(
                    store,
                    &committed.manifest_digest,
                    names,
                    oci,
                    *compression,
                    dest,
                )?;
            }
        }
    }
    Ok(committed.image_id)
}

/// Writes a file output through `f`: to stdout for `-`, else to a temporary file beside `dest`
/// that is fsynced and renamed over it, so a failed export never leaves half a file.
pub fn write_to_dest(dest: &Path, f: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<()> {
    if dest.as_os_str() == "-" {
        let mut lock = std::io::BufWriter::new(crate::report::stdout());
        f(&mut lock)?;
        lock.flush()?;
        return Ok(());
    }
    let dir = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("writing {}", dest.display()))?;
    {
        let mut w = std::io::BufWriter::new(tmp.as_file_mut());
        f(&mut w)?;
        w.flush()?;
    }
    tmp.as_file().sync_all()?;
    tmp.persist(dest)
        .map_err(|e| anyhow!("writing {}: {}", dest.display(), e.error))?;
    Ok(())
}
