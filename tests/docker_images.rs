//! `kiln images`, `kiln save` and `kiln inspect` as a docker user reads them: SIZE as docker
//! counts it (unpacked), `--filter`, `--digests`, and an OCI archive that `docker load` reads
//! too. Docker 28.5's answers are in `testdata/docker/` and beside each check.

mod common;
mod registry_support;

use std::path::Path;
use std::process::Command;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn root_with_busybox() -> tempfile::TempDir {
    common::require_root();
    let root = common::temp_root();
    let tar = common::busybox_tar();
    common::kiln_ok(
        root.path(),
        &["import", "-q", tar.to_str().unwrap(), "busybox:latest"],
    );
    root
}

fn build(root: &Path, name: &str, dockerfile: &str) -> String {
    let ctx = root.join(format!("ctx-{}", name.replace([':', '/'], "-")));
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
    let mut args = vec!["build", "-q"];
    if !name.is_empty() {
        args.extend(["-t", name]);
    }
    args.push(ctx.to_str().unwrap());
    common::kiln_ok(root, &args).trim().to_string()
}

fn tar_member(archive: &Path, name: &str) -> Option<Vec<u8>> {
    let out = Command::new("tar")
        .arg("-xOf")
        .arg(archive)
        .arg(name)
        .output()
        .unwrap();
    out.status.success().then_some(out.stdout)
}

/// `kiln save --format oci` writes docker's manifest.json and repositories beside index.json
/// (as `docker save` does since Docker 25): Docker 28.5 loads it (testdata/docker/
/// save-oci-load.txt; without manifest.json it failed), skopeo reads it as an OCI archive and as
/// a docker archive, and kiln loads it back under its name.
#[test]
fn oci_archive_is_also_a_docker_archive() {
    let root = root_with_busybox();
    let r = root.path();
    let id = build(
        r,
        "app:oci",
        "FROM busybox\nRUN echo hi > /x\nCMD [\"sh\"]\n",
    );
    let archive = r.join("app.tar");
    common::kiln_ok(
        r,
        &[
            "save",
            "--format",
            "oci",
            "-o",
            archive.to_str().unwrap(),
            "app:oci",
        ],
    );
    let listing = text(
        &Command::new("tar")
            .arg("-tf")
            .arg(&archive)
            .output()
            .unwrap()
            .stdout,
    );
    for member in ["index.json", "oci-layout", "manifest.json", "repositories"] {
        assert!(
            listing.lines().any(|l| l == member),
            "{member} missing: {listing}"
        );
    }
    let manifest: serde_json::Value =
        serde_json::from_slice(&tar_member(&archive, "manifest.json").unwrap()).unwrap();
    let entry = &manifest[0];
    assert_eq!(entry["RepoTags"], serde_json::json!(["app:oci"]));
    assert_eq!(
        entry["Config"].as_str().unwrap(),
        format!("blobs/sha256/{}", &id[7..])
    );
    // Every member manifest.json names is in the archive (what docker load opens).
    let layers = entry["Layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    for l in layers {
        assert!(listing.lines().any(|m| m == l.as_str().unwrap()), "{l}");
    }
    let repositories: serde_json::Value =
        serde_json::from_slice(&tar_member(&archive, "repositories").unwrap()).unwrap();
    let top = layers[1]
        .as_str()
        .unwrap()
        .trim_start_matches("blobs/sha256/");
    assert_eq!(repositories, serde_json::json!({"app": {"oci": top}}));

    // skopeo reads the one file both ways, with the same config.
    if Command::new("skopeo").arg("--version").output().is_ok() {
        for transport in ["oci-archive", "docker-archive"] {
            let out = Command::new("skopeo")
                .args(["inspect", "--config"])
                .arg(format!("{transport}:{}", archive.display()))
                .output()
                .unwrap();
            assert!(out.status.success(), "{transport}: {}", text(&out.stderr));
            let config: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(config["config"]["Cmd"], serde_json::json!(["sh"]));
        }
    }

    // kiln loads it into an empty root under its name, with the same ID.
    let other = common::temp_root();
    let loaded = common::kiln_ok(
        other.path(),
        &["load", "-q", "-i", archive.to_str().unwrap()],
    );
    assert_eq!(loaded, "Loaded image: app:oci\n");
    let ids = common::kiln_ok(other.path(), &["images", "-q", "--no-trunc", "app:oci"]);
    assert_eq!(ids.trim(), id);
}

/// The bytes of the busybox fixture's files and symlinks: what docker's `inspect -f
/// '{{.Size}}'` printed for the same tarball imported (testdata/docker/images-filters.txt).
fn busybox_content_size() -> u64 {
    let out = Command::new("tar")
        .arg("-tvf")
        .arg(common::busybox_tar())
        .output()
        .unwrap();
    // Regular files count their size, symlinks their target's length (`a -> b`).
    text(&out.stdout)
        .lines()
        .map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            match l.chars().next() {
                Some('-') => fields[2].parse::<u64>().unwrap(),
                Some('l') => l.rsplit(" -> ").next().unwrap().len() as u64,
                _ => 0,
            }
        })
        .sum()
}

