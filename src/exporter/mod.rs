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
    let names = image_names(outputs)?;
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

/// One platform's result of a multi-platform build.
pub struct PlatformImage {
    pub platform: crate::platform::Platform,
    pub config: ImageConfigFile,
    pub layers: Vec<LayerRef>,
}

/// Refuses, before anything is built, outputs that cannot hold what the build makes: a docker
/// archive holds one platform.
pub fn check_outputs(outputs: &[Output], platforms: &[crate::platform::Platform]) -> Result<()> {
    if platforms.len() > 1 && outputs.iter().any(|o| matches!(o, Output::Docker { .. })) {
        let list: Vec<String> = platforms.iter().map(|p| p.to_string()).collect();
        anyhow::bail!(
            "--output type=docker holds one platform, and this build makes {} ({}): build one \
             with --platform PLATFORM, or write them all with --output type=oci",
            platforms.len(),
            list.join(", ")
        );
    }
    Ok(())
}

/// The `-t` names of the image outputs, parsed.
fn image_names(outputs: &[Output]) -> Result<Vec<Reference>> {
    let mut names = Vec::new();
    for out in outputs {
        if let Output::Image { names: n } = out {
            for name in n {
                names.push(Reference::parse(name)?);
            }
        }
    }
    Ok(names)
}
/// The outputs of a multi-platform build: each platform's manifest committed, an index over
/// them named by the `-t` names, then the other outputs (an OCI archive of the index; local and
/// tar outputs with one folder per platform, `linux_arm64/`, as BuildKit writes them). Returns
/// the index digest.
pub fn export_multi(
    store: &Store,
    progress: &Progress,
    outputs: &[Output],
    images: &[PlatformImage],
) -> Result<String> {
    let names = image_names(outputs)?;
    let step = progress.start_export();
    let result = (|| -> Result<String> {
        let mut manifests = Vec::new();
        for img in images {
            let committed = image::commit(store, &img.config, &img.layers, &[])?;
            progress.status(
                step,
                &format!(
                    "exporting manifest {} ({}) done",
                    committed.manifest_digest, img.platform
                ),
            );
            manifests.push((committed.manifest_digest, Some(img.platform.clone())));
        }
        let bytes = crate::oci::index::build_index(store, &manifests)?;
        let digest = store.add_index_with_names(&bytes, &names)?;
        progress.status(step, &format!("exporting manifest list {digest} done"));
        for n in &names {
            progress.status(step, &format!("naming to {} done", n.full()));
        }
        for out in outputs {
            match out {
                Output::Image { .. } => {}
                Output::Local { dest } => {
                    for img in images {
                        local::export(store, &img.layers, &dest.join(img.platform.dir_name()))?;
                    }
                }
                Output::Tar { dest } => {
                    let tmp = tempfile::Builder::new()
                        .prefix("export.")
                        .tempdir_in(store.tmp_dir())?;
                    for img in images {
                        let dir = tmp.path().join(img.platform.dir_name());
                        std::fs::create_dir_all(&dir)?;
                        local::flatten_into(store, &img.layers, &dir)?;
                    }
                    let opts = crate::oci::layer::WriteOptions {
                        source_date_epoch: None,
                    };
                    write_to_dest(dest, |w| {
                        crate::oci::layer::write_tree_layer(tmp.path(), w, &opts)
                    })?;
                }
                Output::Oci { dest, compression } => {
                    progress.status(
                        step,
                        &format!("exporting to an OCI archive {}", dest.display()),
                    );
                    archive::save_archive(store, &digest, &names, true, *compression, dest)?;
                }
                Output::Docker { .. } => check_outputs(
                    outputs,
                    &images
                        .iter()
                        .map(|i| i.platform.clone())
                        .collect::<Vec<_>>(),
                )?,
            }
        }
        Ok(digest)
    })();
    match &result {
        Ok(_) => progress.done(step),
        Err(e) => progress.failed(step, &format!("{e:#}")),
    }
    result
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
