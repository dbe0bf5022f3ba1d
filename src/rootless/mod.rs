//! rootless: kiln as an unprivileged user. A kiln started by a user other than root enters a user
//! namespace before it does anything else (`enter`, called by the command line once the flags are
//! parsed), where it is root over the user's own id and the user's `/etc/subuid` / `/etc/subgid`
//! ranges (written by `newuidmap` / `newgidmap`, Debian's `uidmap`), plus a mount namespace of
//! its own so its overlay mounts are private and vanish with it. Without a range or without
//! `newuidmap` the user's id alone is mapped (`Mapping::Single`): files of other owners are
//! stored as root-owned, and what would need other ids is refused with a hint
//! (`single_mapping_hint`).
//!
//! The modules below ask `mapping()` what they run in: overlayfs takes `userxattr` and its
//! `user.overlay.*` attributes inside a user namespace (`overlay_xattr_prefix`), the sandbox joins
//! no cgroup unless limits are asked, the port proxy checks `ip_unprivileged_port_start`.
//!
//! A container's processes live in the user namespace of the kiln that started it; a later kiln
//! (`exec`, `stop`, ...) must be in the same one to reach them. Each container's owner process
//! holds its namespace for others (`hold_namespace`: `ROOT/userns/<pid>-<start>`, removed when it
//! ends); `enter` joins a live holder's namespace when there is one, else makes a new one.
//!
//! This module sits at the bottom of the import order: it imports nothing of kiln's but `owner`.

pub mod check;
pub mod delegation;
pub mod holder;
mod idmap;

use std::fs;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};

pub use idmap::{parse_id_map, subid_ranges, IdMapLine, SubIdRange};

/// What the process's ids are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapping {
    /// The host's user namespace (or one that maps every id): kiln as root, as before.
    Host,
    /// A user namespace with more than one id (the user plus a subordinate range, or a
    /// Kubernetes pod with `hostUsers: false`).
    Full,
    /// A user namespace mapping one id (the user's) to root.
    Single,
}

impl Mapping {
    /// From the text of `/proc/self/uid_map`.
    pub fn from_uid_map(text: &str) -> Mapping {
        let lines = parse_id_map(text);
        let total: u64 = lines.iter().map(|l| l.count as u64).sum();
        let identity = lines.len() == 1
            && lines[0].inside == 0
            && lines[0].outside == 0
            && lines[0].count == u32::MAX;
        if identity {
            Mapping::Host
        } else if total <= 1 {
            Mapping::Single
        } else {
            Mapping::Full
        }
    }
}

/// The calling process's mapping, read once.
pub fn mapping() -> Mapping {
    static MAPPING: OnceLock<Mapping> = OnceLock::new();
    *MAPPING.get_or_init(read_mapping)
}

fn read_mapping() -> Mapping {
    match fs::read_to_string("/proc/self/uid_map") {
        Ok(text) => Mapping::from_uid_map(&text),
        Err(_) => Mapping::Host,
    }
}

/// kiln runs in a user namespace (rootless, or a pod's user namespace).
pub fn in_userns() -> bool {
    mapping() != Mapping::Host
}

/// The prefix of overlayfs' own xattrs for mounts made by this process: `user.overlay.` inside
/// a user namespace (mounted with `userxattr`), else `trusted.overlay.`.
pub fn overlay_xattr_prefix() -> &'static [u8] {
    if in_userns() {
        b"user.overlay."
    } else {
        b"trusted.overlay."
    }
}

/// Whether an xattr name is overlayfs' own (either namespace): never copied into or out of a
/// layer, so a layer cannot smuggle opacity or redirects in.
pub fn is_overlay_xattr(name: &[u8]) -> bool {
    name.starts_with(b"trusted.overlay.") || name.starts_with(b"user.overlay.")
}

/// The user kiln acts for: outside a user namespace the real uid, inside one the host uid that
/// root is mapped to.
pub fn host_uid() -> u32 {
    if let Ok(text) = fs::read_to_string("/proc/self/uid_map") {
        if let Some(l) = parse_id_map(&text).into_iter().find(|l| l.inside == 0) {
            return l.outside;
        }
    }
    nix::unistd::getuid().as_raw()
}

/// The login name of `uid` in the host's /etc/passwd, else the number.
pub fn user_name(uid: u32) -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string())
}

