//! Build stages and the variables each instruction sees, with BuildKit's scoping rules:
//!
//! - ARGs before the first FROM are *global*: they, and the automatic platform ARGs
//!   (`TARGETPLATFORM`, `BUILDPLATFORM`, their `OS`/`ARCH`/`VARIANT` parts), can be used in FROM
//!   lines only. A stage sees a global ARG after re-declaring it (`ARG NAME` with no default
//!   takes the global value).
//! - `--build-arg NAME=VALUE` overrides the default of a declared ARG (global or in a stage).
//!   Undeclared build args are not visible, except the predefined proxy args, which reach RUN's
//!   environment without a declaration.
//! - ENV wins over ARG when both define a name.
//! - Only ADD COPY ENV EXPOSE FROM LABEL STOPSIGNAL USER VOLUME WORKDIR (and ARG defaults, RUN
//!   --mount values) are expanded; RUN/CMD/ENTRYPOINT text goes to the shell as written, and
//!   ONBUILD triggers are expanded when they run in the downstream build.

use std::collections::HashMap;

use super::ast::*;
use super::error::ParseError;
use super::expand::{ExpandError, Lexer};
use super::instructions::parse_mount;
use super::raw::parse_heredoc_word;

/// The predefined proxy ARGs: passed to RUN when given as build args, without a declaration.
pub const PROXY_ARGS: &[&str] = &[
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// An OS/architecture/variant triple such as `linux/arm64/v8`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub arch: String,
    pub variant: String,
}

impl Platform {
    pub fn linux_amd64() -> Self {
        Platform {
            os: "linux".into(),
            arch: "amd64".into(),
            variant: String::new(),
        }
    }

    /// Parses `os/arch[/variant]`.
    pub fn parse(s: &str) -> Option<Self> {
        let mut parts = s.split('/');
        let os = parts.next().filter(|p| !p.is_empty())?.to_string();
        let arch = parts.next().filter(|p| !p.is_empty())?.to_string();
        let variant = parts.next().unwrap_or("").to_string();
        if parts.next().is_some() {
            return None;
        }
        Some(Platform { os, arch, variant })
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        if !self.variant.is_empty() {
            write!(f, "/{}", self.variant)?;
        }
        Ok(())
    }
}

/// What a build is run with: `--build-arg`s and the platforms.
#[derive(Debug, Clone)]
pub struct BuildContext {
    pub build_args: HashMap<String, String>,
    pub target_platform: Platform,
    pub build_platform: Platform,
    /// `--target` as given; after the stage split, the target stage's name (`default` for an
    /// unnamed last stage): BuildKit's `TARGETSTAGE`.
    pub target_stage: Option<String>,
}

impl BuildContext {
    /// linux/amd64 for both platforms.
    pub fn new(build_args: HashMap<String, String>) -> Self {
        BuildContext {
            build_args,
            target_platform: Platform::linux_amd64(),
            build_platform: Platform::linux_amd64(),
            target_stage: None,
        }
    }

    /// The automatic platform ARGs and their values.
    pub fn platform_args(&self) -> Vec<(String, String)> {
        let t = &self.target_platform;
        let b = &self.build_platform;
        vec![
            ("TARGETPLATFORM".into(), t.to_string()),
            ("TARGETOS".into(), t.os.clone()),
            ("TARGETARCH".into(), t.arch.clone()),
            ("TARGETVARIANT".into(), t.variant.clone()),
            // Windows' OS versions; empty on Linux, as BuildKit gives them.
            ("TARGETOSVERSION".into(), String::new()),
            ("BUILDPLATFORM".into(), b.to_string()),
            ("BUILDOS".into(), b.os.clone()),
            ("BUILDARCH".into(), b.arch.clone()),
            ("BUILDVARIANT".into(), b.variant.clone()),
            ("BUILDOSVERSION".into(), String::new()),
            (
                "TARGETSTAGE".into(),
                self.target_stage
                    .clone()
                    .unwrap_or_else(|| "default".into()),
            ),
        ]
    }
}

