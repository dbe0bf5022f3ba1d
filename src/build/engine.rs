//! `kiln build` end to end: reads the context and the Dockerfile, solves the graph with the store
//! as the backend (base images, layers, the cache), executes steps on snapshots (RUN in the
//! sandbox, COPY/ADD/WORKDIR as file operations), commits the image and writes the outputs.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context, Result};

use super::cache::LayerRef;
use super::context::{BuildContext, ContextSource};
use super::imageconfig::ImageConfigFile;
use super::options::{BuildOptions, Output, OutputCompression};
use super::progress::Progress;
use super::solver::{self, Backend, BaseImage, BuildRequest, ExecRequest, StageResult};
use crate::reference::Reference;
use crate::store::Store;

/// Runs a build; returns the process exit code.
pub fn build(root: &Path, opts: BuildOptions) -> Result<i32> {
    let store = Arc::new(Store::open(root)?);
    // What a killed kiln left: overlay mounts, snapshot dirs, cgroups (live ones are left alone).
    crate::snapshot::recover(store.root()).context("cleaning up after an earlier kiln")?;
    crate::sandbox::recover();
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
    context.set_filter(Arc::new(super::frontend::IgnoreFilter(ignore)));
    let stages = super::frontend::load(&dockerfile_text, &dockerfile_name, &opts.build_args)?;

    let source_date_epoch = opts
        .build_args
        .get("SOURCE_DATE_EPOCH")
        .cloned()
        .or_else(|| std::env::var("SOURCE_DATE_EPOCH").ok())
        .map(|v| {
            v.trim()
                .parse::<i64>()
                .map_err(|_| anyhow!("SOURCE_DATE_EPOCH={v}: expected seconds since the epoch"))
        })
        .transpose()?;

    let place_id = format!(
        "{}\0{}",
        context.root().display(),
        dockerfile_path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or(dockerfile_name.clone())
    );
    let request = BuildRequest {
        stages,
        place_id,
        target: opts.target.clone(),
        no_cache: opts.no_cache,
        no_cache_filter: opts.no_cache_filter.clone(),
        pull: opts.pull,
        network: opts.network,
        labels: opts.labels.clone(),
        secrets: opts.secrets.clone(),
        source_date_epoch,
        max_parallelism: opts.max_parallelism,
    };
    let db = Arc::new(Mutex::new(open_db(store.root())?));
    let backend: Arc<dyn Backend> = Arc::new(StoreBackend {
        store: store.clone(),
    });
    let context = Arc::new(context);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(opts.max_parallelism.clamp(1, 8))
        .enable_all()
        .build()
        .context("starting the build runtime")?;
    let result = runtime.block_on(solver::solve(
        request,
        backend,
        context,
        progress.clone(),
        db,
    ))?;
    drop(runtime);

    let mut config = result.config.clone();
    for (k, v) in &opts.labels {
        config
            .config
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(k.clone(), v.clone());
    }
    let image_id = export(&store, &progress, &opts, &config, &result)?;
    if let Some(path) = &opts.iidfile {
        std::fs::write(path, &image_id).with_context(|| format!("--iidfile {}", path.display()))?;
    }
    progress.summary(Some(&image_id));
    if opts.quiet {
        println!("{image_id}");
    }
    Ok(0)
}

/// A second connection to the store's database for the build cache (SQLite serialises writers
/// across connections; WAL lets readers proceed).
fn open_db(root: &Path) -> Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open(root.join("kiln.db"))
        .context("opening the build cache database")?;
    conn.busy_timeout(std::time::Duration::from_secs(60))?;
    conn.execute_batch("PRAGMA synchronous=NORMAL;")?;
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
            let rel = super::fsutil::clean_rel(name);
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
}

impl StoreBackend {
    /// A FROM (or `--from`) image: the local image when there is one (docker's default), else a
    /// pull; `--pull` always asks the registry. Local-only names (an image ID, a name that is not
    /// a registry reference) are looked up in the store alone.
    fn resolve_base(&self, name: &str, pull: bool) -> Result<String> {
        if !pull {
            if let Ok(record) = self.store.resolve(name) {
                return Ok(record.manifest_digest);
            }
        }
        let Ok(r) = crate::registry::RepoRef::parse(name) else {
            bail!("base image {name} is not in kiln's store (kiln pull, load or import it)");
        };
        let mut ctx = crate::registry::RegistryContext::load(self.store.root().to_path_buf())?;
        ctx.quiet = true;
        let platform = crate::registry::Platform::parse(&format!(
            "linux/{}",
            super::imageconfig::host_architecture()
        ))?;
        let policy = if pull {
            crate::registry::PullPolicy::Always
        } else {
            crate::registry::PullPolicy::Missing
        };
        let record =
            crate::registry::ensure_image(&ctx, self.store.as_ref(), &r, policy, &platform)
                .with_context(|| {
                    format!("base image {name}: not in kiln's store, and pulling it failed")
                })?;
        Ok(record.manifest_digest)
    }
}

impl Backend for StoreBackend {
    fn base_image(&self, name: &str, pull: bool) -> Result<BaseImage> {
        let manifest_digest = self.resolve_base(name, pull)?;
        let record = self.store.resolve(&manifest_digest)?;
        let manifest = self.store.manifest(&record.manifest_digest)?;
        let config_bytes = self.store.read_blob(&record.config_digest)?;
        let config = ImageConfigFile::from_json(&config_bytes)
            .with_context(|| format!("reading the config of {name}"))?;
        if config.rootfs.diff_ids.len() != manifest.layers().len() {
            bail!("image {name}: config and manifest disagree on the number of layers");
        }
        let layers = manifest
            .layers()
            .iter()
            .zip(&config.rootfs.diff_ids)
            .map(|(d, diff_id)| LayerRef {
                digest: d.digest().to_string(),
                diff_id: diff_id.clone(),
                size: d.size(),
                media_type: d.media_type().to_string(),
            })
            .collect();
        Ok(BaseImage {
            id: record.manifest_digest,
            config,
            layers,
        })
    }

