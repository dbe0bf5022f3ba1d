//! What crosses the seam between the solver and the rest of the engine: the operations a step
//! executes, and the `Backend` that resolves base images and executes steps.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Result;

use super::progress::{Progress, StepId};
use crate::dockerfile::Spanned;
use crate::oci::layer::LayerRef;
use crate::platform::Platform;
use crate::source::image::BaseImage;
use crate::source::local::BuildContext;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    Host,
    None,
}

/// Where a secret comes from (`--secret id=ID,src=PATH|env=VAR`).
#[derive(Debug, Clone)]
pub enum SecretSource {
    File(std::path::PathBuf),
    Env(String),
}

impl SecretSource {
    /// The secret's value (`id` names it in errors; the value never is).
    pub fn read(&self, id: &str) -> anyhow::Result<Vec<u8>> {
        use anyhow::Context;
        match self {
            SecretSource::File(p) => std::fs::read(p)
                .with_context(|| format!("reading secret {id} from {}", p.display())),
            SecretSource::Env(var) => std::env::var(var)
                .map(String::into_bytes)
                .map_err(|_| anyhow::anyhow!("secret {id}: environment variable {var} is not set")),
        }
    }
}

/// The `Authorization` an ADD of `url` sends: from the `HTTP_AUTH_HEADER_<host>` and
/// `HTTP_AUTH_TOKEN_<host>` secrets, as BuildKit's.
pub fn http_authorization(
    url: &str,
    secrets: &HashMap<String, SecretSource>,
) -> anyhow::Result<Option<String>> {
    crate::source::http::authorization_for(url, |id| {
        secrets.get(id).map(|s| s.read(id)).transpose()
    })
}

