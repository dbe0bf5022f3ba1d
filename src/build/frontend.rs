//! The seam to the front end: turns the parsed Dockerfile (`crate::dockerfile`) into the build's
//! model (stages of instructions, words unexpanded), and provides the `.dockerignore` filter.

use anyhow::{anyhow, bail, Result};

use super::context::PathFilter;
use super::model::{
    self, CommandForm, DockerfileModel, HealthArgs, Heredoc, Instr, InstrKind, MountSpec, Stage,
};
use crate::dockerfile::{self, Instruction, ShellOrExec, Spanned};

/// `.dockerignore` as a context filter.
pub struct IgnoreFilter(pub dockerfile::DockerIgnore);

impl PathFilter for IgnoreFilter {
    fn is_excluded(&self, rel: &str) -> bool {
        self.0.is_excluded(rel)
    }
    fn can_prune_dir(&self, rel: &str) -> bool {
        self.0.can_prune_dir(rel)
    }
}

/// Parses Dockerfile text into the build model; errors name `file:line:column`.
pub fn parse_model(source: &str, file: &str) -> Result<(DockerfileModel, char)> {
    let df = dockerfile::parse(source).map_err(|e| anyhow!("{}", e.render(file)))?;
    let escape = df.escape();
    Ok((to_model(&df, file)?, escape))
}

pub fn to_model(df: &dockerfile::Dockerfile, file: &str) -> Result<DockerfileModel> {
    let mut model = DockerfileModel::default();
    for spanned in &df.instructions {
        let line = spanned.span.start_line;
        match &spanned.instruction {
            Instruction::From {
                image,
                platform,
                alias,
            } => model.stages.push(Stage {
                name: alias.clone(),
                base: image.clone(),
                platform: platform.clone(),
                line,
                instructions: Vec::new(),
            }),
            Instruction::Arg(args) if model.stages.is_empty() => {
                model.global_args.extend(args.iter().cloned())
            }
            _ => {
                let Some(stage) = model.stages.last_mut() else {
                    bail!(
                        "{file}:{line}: {} before the first FROM (only ARG may come before FROM)",
                        spanned.instruction.keyword()
                    );
                };
                stage.instructions.push(convert(spanned)?);
            }
        }
    }
    if model.stages.is_empty() {
        bail!("{file}: no FROM instruction (a Dockerfile starts with FROM, after optional ARGs)");
    }
    Ok(model)
}

fn form(c: &ShellOrExec) -> CommandForm {
    match c {
        ShellOrExec::Shell(s) => CommandForm::Shell(s.clone()),
        ShellOrExec::Exec(v) => CommandForm::Exec(v.clone()),
    }
}

fn heredocs(docs: &[dockerfile::Heredoc]) -> Vec<Heredoc> {
    docs.iter()
        .map(|d| Heredoc {
            name: d.name.clone(),
            content: d.content.clone(),
            expand: d.expand,
            chomp: d.chomp,
        })
        .collect()
}

/// A `--mount` value as written, split into its options (values expanded later by the solver).
fn mount_spec(spec: &str) -> MountSpec {
    let mut out = MountSpec::default();
    for part in spec.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        let k = k.trim().to_ascii_lowercase();
        if k == "type" {
            out.kind = v.to_ascii_lowercase();
        } else {
            out.options.push((k, v.to_string()));
        }
    }
    if out.kind.is_empty() {
        out.kind = "bind".into();
    }
    out
}

fn copy_args(c: &dockerfile::CopyArgs) -> model::CopyArgs {
    model::CopyArgs {
        sources: c.sources.clone(),
        dest: c.dest.clone(),
        from: c.from.clone(),
        chown: c.chown.clone(),
        chmod: c.chmod.clone(),
        link: c.link,
        parents: c.parents,
        excludes: c.exclude.clone(),
        heredocs: heredocs(&c.heredocs),
        checksum: c.checksum.clone(),
        keep_git_dir: c.keep_git_dir.unwrap_or(false),
        unpack: c.unpack,
    }
}

fn kind(instruction: &Instruction, original: &str) -> Result<InstrKind> {
    Ok(match instruction {
        Instruction::From { .. } => bail!("FROM inside a stage"),
        Instruction::Run(r) => InstrKind::Run {
            command: form(&r.command),
            heredocs: heredocs(&r.heredocs),
            mounts: r.mounts.iter().map(|m| mount_spec(&m.spec)).collect(),
            network: match r.network {
                dockerfile::Network::Default => None,
                dockerfile::Network::None => Some("none".into()),
                dockerfile::Network::Host => Some("host".into()),
            },
            security: match r.security {
                dockerfile::Security::Sandbox => None,
                dockerfile::Security::Insecure => Some("insecure".into()),
            },
        },
        Instruction::Cmd(c) => InstrKind::Cmd(form(c)),
        Instruction::Entrypoint(c) => InstrKind::Entrypoint(form(c)),
        Instruction::Shell(s) => InstrKind::Shell(s.clone()),
        Instruction::Copy(c) => InstrKind::Copy(copy_args(c)),
        Instruction::Add(c) => InstrKind::Add(copy_args(c)),
        Instruction::Env(e) => InstrKind::Env(e.clone()),
        Instruction::Arg(a) => InstrKind::Arg(a.clone()),
        Instruction::Label(l) => InstrKind::Label(l.clone()),
        Instruction::Expose(e) => InstrKind::Expose(e.clone()),
        Instruction::Volume(v) => InstrKind::Volume(v.clone()),
        Instruction::User(u) => InstrKind::User(u.clone()),
        Instruction::Workdir(w) => InstrKind::Workdir(w.clone()),
        Instruction::StopSignal(s) => InstrKind::StopSignal(s.clone()),
        Instruction::Maintainer(m) => InstrKind::Maintainer(m.clone()),
        Instruction::Onbuild { source, .. } => InstrKind::Onbuild(source.clone()),
        Instruction::Healthcheck(h) => InstrKind::Healthcheck(match h {
            dockerfile::Healthcheck::None => HealthArgs::default(),
            dockerfile::Healthcheck::Cmd {
                test,
                interval,
                timeout,
                start_period,
                start_interval,
                retries,
            } => {
                let d = |v: &Option<std::time::Duration>| v.map(|d| format!("{}ns", d.as_nanos()));
                HealthArgs {
                    command: Some(form(test)),
                    interval: d(interval),
                    timeout: d(timeout),
                    start_period: d(start_period),
                    start_interval: d(start_interval),
                    retries: retries.map(|r| r.to_string()),
                }
            }
        }),
    })
    .map_err(|e: anyhow::Error| anyhow!("{original}: {e}"))
}

fn convert(spanned: &Spanned) -> Result<Instr> {
    Ok(Instr {
        line: spanned.span.start_line,
        original: spanned.original.clone(),
        kind: kind(&spanned.instruction, &spanned.original)?,
    })
}

/// Parses an ONBUILD trigger of a base image (`RUN make`) into an instruction.
pub fn parse_trigger(trigger: &str) -> Result<Instr> {
    let df = dockerfile::parse(&format!("{trigger}\n"))
        .map_err(|e| anyhow!("{}", e.render("ONBUILD")))?;
    let first = df
        .instructions
        .first()
        .ok_or_else(|| anyhow!("empty ONBUILD trigger"))?;
    if matches!(
        first.instruction,
        Instruction::From { .. } | Instruction::Onbuild { .. }
    ) {
        bail!(
            "{} is not allowed as an ONBUILD trigger",
            first.instruction.keyword()
        );
    }
    convert(first)
}
