//! The second stage: gives each line-level [`Node`] its type, checking flags and argument counts
//! the way BuildKit's `instructions` package does.

use std::time::Duration;

use nom::{
    branch::alt,
    bytes::complete::{tag, take_while1},
    combinator::{all_consuming, opt, recognize},
    multi::many1,
    sequence::pair,
    IResult, Parser,
};

use super::ast::*;
use super::error::ParseError;
use super::raw::{Node, RawDockerfile};

/// Every keyword kiln knows, for "did you mean" suggestions.
pub const KEYWORDS: &[&str] = &[
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

/// An error in one instruction: the message, and the text on the first line to point at (a
/// flag) when there is one.
struct InstrError {
    message: String,
    at: Option<String>,
}

impl InstrError {
    fn new(message: impl Into<String>) -> Self {
        InstrError {
            message: message.into(),
            at: None,
        }
    }
    fn at(message: impl Into<String>, at: impl Into<String>) -> Self {
        InstrError {
            message: message.into(),
            at: Some(at.into()),
        }
    }
}

type IResultI<T> = Result<T, InstrError>;

/// Converts the line-level tree into typed instructions.
pub fn typed(source: &str, raw: RawDockerfile) -> Result<Dockerfile, ParseError> {
    let mut instructions = Vec::with_capacity(raw.nodes.len());
    for node in &raw.nodes {
        let instruction = instruction(node, false).map_err(|e| {
            let column =
                e.at.as_deref()
                    .and_then(|needle| {
                        let line = source.split('\n').nth(node.start_line.saturating_sub(1))?;
                        let i = line.find(needle)?;
                        Some(line[..i].chars().count() + 1)
                    })
                    .unwrap_or(node.column);
            ParseError::at(source, node.start_line, column, e.message)
        })?;
        instructions.push(Spanned {
            span: Span {
                start_line: node.start_line,
                end_line: node.end_line,
                column: node.column,
            },
            keyword: node.keyword.clone(),
            original: node.original.clone(),
            flags: node.flags.clone(),
            comments: node.comments.clone(),
            instruction,
        });
    }
    Ok(Dockerfile {
        directives: raw.directives,
        instructions,
        warnings: raw.warnings,
    })
}

/// Levenshtein distance in characters, for "did you mean" suggestions: keywords here, variable
/// names in `lint`.
pub(in crate::dockerfile) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The closest known keyword, if it is close enough to be a typo.
pub fn suggest_keyword(word: &str) -> Option<&'static str> {
    let upper = word.to_uppercase();
    KEYWORDS
        .iter()
        .map(|k| (edit_distance(&upper, k), *k))
        .filter(|(d, k)| *d <= 2 && *d < k.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn shell_or_exec(node: &Node) -> ShellOrExec {
    if node.json {
        ShellOrExec::Exec(node.args.clone())
    } else {
        ShellOrExec::Shell(node.args.first().cloned().unwrap_or_default())
    }
}

fn instruction(node: &Node, in_onbuild: bool) -> IResultI<Instruction> {
    let kw = node.keyword.to_ascii_uppercase();
    let args = &node.args;
    let no_flags = |allowed: &[(&str, FlagKind)]| parse_flags(&node.flags, allowed, &kw);
    let one = |what: &str| -> IResultI<String> {
        match args.as_slice() {
            [a] => Ok(a.clone()),
            [] => Err(InstrError::new(format!(
                "{kw} requires exactly one argument: {what}"
            ))),
            _ => Err(InstrError::new(format!(
                "{kw} requires exactly one argument: {what}"
            ))),
        }
    };
    Ok(match kw.as_str() {
        "FROM" => {
            let f = no_flags(&[("platform", FlagKind::Str)])?;
            let alias = match args.as_slice() {
                [_] => None,
                [_, as_kw, name] if as_kw.eq_ignore_ascii_case("as") => {
                    let name = name.to_lowercase();
                    if !valid_stage_name(&name) {
                        return Err(InstrError::new(format!(
                            "invalid name for build stage: {name:?}, name can't start with a number or contain symbols"
                        )));
                    }
                    Some(name)
                }
                _ => {
                    return Err(InstrError::new(
                        "FROM requires either one or three arguments: FROM [--platform=PLATFORM] IMAGE [AS NAME]",
                    ))
                }
            };
            Instruction::From {
                image: args[0].clone(),
                platform: f.string("platform"),
                alias,
            }
        }
        "RUN" => {
            let f = no_flags(&[
                ("mount", FlagKind::Multi),
                ("network", FlagKind::Str),
                ("security", FlagKind::Str),
            ])?;
            let mounts = f
                .multi("mount")
                .iter()
                .map(|spec| {
                    parse_mount(spec, &|_, s| Ok(s.to_string()))
                        .map_err(|m| InstrError::at(m, "--mount"))
                })
                .collect::<IResultI<Vec<_>>>()?;
            let network = match f.string("network").as_deref() {
                None | Some("default") => Network::Default,
                Some("none") => Network::None,
                Some("host") => Network::Host,
                Some(other) => {
                    return Err(InstrError::at(
                        format!("unsupported network mode {other:?}: use default, none or host"),
                        "--network",
                    ))
                }
            };
            let security = match f.string("security").as_deref() {
                None | Some("sandbox") => Security::Sandbox,
                Some("insecure") => Security::Insecure,
                Some(other) => {
                    return Err(InstrError::at(
                        format!("unsupported security mode {other:?}: use sandbox or insecure"),
                        "--security",
                    ))
                }
            };
            Instruction::Run(Run {
                command: shell_or_exec(node),
                mounts,
                network,
                security,
                heredocs: node.heredocs.clone(),
            })
        }
        "CMD" | "ENTRYPOINT" => {
            no_flags(&[])?;
            let c = shell_or_exec(node);
            if kw == "CMD" {
                Instruction::Cmd(c)
            } else {
                Instruction::Entrypoint(c)
            }
        }
        "SHELL" => {
            no_flags(&[])?;
            if !node.json {
                return Err(InstrError::new(
                    "SHELL requires the arguments to be in JSON form: SHELL [\"executable\", \"parameters\"]",
                ));
            }
            if args.is_empty() {
                return Err(InstrError::new("SHELL requires at least one argument"));
            }
            Instruction::Shell(args.clone())
        }
        "COPY" | "ADD" => {
            let is_add = kw == "ADD";
            let defs: &[(&str, FlagKind)] = if is_add {
                &[
                    ("chown", FlagKind::Str),
                    ("chmod", FlagKind::Str),
                    ("link", FlagKind::Bool),
                    ("checksum", FlagKind::Str),
                    ("keep-git-dir", FlagKind::Bool),
                    ("exclude", FlagKind::Multi),
                    ("unpack", FlagKind::Bool),
                ]
            } else {
                &[
                    ("from", FlagKind::Str),
                    ("chown", FlagKind::Str),
                    ("chmod", FlagKind::Str),
                    ("link", FlagKind::Bool),
                    ("parents", FlagKind::Bool),
                    ("exclude", FlagKind::Multi),
                ]
            };
            let f = no_flags(defs)?;
            if args.len() < 2 {
                return Err(InstrError::new(format!(
                    "{kw} requires at least two arguments, but only {} provided: {kw} SOURCE... DEST",
                    args.len()
                )));
            }
            let c = CopyArgs {
                sources: args[..args.len() - 1].to_vec(),
                dest: args[args.len() - 1].clone(),
                from: f.string("from"),
                chown: f.string("chown"),
                chmod: f.string("chmod"),
                link: f.boolean("link").unwrap_or(false),
                parents: f.boolean("parents").unwrap_or(false),
                exclude: f.multi("exclude"),
                checksum: f.string("checksum"),
                keep_git_dir: f.boolean("keep-git-dir"),
                unpack: f.boolean("unpack"),
                heredocs: node.heredocs.clone(),
                json: node.json,
            };
            if is_add {
                Instruction::Add(c)
            } else {
                Instruction::Copy(c)
            }
        }
        "ENV" | "LABEL" => {
            no_flags(&[])?;
            if args.is_empty() {
                return Err(InstrError::new(format!(
                    "{kw} requires at least one argument: {kw} key=value ..."
                )));
            }
            let pairs: Vec<(String, String)> = args
                .chunks(3)
                .map(|c| (c[0].clone(), c.get(1).cloned().unwrap_or_default()))
                .collect();
            if let Some((k, _)) = pairs.iter().find(|(k, _)| k.is_empty()) {
                return Err(InstrError::new(format!(
                    "{kw} names can not be blank (got {k:?})"
                )));
            }
            if kw == "ENV" {
                Instruction::Env(pairs)
            } else {
                Instruction::Label(pairs)
            }
        }
        "ARG" => {
            no_flags(&[])?;
            if args.is_empty() {
                return Err(InstrError::new(
                    "ARG requires at least one argument: ARG NAME[=DEFAULT]",
                ));
            }
            let mut out = Vec::new();
            for a in args {
                let (name, default) = match a.split_once('=') {
                    Some((n, d)) => (n.to_string(), Some(d.to_string())),
                    None => (a.clone(), None),
                };
                if name.is_empty() {
                    return Err(InstrError::new(format!(
                        "ARG names can not be blank (got {a:?})"
                    )));
                }
                out.push((name, default));
            }
            Instruction::Arg(out)
        }
        "EXPOSE" => {
            no_flags(&[])?;
            if args.is_empty() {
                return Err(InstrError::new(
                    "EXPOSE requires at least one argument: EXPOSE PORT[/PROTO]...",
                ));
            }
            Instruction::Expose(args.clone())
        }
        "VOLUME" => {
            no_flags(&[])?;
            if args.is_empty() {
                return Err(InstrError::new("VOLUME requires at least one argument"));
            }
            if args.iter().any(|a| a.trim().is_empty()) {
                return Err(InstrError::new(
                    "VOLUME specified can not be an empty string",
                ));
            }
            Instruction::Volume(args.clone())
        }
        "USER" => {
            no_flags(&[])?;
            Instruction::User(one("USER NAME[:GROUP]")?)
        }
        "WORKDIR" => {
            no_flags(&[])?;
            Instruction::Workdir(one("WORKDIR PATH")?)
        }
        "STOPSIGNAL" => {
            no_flags(&[])?;
            Instruction::StopSignal(one("STOPSIGNAL SIGNAL")?)
        }
        "MAINTAINER" => {
            no_flags(&[])?;
            Instruction::Maintainer(one("MAINTAINER NAME")?)
        }
        "HEALTHCHECK" => healthcheck(node, &kw)?,
        "ONBUILD" => {
            no_flags(&[])?;
            if in_onbuild {
                return Err(InstrError::new(
                    "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed",
                ));
            }
            let Some(sub) = &node.sub else {
                return Err(InstrError::new(
                    "ONBUILD requires at least one argument: ONBUILD INSTRUCTION",
                ));
            };
            let sub_kw = sub.keyword.to_ascii_uppercase();
            match sub_kw.as_str() {
                "ONBUILD" => {
                    return Err(InstrError::new(
                        "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed",
                    ))
                }
                "FROM" | "MAINTAINER" => {
                    return Err(InstrError::new(format!(
                        "{sub_kw} isn't allowed as an ONBUILD trigger"
                    )))
                }
                _ => {}
            }
            let inner = instruction(sub, true)?;
            let mut source = node
                .original
                .trim_start()
                .get(node.keyword.len()..)
                .unwrap_or("")
                .trim()
                .to_string();
            // The trigger keeps its here-documents, so the image that runs it has their bodies
            // (BuildKit records `COPY <<EOF /f\nbody\nEOF`).
            let docs = if node.heredocs.is_empty() {
                &sub.heredocs
            } else {
                &node.heredocs
            };
            for doc in docs {
                source.push('\n');
                source.push_str(&doc.content);
                if !doc.content.is_empty() && !doc.content.ends_with('\n') {
                    source.push('\n');
                }
                source.push_str(&doc.name);
            }
            Instruction::Onbuild {
                instruction: Box::new(inner),
                source,
            }
        }
        _ => {
            let hint = suggest_keyword(&node.keyword)
                .map(|k| format!(" (did you mean {k}?)"))
                .unwrap_or_default();
            return Err(InstrError::new(format!(
                "unknown instruction {:?}{hint}",
                node.keyword
            )));
        }
    })
}

fn valid_stage_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
}

fn healthcheck(node: &Node, kw: &str) -> IResultI<Instruction> {
    let args = &node.args;
    let Some(typ) = args.first() else {
        return Err(InstrError::new(
            "HEALTHCHECK requires an argument: HEALTHCHECK [OPTIONS] CMD command, or HEALTHCHECK NONE",
        ));
    };
    match typ.to_ascii_uppercase().as_str() {
        "NONE" => {
            if args.len() > 1 {
                return Err(InstrError::new("HEALTHCHECK NONE takes no arguments"));
            }
            parse_flags(&node.flags, &[], kw)?;
            Ok(Instruction::Healthcheck(Healthcheck::None))
        }
        "CMD" => {
            let f = parse_flags(
                &node.flags,
                &[
                    ("interval", FlagKind::Str),
                    ("timeout", FlagKind::Str),
                    ("start-period", FlagKind::Str),
                    ("start-interval", FlagKind::Str),
                    ("retries", FlagKind::Str),
                ],
                kw,
            )?;
            if args.len() < 2 || (!node.json && args[1].trim().is_empty()) {
                return Err(InstrError::new("Missing command after HEALTHCHECK CMD"));
            }
            let test = if node.json {
                ShellOrExec::Exec(args[1..].to_vec())
            } else {
                ShellOrExec::Shell(args[1].clone())
            };
            let dur = |name: &str| -> IResultI<Option<Duration>> {
                let Some(v) = f.string(name) else {
                    return Ok(None);
                };
                let d = parse_go_duration(&v).ok_or_else(|| {
                    InstrError::at(
                        format!("invalid duration {v:?} for --{name}: use e.g. 30s, 1m30s"),
                        format!("--{name}"),
                    )
                })?;
                if !d.is_zero() && d < Duration::from_millis(1) {
                    return Err(InstrError::at(
                        format!("--{name} cannot be less than 1ms"),
                        format!("--{name}"),
                    ));
                }
                Ok(Some(d))
            };
            let retries = match f.string("retries") {
                None => None,
                Some(v) => Some(v.parse::<u32>().map_err(|_| {
                    InstrError::at(
                        format!("invalid --retries value {v:?}: expected a number of at least 0"),
                        "--retries",
                    )
                })?),
            };
            Ok(Instruction::Healthcheck(Healthcheck::Cmd {
                test,
                interval: dur("interval")?,
                timeout: dur("timeout")?,
                start_period: dur("start-period")?,
                start_interval: dur("start-interval")?,
                retries,
            }))
        }
        other => Err(InstrError::new(format!(
            "Unknown type {other:?} in HEALTHCHECK (try CMD or NONE)"
        ))),
    }
}

/// Go's `time.ParseDuration` (`1h2m3.5s`, `300ms`, `0`).
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    if s == "0" {
        return Some(Duration::ZERO);
    }
    fn number(i: &str) -> IResult<&str, &str> {
        recognize(pair(
            take_while1(|c: char| c.is_ascii_digit() || c == '.'),
            opt(tag("")),
        ))
        .parse(i)
    }
    fn unit(i: &str) -> IResult<&str, &str> {
        alt((
            tag("ns"),
            tag("us"),
            tag("µs"),
            tag("μs"),
            tag("ms"),
            tag("s"),
            tag("m"),
            tag("h"),
        ))
        .parse(i)
    }
    let (_, parts) = all_consuming(many1(pair(number, unit))).parse(s).ok()?;
    let mut total = 0f64;
    for (n, u) in parts {
        let n: f64 = n.parse().ok()?;
        let scale = match u {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            _ => 3600.0,
        };
        total += n * scale;
    }
    if !total.is_finite() || total > 1e12 {
        return None;
    }
    Some(Duration::from_secs_f64(total))
}

