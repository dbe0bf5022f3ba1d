//! The graph of stages: which stage the build targets, which stages it reaches through
//! `FROM <stage>`, `COPY --from=<stage>` and `RUN --mount=from=<stage>`, and an order in which
//! they can be solved. Stages the target does not reach are never built.

use std::collections::HashMap;

use anyhow::{bail, Result};

use super::model::{DockerfileModel, InstrKind};

/// What a stage starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseRef {
    Scratch,
    Stage(usize),
    Image(String),
}

#[derive(Debug, Clone)]
pub struct Graph {
    pub target: usize,
    /// The stages to solve, dependencies before dependents.
    pub order: Vec<usize>,
    /// For each stage: its expanded base.
    pub bases: Vec<BaseRef>,
    /// For each stage: the stages it reads from (base stage included).
    pub deps: Vec<Vec<usize>>,
}

/// Finds a stage by name (case-insensitive) or index among the stages before `before`.
pub fn stage_ref(model: &DockerfileModel, name: &str, before: usize) -> Option<usize> {
    let lower = name.to_ascii_lowercase();
    if let Some(i) = model.stages[..before.min(model.stages.len())]
        .iter()
        .position(|s| s.name.as_deref() == Some(lower.as_str()))
    {
        return Some(i);
    }
    match name.parse::<usize>() {
        Ok(i) if i < before => Some(i),
        _ => None,
    }
}

/// Builds the graph. `expand_global` expands a FROM or `--from` word with the global ARGs (and
/// `--build-arg` overrides).
pub fn build_graph(
    model: &DockerfileModel,
    target: Option<&str>,
    expand_global: &dyn Fn(&str) -> Result<String>,
) -> Result<Graph> {
    if model.stages.is_empty() {
        bail!("the Dockerfile has no FROM instruction");
    }
    let target = match target {
        None => model.stages.len() - 1,
        Some(t) => match stage_ref(model, t, model.stages.len()) {
            Some(i) if t.parse::<usize>().is_err() => i,
            _ => {
                let names: Vec<&str> = model
                    .stages
                    .iter()
                    .filter_map(|s| s.name.as_deref())
                    .collect();
                bail!(
                    "target stage {t:?} could not be found (stages: {})",
                    if names.is_empty() {
                        "none named".to_string()
                    } else {
                        names.join(", ")
                    }
                );
            }
        },
    };
    let mut bases = Vec::with_capacity(model.stages.len());
    let mut deps = Vec::with_capacity(model.stages.len());
    for (i, stage) in model.stages.iter().enumerate() {
        let base = expand_global(&stage.base)?;
        let base_ref = if base.eq_ignore_ascii_case("scratch") {
            BaseRef::Scratch
        } else if let Some(j) = model.stages[..i]
            .iter()
            .position(|s| s.name.as_deref() == Some(base.to_ascii_lowercase().as_str()))
        {
            BaseRef::Stage(j)
        } else {
            BaseRef::Image(base)
        };
        let mut d = Vec::new();
        if let BaseRef::Stage(j) = base_ref {
            d.push(j);
        }
        for instr in &stage.instructions {
            let from = match &instr.kind {
                InstrKind::Copy(c) => c.from.iter().cloned().collect::<Vec<_>>(),
                InstrKind::Run { mounts, .. } => mounts
                    .iter()
                    .filter_map(|m| m.get("from").map(str::to_string))
                    .collect(),
                _ => Vec::new(),
            };
            for f in from {
                let f = expand_global(&f)?;
                if let Some(j) = stage_ref(model, &f, i) {
                    if !d.contains(&j) {
                        d.push(j);
                    }
                }
            }
        }
        bases.push(base_ref);
        deps.push(d);
    }
    // Depth-first from the target; dependencies always have lower indices, so sorting the
    // reached set gives a valid order.
    let mut reached = vec![false; model.stages.len()];
    let mut stack = vec![target];
    while let Some(s) = stack.pop() {
        if reached[s] {
            continue;
        }
        reached[s] = true;
        stack.extend(deps[s].iter().copied());
    }
    let order = (0..model.stages.len()).filter(|i| reached[*i]).collect();
    Ok(Graph {
        target,
        order,
        bases,
        deps,
    })
}

/// Stage names for progress lines: the `AS` name, else `stage-N`.
pub fn stage_labels(model: &DockerfileModel) -> Vec<String> {
    let mut seen = HashMap::new();
    model
        .stages
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let label = s.name.clone().unwrap_or_else(|| format!("stage-{i}"));
            *seen.entry(label.clone()).or_insert(0) += 1;
            label
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::model::{CopyArgs, Instr, Stage};

    fn stage(name: Option<&str>, base: &str, from: Option<&str>) -> Stage {
        let mut instructions = Vec::new();
        if let Some(f) = from {
            instructions.push(Instr {
                line: 1,
                original: String::new(),
                kind: InstrKind::Copy(CopyArgs {
                    from: Some(f.to_string()),
                    ..Default::default()
                }),
            });
        }
        Stage {
            name: name.map(str::to_string),
            base: base.into(),
            platform: None,
            line: 1,
            instructions,
        }
    }

    #[test]
    fn only_reached_stages_are_solved() {
        let model = DockerfileModel {
            global_args: vec![],
            stages: vec![
                stage(Some("a"), "busybox", None),
                stage(Some("b"), "busybox", None),
                stage(Some("unused"), "busybox", None),
                stage(None, "a", Some("b")),
            ],
        };
        let g = build_graph(&model, None, &|s| Ok(s.to_string())).unwrap();
        assert_eq!(g.order, vec![0, 1, 3]);
        assert_eq!(g.bases[3], BaseRef::Stage(0));
        let g = build_graph(&model, Some("b"), &|s| Ok(s.to_string())).unwrap();
        assert_eq!(g.order, vec![1]);
        let err = build_graph(&model, Some("nope"), &|s| Ok(s.to_string())).unwrap_err();
        assert!(
            err.to_string()
                .contains("target stage \"nope\" could not be found"),
            "{err}"
        );
    }
}
