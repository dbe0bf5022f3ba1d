//! What a COPY selects from a tree (the build context, a stage, a checkout): its sources expanded
//! (Go-style globs, literal paths checked against `.dockerignore`) and its `--exclude` patterns.
//! The solver hashes exactly this selection; the copy operation copies it.

use std::fs;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::source::fsutil::{clean_rel, expand_glob, has_glob_meta, resolve_in_root, PathFilter};

/// `--exclude` patterns (Go globs, `*` does not cross `/`). A pattern without `/` also matches a
/// base name at any depth, so `--exclude=*.txt` drops every text file.
pub struct ExcludeSet {
    full: globset::GlobSet,
    base: globset::GlobSet,
    empty: bool,
}

impl ExcludeSet {
    pub fn new(patterns: &[String]) -> Result<ExcludeSet> {
        let mut full = globset::GlobSetBuilder::new();
        let mut base = globset::GlobSetBuilder::new();
        for p in patterns {
            let cleaned = clean_rel(p);
            let glob = globset::GlobBuilder::new(&cleaned)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .with_context(|| format!("invalid --exclude pattern {p:?}"))?;
            if cleaned.contains('/') {
                full.add(glob);
            } else {
                base.add(glob);
            }
        }
        Ok(ExcludeSet {
            full: full.build()?,
            base: base.build()?,
            empty: patterns.is_empty(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.empty
    }

    pub fn is_excluded(&self, rel: &str) -> bool {
        if self.empty {
            return false;
        }
        let name = rel.rsplit('/').next().unwrap_or(rel);
        self.full.is_match(rel) || self.base.is_match(name)
    }
}

/// Where a COPY reads from.
pub struct CopySource<'a> {
    pub root: &'a Path,
    /// `.dockerignore` for the context; `NoFilter` for a stage.
    pub filter: &'a dyn PathFilter,
    /// Files from the build context are owned by root in the image unless `--chown` says
    /// otherwise; files from a stage or image keep their owners.
    pub from_context: bool,
}

/// The sources a COPY selects, expanded: paths relative to the source root. A literal source that
/// does not exist is an error; a pattern that matches nothing selects nothing (as BuildKit).
pub fn expand_sources(src: &CopySource, sources: &[String]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for s in sources {
        if has_glob_meta(s) {
            out.extend(expand_glob(src.root, s, src.filter)?);
        } else {
            let rel = clean_rel(s);
            let exists = resolve_in_root(src.root, &rel)
                .map(|p| fs::symlink_metadata(p).is_ok())
                .unwrap_or(false);
            if !exists || (!rel.is_empty() && src.filter.is_excluded(&rel)) {
                bail!("\"/{rel}\": not found");
            }
            out.push(rel);
        }
    }
    Ok(out)
}