/// A RUN mount, resolved.
#[derive(Debug, Clone)]
pub enum RunMount {
    /// Read-only (unless rw) view of the context or of a stage/image's filesystem.
    Bind {
        target: String,
        source: String,
        from: Option<SourceTree>,
        rw: bool,
    },
    Cache {
        target: String,
        id: String,
        sharing: String,
        mode: u32,
        uid: u32,
        gid: u32,
        /// `ro`: bound read-only (BuildKit's `readonly`).
        readonly: bool,
    },
    Tmpfs {
        target: String,
        size: Option<u64>,
    },
    /// A file made for this step, bound read-only at `target`: a `RUN <<EOF` here-document
    /// that starts with `#!`, which BuildKit runs as a script from /dev/pipes/.
    File {
        target: String,
        content: Vec<u8>,
        mode: u32,
    },
    /// `--mount=type=ssh`: a socket at `target` that relays to the agent `kiln build --ssh ID`
    /// gave (nothing there when the build gave none and the mount is not required).
    Ssh {
        id: String,
        target: String,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    /// A secret as a file (target) or environment variable (env).
    Secret {
        id: String,
        target: Option<String>,
        env: Option<String>,
        mode: u32,
        uid: u32,
        gid: u32,
    },
}

/// The filesystem a COPY or bind mount reads from.
#[derive(Clone)]
pub enum SourceTree {
    Context,
    Layers(Vec<LayerRef>),
    /// A named build context's files (`--build-context NAME=DIR`, a git or https one), read
    /// like the main context, with its own `.dockerignore`.
    Named(Arc<BuildContext>),
}

impl std::fmt::Debug for SourceTree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceTree::Context => f.write_str("Context"),
            SourceTree::Layers(l) => f.debug_tuple("Layers").field(l).finish(),
            SourceTree::Named(c) => write!(f, "Named({})", c.root().display()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RunOp {
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub user: Option<String>,
    pub network: Network,
    pub mounts: Vec<RunMount>,
    /// The command as the progress display and errors show it.
    pub display: String,
    /// The platform the stage's binaries are for (emulated when this machine's is another).
    pub platform: Platform,
    /// `RUN --security=insecure` (granted by `--allow security.insecure`): the sandbox is
    /// privileged as BuildKit's insecure mode (`sandbox::HostDevices::BuildKitInsecure`).
    pub insecure: bool,
}

#[derive(Debug, Clone)]
pub struct CopyOp {
    pub from: SourceTree,
    pub sources: Vec<String>,
    /// Absolute, made absolute against WORKDIR; a trailing `/` kept.
    pub dest: String,
    pub chown: Option<String>,
    pub options: CopyOptions,
    /// Here-documents become files named after them in the destination.
    pub heredocs: Vec<(String, String)>,
    /// ADD of URLs: (url, checksum).
    pub urls: Vec<(String, Option<String>)>,
    /// ADD of git repositories, resolved to commits.
    pub git: Vec<crate::source::git::GitSource>,
    /// `COPY --link` as BuildKit rebases it: executed on an empty filesystem (the `parent` of
    /// the request is empty), its layer then stacked on the stage's.
    pub link: bool,
}

/// A filesystem-changing operation.
#[derive(Debug, Clone)]
pub enum Op {
    Run(RunOp),
    Copy(CopyOp),
    /// WORKDIR: create the directory (owned by the stage's user, when set).
    Mkdir {
        path: String,
        user: Option<String>,
    },
}

/// What the backend needs to execute one step.
pub struct ExecRequest {
    pub step: StepId,
    pub line: usize,
    pub name: String,
    pub parent: Vec<LayerRef>,
    pub op: Op,
    pub context: Arc<BuildContext>,
    pub progress: Arc<Progress>,
    pub secrets: Arc<HashMap<String, SecretSource>>,
    /// `--ssh ID=…`: each id's agent socket on the host.
    pub ssh: Arc<HashMap<String, std::path::PathBuf>>,
    pub source_date_epoch: Option<i64>,
    /// For a COPY/ADD from the context that missed only because some selected files changed: the
    /// layer the same step on the same parent made last time, to build the new one from.
    pub previous: Option<PreviousCopy>,
    /// Whether the step's stage is one whose layers the image has (the target and the stages it
    /// is `FROM`); a layer of another stage leaves the machine only in a `mode=max` cache.
    pub in_image: bool,
}

/// The previous result of a COPY step (see [`ExecRequest::previous`]).
#[derive(Debug, Clone)]
pub struct PreviousCopy {
    pub layer: LayerRef,
    /// Context-relative paths of the selected entries whose digest (content, mode, owner) is the
    /// one they had then.
    pub unchanged: std::collections::HashSet<String>,
}

/// Where the solver gets images and runs steps: the store, snapshots and the sandbox in real
/// builds (`engine.rs`), a fake in unit tests.
pub trait Backend: Send + Sync + 'static {
    /// A base image for `platform` (an index's manifest for it; an error when it lacks it).
    fn base_image(&self, name: &str, pull: bool, platform: &Platform) -> Result<BaseImage>;
    /// Whether a cached layer's content (its blob, or its unpacked layer) is still in the store.
    fn has_layer(&self, layer: &LayerRef) -> bool;
    /// Executes a step on top of `parent`; the new layer, or `None` when nothing changed.
    fn execute(&self, req: ExecRequest) -> Result<Option<LayerRef>>;
    /// Parses an ONBUILD trigger into an instruction.
    fn parse_trigger(&self, trigger: &str) -> Result<Spanned>;
}

/// How a COPY or ADD writes what it selects.
#[derive(Debug, Default, Clone)]
pub struct CopyOptions {
    /// Resolved `--chown`.
    pub chown: Option<(u32, u32)>,
    /// `--chmod`, octal or symbolic.
    pub chmod: Option<super::chmod::Chmod>,
    pub excludes: Vec<String>,
    /// `--parents`: keep each source's path (relative to the tree, or to a `/./` pivot in it).
    pub parents: bool,
    /// ADD: unpack local tar archives instead of copying them.
    pub unpack_archives: bool,
    /// `ADD --unpack=true URL`: unpack a downloaded archive too (by default, ADD of a URL never
    /// unpacks).
    pub unpack_urls: bool,
}

impl CopyOptions {
    /// The mode a copied entry gets: `--chmod` applied to its source's mode, else that mode.
    pub fn mode_for(&self, source_mode: u32, is_dir: bool) -> u32 {
        match &self.chmod {
            Some(c) => c.apply(source_mode & 0o7777, is_dir),
            None => source_mode & 0o7777,
        }
    }

    /// The mode of a directory the copy creates on the way to its destination: 0755, or with
    /// an octal `--chmod` its bits less group and other write, as BuildKit creates them
    /// (`--chmod=770` -> 0750, `--chmod=600` -> 0600).
    pub fn created_dir_mode(&self) -> u32 {
        self.chmod.as_ref().map_or(0o755, |c| c.created_dir_mode())
    }
}
