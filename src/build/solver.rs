//! The solver: walks each stage the target reaches, computes every step's cache key, reuses cached
//! results and executes the rest through a `Backend`. Stages run as concurrent tokio tasks; a
//! stage waits for another only where it reads it (its FROM, or the step with `--from`), and step
//! executions are bounded by a parallelism limit.
//!
//! Cache keys cover what determines a step's filesystem result, and nothing else: the parent
//! filesystem's key, the instruction as expanded, the environment and build args a RUN sees, and
//! for COPY/ADD the content digest of exactly the files selected. Config-only instructions (ENV,
//! LABEL, CMD, ...) change the image config but not the chain of keys, so a new LABEL does not
//! re-run the RUN steps after it (as BuildKit).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};

use super::cache::{self, LayerRef, StepInputs};
use super::contenthash::{hash_selection, FileDigestCache, HashOptions};
use super::context::BuildContext;
use super::copy::CopyOptions;
use super::expand::{expand_word, expand_words};
use super::graph::{build_graph, stage_labels, stage_ref, BaseRef, Graph};
use super::imageconfig::{HealthConfig, History, ImageConfigFile};
use super::model::{
    CommandForm, CopyArgs, DockerfileModel, HealthArgs, Heredoc, Instr, InstrKind, MountSpec,
};
use super::progress::{Progress, StepId};

/// A base image as the store (or a registry) gives it.
#[derive(Debug, Clone)]
pub struct BaseImage {
    /// A stable identity for cache keys (the config or manifest digest).
    pub id: String,
    pub config: ImageConfigFile,
    pub layers: Vec<LayerRef>,
}

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
    },
    Tmpfs {
        target: String,
        size: Option<u64>,
    },
    /// A secret as a file (target) or environment variable (env).
    Secret {
        id: String,
        target: Option<String>,
        env: Option<String>,
        required: bool,
        mode: u32,
        uid: u32,
        gid: u32,
    },
}

/// The filesystem a COPY or bind mount reads from.
#[derive(Debug, Clone)]
pub enum SourceTree {
    Context,
    Layers(Vec<LayerRef>),
}

#[derive(Debug, Clone)]
pub struct RunOp {
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub user: Option<String>,
    pub network: Network,
    pub mounts: Vec<RunMount>,
    /// Files to write for here-documents fed to the command (none when inlined in the script).
    pub display: String,
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
    pub source_date_epoch: Option<i64>,
}

/// Where the solver gets images and runs steps: the store, snapshots and the sandbox in real
/// builds (`engine.rs`), a fake in unit tests.
pub trait Backend: Send + Sync + 'static {
    fn base_image(&self, name: &str, pull: bool) -> Result<BaseImage>;
    /// Whether a cached layer's blob is still in the store.
    fn has_layer(&self, layer: &LayerRef) -> bool;
    /// Executes a step on top of `parent`; the new layer, or `None` when nothing changed.
    fn execute(&self, req: ExecRequest) -> Result<Option<LayerRef>>;
    /// Parses an ONBUILD trigger into an instruction.
    fn parse_trigger(&self, trigger: &str) -> Result<Instr>;
}

pub struct BuildRequest {
    pub model: DockerfileModel,
    /// The Dockerfile's escape character (`# escape=`).
    pub escape: char,
    /// Identifies this Dockerfile and context for explaining misses across builds.
    pub place_id: String,
    pub build_args: BTreeMap<String, String>,
    pub target: Option<String>,
    pub no_cache: bool,
    pub no_cache_filter: Vec<String>,
    pub pull: bool,
    pub network: Network,
    pub labels: BTreeMap<String, String>,
    pub secrets: HashMap<String, SecretSource>,
    pub source_date_epoch: Option<i64>,
    pub max_parallelism: usize,
}

/// A solved stage: its config (with history and diff_ids) and layers.
#[derive(Debug, Clone)]
pub struct StageResult {
    pub config: ImageConfigFile,
    pub layers: Vec<LayerRef>,
    pub key: String,
    /// Seconds since the epoch of the newest step (for the config's `created`).
    pub created: i64,
}

type Outcome = Option<Result<Arc<StageResult>, String>>;

struct Shared {
    model: DockerfileModel,
    graph: Graph,
    labels: Vec<String>,
    req: BuildRequestShared,
    backend: Arc<dyn Backend>,
    context: Arc<BuildContext>,
    progress: Arc<Progress>,
    db: Arc<Mutex<rusqlite::Connection>>,
    file_cache: FileDigestCache,
    secrets: Arc<HashMap<String, SecretSource>>,
    permits: tokio::sync::Semaphore,
    outcomes: Vec<tokio::sync::watch::Sender<Outcome>>,
    /// Global ARG values (after `--build-arg` overrides), visible in FROM lines.
    global_args: BTreeMap<String, String>,
    started: i64,
    escape: char,
}

struct BuildRequestShared {
    place_id: String,
    build_args: BTreeMap<String, String>,
    no_cache: bool,
    no_cache_filter: Vec<String>,
    pull: bool,
    network: Network,
    source_date_epoch: Option<i64>,
}

/// The platform args BuildKit defines in the global scope.
fn platform_args() -> BTreeMap<String, String> {
    let arch = super::imageconfig::host_architecture();
    let mut m = BTreeMap::new();
    for prefix in ["TARGET", "BUILD"] {
        m.insert(format!("{prefix}PLATFORM"), format!("linux/{arch}"));
        m.insert(format!("{prefix}OS"), "linux".into());
        m.insert(format!("{prefix}ARCH"), arch.into());
        m.insert(format!("{prefix}VARIANT"), String::new());
    }
    m
}

