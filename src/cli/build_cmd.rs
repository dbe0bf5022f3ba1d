//! `kiln build`, with docker's flags. The work is in `crate::engine`.

use std::path::PathBuf;

use clap::Subcommand;

use super::Globals;
use crate::engine::options::{self, BuildOptions, Output};

#[derive(Debug, Subcommand)]
pub enum BuildCommands {
    /// Build an image from a Dockerfile and a context (a directory, a tarball, or `-` for stdin)
    Build(Box<BuildArgs>),
}

#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// Name and optionally a tag (`name:tag`); may be repeated
    #[arg(short = 't', long = "tag", value_name = "NAME[:TAG]")]
    pub tags: Vec<String>,
    /// The Dockerfile (default: CONTEXT/Dockerfile); `-` reads it from stdin
    #[arg(short = 'f', long = "file", value_name = "PATH")]
    pub file: Option<String>,
    /// Set a build-time variable (`KEY=VALUE`, or `KEY` to take it from the environment)
    #[arg(long = "build-arg", value_name = "KEY[=VALUE]")]
    pub build_args: Vec<String>,
    /// The stage to build (default: the last)
    #[arg(long, value_name = "STAGE")]
    pub target: Option<String>,
    /// Do not use the cache
    #[arg(long)]
    pub no_cache: bool,
    /// Do not use the cache for these stages
    #[arg(long = "no-cache-filter", value_name = "STAGE", value_delimiter = ',')]
    pub no_cache_filter: Vec<String>,
    /// Always look for a newer version of base images in their registry (`--pull=false`: the
    /// default, use the stored image when there is one)
    #[arg(
        long,
        num_args = 0..=1,
        require_equals = true,
        default_value = "false",
        default_missing_value = "true",
        action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new(),
        value_name = "BOOL"
    )]
    pub pull: bool,
    /// Accepted for docker's habits: the image always goes into kiln's store, which is what
    /// `--load` asks of docker
    #[arg(long)]
    pub load: bool,
    /// Accepted for docker's habits: kiln leaves no intermediate containers to remove
    #[arg(
        long,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new(),
        value_name = "BOOL"
    )]
    pub rm: Option<bool>,
    /// Accepted for docker's habits: kiln leaves no intermediate containers, even after a failure
    #[arg(
        long = "force-rm",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new(),
        value_name = "BOOL"
    )]
    pub force_rm: Option<bool>,
    /// Network for RUN steps: host (default) or none
    #[arg(long, default_value = "host", value_name = "MODE")]
    pub network: String,
    /// Grant an entitlement: `security.insecure` (RUN --security=insecure runs privileged),
    /// `network.host` (RUN steps have the host's network already)
    #[arg(long = "allow", value_name = "ENTITLEMENT")]
    pub allow: Vec<String>,
    /// Set metadata on the image (`KEY=VALUE`)
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// A secret for `RUN --mount=type=secret` (`id=ID,src=PATH` or `id=ID,env=VAR`)
    #[arg(long = "secret", value_name = "SPEC")]
    pub secrets: Vec<String>,
    /// A named build context for FROM NAME, COPY --from=NAME and RUN --mount=from=NAME:
    /// NAME=DIR, NAME=docker-image://REF, NAME=oci-layout://DIR[:TAG|@DIGEST], or a git or
    /// https URL; it replaces a stage or image of that name
    #[arg(long = "build-context", value_name = "NAME=VALUE")]
    pub build_contexts: Vec<String>,
    /// An SSH agent for RUN --mount=type=ssh: `default` ($SSH_AUTH_SOCK), ID=SOCKET, or
    /// ID=KEYFILE[,KEYFILE] (loaded into an ssh-agent of the build's own)
    #[arg(long = "ssh", value_name = "default|ID[=SOCKET|KEY]")]
    pub ssh: Vec<String>,
    /// Progress output: auto, tty, plain, quiet or rawjson
    #[arg(long, default_value = "auto", value_name = "MODE")]
    pub progress: String,
    /// Say why each step missed the cache (always on with --progress plain)
    #[arg(long)]
    pub explain: bool,
    /// Write the image ID to this file
    #[arg(long, value_name = "FILE")]
    pub iidfile: Option<PathBuf>,
    /// Output: type=image|oci|docker|local|tar[,dest=PATH][,compression=gzip|zstd|none]
    #[arg(short = 'o', long = "output", value_name = "SPEC")]
    pub outputs: Vec<String>,
    /// Export the build cache: `type=registry,ref=REPO[:TAG]`, `type=local,dest=DIR` or
    /// `type=inline`, with `mode=min|max`, `compression=gzip|zstd`, `ignore-error=true`,
    /// `cache-mounts=true`; may be repeated
    #[arg(long = "cache-to", value_name = "SPEC")]
    pub cache_to: Vec<String>,
    /// Import a build cache: `type=registry,ref=REPO[:TAG]`, `type=local,src=DIR`, or an image
    /// reference (its inline cache); may be repeated (the first that has a step wins)
    #[arg(long = "cache-from", value_name = "SPEC")]
    pub cache_from: Vec<String>,
    /// Print only the image ID
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Only run the Dockerfile's checks (`kiln check`'s rules): print what they find, build
    /// nothing; exit 1 when something is found
    #[arg(long)]
    pub check: bool,
    /// What to do with the Dockerfile: `build` (the default) or `check` (as --check)
    #[arg(long, value_name = "METHOD")]
    pub call: Option<String>,
    /// Push the image to its registry after the build (same as `--output type=image,push=true`)
    #[arg(long)]
    pub push: bool,
    /// How many steps may run at the same time (default: the number of cores)
    #[arg(long = "max-parallelism", value_name = "N")]
    pub max_parallelism: Option<usize>,
    /// Memory limit for each RUN step (`256m`, `2g`; default: `[build] memory` in the config, else none)
    #[arg(short = 'm', long = "memory", value_name = "BYTES")]
    pub memory: Option<String>,
    /// CPU shares (relative weight) for each RUN step
    #[arg(short = 'c', long = "cpu-shares", value_name = "N")]
    pub cpu_shares: Option<u64>,
    /// CPUs each RUN step may use (`0-1`, `0,1`)
    #[arg(long = "cpuset-cpus", value_name = "LIST")]
    pub cpuset_cpus: Option<String>,
    /// Most processes each RUN step may have at once (-1: no limit; default 4096, or `[build]
    /// pids-limit` in the config), so a fork bomb in a Dockerfile cannot take the machine down
    #[arg(long = "pids-limit", value_name = "N", allow_negative_numbers = true)]
    pub pids_limit: Option<i64>,
    /// Add an /etc/hosts line to every RUN step: HOST:IP (or HOST=IP)
    #[arg(long = "add-host", value_name = "HOST:IP")]
    pub add_host: Vec<String>,
    /// The size of /dev/shm in RUN steps (`128m`, `1g`; default 64m)
    #[arg(long = "shm-size", value_name = "BYTES")]
    pub shm_size: Option<String>,
    /// A resource limit of every RUN step: NAME=SOFT[:HARD] (`nofile=1024:2048`, -1 unlimited)
    #[arg(long, value_name = "NAME=SOFT[:HARD]")]
    pub ulimit: Vec<String>,
    /// Target platforms (`linux/arm64`, or `linux/amd64,linux/arm64` for a multi-platform image
    /// index); default this machine's. Foreign platforms' RUN steps are emulated (kiln binfmt)
    #[arg(long, value_name = "PLATFORM[,PLATFORM...]")]
    pub platform: Option<String>,
    /// The build context: a directory, a tarball, or `-`
    #[arg(value_name = "CONTEXT")]
    pub context: String,
}

