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

/// Go's `path.Match` on a whole slash-separated name (what docker's `reference=` filters use):
/// each component of `pattern` matches the name's component at the same place (`*` never
/// crosses a `/`). A malformed pattern is an error.
pub fn go_path_match(pattern: &str, name: &str) -> Result<bool> {
    let parts: Vec<&str> = pattern.split('/').collect();
    let names: Vec<&str> = name.split('/').collect();
    let matchers = parts
        .iter()
        .map(|p| component_matcher(p))
        .collect::<Result<Vec<_>>>()?;
    Ok(matchers.len() == names.len() && matchers.iter().zip(&names).all(|(m, n)| m.is_match(n)))
}

/// One path component's pattern, matched as Go's `filepath.Match` matches (what BuildKit uses
/// for COPY sources): `*`, `?`, `[...]` classes with `^` negation and ranges, `\` escapes. No
/// POSIX classes: `[[:alpha:]]` is the class `[:alph` followed by a literal `]`.
struct ComponentMatcher {
    pattern: Vec<char>,
}

impl ComponentMatcher {
    fn is_match(&self, name: &str) -> bool {
        let name: Vec<char> = name.chars().collect();
        go_match(&self.pattern, &name).unwrap_or(false)
    }
}

fn component_matcher(pattern: &str) -> Result<ComponentMatcher> {
    let chars: Vec<char> = pattern.chars().collect();
    // Go reports a malformed pattern (an unclosed class, a trailing `\`) only when matching
    // reaches it; an empty name reaches every part of a pattern that starts with `*`.
    if let Err(()) = check_pattern(&chars) {
        bail!("invalid pattern {pattern:?}: syntax error in pattern (Go's filepath.Match syntax)");
    }
    Ok(ComponentMatcher { pattern: chars })
}

/// Whether a pattern is well formed: every class closed, every escape followed by a character.
fn check_pattern(p: &[char]) -> std::result::Result<(), ()> {
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            '\\' => {
                if i + 1 >= p.len() {
                    return Err(());
                }
                i += 2;
            }
            '[' => {
                let (_, rest) = match_class(&p[i + 1..], 'a')?;
                i = p.len() - rest.len();
            }
            _ => i += 1,
        }
    }
    Ok(())
}

/// Go's `filepath.Match` on one component. `Err` on a malformed pattern.
fn go_match(p: &[char], name: &[char]) -> std::result::Result<bool, ()> {
    match p.first() {
        None => Ok(name.is_empty()),
        Some('*') => {
            // `*` takes any run of characters (a component has no separator).
            for skip in 0..=name.len() {
                if go_match(&p[1..], &name[skip..])? {
                    return Ok(true);
                }
            }
            Ok(false)
        }
        Some('?') => match name.first() {
            Some(_) => go_match(&p[1..], &name[1..]),
            None => Ok(false),
        },
        Some('[') => {
            let Some(&c) = name.first() else {
                return Ok(false);
            };
            let (matched, rest) = match_class(&p[1..], c)?;
            if matched {
                go_match(rest, &name[1..])
            } else {
                Ok(false)
            }
        }
        Some('\\') => {
            let lit = *p.get(1).ok_or(())?;
            match name.first() {
                Some(&c) if c == lit => go_match(&p[2..], &name[1..]),
                _ => Ok(false),
            }
        }
        Some(&lit) => match name.first() {
            Some(&c) if c == lit => go_match(&p[1..], &name[1..]),
            _ => Ok(false),
        },
    }
}

/// Matches `c` against the class that starts after a `[`: returns whether it matched and the
/// pattern after the closing `]`.
fn match_class(mut p: &[char], c: char) -> std::result::Result<(bool, &[char]), ()> {
    let negated = p.first() == Some(&'^');
    if negated {
        p = &p[1..];
    }
    let mut matched = false;
    let mut ranges = 0;
    loop {
        if p.first() == Some(&']') && ranges > 0 {
            p = &p[1..];
            break;
        }
        let (lo, rest) = class_char(p)?;
        p = rest;
        let mut hi = lo;
        if p.first() == Some(&'-') {
            let (h, rest) = class_char(&p[1..])?;
            hi = h;
            p = rest;
        }
        if lo <= c && c <= hi {
            matched = true;
        }
        ranges += 1;
    }
    Ok((matched != negated, p))
}

/// One character of a class (Go's `getEsc`): not `-` or `]` unescaped, and something must follow.
fn class_char(p: &[char]) -> std::result::Result<(char, &[char]), ()> {
    let (c, rest) = match p {
        [] | ['-', ..] | [']', ..] => return Err(()),
        ['\\', c, rest @ ..] => (*c, rest),
        ['\\'] => return Err(()),
        [c, rest @ ..] => (*c, rest),
    };
    if rest.is_empty() {
        return Err(());
    }
    Ok((c, rest))
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
    #[test]
    fn component_patterns_match_as_go_filepath_match() {
        let m = |p: &str, n: &str| super::component_matcher(p).unwrap().is_match(n);
        assert!(m("*.go", "foo.go") && !m("*.go", "foo.gox"));
        assert!(m("f?o", "foo") && !m("f?o", "fo"));
        assert!(m("[a-c]ar.go", "bar.go") && !m("[^a-c]ar.go", "bar.go"));
        assert!(m("\\*x", "*x") && !m("\\*x", "ax"));
        // No POSIX classes: `[[:alpha:]]` is a class, then a literal `]`.
        assert!(!m("[[:alpha:]]ar.go", "bar.go"));
        assert!(m("[[:alpha:]]ar.go", "a]ar.go"));
        // A class cannot start with `]` (Go: syntax error).
        assert!(super::component_matcher("[]a]").is_err());
        assert!(super::component_matcher("[abc").is_err());
        assert!(super::component_matcher("abc\\").is_err());
    }

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