/// Solves the build: returns the target stage's result.
pub async fn solve(
    request: BuildRequest,
    backend: Arc<dyn Backend>,
    context: Arc<BuildContext>,
    progress: Arc<Progress>,
    db: Arc<Mutex<rusqlite::Connection>>,
) -> Result<StageResult> {
    // Global ARGs: defaults expanded in order, `--build-arg` wins.
    let mut global_args: BTreeMap<String, String> = platform_args();
    for (name, default) in &request.model.global_args {
        let value = match request.build_args.get(name) {
            Some(v) => Some(v.clone()),
            None => match default {
                Some(d) => Some(expand_word(
                    d,
                    &|k| global_args.get(k).cloned(),
                    request.escape,
                )?),
                None => None,
            },
        };
        if let Some(v) = value {
            global_args.insert(name.clone(), v);
        }
    }
    let graph = {
        let ga = global_args.clone();
        let escape = request.escape;
        build_graph(&request.model, request.target.as_deref(), &move |w| {
            expand_word(w, &|k| ga.get(k).cloned(), escape)
        })?
    };
    let file_cache = {
        let conn = db.lock().map_err(|_| anyhow!("database lock poisoned"))?;
        cache::init(&conn)?;
        FileDigestCache::load(&conn, context.root())?
    };
    let labels = stage_labels(&request.model);
    let n = request.model.stages.len();
    let outcomes = (0..n)
        .map(|_| tokio::sync::watch::channel(None).0)
        .collect();
    let started = request
        .source_date_epoch
        .unwrap_or_else(|| chrono::Utc::now().timestamp());
    let shared = Arc::new(Shared {
        labels,
        req: BuildRequestShared {
            place_id: request.place_id,
            build_args: request.build_args,
            no_cache: request.no_cache,
            no_cache_filter: request
                .no_cache_filter
                .iter()
                .map(|s| s.to_ascii_lowercase())
                .collect(),
            pull: request.pull,
            network: request.network,
            source_date_epoch: request.source_date_epoch,
        },
        graph,
        model: request.model,
        backend,
        context,
        progress,
        db: db.clone(),
        file_cache,
        secrets: Arc::new(request.secrets),
        permits: tokio::sync::Semaphore::new(request.max_parallelism.max(1)),
        outcomes,
        global_args,
        started,
        escape: request.escape,
    });
    let mut tasks = tokio::task::JoinSet::new();
    for &stage in &shared.graph.order {
        let shared = shared.clone();
        tasks.spawn(async move {
            let result = solve_stage(&shared, stage).await;
            let published = match &result {
                Ok(r) => Ok(r.clone()),
                Err(e) => Err(format!("{e:#}")),
            };
            shared.outcomes[stage].send_replace(Some(published));
            (stage, result)
        });
    }
    let mut first_error: Option<(usize, anyhow::Error)> = None;
    let mut target_result = None;
    while let Some(joined) = tasks.join_next().await {
        let (stage, result) = joined.map_err(|e| anyhow!("a build task failed: {e}"))?;
        match result {
            Ok(r) if stage == shared.graph.target => target_result = Some(r),
            Ok(_) => {}
            Err(e) => {
                let is_dependency_error = e.downcast_ref::<DependencyFailed>().is_some();
                let replace = match &first_error {
                    None => true,
                    Some((_, prev)) => {
                        prev.downcast_ref::<DependencyFailed>().is_some() && !is_dependency_error
                    }
                };
                if replace {
                    first_error = Some((stage, e));
                }
                if !is_dependency_error {
                    // The root cause is known: stop the other stages.
                    tasks.abort_all();
                }
            }
        }
    }
    // Keep what was hashed for the next build, even when the build failed.
    {
        let mut conn = db.lock().map_err(|_| anyhow!("database lock poisoned"))?;
        shared.file_cache.save(&mut conn)?;
    }
    if let Some((_, e)) = first_error {
        return Err(e);
    }
    let result = target_result.ok_or_else(|| anyhow!("the target stage produced no result"))?;
    Ok(Arc::try_unwrap(result).unwrap_or_else(|a| (*a).clone()))
}

#[derive(Debug)]
struct DependencyFailed(String);

impl std::fmt::Display for DependencyFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "stage {} failed", self.0)
    }
}

impl std::error::Error for DependencyFailed {}

async fn wait_stage(shared: &Shared, stage: usize) -> Result<Arc<StageResult>> {
    let mut rx = shared.outcomes[stage].subscribe();
    let value = rx
        .wait_for(|v| v.is_some())
        .await
        .map_err(|_| anyhow!(DependencyFailed(shared.labels[stage].clone())))?;
    match value.as_ref() {
        Some(Ok(r)) => Ok(r.clone()),
        _ => Err(anyhow!(DependencyFailed(shared.labels[stage].clone()))),
    }
}

fn digest_of(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    format!("sha256:{}", hex::encode(h.finalize()))
}

/// The per-stage walk state.
struct StageWalk {
    config: ImageConfigFile,
    layers: Vec<LayerRef>,
    /// Key of the current filesystem state.
    key: String,
    /// Declared ARGs in scope with their values (None: declared without a value).
    args: Vec<(String, Option<String>)>,
    /// Whether CMD was set in this stage (ENTRYPOINT resets an inherited CMD only).
    cmd_set_here: bool,
    /// Time of the newest filesystem state (history `created` of config-only steps).
    created: i64,
    new_history: Vec<History>,
    escape: char,
}

