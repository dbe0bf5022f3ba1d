//! Housekeeping through the real binary: `system df` against the bytes on disk, the prune
//! commands against the root's disk use before and after, the build cache's cap, prompts, a
//! prune racing a build, and a collection's leftovers finished by the next one.
mod build_support;
mod common;

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use build_support::*;
use kiln::cli::housekeeping_cmds::human_size;

/// Allocated bytes under `paths` (each inode once), as `du -sB1 -c` counts them.
fn du(paths: &[PathBuf]) -> u64 {
    fn walk(p: &Path, seen: &mut HashSet<(u64, u64)>) -> u64 {
        let Ok(m) = std::fs::symlink_metadata(p) else {
            return 0;
        };
        let mut n = if seen.insert((m.dev(), m.ino())) {
            m.blocks() * 512
        } else {
            0
        };
        if m.is_dir() {
            for e in std::fs::read_dir(p).unwrap().flatten() {
                n += walk(&e.path(), seen);
            }
        }
        n
    }
    let mut seen = HashSet::new();
    paths.iter().map(|p| walk(p, &mut seen)).sum()
}

/// The entries of a directory (its content, not the directory itself).
fn entries(dir: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd.flatten().map(|e| e.path()).collect(),
        Err(_) => Vec::new(),
    }
}

/// What the store's images and build cache are made of: blobs and unpacked layers.
fn content(root: &Path) -> Vec<PathBuf> {
    let mut v = entries(&root.join("blobs/sha256"));
    v.extend(entries(&root.join("snapshots/layers")));
    v
}

/// `du -sB1 ROOT` of the whole root.
fn du_root(root: &Path) -> u64 {
    let out = std::process::Command::new("du")
        .arg("-sB1")
        .arg(root)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// `kiln system df --format json`: the row of `kind`.
fn df_row(root: &Path, kind: &str) -> serde_json::Value {
    let out = common::kiln_ok(root, &["system", "df", "--format", "json"]);
    out.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["Type"] == kind)
        .unwrap_or_else(|| panic!("no {kind} row in {out}"))
}

/// `6.144MB` back to bytes (approximately: 4 significant digits).
fn parse_human(s: &str) -> f64 {
    let s = s.split(' ').next().unwrap();
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic()).unwrap());
    let mult = match unit {
        "B" => 1.0,
        "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        other => panic!("unit {other}"),
    };
    num.parse::<f64>().unwrap() * mult
}

fn total_reclaimed(out: &str) -> f64 {
    let line = out
        .lines()
        .find_map(|l| {
            l.strip_prefix("Total reclaimed space: ")
                .or(l.strip_prefix("Total:\t"))
        })
        .unwrap_or_else(|| panic!("no total in {out}"));
    parse_human(line)
}

fn cached(stderr: &str) -> usize {
    stderr.lines().filter(|l| l.ends_with(" CACHED")).count()
}

/// A context whose one RUN writes `kb` kilobytes of random data (`tag` makes the step unique).
fn big_step(tag: &str, kb: usize) -> tempfile::TempDir {
    context(&[(
        "Dockerfile",
        &format!(
            "FROM busybox:latest\nRUN head -c {} /dev/urandom > /blob-{tag}\n",
            kb * 1000
        ),
    )])
}

fn layer_dirs(root: &Path) -> HashSet<String> {
    entries(&root.join("snapshots/layers"))
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect()
}

