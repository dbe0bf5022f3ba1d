//! `kiln check` and the checks of every `kiln build`: the lint rules of `docker build --check`
//! (BuildKit's `linter` package), with BuildKit's rule names, messages and documentation URLs.
//! Findings are warnings unless the options say `error=true`. The options come from a
//! `# check=skip=Rule1,Rule2;error=true;experimental=all` directive at the top of the file, the
//! `BUILDKIT_DOCKERFILE_CHECK` build argument (same syntax, merged over the directive), and a
//! `# check=skip=Rule` comment directly above one instruction (for that instruction only).

use std::collections::{HashMap, HashSet};

use super::ast::*;
use super::dockerignore::DockerIgnore;
use super::expand::Lexer;
use super::instructions::edit_distance;
use super::raw::RawDockerfile;
use super::stages::BuildContext;

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub rule: &'static str,
    pub line: usize,
    pub message: String,
}

/// Every rule `check` knows, for `skip=` validation and documentation.
pub const RULES: &[&str] = &[
    "ConsistentInstructionCasing",
    "CopyIgnoredFile",
    "DuplicateStageName",
    "ExposeInvalidFormat",
    "ExposeProtoCasing",
    "FromAsCasing",
    "FromPlatformFlagConstDisallowed",
    "InvalidBaseImagePlatform",
    "InvalidDefaultArgInFrom",
    "JSONArgsRecommended",
    "LegacyKeyValueFormat",
    "MaintainerDeprecated",
    "MultipleInstructionsDisallowed",
    "NoEmptyContinuation",
    "PlatformOnStageName",
    "RedundantTargetPlatform",
    "ReservedStageName",
    "SecretsUsedInArgOrEnv",
    "StageNameCasing",
    "UndefinedArgInFrom",
    "UndefinedVar",
    "WorkdirRelativePath",
];

/// Rules that run only when named by `experimental=` (or `experimental=all`), as in BuildKit.
/// kiln has none of BuildKit's experimental rules yet (InvalidDefinitionDescription).
pub const EXPERIMENTAL_RULES: &[&str] = &[];

/// The documentation page BuildKit gives for a rule: docs.docker.com's rule reference (none for
/// InvalidBaseImagePlatform, as BuildKit's).
pub fn rule_url(rule: &str) -> String {
    if rule == "InvalidBaseImagePlatform" {
        return String::new();
    }
    let mut kebab = String::new();
    let chars: Vec<char> = rule.chars().collect();
    for (i, c) in chars.iter().enumerate() {
        // A new word starts at an upper-case letter that follows a lower-case one, or that
        // ends an acronym ("JSONArgs" -> "json-args").
        let starts_word = c.is_ascii_uppercase()
            && i > 0
            && (chars[i - 1].is_ascii_lowercase()
                || chars.get(i + 1).is_some_and(|n| n.is_ascii_lowercase()));
        if starts_word {
            kebab.push('-');
        }
        kebab.push(c.to_ascii_lowercase());
    }
    format!("https://docs.docker.com/go/dockerfile/rule/{kebab}/")
}

/// The check options: `skip=A,B|all;error=true|false;experimental=A,B|all`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckOptions {
    pub skip: HashSet<String>,
    pub skip_all: bool,
    pub experimental: HashSet<String>,
    pub experimental_all: bool,
    /// `error=true`: a build with findings fails before it starts.
    pub error: bool,
}

impl CheckOptions {
    /// Parses BuildKit's option string; an unknown key or a bad `error=` value is an error that
    /// names it.
    pub fn parse(text: &str) -> Result<CheckOptions, String> {
        let mut out = CheckOptions::default();
        let text = text.trim();
        if text.is_empty() {
            return Ok(out);
        }
        for part in text.splitn(3, ';') {
            let Some((key, value)) = part.split_once('=') else {
                return Err(format!(
                    "invalid check option {part:?}: expected skip=RULES, error=BOOL or experimental=RULES"
                ));
            };
            let list = |v: &str| -> (bool, HashSet<String>) {
                let v = v.trim();
                if v == "all" {
                    (true, HashSet::new())
                } else {
                    (false, v.split(',').map(|r| r.trim().to_string()).collect())
                }
            };
            match key.trim() {
                "skip" => (out.skip_all, out.skip) = list(value),
                "experimental" => (out.experimental_all, out.experimental) = list(value),
                "error" => {
                    out.error = match value.trim().to_ascii_lowercase().as_str() {
                        "1" | "t" | "true" => true,
                        "0" | "f" | "false" => false,
                        other => {
                            return Err(format!(
                                "invalid check option \"error={other}\": expected true or false"
                            ))
                        }
                    }
                }
                other => {
                    return Err(format!(
                        "invalid check option {other:?}: expected skip, error or experimental"
                    ))
                }
            }
        }
        Ok(out)
    }