impl StageWalk {
    fn lookup(&self, name: &str) -> Option<String> {
        if let Some(v) = self.config.env_get(name) {
            return Some(v.to_string());
        }
        self.args
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.clone())
    }

    fn expand(&self, word: &str) -> Result<String> {
        expand_word(word, &|k| self.lookup(k), self.escape)
    }

    /// ARGs that have values and are not shadowed by ENV: RUN sees them as environment.
    fn arg_env(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for (k, v) in &self.args {
            if let Some(v) = v {
                if self.config.env_get(k).is_none() {
                    out.insert(k.clone(), v.clone());
                }
            }
        }
        out
    }

    fn workdir(&self) -> String {
        self.config
            .config
            .working_dir
            .clone()
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".into())
    }

    fn shell(&self) -> Vec<String> {
        self.config
            .config
            .shell
            .clone()
            .unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into()])
    }

    fn history(&mut self, created_by: String, empty: bool, created: i64) {
        self.new_history.push(History {
            created: Some(format_time(created)),
            created_by: Some(created_by),
            comment: Some("buildkit.dockerfile.v0".into()),
            empty_layer: empty.then_some(true),
            author: None,
        });
    }
}

pub fn format_time(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn with_line<T>(result: Result<T>, instr: &Instr) -> Result<T> {
    result.with_context(|| format!("Dockerfile:{}: {}", instr.line, instr.original))
}

async fn solve_stage(shared: &Arc<Shared>, stage: usize) -> Result<Arc<StageResult>> {
    let model_stage = &shared.model.stages[stage];
    let label = &shared.labels[stage];
    let total = model_stage.instructions.len() + 1;
    let from_name = format!("[{label} 1/{total}] FROM {}", model_stage.base);
    let (mut walk, mut instructions) = match &shared.graph.bases[stage] {
        BaseRef::Scratch => {
            let walk = StageWalk {
                config: ImageConfigFile::scratch().for_new_stage(),
                layers: Vec::new(),
                key: digest_of(&["scratch"]),
                args: Vec::new(),
                cmd_set_here: false,
                created: shared.started,
                new_history: Vec::new(),
                escape: shared.escape,
            };
            (walk, Vec::new())
        }
        BaseRef::Stage(j) => {
            let base = wait_stage(shared, *j).await?;
            let walk = StageWalk {
                config: base.config.clone().for_new_stage(),
                layers: base.layers.clone(),
                key: base.key.clone(),
                args: Vec::new(),
                cmd_set_here: false,
                created: base.created,
                new_history: Vec::new(),
                escape: shared.escape,
            };
            (walk, Vec::new())
        }
        BaseRef::Image(name) => {
            let id = shared.progress.start(&from_name);
            let backend = shared.backend.clone();
            let (name_owned, pull) = (name.clone(), shared.req.pull);
            let base = tokio::task::spawn_blocking(move || backend.base_image(&name_owned, pull))
                .await
                .map_err(|e| anyhow!("resolving the base image: {e}"))?;
            let base = match base {
                Ok(b) => {
                    shared.progress.done(id);
                    b
                }
                Err(e) => {
                    shared.progress.failed(id, &format!("{e:#}"));
                    return Err(e)
                        .with_context(|| format!("Dockerfile:{}: FROM {name}", model_stage.line));
                }
            };
            let triggers = base.config.config.on_build.clone().unwrap_or_default();
            let mut trigger_instrs = Vec::new();
            for t in &triggers {
                let mut instr = shared.backend.parse_trigger(t).with_context(|| {
                    format!(
                        "Dockerfile:{}: ONBUILD trigger {t:?} of {name}",
                        model_stage.line
                    )
                })?;
                instr.line = model_stage.line;
                trigger_instrs.push(instr);
            }
            let created = base
                .config
                .created
                .as_deref()
                .and_then(|c| chrono::DateTime::parse_from_rfc3339(c).ok())
                .map(|t| t.timestamp())
                .unwrap_or(0);
            let walk = StageWalk {
                config: base.config.clone().for_new_stage(),
                layers: base.layers.clone(),
                key: digest_of(&["image", &base.id]),
                args: Vec::new(),
                cmd_set_here: false,
                created: shared
                    .req
                    .source_date_epoch
                    .map_or(created, |e| created.min(e)),
                new_history: Vec::new(),
                escape: shared.escape,
            };
            (walk, trigger_instrs)
        }
    };
    instructions.extend(model_stage.instructions.iter().cloned());
    let no_cache = shared.req.no_cache
        || model_stage
            .name
            .as_ref()
            .is_some_and(|n| shared.req.no_cache_filter.contains(n))
        || shared.req.no_cache_filter.contains(&stage.to_string());
    let mut first_fs_step = true;
    for (index, instr) in instructions.iter().enumerate() {
        let name = format!(
            "[{label} {}/{}] {}",
            index + 2,
            instructions.len() + 1,
            instr.original
        );
        let place = digest_of(&[
            &shared.req.place_id,
            &stage.to_string(),
            &index.to_string(),
            &instr.original,
        ]);
        let step = with_line(plan_step(shared, stage, &mut walk, instr).await, instr)?;
        let Some(planned) = step else { continue };
        let id = shared.progress.start(&name);
        let result = run_step(
            shared,
            &mut walk,
            planned,
            instr,
            &name,
            &place,
            id,
            no_cache,
            first_fs_step,
        )
        .await;
        first_fs_step = false;
        if let Err(e) = result {
            shared.progress.failed(id, &format!("{e:#}"));
            return Err(e);
        }
    }
    // The stage's image config: layers, history, created.
    let mut config = walk.config;
    config.rootfs.kind = "layers".into();
    config.rootfs.diff_ids = walk.layers.iter().map(|l| l.diff_id.clone()).collect();
    config.history.extend(walk.new_history);
    config.created = Some(format_time(walk.created));
    Ok(Arc::new(StageResult {
        config,
        layers: walk.layers,
        key: walk.key,
        created: walk.created,
    }))
}

/// A filesystem step ready to run: its op, key and the inputs recorded for explanations.
struct Planned {
    op: Op,
    key: String,
    inputs: StepInputs,
    created_by: String,
}

/// Applies a config-only instruction to the walk, or plans a filesystem step.
async fn plan_step(
    shared: &Arc<Shared>,
    stage: usize,
    walk: &mut StageWalk,
    instr: &Instr,
) -> Result<Option<Planned>> {
    let created = walk.created;
    match &instr.kind {
        InstrKind::Env(pairs) => {
            let mut expanded = Vec::new();
            for (k, v) in pairs {
                expanded.push((walk.expand(k)?, walk.expand(v)?));
            }
            let text: Vec<String> = expanded.iter().map(|(k, v)| format!("{k}={v}")).collect();
            for (k, v) in expanded {
                walk.config.env_set(&k, &v);
            }
            walk.history(format!("ENV {}", text.join(" ")), true, created);
        }
        InstrKind::Arg(args) => {
            for (name, default) in args {
                let value = match shared.req.build_args.get(name) {
                    Some(v) => Some(v.clone()),
                    None => match default {
                        Some(d) => Some(walk.expand(d)?),
                        None => shared.global_args.get(name).cloned(),
                    },
                };
                walk.args.push((name.clone(), value));
            }
        }
        InstrKind::Label(pairs) => {
            let mut text = Vec::new();
            for (k, v) in pairs {
                let (k, v) = (walk.expand(k)?, walk.expand(v)?);
                text.push(format!("{k}={v}"));
                walk.config
                    .config
                    .labels
                    .get_or_insert_with(BTreeMap::new)
                    .insert(k, v);
            }
            walk.history(format!("LABEL {}", text.join(" ")), true, created);
        }
        InstrKind::Maintainer(m) => {
            walk.config.author = Some(m.clone());
            walk.history(format!("MAINTAINER {m}"), true, created);
        }
        InstrKind::Expose(ports) => {
            let mut added = Vec::new();
            for p in ports {
                for word in expand_words(p, &|k| walk.lookup(k), walk.escape)? {
                    for port in expand_port(&word)? {
                        walk.config
                            .config
                            .exposed_ports
                            .get_or_insert_with(BTreeMap::new)
                            .insert(port.clone(), serde_json::json!({}));
                        added.push(port);
                    }
                }
            }
            let list: Vec<String> = added.iter().map(|p| format!("{p}:{{}}")).collect();
            walk.history(format!("EXPOSE map[{}]", list.join(" ")), true, created);
        }
        InstrKind::Volume(vols) => {
            let mut added = Vec::new();
            for v in vols {
                let v = walk.expand(v)?;
                if v.is_empty() {
                    bail!("VOLUME specified can not be an empty string");
                }
                walk.config
                    .config
                    .volumes
                    .get_or_insert_with(BTreeMap::new)
                    .insert(v.clone(), serde_json::json!({}));
                added.push(v);
            }
            walk.history(format!("VOLUME [{}]", added.join(" ")), true, created);
        }
        InstrKind::User(u) => {
            let u = walk.expand(u)?;
            walk.config.config.user = Some(u.clone());
            walk.history(format!("USER {u}"), true, created);
        }
        InstrKind::StopSignal(s) => {
            let s = walk.expand(s)?;
            walk.config.config.stop_signal = Some(s.clone());
            walk.history(format!("STOPSIGNAL {s}"), true, created);
        }
        InstrKind::Shell(argv) => {
            walk.config.config.shell = Some(argv.clone());
            walk.history(format!("SHELL [{}]", argv.join(" ")), true, created);
        }
        InstrKind::Cmd(form) => {
            let argv = command_argv(walk, form);
            walk.history(format!("CMD {}", go_quoted(&argv)), true, created);
            walk.config.config.cmd = Some(argv);
            walk.cmd_set_here = true;
        }
        InstrKind::Entrypoint(form) => {
            let argv = command_argv(walk, form);
            walk.history(format!("ENTRYPOINT {}", go_quoted(&argv)), true, created);
            walk.config.config.entrypoint = Some(argv);
            if !walk.cmd_set_here {
                walk.config.config.cmd = None;
            }
        }
        InstrKind::Healthcheck(h) => {
            walk.config.config.healthcheck = Some(health_config(walk, h)?);
            let text = instr
                .original
                .split_once(char::is_whitespace)
                .map(|(_, r)| r.trim())
                .unwrap_or("");
            walk.history(format!("HEALTHCHECK {text}"), true, created);
        }
        InstrKind::Onbuild(trigger) => {
            walk.config
                .config
                .on_build
                .get_or_insert_with(Vec::new)
                .push(trigger.clone());
            walk.history(format!("ONBUILD {trigger}"), true, created);
        }
        InstrKind::Workdir(dir) => {
            let dir = walk.expand(dir)?;
            let path = absolute_in(&walk.workdir(), &dir);
            walk.config.config.working_dir = Some(path.clone());
            let user = walk.config.config.user.clone().filter(|u| !u.is_empty());
            let key = digest_of(&[&walk.key, "mkdir", &path, user.as_deref().unwrap_or("")]);
            let inputs = StepInputs {
                parent: walk.key.clone(),
                instruction: format!("WORKDIR {path}"),
                ..Default::default()
            };
            return Ok(Some(Planned {
                op: Op::Mkdir {
                    path: path.clone(),
                    user,
                },
                key,
                inputs,
                created_by: format!("WORKDIR {path}"),
            }));
        }
        InstrKind::Run {
            command,
            heredocs,
            mounts,
            network,
            security,
        } => {
            if let Some(sec) = security {
                if sec != "sandbox" {
                    bail!("RUN --security={sec} is not supported (only sandbox)");
                }
            }
            let argv = run_argv(walk, command, heredocs);
            let arg_env = walk.arg_env();
            let mut env: Vec<String> = walk.config.config.env.clone().unwrap_or_default();
            env.extend(arg_env.iter().map(|(k, v)| format!("{k}={v}")));
            let network = match network.as_deref() {
                None | Some("default") => shared.req.network,
                Some("none") => Network::None,
                Some("host") => Network::Host,
                Some(other) => bail!("RUN --network={other}: expected default, none or host"),
            };
            let mut resolved = Vec::new();
            let mut mount_keys = Vec::new();
            for m in mounts {
                let (mount, key_part) = resolve_mount(shared, stage, walk, m).await?;
                resolved.push(mount);
                mount_keys.push(key_part);
            }
            let user = walk.config.config.user.clone().filter(|u| !u.is_empty());
            let cwd = walk.workdir();
            let args_text = if arg_env.is_empty() {
                String::new()
            } else {
                let list: Vec<String> = arg_env.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("|{} {} ", list.len(), list.join(" "))
            };
            let display = argv.join(" ");
            let created_by = format!("RUN {args_text}{display} # buildkit");
            let net = if network == Network::None {
                "none"
            } else {
                "host"
            };
            let mut parts: Vec<&str> =
                vec![&walk.key, "run", net, &cwd, user.as_deref().unwrap_or("")];
            parts.extend(argv.iter().map(String::as_str));
            parts.push("\0env");
            parts.extend(env.iter().map(String::as_str));
            parts.push("\0mounts");
            parts.extend(mount_keys.iter().map(String::as_str));
            let key = digest_of(&parts);
            let inputs = StepInputs {
                parent: walk.key.clone(),
                instruction: format!("RUN {display}"),
                args: arg_env,
                env: walk.config.config.env.clone().unwrap_or_default(),
                ..Default::default()
            };
            let op = Op::Run(RunOp {
                argv,
                env,
                cwd,
                user,
                network,
                mounts: resolved,
                display,
            });
            return Ok(Some(Planned {
                op,
                key,
                inputs,
                created_by,
            }));
        }
        InstrKind::Copy(args) | InstrKind::Add(args) => {
            let is_add = matches!(instr.kind, InstrKind::Add(_));
            return plan_copy(shared, stage, walk, args, is_add, instr)
                .await
                .map(Some);
        }
    }
    Ok(None)
}

/// Makes `path` absolute against `base` (a WORKDIR), keeping a trailing slash.
fn absolute_in(base: &str, path: &str) -> String {
    let joined = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("{}/{}", base.trim_end_matches('/'), path)
    };
    let trailing = path.ends_with('/') || path.ends_with("/.") || path == ".";
    let mut clean = format!("/{}", super::fsutil::clean_rel(&joined));
    if trailing && clean != "/" {
        clean.push('/');
    }
    clean
}

