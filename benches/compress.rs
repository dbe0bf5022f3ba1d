//! Benchmark (not a test): `kiln save --format oci` of a ~430 MB layer against single-threaded
//! `gzip -6` on the same data. Run with `cargo bench --bench compress`.
//!
//! The layer is 40 files of `seq 1 1500000` output. It is imported with `--compression none`, so
//! that `save` has to gzip it (the default OCI compression): what is timed is kiln's save,
//! end to end, writing the archive to /dev/null.
//!
//! Measured 2026-11-28 on the 2-core VM while other builds ran (load average ~17):
//! kiln save 22.85 s vs gzip -6 57.14 s wall (2.50x, best of 3); CPU time 9.7 s vs 22.5 s user;
//! output 128.6 MB vs 127.7 MB (independent 1 MiB gzip members cost 0.7%).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

fn sh(cmd: &mut Command) {
    let status = cmd.status().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(status.success(), "{cmd:?} failed");
}

fn data_tar() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-data");
    let tar = dir.join("seq-layer.tar");
    if tar.exists() {
        return tar;
    }
    let tree = dir.join("seq-tree");
    let _ = fs::remove_dir_all(&tree);
    fs::create_dir_all(&tree).unwrap();
    let seq = Command::new("seq")
        .args(["1", "1500000"])
        .output()
        .unwrap()
        .stdout;
    for i in 0..40 {
        fs::write(tree.join(format!("seq-{i:02}.txt")), &seq).unwrap();
    }
    let tmp = dir.join("seq-layer.tar.tmp");
    sh(Command::new("tar")
        .arg("-C")
        .arg(&tree)
        .arg("-cf")
        .arg(&tmp)
        .arg("."));
    fs::rename(&tmp, &tar).unwrap();
    fs::remove_dir_all(&tree).unwrap();
    tar
}

fn time(label: &str, mut cmd: Command) -> f64 {
    let start = Instant::now();
    let status = cmd.stdout(Stdio::null()).status().unwrap();
    let secs = start.elapsed().as_secs_f64();
    assert!(status.success(), "{label} failed");
    secs
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` would too: only run when benching.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let kiln = Path::new(env!("CARGO_BIN_EXE_kiln"));
    let tar = data_tar();
    let size = fs::metadata(&tar).unwrap().len() as f64 / 1e6;
    let root = tempfile::Builder::new()
        .prefix("kiln-bench.")
        .tempdir()
        .unwrap();
    sh(Command::new(kiln)
        .arg("--root")
        .arg(root.path())
        .args(["import", "-q", "--compression", "none"])
        .arg(&tar)
        .arg("bench/seq:latest")
        .stdout(Stdio::null()));

    let runs = 3;
    let mut kiln_best = f64::MAX;
    let mut gzip_best = f64::MAX;
    for _ in 0..runs {
        let mut save = Command::new(kiln);
        save.arg("--root").arg(root.path()).args([
            "save",
            "-q",
            "--format",
            "oci",
            "-o",
            "-",
            "bench/seq:latest",
        ]);
        kiln_best = kiln_best.min(time("kiln save", save));
        let mut gzip = Command::new("gzip");
        gzip.args(["-6", "-c"]).arg(&tar);
        gzip_best = gzip_best.min(time("gzip -6", gzip));
    }
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!("layer: {size:.0} MB uncompressed tar ({})", tar.display());
    println!(
        "kiln save --format oci (gzip, {cores} cores): {kiln_best:.2}s ({:.0} MB/s)",
        size / kiln_best
    );
    println!(
        "gzip -6 -c (single thread):       {gzip_best:.2}s ({:.0} MB/s)",
        size / gzip_best
    );
    println!("speed-up: {:.2}x (best of {runs})", gzip_best / kiln_best);
}
