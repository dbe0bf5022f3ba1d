//! Executing one filesystem step: an overlay snapshot over the parent's layers (unpacked once per
//! layer and shared), the operation (RUN in the sandbox, COPY/ADD as file operations, WORKDIR's
//! mkdir), then the snapshot's changes become a layer blob in the store. A step that changed
//! nothing produces no layer.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use super::cache::LayerRef;
use super::copy::{self, CopySource};
use super::solver::{CopyOp, ExecRequest, Network, Op, RunMount, RunOp, SecretSource, SourceTree};
use crate::snapshot::{ActiveSnapshot, PrepareOptions, Snapshotter};
use crate::store::Store;

/// Layers written by builds are compressed with this (the store's parallel gzip).
const LAYER_COMPRESSION: crate::oci::compress::Compression =
    crate::oci::compress::Compression::Gzip;
/// At this level: gzip's fastest. Layer writing is on every rebuild's path (a big COPY's layer is
/// written again when one file changes); level 6 costs about twice the CPU for a few percent
/// smaller blobs on typical trees. Deterministic like any fixed level.
const LAYER_GZIP_LEVEL: u32 = 1;

/// How many lines of a failing RUN's output the error repeats.
const ERROR_TAIL: usize = 8;

pub fn execute(store: &Store, req: ExecRequest) -> Result<Option<LayerRef>> {
    let snapshotter = Snapshotter::new(store.root())?;
    let mut snap = mount_layers(store, &snapshotter, &req.parent)?;
    match &req.op {
        Op::Run(run) => run_step(store, &snapshotter, &snap, run, &req)?,
        Op::Copy(c) => copy_step(store, &snapshotter, &mut snap, c, &req)?,
        Op::Mkdir { path, user } => mkdir_step(&snap.merged(), path, user.as_deref())?,
    }
    // The changed entries are read from the upperdir when it is self-contained (no overlay
    // lookups: a big COPY's layer reads every file again).
    let (changes, source) = snap.changes_with_source()?;
    if changes.is_empty() {
        snap.release()?;
        return Ok(None);
    }
    let opts = crate::oci::layer::WriteOptions {
        source_date_epoch: req.source_date_epoch,
    };
    let stored = crate::oci::layer::store_layer_with_gzip_level(
        store,
        LAYER_COMPRESSION,
        LAYER_GZIP_LEVEL,
        |w| crate::oci::layer::write_layer(&source, &changes, w, &opts),
    )
    .context("writing the step's layer")?;
    reuse_upper_as_layer(
        &snapshotter,
        &snap,
        &stored.diff_id,
        req.source_date_epoch.is_none(),
    );
    snap.release()?;
    let layer = LayerRef {
        digest: stored.descriptor.digest().to_string(),
        diff_id: stored.diff_id,
        size: stored.descriptor.size(),
        media_type: stored.descriptor.media_type().to_string(),
    };
    // Keep the layer while the build cache refers to it, whatever image GC decides.
    store.pin_blob("build-cache", &layer.digest)?;
    Ok(Some(layer))
}

/// The upperdir of a finished step already is the new layer in overlay form (whiteouts as 0:0
/// devices, opaque directories marked), so it becomes the layer's unpacked directory instead of
/// unpacking the blob again when a later step needs it. Not with SOURCE_DATE_EPOCH, where the blob's
/// mtimes are clamped and the upperdir's are not. Best effort: on any failure the blob is
/// unpacked later as usual.
fn reuse_upper_as_layer(
    snapshotter: &Snapshotter,
    snap: &ActiveSnapshot,
    diff_id: &str,
    enabled: bool,
) {
    if !enabled {
        return;
    }
    let Ok(dir) = snapshotter.layer_dir(diff_id) else {
        return;
    };
    if dir.exists() {
        return;
    }
    // Renaming within the snapshots filesystem; the overlay keeps working until it is unmounted.
    let _ = std::fs::rename(snap.upper(), &dir);
}

