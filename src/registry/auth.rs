//! Credentials and the registry auth handshake: where a user's credentials come from, the
//! `WWW-Authenticate` challenge, and the Bearer token flow.
//!
//! Credentials are looked up, first match wins:
//! 1. `KILN_REGISTRY_USER` / `KILN_REGISTRY_PASSWORD` (for CI), for every registry, or only for
//!    `KILN_REGISTRY_HOST` when that is set;
//! 2. `ROOT/auth.json`, written by `kiln login` (mode 0600, Docker's `auths` format);
//! 3. Docker's `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`, `auths` entries.
//!
//! Secrets never go into `Debug` output or error messages.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

pub const ENV_USER: &str = "KILN_REGISTRY_USER";
pub const ENV_PASSWORD: &str = "KILN_REGISTRY_PASSWORD";
pub const ENV_HOST: &str = "KILN_REGISTRY_HOST";

#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials({}, <redacted>)", self.username)
    }
}

impl Credentials {
    pub fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

/// The key a registry's credentials are filed under: `docker.io` for Docker Hub in any of its
/// spellings, else `host[:port]`.
pub fn normalize_registry_key(key: &str) -> String {
    let key = key
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = key.split('/').next().unwrap_or(key);
    match host {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".to_string()
        }
        h => h.to_string(),
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct AuthFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(flatten)]
    other: BTreeMap<String, serde_json::Value>,
}

#[derive(Default, Serialize, Deserialize)]
struct AuthEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    auth: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    password: Option<String>,
    #[serde(flatten)]
    other: BTreeMap<String, serde_json::Value>,
}

impl fmt::Debug for AuthEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthEntry(<redacted>)")
    }
}

impl AuthEntry {
    fn credentials(&self) -> Option<Credentials> {
        if let (Some(u), Some(p)) = (&self.username, &self.password) {
            return Some(Credentials {
                username: u.clone(),
                password: p.clone(),
            });
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(self.auth.as_deref()?.trim())
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (u, p) = text.split_once(':')?;
        Some(Credentials {
            username: u.to_string(),
            password: p.to_string(),
        })
    }
}

/// Where `kiln login` keeps credentials.
pub fn kiln_auth_path(root: &Path) -> PathBuf {
    root.join("auth.json")
}

fn docker_config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
}

fn read_auth_file(path: &Path) -> Result<AuthFile> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "{}: not a valid auth file (JSON with \"auths\")",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(AuthFile::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn lookup_in(path: &Path, registry: &str) -> Result<Option<Credentials>> {
    let file = read_auth_file(path)?;
    Ok(file
        .auths
        .iter()
        .find(|(k, _)| normalize_registry_key(k) == registry)
        .and_then(|(_, e)| e.credentials()))
}

/// Finds credentials for `registry` (a normalised key, see [`normalize_registry_key`]).
pub fn lookup(root: &Path, registry: &str) -> Result<Option<Credentials>> {
    if let (Ok(user), Ok(password)) = (std::env::var(ENV_USER), std::env::var(ENV_PASSWORD)) {
        let applies = std::env::var(ENV_HOST)
            .map(|h| normalize_registry_key(&h) == registry)
            .unwrap_or(true);
        if applies {
            return Ok(Some(Credentials {
                username: user,
                password,
            }));
        }
    }
    if let Some(c) = lookup_in(&kiln_auth_path(root), registry)? {
        return Ok(Some(c));
    }
    match docker_config_path() {
        // A broken Docker config should not stop kiln from working anonymously.
        Some(path) => Ok(lookup_in(&path, registry).unwrap_or(None)),
        None => Ok(None),
    }
}

/// Saves credentials for `registry` in `ROOT/auth.json` (temp file 0600, fsync, rename).
pub fn store(root: &Path, registry: &str, creds: Option<&Credentials>) -> Result<bool> {
    let path = kiln_auth_path(root);
    let mut file = read_auth_file(&path)?;
    let existed = file
        .auths
        .keys()
        .any(|k| normalize_registry_key(k) == registry);
    file.auths
        .retain(|k, _| normalize_registry_key(k) != registry);
    if let Some(c) = creds {
        let raw = format!("{}:{}", c.username, c.password);
        file.auths.insert(
            registry.to_string(),
            AuthEntry {
                auth: Some(base64::engine::general_purpose::STANDARD.encode(raw)),
                ..Default::default()
            },
        );
    }
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    let tmp = root.join(format!(".auth.json.{}", std::process::id()));
    let write = || -> Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(&file)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    };
    write().with_context(|| format!("writing {}", path.display()))?;
    Ok(existed)
}

/// A parsed `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// Parses `Bearer realm="...",service="...",scope="..."` or `Basic realm="..."`.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let params = parse_params(rest);
    let get = |k: &str| {
        params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.clone())
    };
    Some(Challenge::Bearer {
        realm: get("realm")?,
        service: get("service"),
        scope: get("scope"),
    })
}

/// `k="v", k2=v2` with quoted values that may contain commas.
fn parse_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let name: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if name.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek() {
                if *c == ',' {
                    break;
                }
                value.push(*c);
                chars.next();
            }
        }
        out.push((name.trim().to_string(), value.trim().to_string()));
    }
    out
}

/// A token server's answer.
#[derive(Deserialize)]
pub struct TokenResponse {
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub access_token: Option<String>,
    #[serde(default)]
    pub expires_in: Option<u64>,
}

impl TokenResponse {
    pub fn into_token(self) -> Result<(String, u64)> {
        // The spec's default lifetime is 60 seconds.
        let expires_in = self.expires_in.unwrap_or(60).max(1);
        match self.token.or(self.access_token) {
            Some(t) if !t.is_empty() => Ok((t, expires_in)),
            _ => bail!("the token server's answer has no token"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_challenges() {
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.example/token",service="reg",scope="repository:a/b:pull,push""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("reg".into()),
                scope: Some("repository:a/b:pull,push".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Negotiate"), None);
    }

    #[test]
    fn auth_file_round_trip_and_keys() {
        let dir = tempfile::tempdir().unwrap();
        let creds = Credentials {
            username: "u".into(),
            password: "p:w".into(),
        };
        store(dir.path(), "127.0.0.1:5000", Some(&creds)).unwrap();
        let mode = std::fs::metadata(kiln_auth_path(dir.path())).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o600
        );
        assert_eq!(
            lookup_in(&kiln_auth_path(dir.path()), "127.0.0.1:5000").unwrap(),
            Some(creds)
        );
        assert!(store(dir.path(), "127.0.0.1:5000", None).unwrap());
        assert_eq!(
            lookup_in(&kiln_auth_path(dir.path()), "127.0.0.1:5000").unwrap(),
            None
        );
        assert_eq!(
            normalize_registry_key("https://index.docker.io/v1/"),
            "docker.io"
        );
        assert!(!format!(
            "{:?}",
            Credentials {
                username: "a".into(),
                password: "secret".into()
            }
        )
        .contains("secret"));
    }
}
