//! kiln's configuration file: `/etc/kiln/config.toml`, or the file named by `KILN_CONFIG`. A
//! missing file is the defaults; a malformed one is an error. Each module owns one part:
//!
//! ```toml
//! registry-mirrors = ["https://mirror.example.com"]   # registry::config (top-level keys)
//! insecure-registries = ["registry.lan:5000"]
//!
//! [storage]                                            # store::space
//! min-free-space = "1GiB"                              # or "5%"; "0" turns the floor off
//! max-layer-size = "50GiB"                             # unset: no limit
//! build-cache-size = "10%"                             # store::gc: the build cache's cap
//! ```

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::Deserialize;

pub const DEFAULT_CONFIG: &str = "/etc/kiln/config.toml";

/// The `[storage]` table: bounds on what unpacking, importing and loading may write.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct StorageConfig {
    pub min_free_space: Option<String>,
    pub max_layer_size: Option<String>,
    /// The build cache's cap (`store::gc::CacheCap`): a size, a share of the filesystem, "off".
    pub build_cache_size: Option<String>,
}

/// The `[build]` table: defaults for the cgroup limits of RUN steps (`kiln build --memory`,
/// `--cpu-shares`, `--cpuset-cpus`, `--pids-limit` override them).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct BuildConfig {
    pub memory: Option<String>,
    pub cpu_shares: Option<u64>,
    pub cpuset_cpus: Option<String>,
    /// -1 or 0: no limit.
    pub pids_limit: Option<i64>,
}

/// The whole file.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// The top-level keys: the registry's (`registry::config::RegistryConfig` parses them, so
    /// this module stays below the modules that own the settings).
    pub registry: toml::Table,
    pub storage: StorageConfig,
    pub build: BuildConfig,
}

/// The config file's path: `$KILN_CONFIG`, else /etc/kiln/config.toml.
pub fn path() -> PathBuf {
    std::env::var_os("KILN_CONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG))
}

/// Reads and parses the config file.
pub fn load() -> Result<Config> {
    let path = path();
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    parse(&text).with_context(|| format!("{}: invalid kiln config", path.display()))
}

/// Parses the text of a config file: the tables each module owns are taken out, the top-level
/// keys that remain are the registry's.
pub fn parse(text: &str) -> Result<Config> {
    let mut table: toml::Table = toml::from_str(text)?;
    let storage = match table.remove("storage") {
        Some(v) => v.try_into().context(
            "[storage]: expected min-free-space = \"1GiB\" or \"5%\", max-layer-size = \"50GiB\", \
             build-cache-size = \"20GiB\" or \"10%\" or \"off\"",
        )?,
        None => StorageConfig::default(),
    };
    let build = match table.remove("build") {
        Some(v) => v.try_into().context(
            "[build]: expected memory = \"2g\", cpu-shares = 512, cpuset-cpus = \"0-1\", pids-limit = 4096",
        )?,
        None => BuildConfig::default(),
    };
    Ok(Config {
        registry: table,
        storage,
        build,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_go_to_their_module() {
        let cfg =
            parse("insecure-registries = [\"lan:5000\"]\n[storage]\nmin-free-space = \"5%\"\n")
                .unwrap();
        assert!(cfg.registry.contains_key("insecure-registries"));
        assert_eq!(cfg.storage.min_free_space.as_deref(), Some("5%"));
        assert!(cfg.storage.max_layer_size.is_none());
        assert!(parse("[storage]\nmin-free = \"1G\"\n").is_err());
        assert!(parse("").unwrap().registry.is_empty());
        let build = parse("[build]\nmemory = \"1g\"\npids-limit = -1\n")
            .unwrap()
            .build;
        assert_eq!(build.memory.as_deref(), Some("1g"));
        assert_eq!(build.pids_limit, Some(-1));
        assert!(parse("[build]\npids = 3\n").is_err());
    }
}