/// One build stage: its FROM (expanded) and the instructions up to the next FROM.
#[derive(Debug, Clone)]
pub struct Stage {
    pub index: usize,
    /// `AS name`, lower-cased.
    pub name: Option<String>,
    /// The base image reference with global ARGs expanded (`scratch` for none).
    pub base: String,
    /// When `base` names an earlier stage: its index.
    pub base_stage: Option<usize>,
    /// `--platform` with global ARGs expanded.
    pub platform: Option<String>,
    pub from: Spanned,
    pub instructions: Vec<Spanned>,
}

/// The result of splitting a Dockerfile into stages.
#[derive(Debug, Clone)]
pub struct Stages {
    pub stages: Vec<Stage>,
    /// Global ARGs with their resolved values (`None`: declared without a value).
    pub global_args: Vec<(String, Option<String>)>,
    pub context: BuildContext,
    pub escape: char,
}

fn stage_error(step: &Spanned, message: impl Into<String>) -> ParseError {
    ParseError {
        line: step.span.start_line,
        column: step.span.column,
        message: message.into(),
        source_line: step.original.clone(),
    }
}

/// `COPY --from=` and `RUN --mount=from=` name a stage or image as written: the build graph is
/// made before any ARG has a value, so BuildKit refuses a variable there (with these words).
fn check_from_has_no_variables(step: &Spanned, lexer: &Lexer) -> Result<(), ParseError> {
    let changes = |word: &str| {
        lexer
            .process_word(word, &|_| None)
            .map_or(true, |w| w != word)
    };
    match &step.instruction {
        Instruction::Copy(c) | Instruction::Add(c) if c.from.as_deref().is_some_and(changes) => {
            Err(stage_error(
                step,
                "variable expansion is not supported for --from, define a new stage with FROM \
                 using ARG from global scope as a workaround",
            ))
        }
        Instruction::Run(r)
            if r.mounts
                .iter()
                .any(|m| m.from.as_deref().is_some_and(changes)) =>
        {
            Err(stage_error(
                step,
                "'from' doesn't support variable expansion, define alias stage instead",
            ))
        }
        _ => Ok(()),
    }
}

/// Splits `df` into stages with linux/amd64 platforms; see [`stages_with`].
pub fn stages(df: &Dockerfile, build_args: &HashMap<String, String>) -> Result<Stages, ParseError> {
    stages_with(df, BuildContext::new(build_args.clone()))
}

/// Splits `df` into stages, resolving global ARGs and expanding each FROM.
pub fn stages_with(df: &Dockerfile, context: BuildContext) -> Result<Stages, ParseError> {
    let escape = df.escape();
    let lexer = Lexer::new(escape);
    let mut global: Vec<(String, Option<String>)> = Vec::new();
    let platform_args = context.platform_args();
    let mut stages: Vec<Stage> = Vec::new();
    for step in &df.instructions {
        match &step.instruction {
            Instruction::Arg(args) if stages.is_empty() => {
                for (name, default) in args {
                    let value = match context.build_args.get(name) {
                        Some(v) => Some(v.clone()),
                        None => match default {
                            Some(d) => {
                                let lookup = |k: &str| global_lookup(&global, &platform_args, k);
                                Some(lexer.process_word(d, &lookup).map_err(|e| {
                                    stage_error(step, format!("ARG {name}: {e}"))
                                })?)
                            }
                            None => None,
                        },
                    };
                    global.retain(|(n, _)| n != name);
                    global.push((name.clone(), value));
                }
            }
            Instruction::From {
                image,
                platform,
                alias,
            } => {
                let lookup = |k: &str| global_lookup(&global, &platform_args, k);
                let base = lexer
                    .process_word(image, &lookup)
                    .map_err(|e| stage_error(step, format!("FROM {image}: {e}")))?;
                if base.is_empty() {
                    return Err(stage_error(
                        step,
                        format!("base name ({image}) should not be blank: set the ARG it uses or give it a default"),
                    ));
                }
                let platform = match platform {
                    Some(p) => Some(
                        lexer
                            .process_word(p, &lookup)
                            .map_err(|e| stage_error(step, format!("--platform {p}: {e}")))?,
                    ),
                    None => None,
                };
                // Two stages may share a name (BuildKit builds it; `kiln check` warns with
                // DuplicateStageName): a later reference means the later stage.
                let lower = base.to_lowercase();
                let base_stage = stages
                    .iter()
                    .rfind(|s| s.name.as_deref() == Some(lower.as_str()))
                    .map(|s| s.index);
                stages.push(Stage {
                    index: stages.len(),
                    name: alias.clone(),
                    base,
                    base_stage,
                    platform,
                    from: step.clone(),
                    instructions: Vec::new(),
                });
            }
            _ => match stages.last_mut() {
                Some(stage) => {
                    check_from_has_no_variables(step, &lexer)?;
                    stage.instructions.push(step.clone())
                }
                None => {
                    return Err(stage_error(
                        step,
                        format!(
                            "no build stage in current context: {} before the first FROM (only ARG may come before FROM)",
                            step.instruction.keyword()
                        ),
                    ))
                }
            },
        }
    }
    if stages.is_empty() {
        let line = df.instructions.last().map(|s| s.span.end_line).unwrap_or(1);
        return Err(ParseError {
            line,
            column: 1,
            message: "no FROM instruction: a Dockerfile needs at least one FROM".into(),
            source_line: String::new(),
        });
    }
    let mut context = context;
    if context.target_stage.is_none() {
        context.target_stage = stages.last().and_then(|s| s.name.clone());
    }
    Ok(Stages {
        stages,
        global_args: global,
        context,
        escape,
    })
}

