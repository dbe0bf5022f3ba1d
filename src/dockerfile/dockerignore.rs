//! `.dockerignore` with moby's semantics (`moby/patternmatcher` and `dockerignore.ReadAll`):
//!
//! - one pattern a line; `#` lines are comments; blank lines and surrounding white space are
//!   ignored; a leading `!` makes an exception (re-includes what earlier patterns excluded);
//! - patterns are cleaned like Go's `filepath.Clean` and taken relative to the context root
//!   (a leading `/` is dropped), so `foo` matches only `<root>/foo`, never `a/foo` (unlike
//!   gitignore);
//! - Go `filepath.Match` globs (`*` and `?` never cross `/`, `[a-z]` classes, `\` escapes) plus
//!   `**`, which matches any number of directories (zero included);
//! - the last matching pattern wins, and a pattern that matches a directory matches everything
//!   below it;
//! - `<Dockerfile>.dockerignore` beside the Dockerfile takes precedence over the context's
//!   `.dockerignore`.
//!
//! [`DockerIgnore::can_prune_dir`] lets a context walk skip whole excluded subtrees.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// Go's `filepath.Clean` for slash-separated paths.
pub fn clean_path(p: &str) -> String {
    if p.is_empty() {
        return ".".into();
    }
    let rooted = p.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if out.last().is_some_and(|l| *l != "..") {
                    out.pop();
                } else if !rooted {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    let joined = out.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".into(),
        (false, false) => joined,
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Lit(char),
    /// `?`: one character other than `/`.
    One,
    /// `*`: any run of characters other than `/`.
    Star,
    /// `**` followed by more pattern: `(.*/)?`.
    AnyDirs,
    /// `**` at the end: `.*`.
    Rest,
    /// `[...]`: (negated, ranges).
    Class(bool, Vec<(char, char)>),
}

/// One compiled pattern.
#[derive(Debug, Clone)]
struct IgnorePattern {
    text: String,
    exception: bool,
    tokens: Vec<Tok>,
}

impl IgnorePattern {
    fn compile(raw: &str) -> Result<IgnorePattern, String> {
        let p = clean_path(raw.trim());
        let (exception, p) = match p.strip_prefix('!') {
            Some(rest) => (true, rest.to_string()),
            None => (false, p),
        };
        if p.is_empty() {
            return Err(format!("illegal exclusion pattern: {raw:?}"));
        }
        let chars: Vec<char> = p.chars().collect();
        let mut tokens = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            i += 1;
            match c {
                '*' if chars.get(i) == Some(&'*') => {
                    i += 1;
                    if chars.get(i) == Some(&'/') {
                        i += 1;
                    }
                    tokens.push(if i >= chars.len() {
                        Tok::Rest
                    } else {
                        Tok::AnyDirs
                    });
                }
                '*' => tokens.push(Tok::Star),
                '?' => tokens.push(Tok::One),
                '\\' => match chars.get(i) {
                    Some(n) => {
                        tokens.push(Tok::Lit(*n));
                        i += 1;
                    }
                    None => tokens.push(Tok::Lit('\\')),
                },
                '[' => {
                    let mut negated = false;
                    if chars.get(i) == Some(&'^') {
                        negated = true;
                        i += 1;
                    }
                    let mut ranges = Vec::new();
                    let mut closed = false;
                    let mut first = true;
                    while i < chars.len() {
                        let mut lo = chars[i];
                        i += 1;
                        if lo == ']' && !first {
                            closed = true;
                            break;
                        }
                        first = false;
                        if lo == '\\' {
                            lo = *chars
                                .get(i)
                                .ok_or_else(|| format!("syntax error in pattern {raw:?}"))?;
                            i += 1;
                        }
                        let mut hi = lo;
                        if chars.get(i) == Some(&'-') && chars.get(i + 1).is_some_and(|c| *c != ']')
                        {
                            hi = chars[i + 1];
                            i += 2;
                            if hi == '\\' {
                                hi = *chars
                                    .get(i)
                                    .ok_or_else(|| format!("syntax error in pattern {raw:?}"))?;
                                i += 1;
                            }
                            if hi < lo {
                                return Err(format!("syntax error in pattern {raw:?}: bad range"));
                            }
                        }
                        ranges.push((lo, hi));
                    }
                    if !closed {
                        return Err(format!("syntax error in pattern {raw:?}: missing ]"));
                    }
                    tokens.push(Tok::Class(negated, ranges));
                }
                c => tokens.push(Tok::Lit(c)),
            }
        }
        Ok(IgnorePattern {
            text: p,
            exception,
            tokens,
        })
    }

    fn matches(&self, path: &str) -> bool {
        let s: Vec<char> = path.chars().collect();
        match_tokens(&self.tokens, &s)
    }
}

