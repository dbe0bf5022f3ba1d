//! `kiln version` and `kiln info`: what kiln is and what this machine gives it, in the layout of
//! `docker version` and `docker info` (kiln has no daemon, so there is no Server section).

use std::path::Path;

use anyhow::Result;
use clap::Subcommand;

use super::Globals;

#[derive(Debug, Subcommand)]
pub enum SystemCommands {
    /// Show kiln's version.
    Version {
        /// A Go template (`{{.Client.Version}}`) or `json`.
        #[arg(short, long)]
        format: Option<String>,
    },
    /// Show how kiln is set up on this machine: storage, cgroups, registries, platforms.
    Info {
        /// A Go template (`{{.Driver}}`, `{{.NCPU}}`) or `json`.
        #[arg(short, long)]
        format: Option<String>,
    },
}

pub fn run(cmd: SystemCommands, globals: &Globals) -> Result<i32> {
    match cmd {
        SystemCommands::Version { format: Some(f) } => {
            print_formatted(&version_json(), &f, "version")
        }
        SystemCommands::Info { format: Some(f) } => {
            print_formatted(&info_json(&globals.root)?, &f, "info")
        }
        SystemCommands::Version { format: None } => {
            for line in version_lines() {
                crate::outln!("{line}")?;
            }
            Ok(0)
        }
        SystemCommands::Info { format: None } => {
            for line in info_lines(&globals.root)? {
                crate::outln!("{line}")?;
            }
            Ok(0)
        }
    }
}

fn os_arch() -> String {
    format!("linux/{}", crate::oci::image::host_architecture())
}

fn version_lines() -> Vec<String> {
    vec![
        "kiln:".into(),
        format!(" Version:           {}", env!("CARGO_PKG_VERSION")),
        format!(" OS/Arch:           {}", os_arch()),
        " Daemon:            none (kiln builds and runs in its own process)".into(),
    ]
}

/// The filesystem kind under `path`, by its statfs magic, as docker's "Backing Filesystem".
fn backing_filesystem(path: &Path) -> String {
    let Ok(st) = nix::sys::statfs::statfs(path) else {
        return "unknown".into();
    };
    match st.filesystem_type().0 as u64 {
        0xEF53 => "extfs".into(),
        0x5846_5342 => "xfs".into(),
        0x9123_683E => "btrfs".into(),
        0x0102_1994 => "tmpfs".into(),
        0x794C_7630 => "overlayfs".into(),
        0x2FC1_2FC1 => "zfs".into(),
        0xF2F5_2010 => "f2fs".into(),
        other => format!("unknown (0x{other:x})"),
    }
}

/// The platforms this machine runs: its own, then each qemu interpreter registered with
/// binfmt_misc and enabled (read from `binfmt_dir`, normally /proc/sys/fs/binfmt_misc).
pub fn platforms(binfmt_dir: &Path) -> Vec<String> {
    let native = os_arch();
    let mut out = vec![native.clone()];
    let Ok(entries) = std::fs::read_dir(binfmt_dir) else {
        return out;
    };
    let mut emulated = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "register" || name == "status" {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        if let Some(p) = binfmt_platform(&name, &text) {
            if p != native && !emulated.contains(&p) {
                emulated.push(p);
            }
        }
    }
    emulated.sort();
    out.extend(emulated);
    out
}

/// The platform of one enabled binfmt_misc entry whose name or interpreter is qemu's
/// (`qemu-aarch64`, `/usr/libexec/qemu-binfmt/aarch64-binfmt-P`), as OCI names it.
fn binfmt_platform(name: &str, text: &str) -> Option<String> {
    if text.lines().next()? != "enabled" {
        return None;
    }
    let interpreter = text
        .lines()
        .find_map(|l| l.strip_prefix("interpreter "))
        .unwrap_or("");
    let base = interpreter.rsplit('/').next().unwrap_or("");
    let arch = if let Some(a) = name.strip_prefix("qemu-") {
        a.to_string()
    } else if interpreter.contains("qemu") {
        let a = base.strip_prefix("qemu-").unwrap_or(base);
        a.split(['-', '.']).next().unwrap_or(a).to_string()
    } else {
        return None;
    };
    let platform = match arch.as_str() {
        "aarch64" => "linux/arm64",
        "arm" | "armeb" => "linux/arm/v7",
        "x86_64" => "linux/amd64",
        "i386" | "i486" => "linux/386",
        "ppc64le" => "linux/ppc64le",
        "s390x" => "linux/s390x",
        "riscv64" => "linux/riscv64",
        "mips64el" => "linux/mips64le",
        "mips64" => "linux/mips64",
        "loongarch64" => "linux/loong64",
        _ => return None,
    };
    Some(platform.into())
}

fn os_release() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("PRETTY_NAME=")
                    .map(|v| v.trim_matches('"').to_string())
            })
        })
        .unwrap_or_else(|| "unknown".into())
}

