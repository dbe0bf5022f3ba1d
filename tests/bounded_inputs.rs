//! Bounded inputs, end to end as root: `kiln load` reads an archive's table of contents first,
//! caps the JSON it reads into memory and writes only the members the manifests reference;
//! `kiln import` stops at the largest accepted layer; unpacking a layer on first run stops at the
//! free-space floor. Small filesystems are tmpfs mounts made for the test.

mod common;

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{kiln, kiln_ok, require_root};

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("kiln-bounds-test.")
        .tempdir()
        .unwrap()
}

/// A tmpfs of `size` bytes mounted on a fresh temp dir; unmounted when dropped.
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    fn new(size: u64) -> SmallFs {
        let dir = tempdir();
        nix::mount::mount(
            Some("tmpfs"),
            dir.path(),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(format!("size={size},mode=0755").as_str()),
        )
        .expect("mount a tmpfs for the test");
        SmallFs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(self.dir.path(), nix::mount::MntFlags::MNT_DETACH);
    }
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A tar (gzip-compressed when `gzip`) of a root filesystem holding one file of `size` zero
/// bytes (streamed, never in memory) and a small one.
fn zero_rootfs_tar(path: &Path, size: u64, gzip: bool) {
    let file = fs::File::create(path).unwrap();
    let out: Box<dyn Write> = if gzip {
        Box::new(flate2::write::GzEncoder::new(
            file,
            flate2::Compression::fast(),
        ))
    } else {
        Box::new(file)
    };
    let mut b = tar::Builder::new(out);
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(size);
    b.append_data(&mut h, "zeros", io::repeat(0).take(size))
        .unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(5);
    b.append_data(&mut h, "hello", &b"hello"[..]).unwrap();
    b.into_inner().unwrap().flush().unwrap();
}