/// The unpacked directory of a layer (a lowerdir), through the snapshotter's shared layer store.
pub fn ensure_unpacked(
    store: &Store,
    snapshotter: &Snapshotter,
    layer: &LayerRef,
) -> Result<PathBuf> {
    snapshotter.ensure_unpacked_blob(store, &layer.digest, Some(&layer.diff_id))
}

fn mount_layers(
    store: &Store,
    snapshotter: &Snapshotter,
    layers: &[LayerRef],
) -> Result<ActiveSnapshot> {
    let lowers = layers
        .iter()
        .map(|l| ensure_unpacked(store, snapshotter, l))
        .collect::<Result<Vec<_>>>()?;
    snapshotter.prepare(&lowers, &PrepareOptions { volatile: true })
}

fn mkdir_step(root: &Path, path: &str, user: Option<&str>) -> Result<()> {
    let owner = match user {
        Some(u) => Some(resolve_user(root, u)?),
        None => None,
    };
    copy::mkdir_in_root(root, path, owner)
}

/// A USER value (`name`, `uid`, `name:group`, `uid:gid`) as numbers, through the image's files.
/// Unlike `--chown`, a user without a group takes the user's primary group.
fn resolve_user(root: &Path, user: &str) -> Result<(u32, u32)> {
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let passwd = super::fsutil::resolve_in_root(root, "etc/passwd")
        .ok()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default();
    let entry = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 4 && (f[0] == u || f[2] == u));
    let uid = match u.parse::<u32>() {
        Ok(n) => n,
        Err(_) => entry
            .as_ref()
            .and_then(|f| f[2].parse().ok())
            .ok_or_else(|| anyhow!("user {u:?} is not in the image's /etc/passwd"))?,
    };
    let gid = match g {
        Some(g) => copy::resolve_chown(root, &format!("{uid}:{g}"))?.1,
        None => entry.as_ref().and_then(|f| f[3].parse().ok()).unwrap_or(0),
    };
    Ok((uid, gid))
}

/// A read-only view of a stage's or image's filesystem, for COPY --from and bind mounts.
fn source_view(
    store: &Store,
    snapshotter: &Snapshotter,
    tree: &SourceTree,
) -> Result<Option<ActiveSnapshot>> {
    match tree {
        SourceTree::Context => Ok(None),
        SourceTree::Layers(layers) => Ok(Some(mount_layers(store, snapshotter, layers)?)),
    }
}

fn copy_step(
    store: &Store,
    snapshotter: &Snapshotter,
    snap: &mut ActiveSnapshot,
    c: &CopyOp,
    req: &ExecRequest,
) -> Result<()> {
    let dest_root = snap.merged();
    let view = source_view(store, snapshotter, &c.from)?;
    let filter = req.context.filter();
    let no_filter = super::context::NoFilter;
    let view_root = view.as_ref().map(|v| v.merged());
    let src = match &view_root {
        None => CopySource {
            root: req.context.root(),
            filter: filter.as_ref(),
            from_context: true,
        },
        Some(root) => CopySource {
            root,
            filter: &no_filter,
            from_context: false,
        },
    };
    let mut options = c.options.clone();
    if let Some(spec) = &c.chown {
        options.chown = Some(copy::resolve_chown(&dest_root, spec)?);
    }
    if let Some(fresh) = fresh_destination(snap, &src, c, &options)? {
        // Everything goes below a directory the layers below don't have: write it straight into
        // the upperdir, with the overlay out of the way.
        snap.unmount_merged()?;
        copy::copy(
            &src,
            &c.sources,
            &snap.upper(),
            &format!("/{fresh}/"),
            &options,
        )?;
    } else if !c.sources.is_empty() {
        copy::copy(&src, &c.sources, &dest_root, &c.dest, &options)?;
    }
    let dest_is_dir = c.dest.ends_with('/')
        || c.heredocs.len() + c.urls.len() + c.sources.len() + c.git.len() > 1;
    for (name, content) in &c.heredocs {
        let target = if dest_is_dir {
            format!("{}/{}", c.dest.trim_end_matches('/'), name)
        } else {
            c.dest.clone()
        };
        copy::write_file_in_root(
            &dest_root,
            &target,
            content.as_bytes(),
            options.chmod.unwrap_or(0o644),
            options.chown.unwrap_or((0, 0)),
        )?;
    }
    for (url, checksum) in &c.urls {
        let data = super::fetch::fetch(url, checksum.as_deref())?;
        let name = super::fetch::file_name(url);
        let target = if dest_is_dir || c.dest.ends_with('/') {
            format!("{}/{}", c.dest.trim_end_matches('/'), name)
        } else {
            c.dest.clone()
        };
        copy::write_file_in_root(
            &dest_root,
            &target,
            &data,
            options.chmod.unwrap_or(0o600),
            options.chown.unwrap_or((0, 0)),
        )?;
    }
    for g in &c.git {
        // A repository's tree is copied like a directory source: its contents go into dest.
        let checkout = super::git::checkout(g, &store.tmp_dir(), req.source_date_epoch)?;
        let tree = CopySource {
            root: checkout.root(),
            filter: &no_filter,
            from_context: true,
        };
        copy::copy(&tree, &[".".to_string()], &dest_root, &c.dest, &options)?;
    }
    if let Some(v) = view {
        v.release()?;
    }
    Ok(())
}

