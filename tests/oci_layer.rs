//! oci::layer: writing layers from trees and change lists, applying them flattened and as overlay
//! lowerdirs, and refusing or confining malicious tarballs. Runs as root (owners, devices,
//! trusted xattrs, overlay mounts).

mod common;

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln::oci::change::Change;
use kiln::oci::layer::{
    apply_layer, tree_changes, write_layer, write_tree_layer, ApplyMode, WriteOptions,
};

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("kiln-oci-layer.")
        .tempdir()
        .unwrap()
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    let status = Command::new("setfattr")
        .args(["-h", "-n", name, "-v"])
        .arg(format!("0x{}", hex::encode(value)))
        .arg(path)
        .status();
    if !status.map(|s| s.success()).unwrap_or(false) {
        // Fall back to the syscall when attr tools are not installed.
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        let n = std::ffi::CString::new(name).unwrap();
        // SAFETY: valid C strings and a readable buffer of the given length.
        let rc = unsafe {
            libc::lsetxattr(
                c.as_ptr(),
                n.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        assert_eq!(rc, 0, "lsetxattr {name} on {}", path.display());
    }
}

fn get_xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid C strings and a writable buffer of the given length.
    let rc = unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if rc < 0 {
        return None;
    }
    buf.truncate(rc as usize);
    Some(buf)
}

/// A tree with every kind of entry and interesting metadata.
fn make_tree(root: &Path) {
    fs::create_dir_all(root.join("dir/sub")).unwrap();
    fs::write(root.join("dir/file"), b"hello\n").unwrap();
    fs::write(root.join("dir/sub/big"), vec![7u8; 3 * 1024 * 1024 + 3]).unwrap();
    fs::set_permissions(root.join("dir/file"), fs::Permissions::from_mode(0o4755)).unwrap();
    std::os::unix::fs::chown(root.join("dir/file"), Some(1234), Some(5678)).unwrap();
    fs::hard_link(root.join("dir/file"), root.join("hardlink")).unwrap();
    symlink("dir/file", root.join("symlink")).unwrap();
    symlink("/nonexistent/abs", root.join("dangling")).unwrap();
    std::os::unix::fs::lchown(root.join("symlink"), Some(42), Some(43)).unwrap();
    nix::unistd::mkfifo(
        &root.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o640),
    )
    .unwrap();
    nix::sys::stat::mknod(
        &root.join("null"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 3),
    )
    .unwrap();
    let long = "x".repeat(150);
    fs::create_dir_all(root.join(&long)).unwrap();
    fs::write(root.join(&long).join("y".repeat(120)), b"long name").unwrap();
    set_xattr(&root.join("dir/file"), "user.kiln", b"value\0bin");
    set_xattr(&root.join("dir"), "trusted.kiln", b"t");
    fs::set_permissions(root.join("dir/sub"), fs::Permissions::from_mode(0o1777)).unwrap();
    let t = nix::sys::time::TimeSpec::new(1_000_000, 0);
    for p in ["dir/file", "dir", "symlink"] {
        nix::sys::stat::utimensat(
            None,
            &root.join(p),
            &t,
            &t,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
    }
}

/// (path, kind, mode, uid, gid, size, mtime, content or link target, rdev) for every entry.
fn describe(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in walkdir::WalkDir::new(root).min_depth(1).sort_by_file_name() {
        let e = e.unwrap();
        let m = e.path().symlink_metadata().unwrap();
        let rel = e.path().strip_prefix(root).unwrap().display().to_string();
        let extra = if m.file_type().is_symlink() {
            fs::read_link(e.path()).unwrap().display().to_string()
        } else if m.is_file() {
            let mut h = Vec::new();
            fs::File::open(e.path())
                .unwrap()
                .read_to_end(&mut h)
                .unwrap();
            kiln::digest::sha256_digest(&h)
        } else {
            String::new()
        };
        let mtime = if m.is_dir() || m.file_type().is_symlink() || m.is_file() {
            m.mtime()
        } else {
            0
        };
        out.push(format!(
            "{rel} mode={:o} uid={} gid={} size={} mtime={} rdev={} nlink={} {extra} user.kiln={:?}",
            m.mode(),
            m.uid(),
            m.gid(),
            if m.is_dir() { 0 } else { m.len() },
            mtime,
            m.rdev(),
            if m.is_dir() { 0 } else { m.nlink() },
            get_xattr(e.path(), "user.kiln"),
        ));
    }
    out
}