/// What to tell a user without a subordinate id range (worked out once: call it before a
/// process pivots into a container's root, where /etc/passwd is the image's).
pub fn single_mapping_hint() -> &'static str {
    static HINT: OnceLock<String> = OnceLock::new();
    HINT.get_or_init(make_single_mapping_hint)
}

fn make_single_mapping_hint() -> String {
    let user = user_name(host_uid());
    format!(
        "kiln runs rootless with only your own id mapped (no /etc/subuid and /etc/subgid range \
         for {user}, or no newuidmap/newgidmap): other owners cannot be stored; as root, add a \
         range with `usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {user}` \
         (and install Debian's uidmap)"
    )
}

/// Refuses an owner other than root when only one id is mapped (`COPY --chown`, a container's
/// user's files): `what` names the operation for the message.
pub fn check_owner(uid: u32, gid: u32, what: &str) -> Result<()> {
    if mapping() == Mapping::Single && (uid != 0 || gid != 0) {
        bail!(
            "{what}: owner {uid}:{gid} cannot be stored: {}",
            single_mapping_hint()
        );
    }
    Ok(())
}

/// The default state root: `/var/lib/kiln` for root; for another user (or kiln already inside a
/// user namespace) `$XDG_DATA_HOME/kiln`, else `~/.local/share/kiln`.
pub fn default_root() -> PathBuf {
    if nix::unistd::geteuid().is_root() && !in_userns() {
        return PathBuf::from("/var/lib/kiln");
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| Path::new(x).is_absolute()) {
        return PathBuf::from(x).join("kiln");
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(host_uid()))
                .ok()
                .flatten()
                .map(|u| u.dir)
        })
        .unwrap_or_else(|| PathBuf::from("/"));
    home.join(".local/share/kiln")
}

/// Whether a kiln started by this user must enter a user namespace first.
pub fn needs_entry() -> bool {
    !nix::unistd::geteuid().is_root()
}

/// Makes `root` (mode 0700: no other user reads or changes it) and enters the user and mount
/// namespaces. Must run while the process has one thread (before any runtime starts).
pub fn enter(root: &Path) -> Result<()> {
    prepare_root(root)?;
    let joined = match find_holder(root) {
        Some(pid) => join(pid).is_ok(),
        None => false,
    };
    let mode = if joined {
        None
    } else {
        let mapping = create_userns().context("entering a user namespace (see `kiln info`)")?;
        // Before the mount namespace below: the holder keeps only the user namespace.
        if let Some(idle) = holder::idle_limit() {
            holder::spawn(&holders_dir(root), mapping, idle);
        }
        Some(mapping)
    };
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .context("unshare the mount namespace inside the user namespace")?;
    // Nothing this kiln mounts reaches the host's namespace, nor the other way.
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .context("make / private in kiln's mount namespace")?;
    // Supplementary groups the namespace does not map would show as nobody: drop them where
    // setgroups is allowed (a range from newgidmap); a single mapping denies it.
    let _ = nix::unistd::setgroups(&[]);
    if mode == Some(Mapping::Single) {
        note_single_once(root);
    }
    Ok(())
}

fn prepare_root(root: &Path) -> Result<()> {
    if let Some(parent) = root.parent() {
        if !parent.as_os_str().is_empty() {
            fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
        }
    }
    match fs::DirBuilder::new().mode(0o700).create(root) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(e).with_context(|| format!("create the state root {}", root.display()))
        }
    }
    let meta = fs::metadata(root).with_context(|| format!("stat {}", root.display()))?;
    use std::os::unix::fs::MetadataExt;
    if meta.uid() != nix::unistd::getuid().as_raw() {
        bail!(
            "the state root {} belongs to uid {}, not to you (uid {}): pass --root DIR (or \
             KILN_ROOT) with a directory of your own",
            root.display(),
            meta.uid(),
            nix::unistd::getuid()
        );
    }
    if meta.mode() & 0o077 != 0 {
        fs::set_permissions(root, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("chmod 0700 {}", root.display()))?;
    }
    Ok(())
}

fn note_single_once(root: &Path) {
    let marker = root.join(".single-id-mapping-noted");
    if marker.exists() {
        return;
    }
    eprintln!(
        "kiln: note: files owned by ids other than yours are stored as root-owned in {}. {}",
        root.display(),
        single_mapping_hint()
    );
    let _ = fs::write(&marker, b"");
}

/// Where container owners register the namespace they run in.
fn holders_dir(root: &Path) -> PathBuf {
    root.join("userns")
}