    /// These options with `other` merged over them (skips and experimental rules add up; `error`
    /// is set by either).
    pub fn merged(&self, other: &CheckOptions) -> CheckOptions {
        let mut out = self.clone();
        out.skip_all |= other.skip_all;
        out.skip.extend(other.skip.iter().cloned());
        out.experimental_all |= other.experimental_all;
        out.experimental.extend(other.experimental.iter().cloned());
        out.error |= other.error;
        out
    }

    fn allows(&self, rule: &str) -> bool {
        if self.skip_all || self.skip.contains(rule) {
            return false;
        }
        !EXPERIMENTAL_RULES.contains(&rule)
            || self.experimental_all
            || self.experimental.contains(rule)
    }
}

/// What the checks of a build found, and whether they fail it.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub findings: Vec<Finding>,
    /// `error=true` was asked for.
    pub error: bool,
    /// The options in force, and those of instructions with their own `# check=` comment (by
    /// start line), for findings the build makes later (`add`).
    options: CheckOptions,
    per_line: HashMap<usize, CheckOptions>,
}

impl Report {
    /// A finding only the build can make (`InvalidBaseImagePlatform`: it needs the base image),
    /// kept when the options allow its rule at its line; true when kept.
    pub fn add(&mut self, f: Finding) -> bool {
        let allowed = self
            .per_line
            .get(&f.line)
            .unwrap_or(&self.options)
            .allows(f.rule);
        if allowed && !self.findings.contains(&f) {
            self.findings.push(f);
        }
        allowed
    }
}

/// BuildKit's InvalidBaseImagePlatform message (its rule has no documentation URL).
pub fn invalid_base_image_platform(image: &str, expected: &str, actual: &str) -> String {
    format!(
        "Base image {image} was pulled with platform {actual:?}, expected {expected:?} for current build"
    )
}

/// Names a base image usually defines; without pulling the image kiln cannot know its ENV, so
/// references to these are not reported as undefined.
const USUAL_IMAGE_ENV: &[&str] = &["PATH"];

/// Runs every rule. `raw` is the line-level parse of the same text (it keeps the legacy
/// `ENV k v` form and the keyword casing); `ignore` is the context's .dockerignore when a context
/// was given.
pub fn check(df: &Dockerfile, raw: &RawDockerfile, ignore: Option<&DockerIgnore>) -> Vec<Finding> {
    check_with(df, raw, ignore, None)
        .map(|r| r.findings)
        .unwrap_or_default()
}

/// Runs every rule with the file's `# check=` directive, merged with `extra` (the
/// `BUILDKIT_DOCKERFILE_CHECK` build argument), and each instruction's own `# check=` comment.
/// Bad option text is an error.
pub fn check_with(
    df: &Dockerfile,
    raw: &RawDockerfile,
    ignore: Option<&DockerIgnore>,
    extra: Option<&str>,
) -> Result<Report, String> {
    let mut options = match df.directives.check.as_deref() {
        Some(d) => CheckOptions::parse(d).map_err(|e| format!("# check= directive: {e}"))?,
        None => CheckOptions::default(),
    };
    if let Some(extra) = extra {
        let e =
            CheckOptions::parse(extra).map_err(|e| format!("BUILDKIT_DOCKERFILE_CHECK: {e}"))?;
        options = options.merged(&e);
    }
    // Instructions with their own `# check=` comment: their start line -> merged options.
    let mut per_line: HashMap<usize, CheckOptions> = HashMap::new();
    for n in &raw.nodes {
        let comment = n.comments.iter().find_map(|c| {
            let (k, v) = c.split_once('=')?;
            (k.trim().eq_ignore_ascii_case("check")).then(|| v.split(' ').next().unwrap_or(""))
        });
        if let Some(text) = comment {
            if let Ok(o) = CheckOptions::parse(text) {
                per_line.insert(n.start_line, options.merged(&o));
            }
        }
    }
    let mut findings = all_findings(df, raw, ignore);
    findings.retain(|f| per_line.get(&f.line).unwrap_or(&options).allows(f.rule));
    Ok(Report {
        findings,
        error: options.error,
        options,
        per_line,
    })
}