#[test]
fn tree_round_trips_with_all_metadata_and_is_deterministic() {
    common::require_root();
    let src = tempdir();
    make_tree(src.path());
    let mut a = Vec::new();
    write_tree_layer(src.path(), &mut a, &WriteOptions::default()).unwrap();
    let mut b = Vec::new();
    write_tree_layer(src.path(), &mut b, &WriteOptions::default()).unwrap();
    assert_eq!(a, b, "layer output must be deterministic");

    let dst = tempdir();
    let applied = apply_layer(&a[..], dst.path(), ApplyMode::Flatten).unwrap();
    assert_eq!(applied.diff_id, kiln::digest::sha256_digest(&a));
    assert_eq!(describe(src.path()), describe(dst.path()));
    assert_eq!(
        get_xattr(&dst.path().join("dir"), "trusted.kiln").as_deref(),
        Some(&b"t"[..])
    );
    let f = dst.path().join("dir/file").metadata().unwrap();
    let h = dst.path().join("hardlink").metadata().unwrap();
    assert_eq!(f.ino(), h.ino(), "hard link preserved");

    // GNU tar reads it too, and sees the same names.
    let tar_file = src.path().join("../layer-check.tar");
    fs::write(&tar_file, &a).unwrap();
    let list = Command::new("tar")
        .arg("-tf")
        .arg(&tar_file)
        .output()
        .unwrap();
    fs::remove_file(&tar_file).unwrap();
    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    let names = String::from_utf8_lossy(&list.stdout);
    assert!(names.lines().any(|l| l == "dir/"), "{names}");
    assert!(
        names.lines().any(|l| l.ends_with(&"y".repeat(120))),
        "{names}"
    );
}

#[test]
fn source_date_epoch_clamps_mtimes() {
    common::require_root();
    let src = tempdir();
    fs::write(src.path().join("f"), b"x").unwrap();
    let mut out = Vec::new();
    write_tree_layer(
        src.path(),
        &mut out,
        &WriteOptions {
            source_date_epoch: Some(100),
        },
    )
    .unwrap();
    let dst = tempdir();
    apply_layer(&out[..], dst.path(), ApplyMode::Flatten).unwrap();
    assert_eq!(dst.path().join("f").metadata().unwrap().mtime(), 100);
}

fn base_and_changes() -> (tempfile::TempDir, tempfile::TempDir, Vec<u8>) {
    // Lower: a/keep, a/old, b/x, gone. Upper changes: Delete(gone), Opaque(b) with b/new, a/new.
    let lower = tempdir();
    for p in ["a/keep", "a/old", "b/x", "b/y", "gone"] {
        let path = lower.path().join(p);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, p).unwrap();
    }
    let upper = tempdir();
    fs::create_dir_all(upper.path().join("b")).unwrap();
    fs::create_dir_all(upper.path().join("a")).unwrap();
    fs::write(upper.path().join("b/new"), b"new").unwrap();
    fs::write(upper.path().join("a/new"), b"anew").unwrap();
    let changes = vec![
        Change::Upsert("a/new".into()),
        Change::Delete("gone".into()),
        Change::Delete("a/old".into()),
        Change::Opaque("b".into()),
        Change::Upsert("b/new".into()),
    ];
    let mut tar = Vec::new();
    write_layer(upper.path(), &changes, &mut tar, &WriteOptions::default()).unwrap();
    (lower, upper, tar)
}

#[test]
fn whiteouts_flatten_onto_a_rootfs() {
    common::require_root();
    let (lower, _upper, tar) = base_and_changes();
    apply_layer(&tar[..], lower.path(), ApplyMode::Flatten).unwrap();
    let mut files: Vec<String> = walkdir::WalkDir::new(lower.path())
        .min_depth(1)
        .into_iter()
        .map(|e| {
            e.unwrap()
                .path()
                .strip_prefix(lower.path())
                .unwrap()
                .display()
                .to_string()
        })
        .collect();
    files.sort();
    assert_eq!(files, ["a", "a/keep", "a/new", "b", "b/new"]);
}

