//! `kiln build` end to end: reads the context and the Dockerfile, solves the graph with the store
//! as the backend (base images, layers, the cache), executes steps on snapshots (RUN in the
//! sandbox, COPY/ADD/WORKDIR as file operations), commits the image and writes the outputs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context, Result};

pub mod cache;
mod epoch;
pub mod options;
mod ssh;

use crate::reference::Reference;
use crate::solver::cache::LayerRef;
use crate::solver::progress::Progress;
use crate::solver::{self, Backend, BaseImage, BuildRequest, ExecRequest};
use crate::source::local::{BuildContext, ContextSource};
use crate::store::Store;
use options::{BuildOptions, Output};

/// Runs a build; returns the process exit code.
pub fn build(root: &Path, opts: BuildOptions) -> Result<i32> {
    let store = Arc::new(Store::open(root)?);
    // Held until the end: no collection evicts a cache entry this build has found.
    let lease = store.build_lease()?;
    let progress = Arc::new(Progress::new(opts.progress, opts.explain));
    for out in &opts.outputs {
        if let Output::Image { names } = out {
            for n in names {
                Reference::parse(n).with_context(|| format!("-t {n}: invalid image name"))?;
            }
        }
    }

    let (mut context, dockerfile_text, dockerfile_name, dockerfile_path) =
        open_context(&store, &opts)?;
    let ignore = crate::dockerfile::DockerIgnore::load(context.root(), dockerfile_path.as_deref())
        .map_err(|e| anyhow!("reading .dockerignore: {e}"))?;
    let checks = crate::dockerfile::lint::for_build(
        &dockerfile_text,
        Some(&ignore),
        opts.build_args
            .get("BUILDKIT_DOCKERFILE_CHECK")
            .map(String::as_str),
    )
    .map_err(|e| anyhow!("{dockerfile_name}: {e}"))?;
    context.set_filter(Arc::new(crate::source::local::IgnoreFilter(ignore)));
    let platforms = if opts.platforms.is_empty() {
        vec![crate::platform::Platform::host()]
    } else {
        opts.platforms.clone()
    };
    let mut all_stages = Vec::new();
    for p in &platforms {
        all_stages.push(crate::dockerfile::load_for(
            &dockerfile_text,
            &dockerfile_name,
            &opts.build_args,
            p,
            opts.target.as_deref(),
        )?);
    }
    if opts.check_only {
        return report_checks_only(&checks, &dockerfile_name, &dockerfile_text);
    }
    if checks.error && !checks.findings.is_empty() {
        for f in &checks.findings {
            crate::errln!(
                "{}",
                crate::dockerfile::lint::long_form(f, &dockerfile_name, &dockerfile_text)
            );
        }
        let mut rules: Vec<&str> = checks.findings.iter().map(|f| f.rule).collect();
        rules.sort_unstable();
        rules.dedup();
        bail!(
            "{dockerfile_name}: lint violation found for rules: {} (the `# check=` options say error=true)",
            rules.join(", ")
        );
    }
    crate::exporter::check_outputs(&opts.outputs, &platforms)?;

    let source_date_epoch = match epoch::raw_value(&opts.build_args, &all_stages[0]) {
        None => None,
        Some(raw) => {
            let resolved = epoch::resolve(&raw, &all_stages[0], &store)?;
            if raw.trim().parse::<i64>().is_err() {
                // What RUN steps see is the number (or nothing), not `context` or a stage name.
                let mut build_args = opts.build_args.clone();
                build_args.insert(
                    "SOURCE_DATE_EPOCH".into(),
                    resolved.map(|n| n.to_string()).unwrap_or_default(),
                );
                all_stages = platforms
                    .iter()
                    .map(|p| {
                        crate::dockerfile::load_for(
                            &dockerfile_text,
                            &dockerfile_name,
                            &build_args,
                            p,
                            opts.target.as_deref(),
                        )
                    })
                    .collect::<Result<_>>()?;
            }
            resolved
        }
    };

    let place_id = format!(
        "{}\0{}",
        context.root().display(),
        dockerfile_path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or(dockerfile_name.clone())
    );
    let named_contexts = crate::source::named::NamedContexts::open(&opts.build_contexts, &store)?;
    // Kept until the build ends: agents kiln started for key files stop with it.
    let ssh_agents = ssh::SshAgents::start(&opts.ssh, &store.tmp_dir())?;
    let imports = cache::load_imports(&store, &opts.cache_from, &progress);
    // The solver adds the findings only it can make (InvalidBaseImagePlatform).
    let shared_checks = Arc::new(Mutex::new(checks));
    let request = |stages| BuildRequest {
        stages,
        dockerfile_name: dockerfile_name.clone(),
        place_id: place_id.clone(),
        target: opts.target.clone(),
        no_cache: opts.no_cache,
        no_cache_filter: opts.no_cache_filter.clone(),
        pull: opts.pull,
        network: opts.network,
        allow_insecure: opts.allow_insecure,
        checks: shared_checks.clone(),
        labels: opts.labels.clone(),
        secrets: opts.secrets.clone(),
        ssh: ssh_agents.sockets.clone(),
        source_date_epoch,
        max_parallelism: opts.max_parallelism,
        remote: imports
            .clone()
            .map(|i| i as Arc<dyn crate::solver::remotecache::RemoteCache>),
        record_steps: !opts.cache_to.is_empty(),
        named_contexts: named_contexts.clone(),
    };
    let db = Arc::new(Mutex::new(open_db(store.root())?));
    let precompress = cache::Precompress::for_exports(&opts.cache_to).map(Arc::new);
    let backend: Arc<dyn Backend> = Arc::new(StoreBackend {
        store: store.clone(),
        precompress: precompress.clone(),
        run_limits: opts.run_limits.clone(),
        run_settings: opts.run_settings.clone(),
        mounts: cache::MountRestorer {
            imports: imports.clone(),
            done: Mutex::new(Default::default()),
        },
    });
    let context = Arc::new(context);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(opts.max_parallelism.clamp(1, 8))
        .enable_all()
        .build()
        .context("starting the build runtime")?;
    let multi = platforms.len() > 1;
    // A cached layer that does not arrive intact drops its records: solve again without them.
    // Each round refuses at least one more blob of the finite set the caches list, so this ends.
    let mut refused_before = 0;
    let results = loop {
        // One graph per platform, solved at once; steps whose keys the graphs share run once.
        let flights = Arc::new(solver::Flights::default());
        let solved = runtime.block_on(async {
            let mut tasks = tokio::task::JoinSet::new();
            for (i, (stages, p)) in all_stages.iter().cloned().zip(&platforms).enumerate() {
                let fut = solver::solve_shared(
                    request(stages),
                    backend.clone(),
                    context.clone(),
                    progress.clone(),
                    db.clone(),
                    flights.clone(),
                    multi.then(|| p.to_string()),
                );
                tasks.spawn(async move { (i, fut.await) });
            }
            let mut results: Vec<Option<solver::StageResult>> =
                platforms.iter().map(|_| None).collect();
            while let Some(joined) = tasks.join_next().await {
                let (i, r) = joined.map_err(|e| anyhow!("a build task failed: {e}"))?;
                match r {
                    Ok(r) => results[i] = Some(r),
                    Err(e) => {
                        tasks.abort_all();
                        return Err(if multi {
                            e.context(format!("building for {}", platforms[i]))
                        } else {
                            e
                        });
                    }
                }
            }
            Ok::<_, anyhow::Error>(results.into_iter().flatten().collect::<Vec<_>>())
        });
        let solved = solved.and_then(|results| {
            // The image's layers go into the store with it; those a registry cache holds stay
            // there until something reads them (`Imports::assemble`).
            if let Some(i) = &imports {
                for r in &results {
                    i.assemble(&r.layers)?;
                }
            }
            Ok(results)
        });
        let refused_now = imports.as_ref().map_or(0, |i| i.refused_count());
        match solved {
            Err(e)
                if refused_now > refused_before
                    && e.chain()
                        .any(|c| c.is::<crate::solver::remotecache::Refused>()) =>
            {
                refused_before = refused_now;
                cache::warn(
                    &progress,
                    "solving the build again without the refused cache records",
                );
            }
            other => break other?,
        }
    };
    drop(runtime);

    let inline = opts
        .cache_to
        .contains(&crate::solver::remotecache::CacheTo::Inline);
    let mut images = Vec::new();
    let mut cache_info = crate::solver::BuildCacheInfo::default();
    for (result, p) in results.into_iter().zip(&platforms) {
        let mut config = result.config.clone();
        crate::solver::remotecache::inline::strip(&mut config);
        if inline {
            let mut records =
                cache::records_for(&result.cache, crate::solver::remotecache::CacheMode::Min);
            // The records name the blobs the push sends: a layer this build made is compressed
            // here (once; the push then finds the blob made).
            for r in &mut records {
                if let Some(l) = &r.layer {
                    let blob = crate::solver::remotecache::layer_blob_for_export(
                        &store,
                        &l.to_ref(),
                        None,
                        true,
                    )?;
                    r.layer = Some(crate::solver::remotecache::LayerDesc::from(&blob));
                }
            }
            crate::solver::remotecache::inline::embed(&mut config, &records)?;
        }
        for (k, v) in &opts.labels {
            config
                .config
                .labels
                .get_or_insert_with(BTreeMap::new)
                .insert(k.clone(), v.clone());
        }
        // One cache for every platform: the records of each (their keys differ by platform).
        cache_info.steps.extend(result.cache.steps.iter().cloned());
        for s in &result.cache.image_stages {
            if !cache_info.image_stages.contains(s) {
                cache_info.image_stages.push(*s);
            }
        }
        for m in &result.cache.cache_mounts {
            if !cache_info.cache_mounts.contains(m) {
                cache_info.cache_mounts.push(m.clone());
            }
        }
        images.push(crate::exporter::PlatformImage {
            platform: p.clone(),
            config,
            layers: result.layers,
        });
    }
    let image_id = if multi {
        crate::exporter::export_multi(&store, &progress, &opts.outputs, &images)?
    } else {
        let img = &images[0];
        crate::exporter::export(&store, &progress, &opts.outputs, &img.config, &img.layers)?
    };
    if let Some(path) = &opts.iidfile {
        std::fs::write(path, &image_id).with_context(|| format!("--iidfile {}", path.display()))?;
    }
    if let Some(p) = &precompress {
        p.wait();
    }
    for to in &opts.cache_to {
        if to == &crate::solver::remotecache::CacheTo::Inline {
            continue;
        }
        match cache::export(&store, to, &cache_info, imports.as_deref()) {
            Ok(stats) => progress.note(&format!("exported cache to {}: {stats}", to.describe())),
            Err(e) if to.ignore_error() => cache::warn(
                &progress,
                &format!("warning: --cache-to {}: {e:#} (ignore-error=true)", to.describe()),
            ),
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "--cache-to {}: exporting the cache failed; the image {image_id} is in the store (add ignore-error=true to build on)",
                        to.describe()
                    )
                })
            }
        }
    }
    progress.summary(Some(&image_id));
    collect_over_cap(&store, &progress);
    drop(lease);
    let checks = shared_checks
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    if !opts.quiet && !checks.findings.is_empty() {
        let n = checks.findings.len();
        crate::errln!(
            "{n} warning{} found (`kiln build --check` shows them in full):",
            if n == 1 { "" } else { "s" }
        );
        for f in &checks.findings {
            crate::errln!(" - {}", crate::dockerfile::lint::short_form(f));
        }
    }
    if opts.quiet {
        crate::outln!("{image_id}")?;
    }
    Ok(0)
}