fn global_lookup(
    global: &[(String, Option<String>)],
    platform_args: &[(String, String)],
    name: &str,
) -> Option<String> {
    if let Some((_, v)) = global.iter().rev().find(|(n, _)| n == name) {
        return v.clone();
    }
    platform_args
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
}

impl Stages {
    /// The stage a `--target` names (by name or index); the last stage when `None`.
    pub fn target(&self, target: Option<&str>) -> Option<&Stage> {
        match target {
            None => self.stages.last(),
            Some(t) => {
                let t = t.to_lowercase();
                self.stages
                    .iter()
                    .find(|s| s.name.as_deref() == Some(t.as_str()))
                    .or_else(|| t.parse::<usize>().ok().and_then(|i| self.stages.get(i)))
            }
        }
    }

    /// Expands `word` in the global scope: the global ARGs and the platform ARGs, what a FROM
    /// line sees (and what decides which stage `COPY --from=` or `RUN --mount=from=` reads).
    pub fn expand_global(&self, word: &str) -> Result<String, ExpandError> {
        let platform_args = self.context.platform_args();
        Lexer::new(self.escape).process_word(word, &|k| {
            global_lookup(&self.global_args, &platform_args, k)
        })
    }

    /// The variable state at the start of `stage`, given the base image's ENV.
    pub fn vars(&self, base_env: &[(String, String)]) -> Vars {
        Vars {
            escape: self.escape,
            env: base_env.to_vec(),
            args: Vec::new(),
            global_args: self.global_args.clone(),
            build_args: self.context.build_args.clone(),
            platform_args: self.context.platform_args(),
            args_over_env: Vec::new(),
        }
    }
}

/// The variables in scope at one point of a stage. Feed it each instruction in order with
/// [`Vars::apply`], which returns the instruction with BuildKit's expansions done and updates
/// ENV and ARG state.
#[derive(Debug, Clone)]
pub struct Vars {
    pub escape: char,
    /// The image environment (base image ENV, then this stage's ENV), in order.
    pub env: Vec<(String, String)>,
    /// ARGs declared in this stage, with values (`None`: declared, no value).
    pub args: Vec<(String, Option<String>)>,
    global_args: Vec<(String, Option<String>)>,
    build_args: HashMap<String, String>,
    platform_args: Vec<(String, String)>,
    /// Names whose ARG got a value after an ENV of the same name: for RUN and expansion the
    /// later one wins (BuildKit: `ENV X=e` then `ARG X=a` gives `a`; `ARG X=a` then `ENV X=e`
    /// gives `e`), while the image config keeps the ENV.
    args_over_env: Vec<String>,
}

