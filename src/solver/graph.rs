//! The graph of stages: which stage the build targets, which stages it reaches through
//! `FROM <stage>`, `COPY --from=<stage>` and `RUN --mount=from=<stage>`, and an order in which
//! they can be solved. Stages the target does not reach are never built.

use anyhow::{bail, Result};

use crate::dockerfile::{Instruction, Stage, Stages};

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
pub fn stage_ref(stages: &[Stage], name: &str, before: usize) -> Option<usize> {
    let lower = name.to_ascii_lowercase();
    // With two stages of one name (allowed, with a lint warning), the later one before
    // `before` is meant, as in BuildKit.
    if let Some(i) = stages[..before.min(stages.len())]
        .iter()
        .rposition(|s| s.name.as_deref() == Some(lower.as_str()))
    {
        return Some(i);
    }
    match name.parse::<usize>() {
        Ok(i) if i < before => Some(i),
        _ => None,
    }
}

/// Builds the graph. A `--from` word is expanded in the global scope (global ARGs, `--build-arg`
/// overrides, platform ARGs), as BuildKit does to find a stage's dependencies.
/// Puts the named build contexts in place, as BuildKit does before it builds anything: a stage
/// called NAME becomes the context (its own instructions are not run), and a FROM of NAME (not a
/// stage) starts from it. An image context is then that image; a files context is an empty
/// image whose first step copies the files in (`COPY --from=<context NAME> / /`).
pub fn apply_named_contexts(
    stages: &mut Stages,
    named: &crate::source::named::NamedContexts,
) -> Result<()> {
    use crate::source::named::{files_marker, NamedContext};
    if named.is_empty() {
        return Ok(());
    }
    for stage in stages.stages.iter_mut() {
        let (name, replace_stage) = match &stage.name {
            Some(n) if named.get(n).is_some() => (n.clone(), true),
            _ if stage.base_stage.is_none() && named.get(&stage.base).is_some() => {
                (stage.base.clone(), false)
            }
            _ => continue,
        };
        if replace_stage {
            stage.instructions.clear();
        }
        stage.base_stage = None;
        match named.get(&name) {
            Some(NamedContext::Image(reference)) => stage.base = reference.clone(),
            Some(NamedContext::Files { .. }) => {
                stage.base = "scratch".into();
                let text = format!("FROM scratch\nCOPY --from={} / /\n", files_marker(&name));
                let df = crate::dockerfile::parse(&text)
                    .map_err(|e| anyhow::anyhow!("--build-context {name}: {e}"))?;
                let mut copy = df.instructions[1].clone();
                copy.span = stage.from.span;
                stage.instructions.insert(0, copy);
            }
            None => {}
        }
    }
    Ok(())
}

