//! The differ on real overlay snapshots, as root: rm, mv, mkdir, chmod, a replaced directory, a
//! hard link, unchanged copy-ups, whiteouts in lower layers; the upperdir reader and the tree
//! comparison fallback; applying the change list on the lower view reproduces the container's.

mod common;

use std::collections::HashMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln::oci::change::Change;
use kiln::sandbox::{self, ExecSpec};
use kiln::snapshot::{diff, ActiveSnapshot, PrepareOptions, Snapshotter};

fn cp_a(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success());
}

fn mknod_whiteout(p: &Path) {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: mknod with a valid path.
    assert_eq!(unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR, 0) }, 0);
}

struct Layers {
    dir: tempfile::TempDir,
}

impl Layers {
    /// Layer 1: busybox + /data; layer 2 (overlay style): a new file and a whiteout.
    fn new() -> Layers {
        common::require_root();
        let dir = tempfile::tempdir().unwrap();
        let l1 = dir.path().join("l1");
        cp_a(&common::busybox_rootfs(), &l1);
        let data = l1.join("data");
        std::fs::create_dir_all(data.join("dir/sub")).unwrap();
        for f in [
            "file1",
            "file2",
            "file3",
            "file4",
            "file5",
            "samemode",
            "gone",
            "dir/a",
            "dir/sub/b",
        ] {
            std::fs::write(data.join(f), format!("content of {f}\n")).unwrap();
            std::fs::set_permissions(data.join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        std::os::unix::fs::symlink("file1", data.join("sym")).unwrap();
        let l2 = dir.path().join("l2");
        std::fs::create_dir_all(l2.join("data")).unwrap();
        std::fs::write(l2.join("data/layer2.txt"), "from layer 2\n").unwrap();
        mknod_whiteout(&l2.join("data/gone"));
        Layers { dir }
    }

    fn lowers(&self) -> Vec<PathBuf> {
        vec![self.dir.path().join("l1"), self.dir.path().join("l2")]
    }

    /// The flattened view of both layers, as a plain directory.
    fn flattened(&self, to: &Path) {
        cp_a(&self.dir.path().join("l1"), to);
        std::fs::remove_file(to.join("data/gone")).unwrap();
        cp_a(
            &self.dir.path().join("l2/data/layer2.txt"),
            &to.join("data/layer2.txt"),
        );
    }
}

const SCRIPT: &str = "set -e; \
    rm /data/file1; \
    mv /data/file2 /data/moved; \
    mkdir /newdir; \
    chmod 600 /data/file3; \
    rm -rf /data/dir; mkdir /data/dir; echo new > /data/dir/new; \
    ln /data/file4 /data/link4; \
    touch -d @1000000000 /data/file5; \
    chmod 644 /data/samemode; \
    cat /data/layer2.txt; test ! -e /data/gone";

fn run_script(snap: &ActiveSnapshot) {
    let (exit, out, err) =
        sandbox::output(&ExecSpec::new(snap.merged(), ["/bin/sh", "-c", SCRIPT])).unwrap();
    assert_eq!(exit.code, 0, "{}", String::from_utf8_lossy(&err));
    assert_eq!(String::from_utf8_lossy(&out), "from layer 2\n");
}

fn p(s: &str) -> PathBuf {
    PathBuf::from(s)
}

fn sorted(mut v: Vec<Change>) -> Vec<Change> {
    v.sort();
    v
}

fn prepare(layers: &Layers, root: &Path) -> ActiveSnapshot {
    Snapshotter::new(root)
        .unwrap()
        .prepare(&layers.lowers(), &PrepareOptions { volatile: true })
        .unwrap()
}

#[test]
fn upperdir_diff_has_exactly_the_changes() {
    let layers = Layers::new();
    let root = common::temp_root();
    let snap = prepare(&layers, root.path());
    run_script(&snap);
    // file5 (touched: a new mtime, a change as in BuildKit) and samemode (chmod to the same
    // mode: copied up unchanged, left out) are both in the upperdir.
    assert!(snap.upper().join("data/file5").exists());
    assert!(snap.upper().join("data/samemode").exists());
    let changes = snap.changes().unwrap();
    assert_eq!(
        sorted(changes),
        sorted(vec![
            Change::Opaque(p("data/dir")),
            Change::Upsert(p("data/dir/new")),
            Change::Delete(p("data/file1")),
            Change::Delete(p("data/file2")),
            Change::Upsert(p("data/file3")),
            Change::Upsert(p("data/file4")),
            Change::Upsert(p("data/file5")),
            Change::Upsert(p("data/link4")),
            Change::Upsert(p("data/moved")),
            Change::Upsert(p("newdir")),
        ])
    );
}

/// Overlay puts a directory's mtime back after copying a file in it up, so its ctime moves on
/// alone: that is not an mtime the step set (it was, on a loaded machine, before the differ
/// compared the mtime with the step's start). One the step did set (`touch -d`) still is.
#[test]
fn a_copy_up_after_an_entry_change_is_not_a_set_directory_mtime() {
    let layers = Layers::new();
    // An mtime for /data in the lower layer that no step's instant can share (the differ
    // compares mtimes to the second).
    let old = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_200_000_000);
    for l in ["l1/data", "l2/data"] {
        std::fs::File::open(layers.dir.path().join(l))
            .unwrap()
            .set_times(std::fs::FileTimes::new().set_modified(old))
            .unwrap();
    }
    for (script, data_changed) in [
        // The sleep puts the copy-up of file5 on a later clock tick than the rm.
        (
            "rm /data/file1; sleep 0.05; touch -d @1000000000 /data/file5",
            false,
        ),
        ("rm /data/file1; touch -d @1000000000 /data", true),
        ("rm /data/file1; touch -d '2999-01-01' /data", true),
    ] {
        let root = common::temp_root();
        let snap = prepare(&layers, root.path());
        let (exit, _, err) =
            sandbox::output(&ExecSpec::new(snap.merged(), ["/bin/sh", "-c", script])).unwrap();
        assert_eq!(exit.code, 0, "{}", String::from_utf8_lossy(&err));
        let changes = snap.changes().unwrap();
        assert_eq!(
            changes.contains(&Change::Upsert(p("data"))),
            data_changed,
            "{script}: {changes:?}"
        );
        assert!(
            changes.contains(&Change::Delete(p("data/file1"))),
            "{script}"
        );
    }
}

#[test]
fn tree_compare_fallback_finds_the_same_effect() {
    let layers = Layers::new();
    let root = common::temp_root();
    let snap = prepare(&layers, root.path());
    run_script(&snap);
    let changes = snap.changes_by_tree_compare().unwrap();
    assert_eq!(
        sorted(changes),
        sorted(vec![
            Change::Delete(p("data/dir/a")),
            Change::Upsert(p("data/dir/new")),
            Change::Delete(p("data/dir/sub")),
            Change::Delete(p("data/file1")),
            Change::Delete(p("data/file2")),
            Change::Upsert(p("data/file3")),
            Change::Upsert(p("data/file4")),
            Change::Upsert(p("data/file5")),
            Change::Upsert(p("data/link4")),
            Change::Upsert(p("data/moved")),
            Change::Upsert(p("newdir")),
        ])
    );
}

#[test]
fn upperdir_stays_self_contained() {
    let layers = Layers::new();
    let root = common::temp_root();
    let snap = prepare(&layers, root.path());
    run_script(&snap);
    let before = sorted(snap.changes().unwrap());
    // A process in the container cannot plant a redirect (which would point the layer into a
    // lower one): overlay refuses its own xattrs set through the mount (before Linux 6.7) or
    // stores them escaped as trusted.overlay.overlay.* (since).
    let target = CString::new(snap.merged().join("newdir").as_os_str().as_bytes()).unwrap();
    // SAFETY: lsetxattr with valid C strings and a value buffer of the given length.
    unsafe {
        libc::lsetxattr(
            target.as_ptr(),
            c"trusted.overlay.redirect".as_ptr(),
            b"/elsewhere".as_ptr().cast(),
            10,
            0,
        )
    };
    let in_upper = CString::new(snap.upper().join("newdir").as_os_str().as_bytes()).unwrap();
    let mut buf = [0u8; 64];
    // SAFETY: lgetxattr with valid C strings into a buffer of the given length.
    let len = unsafe {
        libc::lgetxattr(
            in_upper.as_ptr(),
            c"trusted.overlay.redirect".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    assert!(len < 0, "a redirect reached the upperdir");
    assert_eq!(sorted(snap.changes().unwrap()), before);
}

#[test]
fn tree_diff_sees_type_changes_symlinks_and_xattrs() {
    common::require_root();
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (dir.path().join("old"), dir.path().join("new"));
    for d in [&old, &new] {
        std::fs::create_dir_all(d.join("was_dir/x")).unwrap();
        std::fs::write(d.join("was_file"), "f").unwrap();
        std::fs::write(d.join("same"), "s").unwrap();
        std::fs::write(d.join("xattr"), "x").unwrap();
        std::os::unix::fs::symlink("a", d.join("link")).unwrap();
    }
    // `same` is the same to the mtime (which is a change by itself).
    let status = std::process::Command::new("touch")
        .arg("-r")
        .arg(old.join("same"))
        .arg(new.join("same"))
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::remove_dir_all(new.join("was_dir")).unwrap();
    std::fs::write(new.join("was_dir"), "now a file").unwrap();
    std::fs::remove_file(new.join("was_file")).unwrap();
    std::fs::create_dir_all(new.join("was_file/inner")).unwrap();
    std::fs::remove_file(new.join("link")).unwrap();
    std::os::unix::fs::symlink("b", new.join("link")).unwrap();
    let target = CString::new(new.join("xattr").as_os_str().as_bytes()).unwrap();
    // SAFETY: lsetxattr with valid C strings and a value buffer.
    assert_eq!(
        unsafe {
            libc::lsetxattr(
                target.as_ptr(),
                c"user.k".as_ptr(),
                b"v".as_ptr().cast(),
                1,
                0,
            )
        },
        0
    );
    assert_eq!(
        sorted(diff::diff_trees(&old, &new).unwrap()),
        sorted(vec![
            Change::Upsert(p("link")),
            Change::Upsert(p("was_dir")),
            Change::Upsert(p("was_file")),
            Change::Upsert(p("was_file/inner")),
            Change::Upsert(p("xattr")),
        ])
    );
    assert!(diff::diff_trees(&old, &old).unwrap().is_empty());
}

/// Applies `changes` (read from `source`, the container's view) onto `target` the way a layer
/// is applied: deletions remove, opaque directories are emptied, upserts copy the entry with
/// its metadata, and names of one inode become hard links.
fn apply(changes: &[Change], source: &Path, target: &Path) {
    let mut linked: HashMap<(u64, u64), PathBuf> = HashMap::new();
    for c in changes {
        let t = target.join(c.path());
        let s = source.join(c.path());
        match c {
            Change::Delete(_) => {
                let m = std::fs::symlink_metadata(&t).unwrap();
                if m.is_dir() {
                    std::fs::remove_dir_all(&t).unwrap();
                } else {
                    std::fs::remove_file(&t).unwrap();
                }
            }
            Change::Opaque(_) | Change::Upsert(_) => {
                let sm = std::fs::symlink_metadata(&s).unwrap();
                let existing = std::fs::symlink_metadata(&t).ok();
                let opaque = matches!(c, Change::Opaque(_));
                match existing {
                    Some(m) if m.is_dir() && (!sm.is_dir() || opaque) => {
                        std::fs::remove_dir_all(&t).unwrap()
                    }
                    Some(m) if !m.is_dir() => std::fs::remove_file(&t).unwrap(),
                    _ => {}
                }
                if sm.is_dir() {
                    std::fs::create_dir_all(&t).unwrap();
                    std::fs::set_permissions(&t, sm.permissions()).unwrap();
                    std::os::unix::fs::lchown(&t, Some(sm.uid()), Some(sm.gid())).unwrap();
                } else if let Some(first) = (sm.nlink() > 1)
                    .then(|| linked.get(&(sm.dev(), sm.ino())).cloned())
                    .flatten()
                {
                    std::fs::hard_link(first, &t).unwrap();
                } else {
                    cp_a(&s, &t);
                    linked.insert((sm.dev(), sm.ino()), t.clone());
                }
            }
        }
    }
}

#[test]
fn applying_the_changes_on_the_lower_view_reproduces_the_container_view() {
    let layers = Layers::new();
    let root = common::temp_root();
    let snap = prepare(&layers, root.path());
    run_script(&snap);
    for changes in [
        snap.changes().unwrap(),
        snap.changes_by_tree_compare().unwrap(),
    ] {
        let out = tempfile::tempdir().unwrap();
        let applied = out.path().join("applied");
        layers.flattened(&applied);
        apply(&changes, &snap.merged(), &applied);
        let remaining = diff::diff_trees(&applied, &snap.merged()).unwrap();
        assert!(remaining.is_empty(), "differences left: {remaining:?}");
        let a = std::fs::metadata(applied.join("data/file4")).unwrap();
        let b = std::fs::metadata(applied.join("data/link4")).unwrap();
        assert_eq!(a.ino(), b.ino(), "the hard link is a hard link");
    }
}

/// The end-to-end path of a RUN step: the diff, written as an OCI layer by `oci::layer`, applied
/// on the lower layers (flattened, and as an overlay lowerdir) gives exactly the container's view.
#[test]
fn layer_written_from_the_diff_reproduces_the_container_view() {
    use kiln::oci::layer::{apply_layer, write_layer, ApplyMode, WriteOptions};
    let layers = Layers::new();
    let root = common::temp_root();
    let snap = prepare(&layers, root.path());
    run_script(&snap);
    for changes in [
        snap.changes().unwrap(),
        snap.changes_by_tree_compare().unwrap(),
    ] {
        let mut tar = Vec::new();
        write_layer(&snap.merged(), &changes, &mut tar, &WriteOptions::default()).unwrap();

        // Flattened onto the lower view.
        let out = tempfile::tempdir().unwrap();
        let applied = out.path().join("applied");
        layers.flattened(&applied);
        apply_layer(&tar[..], &applied, ApplyMode::Flatten).unwrap();
        let remaining = diff::diff_trees(&applied, &snap.merged()).unwrap();
        assert!(
            remaining.is_empty(),
            "flatten: differences left: {remaining:?}"
        );
        let a = std::fs::metadata(applied.join("data/file4")).unwrap();
        let b = std::fs::metadata(applied.join("data/link4")).unwrap();
        assert_eq!(a.ino(), b.ino(), "the hard link is a hard link");

        // As a new overlay lowerdir on top of the two layers.
        let new_layer = out.path().join("layer3");
        apply_layer(&tar[..], &new_layer, ApplyMode::Overlay).unwrap();
        let view = out.path().join("view");
        std::fs::create_dir(&view).unwrap();
        let mut lowers = layers.lowers();
        lowers.push(new_layer);
        lowers.reverse();
        kiln::snapshot::overlay::mount_overlay(
            &kiln::snapshot::overlay::OverlaySpec {
                lowers: &lowers,
                upper_work: None,
                volatile: false,
            },
            &view,
        )
        .unwrap();
        let remaining = diff::diff_trees(&view, &snap.merged());
        kiln::snapshot::overlay::unmount(&view).unwrap();
        let remaining = remaining.unwrap();
        assert!(
            remaining.is_empty(),
            "overlay: differences left: {remaining:?}"
        );
    }
}

#[test]
fn ensure_unpacked_unpacks_a_stored_layer_once_by_diff_id() {
    use kiln::oci::compress::Compression;
    use kiln::oci::layer::{store_layer, write_layer, WriteOptions};
    let layers = Layers::new();
    let root = common::temp_root();
    let store = kiln::store::Store::open(root.path()).unwrap();
    let snapshotter = Snapshotter::new(root.path()).unwrap();

    // A layer with a deletion and an opaque directory, stored gzipped.
    let snap = prepare(&layers, root.path());
    run_script(&snap);
    let changes = snap.changes().unwrap();
    let stored = store_layer(&store, Compression::Gzip, |w| {
        write_layer(&snap.merged(), &changes, w, &WriteOptions::default())
    })
    .unwrap();
    let dir = snapshotter
        .ensure_unpacked(&store, &stored.descriptor)
        .unwrap();
    assert_eq!(dir, snapshotter.layer_dir(&stored.diff_id).unwrap());
    // Overlay form: the deletion is a whiteout device, the replaced directory is opaque.
    let wh = std::fs::symlink_metadata(dir.join("data/file1")).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_char_device(&wh.file_type()) && wh.rdev() == 0);
    assert_eq!(
        diff::get_xattr(&dir.join("data/dir"), "trusted.overlay.opaque")
            .unwrap()
            .as_deref(),
        Some(&b"y"[..])
    );
    // Second use: the same directory, not unpacked again.
    let ino = std::fs::metadata(&dir).unwrap().ino();
    let again = snapshotter
        .ensure_unpacked_blob(
            &store,
            stored.descriptor.digest().as_ref(),
            Some(&stored.diff_id),
        )
        .unwrap();
    assert_eq!(
        (again.clone(), std::fs::metadata(&again).unwrap().ino()),
        (dir.clone(), ino)
    );
    // A wrong DiffID is refused.
    let wrong = format!("sha256:{}", "0".repeat(64));
    let err = snapshotter
        .ensure_unpacked_blob(&store, stored.descriptor.digest().as_ref(), Some(&wrong))
        .unwrap_err();
    assert!(format!("{err:#}").contains("DiffID"), "{err:#}");
    let leftovers: Vec<_> = std::fs::read_dir(snapshotter.layers_dir())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".unpack-"))
        .collect();
    assert!(leftovers.is_empty());
}
