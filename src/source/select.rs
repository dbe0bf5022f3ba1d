//! What a COPY selects from a tree (the build context, a stage, a checkout): its sources expanded
//! (Go-style globs, literal paths checked against `.dockerignore`) and its `--exclude` patterns.
//! The solver hashes exactly this selection; the copy operation copies it.

use std::fs;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::source::fsutil::{clean_rel, expand_glob, has_glob_meta, resolve_in_root, PathFilter};

/// `--exclude` patterns (Go globs, `*` does not cross `/`), each matched against the path
/// relative to the COPY's source from its start, as BuildKit's pattern matcher does:
/// `--exclude=*.log` leaves out `a.log` but copies `sub/b.log` (`**/*.log` leaves out both).
pub struct ExcludeSet {
    globs: globset::GlobSet,
    empty: bool,
}

impl ExcludeSet {
    pub fn new(patterns: &[String]) -> Result<ExcludeSet> {
        let mut globs = globset::GlobSetBuilder::new();
        for p in patterns {
            let cleaned = clean_rel(p);
            let glob = globset::GlobBuilder::new(&cleaned)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .with_context(|| format!("invalid --exclude pattern {p:?}"))?;
            globs.add(glob);
        }
        Ok(ExcludeSet {
            globs: globs.build()?,
            empty: patterns.is_empty(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.empty
    }

    /// Whether `rel` (relative to the COPY's source) is left out: it or a directory above it
    /// matches a pattern (as BuildKit: `a` and `a/` leave out all of `a`, `a/*` all below `a`
    /// but `a` itself), so an excluded directory is skipped whole.
    pub fn is_excluded(&self, rel: &str) -> bool {
        if self.empty {
            return false;
        }
        let matches = |p: &str| self.globs.is_match(p);
        rel.match_indices('/')
            .map(|(i, _)| &rel[..i])
            .chain(std::iter::once(rel))
            .any(matches)
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

#[cfg(test)]
mod tests {
    use super::ExcludeSet;

    fn set(p: &[&str]) -> ExcludeSet {
        ExcludeSet::new(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn excludes_in_buildkit_forms() {
        // `./a`, `a/` and `a` leave out a and all below it.
        for p in ["./a", "a/", "a"] {
            let s = set(&[p]);
            for rel in ["a", "a/x", "a/sub/y"] {
                assert!(s.is_excluded(rel), "{p} {rel}");
            }
            assert!(!s.is_excluded("b") && !s.is_excluded("ab"), "{p}");
        }
        // `a/*` leaves out everything below a, but not a.
        let s = set(&["a/*"]);
        assert!(!s.is_excluded("a"));
        assert!(s.is_excluded("a/x") && s.is_excluded("a/sub") && s.is_excluded("a/sub/y"));
        // A path pattern is relative to the source: `c/d` under src, not `src/c/d`.
        assert!(set(&["c/d"]).is_excluded("c/d/f"));
        assert!(!set(&["src/c/d"]).is_excluded("c/d/f"));
        // A pattern without `/` is anchored at the source's top (Docker 28's BuildKit).
        let s = set(&["*.log"]);
        assert!(s.is_excluded("a.log") && !s.is_excluded("sub/b.log"));
        let s = set(&["**/*.log"]);
        assert!(s.is_excluded("a.log") && s.is_excluded("sub/deep/b.log"));
    }
}
