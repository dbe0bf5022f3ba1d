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
use super::graph::{build_graph, stage_labels, stage_ref, BaseRef, Graph};
use super::imageconfig::{HealthConfig, History, ImageConfigFile};
use super::progress::{Progress, StepId};
use crate::dockerfile::{
    self, CopyArgs, Healthcheck, Heredoc, Instruction, Mount, MountType, Sharing, ShellOrExec,
    Spanned, Stages, Vars,
};

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
    /// The command as the progress display and errors show it.
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
    /// ADD of git repositories, resolved to commits.
    pub git: Vec<super::git::GitSource>,
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
    fn parse_trigger(&self, trigger: &str) -> Result<Spanned>;
}

pub struct BuildRequest {
    /// The Dockerfile split into stages, with the `--build-arg`s and platform it is built with
    /// (`frontend::load`).
    pub stages: Stages,
    /// Identifies this Dockerfile and context for explaining misses across builds.
    pub place_id: String,
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
    stages: Stages,
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
    started: i64,
}

struct BuildRequestShared {
    place_id: String,
    no_cache: bool,
    no_cache_filter: Vec<String>,
    pull: bool,
    network: Network,
    source_date_epoch: Option<i64>,
}

/// Solves the build: returns the target stage's result.
pub async fn solve(
    request: BuildRequest,
    backend: Arc<dyn Backend>,
    context: Arc<BuildContext>,
    progress: Arc<Progress>,
    db: Arc<Mutex<rusqlite::Connection>>,
) -> Result<StageResult> {
    let graph = build_graph(&request.stages, request.target.as_deref())?;
    let file_cache = {
        let conn = db.lock().map_err(|_| anyhow!("database lock poisoned"))?;
        cache::init(&conn)?;
        FileDigestCache::load(&conn, context.root())?
    };
    let labels = stage_labels(&request.stages.stages);
    let n = request.stages.stages.len();
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
        stages: request.stages,
        backend,
        context,
        progress,
        db: db.clone(),
        file_cache,
        secrets: Arc::new(request.secrets),
        permits: tokio::sync::Semaphore::new(request.max_parallelism.max(1)),
        outcomes,
        started,
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
    /// ENV and ARG in scope: expands each instruction as BuildKit does. Its ENV follows the
    /// config's (the base image's, then this stage's ENV instructions).
    vars: Vars,
    /// Whether CMD was set in this stage (ENTRYPOINT resets an inherited CMD only).
    cmd_set_here: bool,
    /// Time of the newest filesystem state (history `created` of config-only steps).
    created: i64,
    new_history: Vec<History>,
}

impl StageWalk {
    /// The walk at the start of a stage on top of a base with `config`.
    fn start(
        shared: &Shared,
        config: ImageConfigFile,
        layers: Vec<LayerRef>,
        key: String,
        created: i64,
    ) -> Self {
        StageWalk {
            vars: shared.stages.vars(&config.env_pairs()),
            config,
            layers,
            key,
            cmd_set_here: false,
            created,
            new_history: Vec::new(),
        }
    }

    /// ARGs that have values and are not shadowed by ENV: RUN sees them as environment.
    fn arg_env(&self) -> BTreeMap<String, String> {
        self.vars.arg_env().into_iter().collect()
    }