fn match_tokens(t: &[Tok], s: &[char]) -> bool {
    match_prefixes(t, s).is_some_and(|reach| reach[s.len()])
}

/// For every prefix length `k`, whether the whole pattern matches `s[..k]` (`None`: no prefix
/// matches). Each step only looks backwards, so one pass answers all prefixes at once.
/// A set-of-positions simulation: `reach[p]` says the tokens so far can match `s[..p]`;
/// O(tokens x path) time and O(path) memory, no recursion, whatever the input.
fn match_prefixes(t: &[Tok], s: &[char]) -> Option<Vec<bool>> {
    let n = s.len();
    let mut reach = vec![false; n + 1];
    reach[0] = true;
    let mut next = vec![false; n + 1];
    for tok in t {
        next.iter_mut().for_each(|b| *b = false);
        match tok {
            Tok::Lit(c) => {
                for p in 0..n {
                    next[p + 1] = reach[p] && s[p] == *c;
                }
            }
            Tok::One => {
                for p in 0..n {
                    next[p + 1] = reach[p] && s[p] != '/';
                }
            }
            Tok::Class(neg, ranges) => {
                for p in 0..n {
                    next[p + 1] = reach[p]
                        && ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&s[p])) != *neg;
                }
            }
            Tok::Star => {
                next[0] = reach[0];
                for p in 1..=n {
                    next[p] = reach[p] || (next[p - 1] && s[p - 1] != '/');
                }
            }
            Tok::Rest => {
                if let Some(first) = reach.iter().position(|b| *b) {
                    next[first..].iter_mut().for_each(|b| *b = true);
                }
            }
            Tok::AnyDirs => {
                let mut seen = false;
                for p in 0..=n {
                    next[p] = reach[p] || (seen && p > 0 && s[p - 1] == '/');
                    seen |= reach[p];
                }
            }
        }
        std::mem::swap(&mut reach, &mut next);
        if !reach.iter().any(|b| *b) {
            return None;
        }
    }
    Some(reach)
}

/// Could `tokens` match `dir`, an ancestor of it, or something below it? Used to decide whether
/// an exception pattern might re-include part of an excluded directory.
fn may_touch_subtree(p: &IgnorePattern, dir: &str) -> bool {
    let pattern_parts: Vec<&str> = p.text.split('/').collect();
    let dir_parts: Vec<&str> = dir.split('/').collect();
    for (i, pp) in pattern_parts.iter().enumerate() {
        if pp.contains("**") {
            return true;
        }
        let Some(dp) = dir_parts.get(i) else {
            return true; // the pattern goes deeper than dir: it may match below it
        };
        let Ok(one) = IgnorePattern::compile(pp) else {
            return true;
        };
        if !one.matches(dp) {
            return false;
        }
    }
    true // the pattern matches an ancestor of dir or dir itself
}

/// A loaded `.dockerignore`.
#[derive(Debug, Clone, Default)]
pub struct DockerIgnore {
    patterns: Vec<IgnorePattern>,
    /// The file the patterns came from, if any.
    pub source: Option<PathBuf>,
}

impl DockerIgnore {
    /// Reads the ignore file for a build: `<dockerfile>.dockerignore` beside the Dockerfile if
    /// it exists, else `<context>/.dockerignore`, else no patterns.
    pub fn load(
        context_dir: &Path,
        dockerfile_path: Option<&Path>,
    ) -> anyhow::Result<DockerIgnore> {
        let mut candidates = Vec::new();
        if let Some(df) = dockerfile_path {
            if let Some(name) = df.file_name() {
                let mut n = name.to_os_string();
                n.push(".dockerignore");
                candidates.push(df.with_file_name(n));
            }
        }
        candidates.push(context_dir.join(".dockerignore"));
        for path in candidates {
            match std::fs::read(&path) {
                Ok(bytes) => {
                    let text = String::from_utf8_lossy(&bytes);
                    let mut di = DockerIgnore::parse(&text)
                        .map_err(anyhow::Error::msg)
                        .with_context(|| format!("reading {}", path.display()))?;
                    di.source = Some(path);
                    return Ok(di);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(e).with_context(|| format!("reading {}", path.display()));
                }
            }
        }
        Ok(DockerIgnore::default())
    }

