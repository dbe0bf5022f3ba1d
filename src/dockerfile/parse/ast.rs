//! The typed syntax tree: one [`Instruction`] per Dockerfile instruction, each with its span and
//! the text it came from. Values are kept as written (quotes, `$VAR`); the `stages` module
//! expands them the way BuildKit does for the instructions that expand variables.

use std::time::Duration;

use serde::Serialize;

pub use super::raw::{Directives, Heredoc, Warning};

/// Where an instruction is: 1-based first and last physical line (continuations and heredoc
/// bodies included) and the column of its keyword on the first line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Span {
    pub start_line: usize,
    pub end_line: usize,
    pub column: usize,
}

/// A parsed Dockerfile.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Dockerfile {
    pub directives: Directives,
    pub instructions: Vec<Spanned>,
    /// Non-fatal findings of the parser (empty continuation lines).
    pub warnings: Vec<Warning>,
}

impl Dockerfile {
    /// The escape character (`\` unless `# escape=` said otherwise).
    pub fn escape(&self) -> char {
        self.directives.escape
    }
}

/// An instruction with its location and source.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Spanned {
    pub span: Span,
    /// The keyword as written (`run`, `RUN`...), for casing checks and messages.
    pub keyword: String,
    /// The logical line (continuations joined, heredoc bodies not included): what BuildKit
    /// records as the instruction's text, e.g. for history `created_by`.
    pub original: String,
    /// The builder flags as written after quote processing (`--from=build`).
    pub flags: Vec<String>,
    /// The comment lines directly above.
    pub comments: Vec<String>,
    pub instruction: Instruction,
}

/// Shell form (one string handed to the SHELL) or exec form (a JSON array of strings).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "form", content = "value", rename_all = "lowercase")]
pub enum ShellOrExec {
    Shell(String),
    Exec(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", content = "args", rename_all = "lowercase")]
pub enum Instruction {
    From {
        image: String,
        platform: Option<String>,
        /// The stage name (`AS name`), lower-cased as BuildKit does.
        alias: Option<String>,
    },
    Run(Run),
    Cmd(ShellOrExec),
    Entrypoint(ShellOrExec),
    Shell(Vec<String>),
    Copy(CopyArgs),
    Add(CopyArgs),
    /// `(key, value)` pairs, values as written (expand them).
    Env(Vec<(String, String)>),
    /// `(name, default)` pairs, defaults as written (expand them).
    Arg(Vec<(String, Option<String>)>),
    Label(Vec<(String, String)>),
    Expose(Vec<String>),
    Volume(Vec<String>),
    User(String),
    Workdir(String),
    StopSignal(String),
    Healthcheck(Healthcheck),
    Onbuild {
        instruction: Box<Instruction>,
        /// The trigger as written after `ONBUILD`, what the image config records.
        source: String,
    },
    Maintainer(String),
}

impl Instruction {
    /// The upper-case keyword (`RUN`).
    pub fn keyword(&self) -> &'static str {
        match self {
            Instruction::From { .. } => "FROM",
            Instruction::Run(_) => "RUN",
            Instruction::Cmd(_) => "CMD",
            Instruction::Entrypoint(_) => "ENTRYPOINT",
            Instruction::Shell(_) => "SHELL",
            Instruction::Copy(_) => "COPY",
            Instruction::Add(_) => "ADD",
            Instruction::Env(_) => "ENV",
            Instruction::Arg(_) => "ARG",
            Instruction::Label(_) => "LABEL",
            Instruction::Expose(_) => "EXPOSE",
            Instruction::Volume(_) => "VOLUME",
            Instruction::User(_) => "USER",
            Instruction::Workdir(_) => "WORKDIR",
            Instruction::StopSignal(_) => "STOPSIGNAL",
            Instruction::Healthcheck(_) => "HEALTHCHECK",
            Instruction::Onbuild { .. } => "ONBUILD",
            Instruction::Maintainer(_) => "MAINTAINER",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Run {
    pub command: ShellOrExec,
    pub mounts: Vec<Mount>,
    pub network: Network,
    pub security: Security,
    pub heredocs: Vec<Heredoc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    #[default]
    Default,
    None,
    Host,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Security {
    #[default]
    Sandbox,
    Insecure,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MountType {
    Bind,
    Cache,
    Tmpfs,
    Secret,
    Ssh,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Sharing {
    #[default]
    Shared,
    Private,
    Locked,
}

/// A `RUN --mount=...` with BuildKit's defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mount {
    pub kind: MountType,
    /// Where it appears in the container. Always set after parsing (secret/ssh get their
    /// default paths).
    pub target: String,
    /// Path in the source (bind, cache with `from`).
    pub source: Option<String>,
    /// Stage name, image or context to take the source from.
    pub from: Option<String>,
    pub read_only: bool,
    /// Cache/secret/ssh id (secret: defaults to the target's base name; ssh: `default`; cache:
    /// defaults to the target).
    pub id: Option<String>,
    pub sharing: Sharing,
    pub required: bool,
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// tmpfs size in bytes.
    pub size: Option<u64>,
    /// secret: also expose it as this environment variable.
    pub env: Option<String>,
    /// The `--mount` value as written.
    pub spec: String,
}

/// COPY and ADD (the ADD-only fields stay at their defaults for COPY, and `from`/`parents` for
/// ADD).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct CopyArgs {
    /// Sources as written; a heredoc source appears as its `<<NAME` word.
    pub sources: Vec<String>,
    pub dest: String,
    pub from: Option<String>,
    pub chown: Option<String>,
    pub chmod: Option<String>,
    pub link: bool,
    pub parents: bool,
    pub exclude: Vec<String>,
    pub checksum: Option<String>,
    pub keep_git_dir: Option<bool>,
    pub unpack: Option<bool>,
    pub heredocs: Vec<Heredoc>,
    /// The arguments were a JSON array.
    pub json: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Healthcheck {
    None,
    Cmd {
        test: ShellOrExec,
        interval: Option<Duration>,
        timeout: Option<Duration>,
        start_period: Option<Duration>,
        start_interval: Option<Duration>,
        retries: Option<u32>,
    },
}
