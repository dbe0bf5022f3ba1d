//! The build's input: a Dockerfile as stages of instructions with their words unexpanded (the
//! solver expands them as it walks a stage, since ENV and the base image's config feed the
//! expansion). `frontend.rs` fills this from the front end's AST.

/// A command in shell form (run through the stage's SHELL) or exec form (argv as written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandForm {
    Shell(String),
    Exec(Vec<String>),
}

/// A here-document attached to RUN, COPY or ADD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heredoc {
    pub name: String,
    pub content: String,
    /// Whether `$vars` in the body are expanded (the delimiter was not quoted).
    pub expand: bool,
    pub chomp: bool,
}

/// One `RUN --mount=...`, its options as written (`key=value`, values unexpanded).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MountSpec {
    pub kind: String,
    pub options: Vec<(String, String)>,
}

impl MountSpec {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.options
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CopyArgs {
    pub sources: Vec<String>,
    pub dest: String,
    pub from: Option<String>,
    pub chown: Option<String>,
    pub chmod: Option<String>,
    pub link: bool,
    pub parents: bool,
    pub excludes: Vec<String>,
    pub heredocs: Vec<Heredoc>,
    /// ADD only.
    pub checksum: Option<String>,
    pub keep_git_dir: bool,
    /// ADD only: `--unpack` (None: the default, unpack local archives, not URLs).
    pub unpack: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HealthArgs {
    /// `None` for `HEALTHCHECK NONE`.
    pub command: Option<CommandForm>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub start_period: Option<String>,
    pub start_interval: Option<String>,
    pub retries: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstrKind {
    Run {
        command: CommandForm,
        heredocs: Vec<Heredoc>,
        mounts: Vec<MountSpec>,
        network: Option<String>,
        security: Option<String>,
    },
    Copy(CopyArgs),
    Add(CopyArgs),
    Env(Vec<(String, String)>),
    Arg(Vec<(String, Option<String>)>),
    Label(Vec<(String, String)>),
    Expose(Vec<String>),
    Volume(Vec<String>),
    User(String),
    Workdir(String),
    Cmd(CommandForm),
    Entrypoint(CommandForm),
    Shell(Vec<String>),
    StopSignal(String),
    Healthcheck(HealthArgs),
    /// The trigger as written (an instruction line).
    Onbuild(String),
    Maintainer(String),
}

/// One instruction with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instr {
    /// 1-based line in the Dockerfile.
    pub line: usize,
    /// The instruction as written, on one line (for progress and errors).
    pub original: String,
    pub kind: InstrKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    /// `AS name`, lower-cased.
    pub name: Option<String>,
    /// The FROM word, unexpanded.
    pub base: String,
    pub platform: Option<String>,
    pub line: usize,
    pub instructions: Vec<Instr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DockerfileModel {
    /// ARGs before the first FROM.
    pub global_args: Vec<(String, Option<String>)>,
    pub stages: Vec<Stage>,
}
