//! The Dockerfile parser: BuildKit's parser corpus through the `kiln parse` binary, line spans,
//! error messages, and the corners (BOM, CRLF, heredocs, directives, exec-form fallback).

use std::path::PathBuf;
use std::process::Command;

use kiln::dockerfile::{self, Instruction, ShellOrExec};

fn conformance() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    ["../shared/conformance", "../../shared/conformance"]
        .iter()
        .map(|p| root.join(p))
        .find(|p| p.join("buildkit-parser").is_dir())
        .unwrap_or_else(|| {
            panic!(
                "BuildKit's conformance corpus is missing: expected it at {} (../shared/conformance beside the checkout)",
                root.join("../shared/conformance").display()
            )
        })
}

fn kiln_parse_dump(path: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["parse", "--format", "dump"])
        .arg(path)
        .output()
        .expect("spawn kiln")
}

#[test]
fn buildkit_parser_corpus_through_the_binary() {
    let base = conformance().join("buildkit-parser");
    let mut passed = 0;
    let mut failures = Vec::new();
    let mut cases: Vec<_> = std::fs::read_dir(base.join("testfiles"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    cases.sort();
    for dir in cases {
        let want = std::fs::read(dir.join("result")).unwrap();
        let out = kiln_parse_dump(&dir.join("Dockerfile"));
        if out.status.success() && out.stdout == want {
            passed += 1;
        } else {
            failures.push(format!(
                "{}: got\n{}{}",
                dir.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    for entry in std::fs::read_dir(base.join("testfiles-negative")).unwrap() {
        let dir = entry.unwrap().path();
        let out = kiln_parse_dump(&dir.join("Dockerfile"));
        if !out.status.success() && !out.stderr.is_empty() {
            passed += 1;
        } else {
            failures.push(format!("{}: accepted or silent", dir.display()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(passed, 37);
}

#[test]
fn line_spans_match_buildkit() {
    let text =
        std::fs::read_to_string(conformance().join("buildkit-parser/testfile-line/Dockerfile"))
            .unwrap();
    let df = dockerfile::parse(&text).unwrap();
    let spans: Vec<(usize, usize)> = df
        .instructions
        .iter()
        .map(|i| (i.span.start_line, i.span.end_line))
        .collect();
    assert_eq!(spans, vec![(5, 5), (11, 12), (17, 31)]);
}

#[test]
fn unknown_instruction_error_names_line_column_and_suggests() {
    let src = "FROM alpine\n\nRUN true\n\n\n\n    RUNN echo\n";
    let err = dockerfile::parse(src).unwrap_err();
    assert_eq!((err.line, err.column), (7, 5));
    let shown = err.render("Dockerfile");
    assert!(
        shown.starts_with("Dockerfile:7:5: unknown instruction \"RUNN\" (did you mean RUN?)"),
        "{shown}"
    );
    assert!(shown.contains("\n        RUNN echo\n        ^"), "{shown}");
}

#[test]
fn unknown_flag_points_at_the_flag() {
    let err = dockerfile::parse("FROM a\nCOPY --chmod=644 --bogus=1 a b\n").unwrap_err();
    assert_eq!((err.line, err.column), (2, 18));
    assert!(
        err.message.contains("unknown flag --bogus"),
        "{}",
        err.message
    );
}

#[test]
fn cli_reports_errors_without_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("Dockerfile");
    std::fs::write(&f, "FROM x\nCOPY onlyone\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["parse", "-f"])
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Dockerfile:2:1: COPY requires at least two arguments"),
        "{err}"
    );
}

#[test]
fn bom_crlf_and_escape_directive() {
    let src = "\u{feff}# escape=`\r\nFROM alpine\r\nRUN echo a `\r\n  b\r\nENV P C:\\dir\r\n";
    let df = dockerfile::parse(src).unwrap();
    assert_eq!(df.escape(), '`');
    match &df.instructions[1].instruction {
        Instruction::Run(r) => assert_eq!(r.command, ShellOrExec::Shell("echo a   b".into())),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        df.instructions[2].instruction,
        Instruction::Env(vec![("P".into(), "C:\\dir".into())])
    );
}

#[test]
fn directives_only_at_the_top() {
    let df = dockerfile::parse(
        "# syntax=docker/dockerfile:1\n# check=skip=all\nFROM a\n# escape=`\nRUN x \\\n y\n",
    )
    .unwrap();
    assert_eq!(df.directives.syntax.as_deref(), Some("docker/dockerfile:1"));
    assert_eq!(df.directives.check.as_deref(), Some("skip=all"));
    assert_eq!(df.escape(), '\\');
    assert!(dockerfile::parse("# escape=x\nFROM a\n").is_err());
    assert!(dockerfile::parse("# escape=`\n# escape=`\nFROM a\n").is_err());
}

#[test]
fn heredocs_for_run_copy_add() {
    let src = "FROM a\nRUN <<EOF bash\nset -e\necho $HOME\nEOF\nCOPY <<-\"one\" <<two /dest/\n\tx\n\tone\ny\ntwo\nRUN [\"echo\", \"<<NOTHEREDOC\"]\n";
    let df = dockerfile::parse(src).unwrap();
    let Instruction::Run(run) = &df.instructions[1].instruction else {
        panic!()
    };
    assert_eq!(run.heredocs[0].name, "EOF");
    assert_eq!(run.heredocs[0].content, "set -e\necho $HOME\n");
    assert!(run.heredocs[0].expand);
    assert_eq!(df.instructions[1].span.end_line, 5);
    let Instruction::Copy(copy) = &df.instructions[2].instruction else {
        panic!()
    };
    assert_eq!(copy.sources, vec!["<<-\"one\"", "<<two"]);
    assert_eq!(copy.heredocs.len(), 2);
    assert_eq!(
        (copy.heredocs[0].content.as_str(), copy.heredocs[0].expand),
        ("x\n", false)
    );
    assert_eq!(copy.heredocs[1].content, "y\n");
    let Instruction::Run(exec) = &df.instructions[3].instruction else {
        panic!()
    };
    assert!(exec.heredocs.is_empty());
    assert!(dockerfile::parse("FROM a\nRUN <<EOF\nnever ends\n").is_err());
}

#[test]
fn exec_form_and_fallback() {
    let df =
        dockerfile::parse("FROM a\nCMD [\"a\", \"b\"]\nCMD ['a']\nENTRYPOINT [\"x\"\n").unwrap();
    assert_eq!(
        df.instructions[1].instruction,
        Instruction::Cmd(ShellOrExec::Exec(vec!["a".into(), "b".into()]))
    );
    assert_eq!(
        df.instructions[2].instruction,
        Instruction::Cmd(ShellOrExec::Shell("['a']".into()))
    );
    assert_eq!(
        df.instructions[3].instruction,
        Instruction::Entrypoint(ShellOrExec::Shell("[\"x\"".into()))
    );
    assert!(dockerfile::parse("FROM a\nCMD [\"a\", 1]\n").is_err());
}

#[test]
fn typed_flags() {
    let src = "FROM --platform=$BUILDPLATFORM golang AS Build\n\
        RUN --mount=type=secret,id=tok --network=none --security=insecure make\n\
        COPY --from=build --chown=1:1 --chmod=755 --link --parents --exclude=*.md --exclude=x a b /d/\n\
        ADD --checksum=sha256:abc --keep-git-dir=true --unpack=false https://x/y.tgz /z\n\
        HEALTHCHECK --interval=30s --retries=3 CMD curl -f localhost\n\
        ONBUILD COPY . /src\n";
    let df = dockerfile::parse(src).unwrap();
    assert_eq!(
        df.instructions[0].instruction,
        Instruction::From {
            image: "golang".into(),
            platform: Some("$BUILDPLATFORM".into()),
            alias: Some("build".into())
        }
    );
    let Instruction::Run(run) = &df.instructions[1].instruction else {
        panic!()
    };
    assert_eq!(run.mounts[0].target, "/run/secrets/tok");
    assert_eq!(run.network, dockerfile::Network::None);
    assert_eq!(run.security, dockerfile::Security::Insecure);
    let Instruction::Copy(c) = &df.instructions[2].instruction else {
        panic!()
    };
    assert_eq!(c.from.as_deref(), Some("build"));
    assert!(c.link && c.parents);
    assert_eq!(c.exclude, vec!["*.md", "x"]);
    assert_eq!(c.sources, vec!["a", "b"]);
    let Instruction::Add(a) = &df.instructions[3].instruction else {
        panic!()
    };
    assert_eq!((a.keep_git_dir, a.unpack), (Some(true), Some(false)));
    let Instruction::Healthcheck(dockerfile::Healthcheck::Cmd {
        interval, retries, ..
    }) = &df.instructions[4].instruction
    else {
        panic!()
    };
    assert_eq!(
        (*interval, *retries),
        (Some(std::time::Duration::from_secs(30)), Some(3))
    );
    let Instruction::Onbuild { source, .. } = &df.instructions[5].instruction else {
        panic!()
    };
    assert_eq!(source, "COPY . /src");
    assert!(dockerfile::parse("FROM a\nCOPY --parents=maybe a b\n").is_err());
    assert!(dockerfile::parse("FROM a\nADD --from=x a b\n").is_err());
    assert!(dockerfile::parse("FROM a\nONBUILD ONBUILD RUN x\n").is_err());
    assert!(dockerfile::parse("FROM a b\n").is_err());
}

/// Deterministic mutations of the corpus: the parser must return, never panic.
#[test]
fn mutated_corpus_never_panics() {
    let base = conformance().join("buildkit-parser/testfiles");
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let alphabet: Vec<char> = "\\`\"'[]{}$<<-\n\r\t #=,:EOF\u{feff}é".chars().collect();
    for entry in std::fs::read_dir(base).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path().join("Dockerfile")).unwrap();
        let chars: Vec<char> = text.chars().collect();
        for _ in 0..40 {
            let mut c = chars.clone();
            for _ in 0..4 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let pos = (seed as usize) % (c.len() + 1);
                let ch = alphabet[(seed >> 32) as usize % alphabet.len()];
                if seed & 1 == 0 && pos < c.len() {
                    c[pos] = ch;
                } else {
                    c.insert(pos, ch);
                }
            }
            let s: String = c.into_iter().collect();
            let _ = dockerfile::parse(&s);
        }
    }
}
