//! The file operations: COPY and ADD (context, stage, URL and git sources, here-documents) and
//! WORKDIR's mkdir, on the step's snapshot.

use std::path::Path;

use anyhow::{anyhow, Context, Result};

use super::copy;
use super::source_view;
use crate::snapshot::{ActiveSnapshot, Snapshotter};
use crate::solver::{CopyOp, ExecRequest};
use crate::source::select::CopySource;
use crate::store::Store;

pub(super) fn mkdir_step(
    root: &Path,
    path: &str,
    user: Option<&str>,
    req: &ExecRequest,
) -> Result<()> {
    let owner = match user {
        Some(u) => {
            let (owner, missing) = resolve_user(root, u)?;
            warn_missing(req, &missing);
            Some(owner)
        }
        None => None,
    };
    copy::mkdir_in_root(root, path, owner)
}

/// Says which user and group names the image lacks (BuildKit uses id 0 for them and says
/// nothing).
fn warn_missing(req: &ExecRequest, missing: &[String]) {
    for m in missing {
        let text = format!(
            "warning: Dockerfile:{}: {}: {m}: using id 0, as BuildKit does",
            req.line, req.name
        );
        req.progress.log(req.step, &text);
        if req.progress.mode() != crate::solver::progress::Mode::Plain {
            eprintln!("{text}");
        }
    }
}

/// A USER value (`name`, `uid`, `name:group`, `uid:gid`) as numbers, through the image's files.
/// Unlike `--chown`, a user without a group takes the user's primary group. A missing name is
/// id 0, as in BuildKit; the second value says what was missing.
pub(super) fn resolve_user(root: &Path, user: &str) -> Result<((u32, u32), Vec<String>)> {
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let passwd = crate::source::fsutil::resolve_in_root(root, "etc/passwd")
        .ok()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default();
    let entry = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 4 && (f[0] == u || f[2] == u));
    let mut missing = Vec::new();
    let uid = match u.parse::<u32>() {
        Ok(n) => n,
        Err(_) => match entry.as_ref() {
            Some(f) => f[2]
                .parse()
                .map_err(|_| anyhow!("/etc/passwd: bad id for {u}"))?,
            None => {
                missing.push(format!("user {u:?} is not in the image's /etc/passwd"));
                0
            }
        },
    };
    let gid = match g {
        Some(g) => {
            let ((_, gid), more) = copy::resolve_chown(root, &format!("{uid}:{g}"))?;
            missing.extend(more);
            gid
        }
        None => entry.as_ref().and_then(|f| f[3].parse().ok()).unwrap_or(0),
    };
    Ok(((uid, gid), missing))
}

