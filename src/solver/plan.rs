//! Planning: each instruction, expanded with the stage's scope, becomes a config change or a
//! filesystem step with its operation, cache key and the inputs kept to explain misses.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};

use super::cache::{LayerRef, StepInputs};
use super::graph::stage_ref;
use super::{
    digest_of, format_time, wait_stage, CopyOp, CopyOptions, Network, Op, RunMount, RunOp, Shared,
    SourceTree,
};
use crate::dockerfile::{
    self, CopyArgs, Healthcheck, Heredoc, Instruction, Mount, MountType, Sharing, ShellOrExec,
    Spanned, Vars,
};
use crate::oci::config::{HealthConfig, History, ImageConfigFile};
use crate::source::local::contenthash::{hash_selection, HashOptions};

/// The per-stage walk state.
pub(super) struct StageWalk {
    pub(super) config: ImageConfigFile,
    pub(super) layers: Vec<LayerRef>,
    /// Key of the current filesystem state.
    pub(super) key: String,
    /// ENV and ARG in scope: expands each instruction as BuildKit does. Its ENV follows the
    /// config's (the base image's, then this stage's ENV instructions).
    pub(super) vars: Vars,
    /// Whether CMD was set in this stage (ENTRYPOINT resets an inherited CMD only).
    pub(super) cmd_set_here: bool,
    /// Time of the newest filesystem state (history `created` of config-only steps).
    pub(super) created: i64,
    pub(super) new_history: Vec<History>,
}

impl StageWalk {
    /// The walk at the start of a stage on top of a base with `config`.
    pub(super) fn start(
        shared: &Shared,
        config: ImageConfigFile,
        layers: Vec<LayerRef>,
        key: String,
        created: i64,
    ) -> Self {
        StageWalk {
            vars: shared.stages.vars(&config.env_pairs()),
            config,
            layers,
            key,
            cmd_set_here: false,
            created,
            new_history: Vec::new(),
        }
    }

    /// ARGs that have values and are not shadowed by ENV: RUN sees them as environment.
    pub(super) fn arg_env(&self) -> BTreeMap<String, String> {
        self.vars.arg_env().into_iter().collect()
    }

    /// Proxy build args for a RUN's environment only (never its key or history).
    pub(super) fn proxy_env(&self) -> Vec<String> {
        self.vars
            .proxy_env()
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect()
    }

    pub(super) fn workdir(&self) -> String {
        self.config
            .config
            .working_dir
            .clone()
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".into())
    }

    pub(super) fn shell(&self) -> Vec<String> {
        self.config
            .config
            .shell
            .clone()
            .unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into()])
    }

    /// A filesystem step's outcome joins the stage: its history entry, its layer (none when
    /// it changed nothing) and its cache key, from a cache hit or a run alike.
    pub(super) fn add_step(
        &mut self,
        key: String,
        created_by: String,
        layer: Option<LayerRef>,
        created: i64,
    ) {
        self.created = created.max(self.created);
        self.history(created_by, layer.is_none(), created);
        if let Some(l) = layer {
            self.layers.push(l);
        }
        self.key = key;
    }

    pub(super) fn history(&mut self, created_by: String, empty: bool, created: i64) {
        self.new_history.push(History {
            created: Some(format_time(created)),
            created_by: Some(created_by),
            comment: Some("buildkit.dockerfile.v0".into()),
            empty_layer: empty.then_some(true),
            author: None,
        });
    }
}

pub(super) struct Planned {
    pub(super) op: Op,
    pub(super) key: String,
    pub(super) inputs: StepInputs,
    pub(super) created_by: String,
}

