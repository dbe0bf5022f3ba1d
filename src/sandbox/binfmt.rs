//! Running binaries of other platforms: what binfmt_misc has registered (qemu user-mode
//! interpreters), registering the installed ones (`kiln binfmt --install`), and the one clear
//! error a RUN or `kiln run` gets when a platform's binaries cannot run here.
//!
//! With qemu-user the emulated program is a host process (qemu) making host system calls, so the
//! sandbox's seccomp filter (built for the host's architecture) applies to it unchanged. The
//! interpreter must be registered with the fix-binary flag (`F`): the kernel then opens it at
//! registration, and it works inside a container's root filesystem, where /usr/bin/qemu-* is not.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::platform::Platform;

/// Where binfmt_misc is mounted.
pub const BINFMT_DIR: &str = "/proc/sys/fs/binfmt_misc";
/// Where Debian's qemu-user-static puts its registrations (systemd-binfmt's format).
pub const BINFMT_CONF_DIR: &str = "/usr/lib/binfmt.d";

/// One binfmt_misc entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub enabled: bool,
    pub interpreter: String,
    pub flags: String,
    /// The ELF machine and class (64-bit?) its magic matches, when it matches ELF files.
    pub elf: Option<(u16, bool)>,
}

impl Entry {
    /// Whether the kernel opened the interpreter at registration (works in any mount namespace).
    pub fn fix_binary(&self) -> bool {
        self.flags.contains('F')
    }
}

/// Parses one entry's file (`enabled`, `interpreter ...`, `flags: ...`, `magic ...`).
pub fn parse_entry(name: &str, text: &str) -> Entry {
    let mut entry = Entry {
        name: name.to_string(),
        enabled: text.lines().next() == Some("enabled"),
        interpreter: String::new(),
        flags: String::new(),
        elf: None,
    };
    let mut offset = 0usize;
    let mut magic = None;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("interpreter ") {
            entry.interpreter = v.trim().to_string();
        } else if let Some(v) = line.strip_prefix("flags:") {
            entry.flags = v.trim().to_string();
        } else if let Some(v) = line.strip_prefix("offset ") {
            offset = v.trim().parse().unwrap_or(0);
        } else if let Some(v) = line.strip_prefix("magic ") {
            magic = hex::decode(v.trim()).ok();
        }
    }
    if let Some(m) = magic.filter(|m| offset == 0 && m.len() >= 20 && m[..4] == *b"\x7fELF") {
        let machine = if m[5] == 2 {
            u16::from_be_bytes([m[18], m[19]])
        } else {
            u16::from_le_bytes([m[18], m[19]])
        };
        entry.elf = Some((machine, m[4] == 2));
    }
    entry
}

/// Every binfmt_misc entry under `dir` (none when it is not mounted).
pub fn entries_in(dir: &Path) -> Vec<Entry> {
    let Ok(read) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<Entry> = read
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            if name == "register" || name == "status" {
                return None;
            }
            let text = std::fs::read_to_string(e.path()).ok()?;
            Some(parse_entry(&name, &text))
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// How this machine runs a platform's binaries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Support {
    Native,
    /// Through a registered, enabled interpreter.
    Emulated {
        entry: String,
        interpreter: String,
        fix_binary: bool,
    },
    /// Not at all; says why.
    Unavailable(String),
}

/// Whether `platform` runs here, natively or through binfmt_misc entries under `dir`.
pub fn support_in(dir: &Path, platform: &Platform) -> Support {
    if platform.is_native() {
        return Support::Native;
    }
    let Some(machine) = platform.elf_machine() else {
        return Support::Unavailable(format!("kiln knows no ELF machine for {platform}"));
    };
    if !dir.join("status").exists() {
        return Support::Unavailable(format!("binfmt_misc is not mounted at {}", dir.display()));
    }
    let entries = entries_in(dir);
    let found = entries.iter().find(|e| e.elf == Some(machine));
    match found {
        Some(e) if e.enabled => Support::Emulated {
            entry: e.name.clone(),
            interpreter: e.interpreter.clone(),
            fix_binary: e.fix_binary(),
        },
        Some(e) => Support::Unavailable(format!("its binfmt_misc entry {} is disabled", e.name)),
        None => Support::Unavailable("no emulator is registered for it in binfmt_misc".into()),
    }
}

pub fn support(platform: &Platform) -> Support {
    support_in(Path::new(BINFMT_DIR), platform)
}

/// The error for a platform this machine cannot run: the platform, why, and the fixing command.
pub fn cannot_run_error(platform: &Platform, why: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "cannot run {platform} binaries on this {} machine: {why}; run `kiln binfmt --install \
         {platform}` (as root, with Debian's qemu-user-static installed) to register its qemu \
         emulator",
        Platform::host()
    )
}