/// The destination of a COPY that only copies directories' contents, when it is new or empty in
/// the layers below (see `copy::claim_fresh_directory`) and the upperdir now has it: its path
/// relative to the root. The common `COPY node_modules /app/node_modules` of a big tree then
/// costs what a plain copy costs, about half of what creating files through the overlay does.
fn fresh_destination(
    snap: &ActiveSnapshot,
    src: &CopySource,
    c: &CopyOp,
    options: &copy::CopyOptions,
) -> Result<Option<String>> {
    if c.sources.is_empty()
        || !c.heredocs.is_empty()
        || !c.urls.is_empty()
        || !c.git.is_empty()
        || options.parents
        || options.unpack_archives
    {
        return Ok(None);
    }
    for rel in copy::expand_sources(src, &c.sources)? {
        let path = super::fsutil::resolve_in_root(src.root, &rel)?;
        if !std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
            return Ok(None);
        }
    }
    let owner = options.chown.unwrap_or((0, 0));
    let Some(fresh) = copy::claim_fresh_directory(&snap.merged(), &c.dest, owner)? else {
        return Ok(None);
    };
    let in_upper = std::fs::symlink_metadata(snap.upper().join(&fresh));
    Ok(in_upper.is_ok_and(|m| m.is_dir()).then_some(fresh))
}

/// Keeps what a RUN mounted that is not part of the layer alive until the command ends.
struct MountGuards {
    views: Vec<ActiveSnapshot>,
    _temps: Vec<tempfile::TempDir>,
    _locks: Vec<std::fs::File>,
}