/// The checks of a build: `source` parsed again (a text that does not parse has no findings
/// here; the build reports its parse error), with the `BUILDKIT_DOCKERFILE_CHECK` build argument.
pub fn for_build(
    source: &str,
    ignore: Option<&DockerIgnore>,
    extra: Option<&str>,
) -> Result<Report, String> {
    let Ok(raw) = super::raw::parse_raw(source) else {
        return Ok(Report::default());
    };
    let Ok(df) = super::instructions::typed(source, raw.clone()) else {
        return Ok(Report::default());
    };
    check_with(&df, &raw, ignore, extra)
}

/// The one-line form BuildKit prints after a build: `Rule: message (line N)`.
pub fn short_form(f: &Finding) -> String {
    format!("{}: {} (line {})", f.rule, f.message, f.line)
}

/// BuildKit's `--check` form of one finding: the rule and its URL, the message, and the lines of
/// `source` it is about.
pub fn long_form(f: &Finding, file: &str, source: &str) -> String {
    let lines: Vec<&str> = source.lines().collect();
    let url = rule_url(f.rule);
    let mut out = format!(
        "WARNING: {}{}\n{}\n{file}:{}\n--------------------\n",
        f.rule,
        if url.is_empty() {
            String::new()
        } else {
            format!(" - {url}")
        },
        f.message,
        f.line
    );
    let first = f.line.saturating_sub(2).max(1);
    let last = (f.line + 2).min(lines.len());
    for n in first..=last {
        let marker = if n == f.line { ">>>" } else { "   " };
        out.push_str(&format!(
            "{n:>4} | {marker} {}\n",
            lines.get(n - 1).copied().unwrap_or("")
        ));
    }
    out.push_str("--------------------\n");
    out
}