pub fn run(cmd: BuildCommands, globals: &Globals) -> anyhow::Result<i32> {
    match cmd {
        BuildCommands::Build(args) => {
            let push_names = names_to_push(&args)?;
            let opts = to_options(*args)?;
            let quiet = opts.quiet;
            let code = crate::engine::build(&globals.root, opts)?;
            if code == 0 && !push_names.is_empty() {
                crate::exporter::registry::push(&globals.root, &push_names, quiet)?;
            }
            Ok(code)
        }
    }
}

fn to_options(args: BuildArgs) -> anyhow::Result<BuildOptions> {
    let platforms = match &args.platform {
        Some(p) => crate::platform::Platform::parse_list(p)?,
        None => Vec::new(),
    };
    let check_only = match args.call.as_deref() {
        None | Some("build") => args.check,
        Some("check") => true,
        Some(other) => anyhow::bail!(
            "--call={other}: kiln evaluates a Dockerfile with `build` or `check`; BuildKit's outline and targets are not supported"
        ),
    };
    let progress = if args.quiet {
        crate::solver::progress::Mode::Quiet
    } else {
        crate::solver::progress::Mode::parse(&args.progress)?
    };
    let mut secrets = std::collections::HashMap::new();
    for s in &args.secrets {
        let (id, source) = options::parse_secret(s)?;
        secrets.insert(id, source);
    }
    let mut outputs = Vec::new();
    for o in &args.outputs {
        outputs.push(options::parse_output(o, &args.tags)?);
    }
    if outputs.is_empty() {
        outputs.push(Output::Image {
            names: args.tags.clone(),
        });
    }
    let max_parallelism = match args.max_parallelism {
        Some(0) => anyhow::bail!("--max-parallelism must be at least 1"),
        Some(n) => n,
        None => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2),
    };
    Ok(BuildOptions {
        context: args.context,
        dockerfile: args.file,
        tags: args.tags,
        build_args: options::parse_build_args(&args.build_args)?,
        target: args.target,
        no_cache: args.no_cache,
        no_cache_filter: args.no_cache_filter,
        pull: args.pull,
        network: options::parse_network(&args.network)?,
        allow_insecure: options::parse_allow(&args.allow)?,
        labels: options::parse_labels(&args.labels)?,
        secrets,
        build_contexts: args.build_contexts,
        ssh: args.ssh,
        progress,
        explain: args.explain,
        iidfile: args.iidfile,
        outputs,
        quiet: args.quiet,
        check_only,
        max_parallelism,
        run_limits: options::run_limits(
            args.memory.as_deref(),
            args.cpu_shares,
            args.cpuset_cpus,
            args.pids_limit,
        )?,
        run_settings: run_settings(&args.add_host, args.shm_size.as_deref(), &args.ulimit)?,
        cache_to: args
            .cache_to
            .iter()
            .map(|s| options::parse_cache_to(s))
            .collect::<anyhow::Result<_>>()?,
        cache_from: args
            .cache_from
            .iter()
            .map(|s| options::parse_cache_from(s))
            .collect::<anyhow::Result<_>>()?,
        platforms,
    })
}

