//! Image commands: import, images, tag, rmi, inspect, save, load (store + OCI formats). Flags
//! follow docker's, so a docker user's habits work.

use std::collections::BTreeSet;
use std::io::{self, IsTerminal, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};
use clap::{Subcommand, ValueEnum};

use super::template::{Format, Template};
use super::Globals;
use crate::oci::archive::{self, ArchiveFormat, SaveItem};
use crate::oci::compress::Compression;
use crate::oci::import::{import, ImportOptions};
use crate::oci::progress::human_bytes;
use crate::reference::Reference;
use crate::store::{ImageRecord, Store};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum CompressionArg {
    Gzip,
    Zstd,
    None,
}

impl From<CompressionArg> for Compression {
    fn from(c: CompressionArg) -> Compression {
        match c {
            CompressionArg::Gzip => Compression::Gzip,
            CompressionArg::Zstd => Compression::Zstd,
            CompressionArg::None => Compression::None,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SaveFormat {
    Docker,
    Oci,
}

#[derive(Debug, Subcommand)]
pub enum ImageCommands {
    /// Make a one-layer image from a root filesystem tarball (like `docker import`).
    Import {
        /// The tarball (`.tar`, `.tar.gz`, `.tar.zst`), or `-` for stdin.
        source: String,
        /// NAME[:TAG] for the image.
        name: Option<String>,
        /// Apply a Dockerfile instruction to the config: CMD, ENTRYPOINT, ENV, EXPOSE, LABEL,
        /// USER, WORKDIR, VOLUME, STOPSIGNAL.
        #[arg(short = 'c', long = "change")]
        changes: Vec<String>,
        /// How to store the layer (kiln's extension; `save` recompresses as asked).
        #[arg(long, value_enum, default_value = "gzip")]
        compression: CompressionArg,
        /// Print only the image ID.
        #[arg(short, long)]
        quiet: bool,
        /// The platform the image is for (`linux/arm64`): its config's architecture, os and
        /// variant (default: this machine's). Join per-platform images with `kiln manifest create`.
        #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
        platform: Option<String>,
    },
    /// List images.
    Images {
        /// Only images of this repository (NAME or NAME:TAG).
        repository: Option<String>,
        /// Only show image IDs.
        #[arg(short, long)]
        quiet: bool,
        /// Output format: table, json (one JSON object per line, as docker prints), a Go
        /// template (`{{.Repository}}:{{.Tag}}`) or `table TEMPLATE` (with docker's headers).
        #[arg(long)]
        format: Option<String>,
        /// Show full image IDs.
        #[arg(long)]
        no_trunc: bool,
        /// Show all images (kiln has no intermediate images; accepted for docker's habits).
        #[arg(short, long)]
        all: bool,
        /// Only images that match: dangling=true|false, reference=PATTERN, label=K[=V],
        /// before=IMAGE, since=IMAGE (repeatable, combined as docker does).
        #[arg(short, long = "filter", value_name = "KEY=VALUE")]
        filter: Vec<String>,
        /// Add a DIGEST column (the digest the name was given by, else `<none>`).
        #[arg(long)]
        digests: bool,
    },
    /// Give an image another name: SOURCE_IMAGE[:TAG] TARGET_IMAGE[:TAG].
    Tag { source: String, target: String },
    /// Remove images (by name, ID or digest).
    Rmi {
        /// Remove even if containers use it or several names share the ID.
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Image commands, docker's management forms: ls, rm, inspect, history, tag, save, load,
    /// import, pull, push (the same as images, rmi, inspect, history, …).
    Image {
        /// ls|rm|inspect|history|tag|save|load|import|pull|push, then its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Show the history of an image: one row per step that made it, newest first.
    History {
        /// Do not truncate output.
        #[arg(long)]
        no_trunc: bool,
        /// Only show image IDs.
        #[arg(short, long)]
        quiet: bool,
        /// Sizes and dates in human form (`-H=false`: bytes and RFC 3339 times).
        #[arg(
            short = 'H',
            long,
            num_args = 0..=1,
            require_equals = true,
            default_value = "true",
            default_missing_value = "true",
            action = clap::ArgAction::Set,
            value_parser = clap::builder::BoolishValueParser::new(),
            value_name = "BOOL"
        )]
        human: bool,
        /// A Go template per row (`{{.ID}} {{.CreatedBy}}`), `table TEMPLATE` or `json`.
        #[arg(long)]
        format: Option<String>,
        image: String,
    },
    /// Print images (or containers) as docker's inspect JSON.
    Inspect {
        /// A Go template run on each object (`{{.Config.Cmd}}`, `{{json .Config}}`).
        #[arg(short, long)]
        format: Option<String>,
        /// For a multi-platform image: the manifest of this platform (default: this machine's,
        /// with the whole index under `Index`).
        #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
        platform: Option<String>,
        /// The OCI documents as stored instead of docker's: per image its manifest (or index)
        /// and config, with their digests.
        #[arg(long, conflicts_with = "format")]
        raw: bool,
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Write images to a tar archive (docker or OCI layout).
    Save {
        /// Write to this file (`-` for stdout) instead of stdout.
        #[arg(short, long)]
        output: Option<String>,
        /// docker: what `docker load` reads; oci: an OCI image layout.
        #[arg(long, value_enum, default_value = "docker")]
        format: SaveFormat,
        /// Layer compression for OCI output.
        #[arg(long, value_enum, default_value = "gzip")]
        compression: CompressionArg,
        /// No progress output.
        #[arg(short, long)]
        quiet: bool,
        /// For a multi-platform image: save only this platform's manifest (the docker format
        /// holds one platform; default this machine's).
        #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
        platform: Option<String>,
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Load images from a tar archive (docker save, skopeo docker-archive: or oci-archive:).
    Load {
        /// Read from this file instead of stdin.
        #[arg(short, long)]
        input: Option<String>,
        /// No progress output; print only the result.
        #[arg(short, long)]
        quiet: bool,
    },
}

pub fn run(cmd: ImageCommands, globals: &Globals) -> Result<i32> {
    match cmd {
        ImageCommands::Import {
            source,
            name,
            changes,
            compression,
            quiet,
            platform,
        } => cmd_import(
            globals,
            &source,
            name.as_deref(),
            &changes,
            compression.into(),
            quiet,
            platform
                .as_deref()
                .map(crate::platform::Platform::parse)
                .transpose()
                .context("import: --platform")?,
        ),
        ImageCommands::Images {
            repository,
            quiet,
            format,
            no_trunc,
            all: _,
            filter,
            digests,
        } => {
            if let Err(e) = super::image_filter::check_syntax(&filter) {
                crate::errln!("kiln images: {e:#}");
                return Ok(super::EXIT_KILN_ERROR);
            }
            cmd_images(
                globals,
                &ImagesOptions {
                    repository: repository.as_deref(),
                    quiet,
                    format: format.as_deref(),
                    no_trunc,
                    filters: &filter,
                    digests,
                },
            )
        }
        ImageCommands::Tag { source, target } => {
            let store = open(globals)?;
            let target = Reference::parse(&target).context("tag: target")?;
            store.tag(&source, &target).context("tag")?;
            Ok(0)
        }
        ImageCommands::Rmi { force, images } => cmd_rmi(globals, &images, force),
        ImageCommands::Inspect {
            format,
            platform,
            raw,
            images,
        } => {
            let platform = platform
                .as_deref()
                .map(crate::platform::Platform::parse)
                .transpose()
                .context("inspect: --platform")?;
            if raw {
                return cmd_inspect_raw(globals, &images, platform.as_ref());
            }
            cmd_inspect(globals, &images, format.as_deref(), platform.as_ref())
        }
        // The known forms were rewritten to their short commands before parsing.
        ImageCommands::Image { args } => {
            let known: Vec<&str> = super::IMAGE_ALIASES.iter().map(|(a, _)| *a).collect();
            match args.first() {
                Some(sub) => crate::errln!(
                    "kiln image: unknown command {sub:?}: kiln image has {}",
                    known.join(", ")
                ),
                None => crate::errln!("kiln image: which command? {}", known.join(", ")),
            }
            Ok(super::EXIT_KILN_ERROR)
        }
        ImageCommands::History {
            no_trunc,
            quiet,
            human,
            format,
            image,
        } => cmd_history(globals, &image, no_trunc, quiet, human, format.as_deref()),
        ImageCommands::Save {
            output,
            format,
            compression,
            quiet,
            platform,
            images,
        } => cmd_save(
            globals,
            output.as_deref(),
            format,
            compression.into(),
            quiet,
            &images,
            platform
                .as_deref()
                .map(crate::platform::Platform::parse)
                .transpose()
                .context("save: --platform")?
                .as_ref(),
        ),
        ImageCommands::Load { input, quiet } => cmd_load(globals, input.as_deref(), quiet),
    }
}

fn open(globals: &Globals) -> Result<Store> {
    Store::open(&globals.root)
        .with_context(|| format!("opening the state root {}", globals.root.display()))
}

fn cmd_import(
    globals: &Globals,
    source: &str,
    name: Option<&str>,
    changes: &[String],
    compression: Compression,
    quiet: bool,
    platform: Option<crate::platform::Platform>,
) -> Result<i32> {
    let names = match name {
        Some(n) => vec![Reference::parse(n).context("import")?],
        None => Vec::new(),
    };
    let store = open(globals)?;
    let opts = ImportOptions {
        names: &names,
        changes,
        compression,
        source,
        platform,
    };
    let image = if source == "-" {
        let mut progress = crate::oci::progress::Progress::new("Importing", None, quiet);
        let input = crate::oci::progress::ProgressReader {
            inner: io::stdin(),
            progress: &mut progress,
        };
        let image = import(&store, input, &opts).context("import: stdin")?;
        progress.finish();
        image
    } else {
        let file = std::fs::File::open(source).with_context(|| format!("import: {source}"))?;
        let total = file.metadata().ok().map(|m| m.len());
        let mut progress = crate::oci::progress::Progress::new("Importing", total, quiet);
        let input = crate::oci::progress::ProgressReader {
            inner: file,
            progress: &mut progress,
        };
        let image = import(&store, input, &opts).with_context(|| format!("import: {source}"))?;
        progress.finish();
        image
    };
    crate::outln!("{}", image.config_digest)?;
    Ok(0)
}

/// docker's column names of `images --format 'table …'`.
const IMAGE_HEADERS: &[(&str, &str)] = &[
    ("Containers", "CONTAINERS"),
    ("CreatedAt", "CREATED AT"),
    ("CreatedSince", "CREATED"),
    ("Digest", "DIGEST"),
    ("ID", "IMAGE ID"),
    ("Repository", "REPOSITORY"),
    ("SharedSize", "SHARED SIZE"),
    ("Size", "SIZE"),
    ("Tag", "TAG"),
    ("UniqueSize", "UNIQUE SIZE"),
    ("VirtualSize", "SIZE"),
];

fn created_since(created: i64) -> String {
    if created <= 0 {
        return "N/A".into();
    }
    let secs = (chrono::Utc::now().timestamp() - created).max(0);
    let (n, unit) = match secs {
        s if s < 1 => return "Less than a second ago".into(),
        s if s < 60 => (s, "second"),
        s if s < 3600 => {
            if s / 60 == 1 {
                return "About a minute ago".into();
            }
            (s / 60, "minute")
        }
        s if s < 86400 => {
            if s / 3600 == 1 {
                return "About an hour ago".into();
            }
            (s / 3600, "hour")
        }
        s if s < 86400 * 14 => (s / 86400, "day"),
        s if s < 86400 * 60 => (s / (86400 * 7), "week"),
        s if s < 86400 * 365 * 2 => (s / (86400 * 30), "month"),
        s => (s / (86400 * 365), "year"),
    };
    format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" })
}

struct ImagesOptions<'a> {
    repository: Option<&'a str>,
    quiet: bool,
    format: Option<&'a str>,
    no_trunc: bool,
    filters: &'a [String],
    digests: bool,
}

fn cmd_images(globals: &Globals, opts: &ImagesOptions) -> Result<i32> {
    let ImagesOptions {
        repository,
        quiet,
        format,
        no_trunc,
        ..
    } = *opts;
    let format = Format::parse(format).context("images: --format")?;
    let store = open(globals)?;
    let mut images = store.list_images().context("images")?;
    let filter = super::image_filter::ImageFilter::parse(&store, opts.filters)
        .context("images: --filter")?;
    if !filter.is_empty() {
        let mut labels_of = std::collections::HashMap::new();
        let mut kept = Vec::new();
        for img in images {
            let labels = if filter.needs_labels() {
                if !labels_of.contains_key(&img.config_digest) {
                    let labels = image_labels(&store, &img.config_digest).with_context(|| {
                        format!("images: reading the config of {}", img.short_id())
                    })?;
                    labels_of.insert(img.config_digest.clone(), labels);
                }
                labels_of[&img.config_digest].clone()
            } else {
                Default::default()
            };
            if filter.matches(&img, &labels) {
                kept.push(img);
            }
        }
        images = kept;
    }
    if let Some(filter) = repository {
        let wanted = Reference::parse(filter).context("images: filter")?;
        let tag_given = filter
            .rsplit('/')
            .next()
            .is_some_and(|last| last.contains(':'));
        images.retain(|img| {
            img.name.as_ref().is_some_and(|n| {
                n.repository() == wanted.repository() && (!tag_given || n.tag() == wanted.tag())
            })
        });
    }
    let id = |img: &ImageRecord| {
        if no_trunc {
            img.config_digest.clone()
        } else {
            img.short_id().to_string()
        }
    };
    let mut out = crate::report::stdout();
    if quiet {
        let mut seen = BTreeSet::new();
        for img in &images {
            if seen.insert(img.config_digest.clone()) {
                writeln!(out, "{}", id(img))?;
            }
        }
        return Ok(0);
    }
    // SIZE as docker shows it: the layers unpacked (remembered per layer once read).
    let mut sizes = Vec::with_capacity(images.len());
    for img in &images {
        sizes.push(
            super::image_sizes::image_content_size(&store, &img.manifest_digest)
                .with_context(|| format!("images: the size of {}", img.short_id()))?,
        );
    }
    let rows: Vec<[String; 5]> = images
        .iter()
        .zip(&sizes)
        .map(|(img, size)| {
            let (repo, tag) = match &img.name {
                Some(n) => (
                    n.familiar_repository(),
                    n.tag().unwrap_or("<none>").to_string(),
                ),
                None => ("<none>".into(), "<none>".into()),
            };
            [
                repo,
                tag,
                id(img),
                created_since(img.created),
                human_bytes(*size),
            ]
        })
        .collect();
    // DIGEST: the digest a name was given by, else the one the registry gave when it was
    // pulled or pushed and still names this image (docker's RepoDigests), else <none>.
    let pulled = if opts.digests || !matches!(format, Format::DefaultTable) {
        registry_names(&store)
    } else {
        Vec::new()
    };
    let digest_of = |img: &ImageRecord| {
        let name = img.name.as_ref();
        name.and_then(|n| n.digest().map(String::from))
            .or_else(|| {
                pulled
                    .iter()
                    .find(|(p, stored, _)| Some(p) == name && stored == img.stored_digest())
                    .map(|(_, _, at_registry)| at_registry.clone())
            })
            .unwrap_or_else(|| "<none>".into())
    };
    let objects: Vec<serde_json::Value> = images
        .iter()
        .zip(&rows)
        .map(|(img, row)| {
            let created_at = chrono::DateTime::from_timestamp(img.created, 0)
                .map(|t| t.format("%Y-%m-%d %H:%M:%S +0000 UTC").to_string())
                .unwrap_or_default();
            let digest = digest_of(img);
            let platforms = img
                .platforms()
                .map(|ps| ps.iter().map(|p| p.to_string()).collect::<Vec<_>>());
            let mut obj = serde_json::json!({
                "Containers": "N/A",
                "CreatedAt": created_at,
                "CreatedSince": row[3],
                "Digest": digest,
                "ID": row[2],
                "ManifestDigest": img.manifest_digest,
                "Repository": row[0],
                "SharedSize": "N/A",
                "Size": row[4],
                "Tag": row[1],
                "UniqueSize": "N/A",
                "VirtualSize": row[4],
            });
            // A multi-platform image: its platforms and index (kiln's keys).
            if let (Some(ps), Some(map)) = (platforms, obj.as_object_mut()) {
                map.insert("Platforms".into(), ps.into());
                map.insert(
                    "IndexDigest".into(),
                    img.index.as_ref().map(|i| i.digest.clone()).into(),
                );
            }
            obj
        })
        .collect();
    if let Format::Json = format {
        for obj in &objects {
            writeln!(out, "{obj}")?;
        }
        return Ok(0);
    }
    if let Some(text) = format
        .render(IMAGE_HEADERS, &objects)
        .context("images: --format")?
    {
        out.write_all(text.as_bytes())?;
        return Ok(0);
    }
    if opts.digests {
        let rows: Vec<Vec<String>> = rows
            .into_iter()
            .zip(&images)
            .map(|([repo, tag, id, created, size], img)| {
                vec![repo, tag, digest_of(img), id, created, size]
            })
            .collect();
        super::table::write(
            &mut out,
            &["REPOSITORY", "TAG", "DIGEST", "IMAGE ID", "CREATED", "SIZE"],
            &rows,
        )?;
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = rows.into_iter().map(Vec::from).collect();
    super::table::write(
        &mut out,
        &["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"],
        &rows,
    )?;
    Ok(0)
}

/// The labels of an image's config (`config.Labels`).
fn image_labels(
    store: &Store,
    config_digest: &str,
) -> Result<std::collections::BTreeMap<String, String>> {
    Ok(super::image_filter::config_labels(
        &store.read_blob(config_digest)?,
    ))
}

/// docker's column names of `history --format 'table …'`.
const HISTORY_HEADERS: &[(&str, &str)] = &[
    ("Comment", "COMMENT"),
    ("CreatedAt", "CREATED AT"),
    ("CreatedBy", "CREATED BY"),
    ("CreatedSince", "CREATED"),
    ("ID", "IMAGE"),
    ("Size", "SIZE"),
];

fn cmd_history(
    globals: &Globals,
    spec: &str,
    no_trunc: bool,
    quiet: bool,
    human: bool,
    format: Option<&str>,
) -> Result<i32> {
    let format = Format::parse(format).context("history: --format")?;
    let store = open(globals)?;
    let img = store
        .resolve(spec)
        .with_context(|| format!("history: {spec}"))?;
    let config: crate::oci::config::ImageConfigFile =
        serde_json::from_slice(&store.read_blob(&img.config_digest)?)
            .with_context(|| format!("history: {spec}: reading the image config"))?;
    let manifest: serde_json::Value =
        serde_json::from_slice(&store.manifest_bytes(&img.manifest_digest)?)?;
    let layers: Vec<String> = manifest["layers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|l| l["digest"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    // Oldest first, each non-empty entry taking the next layer; then shown newest first.
    let mut next_layer = layers.iter();
    let mut entries = Vec::new();
    // An image made without history (some tools write none): one row per layer, as docker.
    let history = if config.history.is_empty() {
        vec![crate::oci::config::History::default(); layers.len()]
    } else {
        config.history.clone()
    };
    for h in history.iter() {
        let size = if h.empty_layer.unwrap_or(false) {
            0
        } else {
            match next_layer.next() {
                Some(d) => super::image_sizes::layer_content_size(&store, d)
                    .with_context(|| format!("history: {spec}: reading layer {d}"))?,
                None => 0,
            }
        };
        entries.push((h, size));
    }
    entries.reverse();
    let id = |i: usize| -> String {
        if i > 0 {
            "<missing>".into()
        } else if no_trunc {
            img.config_digest.clone()
        } else {
            img.short_id().to_string()
        }
    };
    let mut out = crate::report::stdout();
    if quiet {
        for i in 0..entries.len() {
            writeln!(out, "{}", id(i))?;
        }
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .enumerate()
        .map(|(i, (h, size))| {
            let created = h.created.as_deref().unwrap_or("");
            let secs = chrono::DateTime::parse_from_rfc3339(created)
                .map(|t| t.timestamp())
                .unwrap_or(0);
            let created_by = h.created_by.as_deref().unwrap_or("").replace('\t', " ");
            vec![
                id(i),
                if human {
                    created_since(secs)
                } else {
                    chrono::DateTime::from_timestamp(secs, 0)
                        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                        .unwrap_or_default()
                },
                if no_trunc {
                    created_by
                } else {
                    super::table::ellipsis(&created_by, 45)
                },
                if human {
                    human_bytes(*size)
                } else {
                    size.to_string()
                },
                h.comment.clone().unwrap_or_default(),
            ]
        })
        .collect();
    if !matches!(format, Format::DefaultTable) {
        let objects: Vec<serde_json::Value> = entries
            .iter()
            .zip(&rows)
            .map(|((h, _), row)| {
                let created_at = h
                    .created
                    .as_deref()
                    .and_then(|c| chrono::DateTime::parse_from_rfc3339(c).ok())
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                    .unwrap_or_default();
                serde_json::json!({
                    "Comment": row[4],
                    "CreatedAt": created_at,
                    "CreatedBy": row[2],
                    "CreatedSince": row[1],
                    "ID": row[0],
                    "Size": row[3],
                })
            })
            .collect();
        match format
            .render(HISTORY_HEADERS, &objects)
            .context("history: --format")?
        {
            Some(text) => out.write_all(text.as_bytes())?,
            None => {
                for obj in &objects {
                    writeln!(out, "{obj}")?;
                }
            }
        }
        return Ok(0);
    }
    let created = if human { "CREATED" } else { "CREATED AT" };
    super::table::write(
        &mut out,
        &["IMAGE", created, "CREATED BY", "SIZE", "COMMENT"],
        &rows,
    )?;
    Ok(0)
}

fn cmd_rmi(globals: &Globals, images: &[String], force: bool) -> Result<i32> {
    let store = open(globals)?;
    // Containers record their images through Store::add_image_use (the runner's hook): rmi
    // refuses those images unless forced.
    let mut code = 0;
    for spec in images {
        match store.remove_image(spec, force) {
            Ok(lines) => {
                for line in lines {
                    crate::outln!("{line}")?;
                }
            }
            Err(e) => {
                crate::report::report_error(&e.context(format!("rmi: {spec}")));
                code = 1;
            }
        }
    }
    Ok(code)
}

fn cmd_inspect(
    globals: &Globals,
    images: &[String],
    format: Option<&str>,
    platform: Option<&crate::platform::Platform>,
) -> Result<i32> {
    // `--format json` is the default document; anything else is a template, parsed first.
    let template = match format {
        None | Some("json") => None,
        Some(f) => Some(Template::parse(f).context("inspect: --format")?),
    };
    let store = open(globals)?;
    let mut out = Vec::new();
    let mut code = 0;
    for spec in images {
        let result = (|| -> Result<serde_json::Value> {
            let (whole, img, manifest, config) = stored_documents(&store, spec, platform)?;
            if let (Some(p), None) = (platform, &whole.index) {
                let have = crate::platform::Platform::of_config(
                    config.get("os").and_then(|v| v.as_str()).unwrap_or(""),
                    config
                        .get("architecture")
                        .and_then(|v| v.as_str())
                        .unwrap_or(""),
                    config.get("variant").and_then(|v| v.as_str()),
                );
                if !p.matches(&have) {
                    bail!("image {spec} is for {have}, not {p} (it is not a multi-platform image)");
                }
            }
            let names = store.names_of(whole.stored_digest())?;
            // A multi-platform image: the index as stored, and its platforms.
            let index_doc = match &whole.index {
                Some(i) => Some(serde_json::from_slice::<serde_json::Value>(
                    &store.read_blob(&i.digest)?,
                )?),
                None => None,
            };
            let created = config
                .get("created")
                .cloned()
                .unwrap_or(serde_json::Value::Null);
            // docker's image document (what scripts and templates read), then kiln's own: the
            // manifest and the image config as stored.
            let str_of = |k: &str| {
                config
                    .get(k)
                    .and_then(|v| v.as_str())
                    .unwrap_or("")
                    .to_string()
            };
            let mut doc = serde_json::json!({
                "Id": img.config_digest,
                "RepoTags": names.iter().filter(|n| n.tag().is_some()).map(|n| n.to_string()).collect::<Vec<_>>(),
                "RepoDigests": repo_digests(&store, whole.stored_digest()),
                "Parent": "",
                // The config's comment, else the last step's (docker: `buildkit.dockerfile.v0`).
                "Comment": config.get("comment").and_then(|c| c.as_str()).or_else(|| {
                    config.get("history").and_then(|h| h.as_array()).and_then(|h| h.last()).and_then(|h| h.get("comment")).and_then(|c| c.as_str())
                }).unwrap_or(""),
                "Created": created,
                "DockerVersion": "",
                "Author": str_of("author"),
                "Config": config.get("config").cloned().unwrap_or_else(|| serde_json::json!({})),
                "Architecture": config.get("architecture"),
                "Os": config.get("os"),
                "Size": super::image_sizes::image_content_size(&store, &img.manifest_digest)?,
                "RootFS": {
                    "Type": config.pointer("/rootfs/type").cloned().unwrap_or_else(|| "layers".into()),
                    "Layers": config.pointer("/rootfs/diff_ids").cloned().unwrap_or_else(|| serde_json::json!([])),
                },
                "Metadata": {"LastTagTime": "0001-01-01T00:00:00Z"},
                "ManifestDigest": img.manifest_digest,
                "Manifest": manifest,
                "ImageConfig": config,
            });
            if let (Some(index), Some(doc)) = (&whole.index, doc.as_object_mut()) {
                doc.insert("IndexDigest".into(), index.digest.clone().into());
                doc.insert("Index".into(), index_doc.unwrap_or_default());
                doc.insert(
                    "Platforms".into(),
                    index.platforms().iter().map(|p| p.to_string()).collect(),
                );
            }
            Ok(doc)
        })();
        match result {
            Ok(v) => out.push(v),
            // Not an image: maybe a container (the runner's hook, docker's `inspect` does both).
            Err(e) => match crate::runner::inspect_container(&globals.root, spec) {
                Some(v) => out.push(v),
                None => {
                    crate::report::report_error(&e.context(format!("inspect: {spec}")));
                    code = 1;
                }
            },
        }
    }
    match template {
        None => crate::outln!(
            "{}",
            super::format::docker_json::to_string_pretty(
                &serde_json::Value::Array(out.into_iter().map(with_dockers_null_config).collect()),
                super::format::docker_json::Style::Inspect
            )
        )?,
        Some(t) => {
            for (v, spec) in out.iter().zip(images) {
                match t.execute(v) {
                    Ok(text) => crate::outln!("{text}")?,
                    Err(e) => {
                        crate::report::report_error(
                            &e.context(format!("inspect: {spec}: --format")),
                        );
                        code = 1;
                    }
                }
            }
        }
    }
    Ok(code)
}

/// docker's `RepoDigests`: `repository@digest` for each name the image was pulled by or pushed
/// as (the digest the registry has it by: for a push, the manifest with compressed layers). A
/// built image has none, as in docker, until it comes from or goes to a registry.
fn repo_digests(store: &Store, stored_digest: &str) -> Vec<String> {
    let mut out: Vec<String> = registry_names(store)
        .into_iter()
        .filter(|(_, stored, _)| stored == stored_digest)
        .map(|(n, _, at_registry)| format!("{}@{at_registry}", n.familiar_repository()))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Every name pulled into this root or pushed from it: (name, the local image's stored digest,
/// the digest the registry has it by). From the registry's `registry_pulls` (where the two
/// digests are one) and `registry_pushes`; none before the first pull or push made the tables.
fn registry_names(store: &Store) -> Vec<(Reference, String, String)> {
    let query = |sql: &str| -> Vec<(String, String, String)> {
        store
            .with_conn(|c| {
                let mut stmt = c.prepare(sql)?;
                let rows = stmt
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                Ok(rows)
            })
            .unwrap_or_default()
    };
    let mut rows = query("SELECT name, resolved, resolved FROM registry_pulls");
    rows.extend(query("SELECT name, stored, pushed FROM registry_pushes"));
    rows.into_iter()
        .filter_map(|(n, stored, at)| Some((Reference::parse(&n).ok()?, stored, at)))
        .collect()
}

/// An image as `inspect` reads it: the record a name resolves to, the platform's record in it
/// (`--platform`, else the record itself), and its stored manifest and config.
fn stored_documents(
    store: &crate::store::Store,
    spec: &str,
    platform: Option<&crate::platform::Platform>,
) -> Result<(
    crate::store::ImageRecord,
    crate::store::ImageRecord,
    serde_json::Value,
    serde_json::Value,
)> {
    let whole = store.resolve(spec)?;
    let img = match platform {
        Some(p) => whole.for_platform(p)?,
        None => whole.clone(),
    };
    let manifest = serde_json::from_slice(&store.manifest_bytes(&img.manifest_digest)?)?;
    let config = serde_json::from_slice(&store.read_blob(&img.config_digest)?)?;
    Ok((whole, img, manifest, config))
}

/// `inspect --raw`: the OCI documents as stored, one object per image: `ManifestDigest` and
/// `Manifest`, `ConfigDigest` and `Config`, and for a multi-platform image `IndexDigest` and
/// `Index` (the manifest is this machine's platform's, or `--platform`'s).
fn cmd_inspect_raw(
    globals: &Globals,
    images: &[String],
    platform: Option<&crate::platform::Platform>,
) -> Result<i32> {
    let store = open(globals)?;
    let mut out = Vec::new();
    let mut code = 0;
    for spec in images {
        let result = (|| -> Result<serde_json::Value> {
            let (whole, img, manifest, config) = stored_documents(&store, spec, platform)?;
            let mut doc = serde_json::json!({
                "ManifestDigest": img.manifest_digest,
                "Manifest": manifest,
                "ConfigDigest": img.config_digest,
                "Config": config,
            });
            if let Some(index) = &whole.index {
                let bytes = store.read_blob(&index.digest)?;
                doc["IndexDigest"] = index.digest.clone().into();
                doc["Index"] = serde_json::from_slice(&bytes)?;
            }
            Ok(doc)
        })();
        match result {
            Ok(v) => out.push(v),
            Err(e) => {
                crate::report::report_error(&e.context(format!("inspect --raw: {spec}")));
                code = 1;
            }
        }
    }
    crate::outln!("{}", serde_json::to_string_pretty(&out)?)?;
    Ok(code)
}

/// An image document as the daemon sends it: its `Config` has docker's legacy fields even when
/// the image lacks them (`"Entrypoint": null`, `"User": ""`), as Docker 28.5 prints them.
/// Templates see the config as it is (docker's CLI decodes into a struct whose empty fields
/// `{{json .Config}}` leaves out).
fn with_dockers_null_config(mut doc: serde_json::Value) -> serde_json::Value {
    if doc.get("RepoTags").is_none() {
        return doc;
    }
    if let Some(config) = doc.get_mut("Config").and_then(|c| c.as_object_mut()) {
        for key in ["Cmd", "Entrypoint", "Env", "Labels", "OnBuild", "Volumes"] {
            config.entry(key).or_insert(serde_json::Value::Null);
        }
        for key in ["User", "WorkingDir"] {
            config.entry(key).or_insert_with(|| "".into());
        }
    }
    doc
}

fn cmd_save(
    globals: &Globals,
    output: Option<&str>,
    format: SaveFormat,
    compression: Compression,
    quiet: bool,
    images: &[String],
    platform: Option<&crate::platform::Platform>,
) -> Result<i32> {
    let store = open(globals)?;
    let mut items: Vec<SaveItem> = Vec::new();
    for spec in images {
        let img = store
            .resolve(spec)
            .with_context(|| format!("save: {spec}"))?;
        // A multi-platform image: the OCI format keeps the index (every platform); the docker
        // format holds one, `--platform`'s (else this machine's, when the index has it).
        let digest = match (&img.index, format, platform) {
            (Some(_), SaveFormat::Oci, None) => img.stored_digest().to_string(),
            (Some(_), _, Some(p)) => {
                img.for_platform(p)
                    .with_context(|| format!("save: {spec}"))?
                    .manifest_digest
            }
            (Some(index), SaveFormat::Docker, None) => {
                let host = crate::platform::Platform::host();
                match index.find(&host) {
                    Some(e) => e.manifest_digest.clone(),
                    None => bail!(
                        "save: {spec} is multi-platform ({}) without this machine's {host}: the \
                         docker format holds one platform; choose it with --platform, or use \
                         --format oci for all",
                        index.platform_list()
                    ),
                }
            }
            (None, _, _) => img.manifest_digest.clone(),
        };
        // Named by what the user typed when it is a name (docker keeps just that tag).
        let name = img.name.clone().filter(|n| n.digest().is_none());
        match items.iter_mut().find(|i| i.manifest_digest == digest) {
            Some(item) => item.names.extend(name),
            None => items.push(SaveItem {
                manifest_digest: digest,
                names: name.into_iter().collect(),
            }),
        }
    }
    let format = match format {
        SaveFormat::Docker => ArchiveFormat::Docker,
        SaveFormat::Oci => ArchiveFormat::Oci,
    };
    // Layers a build kept unpacked become blobs (once; kept for the next export).
    for item in &mut items {
        item.manifest_digest =
            crate::snapshot::blobs::export_manifest(&store, &item.manifest_digest, compression)
                .context("save")?;
    }
    match output {
        None | Some("-") => {
            let stdout = io::stdout();
            if output.is_none() && stdout.is_terminal() {
                bail!("save: cowardly refusing to write an archive to a terminal: use -o FILE or redirect stdout");
            }
            let out = io::BufWriter::with_capacity(1 << 20, crate::report::stdout());
            archive::save(&store, &items, format, compression, out, quiet).context("save")?;
        }
        Some(path) => {
            let path = Path::new(path);
            let dir = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            // What earlier saves here left when they were killed.
            match remove_dead_save_temps(dir) {
                Ok((n, bytes)) if n > 0 && !quiet => eprintln!(
                    "kiln: removed {n} temporary file{} of killed saves in {} ({})",
                    if n == 1 { "" } else { "s" },
                    dir.display(),
                    human_bytes(bytes)
                ),
                Ok(_) => {}
                Err(e) => eprintln!(
                    "kiln: warning: looking for temporary files of killed saves in {}: {e}",
                    dir.display()
                ),
            }
            // Written to a temp name next to the target, then renamed: no half-written file. The
            // name says whose it is, so the next save here removes it if this one is killed; a
            // SIGINT/SIGTERM/SIGHUP removes it (the removal is registered before the file is
            // made, so no signal falls between the two).
            let (tmp_file, tmp_path, cleanup_key) = create_save_temp(dir)
                .with_context(|| format!("save: {}: cannot write there", path.display()))?;
            let written = (|| {
                let mut out = io::BufWriter::with_capacity(1 << 20, &tmp_file);
                archive::save(&store, &items, format, compression, &mut out, quiet)?;
                out.flush()?;
                drop(out);
                tmp_file.sync_all()?;
                drop(tmp_file);
                tmp_path.persist(path).map_err(|e| e.error)?;
                anyhow::Ok(())
            })();
            crate::cleanup::unregister(cleanup_key);
            written.with_context(|| format!("save: {}", path.display()))?;
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644));
        }
    }
    Ok(0)
}

/// How `kiln save -o F` names its temp file beside F: `.kiln-save.<pid>-<start time>.<random>`.
pub const SAVE_TEMP_PREFIX: &str = ".kiln-save.";

/// Temp files of an older kiln, whose names carry no owner, are removed once this old.
const LEGACY_SAVE_TEMP_AGE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Makes `DIR/.kiln-save.<pid>-<start>.<random>` (mode 0600, new) for `save -o`, with its
/// removal registered for SIGINT/SIGTERM/SIGHUP first; the `TempPath` removes it when dropped.
fn create_save_temp(dir: &Path) -> io::Result<(std::fs::File, tempfile::TempPath, u64)> {
    use rand::distributions::{Alphanumeric, DistString};
    use std::os::unix::fs::OpenOptionsExt;
    let tag = crate::owner::Owner::current().tag();
    crate::cleanup::install_signal_handlers();
    let mut attempt = 0;
    loop {
        let random = Alphanumeric.sample_string(&mut rand::thread_rng(), 8);
        let path = dir.join(format!("{SAVE_TEMP_PREFIX}{tag}.{random}"));
        let to_remove = path.clone();
        let key = crate::cleanup::register(move || {
            let _ = std::fs::remove_file(&to_remove);
        });
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(file) => {
                return match tempfile::TempPath::try_from_path(&path) {
                    Ok(temp) => Ok((file, temp, key)),
                    Err(e) => {
                        let _ = std::fs::remove_file(&path);
                        crate::cleanup::unregister(key);
                        Err(e)
                    }
                };
            }
            Err(e) => {
                crate::cleanup::unregister(key);
                attempt += 1;
                if e.kind() != io::ErrorKind::AlreadyExists || attempt >= 8 {
                    return Err(e);
                }
            }
        }
    }
}

/// Removes from `dir` the temp files of `kiln save -o` runs that were killed: files named
/// `.kiln-save.<pid>-<start>.*` whose process is gone (the start time guards against pid reuse),
/// owned by this user; a name without an owner (kiln before it tagged them) only when it has not
/// been written for a day. A live save's file is never touched. Returns how many files were
/// removed and their size. Used by `save` for its output directory; a `kiln system prune`
/// would call it for the directories it is given.
pub fn remove_dead_save_temps(dir: &Path) -> io::Result<(usize, u64)> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    let (mut removed, mut bytes) = (0, 0);
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(SAVE_TEMP_PREFIX)) else {
            continue;
        };
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        if !meta.file_type().is_file() || meta.uid() != uid {
            continue;
        }
        let dead = match rest
            .split('.')
            .next()
            .and_then(crate::owner::Owner::parse_tag)
        {
            Some(owner) => !owner.is_alive(),
            None => meta
                .modified()
                .ok()
                .and_then(|m| m.elapsed().ok())
                .is_some_and(|age| age > LEGACY_SAVE_TEMP_AGE),
        };
        if dead {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => {
                    removed += 1;
                    bytes += meta.len();
                }
                // Another save here cleaned it first.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok((removed, bytes))
}

fn cmd_load(globals: &Globals, input: Option<&str>, quiet: bool) -> Result<i32> {
    let store = open(globals)?;
    let loaded = match input {
        None | Some("-") => {
            let stdin = io::stdin();
            if input.is_none() && stdin.is_terminal() {
                bail!("load: requested load from stdin, but stdin is empty (a terminal): use -i FILE or pipe an archive");
            }
            // A file on stdin is read in place; a pipe is spooled to tmp/ (load reads twice).
            let fd = std::os::fd::AsFd::as_fd(&stdin)
                .try_clone_to_owned()
                .context("load: stdin")?;
            let file = std::fs::File::from(fd);
            if file.metadata().is_ok_and(|m| m.is_file()) {
                archive::load(&store, &file, quiet).context("load: stdin")?
            } else {
                let spooled = archive::spool(&store, file, quiet).context("load: stdin")?;
                archive::load(&store, spooled.as_file(), quiet).context("load: stdin")?
            }
        }
        Some(path) => {
            let file = std::fs::File::open(path).with_context(|| format!("load: {path}"))?;
            archive::load(&store, &file, quiet).with_context(|| format!("load: {path}"))?
        }
    };
    for image in loaded {
        if image.names.is_empty() {
            crate::outln!("Loaded image ID: {}", image.config_digest)?;
        }
        for name in image.names {
            crate::outln!("Loaded image: {name}")?;
        }
    }
    Ok(0)
}