fn command_argv(walk: &StageWalk, form: &CommandForm) -> Vec<String> {
    match form {
        CommandForm::Exec(argv) => argv.clone(),
        CommandForm::Shell(cmd) => {
            let mut argv = walk.shell();
            argv.push(cmd.clone());
            argv
        }
    }
}

/// RUN's argv: exec form as is; shell form through SHELL, with here-documents inlined so the
/// shell reads them (`RUN <<EOF` alone runs the document as the script).
fn run_argv(walk: &StageWalk, form: &CommandForm, heredocs: &[Heredoc]) -> Vec<String> {
    match form {
        CommandForm::Exec(argv) => argv.clone(),
        CommandForm::Shell(cmd) => {
            let mut script = cmd.clone();
            let only_doc = heredocs.len() == 1 && {
                let t = cmd.trim();
                t.starts_with("<<")
                    && t.trim_start_matches("<<")
                        .trim_start_matches('-')
                        .trim_matches(['"', '\''])
                        == heredocs[0].name
            };
            if only_doc {
                script = heredocs[0].content.clone();
            } else {
                for doc in heredocs {
                    script.push('\n');
                    script.push_str(&doc.content);
                    if !doc.content.ends_with('\n') {
                        script.push('\n');
                    }
                    script.push_str(&doc.name);
                }
            }
            let mut argv = walk.shell();
            argv.push(script);
            argv
        }
    }
}