fn all_findings(
    df: &Dockerfile,
    raw: &RawDockerfile,
    ignore: Option<&DockerIgnore>,
) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut add = |rule: &'static str, line: usize, message: String| {
        out.push(Finding {
            rule,
            line,
            message,
        })
    };

    for w in &raw.warnings {
        add(
            "NoEmptyContinuation",
            w.line,
            "Empty continuation line".into(),
        );
    }

    // ConsistentInstructionCasing: compare with the majority.
    let (mut upper, mut lower) = (0, 0);
    for n in &raw.nodes {
        if n.keyword == n.keyword.to_uppercase() {
            upper += 1;
        } else if n.keyword == n.keyword.to_lowercase() {
            lower += 1;
        }
    }
    let majority_upper = upper >= lower;
    for n in &raw.nodes {
        let ok = if majority_upper {
            n.keyword == n.keyword.to_uppercase()
        } else {
            n.keyword == n.keyword.to_lowercase()
        };
        if !ok {
            add(
                "ConsistentInstructionCasing",
                n.start_line,
                format!(
                    "Command '{}' should match the case of the command majority ({})",
                    n.keyword,
                    if majority_upper {
                        "uppercase"
                    } else {
                        "lowercase"
                    }
                ),
            );
        }
        let kw = n.keyword.to_ascii_uppercase();
        if (kw == "ENV" || kw == "LABEL") && n.args.len() == 3 && n.args[2].is_empty() {
            add(
                "LegacyKeyValueFormat",
                n.start_line,
                format!(
                    "\"{kw} key=value\" should be used instead of legacy \"{kw} key value\" format"
                ),
            );
        }
        if kw == "FROM" && n.args.len() == 3 {
            let from_upper = n.keyword == n.keyword.to_uppercase();
            let as_kw = &n.args[1];
            let as_upper = as_kw == &as_kw.to_uppercase();
            let as_lower = as_kw == &as_kw.to_lowercase();
            if (from_upper && !as_upper) || (!from_upper && !as_lower) {
                add(
                    "FromAsCasing",
                    n.start_line,
                    format!(
                        "'{as_kw}' and '{}' keywords' casing do not match",
                        n.keyword
                    ),
                );
            }
            let name = &n.args[2];
            if name != &name.to_lowercase() {
                add(
                    "StageNameCasing",
                    n.start_line,
                    format!("Stage name '{name}' should be lowercase"),
                );
            }
        }
    }

    let escape = df.escape();
    let lexer = Lexer::new(escape);
    let platform_args: HashSet<String> = BuildContext::new(HashMap::new())
        .platform_args()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let mut global_args: HashSet<String> = HashSet::new();
    let mut global_defaults: HashMap<String, String> = HashMap::new();
    let mut stage_names: Vec<String> = Vec::new();
    // Defined names at the end of each named stage, for stages built on other stages.
    let mut stage_defined: HashMap<String, HashSet<String>> = HashMap::new();
    let mut defined: HashSet<String> = HashSet::new();
    let mut in_stage = false;
    let mut current_stage: Option<String> = None;
    let mut workdir_set = false;
    let mut counts: HashMap<&'static str, Vec<usize>> = HashMap::new();

    let flush_counts = |counts: &mut HashMap<&'static str, Vec<usize>>, out: &mut Vec<Finding>| {
        for (kw, lines) in counts.drain() {
            if lines.len() > 1 {
                for l in &lines[..lines.len() - 1] {
                    out.push(Finding {
                        rule: "MultipleInstructionsDisallowed",
                        line: *l,
                        message: format!(
                            "Multiple {kw} instructions should not be used in the same stage because only the last one will be used"
                        ),
                    });
                }
            }
        }
    };

    for step in &df.instructions {
        let line = step.span.start_line;
        let used = |word: &str| -> Vec<String> { referenced_vars(&lexer, word) };
        let check_defined =
            |words: Vec<&String>, defined: &HashSet<String>, out: &mut Vec<Finding>| {
                for w in words {
                    for v in used(w) {
                        if !defined.contains(&v) && !USUAL_IMAGE_ENV.contains(&v.as_str()) {
                            let hint = closest(&v, defined)
                                .map(|c| format!(" (did you mean ${c}?)"))
                                .unwrap_or_default();
                            out.push(Finding {
                                rule: "UndefinedVar",
                                line,
                                message: format!("Usage of undefined variable '${v}'{hint}"),
                            });
                        }
                    }
                }
            };
        match &step.instruction {
            Instruction::Arg(args) if !in_stage => {
                for (name, default) in args {
                    if let Some(d) = default {
                        for v in used(d) {
                            if !global_args.contains(&v) && !platform_args.contains(&v) {
                                out.push(Finding {
                                    rule: "UndefinedVar",
                                    line,
                                    message: format!("Usage of undefined variable '${v}'"),
                                });
                            }
                        }
                    }
                    secret_check(name, "ARG", line, &mut out);
                    global_args.insert(name.clone());
                    // The default as the build would see it with no --build-arg.
                    let value = default
                        .as_deref()
                        .map(|d| {
                            lexer
                                .process_word(d, &|k| global_defaults.get(k).cloned())
                                .unwrap_or_else(|_| d.to_string())
                        })
                        .unwrap_or_default();
                    global_defaults.insert(name.clone(), value);
                }
            }
            Instruction::From {
                image,
                platform,
                alias,
            } => {
                if let Some(prev) = current_stage.take() {
                    stage_defined.insert(prev, defined.clone());
                }
                flush_counts(&mut counts, &mut out);
                in_stage = true;
                workdir_set = false;
                for w in std::iter::once(image).chain(platform.iter()) {
                    for v in used(w) {
                        if !global_args.contains(&v) && !platform_args.contains(&v) {
                            out.push(Finding {
                                rule: "UndefinedArgInFrom",
                                line,
                                message: format!("FROM argument '{v}' is not declared"),
                            });
                        }
                    }
                }
                from_platform_checks(platform.as_deref(), alias.as_deref(), line, &mut out);
                // InvalidDefaultArgInFrom: with the global ARGs' defaults alone, the base must
                // still be an image name (a stage name is one too).
                if !used(image).is_empty() {
                    let resolved = lexer
                        .process_word(image, &|k| global_defaults.get(k).cloned())
                        .unwrap_or_default();
                    if crate::reference::Reference::parse(&resolved).is_err() {
                        out.push(Finding {
                            rule: "InvalidDefaultArgInFrom",
                            line,
                            message: format!(
                                "Default value for ARG {image} results in empty or invalid base image name"
                            ),
                        });
                    }
                }
                let base = image.to_lowercase();
                if let Some(p) = platform {
                    // BuildKit takes a stage's platform from the stage it names and ignores the
                    // flag there, without a word (kiln's own rule).
                    if stage_names.contains(&base) {
                        out.push(Finding {
                            rule: "PlatformOnStageName",
                            line,
                            message: format!(
                                "FROM --platform={p} {image}: the platform of stage '{base}' is \
                                 used, the flag is ignored; set --platform on that stage's FROM"
                            ),
                        });
                    }
                }
                defined = stage_defined.get(&base).cloned().unwrap_or_default();
                if let Some(name) = alias {
                    if stage_names.contains(name) {
                        out.push(Finding {
                            rule: "DuplicateStageName",
                            line,
                            message: format!(
                                "Duplicate stage name {name:?}, stage names should be unique"
                            ),
                        });
                    }
                    if name == "scratch" || name == "context" {
                        out.push(Finding {
                            rule: "ReservedStageName",
                            line,
                            message: format!(
                                "Stage name should not use the same name as reserved stage {name:?}"
                            ),
                        });
                    }
                    stage_names.push(name.clone());
                    current_stage = Some(name.clone());
                }
            }
            Instruction::Arg(args) => {
                for (name, default) in args {
                    if let Some(d) = default {
                        check_defined(vec![d], &defined, &mut out);
                    }
                    secret_check(name, "ARG", line, &mut out);
                    defined.insert(name.clone());
                }
            }
            Instruction::Env(pairs) => {
                for (k, v) in pairs {
                    check_defined(vec![v], &defined, &mut out);
                    secret_check(k, "ENV", line, &mut out);
                }
                for (k, _) in pairs {
                    defined.insert(k.clone());
                }
            }
            Instruction::Label(pairs) => check_defined(
                pairs.iter().flat_map(|(k, v)| [k, v]).collect(),
                &defined,
                &mut out,
            ),
            Instruction::Expose(w) => {
                check_defined(w.iter().collect(), &defined, &mut out);
                for word in w {
                    for port in word.split_whitespace() {
                        expose_checks(port, line, &mut out);
                    }
                }
            }
            Instruction::Volume(w) => check_defined(w.iter().collect(), &defined, &mut out),
            Instruction::User(w) | Instruction::StopSignal(w) => {
                check_defined(vec![w], &defined, &mut out)
            }
            Instruction::Workdir(w) => {
                check_defined(vec![w], &defined, &mut out);
                let expanded = lexer
                    .process_word(w, &|_| Some(String::new()))
                    .unwrap_or_else(|_| w.clone());
                if !workdir_set && !expanded.starts_with('/') && !w.starts_with('$') {
                    out.push(Finding {
                        rule: "WorkdirRelativePath",
                        line,
                        message: format!(
                            "Relative workdir {w:?} can have unexpected results if the base image changes"
                        ),
                    });
                }
                workdir_set = true;
            }
            Instruction::Copy(c) | Instruction::Add(c) => {
                let mut words: Vec<&String> = c.sources.iter().collect();
                words.push(&c.dest);
                words.extend(c.from.iter().chain(c.chown.iter()).chain(c.chmod.iter()));
                let words: Vec<&String> = words
                    .into_iter()
                    .filter(|w| super::raw::parse_heredoc_word(w).is_none())
                    .collect();
                check_defined(words, &defined, &mut out);
                if let (Some(ignore), None) = (ignore, &c.from) {
                    let kw = step.instruction.keyword();
                    for s in &c.sources {
                        let is_url = s.contains("://") || s.starts_with("git@");
                        if is_url || super::raw::parse_heredoc_word(s).is_some() {
                            continue;
                        }
                        let rel = s.trim_start_matches("./").trim_start_matches('/');
                        if !rel.contains(['*', '?', '[']) && ignore.is_excluded(rel) {
                            out.push(Finding {
                                rule: "CopyIgnoredFile",
                                line,
                                message: format!(
                                    "Attempting to {} file {s:?} that is excluded by .dockerignore",
                                    if kw == "ADD" { "Add" } else { "Copy" }
                                ),
                            });
                        }
                    }
                }
            }
            Instruction::Cmd(c) | Instruction::Entrypoint(c) => {
                let kw = step.instruction.keyword();
                counts.entry(kw).or_default().push(line);
                if matches!(c, ShellOrExec::Shell(_)) {
                    out.push(Finding {
                        rule: "JSONArgsRecommended",
                        line,
                        message: format!(
                            "JSON arguments recommended for {kw} to prevent unintended behavior related to OS signals"
                        ),
                    });
                }
            }
            Instruction::Healthcheck(_) => counts.entry("HEALTHCHECK").or_default().push(line),
            Instruction::Maintainer(_) => out.push(Finding {
                rule: "MaintainerDeprecated",
                line,
                message: "Maintainer instruction is deprecated in favor of using label".into(),
            }),
            _ => {}
        }
    }
    flush_counts(&mut counts, &mut out);
    out.sort_by_key(|f| f.line);
    out
}

