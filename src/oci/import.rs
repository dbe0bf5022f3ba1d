//! `kiln import`: a one-layer image from a root filesystem tarball, like `docker import`. The
//! tarball is checked entry by entry while it streams through the compressor into the store, so
//! it is read once.

use std::io::{self, Read, Write};

use anyhow::{bail, Context, Result};
use oci_spec::image::{
    HistoryBuilder, ImageConfiguration, ImageConfigurationBuilder, RootFsBuilder,
};

use super::compress::{decompress, Compression, Compressor};
use super::image::{apply_change, host_architecture, now_rfc3339};
use crate::reference::Reference;
use crate::store::space::Limits;
use crate::store::{CommittedImage, LayerRecord, Store};

/// Options of one import.
pub struct ImportOptions<'a> {
    /// Names to give the image (may be empty: an unnamed image).
    pub names: &'a [Reference],
    /// `--change` instructions.
    pub changes: &'a [String],
    /// How the layer is stored (gzip unless asked otherwise).
    pub compression: Compression,
    /// Shown in the history comment (`Imported from <source>`).
    pub source: &'a str,
    /// The platform the config declares (`--platform`); this machine's when `None`.
    pub platform: Option<crate::platform::Platform>,
}

/// Feeds every byte read into a writer as well (the compressor), so that checking the tar and
/// storing the layer are one pass.
/// Also stops at the largest accepted layer (the free-space floor is the blob writer's).
struct Tee<R, W> {
    inner: R,
    copy: W,
    size: u64,
    limits: Limits,
    /// Why reading stopped at a bound (the tar reader reports it as a read error).
    stopped: Option<String>,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.size += n as u64;
        let bounded = self
            .limits
            .check_layer_size(self.size)
            .and_then(|()| self.copy.write_all(&buf[..n]));
        if let Err(e) = &bounded {
            self.stopped = Some(e.to_string());
        }
        bounded.map(|()| n)
    }
}

/// Imports the tarball read from `input` (gzip, zstd or uncompressed).
pub fn import(store: &Store, input: impl Read, opts: &ImportOptions) -> Result<CommittedImage> {
    // Validate the config changes before reading anything big.
    let created = now_rfc3339();
    let mut config: ImageConfiguration = ImageConfigurationBuilder::default()
        .architecture(host_architecture())
        .os("linux")
        .created(created.clone())
        .build()
        .context("building the image config")?;
    if let Some(p) = &opts.platform {
        config.set_architecture(p.architecture.as_str().into());
        config.set_os(p.os.as_str().into());
        config.set_variant(p.variant.clone());
    }
    for change in opts.changes {
        apply_change(&mut config, change)?;
    }

    let (_, stream) = decompress(input).context("reading the tarball")?;
    let compressor = Compressor::new(store.blob_writer()?, opts.compression)?;
    let mut tee = Tee {
        inner: super::targuard::TarGuard::new(stream),
        copy: compressor,
        size: 0,
        limits: Limits::current()?,
        stopped: None,
    };
    let checked = check_entries(&mut tee).and_then(|entries| {
        // The end-of-archive padding belongs to the layer too.
        io::copy(&mut tee, &mut io::sink()).context("reading the tarball")?;
        Ok(entries)
    });
    if let Err(e) = checked {
        // Dropping the compressor removes the blob's temp file.
        match tee.stopped.take() {
            Some(why) => bail!("{why}"),
            None => return Err(e),
        }
    }
    let (blob_writer, digests) = tee.copy.finish().context("compressing the layer")?;
    let blob = blob_writer.commit(Some(&digests.digest))?;
    let media_type = opts.compression.layer_media_type();
    store.record_layer(&LayerRecord {
        digest: blob.digest.clone(),
        diff_id: digests.diff_id.clone(),
        media_type: media_type.to_string(),
        size: blob.size,
    })?;

    config.set_rootfs(
        RootFsBuilder::default()
            .typ("layers")
            .diff_ids(vec![digests.diff_id.clone()])
            .build()?,
    );
    config.set_history(Some(vec![HistoryBuilder::default()
        .created(created)
        .created_by("kiln import")
        .comment(format!("Imported from {}", opts.source))
        .build()?]));
    let layer = oci_spec::image::Descriptor::new(
        media_type,
        blob.size,
        blob.digest.parse::<oci_spec::image::Digest>()?,
    );
    store.commit_image(&config, &[layer], opts.names)
}

/// Checks every entry of the tar read from `input`; the number of entries.
fn check_entries(input: impl Read) -> Result<u64> {
    let mut entries = 0u64;
    let mut archive = tar::Archive::new(input);
    for entry in archive
        .entries()
        .context("not a tar archive (or a corrupt one)")?
    {
        let entry = entry.with_context(|| format!("tar entry {}: corrupt archive", entries + 1))?;
        let path = entry.path_bytes();
        if path.split(|&b| b == b'/').any(|c| c == b"..") {
            bail!(
                "tar entry {:?} climbs out of the root with `..`: refusing this tarball",
                String::from_utf8_lossy(&path)
            );
        }
        if let Some(link) = entry.link_name_bytes() {
            if entry.header().entry_type() == tar::EntryType::Link
                && link.split(|&b| b == b'/').any(|c| c == b"..")
            {
                bail!(
                    "hard link {:?} -> {:?} points out of the root: refusing this tarball",
                    String::from_utf8_lossy(&path),
                    String::from_utf8_lossy(&link)
                );
            }
        }
        entries += 1;
    }
    if entries == 0 {
        bail!("the tarball has no entries: expected a root filesystem (tar -C rootfs -c .)");
    }
    Ok(entries)
}
