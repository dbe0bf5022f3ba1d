//! The Dockerfile front end: everything between the text of a Dockerfile and the build graph.
//!
//! Reading happens in two stages that mirror BuildKit's:
//!
//! 1. [`raw::parse_raw`]: the line-level parse tree BuildKit's `parser` package produces
//!    (directives, continuations, flags, argument splitting, heredocs). `kiln parse --format
//!    dump` prints it in BuildKit's own format. The grammar is written down in
//!    `grammar/dockerfile.ebnf`.
//! 2. [`parse`]: typed [`Instruction`]s with [`Span`]s, flags checked and parsed.
//!
//! Then [`stages`] splits a parsed file into build stages and resolves ARG scoping, and [`Vars`]
//! expands an instruction's arguments the way BuildKit does ([`expand`] and [`expand_words`] are
//! the shell-lexer primitives). [`DockerIgnore`] reads `.dockerignore`.
//!
//! ```no_run
//! use kiln::dockerfile;
//! let df = dockerfile::parse("FROM alpine AS base\nRUN echo hi\n").unwrap();
//! for step in &df.instructions {
//!     println!("{}: {:?}", step.span.start_line, step.instruction);
//! }
//! ```

pub mod ast;
pub mod error;
pub mod expand;
pub mod instructions;
pub mod raw;

pub use ast::*;
pub use error::ParseError;
pub use expand::{expand, expand_words, ExpandError};
pub use instructions::parse_mount;

/// Parses a Dockerfile into typed instructions. The error carries line, column and message;
/// [`ParseError::render`] formats it as `FILE:LINE:COL: message` with the line and a caret.
pub fn parse(source: &str) -> Result<Dockerfile, ParseError> {
    let raw = raw::parse_raw(source)?;
    instructions::typed(source, raw)
}
pub mod stages;
pub use stages::{stages, stages_with, BuildContext, Platform, Stage, Stages, Vars};
pub mod dockerignore;
pub use dockerignore::DockerIgnore;
pub mod lint;