    fn has_layer(&self, layer: &LayerRef) -> bool {
        self.store.has_blob(&layer.digest)
    }

    fn execute(&self, req: ExecRequest) -> Result<Option<LayerRef>> {
        super::exec::execute(&self.store, req)
    }

    fn parse_trigger(&self, trigger: &str) -> Result<crate::dockerfile::Spanned> {
        super::frontend::parse_trigger(trigger)
    }
}

fn descriptor(layer: &LayerRef) -> Result<oci_spec::image::Descriptor> {
    let media_type: oci_spec::image::MediaType = layer.media_type.as_str().into();
    Ok(oci_spec::image::Descriptor::new(
        media_type,
        layer.size,
        layer
            .digest
            .parse::<oci_spec::image::Digest>()
            .map_err(|e| anyhow!("layer digest {}: {e}", layer.digest))?,
    ))
}

/// Writes the config and manifest, names the image, and writes the other outputs. Returns the
/// image ID (the config digest, as docker prints it).
fn export(
    store: &Store,
    progress: &Progress,
    opts: &BuildOptions,
    config: &ImageConfigFile,
    result: &StageResult,
) -> Result<String> {
    let config_bytes = config.to_json();
    // A no-op rebuild produces the same config: skip rewriting (and fsyncing) it.
    let config_digest = crate::store::sha256_digest(&config_bytes);
    let config_blob = store.put_blob(&config_bytes[..], Some(&config_digest))?;
    let layers: Vec<oci_spec::image::Descriptor> = result
        .layers
        .iter()
        .map(descriptor)
        .collect::<Result<_>>()?;
    let manifest = oci_spec::image::ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(oci_spec::image::MediaType::ImageManifest)
        .config(oci_spec::image::Descriptor::new(
            oci_spec::image::MediaType::ImageConfig,
            config_blob.size,
            config_blob
                .digest
                .parse::<oci_spec::image::Digest>()
                .map_err(|e| anyhow!("config digest: {e}"))?,
        ))
        .layers(layers)
        .build()
        .context("building the image manifest")?;
    let manifest_bytes = serde_json::to_vec(&manifest)?;
    let mut names = Vec::new();
    for out in &opts.outputs {
        if let Output::Image { names: n } = out {
            for name in n {
                names.push(Reference::parse(name)?);
            }
        }
    }
    let manifest_digest = store.add_manifest_with_names(&manifest_bytes, &names)?;
    for n in &names {
        progress.note(&format!("naming to {}", n.full()));
    }
    let image_id = config_blob.digest.clone();
    for out in &opts.outputs {
        match out {
            Output::Image { .. } => {}
            Output::Local { dest } => {
                progress.note(&format!("exporting the filesystem to {}", dest.display()));
                std::fs::create_dir_all(dest)
                    .with_context(|| format!("creating {}", dest.display()))?;
                flatten_into(store, &result.layers, dest)?;
            }
            Output::Tar { dest } => {
                progress.note(&format!(
                    "exporting the filesystem as a tarball to {}",
                    dest.display()
                ));
                let tmp = tempfile::Builder::new()
                    .prefix("export.")
                    .tempdir_in(store.tmp_dir())?;
                flatten_into(store, &result.layers, tmp.path())?;
                let opts = crate::oci::layer::WriteOptions {
                    source_date_epoch: None,
                };
                write_to_dest(dest, |w| {
                    crate::oci::layer::write_tree_layer(tmp.path(), w, &opts)
                })?;
            }
            Output::Oci { dest, compression } | Output::Docker { dest, compression } => {
                let oci = matches!(out, Output::Oci { .. });
                progress.note(&format!(
                    "exporting to {} archive {}",
                    if oci { "an OCI" } else { "a docker" },
                    dest.display()
                ));
                super::export::save_archive(
                    store,
                    &manifest_digest,
                    &names,
                    oci,
                    *compression,
                    dest,
                )?;
            }
        }
    }
    let _ = OutputCompression::Gzip;
    Ok(image_id)
}

pub fn write_to_dest(dest: &Path, f: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<()> {
    if dest.as_os_str() == "-" {
        let stdout = std::io::stdout();
        let mut lock = stdout.lock();
        f(&mut lock)?;
        lock.flush()?;
        return Ok(());
    }
    let dir = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("writing {}", dest.display()))?;
    {
        let mut w = std::io::BufWriter::new(tmp.as_file_mut());
        f(&mut w)?;
        w.flush()?;
    }
    tmp.as_file().sync_all()?;
    tmp.persist(dest)
        .map_err(|e| anyhow!("writing {}: {}", dest.display(), e.error))?;
    Ok(())
}

/// Applies the layers in order onto `dest` (whiteouts delete).
pub fn flatten_into(store: &Store, layers: &[LayerRef], dest: &Path) -> Result<()> {
    for layer in layers {
        let blob = store.open_blob(&layer.digest)?;
        crate::oci::layer::apply_layer(
            std::io::BufReader::new(blob),
            dest,
            crate::oci::layer::ApplyMode::Flatten,
        )
        .with_context(|| format!("applying layer {}", layer.digest))?;
    }
    Ok(())
}