/// Go's `%q` of a string slice, as BuildKit writes CMD/ENTRYPOINT history.
fn go_quoted(argv: &[String]) -> String {
    let items: Vec<String> = argv
        .iter()
        .map(|a| serde_json::to_string(a).unwrap_or_default())
        .collect();
    format!("[{}]", items.join(" "))
}

/// `8080` -> `8080/tcp`; `8000-8002/udp` -> three ports.
fn expand_port(spec: &str) -> Result<Vec<String>> {
    let (ports, proto) = match spec.split_once('/') {
        Some((p, proto)) => (p, proto.to_ascii_lowercase()),
        None => (spec, "tcp".to_string()),
    };
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        bail!("EXPOSE {spec}: invalid protocol {proto:?}");
    }
    let parse = |s: &str| {
        s.parse::<u16>()
            .map_err(|_| anyhow!("EXPOSE {spec}: invalid port {s:?}"))
    };
    let (lo, hi) = match ports.split_once('-') {
        Some((a, b)) => (parse(a)?, parse(b)?),
        None => {
            let p = parse(ports)?;
            (p, p)
        }
    };
    if hi < lo {
        bail!("EXPOSE {spec}: invalid range");
    }
    Ok((lo..=hi).map(|p| format!("{p}/{proto}")).collect())
}

