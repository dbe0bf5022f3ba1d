//! `ADD <git repository> <dest>`, as BuildKit's git source does it, through the `git` command:
//!
//! - which sources are repositories (`parse`): `http(s)://…/repo.git` (the path must end in
//!   `.git`), any `git://` or `ssh://` URL, and scp-like `user@host:path`; each may end with
//!   `#ref` (a branch, tag or full commit) or `#ref:subdir`;
//! - the ref is resolved to a commit before the step runs (`resolve`, `git ls-remote`), and the
//!   step is keyed by that commit (`GitSource::cache_key`, as BuildKit's `shaToCacheKey`: the
//!   commit, `.git` when the git directory is kept, the subdir), not by the URL: a moved branch is a
//!   miss, an unchanged one a hit; `--checksum` must be a prefix of the commit (or of the
//!   annotated tag's object);
//! - the step fetches exactly that commit, shallowly, into a temporary directory under the store's
//!   `tmp/` (`checkout`), checks it out with the standard umask (files 0644 or 0755 as git
//!   records them, directories 0755), updates submodules, and keeps `.git` only with
//!   `--keep-git-dir=true` and no subdir. Files get the checkout time as mtime, or the commit's time
//!   under SOURCE_DATE_EPOCH (BuildKit's `git.mtime=commit`); owners come from the copy (root unless
//!   `--chown`).
//!
//! URLs may carry credentials (`https://user:token@host/…`): messages only ever show `display()`,
//! which drops the userinfo, and git's own error output is scrubbed of it too.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{anyhow, bail, Context, Result};

/// A git source as written in an ADD: the remote to give git, and the fragment's parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitUrl {
    /// The URL without its `#fragment` (credentials included: only git sees it).
    pub remote: String,
    /// Branch, tag, `refs/…` name or full commit; `None`: the remote's HEAD.
    pub reference: Option<String>,
    /// The directory of the repository to copy, cleaned (no leading `/`, empty for the root).
    pub subdir: String,
    /// BuildKit's query form (`?ref=&tag=&branch=&checksum=&subdir=&keep-git-dir=&submodules=`):
    /// what it says besides the ref and subdir.
    pub query: GitQuery,
}

/// The options a git URL's query gives (Dockerfile 1.18).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GitQuery {
    /// `checksum=` (or `commit=`): the commit the ref must name, as `ADD --checksum`.
    pub checksum: Option<String>,
    /// `keep-git-dir=`: as `ADD --keep-git-dir`.
    pub keep_git_dir: Option<bool>,
    /// `submodules=false` leaves submodules out.
    pub submodules: Option<bool>,
}

/// What a ref resolved to when the build was planned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The commit the step copies.
    pub commit: String,
    /// What to fetch: the full ref name the remote advertised, or the commit itself.
    pub fetch_ref: String,
    /// The annotated tag's own object name, when the ref was one.
    pub tag_object: Option<String>,
}

/// One git source of a COPY op, resolved: everything the step needs to fetch it.
#[derive(Debug, Clone)]
pub struct GitSource {
    pub url: GitUrl,
    pub resolved: Resolved,
    /// `--keep-git-dir=true` (only honoured without a subdir, as BuildKit).
    pub keep_git_dir: bool,
}

impl GitUrl {
    /// The URL for messages and the image history: the remote without userinfo, and the fragment.
    pub fn display(&self) -> String {
        let mut s = redact(&self.remote);
        if self.reference.is_some() || !self.subdir.is_empty() {
            s.push('#');
            s.push_str(self.reference.as_deref().unwrap_or(""));
            if !self.subdir.is_empty() {
                s.push(':');
                s.push_str(&self.subdir);
            }
        }
        s
    }

    fn ref_for_messages(&self) -> &str {
        self.reference.as_deref().unwrap_or("HEAD")
    }
}

impl GitSource {
    /// The part of the step's cache key this source contributes, as BuildKit keys a git source:
    /// the commit, whether `.git` is kept, and the subdir. The URL is not part of it (the same
    /// commit from a mirror is the same content).
    pub fn cache_key(&self) -> String {
        let mut key = format!("git:{}", self.resolved.commit);
        if self.keeps_git_dir() {
            key.push_str(".git");
        }
        if !self.url.subdir.is_empty() {
            key.push(':');
            key.push_str(&self.url.subdir);
        }
        if self.url.query.submodules == Some(false) {
            key.push_str(";no-submodules");
        }
        key
    }