/// Applies a config-only instruction to the walk, or plans a filesystem step.
pub(super) async fn plan_step(
    shared: &Arc<Shared>,
    stage: usize,
    walk: &mut StageWalk,
    instr: &Spanned,
) -> Result<Option<Planned>> {
    let created = walk.created;
    // The instruction with BuildKit's expansions done; ENV and ARG also update the scope.
    let expanded = walk
        .vars
        .apply(&instr.instruction)
        .map_err(|e| anyhow!("{e}"))?;
    match &expanded {
        Instruction::From { .. } => bail!("FROM inside a stage"),
        Instruction::Env(pairs) => {
            let text: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
            for (k, v) in pairs {
                walk.config.env_set(k, v);
            }
            walk.history(format!("ENV {}", text.join(" ")), true, created);
        }
        Instruction::Arg(args) => {
            // BuildKit records each ARG line (with the value it takes, if any).
            let text: Vec<String> = args
                .iter()
                .map(|(k, v)| match v {
                    Some(v) => format!("{k}={v}"),
                    None => k.clone(),
                })
                .collect();
            walk.history(format!("ARG {}", text.join(" ")), true, created);
        }
        Instruction::Label(pairs) => {
            let mut text = Vec::new();
            for (k, v) in pairs {
                text.push(format!("{k}={v}"));
                walk.config
                    .config
                    .labels
                    .get_or_insert_with(BTreeMap::new)
                    .insert(k.clone(), v.clone());
            }
            walk.history(format!("LABEL {}", text.join(" ")), true, created);
        }
        Instruction::Maintainer(m) => {
            walk.config.author = Some(m.clone());
            walk.history(format!("MAINTAINER {m}"), true, created);
        }
        Instruction::Expose(ports) => {
            let mut added = Vec::new();
            for word in ports {
                for port in expand_port(word)? {
                    walk.config
                        .config
                        .exposed_ports
                        .get_or_insert_with(BTreeMap::new)
                        .insert(port.clone(), serde_json::json!({}));
                    added.push(port);
                }
            }
            // In the order of the words as the front end sorted them (BuildKit's parser sorts
            // them as written), repeats kept.
            walk.history(format!("EXPOSE [{}]", added.join(" ")), true, created);
        }
        Instruction::Volume(vols) => {
            for v in vols {
                if v.is_empty() {
                    bail!("VOLUME specified can not be an empty string");
                }
                walk.config
                    .config
                    .volumes
                    .get_or_insert_with(BTreeMap::new)
                    .insert(v.clone(), serde_json::json!({}));
            }
            walk.history(format!("VOLUME [{}]", vols.join(" ")), true, created);
        }
        Instruction::User(u) => {
            walk.config.config.user = Some(u.clone());
            walk.history(format!("USER {u}"), true, created);
        }
        Instruction::StopSignal(s) => {
            walk.config.config.stop_signal = Some(s.clone());
            walk.history(format!("STOPSIGNAL {s}"), true, created);
        }
        Instruction::Shell(argv) => {
            walk.config.config.shell = Some(argv.clone());
            walk.history(format!("SHELL [{}]", argv.join(" ")), true, created);
        }
        Instruction::Cmd(form) => {
            let argv = command_argv(walk, form);
            walk.history(format!("CMD {}", go_quoted(&argv)), true, created);
            // An empty list is no value: the image config omits it (`omitempty`), as BuildKit's.
            walk.config.config.cmd = Some(argv).filter(|a| !a.is_empty());
            // BuildKit sets the (Windows-only, deprecated) ArgsEscaped on every CMD, shell or
            // exec form; ENTRYPOINT leaves it as it was.
            walk.config.config.args_escaped = Some(true);
            walk.cmd_set_here = true;
        }
        Instruction::Entrypoint(form) => {
            let argv = command_argv(walk, form);
            walk.history(format!("ENTRYPOINT {}", go_quoted(&argv)), true, created);
            walk.config.config.entrypoint = Some(argv).filter(|a| !a.is_empty());
            if !walk.cmd_set_here {
                walk.config.config.cmd = None;
            }
        }
        Instruction::Healthcheck(h) => {
            let health = health_config(h);
            walk.history(
                format!("HEALTHCHECK {}", health_text(&health)),
                true,
                created,
            );
            walk.config.config.healthcheck = Some(health);
        }
        Instruction::Onbuild { source, .. } => {
            // Only the config records a trigger: BuildKit writes no history entry for it.
            walk.config
                .config
                .on_build
                .get_or_insert_with(Vec::new)
                .push(source.clone());
        }
        Instruction::Workdir(dir) => {
            let path = workdir_path(&walk.workdir(), dir);
            walk.config.config.working_dir = Some(path.clone());
            let user = walk.config.config.user.clone().filter(|u| !u.is_empty());
            let key = digest_of(&[&walk.key, "mkdir", &path, user.as_deref().unwrap_or("")]);
            let inputs = StepInputs {
                parent: walk.key.clone(),
                instruction: format!("WORKDIR {path}"),
                ..Default::default()
            };
            return Ok(Some(Planned {
                op: Op::Mkdir {
                    path: path.clone(),
                    user,
                },
                key,
                inputs,
                created_by: format!("WORKDIR {path}"),
            }));
        }
        Instruction::Run(run) => {
            let insecure = run.security == dockerfile::Security::Insecure;
            if insecure && !shared.req.allow_insecure {
                // BuildKit's words (its entitlement check), and what to do.
                bail!(
                    "security.insecure is not allowed: RUN --security=insecure runs only when \
                     kiln build --allow security.insecure grants it"
                );
            }
            let (argv, script) = run_argv(walk, &run.command, &run.heredocs);
            let arg_env = walk.arg_env();
            let mut env: Vec<String> = walk.config.config.env.clone().unwrap_or_default();
            env.extend(arg_env.iter().map(|(k, v)| format!("{k}={v}")));
            let network = match run.network {
                dockerfile::Network::Default => shared.req.network,
                dockerfile::Network::None => Network::None,
                dockerfile::Network::Host => Network::Host,
            };
            let mut resolved = Vec::new();
            let mut mount_keys = Vec::new();
            for m in &run.mounts {
                let (mount, key_part) = resolve_mount(shared, stage, m).await?;
                resolved.push(mount);
                mount_keys.push(key_part);
            }
            // As BuildKit's client: the first ssh mount is the agent unless the image says.
            if let Some(first) = resolved.iter().find_map(|m| match m {
                RunMount::Ssh { target, .. } => Some(target.clone()),
                _ => None,
            }) {
                if !env.iter().any(|e| e.starts_with("SSH_AUTH_SOCK=")) {
                    env.push(format!("SSH_AUTH_SOCK={first}"));
                }
            }
            if let Some(script) = script {
                mount_keys.push(format!(
                    "file:{}:755:{}",
                    script.target,
                    crate::digest::sha256_digest(script.content.as_bytes())
                ));
                resolved.push(RunMount::File {
                    target: script.target,
                    content: script.content.into_bytes(),
                    mode: 0o755,
                });
            }
            let user = walk.config.config.user.clone().filter(|u| !u.is_empty());
            let cwd = walk.workdir();
            // BuildKit's history lists every ARG of the stage, empty ones too (not the key's
            // business: the key has the environment the command really gets).
            let history_args = walk.vars.history_args();
            let args_text = if history_args.is_empty() {
                String::new()
            } else {
                let list: Vec<String> = history_args
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                format!("|{} {} ", list.len(), list.join(" "))
            };
            let display = argv.join(" ");
            let created_by = format!("RUN {args_text}{display} # buildkit");
            let net = if network == Network::None {
                "none"
            } else {
                "host"
            };
            let mut parts: Vec<&str> =
                vec![&walk.key, "run", net, &cwd, user.as_deref().unwrap_or("")];
            parts.extend(argv.iter().map(String::as_str));
            parts.push("\0env");
            parts.extend(env.iter().map(String::as_str));
            parts.push("\0mounts");
            parts.extend(mount_keys.iter().map(String::as_str));
            if insecure {
                // Only then, so the keys of sandboxed steps stay as they were.
                parts.extend(["\0security", "insecure"]);
            }
            let key = digest_of(&parts);
            env.extend(walk.proxy_env());
            let inputs = StepInputs {
                parent: walk.key.clone(),
                instruction: if insecure {
                    format!("RUN --security=insecure {display}")
                } else {
                    format!("RUN {display}")
                },
                args: arg_env,
                env: walk.config.config.env.clone().unwrap_or_default(),
                ..Default::default()
            };
            let op = Op::Run(RunOp {
                argv,
                env,
                cwd,
                user,
                network,
                mounts: resolved,
                display: super::shorten(&display),
                platform: shared.stage_platforms[stage].clone(),
                insecure,
            });
            return Ok(Some(Planned {
                op,
                key,
                inputs,
                created_by,
            }));
        }
        Instruction::Copy(args) | Instruction::Add(args) => {
            let is_add = matches!(expanded, Instruction::Add(_));
            return plan_copy(shared, stage, walk, args, is_add).await.map(Some);
        }
    }
    Ok(None)
}