#[derive(Clone, Copy, PartialEq)]
enum FlagKind {
    Bool,
    Str,
    Multi,
}

struct Flags {
    values: Vec<(String, Option<String>)>,
}

impl Flags {
    fn string(&self, name: &str) -> Option<String> {
        self.values
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.clone())
    }
    fn multi(&self, name: &str) -> Vec<String> {
        self.values
            .iter()
            .filter(|(n, _)| n == name)
            .filter_map(|(_, v)| v.clone())
            .collect()
    }
    fn boolean(&self, name: &str) -> Option<bool> {
        self.values
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_deref() != Some("false"))
    }
}

/// BuildKit's `BFlags`: `--name`, `--name=value`; unknown and repeated flags are errors.
fn parse_flags(raw: &[String], defs: &[(&str, FlagKind)], kw: &str) -> IResultI<Flags> {
    let mut values: Vec<(String, Option<String>)> = Vec::new();
    for f in raw {
        let Some(body) = f.strip_prefix("--") else {
            return Err(InstrError::at(
                format!("{kw} flag {f:?} should start with --"),
                f.as_str(),
            ));
        };
        let (name, value) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (body, None),
        };
        let at = format!("--{name}");
        let Some((_, kind)) = defs.iter().find(|(n, _)| *n == name) else {
            let known: Vec<String> = defs.iter().map(|(n, _)| format!("--{n}")).collect();
            let hint = if known.is_empty() {
                format!("{kw} takes no flags")
            } else {
                format!("{kw} takes {}", known.join(", "))
            };
            return Err(InstrError::at(format!("unknown flag {at} ({hint})"), at));
        };
        if *kind != FlagKind::Multi && values.iter().any(|(n, _)| n == name) {
            return Err(InstrError::at(
                format!("duplicate flag specified: {at}"),
                at,
            ));
        }
        let value = match kind {
            FlagKind::Bool => match value.as_deref().map(str::to_ascii_lowercase).as_deref() {
                None | Some("true") => Some("true".to_string()),
                Some("false") => Some("false".to_string()),
                Some(v) => {
                    return Err(InstrError::at(
                        format!("expecting boolean value for flag {at}, not: {v}"),
                        at,
                    ))
                }
            },
            _ => match value {
                Some(v) => Some(v),
                None => {
                    return Err(InstrError::at(
                        format!("missing a value on flag {at}: use {at}=VALUE"),
                        at,
                    ))
                }
            },
        };
        values.push((name.to_string(), value));
    }
    Ok(Flags { values })
}

