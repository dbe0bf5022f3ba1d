//! The registry-side view of an image reference: which registry, which repository, which tag
//! or digest. Built from `crate::reference::Reference` once that lands; parses docker-style
//! names itself until then.

use std::fmt;

use anyhow::{bail, Result};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RepoRef {
    /// `docker.io`, `127.0.0.1:5000`, `ghcr.io`
    pub registry: String,
    /// `library/busybox`
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl RepoRef {
    /// Parses and normalises a docker-style name: `busybox` = `docker.io/library/busybox:latest`.
    pub fn parse(s: &str) -> Result<RepoRef> {
        let (rest, digest) = match s.split_once('@') {
            Some((n, d)) => {
                let hex = d.strip_prefix("sha256:").unwrap_or("");
                if hex.len() != 64
                    || !hex
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                {
                    bail!("invalid reference {s:?}: the digest must be sha256:<64 hex digits>");
                }
                (n, Some(d.to_string()))
            }
            None => (s, None),
        };
        let (name, tag) = match rest.rfind(':') {
            Some(i) if !rest[i + 1..].contains('/') => {
                (&rest[..i], Some(rest[i + 1..].to_string()))
            }
            _ => (rest, None),
        };
        if let Some(t) = &tag {
            if t.is_empty()
                || t.len() > 128
                || !t
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
            {
                bail!(
                    "invalid reference {s:?}: bad tag {t:?} (letters, digits, _ . -; at most 128)"
                );
            }
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), rest.to_string())
            }
            _ => ("docker.io".to_string(), name.to_string()),
        };
        let registry = if registry == "index.docker.io" {
            "docker.io".to_string()
        } else {
            registry
        };
        let path = if registry == "docker.io" && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        let valid_component = |c: &str| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && c.as_bytes()[0].is_ascii_alphanumeric()
        };
        if !path.split('/').all(valid_component) {
            bail!("invalid reference {s:?}: repository names are lowercase letters, digits and . _ - separated by /");
        }
        let tag = if tag.is_none() && digest.is_none() {
            Some("latest".to_string())
        } else {
            tag
        };
        Ok(RepoRef {
            registry,
            repository: path,
            tag,
            digest,
        })
    }

    /// What to ask the registry for: the digest when there is one, else the tag.
    pub fn reference(&self) -> String {
        self.digest
            .clone()
            .or_else(|| self.tag.clone())
            .unwrap_or_else(|| "latest".to_string())
    }

    /// The normalised name the store keeps the image under.
    pub fn name(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for RepoRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_like_docker() {
        assert_eq!(
            RepoRef::parse("busybox").unwrap().to_string(),
            "docker.io/library/busybox:latest"
        );
        let r = RepoRef::parse("127.0.0.1:5000/a/b:1").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.reference()),
            ("127.0.0.1:5000", "a/b", "1".to_string())
        );
        assert_eq!(RepoRef::parse("localhost/x").unwrap().registry, "localhost");
        assert!(RepoRef::parse("Upper").is_err());
        assert!(RepoRef::parse("x@sha256:12").is_err());
    }
}
