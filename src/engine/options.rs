//! `kiln build`'s options, parsed from docker's flag syntax: `--build-arg K[=V]`,
//! `--secret id=ID,src=PATH|env=VAR`, `--output type=...,dest=...`, `--label K=V`.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use anyhow::{anyhow, bail, Result};

pub use crate::exporter::{Output, OutputCompression};
pub use crate::solver::remotecache::{CacheCompression, CacheFrom, CacheMode, CacheTo};
use crate::solver::{Network, SecretSource};

#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub context: String,
    pub dockerfile: Option<String>,
    pub tags: Vec<String>,
    pub build_args: BTreeMap<String, String>,
    pub target: Option<String>,
    pub no_cache: bool,
    pub no_cache_filter: Vec<String>,
    pub pull: bool,
    pub network: Network,
    /// `--allow security.insecure`: `RUN --security=insecure` may run privileged.
    pub allow_insecure: bool,
    pub labels: BTreeMap<String, String>,
    pub secrets: HashMap<String, SecretSource>,
    /// `--build-context NAME=VALUE`, as given.
    pub build_contexts: Vec<String>,
    /// `--ssh default|ID[=SOCKET|KEY,...]`, as given.
    pub ssh: Vec<String>,
    pub progress: crate::solver::progress::Mode,
    pub explain: bool,
    pub iidfile: Option<PathBuf>,
    pub outputs: Vec<Output>,
    pub quiet: bool,
    /// `--check`: run the Dockerfile's checks only.
    pub check_only: bool,
    pub max_parallelism: usize,
    /// cgroup limits for every RUN step (not part of any cache key, as in docker).
    pub run_limits: crate::sandbox::Resources,
    /// `--add-host`, `--shm-size`, `--ulimit` for every RUN step (not part of any cache key).
    pub run_settings: crate::ops::RunSettings,
    /// `--cache-to`, in order.
    pub cache_to: Vec<CacheTo>,
    /// `--cache-from`, in order (the first that has a step wins).
    pub cache_from: Vec<CacheFrom>,
    /// `--platform`: the target platforms (empty: this machine's). Several give an index.
    pub platforms: Vec<crate::platform::Platform>,
}

/// `--allow` entitlements, as BuildKit's (`security.insecure`, `network.host`, also
/// comma-separated); true when `security.insecure` is granted. `network.host` changes nothing:
/// RUN steps have the host's network unless told otherwise. BuildKit's `device` entitlement
/// (CDI devices) is refused: kiln has no CDI.
pub fn parse_allow(values: &[String]) -> Result<bool> {
    let mut insecure = false;
    for v in values.iter().flat_map(|v| v.split(',')) {
        match v.trim() {
            "security.insecure" => insecure = true,
            "network.host" => {}
            e if e == "device" || e.starts_with("device=") => bail!(
                "--allow {e}: kiln has no CDI devices; RUN --security=insecure (with --allow \
                 security.insecure) gets the host's devices"
            ),
            other => bail!(
                "--allow: unknown entitlement {other} (kiln has security.insecure and network.host)"
            ),
        }
    }
    Ok(insecure)
}

/// The pids limit a RUN step gets when neither `--pids-limit` nor the config sets one.
pub const DEFAULT_RUN_PIDS_LIMIT: u64 = 4096;