/// Makes `path` absolute against `base` (a WORKDIR), keeping a trailing slash.
/// WORKDIR's new directory as BuildKit computes it: an absolute path as written (a trailing `/`
/// kept, not cleaned), a relative one joined to the current directory and cleaned.
fn workdir_path(current: &str, dir: &str) -> String {
    if dir.starts_with('/') {
        return dir.to_string();
    }
    let joined = format!("{}/{}", current.trim_end_matches('/'), dir);
    format!("/{}", crate::source::fsutil::clean_rel(&joined))
}

fn absolute_in(base: &str, path: &str) -> String {
    let joined = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("{}/{}", base.trim_end_matches('/'), path)
    };
    // "" is the working directory as "." is, a directory (BuildKit's "./").
    let trailing = path.ends_with('/') || path.ends_with("/.") || path == "." || path.is_empty();
    let mut clean = format!("/{}", crate::source::fsutil::clean_rel(&joined));
    if trailing && clean != "/" {
        clean.push('/');
    }
    clean
}

fn command_argv(walk: &StageWalk, form: &ShellOrExec) -> Vec<String> {
    match form {
        ShellOrExec::Exec(argv) => argv.clone(),
        ShellOrExec::Shell(cmd) => {
            let mut argv = walk.shell();
            argv.push(cmd.clone());
            argv
        }
    }
}

/// A here-document a RUN runs as a script file (it starts with `#!`), and where it is bound.
struct ScriptFile {
    target: String,
    content: String,
}

