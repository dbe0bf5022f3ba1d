//! `kiln ps --filter KEY=VALUE`, `-n N`, `-l`, `-s`, as docker's: `status=` (created, running,
//! paused, restarting, removing, exited, dead), `name=` (a regular expression, found anywhere
//! in the name), `label=K[=V]` (the image's labels, which a container carries), `ancestor=`
//! (an image name or ID: containers of that image), `exited=N` (exited containers with that
//! code), `id=` (an ID prefix), `before=`/`since=` (created before / after a container).
//! Several values of one key match when any does (`label=` when all do), different keys must
//! all match.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::runner::state::{self, ContainerRecord, Status};
use crate::store::Store;

const STATES: &[&str] = &[
    "created",
    "running",
    "paused",
    "restarting",
    "removing",
    "exited",
    "dead",
];

#[derive(Debug, Default)]
pub struct PsFilter {
    statuses: Vec<String>,
    names: Vec<regex::Regex>,
    labels: Vec<super::image_filter::LabelFilter>,
    /// Image IDs (config digests); `Some(empty)` when no image had the name given.
    ancestors: Option<Vec<String>>,
    exited: Vec<i32>,
    ids: Vec<String>,
    before: Option<i64>,
    since: Option<i64>,
}

impl PsFilter {
    /// Parses the filters; images (`ancestor=`) are looked up in `images`, containers
    /// (`before=`, `since=`) in `containers`.
    pub fn parse(images: &Store, containers: &Store, filters: &[String]) -> Result<PsFilter> {
        let mut out = PsFilter::default();
        for raw in filters {
            let (key, value) = super::image_filter::split_filter(raw)?;
            match key {
                "status" => {
                    if !STATES.contains(&value) {
                        bail!(
                            "invalid filter 'status={value}': invalid value for state ({value}): \
                             must be one of {}",
                            STATES.join(", ")
                        );
                    }
                    out.statuses.push(value.to_string());
                }
                "name" => out.names.push(super::image_filter::name_pattern(value)?),
                "label" => out
                    .labels
                    .push(super::image_filter::LabelFilter::parse(value)),
                "ancestor" => {
                    let ids = out.ancestors.get_or_insert_with(Vec::new);
                    // An image that does not exist matches nothing, as docker's (no error).
                    if let Ok(img) = images.resolve(value) {
                        ids.push(img.config_digest.clone());
                        if let Some(index) = &img.index {
                            ids.extend(index.manifests.iter().map(|m| m.config_digest.clone()));
                        }
                    }
                }
                "exited" => out.exited.push(value.parse().with_context(|| {
                    format!("invalid filter 'exited={value}': not an exit code")
                })?),
                "id" => out.ids.push(value.to_string()),
                "before" | "since" => {
                    let c = state::find(containers, value)
                        .with_context(|| format!("invalid filter '{key}={value}'"))?;
                    if key == "before" {
                        out.before = Some(c.created_ns);
                    } else {
                        out.since = Some(c.created_ns);
                    }
                }
                other => bail!(
                    "invalid filter '{other}': containers filter by status, name, label, \
                     ancestor, exited, id, before or since"
                ),
            }
        }
        Ok(out)
    }

    /// Whether the filters choose the states themselves (`status=`): `ps` without `-a` then
    /// looks at every container, as docker's does (`exited=N` alone does not).
    pub fn wants_stopped(&self) -> bool {
        !self.statuses.is_empty()
    }

    pub fn needs_labels(&self) -> bool {
        !self.labels.is_empty()
    }

    /// Whether a container passes: `state_name` as `ps` shows it (`running`, `paused`, ...),
    /// `labels` the container's.
    pub fn matches(
        &self,
        rec: &ContainerRecord,
        state_name: &str,
        labels: &BTreeMap<String, String>,
    ) -> bool {
        if !self.statuses.is_empty() && !self.statuses.iter().any(|s| s == state_name) {
            return false;
        }
        if !self.names.is_empty() && !self.names.iter().any(|r| r.is_match(&rec.name)) {
            return false;
        }
        if !super::image_filter::LabelFilter::all_match(&self.labels, labels) {
            return false;
        }
        if let Some(ids) = &self.ancestors {
            if !ids.contains(&rec.image_id) {
                return false;
            }
        }
        if !self.exited.is_empty()
            && (rec.status() != Status::Exited || !self.exited.contains(&rec.shown_exit_code()))
        {
            return false;
        }
        if !self.ids.is_empty() && !self.ids.iter().any(|p| rec.id.starts_with(p.as_str())) {
            return false;
        }
        if self.before.is_some_and(|t| rec.created_ns >= t) {
            return false;
        }
        if self.since.is_some_and(|t| rec.created_ns <= t) {
            return false;
        }
        true
    }
}

/// The labels a container carries: its image's (`config.Labels`) with its own `--label`s over
/// them (the record keeps both; a record of an older kiln only its `--label`s, or none).
pub fn container_labels(images: &Store, rec: &ContainerRecord) -> BTreeMap<String, String> {
    let mut labels = image_labels(images, rec);
    labels.extend(rec.config.labels.clone());
    labels
}

fn image_labels(images: &Store, rec: &ContainerRecord) -> BTreeMap<String, String> {
    images
        .read_blob(&rec.image_id)
        .map(|config| super::image_filter::config_labels(&config))
        .unwrap_or_default()
}

/// The bytes of a directory tree as docker counts a container's writable layer: files (each
/// inode once) and symlinks; directories count nothing. A missing directory is 0.
pub fn dir_content_size(dir: &Path) -> u64 {
    let mut seen = std::collections::HashSet::new();
    let mut total = 0;
    for entry in walkdir::WalkDir::new(dir).into_iter().flatten() {
        let Ok(meta) = entry.path().symlink_metadata() else {
            continue;
        };
        if meta.is_dir() {
            continue;
        }
        if meta.nlink() > 1 && !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        total += meta.len();
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_size_counts_files_and_symlinks_once() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), "hello\n").unwrap();
        std::fs::hard_link(dir.path().join("f"), dir.path().join("g")).unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::os::unix::fs::symlink("f", dir.path().join("d/l")).unwrap();
        assert_eq!(dir_content_size(dir.path()), 6 + 1);
        assert_eq!(dir_content_size(&dir.path().join("missing")), 0);
    }
}
