//! `kiln build` end to end, as root, through the real binary: busybox base, RUN in the sandbox,
//! COPY from the context, the image config, the cache.
mod build_support;
mod common;

use build_support::*;

#[test]
fn tiny_build_and_noop_rebuild() {
    let root = root_with_busybox();
    let ctx = context(&[
        ("Dockerfile", "FROM busybox:latest\nRUN echo hello > /hello.txt\nENV APP_NAME=app.js\nWORKDIR /app\nCOPY . /app\nEXPOSE 8080\nCMD [\"cat\", \"/hello.txt\"]\n"),
        ("app.js", "console.log(1)\n"),
    ]);
    let c = ctx.path().to_str().unwrap();
    let (_, err) = build_ok(root.path(), &["-t", "tiny", c]);
    assert!(err.contains("RUN echo hello"), "{err}");
    let cfg = config_of(root.path(), "tiny");
    assert_eq!(cfg["config"]["WorkingDir"], "/app");
    assert_eq!(
        cfg["config"]["Cmd"],
        serde_json::json!(["cat", "/hello.txt"])
    );
    assert_eq!(
        cfg["config"]["ExposedPorts"],
        serde_json::json!({"8080/tcp": {}})
    );
    let fs = rootfs_of(root.path(), "tiny");
    assert_eq!(
        std::fs::read_to_string(fs.path().join("hello.txt")).unwrap(),
        "hello\n"
    );
    assert_eq!(
        std::fs::read_to_string(fs.path().join("app/app.js")).unwrap(),
        "console.log(1)\n"
    );
    let id = image_id(root.path(), "tiny");
    let (_, err) = build_ok(root.path(), &["-t", "tiny", c]);
    assert!(
        !err.contains("DONE") || err.matches("CACHED").count() >= 3,
        "{err}"
    );
    assert_eq!(
        image_id(root.path(), "tiny"),
        id,
        "a no-op rebuild gives the same image"
    );
}

/// Not a test: seeds `$KILN_SEED_ROOT` with busybox:latest for manual runs and benchmarks
/// (`KILN_SEED_ROOT=/tmp/r [KILN_SEED_TAR=rootfs.tar] cargo test --test build_e2e seed_root --
/// --ignored`).
#[test]
#[ignore]
fn seed_root() {
    if let Ok(root) = std::env::var("KILN_SEED_ROOT") {
        std::fs::create_dir_all(&root).unwrap();
        match std::env::var("KILN_SEED_TAR") {
            Ok(tar) => import_busybox_from(std::path::Path::new(&root), std::path::Path::new(&tar)),
            Err(_) => import_busybox(std::path::Path::new(&root)),
        }
    }
}