struct Unmount(PathBuf);
impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn whiteouts_become_overlay_whiteouts_and_mount_correctly() {
    common::require_root();
    let (lower, _upper, tar) = base_and_changes();
    let layer = tempdir();
    apply_layer(&tar[..], layer.path(), ApplyMode::Overlay).unwrap();
    let wh = layer.path().join("gone").symlink_metadata().unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_char_device(
        &wh.file_type()
    ));
    assert_eq!(wh.rdev(), 0);
    assert_eq!(
        get_xattr(&layer.path().join("b"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert!(!layer.path().join("b/.wh..wh..opq").exists());

    let mnt = tempdir();
    let opts = format!(
        "lowerdir={}:{}",
        layer.path().display(),
        lower.path().display()
    );
    nix::mount::mount(
        Some("overlay"),
        mnt.path(),
        Some("overlay"),
        nix::mount::MsFlags::MS_RDONLY,
        Some(opts.as_str()),
    )
    .expect("overlay mount");
    let _guard = Unmount(mnt.path().to_path_buf());
    let mut files: Vec<String> = walkdir::WalkDir::new(mnt.path())
        .min_depth(1)
        .into_iter()
        .map(|e| {
            e.unwrap()
                .path()
                .strip_prefix(mnt.path())
                .unwrap()
                .display()
                .to_string()
        })
        .collect();
    files.sort();
    assert_eq!(files, ["a", "a/keep", "a/new", "b", "b/new"]);
}

/// A raw tar entry with any name (the tar crate refuses to write `..` itself).
fn raw_entry(out: &mut Vec<u8>, name: &str, kind: tar::EntryType, link: &str, data: &[u8]) {
    let mut h = tar::Header::new_ustar();
    {
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        old.linkname[..link.len()].copy_from_slice(link.as_bytes());
    }
    h.set_entry_type(kind);
    h.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
    h.set_size(data.len() as u64);
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

fn finish(mut t: Vec<u8>) -> Vec<u8> {
    t.extend_from_slice(&[0u8; 1024]);
    t
}

/// A sandbox dir holding `target/` and a sibling `outside/` that must stay empty.
fn sandbox() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let d = tempdir();
    let target = d.path().join("target");
    let outside = d.path().join("outside");
    fs::create_dir_all(&target).unwrap();
    fs::create_dir_all(&outside).unwrap();
    (d, target, outside)
}

fn assert_empty(dir: &Path) {
    assert_eq!(
        fs::read_dir(dir).unwrap().count(),
        0,
        "{} was written to",
        dir.display()
    );
}

#[test]
fn dotdot_paths_are_rejected() {
    common::require_root();
    for mode in [ApplyMode::Flatten, ApplyMode::Overlay] {
        let (_d, target, outside) = sandbox();
        let mut t = Vec::new();
        raw_entry(
            &mut t,
            "../outside/evil",
            tar::EntryType::Regular,
            "",
            b"pwned",
        );
        let err = apply_layer(&finish(t)[..], &target, mode).unwrap_err();
        assert!(format!("{err:#}").contains(".."), "{err:#}");
        assert_empty(&outside);
        let mut t = Vec::new();
        raw_entry(
            &mut t,
            "a/../../outside/.wh.x",
            tar::EntryType::Regular,
            "",
            b"",
        );
        assert!(apply_layer(&finish(t)[..], &target, mode).is_err());
        assert_empty(&outside);
    }
}

#[test]
fn absolute_paths_are_confined() {
    common::require_root();
    let (_d, target, outside) = sandbox();
    let mut t = Vec::new();
    let abs = format!("{}/evil", outside.display());
    raw_entry(&mut t, &abs, tar::EntryType::Regular, "", b"x");
    apply_layer(&finish(t)[..], &target, ApplyMode::Flatten).unwrap();
    assert_empty(&outside);
    assert!(target.join(abs.trim_start_matches('/')).exists());
}

#[test]
fn symlinked_parents_are_confined() {
    common::require_root();
    let (_d, target, outside) = sandbox();
    let mut t = Vec::new();
    raw_entry(
        &mut t,
        "up",
        tar::EntryType::Symlink,
        "../../../../../../..",
        b"",
    );
    raw_entry(
        &mut t,
        "abs",
        tar::EntryType::Symlink,
        &outside.display().to_string(),
        b"",
    );
    raw_entry(&mut t, "up/evil1", tar::EntryType::Regular, "", b"x");
    raw_entry(&mut t, "abs/evil2", tar::EntryType::Regular, "", b"x");
    // Replacing the symlink itself is fine and must not follow it.
    raw_entry(
        &mut t,
        "abs",
        tar::EntryType::Regular,
        "",
        b"plain file now",
    );
    apply_layer(&finish(t)[..], &target, ApplyMode::Flatten).unwrap();
    assert_empty(&outside);
    assert!(
        target.join("evil1").exists(),
        "`up` resolves to the target root"
    );
    assert!(target
        .join(outside.strip_prefix("/").unwrap())
        .join("evil2")
        .exists());
    assert_eq!(fs::read(target.join("abs")).unwrap(), b"plain file now");
}

#[test]
fn escaping_hard_links_are_rejected() {
    common::require_root();
    let (_d, target, outside) = sandbox();
    let secret = outside.join("secret");
    fs::write(&secret, b"secret").unwrap();
    for link in [
        secret.display().to_string(),
        "../outside/secret".to_string(),
    ] {
        let mut t = Vec::new();
        raw_entry(&mut t, "stolen", tar::EntryType::Link, &link, b"");
        assert!(
            apply_layer(&finish(t)[..], &target, ApplyMode::Flatten).is_err(),
            "{link}"
        );
        assert!(!target.join("stolen").exists());
    }
    // Through a symlinked parent: resolved inside the target, where it does not exist.
    let mut t = Vec::new();
    raw_entry(
        &mut t,
        "o",
        tar::EntryType::Symlink,
        &outside.display().to_string(),
        b"",
    );
    raw_entry(&mut t, "stolen", tar::EntryType::Link, "o/secret", b"");
    assert!(apply_layer(&finish(t)[..], &target, ApplyMode::Flatten).is_err());
    assert_eq!(fs::metadata(&secret).unwrap().nlink(), 1);
    assert_eq!(fs::read(&secret).unwrap(), b"secret");
}

#[test]
fn whiteouts_cannot_delete_outside() {
    common::require_root();
    let (_d, target, outside) = sandbox();
    fs::write(outside.join("keep"), b"k").unwrap();
    let mut t = Vec::new();
    raw_entry(
        &mut t,
        "o",
        tar::EntryType::Symlink,
        &outside.display().to_string(),
        b"",
    );
    raw_entry(&mut t, "o/.wh.keep", tar::EntryType::Regular, "", b"");
    raw_entry(&mut t, "o/.wh..wh..opq", tar::EntryType::Regular, "", b"");
    apply_layer(&finish(t)[..], &target, ApplyMode::Flatten).unwrap();
    assert!(outside.join("keep").exists());
}

#[test]
fn tree_changes_lists_every_path() {
    let src = tempdir();
    fs::create_dir_all(src.path().join("a/b")).unwrap();
    fs::write(src.path().join("a/b/c"), b"").unwrap();
    let changes = tree_changes(src.path()).unwrap();
    assert_eq!(
        changes,
        vec![
            Change::Upsert("a".into()),
            Change::Upsert("a/b".into()),
            Change::Upsert("a/b/c".into())
        ]
    );
}

#[test]
fn store_layer_compresses_once_and_applies_back() {
    common::require_root();
    let src = tempdir();
    make_tree(src.path());
    let root = common::temp_root();
    let store = kiln::store::Store::open(root.path()).unwrap();
    for compression in [
        kiln::oci::compress::Compression::Gzip,
        kiln::oci::compress::Compression::Zstd,
        kiln::oci::compress::Compression::None,
    ] {
        let layer = kiln::oci::layer::store_layer(&store, compression, |w| {
            write_tree_layer(src.path(), w, &WriteOptions::default())
        })
        .unwrap();
        let digest = layer.descriptor.digest().to_string();
        assert_eq!(
            store
                .layer_by_diff_id(&layer.diff_id)
                .unwrap()
                .unwrap()
                .diff_id,
            layer.diff_id
        );
        let dst = tempdir();
        let applied = apply_layer(
            store.open_blob(&digest).unwrap(),
            dst.path(),
            ApplyMode::Overlay,
        )
        .unwrap();
        assert_eq!(applied.diff_id, layer.diff_id, "{compression:?}");
        assert_eq!(describe(src.path()), describe(dst.path()));
    }
}

/// GNU tar's PAX sparse formats (what `tar --sparse --format=pax` writes) unpack as docker's do:
/// the file under its real name, with its real size and its data at the right offsets; the
/// holes stay holes. They used to land as `GNUSparseFile.N/` entries.
#[test]
fn pax_sparse_files_expand_to_their_real_name_and_size() {
    common::require_root();
    let d = tempdir();
    let src = d.path().join("src");
    fs::create_dir_all(src.join("dir")).unwrap();
    let sparse = src.join("dir/sparse.img");
    const REAL: u64 = 64 << 20;
    {
        use std::io::{Seek, SeekFrom};
        let mut f = fs::File::create(&sparse).unwrap();
        f.set_len(REAL).unwrap();
        for (offset, data) in [
            (0u64, &b"head"[..]),
            (10 << 20, b"middle"),
            (REAL - 4, b"tail"),
        ] {
            f.seek(SeekFrom::Start(offset)).unwrap();
            f.write_all(data).unwrap();
        }
    }
    fs::write(src.join("plain"), b"plain file").unwrap();
    for version in ["1.0", "0.1", "0.0"] {
        let tar = d.path().join(format!("sparse-{version}.tar"));
        let st = std::process::Command::new("tar")
            .args(["--sparse", "--format=pax"])
            .arg(format!("--sparse-version={version}"))
            .arg("-C")
            .arg(&src)
            .arg("-cf")
            .arg(&tar)
            .args(["dir", "plain"])
            .status()
            .expect("GNU tar is needed by this test (Debian package tar)");
        assert!(st.success());
        let bytes = fs::read(&tar).unwrap();
        assert!(
            bytes.len() < 1 << 20,
            "GNU tar stored the holes ({version})"
        );
        for mode in [ApplyMode::Flatten, ApplyMode::Overlay] {
            let dst = tempdir();
            apply_layer(&bytes[..], dst.path(), mode)
                .unwrap_or_else(|e| panic!("sparse {version}: {e:#}"));
            let names: Vec<String> = walkdir::WalkDir::new(dst.path())
                .min_depth(1)
                .into_iter()
                .map(|e| {
                    let e = e.unwrap();
                    e.path()
                        .strip_prefix(dst.path())
                        .unwrap()
                        .display()
                        .to_string()
                })
                .collect();
            let mut sorted = names.clone();
            sorted.sort();
            assert_eq!(sorted, ["dir", "dir/sparse.img", "plain"], "{version}");
            let out = dst.path().join("dir/sparse.img");
            let meta = fs::metadata(&out).unwrap();
            assert_eq!(meta.len(), REAL, "{version}: real size");
            assert!(
                meta.blocks() * 512 < 4 << 20,
                "{version}: the holes were written ({} blocks)",
                meta.blocks()
            );
            assert_eq!(
                fs::read(&out).unwrap(),
                fs::read(&sparse).unwrap(),
                "{version}"
            );
            assert_eq!(fs::read(dst.path().join("plain")).unwrap(), b"plain file");
        }
    }
}

/// A malformed sparse map is one clear error, not a panic or a file written past its end.
#[test]
fn malformed_pax_sparse_maps_are_refused() {
    common::require_root();
    // A format 1.0 member: the map says 2 chunks of 4 bytes; the data holds fewer.
    let mut pax = Vec::new();
    for (k, v) in [
        ("GNU.sparse.major", "1"),
        ("GNU.sparse.minor", "0"),
        ("GNU.sparse.name", "f"),
        ("GNU.sparse.realsize", "100"),
    ] {
        let rec = format!(" {k}={v}\n");
        let mut len = rec.len() + 2;
        if format!("{len}{rec}").len() != len {
            len += 1;
        }
        pax.extend_from_slice(format!("{len}{rec}").as_bytes());
    }
    let mut data = b"2\n0\n4\n50\n4\n".to_vec();
    data.resize(512, 0);
    data.extend_from_slice(b"abcd");
    let mut t = Vec::new();
    raw_entry(&mut t, "PaxHeaders/f", tar::EntryType::XHeader, "", &pax);
    raw_entry(
        &mut t,
        "GNUSparseFile.0/f",
        tar::EntryType::Regular,
        "",
        &data,
    );
    let dst = tempdir();
    let err = apply_layer(&finish(t)[..], dst.path(), ApplyMode::Flatten).unwrap_err();
    assert!(
        format!("{err:#}").contains("sparse map lists 8 bytes of data, the entry holds 4"),
        "{err:#}"
    );
}

/// ADD's extraction of a deeply nested archive is right (and linear: see
/// benches/nested_add.sh): every level, symlinks resolved inside the target, `.wh.` names kept
/// as files, --chown applied to all.
#[test]
fn deeply_nested_archives_extract_confined() {
    common::require_root();
    const DEPTH: usize = 1500;
    let mut b = tar::Builder::new(Vec::new());
    let mut path = String::new();
    for level in 0..DEPTH {
        path.push_str("d/");
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        b.append_data(&mut h, &path, io::empty()).unwrap();
        if level % 100 == 99 {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            let data = format!("level {}", level + 1);
            h.set_size(data.len() as u64);
            b.append_data(&mut h, format!("{path}f"), data.as_bytes())
                .unwrap();
        }
    }
    // A symlink out, and a file written through it, which must stay inside.
    let (_s, target, outside) = sandbox();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, format!("{path}out"), &outside)
        .unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(1);
    b.append_data(&mut h, format!("{path}out/escaped"), &b"x"[..])
        .unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(2);
    b.append_data(&mut h, "d/.wh.kept", &b"wh"[..]).unwrap();
    let tar = b.into_inner().unwrap();
    kiln::oci::layer::extract_archive(
        &tar[..],
        &target,
        kiln::oci::layer::ExtractOptions {
            owner: Some((1234, 5678)),
        },
    )
    .unwrap();
    assert_empty(&outside);
    let mut dir = target.clone();
    for level in 1..=DEPTH {
        dir.push("d");
        if level % 100 == 0 {
            assert_eq!(
                fs::read_to_string(dir.join("f")).unwrap(),
                format!("level {level}")
            );
        }
    }
    let meta = fs::symlink_metadata(&dir).unwrap();
    assert!(meta.is_dir());
    assert_eq!((meta.uid(), meta.gid()), (1234, 5678));
    // The symlink's absolute target resolves from the target's root.
    assert_eq!(
        fs::read(
            target
                .join(outside.strip_prefix("/").unwrap())
                .join("escaped")
        )
        .unwrap(),
        b"x"
    );
    assert_eq!(fs::read(target.join("d/.wh.kept")).unwrap(), b"wh");
}

/// ADD's extraction applies a hard link entry's header to the inode it shares with its target,
/// as BuildKit's applier does (testdata/conformance/add_tar_basic records it).
#[test]
fn extracted_hard_link_applies_its_mode_to_the_inode() {
    common::require_root();
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o755);
    h.set_size(3);
    b.append_data(&mut h, "exe", &b"abc"[..]).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Link);
    h.set_mode(0o640);
    h.set_size(0);
    b.append_link(&mut h, "hard", "exe").unwrap();
    let tar = b.into_inner().unwrap();
    let dst = tempdir();
    kiln::oci::layer::extract_archive(
        &tar[..],
        dst.path(),
        kiln::oci::layer::ExtractOptions { owner: None },
    )
    .unwrap();
    let exe = fs::symlink_metadata(dst.path().join("exe")).unwrap();
    let hard = fs::symlink_metadata(dst.path().join("hard")).unwrap();
    assert_eq!(exe.ino(), hard.ino());
    assert_eq!(exe.mode() & 0o7777, 0o640);
    assert_eq!(fs::read(dst.path().join("hard")).unwrap(), b"abc");
}