#[test]
fn df_sizes_are_the_bytes_on_disk() {
    let root = root_with_busybox();
    let r = root.path();
    let ctx = big_step("df", 2000);
    build_ok(r, &["-t", "big", ctx.path().to_str().unwrap()]);
    common::kiln_ok(
        r,
        &[
            "run",
            "--name",
            "writer",
            "big",
            "sh",
            "-c",
            "head -c 300000 /dev/urandom > /w",
        ],
    );
    common::kiln_ok(r, &["volume", "create", "data"]);
    common::kiln_ok(
        r,
        &[
            "run",
            "--rm",
            "-v",
            "data:/data",
            "big",
            "sh",
            "-c",
            "head -c 500000 /dev/urandom > /data/v",
        ],
    );

    let images = df_row(r, "Images");
    assert_eq!(images["TotalCount"], "2", "{images}");
    assert_eq!(images["Active"], "1", "{images}");
    assert_eq!(images["Size"], human_size(du(&content(r))), "{images}");
    let containers = df_row(r, "Containers");
    let uppers: Vec<PathBuf> = entries(&r.join("containers"))
        .into_iter()
        .map(|c| c.join("upper"))
        .collect();
    assert_eq!(containers["Size"], human_size(du(&uppers)), "{containers}");
    assert!(parse_human(containers["Size"].as_str().unwrap()) >= 300_000.0);
    assert_eq!(containers["Active"], "0");
    let volumes = df_row(r, "Local Volumes");
    assert_eq!(
        volumes["Size"],
        human_size(du(&entries(&r.join("volumes")))),
        "{volumes}"
    );
    assert!(
        volumes["Reclaimable"].as_str().unwrap().ends_with("(100%)"),
        "{volumes}"
    );
    // The cache's layer is the image's too: nothing of its own yet.
    assert_eq!(df_row(r, "Build Cache")["Size"], "0B");

    let v = common::kiln_ok(r, &["system", "df", "-v"]);
    assert!(
        v.starts_with("Images space usage:\n\nREPOSITORY   TAG "),
        "{v}"
    );
    assert!(v.contains("\nbig          latest    "), "{v}");
    assert!(
        v.contains("\nContainers space usage:\n\nCONTAINER ID   IMAGE "),
        "{v}"
    );
    assert!(v.contains("\"sh -c head -c 30000…\""), "{v}");
    assert!(
        v.contains("\nLocal Volumes space usage:\n\nVOLUME NAME   LINKS     SIZE\ndata "),
        "{v}"
    );
    assert!(
        v.contains("\nBuild cache usage: 0B\n\nCACHE ID       CACHE TYPE"),
        "{v}"
    );

    // The default table, docker's layout.
    let t = common::kiln_ok(r, &["system", "df"]);
    assert!(t.starts_with("TYPE            TOTAL     ACTIVE    SIZE      RECLAIMABLE\nImages          2         1  "), "{t}");
    let f = common::kiln_ok(
        r,
        &["system", "df", "--format", "{{.Type}}: {{.TotalCount}}"],
    );
    assert_eq!(
        f,
        "Images: 2\nContainers: 1\nLocal Volumes: 1\nBuild Cache: 1\n"
    );
}

#[test]
fn rmi_keeps_cached_layers_and_builder_prune_frees_them() {
    let root = root_with_busybox();
    let r = root.path();
    let ctx = big_step("prune", 3000);
    let c = ctx.path().to_str().unwrap();
    build_ok(r, &["-t", "a", c]);
    let before = du(&content(r));
    let root_before = du_root(r);
    common::kiln_ok(r, &["rmi", "a"]);
    // The build cache still has the step: rmi frees only the image's own blobs.
    let after_rmi = du(&content(r));
    assert!(before - after_rmi < 100_000, "{before} -> {after_rmi}");
    let cache = df_row(r, "Build Cache");
    // The cache's own bytes: everything but busybox's.
    assert_eq!(
        cache["Size"],
        human_size(after_rmi - busybox_bytes(r)),
        "{cache}"
    );

    let out = common::kiln_ok(r, &["builder", "prune", "-f"]);
    assert!(
        out.starts_with("ID\t\t\t\t\t\tRECLAIMABLE\tSIZE\t\tLAST ACCESSED\n"),
        "{out}"
    );
    let after = du(&content(r));
    let freed = (after_rmi - after) as f64;
    assert!(freed > 3_000_000.0, "{after_rmi} -> {after}");
    let said = total_reclaimed(&out);
    assert!(
        (said - freed).abs() <= freed * 0.001 + 1.0,
        "said {said}, measured {freed}: {out}"
    );
    assert!(
        du_root(r) + 2_500_000 <= root_before,
        "root {root_before} -> {}",
        du_root(r)
    );
    assert_eq!(df_row(r, "Build Cache")["Size"], "0B");
    assert_eq!(df_row(r, "Build Cache")["TotalCount"], "0");
    // The step is built again.
    let (_, err) = build_ok(r, &["-t", "a", c]);
    assert_eq!(cached(&err), 0, "{err}");
}

