//! RUN: the command in the sandbox on the step's snapshot, with its mounts (bind, cache, tmpfs,
//! secret).

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use super::source_view;
use crate::snapshot::{ActiveSnapshot, Snapshotter};
use crate::solver::{ExecRequest, Network, RunMount, RunOp, SourceTree};
use crate::store::Store;

/// How many lines of a failing RUN's output the error repeats.
const ERROR_TAIL: usize = 8;

/// Keeps what a RUN mounted that is not part of the layer alive until the command ends.
struct MountGuards {
    views: Vec<ActiveSnapshot>,
    _temps: Vec<tempfile::TempDir>,
    _locks: Vec<std::fs::File>,
    _agents: Vec<super::ssh_agent::AgentProxy>,
}

/// What every RUN of a build gets besides its own instruction: `kiln build --add-host`,
/// `--shm-size`, `--ulimit`. Like the cgroup limits, not part of any cache key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSettings {
    pub extra_hosts: Vec<(String, std::net::IpAddr)>,
    pub shm_size: u64,
    pub ulimits: Vec<crate::sandbox::ulimit::Ulimit>,
}

impl Default for RunSettings {
    fn default() -> RunSettings {
        RunSettings {
            extra_hosts: Vec::new(),
            shm_size: crate::sandbox::DEFAULT_SHM_SIZE,
            ulimits: Vec::new(),
        }
    }
}

pub(super) fn run_step(
    store: &Store,
    snapshotter: &Snapshotter,
    snap: &ActiveSnapshot,
    run: &RunOp,
    req: &ExecRequest,
    run_limits: &crate::sandbox::Resources,
    settings: &RunSettings,
) -> Result<()> {
    // A foreign platform's RUN needs its emulator: one clear error before anything starts.
    if !run.platform.is_native() {
        crate::sandbox::binfmt::ensure_runnable(&run.platform)?;
    }
    let mut spec = crate::sandbox::ExecSpec::new(snap.merged(), run.argv.clone());
    spec.env = run.env.clone();
    spec.cwd = PathBuf::from(&run.cwd);
    spec.user = run.user.clone().unwrap_or_default();
    spec.hostname = "buildkitsandbox".into();
    // BuildKit's RUN has no /etc/hostname (only `hostname` answers).
    spec.etc_hostname = false;
    spec.keep_system_mount_points = true;
    spec.network = match run.network {
        Network::Host => crate::sandbox::Network::Host,
        Network::None => crate::sandbox::Network::None,
    };
    spec.resources = crate::sandbox::Resources {
        unobserved: true,
        ..run_limits.clone()
    };
    spec.extra_hosts = settings.extra_hosts.clone();
    spec.shm_size = settings.shm_size;
    spec.ulimits = settings.ulimits.clone();
    if run.insecure {
        spec.privileged = Some(crate::sandbox::HostDevices::BuildKitInsecure);
    }
    spec.stdin = crate::sandbox::Stdio::Null;
    spec.stdout = crate::sandbox::Stdio::Piped;
    spec.stderr = crate::sandbox::Stdio::Piped;
    let mut guards = MountGuards {
        views: Vec::new(),
        _temps: Vec::new(),
        _locks: Vec::new(),
        _agents: Vec::new(),
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
    // The disk idles while most commands run: start writing the layer out now (see
    // `snapshot::writeback`), so the sync before the layer is recorded has less left to do.
    let flusher = snap
        .upper_is_diff()
        .then(|| crate::snapshot::writeback::Flusher::start(snap.upper()));
    let exit = running.wait();
    drop(flusher);
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
        if crate::rootless::mapping() == crate::rootless::Mapping::Single {
            // chown(2) to an id the namespace does not map fails with EINVAL.
            msg.push_str(&format!(
                "\nnote: a step that changes file owners (chown, adduser, unpacking archives of \
                 other owners) fails with \"Invalid argument\" here: {}",
                crate::rootless::single_mapping_hint()
            ));
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
            let rel = crate::source::fsutil::clean_rel(source);
            let base = match from {
                None | Some(SourceTree::Context) => req.context.root().to_path_buf(),
                Some(SourceTree::Named(named)) => named.root().to_path_buf(),
                Some(tree) => {
                    let view =
                        source_view(store, snapshotter, tree)?.ok_or_else(|| anyhow!("no view"))?;
                    let p = view.merged();
                    guards.views.push(view);
                    p
                }
            };
            let mut host = crate::source::fsutil::resolve_in_root(&base, &rel)?;
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
            readonly,
        } => {
            let base = cache_mount_dir(store.root(), id, *uid, *gid, *mode);
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
                    readonly: *readonly,
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
        RunMount::File {
            target,
            content,
            mode,
        } => {
            // Outside the rootfs, bound read-only: never in the upperdir, so never in a layer.
            let tmp = tempfile::Builder::new()
                .prefix("run-file.")
                .tempdir_in(store.tmp_dir())?;
            let file = tmp.path().join("file");
            std::fs::write(&file, content)?;
            set_owner_and_mode(&file, (0, 0), *mode)?;
            spec.mounts.push(Mount {
                target: PathBuf::from(target),
                kind: MountKind::Bind {
                    source: file,
                    readonly: true,
                },
            });
            guards._temps.push(tmp);
        }
        RunMount::Ssh {
            id,
            target,
            mode,
            uid,
            gid,
        } => {
            // Not given and not required: no socket, as in BuildKit.
            let Some(upstream) = req.ssh.get(id) else {
                return Ok(());
            };
            let proxy = super::ssh_agent::AgentProxy::start(
                &store.tmp_dir(),
                upstream,
                (*uid, *gid),
                *mode,
            )
            .with_context(|| format!("--mount=type=ssh,id={id}"))?;
            spec.mounts.push(Mount {
                target: PathBuf::from(target),
                kind: MountKind::Bind {
                    source: proxy.socket().to_path_buf(),
                    readonly: false,
                },
            });
            guards._agents.push(proxy);
        }
        RunMount::Secret {
            id,
            target,
            env,
            mode,
            uid,
            gid,
        } => {
            // A required secret that was not given stopped the build when it was planned.
            let value = req.secrets.get(id).map(|s| s.read(id)).transpose()?;
            let Some(value) = value else {
                // BuildKit still sets the variable, empty, for a missing optional secret.
                if let Some(var) = env {
                    spec.env.push(format!("{var}="));
                }
                return Ok(());
            };
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
/// The directory of a `RUN --mount=type=cache`: one per id and the uid, gid and mode it is made
/// with, as in BuildKit (the same id with other options is another cache); the default options
/// keep the id-only name.
pub fn cache_mount_dir(root: &Path, id: &str, uid: u32, gid: u32, mode: u32) -> PathBuf {
    let key = if (uid, gid, mode) == (0, 0, 0o755) {
        id.to_string()
    } else {
        format!("{id}\0{uid}:{gid}:{mode:o}")
    };
    root.join("build-cache-mounts")
        .join(hex::encode(sha256(key.as_bytes())))
}

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
