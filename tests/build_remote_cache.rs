//! The build cache shared through a real registry (Debian's docker-registry on loopback), as CI
//! runners share it: each runner is a fresh kiln root; `--cache-to` on one, `--cache-from` on the
//! next.

mod common;
mod registry_support;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use registry_support::*;

const EPOCH: &str = "1700000000";

/// A fresh runner: an empty root (its base images come from the registry).
fn runner() -> tempfile::TempDir {
    common::temp_root()
}

/// Pushes busybox to the registry as `base/busybox:1` (what every Dockerfile here is FROM), and
/// returns its name.
fn seed_base(reg: &Registry) -> String {
    let root = common::temp_root();
    let name = format!("{}/base/busybox:1", reg.host());
    common::kiln_ok(
        root.path(),
        &["import", common::busybox_tar().to_str().unwrap(), &name],
    );
    let out = kiln_env(Some(reg), root.path(), &["push", &name]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    name
}

/// A Dockerfile with `BASE` standing for the seeded base image.
fn dockerfile(template: &str, base: &str) -> String {
    template.replace("BASE", base)
}

/// Runs kiln with the registry's credentials (when it has auth) and SOURCE_DATE_EPOCH.
fn kiln_env(reg: Option<&Registry>, root: &Path, args: &[&str]) -> Output {
    let mut cmd = common::kiln_command();
    cmd.arg("--root").arg(root).args(args);
    cmd.env("SOURCE_DATE_EPOCH", EPOCH);
    cmd.env_remove("KILN_REGISTRY_USER")
        .env_remove("KILN_REGISTRY_PASSWORD");
    if let Some(r) = reg {
        if r.mode != AuthMode::None {
            cmd.env("KILN_REGISTRY_USER", USER)
                .env("KILN_REGISTRY_PASSWORD", PASSWORD);
        }
    }
    cmd.output().expect("spawn kiln")
}

struct Built {
    id: String,
    /// The plain progress output (stderr).
    log: String,
}

/// `kiln build --progress plain` of `ctx` with `extra` flags; panics on failure.
fn build(reg: Option<&Registry>, root: &Path, ctx: &Path, tag: &str, extra: &[&str]) -> Built {
    let out = try_build(reg, root, ctx, tag, extra);
    assert!(
        out.status.success(),
        "build failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let iid = fs::read_to_string(root.join("iid")).unwrap();
    Built {
        id: iid.trim().to_string(),
        log: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn try_build(reg: Option<&Registry>, root: &Path, ctx: &Path, tag: &str, extra: &[&str]) -> Output {
    let iid = root.join("iid");
    let mut args = vec![
        "build",
        "--progress",
        "plain",
        "-t",
        tag,
        "--iidfile",
        iid.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    args.push(ctx.to_str().unwrap());
    kiln_env(reg, root, &args)
}

/// Each step's outcome in a plain log, by the text after its `[stage n/m] ` label: "CACHED",
/// "DONE" or "ERROR".
fn outcomes(log: &str) -> BTreeMap<String, String> {
    let mut names = BTreeMap::new();
    let mut out = BTreeMap::new();
    for line in log.lines() {
        let Some(rest) = line.strip_prefix('#') else {
            continue;
        };
        let Some((id, text)) = rest.split_once(' ') else {
            continue;
        };
        if let Some(label_end) = text.strip_prefix('[').and_then(|t| t.find("] ")) {
            names.insert(id.to_string(), text[label_end + 3..].to_string());
        } else if let Some(name) = names.get(id) {
            let word = text.split_whitespace().next().unwrap_or("");
            if ["CACHED", "DONE", "ERROR"].contains(&word) {
                out.insert(name.clone(), word.to_string());
            }
        }
    }
    out
}

/// Every step but FROM (the base image is pulled, not built) came from a cache.
fn assert_all_cached(log: &str) {
    let steps = outcomes(log);
    assert!(steps.len() > 1, "{log}");
    for (step, result) in steps {
        if !step.starts_with("FROM ") {
            assert_eq!(result, "CACHED", "{step} ran:\n{log}");
        }
    }
}

fn outcome(log: &str, step: &str) -> String {
    outcomes(log)
        .get(step)
        .cloned()
        .unwrap_or_else(|| panic!("no step {step:?} in the log:\n{log}"))
}

fn context(files: &[(&str, &str)]) -> tempfile::TempDir {
    let ctx = tempfile::tempdir().unwrap();
    for (name, text) in files {
        let p = ctx.path().join(name);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }
    ctx
}

/// The registry's own storage: what a tag points at, and blobs by digest.
fn registry_data(reg: &Registry) -> PathBuf {
    reg.dir.path().join("data/docker/registry/v2")
}

fn tag_digest(reg: &Registry, repo: &str, tag: &str) -> Option<String> {
    let link = registry_data(reg).join(format!(
        "repositories/{repo}/_manifests/tags/{tag}/current/link"
    ));
    fs::read_to_string(link).ok()
}

fn blob_file(reg: &Registry, digest: &str) -> PathBuf {
    let hex = &digest[7..];
    registry_data(reg).join(format!("blobs/sha256/{}/{hex}/data", &hex[..2]))
}

fn blob_json(reg: &Registry, digest: &str) -> serde_json::Value {
    serde_json::from_slice(&fs::read(blob_file(reg, digest)).unwrap()).unwrap()
}

/// The cache manifest under `repo:tag`, and its config.
fn cache_at(reg: &Registry, repo: &str, tag: &str) -> (serde_json::Value, serde_json::Value) {
    let digest = tag_digest(reg, repo, tag).expect("the cache tag exists");
    let manifest = blob_json(reg, &digest);
    let config = blob_json(reg, manifest["config"]["digest"].as_str().unwrap());
    (manifest, config)
}

const APP_DOCKERFILE: &str = "FROM BASE
ARG TOKEN
RUN echo one > /one && test -n \"$TOKEN\"
COPY app.txt /app.txt
RUN cat /app.txt /one > /copy
CMD [\"cat\", \"/copy\"]
";

#[test]
fn runner_b_reruns_nothing_then_only_the_changed_steps_with_a_token_registry() {
    common::require_root();
    let reg = Registry::start(AuthMode::Token);
    let cache = format!("{}/cache/app:main", reg.host());
    let to = format!("type=registry,ref={cache},mode=max");
    let from = format!("type=registry,ref={cache}");
    let base = seed_base(&reg);
    let df = dockerfile(APP_DOCKERFILE, &base);
    let ctx = context(&[("Dockerfile", &df), ("app.txt", "v1\n")]);
    let secret_arg = "TOKEN=hunter2-build-arg";

    let a = runner();
    let built_a = build(
        Some(&reg),
        a.path(),
        ctx.path(),
        "app:1",
        &["--build-arg", secret_arg, "--cache-to", &to],
    );
    assert_eq!(
        outcome(&built_a.log, "RUN cat /app.txt /one > /copy"),
        "DONE"
    );
    assert!(
        built_a.log.contains(&format!("exported cache to {cache}")),
        "{}",
        built_a.log
    );

    // The cache is an OCI artifact manifest with kiln's config, and names no secret.
    let (manifest, config) = cache_at(&reg, "cache/app", "main");
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(
        manifest["artifactType"],
        "application/vnd.kiln.build-cache.v1"
    );
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.kiln.build-cache.config.v1+json"
    );
    assert!(manifest.get("subject").is_none());
    let records = config["records"].as_array().unwrap();
    assert_eq!(records.len(), 3, "{config}");
    for r in records {
        if let Some(l) = r["layer"].as_object() {
            for k in ["digest", "diffID", "size", "mediaType"] {
                assert!(l.contains_key(k), "{r}");
            }
            assert_eq!(r["chain"].as_array().unwrap().last().unwrap(), &l["diffID"]);
        }
    }
    let text = config.to_string();
    for secret in ["hunter2", PASSWORD] {
        assert!(
            !text.contains(secret),
            "the cache config holds {secret}: {text}"
        );
    }

    // Runner B, same commit: every step from the cache, the same image.
    let b = runner();
    let built_b = build(
        Some(&reg),
        b.path(),
        ctx.path(),
        "app:1",
        &["--build-arg", secret_arg, "--cache-from", &from],
    );
    assert_all_cached(&built_b.log);
    assert_eq!(built_b.id, built_a.id, "runner B made another image");
    let out = common::kiln_ok(b.path(), &["run", "--rm", "app:1"]);
    assert_eq!(out, "v1\none\n");

    // An edit on a third runner: the steps before it come from the cache, the rest run, and
    // the miss is explained against the remote cache.
    let c = runner();
    let ctx2 = context(&[("Dockerfile", &df), ("app.txt", "v2\n")]);
    let built_c = build(
        Some(&reg),
        c.path(),
        ctx2.path(),
        "app:2",
        &["--build-arg", secret_arg, "--cache-from", &from],
    );
    let steps = outcomes(&built_c.log);
    assert_eq!(steps["RUN echo one > /one && test -n \"$TOKEN\""], "CACHED");
    assert_eq!(steps["COPY app.txt /app.txt"], "DONE");
    assert_eq!(steps["RUN cat /app.txt /one > /copy"], "DONE");
    assert!(
        built_c.log.contains(&format!(
            "cache miss: COPY app.txt /app.txt: not in the local cache; the cache from {from_ref} has this step with different inputs: 1 file changed: app.txt",
            from_ref = cache
        )),
        "{}",
        built_c.log
    );
    let out = common::kiln_ok(c.path(), &["run", "--rm", "app:2"]);
    assert_eq!(out, "v2\none\n");
}
