//! Housekeeping, as docker's commands do it: `system df [-v] [--format]`, `image prune`,
//! `container prune`, `builder prune`, `system prune` (and the work of `volume prune`). What
//! things cost and what may go is `store::gc`'s; containers and volumes are the runner's; this
//! file asks, removes and prints docker's lines.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};
use clap::Subcommand;

use super::Globals;
use crate::runner::{self, state, state::Status};
use crate::store::gc::{self, CacheGroup, Policy};
use crate::store::Store;

#[derive(Debug, Subcommand)]
pub enum HousekeepingCommands {
    /// Remove unused images: dangling ones (untagged), or with -a every image no container uses
    /// (`kiln image prune`).
    #[command(name = "image-prune", hide = true)]
    ImagePrune(ImagePruneArgs),
    /// Remove stopped containers (`kiln container prune`).
    #[command(name = "container-prune", hide = true)]
    ContainerPrune(ContainerPruneArgs),
    /// Manage the build cache.
    Builder {
        #[command(subcommand)]
        cmd: BuilderCommands,
    },
    /// Disk usage and cleanup of images, containers, volumes and the build cache.
    System {
        #[command(subcommand)]
        cmd: SystemSubcommands,
    },
}

#[derive(Debug, clap::Args)]
pub struct ImagePruneArgs {
    /// Remove every image no container uses, not only dangling ones.
    #[arg(short, long)]
    pub all: bool,
    /// Do not ask for confirmation.
    #[arg(short, long)]
    pub force: bool,
    /// `until=<timestamp|duration>` (created before), `label=<key>[=<value>]`, `label!=...`.
    #[arg(long)]
    pub filter: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct ContainerPruneArgs {
    /// Do not ask for confirmation.
    #[arg(short, long)]
    pub force: bool,
    /// `until=<timestamp|duration>` (created before), `label=...` (kiln containers have none).
    #[arg(long)]
    pub filter: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum BuilderCommands {
    /// Remove build cache: the step results no image shares (-a: every step result, the cache
    /// mounts and the recorded step inputs too).
    Prune {
        #[arg(short, long)]
        all: bool,
        /// Do not ask for confirmation.
        #[arg(short, long)]
        force: bool,
        /// Keep this much of the cache (the most recently used): `10GB`, `512MB`
        /// (`--reserved-space`, docker's newer name, is the same here).
        #[arg(long, value_name = "SIZE", alias = "reserved-space")]
        keep_storage: Option<String>,
        /// `until=<timestamp|duration>`: only what was last used before.
        #[arg(long)]
        filter: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum SystemSubcommands {
    /// Show what images, containers, volumes and the build cache take on disk.
    Df {
        /// Per image, container, volume and cache record.
        #[arg(short, long)]
        verbose: bool,
        /// A Go template per row (`{{.Type}} {{.Size}}`), `table TEMPLATE` or `json`.
        #[arg(long)]
        format: Option<String>,
    },
    /// Remove stopped containers, dangling images and unused build cache (-a: every unused
    /// image and all build cache; --volumes: anonymous volumes no container uses).
    Prune {
        #[arg(short, long)]
        all: bool,
        #[arg(long)]
        volumes: bool,
        /// Do not ask for confirmation.
        #[arg(short, long)]
        force: bool,
        /// `until=<timestamp|duration>`, `label=<key>[=<value>]`, `label!=...`.
        #[arg(long)]
        filter: Vec<String>,
    },
}

pub fn run(cmd: HousekeepingCommands, globals: &Globals) -> Result<i32> {
    let root = globals.root.as_path();
    match cmd {
        HousekeepingCommands::ImagePrune(a) => {
            let filter =
                PruneFilter::parse(&a.filter, &["until", "label", "label!"], "image prune")?;
            let warning = if a.all {
                "WARNING! This will remove all images without at least one container associated to them.\nAre you sure you want to continue?"
            } else {
                "WARNING! This will remove all dangling images.\nAre you sure you want to continue?"
            };
            if !a.force && !confirm(warning)? {
                return Ok(0);
            }
            let store = runner::open_store(root)?;
            let (lines, freed) = prune_images(&store, a.all, &filter)?;
            if !lines.is_empty() {
                crate::outln!("Deleted Images:")?;
                for l in &lines {
                    crate::outln!("{l}")?;
                }
                crate::outln!()?;
            }
            crate::outln!("Total reclaimed space: {}", human_size(freed))?;
            Ok(0)
        }
        HousekeepingCommands::ContainerPrune(a) => {
            let filter =
                PruneFilter::parse(&a.filter, &["until", "label", "label!"], "container prune")?;
            if !a.force
                && !confirm("WARNING! This will remove all stopped containers.\nAre you sure you want to continue?")?
            {
                return Ok(0);
            }
            let store = runner::open_store(root)?;
            let (ids, freed) = prune_containers(&store, &filter)?;
            print_section("Deleted Containers:", &ids)?;
            crate::outln!("Total reclaimed space: {}", human_size(freed))?;
            Ok(0)
        }
        HousekeepingCommands::Builder {
            cmd:
                BuilderCommands::Prune {
                    all,
                    force,
                    keep_storage,
                    filter,
                },
        } => {
            let filter = PruneFilter::parse(&filter, &["until"], "builder prune")?;
            let keep = keep_storage
                .as_deref()
                .map(|s| {
                    crate::store::space::parse_size(s)
                        .with_context(|| format!("builder prune: --keep-storage {s:?}"))
                })
                .transpose()?;
            let warning = if all {
                "WARNING! This will remove all build cache. Are you sure you want to continue?"
            } else {
                "WARNING! This will remove all dangling build cache. Are you sure you want to continue?"
            };
            if !force && !confirm(warning)? {
                return Ok(0);
            }
            let store = runner::open_store(root)?;
            let pruned = prune_build_cache(&store, all, keep, &filter)?;
            crate::out!("{}", builder_prune_table(&pruned))?;
            Ok(0)
        }
        HousekeepingCommands::System {
            cmd: SystemSubcommands::Df { verbose, format },
        } => {
            let store = runner::open_store(root)?;
            system_df(&store, verbose, format.as_deref())
        }
        HousekeepingCommands::System {
            cmd:
                SystemSubcommands::Prune {
                    all,
                    volumes,
                    force,
                    filter,
                },
        } => {
            let filter =
                PruneFilter::parse(&filter, &["until", "label", "label!"], "system prune")?;
            if !force && !confirm(&system_prune_warning(all, volumes))? {
                return Ok(0);
            }
            let store = runner::open_store(root)?;
            let mut total = 0;
            let (ids, freed) = prune_containers(&store, &filter)?;
            total += freed;
            print_section("Deleted Containers:", &ids)?;
            if volumes {
                let (names, freed) = prune_volumes(&store, false)?;
                total += freed;
                print_section("Deleted Volumes:", &names)?;
            }
            let (lines, freed) = prune_images(&store, all, &filter)?;
            total += freed;
            print_section("Deleted Images:", &lines)?;
            let pruned = prune_build_cache(&store, all, None, &filter)?;
            total += pruned.freed;
            let ids: Vec<String> = pruned.items.iter().map(|i| i.id.clone()).collect();
            print_section("Deleted build cache objects:", &ids)?;
            crate::outln!("Total reclaimed space: {}", human_size(total))?;
            Ok(0)
        }
    }
}

fn system_prune_warning(all: bool, volumes: bool) -> String {
    let mut w = String::from("WARNING! This will remove:\n  - all stopped containers\n");
    if volumes {
        w.push_str("  - all anonymous volumes not used by at least one container\n");
    }
    if all {
        w.push_str("  - all images without at least one container associated to them\n");
        w.push_str("  - all build cache\n");
    } else {
        w.push_str("  - all dangling images\n");
        w.push_str("  - unused build cache\n");
    }
    w.push_str("\nAre you sure you want to continue?");
    w
}

/// docker's `Deleted X:` block: the title, one line each, a blank line; nothing when empty.
fn print_section(title: &str, lines: &[String]) -> Result<()> {
    if lines.is_empty() {
        return Ok(());
    }
    crate::outln!("{title}")?;
    for l in lines {
        crate::outln!("{l}")?;
    }
    crate::outln!()?;
    Ok(())
}

/// docker's prompt: the warning and ` [y/N] ` on stdout, then one line from stdin (a terminal or
/// not, as docker reads it): only `y` (any case) goes on; anything else, end of input included,
/// is no, and the command ends with nothing done and exit 0, as docker's does.
fn confirm(warning: &str) -> Result<bool> {
    crate::out!("{warning} [y/N] ")?;
    crate::report::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the answer from stdin")?;
    Ok(line.trim().eq_ignore_ascii_case("y"))
}

/// go-units' `HumanSize` (4 significant digits, decimal units): `0B`, `35B`, `2.831GB`.
pub fn human_size(n: u64) -> String {
    human_size_precision(n, 4)
}

/// go-units' `HumanSizeWithPrecision`.
pub fn human_size_precision(n: u64, precision: usize) -> String {
    const UNITS: [&str; 9] = ["B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"];
    let mut size = n as f64;
    let mut i = 0;
    while size >= 1000.0 && i + 1 < UNITS.len() {
        size /= 1000.0;
        i += 1;
    }
    format!(
        "{}{}",
        crate::runner::stats::go_g(size, precision),
        UNITS[i]
    )
}

/// docker's `HumanDuration`.
pub fn human_duration(secs: i64) -> String {
    let s = secs.max(0);
    let hours = (s as f64 / 3600.0 + 0.5) as i64;
    match s {
        0 => "Less than a second".into(),
        1 => "1 second".into(),
        s if s < 60 => format!("{s} seconds"),
        s if s / 60 == 1 => "About a minute".into(),
        s if s < 3600 => format!("{} minutes", s / 60),
        _ if hours == 1 => "About an hour".into(),
        _ if hours < 48 => format!("{hours} hours"),
        _ if hours < 24 * 7 * 2 => format!("{} days", hours / 24),
        _ if hours < 24 * 30 * 2 => format!("{} weeks", hours / 24 / 7),
        _ if hours < 24 * 365 * 2 => format!("{} months", hours / 24 / 30),
        s => format!("{} years", s / 3600 / 24 / 365),
    }
}

/// The `--filter` values of a prune command.
#[derive(Debug, Default, PartialEq)]
pub struct PruneFilter {
    /// Unix seconds: only what was created (or, for the build cache, last used) before.
    pub until: Option<i64>,
    /// (wanted, key, value): `label=k`, `label=k=v` (wanted) and `label!=k...` (not wanted).
    pub labels: Vec<(bool, String, Option<String>)>,
}

impl PruneFilter {
    /// Parses `--filter` values, allowing the filters in `allowed` (`label!` for `label!=`).
    pub fn parse(values: &[String], allowed: &[&str], what: &str) -> Result<PruneFilter> {
        Self::parse_at(values, allowed, what, chrono::Utc::now().timestamp())
    }

    fn parse_at(values: &[String], allowed: &[&str], what: &str, now: i64) -> Result<PruneFilter> {
        let mut f = PruneFilter::default();
        for v in values {
            let (name, value) = match v.split_once("!=") {
                Some((n, val)) if !n.contains('=') => (format!("{n}!"), val),
                _ => match v.split_once('=') {
                    Some((n, val)) => (n.to_string(), val),
                    None => bail!("{what}: bad format of filter (expected name=value): {v:?}"),
                },
            };
            if !allowed.contains(&name.as_str()) {
                let shown = name.trim_end_matches('!');
                bail!(
                    "{what}: invalid filter '{shown}' (kiln supports: {})",
                    allowed
                        .iter()
                        .map(|a| if a.ends_with('!') {
                            format!("{}!=", a.trim_end_matches('!'))
                        } else {
                            format!("{a}=")
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            match name.as_str() {
                "until" => {
                    f.until = Some(
                        parse_until(value, now)
                            .with_context(|| format!("{what}: --filter until={value}"))?,
                    );
                }
                "label" | "label!" => {
                    let (k, val) = match value.split_once('=') {
                        Some((k, val)) => (k.to_string(), Some(val.to_string())),
                        None => (value.to_string(), None),
                    };
                    f.labels.push((name == "label", k, val));
                }
                _ => {}
            }
        }
        Ok(f)
    }

    /// Whether something created at `t` (unix seconds) passes `until`.
    pub fn before(&self, t: i64) -> bool {
        self.until.map_or(true, |u| t < u)
    }

    /// Whether labels pass every `label` / `label!` filter.
    pub fn labels_match(&self, labels: &BTreeMap<String, String>) -> bool {
        self.labels.iter().all(|(wanted, k, v)| {
            let has = match v {
                Some(v) => labels.get(k) == Some(v),
                None => labels.contains_key(k),
            };
            has == *wanted
        })
    }
}

/// docker's `until`: a Go duration before now (`24h`, `1h30m`, `10m`), an RFC 3339 time, a date
/// (`2006-01-02`, `2006-01-02T15:04:05`, UTC), or Unix seconds (`1700000000[.123]`).
pub fn parse_until(s: &str, now: i64) -> Result<i64> {
    if let Some(d) = parse_go_duration(s) {
        return Ok(now - d);
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp());
    }
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, fmt) {
            return Ok(t.and_utc().timestamp());
        }
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(d
            .and_hms_opt(0, 0, 0)
            .map_or(0, |t| t.and_utc().timestamp()));
    }
    let secs = s.split_once('.').map_or(s, |(a, _)| a);
    if !secs.is_empty() && secs.bytes().all(|b| b.is_ascii_digit()) {
        return secs.parse().context("a Unix time");
    }
    bail!("expected a duration (24h, 30m, 1h30m), a time (2024-01-02T15:04:05Z) or Unix seconds")
}

/// A Go duration in whole seconds (`1h30m`, `90s`, `1.5h`, `0`); None when it is not one.
fn parse_go_duration(s: &str) -> Option<i64> {
    crate::runner::health::parse_duration(s)
        .ok()
        .map(|d| d.as_secs() as i64)
}

/// The labels of an image's config.
fn image_labels(store: &Store, config_digest: &str) -> BTreeMap<String, String> {
    store
        .config(config_digest)
        .ok()
        .and_then(|c| c.config().as_ref().and_then(|c| c.labels().clone()))
        .map(|l| l.into_iter().collect())
        .unwrap_or_default()
}

/// Removes dangling images (or with `all`, every image no container uses) that pass `filter`.
/// Returns docker's lines (`untagged: x`, `deleted: sha256:…`) and the bytes freed.
fn prune_images(store: &Store, all: bool, filter: &PruneFilter) -> Result<(Vec<String>, u64)> {
    let images = store.list_images()?;
    let used: HashSet<String> = store.with_conn(|c| {
        let mut stmt = c.prepare(
            "SELECT manifest FROM image_uses
             UNION SELECT x.idx FROM index_manifests x JOIN image_uses u ON u.manifest = x.manifest",
        )?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))?
            .collect::<rusqlite::Result<HashSet<_>>>()?;
        Ok(rows)
    })?;
    let mut lines = Vec::new();
    let mut freed = 0;
    for img in images {
        if img.name.is_some() && !all {
            continue;
        }
        if used.contains(img.stored_digest()) || used.contains(&img.manifest_digest) {
            continue;
        }
        if !filter.before(img.created)
            || !filter.labels_match(&image_labels(store, &img.config_digest))
        {
            continue;
        }
        let spec = match &img.name {
            Some(n) => n.full(),
            None => img.stored_digest().to_string(),
        };
        match store.remove_image_counted(&spec, false) {
            Ok((report, bytes)) => {
                freed += bytes;
                lines.extend(report.into_iter().map(|l| docker_prune_line(&l)));
            }
            // Taken by a container or another kiln meanwhile: not ours to remove.
            Err(e) if store.resolve(&spec).is_ok() => {
                crate::report::report_error(&e.context(format!("image prune: keeping {spec}")));
            }
            Err(_) => {}
        }
    }
    Ok((lines, freed))
}

/// `Untagged: x` -> `untagged: x`, as docker's prune prints them.
fn docker_prune_line(line: &str) -> String {
    let mut chars = line.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Removes the containers that are not running and pass `filter`: their full IDs and the bytes
/// freed.
fn prune_containers(store: &Store, filter: &PruneFilter) -> Result<(Vec<String>, u64)> {
    let mut ids = Vec::new();
    let mut freed = 0;
    let no_labels = BTreeMap::new();
    for rec in state::list(store)? {
        if rec.status() == Status::Running {
            continue;
        }
        if !filter.before(rec.created_ns / 1_000_000_000) || !filter.labels_match(&no_labels) {
            continue;
        }
        let bytes = gc::freed_by_removing(&runner::lifecycle::container_dir(store, &rec.id));
        match runner::rm(store, &rec, false, false) {
            Ok(()) => {
                freed += bytes;
                ids.push(rec.id.clone());
            }
            // Started again meanwhile: it is not stopped any more.
            Err(_) if state::get(store, &rec.id)?.is_some_and(|r| r.owner_alive()) => {}
            Err(e) => return Err(e),
        }
    }
    Ok((ids, freed))
}

/// Removes the volumes no container uses (anonymous ones, or every one with `all`): their names
/// and the bytes freed. `kiln volume prune` and `system prune --volumes`.
pub fn prune_volumes(store: &Store, all: bool) -> Result<(Vec<String>, u64)> {
    let mut names = Vec::new();
    let mut freed = 0;
    for v in state::volumes(store)? {
        if v.users.is_empty() && (all || v.anonymous) {
            let bytes = gc::freed_by_removing(&store.root().join("volumes").join(&v.name));
            if state::delete_volume_row(store, &v.name)? {
                runner::volumes::remove_dir(store.root(), &v.name)?;
                freed += bytes;
                names.push(v.name);
            }
        }
    }
    Ok((names, freed))
}

/// `kiln volume prune [-a] [-f]`: asks as docker does, then removes and prints what went.
pub fn volume_prune(root: &Path, all: bool, force: bool) -> Result<i32> {
    let warning = if all {
        "WARNING! This will remove all local volumes not used by at least one container.\nAre you sure you want to continue?"
    } else {
        "WARNING! This will remove anonymous local volumes not used by at least one container.\nAre you sure you want to continue?"
    };
    if !force && !confirm(warning)? {
        return Ok(0);
    }
    let store = runner::open_store(root)?;
    let (names, freed) = prune_volumes(&store, all)?;
    print_section("Deleted Volumes:", &names)?;
    crate::outln!("Total reclaimed space: {}", human_size(freed))?;
    Ok(0)
}

/// One removed build cache object, as `builder prune` lists it.
#[derive(Debug, Clone)]
struct PrunedItem {
    id: String,
    size: u64,
    last_used_ms: i64,
    /// A cache mount (BuildKit's mutable records are marked `*`).
    mutable: bool,
}

#[derive(Debug, Default)]
struct PrunedCache {
    items: Vec<PrunedItem>,
    freed: u64,
}

/// A cache key or cache mount directory as a BuildKit-like ID (25 characters).
fn cache_id(key: &str) -> String {
    key.trim_start_matches("sha256:").chars().take(25).collect()
}

fn prune_build_cache(
    store: &Store,
    all: bool,
    keep: Option<u64>,
    filter: &PruneFilter,
) -> Result<PrunedCache> {
    let policy = Policy {
        keep_bytes: keep,
        used_before: filter.until.map(|t| t.saturating_mul(1000)),
        include_shared: all,
    };
    let collected = store.collect_build_cache(&policy)?;
    let mut out = PrunedCache {
        freed: collected.freed,
        ..PrunedCache::default()
    };
    for g in &collected.groups {
        push_group(&mut out.items, g);
    }
    // With -a (and nothing asked to be kept): the cache mounts and the recorded inputs too.
    if all && keep.is_none() && filter.until.is_none() {
        let (mounts, freed) = store.remove_cache_mounts()?;
        out.freed += freed;
        for m in mounts {
            out.items.push(PrunedItem {
                id: cache_id(&m),
                size: 0,
                last_used_ms: 0,
                mutable: true,
            });
        }
        store.forget_step_inputs()?;
    }
    Ok(out)
}

fn push_group(items: &mut Vec<PrunedItem>, g: &CacheGroup) {
    if g.keys.is_empty() {
        // A layer pinned for records that were replaced: listed by its DiffID.
        if let Some(d) = &g.diff_id {
            items.push(PrunedItem {
                id: cache_id(d),
                size: g.size,
                last_used_ms: 0,
                mutable: false,
            });
        }
        return;
    }
    for (i, key) in g.keys.iter().enumerate() {
        items.push(PrunedItem {
            id: cache_id(key),
            size: if i == 0 { g.size } else { 0 },
            last_used_ms: g.last_used,
            mutable: false,
        });
    }
}

/// What `docker builder prune` (buildx) prints: a table of what went (Go's tabwriter padding
/// with tabs), then `Total:\t<size>`.
fn builder_prune_table(p: &PrunedCache) -> String {
    let now = gc::now_ms();
    let mut rows = Vec::new();
    for i in &p.items {
        let id = if i.mutable {
            format!("{}*", i.id)
        } else {
            i.id.clone()
        };
        let last = if i.last_used_ms > 0 {
            format!("{} ago", human_duration((now - i.last_used_ms) / 1000))
        } else {
            String::new()
        };
        rows.push(vec![
            format!("{id:<40}"),
            format!("{:<5}", true),
            format!("{:<10}", human_size(i.size)),
            last,
        ]);
    }
    let mut text = String::new();
    if !rows.is_empty() {
        let header = ["ID", "RECLAIMABLE", "SIZE", "LAST ACCESSED"].map(String::from);
        let mut all = vec![header.to_vec()];
        all.extend(rows);
        text.push_str(&tab_padded(&all));
    }
    text.push_str(&tab_padded(&[vec![
        "Total:".to_string(),
        human_size(p.freed),
    ]]));
    text
}

/// Go's tabwriter with minwidth 1, tabwidth 8, padding 1 and tabs as the padding character
/// (buildx's): each cell but the last is followed by tabs to its column's width (the widest
/// cell plus one, rounded up to a multiple of 8).
fn tab_padded(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0usize; cols];
    for r in rows {
        for (i, c) in r.iter().enumerate().take(r.len().saturating_sub(1)) {
            widths[i] = widths[i].max(c.chars().count() + 1);
        }
    }
    let mut out = String::new();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            out.push_str(c);
            if i + 1 < r.len() {
                let cell = widths[i].div_ceil(8) * 8;
                let n = cell - c.chars().count();
                out.push_str(&"\t".repeat(n.div_ceil(8)));
            }
        }
        out.push('\n');
    }
    out
}

/// The four rows of `system df`, as docker's formatter fills them.
#[derive(Debug, Clone, PartialEq)]
struct DfRow {
    kind: &'static str,
    total: usize,
    active: usize,
    size: u64,
    reclaimable: u64,
    /// Images, containers and volumes show the reclaimable share; the build cache does not.
    percent: bool,
}

impl DfRow {
    fn reclaimable_text(&self) -> String {
        if self.percent && self.size > 0 {
            format!(
                "{} ({}%)",
                human_size(self.reclaimable),
                self.reclaimable * 100 / self.size
            )
        } else {
            human_size(self.reclaimable)
        }
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "Active": self.active.to_string(),
            "Reclaimable": self.reclaimable_text(),
            "Size": human_size(self.size),
            "TotalCount": self.total.to_string(),
            "Type": self.kind,
        })
    }
}

