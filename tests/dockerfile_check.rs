//! `kiln check`: each lint rule fires on the case it is for and stays quiet on clean input.

use std::process::Command;

use kiln::dockerfile::{self, lint, raw, DockerIgnore};

fn findings(src: &str, ignore: Option<&DockerIgnore>) -> Vec<(String, usize)> {
    let raw = raw::parse_raw(src).unwrap();
    let df = dockerfile::parse(src).unwrap();
    lint::check(&df, &raw, ignore)
        .into_iter()
        .map(|f| (f.rule.to_string(), f.line))
        .collect()
}

fn rules(src: &str) -> Vec<String> {
    findings(src, None).into_iter().map(|(r, _)| r).collect()
}

#[test]
fn clean_file_has_no_findings() {
    let src = "# syntax=docker/dockerfile:1\nARG BASE=alpine:3.20\nFROM ${BASE} AS build\nARG VERSION=1\nENV APP_HOME=/app VERSION=${VERSION}\nWORKDIR $APP_HOME\nCOPY --chown=1:1 . .\nRUN make\nFROM build AS final\nUSER ${APP_HOME}\nENTRYPOINT [\"/app/run\"]\nCMD [\"--help\"]\n";
    assert_eq!(findings(src, None), vec![]);
}

#[test]
fn each_rule_fires() {
    let cases: &[(&str, &str, usize)] = &[
        ("JSONArgsRecommended", "FROM a\nCMD run me\n", 2),
        ("MaintainerDeprecated", "FROM a\nMAINTAINER me\n", 2),
        ("UndefinedVar", "FROM a\nARG FOO=1\nWORKDIR /$FOOO\n", 3),
        ("UndefinedArgInFrom", "FROM ${IMG}\n", 1),
        ("DuplicateStageName", "FROM a AS x\nFROM b AS x\n", 2),
        ("StageNameCasing", "FROM a AS Build\n", 1),
        ("FromAsCasing", "FROM a as b\n", 1),
        ("ConsistentInstructionCasing", "FROM a\nRUN x\nrun y\n", 3),
        ("WorkdirRelativePath", "FROM a\nWORKDIR app\n", 2),
        ("LegacyKeyValueFormat", "FROM a\nENV K v\n", 2),
        ("SecretsUsedInArgOrEnv", "FROM a\nARG GITHUB_TOKEN\n", 2),
        ("NoEmptyContinuation", "FROM a\nRUN a \\\n\n  b\n", 4),
        (
            "MultipleInstructionsDisallowed",
            "FROM a\nENTRYPOINT [\"a\"]\nENTRYPOINT [\"b\"]\n",
            2,
        ),
        ("ReservedStageName", "FROM a AS scratch\n", 1),
    ];
    for (rule, src, line) in cases {
        let f = findings(src, None);
        assert!(
            f.contains(&(rule.to_string(), *line)),
            "{rule} should fire on line {line} of {src:?}, got {f:?}"
        );
    }
}

#[test]
fn rules_do_not_fire_on_the_fixed_form() {
    assert!(!rules("FROM a\nWORKDIR /app\nWORKDIR sub\n").contains(&"WorkdirRelativePath".into()));
    assert!(!rules("FROM a\nARG PUBLIC_KEY\n").contains(&"SecretsUsedInArgOrEnv".into()));
    assert!(!rules("FROM a\nARG V\nRUN echo $UNDEFINED_IN_RUN\n").contains(&"UndefinedVar".into()));
    assert!(!rules("FROM a\nENV X=${NOTSET:-default}\n").contains(&"UndefinedVar".into()));
    assert!(!rules("FROM --platform=$BUILDPLATFORM a\n").contains(&"UndefinedArgInFrom".into()));
    assert!(rules("from a as b\nrun x\n").is_empty());
    assert!(rules(
        "# check=skip=JSONArgsRecommended,MaintainerDeprecated\nFROM a\nCMD x\nMAINTAINER m\n"
    )
    .is_empty());
    assert!(rules("# check=skip=all\nFROM a\nCMD x\n").is_empty());
    // Variables from the stage a stage is built on are defined.
    assert!(rules("FROM a AS one\nENV D=/d\nFROM one\nWORKDIR $D\n").is_empty());
}

#[test]
fn copy_ignored_file_uses_dockerignore() {
    let ignore = DockerIgnore::from_patterns(&["secrets", "*.key"]).unwrap();
    let f = findings(
        "FROM a AS b\nCOPY secrets/x /x\nCOPY app.key ./ok.txt /y/\nCOPY --from=b secrets /z\nADD https://x/app.key /k\n",
        Some(&ignore),
    );
    let copy: Vec<usize> = f
        .iter()
        .filter(|(r, _)| r == "CopyIgnoredFile")
        .map(|(_, l)| *l)
        .collect();
    assert_eq!(copy, vec![2, 3]);
}

#[test]
fn binary_exit_codes_and_format() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("Dockerfile"),
        "FROM a\nCOPY app.key /k\nCMD x\n",
    )
    .unwrap();
    std::fs::write(dir.path().join(".dockerignore"), "*.key\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("check")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("Dockerfile:2: CopyIgnoredFile: "),
        "{stdout}"
    );
    assert!(
        stdout.contains("Dockerfile:3: JSONArgsRecommended: "),
        "{stdout}"
    );

    std::fs::write(dir.path().join("Clean.Dockerfile"), "FROM a\nCMD [\"x\"]\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("check")
        .arg("-f")
        .arg(dir.path().join("Clean.Dockerfile"))
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
