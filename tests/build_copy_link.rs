//! `COPY --link` as BuildKit rebases it (issue 12): the layer is made on an empty filesystem,
//! so a new base reuses it unchanged (a cache hit, the same DiffID), and the steps after it
//! still run on the new base. Where the result differs from a plain COPY (symlinks and
//! directory metadata of the destination's parents in the base) is checked too.
mod build_support;
mod common;

use build_support::*;

/// Whether the step whose progress line ends with `text` was a cache hit in `log`.
fn cached(log: &str, text: &str) -> bool {
    let lines: Vec<&str> = log.lines().collect();
    let Some(i) = lines
        .iter()
        .position(|l| l.starts_with('#') && l.ends_with(text))
    else {
        panic!("no step {text:?} in:\n{log}");
    };
    let id = lines[i].split(' ').next().unwrap();
    lines[i + 1..].iter().any(|l| *l == format!("{id} CACHED"))
}

fn dockerfile(base_change: &str, copy: &str) -> String {
    format!("FROM busybox\nRUN echo {base_change} > /base\n{copy}\nRUN cat /app/app.txt /base > /seen\n")
}

#[test]
fn a_linked_copy_is_reused_unchanged_on_a_new_base() {
    let root = root_with_busybox();
    let r = root.path();
    let link = "COPY --link app.txt /app/";
    let ctx = context(&[
        ("Dockerfile", &dockerfile("one", link)),
        ("app.txt", "app\n"),
    ]);
    let c = ctx.path().to_str().unwrap();
    build_ok(r, &["-t", "v1", c]);
    let v1 = diff_ids(r, "v1");

    // Only the base changes.
    std::fs::write(ctx.path().join("Dockerfile"), dockerfile("two", link)).unwrap();
    let (_, log) = build_ok(r, &["-t", "v2", c]);
    assert!(cached(&log, link), "{log}");
    assert!(!cached(&log, "RUN cat /app/app.txt /base > /seen"), "{log}");
    let v2 = diff_ids(r, "v2");
    assert_ne!(v1[1], v2[1], "the base's layer changed");
    assert_eq!(v1[2], v2[2], "the linked layer is the same");
    assert_ne!(v1[3], v2[3], "the step after it ran on the new base");
    assert_eq!(
        std::fs::read_to_string(rootfs_of(r, "v2").path().join("seen")).unwrap(),
        "app\ntwo\n"
    );

    // A plain COPY (and --link with --chmod, which BuildKit copies as a plain COPY; and a
    // --chown by name, which needs the base's /etc/passwd) runs again on a new base.
    for copy in [
        "COPY app.txt /app/",
        "COPY --link --chmod=600 app.txt /app/",
        "COPY --link --chown=nobody app.txt /app/",
    ] {
        std::fs::write(ctx.path().join("Dockerfile"), dockerfile("one", copy)).unwrap();
        build_ok(r, &[c]);
        std::fs::write(ctx.path().join("Dockerfile"), dockerfile("three", copy)).unwrap();
        let (_, log) = build_ok(r, &[c]);
        assert!(!cached(&log, copy), "{copy}: {log}");
    }
    // A numeric --chown is linked.
    let copy = "COPY --link --chown=7:8 app.txt /app/";
    std::fs::write(ctx.path().join("Dockerfile"), dockerfile("one", copy)).unwrap();
    build_ok(r, &[c]);
    std::fs::write(ctx.path().join("Dockerfile"), dockerfile("four", copy)).unwrap();
    let (_, log) = build_ok(r, &["-t", "owned", c]);
    assert!(cached(&log, copy), "{log}");
    let fs = rootfs_of(r, "owned");
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(fs.path().join("app/app.txt")).unwrap();
    assert_eq!((m.uid(), m.gid()), (7, 8));
}

#[test]
fn a_linked_copy_does_not_follow_the_bases_symlinks_or_keep_its_parents() {
    use std::os::unix::fs::PermissionsExt;
    let root = root_with_busybox();
    let r = root.path();
    let base =
        "FROM busybox\nRUN mkdir -p /real /private && ln -s /real /app && chmod 700 /private\n";
    for (name, copy) in [("plain", "COPY"), ("linked", "COPY --link")] {
        let ctx = context(&[
            (
                "Dockerfile",
                &format!("{base}{copy} app.txt /app/\n{copy} app.txt /private/\n"),
            ),
            ("app.txt", "app\n"),
        ]);
        build_ok(r, &["-t", name, ctx.path().to_str().unwrap()]);
    }
    // A plain COPY follows /app to /real and keeps /private's mode.
    let plain = rootfs_of(r, "plain");
    let p = plain.path();
    assert!(std::fs::symlink_metadata(p.join("app"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(p.join("real/app.txt").exists());
    let mode = |path: &std::path::Path| {
        std::fs::symlink_metadata(path)
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode(&p.join("private")), 0o700);
    // --link: the destination is a path of directories made afresh (0755), over the base's.
    let linked = rootfs_of(r, "linked");
    let l = linked.path();
    assert!(std::fs::symlink_metadata(l.join("app")).unwrap().is_dir());
    assert!(l.join("app/app.txt").exists());
    assert!(!l.join("real/app.txt").exists());
    assert_eq!(mode(&l.join("private")), 0o755);
    assert_eq!(
        std::fs::read_to_string(l.join("private/app.txt")).unwrap(),
        "app\n"
    );
}
