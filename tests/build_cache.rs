//! The build cache through the real binary: what hits, what misses, and the explanations.
mod build_support;
mod common;

use build_support::*;

const DOCKERFILE: &str = "FROM busybox:latest\nARG VERSION=1\nRUN echo v$VERSION > /version.txt\nWORKDIR /app\nCOPY . /app\nRUN ls /app > /listing.txt\n";

fn cached(stderr: &str) -> usize {
    stderr.lines().filter(|l| l.ends_with(" CACHED")).count()
}

fn setup() -> (tempfile::TempDir, tempfile::TempDir) {
    let root = root_with_busybox();
    let ctx = context(&[
        ("Dockerfile", DOCKERFILE),
        ("app.js", "one\n"),
        ("src/lib.js", "lib\n"),
        (".dockerignore", "ignored/\n"),
        ("ignored/x", "1\n"),
    ]);
    (root, ctx)
}

#[test]
fn edit_touch_arg_and_ignored_changes() {
    let (root, ctx) = setup();
    let c = ctx.path().to_str().unwrap();
    let (_, err) = build_ok(root.path(), &["-t", "c", c]);
    assert_eq!(cached(&err), 0, "{err}");
    let first = image_id(root.path(), "c");

    // Touching a file (new mtime, same content) changes nothing.
    let f = std::fs::File::options()
        .write(true)
        .open(ctx.path().join("app.js"))
        .unwrap();
    f.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(3600))
        .unwrap();
    drop(f);
    let (_, err) = build_ok(root.path(), &["-t", "c", c]);
    assert_eq!(cached(&err), 4, "{err}");
    assert_eq!(image_id(root.path(), "c"), first);

    // A change under a .dockerignore'd directory changes nothing either.
    std::fs::write(ctx.path().join("ignored/x"), "2\n").unwrap();
    let (_, err) = build_ok(root.path(), &["-t", "c", c]);
    assert_eq!(cached(&err), 4, "{err}");

    // An edited file: the COPY and what follows re-run, and the miss says why.
    std::fs::write(ctx.path().join("app.js"), "two\n").unwrap();
    let (_, err) = build_ok(root.path(), &["-t", "c", c]);
    assert_eq!(cached(&err), 2, "{err}");
    assert!(
        err.contains("cache miss: COPY . /app: 1 file changed: app.js"),
        "{err}"
    );
    assert!(
        err.contains("cache miss: RUN ls /app > /listing.txt: a previous step changed"),
        "{err}"
    );
    assert_ne!(image_id(root.path(), "c"), first);

    // A changed build arg re-runs the RUN that sees it (and everything after it).
    let (_, err) = build_ok(root.path(), &["-t", "c", "--build-arg", "VERSION=2", c]);
    assert!(
        err.contains("RUN echo v$VERSION > /version.txt: build arg VERSION changed"),
        "{err}"
    );
    assert_eq!(cached(&err), 0, "{err}");
    let fs = rootfs_of(root.path(), "c");
    assert_eq!(
        std::fs::read_to_string(fs.path().join("version.txt")).unwrap(),
        "v2\n"
    );

    // --no-cache runs everything.
    let (_, err) = build_ok(root.path(), &["-t", "c", "--no-cache", c]);
    assert_eq!(cached(&err), 0, "{err}");
}

#[test]
fn explain_in_quiet_modes_and_rawjson_events() {
    let (root, ctx) = setup();
    let c = ctx.path().to_str().unwrap();
    build_ok(root.path(), &["-t", "c", c]);
    std::fs::write(ctx.path().join("src/lib.js"), "changed\n").unwrap();
    let out = common::kiln(
        root.path(),
        &["build", "--progress", "rawjson", "--explain", "-t", "c", c],
    );
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mut saw_explain = false;
    for line in stderr.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON: {line}: {e}"));
        if v["event"] == "explain" {
            saw_explain |= v["reason"]
                .as_str()
                .unwrap()
                .contains("1 file changed: src/lib.js");
        }
    }
    assert!(saw_explain, "{stderr}");
    // -q: only the image ID on stdout, nothing on stderr.
    let out = common::kiln(root.path(), &["build", "-q", "-t", "c", c]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.trim(), image_id(root.path(), "c"));
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn no_cache_filter_reruns_only_that_stage() {
    let root = root_with_busybox();
    let ctx = context(&[("Dockerfile", "FROM busybox:latest AS deps\nRUN echo deps > /deps\nFROM busybox:latest AS app\nCOPY --from=deps /deps /deps\nRUN echo app > /app\n")]);
    let c = ctx.path().to_str().unwrap();
    build_ok(root.path(), &["-t", "f", c]);
    let (_, err) = build_ok(root.path(), &["-t", "f", "--no-cache-filter", "app", c]);
    assert!(
        err.contains("cache miss: RUN echo app > /app: --no-cache"),
        "{err}"
    );
    assert!(!err.contains("cache miss: RUN echo deps"), "{err}");
    assert_eq!(cached(&err), 1, "{err}");
}

/// Proxy build args reach RUN without an ARG line, and stay out of the cache key and the history
/// (BuildKit's rule): changing the proxy does not rebuild anything.
#[test]
fn proxy_build_args_reach_run_but_not_the_key_or_history() {
    let root = root_with_busybox();
    let ctx = context(&[("Dockerfile", "FROM busybox:latest\nRUN env > /env.txt\n")]);
    let c = ctx.path().to_str().unwrap();
    let proxy = |v: &str| format!("HTTP_PROXY={v}");
    let first = proxy("http://127.0.0.1:3128");
    build_ok(root.path(), &["-t", "p", "--build-arg", &first, c]);
    let env = std::fs::read_to_string(rootfs_of(root.path(), "p").path().join("env.txt")).unwrap();
    assert!(env.lines().any(|l| l == first), "{env}");
    let history = config_of(root.path(), "p")["history"].to_string();
    assert!(!history.contains("PROXY"), "{history}");
    let second = proxy("http://127.0.0.1:8080");
    let (_, err) = build_ok(root.path(), &["-t", "p", "--build-arg", &second, c]);
    assert_eq!(cached(&err), 1, "a proxy change must not rebuild:\n{err}");
}
