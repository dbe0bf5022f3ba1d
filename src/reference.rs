//! Image references (`busybox`, `localhost:5000/x:1`, `name@sha256:...`), normalised as docker
//! does: `busybox` = `docker.io/library/busybox:latest`, `dockerfile/mongodb` =
//! `docker.io/dockerfile/mongodb:latest`. Printed short ("familiar") as docker prints them.

use std::fmt;
use std::str::FromStr;

use anyhow::{bail, Result};

pub const DEFAULT_DOMAIN: &str = "docker.io";
pub const DEFAULT_TAG: &str = "latest";

/// A normalised image reference: always a domain and a path; a tag (`latest` when neither a tag
/// nor a digest was given) and/or a digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    domain: String,
    path: String,
    tag: Option<String>,
    digest: Option<String>,
}

impl Reference {
    /// Parses and normalises `s`. Errors say what is wrong with the name.
    pub fn parse(s: &str) -> Result<Reference> {
        if s.is_empty() {
            bail!("invalid reference format: empty name");
        }
        if s.len() > 4096 {
            bail!("invalid reference format: name too long");
        }
        let (rest, digest) = match s.split_once('@') {
            Some((name, digest)) => {
                crate::digest::digest_hex(digest).map_err(|_| {
                    anyhow::anyhow!(
                        "invalid reference format {s:?}: digest must be sha256:<64 hex digits>"
                    )
                })?;
                (name, Some(digest.to_string()))
            }
            None => (s, None),
        };
        let (name, tag) = match rest.rfind(':') {
            Some(i) if !rest[i + 1..].contains('/') => {
                (&rest[..i], Some(rest[i + 1..].to_string()))
            }
            _ => (rest, None),
        };
        if let Some(tag) = &tag {
            let valid = !tag.is_empty()
                && tag.len() <= 128
                && tag
                    .bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
                && tag
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
            if !valid {
                bail!("invalid reference format {s:?}: bad tag {tag:?} (letters, digits, _ . -; at most 128)");
            }
        }
        let (domain, path) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), rest.to_string())
            }
            _ => (DEFAULT_DOMAIN.to_string(), name.to_string()),
        };
        let domain = if domain == "index.docker.io" {
            DEFAULT_DOMAIN.to_string()
        } else {
            domain
        };
        if !valid_domain(&domain) {
            bail!("invalid reference format {s:?}: bad registry host {domain:?}");
        }
        let path = if domain == DEFAULT_DOMAIN && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        if path.is_empty() || !path.split('/').all(valid_path_component) {
            if name.bytes().any(|b| b.is_ascii_uppercase()) {
                bail!("invalid reference format {s:?}: repository name must be lowercase");
            }
            bail!(
                "invalid reference format {s:?}: a name is lowercase letters, digits and \
                 separators (. _ __ -), in components separated by /"
            );
        }
        if domain.len() + 1 + path.len() > 255 {
            bail!("invalid reference format {s:?}: repository name longer than 255 characters");
        }
        let tag = if tag.is_none() && digest.is_none() {
            Some(DEFAULT_TAG.to_string())
        } else {
            tag
        };
        Ok(Reference {
            domain,
            path,
            tag,
            digest,
        })
    }

    /// The registry host (`docker.io`, `localhost:5000`).
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The repository path within the registry (`library/busybox`).
    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// `docker.io/library/busybox`
    pub fn repository(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// `busybox` (docker's short form of the repository).
    pub fn familiar_repository(&self) -> String {
        if self.domain == DEFAULT_DOMAIN {
            self.path
                .strip_prefix("library/")
                .filter(|p| !p.contains('/'))
                .unwrap_or(&self.path)
                .to_string()
        } else {
            self.repository()
        }
    }

    /// The full normalised form: `docker.io/library/busybox:latest`, `x@sha256:...`.
    pub fn full(&self) -> String {
        self.with_suffix(self.repository())
    }

    fn with_suffix(&self, mut s: String) -> String {
        if let Some(tag) = &self.tag {
            s.push(':');
            s.push_str(tag);
        }
        if let Some(digest) = &self.digest {
            s.push('@');
            s.push_str(digest);
        }
        s
    }
}

/// Short form, as docker prints: `busybox:latest`, `localhost:5000/x:1`.
impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.with_suffix(self.familiar_repository()))
    }
}

impl FromStr for Reference {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Reference::parse(s)
    }
}

fn valid_path_component(c: &str) -> bool {
    // [a-z0-9]+ ((\.|_|__|-+) [a-z0-9]+)*
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !is_alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

fn valid_domain(d: &str) -> bool {
    let (host, port) = match d.rsplit_once(':') {
        Some((h, p)) if !h.contains(']') || h.ends_with(']') => (h, Some(p)),
        _ => (d, None),
    };
    if let Some(port) = port {
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    if host.starts_with('[') && host.ends_with(']') {
        return host[1..host.len() - 1]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b':');
    }
    !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(s: &str) -> String {
        Reference::parse(s).unwrap().full()
    }

    #[test]
    fn normalises_like_docker() {
        assert_eq!(full("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(
            full("dockerfile/mongodb"),
            "docker.io/dockerfile/mongodb:latest"
        );
        assert_eq!(full("localhost:5000/x:1"), "localhost:5000/x:1");
        assert_eq!(full("localhost/x"), "localhost/x:latest");
        assert_eq!(
            full("index.docker.io/library/busybox:1.36"),
            "docker.io/library/busybox:1.36"
        );
        assert_eq!(full("quay.io/a/b/c:v1.2"), "quay.io/a/b/c:v1.2");
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            full(&format!("busybox@{d}")),
            format!("docker.io/library/busybox@{d}")
        );
        assert_eq!(
            full(&format!("busybox:1@{d}")),
            format!("docker.io/library/busybox:1@{d}")
        );
    }

    #[test]
    fn prints_short() {
        let r = |s: &str| Reference::parse(s).unwrap().to_string();
        assert_eq!(r("docker.io/library/busybox"), "busybox:latest");
        assert_eq!(r("dockerfile/mongodb:3"), "dockerfile/mongodb:3");
        assert_eq!(r("localhost:5000/x:1"), "localhost:5000/x:1");
        assert_eq!(
            Reference::parse("busybox").unwrap().familiar_repository(),
            "busybox"
        );
    }

    #[test]
    fn rejects_bad_names() {
        for bad in [
            "",
            "Busybox",
            "a:",
            "a@sha256:12",
            "a//b",
            "-a",
            "a:b/c:d:e",
            "a b",
            "a:-x",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