impl Vars {
    /// A stage built `FROM` an earlier stage starts with that stage's ARGs (BuildKit carries
    /// the base stage's build args and their environment over): its RUNs see them and list
    /// them in their history, without declaring them again.
    pub fn inherit_args(&mut self, base: &Vars) {
        self.args = base.args.clone();
        self.args_over_env = base.args_over_env.clone();
    }

    /// The value of `name` for expansion: whichever of ENV and the stage's ARGs set it last.
    pub fn lookup(&self, name: &str) -> Option<String> {
        let arg = || {
            self.args
                .iter()
                .rev()
                .find(|(k, _)| k == name)
                .and_then(|(_, v)| v.clone())
        };
        if self.args_over_env.iter().any(|n| n == name) {
            if let Some(v) = arg() {
                return Some(v);
            }
        }
        if let Some((_, v)) = self.env.iter().rev().find(|(k, _)| k == name) {
            return Some(v.clone());
        }
        arg()
    }

    /// Whether ENV sets `name` and no later ARG overrides it.
    fn env_wins(&self, name: &str) -> bool {
        self.env.iter().any(|(n, _)| n == name) && !self.args_over_env.iter().any(|n| n == name)
    }

    pub fn expand(&self, word: &str) -> Result<String, ExpandError> {
        Lexer::new(self.escape).process_word(word, &|k| self.lookup(k))
    }

    pub fn expand_words(&self, word: &str) -> Result<Vec<String>, ExpandError> {
        Lexer::new(self.escape).process_words(word, &|k| self.lookup(k))
    }

    /// The stage's ARGs that have values and are not shadowed by ENV, in declaration order:
    /// what a RUN sees of the build args (its cache key and history record them).
    pub fn arg_env(&self) -> Vec<(String, String)> {
        self.args
            .iter()
            .filter(|(k, _)| !self.env_wins(k))
            .filter_map(|(k, v)| Some((k.clone(), v.clone()?)))
            .collect()
    }

    /// Every ARG declared in the stage, in the order first declared, with the value a RUN sees
    /// (ENV wins) or empty: the `|N K=V ...` list BuildKit writes before a RUN's command in its
    /// history. Never part of a cache key.
    pub fn history_args(&self) -> Vec<(String, String)> {
        self.args
            .iter()
            .map(|(k, _)| (k.clone(), self.lookup(k).unwrap_or_default()))
            .collect()
    }

    /// The environment a RUN gets: the image ENV, the stage's ARGs that have values (ENV wins),
    /// and the proxy build args.
    pub fn run_env(&self) -> Vec<(String, String)> {
        let args = self.arg_env();
        let mut out: Vec<(String, String)> = self
            .env
            .iter()
            .filter(|(k, _)| !args.iter().any(|(a, _)| a == k))
            .cloned()
            .collect();
        out.extend(args);
        out.extend(self.proxy_env());
        out
    }

    /// The proxy build args (`--build-arg HTTP_PROXY=...` and the like) a RUN gets without
    /// declaring them, unless ENV or a declared ARG sets the name: BuildKit keeps them out of
    /// the cache key and the history, so a proxy change does not invalidate the cache.
    pub fn proxy_env(&self) -> Vec<(String, String)> {
        let declared =
            |k: &str| self.env.iter().any(|(n, _)| n == k) || self.args.iter().any(|(n, _)| n == k);
        // As BuildKit, a proxy given in either case is set in both (`http_proxy` also gives
        // `HTTP_PROXY`), the spelling given winning over the other.
        PROXY_ARGS
            .iter()
            .filter(|p| !declared(p))
            .filter_map(|p| {
                let other = if p.chars().any(|c| c.is_ascii_lowercase()) {
                    p.to_ascii_uppercase()
                } else {
                    p.to_ascii_lowercase()
                };
                let value = self
                    .build_args
                    .get(*p)
                    .or_else(|| self.build_args.get(&other))?;
                Some((p.to_string(), value.clone()))
            })
            .collect()
    }

