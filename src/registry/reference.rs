//! The registry-side view of an image reference: which registry, which repository, which tag
//! or digest, made from a [`crate::reference::Reference`].

use std::fmt;

use anyhow::Result;

use crate::reference::Reference;

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
        Ok(RepoRef::from(&Reference::parse(s)?))
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

impl From<&Reference> for RepoRef {
    fn from(r: &Reference) -> RepoRef {
        RepoRef {
            registry: r.domain().to_string(),
            repository: r.path().to_string(),
            tag: r.tag().map(str::to_string),
            digest: r.digest().map(str::to_string),
        }
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