/// The limits of RUN steps: each flag, else its `[build]` setting in the config file, else the
/// default (a pids limit of `DEFAULT_RUN_PIDS_LIMIT`, none rootless; no memory, CPU or cpuset
/// limit).
pub fn run_limits(
    memory: Option<&str>,
    cpu_shares: Option<u64>,
    cpuset: Option<String>,
    pids_limit: Option<i64>,
) -> Result<crate::sandbox::Resources> {
    let config = crate::config::load()?.build;
    let memory = memory.map(str::to_string).or(config.memory);
    let memory_bytes = memory
        .as_deref()
        .map(|m| crate::sandbox::parse_memory(m).map_err(|e| anyhow!("--memory: {e:#}")))
        .transpose()?;
    if cpu_shares == Some(0) {
        bail!("--cpu-shares must be at least 2 (docker's minimum); leave it out for no weight");
    }
    let pids = match pids_limit.or(config.pids_limit) {
        // Rootless kiln has no cgroups to put the default in: only an asked-for limit counts.
        None if crate::rootless::in_userns() => None,
        None => Some(DEFAULT_RUN_PIDS_LIMIT),
        Some(n) if n <= 0 => None,
        Some(n) => Some(n as u64),
    };
    Ok(crate::sandbox::Resources {
        memory_bytes,
        cpu_shares: cpu_shares.or(config.cpu_shares),
        cpuset: cpuset.or(config.cpuset_cpus),
        pids_limit: pids,
        unobserved: true,
        ..Default::default()
    })
}

/// `--build-arg K=V`, or `K` alone to take the value from the environment (skipped when unset).
pub fn parse_build_args(values: &[String]) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for v in values {
        match v.split_once('=') {
            Some((k, val)) if !k.is_empty() => {
                out.insert(k.to_string(), val.to_string());
            }
            Some(_) => bail!("--build-arg {v:?}: expected KEY=VALUE"),
            None => {
                if let Ok(val) = std::env::var(v) {
                    out.insert(v.clone(), val);
                }
            }
        }
    }
    Ok(out)
}

pub fn parse_labels(values: &[String]) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for v in values {
        let (k, val) = v.split_once('=').unwrap_or((v.as_str(), ""));
        if k.is_empty() {
            bail!("--label {v:?}: expected KEY=VALUE");
        }
        out.insert(k.to_string(), val.to_string());
    }
    Ok(out)
}

fn kv_list(spec: &str, flag: &str) -> Result<Vec<(String, String)>> {
    spec.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.to_string()))
                .ok_or_else(|| anyhow!("{flag} {spec:?}: {p:?} is not KEY=VALUE"))
        })
        .collect()
}

/// `--secret id=ID[,src=PATH|,env=VAR][,type=file|env]`; with neither src nor env, the
/// environment variable named like the id is used when set, else a file of that name.
pub fn parse_secret(spec: &str) -> Result<(String, SecretSource)> {
    let mut id = None;
    let mut src = None;
    let mut env = None;
    let mut kind = None;
    for (k, v) in kv_list(spec, "--secret")? {
        match k.as_str() {
            "id" => id = Some(v),
            "src" | "source" => src = Some(v),
            "env" => env = Some(v),
            "type" => kind = Some(v),
            other => {
                bail!("--secret {spec:?}: unknown key {other:?} (expected id, src, env or type)")
            }
        }
    }
    let id = id.ok_or_else(|| anyhow!("--secret {spec:?}: id= is required"))?;
    let source = match (src, env, kind.as_deref()) {
        (Some(p), None, None | Some("file")) => SecretSource::File(PathBuf::from(p)),
        (None, Some(e), None | Some("env")) => SecretSource::Env(e),
        (Some(p), None, Some("env")) => SecretSource::Env(p),
        (None, None, Some("env")) => SecretSource::Env(id.clone()),
        (None, None, Some("file")) => SecretSource::File(PathBuf::from(&id)),
        (None, None, None) => {
            if std::env::var_os(&id).is_some() {
                SecretSource::Env(id.clone())
            } else {
                SecretSource::File(PathBuf::from(&id))
            }
        }
        _ => bail!("--secret {spec:?}: give either src= or env="),
    };
    if let SecretSource::File(p) = &source {
        if !p.is_file() {
            bail!("--secret {spec:?}: {} is not a readable file", p.display());
        }
    }
    Ok((id, source))
}

