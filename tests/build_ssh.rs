//! `RUN --mount=type=ssh` with `kiln build --ssh`: a step talks to the agent through a socket of
//! its own (owner and mode as the mount says), `SSH_AUTH_SOCK` points at it, keys given as files
//! are served by an agent of the build's own, and nothing of the agent or the keys reaches the
//! image, the store or the output. A small static client counts the agent's identities (busybox
//! has no ssh tools).
mod build_support;
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use build_support::*;

/// Connects to $SSH_AUTH_SOCK (or argv[1]), asks for the identities (SSH2_AGENTC_REQUEST_
/// IDENTITIES) and prints `identities: N`.
const AGENT_COUNT_C: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
static int read_all(int fd, unsigned char *b, size_t n) {
    size_t off = 0;
    while (off < n) { ssize_t r = read(fd, b + off, n - off); if (r <= 0) return -1; off += r; }
    return 0;
}
int main(int argc, char **argv) {
    const char *path = argc > 1 ? argv[1] : getenv("SSH_AUTH_SOCK");
    if (!path) { puts("no SSH_AUTH_SOCK"); return 2; }
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un a; memset(&a, 0, sizeof a); a.sun_family = AF_UNIX;
    strncpy(a.sun_path, path, sizeof a.sun_path - 1);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) { perror("connect"); return 3; }
    unsigned char req[5] = {0, 0, 0, 1, 11};
    if (write(fd, req, 5) != 5) return 4;
    unsigned char hdr[9];
    if (read_all(fd, hdr, 9) != 0 || hdr[4] != 12) { puts("bad reply"); return 5; }
    unsigned n = (hdr[5] << 24) | (hdr[6] << 16) | (hdr[7] << 8) | hdr[8];
    printf("identities: %u\n", n);
    return 0;
}
"#;

fn agent_count_binary() -> PathBuf {
    common::static_c_binary("agent-count", AGENT_COUNT_C, &[])
}

fn keygen(dir: &Path, name: &str) -> PathBuf {
    let key = dir.join(name);
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "kiln-test", "-f"])
        .arg(&key)
        .output()
        .expect("ssh-keygen is needed by these tests (apt-get install openssh-client)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    key
}

fn context_with_client(dockerfile: &str) -> tempfile::TempDir {
    let ctx = context(&[("Dockerfile", dockerfile)]);
    std::fs::copy(agent_count_binary(), ctx.path().join("agent-count")).unwrap();
    ctx
}

/// Every byte sequence of `needle` found under `dir` (files only).
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for e in walkdir::WalkDir::new(dir).into_iter().flatten() {
        if e.file_type().is_file() {
            if let Ok(data) = std::fs::read(e.path()) {
                if data.windows(needle.len()).any(|w| w == needle) {
                    found.push(e.path().to_path_buf());
                }
            }
        }
    }
    found
}