/// `kiln build --check`: the findings in BuildKit's form; exit 1 when there are any.
fn report_checks_only(
    checks: &crate::dockerfile::lint::Report,
    file: &str,
    source: &str,
) -> Result<i32> {
    for f in &checks.findings {
        crate::errln!("{}", crate::dockerfile::lint::long_form(f, file, source));
    }
    match checks.findings.len() {
        0 => {
            crate::errln!("Check complete, no warnings found.");
            Ok(0)
        }
        n => {
            crate::errln!(
                "Check complete, {n} warning{} found!",
                if n == 1 { " has been" } else { "s have been" }
            );
            Ok(1)
        }
    }
}

/// The automatic build cache collector (`store::gc`), after the image is in the store: a
/// failure is a warning, never the build's.
fn collect_over_cap(store: &Store, progress: &Progress) {
    match store.enforce_cache_cap() {
        Ok(c) if !c.groups.is_empty() => progress.note(&format!(
            "build cache over its cap: removed {} least recently used entries, freed {}",
            c.groups.iter().map(|g| g.keys.len()).sum::<usize>(),
            crate::store::space::human(c.freed)
        )),
        Ok(_) => {}
        Err(e) => progress.note(&format!("warning: collecting the build cache: {e:#}")),
    }
}

/// A second connection to the store's database for the build cache (SQLite serialises writers
/// across connections; WAL lets readers proceed).
fn open_db(root: &Path) -> Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open(root.join("kiln.db"))
        .context("opening the build cache database")?;
    conn.busy_timeout(std::time::Duration::from_secs(60))?;
    conn.execute_batch("PRAGMA synchronous=NORMAL;")?;
    // As the store's connection: no checkpoint (three fsyncs) when it closes, which would
    // otherwise land at the end of every build.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
        true,
    )?;
    Ok(conn)
}

