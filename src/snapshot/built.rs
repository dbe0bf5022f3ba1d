//! Layers a build made, kept unpacked: a finished step's upperdir becomes
//! `snapshots/layers/<diffid hex>/` and the store records the layer as unpacked
//! (`Store::record_unpacked_layer`) with its DiffID and uncompressed size, computed by streaming
//! the layer's tar once into a hash (nothing is written, nothing compressed). The entry list the
//! tar was written from (the upperdir holds more than the layer: directories copied up unchanged,
//! whiteouts of paths no lower layer has) is kept as a small blob, so that [`write_tar`] writes
//! exactly the same tar again when an export needs a blob (`snapshot::blobs`).
//!
//! Entry list format: one record per change, `U`/`D`/`O` (upsert, delete, opaque), the path's
//! bytes, a NUL.

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::{ActiveSnapshot, Snapshotter};
use crate::oci::change::Change;
use crate::store::{Store, UnpackedLayerRecord};

/// A layer kept unpacked by [`keep_upper`].
#[derive(Debug, Clone)]
pub struct KeptLayer {
    pub diff_id: String,
    /// Bytes of the uncompressed tar.
    pub size: u64,
    /// Bytes at the start of the tar not hashed again (shared with `keep_upper`'s `base`).
    pub reused: u64,
}

/// Encodes a change list (see the module doc).
pub fn encode_changes(changes: &[Change]) -> Vec<u8> {
    let mut out = Vec::new();
    for c in changes {
        out.push(match c {
            Change::Upsert(_) => b'U',
            Change::Delete(_) => b'D',
            Change::Opaque(_) => b'O',
        });
        out.extend_from_slice(c.path().as_os_str().as_bytes());
        out.push(0);
    }
    out
}

/// Decodes what [`encode_changes`] wrote.
pub fn decode_changes(bytes: &[u8]) -> Result<Vec<Change>> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let end = rest
            .iter()
            .position(|&b| b == 0)
            .context("a layer's entry list is truncated (the blob is corrupt)")?;
        let (record, tail) = rest.split_at(end);
        rest = &tail[1..];
        let Some((&kind, path)) = record.split_first() else {
            bail!("a layer's entry list has an empty record (the blob is corrupt)");
        };
        let path = PathBuf::from(std::ffi::OsStr::from_bytes(path));
        out.push(match kind {
            b'U' => Change::Upsert(path),
            b'D' => Change::Delete(path),
            b'O' => Change::Opaque(path),
            other => bail!(
                "a layer's entry list has an unknown record kind {:?} (the blob is corrupt)",
                other as char
            ),
        });
    }
    Ok(out)
}

/// Makes the finished snapshot's upperdir the unpacked layer of `changes` (as `ops` computed them
/// from it): with SOURCE_DATE_EPOCH the upperdir's mtimes are clamped first (as the tar's are, so
/// later steps see what an unpacked blob would show), then the tar is streamed once into a hash
/// for the DiffID and size, the upperdir renamed to `snapshots/layers/<hex>/` (kept as it is when
/// that layer is already there: same content), made durable file by file before that rename
/// (`snapshot::durable`: only what the layer consists of, never the whole filesystem), the entry
/// list stored and the layer recorded. Returns None when the upperdir could not be moved (the
/// caller then writes a blob as before).
///
/// `base`: a layer this one likely starts like (an incremental COPY's previous result, whose
/// unchanged files the upperdir links): hashing resumes after the part of the tar the two share
/// (`oci::tar::layer::hash_layer`), and the checkpoints are recorded for the next rebuild.
pub fn keep_upper(
    store: &Store,
    snapshotter: &Snapshotter,
    snap: &ActiveSnapshot,
    changes: &[Change],
    source_date_epoch: Option<i64>,
    base: Option<&str>,
) -> Result<Option<KeptLayer>> {
    let upper = snap.upper();
    if let Some(epoch) = source_date_epoch {
        clamp_mtimes(&upper, epoch)
            .with_context(|| format!("clamping mtimes in {}", upper.display()))?;
    }
    let opts = crate::oci::layer::WriteOptions { source_date_epoch };
    let base_checkpoints = match base {
        Some(d) => store
            .layer_checkpoints(d)?
            .map(|b| crate::oci::layer::decode_checkpoints(&b))
            .unwrap_or_default(),
        None => Vec::new(),
    };
    let hashed = crate::oci::layer::hash_layer(&upper, changes, &opts, &base_checkpoints)
        .context("hashing the step's layer")?;
    let diff_id = hashed.diff_id.clone();
    let size = hashed.size;
    let dir = snapshotter.layer_dir(&diff_id)?;
    // The checkpoints describe the upperdir's files: kept only when it becomes the layer.
    let mut moved = false;
    if !dir.is_dir() {
        // Durable before it has its final name (see `durable`): a layer directory in place is
        // always complete. Links into `base` are durable when the store recorded that layer.
        let base_dir = match base {
            Some(d) if store.unpacked_layer(d)?.is_some() => Some(snapshotter.layer_dir(d)?),
            _ => None,
        };
        let inspect = super::durable::DiskInspect {
            root: &upper,
            durable_base: base_dir.as_deref().filter(|d| d.is_dir()),
        };
        super::durable::sync(&upper, &super::durable::plan(changes, &inspect))
            .context("making the step's layer durable")?;
        // Within the snapshots filesystem; the overlay keeps working until it is unmounted.
        if std::fs::rename(&upper, &dir).is_ok() {
            moved = true;
        } else if !dir.is_dir() {
            return Ok(None);
        }
    } else if store.unpacked_layer(&diff_id)?.is_none() {
        // Put in place by another kiln that has not recorded it yet (made durable before its
        // rename), or unpacked from a blob (never synced): synced here, as its own.
        let inspect = super::durable::DiskInspect {
            root: &dir,
            durable_base: None,
        };
        super::durable::sync(&dir, &super::durable::plan(changes, &inspect))
            .context("making the step's layer durable")?;
    }
    // The layer's name in `snapshots/layers/`.
    super::durable::fsync_path(&snapshotter.layers_dir(), true)?;
    let list = store.put_blob_bytes(&encode_changes(changes))?;
    let checkpoints = moved.then(|| crate::oci::layer::encode_checkpoints(&hashed.checkpoints));
    store.record_unpacked_layer_resumable(
        &UnpackedLayerRecord {
            diff_id: diff_id.clone(),
            size,
            changes: list.digest,
            source_date_epoch,
        },
        checkpoints.as_deref(),
    )?;
    Ok(Some(KeptLayer {
        diff_id,
        size,
        reused: hashed.reused,
    }))
}

