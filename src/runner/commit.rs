//! A container's writable layer as docker shows and keeps it: `kiln diff` (A/C/D lines),
//! `kiln export` (a tarball of its whole filesystem) and `kiln commit` (a new image: the
//! container's image plus the writable layer as one more layer).
//!
//! The writable layer is `containers/<id>/upper` (overlay form); its changes against the image
//! are `snapshot::diff::diff_upper` over a read-only view of the image's layers, and the layer
//! tar is `oci::layer::write_layer` of those changes, as a build step's layer is made.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use oci_spec::image::HistoryBuilder;

use super::lifecycle::upper_dir;
use super::rootview;
use super::state::{ContainerRecord, Status};
use crate::oci::change::Change;
use crate::reference::Reference;
use crate::snapshot::{PrepareOptions, Snapshotter};
use crate::store::Store;

/// One line of `kiln diff`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiffKind {
    Added,
    Changed,
    Deleted,
}

impl DiffKind {
    pub fn letter(&self) -> char {
        match self {
            DiffKind::Added => 'A',
            DiffKind::Changed => 'C',
            DiffKind::Deleted => 'D',
        }
    }
}

/// The writable layer's changes against the image (`diff_upper`), with the lower view at hand
/// for `f`.
fn with_changes<T>(
    store: &Store,
    rec: &ContainerRecord,
    f: impl FnOnce(&[Change], &Path, &Path) -> Result<T>,
) -> Result<T> {
    let upper = upper_dir(store, &rec.id);
    let lowers = rootview::image_lowers(store, rec)?;
    // A throwaway overlay of the image's layers: its merged view is the lower view.
    let snap =
        Snapshotter::new(store.root())?.prepare(&lowers, &PrepareOptions { volatile: true })?;
    let lower = snap.merged();
    let result = (|| {
        let changes = if upper.is_dir() {
            crate::snapshot::diff::diff_upper(&upper, &lower)
                .with_context(|| format!("reading the writable layer of {}", rec.name))?
        } else {
            Vec::new()
        };
        let changes = without_kiln_mount_points(changes, &upper, &lower);
        f(&changes, &upper, &lower)
    })();
    let released = snap.release();
    let value = result?;
    released?;
    Ok(value)
}

/// Files and directories the runner makes as mount points while a container runs (the bound
/// /etc/hosts, /etc/hostname and /etc/resolv.conf, and /proc, /sys, /dev when the image lacks
/// them): docker keeps these in an init layer that neither `diff` nor `commit` shows, and so
/// does kiln. What the container writes to them goes to the bound files, never to this layer.
const MOUNT_POINTS: &[&str] = &[
    "etc/hosts",
    "etc/hostname",
    "etc/resolv.conf",
    "proc",
    "sys",
    "dev",
];

fn without_kiln_mount_points(changes: Vec<Change>, upper: &Path, lower: &Path) -> Vec<Change> {
    changes
        .into_iter()
        .filter(|c| {
            let p = c.path();
            let Some(rel) = p.to_str() else { return true };
            if !MOUNT_POINTS.contains(&rel) || !matches!(c, Change::Upsert(_)) {
                return true;
            }
            if std::fs::symlink_metadata(lower.join(p)).is_ok() {
                return true;
            }
            // Only an empty file or directory is a mount point kiln made.
            match std::fs::symlink_metadata(upper.join(p)) {
                Ok(m) if m.is_file() => m.len() != 0,
                Ok(m) if m.is_dir() => std::fs::read_dir(upper.join(p))
                    .map(|mut d| d.next().is_some())
                    .unwrap_or(true),
                _ => true,
            }
        })
        .collect()
}

/// docker's `diff`: every changed path with its ancestors (a directory holding a change is
/// `C`), parents before children, in path order.
pub fn diff(store: &Store, rec: &ContainerRecord) -> Result<Vec<(DiffKind, PathBuf)>> {
    with_changes(store, rec, |changes, _, lower| {
        Ok(diff_lines(changes, lower))
    })
}

/// The A/C/D lines of `changes` (relative paths) against the lower view `lower`.
pub fn diff_lines(changes: &[Change], lower: &Path) -> Vec<(DiffKind, PathBuf)> {
    use std::collections::BTreeMap;
    let in_lower = |p: &Path| std::fs::symlink_metadata(lower.join(p)).is_ok();
    // Ordered by components, so a directory comes right before what it holds.
    let mut out: BTreeMap<Vec<std::ffi::OsString>, DiffKind> = BTreeMap::new();
    let key = |p: &Path| -> Vec<std::ffi::OsString> {
        p.components()
            .map(|c| c.as_os_str().to_os_string())
            .collect()
    };
    for c in changes {
        let p = c.path();
        let kind = match c {
            Change::Delete(_) => DiffKind::Deleted,
            Change::Upsert(_) | Change::Opaque(_) if in_lower(p) => DiffKind::Changed,
            _ => DiffKind::Added,
        };
        out.insert(key(p), kind);
        let mut parent = p.parent();
        while let Some(dir) = parent.filter(|d| !d.as_os_str().is_empty()) {
            out.entry(key(dir)).or_insert(if in_lower(dir) {
                DiffKind::Changed
            } else {
                DiffKind::Added
            });
            parent = dir.parent();
        }
    }
    out.into_iter()
        .map(|(k, kind)| {
            let mut p = PathBuf::from("/");
            p.extend(k);
            (kind, p)
        })
        .collect()
}

