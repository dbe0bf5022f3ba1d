//! Volumes: named ones filled from the image on first use and kept across containers, bind
//! mounts (read-only too), anonymous volumes for the image's VOLUMEs, and `kiln volume`.

mod common;
mod run_fixtures;

use serde_json::json;

#[test]
fn named_bind_and_anonymous_volumes() {
    common::require_root();
    let root = common::temp_root();
    let r = root.path();
    // An image with content at /data (a VOLUME) and at /seed.
    let tree = tempfile::tempdir().unwrap();
    let rootfs = tree.path().join("rootfs");
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(common::busybox_rootfs())
        .arg(&rootfs)
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::create_dir_all(rootfs.join("data")).unwrap();
    std::fs::write(rootfs.join("data/from-image"), "image content\n").unwrap();
    std::fs::create_dir_all(rootfs.join("seed")).unwrap();
    std::fs::write(rootfs.join("seed/s"), "seed\n").unwrap();
    run_fixtures::image_from_tree(
        r,
        "vol",
        &rootfs,
        json!({"Cmd": ["sh"], "Volumes": {"/data": {}}}),
    );

    // A named volume starts with the image's content at its mount point, and keeps writes.
    let o = common::kiln_ok(
        r,
        &[
            "run",
            "--rm",
            "-v",
            "keep:/seed",
            "vol",
            "sh",
            "-c",
            "cat /seed/s; echo written > /seed/new",
        ],
    );
    assert_eq!(o, "seed\n");
    let o = common::kiln_ok(
        r,
        &[
            "run",
            "--rm",
            "-v",
            "keep:/elsewhere:ro",
            "vol",
            "sh",
            "-c",
            "cat /elsewhere/new; touch /elsewhere/x 2>/dev/null || echo read-only",
        ],
    );
    assert_eq!(o, "written\nread-only\n");
    assert_eq!(
        std::fs::read_to_string(r.join("volumes/keep/_data/new")).unwrap(),
        "written\n"
    );

    // Bind mounts: read-write and read-only.
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("h"), "host file\n").unwrap();
    let rw = format!("{}:/mnt/h", host.path().display());
    let ro = format!("{}:/mnt/ro:ro", host.path().display());
    let o = common::kiln_ok(
        r,
        &[
            "run",
            "--rm",
            "-v",
            &rw,
            "-v",
            &ro,
            "vol",
            "sh",
            "-c",
            "cat /mnt/h/h; echo back > /mnt/h/back; echo x > /mnt/ro/y 2>/dev/null || echo denied",
        ],
    );
    assert_eq!(o, "host file\ndenied\n");
    assert_eq!(
        std::fs::read_to_string(host.path().join("back")).unwrap(),
        "back\n"
    );

    // The image's VOLUME gets an anonymous volume filled from the image; without --rm it stays
    // until `rm -v`.
    let o = common::kiln_ok(
        r,
        &[
            "run",
            "--name",
            "anon",
            "vol",
            "sh",
            "-c",
            "cat /data/from-image; echo more > /data/more",
        ],
    );
    assert_eq!(o, "image content\n");
    let insp: serde_json::Value =
        serde_json::from_str(&common::kiln_ok(r, &["container", "inspect", "anon"])).unwrap();
    let anon = insp[0]["Mounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["Destination"] == "/data")
        .unwrap()["Name"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(anon.len(), 64);
    let ls = common::kiln_ok(r, &["volume", "ls"]);
    assert!(
        ls.starts_with("DRIVER    VOLUME NAME\n") && ls.contains(&anon) && ls.contains("keep"),
        "{ls}"
    );
    // In use: volume rm refuses, prune leaves it.
    let o = common::kiln(r, &["volume", "rm", &anon]);
    assert_ne!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stderr).contains("in use"));
    common::kiln_ok(r, &["volume", "prune", "-f"]);
    assert!(r.join("volumes").join(&anon).join("_data/more").exists());
    let vi: serde_json::Value =
        serde_json::from_str(&common::kiln_ok(r, &["volume", "inspect", "keep"])).unwrap();
    assert_eq!(vi[0]["Name"], "keep");
    assert_eq!(
        vi[0]["Mountpoint"],
        r.canonicalize()
            .unwrap()
            .join("volumes/keep/_data")
            .to_str()
            .unwrap()
    );
    common::kiln_ok(r, &["rm", "-v", "anon"]);
    assert!(!r.join("volumes").join(&anon).exists());
    // prune removes unused anonymous volumes only; -a takes named ones too.
    common::kiln_ok(r, &["run", "--name", "anon2", "vol", "true"]);
    common::kiln_ok(r, &["rm", "anon2"]);
    let pruned = common::kiln_ok(r, &["volume", "prune", "-f"]);
    assert!(pruned.contains("Deleted Volumes:"), "{pruned}");
    assert_eq!(common::kiln_ok(r, &["volume", "ls", "-q"]), "keep\n");
    common::kiln_ok(r, &["volume", "create", "made"]);
    common::kiln_ok(r, &["volume", "rm", "made"]);
    common::kiln_ok(r, &["volume", "prune", "-a", "-f"]);
    assert_eq!(common::kiln_ok(r, &["volume", "ls", "-q"]), "");
    assert!(!r.join("volumes/keep").exists());
    // Bad specs are one clear error each.
    for bad in ["relative:dir", "/a:/b:bogus", "b@d:/x"] {
        let o = common::kiln(r, &["run", "--rm", "-v", bad, "vol", "true"]);
        assert_eq!(o.status.code(), Some(125), "{bad}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("invalid volume"),
            "{bad}"
        );
    }
}

