//! The seam to the front end: reads a Dockerfile into the front end's stages (`crate::dockerfile`:
//! AST, stage split, global ARGs for the host platform), parses ONBUILD triggers, and provides the
//! `.dockerignore` filter.

use std::collections::{BTreeMap, HashMap};

use anyhow::{anyhow, bail, Result};

use super::context::PathFilter;
use crate::dockerfile::{self, Instruction, Platform, Spanned, Stages};

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

/// Parses Dockerfile text and splits it into stages, with `build_args` and the host's platform
/// for the global and platform ARGs; errors name `file:line:column`.
pub fn load(source: &str, file: &str, build_args: &BTreeMap<String, String>) -> Result<Stages> {
    let df = dockerfile::parse(source).map_err(|e| anyhow!("{}", e.render(file)))?;
    let host = Platform {
        os: "linux".into(),
        arch: super::imageconfig::host_architecture().into(),
        variant: String::new(),
    };
    let context = dockerfile::BuildContext {
        build_args: build_args
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<HashMap<_, _>>(),
        target_platform: host.clone(),
        build_platform: host,
    };
    dockerfile::stages_with(&df, context).map_err(|e| anyhow!("{}", e.render(file)))
}

/// Parses an ONBUILD trigger of a base image (`RUN make`) into an instruction.
pub fn parse_trigger(trigger: &str) -> Result<Spanned> {
    let df = dockerfile::parse(&format!("{trigger}\n"))
        .map_err(|e| anyhow!("{}", e.render("ONBUILD")))?;
    let first = df
        .instructions
        .into_iter()
        .next()
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
    Ok(first)
}
