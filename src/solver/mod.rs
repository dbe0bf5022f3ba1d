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

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};

mod backend;
pub mod cache;
pub mod chmod;
pub mod graph;
mod plan;
pub mod progress;
pub mod remotecache;
#[cfg(test)]
mod tests;

pub use crate::source::image::BaseImage;
pub use backend::{
    http_authorization, Backend, CopyOp, CopyOptions, ExecRequest, Network, Op, PreviousCopy,
    RunMount, RunOp, SecretSource, SourceTree,
};

use crate::dockerfile::{Instruction, Spanned, Stages};
use crate::oci::config::ImageConfigFile;
use crate::platform::Platform;
use crate::source::local::contenthash::FileDigestCache;
use crate::source::local::BuildContext;
use cache::LayerRef;
use graph::{build_graph, stage_labels, BaseRef, Graph};
use plan::{plan_step, Planned, StageWalk};
use progress::{Progress, StepId};

pub struct BuildRequest {
    /// The Dockerfile split into stages, with the `--build-arg`s and platform it is built with
    /// (`frontend::load`).
    pub stages: Stages,
    /// The Dockerfile as the user named it (`-f sub/Dockerfile`), for errors: `sub/Dockerfile:3`.
    pub dockerfile_name: String,
    /// Identifies this Dockerfile and context for explaining misses across builds.
    pub place_id: String,
    pub target: Option<String>,
    pub no_cache: bool,
    pub no_cache_filter: Vec<String>,
    pub pull: bool,
    pub network: Network,
    /// `kiln build --allow security.insecure`: `RUN --security=insecure` runs privileged
    /// (refused without it, with BuildKit's error).
    pub allow_insecure: bool,
    /// The build's checks: the solver adds what only it can find (InvalidBaseImagePlatform),
    /// as the check options allow; the engine prints them after the build.
    pub checks: Arc<Mutex<crate::dockerfile::lint::Report>>,
    pub labels: BTreeMap<String, String>,
    pub secrets: HashMap<String, SecretSource>,
    /// `--ssh ID=…`: each id's agent socket on the host (never part of a key).
    pub ssh: HashMap<String, std::path::PathBuf>,
    pub source_date_epoch: Option<i64>,
    pub max_parallelism: usize,
    /// The caches of `--cache-from`, asked when the local cache misses.
    pub remote: Option<Arc<dyn remotecache::RemoteCache>>,
    /// Whether a cache export (`--cache-to`, inline too) will want each step's record: without
    /// one the solver keeps none (a COPY's record holds the whole context's file list).
    pub record_steps: bool,
    /// `--build-context NAME=…`: what replaces stages, bases and `--from` images of those names.
    pub named_contexts: crate::source::named::NamedContexts,
}

/// A step as a cache export records it.
#[derive(Debug, Clone)]
pub struct StepRecord {
    pub stage: usize,
    pub record: remotecache::CacheRecord,
}

/// What a cache export needs of a build: each step's record, and which stages the target's
/// image is made of (its FROM chain: `mode=min` exports only theirs).
#[derive(Debug, Clone, Default)]
pub struct BuildCacheInfo {
    pub steps: Vec<StepRecord>,
    pub image_stages: Vec<usize>,
    /// The `RUN --mount=type=cache` mounts of the build: (id, uid, gid, mode).
    pub cache_mounts: Vec<(String, u32, u32, u32)>,
}

/// A solved stage: its config (with history and diff_ids) and layers.
#[derive(Debug, Clone)]
pub struct StageResult {
    pub config: ImageConfigFile,
    pub layers: Vec<LayerRef>,
    pub key: String,
    /// Seconds since the epoch of the newest step (for the config's `created`).
    pub created: i64,
    /// Filled for the target only: what a cache export records.
    pub cache: BuildCacheInfo,
    /// The variables at the stage's end: a stage built on it inherits its ARGs.
    pub vars: crate::dockerfile::Vars,
}

type Outcome = Option<Result<Arc<StageResult>, String>>;