/// The context and the Dockerfile, as docker finds them: `-f` relative to the working directory,
/// else `Dockerfile` in the context; `-f -` or a Dockerfile piped as the context from stdin.
fn open_context(
    store: &Store,
    opts: &BuildOptions,
) -> Result<(BuildContext, String, String, Option<PathBuf>)> {
    let source = if opts.context == "-" {
        if opts.dockerfile.as_deref() == Some("-") {
            bail!("-f - and a context from stdin (-) cannot both read stdin");
        }
        ContextSource::Stdin
    } else {
        let path = PathBuf::from(&opts.context);
        match std::fs::metadata(&path) {
            Ok(m) if m.is_dir() => ContextSource::Dir(path),
            Ok(_) => ContextSource::Tarball(path),
            Err(e) => bail!(
                "build context {}: {e} (give a directory, a tarball or -)",
                path.display()
            ),
        }
    };
    let from_dir = matches!(source, ContextSource::Dir(_));
    let context = BuildContext::open(source, &store.tmp_dir())?;
    if let Some(text) = &context.stdin_dockerfile {
        let text = text.clone();
        return Ok((context, text, "Dockerfile".into(), None));
    }
    match opts.dockerfile.as_deref() {
        Some("-") => {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                .context("reading the Dockerfile from stdin")?;
            Ok((context, text, "Dockerfile".into(), None))
        }
        Some(f) if from_dir => {
            let path = PathBuf::from(f);
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading Dockerfile {}", path.display()))?;
            let abs = std::fs::canonicalize(&path).unwrap_or(path.clone());
            Ok((context, text, f.to_string(), Some(abs)))
        }
        other => {
            // In a tar context the Dockerfile is a path inside it.
            let name = other.unwrap_or("Dockerfile");
            let rel = crate::source::fsutil::clean_rel(name);
            let data = context.read_file(&rel)?.ok_or_else(|| {
                anyhow!(
                    "{name}: no such Dockerfile in the build context {}",
                    opts.context
                )
            })?;
            let text = String::from_utf8(data).map_err(|_| anyhow!("{name}: not UTF-8 text"))?;
            let path = context.root().join(&rel);
            Ok((context, text, name.to_string(), Some(path)))
        }
    }
}