/// RUN's argv: exec form as is; shell form through SHELL, with here-documents inlined so the
/// shell reads them (`RUN <<EOF` alone runs the document as the script; a document that starts
/// with `#!` is bound at /dev/pipes/NAME and the shell runs that file, as BuildKit does).
fn run_argv(
    walk: &StageWalk,
    form: &ShellOrExec,
    heredocs: &[Heredoc],
) -> (Vec<String>, Option<ScriptFile>) {
    match form {
        ShellOrExec::Exec(argv) => (argv.clone(), None),
        ShellOrExec::Shell(cmd) => {
            let mut script = cmd.clone();
            let only_doc = heredocs.len() == 1 && {
                let t = cmd.trim();
                t.starts_with("<<")
                    && t.trim_start_matches("<<")
                        .trim_start_matches('-')
                        .trim_matches(['"', '\''])
                        == heredocs[0].name
            };
            if only_doc && heredocs[0].content.starts_with("#!") {
                let target = format!("/dev/pipes/{}", heredocs[0].name);
                let mut argv = walk.shell();
                argv.push(target.clone());
                let content = heredocs[0].content.clone();
                return (argv, Some(ScriptFile { target, content }));
            }
            if only_doc {
                script = heredocs[0].content.clone();
            } else {
                for doc in heredocs {
                    script.push('\n');
                    script.push_str(&doc.content);
                    if !doc.content.ends_with('\n') {
                        script.push('\n');
                    }
                    script.push_str(&doc.name);
                }
            }
            let mut argv = walk.shell();
            argv.push(script);
            (argv, None)
        }
    }
}

/// Go's `%q` of a string slice, as BuildKit writes CMD/ENTRYPOINT history.
fn go_quoted(argv: &[String]) -> String {
    let items: Vec<String> = argv.iter().map(|a| go_quote(a, '"')).collect();
    format!("[{}]", items.join(" "))
}