/// Steps shared by the graphs of one multi-platform build: a step whose cache key two graphs
/// reach (a `FROM --platform=$BUILDPLATFORM` builder, what only depends on it) runs once; the
/// other graph waits for it and takes its result.
#[derive(Default)]
pub struct Flights {
    slots: Mutex<HashMap<String, FlightSlot>>,
}

/// One step's result once a graph has it (`Some(None)`: the step made no layer).
type FlightSlot = Arc<tokio::sync::Mutex<Option<Option<LayerRef>>>>;

impl Flights {
    fn slot(&self, key: &str) -> FlightSlot {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.entry(key.to_string()).or_default().clone()
    }
}

struct Shared {
    stages: Stages,
    /// Each stage's platform: its `FROM --platform`, else its base stage's, else the target's.
    stage_platforms: Vec<Platform>,
    flights: Arc<Flights>,
    graph: Graph,
    labels: Vec<String>,
    req: BuildRequestShared,
    backend: Arc<dyn Backend>,
    context: Arc<BuildContext>,
    progress: Arc<Progress>,
    db: Arc<Mutex<rusqlite::Connection>>,
    file_cache: FileDigestCache,
    secrets: Arc<HashMap<String, SecretSource>>,
    ssh: Arc<HashMap<String, std::path::PathBuf>>,
    permits: tokio::sync::Semaphore,
    outcomes: Vec<tokio::sync::watch::Sender<Outcome>>,
    started: i64,
    remote: Option<Arc<dyn remotecache::RemoteCache>>,
    named: crate::source::named::NamedContexts,
    steps: Mutex<Vec<StepRecord>>,
    cache_mounts: Mutex<std::collections::BTreeSet<(String, u32, u32, u32)>>,
}

struct BuildRequestShared {
    dockerfile_name: String,
    place_id: String,
    no_cache: bool,
    no_cache_filter: Vec<String>,
    pull: bool,
    network: Network,
    allow_insecure: bool,
    checks: Arc<Mutex<crate::dockerfile::lint::Report>>,
    source_date_epoch: Option<i64>,
    record_steps: bool,
}

/// Solves the build: returns the target stage's result.
pub async fn solve(
    request: BuildRequest,
    backend: Arc<dyn Backend>,
    context: Arc<BuildContext>,
    progress: Arc<Progress>,
    db: Arc<Mutex<rusqlite::Connection>>,
) -> Result<StageResult> {
    solve_shared(
        request,
        backend,
        context,
        progress,
        db,
        Arc::new(Flights::default()),
        None,
    )
    .await
}

/// Each stage's platform (see `Shared::stage_platforms`).
fn stage_platforms(stages: &Stages) -> Result<Vec<Platform>> {
    let target = Platform::parse(&stages.context.target_platform.to_string())?;
    let mut out: Vec<Platform> = Vec::with_capacity(stages.stages.len());
    for s in &stages.stages {
        let p = match (&s.platform, s.base_stage) {
            (Some(p), _) if !p.is_empty() => Platform::parse(p)
                .with_context(|| format!("FROM --platform={p} of stage {}", s.index))?,
            // FROM <stage> takes that stage's platform (BuildKit ignores --platform there).
            (_, Some(j)) if j < out.len() => out[j].clone(),
            _ => target.clone(),
        };
        out.push(p);
    }
    Ok(out)
}