    /// Expands `inst` as BuildKit does and applies its effect on variables (ENV, ARG).
    pub fn apply(&mut self, inst: &Instruction) -> Result<Instruction, ExpandError> {
        let e = |w: &String| self.expand(w);
        let opt = |w: &Option<String>| -> Result<Option<String>, ExpandError> {
            w.as_ref().map(|w| self.expand(w)).transpose()
        };
        let out = match inst {
            Instruction::Env(pairs) => {
                let mut done = Vec::new();
                for (k, v) in pairs {
                    done.push((self.expand(k)?, self.expand(v)?));
                }
                for (k, v) in &done {
                    self.env.retain(|(n, _)| n != k);
                    self.env.push((k.clone(), v.clone()));
                    self.args_over_env.retain(|n| n != k);
                }
                Instruction::Env(done)
            }
            Instruction::Arg(args) => {
                let mut done = Vec::new();
                for (name, default) in args {
                    let value = match self.build_args.get(name) {
                        Some(v) => Some(v.clone()),
                        None => match default {
                            Some(d) => Some(self.expand(d)?),
                            None => self
                                .global_args
                                .iter()
                                .rev()
                                .find(|(n, _)| n == name)
                                .and_then(|(_, v)| v.clone())
                                .or_else(|| {
                                    self.platform_args
                                        .iter()
                                        .find(|(n, _)| n == name)
                                        .map(|(_, v)| v.clone())
                                }),
                        },
                    };
                    // Re-declaring an ARG without a value keeps the one it has (BuildKit adds
                    // an ARG's value to the stage's environment and never takes it back).
                    // The history writes the value this line gives (`ARG A` again: no value);
                    // a re-declared ARG keeps its first place in RUN's list, as BuildKit's.
                    done.push((name.clone(), value.clone()));
                    if value.is_some()
                        && self.env.iter().any(|(n, _)| n == name)
                        && !self.args_over_env.contains(name)
                    {
                        self.args_over_env.push(name.clone());
                    }
                    match self.args.iter_mut().find(|(n, _)| n == name) {
                        Some(slot) => {
                            if value.is_some() {
                                slot.1 = value;
                            }
                        }
                        None => self.args.push((name.clone(), value)),
                    }
                }
                Instruction::Arg(done)
            }
            Instruction::Label(pairs) => Instruction::Label(
                pairs
                    .iter()
                    .map(|(k, v)| Ok((e(k)?, e(v)?)))
                    .collect::<Result<_, ExpandError>>()?,
            ),
            Instruction::Expose(ports) => {
                // BuildKit's parser sorts the words as written (before expansion), as strings;
                // the image's history lists the ports in that order.
                let mut words = ports.clone();
                words.sort();
                let mut out = Vec::new();
                for p in &words {
                    out.extend(self.expand_words(p)?);
                }
                Instruction::Expose(out)
            }
            Instruction::Volume(v) => {
                Instruction::Volume(v.iter().map(e).collect::<Result<_, _>>()?)
            }
            Instruction::User(u) => Instruction::User(e(u)?),
            Instruction::Workdir(w) => Instruction::Workdir(e(w)?),
            Instruction::StopSignal(s) => Instruction::StopSignal(e(s)?),
            Instruction::Copy(c) | Instruction::Add(c) => {
                let mut c2 = c.clone();
                c2.sources = c
                    .sources
                    .iter()
                    .map(|s| {
                        // Heredoc sources keep their marker so the engine can match them.
                        if !c.heredocs.is_empty() && parse_heredoc_word(s).is_some() {
                            Ok(s.clone())
                        } else {
                            e(s)
                        }
                    })
                    .collect::<Result<_, _>>()?;
                c2.dest = e(&c.dest)?;
                // `--from` is never expanded: the graph refuses a variable there.
                c2.from = c.from.clone();
                c2.chown = opt(&c.chown)?;
                c2.chmod = opt(&c.chmod)?;
                c2.checksum = opt(&c.checksum)?;
                c2.exclude = c.exclude.iter().map(e).collect::<Result<_, _>>()?;
                for h in &mut c2.heredocs {
                    if h.expand {
                        h.content = expand_heredoc(&h.content, &|k| self.lookup(k))?;
                    }
                }
                if matches!(inst, Instruction::Add(_)) {
                    Instruction::Add(c2)
                } else {
                    Instruction::Copy(c2)
                }
            }
            Instruction::Run(r) => {
                let mut r2 = r.clone();
                let expand = |key: &str, value: &str| {
                    let expanded = if key == "from" {
                        Ok(value.to_string())
                    } else {
                        self.expand(value)
                    };
                    expanded.map_err(|e| e.message)
                };
                r2.mounts = r
                    .mounts
                    .iter()
                    .map(|m| parse_mount(&m.spec, &expand))
                    .collect::<Result<_, _>>()
                    .map_err(|message| ExpandError { message })?;
                // The i-th ssh mount without a target is `/run/buildkit/ssh_agent.i`, as
                // BuildKit's client numbers them (the parser gives each `.0`).
                let mut ssh_index = 0;
                for (m, written) in r2.mounts.iter_mut().zip(&r.mounts) {
                    if m.kind == MountType::Ssh {
                        let has_target = written.spec.split(',').any(|kv| {
                            let key = kv.split('=').next().unwrap_or("").trim();
                            matches!(key, "target" | "dst" | "destination")
                        });
                        if !has_target {
                            m.target = format!("/run/buildkit/ssh_agent.{ssh_index}");
                        }
                        ssh_index += 1;
                    }
                }
                Instruction::Run(r2)
            }
            other => other.clone(),
        };
        Ok(out)
    }
}