/// The store as the solver's backend.
struct StoreBackend {
    store: Arc<Store>,
    /// cgroup limits of every RUN step.
    run_limits: crate::sandbox::Resources,
    /// `--add-host`, `--shm-size`, `--ulimit` of every RUN step.
    run_settings: crate::ops::RunSettings,
    /// Cache mounts of `--cache-from` caches, restored before the first RUN that mounts them.
    mounts: cache::MountRestorer,
    /// Layers compressed as their steps finish, for a `mode=max` cache export.
    precompress: Option<Arc<cache::Precompress>>,
}

impl Backend for StoreBackend {
    fn base_image(
        &self,
        name: &str,
        pull: bool,
        platform: &crate::platform::Platform,
    ) -> Result<BaseImage> {
        crate::source::image::resolve(&self.store, name, pull, platform)
    }

    fn has_layer(&self, layer: &LayerRef) -> bool {
        // A remote blob (an image assembled from a registry cache) is fetched when a step reads it.
        self.store.has_layer_content(&layer.digest).unwrap_or(false)
            || self
                .store
                .remote_blob(&layer.digest)
                .ok()
                .flatten()
                .is_some()
    }

    fn execute(&self, req: ExecRequest) -> Result<Option<LayerRef>> {
        if let crate::solver::Op::Run(run) = &req.op {
            self.mounts.restore(&self.store, &run.mounts)?;
        }
        let in_image = req.in_image;
        let layer = crate::ops::execute(&self.store, req, &self.run_limits, &self.run_settings)?;
        if let (Some(p), Some(l)) = (&self.precompress, &layer) {
            p.start(&self.store, l, in_image);
        }
        Ok(layer)
    }

    fn parse_trigger(&self, trigger: &str) -> Result<crate::dockerfile::Spanned> {
        crate::dockerfile::parse_trigger(trigger)
    }
}