/// [`solve`] as one graph of a multi-platform build: `flights` is shared by the graphs, and
/// `label` (the platform) prefixes the stage names in progress lines.
pub async fn solve_shared(
    request: BuildRequest,
    backend: Arc<dyn Backend>,
    context: Arc<BuildContext>,
    progress: Arc<Progress>,
    db: Arc<Mutex<rusqlite::Connection>>,
    flights: Arc<Flights>,
    label: Option<String>,
) -> Result<StageResult> {
    let mut request = request;
    graph::apply_named_contexts(&mut request.stages, &request.named_contexts)?;
    let graph = build_graph(&request.stages, request.target.as_deref())?;
    let stage_platforms = stage_platforms(&request.stages)?;
    let file_cache = {
        let conn = db.lock().map_err(|_| anyhow!("database lock poisoned"))?;
        cache::init(&conn)?;
        FileDigestCache::load(&conn, context.root())?
    };
    let mut labels = stage_labels(&request.stages.stages);
    if let Some(prefix) = &label {
        for l in labels.iter_mut() {
            *l = format!("{prefix} {l}");
        }
    }
    let n = request.stages.stages.len();
    let outcomes = (0..n)
        .map(|_| tokio::sync::watch::channel(None).0)
        .collect();
    let started = request
        .source_date_epoch
        .unwrap_or_else(|| chrono::Utc::now().timestamp());
    let shared = Arc::new(Shared {
        stage_platforms,
        flights,
        labels,
        req: BuildRequestShared {
            dockerfile_name: request.dockerfile_name,
            place_id: request.place_id,
            no_cache: request.no_cache,
            no_cache_filter: request
                .no_cache_filter
                .iter()
                .map(|s| s.to_ascii_lowercase())
                .collect(),
            pull: request.pull,
            network: request.network,
            allow_insecure: request.allow_insecure,
            checks: request.checks.clone(),
            source_date_epoch: request.source_date_epoch,
            record_steps: request.record_steps,
        },
        graph,
        stages: request.stages,
        backend,
        context,
        progress,
        db: db.clone(),
        file_cache,
        secrets: Arc::new(request.secrets),
        ssh: Arc::new(request.ssh),
        permits: tokio::sync::Semaphore::new(request.max_parallelism.max(1)),
        outcomes,
        started,
        remote: request.remote,
        named: request.named_contexts,
        steps: Mutex::new(Vec::new()),
        cache_mounts: Mutex::new(Default::default()),
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
        let (stage, result) = match joined {
            Ok(done) => done,
            // Aborted after another stage failed: that failure is the error to report.
            Err(e) if e.is_cancelled() && first_error.is_some() => continue,
            Err(e) => return Err(anyhow!("a build task failed: {e}")),
        };
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
    let mut result = Arc::try_unwrap(result).unwrap_or_else(|a| (*a).clone());
    let image_stages = image_stages(&shared.graph);
    result.cache = BuildCacheInfo {
        steps: shared
            .steps
            .lock()
            .map_err(|_| anyhow!("cache records lock poisoned"))?
            .clone(),
        image_stages,
        cache_mounts: shared
            .cache_mounts
            .lock()
            .map_err(|_| anyhow!("cache mounts lock poisoned"))?
            .iter()
            .cloned()
            .collect(),
    };
    Ok(result)
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
    // Only the stages the graph found are built: waiting for another would never end (an
    // ONBUILD trigger of a base image naming a stage the graph could not see).
    if !shared.graph.order.contains(&stage) {
        bail!(
            "stage {:?} is needed by a step the build graph did not see (an ONBUILD trigger of a base image?): it is not built in this build",
            shared.labels[stage]
        );
    }
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

pub fn format_time(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// How much of an instruction progress lines and errors quote.
const QUOTE_LIMIT: usize = 200;

/// An instruction as progress and errors quote it: whole up to `QUOTE_LIMIT` characters, else its
/// start and how much was left out (a 10 MB RUN line is quoted in one short line, not ten
/// megabytes per mention). History keeps the whole text.
pub(crate) fn shorten(text: &str) -> String {
    match text.char_indices().nth(QUOTE_LIMIT) {
        None => text.to_string(),
        Some((cut, _)) => format!(
            "{}… ({} more characters)",
            &text[..cut],
            text[cut..].chars().count()
        ),
    }
}

fn with_line<T>(result: Result<T>, dockerfile: &str, instr: &Spanned) -> Result<T> {
    result.with_context(|| {
        format!(
            "{dockerfile}:{}: {}",
            instr.span.start_line,
            shorten(&crate::source::git::redact_urls(&instr.original))
        )
    })
}

/// The ONBUILD triggers of a stage's base (an image or an earlier stage), parsed, to run first.
fn onbuild_triggers(
    shared: &Arc<Shared>,
    base: &ImageConfigFile,
    from_line: usize,
    base_name: &str,
) -> Result<Vec<Spanned>> {
    let mut out = Vec::new();
    for t in base.config.on_build.as_deref().unwrap_or_default() {
        let mut instr = shared.backend.parse_trigger(t).with_context(|| {
            format!(
                "{}:{from_line}: ONBUILD trigger {t:?} of {base_name}",
                shared.req.dockerfile_name
            )
        })?;
        // A trigger runs as part of the FROM line.
        instr.span.start_line = from_line;
        out.push(instr);
    }
    Ok(out)
}

/// The stages whose layers the image has: the target and the stages it is `FROM`, in turn.
fn image_stages(graph: &Graph) -> Vec<usize> {
    let mut stages = vec![graph.target];
    while let BaseRef::Stage(j) = &graph.bases[*stages.last().unwrap_or(&0)] {
        if stages.contains(j) {
            break;
        }
        stages.push(*j);
    }
    stages
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
            let platform = &shared.stage_platforms[stage];
            let mut config = ImageConfigFile::scratch().for_new_stage();
            config.architecture = platform.architecture.clone();
            config.os = platform.os.clone();
            config.variant = platform.variant.clone();
            let walk = StageWalk::start(
                shared,
                config,
                Vec::new(),
                digest_of(&["scratch", &platform.to_string()]),
                shared.started,
            );
            (walk, Vec::new())
        }
        BaseRef::Stage(j) => {
            let base = wait_stage(shared, *j).await?;
            // A stage built on another stage runs that stage's ONBUILD triggers, as on an
            // image (BuildKit); the new stage's config no longer has them.
            let label = shared.labels[*j].clone();
            let triggers = onbuild_triggers(shared, &base.config, from_line, &label)?;
            let mut walk = StageWalk::start(
                shared,
                base.config.clone().for_new_stage(),
                base.layers.clone(),
                base.key.clone(),
                base.created,
            );
            walk.vars.inherit_args(&base.vars);
            (walk, triggers)
        }
        BaseRef::Image(name) => {
            let id = shared.progress.start(&from_name);
            let backend = shared.backend.clone();
            let (name_owned, pull) = (name.clone(), shared.req.pull);
            let platform = shared.stage_platforms[stage].clone();
            let base = tokio::task::spawn_blocking(move || {
                backend.base_image(&name_owned, pull, &platform)
            })
            .await
            .map_err(|e| anyhow!("resolving the base image: {e}"))?;
            let base = match base {
                Ok(b) => {
                    shared.progress.done(id);
                    b
                }
                Err(e) => {
                    shared.progress.failed(id, &format!("{e:#}"));
                    return Err(e).with_context(|| {
                        format!("{}:{from_line}: FROM {name}", shared.req.dockerfile_name)
                    });
                }
            };
            if let Some(actual) = &base.platform_mismatch {
                // BuildKit builds on it (for the stage's platform) and warns.
                let expected = shared.stage_platforms[stage].to_string();
                let finding = crate::dockerfile::lint::Finding {
                    rule: "InvalidBaseImagePlatform",
                    line: from_line,
                    message: crate::dockerfile::lint::invalid_base_image_platform(
                        name, &expected, actual,
                    ),
                };
                let mut checks = shared.req.checks.lock().unwrap_or_else(|e| e.into_inner());
                if checks.add(finding.clone()) && checks.error {
                    bail!(
                        "{}:{from_line}: FROM {name}: lint violation found for rules: \
                         InvalidBaseImagePlatform ({}; the `# check=` options say error=true)",
                        shared.req.dockerfile_name,
                        finding.message
                    );
                }
            }
            let trigger_instrs = onbuild_triggers(shared, &base.config, from_line, name)?;
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
            shorten(&crate::source::git::redact_urls(&instr.original))
        );
        let place = digest_of(&[
            &shared.req.place_id,
            &stage.to_string(),
            &index.to_string(),
            &instr.original,
        ]);
        let step = with_line(
            plan_step(shared, stage, &mut walk, instr).await,
            &shared.req.dockerfile_name,
            instr,
        )?;
        let Some(planned) = step else { continue };
        // The step's place without the machine's paths, for explanations on other runners.
        let remote_place = digest_of(&[
            &shared.req.dockerfile_name,
            label,
            &index.to_string(),
            &crate::source::git::redact_urls(&instr.original),
        ]);
        let id = shared.progress.start(&name);
        let result = run_step(
            shared,
            &mut walk,
            planned,
            instr,
            &name,
            (&place, &remote_place, stage),
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
        cache: BuildCacheInfo::default(),
        vars: walk.vars,
    }))
}

/// A filesystem step ready to run: its op, key and the inputs recorded for explanations.
/// Looks the step up in the cache, executes it on a miss, and advances the walk.
#[allow(clippy::too_many_arguments)]
async fn run_step(
    shared: &Arc<Shared>,
    walk: &mut StageWalk,
    planned: Planned,
    instr: &Spanned,
    name: &str,
    (place, remote_place, stage): (&str, &str, usize),
    id: StepId,
    no_cache: bool,
    first_fs_step: bool,
) -> Result<()> {
    let Planned {
        op,
        key,
        mut inputs,
        created_by,
    } = planned;
    // A linked COPY's key names its layer alone; the steps after it stand on the base too.
    let linked = matches!(&op, Op::Copy(c) if c.link);
    let next_key = if linked {
        digest_of(&["linked", &walk.key, &key])
    } else {
        key.clone()
    };
    // Another graph of this build may be running (or have run) this very step.
    let slot = shared.flights.slot(&key);
    let mut flight = slot.lock().await;
    if let Some(layer) = flight.clone() {
        let created = shared
            .req
            .source_date_epoch
            .or_else(|| cached_time(shared, &key))
            .unwrap_or(walk.created);
        walk.add_step(next_key, created_by, layer, created);
        shared.progress.cached(id);
        return Ok(());
    }
    let parent_chain: Vec<String> = walk.layers.iter().map(|l| l.diff_id.clone()).collect();
    if let Op::Run(run) = &op {
        for m in &run.mounts {
            if let RunMount::Cache {
                id, uid, gid, mode, ..
            } = m
            {
                if let Ok(mut set) = shared.cache_mounts.lock() {
                    set.insert((id.clone(), *uid, *gid, *mode));
                }
            }
        }
    }
    // What a remote record keeps of the inputs, taken now: `inputs.layer` is set after the step.
    let redacted_inputs = shared
        .req
        .record_steps
        .then(|| remotecache::redact_inputs(&inputs));
    let note = |key: &str, layer: Option<&LayerRef>, created: i64| {
        let Some(redacted_inputs) = &redacted_inputs else {
            return;
        };
        let mut chain = parent_chain.clone();
        chain.extend(layer.map(|l| l.diff_id.clone()));
        if let Ok(mut steps) = shared.steps.lock() {
            steps.push(StepRecord {
                stage,
                record: remotecache::CacheRecord {
                    key: key.to_string(),
                    layer: layer.map(remotecache::LayerDesc::from),
                    chain,
                    created,
                    place: remote_place.to_string(),
                    inputs: redacted_inputs.clone(),
                    files_blob: None,
                },
            });
        }
    };
    if !no_cache {
        let hit = {
            let conn = shared
                .db
                .lock()
                .map_err(|_| anyhow!("database lock poisoned"))?;
            // Before the lookup, so the collector keeps what this build finds (`store::gc`).
            crate::store::gc::touch_cache_key(&conn, &key)?;
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
                note(&key, layer.as_ref(), created);
                *flight = Some(layer.clone());
                walk.add_step(next_key, created_by, layer, created);
                shared.progress.cached(id);
                return Ok(());
            }
        }
        // Not here: a cache of --cache-from may have it (its blob comes only when needed).
        if let Some(record) = shared
            .remote
            .as_ref()
            .and_then(|r| r.lookup(&key, &parent_chain))
        {
            let layer = record.layer.as_ref().map(remotecache::LayerDesc::to_ref);
            {
                let conn = shared
                    .db
                    .lock()
                    .map_err(|_| anyhow!("database lock poisoned"))?;
                cache::record(&conn, &key, layer.as_ref(), record.created)?;
                cache::save_inputs(&conn, place, &inputs)?;
            }
            let created = shared.req.source_date_epoch.unwrap_or(record.created);
            note(&key, layer.as_ref(), record.created);
            // Another platform's graph with this step takes it from here too.
            *flight = Some(layer.clone());
            walk.add_step(next_key, created_by, layer, created);
            shared.progress.cached(id);
            return Ok(());
        }
    }
    // A miss: say why, then run.
    let mut previous = None;
    let reason = if no_cache {
        "--no-cache".to_string()
    } else {
        let conn = shared
            .db
            .lock()
            .map_err(|_| anyhow!("database lock poisoned"))?;
        let old = cache::load_inputs(&conn, place)?;
        previous = old
            .as_ref()
            .and_then(|old| cache::previous_copy(old, &inputs))
            .filter(|p| shared.backend.has_layer(&p.layer));
        // Explaining against a cache may fetch its list of files: not under the database lock.
        drop(conn);
        let remote = match (&old, &shared.remote) {
            (None, Some(r)) => r.explain(remote_place, &inputs, first_fs_step),
            _ => None,
        };
        match remote {
            Some(why) => format!("not in the local cache; {why}"),
            None => cache::explain_miss(old.as_ref(), &inputs, first_fs_step),
        }
    };
    shared.progress.explain(
        id,
        &shorten(&crate::source::git::redact_urls(&instr.original)),
        &reason,
    );
    let _permit = shared
        .permits
        .acquire()
        .await
        .map_err(|_| anyhow!("build cancelled"))?;
    // The filesystems the step reads: blobs that a cache hit named come now.
    if let Some(remote) = shared.remote.clone() {
        let mut needed = walk.layers.clone();
        match &op {
            Op::Copy(c) => {
                if let SourceTree::Layers(l) = &c.from {
                    needed.extend(l.iter().cloned());
                }
            }
            Op::Run(r) => {
                for m in &r.mounts {
                    if let RunMount::Bind {
                        from: Some(SourceTree::Layers(l)),
                        ..
                    } = m
                    {
                        needed.extend(l.iter().cloned());
                    }
                }
            }
            Op::Mkdir { .. } => {}
        }
        tokio::task::spawn_blocking(move || remote.materialize(&needed))
            .await
            .map_err(|e| anyhow!("fetching cached layers: {e}"))??;
    }
    let req = ExecRequest {
        step: id,
        line: instr.span.start_line,
        name: name.to_string(),
        parent: if linked {
            Vec::new()
        } else {
            walk.layers.clone()
        },
        op,
        context: shared.context.clone(),
        progress: shared.progress.clone(),
        secrets: shared.secrets.clone(),
        ssh: shared.ssh.clone(),
        source_date_epoch: shared.req.source_date_epoch,
        previous,
        in_image: image_stages(&shared.graph).contains(&stage),
    };
    let backend = shared.backend.clone();
    let result = tokio::task::spawn_blocking(move || backend.execute(req))
        .await
        .map_err(|e| anyhow!("executing a step: {e}"))?;
    let layer = with_line(result, &shared.req.dockerfile_name, instr)?;
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
        inputs.layer = layer.clone();
        cache::save_inputs(&conn, place, &inputs)?;
    }
    note(&key, layer.as_ref(), created);
    *flight = Some(layer.clone());
    walk.add_step(next_key, created_by, layer, created);
    shared.progress.done(id);
    Ok(())
}

fn cached_time(shared: &Shared, key: &str) -> Option<i64> {
    let conn = shared.db.lock().ok()?;
    cache::created_of(&conn, key).ok().flatten()
}