/// `kiln export`: the container's filesystem (image plus writable layer, no volumes or other
/// mounts) as one tar stream.
pub fn export(store: &Store, rec: &ContainerRecord, out: impl Write) -> Result<()> {
    let view = rootview::open_layers(store, rec)?;
    let written = crate::oci::layer::write_tree_layer(
        view.path(),
        out,
        &crate::oci::layer::WriteOptions::default(),
    )
    .with_context(|| format!("exporting container {}", rec.name));
    let released = view.release();
    written?;
    released
}

/// `kiln commit`'s options.
#[derive(Debug, Clone, Default)]
pub struct CommitOptions {
    pub name: Option<Reference>,
    /// `--change` instructions (Dockerfile syntax).
    pub changes: Vec<String>,
    pub message: Option<String>,
    pub author: Option<String>,
    /// Freeze a running container while its layer is read (docker's default).
    pub pause: bool,
}

/// `kiln commit`: a new image of the container's image plus its writable layer; the container's
/// command, environment, user, working directory and ports become the image's, then `--change`
/// applies. Returns the image ID (config digest).
pub fn commit(store: &Store, rec: &ContainerRecord, opts: &CommitOptions) -> Result<String> {
    let running = rec.status() == Status::Running && rec.init_pid > 0;
    let mut paused_here = false;
    if running && opts.pause && !super::is_paused(rec) && !crate::rootless::in_userns() {
        crate::sandbox::cgroup::set_frozen(rec.init_pid, true)
            .with_context(|| format!("pausing container {} for the commit", rec.name))?;
        paused_here = true;
    }
    let layer = with_changes(store, rec, |changes, upper, _| {
        crate::oci::layer::store_layer(store, crate::oci::compress::Compression::Gzip, |w| {
            crate::oci::layer::write_layer(
                upper,
                changes,
                w,
                &crate::oci::layer::WriteOptions::default(),
            )
        })
    });
    if paused_here {
        let _ = crate::sandbox::cgroup::set_frozen(rec.init_pid, false);
    }
    let layer = layer.with_context(|| format!("writing the layer of container {}", rec.name))?;

    let image_manifest = store.manifest(&rec.manifest)?;
    let mut config = store.config(&rec.image_id)?;
    let c = &rec.config;
    let mut ic = config.config().clone().unwrap_or_default();
    ic.set_cmd(Some(c.cmd.clone()).filter(|v| !v.is_empty()));
    ic.set_entrypoint(Some(c.entrypoint.clone()).filter(|v| !v.is_empty()));
    ic.set_env(Some(c.env.clone()));
    ic.set_working_dir(Some(c.working_dir.clone()).filter(|v| !v.is_empty()));
    ic.set_user(Some(c.user.clone()).filter(|v| !v.is_empty()));
    if !c.exposed.is_empty() {
        ic.set_exposed_ports(Some(c.exposed.clone()));
    }
    config.set_config(Some(ic));
    for change in &opts.changes {
        crate::oci::image::apply_change(&mut config, change)?;
    }
    let created = crate::oci::image::now_rfc3339();
    config.set_created(Some(created.clone()));
    if let Some(a) = &opts.author {
        config.set_author(Some(a.clone()));
    }
    let mut rootfs = config.rootfs().clone();
    let mut diff_ids = rootfs.diff_ids().clone();
    diff_ids.push(layer.diff_id.clone());
    rootfs.set_diff_ids(diff_ids);
    config.set_rootfs(rootfs);
    let mut history = config.history().clone().unwrap_or_default();
    let mut h = HistoryBuilder::default()
        .created(created)
        .created_by(c.args().join(" "));
    if let Some(a) = &opts.author {
        h = h.author(a.clone());
    }
    if let Some(m) = &opts.message {
        h = h.comment(m.clone());
    }
    history.push(h.build()?);
    config.set_history(Some(history));
    let mut layers = image_manifest.layers().clone();
    layers.push(layer.descriptor);
    let names: Vec<Reference> = opts.name.iter().cloned().collect();
    // docker's fields the OCI type lacks (Healthcheck, OnBuild, Shell, ArgsEscaped) and any
    // other the base image's config has are kept from the config as stored.
    let stored: serde_json::Value = serde_json::from_slice(&store.read_blob(&rec.image_id)?)
        .context("parsing the image's config")?;
    let mut out = serde_json::to_value(&config).context("serialising the new config")?;
    merge_docker_fields(&mut out, &stored);
    commit_raw(store, &out, &layers, &names)
}

/// Adds to `out` the top-level and `config` fields of `stored` that `out` lacks and the OCI
/// type does not model.
fn merge_docker_fields(out: &mut serde_json::Value, stored: &serde_json::Value) {
    const DOCKER_CONFIG_FIELDS: &[&str] = &["Healthcheck", "OnBuild", "Shell", "ArgsEscaped"];
    if let (Some(o), Some(s)) = (
        out.get_mut("config").and_then(|c| c.as_object_mut()),
        stored.get("config").and_then(|c| c.as_object()),
    ) {
        for k in DOCKER_CONFIG_FIELDS {
            if let Some(v) = s.get(*k) {
                o.entry(k.to_string()).or_insert_with(|| v.clone());
            }
        }
    }
}

/// `Store::commit_image` for a config given as JSON: the config blob, then a manifest over
/// `layers` named `names`; returns the config digest (the image ID).
fn commit_raw(
    store: &Store,
    config: &serde_json::Value,
    layers: &[oci_spec::image::Descriptor],
    names: &[Reference],
) -> Result<String> {
    let bytes = crate::digest::canonical_json(config).context("serialising the image config")?;
    Ok(store
        .commit_config_bytes(&bytes, layers, names)?
        .config_digest)
}
