//! Multi-platform images: per-platform busybox bases (the host's and Debian's
//! `busybox-static:arm64`) joined into an index, a two-platform build with a RUN in each (arm64
//! emulated through qemu-user-static), its index in the store, its outputs, a push to a loopback
//! registry read back by skopeo, pulls per platform; a cross-compiling builder stage that runs
//! once; and the errors. Tests that need arm64 emulation skip, saying why, when binfmt_misc or
//! qemu-user-static is missing and cannot be set up (`kiln binfmt --install` needs root).

mod common;
mod registry_support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use registry_support::*;

/// The arm64 busybox rootfs tarball, made once from Debian's `busybox-static:arm64` package
/// (`apt-get download`, `dpkg-deb -x`); `None` (with the reason) when the package cannot be had.
fn arm64_busybox_tar() -> Result<PathBuf, String> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-fixtures");
    fs::create_dir_all(&dir).unwrap();
    let tar = dir.join("busybox-arm64.tar");
    if tar.exists() {
        return Ok(tar);
    }
    let work = tempfile::tempdir().unwrap();
    let out = Command::new("apt-get")
        .args(["download", "busybox-static:arm64"])
        .current_dir(work.path())
        .output()
        .map_err(|e| format!("apt-get: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "apt-get download busybox-static:arm64 failed (dpkg --add-architecture arm64 and apt-get update first): {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let deb = fs::read_dir(work.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or("apt-get download wrote no .deb")?;
    let root = work.path().join("root");
    assert!(Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&root)
        .status()
        .unwrap()
        .success());
    // The host busybox's applet list (the same Debian version's); the arm64 one cannot run yet.
    let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" && !applet.is_empty() {
            let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
        }
    }
    for d in ["tmp", "etc", "proc", "sys", "dev"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    let tmp = dir.join(format!("busybox-arm64.tar.{}", std::process::id()));
    assert!(Command::new("tar")
        .args(["--sort=name", "--mtime=@0", "--numeric-owner", "-C"])
        .arg(&root)
        .arg("-cf")
        .arg(&tmp)
        .args(["bin", "tmp", "etc", "proc", "sys", "dev"])
        .status()
        .unwrap()
        .success());
    fs::rename(&tmp, &tar).unwrap();
    Ok(tar)
}

/// Whether arm64 binaries run here: registers qemu's emulator with `kiln binfmt --install` when
/// it is installed but not registered. Prints why not when they cannot.
fn arm64_emulation() -> bool {
    let root = common::temp_root();
    let status = common::kiln_ok(root.path(), &["binfmt", "linux/arm64"]);
    if status.contains("emulated (") && !status.contains("lacks the F flag") {
        return true;
    }
    let out = common::kiln(root.path(), &["binfmt", "--install", "linux/arm64"]);
    if out.status.success() {
        return true;
    }
    eprintln!(
        "SKIPPED: linux/arm64 cannot be emulated on this machine: binfmt_misc has no qemu-aarch64 \
         entry and `kiln binfmt --install linux/arm64` failed ({}); install qemu-user-static and \
         run as root",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    false
}

/// A root with `bb:amd64`, `bb:arm64` and the index `bb` over both.
fn root_with_bases() -> Option<tempfile::TempDir> {
    let arm = match arm64_busybox_tar() {
        Ok(t) => t,
        Err(why) => {
            eprintln!("SKIPPED: no arm64 busybox: {why}");
            return None;
        }
    };
    let root = common::temp_root();
    let r = root.path();
    common::kiln_ok(
        r,
        &[
            "import",
            "-q",
            "--platform",
            "linux/arm64",
            arm.to_str().unwrap(),
            "bb:arm64",
        ],
    );
    common::kiln_ok(
        r,
        &[
            "import",
            "-q",
            common::busybox_tar().to_str().unwrap(),
            "bb:amd64",
        ],
    );
    common::kiln_ok(r, &["manifest", "create", "bb", "bb:arm64", "bb:amd64"]);
    Some(root)
}

fn context(dockerfile: &str) -> tempfile::TempDir {
    let ctx = tempfile::tempdir().unwrap();
    fs::write(ctx.path().join("Dockerfile"), dockerfile).unwrap();
    ctx
}

fn inspect(root: &Path, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["inspect"];
    all.extend_from_slice(args);
    let v: serde_json::Value = serde_json::from_str(&common::kiln_ok(root, &all)).unwrap();
    v[0].clone()
}

/// The ELF e_machine of a file.
fn elf_machine(path: &Path) -> u16 {
    let b = fs::read(path).unwrap();
    assert_eq!(&b[..4], b"\x7fELF", "{} is not ELF", path.display());
    u16::from_le_bytes([b[18], b[19]])
}

#[test]
fn bases_are_one_image_with_two_platforms() {
    common::require_root();
    let Some(root) = root_with_bases() else {
        return;
    };
    let r = root.path();
    let lines = common::kiln_ok(r, &["images", "--format", "json"]);
    let bb: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["Repository"] == "bb" && v["Tag"] == "latest")
        .collect();
    assert_eq!(bb.len(), 1, "{lines}");
    assert_eq!(
        bb[0]["Platforms"],
        serde_json::json!(["linux/arm64", "linux/amd64"])
    );
    let doc = inspect(r, &["bb"]);
    assert_eq!(doc["Index"]["manifests"].as_array().unwrap().len(), 2);
    assert_eq!(
        inspect(r, &["--platform", "linux/arm64", "bb"])["Architecture"],
        "arm64"
    );
    let out = common::kiln(r, &["inspect", "--platform", "linux/s390x", "bb"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no manifest for platform linux/s390x")
            && err.contains("linux/arm64, linux/amd64"),
        "{err}"
    );
    // Removing the index keeps the named platform images; removing those then leaves nothing.
    common::kiln_ok(r, &["rmi", "bb"]);
    common::kiln_ok(r, &["rmi", "bb:arm64", "bb:amd64"]);
    assert_eq!(common::kiln_ok(r, &["images", "-q"]).trim(), "");
    assert_eq!(fs::read_dir(r.join("blobs/sha256")).unwrap().count(), 0);
}

#[test]
fn two_platform_build_push_and_pull() {
    common::require_root();
    if !arm64_emulation() {
        return;
    }
    let Some(root) = root_with_bases() else {
        return;
    };
    let r = root.path();
    let ctx =
        context("FROM bb\nARG TARGETARCH\nRUN cp /bin/busybox /x && echo $TARGETARCH > /arch\n");
    let out_dir = tempfile::tempdir().unwrap();
    let local = out_dir.path().join("fs");
    common::kiln_ok(
        r,
        &[
            "build",
            "-q",
            "--platform",
            "linux/amd64,linux/arm64",
            "-t",
            "multi",
            ctx.path().to_str().unwrap(),
        ],
    );
    common::kiln_ok(
        r,
        &[
            "build",
            "-q",
            "--platform",
            "linux/amd64,linux/arm64",
            "-o",
            &format!("type=local,dest={}", local.display()),
            ctx.path().to_str().unwrap(),
        ],
    );
    assert_eq!(elf_machine(&local.join("linux_amd64/x")), 62);
    assert_eq!(elf_machine(&local.join("linux_arm64/x")), 183);
    assert_eq!(
        fs::read_to_string(local.join("linux_arm64/arch")).unwrap(),
        "arm64\n"
    );
    let doc = inspect(r, &["multi"]);
    assert_eq!(doc["Index"]["manifests"].as_array().unwrap().len(), 2);
    for (p, arch) in [("linux/amd64", "amd64"), ("linux/arm64", "arm64")] {
        let d = inspect(r, &["--platform", p, "multi"]);
        assert_eq!(d["Architecture"], arch);
        assert_eq!(d["Os"], "linux");
    }
    // OCI archive: the index; docker output: refused with two platforms.
    let oci = out_dir.path().join("o.tar");
    common::kiln_ok(
        r,
        &[
            "save",
            "--format",
            "oci",
            "-o",
            oci.to_str().unwrap(),
            "multi",
        ],
    );
    let idx = Command::new("tar")
        .arg("xOf")
        .arg(&oci)
        .arg("index.json")
        .output()
        .unwrap();
    let idx: serde_json::Value = serde_json::from_slice(&idx.stdout).unwrap();
    assert_eq!(
        idx["manifests"][0]["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    let bad = common::kiln(
        r,
        &[
            "build",
            "--platform",
            "linux/amd64,linux/arm64",
            "-o",
            &format!("type=docker,dest={}/d.tar", out_dir.path().display()),
            ctx.path().to_str().unwrap(),
        ],
    );
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("type=docker holds one platform"));

    // Push: every manifest and the index; skopeo reads the index and copies all of it.
    let registry = Registry::start(AuthMode::None);
    let dest = format!("{}/multi:1", registry.host());
    common::kiln_ok(r, &["tag", "multi", &dest]);
    common::kiln_ok(r, &["push", "-q", &dest]);
    let raw = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--raw"])
        .arg(format!("docker://{dest}"))
        .output()
        .unwrap();
    assert!(
        raw.status.success(),
        "{}",
        String::from_utf8_lossy(&raw.stderr)
    );
    let raw: serde_json::Value = serde_json::from_slice(&raw.stdout).unwrap();
    let archs: Vec<&str> = raw["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["platform"]["architecture"].as_str().unwrap())
        .collect();
    assert_eq!(archs, vec!["amd64", "arm64"]);
    let copy = out_dir.path().join("copy");
    let st = Command::new("skopeo")
        .args(["copy", "--all", "--src-tls-verify=false"])
        .arg(format!("docker://{dest}"))
        .arg(format!("oci:{}", copy.display()))
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    // Pull each platform into a fresh root.
    let fresh = common::temp_root();
    for (p, arch) in [("linux/arm64", "arm64"), ("linux/amd64", "amd64")] {
        common::kiln_ok(fresh.path(), &["pull", "-q", "--platform", p, &dest]);
        assert_eq!(
            inspect(fresh.path(), &["--platform", p, &dest])["Architecture"],
            arch
        );
    }
    let all = common::temp_root();
    common::kiln_ok(all.path(), &["pull", "--all-platforms", &dest]);
    assert_eq!(
        inspect(all.path(), &[&dest])["Platforms"],
        serde_json::json!(["linux/amd64", "linux/arm64"])
    );
    // FROM the pushed index in a fresh root: each graph pulls its own platform's manifest.
    let from = common::temp_root();
    let ctx2 = context(&format!("FROM {dest}\nRUN cat /arch > /base-arch\n"));
    let out2 = out_dir.path().join("from");
    common::kiln_ok(
        from.path(),
        &[
            "build",
            "-q",
            "--platform",
            "linux/amd64,linux/arm64",
            "-o",
            &format!("type=local,dest={}", out2.display()),
            ctx2.path().to_str().unwrap(),
        ],
    );
    assert_eq!(
        fs::read_to_string(out2.join("linux_arm64/base-arch")).unwrap(),
        "arm64\n"
    );
    assert_eq!(
        fs::read_to_string(out2.join("linux_amd64/base-arch")).unwrap(),
        "amd64\n"
    );
}

#[test]
fn cross_compiling_builder_runs_once_natively() {
    common::require_root();
    if !arm64_emulation() {
        return;
    }
    let Some(root) = root_with_bases() else {
        return;
    };
    let r = root.path();
    let ctx = context(
        "FROM --platform=$BUILDPLATFORM bb AS builder\nRUN uname -m > /built-on\n\
         FROM bb\nARG TARGETARCH\nCOPY --from=builder /built-on /built-on\nRUN echo $TARGETARCH > /arch\n",
    );
    let out = common::kiln(
        r,
        &[
            "build",
            "--no-cache",
            "--progress",
            "plain",
            "--platform",
            "linux/amd64,linux/arm64",
            "-t",
            "cross",
            ctx.path().to_str().unwrap(),
        ],
    );
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    // Both graphs reach the builder's RUN; with --no-cache only one runs it, the other takes it.
    let runs = text
        .lines()
        .filter(|l| l.contains("RUN uname -m > /built-on: --no-cache"))
        .count();
    assert_eq!(runs, 1, "{text}");
    let dir = tempfile::tempdir().unwrap();
    common::kiln_ok(
        r,
        &[
            "build",
            "-q",
            "--platform",
            "linux/amd64,linux/arm64",
            "-o",
            &format!("type=local,dest={}", dir.path().display()),
            ctx.path().to_str().unwrap(),
        ],
    );
    for p in ["linux_amd64", "linux_arm64"] {
        assert_eq!(
            fs::read_to_string(dir.path().join(p).join("built-on")).unwrap(),
            "x86_64\n"
        );
    }
    assert_eq!(
        fs::read_to_string(dir.path().join("linux_arm64/arch")).unwrap(),
        "arm64\n"
    );
}

#[test]
fn errors_name_the_platform() {
    common::require_root();
    let root = common::temp_root();
    let r = root.path();
    let bb = common::busybox_tar();
    common::kiln_ok(r, &["import", "-q", bb.to_str().unwrap(), "amd"]);
    // An index without the platform (a single-platform image of another platform is built on
    // with BuildKit's InvalidBaseImagePlatform warning: tests/build_base_platform.rs).
    common::kiln_ok(r, &["manifest", "create", "amdindex", "amd"]);
    let ctx = context("FROM amdindex\nRUN true\n");
    let out = common::kiln(
        r,
        &[
            "build",
            "--platform",
            "linux/arm64",
            ctx.path().to_str().unwrap(),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("base image amdindex has no linux/arm64 variant (it has: linux/amd64)"),
        "{err}"
    );
    // No emulator: a platform with nothing registered (riscv64, unless this machine has it).
    let probe = common::kiln_ok(r, &["binfmt", "linux/riscv64"]);
    if probe.contains("emulated") {
        eprintln!("SKIPPED the no-emulator case: linux/riscv64 is emulated on this machine");
        return;
    }
    common::kiln_ok(
        r,
        &[
            "import",
            "-q",
            "--platform",
            "linux/riscv64",
            bb.to_str().unwrap(),
            "rv",
        ],
    );
    let ctx = context("FROM rv\nRUN true\n");
    let out = common::kiln(
        r,
        &[
            "build",
            "--platform",
            "linux/riscv64",
            ctx.path().to_str().unwrap(),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("cannot run linux/riscv64 binaries")
            && err.contains("kiln binfmt --install linux/riscv64"),
        "{err}"
    );
    assert!(!err.to_lowercase().contains("exec format error"), "{err}");
    // An exec of a foreign binary in a container (not a RUN kiln knew the platform of): the
    // kernel's ENOEXEC becomes the same error, from the binary's ELF header.
    let ctx = context(
        "FROM amd\nRUN printf '\\177ELF\\002\\001\\001\\000\\000\\000\\000\\000\\000\\000\\000\\000\\002\\000\\363\\000' > /fake && chmod +x /fake\n",
    );
    common::kiln_ok(
        r,
        &["build", "-q", "-t", "fake", ctx.path().to_str().unwrap()],
    );
    let out = common::kiln(r, &["run", "--rm", "fake", "/fake"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("exec /fake")
            && err.contains("cannot run linux/riscv64 binaries")
            && err.contains("no emulator is registered"),
        "{err}"
    );
}

#[test]
fn run_picks_the_platform() {
    common::require_root();
    if !arm64_emulation() {
        return;
    }
    let Some(root) = root_with_bases() else {
        return;
    };
    let r = root.path();
    let ctx = context("FROM bb\nARG TARGETARCH\nRUN echo $TARGETARCH > /arch\n");
    common::kiln_ok(
        r,
        &[
            "build",
            "-q",
            "--platform",
            "linux/amd64,linux/arm64",
            "-t",
            "m",
            ctx.path().to_str().unwrap(),
        ],
    );
    assert_eq!(
        common::kiln_ok(
            r,
            &[
                "run",
                "--rm",
                "--platform",
                "linux/arm64",
                "m",
                "cat",
                "/arch"
            ]
        ),
        "arm64\n"
    );
    assert_eq!(
        common::kiln_ok(r, &["run", "--rm", "m", "cat", "/arch"]),
        "amd64\n"
    );
    // The emulated busybox really is arm64: uname inside qemu says aarch64.
    assert_eq!(
        common::kiln_ok(
            r,
            &[
                "run",
                "--rm",
                "--platform",
                "linux/arm64",
                "m",
                "uname",
                "-m"
            ]
        ),
        "aarch64\n"
    );
}

/// Per platform, as for one: under SOURCE_DATE_EPOCH two fresh roots give the same index, and a
/// registry cache written by one (`mode=max`, both platforms) answers every step of the other.
#[test]
fn each_platform_is_reproducible_and_shared_through_a_registry_cache() {
    common::require_root();
    if !arm64_emulation() {
        return;
    }
    let Some(a) = root_with_bases() else {
        return;
    };
    // Both runners take the base from the registry, as CI runners do: runner B starts empty.
    let b = common::temp_root();
    let registry = Registry::start(AuthMode::None);
    let base = format!("{}/bb:1", registry.host());
    common::kiln_ok(a.path(), &["tag", "bb", &base]);
    common::kiln_ok(a.path(), &["push", "-q", &base]);
    let cache_ref = format!("type=registry,ref={}/cache/mp:1", registry.host());
    let ctx = context(&format!(
        "FROM {base}\nARG TARGETARCH\nRUN echo $TARGETARCH > /arch && cp /bin/busybox /x\nCOPY app.txt /app.txt\n"
    ));
    fs::write(ctx.path().join("app.txt"), "app\n").unwrap();
    let build = |root: &Path, cache_flag: &str, cache_spec: &str| {
        let out = common::kiln(
            root,
            &[
                "build",
                "--progress",
                "plain",
                "--platform",
                "linux/amd64,linux/arm64",
                "--build-arg",
                "SOURCE_DATE_EPOCH=1700000000",
                cache_flag,
                cache_spec,
                "-t",
                "mp",
                ctx.path().to_str().unwrap(),
            ],
        );
        let text = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{text}");
        text
    };
    let first = build(a.path(), "--cache-to", &format!("{cache_ref},mode=max"));
    assert!(first.contains("cache miss"), "runner A builds: {first}");
    let second = build(b.path(), "--cache-from", &cache_ref);
    // Every step of both platforms came from the cache: nothing ran on runner B.
    assert!(
        !second.contains("cache miss"),
        "runner B ran a step:\n{second}"
    );
    assert!(second.matches("CACHED").count() >= 4, "{second}");
    // The same image leaves both runners: the pushed indexes are byte for byte the same (in
    // the stores they differ only in how layers are held: unpacked on A, cache blobs on B).
    let pushed = |root: &Path, tag: &str| {
        let dest = format!("{}/mp:{tag}", registry.host());
        common::kiln_ok(root, &["tag", "mp", &dest]);
        common::kiln_ok(root, &["push", "-q", &dest])
            .trim()
            .to_string()
    };
    let (da, db) = (pushed(a.path(), "a"), pushed(b.path(), "b"));
    assert!(da.starts_with("sha256:"), "{da}");
    assert_eq!(da, db, "the same index from both runners");
    for root in [a.path(), b.path()] {
        let arm = inspect(root, &["--platform", "linux/arm64", "mp"]);
        assert_eq!(arm["Architecture"], "arm64");
    }
}
