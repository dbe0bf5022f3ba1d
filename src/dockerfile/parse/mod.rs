//! Reading a Dockerfile's text: BuildKit's line-level parse tree (`raw`), the typed, spanned
//! instructions (`instructions`, `ast`) and the parse error with its position (`error`).

pub mod ast;
pub mod error;
pub mod instructions;
pub mod raw;