/// A live registered holder of this root's user namespace, if any (dead entries are removed,
/// and so is a namespace holder that maps one id when the user now has a range to map).
fn find_holder(root: &Path) -> Option<i32> {
    let entries = fs::read_dir(holders_dir(root)).ok()?;
    let mut range_now: Option<bool> = None;
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(owner) = name.to_str().and_then(crate::owner::Owner::parse_tag) else {
            continue;
        };
        let path = e.path();
        if !owner.is_alive() {
            let _ = fs::remove_file(&path);
            continue;
        }
        if holder::is_holder(&path) {
            if holder::holds_single(&path)
                && *range_now.get_or_insert_with(|| Plan::current().full())
            {
                // Its holder sees the registration gone and ends.
                let _ = fs::remove_file(&path);
                continue;
            }
            holder::touch(&path);
        }
        return Some(owner.pid);
    }
    None
}

/// The live namespace holder (not a container owner) registered under `root`, if any.
pub fn namespace_holder(root: &Path) -> Option<i32> {
    fs::read_dir(holders_dir(root))
        .ok()?
        .flatten()
        .filter(|e| holder::is_holder(&e.path()))
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(crate::owner::Owner::parse_tag)
        })
        .find(|o| o.is_alive())
        .map(|o| o.pid)
}

/// Joins the user namespace of `pid` (a process of ours: its namespace's owner is our uid, so we
/// hold every capability in it).
fn join(pid: i32) -> Result<()> {
    let ns = fs::File::open(format!("/proc/{pid}/ns/user"))?;
    let own = fs::metadata("/proc/self/ns/user")?;
    let theirs = ns.metadata()?;
    use std::os::unix::fs::MetadataExt;
    if own.ino() == theirs.ino() && own.dev() == theirs.dev() {
        bail!("process {pid} is in our own user namespace");
    }
    nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWUSER)
        .with_context(|| format!("join the user namespace of process {pid}"))?;
    Ok(())
}

/// A registration of the calling process's user namespace under `root` (removed on drop).
#[derive(Debug)]
pub struct NamespaceHold {
    path: PathBuf,
}

impl Drop for NamespaceHold {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Registers this process (a container's owner) as a holder of its user namespace, so later
/// kilns join it; `None` outside a user namespace.
pub fn hold_namespace(root: &Path) -> Option<NamespaceHold> {
    if !in_userns() {
        return None;
    }
    let dir = holders_dir(root);
    fs::create_dir_all(&dir).ok()?;
    let path = dir.join(crate::owner::Owner::current().tag());
    fs::write(&path, b"").ok()?;
    Some(NamespaceHold { path })
}

/// The helper tools, if installed.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin", "/bin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| {
            fs::metadata(p)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// The mapping a new namespace gets for this user: the ranges and tools when all are there.
pub struct Plan {
    pub uid: u32,
    pub gid: u32,
    pub uid_ranges: Vec<SubIdRange>,
    pub gid_ranges: Vec<SubIdRange>,
    pub newuidmap: Option<PathBuf>,
    pub newgidmap: Option<PathBuf>,
}

impl Plan {
    pub fn current() -> Plan {
        let uid = nix::unistd::getuid().as_raw();
        let gid = nix::unistd::getgid().as_raw();
        let name = user_name(uid);
        let read = |f: &str| fs::read_to_string(f).unwrap_or_default();
        Plan {
            uid,
            gid,
            uid_ranges: subid_ranges(&read("/etc/subuid"), &name, uid),
            gid_ranges: subid_ranges(&read("/etc/subgid"), &name, uid),
            newuidmap: find_tool("newuidmap"),
            newgidmap: find_tool("newgidmap"),
        }
    }

    pub fn full(&self) -> bool {
        !self.uid_ranges.is_empty()
            && !self.gid_ranges.is_empty()
            && self.newuidmap.is_some()
            && self.newgidmap.is_some()
    }
}

/// The arguments of newuidmap/newgidmap after the pid: `0 ID 1` then each range at 1, 1+n, ...
pub fn map_args(id: u32, ranges: &[SubIdRange]) -> Vec<String> {
    let mut args = vec!["0".to_string(), id.to_string(), "1".to_string()];
    let mut next: u64 = 1;
    for r in ranges {
        if next + r.count as u64 > u32::MAX as u64 {
            break;
        }
        args.extend([next.to_string(), r.start.to_string(), r.count.to_string()]);
        next += r.count as u64;
    }
    args
}

fn create_userns() -> Result<Mapping> {
    let plan = Plan::current();
    if plan.full() {
        create_full(&plan)?;
        Ok(Mapping::Full)
    } else {
        create_single(&plan)?;
        Ok(Mapping::Single)
    }
}

fn unshare_user() -> Result<()> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER).map_err(|e| {
        anyhow::anyhow!(
            "unshare(CLONE_NEWUSER): {e}: this system does not let unprivileged users create user \
             namespaces (sysctl user.max_user_namespaces, kernel.unprivileged_userns_clone, or an \
             AppArmor/seccomp policy refuses it)"
        )
    })
}