/// Checks that `platform`'s binaries can run here (a RUN step, `kiln run --platform`), before
/// anything is started; an emulator registered without the fix-binary flag is refused too, as
/// its interpreter would be looked up inside the container's root filesystem.
pub fn ensure_runnable(platform: &Platform) -> Result<()> {
    match support(platform) {
        Support::Native => Ok(()),
        Support::Emulated {
            fix_binary: true, ..
        } => Ok(()),
        Support::Emulated { entry, .. } => Err(cannot_run_error(
            platform,
            &format!(
                "its binfmt_misc entry {entry} lacks the fix-binary (F) flag, so its interpreter \
                 is not found inside a container (remove it with `echo -1 > {BINFMT_DIR}/{entry}`)"
            ),
        )),
        Support::Unavailable(why) => Err(cannot_run_error(platform, &why)),
    }
}

/// The platform an ELF header names (`e_ident` class and data, `e_machine`), if kiln knows it.
pub fn elf_platform(header: &[u8]) -> Option<Platform> {
    if header.len() < 20 || header[..4] != *b"\x7fELF" {
        return None;
    }
    let machine = if header[5] == 2 {
        u16::from_be_bytes([header[18], header[19]])
    } else {
        u16::from_le_bytes([header[18], header[19]])
    };
    let is64 = header[4] == 2;
    let arch = [
        "amd64", "386", "arm64", "arm", "ppc64le", "s390x", "riscv64", "mips64le",
    ]
    .into_iter()
    .find(|a| Platform::normalized("linux", a, None).elf_machine() == Some((machine, is64)))?;
    Some(Platform::normalized("linux", arch, None))
}

/// What an ENOEXEC from execve of `program` means, when it is an ELF binary of another
/// platform: the error to show instead of a bare "exec format error".
pub fn explain_exec_format_error(program: &Path) -> Option<String> {
    use std::io::Read;
    let mut header = [0u8; 20];
    let mut f = std::fs::File::open(program).ok()?;
    f.read_exact(&mut header).ok()?;
    let platform = elf_platform(&header)?;
    if platform.is_native() {
        return None;
    }
    // This runs inside the container, whose /proc shows no binfmt_misc of the host: the kernel's
    // ENOEXEC itself says no usable emulator was registered (one with the F flag would have run).
    let why = "no emulator is registered for it in binfmt_misc (with the fix-binary flag, which \
               containers need)";
    Some(format!(
        "exec {}: {:#}",
        program.display(),
        cannot_run_error(&platform, why)
    ))
}

/// A qemu registration kiln can install: the platform, the `binfmt.d` file, its line.
#[derive(Debug, Clone)]
pub struct Installable {
    pub platform: Platform,
    pub conf: PathBuf,
    pub line: String,
}

/// The registration line of `conf_dir/qemu-<arch>.conf` for `platform`, with the fix-binary
/// flag added; `None` when qemu-user-static has no file for it.
pub fn installable_in(conf_dir: &Path, platform: &Platform) -> Result<Option<Installable>> {
    let Some(arch) = platform.qemu_arch() else {
        return Ok(None);
    };
    let conf = conf_dir.join(format!("qemu-{arch}.conf"));
    let text = match std::fs::read_to_string(&conf) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", conf.display())),
    };
    let Some(line) = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(':') && !l.is_empty())
    else {
        bail!("{}: no registration line", conf.display());
    };
    // :name:type:offset:magic:mask:interpreter:flags
    let mut fields: Vec<String> = line.split(':').map(str::to_string).collect();
    if fields.len() != 8 {
        bail!(
            "{}: not a binfmt_misc registration (:name:type:offset:magic:mask:interpreter:flags)",
            conf.display()
        );
    }
    if !fields[7].contains('F') {
        fields[7].push('F');
    }
    Ok(Some(Installable {
        platform: platform.clone(),
        conf,
        line: fields.join(":"),
    }))
}

/// The platforms qemu-user-static can emulate here (those kiln knows, other than native ones).
pub fn known_foreign_platforms() -> Vec<Platform> {
    [
        "linux/amd64",
        "linux/arm64",
        "linux/arm/v7",
        "linux/386",
        "linux/ppc64le",
        "linux/s390x",
        "linux/riscv64",
        "linux/mips64le",
    ]
    .iter()
    .filter_map(|p| Platform::parse(p).ok())
    .filter(|p| !p.is_native())
    .collect()
}

/// What `install` did for one platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Installed {
    Registered(String),
    AlreadyRegistered(String),
}

