//! A container's root filesystem seen from outside, for `cp`, `diff`, `export` and `commit`.
//!
//! - A running container: `/proc/<init>/root`, the root its processes see (volumes and other
//!   mounts included, as docker's `cp` sees them).
//! - A stopped (or created) container, read only: a throwaway overlay of the image's layers with
//!   the container's writable layer (`containers/<id>/upper`, overlay form) as the top-most
//!   lower, so nothing of the container is written.
//! - A stopped container, writable (`cp` into it): an overlay with the writable layer as its
//!   upperdir, while this process is recorded as the container's owner (so `start` refuses it
//!   until the copy is done: one overlay at a time on an upperdir).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::lifecycle::upper_dir;
use super::state::{self, ContainerRecord, Status};
use crate::snapshot::{ActiveSnapshot, PrepareOptions, Snapshotter};
use crate::store::Store;

/// A container's root filesystem, mounted (or reached) for as long as this lives.
pub struct RootView<'a> {
    path: PathBuf,
    _snapshot: Option<ActiveSnapshot>,
    claim: Option<Claim<'a>>,
}

impl RootView<'_> {
    /// The host path of the container's `/`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Releases the view (unmounts; gives the container back to `start`).
    pub fn release(mut self) -> Result<()> {
        if let Some(s) = self._snapshot.take() {
            s.release()?;
        }
        if let Some(c) = self.claim.take() {
            c.release()?;
        }
        Ok(())
    }
}

/// The image layers of a container, base first.
pub fn image_lowers(store: &Store, rec: &ContainerRecord) -> Result<Vec<PathBuf>> {
    let image_config = store.config(&rec.image_id).with_context(|| {
        format!(
            "reading the config of image {} of container {} (was it removed?)",
            rec.image, rec.name
        )
    })?;
    let manifest = store.manifest(&rec.manifest)?;
    Snapshotter::new(store.root())?.image_lowers(store, &manifest, &image_config)
}

/// The container's root filesystem (see the module doc). `writable`: the caller writes into it.
pub fn open<'a>(store: &'a Store, rec: &ContainerRecord, writable: bool) -> Result<RootView<'a>> {
    let rec =
        state::get(store, &rec.id)?.with_context(|| format!("no such container: {}", rec.name))?;
    if rec.status() == Status::Running && rec.init_pid > 0 {
        let path = PathBuf::from(format!("/proc/{}/root", rec.init_pid));
        return Ok(RootView {
            path,
            _snapshot: None,
            claim: None,
        });
    }
    if !writable {
        return open_layers(store, &rec);
    }
    let snapshotter = Snapshotter::new(store.root())?;
    let lowers = image_lowers(store, &rec)?;
    let upper = upper_dir(store, &rec.id);
    let claim = Claim::take(store, &rec)?;
    let snap = snapshotter.prepare_with_upper(&lowers, &PrepareOptions { volatile: false }, &upper);
    match snap {
        Ok(snap) => Ok(RootView {
            path: snap.merged(),
            _snapshot: Some(snap),
            claim: Some(claim),
        }),
        Err(e) => {
            let _ = claim.release();
            Err(e)
        }
    }
}

/// The container's own filesystem, read only, running or not: a throwaway overlay of the
/// image's layers with the writable layer as the top-most lower (no volumes, no /proc).
pub fn open_layers<'a>(store: &'a Store, rec: &ContainerRecord) -> Result<RootView<'a>> {
    let mut lowers = image_lowers(store, rec)?;
    let upper = upper_dir(store, &rec.id);
    if upper.is_dir() {
        lowers.push(upper);
    }
    let snap =
        Snapshotter::new(store.root())?.prepare(&lowers, &PrepareOptions { volatile: true })?;
    Ok(RootView {
        path: snap.merged(),
        _snapshot: Some(snap),
        claim: None,
    })
}

/// This process recorded as the owner of a stopped container (compare-and-swap on the owner
/// columns), so that `start`, `rm` and another writer leave it alone until released.
struct Claim<'a> {
    store: &'a Store,
    id: String,
    prev: (i32, u64),
}

impl Claim<'_> {
    fn take<'a>(store: &'a Store, rec: &ContainerRecord) -> Result<Claim<'a>> {
        if rec.owner_alive() {
            bail!(
                "container {} is being started or changed by process {}: try again in a moment",
                rec.name,
                rec.owner_pid
            );
        }
        // SAFETY: getpid has no preconditions.
        let me = unsafe { libc::getpid() };
        if !state::claim_owner(store, &rec.id, (rec.owner_pid, rec.owner_start), me)? {
            bail!(
                "container {} was started while kiln was getting ready to copy: run the command \
                 again",
                rec.name
            );
        }
        Ok(Claim {
            store,
            id: rec.id.clone(),
            prev: (rec.owner_pid, rec.owner_start),
        })
    }

    fn release(self) -> Result<()> {
        state::restore_owner(self.store, &self.id, self.prev)
    }
}