/// RedundantTargetPlatform and FromPlatformFlagConstDisallowed, on a FROM's `--platform`.
fn from_platform_checks(
    platform: Option<&str>,
    alias: Option<&str>,
    line: usize,
    out: &mut Vec<Finding>,
) {
    let Some(p) = platform.map(str::trim) else {
        return;
    };
    if p == "$TARGETPLATFORM" || p == "${TARGETPLATFORM}" {
        out.push(Finding {
            rule: "RedundantTargetPlatform",
            line,
            message: format!(
                "Setting platform to predefined {p} in FROM is redundant as this is the default behavior"
            ),
        });
        return;
    }
    if p.contains('$') {
        return;
    }
    // A constant platform is fine where the stage's name says which one it is for
    // (`FROM --platform=linux/arm64 ... AS build-arm64`).
    let mut parts = p.split('/');
    let (os, arch) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if os.is_empty() || arch.is_empty() {
        return;
    }
    let stage = alias.unwrap_or("");
    if stage.contains(os) || stage.contains(arch) {
        return;
    }
    out.push(Finding {
        rule: "FromPlatformFlagConstDisallowed",
        line,
        message: format!("FROM --platform flag should not use constant value {p:?}"),
    });
}

/// ExposeProtoCasing and ExposeInvalidFormat, on one EXPOSE port (`[ip:][hostport:]port[/proto]`).
fn expose_checks(raw_port: &str, line: usize, out: &mut Vec<Finding>) {
    let (mapping, proto) = match raw_port.rsplit_once('/') {
        Some((m, p)) => (m, p),
        None => (raw_port, ""),
    };
    if proto != proto.to_lowercase() {
        out.push(Finding {
            rule: "ExposeProtoCasing",
            line,
            message: format!(
                "Defined protocol '{raw_port}' in EXPOSE instruction should be lowercase"
            ),
        });
    }
    if mapping.contains(':') {
        out.push(Finding {
            rule: "ExposeInvalidFormat",
            line,
            message: format!(
                "EXPOSE instruction should not define an IP address or host-port mapping, found '{raw_port}'"
            ),
        });
    }
}

