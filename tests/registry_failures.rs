//! Pulls that must fail cleanly: unknown repository, missing tag, corrupted bytes, a registry
//! that goes away mid-transfer. Each gives one clear error and leaves the store whole.

mod common;
mod registry_support;

use std::path::Path;
use std::process::Output;

use common::temp_root;
use registry_support::*;

fn kiln_cfg(root: &Path, args: &[&str], envs: &[(&str, &str)]) -> Output {
    let cfg = root.join("kiln-config.toml");
    if !cfg.exists() {
        std::fs::write(&cfg, "").unwrap();
    }
    let mut cmd = common::kiln_command();
    cmd.arg("--root")
        .arg(root)
        .args(args)
        .env("KILN_CONFIG", &cfg);
    cmd.env("DOCKER_CONFIG", root.join("no-docker-config"));
    cmd.env_remove("KILN_REGISTRY_USER")
        .env_remove("KILN_REGISTRY_PASSWORD")
        .env_remove("KILN_REGISTRY_HOST");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn fails(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "expected a failure, got stdout {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!err.contains("panicked"), "{err}");
    eprintln!("expected error: {err}");
    err
}

#[test]
fn registry_unknown_repository_and_missing_tag() {
    let reg = Registry::start(AuthMode::None);
    let fx = Fixture::image(5, &[1000]);
    fx.push_with_skopeo(&reg, "known/app:1");
    let root = temp_root();
    let err = fails(&kiln_cfg(
        root.path(),
        &["pull", &format!("{}/nosuch/repo:1", reg.host())],
        &[],
    ));
    assert!(
        err.contains("not found") && err.contains("nosuch/repo"),
        "{err}"
    );
    let err = fails(&kiln_cfg(
        root.path(),
        &["pull", &format!("{}/known/app:nosuchtag", reg.host())],
        &[],
    ));
    assert!(
        err.contains("not found") && err.contains("nosuchtag"),
        "{err}"
    );
    let missing = format!("{}/known/app@sha256:{}", reg.host(), "ab".repeat(32));
    let err = fails(&kiln_cfg(root.path(), &["pull", &missing], &[]));
    assert!(err.contains("not found"), "{err}");
    // A registry nobody listens on.
    let err = fails(&kiln_cfg(
        root.path(),
        &["pull", &format!("127.0.0.1:{}/x:1", free_port())],
        &[],
    ));
    assert!(
        err.contains("failed after") && err.contains("attempts"),
        "{err}"
    );
    assert_store_clean(root.path());
}

#[test]
fn registry_corrupted_layer_never_lands() {
    let reg = Registry::start(AuthMode::None);
    let fx = Fixture::image(6, &[4000, 300_000]);
    fx.push_with_skopeo(&reg, "corrupt/app:1");
    let layer = &fx.layers[1];
    let needle = layer[layer.len() / 2..layer.len() / 2 + 32].to_vec();
    let proxy = Proxy::start(reg.port, needle, Sabotage::Corrupt);
    let root = temp_root();
    let err = fails(&kiln_cfg(
        root.path(),
        &["pull", &format!("127.0.0.1:{}/corrupt/app:1", proxy.port)],
        &[],
    ));
    let layer_digest = sha256(layer);
    assert!(
        err.contains(&layer_digest) && err.contains("does not match"),
        "{err}"
    );
    assert!(!has_blob(root.path(), &layer_digest));
    assert!(
        !has_blob(root.path(), &fx.manifest_digests[0]),
        "the manifest landed without its layers"
    );
    assert_store_clean(root.path());
    // Straight from the registry, the same pull completes.
    let out = kiln_cfg(
        root.path(),
        &["pull", "-q", &format!("{}/corrupt/app:1", reg.host())],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(has_blob(root.path(), &layer_digest));
    assert_store_clean(root.path());
}

#[test]
fn registry_corrupted_manifest_is_refused() {
    let reg = Registry::start(AuthMode::None);
    let fx = Fixture::image(8, &[1000]);
    fx.push_with_skopeo(&reg, "corrupt/manifest:1");
    // The manifest's config digest appears only in the manifest body.
    let proxy = Proxy::start(
        reg.port,
        fx.config_digests[0].as_bytes().to_vec(),
        Sabotage::Corrupt,
    );
    let root = temp_root();
    let err = fails(&kiln_cfg(
        root.path(),
        &[
            "pull",
            &format!("127.0.0.1:{}/corrupt/manifest:1", proxy.port),
        ],
        &[],
    ));
    assert!(err.contains("failed verification"), "{err}");
    assert!(!has_blob(root.path(), &fx.manifest_digests[0]));
    assert_store_clean(root.path());
}

#[test]
fn registry_that_goes_away_mid_transfer_leaves_nothing_partial() {
    let reg = Registry::start(AuthMode::None);
    let fx = Fixture::image(7, &[2_000_000]);
    fx.push_with_skopeo(&reg, "cut/app:1");
    let layer = &fx.layers[0];
    let needle = layer[layer.len() / 2..layer.len() / 2 + 32].to_vec();
    let proxy = Proxy::start(reg.port, needle, Sabotage::Cut);
    let root = temp_root();
    let err = fails(&kiln_cfg(
        root.path(),
        &["pull", &format!("127.0.0.1:{}/cut/app:1", proxy.port)],
        &[],
    ));
    let layer_digest = sha256(layer);
    assert!(
        err.contains(&layer_digest) && err.contains("nothing was stored"),
        "{err}"
    );
    assert!(!has_blob(root.path(), &layer_digest));
    assert_store_clean(root.path());
    let out = kiln_cfg(
        root.path(),
        &["pull", "-q", &format!("{}/cut/app:1", reg.host())],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        fx.manifest_digests[0]
    );
    assert_store_clean(root.path());
}

#[test]
fn registry_credentials_from_environment_and_docker_config() {
    let reg = Registry::start(AuthMode::Basic);
    let fx = Fixture::image(9, &[1000]);
    fx.push_with_skopeo(&reg, "creds/app:1");
    let name = format!("{}/creds/app:1", reg.host());
    // CI-style environment variables.
    let root = temp_root();
    let out = kiln_cfg(
        root.path(),
        &["pull", "-q", &name],
        &[
            ("KILN_REGISTRY_USER", USER),
            ("KILN_REGISTRY_PASSWORD", PASSWORD),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Restricted to another host, they do not apply.
    let root = temp_root();
    let err = fails(&kiln_cfg(
        root.path(),
        &["pull", &name],
        &[
            ("KILN_REGISTRY_USER", USER),
            ("KILN_REGISTRY_PASSWORD", PASSWORD),
            ("KILN_REGISTRY_HOST", "other.example"),
        ],
    ));
    assert!(err.contains("login"), "{err}");
    // A wrong password from the environment: a clear error without the password.
    let err = fails(&kiln_cfg(
        root.path(),
        &["pull", &name],
        &[
            ("KILN_REGISTRY_USER", USER),
            ("KILN_REGISTRY_PASSWORD", "nope-wrong"),
        ],
    ));
    assert!(
        err.contains("authentication failed") && !err.contains("nope-wrong"),
        "{err}"
    );
    // Docker's config.json, as `docker login` leaves it.
    let docker = tempfile::tempdir().unwrap();
    let auth = base64_encode(&format!("{USER}:{PASSWORD}"));
    std::fs::write(
        docker.path().join("config.json"),
        format!(
            r#"{{"auths":{{"http://{}":{{"auth":"{auth}"}}}}}}"#,
            reg.host()
        ),
    )
    .unwrap();
    let root = temp_root();
    let out = kiln_cfg(
        root.path(),
        &["pull", "-q", &name],
        &[("DOCKER_CONFIG", docker.path().to_str().unwrap())],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        fx.manifest_digests[0]
    );
}

fn base64_encode(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[test]
fn registry_pull_killed_mid_transfer_then_next_pull_completes() {
    let reg = Registry::start(AuthMode::None);
    let fx = Fixture::image(12, &[1_500_000]);
    fx.push_with_skopeo(&reg, "killed/app:1");
    let layer = &fx.layers[0];
    let needle = layer[layer.len() / 2..layer.len() / 2 + 32].to_vec();
    let proxy = Proxy::start(reg.port, needle, Sabotage::Stall);
    let root = temp_root();
    std::fs::write(root.path().join("kiln-config.toml"), "").unwrap();
    let mut child = common::kiln_command()
        .arg("--root")
        .arg(root.path())
        .args([
            "pull",
            "-q",
            &format!("127.0.0.1:{}/killed/app:1", proxy.port),
        ])
        .env("KILN_CONFIG", root.path().join("kiln-config.toml"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !proxy.triggered.load(std::sync::atomic::Ordering::SeqCst) {
        assert!(
            std::time::Instant::now() < deadline,
            "the pull never reached the layer"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    child.kill().unwrap();
    child.wait().unwrap();
    let layer_digest = sha256(layer);
    assert!(
        !has_blob(root.path(), &layer_digest),
        "a half-downloaded layer landed"
    );
    drop(proxy);
    // The next kiln cleans what the killed one left in tmp/ and completes the pull.
    let out = kiln_cfg(
        root.path(),
        &["pull", "-q", &format!("{}/killed/app:1", reg.host())],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        fx.manifest_digests[0]
    );
    assert!(has_blob(root.path(), &layer_digest));
    assert_store_clean(root.path());
}

#[test]
fn docker_hub_is_refused_outright_in_the_tests() {
    // The test helpers set KILN_LOOPBACK_REGISTRIES_ONLY: a name that is not local fails at
    // once, naming the guard, instead of reaching for Docker Hub.
    let root = temp_root();
    for args in [&["pull", "busybox:1.36"][..], &["pull", "ghcr.io/x/y:1"]] {
        let err = fails(&kiln_cfg(root.path(), args, &[]));
        assert!(
            err.contains("refusing to contact") && err.contains("KILN_LOOPBACK_REGISTRIES_ONLY"),
            "{err}"
        );
    }
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM alpine:3.20\nRUN true\n",
    )
    .unwrap();
    let err = fails(&kiln_cfg(
        root.path(),
        &["build", ctx.path().to_str().unwrap()],
        &[],
    ));
    assert!(
        err.contains("FROM alpine:3.20")
            && err.contains("refusing to contact registry-1.docker.io"),
        "{err}"
    );
}