/// Registers the installed qemu interpreters for `platforms` (all known foreign ones when
/// empty) with the fix-binary flag, mounting binfmt_misc first when it is not mounted. An entry
/// already registered is left as it is.
pub fn install(platforms: &[Platform]) -> Result<Vec<(Platform, Installed)>> {
    let dir = Path::new(BINFMT_DIR);
    if !dir.join("register").exists() {
        nix::mount::mount(
            Some("binfmt_misc"),
            dir,
            Some("binfmt_misc"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .with_context(|| format!("mounting binfmt_misc on {BINFMT_DIR} (needs root)"))?;
    }
    let all = platforms.is_empty();
    let wanted = if all {
        known_foreign_platforms()
    } else {
        platforms.to_vec()
    };
    let mut done = Vec::new();
    for p in wanted {
        if p.is_native() {
            continue;
        }
        let Some(inst) = installable_in(Path::new(BINFMT_CONF_DIR), &p)? else {
            if all {
                continue;
            }
            bail!(
                "no qemu emulator for {p} is installed ({BINFMT_CONF_DIR}/qemu-{}.conf is missing): \
                 apt-get install qemu-user-static",
                p.qemu_arch().unwrap_or("?")
            );
        };
        let name = inst.line.split(':').nth(1).unwrap_or("").to_string();
        if dir.join(&name).exists() {
            done.push((p, Installed::AlreadyRegistered(name)));
            continue;
        }
        std::fs::write(dir.join("register"), &inst.line).with_context(|| {
            format!(
                "registering {name} (from {}) in {BINFMT_DIR}/register",
                inst.conf.display()
            )
        })?;
        done.push((p, Installed::Registered(name)));
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    const AARCH64: &str = "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: POCF\noffset 0\nmagic 7f454c460201010000000000000000000200b700\nmask ffffffffffffff00fffffffffffffffffeffffff\n";

    #[test]
    fn reads_an_entry_and_its_elf_machine() {
        let e = parse_entry("qemu-aarch64", AARCH64);
        assert!(e.enabled && e.fix_binary());
        assert_eq!(e.elf, Some((183, true)));
        let dir = tempfile::tempdir().unwrap();
        let arm64 = Platform::parse("linux/arm64").unwrap();
        assert!(
            matches!(support_in(dir.path(), &arm64), Support::Unavailable(w) if w.contains("not mounted"))
        );
        std::fs::write(dir.path().join("status"), "enabled\n").unwrap();
        assert!(
            matches!(support_in(dir.path(), &arm64), Support::Unavailable(w) if w.contains("no emulator is registered"))
        );
        std::fs::write(dir.path().join("qemu-aarch64"), AARCH64).unwrap();
        assert!(matches!(
            support_in(dir.path(), &arm64),
            Support::Emulated {
                fix_binary: true,
                ..
            }
        ));
        std::fs::write(
            dir.path().join("qemu-aarch64"),
            AARCH64.replace("enabled", "disabled"),
        )
        .unwrap();
        assert!(
            matches!(support_in(dir.path(), &arm64), Support::Unavailable(w) if w.contains("disabled"))
        );
        assert_eq!(support_in(dir.path(), &Platform::host()), Support::Native);
    }

    #[test]
    fn registration_lines_get_the_fix_binary_flag() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("qemu-aarch64.conf"),
            ":qemu-aarch64:M::\\x7f\\x45:\\xff\\xff:/usr/libexec/qemu-binfmt/aarch64-binfmt-P:OP\n",
        )
        .unwrap();
        let arm64 = Platform::parse("linux/arm64").unwrap();
        let inst = installable_in(dir.path(), &arm64).unwrap().unwrap();
        assert!(inst.line.ends_with(":OPF"), "{}", inst.line);
        let s390x = Platform::parse("linux/s390x").unwrap();
        assert!(installable_in(dir.path(), &s390x).unwrap().is_none());
    }

    #[test]
    fn elf_headers_name_their_platform() {
        let mut h = [0u8; 20];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = 2;
        h[5] = 1;
        h[18] = 183;
        assert_eq!(elf_platform(&h).unwrap().to_string(), "linux/arm64");
        h[18] = 62;
        assert_eq!(elf_platform(&h).unwrap().to_string(), "linux/amd64");
        assert!(elf_platform(b"#!/bin/sh\n").is_none());
        let err = cannot_run_error(
            &Platform::parse("linux/arm64").unwrap(),
            "no emulator is registered for it in binfmt_misc",
        );
        let text = err.to_string();
        assert!(
            text.contains("linux/arm64") && text.contains("kiln binfmt --install linux/arm64"),
            "{text}"
        );
    }
}
