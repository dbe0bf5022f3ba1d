//! The seed scenario end to end: build a Debian-based image that installs redis-server with
//! apt-get, run it detached with a published port and a named volume, talk to it, and keep its
//! data across containers.
//!
//! Slow (debootstrap once per machine, apt-get on each uncached build) and it needs
//! deb.debian.org. The Debian base root filesystem comes from
//! `debootstrap --variant=minbase bookworm DIR http://deb.debian.org/debian`, cached as a tarball
//! under target/test-fixtures and imported with `kiln import`.

mod common;
mod run_fixtures;

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use run_fixtures::Container;

/// A minbase Debian bookworm root filesystem as a tarball, made once per machine (under an
/// exclusive lock, so concurrent test processes wait for the first).
fn debian_rootfs_tar() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-fixtures");
    std::fs::create_dir_all(&dir).unwrap();
    let tar = dir.join("debian-bookworm-minbase.tar");
    let lock = File::create(dir.join("debian-bookworm.lock")).unwrap();
    // SAFETY: flock on a descriptor we own.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    if tar.exists() {
        return tar;
    }
    let work = tempfile::Builder::new()
        .prefix("debootstrap.")
        .tempdir_in(&dir)
        .unwrap();
    let rootfs = work.path().join("rootfs");
    let out = Command::new("debootstrap")
        .args(["--variant=minbase", "bookworm"])
        .arg(&rootfs)
        .arg("http://deb.debian.org/debian")
        .output()
        .expect("run debootstrap (apt-get install debootstrap)");
    assert!(
        out.status.success(),
        "debootstrap failed (it needs deb.debian.org): {}",
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
    let tmp_tar = work.path().join("rootfs.tar");
    let st = Command::new("tar")
        .args(["--numeric-owner", "--xattrs", "-C"])
        .arg(&rootfs)
        .arg("-cf")
        .arg(&tmp_tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(
        st.success(),
        "tar of the debootstrap root filesystem failed"
    );
    std::fs::rename(&tmp_tar, &tar).unwrap();
    tar
}

const DOCKERFILE: &str = r#"FROM debian:bookworm
RUN apt-get update \
 && apt-get install -y --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/*
RUN mkdir -p /data
VOLUME /data
WORKDIR /data
EXPOSE 6379
CMD ["redis-server", "--dir", "/data", "--port", "6379"]
"#;

/// Sends one RESP command and reads one reply line.
fn redis(port: u16, args: &[&str]) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut cmd = format!("*{}\r\n", args.len());
    for a in args {
        cmd.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(cmd.as_bytes()).ok()?;
    let mut reader = BufReader::new(s);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    if line.starts_with('$') && line.trim() != "$-1" {
        line.clear();
        reader.read_line(&mut line).ok()?;
    }
    (!line.is_empty()).then(|| line.trim_end().to_string())
}

fn start(root: &Path) -> (Container, u16) {
    let c = Container::run(
        root,
        &["-p", "127.0.0.1::6379", "-v", "data:/data", "redis-seed"],
    );
    let port_line = common::kiln_ok(root, &["port", &c.id]);
    assert!(
        port_line.starts_with("6379/tcp -> 127.0.0.1:"),
        "{port_line}"
    );
    let port = c.host_port("6379");
    let pong = run_fixtures::eventually(30, || redis(port, &["PING"]).filter(|r| r == "+PONG"));
    assert!(
        pong.is_some(),
        "redis answers PING with PONG; logs:\n{}",
        common::kiln_ok(root, &["logs", &c.id])
    );
    (c, port)
}

#[test]
fn seed_redis_built_with_apt_get_runs_with_port_and_volume() {
    common::require_root();
    let root = common::temp_root();
    let r = root.path();
    let tar = debian_rootfs_tar();
    common::kiln_ok(
        r,
        &["import", "-q", tar.to_str().unwrap(), "debian:bookworm"],
    );
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("Dockerfile"), DOCKERFILE).unwrap();
    common::kiln_ok(
        r,
        &[
            "build",
            "--progress",
            "plain",
            "-t",
            "redis-seed",
            ctx.path().to_str().unwrap(),
        ],
    );

    let (c, port) = start(r);
    assert_eq!(
        redis(port, &["SET", "seed", "survives"]).as_deref(),
        Some("+OK")
    );
    assert_eq!(redis(port, &["SAVE"]).as_deref(), Some("+OK"));
    let logs = common::kiln_ok(r, &["logs", &c.id]);
    assert!(logs.contains("Ready to accept connections"), "{logs}");
    assert!(logs.contains("Server initialized"), "{logs}");
    common::kiln_ok(r, &["rm", "-f", &c.id]);
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the port closed with the container"
    );

    // A new container on the same named volume sees the key.
    let (c2, port2) = start(r);
    assert_eq!(redis(port2, &["GET", "seed"]).as_deref(), Some("survives"));
    drop(c2);
    drop(c);
    common::kiln_ok(r, &["volume", "rm", "data"]);
}