/// Bytes of busybox:latest (its blobs and its layer's unpacked copy): the images' share of
/// `content` once the built image is gone.
fn busybox_bytes(root: &Path) -> u64 {
    let store = kiln::store::Store::open(root).unwrap();
    let rec = store.resolve("busybox").unwrap();
    let manifest = store.manifest(&rec.manifest_digest).unwrap();
    let mut paths = vec![
        store.blob_path(&rec.manifest_digest).unwrap(),
        store.blob_path(&rec.config_digest).unwrap(),
    ];
    for l in manifest.layers() {
        paths.push(store.blob_path(l.digest().as_ref()).unwrap());
    }
    let config = store.config(&rec.config_digest).unwrap();
    for d in config.rootfs().diff_ids() {
        paths.push(
            root.join("snapshots/layers")
                .join(d.trim_start_matches("sha256:")),
        );
    }
    du(&paths)
}

#[test]
fn image_prune_keeps_what_containers_use_and_removes_dangling_first() {
    let root = root_with_busybox();
    let r = root.path();
    let ca = big_step("a", 100);
    let cb = big_step("b", 100);
    build_ok(r, &["-t", "a", ca.path().to_str().unwrap()]);
    build_ok(r, &["-t", "b", cb.path().to_str().unwrap()]);
    // b again without the cache: the first b is dangling (<none>).
    let first_b = image_id(r, "b");
    build_ok(r, &["--no-cache", "-t", "b", cb.path().to_str().unwrap()]);
    common::kiln_ok(r, &["run", "--name", "user", "a", "true"]);

    let out = common::kiln_ok(r, &["image", "prune", "-f"]);
    assert!(
        out.starts_with("Deleted Images:\ndeleted: sha256:"),
        "{out}"
    );
    assert!(out.contains(&format!("deleted: {first_b}")), "{out}");
    assert!(!out.contains("untagged:"), "{out}");
    let images = common::kiln_ok(r, &["images", "--format", "{{.Repository}}"]);
    let mut images: Vec<&str> = images.lines().collect();
    images.sort();
    assert_eq!(images, ["a", "b", "busybox"]);

    // -a: every image no container uses (a's container is stopped, and still uses it).
    let out = common::kiln_ok(r, &["image", "prune", "-a", "-f"]);
    assert!(out.contains("untagged: b:latest\n"), "{out}");
    assert!(out.contains("untagged: busybox:latest\n"), "{out}");
    assert!(!out.contains("untagged: a:latest"), "{out}");
    assert_eq!(
        common::kiln_ok(r, &["images", "--format", "{{.Repository}}"]),
        "a\n"
    );

    let out = common::kiln_ok(r, &["container", "prune", "-f"]);
    assert!(out.starts_with("Deleted Containers:\n"), "{out}");
    assert!(common::kiln_ok(r, &["ps", "-a", "-q"]).is_empty());
    let out = common::kiln_ok(r, &["system", "prune", "-a", "-f"]);
    assert!(
        out.contains("Deleted Images:\nuntagged: a:latest\n"),
        "{out}"
    );
    assert!(out.contains("Deleted build cache objects:\n"), "{out}");
    // Everything went: only directories are left of the content.
    assert!(common::kiln_ok(r, &["images", "-q"]).is_empty());
    assert!(layer_dirs(r).is_empty(), "{:?}", layer_dirs(r));
    assert_eq!(df_row(r, "Images")["Size"], "0B");
    assert_eq!(df_row(r, "Build Cache")["Size"], "0B");
    assert_eq!(du(&entries(&r.join("blobs/sha256"))), 0);
}

