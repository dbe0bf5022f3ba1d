//! The Dockerfile front end: everything between the text of a Dockerfile and the build graph.
//!
//! Reading happens in two steps that mirror BuildKit's:
//!
//! 1. [`raw::parse_raw`]: the line-level parse tree BuildKit's `parser` package produces
//!    (directives, continuations, flags, argument splitting, heredocs). `kiln parse --format
//!    dump` prints it in BuildKit's own format. The grammar is written down in
//!    `grammar/dockerfile.ebnf`.
//! 2. [`parse`]: typed [`Instruction`]s, each in a [`Spanned`] with its [`Span`], keyword as
//!    written, original text (for history `created_by`) and flags; flags are checked and parsed.
//!
//! Then [`stages()`] splits a parsed file into [`Stage`]s (FROM expanded with the global ARGs) and
//! [`Vars`] carries ARG/ENV state through a stage, expanding each instruction the way BuildKit
//! does. [`expand`] and [`expand_words`] are the shell-lexer primitives. [`DockerIgnore`] reads
//! `.dockerignore`; [`lint::check`] is `kiln check`.
//!
//! The API the build engine uses:
//!
//! ```text
//! parse(source: &str) -> Result<Dockerfile, ParseError>
//!     ParseError { line, column, message, source_line }; .render("Dockerfile") gives
//!     "Dockerfile:7:5: unknown instruction \"RUNN\" (did you mean RUN?)" + line + caret
//! Dockerfile { directives, instructions: Vec<Spanned>, warnings }
//! Spanned { span: Span { start_line, end_line, column }, keyword, original, flags, comments,
//!           instruction: Instruction }
//! Instruction::{From{image, platform, alias}, Run(Run{command, mounts, network, security,
//!     heredocs}), Cmd(ShellOrExec), Entrypoint(ShellOrExec), Shell(Vec<String>),
//!     Copy(CopyArgs), Add(CopyArgs), Env(Vec<(k, v)>), Arg(Vec<(name, Option<default>)>),
//!     Label(Vec<(k, v)>), Expose, Volume, User, Workdir, StopSignal, Healthcheck(Healthcheck),
//!     Onbuild{instruction, source}, Maintainer}
//! expand(word, &dyn Fn(&str) -> Option<String>, escape) -> Result<String, ExpandError>
//! expand_words(word, &dyn Fn(&str) -> Option<String>, escape) -> Result<Vec<String>, ExpandError>
//! stages(&Dockerfile, &HashMap<String, String>) -> Result<Stages, ParseError>
//! stages_with(&Dockerfile, BuildContext { build_args, target_platform, build_platform })
//! Stages { stages: Vec<Stage>, global_args, context, escape }; .target(Option<&str>);
//!     .vars(base_image_env) -> Vars; .expand_global(word) (global + platform ARGs, as FROM)
//! Stage { index, name, base, base_stage, platform, from, instructions }
//! Vars::apply(&mut self, &Instruction) -> Result<Instruction, ExpandError>  (expanded copy;
//!     updates ENV/ARG); Vars::run_env() (ENV + ARGs + proxy build args); Vars::arg_env()
//!     (ARGs with values not shadowed by ENV); Vars::lookup/expand
//! DockerIgnore::load(context_dir, Some(dockerfile_path)) -> anyhow::Result<DockerIgnore>
//! DockerIgnore::is_excluded(rel_path) -> bool; DockerIgnore::can_prune_dir(rel_dir) -> bool
//! ```
//!
//! ```no_run
//! use kiln::dockerfile;
//! let df = dockerfile::parse("FROM alpine AS base\nRUN echo hi\n").unwrap();
//! for step in &df.instructions {
//!     println!("{}: {:?}", step.span.start_line, step.instruction);
//! }
//! ```

pub mod dockerignore;
pub mod expand;
pub mod lint;
mod load;
pub mod parse;
pub mod stages;

pub use parse::{ast, error, instructions, raw};

pub use ast::*;
pub use dockerignore::DockerIgnore;
pub use error::ParseError;
pub use expand::{expand, expand_words, ExpandError};
pub use instructions::parse_mount;
pub use load::{load, load_for, parse_trigger};
pub use stages::{stages, stages_with, BuildContext, Platform, Stage, Stages, Vars};

/// Parses a Dockerfile into typed instructions. The error carries line, column and message;
/// [`ParseError::render`] formats it as `FILE:LINE:COL: message` with the line and a caret.
pub fn parse(source: &str) -> Result<Dockerfile, ParseError> {
    let raw = raw::parse_raw(source)?;
    instructions::typed(source, raw)
}