/// SIZE is the unpacked size, as docker's (busybox: 1.98MB in both, 1984234 bytes), where the
/// stored (compressed) layer is about half of it; `history` and `inspect` agree with it.
#[test]
fn images_size_is_the_unpacked_size() {
    let root = root_with_busybox();
    let r = root.path();
    let want = busybox_content_size();
    let size = common::kiln_ok(r, &["inspect", "-f", "{{.Size}}", "busybox"]);
    assert_eq!(size.trim(), want.to_string());
    let listing = common::kiln_ok(r, &["images", "busybox"]);
    let row = listing.lines().nth(1).unwrap();
    assert!(row.ends_with("   1.98MB"), "{listing}");
    // A built layer adds its own files: 3 bytes of /x.
    build(r, "app:1", "FROM busybox\nRUN echo hi > /x\n");
    let size = common::kiln_ok(r, &["inspect", "-f", "{{.Size}}", "app:1"]);
    assert_eq!(size.trim(), (want + 3).to_string());
    let json = common::kiln_ok(r, &["images", "--format", "{{.Size}}", "app"]);
    assert_eq!(json, "1.98MB\n");
    // The second listing reads the remembered sizes: the same answer.
    let again = common::kiln_ok(r, &["images", "--format", "{{.Size}}", "busybox"]);
    assert_eq!(again, "1.98MB\n");
}