#[test]
fn key_files_are_served_to_the_step_and_reach_nothing() {
    let root = root_with_busybox();
    let keys = tempfile::tempdir().unwrap();
    let a = keygen(keys.path(), "a");
    let b = keygen(keys.path(), "b");
    let ctx = context_with_client(
        "FROM busybox:latest\n\
         RUN --mount=type=ssh --mount=type=bind,source=agent-count,target=/ac \\\n\
             /ac > /default.txt && echo \"$SSH_AUTH_SOCK\" > /sock.txt && \\\n\
             stat -c '%a %u:%g' /run/buildkit/ssh_agent.0 > /mode.txt\n\
         RUN --mount=type=ssh,id=deploy,target=/tmp/agent,uid=1000,gid=1001,mode=0660 \\\n\
             --mount=type=bind,source=agent-count,target=/ac \\\n\
             /ac /tmp/agent > /deploy.txt && stat -c '%a %u:%g' /tmp/agent > /deploy-mode.txt\n",
    );
    let ssh_default = format!("default={}", a.display());
    let ssh_deploy = format!("deploy={},{}", a.display(), b.display());
    let (out, err) = build_ok(
        root.path(),
        &[
            "--ssh",
            &ssh_default,
            "--ssh",
            &ssh_deploy,
            "-t",
            "ssh",
            ctx.path().to_str().unwrap(),
        ],
    );
    let fs = rootfs_of(root.path(), "ssh");
    let fs = fs.path();
    let read = |p: &str| std::fs::read_to_string(fs.join(p)).unwrap();
    assert_eq!(read("default.txt"), "identities: 1\n");
    assert_eq!(read("sock.txt"), "/run/buildkit/ssh_agent.0\n");
    assert_eq!(read("mode.txt"), "600 0:0\n");
    assert_eq!(read("deploy.txt"), "identities: 2\n");
    assert_eq!(read("deploy-mode.txt"), "660 1000:1001\n");
    // No socket or mount point is left in the image.
    assert!(!fs.join("run/buildkit/ssh_agent.0").exists());
    assert!(!fs.join("tmp/agent").exists());

    // Neither the private key nor the key files' paths reach the store or the output.
    let key_text = std::fs::read_to_string(&a).unwrap();
    let secret_line = key_text.lines().nth(1).unwrap().as_bytes().to_vec();
    assert!(files_containing(root.path(), &secret_line).is_empty());
    let path_text = keys.path().to_str().unwrap();
    assert!(files_containing(root.path(), path_text.as_bytes()).is_empty());
    assert!(
        !out.contains(path_text) && !err.contains(path_text),
        "{err}"
    );
}

#[test]
fn the_agent_of_ssh_auth_sock_and_missing_agents() {
    let root = root_with_busybox();
    let keys = tempfile::tempdir().unwrap();
    let a = keygen(keys.path(), "a");
    // An agent of the user's own, with one key.
    let sock = keys.path().join("user-agent.sock");
    let mut agent = Command::new("ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(&sock)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..500 {
        if sock.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let added = Command::new("ssh-add")
        .arg("-q")
        .arg(&a)
        .env("SSH_AUTH_SOCK", &sock)
        .output()
        .unwrap();
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );

    let ctx = context_with_client(
        "FROM busybox:latest\n\
         RUN --mount=type=ssh,required=true --mount=type=bind,source=agent-count,target=/ac \\\n\
             /ac > /count.txt\n",
    );
    let dir = ctx.path().to_str().unwrap();
    let out = common::kiln_command()
        .env("KILN_ROOT", root.path())
        .env("SSH_AUTH_SOCK", &sock)
        .args(["build", "--ssh", "default", "-t", "user", dir])
        .output()
        .unwrap();
    let _ = agent.kill();
    let _ = agent.wait();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fs = rootfs_of(root.path(), "user");
    assert_eq!(
        std::fs::read_to_string(fs.path().join("count.txt")).unwrap(),
        "identities: 1\n"
    );

    // Required and not given: BuildKit's error, naming the flag to give.
    let out = build(root.path(), &[dir]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no SSH key \"default\" forwarded"), "{err}");
    assert!(err.contains("--ssh default"), "{err}");

    // Not required and not given: the step runs without a socket.
    let optional = context_with_client(
        "FROM busybox:latest\n\
         RUN --mount=type=ssh test ! -e /run/buildkit/ssh_agent.0 && echo none > /none.txt\n",
    );
    build_ok(
        root.path(),
        &["-t", "opt", optional.path().to_str().unwrap()],
    );
    let fs = rootfs_of(root.path(), "opt");
    assert!(fs.path().join("none.txt").exists());

    // A key file that is not a key: ssh-add's reason, no panic.
    std::fs::write(keys.path().join("junk"), "not a key\n").unwrap();
    let junk = format!("default={}", keys.path().join("junk").display());
    let out = build(root.path(), &["--ssh", &junk, dir]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ssh-add"), "{err}");
}
