//! BuildKit's InvalidBaseImagePlatform (issue 12): a single-platform base image whose config
//! names another platform than the build's is built on all the same, with BuildKit's warning
//! after the build (testdata/docker/invalid-base-image-platform.txt has Docker 28.5's answer).
mod build_support;
mod common;

use build_support::*;

/// Docker's summary line, for a base named `name`.
fn recorded_summary_line(name: &str) -> String {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata/docker/invalid-base-image-platform.txt"),
    )
    .unwrap();
    text.lines()
        .find(|l| l.starts_with(" - InvalidBaseImagePlatform:"))
        .unwrap()
        .replace("127.0.0.1:5000/h12front-bb:arm64", name)
}

#[test]
fn a_base_of_another_platform_builds_with_buildkits_warning() {
    let root = root_with_busybox();
    let r = root.path();
    let host = kiln::platform::Platform::host();
    let other = if host.architecture == "amd64" {
        "linux/arm64"
    } else {
        "linux/amd64"
    };
    let tar = common::busybox_tar();
    common::kiln_ok(
        r,
        &[
            "import",
            "-q",
            "--platform",
            other,
            tar.to_str().unwrap(),
            "bbother",
        ],
    );
    // The binaries are this machine's whatever the config says: RUN runs for the build's
    // platform, as BuildKit's does.
    let ctx = context(&[("Dockerfile", "FROM bbother\nRUN echo hi > /x\n")]);
    let (_, err) = build_ok(r, &["-t", "built", ctx.path().to_str().unwrap()]);
    let expected = format!(
        " - InvalidBaseImagePlatform: Base image bbother was pulled with platform \"{other}\", \
         expected \"{host}\" for current build (line 1)"
    );
    assert!(err.contains(&expected), "{err}");
    if host.architecture == "amd64" {
        assert!(err.contains(&recorded_summary_line("bbother")), "{err}");
    }
    assert!(err.contains("1 warning found"), "{err}");
    assert_eq!(
        std::fs::read_to_string(rootfs_of(r, "built").path().join("x")).unwrap(),
        "hi\n"
    );
    // The config keeps the base's platform, as Docker's image does.
    let config = config_of(r, "built");
    assert_eq!(
        format!(
            "{}/{}",
            config["os"].as_str().unwrap(),
            config["architecture"].as_str().unwrap()
        ),
        other
    );

    // Skipped as any rule.
    let ctx = context(&[(
        "Dockerfile",
        "# check=skip=InvalidBaseImagePlatform\nFROM bbother\nRUN echo hi > /x\n",
    )]);
    let (_, err) = build_ok(r, &[ctx.path().to_str().unwrap()]);
    assert!(!err.contains("InvalidBaseImagePlatform"), "{err}");

    // error=true: the build stops at the FROM.
    let ctx = context(&[(
        "Dockerfile",
        "# check=error=true\nFROM bbother\nRUN echo hi > /x\n",
    )]);
    let out = build(r, &[ctx.path().to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(
            "Dockerfile:2: FROM bbother: lint violation found for rules: InvalidBaseImagePlatform"
        ),
        "{err}"
    );

    // A base of this machine's platform gets no warning.
    let ctx = context(&[("Dockerfile", "FROM busybox\nRUN echo hi > /x\n")]);
    let (_, err) = build_ok(r, &[ctx.path().to_str().unwrap()]);
    assert!(!err.contains("InvalidBaseImagePlatform"), "{err}");
}