/// `--filter` as Docker 28.5 combines them (testdata/docker/images-filters.txt), `--digests`.
#[test]
fn images_filters_and_digests() {
    let root = root_with_busybox();
    let r = root.path();
    // Created times are whole seconds: make before/since unambiguous.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    build(r, "app:1", "FROM busybox\nLABEL a=b\nRUN echo 1 > /x\n");
    common::kiln_ok(r, &["tag", "app:1", "app:2"]);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let dangling = build(r, "", "FROM busybox\nRUN echo 2 > /y\n");
    let names = |args: &[&str]| -> String {
        let mut full = vec!["images", "--format", "{{.Repository}}:{{.Tag}}"];
        full.extend(args);
        let mut lines: Vec<String> = common::kiln_ok(r, &full)
            .lines()
            .map(String::from)
            .collect();
        lines.sort();
        lines.join(" ")
    };
    assert_eq!(names(&["--filter", "reference=app"]), "app:1 app:2");
    assert_eq!(names(&["--filter", "reference=app:2"]), "app:2");
    assert_eq!(
        names(&["-f", "reference=a*:1", "-f", "reference=app:2"]),
        "app:1 app:2"
    );
    assert_eq!(names(&["-f", "reference=busy*"]), "busybox:latest");
    assert_eq!(names(&["-f", "reference=*/app"]), "");
    assert_eq!(names(&["-f", "label=a=b"]), "app:1 app:2");
    assert_eq!(names(&["-f", "label=a"]), "app:1 app:2");
    assert_eq!(names(&["-f", "label=a=c"]), "");
    assert_eq!(names(&["-f", "label=a", "-f", "label=zz"]), "");
    assert_eq!(names(&["-f", "dangling=true"]), "<none>:<none>");
    assert_eq!(
        names(&["-f", "dangling=false"]),
        "app:1 app:2 busybox:latest"
    );
    assert_eq!(
        names(&["-f", "dangling=false", "-f", "label=a=b"]),
        "app:1 app:2"
    );
    assert_eq!(names(&["-f", "before=app:1"]), "busybox:latest");
    assert_eq!(names(&["-f", "since=app:1"]), "<none>:<none>");
    assert_eq!(
        names(&["-f", "since=busybox", "-f", "dangling=false"]),
        "app:1 app:2"
    );
    let ids = common::kiln_ok(r, &["images", "-q", "--no-trunc", "-f", "dangling=true"]);
    assert_eq!(ids.trim(), dangling);

    // docker's table with --digests: DIGEST after TAG, <none> for a name without one.
    let table = common::kiln_ok(r, &["images", "--digests", "app"]);
    let mut lines = table.lines();
    assert!(lines
        .next()
        .unwrap()
        .starts_with("REPOSITORY   TAG       DIGEST    IMAGE ID       CREATED "));
    assert!(lines
        .next()
        .unwrap()
        .starts_with("app          1         <none>    "));

    // Errors as docker's: a filter without `=` is a usage error (125); an unknown key, a bad
    // dangling value or an image that does not exist fails the command (1).
    let out = common::kiln(r, &["images", "--filter", "nofilter"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(text(&out.stderr).contains(
        "invalid argument \"nofilter\" for \"-f, --filter\" flag: bad format of filter (expected name=value)"
    ));
    for (f, msg) in [
        ("foo=bar", "invalid filter 'foo'"),
        ("dangling=maybe", "invalid filter 'dangling=[maybe]'"),
        ("before=nosuch", "no such image"),
    ] {
        let out = common::kiln(r, &["images", "--filter", f]);
        assert_eq!(out.status.code(), Some(1), "{f}");
        assert!(
            text(&out.stderr).contains(msg),
            "{f}: {}",
            text(&out.stderr)
        );
    }
}

/// `RepoDigests` and `images --digests` as docker's: a built image has none; a pushed or pulled
/// one has `repository@digest` with the digest the registry has (the one `kiln push` printed).
#[test]
fn repo_digests_come_from_the_registry() {
    let root = root_with_busybox();
    let r = root.path();
    let reg = registry_support::Registry::start(registry_support::AuthMode::None);
    let name = format!("{}/app:1", reg.host());
    build(r, "app:1", "FROM busybox\nRUN echo 1 > /x\n");
    let repo_digests = |root: &Path, image: &str| {
        common::kiln_ok(root, &["inspect", "-f", "{{json .RepoDigests}}", image])
    };
    // docker: `[]` for an image it built.
    assert_eq!(repo_digests(r, "app:1"), "[]\n");
    common::kiln_ok(r, &["tag", "app:1", &name]);
    let pushed = common::kiln_ok(r, &["push", &name]);
    let digest = pushed
        .split(|c: char| c.is_whitespace() || c == ',')
        .find(|w| w.starts_with("sha256:"))
        .unwrap_or_else(|| panic!("no digest in {pushed:?}"))
        .to_string();
    // docker: the push gives the pushing side its RepoDigest too (both names of the image).
    assert_eq!(
        repo_digests(r, "app:1"),
        format!("[\"{}/app@{digest}\"]\n", reg.host())
    );
    // A `build --push` to another repository: the same image (every step cached), so docker
    // lists both repositories it went to.
    let built = format!("{}/built:2", reg.host());
    let ctx = r.join("ctx-app-1");
    common::kiln_ok(
        r,
        &["build", "-q", "--push", "-t", &built, ctx.to_str().unwrap()],
    );
    assert_eq!(
        repo_digests(r, &built),
        format!(
            "[\"{host}/app@{digest}\",\"{host}/built@{digest}\"]\n",
            host = reg.host()
        )
    );
    let other = common::temp_root();
    common::kiln_ok(other.path(), &["pull", &name]);
    assert_eq!(
        repo_digests(other.path(), &name),
        format!("[\"{}/app@{digest}\"]\n", reg.host())
    );
    let table = common::kiln_ok(other.path(), &["images", "--digests"]);
    let row = table.lines().nth(1).unwrap();
    assert!(row.contains(&format!("   {digest}   ")), "{table}");
    let json = common::kiln_ok(other.path(), &["images", "--format", "{{.Digest}}"]);
    assert_eq!(json.trim(), digest);
}

/// A multi-platform image saved as OCI: index.json holds the index, manifest.json this
/// machine's platform under the image's name, which is what Docker 28.5 loaded
/// (testdata/docker/save-oci-load.txt).
#[test]
fn oci_archive_of_an_index_lists_this_platform_for_docker() {
    let root = root_with_busybox();
    let r = root.path();
    let tar = common::busybox_tar();
    // The same files labelled arm64 are enough for the archive's structure.
    common::kiln_ok(
        r,
        &[
            "import",
            "-q",
            "--platform",
            "linux/arm64",
            tar.to_str().unwrap(),
            "bb:arm64",
        ],
    );
    common::kiln_ok(r, &["tag", "busybox", "bb:native"]);
    common::kiln_ok(
        r,
        &["manifest", "create", "multi:1", "bb:native", "bb:arm64"],
    );
    let archive = r.join("multi.tar");
    common::kiln_ok(
        r,
        &[
            "save",
            "--format",
            "oci",
            "-o",
            archive.to_str().unwrap(),
            "multi:1",
        ],
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&tar_member(&archive, "manifest.json").unwrap()).unwrap();
    let entries = manifest.as_array().unwrap();
    assert_eq!(entries.len(), 1, "{manifest}");
    assert_eq!(entries[0]["RepoTags"], serde_json::json!(["multi:1"]));
    let native = common::kiln_ok(r, &["inspect", "-f", "{{.Id}}", "bb:native"]);
    assert_eq!(
        entries[0]["Config"].as_str().unwrap(),
        format!("blobs/sha256/{}", &native.trim()[7..])
    );
    let index: serde_json::Value =
        serde_json::from_slice(&tar_member(&archive, "index.json").unwrap()).unwrap();
    assert_eq!(
        index["manifests"][0]["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
}