/// BuildKit's heuristic for secret-looking names.
fn secret_check(name: &str, kw: &str, line: usize, out: &mut Vec<Finding>) {
    const SECRET: &[&str] = &[
        "apikey",
        "auth",
        "credential",
        "credentials",
        "key",
        "password",
        "pword",
        "passwd",
        "secret",
        "token",
    ];
    let lower = name.to_lowercase();
    let tokens: Vec<&str> = lower.split('_').collect();
    if tokens
        .iter()
        .any(|t| ["public", "file", "version"].contains(t))
    {
        return;
    }
    if tokens.iter().any(|t| SECRET.contains(t)) {
        out.push(Finding {
            rule: "SecretsUsedInArgOrEnv",
            line,
            message: format!(
                "Do not use ARG or ENV instructions for sensitive data ({kw} {name:?})"
            ),
        });
    }
}

/// The variables a word references without a fallback (`${X:-d}`, `${X+a}`, `${X?}` forms
/// handle an unset variable themselves and are not reported).
fn referenced_vars(lexer: &Lexer, word: &str) -> Vec<String> {
    let seen = std::cell::RefCell::new(Vec::<String>::new());
    let record = |k: &str| {
        seen.borrow_mut().push(k.to_string());
        None
    };
    let _ = lexer.process_word(word, &record);
    // A name with a modifier (`${X:-default}`, `${X:+alt}`) is looked up too: BuildKit reports
    // it as undefined all the same.
    let mut out: Vec<String> = seen
        .into_inner()
        .into_iter()
        .filter(|n| {
            n.chars()
                .next()
                .is_some_and(|c| c.is_alphabetic() || c == '_')
        })
        .collect();
    out.dedup();
    out
}