    fn keeps_git_dir(&self) -> bool {
        self.keep_git_dir && self.url.subdir.is_empty()
    }
}

/// Whether an ADD source names a git repository, and if so its parts. `None` for anything else
/// (a context path, a plain HTTP(S) download), and for a repository URL with a bad query (see
/// [`parse_checked`] for the error).
pub fn parse(source: &str) -> Option<GitUrl> {
    parse_checked(source).ok().flatten()
}

/// [`parse`], with the error of a repository URL whose query BuildKit would refuse (an unknown
/// key, a ref given twice, `branch=` with `tag=`...).
pub fn parse_checked(source: &str) -> Result<Option<GitUrl>> {
    let (without_fragment, fragment) = match source.split_once('#') {
        Some((r, f)) => (r, Some(f)),
        None => (source, None),
    };
    if !is_git_remote(without_fragment) {
        return Ok(None);
    }
    let (remote, query) = match without_fragment.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (without_fragment, None),
    };
    let (mut reference, mut subdir) = match fragment {
        None | Some("") => (None, String::new()),
        Some(f) => {
            let (r, sub) = f.split_once(':').unwrap_or((f, ""));
            ((!r.is_empty()).then(|| r.to_string()), sub.to_string())
        }
    };
    let mut options = GitQuery::default();
    if let Some(q) = query {
        apply_query(q, &mut reference, &mut subdir, &mut options)
            .with_context(|| format!("git URL {}", redact(source)))?;
    }
    Ok(Some(GitUrl {
        remote: remote.to_string(),
        reference,
        subdir: crate::source::fsutil::clean_rel(&subdir),
        query: options,
    }))
}

/// Reads a git URL's query as BuildKit does: each key once, `ref`/`tag`/`branch` naming one ref
/// (`tag=v1` is `refs/tags/v1`, `branch=b` is `refs/heads/b`), `subdir` agreeing with the
/// fragment's.
fn apply_query(
    query: &str,
    reference: &mut Option<String>,
    subdir: &mut String,
    options: &mut GitQuery,
) -> Result<()> {
    let mut seen: Vec<String> = Vec::new();
    let (mut tag, mut branch) = (None::<String>, None::<String>);
    let set_ref = |reference: &mut Option<String>, value: String| -> Result<()> {
        match reference {
            Some(r) if *r != value => bail!("ref conflicts: {r:?} vs {value:?}"),
            _ => *reference = Some(value),
        }
        Ok(())
    };
    let flag = |key: &str, value: &str| -> Result<bool> {
        match value {
            "" | "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
            "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
            _ => bail!("invalid {key} value: {value:?}"),
        }
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode(key);
        let value = percent_decode(value);
        if seen.contains(&key) {
            bail!("query {key:?} has multiple values");
        }
        seen.push(key.clone());
        if value.is_empty() && !matches!(key.as_str(), "submodules" | "keep-git-dir") {
            bail!("query {key:?} has no value");
        }
        match key.as_str() {
            "ref" => set_ref(reference, value)?,
            "tag" => tag = Some(value),
            "branch" => branch = Some(value),
            "subdir" => {
                if !subdir.is_empty() && *subdir != value {
                    bail!("subdir conflicts: {subdir:?} vs {value:?}");
                }
                *subdir = value;
            }
            "checksum" | "commit" => options.checksum = Some(value),
            "keep-git-dir" => options.keep_git_dir = Some(flag(&key, &value)?),
            "submodules" => options.submodules = Some(flag(&key, &value)?),
            _ => bail!(
                "unexpected query {key:?}: a git URL takes ref, tag, branch, checksum, commit, \
                 subdir, keep-git-dir and submodules"
            ),
        }
    }
    if let Some(t) = tag {
        let full = if t.starts_with("refs/tags/") {
            t
        } else {
            format!("refs/tags/{t}")
        };
        set_ref(reference, full)?;
    }
    if let Some(b) = branch {
        if seen.iter().any(|k| k == "tag") {
            bail!("branch conflicts with tag");
        }
        let full = if b.starts_with("refs/heads/") {
            b
        } else {
            format!("refs/heads/{b}")
        };
        set_ref(reference, full)?;
    }
    Ok(())
}