/// Go duration strings (`30s`, `1m30s`, `500ms`) in nanoseconds.
pub fn parse_duration(s: &str) -> Result<i64> {
    let mut total: f64 = 0.0;
    let mut rest = s.trim();
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        bail!("empty duration");
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            bail!("invalid duration {s:?}");
        }
        let value: f64 = rest[..num_len]
            .parse()
            .map_err(|_| anyhow!("invalid duration {s:?}"))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => bail!("invalid duration {s:?} (expected a unit such as 30s or 1m)"),
        };
        total += value * scale;
        rest = &rest[unit_len..];
    }
    Ok(total as i64)
}

fn health_config(walk: &StageWalk, h: &HealthArgs) -> Result<HealthConfig> {
    let Some(cmd) = &h.command else {
        return Ok(HealthConfig {
            test: Some(vec!["NONE".into()]),
            ..Default::default()
        });
    };
    let test = match cmd {
        CommandForm::Shell(s) => vec!["CMD-SHELL".to_string(), s.clone()],
        CommandForm::Exec(argv) => {
            let mut t = vec!["CMD".to_string()];
            t.extend(argv.iter().cloned());
            t
        }
    };
    let dur = |v: &Option<String>, flag: &str| -> Result<Option<i64>> {
        v.as_ref()
            .map(|s| {
                parse_duration(&walk.expand(s)?).with_context(|| format!("HEALTHCHECK --{flag}"))
            })
            .transpose()
    };
    Ok(HealthConfig {
        test: Some(test),
        interval: dur(&h.interval, "interval")?,
        timeout: dur(&h.timeout, "timeout")?,
        start_period: dur(&h.start_period, "start-period")?,
        start_interval: dur(&h.start_interval, "start-interval")?,
        retries: h
            .retries
            .as_ref()
            .map(|r| {
                r.parse::<i64>()
                    .map_err(|_| anyhow!("HEALTHCHECK --retries={r}: expected a number"))
            })
            .transpose()?,
    })
}

/// Resolves `--from` of COPY or a mount: a stage (its layers, waiting for it), or an image.
async fn resolve_from(
    shared: &Arc<Shared>,
    stage: usize,
    from: &str,
) -> Result<(SourceTree, String)> {
    if let Some(j) = stage_ref(&shared.model, from, stage) {
        let r = wait_stage(shared, j).await?;
        return Ok((SourceTree::Layers(r.layers.clone()), r.key.clone()));
    }
    if from.parse::<usize>().is_ok() {
        bail!("--from={from}: no such stage before this one");
    }
    let backend = shared.backend.clone();
    let (name, pull) = (from.to_string(), shared.req.pull);
    let image = tokio::task::spawn_blocking(move || backend.base_image(&name, pull))
        .await
        .map_err(|e| anyhow!("resolving {from}: {e}"))?
        .with_context(|| format!("--from={from}"))?;
    Ok((
        SourceTree::Layers(image.layers),
        digest_of(&["image", &image.id]),
    ))
}

async fn plan_copy(
    shared: &Arc<Shared>,
    stage: usize,
    walk: &mut StageWalk,
    args: &CopyArgs,
    is_add: bool,
    instr: &Instr,
) -> Result<Planned> {
    let verb = if is_add { "ADD" } else { "COPY" };
    let mut sources = Vec::new();
    let mut urls = Vec::new();
    for s in &args.sources {
        let s = walk.expand(s)?;
        if is_add && (s.starts_with("http://") || s.starts_with("https://")) {
            urls.push((s, args.checksum.clone()));
        } else if s.starts_with("git@") || (is_add && s.ends_with(".git") && s.contains("://")) {
            bail!("{verb} of a git repository ({s}) is not supported");
        } else {
            sources.push(s);
        }
    }
    if !is_add && args.checksum.is_some() {
        bail!("COPY does not take --checksum");
    }
    let dest_word = walk.expand(&args.dest)?;
    let dest = absolute_in(&walk.workdir(), &dest_word);
    let chown = args.chown.as_ref().map(|c| walk.expand(c)).transpose()?;
    let chmod = args
        .chmod
        .as_ref()
        .map(|c| walk.expand(c))
        .transpose()?
        .map(|c| super::copy::parse_chmod(&c))
        .transpose()?;
    let excludes = args
        .excludes
        .iter()
        .map(|e| walk.expand(e))
        .collect::<Result<Vec<_>>>()?;
    let heredocs: Vec<(String, String)> = args
        .heredocs
        .iter()
        .map(|d| {
            Ok((
                d.name.clone(),
                if d.expand {
                    walk.expand(&d.content)?
                } else {
                    d.content.clone()
                },
            ))
        })
        .collect::<Result<_>>()?;
    // Here-documents are sources named after their delimiter, not context files.
    sources.retain(|s| {
        !heredocs
            .iter()
            .any(|(n, _)| s == &format!("<<{n}") || s == &format!("<<-{n}"))
    });
    let from = args.from.as_ref().map(|f| walk.expand(f)).transpose()?;
    let (tree, source_key, files) = match &from {
        Some(f) => {
            let (tree, key) = resolve_from(shared, stage, f).await?;
            (tree, key, Vec::new())
        }
        None => {
            // Hash exactly what the COPY selects, off the async threads.
            let shared2 = shared.clone();
            let srcs = sources.clone();
            let excl = excludes.clone();
            let selection = tokio::task::spawn_blocking(move || -> Result<_> {
                let filter = shared2.context.filter();
                let src = super::copy::CopySource {
                    root: shared2.context.root(),
                    filter: filter.as_ref(),
                    from_context: true,
                };
                let expanded = super::copy::expand_sources(&src, &srcs)?;
                hash_selection(
                    shared2.context.root(),
                    &expanded,
                    &HashOptions {
                        filter: filter.as_ref(),
                        excludes: &excl,
                        cache: Some(&shared2.file_cache),
                    },
                )
            })
            .await
            .map_err(|e| anyhow!("hashing the build context: {e}"))??;
            let files: Vec<(String, String)> = selection
                .entries
                .iter()
                .map(|(p, d)| (p.clone(), hex::encode(&d[..12])))
                .collect();
            (SourceTree::Context, selection.digest, files)
        }
    };
    let unpack = is_add && args.unpack.unwrap_or(true);
    let options = CopyOptions {
        chown: None,
        chmod,
        excludes: excludes.clone(),
        parents: args.parents,
        unpack_archives: unpack,
    };
    let mut text = String::from(verb);
    if let Some(f) = &from {
        text.push_str(&format!(" --from={f}"));
    }
    if let Some(c) = &chown {
        text.push_str(&format!(" --chown={c}"));
    }
    if let Some(m) = chmod {
        text.push_str(&format!(" --chmod={m:o}"));
    }
    if args.parents {
        text.push_str(" --parents");
    }
    for e in &excludes {
        text.push_str(&format!(" --exclude={e}"));
    }
    let all_sources: Vec<String> = sources
        .iter()
        .cloned()
        .chain(urls.iter().map(|(u, _)| u.clone()))
        .collect();
    text.push_str(&format!(" {} {}", all_sources.join(" "), dest_word));
    let mut parts: Vec<String> = vec![
        walk.key.clone(),
        "copy".into(),
        text.clone(),
        dest.clone(),
        source_key.clone(),
        unpack.to_string(),
    ];
    for (n, c) in &heredocs {
        parts.push(format!("heredoc:{n}:{c}"));
    }
    for (u, c) in &urls {
        parts.push(format!("url:{u}:{}", c.as_deref().unwrap_or("")));
    }
    let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
    let key = digest_of(&refs);
    let inputs = StepInputs {
        parent: walk.key.clone(),
        instruction: text.clone(),
        files,
        sources: if from.is_some() {
            vec![source_key]
        } else {
            Vec::new()
        },
        ..Default::default()
    };
    let _ = instr;
    let op = Op::Copy(CopyOp {
        from: tree,
        sources,
        dest,
        chown,
        options,
        heredocs,
        urls,
    });
    Ok(Planned {
        op,
        key,
        inputs,
        created_by: format!("{text} # buildkit"),
    })
}

