//! `kiln version` and `kiln info`: what kiln is and what this machine gives it, in the layout of
//! `docker version` and `docker info` (kiln has no daemon, so there is no Server section).

use std::path::Path;

use anyhow::Result;
use clap::Subcommand;

use super::Globals;

#[derive(Debug, Subcommand)]
pub enum SystemCommands {
    /// Show kiln's version.
    Version,
    /// Show how kiln is set up on this machine: storage, cgroups, registries, platforms.
    Info,
}

pub fn run(cmd: SystemCommands, globals: &Globals) -> Result<i32> {
    match cmd {
        SystemCommands::Version => {
            for line in version_lines() {
                crate::outln!("{line}")?;
            }
            Ok(0)
        }
        SystemCommands::Info => {
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

fn total_memory() -> String {
    let kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("MemTotal:")
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
        })
        .unwrap_or(0);
    // docker prints binary units with two decimals: 23.54GiB.
    let bytes = kib as f64 * 1024.0;
    let gib = bytes / (1u64 << 30) as f64;
    if gib >= 1.0 {
        format!("{gib:.2}GiB")
    } else {
        format!("{:.2}MiB", bytes / (1u64 << 20) as f64)
    }
}

fn info_lines(root: &Path) -> Result<Vec<String>> {
    let mut lines = Vec::new();
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
    lines.push(format!("Containers: {}", running + stopped));
    lines.push(format!(" Running: {running}"));
    lines.push(" Paused: 0".into());
    lines.push(format!(" Stopped: {stopped}"));
    lines.push(format!("Images: {images}"));
    lines.push(format!("Version: {}", env!("CARGO_PKG_VERSION")));
    lines.push("Storage Driver: overlay (snapshotter: overlayfs)".into());
    let fs_probe = if root.exists() {
        root
    } else {
        root.ancestors()
            .find(|p| p.exists())
            .unwrap_or(Path::new("/"))
    };
    lines.push(format!(
        " Backing Filesystem: {}",
        backing_filesystem(fs_probe)
    ));
    lines.push(" Options: redirect_dir=off, metacopy=off".into());
    lines.push("Logging Driver: json-file".into());
    lines.push("Cgroup Driver: cgroupfs".into());
    let cgroup = match crate::sandbox::cgroup::detect() {
        crate::sandbox::cgroup::CgroupVersion::V1 => "1",
        crate::sandbox::cgroup::CgroupVersion::V2 => "2",
    };
    lines.push(format!("Cgroup Version: {cgroup}"));
    lines.push(format!("Rootless: {}", !nix::unistd::geteuid().is_root()));
    let uname = nix::sys::utsname::uname().ok();
    lines.push(format!(
        "Kernel Version: {}",
        uname
            .as_ref()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    lines.push(format!("Operating System: {}", os_release()));
    lines.push("OSType: linux".into());
    lines.push(format!("Architecture: {}", std::env::consts::ARCH));
    lines.push("Platforms:".into());
    for p in platforms(Path::new("/proc/sys/fs/binfmt_misc")) {
        lines.push(format!(" {p}"));
    }
    lines.push(format!(
        "CPUs: {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    ));
    lines.push(format!("Total Memory: {}", total_memory()));
    lines.push(format!(
        "Name: {}",
        uname
            .as_ref()
            .map(|u| u.nodename().to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    lines.push(format!("Kiln Root Dir: {}", root.display()));
    let config = crate::registry::config::RegistryConfig::load()?;
    lines.push("Insecure Registries:".into());
    lines.push(" 127.0.0.0/8".into());
    lines.push(" ::1/128".into());
    for r in &config.insecure_registries {
        lines.push(format!(" {r}"));
    }
    if !config.registry_mirrors.is_empty() {
        lines.push("Registry Mirrors:".into());
        for m in &config.registry_mirrors {
            lines.push(format!(" {m}"));
        }
    }
    Ok(lines)
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
