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
        ("ExposeProtoCasing", "FROM a\nEXPOSE 80/TCP\n", 2),
        (
            "ExposeInvalidFormat",
            "FROM a\nEXPOSE 127.0.0.1:8080:80\n",
            2,
        ),
        ("ExposeInvalidFormat", "FROM a\nEXPOSE 8080:80/tcp\n", 2),
        (
            "RedundantTargetPlatform",
            "FROM --platform=$TARGETPLATFORM a\n",
            1,
        ),
        (
            "FromPlatformFlagConstDisallowed",
            "FROM --platform=linux/amd64 a AS build\n",
            1,
        ),
        (
            "InvalidDefaultArgInFrom",
            "ARG TAG\nFROM busybox:${TAG}\n",
            2,
        ),
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
    // BuildKit reports a name used with a default as undefined too (Docker 28.5's `--check`).
    assert!(rules("FROM a\nENV X=${NOTSET:-default}\n").contains(&"UndefinedVar".into()));
    assert!(!rules("FROM --platform=$BUILDPLATFORM a\n").contains(&"UndefinedArgInFrom".into()));
    assert!(rules("from a as b\nrun x\n").is_empty());
    assert!(rules(
        "# check=skip=JSONArgsRecommended,MaintainerDeprecated\nFROM a\nCMD x\nMAINTAINER m\n"
    )
    .is_empty());
    assert!(rules("# check=skip=all\nFROM a\nCMD x\n").is_empty());
    // A constant platform is fine on a stage whose name says which platform it is for.
    assert!(rules("FROM --platform=linux/arm64 a AS build-arm64\n").is_empty());
    assert!(rules("ARG TAG=1.36\nFROM busybox:${TAG}\n").is_empty());
    assert!(rules("FROM a\nEXPOSE 80/tcp 53/udp 9000-9002\n").is_empty());
    assert!(!rules("FROM a\nARG KEY_FILE\nARG TOKEN_VERSION\n")
        .contains(&"SecretsUsedInArgOrEnv".into()));
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

#[test]
fn check_options_skip_error_experimental_and_per_instruction_comments() {
    let opts = lint::CheckOptions::parse("skip=A, B;error=true").unwrap();
    assert!(opts.error && opts.skip.contains("A") && opts.skip.contains("B"));
    assert!(lint::CheckOptions::parse("skip=all").unwrap().skip_all);
    let bad = lint::CheckOptions::parse("skpi=A").unwrap_err();
    assert!(bad.contains("skpi"), "{bad}");
    let bad = lint::CheckOptions::parse("error=maybe").unwrap_err();
    assert!(bad.contains("error=maybe"), "{bad}");

    let report = |src: &str, extra: Option<&str>| {
        let raw = raw::parse_raw(src).unwrap();
        let df = dockerfile::parse(src).unwrap();
        lint::check_with(&df, &raw, None, extra)
    };
    // A `# check=` comment above one instruction skips its rule there only.
    let r = report(
        "FROM a\n# check=skip=JSONArgsRecommended\nCMD x\nENTRYPOINT y\n",
        None,
    )
    .unwrap();
    let got: Vec<(&str, usize)> = r.findings.iter().map(|f| (f.rule, f.line)).collect();
    assert_eq!(got, vec![("JSONArgsRecommended", 4)]);
    // error=true from the directive or from BUILDKIT_DOCKERFILE_CHECK.
    assert!(
        report("# check=error=true\nFROM a\nCMD x\n", None)
            .unwrap()
            .error
    );
    let r = report(
        "FROM a\nCMD x\n",
        Some("error=true;skip=MaintainerDeprecated"),
    )
    .unwrap();
    assert!(r.error && r.findings.len() == 1);
    // A bad directive is an error naming it.
    let e = report("# check=bogus\nFROM a\n", None).unwrap_err();
    assert!(
        e.contains("# check= directive") && e.contains("bogus"),
        "{e}"
    );
    assert_eq!(
        lint::rule_url("JSONArgsRecommended"),
        "https://docs.docker.com/go/dockerfile/rule/json-args-recommended/"
    );
    assert_eq!(
        lint::rule_url("FromPlatformFlagConstDisallowed"),
        "https://docs.docker.com/go/dockerfile/rule/from-platform-flag-const-disallowed/"
    );
}

#[test]
fn build_check_lints_only_and_builds_show_warnings() {
    let root = tempfile::tempdir().unwrap();
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("a"), "a").unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM scratch\nCOPY a /a\nCMD run me\n",
    )
    .unwrap();
    let kiln = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_kiln"))
            .arg("--root")
            .arg(root.path())
            .args(args)
            .arg(ctx.path())
            .output()
            .unwrap()
    };
    // --check: BuildKit's form, nothing built, exit 1.
    let out = kiln(&["build", "--check", "-t", "checked"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("WARNING: JSONArgsRecommended - https://docs.docker.com/go/dockerfile/rule/json-args-recommended/"), "{err}");
    assert!(err.contains("   3 | >>> CMD run me"), "{err}");
    assert!(
        err.contains("Check complete, 1 warning has been found!"),
        "{err}"
    );
    let images = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("--root")
        .arg(root.path())
        .args(["images", "-q", "checked"])
        .output()
        .unwrap();
    assert!(images.stdout.is_empty(), "--check built an image");
    // --call=check is the same; a method kiln lacks is one clear error.
    assert_eq!(kiln(&["build", "--call=check"]).status.code(), Some(1));
    let out = kiln(&["build", "--call=outline"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--call=outline"));
    // A build succeeds and lists the warnings after it.
    let out = kiln(&["build", "--progress", "plain", "-t", "warned"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("1 warning found"), "{err}");
    assert!(err.contains(" - JSONArgsRecommended: JSON arguments recommended for CMD to prevent unintended behavior related to OS signals (line 3)"), "{err}");
    // error=true fails the build before it starts, naming the rules.
    let out = kiln(&[
        "build",
        "--build-arg",
        "BUILDKIT_DOCKERFILE_CHECK=error=true",
        "-t",
        "failed",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("lint violation found for rules: JSONArgsRecommended"),
        "{err}"
    );
    // Clean: --check exits 0.
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM scratch\nCOPY a /a\nCMD [\"x\"]\n",
    )
    .unwrap();
    let out = kiln(&["build", "--check"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Check complete, no warnings found."));
}
