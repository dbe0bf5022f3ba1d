//! Fixtures for the runner's tests (tests/run_*.rs): busybox images with a chosen config made
//! straight in the store, free ports, a static echo server, containers removed on drop, and
//! checks that nothing is left behind.
#![allow(dead_code)]

use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kiln::oci::compress::Compression;
use kiln::oci::layer::{store_layer, write_tree_layer, WriteOptions};
use kiln::reference::Reference;
use kiln::store::Store;

use super::common;

/// Stores an image made of one layer (the tree at `rootfs`) with `config` (the image config's
/// `config` object, docker's field names) under `name`.
pub fn image_from_tree(root: &Path, name: &str, rootfs: &Path, config: serde_json::Value) {
    let store = Store::open(root).unwrap();
    let layer = store_layer(&store, Compression::Gzip, |w| {
        write_tree_layer(rootfs, w, &WriteOptions::default())
    })
    .unwrap();
    let cfg = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "2026-01-01T00:00:00Z",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
    });
    let cfg: oci_spec::image::ImageConfiguration = serde_json::from_value(cfg).unwrap();
    store
        .commit_image(
            &cfg,
            &[layer.descriptor],
            &[Reference::parse(name).unwrap()],
        )
        .unwrap();
}

/// A busybox image with `config` (e.g. `{"Cmd": ["sh"]}`) and `extra` files copied into it.
pub fn busybox_image(root: &Path, name: &str, config: serde_json::Value) {
    busybox_image_with(root, name, config, &[])
}

/// Like `busybox_image`, plus host files copied in: (host path, path in the image, mode).
pub fn busybox_image_with(
    root: &Path,
    name: &str,
    config: serde_json::Value,
    extra: &[(&Path, &str)],
) {
    let base = common::busybox_rootfs();
    if extra.is_empty() {
        image_from_tree(root, name, &base, config);
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("rootfs");
    let st = Command::new("cp")
        .arg("-a")
        .arg(&base)
        .arg(&tree)
        .status()
        .unwrap();
    assert!(st.success());
    for (host, inside) in extra {
        let dst = tree.join(inside.trim_start_matches('/'));
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(host, &dst).unwrap();
    }
    image_from_tree(root, name, &tree, config);
}

pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A tiny static echo server (TCP and UDP), so busybox images can serve both protocols.
/// Usage inside the container: `/echo tcp PORT` or `/echo udp PORT`.
pub fn echo_server() -> PathBuf {
    common::static_c_binary("echo-server", ECHO_C, &["-pthread"])
}

const ECHO_C: &str = r#"
#include <arpa/inet.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void *serve(void *arg) {
    int fd = (int)(long)arg;
    char buf[65536];
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n <= 0) break;
        ssize_t off = 0;
        while (off < n) {
            ssize_t w = write(fd, buf + off, n - off);
            if (w <= 0) { close(fd); return 0; }
            off += w;
        }
    }
    close(fd);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: echo tcp|udp PORT\n"); return 2; }
    int udp = strcmp(argv[1], "udp") == 0;
    int s = socket(AF_INET, udp ? SOCK_DGRAM : SOCK_STREAM, 0);
    int one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons(atoi(argv[2]));
    a.sin_addr.s_addr = htonl(INADDR_ANY);
    if (bind(s, (struct sockaddr *)&a, sizeof a) != 0) { perror("bind"); return 1; }
    printf("echo %s listening on %s\n", argv[1], argv[2]);
    fflush(stdout);
    if (udp) {
        char buf[65536];
        for (;;) {
            struct sockaddr_in from; socklen_t fl = sizeof from;
            ssize_t n = recvfrom(s, buf, sizeof buf, 0, (struct sockaddr *)&from, &fl);
            if (n < 0) continue;
            sendto(s, buf, n, 0, (struct sockaddr *)&from, fl);
        }
    }
    listen(s, 1024);
    for (;;) {
        int c = accept(s, 0, 0);
        if (c < 0) continue;
        pthread_t t;
        pthread_create(&t, 0, serve, (void *)(long)c);
        pthread_detach(t);
    }
}
"#;

/// Runs kiln and returns its output.
pub fn kiln(root: &Path, args: &[&str]) -> Output {
    common::kiln(root, args)
}

/// A detached container removed (with its anonymous volumes) when dropped, even on failure.
pub struct Container {
    pub root: PathBuf,
    pub id: String,
}

impl Container {
    /// `kiln run -d ARGS...`; panics with kiln's stderr when it fails.
    pub fn run(root: &Path, args: &[&str]) -> Container {
        let mut full = vec!["run", "-d"];
        full.extend_from_slice(args);
        let id = common::kiln_ok(root, &full).trim().to_string();
        assert_eq!(id.len(), 64, "kiln run -d prints the ID: {id:?}");
        Container {
            root: root.to_path_buf(),
            id,
        }
    }

    pub fn inspect(&self) -> serde_json::Value {
        let out = common::kiln_ok(&self.root, &["container", "inspect", &self.id]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v[0].clone()
    }

    /// The host port `kiln port` reports for `spec` (e.g. `80/tcp`).
    pub fn host_port(&self, spec: &str) -> u16 {
        let out = common::kiln_ok(&self.root, &["port", &self.id, spec]);
        out.trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("kiln port printed {out:?}"))
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = common::kiln(&self.root, &["rm", "-f", "-v", &self.id]);
    }
}

/// Mount points under `dir` (from /proc/self/mountinfo).
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let prefix = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| m.starts_with(&prefix))
        .collect()
}

/// Every v1 controller kiln makes cgroups in (`sandbox::cgroup::V1_CONTROLLERS`).
pub const V1_CONTROLLERS: &[&str] = &[
    "freezer", "memory", "cpu", "cpuacct", "cpuset", "pids", "blkio", "devices",
];

/// kiln cgroups whose owner is `pid` (named `<pid>.<n>` under each controller's `kiln/`).
pub fn cgroups_of(pid: i64) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for c in V1_CONTROLLERS.iter().chain(&[""]) {
        let dir = Path::new("/sys/fs/cgroup").join(c).join("kiln");
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                if e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{pid}."))
                {
                    out.push(e.path());
                }
            }
        }
    }
    out
}

/// Whether a process exists and is not a zombie (an exited process its new parent, pid 1, has
/// not reaped yet holds nothing but its pid).
pub fn process_alive(pid: i64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Retries `f` for up to `secs` seconds until it returns Some.
pub fn eventually<T>(secs: u64, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed().as_secs() >= secs {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
}

/// A fresh root with busybox as `bb`, its image config `config`.
pub fn root_with_bb(config: serde_json::Value) -> tempfile::TempDir {
    common::require_root();
    let root = common::temp_root();
    busybox_image(root.path(), "bb", config);
    root
}

/// A finished command as (exit code, stdout, stderr).
pub fn out(o: &Output) -> (i32, String, String) {
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}