    /// Proxy build args for a RUN's environment only (never its key or history).
    fn proxy_env(&self) -> Vec<String> {
        self.vars
            .proxy_env()
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect()
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

fn with_line<T>(result: Result<T>, instr: &Spanned) -> Result<T> {
    result.with_context(|| {
        format!(
            "Dockerfile:{}: {}",
            instr.span.start_line,
            super::git::redact_urls(&instr.original)
        )
    })
}

async fn solve_stage(shared: &Arc<Shared>, stage: usize) -> Result<Arc<StageResult>> {
    let df_stage = &shared.stages.stages[stage];
    let from_line = df_stage.from.span.start_line;
    let label = &shared.labels[stage];
    let total = df_stage.instructions.len() + 1;
    // Progress shows the FROM word as written.
    let from_word = match &df_stage.from.instruction {
        Instruction::From { image, .. } => image.as_str(),
        _ => df_stage.base.as_str(),
    };
    let from_name = format!("[{label} 1/{total}] FROM {from_word}");
    let (mut walk, mut instructions) = match &shared.graph.bases[stage] {
        BaseRef::Scratch => {
            let walk = StageWalk::start(
                shared,
                ImageConfigFile::scratch().for_new_stage(),
                Vec::new(),
                digest_of(&["scratch"]),
                shared.started,
            );
            (walk, Vec::new())
        }
        BaseRef::Stage(j) => {
            let base = wait_stage(shared, *j).await?;
            let walk = StageWalk::start(
                shared,
                base.config.clone().for_new_stage(),
                base.layers.clone(),
                base.key.clone(),
                base.created,
            );
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
                    return Err(e).with_context(|| format!("Dockerfile:{from_line}: FROM {name}"));
                }
            };
            let triggers = base.config.config.on_build.clone().unwrap_or_default();
            let mut trigger_instrs = Vec::new();
            for t in &triggers {
                let mut instr = shared.backend.parse_trigger(t).with_context(|| {
                    format!("Dockerfile:{from_line}: ONBUILD trigger {t:?} of {name}")
                })?;
                // A trigger runs as part of the FROM line.
                instr.span.start_line = from_line;
                trigger_instrs.push(instr);
            }
            let created = base
                .config
                .created
                .as_deref()
                .and_then(|c| chrono::DateTime::parse_from_rfc3339(c).ok())
                .map(|t| t.timestamp())
                .unwrap_or(0);
            let walk = StageWalk::start(
                shared,
                base.config.clone().for_new_stage(),
                base.layers.clone(),
                digest_of(&["image", &base.id]),
                shared
                    .req
                    .source_date_epoch
                    .map_or(created, |e| created.min(e)),
            );
            (walk, trigger_instrs)
        }
    };
    instructions.extend(df_stage.instructions.iter().cloned());
    let no_cache = shared.req.no_cache
        || df_stage
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
            super::git::redact_urls(&instr.original)
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
    instr: &Spanned,
) -> Result<Option<Planned>> {
    let created = walk.created;
    // The instruction with BuildKit's expansions done; ENV and ARG also update the scope.
    let expanded = walk
        .vars
        .apply(&instr.instruction)
        .map_err(|e| anyhow!("{e}"))?;
    match &expanded {
        Instruction::From { .. } => bail!("FROM inside a stage"),
        Instruction::Env(pairs) => {
            let text: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
            for (k, v) in pairs {
                walk.config.env_set(k, v);
            }
            walk.history(format!("ENV {}", text.join(" ")), true, created);
        }
        Instruction::Arg(_) => {}
        Instruction::Label(pairs) => {
            let mut text = Vec::new();
            for (k, v) in pairs {
                text.push(format!("{k}={v}"));
                walk.config
                    .config
                    .labels
                    .get_or_insert_with(BTreeMap::new)
                    .insert(k.clone(), v.clone());
            }
            walk.history(format!("LABEL {}", text.join(" ")), true, created);
        }
        Instruction::Maintainer(m) => {
            walk.config.author = Some(m.clone());
            walk.history(format!("MAINTAINER {m}"), true, created);
        }
        Instruction::Expose(ports) => {
            let mut added = Vec::new();
            for word in ports {
                for port in expand_port(word)? {
                    walk.config
                        .config
                        .exposed_ports
                        .get_or_insert_with(BTreeMap::new)
                        .insert(port.clone(), serde_json::json!({}));
                    added.push(port);
                }
            }
            let list: Vec<String> = added.iter().map(|p| format!("{p}:{{}}")).collect();
            walk.history(format!("EXPOSE map[{}]", list.join(" ")), true, created);
        }
        Instruction::Volume(vols) => {
            for v in vols {
                if v.is_empty() {
                    bail!("VOLUME specified can not be an empty string");
                }
                walk.config
                    .config
                    .volumes
                    .get_or_insert_with(BTreeMap::new)
                    .insert(v.clone(), serde_json::json!({}));
            }
            walk.history(format!("VOLUME [{}]", vols.join(" ")), true, created);
        }
        Instruction::User(u) => {
            walk.config.config.user = Some(u.clone());
            walk.history(format!("USER {u}"), true, created);
        }
        Instruction::StopSignal(s) => {
            walk.config.config.stop_signal = Some(s.clone());
            walk.history(format!("STOPSIGNAL {s}"), true, created);
        }
        Instruction::Shell(argv) => {
            walk.config.config.shell = Some(argv.clone());
            walk.history(format!("SHELL [{}]", argv.join(" ")), true, created);
        }
        Instruction::Cmd(form) => {
            let argv = command_argv(walk, form);
            walk.history(format!("CMD {}", go_quoted(&argv)), true, created);
            walk.config.config.cmd = Some(argv);
            walk.cmd_set_here = true;
        }
        Instruction::Entrypoint(form) => {
            let argv = command_argv(walk, form);
            walk.history(format!("ENTRYPOINT {}", go_quoted(&argv)), true, created);
            walk.config.config.entrypoint = Some(argv);
            if !walk.cmd_set_here {
                walk.config.config.cmd = None;
            }
        }
        Instruction::Healthcheck(h) => {
            walk.config.config.healthcheck = Some(health_config(h));
            let text = instr
                .original
                .split_once(char::is_whitespace)
                .map(|(_, r)| r.trim())
                .unwrap_or("");
            walk.history(format!("HEALTHCHECK {text}"), true, created);
        }
        Instruction::Onbuild { source, .. } => {
            walk.config
                .config
                .on_build
                .get_or_insert_with(Vec::new)
                .push(source.clone());
            walk.history(format!("ONBUILD {source}"), true, created);
        }
        Instruction::Workdir(dir) => {
            let path = absolute_in(&walk.workdir(), dir);
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
        Instruction::Run(run) => {
            if run.security == dockerfile::Security::Insecure {
                bail!("RUN --security=insecure is not supported (only sandbox)");
            }
            let argv = run_argv(walk, &run.command, &run.heredocs);
            let arg_env = walk.arg_env();
            let mut env: Vec<String> = walk.config.config.env.clone().unwrap_or_default();
            env.extend(arg_env.iter().map(|(k, v)| format!("{k}={v}")));
            let network = match run.network {
                dockerfile::Network::Default => shared.req.network,
                dockerfile::Network::None => Network::None,
                dockerfile::Network::Host => Network::Host,
            };
            let mut resolved = Vec::new();
            let mut mount_keys = Vec::new();
            for m in &run.mounts {
                let (mount, key_part) = resolve_mount(shared, stage, m).await?;
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
            env.extend(walk.proxy_env());
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
        Instruction::Copy(args) | Instruction::Add(args) => {
            let is_add = matches!(expanded, Instruction::Add(_));
            return plan_copy(shared, stage, walk, args, is_add).await.map(Some);
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

fn command_argv(walk: &StageWalk, form: &ShellOrExec) -> Vec<String> {
    match form {
        ShellOrExec::Exec(argv) => argv.clone(),
        ShellOrExec::Shell(cmd) => {
            let mut argv = walk.shell();
            argv.push(cmd.clone());
            argv
        }
    }
}

/// RUN's argv: exec form as is; shell form through SHELL, with here-documents inlined so the
/// shell reads them (`RUN <<EOF` alone runs the document as the script).
fn run_argv(walk: &StageWalk, form: &ShellOrExec, heredocs: &[Heredoc]) -> Vec<String> {
    match form {
        ShellOrExec::Exec(argv) => argv.clone(),
        ShellOrExec::Shell(cmd) => {
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

/// The config's healthcheck (durations in nanoseconds, as Docker writes them).
fn health_config(h: &Healthcheck) -> HealthConfig {
    let Healthcheck::Cmd {
        test,
        interval,
        timeout,
        start_period,
        start_interval,
        retries,
    } = h
    else {
        return HealthConfig {
            test: Some(vec!["NONE".into()]),
            ..Default::default()
        };
    };
    let test = match test {
        ShellOrExec::Shell(s) => vec!["CMD-SHELL".to_string(), s.clone()],
        ShellOrExec::Exec(argv) => {
            let mut t = vec!["CMD".to_string()];
            t.extend(argv.iter().cloned());
            t
        }
    };
    let nanos = |d: &Option<std::time::Duration>| {
        d.map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
    };
    HealthConfig {
        test: Some(test),
        interval: nanos(interval),
        timeout: nanos(timeout),
        start_period: nanos(start_period),
        start_interval: nanos(start_interval),
        retries: retries.map(i64::from),
    }
}

/// Resolves `--from` of COPY or a mount: a stage (its layers, waiting for it), or an image.
async fn resolve_from(
    shared: &Arc<Shared>,
    stage: usize,
    from: &str,
) -> Result<(SourceTree, String)> {
    if let Some(j) = stage_ref(&shared.stages.stages, from, stage) {
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

/// Plans a COPY or ADD whose words are expanded already.
async fn plan_copy(
    shared: &Arc<Shared>,
    stage: usize,
    walk: &StageWalk,
    args: &CopyArgs,
    is_add: bool,
) -> Result<Planned> {
    let verb = if is_add { "ADD" } else { "COPY" };
    let mut sources = Vec::new();
    let mut urls = Vec::new();
    let mut git = Vec::new();
    for s in &args.sources {
        // Here-documents are sources named after their delimiter, not context files.
        if !args.heredocs.is_empty() && dockerfile::raw::parse_heredoc_word(s).is_some() {
            continue;
        }
        let s = s.clone();
        if let Some(url) = super::git::parse(&s) {
            if !is_add {
                bail!(
                    "COPY cannot copy a git repository ({}): use ADD",
                    url.display()
                );
            }
            // Keyed by the commit the ref names now (as BuildKit): resolved before the step.
            let checksum = args.checksum.clone();
            let keep_git_dir = args.keep_git_dir.unwrap_or(false);
            let source = tokio::task::spawn_blocking(move || -> Result<_> {
                let resolved = super::git::resolve(&url, checksum.as_deref())?;
                Ok(super::git::GitSource {
                    url,
                    resolved,
                    keep_git_dir,
                })
            })
            .await
            .map_err(|e| anyhow!("resolving a git source: {e}"))??;
            git.push(source);
        } else if is_add && (s.starts_with("http://") || s.starts_with("https://")) {
            // Keyed by what the URL serves now, as BuildKit does: without --checksum the content
            // is fetched to learn its digest (the step then verifies it got the same bytes).
            let checksum = match &args.checksum {
                Some(c) => c.clone(),
                None => {
                    let url = s.clone();
                    tokio::task::spawn_blocking(move || -> Result<String> {
                        let data = super::fetch::fetch(&url, None)?;
                        Ok(format!("sha256:{}", hex::encode(Sha256::digest(&data))))
                    })
                    .await
                    .map_err(|e| anyhow!("fetching {s}: {e}"))??
                }
            };
            urls.push((s, Some(checksum)));
        } else {
            sources.push(s);
        }
    }
    if !is_add && args.checksum.is_some() {
        bail!("COPY does not take --checksum");
    }
    let dest_word = args.dest.clone();
    let dest = absolute_in(&walk.workdir(), &dest_word);
    let chown = args.chown.clone();
    let chmod = args
        .chmod
        .as_ref()
        .map(|c| super::copy::parse_chmod(c))
        .transpose()?;
    let excludes = args.exclude.clone();
    let heredocs: Vec<(String, String)> = args
        .heredocs
        .iter()
        .map(|d| (d.name.clone(), d.content.clone()))
        .collect();
    let from = args.from.clone();
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
    // The key names a git source by its commit, not its URL; the history by its URL without
    // credentials.
    let key_text = format!(
        "{text} {} {}",
        all_sources
            .iter()
            .cloned()
            .chain(git.iter().map(|g| g.cache_key()))
            .collect::<Vec<_>>()
            .join(" "),
        dest_word
    );
    let shown_sources: Vec<String> = sources
        .iter()
        .cloned()
        .chain(urls.iter().map(|(u, _)| super::git::redact_urls(u)))
        .chain(git.iter().map(|g| g.url.display()))
        .collect();
    text.push_str(&format!(" {} {}", shown_sources.join(" "), dest_word));
    let mut parts: Vec<String> = vec![
        walk.key.clone(),
        "copy".into(),
        key_text,
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
            git.iter()
                .map(|g| g.cache_key())
                .chain(urls.iter().map(|(u, c)| {
                    let digest = c.as_deref().unwrap_or("");
                    format!("url:{digest} {}", super::git::redact_urls(u))
                }))
                .collect()
        },
        ..Default::default()
    };
    let op = Op::Copy(CopyOp {
        from: tree,
        sources,
        dest,
        chown,
        options,
        heredocs,
        urls,
        git,
    });
    Ok(Planned {
        op,
        key,
        inputs,
        created_by: format!("{text} # buildkit"),
    })
}

/// Resolves one `RUN --mount` (parsed and expanded by the front end, BuildKit's defaults filled
/// in) and the part of it that belongs in the cache key (never a secret's value).
async fn resolve_mount(
    shared: &Arc<Shared>,
    stage: usize,
    m: &Mount,
) -> Result<(RunMount, String)> {
    let target = m.target.clone();
    let uid = m.uid.unwrap_or(0);
    let gid = m.gid.unwrap_or(0);
    match m.kind {
        MountType::Bind => {
            let source = m.source.clone().unwrap_or_default();
            let rw = !m.read_only;
            let (from, key) = match &m.from {
                Some(f) => {
                    let (tree, key) = resolve_from(shared, stage, f).await?;
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
        MountType::Cache => {
            if m.from.is_some() {
                bail!("--mount=type=cache,from=... is not supported");
            }
            let id = m.id.clone().unwrap_or_else(|| target.clone());
            let sharing = match m.sharing {
                Sharing::Shared => "shared",
                Sharing::Private => "private",
                Sharing::Locked => "locked",
            }
            .to_string();
            let mode = m.mode.unwrap_or(0o755);
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
        MountType::Tmpfs => {
            let size = m.size;
            Ok((
                RunMount::Tmpfs {
                    target: target.clone(),
                    size,
                },
                format!("tmpfs:{target}:{size:?}"),
            ))
        }
        MountType::Secret => {
            let id =
                m.id.clone()
                    .ok_or_else(|| anyhow!("--mount=type=secret needs an id or a target"))?;
            let env = m.env.clone();
            // No target with `env=`: the secret is only an environment variable.
            let target = (!target.is_empty()).then_some(target);
            let mode = m.mode.unwrap_or(0o400);
            if m.required && !shared.secrets.contains_key(&id) {
                bail!("secret {id:?} is required but was not given (--secret id={id},src=PATH)");
            }
            // Only where the secret goes, never its value.
            let key_part = format!("secret:{id}:{target:?}:{env:?}:{mode}:{uid}:{gid}");
            Ok((
                RunMount::Secret {
                    id,
                    target,
                    env,
                    mode,
                    uid,
                    gid,
                },
                key_part,
            ))
        }
        MountType::Ssh => bail!("RUN --mount=type=ssh is not supported"),
    }
}

/// Looks the step up in the cache, executes it on a miss, and advances the walk.
#[allow(clippy::too_many_arguments)]
async fn run_step(
    shared: &Arc<Shared>,
    walk: &mut StageWalk,
    planned: Planned,
    instr: &Spanned,
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
    shared
        .progress
        .explain(id, &super::git::redact_urls(&instr.original), &reason);
    let _permit = shared
        .permits
        .acquire()
        .await
        .map_err(|_| anyhow!("build cancelled"))?;
    let started = Instant::now();
    let req = ExecRequest {
        step: id,
        line: instr.span.start_line,
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
