//! Push and pull through real registries (Debian's docker-registry) in each auth mode, checked
//! from the outside with skopeo.

mod common;
mod registry_support;

use std::path::Path;
use std::process::Output;

use common::{kiln, kiln_ok, temp_root};
use registry_support::*;

/// kiln with a config file of our own (no mirrors unless given) and no credentials from the
/// environment or a Docker config.
fn kiln_env(root: &Path, config: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut cmd = common::kiln_command();
    cmd.arg("--root").arg(root).args(args);
    cmd.env("KILN_CONFIG", config)
        .env("DOCKER_CONFIG", root.join("no-docker-config"))
        .env_remove("KILN_REGISTRY_USER")
        .env_remove("KILN_REGISTRY_PASSWORD")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed:\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn empty_config(root: &Path) -> std::path::PathBuf {
    let p = root.join("kiln-config.toml");
    std::fs::write(&p, "").unwrap();
    p
}

/// skopeo pushes a fixture; kiln pulls it, pushes it to another repository (mounted) and,
/// in chunks, to a third; skopeo sees the same digests; a fresh root pulls them back.
fn round_trip(mode: AuthMode) {
    let reg = Registry::start(mode);
    let fx = Fixture::image(mode as u64 + 1, &[20_000, 150_000]);
    fx.push_with_skopeo(&reg, "src/app:1");
    let host = reg.host();
    let root = temp_root();
    let cfg = empty_config(root.path());
    let r = root.path();
    if mode != AuthMode::None {
        // Without a login the registry refuses.
        let out = kiln_env(r, &cfg, &["pull", &format!("{host}/src/app:1")], None);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("refused") || err.contains("login"), "{err}");
        let out = kiln_env(
            r,
            &cfg,
            &["login", "-u", USER, "--password-stdin", &host],
            Some(&format!("{PASSWORD}\n")),
        );
        ok(out, "kiln login");
        let auth = std::fs::read_to_string(r.join("auth.json")).unwrap();
        assert!(!auth.contains(PASSWORD), "the password is stored in clear");
    }
    let out = ok(
        kiln_env(r, &cfg, &["pull", &format!("{host}/src/app:1")], None),
        "kiln pull",
    );
    assert!(out.contains(&fx.manifest_digests[0]), "{out}");
    assert!(out.contains(&fx.config_digests[0]), "{out}");
    assert_store_clean(r);

    // Same registry, other repository: the blobs are mounted, not uploaded.
    let out = kiln_env(
        r,
        &cfg,
        &[
            "push",
            &format!("{host}/src/app:1"),
            &format!("{host}/dst/app:2"),
        ],
        None,
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let digest = ok(out, "kiln push");
    assert_eq!(digest.trim(), fx.manifest_digests[0]);
    assert!(stderr.contains("mounted from src/app"), "{stderr}");
    let (d, config) = skopeo_inspect(&reg, "dst/app:2");
    assert_eq!(d, fx.manifest_digests[0]);
    assert_eq!(sha256(&config), fx.config_digests[0]);

    // Pushing again skips every blob.
    let out = kiln_env(
        r,
        &cfg,
        &[
            "push",
            &format!("{host}/src/app:1"),
            &format!("{host}/dst/app:2"),
        ],
        None,
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    ok(out, "kiln push again");
    assert_eq!(stderr.matches("already exists").count(), 3, "{stderr}");

    // A second registry with the same auth: real uploads, chunked.
    let reg2 = Registry::start(mode);
    let host2 = reg2.host();
    if mode != AuthMode::None {
        ok(
            kiln_env(
                r,
                &cfg,
                &["login", "-u", USER, "--password-stdin", &host2],
                Some(PASSWORD),
            ),
            "kiln login 2",
        );
    }
    let dest2 = format!("{host2}/chunked/app:3");
    let out = ok(
        kiln_env(
            r,
            &cfg,
            &[
                "push",
                "--chunk-size",
                "65536",
                &format!("{host}/src/app:1"),
                &dest2,
            ],
            None,
        ),
        "kiln push chunked",
    );
    assert_eq!(out.trim(), fx.manifest_digests[0]);
    let (d, config) = skopeo_inspect(&reg2, "chunked/app:3");
    assert_eq!(d, fx.manifest_digests[0]);
    assert_eq!(sha256(&config), fx.config_digests[0]);

    // A fresh root pulls back exactly what was pushed.
    let root2 = temp_root();
    let r2 = root2.path();
    if mode != AuthMode::None {
        ok(
            kiln_env(
                r2,
                &cfg,
                &["login", "-u", USER, "--password-stdin", &host2],
                Some(PASSWORD),
            ),
            "kiln login 3",
        );
    }
    let tokens_before = reg2.token_requests();
    let out = ok(
        kiln_env(r2, &cfg, &["pull", "-q", &dest2], None),
        "kiln pull back",
    );
    if mode == AuthMode::Token {
        // One token serves the manifest, the config and both layers (fetched in parallel).
        assert_eq!(reg2.token_requests() - tokens_before, 1);
    }
    assert_eq!(out.trim(), fx.manifest_digests[0]);
    assert!(has_blob(r2, &fx.config_digests[0]));
    assert_store_clean(r2);
    if mode == AuthMode::Token {
        assert!(reg.token_requests() > 0);
    }
}

#[test]
fn registry_round_trip_without_auth() {
    round_trip(AuthMode::None);
}

#[test]
fn registry_round_trip_with_basic_auth() {
    round_trip(AuthMode::Basic);
}

#[test]
fn registry_round_trip_with_token_auth() {
    round_trip(AuthMode::Token);
}

#[test]
fn registry_multi_platform_index_picks_linux_amd64() {
    let reg = Registry::start(AuthMode::None);
    let fx = Fixture::multi_platform(77);
    fx.push_with_skopeo(&reg, "multi/app:1");
    let root = temp_root();
    let cfg = empty_config(root.path());
    let name = format!("{}/multi/app:1", reg.host());
    let out = ok(
        kiln_env(root.path(), &cfg, &["pull", &name], None),
        "kiln pull index",
    );
    // Index digest resolved, amd64 (the second entry) stored.
    assert!(out.contains(&fx.top_digest), "{out}");
    assert!(out.contains(&fx.manifest_digests[1]), "{out}");
    assert!(has_blob(root.path(), &fx.config_digests[1]));
    assert!(!has_blob(root.path(), &fx.config_digests[0]));
    let out = ok(
        kiln_env(
            root.path(),
            &cfg,
            &["pull", "-q", "--platform", "linux/arm64", &name],
            None,
        ),
        "kiln pull arm64",
    );
    assert_eq!(out.trim(), fx.manifest_digests[0]);
    let out = kiln_env(
        root.path(),
        &cfg,
        &["pull", "--platform", "linux/s390x", &name],
        None,
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no image for platform linux/s390x") && err.contains("linux/amd64"),
        "{err}"
    );
    assert_store_clean(root.path());
}

#[test]
fn registry_docker_io_name_resolves_through_mirror() {
    let reg = Registry::start(AuthMode::None);
    let fx = Fixture::image(91, &[5000]);
    fx.push_with_skopeo(&reg, "library/kilnmirrortest:1");
    let root = temp_root();
    let cfg = root.path().join("mirror.toml");
    // The first mirror is down: kiln goes on to the next one.
    let dead = free_port();
    std::fs::write(
        &cfg,
        format!(
            "registry-mirrors = [\"http://127.0.0.1:{dead}\", \"http://{}\"]\n",
            reg.host()
        ),
    )
    .unwrap();
    let out = ok(
        kiln_env(root.path(), &cfg, &["pull", "kilnmirrortest:1"], None),
        "kiln pull via mirror",
    );
    assert!(out.contains("docker.io/library/kilnmirrortest:1"), "{out}");
    assert!(out.contains(&fx.manifest_digests[0]), "{out}");
    assert_store_clean(root.path());
}

#[test]
fn registry_login_with_wrong_password_fails_and_saves_nothing() {
    for mode in [AuthMode::Basic, AuthMode::Token] {
        let reg = Registry::start(mode);
        let root = temp_root();
        let cfg = empty_config(root.path());
        let out = kiln_env(
            root.path(),
            &cfg,
            &["login", "-u", USER, "--password-stdin", &reg.host()],
            Some("wrong-password"),
        );
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("refused") && err.contains(USER),
            "{mode:?}: {err}"
        );
        assert!(
            !err.contains("wrong-password"),
            "the password leaked: {err}"
        );
        assert!(!root.path().join("auth.json").exists());
        let _ = kiln(root.path(), &["logout", &reg.host()]);
        let _ = kiln_ok;
    }
}

#[test]
fn registry_docker_schema2_manifest_round_trips() {
    let reg = Registry::start(AuthMode::None);
    let fx = Fixture::image(33, &[4000]);
    fx.push_with_skopeo_as(&reg, "docker/app:1", Some("v2s2"));
    let (source_digest, _) = skopeo_inspect(&reg, "docker/app:1");
    assert_ne!(
        source_digest, fx.manifest_digests[0],
        "skopeo converted the manifest"
    );
    let root = temp_root();
    let cfg = empty_config(root.path());
    let host = reg.host();
    let out = ok(
        kiln_env(
            root.path(),
            &cfg,
            &["pull", "-q", &format!("{host}/docker/app:1")],
            None,
        ),
        "kiln pull v2s2",
    );
    assert_eq!(out.trim(), source_digest);
    let manifest =
        std::fs::read(root.path().join("blobs/sha256").join(&source_digest[7..])).unwrap();
    assert!(String::from_utf8_lossy(&manifest)
        .contains("application/vnd.docker.distribution.manifest.v2+json"));
    let out = ok(
        kiln_env(
            root.path(),
            &cfg,
            &[
                "push",
                "-q",
                &format!("{host}/docker/app:1"),
                &format!("{host}/docker/copy:1"),
            ],
            None,
        ),
        "kiln push v2s2",
    );
    assert_eq!(out.trim(), source_digest);
    let (d, config) = skopeo_inspect(&reg, "docker/copy:1");
    assert_eq!(d, source_digest);
    assert_eq!(sha256(&config), fx.config_digests[0]);
}
