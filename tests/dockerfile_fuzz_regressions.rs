//! Inputs that once could crash, overflow the stack or run away in the Dockerfile front end
//! (found by the fuzz target in fuzz/ or by review), kept as regression tests: each must return
//! (an error is fine) without panicking.

use std::collections::HashMap;

use kiln::dockerfile::{self, lint, raw, DockerIgnore};

/// What the fuzz target does with one input.
fn exercise(text: &str) {
    if let Ok(r) = raw::parse_raw(text) {
        let _ = r.dump();
        if let Ok(df) = dockerfile::instructions::typed(text, r.clone()) {
            let _ = lint::check(&df, &r, None);
            if let Ok(st) = dockerfile::stages(&df, &HashMap::new()) {
                for stage in &st.stages {
                    let mut vars = st.vars(&[]);
                    for step in &stage.instructions {
                        let _ = vars.apply(&step.instruction);
                    }
                }
            }
        }
    } else if let Err(e) = raw::parse_raw(text) {
        let _ = e.render("Dockerfile");
    }
    // Matching is O(pattern x path); the fuzzer's inputs are at most a few KiB, the huge inputs
    // here are for the parser.
    if text.len() > 20_000 {
        return;
    }
    if let Ok(di) = DockerIgnore::parse(text) {
        for line in text.lines().take(8) {
            let _ = di.is_excluded(line);
            let _ = di.can_prune_dir(line);
        }
    }
    let _ = dockerfile::expand_words(text, &|k| (k.len() % 2 == 0).then(|| k.to_string()), '\\');
}

#[test]
fn deeply_nested_substitution_is_an_error_not_a_stack_overflow() {
    let deep = format!("{}x{}", "${a:-".repeat(100_000), "}".repeat(100_000));
    assert!(dockerfile::expand(&deep, &|_| None, '\\').is_err());
    exercise(&format!("FROM a\nENV X={deep}\n"));
    // Moderate nesting still works.
    let ok = format!("{}x{}", "${a:-".repeat(20), "}".repeat(20));
    assert_eq!(dockerfile::expand(&ok, &|_| None, '\\').unwrap(), "x");
}

#[test]
fn long_onbuild_chain_is_an_error_not_a_stack_overflow() {
    let src = format!("FROM a\n{}RUN x\n", "ONBUILD ".repeat(200_000));
    assert!(raw::parse_raw(&src).is_err());
    exercise(&src);
}

#[test]
fn long_paths_and_patterns_in_dockerignore_are_linear() {
    let path = "a/".repeat(50_000) + "b";
    let di = DockerIgnore::from_patterns(&["**/*a*a*a*a*a*a*a*a*c", "!**/b"]).unwrap();
    assert!(!di.is_excluded(&path));
    let di = DockerIgnore::from_patterns(&["**/b"]).unwrap();
    assert!(di.is_excluded(&path));
}

#[test]
fn odd_bytes_and_unterminated_things() {
    for text in [
        "",
        "\u{feff}",
        "\\",
        "FROM a\nRUN <<",
        "FROM a\nRUN <<EOF",
        "FROM a\nCOPY <<'EOF\n",
        "FROM a\nRUN --mount=\"type=cache",
        "FROM a\nRUN --mount=type=tmpfs,target=/t,size=99999999999999999999999p x",
        "FROM a\nHEALTHCHECK --interval=99999999999999999999h CMD x",
        "FROM a\nENV \"unterminated",
        "FROM a\nLABEL =",
        "# escape=`\nFROM a`",
        "FROM a\nONBUILD",
        "FROM a\nCMD [\"\\ud800\"]",
        "FROM\t\u{b}\u{c}\r a",
        "FROM a\nCOPY --chown=é\u{a0}x a b",
        "ARG A=${A:-${B:-${C}}}\nFROM ${A}\n",
        "FROM a\nWORKDIR ${x/[/]}\n",
        "FROM a\nENV A=${A##**}${A%%*}${A//*/x}\n",
    ] {
        exercise(text);
    }
}