pub(super) fn copy_step(
    store: &Store,
    snapshotter: &Snapshotter,
    snap: &mut ActiveSnapshot,
    c: &CopyOp,
    req: &ExecRequest,
) -> Result<()> {
    let dest_root = snap.merged();
    let view = source_view(store, snapshotter, &c.from)?;
    // The main context, or a named one: both read through their `.dockerignore`.
    let files_context = match &c.from {
        crate::solver::SourceTree::Named(named) => named.clone(),
        _ => req.context.clone(),
    };
    let filter = files_context.filter();
    let no_filter = crate::source::fsutil::NoFilter;
    let view_root = view.as_ref().map(|v| v.merged());
    let src = match &view_root {
        None => CopySource {
            root: files_context.root(),
            filter: filter.as_ref(),
            from_context: true,
        },
        Some(root) => CopySource {
            root,
            filter: &no_filter,
            from_context: false,
        },
    };
    let mut options = c.options.clone();
    if let Some(spec) = &c.chown {
        let (owner, missing) = copy::resolve_chown(&dest_root, spec)?;
        crate::rootless::check_owner(owner.0, owner.1, &format!("--chown={spec}"))?;
        warn_missing(req, &missing);
        options.chown = Some(owner);
    }
    if let Some(fresh) = fresh_destination(snap, &src, c, &options)? {
        // Everything goes below a directory the layers below don't have: write it straight into
        // the upperdir, with the overlay out of the way.
        snap.unmount_merged()?;
        // The same step's previous layer, when only some of its files changed: unchanged files
        // are linked from it (see `copy::copy_reusing`).
        let prev_root = match &req.previous {
            Some(p) if src.from_context => snapshotter
                .layer_dir(&p.layer.diff_id)
                .ok()
                .filter(|d| d.is_dir()),
            _ => None,
        };
        let reuse = prev_root
            .as_deref()
            .zip(req.previous.as_ref())
            .map(|(dir, p)| copy::Reuse {
                prev_root: dir,
                unchanged: &p.unchanged,
                source_date_epoch: req.source_date_epoch,
            });
        copy::copy_reusing(
            &src,
            &c.sources,
            &snap.upper(),
            &format!("/{fresh}/"),
            &options,
            reuse.as_ref(),
        )?;
    } else if !c.sources.is_empty() {
        copy::copy(&src, &c.sources, &dest_root, &c.dest, &options)?;
    }
    let dest_is_dir = c.dest.ends_with('/')
        || c.heredocs.len() + c.urls.len() + c.sources.len() + c.git.len() > 1;
    for (name, content) in &c.heredocs {
        let target = if dest_is_dir {
            format!("{}/{}", c.dest.trim_end_matches('/'), name)
        } else {
            c.dest.clone()
        };
        copy::write_file_in_root(
            &dest_root,
            &target,
            content.as_bytes(),
            options.mode_for(0o644, false),
            options.chown.unwrap_or((0, 0)),
        )?;
    }
    for (url, checksum) in &c.urls {
        let authorization = crate::solver::http_authorization(url, &req.secrets)?;
        let crate::source::http::Download { data, modified } =
            crate::source::http::download(url, checksum.as_deref(), authorization.as_deref())?;
        if options.unpack_urls && crate::source::archive::is_archive_data(&data) {
            // `ADD --unpack=true URL DEST`: DEST is a directory the archive's entries go into.
            let dir = copy::ensure_dir_in_root(
                &dest_root,
                &c.dest,
                options.chown.unwrap_or((0, 0)),
                options.created_dir_mode(),
            )?;
            crate::source::archive::unpack_data(&data, &dir, options.chown)
                .with_context(|| format!("ADD --unpack=true {url}"))?;
            continue;
        }
        let name = crate::source::http::file_name(url);
        let target = if dest_is_dir || c.dest.ends_with('/') {
            format!("{}/{}", c.dest.trim_end_matches('/'), name)
        } else {
            c.dest.clone()
        };
        // BuildKit gives the file the server's Last-Modified time.
        copy::write_file_in_root_at(
            &dest_root,
            &target,
            &data,
            options.mode_for(0o600, false),
            options.chown.unwrap_or((0, 0)),
            modified,
        )?;
    }
    for g in &c.git {
        // A repository's tree is copied like a directory source: its contents go into dest.
        let checkout = crate::source::git::checkout(g, &store.tmp_dir(), req.source_date_epoch)?;
        let tree = CopySource {
            root: checkout.root(),
            filter: &no_filter,
            from_context: true,
        };
        copy::copy(&tree, &[".".to_string()], &dest_root, &c.dest, &options)?;
    }
    if let Some(v) = view {
        v.release()?;
    }
    Ok(())
}

/// The destination of a COPY that only copies directories' contents, when it is new or empty in
/// the layers below (see `copy::claim_fresh_directory`) and the upperdir now has it: its path
/// relative to the root. The common `COPY node_modules /app/node_modules` of a big tree then
/// costs what a plain copy costs, about half of what creating files through the overlay does.
fn fresh_destination(
    snap: &ActiveSnapshot,
    src: &CopySource,
    c: &CopyOp,
    options: &crate::solver::CopyOptions,
) -> Result<Option<String>> {
    if c.sources.is_empty()
        || !c.heredocs.is_empty()
        || !c.urls.is_empty()
        || !c.git.is_empty()
        || options.parents
        || options.unpack_archives
    {
        return Ok(None);
    }
    let expanded = crate::source::select::expand_sources(src, &c.sources)?;
    // A pattern that matches nothing copies nothing: no destination is made (BuildKit).
    if expanded.is_empty() {
        return Ok(None);
    }
    for rel in expanded {
        let path = crate::source::fsutil::resolve_in_root(src.root, &rel)?;
        if !std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
            return Ok(None);
        }
    }
    let owner = options.chown.unwrap_or((0, 0));
    let Some(fresh) =
        copy::claim_fresh_directory(&snap.merged(), &c.dest, owner, options.created_dir_mode())?
    else {
        return Ok(None);
    };
    let in_upper = std::fs::symlink_metadata(snap.upper().join(&fresh));
    Ok(in_upper.is_ok_and(|m| m.is_dir()).then_some(fresh))
}