/// Go's `strconv.Quote` (or `QuoteRune` with `'`): Go's escapes, printable characters as they
/// are.
fn go_quote(s: &str, quote: char) -> String {
    let mut out = String::from(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            '\x07' => out.push_str("\\a"),
            '\x08' => out.push_str("\\b"),
            '\x0c' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\x0b' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if c.is_control() => {
                if (c as u32) < 0x10000 {
                    out.push_str(&format!("\\u{:04x}", c as u32))
                } else {
                    out.push_str(&format!("\\U{:08x}", c as u32))
                }
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// Go's `time.Duration.String()` of `nanos`: `1m30s`, `1.5s`, `500ms`, `0s`.
fn go_duration(nanos: i64) -> String {
    if nanos == 0 {
        return "0s".into();
    }
    let sign = if nanos < 0 { "-" } else { "" };
    let n = nanos.unsigned_abs();
    // A fraction without its trailing zeros: 1500 with 3 digits -> ".5".
    let frac = |v: u64, digits: u32| -> String {
        let s = format!("{:0width$}", v, width = digits as usize);
        let t = s.trim_end_matches('0');
        if t.is_empty() {
            String::new()
        } else {
            format!(".{t}")
        }
    };
    if n < 1_000_000_000 {
        let (unit, div, digits) = if n < 1_000 {
            ("ns", 1, 0)
        } else if n < 1_000_000 {
            ("µs", 1_000, 3)
        } else {
            ("ms", 1_000_000, 6)
        };
        let whole = n / div;
        let rest = if digits == 0 {
            String::new()
        } else {
            frac(n % div, digits)
        };
        return format!("{sign}{whole}{rest}{unit}");
    }
    let secs = n / 1_000_000_000;
    let s = format!("{}{}s", secs % 60, frac(n % 1_000_000_000, 9));
    let mins = secs / 60;
    if mins == 0 {
        return format!("{sign}{s}");
    }
    let hours = mins / 60;
    if hours == 0 {
        return format!("{sign}{}m{s}", mins % 60);
    }
    format!("{sign}{hours}h{}m{s}", mins % 60)
}

/// The history text of a HEALTHCHECK, as Docker 28's BuildKit writes it: Go's `%q` of the
/// config's pointer, `&{["CMD-SHELL" "cmd"] "5s" "2s" "0s" "0s" '\x02'}` (the durations quoted
/// strings, the retries a quoted character).
fn health_text(h: &HealthConfig) -> String {
    let test = h.test.as_deref().unwrap_or(&[]);
    let d = |v: Option<i64>| go_quote(&go_duration(v.unwrap_or(0)), '"');
    let retries = h.retries.unwrap_or(0);
    let rune = u32::try_from(retries)
        .ok()
        .and_then(char::from_u32)
        .unwrap_or('\u{fffd}');
    format!(
        "&{{{} {} {} {} {} {}}}",
        go_quoted(test),
        d(h.interval),
        d(h.timeout),
        d(h.start_period),
        d(h.start_interval),
        go_quote(&rune.to_string(), '\'')
    )
}

/// `8080` -> `8080/tcp`; `8000-8002/udp` -> three ports.
fn expand_port(spec: &str) -> Result<Vec<String>> {
    let (ports, proto) = match spec.split_once('/') {
        Some((p, proto)) => (p, proto.to_ascii_lowercase()),
        None => (spec, "tcp".to_string()),
    };
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        bail!("EXPOSE {spec}: invalid protocol {proto:?}");
    }
    let parse = |s: &str| {
        s.parse::<u16>()
            .map_err(|_| anyhow!("EXPOSE {spec}: invalid port {s:?}"))
    };
    let (lo, hi) = match ports.split_once('-') {
        Some((a, b)) => (parse(a)?, parse(b)?),
        None => {
            let p = parse(ports)?;
            (p, p)
        }
    };
    if hi < lo {
        bail!("EXPOSE {spec}: invalid range");
    }
    Ok((lo..=hi).map(|p| format!("{p}/{proto}")).collect())
}

/// The config's healthcheck (durations in nanoseconds, as Docker writes them).
fn health_config(h: &Healthcheck) -> HealthConfig {
    let Healthcheck::Cmd {
        test,
        interval,
        timeout,
        start_period,
        start_interval,
        retries,
    } = h
    else {
        return HealthConfig {
            test: Some(vec!["NONE".into()]),
            ..Default::default()
        };
    };
    let test = match test {
        ShellOrExec::Shell(s) => vec!["CMD-SHELL".to_string(), s.clone()],
        ShellOrExec::Exec(argv) => {
            let mut t = vec!["CMD".to_string()];
            t.extend(argv.iter().cloned());
            t
        }
    };
    let nanos = |d: &Option<std::time::Duration>| {
        d.map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
    };
    HealthConfig {
        test: Some(test),
        interval: nanos(interval),
        timeout: nanos(timeout),
        start_period: nanos(start_period),
        start_interval: nanos(start_interval),
        retries: retries.map(i64::from),
    }
}

/// Resolves `--from` of COPY or a mount: a stage (its layers, waiting for it), or an image.
/// What a `--from` names: a tree of layers (a stage, an image) with its key, or the files of a
/// named build context (keyed by what each COPY or mount selects of them).
enum FromSource {
    Tree(SourceTree, String),
    Files(Arc<crate::source::local::BuildContext>),
}

async fn resolve_from(shared: &Arc<Shared>, stage: usize, from: &str) -> Result<FromSource> {
    if let Some(j) = stage_ref(&shared.stages.stages, from, stage) {
        let r = wait_stage(shared, j).await?;
        return Ok(FromSource::Tree(
            SourceTree::Layers(r.layers.clone()),
            r.key.clone(),
        ));
    }
    if from.parse::<usize>().is_ok() {
        bail!("--from={from}: no such stage before this one");
    }
    // Not a stage: a named build context of that name, else an image (BuildKit's order).
    let image_name = match shared.named.get(from) {
        Some(crate::source::named::NamedContext::Files { context, .. }) => {
            return Ok(FromSource::Files(context.clone()));
        }
        Some(crate::source::named::NamedContext::Image(reference)) => reference.clone(),
        None => from.to_string(),
    };
    let backend = shared.backend.clone();
    let (name, pull) = (image_name, shared.req.pull);
    let platform = shared.stage_platforms[stage].clone();
    let image = tokio::task::spawn_blocking(move || backend.base_image(&name, pull, &platform))
        .await
        .map_err(|e| anyhow!("resolving {from}: {e}"))?
        .with_context(|| format!("--from={from}"))?;
    Ok(FromSource::Tree(
        SourceTree::Layers(image.layers),
        digest_of(&["image", &image.id]),
    ))
}

/// Hashes exactly what a COPY (or bind mount) selects of a context's files, off the async
/// threads: the main context (with its per-file digest cache) or a named one.
async fn hash_context_files(
    shared: &Arc<Shared>,
    context: Arc<crate::source::local::BuildContext>,
    sources: Vec<String>,
    excludes: Vec<String>,
    expand: bool,
) -> Result<crate::source::local::contenthash::Selection> {
    let shared2 = shared.clone();
    tokio::task::spawn_blocking(move || -> Result<_> {
        let filter = context.filter();
        let expanded = if expand {
            let src = crate::source::select::CopySource {
                root: context.root(),
                filter: filter.as_ref(),
                from_context: true,
            };
            crate::source::select::expand_sources(&src, &sources)?
        } else {
            sources
        };
        let is_main = Arc::ptr_eq(&context, &shared2.context);
        hash_selection(
            context.root(),
            &expanded,
            &HashOptions {
                filter: filter.as_ref(),
                excludes: &excludes,
                cache: is_main.then_some(&shared2.file_cache),
            },
        )
    })
    .await
    .map_err(|e| anyhow!("hashing the build context: {e}"))?
}

/// Plans a COPY or ADD whose words are expanded already.
async fn plan_copy(
    shared: &Arc<Shared>,
    stage: usize,
    walk: &StageWalk,
    args: &CopyArgs,
    is_add: bool,
) -> Result<Planned> {
    let verb = if is_add { "ADD" } else { "COPY" };
    let mut sources = Vec::new();
    let mut urls = Vec::new();
    let mut git = Vec::new();
    // The sources as the history shows them, in the order written (URLs without credentials).
    let mut shown_sources = Vec::new();
    for s in &args.sources {
        // Here-documents are sources named after their delimiter, not context files.
        if !args.heredocs.is_empty() && dockerfile::raw::parse_heredoc_word(s).is_some() {
            continue;
        }
        let s = s.clone();
        if let Some(url) = crate::source::git::parse_checked(&s)? {
            // As written (the query form stays a query), without credentials.
            shown_sources.push(crate::source::git::redact_urls(&s));
            if !is_add {
                bail!(
                    "COPY cannot copy a git repository ({}): use ADD",
                    url.display()
                );
            }
            // Keyed by the commit the ref names now (as BuildKit): resolved before the step.
            let checksum = args.checksum.clone().or(url.query.checksum.clone());
            let keep_git_dir = args
                .keep_git_dir
                .or(url.query.keep_git_dir)
                .unwrap_or(false);
            let source = tokio::task::spawn_blocking(move || -> Result<_> {
                let resolved = crate::source::git::resolve(&url, checksum.as_deref())?;
                Ok(crate::source::git::GitSource {
                    url,
                    resolved,
                    keep_git_dir,
                })
            })
            .await
            .map_err(|e| anyhow!("resolving a git source: {e}"))??;
            git.push(source);
        } else if is_add && (s.starts_with("http://") || s.starts_with("https://")) {
            // Keyed by what the URL serves now, as BuildKit does: without --checksum the content
            // is fetched to learn its digest (the step then verifies it got the same bytes).
            let checksum = match &args.checksum {
                Some(c) => c.clone(),
                None => {
                    let url = s.clone();
                    let secrets = shared.secrets.clone();
                    tokio::task::spawn_blocking(move || -> Result<String> {
                        let authorization = super::backend::http_authorization(&url, &secrets)?;
                        let data = crate::source::http::fetch_authorized(
                            &url,
                            None,
                            authorization.as_deref(),
                        )?;
                        Ok(format!("sha256:{}", hex::encode(Sha256::digest(&data))))
                    })
                    .await
                    .map_err(|e| anyhow!("fetching {s}: {e}"))??
                }
            };
            shown_sources.push(crate::source::git::redact_urls(&s));
            urls.push((s, Some(checksum)));
        } else {
            shown_sources.push(s.clone());
            sources.push(s);
        }
    }
    if !is_add && args.checksum.is_some() {
        bail!("COPY does not take --checksum");
    }
    if let (true, Some(_), Some(local)) = (is_add, &args.checksum, sources.first()) {
        bail!(
            "ADD --checksum: {local:?} is not a URL: checksum requires HTTP(S) or Git sources \
             (drop --checksum, or verify the file before the build)"
        );
    }
    let dest_word = args.dest.clone();
    let dest = absolute_in(&walk.workdir(), &dest_word);
    let chown = args.chown.clone();
    let chmod = args
        .chmod
        .as_ref()
        .map(|c| super::chmod::Chmod::parse(c))
        .transpose()?;
    let excludes = args.exclude.clone();
    let heredocs: Vec<(String, String)> = args
        .heredocs
        .iter()
        .map(|d| (d.name.clone(), d.content.clone()))
        .collect();
    let from = args.from.clone();
    let files_of = match &from {
        Some(f) => match resolve_from(shared, stage, f).await? {
            FromSource::Tree(tree, key) => Err((tree, key)),
            FromSource::Files(named) => Ok((SourceTree::Named(named.clone()), named)),
        },
        None => Ok((SourceTree::Context, shared.context.clone())),
    };
    let (tree, source_key, files) = match files_of {
        Err((tree, key)) => (tree, key, Vec::new()),
        Ok((tree, context)) => {
            let selection =
                hash_context_files(shared, context, sources.clone(), excludes.clone(), true)
                    .await?;
            let files: Vec<(String, String)> = selection
                .entries
                .iter()
                .map(|(p, d)| (p.clone(), hex::encode(&d[..12])))
                .collect();
            (tree, selection.digest, files)
        }
    };
    let unpack = is_add && args.unpack.unwrap_or(true);
    let unpack_urls = is_add && args.unpack == Some(true);
    let options = CopyOptions {
        chown: None,
        chmod: chmod.clone(),
        excludes: excludes.clone(),
        parents: args.parents,
        unpack_archives: unpack,
        unpack_urls,
    };
    // The key's text: unchanged from what kiln always keyed a COPY by (the options that decide
    // what is copied), whatever the history says.
    let mut text = String::from(verb);
    if let Some(f) = &from {
        text.push_str(&format!(" --from={f}"));
    }
    if let Some(c) = &chown {
        text.push_str(&format!(" --chown={c}"));
    }
    if let Some(m) = &chmod {
        text.push_str(&format!(" --chmod={}", m.key_text()));
    }
    if args.parents {
        text.push_str(" --parents");
    }
    for e in &excludes {
        text.push_str(&format!(" --exclude={e}"));
    }
    let all_sources: Vec<String> = sources
        .iter()
        .cloned()
        .chain(urls.iter().map(|(u, _)| u.clone()))
        .collect();
    // The key names a git source by its commit, not its URL; the history by its URL without
    // credentials.
    let key_text = format!(
        "{text} {} {}",
        all_sources
            .iter()
            .cloned()
            .chain(git.iter().map(|g| g.cache_key()))
            .collect::<Vec<_>>()
            .join(" "),
        dest_word
    );
    let key_sources: Vec<String> = sources
        .iter()
        .cloned()
        .chain(urls.iter().map(|(u, _)| crate::source::git::redact_urls(u)))
        .chain(git.iter().map(|g| g.url.display()))
        .collect();
    text.push_str(&format!(" {} {}", key_sources.join(" "), dest_word));
    // The history's text, as BuildKit writes it: `--parents`, `--chown`, `--chmod` as written,
    // never `--from`, `--exclude`, `--link` or ADD's own flags; the sources, then each
    // here-document as `<<NAME`, then the destination.
    let mut history = String::from(verb);
    if args.parents {
        history.push_str(" --parents");
    }
    if let Some(c) = &chown {
        history.push_str(&format!(" --chown={c}"));
    }
    if let Some(m) = &args.chmod {
        history.push_str(&format!(" --chmod={m}"));
    }
    for s in &shown_sources {
        history.push_str(&format!(" {s}"));
    }
    for (n, _) in &heredocs {
        history.push_str(&format!(" <<{n}"));
    }
    history.push_str(&format!(" {dest_word}"));
    // COPY --link is BuildKit's rebase: its layer is made on an empty filesystem and linked on
    // top of the base, so nothing of the base is in its key and a new base reuses it unchanged.
    // As BuildKit, not with --chmod (BuildKit copies those as plain COPY); nor with a --chown
    // by name, which needs the base's /etc/passwd.
    let linked = args.link
        && args.chmod.is_none()
        && match chown.as_deref() {
            None => true,
            Some(c) => c
                .split(':')
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())),
        };
    let base_key = if linked {
        // What the layer does depend on besides the copy itself: the epoch clamps its times.
        format!(
            "linked:{}",
            shared
                .req
                .source_date_epoch
                .map(|e| e.to_string())
                .unwrap_or_default()
        )
    } else {
        walk.key.clone()
    };
    let mut parts: Vec<String> = vec![
        base_key.clone(),
        "copy".into(),
        key_text,
        dest.clone(),
        source_key.clone(),
        unpack.to_string(),
    ];
    for (n, c) in &heredocs {
        parts.push(format!("heredoc:{n}:{c}"));
    }
    for (u, c) in &urls {
        parts.push(format!("url:{u}:{}", c.as_deref().unwrap_or("")));
    }
    if unpack_urls && !urls.is_empty() {
        parts.push("unpack-urls".into());
    }
    let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
    let key = digest_of(&refs);
    let inputs = StepInputs {
        parent: base_key,
        instruction: text.clone(),
        files,
        sources: if from.is_some() {
            vec![source_key]
        } else {
            git.iter()
                .map(|g| g.cache_key())
                .chain(urls.iter().map(|(u, c)| {
                    let digest = c.as_deref().unwrap_or("");
                    format!("url:{digest} {}", crate::source::git::redact_urls(u))
                }))
                .collect()
        },
        ..Default::default()
    };
    let op = Op::Copy(CopyOp {
        from: tree,
        sources,
        dest,
        chown,
        options,
        heredocs,
        urls,
        git,
        link: linked,
    });
    Ok(Planned {
        op,
        key,
        inputs,
        created_by: format!("{history} # buildkit"),
    })
}