/// `--add-host`, `--shm-size` and `--ulimit` as docker's build reads them.
fn run_settings(
    add_host: &[String],
    shm_size: Option<&str>,
    ulimits: &[String],
) -> anyhow::Result<crate::ops::RunSettings> {
    use anyhow::Context;
    let mut settings = crate::ops::RunSettings::default();
    for h in add_host {
        settings.extra_hosts.push(parse_add_host(h)?);
    }
    if let Some(s) = shm_size {
        let bytes = crate::sandbox::parse_memory(s).with_context(|| format!("--shm-size {s:?}"))?;
        if bytes == 0 {
            anyhow::bail!("--shm-size {s:?}: the size must be more than 0");
        }
        settings.shm_size = bytes;
    }
    for u in ulimits {
        settings
            .ulimits
            .push(crate::sandbox::ulimit::parse(u).context("--ulimit")?);
    }
    Ok(settings)
}

/// docker's `--add-host` value: `HOST:IP` or `HOST=IP`, an IPv6 address bare or in brackets.
pub fn parse_add_host(s: &str) -> anyhow::Result<(String, std::net::IpAddr)> {
    let split = match (s.find('='), s.find(':')) {
        (Some(e), Some(c)) => e.min(c),
        (Some(i), None) | (None, Some(i)) => i,
        (None, None) => anyhow::bail!("--add-host {s:?}: expected HOST:IP (or HOST=IP)"),
    };
    let (host, ip) = (&s[..split], &s[split + 1..]);
    if host.is_empty() {
        anyhow::bail!("--add-host {s:?}: the host name is empty");
    }
    if ip == "host-gateway" {
        anyhow::bail!(
            "--add-host {s:?}: kiln has no bridge network, so no host gateway; give the IP \
             (RUN steps share the host's network by default: 127.0.0.1 is the host)"
        );
    }
    let bare = ip.trim_start_matches('[').trim_end_matches(']');
    let addr = bare
        .parse::<std::net::IpAddr>()
        .map_err(|_| anyhow::anyhow!("--add-host {s:?}: invalid IP address {ip:?}"))?;
    Ok((host.to_string(), addr))
}

/// The names `--push` or a pushing `--output` asks to push, checked before the build starts so a
/// build that cannot be pushed fails at once.
fn names_to_push(args: &BuildArgs) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    if args.push {
        names.extend(args.tags.iter().cloned());
    }
    for spec in &args.outputs {
        if options::output_pushes(spec) {
            if let Output::Image { names: n } = options::parse_output(spec, &args.tags)? {
                names.extend(n);
            }
        }
    }
    if (args.push || args.outputs.iter().any(|s| options::output_pushes(s))) && names.is_empty() {
        anyhow::bail!("--push needs a name to push to: add -t REGISTRY/NAME[:TAG]");
    }
    names.sort();
    names.dedup();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_host_forms() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        assert_eq!(
            parse_add_host("db:127.0.0.2").unwrap(),
            ("db".into(), ip("127.0.0.2"))
        );
        assert_eq!(
            parse_add_host("db=127.0.0.2").unwrap(),
            ("db".into(), ip("127.0.0.2"))
        );
        assert_eq!(parse_add_host("v6:::1").unwrap(), ("v6".into(), ip("::1")));
        assert_eq!(
            parse_add_host("v6=[::1]").unwrap(),
            ("v6".into(), ip("::1"))
        );
        assert!(parse_add_host("db").is_err());
        assert!(parse_add_host("db:nope").is_err());
        assert!(parse_add_host("db:host-gateway")
            .unwrap_err()
            .to_string()
            .contains("gateway"));
    }
}