fn closest<'a>(name: &str, defined: &'a HashSet<String>) -> Option<&'a String> {
    defined
        .iter()
        .filter(|d| d.eq_ignore_ascii_case(name) || edit_distance(d, name) <= 2)
        .min_by_key(|d| edit_distance(d, name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dockerfile::{parse, raw::parse_raw};

    #[test]
    fn build_findings_follow_the_check_options_and_have_no_url() {
        let src = "FROM a\n# check=skip=InvalidBaseImagePlatform\nFROM b\n";
        let mut report = for_build(src, None, None).unwrap();
        let finding = |line| Finding {
            rule: "InvalidBaseImagePlatform",
            line,
            message: invalid_base_image_platform("a", "linux/amd64", "linux/arm64"),
        };
        assert!(report.add(finding(1)));
        assert!(
            report.add(finding(1)),
            "a second platform's graph finds it again"
        );
        assert!(!report.add(finding(3)), "skipped above that FROM");
        assert_eq!(report.findings, vec![finding(1)]);
        assert_eq!(
            short_form(&finding(1)),
            "InvalidBaseImagePlatform: Base image a was pulled with platform \"linux/arm64\", \
             expected \"linux/amd64\" for current build (line 1)"
        );
        assert!(long_form(&finding(1), "Dockerfile", src)
            .starts_with("WARNING: InvalidBaseImagePlatform\nBase image a was pulled"));
        let mut all = for_build("# check=skip=all\nFROM a\n", None, None).unwrap();
        assert!(!all.add(finding(2)));
    }

    fn undefined_var_messages(src: &str) -> Vec<String> {
        let raw = parse_raw(src).unwrap();
        let df = parse(src).unwrap();
        check(&df, &raw, None)
            .into_iter()
            .filter(|f| f.rule == "UndefinedVar")
            .map(|f| f.message)
            .collect()
    }

    #[test]
    fn platform_on_a_stage_name() {
        let src = "FROM --platform=$BUILDPLATFORM a AS b\nFROM --platform=linux/arm64 b\nFROM --platform=$TARGETPLATFORM a\n";
        let raw = parse_raw(src).unwrap();
        let df = parse(src).unwrap();
        let found: Vec<(&str, usize)> = check(&df, &raw, None)
            .iter()
            .map(|f| (f.rule, f.line))
            .collect();
        assert!(found.contains(&("PlatformOnStageName", 2)), "{found:?}");
        assert!(found.contains(&("RedundantTargetPlatform", 3)), "{found:?}");
        assert!(!found.iter().any(|(_, l)| *l == 1), "{found:?}");
    }

    /// A near miss (within two edits) or a different casing of a defined name is suggested.
    #[test]
    fn undefined_var_suggests_the_close_name() {
        let msgs = undefined_var_messages("FROM a\nENV APP_HOME=/app\nRUN true\nUSER $APP_HOM\n");
        assert_eq!(
            msgs,
            ["Usage of undefined variable '$APP_HOM' (did you mean $APP_HOME?)"]
        );
        let msgs = undefined_var_messages("FROM a\nENV APP_HOME=/app\nUSER $app_home\n");
        assert_eq!(
            msgs,
            ["Usage of undefined variable '$app_home' (did you mean $APP_HOME?)"]
        );
        let msgs = undefined_var_messages("FROM a\nENV APP_HOME=/app\nUSER $OTHER\n");
        assert_eq!(msgs, ["Usage of undefined variable '$OTHER'"]);
    }
}