fn run_step(
    store: &Store,
    snapshotter: &Snapshotter,
    snap: &ActiveSnapshot,
    run: &RunOp,
    req: &ExecRequest,
) -> Result<()> {
    let mut spec = crate::sandbox::ExecSpec::new(snap.merged(), run.argv.clone());
    spec.env = run.env.clone();
    spec.cwd = PathBuf::from(&run.cwd);
    spec.user = run.user.clone().unwrap_or_default();
    spec.hostname = "buildkitsandbox".into();
    spec.network = match run.network {
        Network::Host => crate::sandbox::Network::Host,
        Network::None => crate::sandbox::Network::None,
    };
    spec.stdin = crate::sandbox::Stdio::Null;
    spec.stdout = crate::sandbox::Stdio::Piped;
    spec.stderr = crate::sandbox::Stdio::Piped;
    let mut guards = MountGuards {
        views: Vec::new(),
        _temps: Vec::new(),
        _locks: Vec::new(),
    };
    for m in &run.mounts {
        add_mount(store, snapshotter, &mut spec, &mut guards, m, req)?;
    }
    let mut running =
        crate::sandbox::spawn(&spec).with_context(|| format!("starting {}", run.display))?;
    let tail = std::sync::Arc::new(std::sync::Mutex::new(VecDeque::new()));
    let readers: Vec<_> = [running.stdout.take(), running.stderr.take()]
        .into_iter()
        .flatten()
        .map(|f| {
            let progress = req.progress.clone();
            let tail = tail.clone();
            let step = req.step;
            std::thread::spawn(move || {
                let mut reader = BufReader::new(f);
                let mut line = Vec::new();
                while reader
                    .read_until(b'\n', &mut line)
                    .map(|n| n > 0)
                    .unwrap_or(false)
                {
                    let text = String::from_utf8_lossy(&line)
                        .trim_end_matches(['\n', '\r'])
                        .to_string();
                    progress.log(step, &text);
                    let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
                    t.push_back(text);
                    if t.len() > ERROR_TAIL {
                        t.pop_front();
                    }
                    line.clear();
                }
            })
        })
        .collect();
    let exit = running.wait();
    for r in readers {
        let _ = r.join();
    }
    for v in guards.views.drain(..) {
        let _ = v.release();
    }
    let exit = exit?;
    if !exit.success() {
        let tail = tail.lock().unwrap_or_else(|e| e.into_inner());
        let mut msg = format!(
            "process \"{}\" did not complete successfully: exit code: {}",
            run.display, exit.code
        );
        if exit.oom_killed {
            msg.push_str(" (killed: out of memory)");
        }
        if !tail.is_empty() {
            msg.push_str("\nlast output:");
            for l in tail.iter() {
                msg.push_str("\n  ");
                msg.push_str(l);
            }
        }
        bail!(msg);
    }
    Ok(())
}