/// `volume create --label` and `volume ls --filter`, as docker 28 answers them (recorded with
/// docker-ref): labels in `inspect` (null without any), `Labels` and `{{.Label}}` in `--format`,
/// filters by label, name, dangling; a volume without a name gets 64 hex digits.
#[test]
fn volume_labels_and_filters() {
    let root = common::temp_root();
    let r = root.path();
    common::kiln_ok(r, &["volume", "create", "kvt1"]);
    common::kiln_ok(
        r,
        &["volume", "create", "--label", "a=1", "-l", "b", "kvt2"],
    );
    let vi: serde_json::Value =
        serde_json::from_str(&common::kiln_ok(r, &["volume", "inspect", "kvt1", "kvt2"])).unwrap();
    assert_eq!(vi[0]["Labels"], serde_json::Value::Null);
    assert_eq!(vi[1]["Labels"], json!({"a": "1", "b": ""}));
    let ls = |args: &[&str]| {
        let mut all = vec!["volume", "ls"];
        all.extend_from_slice(args);
        common::kiln_ok(r, &all)
    };
    assert_eq!(
        ls(&["--filter", "label=a"]),
        "DRIVER    VOLUME NAME\nlocal     kvt2\n"
    );
    assert_eq!(
        ls(&[
            "--filter",
            "label=b",
            "--format",
            "{{.Name}} {{.Labels}} {{.Label \"a\"}}"
        ]),
        "kvt2 a=1,b= 1\n"
    );
    assert_eq!(ls(&["-f", "name=kvt", "-f", "label=a=1", "-q"]), "kvt2\n");
    assert_eq!(ls(&["-f", "label=a=2", "-q"]), "");
    assert_eq!(ls(&["-f", "dangling=true", "-q"]), "kvt1\nkvt2\n");
    assert_eq!(ls(&["-f", "dangling=false", "-q"]), "");
    let bad = common::kiln(r, &["volume", "ls", "-f", "bogus=1"]);
    assert_ne!(bad.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid filter 'bogus'"));
    let bad = common::kiln(r, &["volume", "create", "--label", "=x"]);
    assert_ne!(bad.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid --label \"=x\""));
    let made = common::kiln_ok(r, &["volume", "create"]);
    let made = made.trim();
    assert!(
        made.len() == 64 && made.bytes().all(|b| b.is_ascii_hexdigit()),
        "{made}"
    );
    assert!(ls(&["-q"]).contains(made));
}