/// Expands variables in a heredoc body the way BuildKit does for COPY/ADD: `$VAR`, `${VAR}` and
/// the escape character, while quotes are kept as literal text.
fn expand_heredoc(
    content: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, ExpandError> {
    // Quotes are literal in a heredoc body: shield them by processing each quote-free run.
    let mut out = String::new();
    let mut run = String::new();
    let lexer = Lexer::new('\\');
    for c in content.chars() {
        if c == '\'' || c == '"' {
            out.push_str(&lexer.process_word(&run, lookup)?);
            run.clear();
            out.push(c);
        } else {
            run.push(c);
        }
    }
    out.push_str(&lexer.process_word(&run, lookup)?);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dockerfile::parse;

    fn args(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn global_args_in_from_only() {
        let df = parse(
            "ARG BASE=alpine\nARG TAG=3.19\nFROM ${BASE}:${TAG} AS one\nRUN echo\nFROM --platform=$BUILDPLATFORM one\nARG BASE\nARG TAG=x\nWORKDIR /$BASE/$TAG/$TARGETARCH\n",
        )
        .unwrap();
        let st = stages(&df, &args(&[("TAG", "3.20")])).unwrap();
        assert_eq!(st.stages[0].base, "alpine:3.20");
        assert_eq!(st.stages[1].base_stage, Some(0));
        assert_eq!(st.stages[1].platform.as_deref(), Some("linux/amd64"));
        let mut vars = st.vars(&[]);
        let mut last = None;
        for s in &st.stages[1].instructions {
            last = Some(vars.apply(&s.instruction).unwrap());
        }
        // BASE re-declared: global value; TAG: build arg beats the stage default; TARGETARCH
        // not declared in the stage: empty.
        assert_eq!(last, Some(Instruction::Workdir("/alpine/3.20/".into())));
    }

    #[test]
    fn the_later_of_env_and_arg_wins_and_run_env() {
        let df =
            parse("FROM a\nENV X=env\nARG X=arg\nARG Y\nUSER $X:$Y\nENV Z=z\nARG Z\n").unwrap();
        let st = stages(&df, &args(&[("Y", "why"), ("http_proxy", "http://p")])).unwrap();
        let mut vars = st.vars(&[("PATH".into(), "/bin".into())]);
        let mut out = Vec::new();
        for s in &st.stages[0].instructions {
            out.push(vars.apply(&s.instruction).unwrap());
        }
        // ARG after ENV: the ARG's value (BuildKit); an ARG without a value leaves ENV's.
        assert_eq!(out[3], Instruction::User("arg:why".into()));
        let env = vars.run_env();
        assert!(env.contains(&("X".into(), "arg".into())));
        assert!(!env.contains(&("X".into(), "env".into())));
        assert!(env.contains(&("Z".into(), "z".into())));
        assert!(env.contains(&("Y".into(), "why".into())));
        // A proxy given in one case is set in both.
        assert!(env.contains(&("HTTP_PROXY".into(), "http://p".into())));
        assert!(env.contains(&("http_proxy".into(), "http://p".into())));
        // ENV after ARG: ENV again.
        let df = parse("FROM a\nARG X=arg\nENV X=env\nUSER $X\n").unwrap();
        let st = stages(&df, &HashMap::new()).unwrap();
        let mut vars = st.vars(&[]);
        let mut last = None;
        for s in &st.stages[0].instructions {
            last = Some(vars.apply(&s.instruction).unwrap());
        }
        assert_eq!(last, Some(Instruction::User("env".into())));
        assert_eq!(
            vars.history_args(),
            vec![("X".to_string(), "env".to_string())]
        );
    }

    #[test]
    fn arg_env_and_redeclared_args() {
        let df = parse("FROM a\nARG A=1\nARG B=2\nENV B=env\nARG A\nARG C\nUSER $A\n").unwrap();
        let st = stages(&df, &HashMap::new()).unwrap();
        let mut vars = st.vars(&[]);
        let mut last = None;
        for s in &st.stages[0].instructions {
            last = Some(vars.apply(&s.instruction).unwrap());
        }
        // `ARG A` again keeps its value; B is shadowed by ENV; C has none.
        assert_eq!(last, Some(Instruction::User("1".into())));
        assert_eq!(vars.arg_env(), vec![("A".to_string(), "1".to_string())]);
    }

    #[test]
    fn history_args_list_every_arg_in_first_order() {
        // As Docker 28's BuildKit wrote `RUN |3 A=1 B=env C=` (docker-ref): a re-declared ARG
        // keeps its first place and its value, ENV wins, an ARG without a value is empty.
        let df = parse("FROM a\nARG A=1\nARG B=2\nENV B=env\nARG A\nARG C\n").unwrap();
        let st = stages(&df, &HashMap::new()).unwrap();
        let mut vars = st.vars(&[]);
        let mut done = Vec::new();
        for s in &st.stages[0].instructions {
            done.push(vars.apply(&s.instruction).unwrap());
        }
        let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            vars.history_args(),
            pairs(&[("A", "1"), ("B", "env"), ("C", "")])
        );
        // The re-declaration's own line has no value (its history is `ARG A`).
        assert_eq!(done[3], Instruction::Arg(vec![("A".into(), None)]));
    }

    #[test]
    fn targetstage_is_the_target_as_buildkit_sets_it() {
        // Docker 28's BuildKit: `--target final` gives "final" in every stage; no --target gives
        // the last stage's name, or "default" when it has none.
        let value = |st: &Stages| {
            st.context
                .platform_args()
                .into_iter()
                .find(|(k, _)| k == "TARGETSTAGE")
                .map(|(_, v)| v)
        };
        let df = parse("FROM a AS base\nFROM base AS final\n").unwrap();
        let st = stages_with(&df, BuildContext::new(HashMap::new())).unwrap();
        assert_eq!(value(&st).as_deref(), Some("final"));
        let df = parse("FROM a AS base\nFROM base\n").unwrap();
        let st = stages_with(&df, BuildContext::new(HashMap::new())).unwrap();
        assert_eq!(value(&st).as_deref(), Some("default"));
        let mut ctx = BuildContext::new(HashMap::new());
        ctx.target_stage = Some("base".into());
        let st = stages_with(&df, ctx).unwrap();
        assert_eq!(value(&st).as_deref(), Some("base"));
    }

    #[test]
    fn expand_global_sees_global_and_platform_args_only() {
        let df = parse("ARG SRC=base\nFROM a\nARG LOCAL=x\n").unwrap();
        let st = stages(&df, &args(&[("SRC", "cli")])).unwrap();
        assert_eq!(
            st.expand_global("$SRC-$TARGETOS-${LOCAL:-none}").unwrap(),
            "cli-linux-none"
        );
    }

    #[test]
    fn ssh_mounts_without_targets_are_numbered() {
        let df = parse(
            "FROM a\nRUN --mount=type=ssh --mount=type=ssh,id=b,target=/s \\\n    --mount=type=ssh,id=c true\n",
        )
        .unwrap();
        let st = stages(&df, &HashMap::new()).unwrap();
        let mut vars = st.vars(&[]);
        let Instruction::Run(r) = vars
            .apply(&st.stages[0].instructions[0].instruction)
            .unwrap()
        else {
            panic!("not a RUN")
        };
        let targets: Vec<&str> = r.mounts.iter().map(|m| m.target.as_str()).collect();
        assert_eq!(
            targets,
            [
                "/run/buildkit/ssh_agent.0",
                "/s",
                "/run/buildkit/ssh_agent.2"
            ]
        );
    }

    #[test]
    fn from_with_a_variable_is_refused_as_buildkit_does() {
        // The build graph is made before any ARG has a value: BuildKit refuses a variable in
        // `COPY --from` and `RUN --mount=from`, even a global ARG's, with these words.
        let copy = parse("ARG SRC=one\nFROM a AS one\nFROM a\nCOPY --from=$SRC /x /x\n").unwrap();
        let e = stages(&copy, &HashMap::new()).unwrap_err();
        assert_eq!(e.line, 4);
        assert!(
            e.message
                .contains("variable expansion is not supported for --from"),
            "{e:?}"
        );
        let run = parse("FROM a AS one\nFROM a\nRUN --mount=from=${S},target=/m true\n").unwrap();
        let e = stages(&run, &HashMap::new()).unwrap_err();
        assert_eq!(e.line, 3);
        assert!(
            e.message
                .contains("'from' doesn't support variable expansion"),
            "{e:?}"
        );
        let plain = parse("FROM a AS one\nFROM a\nCOPY --from=one /x /x\n").unwrap();
        assert!(stages(&plain, &HashMap::new()).is_ok());
    }

    #[test]
    fn run_text_is_not_expanded_but_mounts_are() {
        let df = parse("FROM a\nARG T=/cache\nRUN --mount=type=cache,target=$T echo $T\n").unwrap();
        let st = stages(&df, &HashMap::new()).unwrap();
        let mut vars = st.vars(&[]);
        vars.apply(&st.stages[0].instructions[0].instruction)
            .unwrap();
        let Instruction::Run(r) = vars
            .apply(&st.stages[0].instructions[1].instruction)
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(r.mounts[0].target, "/cache");
        assert_eq!(r.command, ShellOrExec::Shell("echo $T".into()));
    }

    #[test]
    fn stage_errors() {
        let df = parse("RUN x\nFROM a\n").unwrap();
        assert!(stages(&df, &HashMap::new())
            .unwrap_err()
            .message
            .contains("no build stage"));
        // Two stages of one name build (a lint warning); FROM the name means the later one.
        let df = parse("FROM a AS x\nFROM b AS X\nFROM x\n").unwrap();
        let st = stages(&df, &HashMap::new()).unwrap();
        assert_eq!(st.stages[2].base_stage, Some(1));
        let df = parse("ARG B\nFROM $B\n").unwrap();
        assert!(stages(&df, &HashMap::new())
            .unwrap_err()
            .message
            .contains("blank"));
    }

    #[test]
    fn copy_heredoc_expands_when_unquoted() {
        let df =
            parse("FROM a\nARG N=world\nCOPY <<EOF <<'RAW' /d/\nhi $N \"q\"\nEOF\nhi $N\nRAW\n")
                .unwrap();
        let st = stages(&df, &HashMap::new()).unwrap();
        let mut vars = st.vars(&[]);
        vars.apply(&st.stages[0].instructions[0].instruction)
            .unwrap();
        let Instruction::Copy(c) = vars
            .apply(&st.stages[0].instructions[1].instruction)
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(c.heredocs[0].content, "hi world \"q\"\n");
        assert_eq!(c.heredocs[1].content, "hi $N\n");
        assert_eq!(c.sources, vec!["<<EOF", "<<'RAW'"]);
    }
}