const DF_HEADERS: &[(&str, &str)] = &[
    ("Type", "TYPE"),
    ("TotalCount", "TOTAL"),
    ("Active", "ACTIVE"),
    ("Size", "SIZE"),
    ("Reclaimable", "RECLAIMABLE"),
];

fn system_df(store: &Store, verbose: bool, format: Option<&str>) -> Result<i32> {
    use super::template::Format;
    let fmt = Format::parse(format).context("system df: --format")?;
    if verbose && !matches!(fmt, Format::DefaultTable) {
        bail!("system df: -v prints docker's tables; it cannot be combined with --format here");
    }
    let usage = store.disk_usage()?;
    let containers = state::list(store)?;
    let mut seen = HashSet::new();
    let mut container_sizes = Vec::new();
    for c in &containers {
        let upper = runner::lifecycle::container_dir(store, &c.id).join("upper");
        container_sizes.push(gc::tree_size(&upper, &mut seen));
    }
    let volumes = state::volumes(store)?;
    let volume_sizes: Vec<u64> = volumes
        .iter()
        .map(|v| gc::tree_size(&store.root().join("volumes").join(&v.name), &mut seen))
        .collect();
    let running = |c: &state::ContainerRecord| c.status() == Status::Running;
    let rows = [
        DfRow {
            kind: "Images",
            total: usage.image_count,
            active: usage.images_active,
            size: usage.images_size,
            reclaimable: usage.images_reclaimable,
            percent: true,
        },
        DfRow {
            kind: "Containers",
            total: containers.len(),
            active: containers.iter().filter(|c| running(c)).count(),
            size: container_sizes.iter().sum(),
            reclaimable: containers
                .iter()
                .zip(&container_sizes)
                .filter(|(c, _)| !running(c))
                .map(|(_, s)| s)
                .sum(),
            percent: true,
        },
        DfRow {
            kind: "Local Volumes",
            total: volumes.len(),
            active: volumes.iter().filter(|v| !v.users.is_empty()).count(),
            size: volume_sizes.iter().sum(),
            reclaimable: volumes
                .iter()
                .zip(&volume_sizes)
                .filter(|(v, _)| v.users.is_empty())
                .map(|(_, s)| s)
                .sum(),
            percent: true,
        },
        DfRow {
            kind: "Build Cache",
            total: usage.cache.len() + usage.cache_mounts.len(),
            active: usage.cache.iter().filter(|c| c.in_use).count()
                + usage.cache_mounts.iter().filter(|m| m.2).count(),
            size: usage.cache_size,
            reclaimable: usage.cache_reclaimable,
            percent: false,
        },
    ];
    let objects: Vec<serde_json::Value> = rows.iter().map(DfRow::json).collect();
    match &fmt {
        Format::Json => {
            for o in &objects {
                crate::outln!("{o}")?;
            }
            return Ok(0);
        }
        Format::DefaultTable => {}
        _ => {
            if let Some(text) = fmt
                .render(DF_HEADERS, &objects)
                .context("system df: --format")?
            {
                crate::out!("{text}")?;
            }
            return Ok(0);
        }
    }
    let mut out = crate::report::stdout();
    if !verbose {
        let table: Vec<Vec<String>> = rows
            .iter()
            .map(|r| {
                vec![
                    r.kind.to_string(),
                    r.total.to_string(),
                    r.active.to_string(),
                    human_size(r.size),
                    r.reclaimable_text(),
                ]
            })
            .collect();
        super::table::write(
            &mut out,
            &["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"],
            &table,
        )?;
        return Ok(0);
    }
    let now = chrono::Utc::now().timestamp();
    crate::outln!("Images space usage:\n")?;
    let image_rows: Vec<Vec<String>> = usage
        .images
        .iter()
        .map(|i| {
            let (repo, tag) = match &i.record.name {
                Some(n) => {
                    let short = n.to_string();
                    match n.tag() {
                        Some(t) => (
                            short
                                .strip_suffix(&format!(":{t}"))
                                .unwrap_or(&short)
                                .to_string(),
                            t.to_string(),
                        ),
                        None => (short, "<none>".into()),
                    }
                }
                None => ("<none>".into(), "<none>".into()),
            };
            vec![
                repo,
                tag,
                i.record.short_id().to_string(),
                format!("{} ago", human_duration(now - i.record.created)),
                human_size_precision(i.size, 3),
                human_size(i.shared),
                human_size(i.size - i.shared),
                i.containers.to_string(),
            ]
        })
        .collect();
    super::table::write(
        &mut out,
        &[
            "REPOSITORY",
            "TAG",
            "IMAGE ID",
            "CREATED",
            "SIZE",
            "SHARED SIZE",
            "UNIQUE SIZE",
            "CONTAINERS",
        ],
        &image_rows,
    )?;
    crate::outln!("\nContainers space usage:\n")?;
    let container_rows: Vec<Vec<String>> = containers
        .iter()
        .zip(&container_sizes)
        .map(|(c, size)| {
            let command = super::table::ellipsis(&c.config.args().join(" "), 20);
            let volumes = c
                .config
                .mounts
                .iter()
                .filter(|m| m.kind == runner::config::MountType::Volume)
                .count();
            let ago = |ns: i64| human_duration(now - ns / 1_000_000_000);
            let status = match c.status() {
                Status::Running => format!("Up {}", ago(c.started_ns)),
                Status::Created => "Created".into(),
                Status::Exited => format!(
                    "Exited ({}) {} ago",
                    c.shown_exit_code(),
                    ago(c.finished_ns.max(c.created_ns))
                ),
            };
            vec![
                c.short_id().to_string(),
                c.image.clone(),
                format!("\"{command}\""),
                volumes.to_string(),
                human_size_precision(*size, 3),
                format!("{} ago", ago(c.created_ns)),
                status,
                c.name.clone(),
            ]
        })
        .collect();
    super::table::write(
        &mut out,
        &[
            "CONTAINER ID",
            "IMAGE",
            "COMMAND",
            "LOCAL VOLUMES",
            "SIZE",
            "CREATED",
            "STATUS",
            "NAMES",
        ],
        &container_rows,
    )?;
    crate::outln!("\nLocal Volumes space usage:\n")?;
    let volume_rows: Vec<Vec<String>> = volumes
        .iter()
        .zip(&volume_sizes)
        .map(|(v, s)| vec![v.name.clone(), v.users.len().to_string(), human_size(*s)])
        .collect();
    super::table::write(&mut out, &["VOLUME NAME", "LINKS", "SIZE"], &volume_rows)?;
    crate::outln!("\nBuild cache usage: {}\n", human_size(usage.cache_size))?;
    let now_ms = gc::now_ms();
    let mut cache_rows: Vec<Vec<String>> = usage
        .cache
        .iter()
        .map(|c| {
            vec![
                cache_id(&c.record.key).chars().take(12).collect(),
                "regular".into(),
                human_size(c.size),
                format!("{} ago", human_duration(now - c.record.created)),
                format!(
                    "{} ago",
                    human_duration((now_ms - c.record.last_used) / 1000)
                ),
                c.record.uses.to_string(),
                c.shared.to_string(),
            ]
        })
        .collect();
    for (name, size, _) in &usage.cache_mounts {
        cache_rows.push(vec![
            name.chars().take(12).collect(),
            "exec.cachemount".into(),
            human_size(*size),
            String::new(),
            String::new(),
            String::new(),
            "false".into(),
        ]);
    }
    super::table::write(
        &mut out,
        &[
            "CACHE ID",
            "CACHE TYPE",
            "SIZE",
            "CREATED",
            "LAST USED",
            "USAGE",
            "SHARED",
        ],
        &cache_rows,
    )?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_go_units_human_size() {
        // docker-ref system df: 2.831GB, 283.9MB, 35B, 0B, 199.5kB, 11.63MB.
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(35), "35B");
        assert_eq!(human_size(199_500), "199.5kB");
        assert_eq!(human_size(11_630_000), "11.63MB");
        assert_eq!(human_size(283_900_000), "283.9MB");
        assert_eq!(human_size(2_831_000_000), "2.831GB");
        assert_eq!(human_size(1_000), "1kB");
        assert_eq!(human_size(999_999), "1000kB");
        // The image SIZE column of -v: three digits (1.98MB beside a shared 1.984MB).
        assert_eq!(human_size_precision(1_984_000, 3), "1.98MB");
        assert_eq!(human_size(1_984_000), "1.984MB");
    }

    #[test]
    fn df_rows_show_docker_reclaimable_shares() {
        let row = DfRow {
            kind: "Images",
            total: 64,
            active: 1,
            size: 2_831_000_000,
            reclaimable: 2_831_000_000,
            percent: true,
        };
        assert_eq!(row.reclaimable_text(), "2.831GB (100%)");
        let empty = DfRow {
            size: 0,
            reclaimable: 0,
            ..row.clone()
        };
        assert_eq!(empty.reclaimable_text(), "0B");
        let cache = DfRow {
            percent: false,
            size: 283_900_000,
            reclaimable: 283_900_000,
            ..row.clone()
        };
        assert_eq!(cache.reclaimable_text(), "283.9MB");
        let half = DfRow {
            size: 300,
            reclaimable: 100,
            ..row
        };
        assert_eq!(half.reclaimable_text(), "100B (33%)");
        // docker-ref system df --format '{{json .}}'
        assert_eq!(
            cache.json().to_string(),
            r#"{"Active":"1","Reclaimable":"283.9MB","Size":"283.9MB","TotalCount":"64","Type":"Images"}"#
        );
    }

    #[test]
    fn filters_parse_as_docker_reads_them() {
        let now = 1_700_000_000;
        let f = PruneFilter::parse_at(
            &["until=24h".into(), "label=a=b".into(), "label!=skip".into()],
            &["until", "label", "label!"],
            "image prune",
            now,
        )
        .unwrap();
        assert_eq!(f.until, Some(now - 86_400));
        assert!(f.before(now - 90_000));
        assert!(!f.before(now - 3_600));
        let mut labels = BTreeMap::new();
        labels.insert("a".to_string(), "b".to_string());
        assert!(f.labels_match(&labels));
        labels.insert("skip".to_string(), "1".to_string());
        assert!(!f.labels_match(&labels));
        assert!(!f.labels_match(&BTreeMap::new()));
        let err = PruneFilter::parse_at(&["bogus=1".into()], &["until"], "builder prune", now)
            .unwrap_err();
        assert!(
            format!("{err:#}").contains("invalid filter 'bogus'"),
            "{err:#}"
        );
        assert!(PruneFilter::parse_at(&["until".into()], &["until"], "x", now).is_err());
        assert!(PruneFilter::parse_at(&["until=soon".into()], &["until"], "x", now).is_err());
    }

    #[test]
    fn until_takes_durations_times_and_unix_seconds() {
        let now = 1_700_000_000;
        assert_eq!(parse_until("1h30m", now).unwrap(), now - 5_400);
        assert_eq!(parse_until("10m", now).unwrap(), now - 600);
        assert_eq!(parse_until("1.5h", now).unwrap(), now - 5_400);
        assert_eq!(
            parse_until("2023-11-14T22:13:20Z", now).unwrap(),
            1_700_000_000
        );
        assert_eq!(parse_until("2023-11-14", now).unwrap(), 1_699_920_000);
        assert_eq!(parse_until("1699999999.5", now).unwrap(), 1_699_999_999);
    }

    #[test]
    fn durations_are_docker_human_durations() {
        assert_eq!(human_duration(0), "Less than a second");
        assert_eq!(human_duration(11), "11 seconds");
        assert_eq!(human_duration(90), "About a minute");
        assert_eq!(human_duration(29 * 60), "29 minutes");
        assert_eq!(human_duration(3_600), "About an hour");
        assert_eq!(human_duration(5 * 3_600), "5 hours");
        assert_eq!(human_duration(3 * 86_400), "3 days");
    }

    #[test]
    fn builder_prune_prints_buildx_tab_padded_table() {
        // docker-ref builder prune -f --filter id=… (Docker 28.5, buildx):
        // "ID\t\t\t\t\t\tRECLAIMABLE\tSIZE\t\tLAST ACCESSED\n"
        // "koo82d2seb4wnum5b9uyjynnx*              \ttrue \t\t0B        \t11 seconds ago\n"
        // "Total:\t0B\n"
        let p = PrunedCache {
            items: vec![PrunedItem {
                id: "koo82d2seb4wnum5b9uyjynnx".into(),
                size: 0,
                last_used_ms: gc::now_ms() - 11_000,
                mutable: true,
            }],
            freed: 0,
        };
        assert_eq!(
            builder_prune_table(&p),
            "ID\t\t\t\t\t\tRECLAIMABLE\tSIZE\t\tLAST ACCESSED\n\
             koo82d2seb4wnum5b9uyjynnx*              \ttrue \t\t0B        \t11 seconds ago\n\
             Total:\t0B\n"
        );
        // Nothing removed: docker-ref builder prune -f --filter until=876000h
        assert_eq!(builder_prune_table(&PrunedCache::default()), "Total:\t0B\n");
    }

    #[test]
    fn prune_lines_are_lowercase_as_docker_prints_them() {
        assert_eq!(
            docker_prune_line("Untagged: a:latest"),
            "untagged: a:latest"
        );
        assert_eq!(
            docker_prune_line("Deleted: sha256:ab"),
            "deleted: sha256:ab"
        );
    }
}
