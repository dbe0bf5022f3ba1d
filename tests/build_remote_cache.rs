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

/// Runner A: a fresh root builds `ctx` as `tag` with `--build-arg TOKEN=x --cache-to
/// CACHE_TO` and `extra`.
fn runner_a(
    reg: &Registry,
    ctx: &Path,
    tag: &str,
    cache_to: &str,
    extra: &[&str],
) -> (tempfile::TempDir, Built) {
    let root = runner();
    let mut args = vec!["--build-arg", "TOKEN=x", "--cache-to", cache_to];
    args.extend_from_slice(extra);
    let built = build(Some(reg), root.path(), ctx, tag, &args);
    (root, built)
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
    // Its layers stayed at the registry; `run` fetches them (with the registry's credentials).
    let out = kiln_env(Some(&reg), b.path(), &["run", "--rm", "app:1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "v1\none\n");

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

const MULTI_STAGE: &str = "FROM BASE AS builder
RUN echo compiled > /artifact
FROM BASE
COPY --from=builder /artifact /artifact
CMD [\"cat\", \"/artifact\"]
";

#[test]
fn mode_max_hits_the_builder_stage_and_mode_min_does_not() {
    common::require_root();
    let reg = Registry::start(AuthMode::None);
    let base = seed_base(&reg);
    let ctx = context(&[("Dockerfile", &dockerfile(MULTI_STAGE, &base))]);
    let (min, max) = (
        format!("{}/cache/multi:min", reg.host()),
        format!("{}/cache/multi:max", reg.host()),
    );
    let a = runner();
    let built_a = build(
        Some(&reg),
        a.path(),
        ctx.path(),
        "multi:1",
        &[
            "--cache-to",
            &format!("type=registry,ref={min},mode=min"),
            "--cache-to",
            &format!("type=registry,ref={max},mode=max"),
        ],
    );
    assert_eq!(
        cache_at(&reg, "cache/multi", "min").1["records"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        cache_at(&reg, "cache/multi", "max").1["records"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    let b = runner();
    let built_b = build(
        Some(&reg),
        b.path(),
        ctx.path(),
        "multi:1",
        &["--cache-from", &format!("type=registry,ref={max}")],
    );
    assert_all_cached(&built_b.log);
    assert_eq!(built_b.id, built_a.id);

    let c = runner();
    let built_c = build(
        Some(&reg),
        c.path(),
        ctx.path(),
        "multi:1",
        &["--cache-from", &format!("type=registry,ref={min}")],
    );
    assert_eq!(
        outcome(&built_c.log, "RUN echo compiled > /artifact"),
        "DONE"
    );
    assert_eq!(
        outcome(&built_c.log, "COPY --from=builder /artifact /artifact"),
        "CACHED"
    );
    assert_eq!(built_c.id, built_a.id);
    let out = common::kiln_ok(c.path(), &["run", "--rm", "multi:1"]);
    assert_eq!(out, "compiled\n");
}

const TWO_STAGES: &str = "FROM BASE AS one
RUN echo one > /one
FROM BASE AS two
RUN echo two > /two
FROM BASE
COPY --from=one /one /one
COPY --from=two /two /two
";

#[test]
fn two_cache_froms_are_merged() {
    common::require_root();
    let reg = Registry::start(AuthMode::None);
    let base = seed_base(&reg);
    let ctx = context(&[("Dockerfile", &dockerfile(TWO_STAGES, &base))]);
    for stage in ["one", "two"] {
        let root = runner();
        build(
            Some(&reg),
            root.path(),
            ctx.path(),
            stage,
            &[
                "--target",
                stage,
                "--cache-to",
                &format!("type=registry,ref={}/cache/merge:{stage}", reg.host()),
            ],
        );
    }
    let b = runner();
    let built = build(
        Some(&reg),
        b.path(),
        ctx.path(),
        "merged",
        &[
            "--cache-from",
            &format!("type=registry,ref={}/cache/merge:one", reg.host()),
            "--cache-from",
            &format!("type=registry,ref={}/cache/merge:two", reg.host()),
        ],
    );
    assert_eq!(outcome(&built.log, "RUN echo one > /one"), "CACHED");
    assert_eq!(outcome(&built.log, "RUN echo two > /two"), "CACHED");
    assert_eq!(outcome(&built.log, "COPY --from=two /two /two"), "DONE");
    let out = common::kiln_ok(b.path(), &["run", "--rm", "merged", "cat", "/one", "/two"]);
    assert_eq!(out, "one\ntwo\n");
}

#[test]
fn a_tampered_layer_is_refused_and_its_step_runs_again() {
    common::require_root();
    let reg = Registry::start(AuthMode::None);
    let base = seed_base(&reg);
    let cache = format!("{}/cache/app:main", reg.host());
    let df = dockerfile(APP_DOCKERFILE, &base);
    let ctx = context(&[("Dockerfile", &df), ("app.txt", "v1\n")]);
    let (_a, built_a) = runner_a(
        &reg,
        ctx.path(),
        "app:1",
        &format!("type=registry,ref={cache}"),
        &[],
    );
    // Flip a byte of every layer the cache lists, in the registry's own storage.
    let (manifest, _) = cache_at(&reg, "cache/app", "main");
    for l in manifest["layers"].as_array().unwrap() {
        let path = blob_file(&reg, l["digest"].as_str().unwrap());
        let mut bytes = fs::read(&path).unwrap();
        let i = bytes.len() / 2;
        bytes[i] ^= 0x5a;
        fs::write(&path, bytes).unwrap();
    }
    // Every step hits: the image is assembled from the descriptors, nothing is downloaded.
    // The first read of a layer (`kiln run`) fetches it, and the tampered bytes are refused.
    let lazy = runner();
    let built = build(
        Some(&reg),
        lazy.path(),
        ctx.path(),
        "app:1",
        &[
            "--build-arg",
            "TOKEN=x",
            "--cache-from",
            &format!("type=registry,ref={cache}"),
        ],
    );
    assert_all_cached(&built.log);
    assert_eq!(built.id, built_a.id);
    let out = kiln_env(Some(&reg), lazy.path(), &["run", "--rm", "app:1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("fetching the layer") && err.contains("does not match its digest"),
        "{err}"
    );
    assert_store_clean(lazy.path());

    // A step after the cached ones needs their filesystem during the build: the blobs are
    // fetched then, refused, and the steps run again.
    let more = ctx.path().join("Dockerfile.more");
    fs::write(&more, format!("{df}RUN cat /copy /copy > /twice\n")).unwrap();
    let b = runner();
    let built_b = build(
        Some(&reg),
        b.path(),
        ctx.path(),
        "app:more",
        &[
            "--build-arg",
            "TOKEN=x",
            "-f",
            more.to_str().unwrap(),
            "--cache-from",
            &format!("type=registry,ref={cache}"),
        ],
    );
    assert!(built_b.log.contains("has a bad layer"), "{}", built_b.log);
    assert_eq!(
        outcome(&built_b.log, "RUN cat /app.txt /one > /copy"),
        "DONE"
    );
    // Rebuilt, not taken from the tampered blobs: the image a runner without a cache makes.
    let c = runner();
    let built_c = build(
        Some(&reg),
        c.path(),
        ctx.path(),
        "app:more",
        &["--build-arg", "TOKEN=x", "-f", more.to_str().unwrap()],
    );
    assert_eq!(built_b.id, built_c.id);
    assert_store_clean(b.path());
    let out = common::kiln_ok(b.path(), &["run", "--rm", "app:more", "cat", "/twice"]);
    assert_eq!(out, "v1\none\nv1\none\n");
}

#[test]
fn a_killed_export_leaves_the_previous_cache_usable() {
    common::require_root();
    let reg = Registry::start(AuthMode::None);
    let base = seed_base(&reg);
    let df = dockerfile(APP_DOCKERFILE, &base);
    let v1 = context(&[("Dockerfile", &df), ("app.txt", "v1\n")]);
    let (_a, built_a) = runner_a(
        &reg,
        v1.path(),
        "app:1",
        &format!("type=registry,ref={}/cache/app:main", reg.host()),
        &[],
    );
    let before = tag_digest(&reg, "cache/app", "main").unwrap();

    // The next export goes through a proxy that stalls the first upload; kiln is killed there.
    let proxy = Proxy::start(reg.port, b"/blobs/uploads/".to_vec(), Sabotage::Stall);
    let v2 = context(&[("Dockerfile", &df), ("app.txt", "v2\n")]);
    let a2 = runner();
    let iid = a2.path().join("iid");
    let mut child = common::kiln_command()
        .arg("--root")
        .arg(a2.path())
        .args([
            "build",
            "-q",
            "--build-arg",
            "TOKEN=x",
            "--iidfile",
            iid.to_str().unwrap(),
            "--cache-from",
            &format!("type=registry,ref={}/cache/app:main", reg.host()),
            "--cache-to",
            &format!("type=registry,ref=127.0.0.1:{}/cache/app:main", proxy.port),
            v2.path().to_str().unwrap(),
        ])
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !proxy.triggered.load(std::sync::atomic::Ordering::SeqCst) {
        assert!(
            std::time::Instant::now() < deadline,
            "the export never started an upload"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "kiln ended before its export was cut"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    drop(proxy);
    assert!(iid.exists(), "the image was built before the export");
    assert_eq!(tag_digest(&reg, "cache/app", "main").unwrap(), before);

    let b = runner();
    let built_b = build(
        Some(&reg),
        b.path(),
        v1.path(),
        "app:1",
        &[
            "--build-arg",
            "TOKEN=x",
            "--cache-from",
            &format!("type=registry,ref={}/cache/app:main", reg.host()),
        ],
    );
    assert_all_cached(&built_b.log);
    assert_eq!(built_b.id, built_a.id);
}

#[test]
fn two_exports_to_one_ref_at_once_leave_one_valid_cache() {
    common::require_root();
    let reg = Registry::start(AuthMode::None);
    let base = seed_base(&reg);
    let df = dockerfile(APP_DOCKERFILE, &base);
    let cache = format!("{}/cache/app:main", reg.host());
    let ctxs = [
        context(&[("Dockerfile", &df), ("app.txt", "v1\n")]),
        context(&[("Dockerfile", &df), ("app.txt", "v2\n")]),
    ];
    let roots = [runner(), runner()];
    let ids: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = roots
            .iter()
            .zip(&ctxs)
            .map(|(root, ctx)| {
                let (reg, cache) = (&reg, &cache);
                s.spawn(move || {
                    build(
                        Some(reg),
                        root.path(),
                        ctx.path(),
                        "app",
                        &[
                            "--build-arg",
                            "TOKEN=x",
                            "--cache-to",
                            &format!("type=registry,ref={cache},mode=max"),
                        ],
                    )
                    .id
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // The tag names one complete cache: every blob it lists is in the registry, and one of the
    // two builds comes entirely from it.
    let (manifest, _) = cache_at(&reg, "cache/app", "main");
    for l in manifest["layers"].as_array().unwrap() {
        let digest = l["digest"].as_str().unwrap();
        let bytes = fs::read(blob_file(&reg, digest)).unwrap();
        assert_eq!(sha256(&bytes), digest);
    }
    let mut fully_cached = 0;
    for (ctx, id) in ctxs.iter().zip(&ids) {
        let c = runner();
        let built = build(
            Some(&reg),
            c.path(),
            ctx.path(),
            "app",
            &[
                "--build-arg",
                "TOKEN=x",
                "--cache-from",
                &format!("type=registry,ref={cache}"),
            ],
        );
        assert_eq!(&built.id, id);
        let steps = outcomes(&built.log);
        if steps
            .iter()
            .all(|(k, v)| k.starts_with("FROM ") || v == "CACHED")
        {
            fully_cached += 1;
        }
    }
    assert_eq!(fully_cached, 1, "exactly one export holds the tag");
}

#[test]
fn missing_or_broken_caches_warn_and_an_unreachable_cache_to_fails_unless_ignored() {
    common::require_root();
    let reg = Registry::start(AuthMode::None);
    let base = seed_base(&reg);
    let ctx = context(&[("Dockerfile", &format!("FROM {base}\nRUN echo hi > /hi\n"))]);
    let root = runner();
    // No cache at the tag yet; an image (not a cache) at another: warnings, a normal build.
    let built = build(
        Some(&reg),
        root.path(),
        ctx.path(),
        "w:1",
        &[
            "--cache-from",
            &format!("type=registry,ref={}/cache/none:main", reg.host()),
            "--cache-from",
            &format!("type=registry,ref={base}"),
        ],
    );
    assert!(built.log.contains("no cache there yet"), "{}", built.log);
    assert!(
        built.log.contains("not a kiln build cache"),
        "{}",
        built.log
    );

    let dead = format!("127.0.0.1:{}/cache/app:main", free_port());
    let out = try_build(
        Some(&reg),
        root.path(),
        ctx.path(),
        "w:2",
        &["--cache-to", &format!("type=registry,ref={dead}")],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!("--cache-to {dead}")) && err.contains("is in the store"),
        "{err}"
    );
    let images = common::kiln_ok(root.path(), &["images"]);
    assert!(images.contains("w "), "the built image stays:\n{images}");

    let out = try_build(
        Some(&reg),
        root.path(),
        ctx.path(),
        "w:3",
        &[
            "--cache-to",
            &format!("type=registry,ref={dead},ignore-error=true"),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = try_build(
        Some(&reg),
        root.path(),
        ctx.path(),
        "w:4",
        &["--cache-to", "type=registry,ref=x,mode=all"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("--cache-to") && err.contains("mode=all"),
        "{err}"
    );
}

#[test]
fn local_cache_round_trips_and_drops_blobs_no_record_names() {
    common::require_root();
    let reg = Registry::start(AuthMode::None);
    let base = seed_base(&reg);
    let df = dockerfile(APP_DOCKERFILE, &base);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("cache");
    let to = format!("type=local,dest={}", dest.display());
    let from = format!("type=local,src={}", dest.display());
    let v1 = context(&[("Dockerfile", &df), ("app.txt", "v1\n")]);
    let (a, built_a) = runner_a(&reg, v1.path(), "app:1", &to, &[]);
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(dest.join("index.json")).unwrap()).unwrap();
    assert_eq!(
        index["manifests"][0]["artifactType"],
        "application/vnd.kiln.build-cache.v1"
    );
    let b = runner();
    let built_b = build(
        Some(&reg),
        b.path(),
        v1.path(),
        "app:1",
        &["--build-arg", "TOKEN=x", "--cache-from", &from],
    );
    assert_all_cached(&built_b.log);
    assert_eq!(built_b.id, built_a.id);

    // Export again after an edit: the blobs only the old cache named are gone.
    let blobs = |d: &Path| -> std::collections::BTreeSet<String> {
        fs::read_dir(d.join("blobs/sha256"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    let old = blobs(&dest);
    let v2 = context(&[("Dockerfile", &df), ("app.txt", "v2\n")]);
    build(
        Some(&reg),
        a.path(),
        v2.path(),
        "app:2",
        &["--build-arg", "TOKEN=x", "--cache-to", &to],
    );
    let new = blobs(&dest);
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(dest.join("index.json")).unwrap()).unwrap();
    let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(
        &fs::read(dest.join("blobs/sha256").join(&manifest_digest[7..])).unwrap(),
    )
    .unwrap();
    let mut named: std::collections::BTreeSet<String> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap()[7..].to_string())
        .collect();
    named.insert(manifest["config"]["digest"].as_str().unwrap()[7..].to_string());
    named.insert(manifest_digest[7..].to_string());
    assert_eq!(
        new, named,
        "the directory holds exactly what the cache names"
    );
    assert!(old.difference(&new).count() >= 2, "old blobs were removed");
}

#[test]
fn inline_cache_rides_in_the_pushed_image() {
    common::require_root();
    let reg = Registry::start(AuthMode::None);
    let base = seed_base(&reg);
    let df = dockerfile(APP_DOCKERFILE, &base);
    let ctx = context(&[("Dockerfile", &df), ("app.txt", "v1\n")]);
    let image = format!("{}/app/web:1", reg.host());
    let (_a, built_a) = runner_a(&reg, ctx.path(), &image, "type=inline", &["--push"]);
    let b = runner();
    let built_b = build(
        Some(&reg),
        b.path(),
        ctx.path(),
        &image,
        &[
            "--build-arg",
            "TOKEN=x",
            "--cache-from",
            &image,
            "--cache-to",
            "type=inline",
        ],
    );
    assert_all_cached(&built_b.log);
    // The records are part of the config: the same ones on both runners, the same image.
    assert_eq!(built_b.id, built_a.id);
    let manifest = blob_json(&reg, &tag_digest(&reg, "app/web", "1").unwrap());
    let config = blob_json(&reg, manifest["config"]["digest"].as_str().unwrap());
    let records = config["kiln.build-cache.v1"]["records"].as_array().unwrap();
    assert_eq!(records.len(), 3, "{config}");
    let layers: Vec<&str> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap())
        .collect();
    for r in records {
        assert!(
            layers.contains(&r["layer"]["digest"].as_str().unwrap()),
            "{r}"
        );
    }
}

#[test]
fn cache_mounts_follow_the_pipeline_to_runner_b() {
    common::require_root();
    let reg = Registry::start(AuthMode::None);
    let base = seed_base(&reg);
    let df = format!(
        "FROM {base}\nARG V\nRUN --mount=type=cache,target=/var/cache/pkgs,id=pkgs sh -c 'echo $V >> /var/cache/pkgs/log; cat /var/cache/pkgs/log > /seen'\n"
    );
    let ctx = context(&[("Dockerfile", &df)]);
    let cache = format!("{}/cache/mounts:main", reg.host());
    let a = runner();
    build(
        Some(&reg),
        a.path(),
        ctx.path(),
        "m:1",
        &[
            "--build-arg",
            "V=from-a",
            "--cache-to",
            &format!("type=registry,ref={cache},cache-mounts=true"),
        ],
    );
    // Runner B runs the step again (another V) and finds runner A's files in the cache mount.
    let b = runner();
    build(
        Some(&reg),
        b.path(),
        ctx.path(),
        "m:2",
        &[
            "--build-arg",
            "V=from-b",
            "--cache-from",
            &format!("type=registry,ref={cache}"),
        ],
    );
    let out = common::kiln_ok(b.path(), &["run", "--rm", "m:2", "cat", "/seen"]);
    assert_eq!(out, "from-a\nfrom-b\n");
    // Without cache-mounts=true the directory stays on its runner.
    let plain = format!("{}/cache/mounts:plain", reg.host());
    build(
        Some(&reg),
        a.path(),
        ctx.path(),
        "m:3",
        &[
            "--build-arg",
            "V=again",
            "--cache-to",
            &format!("type=registry,ref={plain}"),
        ],
    );
    let c = runner();
    build(
        Some(&reg),
        c.path(),
        ctx.path(),
        "m:4",
        &[
            "--build-arg",
            "V=from-c",
            "--cache-from",
            &format!("type=registry,ref={plain}"),
        ],
    );
    let out = common::kiln_ok(c.path(), &["run", "--rm", "m:4", "cat", "/seen"]);
    assert_eq!(out, "from-c\n");
}

#[test]
fn export_mounts_from_the_imported_cache_and_zstd_round_trips() {
    common::require_root();
    let reg = Registry::start(AuthMode::None);
    let base = seed_base(&reg);
    let df = dockerfile(APP_DOCKERFILE, &base);
    let ctx = context(&[("Dockerfile", &df), ("app.txt", "v1\n")]);
    let host = reg.host();
    let (_a, built_a) = runner_a(
        &reg,
        ctx.path(),
        "app:1",
        &format!("type=registry,ref={host}/cache/app:main"),
        &[],
    );
    // Runner B exports to another repository of the same registry: the layers are mounted from
    // the imported cache's repository, not uploaded again.
    let b = runner();
    let built_b = build(
        Some(&reg),
        b.path(),
        ctx.path(),
        "app:1",
        &[
            "--build-arg",
            "TOKEN=x",
            "--cache-from",
            &format!("type=registry,ref={host}/cache/app:main"),
            "--cache-to",
            &format!("type=registry,ref={host}/cache/branch:b,compression=zstd"),
        ],
    );
    assert_all_cached(&built_b.log);
    let (manifest, config) = cache_at(&reg, "cache/branch", "b");
    for l in manifest["layers"].as_array().unwrap() {
        assert_eq!(
            l["mediaType"], "application/vnd.oci.image.layer.v1.tar+zstd",
            "{manifest}"
        );
    }
    assert_eq!(config["records"].as_array().unwrap().len(), 3);
    let c = runner();
    let built_c = build(
        Some(&reg),
        c.path(),
        ctx.path(),
        "app:1",
        &[
            "--build-arg",
            "TOKEN=x",
            "--cache-from",
            &format!("type=registry,ref={host}/cache/app:main"),
            "--cache-to",
            &format!("type=registry,ref={host}/cache/branch:c"),
        ],
    );
    assert!(
        built_c.log.contains("blobs: 0 uploaded") || built_c.log.contains("blobs: 1 uploaded"),
        "only the config may be uploaded: {}",
        built_c.log
    );
    assert!(built_c.log.contains("3 mounted"), "{}", built_c.log);
    // A runner importing the zstd cache takes every step and makes the same image.
    let d = runner();
    let built_d = build(
        Some(&reg),
        d.path(),
        ctx.path(),
        "app:1",
        &[
            "--build-arg",
            "TOKEN=x",
            "--cache-from",
            &format!("type=registry,ref={host}/cache/branch:b"),
        ],
    );
    assert_all_cached(&built_d.log);
    assert_eq!(built_d.id, built_a.id);
    let out = common::kiln_ok(d.path(), &["run", "--rm", "app:1"]);
    assert_eq!(out, "v1\none\n");
}

/// The cache's layer digests (those its manifest lists).
fn cache_layers(reg: &Registry, repo: &str, tag: &str) -> Vec<String> {
    let (manifest, _) = cache_at(reg, repo, tag);
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

/// The registry's requests from `from` on that GET the blob `digest`.
fn blob_gets(reg: &Registry, from: usize, digest: &str) -> Vec<String> {
    reg.requests()[from..]
        .iter()
        .filter(|r| r.starts_with("GET ") && r.contains(&format!("/blobs/{digest} ")))
        .cloned()
        .collect()
}

#[test]
fn an_all_hit_build_downloads_no_layer_its_push_mounts_them_and_run_fetches_them_lazily() {
    common::require_root();
    let reg = Registry::start_logged(AuthMode::None);
    let host = reg.host();
    let base = seed_base(&reg);
    let df = dockerfile(APP_DOCKERFILE, &base);
    let ctx = context(&[("Dockerfile", &df), ("app.txt", "v1\n")]);
    let cache = format!("{host}/cache/app:main");
    let (_a, built_a) = runner_a(
        &reg,
        ctx.path(),
        "app:1",
        &format!("type=registry,ref={cache}"),
        &[],
    );
    let layers = cache_layers(&reg, "cache/app", "main");
    assert_eq!(layers.len(), 3, "{layers:?}");

    // Runner B: every step hits; the image is assembled from the cache's descriptors and
    // pushed to another repository of the same registry, which mounts the layers.
    let before = reg.requests().len();
    let b = runner();
    let image = format!("{host}/apps/app:1");
    let built_b = build(
        Some(&reg),
        b.path(),
        ctx.path(),
        &image,
        &[
            "--build-arg",
            "TOKEN=x",
            "--cache-from",
            &format!("type=registry,ref={cache}"),
            "--push",
        ],
    );
    assert_all_cached(&built_b.log);
    assert_eq!(built_b.id, built_a.id);
    let after_build = reg.requests().len();
    for d in &layers {
        assert!(
            blob_gets(&reg, before, d).is_empty(),
            "the layer {d} was downloaded: {:?}",
            &reg.requests()[before..]
        );
        assert!(
            !has_blob(b.path(), d),
            "the layer {d} is in runner B's store"
        );
        let mount = format!(
            "POST /v2/apps/app/blobs/uploads/?mount={}&from=cache%2Fapp 201",
            d.replace(':', "%3A")
        );
        assert!(
            reg.requests()[before..].contains(&mount),
            "no cross-repository mount of {d}: {:?}",
            &reg.requests()[before..]
        );
    }
    // Only the image config (not in the cache) is uploaded.
    let uploads: Vec<_> = reg.requests()[before..]
        .iter()
        .filter(|r| r.starts_with("PUT /v2/apps/app/blobs/uploads/"))
        .cloned()
        .collect();
    assert_eq!(uploads.len(), 1, "{uploads:?}");
    assert!(
        uploads[0].contains(&format!("digest={} ", built_b.id.replace(':', "%3A"))),
        "{uploads:?}"
    );
    // The pushed image is whole: another root pulls and runs it.
    let pulled = runner();
    let out = kiln_env(Some(&reg), pulled.path(), &["run", "--rm", &image]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "v1\none\n");

    // Something that needs the filesystem fetches the layers then, verified: `kiln run`.
    let mark = reg.requests().len();
    let out = kiln_env(Some(&reg), b.path(), &["run", "--rm", &image]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "v1\none\n");
    for d in &layers {
        assert_eq!(blob_gets(&reg, mark, d).len(), 1, "{d}");
        assert!(has_blob(b.path(), d));
    }
    assert!(after_build <= mark);
    assert_store_clean(b.path());

    // A later build on a runner with the lazy image, without --cache-from: its hits stand on
    // the remote layers, and the step after them fetches them.
    let c = runner();
    build(
        Some(&reg),
        c.path(),
        ctx.path(),
        "app:1",
        &[
            "--build-arg",
            "TOKEN=x",
            "--cache-from",
            &format!("type=registry,ref={cache}"),
        ],
    );
    for d in &layers {
        assert!(!has_blob(c.path(), d));
    }
    fs::write(
        ctx.path().join("Dockerfile.more"),
        format!("{df}RUN cat /copy /copy > /twice\n"),
    )
    .unwrap();
    let more = ctx.path().join("Dockerfile.more");
    let built_c = build(
        Some(&reg),
        c.path(),
        ctx.path(),
        "app:more",
        &["--build-arg", "TOKEN=x", "-f", more.to_str().unwrap()],
    );
    assert_eq!(
        outcome(&built_c.log, "RUN cat /app.txt /one > /copy"),
        "CACHED"
    );
    assert_eq!(
        outcome(&built_c.log, "RUN cat /copy /copy > /twice"),
        "DONE"
    );
    let out = kiln_env(
        Some(&reg),
        c.path(),
        &["run", "--rm", "app:more", "cat", "/twice"],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "v1\none\nv1\none\n");

    // `kiln save` of a lazy image fetches its layers and writes them: the archive loads and runs.
    let d = runner();
    build(
        Some(&reg),
        d.path(),
        ctx.path(),
        "app:1",
        &[
            "--build-arg",
            "TOKEN=x",
            "--cache-from",
            &format!("type=registry,ref={cache}"),
        ],
    );
    let tar = d.path().join("app.tar");
    common::kiln_ok(d.path(), &["save", "-o", tar.to_str().unwrap(), "app:1"]);
    let e = runner();
    common::kiln_ok(e.path(), &["load", "-i", tar.to_str().unwrap()]);
    let out = common::kiln_ok(e.path(), &["run", "--rm", "app:1"]);
    assert_eq!(out, "v1\none\n");
}

/// The `PUT` requests (from `from` on) that finished an upload of the blob `digest`, to any
/// repository.
fn blob_uploads(reg: &Registry, from: usize, digest: &str) -> Vec<String> {
    let query = format!("digest={} ", digest.replace(':', "%3A"));
    reg.requests()[from..]
        .iter()
        .filter(|r| r.starts_with("PUT ") && r.contains("/blobs/uploads/") && r.contains(&query))
        .cloned()
        .collect()
}

/// A builder stage whose layer is in no image (its file lands elsewhere in the image's).
const BUILDER_AND_APP: &str = "FROM BASE AS builder
RUN echo compiled > /artifact
FROM BASE
COPY --from=builder /artifact /app/artifact
CMD [\"cat\", \"/app/artifact\"]
";

#[test]
fn mode_max_sends_builder_layers_as_zstd_and_each_image_layer_once() {
    common::require_root();
    let reg = Registry::start_logged(AuthMode::None);
    let host = reg.host();
    let base = seed_base(&reg);
    let ctx = context(&[("Dockerfile", &dockerfile(BUILDER_AND_APP, &base))]);
    let cache = format!("{host}/cache/multi:max");
    let image = format!("{host}/apps/multi:1");
    let before = reg.requests().len();
    let a = runner();
    build(
        Some(&reg),
        a.path(),
        ctx.path(),
        &image,
        &[
            "--cache-to",
            &format!("type=registry,ref={cache},mode=max"),
            "--push",
        ],
    );
    // The cache holds the builder's RUN layer (in no image: zstd) and the final stage's COPY
    // layer (the image's: gzip, the very blob the push sent).
    let (manifest, _) = cache_at(&reg, "cache/multi", "max");
    let pushed = blob_json(&reg, &tag_digest(&reg, "apps/multi", "1").unwrap());
    let image_layers: Vec<String> = pushed["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(image_layers.len(), 2, "{pushed}");
    let copy_layer = &image_layers[1];
    let mut types: Vec<(bool, &str)> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["digest"] == copy_layer.as_str(),
                l["mediaType"].as_str().unwrap(),
            )
        })
        .collect();
    types.sort();
    assert_eq!(
        types,
        [
            (false, "application/vnd.oci.image.layer.v1.tar+zstd"),
            (true, "application/vnd.oci.image.layer.v1.tar+gzip")
        ],
        "{manifest}"
    );
    // Each blob of the build went up once: the layer both hold was mounted, not sent again.
    for d in cache_layers(&reg, "cache/multi", "max") {
        assert_eq!(
            blob_uploads(&reg, before, &d).len(),
            1,
            "{d}: {:?}",
            &reg.requests()[before..]
        );
    }
    assert!(
        reg.requests()[before..]
            .iter()
            .any(|r| r.starts_with("POST ")
                && r.contains(&format!("mount={}", copy_layer.replace(':', "%3A")))
                && r.ends_with(" 201")),
        "{:?}",
        &reg.requests()[before..]
    );

    // Runner B needs the builder's filesystem (its COPY takes another path): the zstd layer is
    // fetched, verified and read.
    let df_b = dockerfile(BUILDER_AND_APP, &base).replace("/app/artifact", "/copied");
    let ctx_b = context(&[("Dockerfile", &df_b)]);
    let b = runner();
    let built_b = build(
        Some(&reg),
        b.path(),
        ctx_b.path(),
        "multi:b",
        &["--cache-from", &format!("type=registry,ref={cache}")],
    );
    assert_eq!(
        outcome(&built_b.log, "RUN echo compiled > /artifact"),
        "CACHED"
    );
    assert_eq!(
        outcome(&built_b.log, "COPY --from=builder /artifact /copied"),
        "DONE"
    );
    let out = common::kiln_ok(b.path(), &["run", "--rm", "multi:b"]);
    assert_eq!(out, "compiled\n");
}

/// A COPY of a vendored tree (more files than a record keeps inline) and an app file.
const VENDOR_DOCKERFILE: &str = "FROM BASE
COPY vendor /src/vendor
COPY app.txt /src/app.txt
RUN ls /src/vendor | wc -l > /src/count
";

#[test]
fn a_long_file_list_rides_in_its_own_blob_sent_once_and_read_only_to_explain() {
    common::require_root();
    let reg = Registry::start_logged(AuthMode::None);
    let host = reg.host();
    let base = seed_base(&reg);
    let mut files: Vec<(String, String)> = (0..100)
        .map(|i| {
            (
                format!("vendor/m{}/f{i}.go", i % 7),
                format!("package m // {i}\n"),
            )
        })
        .collect();
    files.push(("app.txt".into(), "v1\n".into()));
    files.push(("Dockerfile".into(), dockerfile(VENDOR_DOCKERFILE, &base)));
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, t)| (p.as_str(), t.as_str()))
        .collect();
    let ctx = context(&refs);
    let cache = format!("{host}/cache/vendor:main");
    let to = format!("type=registry,ref={cache},mode=max");
    let from = format!("type=registry,ref={cache}");
    let image = format!("{host}/apps/vendor:1");
    let (_a, _built_a) = runner_a(&reg, ctx.path(), &image, &to, &[]);

    // The config keeps the vendor COPY's list as a descriptor; the manifest lists that blob.
    let (manifest, config) = cache_at(&reg, "cache/vendor", "main");
    let listed: Vec<(String, String)> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["mediaType"].as_str().unwrap().to_string(),
                l["digest"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let files_blobs: Vec<&String> = listed
        .iter()
        .filter(|(t, _)| t == "application/vnd.kiln.build-cache.files.v1+json")
        .map(|(_, d)| d)
        .collect();
    assert_eq!(files_blobs.len(), 1, "{manifest}");
    let files_blob = files_blobs[0].clone();
    let vendor_record = config["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["inputs"]["instruction"] == "COPY vendor /src/vendor")
        .expect("a record of the vendor COPY");
    assert_eq!(vendor_record["filesBlob"]["digest"], files_blob.as_str());
    assert_eq!(vendor_record["inputs"]["files"], serde_json::json!([]));
    let list = blob_json(&reg, &files_blob);
    assert!(
        list.as_array().unwrap().len() > 100,
        "the whole selection (files and directories): {list}"
    );
    let app_record = config["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["inputs"]["instruction"] == "COPY app.txt /src/app.txt")
        .unwrap();
    assert!(app_record.get("filesBlob").is_none(), "{app_record}");
    assert_eq!(app_record["inputs"]["files"][0][0], "app.txt");

    // Runner B after the app file changed: the list is neither read (the vendor COPY hits)
    // nor sent again (the imported cache lists it); the new cache names it still.
    fs::write(ctx.path().join("app.txt"), "v2\n").unwrap();
    let before_b = reg.requests().len();
    let b = runner();
    let built_b = build(
        Some(&reg),
        b.path(),
        ctx.path(),
        &image,
        &["--cache-from", &from, "--cache-to", &to],
    );
    assert_eq!(outcome(&built_b.log, "COPY vendor /src/vendor"), "CACHED");
    assert_eq!(outcome(&built_b.log, "COPY app.txt /src/app.txt"), "DONE");
    assert!(
        built_b.log.contains("1 file changed: app.txt"),
        "{}",
        built_b.log
    );
    assert_eq!(blob_gets(&reg, before_b, &files_blob), Vec::<String>::new());
    assert_eq!(
        blob_uploads(&reg, before_b, &files_blob),
        Vec::<String>::new()
    );
    let (manifest_b, _) = cache_at(&reg, "cache/vendor", "main");
    assert!(
        manifest_b["layers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["digest"] == files_blob.as_str()),
        "{manifest_b}"
    );

    // Runner C after a vendored file changed: the list is fetched to say which file.
    fs::write(
        ctx.path().join("vendor/m3/f10.go"),
        "package m // changed\n",
    )
    .unwrap();
    let before_c = reg.requests().len();
    let c = runner();
    let built_c = build(
        Some(&reg),
        c.path(),
        ctx.path(),
        &image,
        &["--cache-from", &from, "--cache-to", &to],
    );
    assert!(
        built_c.log.contains("the cache from")
            && built_c.log.contains("1 file changed: vendor/m3/f10.go"),
        "{}",
        built_c.log
    );
    assert_eq!(blob_gets(&reg, before_c, &files_blob).len(), 1);
    // Its export sends the new list (another blob), once.
    let (_, config_c) = cache_at(&reg, "cache/vendor", "main");
    let new_blob = config_c["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["inputs"]["instruction"] == "COPY vendor /src/vendor")
        .unwrap()["filesBlob"]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(new_blob, files_blob);
    assert_eq!(blob_uploads(&reg, before_c, &new_blob).len(), 1);
}