/// `%XX` escapes and `+` of a URL query, decoded (bad escapes kept as written).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn is_git_remote(remote: &str) -> bool {
    if let Some((scheme, rest)) = remote.split_once("://") {
        if scheme.is_empty() || !scheme.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return false;
        }
        return match scheme.to_ascii_lowercase().as_str() {
            "git" | "ssh" => true,
            // A web URL is a repository only when its path says so, as BuildKit decides.
            "http" | "https" => {
                let path_end = rest.find('?').unwrap_or(rest.len());
                let path = &rest[..path_end];
                path.contains('/') && path.ends_with(".git")
            }
            _ => false,
        };
    }
    is_scp_like(remote)
}

/// `user@host:path`, the form git reads as ssh. The user is required (as BuildKit's older, and
/// stricter, rule), so a context file named `a:b` is never taken for a repository.
fn is_scp_like(s: &str) -> bool {
    let Some((user, rest)) = s.split_once('@') else {
        return false;
    };
    let Some((host, _path)) = rest.split_once(':') else {
        return false;
    };
    let user_ok = !user.is_empty()
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    user_ok && host_ok
}

/// The URL without the userinfo of a `scheme://user:secret@host/…` URL (tokens are often given as
/// the user alone, so all of it goes). scp-like remotes keep their user: it cannot hold a secret.
pub fn redact(remote: &str) -> String {
    redact_urls(remote)
}

/// `text` with the userinfo of every `scheme://…@host` URL in it dropped: for instructions shown in
/// messages and progress, which may carry an ADD URL with credentials.
pub fn redact_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let authority_start = i + 3;
        out.push_str(&rest[..authority_start]);
        rest = &rest[authority_start..];
        let authority_end = rest
            .find(|c: char| matches!(c, '/' | '?' | '#' | '"' | '\'') || c.is_whitespace())
            .unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            rest = &rest[at + 1..];
        }
    }
    out.push_str(rest);
    out
}

/// The userinfo (with its `@`) of a scheme URL, for scrubbing git's messages.
fn userinfo(remote: &str) -> Option<&str> {
    let i = remote.find("://")? + 3;
    let rest = &remote[i..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let at = rest[..authority_end].rfind('@')?;
    Some(&rest[..=at])
}

fn is_full_commit(r: &str) -> bool {
    (r.len() == 40 || r.len() == 64) && r.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Resolves the URL's ref to a commit, asking the remote (`git ls-remote`) unless the ref is a
/// full commit already; then checks `--checksum` against it.
pub fn resolve(url: &GitUrl, checksum: Option<&str>) -> Result<Resolved> {
    if let Some(c) = checksum {
        if c.is_empty() || c.len() > 64 || !c.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!(
                "invalid checksum {c:?} for git source {}: expected hex commit hash",
                url.display()
            );
        }
    }
    let resolved = match url.reference.as_deref() {
        Some(r) if is_full_commit(r) => Resolved {
            commit: r.to_string(),
            fetch_ref: r.to_string(),
            tag_object: None,
        },
        reference => {
            let patterns: Vec<String> = match reference {
                None => vec!["HEAD".into()],
                Some(r) => vec![r.to_string(), format!("{r}^{{}}")],
            };
            let mut args: Vec<OsString> = vec!["ls-remote".into(), url.remote.clone().into()];
            args.extend(patterns.into_iter().map(OsString::from));
            let out = run_git(&args, None, &url.remote).with_context(|| {
                format!(
                    "cannot read git repository {}: check the URL, that the repository exists and \
                     that its host is reachable",
                    redact(&url.remote)
                )
            })?;
            pick_ref(&out, reference).ok_or_else(|| {
                anyhow!(
                    "git repository {} has no branch or tag {:?}: check the ref after '#' in the \
                     URL (a branch, a tag, or a full commit hash)",
                    redact(&url.remote),
                    url.ref_for_messages()
                )
            })?
        }
    };
    if let Some(c) = checksum {
        let want = c.to_ascii_lowercase();
        let matches = resolved.commit.starts_with(&want)
            || resolved
                .tag_object
                .as_deref()
                .is_some_and(|t| t.starts_with(&want));
        if !matches {
            bail!(
                "expected checksum to match {c}, but {} is commit {}: update --checksum or the ref",
                url.display(),
                resolved.commit
            );
        }
    }
    Ok(resolved)
}

/// Picks the ref among `git ls-remote` lines (`<object>\t<name>`), as git would read a short
/// name: an exact `refs/…` name, else a branch, else a tag, else any name ending with it. An
/// annotated tag resolves to the commit it points at (its peeled `^{}` line).
fn pick_ref(ls_remote: &str, reference: Option<&str>) -> Option<Resolved> {
    let lines: Vec<(&str, &str)> = ls_remote
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(sha, name)| (sha.trim(), name.trim()))
        .filter(|(sha, _)| is_full_commit(sha))
        .collect();
    let find = |name: &str| lines.iter().find(|(_, n)| *n == name).map(|(s, _)| *s);
    let chosen: Option<(String, &str)> = match reference {
        None => find("HEAD").map(|s| ("HEAD".to_string(), s)),
        Some(r) => {
            let candidates = if r.starts_with("refs/") {
                vec![r.to_string()]
            } else {
                vec![
                    format!("refs/heads/{r}"),
                    format!("refs/tags/{r}"),
                    r.to_string(),
                ]
            };
            candidates
                .into_iter()
                .find_map(|c| find(&c).map(|s| (c, s)))
                .or_else(|| {
                    let suffix = format!("/{r}");
                    lines
                        .iter()
                        .find(|(_, n)| n.ends_with(&suffix))
                        .map(|(s, n)| (n.to_string(), *s))
                })
        }
    };
    let (name, object) = chosen?;
    let peeled = find(&format!("{name}^{{}}"));
    Some(Resolved {
        commit: peeled.unwrap_or(object).to_string(),
        fetch_ref: name,
        tag_object: peeled.map(|_| object.to_string()),
    })
}

