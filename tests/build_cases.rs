//! The Dockerfile cases under testdata/build/<case>/: each is built with `kiln build` (as root,
//! its own root) and its image config and file tree are compared with `case.json`:
//!
//! - `args`: extra `kiln build` arguments;
//! - `config`: JSON pointers into the image config and their expected values (`null`: absent);
//! - `files`: path -> exact content (`null`: must not exist); `absent`, `exists`, `dirs`;
//! - `modes` (octal permission bits), `owners` (`uid:gid`);
//! - `history_contains`: `created_by` values that must be in the history;
//!   `history_empty_layer`: ones that must be marked `empty_layer`;
//! - `new_layers`: how many layers the build adds to busybox's one.
mod build_support;
mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use build_support::*;
use serde_json::Value;

fn run_case(name: &str) {
    let dir = testdata(name);
    let case: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).unwrap()).unwrap();
    let root = root_with_busybox();
    let context = if dir.join("context").is_dir() {
        dir.join("context")
    } else {
        dir.clone()
    };
    let dockerfile = dir.join("Dockerfile");
    let tag = format!("case-{name}");
    let mut args: Vec<String> = vec![
        "-t".into(),
        tag.clone(),
        "-f".into(),
        dockerfile.display().to_string(),
    ];
    for a in case["args"].as_array().into_iter().flatten() {
        args.push(a.as_str().unwrap().to_string());
    }
    args.push(context.display().to_string());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    build_ok(root.path(), &refs);

    let config = config_of(root.path(), &tag);
    let mut failures = Vec::new();
    for (pointer, want) in case["config"].as_object().into_iter().flatten() {
        let got = config.pointer(pointer).cloned().unwrap_or(Value::Null);
        if &got != want {
            failures.push(format!("config {pointer}: got {got}, want {want}"));
        }
    }
    let history: Vec<&Value> = config["history"]
        .as_array()
        .map(|h| h.iter().collect())
        .unwrap_or_default();
    let created_by = |h: &&Value| h["created_by"].as_str().unwrap_or("").to_string();
    for want in case["history_contains"].as_array().into_iter().flatten() {
        if !history
            .iter()
            .any(|h| created_by(h) == want.as_str().unwrap())
        {
            failures.push(format!(
                "history lacks {want}: {:?}",
                history.iter().map(created_by).collect::<Vec<_>>()
            ));
        }
    }
    for want in case["history_empty_layer"].as_array().into_iter().flatten() {
        if !history.iter().any(|h| {
            created_by(h) == want.as_str().unwrap() && h["empty_layer"] == Value::Bool(true)
        }) {
            failures.push(format!("history lacks an empty_layer entry {want}"));
        }
    }
    let diff_ids = config["rootfs"]["diff_ids"]
        .as_array()
        .map(|d| d.len())
        .unwrap_or(0);
    if let Some(n) = case["new_layers"].as_u64() {
        if diff_ids as u64 != n + 1 {
            failures.push(format!("layers: got {} new, want {n}", diff_ids - 1));
        }
    }
    let non_empty = history
        .iter()
        .filter(|h| h["empty_layer"] != Value::Bool(true))
        .count();
    if non_empty != diff_ids {
        failures.push(format!(
            "history has {non_empty} non-empty entries for {diff_ids} layers"
        ));
    }

    let fs = rootfs_of(root.path(), &tag);
    let at = |p: &str| fs.path().join(p.trim_start_matches('/'));
    for (path, want) in case["files"].as_object().into_iter().flatten() {
        match (want, std::fs::read(at(path))) {
            (Value::Null, Ok(_)) => failures.push(format!("{path} exists")),
            (Value::Null, Err(_)) => {}
            (Value::String(s), Ok(data)) if data == s.as_bytes() => {}
            (Value::String(s), Ok(data)) => failures.push(format!(
                "{path}: got {:?}, want {s:?}",
                String::from_utf8_lossy(&data)
            )),
            (_, Err(e)) => failures.push(format!("{path}: {e}")),
            (other, Ok(_)) => failures.push(format!("{path}: bad expectation {other}")),
        }
    }
    for path in case["absent"].as_array().into_iter().flatten() {
        if at(path.as_str().unwrap()).symlink_metadata().is_ok() {
            failures.push(format!("{path} exists"));
        }
    }
    for path in case["exists"].as_array().into_iter().flatten() {
        if at(path.as_str().unwrap()).symlink_metadata().is_err() {
            failures.push(format!("{path} is missing"));
        }
    }
    for path in case["dirs"].as_array().into_iter().flatten() {
        if !at(path.as_str().unwrap()).is_dir() {
            failures.push(format!("{path} is not a directory"));
        }
    }
    for (path, want) in case["modes"].as_object().into_iter().flatten() {
        let got = at(path)
            .symlink_metadata()
            .map(|m| format!("{:o}", m.mode() & 0o7777));
        if got.as_deref().ok() != want.as_str() {
            failures.push(format!("{path}: mode {got:?}, want {want}"));
        }
    }
    for (path, want) in case["owners"].as_object().into_iter().flatten() {
        let got = at(path)
            .symlink_metadata()
            .map(|m| format!("{}:{}", m.uid(), m.gid()));
        if got.as_deref().ok() != want.as_str() {
            failures.push(format!("{path}: owner {got:?}, want {want}"));
        }
    }
    assert!(
        failures.is_empty(),
        "case {name}:\n  {}",
        failures.join("\n  ")
    );
    let _ = Path::new("");
}

macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        $(#[test] fn $name() { run_case(stringify!($name)); })*
    };
}

cases!(
    instructions,
    copy_semantics,
    multistage,
    arg_scoping,
    run_features,
    mongodb,
    dockerignore,
    stage_args
);