/// `--output type=oci|docker|tar|local|image[,dest=PATH][,compression=...][,name=...]`, or a bare
/// path (docker's shorthand for `type=local,dest=PATH`; `-` means a tar on stdout).
/// Whether an `--output` spec asks for the image to be pushed (`type=registry`, or
/// `type=image,push=true`), as BuildKit's image exporter does. The CLI pushes after the build.
pub fn output_pushes(spec: &str) -> bool {
    let pairs: Vec<(&str, &str)> = spec
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim(), v.trim()))
        .collect();
    let value = |k: &str| {
        pairs
            .iter()
            .rev()
            .find(|(key, _)| *key == k)
            .map(|(_, v)| *v)
    };
    match value("type") {
        Some("registry") => true,
        Some("image") => value("push") == Some("true"),
        _ => false,
    }
}

pub fn parse_output(spec: &str, tags: &[String]) -> Result<Output> {
    if !spec.contains('=') {
        return Ok(if spec == "-" {
            Output::Tar {
                dest: PathBuf::from("-"),
            }
        } else {
            Output::Local {
                dest: PathBuf::from(spec),
            }
        });
    }
    let pairs = kv_list(spec, "--output")?;
    let get = |k: &str| {
        pairs
            .iter()
            .rev()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    for (k, _) in &pairs {
        if !matches!(
            k.as_str(),
            "type"
                | "dest"
                | "compression"
                | "name"
                | "push"
                | "oci-mediatypes"
                | "force-compression"
        ) {
            bail!("--output {spec:?}: unknown key {k:?}");
        }
    }
    let compression = match get("compression").as_deref() {
        None | Some("gzip") => OutputCompression::Gzip,
        Some("zstd") => OutputCompression::Zstd,
        Some("none") | Some("uncompressed") => OutputCompression::None,
        Some(other) => bail!("--output compression={other}: expected gzip, zstd or none"),
    };
    let dest = || -> Result<PathBuf> {
        get("dest")
            .map(PathBuf::from)
            .ok_or_else(|| anyhow!("--output {spec:?}: dest= is required for this type"))
    };
    let kind = get("type").ok_or_else(|| anyhow!("--output {spec:?}: type= is required"))?;
    Ok(match kind.as_str() {
        "image" | "registry" => {
            let mut names: Vec<String> = tags.to_vec();
            if let Some(n) = get("name") {
                names.extend(n.split(',').map(str::to_string));
            }
            Output::Image { names }
        }
        "oci" => Output::Oci {
            dest: dest()?,
            compression,
        },
        "docker" => Output::Docker {
            dest: dest()?,
            compression,
        },
        "tar" => Output::Tar { dest: dest()? },
        "local" => Output::Local { dest: dest()? },
        other => bail!("--output type={other}: expected image, oci, docker, tar or local"),
    })
}

fn parse_bool(flag: &str, spec: &str, key: &str, v: &str) -> Result<bool> {
    match v {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => bail!("{flag} {spec:?}: {key}={v}: expected true or false"),
    }
}

/// `--cache-to type=registry,ref=REPO[:TAG]|type=local,dest=DIR|type=inline` with
/// `mode=min|max`, `compression=gzip|zstd`, `ignore-error=true`, `cache-mounts=true` (buildx's
/// spelling; `oci-mediatypes` and `image-manifest` are accepted: kiln's cache always is an OCI
/// image manifest).
pub fn parse_cache_to(spec: &str) -> Result<CacheTo> {
    const FLAG: &str = "--cache-to";
    let pairs = kv_list(spec, FLAG)?;
    let (mut kind, mut reference, mut dest) = (None, None, None);
    let mut mode = CacheMode::Min;
    let mut compression = None;
    let (mut ignore_error, mut cache_mounts) = (false, false);
    for (k, v) in &pairs {
        match k.as_str() {
            "type" => kind = Some(v.clone()),
            "ref" => reference = Some(v.clone()),
            "dest" => dest = Some(PathBuf::from(v)),
            "mode" => {
                mode = match v.as_str() {
                    "min" => CacheMode::Min,
                    "max" => CacheMode::Max,
                    _ => bail!("{FLAG} {spec:?}: mode={v}: expected min or max"),
                }
            }
            "compression" => {
                compression = Some(match v.as_str() {
                    "gzip" => CacheCompression::Gzip,
                    "zstd" => CacheCompression::Zstd,
                    _ => bail!("{FLAG} {spec:?}: compression={v}: expected gzip or zstd"),
                })
            }
            "ignore-error" => ignore_error = parse_bool(FLAG, spec, k, v)?,
            "cache-mounts" => cache_mounts = parse_bool(FLAG, spec, k, v)?,
            "oci-mediatypes" | "image-manifest" => {
                if !parse_bool(FLAG, spec, k, v)? {
                    bail!("{FLAG} {spec:?}: {k}=false: kiln's cache is always an OCI image manifest");
                }
            }
            other => bail!(
                "{FLAG} {spec:?}: unknown key {other:?} (expected type, ref, dest, mode, compression, ignore-error or cache-mounts)"
            ),
        }
    }
    let kind = kind
        .ok_or_else(|| anyhow!("{FLAG} {spec:?}: type= is required (registry, local or inline)"))?;
    Ok(match kind.as_str() {
        "registry" => {
            let reference = reference
                .ok_or_else(|| anyhow!("{FLAG} {spec:?}: ref= is required for type=registry"))?;
            crate::reference::Reference::parse(&reference)
                .map_err(|e| anyhow!("{FLAG} {spec:?}: ref={reference}: {e:#}"))?;
            CacheTo::Registry {
                reference,
                mode,
                compression,
                ignore_error,
                cache_mounts,
            }
        }
        "local" => CacheTo::Local {
            dest: dest
                .ok_or_else(|| anyhow!("{FLAG} {spec:?}: dest= is required for type=local"))?,
            mode,
            compression,
            ignore_error,
            cache_mounts,
        },
        "inline" => {
            if mode == CacheMode::Max || cache_mounts {
                bail!("{FLAG} {spec:?}: type=inline is min mode only, without cache mounts (use type=registry for mode=max)");
            }
            CacheTo::Inline
        }
        other => bail!("{FLAG} {spec:?}: type={other}: expected registry, local or inline"),
    })
}

/// `--cache-from type=registry,ref=REPO[:TAG]|type=local,src=DIR`, or a bare image reference
/// (its inline cache).
pub fn parse_cache_from(spec: &str) -> Result<CacheFrom> {
    const FLAG: &str = "--cache-from";
    if !spec.contains('=') {
        crate::reference::Reference::parse(spec)
            .map_err(|e| anyhow!("{FLAG} {spec:?}: not an image reference: {e:#}"))?;
        return Ok(CacheFrom::Inline {
            reference: spec.to_string(),
        });
    }
    let pairs = kv_list(spec, FLAG)?;
    let (mut kind, mut reference, mut src) = (None, None, None);
    for (k, v) in &pairs {
        match k.as_str() {
            "type" => kind = Some(v.clone()),
            "ref" => reference = Some(v.clone()),
            "src" => src = Some(PathBuf::from(v)),
            other => bail!("{FLAG} {spec:?}: unknown key {other:?} (expected type, ref or src)"),
        }
    }
    let kind =
        kind.ok_or_else(|| anyhow!("{FLAG} {spec:?}: type= is required (registry or local)"))?;
    Ok(match kind.as_str() {
        "registry" => {
            let reference = reference
                .ok_or_else(|| anyhow!("{FLAG} {spec:?}: ref= is required for type=registry"))?;
            crate::reference::Reference::parse(&reference)
                .map_err(|e| anyhow!("{FLAG} {spec:?}: ref={reference}: {e:#}"))?;
            CacheFrom::Registry { reference }
        }
        "local" => CacheFrom::Local {
            src: src.ok_or_else(|| anyhow!("{FLAG} {spec:?}: src= is required for type=local"))?,
        },
        other => bail!("{FLAG} {spec:?}: type={other}: expected registry or local"),
    })
}

pub fn parse_network(s: &str) -> Result<Network> {
    match s {
        "host" | "default" => Ok(Network::Host),
        "none" => Ok(Network::None),
        other => {
            bail!("--network={other}: expected host or none (kiln builds never create bridges)")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs() {
        let tags = vec!["a:1".to_string()];
        assert_eq!(
            parse_output("type=oci,dest=/x.tar,compression=zstd", &tags).unwrap(),
            Output::Oci {
                dest: "/x.tar".into(),
                compression: OutputCompression::Zstd
            }
        );
        assert_eq!(
            parse_output("out", &tags).unwrap(),
            Output::Local { dest: "out".into() }
        );
        assert_eq!(
            parse_output("type=image,name=b", &tags).unwrap(),
            Output::Image {
                names: vec!["a:1".into(), "b".into()]
            }
        );
        assert!(parse_output("type=oci", &tags).is_err());
        assert!(output_pushes("type=image,push=true"));
        assert!(output_pushes("type=registry,name=x"));
        assert!(!output_pushes("type=image,push=false"));
        assert!(!output_pushes("type=oci,dest=x,push=true"));
        assert!(parse_output("type=weird,dest=x", &tags).is_err());
    }

    #[test]
    fn cache_options() {
        assert_eq!(
            parse_cache_to("type=registry,ref=127.0.0.1:5000/c:main,mode=max,compression=zstd,ignore-error=true,cache-mounts=true").unwrap(),
            CacheTo::Registry {
                reference: "127.0.0.1:5000/c:main".into(),
                mode: CacheMode::Max,
                compression: Some(CacheCompression::Zstd),
                ignore_error: true,
                cache_mounts: true,
            }
        );
        assert_eq!(
            parse_cache_to("type=local,dest=/c").unwrap().mode(),
            CacheMode::Min
        );
        assert_eq!(parse_cache_to("type=inline").unwrap(), CacheTo::Inline);
        for (bad, says) in [
            ("type=registry", "ref= is required"),
            ("type=registry,ref=x,mode=all", "mode=all"),
            ("type=registry,ref=x,colour=red", "unknown key \"colour\""),
            ("type=s3,ref=x", "type=s3"),
            (
                "type=local,dest=/c,ignore-error=maybe",
                "ignore-error=maybe",
            ),
            ("type=inline,mode=max", "min mode only"),
            ("ref=x", "type= is required"),
        ] {
            let e = parse_cache_to(bad).unwrap_err().to_string();
            assert!(
                e.starts_with("--cache-to") && e.contains(says),
                "{bad}: {e}"
            );
        }
        assert_eq!(
            parse_cache_from("reg.io/app:main").unwrap(),
            CacheFrom::Inline {
                reference: "reg.io/app:main".into()
            }
        );
        assert_eq!(
            parse_cache_from("type=local,src=/c").unwrap(),
            CacheFrom::Local { src: "/c".into() }
        );
        let e = parse_cache_from("type=registry,dest=/c")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--cache-from") && e.contains("unknown key"),
            "{e}"
        );
        assert!(parse_cache_from("Not A Ref").is_err());
    }

    #[test]
    fn build_args_and_secrets() {
        let args = parse_build_args(&["A=1".into(), "B=".into()]).unwrap();
        assert_eq!(args["A"], "1");
        assert_eq!(args["B"], "");
        assert!(parse_build_args(&["=x".into()]).is_err());
        let (id, src) = parse_secret("id=tok,env=HOME").unwrap();
        assert_eq!(id, "tok");
        assert!(matches!(src, SecretSource::Env(v) if v == "HOME"));
        assert!(parse_secret("id=x,src=/nonexistent/file").is_err());
        assert!(parse_secret("src=/etc/hostname").is_err());
    }
}
