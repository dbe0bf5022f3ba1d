//! The image commands end to end, as root: import -> save (docker, OCI) -> load round trips,
//! skopeo and umoci reading kiln's OCI output, kiln loading what skopeo writes, concurrency on one
//! root, and bad input.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{busybox_rootfs, kiln, kiln_ok, require_root, temp_root};

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("kiln-image-test.")
        .tempdir()
        .unwrap()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A rootfs with more than busybox has: a hard link, set-id and odd modes, other owners, a
/// device, a fifo, an empty dir. Returns the tarball made from it by GNU tar.
fn rich_rootfs(dir: &Path) -> (PathBuf, PathBuf) {
    let root = dir.join("rootfs");
    run(Command::new("cp")
        .arg("-a")
        .arg(busybox_rootfs())
        .arg(&root));
    fs::remove_file(root.join(".complete")).unwrap();
    fs::write(root.join("etc/motd"), "hello from kiln\n").unwrap();
    fs::hard_link(root.join("etc/motd"), root.join("etc/motd.link")).unwrap();
    fs::create_dir_all(root.join("home/user/empty")).unwrap();
    fs::write(root.join("home/user/secret"), "s").unwrap();
    std::os::unix::fs::chown(root.join("home/user"), Some(1000), Some(1000)).unwrap();
    std::os::unix::fs::chown(root.join("home/user/secret"), Some(1000), Some(100)).unwrap();
    fs::set_permissions(
        root.join("home/user/secret"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    fs::write(root.join("bin/suid"), "#!/bin/sh\n").unwrap();
    fs::set_permissions(root.join("bin/suid"), fs::Permissions::from_mode(0o4755)).unwrap();
    nix::sys::stat::mknod(
        &root.join("dev/null"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 3),
    )
    .unwrap();
    nix::unistd::mkfifo(
        &root.join("tmp/fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    let tar = dir.join("rootfs.tar");
    run(Command::new("tar")
        .args(["--numeric-owner", "--xattrs", "-C"])
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg("."));
    (root, tar)
}

/// Every entry under `root`: path, type, mode, owner, size, link target, content digest, link count.
fn tree(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in walkdir::WalkDir::new(root).min_depth(1).sort_by_file_name() {
        let e = e.unwrap();
        let m = e.path().symlink_metadata().unwrap();
        let rel = e.path().strip_prefix(root).unwrap().display().to_string();
        let (kind, extra) = if m.file_type().is_symlink() {
            ("l", fs::read_link(e.path()).unwrap().display().to_string())
        } else if m.is_file() {
            let mut data = Vec::new();
            fs::File::open(e.path())
                .unwrap()
                .read_to_end(&mut data)
                .unwrap();
            ("f", kiln::digest::sha256_digest(&data))
        } else if m.is_dir() {
            ("d", String::new())
        } else {
            ("o", format!("rdev={}", m.rdev()))
        };
        let nlink = if m.is_dir() { 0 } else { m.nlink() };
        out.push(format!(
            "{rel} {kind} {:o} {}:{} nlink={nlink} {extra}",
            m.mode(),
            m.uid(),
            m.gid()
        ));
    }
    out
}

fn manifest_digest(root: &Path, name: &str) -> String {
    let out = kiln_ok(root, &["images", "--format", "json", name]);
    let line = out
        .lines()
        .next()
        .unwrap_or_else(|| panic!("{name} not listed"));
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    v["ManifestDigest"].as_str().unwrap().to_string()
}

#[test]
fn import_save_load_round_trips_in_both_formats() {
    require_root();
    let dir = tempdir();
    let (_rootfs, tar) = rich_rootfs(dir.path());
    let root = temp_root();
    let r = root.path();
    let id = kiln_ok(
        r,
        &[
            "import",
            tar.to_str().unwrap(),
            "rt:1",
            "--change",
            r#"CMD ["sh"]"#,
        ],
    );
    assert!(id.trim().starts_with("sha256:"), "{id}");
    let digest = manifest_digest(r, "rt:1");
    for format in ["docker", "oci"] {
        let archive = dir.path().join(format!("rt-{format}.tar"));
        kiln_ok(
            r,
            &[
                "save",
                "--format",
                format,
                "-o",
                archive.to_str().unwrap(),
                "rt:1",
            ],
        );
        let fresh = temp_root();
        let out = kiln_ok(fresh.path(), &["load", "-i", archive.to_str().unwrap()]);
        assert_eq!(out.trim(), "Loaded image: rt:1");
        assert_eq!(
            manifest_digest(fresh.path(), "rt:1"),
            digest,
            "{format} round trip"
        );
        let inspect: serde_json::Value =
            serde_json::from_str(&kiln_ok(fresh.path(), &["inspect", "rt:1"])).unwrap();
        assert_eq!(inspect[0]["Id"].as_str().unwrap(), id.trim());
        assert_eq!(inspect[0]["Config"]["Cmd"][0], "sh");
    }
}

#[test]
fn oci_output_passes_skopeo_and_umoci_unpacks_the_same_files() {
    require_root();
    let dir = tempdir();
    let (rootfs, tar) = rich_rootfs(dir.path());
    let root = temp_root();
    let r = root.path();
    kiln_ok(
        r,
        &[
            "import",
            tar.to_str().unwrap(),
            "localhost:5000/umoci-test:v1",
        ],
    );
    let archive = dir.path().join("oci.tar");
    kiln_ok(
        r,
        &[
            "save",
            "--format",
            "oci",
            "-o",
            archive.to_str().unwrap(),
            "localhost:5000/umoci-test:v1",
        ],
    );
    let inspect = run(Command::new("skopeo")
        .arg("inspect")
        .arg(format!("oci-archive:{}", archive.display())));
    let v: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(v["Os"], "linux");
    assert_eq!(v["Layers"].as_array().unwrap().len(), 1);

    let layout = dir.path().join("layout");
    fs::create_dir(&layout).unwrap();
    run(Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-xf")
        .arg(&archive));
    let bundle = dir.path().join("bundle");
    run(Command::new("umoci")
        .arg("unpack")
        .arg("--image")
        .arg(format!("{}:v1", layout.display()))
        .arg(&bundle));
    assert_eq!(tree(&bundle.join("rootfs")), tree(&rootfs));
}

#[test]
fn archives_written_by_skopeo_load() {
    require_root();
    let dir = tempdir();
    let root = temp_root();
    let r = root.path();
    let tar = common::busybox_tar();
    let id = kiln_ok(r, &["import", tar.to_str().unwrap(), "skopeo-src:latest"]);
    let oci = dir.path().join("kiln-oci.tar");
    kiln_ok(
        r,
        &[
            "save",
            "--format",
            "oci",
            "-o",
            oci.to_str().unwrap(),
            "skopeo-src",
        ],
    );
    let docker_archive = dir.path().join("skopeo-docker.tar");
    let oci_archive = dir.path().join("skopeo-oci.tar");
    run(Command::new("skopeo")
        .args(["copy", "-q"])
        .arg(format!("oci-archive:{}", oci.display()))
        .arg(format!(
            "docker-archive:{}:from-skopeo/docker:t1",
            docker_archive.display()
        )));
    run(Command::new("skopeo")
        .args(["copy", "-q"])
        .arg(format!("oci-archive:{}", oci.display()))
        .arg(format!(
            "oci-archive:{}:from-skopeo/oci:t2",
            oci_archive.display()
        )));
    // And a docker archive compressed as a whole.
    let gz = dir.path().join("skopeo-docker.tar.gz");
    run(Command::new("sh").arg("-c").arg(format!(
        "gzip -c {} > {}",
        docker_archive.display(),
        gz.display()
    )));
    let fresh = temp_root();
    let f = fresh.path();
    assert_eq!(
        kiln_ok(f, &["load", "-i", docker_archive.to_str().unwrap()]).trim(),
        "Loaded image: from-skopeo/docker:t1"
    );
    assert_eq!(
        kiln_ok(f, &["load", "-q", "-i", gz.to_str().unwrap()]).trim(),
        "Loaded image: from-skopeo/docker:t1"
    );
    assert_eq!(
        kiln_ok(f, &["load", "-i", oci_archive.to_str().unwrap()]).trim(),
        "Loaded image: from-skopeo/oci:t2"
    );
    // Same image ID (config) through every path.
    let ids = kiln_ok(f, &["images", "-q", "--no-trunc"]);
    assert_eq!(ids.trim(), id.trim(), "{ids}");
    // The loaded images unpack: save again and let skopeo read it.
    let again = dir.path().join("again.tar");
    kiln_ok(
        f,
        &[
            "save",
            "--format",
            "oci",
            "-o",
            again.to_str().unwrap(),
            "from-skopeo/docker:t1",
        ],
    );
    run(Command::new("skopeo")
        .arg("inspect")
        .arg(format!("oci-archive:{}", again.display())));
}

#[test]
fn compressed_and_stdin_inputs_and_outputs() {
    require_root();
    let dir = tempdir();
    let root = temp_root();
    let r = root.path();
    let tar = common::busybox_tar();
    let zst = dir.path().join("bb.tar.zst");
    run(Command::new("sh").arg("-c").arg(format!(
        "zstd -q -c {} > {}",
        tar.display(),
        zst.display()
    )));
    let id1 = kiln_ok(r, &["import", zst.to_str().unwrap(), "zst"]);
    // From stdin.
    let mut child = common::kiln_command()
        .arg("--root")
        .arg(r)
        .args(["import", "-", "stdin:1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&fs::read(&tar).unwrap())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    // Same layer (DiffID) either way.
    let inspect = |n: &str| -> serde_json::Value {
        serde_json::from_str(&kiln_ok(r, &["inspect", n])).unwrap()
    };
    assert_eq!(inspect("zst")[0]["RootFS"], inspect("stdin:1")[0]["RootFS"]);
    assert!(id1.starts_with("sha256:"));
    // zstd and uncompressed OCI output to stdout, loaded back through stdin.
    for compression in ["zstd", "none"] {
        let out = common::kiln_command()
            .arg("--root")
            .arg(r)
            .args([
                "save",
                "--format",
                "oci",
                "--compression",
                compression,
                "-o",
                "-",
                "zst",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let fresh = temp_root();
        let mut child = common::kiln_command()
            .arg("--root")
            .arg(fresh.path())
            .args(["load"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&out.stdout).unwrap();
        let loaded = child.wait_with_output().unwrap();
        assert!(loaded.status.success());
        let fi: serde_json::Value =
            serde_json::from_str(&kiln_ok(fresh.path(), &["inspect", "zst"])).unwrap();
        let media = fi[0]["Manifest"]["layers"][0]["mediaType"]
            .as_str()
            .unwrap()
            .to_string();
        match compression {
            "zstd" => assert!(media.ends_with("tar+zstd"), "{media}"),
            _ => assert!(media.ends_with(".tar"), "{media}"),
        }
        assert_eq!(fi[0]["RootFS"], inspect("zst")[0]["RootFS"]);
    }
}

#[test]
fn two_concurrent_imports_on_one_root_both_succeed() {
    require_root();
    let root = temp_root();
    let tar = common::busybox_tar();
    let tar = tar.to_str().unwrap();
    run_at_once(
        root.path(),
        &[
            vec!["import", tar, "concurrent:0"],
            vec!["import", tar, "concurrent:1"],
        ],
    );
    let listed = kiln_ok(root.path(), &["images"]);
    assert!(
        listed.contains("concurrent") && listed.lines().count() == 3,
        "{listed}"
    );
}

#[test]
fn images_tag_rmi_and_errors() {
    require_root();
    let root = temp_root();
    let r = root.path();
    let tar = common::busybox_tar();
    let id = kiln_ok(r, &["import", tar.to_str().unwrap(), "busybox"]);
    kiln_ok(r, &["tag", "busybox", "localhost:5000/bb:1"]);
    let table = kiln_ok(r, &["images"]);
    let mut lines = table.lines();
    let header = lines.next().unwrap();
    for col in ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"] {
        assert!(header.contains(col), "{header}");
    }
    let rows: Vec<&str> = lines.collect();
    assert!(
        rows.iter()
            .any(|l| l.starts_with("busybox ") && l.contains(&id.trim()[7..19])),
        "{table}"
    );
    assert!(
        rows.iter()
            .any(|l| l.starts_with("localhost:5000/bb ") && l.contains(" 1 ")),
        "{table}"
    );
    // Removing by ID with two names needs -f.
    let out = kiln(r, &["rmi", &id.trim()[7..19]]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("must be forced"));
    assert_eq!(
        kiln_ok(r, &["rmi", "localhost:5000/bb:1"]).trim(),
        "Untagged: localhost:5000/bb:1"
    );
    let out = kiln_ok(r, &["rmi", "busybox"]);
    assert!(
        out.contains("Untagged: busybox:latest") && out.contains("Deleted: "),
        "{out}"
    );
    assert_eq!(kiln_ok(r, &["images", "-q"]).trim(), "");
    assert_eq!(
        fs::read_dir(r.join("blobs/sha256")).unwrap().count(),
        0,
        "blobs collected"
    );

    let out = kiln(r, &["rmi", "nope"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("kiln: rmi: nope: no such image"));
    let out = kiln(r, &["tag", "nope", "x"]);
    assert!(!out.status.success());
    let out = kiln(r, &["import", tar.to_str().unwrap(), "Bad/Name"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("lowercase"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bad_archives_fail_cleanly_and_leave_the_store_unchanged() {
    require_root();
    let dir = tempdir();
    let root = temp_root();
    let r = root.path();
    kiln_ok(r, &["images"]);
    let not_archive = dir.path().join("x.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(dir.path())
        .arg("-cf")
        .arg(&not_archive)
        .arg("--files-from=/dev/null"));
    let out = kiln(r, &["load", "-i", not_archive.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not an OCI layout or docker archive (no index.json or manifest.json)"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    // A layout whose manifest names a missing blob.
    let layout = dir.path().join("layout");
    fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    let manifest = br#"{"schemaVersion":2,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","size":2},"layers":[]}"#;
    let md = kiln::digest::sha256_digest(manifest);
    fs::write(layout.join("blobs/sha256").join(&md[7..]), manifest).unwrap();
    fs::write(
        layout.join("index.json"),
        format!(r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{md}","size":{}}}]}}"#, manifest.len()),
    )
    .unwrap();
    let bad = dir.path().join("bad.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&bad)
        .arg("."));
    let out = kiln(r, &["load", "-i", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("missing"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(kiln_ok(r, &["images", "-q"]).trim(), "");
    assert_eq!(
        fs::read_dir(r.join("tmp")).unwrap().count(),
        0,
        "temp files cleaned up"
    );
}

#[test]
fn malicious_import_tarballs_are_rejected() {
    require_root();
    let dir = tempdir();
    let root = temp_root();
    let evil = dir.path().join("evil.tar");
    // GNU tar keeps `..` members with -P.
    fs::create_dir_all(dir.path().join("a")).unwrap();
    fs::write(dir.path().join("x"), "x").unwrap();
    run(Command::new("tar")
        .arg("-C")
        .arg(dir.path().join("a"))
        .args(["-P", "-cf"])
        .arg(&evil)
        .arg("../x"));
    let out = kiln(root.path(), &["import", evil.to_str().unwrap(), "evil"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(".."),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(kiln_ok(root.path(), &["images", "-q"]).trim(), "");
    let garbage = dir.path().join("garbage.tar");
    fs::write(&garbage, vec![b'x'; 4096]).unwrap();
    assert!(
        !kiln(root.path(), &["import", garbage.to_str().unwrap(), "g"])
            .status
            .success()
    );
}

/// kiln processes that open a new root at the same moment all succeed: SQLite can answer
/// "locked" to the switch to WAL mode without waiting, which the store retries.
#[test]
fn concurrent_first_opens_of_a_root_all_succeed() {
    for _ in 0..30 {
        let root = common::temp_root();
        run_at_once(root.path(), &vec![vec!["images"]; 6]);
    }
}

/// Starts one kiln process per argument list on `root`, all at once; each must succeed.
fn run_at_once(root: &Path, commands: &[Vec<&str>]) {
    let children: Vec<_> = commands
        .iter()
        .map(|args| {
            common::kiln_command()
                .arg("--root")
                .arg(root)
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
