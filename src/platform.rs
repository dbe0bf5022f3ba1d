//! Platforms (`os/arch[/variant]`, as `--platform` and image indexes name them): parsing with
//! containerd's normalisation (`aarch64` is `arm64`, `arm64/v8` is `arm64`, `arm` is `arm/v7`),
//! matching an index entry, this machine's platform, and what emulation needs to know of one
//! (its ELF machine number and the name of its qemu user-mode interpreter).

use std::fmt;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// The OCI architecture name of this machine (`amd64`, `arm64`, ...).
pub fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        "arm" => "arm",
        other => other,
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// `os/arch[/variant]`, as `--platform` takes it, normalised (`linux/aarch64` is
    /// `linux/arm64`, `linux/arm64/v8` is `linux/arm64`, `linux/arm` is `linux/arm/v7`,
    /// `linux/x86_64` is `linux/amd64`).
    pub fn parse(s: &str) -> Result<Platform> {
        let parts: Vec<&str> = s.trim().split('/').collect();
        let bad =
            || format!("invalid platform {s:?}: expected os/arch[/variant], e.g. linux/amd64");
        let (os, arch, variant) = match parts.as_slice() {
            [os, arch] if !os.is_empty() && !arch.is_empty() => (*os, *arch, None),
            [os, arch, variant] if !os.is_empty() && !arch.is_empty() && !variant.is_empty() => {
                (*os, *arch, Some(*variant))
            }
            _ => bail!(bad()),
        };
        Ok(Platform::normalized(
            &os.to_ascii_lowercase(),
            &arch.to_ascii_lowercase(),
            variant.map(|v| v.to_ascii_lowercase()),
        ))
    }

    /// A comma-separated list (`linux/amd64,linux/arm64`), duplicates removed, order kept.
    pub fn parse_list(s: &str) -> Result<Vec<Platform>> {
        let mut out: Vec<Platform> = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let p = Platform::parse(part)?;
            if !out.contains(&p) {
                out.push(p);
            }
        }
        if out.is_empty() {
            bail!("--platform {s:?}: no platform given (e.g. linux/amd64,linux/arm64)");
        }
        Ok(out)
    }

    /// containerd's normalisation of an architecture and variant.
    pub fn normalized(os: &str, arch: &str, variant: Option<String>) -> Platform {
        let (arch, variant) = match (arch, variant.as_deref()) {
            ("x86_64" | "x86-64", _) => ("amd64", None),
            ("amd64", Some("v1")) => ("amd64", None),
            ("aarch64" | "arm64", Some("v8") | None) => ("arm64", None),
            ("aarch64", v) => ("arm64", v.map(str::to_string)),
            ("armhf" | "armv7l", _) => ("arm", Some("v7".to_string())),
            ("armel", _) => ("arm", Some("v6".to_string())),
            ("arm", None) => ("arm", Some("v7".to_string())),
            ("i386" | "i686" | "x86", _) => ("386", None),
            (a, v) => (a, v.map(str::to_string)),
        };
        Platform {
            os: os.to_string(),
            architecture: arch.to_string(),
            variant,
        }
    }

    pub fn linux_amd64() -> Platform {
        Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        }
    }

    /// This machine's platform (`linux/amd64` on x86_64).
    pub fn host() -> Platform {
        Platform::normalized("linux", host_architecture(), None)
    }

    /// The platform an image config declares (`architecture`, `os`, `variant`), normalised.
    pub fn of_config(os: &str, architecture: &str, variant: Option<&str>) -> Platform {
        let os = if os.is_empty() { "linux" } else { os };
        Platform::normalized(os, architecture, variant.map(str::to_string))
    }

    /// Whether an image for `other` serves this platform. A wanted platform without a variant
    /// takes any variant (arm64 images are often tagged v8).
    pub fn matches(&self, other: &Platform) -> bool {
        let other = Platform::normalized(&other.os, &other.architecture, other.variant.clone());
        self.os == other.os
            && self.architecture == other.architecture
            && (self.variant.is_none() || self.variant == other.variant)
    }

    /// BuildKit's folder name for this platform in a multi-platform local export: `linux_arm64`,
    /// `linux_arm_v7`.
    pub fn dir_name(&self) -> String {
        self.to_string().replace('/', "_")
    }

    /// The ELF `e_machine` of this platform's binaries, and whether they are 64-bit.
    pub fn elf_machine(&self) -> Option<(u16, bool)> {
        Some(match self.architecture.as_str() {
            "amd64" => (62, true),
            "386" => (3, false),
            "arm64" => (183, true),
            "arm" => (40, false),
            "ppc64le" => (21, true),
            "s390x" => (22, true),
            "riscv64" => (243, true),
            "mips64le" => (8, true),
            _ => return None,
        })
    }

    /// The name qemu gives this architecture (`qemu-aarch64-static`, binfmt entry
    /// `qemu-aarch64`).
    pub fn qemu_arch(&self) -> Option<&'static str> {
        Some(match self.architecture.as_str() {
            "amd64" => "x86_64",
            "386" => "i386",
            "arm64" => "aarch64",
            "arm" => "arm",
            "ppc64le" => "ppc64le",
            "s390x" => "s390x",
            "riscv64" => "riscv64",
            "mips64le" => "mips64el",
            _ => return None,
        })
    }

    /// Whether this machine runs the platform's binaries natively (amd64 machines also run
    /// 386 binaries, arm64 ones 32-bit arm binaries only when the kernel allows: not assumed).
    pub fn is_native(&self) -> bool {
        let host = Platform::host();
        if self.os != host.os {
            return false;
        }
        self.architecture == host.architecture
            || (host.architecture == "amd64" && self.architecture == "386")
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_normalises_as_containerd() {
        assert_eq!(
            Platform::parse("linux/aarch64").unwrap().to_string(),
            "linux/arm64"
        );
        assert_eq!(
            Platform::parse("linux/arm64/v8").unwrap().to_string(),
            "linux/arm64"
        );
        assert_eq!(
            Platform::parse("linux/arm").unwrap().to_string(),
            "linux/arm/v7"
        );
        assert_eq!(
            Platform::parse("linux/x86_64").unwrap(),
            Platform::linux_amd64()
        );
        assert!(Platform::parse("linux").is_err());
        assert!(Platform::parse("linux/").is_err());
        assert!(Platform::parse("a/b/c/d").is_err());
        let list = Platform::parse_list("linux/amd64, linux/arm64,linux/amd64").unwrap();
        assert_eq!(list.len(), 2);
        assert!(Platform::parse_list(" , ").is_err());
        assert_eq!(
            Platform::parse("linux/arm/v7").unwrap().dir_name(),
            "linux_arm_v7"
        );
    }

    #[test]
    fn matching_takes_any_variant_when_none_is_asked() {
        let arm64 = Platform::parse("linux/arm64").unwrap();
        let v8 = Platform {
            os: "linux".into(),
            architecture: "arm64".into(),
            variant: Some("v8".into()),
        };
        assert!(arm64.matches(&v8));
        assert!(!Platform::linux_amd64().matches(&v8));
        assert_eq!(arm64.elf_machine(), Some((183, true)));
        assert_eq!(arm64.qemu_arch(), Some("aarch64"));
    }
}
