//! Commands of this family; see src/cli/mod.rs.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Subcommand, ValueEnum};

use super::Globals;
use crate::dockerfile;

#[derive(Debug, Subcommand)]
pub enum DockerfileCommands {
    /// Parse a Dockerfile and print its syntax tree.
    Parse {
        /// The Dockerfile to read (`-` for standard input).
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: Option<PathBuf>,
        /// Output format: `json` (typed instructions with line spans) or `dump` (BuildKit's
        /// parse-tree format).
        #[arg(long, value_enum, default_value_t = ParseFormat::Json)]
        format: ParseFormat,
        /// The Dockerfile, as a positional argument (same as -f).
        #[arg(value_name = "DOCKERFILE", conflicts_with = "file")]
        path: Option<PathBuf>,
    },
    /// Lint a Dockerfile like `docker build --check`: prints `FILE:LINE: Rule: explanation`
    /// for each finding and exits 1 when there is any.
    Check {
        /// The Dockerfile (default: CONTEXT/Dockerfile).
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: Option<PathBuf>,
        /// The build context, for the .dockerignore checks (default: the current directory).
        #[arg(value_name = "CONTEXT")]
        context: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ParseFormat {
    Json,
    Dump,
}

pub fn run(cmd: DockerfileCommands, _globals: &Globals) -> anyhow::Result<i32> {
    match cmd {
        DockerfileCommands::Parse { file, format, path } => {
            let path = file.or(path).unwrap_or_else(|| PathBuf::from("Dockerfile"));
            let (name, source) = read_dockerfile(&path)?;
            match format {
                ParseFormat::Dump => match dockerfile::raw::parse_raw(&source) {
                    Ok(raw) => crate::out!("{}", raw.dump())?,
                    Err(e) => {
                        crate::errln!("{}", e.render(&name));
                        return Ok(1);
                    }
                },
                ParseFormat::Json => match dockerfile::parse(&source) {
                    Ok(df) => crate::outln!("{}", serde_json::to_string_pretty(&df)?)?,
                    Err(e) => {
                        crate::errln!("{}", e.render(&name));
                        return Ok(1);
                    }
                },
            }
            Ok(0)
        }
        DockerfileCommands::Check { file, context } => {
            let context = context.unwrap_or_else(|| PathBuf::from("."));
            let path = file.unwrap_or_else(|| context.join("Dockerfile"));
            let (name, source) = read_dockerfile(&path)?;
            let raw = match dockerfile::raw::parse_raw(&source) {
                Ok(raw) => raw,
                Err(e) => {
                    crate::errln!("{}", e.render(&name));
                    return Ok(1);
                }
            };
            let df = match dockerfile::instructions::typed(&source, raw.clone()) {
                Ok(df) => df,
                Err(e) => {
                    crate::errln!("{}", e.render(&name));
                    return Ok(1);
                }
            };
            let ignore = if context.is_dir() {
                Some(
                    dockerfile::DockerIgnore::load(&context, Some(&path)).with_context(|| {
                        format!("reading the .dockerignore of {}", context.display())
                    })?,
                )
            } else {
                None
            };
            let findings = match dockerfile::lint::check_with(&df, &raw, ignore.as_ref(), None) {
                Ok(report) => report.findings,
                Err(e) => {
                    crate::errln!("kiln: {name}: {e}");
                    return Ok(1);
                }
            };
            for f in &findings {
                crate::outln!("{name}:{}: {}: {}", f.line, f.rule, f.message)?;
            }
            if findings.is_empty() {
                Ok(0)
            } else {
                crate::errln!(
                    "{} problem{} found in {name}",
                    findings.len(),
                    if findings.len() == 1 { "" } else { "s" }
                );
                Ok(1)
            }
        }
    }
}

/// Reads a Dockerfile (or stdin for `-`), returning the name to show in errors and the text.
/// Invalid UTF-8 is replaced rather than rejected, as BuildKit reads bytes.
fn read_dockerfile(path: &Path) -> anyhow::Result<(String, String)> {
    let bytes = if path == Path::new("-") {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)
            .context("reading the Dockerfile from standard input")?;
        buf
    } else {
        std::fs::read(path).with_context(|| {
            format!(
                "reading {}: pass the Dockerfile with -f FILE",
                path.display()
            )
        })?
    };
    let name = if path == Path::new("-") {
        "Dockerfile".to_string()
    } else {
        path.display().to_string()
    };
    Ok((name, String::from_utf8_lossy(&bytes).into_owned()))
}