/// A checked-out tree, removed when dropped.
pub struct Checkout {
    _dir: tempfile::TempDir,
    root: PathBuf,
    /// The commit's committer time, when it was read (a build under SOURCE_DATE_EPOCH).
    pub commit_time: Option<i64>,
}

impl Checkout {
    /// The directory to copy from: the repository's root, or its subdir.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// Fetches the source's commit (shallowly where the server allows it) into a new directory under
/// `tmp_parent` and checks it out, as described in the module comment.
pub fn checkout(
    source: &GitSource,
    tmp_parent: &Path,
    source_date_epoch: Option<i64>,
) -> Result<Checkout> {
    let url = &source.url;
    let remote = &url.remote;
    let shown = url.display();
    let dir = tempfile::Builder::new()
        .prefix("git-checkout.")
        .tempdir_in(tmp_parent)
        .with_context(|| format!("creating a directory in {}", tmp_parent.display()))?;
    let tree = dir.path().join("tree");
    std::fs::create_dir(&tree).with_context(|| format!("creating {}", tree.display()))?;
    let keep = source.keeps_git_dir();
    // The repository lives outside the tree unless the image is to keep it.
    let git_dir = if keep {
        tree.join(".git")
    } else {
        dir.path().join("repo.git")
    };
    let gd = |args: &[&str]| -> Vec<OsString> {
        let mut v: Vec<OsString> = vec!["--git-dir".into(), git_dir.clone().into()];
        v.extend(args.iter().map(OsString::from));
        v
    };
    run_git(
        &[
            "-c".into(),
            "init.defaultBranch=master".into(),
            "init".into(),
            "-q".into(),
            "--bare".into(),
            git_dir.clone().into(),
        ],
        None,
        remote,
    )
    .context("initialising the checkout's repository")?;
    let mut add_origin = gd(&["remote", "add", "origin"]);
    add_origin.push(remote.into());
    run_git(&add_origin, None, remote)?;
    let fetch_ref = &source.resolved.fetch_ref;
    let refspec = if fetch_ref.starts_with("refs/") {
        // Kept as the same local ref, so a kept `.git` knows the branch or tag.
        format!("+{fetch_ref}:{fetch_ref}")
    } else {
        fetch_ref.clone()
    };
    let fetch = gd(&[
        "fetch",
        "-q",
        "--update-head-ok",
        "--depth=1",
        "--no-tags",
        "origin",
        &refspec,
    ]);
    run_git_shallow(&fetch, None, remote).with_context(|| {
        format!(
            "fetching {shown} (commit {}) failed",
            source.resolved.commit
        )
    })?;
    let fetched = run_git(
        &gd(&["rev-parse", "--verify", "FETCH_HEAD^{commit}"]),
        None,
        remote,
    )
    .with_context(|| format!("{shown}: what was fetched is not a commit"))?;
    let fetched = fetched.trim();
    if fetched != source.resolved.commit {
        bail!(
            "{shown} moved during the build (it was commit {}, the fetch got {fetched}): run the \
             build again",
            source.resolved.commit
        );
    }
    let commit = source.resolved.commit.as_str();
    if keep {
        // A normal repository in the tree, on the commit (detached, as BuildKit leaves it).
        run_git(&gd(&["config", "core.bare", "false"]), None, remote)?;
        run_git(
            &[
                "-c".into(),
                "advice.detachedHead=false".into(),
                "-C".into(),
                tree.clone().into(),
                "checkout".into(),
                "-q".into(),
                commit.into(),
            ],
            None,
            remote,
        )
        .with_context(|| format!("checking out {shown}"))?;
    } else {
        let mut args = gd(&["--work-tree"]);
        args.push(tree.clone().into());
        args.extend(["checkout", "-q", commit, "--", "."].map(OsString::from));
        run_git(&args, None, remote).with_context(|| format!("checking out {shown}"))?;
    }
    if tree.join(".gitmodules").is_file() && url.query.submodules != Some(false) {
        let mut args = gd(&["--work-tree"]);
        args.push(tree.clone().into());
        args.extend(
            ["submodule", "update", "--init", "--recursive", "--depth=1"].map(OsString::from),
        );
        run_git_shallow(&args, Some(&tree), remote)
            .with_context(|| format!("updating the submodules of {shown}"))?;
        if !keep {
            // Each submodule's `.git` file points into the repository left behind.
            remove_git_entries(&tree)?;
        }
    }
    if keep {
        // What the image keeps: no credentials, no trace of the fetch.
        let mut set_url = gd(&["remote", "set-url", "origin"]);
        set_url.push(redact(remote).into());
        run_git(&set_url, None, remote)?;
        run_git(
            &gd(&["reflog", "expire", "--all", "--expire=now"]),
            None,
            remote,
        )?;
        let _ = std::fs::remove_file(git_dir.join("FETCH_HEAD"));
    }
    let mut commit_time = None;
    if source_date_epoch.is_some() {
        let time = run_git(&gd(&["show", "-s", "--format=%ct", commit]), None, remote)?;
        let time: i64 = time
            .trim()
            .parse()
            .map_err(|_| anyhow!("{shown}: cannot read the commit time of {commit}"))?;
        set_mtimes(&tree, time)?;
        commit_time = Some(time);
    }
    let root = if url.subdir.is_empty() {
        tree
    } else {
        let path = crate::source::fsutil::resolve_in_root(&tree, &url.subdir)?;
        if !path.is_dir() {
            bail!(
                "{shown}: commit {commit} has no directory {:?}: check the path after ':' in the URL",
                url.subdir
            );
        }
        path
    };
    Ok(Checkout {
        _dir: dir,
        root,
        commit_time,
    })
}

/// Removes every entry named `.git` below `tree` (git never tracks such a path, so they are all
/// its own).
fn remove_git_entries(tree: &Path) -> Result<()> {
    let mut found = Vec::new();
    let mut walk = walkdir::WalkDir::new(tree).into_iter();
    while let Some(entry) = walk.next() {
        let entry = entry.with_context(|| format!("walking {}", tree.display()))?;
        if entry.depth() > 0 && entry.file_name() == ".git" {
            if entry.file_type().is_dir() {
                walk.skip_current_dir();
            }
            found.push(entry.into_path());
        }
    }
    for path in found {
        let removed = if path.is_dir() && !path.is_symlink() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.with_context(|| format!("removing {}", path.display()))?;
    }
    Ok(())
}

/// Sets every entry's mtime (symlinks' own) to `time`.
fn set_mtimes(tree: &Path, time: i64) -> Result<()> {
    let ts = nix::sys::time::TimeSpec::new(time, 0);
    for entry in walkdir::WalkDir::new(tree) {
        let entry = entry.with_context(|| format!("walking {}", tree.display()))?;
        nix::sys::stat::utimensat(
            None,
            entry.path(),
            &ts,
            &ts,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .with_context(|| format!("setting the mtime of {}", entry.path().display()))?;
    }
    Ok(())
}

/// `run_git` with `--depth=1`, again without it when the server cannot do shallow fetches (git's
/// dumb HTTP), as BuildKit retries.
fn run_git_shallow(args: &[OsString], cwd: Option<&Path>, remote: &str) -> Result<String> {
    match run_git(args, cwd, remote) {
        Err(e) if format!("{e:#}").contains("shallow") => {
            let deep: Vec<OsString> = args.iter().filter(|a| *a != "--depth=1").cloned().collect();
            run_git(&deep, cwd, remote)
        }
        other => other,
    }
}

/// Runs git non-interactively (a build never waits on a password prompt) with the standard umask
/// (the modes in the image follow git's, not kiln's caller's umask) and file-protocol submodules
/// refused unless asked for, as BuildKit runs it. Its stdout; on failure an error with its
/// message, scrubbed of the remote's userinfo.
fn run_git(args: &[OsString], cwd: Option<&Path>, remote: &str) -> Result<String> {
    let mut cmd = Command::new("git");
    cmd.arg("-c")
        .arg("protocol.file.allow=user")
        .args(args)
        .current_dir(cwd.unwrap_or(Path::new("/")))
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: umask is async-signal-safe and only changes the forked child's own mask.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0o022);
            Ok(())
        });
    }
    let out = match cmd.output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "the git command is not installed: ADD of a git repository needs it (install the \
             `git` package, e.g. apt-get install git)"
        ),
        Err(e) => return Err(e).context("running git"),
    };
    if !out.status.success() {
        let mut message = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if let Some(info) = userinfo(remote) {
            message = message.replace(info, "");
        }
        let message = message
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        let what = args
            .iter()
            .map(|a| a.to_string_lossy())
            .find(|a| !a.starts_with('-') && !a.contains('/') && !a.contains('='))
            .unwrap_or_default()
            .into_owned();
        bail!(
            "git {what}: {}",
            if message.is_empty() {
                format!("exited with {}", out.status)
            } else {
                message
            }
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Option<(String, Option<String>, String)> {
        parse(s).map(|u| (u.remote, u.reference, u.subdir))
    }

    #[test]
    fn query_form_names_refs_subdirs_and_options() {
        let q = |s: &str| parse_checked(s).map(|u| u.unwrap());
        let u = q("https://h/r.git?tag=v1&subdir=docs&keep-git-dir=true").unwrap();
        assert_eq!(u.remote, "https://h/r.git");
        assert_eq!(u.reference.as_deref(), Some("refs/tags/v1"));
        assert_eq!(u.subdir, "docs");
        assert_eq!(u.query.keep_git_dir, Some(true));
        let u = q("git@h:r.git?branch=main&submodules=false&checksum=abc").unwrap();
        assert_eq!(u.remote, "git@h:r.git");
        assert_eq!(u.reference.as_deref(), Some("refs/heads/main"));
        assert_eq!(u.query.submodules, Some(false));
        assert_eq!(u.query.checksum.as_deref(), Some("abc"));
        let u = q("https://h/r.git?ref=feature%2Fx&keep-git-dir").unwrap();
        assert_eq!(u.reference.as_deref(), Some("feature/x"));
        assert_eq!(u.query.keep_git_dir, Some(true));
        // The fragment and the query agree, or it is BuildKit's error.
        assert!(q("https://h/r.git?ref=main#main").is_ok());
        let err = |s: &str| format!("{:#}", q(s).unwrap_err());
        assert!(err("https://h/r.git?ref=a#b").contains("ref conflicts"));
        assert!(err("https://h/r.git?tag=a&branch=b").contains("branch conflicts with tag"));
        assert!(err("https://h/r.git?subdir=a#:b").contains("subdir conflicts"));
        assert!(err("https://h/r.git?depth=1").contains("unexpected query \"depth\""));
        assert!(err("https://h/r.git?ref=").contains("has no value"));
        assert!(err("https://h/r.git?ref=a&ref=a").contains("multiple values"));
        assert!(err("https://u:pw@h/r.git?submodules=maybe").contains("invalid submodules"));
        assert!(!err("https://u:pw@h/r.git?submodules=maybe").contains("pw"));
        // A web URL with a query is a repository only when its path ends in .git.
        assert_eq!(parse_checked("https://h/file.tar?x=1").unwrap(), None);
    }

    #[test]
    fn recognises_the_url_forms_buildkit_takes_as_git() {
        assert_eq!(
            p("https://github.com/moby/buildkit.git#v0.10.1"),
            Some((
                "https://github.com/moby/buildkit.git".into(),
                Some("v0.10.1".into()),
                String::new()
            ))
        );
        assert_eq!(
            p("http://h:8080/r.git#main:docs/a/"),
            Some((
                "http://h:8080/r.git".into(),
                Some("main".into()),
                "docs/a".into()
            ))
        );
        assert_eq!(
            p("git@github.com:moby/buildkit.git#:sub"),
            Some((
                "git@github.com:moby/buildkit.git".into(),
                None,
                "sub".into()
            ))
        );
        assert!(p("git://host/repo").is_some());
        assert!(p("ssh://git@host:22/repo").is_some());
        assert!(p("GIT://host/repo").is_some());
        // Not repositories: downloads, context paths, other schemes.
        assert_eq!(p("https://example.com/file.tar.gz"), None);
        assert_eq!(p("https://example.com/repo.git/"), None);
        assert_eq!(p("https://example.com.git"), None);
        assert_eq!(p("ftp://host/repo.git"), None);
        assert_eq!(p("src/a:b"), None);
        assert_eq!(p("a:b"), None);
        assert_eq!(p("dir/x.git"), None);
    }

    #[test]
    fn subdirs_cannot_climb_out_of_the_repository() {
        assert_eq!(p("git://h/r#main:../../etc").unwrap().2, "etc");
        assert_eq!(p("git://h/r#main:/").unwrap().2, "");
    }

    #[test]
    fn credentials_never_reach_messages_or_keys() {
        assert_eq!(
            redact("https://user:s3cret@host/r.git"),
            "https://host/r.git"
        );
        assert_eq!(redact("https://TOKEN@host/r.git"), "https://host/r.git");
        assert_eq!(redact("git@host:r.git"), "git@host:r.git");
        assert_eq!(redact("https://host/a@b.git"), "https://host/a@b.git");
        assert_eq!(
            redact_urls("ADD [\"https://a:b@h/r.git\", \"git://c@h2/x\"] /d"),
            "ADD [\"https://h/r.git\", \"git://h2/x\"] /d"
        );
        let u = parse("https://u:pw@host/r.git#main:d").unwrap();
        assert_eq!(u.display(), "https://host/r.git#main:d");
        assert_eq!(userinfo(&u.remote), Some("u:pw@"));
        let source = GitSource {
            url: u,
            resolved: Resolved {
                commit: "a".repeat(40),
                fetch_ref: "refs/heads/main".into(),
                tag_object: None,
            },
            keep_git_dir: true,
        };
        // keep-git-dir has no effect with a subdir, as in BuildKit.
        assert_eq!(source.cache_key(), format!("git:{}:d", "a".repeat(40)));
    }

    #[test]
    fn picks_branches_before_tags_and_peels_annotated_tags() {
        let a = "a".repeat(40);
        let b = "b".repeat(40);
        let c = "c".repeat(40);
        let out = format!(
            "{a}\tHEAD\n{a}\trefs/heads/main\n{b}\trefs/tags/main\n{c}\trefs/tags/v1\n{a}\trefs/tags/v1^{{}}\n"
        );
        let r = pick_ref(&out, Some("main")).unwrap();
        assert_eq!(
            (r.commit.as_str(), r.fetch_ref.as_str()),
            (a.as_str(), "refs/heads/main")
        );
        let r = pick_ref(&out, Some("v1")).unwrap();
        assert_eq!(r.commit, a);
        assert_eq!(r.tag_object.as_deref(), Some(c.as_str()));
        assert_eq!(r.fetch_ref, "refs/tags/v1");
        assert_eq!(pick_ref(&out, None).unwrap().commit, a);
        assert_eq!(pick_ref(&out, Some("refs/tags/main")).unwrap().commit, b);
        assert!(pick_ref(&out, Some("nope")).is_none());
    }

    #[test]
    fn checksums_must_be_hex() {
        let u = parse("git://127.0.0.1:1/r").unwrap();
        let e = resolve(&u, Some("foobar")).unwrap_err();
        assert!(format!("{e}").contains("expected hex commit hash"), "{e}");
        let full = parse(&format!("git://127.0.0.1:1/r#{}", "ab".repeat(20))).unwrap();
        assert!(resolve(&full, Some("abab")).is_ok());
        let e = resolve(&full, Some("cd")).unwrap_err();
        assert!(format!("{e}").contains("expected checksum to match"), "{e}");
    }
}
