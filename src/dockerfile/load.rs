//! What a build asks of the front end: a Dockerfile's text read into its stages (AST, stage split,
//! global ARGs for the host platform), with errors rendered as `file:line:column`, and a base
//! image's ONBUILD triggers parsed.

use std::collections::{BTreeMap, HashMap};

use anyhow::{anyhow, bail, Result};

use crate::dockerfile::{self, Instruction, Platform, Spanned, Stages};

/// Parses Dockerfile text and splits it into stages, with `build_args` and the host's platform
/// for the global and platform ARGs; errors name `file:line:column`.
pub fn load(source: &str, file: &str, build_args: &BTreeMap<String, String>) -> Result<Stages> {
    load_for(
        source,
        file,
        build_args,
        &crate::platform::Platform::host(),
        None,
    )
}

/// [`load`] for the target platform `target` (`TARGETPLATFORM`, `TARGETARCH`, ...) and the
/// `--target` stage (`TARGETSTAGE`); the build platform (`BUILDPLATFORM`, ...) is this machine's.
pub fn load_for(
    source: &str,
    file: &str,
    build_args: &BTreeMap<String, String>,
    target: &crate::platform::Platform,
    target_stage: Option<&str>,
) -> Result<Stages> {
    let df = dockerfile::parse(source).map_err(|e| anyhow!("{}", e.render(file)))?;
    let of = |p: &crate::platform::Platform| Platform {
        os: p.os.clone(),
        arch: p.architecture.clone(),
        variant: p.variant.clone().unwrap_or_default(),
    };
    let host = of(&crate::platform::Platform::host());
    let context = dockerfile::BuildContext {
        build_args: build_args
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<HashMap<_, _>>(),
        target_platform: of(target),
        build_platform: host,
        target_stage: target_stage.map(str::to_string),
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