#[test]
fn prune_without_force_asks_as_docker_does() {
    let root = root_with_busybox();
    let r = root.path();
    let ask = |args: &[&str], answer: &str| {
        let mut child = common::kiln_command()
            .arg("--root")
            .arg(r)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(answer.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    // Recorded from docker-ref (Docker 28.5) with stdin from /dev/null or "n": the prompt, no
    // newline, nothing removed, exit 0.
    assert_eq!(
        ask(&["image", "prune", "-a"], "n\n"),
        "WARNING! This will remove all images without at least one container associated to them.\nAre you sure you want to continue? [y/N] "
    );
    assert_eq!(
        ask(&["builder", "prune"], ""),
        "WARNING! This will remove all dangling build cache. Are you sure you want to continue? [y/N] "
    );
    assert_eq!(
        ask(&["system", "prune"], ""),
        "WARNING! This will remove:\n  - all stopped containers\n  - all dangling images\n  - unused build cache\n\nAre you sure you want to continue? [y/N] "
    );
    assert_eq!(common::kiln_ok(r, &["images", "-q"]).lines().count(), 1);
    let out = ask(&["image", "prune", "-a"], "y\n");
    assert!(
        out.ends_with("[y/N] Deleted Images:\nuntagged: busybox:latest\n")
            || out.contains("untagged: busybox:latest"),
        "{out}"
    );
    assert!(common::kiln_ok(r, &["images", "-q"]).is_empty());
    // A filter docker does not have is refused (docker: invalid filter 'bogus', exit 1).
    let bad = common::kiln(r, &["image", "prune", "-f", "--filter", "bogus=1"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid filter 'bogus'"));
}

#[test]
fn the_cache_cap_evicts_oldest_used_first_and_spares_a_running_container() {
    let root = root_with_busybox();
    let r = root.path();
    let ctxs: Vec<_> = ["x0", "x1", "x2"]
        .iter()
        .map(|t| big_step(t, 1000))
        .collect();
    // busybox's own layer, unpacked first so that each build adds one directory.
    common::kiln_ok(r, &["run", "--rm", "busybox", "true"]);
    let mut dirs = Vec::new();
    for (i, c) in ctxs.iter().enumerate() {
        let before = layer_dirs(r);
        build_ok(r, &["-t", &format!("x{i}"), c.path().to_str().unwrap()]);
        let new: Vec<String> = layer_dirs(r).difference(&before).cloned().collect();
        assert_eq!(new.len(), 1, "{new:?}");
        dirs.push(new[0].clone());
    }
    // x0 runs in a container whose image is then removed by force; x1 and x2 are only cache.
    common::kiln_ok(r, &["run", "-d", "--name", "keep", "x0", "sleep", "60"]);
    for name in ["x0", "x1", "x2"] {
        common::kiln_ok(r, &["rmi", "-f", name]);
    }
    assert_eq!(layer_dirs(r).len(), 4, "busybox and the three");
    // Room for one of the three 1 MB layers: the two least recently used go.
    let y = context(&[("Dockerfile", "FROM busybox:latest\nRUN echo y > /y\n")]);
    let out = common::kiln_command()
        .env("KILN_BUILD_CACHE_SIZE", "1500000")
        .arg("--root")
        .arg(r)
        .args([
            "build",
            "--progress",
            "plain",
            "-t",
            "y",
            y.path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("build cache over its cap: removed 2 least recently used entries"),
        "{err}"
    );
    let left = layer_dirs(r);
    assert!(
        left.contains(&dirs[0]),
        "the running container's layer went: {left:?}"
    );
    assert!(
        !left.contains(&dirs[1]),
        "x1 was the oldest cache-only layer: {left:?}"
    );
    assert!(left.contains(&dirs[2]), "x2 is the newest: {left:?}");
    assert_eq!(
        common::kiln_ok(r, &["exec", "keep", "sh", "-c", "wc -c < /blob-x0"]).trim(),
        "1000000"
    );
    let (_, err) = build_ok(r, &[ctxs[2].path().to_str().unwrap()]);
    assert_eq!(cached(&err), 1, "x2 still hits: {err}");
    let (_, err) = build_ok(r, &[ctxs[1].path().to_str().unwrap()]);
    assert_eq!(cached(&err), 0, "x1 was evicted: {err}");
    // Once the container is gone, the next collection takes x0's layer too.
    common::kiln_ok(r, &["rm", "-f", "keep"]);
    common::kiln_ok(r, &["builder", "prune", "-f"]);
    assert!(!layer_dirs(r).contains(&dirs[0]));
}

#[test]
fn builder_prune_during_a_build_does_not_break_it() {
    let root = root_with_busybox();
    let r = root.path().to_path_buf();
    let ctx = context(&[(
        "Dockerfile",
        "FROM busybox:latest\nRUN head -c 200000 /dev/urandom > /base\nARG V=1\nRUN sleep 3 && echo $V && wc -c < /base > /copy\n",
    )]);
    let c = ctx.path().to_str().unwrap().to_string();
    build_ok(&r, &["-t", "race", &c]);
    common::kiln_ok(&r, &["rmi", "race"]);
    // The first RUN hits (its layer only the cache holds), the second runs for 3 seconds on it
    // while prunes of everything run, from the moment it starts.
    let mut child = common::kiln_command()
        .arg("--root")
        .arg(&r)
        .args([
            "build",
            "--progress",
            "plain",
            "--build-arg",
            "V=2",
            "-t",
            "race",
            &c,
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (started_tx, started) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut all = String::new();
        for line in std::io::BufReader::new(stderr).lines() {
            let line = line.unwrap();
            if line.contains("4/4] RUN sleep 3") {
                let _ = started_tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    started
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the long step started");
    let mut pruned = 0;
    while child.try_wait().unwrap().is_none() {
        let out = common::kiln_ok(&r, &["builder", "prune", "-a", "-f"]);
        assert!(out.contains("Total:"), "{out}");
        pruned += 1;
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let status = child.wait().unwrap();
    let err = reader.join().unwrap();
    assert!(status.success(), "{err}");
    assert_eq!(cached(&err), 1, "{err}");
    assert!(pruned >= 2, "{pruned}");
    assert_eq!(
        common::kiln_ok(&r, &["run", "--rm", "race", "cat", "/copy"]).trim(),
        "200000"
    );
}

#[test]
fn a_killed_collection_is_finished_by_the_next() {
    let root = root_with_busybox();
    let r = root.path();
    // What a collection killed after its transaction leaves: rows in gc_pending for files it had
    // not deleted yet. One names a layer directory nothing records; one a blob an image still has
    // (a build stored it again meanwhile): the next collection removes only the first.
    let orphan = "ab".repeat(32);
    std::fs::create_dir_all(r.join("snapshots/layers").join(&orphan).join("etc")).unwrap();
    std::fs::write(
        r.join("snapshots/layers").join(&orphan).join("etc/f"),
        vec![0u8; 50_000],
    )
    .unwrap();
    let store = kiln::store::Store::open(r).unwrap();
    let config = store.resolve("busybox").unwrap().config_digest;
    let config_hex = config.trim_start_matches("sha256:").to_string();
    store
        .with_conn(|c| {
            c.execute(
                "INSERT INTO gc_pending (path) VALUES (?1), (?2)",
                [
                    format!("snapshots/layers/{orphan}"),
                    format!("blobs/sha256/{config_hex}"),
                ],
            )?;
            Ok(())
        })
        .unwrap();
    drop(store);
    let out = common::kiln_ok(r, &["builder", "prune", "-f"]);
    assert!(total_reclaimed(&out) >= 50_000.0, "{out}");
    assert!(!r.join("snapshots/layers").join(&orphan).exists());
    assert!(r.join("blobs/sha256").join(&config_hex).exists());
    let store = kiln::store::Store::open(r).unwrap();
    let left: i64 = store
        .with_conn(|c| Ok(c.query_row("SELECT COUNT(*) FROM gc_pending", [], |row| row.get(0))?))
        .unwrap();
    assert_eq!(left, 0);
    common::kiln_ok(r, &["run", "--rm", "busybox", "true"]);
}

#[test]
fn rmi_frees_the_unpacked_copy_of_an_imported_layer() {
    let root = root_with_busybox();
    let r = root.path();
    common::kiln_ok(r, &["run", "--rm", "busybox", "true"]);
    assert_eq!(layer_dirs(r).len(), 1, "running unpacks the layer");
    let before = du_root(r);
    common::kiln_ok(r, &["rmi", "busybox"]);
    assert!(layer_dirs(r).is_empty(), "{:?}", layer_dirs(r));
    assert!(du(&entries(&r.join("blobs/sha256"))) == 0);
    assert!(
        du_root(r) + 1_000_000 < before,
        "{before} -> {}",
        du_root(r)
    );
}

#[test]
fn cache_mounts_count_as_build_cache_and_go_with_prune_all() {
    let root = root_with_busybox();
    let r = root.path();
    let ctx = context(&[(
        "Dockerfile",
        "FROM busybox:latest\nRUN --mount=type=cache,target=/c head -c 400000 /dev/urandom > /c/data\n",
    )]);
    build_ok(r, &["-t", "m", ctx.path().to_str().unwrap()]);
    let mounts = entries(&r.join("build-cache-mounts"));
    let mount_bytes = du(&mounts
        .iter()
        .filter(|p| p.is_dir())
        .cloned()
        .collect::<Vec<_>>());
    assert!(mount_bytes >= 400_000, "{mount_bytes}");
    let cache = df_row(r, "Build Cache");
    assert_eq!(cache["Size"], human_size(mount_bytes), "{cache}");
    assert_eq!(
        cache["TotalCount"], "2",
        "one step, one cache mount: {cache}"
    );
    // Without -a the cache mount stays; with -a it goes (listed as a mutable record, `*`).
    common::kiln_ok(r, &["builder", "prune", "-f"]);
    assert_eq!(df_row(r, "Build Cache")["Size"], human_size(mount_bytes));
    let out = common::kiln_ok(r, &["builder", "prune", "-a", "-f"]);
    assert!(out.contains("*"), "{out}");
    assert!(total_reclaimed(&out) >= 400_000.0, "{out}");
    assert!(entries(&r.join("build-cache-mounts")).is_empty());
    assert_eq!(df_row(r, "Build Cache")["Size"], "0B");
}

#[test]
fn image_prune_filters_by_label_and_age() {
    let root = root_with_busybox();
    let r = root.path();
    let keep = context(&[(
        "Dockerfile",
        "FROM busybox:latest\nLABEL keep=yes\nRUN echo k > /k\n",
    )]);
    let drop = context(&[("Dockerfile", "FROM busybox:latest\nRUN echo d > /d\n")]);
    build_ok(r, &["-t", "keep", keep.path().to_str().unwrap()]);
    build_ok(r, &["-t", "drop", drop.path().to_str().unwrap()]);
    // Only busybox (its config says 2024) is older than a day; its layer stays, the built
    // images have it.
    let out = common::kiln_ok(r, &["image", "prune", "-a", "-f", "--filter", "until=24h"]);
    assert!(
        out.starts_with("Deleted Images:\nuntagged: busybox:latest\n"),
        "{out}"
    );
    assert!(!out.contains("keep") && !out.contains("drop"), "{out}");
    let out = common::kiln_ok(
        r,
        &[
            "image",
            "prune",
            "-a",
            "-f",
            "--filter",
            "label!=keep",
            "--filter",
            "until=2999-01-01T00:00:00Z",
        ],
    );
    assert!(out.contains("untagged: drop:latest\n"), "{out}");
    assert!(!out.contains("keep"), "{out}");
    assert_eq!(
        common::kiln_ok(r, &["images", "--format", "{{.Repository}}"]),
        "keep\n"
    );
}