fn add_mount(
    store: &Store,
    snapshotter: &Snapshotter,
    spec: &mut crate::sandbox::ExecSpec,
    guards: &mut MountGuards,
    m: &RunMount,
    req: &ExecRequest,
) -> Result<()> {
    use crate::sandbox::{Mount, MountKind};
    match m {
        RunMount::Bind {
            target,
            source,
            from,
            rw,
        } => {
            let rel = super::fsutil::clean_rel(source);
            let base = match from {
                None | Some(SourceTree::Context) => req.context.root().to_path_buf(),
                Some(tree) => {
                    let view =
                        source_view(store, snapshotter, tree)?.ok_or_else(|| anyhow!("no view"))?;
                    let p = view.merged();
                    guards.views.push(view);
                    p
                }
            };
            let mut host = super::fsutil::resolve_in_root(&base, &rel)?;
            if !host.exists() {
                bail!("--mount source {source:?}: not found");
            }
            if *rw {
                // Writes to a rw bind are discarded: give the command a scratch copy.
                let tmp = tempfile::Builder::new()
                    .prefix("bind-rw.")
                    .tempdir_in(store.tmp_dir())?;
                let status = std::process::Command::new("cp")
                    .arg("-a")
                    .arg(&host)
                    .arg(tmp.path().join("src"))
                    .status()?;
                if !status.success() {
                    bail!("copying the rw bind source {source:?}");
                }
                host = tmp.path().join("src");
                guards._temps.push(tmp);
            }
            spec.mounts.push(Mount {
                target: PathBuf::from(target),
                kind: MountKind::Bind {
                    source: host,
                    readonly: !rw,
                },
            });
        }
        RunMount::Cache {
            target,
            id,
            sharing,
            mode,
            uid,
            gid,
        } => {
            let base = store
                .root()
                .join("build-cache-mounts")
                .join(super::fsutil::clean_rel(&hex::encode(sha256(
                    id.as_bytes(),
                ))));
            let dir = match sharing.as_str() {
                // Waits until no other step holds the cache.
                "locked" => {
                    guards
                        ._locks
                        .push(lock_cache_dir(&base, true)?.ok_or_else(|| {
                            anyhow!("cache mount {id}: could not lock {}", base.display())
                        })?);
                    base
                }
                // The first free one of the cache's instances: the persistent one when no other
                // private user has it, another (kept for later builds too) when one has.
                "private" => {
                    let mut instance = 0;
                    loop {
                        let dir = if instance == 0 {
                            base.clone()
                        } else {
                            let mut name = base.clone().into_os_string();
                            name.push(format!("-{instance}"));
                            PathBuf::from(name)
                        };
                        if let Some(lock) = lock_cache_dir(&dir, false)? {
                            guards._locks.push(lock);
                            break dir;
                        }
                        instance += 1;
                    }
                }
                _ => base,
            };
            if !dir.exists() {
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("creating cache mount {id}"))?;
                set_owner_and_mode(&dir, (*uid, *gid), *mode)?;
            }
            spec.mounts.push(Mount {
                target: PathBuf::from(target),
                kind: MountKind::Bind {
                    source: dir,
                    readonly: false,
                },
            });
        }
        RunMount::Tmpfs { target, size } => {
            spec.mounts.push(Mount {
                target: PathBuf::from(target),
                kind: MountKind::Tmpfs {
                    size_bytes: *size,
                    mode: 0o1777,
                },
            });
        }
        RunMount::Secret {
            id,
            target,
            env,
            mode,
            uid,
            gid,
        } => {
            let value = match req.secrets.get(id) {
                Some(SecretSource::File(p)) => Some(
                    std::fs::read(p)
                        .with_context(|| format!("reading secret {id} from {}", p.display()))?,
                ),
                Some(SecretSource::Env(var)) => Some(
                    std::env::var(var)
                        .map_err(|_| anyhow!("secret {id}: environment variable {var} is not set"))?
                        .into_bytes(),
                ),
                // A required secret that was not given stopped the build when it was planned.
                None => None,
            };
            let Some(value) = value else { return Ok(()) };
            if let Some(var) = env {
                let text = String::from_utf8(value.clone()).map_err(|_| {
                    anyhow!("secret {id}: not UTF-8, cannot be an environment variable")
                })?;
                spec.env.push(format!("{var}={text}"));
            }
            if let Some(target) = target {
                // The secret lives in a private temp dir outside the rootfs, bound read-only:
                // it never lands in the upperdir, so never in a layer.
                let tmp = tempfile::Builder::new()
                    .prefix("secret.")
                    .tempdir_in(store.tmp_dir())?;
                let file = tmp.path().join("secret");
                std::fs::write(&file, &value)?;
                set_owner_and_mode(&file, (*uid, *gid), *mode)?;
                spec.mounts.push(Mount {
                    target: PathBuf::from(target),
                    kind: MountKind::Bind {
                        source: file,
                        readonly: true,
                    },
                });
                guards._temps.push(tmp);
            }
        }
    }
    Ok(())
}

/// Sets what a mount source (cache directory, secret file) belongs to and its permission bits.
fn set_owner_and_mode(path: &Path, (uid, gid): (u32, u32), mode: u32) -> Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .with_context(|| format!("chown {}", path.display()))?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

/// Takes the exclusive lock of a cache mount directory (`<dir>.lock` next to it): waiting for it
/// with `wait`, else `None` when another step holds it. Held until the file is dropped.
fn lock_cache_dir(dir: &Path, wait: bool) -> Result<Option<std::fs::File>> {
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let mut path = dir.to_path_buf().into_os_string();
    path.push(".lock");
    let path = PathBuf::from(path);
    let lock = std::fs::File::create(&path)
        .with_context(|| format!("creating the lock {}", path.display()))?;
    let flags = if wait {
        libc::LOCK_EX
    } else {
        libc::LOCK_EX | libc::LOCK_NB
    };
    // SAFETY: flock on a descriptor this function owns.
    let rc = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), flags) };
    if rc == 0 {
        return Ok(Some(lock));
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        return Ok(None);
    }
    Err(err).with_context(|| format!("locking {}", path.display()))
}

fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(data).into()
}
