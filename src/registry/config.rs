//! kiln's registry settings: the top-level keys of `/etc/kiln/config.toml` (or the file named
//! by `KILN_CONFIG`; read by [`crate::config`]).
//!
//! ```toml
//! registry-mirrors = ["https://mirror.example.com", "http://127.0.0.1:5000"]
//! insecure-registries = ["registry.lan:5000"]
//! ```
//! Mirrors serve docker.io only and are tried in order before Docker Hub, as dockerd does.

use anyhow::Result;
use serde::Deserialize;
use std::net::IpAddr;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RegistryConfig {
    #[serde(default)]
    pub registry_mirrors: Vec<String>,
    #[serde(default)]
    pub insecure_registries: Vec<String>,
}

impl RegistryConfig {
    /// Reads the config file (see [`crate::config`]); a missing file is an empty config, a
    /// malformed one an error.
    pub fn load() -> Result<RegistryConfig> {
        Self::from_table(crate::config::load()?.registry).map_err(|e| {
            anyhow::anyhow!(
                "{}: invalid kiln config: {e:#}",
                crate::config::path().display()
            )
        })
    }

    /// The registry's settings from the config file's top-level keys.
    pub fn from_table(table: toml::Table) -> Result<RegistryConfig> {
        toml::Value::Table(table).try_into().map_err(|e| {
            anyhow::anyhow!(
                "{e}: expected registry-mirrors = [..], insecure-registries = [..], [storage]"
            )
        })
    }

    /// The base URL (`scheme://host[:port]`) for a registry host: plain HTTP for loopback and
    /// configured insecure registries, HTTPS otherwise.
    pub fn base_url(&self, host: &str) -> String {
        let scheme = if self.is_insecure(host) {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{host}")
    }

    pub fn is_insecure(&self, host: &str) -> bool {
        is_loopback(host)
            || self.insecure_registries.iter().any(|h| {
                let h = h.trim_start_matches("http://").trim_end_matches('/');
                h == host || h == strip_port(host)
            })
    }

    /// Mirror base URLs for docker.io, in the order to try them.
    pub fn mirror_urls(&self) -> Vec<String> {
        self.registry_mirrors
            .iter()
            .map(|m| {
                let m = m.trim_end_matches('/');
                if m.starts_with("http://") || m.starts_with("https://") {
                    m.to_string()
                } else {
                    self.base_url(m)
                }
            })
            .collect()
    }
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// Set (to anything but empty or `0`) by kiln's test helpers: a registry request to any host
/// that is not loopback (Docker Hub above all) fails at once instead of waiting on a network
/// this machine may not reach, so a test that would pull a name that is not local fails loudly.
pub const LOOPBACK_ONLY_ENV: &str = "KILN_LOOPBACK_REGISTRIES_ONLY";

/// Refuses `url` when [`LOOPBACK_ONLY_ENV`] is set and its host is not loopback.
pub fn check_allowed(url: &str) -> anyhow::Result<()> {
    let on = std::env::var_os(LOOPBACK_ONLY_ENV).is_some_and(|v| !v.is_empty() && v != "0");
    if !on {
        return Ok(());
    }
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if is_loopback(host) {
        return Ok(());
    }
    anyhow::bail!(
        "refusing to contact {host}: {LOOPBACK_ONLY_ENV} is set, which allows loopback \
         registries only (kiln's tests must not reach Docker Hub or any registry off this \
         machine): use a locally made image or a registry on 127.0.0.1"
    )
}

/// `localhost`, 127.0.0.0/8 and ::1, with or without a port.
pub fn is_loopback(host: &str) -> bool {
    let h = strip_port(host);
    h == "localhost" || h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_for_loopback_and_insecure() {
        let cfg: RegistryConfig = toml::from_str(
            "registry-mirrors = [\"127.0.0.1:5000\", \"https://m.example/\"]\ninsecure-registries = [\"lan:5000\"]",
        )
        .unwrap();
        assert_eq!(cfg.base_url("127.0.0.7:99"), "http://127.0.0.7:99");
        assert_eq!(cfg.base_url("localhost"), "http://localhost");
        assert_eq!(cfg.base_url("[::1]:5000"), "http://[::1]:5000");
        assert_eq!(cfg.base_url("lan:5000"), "http://lan:5000");
        assert_eq!(cfg.base_url("lan:6000"), "https://lan:6000");
        assert_eq!(cfg.base_url("ghcr.io"), "https://ghcr.io");
        assert_eq!(
            cfg.mirror_urls(),
            ["http://127.0.0.1:5000", "https://m.example"]
        );
        assert!(toml::from_str::<RegistryConfig>("mirrors = []").is_err());
    }
}
