//! The image configuration as Docker writes it (`application/vnd.oci.image.config.v1+json`, with
//! Docker's extra fields: Healthcheck, OnBuild, Shell, ArgsEscaped). Fields kiln does not know are
//! kept as they were in the base image.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The PATH a build gets when its base image sets none (BuildKit's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ImageConfigFile {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    pub architecture: String,
    pub os: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default)]
    pub config: ContainerConfig,
    pub rootfs: RootFs,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<History>,
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volumes: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub args_escaped: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<HealthConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_build: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shell: Option<Vec<String>>,
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

/// Docker's HEALTHCHECK config; durations in nanoseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct HealthConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_period: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_interval: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retries: Option<i64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct History {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub empty_layer: Option<bool>,
}

impl ImageConfigFile {
    /// The config of `FROM scratch`: BuildKit's empty image, whose working directory is `/`.
    pub fn scratch() -> ImageConfigFile {
        let config = ContainerConfig {
            working_dir: Some("/".into()),
            ..Default::default()
        };
        ImageConfigFile {
            architecture: super::image::host_architecture().to_string(),
            os: "linux".into(),
            config,
            rootfs: RootFs {
                kind: "layers".into(),
                diff_ids: Vec::new(),
            },
            ..Default::default()
        }
    }

    pub fn from_json(data: &[u8]) -> anyhow::Result<ImageConfigFile> {
        let mut cfg: ImageConfigFile = serde_json::from_slice(data)?;
        if cfg.rootfs.kind.is_empty() {
            cfg.rootfs.kind = "layers".into();
        }
        Ok(cfg)
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Prepares a base image's config for a new stage: BuildKit starts from the base config,
    /// adds the default PATH when there is no PATH, and drops the base's ONBUILD triggers (they
    /// run now, in this build, and are not inherited). BuildKit reads the base config into the
    /// OCI image type plus Docker's three extra fields, so whatever else the base carries
    /// (`container_config`, `docker_version`, a top-level `comment`, `Hostname`, `AttachStdin`, ...)
    /// is not in the built image; only the OCI platform's `os.version` and `os.features` are kept.
    pub fn for_new_stage(mut self) -> ImageConfigFile {
        self.other
            .retain(|key, _| key == "os.version" || key == "os.features");
        self.config.other.clear();
        let env = self.config.env.get_or_insert_with(Vec::new);
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.insert(0, format!("PATH={DEFAULT_PATH}"));
        }
        self.config.on_build = None;
        self
    }

    pub fn env_get(&self, key: &str) -> Option<&str> {
        self.config.env.as_ref()?.iter().rev().find_map(|e| {
            let (k, v) = e.split_once('=')?;
            (k == key).then_some(v)
        })
    }

    pub fn env_set(&mut self, key: &str, value: &str) {
        let env = self.config.env.get_or_insert_with(Vec::new);
        let entry = format!("{key}={value}");
        match env
            .iter_mut()
            .find(|e| e.split_once('=').map(|(k, _)| k) == Some(key) || e.as_str() == key)
        {
            Some(existing) => *existing = entry,
            None => env.push(entry),
        }
    }

    /// Environment as (key, value) pairs in order.
    pub fn env_pairs(&self) -> Vec<(String, String)> {
        self.config
            .env
            .iter()
            .flatten()
            .map(|e| match e.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (e.clone(), String::new()),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_unknown_fields() {
        let json = br#"{"architecture":"amd64","os":"linux","config":{"Cmd":["sh"],"Foo":1},"rootfs":{"type":"layers","diff_ids":["sha256:aa"]},"extra":true}"#;
        let cfg = ImageConfigFile::from_json(json).unwrap();
        let out: serde_json::Value = serde_json::from_slice(&cfg.to_json()).unwrap();
        assert_eq!(out["extra"], true);
        assert_eq!(out["config"]["Foo"], 1);
        assert_eq!(out["config"]["Cmd"][0], "sh");
    }

    #[test]
    fn a_new_stage_keeps_only_what_buildkit_keeps_and_sets_default_path() {
        // The shape of a `docker import`ed base (what docker-ref 28.5 drops from it, checked by
        // building FROM it with docker's BuildKit and reading the saved config).
        let json = br#"{"architecture":"arm64","variant":"v8","os":"linux","os.version":"10.0",
            "comment":"Imported from -","docker_version":"28.5.2","container_config":{"Tty":false},
            "config":{"Cmd":["sh"],"Hostname":"","AttachStdin":false,"ArgsEscaped":true,
            "Shell":["/bin/ash","-c"]},"rootfs":{"type":"layers","diff_ids":["sha256:aa"]}}"#;
        let cfg = ImageConfigFile::from_json(json).unwrap().for_new_stage();
        assert_eq!(cfg.env_get("PATH"), Some(DEFAULT_PATH));
        let out: serde_json::Value = serde_json::from_slice(&cfg.to_json()).unwrap();
        let top: Vec<&String> = out.as_object().unwrap().keys().collect();
        assert_eq!(
            top,
            [
                "architecture",
                "config",
                "os",
                "os.version",
                "rootfs",
                "variant"
            ]
        );
        let config: Vec<&String> = out["config"].as_object().unwrap().keys().collect();
        assert_eq!(config, ["ArgsEscaped", "Cmd", "Env", "Shell"]);
    }

    #[test]
    fn scratch_works_in_the_root_directory() {
        let cfg = ImageConfigFile::scratch().for_new_stage();
        assert_eq!(cfg.config.working_dir.as_deref(), Some("/"));
        assert_eq!(cfg.env_get("PATH"), Some(DEFAULT_PATH));
    }

    #[test]
    fn env_set_replaces_in_place() {
        let mut cfg = ImageConfigFile::scratch();
        cfg.env_set("A", "1");
        cfg.env_set("B", "2");
        cfg.env_set("A", "3");
        assert_eq!(cfg.config.env.unwrap(), vec!["A=3", "B=2"]);
    }
}
