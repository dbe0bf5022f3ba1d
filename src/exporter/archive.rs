//! `--output type=oci|docker`: the built image as an archive, written by the store's `kiln save`
//! code (`oci::archive::save`): an OCI image layout, or the docker format `docker load` reads.

use std::path::Path;

use anyhow::Result;

use super::OutputCompression;
use crate::oci::archive::{ArchiveFormat, SaveItem};
use crate::oci::compress::Compression;
use crate::reference::Reference;
use crate::store::Store;

/// Writes the image (its manifest already in the store) as an archive to `dest` (`-`: stdout).
pub fn save_archive(
    store: &Store,
    manifest_digest: &str,
    names: &[Reference],
    oci: bool,
    compression: OutputCompression,
    dest: &Path,
) -> Result<()> {
    let compression = match compression {
        OutputCompression::Gzip => Compression::Gzip,
        OutputCompression::Zstd => Compression::Zstd,
        OutputCompression::None => Compression::None,
    };
    let items = [SaveItem {
        manifest_digest: crate::snapshot::blobs::export_manifest(
            store,
            manifest_digest,
            compression,
        )?,
        names: names.to_vec(),
    }];
    let format = if oci {
        ArchiveFormat::Oci
    } else {
        ArchiveFormat::Docker
    };
    super::write_to_dest(dest, |out| {
        crate::oci::archive::save(store, &items, format, compression, out, true)
    })
}