/// Resolves one `RUN --mount` and the part of it that belongs in the cache key (never a
/// secret's value).
async fn resolve_mount(
    shared: &Arc<Shared>,
    stage: usize,
    walk: &StageWalk,
    m: &MountSpec,
) -> Result<(RunMount, String)> {
    let get = |k: &str| -> Result<Option<String>> { m.get(k).map(|v| walk.expand(v)).transpose() };
    let flag = |k: &str| -> Result<bool> {
        Ok(match get(k)? {
            None => false,
            Some(v) if v.is_empty() || v == "true" => true,
            Some(v) if v == "false" => false,
            Some(v) => bail!("--mount {k}={v}: expected true or false"),
        })
    };
    let target = get("target")?.or(get("dst")?).or(get("destination")?);
    let num = |k: &str, default: u32, radix: u32| -> Result<u32> {
        match get(k)? {
            None => Ok(default),
            Some(v) => u32::from_str_radix(&v, radix)
                .map_err(|_| anyhow!("--mount {k}={v}: expected a number")),
        }
    };
    let kind = if m.kind.is_empty() {
        "bind"
    } else {
        m.kind.as_str()
    };
    match kind {
        "bind" => {
            let target = target.ok_or_else(|| anyhow!("--mount=type=bind needs a target"))?;
            let source = get("source")?.or(get("src")?).unwrap_or_default();
            let rw = flag("rw")? || flag("readwrite")?;
            let (from, key) = match get("from")? {
                Some(f) => {
                    let (tree, key) = resolve_from(shared, stage, &f).await?;
                    (Some(tree), key)
                }
                None => {
                    let shared2 = shared.clone();
                    let src = super::fsutil::clean_rel(&source);
                    let sel = tokio::task::spawn_blocking(move || {
                        let filter = shared2.context.filter();
                        hash_selection(
                            shared2.context.root(),
                            &[src],
                            &HashOptions {
                                filter: filter.as_ref(),
                                excludes: &[],
                                cache: Some(&shared2.file_cache),
                            },
                        )
                    })
                    .await
                    .map_err(|e| anyhow!("hashing the bind mount source: {e}"))??;
                    (None, sel.digest)
                }
            };
            let key_part = format!("bind:{target}:{source}:{rw}:{key}");
            Ok((
                RunMount::Bind {
                    target,
                    source,
                    from: from.or(Some(SourceTree::Context)),
                    rw,
                },
                key_part,
            ))
        }
        "cache" => {
            let target = target.ok_or_else(|| anyhow!("--mount=type=cache needs a target"))?;
            let id = get("id")?.unwrap_or_else(|| target.clone());
            let sharing = get("sharing")?.unwrap_or_else(|| "shared".into());
            if !matches!(sharing.as_str(), "shared" | "private" | "locked") {
                bail!("--mount sharing={sharing}: expected shared, private or locked");
            }
            if get("from")?.is_some() {
                bail!("--mount=type=cache,from=... is not supported");
            }
            let mode = num("mode", 0o755, 8)?;
            let (uid, gid) = (num("uid", 0, 10)?, num("gid", 0, 10)?);
            // The cache's contents are not part of the key (as BuildKit): only where it is.
            let key_part = format!("cache:{target}:{id}:{sharing}:{mode}:{uid}:{gid}");
            Ok((
                RunMount::Cache {
                    target,
                    id,
                    sharing,
                    mode,
                    uid,
                    gid,
                },
                key_part,
            ))
        }
        "tmpfs" => {
            let target = target.ok_or_else(|| anyhow!("--mount=type=tmpfs needs a target"))?;
            let size = get("size")?.map(|s| parse_size(&s)).transpose()?;
            Ok((
                RunMount::Tmpfs {
                    target: target.clone(),
                    size,
                },
                format!("tmpfs:{target}:{size:?}"),
            ))
        }
        "secret" => {
            let id = get("id")?.or_else(|| {
                target
                    .as_ref()
                    .map(|t| t.rsplit('/').next().unwrap_or(t).to_string())
            });
            let id = id.ok_or_else(|| anyhow!("--mount=type=secret needs an id or a target"))?;
            let env = get("env")?;
            let target = match (&target, &env) {
                (Some(t), _) => Some(t.clone()),
                (None, None) => Some(format!("/run/secrets/{id}")),
                (None, Some(_)) => None,
            };
            let required = flag("required")?;
            let mode = num("mode", 0o400, 8)?;
            let (uid, gid) = (num("uid", 0, 10)?, num("gid", 0, 10)?);
            if required && !shared.secrets.contains_key(&id) {
                bail!("secret {id:?} is required but was not given (--secret id={id},src=PATH)");
            }
            // Only where the secret goes, never its value.
            let key_part = format!("secret:{id}:{target:?}:{env:?}:{mode}:{uid}:{gid}");
            Ok((
                RunMount::Secret {
                    id,
                    target,
                    env,
                    required,
                    mode,
                    uid,
                    gid,
                },
                key_part,
            ))
        }
        "ssh" => bail!("RUN --mount=type=ssh is not supported"),
        other => bail!("--mount type={other}: expected bind, cache, tmpfs, secret or ssh"),
    }
}