fn mem_total_bytes() -> u64 {
    let kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("MemTotal:")
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
        })
        .unwrap_or(0);
    kib * 1024
}

fn total_memory() -> String {
    // docker prints binary units with two decimals: 23.54GiB.
    let bytes = mem_total_bytes() as f64;
    let gib = bytes / (1u64 << 30) as f64;
    if gib >= 1.0 {
        format!("{gib:.2}GiB")
    } else {
        format!("{:.2}MiB", bytes / (1u64 << 20) as f64)
    }
}

/// What `kiln info` reports, under docker's `info` field names (`{{.Driver}}`, `{{.NCPU}}`,
/// `{{.OperatingSystem}}`), plus kiln's own (`KilnRootDir`, `Platforms`).
fn info_json(root: &Path) -> Result<serde_json::Value> {
    // Counts come from the store when the root exists; `info` does not create one.
    let (mut running, mut stopped, mut images) = (0, 0, 0);
    if root.join("kiln.db").exists() {
        let store = crate::runner::open_store(root)?;
        for rec in crate::runner::state::list(&store)? {
            if rec.status() == crate::runner::state::Status::Running {
                running += 1;
            } else {
                stopped += 1;
            }
        }
        let mut ids: Vec<String> = store
            .list_images()?
            .into_iter()
            .map(|i| i.config_digest)
            .collect();
        ids.sort();
        ids.dedup();
        images = ids.len();
    }
    let fs_probe = if root.exists() {
        root
    } else {
        root.ancestors()
            .find(|p| p.exists())
            .unwrap_or(Path::new("/"))
    };
    let cgroup = match crate::sandbox::cgroup::detect() {
        crate::sandbox::cgroup::CgroupVersion::V1 => "1",
        crate::sandbox::cgroup::CgroupVersion::V2 => "2",
    };
    let uname = nix::sys::utsname::uname().ok();
    let config = crate::registry::config::RegistryConfig::load()?;
    let mut insecure = vec!["127.0.0.0/8".to_string(), "::1/128".to_string()];
    insecure.extend(config.insecure_registries.iter().cloned());
    Ok(serde_json::json!({
        "Containers": running + stopped,
        "ContainersRunning": running,
        "ContainersPaused": 0,
        "ContainersStopped": stopped,
        "Images": images,
        "ServerVersion": env!("CARGO_PKG_VERSION"),
        "Driver": "overlay",
        "DriverStatus": [
            ["Backing Filesystem", backing_filesystem(fs_probe)],
            ["Options", if crate::rootless::in_userns() { "userxattr, metacopy=off" } else { "redirect_dir=off, metacopy=off" }],
        ],
        "LoggingDriver": "json-file",
        "CgroupDriver": "cgroupfs",
        "CgroupVersion": cgroup,
        "Rootless": crate::rootless::in_userns() || !nix::unistd::geteuid().is_root(),
        "RootlessRequirements": crate::rootless::check::requirements(root),
        "KernelVersion": uname.as_ref().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default(),
        "OperatingSystem": os_release(),
        "OSType": "linux",
        "Architecture": std::env::consts::ARCH,
        "Platforms": platforms(Path::new("/proc/sys/fs/binfmt_misc")),
        "NCPU": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "MemTotal": mem_total_bytes(),
        "Name": uname.as_ref().map(|u| u.nodename().to_string_lossy().into_owned()).unwrap_or_default(),
        "KilnRootDir": root.display().to_string(),
        // docker's name for the same (`docker info -f '{{.DockerRootDir}}'` in scripts).
        "DockerRootDir": root.display().to_string(),
        "SystemTime": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        "Debug": false,
        "Warnings": [],
        "RegistryConfig": {
            "InsecureRegistryCIDRs": insecure,
            "Mirrors": config.registry_mirrors,
        },
    }))
}

