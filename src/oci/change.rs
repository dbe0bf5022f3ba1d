//! What an execution changed in a filesystem, as the differ (`snapshot`) reports it and the layer
//! writer (`oci::layer`) turns it into a tarball. This is containerd's split: the snapshotter
//! knows which paths changed; the archive code knows how to write them.

use std::path::PathBuf;

/// One change, with a path relative to the root of the filesystem (no leading `/`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Change {
    /// The path exists after the execution and must be written to the layer as it is on disk
    /// (file, directory, symlink, hard link, device, fifo), with its metadata and xattrs.
    Upsert(PathBuf),
    /// The path was removed: the layer gets a whiteout `.wh.<name>`.
    Delete(PathBuf),
    /// The directory was replaced: everything below it in lower layers is hidden. The layer gets
    /// the directory itself and an opaque marker `.wh..wh..opq` inside it.
    Opaque(PathBuf),
}

impl Change {
    pub fn path(&self) -> &std::path::Path {
        match self {
            Change::Upsert(p) | Change::Delete(p) | Change::Opaque(p) => p,
        }
    }
}