fn entries(dir: &Path) -> Vec<String> {
    match fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// A small image saved as a docker archive; returns the archive's path.
fn small_image_archive(dir: &Path) -> PathBuf {
    let root = dir.join("src-root");
    let rootfs = dir.join("rootfs.tar");
    zero_rootfs_tar(&rootfs, 4096, false);
    kiln_ok(&root, &["import", rootfs.to_str().unwrap(), "small:1"]);
    let archive = dir.join("small.tar");
    kiln_ok(&root, &["save", "-o", archive.to_str().unwrap(), "small:1"]);
    archive
}

/// Rewrites a tar archive with `extra` members (name, size of zeros, streamed) first, gzipped.
fn with_junk(archive: &Path, out: &Path, extra: &[(&str, u64)]) {
    let gz =
        flate2::write::GzEncoder::new(fs::File::create(out).unwrap(), flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    for (name, size) in extra {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(*size);
        b.append_data(&mut h, name, io::repeat(0).take(*size))
            .unwrap();
    }
    let mut input = tar::Archive::new(fs::File::open(archive).unwrap());
    for entry in input.entries().unwrap() {
        let mut entry = entry.unwrap();
        let mut h = entry.header().clone();
        let path = entry.path().unwrap().into_owned();
        b.append_data(&mut h, path, &mut entry).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap();
}

/// An 8 GiB junk member used to be written to `tmp/` before anything was checked; now members
/// nothing references are never written. The root is on a 48 MiB filesystem and the junk is
/// 256 MiB, so writing it anywhere fails.
#[test]
fn load_writes_only_referenced_members() {
    require_root();
    let dir = tempdir();
    let archive = small_image_archive(dir.path());
    let junk = dir.path().join("junk.tar.gz");
    with_junk(
        &archive,
        &junk,
        &[("junk.bin", 256 << 20), ("blobs/sha256/junk", 64 << 20)],
    );
    let small = SmallFs::new(48 << 20);
    let root = small.path().join("root");
    let out = kiln(&root, &["load", "-i", junk.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Loaded image: small:1"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(entries(&root.join("tmp")), Vec::<String>::new());
    // Piped, the archive is spooled (compressed, as given) and then read the same way.
    let root2 = small.path().join("root2");
    let out = Command::new(common::kiln_bin())
        .arg("--root")
        .arg(&root2)
        .arg("load")
        .stdin(fs::File::open(&junk).unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(kiln_ok(&root2, &["images", "-q"]).lines().count(), 1);
}

/// manifest.json, index.json and configs are read into memory only up to 4 MiB each (a 4.2 MB
/// gzip bomb used to take 4.2 GB): a bigger one is one clear error naming the member and the
/// limit, and nothing is stored.
#[test]
fn load_caps_the_json_it_reads_into_memory() {
    require_root();
    let dir = tempdir();
    let archive = small_image_archive(dir.path());
    // The same archive with manifest.json padded (valid JSON) past 4 MiB.
    let padded = dir.path().join("padded.tar.gz");
    {
        let gz = flate2::write::GzEncoder::new(
            fs::File::create(&padded).unwrap(),
            flate2::Compression::fast(),
        );
        let mut b = tar::Builder::new(gz);
        let mut input = tar::Archive::new(fs::File::open(&archive).unwrap());
        for entry in input.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().into_owned();
            let mut h = entry.header().clone();
            if path == Path::new("manifest.json") {
                let mut data = Vec::new();
                entry.read_to_end(&mut data).unwrap();
                data.resize(data.len() + (5 << 20), b' ');
                h.set_size(data.len() as u64);
                b.append_data(&mut h, path, &data[..]).unwrap();
            } else {
                b.append_data(&mut h, path, &mut entry).unwrap();
            }
        }
        b.into_inner().unwrap().finish().unwrap();
    }
    let root = tempdir();
    let out = kiln(root.path(), &["load", "-i", padded.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("manifest.json in the archive is 5.0 MiB, over the 4.0 MiB"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(kiln_ok(root.path(), &["images", "-q"]).trim(), "");
    assert_eq!(entries(&root.path().join("tmp")), Vec::<String>::new());
}

/// `max-layer-size` in `[storage]` of the config file (or KILN_MAX_LAYER_SIZE) stops an import
/// whose tarball expands past it; nothing is left in the store.
#[test]
fn import_stops_at_the_largest_accepted_layer() {
    require_root();
    let dir = tempdir();
    let tar = dir.path().join("big.tar.gz");
    zero_rootfs_tar(&tar, 8 << 20, true);
    let config = dir.path().join("config.toml");
    fs::write(&config, "[storage]\nmax-layer-size = \"2MiB\"\n").unwrap();
    let root = tempdir();
    let out = Command::new(common::kiln_bin())
        .arg("--root")
        .arg(root.path())
        .args(["import", tar.to_str().unwrap(), "big:1"])
        .env("KILN_CONFIG", &config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("the layer expands to more than 2.0 MiB")
            && err.contains("max-layer-size")
            && err.contains("KILN_MAX_LAYER_SIZE"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(kiln_ok(root.path(), &["images", "-q"]).trim(), "");
    assert_eq!(entries(&root.path().join("tmp")), Vec::<String>::new());
    assert_eq!(
        entries(&root.path().join("blobs/sha256")),
        Vec::<String>::new()
    );
    // The environment overrides the file; under the limit the import works.
    let out = Command::new(common::kiln_bin())
        .arg("--root")
        .arg(root.path())
        .args(["import", "-q", tar.to_str().unwrap(), "big:1"])
        .env("KILN_CONFIG", &config)
        .env("KILN_MAX_LAYER_SIZE", "16MiB")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    // A malformed setting is a clear error.
    fs::write(&config, "[storage]\nmin-free-space = \"lots\"\n").unwrap();
    let out = Command::new(common::kiln_bin())
        .arg("--root")
        .arg(root.path())
        .args(["import", tar.to_str().unwrap(), "big:2"])
        .env("KILN_CONFIG", &config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("min-free-space \"lots\""),
        "{}",
        stderr(&out)
    );
}

/// An 8 MB import used to expand to 8 GiB on first run, filling the disk. Unpacking now stops
/// at the free-space floor (by default 1 GiB, at most 5% of the filesystem) with one clear
/// error, and the half-unpacked layer is removed.
#[test]
fn first_run_unpack_stops_at_the_free_space_floor() {
    require_root();
    let dir = tempdir();
    let tar = dir.path().join("bomb.tar.gz");
    zero_rootfs_tar(&tar, 256 << 20, true);
    assert!(fs::metadata(&tar).unwrap().len() < 4 << 20);
    let small = SmallFs::new(64 << 20);
    let root = small.path().join("root");
    kiln_ok(&root, &["import", "-q", tar.to_str().unwrap(), "bomb:1"]);
    let out = kiln(&root, &["run", "--rm", "bomb:1", "/hello"]);
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("free, under kiln's floor of 3.2 MiB") && err.contains("KILN_MIN_FREE_SPACE"),
        "{err}"
    );
    assert!(!err.contains("No space left"), "{err}");
    assert_eq!(
        entries(&root.join("snapshots/layers")),
        Vec::<String>::new()
    );
    let (free, _) = kiln::store::space::free_space(small.path()).unwrap();
    assert!(free > 48 << 20, "the half-unpacked layer was not removed");
}

/// The tar reader read PAX headers into memory whole, whatever size they claimed: a 64 MiB one
/// (64 KiB gzipped) is now refused before it is read, in load, import and layer application.
#[test]
fn oversized_pax_headers_are_refused_before_they_are_read() {
    require_root();
    let dir = tempdir();
    let bomb = dir.path().join("pax-bomb.tar.gz");
    {
        let gz = flate2::write::GzEncoder::new(
            fs::File::create(&bomb).unwrap(),
            flate2::Compression::fast(),
        );
        let mut b = tar::Builder::new(gz);
        let size = 64u64 << 20;
        let mut h = tar::Header::new_ustar();
        h.set_path("PaxHeaders/x").unwrap();
        h.set_entry_type(tar::EntryType::XHeader);
        h.set_size(size);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, io::repeat(b'a').take(size)).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(1);
        b.append_data(&mut h, "x", &b"x"[..]).unwrap();
        b.into_inner().unwrap().finish().unwrap();
    }
    let root = tempdir();
    for args in [
        vec!["load", "-i", bomb.to_str().unwrap()],
        vec!["import", bomb.to_str().unwrap(), "bomb:1"],
    ] {
        let out = kiln(root.path(), &args);
        assert!(!out.status.success(), "{args:?}");
        let err = stderr(&out);
        assert!(
            err.contains("a tar extension header (PAX) of 67108864 bytes, over the 1048576"),
            "{args:?}: {err}"
        );
    }
    let target = dir.path().join("target");
    let err = kiln::oci::layer::apply_layer(
        fs::File::open(&bomb).unwrap(),
        &target,
        kiln::oci::layer::ApplyMode::Flatten,
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("over the 1048576"), "{err:#}");
}
