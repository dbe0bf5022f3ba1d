//! BuildKit's shell-lexer corpus (../shared/conformance/buildkit-shell): every `A` and `U` line
//! of envVarTest and every line of wordsTest must expand as BuildKit expands it.

use std::collections::HashMap;
use std::path::PathBuf;

use kiln::dockerfile::{expand, expand_words};

fn corpus(name: &str) -> String {
    // ../shared beside the checkout (CI, main); a git worktree one level deeper also works.
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let path = ["../shared/conformance", "../../shared/conformance"]
        .iter()
        .map(|p| root.join(p).join("buildkit-shell").join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| root.join("../shared/conformance/buildkit-shell").join(name));
    std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read the conformance corpus {}: {e} (it must be checked out beside the project, at ../shared/conformance)",
            path.display()
        )
    })
}

#[test]
fn env_var_test_all_unix_lines() {
    let text = corpus("envVarTest");
    let env: HashMap<&str, &str> = [
        ("PWD", "/home"),
        ("SHELL", "bash"),
        ("KOREAN", "한국어"),
        ("NULL", ""),
    ]
    .into_iter()
    .collect();
    let lookup = |k: &str| env.get(k).map(|v| v.to_string());
    let mut checked = 0;
    let mut failures = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let parts: Vec<&str> = line.splitn(3, '|').collect();
        assert_eq!(parts.len(), 3, "line {}: malformed", n + 1);
        if parts[0] != "A" && parts[0] != "U" {
            continue;
        }
        let (input, expected) = (parts[1].trim(), parts[2].trim());
        let got = expand(input, &lookup, '\\');
        checked += 1;
        match (expected, got) {
            ("error", Err(_)) => {}
            ("error", Ok(v)) => failures.push(format!(
                "line {}: {input:?} gave {v:?}, want an error",
                n + 1
            )),
            (want, Ok(v)) if v == want => {}
            (want, got) => failures.push(format!(
                "line {}: {input:?} gave {got:?}, want {want:?}",
                n + 1
            )),
        }
    }
    assert!(checked > 200, "only {checked} cases read");
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn words_test_all_lines() {
    let text = corpus("wordsTest");
    let mut env: HashMap<String, String> = HashMap::new();
    let mut checked = 0;
    let mut failures = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(kv) = line.strip_prefix("ENV ") {
            let (k, v) = kv.split_once('=').expect("ENV k=v");
            env.insert(k.to_string(), v.to_string());
            continue;
        }
        let (input, expected) = line.split_once('|').expect("INPUT | WORDS");
        let input = input.trim();
        let expected = expected.trim_start();
        let lookup = |k: &str| env.get(k).cloned();
        checked += 1;
        match (expected, expand_words(input, &lookup, '\\')) {
            ("error", Err(_)) => {}
            (want, Ok(words))
                if want != "error" && words == want.split(',').collect::<Vec<_>>() => {}
            (want, got) => failures.push(format!(
                "line {}: {input:?} gave {got:?}, want {want:?}",
                n + 1
            )),
        }
    }
    assert!(checked > 20, "only {checked} cases read");
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