pub fn build_graph(stages: &Stages, target: Option<&str>) -> Result<Graph> {
    let all = &stages.stages;
    if all.is_empty() {
        bail!("the Dockerfile has no FROM instruction");
    }
    let target = match target {
        None => all.len() - 1,
        Some(t) => match stage_ref(all, t, all.len()) {
            Some(i) if t.parse::<usize>().is_err() => i,
            _ => {
                let names: Vec<&str> = all.iter().filter_map(|s| s.name.as_deref()).collect();
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
    let mut bases = Vec::with_capacity(all.len());
    let mut deps = Vec::with_capacity(all.len());
    // A stage's bad reference fails the build only when the target needs that stage (BuildKit
    // never looks at the stages it does not build).
    let mut errors: Vec<Option<String>> = vec![None; all.len()];
    'stages: for (i, stage) in all.iter().enumerate() {
        let base_ref = if stage.base.eq_ignore_ascii_case("scratch") {
            BaseRef::Scratch
        } else if let Some(j) = stage.base_stage {
            BaseRef::Stage(j)
        } else {
            BaseRef::Image(stage.base.clone())
        };
        let mut d = Vec::new();
        if let BaseRef::Stage(j) = base_ref {
            d.push(j);
        }
        // A stage built on another stage also runs that stage's ONBUILD triggers: what they
        // copy from is needed too.
        let inherited: Vec<&Instruction> = match base_ref {
            BaseRef::Stage(j) => all[j]
                .instructions
                .iter()
                .filter_map(|s| match &s.instruction {
                    Instruction::Onbuild { instruction, .. } => Some(instruction.as_ref()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        let own = stage.instructions.iter().map(|s| &s.instruction);
        for instruction in inherited.into_iter().chain(own) {
            let from: Vec<&String> = match instruction {
                Instruction::Copy(c) => c.from.iter().collect(),
                Instruction::Run(r) => r.mounts.iter().filter_map(|m| m.from.as_ref()).collect(),
                _ => Vec::new(),
            };
            for f in from {
                let f = f.clone();
                if let Some(j) = stage_ref(all, &f, i) {
                    if !d.contains(&j) {
                        d.push(j);
                    }
                } else if let Some(j) = stage_ref(all, &f, all.len()) {
                    // The stage itself or one after it: BuildKit's two errors, never an image
                    // of that name.
                    errors[i] = Some(if j == i {
                        format!("circular dependency detected on stage: {f}")
                    } else {
                        format!(
                            "cannot copy from stage {f:?}, it needs to be defined before current \
                             stage {:?}",
                            stage.name.clone().unwrap_or_else(|| i.to_string())
                        )
                    });
                    bases.push(base_ref);
                    deps.push(d);
                    continue 'stages;
                }
            }
        }
        bases.push(base_ref);
        deps.push(d);
    }
    // Depth-first from the target; dependencies always have lower indices, so sorting the
    // reached set gives a valid order.
    let mut reached = vec![false; all.len()];
    let mut stack = vec![target];
    while let Some(s) = stack.pop() {
        if reached[s] {
            continue;
        }
        reached[s] = true;
        stack.extend(deps[s].iter().copied());
    }
    let order: Vec<usize> = (0..all.len()).filter(|i| reached[*i]).collect();
    if let Some(e) = order.iter().find_map(|i| errors[*i].as_ref()) {
        bail!("{e}");
    }
    Ok(Graph {
        target,
        order,
        bases,
        deps,
    })
}

/// Stage names for progress lines: the `AS name`, else `stage-N`.
pub fn stage_labels(stages: &[Stage]) -> Vec<String> {
    stages
        .iter()
        .enumerate()
        .map(|(i, s)| s.name.clone().unwrap_or_else(|| format!("stage-{i}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn stages(text: &str) -> Stages {
        crate::dockerfile::stages(&crate::dockerfile::parse(text).unwrap(), &HashMap::new())
            .unwrap()
    }

    #[test]
    fn only_reached_stages_are_solved() {
        let st = stages(
            "FROM busybox AS a\nFROM busybox AS b\nFROM busybox AS unused\nFROM a\nCOPY --from=b /x /x\n",
        );
        let g = build_graph(&st, None).unwrap();
        assert_eq!(g.order, vec![0, 1, 3]);
        assert_eq!(g.bases[3], BaseRef::Stage(0));
        assert_eq!(g.bases[0], BaseRef::Image("busybox".into()));
        let g = build_graph(&st, Some("b")).unwrap();
        assert_eq!(g.order, vec![1]);
        let err = build_graph(&st, Some("nope")).unwrap_err();
        assert!(
            err.to_string()
                .contains("target stage \"nope\" could not be found"),
            "{err}"
        );
        assert_eq!(
            stage_labels(&st.stages),
            vec!["a", "b", "unused", "stage-3"]
        );
    }

    #[test]
    fn from_naming_this_stage_or_a_later_one_is_buildkits_error() {
        let err = build_graph(
            &stages("FROM busybox AS a\nCOPY --from=a /bin/sh /x\n"),
            None,
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "circular dependency detected on stage: a");
        let later = stages("FROM busybox AS a\nCOPY --from=b /x /x\nFROM busybox AS b\n");
        let err = build_graph(&later, Some("a")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot copy from stage \"b\", it needs to be defined before current stage \"a\""
        );
        let by_index =
            stages("FROM busybox AS a\nRUN --mount=from=1,target=/s true\nFROM busybox\n");
        assert!(build_graph(&by_index, Some("a"))
            .unwrap_err()
            .to_string()
            .contains("cannot copy from stage \"1\""));
        // A stage the target does not need is never looked at (BuildKit builds this).
        assert!(build_graph(&by_index, None).is_ok());
        // A name no stage has is an image, as before.
        let image = stages("FROM busybox AS a\nCOPY --from=alpine /x /x\n");
        assert_eq!(
            build_graph(&image, None).unwrap().deps[0],
            Vec::<usize>::new()
        );
    }

    #[test]
    fn mount_from_is_a_dependency() {
        let st = stages(
            "FROM scratch AS src\nFROM busybox AS other\nFROM busybox\nRUN --mount=from=src,target=/s true\n",
        );
        let g = build_graph(&st, None).unwrap();
        assert_eq!(g.order, vec![0, 2]);
        assert_eq!(g.bases[0], BaseRef::Scratch);
    }
}
