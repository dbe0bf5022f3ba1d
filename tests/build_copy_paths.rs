//! A COPY of directories into a destination the layers below don't have is written straight into
//! the upperdir (the overlay unmounted); any other COPY goes through the overlay. Both must give
//! the same image: same files, modes, owners, times and links, and the parents the destination
//! sits in keep their metadata.

mod build_support;
mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use build_support::*;

/// Every entry below `dir` in the image (not `dir` itself: a COPY makes a missing destination
/// with its `--chown` and keeps an existing one as it is): mode, owner, size, mtime (not for
/// directories, whose mtime the copy itself changes), link target. `skip` is a name left out.
fn listing(rootfs: &Path, dir: &str, skip: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for entry in walkdir::WalkDir::new(rootfs.join(dir)).min_depth(1) {
        let entry = entry.unwrap();
        let rel = entry
            .path()
            .strip_prefix(rootfs)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if !skip.is_empty() && rel.ends_with(skip) {
            continue;
        }
        let m = entry.path().symlink_metadata().unwrap();
        let link = std::fs::read_link(entry.path())
            .map(|t| t.display().to_string())
            .unwrap_or_default();
        let mtime = if m.is_dir() { 0 } else { m.mtime() };
        out.insert(
            rel,
            format!(
                "{:o} {}:{} {} {} {}",
                m.mode(),
                m.uid(),
                m.gid(),
                m.len(),
                mtime,
                link
            ),
        );
    }
    out
}

#[test]
fn direct_and_overlay_copies_give_the_same_tree() {
    let root = root_with_busybox();
    let ctx = context(&[
        ("tree/a.txt", "a"),
        ("tree/sub/b.sh", "#!/bin/sh\necho b\n"),
        ("tree/sub/deep/c", "c"),
        ("tree/private/d", "d"),
    ]);
    let t = ctx.path().join("tree");
    std::fs::set_permissions(t.join("sub/b.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(t.join("private"), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::create_dir(t.join("empty")).unwrap();
    std::os::unix::fs::symlink("sub/b.sh", t.join("link")).unwrap();
    let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
    std::fs::File::options()
        .write(true)
        .open(t.join("a.txt"))
        .unwrap()
        .set_modified(old)
        .unwrap();
    // The parent has unusual metadata, which the direct path must keep (copied up, not made).
    let base = "FROM busybox:latest\nRUN mkdir -m 0750 /srv && chown 1000:1000 /srv\n";
    let cases = [
        // Fresh destination (direct), an empty WORKDIR (direct), a non-empty one (overlay).
        ("fresh", "COPY --chown=7:8 tree /srv/app/\n", ""),
        ("empty", "WORKDIR /srv/app\nCOPY --chown=7:8 tree .\n", ""),
        (
            "overlay",
            "RUN mkdir /srv/app && touch /srv/app/.keep\nCOPY --chown=7:8 tree /srv/app/\n",
            ".keep",
        ),
    ];
    let mut listings = Vec::new();
    for (name, steps, skip) in cases {
        std::fs::write(ctx.path().join("Dockerfile"), format!("{base}{steps}")).unwrap();
        let tag = format!("copy-paths/{name}");
        build_ok(root.path(), &["-t", &tag, ctx.path().to_str().unwrap()]);
        let fs = rootfs_of(root.path(), &tag);
        let srv = std::fs::symlink_metadata(fs.path().join("srv")).unwrap();
        assert_eq!(
            (srv.mode() & 0o7777, srv.uid(), srv.gid()),
            (0o750, 1000, 1000),
            "{name}: /srv lost its metadata"
        );
        listings.push((name, listing(fs.path(), "srv/app", skip)));
    }
    let (_, expected) = &listings[2];
    assert!(expected.contains_key("srv/app/sub/deep/c"), "{expected:#?}");
    assert!(
        expected["srv/app/a.txt"].contains(" 7:8 1 1000000000 "),
        "{expected:#?}"
    );
    assert!(
        expected["srv/app/link"].ends_with("sub/b.sh"),
        "{expected:#?}"
    );
    for (name, l) in &listings[..2] {
        assert_eq!(l, expected, "{name} differs from the overlay copy");
    }
}