/// Splits a `--mount` value into fields the way Go's encoding/csv reads one record.
fn csv_fields(s: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars().peekable();
    let mut at_start = true;
    while let Some(c) = chars.next() {
        if at_start && c == '"' {
            // Quoted field: "" is a literal quote.
            loop {
                match chars.next() {
                    None => return Err(format!("unterminated quote in mount {s:?}")),
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        cur.push('"');
                    }
                    Some('"') => break,
                    Some(c) => cur.push(c),
                }
            }
            at_start = false;
            continue;
        }
        if c == ',' {
            fields.push(std::mem::take(&mut cur));
            at_start = true;
            continue;
        }
        at_start = false;
        cur.push(c);
    }
    fields.push(cur);
    Ok(fields)
}

/// Go's `units.RAMInBytes`: `64m`, `1g`, `512kb`, plain bytes.
fn parse_size(s: &str) -> Option<u64> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().ok()?;
    let unit = unit.trim().to_ascii_lowercase();
    let unit = unit.strip_suffix('b').unwrap_or(&unit).to_string();
    let unit = unit.strip_suffix('i').unwrap_or(&unit);
    let mult: f64 = match unit {
        "" => 1.0,
        "k" => 1024.0,
        "m" => 1024f64.powi(2),
        "g" => 1024f64.powi(3),
        "t" => 1024f64.powi(4),
        "p" => 1024f64.powi(5),
        _ => return None,
    };
    let v = n * mult;
    (0.0..1.8e19).contains(&v).then_some(v as u64)
}

