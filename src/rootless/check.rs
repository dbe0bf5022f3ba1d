//! `kiln info`'s rootless section: each requirement of rootless kiln for the current user, whether
//! it is met, and what its absence costs.

use std::fs;
use std::path::{Path, PathBuf};

use super::{find_tool, host_uid, in_userns, mapping, subid_ranges, user_name, Mapping};

/// One requirement.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Requirement {
    pub name: &'static str,
    pub ok: bool,
    /// What was found.
    pub detail: String,
    /// What is lost when it is missing (empty when met).
    pub cost: String,
}

fn req(name: &'static str, ok: bool, detail: String, cost: &str) -> Requirement {
    Requirement {
        name,
        ok,
        detail,
        cost: if ok { String::new() } else { cost.to_string() },
    }
}

/// The requirements, checked for the user kiln acts for. `root` is the state root (a scratch
/// overlay is tried under it when kiln runs in a user namespace).
pub fn requirements(root: &Path) -> Vec<Requirement> {
    let uid = host_uid();
    let name = user_name(uid);
    let mut out = Vec::new();
    let max_ns = fs::read_to_string("/proc/sys/user/max_user_namespaces")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    let apparmor = fs::read_to_string("/proc/sys/kernel/apparmor_restrict_unprivileged_userns")
        .map(|s| s.trim() == "1")
        .unwrap_or(false);
    let userns_ok = in_userns() || (max_ns != Some(0) && !apparmor);
    out.push(req(
        "user namespaces",
        userns_ok,
        match (in_userns(), max_ns) {
            (true, _) => "kiln runs in one".to_string(),
            (false, Some(n)) if apparmor => {
                format!("user.max_user_namespaces={n}, but AppArmor restricts unprivileged ones")
            }
            (false, Some(n)) => format!("user.max_user_namespaces={n}"),
            (false, None) => "unknown (no /proc/sys/user/max_user_namespaces)".to_string(),
        },
        "kiln cannot run as this user at all",
    ));
    let read = |f: &str| fs::read_to_string(f).unwrap_or_default();
    let cost_range = "only your own id is mapped: files of other owners are stored as root, \
                      COPY --chown to another id and RUN steps that change owners fail";
    for (file, label) in [
        ("/etc/subuid", "subuid range"),
        ("/etc/subgid", "subgid range"),
    ] {
        let ranges = subid_ranges(&read(file), &name, uid);
        let detail = if ranges.is_empty() {
            format!("none for {name} in {file} (usermod --add-subuids/--add-subgids 100000-165535 {name})")
        } else {
            ranges
                .iter()
                .map(|r| format!("{}-{}", r.start, r.start as u64 + r.count as u64 - 1))
                .collect::<Vec<_>>()
                .join(", ")
        };
        out.push(req(label, !ranges.is_empty(), detail, cost_range));
    }
    for tool in ["newuidmap", "newgidmap"] {
        let found = find_tool(tool);
        out.push(req(
            if tool == "newuidmap" {
                "newuidmap"
            } else {
                "newgidmap"
            },
            found.is_some(),
            found
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "not installed (apt-get install uidmap)".to_string()),
            cost_range,
        ));
    }
    out.push(req(
        "id mapping in use",
        mapping() != Mapping::Single,
        match mapping() {
            Mapping::Host => "host ids (kiln runs as root)".to_string(),
            Mapping::Full => fs::read_to_string("/proc/self/uid_map")
                .map(|t| t.split_whitespace().collect::<Vec<_>>().join(" "))
                .unwrap_or_default(),
            Mapping::Single => format!("only uid {uid}"),
        },
        cost_range,
    ));
    let (overlay_ok, overlay_detail) = overlay_probe(root);
    out.push(req(
        "overlay in a user namespace",
        overlay_ok,
        overlay_detail,
        "snapshots are copies of their layers (slower, more disk; the same layers)",
    ));
    let (cg_ok, cg_detail) = cgroup_delegation();
    out.push(req(
        "cgroup delegation",
        cg_ok,
        cg_detail,
        "resource limits (-m, --cpus, --cpuset-cpus, --pids-limit, --cpu-shares) fail; \
         pause/unpause, stats and top need cgroups too",
    ));
    if in_userns() {
        let holder = super::namespace_holder(root);
        let off = super::holder::idle_limit().is_none();
        out.push(req(
            "namespace holder",
            holder.is_some(),
            match (holder, off) {
                (Some(pid), _) => {
                    format!("process {pid} keeps the user namespace for the next kiln")
                }
                (None, true) => format!("turned off ({}=0)", super::holder::HOLD_ENV),
                (None, false) => "none running".to_string(),
            },
            "each kiln makes a new user namespace (two setuid execs of newuidmap/newgidmap, \
             a few milliseconds a command)",
        ));
    }
    let start = unprivileged_port_start();
    out.push(req(
        "low ports",
        !in_userns() || start == 0,
        format!("net.ipv4.ip_unprivileged_port_start={start}"),
        "-p with a host port below that number fails",
    ));
    out
}

/// Mounts a scratch overlay under the root's `tmp/` (kiln's own mount namespace: it goes with
/// the process).
fn overlay_probe(root: &Path) -> (bool, String) {
    if !in_userns() {
        return (true, "not needed (kiln runs as root)".to_string());
    }
    let base = root.join("tmp");
    let _ = fs::create_dir_all(&base);
    let Ok(dir) = tempfile::Builder::new()
        .prefix("overlay-probe.")
        .tempdir_in(&base)
    else {
        return (
            false,
            format!("cannot make a probe directory in {}", base.display()),
        );
    };
    let d: Vec<PathBuf> = ["l", "u", "w", "m"]
        .iter()
        .map(|n| dir.path().join(n))
        .collect();
    for p in &d {
        let _ = fs::create_dir(p);
    }
    let data = format!(
        "lowerdir={},upperdir={},workdir={},userxattr,metacopy=off,index=off",
        d[0].display(),
        d[1].display(),
        d[2].display()
    );
    let r = nix::mount::mount(
        Some("overlay"),
        &d[3],
        Some("overlay"),
        nix::mount::MsFlags::empty(),
        Some(data.as_str()),
    );
    let _ = nix::mount::umount2(&d[3], nix::mount::MntFlags::MNT_DETACH);
    match r {
        Ok(()) => (true, "native overlayfs with userxattr".to_string()),
        Err(e) => (false, format!("mount refused: {e} (Linux 5.11+ allows it)")),
    }
}

fn cgroup_delegation() -> (bool, String) {
    if !in_userns() {
        return (true, "not needed (kiln runs as root)".to_string());
    }
    match super::delegation::current() {
        Ok(d) => (
            true,
            format!(
                "cgroup v2 subtree {} (controllers: {})",
                d.dir.display(),
                d.controllers_text()
            ),
        ),
        Err(why) => (false, why.clone()),
    }
}

/// `net.ipv4.ip_unprivileged_port_start` (1024 when unreadable).
pub fn unprivileged_port_start() -> u16 {
    fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1024)
}