fn info_lines(root: &Path) -> Result<Vec<String>> {
    let info = info_json(root)?;
    let s = |k: &str| match &info[k] {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut lines = vec![
        format!("Containers: {}", s("Containers")),
        format!(" Running: {}", s("ContainersRunning")),
        format!(" Paused: {}", s("ContainersPaused")),
        format!(" Stopped: {}", s("ContainersStopped")),
        format!("Images: {}", s("Images")),
        format!("Version: {}", s("ServerVersion")),
        "Storage Driver: overlay (snapshotter: overlayfs)".into(),
    ];
    for pair in info["DriverStatus"].as_array().into_iter().flatten() {
        lines.push(format!(
            " {}: {}",
            pair[0].as_str().unwrap_or(""),
            pair[1].as_str().unwrap_or("")
        ));
    }
    lines.push(format!("Logging Driver: {}", s("LoggingDriver")));
    lines.push(format!("Cgroup Driver: {}", s("CgroupDriver")));
    lines.push(format!("Cgroup Version: {}", s("CgroupVersion")));
    lines.push(format!("Rootless: {}", s("Rootless")));
    if info["Rootless"] == serde_json::Value::Bool(true) {
        for r in info["RootlessRequirements"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let ok = r["ok"].as_bool().unwrap_or(false);
            let mut line = format!(
                " {}: {} ({})",
                r["name"].as_str().unwrap_or(""),
                if ok { "yes" } else { "MISSING" },
                r["detail"].as_str().unwrap_or("")
            );
            if !ok {
                line.push_str(&format!(": {}", r["cost"].as_str().unwrap_or("")));
            }
            lines.push(line);
        }
    }
    lines.push(format!("Kernel Version: {}", s("KernelVersion")));
    lines.push(format!("Operating System: {}", s("OperatingSystem")));
    lines.push(format!("OSType: {}", s("OSType")));
    lines.push(format!("Architecture: {}", s("Architecture")));
    lines.push("Platforms:".into());
    for p in info["Platforms"].as_array().into_iter().flatten() {
        lines.push(format!(" {}", p.as_str().unwrap_or("")));
    }
    lines.push(format!("CPUs: {}", s("NCPU")));
    lines.push(format!("Total Memory: {}", total_memory()));
    lines.push(format!("Name: {}", s("Name")));
    lines.push(format!("Kiln Root Dir: {}", s("KilnRootDir")));
    lines.push("Insecure Registries:".into());
    for r in info["RegistryConfig"]["InsecureRegistryCIDRs"]
        .as_array()
        .into_iter()
        .flatten()
    {
        lines.push(format!(" {}", r.as_str().unwrap_or("")));
    }
    let mirrors = info["RegistryConfig"]["Mirrors"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !mirrors.is_empty() {
        lines.push("Registry Mirrors:".into());
        for m in &mirrors {
            lines.push(format!(" {}", m.as_str().unwrap_or("")));
        }
    }
    Ok(lines)
}

/// docker's `version` document; kiln has no daemon, so only `Client` (and `Server` is null).
fn version_json() -> serde_json::Value {
    serde_json::json!({
        "Client": {
            "Platform": {"Name": "kiln"},
            "Version": env!("CARGO_PKG_VERSION"),
            "ApiVersion": "",
            "DefaultAPIVersion": "",
            "GitCommit": "",
            "GoVersion": "",
            "Os": "linux",
            "Arch": crate::oci::image::host_architecture(),
            "BuildTime": "",
            "Context": "default",
        },
        "Server": null,
    })
}

/// Prints `doc` through `--format`: `json` as one line, else a Go template.
fn print_formatted(doc: &serde_json::Value, format: &str, what: &str) -> Result<i32> {
    use anyhow::Context as _;
    if format.trim() == "json" {
        crate::outln!("{doc}")?;
        return Ok(0);
    }
    let t =
        super::template::Template::parse(format).with_context(|| format!("{what}: --format"))?;
    let text = t
        .execute(doc)
        .with_context(|| format!("{what}: --format"))?;
    crate::outln!("{text}")?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_entries_name_their_platforms() {
        let on = "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: POCF\n\
                  offset 0\nmagic 7f454c460201010000000000000000000200b700\n";
        assert_eq!(
            binfmt_platform("qemu-aarch64", on).as_deref(),
            Some("linux/arm64")
        );
        let by_interp = "enabled\ninterpreter /usr/bin/qemu-riscv64-static\nflags: F\n";
        assert_eq!(
            binfmt_platform("riscv", by_interp).as_deref(),
            Some("linux/riscv64")
        );
        let off = on.replacen("enabled", "disabled", 1);
        assert_eq!(binfmt_platform("qemu-aarch64", &off), None);
        let other = "enabled\ninterpreter /usr/bin/wine\n";
        assert_eq!(binfmt_platform("wine", other), None);
    }

    #[test]
    fn platforms_are_native_first_then_registered_emulators() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("status"), "enabled\n").unwrap();
        std::fs::write(dir.path().join("register"), "").unwrap();
        std::fs::write(
            dir.path().join("qemu-s390x"),
            "enabled\ninterpreter /usr/libexec/qemu-binfmt/s390x-binfmt-P\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("qemu-aarch64"),
            "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\n",
        )
        .unwrap();
        let got = platforms(dir.path());
        assert_eq!(got[0], os_arch());
        let rest: Vec<&str> = got[1..].iter().map(String::as_str).collect();
        let mut want = vec!["linux/arm64", "linux/s390x"];
        want.retain(|p| *p != os_arch());
        assert_eq!(rest, want);
        // No binfmt_misc mounted: the machine's own platform only.
        assert_eq!(platforms(&dir.path().join("absent")), vec![os_arch()]);
    }
}