    /// Parses the text of an ignore file.
    pub fn parse(text: &str) -> Result<DockerIgnore, String> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut lines = Vec::new();
        for (n, line) in text.lines().enumerate() {
            if line.starts_with('#') {
                continue;
            }
            let mut p = line.trim().to_string();
            if p.is_empty() {
                continue;
            }
            let invert = p.starts_with('!');
            if invert {
                p = p[1..].trim().to_string();
            }
            if !p.is_empty() {
                p = clean_path(&p);
                if p.len() > 1 && p.starts_with('/') {
                    p = p[1..].to_string();
                }
            }
            if invert {
                p = format!("!{p}");
            }
            lines.push((n + 1, p));
        }
        let mut patterns = Vec::new();
        for (n, p) in lines {
            patterns.push(IgnorePattern::compile(&p).map_err(|e| format!("line {n}: {e}"))?);
        }
        Ok(DockerIgnore {
            patterns,
            source: None,
        })
    }

    /// Builds a matcher from patterns as they would appear in the file.
    pub fn from_patterns<S: AsRef<str>>(patterns: &[S]) -> Result<DockerIgnore, String> {
        let text: Vec<&str> = patterns.iter().map(|p| p.as_ref()).collect();
        DockerIgnore::parse(&text.join("\n"))
    }

    /// The cleaned patterns, exceptions with their `!`.
    pub fn patterns(&self) -> Vec<String> {
        self.patterns
            .iter()
            .map(|p| {
                if p.exception {
                    format!("!{}", p.text)
                } else {
                    p.text.clone()
                }
            })
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Is `rel_path` (relative to the context root, `/`-separated) excluded from the context?
    pub fn is_excluded(&self, rel_path: &str) -> bool {
        if self.patterns.is_empty() {
            return false;
        }
        let path = clean_path(rel_path.trim_start_matches('/'));
        if path == "." {
            return false;
        }
        let chars: Vec<char> = path.chars().collect();
        let mut matched = false;
        for p in &self.patterns {
            if p.exception != matched {
                continue;
            }
            // The path itself or any parent directory (a prefix ending before a '/').
            let hit = match_prefixes(&p.tokens, &chars).is_some_and(|reach| {
                reach[chars.len()] || (1..chars.len()).any(|k| chars[k] == '/' && reach[k])
            });
            if hit {
                matched = !p.exception;
            }
        }
        matched
    }

    /// True when the directory `rel_dir` is excluded and no exception pattern could re-include
    /// anything below it: a context walk can skip the whole subtree without reading it.
    pub fn can_prune_dir(&self, rel_dir: &str) -> bool {
        let dir = clean_path(rel_dir.trim_start_matches('/'));
        if dir == "." || !self.is_excluded(&dir) {
            return false;
        }
        !self
            .patterns
            .iter()
            .any(|p| p.exception && may_touch_subtree(p, &dir))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_like_go() {
        assert_eq!(clean_path("./a//b/../c/"), "a/c");
        assert_eq!(clean_path("/../x"), "/x");
        assert_eq!(clean_path("../x"), "../x");
        assert_eq!(clean_path(""), ".");
    }

    #[test]
    fn globs() {
        let p = |s: &str| IgnorePattern::compile(s).unwrap();
        assert!(p("*/temp*").matches("somedir/temporary.txt"));
        assert!(!p("*/temp*").matches("a/b/temp"));
        assert!(p("**/*.go").matches("x.go"));
        assert!(p("**/*.go").matches("a/b/x.go"));
        assert!(p("a/**").matches("a/b/c"));
        assert!(p("temp?").matches("tempa"));
        assert!(!p("temp?").matches("temp/"));
        assert!(p("[a-c]x").matches("bx"));
        assert!(p("[^a-c]x").matches("dx"));
        assert!(p("\\*x").matches("*x"));
        assert!(IgnorePattern::compile("[ab").is_err());
    }
}