fn parse_size(s: &str) -> Result<u64> {
    let lower = s.to_ascii_lowercase();
    let (num, mult) = match lower.trim_end_matches('b').chars().last() {
        Some('k') => (&lower[..lower.trim_end_matches('b').len() - 1], 1u64 << 10),
        Some('m') => (&lower[..lower.trim_end_matches('b').len() - 1], 1 << 20),
        Some('g') => (&lower[..lower.trim_end_matches('b').len() - 1], 1 << 30),
        _ => (lower.trim_end_matches('b'), 1),
    };
    num.parse::<u64>()
        .map(|n| n * mult)
        .map_err(|_| anyhow!("--mount size={s}: expected a size such as 64m"))
}

/// Looks the step up in the cache, executes it on a miss, and advances the walk.
#[allow(clippy::too_many_arguments)]
async fn run_step(
    shared: &Arc<Shared>,
    walk: &mut StageWalk,
    planned: Planned,
    instr: &Instr,
    name: &str,
    place: &str,
    id: StepId,
    no_cache: bool,
    first_fs_step: bool,
) -> Result<()> {
    let Planned {
        op,
        key,
        inputs,
        created_by,
    } = planned;
    if !no_cache {
        let hit = {
            let conn = shared
                .db
                .lock()
                .map_err(|_| anyhow!("database lock poisoned"))?;
            cache::lookup(&conn, &key)?
        };
        if let Some((layer, created)) = hit.map(|h| (h, cached_time(shared, &key))) {
            let usable = layer.as_ref().map_or(true, |l| shared.backend.has_layer(l));
            if usable {
                let created = shared
                    .req
                    .source_date_epoch
                    .or(created)
                    .unwrap_or(walk.created);
                walk.created = created.max(walk.created);
                walk.history(created_by, layer.is_none(), created);
                if let Some(l) = layer {
                    walk.layers.push(l);
                }
                walk.key = key;
                shared.progress.cached(id);
                return Ok(());
            }
        }
    }
    // A miss: say why, then run.
    let reason = if no_cache {
        "--no-cache".to_string()
    } else {
        let conn = shared
            .db
            .lock()
            .map_err(|_| anyhow!("database lock poisoned"))?;
        let old = cache::load_inputs(&conn, place)?;
        cache::explain_miss(old.as_ref(), &inputs, first_fs_step)
    };
    shared.progress.explain(id, &instr.original, &reason);
    let _permit = shared
        .permits
        .acquire()
        .await
        .map_err(|_| anyhow!("build cancelled"))?;
    let started = Instant::now();
    let req = ExecRequest {
        step: id,
        line: instr.line,
        name: name.to_string(),
        parent: walk.layers.clone(),
        op,
        context: shared.context.clone(),
        progress: shared.progress.clone(),
        secrets: shared.secrets.clone(),
        source_date_epoch: shared.req.source_date_epoch,
    };
    let backend = shared.backend.clone();
    let result = tokio::task::spawn_blocking(move || backend.execute(req))
        .await
        .map_err(|e| anyhow!("executing a step: {e}"))?;
    let layer = with_line(result, instr)?;
    let _ = started;
    let created = shared
        .req
        .source_date_epoch
        .unwrap_or_else(|| chrono::Utc::now().timestamp());
    {
        let conn = shared
            .db
            .lock()
            .map_err(|_| anyhow!("database lock poisoned"))?;
        cache::record(&conn, &key, layer.as_ref(), created)?;
        cache::save_inputs(&conn, place, &inputs)?;
    }
    walk.created = created.max(walk.created);
    walk.history(created_by, layer.is_none(), created);
    if let Some(l) = layer {
        walk.layers.push(l);
    }
    walk.key = key;
    shared.progress.done(id);
    Ok(())
}

fn cached_time(shared: &Shared, key: &str) -> Option<i64> {
    let conn = shared.db.lock().ok()?;
    cache::created_of(&conn, key).ok().flatten()
}
