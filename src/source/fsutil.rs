//! Path helpers shared by the context reader and COPY/ADD: lexical cleaning (so a source can never
//! name something outside the context), symlink resolution scoped to a root (so a symlink in a
//! destination image never leads outside it), and Go-style glob expansion.

use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Decides which context paths exist for the build (the `.dockerignore` rules). Paths are
/// relative to the context root, `/`-separated, without a leading `/` or `./`.
pub trait PathFilter: Send + Sync {
    /// The path is excluded from the context.
    fn is_excluded(&self, rel: &str) -> bool;
    /// Nothing below this (excluded) directory can be re-included by an exception, so a walk may
    /// skip it without reading it.
    fn can_prune_dir(&self, rel: &str) -> bool;
}

/// The filter of a context without a `.dockerignore`.
pub struct NoFilter;

impl PathFilter for NoFilter {
    fn is_excluded(&self, _rel: &str) -> bool {
        false
    }
    fn can_prune_dir(&self, _rel: &str) -> bool {
        false
    }
}

/// Cleans a path lexically as Go's `path.Clean("/" + p)` does and returns it without the leading
/// `/`: `../a/./b/` becomes `a/b`, and the root becomes the empty string. A path cleaned this way
/// cannot leave the directory it is relative to.
pub fn clean_rel(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for comp in path.split('/') {
        match comp {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.join("/")
}

/// Joins `rel` onto `root`, resolving every symlink met on the way as if `root` were `/`: an
/// absolute link target restarts at `root`, and `..` never climbs above it. The last component is
/// followed too; use `resolve_parent_in_root` to keep it.
pub fn resolve_in_root(root: &Path, rel: &str) -> Result<PathBuf> {
    let mut resolved: Vec<OsString> = Vec::new();
    let mut pending: std::collections::VecDeque<OsString> = rel
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .map(OsString::from)
        .collect();
    let mut links = 0;
    while let Some(comp) = pending.pop_front() {
        if comp == ".." {
            resolved.pop();
            continue;
        }
        let mut candidate = root.to_path_buf();
        candidate.extend(resolved.iter());
        candidate.push(&comp);
        match fs::symlink_metadata(&candidate) {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > 255 {
                    bail!("{}: too many levels of symbolic links", candidate.display());
                }
                let target = fs::read_link(&candidate)
                    .with_context(|| format!("reading link {}", candidate.display()))?;
                let target_bytes = target.as_os_str().as_bytes();
                if target_bytes.starts_with(b"/") {
                    resolved.clear();
                }
                let parts: Vec<OsString> = target_bytes
                    .split(|b| *b == b'/')
                    .filter(|c| !c.is_empty() && *c != b".")
                    .map(|c| OsString::from(std::ffi::OsStr::from_bytes(c)))
                    .collect();
                for part in parts.into_iter().rev() {
                    pending.push_front(part);
                }
            }
            _ => resolved.push(comp),
        }
    }
    let mut out = root.to_path_buf();
    out.extend(resolved.iter());
    Ok(out)
}

/// Resolves the parent of `rel` inside `root` (following symlinks, confined) and returns it with
/// the last component, which is not followed. `None` as the name for the root itself.
pub fn resolve_parent_in_root(root: &Path, rel: &str) -> Result<(PathBuf, Option<OsString>)> {
    let cleaned = clean_rel(rel);
    if cleaned.is_empty() {
        return Ok((root.to_path_buf(), None));
    }
    let (parent, name) = match cleaned.rfind('/') {
        Some(i) => (&cleaned[..i], &cleaned[i + 1..]),
        None => ("", cleaned.as_str()),
    };
    Ok((resolve_in_root(root, parent)?, Some(OsString::from(name))))
}

/// True when a COPY source is a pattern (Go's filepath.Match metacharacters).
pub fn has_glob_meta(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

fn component_matcher(pattern: &str) -> Result<globset::GlobMatcher> {
    Ok(globset::GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .with_context(|| format!("invalid pattern {pattern:?}"))?
        .compile_matcher())
}

/// Expands a source pattern against a tree: each component with metacharacters is matched against
/// the entries of its directory (as Go's filepath.Glob does), excluded paths are skipped. Returns
/// the matching paths relative to `root`, sorted, without following the last component.
pub fn expand_glob(root: &Path, pattern: &str, filter: &dyn PathFilter) -> Result<Vec<String>> {
    let cleaned = clean_rel(pattern);
    let mut current: Vec<String> = vec![String::new()];
    for comp in cleaned.split('/').filter(|c| !c.is_empty()) {
        let mut next = Vec::new();
        if has_glob_meta(comp) {
            let matcher = component_matcher(comp)?;
            for base in &current {
                let dir = resolve_in_root(root, base)?;
                let entries = match fs::read_dir(&dir) {
                    Ok(e) => e,
                    Err(_) => continue,
                };
                let mut names: Vec<String> = Vec::new();
                for entry in entries {
                    let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if matcher.is_match(&name) {
                        names.push(name);
                    }
                }
                names.sort();
                for name in names {
                    let rel = join_rel(base, &name);
                    if !filter.is_excluded(&rel) {
                        next.push(rel);
                    }
                }
            }
        } else {
            for base in &current {
                next.push(join_rel(base, comp));
            }
        }
        current = next;
    }
    // Literal trailing components may name nothing; keep only what exists.
    current.retain(|rel| {
        resolve_parent_in_root(root, rel)
            .map(|(parent, name)| match name {
                Some(n) => fs::symlink_metadata(parent.join(n)).is_ok(),
                None => true,
            })
            .unwrap_or(false)
    });
    current.sort();
    current.dedup();
    Ok(current)
}

pub fn join_rel(base: &str, name: &str) -> String {
    if base.is_empty() {
        name.to_string()
    } else {
        format!("{base}/{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::fsutil::NoFilter;
    use std::os::unix::fs::symlink;

    #[test]
    fn clean_rel_cannot_escape() {
        assert_eq!(clean_rel("../../etc/passwd"), "etc/passwd");
        assert_eq!(clean_rel("./a/./b/../c/"), "a/c");
        assert_eq!(clean_rel("/"), "");
        assert_eq!(clean_rel("."), "");
    }

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("usr/lib")).unwrap();
        symlink("/usr/lib", root.join("lib")).unwrap();
        symlink("../../../../etc", root.join("usr/escape")).unwrap();
        assert_eq!(
            resolve_in_root(root, "lib/x").unwrap(),
            root.join("usr/lib/x")
        );
        assert_eq!(
            resolve_in_root(root, "usr/escape/passwd").unwrap(),
            root.join("etc/passwd")
        );
        symlink("loop", root.join("loop")).unwrap();
        assert!(resolve_in_root(root, "loop/x").is_err());
    }

    #[test]
    fn globs_match_one_component_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("src/sub")).unwrap();
        for f in [
            "src/a.js",
            "src/b.js",
            "src/c.txt",
            "src/sub/d.js",
            "top.js",
        ] {
            fs::write(root.join(f), f).unwrap();
        }
        assert_eq!(
            expand_glob(root, "src/*.js", &NoFilter).unwrap(),
            vec!["src/a.js", "src/b.js"]
        );
        assert_eq!(
            expand_glob(root, "*/sub/*.js", &NoFilter).unwrap(),
            vec!["src/sub/d.js"]
        );
        assert_eq!(
            expand_glob(root, "src/[ab].js", &NoFilter).unwrap(),
            vec!["src/a.js", "src/b.js"]
        );
        assert!(expand_glob(root, "nothing/*", &NoFilter)
            .unwrap()
            .is_empty());
        assert_eq!(
            expand_glob(root, "top.js", &NoFilter).unwrap(),
            vec!["top.js"]
        );
    }
}
