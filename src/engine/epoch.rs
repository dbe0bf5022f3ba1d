//! `SOURCE_DATE_EPOCH`: the time a reproducible build stamps everything with. Its value comes
//! from `--build-arg SOURCE_DATE_EPOCH=…`, else the environment, else the Dockerfile's global
//! `ARG SOURCE_DATE_EPOCH=…` default (Dockerfile 1.20), and is one of:
//! - seconds since the epoch;
//! - `context`: the main context's commit time. A local directory has none (BuildKit gives
//!   none either), so the build is stamped with no epoch and a warning says so;
//! - the name of a stage that is `FROM scratch` plus ARGs and exactly one ADD of a git
//!   repository (its commit's time) or of an HTTP(S) archive (the newest mtime of its regular
//!   files), as BuildKit resolves it. The stage itself is never built for this.
//!
//! A value that is not a number is replaced by the number it resolves to for the whole build
//! (the build arg RUN steps see), or by nothing.

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Context, Result};

use crate::dockerfile::{Instruction, Stages};
use crate::store::Store;

/// The raw value, from the build args, the environment or the global ARG default.
pub fn raw_value(build_args: &BTreeMap<String, String>, stages: &Stages) -> Option<String> {
    if let Some(v) = build_args.get("SOURCE_DATE_EPOCH") {
        return Some(v.clone());
    }
    if let Ok(v) = std::env::var("SOURCE_DATE_EPOCH") {
        return Some(v);
    }
    stages
        .global_args
        .iter()
        .find(|(k, _)| k == "SOURCE_DATE_EPOCH")
        .and_then(|(_, v)| v.clone())
        .filter(|v| !v.is_empty())
}

/// What a value means: `Ok(None)` for no epoch.
pub fn resolve(value: &str, stages: &Stages, store: &Store) -> Result<Option<i64>> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    if let Ok(n) = value.parse::<i64>() {
        return Ok(Some(n));
    }
    if value == "context" {
        crate::errln!(
            "warning: SOURCE_DATE_EPOCH=context: a local build context has no commit time; \
             building without SOURCE_DATE_EPOCH (give seconds, or a stage that ADDs a git \
             repository)"
        );
        return Ok(None);
    }
    let Some(stage) = stages.stages.iter().find(|s| {
        s.name
            .as_deref()
            .is_some_and(|n| n.eq_ignore_ascii_case(value))
    }) else {
        bail!(
            "invalid SOURCE_DATE_EPOCH: {value} (expected seconds since the epoch, `context`, \
             or the name of a stage)"
        );
    };
    let at = |what: String| anyhow!("SOURCE_DATE_EPOCH stage {value}: {what}");
    if !stage.base.eq_ignore_ascii_case("scratch") {
        return Err(at("SOURCE_DATE_EPOCH stage must use FROM scratch".into()));
    }
    // The stage's ARGs (with the build args) expand the ADD's words, nothing else may be there.
    let mut vars = stages.vars(&[]);
    let mut source: Option<(String, Option<String>)> = None;
    for step in &stage.instructions {
        let expanded = vars
            .apply(&step.instruction)
            .map_err(|e| at(format!("line {}: {e}", step.span.start_line)))?;
        match expanded {
            Instruction::Arg(_) => {}
            Instruction::Add(c) => {
                if source.is_some() {
                    return Err(at(
                        "SOURCE_DATE_EPOCH stage must contain exactly one remote ADD".into(),
                    ));
                }
                if !c.heredocs.is_empty() || c.sources.len() != 1 {
                    return Err(at(
                        "SOURCE_DATE_EPOCH stage must contain exactly one remote ADD source".into(),
                    ));
                }
                source = Some((c.sources[0].clone(), c.checksum.clone()));
            }
            other => {
                return Err(at(format!(
                    "SOURCE_DATE_EPOCH stage does not meet source-only requirements: \
                     unsupported {} instruction",
                    other.keyword()
                )))
            }
        }
    }
    let (src, checksum) = source
        .ok_or_else(|| at("SOURCE_DATE_EPOCH stage must contain exactly one remote ADD".into()))?;
    if let Some(url) = crate::source::git::parse_checked(&src)? {
        let checksum = checksum.or(url.query.checksum.clone());
        let resolved = crate::source::git::resolve(&url, checksum.as_deref())?;
        let source = crate::source::git::GitSource {
            url,
            resolved,
            keep_git_dir: false,
        };
        let checkout = crate::source::git::checkout(&source, &store.tmp_dir(), Some(0))?;
        return Ok(checkout.commit_time);
    }
    if src.starts_with("http://") || src.starts_with("https://") {
        let data = crate::source::http::fetch(&src, checksum.as_deref())?;
        return newest_archive_mtime(&data)
            .with_context(|| format!("SOURCE_DATE_EPOCH stage {value}: reading {src}"));
    }
    Err(at(
        "SOURCE_DATE_EPOCH stage source must be a single HTTP(S) or Git ADD".into(),
    ))
}

/// The newest mtime of an archive's regular files; `None` when it is not an archive.
fn newest_archive_mtime(data: &[u8]) -> Result<Option<i64>> {
    if !crate::source::archive::is_archive_data(data) {
        return Ok(None);
    }
    let (reader, _) =
        crate::source::archive::decompressing_reader(std::io::Cursor::new(data.to_vec()))?;
    let mut archive = tar::Archive::new(reader);
    let mut newest: Option<i64> = None;
    for entry in archive.entries()? {
        let entry = entry?;
        let header = entry.header();
        if header.entry_type().is_file() {
            let t = header.mtime()? as i64;
            newest = Some(newest.map_or(t, |n| n.max(t)));
        }
    }
    Ok(newest)
}