/// Writes the tar of the unpacked layer `layer` again, byte for byte the one its DiffID was
/// computed from (the caller verifies the digest).
pub fn write_tar(store: &Store, layer: &UnpackedLayerRecord, out: impl Write) -> Result<()> {
    tar_source(store, layer)?.write(out)
}

/// What [`write_tar`] needs, read from the store up front (so the tar can be written on another
/// thread without the store).
#[derive(Debug, Clone)]
pub struct TarSource {
    diff_id: String,
    dir: PathBuf,
    changes: Vec<Change>,
    opts: crate::oci::layer::WriteOptions,
}

impl TarSource {
    pub fn write(&self, out: impl Write) -> Result<()> {
        crate::oci::layer::write_layer(&self.dir, &self.changes, out, &self.opts)
            .with_context(|| format!("writing layer {} from {}", self.diff_id, self.dir.display()))
    }
}

/// The unpacked directory and entry list of `layer`.
pub fn tar_source(store: &Store, layer: &UnpackedLayerRecord) -> Result<TarSource> {
    let dir = store.unpacked_layer_path(&layer.diff_id)?;
    if !dir.is_dir() {
        bail!(
            "layer {}: its unpacked content {} is missing from the store (rebuild the image)",
            layer.diff_id,
            dir.display()
        );
    }
    let list = store
        .read_blob(&layer.changes)
        .with_context(|| format!("layer {}: its entry list", layer.diff_id))?;
    Ok(TarSource {
        diff_id: layer.diff_id.clone(),
        dir,
        changes: decode_changes(&list)?,
        opts: crate::oci::layer::WriteOptions {
            source_date_epoch: layer.source_date_epoch,
        },
    })
}

/// Sets every mtime above `epoch` under `root` (root excluded) to `epoch`, not following symlinks.
fn clamp_mtimes(root: &Path, epoch: i64) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    for entry in walkdir::WalkDir::new(root).follow_links(false).min_depth(1) {
        let entry = entry?;
        let meta = entry.path().symlink_metadata()?;
        if meta.mtime() <= epoch {
            continue;
        }
        let c = std::ffi::CString::new(entry.path().as_os_str().as_bytes())
            .context("a path contains NUL")?;
        let times = [
            libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_OMIT,
            },
            libc::timespec {
                tv_sec: epoch as libc::time_t,
                tv_nsec: 0,
            },
        ];
        // SAFETY: c is a valid C string and times points to two timespecs, as utimensat needs.
        let rc = unsafe {
            libc::utimensat(
                libc::AT_FDCWD,
                c.as_ptr(),
                times.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("setting the mtime of {}", entry.path().display()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_lists_round_trip() {
        let changes = vec![
            Change::Upsert("a/b c".into()),
            Change::Delete("x/.hidden".into()),
            Change::Opaque("dir".into()),
            Change::Upsert(PathBuf::from(std::ffi::OsStr::from_bytes(b"bin\xffary"))),
        ];
        assert_eq!(decode_changes(&encode_changes(&changes)).unwrap(), changes);
        assert!(decode_changes(b"Uabc").is_err());
        assert!(decode_changes(b"Xabc\0").is_err());
        assert!(decode_changes(b"").unwrap().is_empty());
    }
}