fn create_single(plan: &Plan) -> Result<()> {
    unshare_user()?;
    fs::write("/proc/self/setgroups", b"deny").context("write /proc/self/setgroups")?;
    fs::write("/proc/self/uid_map", format!("0 {} 1\n", plan.uid))
        .context("write /proc/self/uid_map")?;
    fs::write("/proc/self/gid_map", format!("0 {} 1\n", plan.gid))
        .context("write /proc/self/gid_map")?;
    Ok(())
}

/// A helper forked before the unshare writes our maps with newuidmap/newgidmap (they must run in
/// the parent namespace), then reports and exits; the pid of this process stays what it was.
fn create_full(plan: &Plan) -> Result<()> {
    let (go_r, go_w) = nix::unistd::pipe().context("pipe")?;
    let (res_r, res_w) = nix::unistd::pipe().context("pipe")?;
    let me = std::process::id();
    let uid_args = map_args(plan.uid, &plan.uid_ranges);
    let gid_args = map_args(plan.gid, &plan.gid_ranges);
    let (newuidmap, newgidmap) = (plan.newuidmap.clone(), plan.newgidmap.clone());
    // SAFETY: kiln has one thread here (enter runs before any runtime or thread starts), so the
    // child may allocate and spawn; it leaves only by _exit.
    match unsafe { nix::unistd::fork() }.context("fork the id-map helper")? {
        nix::unistd::ForkResult::Child => {
            drop(go_w);
            drop(res_r);
            let mut go = fs::File::from(go_r);
            let mut res = fs::File::from(res_w);
            let mut b = [0u8; 1];
            let msg = if go.read(&mut b).map(|n| n == 1).unwrap_or(false) {
                // Both at once: each is a setuid exec, the slowest part of entering.
                let spawn = |tool: &Option<PathBuf>, args: &[String]| {
                    let tool = tool.clone().unwrap_or_default();
                    let child = std::process::Command::new(&tool)
                        .arg(me.to_string())
                        .args(args)
                        .stdin(std::process::Stdio::null())
                        .stdout(std::process::Stdio::null())
                        .stderr(std::process::Stdio::piped())
                        .spawn();
                    (tool, args.join(" "), child)
                };
                let done = |(tool, args, child): (
                    PathBuf,
                    String,
                    std::io::Result<std::process::Child>,
                )| {
                    match child.and_then(|c| c.wait_with_output()) {
                        Ok(o) if o.status.success() => None,
                        Ok(o) => Some(format!(
                            "{} {me} {args}: {}",
                            tool.display(),
                            String::from_utf8_lossy(&o.stderr).trim()
                        )),
                        Err(e) => Some(format!("{}: {e}", tool.display())),
                    }
                };
                let uid = spawn(&newuidmap, &uid_args);
                let gid = spawn(&newgidmap, &gid_args);
                let (u, g) = (done(uid), done(gid));
                u.or(g).unwrap_or_default()
            } else {
                "kiln did not enter its user namespace".to_string()
            };
            let _ = res.write_all(msg.as_bytes());
            // SAFETY: ends the helper without running the parent's exit handlers.
            unsafe { libc::_exit(0) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(go_r);
            drop(res_w);
            let unshared = unshare_user();
            let mut go = fs::File::from(go_w);
            if unshared.is_ok() {
                let _ = go.write_all(b"1");
            }
            drop(go);
            let mut msg = String::new();
            let _ = fs::File::from(res_r).read_to_string(&mut msg);
            let _ = nix::sys::wait::waitpid(child, None);
            unshared?;
            if !msg.is_empty() {
                bail!(
                    "writing the id maps failed: {msg} (check /etc/subuid and /etc/subgid for {})",
                    user_name(plan.uid)
                );
            }
            Ok(())
        }
    }
}