fn parse_bool_value(key: &str, v: Option<&str>) -> Result<bool, String> {
    match v.map(str::to_ascii_lowercase).as_deref() {
        None | Some("true") | Some("1") => Ok(true),
        Some("false") | Some("0") => Ok(false),
        Some(other) => Err(format!(
            "invalid value for {key}: {other:?} (use true or false)"
        )),
    }
}

/// Parses one `RUN --mount=` value, expanding each field's value with `expand` (BuildKit
/// expands mount values with the build args and environment).
/// Parses one `--mount` value; `expand(key, value)` expands each option's value (the key says
/// which scope applies: `from` names a stage in the global scope).
pub fn parse_mount(
    spec: &str,
    expand: &dyn Fn(&str, &str) -> Result<String, String>,
) -> Result<Mount, String> {
    let mut m = Mount {
        kind: MountType::Bind,
        target: String::new(),
        source: None,
        from: None,
        read_only: true,
        id: None,
        sharing: Sharing::Shared,
        required: false,
        mode: None,
        uid: None,
        gid: None,
        size: None,
        env: None,
        spec: spec.to_string(),
    };
    let mut read_only: Option<bool> = None;
    for field in csv_fields(spec)? {
        if field.is_empty() {
            continue;
        }
        let (key, value) = match field.split_once('=') {
            Some((k, v)) => {
                let key = k.trim().to_ascii_lowercase();
                let value = expand(&key, v)?;
                (key, Some(value))
            }
            None => (field.trim().to_ascii_lowercase(), None),
        };
        let need = |v: &Option<String>| -> Result<String, String> {
            v.clone()
                .ok_or_else(|| format!("mount option {key:?} needs a value: {key}=VALUE"))
        };
        // A value still holding a variable (`type=$MNT_TYPE` when the text is parsed, before
        // ARG and ENV are known) is checked when the step expands it and parses it again.
        let unexpanded = value.as_deref().is_some_and(|v| v.contains('$'));
        if unexpanded
            && matches!(
                key.as_str(),
                "type"
                    | "sharing"
                    | "mode"
                    | "uid"
                    | "gid"
                    | "size"
                    | "readonly"
                    | "ro"
                    | "readwrite"
                    | "rw"
                    | "required"
            )
        {
            continue;
        }
        match key.as_str() {
            "type" => {
                m.kind = match need(&value)?.as_str() {
                    "bind" => MountType::Bind,
                    "cache" => MountType::Cache,
                    "tmpfs" => MountType::Tmpfs,
                    "secret" => MountType::Secret,
                    "ssh" => MountType::Ssh,
                    other => {
                        return Err(format!(
                        "unsupported mount type {other:?}: use bind, cache, tmpfs, secret or ssh"
                    ))
                    }
                }
            }
            "source" | "src" => m.source = Some(need(&value)?),
            "target" | "dst" | "destination" => m.target = need(&value)?,
            "from" => m.from = Some(need(&value)?),
            "id" => m.id = Some(need(&value)?),
            "env" => m.env = Some(need(&value)?),
            "readonly" | "ro" => read_only = Some(parse_bool_value(&key, value.as_deref())?),
            "readwrite" | "rw" => read_only = Some(!parse_bool_value(&key, value.as_deref())?),
            "required" => m.required = parse_bool_value(&key, value.as_deref())?,
            "sharing" => {
                m.sharing = match need(&value)?.as_str() {
                    "shared" => Sharing::Shared,
                    "private" => Sharing::Private,
                    "locked" => Sharing::Locked,
                    other => {
                        return Err(format!(
                            "unsupported sharing value {other:?}: use shared, private or locked"
                        ))
                    }
                }
            }
            "mode" => {
                let v = need(&value)?;
                m.mode = Some(u32::from_str_radix(&v, 8).map_err(|_| {
                    format!("invalid mode {v:?}: expected an octal number such as 0755")
                })?);
            }
            "uid" | "gid" => {
                let v = need(&value)?;
                let n = v
                    .parse::<u32>()
                    .map_err(|_| format!("invalid {key} {v:?}: expected a number"))?;
                if key == "uid" {
                    m.uid = Some(n)
                } else {
                    m.gid = Some(n)
                }
            }
            "size" => {
                let v = need(&value)?;
                m.size = Some(
                    parse_size(&v).ok_or_else(|| format!("invalid size {v:?}: use e.g. 64m"))?,
                );
            }
            _ => return Err(format!("unexpected key {key:?} in mount {spec:?}")),
        }
    }
    match m.kind {
        MountType::Bind => m.read_only = read_only.unwrap_or(true),
        MountType::Cache => {
            m.read_only = read_only.unwrap_or(false);
            if m.id.is_none() {
                m.id = Some(m.target.clone());
            }
            m.mode.get_or_insert(0o755);
        }
        MountType::Tmpfs => m.read_only = read_only.unwrap_or(false),
        MountType::Secret => {
            m.read_only = true;
            if m.id.is_none() {
                if m.target.is_empty() && m.env.is_none() {
                    return Err("secret mount needs id= or target=".into());
                }
                let base = m.target.rsplit('/').next().unwrap_or("").to_string();
                m.id = Some(if base.is_empty() {
                    m.env.clone().unwrap_or_default()
                } else {
                    base
                });
            }
            if m.target.is_empty() && m.env.is_none() {
                m.target = format!("/run/secrets/{}", m.id.as_deref().unwrap_or(""));
            }
            m.mode.get_or_insert(0o400);
        }
        MountType::Ssh => {
            m.read_only = true;
            m.id.get_or_insert_with(|| "default".into());
            if m.target.is_empty() {
                m.target = "/run/buildkit/ssh_agent.0".into();
            }
            m.mode.get_or_insert(0o600);
        }
    }
    if m.target.is_empty()
        && matches!(
            m.kind,
            MountType::Bind | MountType::Cache | MountType::Tmpfs
        )
    {
        return Err(format!("mount {spec:?} needs a target: add target=PATH"));
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_go_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_go_duration("5"), None);
        assert_eq!(parse_go_duration("s"), None);
    }

    #[test]
    fn mounts_get_buildkit_defaults() {
        let id = |_: &str, s: &str| Ok(s.to_string());
        let m = parse_mount("type=cache,target=/root/.cache", &id).unwrap();
        assert_eq!(
            (m.read_only, m.id.as_deref(), m.mode),
            (false, Some("/root/.cache"), Some(0o755))
        );
        let m = parse_mount("type=secret,id=aws", &id).unwrap();
        assert_eq!(m.target, "/run/secrets/aws");
        let m = parse_mount("target=/src,rw", &id).unwrap();
        assert_eq!((m.kind, m.read_only), (MountType::Bind, false));
        assert!(parse_mount("type=bind", &id).is_err());
        assert!(parse_mount("type=nope,target=/x", &id).is_err());
        assert!(parse_mount("target=/x,bogus=1", &id).is_err());
        assert_eq!(
            parse_mount("type=tmpfs,target=/t,size=64m", &id)
                .unwrap()
                .size,
            Some(64 << 20)
        );
    }

    #[test]
    fn edit_distance_counts_characters() {
        assert_eq!(edit_distance("", ""), 0);
        assert_eq!(edit_distance("abc", ""), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("naïve", "naive"), 1);
        assert_eq!(edit_distance("cpoy", "COPY"), 4);
    }

    #[test]
    fn suggestions() {
        assert_eq!(suggest_keyword("RUNN"), Some("RUN"));
        assert_eq!(suggest_keyword("cpoy"), Some("COPY"));
        assert_eq!(suggest_keyword("XYZZYPLUGH"), None);
    }
}