/// Resolves one `RUN --mount` (parsed and expanded by the front end, BuildKit's defaults filled
/// in) and the part of it that belongs in the cache key (never a secret's value).
async fn resolve_mount(
    shared: &Arc<Shared>,
    stage: usize,
    m: &Mount,
) -> Result<(RunMount, String)> {
    let target = m.target.clone();
    let uid = m.uid.unwrap_or(0);
    let gid = m.gid.unwrap_or(0);
    match m.kind {
        MountType::Bind => {
            let source = m.source.clone().unwrap_or_default();
            let rw = !m.read_only;
            let files_of = match &m.from {
                Some(f) => match resolve_from(shared, stage, f).await? {
                    FromSource::Tree(tree, key) => Err((tree, key)),
                    FromSource::Files(named) => Ok((Some(SourceTree::Named(named.clone())), named)),
                },
                None => Ok((None, shared.context.clone())),
            };
            let (from, key) = match files_of {
                Err((tree, key)) => (Some(tree), key),
                Ok((tree, context)) => {
                    let src = crate::source::fsutil::clean_rel(&source);
                    let sel =
                        hash_context_files(shared, context, vec![src], Vec::new(), false).await?;
                    (tree, sel.digest)
                }
            };
            let key_part = format!("bind:{target}:{source}:{rw}:{key}");
            Ok((
                RunMount::Bind {
                    target,
                    source,
                    from: from.or(Some(SourceTree::Context)),
                    rw,
                },
                key_part,
            ))
        }
        MountType::Cache => {
            if m.from.is_some() {
                bail!("--mount=type=cache,from=... is not supported");
            }
            let id = m.id.clone().unwrap_or_else(|| target.clone());
            let sharing = match m.sharing {
                Sharing::Shared => "shared",
                Sharing::Private => "private",
                Sharing::Locked => "locked",
            }
            .to_string();
            let mode = m.mode.unwrap_or(0o755);
            // The cache's contents are not part of the key (as BuildKit): only where it is.
            let key_part = format!("cache:{target}:{id}:{sharing}:{mode}:{uid}:{gid}");
            // A read-only cache mount is another step (the key part of a writable one unchanged).
            let key_part = if m.read_only {
                format!("{key_part}:ro")
            } else {
                key_part
            };
            Ok((
                RunMount::Cache {
                    target,
                    id,
                    sharing,
                    mode,
                    uid,
                    gid,
                    readonly: m.read_only,
                },
                key_part,
            ))
        }
        MountType::Tmpfs => {
            let size = m.size;
            Ok((
                RunMount::Tmpfs {
                    target: target.clone(),
                    size,
                },
                format!("tmpfs:{target}:{size:?}"),
            ))
        }
        MountType::Secret => {
            let id =
                m.id.clone()
                    .ok_or_else(|| anyhow!("--mount=type=secret needs an id or a target"))?;
            let env = m.env.clone();
            // No target with `env=`: the secret is only an environment variable.
            let target = (!target.is_empty()).then_some(target);
            let mode = m.mode.unwrap_or(0o400);
            if m.required && !shared.secrets.contains_key(&id) {
                bail!("secret {id:?} is required but was not given (--secret id={id},src=PATH)");
            }
            // Only where the secret goes, never its value.
            let key_part = format!("secret:{id}:{target:?}:{env:?}:{mode}:{uid}:{gid}");
            Ok((
                RunMount::Secret {
                    id,
                    target,
                    env,
                    mode,
                    uid,
                    gid,
                },
                key_part,
            ))
        }
        MountType::Ssh => {
            let id = m.id.clone().unwrap_or_else(|| "default".into());
            if m.required && !shared.ssh.contains_key(&id) {
                bail!(
                    "no SSH key {id:?} forwarded from the client: give it with kiln build \
                     --ssh {id} (the agent of $SSH_AUTH_SOCK), --ssh {id}=SOCKET or --ssh \
                     {id}=KEYFILE"
                );
            }
            let mode = m.mode.unwrap_or(0o600);
            // Where the socket goes and who may use it; never which agent or keys.
            let key_part = format!("ssh:{id}:{target}:{mode}:{uid}:{gid}");
            Ok((
                RunMount::Ssh {
                    id,
                    target,
                    mode,
                    uid,
                    gid,
                },
                key_part,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_as_go_writes_them() {
        let s = 1_000_000_000;
        assert_eq!(go_duration(0), "0s");
        assert_eq!(go_duration(5 * s), "5s");
        assert_eq!(go_duration(90 * s), "1m30s");
        assert_eq!(go_duration(1_500_000_000), "1.5s");
        assert_eq!(go_duration(500_000_000), "500ms");
        assert_eq!(go_duration(1_500), "1.5µs");
        assert_eq!(go_duration(3600 * s), "1h0m0s");
        assert_eq!(go_duration(3725 * s + 10_000_000), "1h2m5.01s");
    }

    #[test]
    fn healthcheck_history_is_go_q_of_the_config() {
        // What Docker 28's BuildKit wrote for `HEALTHCHECK --interval=90s --start-period=1500ms
        // --retries=10 CMD ["wget", "x"]` (docker-ref).
        let h = HealthConfig {
            test: Some(vec!["CMD".into(), "wget".into(), "x".into()]),
            interval: Some(90_000_000_000),
            start_period: Some(1_500_000_000),
            retries: Some(10),
            ..Default::default()
        };
        assert_eq!(
            health_text(&h),
            r#"&{["CMD" "wget" "x"] "1m30s" "0s" "1.5s" "0s" '\n'}"#
        );
        let none = HealthConfig {
            test: Some(vec!["NONE".into()]),
            ..Default::default()
        };
        assert_eq!(
            health_text(&none),
            r#"&{["NONE"] "0s" "0s" "0s" "0s" '\x00'}"#
        );
    }

    #[test]
    fn go_quote_escapes() {
        assert_eq!(go_quote("a\"b\\c\x01\té", '"'), r#""a\"b\\c\x01\té""#);
        assert_eq!(go_quote("'", '\''), r"'\''");
    }
}
