//! `kiln check`: the lint rules of `docker build --check` (BuildKit's `linter` package), each
//! with BuildKit's rule name. Findings are reported, not fatal; a `# check=skip=Rule1,Rule2`
//! (or `skip=all`) directive turns rules off.

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
    "FromAsCasing",
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

/// Names a base image usually defines; without pulling the image kiln cannot know its ENV, so
/// references to these are not reported as undefined.
const USUAL_IMAGE_ENV: &[&str] = &["PATH"];

/// Runs every rule. `raw` is the line-level parse of the same text (it keeps the legacy
/// `ENV k v` form and the keyword casing); `ignore` is the context's .dockerignore when a context
/// was given.
pub fn check(df: &Dockerfile, raw: &RawDockerfile, ignore: Option<&DockerIgnore>) -> Vec<Finding> {
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
            "Empty continuation line: remove blank lines inside a continued instruction".into(),
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
                                message: format!(
                                    "FROM argument '{v}' is not declared: add ARG {v} before the first FROM"
                                ),
                            });
                        }
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
                    } else if p == "$TARGETPLATFORM" || p == "${TARGETPLATFORM}" {
                        out.push(Finding {
                            rule: "RedundantTargetPlatform",
                            line,
                            message: format!(
                                "Setting platform to predefined {p} in FROM is redundant as this is the default behavior"
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
                                "Duplicate stage name '{name}', stage names should be unique"
                            ),
                        });
                    }
                    if name == "scratch" || name == "context" {
                        out.push(Finding {
                            rule: "ReservedStageName",
                            line,
                            message: format!(
                                "Stage name should not use the same name as reserved stage '{name}'"
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
            Instruction::Label(pairs) => {
                check_defined(pairs.iter().flat_map(|(k, v)| [k, v]).collect(), &defined, &mut out)
            }
            Instruction::Expose(w) | Instruction::Volume(w) => {
                check_defined(w.iter().collect(), &defined, &mut out)
            }
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
                            "Relative workdir '{w}' can have unexpected results if the base image changes: use an absolute path"
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
                                    "Attempting to {} file \"{s}\" that is excluded by .dockerignore",
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
                message: "The MAINTAINER instruction is deprecated, use a label instead to define an image author".into(),
            }),
            _ => {}
        }
    }
    flush_counts(&mut counts, &mut out);

    let skip = skipped_rules(df.directives.check.as_deref());
    out.retain(|f| !skip.contains("all") && !skip.contains(f.rule));
    out.sort_by_key(|f| f.line);
    out
}

/// Parses `skip=A,B` out of a `# check=` directive (`;`-separated options).
fn skipped_rules(directive: Option<&str>) -> HashSet<&str> {
    let mut out = HashSet::new();
    if let Some(d) = directive {
        for opt in d.split(';') {
            if let Some(list) = opt.trim().strip_prefix("skip=") {
                out.extend(list.split(',').map(str::trim));
            }
        }
    }
    out
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
    if tokens.contains(&"public") {
        return;
    }
    if tokens.iter().any(|t| SECRET.contains(t)) {
        out.push(Finding {
            rule: "SecretsUsedInArgOrEnv",
            line,
            message: format!(
                "Do not use ARG or ENV instructions for sensitive data ({kw} \"{name}\"): use RUN --mount=type=secret"
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
    let with_modifier = guarded_names(word);
    let mut out: Vec<String> = seen
        .into_inner()
        .into_iter()
        .filter(|n| !with_modifier.contains(n))
        .filter(|n| {
            n.chars()
                .next()
                .is_some_and(|c| c.is_alphabetic() || c == '_')
        })
        .collect();
    out.dedup();
    out
}

fn guarded_names(word: &str) -> HashSet<String> {
    let mut out = HashSet::new();
    let mut rest = word;
    while let Some(i) = rest.find("${") {
        rest = &rest[i + 2..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if rest[name.len()..].starts_with([':', '-', '+', '?']) {
            out.insert(name);
        }
    }
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
    fn platform_on_a_stage_name_and_redundant_target_platform() {
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
